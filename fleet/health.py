"""A gateway's health state, computed from stored facts and the current time.

A pure function (:func:`assess`): no clock is read here, so tests pass ``now`` in and the API
computes the state at request time from what the store holds. The states (ARCHITECTURE.md,
"Control path"):

- ``never_seen``: registered, nothing ever heard from it;
- ``offline``: its MQTT Last Will set the retained state ``offline`` and nothing arrived
  since, or nothing arrived for ``missed_heartbeats_offline`` (2) heartbeat intervals,
  whichever comes first;
- ``degraded``: online, but the last health message shows an outbox backlog (depth or age of
  the oldest entry, or an outbox filled to :attr:`HealthThresholds.outbox_fill_max` of its
  bound, past which the gateway will soon evict data) or a radio CRC error rate above the
  thresholds;
- ``online``: otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

#: The heartbeat interval assumed until a gateway's first health message says its own.
DEFAULT_HEARTBEAT_INTERVAL_S: Final = 60


class GatewayState(StrEnum):
    NEVER_SEEN = "never_seen"
    ONLINE = "online"
    OFFLINE = "offline"
    DEGRADED = "degraded"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthThresholds:
    """When a gateway counts as offline or degraded. Times in seconds, rates 0..1."""

    missed_heartbeats_offline: int = 2
    default_heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S
    outbox_depth_max: int = 1000
    outbox_oldest_age_max_s: int = 600
    #: The edge warns from 80 % of its outbox bound, and evicts the oldest data at 100 %.
    outbox_fill_max: float = 0.8
    radio_crc_error_rate_max: float = 0.2
    #: Below this many frames (crc_ok + crc_bad) the error rate is noise and is not judged.
    radio_crc_min_frames: int = 50

    def __post_init__(self) -> None:
        if self.missed_heartbeats_offline < 1 or self.default_heartbeat_interval_s < 1:
            raise ValueError("missed_heartbeats_offline and the heartbeat interval must be >= 1")
        if not 0.0 <= self.radio_crc_error_rate_max <= 1.0:
            raise ValueError("radio_crc_error_rate_max must be 0 .. 1")
        if not 0.0 < self.outbox_fill_max <= 1.0:
            raise ValueError("outbox_fill_max must be above 0 and at most 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayFacts:
    """What the store knows about a gateway. Times are UTC seconds since the epoch.

    ``state_online`` is the last retained ``state`` message (True ``online``, False
    ``offline``, None never received) and ``state_at`` when it arrived; ``last_seen`` when
    anything verified last arrived. The rest comes from the last health message; the radio
    counters are cumulative since the agent started.
    """

    last_seen: float | None = None
    state_online: bool | None = None
    state_at: float | None = None
    heartbeat_interval_s: int | None = None
    outbox_depth: int | None = None
    outbox_oldest_age_s: int | None = None
    radio_crc_ok: int | None = None
    radio_crc_bad: int | None = None
    outbox_bytes: int | None = None
    outbox_max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Assessment:
    """The state and, for ``offline`` and ``degraded``, the reasons in words."""

    state: GatewayState
    reasons: tuple[str, ...] = ()


def assess(
    facts: GatewayFacts, now: float, thresholds: HealthThresholds | None = None
) -> Assessment:
    """The gateway's health state at ``now``."""
    limits = thresholds or HealthThresholds()
    if facts.last_seen is None and facts.state_online is None:
        return Assessment(GatewayState.NEVER_SEEN)
    # The Last Will: the broker published "offline" for it. A message heard after the will
    # (the gateway reconnected) overrides it.
    if (
        facts.state_online is False
        and facts.state_at is not None
        and (facts.last_seen is None or facts.last_seen <= facts.state_at)
    ):
        return Assessment(GatewayState.OFFLINE, ("the gateway's last will reported it offline",))
    if facts.last_seen is None:
        return Assessment(GatewayState.NEVER_SEEN)
    interval = facts.heartbeat_interval_s or limits.default_heartbeat_interval_s
    silent_s = now - facts.last_seen
    if silent_s > limits.missed_heartbeats_offline * interval:
        return Assessment(
            GatewayState.OFFLINE,
            (
                f"nothing heard for {silent_s:.0f} s, more than {limits.missed_heartbeats_offline}"
                f" heartbeat intervals of {interval} s",
            ),
        )
    reasons: list[str] = []
    if facts.outbox_depth is not None and facts.outbox_depth > limits.outbox_depth_max:
        reasons.append(
            f"outbox holds {facts.outbox_depth} entries, above {limits.outbox_depth_max}"
        )
    if (
        facts.outbox_oldest_age_s is not None
        and facts.outbox_oldest_age_s > limits.outbox_oldest_age_max_s
    ):
        reasons.append(
            f"oldest outbox entry is {facts.outbox_oldest_age_s} s old, above "
            f"{limits.outbox_oldest_age_max_s} s"
        )
    if facts.outbox_bytes is not None and facts.outbox_max_bytes:
        fill = facts.outbox_bytes / facts.outbox_max_bytes
        if fill >= limits.outbox_fill_max:
            reasons.append(
                f"outbox at {fill:.0%} of its {facts.outbox_max_bytes // (1024 * 1024)} MiB bound,"
                f" {limits.outbox_fill_max:.0%} or more: the oldest data is evicted at 100 %"
            )
    ok, bad = facts.radio_crc_ok or 0, facts.radio_crc_bad or 0
    if ok + bad >= limits.radio_crc_min_frames and ok + bad > 0:
        rate = bad / (ok + bad)
        if rate > limits.radio_crc_error_rate_max:
            reasons.append(
                f"radio CRC error rate {rate:.0%} above {limits.radio_crc_error_rate_max:.0%}"
            )
    if reasons:
        return Assessment(GatewayState.DEGRADED, tuple(reasons))
    return Assessment(GatewayState.ONLINE)
