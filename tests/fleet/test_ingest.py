"""The fleet's MQTT ingest: signed batches stored, forged and replayed ones refused and counted,
the same frame from two gateways merged; over the embedded broker and over Mosquitto, and
through ``owlgate fleet serve`` as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiomqtt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from owlgate.codecs.health import Health, encode_health
from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch
from owlgate.codecs.signed import sign
from owlgate.fleet.ingest import (
    Ingest,
    IngestService,
    Rejected,
    Verified,
    parse_topic,
    subscriptions,
)
from owlgate.fleet.sql import DatabaseFault
from owlgate.fleet.store import FleetError, IncomingBatch, Store, StoreResult
from tests.conftest import REPO
from tests.fleet.conftest import ABP_EUI, GW1, GW2, T0, raw_public
from tests.mqtt_servers import BrokerServer

pytest_plugins = ["tests.brokers"]

DEV = bytes.fromhex(ABP_EUI)


def reading(fcnt: int, rssi: int = -100, occupied: bool = True) -> Reading:
    values: dict[str, object] = {"occupied": occupied, "battery_mv": 3500, "temperature_c": 20.5}
    return Reading(DEV, int(T0) + fcnt, values, rssi_dbm=rssi, snr_db=5.0, fcnt=fcnt)


def signed_batch(key: Ed25519PrivateKey, gateway: str, seq: int, readings: list[Reading]) -> bytes:
    batch = Batch(bytes.fromhex(gateway), seq, int(T0), readings)
    return sign(encode_batch(batch), key)


def topic(gateway: str, kind: str) -> str:
    return f"owlgate/v1/gw/{gateway}/{kind}"


# --- the handler, without a broker --------------------------------------------------------------


def test_a_signed_batch_is_stored(fleet: Store, keys: dict[str, Ed25519PrivateKey]) -> None:
    ingest = Ingest(fleet, clock=lambda: T0 + 60)
    ingest.handle(topic(GW1, "telemetry"), signed_batch(keys[GW1], GW1, 1, [reading(1)]))
    stored = fleet.readings(ABP_EUI).items
    assert [item.fcnt for item in stored] == [1]
    assert ingest.counters.readings_stored == 1
    assert fleet.gateway(GW1).facts.last_seen == T0 + 60


def test_a_replayed_batch_stores_nothing_twice(
    fleet: Store, keys: dict[str, Ed25519PrivateKey]
) -> None:
    ingest = Ingest(fleet, clock=lambda: T0)
    message = signed_batch(keys[GW1], GW1, 7, [reading(1), reading(2)])
    ingest.handle(topic(GW1, "telemetry"), message)
    ingest.handle(topic(GW1, "telemetry"), message)
    assert len(fleet.readings(ABP_EUI).items) == 2
    assert ingest.counters.batch_duplicates == 1
    assert ingest.counters.readings_stored == 2


def test_the_same_frame_from_two_gateways_is_one_reading(
    fleet: Store, keys: dict[str, Ed25519PrivateKey]
) -> None:
    ingest = Ingest(fleet, clock=lambda: T0)
    ingest.handle(topic(GW1, "telemetry"), signed_batch(keys[GW1], GW1, 1, [reading(5, -90)]))
    ingest.handle(topic(GW2, "telemetry"), signed_batch(keys[GW2], GW2, 1, [reading(5, -120)]))
    (stored,) = fleet.readings(ABP_EUI).items
    assert sorted((r.gateway_id, r.rssi_dbm) for r in stored.receptions) == [
        (GW1, -90),
        (GW2, -120),
    ]
    assert ingest.counters.duplicates_merged == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unsigned", "signature"),
        ("other gateway's key", "signature"),
        ("names another gateway", "wrong_gateway"),
        ("unknown gateway", "unknown_gateway"),
        ("tampered", "signature"),
        ("not a batch", "malformed"),
        ("bad topic", "topic"),
    ],
)
def test_bad_messages_are_rejected_counted_and_not_stored(
    fleet: Store, keys: dict[str, Ed25519PrivateKey], case: str, reason: str
) -> None:
    good = [reading(1)]
    where = topic(GW1, "telemetry")
    if case == "unsigned":
        message = encode_batch(Batch(bytes.fromhex(GW1), 1, int(T0), good))
    elif case == "other gateway's key":
        message = signed_batch(keys[GW2], GW1, 1, good)
    elif case == "names another gateway":
        message = signed_batch(keys[GW1], GW2, 1, good)
    elif case == "unknown gateway":
        where = topic("b827ebfffe0000ff", "telemetry")
        message = signed_batch(keys[GW1], "b827ebfffe0000ff", 1, good)
    elif case == "tampered":
        altered = bytearray(signed_batch(keys[GW1], GW1, 1, good))
        altered[-70] ^= 0x01
        message = bytes(altered)
    elif case == "not a batch":
        message = sign(b"\x01\x02", keys[GW1])
    else:
        where = "owlgate/v1/gw/zz/telemetry"
        message = signed_batch(keys[GW1], GW1, 1, good)
    ingest = Ingest(fleet, clock=lambda: T0)
    with pytest.raises(Rejected) as caught:
        ingest.handle(where, message)
    assert caught.value.reason == reason
    assert ingest.counters.rejected == {reason: 1}
    assert fleet.readings(ABP_EUI).items == []
    # The good data around it still goes in.
    ingest.handle(topic(GW1, "telemetry"), signed_batch(keys[GW1], GW1, 2, [reading(9)]))
    assert [item.fcnt for item in fleet.readings(ABP_EUI).items] == [9]


def test_health_and_state_update_the_gateway(
    fleet: Store, keys: dict[str, Ed25519PrivateKey]
) -> None:
    ingest = Ingest(fleet, clock=lambda: T0 + 5)
    health = Health(
        gateway_id=bytes.fromhex(GW1),
        seq=1,
        time_s=int(T0),
        uptime_s=100,
        agent_uptime_s=50,
        agent_version="0.1.0",
        config_hash=bytes(32),
        outbox_depth=3,
        outbox_oldest_age_s=12,
    )
    ingest.handle(topic(GW1, "health"), sign(encode_health(health), keys[GW1]))
    ingest.handle(topic(GW1, "state"), b"offline")
    gateway = fleet.gateway(GW1)
    assert gateway.last_health is not None
    assert ingest.counters.health == 1
    assert ingest.counters.states == 1
    with pytest.raises(Rejected):
        ingest.handle(topic(GW1, "state"), b"maybe")


def test_one_transaction_keeps_each_message_apart(
    fleet: Store, keys: dict[str, Ed25519PrivateKey]
) -> None:
    """Several messages in one transaction: one that the store refuses is refused alone
    (reason ``store``), the same frame from two gateways is merged, a state goes in beside
    them, and everything is counted once, after the commit."""
    ingest = Ingest(fleet, clock=lambda: T0 + 1)
    first = ingest.prepare(topic(GW1, "telemetry"), signed_batch(keys[GW1], GW1, 1, [reading(1)]))
    broken = Verified(
        topic(GW1, "telemetry"),
        GW1,
        "telemetry",
        T0,
        seq=2,
        rows=[(ABP_EUI, None, 2, "{}", -90, 1.0, None)],  # type: ignore[list-item]
    )
    heard_twice = ingest.prepare(
        topic(GW2, "telemetry"), signed_batch(keys[GW2], GW2, 1, [reading(1, rssi=-120)])
    )
    online = ingest.prepare(topic(GW2, "state"), b"online")
    outcomes = ingest.write([first, broken, heard_twice, online])
    assert [None if o is None else o.reason for o in outcomes] == [None, "store", None, None]
    (stored,) = fleet.readings(ABP_EUI).items
    assert sorted(r.gateway_id for r in stored.receptions) == [GW1, GW2]
    assert fleet.gateway(GW2).facts.state_online is True
    counters = ingest.counters.as_dict()
    assert {k: counters[k] for k in ("batches", "readings_stored", "duplicates_merged")} == {
        "batches": 2,
        "readings_stored": 1,
        "duplicates_merged": 1,
    }
    assert (counters["states"], counters["transactions"]) == (1, 1)
    assert counters["rejected"] == {"store": 1}


class _FailingOnce(Store):
    """A store whose next batch write fails as a full disk or a lock held too long would."""

    fail = True

    def record_batches(self, batches: Sequence[IncomingBatch]) -> list[StoreResult | FleetError]:
        if self.fail:
            self.fail = False
            raise DatabaseFault("database or disk is full")
        return super().record_batches(batches)


def test_a_database_fault_stores_and_counts_nothing(keys: dict[str, Ed25519PrivateKey]) -> None:
    with _FailingOnce(":memory:") as store:
        store.create_gateway(
            GW1,
            name="gw",
            sign_public_key=raw_public(keys[GW1]),
            seal_public_key=raw_public(X25519PrivateKey.generate()),
            created=T0,
        )
        ingest = Ingest(store, clock=lambda: T0)
        item = ingest.prepare(
            topic(GW1, "telemetry"), signed_batch(keys[GW1], GW1, 1, [reading(1)])
        )
        state = ingest.prepare(topic(GW1, "state"), b"offline")
        with pytest.raises(DatabaseFault):
            ingest.write([item, state])
        assert store.readings(ABP_EUI).items == []
        assert store.gateway(GW1).facts.state_online is None
        assert ingest.counters.as_dict()["transactions"] == 0
        assert ingest.counters.batches == ingest.counters.states == 0
        # Tried again, as the service does, it is all stored, and counted once.
        assert ingest.write([item, state]) == [None, None]
        assert ingest.counters.batches == ingest.counters.states == 1


def test_subscriptions_are_plain_unless_shared_is_asked_for(fleet: Store) -> None:
    # Plain by default, MQTT 5 or not: Mosquitto 2.0 restores plain subscriptions of a
    # persistent session after its own restart, and not shared ones (docs/fleet.md).
    plain = IngestService(Ingest(fleet), "127.0.0.1", 1883)
    assert plain.topics(mqtt5=True) == [(topic, 1) for topic in subscriptions(False)]
    shared = IngestService(Ingest(fleet), "127.0.0.1", 1883, shared=True)
    assert shared.topics(mqtt5=True) == [(topic, 1) for topic in subscriptions(True)]
    assert shared.topics(mqtt5=False) == [(topic, 1) for topic in subscriptions(False)]


def test_a_refusal_survives_the_trip_from_a_worker_process() -> None:
    refusal = pickle.loads(pickle.dumps(Rejected("signature", "forged")))
    assert (refusal.reason, refusal.message) == ("signature", "forged")


def test_topics() -> None:
    assert parse_topic("owlgate/v1/gw/B827EBFFFE000001/health") == (GW1, "health")
    assert subscriptions(True)[0] == "$share/owlgate-ingest/owlgate/v1/gw/+/telemetry"
    assert subscriptions(False) == [
        "owlgate/v1/gw/+/telemetry",
        "owlgate/v1/gw/+/health",
        "owlgate/v1/gw/+/state",
    ]


# --- over a real broker -------------------------------------------------------------------------


async def _publish(server: BrokerServer, messages: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client(server.host, server.port, identifier="gw-test") as client:
        for where, payload in messages:
            await client.publish(where, payload, qos=1)


async def _stored(fleet: Store, expected: int, service: IngestService) -> None:
    deadline = time.monotonic() + 15
    while len(fleet.readings(ABP_EUI, limit=1000).items) < expected:
        assert time.monotonic() < deadline, service.ingest.counters.as_dict()
        await asyncio.sleep(0.02)
    # Give a stray extra message the chance to arrive before counting.
    await asyncio.sleep(0.1)


async def _publish_and_wait(
    server: BrokerServer, fleet: Store, messages: list[tuple[str, bytes]], expected: int
) -> IngestService:
    service = IngestService(Ingest(fleet, clock=lambda: T0), server.host, server.port)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.subscribed.wait(), 10)
        await _publish(server, messages)
        await _stored(fleet, expected, service)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return service


def test_ingest_over_the_broker(
    broker: BrokerServer, fleet: Store, keys: dict[str, Ed25519PrivateKey]
) -> None:
    batches = [
        (topic(GW1, "telemetry"), signed_batch(keys[GW1], GW1, seq, [reading(seq)]))
        for seq in range(1, 21)
    ]
    forged = (topic(GW1, "telemetry"), signed_batch(keys[GW2], GW1, 99, [reading(99)]))
    messages = [*batches[:10], forged, batches[3], *batches[10:]]
    service = asyncio.run(_publish_and_wait(broker, fleet, messages, 20))
    assert [item.fcnt for item in fleet.readings(ABP_EUI, limit=1000).items] == list(range(1, 21))
    counters = service.ingest.counters
    assert counters.rejected == {"signature": 1}
    assert counters.batch_duplicates == 1
    assert counters.readings_stored == 20


async def _away_and_back(
    server: BrokerServer, fleet: Store, messages: list[tuple[str, bytes]]
) -> tuple[IngestService, IngestService]:
    """The ingest subscribes and leaves (a clean disconnect); ``messages`` are published
    while it is away; an ingest of the same fleet instance comes back."""

    def service() -> IngestService:
        # verify_workers=0: the in-process path; the worker processes are exercised by the
        # owlgate fleet serve tests.
        return IngestService(
            Ingest(fleet, clock=lambda: T0),
            server.host,
            server.port,
            instance="away",
            verify_workers=0,
        )

    away = service()
    task = asyncio.create_task(away.run())
    await asyncio.wait_for(away.subscribed.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await _publish(server, messages)
    back = service()
    task = asyncio.create_task(back.run())
    try:
        await _stored(fleet, len(messages), back)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return away, back


def test_telemetry_sent_while_the_ingest_is_away_is_stored_when_it_is_back(
    broker: BrokerServer, fleet: Store, keys: dict[str, Ed25519PrivateKey]
) -> None:
    """The persistent session: the broker queues what arrives meanwhile, for the ingest's
    plain subscription (MQTT 5 on Mosquitto, MQTT 3.1.1 on amqtt)."""
    messages = [
        (topic(GW1, "telemetry"), signed_batch(keys[GW1], GW1, seq, [reading(seq)]))
        for seq in range(1, 11)
    ]
    away, back = asyncio.run(_away_and_back(broker, fleet, messages))
    assert away.identifier == back.identifier == "owlgate-fleet-away-ingest"
    assert [item.fcnt for item in fleet.readings(ABP_EUI, limit=1000).items] == list(range(1, 11))
    assert back.ingest.counters.readings_stored == 10
    assert back.ingest.counters.batch_duplicates == 0


# --- owlgate fleet serve, as an operator runs it ------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """``owlgate fleet seed`` then ``owlgate fleet serve`` (embedded broker) in a subprocess;
    yields the API URL, the broker URL and the keys folder (the admin token ``seed`` wrote is
    in ``admin-token`` beside it)."""
    db = tmp_path / "fleet.sqlite3"
    seed = [sys.executable, "-m", "owlgate.codecs.cli", "fleet", "seed", "--db", str(db)]
    seed += ["--gateways", "1", "--nodes", "2", "--keys-dir", str(tmp_path / "keys")]
    done = subprocess.run(seed, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    serve = [sys.executable, "-m", "owlgate.codecs.cli", "fleet", "serve", "--db", str(db)]
    serve += ["--http-port", "0"]
    serve += ["--signing-key", str(tmp_path / "keys" / "fleet-signing-ed25519.pem")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env
    )
    try:
        assert process.stdout is not None
        broker_url = api_url = ""
        deadline = time.monotonic() + 30
        while not (broker_url and api_url):
            assert time.monotonic() < deadline, "fleet serve did not start"
            line = process.stdout.readline()
            assert line, "fleet serve exited"
            if line.startswith("MQTT broker: "):
                broker_url = line.split()[2]
            if "Uvicorn running on " in line:
                api_url = line.split("Uvicorn running on ")[1].split()[0]
        yield api_url, broker_url, tmp_path / "keys"
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def test_fleet_serve_ingests_from_its_embedded_broker(served: tuple[str, str, Path]) -> None:
    api, broker_url, keys_dir = served
    auth = {"Authorization": f"Bearer {(keys_dir.parent / 'admin-token').read_text().strip()}"}
    manifest = json.loads((keys_dir.parent / "emulator-secrets.json").read_text())
    gateway = manifest["gateways"][0]["id"]
    dev_eui = manifest["devices"][0]["dev_eui"]
    key = load_pem_private_key((keys_dir / gateway / "identity-ed25519.pem").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    row = Reading(bytes.fromhex(dev_eui), int(time.time()), {"occupied": False}, -99, 2.5, fcnt=3)
    payload = sign(encode_batch(Batch(bytes.fromhex(gateway), 1, row.time_s, [row])), key)
    host, port = broker_url.removeprefix("mqtt://").split(":")

    async def publish() -> None:
        async with aiomqtt.Client(host, int(port), identifier="gw") as client:
            await client.publish(topic(gateway, "state"), b"online", qos=1, retain=True)
            await client.publish(topic(gateway, "telemetry"), payload, qos=1)

    asyncio.run(publish())
    deadline = time.monotonic() + 15
    while True:
        items = httpx.get(f"{api}/api/v1/nodes/{dev_eui}/readings", headers=auth).json()["items"]
        if items or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [item["fcnt"] for item in items] == [3]
    gateways = httpx.get(f"{api}/api/v1/gateways", headers=auth).json()["items"]
    assert gateways[0]["id"] == gateway
    assert gateways[0]["health"]["state"] == "online"
