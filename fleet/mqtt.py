"""The connection supervisor the fleet's MQTT services share (ingest, control).

One policy in one place (STYLE.md rule 7): connect with MQTT 5, fall back to 3.1.1 once when the
broker answers "unsupported protocol version" (the embedded amqtt broker), subscribe, serve
until the connection drops, then reconnect after a jittered, exponentially growing delay.
A subclass says what it subscribes to and what it does with a connected client.

**Persistent sessions.** Every service connects under a stable client id,
``owlgate-fleet-{instance}-{service}`` (:func:`client_id`), without a clean start: MQTT 3.1.1
``CleanSession=0`` (section 3.1.2.4), MQTT 5 ``Clean Start=0`` with a Session Expiry Interval
(sections 3.1.2.4 and 3.1.2.11.2). The broker keeps the subscriptions and queues every QoS 1
message that arrives while the service is away, and resends what was delivered but not
acknowledged when the service comes back (MQTT 3.1.1 section 4.4, MQTT 5.0 section 4.4). Two
fleet processes on one broker therefore need different instance names: under the same client
id each would take the other's session over (MQTT 3.1.1 section 3.1.4, step 2).

**Acknowledging after the work is done.** A service that sets ``manual_ack`` acknowledges a
QoS 1 message itself, through the :class:`PubackQueue` its :meth:`MqttService.serve` makes,
once the message is stored (or refused for good). aiomqtt 2.x has no API for that; the paho
client underneath has, and :func:`paho_client` is the one place that reaches for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, TypedDict

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from owlgate.codecs.errors import OwlgateError

log = logging.getLogger(__name__)

RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 15.0
# CONNACK reason code 0x84 (MQTT 5.0 section 3.2.2.2): the broker does not speak MQTT 5.
UNSUPPORTED_PROTOCOL_VERSION = 132
STARTUP_WAIT_S = 10.0
#: How long an MQTT 5 broker keeps a service's session (subscriptions and queued messages)
#: after the connection ends (Session Expiry Interval, MQTT 5.0 section 3.1.2.11.2). A fleet
#: down longer than this loses what was published meanwhile; MQTT 3.1.1 sessions do not
#: expire by the protocol (a broker may expire them by its own setting, e.g. Mosquitto's
#: ``persistent_client_expiration``).
DEFAULT_SESSION_EXPIRY_S: Final = 24 * 3600
#: What an instance name may contain: it becomes part of MQTT client ids, which brokers
#: accept most readily as plain letters and digits (MQTT 3.1.1 section 3.1.3.1).
INSTANCE_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class InstanceNameError(OwlgateError):
    """A fleet instance name that cannot be part of an MQTT client id."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def default_instance() -> str:
    """The host name, with anything a client id should not carry replaced by ``-``: two fleet
    processes on different hosts get different sessions without being told."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].lstrip("-_.")
    return name or "fleet"


def check_instance(name: str) -> str:
    """``name`` if it is a valid instance name (letters, digits, ``_.-``, at most 64, starting
    with a letter or digit); InstanceNameError otherwise."""
    if not INSTANCE_PATTERN.fullmatch(name):
        raise InstanceNameError(
            f"instance name {name!r} must be 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def client_id(instance: str, service: str) -> str:
    """The stable MQTT client id of ``service`` (``ingest``, ``control``) of a fleet instance."""
    return f"owlgate-fleet-{check_instance(instance)}-{service}"


def _reason(rc: object) -> object:
    # aiomqtt gives a paho ReasonCode (MQTT 5) or a plain int (3.1.1).
    return getattr(rc, "value", rc)


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho-mqtt client an aiomqtt 2.x ``Client`` wraps (its ``_client`` attribute).

    aiomqtt 2.5 acknowledges every QoS 1 message as soon as it is received and has no way to
    acknowledge later; paho 2.x, underneath, has ``manual_ack_set`` and ``ack``. This is the
    only place owlgate reaches inside aiomqtt, and ``tests/fleet/test_mqtt.py`` fails if the
    attribute moves, so an aiomqtt upgrade cannot quietly bring back acknowledge-on-receipt.
    """
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client):
        raise TypeError(
            "aiomqtt.Client no longer keeps its paho client in _client: manual acknowledgement "
            "(owlgate.fleet.mqtt.paho_client) must be ported to this aiomqtt version"
        )
    return inner


@dataclass(slots=True)
class Delivery:
    """One received message waiting for its PUBACK (see :class:`PubackQueue`)."""

    mid: int
    qos: int
    settled: bool = False


class PubackQueue:
    """PUBACKs for one connection, sent only when a message is settled and always in the order
    the PUBLISHes arrived.

    MQTT 3.1.1 section 4.6 (and MQTT 5.0 section 4.6): a client MUST send PUBACKs in the order
    the PUBLISH packets were received. A message settled early (refused at once) therefore
    waits until everything received before it is settled too. Used from the event loop only,
    which is also where aiomqtt runs paho's socket callbacks.
    """

    def __init__(self, ack: Callable[[int, int], int]) -> None:
        self._ack = ack
        self._waiting: deque[Delivery] = deque()
        self.sent = 0

    @classmethod
    def for_client(cls, client: aiomqtt.Client) -> PubackQueue:
        """The queue for ``client``, which must have been made with manual acknowledgement
        (``MqttService.manual_ack``): PUBACKs go out through paho's ``ack``."""
        return cls(paho_client(client).ack)

    def __len__(self) -> int:
        return len(self._waiting)

    def receive(self, message: aiomqtt.Message) -> Delivery:
        """Register ``message``, in arrival order; settle the returned delivery when done."""
        delivery = Delivery(message.mid, message.qos)
        self._waiting.append(delivery)
        return delivery

    def settle(self, delivery: Delivery) -> None:
        """``delivery`` is stored or refused for good: acknowledge it and every settled message
        behind which it had to wait."""
        delivery.settled = True
        while self._waiting and self._waiting[0].settled:
            done = self._waiting.popleft()
            if done.qos > 0:
                # A failure here means the connection is gone; the broker then resends the
                # message on the next connection (MQTT 3.1.1 section 4.4), which the ingest
                # recognises as already stored.
                rc = self._ack(done.mid, done.qos)
                if rc == paho.MQTT_ERR_SUCCESS:
                    self.sent += 1
                else:
                    log.debug("PUBACK %d not sent (%s)", done.mid, paho.error_string(rc))


class MqttOptions(TypedDict, total=False):
    """The connection options of :class:`MqttService`, for a service's constructor to pass on
    as ``**options`` (see :meth:`MqttService.__init__` for each)."""

    mqtt5: bool
    instance: str | None
    identifier: str | None
    session_expiry_s: int
    rng: random.Random | None
    shared: bool
    username: str | None
    password: str | None


class MqttService(ABC):
    """Base of a fleet MQTT service: :meth:`run` supervises the connection; subclasses give
    ``name``, :meth:`topics` and :meth:`serve`, and count reconnects in
    :meth:`count_reconnect`.

    ``instance`` names the fleet process (default: the host name) and makes the client id
    (:func:`client_id`); ``identifier`` overrides the client id altogether.
    ``session_expiry_s`` is the MQTT 5 Session Expiry Interval asked for.
    """

    name = "service"
    #: True: the service acknowledges QoS 1 messages itself (:class:`PubackQueue`); False:
    #: paho acknowledges each on receipt.
    manual_ack = False
    #: MQTT 5 Receive Maximum (section 3.1.2.11.3): how many QoS 1 messages the broker may
    #: have sent and not yet seen acknowledged. None: the broker's default (Mosquitto: its
    #: ``max_inflight_messages``, 20).
    receive_maximum: int | None = None

    def __init__(
        self,
        host: str,
        port: int,
        *,
        mqtt5: bool = True,
        instance: str | None = None,
        identifier: str | None = None,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
        rng: random.Random | None = None,
        shared: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        #: The fleet's broker account (:mod:`owlgate.fleet.brokerauth`); None: anonymous.
        self.username = username
        self._password = password
        self.mqtt5 = mqtt5
        #: Subscribe through MQTT 5 shared subscriptions (several fleet processes split the
        #: load). Off by default: Mosquitto 2.0 does not restore a persistent session's
        #: shared subscriptions from its persistence file after a restart, so messages that
        #: arrive before the fleet reconnects match nothing, are acknowledged to the gateway,
        #: and are lost; a plain subscription is restored and queued.
        self.shared = shared
        self.identifier = identifier or client_id(instance or default_instance(), self.name)
        self.session_expiry_s = session_expiry_s
        self.subscribed = asyncio.Event()
        self._speaks_mqtt5 = False
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        """Run in the background; return once subscribed (or after STARTUP_WAIT_S)."""
        self._task = asyncio.create_task(self.run(), name=f"owlgate-{self.name}")
        await wait_subscribed(self.subscribed, self.name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @abstractmethod
    def topics(self, mqtt5: bool) -> list[tuple[str, int]]:
        """(topic filter, QoS) pairs to subscribe to; shared ones only when ``mqtt5`` and
        :attr:`shared`."""

    @abstractmethod
    async def serve(self, client: aiomqtt.Client) -> None:
        """Handle messages on a connected ``client`` until the connection ends. It starts
        before the subscriptions are made: a persistent session's queued messages arrive
        right after the CONNACK, and some brokers (amqtt) answer the SUBSCRIBE only once
        those are acknowledged."""

    @abstractmethod
    def count_reconnect(self) -> None:
        """Called once per lost or refused connection."""

    async def run(self) -> None:
        """Serve until cancelled."""
        delay = RECONNECT_INITIAL_S
        while True:
            try:
                if self.mqtt5 and not self._speaks_mqtt5:
                    await self._probe()
                await self._session()
            except MqttConnectError as err:
                if self.mqtt5 and _reason(err.rc) == UNSUPPORTED_PROTOCOL_VERSION:
                    # An MQTT 3.1.1 broker (the embedded one): no shared subscriptions there.
                    log.info("%s: broker speaks MQTT 3.1.1 only: no shared subscription", self.name)
                    self.mqtt5 = False
                    continue
                delay = await self._backoff(err, delay)
            except aiomqtt.MqttError as err:
                delay = await self._backoff(err, delay)
            except Exception:
                log.exception("%s stopped by an unexpected error", self.name)
                raise

    async def _probe(self) -> None:
        """Find out, once, whether the broker speaks MQTT 5, with a bare CONNECT: amqtt 0.12.1
        refuses one with reason 0x84 but never answers a CONNECT that carries properties (it
        reads them as a 3.1.1 payload and waits for bytes that never come). The probe has a
        client id of its own, a clean start and no Session Expiry Interval, so it leaves no
        session behind and cannot touch the service's (MQTT 5.0 section 3.1.2.11.2)."""
        async with aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"{self.identifier}-probe",
            username=self.username,
            password=self._password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,
        ):
            pass
        self._speaks_mqtt5 = True

    def _client(self) -> aiomqtt.Client:
        options: dict[str, Any] = {}
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session_expiry_s
            if self.receive_maximum is not None:
                properties.ReceiveMaximum = self.receive_maximum
            options = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": False,
                "properties": properties,
            }
        else:
            options = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.identifier,
            username=self.username,
            password=self._password,
            **options,
        )
        if self.manual_ack:
            # Before connecting: a resumed session's messages may follow the CONNACK at once.
            paho_client(client).manual_ack_set(True)
        return client

    async def _session(self) -> None:
        async with self._client() as client:
            serving = asyncio.create_task(self.serve(client), name=f"owlgate-{self.name}-serve")
            try:
                for topic, qos in self.topics(self.mqtt5):
                    await client.subscribe(topic, qos=qos)
                self.subscribed.set()
                log.info(
                    "%s subscribed on %s:%d as %s", self.name, self.host, self.port, self.identifier
                )
                await serving
            finally:
                if not serving.done():
                    serving.cancel()
                # The connection is over either way; whatever ended it is what propagates.
                await asyncio.gather(serving, return_exceptions=True)

    async def _backoff(self, err: Exception, delay: float) -> float:
        self.subscribed.clear()
        self.count_reconnect()
        wait = self._rng.uniform(delay / 2, delay)
        log.warning("%s lost the broker (%s); reconnecting in %.1f s", self.name, err, wait)
        await asyncio.sleep(wait)
        return min(delay * 2, RECONNECT_MAX_S)


async def wait_subscribed(subscribed: asyncio.Event, what: str) -> None:
    """Hold the server's startup until ``what`` has subscribed, for at most
    STARTUP_WAIT_S: a fleet that says it is running must not miss the first batches. A broker
    that is down at startup is not fatal: the service keeps retrying in the background."""
    try:
        async with asyncio.timeout(STARTUP_WAIT_S):
            await subscribed.wait()
    except TimeoutError:
        log.warning("%s not subscribed after %.0f s; retrying in background", what, STARTUP_WAIT_S)
