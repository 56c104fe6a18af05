"""The emulated RAK3172 in LoRaWAN mode, through pyserial on its pty: RUI3 replies, keys kept
across a restart, the error statuses, and each fault it plays."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial  # type: ignore[import-untyped]  # pyserial ships no type information

from owlgate.codecs.rui3 import Rui3Decoder, Status, StatusLine, ValueLine
from owlgate.hil.rak3172_lorawan import FACTORY_DEV_EUI, VERSION, EmulatedRak3172LoRaWAN, garble
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
def rak(bench: ModuleBench) -> EmulatedRak3172LoRaWAN:
    return bench.rak(FACTORY_DEV_EUI)


def exchange(port: serial.Serial, line: str, *, banner: bool = False) -> list[object]:
    """Send one command; the decoded lines up to a status line (or a whole boot banner)."""
    decoder = Rui3Decoder()
    port.write(line.encode() + b"\r\n")
    got: list[object] = []
    deadline = time.monotonic() + READ_S
    while time.monotonic() < deadline:
        got += decoder.feed(port.read(max(1, port.in_waiting)))
        if banner and any(str(item).endswith("Work Mode: LoRaWAN.')") for item in got):
            return got
        if not banner and any(isinstance(item, StatusLine) for item in got):
            return got
    return got


@pytest.fixture
def port(rak: EmulatedRak3172LoRaWAN) -> Iterator[serial.Serial]:
    with serial.Serial(str(rak.path), 115200, timeout=0.05) as opened:
        yield opened


def test_reads_and_writes_keys_in_rui3_syntax(
    rak: EmulatedRak3172LoRaWAN, port: serial.Serial
) -> None:
    assert exchange(port, "AT") == [StatusLine(Status.OK)]
    assert exchange(port, "AT+VER=?") == [ValueLine("VER", VERSION), StatusLine(Status.OK)]
    assert exchange(port, "AT+DEVEUI=?") == [
        ValueLine("DEVEUI", "AC1F09FFFE0A0B0C"),
        StatusLine(Status.OK),
    ]
    assert exchange(port, "AT+APPKEY=00112233445566778899AABBCCDDEEFF") == [StatusLine(Status.OK)]
    assert exchange(port, "AT+APPEUI=70B3D57ED0000001") == [StatusLine(Status.OK)]
    assert exchange(port, "AT+BAND=4") == [StatusLine(Status.OK)]
    assert exchange(port, "AT+NJM=1") == [StatusLine(Status.OK)]
    assert rak.app_key == bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    assert rak.join_eui == bytes.fromhex("70B3D57ED0000001")
    assert exchange(port, "AT+APPKEY=?")[0] == ValueLine(
        "APPKEY", "00112233445566778899AABBCCDDEEFF"
    )
    assert rak.commands[0] == "AT"


def test_settings_survive_a_restart(
    bench: ModuleBench, rak: EmulatedRak3172LoRaWAN, port: serial.Serial
) -> None:
    exchange(port, "AT+DEVEUI=0102030405060708")
    port.write(b"ATZ\r\n")
    deadline = time.monotonic() + READ_S
    seen = b""
    while b"Current Work Mode: LoRaWAN." not in seen and time.monotonic() < deadline:
        seen += port.read(64)
    assert b"Version: RUI_4.0.6_RAK3172-E" in seen
    assert rak.restarts == 1
    assert exchange(port, "AT+DEVEUI=?")[0] == ValueLine("DEVEUI", "0102030405060708")


@pytest.mark.parametrize(
    ("line", "status"),
    [
        ("AT+DEVEUI=0102", Status.AT_PARAM_ERROR),
        ("AT+APPKEY=XYZ", Status.AT_PARAM_ERROR),
        ("AT+BAND=99", Status.AT_PARAM_ERROR),
        ("AT+NOPE=1", Status.AT_COMMAND_NOT_FOUND),
        ("AT+VER=1", Status.AT_ERROR),
    ],
)
def test_bad_commands_get_rui3_errors(
    rak: EmulatedRak3172LoRaWAN, port: serial.Serial, line: str, status: Status
) -> None:
    assert exchange(port, line) == [StatusLine(status)]
    assert rak.dev_eui == FACTORY_DEV_EUI


def test_p2p_mode_refuses_lorawan_keys(bench: ModuleBench) -> None:
    p2p = bench.rak(work_mode=0)
    with serial.Serial(str(p2p.path), 115200, timeout=0.05) as port:
        assert exchange(port, "AT+DEVEUI=?") == [StatusLine(Status.AT_MODE_NO_SUPPORT)]


def test_busy_then_slow_replies(rak: EmulatedRak3172LoRaWAN, port: serial.Serial) -> None:
    rak.faults.busy = 1
    assert exchange(port, "AT+NJM=1") == [StatusLine(Status.AT_BUSY_ERROR)]
    assert exchange(port, "AT+NJM=1") == [StatusLine(Status.OK)]
    rak.faults.reply_delay_s = 0.05
    assert port.read(100) == b""
    assert exchange(port, "AT+NJM=?") == [ValueLine("NJM", "1"), StatusLine(Status.OK)]


def test_a_restart_mid_sequence_answers_with_a_banner_only(
    rak: EmulatedRak3172LoRaWAN, port: serial.Serial
) -> None:
    rak.faults.restart_after = 2
    assert exchange(port, "AT") == [StatusLine(Status.OK)]
    got = exchange(port, "AT+DEVEUI=0102030405060708", banner=True)
    assert [type(item).__name__ for item in got] == ["Banner"] * 4
    assert rak.restarts == 1
    # The command the restart swallowed was not carried out.
    assert rak.dev_eui == FACTORY_DEV_EUI


def raw_reply(port: serial.Serial, line: bytes) -> bytes:
    """The bytes of one reply (the cable only ever harms its first line, so the status
    line ends it)."""
    port.write(line)
    seen = b""
    deadline = time.monotonic() + READ_S
    while not seen.endswith(b"\r\nOK\r\n") and time.monotonic() < deadline:
        seen += port.read(max(1, port.in_waiting))
    return seen


def test_a_flaky_cable_changes_or_drops_one_byte_of_the_first_line(
    rak: EmulatedRak3172LoRaWAN, port: serial.Serial
) -> None:
    clean = raw_reply(port, b"AT+DEVEUI=?\r\n")
    assert clean == b"AT+DEVEUI=AC1F09FFFE0A0B0C\r\n\r\nOK\r\n"
    rak.faults.corrupt_replies = 1
    corrupted = raw_reply(port, b"AT+DEVEUI=?\r\n")
    assert len(corrupted) == len(clean)
    changed = [i for i, (a, b) in enumerate(zip(clean, corrupted, strict=True)) if a != b]
    assert len(changed) == 1
    assert changed[0] < len("AT+DEVEUI=AC1F09FFFE0A0B0C")
    assert corrupted[changed[0]] == clean[changed[0]] ^ 0x01
    rak.faults.drop_reply_bytes = 1
    dropped = raw_reply(port, b"AT+DEVEUI=?\r\n")
    assert len(dropped) == len(clean) - 1
    assert dropped.endswith(b"\r\n\r\nOK\r\n")
    assert any(clean[:i] + clean[i + 1 :] == dropped for i in range(len(clean)))
    assert rak.garbled_replies == 2
    assert garble(b"\r\nOK\r\n", drop=False) == b"\r\nOJ\r\n"
    assert garble(b"\r\nOK\r\n", drop=True) == b"\r\nO\r\n"
