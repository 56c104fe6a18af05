"""The MQTT broker the fleet talks through: an embedded one, or any broker named by URL.

Without ``--broker`` the fleet starts amqtt in its own process on 127.0.0.1 (a free port unless
one is given), which is what a laptop demo and the embedded half of the test suite use.
Production points ``--broker mqtt://host:port`` at Mosquitto or any other MQTT broker; the
fleet's code is the same either way.

**Access.** Given a :class:`~owlgate.fleet.brokerauth.PolicyHolder`, the embedded broker
enforces the broker credentials the fleet issued (:mod:`owlgate.fleet.brokerauth`), as
Mosquitto does with the files the fleet writes: :class:`PolicyAuthPlugin` checks the user
name and password against the same ``$7$`` hashes, and :class:`PolicyTopicPlugin` applies the
same ACL to every publish, subscription and delivery. While the holder's policy has no
account (the demo default: nothing issued yet) every client is let in and may use every
topic, as before credentials existed; once one account exists, anonymous clients and wrong
passwords are refused at CONNECT and each account keeps to its topics. The policy is read on
every check, so :meth:`~owlgate.fleet.brokerauth.PolicyHolder.update` takes effect for the
next CONNECT, publish or subscription without a restart.

**Silent clients.** A gateway whose power is cut sends nothing more, not even a TCP close; only
the keep-alive tells, and the Last Will it left is what marks it offline. amqtt 0.12 reads
from each client with a timeout of its keep-alive and then does nothing
(``BrokerProtocolHandler.handle_read_timeout`` is empty), so a silent client was never cut
and its Will never sent. :class:`SilenceCuttingHandler` gives a client 1.5 times its
keep-alive, as MQTT 3.1.1 section 3.1.2.10 says a server must, and then closes the
connection, which sends the Will.

**Closed connections.** amqtt 0.12 leaves the server side of a connection open on several
of its exits from ``Broker._client_connected`` (a client that goes away before or right
after its CONNECT, a take-over, some refusals): the socket is only found by the garbage
collector, with a ``ResourceWarning``, and until then it holds a file descriptor. Nor does
its shutdown close connections that are not yet sessions. :class:`ClosingBroker` knows
every stream from the moment it is accepted, closes it whichever way its handling ends, and
closes the ones still open when the broker shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from amqtt import broker as amqtt_broker  # type: ignore[import-untyped]
from amqtt.broker import Action, Broker  # type: ignore[import-untyped]
from amqtt.errors import BrokerError as AmqttBrokerError  # type: ignore[import-untyped]
from amqtt.mqtt.protocol.broker_handler import (  # type: ignore[import-untyped]
    BrokerProtocolHandler,
)
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin  # type: ignore[import-untyped]
from amqtt.session import Session  # type: ignore[import-untyped]

from owlgate.codecs.errors import OwlgateError

from .brokerauth import Action as AclAction
from .brokerauth import PolicyHolder

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: A client silent for this many times its keep-alive is cut (MQTT 3.1.1 section 3.1.2.10).
KEEPALIVE_GRACE = 1.5
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


def _holder(plugin: Any) -> PolicyHolder:
    holder = plugin.config.holder
    if not isinstance(holder, PolicyHolder):
        raise BrokerError("the embedded broker's access plugins need a PolicyHolder")
    return holder


class SilenceCuttingHandler(BrokerProtocolHandler):  # type: ignore[misc]
    """amqtt's per-client protocol handler, cutting a client that stays silent for
    :data:`KEEPALIVE_GRACE` times its keep-alive (see the module docstring)."""

    @classmethod
    async def init_from_connect(
        cls, reader: Any, writer: Any, plugins_manager: Any, loop: Any = None
    ) -> tuple[Any, Any]:
        handler, session = await super().init_from_connect(
            reader, writer, plugins_manager, loop=loop
        )
        # The handler's reader waits this long (asyncio.wait_for: seconds, a float is fine)
        # for a packet before handle_read_timeout.
        if session.keep_alive and session.keep_alive > 0:
            session.keep_alive = session.keep_alive * KEEPALIVE_GRACE
        return handler, session

    def handle_read_timeout(self) -> None:
        writer = self.writer
        if writer is None or getattr(writer, "is_closed", False):
            return
        client = getattr(self.session, "client_id", "?")
        log.info("embedded broker: %s silent past its keep-alive, closing it", client)
        # Closing the connection ends the handler's reader, and the broker sends the Will.
        self._closing = asyncio.get_running_loop().create_task(writer.close())


# The broker builds each client's handler through this module attribute.
amqtt_broker.BrokerProtocolHandler = SilenceCuttingHandler


class PolicyAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Checks a CONNECT's user name and password against the holder's policy; lets every
    client in while the policy has no account. Like :class:`LoopbackAuthPlugin` it never
    marks a session anonymous, so persistent sessions keep their messages."""

    @dataclass
    class Config:
        holder: Any = None

    async def authenticate(self, *, session: Session) -> bool:
        holder = _holder(self)
        policy = holder.policy
        if not policy.configured:
            return True
        if policy.authenticate(session.username, session.password):
            will = session.will_topic if session.will_flag else None
            # amqtt publishes a Will without asking the topic plugins: it is checked here, at
            # CONNECT, as Mosquitto does, so a gateway cannot leave "offline" on another's
            # state topic.
            if will is None or policy.allows(session.username, "publish", will):
                return True
            log.warning(
                "embedded broker refused client %r as %r: its Will is on %s, outside its ACL",
                session.client_id,
                session.username,
                will,
            )
            holder.refused_logins += 1
            return False
        holder.refused_logins += 1
        log.warning(
            "embedded broker refused the login of client %r as %s",
            session.client_id,
            "an anonymous client" if not session.username else repr(session.username),
        )
        return False


_ACTIONS: dict[Any, AclAction] = {
    Action.PUBLISH: "publish",
    Action.SUBSCRIBE: "subscribe",
    Action.RECEIVE: "receive",
}


class PolicyTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """Applies the holder's ACL to every publish, subscription (a refused one gets SUBACK
    0x80) and delivery; allows everything while the policy has no account."""

    @dataclass
    class Config:
        holder: Any = None

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Any = None
    ) -> bool:
        holder = _holder(self)
        policy = holder.policy
        if not policy.configured:
            return True
        kind = _ACTIONS.get(action)
        if session is None or topic is None or kind is None:
            return False
        if policy.allows(session.username, kind, topic):
            return True
        holder.denied += 1
        # A delivery refused is routine (the fleet's wildcard topics cross every gateway's);
        # a publish or subscription refused is a client trying what its ACL forbids.
        level = logging.DEBUG if kind == "receive" else logging.WARNING
        log.log(level, "embedded broker denied %s %s to %r", kind, topic, session.username)
        return False


class ClosingBroker(Broker):  # type: ignore[misc]
    """amqtt's broker, closing every client connection's socket when its handling ends (see
    the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streams: set[asyncio.StreamWriter] = set()

    def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> Coroutine[Any, Any, None]:
        # asyncio calls this when the connection is made and runs what it returns as a task:
        # the stream is known from its first moment, even if that task is cancelled (the
        # loop ending) before it ever runs.
        self._streams.add(writer)
        return self._stream_served(reader, writer, listener_name)

    async def _stream_served(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            self._streams.discard(writer)
            # amqtt's adapter marks itself closed before it drains, so a cancellation in that
            # drain left the socket open. Closing the stream itself is idempotent and still
            # flushes what is buffered.
            writer.close()

    async def shutdown(self) -> None:
        try:
            await super().shutdown()
        finally:
            # Connections amqtt was not handling as sessions (no CONNECT yet, or a handler
            # still winding down) outlive its shutdown: close them, so none is left to the
            # garbage collector once the loop is gone.
            for writer in list(self._streams):
                writer.close()
            self._streams.clear()

    async def _client_connected(self, listener_name: str, reader: Any, writer: Any) -> None:
        try:
            await super()._client_connected(listener_name, reader, writer)
        finally:
            # WriterAdapter.close() is a no-op on a writer amqtt already closed.
            try:
                await writer.close()
            except (OSError, RuntimeError) as err:
                # The peer reset the connection before the goodbye could be flushed: drop the
                # transport outright (its socket is closed with it).
                log.debug("closing a client connection: %s", err)
                stream = getattr(writer, "_writer", None)
                transport = getattr(stream, "transport", None)
                if transport is not None:
                    transport.abort()


for _hook in ("stream_connected", "_client_connected"):
    if not hasattr(Broker, _hook):
        # The hooks above would silently stop running: better to fail at import, in the tests.
        raise ImportError(
            f"amqtt.broker.Broker no longer has {_hook}: ClosingBroker needs updating"
        )


class EmbeddedBroker:
    """amqtt running in this process on 127.0.0.1, as an async context manager.

    ``async with EmbeddedBroker() as broker:`` starts it on a free port (or ``port``) and
    publishes its address as ``broker.url``; leaving the block shuts it down and closes every
    client connection. Every client is let in (it listens on loopback only), and a client that
    connects without a clean session keeps its session and its queued QoS 1 messages while it
    is away, in the broker's memory (:class:`LoopbackAuthPlugin`).
    A stopped broker can be started again on the same port (``start`` after ``stop``).

    With ``policy`` the broker enforces the fleet's broker credentials and ACL instead
    (:class:`PolicyAuthPlugin`, :class:`PolicyTopicPlugin`; see the module docstring).
    """

    def __init__(self, port: int | None = None, *, policy: PolicyHolder | None = None) -> None:
        self.host = LOOPBACK
        self.port = free_port() if port is None else port
        self.policy = policy
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
        plugins: dict[str, dict[str, object]] = {f"{__name__}.{LoopbackAuthPlugin.__name__}": {}}
        if self.policy is not None:
            plugins = {
                f"{__name__}.{plugin.__name__}": {"holder": self.policy}
                for plugin in (PolicyAuthPlugin, PolicyTopicPlugin)
            }
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": plugins,
        }
        broker = ClosingBroker(config)
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
