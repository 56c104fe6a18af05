"""What is particular to PostgreSQL: several processes' connections on one database (the
ingest's advisory lock, migrations opened at once), ids from the identity sequence, a lost
connection, and the fleet commands given a ``postgresql://`` URL.

Every test that takes ``store`` already runs on PostgreSQL too (tests/fleet/conftest.py);
these are the ones that need a second pool or the server itself.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from typer.testing import CliRunner

from owlgate.codecs.node.telemetry import Reading
from owlgate.fleet import schema
from owlgate.fleet.cli import fleet_command
from owlgate.fleet.sql import DatabaseFault
from owlgate.fleet.store import IncomingBatch, Store, StoreResult
from owlgate.fleet.vault import KeyVault
from owlgate.hil.processes import PostgresProcess
from tests.fleet.conftest import (
    ABP_EUI,
    GW1,
    GW2,
    T0,
    drop_postgres_database,
    fresh_postgres_database,
    raw_public,
)

RUNNER = CliRunner()
ROUNDS = 40


def _register(store: Store) -> None:
    for gid in (GW1, GW2):
        store.create_gateway(
            gid,
            name=gid,
            sign_public_key=raw_public(Ed25519PrivateKey.generate()),
            seal_public_key=raw_public(X25519PrivateKey.generate()),
            created=T0,
        )


def _frame(fcnt: int, rssi: int) -> Reading:
    return Reading(
        bytes.fromhex(ABP_EUI), int(T0) + fcnt, {"occupied": True}, rssi_dbm=rssi, fcnt=fcnt
    )


@pytest.fixture
def empty_postgres(postgres_server: PostgresProcess) -> Iterator[str]:
    """A PostgreSQL database with no table at all."""
    name = "empty_" + fresh_postgres_database(postgres_server).rsplit("_", 1)[1]
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = postgres_server.url(name)
    yield url
    drop_postgres_database(postgres_server, url)


def test_two_processes_storing_one_frame_at_once_store_it_once(postgres_url: str) -> None:
    """Two stores (two pools, as two ingest processes have) get the same frames from two
    gateways at the same moment, round after round: each frame is one reading with both
    receptions, never two readings."""
    first, second = Store(postgres_url), Store(postgres_url)
    try:
        _register(first)
        start = threading.Barrier(2)
        results: dict[str, list[StoreResult]] = {GW1: [], GW2: []}
        errors: list[BaseException] = []

        def deliver(store: Store, gid: str, rssi: int) -> None:
            try:
                for fcnt in range(ROUNDS):
                    start.wait(timeout=30)
                    (result,) = store.record_batches(
                        [IncomingBatch(gid, fcnt, [_frame(fcnt, rssi)], T0 + fcnt)]
                    )
                    assert isinstance(result, StoreResult)
                    results[gid].append(result)
            except BaseException as err:
                errors.append(err)
                start.abort()
                raise

        threads = [
            threading.Thread(target=deliver, args=(first, GW1, -70)),
            threading.Thread(target=deliver, args=(second, GW2, -90)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        readings = first.readings(ABP_EUI, limit=1000).items
        assert [r.fcnt for r in readings] == list(range(ROUNDS))
        assert all(sorted(rec.gateway_id for rec in r.receptions) == [GW1, GW2] for r in readings)
        # Per round, exactly one of the two stored the reading and the other merged into it.
        for one, other in zip(results[GW1], results[GW2], strict=True):
            assert sorted([one.stored, other.stored]) == [0, 1]
            assert one.duplicates_merged + other.duplicates_merged == 1
    finally:
        first.close()
        second.close()


def test_reading_ids_come_from_the_identity_sequence(postgres_url: str) -> None:
    """A row another writer inserts with the column's default and a rolled-back batch do not
    make the store reuse or collide with an id."""
    with Store(postgres_url) as store:
        _register(store)
        assert store.record_batch(GW1, 1, [_frame(1, -70)], T0) == StoreResult(1, 0, False)
        store.sql.execute(
            "INSERT INTO readings (dev_eui, time_s, fcnt, values_json, gateway_id, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [ABP_EUI, T0 + 500, None, "{}", GW1, T0],
        )
        (refused,) = store.record_batches(
            [IncomingBatch(GW1, 2, (), T0, rows=[(ABP_EUI, None, 2, "{}", -1, 1.0, None)])]  # type: ignore[list-item]
        )
        assert not isinstance(refused, StoreResult)
        assert store.record_batch(GW1, 3, [_frame(3, -70), _frame(4, -70)], T0) == StoreResult(
            2, 0, False
        )
        ids = [r.id for r in store.readings(ABP_EUI, limit=1000).items]
        assert len(ids) == len(set(ids)) == 4
        assert store.sql.scalar("SELECT pg_get_serial_sequence('readings', 'id')") is not None


def test_a_lost_connection_is_a_database_fault_that_stores_nothing(
    postgres_url: str, postgres_server: PostgresProcess
) -> None:
    with Store(postgres_url) as store:
        _register(store)

        def cut_then_store() -> None:
            with store.transaction() as db:
                pid = db.scalar("SELECT pg_backend_pid()")
                with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
                store.record_batches([IncomingBatch(GW1, 1, [_frame(1, -70)], T0)])

        with pytest.raises(DatabaseFault):
            cut_then_store()
        # The pool replaces the connection: the same batch is stored once, as when the ingest
        # tries again.
        assert store.readings(ABP_EUI).items == []
        assert store.record_batch(GW1, 1, [_frame(1, -70)], T0) == StoreResult(1, 0, False)


def test_stores_opening_a_new_database_at_once_migrate_it_once(empty_postgres: str) -> None:
    opened: list[Store] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def open_store() -> None:
        try:
            start.wait(timeout=30)
            opened.append(Store(empty_postgres))
        except BaseException as err:
            errors.append(err)
            raise

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        every = [name for name, _ in schema.migrations()]
        for store in opened:
            assert store.applied_migrations() == every
        assert opened[0].sql.scalar("SELECT count(*) FROM migrations") == len(every)
    finally:
        for store in opened:
            store.close()


def test_fleet_seed_and_rotate_kek_take_a_postgresql_url(postgres_url: str, tmp_path: Path) -> None:
    kek = tmp_path / "kek.json"
    seeded = RUNNER.invoke(
        fleet_command,
        [
            "seed",
            "--db",
            postgres_url,
            "--gateways",
            "2",
            "--nodes",
            "3",
            "--keys-dir",
            str(tmp_path / "keys"),
            "--manifest",
            str(tmp_path / "manifest.json"),
            "--kek-file",
            str(kek),
        ],
    )
    assert seeded.exit_code == 0, seeded.output
    assert json.loads((tmp_path / "manifest.json").read_text())["db"] == postgres_url
    with Store(postgres_url) as store:
        assert len(store.gateways().items) == 2
        assert len(store.devices().items) == 3
    rotated = RUNNER.invoke(
        fleet_command,
        [
            "rotate-kek",
            "--db",
            postgres_url,
            "--kek-file",
            str(kek),
            "--new-kek-file",
            str(tmp_path / "kek2.json"),
        ],
    )
    assert rotated.exit_code == 0, rotated.output
    # Two keys per ABP device, one per OTAA device: the seed makes both kinds.
    assert re.search(
        r"re-wrapped [3-6] keys \(device keys: [3-6], .*\) in postgresql://", rotated.output
    )
    with Store(postgres_url, vault=KeyVault.from_file(tmp_path / "kek2.json")) as store:
        assert store.kek_ids_in_use() == {KeyVault.from_file(tmp_path / "kek2.json").key_id}
        for device in store.devices().items:
            keys = store.device_keys(device.dev_eui)
            assert (keys.app_key or keys.app_s_key) is not None


def test_a_database_url_password_is_never_shown(
    postgres_server: PostgresProcess, tmp_path: Path
) -> None:
    """A server that refuses: the error names the database without the password."""
    url = f"postgresql://owlgate:s3cret-pw@127.0.0.1:{postgres_server.port}/no_such_db"
    result = RUNNER.invoke(
        fleet_command,
        [
            "seed",
            "--db",
            url,
            "--keys-dir",
            str(tmp_path / "keys"),
            "--manifest",
            str(tmp_path / "m.json"),
            "--kek-file",
            str(tmp_path / "kek.json"),
        ],
    )
    assert result.exit_code == 2
    assert "s3cret-pw" not in result.output
    assert "owlgate:***@127.0.0.1" in result.output
    assert not (tmp_path / "m.json").exists()
