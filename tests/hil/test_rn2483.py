"""The emulated RN2483, through pyserial on its pty: its command syntax and replies, CR LF,
settings in RAM until ``mac save``, auto-baud (break + 0x55) and each fault it plays."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial  # type: ignore[import-untyped]  # pyserial ships no type information

from owlgate.hil.rn2483 import DEFAULT_BAUD, FACTORY_HWEUI, VERSION, EmulatedRn2483
from tests.provisioning.conftest import ModuleBench

READ_S = 2.0


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[ModuleBench]:
    made = ModuleBench(tmp_path / "dev")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def rn(bench: ModuleBench) -> EmulatedRn2483:
    return bench.rn(FACTORY_HWEUI)


def ask(port: serial.Serial, command: str, *, ending: bytes = b"\r\n") -> str | None:
    """One reply line (without CR LF), or None when nothing came."""
    port.reset_input_buffer()
    port.write(command.encode() + ending)
    deadline = time.monotonic() + READ_S
    seen = b""
    while b"\r\n" not in seen and time.monotonic() < deadline:
        seen += port.read(max(1, port.in_waiting))
    return seen.split(b"\r\n")[0].decode() if b"\r\n" in seen else None


def silent(port: serial.Serial, command: str) -> bool:
    port.reset_input_buffer()
    port.write(command.encode() + b"\r\n")
    reply: bytes = port.read(64)
    return reply == b""


def autobaud(port: serial.Serial) -> None:
    rate = port.baudrate
    port.baudrate = 2400
    port.write(b"\x00")
    port.flush()
    port.baudrate = rate
    port.write(b"\x55")
    port.flush()


@pytest.fixture
def port(rn: EmulatedRn2483) -> Iterator[serial.Serial]:
    with serial.Serial(str(rn.path), DEFAULT_BAUD, timeout=0.2) as opened:
        yield opened


def test_answers_its_command_set(rn: EmulatedRn2483, port: serial.Serial) -> None:
    assert ask(port, "sys get ver") == VERSION
    assert ask(port, "sys get hweui") == "0004A30B001A2B3C"
    assert ask(port, "mac get deveui") == "0000000000000000"
    assert ask(port, "mac reset 868") == "ok"
    assert ask(port, "mac set deveui 0004A30B001A2B3C") == "ok"
    assert ask(port, "mac set appeui 70B3D57ED0000001") == "ok"
    assert ask(port, "mac set appkey 00112233445566778899AABBCCDDEEFF") == "ok"
    assert ask(port, "mac get appeui") == "70B3D57ED0000001"
    assert ask(port, "mac get band") == "868"
    # There is no way to read the AppKey back.
    assert ask(port, "mac get appkey") == "invalid_param"
    assert ask(port, "mac save") == "ok"
    assert rn.saved["appkey"] == bytes.fromhex("00112233445566778899AABBCCDDEEFF")


@pytest.mark.parametrize(
    "command",
    ["mac set deveui 0102", "mac set appkey XYZ", "mac reset 915", "sys get nothing", "AT"],
)
def test_bad_commands_are_invalid_param(port: serial.Serial, command: str) -> None:
    assert ask(port, command) == "invalid_param"


def test_a_line_without_its_cr_is_invalid(port: serial.Serial) -> None:
    assert ask(port, "sys get ver", ending=b"\n") == "invalid_param"


def test_unsaved_settings_are_lost_in_a_reset(rn: EmulatedRn2483, port: serial.Serial) -> None:
    ask(port, "mac set appeui 70B3D57ED0000001")
    ask(port, "mac save")
    ask(port, "mac set appeui 70B3D57ED0000002")
    assert ask(port, "sys reset") == VERSION
    assert rn.restarts == 1
    assert ask(port, "mac get appeui") == "70B3D57ED0000001"


def test_auto_baud_follows_the_host_until_a_reset(rn: EmulatedRn2483, port: serial.Serial) -> None:
    port.baudrate = 115200
    assert silent(port, "sys get ver")
    assert rn.garbled_bytes == len("sys get ver\r\n")
    autobaud(port)
    assert ask(port, "sys get ver") == VERSION
    assert rn.baud == 115200
    assert rn.autobauds == 1
    # After a reset the module is back at 57600: its banner is lost to a host at 115200.
    assert silent(port, "sys reset")
    time.sleep(0.1)
    assert rn.baud == DEFAULT_BAUD
    assert silent(port, "sys get ver")
    port.baudrate = DEFAULT_BAUD
    assert ask(port, "sys get ver") == VERSION


def test_faults_busy_restart_and_a_flaky_cable(rn: EmulatedRn2483, port: serial.Serial) -> None:
    rn.faults.busy = 1
    assert ask(port, "mac set deveui 0004A30B001A2B3C") == "busy"
    assert ask(port, "mac set deveui 0004A30B001A2B3C") == "ok"
    rn.faults.corrupt_replies = 1
    corrupted = ask(port, "mac get deveui")
    assert corrupted is not None
    assert len(corrupted) == 16
    assert corrupted != "0004A30B001A2B3C"
    assert sum(a != b for a, b in zip(corrupted, "0004A30B001A2B3C", strict=True)) == 1
    rn.faults.drop_reply_bytes = 1
    assert ask(port, "mac save") in ("o", "k")
    rn.faults.restart_after = 1
    port.reset_input_buffer()
    port.write(b"mac get deveui\r\n")
    deadline = time.monotonic() + READ_S
    seen = b""
    while b"\r\n" not in seen and time.monotonic() < deadline:
        seen += port.read(max(1, port.in_waiting))
    # The command was swallowed by the restart; the version line follows it.
    assert seen == f"{VERSION}\r\n".encode()
    assert rn.restarts == 1
