"""The serial device framework through pyserial: an echo device on a pty path and on a
``socket://`` port, baud pacing, every fault kind seen by the host and in the fault log, seeded
plans, faults changed while running, wrong baud and unplug / replug."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import serial  # type: ignore[import-untyped]  # pyserial ships no type information

from owlgate.hil.faults import Fault, FaultError, FaultPlan, garble
from owlgate.hil.serial_device import Send, SerialDevice

T = TypeVar("T")
TIMEOUT_S = 10.0


class Echo:
    def __init__(self, send: Send) -> None:
        self.send = send
        self.received = bytearray()

    def on_bytes(self, data: bytes) -> None:
        self.received += data
        self.send(data)


class Bench:
    """An event loop in a thread serving the devices of one test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.devices: list[SerialDevice] = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(TIMEOUT_S)

    def device(self, **kwargs: Any) -> SerialDevice:
        async def make() -> SerialDevice:
            return await SerialDevice(Echo, **kwargs).start()

        made = self.run(make())
        self.devices.append(made)
        return made

    def close(self) -> None:
        for device in self.devices:
            self.run(device.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT_S)
        self.loop.close()


@pytest.fixture
def bench() -> Iterator[Bench]:
    made = Bench()
    try:
        yield made
    finally:
        made.close()


def read_exactly(port: serial.Serial, count: int, within_s: float = 5.0) -> bytes:
    deadline = time.monotonic() + within_s
    seen = b""
    while len(seen) < count and time.monotonic() < deadline:
        seen += port.read(count - len(seen))
    return seen


def write_and_read(port: serial.Serial) -> bytes:
    port.write(b"x")
    data: bytes = port.read(1)
    return data


def open_pty(device: SerialDevice, baud: int = 115200) -> serial.Serial:
    return serial.Serial(str(device.path), baud, timeout=0.2)


def open_tcp(device: SerialDevice) -> serial.Serial:
    return serial.serial_for_url(device.url, timeout=0.2)


def test_echo_on_the_pty_path_and_on_socket_url(bench: Bench, tmp_path: Path) -> None:
    device = bench.device(pty_path=tmp_path / "ttyECHO0", tcp=True, baudrate=115200)
    assert device.url.startswith("socket://127.0.0.1:")
    with open_pty(device) as port:
        port.write(b"hello pty")
        assert read_exactly(port, 9) == b"hello pty"
    with open_tcp(device) as port:
        port.write(b"hello tcp")
        assert read_exactly(port, 9) == b"hello tcp"
    assert bytes(device.handler.received) == b"hello ptyhello tcp"  # type: ignore[attr-defined]
    assert len(device.plan.log) == 0


def test_bytes_are_paced_at_the_baud_rate(bench: Bench) -> None:
    device = bench.device(tcp=True, baudrate=9600)
    payload = bytes(range(256)) * 4
    payload = payload[:1000]
    with open_tcp(device) as port:
        start = time.monotonic()
        port.write(payload)
        got = read_exactly(port, len(payload), within_s=8.0)
        elapsed = time.monotonic() - start
    assert got == payload
    # 1,000 bytes of 10 bit times at 9600 baud are 1.04 s on the line each way; a lower bound.
    assert elapsed >= 0.95


def test_byte_faults_seen_by_the_host_and_logged(bench: Bench, tmp_path: Path) -> None:
    plan = FaultPlan(
        [
            Fault("corrupt", "to_host", offsets=(1,), mask=0x01),
            Fault("drop", "to_host", offsets=(3,)),
            Fault("insert", "to_host", after_bytes=5, garbage=b"XY"),
        ]
    )
    device = bench.device(pty_path=tmp_path / "ttyF0", plan=plan)
    before = time.monotonic()
    with open_pty(device) as port:
        port.write(b"abcdefgh")
        got = read_exactly(port, 9)
    assert got == b"a" + bytes([ord("b") ^ 1]) + b"ce" + b"XY" + b"fgh"
    events = plan.log.events()
    assert [(e.kind, e.offset, e.data) for e in events] == [
        ("corrupt", 1, b"b"),
        ("drop", 3, b"d"),
        ("insert", 5, b"XY"),
    ]
    assert all(before <= e.time_s <= time.monotonic() for e in events)
    assert all(e.direction == "to_host" for e in events)


def test_reset_cuts_a_frame_and_silence_stops_answers(bench: Bench) -> None:
    plan = FaultPlan([Fault("reset", "to_host", after_bytes=4)])
    device = bench.device(tcp=True, plan=plan)
    with open_tcp(device) as port:
        port.write(b"0123456789")
        assert read_exactly(port, 10, within_s=1.0) == b"0123"
        (event,) = plan.log.events("reset")
        assert (event.offset, event.data) == (4, b"456789")
        plan.add(Fault("silence", "to_host"))
        port.write(b"ping")
        assert read_exactly(port, 4, within_s=0.5) == b""
        assert plan.active("silence", "to_host")
        assert plan.log.events("silence")[0].data == b"ping"
        assert plan.clear("silence") == 1
        assert not plan.active("silence", "to_host")
        port.write(b"pong")
        assert read_exactly(port, 4) == b"pong"


def test_delay_and_stall_hold_bytes_back(bench: Bench) -> None:
    plan = FaultPlan()
    device = bench.device(tcp=True, plan=plan, baudrate=115200)
    with open_tcp(device) as port:
        plan.add(Fault("delay", "to_host", after_bytes=0, duration_s=0.5))
        start = time.monotonic()
        port.write(b"late")
        assert read_exactly(port, 4) == b"late"
        assert time.monotonic() - start >= 0.45
        plan.add(Fault("stall", "to_device", after_bytes=4, duration_s=0.5))
        start = time.monotonic()
        port.write(b"held")
        assert read_exactly(port, 4) == b"held"
        assert time.monotonic() - start >= 0.45
    assert [e.kind for e in plan.log.events()] == ["delay", "stall"]
    assert plan.log.events("stall")[0].direction == "to_device"


def test_a_seeded_random_plan_repeats_its_faults() -> None:
    def run() -> list[tuple[str, int, bytes]]:
        plan = FaultPlan(
            [
                Fault("corrupt", "to_device", probability=0.05),
                Fault("drop", "to_device", probability=0.05),
                Fault("insert", "to_device", probability=0.02, count=2),
            ],
            seed=42,
        )
        data = bytes(range(256)) * 2
        # Different cuts of the same stream: the per-byte draws do not depend on them.
        plan.apply("to_device", data[:100])
        plan.apply("to_device", data[100:])
        return [(e.kind, e.offset, e.data) for e in plan.log.events()]

    first, second = run(), run()
    assert first == second
    assert {"corrupt", "drop", "insert"} <= {kind for kind, _, _ in first}


def test_faults_through_the_device_repeat_with_the_seed(bench: Bench) -> None:
    outputs = []
    for _ in range(2):
        plan = FaultPlan([Fault("corrupt", "to_host", probability=0.1)], seed=7)
        device = bench.device(tcp=True, plan=plan)
        with open_tcp(device) as port:
            port.write(bytes(64))
            outputs.append(read_exactly(port, 64))
        assert len(plan.log.events("corrupt")) > 0
    assert outputs[0] == outputs[1] != bytes(64)


def test_wrong_baud_on_the_pty_is_refused(bench: Bench, tmp_path: Path) -> None:
    device = bench.device(pty_path=tmp_path / "ttyB0", baudrate=9600, expected_baud=9600)
    with open_pty(device, 19200) as port:
        port.write(b"hello")
        assert read_exactly(port, 5, within_s=0.5) == b""
        port.baudrate = 9600
        port.write(b"hello")
        assert read_exactly(port, 5) == b"hello"
    (event,) = device.plan.log.events("wrong_baud")
    assert event.direction == "to_device"
    assert event.data == b"hello"
    assert device.wrong_baud_writes == 1


def test_a_wrong_baud_fault_garbles_bytes(bench: Bench) -> None:
    plan = FaultPlan([Fault("wrong_baud", "to_host", duration_s=30)])
    device = bench.device(tcp=True, plan=plan)
    with open_tcp(device) as port:
        port.write(b"frame")
        assert read_exactly(port, 5) == garble(b"frame") != b"frame"
    assert plan.log.events("wrong_baud")[0].data == garble(b"frame")


def test_unplug_removes_the_path_and_replug_brings_it_back(bench: Bench, tmp_path: Path) -> None:
    device = bench.device(pty_path=tmp_path / "ttyU0", tcp=True)
    assert device.path is not None
    port = open_pty(device)
    bench.run(device.unplug())
    assert not device.path.exists()
    with pytest.raises(serial.SerialException):
        write_and_read(port)
    port.close()
    with pytest.raises(serial.SerialException):
        open_pty(device)
    with pytest.raises(serial.SerialException):
        open_tcp(device)
    bench.run(device.replug())
    with open_pty(device) as again:
        again.write(b"back")
        assert read_exactly(again, 4) == b"back"
    with open_tcp(device) as again:
        again.write(b"tcp")
        assert read_exactly(again, 3) == b"tcp"
    assert device.plan.log.kinds() == ["unplug", "replug"]


def test_a_planned_unplug_replugs_after_its_duration(bench: Bench) -> None:
    plan = FaultPlan([Fault("unplug", "to_device", after_bytes=0, duration_s=0.3)])
    device = bench.device(tcp=True, plan=plan)
    with open_tcp(device) as port:
        port.write(b"x")
        # The connection is cut: pyserial's read fails, nothing was echoed.
        with pytest.raises(serial.SerialException):
            read_exactly(port, 1, within_s=0.5)
    deadline = time.monotonic() + TIMEOUT_S
    while "replug" not in plan.log.kinds() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert plan.log.kinds() == ["unplug", "replug"]
    with open_tcp(device) as port:
        port.write(b"ok")
        assert read_exactly(port, 2) == b"ok"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "explode", "direction": "to_host"},
        {"kind": "drop", "direction": "sideways"},
        {"kind": "drop", "direction": "to_host", "probability": 1.5},
        {"kind": "drop", "direction": "to_host", "at_s": 1.0, "after_bytes": 2},
        {"kind": "delay", "direction": "to_host", "offsets": (1,)},
    ],
)
def test_bad_faults_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(FaultError):
        Fault(**kwargs)
