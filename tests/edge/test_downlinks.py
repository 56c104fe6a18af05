"""Device downlinks on the gateway: signed by the fleet, held, sent in RX1 after the device's
next uplink with a persisted FCntDown, and everything else refused and counted.

The agent test runs the whole agent (emulated concentrator on a pty, the embedded broker, the
test playing the fleet); the device that hears the transmission is the emulated one, with its
own keys, so "decryptable" means decrypted by the device's code."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from owlgate.codecs.concentrator import CodingRate, CrcStatus, RxFrame, TxRequest
from owlgate.codecs.downlink import Downlink, encode_downlink
from owlgate.codecs.lorawan import DataFrame, MType, SessionKeys
from owlgate.codecs.payloads import encode_settings
from owlgate.codecs.signed import sign
from owlgate.edge.agent import EdgeAgent
from owlgate.edge.downlinks import STATE_FILE, EdgeDownlinks
from owlgate.hil.concentrator import EmulatedConcentrator
from owlgate.hil.devices import RECEIVE_DELAY1_US, EmulatedDevice
from tests.edge.test_agent import (
    GATEWAY,
    WAIT_S,
    Fleet,
    FleetSide,
    Responder,
    eventually,
    uplink_up,
    write_config,
)
from tests.mqtt_servers import BrokerServer

pytest_plugins = ["tests.brokers"]

NOW = 1_800_000_000
NWK = bytes(range(16))
APP = bytes(range(16, 32))
EUI = bytes.fromhex("70b3d57ed0000a01")


def _device() -> EmulatedDevice:
    return EmulatedDevice.abp(
        "parking-v1",
        EUI,
        dev_addr=0x26040001,
        nwk_s_key=bytes([7]) * 16,
        app_s_key=bytes([0x87]) * 16,
        seed=4,
    )


def _settings_downlink(
    downlink_id: int, *, seq: int, expires_at: int, gateway: bytes = GATEWAY, floor: int = 0
) -> Downlink:
    f_port, payload = encode_settings("parking-v1", {"report_interval_s": 900}, seq=seq)
    return Downlink(downlink_id, gateway, EUI, f_port, payload, expires_at, floor)


def test_a_signed_downlink_goes_out_in_rx1_after_the_next_uplink(
    tmp_path: Path, embedded_broker: BrokerServer
) -> None:
    async def scenario() -> None:
        fleet_keys = Fleet(tmp_path / "keys")
        device = _device()
        forger = Ed25519PrivateKey.generate()
        async with (
            EmulatedConcentrator(tmp_path / "dev", seed=8) as concentrator,
            FleetSide(embedded_broker) as fleet,
            Responder(embedded_broker, fleet_keys.key, [fleet_keys.seal(device)]),
        ):
            agent = EdgeAgent(write_config(tmp_path, embedded_broker, concentrator.path))
            run = asyncio.create_task(agent.run())
            try:
                await eventually(lambda: agent.ready.is_set(), "the agent ready")
                await eventually(lambda: uplink_up(agent), "the uplink online")
                counters = agent.downlinks.counters
                expires = int(time.time()) + 3600
                good = _settings_downlink(41, seq=3, expires_at=expires, floor=5)
                bad = [
                    sign(
                        encode_downlink(_settings_downlink(42, seq=4, expires_at=expires)), forger
                    ),
                    sign(
                        encode_downlink(_settings_downlink(43, seq=4, expires_at=expires - 7200)),
                        fleet_keys.key,
                    ),
                    sign(
                        encode_downlink(
                            _settings_downlink(44, seq=4, expires_at=expires, gateway=bytes(8))
                        ),
                        fleet_keys.key,
                    ),
                    b"\xa1\x01",
                ]
                for payload in bad:
                    await fleet.publish("down", payload)
                await fleet.publish("down", sign(encode_downlink(good), fleet_keys.key))
                # A repeat of the same message (as a broker may redeliver) is dropped.
                await fleet.publish("down", sign(encode_downlink(good), fleet_keys.key))
                await eventually(lambda: counters.rejected["repeat"] == 1, "the repeat dropped")
                assert counters.rejected["signature"] == 2  # forged, and not a COSE_Sign1
                assert counters.rejected["expired"] == 1
                assert counters.rejected["wrong_gateway"] == 1
                assert counters.received == 1
                assert list(agent.downlinks.pending) == [EUI]
                assert concentrator.tx_requests == []
                # Held until the device sends: its uplink opens RX1.
                phy, _ = device.uplink(0.0)
                frame = device.rx_frame(phy, timestamp_us=concentrator.counter_us())
                concentrator.inject(
                    phy,
                    rssi_dbm=frame.rssi_dbm,
                    snr_db=frame.snr_db,
                    timestamp_us=frame.timestamp_us,
                )
                device.listen_rx1(frame.timestamp_us)
                request = await concentrator.wait_for(TxRequest, timeout_s=WAIT_S)
                await eventually(lambda: counters.sent == 1, "the downlink sent")
            finally:
                agent.stop()
                await run
        assert request.timestamp_us == (frame.timestamp_us + RECEIVE_DELAY1_US) & 0xFFFFFFFF
        assert (request.frequency_hz, request.sf, request.invert_polarity) == (
            frame.frequency_hz,
            frame.sf,
            True,
        )
        sent = DataFrame.from_bytes(request.payload)
        assert sent.mtype is MType.UNCONFIRMED_DATA_DOWN
        assert sent.fhdr.f_cnt == 5  # the fleet's lowest FCntDown
        done = device.receive(request)
        assert done is not None
        assert (done.seq, done.result, done.applied) == (3, "applied", {"report_interval_s": 900})
        assert device.report_interval_s == 900
        assert agent.downlinks.last_f_cnt_down(EUI) == 5
        assert agent.downlinks.pending == {}
        # The next uplink acknowledges, the one after reports the new interval.
        _, ack = device.uplink(1.0)
        _, status = device.uplink(2.0)
        assert ack == {"message": "settings_ack", "settings_seq": 3, "result": "applied"}
        assert status["message"] == "status"
        assert status["report_interval_s"] == 900

    asyncio.run(scenario())


def _rx(timestamp_us: int = 5_000_000) -> RxFrame:
    return RxFrame(
        frequency_hz=868_300_000,
        sf=9,
        bandwidth_hz=125_000,
        coding_rate=CodingRate.CR_4_5,
        rssi_dbm=-90,
        snr_db=4.0,
        timestamp_us=timestamp_us,
        crc_status=CrcStatus.OK,
        payload=bytes(12),
    )


def _held(tmp_path: Path, key: Ed25519PrivateKey, downlink: Downlink) -> EdgeDownlinks:
    downlinks = EdgeDownlinks(GATEWAY, tmp_path, clock=lambda: NOW)
    assert downlinks.receive(sign(encode_downlink(downlink), key), key.public_key()) == downlink
    return downlinks


def _sent_f_cnt(request: TxRequest | None, keys: SessionKeys) -> int:
    assert request is not None
    frame = DataFrame.from_bytes(request.payload)
    frame.verify_mic(keys, frame.fhdr.f_cnt)
    return frame.fhdr.f_cnt


def test_the_downlink_counter_is_persisted_and_only_increases(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    session = (0x26040001, NWK, APP)
    keys = SessionKeys(NWK, APP)
    first = _held(tmp_path, key, _settings_downlink(1, seq=0, expires_at=NOW + 60))
    assert first.on_uplink(bytes(8), _rx(), session) is None  # another device: nothing held
    request = first.on_uplink(EUI, _rx(), session)
    assert _sent_f_cnt(request, keys) == 0
    assert request is not None
    assert request.timestamp_us == 6_000_000
    assert (request.frequency_hz, request.sf) == (868_300_000, 9)
    plain = DataFrame.from_bytes(request.payload).decrypt(keys, 0)
    assert plain == encode_settings("parking-v1", {"report_interval_s": 900}, seq=0)[1]
    # A restart (a new object over the same state directory) goes on from the stored counter.
    again = _held(tmp_path, key, _settings_downlink(2, seq=1, expires_at=NOW + 60))
    assert _sent_f_cnt(again.on_uplink(EUI, _rx(), session), keys) == 1
    # The fleet's floor lifts it; it never goes back below what was sent.
    lifted = _held(tmp_path, key, _settings_downlink(3, seq=2, expires_at=NOW + 60, floor=9))
    assert _sent_f_cnt(lifted.on_uplink(EUI, _rx(), session), keys) == 9
    low = _held(tmp_path, key, _settings_downlink(4, seq=3, expires_at=NOW + 60, floor=2))
    assert _sent_f_cnt(low.on_uplink(EUI, _rx(), session), keys) == 10
    # A new session (the device joined again) counts from 0, as the device does.
    rejoined = (0x26040002, NWK, APP)
    fresh = _held(tmp_path, key, _settings_downlink(5, seq=4, expires_at=NOW + 60))
    assert _sent_f_cnt(fresh.on_uplink(EUI, _rx(), rejoined), SessionKeys(NWK, APP)) == 0
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o600


def test_held_downlinks_are_bounded_replaced_and_expire(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    clock = [float(NOW)]
    downlinks = EdgeDownlinks(GATEWAY, tmp_path, clock=lambda: clock[0], max_pending=2)

    def push(downlink_id: int, dev_eui: bytes, expires_at: int) -> None:
        message = Downlink(downlink_id, GATEWAY, dev_eui, 21, b"\x18\x00\x70", expires_at)
        assert downlinks.receive(sign(encode_downlink(message), key), key.public_key())

    push(1, EUI, NOW + 100)
    push(2, EUI, NOW + 200)  # the newer replaces the older for the same device
    assert downlinks.pending[EUI].id == 2
    assert downlinks.counters.replaced == 1
    push(3, bytes(8), NOW + 50)
    push(4, bytes([1]) * 8, NOW + 300)  # a third device: the one expiring first makes room
    assert set(downlinks.pending) == {EUI, bytes([1]) * 8}
    assert downlinks.counters.evicted == 1
    # Expired while held: not sent after the uplink, counted.
    clock[0] = NOW + 250
    assert downlinks.on_uplink(EUI, _rx(), (1, NWK, APP)) is None
    assert downlinks.counters.rejected["expired"] == 1
    # No session for the device: dropped, counted.
    assert downlinks.on_uplink(bytes([1]) * 8, _rx(), None) is None
    assert downlinks.counters.rejected["no_session"] == 1
    assert downlinks.pending == {}
    assert downlinks.counters.queued == 0
