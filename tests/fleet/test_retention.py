"""Retention with downsampling: old readings become per-bucket rollups in batches, old rollups
go, the job is idempotent, a failure never loses a reading, and exports include rollups.
Through the CLI, the background service and the API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from owlgate.codecs.node.telemetry import Reading
from owlgate.fleet.api import create_app
from owlgate.fleet.cli_data import data_command
from owlgate.fleet.export import RetentionPolicy, retention_service, run_retention
from owlgate.fleet.sql import SqlError
from owlgate.fleet.store import InvalidError, Store
from tests.fleet.conftest import ABP_EUI, GW1, GW2, OTAA_EUI
from tests.fleet.test_api import ApiClient, Clock

RUNNER = CliRunner()
DAY = 86_400.0
HOUR = 3600.0
#: "Now" of the tests that run the job with a clock of their own: a bucket boundary.
NOW = 1_800_000_000.0
POLICY = RetentionPolicy(raw_days=7, rollup_days=30)


class Seq:
    """Batch sequence numbers (and frame counters): a repeated one is a duplicate batch."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    def __call__(self) -> int:
        self.n += 1
        return self.n


def put(store: Store, seq: Seq, eui: str, time_s: float, values: dict[str, object]) -> None:
    n = seq()
    store.record_batch(
        GW1,
        n,
        [Reading(bytes.fromhex(eui), int(time_s), values, rssi_dbm=-90, snr_db=3.0, fcnt=n)],
        received_at=time_s,
    )


def old_bin_hour(store: Store, seq: Seq, start: float, fills: list[int]) -> None:
    for index, level in enumerate(fills):
        put(
            store, seq, OTAA_EUI, start + index * 600, {"fill_pct": level, "tilt_alarm": index == 1}
        )


def rollups(store: Store) -> list[dict[str, object]]:
    rows = store.sql.query(
        "SELECT dev_eui, bucket_start, bucket_s, count, first_time_s, last_time_s, stats_json "
        "FROM reading_rollups ORDER BY dev_eui, bucket_start"
    )
    for row in rows:
        row["stats"] = json.loads(str(row.pop("stats_json")))
    return rows


def count_readings(store: Store, eui: str) -> int:
    return int(store.sql.scalar("SELECT COUNT(*) FROM readings WHERE dev_eui = ?", [eui]))


@pytest.fixture
def aged(registry: Store) -> Store:
    """A bin with three readings in one hour ten days ago and two in the next hour, one a
    status message; forty days ago one more; a recent reading; a parking bay's old reading."""
    seq = Seq()
    ten_days = NOW - 10 * DAY
    old_bin_hour(registry, seq, ten_days, [10, 30, 20])
    put(registry, seq, OTAA_EUI, ten_days + HOUR, {"fill_pct": 50})
    put(registry, seq, OTAA_EUI, ten_days + HOUR + 60, {"message": "status", "battery_mv": 3300})
    put(registry, seq, OTAA_EUI, NOW - 40 * DAY, {"fill_pct": 90})
    put(registry, seq, OTAA_EUI, NOW - DAY, {"fill_pct": 70})
    put(registry, seq, ABP_EUI, ten_days + 5, {"occupied": True, "battery_mv": 3600})
    return registry


def test_old_readings_become_rollups_and_old_rollups_go(aged: Store) -> None:
    result = run_retention(aged.sql, POLICY, now=NOW)
    assert result.readings_rolled_up == 7
    assert result.rollups_deleted == 1
    assert result.devices == 2
    ten_days = NOW - 10 * DAY
    assert rollups(aged) == [
        {
            "dev_eui": ABP_EUI, "bucket_start": ten_days, "bucket_s": 3600, "count": 1,
            "first_time_s": ten_days + 5, "last_time_s": ten_days + 5,
            "stats": {"battery_mv": {"max": 3600, "min": 3600, "n": 1, "sum": 3600},
                      "occupied": {"at": ten_days + 5, "last": True}},
        },
        {
            "dev_eui": OTAA_EUI, "bucket_start": ten_days, "bucket_s": 3600, "count": 3,
            "first_time_s": ten_days, "last_time_s": ten_days + 1200,
            "stats": {"fill_pct": {"max": 30, "min": 10, "n": 3, "sum": 60},
                      "tilt_alarm": {"at": ten_days + 1200, "last": False}},
        },
        {
            "dev_eui": OTAA_EUI, "bucket_start": ten_days + HOUR, "bucket_s": 3600, "count": 2,
            "first_time_s": ten_days + HOUR, "last_time_s": ten_days + HOUR + 60,
            "stats": {"battery_mv": {"max": 3300, "min": 3300, "n": 1, "sum": 3300},
                      "fill_pct": {"max": 50, "min": 50, "n": 1, "sum": 50},
                      "message": {"at": ten_days + HOUR + 60, "last": "status"}},
        },
    ]  # fmt: skip
    # The recent reading stays raw; nothing old is left, not even its receptions.
    assert count_readings(aged, OTAA_EUI) == 1
    assert count_readings(aged, ABP_EUI) == 0
    assert aged.sql.scalar("SELECT COUNT(*) FROM receptions") == 1
    # Idempotent: a second run finds nothing to do.
    again = run_retention(aged.sql, POLICY, now=NOW)
    assert (again.readings_rolled_up, again.buckets_written, again.rollups_deleted) == (0, 0, 0)
    assert len(rollups(aged)) == 3


def test_small_batches_give_the_same_rollups_and_a_late_reading_merges(aged: Store) -> None:
    small = RetentionPolicy(raw_days=7, rollup_days=None, batch_size=2)
    result = run_retention(aged.sql, small, now=NOW)
    # Six bin readings in batches of two, one bay reading: four transactions.
    assert result.transactions == 4
    assert result.readings_rolled_up == 7
    first = {(r["dev_eui"], r["bucket_start"]): r for r in rollups(aged)}
    # Kept for ever: the forty-day-old reading's rollup is still there.
    assert first[(OTAA_EUI, NOW - 40 * DAY)]["count"] == 1
    assert first[(OTAA_EUI, NOW - 10 * DAY)]["stats"]["fill_pct"] == {  # type: ignore[index]
        "max": 30, "min": 10, "n": 3, "sum": 60,
    }  # fmt: skip
    # A reading delayed for days (a gateway's outbox) arrives for a bucket already rolled up.
    put(aged, Seq(1000), OTAA_EUI, NOW - 10 * DAY + 3000, {"fill_pct": 80, "tilt_alarm": True})
    late = run_retention(aged.sql, small, now=NOW)
    assert late.readings_rolled_up == 1
    merged = {(r["dev_eui"], r["bucket_start"]): r for r in rollups(aged)}[
        (OTAA_EUI, NOW - 10 * DAY)
    ]
    assert merged["count"] == 4
    assert merged["last_time_s"] == NOW - 10 * DAY + 3000
    assert merged["stats"] == {
        "fill_pct": {"max": 80, "min": 10, "n": 4, "sum": 140},
        "tilt_alarm": {"at": NOW - 10 * DAY + 3000, "last": True},
    }


def test_a_failed_rollup_keeps_its_readings(aged: Store) -> None:
    # The database refuses the bin's rollups (as it would when the disk is full): the bay's
    # are committed in their own transaction, the bin keeps every one of its readings.
    if aged.sql.dialect == "sqlite":
        aged.sql.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON reading_rollups "
            f"WHEN NEW.dev_eui = '{OTAA_EUI}' BEGIN SELECT RAISE(ABORT, 'no space'); END"
        )
    else:
        aged.sql.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.dev_eui = '{OTAA_EUI}' THEN RAISE EXCEPTION 'no space'; END IF; "
            "RETURN NEW; END $$"
        )
        aged.sql.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON reading_rollups "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    with pytest.raises(SqlError, match="no space"):
        run_retention(aged.sql, POLICY, now=NOW)
    assert count_readings(aged, OTAA_EUI) == 7
    assert count_readings(aged, ABP_EUI) == 0
    assert [r["dev_eui"] for r in rollups(aged)] == [ABP_EUI]


def test_values_that_are_not_json_are_counted_not_fatal(registry: Store) -> None:
    registry.sql.execute(
        "INSERT INTO readings (id, dev_eui, time_s, fcnt, values_json, gateway_id, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [900, OTAA_EUI, NOW - 9 * DAY, 1, "{not json", GW2, NOW - 9 * DAY],
    )
    result = run_retention(registry.sql, POLICY, now=NOW)
    assert result.readings_rolled_up == 1
    assert result.unreadable == 1
    (row,) = rollups(registry)
    assert (row["count"], row["stats"]) == (1, {})


def test_the_policy_is_checked() -> None:
    with pytest.raises(InvalidError, match="rollup_days must be at least raw_days"):
        RetentionPolicy(raw_days=30, rollup_days=7)
    with pytest.raises(InvalidError, match="bucket_s must divide a day"):
        RetentionPolicy(bucket_s=7 * 60)
    with pytest.raises(InvalidError, match="bucket_s must divide a day"):
        RetentionPolicy(bucket_s=0)
    with pytest.raises(InvalidError, match="raw_days"):
        RetentionPolicy(raw_days=math.nan)
    assert RetentionPolicy(bucket_s=2 * 86_400).bucket_s == 2 * 86_400


def test_the_service_runs_the_job_and_counts(aged: Store) -> None:
    async def scenario() -> dict[str, object]:
        start = retention_service(POLICY, interval_s=3600, clock=lambda: NOW)
        async with start(aged) as service:
            await service.ran.wait()
            return service.stats()

    stats = asyncio.run(scenario())
    assert stats["runs"] == 1
    assert stats["failures"] == 0
    assert stats["readings_rolled_up"] == 7
    assert stats["rollups_deleted"] == 1
    assert count_readings(aged, OTAA_EUI) == 1


def test_exports_include_rollups(aged: Store) -> None:
    run_retention(aged.sql, POLICY, now=NOW)
    client = ApiClient(create_app(aged, clock=Clock(NOW)), role="operator")
    pack = client.get("/api/v1/export/readings", params={"dev_eui": OTAA_EUI}).json()
    ten_days = NOW - 10 * DAY
    assert pack[:5] == [
        {"bn": f"urn:dev:mac:{OTAA_EUI}:", "bt": ten_days, "n": "fill:min", "u": "%", "v": 10},
        {"n": "fill:mean", "u": "%", "v": 20.0},
        {"n": "fill:max", "u": "%", "v": 30},
        {"n": "tilt", "vb": False},
        {"n": "count", "v": 3},
    ]
    assert {"n": "battery:mean", "u": "V", "v": 3.3, "t": 3600.0} in pack
    raw = [r for r in pack if r["n"] == "fill" and "v" in r]
    assert raw == [{"n": "fill", "u": "%", "v": 70, "t": 9 * DAY}]
    without = client.get(
        "/api/v1/export/readings", params={"dev_eui": OTAA_EUI, "rollups": False}
    ).json()
    assert [r["n"] for r in without] == ["fill", "rssi", "snr", "fcnt"]
    table = client.get(
        "/api/v1/export/readings", params={"dev_eui": OTAA_EUI, "format": "csv"}
    ).text.splitlines()
    assert f"{OTAA_EUI},2027-01-05T08:00:00Z,{ten_days},rollup,fill_pct,20.0,%,3,10,30,3600," in (
        table
    )


def test_cli_runs_retention_on_a_file(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite3"
    now = time.time()
    hour = math.floor((now - 10 * DAY) / HOUR) * HOUR
    with Store(db) as store:
        store.create_gateway(
            GW1, name="gw", sign_public_key=b"\x01" * 32, seal_public_key=b"\x02" * 32, created=0
        )
        seq = Seq()
        old_bin_hour(store, seq, hour, [10, 30, 20])
        put(store, seq, OTAA_EUI, now - 60, {"fill_pct": 70})
    answer = RUNNER.invoke(
        data_command, ["retention", "--db", str(db), "--raw-days", "7", "--rollup-days", "30"]
    )
    assert answer.exit_code == 0, answer.output
    assert "rolled up 3 readings of 1 devices into 1 buckets" in answer.stdout
    with Store(db) as store:
        assert count_readings(store, OTAA_EUI) == 1
        (row,) = rollups(store)
        assert (row["bucket_start"], row["count"]) == (hour, 3)
    bad = RUNNER.invoke(
        data_command, ["retention", "--db", str(db), "--raw-days", "30", "--rollup-days", "7"]
    )
    assert bad.exit_code == 2
    assert "rollup_days must be at least raw_days" in bad.stderr
