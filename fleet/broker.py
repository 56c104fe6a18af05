"""The MQTT broker the fleet talks through: an embedded one, or any broker named by URL.

Without ``--broker`` the fleet starts amqtt in its own process on 127.0.0.1 (a free port unless
one is given), which is what a laptop demo and the embedded half of the test suite use.
Production points ``--broker mqtt://host:port`` at Mosquitto or any other MQTT broker; the
fleet's code is the same either way.
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.errors import BrokerError as AmqttBrokerError  # type: ignore[import-untyped]
from amqtt.plugins.base import BaseAuthPlugin  # type: ignore[import-untyped]
from amqtt.session import Session  # type: ignore[import-untyped]

from owlgate.codecs.errors import OwlgateError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_MQTT_PORT = 1883
_ACCEPTED = "mqtt://host:port (port optional, default 1883), e.g. mqtt://127.0.0.1:1883"


class BrokerError(OwlgateError):
    """A broker URL that cannot be used, or an embedded broker that would not start."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_broker_url(url: str) -> tuple[str, int]:
    """The ``(host, port)`` of ``mqtt://host:port``; BrokerError for anything else.

    Only plain MQTT over TCP is accepted: credentials, paths, queries and other schemes are
    refused rather than ignored, so a typo cannot silently point the fleet somewhere else.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise BrokerError(f"not a broker URL: {url!r}; accepted: {_ACCEPTED}") from err
    if parts.scheme != "mqtt":
        raise BrokerError(
            f"unsupported broker URL scheme {parts.scheme!r} in {url!r}; accepted: {_ACCEPTED}"
        )
    host = parts.hostname
    if not host:
        raise BrokerError(f"no host in broker URL {url!r}; accepted: {_ACCEPTED}")
    if parts.username is not None or parts.password is not None:
        raise BrokerError(
            f"credentials do not belong in the broker URL {url.split('@')[-1]!r}; "
            f"accepted: {_ACCEPTED}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerError(
            f"unexpected path, query or fragment in broker URL {url!r}; accepted: {_ACCEPTED}"
        )
    if port == 0:
        raise BrokerError(f"port 0 in broker URL {url!r}; accepted: {_ACCEPTED}")
    return host, DEFAULT_MQTT_PORT if port is None else port


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class LoopbackAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Lets every client in, as amqtt's AnonymousAuthPlugin does, without marking its session
    anonymous.

    amqtt 0.12.1 keeps no messages for an anonymous session while it is disconnected
    (``Broker._run_broadcast``) and drops the session itself (``_session_monitor``), and its
    AnonymousAuthPlugin marks every session anonymous, username or not. That would defeat
    the fleet's persistent sessions (MQTT 3.1.1 section 3.1.2.4: a session with
    CleanSession=0 keeps its QoS 1 messages while the client is away). The embedded broker
    listens on the loopback interface only, so letting everyone in is its policy anyway.
    """

    async def authenticate(self, *, session: Session) -> bool:
        return True


class EmbeddedBroker:
    """amqtt running in this process on 127.0.0.1, as an async context manager.

    ``async with EmbeddedBroker() as broker:`` starts it on a free port (or ``port``) and
    publishes its address as ``broker.url``; leaving the block shuts it down and closes every
    client connection. Every client is let in (it listens on loopback only), and a client that
    connects without a clean session keeps its session and its queued QoS 1 messages while it
    is away, in the broker's memory (:class:`LoopbackAuthPlugin`).
    A stopped broker can be started again on the same port (``start`` after ``stop``).
    """

    def __init__(self, port: int | None = None) -> None:
        self.host = LOOPBACK
        self.port = free_port() if port is None else port
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``, for ``--broker`` and :func:`parse_broker_url`."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker is accepting connections."""
        return self._broker is not None

    async def start(self) -> None:
        """Start listening; BrokerError if the port is taken or amqtt refuses to start."""
        if self._broker is not None:
            return
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {f"{__name__}.{LoopbackAuthPlugin.__name__}": {}},
        }
        broker = Broker(config)
        try:
            await broker.start()
        except (OSError, AmqttBrokerError) as err:
            raise BrokerError(
                f"the embedded broker could not listen on {self.host}:{self.port}: {err}"
            ) from err
        self._broker = broker
        log.info("embedded MQTT broker listening on %s", self.url)

    async def stop(self) -> None:
        """Shut the broker down, dropping every client connection."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
            log.info("embedded MQTT broker on %s stopped", self.url)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
