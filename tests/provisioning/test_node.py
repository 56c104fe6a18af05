"""``owlgate provision node`` over the real serial stack (pyserial on the emulators' ptys)
against a real ``owlgate fleet serve``: both modules, the error replies, slow and busy
modules, a restart in the middle of the sequence, a flaky cable, and the fleet's refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from owlgate.codecs.cli import app
from owlgate.hil.rak3172_lorawan import EmulatedRak3172LoRaWAN
from owlgate.hil.rn2483 import EmulatedRn2483
from owlgate.provisioning.modules import (
    LinkError,
    ModuleRefused,
    NodeKeys,
    Rak3172Driver,
    SerialLink,
    detect,
    program,
)
from owlgate.provisioning.node import FleetKeys, Journal, NodeSettings, provision_port
from tests.provisioning.conftest import ModuleBench, NodeFleet

PROFILE = "parking-v1"
FAST_S = "0.3"


def run(fleet: NodeFleet, token: Path, tmp_path: Path, *args: str) -> Any:
    argv = ["provision", "node", "--fleet", fleet.http_url, "--token-file", str(token)]
    argv += ["--profile", PROFILE, "--journal", str(tmp_path / "journal.jsonl")]
    argv += ["--reply-timeout", FAST_S, *args]
    return CliRunner().invoke(app, argv)


def test_a_rak3172_is_provisioned_and_its_key_never_shown(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path
) -> None:
    rak = modules.rak()
    token = node_fleet.token_file()
    result = run(node_fleet, token, tmp_path, "--port", str(rak.path), "--site", "market")
    assert result.exit_code == 0, result.output
    dev_eui = rak.factory_dev_eui.hex()
    key = rak.app_key.hex().upper()
    assert rak.app_key != bytes(16)
    assert key not in result.output
    assert key.lower() not in result.output
    line = result.output.strip().splitlines()[0]
    assert line == (f"{rak.path}: RAK3172 {dev_eui}: provisioned: written, read back and saved"), (
        line
    )
    assert rak.dev_eui == rak.factory_dev_eui
    assert rak.band == 4
    assert rak.join_mode == 1
    assert rak.commands.count("AT+APPKEY=?") == 1
    device = node_fleet.admin("GET", f"/api/v1/nodes/{dev_eui}").json()
    assert device["profile_id"] == PROFILE
    assert rak.join_eui == bytes.fromhex(device["join_eui"])


def test_show_key_and_json_print_the_key_the_module_holds(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path
) -> None:
    rak = modules.rak()
    result = run(node_fleet, node_fleet.token_file(), tmp_path, "--port", str(rak.path),
                 "--json", "--show-key")  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.strip().splitlines()[0])
    assert answer["result"] == "provisioned"
    assert answer["module"] == "RAK3172"
    assert answer["app_key"] == rak.app_key.hex().upper()
    assert answer["firmware"] == "RUI_4.0.6_RAK3172-E"


def test_an_rn2483_is_auto_bauded_written_and_saved(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path
) -> None:
    rn = modules.rn()
    result = run(node_fleet, node_fleet.token_file(), tmp_path, "--port", str(rn.path),
                 "--json", "--show-key")  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.strip().splitlines()[0])
    assert answer["module"] == "RN2483"
    assert answer["dev_eui"] == rn.hweui.hex()
    assert "cannot read its AppKey back" in answer["detail"]
    assert rn.autobauds >= 1
    assert rn.baud == 115200
    assert rn.saved["appkey"].hex().upper() == answer["app_key"]
    assert rn.saved["deveui"] == rn.hweui
    assert rn.saved["appeui"].hex() == answer["join_eui"]


def keys_for(fleet: NodeFleet, token: Path) -> FleetKeys:
    client = httpx.Client(
        base_url=fleet.http_url,
        headers={"Authorization": f"Bearer {token.read_text().strip()}"},
        timeout=10.0,
    )
    return FleetKeys(client, profile_id=PROFILE)


def provision(rak_or_rn: Any, fleet: NodeFleet, tmp_path: Path, token: Path | None = None) -> Any:
    keys = keys_for(fleet, token or fleet.token_file())
    settings = NodeSettings(PROFILE, reply_timeout_s=0.3, busy_backoff_s=0.01)
    try:
        return provision_port(str(rak_or_rn.path), settings, keys,
                              Journal(tmp_path / "journal.jsonl"))  # fmt: skip
    finally:
        keys.client.close()


@pytest.mark.parametrize("kind", ["rak", "rn"])
def test_slow_and_busy_modules_are_waited_for(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path, kind: str
) -> None:
    module = modules.rak() if kind == "rak" else modules.rn()
    module.faults.reply_delay_s = 0.05
    module.faults.busy = 3
    result = provision(module, node_fleet, tmp_path)
    assert result.result == "provisioned", result.detail
    assert module.faults.busy == 0


@pytest.mark.parametrize("kind", ["rak", "rn"])
@pytest.mark.parametrize("after", [6, 9, 11])
def test_a_restart_in_the_middle_is_recovered_from(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path, kind: str, after: int
) -> None:
    module = modules.rak() if kind == "rak" else modules.rn()
    module.faults.restart_after = after
    result = provision(module, node_fleet, tmp_path)
    assert result.result == "provisioned", result.detail
    assert module.restarts == 1
    assert "attempts" in result.detail
    if isinstance(module, EmulatedRn2483):
        # What counts is what the EEPROM holds after the restart.
        assert module.saved["deveui"] == module.hweui
        assert module.saved["appkey"].hex().upper() == result.app_key
    else:
        assert module.app_key.hex().upper() == result.app_key


@pytest.mark.parametrize("kind", ["rak", "rn"])
@pytest.mark.parametrize("fault", ["corrupt_replies", "drop_reply_bytes"])
def test_a_flaky_cable_is_retried_and_never_registers_a_wrong_dev_eui(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path, kind: str, fault: str
) -> None:
    module = modules.rak() if kind == "rak" else modules.rn()
    setattr(module.faults, fault, 2)
    result = provision(module, node_fleet, tmp_path)
    assert result.result == "provisioned", result.detail
    assert module.garbled_replies == 2
    factory = module.hweui if isinstance(module, EmulatedRn2483) else module.factory_dev_eui
    assert result.dev_eui == factory.hex()


def test_a_param_error_is_a_refusal_not_retried(modules: ModuleBench) -> None:
    rak = modules.rak()
    with SerialLink(str(rak.path), 115200, reply_timeout_s=0.3) as link:
        driver = detect(link)
        assert isinstance(driver, Rak3172Driver)
        with pytest.raises(ModuleRefused, match="AT_PARAM_ERROR"):
            driver._command(b"AT+BAND=99\r\n", None, read=False)
        # The codec refuses a bad key before anything is written.
        with pytest.raises(ModuleRefused, match="16 to 16 bytes"):
            program(driver, NodeKeys(bytes(8), bytes(8), b"short"))
    assert not [line for line in rak.commands if line.startswith("AT+APPKEY=")]


def test_a_module_that_never_answers_fails_with_advice(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path
) -> None:
    rak = modules.rak()
    rak.faults.busy = 10_000
    result = provision(rak, node_fleet, tmp_path)
    assert result.result == "failed"
    assert "no module answered" in result.detail
    assert "check that the module is powered" in result.todo
    with pytest.raises(LinkError, match="cannot open"):
        SerialLink(str(tmp_path / "nothing"), 115200).open()


def test_the_fleets_refusals_are_reported(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path
) -> None:
    rak = modules.rak()
    operator = run(node_fleet, node_fleet.token_file("operator"), tmp_path, "--port",
                   str(rak.path))  # fmt: skip
    assert operator.exit_code == 1
    assert "the fleet answered 403" in operator.output
    assert "ask for a technician token" in operator.output
    assert rak.app_key == bytes(16)
    first = provision(rak, node_fleet, tmp_path / "a")
    assert first.result == "provisioned"
    colleague = provision(rak, node_fleet, tmp_path / "b")
    assert colleague.result == "failed"
    assert "409" in colleague.detail
    assert "already provisioned" in colleague.detail
    bad = tmp_path / "bad-token"
    bad.write_text("two words\n")
    refused = run(node_fleet, bad, tmp_path, "--port", str(rak.path))
    assert refused.exit_code == 2
    assert "does not hold a token" in refused.output


def test_a_p2p_module_is_switched_to_lorawan(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path
) -> None:
    rak: EmulatedRak3172LoRaWAN = modules.rak(work_mode=0)
    result = provision(rak, node_fleet, tmp_path)
    assert result.result == "provisioned", result.detail
    assert rak.work_mode == 1
    assert rak.restarts == 1
