"""Application views: parking bays and waste bins as the city acts on them.

The registry knows devices by DevEUI and profile; a city asks "how many bays are free on
Main Street" and "which bins will be full before the round tomorrow". This module adds where
a device stands (``device_sites``: zone, street, position, label; migration
``0300_device_sites``), where a gateway stands (``gateway_sites``, the same fields and checks;
migration ``0320_gateway_sites``; the dashboard's plan draws its markers from it) and two
views computed from the readings:

- **parking** (:func:`parking_view`): every device whose profile produces ``occupied``, with
  the state of its latest reading that carries ``occupied``; grouped by street or zone. A bay
  with no such reading, or one older than ``stale_after_s``, is ``unknown``, never guessed.
- **bins** (:func:`bins_view`): every device whose profile produces ``fill_pct``, with its
  latest fill level and a predicted time it reaches ``full_pct``. The prediction fits a least
  squares line through the (time, fill) points since the last emptying (a fall of at least
  ``emptying_drop_pct`` between two readings) and extrapolates it. With fewer than
  ``min_points`` points, or a line that is flat or falling, there is no prediction and the
  response says why (``prediction.status``).

The views read raw readings only: readings the retention job has replaced by rollups
(:mod:`owlgate.fleet.export`) are older than any bay state or fill cycle worth showing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from owlgate.codecs.payloads import PROFILES

from .auth import Principal, requires
from .schema import migration
from .sql import Sql
from .store import InvalidError, NotFoundError, Store, eui_hex

log = logging.getLogger(__name__)

#: A bay whose latest reading is older than this is ``unknown`` (parking sensors report at
#: least every report interval, 24 h at most in the reference layout's settings).
DEFAULT_STALE_AFTER_S: Final = 86_400.0
#: A bin is full at this fill level (percent) unless the caller asks for another threshold.
DEFAULT_FULL_PCT: Final = 100.0
#: Fewest points since the last emptying for a prediction: two points always fit a line.
DEFAULT_MIN_POINTS: Final = 3
#: A fall of at least this many percentage points between two readings is an emptying; a
#: smaller one is sensor noise (ultrasonic readings jitter by a few percent).
DEFAULT_EMPTYING_DROP_PCT: Final = 10.0
#: How far back a fill history is read, and at most how many readings of it.
DEFAULT_HISTORY_S: Final = 30 * 86_400.0
MAX_HISTORY_READINGS: Final = 5_000
#: Slopes below this (percent per second, about 0.01 % a day) count as flat.
_FLAT_SLOPE_PCT_PER_S: Final = 1e-7
#: Readings scanned per query when a device's newest readings carry no ``occupied``.
_SCAN_PAGE: Final = 50
_LATEST_CHUNK: Final = 400

#: Profiles whose devices are parking bays (their values include ``occupied``) and bins
#: (``fill_pct``), from the codec registry.
PARKING_PROFILES: Final = tuple(
    sorted(p.id for p in PROFILES.values() if any(q.name == "occupied" for q in p.values))
)
BIN_PROFILES: Final = tuple(
    sorted(p.id for p in PROFILES.values() if any(q.name == "fill_pct" for q in p.values))
)

GroupBy = Literal["street", "zone"]
BayState = Literal["occupied", "free", "unknown"]
SiteKind = Literal["device", "gateway"]
PredictionStatus = Literal["predicted", "full", "too_few_points", "not_rising", "no_readings"]


@migration("0300_device_sites")
def _device_sites(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE device_sites ("
            "dev_eui TEXT PRIMARY KEY REFERENCES devices (dev_eui), "
            "zone TEXT, street TEXT, lat {float}, lon {float}, label TEXT, "
            "updated_at {float} NOT NULL)"
        )
    )
    db.execute("CREATE INDEX device_sites_zone ON device_sites (zone, street)")
    db.execute("CREATE INDEX device_sites_street ON device_sites (street)")


# --- sites -------------------------------------------------------------------------------------


@migration("0320_gateway_sites")
def _gateway_sites(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE gateway_sites ("
            "gateway_id TEXT PRIMARY KEY REFERENCES gateways (id), "
            "zone TEXT, street TEXT, lat {float}, lon {float}, label TEXT, "
            "updated_at {float} NOT NULL)"
        )
    )
    db.execute("CREATE INDEX gateway_sites_zone ON gateway_sites (zone)")


MAX_TEXT: Final = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Place:
    """Where something stands: the zone and street the views group by, its position (WGS 84
    degrees) and a label people know it by (a bay number, a bin's asset tag, a mast)."""

    zone: str | None = None
    street: str | None = None
    lat: float | None = None
    lon: float | None = None
    label: str | None = None

    def place_json(self) -> dict[str, Any]:
        return {
            "zone": self.zone,
            "street": self.street,
            "lat": self.lat,
            "lon": self.lon,
            "label": self.label,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Site(Place):
    """Where a device stands."""

    dev_eui: str

    def to_json(self) -> dict[str, Any]:
        return {"dev_eui": self.dev_eui, **self.place_json()}


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySite(Place):
    """Where a gateway stands (its mast or roof)."""

    gateway_id: str

    def to_json(self) -> dict[str, Any]:
        return {"gateway_id": self.gateway_id, **self.place_json()}


def make_place(
    *,
    zone: str | None = None,
    street: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
    label: str | None = None,
) -> Place:
    """A checked :class:`Place`: InvalidError naming the field for text longer than 200
    characters, a latitude outside -90..90, a longitude outside -180..180, or only one of the
    two. Empty text is no value."""
    texts: dict[str, str | None] = {}
    for field, value in (("zone", zone), ("street", street), ("label", label)):
        text = None if value is None else value.strip() or None
        if text is not None and len(text) > MAX_TEXT:
            raise InvalidError(f"{field}: at most {MAX_TEXT} characters, got {len(text)}")
        texts[field] = text
    for field, degrees, bound in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if degrees is not None and (not math.isfinite(degrees) or not -bound <= degrees <= bound):
            raise InvalidError(f"{field}: must be -{bound:g} .. {bound:g} degrees, got {degrees}")
    if (lat is None) != (lon is None):
        raise InvalidError("lat, lon: give both coordinates or neither")
    return Place(zone=texts["zone"], street=texts["street"], lat=lat, lon=lon, label=texts["label"])


def make_site(
    dev_eui: str,
    *,
    zone: str | None = None,
    street: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
    label: str | None = None,
) -> Site:
    """A checked device :class:`Site` (see :func:`make_place`; InvalidError for a bad
    DevEUI too)."""
    eui = eui_hex(dev_eui, "DevEUI")
    place = make_place(zone=zone, street=street, lat=lat, lon=lon, label=label)
    return Site(dev_eui=eui, **place.place_json())


def make_gateway_site(
    gateway_id: str,
    *,
    zone: str | None = None,
    street: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
    label: str | None = None,
) -> GatewaySite:
    """A checked :class:`GatewaySite` (see :func:`make_place`; InvalidError for a bad
    gateway id too)."""
    gid = eui_hex(gateway_id, "gateway id")
    place = make_place(zone=zone, street=street, lat=lat, lon=lon, label=label)
    return GatewaySite(gateway_id=gid, **place.place_json())


#: Per kind of site: its table, key column, the registry table and column it refers to, and
#: what the kind is called in a message.
_SITE_TABLES: Final[dict[SiteKind, tuple[str, str, str, str]]] = {
    "device": ("device_sites", "dev_eui", "devices", "dev_eui"),
    "gateway": ("gateway_sites", "gateway_id", "gateways", "id"),
}


def _put_site(
    db: Sql, kind: Literal["device", "gateway"], key: str, place: Place, at: float
) -> None:
    table, column, registry, registry_column = _SITE_TABLES[kind]
    with db.transaction() as tx:
        if tx.scalar(f"SELECT 1 FROM {registry} WHERE {registry_column} = ?", [key]) is None:
            raise NotFoundError(f"no {kind} {key}: register it before giving its site")
        tx.execute(
            f"INSERT INTO {table} ({column}, zone, street, lat, lon, label, updated_at) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT ({column}) DO UPDATE SET "
            "zone = excluded.zone, street = excluded.street, lat = excluded.lat, "
            "lon = excluded.lon, label = excluded.label, updated_at = excluded.updated_at",
            [key, place.zone, place.street, place.lat, place.lon, place.label, at],
        )


#: Ids per query when sites are looked up for a page of gateways or devices.
_SITES_PER_QUERY: Final = 500


def places_of(db: Sql, kind: SiteKind, keys: Sequence[str]) -> dict[str, Place]:
    """Where each of ``keys`` (gateway ids or DevEUIs, lower-case hex as stored) stands, for
    those that have a site: the API's lists carry them."""
    table, column, _, _ = _SITE_TABLES[kind]
    found: dict[str, Place] = {}
    for first in range(0, len(keys), _SITES_PER_QUERY):
        part = list(keys[first : first + _SITES_PER_QUERY])
        marks = ", ".join("?" * len(part))
        for row in db.query(
            f"SELECT {column}, zone, street, lat, lon, label FROM {table} "
            f"WHERE {column} IN ({marks})",
            part,
        ):
            found[row[column]] = Place(
                zone=row["zone"],
                street=row["street"],
                lat=row["lat"],
                lon=row["lon"],
                label=row["label"],
            )
    return found


def set_site(db: Sql, site: Site, *, at: float) -> None:
    """Record (or replace) where ``site.dev_eui`` stands; NotFoundError for a device that is
    not registered."""
    _put_site(db, "device", site.dev_eui, site, at)


def get_site(db: Sql, dev_eui: str) -> Site | None:
    """Where the device stands, or None when nobody said."""
    rows = db.query("SELECT * FROM device_sites WHERE dev_eui = ?", [eui_hex(dev_eui, "DevEUI")])
    return _site(rows[0]) if rows else None


def _site(row: dict[str, Any]) -> Site:
    return Site(
        dev_eui=row["dev_eui"],
        zone=row["zone"],
        street=row["street"],
        lat=row["lat"],
        lon=row["lon"],
        label=row["label"],
    )


def set_gateway_site(db: Sql, site: GatewaySite, *, at: float) -> None:
    """Record (or replace) where ``site.gateway_id`` stands; NotFoundError for a gateway that
    is not registered."""
    _put_site(db, "gateway", site.gateway_id, site, at)


def get_gateway_site(db: Sql, gateway_id: str) -> GatewaySite | None:
    """Where the gateway stands, or None when nobody said."""
    rows = db.query(
        "SELECT * FROM gateway_sites WHERE gateway_id = ?", [eui_hex(gateway_id, "gateway id")]
    )
    return _gateway_site(rows[0]) if rows else None


def gateway_sites(db: Sql, *, zone: str | None = None) -> list[GatewaySite]:
    """Every gateway site (of one zone, if given), by gateway id."""
    if zone is None:
        rows = db.query("SELECT * FROM gateway_sites ORDER BY gateway_id")
    else:
        rows = db.query("SELECT * FROM gateway_sites WHERE zone = ? ORDER BY gateway_id", [zone])
    return [_gateway_site(row) for row in rows]


def _gateway_site(row: dict[str, Any]) -> GatewaySite:
    return GatewaySite(
        gateway_id=row["gateway_id"],
        zone=row["zone"],
        street=row["street"],
        lat=row["lat"],
        lon=row["lon"],
        label=row["label"],
    )


def _devices_with_sites(
    db: Sql, profiles: Sequence[str], zone: str | None, street: str | None
) -> list[dict[str, Any]]:
    marks = ", ".join("?" * len(profiles))
    where = [f"d.profile_id IN ({marks})"]
    params: list[Any] = list(profiles)
    if zone is not None:
        where.append("s.zone = ?")
        params.append(zone)
    if street is not None:
        where.append("s.street = ?")
        params.append(street)
    return db.query(
        "SELECT d.dev_eui, d.name, d.profile_id, s.zone, s.street, s.lat, s.lon, s.label "
        "FROM devices AS d LEFT JOIN device_sites AS s ON s.dev_eui = d.dev_eui "
        f"WHERE {' AND '.join(where)} ORDER BY d.dev_eui",
        params,
    )


def _values(text: str, dev_eui: str) -> dict[str, Any]:
    try:
        values = json.loads(text)
    except ValueError:
        log.warning("device %s: a stored reading's values are not JSON; skipped", dev_eui)
        return {}
    return values if isinstance(values, dict) else {}


def _latest_with(
    db: Sql, euis: Sequence[str], name: str
) -> dict[str, tuple[float, dict[str, Any]]]:
    """For each device, the time and values of its newest reading that carries ``name``.

    One query finds every device's newest reading; only devices whose newest reading lacks
    ``name`` (a status or boot message came last) are scanned further back, page by page.
    """
    found: dict[str, tuple[float, dict[str, Any]]] = {}
    missing: list[str] = []
    for start in range(0, len(euis), _LATEST_CHUNK):
        chunk = list(euis[start : start + _LATEST_CHUNK])
        marks = ", ".join("?" * len(chunk))
        # A correlated subquery per device, newest first with LIMIT 1: one probe of the
        # (dev_eui, time_s, id) index per device, where MAX(time_s) ... GROUP BY would read
        # every index entry of every device.
        rows = db.query_tuples(
            "SELECT r.dev_eui, r.time_s, r.id, r.values_json FROM readings AS r WHERE r.id IN "
            "(SELECT (SELECT x.id FROM readings AS x WHERE x.dev_eui = d.dev_eui "
            "ORDER BY x.time_s DESC, x.id DESC LIMIT 1) FROM devices AS d "
            f"WHERE d.dev_eui IN ({marks})) ORDER BY r.dev_eui",
            chunk,
        )
        newest: dict[str, tuple[float, dict[str, Any]]] = {}
        for eui, time_s, _, text in rows:
            values = _values(text, eui)
            newest[eui] = (float(time_s), values)
        for eui in chunk:
            if eui in newest and name in newest[eui][1]:
                found[eui] = newest[eui]
            elif eui in newest:
                missing.append(eui)
    for eui in missing:
        hit = _scan_back(db, eui, name)
        if hit is not None:
            found[eui] = hit
    return found


def _scan_back(db: Sql, eui: str, name: str) -> tuple[float, dict[str, Any]] | None:
    before_time, before_id = math.inf, 0
    while True:
        rows = db.query_tuples(
            "SELECT time_s, id, values_json FROM readings WHERE dev_eui = ? "
            "AND (time_s < ? OR (time_s = ? AND id < ?)) ORDER BY time_s DESC, id DESC LIMIT ?",
            [eui, before_time, before_time, before_id or (1 << 62), _SCAN_PAGE],
        )
        for time_s, _, text in rows:
            values = _values(text, eui)
            if name in values:
                return float(time_s), values
        if len(rows) < _SCAN_PAGE:
            return None
        before_time, before_id = float(rows[-1][0]), int(rows[-1][1])


# --- parking -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Bay:
    site: Site
    name: str
    state: BayState
    reading_at: float | None


def parking_bays(
    db: Sql,
    *,
    now: float,
    zone: str | None = None,
    street: str | None = None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
) -> list[Bay]:
    """Every parking bay (optionally of one zone or street) with its state now."""
    devices = _devices_with_sites(db, PARKING_PROFILES, zone, street)
    latest = _latest_with(db, [d["dev_eui"] for d in devices], "occupied")
    bays: list[Bay] = []
    for row in devices:
        hit = latest.get(row["dev_eui"])
        state: BayState = "unknown"
        at = None
        if hit is not None:
            at, values = hit
            occupied = values["occupied"]
            if isinstance(occupied, bool) and now - at <= stale_after_s:
                state = "occupied" if occupied else "free"
        bays.append(Bay(site=_site(row), name=row["name"] or "", state=state, reading_at=at))
    return bays


def _counts(bays: Iterable[Bay]) -> dict[str, int]:
    counts = {"bays": 0, "occupied": 0, "free": 0, "unknown": 0}
    for bay in bays:
        counts["bays"] += 1
        counts[bay.state] += 1
    return counts


def parking_view(
    db: Sql,
    *,
    now: float,
    group_by: GroupBy = "street",
    zone: str | None = None,
    street: str | None = None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    items: bool = True,
) -> dict[str, Any]:
    """The parking view as the API returns it: totals, and per street (or zone) the count
    of occupied, free and unknown bays, with the bays themselves when ``items``. Devices
    without a site are grouped under ``null``."""
    bays = parking_bays(db, now=now, zone=zone, street=street, stale_after_s=stale_after_s)
    groups: dict[str | None, list[Bay]] = {}
    for bay in bays:
        key = bay.site.street if group_by == "street" else bay.site.zone
        groups.setdefault(key, []).append(bay)
    ordered = sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or ""))
    return {
        "generated_at": _iso(now),
        "group_by": group_by,
        "stale_after_s": stale_after_s,
        "totals": _counts(bays),
        "groups": [
            {
                group_by: key,
                **_counts(members),
                **(
                    {
                        "items": [
                            {
                                **bay.site.to_json(),
                                "name": bay.name,
                                "state": bay.state,
                                "reading_at": _iso(bay.reading_at),
                            }
                            for bay in members
                        ]
                    }
                    if items
                    else {}
                ),
            }
            for key, members in ordered
        ],
    }


# --- waste bins ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """When a bin reaches the full threshold, or why that cannot be said.

    ``rate_pct_per_day`` is the fitted slope; ``points`` the readings since the last emptying
    the fit used; ``cycle_start`` the time of the first of them.
    """

    status: PredictionStatus
    full_at: float | None
    rate_pct_per_day: float | None
    points: int
    cycle_start: float | None
    message: str


def predict_full(
    history: Sequence[tuple[float, float]],
    *,
    full_pct: float = DEFAULT_FULL_PCT,
    min_points: int = DEFAULT_MIN_POINTS,
    emptying_drop_pct: float = DEFAULT_EMPTYING_DROP_PCT,
) -> Prediction:
    """Predict when a bin's fill reaches ``full_pct`` from its ``(time_s, fill_pct)``
    history (oldest first): a least squares line through the points since the last
    emptying, extrapolated to ``full_pct``."""
    if not history:
        return Prediction(
            status="no_readings",
            full_at=None,
            rate_pct_per_day=None,
            points=0,
            cycle_start=None,
            message="no fill readings yet",
        )
    start = 0
    for index in range(1, len(history)):
        if history[index - 1][1] - history[index][1] >= emptying_drop_pct:
            start = index
    cycle = history[start:]
    cycle_start = cycle[0][0]
    latest_time, latest_fill = cycle[-1]
    if latest_fill >= full_pct:
        return Prediction(
            status="full",
            full_at=None,
            rate_pct_per_day=None,
            points=len(cycle),
            cycle_start=cycle_start,
            message=f"already at {latest_fill:g} %, at or above the {full_pct:g} % threshold",
        )
    if len(cycle) < min_points:
        return Prediction(
            status="too_few_points",
            full_at=None,
            rate_pct_per_day=None,
            points=len(cycle),
            cycle_start=cycle_start,
            message=f"{len(cycle)} reading(s) since the last emptying; a prediction needs "
            f"at least {min_points}",
        )
    # Times relative to the cycle's start: squaring 1.8e9 s loses the digits that matter.
    xs = [t - cycle_start for t, _ in cycle]
    ys = [fill for _, fill in cycle]
    n = len(cycle)
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = 0.0 if sxx == 0 else sxy / sxx
    if slope <= _FLAT_SLOPE_PCT_PER_S:
        return Prediction(
            status="not_rising",
            full_at=None,
            rate_pct_per_day=slope * 86_400.0,
            points=n,
            cycle_start=cycle_start,
            message="the fill level is not rising since the last emptying: no prediction",
        )
    intercept = mean_y - slope * mean_x
    full_at = cycle_start + (full_pct - intercept) / slope
    # The line may cross the threshold before the latest reading (a recent reading below the
    # trend): the bin is then due now, not in the past.
    full_at = max(full_at, latest_time)
    return Prediction(
        status="predicted",
        full_at=full_at,
        rate_pct_per_day=slope * 86_400.0,
        points=n,
        cycle_start=cycle_start,
        message=f"least squares over {n} readings since the last emptying",
    )


def _fill_history(db: Sql, eui: str, since: float) -> list[tuple[float, float]]:
    rows = db.query_tuples(
        "SELECT time_s, values_json FROM readings WHERE dev_eui = ? AND time_s >= ? "
        "ORDER BY time_s DESC, id DESC LIMIT ?",
        [eui, since, MAX_HISTORY_READINGS],
    )
    history: list[tuple[float, float]] = []
    for time_s, text in reversed(rows):
        fill = _values(text, eui).get("fill_pct")
        if isinstance(fill, int | float) and not isinstance(fill, bool) and math.isfinite(fill):
            history.append((float(time_s), float(fill)))
    return history


def bins_view(
    db: Sql,
    *,
    now: float,
    zone: str | None = None,
    street: str | None = None,
    full_pct: float = DEFAULT_FULL_PCT,
    min_points: int = DEFAULT_MIN_POINTS,
    emptying_drop_pct: float = DEFAULT_EMPTYING_DROP_PCT,
    history_s: float = DEFAULT_HISTORY_S,
) -> dict[str, Any]:
    """The waste-bin view as the API returns it: every bin with its latest fill level and
    its predicted full time, soonest first (bins without a prediction last)."""
    if not 0 < full_pct <= 100:
        raise InvalidError(f"full_pct must be more than 0 and at most 100, got {full_pct}")
    if min_points < 2:
        raise InvalidError(f"min_points must be at least 2 (a line needs two), got {min_points}")
    if not emptying_drop_pct > 0:
        raise InvalidError(f"emptying_drop_pct must be more than 0, got {emptying_drop_pct}")
    devices = _devices_with_sites(db, BIN_PROFILES, zone, street)
    items: list[dict[str, Any]] = []
    for row in devices:
        eui = row["dev_eui"]
        history = _fill_history(db, eui, now - history_s)
        prediction = predict_full(
            history, full_pct=full_pct, min_points=min_points, emptying_drop_pct=emptying_drop_pct
        )
        latest = history[-1] if history else None
        items.append(
            {
                **_site(row).to_json(),
                "name": row["name"] or "",
                "fill_pct": None if latest is None else latest[1],
                "reading_at": None if latest is None else _iso(latest[0]),
                "prediction": {
                    "status": prediction.status,
                    "full_at": _iso(prediction.full_at),
                    "full_in_s": None
                    if prediction.full_at is None
                    else max(0.0, prediction.full_at - now),
                    "rate_pct_per_day": prediction.rate_pct_per_day,
                    "points": prediction.points,
                    "cycle_start": _iso(prediction.cycle_start),
                    "message": prediction.message,
                },
                "_sort": (
                    0 if prediction.status == "full" else 1 if prediction.full_at else 2,
                    prediction.full_at or 0.0,
                    eui,
                ),
            }
        )
    items.sort(key=lambda item: item["_sort"])
    for item in items:
        del item["_sort"]
    return {
        "generated_at": _iso(now),
        "full_pct": full_pct,
        "min_points": min_points,
        "emptying_drop_pct": emptying_drop_pct,
        "bins": len(items),
        "items": items,
    }


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


# --- API -----------------------------------------------------------------------------------------


class SiteBody(BaseModel):
    """Where a device or gateway stands; every field optional (a missing one is cleared)."""

    zone: str | None = Field(default=None, max_length=MAX_TEXT)
    street: str | None = Field(default=None, max_length=MAX_TEXT)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    label: str | None = Field(default=None, max_length=MAX_TEXT)


def store_of(request: Request) -> Store:
    """The store the app serves (``app.state.store``, set by ``create_app``)."""
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None:
        raise RuntimeError("the app has no store: build it with owlgate.fleet.api.create_app")
    return store


StoreDep = Annotated[Store, Depends(store_of)]


def clock_of(request: Request, clock: Callable[[], float] | None = None) -> float:
    """Now: from ``clock`` if given, else the app's (``app.state.clock``, what
    ``create_app`` was given), else the system's."""
    if clock is not None:
        return clock()
    app_clock: Callable[[], float] = getattr(request.app.state, "clock", time.time)
    return app_clock()


def router(*, clock: Callable[[], float] | None = None) -> APIRouter:
    """The views' routes: ``GET /api/v1/views/parking``, ``GET /api/v1/views/bins``, a
    device's site, ``GET`` / ``PUT /api/v1/nodes/{dev_eui}/site``, and a gateway's,
    ``GET`` / ``PUT /api/v1/gateways/{gateway_id}/site``."""
    from .api import API_PREFIX

    api = APIRouter(prefix=API_PREFIX)

    @api.get("/views/parking", summary="Parking bays: occupied, free or unknown, by street or zone")
    def parking(
        request: Request,
        store: StoreDep,
        principal: Annotated[Principal, requires("operator", "technician")],
        group_by: GroupBy = "street",
        zone: Annotated[str | None, Query(max_length=MAX_TEXT)] = None,
        street: Annotated[str | None, Query(max_length=MAX_TEXT)] = None,
        stale_after_s: Annotated[float, Query(gt=0)] = DEFAULT_STALE_AFTER_S,
        items: bool = True,
    ) -> dict[str, Any]:
        return parking_view(
            store.sql,
            now=clock_of(request, clock),
            group_by=group_by,
            zone=zone,
            street=street,
            stale_after_s=stale_after_s,
            items=items,
        )

    @api.get("/views/bins", summary="Waste bins: fill level and predicted full time")
    def bins(
        request: Request,
        store: StoreDep,
        principal: Annotated[Principal, requires("operator", "technician")],
        zone: Annotated[str | None, Query(max_length=MAX_TEXT)] = None,
        street: Annotated[str | None, Query(max_length=MAX_TEXT)] = None,
        full_pct: Annotated[float, Query(gt=0, le=100)] = DEFAULT_FULL_PCT,
        min_points: Annotated[int, Query(ge=2, le=1000)] = DEFAULT_MIN_POINTS,
        emptying_drop_pct: Annotated[float, Query(gt=0, le=100)] = DEFAULT_EMPTYING_DROP_PCT,
    ) -> dict[str, Any]:
        return bins_view(
            store.sql,
            now=clock_of(request, clock),
            zone=zone,
            street=street,
            full_pct=full_pct,
            min_points=min_points,
            emptying_drop_pct=emptying_drop_pct,
        )

    @api.get("/nodes/{dev_eui}/site", summary="Where a node stands")
    def read_site(
        dev_eui: str,
        store: StoreDep,
        principal: Annotated[Principal, requires("operator", "technician")],
    ) -> dict[str, Any]:
        device = store.device(_path_eui(dev_eui))
        found = get_site(store.sql, device.dev_eui)
        return (found or Site(dev_eui=device.dev_eui)).to_json()

    @api.put("/nodes/{dev_eui}/site", summary="Say where a node stands (zone, street, position)")
    def write_site(
        request: Request,
        dev_eui: str,
        body: SiteBody,
        store: StoreDep,
        principal: Annotated[Principal, requires("technician")],
    ) -> dict[str, Any]:
        from .audit import record_event

        site = make_site(_path_eui(dev_eui), **body.model_dump())
        with store.sql.transaction() as db:
            set_site(db, site, at=clock_of(request, clock))
            record_event(
                db,
                actor=principal,
                action="device.site_changed",
                target=site.dev_eui,
                details=site.place_json(),
            )
        return site.to_json()

    @api.get("/gateways/{gateway_id}/site", summary="Where a gateway stands")
    def read_gateway_site(
        gateway_id: str,
        store: StoreDep,
        principal: Annotated[Principal, requires("operator", "technician")],
    ) -> dict[str, Any]:
        gateway = store.gateway(_path_eui(gateway_id, "gateway"))
        found = get_gateway_site(store.sql, gateway.id)
        return (found or GatewaySite(gateway_id=gateway.id)).to_json()

    @api.put(
        "/gateways/{gateway_id}/site", summary="Say where a gateway stands (zone, street, position)"
    )
    def write_gateway_site(
        request: Request,
        gateway_id: str,
        body: SiteBody,
        store: StoreDep,
        principal: Annotated[Principal, requires("technician")],
    ) -> dict[str, Any]:
        from .audit import record_event

        site = make_gateway_site(_path_eui(gateway_id, "gateway"), **body.model_dump())
        with store.sql.transaction() as db:
            set_gateway_site(db, site, at=clock_of(request, clock))
            record_event(
                db,
                actor=principal,
                action="gateway.site_changed",
                target=site.gateway_id,
                details=site.place_json(),
            )
        return site.to_json()

    return api


def _path_eui(text: str, what: str = "device") -> str:
    lowered = text.lower()
    if len(lowered) != 16 or any(c not in "0123456789abcdef" for c in lowered):
        raise NotFoundError(f"no {what} {text!r}: ids are 16 hex digits")
    return lowered
