"""The serial concentrator backend against the emulated concentrator, over a real pty."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from owlgate.codecs.concentrator import (
    Channel,
    CodingRate,
    CrcStatus,
    ErrorCode,
    Hello,
    RadioConfig,
    RxFrame,
    Stats,
    TxError,
    TxRequest,
    to_frame,
)
from owlgate.edge.errors import RadioDisconnected, RadioRefused, RadioTimeout
from owlgate.edge.radio import RadioBackend
from owlgate.edge.serial_backend import SerialConcentrator
from owlgate.hil.concentrator import DEFAULT_EUI, EMULATOR_FIRMWARE, EmulatedConcentrator

WAIT_S = 10.0  # generous bound for anything that should happen at once; never reached

CONFIG = RadioConfig(
    config_id=7,
    region="EU868",
    channels=tuple(
        Channel(frequency_hz=frequency) for frequency in (868_100_000, 868_300_000, 868_500_000)
    ),
    tx_frequency_min_hz=863_000_000,
    tx_frequency_max_hz=870_000_000,
    tx_power_max_dbm=16,
    stats_interval_s=0,
    token=1,
)


def downlink(
    payload: bytes = b"\x60\xf1\x7d\xbe\x49\x20",
    *,
    timestamp_us: int | None = None,
    frequency_hz: int = 868_100_000,
    power_dbm: int = 14,
) -> TxRequest:
    return TxRequest(
        timestamp_us=timestamp_us,
        frequency_hz=frequency_hz,
        sf=7,
        power_dbm=power_dbm,
        payload=payload,
        token=1,
    )


Scenario = Callable[[EmulatedConcentrator, SerialConcentrator], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, config: RadioConfig = CONFIG) -> None:
    """Run ``scenario`` with an emulated concentrator and a connected backend on it."""

    async def main() -> None:
        async with EmulatedConcentrator(tmp_path, seed=3) as emulator:
            radio = SerialConcentrator(
                port=str(emulator.path),
                radio_config=config,
                hello_timeout_s=0.5,
                tx_timeout_s=2.0,
                reconnect_initial_s=0.05,
                reconnect_max_s=0.2,
                rng=random.Random(5),
            )
            async with radio:
                await scenario(emulator, radio)
            assert radio.pending_requests == 0

    asyncio.run(main())


async def take(frames: AsyncIterator[RxFrame], count: int) -> list[RxFrame]:
    async with asyncio.timeout(WAIT_S):
        return [await anext(frames) for _ in range(count)]


def test_is_a_radio_backend() -> None:
    backend: RadioBackend = SerialConcentrator(port="/dev/null", radio_config=CONFIG)
    assert backend.status.connected is False
    assert backend.counters.reconnects == 0


def test_handshake_and_radio_config(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        status = await radio.wait_connected(WAIT_S)
        assert status.connected is True
        assert status.config_id == CONFIG.config_id
        assert status.hello is not None
        assert status.hello.eui == DEFAULT_EUI
        assert status.hello.firmware == EMULATOR_FIRMWARE
        # One HELLO (no eui: the host's), then the configuration as given, with its own token.
        assert [type(message) for message in emulator.received] == [Hello, RadioConfig]
        assert emulator.hellos[0].eui is None
        sent = emulator.radio_configs[0]
        assert sent.channels == CONFIG.channels
        assert sent.config_id == 7
        assert sent.token != emulator.hellos[0].token
        assert emulator.radio_config == sent

    run(tmp_path, scenario)


def test_frames_arrive_in_order_with_metadata(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        frames = radio.frames()
        sent = [
            emulator.inject(
                bytes([0x40, index]) + bytes(index),
                frequency_hz=(868_100_000, 868_300_000, 868_500_000)[index % 3],
                sf=7 + index % 6,
                coding_rate=CodingRate.CR_4_5 if index % 2 else CodingRate.CR_4_8,
                rssi_dbm=-120 + index,
                snr_db=-20 + index / 4,
                channel=index % 8,
                rf_chain=index % 2,
                crc_status=CrcStatus.NONE if index == 5 else CrcStatus.OK,
            )
            for index in range(40)
        ]
        # A packet with a bad radio CRC is counted and dropped, not delivered.
        emulator.inject(b"\x40bad", crc_status=CrcStatus.BAD)
        last = emulator.inject(b"\x40last")
        assert await take(frames, 41) == [*sent, last]
        timestamps = [frame.timestamp_us for frame in sent]
        assert all(0 <= stamp < 2**32 for stamp in timestamps)
        counters = radio.counters
        assert counters.rx_received == 42
        assert counters.rx_crc_ok == 40
        assert counters.rx_crc_bad == 1
        assert counters.rx_delivered == 41
        assert counters.link_crc_errors == counters.link_frame_errors == 0

    run(tmp_path, scenario)


def test_transmit_is_acknowledged(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        request = downlink(timestamp_us=(emulator.counter_us() + 1_000_000) % 2**32)
        ack = await radio.transmit(request)
        assert ack.error is TxError.NONE
        assert ack.timestamp_us is not None
        received = emulator.tx_requests
        assert len(received) == 1
        assert received[0].payload == request.payload
        assert received[0].timestamp_us == request.timestamp_us
        assert ack.token == received[0].token
        assert radio.counters.tx_requested == radio.counters.tx_scheduled == 1

    run(tmp_path, scenario)


def test_tx_errors_come_back_typed(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        emulator.tx_error = TxError.TOO_LATE
        assert (await radio.transmit(downlink())).error is TxError.TOO_LATE
        emulator.tx_error = TxError.NONE
        # Outside the configured TX range and power (RadioConfig keys 5 to 7).
        assert (await radio.transmit(downlink(frequency_hz=902_300_000))).error is TxError.TX_FREQ
        assert (await radio.transmit(downlink(power_dbm=27))).error is TxError.TX_POWER
        assert (await radio.transmit(downlink())).error is TxError.NONE
        counters = radio.counters
        assert (counters.tx_requested, counters.tx_refused, counters.tx_scheduled) == (4, 3, 1)
        stats = await radio.get_stats()
        refused = {error: count for error, count in stats.tx_errors.items() if count}
        assert refused == {TxError.TOO_LATE: 1, TxError.TX_FREQ: 1, TxError.TX_POWER: 1}
        assert stats.tx_sent == 1

    run(tmp_path, scenario)


def test_protocol_error_is_raised_typed(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        # The MCU reboots and its HELLO is lost: it is not configured when asked to transmit.
        emulator.reboot(announce=False)
        with pytest.raises(RadioRefused) as caught:
            await radio.transmit(downlink())
        assert caught.value.code is ErrorCode.NOT_CONFIGURED
        assert radio.counters.tx_refused == 1
        assert radio.pending_requests == 0
        # Which tells the backend to configure it again.
        await emulator.wait_for(RadioConfig, 2, timeout_s=WAIT_S)
        await radio.wait_connected(WAIT_S)
        assert emulator.radio_config is not None

    run(tmp_path, scenario)


def test_timeout_when_the_concentrator_stays_silent(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        emulator.silent = {TxRequest}
        with pytest.raises(RadioTimeout):
            await radio.transmit(downlink(), timeout_s=0.2)
        with pytest.raises(RadioTimeout):
            await radio.transmit(downlink(), timeout_s=0.2)
        assert radio.pending_requests == 0
        assert radio.counters.tx_timeouts == 2
        assert len(emulator.tx_requests) == 2
        # Answers flow again; the new request gets a new token and its own answer.
        emulator.silent = set()
        ack = await radio.transmit(downlink())
        assert ack.error is TxError.NONE
        assert ack.token not in {request.token for request in emulator.tx_requests[:2]}
        assert radio.pending_requests == 0

    run(tmp_path, scenario)


def test_concurrent_requests_get_their_own_answers(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        requests = [downlink(bytes([0x60, index])) for index in range(30)]
        acks = await asyncio.gather(*(radio.transmit(request) for request in requests))
        by_token = {request.token: request.payload for request in emulator.tx_requests}
        assert len(by_token) == 30
        assert [by_token[ack.token] for ack in acks] == [request.payload for request in requests]
        stats = await radio.get_stats()
        assert isinstance(stats, Stats)
        assert stats.tx_requested == 30
        assert radio.pending_requests == 0

    run(tmp_path, scenario)


def test_garbage_and_corrupted_frames_are_counted(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        frames = radio.frames()
        first = emulator.inject(b"\x40one")
        emulator.inject_garbage(20)
        second = emulator.inject(b"\x40two")
        emulator.corrupt_next()
        emulator.inject(b"\x40lost")
        third = emulator.inject(b"\x40three")
        emulator.inject_garbage(5000)  # longer than any frame: an overflow
        fourth = emulator.inject(b"\x40four")
        assert await take(frames, 4) == [first, second, third, fourth]
        counters = radio.counters
        # The corrupted frame is a CRC error; the noise is one CRC or COBS error each.
        assert counters.link_crc_errors >= 1
        assert counters.link_crc_errors + counters.link_frame_errors == 3
        assert counters.rx_received == 4

    run(tmp_path, scenario)


def test_frames_in_small_pieces(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        frames = radio.frames()
        wanted = [
            RxFrame(
                frequency_hz=868_300_000,
                sf=sf,
                bandwidth_hz=125_000,
                coding_rate=CodingRate.CR_4_5,
                rssi_dbm=-90,
                snr_db=-7.5,
                timestamp_us=sf * 1000,
                crc_status=CrcStatus.OK,
                payload=bytes(range(sf * 10)),
            )
            for sf in (7, 12)
        ]
        line = b"".join(to_frame(frame) for frame in wanted)
        rng = random.Random(11)
        at = 0
        while at < len(line):
            size = rng.randint(1, 3)
            emulator.send_raw(line[at : at + size])
            at += size
            await asyncio.sleep(0.001)
        assert await take(frames, 2) == wanted

    run(tmp_path, scenario)


def test_unplug_and_replug(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        frames = radio.frames()
        before = emulator.inject(b"\x40before")
        assert await take(frames, 1) == [before]

        emulator.unplug()
        await radio.wait_disconnected(WAIT_S)
        with pytest.raises(RadioDisconnected):
            await radio.transmit(downlink())
        # A few attempts fail on the missing port before it comes back.
        await asyncio.sleep(0.3)
        assert radio.status.last_error is not None
        emulator.replug()

        status = await radio.wait_connected(WAIT_S)
        assert status.config_id == CONFIG.config_id
        assert radio.counters.reconnects == 1
        # The new MCU was configured again: a second HELLO and a second RADIO_CONFIG.
        assert len(emulator.hellos) == 2
        assert len(emulator.radio_configs) == 2
        assert emulator.radio_config == emulator.radio_configs[1]
        after = emulator.inject(b"\x40after")
        # The same iterator goes on across the reconnection.
        assert await take(frames, 1) == [after]
        assert (await radio.transmit(downlink())).error is TxError.NONE

    run(tmp_path, scenario)


def test_reboot_resends_the_configuration(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        emulator.reboot()
        await emulator.wait_for(RadioConfig, 2, timeout_s=WAIT_S)
        await radio.wait_connected(WAIT_S)
        assert radio.counters.reconnects == 0
        assert emulator.radio_config is not None
        assert (await radio.transmit(downlink())).error is TxError.NONE

    run(tmp_path, scenario)


def test_stats_with_another_configuration_resends_it(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        await radio.wait_connected(WAIT_S)
        emulator.reboot(announce=False)
        stats = await radio.get_stats()
        assert stats.config_id == 0
        assert radio.last_stats == stats
        await emulator.wait_for(RadioConfig, 2, timeout_s=WAIT_S)
        await radio.wait_connected(WAIT_S)
        assert (await radio.get_stats()).config_id == CONFIG.config_id

    run(tmp_path, scenario)


def test_configuration_beyond_capabilities_is_not_sent(tmp_path: Path) -> None:
    too_many = RadioConfig(
        config_id=8,
        region="EU868",
        channels=tuple(Channel(frequency_hz=863_100_000 + 200_000 * index) for index in range(10)),
        tx_frequency_min_hz=863_000_000,
        tx_frequency_max_hz=870_000_000,
        tx_power_max_dbm=16,
        token=1,
    )

    async def scenario(emulator: EmulatedConcentrator, radio: SerialConcentrator) -> None:
        # It keeps trying, and never sends what the concentrator cannot do.
        await emulator.wait_for(Hello, 3, timeout_s=WAIT_S)
        with pytest.raises(RadioTimeout):
            await radio.wait_connected(0.1)
        assert radio.status.connected is False
        assert "10 channels, it has 9" in (radio.status.last_error or "")
        assert emulator.radio_configs == []

    run(tmp_path, scenario, too_many)


def test_no_concentrator_on_the_port(tmp_path: Path) -> None:
    async def main() -> None:
        radio = SerialConcentrator(
            port=str(tmp_path / "missing"),
            radio_config=CONFIG,
            reconnect_initial_s=0.05,
            reconnect_max_s=0.1,
        )
        async with radio:
            with pytest.raises(RadioTimeout):
                await radio.wait_connected(0.3)
            assert "missing" in (radio.status.last_error or "")
        # Closed: the iterator ends at once.
        assert [frame async for frame in radio.frames()] == []

    asyncio.run(main())
