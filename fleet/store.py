"""The fleet's storage: one SQLite file (WAL mode), ``:memory:``, or a PostgreSQL database,
through the portable SQL layer :mod:`owlgate.fleet.sql`.

What lives here: the registry (gateways with their public keys and health facts, device
profiles, devices), device secrets, the join server's state (DevNonces used, JoinNonce,
DevAddr), and what the ingest stores (batches seen, readings, receptions).

Rules the code keeps:

- every write that belongs together runs in one transaction (:meth:`Store.transaction`): a
  batch of readings is stored whole or not at all;
- the schema is built by registered migration functions (:mod:`owlgate.fleet.schema`, this
  module's are ``0001``-``0099`` and, for what the dashboard plots, ``0800``-``0899``),
  applied in order when the store opens, each recorded by name in the ``migrations`` table so
  it runs exactly once;
- what the dashboard plots is written in the transaction of the fact it comes from, kept a
  week and pruned by key range: each health message as a row of ``gateway_health``
  (:meth:`Store.health_history`), the readings and receptions of each minute summed in
  ``ingest_minutes`` (:meth:`Store.ingest_per_minute`);
- every statement is written once for both databases; the few places that differ ask
  :attr:`Sql.dialect <owlgate.fleet.sql.Sql.dialect>`: the ids of new readings, the arrays
  PostgreSQL takes a batch's rows in, the advisory lock that keeps two PostgreSQL ingest
  processes from storing one frame twice (:meth:`Store.record_batches`);
- times are UTC seconds since the Unix epoch (floats), ids are lowercase hex: a gateway by
  its EUI-64, a device by its DevEUI (16 digits each);
- secrets (AppKey, NwkSKey, AppSKey) live in their own table, ``device_keys``, and no method
  that returns registry rows returns them. Each is stored wrapped (AES key wrap, RFC 3394)
  under the key-encryption key of the store's :class:`~owlgate.fleet.vault.KeyVault`, which
  is never in the database. A store opened without a vault refuses to write or read a key
  (VaultRequiredError), so no key is ever written in plaintext. A database from before the
  vault (plaintext keys, 16 bytes each) is re-wrapped in one transaction the first time it
  is opened with a vault (see :meth:`Store.__init__`).

Pagination is keyset-based: a page holds ``items`` and ``next``, an opaque cursor to pass back
as ``after`` for the next page (None on the last page). Unlike an offset, a cursor does not
skip or repeat rows when rows are inserted between two requests.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, Literal, TypeVar

from owlgate.codecs.errors import OwlgateError
from owlgate.codecs.health import Health
from owlgate.codecs.node.cbor import Tag
from owlgate.codecs.node.telemetry import Reading
from owlgate.codecs.payloads import PROFILES

from . import schema
from .health import GatewayFacts
from .schema import migration
from .sql import (
    DEFAULT_POOL_SIZE,
    DataRefused,
    Dialect,
    PostgresSql,
    Sql,
    SqliteSql,
    connect,
    is_postgres_url,
    redacted,
)
from .vault import KeyVault, VaultError, VaultRequiredError, is_wrapped, kek_id_of

log = logging.getLogger(__name__)

#: How far apart (seconds of reading time) two readings with the same DevEUI and FCnt may be
#: and still be one frame heard twice: FCnt restarts at 0 after a rejoin, so equal counters
#: far apart in time are different frames.
DEFAULT_DEDUP_WINDOW_S: Final = 300.0
DEFAULT_PAGE_LIMIT: Final = 100
WAL_AUTOCHECKPOINT_PAGES: Final = 10_000
MAX_PAGE_LIMIT: Final = 1000
#: PostgreSQL advisory lock keys (any two 64-bit numbers no other part uses): the one the
#: migrations run under, and the one the ingest's writes take (:meth:`Store._ingest_lock`).
_MIGRATE_LOCK: Final = 0x6F776C6701
_INGEST_LOCK: Final = 0x6F776C6702
#: How long a gateway's health messages are kept (``gateway_health``), and the readings and
#: receptions counted per minute (``ingest_minutes``): the dashboard plots a week at most.
HEALTH_HISTORY_S: Final = 7 * 86_400
INGEST_MINUTES_KEPT: Final = 7 * 1440
#: The most rows one history or hearing query reads.
MAX_HISTORY_LIMIT: Final = 100_000

Activation = Literal["abp", "otaa"]
T = TypeVar("T")


class FleetError(OwlgateError):
    """Root of the fleet manager's errors; ``message`` says what was wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(FleetError):
    """No gateway, device or profile with that id."""


class ConflictError(FleetError):
    """The id is already registered (or a DevAddr already in use)."""


class InvalidError(FleetError):
    """A value the registry does not accept (bad hex, wrong key length, unknown profile)."""


# --- values ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: ``next`` is the cursor for the following page, or None."""

    items: list[T]
    next: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Gateway:
    """A registered gateway and the facts its health state is computed from."""

    id: str
    name: str
    sign_public_key: bytes
    seal_public_key: bytes
    created: float
    facts: GatewayFacts
    last_health: dict[str, Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Device:
    """A registered device, without its keys."""

    dev_eui: str
    profile_id: str
    activation: Activation
    join_eui: str | None
    dev_addr: int | None
    name: str
    created: float
    last_seen: float | None
    last_fcnt: int | None
    battery_mv: int | None
    joined_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceKeys:
    """A device's secrets: AppKey (OTAA), and the session keys once there is a session."""

    app_key: bytes | None
    nwk_s_key: bytes | None
    app_s_key: bytes | None

    def __repr__(self) -> str:
        return "DeviceKeys(<secret>)"


@dataclass(frozen=True, slots=True)
class Reception:
    """One gateway's hearing of a reading."""

    gateway_id: str
    rssi_dbm: int | None
    snr_db: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredReading:
    """A reading as stored, with every gateway that heard it."""

    id: int
    dev_eui: str
    time_s: float
    fcnt: int | None
    values: dict[str, Any]
    gateway_id: str
    received_at: float
    receptions: list[Reception]


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What :meth:`Store.record_batch` did: readings stored, readings merged into an existing
    one (same frame from another gateway), and whether the whole batch was a repeat."""

    stored: int
    duplicates_merged: int
    batch_duplicate: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    id: str
    name: str
    description: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPoint:
    """One health message of a gateway as the history keeps it: ``at`` is the fleet's receive
    time; radio counters are None when the gateway sent none."""

    at: float
    uptime_s: int | None
    agent_uptime_s: int | None
    cpu_temp_c: float | None
    load_1m: float | None
    outbox_depth: int | None
    outbox_oldest_age_s: int | None
    backhaul_rtt_ms: float | None
    radio_received: int | None
    radio_crc_ok: int | None
    radio_crc_bad: int | None
    radio_forwarded: int | None
    radio_transmitted: int | None
    reconnects: int | None
    config_seq: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestMinute:
    """What the ingest stored in one minute (``minute``: its start, seconds since the epoch):
    new readings, and receptions (every gateway copy, duplicates merged included)."""

    minute: float
    readings: int
    receptions: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeardDevice:
    """A device a gateway heard, over the gateway's newest receptions: frames heard, the
    latest reading time, RSSI/SNR of the newest reception, and the mean RSSI."""

    dev_eui: str
    profile_id: str | None
    frames: int
    last_heard: float
    rssi_dbm: int | None
    snr_db: float | None
    mean_rssi_dbm: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HearingGateway:
    """A gateway that heard a device, over the device's newest readings (as
    :class:`HeardDevice`, seen from the device)."""

    gateway_id: str
    frames: int
    last_heard: float
    rssi_dbm: int | None
    snr_db: float | None
    mean_rssi_dbm: float | None


# --- ids ---------------------------------------------------------------------------------------


def eui_hex(value: str | bytes, what: str = "EUI-64") -> str:
    """An EUI-64 as 16 lowercase hex digits, from 8 bytes or hex text; InvalidError otherwise."""
    if isinstance(value, bytes):
        if len(value) != 8:
            raise InvalidError(f"{what} must be 8 bytes, got {len(value)}")
        return value.hex()
    text = value.strip().lower()
    if len(text) != 16 or any(c not in "0123456789abcdef" for c in text):
        raise InvalidError(f"{what} must be 16 hex digits, got {value!r}")
    return text


def _key(value: bytes | None, what: str, length: int = 16) -> bytes | None:
    if value is not None and len(value) != length:
        raise InvalidError(f"{what} must be {length} bytes, got {len(value)}")
    return value


# --- migrations --------------------------------------------------------------------------------
#
# The names and the tables are those of the releases that built the schema through
# sqlite-utils: a database they made opens unchanged (same column types, keys and index names).


@migration("0001_registry")
def _registry(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE gateways ("
            "id TEXT PRIMARY KEY, "
            "name TEXT NOT NULL, "
            "sign_public_key {blob} NOT NULL, "
            "seal_public_key {blob} NOT NULL, "
            "created {float} NOT NULL, "
            "last_seen {float}, "
            # The retained state topic: 1 online, 0 offline (the Last Will), NULL never said.
            "state_online {int}, "
            "state_at {float}, "
            "heartbeat_interval_s {int}, "
            "last_health_at {float}, "
            "outbox_depth {int}, "
            "outbox_oldest_age_s {int}, "
            "radio_crc_ok {int}, "
            "radio_crc_bad {int}, "
            "last_health_json TEXT)"
        )
    )
    db.execute(
        "CREATE TABLE device_profiles (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT)"
    )
    db.execute(
        db.ddl(
            "CREATE TABLE devices ("
            "dev_eui TEXT PRIMARY KEY, "
            "profile_id TEXT NOT NULL REFERENCES device_profiles (id), "
            "activation TEXT NOT NULL, "
            "join_eui TEXT, "
            "dev_addr {int}, "
            "name TEXT, "
            "created {float} NOT NULL, "
            "last_seen {float}, "
            "last_fcnt {int}, "
            "battery_mv {int}, "
            "joined_at {float}, "
            # Last JoinNonce issued (LoRaWAN 1.0.4 section 6.2.3: a counter per device).
            "join_nonce {int})"
        )
    )
    db.execute("CREATE INDEX idx_devices_dev_addr ON devices (dev_addr)")
    # Written in plaintext by the releases before migration 0004; wrapped since.
    db.execute(
        db.ddl(
            "CREATE TABLE device_keys ("
            "dev_eui TEXT PRIMARY KEY REFERENCES devices (dev_eui), "
            "app_key {blob}, nwk_s_key {blob}, app_s_key {blob})"
        )
    )
    db.execute(
        db.ddl(
            "CREATE TABLE join_nonces (dev_eui TEXT, dev_nonce {int}, at {float}, "
            "PRIMARY KEY (dev_eui, dev_nonce))"
        )
    )


@migration("0002_ingest")
def _ingest(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE batches (gateway_id TEXT, seq {int}, received_at {float}, "
            "PRIMARY KEY (gateway_id, seq))"
        )
    )
    db.execute(
        db.ddl(
            "CREATE TABLE readings ("
            "id {serial}, "
            "dev_eui TEXT NOT NULL, "
            "time_s {float} NOT NULL, "
            "fcnt {int}, "
            "values_json TEXT NOT NULL, "
            "gateway_id TEXT NOT NULL, "
            "received_at {float} NOT NULL)"
        )
    )
    db.execute("CREATE INDEX idx_readings_dev_eui_time_s_id ON readings (dev_eui, time_s, id)")
    db.execute("CREATE INDEX idx_readings_dev_eui_fcnt ON readings (dev_eui, fcnt)")
    # Receptions are listed in the order they were stored (the first gateway to deliver a
    # frame first): SQLite keeps that order in its rowid; PostgreSQL has no rowid, so its
    # table numbers them in a column of its own.
    heard = ", heard BIGINT GENERATED ALWAYS AS IDENTITY" if db.dialect == "postgres" else ""
    db.execute(
        db.ddl(
            "CREATE TABLE receptions ("
            "reading_id {int} REFERENCES readings (id), "
            "gateway_id TEXT, "
            "rssi_dbm {int}, "
            "snr_db {float}"
            f"{heard}, "
            "PRIMARY KEY (reading_id, gateway_id))"
        )
    )


@migration("0003_readings_without_fcnt_index")
def _drop_fcnt_index(db: Sql) -> None:
    # The same-frame lookup (DevEUI, FCnt, time within the dedup window) is served as well by
    # the (dev_eui, time_s, id) index, and every reading stored paid for a second per-device
    # index: each index on dev_eui puts a transaction's inserts on as many pages as there
    # are devices in it, and those pages are what a commit writes.
    db.execute("DROP INDEX IF EXISTS idx_readings_dev_eui_fcnt")


@migration("0004_wrapped_device_keys")
def _wrapped_device_keys(db: Sql) -> None:
    # The schema does not change: the key columns hold a wrapped blob instead of the raw key,
    # both BLOBs. What this records is when the database began to hold wrapped keys. The
    # plaintext keys an older release left are wrapped by Store.__init__, which has the
    # vault; a migration function sees only the database.
    del db


@migration("0800_gateway_health_history")
def _gateway_health_history(db: Sql) -> None:
    # The primary key is also the index the week's pruning and the history's reads use.
    db.execute(
        db.ddl(
            "CREATE TABLE gateway_health ("
            "gateway_id TEXT NOT NULL, at {float} NOT NULL, "
            "uptime_s {int}, agent_uptime_s {int}, cpu_temp_c {float}, load_1m {float}, "
            "outbox_depth {int}, outbox_oldest_age_s {int}, backhaul_rtt_ms {float}, "
            "radio_received {int}, radio_crc_ok {int}, radio_crc_bad {int}, "
            "radio_forwarded {int}, radio_transmitted {int}, reconnects {int}, "
            "config_seq {int}, PRIMARY KEY (gateway_id, at))"
        )
    )


@migration("0810_ingest_minutes")
def _ingest_minutes(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE ingest_minutes (minute {int} PRIMARY KEY, "
            "readings {int} NOT NULL, receptions {int} NOT NULL)"
        )
    )


@migration("0820_receptions_by_gateway")
def _receptions_by_gateway(db: Sql) -> None:
    # The primary key (reading_id, gateway_id) finds a reading's gateways; this finds a
    # gateway's newest receptions without reading the whole table.
    db.execute("CREATE INDEX idx_receptions_gateway_reading ON receptions (gateway_id, reading_id)")


# --- the store ---------------------------------------------------------------------------------


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidError(f"limit must be 1 .. {MAX_PAGE_LIMIT}, got {limit}")
    return limit


def _history_limit(limit: int, what: str) -> int:
    if not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise InvalidError(f"{what} must be 1 .. {MAX_HISTORY_LIMIT}, got {limit}")
    return limit


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise InvalidError(f"{what} must be a finite number of seconds, got {value}")
    return value


class Store:
    """The fleet database, on SQLite or PostgreSQL (:mod:`owlgate.fleet.sql`). Thread-safe:
    SQLite's one connection is behind a lock (FastAPI runs sync routes in a thread pool;
    SQLite serialises writers anyway); PostgreSQL's pool lends each thread a connection."""

    def __init__(
        self,
        target: str | Path | Sql = ":memory:",
        *,
        dedup_window_s: float = DEFAULT_DEDUP_WINDOW_S,
        vault: KeyVault | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        """Open (creating and migrating if needed) the database at ``target``: a SQLite file
        path, ``:memory:``, a ``postgresql://`` URL (a pool of at most ``pool_size``
        connections), or an open :class:`~owlgate.fleet.sql.Sql`, which the store then owns.

        With ``vault``, every key stored is checked to be unwrappable by it, one key per KEK
        id (WrongKekError naming the id it needs otherwise, before anything is written), and
        plaintext keys left by a release before the vault are wrapped, all in one
        transaction. Without ``vault`` the store works except for device keys: writing or
        reading one raises VaultRequiredError.
        """
        if isinstance(target, Sql):
            self.sql = target
        elif is_postgres_url(target):
            self.sql = connect(target, pool_size=pool_size)
        else:
            self.sql = SqliteSql(target, wal_autocheckpoint=WAL_AUTOCHECKPOINT_PAGES)
        #: Where the database is, for messages: the file, or the URL without its password.
        self.path = _describe(self.sql)
        self.dedup_window_s = dedup_window_s
        self.vault = vault
        #: Keys wrapped at open because they were found in plaintext.
        self.plaintext_keys_wrapped = 0
        #: Stored keys that could not be unwrapped when read (:meth:`device_keys`).
        self.unwrap_errors = 0
        self._readings_sequence: str | None = None
        #: The newest minute the ingest counts were pruned at (:meth:`_count_ingest`).
        self._minutes_pruned: int | None = None
        try:
            self._migrate()
            if vault is not None:
                self.plaintext_keys_wrapped = self._adopt_keys(vault)
            # The profiles are the codec registry's: refreshed at every open, so a new
            # built-in profile appears without a migration.
            self.upsert_profiles(
                [
                    Profile(id=p.id, name=p.name, description=p.description)
                    for p in PROFILES.values()
                ]
            )
        except BaseException:
            self.sql.close()
            raise

    @property
    def dialect(self) -> Dialect:
        return self.sql.dialect

    def close(self) -> None:
        self.sql.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Sql]:
        """One transaction (nested calls become savepoints), yielding the database to run
        statements in it."""
        with self.sql.transaction() as db:
            yield db

    def _migrate(self) -> None:
        with self.sql.transaction() as db:
            if db.dialect == "postgres":
                # Two fleet processes opening one new database at once: the second waits
                # for the first's migrations, then finds them done.
                db.execute("SELECT pg_advisory_xact_lock(?)", [_MIGRATE_LOCK])
            schema.apply(db)

    def _ingest_lock(self, db: Sql) -> None:
        """On PostgreSQL, serialise the ingest's writes across processes until the end of the
        transaction (``pg_advisory_xact_lock``).

        Two ingest workers can receive the same frame from two gateways at the same moment;
        without the lock both would look for it (none stored yet), both insert it, and the
        reading would be stored twice. Taking one lock before any row of the ingest's tables
        is touched also orders their row locks (gateways, devices), so two workers never
        deadlock. SQLite needs none: a transaction holds the database's only write lock.
        """
        if db.dialect == "postgres":
            db.execute("SELECT pg_advisory_xact_lock(?)", [_INGEST_LOCK])

    def _adopt_keys(self, vault: KeyVault) -> int:
        """Check that ``vault`` can unwrap what is stored (every wrapped secret, one per KEK
        id) and wrap plaintext device keys; returns how many were wrapped."""
        with self._scrubbing(), self.transaction() as db:
            rows = db.query_tuples(f"SELECT dev_eui, {', '.join(KEY_COLUMNS)} FROM device_keys")
            plaintext: list[tuple[str, str, bytes]] = []
            checked: set[str] = set()

            def check(value: bytes) -> None:
                key_id = kek_id_of(value)
                if key_id not in checked:
                    # One secret per KEK id: RFC 3394's integrity check on it proves the vault
                    # holds the right KEK under that id (or raises WrongKekError).
                    vault.unwrap(value)
                    checked.add(key_id)

            for eui, *values in rows:
                for column, value in zip(KEY_COLUMNS, values, strict=True):
                    if value is None:
                        continue
                    if not is_wrapped(value):
                        if len(value) != 16:
                            raise VaultError(
                                f"device {eui}: {column} is neither a wrapped key nor a "
                                f"plaintext one ({len(value)} bytes)"
                            )
                        plaintext.append((eui, column, bytes(value)))
                        continue
                    check(bytes(value))
            for secrets in WRAPPED_SECRETS[1:]:
                for column in secrets.columns:
                    for (value,) in db.query_tuples(
                        f"SELECT {column} FROM {secrets.table} WHERE {column} IS NOT NULL"
                    ):
                        check(bytes(value))
            for eui, column, key in plaintext:
                db.execute(
                    f"UPDATE device_keys SET {column} = ? WHERE dev_eui = ?",
                    [vault.wrap(key), eui],
                )
        if plaintext:
            log.warning(
                "wrapped %d plaintext device keys under KEK %r in %s; the database's old pages "
                "may still hold them until it is vacuumed",
                len(plaintext),
                vault.key_id,
                self.path,
            )
        return len(plaintext)

    def kek_ids_in_use(self) -> set[str]:
        """The ids of the KEKs the stored secrets are wrapped under (no vault needed): which
        KEK this database, or a backup of it, needs."""
        found: set[str] = set()
        for secrets in WRAPPED_SECRETS:
            for column in secrets.columns:
                for (value,) in self.sql.query_tuples(
                    f"SELECT DISTINCT substr({column}, 1, 34) FROM {secrets.table} "
                    f"WHERE {column} IS NOT NULL"
                ):
                    value = bytes(value)
                    if len(value) >= 3 and value[0] == 1 and len(value) >= 2 + value[1]:
                        found.add(value[2 : 2 + value[1]].decode("ascii", "replace"))
        return found

    def rewrap_keys(self, vault: KeyVault | None = None) -> dict[str, int]:
        """Re-wrap every stored secret (:data:`WRAPPED_SECRETS`: device keys, reserved
        AppKeys, config signing keys) under the current KEK of ``vault`` (default: the
        store's own), in one transaction; returns how many of each were re-wrapped, by what
        they are. ``vault`` must also hold the KEK they are wrapped under now
        (:meth:`KeyVault.with_older`). Everything is unwrapped before anything is written,
        so a KEK missing or wrong refuses with WrongKekError and changes nothing. The store
        uses ``vault`` from then on."""
        vault = vault or self.vault
        if vault is None:
            raise VaultRequiredError("re-wrapping keys needs a vault")
        counts: dict[str, int] = {}
        with self._scrubbing(), self.transaction() as db:
            updates: list[tuple[WrappedSecrets, list[tuple[Any, ...]]]] = []
            for secrets in WRAPPED_SECRETS:
                rows = db.query_tuples(
                    f"SELECT {secrets.row_key}, {', '.join(secrets.columns)} "
                    f"FROM {secrets.table} ORDER BY {secrets.row_key}"
                )
                fresh: list[tuple[Any, ...]] = []
                count = 0
                for row_key, *values in rows:
                    keys = [None if v is None else vault.unwrap(v) for v in values]
                    if all(key is None for key in keys):
                        continue
                    count += sum(1 for key in keys if key is not None)
                    fresh.append((*(None if k is None else vault.wrap(k) for k in keys), row_key))
                updates.append((secrets, fresh))
                counts[secrets.what] = count
            for secrets, fresh in updates:
                db.executemany(
                    f"UPDATE {secrets.table} SET "
                    + ", ".join(f"{column} = ?" for column in secrets.columns)
                    + f" WHERE {secrets.row_key} = ?",
                    fresh,
                )
            self.vault = vault
        log.info(
            "re-wrapped under KEK %r: %s",
            vault.key_id,
            ", ".join(f"{what}: {count}" for what, count in counts.items()),
        )
        return counts

    @contextmanager
    def _scrubbing(self) -> Iterator[None]:
        """Around a rewrite of the keys: what they replace must not stay readable in the file.

        ``secure_delete`` makes SQLite zero the space an old value leaves in its page, and the
        TRUNCATE checkpoint afterwards copies the new pages into the database and empties the
        WAL, whose frames hold whole images of the old pages.

        SQLite only: PostgreSQL has no such setting; the old row versions stay in its files
        until VACUUM reclaims them (see docs/fleet-postgres.md).
        """
        if self.sql.dialect != "sqlite":
            yield
            return
        self.sql.execute("PRAGMA secure_delete = ON")
        try:
            yield
        finally:
            self.sql.execute("PRAGMA secure_delete = OFF")
        if self.path != ":memory:":
            self.sql.query_tuples("PRAGMA wal_checkpoint(TRUNCATE)")

    def _wrap(self, key: bytes | None) -> bytes | None:
        if key is None:
            return None
        if self.vault is None:
            raise VaultRequiredError(
                "this store was opened without a key vault: device keys cannot be written"
            )
        return self.vault.wrap(key)

    def _unwrap(self, blob: bytes | None) -> bytes | None:
        if blob is None:
            return None
        if self.vault is None:
            raise VaultRequiredError(
                "this store was opened without a key vault: device keys cannot be read"
            )
        return self.vault.unwrap(blob)

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in the ``migrations`` table, in the order they
        apply (by name)."""
        return schema.applied(self.sql)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.sql.query(sql, params)

    # --- profiles ------------------------------------------------------------------------------

    def upsert_profiles(self, profiles: Sequence[Profile]) -> None:
        """Register or refresh device profiles (from ``owlgate.codecs.payloads.PROFILES``)."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO device_profiles (id, name, description) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                "description = excluded.description",
                [(p.id, p.name, p.description) for p in profiles],
            )

    def profiles(self) -> list[Profile]:
        return [Profile(**row) for row in self._rows("SELECT * FROM device_profiles ORDER BY id")]

    # --- gateways ------------------------------------------------------------------------------

    def create_gateway(
        self,
        gateway_id: str | bytes,
        *,
        name: str,
        sign_public_key: bytes,
        seal_public_key: bytes,
        created: float,
    ) -> Gateway:
        """Register a gateway with its Ed25519 and X25519 public keys (32 raw bytes each)."""
        gid = eui_hex(gateway_id, "gateway id")
        _key(sign_public_key, "Ed25519 public key", 32)
        _key(seal_public_key, "X25519 public key", 32)
        with self.transaction() as db:
            inserted = db.execute(
                "INSERT INTO gateways (id, name, sign_public_key, seal_public_key, created) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                [gid, name, sign_public_key, seal_public_key, created],
            )
            if inserted == 0:
                raise ConflictError(f"gateway {gid} is already registered")
        return self.gateway(gid)

    def gateway(self, gateway_id: str | bytes) -> Gateway:
        gid = eui_hex(gateway_id, "gateway id")
        rows = self._rows("SELECT * FROM gateways WHERE id = ?", [gid])
        if not rows:
            raise NotFoundError(f"no gateway {gid}")
        return _gateway(rows[0])

    def gateways(
        self, *, limit: int = DEFAULT_PAGE_LIMIT, after: str | None = None
    ) -> Page[Gateway]:
        """Gateways ordered by id; ``after`` is the cursor from the previous page."""
        rows = self._rows(
            "SELECT * FROM gateways WHERE id > ? ORDER BY id LIMIT ?",
            [after or "", _limit(limit) + 1],
        )
        items = [_gateway(row) for row in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    def gateway_heard(self, gateway_id: str | bytes, at: float) -> None:
        """Something verified arrived from the gateway at ``at``: it is alive."""
        gid = eui_hex(gateway_id, "gateway id")
        with self.transaction() as db:
            self._ingest_lock(db)
            self._heard(db, gid, at)

    def _heard(self, db: Sql, gid: str, at: float) -> None:
        changed = db.execute(
            "UPDATE gateways SET last_seen = ? WHERE id = ? "
            "AND (last_seen IS NULL OR last_seen < ?)",
            [at, gid, at],
        )
        if changed == 0 and db.scalar("SELECT 1 FROM gateways WHERE id = ?", [gid]) is None:
            raise NotFoundError(f"no gateway {gid}")

    def set_gateway_state(self, gateway_id: str | bytes, online: bool, at: float) -> None:
        """The retained ``state`` topic said ``online`` or ``offline`` (the Last Will) at ``at``."""
        gid = eui_hex(gateway_id, "gateway id")
        with self.transaction() as db:
            self._ingest_lock(db)
            changed = db.execute(
                "UPDATE gateways SET state_online = ?, state_at = ? WHERE id = ?",
                [int(online), at, gid],
            )
            if changed == 0:
                raise NotFoundError(f"no gateway {gid}")
            if online:
                self._heard(db, gid, at)

    def record_health(
        self, gateway_id: str | bytes, health: Health, *, received_at: float | None = None
    ) -> None:
        """Keep the facts of a verified health message; it also counts as hearing the gateway
        at ``received_at`` (the fleet's clock; the message's own ``time_s`` if not given)."""
        if received_at is None:
            received_at = float(health.time_s)
        gid = eui_hex(gateway_id, "gateway id")
        radio = health.radio
        summary = {
            "seq": health.seq,
            "time_s": health.time_s,
            "uptime_s": health.uptime_s,
            "agent_uptime_s": health.agent_uptime_s,
            "agent_version": health.agent_version,
            "interval_s": health.interval_s,
            "config_hash": health.config_hash.hex(),
            "config_seq": health.config_seq,
            "cpu_temp_c": health.cpu_temp_c,
            "throttled": health.throttled,
            "load_1m": health.load_1m,
            "mem_used_bytes": health.mem_used_bytes,
            "mem_total_bytes": health.mem_total_bytes,
            "disk_used_bytes": health.disk_used_bytes,
            "disk_total_bytes": health.disk_total_bytes,
            "backhaul_rtt_ms": health.backhaul_rtt_ms,
            "outbox_depth": health.outbox_depth,
            "outbox_oldest_age_s": health.outbox_oldest_age_s,
            "outbox_evicted": health.outbox_evicted,
            "outbox_bytes": health.outbox_bytes,
            "outbox_max_bytes": health.outbox_max_bytes,
            "reconnects": health.reconnects,
            "radio": None
            if radio is None
            else {
                "received": radio.received,
                "crc_ok": radio.crc_ok,
                "crc_bad": radio.crc_bad,
                "forwarded": radio.forwarded,
                "transmitted": radio.transmitted,
            },
        }
        with self.transaction() as db:
            self._ingest_lock(db)
            changed = db.execute(
                "UPDATE gateways SET heartbeat_interval_s = ?, last_health_at = ?, "
                "outbox_depth = ?, outbox_oldest_age_s = ?, radio_crc_ok = ?, "
                "radio_crc_bad = ?, last_health_json = ? WHERE id = ?",
                [
                    health.interval_s,
                    received_at,
                    health.outbox_depth,
                    health.outbox_oldest_age_s,
                    None if radio is None else radio.crc_ok,
                    None if radio is None else radio.crc_bad,
                    json.dumps(summary, sort_keys=True),
                    gid,
                ],
            )
            if changed == 0:
                raise NotFoundError(f"no gateway {gid}")
            self._heard(db, gid, received_at)
            self._keep_health(db, gid, health, received_at)

    def _keep_health(self, db: Sql, gid: str, health: Health, at: float) -> None:
        """Add the message to the gateway's history (one row per receive time: a second
        message at the same ``at`` replaces the first) and drop its rows older than
        :data:`HEALTH_HISTORY_S`."""
        radio = health.radio
        values = [
            gid,
            at,
            health.uptime_s,
            health.agent_uptime_s,
            health.cpu_temp_c,
            health.load_1m,
            health.outbox_depth,
            health.outbox_oldest_age_s,
            health.backhaul_rtt_ms,
            None if radio is None else radio.received,
            None if radio is None else radio.crc_ok,
            None if radio is None else radio.crc_bad,
            None if radio is None else radio.forwarded,
            None if radio is None else radio.transmitted,
            health.reconnects,
            health.config_seq,
        ]
        updates = ", ".join(f"{name} = excluded.{name}" for name in _HEALTH_COLUMNS)
        db.execute(
            f"INSERT INTO gateway_health (gateway_id, at, {', '.join(_HEALTH_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(values))}) "
            f"ON CONFLICT (gateway_id, at) DO UPDATE SET {updates}",
            values,
        )
        db.execute(
            "DELETE FROM gateway_health WHERE gateway_id = ? AND at < ?",
            [gid, at - HEALTH_HISTORY_S],
        )

    def health_history(
        self,
        gateway_id: str | bytes,
        *,
        since: float,
        until: float | None = None,
        limit: int = 5000,
    ) -> list[HealthPoint]:
        """The gateway's health messages received from ``since`` to ``until`` (both
        inclusive; None: no end), oldest first; when more than ``limit`` match, the newest
        ``limit`` of them. NotFoundError for a gateway that is not registered."""
        gid = eui_hex(gateway_id, "gateway id")
        _history_limit(limit, "limit")
        where = "gateway_id = ? AND at >= ?"
        params: list[Any] = [gid, _finite(since, "since")]
        if until is not None:
            where += " AND at <= ?"
            params.append(_finite(until, "until"))
        if self.sql.scalar("SELECT 1 FROM gateways WHERE id = ?", [gid]) is None:
            raise NotFoundError(f"no gateway {gid}")
        rows = self._rows(
            f"SELECT at, {', '.join(_HEALTH_COLUMNS)} FROM gateway_health WHERE {where} "
            "ORDER BY at DESC LIMIT ?",
            [*params, limit],
        )
        return [HealthPoint(**row) for row in reversed(rows)]

    # --- devices -------------------------------------------------------------------------------

    def create_device(
        self,
        dev_eui: str | bytes,
        *,
        profile_id: str,
        activation: Activation,
        created: float,
        name: str = "",
        join_eui: str | bytes | None = None,
        app_key: bytes | None = None,
        dev_addr: int | None = None,
        nwk_s_key: bytes | None = None,
        app_s_key: bytes | None = None,
    ) -> Device:
        """Register a device. OTAA needs ``join_eui`` and ``app_key``; ABP needs ``dev_addr``
        and both session keys. Secrets go to ``device_keys`` and are never returned here."""
        eui = eui_hex(dev_eui, "DevEUI")
        _key(app_key, "AppKey")
        _key(nwk_s_key, "NwkSKey")
        _key(app_s_key, "AppSKey")
        join = None if join_eui is None else eui_hex(join_eui, "JoinEUI")
        if activation == "otaa":
            if join is None or app_key is None:
                raise InvalidError("an OTAA device needs a JoinEUI and an AppKey")
            if dev_addr is not None or nwk_s_key is not None or app_s_key is not None:
                raise InvalidError("an OTAA device gets its DevAddr and session keys by joining")
        elif activation == "abp":
            if dev_addr is None or nwk_s_key is None or app_s_key is None:
                raise InvalidError("an ABP device needs a DevAddr, an NwkSKey and an AppSKey")
            if not 0 <= dev_addr < 1 << 32:
                raise InvalidError(f"DevAddr must be 32 bits, got {dev_addr}")
        else:
            raise InvalidError(f"activation must be 'abp' or 'otaa', got {activation!r}")
        with self.transaction() as db:
            if db.scalar("SELECT 1 FROM device_profiles WHERE id = ?", [profile_id]) is None:
                known = (
                    ", ".join(row[0] for row in db.query_tuples("SELECT id FROM device_profiles"))
                    or "none"
                )
                raise InvalidError(f"unknown device profile {profile_id!r}; known: {known}")
            if db.scalar("SELECT 1 FROM devices WHERE dev_eui = ?", [eui]) is not None:
                raise ConflictError(f"device {eui} is already registered")
            if (
                dev_addr is not None
                and db.scalar("SELECT 1 FROM devices WHERE dev_addr = ?", [dev_addr]) is not None
            ):
                raise ConflictError(f"DevAddr {dev_addr:08x} is already in use")
            db.execute(
                "INSERT INTO devices (dev_eui, profile_id, activation, join_eui, dev_addr, "
                "name, created, join_nonce) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                [eui, profile_id, activation, join, dev_addr, name, created],
            )
            db.execute(
                "INSERT INTO device_keys (dev_eui, app_key, nwk_s_key, app_s_key) "
                "VALUES (?, ?, ?, ?)",
                [eui, self._wrap(app_key), self._wrap(nwk_s_key), self._wrap(app_s_key)],
            )
        return self.device(eui)

    def device(self, dev_eui: str | bytes) -> Device:
        eui = eui_hex(dev_eui, "DevEUI")
        rows = self._rows("SELECT * FROM devices WHERE dev_eui = ?", [eui])
        if not rows:
            raise NotFoundError(f"no device {eui}")
        return _device(rows[0])

    def devices(self, *, limit: int = DEFAULT_PAGE_LIMIT, after: str | None = None) -> Page[Device]:
        """Devices ordered by DevEUI; ``after`` is the cursor from the previous page."""
        rows = self._rows(
            "SELECT * FROM devices WHERE dev_eui > ? ORDER BY dev_eui LIMIT ?",
            [after or "", _limit(limit) + 1],
        )
        items = [_device(row) for row in rows[:limit]]
        return Page(items, items[-1].dev_eui if len(rows) > limit else None)

    def device_keys(self, dev_eui: str | bytes) -> DeviceKeys:
        """The device's secrets, for the join server and for sealing sessions to gateways."""
        eui = eui_hex(dev_eui, "DevEUI")
        rows = self._rows("SELECT * FROM device_keys WHERE dev_eui = ?", [eui])
        if not rows:
            raise NotFoundError(f"no device {eui}")
        row = rows[0]
        try:
            return DeviceKeys(
                app_key=self._unwrap(row["app_key"]),
                nwk_s_key=self._unwrap(row["nwk_s_key"]),
                app_s_key=self._unwrap(row["app_s_key"]),
            )
        except VaultError as err:
            self.unwrap_errors += 1
            log.warning("device %s: its keys cannot be read: %s", eui, err.message)
            raise

    def dev_addr_in_use(self, dev_addr: int) -> bool:
        return bool(self._rows("SELECT 1 FROM devices WHERE dev_addr = ?", [dev_addr]))

    def record_join(
        self,
        dev_eui: str | bytes,
        *,
        dev_nonce: int,
        next_join_nonce: Callable[[int], int],
        allocate_dev_addr: Callable[[Callable[[int], bool]], int],
        session: Callable[[int], tuple[bytes, bytes]],
        at: float,
    ) -> tuple[int, int]:
        """The join server's write, in one transaction: refuse a used DevNonce (ConflictError),
        record it, pick the JoinNonce (``next_join_nonce(last)``), a free DevAddr
        (``allocate_dev_addr(in_use)``), store the session keys ``session(join_nonce)``
        returns and reset the frame counter. Returns ``(join_nonce, dev_addr)``."""
        eui = eui_hex(dev_eui, "DevEUI")
        with self.transaction() as db:
            # The device's row first, locked on PostgreSQL (FOR UPDATE): two joins of one
            # device at once take their JoinNonces one after the other.
            lock = " FOR UPDATE" if db.dialect == "postgres" else ""
            rows = db.query_tuples(f"SELECT join_nonce FROM devices WHERE dev_eui = ?{lock}", [eui])
            if not rows:
                raise NotFoundError(f"no device {eui}")
            inserted = db.execute(
                "INSERT INTO join_nonces (dev_eui, dev_nonce, at) VALUES (?, ?, ?) "
                "ON CONFLICT (dev_eui, dev_nonce) DO NOTHING",
                [eui, dev_nonce, at],
            )
            if inserted == 0:
                raise ConflictError(f"DevNonce {dev_nonce:04x} was already used by {eui}")
            join_nonce = next_join_nonce(int(rows[0][0] or 0))

            def in_use(addr: int) -> bool:
                return (
                    db.scalar(
                        "SELECT 1 FROM devices WHERE dev_addr = ? AND dev_eui != ?", [addr, eui]
                    )
                    is not None
                )

            dev_addr = allocate_dev_addr(in_use)
            nwk_s_key, app_s_key = session(join_nonce)
            wrapped_nwk_s_key, wrapped_app_s_key = self._wrap(nwk_s_key), self._wrap(app_s_key)
            db.execute(
                "UPDATE devices SET join_nonce = ?, dev_addr = ?, last_fcnt = NULL, "
                "joined_at = ? WHERE dev_eui = ?",
                [join_nonce, dev_addr, at, eui],
            )
            db.execute(
                "UPDATE device_keys SET nwk_s_key = ?, app_s_key = ? WHERE dev_eui = ?",
                [wrapped_nwk_s_key, wrapped_app_s_key, eui],
            )
        return join_nonce, dev_addr

    # --- readings ------------------------------------------------------------------------------

    def record_batch(
        self,
        gateway_id: str | bytes,
        seq: int,
        readings: Sequence[Reading],
        received_at: float,
    ) -> StoreResult:
        """Store one verified batch in one transaction (:meth:`record_batches` with one
        batch); the batch's FleetError is raised if it cannot be stored.

        A batch already seen (same gateway and ``seq``) stores nothing. A reading whose DevEUI
        and FCnt match a stored reading less than ``dedup_window_s`` apart is the same frame
        heard by another gateway: only this gateway's reception (RSSI/SNR) is added. Devices
        that are registered get ``last_seen``, ``last_fcnt`` and ``battery_mv`` updated; the
        gateway's ``last_seen`` moves to ``received_at``.
        """
        (result,) = self.record_batches([IncomingBatch(gateway_id, seq, readings, received_at)])
        if isinstance(result, FleetError):
            raise result
        return result

    def record_batches(self, batches: Sequence[IncomingBatch]) -> list[StoreResult | FleetError]:
        """Store verified batches in one transaction, with :meth:`record_batch`'s rules, and
        say per batch what happened, in order.

        Each batch is written inside a savepoint of its own: one that cannot be stored (a
        value the store refuses, an unregistered gateway, a constraint the database enforces:
        :class:`~owlgate.fleet.sql.DataRefused`) is rolled back alone and its place in the
        result holds the FleetError, while the batches around it are stored. A fault of the
        database itself (:class:`~owlgate.fleet.sql.DatabaseFault`: disk full, locked beyond
        the busy timeout, connection lost, ...) rolls the whole transaction back and is
        raised: nothing of it is stored.

        The device updates of the whole transaction are folded into one per device and
        written after the batches (at most one UPDATE per device however many readings it
        sent), so a batch rolled back leaves no trace there either.

        On PostgreSQL several batches are first tried all together, in a few statements
        (:meth:`_store_batches_together`), and stored one savepoint each only if one of them
        cannot be stored; the results are the same either way.

        On PostgreSQL the transaction first takes the ingest's advisory lock
        (``pg_advisory_xact_lock``, held until it ends): the look-up of frames already stored
        and the insert of the new ones are then one step for every process writing to the
        database, so two ingest workers never store one frame twice.
        """
        results: list[StoreResult | FleetError] = []
        devices: dict[str, list[Any]] = {}
        with self.transaction() as db:
            self._ingest_lock(db)
            if db.dialect == "postgres" and len(batches) > 1:
                try:
                    with db.transaction():
                        results = self._store_batches_together(db, batches, devices)
                except (DataRefused, _OneByOne):
                    # Some batch cannot be stored: all of them again, each in a savepoint of
                    # its own, to tell which.
                    results, devices = [], {}
            for batch in batches[len(results) :]:
                seen: dict[str, list[Any]] = {}
                try:
                    with db.transaction():
                        result = self._store_batch(db, batch, seen)
                except FleetError as err:
                    results.append(err)
                    continue
                except (DataRefused, OverflowError) as err:
                    # What the batch's own data provoked: rolled back to its savepoint, and
                    # storing it again would fail again.
                    results.append(InvalidError(f"batch {batch.seq} could not be stored: {err}"))
                    continue
                results.append(result)
                for eui, (last_seen, last_fcnt, battery) in seen.items():
                    known = devices.get(eui)
                    if known is None:
                        devices[eui] = [last_seen, last_fcnt, battery]
                        continue
                    known[0] = max(known[0], last_seen)
                    if last_fcnt is not None and (known[1] is None or last_fcnt > known[1]):
                        known[1] = last_fcnt
                    if battery is not None:
                        known[2] = battery
            self._count_ingest(db, batches, results)
            if devices and db.dialect == "postgres":
                rows = sorted(devices.items())
                db.execute(
                    "UPDATE devices AS d SET last_seen = CASE WHEN d.last_seen IS NULL "
                    "OR d.last_seen < u.last_seen THEN u.last_seen ELSE d.last_seen END, "
                    "last_fcnt = CASE WHEN u.last_fcnt IS NULL THEN d.last_fcnt "
                    "WHEN d.last_fcnt IS NULL OR d.last_fcnt < u.last_fcnt THEN u.last_fcnt "
                    "ELSE d.last_fcnt END, battery_mv = COALESCE(u.battery_mv, d.battery_mv) "
                    "FROM unnest(CAST(? AS TEXT[]), CAST(? AS DOUBLE PRECISION[]), "
                    "CAST(? AS BIGINT[]), CAST(? AS BIGINT[])) "
                    "AS u (dev_eui, last_seen, last_fcnt, battery_mv) WHERE d.dev_eui = u.dev_eui",
                    [
                        [eui for eui, _ in rows],
                        [known[0] for _, known in rows],
                        [known[1] for _, known in rows],
                        [known[2] for _, known in rows],
                    ],
                )
            elif devices:
                # In DevEUI order: two transactions updating the same devices lock their rows
                # in the same order.
                db.executemany(
                    "UPDATE devices SET last_seen = CASE WHEN last_seen IS NULL "
                    "OR last_seen < ? THEN ? ELSE last_seen END, "
                    "last_fcnt = CASE WHEN CAST(? AS BIGINT) IS NULL THEN last_fcnt "
                    "WHEN last_fcnt IS NULL OR last_fcnt < ? THEN ? ELSE last_fcnt END, "
                    "battery_mv = COALESCE(CAST(? AS BIGINT), battery_mv) WHERE dev_eui = ?",
                    [
                        (last_seen, last_seen, last_fcnt, last_fcnt, last_fcnt, battery, eui)
                        for eui, (last_seen, last_fcnt, battery) in sorted(devices.items())
                    ],
                )
        return results

    def _count_ingest(
        self,
        db: Sql,
        batches: Sequence[IncomingBatch],
        results: Sequence[StoreResult | FleetError],
    ) -> None:
        """Add what the stored batches brought to their minutes of ``received_at`` in
        ``ingest_minutes``: new readings, and receptions (one per reading of a batch: a new
        reading or a copy merged into one stored); at most one statement per minute, and
        the minutes older than :data:`INGEST_MINUTES_KEPT` dropped once an hour."""
        counts: dict[int, list[int]] = {}
        for batch, result in zip(batches, results, strict=True):
            if not isinstance(result, StoreResult) or result.batch_duplicate:
                continue
            received = result.stored + result.duplicates_merged
            if received == 0 or not math.isfinite(batch.received_at):
                continue
            minute = counts.setdefault(math.floor(batch.received_at / 60), [0, 0])
            minute[0] += result.stored
            minute[1] += received
        if not counts:
            return
        db.executemany(
            "INSERT INTO ingest_minutes (minute, readings, receptions) VALUES (?, ?, ?) "
            "ON CONFLICT (minute) DO UPDATE SET "
            "readings = ingest_minutes.readings + excluded.readings, "
            "receptions = ingest_minutes.receptions + excluded.receptions",
            [(minute, stored, received) for minute, (stored, received) in sorted(counts.items())],
        )
        newest = max(counts)
        if self._minutes_pruned is None or newest >= self._minutes_pruned + 60:
            db.execute(
                "DELETE FROM ingest_minutes WHERE minute < ?", [newest - INGEST_MINUTES_KEPT]
            )
            self._minutes_pruned = newest

    def ingest_per_minute(self, *, since: float, until: float) -> list[IngestMinute]:
        """Readings and receptions stored per minute, for the minutes from the one holding
        ``since`` to the one holding ``until``, oldest first; minutes without any are left
        out. Kept for :data:`INGEST_MINUTES_KEPT` minutes."""
        first = math.floor(_finite(since, "since") / 60)
        last = math.floor(_finite(until, "until") / 60)
        if last < first:
            raise InvalidError(f"until ({until}) is before since ({since})")
        rows = self.sql.query_tuples(
            "SELECT minute, readings, receptions FROM ingest_minutes "
            "WHERE minute >= ? AND minute <= ? ORDER BY minute",
            [first, last],
        )
        return [
            IngestMinute(minute=float(minute * 60), readings=int(readings), receptions=int(rx))
            for minute, readings, rx in rows
        ]

    def gateway_devices(
        self, gateway_id: str | bytes, *, limit_receptions: int = 5000
    ) -> list[HeardDevice]:
        """The devices the gateway heard in its newest ``limit_receptions`` receptions, one
        row per device, the most recently heard first. NotFoundError for a gateway that is
        not registered."""
        gid = eui_hex(gateway_id, "gateway id")
        _history_limit(limit_receptions, "limit_receptions")
        if self.sql.scalar("SELECT 1 FROM gateways WHERE id = ?", [gid]) is None:
            raise NotFoundError(f"no gateway {gid}")
        rows = self.sql.query_tuples(
            "SELECT r.dev_eui, d.profile_id, r.time_s, h.reading_id, h.rssi_dbm, h.snr_db "
            "FROM (SELECT reading_id, rssi_dbm, snr_db FROM receptions WHERE gateway_id = ? "
            "ORDER BY reading_id DESC LIMIT ?) AS h "
            "JOIN readings AS r ON r.id = h.reading_id "
            "LEFT JOIN devices AS d ON d.dev_eui = r.dev_eui",
            [gid, limit_receptions],
        )
        heard: dict[str, _Hearing] = {}
        profiles: dict[str, str | None] = {}
        for dev_eui, profile_id, time_s, reading_id, rssi, snr in rows:
            profiles[dev_eui] = profile_id
            heard.setdefault(dev_eui, _Hearing()).add(time_s, reading_id, rssi, snr)
        return [
            HeardDevice(dev_eui=eui, profile_id=profiles[eui], **hearing.summary())
            for eui, hearing in sorted(heard.items(), key=lambda kv: (-kv[1].last_heard, kv[0]))
        ]

    def device_gateways(
        self, dev_eui: str | bytes, *, limit_readings: int = 500
    ) -> list[HearingGateway]:
        """The gateways that heard the device's newest ``limit_readings`` readings, one row
        per gateway, the one that heard most frames first. NotFoundError for a device that
        is not registered."""
        eui = eui_hex(dev_eui, "DevEUI")
        _history_limit(limit_readings, "limit_readings")
        if self.sql.scalar("SELECT 1 FROM devices WHERE dev_eui = ?", [eui]) is None:
            raise NotFoundError(f"no device {eui}")
        rows = self.sql.query_tuples(
            "SELECT h.gateway_id, r.time_s, r.id, h.rssi_dbm, h.snr_db "
            "FROM (SELECT id, time_s FROM readings WHERE dev_eui = ? "
            "ORDER BY time_s DESC, id DESC LIMIT ?) AS r "
            "JOIN receptions AS h ON h.reading_id = r.id",
            [eui, limit_readings],
        )
        heard: dict[str, _Hearing] = {}
        for gateway, time_s, reading_id, rssi, snr in rows:
            heard.setdefault(gateway, _Hearing()).add(time_s, reading_id, rssi, snr)
        return [
            HearingGateway(gateway_id=gid, **hearing.summary())
            for gid, hearing in sorted(
                heard.items(), key=lambda kv: (-kv[1].frames, -kv[1].last_heard, kv[0])
            )
        ]

    def _store_batch(
        self, db: Sql, batch: IncomingBatch, devices: dict[str, list[Any]]
    ) -> StoreResult:
        gid = eui_hex(batch.gateway_id, "gateway id")
        received_at = batch.received_at
        if not self._open_batch(db, gid, batch.seq, received_at):
            return StoreResult(0, 0, batch_duplicate=True)
        rows = batch.rows if batch.rows is not None else reading_rows(batch.readings)
        stored_match, ids = self._frames(db, rows)
        new_rows: list[tuple[Any, ...]] = []
        receptions: list[tuple[Any, ...]] = []
        # PostgreSQL draws an id for every row (ids[index]); SQLite's are the next free ones,
        # taken in order by the rows that are new.
        if db.dialect == "postgres":
            merged = self._place(
                rows, gid, received_at, stored_match, ids, {}, devices, new_rows, receptions
            )
        else:
            merged = self._place(
                rows, gid, received_at, stored_match, iter(ids), {}, devices, new_rows, receptions
            )
        db.insert_rows("readings", _READING_COLUMNS, new_rows)
        # A gateway that hears the same frame twice keeps its first reception.
        _insert_rows(db, _RECEPTIONS_INSERT, receptions)
        return StoreResult(len(new_rows), merged, batch_duplicate=False)

    def _place(
        self,
        rows: Sequence[ReadingRow],
        gid: str,
        received_at: float,
        stored_match: dict[int, int],
        ids: Sequence[int] | Iterator[int],
        fresh: dict[tuple[str, int], list[tuple[float, int]]],
        devices: dict[str, list[Any]],
        new_rows: list[tuple[Any, ...]],
        receptions: list[tuple[Any, ...]],
    ) -> int:
        """Sort one batch's ``rows`` into readings to insert (``new_rows``, with their ids:
        ``ids[index]``, or the next of an iterator) and receptions of readings already there
        (``stored_match``: stored before; ``fresh``: new in this write, updated here), fold
        the new ones into ``devices``; returns how many were merged."""
        window = self.dedup_window_s
        merged = 0
        for index, (eui, time_s, fcnt, values_json, rssi, snr, battery) in enumerate(rows):
            reading_id = stored_match.get(index)
            if reading_id is None and fcnt is not None and fresh:
                for seen_time, candidate in fresh.get((eui, fcnt), ()):
                    if abs(seen_time - time_s) <= window:
                        reading_id = candidate
                        break
            if reading_id is not None:
                merged += 1
            else:
                reading_id = next(ids) if isinstance(ids, Iterator) else ids[index]
                new_rows.append((reading_id, eui, time_s, fcnt, values_json, gid, received_at))
                if fcnt is not None:
                    fresh.setdefault((eui, fcnt), []).append((time_s, reading_id))
                # [last_seen, last_fcnt, battery_mv]: latest time, highest FCnt, the battery
                # of the last reading that carried one.
                known = devices.get(eui)
                if known is None:
                    devices[eui] = [time_s, fcnt, battery]
                else:
                    if time_s > known[0]:
                        known[0] = time_s
                    if fcnt is not None and (known[1] is None or fcnt > known[1]):
                        known[1] = fcnt
                    if battery is not None:
                        known[2] = battery
            receptions.append((reading_id, gid, rssi, snr))
        return merged

    def _store_batches_together(
        self, db: Sql, batches: Sequence[IncomingBatch], devices: dict[str, list[Any]]
    ) -> list[StoreResult | FleetError]:
        """PostgreSQL: :meth:`record_batches`' work for all ``batches`` at once, in a few
        statements whatever their number (each statement costs a round trip to the server,
        which is most of its cost): the batches recorded, their gateways heard, the frames
        looked up and ids drawn, the readings copied in, the receptions inserted.

        Same results as one savepoint per batch when every batch can be stored; raises
        DataRefused or _OneByOne (the caller rolls this back and stores them one by one)
        when one cannot, or a batch's readings turn out not to be storable.
        """
        results: list[StoreResult | FleetError | None] = [None] * len(batches)
        keys: list[tuple[int, str, IncomingBatch]] = []
        for index, batch in enumerate(batches):
            try:
                keys.append((index, eui_hex(batch.gateway_id, "gateway id"), batch))
            except FleetError as err:
                results[index] = err
        registered = {
            row[0]
            for row in db.query_tuples(
                "SELECT id FROM gateways WHERE id = ANY(CAST(? AS TEXT[]))",
                [sorted({gid for _, gid, _ in keys})],
            )
        }
        candidates = [key for key in keys if key[1] in registered]
        for index, gid, _ in keys:
            if gid not in registered:
                results[index] = NotFoundError(f"no gateway {gid}")
        inserted = {
            (row[0], int(row[1]))
            for row in db.query_tuples(
                "INSERT INTO batches (gateway_id, seq, received_at) SELECT g, s, r "
                "FROM unnest(CAST(? AS TEXT[]), CAST(? AS BIGINT[]), "
                "CAST(? AS DOUBLE PRECISION[])) WITH ORDINALITY AS b (g, s, r, n) ORDER BY n "
                "ON CONFLICT (gateway_id, seq) DO NOTHING RETURNING gateway_id, seq",
                [
                    [gid for _, gid, _ in candidates],
                    [batch.seq for _, _, batch in candidates],
                    [batch.received_at for _, _, batch in candidates],
                ],
            )
        }
        fresh_batches: list[tuple[int, str, IncomingBatch, Sequence[ReadingRow]]] = []
        heard: dict[str, float] = {}
        for index, gid, batch in candidates:
            if (gid, batch.seq) not in inserted:
                results[index] = StoreResult(0, 0, batch_duplicate=True)
                continue
            inserted.discard((gid, batch.seq))  # the same batch again in this call: a repeat
            try:
                rows = batch.rows if batch.rows is not None else reading_rows(batch.readings)
            except FleetError as err:
                raise _OneByOne from err
            fresh_batches.append((index, gid, batch, rows))
            heard[gid] = max(heard.get(gid, batch.received_at), batch.received_at)
        if heard:
            db.execute(
                "UPDATE gateways AS g SET last_seen = u.at FROM unnest(CAST(? AS TEXT[]), "
                "CAST(? AS DOUBLE PRECISION[])) AS u (id, at) "
                "WHERE g.id = u.id AND (g.last_seen IS NULL OR g.last_seen < u.at)",
                [list(heard), list(heard.values())],
            )
        every_row = [row for _, _, _, rows in fresh_batches for row in rows]
        stored_match, ids = self._frames(db, every_row)
        fresh: dict[tuple[str, int], list[tuple[float, int]]] = {}
        new_rows: list[tuple[Any, ...]] = []
        receptions: list[tuple[Any, ...]] = []
        offset = 0
        for index, gid, batch, rows in fresh_batches:
            count = len(rows)
            before = len(new_rows)
            try:
                merged = self._place(
                    rows,
                    gid,
                    batch.received_at,
                    {
                        i - offset: match
                        for i, match in stored_match.items()
                        if offset <= i < offset + count
                    },
                    ids[offset : offset + count],
                    fresh,
                    devices,
                    new_rows,
                    receptions,
                )
            except TypeError as err:
                # A row the database will refuse (a time of None, say), met here first.
                raise _OneByOne(f"batch {batch.seq}: {err}") from err
            results[index] = StoreResult(len(new_rows) - before, merged, batch_duplicate=False)
            offset += count
        db.insert_rows("readings", _READING_COLUMNS, new_rows)
        # The receptions of readings new in this write cannot be in the table yet: copied in
        # (the first of a gateway's hearings of a frame kept); those of readings stored
        # before may be (the same gateway again), so they go through ON CONFLICT.
        new_ids = {row[0] for row in new_rows}
        copied: dict[tuple[int, str], tuple[Any, ...]] = {}
        others: list[tuple[Any, ...]] = []
        for reception in receptions:
            if reception[0] in new_ids:
                copied.setdefault((reception[0], reception[1]), reception)
            else:
                others.append(reception)
        db.insert_rows("receptions", _RECEPTION_COLUMNS, list(copied.values()))
        _insert_rows(db, _RECEPTIONS_INSERT, others)
        done = [result for result in results if result is not None]
        if len(done) != len(batches):
            raise _OneByOne(f"{len(batches) - len(done)} batches left without a result")
        return done

    def _open_batch(self, db: Sql, gid: str, seq: int, received_at: float) -> bool:
        """Record the batch (False: seen before, nothing recorded) and hear its gateway
        (NotFoundError for one not registered).

        The primary key (gateway_id, seq) answers "seen before?" and records the batch in one
        statement; a repeat inserts nothing. PostgreSQL does the three steps in one round
        trip (data-modifying CTEs), which is most of what a statement costs there.
        """
        if db.dialect == "sqlite":
            inserted = db.execute(
                "INSERT INTO batches (gateway_id, seq, received_at) VALUES (?, ?, ?) "
                "ON CONFLICT (gateway_id, seq) DO NOTHING",
                [gid, seq, received_at],
            )
            if inserted == 0:
                return False
            self._heard(db, gid, received_at)
            return True
        rows = db.query_tuples(
            "WITH batch AS (INSERT INTO batches (gateway_id, seq, received_at) "
            "VALUES (?, ?, ?) ON CONFLICT (gateway_id, seq) DO NOTHING RETURNING gateway_id), "
            "heard AS (UPDATE gateways SET last_seen = ? WHERE id IN (SELECT gateway_id "
            "FROM batch) AND (last_seen IS NULL OR last_seen < ?) RETURNING id) "
            "SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM heard), "
            "(SELECT count(*) FROM gateways WHERE id = ?)",
            [gid, seq, received_at, received_at, received_at, gid],
        )
        inserted, _, registered = rows[0]
        if inserted == 0:
            return False
        if registered == 0:
            raise NotFoundError(f"no gateway {gid}")
        return True

    def _frames(self, db: Sql, rows: Sequence[ReadingRow]) -> tuple[dict[int, int], list[int]]:
        """For each row (by index) with an FCnt, the id of the first stored reading of the
        same frame (same DevEUI and FCnt, times at most ``dedup_window_s`` apart), and ids
        for the new readings.

        Row ids are given here rather than by the database so the readings can go in with
        one statement and their receptions still name them. SQLite: the ones after the
        largest stored, for the rows not found; the transaction holds SQLite's write lock
        from the batches INSERT on, so nobody else can take them. PostgreSQL: one per row,
        drawn from the table's identity sequence in the same query, which hands every id out
        once whatever the number of processes writing (the ids of rows found, or of a batch
        rolled back, are skipped, never reused).
        """
        window = self.dedup_window_s
        found: dict[int, int] = {}
        if db.dialect == "postgres":
            if not rows:
                return found, []
            if self._readings_sequence is None:
                self._readings_sequence = str(
                    db.scalar("SELECT pg_get_serial_sequence('readings', 'id')")
                )
            # A subquery per row rather than a join: the planner would hash-join the whole
            # readings table against the batch; this is one index probe per row.
            matches = db.query_tuples(
                "SELECT (SELECT MIN(r.id) FROM readings AS r WHERE r.dev_eui = w.eui "
                "AND r.time_s BETWEEN w.t - ? AND w.t + ? AND r.fcnt = w.fcnt), "
                "nextval(CAST(? AS regclass)) "
                "FROM unnest(CAST(? AS TEXT[]), CAST(? AS BIGINT[]), "
                "CAST(? AS DOUBLE PRECISION[])) WITH ORDINALITY AS w (eui, fcnt, t, n) "
                "ORDER BY w.n",
                [
                    window,
                    window,
                    self._readings_sequence,
                    [row[0] for row in rows],
                    [row[2] for row in rows],
                    [row[1] for row in rows],
                ],
            )
            found.update(
                (index, int(match)) for index, (match, _) in enumerate(matches) if match is not None
            )
            return found, [int(reading_id) for _, reading_id in matches]
        wanted = [
            (index, eui, fcnt, time_s)
            for index, (eui, time_s, fcnt, *_) in enumerate(rows)
            if fcnt is not None
        ]
        for start in range(0, len(wanted), _DEDUP_CHUNK):
            chunk = wanted[start : start + _DEDUP_CHUNK]
            values = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
            matches = db.query_tuples(
                f"SELECT w.column1, MIN(r.id) FROM (VALUES {values}) AS w "
                "JOIN readings AS r ON r.dev_eui = w.column2 AND r.fcnt = w.column3 "
                "AND r.time_s BETWEEN w.column4 - ? AND w.column4 + ? GROUP BY w.column1",
                [value for item in chunk for value in item] + [window, window],
            )
            found.update((int(index), int(reading_id)) for index, reading_id in matches)
        count = len(rows) - len(found)
        if count <= 0:
            return found, []
        last = int(db.scalar("SELECT COALESCE(MAX(id), 0) FROM readings"))
        return found, list(range(last + 1, last + 1 + count))

    def readings(
        self,
        dev_eui: str | bytes,
        *,
        since: float | None = None,
        limit: int = DEFAULT_PAGE_LIMIT,
        after: str | None = None,
    ) -> Page[StoredReading]:
        """A device's readings from ``since`` (inclusive) on, oldest first, by reading time.

        The cursor is ``"<time_s>:<id>"`` of the last reading of the page.
        """
        eui = eui_hex(dev_eui, "DevEUI")
        _limit(limit)
        where = ["dev_eui = ?"]
        params: list[Any] = [eui]
        if since is not None:
            where.append("time_s >= ?")
            params.append(since)
        if after is not None:
            time_text, _, id_text = after.partition(":")
            try:
                after_time, after_id = float(time_text), int(id_text)
            except ValueError as err:
                raise InvalidError(f"not a readings cursor: {after!r}") from err
            where.append("(time_s > ? OR (time_s = ? AND id > ?))")
            params += [after_time, after_time, after_id]
        rows = self._rows(
            f"SELECT * FROM readings WHERE {' AND '.join(where)} ORDER BY time_s, id LIMIT ?",
            [*params, limit + 1],
        )
        page_rows = rows[:limit]
        receptions: dict[int, list[Reception]] = {row["id"]: [] for row in page_rows}
        if page_rows:
            marks = ", ".join("?" * len(page_rows))
            for rec in self._rows(
                f"SELECT reading_id, gateway_id, rssi_dbm, snr_db FROM receptions "
                f"WHERE reading_id IN ({marks}) ORDER BY reading_id, "
                + ("rowid" if self.sql.dialect == "sqlite" else "heard"),
                [row["id"] for row in page_rows],
            ):
                receptions[rec["reading_id"]].append(
                    Reception(rec["gateway_id"], rec["rssi_dbm"], rec["snr_db"])
                )
        items = [
            StoredReading(
                id=row["id"],
                dev_eui=row["dev_eui"],
                time_s=row["time_s"],
                fcnt=row["fcnt"],
                values=json.loads(row["values_json"]),
                gateway_id=row["gateway_id"],
                received_at=row["received_at"],
                receptions=receptions[row["id"]],
            )
            for row in page_rows
        ]
        last = items[-1] if items else None
        more = len(rows) > limit and last is not None
        return Page(items, f"{last.time_s!r}:{last.id}" if more and last else None)


@dataclass(slots=True)
class _Hearing:
    """Receptions of one device through one gateway, folded as they are read: the newest
    (by reading time, then id) gives RSSI/SNR; the mean is over those with an RSSI."""

    frames: int = 0
    last_heard: float = -math.inf
    newest: tuple[float, int] = (-math.inf, -1)
    rssi_dbm: int | None = None
    snr_db: float | None = None
    rssi_sum: float = 0.0
    rssi_count: int = 0

    def add(self, time_s: float, reading_id: int, rssi: int | None, snr: float | None) -> None:
        self.frames += 1
        self.last_heard = max(self.last_heard, time_s)
        if (time_s, reading_id) > self.newest:
            self.newest = (time_s, reading_id)
            self.rssi_dbm, self.snr_db = rssi, snr
        if rssi is not None:
            self.rssi_sum += rssi
            self.rssi_count += 1

    def summary(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "last_heard": self.last_heard,
            "rssi_dbm": self.rssi_dbm,
            "snr_db": self.snr_db,
            "mean_rssi_dbm": self.rssi_sum / self.rssi_count if self.rssi_count else None,
        }


class _OneByOne(Exception):
    """Internal: a batch of a write stored all at once cannot be stored; store them one by
    one instead (see Store._store_batches_together)."""


@dataclass(frozen=True, slots=True)
class _Insert:
    """An INSERT of many rows: ``sqlite`` runs once per row (executemany, one prepared
    statement); ``postgres`` runs once with every column passed as an array (``unnest``),
    one round trip for the whole batch."""

    sqlite: str
    postgres: str


_READING_COLUMNS: Final = (
    "id",
    "dev_eui",
    "time_s",
    "fcnt",
    "values_json",
    "gateway_id",
    "received_at",
)
_RECEPTION_COLUMNS: Final = ("reading_id", "gateway_id", "rssi_dbm", "snr_db")
#: The columns of ``gateway_health`` after its key (gateway_id, at), as HealthPoint has them.
_HEALTH_COLUMNS: Final = (
    "uptime_s",
    "agent_uptime_s",
    "cpu_temp_c",
    "load_1m",
    "outbox_depth",
    "outbox_oldest_age_s",
    "backhaul_rtt_ms",
    "radio_received",
    "radio_crc_ok",
    "radio_crc_bad",
    "radio_forwarded",
    "radio_transmitted",
    "reconnects",
    "config_seq",
)
_RECEPTIONS_INSERT: Final = _Insert(
    sqlite="INSERT INTO receptions (reading_id, gateway_id, rssi_dbm, snr_db) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (reading_id, gateway_id) DO NOTHING",
    # Rows in array order, so a gateway's first reception of a frame is the one kept and
    # the receptions are numbered (``heard``) in the order they came.
    postgres="INSERT INTO receptions (reading_id, gateway_id, rssi_dbm, snr_db) "
    "SELECT reading_id, gateway_id, rssi_dbm, snr_db FROM unnest(CAST(? AS BIGINT[]), "
    "CAST(? AS TEXT[]), CAST(? AS BIGINT[]), CAST(? AS DOUBLE PRECISION[])) "
    "WITH ORDINALITY AS r (reading_id, gateway_id, rssi_dbm, snr_db, n) ORDER BY n "
    "ON CONFLICT (reading_id, gateway_id) DO NOTHING",
)


def _insert_rows(db: Sql, insert: _Insert, rows: Sequence[tuple[Any, ...]]) -> None:
    if not rows:
        return
    if db.dialect == "sqlite":
        db.executemany(insert.sqlite, rows)
    else:
        db.execute(insert.postgres, [list(column) for column in zip(*rows, strict=True)])


def _describe(sql: Sql) -> str:
    """Where ``sql`` keeps its data, for messages: a file path, or a URL without password."""
    if isinstance(sql, SqliteSql):
        return sql.path
    if isinstance(sql, PostgresSql):
        return redacted(sql.url)
    return sql.dialect


#: The columns of ``device_keys`` that hold a wrapped key.
KEY_COLUMNS: Final = ("app_key", "nwk_s_key", "app_s_key")


@dataclass(frozen=True, slots=True)
class WrappedSecrets:
    """Columns of one table that hold secrets wrapped under the vault's KEK."""

    table: str
    #: The column that names a row (for ``UPDATE ... WHERE``).
    row_key: str
    columns: tuple[str, ...]
    #: What they are, for messages: "device keys".
    what: str


#: Every secret wrapped under the KEK, in every table: the KEK checks at open, ``rotate-kek``
#: and :meth:`Store.kek_ids_in_use` cover all of them. The AppKeys reserved for offline
#: provisioning bundles are ``fleet/provisioning.py``'s, the config signing keys
#: ``fleet/rollouts.py``'s.
WRAPPED_SECRETS: Final = (
    WrappedSecrets("device_keys", "dev_eui", KEY_COLUMNS, "device keys"),
    WrappedSecrets("key_reservations", "id", ("app_key",), "reserved AppKeys"),
    WrappedSecrets("config_keys", "key_id", ("private_key",), "config signing keys"),
)

#: Rows per dedup query: four parameters each, well under SQLite's historical limit of 999
#: bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER before 3.32).
_DEDUP_CHUNK: Final = 200


#: One reading as the ``readings`` table takes it: DevEUI (hex), time, FCnt, values (JSON),
#: RSSI, SNR, and the battery voltage (mV) if the values carry one.
ReadingRow = tuple[str, float, int | None, str, int | None, float | None, int | None]


@dataclass(frozen=True, slots=True)
class IncomingBatch:
    """A verified batch for :meth:`Store.record_batches`: which gateway sent it, its sequence
    number, its readings, and when the fleet received it. ``rows``, if given, are the
    readings already turned into table rows (:func:`reading_rows`), as the ingest does in
    its verifying stage; otherwise the store does it."""

    gateway_id: str | bytes
    seq: int
    readings: Sequence[Reading]
    received_at: float
    rows: Sequence[ReadingRow] | None = None


def reading_rows(readings: Sequence[Reading]) -> list[ReadingRow]:
    """The rows the ``readings`` table stores for ``readings``: pure work, no database, so it
    can run before the transaction. InvalidError for a DevEUI that is not 8 bytes or a value
    JSON cannot carry."""
    rows: list[ReadingRow] = []
    encode = _VALUES_JSON.encode
    for reading in readings:
        dev_eui = reading.dev_eui
        eui = dev_eui.hex() if len(dev_eui) == 8 else eui_hex(dev_eui, "DevEUI")
        values = reading.values
        battery = values.get("battery_mv")
        rows.append(
            (
                eui,
                float(reading.time_s),
                reading.fcnt,
                encode(values),
                reading.rssi_dbm,
                reading.snr_db,
                battery if isinstance(battery, int) and not isinstance(battery, bool) else None,
            )
        )
    return rows


def _json_value(value: object) -> object:
    """Telemetry extension values may be CBOR byte strings (or tags): stored as hex text."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, Tag):
        return {"tag": value.tag, "value": value.value}
    raise InvalidError(f"a reading value of type {type(value).__name__} cannot be stored")


#: One encoder for every reading: ``json.dumps`` with options builds a new one per call.
_VALUES_JSON = json.JSONEncoder(sort_keys=True, default=_json_value)


def _gateway(row: dict[str, Any]) -> Gateway:
    state = row["state_online"]
    last_health = None if row["last_health_json"] is None else json.loads(row["last_health_json"])
    # The outbox size travels only in the health summary (older agents do not send it).
    outbox_bytes = None if last_health is None else last_health.get("outbox_bytes")
    outbox_max_bytes = None if last_health is None else last_health.get("outbox_max_bytes")
    return Gateway(
        id=row["id"],
        name=row["name"],
        sign_public_key=row["sign_public_key"],
        seal_public_key=row["seal_public_key"],
        created=row["created"],
        facts=GatewayFacts(
            last_seen=row["last_seen"],
            state_online=None if state is None else bool(state),
            state_at=row["state_at"],
            heartbeat_interval_s=row["heartbeat_interval_s"],
            outbox_depth=row["outbox_depth"],
            outbox_oldest_age_s=row["outbox_oldest_age_s"],
            radio_crc_ok=row["radio_crc_ok"],
            radio_crc_bad=row["radio_crc_bad"],
            outbox_bytes=outbox_bytes if isinstance(outbox_bytes, int) else None,
            outbox_max_bytes=outbox_max_bytes if isinstance(outbox_max_bytes, int) else None,
        ),
        last_health=last_health,
    )


def _device(row: dict[str, Any]) -> Device:
    return Device(
        dev_eui=row["dev_eui"],
        profile_id=row["profile_id"],
        activation=row["activation"],
        join_eui=row["join_eui"],
        dev_addr=row["dev_addr"],
        name=row["name"] or "",
        created=row["created"],
        last_seen=row["last_seen"],
        last_fcnt=row["last_fcnt"],
        battery_mv=row["battery_mv"],
        joined_at=row["joined_at"],
    )
