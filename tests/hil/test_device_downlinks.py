"""Emulated devices hear downlinks as class A devices do: only in RX1 after their uplink,
only frames for their DevAddr with a valid MIC and a new FCntDown; they apply the settings
their profile has and acknowledge in their next uplink (FPort 20)."""

from __future__ import annotations

import pytest

from owlgate.codecs.concentrator import TxRequest
from owlgate.codecs.lorawan import DataFrame, MType, SessionKeys
from owlgate.codecs.node import payloads as node
from owlgate.codecs.payloads import decode_uplink, encode_settings
from owlgate.hil.devices import RECEIVE_DELAY1_US, EmulatedDevice
from owlgate.hil.gateway_emulator import GatewayRun

NWK = bytes([3]) * 16
APP = bytes([0x83]) * 16
ADDR = 0x26050001
UPLINK_US = 123_456_789


def _device(profile: str = "parking-v1") -> EmulatedDevice:
    return EmulatedDevice.abp(
        profile,
        bytes.fromhex("70b3d57ed0000b01"),
        dev_addr=ADDR,
        nwk_s_key=NWK,
        app_s_key=APP,
        seed=9,
        report_interval_s=300,
    )


def _tx(
    payload: bytes,
    f_cnt: int,
    *,
    f_port: int = 21,
    at_us: int = UPLINK_US + RECEIVE_DELAY1_US,
    dev_addr: int = ADDR,
    nwk: bytes = NWK,
) -> TxRequest:
    frame = DataFrame.build(
        SessionKeys(nwk, APP),
        mtype=MType.UNCONFIRMED_DATA_DOWN,
        dev_addr=dev_addr,
        f_cnt=f_cnt,
        payload=payload,
        f_port=f_port,
    )
    return TxRequest(
        timestamp_us=at_us,
        frequency_hz=868_100_000,
        sf=7,
        power_dbm=14,
        payload=frame.to_bytes(),
        token=1,
    )


def _sent(device: EmulatedDevice) -> None:
    device.uplink(0.0)
    device.listen_rx1(UPLINK_US)


def _decoded(device: EmulatedDevice, now: float) -> dict[str, object]:
    phy, values = device.uplink(now)
    frame = DataFrame.from_bytes(phy)
    assert frame.f_port is not None
    plain = frame.decrypt(SessionKeys(NWK, APP), device.f_cnt - 1)
    assert decode_uplink(device.profile_id, frame.f_port, plain) == values
    assert frame.f_port == (node.PORT_DEVICE if "message" in values else node.PORT_PARKING)
    return values


def test_settings_are_applied_and_acknowledged_then_the_status_shows_them() -> None:
    device = _device()
    _sent(device)
    _, payload = encode_settings(
        "parking-v1", {"report_interval_s": 900, "occupancy_sensitivity": 7}, seq=12
    )
    done = device.receive(_tx(payload, 0))
    assert done is not None
    assert (done.seq, done.result, done.f_cnt_down) == (12, "applied", 0)
    assert done.applied == {"report_interval_s": 900, "occupancy_sensitivity": 7}
    assert device.report_interval_s == 900
    assert device.settings == {"report_interval_s": 900, "occupancy_sensitivity": 7}
    assert _decoded(device, 10.0) == {
        "message": "settings_ack",
        "settings_seq": 12,
        "result": "applied",
    }
    status = _decoded(device, 20.0)
    assert status["message"] == "status"
    assert status["report_interval_s"] == 900
    assert status["uptime_s"] == 20
    assert "message" not in _decoded(device, 30.0)  # measurements again
    run = GatewayRun("0016c001ff10a0e1")
    run.took(device, done)
    report = run.report()
    assert report["settings"] == {device.dev_eui.hex(): done.applied}
    assert report["downlinks"][0]["seq"] == 12


def test_a_setting_the_profile_lacks_is_refused_by_name() -> None:
    device = _device()
    _sent(device)
    # A bin setting sent to a parking sensor (encoded without the profile check).
    payload = node.encode_settings(5, {"report_interval_s": 600, "fill_alarm_pct": 80})
    done = device.receive(_tx(payload, 3))
    assert done is not None
    assert (done.result, done.setting, done.applied) == ("unsupported", "fill_alarm_pct", {})
    assert device.report_interval_s == 300  # nothing applied
    assert _decoded(device, 5.0) == {
        "message": "settings_ack",
        "settings_seq": 5,
        "result": "unsupported",
        "setting": "fill_alarm_pct",
    }


def test_a_malformed_settings_payload_is_acknowledged_invalid() -> None:
    device = _device()
    _sent(device)
    done = device.receive(_tx(bytes([0x18, 9, 0xEE]), 0))
    assert done is not None
    assert (done.seq, done.result) == (9, "invalid")
    assert _decoded(device, 5.0)["result"] == "invalid"


def test_commands_queue_the_messages_they_ask_for() -> None:
    device = _device()
    _sent(device)
    _, payload = encode_settings("parking-v1", {"reboot": True}, seq=1)
    assert device.receive(_tx(payload, 0)) is not None
    assert _decoded(device, 1.0)["message"] == "settings_ack"
    boot = _decoded(device, 2.0)
    assert (boot["message"], boot["reset_reason"]) == ("boot", "command")


@pytest.mark.parametrize(
    "change",
    [
        {"at_us": UPLINK_US + RECEIVE_DELAY1_US + 1},  # not in the RX1 window
        {"at_us": UPLINK_US + 2 * RECEIVE_DELAY1_US},  # RX2 time: not listened to here
        {"dev_addr": ADDR + 1},  # another device's frame
        {"nwk": bytes(16)},  # a MIC that does not verify
    ],
)
def test_what_is_not_for_the_device_is_ignored(change: dict[str, object]) -> None:
    device = _device()
    _sent(device)
    _, payload = encode_settings("parking-v1", {"report_interval_s": 900}, seq=1)
    assert device.receive(_tx(payload, 0, **change)) is None  # type: ignore[arg-type]
    assert device.downlinks == []
    assert device.report_interval_s == 300


def test_one_downlink_per_window_and_the_counter_must_advance() -> None:
    device = _device()
    _sent(device)
    _, payload = encode_settings("parking-v1", {"report_interval_s": 900}, seq=1)
    assert device.receive(_tx(payload, 4)) is not None
    # The window is used; the same frame again, even in a new window, is a replay.
    assert device.receive(_tx(payload, 4)) is None
    device.listen_rx1(UPLINK_US)
    assert device.receive(_tx(payload, 4)) is None
    assert device.receive(_tx(payload, 5)) is not None
    assert device.f_cnt_down == 5
    # No window open before the device sent anything.
    assert _device().receive(_tx(payload, 0)) is None
