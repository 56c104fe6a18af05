"""The gateway health history the dashboard plots: one row per health message, written with
the gateway's facts, kept a week, read back oldest first."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from owlgate.codecs.health import Health, RadioCounters
from owlgate.fleet.store import (
    HEALTH_HISTORY_S,
    HealthPoint,
    InvalidError,
    NotFoundError,
    Store,
)
from tests.fleet.conftest import GW1, GW2, T0


def health(seq: int, **fields: object) -> Health:
    values: dict[str, object] = {
        "gateway_id": bytes.fromhex(GW1),
        "seq": seq,
        "time_s": int(T0) + seq,
        "uptime_s": 1000 + seq,
        "agent_uptime_s": 900 + seq,
        "agent_version": "1.0",
        "config_hash": bytes(8),
        "config_seq": 3,
        "cpu_temp_c": 41.5,
        "load_1m": 0.25,
        "backhaul_rtt_ms": 35,
        "outbox_depth": seq,
        "outbox_oldest_age_s": 7,
        "reconnects": 2,
        "radio": RadioCounters(received=50, crc_ok=45, crc_bad=5, forwarded=44, transmitted=1),
    } | fields
    return Health(**values)  # type: ignore[arg-type]


def abort_after(store: Store, write: Callable[[], object]) -> None:
    """Run ``write`` in a transaction that then fails."""
    with store.transaction():
        write()
        raise RuntimeError("abort")


def test_every_field_of_a_message_is_kept(registry: Store) -> None:
    registry.record_health(GW1, health(1), received_at=T0 + 10)
    (point,) = registry.health_history(GW1, since=T0)
    assert point == HealthPoint(
        at=T0 + 10,
        uptime_s=1001,
        agent_uptime_s=901,
        cpu_temp_c=41.5,
        load_1m=0.25,
        outbox_depth=1,
        outbox_oldest_age_s=7,
        backhaul_rtt_ms=35.0,
        radio_received=50,
        radio_crc_ok=45,
        radio_crc_bad=5,
        radio_forwarded=44,
        radio_transmitted=1,
        reconnects=2,
        config_seq=3,
    )
    assert dataclasses.fields(HealthPoint)[0].name == "at"


def test_missing_values_are_none(registry: Store) -> None:
    registry.record_health(
        GW1,
        health(1, radio=None, cpu_temp_c=None, load_1m=None, backhaul_rtt_ms=None),
        received_at=T0,
    )
    (point,) = registry.health_history(GW1, since=T0)
    assert (point.radio_received, point.radio_crc_bad, point.cpu_temp_c) == (None, None, None)
    assert (point.load_1m, point.backhaul_rtt_ms, point.outbox_depth) == (None, None, 1)


def test_history_is_per_gateway_oldest_first_within_the_range(registry: Store) -> None:
    for seq in (3, 1, 2, 4):
        registry.record_health(GW1, health(seq), received_at=T0 + 60 * seq)
    registry.record_health(GW2, health(9), received_at=T0 + 120)
    points = registry.health_history(GW1, since=T0 + 120, until=T0 + 180)
    assert [p.at for p in points] == [T0 + 120, T0 + 180]
    assert [p.outbox_depth for p in registry.health_history(GW1, since=0)] == [1, 2, 3, 4]
    assert [p.outbox_depth for p in registry.health_history(GW2, since=0)] == [9]


def test_more_than_the_limit_gives_the_newest(registry: Store) -> None:
    for seq in range(1, 8):
        registry.record_health(GW1, health(seq), received_at=T0 + seq)
    points = registry.health_history(GW1, since=T0, limit=3)
    assert [p.at for p in points] == [T0 + 5, T0 + 6, T0 + 7]


def test_a_second_message_at_the_same_time_replaces_the_first(registry: Store) -> None:
    registry.record_health(GW1, health(1), received_at=T0)
    registry.record_health(GW1, health(2), received_at=T0)
    (point,) = registry.health_history(GW1, since=T0 - 1)
    assert point.outbox_depth == 2


def test_rows_older_than_a_week_are_dropped_as_new_ones_arrive(registry: Store) -> None:
    registry.record_health(GW1, health(1), received_at=T0)
    registry.record_health(GW2, health(1), received_at=T0)
    registry.record_health(GW1, health(2), received_at=T0 + HEALTH_HISTORY_S)
    assert [p.at for p in registry.health_history(GW1, since=0)] == [T0, T0 + HEALTH_HISTORY_S]
    registry.record_health(GW1, health(3), received_at=T0 + HEALTH_HISTORY_S + 1)
    assert [p.outbox_depth for p in registry.health_history(GW1, since=0)] == [2, 3]
    # The other gateway's rows wait for its own next message.
    assert len(registry.health_history(GW2, since=0)) == 1


def test_history_rolls_back_with_the_message(registry: Store) -> None:
    """The history row is written in the transaction of the gateway's facts."""
    with pytest.raises(RuntimeError, match="abort"):
        abort_after(registry, lambda: registry.record_health(GW1, health(1), received_at=T0))
    assert registry.health_history(GW1, since=0) == []
    assert registry.gateway(GW1).facts.outbox_depth is None


def test_unknown_gateway_and_bad_arguments(registry: Store) -> None:
    with pytest.raises(NotFoundError, match="no gateway 00000000000000ff"):
        registry.health_history("00000000000000ff", since=T0)
    with pytest.raises(NotFoundError):
        registry.record_health("00000000000000ff", health(1), received_at=T0)
    with pytest.raises(InvalidError, match="limit"):
        registry.health_history(GW1, since=T0, limit=0)
    with pytest.raises(InvalidError, match="since"):
        registry.health_history(GW1, since=float("nan"))
    assert registry.health_history(GW1, since=T0) == []
