"""``owlgate demo``: the whole system on one machine.

Seeds a fleet into a work folder, starts ``owlgate fleet serve`` (with its embedded broker
unless ``--broker`` names one), then per gateway an emulated concentrator with its devices
(``owlgate hil gateway``) and an edge agent (``owlgate edge run``), each a separate process
whose log goes to the work folder. Once every edge agent says it is ready (radio configured,
device sessions from the fleet in), the devices start. Gateways are neighbours in a ring: a
share of each gateway's devices (``--overlap``) is heard by the next gateway too, so the fleet
must merge those frames. Bad input is mixed in: at the radio (replayed frames, altered MICs,
bad radio CRCs, line noise, see :mod:`owlgate.hil.gateway_emulator`) and at the broker
(forged, unsigned and misattributed batches, and a real batch sent twice).

It prints a one-time login link to the operations dashboard (``/ui/``, the operator's view;
with a desktop, or ``--open``, it opens in the browser), the API URL and progress, and at the
end compares what the emulators generated with
what the API stored, and what bad input was sent with what the edge agents (their
``status.json``) and the fleet (``GET /api/v1/stats``) refused. Exit code 1 if a reading is
missing or a bad input was not refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import webbrowser
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import aiomqtt
import httpx
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch
from owlgate.codecs.signed import sign

from .gateway_emulator import AIR_HOST, START_WORD
from .processes import MODULE, ChildProcess, ProcessFailed, children_stopped_at_exit

demo_command = typer.Typer(
    name="demo",
    help="Run the whole system: fleet, broker, emulated gateways and devices, edge agents.",
    add_completion=False,
)

_DRAIN_TIMEOUT_S = 15.0
_READY_TIMEOUT_S = 30.0
_PROGRESS_S = 5.0
_INTERVAL_S = 3.0
DEFAULT_OVERLAP: Final = 0.25
DEFAULT_HOSTILE_EVERY: Final = 20
#: Topics of the gateways' telemetry, for the broker-side bad input.
_TELEMETRY: Final = "owlgate/v1/gw/{}/telemetry"
_CAPTURE_TIMEOUT_S: Final = 10.0


class DemoFailed(ProcessFailed):
    """The demo cannot go on: a child process did not start as expected, the fleet's counters
    could not be read."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """One kind of bad input: how many were sent, and how many the part that must refuse them
    (``where``) counted as refused."""

    what: str
    where: str
    sent: int
    refused: int

    @property
    def ok(self) -> bool:
        return self.refused >= self.sent


@dataclass(frozen=True, slots=True)
class Summary:
    """Generated against stored readings; ``duplicates`` counts readings heard by several
    gateways and merged into one (more than one reception); ``relayed`` the uplinks the
    emulators sent to a neighbour as well; ``refusals`` the bad input, sent against refused."""

    generated: int
    stored: int
    missing: int
    unexpected: int
    duplicates: int
    relayed: int = 0
    refusals: tuple[Refusal, ...] = ()

    @property
    def ok(self) -> bool:
        return self.missing == 0 and all(refusal.ok for refusal in self.refusals)


def edge_config(gateway: dict[str, Any], *, state_dir: Path, port: str, mqtt_url: str) -> str:
    """The edge agent's TOML configuration for one seeded gateway (docs/edge.md)."""
    keys = Path(gateway["keys_dir"])

    def q(value: object) -> str:
        return json.dumps(str(value))

    return (
        "[gateway]\n"
        f"id = {q(gateway['id'])}\n"
        f"state_dir = {q(state_dir)}\n"
        f"identity_key = {q(keys / 'identity-ed25519.pem')}\n"
        f"sealing_key = {q(keys / 'sealing-x25519.pem')}\n"
        f"fleet_key = {q(keys / 'fleet-ed25519.pub.pem')}\n\n"
        "[radio]\n"
        f"port = {q(port)}\n\n"
        "[mqtt]\n"
        f"url = {q(mqtt_url)}\n"
    )


def summarise(reports: list[dict[str, Any]], stored: dict[str, list[dict[str, Any]]]) -> Summary:
    """Compare the emulators' reports with the readings the API returned per device."""
    generated = {(r["dev_eui"], r["fcnt"]) for rep in reports for r in rep["readings"]}
    kept = {(eui, item["fcnt"]) for eui, items in stored.items() for item in items}
    duplicates = sum(
        1 for items in stored.values() for item in items if len(item.get("receptions", [])) > 1
    )
    return Summary(
        generated=len(generated),
        stored=len(kept & generated),
        missing=len(generated - kept),
        unexpected=len(kept - generated),
        duplicates=duplicates,
        relayed=sum(int(report.get("relayed", 0)) for report in reports),
    )


def refusals(
    reports: list[dict[str, Any]],
    statuses: list[dict[str, Any]],
    fleet_stats: dict[str, Any],
    fleet_sent: dict[str, int],
) -> tuple[Refusal, ...]:
    """Bad input sent (the emulators' reports, ``fleet_sent`` by :func:`attack_fleet`) against
    what the edge agents' ``status.json`` and the fleet's ``GET /api/v1/stats`` counted."""

    def sent(kind: str) -> int:
        return sum(int(report.get("hostile", {}).get(kind, 0)) for report in reports)

    def edge(section: str, *names: str) -> int:
        return sum(
            int(status.get(section, {}).get(name, 0)) for status in statuses for name in names
        )

    ingest = fleet_stats.get("ingest", {})
    rejected = ingest.get("rejected", {})
    return (
        Refusal("replayed frames", "edge", sent("replay"), edge("lorawan", "rejected_replay")),
        Refusal("frames with an altered MIC", "edge", sent("bad_mic"),
                edge("lorawan", "rejected_mic_failed")),
        Refusal("frames with a bad radio CRC", "edge", sent("crc_bad"),
                edge("radio", "rx_crc_bad")),
        Refusal("line noise on the serial link", "edge", sent("line_noise"),
                edge("radio", "link_crc_errors", "link_frame_errors", "link_invalid")),
        Refusal("batches signed with a foreign key, or unsigned", "fleet",
                fleet_sent.get("forged", 0) + fleet_sent.get("unsigned", 0),
                int(rejected.get("signature", 0))),
        Refusal("batches naming another gateway", "fleet", fleet_sent.get("wrong_gateway", 0),
                int(rejected.get("wrong_gateway", 0))),
        Refusal("a real batch published twice", "fleet", fleet_sent.get("repeated", 0),
                int(ingest.get("batch_duplicates", 0))),
    )  # fmt: skip


def attack_fleet(mqtt_url: str, gateways: list[dict[str, Any]]) -> dict[str, int]:
    """Bad input at the broker, as someone with access to it could send: a batch signed with
    a foreign key, an unsigned one, one signed by a real gateway but naming another, and a real
    batch captured from the broker and published again. Returns what was sent, by kind."""
    host, _, port = mqtt_url.removeprefix("mqtt://").partition(":")
    return asyncio.run(_attack(host, int(port), gateways))


async def _attack(host: str, port: int, gateways: list[dict[str, Any]]) -> dict[str, int]:
    victim = gateways[0]["id"]
    topic = _TELEMETRY.format(victim)
    identity = Path(gateways[0]["keys_dir"]) / "identity-ed25519.pem"
    key = serialization.load_pem_private_key(identity.read_bytes(), None)
    if not isinstance(key, Ed25519PrivateKey):
        raise DemoFailed(f"{identity} is not an Ed25519 key")
    now = int(time.time())
    reading = Reading(bytes(8), now, {"battery_mv": 3000}, fcnt=1)

    def batch(gateway_id: str, seq: int) -> bytes:
        return encode_batch(Batch(bytes.fromhex(gateway_id), seq, now, [reading]))

    other = gateways[1]["id"] if len(gateways) > 1 else "00" * 8
    # Sequence numbers far above the real ones, so none can pass for a repeat.
    bad = {
        "forged": sign(batch(victim, 2**40), Ed25519PrivateKey.generate()),
        "unsigned": batch(victim, 2**40 + 1),
        "wrong_gateway": sign(batch(other, 2**40 + 2), key),
    }
    sent = dict.fromkeys([*bad, "repeated"], 0)
    identifier = f"owlgate-demo-{secrets.token_hex(4)}"
    async with aiomqtt.Client(host, port, identifier=identifier, username="owlgate-demo") as c:
        await c.subscribe(topic, qos=1)
        for kind, payload in bad.items():
            await c.publish(topic, payload, qos=1)
            sent[kind] += 1
        # The first batch seen that is not one of ours is the gateway's own: send it again.
        # (amqtt 0.12 also hands a new client retained messages of other clients'
        # subscriptions, such as the gateways' state: only the telemetry topic counts.)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CAPTURE_TIMEOUT_S):
                async for message in c.messages:
                    payload = message.payload
                    if (
                        message.topic.matches(topic)
                        and isinstance(payload, bytes)
                        and payload not in bad.values()
                    ):
                        await c.publish(topic, payload, qos=1)
                        sent["repeated"] += 1
                        break
    return sent


def _stored(client: httpx.Client, euis: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for eui in euis:
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if after is not None:
                params["after"] = after
            page = client.get(f"/api/v1/nodes/{eui}/readings", params=params)
            page = page.raise_for_status().json()
            items.extend(page["items"])
            after = page.get("next")
            if not after:
                break
        out[eui] = items
    return out


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((AIR_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def neighbourhood(
    gws: list[dict[str, Any]], euis: list[str], overlap: float
) -> tuple[list[list[str]], list[list[str]]]:
    """Each gateway's devices (dealt round-robin) and those of them the next gateway in the
    ring hears too (the first ``overlap`` share of each; none with a single gateway)."""
    mine = [euis[index :: len(gws)] for index in range(len(gws))]
    if len(gws) < 2:
        return mine, [[] for _ in gws]
    return mine, [devices[: round(len(devices) * overlap)] for devices in mine]


def _dashboard_link(db: Path, token_file: Path, api_url: str) -> str:
    """A one-time login link to the dashboard for the demo's operator token."""
    made = subprocess.run(
        [sys.executable, "-m", MODULE, "fleet", "ui-link", "--db", str(db),
         "--token-file", str(token_file), "--url", api_url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        raise DemoFailed(f"fleet ui-link failed: {made.stderr.strip()}")
    return made.stdout.strip()


def can_open_browser() -> bool:
    """Whether there is a desktop whose browser :mod:`webbrowser` would open (on a headless
    machine it may pick a text browser, which would take over the terminal)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open_browser(url: str, console: Console) -> None:
    try:
        opened = webbrowser.open(url, new=2)
    except webbrowser.Error as err:
        opened = False
        console.print(f"could not open a browser ({err}): open the link above")
    if not opened:
        console.print("no browser opened: open the dashboard link above")


def run_demo(
    *,
    gateways: int,
    nodes: int,
    duration: float | None,
    http_port: int,
    broker: str | None,
    workdir: Path,
    seed: int,
    console: Console,
    overlap: float = DEFAULT_OVERLAP,
    hostile_every: int = DEFAULT_HOSTILE_EVERY,
    open_browser: bool = False,
) -> Summary:
    """Run the system as the module docstring says; returns the summary. With
    ``open_browser``, the operations dashboard opens in the desktop's browser."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "fleet.db"
    seeded = subprocess.run(
        [sys.executable, "-m", MODULE, "fleet", "seed", "--db", str(db),
         "--gateways", str(gateways), "--nodes", str(nodes), "--seed", str(seed)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    (workdir / "seed.log").write_text(seeded.stdout + seeded.stderr)
    if seeded.returncode != 0:
        raise DemoFailed(f"fleet seed failed: {seeded.stderr.strip()}")
    # The API wants a bearer token: an operator's (reads only), written 0600 for the demo.
    token_file = workdir / "operator-token"
    minted = subprocess.run(
        [sys.executable, "-m", MODULE, "fleet", "token", "create", "--db", str(db),
         "--role", "operator", "--name", "demo", "--out", str(token_file)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if minted.returncode != 0:
        raise DemoFailed(f"fleet token create failed: {minted.stderr.strip()}")
    api_token = token_file.read_text().strip()
    manifest_path = workdir / "emulator-secrets.json"
    manifest = json.loads(manifest_path.read_text())
    euis = [d["dev_eui"] for d in manifest["devices"]]
    gws = manifest["gateways"]
    mine, shared = neighbourhood(gws, euis, overlap)
    air_ports = [_free_udp_port() for _ in gws]
    reports: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []
    with children_stopped_at_exit() as children:
        serve = ["fleet", "serve", "--db", str(db), "--http-port", str(http_port)]
        serve += ["--signing-key", manifest["fleet_signing_key"]]
        if broker is not None:
            serve += ["--broker", broker]
        fleet = ChildProcess("fleet", serve, workdir / "fleet.log")
        children.append(fleet)
        mqtt_url = fleet.expect(r"MQTT broker: (mqtt://\S+)").group(1)
        api_url = fleet.expect(r"Uvicorn running on (http://\S+)").group(1)
        emulators: list[ChildProcess] = []
        edges: list[ChildProcess] = []
        for index, gw in enumerate(gws):
            gw_dir = workdir / gw["id"]
            gw_dir.mkdir(exist_ok=True)
            args = ["hil", "gateway", "--link-dir", str(gw_dir), "--manifest", str(manifest_path),
                    "--gateway", gw["id"], "--devices", ",".join(mine[index]),
                    "--interval-s", str(_INTERVAL_S), "--report", str(gw_dir / "report.json"),
                    "--seed", str(seed + index * 1000), "--wait-for-start",
                    "--air-port", str(air_ports[index]),
                    "--hostile-every", str(hostile_every)]  # fmt: skip
            if shared[index]:
                args += ["--neighbour-port", str(air_ports[(index + 1) % len(gws)])]
                args += ["--shared-devices", ",".join(shared[index])]
            emulator = ChildProcess(
                f"emulator {gw['id']}", args, gw_dir / "emulator.log", stdin=True
            )
            children.append(emulator)
            emulators.append(emulator)
            link = emulator.expect(r"^LINK (\S+)").group(1)
            config = gw_dir / "edge.toml"
            config.write_text(
                edge_config(gw, state_dir=gw_dir / "state", port=link, mqtt_url=mqtt_url)
            )
            edge = ChildProcess(
                f"edge {gw['id']}", ["edge", "run", "--config", str(config)], gw_dir / "edge.log"
            )
            children.append(edge)
            edges.append(edge)
        dashboard = _dashboard_link(db, token_file, api_url)
        console.print(f"dashboard: [bold]{dashboard}[/]  (a one-time login link)")
        if open_browser:
            _open_browser(dashboard, console)
        console.print(f"API: [bold]{api_url}[/]  (e.g. {api_url}/api/v1/nodes)")
        console.print(f"broker: {mqtt_url}; work folder and logs: {workdir}")
        console.print(f"API token (operator): {token_file}")
        # Devices start when every gateway has its radio configured and the fleet's device
        # sessions: a frame heard before that could not be decoded yet.
        for edge in edges:
            edge.expect(r"ready: ", _READY_TIMEOUT_S)
        for emulator in emulators:
            emulator.expect(r"^READY_FOR_START")
            emulator.send_line(START_WORD)
        console.print(f"{len(edges)} gateways ready; {len(euis)} devices start reporting")
        client = httpx.Client(
            base_url=api_url,
            timeout=10.0,
            headers={"Authorization": f"Bearer {api_token}"},
        )
        fleet_sent: dict[str, int] = {}
        with ExitStack() as stack:
            stack.callback(client.close)
            start = time.monotonic()
            try:
                while duration is None or time.monotonic() - start < duration:
                    time.sleep(
                        min(_PROGRESS_S, max(0.0, (duration or 1e9) - (time.monotonic() - start)))
                    )
                    elapsed = time.monotonic() - start
                    if not fleet_sent:
                        fleet_sent = attack_fleet(mqtt_url, gws)
                        console.print(
                            f"{elapsed:5.0f} s: sent {sum(fleet_sent.values())} bad batches to "
                            "the broker"
                        )
                    try:
                        count = sum(len(v) for v in _stored(client, euis).values())
                    except httpx.HTTPError as err:
                        console.print(f"{elapsed:5.0f} s: the API did not answer ({err})")
                        continue
                    console.print(f"{elapsed:5.0f} s: {count} readings stored")
            except KeyboardInterrupt:
                console.print("stopping…")
            for emulator in emulators:
                emulator.stop()
            for gw in gws:
                report = workdir / gw["id"] / "report.json"
                if report.exists():
                    reports.append(json.loads(report.read_text()))
                else:
                    raise DemoFailed(f"emulator {gw['id']} wrote no report")
            deadline = time.monotonic() + _DRAIN_TIMEOUT_S
            while True:
                summary = summarise(reports, _stored(client, euis))
                if summary.ok or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            # Each agent writes its counters to status.json when it stops.
            for edge in edges:
                edge.stop()
            for gw in gws:
                status = workdir / gw["id"] / "state" / "status.json"
                statuses.append(json.loads(status.read_text()) if status.exists() else {})
            try:
                stats = client.get("/api/v1/stats").raise_for_status().json()
            except httpx.HTTPError as err:
                raise DemoFailed(f"the fleet's counters are not available: {err}") from err
    return dataclasses.replace(summary, refusals=refusals(reports, statuses, stats, fleet_sent))


def render(summary: Summary, console: Console) -> None:
    """The end-of-run tables."""
    table = Table(title="owlgate demo summary", title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("readings generated", str(summary.generated))
    table.add_row("readings stored", str(summary.stored))
    table.add_row("readings missing", str(summary.missing))
    table.add_row("stored but not generated", str(summary.unexpected))
    table.add_row("uplinks heard by two gateways", str(summary.relayed))
    table.add_row("duplicates merged", str(summary.duplicates))
    table.add_row("rejected", str(sum(refusal.refused for refusal in summary.refusals)))
    console.print(table)
    if summary.refusals:
        bad = Table(title="Bad input, sent and refused", title_justify="left")
        bad.add_column("bad input")
        bad.add_column("refused by")
        bad.add_column("sent", justify="right")
        bad.add_column("refused", justify="right")
        bad.add_column("", justify="center")
        for refusal in summary.refusals:
            mark = "[green]✓[/]" if refusal.ok else "[red]✗[/]"
            bad.add_row(refusal.what, refusal.where, str(refusal.sent), str(refusal.refused), mark)
        console.print(bad)
    if summary.missing == 0:
        console.print("[green]every generated reading was stored[/]")
    else:
        console.print(f"[red]{summary.missing} generated readings are missing[/]")
    failed = [refusal.what for refusal in summary.refusals if not refusal.ok]
    if failed:
        console.print(f"[red]bad input not refused: {', '.join(failed)}[/]")


@demo_command.callback(invoke_without_command=True)
def demo(
    gateways: Annotated[int, typer.Option("--gateways", min=1, help="emulated gateways")] = 3,
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="emulated devices")] = 60,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=1, help="seconds to run (default: until Ctrl-C)"),
    ] = None,
    http_port: Annotated[
        int, typer.Option("--http-port", min=0, max=65535, help="API port (0: any free port)")
    ] = 8080,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker", metavar="mqtt://HOST:PORT", help="MQTT broker (default: embedded)"
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="folder for the database, keys and logs (default: new)"),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="seed for ids, keys and values")
    ] = None,
    overlap: Annotated[
        float,
        typer.Option(
            "--overlap",
            min=0.0,
            max=1.0,
            help="share of each gateway's devices the next gateway hears too",
        ),
    ] = DEFAULT_OVERLAP,
    hostile_every: Annotated[
        int,
        typer.Option(
            "--hostile-every",
            min=0,
            help="one bad radio input after every N uplinks of a gateway; 0: none",
        ),
    ] = DEFAULT_HOSTILE_EVERY,
    open_browser: Annotated[
        bool | None,
        typer.Option(
            "--open/--no-open",
            help="open the dashboard in the browser (default: when there is a desktop)",
        ),
    ] = None,
) -> None:
    """Run fleet, broker, emulated gateways and devices and edge agents; at the end compare
    generated and stored readings, and bad input sent and refused. Exit code 1 if any
    generated reading is missing or any bad input was not refused."""
    console = Console()
    folder = workdir or Path(tempfile.mkdtemp(prefix="owlgate-demo-"))
    chosen = secrets.randbelow(2**31) if seed is None else seed
    console.print(f"[bold]owlgate demo[/] — work folder {folder}, seed {chosen}")
    try:
        summary = run_demo(
            gateways=gateways, nodes=nodes, duration=duration, http_port=http_port,
            broker=broker, workdir=folder, seed=chosen, console=console,
            overlap=overlap, hostile_every=hostile_every,
            open_browser=can_open_browser() if open_browser is None else open_browser,
        )  # fmt: skip
    except ProcessFailed as err:
        console.print(f"[red]error:[/] {err.message}")
        raise typer.Exit(2) from err
    render(summary, console)
    if not summary.ok:
        raise typer.Exit(1)
