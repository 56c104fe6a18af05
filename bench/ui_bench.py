"""The dashboard figures: how long ``owlgate fleet serve`` takes to build the overview and one
gateway's page at city scale.

The database is :mod:`.api_bench`'s seeded file (1,000 gateways, 100,000 sensors, 10 million
readings and receptions), copied once into a file of our own (cached beside it under a key of
the API layout, the schema's migrations and :data:`SEED_LAYOUT`) and given what the dashboard
reads on top: a site for every gateway and sensor in a 3 x 3 km area (only where the tables
exist). The dashboard judges states against the wall clock, so before every run the facts that
age are laid anew relative to now: gateways' last health (a few offline or degraded), sensors'
last_seen and battery (a few silent or low), open alerts of each severity (some
acknowledged), a day of health history per gateway at 60 s and an hour of ``ingest_minutes``
(the last two only where the tables exist).

Then ``owlgate fleet serve`` runs on that file as its own process, and one client asks for
``GET /ui/`` and ``GET /ui/gateways/{id}`` (random gateways) with an operator's bearer token:
:data:`WARMUPS` each, then :data:`REQUESTS` each, one at a time. The figure is the median of
the server's own ``Server-Timing: app;dur=`` (the time it spent building the page); p90, the
client's median and the very first render after start are comparisons.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

from .api_bench import (
    FULL,
    GATEWAY_PREFIX,
    QUICK,
    Scale,
    _percentile,
    _token,
    cache_folder,
    schema_key,
    seeded_database,
    served_fleet,
)
from .figures import Figure

GOAL_OVERVIEW_MS: Final = 1000.0
#: No goal is set for the gateway page; a third of the overview's is what we hold it to.
GOAL_GATEWAY_PAGE_MS: Final = 300.0
REQUESTS: Final = 20
WARMUPS: Final = 2
QUICK_REQUESTS: Final = 5
QUICK_WARMUPS: Final = 1
SEED_LAYOUT: Final = "ui-bench-1"
SEED: Final = 2026
#: South-west corner of the 3 x 3 km area, and metres per degree of latitude.
LAT0: Final = 52.5
LON0: Final = 13.4
M_PER_DEG: Final = 111_320.0
AREA_M: Final = 3000
_TIMING = re.compile(r"app;dur=([0-9.]+)")


class UiBenchError(RuntimeError):
    """The dashboard did not answer as the benchmark needs; the message says what to fix."""


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    found = db.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", [name]
    )
    return bool(found.fetchone()[0])


def _lon_per_m() -> float:
    return 1.0 / (M_PER_DEG * 0.6088)  # cos(52.5 deg)


def _seed_sites(db: sqlite3.Connection, now: float) -> None:
    """A site for every sensor and gateway, scattered over the area, 1 km zones."""
    lat_m, lon_m = 1.0 / M_PER_DEG, _lon_per_m()
    place = f"(rowid * 7919) % {AREA_M} AS y, (rowid * 104729) % {AREA_M} AS x"
    if _has_table(db, "device_sites"):
        db.execute(
            "INSERT OR REPLACE INTO device_sites (dev_eui, zone, street, lat, lon, label, "
            f"updated_at) SELECT dev_eui, 'zone-' || (y / 1000) || '-' || (x / 1000), "
            f"'street ' || (y / 100), ? + y * ?, ? + x * ?, 'bay ' || rowid, ? "
            f"FROM (SELECT dev_eui, {place} FROM devices)",
            [LAT0, lat_m, LON0, lon_m, now],
        )
    if _has_table(db, "gateway_sites"):
        db.execute(
            "INSERT OR REPLACE INTO gateway_sites (gateway_id, zone, street, lat, lon, label, "
            f"updated_at) SELECT id, 'zone-' || (y / 1000) || '-' || (x / 1000), "
            f"'street ' || (y / 100), ? + y * ?, ? + x * ?, 'mast ' || rowid, ? "
            f"FROM (SELECT id, {place} FROM gateways)",
            [LAT0, lat_m, LON0, lon_m, now],
        )


def _refresh_facts(db: sqlite3.Connection, now: float) -> None:
    """Gateways and sensors as of ``now``: every 50th gateway offline for an hour, every
    100th degraded (CRC errors or an old outbox entry), every 200th sensor silent for hours,
    every 250th low on battery."""
    db.execute(
        "UPDATE gateways SET state_online = 1, state_at = ? - 86400, heartbeat_interval_s = 60,"
        " last_seen = CASE WHEN rowid % 50 = 1 THEN ? - 3600 ELSE ? - rowid % 50 END,"
        " last_health_at = CASE WHEN rowid % 50 = 1 THEN ? - 3600 ELSE ? - rowid % 50 END,"
        " radio_crc_bad = CASE WHEN rowid % 100 = 3 THEN 3000 ELSE rowid % 50 END,"
        " outbox_oldest_age_s = CASE WHEN rowid % 100 = 5 THEN 900 ELSE 30 END,"
        " last_health_json = json_object('cpu_temp_c', 50 + rowid % 20, 'config_seq', 1,"
        " 'uptime_s', 259200, 'outbox_depth', rowid % 7)",
        [now, now, now, now, now],
    )
    db.execute(
        "UPDATE devices SET last_seen = CASE WHEN rowid % 200 = 2 THEN ? - 10800 - rowid % 3600"
        " ELSE ? - rowid % 540 END,"
        " battery_mv = CASE WHEN rowid % 250 = 4 THEN 2900 ELSE 3000 + rowid % 600 END",
        [now, now],
    )
    db.execute("DELETE FROM alert_events")
    db.execute("DELETE FROM alert_pending")
    db.execute("DELETE FROM alerts")
    alerts = [
        ("gateway_offline", "critical", "gateway:", "gateways", "id", "rowid % 50 = 1", 60.0),
        ("radio_crc_errors", "info", "gateway:", "gateways", "id", "rowid % 100 = 3", 0.23),
        ("outbox_backlog", "warning", "gateway:", "gateways", "id", "rowid % 100 = 5", 900.0),
        ("device_silent", "warning", "device:", "devices", "dev_eui", "rowid % 200 = 2", 18.0),
        ("battery_low", "warning", "device:", "devices", "dev_eui", "rowid % 250 = 4", 2900.0),
    ]
    for rule, severity, prefix, table, key, where, value in alerts:
        db.execute(
            "INSERT INTO alerts (rule, kind, subject, severity, state, open_key, value,"
            " event_value, threshold, clear_threshold, message, details_json, opened_at,"
            " updated_at, acknowledged_at, acknowledged_by, ack_comment)"
            f" SELECT ?, ?, ? || {key}, ?, CASE WHEN rowid % 3 = 0 THEN 'acknowledged'"
            f" ELSE 'open' END, ? || '|' || ? || {key}, ?, ?, 0, 0, ? || ' on ' || {key}, '{{}}',"
            " ? - rowid % 7200, ? - rowid % 600, CASE WHEN rowid % 3 = 0 THEN ? END,"
            " CASE WHEN rowid % 3 = 0 THEN 'bench' END,"
            f" CASE WHEN rowid % 3 = 0 THEN 'on it' END FROM {table} WHERE {where}",
            [rule, rule, prefix, severity, rule, prefix, value, value, rule, now, now, now],
        )


def _refresh_history(db: sqlite3.Connection, now: float) -> None:
    """A day of health messages per gateway at 60 s, and the last hour of ingest."""
    if _has_table(db, "gateway_health"):
        db.execute("DELETE FROM gateway_health")
        db.execute(
            "WITH RECURSIVE k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j + 1 < 1440) "
            "INSERT INTO gateway_health (gateway_id, at, uptime_s, agent_uptime_s, cpu_temp_c,"
            " load_1m, outbox_depth, outbox_oldest_age_s, backhaul_rtt_ms, radio_received,"
            " radio_crc_ok, radio_crc_bad, radio_forwarded, radio_transmitted, reconnects,"
            " config_seq) "
            "SELECT g.id, ? - (1439 - k.j) * 60 - g.rowid % 60, 172800 + k.j * 60, k.j * 60,"
            " 50 + g.rowid % 20 + (k.j % 30) * 0.1, 0.3 + (k.j % 10) * 0.05, g.rowid % 7, 30,"
            " 20 + k.j % 17, k.j * 12, k.j * 12 - k.j * (g.rowid % 50) / 100,"
            " k.j * (g.rowid % 50) / 100, k.j * 11, k.j, g.rowid % 3, 1 "
            "FROM gateways AS g CROSS JOIN k "
            "WHERE NOT (g.rowid % 50 = 1 AND k.j >= 1380) ORDER BY g.id, k.j",
            [now],
        )
    if _has_table(db, "ingest_minutes"):
        devices = int(db.execute("SELECT COUNT(*) FROM devices").fetchone()[0])
        db.execute("DELETE FROM ingest_minutes")
        db.execute(
            "WITH RECURSIVE k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j + 1 < 60) "
            "INSERT INTO ingest_minutes (minute, readings, receptions) "
            "SELECT ? - j, ? + j % 13, ? + j % 13 FROM k",
            [int(now // 60), devices // 10, devices // 10],
        )


def _ui_key() -> str:
    return hashlib.sha256(f"{SEED_LAYOUT}\n{schema_key()}".encode()).hexdigest()[:12]


def ui_database(scale: Scale, now: float) -> tuple[Path, Path]:
    """Our copy of api_bench's database with the dashboard's rows, refreshed to ``now``."""
    source, source_kek = seeded_database(scale)
    folder = cache_folder()
    path = folder / f"ui-{scale.label}-{_ui_key()}.sqlite3"
    kek = path.with_suffix(".kek.json")
    if not (path.exists() and kek.exists()):
        for stale in folder.glob(f"ui-{scale.label}-*"):
            stale.unlink()
        partial = path.with_suffix(".partial")
        shutil.copyfile(source, partial)
        with _connect(partial) as db:
            _seed_sites(db, now)
        _copy_secret(source_kek, kek)
        partial.rename(path)
    with _connect(path) as db:
        _refresh_facts(db, now)
        _refresh_history(db, now)
    return path, kek


def _copy_secret(source: Path, target: Path) -> None:
    """The KEK file, readable by its owner only from the start (the vault refuses more)."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(source.read_bytes())


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        yield db
        db.execute("COMMIT")
    finally:
        db.close()


@dataclass(slots=True)
class Timings:
    server_ms: list[float] = field(default_factory=list)
    client_ms: list[float] = field(default_factory=list)
    first_server_ms: float = 0.0
    first_client_ms: float = 0.0


def _get(client: httpx.Client, url: str) -> tuple[float, float]:
    """(server ms from Server-Timing, client ms) of one page."""
    started = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - started) * 1000.0
    if response.status_code != 200:
        raise UiBenchError(f"GET {url} answered {response.status_code}: {response.text[:200]}")
    found = _TIMING.search(response.headers.get("server-timing", ""))
    if found is None:
        raise UiBenchError(f"GET {url} has no 'Server-Timing: app;dur=<ms>' header")
    return float(found.group(1)), elapsed


def _measure(
    base: str, token: str, scale: Scale, requests: int, warmups: int
) -> dict[str, Timings]:
    rng = random.Random(SEED)
    pages: dict[str, Callable[[], str]] = {
        "overview": lambda: "/ui/",
        "gateway_page": lambda: f"/ui/gateways/{GATEWAY_PREFIX}{rng.randrange(scale.gateways):06x}",
    }
    found = {name: Timings() for name in pages}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120.0) as client:
        for name, url in pages.items():
            found[name].first_server_ms, found[name].first_client_ms = _get(client, url())
            for _ in range(warmups - 1):
                _get(client, url())
        for _ in range(requests):
            for name, url in pages.items():
                server, client_ms = _get(client, url())
                found[name].server_ms.append(server)
                found[name].client_ms.append(client_ms)
    return found


def _serve_and_measure(
    path: Path, kek: Path, scale: Scale, requests: int, warmups: int
) -> dict[str, Timings]:
    token = _token(path, kek)
    with served_fleet(path, kek, "ui-bench") as base:
        return _measure(base, token, scale, requests, warmups)


def _figure(name: str, timings: Timings, goal: float, what: str) -> Figure:
    return Figure(
        name,
        statistics.median(timings.server_ms),
        "ms",
        what,
        goal_max=goal,
        comparisons={
            "p90": _percentile(timings.server_ms, 0.9),
            "client_ms": statistics.median(timings.client_ms),
            "first_render_ms": timings.first_server_ms,
            "first_render_client_ms": timings.first_client_ms,
        },
        median=statistics.median(timings.server_ms),
    )


def run(*, quick: bool = False) -> list[Figure]:
    """``ui.overview_ms`` and ``ui.gateway_page_ms``."""
    scale = QUICK if quick else FULL
    requests = QUICK_REQUESTS if quick else REQUESTS
    warmups = QUICK_WARMUPS if quick else WARMUPS
    path, kek = ui_database(scale, time.time())
    found = _serve_and_measure(path, kek, scale, requests, warmups)
    where = (
        f"owlgate fleet serve on SQLite with {scale.gateways:,} gateways, {scale.devices:,}"
        f" sensors, {scale.readings:,} readings: median Server-Timing of {requests} requests"
        f" after {warmups} warm-up(s), operator's bearer token"
    )
    return [
        _figure("ui.overview_ms", found["overview"], GOAL_OVERVIEW_MS, f"GET /ui/, {where}"),
        _figure(
            "ui.gateway_page_ms",
            found["gateway_page"],
            GOAL_GATEWAY_PAGE_MS,
            f"GET /ui/gateways/{{id}} (random gateways, 24 h of history), {where}",
        ),
    ]
