"""labgrid drives the emulated devices as it drives a real board's console.

Each test writes a labgrid environment file as an engineer would (a target ``main`` with one
serial resource and labgrid's ``SerialDriver``), loads it with :class:`labgrid.Environment`
and has a real AT exchange through the console API (``write``, ``expect``): the emulated
RAK3172 of ``hil_modem`` as a ``RawSerialPort`` on its pty path, and a
:class:`~owlgate.hil.serial_device.SerialDevice` as a ``NetworkSerialPort`` on its
``socket://`` port (``protocol: raw``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from labgrid import Environment  # type: ignore[import-untyped]

from owlgate.codecs.errors import CodecError
from owlgate.codecs.rui3 import (
    MAX_LINE_BYTES,
    Status,
    format_status,
    format_value,
    parse_request,
)
from owlgate.hil.faults import Fault, FaultPlan
from owlgate.hil.pytest_plugin import LoopThread, ModemHandle
from owlgate.hil.rak3172 import VERSIONS
from owlgate.hil.serial_device import Send, SerialDevice

EXPECT_TIMEOUT_S = 5.0

# labgrid 26's pytest plugin logs console traffic through one reporter for the whole session,
# which keeps the last read of an earlier test's driver: the next driver's first expect then
# fails inside that reporter (a KeyError), which labgrid turns into this warning. It concerns
# labgrid's log lines only, never the bytes the console returns (asserted below).
pytestmark = pytest.mark.filterwarnings(
    "ignore:unhandled exception during event notification:UserWarning"
)


@contextmanager
def labgrid_console(env_file: Path, resource: str, settings: dict[str, Any]) -> Iterator[Any]:
    """Write a labgrid environment with ``resource`` for target ``main``, load it, and yield
    the target's active ``SerialDriver``; the environment is cleaned up afterwards."""
    # YAML is a superset of JSON: the file is what an engineer would write by hand.
    config = {
        "targets": {
            "main": {
                "resources": {resource: settings},
                "drivers": {"SerialDriver": {"timeout": EXPECT_TIMEOUT_S}},
            }
        }
    }
    env_file.write_text(json.dumps(config, indent=2) + "\n")
    env = Environment(config_file=str(env_file))
    try:
        target = env.get_target("main")
        console = target.get_driver("SerialDriver")
        yield console
    finally:
        env.cleanup()


@pytest.mark.hil_hardware
def test_labgrid_serial_driver_talks_to_the_emulated_rak3172(
    hil_modem: ModemHandle, tmp_path: Path
) -> None:
    settings = {"port": hil_modem.port, "speed": hil_modem.baudrate}
    with labgrid_console(tmp_path / "env.yaml", "RawSerialPort", settings) as console:
        console.write(b"AT+VER=?\r\n")
        _, _, match, _ = console.expect(rb"AT\+VER=(\S+)\r\n\r\nOK\r\n", timeout=EXPECT_TIMEOUT_S)
        version = match.group(1).decode()
        console.write(b"AT+NWM=?\r\n")
        _, _, match, _ = console.expect(rb"AT\+NWM=(\d)\r\n\r\nOK\r\n", timeout=EXPECT_TIMEOUT_S)
        work_mode = int(match.group(1))
        console.write(b"AT+NOSUCH=1\r\n")
        console.expect(rb"AT_COMMAND_NOT_FOUND\r\n", timeout=EXPECT_TIMEOUT_S)
    assert version.startswith("RUI_")
    assert work_mode in (0, 1)
    # What the emulator saw (skipped on real hardware, after the exchange above).
    assert version == VERSIONS["3.2"]
    assert hil_modem.commands() == ["AT+VER=?", "AT+NWM=?", "AT+NOSUCH=1"]


class Rui3Lines:
    """The line side of a RUI3 module on a :class:`SerialDevice`: ``AT`` and ``AT+VER=?``
    answered with the codec's formatters, any other command ``AT_ERROR``."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.buffer = bytearray()
        self.lines: list[str] = []

    def on_bytes(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[:end]).rstrip(b"\r").decode("ascii", "replace")
            del self.buffer[: end + 1]
            if line:
                self.lines.append(line)
                self.send(self.answer(line))
        if len(self.buffer) > MAX_LINE_BYTES:
            self.buffer.clear()

    @staticmethod
    def answer(line: str) -> bytes:
        try:
            request = parse_request(line)
        except CodecError:
            return format_status(Status.AT_COMMAND_NOT_FOUND)
        match (request.command.name, request.form):
            case ("", "run"):
                return format_status(Status.OK)
            case ("VER", "read"):
                return format_value("VER", VERSIONS["3.2"]) + format_status(Status.OK)
            case _:
                return format_status(Status.AT_ERROR)


def test_labgrid_network_serial_port_reaches_a_serial_device_over_tcp(
    hil_loop: LoopThread, tmp_path: Path
) -> None:
    # The first byte the device answers is corrupted ('\r' -> '\x0c'): labgrid's expect must
    # still find the OK that follows, as on a noisy line.
    plan = FaultPlan([Fault("corrupt", "to_host", offsets=(0,), mask=0x01)])
    handlers: list[Rui3Lines] = []

    def handler(send: Send) -> Rui3Lines:
        handlers.append(Rui3Lines(send))
        return handlers[-1]

    device = SerialDevice(handler, tcp=True, baudrate=115200, plan=plan, label="rui3 lines")
    hil_loop.run(device.start())
    try:
        settings = {"host": "127.0.0.1", "port": device.tcp_port, "protocol": "raw"}
        with labgrid_console(tmp_path / "env.yaml", "NetworkSerialPort", settings) as console:
            console.write(b"AT\r\n")
            _, before, _, _ = console.expect(rb"OK\r\n", timeout=EXPECT_TIMEOUT_S)
            console.write(b"AT+VER=?\r\n")
            _, _, match, _ = console.expect(
                rb"AT\+VER=(\S+)\r\n\r\nOK\r\n", timeout=EXPECT_TIMEOUT_S
            )
    finally:
        hil_loop.run(device.close())
    assert before == b"\x0c\n"
    assert match.group(1).decode() == VERSIONS["3.2"]
    assert hil_loop.call(lambda: list(handlers[0].lines)) == ["AT", "AT+VER=?"]
    (event,) = plan.log.events("corrupt")
    assert (event.direction, event.offset, event.data) == ("to_host", 0, b"\r")
