"""The LoRaWAN processor against emulated devices: decode, replays, restarts, OTAA, RX1."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from owlgate.codecs.concentrator import CodingRate, CrcStatus, RxFrame, TxRequest
from owlgate.codecs.lorawan import (
    AesKey,
    DataFrame,
    JoinAccept,
    MType,
    SessionKeys,
    derive_session_keys,
)
from owlgate.codecs.node.telemetry import Reading
from owlgate.edge.lorawan_proc import (
    JoinRequestForward,
    LorawanProcessor,
    ProcessResult,
    Rejected,
    RejectReason,
    SessionError,
    join_accept_tx,
    rx1_tx,
)
from owlgate.edge.state import StateDb, StoredSession
from owlgate.hil.devices import EmulatedDevice, Radio

NWK = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
APP = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
ADDR = 0x26011BDA


def _abp(eui_last: int, profile: str = "parking-v1", **kwargs: object) -> EmulatedDevice:
    nwk = kwargs.pop("nwk", NWK)
    app = kwargs.pop("app", APP)
    addr = kwargs.pop("dev_addr", ADDR)
    assert isinstance(nwk, bytes)
    assert isinstance(app, bytes)
    assert isinstance(addr, int)
    return EmulatedDevice.abp(
        profile,
        bytes.fromhex("70b3d57ed00000") + bytes((eui_last,)),
        dev_addr=addr,
        nwk_s_key=nwk,
        app_s_key=app,
        seed=eui_last,
    )


def _install(proc: LorawanProcessor, device: EmulatedDevice, nwk: bytes = NWK) -> None:
    assert device.dev_addr is not None
    assert device.keys is not None
    app = device.keys.app_s_key
    assert app is not None
    proc.add_session(
        dev_eui=device.dev_eui,
        dev_addr=device.dev_addr,
        profile_id=device.profile_id,
        nwk_s_key=nwk,
        app_s_key=app,
    )


def _send(
    proc: LorawanProcessor, device: EmulatedDevice, phy: bytes, now: float = 1e9
) -> ProcessResult:
    return proc.process(device.rx_frame(phy, timestamp_us=1000), now)


def _reason(result: ProcessResult) -> RejectReason:
    assert isinstance(result, Rejected), result
    return result.reason


@pytest.mark.parametrize("profile", ["parking-v1", "waste-bin-v1", "environment-v1"])
def test_abp_uplinks_decode_to_what_the_device_encoded(profile: str) -> None:
    proc = LorawanProcessor()
    device = _abp(1, profile)
    _install(proc, device)
    for i in range(20):
        phy, values = device.uplink(now=i * 300.0)
        rx = device.rx_frame(phy, timestamp_us=i * 1000)
        reading = proc.process(rx, now=1_700_000_000.7 + i)
        assert isinstance(reading, Reading)
        assert reading.values == values
        assert reading.dev_eui == device.dev_eui
        assert reading.fcnt == i
        assert reading.time_s == 1_700_000_000 + i
        assert (reading.rssi_dbm, reading.snr_db) == (rx.rssi_dbm, rx.snr_db)
        assert (reading.sf, reading.freq_hz, reading.gw_time_us) == (7, 868_100_000, i * 1000)
    assert proc.counters.accepted == 20
    assert proc.counters.received == 20


def test_retransmission_and_replay(caplog: pytest.LogCaptureFixture) -> None:
    proc = LorawanProcessor()
    device = _abp(1)
    _install(proc, device)
    first, _ = device.uplink(0.0)
    second, _ = device.uplink(1.0)
    assert isinstance(_send(proc, device, first), Reading)
    assert isinstance(_send(proc, device, second), Reading)
    with caplog.at_level(logging.INFO, logger="owlgate.edge.lorawan_proc"):
        again = _send(proc, device, second)
        replay = _send(proc, device, first)
    assert isinstance(again, Rejected)
    assert (again.reason, again.dev_eui, again.f_cnt) == (
        RejectReason.RETRANSMISSION,
        device.dev_eui,
        1,
    )
    assert isinstance(replay, Rejected)
    assert (replay.reason, replay.f_cnt) == (RejectReason.REPLAY, 0)
    assert proc.counters.rejected[RejectReason.RETRANSMISSION] == 1
    assert proc.counters.rejected[RejectReason.REPLAY] == 1
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]
    assert "replay" in caplog.records[1].getMessage()
    # Keys never reach the log.
    assert NWK.hex() not in caplog.text
    assert APP.hex() not in caplog.text


def test_wrong_keys_unknown_addr_crc_and_garbage() -> None:
    proc = LorawanProcessor()
    good = _abp(1)
    _install(proc, good)
    forger = _abp(2, nwk=bytes(16))
    phy, _ = forger.uplink(0.0)
    result = _send(proc, forger, phy)
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.MIC_FAILED
    stranger = _abp(3, dev_addr=0x01020304)
    assert _reason(_send(proc, stranger, stranger.uplink(0.0)[0])) is RejectReason.UNKNOWN_DEV_ADDR
    phy, _ = good.uplink(0.0)
    bad_crc = good.rx_frame(phy, timestamp_us=0, crc_ok=False)
    assert _reason(proc.process(bad_crc, 0.0)) is RejectReason.CRC_BAD
    # The CRC-bad copy did not consume the counter: the good copy is still new.
    assert isinstance(_send(proc, good, phy), Reading)
    assert _reason(_send(proc, good, b"\x40\x01")) is RejectReason.MALFORMED
    assert _reason(_send(proc, good, b"\x60" + phy[1:])) is RejectReason.NOT_UPLINK
    counts = proc.counters.as_dict()
    assert counts["rejected_mic_failed"] == 1
    assert counts["rejected_unknown_dev_addr"] == 1
    assert counts["rejected_crc_bad"] == 1
    assert counts["rejected_malformed"] == 1
    assert counts["rejected_not_uplink"] == 1
    assert counts["accepted"] == 1
    assert counts["received"] == 6


@given(st.binary(min_size=1, max_size=255))
def test_arbitrary_frames_never_raise(phy: bytes) -> None:
    proc = LorawanProcessor()
    proc.add_session(
        dev_eui=bytes(8), dev_addr=ADDR, profile_id="parking-v1", nwk_s_key=NWK, app_s_key=APP
    )
    frame = RxFrame(
        frequency_hz=868_100_000,
        sf=7,
        bandwidth_hz=125_000,
        coding_rate=CodingRate.CR_4_5,
        rssi_dbm=-80,
        snr_db=5.0,
        timestamp_us=0,
        crc_status=CrcStatus.OK,
        payload=phy,
    )
    result = proc.process(frame, 0.0)
    assert isinstance(result, Reading | JoinRequestForward | Rejected)


_VALID = _abp(9).uplink(0.0)[0]


@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(1, 255)), max_size=4))
def test_corrupted_frames_never_raise_nor_decode(flips: list[tuple[int, int]]) -> None:
    proc = LorawanProcessor()
    proc.add_session(
        dev_eui=bytes(8), dev_addr=ADDR, profile_id="parking-v1", nwk_s_key=NWK, app_s_key=APP
    )
    phy = bytearray(_VALID)
    for at, mask in flips:
        phy[at] ^= mask
    result = proc.process(_abp(9).rx_frame(bytes(phy), timestamp_us=0), 0.0)
    if bytes(phy) == _VALID:
        assert isinstance(result, Reading)
    else:
        # A changed frame cannot pass the MIC (4 bytes: a forgery chance of 2**-32).
        assert isinstance(result, Rejected)


def test_frame_without_application_payload() -> None:
    proc = LorawanProcessor()
    device = _abp(1)
    _install(proc, device)
    mac_only = DataFrame.build(
        SessionKeys(NWK, APP), mtype=MType.UNCONFIRMED_DATA_UP, dev_addr=ADDR, f_cnt=4
    ).to_bytes()
    result = _send(proc, device, mac_only)
    assert isinstance(result, Rejected)
    assert (result.reason, result.f_cnt) == (RejectReason.NO_PAYLOAD, 4)
    # Authentic all the same: the counter moved on.
    assert proc.last_f_cnt(device.dev_eui) == 4


def test_undecodable_payload_is_counted() -> None:
    proc = LorawanProcessor()
    device = _abp(1, "parking-v1")
    # The gateway believes the device is a waste bin: the payload does not fit that profile.
    proc.add_session(
        dev_eui=device.dev_eui,
        dev_addr=ADDR,
        profile_id="waste-bin-v1",
        nwk_s_key=NWK,
        app_s_key=APP,
    )
    result = _send(proc, device, device.uplink(0.0)[0])
    assert isinstance(result, Rejected)
    assert (result.reason, result.dev_eui, result.f_cnt) == (
        RejectReason.UNDECODABLE,
        device.dev_eui,
        0,
    )


def test_stored_session_of_an_unknown_profile_loads_and_refuses_its_uplinks(
    tmp_path: Path,
) -> None:
    # The payload decoder is looked up once per session; a session stored by a build with a
    # profile this one lacks still loads, and its uplinks are refused as undecodable.
    device = _abp(1)
    with StateDb.in_dir(tmp_path) as state:
        state.save_session(
            StoredSession(device.dev_eui, ADDR, "toaster-v9", NWK, APP, None, "abp"), 0.0
        )
        proc = LorawanProcessor(state)
        assert proc.load_sessions() == 1
        result = _send(proc, device, device.uplink(0.0)[0])
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.UNDECODABLE
    assert "unknown device profile 'toaster-v9'" in result.detail


def test_two_devices_sharing_a_dev_addr() -> None:
    proc = LorawanProcessor()
    one = _abp(1, "parking-v1")
    two = _abp(2, "environment-v1", nwk=bytes(range(100, 116)), app=bytes(range(50, 66)))
    _install(proc, one)
    _install(proc, two, nwk=bytes(range(100, 116)))
    for i in range(5):
        for device in (one, two) if i % 2 else (two, one):
            phy, values = device.uplink(float(i))
            reading = _send(proc, device, phy)
            assert isinstance(reading, Reading)
            assert (reading.dev_eui, reading.values, reading.fcnt) == (device.dev_eui, values, i)
    assert proc.counters.rejected[RejectReason.MIC_FAILED] == 0


def test_counters_survive_restart_only_for_stored_batches(tmp_path: Path) -> None:
    device = _abp(1)
    with StateDb.in_dir(tmp_path) as state:
        proc = LorawanProcessor(state)
        _install(proc, device)
        frames = [device.uplink(float(i))[0] for i in range(4)]
        readings = [_send(proc, device, phy) for phy in frames]
        assert all(isinstance(r, Reading) for r in readings)
        # Frames 0 and 1 went out in a batch; 2 and 3 were held when the power failed.
        state.put("telemetry", b"batch", 1.0, f_cnts={device.dev_eui: 1}, batch_seq=0)
    with StateDb.in_dir(tmp_path) as state:
        proc = LorawanProcessor(state)
        assert proc.load_sessions() == 1
        assert proc.last_f_cnt(device.dev_eui) == 1
        assert _reason(_send(proc, device, frames[0])) is RejectReason.REPLAY
        assert _reason(_send(proc, device, frames[1])) is RejectReason.RETRANSMISSION
        # A frame whose reading never reached the outbox is accepted again: nothing is lost.
        again = _send(proc, device, frames[2])
        assert isinstance(again, Reading)
        assert again.fcnt == 2


def test_otaa_join_then_uplinks(tmp_path: Path) -> None:
    app_key = bytes.fromhex("8d7f3b2a1c4e5f60718293a4b5c6d7e8")
    device = EmulatedDevice.otaa(
        "waste-bin-v1",
        bytes.fromhex("70b3d57ed0000042"),
        join_eui=0x70B3D57ED0001234,
        app_key=app_key,
        radio=Radio(frequency_hz=868_300_000, sf=9),
    )
    with StateDb.in_dir(tmp_path) as state:
        proc = LorawanProcessor(state)
        join_phy = device.join_request()
        forward = proc.process(device.rx_frame(join_phy, timestamp_us=0xFFFF_0000), 0.0)
        assert isinstance(forward, JoinRequestForward)
        assert forward.phy_payload == join_phy
        assert (forward.dev_eui, forward.join_eui, forward.dev_nonce) == (
            device.dev_eui_int,
            0x70B3D57ED0001234,
            0,
        )
        assert (forward.frequency_hz, forward.sf, forward.timestamp_us) == (
            868_300_000,
            9,
            0xFFFF_0000,
        )
        assert proc.counters.join_requests == 1

        # What the fleet's join server does with the forwarded request.
        key = AesKey(app_key)
        accept = JoinAccept.build(key, join_nonce=0x000101, net_id=0x000013, dev_addr=0x26AB0001)
        keys = derive_session_keys(key, 0x000101, 0x000013, forward.dev_nonce)
        tx = join_accept_tx(forward, accept.encrypt(key), token=7)
        assert isinstance(tx, TxRequest)
        assert tx.timestamp_us == (0xFFFF_0000 + 5_000_000) % 2**32
        assert device.accept_join(tx.payload) == 0x26AB0001
        assert keys.nwk_s_key is not None
        assert keys.app_s_key is not None
        proc.add_session(
            dev_eui=device.dev_eui,
            dev_addr=0x26AB0001,
            profile_id="waste-bin-v1",
            nwk_s_key=keys.nwk_s_key,
            app_s_key=keys.app_s_key,
            activation="otaa",
        )
        for i in range(3):
            phy, values = device.uplink(float(i))
            reading = _send(proc, device, phy)
            assert isinstance(reading, Reading)
            assert (reading.values, reading.fcnt) == (values, i)

        # A rejoin: new DevNonce, new keys, the counter starts again from 0.
        forward = proc.process(device.rx_frame(device.join_request(), timestamp_us=5), 0.0)
        assert isinstance(forward, JoinRequestForward)
        assert forward.dev_nonce == 1
        accept = JoinAccept.build(key, join_nonce=0x000102, net_id=0x000013, dev_addr=0x26AB0002)
        keys = derive_session_keys(key, 0x000102, 0x000013, 1)
        device.accept_join(accept.encrypt(key))
        assert keys.nwk_s_key is not None
        assert keys.app_s_key is not None
        proc.add_session(
            dev_eui=device.dev_eui,
            dev_addr=0x26AB0002,
            profile_id="waste-bin-v1",
            nwk_s_key=keys.nwk_s_key,
            app_s_key=keys.app_s_key,
            activation="otaa",
        )
        phy, values = device.uplink(10.0)
        reading = _send(proc, device, phy)
        assert isinstance(reading, Reading)
        assert (reading.values, reading.fcnt) == (values, 0)
        assert proc.session_count == 1
        assert [(s.dev_addr, s.activation) for s in state.sessions()] == [(0x26AB0002, "otaa")]


@pytest.mark.parametrize(
    ("rx_us", "delay_s", "expected_us"),
    [
        (1_000, 5, 5_001_000),
        (0xFFFF_FFFF, 5, 4_999_999),  # wraps: 2**32 - 1 + 5e6 - 2**32
        (0xFFB4_C4FF, 5, 69_695),
        (4_294_000_000, 1, 32_704),
    ],
)
def test_rx1_timing_across_the_wrap(rx_us: int, delay_s: int, expected_us: int) -> None:
    tx = rx1_tx(
        rx_timestamp_us=rx_us,
        frequency_hz=868_500_000,
        sf=12,
        bandwidth_hz=125_000,
        payload=b"\x20" + bytes(16),
        token=1,
        delay_s=delay_s,
    )
    assert tx.timestamp_us == expected_us
    assert (tx.frequency_hz, tx.sf, tx.bandwidth_hz) == (868_500_000, 12, 125_000)
    assert (tx.power_dbm, tx.invert_polarity, tx.crc) == (14, True, False)


def _rx1(sf: int, bandwidth_hz: int, rx1_dr_offset: int = 0) -> TxRequest:
    return rx1_tx(
        rx_timestamp_us=0,
        frequency_hz=868_100_000,
        sf=sf,
        bandwidth_hz=bandwidth_hz,
        payload=b"x",
        token=1,
        rx1_dr_offset=rx1_dr_offset,
    )


def test_rx1_data_rate_offset_and_bad_rates() -> None:
    # EU868 RX1DROffset: DR5 (SF7) - 2 = DR3 (SF9); DR1 (SF11) - 5 stops at DR0 (SF12).
    assert _rx1(7, 125_000, 2).sf == 9
    assert _rx1(11, 125_000, 5).sf == 12
    assert (_rx1(7, 250_000, 1).sf, _rx1(7, 250_000, 1).bandwidth_hz) == (7, 125_000)
    with pytest.raises(SessionError, match="not an EU868 data rate"):
        _rx1(7, 500_000)
    with pytest.raises(SessionError, match="RX1DROffset"):
        _rx1(7, 125_000, 6)


def test_add_session_checks() -> None:
    proc = LorawanProcessor()
    with pytest.raises(SessionError, match="unknown device profile"):
        proc.add_session(
            dev_eui=bytes(8), dev_addr=1, profile_id="toaster-v9", nwk_s_key=NWK, app_s_key=APP
        )
    with pytest.raises(SessionError, match="NwkSKey"):
        proc.add_session(
            dev_eui=bytes(8), dev_addr=1, profile_id="parking-v1", nwk_s_key=NWK[:8], app_s_key=APP
        )
    with pytest.raises(SessionError, match="max_gap"):
        LorawanProcessor(max_gap=1)
    assert proc.remove_session(bytes(8)) is False
