"""The agent's state database: sessions, outbox, bound and evictions, transactions, restarts."""

from __future__ import annotations

import random
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from owlgate.edge.state import STATE_FILE, StateDb, StateError, StoredSession

EUI_A = bytes.fromhex("70b3d57ed0000001")
EUI_B = bytes.fromhex("70b3d57ed0000002")


def _session(dev_eui: bytes, dev_addr: int = 0x26011234, f_cnt: int | None = None) -> StoredSession:
    return StoredSession(
        dev_eui, dev_addr, "parking-v1", bytes(range(16)), bytes(range(16, 32)), f_cnt, "abp"
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDb]:
    with StateDb.in_dir(tmp_path) as state:
        yield state


def test_pragmas_file_mode_and_migrations(tmp_path: Path) -> None:
    with StateDb.in_dir(tmp_path) as state:
        assert state.migrations() == [(1, "initial"), (2, "node_seq")]
    path = tmp_path / STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version, name FROM migrations").fetchall() == [
            (1, "initial"),
            (2, "node_seq"),
        ]
    finally:
        raw.close()
    # Reopening does not run the migration again.
    with StateDb.in_dir(tmp_path) as state:
        assert state.migrations() == [(1, "initial"), (2, "node_seq")]


def test_sessions_round_trip_and_replace(db: StateDb) -> None:
    db.save_session(_session(EUI_B, f_cnt=7), now=1.0)
    db.save_session(_session(EUI_A), now=1.0)
    assert db.sessions() == [_session(EUI_A), _session(EUI_B, f_cnt=7)]
    # A rejoin replaces the session, counter included.
    db.save_session(_session(EUI_B, dev_addr=0x26019999), now=2.0)
    assert db.sessions()[1] == _session(EUI_B, dev_addr=0x26019999)
    assert "000102" not in repr(db.sessions()[0])
    assert db.delete_session(EUI_A) is True
    assert db.delete_session(EUI_A) is False
    assert [s.dev_eui for s in db.sessions()] == [EUI_B]


def test_outbox_put_pending_ack(db: StateDb) -> None:
    first = db.put("telemetry", b"one", 100.0)
    second = db.put("health", b"second", 105.0, delayed=True)
    assert db.depth == 2
    assert db.outbox_bytes == 9
    assert db.oldest_age_s(110.0) == 10.0
    entries = db.pending(10)
    assert [(e.id, e.topic, e.payload, e.delayed, e.size) for e in entries] == [
        (first, "telemetry", b"one", False, 3),
        (second, "health", b"second", True, 6),
    ]
    assert entries[0].created_at == 100.0
    assert [e.id for e in db.pending(1)] == [first]
    assert db.ack(first) is True
    assert db.ack(first) is False
    assert db.depth == 1
    assert db.outbox_bytes == 6
    assert db.oldest_age_s(110.0) == 5.0
    assert db.ack(second) is True
    assert db.oldest_age_s(110.0) is None
    assert db.pending(10) == []


def test_live_first_order(db: StateDb) -> None:
    backlog = [db.put("telemetry", b"old", float(t), delayed=True) for t in range(3)]
    live = db.put("telemetry", b"new", 10.0)
    assert [e.id for e in db.pending(10)] == [*backlog, live]
    assert [e.id for e in db.pending(10, live_first=True)] == [live, *backlog]


def test_bound_evicts_oldest_first_and_counts(tmp_path: Path) -> None:
    with StateDb.in_dir(tmp_path, max_outbox_bytes=100) as state:
        ids = [state.put("telemetry", bytes(30), float(t)) for t in range(3)]
        assert state.stats(3.0).evicted == 0
        newest = state.put("telemetry", bytes(30), 3.0)
        assert [e.id for e in state.pending(10)] == [ids[1], ids[2], newest]
        big = state.put("telemetry", bytes(70), 4.0)
        stats = state.stats(4.0)
        assert [e.id for e in state.pending(10)] == [newest, big]
        assert (stats.depth, stats.bytes, stats.evicted, stats.evicted_bytes) == (2, 100, 3, 90)
        assert state.ack(ids[0]) is False  # evicted: a late ack deletes nothing
        with pytest.raises(StateError, match="cannot fit"):
            state.put("telemetry", bytes(101), 5.0)
    # Counters and sizes survive a restart.
    with StateDb.in_dir(tmp_path, max_outbox_bytes=100) as state:
        stats = state.stats(4.0)
        assert (stats.depth, stats.bytes, stats.evicted, stats.evicted_bytes) == (2, 100, 3, 90)


def test_batch_and_counters_in_one_transaction(tmp_path: Path) -> None:
    with StateDb.in_dir(tmp_path) as state:
        state.save_session(_session(EUI_A, f_cnt=5), now=0.0)
        state.save_session(_session(EUI_B), now=0.0)
        assert state.next_batch_seq == 0
        state.put("telemetry", b"batch0", 1.0, f_cnts={EUI_A: 9, EUI_B: 0}, batch_seq=0)
        assert state.next_batch_seq == 1
        # A counter never goes backwards.
        state.put("telemetry", b"batch1", 2.0, f_cnts={EUI_A: 3}, batch_seq=1)
    with StateDb.in_dir(tmp_path) as state:
        assert {s.dev_eui: s.last_f_cnt for s in state.sessions()} == {EUI_A: 9, EUI_B: 0}
        assert state.next_batch_seq == 2
        assert [e.payload for e in state.pending(10)] == [b"batch0", b"batch1"]


def test_failed_write_changes_nothing(tmp_path: Path) -> None:
    with StateDb.in_dir(tmp_path) as state:
        state.save_session(_session(EUI_A, f_cnt=5), now=0.0)
        # A counter SQLite cannot bind fails after the outbox insert, inside the transaction:
        # nothing of the write stays.
        bad: dict[bytes, int] = {EUI_A: object()}  # type: ignore[dict-item]
        with pytest.raises(StateError, match="rolled back"):
            state.put("telemetry", b"batch", 1.0, f_cnts=bad, batch_seq=0)
        assert state.depth == 0
        assert state.next_batch_seq == 0
    with StateDb.in_dir(tmp_path) as state:
        assert state.sessions()[0].last_f_cnt == 5
        assert state.pending(10) == []
        assert state.next_batch_seq == 0


def test_entry_written_but_not_acked_is_pending_after_reopen(tmp_path: Path) -> None:
    state = StateDb.in_dir(tmp_path)
    entry = state.put("telemetry", b"sealed", 1.0, batch_seq=0)
    # No ack, no clean shutdown beyond closing the file handle (the commit is what counts).
    state.close()
    with StateDb.in_dir(tmp_path) as state:
        assert [(e.id, e.payload) for e in state.pending(10)] == [(entry, b"sealed")]
        assert state.depth == 1
        assert state.next_batch_seq == 1


def test_warns_near_the_bound_and_clears_after_draining(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with StateDb.in_dir(tmp_path, max_outbox_bytes=1000) as state:
        ids = [state.put("telemetry", bytes(100), float(n)) for n in range(7)]
        assert not state.stats(10.0).warning
        with caplog.at_level("WARNING", logger="owlgate.edge.state"):
            ids.append(state.put("telemetry", bytes(100), 8.0))
        assert state.stats(10.0).warning
        stats = state.stats(10.0)
        assert (stats.bytes, stats.max_bytes, stats.warning, stats.evicted) == (800, 1000, True, 0)
        warnings = [r.getMessage() for r in caplog.records]
        assert any("80 % of its 1000-byte bound" in message for message in warnings)
        # 750 bytes (75 %): still above the level where it clears.
        assert state.ack(ids[0])
        state.put("telemetry", bytes(50), 9.0)
        assert state.stats(10.0).warning
        # Below 70 % it clears; an id already gone counts for nothing.
        assert state.ack_many([ids[0], ids[1], ids[2]]) == 2
        assert not state.stats(10.0).warning
        assert (state.depth, state.outbox_bytes) == (6, 550)
    with StateDb.in_dir(tmp_path, max_outbox_bytes=500) as state:
        # Reopened with a smaller bound that 550 bytes exceed: the warning is on at once.
        assert state.stats(10.0).warning


def test_full_file_system_evicts_oldest_and_keeps_writing(tmp_path: Path) -> None:
    # max_page_count makes SQLite answer SQLITE_FULL as a full SD card does.
    with StateDb.in_dir(tmp_path) as state:
        state.put("telemetry", b"first", 0.0)
        state._db.execute("PRAGMA max_page_count = 40")
        written = [
            state.put("telemetry", bytes([n % 256]) * 1000, float(n + 1)) for n in range(300)
        ]
        stats = state.stats(400.0)
        # Every write succeeded; the oldest made room and were counted.
        assert stats.evicted > 0
        assert stats.depth + stats.evicted == 301
        pending = state.pending(1000)
        assert [entry.id for entry in pending] == written[-len(pending) :]
        assert pending[-1].payload == bytes([299 % 256]) * 1000


def test_a_message_that_never_fits_the_disk_is_refused(tmp_path: Path) -> None:
    with StateDb.in_dir(tmp_path) as state:
        state._db.execute("PRAGMA max_page_count = 12")
        with pytest.raises(StateError, match="file system is full"):
            state.put("telemetry", bytes(200_000), 1.0)
        # Nothing half-written: the database still works.
        state._db.execute("PRAGMA max_page_count = 100000")
        assert state.put("telemetry", b"after", 2.0) > 0
        assert state.depth == 1


def test_node_sequence_numbers_advance_with_the_batch(tmp_path: Path) -> None:
    with StateDb.in_dir(tmp_path) as state:
        state.put("telemetry", b"a", 1.0, node_seqs={EUI_A: 5, EUI_B: 2})
        state.put("telemetry", b"b", 2.0, node_seqs={EUI_A: 3})
        assert state.node_seqs() == {EUI_A: 5, EUI_B: 2}
        state.put("telemetry", b"c", 3.0, node_seqs={EUI_A: 9})
    with StateDb.in_dir(tmp_path) as state:
        assert state.node_seqs() == {EUI_A: 9, EUI_B: 2}


def test_readers_and_a_briefly_held_write_lock_never_make_writes_fail(tmp_path: Path) -> None:
    # A technician's sqlite3 shell or a backup reading the database, and another writer
    # holding the lock for a moment: the agent's writes wait (busy_timeout) instead of
    # failing with "database is locked".
    with StateDb.in_dir(tmp_path) as state:
        state.put("telemetry", b"before", 1.0)
        reader = sqlite3.connect(tmp_path / STATE_FILE, isolation_level=None)
        writer = sqlite3.connect(
            tmp_path / STATE_FILE, isolation_level=None, check_same_thread=False
        )
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
            state.put("telemetry", b"while reading", 2.0)
            writer.execute("BEGIN IMMEDIATE")
            release = threading.Timer(0.3, writer.execute, args=("COMMIT",))
            release.start()
            try:
                state.put("telemetry", b"while locked", 3.0)
            finally:
                release.join()
            # The reader's snapshot is unchanged; the agent's view has all three.
            assert reader.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
            assert [entry.payload for entry in state.pending(10)] == [
                b"before",
                b"while reading",
                b"while locked",
            ]
        finally:
            reader.close()
            writer.close()


def test_the_file_on_disk_never_grows_beyond_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bound = 1024 * 1024
    rng = random.Random(5)
    sizes = [rng.randrange(200, 2500) for _ in range(3000)]
    with (
        caplog.at_level("WARNING", logger="owlgate.edge.state"),
        StateDb.in_dir(tmp_path, max_outbox_bytes=bound) as state,
    ):
        ids = [
            state.put("telemetry", rng.randbytes(size), float(n)) for n, size in enumerate(sizes)
        ]
        stats = state.stats(4000.0)
        # Everything written is either waiting or counted as evicted, oldest first.
        assert stats.depth + stats.evicted == len(sizes)
        assert [entry.id for entry in state.pending(len(sizes))] == ids[-stats.depth :]
        assert stats.warning
        assert 0.8 <= stats.used_bytes / bound <= 1.0
        assert state.file_bytes <= bound
    assert (tmp_path / STATE_FILE).stat().st_size <= bound
    # Eviction is logged when it starts, not once per write.
    evictions = [r for r in caplog.records if "evicted the" in r.getMessage()]
    assert len(evictions) == 1
    assert stats.evicted > 100
