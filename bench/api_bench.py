"""The API latency figure: how fast ``owlgate fleet serve`` answers operations' reads at city
scale, over real HTTP.

The database is SQLite with 1,000 gateways, 100,000 devices and 10 million readings (one
reception each), :data:`FULL`. Seeding goes around the store's Python code: a
:class:`~owlgate.fleet.store.Store` creates the schema (every migration), then bulk SQL fills
the tables from recursive CTEs inside SQLite, with the readings index dropped during the
insert and built once after it. The seeded file is cached (``$OWLGATE_BENCH_CACHE``, else
``$XDG_CACHE_HOME/owlgate/bench``, else ``~/.cache/owlgate/bench``) under a name that holds
the scale and a hash of the schema's migration names and of :data:`SEED_LAYOUT`, so a second
run reuses it and a schema change seeds anew. ``quick`` uses :data:`QUICK`, a hundredth.

Then ``owlgate fleet serve`` runs on that file as its own process, and one client sends
:data:`REQUESTS_PER_ROUTE` requests to each route, one at a time, with an operator's bearer
token: ``GET /api/v1/gateways``, ``GET /api/v1/gateways/{id}``, ``GET /api/v1/nodes/{eui}``,
``GET /api/v1/nodes/{eui}/readings`` for gateways and devices drawn at random.
``fleet.api_p99_ms`` is the 99th percentile of all of them (goal: at most 50 ms), with each
route's p50 and p99 as comparisons. The time is the client's, from sending the request to
the last byte of the answer.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from owlgate.fleet import schema
from owlgate.fleet.auth import create_token
from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault
from owlgate.hil.processes import ChildProcess, children_stopped_at_exit

from .figures import Figure

GOAL_P99_MS: Final = 50.0
REQUESTS_PER_ROUTE: Final = 400
QUICK_REQUESTS_PER_ROUTE: Final = 50
#: Changes whenever what the seeding writes changes, so a cached file of the old layout is
#: not reused.
SEED_LAYOUT: Final = "api-bench-1"
SEED: Final = 2026
#: Time of the first reading; the readings of a device are READING_INTERVAL_S apart.
BASE_TIME_S: Final = 1_760_000_000
READING_INTERVAL_S: Final = 600
#: Ids are these ten hex digits and six of a number (printf in SQL: SQLite's integers are
#: signed 64-bit, too small for an EUI-64 like b827ebfffe000000).
GATEWAY_PREFIX: Final = "b827ebfffe"
DEVICE_PREFIX: Final = "70b3d57ed0"
STARTUP_TIMEOUT_S: Final = 120.0
PROFILE: Final = "parking-v1"


@dataclass(frozen=True, slots=True)
class Scale:
    gateways: int
    devices: int
    readings: int

    @property
    def label(self) -> str:
        return f"{self.gateways}gw-{self.devices}dev-{self.readings}rd"


FULL: Final = Scale(gateways=1000, devices=100_000, readings=10_000_000)
QUICK: Final = Scale(gateways=10, devices=1000, readings=100_000)


def cache_folder() -> Path:
    """Where seeded databases are kept between runs."""
    explicit = os.environ.get("OWLGATE_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "owlgate" / "bench"


def schema_key() -> str:
    """A short hash of every registered migration's name and of the seed layout."""
    names = [name for name, _ in schema.migrations()]
    return hashlib.sha256("\n".join([SEED_LAYOUT, *names]).encode()).hexdigest()[:12]


def _seed_sql(path: Path, scale: Scale) -> None:
    """Fill the schema a Store made at ``path``: bulk SQL, one transaction."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -400000")
        db.execute("BEGIN")
        key = bytes(32)
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?) "
            "INSERT INTO gateways (id, name, sign_public_key, seal_public_key, created, "
            "last_seen, state_online, state_at, heartbeat_interval_s, last_health_at, "
            "outbox_depth, outbox_oldest_age_s, radio_crc_ok, radio_crc_bad) "
            "SELECT ? || printf('%06x', i), 'gateway ' || i, ?, ?, ?, ?, 1, ?, 60, ?, "
            "i % 7, CASE WHEN i % 7 THEN 30 ELSE NULL END, 10000, i % 50 FROM n",
            [scale.gateways, GATEWAY_PREFIX, key, key, BASE_TIME_S, BASE_TIME_S, BASE_TIME_S,
             BASE_TIME_S],
        )  # fmt: skip
        readings_per_device = scale.readings // scale.devices
        last = BASE_TIME_S + (readings_per_device - 1) * READING_INTERVAL_S
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?) "
            "INSERT INTO devices (dev_eui, profile_id, activation, dev_addr, name, created, "
            "last_seen, last_fcnt, battery_mv) "
            "SELECT ? || printf('%06x', i), ?, 'abp', 603979776 + i, 'node ' || i, ?, ?, ?, "
            "3000 + i % 600 FROM n",
            [scale.devices, DEVICE_PREFIX, PROFILE, BASE_TIME_S, last, readings_per_device - 1],
        )  # fmt: skip
        # The index is built once, after the rows: maintained row by row it costs several
        # times as much.
        db.execute("DROP INDEX IF EXISTS idx_readings_dev_eui_time_s_id")
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?) "
            "INSERT INTO readings (id, dev_eui, time_s, fcnt, values_json, gateway_id, "
            "received_at) "
            "SELECT i + 1, ? || printf('%06x', i % ?), ? + (i / ?) * ?, i / ?, "
            "'{\"battery_mv\": 3500, \"occupied\": ' || "
            "CASE WHEN i % 3 THEN 'true' ELSE 'false' END || '}', "
            "? || printf('%06x', (i % ?) % ?), ? + (i / ?) * ? + 2 FROM n",
            [scale.readings, DEVICE_PREFIX, scale.devices, BASE_TIME_S, scale.devices,
             READING_INTERVAL_S, scale.devices, GATEWAY_PREFIX, scale.devices, scale.gateways,
             BASE_TIME_S, scale.devices, READING_INTERVAL_S],
        )  # fmt: skip
        db.execute(
            "INSERT INTO receptions (reading_id, gateway_id, rssi_dbm, snr_db) "
            "SELECT id, gateway_id, -60 - id % 70, (id % 40) * 0.25 - 5 FROM readings"
        )
        db.execute("CREATE INDEX idx_readings_dev_eui_time_s_id ON readings (dev_eui, time_s, id)")
        db.execute("COMMIT")
        db.execute("ANALYZE")
    finally:
        db.close()


def seeded_database(scale: Scale) -> tuple[Path, Path]:
    """The cached database of ``scale`` and its KEK file, seeding them if not cached."""
    folder = cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"api-{scale.label}-{schema_key()}.sqlite3"
    kek = folder / f"api-{scale.label}-{schema_key()}.kek.json"
    if path.exists() and kek.exists():
        return path, kek
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    kek.unlink(missing_ok=True)
    vault = KeyVault.generate_file(kek, "bench1")
    started = time.perf_counter()
    Store(partial, vault=vault).close()
    _seed_sql(partial, scale)
    partial.rename(path)
    print(
        f"note: seeded {path} in {time.perf_counter() - started:.0f} s "
        f"({path.stat().st_size / 1e9:.2f} GB)",
        file=sys.stderr,
    )
    return path, kek


def _token(path: Path, kek: Path) -> str:
    """An operator's bearer token, created in the database."""
    with Store(path, vault=KeyVault.from_file(kek)) as store:
        return create_token(store, role="operator", name="api bench")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _measure(api: str, token: str, scale: Scale, requests: int) -> dict[str, list[float]]:
    rng = random.Random(SEED)
    headers = {"Authorization": f"Bearer {token}"}
    routes: dict[str, Callable[[], str]] = {
        "gateways": lambda: "/api/v1/gateways",
        "gateway": lambda: f"/api/v1/gateways/{GATEWAY_PREFIX}{rng.randrange(scale.gateways):06x}",
        "node": lambda: f"/api/v1/nodes/{DEVICE_PREFIX}{rng.randrange(scale.devices):06x}",
        "readings": lambda: (
            f"/api/v1/nodes/{DEVICE_PREFIX}{rng.randrange(scale.devices):06x}/readings"
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in routes}
    with httpx.Client(base_url=api, headers=headers, timeout=30.0) as client:
        for path in routes.values():  # warm up the connection and the page cache's first pages
            client.get(path()).raise_for_status()
        for _ in range(requests):
            for name, path in routes.items():
                url = path()
                started = time.perf_counter()
                response = client.get(url)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                times[name].append(elapsed * 1000.0)
    return times


@contextmanager
def served_fleet(path: Path, kek: Path, instance: str) -> Iterator[str]:
    """``owlgate fleet serve`` on the database at ``path`` as its own process, with a fresh
    signing key, for as long as the block runs; yields the HTTP base URL."""
    with (
        tempfile.TemporaryDirectory(prefix=f"owlgate-{instance}-") as tmp,
        children_stopped_at_exit() as children,
    ):
        folder = Path(tmp)
        signing = folder / "fleet-signing-ed25519.pem"
        signing.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
            )
        )
        fleet = ChildProcess(
            "fleet",
            ["fleet", "serve", "--db", str(path), "--http-port", "0", "--instance", instance,
             "--signing-key", str(signing), "--kek-file", str(kek)],
            folder / "fleet.log",
        )  # fmt: skip
        children.append(fleet)
        yield fleet.expect(r"Uvicorn running on (http://\S+)", STARTUP_TIMEOUT_S).group(1)


def run(*, quick: bool = False) -> list[Figure]:
    """``fleet.api_p99_ms`` (seeding the database first if it is not cached)."""
    scale = QUICK if quick else FULL
    requests = QUICK_REQUESTS_PER_ROUTE if quick else REQUESTS_PER_ROUTE
    path, kek = seeded_database(scale)
    token = _token(path, kek)
    with served_fleet(path, kek, "api-bench") as api:
        times = _measure(api, token, scale, requests)
    every = [value for values in times.values() for value in values]
    comparisons: dict[str, float] = {}
    for name, values in times.items():
        comparisons[f"{name}_p50"] = statistics.median(values)
        comparisons[f"{name}_p99"] = _percentile(values, 0.99)
    return [
        Figure(
            "fleet.api_p99_ms",
            _percentile(every, 0.99),
            "ms",
            f"owlgate fleet serve on SQLite with {scale.gateways:,} gateways, {scale.devices:,}"
            f" devices, {scale.readings:,} readings: 99th percentile of {len(every):,} requests"
            " (GET gateways, one gateway, one node, a node's readings), one at a time over"
            " HTTP with an operator's token",
            goal_max=GOAL_P99_MS,
            comparisons=comparisons,
            median=statistics.median(every),
        )
    ]
