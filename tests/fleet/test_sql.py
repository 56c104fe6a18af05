"""The portable SQL layer: transactions, savepoints, error classes, dialect translation."""

from __future__ import annotations

from pathlib import Path

import pytest

from owlgate.fleet.sql import (
    DatabaseFault,
    DataRefused,
    Sql,
    SqliteSql,
    connect,
    is_postgres_url,
    to_pyformat,
)


@pytest.fixture
def sql() -> SqliteSql:
    db = SqliteSql(":memory:")
    db.execute(db.ddl("CREATE TABLE t (id {serial}, name TEXT NOT NULL UNIQUE, blob {blob})"))
    return db


def names(sql: SqliteSql) -> list[str]:
    return [row["name"] for row in sql.query("SELECT name FROM t ORDER BY id")]


def test_ddl_translates_the_type_placeholders() -> None:
    sqlite = SqliteSql(":memory:")
    assert sqlite.ddl("a {blob}, b {float}, c {int}") == "a BLOB, b REAL, c INTEGER"


def test_placeholders_become_pyformat_and_a_literal_percent_is_doubled() -> None:
    assert to_pyformat("SELECT ? WHERE a LIKE '5%' AND b = ?") == (
        "SELECT %s WHERE a LIKE '5%%' AND b = %s"
    )


def test_a_transaction_commits_when_the_block_ends(sql: SqliteSql) -> None:
    inside = []
    with sql.transaction() as tx:
        tx.execute("INSERT INTO t (name) VALUES (?)", ["a"])
        inside.append(sql.in_transaction)
    assert inside == [True]
    assert not sql.in_transaction
    assert names(sql) == ["a"]


def _insert_then_fail(sql: Sql, *insert: str) -> None:
    with sql.transaction() as tx:
        for name in insert:
            tx.execute("INSERT INTO t (name) VALUES (?)", [name])
        if tx.scalar("SELECT COUNT(*) FROM t") < 10:
            raise RuntimeError("boom")


def test_a_transaction_that_raises_leaves_nothing(sql: SqliteSql) -> None:
    with pytest.raises(RuntimeError):
        _insert_then_fail(sql, "a")
    assert names(sql) == []


def test_a_nested_transaction_is_a_savepoint_rolled_back_alone(sql: SqliteSql) -> None:
    with sql.transaction() as tx:
        tx.execute("INSERT INTO t (name) VALUES (?)", ["kept"])
        with pytest.raises(DataRefused):
            # The second insert breaks the unique name: the savepoint goes, "inner" with it.
            _insert_then_fail(tx, "inner", "kept")
        tx.execute("INSERT INTO t (name) VALUES (?)", ["after"])
    assert names(sql) == ["kept", "after"]


def test_constraint_errors_are_data_refused_with_the_driver_error_as_cause(sql: SqliteSql) -> None:
    sql.execute("INSERT INTO t (name) VALUES (?)", ["a"])
    with pytest.raises(DataRefused) as caught:
        sql.execute("INSERT INTO t (name) VALUES (?)", ["a"])
    assert "UNIQUE" in str(caught.value)
    assert caught.value.__cause__ is not None
    with pytest.raises(DataRefused):
        sql.execute("INSERT INTO t (name) VALUES (NULL)")


def test_a_fault_of_the_database_is_database_fault(tmp_path: Path) -> None:
    db = SqliteSql(tmp_path / "x.sqlite3")
    with pytest.raises(DatabaseFault):
        db.execute("SELECT * FROM no_such_table")
    db.close()


def test_portable_upsert_and_returning(sql: SqliteSql) -> None:
    rows = sql.query("INSERT INTO t (name) VALUES (?) RETURNING id", ["a"])
    assert rows == [{"id": 1}]
    assert sql.execute("INSERT INTO t (name) VALUES (?) ON CONFLICT DO NOTHING", ["a"]) == 0
    sql.execute(
        "INSERT INTO t (id, name, blob) VALUES (?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET blob = excluded.blob",
        [1, "a", b"\x00\x01"],
    )
    assert sql.scalar("SELECT blob FROM t WHERE id = ?", [1]) == b"\x00\x01"
    assert sql.scalar("SELECT blob FROM t WHERE id = ?", [99]) is None


def test_connect_picks_the_backend_by_target(tmp_path: Path) -> None:
    assert is_postgres_url("postgresql://u@h/db")
    assert is_postgres_url("postgres://h/db")
    assert not is_postgres_url(tmp_path / "postgresql:")
    db = connect(tmp_path / "fleet.sqlite3")
    assert isinstance(db, SqliteSql)
    assert db.scalar("PRAGMA journal_mode") == "wal"
    assert "t" not in db.table_names()
    db.close()


def test_an_integer_past_64_bits_is_refused_data_not_a_crash(sql: SqliteSql) -> None:
    with pytest.raises(DataRefused):
        sql.query("SELECT * FROM t WHERE id = ?", [2**63])
    with pytest.raises(DataRefused):
        sql.execute("INSERT INTO t (id, name) VALUES (?, ?)", [2**64, "big"])
    assert names(sql) == []
