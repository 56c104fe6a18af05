"""The radio world: airtime, path loss, reception, collisions, demodulators, duty cycle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from owlgate.bench.hil_bench import city, hour_of_traffic
from owlgate.codecs.cli import app
from owlgate.hil.radio_world import (
    CAPTURE_THRESHOLD_DB,
    Device,
    DutyCycle,
    Gateway,
    LossCause,
    PathLoss,
    RadioWorld,
    RadioWorldError,
    Transmission,
    airtime_s,
    path_loss_db,
    sensitivity_dbm,
)

CHANNELS_HZ = (868_100_000, 868_300_000, 868_500_000, 867_100_000)


@pytest.mark.parametrize(
    ("payload", "sf", "expected_ms"),
    [
        # 125 kHz, CR 4/5, 8-symbol preamble, explicit header, CRC on, low data rate
        # optimisation at SF11 and SF12. The Things Network airtime calculator (EU868):
        (13, 7, 46.336),
        (13, 12, 1155.072),
        (51, 7, 102.656),
        (51, 12, 2465.792),
        # Thomas Telkamp's LoRa airtime spreadsheet (formulas of AN1200.13), its SF9 example:
        (13, 9, 164.864),
        # RF Wireless World's LoRaWAN airtime calculator, its SF7 and SF11 examples:
        (10, 7, 41.216),
        (10, 11, 577.536),
    ],
)
def test_airtime_matches_published_values(payload: int, sf: int, expected_ms: float) -> None:
    assert airtime_s(payload, sf) * 1000 == pytest.approx(expected_ms, abs=0.001)


def test_airtime_options_change_the_symbol_count() -> None:
    assert airtime_s(51, 12, low_data_rate_optimize=False) < airtime_s(51, 12)
    assert airtime_s(13, 7, bw_hz=250_000) == pytest.approx(airtime_s(13, 7) / 2)
    assert airtime_s(13, 7, crc=False, explicit_header=False) < airtime_s(13, 7)
    with pytest.raises(RadioWorldError, match="spreading factor"):
        airtime_s(13, 6)
    with pytest.raises(RadioWorldError, match="payload"):
        airtime_s(256, 7)


def test_path_loss_is_monotone_and_shadowing_reproducible() -> None:
    losses = [path_loss_db(d) for d in (50, 100, 500, 1000, 2000, 5000, 10_000)]
    assert losses == sorted(losses)
    assert len(set(losses)) == len(losses)
    assert path_loss_db(1000) == pytest.approx(126.0)
    model = PathLoss()
    first = model.shadowing_db(7, "dev1", 2000)
    assert first == model.shadowing_db(7, "dev1", 2000)
    assert first != model.shadowing_db(8, "dev1", 2000)
    assert first != model.shadowing_db(7, "dev2", 2000)
    mean = sum(first) / len(first)
    spread = (sum((v - mean) ** 2 for v in first) / len(first)) ** 0.5
    assert abs(mean) < 0.5
    assert 5.0 < spread < 7.0
    assert max(abs(v) for v in first) <= 18.0


def _quiet(sigma_db: float = 0.0) -> PathLoss:
    return PathLoss(sigma_db=sigma_db)


def test_frame_heard_by_the_two_nearest_of_three_gateways() -> None:
    gateways = [Gateway("near", 500, 0), Gateway("mid", 1500, 0), Gateway("far", 9000, 0)]
    world = RadioWorld(gateways, [Device("d", 0, 0)], path_loss=_quiet())
    frame = Transmission("d", 0.0, 868_100_000, 7, 20)
    result = world.run([frame])
    heard = result.heard_by(frame)
    assert set(heard) == {"near", "mid"}
    assert heard["near"].rssi_dbm > heard["mid"].rssi_dbm
    assert heard["near"].rssi_dbm == pytest.approx(14 - path_loss_db(500))
    assert heard["near"].snr_db > heard["mid"].snr_db
    assert result.gateways["far"].received == []
    assert result.counters["received"] == 2
    # The far gateway would hear it at SF12, which it cannot at SF7.
    assert 14 - path_loss_db(9000) < sensitivity_dbm(7)


def _pair(
    power_b_dbm: float, *, sf_b: int = 7, freq_b: int = 868_100_000
) -> tuple[list[str], list[tuple[str, LossCause]]]:
    world = RadioWorld(
        [Gateway("gw", 0, 0)],
        [Device("a", 1000, 0), Device("b", 0, 1000, tx_power_dbm=power_b_dbm)],
        path_loss=_quiet(),
    )
    a = Transmission("a", 0.0, 868_100_000, 7, 20)
    b = Transmission("b", 0.01, freq_b, sf_b, 20)
    result = world.run([a, b])
    gw = result.gateways["gw"]
    return (
        sorted(r.transmission.device_id for r in gw.received),
        sorted((lost.transmission.device_id, lost.cause) for lost in gw.lost),
    )


def test_equal_frames_on_one_channel_and_sf_both_collide() -> None:
    received, lost = _pair(14.0)
    assert received == []
    assert lost == [("a", LossCause.COLLISION), ("b", LossCause.COLLISION)]


def test_a_much_stronger_frame_survives_by_capture() -> None:
    received, lost = _pair(24.0)
    assert received == ["b"]
    assert lost == [("a", LossCause.COLLISION)]
    # Just under the threshold both are lost.
    received, _ = _pair(14.0 + CAPTURE_THRESHOLD_DB - 0.1)
    assert received == []


def test_other_sf_or_channel_does_not_collide() -> None:
    assert _pair(14.0, sf_b=8) == (["a", "b"], [])
    assert _pair(14.0, freq_b=868_300_000) == (["a", "b"], [])


def test_ninth_simultaneous_frame_finds_the_demodulators_busy() -> None:
    devices = [Device(f"d{i}", 300, 0) for i in range(10)]
    world = RadioWorld([Gateway("gw", 0, 0)], devices, path_loss=_quiet())
    frames = [
        Transmission(f"d{i}", i * 0.001, CHANNELS_HZ[i % 4], 7 + i // 4, 20) for i in range(9)
    ]
    # Once the first frame has ended a path is free again.
    late = Transmission("d9", airtime_s(20, 7) + 0.0001, 868_300_000, 9, 20)
    result = world.run([*frames, late])
    gw = result.gateways["gw"]
    assert [lost.transmission for lost in gw.lost] == [frames[8]]
    assert gw.lost[0].cause is LossCause.DEMODULATOR_BUSY
    assert len(gw.received) == 9
    assert result.counters["lost_demodulator_busy"] == 1
    sx1302 = RadioWorld([Gateway("gw", 0, 0, demodulator_paths=16)], devices, path_loss=_quiet())
    assert len(sx1302.run(frames).gateways["gw"].received) == 9


def test_duty_cycle_refuses_too_soon_and_allows_after_the_wait() -> None:
    budget = DutyCycle()
    frame_s = airtime_s(51, 12)
    now = 0.0
    sent = 0
    while budget.can_send(now, frame_s):
        budget.record(now, frame_s)
        sent += 1
        now += 10.0
    assert sent == int(36.0 // frame_s)
    wait_until = budget.next_allowed(now, frame_s)
    assert wait_until == pytest.approx(3600.0)  # the first frame leaves the window
    assert not budget.can_send(wait_until - 0.001, frame_s)
    assert budget.can_send(wait_until, frame_s)
    with pytest.raises(RadioWorldError, match="budget"):
        budget.next_allowed(now, 40.0)


def test_world_refuses_frames_over_the_duty_cycle() -> None:
    world = RadioWorld([Gateway("gw", 0, 0)], [Device("d", 100, 0)], path_loss=_quiet())
    frame_s = airtime_s(51, 12)
    frames = [Transmission("d", i * 5.0, CHANNELS_HZ[0], 12, 51) for i in range(20)]
    result = world.run(frames)
    allowed = int(36.0 // frame_s)
    assert [loss.transmission for loss in result.refused] == frames[allowed:]
    assert {loss.cause for loss in result.refused} == {LossCause.DUTY_CYCLE}
    assert len(result.gateways["gw"].received) == allowed
    later = world.duty_cycle("d").next_allowed(100.0, frame_s)
    assert later == pytest.approx(3600.0)
    again = world.run([Transmission("d", later, CHANNELS_HZ[0], 12, 51)])
    assert again.counters["received"] == 1


def test_bad_transmissions_are_refused_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    world = RadioWorld([Gateway("gw", 0, 0)], [Device("d", 100, 0)])
    with pytest.raises(RadioWorldError, match="unknown device"):
        world.run([Transmission("ghost", 0.0, CHANNELS_HZ[0], 7, 20)])
    with pytest.raises(RadioWorldError, match="spreading factor"):
        world.run([Transmission("d", 0.0, CHANNELS_HZ[0], 13, 20)])
    assert world.counters["rejected"] == 2
    assert "ghost" in caplog.text
    with pytest.raises(RadioWorldError, match="unique"):
        RadioWorld([Gateway("gw", 0, 0), Gateway("gw", 1, 1)], [])


def test_city_hour_of_ten_thousand_devices_and_a_hundred_gateways() -> None:
    """Gateways 1.6 km apart, devices scattered, two reports each (``owlgate.bench.hil_bench``:
    the same world the benchmark times)."""
    world = city(10_000, 100, seed=3)
    frames = hour_of_traffic(world, seed=3)
    result = world.run(frames)
    counts = result.counters
    assert counts["sent"] == 20_000
    assert counts["refused_duty_cycle"] == 0
    heard = {r.transmission for g in result.gateways.values() for r in g.received}
    # In a city most frames reach at least one gateway, and many reach several.
    assert len(heard) > 0.9 * len(frames)
    assert counts["received"] > 2 * len(heard)
    assert counts["lost_collision"] > 0


def test_same_seed_same_world_other_seed_other_links() -> None:
    small = city(1000, 9, seed=5)
    frames = hour_of_traffic(small, seed=5)
    first = small.run(frames)
    again = city(1000, 9, seed=5).run(frames)
    assert again.counters == first.counters
    assert again.gateways == first.gateways
    other = city(1000, 9, seed=5)
    other.seed = 6
    assert other.links("dev0") != small.links("dev0")


def test_bench_suite_reports_the_world_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--suite", "hil", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["hil.world_frames_per_s"] > 0
    assert figures["units"]["hil.world_frames_per_s"] == "frames/s"
