"""Two ingest workers against one PostgreSQL database and one Mosquitto broker, sharing the
gateways' messages through MQTT 5 shared subscriptions (``$share/owlgate-ingest/...``), as
two ``owlgate fleet serve --shared-subscriptions --db postgresql://...`` processes do.

Several gateways publish many batches at once, pairs of gateways hearing some of the same
frames, so the two copies of a frame often reach different workers at the same moment: each
frame must be one reading (with both gateways' receptions), each batch stored once, none
lost, and both workers must have stored some.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch
from owlgate.codecs.signed import sign
from owlgate.fleet.ingest import IngestService, ingest_service
from owlgate.fleet.store import Store
from owlgate.hil.processes import MosquittoProcess
from tests.fleet.conftest import raw_public

pytest_plugins = ["tests.brokers"]

#: Gateways in pairs: the second of a pair hears every other frame the first hears.
GATEWAYS = [f"b827ebfffe0010{n:02x}" for n in range(4)]
BATCHES = 40
READINGS = 10
DEVICES_PER_GATEWAY = 5
STORED_TIMEOUT_S = 60.0


def _device(gateway_index: int, k: int) -> bytes:
    return bytes.fromhex(f"70b3d57ed0{gateway_index:02x}{k % DEVICES_PER_GATEWAY:04x}")


def _traffic(now: int) -> dict[str, list[Batch]]:
    """Per gateway its batches. Gateway 2p sends frames (seq, k) of its own devices; gateway
    2p+1 hears frames (seq, k) with k even from 2p's devices (the same frames) and sends
    frames of its own devices for k odd."""
    batches: dict[str, list[Batch]] = {gid: [] for gid in GATEWAYS}
    for index, gid in enumerate(GATEWAYS):
        for seq in range(BATCHES):
            readings = []
            for k in range(READINGS):
                fcnt = seq * READINGS + k
                owner = index - 1 if index % 2 == 1 and k % 2 == 0 else index
                readings.append(
                    Reading(
                        _device(owner, k),
                        now - 120,
                        {"occupied": k % 3 == 0},
                        rssi_dbm=-60 - index,
                        snr_db=5.0,
                        fcnt=fcnt,
                    )
                )
            batches[gid].append(Batch(bytes.fromhex(gid), seq, now - 60, readings))
    return batches


async def _publish(
    broker: MosquittoProcess, gid: str, key: Ed25519PrivateKey, batches: list[Batch]
) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"gw-{gid}") as client:
        for batch in batches:
            await client.publish(
                f"owlgate/v1/gw/{gid}/telemetry", sign(encode_batch(batch), key), qos=1
            )


def _count(store: Store, table: str) -> int:
    return int(store.sql.scalar(f"SELECT count(*) FROM {table}"))


async def _until_stored(store: Store, readings: int, batches: int) -> None:
    deadline = time.monotonic() + STORED_TIMEOUT_S
    while _count(store, "batches") < batches or _count(store, "readings") < readings:
        assert time.monotonic() < deadline, (
            f"{_count(store, 'batches')} of {batches} batches, "
            f"{_count(store, 'readings')} of {readings} readings stored"
        )
        await asyncio.sleep(0.05)


def test_two_workers_share_the_load_without_duplicates_or_losses(
    postgres_url: str, mosquitto: MosquittoProcess
) -> None:
    keys = {gid: Ed25519PrivateKey.generate() for gid in GATEWAYS}
    now = int(time.time())
    traffic = _traffic(now)
    expected_readings = len(GATEWAYS) // 2 * BATCHES * (READINGS + READINGS // 2)
    expected_batches = len(GATEWAYS) * BATCHES
    stores = [Store(postgres_url), Store(postgres_url)]
    try:
        for gid in GATEWAYS:
            stores[0].create_gateway(
                gid,
                name=gid,
                sign_public_key=raw_public(keys[gid]),
                seal_public_key=raw_public(X25519PrivateKey.generate()),
                created=now - 3600,
            )

        async def scenario() -> list[IngestService]:
            async with AsyncExitStack() as stack:
                workers = [
                    await stack.enter_async_context(
                        ingest_service(
                            mosquitto.host,
                            mosquitto.port,
                            instance=f"worker-{name}",
                            verify_workers=0,
                            shared=True,
                        )(store)
                    )
                    for name, store in zip("ab", stores, strict=True)
                ]
                services = [worker for worker in workers if isinstance(worker, IngestService)]
                assert len(services) == 2
                assert all(s.subscribed.is_set() for s in services)
                await asyncio.gather(
                    *(_publish(mosquitto, gid, keys[gid], traffic[gid]) for gid in GATEWAYS)
                )
                await _until_stored(stores[0], expected_readings, expected_batches)
                return services

        services = asyncio.run(scenario())
        db = stores[0].sql
        assert _count(stores[0], "batches") == expected_batches
        assert _count(stores[0], "readings") == expected_readings
        assert (
            db.query_tuples(
                "SELECT dev_eui, fcnt FROM readings GROUP BY dev_eui, fcnt HAVING count(*) > 1"
            )
            == []
        )
        # Every gateway's hearing of every frame is kept: one reception per reading sent.
        assert _count(stores[0], "receptions") == expected_batches * READINGS
        shared_frames = db.scalar(
            "SELECT count(*) FROM (SELECT reading_id FROM receptions GROUP BY reading_id "
            "HAVING count(*) = 2) AS heard_twice"
        )
        assert shared_frames == len(GATEWAYS) // 2 * BATCHES * READINGS // 2
        counters = [service.ingest.counters for service in services]
        assert all(c.batches > 0 for c in counters), [c.as_dict() for c in counters]
        assert sum(c.batches for c in counters) == expected_batches
        assert sum(c.readings_stored for c in counters) == expected_readings
        assert sum(c.duplicates_merged for c in counters) == shared_frames
        assert all(c.rejected == {} for c in counters), [c.rejected for c in counters]
    finally:
        for store in stores:
            store.close()
