"""The connection supervisor the fleet's MQTT services share (ingest, control).

One policy in one place (STYLE.md rule 7): connect with MQTT 5, fall back to 3.1.1 once when the
broker answers "unsupported protocol version" (the embedded amqtt broker), subscribe, serve
until the connection drops, then reconnect after a jittered, exponentially growing delay.
A subclass says what it subscribes to and what it does with a connected client.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

log = logging.getLogger(__name__)

RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 15.0
# CONNACK reason code 0x84 (MQTT 5.0 section 3.2.2.2): the broker does not speak MQTT 5.
UNSUPPORTED_PROTOCOL_VERSION = 132
STARTUP_WAIT_S = 10.0


def _reason(rc: object) -> object:
    # aiomqtt gives a paho ReasonCode (MQTT 5) or a plain int (3.1.1).
    return getattr(rc, "value", rc)


class MqttService(ABC):
    """Base of a fleet MQTT service: :meth:`run` supervises the connection; subclasses give
    ``name``, :meth:`topics` and :meth:`serve`, and count reconnects in
    :meth:`count_reconnect`."""

    name = "service"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        mqtt5: bool = True,
        identifier: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.mqtt5 = mqtt5
        self.identifier = identifier or f"owlgate-{self.name}-{random.getrandbits(32):08x}"
        self.subscribed = asyncio.Event()
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
        """(topic filter, QoS) pairs to subscribe to; shared ones only when ``mqtt5``."""

    @abstractmethod
    async def serve(self, client: aiomqtt.Client) -> None:
        """Handle messages on a connected, subscribed ``client`` until the connection ends."""

    @abstractmethod
    def count_reconnect(self) -> None:
        """Called once per lost or refused connection."""

    async def run(self) -> None:
        """Serve until cancelled."""
        delay = RECONNECT_INITIAL_S
        while True:
            try:
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

    async def _session(self) -> None:
        protocol = aiomqtt.ProtocolVersion.V5 if self.mqtt5 else aiomqtt.ProtocolVersion.V311
        async with aiomqtt.Client(
            self.host, self.port, identifier=self.identifier, protocol=protocol
        ) as client:
            for topic, qos in self.topics(self.mqtt5):
                await client.subscribe(topic, qos=qos)
            self.subscribed.set()
            log.info("%s subscribed on %s:%d", self.name, self.host, self.port)
            await self.serve(client)

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
        await asyncio.wait_for(subscribed.wait(), STARTUP_WAIT_S)
    except TimeoutError:
        log.warning("%s not subscribed after %.0f s; retrying in background", what, STARTUP_WAIT_S)
