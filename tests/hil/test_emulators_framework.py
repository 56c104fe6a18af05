"""Every emulated device on the serial device framework, through the real serial stack: each
serial emulator over pyserial's ``socket://`` and over its pty path, a fault from its plan seen
by the host's own codec and in the plan's log, a wrong-baud refusal, sync unplug / replug of
the TCP side, the edge's concentrator backend over ``socket://``, and the Semtech UDP packet
forwarder with datagram faults against the edge's UDP backend."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import serial  # type: ignore[import-untyped]  # pyserial ships no type information

from owlgate.codecs.concentrator import Channel, Hello, Message, RadioConfig, decode_message
from owlgate.codecs.concentrator import to_frame as concentrator_frame
from owlgate.codecs.node.framing import FrameDecoder, encode_frame
from owlgate.codecs.node.wired import Nothing, Poll, Readings
from owlgate.codecs.node.wired import decode_message as decode_wired
from owlgate.codecs.node.wired import encode_message as encode_wired
from owlgate.codecs.rui3 import Rui3Decoder, Status, StatusLine, ValueLine
from owlgate.edge.semtech_udp import SemtechUdpBackend
from owlgate.edge.serial_backend import SerialConcentrator
from owlgate.hil.concentrator import DEFAULT_EUI, EmulatedConcentrator
from owlgate.hil.faults import Fault, FaultPlan
from owlgate.hil.packet_forwarder import EmulatedPacketForwarder
from owlgate.hil.rak3172 import EmulatedRak3172
from owlgate.hil.rak3172_lorawan import FACTORY_DEV_EUI, EmulatedRak3172LoRaWAN
from owlgate.hil.rn2483 import VERSION as RN2483_VERSION
from owlgate.hil.rn2483 import EmulatedRn2483
from owlgate.hil.serial_device import CommandTable
from owlgate.hil.wired_nodes import EmulatedWiredBus

T = TypeVar("T")
TIMEOUT_S = 10.0  # a bound for what should happen at once; never reached when all is well
QUIET_S = 0.3  # how long a refused line is listened to for an answer that must not come
WIRED_EUI = bytes.fromhex("70b3d57ed0000001")

RADIO_CONFIG = RadioConfig(
    config_id=3,
    region="EU868",
    channels=(Channel(frequency_hz=868_100_000), Channel(frequency_hz=868_300_000)),
    tx_frequency_min_hz=863_000_000,
    tx_frequency_max_hz=870_000_000,
    tx_power_max_dbm=16,
    stats_interval_s=0,
    token=1,
)


class Bench:
    """An event loop in a thread serving the emulators of one test, so a blocking pyserial
    client can run in the test's own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(TIMEOUT_S)

    def call(self, function: Callable[[], T]) -> T:
        async def call() -> T:
            return function()

        return self.run(call())

    def start(self, make: Callable[[], Any]) -> Any:
        async def started() -> Any:
            return await make().start()

        device = self.run(started())
        self._closers.append(device.close)
        return device

    def close(self) -> None:
        for closer in reversed(self._closers):
            self.run(closer())
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


def open_url(url: str, baudrate: int = 115200) -> serial.Serial:
    return serial.serial_for_url(url, baudrate=baudrate, timeout=0.05)


def open_pty(path: Path, baudrate: int = 115200) -> serial.Serial:
    return serial.Serial(str(path), baudrate=baudrate, timeout=0.05)


def read_until(port: serial.Serial, done: Callable[[bytes], bool], within_s: float) -> bytes:
    """What the port delivers until ``done(seen)`` or ``within_s`` have passed."""
    deadline = time.monotonic() + within_s
    seen = b""
    while not done(seen) and time.monotonic() < deadline:
        seen += port.read(4096)
    return seen


# --- host sides, built on the hosts' own codecs ------------------------------------------------


class ConcentratorHost:
    """The host side of protocol v1 on one pyserial port: its own frame decoder."""

    def __init__(self, port: serial.Serial) -> None:
        self.port = port
        self.decoder = FrameDecoder()
        self.messages: list[Message] = []

    def request(self, message: Message) -> None:
        self.port.write(concentrator_frame(message))

    def read(self, count: int = 1, within_s: float = TIMEOUT_S) -> list[Message]:
        deadline = time.monotonic() + within_s
        while len(self.messages) < count and time.monotonic() < deadline:
            for payload in self.decoder.feed(self.port.read(4096)):
                self.messages.append(decode_message(payload))
        return self.messages


def rui3_exchange(port: serial.Serial, line: bytes) -> list[object]:
    """Write one AT command line; the module's lines up to its status line, decoded by the
    host's RUI3 decoder."""
    decoder = Rui3Decoder()
    items: list[object] = []
    port.write(line)
    deadline = time.monotonic() + TIMEOUT_S
    while not any(isinstance(item, StatusLine) for item in items) and time.monotonic() < deadline:
        items += decoder.feed(port.read(4096))
    return items


def statuses(items: list[object]) -> list[Status]:
    return [item.status for item in items if isinstance(item, StatusLine)]


def rn2483_exchange(port: serial.Serial, line: bytes) -> bytes:
    port.write(line)
    return read_until(port, lambda seen: seen.endswith(b"\r\n"), TIMEOUT_S)


def wired_exchange(port: serial.Serial, decoder: FrameDecoder, request: Poll) -> list[object]:
    """Send one POLL; the answers the host's frame decoder accepts until one arrives or the
    decoder counts an error."""
    port.write(encode_frame(encode_wired(request)))
    answers: list[object] = []
    errors = decoder.crc_errors + decoder.frame_errors
    deadline = time.monotonic() + TIMEOUT_S
    while (
        not answers
        and decoder.crc_errors + decoder.frame_errors == errors
        and time.monotonic() < deadline
    ):
        answers += [decode_wired(payload) for payload in decoder.feed(port.read(4096))]
    return answers


# --- the concentrator -----------------------------------------------------------------------


def test_concentrator_answers_over_socket_and_pty_at_once(bench: Bench, tmp_path: Path) -> None:
    emulator = bench.start(lambda: EmulatedConcentrator(tmp_path, tcp=True, seed=1))
    assert emulator.url.startswith("socket://127.0.0.1:")
    with open_url(emulator.url) as tcp_port, open_pty(emulator.path) as pty_port:
        over_tcp = ConcentratorHost(tcp_port)
        over_tcp.request(Hello(firmware="host", token=5))
        (answer,) = over_tcp.read()
        assert isinstance(answer, Hello)
        assert (answer.eui, answer.token) == (DEFAULT_EUI, 5)
        # The pty side heard that answer too (a device answers every connected side).
        over_pty = ConcentratorHost(pty_port)
        assert [type(m) for m in over_pty.read()] == [Hello]
        over_pty.request(Hello(firmware="host", token=6))
        assert [m.token for m in over_pty.read(2)] == [5, 6]
    assert [hello.token for hello in emulator.hellos] == [5, 6]
    assert emulator.serial.bytes_written > 0
    assert len(emulator.plan.log) == 0


def test_concentrator_plan_corruption_is_a_crc_error_on_the_host(
    bench: Bench, tmp_path: Path
) -> None:
    plan = FaultPlan([Fault("corrupt", "to_host", offsets=(6,), mask=0x10)])
    emulator = bench.start(
        lambda: EmulatedConcentrator(tmp_path, tcp=True, pty=False, plan=plan, paced=True)
    )
    assert not emulator.path.exists()
    with open_url(emulator.url) as port:
        host = ConcentratorHost(port)
        host.request(Hello(firmware="host", token=1))
        # The corrupted answer never decodes; the decoder resynchronises for the next one.
        assert host.read(within_s=QUIET_S) == []
        assert host.decoder.crc_errors + host.decoder.frame_errors == 1
        host.request(Hello(firmware="host", token=2))
        assert [m.token for m in host.read()] == [2]
    (event,) = plan.log.events()
    assert (event.kind, event.direction, event.offset, event.detail) == (
        "corrupt",
        "to_host",
        6,
        "xor 0x10",
    )
    assert event.time_s <= time.monotonic()


def test_concentrator_hooks_are_logged_with_the_plan(bench: Bench, tmp_path: Path) -> None:
    emulator = bench.start(lambda: EmulatedConcentrator(tmp_path, tcp=True, seed=2))
    with open_url(emulator.url) as port:
        host = ConcentratorHost(port)
        bench.call(emulator.corrupt_next)
        bench.call(lambda: emulator.reboot(announce=True))
        assert host.read(within_s=QUIET_S) == []
        assert host.decoder.crc_errors == 1
        bench.call(lambda: emulator.inject_garbage(8))
        read_until(port, lambda seen: False, QUIET_S)
    assert emulator.plan.log.kinds() == ["reset", "corrupt", "insert"]


def test_concentrator_refuses_a_host_at_the_wrong_baud(bench: Bench, tmp_path: Path) -> None:
    emulator = bench.start(lambda: EmulatedConcentrator(tmp_path, expected_baud=115200, paced=True))
    with open_pty(emulator.path, baudrate=9600) as port:
        host = ConcentratorHost(port)
        host.request(Hello(firmware="host", token=1))
        assert host.read(within_s=QUIET_S) == []
        assert emulator.hellos == []
        assert emulator.serial.wrong_baud_writes >= 1
        assert "wrong_baud" in emulator.plan.log.kinds()
        # The same port at the device's rate is answered.
        port.baudrate = 115200
        host.request(Hello(firmware="host", token=2))
        assert [m.token for m in host.read()] == [2]


def test_concentrator_sync_unplug_and_replug_on_the_same_tcp_port(
    bench: Bench, tmp_path: Path
) -> None:
    emulator = bench.start(lambda: EmulatedConcentrator(tmp_path, tcp=True))
    url = emulator.url
    with open_url(url) as port:
        host = ConcentratorHost(port)
        host.request(Hello(firmware="host", token=8))
        assert [m.token for m in host.read()] == [8]
        bench.call(emulator.unplug)
        assert not emulator.plugged
        assert not emulator.path.exists()
        # The connection is closed: the client's read fails, as a vanished adapter's does.
        with pytest.raises(serial.SerialException, match="disconnected"):
            read_until(port, lambda seen: False, QUIET_S)
    with pytest.raises(serial.SerialException):
        open_url(url)
    # A frame sent while unplugged is lost to the cable and counted.
    bench.call(lambda: emulator.inject(b"\x40\x01"))
    assert emulator.link_dropped == 1
    bench.call(emulator.replug)
    assert emulator.url == url
    with open_url(url) as port:
        host = ConcentratorHost(port)
        host.request(Hello(firmware="host", token=9))
        assert [m.token for m in host.read()] == [9]
    assert emulator.plan.log.kinds() == ["unplug", "replug"]


def test_edge_serial_backend_reaches_the_concentrator_over_socket(tmp_path: Path) -> None:
    async def main() -> None:
        async with EmulatedConcentrator(tmp_path, pty=False, tcp=True, seed=4) as emulator:
            radio = SerialConcentrator(
                port=emulator.url,
                radio_config=RADIO_CONFIG,
                hello_timeout_s=0.5,
                reconnect_initial_s=0.05,
                reconnect_max_s=0.2,
                rng=random.Random(1),
            )
            async with radio:
                status = await radio.wait_connected(TIMEOUT_S)
                assert status.hello is not None
                assert status.hello.eui == DEFAULT_EUI
                assert status.config_id == RADIO_CONFIG.config_id
                assert emulator.radio_config is not None
                sent = emulator.inject(b"\x40\x11\x22", rssi_dbm=-80)
                async with asyncio.timeout(TIMEOUT_S):
                    frame = await anext(radio.frames())
                assert (frame.payload, frame.rssi_dbm) == (b"\x40\x11\x22", -80)
                assert frame.timestamp_us == sent.timestamp_us

    asyncio.run(main())


# --- the RAK3172 ----------------------------------------------------------------------------


def test_rak3172_over_socket_and_pty(bench: Bench, tmp_path: Path) -> None:
    module = bench.start(lambda: EmulatedRak3172(tmp_path, tcp=True))
    for opened in (open_url(module.url), open_pty(module.path)):
        with opened as port:
            # The pty kept the answer it was sent while nobody had it open: start clean.
            port.reset_input_buffer()
            items = rui3_exchange(port, b"AT+VER=?\r\n")
            values = [item.value for item in items if isinstance(item, ValueLine)]
            assert values == [module.version]
            assert statuses(items) == [Status.OK]
    assert module.commands == ["AT+VER=?", "AT+VER=?"]


def test_rak3172_plan_corruption_is_an_at_error(bench: Bench, tmp_path: Path) -> None:
    # The second byte of the command, "T" (0x54), becomes "V": no longer an AT command.
    plan = FaultPlan([Fault("corrupt", "to_device", offsets=(1,), mask=0x02)])
    module = bench.start(lambda: EmulatedRak3172(tmp_path, tcp=True, plan=plan))
    with open_url(module.url) as port:
        assert statuses(rui3_exchange(port, b"AT+NWM=?\r\n")) == [Status.AT_COMMAND_NOT_FOUND]
        assert statuses(rui3_exchange(port, b"AT+NWM=?\r\n")) == [Status.OK]
    assert module.commands == ["AV+NWM=?", "AT+NWM=?"]
    assert [(e.kind, e.direction, e.offset, e.data) for e in plan.log.events()] == [
        ("corrupt", "to_device", 1, b"T")
    ]


def test_rak3172_lorawan_plan_drop_is_an_at_error(bench: Bench, tmp_path: Path) -> None:
    # The "=" of the set is lost: "AT+NJM1" is no command of the table.
    plan = FaultPlan([Fault("drop", "to_device", offsets=(6,))])
    module = bench.start(lambda: EmulatedRak3172LoRaWAN(tmp_path, tcp=True, plan=plan))
    with open_url(module.url) as port:
        assert statuses(rui3_exchange(port, b"AT+NJM=1\r\n")) != [Status.OK]
        items = rui3_exchange(port, b"AT+DEVEUI=?\r\n")
        values = [item.value for item in items if isinstance(item, ValueLine)]
        assert values == [FACTORY_DEV_EUI.hex().upper()]
        assert statuses(items) == [Status.OK]
    assert [(e.kind, e.offset, e.data) for e in plan.log.events()] == [("drop", 6, b"=")]


def test_module_faults_are_logged_with_the_plan(bench: Bench, tmp_path: Path) -> None:
    module = bench.start(lambda: EmulatedRak3172LoRaWAN(tmp_path, tcp=True))
    module.faults.corrupt_replies = 1
    with open_url(module.url) as port:
        port.write(b"AT+NJM=?\r\n")
        garbled = read_until(port, lambda seen: seen.endswith(b"OK\r\n"), QUIET_S)
        port.write(b"AT+NJM=?\r\n")
        clean = read_until(port, lambda seen: seen.endswith(b"OK\r\n"), TIMEOUT_S)
    # One bit of the value line flipped: same length, one byte different.
    assert clean.endswith(b"OK\r\n")
    assert len(garbled) == len(clean)
    assert sum(a != b for a, b in zip(garbled, clean, strict=True)) == 1
    assert module.garbled_replies == 1
    (event,) = module.plan.log.events()
    assert (event.kind, event.direction) == ("corrupt", "to_host")


# --- the RN2483 -----------------------------------------------------------------------------


def test_rn2483_over_pty_and_socket(bench: Bench, tmp_path: Path) -> None:
    module = bench.start(lambda: EmulatedRn2483(tmp_path, tcp=True, paced=True))
    with open_pty(module.path, baudrate=57600) as port:
        assert rn2483_exchange(port, b"sys get ver\r\n") == f"{RN2483_VERSION}\r\n".encode()
    # The rate the host set on the pty, as the module saw it with the bytes (paced at it).
    assert module.serial.rx_baud == 57600
    with open_url(module.url) as port:
        assert rn2483_exchange(port, b"mac set deveui 0004A30B00000001\r\n") == b"ok\r\n"
        assert rn2483_exchange(port, b"mac get deveui\r\n") == b"0004A30B00000001\r\n"
        assert rn2483_exchange(port, b"mac get appkey\r\n") == b"invalid_param\r\n"
    # A socket has no baud rate.
    assert module.serial.rx_baud is None


def test_rn2483_plan_corruption_is_invalid_param(bench: Bench, tmp_path: Path) -> None:
    # "sys get hweui": the "g" (offset 4) becomes "f".
    plan = FaultPlan([Fault("corrupt", "to_device", offsets=(4,), mask=0x01)])
    module = bench.start(lambda: EmulatedRn2483(tmp_path, tcp=True, plan=plan))
    with open_url(module.url) as port:
        assert rn2483_exchange(port, b"sys get hweui\r\n") == b"invalid_param\r\n"
        assert rn2483_exchange(port, b"sys get hweui\r\n") == b"0004A30B001A2B3C\r\n"
    assert module.commands == ["sys fet hweui", "sys get hweui"]
    assert plan.log.kinds() == ["corrupt"]


def test_rn2483_hears_nothing_at_another_rate_on_the_pty(bench: Bench, tmp_path: Path) -> None:
    module = bench.start(lambda: EmulatedRn2483(tmp_path))
    with open_pty(module.path, baudrate=9600) as port:
        port.write(b"sys get ver\r\n")
        assert read_until(port, lambda seen: False, QUIET_S) == b""
    assert module.garbled_bytes == len(b"sys get ver\r\n")
    assert module.commands == []


# --- the wired bus --------------------------------------------------------------------------


def test_wired_bus_over_socket_and_pty(bench: Bench, tmp_path: Path) -> None:
    def make() -> EmulatedWiredBus:
        bus = EmulatedWiredBus(tmp_path, tcp=True)
        bus.add_node(1, WIRED_EUI).add_reading({"t": 21})
        return bus

    bus = bench.start(make)
    with open_url(bus.url) as port:
        (answer,) = wired_exchange(port, FrameDecoder(), Poll(1))
        assert isinstance(answer, Readings)
        assert answer.address == 1
    with open_pty(bus.path) as port:
        (answer,) = wired_exchange(port, FrameDecoder(), Poll(1, ack=1, received=1))
        assert isinstance(answer, Nothing)
    assert bus.acked(1) == 1
    assert [type(request) for request in bus.requests(1)] == [Poll, Poll]


def test_wired_bus_plan_corruption_is_a_crc_error_on_the_host(bench: Bench, tmp_path: Path) -> None:
    plan = FaultPlan([Fault("corrupt", "to_host", after_bytes=3, mask=0x40)])

    def make() -> EmulatedWiredBus:
        bus = EmulatedWiredBus(tmp_path, tcp=True, pty=False, plan=plan)
        bus.add_node(2, WIRED_EUI)
        return bus

    bus = bench.start(make)
    decoder = FrameDecoder()
    with open_url(bus.url) as port:
        assert wired_exchange(port, decoder, Poll(2)) == []
        assert decoder.crc_errors + decoder.frame_errors == 1
        (answer,) = wired_exchange(port, decoder, Poll(2))
        assert isinstance(answer, Nothing)
    assert bus.answers(2) == 2
    assert [(e.kind, e.offset) for e in plan.log.events()] == [("corrupt", 3)]


# --- the Semtech UDP packet forwarder -----------------------------------------------------


def run_forwarder(
    scenario: Callable[[EmulatedPacketForwarder, SemtechUdpBackend], Coroutine[Any, Any, None]],
    plan: FaultPlan,
) -> None:
    async def main() -> None:
        radio = SemtechUdpBackend("127.0.0.1", 0, rng=random.Random(2))
        async with radio:
            forwarder = EmulatedPacketForwarder(
                "127.0.0.1", radio.local_port, keepalive_on_start=False, seed=3, plan=plan
            )
            async with forwarder:
                await scenario(forwarder, radio)

    asyncio.run(main())


def test_forwarder_plan_corruption_is_a_frame_error_on_the_server() -> None:
    # Byte 0 of the first datagram is the protocol version: 0x02 becomes 0x07.
    plan = FaultPlan([Fault("corrupt", "to_host", offsets=(0,), mask=0x05)])

    async def scenario(forwarder: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        forwarder.push(b"\x40\x01")
        token = forwarder.push(b"\x40\x02")
        await forwarder.wait_push_ack(token, TIMEOUT_S)
        async with asyncio.timeout(TIMEOUT_S):
            frame = await anext(radio.frames())
        assert frame.payload == b"\x40\x02"
        assert radio.counters.link_frame_errors == 1
        assert forwarder.push_ack_tokens == [token]

    run_forwarder(scenario, plan)
    assert [(e.kind, e.direction, e.offset) for e in plan.log.events()] == [
        ("corrupt", "to_host", 0)
    ]


def test_forwarder_plan_drop_loses_a_whole_datagram() -> None:
    # One byte of the first PUSH_ACK received: the whole acknowledgement is lost.
    plan = FaultPlan([Fault("drop", "to_device", offsets=(1,))])

    async def scenario(forwarder: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        first = forwarder.push(b"\x40\x01")
        second = forwarder.push(b"\x40\x02")
        await forwarder.wait_push_ack(second, TIMEOUT_S)
        assert first not in forwarder.push_ack_tokens
        assert forwarder.datagrams_lost == 1
        assert forwarder.invalid_received == 0

    run_forwarder(scenario, plan)
    assert plan.log.kinds() == ["drop"]


def test_forwarder_silence_and_delay_are_logged() -> None:
    plan = FaultPlan()

    async def scenario(forwarder: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        silence = plan.add(Fault("silence", "to_host"))
        forwarder.push(b"\x40\x01")
        assert forwarder.datagrams_lost == 1
        plan.remove(silence)
        plan.add(Fault("delay", "to_host", after_bytes=0, duration_s=0.05))
        token = forwarder.push(b"\x40\x02")
        await forwarder.wait_push_ack(token, TIMEOUT_S)
        async with asyncio.timeout(TIMEOUT_S):
            frame = await anext(radio.frames())
        assert frame.payload == b"\x40\x02"

    run_forwarder(scenario, plan)
    assert plan.log.kinds() == ["silence", "delay"]


# --- the command tables ---------------------------------------------------------------------


def test_a_command_declared_twice_is_refused() -> None:
    table: CommandTable[str, object, int] = CommandTable("test")

    @table.on("PING")
    def ping(owner: object, request: str) -> int:
        return 1

    with pytest.raises(ValueError, match="'PING' has two handlers"):
        table.on("PING")(ping)
    handler = table.get("PING")
    assert handler is not None
    assert handler(object(), "") == 1
    assert table.get("PONG") is None
    assert list(table) == ["PING"]
