"""MQTT ingest: what the gateways publish, verified, de-duplicated and stored.

The ingest subscribes to every gateway's ``telemetry``, ``health`` and ``state`` topics
(``owlgate/v1/gw/+/...``). Telemetry and health arrive signed (COSE_Sign1, Ed25519): each is
verified against the public key the gateway registered, and a message that is unsigned,
forged, signed by another gateway's key, or names another gateway inside is rejected — counted
and logged, never stored. A batch the fleet has already stored (the same gateway and sequence
number, as after an edge re-publishes an entry whose PUBACK it missed) is counted as a
duplicate and stores nothing; the same frame heard by several gateways becomes one reading
with every gateway's reception (:meth:`owlgate.fleet.store.Store.record_batches`). The retained
``state`` topic (``online``, or ``offline`` from the gateway's Last Will) feeds the health
state.

The subscription is plain by default. With ``shared`` (``owlgate fleet serve
--shared-subscriptions``) and MQTT 5 it is shared (``$share/owlgate-ingest/...``, MQTT 5.0
section 4.8.2) so several fleet processes split the load; see
:attr:`owlgate.fleet.mqtt.MqttService.shared` for why that is not the default.

How a message travels (:class:`IngestService`):

1. **receive**: each message is registered, in arrival order, for its PUBACK.
2. **verify**: the messages waiting are taken together; :meth:`Ingest.admit` checks topic and
   gateway in this process, :func:`verify_all` checks the signatures and decodes in a worker
   process (``verify_workers``), turning readings into table rows on the way. A message
   refused here is counted and logged and never reaches the database.
3. **store**: what was verified is written in transactions of at most ``max_readings``
   readings (:meth:`Ingest.write`, in a worker thread) while the next messages are verified;
   messages that arrive meanwhile go into the next transaction. At low load a transaction
   holds one message, so latency stays one message's worth; under load transactions grow and
   the per-message cost of a commit shrinks.
4. **acknowledge**: the PUBACK of a message goes out only once its transaction committed, or
   once it was refused for good (a forged message must not come back forever), and always in
   the order the messages arrived (:class:`~owlgate.fleet.mqtt.PubackQueue`). A fleet that
   stops or crashes before that leaves the message with the broker, which sends it again on
   the next connection of the same persistent session (MQTT 3.1.1 section 4.4); the batch
   de-duplication makes the repeat harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Final, Literal

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from owlgate.codecs.errors import OwlgateError
from owlgate.codecs.health import Health, decode_health
from owlgate.codecs.node.telemetry import Batch, decode_batch
from owlgate.codecs.signed import verify

from .mqtt import DEFAULT_SESSION_EXPIRY_S, Delivery, MqttService, PubackQueue
from .store import (
    FleetError,
    IncomingBatch,
    NotFoundError,
    ReadingRow,
    Store,
    StoreResult,
    reading_rows,
)

log = logging.getLogger(__name__)

TOPIC_PREFIX = "owlgate/v1/gw/"
SHARE_GROUP = "owlgate-ingest"
KINDS = ("telemetry", "health", "state")
#: Readings one transaction takes at most. A few thousand amortise what every commit costs
#: whatever its size: the fsync, and the index pages it rewrites (one per device per index
#: on ``dev_eui``, see docs/fleet.md). More would hold the store's lock, which the API's
#: reads wait for, longer than the tenth of a second or so that this many take.
DEFAULT_MAX_READINGS: Final = 5000
#: Messages the worker takes in one go, to verify and then store in transactions of at most
#: ``max_readings`` readings each.
DEFAULT_MAX_MESSAGES: Final = 200
#: Worker processes that verify and decode while this process stores: one takes the
#: Python work of verifying off the GIL the writer needs; on a machine with cores to spare
#: more keep up with more gateways.
DEFAULT_VERIFY_WORKERS: Final = 1
#: MQTT 5 Receive Maximum the ingest asks for: how many messages the broker may have sent
#: before it sees a PUBACK. Acknowledging after the commit keeps every message of a
#: transaction unacknowledged while it is written; this many (of up to 100 readings) keeps
#: the next transaction's messages already arriving meanwhile.
RECEIVE_MAXIMUM: Final = 500
#: How often a verifying worker checks that the fleet process is still there.
PARENT_POLL_S: Final = 1.0
STORE_RETRY_INITIAL_S: Final = 0.2
STORE_RETRY_MAX_S: Final = 10.0

Kind = Literal["telemetry", "health", "state"]
_KINDS: Final[dict[str, Kind]] = {"telemetry": "telemetry", "health": "health", "state": "state"}


@dataclass(slots=True)
class IngestCounters:
    """What the ingest did since it started; ``rejected`` by reason. ``transactions`` counts
    the transactions committed, ``store_retries`` the ones the database failed and that were
    tried again. Verification and storing run in different worker threads: change the counts
    only through the methods, which hold a lock."""

    batches: int = 0
    readings_stored: int = 0
    duplicates_merged: int = 0
    batch_duplicates: int = 0
    health: int = 0
    states: int = 0
    reconnects: int = 0
    transactions: int = 0
    store_retries: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def committed(
        self, results: Sequence[StoreResult], *, health: int, states: int, rejected: Sequence[str]
    ) -> None:
        """One transaction committed: its batches, health and state messages, refusals."""
        with self._lock:
            self.transactions += 1
            for result in results:
                self.batches += 1
                self.batch_duplicates += int(result.batch_duplicate)
                self.readings_stored += result.stored
                self.duplicates_merged += result.duplicates_merged
            self.health += health
            self.states += states
            for reason in rejected:
                self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1

    def store_retry(self) -> None:
        with self._lock:
            self.store_retries += 1

    def as_dict(self) -> dict[str, object]:
        with self._lock:
            return {
                "batches": self.batches,
                "readings_stored": self.readings_stored,
                "duplicates_merged": self.duplicates_merged,
                "batch_duplicates": self.batch_duplicates,
                "health": self.health,
                "states": self.states,
                "reconnects": self.reconnects,
                "transactions": self.transactions,
                "store_retries": self.store_retries,
                "rejected": dict(self.rejected),
            }


class Rejected(OwlgateError):
    """A message the ingest refuses; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[Rejected], tuple[str, str]]:
        # Raised in the verifying worker process and re-raised here: pickle must rebuild it
        # from both fields, not from ``args`` alone.
        return Rejected, (self.reason, self.message)


@dataclass(frozen=True, slots=True)
class Verified:
    """A message that passed :meth:`Ingest.prepare`: what to store, and when it arrived."""

    topic: str
    gateway: str
    kind: Kind
    received_at: float
    #: Telemetry: the batch's sequence number and its readings as table rows
    #: (:func:`~owlgate.fleet.store.reading_rows`), made while verifying, so the transaction
    #: has only SQL left to do.
    seq: int | None = None
    rows: Sequence[ReadingRow] = field(default=(), repr=False)
    health: Health | None = field(default=None, repr=False)
    online: bool = False

    @property
    def readings(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True)
class Signed:
    """A telemetry or health message whose topic and gateway are known, with the gateway's
    registered Ed25519 key (raw): what :func:`verify_signed` needs, and nothing that cannot
    travel to a worker process."""

    topic: str
    gateway: str
    kind: Kind
    payload: bytes = field(repr=False)
    key: bytes = field(repr=False)
    received_at: float


#: Public keys a process has already loaded, by their raw bytes.
_PUBLIC_KEYS: dict[bytes, Ed25519PublicKey] = {}
_PUBLIC_KEYS_MAX: Final = 100_000


def verify_signed(message: Signed) -> Verified:
    """Verify the signature of ``message`` against its gateway's key and decode it; the
    telemetry's readings are turned into table rows as well. :class:`Rejected` (not counted:
    the caller counts) if refused. Needs neither the store nor the ingest's state, so it runs
    in a worker process as well as in this one."""
    key = _PUBLIC_KEYS.get(message.key)
    if key is None:
        if len(_PUBLIC_KEYS) >= _PUBLIC_KEYS_MAX:
            _PUBLIC_KEYS.clear()
        key = _PUBLIC_KEYS[message.key] = Ed25519PublicKey.from_public_bytes(message.key)
    gateway = message.gateway
    try:
        content = verify(message.payload, key).payload
    except OwlgateError as err:
        raise Rejected("signature", f"from gateway {gateway}: {err}") from err
    if message.kind == "health":
        return Verified(
            message.topic,
            gateway,
            "health",
            message.received_at,
            health=_health(gateway, content),
        )
    batch = _batch(gateway, content)
    try:
        rows = reading_rows(batch.readings)
    except FleetError as err:
        raise Rejected("store", f"telemetry from {gateway}: {err}") from err
    return Verified(
        message.topic, gateway, "telemetry", message.received_at, seq=batch.seq, rows=rows
    )


def _exit_with_parent(parent: int) -> None:
    """In a verifying worker process: exit as soon as the fleet process that started it is
    gone. A worker of ``concurrent.futures`` holds both ends of its task queue, so it never
    sees the queue close when its parent is killed (SIGKILL, OOM) and would otherwise live on
    as an orphan, one more after every crash."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="owlgate-parent-watch", daemon=True).start()


def verify_all(messages: Sequence[Signed]) -> list[Verified | Rejected]:
    """:func:`verify_signed` for each message, the refusals returned in their places: one
    round trip to a worker process for a whole group."""
    results: list[Verified | Rejected] = []
    for message in messages:
        try:
            results.append(verify_signed(message))
        except Rejected as err:
            results.append(err)
    return results


def _batch(gateway: str, content: bytes) -> Batch:
    try:
        batch = decode_batch(content)
    except OwlgateError as err:
        raise Rejected("malformed", f"telemetry from {gateway}: {err}") from err
    if batch.gateway_id.hex() != gateway:
        raise Rejected(
            "wrong_gateway",
            f"batch on {gateway}'s topic names gateway {batch.gateway_id.hex()}",
        )
    return batch


def _health(gateway: str, content: bytes) -> Health:
    try:
        health = decode_health(content)
    except OwlgateError as err:
        raise Rejected("malformed", f"health from {gateway}: {err}") from err
    if health.gateway_id.hex() != gateway:
        raise Rejected(
            "wrong_gateway",
            f"health on {gateway}'s topic names gateway {health.gateway_id.hex()}",
        )
    return health


def parse_topic(topic: str) -> tuple[str, Kind]:
    """``owlgate/v1/gw/{id}/{kind}`` -> (gateway id in lowercase hex, kind)."""
    if not topic.startswith(TOPIC_PREFIX):
        raise Rejected("topic", f"not an owlgate gateway topic: {topic!r}")
    parts = topic[len(TOPIC_PREFIX) :].split("/")
    if len(parts) != 2 or parts[1] not in KINDS:
        raise Rejected("topic", f"not a gateway telemetry, health or state topic: {topic!r}")
    gateway = parts[0].lower()
    if len(gateway) != 16 or any(char not in "0123456789abcdef" for char in gateway):
        raise Rejected("topic", f"gateway id in {topic!r} is not 16 hex digits")
    return gateway, _KINDS[parts[1]]


class Ingest:
    """Verifies gateway messages (:meth:`prepare`) and stores them, several per transaction
    (:meth:`write`), against ``store``; synchronous (see :class:`IngestService` for the MQTT
    side). :meth:`handle` does both for one message. ``clock`` gives the fleet's receive
    time. Counters: :attr:`counters` (:meth:`IngestCounters.as_dict`)."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.counters = IngestCounters()
        self._keys: dict[str, bytes] = {}

    def _key(self, gateway: str) -> bytes:
        key = self._keys.get(gateway)
        if key is None:
            try:
                key = self.store.gateway(gateway).sign_public_key
            except NotFoundError as err:
                raise Rejected("unknown_gateway", f"gateway {gateway} is not registered") from err
            self._keys[gateway] = key
        return key

    def refused(self, topic: str, err: Rejected) -> None:
        """Count and log a refusal."""
        self.counters.reject(err.reason)
        log.warning("rejected %s: %s", topic, err.message)

    def handle(self, topic: str, payload: bytes) -> None:
        """Verify and store one message in a transaction of its own; :class:`Rejected`
        (already counted and logged) if refused."""
        (refused,) = self.write([self.prepare(topic, payload)])
        if refused is not None:
            raise refused

    def admit(self, topic: str, payload: bytes) -> Verified | Signed:
        """What is checked in this process before the signature: the topic, a state's
        payload, and that the gateway is registered (its key is read from the store the
        first time). A state message comes back ready to store; telemetry and health come
        back :class:`Signed`, for :func:`verify_signed`. :class:`Rejected` (not counted)
        otherwise."""
        received_at = self.clock()
        gateway, kind = parse_topic(topic)
        if kind == "state":
            if payload not in (b"online", b"offline"):
                raise Rejected("state", f"state of {gateway} is neither online nor offline")
            return Verified(topic, gateway, kind, received_at, online=payload == b"online")
        return Signed(topic, gateway, kind, payload, self._key(gateway), received_at)

    def prepare(self, topic: str, payload: bytes) -> Verified:
        """:meth:`admit` and :func:`verify_signed` in this process: the message ready to
        store, or :class:`Rejected` (already counted and logged)."""
        try:
            admitted = self.admit(topic, payload)
            return admitted if isinstance(admitted, Verified) else verify_signed(admitted)
        except Rejected as err:
            self.refused(topic, err)
            raise

    def write(self, items: Sequence[Verified]) -> list[Rejected | None]:
        """Store ``items`` in one transaction; per item, None if stored (or a duplicate) or
        the :class:`Rejected` it got (counted and logged once the transaction committed).

        An item that cannot be stored is rolled back alone (a savepoint each) and refused
        for good, with reason ``store`` (``unknown_gateway`` for a gateway no longer
        registered). A fault of the database itself (``sqlite3.Error`` out of the
        transaction) stores nothing, counts nothing, and is raised: the caller tries again.
        """
        outcomes: list[Rejected | None] = [None] * len(items)
        telemetry = [(index, item) for index, item in enumerate(items) if item.seq is not None]
        stored: list[StoreResult] = []
        health = states = 0
        with self.store.transaction():
            results = self.store.record_batches(
                [
                    IncomingBatch(item.gateway, item.seq, (), item.received_at, rows=item.rows)
                    for _, item in telemetry
                    if item.seq is not None
                ]
            )
            for (index, item), result in zip(telemetry, results, strict=True):
                if isinstance(result, NotFoundError):
                    outcomes[index] = Rejected("unknown_gateway", f"{item.topic}: {result}")
                elif isinstance(result, FleetError):
                    outcomes[index] = Rejected("store", f"telemetry from {item.gateway}: {result}")
                else:
                    stored.append(result)
            # Health and state after the batches: each touches other columns of the gateway
            # only, so their order relative to telemetry does not matter; among themselves
            # they keep the order they arrived in (online, then the Will's offline).
            for index, item in enumerate(items):
                if item.seq is not None:
                    continue
                try:
                    # Each call is a savepoint of its own inside this transaction.
                    if item.health is not None:
                        self.store.record_health(
                            item.gateway, item.health, received_at=item.received_at
                        )
                        health += 1
                    else:
                        self.store.set_gateway_state(item.gateway, item.online, item.received_at)
                        states += 1
                except NotFoundError as err:
                    outcomes[index] = Rejected(
                        "unknown_gateway", f"gateway {item.gateway} is not registered ({err})"
                    )
                except FleetError as err:
                    outcomes[index] = Rejected("store", f"{item.kind} from {item.gateway}: {err}")
        refused = [
            (item, outcome) for item, outcome in zip(items, outcomes, strict=True) if outcome
        ]
        self.counters.committed(
            stored,
            health=health,
            states=states,
            rejected=[refusal.reason for _, refusal in refused],
        )
        for item, refusal in refused:
            log.warning("rejected %s: %s", item.topic, refusal.message)
        for result, (_, item) in zip(results, telemetry, strict=True):
            if isinstance(result, StoreResult) and result.batch_duplicate:
                log.info("batch %s of %s was already stored", item.seq, item.gateway)
        return outcomes


def subscriptions(shared: bool) -> list[str]:
    """The topic filters the ingest subscribes to."""
    filters = [f"{TOPIC_PREFIX}+/{kind}" for kind in KINDS]
    return [f"$share/{SHARE_GROUP}/{topic}" for topic in filters] if shared else filters


class _Waiting:
    """Received messages waiting for the worker, in arrival order."""

    def __init__(self) -> None:
        self._items: deque[tuple[Delivery, str, bytes]] = deque()
        self._ready = asyncio.Event()

    def put(self, delivery: Delivery, topic: str, payload: bytes) -> None:
        self._items.append((delivery, topic, payload))
        self._ready.set()

    async def take(self, most: int) -> list[tuple[Delivery, str, bytes]]:
        """Everything waiting, at most ``most`` messages (at least one: waits while there is
        nothing)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return [self._items.popleft() for _ in range(min(most, len(self._items)))]


def _transactions(
    items: Sequence[tuple[Delivery, Verified]], max_readings: int
) -> list[list[tuple[Delivery, Verified]]]:
    """``items`` cut, in order, into groups of at most ``max_readings`` readings (a health or
    state message counts as one; a single larger batch is a group of its own)."""
    groups: list[list[tuple[Delivery, Verified]]] = []
    size = 0
    for entry in items:
        weight = max(1, entry[1].readings)
        if not groups or size + weight > max_readings:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += weight
    return groups


class IngestService(MqttService):
    """The ingest on MQTT: subscribes, verifies, stores in batched transactions and
    acknowledges after the commit, reconnecting as :class:`~owlgate.fleet.mqtt.MqttService`
    does, under a persistent session.

    ``verify_workers`` processes verify signatures and decode (:func:`verify_all`) while
    this process writes the previous group to the database; 0 verifies in this process,
    taking turns with the writer (see :meth:`_turn`)."""

    name = "ingest"
    manual_ack = True
    receive_maximum = RECEIVE_MAXIMUM

    def __init__(
        self,
        ingest: Ingest,
        host: str,
        port: int,
        *,
        mqtt5: bool = True,
        instance: str | None = None,
        identifier: str | None = None,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
        max_readings: int = DEFAULT_MAX_READINGS,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        verify_workers: int = DEFAULT_VERIFY_WORKERS,
        rng: random.Random | None = None,
        shared: bool = False,
    ) -> None:
        super().__init__(
            host,
            port,
            mqtt5=mqtt5,
            instance=instance,
            identifier=identifier,
            session_expiry_s=session_expiry_s,
            rng=rng,
            shared=shared,
        )
        self.ingest = ingest
        self.max_readings = max_readings
        self.max_messages = max_messages
        self.verify_workers = verify_workers
        self._pool: ProcessPoolExecutor | None = None
        self._turns = asyncio.Lock()

    def topics(self, mqtt5: bool) -> list[tuple[str, int]]:
        return [(topic, 1) for topic in subscriptions(mqtt5 and self.shared)]

    def count_reconnect(self) -> None:
        self.ingest.counters.reconnect()

    def stats(self) -> dict[str, object]:
        """The ingest's counters now (``GET /api/v1/stats``)."""
        return self.ingest.counters.as_dict()

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)

    def _workers(self) -> ProcessPoolExecutor | None:
        if self._pool is None and self.verify_workers > 0:
            # spawn, not fork: this process runs threads (the event loop's helpers, uvicorn),
            # and a forked child would inherit their locks in whatever state they were.
            self._pool = ProcessPoolExecutor(
                self.verify_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
            # Start the workers now rather than with the first message.
            for _ in range(self.verify_workers):
                self._pool.submit(verify_all, [])
        return self._pool

    def _turn(self) -> AbstractAsyncContextManager[object]:
        """Held by verifying and by storing when both run in this process: both are mostly
        Python under the GIL, and a thread running Python while the other waits in SQLite
        takes the GIL from it after every statement step, for a whole switch interval
        (5 ms); overlapped that way a transaction took ten times as long as verifying and
        storing one after the other."""
        return self._turns if self.verify_workers == 0 else contextlib.nullcontext()

    async def serve(self, client: aiomqtt.Client) -> None:
        self._workers()
        acks = PubackQueue.for_client(client)
        waiting = _Waiting()
        # Not bounded: what can be waiting is bounded by what the broker may send before it
        # sees PUBACKs (Receive Maximum), and verifying never waits for the database, so a
        # refusal is logged (and its PUBACK ready) however long a transaction takes.
        verified: asyncio.Queue[list[tuple[Delivery, Verified | None]]] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._receive(client, acks, waiting), name="owlgate-ingest-rx"),
            asyncio.create_task(self._verify(waiting, verified), name="owlgate-ingest-verify"),
            asyncio.create_task(self._write(acks, verified), name="owlgate-ingest-write"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            # Whatever was not committed stays unacknowledged: the broker sends it again.
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # the end of the connection (MqttError), or a fault of a stage

    async def _receive(self, client: aiomqtt.Client, acks: PubackQueue, waiting: _Waiting) -> None:
        async for message in client.messages:
            delivery = acks.receive(message)
            topic = str(message.topic)
            # Typed bytes, but paho hands over whatever it decoded: checked, not trusted.
            payload: object = message.payload
            if not isinstance(payload, bytes | bytearray):
                self.ingest.counters.reject("malformed")
                log.warning("rejected %s: payload is not bytes", topic)
                acks.settle(delivery)
                continue
            waiting.put(delivery, topic, bytes(payload))

    async def _verify(
        self,
        waiting: _Waiting,
        verified: asyncio.Queue[list[tuple[Delivery, Verified | None]]],
    ) -> None:
        while True:
            group = await waiting.take(self.max_messages)
            async with self._turn():
                result = await asyncio.to_thread(self._verify_group, group)
            await verified.put(result)

    def _verify_group(
        self, group: Sequence[tuple[Delivery, str, bytes]]
    ) -> list[tuple[Delivery, Verified | None]]:
        """In a worker thread: admit each message here (the gateway's key may have to be
        read from the store), verify the signed ones in a worker process, count and log
        every refusal. None in place of a refused message."""
        admitted: list[Verified | Signed | None] = []
        for _, topic, payload in group:
            try:
                admitted.append(self.ingest.admit(topic, payload))
            except Rejected as err:
                self.ingest.refused(topic, err)
                admitted.append(None)
        signed = [item for item in admitted if isinstance(item, Signed)]
        outcomes = iter(self._verify_signed(signed))
        result: list[tuple[Delivery, Verified | None]] = []
        for (delivery, topic, _), item in zip(group, admitted, strict=True):
            if isinstance(item, Signed):
                outcome = next(outcomes)
                if isinstance(outcome, Rejected):
                    self.ingest.refused(topic, outcome)
                    item = None
                else:
                    item = outcome
            result.append((delivery, item))
        return result

    def _verify_signed(self, signed: list[Signed]) -> list[Verified | Rejected]:
        pool = self._pool
        if not signed or pool is None:
            return verify_all(signed)
        try:
            return pool.submit(verify_all, signed).result()
        except BrokenProcessPool as err:
            # A worker died (killed, out of memory): verify here this time, and start new
            # workers for the next group.
            log.error("the ingest's verifying worker failed (%s); starting a new one", err)
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            return verify_all(signed)

    async def _write(
        self,
        acks: PubackQueue,
        verified: asyncio.Queue[list[tuple[Delivery, Verified | None]]],
    ) -> None:
        while True:
            entries = await verified.get()
            while not verified.empty() and len(entries) < self.max_messages:
                entries += verified.get_nowait()
            accepted: list[tuple[Delivery, Verified]] = []
            for delivery, item in entries:
                if item is None:
                    acks.settle(delivery)  # refused for good: acknowledged, in its turn
                else:
                    accepted.append((delivery, item))
            for transaction in _transactions(accepted, self.max_readings):
                await self._store([item for _, item in transaction])
                for delivery, _ in transaction:
                    acks.settle(delivery)

    async def _store(self, items: list[Verified]) -> None:
        delay = STORE_RETRY_INITIAL_S
        while True:
            try:
                async with self._turn():
                    await asyncio.to_thread(self.ingest.write, items)
                return
            except sqlite3.Error as err:
                # Nothing of the transaction was stored, so nothing is acknowledged: the same
                # messages are tried again; later ones wait behind them (their PUBACKs could
                # not overtake these anyway, MQTT 3.1.1 section 4.6).
                self.ingest.counters.store_retry()
                log.error(
                    "storing %d messages failed (%s); trying again in %.1f s",
                    len(items),
                    err,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)


def ingest_service(
    host: str,
    port: int,
    *,
    mqtt5: bool = True,
    instance: str | None = None,
    verify_workers: int = DEFAULT_VERIFY_WORKERS,
    shared: bool = False,
) -> Callable[[Store], AbstractAsyncContextManager[IngestService]]:
    """A fleet service (see :func:`owlgate.fleet.cli.build_server`) running the ingest under
    the persistent session of fleet instance ``instance`` (default: the host name), through
    shared subscriptions when ``shared``."""

    def service(store: Store) -> IngestService:
        return IngestService(
            Ingest(store),
            host,
            port,
            mqtt5=mqtt5,
            instance=instance,
            verify_workers=verify_workers,
            shared=shared,
        )

    return service
