"""MQTT ingest: what the gateways publish, verified, de-duplicated and stored.

The ingest subscribes to every gateway's ``telemetry``, ``health`` and ``state`` topics
(``owlgate/v1/gw/+/...``). Telemetry and health arrive signed (COSE_Sign1, Ed25519): each is
verified against the public key the gateway registered, and a message that is unsigned,
forged, signed by another gateway's key, or names another gateway inside is rejected — counted
and logged, never stored. A batch the fleet has already stored (the same gateway and sequence
number, as after an edge re-publishes an entry whose PUBACK it missed) is counted as a
duplicate and stores nothing; the same frame heard by several gateways becomes one reading
with every gateway's reception (:meth:`owlgate.fleet.store.Store.record_batch`). The retained
``state`` topic (``online``, or ``offline`` from the gateway's Last Will) feeds the health
state.

With MQTT 5 the subscription is shared (``$share/owlgate-ingest/...``, MQTT 5.0 section 4.8.2)
so several fleet processes split the load; with MQTT 3.1.1 it is a plain subscription.

The store is synchronous SQLite: each message's work runs in a worker thread so the event
loop (which also serves the HTTP API) never waits on the database.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from owlgate.codecs.errors import OwlgateError
from owlgate.codecs.health import decode_health
from owlgate.codecs.node.telemetry import decode_batch
from owlgate.codecs.signed import verify

from .mqtt import MqttService
from .store import FleetError, NotFoundError, Store

log = logging.getLogger(__name__)

TOPIC_PREFIX = "owlgate/v1/gw/"
SHARE_GROUP = "owlgate-ingest"
KINDS = ("telemetry", "health", "state")


@dataclass(slots=True)
class IngestCounters:
    """What the ingest did since it started; ``rejected`` by reason."""

    batches: int = 0
    readings_stored: int = 0
    duplicates_merged: int = 0
    batch_duplicates: int = 0
    health: int = 0
    states: int = 0
    reconnects: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {
            "batches": self.batches,
            "readings_stored": self.readings_stored,
            "duplicates_merged": self.duplicates_merged,
            "batch_duplicates": self.batch_duplicates,
            "health": self.health,
            "states": self.states,
            "reconnects": self.reconnects,
            "rejected": dict(self.rejected),
        }


class Rejected(OwlgateError):
    """A message the ingest refuses; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_topic(topic: str) -> tuple[str, str]:
    """``owlgate/v1/gw/{id}/{kind}`` -> (gateway id in lowercase hex, kind)."""
    if not topic.startswith(TOPIC_PREFIX):
        raise Rejected("topic", f"not an owlgate gateway topic: {topic!r}")
    parts = topic[len(TOPIC_PREFIX) :].split("/")
    if len(parts) != 2 or parts[1] not in KINDS:
        raise Rejected("topic", f"not a gateway telemetry, health or state topic: {topic!r}")
    gateway = parts[0].lower()
    if len(gateway) != 16 or any(char not in "0123456789abcdef" for char in gateway):
        raise Rejected("topic", f"gateway id in {topic!r} is not 16 hex digits")
    return gateway, parts[1]


class Ingest:
    """Handles one gateway message at a time against ``store`` (synchronous; see
    :class:`IngestService` for the MQTT side). ``clock`` gives the fleet's receive time."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.counters = IngestCounters()
        self._keys: dict[str, Ed25519PublicKey] = {}

    def _key(self, gateway: str) -> Ed25519PublicKey:
        key = self._keys.get(gateway)
        if key is None:
            try:
                raw = self.store.gateway(gateway).sign_public_key
            except NotFoundError as err:
                raise Rejected("unknown_gateway", f"gateway {gateway} is not registered") from err
            key = Ed25519PublicKey.from_public_bytes(raw)
            self._keys[gateway] = key
        return key

    def _verified(self, gateway: str, payload: bytes) -> bytes:
        try:
            return verify(payload, self._key(gateway)).payload
        except OwlgateError as err:
            if isinstance(err, Rejected):
                raise
            raise Rejected("signature", f"from gateway {gateway}: {err}") from err

    def handle(self, topic: str, payload: bytes) -> None:
        """Verify and store one message; :class:`Rejected` (already counted) if refused."""
        try:
            gateway, kind = parse_topic(topic)
            if kind == "state":
                self._state(gateway, payload)
            elif kind == "telemetry":
                self._telemetry(gateway, payload)
            else:
                self._health(gateway, payload)
        except Rejected as err:
            self.counters.reject(err.reason)
            log.warning("rejected %s: %s", topic, err.message)
            raise

    def _state(self, gateway: str, payload: bytes) -> None:
        if payload not in (b"online", b"offline"):
            raise Rejected("state", f"state of {gateway} is neither online nor offline")
        try:
            self.store.set_gateway_state(gateway, payload == b"online", self.clock())
        except NotFoundError as err:
            raise Rejected("unknown_gateway", f"gateway {gateway} is not registered") from err
        self.counters.states += 1

    def _telemetry(self, gateway: str, payload: bytes) -> None:
        content = self._verified(gateway, payload)
        try:
            batch = decode_batch(content)
        except OwlgateError as err:
            raise Rejected("malformed", f"telemetry from {gateway}: {err}") from err
        if batch.gateway_id.hex() != gateway:
            raise Rejected(
                "wrong_gateway",
                f"batch on {gateway}'s topic names gateway {batch.gateway_id.hex()}",
            )
        try:
            result = self.store.record_batch(gateway, batch.seq, batch.readings, self.clock())
        except FleetError as err:
            raise Rejected("store", f"telemetry from {gateway}: {err}") from err
        self.counters.batches += 1
        if result.batch_duplicate:
            self.counters.batch_duplicates += 1
            log.info("batch %d of %s was already stored", batch.seq, gateway)
        self.counters.readings_stored += result.stored
        self.counters.duplicates_merged += result.duplicates_merged

    def _health(self, gateway: str, payload: bytes) -> None:
        content = self._verified(gateway, payload)
        try:
            health = decode_health(content)
        except OwlgateError as err:
            raise Rejected("malformed", f"health from {gateway}: {err}") from err
        if health.gateway_id.hex() != gateway:
            raise Rejected(
                "wrong_gateway",
                f"health on {gateway}'s topic names gateway {health.gateway_id.hex()}",
            )
        self.store.record_health(gateway, health, received_at=self.clock())
        self.counters.health += 1


def subscriptions(shared: bool) -> list[str]:
    """The topic filters the ingest subscribes to."""
    filters = [f"{TOPIC_PREFIX}+/{kind}" for kind in KINDS]
    return [f"$share/{SHARE_GROUP}/{topic}" for topic in filters] if shared else filters


class IngestService(MqttService):
    """The ingest on MQTT: subscribes and handles every message, reconnecting as
    :class:`~owlgate.fleet.mqtt.MqttService` does."""

    name = "ingest"

    def __init__(
        self,
        ingest: Ingest,
        host: str,
        port: int,
        *,
        mqtt5: bool = True,
        identifier: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(host, port, mqtt5=mqtt5, identifier=identifier, rng=rng)
        self.ingest = ingest

    def topics(self, mqtt5: bool) -> list[tuple[str, int]]:
        return [(topic, 1) for topic in subscriptions(mqtt5)]

    def count_reconnect(self) -> None:
        self.ingest.counters.reconnects += 1

    async def serve(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._one(str(message.topic), message.payload)

    async def _one(self, topic: str, payload: object) -> None:
        if not isinstance(payload, bytes | bytearray):
            self.ingest.counters.reject("malformed")
            log.warning("rejected %s: payload is not bytes", topic)
            return
        try:
            await asyncio.to_thread(self.ingest.handle, topic, bytes(payload))
        except Rejected:
            return  # counted and logged by handle; the next message is unaffected


def ingest_service(
    host: str, port: int, *, mqtt5: bool = True
) -> Callable[[Store], AbstractAsyncContextManager[IngestService]]:
    """A fleet service (see :func:`owlgate.fleet.cli.build_server`) running the ingest."""

    def service(store: Store) -> IngestService:
        return IngestService(Ingest(store), host, port, mqtt5=mqtt5)

    return service
