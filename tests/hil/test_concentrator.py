"""The emulated concentrator on its own: a client on the pty with the codecs, as an MCU's host
would be, and plain pyserial."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import serial  # type: ignore[import-untyped]  # pyserial ships no type information
import serial_asyncio_fast

from owlgate.codecs.concentrator import (
    Channel,
    CrcStatus,
    Error,
    ErrorCode,
    GetStats,
    Hello,
    Message,
    RadioConfig,
    RadioConfigAck,
    RxFrame,
    Stats,
    TxAck,
    TxError,
    TxRequest,
    decode_message,
    to_frame,
)
from owlgate.codecs.node import cbor
from owlgate.codecs.node.framing import FrameDecoder, encode_frame
from owlgate.hil.concentrator import (
    DEFAULT_CAPABILITIES,
    DEFAULT_EUI,
    EMULATOR_FIRMWARE,
    EmulatedConcentrator,
)

WAIT_S = 10.0

CONFIG = RadioConfig(
    config_id=3,
    region="EU868",
    channels=(Channel(frequency_hz=868_100_000),),
    tx_frequency_min_hz=863_000_000,
    tx_frequency_max_hz=870_000_000,
    tx_power_max_dbm=16,
    token=2,
)


def downlink(token: int, *, frequency_hz: int = 869_525_000) -> TxRequest:
    return TxRequest(
        timestamp_us=None,
        frequency_hz=frequency_hz,
        sf=9,
        power_dbm=14,
        payload=b"\x20\x01\x02",
        token=token,
    )


class Client:
    """The host's side, by hand: a serial connection, a frame decoder, one message at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.pending: list[bytes] = []

    @classmethod
    async def open(cls, path: Path) -> Client:
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=str(path), baudrate=115_200
        )
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        # wait() rather than await: a port that vanished reports its read error here.
        await asyncio.wait({asyncio.ensure_future(self.writer.wait_closed())})

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def receive(self) -> Message:
        async with asyncio.timeout(WAIT_S):
            while not self.pending:
                data = await self.reader.read(4096)
                assert data, "the port closed"
                self.pending.extend(self.decoder.feed(data))
        return decode_message(self.pending.pop(0))

    async def ask(self, message: Message) -> Message:
        return await self.ask_raw(to_frame(message))

    async def ask_raw(self, frame: bytes) -> Message:
        self.send_raw(frame)
        return await self.receive()


Scenario = Callable[[EmulatedConcentrator, Client], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario) -> None:
    async def main() -> None:
        async with EmulatedConcentrator(tmp_path, seed=1) as emulator:
            client = await Client.open(emulator.path)
            try:
                await scenario(emulator, client)
            finally:
                await client.close()

    asyncio.run(main())


def test_path_is_a_stable_link_to_the_pty(tmp_path: Path) -> None:
    async def main() -> None:
        emulator = EmulatedConcentrator(tmp_path, link_name="ttyTEST")
        async with emulator:
            assert emulator.path == tmp_path / "ttyTEST"
            assert emulator.path.is_symlink()
            assert os.readlink(emulator.path) == emulator.tty_path
            assert emulator.plugged is True
        assert not emulator.path.exists()
        assert emulator.plugged is False

    asyncio.run(main())


def test_hello_config_and_stats(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, client: Client) -> None:
        hello = await client.ask(Hello(firmware="test host", token=1))
        assert hello == Hello(
            firmware=EMULATOR_FIRMWARE,
            eui=DEFAULT_EUI,
            capabilities=DEFAULT_CAPABILITIES,
            token=1,
        )
        # Protocol v1, "Errors": TX before any configuration is refused.
        refused = await client.ask(downlink(9))
        assert isinstance(refused, Error)
        assert (refused.code, refused.token) == (ErrorCode.NOT_CONFIGURED, 9)
        assert await client.ask(CONFIG) == RadioConfigAck(config_id=3, token=2)
        assert emulator.radio_config == CONFIG

        ack = await client.ask(downlink(4))
        assert isinstance(ack, TxAck)
        assert (ack.error, ack.token) == (TxError.NONE, 4)
        emulator.tx_error = TxError.TOO_LATE
        late = await client.ask(downlink(5))
        assert isinstance(late, TxAck)
        assert late.error is TxError.TOO_LATE
        emulator.tx_error = TxError.NONE
        out_of_range = await client.ask(downlink(6, frequency_hz=915_000_000))
        assert isinstance(out_of_range, TxAck)
        assert out_of_range.error is TxError.TX_FREQ

        emulator.inject(b"\x40\x01", crc_status=CrcStatus.BAD)
        assert isinstance(await client.receive(), RxFrame)
        stats = await client.ask(GetStats(token=7))
        assert isinstance(stats, Stats)
        assert stats.token == 7
        assert stats.config_id == 3
        assert (stats.rx_received, stats.rx_crc_ok, stats.rx_crc_bad) == (1, 0, 1)
        assert (stats.tx_requested, stats.tx_sent) == (4, 1)
        assert stats.tx_errors[TxError.TOO_LATE] == stats.tx_errors[TxError.TX_FREQ] == 1
        assert [request.token for request in emulator.tx_requests] == [9, 4, 5, 6]
        assert len(emulator.received) == 7

    run(tmp_path, scenario)


def test_bad_messages_are_answered_and_bad_frames_counted(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, client: Client) -> None:
        unknown = await client.ask_raw(encode_frame(cbor.dumps([42, 11, {}])))
        assert isinstance(unknown, Error)
        assert (unknown.code, unknown.ref_type, unknown.token) == (ErrorCode.UNKNOWN_TYPE, 42, 11)
        malformed = await client.ask_raw(encode_frame(cbor.dumps([2, 12, {1: "x"}])))
        assert isinstance(malformed, Error)
        assert (malformed.code, malformed.token) == (ErrorCode.MALFORMED, 12)
        # A host-bound message sent to the concentrator is refused too.
        wrong_way = await client.ask(TxAck(token=13))
        assert isinstance(wrong_way, Error)
        assert (wrong_way.code, wrong_way.ref_type) == (ErrorCode.MALFORMED, 6)
        # A frame with a bad CRC is dropped unanswered and counted (STATS.link_errors).
        frame = bytearray(to_frame(GetStats(token=14)))
        frame[-2] ^= 0x01
        client.send_raw(bytes(frame))
        stats = await client.ask(GetStats(token=15))
        assert isinstance(stats, Stats)
        assert stats.token == 15
        assert stats.link_errors == emulator.link_errors == 1

    run(tmp_path, scenario)


def test_rx_frames_carry_metadata_and_a_running_counter(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, client: Client) -> None:
        first = emulator.inject(
            b"\x40\xf1\x7d\xbe\x49",
            frequency_hz=868_500_000,
            sf=12,
            rssi_dbm=-118,
            snr_db=-17.25,
            channel=2,
            rf_chain=1,
        )
        await asyncio.sleep(0.01)
        second = emulator.inject(b"\x40\x02", timestamp_us=123)
        assert await client.receive() == first
        assert await client.receive() == second
        assert (first.sf, first.rssi_dbm, first.snr_db, first.channel) == (12, -118, -17.25, 2)
        assert second.timestamp_us == 123
        # The counter runs in microseconds, modulo 2^32.
        elapsed_us = (emulator.counter_us() - first.timestamp_us) % 2**32
        assert 10_000 <= elapsed_us < 2**31

    run(tmp_path, scenario)


def test_unplug_and_replug(tmp_path: Path) -> None:
    async def main() -> None:
        async with EmulatedConcentrator(tmp_path) as emulator:
            client = await Client.open(emulator.path)
            assert isinstance(await client.ask(Hello(firmware="host", token=1)), Hello)
            old_tty = emulator.tty_path
            emulator.unplug()
            assert not emulator.path.exists()
            assert emulator.tty_path is None
            # The client's port vanished: its read fails.
            with pytest.raises(serial.SerialException):
                async with asyncio.timeout(WAIT_S):
                    await client.reader.read(4096)
            emulator.inject(b"\x40\x00")  # nobody there: dropped and counted
            assert emulator.link_dropped == 1
            emulator.replug()
            assert emulator.path.is_symlink()
            assert emulator.radio_config is None  # the MCU rebooted
            fresh = await Client.open(emulator.path)
            try:
                answer = await fresh.ask(Hello(firmware="host", token=2))
                assert isinstance(answer, Hello)
                assert answer.token == 2
            finally:
                await fresh.close()
                await client.close()
            assert old_tty is not None

    asyncio.run(main())


def test_reboot_says_hello_with_token_zero(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, client: Client) -> None:
        assert isinstance(await client.ask(CONFIG), RadioConfigAck)
        emulator.reboot()
        hello = await client.receive()
        assert isinstance(hello, Hello)
        assert hello.token == 0
        assert emulator.radio_config is None

    run(tmp_path, scenario)


def test_periodic_stats(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, client: Client) -> None:
        every_second = dataclasses.replace(CONFIG, stats_interval_s=1)
        assert await client.ask(every_second) == RadioConfigAck(config_id=3, token=2)
        stats = await client.receive()
        assert isinstance(stats, Stats)
        assert (stats.token, stats.config_id) == (0, 3)

    run(tmp_path, scenario)


def test_plain_pyserial_can_use_the_path(tmp_path: Path) -> None:
    def blocking_client(path: str) -> bytes:
        with serial.Serial(path, 115_200, timeout=WAIT_S) as port:
            port.write(to_frame(Hello(firmware="pyserial", token=5)))
            port.read(1)  # the leading delimiter
            return b"\x00" + bytes(port.read_until(b"\x00"))

    async def main() -> None:
        async with EmulatedConcentrator(tmp_path) as emulator:
            frame = await asyncio.to_thread(blocking_client, str(emulator.path))
        answer = decode_message(FrameDecoder().feed(frame)[0])
        assert isinstance(answer, Hello)
        assert answer.token == 5
        assert answer.eui == DEFAULT_EUI

    asyncio.run(main())
