"""Readings and receptions per minute, counted in the ingest's transaction, and the hearing
tables read from the receptions (which devices a gateway hears, which gateways hear a
device)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from owlgate.codecs.node.telemetry import Reading
from owlgate.fleet.store import (
    INGEST_MINUTES_KEPT,
    HeardDevice,
    HearingGateway,
    IncomingBatch,
    IngestMinute,
    InvalidError,
    NotFoundError,
    Store,
)
from tests.fleet.conftest import ABP_EUI, GW1, GW2, OTAA_EUI, T0

MINUTE = 60 * (int(T0) // 60)


def reading(dev_eui: str, fcnt: int, t: float, rssi: int = -80, snr: float = 7.25) -> Reading:
    return Reading(bytes.fromhex(dev_eui), int(t), {"occupied": True}, rssi_dbm=rssi, snr_db=snr,
                   fcnt=fcnt)  # fmt: skip


def minutes(
    store: Store, since: float = MINUTE - 600, until: float = MINUTE + 600
) -> list[tuple[float, int, int]]:
    return [(m.minute, m.readings, m.receptions) for m in store.ingest_per_minute(
        since=since, until=until)]  # fmt: skip


def abort_after(store: Store, write: Callable[[], object]) -> None:
    """Run ``write`` in a transaction that then fails."""
    with store.transaction():
        write()
        raise RuntimeError("abort")


def test_new_readings_and_every_reception_are_counted(registry: Store) -> None:
    registry.record_batch(GW1, 1, [reading(ABP_EUI, 1, T0), reading(ABP_EUI, 2, T0)], MINUTE + 5)
    # The same two frames from another gateway: receptions, no new readings.
    registry.record_batch(GW2, 1, [reading(ABP_EUI, 1, T0), reading(ABP_EUI, 2, T0)], MINUTE + 50)
    # A repeat of a batch already seen stores nothing and counts nothing.
    registry.record_batch(GW1, 1, [reading(ABP_EUI, 1, T0)], MINUTE + 55)
    registry.record_batch(GW1, 2, [reading(OTAA_EUI, 1, T0 + 60)], MINUTE + 61)
    assert minutes(registry) == [(float(MINUTE), 2, 4), (float(MINUTE + 60), 1, 1)]
    assert registry.ingest_per_minute(since=MINUTE + 60, until=MINUTE + 60) == [
        IngestMinute(minute=float(MINUTE + 60), readings=1, receptions=1)
    ]
    assert minutes(registry, since=MINUTE + 120, until=MINUTE + 600) == []


def test_several_batches_in_one_call_and_a_refused_one(registry: Store) -> None:
    """Only the batches stored count, also when a write holds several (on PostgreSQL they are
    first tried all together)."""
    results = registry.record_batches(
        [
            IncomingBatch(GW1, 1, [reading(ABP_EUI, 1, T0)], MINUTE + 1),
            IncomingBatch("00000000000000ff", 1, [reading(ABP_EUI, 2, T0)], MINUTE + 2),
            IncomingBatch(GW2, 1, [reading(ABP_EUI, 1, T0), reading(OTAA_EUI, 3, T0)], MINUTE + 3),
            IncomingBatch(GW2, 2, [reading(OTAA_EUI, 4, T0)], MINUTE + 130),
        ]
    )
    assert isinstance(results[1], NotFoundError)
    assert minutes(registry) == [(float(MINUTE), 2, 3), (float(MINUTE + 120), 1, 1)]


def test_counts_roll_back_with_the_batch(registry: Store) -> None:
    with pytest.raises(RuntimeError, match="abort"):
        abort_after(
            registry, lambda: registry.record_batch(GW1, 1, [reading(ABP_EUI, 1, T0)], MINUTE)
        )
    assert minutes(registry) == []


def test_old_minutes_are_dropped_now_and_then(registry: Store) -> None:
    old = MINUTE - 60 * (INGEST_MINUTES_KEPT + 5)
    registry.record_batch(GW1, 1, [reading(ABP_EUI, 1, old)], old)
    assert minutes(registry, since=old, until=old) == [(float(old), 1, 1)]
    registry.record_batch(GW1, 2, [reading(ABP_EUI, 2, T0)], MINUTE)
    assert minutes(registry, since=old, until=MINUTE) == [(float(MINUTE), 1, 1)]


def test_bad_ranges_are_refused(registry: Store) -> None:
    with pytest.raises(InvalidError, match="before since"):
        registry.ingest_per_minute(since=T0, until=T0 - 120)
    with pytest.raises(InvalidError, match="until"):
        registry.ingest_per_minute(since=T0, until=float("inf"))


# --- who hears whom ------------------------------------------------------------------------


def test_gateway_devices_one_row_per_device_newest_first(registry: Store) -> None:
    registry.record_batch(
        GW1,
        1,
        [reading(ABP_EUI, 1, T0, rssi=-90), reading(OTAA_EUI, 1, T0 + 5, rssi=-70, snr=2.5)],
        T0 + 10,
    )
    registry.record_batch(GW1, 2, [reading(ABP_EUI, 2, T0 + 20, rssi=-100, snr=-3.0)], T0 + 30)
    registry.record_batch(GW2, 1, [reading(ABP_EUI, 2, T0 + 20, rssi=-60)], T0 + 31)
    assert registry.gateway_devices(GW1) == [
        HeardDevice(
            dev_eui=ABP_EUI,
            profile_id="parking-v1",
            frames=2,
            last_heard=T0 + 20,
            rssi_dbm=-100,
            snr_db=-3.0,
            mean_rssi_dbm=-95.0,
        ),
        HeardDevice(
            dev_eui=OTAA_EUI,
            profile_id="waste-bin-v1",
            frames=1,
            last_heard=T0 + 5,
            rssi_dbm=-70,
            snr_db=2.5,
            mean_rssi_dbm=-70.0,
        ),
    ]
    # Only the newest receptions count: the last one is of ABP_EUI.
    (only,) = registry.gateway_devices(GW1, limit_receptions=1)
    assert (only.dev_eui, only.frames) == (ABP_EUI, 1)
    assert [d.frames for d in registry.gateway_devices(GW2)] == [1]


def test_device_gateways_most_frames_first(registry: Store) -> None:
    for fcnt in range(1, 4):
        registry.record_batch(GW1, fcnt, [reading(ABP_EUI, fcnt, T0 + fcnt, rssi=-80 - fcnt)],
                              T0 + 10 * fcnt)  # fmt: skip
    registry.record_batch(GW2, 1, [reading(ABP_EUI, 3, T0 + 3, rssi=-50, snr=9.0)], T0 + 40)
    assert registry.device_gateways(ABP_EUI) == [
        HearingGateway(
            gateway_id=GW1,
            frames=3,
            last_heard=T0 + 3,
            rssi_dbm=-83,
            snr_db=7.25,
            mean_rssi_dbm=-82.0,
        ),
        HearingGateway(
            gateway_id=GW2,
            frames=1,
            last_heard=T0 + 3,
            rssi_dbm=-50,
            snr_db=9.0,
            mean_rssi_dbm=-50.0,
        ),
    ]
    # Over the newest reading only, both gateways heard it once.
    assert {
        g.gateway_id: g.frames for g in registry.device_gateways(ABP_EUI, limit_readings=1)
    } == {
        GW1: 1,
        GW2: 1,
    }
    assert registry.device_gateways(OTAA_EUI) == []


def test_hearing_tables_refuse_unknown_ids(registry: Store) -> None:
    with pytest.raises(NotFoundError, match="no gateway"):
        registry.gateway_devices("00000000000000ff")
    with pytest.raises(NotFoundError, match="no device"):
        registry.device_gateways("00000000000000ff")
    with pytest.raises(InvalidError, match="limit_receptions"):
        registry.gateway_devices(GW1, limit_receptions=0)
    with pytest.raises(InvalidError, match="limit_readings"):
        registry.device_gateways(ABP_EUI, limit_readings=0)


def test_the_gateway_index_exists(registry: Store) -> None:
    assert "0820_receptions_by_gateway" in registry.applied_migrations()
    if registry.dialect == "sqlite":
        names = {row[0] for row in registry.sql.query_tuples(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}  # fmt: skip
    else:
        names = {row[0] for row in registry.sql.query_tuples(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'receptions'")}  # fmt: skip
    assert "idx_receptions_gateway_reading" in names
