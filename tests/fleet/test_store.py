"""The fleet store: migrations, registry, secrets kept apart, batches and de-duplication."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from owlgate.codecs.health import Health, RadioCounters
from owlgate.codecs.node.cbor import Tag
from owlgate.codecs.node.telemetry import Reading
from owlgate.codecs.payloads import PROFILES
from owlgate.fleet import schema
from owlgate.fleet.store import (
    ConflictError,
    IncomingBatch,
    InvalidError,
    NotFoundError,
    Store,
    StoreResult,
)
from owlgate.fleet.vault import KeyVault, VaultRequiredError
from tests.fleet.conftest import (
    ABP_ADDR,
    ABP_EUI,
    APP_KEY,
    APP_S_KEY,
    GW1,
    GW2,
    NWK_S_KEY,
    OTAA_EUI,
    T0,
    StoreFactory,
)


def reading(dev_eui: str, fcnt: int | None, t: float, rssi: int = -80, **values: object) -> Reading:
    return Reading(
        bytes.fromhex(dev_eui), int(t), dict(values), rssi_dbm=rssi, snr_db=7.25, fcnt=fcnt
    )


def test_migrations_are_recorded_and_run_once(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    every = [name for name, _ in schema.migrations()]
    with Store(path) as first:
        assert first.applied_migrations() == every
    with Store(path) as again:
        assert again.applied_migrations() == every
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        count = conn.execute("SELECT count(*) FROM migrations").fetchone()[0]
        assert count == len(every)
    finally:
        conn.close()


def test_a_store_opened_again_finds_what_was_stored(
    store_factory: StoreFactory, vault: KeyVault
) -> None:
    first = store_factory(vault=vault)
    first.create_device(
        ABP_EUI,
        profile_id="parking-v1",
        activation="abp",
        created=T0,
        dev_addr=ABP_ADDR,
        nwk_s_key=NWK_S_KEY,
        app_s_key=APP_S_KEY,
    )
    first.close()
    again = store_factory(vault=vault)
    assert again.applied_migrations() == [name for name, _ in schema.migrations()]
    assert again.device_keys(ABP_EUI).app_s_key == APP_S_KEY
    # Without the vault the store opens, and refuses to read the key.
    without = store_factory()
    assert without.device(ABP_EUI).dev_addr == ABP_ADDR
    with pytest.raises(VaultRequiredError):
        without.device_keys(ABP_EUI)


def test_profiles_come_from_the_codec_registry(store: Store) -> None:
    assert [p.id for p in store.profiles()] == sorted(PROFILES)
    assert store.profiles()[0].name == PROFILES[sorted(PROFILES)[0]].name


def test_registry_round_trip_and_errors(registry: Store) -> None:
    gateway = registry.gateway(GW1.upper())
    assert gateway.id == GW1
    assert gateway.facts.last_seen is None
    assert len(gateway.seal_public_key) == 32
    device = registry.device(bytes.fromhex(ABP_EUI))
    assert (device.activation, device.dev_addr, device.profile_id) == (
        "abp",
        ABP_ADDR,
        "parking-v1",
    )
    keys = registry.device_keys(OTAA_EUI)
    assert keys.app_key == APP_KEY
    assert keys.nwk_s_key is None
    assert APP_KEY.hex() not in repr(keys)
    with pytest.raises(NotFoundError, match="no gateway"):
        registry.gateway("00000000000000ff")
    with pytest.raises(NotFoundError, match="no device"):
        registry.device("00000000000000ff")
    with pytest.raises(ConflictError, match="already registered"):
        registry.create_device(
            ABP_EUI,
            profile_id="parking-v1",
            activation="otaa",
            created=T0,
            join_eui=OTAA_EUI,
            app_key=APP_KEY,
        )
    with pytest.raises(ConflictError, match="DevAddr 01234567"):
        registry.create_device(
            "00000000000000aa",
            profile_id="parking-v1",
            activation="abp",
            created=T0,
            dev_addr=ABP_ADDR,
            nwk_s_key=NWK_S_KEY,
            app_s_key=APP_S_KEY,
        )
    with pytest.raises(InvalidError, match="unknown device profile 'nope'"):
        registry.create_device(
            "00000000000000aa",
            profile_id="nope",
            activation="otaa",
            created=T0,
            join_eui=OTAA_EUI,
            app_key=APP_KEY,
        )
    with pytest.raises(InvalidError, match="needs a JoinEUI and an AppKey"):
        registry.create_device(
            "00000000000000aa", profile_id="parking-v1", activation="otaa", created=T0
        )
    with pytest.raises(InvalidError, match="AppKey must be 16 bytes"):
        registry.create_device(
            "00000000000000aa",
            profile_id="parking-v1",
            activation="otaa",
            created=T0,
            join_eui=OTAA_EUI,
            app_key=bytes(15),
        )
    with pytest.raises(InvalidError, match="16 hex digits"):
        registry.device("xyz")


def test_secrets_are_only_in_device_keys(registry: Store) -> None:
    db = registry.sql
    for table in db.table_names():
        if table == "device_keys":
            continue
        for row in db.query_tuples(f'SELECT * FROM "{table}"'):
            for value in row:
                assert value not in (APP_KEY, NWK_S_KEY, APP_S_KEY), table


def test_pagination_walks_every_row_once(store: Store) -> None:
    euis = [f"{n:016x}" for n in range(1, 8)]
    for eui in reversed(euis):
        store.create_device(
            eui,
            profile_id="parking-v1",
            activation="otaa",
            created=T0,
            join_eui=GW1,
            app_key=APP_KEY,
        )
    seen, after, pages = [], None, 0
    while True:
        page = store.devices(limit=3, after=after)
        seen += [d.dev_eui for d in page.items]
        pages += 1
        if page.next is None:
            break
        after = page.next
    assert seen == euis
    assert pages == 3
    with pytest.raises(InvalidError, match="limit"):
        store.devices(limit=0)


def test_batch_is_stored_once_and_duplicates_merge(registry: Store) -> None:
    first = [
        reading(ABP_EUI, 10, T0, battery_mv=3012, occupied=True),
        reading(OTAA_EUI, 3, T0 + 1, fill_pct=40),
    ]
    assert registry.record_batch(GW1, 1, first, T0 + 5) == StoreResult(2, 0, False)
    # The same batch again (an MQTT redelivery): nothing.
    assert registry.record_batch(GW1, 1, first, T0 + 6) == StoreResult(0, 0, True)
    # Another gateway heard the ABP frame, and one new frame.
    second = [
        reading(ABP_EUI, 10, T0, rssi=-101, battery_mv=3012, occupied=True),
        reading(ABP_EUI, 11, T0 + 60, occupied=False),
    ]
    assert registry.record_batch(GW2, 1, second, T0 + 70) == StoreResult(1, 1, False)
    page = registry.readings(ABP_EUI)
    assert [(r.fcnt, r.values) for r in page.items] == [
        (10, {"battery_mv": 3012, "occupied": True}),
        (11, {"occupied": False}),
    ]
    assert [(r.gateway_id, r.rssi_dbm, r.snr_db) for r in page.items[0].receptions] == [
        (GW1, -80, 7.25),
        (GW2, -101, 7.25),
    ]
    assert page.items[0].gateway_id == GW1
    assert page.next is None
    device = registry.device(ABP_EUI)
    assert (device.last_seen, device.last_fcnt, device.battery_mv) == (T0 + 60, 11, 3012)
    assert registry.gateway(GW2).facts.last_seen == T0 + 70


def test_same_fcnt_outside_the_window_is_a_new_frame(registry: Store) -> None:
    registry.record_batch(GW1, 1, [reading(ABP_EUI, 0, T0)], T0)
    result = registry.record_batch(GW1, 2, [reading(ABP_EUI, 0, T0 + 3600)], T0 + 3600)
    assert result == StoreResult(1, 0, False)
    # Wired readings carry no FCnt: never merged.
    result = registry.record_batch(
        GW1, 3, [reading(ABP_EUI, None, T0), reading(ABP_EUI, None, T0)], T0
    )
    assert result.stored == 2


def test_a_failing_batch_stores_nothing(registry: Store) -> None:
    bad = [reading(ABP_EUI, 1, T0), Reading(b"short", int(T0), {})]
    with pytest.raises(InvalidError):
        registry.record_batch(GW1, 9, bad, T0)
    assert registry.readings(ABP_EUI).items == []
    assert registry.record_batch(GW1, 9, bad[:1], T0) == StoreResult(1, 0, False)


def test_extension_values_that_json_lacks_are_kept(registry: Store) -> None:
    ext = {"raw": b"\x01\xff", "tagged": Tag(1, 5)}
    registry.record_batch(GW1, 1, [reading(ABP_EUI, 1, T0, ext=ext)], T0)
    values = registry.readings(ABP_EUI).items[0].values
    assert values == {"ext": {"raw": "01ff", "tagged": {"tag": 1, "value": 5}}}


def test_unknown_gateway_batch_is_refused(registry: Store) -> None:
    with pytest.raises(NotFoundError):
        registry.record_batch("00000000000000ff", 1, [reading(ABP_EUI, 1, T0)], T0)


def test_readings_since_limit_and_cursor(registry: Store) -> None:
    batch = [reading(ABP_EUI, n, T0 + 10 * n) for n in range(6)]
    registry.record_batch(GW1, 1, batch, T0 + 100)
    page = registry.readings(ABP_EUI, since=T0 + 20, limit=2)
    assert [r.fcnt for r in page.items] == [2, 3]
    assert page.next is not None
    rest = registry.readings(ABP_EUI, since=T0 + 20, limit=10, after=page.next)
    assert [r.fcnt for r in rest.items] == [4, 5]
    assert rest.next is None
    with pytest.raises(InvalidError, match="cursor"):
        registry.readings(ABP_EUI, after="nonsense")


def test_health_state_and_heard_facts(registry: Store) -> None:
    health = Health(
        gateway_id=bytes.fromhex(GW1),
        seq=4,
        time_s=int(T0),
        uptime_s=100,
        agent_uptime_s=90,
        agent_version="1.0",
        config_hash=bytes(8),
        interval_s=30,
        outbox_depth=12,
        outbox_oldest_age_s=40,
        radio=RadioCounters(received=100, crc_ok=90, crc_bad=10, forwarded=90, transmitted=2),
    )
    registry.record_health(GW1, health, received_at=T0 + 1)
    facts = registry.gateway(GW1).facts
    assert (facts.heartbeat_interval_s, facts.outbox_depth, facts.outbox_oldest_age_s) == (
        30,
        12,
        40,
    )
    assert (facts.radio_crc_ok, facts.radio_crc_bad, facts.last_seen) == (90, 10, T0 + 1)
    assert registry.gateway(GW1).last_health is not None
    registry.set_gateway_state(GW1, False, T0 + 2)
    facts = registry.gateway(GW1).facts
    assert (facts.state_online, facts.state_at, facts.last_seen) == (False, T0 + 2, T0 + 1)
    registry.set_gateway_state(GW1, True, T0 + 3)
    facts = registry.gateway(GW1).facts
    assert (facts.state_online, facts.last_seen) == (True, T0 + 3)
    # last_seen never moves backwards (a delayed message).
    registry.gateway_heard(GW1, T0 - 50)
    assert registry.gateway(GW1).facts.last_seen == T0 + 3
    with pytest.raises(NotFoundError):
        registry.gateway_heard("00000000000000ff", T0)
    with pytest.raises(NotFoundError):
        registry.set_gateway_state("00000000000000ff", True, T0)
    # Without a reception time, the message's own time counts.
    registry.record_health(GW2, health)
    assert registry.gateway(GW2).facts.last_seen == T0


# --- several batches in one transaction ----------------------------------------------------------


def test_batches_in_one_transaction_are_each_their_own(registry: Store) -> None:
    """A batch that cannot be stored is rolled back alone; the ones around it go in, the
    device is updated from those only, and a repeat inside the same transaction is a
    duplicate."""
    good = [reading(ABP_EUI, 1, T0, battery_mv=3100), reading(ABP_EUI, 2, T0 + 10)]
    bad = [reading(ABP_EUI, 3, T0 + 20, battery_mv=2000), Reading(b"short", int(T0), {})]
    later = [reading(ABP_EUI, 4, T0 + 30, battery_mv=3050)]
    results = registry.record_batches(
        [
            IncomingBatch(GW1, 1, good, T0 + 40),
            IncomingBatch(GW1, 2, bad, T0 + 41),
            IncomingBatch(GW1, 3, later, T0 + 42),
            IncomingBatch(GW1, 1, good, T0 + 43),
            IncomingBatch("00000000000000ff", 1, later, T0 + 44),
        ]
    )
    assert results[0] == StoreResult(2, 0, False)
    assert isinstance(results[1], InvalidError)
    assert results[2] == StoreResult(1, 0, False)
    assert results[3] == StoreResult(0, 0, True)
    assert isinstance(results[4], NotFoundError)
    assert [r.fcnt for r in registry.readings(ABP_EUI).items] == [1, 2, 4]
    device = registry.device(ABP_EUI)
    # FCnt 3 and its 2000 mV belonged to the refused batch.
    assert (device.last_seen, device.last_fcnt, device.battery_mv) == (T0 + 30, 4, 3050)
    # The repeat (T0 + 43) does not count as hearing the gateway; the refused batch neither.
    assert registry.gateway(GW1).facts.last_seen == T0 + 42
    # The refused batch left no mark either: its sequence number can still be stored.
    assert registry.record_batch(GW1, 2, bad[:1], T0 + 50) == StoreResult(1, 0, False)


def test_a_constraint_error_refuses_only_its_batch(registry: Store) -> None:
    """A row the database itself refuses (here a reading without a time, NOT NULL) is the
    batch's fault: rolled back to its savepoint, the next batch is stored."""
    broken = (ABP_EUI, None, 5, "{}", -90, 1.0, None)
    results = registry.record_batches(
        [
            IncomingBatch(GW1, 1, (), T0, rows=[broken]),  # type: ignore[list-item]
            IncomingBatch(GW1, 2, [reading(ABP_EUI, 6, T0)], T0),
        ]
    )
    assert isinstance(results[0], InvalidError)
    # SQLite says "NOT NULL constraint failed", PostgreSQL "violates not-null constraint".
    assert re.search("not.null", results[0].message, re.IGNORECASE)
    assert results[1] == StoreResult(1, 0, False)
    assert [r.fcnt for r in registry.readings(ABP_EUI).items] == [6]


def test_the_same_frame_twice_in_one_transaction_is_one_reading(registry: Store) -> None:
    """Two gateways' batches in the same transaction, and a frame repeated inside a batch:
    the first copy is stored, the others add only their gateway's reception."""
    frame = reading(ABP_EUI, 9, T0, rssi=-70, occupied=True)
    echo = reading(ABP_EUI, 9, T0 + 1, rssi=-71, occupied=True)
    other = reading(ABP_EUI, 9, T0 + 2, rssi=-110, occupied=True)
    results = registry.record_batches(
        [IncomingBatch(GW1, 1, [frame, echo], T0 + 5), IncomingBatch(GW2, 1, [other], T0 + 6)]
    )
    assert results == [StoreResult(1, 1, False), StoreResult(0, 1, False)]
    (stored,) = registry.readings(ABP_EUI).items
    # GW1 keeps its first reception of the frame.
    assert [(r.gateway_id, r.rssi_dbm) for r in stored.receptions] == [(GW1, -70), (GW2, -110)]


# --- a database made by the releases before the SQL layer ----------------------------------------

#: The schema as sqlite-utils wrote it (migrations 0001 to 0004), statement for statement.
_OLD_SCHEMA = """
CREATE TABLE "migrations" ("name" TEXT PRIMARY KEY, "applied_at" TEXT);
CREATE TABLE "gateways" ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL,
  "sign_public_key" BLOB NOT NULL, "seal_public_key" BLOB NOT NULL, "created" REAL NOT NULL,
  "last_seen" REAL, "state_online" INTEGER, "state_at" REAL, "heartbeat_interval_s" INTEGER,
  "last_health_at" REAL, "outbox_depth" INTEGER, "outbox_oldest_age_s" INTEGER,
  "radio_crc_ok" INTEGER, "radio_crc_bad" INTEGER, "last_health_json" TEXT);
CREATE TABLE "device_profiles" ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL,
  "description" TEXT);
CREATE TABLE "devices" ("dev_eui" TEXT PRIMARY KEY,
  "profile_id" TEXT NOT NULL REFERENCES "device_profiles"("id"), "activation" TEXT NOT NULL,
  "join_eui" TEXT, "dev_addr" INTEGER, "name" TEXT, "created" REAL NOT NULL,
  "last_seen" REAL, "last_fcnt" INTEGER, "battery_mv" INTEGER, "joined_at" REAL,
  "join_nonce" INTEGER);
CREATE INDEX "idx_devices_dev_addr" ON "devices" ("dev_addr");
CREATE TABLE "device_keys" ("dev_eui" TEXT PRIMARY KEY REFERENCES "devices"("dev_eui"),
  "app_key" BLOB, "nwk_s_key" BLOB, "app_s_key" BLOB);
CREATE TABLE "join_nonces" ("dev_eui" TEXT, "dev_nonce" INTEGER, "at" REAL,
  PRIMARY KEY ("dev_eui", "dev_nonce"));
CREATE TABLE "batches" ("gateway_id" TEXT, "seq" INTEGER, "received_at" REAL,
  PRIMARY KEY ("gateway_id", "seq"));
CREATE TABLE "readings" ("id" INTEGER PRIMARY KEY, "dev_eui" TEXT NOT NULL,
  "time_s" REAL NOT NULL, "fcnt" INTEGER, "values_json" TEXT NOT NULL,
  "gateway_id" TEXT NOT NULL, "received_at" REAL NOT NULL);
CREATE INDEX "idx_readings_dev_eui_time_s_id" ON "readings" ("dev_eui", "time_s", "id");
CREATE TABLE "receptions" ("reading_id" INTEGER REFERENCES "readings"("id"),
  "gateway_id" TEXT, "rssi_dbm" INTEGER, "snr_db" REAL, PRIMARY KEY ("reading_id", "gateway_id"));
INSERT INTO migrations VALUES ('0001_registry', '2026-01-01T00:00:00.000Z'),
  ('0002_ingest', '2026-01-01T00:00:00.000Z'),
  ('0003_readings_without_fcnt_index', '2026-01-01T00:00:00.000Z'),
  ('0004_wrapped_device_keys', '2026-01-01T00:00:00.000Z');
INSERT INTO device_profiles VALUES ('parking-v1', 'Parking', NULL);
INSERT INTO gateways (id, name, sign_public_key, seal_public_key, created)
  VALUES ('b827ebfffe000001', 'old gw', zeroblob(32), zeroblob(32), 1800000000.0);
INSERT INTO devices (dev_eui, profile_id, activation, created, last_fcnt, join_nonce)
  VALUES ('70b3d57ed0000001', 'parking-v1', 'abp', 1800000000.0, 7, 0);
INSERT INTO readings VALUES (41, '70b3d57ed0000001', 1800000000.0, 7, '{"occupied": true}',
  'b827ebfffe000001', 1800000005.0);
INSERT INTO receptions VALUES (41, 'b827ebfffe000001', -80, 7.25);
INSERT INTO batches VALUES ('b827ebfffe000001', 1, 1800000005.0);
"""


def test_a_database_of_the_old_layout_opens_unchanged(tmp_path: Path) -> None:
    """A file made by the releases that built the schema through sqlite-utils: its four
    migrations are not run again, its rows read as before, the feature modules' tables are
    added, and new readings continue its ids."""
    path = tmp_path / "old.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(_OLD_SCHEMA)
    raw.close()
    with Store(path) as store:
        assert store.applied_migrations() == [name for name, _ in schema.migrations()]
        (old,) = store.readings(ABP_EUI).items
        assert (old.id, old.fcnt, old.values, old.receptions[0].rssi_dbm) == (
            41,
            7,
            {"occupied": True},
            -80,
        )
        assert store.gateway(GW1).name == "old gw"
        assert store.record_batch(GW1, 1, [reading(ABP_EUI, 8, T0 + 60)], T0) == StoreResult(
            0, 0, True
        )
        assert store.record_batch(GW1, 2, [reading(ABP_EUI, 8, T0 + 60)], T0 + 61) == (
            StoreResult(1, 0, False)
        )
        assert [r.id for r in store.readings(ABP_EUI).items] == [41, 42]
        assert store.device(ABP_EUI).last_fcnt == 8
    raw = sqlite3.connect(path)
    try:
        recorded = [row[0] for row in raw.execute("SELECT name FROM migrations ORDER BY rowid")]
        # The old rows first, untouched; the feature modules' after them.
        assert recorded[:4] == [name for name, _ in schema.migrations()][:4]
        assert raw.execute("SELECT applied_at FROM migrations LIMIT 1").fetchone()[0] == (
            "2026-01-01T00:00:00.000Z"
        )
        columns = [row[1] for row in raw.execute("PRAGMA table_info(readings)")]
        assert columns == [
            "id",
            "dev_eui",
            "time_s",
            "fcnt",
            "values_json",
            "gateway_id",
            "received_at",
        ]
    finally:
        raw.close()


def test_a_new_database_has_the_old_layout(tmp_path: Path) -> None:
    """The migrations make, on SQLite, the tables and indexes sqlite-utils made: a database
    made now and one made before are the same to every query."""
    old = sqlite3.connect(":memory:")
    old.executescript(_OLD_SCHEMA)
    with Store(tmp_path / "new.sqlite3"):
        pass
    new = sqlite3.connect(tmp_path / "new.sqlite3")
    try:
        tables = ("gateways", "device_profiles", "devices", "device_keys", "join_nonces")
        for table in (*tables, "batches", "readings", "receptions"):
            query = f"PRAGMA table_info({table})"
            assert new.execute(query).fetchall() == old.execute(query).fetchall(), table
        for table in ("devices", "readings"):
            assert [row[1:3] for row in new.execute(f"PRAGMA index_list({table})")] == [
                row[1:3] for row in old.execute(f"PRAGMA index_list({table})")
            ], table
    finally:
        new.close()
        old.close()


def test_a_write_of_good_batches_with_repeats_and_an_unknown_gateway(registry: Store) -> None:
    """Nothing in it the database refuses (PostgreSQL stores such a write in one go): a
    repeat inside the write and of a stored batch, an unknown gateway, frames heard by both
    gateways and twice by one; the results and rows are those of one batch at a time."""
    registry.record_batch(GW1, 1, [reading(ABP_EUI, 1, T0, rssi=-60)], T0)
    results = registry.record_batches(
        [
            IncomingBatch(GW1, 1, [reading(ABP_EUI, 1, T0)], T0 + 1),
            IncomingBatch(
                GW2, 7, [reading(ABP_EUI, 1, T0, rssi=-99), reading(OTAA_EUI, 5, T0)], T0 + 2
            ),
            IncomingBatch("00000000000000ff", 1, [reading(ABP_EUI, 9, T0)], T0 + 3),
            IncomingBatch(
                GW1,
                2,
                [
                    reading(OTAA_EUI, 5, T0 + 1, rssi=-70),
                    reading(ABP_EUI, 2, T0 + 9, battery_mv=2990),
                ],
                T0 + 4,
            ),
            IncomingBatch(GW2, 7, [reading(ABP_EUI, 1, T0)], T0 + 5),
            IncomingBatch(GW2, 8, [reading(OTAA_EUI, 5, T0 + 2, rssi=-120)], T0 + 6),
        ]
    )
    assert results[0] == StoreResult(0, 0, True)
    assert results[1] == StoreResult(1, 1, False)
    assert isinstance(results[2], NotFoundError)
    assert results[3] == StoreResult(1, 1, False)
    assert results[4] == StoreResult(0, 0, True)
    assert results[5] == StoreResult(0, 1, False)
    (abp_1, abp_2) = registry.readings(ABP_EUI).items
    assert [(r.gateway_id, r.rssi_dbm) for r in abp_1.receptions] == [(GW1, -60), (GW2, -99)]
    assert abp_2.fcnt == 2
    (otaa,) = registry.readings(OTAA_EUI).items
    # GW2 heard it first (batch 7) and keeps that reception; GW1 heard it after.
    assert [(r.gateway_id, r.rssi_dbm) for r in otaa.receptions] == [(GW2, -80), (GW1, -70)]
    device = registry.device(ABP_EUI)
    assert (device.last_seen, device.last_fcnt, device.battery_mv) == (T0 + 9, 2, 2990)
    assert registry.gateway(GW1).facts.last_seen == T0 + 4
    assert registry.gateway(GW2).facts.last_seen == T0 + 6
