"""MQTT control: OTAA joins forwarded by gateways, and device sessions handed to gateways.

The control service subscribes to every gateway's ``join`` and ``state`` topics
(``owlgate/v1/gw/+/...``) and answers on the gateway's own ``join/accept`` and ``keys`` topics,
with the messages of :mod:`owlgate.codecs.control`:

- **join** (a COSE_Sign1 around a :class:`~owlgate.codecs.control.JoinForward`, signed by the
  gateway's identity key): verified against the key the gateway registered, then run through
  the :class:`~owlgate.fleet.joinserver.JoinServer` with every registered gateway named, so
  the new session is sealed to each of them. The forwarding gateway gets a
  :class:`~owlgate.codecs.control.JoinAnswer` (the join accept to transmit in RX1 and the
  session sealed to it); every other gateway gets a
  :class:`~owlgate.codecs.control.SessionUpdate` with the session sealed to it, because the
  device's next uplink may be heard by any of them. A join the join server refuses (unknown
  device, bad MIC, DevNonce reused) is answered with a refusal, so the gateway can drop the
  request it keeps for the RX1 window. A join that is unsigned, forged or from an unregistered
  gateway is not answered: it is rejected, logged and counted.
- **state** ``online`` (retained; the gateway publishes it on every connect): the gateway gets
  :class:`~owlgate.codecs.control.SessionUpdate` messages with every device session the fleet
  has (ABP sessions, and OTAA sessions of devices that joined), sealed to it, the last one
  marked ``complete``. Sessions are sealed afresh each time (HPKE is randomised), which is
  why these messages are never retained.

Everything the fleet publishes is signed with the fleet's Ed25519 signing key, whose public
key every gateway pins at provisioning, and sent with QoS 1.

With shared subscriptions on (``owlgate fleet serve --shared-subscriptions``, for several
fleet processes on one broker) and MQTT 5, the ``join`` subscription is shared
(``$share/owlgate-control/...``, MQTT 5.0 section 4.8.2): one fleet process answers each join,
so a DevNonce is never used twice by the fleet itself. One fleet process subscribes plainly
(see :attr:`owlgate.fleet.mqtt.MqttService.shared`). The ``state`` subscription is never
shared: retained messages are not delivered to a shared subscription (MQTT 5.0 section
4.8.2), and a fleet that starts or reconnects must see which gateways are online to give them
their sessions; a second fleet process sending the same sessions again does no harm.

The service connects under the persistent session of its fleet instance
(:class:`~owlgate.fleet.mqtt.MqttService`): joins and states published while it is down are
queued by the broker and handled when it is back. Unlike the ingest it leaves the PUBACK to
paho, on receipt: a join answered late is of no use to the device (its RX1 window is long
past), and a gateway re-publishes its retained state on every connect.

The store is synchronous SQLite, and sealing and signing cost CPU time: each message's work
runs in a worker thread so the event loop (which also serves the HTTP API) never waits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Final, Unpack

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from owlgate.codecs.control import (
    JoinAnswer,
    JoinForward,
    SessionUpdate,
    decode_join_forward,
    encode_join_answer,
    encode_session_update,
)
from owlgate.codecs.errors import LorawanError, OwlgateError
from owlgate.codecs.signed import sign, verify

from .joinserver import (
    AddressSpaceError,
    DevNonceReusedError,
    JoinError,
    JoinMicError,
    JoinServer,
    JoinSettings,
    UnknownDeviceError,
    device_session,
    seal_for_gateway,
)
from .mqtt import MqttOptions, MqttService
from .store import MAX_PAGE_LIMIT, FleetError, NotFoundError, Store

log = logging.getLogger(__name__)

TOPIC_PREFIX: Final = "owlgate/v1/gw/"
SHARE_GROUP: Final = "owlgate-control"
KINDS: Final = ("join", "state")
QOS: Final = 1
#: Sealed sessions per SessionUpdate: a city's worth of devices is split over several
#: messages, so no single MQTT message grows past a few tens of kilobytes.
MAX_SESSIONS_PER_UPDATE: Final = 200

#: The refusal a JoinAnswer carries, by the join server's error.
REFUSALS: Final[tuple[tuple[type[JoinError], str], ...]] = (
    (UnknownDeviceError, "unknown_device"),
    (JoinMicError, "mic"),
    (DevNonceReusedError, "dev_nonce_reused"),
    (AddressSpaceError, "address_space"),
)


@dataclass(slots=True)
class ControlCounters:
    """What the control service did since it started. ``refused`` counts join refusals by
    reason (answered); ``rejected`` counts messages not acted on at all, by reason. Joins and
    states are handled in different worker threads at once: change the counts only through
    the methods, which hold a lock."""

    joins_accepted: int = 0
    #: Copies of a join request another gateway forwarded first (dropped, not answered).
    join_duplicates: int = 0
    session_updates: int = 0
    sessions_sent: int = 0
    onlines: int = 0
    offlines: int = 0
    reconnects: int = 0
    publish_failures: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def refuse(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def accepted(self) -> None:
        with self._lock:
            self.joins_accepted += 1

    def duplicate(self) -> None:
        with self._lock:
            self.join_duplicates += 1

    def sent(self, updates: int, sessions: int) -> None:
        with self._lock:
            self.session_updates += updates
            self.sessions_sent += sessions

    def state(self, online: bool) -> None:
        with self._lock:
            if online:
                self.onlines += 1
            else:
                self.offlines += 1

    def reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1

    def publish_failed(self) -> None:
        with self._lock:
            self.publish_failures += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "joins_accepted": self.joins_accepted,
            "join_duplicates": self.join_duplicates,
            "session_updates": self.session_updates,
            "sessions_sent": self.sessions_sent,
            "onlines": self.onlines,
            "offlines": self.offlines,
            "reconnects": self.reconnects,
            "publish_failures": self.publish_failures,
            "refused": dict(self.refused),
            "rejected": dict(self.rejected),
        }


#: A join request's copies from other gateways arrive within this; a device's next request
#: carries a new DevNonce (LoRaWAN 1.0.4 section 6.2.5), and a replay after the window goes
#: to the join server, which refuses it as a reused DevNonce.
JOIN_DUPLICATE_WINDOW_S: Final = 10.0
#: Join requests remembered for that at most (a flood must not grow memory).
MAX_RECENT_JOINS: Final = 100_000


class ControlRejected(OwlgateError):
    """A message the control service does not act on; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish (QoS 1, not retained). ``repr`` hides the payload."""

    topic: str
    payload: bytes = field(repr=False)


def topic_for(gateway_id: str, kind: str) -> str:
    """``owlgate/v1/gw/{gateway_id}/{kind}``, e.g. ``kind`` ``join/accept`` or ``keys``."""
    return f"{TOPIC_PREFIX}{gateway_id}/{kind}"


def parse_topic(topic: str) -> tuple[str, str]:
    """``owlgate/v1/gw/{id}/join`` or ``.../state`` -> (gateway id in lowercase hex, kind)."""
    if not topic.startswith(TOPIC_PREFIX):
        raise ControlRejected("topic", f"not an owlgate gateway topic: {topic!r}")
    parts = topic[len(TOPIC_PREFIX) :].split("/")
    if len(parts) != 2 or parts[1] not in KINDS:
        raise ControlRejected("topic", f"not a gateway join or state topic: {topic!r}")
    gateway = parts[0].lower()
    if len(gateway) != 16 or any(char not in "0123456789abcdef" for char in gateway):
        raise ControlRejected("topic", f"gateway id in {topic!r} is not 16 hex digits")
    return gateway, parts[1]


def subscriptions(shared: bool) -> list[str]:
    """The topic filters the control service subscribes to (see the module docstring for why
    only ``join`` is shared)."""
    join = f"{TOPIC_PREFIX}+/join"
    return [f"$share/{SHARE_GROUP}/{join}" if shared else join, f"{TOPIC_PREFIX}+/state"]


def _refusal(err: JoinError) -> str:
    for kind, reason in REFUSALS:
        if isinstance(err, kind):
            return reason
    return "refused"


class Control:
    """Handles one gateway message at a time against ``store`` (synchronous; see
    :class:`ControlService` for the MQTT side) and returns the messages to publish, each
    signed with ``signing_key`` (the fleet's). ``clock`` gives the fleet's receive time."""

    def __init__(
        self,
        store: Store,
        signing_key: Ed25519PrivateKey,
        *,
        settings: JoinSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.join_server = JoinServer(store, settings)
        self.clock = clock
        self.counters = ControlCounters()
        self._signing_key = signing_key
        # Join requests answered lately, by PHYPayload: the time and the gateway.
        self._recent_joins: dict[bytes, tuple[float, str]] = {}
        self._recent_lock = threading.Lock()

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        """The messages answering one message; :class:`ControlRejected` (already counted and
        logged) if it is not acted on."""
        try:
            gateway, kind = parse_topic(topic)
            if kind == "join":
                return self._join(gateway, payload)
            return self._state(gateway, payload)
        except ControlRejected as err:
            self.counters.reject(err.reason)
            log.warning("rejected %s: %s", topic, err.message)
            raise

    def _signed(self, gateway: str, kind: str, content: bytes) -> Outgoing:
        return Outgoing(topic_for(gateway, kind), sign(content, self._signing_key))

    def _gateway_key(self, gateway: str) -> Ed25519PublicKey:
        try:
            raw = self.store.gateway(gateway).sign_public_key
        except NotFoundError as err:
            raise ControlRejected(
                "unknown_gateway", f"gateway {gateway} is not registered"
            ) from err
        return Ed25519PublicKey.from_public_bytes(raw)

    def _gateway_ids(self) -> list[str]:
        ids: list[str] = []
        after: str | None = None
        while True:
            page = self.store.gateways(limit=MAX_PAGE_LIMIT, after=after)
            ids.extend(gateway.id for gateway in page.items)
            if page.next is None:
                return ids
            after = page.next

    def _join(self, gateway: str, payload: bytes) -> list[Outgoing]:
        key = self._gateway_key(gateway)
        try:
            content = verify(payload, key).payload
        except OwlgateError as err:
            raise ControlRejected("signature", f"join from gateway {gateway}: {err}") from err
        try:
            forward: JoinForward = decode_join_forward(content)
        except OwlgateError as err:
            raise ControlRejected("malformed", f"join from gateway {gateway}: {err}") from err
        now = self.clock()
        first = self._answered_lately(forward.phy_payload, now)
        if first is not None and first != gateway:
            # In a city several gateways hear each join request: the first copy is answered
            # (through the gateway that forwarded it), the others only cost a signature check.
            # The same gateway forwarding it again is a replay, for the join server to refuse.
            self.counters.duplicate()
            log.debug("join via %s: a copy of the request %s forwarded first", gateway, first)
            return []
        # Remembered once answered (accepted or refused), not when the database failed: then
        # the next copy gets its chance.
        out = self._answer_join(gateway, forward, now)
        with self._recent_lock:
            self._recent_joins[forward.phy_payload] = (now, gateway)
        return out

    def _answered_lately(self, phy: bytes, now: float) -> str | None:
        """The gateway whose copy of the join request ``phy`` was handled less than
        JOIN_DUPLICATE_WINDOW_S ago, else None (forgetting what is older)."""
        with self._recent_lock:
            recent = self._recent_joins
            while recent:
                oldest = next(iter(recent))
                at, _ = recent[oldest]
                if now - at < JOIN_DUPLICATE_WINDOW_S and len(recent) <= MAX_RECENT_JOINS:
                    break
                del recent[oldest]
            found = recent.get(phy)
        return None if found is None else found[1]

    def _answer_join(self, gateway: str, forward: JoinForward, now: float) -> list[Outgoing]:
        gateways = self._gateway_ids()
        try:
            result = self.join_server.join(forward.phy_payload, at=now, gateway_ids=gateways)
        except JoinError as err:
            reason = _refusal(err)
            self.counters.refuse(reason)
            # The join server has logged the refusal (rate-limited); this says which gateway.
            log.debug("join via %s refused (%s): %s", gateway, reason, err.message)
            answer = JoinAnswer(forward.token, refusal=reason)
            return [self._signed(gateway, "join/accept", encode_join_answer(answer))]
        except LorawanError as err:
            raise ControlRejected("malformed", f"join from gateway {gateway}: {err}") from err
        self.counters.accepted()
        log.info("device %s joined via %s", result.dev_eui, gateway)
        answer = JoinAnswer(
            forward.token, accept_phy=result.accept_phy, sealed_session=result.sealed[gateway]
        )
        out = [self._signed(gateway, "join/accept", encode_join_answer(answer))]
        for other, sealed in sorted(result.sealed.items()):
            if other != gateway:
                update = encode_session_update(SessionUpdate([sealed]))
                out.append(self._signed(other, "keys", update))
        self.counters.sent(len(out) - 1, len(out) - 1)
        return out

    def _state(self, gateway: str, payload: bytes) -> list[Outgoing]:
        if payload not in (b"online", b"offline"):
            raise ControlRejected("state", f"state of {gateway} is neither online nor offline")
        # The store is asked first so an unregistered gateway is rejected either way.
        self._gateway_key(gateway)
        self.counters.state(payload == b"online")
        if payload == b"offline":
            return []
        sealed = list(self._sealed_sessions(gateway))
        # At least one update, empty when the fleet has no sessions; the last is marked
        # complete: the gateway then knows it has every session the fleet holds for it.
        chunks = [
            sealed[start : start + MAX_SESSIONS_PER_UPDATE]
            for start in range(0, len(sealed), MAX_SESSIONS_PER_UPDATE)
        ] or [[]]
        out = [
            self._signed(
                gateway,
                "keys",
                encode_session_update(SessionUpdate(chunk, complete=number == len(chunks) - 1)),
            )
            for number, chunk in enumerate(chunks)
        ]
        self.counters.sent(len(out), len(sealed))
        log.info("sent %d device sessions to %s", len(sealed), gateway)
        return out

    def _sealed_sessions(self, gateway: str) -> Iterator[bytes]:
        after: str | None = None
        while True:
            page = self.store.devices(limit=MAX_PAGE_LIMIT, after=after)
            for device in page.items:
                if device.dev_addr is None:
                    continue  # an OTAA device that has not joined yet
                try:
                    session = device_session(self.store, device.dev_eui)
                except NotFoundError:
                    continue  # removed or not joined between the listing and this read
                yield seal_for_gateway(self.store, gateway, session)
            if page.next is None:
                return
            after = page.next


class ControlService(MqttService):
    """The control service on MQTT: subscribes and answers every message, reconnecting as
    :class:`~owlgate.fleet.mqtt.MqttService` does."""

    name = "control"

    def __init__(
        self, control: Control, host: str, port: int, **options: Unpack[MqttOptions]
    ) -> None:
        super().__init__(host, port, **options)
        self.control = control

    def topics(self, mqtt5: bool) -> list[tuple[str, int]]:
        return [(topic, QOS) for topic in subscriptions(mqtt5 and self.shared)]

    def count_reconnect(self) -> None:
        self.control.counters.reconnect()

    def stats(self) -> dict[str, object]:
        """The control service's counters now (``GET /api/v1/stats``)."""
        return self.control.counters.as_dict()

    async def serve(self, client: aiomqtt.Client) -> None:
        # Sessions for a gateway coming online take time to seal (tens of microseconds
        # each, for every device): they go through a queue of their own, so a join is
        # never kept waiting behind them past its RX1 window (JOIN_ACCEPT_DELAY1, 5 s,
        # LoRaWAN 1.0.3 section 6.2.5). A gateway whose state changes again while it waits
        # there is handled once, with its latest state.
        latest: dict[str, bytes | bytearray] = {}
        queue: asyncio.Queue[str] = asyncio.Queue()
        states = asyncio.create_task(self._states(client, queue, latest))
        try:
            async for message in client.messages:
                topic = str(message.topic)
                payload = message.payload
                if topic.endswith("/state") and isinstance(payload, bytes | bytearray):
                    if topic not in latest:
                        queue.put_nowait(topic)
                    latest[topic] = payload
                else:
                    await self._publish(client, await self._one(topic, payload))
        finally:
            states.cancel()
            (ended,) = await asyncio.gather(states, return_exceptions=True)
            if isinstance(ended, Exception):
                log.error("control's state worker failed: %r", ended)

    async def _states(
        self,
        client: aiomqtt.Client,
        queue: asyncio.Queue[str],
        latest: dict[str, bytes | bytearray],
    ) -> None:
        while True:
            topic = await queue.get()
            payload = latest.pop(topic)
            await self._publish(client, await self._one(topic, payload))

    async def _publish(self, client: aiomqtt.Client, messages: list[Outgoing]) -> None:
        for outgoing in messages:
            try:
                await client.publish(outgoing.topic, outgoing.payload, qos=QOS)
            except aiomqtt.MqttCodeError as err:
                # Refused by the broker (too large, not authorised): the connection is fine,
                # so the other messages still go. A lost connection ends the message loop.
                self.control.counters.publish_failed()
                log.error("could not publish to %s: %s", outgoing.topic, err)

    async def _one(self, topic: str, payload: object) -> list[Outgoing]:
        if not isinstance(payload, bytes | bytearray):
            self.control.counters.reject("malformed")
            log.warning("rejected %s: payload is not bytes", topic)
            return []
        try:
            return await asyncio.to_thread(self.control.handle, topic, bytes(payload))
        except ControlRejected:
            return []  # counted and logged by handle; the next message is unaffected
        except FleetError as err:
            # A database fault must not end the service: count it, and the gateway retries.
            self.control.counters.reject("store")
            log.error("control failed on %s: %s", topic, err.message)
            return []
        except OwlgateError as err:
            # Any other typed fault (a stored key that no longer seals, ...) alike.
            self.control.counters.reject("error")
            log.error("control failed on %s: %s", topic, err)
            return []


def control_service(
    host: str,
    port: int,
    signing_key: Ed25519PrivateKey,
    *,
    mqtt5: bool = True,
    settings: JoinSettings | None = None,
    instance: str | None = None,
    shared: bool = False,
    username: str | None = None,
    password: str | None = None,
) -> Callable[[Store], AbstractAsyncContextManager[ControlService]]:
    """A fleet service (see :func:`owlgate.fleet.cli.build_server`) running joins and device
    sessions over MQTT, signing what it sends with ``signing_key``, under the persistent
    session of fleet instance ``instance`` (default: the host name), sharing the ``join``
    subscription when ``shared``, logged in as ``username`` (the fleet's broker account)
    when given."""

    def service(store: Store) -> ControlService:
        return ControlService(
            Control(store, signing_key, settings=settings),
            host,
            port,
            mqtt5=mqtt5,
            instance=instance,
            shared=shared,
            username=username,
            password=password,
        )

    return service
