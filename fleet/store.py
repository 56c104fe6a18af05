"""The fleet's storage: one SQLite file through sqlite-utils (WAL mode), or ``:memory:``.

What lives here: the registry (gateways with their public keys and health facts, device
profiles, devices), device secrets, the join server's state (DevNonces used, JoinNonce,
DevAddr), and what the ingest stores (batches seen, readings, receptions).

Rules the code keeps:

- every write that belongs together runs in one transaction (``Database.atomic``): a batch of
  readings is stored whole or not at all;
- the schema is built by registered migration functions, applied in order when the store
  opens, each recorded by name in the ``migrations`` table so it runs exactly once;
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
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, Literal, TypeVar

from sqlite_utils import Database

from owlgate.codecs.errors import OwlgateError
from owlgate.codecs.health import Health
from owlgate.codecs.node.cbor import Tag
from owlgate.codecs.node.telemetry import Reading
from owlgate.codecs.payloads import PROFILES

from .health import GatewayFacts
from .vault import KeyVault, VaultError, VaultRequiredError, is_wrapped, kek_id_of

log = logging.getLogger(__name__)

#: How far apart (seconds of reading time) two readings with the same DevEUI and FCnt may be
#: and still be one frame heard twice: FCnt restarts at 0 after a rejoin, so equal counters
#: far apart in time are different frames.
DEFAULT_DEDUP_WINDOW_S: Final = 300.0
DEFAULT_PAGE_LIMIT: Final = 100
WAL_AUTOCHECKPOINT_PAGES: Final = 10_000
MAX_PAGE_LIMIT: Final = 1000

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

Migration = Callable[[Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(name: str) -> Callable[[Migration], Migration]:
    """Register a schema migration under a unique, never-reused ``name``; order is source order."""

    def register(function: Migration) -> Migration:
        if any(existing == name for existing, _ in MIGRATIONS):
            raise ValueError(f"migration {name!r} registered twice")
        MIGRATIONS.append((name, function))
        return function

    return register


@migration("0001_registry")
def _registry(db: Database) -> None:
    db.table("gateways").create(
        {
            "id": str,
            "name": str,
            "sign_public_key": bytes,
            "seal_public_key": bytes,
            "created": float,
            "last_seen": float,
            # The retained state topic: 1 online, 0 offline (the Last Will), NULL never said.
            "state_online": int,
            "state_at": float,
            "heartbeat_interval_s": int,
            "last_health_at": float,
            "outbox_depth": int,
            "outbox_oldest_age_s": int,
            "radio_crc_ok": int,
            "radio_crc_bad": int,
            "last_health_json": str,
        },
        pk="id",
        not_null={"name", "sign_public_key", "seal_public_key", "created"},
    )
    db.table("device_profiles").create(
        {"id": str, "name": str, "description": str}, pk="id", not_null={"name"}
    )
    db.table("devices").create(
        {
            "dev_eui": str,
            "profile_id": str,
            "activation": str,
            "join_eui": str,
            "dev_addr": int,
            "name": str,
            "created": float,
            "last_seen": float,
            "last_fcnt": int,
            "battery_mv": int,
            "joined_at": float,
            # Last JoinNonce issued (LoRaWAN 1.0.4 section 6.2.3: a counter per device).
            "join_nonce": int,
        },
        pk="dev_eui",
        not_null={"profile_id", "activation", "created"},
        foreign_keys=[("profile_id", "device_profiles", "id")],
    )
    db.table("devices").create_index(["dev_addr"])
    # Written in plaintext by the releases before migration 0004; wrapped since.
    db.table("device_keys").create(
        {"dev_eui": str, "app_key": bytes, "nwk_s_key": bytes, "app_s_key": bytes},
        pk="dev_eui",
        foreign_keys=[("dev_eui", "devices", "dev_eui")],
    )
    db.table("join_nonces").create(
        {"dev_eui": str, "dev_nonce": int, "at": float}, pk=("dev_eui", "dev_nonce")
    )


@migration("0002_ingest")
def _ingest(db: Database) -> None:
    db.table("batches").create(
        {"gateway_id": str, "seq": int, "received_at": float}, pk=("gateway_id", "seq")
    )
    db.table("readings").create(
        {
            "id": int,
            "dev_eui": str,
            "time_s": float,
            "fcnt": int,
            "values_json": str,
            "gateway_id": str,
            "received_at": float,
        },
        pk="id",
        not_null={"dev_eui", "time_s", "values_json", "gateway_id", "received_at"},
    )
    db.table("readings").create_index(["dev_eui", "time_s", "id"])
    db.table("readings").create_index(["dev_eui", "fcnt"])
    db.table("receptions").create(
        {"reading_id": int, "gateway_id": str, "rssi_dbm": int, "snr_db": float},
        pk=("reading_id", "gateway_id"),
        foreign_keys=[("reading_id", "readings", "id")],
    )


@migration("0003_readings_without_fcnt_index")
def _drop_fcnt_index(db: Database) -> None:
    # The same-frame lookup (DevEUI, FCnt, time within the dedup window) is served as well by
    # the (dev_eui, time_s, id) index, and every reading stored paid for a second per-device
    # index: each index on dev_eui puts a transaction's inserts on as many pages as there
    # are devices in it, and those pages are what a commit writes.
    db.execute("DROP INDEX IF EXISTS idx_readings_dev_eui_fcnt")


@migration("0004_wrapped_device_keys")
def _wrapped_device_keys(db: Database) -> None:
    # The schema does not change: the key columns hold a wrapped blob instead of the raw key,
    # both BLOBs. What this records is when the database began to hold wrapped keys. The
    # plaintext keys an older release left are wrapped by Store.__init__, which has the
    # vault; a migration function sees only the database.
    del db


# --- the store ---------------------------------------------------------------------------------


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidError(f"limit must be 1 .. {MAX_PAGE_LIMIT}, got {limit}")
    return limit


class Store:
    """The fleet database. Thread-safe: one connection behind a lock (FastAPI runs sync routes
    in a thread pool); SQLite serialises writers anyway."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        dedup_window_s: float = DEFAULT_DEDUP_WINDOW_S,
        vault: KeyVault | None = None,
    ) -> None:
        """Open (creating and migrating if needed) the database at ``path``.

        With ``vault``, every key stored is checked to be unwrappable by it, one key per KEK
        id (WrongKekError naming the id it needs otherwise, before anything is written), and
        plaintext keys left by a release before the vault are wrapped, all in one
        transaction. Without ``vault`` the store works except for device keys: writing or
        reading one raises VaultRequiredError.
        """
        self.path = str(path)
        self.dedup_window_s = dedup_window_s
        self.vault = vault
        #: Keys wrapped at open because they were found in plaintext.
        self.plaintext_keys_wrapped = 0
        #: Stored keys that could not be unwrapped when read (:meth:`device_keys`).
        self.unwrap_errors = 0
        conn = sqlite3.connect(self.path, check_same_thread=False)
        self._db = Database(conn, execute_plugins=False)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA foreign_keys = ON")
        if self.path != ":memory:":
            self._db.enable_wal()
            # Checkpoint every WAL_AUTOCHECKPOINT_PAGES rather than SQLite's 1000: a page
            # that several ingest transactions change is then copied into the database once
            # per checkpoint, not once per transaction (the WAL grows to about 40 MB).
            self._db.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        self._migrate()
        if vault is not None:
            self.plaintext_keys_wrapped = self._adopt_keys(vault)
        # The profiles are the codec registry's: refreshed at every open, so a new built-in
        # profile appears without a migration.
        self.upsert_profiles(
            [Profile(id=p.id, name=p.name, description=p.description) for p in PROFILES.values()]
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One transaction (nested calls become savepoints), holding the store's lock."""
        with self._lock, self._db.atomic() as db:
            yield db

    def _migrate(self) -> None:
        with self.transaction() as db:
            if "migrations" not in db.table_names():
                db.table("migrations").create({"name": str, "applied_at": str}, pk="name")
            done = {row["name"] for row in db.table("migrations").rows}
            for name, function in MIGRATIONS:
                if name not in done:
                    function(db)
                    db.table("migrations").insert(
                        {"name": name, "applied_at": _now_text(db)}, pk="name"
                    )

    def _adopt_keys(self, vault: KeyVault) -> int:
        """Check that ``vault`` can unwrap what is stored and wrap plaintext keys; returns
        how many were wrapped."""
        with self._scrubbing(), self.transaction() as db:
            rows = db.execute(f"SELECT dev_eui, {', '.join(KEY_COLUMNS)} FROM device_keys")
            plaintext: list[tuple[str, str, bytes]] = []
            checked: set[str] = set()
            for eui, *values in rows.fetchall():
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
                    key_id = kek_id_of(value)
                    if key_id not in checked:
                        # One key per KEK id: RFC 3394's integrity check on it proves the
                        # vault holds the right KEK under that id (or raises WrongKekError).
                        vault.unwrap(value)
                        checked.add(key_id)
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
        """The ids of the KEKs the stored keys are wrapped under (no vault needed): which
        KEK this database, or a backup of it, needs."""
        found: set[str] = set()
        for column in KEY_COLUMNS:
            for (value,) in self._rows_raw(
                f"SELECT DISTINCT substr({column}, 1, 34) FROM device_keys "
                f"WHERE {column} IS NOT NULL"
            ):
                if len(value) >= 3 and value[0] == 1 and len(value) >= 2 + value[1]:
                    found.add(value[2 : 2 + value[1]].decode("ascii", "replace"))
        return found

    def _rows_raw(self, sql: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql).fetchall())

    def rewrap_keys(self, vault: KeyVault | None = None) -> int:
        """Re-wrap every stored key under the current KEK of ``vault`` (default: the store's
        own), in one transaction; returns how many keys were re-wrapped. ``vault`` must also
        hold the KEK the keys are wrapped under now (:meth:`KeyVault.with_older`). Every key
        is unwrapped before any is written, so a KEK missing or wrong refuses with
        WrongKekError and changes nothing. The store uses ``vault`` from then on."""
        vault = vault or self.vault
        if vault is None:
            raise VaultRequiredError("re-wrapping keys needs a vault")
        with self._scrubbing(), self.transaction() as db:
            rows = db.execute(
                f"SELECT dev_eui, {', '.join(KEY_COLUMNS)} FROM device_keys ORDER BY dev_eui"
            ).fetchall()
            fresh: list[tuple[bytes | None, ...]] = []
            count = 0
            for eui, *values in rows:
                keys = [None if v is None else vault.unwrap(v) for v in values]
                count += sum(1 for key in keys if key is not None)
                fresh.append((*(None if k is None else vault.wrap(k) for k in keys), eui))
            db.conn.executemany(
                "UPDATE device_keys SET "
                + ", ".join(f"{column} = ?" for column in KEY_COLUMNS)
                + " WHERE dev_eui = ?",
                fresh,
            )
            self.vault = vault
        log.info("re-wrapped %d device keys under KEK %r", count, vault.key_id)
        return count

    @contextmanager
    def _scrubbing(self) -> Iterator[None]:
        """Around a rewrite of the keys: what they replace must not stay readable in the file.

        ``secure_delete`` makes SQLite zero the space an old value leaves in its page, and the
        TRUNCATE checkpoint afterwards copies the new pages into the database and empties the
        WAL, whose frames hold whole images of the old pages.
        """
        with self._lock:
            self._db.execute("PRAGMA secure_delete = ON")
            try:
                yield
            finally:
                self._db.execute("PRAGMA secure_delete = OFF")
            if self.path != ":memory:":
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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
        """Names of the migrations recorded in the ``migrations`` table, in applied order."""
        with self._lock:
            return [
                row["name"] for row in self._db.table("migrations").rows_where(order_by="rowid")
            ]

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(sql, list(params))
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # --- profiles ------------------------------------------------------------------------------

    def upsert_profiles(self, profiles: Sequence[Profile]) -> None:
        """Register or refresh device profiles (from ``owlgate.codecs.payloads.PROFILES``)."""
        with self.transaction() as db:
            db.table("device_profiles").upsert_all(
                [{"id": p.id, "name": p.name, "description": p.description} for p in profiles],
                pk="id",
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
            if db.table("gateways").count_where("id = ?", [gid]):
                raise ConflictError(f"gateway {gid} is already registered")
            db.table("gateways").insert(
                {
                    "id": gid,
                    "name": name,
                    "sign_public_key": sign_public_key,
                    "seal_public_key": seal_public_key,
                    "created": created,
                }
            )
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
            self._heard(db, gid, at)

    def _heard(self, db: Database, gid: str, at: float) -> None:
        cursor = db.execute(
            "UPDATE gateways SET last_seen = ? WHERE id = ? "
            "AND (last_seen IS NULL OR last_seen < ?)",
            [at, gid, at],
        )
        if cursor.rowcount == 0 and not db.table("gateways").count_where("id = ?", [gid]):
            raise NotFoundError(f"no gateway {gid}")

    def set_gateway_state(self, gateway_id: str | bytes, online: bool, at: float) -> None:
        """The retained ``state`` topic said ``online`` or ``offline`` (the Last Will) at ``at``."""
        gid = eui_hex(gateway_id, "gateway id")
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE gateways SET state_online = ?, state_at = ? WHERE id = ?",
                [int(online), at, gid],
            )
            if cursor.rowcount == 0:
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
            cursor = db.execute(
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
            if cursor.rowcount == 0:
                raise NotFoundError(f"no gateway {gid}")
            self._heard(db, gid, received_at)

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
            if not db.table("device_profiles").count_where("id = ?", [profile_id]):
                known = ", ".join(p["id"] for p in db.table("device_profiles").rows) or "none"
                raise InvalidError(f"unknown device profile {profile_id!r}; known: {known}")
            if db.table("devices").count_where("dev_eui = ?", [eui]):
                raise ConflictError(f"device {eui} is already registered")
            if dev_addr is not None and db.table("devices").count_where("dev_addr = ?", [dev_addr]):
                raise ConflictError(f"DevAddr {dev_addr:08x} is already in use")
            db.table("devices").insert(
                {
                    "dev_eui": eui,
                    "profile_id": profile_id,
                    "activation": activation,
                    "join_eui": join,
                    "dev_addr": dev_addr,
                    "name": name,
                    "created": created,
                    "join_nonce": 0,
                }
            )
            db.table("device_keys").insert(
                {
                    "dev_eui": eui,
                    "app_key": self._wrap(app_key),
                    "nwk_s_key": self._wrap(nwk_s_key),
                    "app_s_key": self._wrap(app_s_key),
                }
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
            if db.table("join_nonces").count_where(
                "dev_eui = ? AND dev_nonce = ?", [eui, dev_nonce]
            ):
                raise ConflictError(f"DevNonce {dev_nonce:04x} was already used by {eui}")
            db.table("join_nonces").insert({"dev_eui": eui, "dev_nonce": dev_nonce, "at": at})
            row = db.table("devices").get(eui)
            join_nonce = next_join_nonce(int(row["join_nonce"] or 0))

            def in_use(addr: int) -> bool:
                return bool(
                    db.table("devices").count_where("dev_addr = ? AND dev_eui != ?", [addr, eui])
                )

            dev_addr = allocate_dev_addr(in_use)
            nwk_s_key, app_s_key = session(join_nonce)
            wrapped_nwk_s_key, wrapped_app_s_key = self._wrap(nwk_s_key), self._wrap(app_s_key)
            db.table("devices").update(
                eui,
                {
                    "join_nonce": join_nonce,
                    "dev_addr": dev_addr,
                    "last_fcnt": None,
                    "joined_at": at,
                },
            )
            db.table("device_keys").update(
                eui, {"nwk_s_key": wrapped_nwk_s_key, "app_s_key": wrapped_app_s_key}
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
        value the store refuses, an unregistered gateway, a constraint the database enforces)
        is rolled back alone and its place in the result holds the FleetError, while the
        batches around it are stored. A fault of the database itself (``sqlite3``'s
        OperationalError: disk full, locked beyond the busy timeout, ...) rolls the whole
        transaction back and is raised: nothing of it is stored.

        The device updates of the whole transaction are folded into one per device and
        written after the batches (at most one UPDATE per device however many readings it
        sent), so a batch rolled back leaves no trace there either.
        """
        results: list[StoreResult | FleetError] = []
        devices: dict[str, list[Any]] = {}
        with self.transaction() as db:
            for batch in batches:
                seen: dict[str, list[Any]] = {}
                try:
                    with db.atomic():
                        result = self._store_batch(db, batch, seen)
                except FleetError as err:
                    results.append(err)
                    continue
                except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError) as err:
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
            if devices:
                db.conn.executemany(
                    "UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?), "
                    "last_fcnt = CASE WHEN ? IS NULL THEN last_fcnt "
                    "ELSE MAX(COALESCE(last_fcnt, 0), ?) END, "
                    "battery_mv = COALESCE(?, battery_mv) WHERE dev_eui = ?",
                    [
                        (last_seen, last_fcnt, last_fcnt, battery, eui)
                        for eui, (last_seen, last_fcnt, battery) in devices.items()
                    ],
                )
        return results

    def _store_batch(
        self, db: Database, batch: IncomingBatch, devices: dict[str, list[Any]]
    ) -> StoreResult:
        gid = eui_hex(batch.gateway_id, "gateway id")
        received_at = batch.received_at
        # The primary key (gateway_id, seq) answers "seen before?" and records the batch in
        # one statement; a repeat inserts nothing.
        inserted = db.execute(
            "INSERT OR IGNORE INTO batches (gateway_id, seq, received_at) VALUES (?, ?, ?)",
            [gid, batch.seq, received_at],
        )
        if inserted.rowcount == 0:
            return StoreResult(0, 0, batch_duplicate=True)
        self._heard(db, gid, received_at)
        rows = batch.rows if batch.rows is not None else reading_rows(batch.readings)
        stored_match = self._stored_frames(db, rows)
        # Row ids are given here rather than by SQLite so the readings can go in with one
        # executemany and their receptions still name them. The transaction holds SQLite's
        # write lock from the batches INSERT on, so nobody else can take these ids.
        last_id = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM readings").fetchone()[0])
        window = self.dedup_window_s
        # Frames new in this batch, for a repeat inside the same batch.
        fresh: dict[tuple[str, int], list[tuple[float, int]]] = {}
        new_rows: list[tuple[object, ...]] = []
        receptions: list[tuple[object, ...]] = []
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
                last_id += 1
                reading_id = last_id
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
        db.conn.executemany(
            "INSERT INTO readings (id, dev_eui, time_s, fcnt, values_json, gateway_id, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            new_rows,
        )
        # A gateway that hears the same frame twice keeps its first reception.
        db.conn.executemany(
            "INSERT OR IGNORE INTO receptions (reading_id, gateway_id, rssi_dbm, snr_db) "
            "VALUES (?, ?, ?, ?)",
            receptions,
        )
        return StoreResult(len(new_rows), merged, batch_duplicate=False)

    def _stored_frames(self, db: Database, rows: Sequence[ReadingRow]) -> dict[int, int]:
        """For each row (by index) with an FCnt, the id of the first stored reading of the
        same frame (same DevEUI and FCnt, times at most ``dedup_window_s`` apart): one query
        per chunk of rows, each probe using the ``(dev_eui, fcnt)`` index."""
        wanted = [
            (index, eui, fcnt, time_s)
            for index, (eui, time_s, fcnt, *_) in enumerate(rows)
            if fcnt is not None
        ]
        found: dict[int, int] = {}
        window = self.dedup_window_s
        for start in range(0, len(wanted), _DEDUP_CHUNK):
            chunk = wanted[start : start + _DEDUP_CHUNK]
            values = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
            cursor = db.execute(
                f"SELECT w.column1, MIN(r.id) FROM (VALUES {values}) AS w "
                "JOIN readings AS r ON r.dev_eui = w.column2 AND r.fcnt = w.column3 "
                "AND r.time_s BETWEEN w.column4 - ? AND w.column4 + ? GROUP BY w.column1",
                [value for item in chunk for value in item] + [window, window],
            )
            found.update((int(index), int(reading_id)) for index, reading_id in cursor)
        return found

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
                f"SELECT * FROM receptions WHERE reading_id IN ({marks}) "
                "ORDER BY reading_id, rowid",
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


#: The columns of ``device_keys`` that hold a wrapped key.
KEY_COLUMNS: Final = ("app_key", "nwk_s_key", "app_s_key")

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


def _now_text(db: Database) -> str:
    row = db.execute("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')").fetchone()
    return str(row[0])


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
