"""Emulated LoRaWAN end devices: frames, counters, values, joins, radio metadata."""

from __future__ import annotations

import pytest

from owlgate.codecs.concentrator import CrcStatus
from owlgate.codecs.lorawan import (
    AesKey,
    DataFrame,
    JoinAccept,
    JoinRequest,
    MType,
    SessionKeys,
    decode_uplink,
    derive_session_keys,
)
from owlgate.codecs.payloads import PROFILES
from owlgate.codecs.payloads import decode_uplink as decode_payload
from owlgate.hil.devices import DeviceError, EmulatedDevice, Radio

NWK = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
APP = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
APP_KEY = bytes.fromhex("8d7f3b2a1c4e5f60718293a4b5c6d7e8")
EUI = bytes.fromhex("70b3d57ed0000001")


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_abp_frames_carry_the_values_with_real_counters(profile: str) -> None:
    device = EmulatedDevice.abp(
        profile, EUI, dev_addr=0x26011BDA, nwk_s_key=NWK, app_s_key=APP, seed=3
    )
    keys = SessionKeys(NWK, APP)
    last: int | None = None
    seen = []
    for i in range(200):
        phy, values = device.uplink(float(i))
        up = decode_uplink(phy, keys, last)
        assert (up.dev_addr, up.f_cnt, up.mtype) == (0x26011BDA, i, MType.UNCONFIRMED_DATA_UP)
        assert up.f_port == PROFILES[profile].fports[0]
        # Independent of the device's bookkeeping: what the payload decoder reads.
        assert decode_payload(profile, up.f_port, up.payload) == values
        last = up.f_cnt
        seen.append(values)
    # Values change over time but stay plausible.
    assert len({repr(v) for v in seen}) > 100
    for values in seen:
        assert 2500 <= values["battery_mv"] <= 3700  # type: ignore[operator]
        assert -20 <= values["temperature_c"] <= 45  # type: ignore[operator]


def test_same_seed_same_values_and_counter_rollover() -> None:
    one = EmulatedDevice.abp("parking-v1", EUI, dev_addr=1, nwk_s_key=NWK, app_s_key=APP, seed=9)
    two = EmulatedDevice.abp("parking-v1", EUI, dev_addr=1, nwk_s_key=NWK, app_s_key=APP, seed=9)
    assert [one.uplink(0.0) for _ in range(5)] == [two.uplink(0.0) for _ in range(5)]
    late = EmulatedDevice.abp(
        "parking-v1", EUI, dev_addr=1, nwk_s_key=NWK, app_s_key=APP, f_cnt=0xFFFF
    )
    first, _ = late.uplink(0.0)
    second, _ = late.uplink(1.0)
    assert DataFrame.from_bytes(first).fhdr.f_cnt == 0xFFFF
    assert DataFrame.from_bytes(second).fhdr.f_cnt == 0
    assert decode_uplink(second, SessionKeys(NWK, APP), 0xFFFF).f_cnt == 0x10000
    assert late.f_cnt == 0x10001


def test_confirmed_and_schedule() -> None:
    device = EmulatedDevice.abp(
        "waste-bin-v1",
        EUI,
        dev_addr=1,
        nwk_s_key=NWK,
        app_s_key=APP,
        confirmed=True,
        report_interval_s=600,
    )
    assert device.due(0.0)
    phy, _ = device.uplink(100.0)
    assert phy[0] == 0x80
    assert device.last_phy == phy
    assert not device.due(699.0)
    assert device.due(700.0)


def test_otaa_join_request_accept_and_session() -> None:
    device = EmulatedDevice.otaa(
        "environment-v1", EUI, join_eui=0x0102030405060708, app_key=APP_KEY
    )
    assert not device.joined
    with pytest.raises(DeviceError, match="join first"):
        device.uplink(0.0)
    with pytest.raises(DeviceError, match="no join request"):
        device.accept_join(b"\x20" + bytes(16))
    key = AesKey(APP_KEY)
    requests = [JoinRequest.from_bytes(device.join_request()) for _ in range(3)]
    for request in requests:
        request.verify_mic(key)
        assert (request.join_eui, request.dev_eui) == (0x0102030405060708, 0x70B3D57ED0000001)
    assert [r.dev_nonce for r in requests] == [0, 1, 2]  # fresh every time, never reused
    accept = JoinAccept.build(key, join_nonce=5, net_id=0x13, dev_addr=0x26AB0001)
    # A forged accept (wrong key) is refused and changes nothing.
    other = AesKey(bytes(16))
    forged = JoinAccept.build(other, join_nonce=5, net_id=0x13, dev_addr=9).encrypt(other)
    with pytest.raises(DeviceError, match="join accept refused"):
        device.accept_join(forged)
    assert not device.joined
    assert device.accept_join(accept.encrypt(key)) == 0x26AB0001
    assert (device.dev_addr, device.f_cnt) == (0x26AB0001, 0)
    keys = derive_session_keys(key, 5, 0x13, 2)  # the nonce of the last request
    phy, values = device.uplink(0.0)
    up = decode_uplink(phy, keys)
    assert (up.dev_addr, up.f_cnt) == (0x26AB0001, 0)
    assert up.f_port is not None
    assert decode_payload("environment-v1", up.f_port, up.payload) == values


def test_abp_device_does_not_join_and_bad_arguments() -> None:
    device = EmulatedDevice.abp("parking-v1", EUI, dev_addr=1, nwk_s_key=NWK, app_s_key=APP)
    with pytest.raises(DeviceError, match="ABP"):
        device.join_request()
    with pytest.raises(DeviceError, match="unknown device profile"):
        EmulatedDevice("toaster-v9", EUI)
    with pytest.raises(DeviceError, match="8 bytes"):
        EmulatedDevice("parking-v1", b"\x01")


def test_rx_frame_metadata() -> None:
    device = EmulatedDevice.abp(
        "parking-v1",
        EUI,
        dev_addr=1,
        nwk_s_key=NWK,
        app_s_key=APP,
        radio=Radio(rssi_dbm=-110, snr_db=-5.0, frequency_hz=867_500_000, sf=10),
    )
    phy, _ = device.uplink(0.0)
    frames = [device.rx_frame(phy, timestamp_us=2**32 + 5) for _ in range(50)]
    for rx in frames:
        assert rx.payload == phy
        assert (rx.frequency_hz, rx.sf, rx.bandwidth_hz) == (867_500_000, 10, 125_000)
        assert -113 <= rx.rssi_dbm <= -107
        assert -6.5 <= rx.snr_db <= -3.5
        assert rx.snr_db * 4 == int(rx.snr_db * 4)
        assert rx.timestamp_us == 5
        assert rx.crc_status is CrcStatus.OK
    assert len({rx.rssi_dbm for rx in frames}) > 1
    assert device.rx_frame(phy, timestamp_us=0, crc_ok=False).crc_status is CrcStatus.BAD
