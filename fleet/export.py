"""Readings out of the fleet: SenML (RFC 8428, JSON and CBOR) and CSV exports, and the
retention job that turns old readings into rollups.

**Exports** stream: readings are read one device at a time, a page of
:data:`EXPORT_PAGE` rows per query (keyset on ``(time_s, id)`` over the
``(dev_eui, time_s, id)`` index), and written out as they come, so a range of ten million
readings never sits in memory. SenML follows :mod:`owlgate.codecs.senml`: base name
``urn:dev:mac:<DevEUI>:`` (RFC 9039 section 3.1), primary SenML units (RFC 8428 section 12.1,
converted from the profile's units: mV to V, mm to m, ppm to the ratio ``/``), a base time
per device and relative ``t``. The CBOR form (RFC 8428 section 6, integer labels) is one
indefinite-length array (RFC 8949 section 3.2.2), the only way to stream an array whose
length is not known when it starts. CSV is "long": one line per value.

**Retention** (:func:`run_retention`): readings older than ``raw_days`` are folded into
per-device, per-bucket rollups (``reading_rollups``, migration ``0310_reading_rollups``):
min, mean, max and count of every numeric value, the last of every other, and rollups older
than ``rollup_days`` are deleted. The job works one device and at most ``batch_size``
readings per transaction, so it never holds the database for long; in each transaction the
rollup is written and then the readings it holds are deleted, so a reading is never gone
without its rollup, and a job that fails half-way leaves readings or rollups, never neither.
A rollup keeps sums, not means, so readings arriving late for a bucket already rolled up
merge into it on the next run: the job is idempotent and may be run as often as wanted.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from owlgate.codecs.node import cbor
from owlgate.codecs.node.payloads import BOOT_FIELDS, STATUS_FIELDS
from owlgate.codecs.payloads import PROFILES
from owlgate.codecs.senml import CBOR_LABELS, QUANTITIES, base_name

from .auth import Principal, requires
from .schema import migration
from .sql import Sql, SqlError
from .store import FleetError, InvalidError, Store, eui_hex

log = logging.getLogger(__name__)

#: Readings read per query while exporting; the bytes written per chunk of the stream.
EXPORT_PAGE: Final = 1000
CHUNK_BYTES: Final = 64 * 1024
#: Default retention: a week of raw readings, hourly rollups kept for two years.
DEFAULT_RAW_DAYS: Final = 7.0
DEFAULT_ROLLUP_DAYS: Final = 730.0
DEFAULT_BUCKET_S: Final = 3600
DEFAULT_BATCH_SIZE: Final = 2000
DEFAULT_RETENTION_INTERVAL_S: Final = 3600.0
#: Ids per ``IN (...)`` list: well under SQLite's 999 bound parameters of old releases.
_IN_CHUNK: Final = 500
_DAY_S: Final = 86_400.0

ExportFormat = Literal["senml-json", "senml-cbor", "csv"]
MEDIA_TYPES: Final[dict[str, str]] = {
    "senml-json": "application/senml+json",
    "senml-cbor": "application/senml+cbor",
    "csv": "text/csv; charset=utf-8",
}
_SUFFIX: Final = {"senml-json": "senml.json", "senml-cbor": "senml.cbor", "csv": "csv"}


@migration("0310_reading_rollups")
def _reading_rollups(db: Sql) -> None:
    # stats_json: {value name: {"n", "min", "max", "sum"} for numbers, {"last", "at"} for
    # others}; sums rather than means so that a late reading merges exactly.
    db.execute(
        db.ddl(
            "CREATE TABLE reading_rollups ("
            "dev_eui TEXT NOT NULL, bucket_start {float} NOT NULL, bucket_s {int} NOT NULL, "
            "count {int} NOT NULL, first_time_s {float} NOT NULL, last_time_s {float} NOT NULL, "
            "stats_json TEXT NOT NULL, updated_at {float} NOT NULL, "
            "PRIMARY KEY (dev_eui, bucket_start, bucket_s))"
        )
    )


class RetentionError(FleetError):
    """A retention run stopped: what it says, nothing of the failed transaction is changed."""


# --- retention -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPolicy:
    """How long readings stay raw (``raw_days``), how long their rollups stay
    (``rollup_days``; None keeps them for ever), the rollup bucket (``bucket_s``) and the
    most readings one transaction rolls up (``batch_size``)."""

    raw_days: float = DEFAULT_RAW_DAYS
    rollup_days: float | None = DEFAULT_ROLLUP_DAYS
    bucket_s: int = DEFAULT_BUCKET_S
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        if not (math.isfinite(self.raw_days) and self.raw_days > 0):
            raise InvalidError(f"raw_days must be more than 0, got {self.raw_days}")
        if self.rollup_days is not None and not (
            math.isfinite(self.rollup_days) and self.rollup_days >= self.raw_days
        ):
            raise InvalidError(
                f"rollup_days must be at least raw_days ({self.raw_days:g}), got "
                f"{self.rollup_days}: a rollup would be deleted as soon as it is written"
            )
        bucket = self.bucket_s
        in_range = 60 <= bucket <= 31 * 86_400
        if not in_range or (86_400 % bucket if bucket < 86_400 else bucket % 86_400):
            raise InvalidError(
                f"bucket_s must divide a day (60, 300, 900, 3600 ...) or be whole days up to "
                f"31, got {self.bucket_s}"
            )
        if not 1 <= self.batch_size <= 100_000:
            raise InvalidError(f"batch_size must be 1 .. 100000, got {self.batch_size}")


@dataclass(slots=True)
class RetentionResult:
    """What one :func:`run_retention` did."""

    readings_rolled_up: int = 0
    buckets_written: int = 0
    rollups_deleted: int = 0
    devices: int = 0
    transactions: int = 0
    #: Readings whose stored values were not a JSON object: counted in their bucket, values lost.
    unreadable: int = 0
    stopped: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "readings_rolled_up": self.readings_rolled_up,
            "buckets_written": self.buckets_written,
            "rollups_deleted": self.rollups_deleted,
            "devices": self.devices,
            "transactions": self.transactions,
            "unreadable": self.unreadable,
            "stopped": self.stopped,
        }


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fold(stats: dict[str, dict[str, Any]], values: dict[str, Any], time_s: float) -> None:
    """Add one reading's ``values`` to a bucket's ``stats``."""
    for name, value in values.items():
        entry = stats.setdefault(name, {})
        if _number(value):
            if "n" in entry:
                entry["n"] += 1
                entry["sum"] += value
                entry["min"] = min(entry["min"], value)
                entry["max"] = max(entry["max"], value)
            else:
                entry.update(n=1, sum=value, min=value, max=value)
        elif value is not None and ("at" not in entry or time_s >= entry["at"]):
            entry["last"] = value
            entry["at"] = time_s


def merge(into: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]) -> None:
    """Merge the stats of one bucket (``other``) into another's (``into``)."""
    for name, entry in other.items():
        target = into.setdefault(name, {})
        if "n" in entry:
            if "n" in target:
                target["n"] += entry["n"]
                target["sum"] += entry["sum"]
                target["min"] = min(target["min"], entry["min"])
                target["max"] = max(target["max"], entry["max"])
            else:
                target.update(n=entry["n"], sum=entry["sum"], min=entry["min"], max=entry["max"])
        if "at" in entry and ("at" not in target or entry["at"] >= target["at"]):
            target["last"] = entry["last"]
            target["at"] = entry["at"]


def _next_eui(db: Sql, table: str, after: str) -> str | None:
    # MIN over the leading column of an index: one index probe per device, on both
    # databases, where SELECT DISTINCT would read the whole index.
    found = db.scalar(f"SELECT MIN(dev_eui) FROM {table} WHERE dev_eui > ?", [after])
    return None if found is None else str(found)


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_retention(
    db: Sql,
    policy: RetentionPolicy,
    *,
    now: float,
    stop: threading.Event | None = None,
) -> RetentionResult:
    """Roll readings older than ``policy.raw_days`` up and delete rollups older than
    ``policy.rollup_days``, device by device, a batch per transaction. ``stop`` ends the run
    between two transactions (``result.stopped``). Running it again changes nothing more
    until time passes or late readings arrive."""
    result = RetentionResult()
    bucket_s = policy.bucket_s
    # Only whole buckets: every reading of a bucket is past the cutoff when it is rolled up.
    cutoff = math.floor((now - policy.raw_days * _DAY_S) / bucket_s) * bucket_s
    eui = ""
    while True:
        if stop is not None and stop.is_set():
            result.stopped = True
            return result
        found = _next_eui(db, "readings", eui)
        if found is None:
            break
        eui = found
        rolled = _roll_up_device(db, eui, cutoff, policy, now, result, stop)
        if rolled:
            result.devices += 1
        if result.stopped:
            return result
    if policy.rollup_days is not None:
        expiry = now - policy.rollup_days * _DAY_S
        eui = ""
        while True:
            if stop is not None and stop.is_set():
                result.stopped = True
                return result
            found = _next_eui(db, "reading_rollups", eui)
            if found is None:
                break
            eui = found
            with db.transaction() as tx:
                result.rollups_deleted += tx.execute(
                    "DELETE FROM reading_rollups WHERE dev_eui = ? AND bucket_start < ?",
                    [eui, expiry],
                )
                result.transactions += 1
    if result.readings_rolled_up or result.rollups_deleted:
        log.info(
            "retention: %d readings of %d devices rolled up into %d buckets, %d rollups deleted",
            result.readings_rolled_up,
            result.devices,
            result.buckets_written,
            result.rollups_deleted,
        )
    return result


def _roll_up_device(
    db: Sql,
    eui: str,
    cutoff: float,
    policy: RetentionPolicy,
    now: float,
    result: RetentionResult,
    stop: threading.Event | None,
) -> int:
    bucket_s = policy.bucket_s
    rolled = 0
    while True:
        if stop is not None and stop.is_set():
            result.stopped = True
            return rolled
        with db.transaction() as tx:
            rows = tx.query_tuples(
                "SELECT id, time_s, values_json FROM readings WHERE dev_eui = ? AND time_s < ? "
                "ORDER BY time_s, id LIMIT ?",
                [eui, cutoff, policy.batch_size],
            )
            if not rows:
                return rolled
            buckets: dict[float, dict[str, Any]] = {}
            unreadable = 0
            for _, time_s, text in rows:
                start = float(math.floor(time_s / bucket_s) * bucket_s)
                bucket = buckets.setdefault(
                    start, {"count": 0, "first": time_s, "last": time_s, "stats": {}}
                )
                bucket["count"] += 1
                bucket["first"] = min(bucket["first"], time_s)
                bucket["last"] = max(bucket["last"], time_s)
                try:
                    values = json.loads(text)
                except ValueError:
                    values = None
                if isinstance(values, dict):
                    fold(bucket["stats"], values, float(time_s))
                else:
                    unreadable += 1
                    # Counted in the bucket, so the count still says how many readings it
                    # replaced; the values cannot be kept.
                    log.warning("retention: device %s: a reading's values are not JSON", eui)
            starts = sorted(buckets)
            for part in _chunks(starts):
                marks = ", ".join("?" * len(part))
                for row in tx.query(
                    "SELECT bucket_start, count, first_time_s, last_time_s, stats_json "
                    "FROM reading_rollups WHERE dev_eui = ? AND bucket_s = ? "
                    f"AND bucket_start IN ({marks})",
                    [eui, bucket_s, *part],
                ):
                    bucket = buckets[float(row["bucket_start"])]
                    bucket["count"] += row["count"]
                    bucket["first"] = min(bucket["first"], row["first_time_s"])
                    bucket["last"] = max(bucket["last"], row["last_time_s"])
                    stored = json.loads(row["stats_json"])
                    merge(stored, bucket["stats"])
                    bucket["stats"] = stored
            tx.executemany(
                "INSERT INTO reading_rollups (dev_eui, bucket_start, bucket_s, count, "
                "first_time_s, last_time_s, stats_json, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (dev_eui, bucket_start, bucket_s) DO UPDATE SET "
                "count = excluded.count, first_time_s = excluded.first_time_s, "
                "last_time_s = excluded.last_time_s, stats_json = excluded.stats_json, "
                "updated_at = excluded.updated_at",
                [
                    (
                        eui,
                        start,
                        bucket_s,
                        buckets[start]["count"],
                        buckets[start]["first"],
                        buckets[start]["last"],
                        json.dumps(buckets[start]["stats"], sort_keys=True, separators=(",", ":")),
                        now,
                    )
                    for start in starts
                ],
            )
            ids = [row[0] for row in rows]
            deleted = 0
            for part in _chunks(ids):
                marks = ", ".join("?" * len(part))
                tx.execute(f"DELETE FROM receptions WHERE reading_id IN ({marks})", list(part))
                deleted += tx.execute(f"DELETE FROM readings WHERE id IN ({marks})", list(part))
            if deleted != len(ids):
                # Another retention run took some of these readings first: this transaction
                # would count them twice. Rolled back whole; the next run starts afresh.
                raise RetentionError(
                    f"device {eui}: {len(ids) - deleted} of {len(ids)} readings were removed by "
                    "someone else during retention (two retention jobs at once?); rolled back"
                )
        result.readings_rolled_up += len(ids)
        result.buckets_written += len(starts)
        result.transactions += 1
        result.unreadable += unreadable
        rolled += len(ids)
        if len(rows) < policy.batch_size:
            return rolled


# --- the retention service ---------------------------------------------------------------------


@dataclass(slots=True)
class RetentionService:
    """Runs :func:`run_retention` every ``interval_s`` in a worker thread while the fleet
    serves; its counters show in ``GET /api/v1/stats`` under ``retention``."""

    store: Store
    policy: RetentionPolicy
    interval_s: float
    clock: Callable[[], float]
    name: str = "retention"
    runs: int = 0
    failures: int = 0
    totals: RetentionResult = field(default_factory=RetentionResult)
    last_run_at: float | None = None
    last_error: str | None = None
    #: Set after every run (tests and callers wait on it rather than sleeping).
    ran: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def stats(self) -> dict[str, object]:
        return {
            "runs": self.runs,
            "failures": self.failures,
            "last_run_at": self.last_run_at,
            "last_error": self.last_error,
            **self.totals.to_json(),
        }

    async def run(self) -> None:
        while not self._stop.is_set():
            now = self.clock()
            try:
                result = await asyncio.to_thread(
                    run_retention, self.store.sql, self.policy, now=now, stop=self._stop
                )
            except (SqlError, FleetError) as err:
                self.failures += 1
                self.last_error = str(err)
                log.warning("retention run failed (will retry in %.0f s): %s", self.interval_s, err)
            else:
                self.last_error = None
                for name in (
                    "readings_rolled_up",
                    "buckets_written",
                    "rollups_deleted",
                    "unreadable",
                ):
                    setattr(self.totals, name, getattr(self.totals, name) + getattr(result, name))
                self.totals.transactions += result.transactions
            self.runs += 1
            self.last_run_at = now
            self.ran.set()
            # Woken early by stop(); otherwise the interval passing is the normal way on.
            with suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


def retention_service(
    policy: RetentionPolicy,
    *,
    interval_s: float = DEFAULT_RETENTION_INTERVAL_S,
    clock: Callable[[], float] = time.time,
) -> Callable[[Store], AbstractAsyncContextManager[RetentionService]]:
    """A background service for ``owlgate fleet serve`` (a ``Service`` of
    :mod:`owlgate.fleet.cli`): the retention job every ``interval_s``, first at start."""
    if not interval_s > 0:
        raise InvalidError(f"the retention interval must be more than 0 s, got {interval_s}")

    @asynccontextmanager
    async def service(store: Store) -> AsyncIterator[RetentionService]:
        running = RetentionService(store=store, policy=policy, interval_s=interval_s, clock=clock)
        task = asyncio.create_task(running.run(), name="retention")
        try:
            yield running
        finally:
            running.stop()
            # The worker thread finishes its transaction and sees the stop flag.
            await task

    return service


# --- exports -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadingsQuery:
    """Which readings to export: devices (all when empty), a profile, a time range
    (``since`` inclusive, ``until`` exclusive), and whether rollups go out too."""

    dev_euis: tuple[str, ...] = ()
    profile_id: str | None = None
    since: float | None = None
    until: float | None = None
    rollups: bool = True


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One reading or one rollup, as the writers take it."""

    dev_eui: str
    profile_id: str | None
    time_s: float
    fcnt: int | None
    values: dict[str, Any]
    rssi_dbm: int | None
    snr_db: float | None
    #: None for a raw reading; for a rollup, its bucket length and reading count.
    bucket_s: int | None = None
    count: int | None = None


def _devices(db: Sql, query: ReadingsQuery) -> Iterator[str]:
    if query.dev_euis:
        yield from sorted({eui_hex(e, "DevEUI") for e in query.dev_euis})
        return
    if query.profile_id is not None:
        after = ""
        while True:
            page = db.query_tuples(
                "SELECT dev_eui FROM devices WHERE profile_id = ? AND dev_eui > ? "
                "ORDER BY dev_eui LIMIT ?",
                [query.profile_id, after, EXPORT_PAGE],
            )
            yield from (row[0] for row in page)
            if len(page) < EXPORT_PAGE:
                return
            after = page[-1][0]
    # Every device with readings or rollups, registered or not.
    after = ""
    while True:
        found = [_next_eui(db, "readings", after)]
        if query.rollups:
            found.append(_next_eui(db, "reading_rollups", after))
        present = [eui for eui in found if eui is not None]
        if not present:
            return
        after = min(present)
        yield after


def _time_filter(query: ReadingsQuery, column: str) -> tuple[str, list[Any]]:
    where, params = "", []
    if query.since is not None:
        where += f" AND {column} >= ?"
        params.append(query.since)
    if query.until is not None:
        where += f" AND {column} < ?"
        params.append(query.until)
    return where, params


def iter_rows(db: Sql, query: ReadingsQuery) -> Iterator[ExportRow]:
    """The readings (and rollups) of ``query``, device by device, oldest first; a page per
    query, so memory stays bounded whatever the range."""
    if query.profile_id is not None and query.profile_id not in PROFILES:
        raise InvalidError(
            f"unknown device profile {query.profile_id!r}; known: {', '.join(sorted(PROFILES))}"
        )
    for eui in _devices(db, query):
        profile_id = db.scalar("SELECT profile_id FROM devices WHERE dev_eui = ?", [eui])
        if query.rollups:
            yield from _rollup_rows(db, eui, profile_id, query)
        yield from _reading_rows(db, eui, profile_id, query)


def _rollup_rows(
    db: Sql, eui: str, profile_id: str | None, query: ReadingsQuery
) -> Iterator[ExportRow]:
    where, params = _time_filter(query, "bucket_start")
    after = -math.inf
    while True:
        rows = db.query_tuples(
            "SELECT bucket_start, bucket_s, count, stats_json FROM reading_rollups "
            f"WHERE dev_eui = ? AND bucket_start > ?{where} ORDER BY bucket_start LIMIT ?",
            [eui, after, *params, EXPORT_PAGE],
        )
        for bucket_start, bucket_s, count, text in rows:
            yield ExportRow(
                eui,
                profile_id,
                float(bucket_start),
                None,
                json.loads(text),
                None,
                None,
                int(bucket_s),
                int(count),
            )
        if len(rows) < EXPORT_PAGE:
            return
        after = float(rows[-1][0])


def _reading_rows(
    db: Sql, eui: str, profile_id: str | None, query: ReadingsQuery
) -> Iterator[ExportRow]:
    where, params = _time_filter(query, "time_s")
    after_time, after_id = -math.inf, 0
    while True:
        rows = db.query_tuples(
            "SELECT id, time_s, fcnt, values_json FROM readings WHERE dev_eui = ? "
            f"AND (time_s > ? OR (time_s = ? AND id > ?)){where} ORDER BY time_s, id LIMIT ?",
            [eui, after_time, after_time, after_id, *params, EXPORT_PAGE],
        )
        best: dict[int, tuple[int | None, float | None]] = {}
        ids = [row[0] for row in rows]
        for part in _chunks(ids):
            marks = ", ".join("?" * len(part))
            for reading_id, rssi, snr in db.query_tuples(
                "SELECT reading_id, rssi_dbm, snr_db FROM receptions "
                f"WHERE reading_id IN ({marks})",
                list(part),
            ):
                # The best hearing of the frame: the strongest signal.
                known = best.get(reading_id)
                if known is None or (rssi is not None and (known[0] is None or rssi > known[0])):
                    best[reading_id] = (rssi, snr)
        for reading_id, time_s, fcnt, text in rows:
            try:
                values = json.loads(text)
            except ValueError:
                log.warning("export: device %s: reading %d is not JSON; left out", eui, reading_id)
                continue
            rssi, snr = best.get(reading_id, (None, None))
            yield ExportRow(
                eui,
                profile_id,
                float(time_s),
                fcnt,
                values if isinstance(values, dict) else {},
                rssi,
                snr,
            )
        if len(rows) < EXPORT_PAGE:
            return
        after_time, after_id = float(rows[-1][1]), int(rows[-1][0])


# --- SenML ---------------------------------------------------------------------------------------

# Profile units as primary SenML units (RFC 8428 section 12.1): (unit, divisor).
_SENML_UNITS: Final[dict[str, tuple[str, int]]] = {
    "mV": ("V", 1000),
    "mm": ("m", 1000),
    "ppm": ("/", 1_000_000),
    "°C": ("Cel", 1),
    "%": ("%", 1),
    "%RH": ("%RH", 1),
    "s": ("s", 1),
    "Hz": ("Hz", 1),
    "dB": ("dB", 1),
}
_DEVICE_UNITS: Final = {f[0]: f[6] for f in (*STATUS_FIELDS, *BOOT_FIELDS) if f[6]}
_NAME_UNSAFE: Final = re.compile(r"[^-:./_A-Za-z0-9]")


def _units(profile_id: str | None) -> dict[str, str]:
    units = dict(_DEVICE_UNITS)
    profile = PROFILES.get(profile_id) if profile_id is not None else None
    if profile is not None:
        units.update((q.name, q.unit) for q in profile.values if q.unit)
    return units


def _senml_name_unit(name: str, units: dict[str, str]) -> tuple[str, str | None, int]:
    known = QUANTITIES.get(name)
    if known is not None:
        return known
    unit = _SENML_UNITS.get(units.get(name, ""))
    safe = _NAME_UNSAFE.sub("_", name)
    return (safe, None, 1) if unit is None else (safe, unit[0], unit[1])


def _scaled(value: float, divisor: int) -> float:
    # Dividing (3003 / 1000 is 3.003) rather than multiplying by 0.001, as the codec does.
    return value / divisor if divisor != 1 else value


def _plain(value: object) -> dict[str, object] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return {"vb": value}
    if _number(value):
        return {"v": value}
    if isinstance(value, str):
        return {"vs": value}
    return {"vs": json.dumps(value, sort_keys=True, separators=(",", ":"))}


def senml_records(row: ExportRow, units: dict[str, str]) -> list[dict[str, object]]:
    """The SenML records (JSON labels, no ``bn``/``bt``/``t``) of one exported row.

    A raw reading gives one record per value, plus ``rssi`` (dBW), ``snr`` and ``fcnt``. A
    rollup gives ``<name>:min``, ``<name>:mean`` and ``<name>:max`` per numeric value, the
    last of every other value under its own name, and ``count``, the readings it replaced.
    """
    records: list[dict[str, object]] = []

    def add(name: str, unit: str | None, fields: dict[str, object] | None) -> None:
        if fields is not None:
            records.append({"n": name, **({"u": unit} if unit is not None else {}), **fields})

    if row.bucket_s is None:
        for key, value in row.values.items():
            name, unit, divisor = _senml_name_unit(key, units)
            if _number(value):
                add(name, unit, {"v": _scaled(value, divisor)})
            else:
                add(name, None, _plain(value))
        if row.rssi_dbm is not None:
            add("rssi", "dBW", {"v": row.rssi_dbm - 30})
        if row.snr_db is not None:
            add("snr", "dB", {"v": row.snr_db})
        if row.fcnt is not None:
            add("fcnt", None, {"v": row.fcnt})
        return records
    for key, entry in row.values.items():
        name, unit, divisor = _senml_name_unit(key, units)
        if "n" in entry:
            add(f"{name}:min", unit, {"v": _scaled(entry["min"], divisor)})
            add(f"{name}:mean", unit, {"v": _scaled(entry["sum"] / entry["n"], divisor)})
            add(f"{name}:max", unit, {"v": _scaled(entry["max"], divisor)})
        if "last" in entry:
            add(name, None, _plain(entry["last"]))
    add("count", None, {"v": row.count})
    return records


def _senml_packs(rows: Iterator[ExportRow]) -> Iterator[dict[str, object]]:
    """SenML records for ``rows``: ``bn`` and ``bt`` on the first record of each device,
    ``t`` relative to ``bt`` after it (RFC 8428 section 4.5.3)."""
    current: str | None = None
    base_time = 0.0
    units: dict[str, str] = {}
    for row in rows:
        records = senml_records(row, units if row.dev_eui == current else _units(row.profile_id))
        if not records:
            continue
        head: dict[str, object] = {}
        if row.dev_eui != current:
            current = row.dev_eui
            units = _units(row.profile_id)
            base_time = row.time_s
            head = {"bn": base_name(bytes.fromhex(row.dev_eui)), "bt": base_time}
        offset = row.time_s - base_time
        for position, record in enumerate(records):
            if offset != 0:
                record["t"] = offset
            yield {**head, **record} if position == 0 else record


def _buffered(parts: Iterator[bytes]) -> Iterator[bytes]:
    buffer = bytearray()
    for part in parts:
        buffer += part
        if len(buffer) >= CHUNK_BYTES:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def senml_json_stream(rows: Iterator[ExportRow]) -> Iterator[bytes]:
    """``application/senml+json`` (RFC 8428 section 5), written as the rows come."""

    def parts() -> Iterator[bytes]:
        yield b"["
        first = True
        for record in _senml_packs(rows):
            text = json.dumps(record, separators=(",", ":"), allow_nan=False)
            yield (text if first else "," + text).encode()
            first = False
        yield b"]"

    return _buffered(parts())


def senml_cbor_stream(rows: Iterator[ExportRow]) -> Iterator[bytes]:
    """``application/senml+cbor`` (RFC 8428 section 6): an indefinite-length array of records
    with integer labels, each record deterministic CBOR."""

    def parts() -> Iterator[bytes]:
        yield b"\x9f"
        for record in _senml_packs(rows):
            yield cbor.dumps({CBOR_LABELS[label]: value for label, value in record.items()})
        yield b"\xff"

    return _buffered(parts())


CSV_COLUMNS: Final = (
    "dev_eui",
    "time",
    "time_s",
    "kind",
    "name",
    "value",
    "unit",
    "count",
    "min",
    "max",
    "bucket_s",
    "fcnt",
)


def _csv_value(value: object) -> object:
    if value is None or isinstance(value, str | int | float):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def csv_stream(rows: Iterator[ExportRow]) -> Iterator[bytes]:
    """CSV, one line per value in the profile's own names and units (``battery_mv`` in mV):
    ``kind`` is ``reading`` (``value`` as read) or ``rollup`` (``value`` the mean, or the last
    value of a non-numeric one; ``time`` the bucket's start)."""

    def parts() -> Iterator[bytes]:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        units: dict[str, str] = {}
        current: str | None = None
        for row in rows:
            if row.dev_eui != current:
                current, units = row.dev_eui, _units(row.profile_id)
            when = _iso(row.time_s)
            if row.bucket_s is None:
                extra = {"rssi_dbm": row.rssi_dbm, "snr_db": row.snr_db}
                for name, value in (*row.values.items(), *extra.items()):
                    if value is not None:
                        writer.writerow(
                            [
                                row.dev_eui,
                                when,
                                row.time_s,
                                "reading",
                                name,
                                _csv_value(value),
                                units.get(
                                    name,
                                    "dBm"
                                    if name == "rssi_dbm"
                                    else "dB"
                                    if name == "snr_db"
                                    else "",
                                ),
                                "",
                                "",
                                "",
                                "",
                                "" if row.fcnt is None else row.fcnt,
                            ]
                        )
            else:
                for name, entry in row.values.items():
                    base = [row.dev_eui, when, row.time_s, "rollup", name]
                    if "n" in entry:
                        writer.writerow(
                            [
                                *base,
                                entry["sum"] / entry["n"],
                                units.get(name, ""),
                                entry["n"],
                                entry["min"],
                                entry["max"],
                                row.bucket_s,
                                "",
                            ]
                        )
                    elif "last" in entry:
                        writer.writerow(
                            [
                                *base,
                                _csv_value(entry["last"]),
                                units.get(name, ""),
                                row.count,
                                "",
                                "",
                                row.bucket_s,
                                "",
                            ]
                        )
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()

    return _buffered(parts())


def export_stream(db: Sql, query: ReadingsQuery, fmt: ExportFormat) -> Iterator[bytes]:
    """The export of ``query`` in ``fmt``, as byte chunks."""
    rows = iter_rows(db, query)
    if fmt == "senml-json":
        return senml_json_stream(rows)
    if fmt == "senml-cbor":
        return senml_cbor_stream(rows)
    return csv_stream(rows)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


#: Unix seconds, as ``--since`` and ``?since=`` take them besides ISO 8601.
_NUMBER: Final = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def parse_time(text: str, what: str) -> float:
    """Unix seconds or an ISO 8601 time (UTC when it names no zone); InvalidError otherwise."""
    if _NUMBER.fullmatch(text.strip()):
        return float(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise InvalidError(f"{what}: not a time (ISO 8601 or Unix seconds): {text!r}") from err
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# --- API -----------------------------------------------------------------------------------------


def _store(request: Request) -> Store:
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None:
        raise RuntimeError("the app has no store: build it with owlgate.fleet.api.create_app")
    return store


def router() -> APIRouter:
    """``GET /api/v1/export/readings``: readings (and rollups) as SenML JSON, SenML CBOR or
    CSV, streamed."""
    from .api import API_PREFIX

    api = APIRouter(prefix=API_PREFIX)

    @api.get(
        "/export/readings",
        summary="Export readings as SenML (JSON, CBOR) or CSV, streamed",
        response_class=StreamingResponse,
    )
    def export_readings(
        store: Annotated[Store, Depends(_store)],
        principal: Annotated[Principal, requires("operator")],
        format: ExportFormat = "senml-json",
        dev_eui: Annotated[list[str] | None, Query(max_length=1000)] = None,
        profile_id: Annotated[str | None, Query(max_length=100)] = None,
        since: Annotated[str | None, Query(description="ISO 8601 or Unix seconds")] = None,
        until: Annotated[str | None, Query(description="ISO 8601 or Unix seconds")] = None,
        rollups: bool = True,
    ) -> StreamingResponse:
        query = ReadingsQuery(
            dev_euis=tuple(eui_hex(e, "dev_eui") for e in dev_eui or ()),
            profile_id=profile_id,
            since=None if since is None else parse_time(since, "since"),
            until=None if until is None else parse_time(until, "until"),
            rollups=rollups,
        )
        if query.profile_id is not None and query.profile_id not in PROFILES:
            raise InvalidError(
                f"profile_id: unknown device profile {query.profile_id!r}; known: "
                f"{', '.join(sorted(PROFILES))}"
            )
        log.info("readings export (%s) for %s (%s)", format, principal.name, principal.role)
        return StreamingResponse(
            export_stream(store.sql, query, format),
            media_type=MEDIA_TYPES[format],
            headers={"Content-Disposition": f'attachment; filename="readings.{_SUFFIX[format]}"'},
        )

    return api
