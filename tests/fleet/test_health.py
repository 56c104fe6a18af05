"""The gateway health state machine, driven by a fake clock (``now`` is a parameter)."""

from __future__ import annotations

import pytest

from owlgate.fleet.health import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    GatewayFacts,
    GatewayState,
    HealthThresholds,
    assess,
)

T0 = 1_800_000_000.0


def state(facts: GatewayFacts, now: float, **limits: int | float) -> GatewayState:
    return assess(facts, now, HealthThresholds(**limits)).state  # type: ignore[arg-type]


def test_never_seen() -> None:
    assert state(GatewayFacts(), T0) is GatewayState.NEVER_SEEN


def test_online_until_two_heartbeats_are_missed() -> None:
    facts = GatewayFacts(last_seen=T0, heartbeat_interval_s=30)
    assert state(facts, T0) is GatewayState.ONLINE
    assert state(facts, T0 + 60) is GatewayState.ONLINE
    verdict = assess(facts, T0 + 60.5)
    assert verdict.state is GatewayState.OFFLINE
    assert "2 heartbeat intervals of 30 s" in verdict.reasons[0]


def test_default_interval_before_the_first_health_message() -> None:
    facts = GatewayFacts(last_seen=T0)
    assert state(facts, T0 + 2 * DEFAULT_HEARTBEAT_INTERVAL_S) is GatewayState.ONLINE
    assert state(facts, T0 + 2 * DEFAULT_HEARTBEAT_INTERVAL_S + 1) is GatewayState.OFFLINE


def test_last_will_is_offline_until_heard_again() -> None:
    will = GatewayFacts(last_seen=T0, heartbeat_interval_s=30, state_online=False, state_at=T0 + 5)
    verdict = assess(will, T0 + 6)
    assert verdict.state is GatewayState.OFFLINE
    assert "last will" in verdict.reasons[0]
    back = GatewayFacts(
        last_seen=T0 + 7, heartbeat_interval_s=30, state_online=False, state_at=T0 + 5
    )
    assert state(back, T0 + 8) is GatewayState.ONLINE
    only_will = GatewayFacts(state_online=False, state_at=T0)
    assert state(only_will, T0) is GatewayState.OFFLINE
    only_online = GatewayFacts(state_online=True, state_at=T0)
    assert state(only_online, T0) is GatewayState.NEVER_SEEN


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (GatewayFacts(last_seen=T0, outbox_depth=1001), "outbox holds 1001 entries"),
        (GatewayFacts(last_seen=T0, outbox_oldest_age_s=601), "601 s old"),
        (GatewayFacts(last_seen=T0, radio_crc_ok=70, radio_crc_bad=30), "CRC error rate 30%"),
        (
            GatewayFacts(last_seen=T0, outbox_bytes=230 << 20, outbox_max_bytes=256 << 20),
            "outbox at 90% of its 256 MiB bound",
        ),
    ],
)
def test_degraded_above_thresholds(facts: GatewayFacts, reason: str) -> None:
    verdict = assess(facts, T0 + 1)
    assert verdict.state is GatewayState.DEGRADED
    assert reason in verdict.reasons[0]


def test_at_thresholds_and_few_frames_stay_online() -> None:
    at_limit = GatewayFacts(
        last_seen=T0, outbox_depth=1000, outbox_oldest_age_s=600, radio_crc_ok=80, radio_crc_bad=20
    )
    assert state(at_limit, T0) is GatewayState.ONLINE
    below = GatewayFacts(last_seen=T0, outbox_bytes=79, outbox_max_bytes=100)
    assert state(below, T0) is GatewayState.ONLINE
    assert state(below, T0, outbox_fill_max=0.75) is GatewayState.DEGRADED
    unknown_bound = GatewayFacts(last_seen=T0, outbox_bytes=10**9)
    assert state(unknown_bound, T0) is GatewayState.ONLINE
    few = GatewayFacts(last_seen=T0, radio_crc_ok=1, radio_crc_bad=9)
    assert state(few, T0) is GatewayState.ONLINE
    assert state(few, T0, radio_crc_min_frames=10) is GatewayState.DEGRADED


def test_offline_wins_over_degraded() -> None:
    facts = GatewayFacts(last_seen=T0, heartbeat_interval_s=10, outbox_depth=5000)
    assert state(facts, T0 + 21) is GatewayState.OFFLINE


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="rate"):
        HealthThresholds(radio_crc_error_rate_max=1.5)
    with pytest.raises(ValueError, match="missed_heartbeats_offline"):
        HealthThresholds(missed_heartbeats_offline=0)
    with pytest.raises(ValueError, match="outbox_fill_max"):
        HealthThresholds(outbox_fill_max=0)
