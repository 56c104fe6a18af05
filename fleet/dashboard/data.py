"""What the dashboard's pages show, read from the store in as few queries as each page needs.

Every function takes the store and "now" and returns plain dataclasses; nothing here renders
HTML (:mod:`.pages` does) and nothing reads a clock. The states shown are the fleet's own, not
a second opinion: a gateway's state is :func:`owlgate.fleet.health.assess` of its stored
facts, a sensor is *silent* or *low on battery* when the alert evaluator has an open alert of
that kind for it (the rule, its threshold and its per-device reporting interval are in
:mod:`owlgate.fleet.alerts`), and *never heard* when nothing of it ever arrived.

Scale: the overview reads 1,000 gateways one by one (each needs its state assessed) but the
100,000 sensors only as aggregates: counts in one scan of ``devices``, the plan as a density
grid grouped inside the database. The sensor table is filtered, sorted and paged in SQL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from ..alerts import SEVERITIES, Alert, list_alerts
from ..health import HealthThresholds, assess
from ..rollouts import gateway_config_status, rollout_gateways, rollout_json, rollouts
from ..sql import Sql
from ..store import (
    MAX_PAGE_LIMIT,
    Device,
    Gateway,
    HeardDevice,
    HearingGateway,
    Store,
)
from ..views import gateway_sites

#: Gateway states, worst first (the order of the counts and of "what is wrong").
GATEWAY_STATES: Final = ("offline", "degraded", "never_seen", "online")
SensorState = Literal["silent", "low_battery", "never_heard", "reporting"]
SENSOR_STATES: Final[tuple[SensorState, ...]] = get_args(SensorState)
SEVERITY_ORDER: Final = SEVERITIES
#: The alert kinds that make a sensor's state.
_SILENT, _BATTERY = "device_silent", "battery_low"
#: Rows of the sensor and gateway tables per page.
PAGE_SIZE: Final = 100
#: The plan's density grid is at most this many cells across.
PLAN_CELLS: Final = 48
#: How far back a gateway's and a sensor's page plot by default, and the choices offered.
DEFAULT_HOURS: Final = 24
HOUR_CHOICES: Final = (1, 6, 24, 168)
#: Readings a sensor page plots at most.
MAX_PLOT_READINGS: Final = 5_000


def _open_states() -> tuple[str, str]:
    return ("open", "acknowledged")


def all_gateways(store: Store) -> list[Gateway]:
    """Every registered gateway, by id."""
    found: list[Gateway] = []
    after: str | None = None
    while True:
        page = store.gateways(limit=MAX_PAGE_LIMIT, after=after)
        found += page.items
        if page.next is None:
            return found
        after = page.next


# --- gateways -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayRow:
    """One gateway as its table row shows it."""

    id: str
    name: str
    state: str
    reasons: tuple[str, ...]
    last_seen: float | None
    outbox_depth: int | None
    outbox_oldest_age_s: int | None
    cpu_temp_c: float | None
    config_seq: int | None
    drift: bool
    radio_error_rate: float | None
    zone: str | None
    lat: float | None
    lon: float | None
    label: str | None


def _health_value(gateway: Gateway, key: str) -> Any:
    return None if gateway.last_health is None else gateway.last_health.get(key)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _error_rate(gateway: Gateway) -> float | None:
    """The share of frames with a bad CRC since the agent started (its counters' ratio)."""
    ok, bad = gateway.facts.radio_crc_ok, gateway.facts.radio_crc_bad
    if ok is None or bad is None or ok + bad == 0:
        return None
    return bad / (ok + bad)


def drifting_gateways(sql: Sql) -> set[str]:
    """Gateways whose reported running configuration is not the last one published to them
    (the per-gateway form of :func:`owlgate.fleet.rollouts.drift_count`)."""
    rows = sql.query_tuples(
        "SELECT s.gateway_id FROM gateway_config_status s JOIN config_documents d"
        " ON d.gateway_id = s.gateway_id AND d.seq = (SELECT MAX(seq) FROM config_documents"
        " WHERE gateway_id = s.gateway_id AND state = 'published')"
        " WHERE s.running_hash IS NOT NULL AND s.running_hash <> d.content_hash"
    )
    return {str(row[0]) for row in rows}


def _gateway_sites(sql: Sql) -> dict[str, Mapping[str, Any]]:
    return {site.gateway_id: site.place_json() for site in gateway_sites(sql)}


def _gateway_row(
    gateway: Gateway,
    now: float,
    thresholds: HealthThresholds,
    site: Mapping[str, Any],
    drift: bool,
) -> GatewayRow:
    assessment = assess(gateway.facts, now, thresholds)
    seq = _health_value(gateway, "config_seq")
    return GatewayRow(
        id=gateway.id,
        name=gateway.name,
        state=assessment.state.value,
        reasons=assessment.reasons,
        last_seen=gateway.facts.last_seen,
        outbox_depth=gateway.facts.outbox_depth,
        outbox_oldest_age_s=gateway.facts.outbox_oldest_age_s,
        cpu_temp_c=_number(_health_value(gateway, "cpu_temp_c")),
        config_seq=seq if isinstance(seq, int) else None,
        drift=drift,
        radio_error_rate=_error_rate(gateway),
        zone=site.get("zone"),
        lat=site.get("lat"),
        lon=site.get("lon"),
        label=site.get("label"),
    )


def gateway_rows(store: Store, now: float, thresholds: HealthThresholds) -> list[GatewayRow]:
    """Every gateway with its state and the facts of the table, by id."""
    sites = _gateway_sites(store.sql)
    drift = drifting_gateways(store.sql)
    return [
        _gateway_row(gateway, now, thresholds, sites.get(gateway.id, {}), gateway.id in drift)
        for gateway in all_gateways(store)
    ]


GatewaySort = Literal["state", "name", "last_seen", "backlog", "temperature", "config", "errors"]
GATEWAY_SORTS: Final[tuple[GatewaySort, ...]] = get_args(GatewaySort)


def _none_last(value: float | str | None, descending: bool) -> tuple[int, Any]:
    # None sorts after every value whichever the direction.
    if value is None:
        return (1, 0)
    if isinstance(value, str):
        return (0, value)
    return (0, -value if descending else value)


def sort_gateways(
    rows: Sequence[GatewayRow], sort: GatewaySort, descending: bool
) -> list[GatewayRow]:
    """The rows ordered by a column; ties by id. State sorts worst first."""
    rank = {state: index for index, state in enumerate(GATEWAY_STATES)}

    def key(row: GatewayRow) -> tuple[Any, ...]:
        value: float | str | None
        if sort == "state":
            value = rank.get(row.state, len(rank))
        elif sort == "name":
            value = row.name or row.id
        elif sort == "last_seen":
            value = row.last_seen
        elif sort == "backlog":
            value = row.outbox_depth
        elif sort == "temperature":
            value = row.cpu_temp_c
        elif sort == "config":
            value = row.config_seq
        else:
            value = row.radio_error_rate
        if isinstance(value, str):
            return (_none_last(value, False), row.id)
        return (_none_last(value, descending), row.id)

    ordered = sorted(rows, key=key)
    if descending and sort == "name":
        ordered.reverse()
    return ordered


def filter_gateways(
    rows: Iterable[GatewayRow], *, state: str | None, text: str | None
) -> list[GatewayRow]:
    """The rows in ``state`` (any when None) whose id, name, zone or label contains ``text``."""
    needle = (text or "").strip().lower()
    return [
        row
        for row in rows
        if (state is None or row.state == state)
        and (
            not needle
            or any(
                needle in (part or "").lower() for part in (row.id, row.name, row.zone, row.label)
            )
        )
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSample:
    at: float
    values: Mapping[str, float | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayDetail:
    row: GatewayRow
    gateway: Gateway
    history: list[HealthSample]
    devices: list[HeardDevice]
    config: Mapping[str, Any]
    rollouts: list[Mapping[str, Any]]
    alerts: list[Alert]


_HISTORY_FIELDS: Final = (
    "uptime_s",
    "cpu_temp_c",
    "outbox_depth",
    "backhaul_rtt_ms",
    "radio_received",
    "radio_crc_ok",
    "radio_crc_bad",
    "radio_forwarded",
)


def health_history(store: Store, gateway_id: str, since: float, now: float) -> list[HealthSample]:
    """The gateway's health messages since ``since``, oldest first."""
    return [
        HealthSample(
            at=float(point.at),
            values={name: _number(getattr(point, name)) for name in _HISTORY_FIELDS},
        )
        for point in store.health_history(gateway_id, since=since, until=now)
    ]


def gateway_detail(
    store: Store, gateway_id: str, now: float, thresholds: HealthThresholds, hours: int
) -> GatewayDetail:
    """Everything the gateway page shows; NotFoundError for an unknown gateway."""
    gateway = store.gateway(gateway_id)
    sql = store.sql
    config = gateway_config_status(sql, gateway.id)
    row = _gateway_row(
        gateway,
        now,
        thresholds,
        _gateway_sites(sql).get(gateway.id, {}),
        bool(config.get("drift")),
    )
    history = health_history(store, gateway.id, now - hours * 3600.0, now)
    devices = store.gateway_devices(gateway.id)
    history_rows = sql.query(
        "SELECT g.rollout_id, g.wave, g.state, g.seq, g.reason, g.sent_at, g.answered_at,"
        " r.state AS rollout_state, r.comment, r.created FROM rollout_gateways g"
        " JOIN rollouts r ON r.id = g.rollout_id WHERE g.gateway_id = ?"
        " ORDER BY g.rollout_id DESC LIMIT 20",
        [gateway.id],
    )
    alerts = list_alerts(store, subject=f"gateway:{gateway.id}", limit=20).items
    return GatewayDetail(
        row=row,
        gateway=gateway,
        history=history,
        devices=devices,
        config=config,
        rollouts=list(history_rows),
        alerts=alerts,
    )


# --- sensors ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorCounts:
    total: int
    by_state: Mapping[str, int]
    heard_last_hour: int
    newest_reading_at: float | None


def _alerted(sql: Sql, kind: str) -> set[str]:
    rows = sql.query_tuples(
        "SELECT subject FROM alerts WHERE kind = ? AND state IN (?, ?)", [kind, *_open_states()]
    )
    return {str(row[0]).removeprefix("device:") for row in rows}


def sensor_counts(store: Store, now: float) -> SensorCounts:
    """Sensors by state (worst state wins: silent, then low battery), heard in the last hour,
    and when the newest reading arrived, in one scan of ``devices``."""
    sql = store.sql
    total, never, recent, newest = sql.query_tuples(
        "SELECT COUNT(*), SUM(CASE WHEN last_seen IS NULL THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN last_seen >= ? THEN 1 ELSE 0 END), MAX(last_seen) FROM devices",
        [now - 3600.0],
    )[0]
    silent = _alerted(sql, _SILENT)
    battery = _alerted(sql, _BATTERY) - silent
    total, never, recent = int(total or 0), int(never or 0), int(recent or 0)
    by_state = {
        "silent": len(silent),
        "low_battery": len(battery),
        "never_heard": never,
        "reporting": max(0, total - never - len(silent) - len(battery)),
    }
    return SensorCounts(
        total=total,
        by_state=by_state,
        heard_last_hour=recent,
        newest_reading_at=None if newest is None else float(newest),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorRow:
    dev_eui: str
    name: str
    profile_id: str
    state: SensorState
    zone: str | None
    street: str | None
    label: str | None
    battery_mv: int | None
    last_seen: float | None
    rssi_dbm: int | None = None
    snr_db: float | None = None
    last_values: Mapping[str, Any] = field(default_factory=dict)


SensorSort = Literal["silent_for", "battery", "eui", "zone", "type"]
SENSOR_SORTS: Final[tuple[SensorSort, ...]] = get_args(SensorSort)


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorPage:
    rows: list[SensorRow]
    total: int
    page: int
    pages: int
    profiles: list[str]
    zones: list[str]


def _state_of(
    dev_eui: str, last_seen: float | None, silent: set[str], low: set[str]
) -> SensorState:
    if dev_eui in silent:
        return "silent"
    if dev_eui in low:
        return "low_battery"
    if last_seen is None:
        return "never_heard"
    return "reporting"


def sensor_page(
    store: Store,
    *,
    profile: str | None = None,
    zone: str | None = None,
    state: SensorState | None = None,
    text: str | None = None,
    sort: SensorSort = "silent_for",
    descending: bool = True,
    page: int = 1,
) -> SensorPage:
    """One page of the sensor table, filtered and sorted in the database."""
    sql = store.sql
    silent = _alerted(sql, _SILENT)
    low = _alerted(sql, _BATTERY)
    where: list[str] = []
    params: list[Any] = []
    if profile:
        where.append("d.profile_id = ?")
        params.append(profile)
    if zone:
        where.append("s.zone = ?")
        params.append(zone)
    needle = (text or "").strip().lower()
    if needle:
        where.append(
            "(LOWER(d.dev_eui) LIKE ? OR LOWER(COALESCE(d.name, '')) LIKE ?"
            " OR LOWER(COALESCE(s.label, '')) LIKE ? OR LOWER(COALESCE(s.street, '')) LIKE ?)"
        )
        pattern = "%" + needle.replace("%", "").replace("_", "") + "%"
        params += [pattern] * 4
    if state is not None:
        subset = {"silent": silent, "low_battery": low - silent}.get(state)
        if subset is not None:
            if not subset:
                where.append("1 = 0")
            else:
                where.append(f"d.dev_eui IN ({', '.join('?' * len(subset))})")
                params += sorted(subset)
        elif state == "never_heard":
            where.append("d.last_seen IS NULL")
            if silent | low:
                where.append(f"d.dev_eui NOT IN ({', '.join('?' * len(silent | low))})")
                params += sorted(silent | low)
        else:
            where.append("d.last_seen IS NOT NULL")
            if silent | low:
                where.append(f"d.dev_eui NOT IN ({', '.join('?' * len(silent | low))})")
                params += sorted(silent | low)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    base = " FROM devices AS d LEFT JOIN device_sites AS s ON s.dev_eui = d.dev_eui" + clause
    total = int(sql.scalar("SELECT COUNT(*)" + base, params) or 0)
    direction = "DESC" if descending else "ASC"
    # Silent-for grows as last_seen falls: "longest silent first" is last_seen ascending.
    order = {
        "silent_for": f"d.last_seen {'ASC' if descending else 'DESC'}",
        "battery": f"d.battery_mv {direction}",
        "eui": f"d.dev_eui {direction}",
        "zone": f"s.zone {direction}",
        "type": f"d.profile_id {direction}",
    }[sort]
    # NULLs last in both databases and both directions.
    nulls = order.split(" ")[0]
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(1, page), pages)
    rows = sql.query(
        "SELECT d.dev_eui, d.name, d.profile_id, d.battery_mv, d.last_seen, s.zone, s.street,"
        f" s.label{base} ORDER BY CASE WHEN {nulls} IS NULL THEN 1 ELSE 0 END, {order},"
        " d.dev_eui LIMIT ? OFFSET ?",
        [*params, PAGE_SIZE, (page - 1) * PAGE_SIZE],
    )
    latest = _latest_receptions(sql, [str(row["dev_eui"]) for row in rows])
    found = []
    for row in rows:
        eui = str(row["dev_eui"])
        rssi, snr, values = latest.get(eui, (None, None, {}))
        found.append(
            SensorRow(
                dev_eui=eui,
                name=row["name"] or "",
                profile_id=row["profile_id"],
                state=_state_of(eui, row["last_seen"], silent, low),
                zone=row["zone"],
                street=row["street"],
                label=row["label"],
                battery_mv=row["battery_mv"],
                last_seen=row["last_seen"],
                rssi_dbm=rssi,
                snr_db=snr,
                last_values=values,
            )
        )
    profiles = [str(r[0]) for r in sql.query_tuples("SELECT id FROM device_profiles ORDER BY id")]
    zones = [
        str(r[0])
        for r in sql.query_tuples(
            "SELECT DISTINCT zone FROM device_sites WHERE zone IS NOT NULL ORDER BY zone"
        )
    ]
    return SensorPage(
        rows=found, total=total, page=page, pages=pages, profiles=profiles, zones=zones
    )


def _latest_receptions(
    sql: Sql, euis: Sequence[str]
) -> dict[str, tuple[int | None, float | None, dict[str, Any]]]:
    """Per device, the best reception (strongest RSSI) of its newest reading and its values."""
    if not euis:
        return {}
    marks = ", ".join("?" * len(euis))
    rows = sql.query_tuples(
        "SELECT r.dev_eui, r.values_json, c.rssi_dbm, c.snr_db FROM readings AS r"
        " LEFT JOIN receptions AS c ON c.reading_id = r.id WHERE r.id IN"
        " (SELECT (SELECT x.id FROM readings AS x WHERE x.dev_eui = d.dev_eui"
        " ORDER BY x.time_s DESC, x.id DESC LIMIT 1) FROM devices AS d"
        f" WHERE d.dev_eui IN ({marks}))",
        list(euis),
    )
    found: dict[str, tuple[int | None, float | None, dict[str, Any]]] = {}
    for eui, text, rssi, snr in rows:
        best = found.get(eui)
        if best is not None and (rssi is None or (best[0] is not None and best[0] >= rssi)):
            continue
        try:
            values = json.loads(text)
        except ValueError:
            values = {}
        found[str(eui)] = (rssi, snr, values if isinstance(values, dict) else {})
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorDetail:
    device: Device
    row: SensorRow
    readings: list[tuple[float, Mapping[str, Any]]]
    gateways: list[HearingGateway]
    alerts: list[Alert]
    truncated: bool


def sensor_detail(store: Store, dev_eui: str, now: float, hours: int) -> SensorDetail:
    """Everything the sensor page shows; NotFoundError for an unknown device."""
    device = store.device(dev_eui)
    sql = store.sql
    site = sql.query(
        "SELECT zone, street, label FROM device_sites WHERE dev_eui = ?", [device.dev_eui]
    )
    place = site[0] if site else {}
    silent = _alerted(sql, _SILENT)
    low = _alerted(sql, _BATTERY)
    latest = _latest_receptions(sql, [device.dev_eui])
    rssi, snr, values = latest.get(device.dev_eui, (None, None, {}))
    rows = sql.query_tuples(
        "SELECT time_s, values_json FROM readings WHERE dev_eui = ? AND time_s >= ?"
        " ORDER BY time_s DESC, id DESC LIMIT ?",
        [device.dev_eui, now - hours * 3600.0, MAX_PLOT_READINGS + 1],
    )
    readings: list[tuple[float, Mapping[str, Any]]] = []
    for time_s, text in reversed(rows[:MAX_PLOT_READINGS]):
        try:
            parsed = json.loads(text)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            readings.append((float(time_s), parsed))
    gateways = store.device_gateways(device.dev_eui)
    return SensorDetail(
        device=device,
        row=SensorRow(
            dev_eui=device.dev_eui,
            name=device.name,
            profile_id=device.profile_id,
            state=_state_of(device.dev_eui, device.last_seen, silent, low),
            zone=place.get("zone"),
            street=place.get("street"),
            label=place.get("label"),
            battery_mv=device.battery_mv,
            last_seen=device.last_seen,
            rssi_dbm=rssi,
            snr_db=snr,
            last_values=values,
        ),
        readings=readings,
        gateways=gateways,
        alerts=list_alerts(store, subject=f"device:{device.dev_eui}", limit=20).items,
        truncated=len(rows) > MAX_PLOT_READINGS,
    )


# --- the overview -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanCellData:
    lat0: float
    lon0: float
    lat1: float
    lon1: float
    count: int
    silent: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Overview:
    gateways: list[GatewayRow]
    gateway_counts: Mapping[str, int]
    sensors: SensorCounts
    alert_counts: Mapping[str, int]
    acknowledged_counts: Mapping[str, int]
    worst_alerts: list[Alert]
    cells: list[PlanCellData]
    ingest: list[tuple[float, float]]
    ingest_last_hour: int


def alert_counts(sql: Sql) -> tuple[dict[str, int], dict[str, int]]:
    """Open (not yet acknowledged) and acknowledged alerts by severity."""
    opened: dict[str, int] = dict.fromkeys(SEVERITY_ORDER, 0)
    acked: dict[str, int] = dict.fromkeys(SEVERITY_ORDER, 0)
    for state, severity, count in sql.query_tuples(
        "SELECT state, severity, COUNT(*) FROM alerts WHERE state IN (?, ?)"
        " GROUP BY state, severity",
        list(_open_states()),
    ):
        target = opened if state == "open" else acked
        target[str(severity)] = target.get(str(severity), 0) + int(count)
    return opened, acked


def worst_alerts(store: Store, limit: int = 12) -> list[Alert]:
    """Open and acknowledged alerts, most severe first, then the oldest (longest wrong)."""
    found: list[Alert] = []
    for severity in SEVERITY_ORDER:
        page = list_alerts(
            store, states=("open", "acknowledged"), severities=(severity,), limit=200
        )
        found += sorted(page.items, key=lambda a: (a.state != "open", a.opened_at))
        if len(found) >= limit:
            break
    return found[:limit]


def plan_cells(sql: Sql, gateways: Sequence[GatewayRow]) -> list[PlanCellData]:
    """The sensors with a position as a grid of at most :data:`PLAN_CELLS` cells across,
    counted in the database, with how many in each cell are silent."""
    bounds = sql.query_tuples(
        "SELECT MIN(lat), MAX(lat), MIN(lon), MAX(lon) FROM device_sites WHERE lat IS NOT NULL"
    )[0]
    if bounds[0] is None:
        return []
    lat_min, lat_max, lon_min, lon_max = (float(v) for v in bounds)
    for row in gateways:
        if row.lat is not None and row.lon is not None:
            lat_min, lat_max = min(lat_min, row.lat), max(lat_max, row.lat)
            lon_min, lon_max = min(lon_min, row.lon), max(lon_max, row.lon)
    span = max(lat_max - lat_min, (lon_max - lon_min) * math.cos(math.radians(lat_min)), 1e-5)
    step = span / PLAN_CELLS
    lon_step = step / max(math.cos(math.radians((lat_min + lat_max) / 2)), 0.01)
    cast = "INTEGER" if sql.dialect == "sqlite" else "BIGINT"
    rows = sql.query_tuples(
        f"SELECT CAST((s.lat - ?) / ? AS {cast}) AS r, CAST((s.lon - ?) / ? AS {cast}) AS c,"
        " COUNT(*), SUM(CASE WHEN a.subject IS NULL THEN 0 ELSE 1 END)"
        " FROM device_sites AS s LEFT JOIN (SELECT DISTINCT subject FROM alerts"
        " WHERE kind = ? AND state IN (?, ?)) AS a ON a.subject = 'device:' || s.dev_eui"
        " WHERE s.lat IS NOT NULL GROUP BY r, c",
        [lat_min, step, lon_min, lon_step, _SILENT, *_open_states()],
    )
    return [
        PlanCellData(
            lat0=lat_min + int(r) * step,
            lon0=lon_min + int(c) * lon_step,
            lat1=lat_min + (int(r) + 1) * step,
            lon1=lon_min + (int(c) + 1) * lon_step,
            count=int(count),
            silent=int(silent or 0),
        )
        for r, c, count, silent in rows
    ]


def ingest_minutes(store: Store, now: float) -> list[tuple[float, float]]:
    """Readings stored per minute over the last hour (minute start, count)."""
    minutes = store.ingest_per_minute(since=now - 3600.0, until=now)
    return [(item.minute, float(item.readings)) for item in minutes]


def overview(store: Store, now: float, thresholds: HealthThresholds) -> Overview:
    """Everything the overview shows."""
    gateways = gateway_rows(store, now, thresholds)
    counts = dict.fromkeys(GATEWAY_STATES, 0)
    for row in gateways:
        counts[row.state] = counts.get(row.state, 0) + 1
    opened, acked = alert_counts(store.sql)
    ingest = ingest_minutes(store, now)
    return Overview(
        gateways=gateways,
        gateway_counts=counts,
        sensors=sensor_counts(store, now),
        alert_counts=opened,
        acknowledged_counts=acked,
        worst_alerts=worst_alerts(store),
        cells=plan_cells(store.sql, gateways),
        ingest=ingest,
        ingest_last_hour=int(sum(count for _, count in ingest)),
    )


# --- rollouts -----------------------------------------------------------------------------------


def rollout_list(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    return rollouts(store.sql, limit=limit).items


def rollout_detail(
    store: Store, rollout_id: int, after: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
    """A rollout, one page of its gateways and the cursor of the next page."""
    summary = rollout_json(store.sql, rollout_id)
    page = rollout_gateways(store.sql, rollout_id, limit=PAGE_SIZE, after=after)
    return summary, page.items, page.next


__all__ = [
    "GATEWAY_SORTS",
    "GATEWAY_STATES",
    "SENSOR_SORTS",
    "SENSOR_STATES",
    "GatewayDetail",
    "GatewayRow",
    "Overview",
    "SensorDetail",
    "SensorPage",
    "SensorRow",
    "filter_gateways",
    "gateway_detail",
    "gateway_rows",
    "overview",
    "rollout_detail",
    "rollout_list",
    "sensor_detail",
    "sensor_page",
    "sort_gateways",
]
