"""The RAK3172 backend against the emulated module, over a real pty."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from owlgate.codecs.concentrator import CodingRate, CrcStatus, RxFrame, TxError, TxRequest
from owlgate.codecs.rui3 import format_rx_event
from owlgate.edge.errors import RadioDisconnected, RadioTimeout
from owlgate.edge.radio import RadioBackend
from owlgate.edge.rak3172_backend import Rak3172Backend, Rak3172Refused, airtime_s
from owlgate.hil.rak3172 import EmulatedRak3172, FirmwareStyle

WAIT_S = 10.0  # generous bound for anything that should happen at once; never reached
FREQUENCY_HZ = 868_100_000
JOIN_ACCEPT = bytes.fromhex("20f2a1c3d4e5f60718293a4b5c6d7e8f90")

Scenario = Callable[[EmulatedRak3172, Rak3172Backend], Awaitable[None]]


def backend(port: str, **overrides: float) -> Rak3172Backend:
    settings: dict[str, float] = {
        "command_timeout_s": 0.5,
        "busy_backoff_s": 0.01,
        "restart_timeout_s": 2.0,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.2,
        **overrides,
    }
    return Rak3172Backend(
        port,
        frequency_hz=FREQUENCY_HZ,
        spreading_factor=9,
        bandwidth_hz=125_000,
        coding_rate=1,
        tx_power_dbm=14,
        rng=random.Random(5),
        **settings,  # type: ignore[arg-type]
    )


def run(
    tmp_path: Path,
    scenario: Scenario,
    *,
    style: FirmwareStyle = "3.2",
    work_mode: int = 1,
    paced: bool = False,
    **overrides: float,
) -> EmulatedRak3172:
    """Run ``scenario`` with an emulated module and a connected backend on it; ``paced``:
    the module's bytes arrive at 115200 baud, as over a real cable."""
    holder: list[EmulatedRak3172] = []

    async def main() -> None:
        async with EmulatedRak3172(
            tmp_path, firmware_style=style, work_mode=work_mode, paced=paced
        ) as module:
            holder.append(module)
            radio = backend(str(module.path), **overrides)
            async with radio:
                await radio.wait_connected(WAIT_S)
                await scenario(module, radio)
                assert radio.pending_requests == 0
            assert radio.pending_requests == 0

    asyncio.run(main())
    return holder[0]


async def take(frames: AsyncIterator[RxFrame], count: int) -> list[RxFrame]:
    async with asyncio.timeout(WAIT_S):
        return [await anext(frames) for _ in range(count)]


def now_us() -> int:
    return (time.monotonic_ns() // 1000) % 2**32


def since(start_us: int, stamp_us: int) -> int:
    """Microseconds from ``start_us`` to ``stamp_us`` on the wrapping 32-bit counter."""
    return (stamp_us - start_us) % 2**32


def downlink(*, timestamp_us: int | None, power_dbm: int = 14) -> TxRequest:
    return TxRequest(
        timestamp_us=timestamp_us,
        frequency_hz=869_525_000,
        sf=12,
        bandwidth_hz=125_000,
        coding_rate=CodingRate.CR_4_5,
        power_dbm=power_dbm,
        payload=JOIN_ACCEPT,
        token=1,
    )


def test_is_a_radio_backend() -> None:
    radio: RadioBackend = backend("/dev/null")
    assert radio.status.connected is False
    assert radio.counters.reconnects == 0


def test_bad_settings_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="bandwidth_hz"):
        Rak3172Backend("/dev/null", frequency_hz=FREQUENCY_HZ, spreading_factor=7, bandwidth_hz=1)
    with pytest.raises(ValueError, match="spreading_factor"):
        Rak3172Backend("/dev/null", frequency_hz=FREQUENCY_HZ, spreading_factor=13)
    with pytest.raises(ValueError, match="tx_power_dbm"):
        Rak3172Backend("/dev/null", frequency_hz=FREQUENCY_HZ, spreading_factor=7, tx_power_dbm=30)


@pytest.mark.parametrize("paced", [False, True], ids=["instant", "paced"])
def test_configuration_switches_to_p2p_and_receives(tmp_path: Path, paced: bool) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        # From LoRaWAN mode: NWM read, set, the module restarted, then the P2P settings.
        assert module.work_mode == 0
        assert module.restarts == 1
        assert module.p2p == (FREQUENCY_HZ, 9, 125, 1, 8, 14)
        assert module.iq_inverted is False
        assert module.receive_window == 65534
        assert radio.firmware == module.version
        assert radio.counters.reconnects == 0
        assert radio.restarts == 0

    # Paced, the restart banner's lines arrive milliseconds apart: the backend must wait for
    # the last one before its AT, or it takes the rest for more restarts.
    module = run(tmp_path, scenario, paced=paced)
    assert module.commands[:4] == ["AT", "AT+NWM=?", "AT+NWM=0", "AT"]
    assert module.commands[4:] == [
        "AT+VER=?",
        "AT+PRECV=0",
        "AT+P2P=868100000:9:125:1:8:14",
        "AT+IQINVER=0",
        "AT+PRECV=65534",
    ]


def test_nwm_is_not_set_when_already_p2p(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        assert module.restarts == 0

    module = run(tmp_path, scenario, work_mode=0)
    assert module.commands_of("NWM") == ["AT+NWM=?"]


@pytest.mark.parametrize("style", ["3.2", "legacy"])
def test_frames_arrive_with_rssi_snr_payload(tmp_path: Path, style: FirmwareStyle) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        frames = radio.frames()
        packets = [
            (bytes([0x40, index]) + bytes(index * 7), -120 + index, index - 20)
            for index in range(30)
        ]
        before = now_us()
        for payload, rssi, snr in packets:
            assert module.inject(payload, rssi, snr)
        received = await take(frames, len(packets))
        after = now_us()
        assert [(f.payload, f.rssi_dbm, f.snr_db) for f in received] == [
            (payload, rssi, float(snr)) for payload, rssi, snr in packets
        ]
        for frame in received:
            assert (frame.frequency_hz, frame.sf, frame.bandwidth_hz) == (FREQUENCY_HZ, 9, 125_000)
            assert frame.coding_rate is CodingRate.CR_4_6
            assert frame.crc_status is CrcStatus.OK
            # Stamped by the host clock between the first inject and the last read.
            assert since(before, frame.timestamp_us) <= since(before, after)
        offsets = [since(before, frame.timestamp_us) for frame in received]
        assert offsets == sorted(offsets)
        counters = radio.counters
        assert counters.rx_received == counters.rx_crc_ok == counters.rx_delivered == 30
        assert counters.link_invalid == 0

    run(tmp_path, scenario, style=style)


def test_events_in_small_pieces_are_reassembled(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        frames = radio.frames()
        line = format_rx_event(-99, -12, bytes(range(200))) + format_rx_event(
            -98, 11, b"\x40z", legacy=True
        )
        rng = random.Random(11)
        at = 0
        while at < len(line):
            size = rng.randint(1, 5)
            module.send_raw(line[at : at + size])
            at += size
            await asyncio.sleep(0.001)  # let each piece reach the backend on its own
        received = await take(frames, 2)
        assert [(f.rssi_dbm, f.snr_db, f.payload) for f in received] == [
            (-99, -12.0, bytes(range(200))),
            (-98, 11.0, b"\x40z"),
        ]
        assert radio.counters.link_invalid == 0

    run(tmp_path, scenario, work_mode=0)


def test_a_packet_on_other_settings_is_not_heard(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        frames = radio.frames()
        assert not module.inject(b"\x40other", -80, 5, spreading_factor=7)
        assert not module.inject(b"\x40down", -80, 5, iq_inverted=True)
        assert module.inject(b"\x40mine", -80, 5, spreading_factor=9)
        assert [frame.payload for frame in await take(frames, 1)] == [b"\x40mine"]
        assert module.missed == 2

    run(tmp_path, scenario, work_mode=0)


def test_garbage_lines_are_counted_and_good_packets_still_arrive(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        frames = radio.frames()
        module.inject(b"\x40one", -70, 7)
        module.send_raw(b"+EVT:RXP2P:-70:7:ABC\r\n")  # odd hex digits
        module.send_raw(b"\xff\xfe\x00noise\r\n")  # not ASCII
        module.send_raw(b"+EVT:RXP2P:loud:7:AB\r\n")  # RSSI not a number
        module.send_raw(b"Z" * 2000 + b"\r\n")  # longer than any line
        module.inject(b"\x40two", -71, 6)
        assert [frame.payload for frame in await take(frames, 2)] == [b"\x40one", b"\x40two"]
        counters = radio.counters
        assert counters.link_invalid == 3
        assert counters.link_frame_errors == 1
        assert counters.rx_received == counters.rx_delivered == 2

    run(tmp_path, scenario, work_mode=0)


def test_legacy_header_without_payload_is_counted(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        frames = radio.frames()
        module.send_raw(b"+EVT:RXP2P, RSSI -60, SNR 4\r\n")
        # The next event is not the payload: the header is lost, this packet is not.
        module.inject(b"\x40after", -61, 3)
        assert [(f.payload, f.rssi_dbm) for f in await take(frames, 1)] == [(b"\x40after", -61)]
        assert radio.counters.link_invalid == 1

    run(tmp_path, scenario, style="legacy", work_mode=0)


def test_busy_errors_are_retried_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        async with EmulatedRak3172(tmp_path, work_mode=0) as module:
            module.busy_next(3)
            radio = backend(str(module.path))
            async with radio:
                await radio.wait_connected(WAIT_S)
                assert radio.busy_retries == 3
                # The first AT was answered busy three times, then went through.
                assert module.commands[:4] == ["AT"] * 4
                assert module.receive_window == 65534
                frames = radio.frames()
                module.inject(b"\x40ok", -50, 9)
                assert [frame.payload for frame in await take(frames, 1)] == [b"\x40ok"]

    asyncio.run(main())


def test_busy_beyond_the_attempts_is_an_error_and_then_recovers(tmp_path: Path) -> None:
    async def main() -> None:
        async with EmulatedRak3172(tmp_path, work_mode=0) as module:
            module.busy_next(4)
            radio = backend(str(module.path), busy_attempts=2)
            async with radio:
                # Two sessions give up after two busy answers each (one retry each); the
                # third connects.
                await radio.wait_connected(WAIT_S)
                assert radio.busy_retries == 2
                assert module.commands[:5] == ["AT"] * 5
                assert radio.counters.reconnects == 0

    asyncio.run(main())


def test_restart_mid_stream_is_recovered(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        frames = radio.frames()
        module.inject(b"\x40before", -60, 5)
        assert [frame.payload for frame in await take(frames, 1)] == [b"\x40before"]
        p2p_before = len(module.commands_of("P2P"))
        module.restart()
        assert module.receive_window == 0
        assert not module.inject(b"\x40lost", -60, 5)
        await module.wait_for("PRECV", 4, timeout_s=WAIT_S)  # 0, 65534, then again
        await radio.wait_connected(WAIT_S)
        assert module.receive_window == 65534
        assert len(module.commands_of("P2P")) == p2p_before + 1
        module.inject(b"\x40after", -61, 4)
        assert [frame.payload for frame in await take(frames, 1)] == [b"\x40after"]
        assert radio.counters.reconnects == 1
        assert radio.restarts == 1

    run(tmp_path, scenario, work_mode=0)


def test_receive_timeout_event_starts_receive_again(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        module.receive_window = 0
        module.send_raw(b"+EVT:RXP2P RECEIVE TIMEOUT\r\n")
        await module.wait_for("PRECV", 3, timeout_s=WAIT_S)
        assert module.commands[-1] == "AT+PRECV=65534"
        frames = radio.frames()
        module.inject(b"\x40back", -60, 5)
        assert [frame.payload for frame in await take(frames, 1)] == [b"\x40back"]

    run(tmp_path, scenario, work_mode=0)


def test_hung_module_is_found_by_the_keepalive_and_recovered(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        module.silent = True
        await radio.wait_disconnected(WAIT_S)
        assert radio.restarts == 1
        module.silent = False
        await radio.wait_connected(WAIT_S)
        assert radio.counters.reconnects == 1
        frames = radio.frames()
        module.inject(b"\x40back", -60, 5)
        assert [frame.payload for frame in await take(frames, 1)] == [b"\x40back"]

    run(tmp_path, scenario, work_mode=0, keepalive_interval_s=0.2, command_timeout_s=0.2)


def test_unplug_and_replug(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        frames = radio.frames()
        module.inject(b"\x40before", -60, 5)
        assert [frame.payload for frame in await take(frames, 1)] == [b"\x40before"]
        module.unplug()
        status = await radio.wait_disconnected(WAIT_S)
        assert status.connected is False
        with pytest.raises(RadioDisconnected):
            await radio.transmit(downlink(timestamp_us=None))
        await asyncio.sleep(0.3)  # some reopen attempts fail on the missing port
        assert radio.status.last_error is not None
        module.replug()
        await radio.wait_connected(WAIT_S)
        assert radio.counters.reconnects == 1
        assert module.receive_window == 65534
        module.inject(b"\x40after", -62, 3)
        # The same iterator goes on across the reconnection.
        assert [frame.payload for frame in await take(frames, 1)] == [b"\x40after"]

    run(tmp_path, scenario, work_mode=0)


def test_transmit_on_time_with_the_request_settings_then_receive_resumes(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        frames = radio.frames()
        module.inject(b"\x00join", -70, 8)
        (uplink,) = await take(frames, 1)
        # As the agent times a join accept: from the uplink's stamp (here 0.5 s, not 5 s).
        due_us = (uplink.timestamp_us + 500_000) % 2**32
        ack = await radio.transmit(downlink(timestamp_us=due_us))
        assert ack.error is TxError.NONE
        assert ack.timestamp_us is not None
        # Not sent before its time (the host clock is the module's only clock).
        assert since(uplink.timestamp_us, ack.timestamp_us) >= 500_000
        (sent,) = module.sent
        assert since(due_us, round(sent.monotonic_s * 1e6) % 2**32) < 2**31
        assert sent.payload == JOIN_ACCEPT
        assert (sent.frequency_hz, sent.spreading_factor, sent.bandwidth_khz) == (
            869_525_000,
            12,
            125,
        )
        assert (sent.coding_rate, sent.preamble, sent.tx_power_dbm) == (0, 8, 14)
        assert sent.iq_inverted is True
        # Receive is back on the receive settings.
        assert module.p2p == (FREQUENCY_HZ, 9, 125, 1, 8, 14)
        assert module.iq_inverted is False
        assert module.receive_window == 65534
        module.inject(b"\x40next", -70, 8)
        assert [frame.payload for frame in await take(frames, 1)] == [b"\x40next"]
        counters = radio.counters
        assert (counters.tx_requested, counters.tx_scheduled, counters.tx_refused) == (1, 1, 0)

    module = run(tmp_path, scenario, work_mode=0)
    tail = module.commands[-7:]
    assert tail == [
        "AT+PRECV=0",
        "AT+P2P=869525000:12:125:0:8:14",
        "AT+IQINVER=1",
        f"AT+PSEND={JOIN_ACCEPT.hex().upper()}",
        "AT+P2P=868100000:9:125:1:8:14",
        "AT+IQINVER=0",
        "AT+PRECV=65534",
    ]


def test_transmit_too_late_or_too_early_or_out_of_range(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        late = await radio.transmit(downlink(timestamp_us=(now_us() - 500_000) % 2**32))
        assert late.error is TxError.TOO_LATE
        early = await radio.transmit(downlink(timestamp_us=(now_us() + 60_000_000) % 2**32))
        assert early.error is TxError.TOO_EARLY
        loud = await radio.transmit(downlink(timestamp_us=None, power_dbm=27))
        assert loud.error is TxError.TX_POWER
        assert module.sent == []
        assert module.commands_of("PSEND") == []
        counters = radio.counters
        assert (counters.tx_requested, counters.tx_refused, counters.tx_scheduled) == (3, 3, 0)
        assert module.receive_window == 65534

    run(tmp_path, scenario, work_mode=0)


def test_transmit_refused_by_the_module_is_raised_and_receive_resumes(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        # PRECV=0 is refused twice (the attempts), then restoring P2P twice too.
        module.busy_next(4)
        with pytest.raises(Rak3172Refused) as caught:
            await radio.transmit(downlink(timestamp_us=None))
        assert caught.value.status.value == "AT_BUSY_ERROR"
        counters = radio.counters
        assert (counters.tx_requested, counters.tx_refused, counters.tx_scheduled) == (1, 1, 0)
        assert module.sent == []
        # The backend configures the module again and receive resumes.
        await module.wait_for("PRECV", 6, timeout_s=WAIT_S)
        assert module.commands[-1] == "AT+PRECV=65534"
        frames = radio.frames()
        assert module.inject(b"\x40again", -70, 8)
        assert [frame.payload for frame in await take(frames, 1)] == [b"\x40again"]
        await radio.wait_connected(WAIT_S)
        assert radio.counters.reconnects == 1

    run(tmp_path, scenario, work_mode=0, busy_attempts=2)


def test_transmit_without_done_event_times_out(tmp_path: Path) -> None:
    async def scenario(module: EmulatedRak3172, radio: Rak3172Backend) -> None:
        radio_task = asyncio.ensure_future(
            radio.transmit(downlink(timestamp_us=None), timeout_s=0.3)
        )
        # Unplug right after the PSEND: the done event never comes.
        await module.wait_for("PSEND", timeout_s=WAIT_S)
        module.unplug()
        with pytest.raises((RadioTimeout, RadioDisconnected)):
            await radio_task
        assert radio.pending_requests == 0
        module.replug()
        await radio.wait_connected(WAIT_S)

    run(tmp_path, scenario, work_mode=0)


def test_no_module_on_the_port(tmp_path: Path) -> None:
    async def main() -> None:
        radio = backend(str(tmp_path / "missing"))
        async with radio:
            with pytest.raises(RadioTimeout):
                await radio.wait_connected(0.3)
            assert "missing" in (radio.status.last_error or "")
        assert [frame async for frame in radio.frames()] == []

    asyncio.run(main())


def test_airtime_matches_the_semtech_calculator() -> None:
    # SF7/125 kHz, CR 4/5, 8 symbols preamble, 10 bytes: 41.216 ms (Semtech LoRa calculator).
    assert airtime_s(10, 7, 125_000, 0, 8) == pytest.approx(0.041216)
    # SF12/125 kHz, low data rate optimisation on, 17 bytes: 1318.912 ms.
    assert airtime_s(17, 12, 125_000, 0, 8) == pytest.approx(1.318912)
