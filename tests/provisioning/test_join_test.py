"""``owlgate provision node --join-test``: the module joins through a nearby gateway and the
fleet confirms it, end to end through real processes: ``owlgate fleet serve`` (embedded
broker), ``owlgate hil gateway`` with no devices of its own (``--air-port`` hears the module,
``--tx-air-port`` sends what it transmits back to it) and ``owlgate edge run`` on its
concentrator; the emulated RAK3172 or RN2483 on a pty sends its join request on that air. And
the join tests that must fail, with the sentence that says what to do."""

from __future__ import annotations

import csv
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import serial  # type: ignore[import-untyped]  # pyserial ships no type information
from typer.testing import CliRunner

from owlgate.codecs.cli import app
from owlgate.hil.demo import edge_config
from owlgate.hil.gateway_emulator import AIR_HOST
from owlgate.hil.processes import ChildProcess, children_stopped_at_exit
from tests.provisioning.conftest import ModuleBench, NodeFleet

PROFILE = "parking-v1"
READY_TIMEOUT_S = 30.0


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((AIR_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class JoinWorld:
    """A fleet and one gateway listening on ``air_port``, transmitting to ``tx_port``."""

    fleet: NodeFleet
    air_port: int
    tx_port: int
    gateway_log: Path


@pytest.fixture(scope="module")
def join_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JoinWorld]:
    folder = tmp_path_factory.mktemp("join-world")
    db = folder / "fleet.db"
    seeded = CliRunner().invoke(
        app, ["fleet", "seed", "--db", str(db), "--gateways", "1", "--nodes", "0"]
    )
    assert seeded.exit_code == 0, seeded.output
    manifest_path = folder / "emulator-secrets.json"
    manifest = json.loads(manifest_path.read_text())
    gateway = manifest["gateways"][0]
    air_port, tx_port = _free_udp_port(), _free_udp_port()
    with children_stopped_at_exit() as children:
        serve = ChildProcess(
            "fleet",
            ["fleet", "serve", "--db", str(db), "--http-port", "0",
             "--signing-key", manifest["fleet_signing_key"]],
            folder / "fleet.log",
        )  # fmt: skip
        children.append(serve)
        mqtt_url = serve.expect(r"MQTT broker: (mqtt://\S+)").group(1)
        http_url = serve.expect(r"Uvicorn running on (http://\S+)").group(1)
        emulator = ChildProcess(
            "gateway emulator",
            ["hil", "gateway", "--link-dir", str(folder / "gw"), "--manifest", str(manifest_path),
             "--gateway", gateway["id"], "--devices", "", "--air-port", str(air_port),
             "--tx-air-port", str(tx_port)],
            folder / "emulator.log",
        )  # fmt: skip
        children.append(emulator)
        link = emulator.expect(r"^LINK (\S+)").group(1)
        config = folder / "edge.toml"
        config.write_text(
            edge_config(gateway, state_dir=folder / "state", port=link, mqtt_url=mqtt_url)
        )
        edge = ChildProcess("edge", ["edge", "run", "--config", str(config)], folder / "edge.log")
        children.append(edge)
        edge.expect(r"ready: ", READY_TIMEOUT_S)
        yield JoinWorld(NodeFleet(db, http_url, folder), air_port, tx_port, folder / "edge.log")


def run(world: JoinWorld, tmp_path: Path, *args: str) -> Any:
    argv = ["provision", "node", "--fleet", world.fleet.http_url, "--token-file",
            str(world.fleet.token_file()), "--profile", PROFILE,
            "--journal", str(tmp_path / "journal.jsonl"),
            "--reply-timeout", "0.5", *args]  # fmt: skip
    return CliRunner().invoke(app, argv)


def test_a_provisioned_module_joins_through_the_gateway_and_the_fleet_shows_it(
    modules: ModuleBench, join_world: JoinWorld, tmp_path: Path
) -> None:
    rak = modules.rak(
        air_address=(AIR_HOST, join_world.air_port), air_receive_port=join_world.tx_port
    )
    dev_eui = rak.factory_dev_eui.hex()
    report = tmp_path / "report.csv"
    result = run(join_world, tmp_path, "--port", str(rak.path), "--join-test",
                 "--report", str(report))  # fmt: skip
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[0]
    assert line.startswith(
        f"{rak.path}: RAK3172 {dev_eui}: provisioned: written, read back and saved; joined in "
    ), line
    assert "1 of 1 modules joined" in result.output
    key = rak.app_key.hex()
    assert key.upper() not in result.output
    assert key not in result.output
    assert "AT+JOIN=1:0:8:1" in rak.commands
    assert "AT+NJS=?" in rak.commands
    assert rak.joined
    assert rak.join_requests == 1
    assert rak.dev_addr is not None
    node = join_world.fleet.admin("GET", f"/api/v1/nodes/{dev_eui}").json()
    assert node["joined_at"] is not None
    assert node["dev_addr"] == f"{rak.dev_addr:08x}"
    with report.open(newline="") as source:
        rows = list(csv.DictReader(source))
    assert [row["dev_eui"] for row in rows] == [dev_eui]
    assert rows[0]["join"].startswith("joined in ")
    assert key not in report.read_text().lower()


def test_with_no_gateway_listening_the_join_fails_with_what_to_do(
    modules: ModuleBench, join_world: JoinWorld, tmp_path: Path
) -> None:
    # The module's air reaches a port where no gateway listens: its one attempt hears nothing.
    rak = modules.rak(air_address=(AIR_HOST, _free_udp_port()), join_rx_timeout_s=1.0)
    report = tmp_path / "report.csv"
    result = run(join_world, tmp_path, "--port", str(rak.path), "--join-test",
                 "--join-timeout", "5", "--report", str(report))  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "provisioned: written, read back and saved; join failed: no join accept came back" in (
        result.output
    )
    assert "check a gateway is online nearby" in result.output
    assert "0 of 1 modules joined" in result.output
    assert rak.join_requests == 1
    assert not rak.joined
    node = join_world.fleet.admin("GET", f"/api/v1/nodes/{rak.factory_dev_eui.hex()}").json()
    assert node["joined_at"] is None
    with report.open(newline="") as source:
        assert next(csv.DictReader(source))["join"].startswith("join failed: no join accept")


def test_a_module_silent_past_the_timeout_is_reported_with_the_timeout(
    modules: ModuleBench, join_world: JoinWorld, tmp_path: Path
) -> None:
    # The module's receive window outlasts the tool's patience.
    rak = modules.rak(join_rx_timeout_s=30.0)
    result = run(join_world, tmp_path, "--port", str(rak.path), "--join-test",
                 "--join-timeout", "1")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "join failed: the module reported no join result within 1 s" in result.output


def test_an_rn2483_joins_through_the_gateway_and_the_fleet_shows_it(
    modules: ModuleBench, join_world: JoinWorld, tmp_path: Path
) -> None:
    rn = modules.rn(
        air_address=(AIR_HOST, join_world.air_port), air_receive_port=join_world.tx_port
    )
    dev_eui = rn.hweui.hex()
    result = run(join_world, tmp_path, "--port", str(rn.path), "--join-test")
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[0]
    assert line.startswith(f"{rn.path}: RN2483 {dev_eui}: provisioned: "), line
    assert "; joined in " in line, line
    assert "1 of 1 modules joined" in result.output
    assert rn.saved["appkey"].hex() not in result.output.lower()
    assert "mac join otaa" in rn.commands
    assert rn.join_requests == 1
    assert rn.dev_addr is not None
    node = join_world.fleet.admin("GET", f"/api/v1/nodes/{dev_eui}").json()
    assert node["joined_at"] is not None
    assert node["dev_addr"] == f"{rn.dev_addr:08x}"


def test_an_rn2483_denied_says_what_to_do(
    modules: ModuleBench, join_world: JoinWorld, tmp_path: Path
) -> None:
    # No gateway hears the module: its one join request goes unanswered and it says denied.
    rn = modules.rn(air_address=(AIR_HOST, _free_udp_port()), join_rx_timeout_s=1.0)
    result = run(join_world, tmp_path, "--port", str(rn.path), "--join-test",
                 "--join-timeout", "5")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "join failed: no join accept came back" in result.output
    assert "check a gateway is online nearby" in result.output
    assert rn.join_requests == 1
    assert not rn.joined


def test_the_join_test_is_refused_offline(modules: ModuleBench, tmp_path: Path) -> None:
    rn = modules.rn()
    offline = CliRunner().invoke(
        app,
        ["provision", "node", "--port", str(rn.path), "--offline",
         "--bundle", str(tmp_path / "none.bundle"), "--join-test"],
    )  # fmt: skip
    assert offline.exit_code == 2
    assert "the join test needs the fleet online" in offline.output


def test_the_emulated_rn2483_answers_mac_join_as_its_command_reference_says(
    modules: ModuleBench,
) -> None:
    rn = modules.rn(join_rx_timeout_s=0.2)
    with serial.Serial(str(rn.path), 57600, timeout=2.0) as port:

        def ask(command: str) -> bytes:
            port.write(command.encode() + b"\r\n")
            return bytes(port.read_until(b"\r\n"))

        # No AppKey yet: the join cannot start; ABP keys are not kept by this emulator.
        assert ask("mac join otaa") == b"keys_not_init\r\n"
        assert ask("mac join abp") == b"keys_not_init\r\n"
        assert ask("mac join maybe") == b"invalid_param\r\n"
        assert ask("mac set appkey " + "2B" * 16) == b"ok\r\n"
        assert ask("mac join otaa") == b"ok\r\n"
        # Joining: another join is refused until the first is over, which no gateway answers.
        assert ask("mac join otaa") == b"busy\r\n"
        assert port.read_until(b"\r\n") == b"denied\r\n"
        assert ask("mac get devaddr") == b"00000000\r\n"
    assert rn.join_requests == 1


def test_the_emulated_module_answers_join_commands_by_the_rui3_table(
    modules: ModuleBench, tmp_path: Path
) -> None:
    rak = modules.rak(join_rx_timeout_s=0.2)
    with serial.Serial(str(rak.path), 115200, timeout=2.0) as port:

        def ask(command: str, until: bytes = b"\r\n") -> bytes:
            port.write(command.encode() + b"\r\n")
            return bytes(port.read_until(until))

        assert ask("AT+NJS=?", b"OK\r\n") == b"AT+NJS=0\r\n\r\nOK\r\n"
        # The interval is 7 to 255 s in RUI3.
        assert ask("AT+JOIN=1:0:3:1", b"ERROR\r\n") == b"\r\nAT_PARAM_ERROR\r\n"
        assert ask("AT+JOIN=1:0:8:1", b"OK\r\n") == b"\r\nOK\r\n"
        assert port.read_until(b"TIMEOUT\r\n") == b"+EVT:JOIN_FAILED_RX_TIMEOUT\r\n"
        assert ask("AT+JOIN=?", b"OK\r\n") == b"AT+JOIN=1:0:8:1\r\n\r\nOK\r\n"
        assert ask("AT+NJS=?", b"OK\r\n") == b"AT+NJS=0\r\n\r\nOK\r\n"
    assert rak.join_requests == 1
