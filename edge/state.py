"""The gateway agent's persistent state: one SQLite database under the state directory.

What it keeps, and why here:

* ``sessions``: the LoRaWAN session of each device (DevAddr, DevEUI, profile, session keys)
  with the last uplink frame counter the agent has *stored a reading for*, so a restart does
  not re-open replays (LoRaWAN 1.0.3 section 4.3.1.5).
* ``meta``: small counters: the telemetry batch sequence number and the outbox evictions.
* ``node_seq``: for each wired sensor node, the last reading sequence number stored, advanced
  in the same transaction as the batch (a node re-sends what it was not told is stored, and
  these numbers drop the copies).
* ``outbox``: signed telemetry waiting for the backhaul. A reading counts as received once
  its batch is in this table; the frame counters it covers are advanced in the *same*
  transaction (:meth:`StateDb.put`), so a stored frame can never be accepted again, and a
  frame whose reading was lost in a crash may be accepted again (which loses nothing).
* ``migrations``: which schema steps have run; each step is a registered function.

Durability: WAL journal with ``synchronous=FULL``. In WAL mode NORMAL already survives a
killed process, but a commit may be lost on power loss, and a gateway on a lamp post loses
power. FULL costs one fsync of the WAL per commit, and the agent commits once per batch (not
per uplink), so the price is paid a few times a minute. One connection, owned by the agent's
thread; ``BEGIN IMMEDIATE`` takes the write lock up front and ``busy_timeout`` waits for a
checkpoint or a reader (the CLI, a backup) instead of failing with "database is locked".

The outbox is bounded by size on disk (``max_outbox_bytes``): the database file never grows
beyond it (SQLite's ``max_page_count``; the WAL beside it is truncated to
:data:`WAL_SIZE_LIMIT_BYTES` after each checkpoint), and the payload it holds never exceeds it
either. A write that finds no room evicts the oldest entries first, and every eviction is
counted (``meta``), because silently dropping data is worse than dropping it. At
:data:`OUTBOX_WARN_FRACTION` of the bound it warns first. A file system that fills up before
the bound (an SD card shared with logs) is handled the same way: the oldest entries make room,
counted as evictions, instead of the write failing over and over.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

from owlgate.codecs.errors import OwlgateError

__all__ = [
    "DEFAULT_MAX_OUTBOX_BYTES",
    "STATE_FILE",
    "OutboxEntry",
    "OutboxStats",
    "StateDb",
    "StateError",
    "StoredSession",
    "UplinkOutbox",
]

_log = logging.getLogger(__name__)

#: The database's file name inside the gateway's state directory.
STATE_FILE: Final = "agent.sqlite3"
#: Outbox bound by default: 256 MiB hold about a day of a busy gateway's telemetry (100
#: uplinks/s at about 30 bytes per reading) on an SD card that has gigabytes.
DEFAULT_MAX_OUTBOX_BYTES: Final = 256 * 1024 * 1024
#: The outbox warns (log, ``status.json``, health) once it holds this share of its bound, and
#: again after it went below :data:`OUTBOX_WARN_CLEAR_FRACTION` and came back.
OUTBOX_WARN_FRACTION: Final = 0.8
OUTBOX_WARN_CLEAR_FRACTION: Final = 0.7
#: When a write finds no room (SQLITE_FULL: the database file is at its bound, or the file
#: system is full), the oldest entries holding at least this many bytes (at most a 32nd of the
#: bound, and at least four times the new entry) are evicted so the pages they free take the
#: new one.
DISK_FULL_EVICT_BYTES: Final = 1024 * 1024
#: The database file may always grow to at least this many pages (sessions and a few batches),
#: whatever the bound.
MIN_FILE_PAGES: Final = 64
#: Evictions are logged when they start, then at most once per this many seconds, with the
#: totals since the last line: a day-long outage must not write a line per batch.
EVICTION_LOG_INTERVAL_S: Final = 60.0
#: After a checkpoint the WAL file is truncated to this size, so it does not keep the space
#: of the largest burst forever (SQLite's journal_size_limit).
WAL_SIZE_LIMIT_BYTES: Final = 8 * 1024 * 1024
_SQLITE_FULL: Final = 13
_BUSY_TIMEOUT_MS: Final = 5000


class StateError(OwlgateError):
    """The state database cannot be opened, migrated or written."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A device's LoRaWAN 1.0.x session as stored.

    ``last_f_cnt`` is the last 32-bit uplink counter whose reading reached the outbox (None:
    no frame yet since the session started). ``activation`` is ``"abp"`` or ``"otaa"``. The
    keys are the raw 16-byte NwkSKey and AppSKey; ``repr`` hides them.
    """

    dev_eui: bytes
    dev_addr: int
    profile_id: str
    nwk_s_key: bytes
    app_s_key: bytes
    last_f_cnt: int | None = None
    activation: str = "abp"

    def __repr__(self) -> str:
        return (
            f"StoredSession(dev_eui={self.dev_eui.hex()}, dev_addr={self.dev_addr:08x}, "
            f"profile_id={self.profile_id!r}, last_f_cnt={self.last_f_cnt}, "
            f"activation={self.activation!r}, keys=<secret>)"
        )


class OutboxEntry(NamedTuple):
    """One message waiting for the backhaul."""

    id: int
    topic: str
    """The topic suffix after ``owlgate/v1/gw/{gateway_id}/``, e.g. ``telemetry``."""
    payload: bytes
    created_at: float
    """UTC seconds when it was written."""
    delayed: bool
    """Sealed while the backhaul was down (the payload says so too)."""
    size: int


class OutboxStats(NamedTuple):
    """What the health report says about the outbox."""

    depth: int
    bytes: int
    oldest_age_s: float | None
    evicted: int
    evicted_bytes: int
    max_bytes: int
    warning: bool
    """At or above :data:`OUTBOX_WARN_FRACTION` of ``max_bytes``."""
    used_bytes: int
    """How much of ``max_bytes`` is used on disk (:attr:`StateDb.used_bytes`)."""


class _DiskFull(Exception):
    """Internal: SQLITE_FULL during an outbox write (the cause is the sqlite3 error)."""


def _is_disk_full(err: sqlite3.Error) -> bool:
    # Extended result codes keep the primary code in the low byte (SQLITE_FULL is 13).
    code: int = getattr(err, "sqlite_errorcode", 0)
    return code & 0xFF == _SQLITE_FULL


# --- migrations -------------------------------------------------------------------------------


def _m1_initial(db: sqlite3.Connection) -> None:
    # Keys are stored in clear in a 0600 file for now; the key-vault issue moves them into
    # the sealed store (they arrive HPKE-sealed to this gateway and should stay sealed at rest).
    db.execute(
        "CREATE TABLE sessions ("
        " dev_eui BLOB PRIMARY KEY,"
        " dev_addr INTEGER NOT NULL,"
        " profile_id TEXT NOT NULL,"
        " nwk_s_key BLOB NOT NULL,"
        " app_s_key BLOB NOT NULL,"
        " last_f_cnt INTEGER,"
        " activation TEXT NOT NULL,"
        " updated_at REAL NOT NULL)"
    )
    db.execute("CREATE INDEX sessions_dev_addr ON sessions (dev_addr)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.executemany(
        "INSERT INTO meta (key, value) VALUES (?, 0)",
        [("batch_seq",), ("evicted",), ("evicted_bytes",)],
    )
    # AUTOINCREMENT: an id is never reused, so a late ack for an evicted entry cannot delete a
    # newer one. The delayed flag has an index so live data can be sent before the backlog.
    db.execute(
        "CREATE TABLE outbox ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " topic TEXT NOT NULL,"
        " payload BLOB NOT NULL,"
        " created_at REAL NOT NULL,"
        " delayed INTEGER NOT NULL DEFAULT 0,"
        " size INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX outbox_delayed ON outbox (delayed, id)")


def _m2_node_seq(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE node_seq (dev_eui BLOB PRIMARY KEY, last_seq INTEGER NOT NULL,"
        " updated_at REAL NOT NULL)"
    )


#: (version, name, function): applied in order, each in its own transaction, recorded in
#: ``migrations``. A new schema step is appended here, never edited in place.
MIGRATIONS: Final[tuple[tuple[int, str, Callable[[sqlite3.Connection], None]], ...]] = (
    (1, "initial", _m1_initial),
    (2, "node_seq", _m2_node_seq),
)


class StateDb:
    """The agent's state database. Not thread-safe: one owner (the agent's event loop thread).

    ``now`` arguments are UTC seconds (``time.time()``); passing them keeps tests exact.
    """

    def __init__(self, path: Path | str, *, max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES):
        if max_outbox_bytes < 1:
            raise StateError(f"max_outbox_bytes must be positive, got {max_outbox_bytes}")
        self.path = Path(path)
        self.max_outbox_bytes = max_outbox_bytes
        created = not self.path.exists()
        try:
            # isolation_level=None: no implicit transactions; every write goes through
            # _transaction() with BEGIN IMMEDIATE.
            self._db = sqlite3.connect(
                self.path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as err:
            raise StateError(f"cannot open the state database {self.path}: {err}") from err
        if created:
            # Session keys live here (see _m1_initial): owner-only, like the PEM key files.
            os.chmod(self.path, 0o600)
        try:
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StateError(f"{self.path}: SQLite refused WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
            self._page_size: int = self._db.execute("PRAGMA page_size").fetchone()[0]
            # The hard bound on the file. SQLite keeps the current size if it is larger (a
            # bound lowered since): then the file stays as it is and evictions make room.
            wanted_pages = max(MIN_FILE_PAGES, -(-max_outbox_bytes // self._page_size))
            self._max_pages: int = self._db.execute(
                f"PRAGMA max_page_count = {wanted_pages}"
            ).fetchone()[0]
            self._migrate()
            row = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
        except StateError:
            self._db.close()
            raise
        except sqlite3.Error as err:
            self._db.close()
            raise StateError(f"cannot prepare the state database {self.path}: {err}") from err
        self._depth: int = row[0]
        self._bytes: int = row[1]
        self._seq: int = self._meta("batch_seq")
        self._warning = False
        # Evictions not yet logged, and when the last eviction line was written (monotonic).
        self._unlogged_evictions = [0, 0]
        self._eviction_logged_at: float | None = None
        self._check_fill()

    @classmethod
    def in_dir(
        cls, state_dir: Path | str, *, max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES
    ) -> StateDb:
        """Open (creating if needed) ``STATE_FILE`` in the gateway's state directory."""
        return cls(Path(state_dir) / STATE_FILE, max_outbox_bytes=max_outbox_bytes)

    def set_max_outbox_bytes(self, max_outbox_bytes: int) -> None:
        """Bound the outbox to ``max_outbox_bytes`` from now on, while open (a configuration
        document may change it). A raised bound lets the file grow at once; a lowered one
        keeps what is waiting until the next write, which evicts the oldest entries down to
        the new bound (counted, as any eviction). :class:`StateError` for a bound below 1."""
        if max_outbox_bytes < 1:
            raise StateError(f"max_outbox_bytes must be positive, got {max_outbox_bytes}")
        wanted_pages = max(MIN_FILE_PAGES, -(-max_outbox_bytes // self._page_size))
        try:
            # SQLite keeps the current size when the file is larger than the new bound.
            pages: int = self._db.execute(f"PRAGMA max_page_count = {wanted_pages}").fetchone()[0]
        except sqlite3.Error as err:
            raise StateError(f"{self.path}: cannot change the outbox bound: {err}") from err
        old = self.max_outbox_bytes
        self.max_outbox_bytes = max_outbox_bytes
        self._max_pages = pages
        _log.info("outbox bound changed from %d to %d bytes", old, max_outbox_bytes)
        self._check_fill()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise StateError(f"{self.path}: cannot start a write: {err}") from err
        try:
            yield db
        except sqlite3.Error as err:
            self._rollback()
            raise StateError(f"{self.path}: write failed, rolled back: {err}") from err
        except BaseException:
            self._rollback()
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise StateError(f"{self.path}: commit failed: {err}") from err

    def _rollback(self) -> None:
        # SQLite rolls some failures back by itself (SQLITE_FULL may, section "Response To
        # Errors Within A Transaction" of its documentation): ROLLBACK only what is still open.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _migrate(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = {row[0] for row in self._db.execute("SELECT version FROM migrations")}
        for version, name, step in MIGRATIONS:
            if version in done:
                continue
            with self._transaction() as db:
                step(db)
                db.execute(
                    "INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
            _log.info("state database %s: applied migration %d (%s)", self.path, version, name)

    def migrations(self) -> list[tuple[int, str]]:
        """The schema steps applied, in order: ``(version, name)``."""
        return list(self._db.execute("SELECT version, name FROM migrations ORDER BY version"))

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    # --- sessions -----------------------------------------------------------------------------

    def save_session(self, session: StoredSession, now: float) -> None:
        """Insert or replace a device's session (an OTAA rejoin replaces it, counter and all)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sessions (dev_eui, dev_addr, profile_id, nwk_s_key,"
                " app_s_key, last_f_cnt, activation, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.dev_eui,
                    session.dev_addr,
                    session.profile_id,
                    session.nwk_s_key,
                    session.app_s_key,
                    session.last_f_cnt,
                    session.activation,
                    now,
                ),
            )

    def delete_session(self, dev_eui: bytes) -> bool:
        """Forget a device's session; False when there was none."""
        with self._transaction() as db:
            return db.execute("DELETE FROM sessions WHERE dev_eui = ?", (dev_eui,)).rowcount > 0

    def sessions(self) -> list[StoredSession]:
        """Every stored session, ordered by DevEUI."""
        rows = self._db.execute(
            "SELECT dev_eui, dev_addr, profile_id, nwk_s_key, app_s_key, last_f_cnt, activation"
            " FROM sessions ORDER BY dev_eui"
        )
        return [StoredSession(*row) for row in rows]

    # --- outbox -------------------------------------------------------------------------------

    @property
    def next_batch_seq(self) -> int:
        """The sequence number the next telemetry batch carries (stored by :meth:`put`)."""
        return self._seq

    def put(
        self,
        topic: str,
        payload: bytes,
        now: float,
        *,
        delayed: bool = False,
        f_cnts: Mapping[bytes, int] | None = None,
        node_seqs: Mapping[bytes, int] | None = None,
        batch_seq: int | None = None,
    ) -> int:
        """Write one message to the outbox and return its id; ONE transaction that also

        * advances the stored uplink counter of each DevEUI in ``f_cnts`` (never backwards),
        * advances the stored sequence number of each wired node in ``node_seqs`` (the same),
        * records ``batch_seq`` as used (the next batch gets ``batch_seq + 1``),
        * evicts the oldest entries while the outbox would exceed ``max_outbox_bytes``.

        When the file system is full, the oldest entries are evicted to make room and the
        write is tried once more. A message larger than the whole bound is refused with
        :class:`StateError`.
        """
        size = len(payload)
        if size > self.max_outbox_bytes:
            raise StateError(
                f"a {size}-byte message cannot fit an outbox bounded to {self.max_outbox_bytes}"
            )
        try:
            return self._put(topic, payload, now, delayed, f_cnts, node_seqs, batch_seq, 0)
        except _DiskFull:
            make_room = max(4 * size, min(DISK_FULL_EVICT_BYTES, self.max_outbox_bytes // 32))
            if self.file_bytes < self._max_pages * self._page_size - make_room:
                # Not our bound: the file system itself is full.
                _log.error(
                    "%s: the file system is full; evicting the oldest outbox messages (%d bytes"
                    " or more) to store new data; free space on it",
                    self.path,
                    make_room,
                )
        try:
            return self._put(topic, payload, now, delayed, f_cnts, node_seqs, batch_seq, make_room)
        except _DiskFull as err:
            raise StateError(f"{self.path}: the file system is full: {err.__cause__}") from err

    def _put(
        self,
        topic: str,
        payload: bytes,
        now: float,
        delayed: bool,
        f_cnts: Mapping[bytes, int] | None,
        node_seqs: Mapping[bytes, int] | None,
        batch_seq: int | None,
        make_room: int,
    ) -> int:
        size = len(payload)
        evicted = evicted_bytes = 0
        try:
            with self._transaction() as db:
                while self._depth - evicted > 0 and (
                    self._bytes - evicted_bytes + size > self.max_outbox_bytes
                    or evicted_bytes < make_room
                ):
                    row = db.execute(
                        "DELETE FROM outbox WHERE id = (SELECT min(id) FROM outbox) RETURNING size"
                    ).fetchone()
                    evicted += 1
                    evicted_bytes += row[0]
                if evicted:
                    db.execute(
                        "UPDATE meta SET value = value + CASE key WHEN 'evicted' THEN ? ELSE ? END"
                        " WHERE key IN ('evicted', 'evicted_bytes')",
                        (evicted, evicted_bytes),
                    )
                cursor = db.execute(
                    "INSERT INTO outbox (topic, payload, created_at, delayed, size)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, now, int(delayed), size),
                )
                if f_cnts:
                    # The guard keeps a counter from going backwards if a batch from before a
                    # restart were ever written late.
                    db.executemany(
                        "UPDATE sessions SET last_f_cnt = ?1 WHERE dev_eui = ?2"
                        " AND (last_f_cnt IS NULL OR last_f_cnt < ?1)",
                        [(f_cnt, dev_eui) for dev_eui, f_cnt in f_cnts.items()],
                    )
                if node_seqs:
                    db.executemany(
                        "INSERT INTO node_seq (dev_eui, last_seq, updated_at) VALUES (?1, ?2, ?3)"
                        " ON CONFLICT (dev_eui) DO UPDATE SET last_seq = ?2, updated_at = ?3"
                        " WHERE last_seq < ?2",
                        [(dev_eui, seq, now) for dev_eui, seq in node_seqs.items()],
                    )
                if batch_seq is not None:
                    db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'batch_seq'", (batch_seq + 1,)
                    )
        except StateError as err:
            cause = err.__cause__
            if isinstance(cause, sqlite3.Error) and _is_disk_full(cause):
                raise _DiskFull() from cause
            raise
        entry_id = cursor.lastrowid
        if entry_id is None:
            raise StateError(f"{self.path}: the outbox insert returned no id")
        self._depth += 1 - evicted
        self._bytes += size - evicted_bytes
        if batch_seq is not None:
            self._seq = max(self._seq, batch_seq + 1)
        if evicted:
            self._log_evictions(evicted, evicted_bytes)
        self._check_fill()
        return entry_id

    def _log_evictions(self, count: int, size: int) -> None:
        pending = self._unlogged_evictions
        pending[0] += count
        pending[1] += size
        now = time.monotonic()
        last = self._eviction_logged_at
        if last is not None and now - last < EVICTION_LOG_INTERVAL_S:
            return
        _log.warning(
            "outbox full (%d-byte bound on disk): evicted the %d oldest messages (%d bytes)%s;"
            " %d evicted in all",
            self.max_outbox_bytes,
            pending[0],
            pending[1],
            "" if last is None else f" in the last {now - last:.0f} s",
            self._meta("evicted"),
        )
        self._eviction_logged_at = now
        pending[0] = pending[1] = 0

    @property
    def file_bytes(self) -> int:
        """Bytes of the database file in use (pages not on SQLite's free list): what the
        bound on disk limits."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    @property
    def fill(self) -> float:
        """The share of the bound in use: the larger of the payload waiting over the bound
        and the file in use over the file's bound (the file adds page and index overhead to
        the payload, about a third)."""
        return max(
            self._bytes / self.max_outbox_bytes,
            self.file_bytes / (self._max_pages * self._page_size),
        )

    @property
    def used_bytes(self) -> int:
        """How much of the bound is used, in bytes: :attr:`fill` times the bound."""
        return round(self.fill * self.max_outbox_bytes)

    def _check_fill(self) -> None:
        # Two PRAGMAs per write (a few microseconds against the millisecond of a commit).
        fill = self.fill
        if not self._warning and fill >= OUTBOX_WARN_FRACTION:
            self._warning = True
            _log.warning(
                "outbox at %.0f %% of its %d-byte bound on disk (%d messages waiting): the"
                " backhaul has been down a while; at 100 %% the oldest data is evicted",
                fill * 100,
                self.max_outbox_bytes,
                self._depth,
            )
        elif self._warning and fill < OUTBOX_WARN_CLEAR_FRACTION:
            self._warning = False
            _log.info("outbox back to %.0f %% of its bound", fill * 100)

    @property
    def outbox_warning(self) -> bool:
        """True from :data:`OUTBOX_WARN_FRACTION` of the bound until it drains below
        :data:`OUTBOX_WARN_CLEAR_FRACTION`."""
        return self._warning

    def node_seqs(self) -> dict[bytes, int]:
        """The last stored reading sequence number of every wired node, by DevEUI."""
        return {
            bytes(row[0]): int(row[1])
            for row in self._db.execute("SELECT dev_eui, last_seq FROM node_seq")
        }

    def pending(self, limit: int, *, live_first: bool = False) -> list[OutboxEntry]:
        """Up to ``limit`` entries, oldest first; ``live_first`` puts entries not marked
        delayed before the delayed backlog (each group oldest first)."""
        order = "delayed, id" if live_first else "id"
        rows = self._db.execute(
            "SELECT id, topic, payload, created_at, delayed, size FROM outbox"
            f" ORDER BY {order} LIMIT ?",
            (limit,),
        )
        return [OutboxEntry(row[0], row[1], row[2], row[3], bool(row[4]), row[5]) for row in rows]

    def ack(self, entry_id: int) -> bool:
        """Remove a delivered entry; False when it is gone already (evicted or acked)."""
        with self._transaction() as db:
            row = db.execute(
                "DELETE FROM outbox WHERE id = ? RETURNING size", (entry_id,)
            ).fetchone()
        if row is None:
            return False
        self._depth -= 1
        self._bytes -= row[0]
        self._check_fill()
        return True

    def ack_many(self, entry_ids: Sequence[int]) -> int:
        """Remove several delivered entries in one transaction; how many were still there."""
        if not entry_ids:
            return 0
        removed = removed_bytes = 0
        with self._transaction() as db:
            for entry_id in entry_ids:
                row = db.execute(
                    "DELETE FROM outbox WHERE id = ? RETURNING size", (entry_id,)
                ).fetchone()
                if row is not None:
                    removed += 1
                    removed_bytes += row[0]
        self._depth -= removed
        self._bytes -= removed_bytes
        self._check_fill()
        return removed

    @property
    def depth(self) -> int:
        """Entries waiting."""
        return self._depth

    @property
    def outbox_bytes(self) -> int:
        """Payload bytes waiting."""
        return self._bytes

    def oldest_age_s(self, now: float) -> float | None:
        """Seconds since the oldest waiting entry was written; None when the outbox is empty."""
        row = self._db.execute("SELECT min(created_at) FROM outbox").fetchone()
        return None if row[0] is None else max(0.0, now - row[0])

    def stats(self, now: float) -> OutboxStats:
        """Depth, bytes, oldest age and evictions so far (persisted across restarts)."""
        return OutboxStats(
            self._depth,
            self._bytes,
            self.oldest_age_s(now),
            self._meta("evicted"),
            self._meta("evicted_bytes"),
            self.max_outbox_bytes,
            self._warning,
            self.used_bytes,
        )


class UplinkOutbox:
    """A state database as the MQTT uplink sees it (its ``OutboxLike``): live batches go
    before a backlog sealed while the backhaul was down, and delivered ones are deleted in
    one write per publish window."""

    __slots__ = ("_state",)

    def __init__(self, state: StateDb) -> None:
        self._state = state

    def pending(self, limit: int) -> list[OutboxEntry]:
        return self._state.pending(limit, live_first=True)

    def ack_many(self, entry_ids: Sequence[int]) -> None:
        self._state.ack_many(entry_ids)
