"""The Semtech UDP backend against the emulated packet forwarder, over real UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from owlgate.codecs.concentrator import CodingRate, CrcStatus, RxFrame, TxError, TxRequest
from owlgate.codecs.gwmp import PullData, PushData, Rxpk, Stat
from owlgate.edge.errors import RadioDisconnected, RadioError, RadioTimeout
from owlgate.edge.radio import RadioBackend
from owlgate.edge.semtech_udp import SemtechUdpBackend
from owlgate.hil.packet_forwarder import DEFAULT_EUI, EmulatedPacketForwarder

WAIT_S = 10.0  # generous bound for anything that should happen at once; never reached
HOST = "127.0.0.1"
OTHER_EUI = bytes.fromhex("0102030405060708")
PAYLOAD = bytes.fromhex("40f17dbe4900020001954378762b11ff0d")

Scenario = Callable[[EmulatedPacketForwarder, SemtechUdpBackend], Awaitable[None]]


def run(
    scenario: Scenario,
    *,
    backend: dict[str, Any] | None = None,
    forwarder: dict[str, Any] | None = None,
    connect: bool = True,
) -> None:
    """Run ``scenario`` with a backend on a free port and an emulated forwarder sending to it
    (connected first unless ``connect`` is False)."""

    async def main() -> None:
        radio = SemtechUdpBackend(HOST, 0, rng=random.Random(4), **(backend or {}))
        async with radio:
            settings: dict[str, Any] = {"keepalive_s": 5.0, "seed": 11, **(forwarder or {})}
            async with EmulatedPacketForwarder(HOST, radio.local_port, **settings) as gateway:
                if connect:
                    await radio.wait_connected(WAIT_S)
                await scenario(gateway, radio)
        assert radio.pending_requests == 0
        assert radio.status.connected is False

    asyncio.run(main())


async def take(frames: AsyncIterator[RxFrame], count: int) -> list[RxFrame]:
    async with asyncio.timeout(WAIT_S):
        return [await anext(frames) for _ in range(count)]


async def pushed(gateway: EmulatedPacketForwarder, *packets: bytes | Rxpk, **kw: Any) -> int:
    """Push and wait for the PUSH_ACK: the backend handles a datagram before acknowledging
    it returns, so its counters are up to date then."""
    token = gateway.push(*packets, **kw)
    await gateway.wait_push_ack(token, WAIT_S)
    return token


def downlink(*, timestamp_us: int | None = 1_234_567, payload: bytes = PAYLOAD) -> TxRequest:
    return TxRequest(
        timestamp_us=timestamp_us,
        frequency_hz=868_300_000,
        sf=9,
        coding_rate=CodingRate.CR_4_5,
        power_dbm=14,
        payload=payload,
        token=1,
    )


def test_is_a_radio_backend() -> None:
    backend: RadioBackend = SemtechUdpBackend("127.0.0.1", 0)
    assert backend.status.connected is False
    assert backend.status.port == "udp://127.0.0.1:0 (forwarder not heard yet, no PULL_DATA yet)"
    assert backend.counters.rx_received == 0
    with pytest.raises(RadioError, match="not listening"):
        _ = SemtechUdpBackend().local_port
    with pytest.raises(ValueError, match="8 bytes"):
        SemtechUdpBackend(gateway_eui=b"\x01")


def test_rxpk_in_rx_frame_out_with_metadata() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        first = gateway.rxpk(
            PAYLOAD, freq=867.5, datr="SF10BW125", codr="4/6", rssi=-97, lsnr=-6.3, chan=5
        )
        second = gateway.rxpk(b"\x80" + PAYLOAD[1:], datr="SF7BW250", tmst=4_294_967_295, rfch=1)
        token = await pushed(gateway, first, second)
        frames = await take(radio.frames(), 2)
        assert frames[0] == RxFrame(
            frequency_hz=867_500_000,
            sf=10,
            bandwidth_hz=125_000,
            coding_rate=CodingRate.CR_4_6,
            rssi_dbm=-97,
            snr_db=-6.25,  # the nearest 0.25 dB step
            timestamp_us=first.tmst,
            crc_status=CrcStatus.OK,
            payload=PAYLOAD,
            channel=5,
            rf_chain=0,
        )
        assert (frames[1].bandwidth_hz, frames[1].timestamp_us) == (250_000, 4_294_967_295)
        assert frames[1].payload[0] == 0x80
        assert frames[1].rf_chain == 1
        assert gateway.push_ack_tokens == [token]
        counters = radio.counters
        assert (counters.rx_received, counters.rx_crc_ok, counters.rx_delivered) == (2, 2, 2)
        assert radio.gateway_eui == DEFAULT_EUI

    run(scenario)


def test_acks_echo_tokens_and_version() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        gateway.send_pull_data()
        gateway.send_pull_data()
        await gateway.wait_for("pull_ack_tokens", 3, WAIT_S)
        assert gateway.pull_ack_tokens == gateway.pull_tokens
        tokens = [gateway.send_stat() for _ in range(3)]
        await gateway.wait_for("push_ack_tokens", 3, WAIT_S)
        assert gateway.push_ack_tokens == tokens
        # A forwarder before v2 gets its own version back: the reference one ignores others.
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                answers.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(
            Client, remote_addr=(HOST, radio.local_port)
        )
        try:
            transport.sendto(PullData(token=0x0102, gateway_eui=DEFAULT_EUI, version=1).to_bytes())
            async with asyncio.timeout(WAIT_S):
                assert await answers.get() == bytes.fromhex("01010204")
        finally:
            transport.close()

    run(scenario)


def test_bad_crc_dropped_and_counted_no_crc_delivered() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        await pushed(
            gateway,
            gateway.rxpk(b"\x01", stat=-1),
            gateway.rxpk(b"\x02", stat=0),
            gateway.rxpk(b"\x03", stat=-1),
            gateway.rxpk(b"\x04", stat=1),
        )
        frames = await take(radio.frames(), 2)
        assert [(f.payload, f.crc_status) for f in frames] == [
            (b"\x02", CrcStatus.NONE),
            (b"\x04", CrcStatus.OK),
        ]
        counters = radio.counters
        assert counters.rx_received == 4
        assert counters.rx_crc_bad == 2
        assert counters.rx_crc_ok == 1
        assert counters.rx_delivered == 2

    run(scenario)


def test_garbage_is_counted_and_the_next_good_packet_arrives() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        eui = DEFAULT_EUI
        gateway.send_raw(b"\x02")  # one byte
        gateway.send_raw(b"\x02\x00")  # truncated header
        gateway.send_raw(b"\x07\x00\x01\x00" + eui + b"{}")  # unknown version
        gateway.send_raw(b"\x02\x00\x01\x09" + eui)  # unknown type
        gateway.send_raw(b"\x02\x00\x01\x04")  # a PULL_ACK: a server's datagram
        gateway.send_raw(b"\x02\x00\x01\x00" + eui + b'{"rxpk":[{"tmst":')  # broken JSON
        gateway.send_raw(b"\x02\x00\x02\x00" + eui + b'{"rxpk":{"a":1}}')  # wrong shape
        # One bad rxpk between two good ones, in one datagram.
        bad = {"tmst": 5, "freq": 868.1, "stat": 1, "modu": "LORA", "datr": "SF7BW125"}
        good = gateway.rxpk(b"\x11").to_json()
        body = json.dumps({"rxpk": [good, bad, good]}).encode()
        gateway.send_raw(b"\x02\x00\x03\x00" + eui + body)
        await pushed(gateway, b"\x22")
        frames = await take(radio.frames(), 3)
        assert [f.payload for f in frames] == [b"\x11", b"\x11", b"\x22"]
        counters = radio.counters
        assert counters.link_frame_errors == 4
        # The PULL_ACK, the two bad JSON bodies, and the bad rxpk.
        assert counters.link_invalid == 4
        assert counters.rx_received == 3
        # Datagrams with a readable header were acknowledged all the same.
        assert gateway.push_ack_tokens[:3] == [1, 2, 3]

    run(scenario)


def test_unusable_packets_are_counted_not_delivered() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        fsk = Rxpk(tmst=1, freq=868.8, stat=1, modu="FSK", datr=50_000, rssi=-80, size=1, data=b"x")
        narrow = gateway.rxpk(b"\x05", datr="SF7BW62")
        await pushed(gateway, fsk, narrow, b"\x06")
        (frame,) = await take(radio.frames(), 1)
        assert frame.payload == b"\x06"
        assert radio.counters.link_invalid == 2
        assert radio.counters.rx_received == 3

    run(scenario)


def test_stat_reports_are_kept_and_summed() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        assert radio.forwarder_stats.reports == 0
        first = Stat(time="2026-12-01 19:00:00 GMT", rxnb=10, rxok=8, rxfw=8, ackr=100.0, dwnb=2)
        second = Stat(rxnb=5, rxok=5, rxfw=4, ackr=50.0, dwnb=1, txnb=1, temp=41.5)
        await pushed(gateway, stat=first)
        await pushed(gateway, b"\x01", stat=second)
        stats = radio.forwarder_stats
        assert stats.reports == 2
        assert (stats.rx_received, stats.rx_ok, stats.rx_forwarded) == (15, 13, 12)
        assert (stats.tx_requested, stats.tx_sent) == (3, 1)
        assert stats.last == second
        # The agent's own count is of rxpk objects, not of the forwarder's figures.
        assert radio.counters.rx_received == 1

    run(scenario)


def test_downlink_pull_resp_content_and_tx_ack() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        ack = await radio.transmit(downlink())
        assert ack.error is TxError.NONE
        (resp,) = gateway.downlinks
        assert ack.token == resp.token != 0
        txpk = resp.txpk.to_json()
        assert txpk == {
            "tmst": 1_234_567,
            "freq": 868.3,
            "rfch": 0,
            "powe": 14,
            "modu": "LORA",
            "datr": "SF9BW125",
            "codr": "4/5",
            "ipol": True,
            "size": len(PAYLOAD),
            "data": base64.b64encode(PAYLOAD).decode(),
            "ncrc": True,
        }
        immediate = await radio.transmit(downlink(timestamp_us=None, payload=b"\xaa"))
        assert immediate.error is TxError.NONE
        assert gateway.downlinks[1].txpk.imme is True
        assert gateway.downlinks[1].txpk.tmst is None
        # A TX_ACK without JSON means NONE as well (PROTOCOL.TXT 5.5).
        gateway.tx_ack_json = False
        assert (await radio.transmit(downlink())).error is TxError.NONE
        counters = radio.counters
        assert (counters.tx_requested, counters.tx_scheduled, counters.tx_refused) == (3, 3, 0)

    run(scenario)


@pytest.mark.parametrize("error", [e for e in TxError if e is not TxError.NONE])
def test_tx_ack_errors_map_to_tx_error(error: TxError) -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        gateway.answer_next_with(error.name)
        refused = await radio.transmit(downlink())
        assert refused.error is error
        assert refused.token == gateway.downlinks[0].token
        accepted = await radio.transmit(downlink())
        assert accepted.error is TxError.NONE
        counters = radio.counters
        assert (counters.tx_requested, counters.tx_scheduled, counters.tx_refused) == (2, 1, 1)

    run(scenario)


def test_no_tx_ack_is_a_timeout() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        gateway.send_tx_ack = False
        with pytest.raises(RadioTimeout, match="no TX_ACK"):
            await radio.transmit(downlink())
        with pytest.raises(RadioTimeout):
            await radio.transmit(downlink(), timeout_s=0.05)
        assert len(gateway.downlinks) == 2  # sent all the same
        assert radio.pending_requests == 0
        counters = radio.counters
        assert (counters.tx_requested, counters.tx_timeouts, counters.tx_scheduled) == (2, 2, 0)
        # A late answer matches nothing and is dropped.
        gateway.send_tx_ack = True
        assert (await radio.transmit(downlink())).error is TxError.NONE

    run(scenario, backend={"tx_ack_timeout_s": 0.2})


def test_version_1_forwarder_gets_version_1_datagrams_and_no_tx_ack() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        await pushed(gateway, b"\x01")
        with pytest.raises(RadioTimeout):
            await radio.transmit(downlink())
        assert gateway.downlinks[0].version == 1
        assert radio.counters.tx_timeouts == 1

    run(scenario, backend={"tx_ack_timeout_s": 0.2}, forwarder={"version": 1})


def test_configured_eui_drops_other_gateways() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        gateway.gateway_eui = OTHER_EUI
        gateway.push(b"\x01")
        gateway.send_pull_data()
        gateway.gateway_eui = DEFAULT_EUI
        await pushed(gateway, b"\x02")
        (frame,) = await take(radio.frames(), 1)
        assert frame.payload == b"\x02"
        assert radio.foreign_datagrams == 2
        # Foreign datagrams are not acknowledged.
        assert len(gateway.push_ack_tokens) == 1
        assert radio.counters.rx_received == 1

    run(scenario, backend={"gateway_eui": DEFAULT_EUI})


def test_foreign_gateway_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        intruder = PushData(token=9, gateway_eui=OTHER_EUI, rxpk=(gateway.rxpk(b"\x09"),))
        for _ in range(5):
            gateway.send_raw(intruder.to_bytes())
        await pushed(gateway, b"\x03")
        assert radio.foreign_datagrams == 5
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warnings] == [
            f"dropping datagrams of gateway {OTHER_EUI.hex()} from 127.0.0.1:{gateway.up_port}:"
            f" this agent serves {DEFAULT_EUI.hex()}"
        ]

    with caplog.at_level(logging.DEBUG, logger="owlgate.edge.semtech_udp"):
        run(scenario)


def test_a_restarted_forwarder_on_new_ports_is_followed() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        old_port = gateway.down_port
        async with EmulatedPacketForwarder(HOST, radio.local_port, keepalive_s=5.0) as restarted:
            await restarted.wait_for("pull_ack_tokens", 1, WAIT_S)
            assert restarted.down_port != old_port
            assert radio.status.port.endswith(f"at 127.0.0.1:{restarted.down_port})")
            assert (await radio.transmit(downlink())).error is TxError.NONE
            assert len(restarted.downlinks) == 1
        assert gateway.downlinks == []

    run(scenario)


def test_first_gateway_heard_is_served() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        # The keep-alive on start came first: the emulator's EUI is the one served.
        assert radio.gateway_eui == DEFAULT_EUI
        intruder = PushData(token=9, gateway_eui=OTHER_EUI, rxpk=(gateway.rxpk(b"\x09"),))
        gateway.send_raw(intruder.to_bytes())
        await pushed(gateway, b"\x03")
        (frame,) = await take(radio.frames(), 1)
        assert frame.payload == b"\x03"
        assert radio.foreign_datagrams == 1
        assert radio.gateway_eui == DEFAULT_EUI

    run(scenario)


def test_connected_while_pull_data_keeps_coming() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        assert radio.status.connected is False
        with pytest.raises(RadioDisconnected, match="no packet forwarder connected"):
            await radio.transmit(downlink())
        with pytest.raises(RadioTimeout):
            await radio.wait_connected(0.05)
        # Uplinks are received without a PULL_DATA: only the downlink path needs one.
        await pushed(gateway, b"\x01")
        assert (await take(radio.frames(), 1))[0].payload == b"\x01"

        gateway.start_keepalive()
        status = await radio.wait_connected(WAIT_S)
        assert status.connected is True
        down_port = gateway.down_port
        assert status.port == (
            f"udp://127.0.0.1:{radio.local_port}"
            f" (forwarder {DEFAULT_EUI.hex()} at 127.0.0.1:{down_port})"
        )
        assert status.last_error is None

        gateway.stop_keepalive()
        status = await radio.wait_disconnected(WAIT_S)
        assert status.connected is False
        assert status.last_error == "no PULL_DATA for 0.5 s"
        with pytest.raises(RadioDisconnected):
            await radio.transmit(downlink())

        gateway.start_keepalive()
        await radio.wait_connected(WAIT_S)
        assert radio.counters.reconnects == 1
        assert (await radio.transmit(downlink())).error is TxError.NONE

    run(
        scenario,
        backend={"pull_timeout_s": 0.5},
        forwarder={"keepalive_s": 0.05, "keepalive_on_start": False},
        connect=False,
    )


def test_queue_is_bounded_when_the_consumer_is_behind() -> None:
    async def scenario(gateway: EmulatedPacketForwarder, radio: SemtechUdpBackend) -> None:
        await pushed(gateway, *(bytes([n]) for n in range(1, 6)))
        assert radio.counters.rx_dropped == 3
        frames = await take(radio.frames(), 2)
        assert [f.payload for f in frames] == [b"\x01", b"\x02"]
        await pushed(gateway, b"\x06")
        assert (await take(radio.frames(), 1))[0].payload == b"\x06"

    run(scenario, backend={"max_queued_frames": 2})


def test_close_ends_frames_and_refuses_transmit() -> None:
    async def main() -> None:
        radio = SemtechUdpBackend(HOST, 0)
        async with radio, EmulatedPacketForwarder(HOST, radio.local_port, keepalive_s=5.0):
            await radio.wait_connected(WAIT_S)
        assert [frame async for frame in radio.frames()] == []
        with pytest.raises(RadioDisconnected):
            await radio.transmit(downlink())
        with pytest.raises(RadioError, match="entered once"):
            await radio.__aenter__()

    asyncio.run(main())


def test_port_in_use_is_a_radio_error() -> None:
    async def main() -> None:
        async with SemtechUdpBackend(HOST, 0) as first:
            with pytest.raises(RadioError, match="cannot listen"):
                async with SemtechUdpBackend(HOST, first.local_port):
                    pass

    asyncio.run(main())
