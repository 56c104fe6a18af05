"""The district simulation: schedules by traffic pattern, the radio world's verdicts, duty cycle,
joins through the real join server, confirmed retransmissions, settings downlinks, determinism."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from owlgate.codecs.concentrator import TxRequest
from owlgate.codecs.lorawan import DataFrame, FCtrl, MType, SessionKeys, decode_uplink
from owlgate.codecs.payloads import encode_settings
from owlgate.edge.lorawan_proc import rx1_tx
from owlgate.fleet.joinserver import JoinServer
from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault
from owlgate.hil.devices import EmulatedDevice
from owlgate.hil.district import (
    EU868_UPLINK_CHANNELS_HZ,
    MAX_TRANSMISSIONS,
    SF_MARGIN_DB,
    DistrictError,
    DistrictSim,
    Uplink,
)
from owlgate.hil.radio_world import (
    DUTY_CYCLE_FRACTION,
    DUTY_CYCLE_WINDOW_S,
    airtime_s,
    sensitivity_dbm,
)
from owlgate.hil.scenario import Expanded, Scenario, load_scenario

NWK = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
APP = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
APP_KEY = bytes.fromhex("8d7f3b2a1c4e5f60718293a4b5c6d7e8")
JOIN_EUI = 0x70B3D57ED00000FF
ADDR0 = 0x26010000
#: A concentrator counter value close to the 32-bit wrap, so that RX1 wraps.
NEAR_WRAP_US = (1 << 32) - 400_000


def scenario(tmp_path: Path, body: str, *, duration: str = "1d", start: str = "00:00") -> Scenario:
    path = tmp_path / "district.toml"
    path.write_text(
        f'[district]\nname = "test"\nsize = [2000, 2000]\nseed = 7\nduration = "{duration}"\n'
        f'start = "{start}"\n\n{body}',
        encoding="utf-8",
    )
    return load_scenario(path)


ONE_GATEWAY = '[[gateways]]\nid = "gw-1"\nposition = [1000, 1000]\n\n'


def devices(
    expanded: Expanded, *, confirmed: bool = False, otaa: bool = False
) -> dict[str, EmulatedDevice]:
    """One device per sensor: ABP with a DevAddr per sensor, or OTAA not yet joined."""
    made: dict[str, EmulatedDevice] = {}
    for n, placed in enumerate(expanded.sensors):
        eui = (0x70B3D57ED0000000 + n).to_bytes(8, "big")
        interval = placed.report_interval_s
        if otaa:
            device = EmulatedDevice.otaa(
                placed.profile,
                eui,
                join_eui=JOIN_EUI,
                app_key=APP_KEY,
                seed=n,
                report_interval_s=interval,
                confirmed=confirmed,
            )
        else:
            device = EmulatedDevice.abp(
                placed.profile,
                eui,
                dev_addr=ADDR0 + n,
                nwk_s_key=NWK,
                app_s_key=APP,
                seed=n,
                report_interval_s=interval,
                confirmed=confirmed,
            )
        made[placed.device.device_id] = device
    return made


def sim_of(sc: Scenario, **kwargs: bool) -> DistrictSim:
    expanded = sc.expand()
    return DistrictSim(sc, devices(expanded, **kwargs), expanded=expanded)


def run(sim: DistrictSim, until_s: float, window_s: float = 60.0) -> Iterator[Uplink]:
    now = sim.now_s
    while now < until_s:
        now = min(now + window_s, until_s)
        yield from sim.step(now)


def by_sensor(uplinks: list[Uplink]) -> dict[str, list[Uplink]]:
    grouped: dict[str, list[Uplink]] = {}
    for uplink in uplinks:
        grouped.setdefault(uplink.sensor_id, []).append(uplink)
    return grouped


# --- schedules ----------------------------------------------------------------------------------


def test_environment_sensors_report_at_their_interval_from_random_phases(tmp_path: Path) -> None:
    sc = scenario(
        tmp_path,
        ONE_GATEWAY + '[[sensors]]\nprofile = "environment-v1"\ncount = 20\nplacement = "area"\n'
        'area = [800, 800, 1200, 1200]\nreport_interval = "10m"\n\n'
        '[[traffic]]\npattern = "environment"\n',
        duration="6h",
    )
    sim = sim_of(sc)
    uplinks = list(run(sim, 6 * 3600))
    assert [u.sent_s for u in uplinks] == sorted(u.sent_s for u in uplinks)
    grouped = by_sensor(uplinks)
    assert len(grouped) == 20
    for sent in grouped.values():
        gaps = [b.sent_s - a.sent_s for a, b in itertools.pairwise(sent)]
        assert len(sent) in (35, 36, 37)
        assert all(594.0 <= gap <= 606.0 for gap in gaps), gaps
        assert [u.fcnt for u in sent] == list(range(len(sent)))
        assert all(u.kind == "data" and u.attempt == 1 and not u.confirmed for u in sent)
    phases = sorted(sent[0].sent_s for sent in grouped.values())
    # Spread over the first interval.
    assert phases[0] < 200
    assert phases[-1] > 400
    assert {u.frequency_hz for u in uplinks} == set(EU868_UPLINK_CHANNELS_HZ)
    # The values are the payload's: decoded with the session, the frame carries them.
    first = uplinks[0]
    assert first.fcnt is not None
    decoded = decode_uplink(first.phy, SessionKeys(NWK, APP), None)
    assert decoded.f_cnt == first.fcnt
    assert set(first.values) == {"temperature_c", "humidity_pct", "co2_ppm", "battery_mv"}
    truth = sim.truth()
    assert truth.data_sent == len(uplinks) == sim.counters["data_frames"]
    assert truth.sensors[first.sensor_id].fcnts == [u.fcnt for u in grouped[first.sensor_id]]


def test_parking_bays_are_taken_more_at_noon_than_at_night(tmp_path: Path) -> None:
    occupancy = [0.1] * 7 + [0.9] * 13 + [0.1] * 4
    sc = scenario(
        tmp_path,
        ONE_GATEWAY + '[[sensors]]\nprofile = "parking-v1"\ncount = 120\nplacement = "line"\n'
        'from = [700, 1000]\nto = [1300, 1000]\nreport_interval = "30m"\n\n'
        f'[[traffic]]\npattern = "parking-day"\noccupancy = {occupancy}\n',
        duration="13h",
    )
    sim = sim_of(sc)
    state: dict[str, bool] = {}
    at_3: list[bool] = []
    gaps_ok = True
    last_sent: dict[str, float] = {}
    shorter = 0
    for uplink in run(sim, 3 * 3600):
        state[uplink.sensor_id] = bool(uplink.values["occupied"])
        last_sent[uplink.sensor_id] = uplink.sent_s
    at_3 = list(state.values())
    for uplink in run(sim, 12 * 3600):
        previous = last_sent.get(uplink.sensor_id)
        if previous is not None:
            gap = uplink.sent_s - previous
            gaps_ok &= gap <= 1800 * 1.01 + 1
            shorter += gap < 1700
        state[uplink.sensor_id] = bool(uplink.values["occupied"])
        last_sent[uplink.sensor_id] = uplink.sent_s
    at_noon = list(state.values())
    assert len(at_3) == len(at_noon) == 120
    assert sum(at_3) / 120 < 0.3
    assert sum(at_noon) / 120 > 0.7
    # A heartbeat at most one interval after the last uplink, and uplinks on changes between.
    assert gaps_ok
    assert shorter > 50
    assert sim.counters["occupancy_changes"] > 100


def test_bins_fill_and_are_emptied_at_the_collection_time(tmp_path: Path) -> None:
    sc = scenario(
        tmp_path,
        ONE_GATEWAY + '[[sensors]]\nprofile = "waste-bin-v1"\ncount = 10\nplacement = "area"\n'
        'area = [900, 900, 1100, 1100]\nreport_interval = "30m"\n\n'
        '[[traffic]]\npattern = "bin-fill"\nfill_per_hour = 4.0\nemptied_at = ["06:00"]\n',
        duration="12h",
        start="20:00",
    )
    sim = sim_of(sc)
    uplinks = list(run(sim, 12 * 3600))
    collected_s = (6 - 20 + 24) * 3600.0  # 06:00 is 10 h after the 20:00 start
    for sent in by_sensor(uplinks).values():
        before = [int(u.values["fill_pct"]) for u in sent if u.sent_s < collected_s]  # type: ignore[call-overload]
        after = [u for u in sent if u.sent_s >= collected_s + 1200]
        # 14 hours since the last collection at the start, 4 %/h x 0.6..1.4.
        assert 30 <= before[0] <= 80
        assert before == sorted(before)
        assert before[-1] >= before[0] + 20
        first_after = int(after[0].values["fill_pct"])  # type: ignore[call-overload]
        assert first_after <= 3 + 4 * 1.4 * 0.6
        later = [int(u.values["fill_pct"]) for u in after]  # type: ignore[call-overload]
        assert later == sorted(later)
        assert after[0].values["distance_mm"] == 1200 - 1200 * first_after // 100
    assert sim.counters["bins_emptied"] == 10


# --- the radio world ----------------------------------------------------------------------------


DENSE = (
    '[[gateways]]\ncount = 9\nlayout = "grid"\nprefix = "gw"\n\n'
    '[[sensors]]\nprofile = "environment-v1"\ncount = 300\nplacement = "area"\n'
    'report_interval = "1m"\n\n[[traffic]]\npattern = "environment"\n'
)


def test_in_a_dense_grid_several_gateways_hear_a_frame_strongest_first(tmp_path: Path) -> None:
    sc = scenario(tmp_path, DENSE, duration="10m")
    sim = sim_of(sc)
    uplinks = list(run(sim, 600, window_s=5.0))
    assert len(uplinks) > 2500
    several = [u for u in uplinks if len(u.heard) >= 3]
    assert len(several) > len(uplinks) // 2
    for uplink in uplinks:
        rssis = [h.rssi_dbm for h in uplink.heard]
        assert rssis == sorted(rssis, reverse=True)
        assert len({h.gateway_id for h in uplink.heard}) == len(uplink.heard)
        assert all(
            isinstance(h.rssi_dbm, int) and h.snr_db * 4 == int(h.snr_db * 4) for h in uplink.heard
        )
        assert not {h.gateway_id for h in uplink.heard} & {g for g, _ in uplink.lost}
        assert uplink.airtime_s == airtime_s(len(uplink.phy), uplink.sf)
    assert sim.counters["heard"] == sum(len(u.heard) for u in uplinks)


def test_overlapping_frames_on_one_channel_and_sf_collide(tmp_path: Path) -> None:
    sc = scenario(tmp_path, DENSE, duration="10m")
    sim = sim_of(sc)
    uplinks = list(run(sim, 600, window_s=5.0))
    collided = [(u, g) for u in uplinks for g, cause in u.lost if cause == "collision"]
    assert len(collided) > 20
    for uplink, _ in collided:
        end = uplink.sent_s + uplink.airtime_s
        rivals = [
            other
            for other in uplinks
            if other is not uplink
            and other.frequency_hz == uplink.frequency_hz
            and other.sf == uplink.sf
            and other.sent_s < end
            and uplink.sent_s < other.sent_s + other.airtime_s
        ]
        assert rivals, "a collision needs another frame on the air, same channel and SF"
    assert sim.counters["lost_collision"] == len(collided)


def test_an_unpowered_gateway_hears_nothing(tmp_path: Path) -> None:
    sc = scenario(tmp_path, DENSE, duration="10m")
    sim = sim_of(sc)
    sim.set_powered("gw-005", False)
    first = list(run(sim, 120, window_s=5.0))
    assert all("gw-005" not in {h.gateway_id for h in u.heard} for u in first)
    off = [u for u in first if ("gw-005", "gateway_off") in u.lost]
    assert len(off) > 100
    sim.set_powered("gw-005", True)
    second = list(run(sim, 240, window_s=5.0))
    assert sum("gw-005" in {h.gateway_id for h in u.heard} for u in second) > 100
    with pytest.raises(DistrictError, match="unknown gateway 'gw-99'"):
        sim.set_powered("gw-99", False)


def test_spreading_factor_by_link_margin_and_duty_cycle_deferral(tmp_path: Path) -> None:
    path = tmp_path / "wide.toml"
    path.write_text(
        '[district]\nname = "wide"\nsize = [12000, 200]\nseed = 3\nduration = "3h"\n\n'
        '[[gateways]]\nid = "gw-1"\nposition = [0, 100]\n\n'
        '[[sensors]]\nprofile = "environment-v1"\ncount = 12\nplacement = "line"\n'
        'from = [100, 100]\nto = [11900, 100]\nreport_interval = "30s"\n',
        encoding="utf-8",
    )
    sc = load_scenario(path)
    sim = sim_of(sc)
    uplinks = list(run(sim, 3 * 3600))
    grouped = by_sensor(uplinks)
    sf_of = {sensor_id: {u.sf for u in sent} for sensor_id, sent in grouped.items()}
    assert all(len(sfs) == 1 for sfs in sf_of.values())
    for sensor_id, (sf,) in sf_of.items():
        links = sim.world.links(sensor_id)
        rssi = 14.0 - links[0][0] if links else -999.0
        # The lowest SF whose sensitivity the best link clears by the margin, SF12 if none.
        clears = [s for s in range(7, 13) if rssi >= sensitivity_dbm(s) + SF_MARGIN_DB]
        assert sf == (clears[0] if clears else 12)
    near, far = "environment-00001", "environment-00012"
    assert sf_of[near] == {7}
    assert sf_of[far] == {12}
    # SF12 every 30 s is far over 1 %: deferred, and never more than 36 s in any hour.
    assert sim.counters["duty_deferred"] > 50
    assert sim.truth().sensors[far].duty_deferred > 30
    budget = DUTY_CYCLE_FRACTION * DUTY_CYCLE_WINDOW_S
    for sent in grouped.values():
        for start in sent:
            window = [u for u in sent if start.sent_s <= u.sent_s < start.sent_s + 3600]
            assert sum(u.airtime_s for u in window) <= budget + 1e-6
    assert len(grouped[far]) < len(grouped[near]) / 3
    assert sim.counters["refused_duty_cycle"] == 0


# --- joins, acknowledgements, settings ----------------------------------------------------------


ONE_BIN = (
    ONE_GATEWAY + '[[sensors]]\nprofile = "waste-bin-v1"\ncount = 1\nplacement = "area"\n'
    'area = [950, 950, 1050, 1050]\nreport_interval = "10m"\n'
)


def test_otaa_devices_join_through_the_join_server_then_send_data(tmp_path: Path) -> None:
    sc = scenario(tmp_path, ONE_BIN, duration="2h")
    sim = sim_of(sc, otaa=True)
    (sensor_id,) = [s.device.device_id for s in sim.expanded.sensors]
    store = Store(":memory:", vault=KeyVault.generate_file(tmp_path / "kek.json", "test1"))
    dev_eui = "70b3d57ed0000000"
    store.create_device(
        dev_eui,
        profile_id="waste-bin-v1",
        activation="otaa",
        created=0.0,
        join_eui=f"{JOIN_EUI:016x}",
        app_key=APP_KEY,
    )
    server = JoinServer(store)
    # Unanswered, the device keeps trying with backoff and a new DevNonce each time.
    joins = list(run(sim, 600, window_s=5.0))
    assert [u.kind for u in joins] == ["join"] * len(joins)
    assert 3 <= len(joins) <= 5
    gaps = [b.sent_s - a.sent_s for a, b in itertools.pairwise(joins)]
    assert 24 <= gaps[0] <= 36
    assert 48 <= gaps[1] <= 72
    assert len({u.phy for u in joins}) == len(joins)
    # A runner far faster than real time may wait longer between attempts.
    patient = DistrictSim(sc, devices(sc.expand(), otaa=True), join_backoff_s=(900.0,))
    slow = list(run(patient, 3000, window_s=5.0))
    assert 3 <= len(slow) <= 4
    assert all(720 <= b.sent_s - a.sent_s <= 1080 for a, b in itertools.pairwise(slow))
    assert all(u.fcnt is None and u.values == {} for u in joins)
    request = next(u for u in run(sim, 3600, window_s=5.0))
    assert request.kind == "join"
    assert request.heard
    sim.heard_at(request, "gw-1", NEAR_WRAP_US)
    result = server.join(request.phy, at=request.sent_s)
    accept = rx1_tx(
        rx_timestamp_us=NEAR_WRAP_US,
        frequency_hz=request.frequency_hz,
        sf=request.sf,
        bandwidth_hz=125_000,
        payload=result.accept_phy,
        token=7,
        delay_s=5,
    )
    late = TxRequest(
        timestamp_us=(NEAR_WRAP_US + 6_000_000) & 0xFFFFFFFF,
        frequency_hz=request.frequency_hz,
        sf=request.sf,
        power_dbm=14,
        payload=result.accept_phy,
        token=8,
    )
    assert sim.downlink("gw-1", late) is None
    assert sim.counters["downlink_no_window"] == 1
    assert sim.downlink("gw-1", accept) == sensor_id
    assert sim.counters["joined"] == 1
    assert sim.downlink("gw-1", accept) is None  # one downlink per window
    data = list(run(sim, 3600, window_s=5.0))
    assert data
    assert all(u.kind == "data" for u in data)
    assert data[0].sent_s - request.sent_s < 60
    keys = SessionKeys(result.session.nwk_s_key, result.session.app_s_key)
    for n, uplink in enumerate(data):
        decoded = decode_uplink(uplink.phy, keys, n - 1 if n else None)
        assert (decoded.dev_addr, decoded.f_cnt, uplink.fcnt) == (result.dev_addr, n, n)
    truth = sim.truth().sensors[sensor_id]
    assert truth.joined_at_s is not None
    assert truth.join_requests == len(joins) + 1
    assert truth.fcnts == list(range(len(data)))


def ack_for(uplink: Uplink, stamp_us: int, f_cnt_down: int, **extra: object) -> TxRequest:
    frame = DataFrame.build(
        SessionKeys(NWK, APP),
        mtype=MType.UNCONFIRMED_DATA_DOWN,
        dev_addr=ADDR0,
        f_cnt=f_cnt_down,
        f_ctrl=FCtrl(ack=True),
        **extra,  # type: ignore[arg-type]
    )
    return rx1_tx(
        rx_timestamp_us=stamp_us,
        frequency_hz=uplink.frequency_hz,
        sf=uplink.sf,
        bandwidth_hz=125_000,
        payload=frame.to_bytes(),
        token=1,
    )


def test_confirmed_frames_are_sent_again_until_an_ack(tmp_path: Path) -> None:
    sc = scenario(tmp_path, ONE_BIN, duration="2h")
    sim = sim_of(sc, confirmed=True)
    first = list(run(sim, 660, window_s=2.0))
    # No ACK: the same frame four times, a few seconds apart, then the next report.
    frames = [(u.fcnt, u.attempt) for u in first]
    assert frames[:MAX_TRANSMISSIONS] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert len({u.phy for u in first[:MAX_TRANSMISSIONS]}) == 1
    assert all(u.confirmed and u.phy[0] == 0x80 for u in first)
    for a, b in itertools.pairwise(first[:MAX_TRANSMISSIONS]):
        assert 3.0 <= b.sent_s - (a.sent_s + a.airtime_s) <= 5.0 + 1e-9
    assert sim.counters["retransmissions"] == 3
    # Acknowledged in RX1 of the first transmission: no retransmission of that frame.
    uplink = next(u for u in run(sim, 7200, window_s=2.0) if u.attempt == 1)
    sim.heard_at(uplink, "gw-1", 5_000_000)
    assert sim.downlink("gw-1", ack_for(uplink, 5_000_000, 0)) is not None
    later = list(run(sim, uplink.sent_s + 900, window_s=2.0))
    assert [(u.fcnt, u.attempt) for u in later][:1] == [((uplink.fcnt or 0) + 1, 1)]
    assert 590 <= later[0].sent_s - uplink.sent_s <= 610
    assert sim.counters["acks"] == 1
    assert sim.truth().sensors[uplink.sensor_id].acked == 1


def test_a_settings_downlink_changes_the_report_interval(tmp_path: Path) -> None:
    sc = scenario(tmp_path, ONE_BIN, duration="3h")
    sim = sim_of(sc)
    uplink = next(iter(run(sim, 3600, window_s=2.0)))
    port, payload = encode_settings("waste-bin-v1", {"report_interval_s": 120}, seq=5)
    sim.heard_at(uplink, "gw-1", 1_000_000)
    # Not at the RX1 time of this gateway's stamp: nobody takes it.
    wrong = ack_for(uplink, 1_500_000, 0, f_port=port, payload=payload)
    assert sim.downlink("gw-1", wrong) is None
    assert sim.downlink("gw-1", ack_for(uplink, 1_000_000, 0, f_port=port, payload=payload))
    assert sim.counters["rescheduled"] == 1
    after = list(run(sim, uplink.sent_s + 1300, window_s=2.0))
    gaps = [b.sent_s - a.sent_s for a, b in zip([uplink, *after], after, strict=False)]
    assert len(after) >= 9
    assert all(118.0 <= gap <= 122.0 for gap in gaps), gaps
    assert after[0].values["message"] == "settings_ack"
    assert after[0].values["result"] == "applied"


def test_downlinks_nobody_can_take_are_counted_by_reason(tmp_path: Path) -> None:
    sc = scenario(tmp_path, ONE_BIN, duration="1h")
    sim = sim_of(sc)
    uplink = next(iter(run(sim, 3600, window_s=2.0)))
    sim.heard_at(uplink, "gw-1", 1_000_000)
    stray = DataFrame.build(
        SessionKeys(NWK, APP), mtype=MType.UNCONFIRMED_DATA_DOWN, dev_addr=0x01020304, f_cnt=0
    )
    request = rx1_tx(
        rx_timestamp_us=1_000_000,
        frequency_hz=uplink.frequency_hz,
        sf=uplink.sf,
        bandwidth_hz=125_000,
        payload=stray.to_bytes(),
        token=1,
    )
    assert sim.downlink("gw-1", request) is None
    sim.set_powered("gw-1", False)
    assert sim.downlink("gw-1", ack_for(uplink, 1_000_000, 0)) is None
    assert sim.counters["downlink_unknown_dev_addr"] == 1
    assert sim.counters["downlink_gateway_off"] == 1
    assert sim.counters["downlinks_ignored"] == 2
    assert sim.counters["downlinks_taken"] == 0


# --- determinism and bad input ------------------------------------------------------------------


def fingerprint(sim: DistrictSim, until_s: float) -> list[tuple[object, ...]]:
    return [
        (u.sensor_id, u.sent_s, u.frequency_hz, u.sf, u.phy, u.heard, u.lost)
        for u in run(sim, until_s, window_s=10.0)
    ]


def test_the_same_seed_gives_the_same_district(tmp_path: Path) -> None:
    sc = scenario(tmp_path, DENSE, duration="5m")
    one = fingerprint(sim_of(sc), 300)
    assert one == fingerprint(sim_of(sc), 300)
    expanded = sc.expand()
    other = DistrictSim(sc, devices(expanded), expanded=expanded, seed=8)
    assert fingerprint(other, 300) != one
    assert len(one) > 1000


def test_devices_must_match_the_sensors(tmp_path: Path) -> None:
    sc = scenario(tmp_path, ONE_BIN + '\n[[sensors]]\nprofile = "parking-v1"\ncount = 2\n'
                  'placement = "area"\nprefix = "bay"\n')  # fmt: skip
    expanded = sc.expand()
    made = devices(expanded)
    missing = dict(made)
    del missing["bay-00002"]
    with pytest.raises(DistrictError, match="1 sensors of the scenario have no device: bay-00002"):
        DistrictSim(sc, missing, expanded=expanded)
    with pytest.raises(DistrictError, match="the scenario does not have: ghost-1"):
        DistrictSim(sc, made | {"ghost-1": made["bay-00001"]}, expanded=expanded)
    swapped = made | {"bay-00001": made["waste-bin-00001"]}
    with pytest.raises(DistrictError, match="bay-00001 is a parking-v1 sensor, its device a waste"):
        DistrictSim(sc, swapped, expanded=expanded)
    with pytest.raises(DistrictError, match="ack_timeout_s must be above 0"):
        DistrictSim(sc, made, expanded=expanded, ack_timeout_s=0.0)
    with pytest.raises(DistrictError, match="join_backoff_s must be waits above 0"):
        DistrictSim(sc, made, expanded=expanded, join_backoff_s=())
    sim = DistrictSim(sc, made, expanded=expanded)
    uplink = next(iter(run(sim, 3600)))
    with pytest.raises(DistrictError, match="unknown gateway 'gw-2'"):
        sim.heard_at(uplink, "gw-2", 0)
