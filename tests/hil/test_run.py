"""``owlgate hil run``: a scenario against real edge agents and a real fleet, faster than real
time. One run of a shipped scenario through the CLI (report files, plots, delivery), one run of
a small district with a power cut and a backhaul outage (timeline, alerts, the losses
accounted for by cause, the outage's readings delivered late), and the pieces that need no
processes: scenario names, settings, the cause of a loss, the relay."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from owlgate.fleet.geo import LatLon, to_metres
from owlgate.fleet.store import Store
from owlgate.fleet.views import gateway_sites, get_site
from owlgate.hil.report import _cause
from owlgate.hil.run import SITE_CENTRE, Backhaul, RunFailed, RunSettings, Sent, resolve_scenario

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: Two gateways 7 km apart, each with sensors only it hears, and the faults.
FAULTY_STREET = """\
[district]
name = "faulty street"
size = [8000, 400]
seed = 3
duration = "40m"
start = "12:00"

[[gateways]]
id = "gw-a"
position = [500, 200]
backhaul = "ethernet"

[[gateways]]
id = "gw-b"
position = [7500, 200]
backhaul = "lte"

[[sensors]]
profile = "environment-v1"
count = 24
prefix = "env"
placement = "cluster"
centres = [[500, 200], [7500, 200]]
radius_m = 200
report_interval = "2m"

[[traffic]]
pattern = "environment"

[[faults]]
kind = "backhaul_down"
gateways = ["gw-b"]
at = "10m"
duration = "10m"

[[faults]]
kind = "power_cut"
gateway = "gw-a"
at = "25m"
duration = "5m"
"""


def _hil_run(
    tmp_path: Path, scenario: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    workdir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "owlgate.codecs.cli", "hil", "run", scenario,
         "--workdir", str(workdir), *extra],
        capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    report_file = workdir / "report" / "report.json"
    assert report_file.exists(), done.stdout + done.stderr
    return done, json.loads(report_file.read_text())


def test_a_shipped_scenario_runs_against_real_agents_and_reports(tmp_path: Path) -> None:
    done, report = _hil_run(
        tmp_path, "parking-street", "--speed", "240", "--duration", "45m", "--otaa-every", "8"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    totals = report["totals"]
    assert report["scenario"]["gateways"] == 2
    assert report["scenario"]["sensors"] == 200
    assert totals["frames_sent"] > 0
    assert totals["unexplained"] == 0
    # On a quiet street with two gateways nearly every frame arrives; what does not is
    # named by the radio world.
    assert totals["delivery"] >= 0.9
    assert all(cause.startswith("radio:") for cause in totals["lost_by_cause"])
    # OTAA sensors joined through the agents and the fleet's join server.
    assert totals["joins"]["sent"] >= 1
    assert totals["joins"]["devices_joined"] >= 1
    assert report["latency_s"]["count"] == totals["frames_stored"]
    assert report["latency_s"]["p50"] is not None
    assert report["latency_s"]["p50"] > 0
    assert sum(g["heard"] for g in report["gateways"]) >= totals["frames_sent"] * 0.9
    assert len(report["devices"]) == 200
    folder = tmp_path / "run" / "report"
    for name in ("traffic.png", "delivery.png", "health.png"):
        assert (folder / name).read_bytes()[:8] == PNG_MAGIC
    text = (folder / "report.md").read_text()
    assert "# Scenario run: parking street" in text
    assert "| gw-west |" in text
    assert "| gw-east |" in text
    assert "frames stored" in done.stdout
    # The fleet knows where everything stands, for the dashboard's plan: the scenario's
    # positions (metres from the district's corner), the district's middle at SITE_CENTRE.
    with Store(tmp_path / "run" / "fleet.db") as store:

        def metres(lat: float | None, lon: float | None) -> tuple[float, float]:
            assert lat is not None
            assert lon is not None
            east, north = to_metres(SITE_CENTRE, LatLon(lat, lon))
            return east + 600, north + 150  # the district is 1,200 m by 300 m

        placed = {site.label: metres(site.lat, site.lon) for site in gateway_sites(store.sql)}
        assert placed.keys() == {"gw-west", "gw-east"}
        for label, (x, y) in {"gw-west": (300, 150), "gw-east": (900, 150)}.items():
            assert abs(placed[label][0] - x) < 1
            assert abs(placed[label][1] - y) < 1
        bays = [get_site(store.sql, device["dev_eui"]) for device in report["devices"]]
        assert all(bay is not None and bay.zone == "parking street" for bay in bays)
        # 200 bays on the line from (100, 140) to (1100, 140).
        spots = sorted(metres(bay.lat, bay.lon) for bay in bays if bay is not None)
        assert all(abs(y - 140) < 1 for _, y in spots)
        assert abs(spots[0][0] - 100) < 6
        assert abs(spots[-1][0] - 1100) < 6


def test_a_power_cut_and_an_outage_are_on_the_timeline_and_account_for_every_loss(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "faulty.toml"
    scenario.write_text(FAULTY_STREET)
    done, report = _hil_run(tmp_path, str(scenario), "--speed", "150", "--no-plots")
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = [event["kind"] for event in report["events"]]
    assert kinds == ["backhaul_down", "backhaul_up", "power_off", "power_on"]
    totals = report["totals"]
    assert totals["unexplained"] == 0
    for cause in totals["lost_by_cause"]:
        assert cause.startswith("radio:") or cause in ("power_cut", "gateway_starting"), cause
    gateways = {g["gateway"]: g for g in report["gateways"]}
    assert gateways["gw-a"]["power_cuts"]
    assert gateways["gw-a"]["power_cuts"][0][0] >= 25 * 60
    # gw-b's outage: its agent kept what it heard and sent it when the relay was back, so
    # the readings of its sensors arrived, late (the outage lasts 4 s of wall time).
    assert gateways["gw-b"]["delivery"] == 1.0
    assert report["latency_s"]["max"] > 2.0
    # The fleet saw gw-a die (its Last Will) and said so.
    subjects = {(a["kind"], a["subject"]) for a in report["alerts"]}
    assert any(gateways["gw-a"]["id"] in subject for _, subject in subjects), report["alerts"]
    assert not (tmp_path / "run" / "report" / "traffic.png").exists()


def test_sigterm_stops_the_run_and_every_process_it_started(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    runner = subprocess.Popen(
        [sys.executable, "-m", "owlgate.codecs.cli", "hil", "run", "parking-street",
         "--speed", "10", "--workdir", str(workdir), "--no-plots"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert runner.stdout is not None
    for line in runner.stdout:
        if "every agent ready" in line:
            break
    children = _processes_under(workdir)
    assert len(children) >= 3  # the fleet and two agents
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 143, err
    assert "stopped by SIGTERM" in err
    assert _processes_under(workdir) == []
    assert not (workdir / "report").exists()


def _processes_under(workdir: Path) -> list[int]:
    """Processes whose command line names ``workdir`` (the fleet and the agents)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(workdir) in command and "hil run" not in command.replace("  ", " "):
            found.append(int(entry.name))
    return found


def test_scenario_names_and_settings_are_checked(tmp_path: Path) -> None:
    assert resolve_scenario("bielefeld").name == "bielefeld.toml"
    with pytest.raises(RunFailed, match="neither a file nor a shipped scenario"):
        resolve_scenario("atlantis")
    with pytest.raises(RunFailed, match="no such file"):
        resolve_scenario(str(tmp_path / "missing.toml"))
    with pytest.raises(RunFailed, match="speed must be"):
        RunSettings(scenario=tmp_path, workdir=tmp_path, speed=0)
    with pytest.raises(RunFailed, match="duration must be positive"):
        RunSettings(scenario=tmp_path, workdir=tmp_path, duration_s=-1)


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    for args, why in (
        (["atlantis"], "neither a file nor a shipped scenario"),
        (["parking-street", "--broker", "rabbit"], "--broker must be embedded or mosquitto"),
        (["parking-street", "--duration", "soon"], "--duration"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "owlgate.codecs.cli", "hil", "run", *args,
             "--workdir", str(tmp_path / "w")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert why in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_each_lost_frame_gets_the_cause_that_explains_it() -> None:
    cuts = {"gw-a": [(1000.0, 1300.0)]}
    noisy = {"gw-b": [(2000.0, 2600.0)]}
    window = 300.0

    def sent(heard: dict[str, float], lost: list[tuple[str | None, str]]) -> Sent:
        return Sent("s", "00", 1, 0.0, heard=heard, lost=lost)

    assert (
        _cause(
            sent({}, [("gw-a", "collision"), ("gw-b", "below_sensitivity")]), cuts, noisy, window
        )
        == "radio:collision"
    )
    assert _cause(sent({}, []), cuts, noisy, window) == "radio:out_of_range"
    assert _cause(sent({}, [("gw-a", "gateway_off")]), cuts, noisy, window) == "radio:gateway_off"
    starting: list[tuple[str | None, str]] = [("gw-a", "gateway_starting"), ("gw-b", "gateway_off")]
    assert _cause(sent({}, starting), cuts, noisy, window) == "gateway_starting"
    assert _cause(sent({"gw-a": 900.0}, []), cuts, noisy, window) == "power_cut"
    assert _cause(sent({"gw-a": 200.0}, []), cuts, noisy, window) == "unexplained"
    assert _cause(sent({"gw-b": 2100.0}, []), cuts, noisy, window) == "serial_noise"
    # Heard by a gateway that kept running: nothing explains its loss.
    assert _cause(sent({"gw-a": 900.0, "gw-b": 100.0}, []), cuts, noisy, window) == "unexplained"


def test_the_backhaul_relays_until_it_goes_down_and_again_when_it_is_back() -> None:
    async def scenario() -> list[object]:
        seen: Counter[bytes] = Counter()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(100):
                seen[data] += 1
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        relay = Backhaul("gw", "127.0.0.1", port)
        await relay.start()
        out: list[object] = []
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"ping")
        out.append(await reader.read(100))
        await relay.down()
        out.append(await reader.read(100))  # b"": the connection was closed
        writer.close()
        await writer.wait_closed()
        try:
            await asyncio.open_connection("127.0.0.1", relay.port)
        except ConnectionRefusedError:
            out.append("refused")
        await relay.restore()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"again")
        out.append(await reader.read(100))
        writer.close()
        await writer.wait_closed()
        await relay.close()
        server.close()
        await server.wait_closed()
        out.append(seen[b"ping"] + seen[b"again"])
        return out

    assert asyncio.run(scenario()) == [b"ping", b"", "refused", b"again", 2]
