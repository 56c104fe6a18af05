"""Alerts: rules over the fleet's stored facts that open, update and resolve by themselves.

A rule (:class:`AlertRule`) watches one measured value per subject (a gateway or a device):
gateway offline, device silent, battery low, outbox backlog, CPU temperature, CPU throttling,
radio CRC error rate (:data:`KINDS`). It opens an alert when the value crosses its
``threshold`` and has stayed across it for ``for_s`` seconds, and resolves it only when the
value comes back past a second threshold, ``clear``: between the two nothing changes, so a
value hovering at the threshold does not open and close an alert every evaluation
(hysteresis). Battery is the one value that alerts *below* its threshold.

The evaluator (:class:`AlertEvaluator`) is given the store and "now" and reads no clock
itself: the service (:class:`AlertService`) calls it every ``interval_s`` seconds, tests call
it with a fake clock. Every alert is a row of ``alerts`` with a history in ``alert_events``
(``opened``, ``value_changed``, ``acknowledged`` with who and the comment, ``resolved``); a
unique ``open_key`` keeps one open alert per (rule, subject) even with several fleet
processes evaluating, and a breach still inside its ``for_s`` waits in ``alert_pending``, so
a restart does not start the wait over. Nothing of this lives in process memory that another
replica would need (ARCHITECTURE.md, "Scale path"); the only memory, the per-device interval
cache, is rebuilt from the database.

Device silent: a device is silent for ``k`` of its reporting intervals, and the interval is,
first found of: the ``report_interval_s`` the device itself last reported in a status message
(FPort 20: it is what the device runs with, after any settings downlink), the interval
configured for its profile (``[profiles.<id>]`` in the config file: the codec profiles carry
none), or the longest gap between its last :data:`INTERVAL_WINDOW` readings (event-driven
uplinks, a parking bay changing, make gaps shorter than the interval, never longer). The alert
says which (``interval_source``: ``reported``, ``profile``, ``observed``).

Radio CRC errors: the gateway's counters are cumulative since its agent started, so the rate
is judged over windows of recent frames (:func:`radio_window`), where each starts kept in
``alert_radio_windows``.

Defaults (:data:`DEFAULT_RULES`) suit a city LoRaWAN network of Raspberry Pi gateways and
battery sensors; a TOML file overrides them (:func:`load_config`, docs/fleet-alerts.md).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import re
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Final, Literal, Self, get_args

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from owlgate.codecs.health import throttle_flags

from . import audit
from .auth import Principal, requires
from .health import DEFAULT_HEARTBEAT_INTERVAL_S, GatewayState, HealthThresholds, assess
from .notify import Notification, Notifier, NotifyConfig, parse_notify_config
from .schema import migration
from .sql import DataRefused, Sql, SqlError
from .store import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    ConflictError,
    Device,
    FleetError,
    Gateway,
    InvalidError,
    NotFoundError,
    Store,
)

log = logging.getLogger(__name__)

Kind = Literal[
    "gateway_offline",
    "device_silent",
    "battery_low",
    "outbox_backlog",
    "cpu_temperature",
    "cpu_throttled",
    "radio_crc_errors",
]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)
Severity = Literal["critical", "warning", "info"]
SEVERITIES: Final[tuple[Severity, ...]] = get_args(Severity)
#: ``open``: needs someone; ``acknowledged``: still open, someone is on it; ``resolved``: over.
AlertState = Literal["open", "acknowledged", "resolved"]
ALERT_STATES: Final[tuple[AlertState, ...]] = get_args(AlertState)
EventKind = Literal["opened", "value_changed", "acknowledged", "resolved"]
IntervalSource = Literal["reported", "profile", "observed"]

#: Kinds whose alert opens when the value goes *below* the threshold.
_BELOW: Final = frozenset({"battery_low"})
#: Kinds about a device; every other kind is about a gateway.
_DEVICE_KINDS: Final = frozenset({"device_silent", "battery_low"})
#: What each kind measures, in words and units (shown by the API and the docs).
UNITS: Final[Mapping[Kind, str]] = {
    "gateway_offline": "heartbeat intervals without a message",
    "device_silent": "reporting intervals without an uplink",
    "battery_low": "mV",
    "outbox_backlog": "s, age of the oldest outbox entry",
    "cpu_temperature": "degC",
    "cpu_throttled": "1 while the Pi reports a throttle flag now, else 0",
    "radio_crc_errors": "fraction of frames with a bad CRC, over windows of at least 50 frames",
}

#: Readings looked at to find a device's reporting interval.
INTERVAL_WINDOW: Final = 16
#: The shortest reporting interval a built-in profile can be set to (settings table).
MIN_REPORT_INTERVAL_S: Final = 60.0
DEFAULT_EVALUATION_INTERVAL_S: Final = 60.0
_PAGE: Final = 1000
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_COMMENT_MAX: Final = 2000


class AlertConfigError(FleetError):
    """The alert configuration file is not valid: the message names the file and the key."""


# --- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRule:
    """One rule: opens past ``threshold`` held ``for_s`` seconds, resolves past ``clear``.

    ``change_step``: a ``value_changed`` event is written when the open alert's value has
    moved by at least this much since the last event (0: never; the alert's current value is
    kept up to date all the same).
    """

    name: str
    kind: Kind
    threshold: float
    clear: float
    for_s: float = 0.0
    severity: Severity = "warning"
    change_step: float = 0.0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"rule name {self.name!r}: lowercase letters, digits, '_', '.', '-', 1..64"
            )
        if self.kind not in KINDS:
            raise ValueError(f"rule {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"rule {self.name}: severity must be one of {SEVERITIES}")
        for what, value in (("threshold", self.threshold), ("clear", self.clear)):
            if not math.isfinite(value):
                raise ValueError(f"rule {self.name}: {what} must be a finite number")
        if self.for_s < 0 or self.change_step < 0:
            raise ValueError(f"rule {self.name}: for_s and change_step must be >= 0")
        if self.below and self.clear < self.threshold:
            raise ValueError(
                f"rule {self.name}: clear ({self.clear}) must be at or above threshold "
                f"({self.threshold}): {self.kind} alerts below its threshold"
            )
        if not self.below and self.clear > self.threshold:
            raise ValueError(
                f"rule {self.name}: clear ({self.clear}) must be at or below threshold "
                f"({self.threshold})"
            )

    @property
    def below(self) -> bool:
        return self.kind in _BELOW

    @property
    def subject_kind(self) -> Literal["gateway", "device"]:
        return "device" if self.kind in _DEVICE_KINDS else "gateway"

    def breached(self, measured: Measurement) -> bool:
        if measured.forced:
            return True
        if self.below:
            return measured.value < self.threshold
        return measured.value > self.threshold

    def cleared(self, measured: Measurement) -> bool:
        if measured.forced:
            return False
        if self.below:
            return measured.value >= self.clear
        return measured.value <= self.clear


#: The default rules. Gateway offline follows the fleet's health rule (2 heartbeat
#: intervals, or the Last Will); a Raspberry Pi 4 starts soft throttling at 80 degC and
#: under-voltage flickers, hence the waits; a 3.6 V lithium primary cell (the usual parking
#: and bin sensor battery) is near its end under 3.0 V, and reads lower in cold nights, hence
#: 200 mV of hysteresis.
DEFAULT_RULES: Final[tuple[AlertRule, ...]] = (
    AlertRule(
        name="gateway_offline", kind="gateway_offline", threshold=2, clear=1, severity="critical"
    ),
    AlertRule(name="device_silent", kind="device_silent", threshold=3, clear=1.5),
    AlertRule(name="battery_low", kind="battery_low", threshold=3000, clear=3200, change_step=100),
    AlertRule(
        name="outbox_backlog",
        kind="outbox_backlog",
        threshold=600,
        clear=120,
        for_s=120,
        change_step=600,
    ),
    AlertRule(
        name="cpu_temperature",
        kind="cpu_temperature",
        threshold=80,
        clear=75,
        for_s=300,
        change_step=2,
    ),
    AlertRule(name="cpu_throttled", kind="cpu_throttled", threshold=0, clear=0, for_s=600),
    AlertRule(
        name="radio_crc_errors",
        kind="radio_crc_errors",
        threshold=0.2,
        clear=0.1,
        for_s=900,
        severity="info",
        change_step=0.05,
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertConfig:
    """Rules, how often to evaluate them, reporting intervals per device profile, and the
    notification channels."""

    rules: tuple[AlertRule, ...] = DEFAULT_RULES
    interval_s: float = DEFAULT_EVALUATION_INTERVAL_S
    #: Profile id -> reporting interval in seconds, for device_silent.
    profile_intervals: Mapping[str, float] = field(default_factory=dict)
    #: Offline and degraded as the dashboard judges them (radio CRC minimum frames).
    health: HealthThresholds = field(default_factory=HealthThresholds)
    notify: NotifyConfig = field(default_factory=NotifyConfig)

    def __post_init__(self) -> None:
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        if not self.interval_s > 0:
            raise ValueError("interval_s must be above 0")

    def rule(self, name: str) -> AlertRule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise NotFoundError(f"no alert rule {name!r}")


_RULE_KEYS: Final = {
    "kind",
    "threshold",
    "clear",
    "for_s",
    "severity",
    "change_step",
    "enabled",
}
_TOP_KEYS: Final = {"interval_s", "rules", "profiles", "notify"}


def load_config(path: Path | None) -> AlertConfig:
    """The configuration in the TOML file at ``path`` over the defaults (None: the
    defaults); AlertConfigError naming the file and key for anything wrong."""
    if path is None:
        return AlertConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise AlertConfigError(f"{path}: cannot read: {err.strerror or err}") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise AlertConfigError(f"{path}: not TOML: {err}") from err
    return parse_config(data, str(path))


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> AlertConfig:
    """An :class:`AlertConfig` from parsed TOML ``data`` (``source`` names it in errors).

    ``[rules.<name>]`` with a default rule's name changes the fields it gives; with a new
    name it adds a rule (``kind`` required); ``enabled = false`` drops a rule.
    """
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise AlertConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known {_TOP_KEYS}")
    interval = _number(data.get("interval_s", DEFAULT_EVALUATION_INTERVAL_S), source, "interval_s")
    if interval <= 0:
        raise AlertConfigError(f"{source}: interval_s must be above 0, got {interval}")
    rules = {rule.name: rule for rule in DEFAULT_RULES}
    tables = data.get("rules", {})
    if not isinstance(tables, Mapping):
        raise AlertConfigError(f"{source}: rules must be a table of [rules.<name>] tables")
    for name, table in tables.items():
        key = f"rules.{name}"
        if not isinstance(table, Mapping):
            raise AlertConfigError(f"{source}: {key} must be a table")
        bad = set(table) - _RULE_KEYS
        if bad:
            raise AlertConfigError(f"{source}: {key}: unknown key(s) {sorted(bad)}")
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            raise AlertConfigError(f"{source}: {key}.enabled must be true or false")
        if not enabled:
            rules.pop(name, None)
            continue
        base = rules.get(name)
        kind = table.get("kind", None if base is None else base.kind)
        if kind not in KINDS:
            raise AlertConfigError(
                f"{source}: {key}.kind must be one of {list(KINDS)}, got {kind!r}"
                + (" (a new rule needs a kind)" if base is None else "")
            )
        if base is not None and kind != base.kind:
            raise AlertConfigError(
                f"{source}: {key}.kind: the default rule {name} is {base.kind}; "
                "give the new rule another name"
            )
        values: dict[str, Any] = {}
        for number in ("threshold", "clear", "for_s", "change_step"):
            if number in table:
                values[number] = _number(table[number], source, f"{key}.{number}")
            elif base is None and number in ("threshold", "clear"):
                raise AlertConfigError(f"{source}: {key}.{number} is required for a new rule")
        if "severity" in table:
            values["severity"] = table["severity"]
        try:
            if base is None:
                rules[name] = AlertRule(name=name, kind=kind, **values)
            else:
                rules[name] = replace(base, **values)
        except (ValueError, TypeError) as err:
            raise AlertConfigError(f"{source}: {key}: {err}") from err
    profiles: dict[str, float] = {}
    profile_tables = data.get("profiles", {})
    if not isinstance(profile_tables, Mapping):
        raise AlertConfigError(f"{source}: profiles must be a table of [profiles.<id>] tables")
    for profile_id, table in profile_tables.items():
        key = f"profiles.{profile_id}"
        if not isinstance(table, Mapping) or set(table) != {"report_interval_s"}:
            raise AlertConfigError(f"{source}: {key} must hold exactly report_interval_s")
        seconds = _number(table["report_interval_s"], source, f"{key}.report_interval_s")
        if seconds < MIN_REPORT_INTERVAL_S:
            raise AlertConfigError(
                f"{source}: {key}.report_interval_s must be >= {MIN_REPORT_INTERVAL_S:.0f}"
            )
        profiles[profile_id] = seconds
    notify_table = data.get("notify", {})
    if not isinstance(notify_table, Mapping):
        raise AlertConfigError(f"{source}: notify must be a table")
    notify = parse_notify_config(notify_table, source)
    return AlertConfig(
        rules=tuple(rules.values()),
        interval_s=interval,
        profile_intervals=profiles,
        notify=notify,
    )


def _number(value: object, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AlertConfigError(f"{source}: {key} must be a number, got {value!r}")
    return float(value)


# --- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """A rule's value for one subject now. ``forced``: breached whatever the value (the
    gateway's Last Will said offline)."""

    value: float
    message: str
    forced: bool = False
    details: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceInterval:
    """A device's expected reporting interval and where it came from."""

    seconds: float
    source: IntervalSource


def gateway_subject(gateway_id: str) -> str:
    return f"gateway:{gateway_id}"


def device_subject(dev_eui: str) -> str:
    return f"device:{dev_eui}"


def _measure_gateway(
    rule: AlertRule, gateway: Gateway, now: float, limits: HealthThresholds
) -> Measurement | None:
    facts = gateway.facts
    gid = gateway.id
    if rule.kind == "gateway_offline":
        if facts.last_seen is None and facts.state_online is None:
            return None
        interval = facts.heartbeat_interval_s or DEFAULT_HEARTBEAT_INTERVAL_S
        heard = facts.last_seen if facts.last_seen is not None else facts.state_at
        silent_s = max(0.0, now - (heard or now))
        missed = round(silent_s / interval, 3)
        details = {"silent_s": round(silent_s, 1), "heartbeat_interval_s": interval}
        will = (
            facts.state_online is False
            and facts.state_at is not None
            and (facts.last_seen is None or facts.last_seen <= facts.state_at)
        )
        if will:
            return Measurement(
                missed, f"gateway {gid} offline: its last will reported it offline", True, details
            )
        return Measurement(
            missed,
            f"gateway {gid}: nothing heard for {silent_s:.0f} s ({missed:g} heartbeat intervals"
            f" of {interval} s)",
            details=details,
        )
    # The other gateway values come from its last health message: judged only while that
    # message is current. An offline gateway's old figures neither open nor resolve anything.
    if assess(facts, now, limits).state in (GatewayState.OFFLINE, GatewayState.NEVER_SEEN):
        return None
    health = gateway.last_health
    if health is None:
        return None
    if rule.kind == "outbox_backlog":
        depth = facts.outbox_depth or 0
        age = float(facts.outbox_oldest_age_s or 0) if depth else 0.0
        return Measurement(
            age,
            f"gateway {gid}: oldest of {depth} outbox entries is {age:.0f} s old",
            details={"outbox_depth": depth},
        )
    if rule.kind == "cpu_temperature":
        temp = health.get("cpu_temp_c")
        if not isinstance(temp, int | float) or isinstance(temp, bool):
            return None
        return Measurement(float(temp), f"gateway {gid}: CPU at {temp:.1f} degC")
    if rule.kind == "cpu_throttled":
        bits = health.get("throttled")
        if not isinstance(bits, int) or isinstance(bits, bool):
            return None
        flags = throttle_flags(bits)
        now_flags = flags.get("now")
        named = ", ".join(now_flags) if isinstance(now_flags, list) and now_flags else "none"
        return Measurement(
            1.0 if bits & 0xF else 0.0,
            f"gateway {gid}: throttle flags now: {named} ({flags['bits']})",
            details={"throttled": flags["bits"]},
        )
    raise AssertionError(f"not a gateway kind: {rule.kind}")


@dataclass(frozen=True, slots=True)
class RadioWindow:
    """A gateway's CRC window: the cumulative counters where the current window starts, and
    the error rate and frame count of the last complete one."""

    crc_ok: int
    crc_bad: int
    rate: float | None
    frames: int


def radio_window(
    gateway: Gateway, start: RadioWindow | None, min_frames: int
) -> tuple[Measurement | None, RadioWindow | None]:
    """The CRC error rate over the frames since ``start`` once there are ``min_frames`` of
    them (then the next window starts here), else the last complete window's; and the window
    to store (None: unchanged).

    The gateway's counters are cumulative since its agent started, and a rate since then
    would hardly move after days of clean traffic when interference begins: the windows
    judge what the radio hears now.
    """
    ok, bad = gateway.facts.radio_crc_ok, gateway.facts.radio_crc_bad
    if ok is None or bad is None:
        return None, None
    base = start or RadioWindow(0, 0, None, 0)
    if ok < base.crc_ok or bad < base.crc_bad:
        # The agent restarted and its counters with it: the window starts from zero.
        base = RadioWindow(0, 0, base.rate, base.frames)
    frames = (ok - base.crc_ok) + (bad - base.crc_bad)
    store: RadioWindow | None
    if frames >= max(1, min_frames):
        store = RadioWindow(ok, bad, round((bad - base.crc_bad) / frames, 4), frames)
        current = store
    else:
        store = base if base != start else None
        current = base
    if current.rate is None:
        return None, store
    return (
        Measurement(
            current.rate,
            f"gateway {gateway.id}: {current.rate:.0%} of {current.frames} frames had a bad CRC",
            details={"window_frames": current.frames},
        ),
        store,
    )


@migration("0201_alert_radio_windows")
def _radio_windows_schema(sql: Sql) -> None:
    sql.execute(
        sql.ddl(
            "CREATE TABLE alert_radio_windows (gateway_id TEXT PRIMARY KEY, "
            "crc_ok {int} NOT NULL, crc_bad {int} NOT NULL, rate {float}, "
            "frames {int} NOT NULL)"
        )
    )


# --- stored alerts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertEvent:
    """One entry of an alert's history."""

    id: int
    at: float
    event: EventKind
    value: float | None
    message: str
    actor: str | None
    comment: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """An alert as stored; ``history`` is filled by :func:`get_alert` only."""

    id: int
    rule: str
    kind: Kind
    subject: str
    severity: Severity
    state: AlertState
    value: float | None
    threshold: float
    clear: float
    message: str
    details: Mapping[str, object]
    opened_at: float
    updated_at: float
    resolved_at: float | None
    acknowledged_at: float | None
    acknowledged_by: str | None
    ack_comment: str | None
    history: tuple[AlertEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class AlertChange:
    """An alert that opened or resolved in an evaluation: what the notifier is given."""

    event: Literal["opened", "resolved"]
    alert: Alert


@migration("0200_alerts")
def _alerts_schema(sql: Sql) -> None:
    # open_key is "<rule>|<subject>" while the alert is open or acknowledged and NULL once
    # resolved: the UNIQUE constraint (NULLs never collide, on both databases) is what keeps
    # one open alert per pair when two fleet processes evaluate at once.
    sql.execute(
        sql.ddl(
            "CREATE TABLE alerts ("
            "id {serial}, rule TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, "
            "severity TEXT NOT NULL, state TEXT NOT NULL, open_key TEXT UNIQUE, "
            "value {float}, event_value {float}, threshold {float} NOT NULL, "
            "clear_threshold {float} NOT NULL, message TEXT NOT NULL, "
            "details_json TEXT NOT NULL, opened_at {float} NOT NULL, "
            "updated_at {float} NOT NULL, resolved_at {float}, acknowledged_at {float}, "
            "acknowledged_by TEXT, ack_comment TEXT)"
        )
    )
    sql.execute("CREATE INDEX alerts_by_state ON alerts (state, id)")
    sql.execute("CREATE INDEX alerts_by_subject ON alerts (subject, id)")
    sql.execute("CREATE INDEX alerts_by_rule_state ON alerts (rule, state)")
    sql.execute(
        sql.ddl(
            "CREATE TABLE alert_events ("
            "id {serial}, alert_id {int} NOT NULL REFERENCES alerts (id), at {float} NOT NULL, "
            "event TEXT NOT NULL, value {float}, message TEXT NOT NULL, actor TEXT, "
            "comment TEXT)"
        )
    )
    sql.execute("CREATE INDEX alert_events_by_alert ON alert_events (alert_id, id)")
    sql.execute(
        sql.ddl(
            "CREATE TABLE alert_pending (rule TEXT NOT NULL, subject TEXT NOT NULL, "
            "since {float} NOT NULL, value {float}, PRIMARY KEY (rule, subject))"
        )
    )


def _alert(row: Mapping[str, Any], history: Sequence[AlertEvent] = ()) -> Alert:
    return Alert(
        id=int(row["id"]),
        rule=row["rule"],
        kind=row["kind"],
        subject=row["subject"],
        severity=row["severity"],
        state=row["state"],
        value=row["value"],
        threshold=row["threshold"],
        clear=row["clear_threshold"],
        message=row["message"],
        details=json.loads(row["details_json"]),
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        resolved_at=row["resolved_at"],
        acknowledged_at=row["acknowledged_at"],
        acknowledged_by=row["acknowledged_by"],
        ack_comment=row["ack_comment"],
        history=tuple(history),
    )


def _add_event(
    db: Sql,
    alert_id: int,
    at: float,
    event: EventKind,
    message: str,
    *,
    value: float | None = None,
    actor: str | None = None,
    comment: str | None = None,
) -> None:
    db.execute(
        "INSERT INTO alert_events (alert_id, at, event, value, message, actor, comment) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [alert_id, at, event, value, message, actor, comment],
    )


def _sql(store: Store) -> Sql:
    sql: Sql = store.sql
    return sql


def get_alert(store: Store, alert_id: int) -> Alert:
    """One alert with its history, oldest event first."""
    sql = _sql(store)
    rows = sql.query("SELECT * FROM alerts WHERE id = ?", [alert_id])
    if not rows:
        raise NotFoundError(f"no alert {alert_id}")
    events = [
        AlertEvent(
            id=int(row["id"]),
            at=row["at"],
            event=row["event"],
            value=row["value"],
            message=row["message"],
            actor=row["actor"],
            comment=row["comment"],
        )
        for row in sql.query(
            "SELECT * FROM alert_events WHERE alert_id = ? ORDER BY id", [alert_id]
        )
    ]
    return _alert(rows[0], events)


@dataclass(frozen=True, slots=True)
class AlertPage:
    items: list[Alert]
    next: str | None


def list_alerts(
    store: Store,
    *,
    states: Sequence[AlertState] = (),
    severities: Sequence[Severity] = (),
    subject: str | None = None,
    kind: Kind | None = None,
    rule: str | None = None,
    limit: int = DEFAULT_PAGE_LIMIT,
    after: str | None = None,
) -> AlertPage:
    """Alerts newest first, filtered; ``after`` is the ``next`` cursor of the previous page."""
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidError(f"limit must be 1 .. {MAX_PAGE_LIMIT}, got {limit}")
    where: list[str] = []
    params: list[Any] = []
    if states:
        where.append(f"state IN ({', '.join('?' * len(states))})")
        params += list(states)
    if severities:
        where.append(f"severity IN ({', '.join('?' * len(severities))})")
        params += list(severities)
    for column, value in (("subject", subject), ("kind", kind), ("rule", rule)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if after is not None:
        if not (after.isascii() and after.isdigit()):
            raise InvalidError(f"not an alerts cursor: {after!r}")
        where.append("id < ?")
        params.append(int(after))
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = _sql(store).query(
        f"SELECT * FROM alerts {clause}ORDER BY id DESC LIMIT ?", [*params, limit + 1]
    )
    items = [_alert(row) for row in rows[:limit]]
    return AlertPage(items, str(items[-1].id) if len(rows) > limit else None)


def acknowledge(
    store: Store, alert_id: int, *, actor: Principal | str, comment: str, at: float
) -> Alert:
    """Mark an open alert acknowledged by ``actor`` with ``comment``: it stays open (it
    resolves when its value does) and the history and the audit log say who and why.
    ConflictError for an alert already acknowledged or resolved."""
    comment = comment.strip()
    if not comment:
        raise InvalidError("an acknowledgement needs a comment saying what is being done")
    if len(comment) > _COMMENT_MAX:
        raise InvalidError(f"the comment is longer than {_COMMENT_MAX} characters")
    who = actor.name if isinstance(actor, Principal) else actor
    with _sql(store).transaction() as db:
        rows = db.query("SELECT * FROM alerts WHERE id = ?", [alert_id])
        if not rows:
            raise NotFoundError(f"no alert {alert_id}")
        row = rows[0]
        if row["state"] == "resolved":
            raise ConflictError(f"alert {alert_id} is already resolved")
        changed = db.execute(
            "UPDATE alerts SET state = 'acknowledged', acknowledged_at = ?, "
            "acknowledged_by = ?, ack_comment = ?, updated_at = ? "
            "WHERE id = ? AND state = 'open'",
            [at, who, comment, at, alert_id],
        )
        if changed == 0:
            raise ConflictError(
                f"alert {alert_id} was already acknowledged by {row['acknowledged_by']}"
            )
        _add_event(
            db, alert_id, at, "acknowledged", f"acknowledged by {who}", actor=who, comment=comment
        )
        audit.record_event(
            db,
            actor=actor,
            action="alert.acknowledged",
            target=f"alert:{alert_id}",
            details={"rule": row["rule"], "subject": row["subject"], "comment": comment},
            at=at,
        )
    return get_alert(store, alert_id)


def alert_counts(store: Store) -> dict[tuple[AlertState, Severity], int]:
    """Alerts by (state, severity), every pair present (0 when none), for ``/metrics``."""
    counts = {(state, severity): 0 for state in ALERT_STATES for severity in SEVERITIES}
    for state, severity, count in _sql(store).query_tuples(
        "SELECT state, severity, COUNT(*) FROM alerts GROUP BY state, severity"
    ):
        if (state, severity) in counts:
            counts[(state, severity)] = int(count)
    return counts


def alert_metric_lines(store: Store) -> list[str]:
    """``owlgate_fleet_alerts{state=...,severity=...}`` (gauge) in the Prometheus text
    format, for :func:`owlgate.fleet.metrics.render_metrics` to append."""
    name = "owlgate_fleet_alerts"
    lines = [f"# HELP {name} alerts by state and severity", f"# TYPE {name} gauge"]
    lines += [
        f'{name}{{state="{state}",severity="{severity}"}} {count}'
        for (state, severity), count in alert_counts(store).items()
    ]
    return lines


# --- the evaluator -----------------------------------------------------------------------------


@dataclass(slots=True)
class EvaluatorCounters:
    evaluations: int = 0
    opened: int = 0
    resolved: int = 0
    value_changes: int = 0
    #: Another fleet process opened the same (rule, subject) first.
    open_conflicts: int = 0
    #: Devices left out of device_silent: no reporting interval known yet.
    devices_without_interval: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "evaluations": self.evaluations,
            "opened": self.opened,
            "resolved": self.resolved,
            "value_changes": self.value_changes,
            "open_conflicts": self.open_conflicts,
            "devices_without_interval": self.devices_without_interval,
        }


class AlertEvaluator:
    """Evaluates the rules of ``config`` over ``store`` at the "now" it is given."""

    def __init__(
        self, store: Store, config: AlertConfig | None = None, *, notifier: Notifier | None = None
    ) -> None:
        self.store = store
        self.config = config or AlertConfig()
        #: Given, each change's notification is written to its outbox in the evaluation's
        #: transaction: an alert change and its notification are stored together or not at all.
        self.notifier = notifier
        self.counters = EvaluatorCounters()
        # DevEUI -> (last_seen the interval was found at, the interval): recomputed only when
        # a device has sent something new.
        self._intervals: dict[str, tuple[float, DeviceInterval | None]] = {}
        # CRC windows that moved in the pass being evaluated, written in its transaction.
        self._radio_updates: dict[str, RadioWindow] = {}

    def evaluate(self, now: float) -> list[AlertChange]:
        """One pass over every rule and subject, in one transaction; returns the alerts that
        opened or resolved (with a notifier, their notifications are in its outbox, committed
        with them)."""
        measured = self._measure_all(now)
        changes: list[AlertChange] = []
        with _sql(self.store).transaction() as db:
            for rule in self.config.rules:
                changes += self._apply(db, rule, measured[rule.name], now)
            changes += self._retire(db, now)
            if self._radio_updates:
                db.executemany(
                    "INSERT INTO alert_radio_windows (gateway_id, crc_ok, crc_bad, rate, frames) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE SET "
                    "crc_ok = excluded.crc_ok, crc_bad = excluded.crc_bad, "
                    "rate = excluded.rate, frames = excluded.frames",
                    [
                        (gid, w.crc_ok, w.crc_bad, w.rate, w.frames)
                        for gid, w in self._radio_updates.items()
                    ],
                )
            if self.notifier is not None:
                for change in changes:
                    self.notifier.enqueue(db, notification(change))
        self.counters.evaluations += 1
        self.counters.opened += sum(1 for c in changes if c.event == "opened")
        self.counters.resolved += sum(1 for c in changes if c.event == "resolved")
        return changes

    def device_interval(self, device: Device) -> DeviceInterval | None:
        """The device's expected reporting interval (see the module docstring), or None
        before it has sent enough to tell."""
        if device.last_seen is None:
            return None
        cached = self._intervals.get(device.dev_eui)
        if cached is not None and cached[0] == device.last_seen:
            return cached[1]
        found = self._find_interval(device)
        self._intervals[device.dev_eui] = (device.last_seen, found)
        return found

    def _find_interval(self, device: Device) -> DeviceInterval | None:
        rows = _sql(self.store).query_tuples(
            "SELECT time_s, values_json FROM readings WHERE dev_eui = ? "
            "ORDER BY time_s DESC, id DESC LIMIT ?",
            [device.dev_eui, INTERVAL_WINDOW],
        )
        for _, values_json in rows:
            reported = _reported_interval(values_json)
            if reported is not None:
                return DeviceInterval(max(MIN_REPORT_INTERVAL_S, reported), "reported")
        configured = self.config.profile_intervals.get(device.profile_id)
        if configured is not None:
            return DeviceInterval(configured, "profile")
        times = [float(t) for t, _ in rows]
        gaps = [a - b for a, b in itertools.pairwise(times) if a - b > 0]
        if len(gaps) < 2:
            return None
        return DeviceInterval(max(MIN_REPORT_INTERVAL_S, max(gaps)), "observed")

    def _measure_all(self, now: float) -> dict[str, dict[str, Measurement | None]]:
        rules = self.config.rules
        measured: dict[str, dict[str, Measurement | None]] = {rule.name: {} for rule in rules}
        gateway_rules = [rule for rule in rules if rule.subject_kind == "gateway"]
        device_rules = [rule for rule in rules if rule.subject_kind == "device"]
        limits = self.config.health
        self._radio_updates = {}
        windows: dict[str, RadioWindow] = {}
        if any(rule.kind == "radio_crc_errors" for rule in gateway_rules):
            windows = {
                row[0]: RadioWindow(int(row[1]), int(row[2]), row[3], int(row[4]))
                for row in _sql(self.store).query_tuples(
                    "SELECT gateway_id, crc_ok, crc_bad, rate, frames FROM alert_radio_windows"
                )
            }
        if gateway_rules:
            for gateway in _every(self.store.gateways):
                subject = gateway_subject(gateway.id)
                for rule in gateway_rules:
                    if rule.kind != "radio_crc_errors":
                        measured[rule.name][subject] = _measure_gateway(rule, gateway, now, limits)
                        continue
                    # Judged while the gateway is live, like its other health figures.
                    state = assess(gateway.facts, now, limits).state
                    if state in (GatewayState.OFFLINE, GatewayState.NEVER_SEEN):
                        measured[rule.name][subject] = None
                        continue
                    value, window = radio_window(
                        gateway, windows.get(gateway.id), limits.radio_crc_min_frames
                    )
                    measured[rule.name][subject] = value
                    if window is not None:
                        self._radio_updates[gateway.id] = window
        if device_rules:
            without = 0
            for device in _every(self.store.devices):
                subject = device_subject(device.dev_eui)
                for rule in device_rules:
                    if rule.kind == "battery_low":
                        measured[rule.name][subject] = _measure_battery(device)
                        continue
                    interval = self.device_interval(device)
                    if interval is None and device.last_seen is not None:
                        without += 1
                    measured[rule.name][subject] = _measure_silence(device, interval, now)
            self.counters.devices_without_interval = without
        return measured

    def _apply(
        self,
        db: Sql,
        rule: AlertRule,
        subjects: Mapping[str, Measurement | None],
        now: float,
    ) -> list[AlertChange]:
        open_rows = {
            row["subject"]: row
            for row in db.query(
                "SELECT * FROM alerts WHERE rule = ? AND state <> 'resolved'", [rule.name]
            )
        }
        pending = {
            row[0]: float(row[1])
            for row in db.query_tuples(
                "SELECT subject, since FROM alert_pending WHERE rule = ?", [rule.name]
            )
        }
        changes: list[AlertChange] = []
        updates: list[tuple[Any, ...]] = []
        pending_gone: list[tuple[str, str]] = []
        for subject, measured in subjects.items():
            if measured is None:
                continue
            row = open_rows.get(subject)
            if row is not None:
                if rule.cleared(measured):
                    changes.append(self._resolve(db, row, measured.value, measured.message, now))
                    continue
                step = rule.change_step
                last = row["event_value"]
                if step > 0 and last is not None and abs(measured.value - last) >= step:
                    _add_event(
                        db, row["id"], now, "value_changed", measured.message, value=measured.value
                    )
                    self.counters.value_changes += 1
                    last = measured.value
                if measured.value != row["value"] or measured.message != row["message"]:
                    updates.append(
                        (
                            measured.value,
                            last,
                            measured.message,
                            _details_json(measured),
                            now,
                            row["id"],
                        )
                    )
                continue
            if rule.breached(measured):
                since = pending.get(subject, now)
                if now - since >= rule.for_s:
                    opened = self._open(db, rule, subject, measured, since, now)
                    if opened is not None:
                        changes.append(opened)
                    if subject in pending:
                        pending_gone.append((rule.name, subject))
                elif subject not in pending:
                    db.execute(
                        "INSERT INTO alert_pending (rule, subject, since, value) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (rule, subject) DO NOTHING",
                        [rule.name, subject, now, measured.value],
                    )
            elif subject in pending:
                pending_gone.append((rule.name, subject))
        for subject, row in open_rows.items():
            if subject not in subjects:
                changes.append(
                    self._resolve(
                        db, row, None, f"{subject} is no longer registered: resolved", now
                    )
                )
        pending_gone += [(rule.name, s) for s in pending if s not in subjects]
        if updates:
            db.executemany(
                "UPDATE alerts SET value = ?, event_value = ?, message = ?, details_json = ?, "
                "updated_at = ? WHERE id = ?",
                updates,
            )
        if pending_gone:
            db.executemany("DELETE FROM alert_pending WHERE rule = ? AND subject = ?", pending_gone)
        return changes

    def _retire(self, db: Sql, now: float) -> list[AlertChange]:
        """Resolve the open alerts of rules no longer in the configuration: nothing would
        ever resolve them otherwise."""
        names = [rule.name for rule in self.config.rules]
        clause = f" AND rule NOT IN ({', '.join('?' * len(names))})" if names else ""
        rows = db.query(f"SELECT * FROM alerts WHERE state <> 'resolved'{clause}", names)
        db.execute(f"DELETE FROM alert_pending WHERE 1 = 1{clause}", names)
        return [
            self._resolve(db, row, None, f"rule {row['rule']} is no longer configured", now)
            for row in rows
        ]

    def _open(
        self,
        db: Sql,
        rule: AlertRule,
        subject: str,
        measured: Measurement,
        since: float,
        now: float,
    ) -> AlertChange | None:
        try:
            with db.transaction():
                (alert_id,) = db.query_tuples(
                    "INSERT INTO alerts (rule, kind, subject, severity, state, open_key, value, "
                    "event_value, threshold, clear_threshold, message, details_json, "
                    "opened_at, updated_at) "
                    "VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    [
                        rule.name,
                        rule.kind,
                        subject,
                        rule.severity,
                        f"{rule.name}|{subject}",
                        measured.value,
                        measured.value,
                        rule.threshold,
                        rule.clear,
                        measured.message,
                        _details_json(measured),
                        now,
                        now,
                    ],
                )[0]
                held = f" for {now - since:.0f} s" if rule.for_s else ""
                _add_event(
                    db,
                    int(alert_id),
                    now,
                    "opened",
                    f"{measured.message}{held}",
                    value=measured.value,
                )
        except DataRefused:
            # The unique open_key: another fleet process opened it in the meantime.
            self.counters.open_conflicts += 1
            log.info("alert %s for %s was opened by another fleet process", rule.name, subject)
            return None
        rows = db.query("SELECT * FROM alerts WHERE id = ?", [alert_id])
        log.info("alert opened: %s %s: %s", rule.name, subject, measured.message)
        return AlertChange("opened", _alert(rows[0]))

    def _resolve(
        self, db: Sql, row: Mapping[str, Any], value: float | None, message: str, now: float
    ) -> AlertChange:
        db.execute(
            "UPDATE alerts SET state = 'resolved', open_key = NULL, resolved_at = ?, "
            "updated_at = ?, value = COALESCE(?, value) WHERE id = ?",
            [now, now, value, row["id"]],
        )
        _add_event(db, row["id"], now, "resolved", message, value=value)
        rows = db.query("SELECT * FROM alerts WHERE id = ?", [row["id"]])
        log.info("alert resolved: %s %s: %s", row["rule"], row["subject"], message)
        return AlertChange("resolved", _alert(rows[0]))


def _every(listing: Callable[..., Any]) -> Iterator[Any]:
    after: str | None = None
    while True:
        page = listing(limit=_PAGE, after=after)
        yield from page.items
        if page.next is None:
            return
        after = page.next


def _details_json(measured: Measurement) -> str:
    return json.dumps(dict(measured.details), sort_keys=True)


def _reported_interval(values_json: str) -> float | None:
    if "report_interval_s" not in values_json:
        return None
    try:
        values = json.loads(values_json)
    except ValueError:
        return None
    seconds = values.get("report_interval_s") if isinstance(values, dict) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
        return float(seconds)
    return None


def _measure_battery(device: Device) -> Measurement | None:
    if device.battery_mv is None:
        return None
    return Measurement(
        float(device.battery_mv), f"device {device.dev_eui}: battery at {device.battery_mv} mV"
    )


def _measure_silence(
    device: Device, interval: DeviceInterval | None, now: float
) -> Measurement | None:
    if device.last_seen is None or interval is None:
        return None
    silent_s = max(0.0, now - device.last_seen)
    intervals = round(silent_s / interval.seconds, 3)
    return Measurement(
        intervals,
        f"device {device.dev_eui}: nothing heard for {silent_s:.0f} s ({intervals:g} reporting"
        f" intervals of {interval.seconds:.0f} s, {interval.source})",
        details={
            "silent_s": round(silent_s, 1),
            "interval_s": interval.seconds,
            "interval_source": interval.source,
        },
    )


# --- JSON --------------------------------------------------------------------------------------


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def alert_json(alert: Alert, *, history: bool = False) -> dict[str, Any]:
    """The alert as the API and the notifications show it."""
    body: dict[str, Any] = {
        "id": alert.id,
        "rule": alert.rule,
        "kind": alert.kind,
        "subject": alert.subject,
        "severity": alert.severity,
        "state": alert.state,
        "value": alert.value,
        "threshold": alert.threshold,
        "clear": alert.clear,
        "unit": UNITS[alert.kind],
        "message": alert.message,
        "details": dict(alert.details),
        "opened_at": _iso(alert.opened_at),
        "updated_at": _iso(alert.updated_at),
        "resolved_at": _iso(alert.resolved_at),
        "acknowledged_at": _iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "ack_comment": alert.ack_comment,
    }
    if history:
        body["history"] = [
            {
                "at": _iso(event.at),
                "event": event.event,
                "value": event.value,
                "message": event.message,
                "actor": event.actor,
                "comment": event.comment,
            }
            for event in alert.history
        ]
    return body


def rule_json(rule: AlertRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "kind": rule.kind,
        "subject": rule.subject_kind,
        "direction": "below" if rule.below else "above",
        "threshold": rule.threshold,
        "clear": rule.clear,
        "for_s": rule.for_s,
        "severity": rule.severity,
        "change_step": rule.change_step,
        "unit": UNITS[rule.kind],
    }


def notification(change: AlertChange) -> Notification:
    return Notification(event=f"alert.{change.event}", alert=alert_json(change.alert))


# --- the service -------------------------------------------------------------------------------


class AlertService:
    """Evaluates the rules every ``config.interval_s`` seconds in a worker thread (the
    database calls block); each alert that opened or resolved is written with its
    notifications (the notifier's outbox) in the evaluation's transaction, and the notifier
    delivers them in its own tasks: a slow or failing channel never holds up evaluation, and
    nothing is sent before the alert is stored. A ``notifier`` given must be on the store's
    database (``store.sql``)."""

    name = "alerts"

    def __init__(
        self,
        store: Store,
        config: AlertConfig | None = None,
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or AlertConfig()
        self.notifier = (
            notifier
            if notifier is not None
            else Notifier.from_config(self.config.notify, sql=_sql(store))
        )
        self.evaluator = AlertEvaluator(store, self.config, notifier=self.notifier)
        self.clock = clock
        self.evaluation_errors = 0
        self._task: asyncio.Task[None] | None = None
        self._passes = asyncio.Condition()
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[list[AlertChange]] | None = None

    async def __aenter__(self) -> Self:
        await self.notifier.__aenter__()
        self._task = asyncio.create_task(self._run(), name="owlgate-alerts")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await asyncio.gather(inflight, return_exceptions=True)
        await self.notifier.__aexit__(exc_type, exc, tb)

    async def evaluate_now(self) -> list[AlertChange]:
        """One evaluation at the clock's "now"; the notifier is woken for its changes."""
        async with self._lock:
            # Shielded: cancelling the service (shutdown) must not leave a transaction
            # running in the thread against a store that is about to close;
            # __aexit__ waits for it.
            running = asyncio.ensure_future(
                asyncio.to_thread(self.evaluator.evaluate, self.clock())
            )
            self._inflight = running
            changes = await asyncio.shield(running)
            if changes:
                # Committed by now: the delivery tasks find the rows at once, not at the poll.
                self.notifier.wake()
        async with self._passes:
            self._passes.notify_all()
        return changes

    async def wait_evaluations(self, count: int) -> None:
        """Return once at least ``count`` evaluations have run since the start."""
        async with self._passes:
            await self._passes.wait_for(lambda: self.evaluator.counters.evaluations >= count)

    async def _run(self) -> None:
        while True:
            try:
                await self.evaluate_now()
            except (SqlError, FleetError) as err:
                # The database may be back at the next pass; the alerts wait for it.
                self.evaluation_errors += 1
                log.error("alert evaluation failed: %s", err)
            except Exception:
                # Anything else is a fault here, but a loop that died would stop every alert
                # without a sound: counted, logged with its traceback, and tried again.
                self.evaluation_errors += 1
                log.exception("alert evaluation failed")
            await asyncio.sleep(self.config.interval_s)

    def stats(self) -> dict[str, object]:
        """Evaluation and notification counters (``GET /api/v1/stats``)."""
        return {
            **self.evaluator.counters.as_dict(),
            "evaluation_errors": self.evaluation_errors,
            **self.notifier.stats(),
        }


def alert_service(
    store: Store,
    config: AlertConfig | None = None,
    *,
    notifier: Notifier | None = None,
    clock: Callable[[], float] = time.time,
) -> AlertService:
    """The alert service over ``store``, to enter with ``async with``; as a fleet service
    (:func:`owlgate.fleet.cli.build_server`): ``functools.partial(alert_service,
    config=...)``."""
    return AlertService(store, config, notifier=notifier, clock=clock)


def alert_service_factory(
    config: AlertConfig | None = None, *, clock: Callable[[], float] = time.time
) -> Callable[[Store], AlertService]:
    """:func:`alert_service` as a fleet service for ``build_server(services=[...])``."""
    return functools.partial(alert_service, config=config, clock=clock)


# --- the API -----------------------------------------------------------------------------------


def _app_clock(request: Request) -> Callable[[], float]:
    found = getattr(request.app.state, "clock", None)
    return found if callable(found) else time.time


class Acknowledgement(BaseModel):
    """Who acknowledges comes from the token; the comment says what is being done."""

    comment: str = Field(min_length=1, max_length=_COMMENT_MAX)


#: An alert's id in a path: a positive 64-bit integer (what the database can hold).
AlertId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]


def router(
    config: AlertConfig | None = None, *, clock: Callable[[], float] | None = None
) -> APIRouter:
    """The alert routes under ``/api/v1``: the store is ``request.app.state.store``, "now"
    ``clock`` or else the app's (``request.app.state.clock``)."""
    from .api import API_PREFIX

    rules = config or AlertConfig()
    routes = APIRouter(prefix=API_PREFIX, tags=["alerts"])
    readers = requires("operator", "technician")

    @routes.get("/alerts", summary="Alerts, newest first", dependencies=[readers])
    def list_route(
        request: Request,
        state: Annotated[list[AlertState] | None, Query()] = None,
        severity: Annotated[list[Severity] | None, Query()] = None,
        subject: Annotated[str | None, Query(max_length=100)] = None,
        kind: Annotated[Kind | None, Query()] = None,
        rule: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)] = DEFAULT_PAGE_LIMIT,
        after: Annotated[str | None, Query(max_length=20)] = None,
    ) -> dict[str, Any]:
        page = list_alerts(
            request.app.state.store,
            states=state or (),
            severities=severity or (),
            subject=subject,
            kind=kind,
            rule=rule,
            limit=limit,
            after=after,
        )
        return {"items": [alert_json(a) for a in page.items], "next": page.next}

    @routes.get("/alerts/{alert_id}", summary="One alert with its history", dependencies=[readers])
    def get_route(request: Request, alert_id: AlertId) -> dict[str, Any]:
        return alert_json(get_alert(request.app.state.store, alert_id), history=True)

    @routes.post("/alerts/{alert_id}/acknowledge", summary="Acknowledge an open alert")
    def acknowledge_route(
        request: Request,
        alert_id: AlertId,
        body: Acknowledgement,
        principal: Annotated[Principal, requires("operator")],
    ) -> dict[str, Any]:
        at = clock() if clock is not None else float(_app_clock(request)())
        alert = acknowledge(
            request.app.state.store, alert_id, actor=principal, comment=body.comment, at=at
        )
        return alert_json(alert, history=True)

    @routes.get("/alert-rules", summary="The alert rules in force", dependencies=[readers])
    def rules_route() -> dict[str, Any]:
        return {
            "items": [rule_json(rule) for rule in rules.rules],
            "next": None,
            "interval_s": rules.interval_s,
            "profile_intervals": dict(rules.profile_intervals),
        }

    return routes
