"""The gateway's MQTT uplink: drains the durable outbox to the broker, at least once.

The outbox is the persistence, so the MQTT session need not be: every connection starts clean
(MQTT 3.1.1, which every broker owlgate meets speaks, the embedded amqtt included) and the
uplink simply publishes whatever the outbox still holds.

One connection, from connect to loss::

    CONNECT (Will: state = "offline", retained, QoS 1)
    PUBLISH state = "online" (retained, QoS 1)        <- its round trip is the backhaul RTT
    loop: take up to ``max_inflight`` pending entries, PUBLISH each with QoS 1,
          ack those whose PUBACK arrived in the outbox, in one write; wait for notify()
          when empty
    on close(): PUBLISH state = "offline" (retained), then DISCONNECT

An entry is acknowledged in the outbox only after its PUBACK (MQTT 3.1.1 section 4.3.2), so a
connection lost with entries in flight loses nothing: they are still pending and go out again
on the next connection. The fleet drops the duplicates by the batch's sequence number.

Any MQTT error (refused connection, lost connection, a PUBACK that does not come within
``publish_timeout_s``) ends the connection; the one supervisor loop in :meth:`Uplink._run`
counts it in ``reconnects``, waits a random delay between 0 and an exponentially growing cap
("full jitter", so a city of gateways does not reconnect in step after a broker restart) and
connects again.

``online`` means "this gateway is connected and can be answered": the fleet replies to it with
the gateway's device sessions on ``keys``, which the agent receives on a second connection.
So an ``announce_gate`` (the agent's: "my control subscription is up") may hold the ``online``
publish of each connection, for at most ``announce_wait_s``; the outbox drains meanwhile only
after it, as before. :meth:`Uplink.announce` publishes ``online`` again on the current
connection, for when the control subscription came back after the ``online`` went out.

:meth:`Uplink.reconnect` ends the connection cleanly (``offline``, DISCONNECT) and connects
again with other settings (broker, keep-alive, password): a configuration document that
changes MQTT restarts only this, and the outbox, the counters and the caller's references to
the uplink stay as they are.

Health messages do not go through the outbox: a health snapshot is only worth its moment, and
the fleet's offline rule wants the newest one. :meth:`Uplink.publish_now` publishes directly on
the current connection (QoS 1 by default, timing the round trip) and returns False, counted in
``direct_dropped``, when there is no connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Protocol, Self

import aiomqtt

from .errors import EdgeError

log = logging.getLogger(__name__)

TOPIC_PREFIX = "owlgate/v1/gw/"
STATE_SUFFIX = "state"
ONLINE = b"online"
OFFLINE = b"offline"

DEFAULT_MQTT_PORT = 1883
# The broker publishes the Will after 1.5 x keep-alive of silence (MQTT 3.1.1 section 3.1.2.10),
# so this sets how soon the fleet learns that a gateway died without saying goodbye.
DEFAULT_KEEPALIVE_S = 30
DEFAULT_MAX_INFLIGHT = 16
DEFAULT_PUBLISH_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_CAP_S = 60.0
# A connection that lasted this long resets the backoff; one that fails sooner keeps growing
# it, so a broker that accepts and then drops the gateway is not hammered.
STABLE_CONNECTION_S = 30.0
#: How long an ``announce_gate`` may hold the ``online`` of a new connection.
DEFAULT_ANNOUNCE_WAIT_S = 10.0
#: :meth:`Uplink.reconnect` gives the current connection this long to say goodbye before it
#: cancels it (a broker that went silent must not hold up the new settings).
RECONNECT_GRACE_S = 2.0
_MAX_BACKOFF_EXPONENT = 30
_WATCH_GRACE_S = 1.0


class UplinkError(EdgeError):
    """The uplink was used in a way it does not support (started twice, bad settings)."""


class OutboxEntryLike(Protocol):
    """One outbox entry, as the uplink reads it."""

    @property
    def id(self) -> int:
        """The outbox's key, passed back to :meth:`OutboxLike.ack`."""

    @property
    def topic(self) -> str:
        """The topic suffix under the gateway's prefix, such as ``telemetry``."""

    @property
    def payload(self) -> bytes:
        """The bytes to publish (for telemetry a signed COSE_Sign1 batch)."""


class OutboxLike(Protocol):
    """What the uplink needs of the durable outbox (``owlgate.edge.state.StateDb`` fits).

    Only these two: the depth and age figures for health come from the outbox itself.
    """

    def pending(self, limit: int) -> Sequence[OutboxEntryLike]:
        """Up to ``limit`` entries not yet acknowledged, oldest first."""

    def ack_many(self, entry_ids: Sequence[int]) -> object:
        """Delete the entries, in one write: the broker has acknowledged each (PUBACK). The
        result is unused."""


def backoff_delay_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The wait before reconnection attempt ``attempt`` (0, 1, ...): full jitter.

    Uniform between 0 and ``min(cap_s, base_s * 2**attempt)``.
    """
    ceiling = min(cap_s, base_s * 2 ** min(attempt, _MAX_BACKOFF_EXPONENT))
    return rng.uniform(0.0, ceiling)


class Uplink:
    """The MQTT publisher of one gateway; an async context manager.

    ``async with Uplink(outbox, gateway_id, host, port) as uplink:`` runs the connection
    supervisor in a task until the block ends; then :meth:`close` publishes ``offline`` and
    disconnects cleanly. Call :meth:`notify` after adding entries to the outbox.

    Counters, read-only for callers: ``published`` (outbox entries acknowledged after their
    PUBACK), ``reconnects`` (MQTT errors that made the uplink connect again, failed attempts
    included), ``connections`` (connections that got as far as ``online``), ``restarts``
    (calls of :meth:`reconnect`), ``last_rtt_ms`` (the last QoS 1 round trip of a state or
    direct publish, None before the first), ``connected``, ``announced`` (``online``
    acknowledged on the current connection), ``direct_published`` and ``direct_dropped``.

    ``announce_gate``, when given, is awaited before each connection's ``online`` publish, for
    at most ``announce_wait_s`` (then ``online`` goes out anyway, with a warning).

    ``password`` is the broker password the fleet issued for this gateway (user name: the
    gateway id); None logs in without one, which only a broker without credentials accepts.
    It is kept out of ``repr`` and logs.
    """

    def __init__(
        self,
        outbox: OutboxLike,
        gateway_id: bytes,
        host: str,
        port: int = DEFAULT_MQTT_PORT,
        *,
        keepalive_s: int = DEFAULT_KEEPALIVE_S,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        publish_timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
        rng: random.Random | None = None,
        announce_gate: Callable[[], Awaitable[object]] | None = None,
        announce_wait_s: float = DEFAULT_ANNOUNCE_WAIT_S,
        password: str | None = None,
    ) -> None:
        if len(gateway_id) != 8:
            raise UplinkError(f"gateway_id must be 8 bytes (EUI-64), got {len(gateway_id)}")
        if max_inflight < 1:
            raise UplinkError(f"max_inflight must be at least 1, got {max_inflight}")
        if not 0 < backoff_base_s <= backoff_cap_s:
            raise UplinkError(
                f"need 0 < backoff_base_s <= backoff_cap_s, got {backoff_base_s}, {backoff_cap_s}"
            )
        self.gateway_id = bytes(gateway_id)
        self.host = host
        self.port = port
        self.prefix = f"{TOPIC_PREFIX}{self.gateway_id.hex()}/"
        self.state_topic = self.prefix + STATE_SUFFIX
        self._outbox = outbox
        self._keepalive_s = keepalive_s
        self._max_inflight = max_inflight
        self._publish_timeout_s = publish_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._rng = rng if rng is not None else random.Random()
        self._announce_gate = announce_gate
        self._announce_wait_s = announce_wait_s
        self._password = password
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

        self.published = 0
        self.reconnects = 0
        self.connections = 0
        self.restarts = 0
        self.last_rtt_ms: int | None = None
        self.connected = False
        self.announced = False
        self.direct_published = 0
        self.direct_dropped = 0

    def topic(self, suffix: str) -> str:
        """The full topic of ``suffix`` (``telemetry``) under this gateway's prefix."""
        return self.prefix + suffix

    def notify(self) -> None:
        """Wake the uplink: the outbox has new entries."""
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the connection supervisor (``async with`` does this)."""
        if self._task is not None:
            raise UplinkError("the uplink is already started")
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"uplink {self.gateway_id.hex()}")

    async def close(self) -> None:
        """Publish ``offline`` (retained), disconnect cleanly, and stop the supervisor.

        Entries still in flight stay in the outbox. A clean DISCONNECT discards the Will, so
        the explicit ``offline`` is what tells the fleet; if it cannot be sent, the Will does.
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            # Not ``await task``: a reconnect() under way may have cancelled it already.
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            raise
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error

    async def reconnect(
        self,
        host: str,
        port: int = DEFAULT_MQTT_PORT,
        *,
        keepalive_s: int = DEFAULT_KEEPALIVE_S,
        password: str | None = None,
    ) -> None:
        """End the connection as :meth:`close` does (given :data:`RECONNECT_GRACE_S`, then
        cancelled) and connect again to ``host``:``port`` with ``keepalive_s`` and
        ``password``. The outbox and the counters are kept; what was in flight goes out again
        on the new connection. Raises :class:`UplinkError` when the uplink is not started."""
        task = self._task
        if task is None:
            raise UplinkError("the uplink is not started")
        self._stopping.set()
        self._wake.set()
        done, _ = await asyncio.wait([task], timeout=RECONNECT_GRACE_S)
        if not done:
            log.warning(
                "MQTT %s:%d: no clean goodbye within %.1f s; dropping the connection",
                self.host,
                self.port,
                RECONNECT_GRACE_S,
            )
            task.cancel()
            await asyncio.wait([task])
        if self._task is not task:
            # close() came meanwhile: the uplink stays closed.
            return
        self._task = None
        self.connected = self.announced = False
        self._client = None
        self.restarts += 1
        log.info(
            "MQTT: connecting to %s:%d (keep-alive %d s) instead of %s:%d",
            host,
            port,
            keepalive_s,
            self.host,
            self.port,
        )
        self.host, self.port = host, port
        self._keepalive_s = keepalive_s
        self._password = password
        self.start()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- direct publishing --------------------------------------------------------------------

    async def publish_now(self, suffix: str, payload: bytes, *, qos: int = 1) -> bool:
        """Publish ``payload`` on ``suffix`` now, bypassing the outbox; False when offline.

        With QoS 1 (the default) this returns after the PUBACK and the round trip updates
        ``last_rtt_ms``. Nothing is retried: a message that could not be sent is counted in
        ``direct_dropped`` and the next one replaces it.
        """
        client = self._client
        if client is None or not self.connected:
            self.direct_dropped += 1
            return False
        started = time.monotonic()
        try:
            await client.publish(
                self.topic(suffix), payload, qos=qos, timeout=self._publish_timeout_s
            )
        except aiomqtt.MqttError as err:
            # The supervisor notices the lost connection by itself; here it only costs this
            # one message.
            log.info("direct publish on %s dropped: %s", suffix, err)
            self.direct_dropped += 1
            return False
        if qos > 0:
            self.last_rtt_ms = _elapsed_ms(started)
        self.direct_published += 1
        return True

    async def announce(self) -> bool:
        """Publish ``online`` (retained) again on the current connection; False when there
        is none or the publish failed (the supervisor then reconnects and announces anyway)."""
        client = self._client
        if client is None or not self.connected:
            return False
        try:
            await self._publish_online(client)
        except aiomqtt.MqttError as err:
            log.info("announcing online again failed: %s", err)
            return False
        return True

    async def _publish_online(self, client: aiomqtt.Client) -> None:
        started = time.monotonic()
        await client.publish(
            self.state_topic, ONLINE, qos=1, retain=True, timeout=self._publish_timeout_s
        )
        self.last_rtt_ms = _elapsed_ms(started)
        self.announced = True

    async def _wait_for_gate(self) -> None:
        gate = self._announce_gate
        if gate is None:
            return

        async def opened() -> None:
            await gate()

        waiting = asyncio.create_task(opened())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait(
                (waiting, stopping),
                timeout=self._announce_wait_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            await _cancel_all((waiting, stopping))
        if not waiting.done() or waiting.cancelled():
            if not self._stopping.is_set():
                log.warning(
                    "announce gate still closed after %.0f s: announcing online anyway",
                    self._announce_wait_s,
                )
        elif waiting.exception() is not None:
            log.error("announce gate failed (%r): announcing online anyway", waiting.exception())

    # --- the supervisor -----------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"owlgate-gw-{self.gateway_id.hex()}",
            # The gateway id is its MQTT user name (the broker's ACL keys on it); the password
            # is the one the fleet issued for it (``[mqtt] password_file``), if any.
            username=self.gateway_id.hex(),
            password=self._password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            will=aiomqtt.Will(self.state_topic, OFFLINE, qos=1, retain=True),
            keepalive=self._keepalive_s,
            timeout=self._connect_timeout_s,
            max_inflight_messages=self._max_inflight,
        )

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            connected_at: float | None = None
            try:
                async with self._new_client() as client:
                    connected_at = time.monotonic()
                    await self._session(client)
            except Exception as err:
                if not isinstance(err, aiomqtt.MqttError):
                    # Not the network: a bug, or an outbox that cannot be written. Logged with
                    # its traceback, then handled as a lost connection, so the uplink keeps
                    # trying instead of dying (what was not acknowledged stays in the outbox).
                    log.error("uplink failed: %s: %s", type(err).__name__, err, exc_info=err)
                if self._stopping.is_set():
                    # The goodbye itself failed (the broker went away meanwhile): nothing to
                    # reconnect for, and the Will tells the fleet.
                    log.info("MQTT %s:%d: %s while closing", self.host, self.port, err)
                    return
                self.reconnects += 1
                if (
                    connected_at is not None
                    and time.monotonic() - connected_at >= STABLE_CONNECTION_S
                ):
                    attempt = 0
                delay_s = backoff_delay_s(
                    attempt, self._backoff_base_s, self._backoff_cap_s, self._rng
                )
                attempt += 1
                log.warning(
                    "MQTT %s:%d: %s; reconnecting in %.2f s (reconnect %d)",
                    self.host,
                    self.port,
                    err,
                    delay_s,
                    self.reconnects,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._stopping.wait()

    async def _session(self, client: aiomqtt.Client) -> None:
        # Returns after a clean goodbye when close() is called; raises MqttError when the
        # connection fails.
        # aiomqtt warns when more calls than this wait; max_inflight of them is normal here.
        client.pending_calls_threshold = self._max_inflight + 2
        await self._wait_for_gate()
        await self._publish_online(client)
        self._client = client
        self.connected = True
        self.connections += 1
        log.info("MQTT %s:%d connected, RTT %d ms", self.host, self.port, self.last_rtt_ms)
        watcher = asyncio.create_task(self._watch(client), name="uplink watch")
        drainer = asyncio.create_task(self._drain(client), name="uplink drain")
        stopper = asyncio.create_task(self._stopping.wait(), name="uplink stop")
        tasks = (watcher, drainer, stopper)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done and not drainer.done():
                # Stopping with a window in flight: let its PUBACKs come (the drainer then
                # ends), or its entries would go out again on the next connection.
                await asyncio.wait(
                    [drainer, watcher],
                    timeout=self._publish_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            elif drainer in done and not done & {watcher, stopper}:
                # aiomqtt 2 reports a lost connection both to the waiting publish and in a
                # future only the message iterator reads; let the watcher read it too, or
                # asyncio logs "Future exception was never retrieved".
                await asyncio.wait([watcher], timeout=_WATCH_GRACE_S)
        finally:
            self.connected = self.announced = False
            self._client = None
            await _cancel_all(tasks)
        error = _first_error((watcher, drainer))
        if error is not None:
            raise error
        # Stopping: say goodbye before the clean DISCONNECT (which discards the Will).
        try:
            await client.publish(
                self.state_topic, OFFLINE, qos=1, retain=True, timeout=self._publish_timeout_s
            )
        except aiomqtt.MqttError as err:
            log.warning("could not publish offline (the Will stands in): %s", err)

    async def _watch(self, client: aiomqtt.Client) -> None:
        # The uplink subscribes to nothing, so the message iterator yields nothing and ends only
        # with MqttError when the connection is lost: the one public signal aiomqtt 2 gives.
        # Without it a publish waiting for its PUBACK would sit out its whole timeout.
        async for message in client.messages:
            log.warning("unexpected MQTT message on %s", message.topic)

    async def _drain(self, client: aiomqtt.Client) -> None:
        # Ends when stopping, between two windows.
        while not self._stopping.is_set():
            # Clear before reading: an entry added after pending() sets the event again.
            self._wake.clear()
            entries = self._outbox.pending(self._max_inflight)
            if not entries:
                await self._wake.wait()
                continue
            sends = [asyncio.create_task(self._send(client, entry)) for entry in entries]
            try:
                await asyncio.wait(sends, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                await _cancel_all(sends)
                # One outbox write for the whole window (one fsync instead of one per entry):
                # every entry whose PUBACK came, even when another one failed.
                delivered = [
                    entry.id
                    for entry, send in zip(entries, sends, strict=True)
                    if not send.cancelled() and send.exception() is None
                ]
                if delivered:
                    self._outbox.ack_many(delivered)
                    self.published += len(delivered)
            error = _first_error(sends)
            if error is not None:
                raise error

    async def _send(self, client: aiomqtt.Client, entry: OutboxEntryLike) -> None:
        # With QoS 1 aiomqtt's publish returns once the PUBACK arrived (MQTT 3.1.1 section
        # 4.3.2): only then is the entry the broker's responsibility.
        await client.publish(
            self.topic(entry.topic), entry.payload, qos=1, timeout=self._publish_timeout_s
        )


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


async def _cancel_all(tasks: Sequence[asyncio.Task[object]]) -> None:
    for task in tasks:
        task.cancel()
    # Wait for every task to finish; their outcomes are read by the caller afterwards.
    await asyncio.wait(tasks)


def _first_error(tasks: Sequence[asyncio.Task[object]]) -> BaseException | None:
    # The first failure among finished tasks; cancelled ones (our own doing) do not count.
    for task in tasks:
        if task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                return error
    return None
