"""The edge agent: radio in, signed telemetry out, sessions and joins from the fleet.

:class:`EdgeAgent` wires the finished pieces together and runs them until stopped::

    concentrator --RxFrame--> LorawanProcessor --Reading--> Batcher --> outbox --> Uplink (MQTT)
                                    |                                               ^
                                    +--JoinRequestForward--> signed JoinForward ----+ join
    fleet --join/accept--> JoinAnswer --> RX1 TX_REQUEST, session installed
    fleet --keys-------> SessionUpdate --> sessions installed / removed
    fleet --down-------> Downlink --> held; RX1 TX_REQUEST after the device's next uplink
    fleet --config-----> configuration document --> the service (runtime.AgentService)
    every [health] interval_s: signed health message --------------------------> health

Everything the gateway sends is signed with its identity key (``owlgate.codecs.signed``);
everything it acts on from the fleet must verify with the pinned fleet key, and the device
sessions inside are sealed to the gateway's sealing key (``owlgate.codecs.sealed``), so a
broker alone can neither read session keys nor make the gateway transmit.

Two MQTT connections: the :class:`~owlgate.edge.uplink.Uplink` publishes (outbox, health,
joins) and owns the gateway's ``state`` topic and Last Will; a second, subscribe-only control
connection receives ``join/accept`` and ``keys``. Keeping them apart leaves the uplink's
supervisor as it is and means a flood of telemetry never delays a join accept, which has a
5-second deadline (LoRaWAN 1.0.3 section 6.2.6). The control connection keeps a persistent
session (``clean_session`` false, a fixed client id), so the broker queues ``keys`` while it
is down. The uplink's ``online`` waits until the control subscription is up (the fleet answers
``online`` with the gateway's device sessions, and an answer sent before the subscription
exists would be lost); when the subscription comes back after ``online`` went out, ``online``
is announced again. Both connections log in with the gateway id as MQTT user name.

Once the radio is configured and the fleet's answer to ``online`` is in (the session update
marked ``complete``), the agent is *ready*: it logs ``gateway <id> ready: ...`` once
(:attr:`EdgeAgent.ready`). Every :data:`STATUS_INTERVAL_S`, and at shutdown, it writes its
counters to ``status.json`` in the state directory (atomically: a reader never sees half a
file), for a technician at the gateway and for the demo's summary.

A configuration document restarts only what it changes (:meth:`EdgeAgent.reconfigure`): the
radio lives in a :class:`RadioSlot` that every loop holds, so a new channel plan replaces the
backend under them (:meth:`EdgeAgent.restart_radio`); new MQTT settings reconnect the uplink
and restart the control loop alone (:meth:`EdgeAgent.restart_mqtt`); the rest is taken live
(:meth:`EdgeAgent.apply_live`). The state database, the batches held and the device sessions
stay as they are.

The hot path (one frame): ``process`` -> ``Batcher.add`` -> maybe a seal (one transaction) and
a wake-up of the uplink. A separate timer task seals batches on age; it sleeps until the held
batch is due, so a lone reading waits ``max_age_s``, not a polling tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiomqtt

from ..codecs.concentrator import RxFrame, TxAck, TxError, TxRequest
from ..codecs.control import (
    JoinForward,
    decode_join_answer,
    decode_session_update,
    encode_join_forward,
)
from ..codecs.errors import OwlgateError
from ..codecs.health import Health, encode_health
from ..codecs.health import RadioCounters as HealthRadioCounters
from ..codecs.node.telemetry import Reading
from ..codecs.sealed import DeviceSession, open_session
from ..codecs.signed import sign, verify
from .backends import make_radio, make_wired_bus
from .batcher import Batcher, SealedBatch
from .config import EdgeConfig, GatewayKeys, load_keys, load_mqtt_password
from .downlinks import DOWN_TOPIC, EdgeDownlinks
from .errors import EdgeError, RadioError
from .health import AgentFigures, HealthSources, collect_health
from .lorawan_proc import JoinRequestForward, LorawanProcessor, join_accept_tx
from .radio import RadioBackend, RadioCounters, RadioStatus
from .remote_config import CONFIG_TOPIC, changed_parts
from .state import StateDb, UplinkOutbox
from .uplink import TOPIC_PREFIX, Uplink, backoff_delay_s
from .wired import WiredBus

__all__ = ["AgentCounters", "EdgeAgent", "RadioSlot"]

log = logging.getLogger(__name__)

JOIN_TOPIC: Final = "join"
JOIN_ACCEPT_TOPIC: Final = "join/accept"
KEYS_TOPIC: Final = "keys"
HEALTH_TOPIC: Final = "health"
#: A join answer is only useful until RX1 (5 s after the request, LoRaWAN 1.0.3 section
#: 6.2.6); requests are kept a little longer so a late answer is logged as late, not unknown.
JOIN_KEEP_S: Final = 10.0
MAX_PENDING_JOINS: Final = 256
#: Reconnection backoff of the control connection (full jitter, as the uplink's).
CONTROL_BACKOFF_BASE_S: Final = 0.5
CONTROL_BACKOFF_CAP_S: Final = 30.0
CONTROL_CONNECT_TIMEOUT_S: Final = 10.0
#: On shutdown the uplink gets this long to publish what was just sealed; what it cannot
#: publish stays in the outbox for the next start.
SHUTDOWN_DRAIN_S: Final = 2.0
#: ``status.json`` in the state directory is rewritten this often (and at shutdown).
STATUS_FILE: Final = "status.json"
STATUS_INTERVAL_S: Final = 10.0
#: How often the readiness check looks at the radio once the sessions are in.
_READY_POLL_S: Final = 0.05
_TOKEN_MAX: Final = 0xFFFF
#: A supervised loop that fails is started again after a backoff (full jitter) from this up
#: to the cap; one that ran this long before failing starts again from the shortest delay.
LOOP_BACKOFF_BASE_S: Final = 0.5
LOOP_BACKOFF_CAP_S: Final = 30.0
LOOP_STABLE_S: Final = 60.0
#: The watchdog (systemd's, through :meth:`EdgeAgent.watchdog_ok`) counts the agent stuck
#: when the status loop has not run for this many of its intervals, or the uplink is
#: connected with data waiting and has published nothing for :data:`UPLINK_STALL_S`.
WATCHDOG_MISSED_INTERVALS: Final = 3
UPLINK_STALL_S: Final = 120.0


def _agent_version() -> str:
    try:
        return f"owlgate-edge {version('owlgate')}"
    except PackageNotFoundError:
        return "owlgate-edge unknown"


@dataclass(slots=True)
class AgentCounters:
    """What the agent did since it started (the demo shows them).

    ``readings``: readings written to the outbox (sealed into a batch: "received");
    ``rejected``: frames that produced no reading (the processor's counters say why);
    ``joins_forwarded`` / ``joins_accepted`` / ``joins_refused``: join requests sent to the
    fleet, accepts transmitted, refusals received; ``tx_sent`` / ``tx_failed``: downlinks the
    concentrator scheduled, or refused (TOO_LATE, ...) or did not answer;
    ``session_updates``: verified session updates from the fleet (each ``online`` is answered
    with at least one); ``sessions_installed`` / ``sessions_removed``: from them and from join
    answers;
    ``control_rejected``: control messages dropped (bad signature, malformed, unknown token);
    ``health_published``: health messages the broker acknowledged;
    ``wired_readings``: readings received from wired nodes (they count in ``readings`` too,
    once sealed); ``loop_restarts``: supervised loops that failed and were started again;
    ``control_connections``: control subscriptions made (one per connection of the control
    connection).
    """

    readings: int = 0
    rejected: int = 0
    joins_forwarded: int = 0
    joins_accepted: int = 0
    joins_refused: int = 0
    tx_sent: int = 0
    tx_failed: int = 0
    session_updates: int = 0
    sessions_installed: int = 0
    sessions_removed: int = 0
    control_rejected: int = 0
    health_published: int = 0
    wired_readings: int = 0
    loop_restarts: int = 0
    control_connections: int = 0


class _PendingJoin:
    __slots__ = ("forward", "heard_at")

    def __init__(self, forward: JoinRequestForward, heard_at: float) -> None:
        self.forward = forward
        self.heard_at = heard_at


class RadioSlot:
    """The agent's radio: one :class:`~owlgate.edge.radio.RadioBackend` at a time, which
    :meth:`replace` swaps for another while the agent runs.

    Everything in the agent holds the slot, not the backend, so a new channel plan (or another
    backend) reaches the receive loop, the downlink sender and the join accepts without
    restarting them: :meth:`frames` goes on with the new backend's packets once the old
    backend's iterator ended (after the packets it had already received). :attr:`counters`
    add up every backend the slot has held, so the figures in health messages never go back.
    """

    def __init__(self, backend: RadioBackend) -> None:
        self._backend = backend
        self._entered = False
        self._closed = False
        self._replaced = asyncio.Event()
        self._retired = RadioCounters()
        # Replaced backends whose last packets the consumer has not read yet: their counters
        # still move (rx_delivered).
        self._retiring: list[RadioBackend] = []
        #: Backends replaced since the slot was opened.
        self.replacements = 0

    @property
    def backend(self) -> RadioBackend:
        """The backend now."""
        return self._backend

    def _is_closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Self:
        await self._backend.__aenter__()
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        self._wake_frames()
        if self._entered:
            self._entered = False
            await self._backend.__aexit__(exc_type, exc, tb)

    async def replace(self, backend: RadioBackend) -> None:
        """Close the backend now and start ``backend`` in its place (the old one first: both
        may want the same serial port or UDP port). A ``backend`` that cannot start raises
        its error and stays in the slot, disconnected, until the next :meth:`replace`."""
        if self._closed:
            raise EdgeError("the radio is closed")
        old = self._backend
        if self._entered:
            self._entered = False
            self._retiring.append(old)
            await old.__aexit__(None, None, None)
        else:
            self._retired = _add_counters(self._retired, old.counters)
        self._backend = backend
        self.replacements += 1
        # A method, not the attribute: the slot may be closed while this awaits.
        if self._is_closed():
            # Closed while the old backend was closing: the new one is not started.
            return
        await backend.__aenter__()
        if self._is_closed():
            await backend.__aexit__(None, None, None)
            return
        self._entered = True
        self._wake_frames()

    def _wake_frames(self) -> None:
        replaced, self._replaced = self._replaced, asyncio.Event()
        replaced.set()

    async def frames(self) -> AsyncIterator[RxFrame]:
        """The packets of the backend in the slot, across replacements, until the slot
        closes."""
        while not self._closed:
            backend = self._backend
            if self._entered:
                async for rx in backend.frames():
                    yield rx
                if backend in self._retiring:
                    self._retiring.remove(backend)
                    self._retired = _add_counters(self._retired, backend.counters)
            # That backend was closed (or never started): wait for a successor that started,
            # or for the slot to close.
            while (backend is self._backend or not self._entered) and not self._closed:
                await self._replaced.wait()

    async def transmit(self, request: TxRequest, *, timeout_s: float | None = None) -> TxAck:
        """:meth:`RadioBackend.transmit` on the backend now."""
        return await self._backend.transmit(request, timeout_s=timeout_s)

    @property
    def counters(self) -> RadioCounters:
        """The counters of every backend the slot held, added up."""
        total = _add_counters(self._retired, self._backend.counters)
        for backend in self._retiring:
            total = _add_counters(total, backend.counters)
        return total

    @property
    def status(self) -> RadioStatus:
        """The backend's status now."""
        return self._backend.status


def _add_counters(first: RadioCounters, second: RadioCounters) -> RadioCounters:
    return RadioCounters(
        **{
            field.name: getattr(first, field.name) + getattr(second, field.name)
            for field in dataclasses.fields(RadioCounters)
        }
    )


class EdgeAgent:
    """One gateway's agent; ``await agent.run()`` until :meth:`stop` (or cancellation).

    ``keys`` defaults to :func:`~owlgate.edge.config.load_keys` of ``config``;
    ``health_sources`` to the real machine; ``clock`` gives UTC seconds (reading times,
    batch ages); ``rng`` draws the control connection's reconnect jitter.
    """

    def __init__(
        self,
        config: EdgeConfig,
        *,
        keys: GatewayKeys | None = None,
        health_sources: HealthSources | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.gateway_id = config.gateway.gateway_id
        self.counters = AgentCounters()
        self.control_connected = False
        self._keys = keys
        #: The broker password (``[mqtt] password_file``), read when the agent starts.
        self._mqtt_password: str | None = None
        self._health_sources = health_sources
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._stop = asyncio.Event()
        self._running = False
        self._prefix = f"{TOPIC_PREFIX}{self.gateway_id.hex()}/"
        self._joins: OrderedDict[int, _PendingJoin] = OrderedDict()
        self._join_token = 0
        self._join_queue: asyncio.Queue[JoinForward] = asyncio.Queue()
        self._batch_started = asyncio.Event()
        self._health_seq = 0
        self._started_monotonic = time.monotonic()
        # Set while run() is inside its resources; None otherwise.
        self._processor: LorawanProcessor | None = None
        self._batcher: Batcher | None = None
        self._slot: RadioSlot | None = None
        self._wired: WiredBus | None = None
        self._wired_batcher: Batcher | None = None
        self._wired_started = asyncio.Event()
        self._loop_restarts: dict[str, int] = {}
        # The supervised loops while running, by name: how to start each, and its task.
        self._loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}
        self._loop_tasks: dict[str, asyncio.Task[None]] = {}
        # When the status loop last ran, and when the uplink last made progress (monotonic).
        self._status_beat = time.monotonic()
        self._uplink_beat = (time.monotonic(), 0)
        self._uplink: Uplink | None = None
        self._state: StateDb | None = None
        self._session_keys: dict[bytes, tuple[int, bytes, bytes]] = {}
        # The control subscription: set while it is up; the generation counts subscriptions,
        # and the uplink's online records the generation it waited for (-1: it did not wait).
        self._control_ready = asyncio.Event()
        self._control_generation = 0
        self._announced_generation = -1
        self._sessions_received = asyncio.Event()
        self.ready = asyncio.Event()
        #: Called with each message on the ``config`` topic: the service
        #: (:class:`~owlgate.edge.runtime.AgentService`) verifies and applies configuration
        #: documents. Without one they are counted in ``control_rejected`` and dropped.
        self.on_config_document: Callable[[bytes], None] | None = None
        #: What ``status.json`` shows under ``config`` beside the running seq and hash.
        self.config_summary: Callable[[], dict[str, Any]] | None = None
        # Set when [health] interval_s changed while running (apply_live).
        self._health_wake = asyncio.Event()
        self._active_keys: GatewayKeys | None = None
        #: Device downlinks from the fleet, held until the device's next uplink.
        self.downlinks = EdgeDownlinks(self.gateway_id, config.gateway.state_dir, clock=clock)

    # --- what the demo reads ------------------------------------------------------------------

    @property
    def processor(self) -> LorawanProcessor | None:
        """The LoRaWAN processor while running (its counters say why frames were rejected)."""
        return self._processor

    @property
    def _radio(self) -> RadioBackend | None:
        # The backend in the slot now (what the test suites of the backends look at).
        return None if self._slot is None else self._slot.backend

    @property
    def radio_counters(self) -> RadioCounters | None:
        """The concentrator's counters while running."""
        return None if self._slot is None else self._slot.counters

    @property
    def radio_connected(self) -> bool:
        """Whether the concentrator is configured and receiving now."""
        return self._slot is not None and self._slot.status.connected

    @property
    def uplink(self) -> Uplink | None:
        """The MQTT uplink while running (``connected``, ``published``, ``reconnects``)."""
        return self._uplink

    def stop(self) -> None:
        """Ask :meth:`run` to shut down cleanly (safe from a signal handler in the loop)."""
        self._stop.set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop` is called or the task is cancelled; then seal what is held,
        give the uplink :data:`SHUTDOWN_DRAIN_S` to publish it, and close the radio, the MQTT
        connections and the state database, in that order."""
        if self._running:
            raise EdgeError("an EdgeAgent runs once at a time")
        self._running = True
        try:
            await self._run()
        finally:
            self._running = False

    async def _run(self) -> None:
        config = self.config
        keys = self._keys if self._keys is not None else load_keys(config)
        # Read once at start: a password file that cannot be read is a ConfigError now, not
        # a refused CONNECT later.
        self._mqtt_password = load_mqtt_password(config)
        state_dir = config.gateway.state_dir
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with StateDb.in_dir(state_dir, max_outbox_bytes=config.outbox.max_bytes) as state:
            processor = LorawanProcessor(state)
            loaded = processor.load_sessions()
            self._session_keys = {
                stored.dev_eui: (stored.dev_addr, stored.nwk_s_key, stored.app_s_key)
                for stored in state.sessions()
            }
            log.info("gateway %s: %d device sessions loaded", self.gateway_id.hex(), loaded)
            uplink = Uplink(
                UplinkOutbox(state),
                self.gateway_id,
                config.mqtt.host,
                config.mqtt.port,
                keepalive_s=config.mqtt.keepalive_s,
                announce_gate=self._control_gate,
                password=self._mqtt_password,
            )

            def backhaul_up() -> bool:
                # A batch sealed while this is False is marked delayed (and sent after live
                # ones once the backhaul is back).
                return uplink.connected

            batcher = Batcher(
                state,
                keys.identity,
                self.gateway_id,
                max_readings=config.batch.max_readings,
                max_age_s=config.batch.max_age_s,
                backhaul=backhaul_up,
            )
            radio = RadioSlot(make_radio(config))
            wired = make_wired_bus(config, state.node_seqs())
            wired_batcher = (
                None
                if wired is None
                else Batcher(
                    state,
                    keys.identity,
                    self.gateway_id,
                    max_readings=config.batch.max_readings,
                    max_age_s=config.batch.max_age_s,
                    backhaul=backhaul_up,
                    counters="node_seq",
                )
            )
            self._state, self._processor, self._batcher = state, processor, batcher
            self._slot, self._uplink = radio, uplink
            self._wired, self._wired_batcher = wired, wired_batcher
            self._active_keys = keys
            try:
                async with contextlib.AsyncExitStack() as stack:
                    await stack.enter_async_context(uplink)
                    await stack.enter_async_context(radio)
                    if wired is not None:
                        await stack.enter_async_context(wired)
                    await self._supervise(keys, radio, uplink, processor, batcher, state)
            finally:
                self._active_keys = None
                self._state = self._processor = self._batcher = None
                self._slot = self._uplink = None
                self._wired = self._wired_batcher = None

    async def _supervise(
        self,
        keys: GatewayKeys,
        radio: RadioSlot,
        uplink: Uplink,
        processor: LorawanProcessor,
        batcher: Batcher,
        state: StateDb,
    ) -> None:
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("receive", lambda: self._receive(radio, uplink, processor, batcher)),
            ("seal timer", lambda: self._seal_on_age(uplink, batcher, self._batch_started)),
            ("join sender", lambda: self._send_joins(keys, uplink)),
            ("control", lambda: self._control(keys, radio, processor, batcher)),
            ("health", lambda: self._report_health(keys, radio, uplink, state)),
            ("status", lambda: self._write_status_every(radio, uplink, state)),
            ("downlink sender", lambda: self.downlinks.send(radio)),
        ]
        wired, wired_batcher = self._wired, self._wired_batcher
        if wired is not None and wired_batcher is not None:
            loops += [
                ("wired receive", lambda: self._receive_wired(wired, wired_batcher, uplink)),
                (
                    "wired seal timer",
                    lambda: self._seal_on_age(uplink, wired_batcher, self._wired_started),
                ),
            ]
        self._loops = dict(loops)
        self._loop_tasks = {
            name: asyncio.create_task(self._supervised(name, loop), name=name)
            for name, loop in loops
        }
        readiness = asyncio.create_task(self._announce_ready(radio), name="readiness")
        stopper = asyncio.create_task(self._stop.wait(), name="stop")
        # The supervised loops never end by themselves (_supervised starts them again), and
        # one may be replaced while running (_restart_loop): only these two are waited for.
        try:
            await asyncio.wait([readiness, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks = [*self._loop_tasks.values(), readiness]
            self._loops, self._loop_tasks = {}, {}
            for task in (*tasks, stopper):
                task.cancel()
            await asyncio.wait([*tasks, stopper])
            self.control_connected = False
            self._control_ready.clear()
            await self._shut_down(uplink, batcher)
            self._write_status(radio, uplink, state)
        if readiness.done() and not readiness.cancelled():
            # The readiness task ends by itself only with an error (a bug).
            error = readiness.exception()
            if error is not None:
                raise error

    async def _restart_loop(self, name: str) -> None:
        """Stop the supervised loop ``name`` and start it again (the others go on)."""
        task, start = self._loop_tasks.get(name), self._loops.get(name)
        if task is None or start is None:
            raise EdgeError(f"no {name} loop is running")
        task.cancel()
        await asyncio.wait([task])
        if self._loops.get(name) is start:
            self._loop_tasks[name] = asyncio.create_task(self._supervised(name, start), name=name)

    async def _supervised(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``loop`` for good: when it fails (or ends, which it should never do), log it
        with its traceback, count it, and start it again after a backoff, while the other
        loops go on. A loop that ran :data:`LOOP_STABLE_S` starts again from the shortest
        delay."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await loop()
                problem = "ended by itself"
            except Exception as err:  # the supervisor's job: any failure of the loop
                problem = f"failed: {type(err).__name__}: {err}"
                log.error("%s loop %s", name, problem, exc_info=err)
            self.counters.loop_restarts += 1
            self._loop_restarts[name] = self._loop_restarts.get(name, 0) + 1
            if time.monotonic() - started >= LOOP_STABLE_S:
                attempt = 0
            delay_s = backoff_delay_s(attempt, LOOP_BACKOFF_BASE_S, LOOP_BACKOFF_CAP_S, self._rng)
            attempt += 1
            log.warning("%s loop %s; restarting it in %.2f s", name, problem, delay_s)
            await asyncio.sleep(delay_s)

    async def _shut_down(self, uplink: Uplink, batcher: Batcher) -> None:
        for held in (batcher, self._wired_batcher):
            if held is None:
                continue
            try:
                self._seal(held, uplink)
            except OwlgateError as err:
                log.error(
                    "the last batch could not be written (%d readings lost): %s", len(held), err
                )
        await self._drain(uplink)

    async def _drain(self, uplink: Uplink) -> None:
        # Bounded: a backhaul that is down must not keep the agent from stopping (or from
        # taking new MQTT settings).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_DRAIN_S):
                # The outbox has no event to wait on; polling for two seconds at most is fine.
                while uplink.connected and self._outbox_depth() > 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)

    def _outbox_depth(self) -> int:
        return 0 if self._state is None else self._state.depth

    # --- the hot path -------------------------------------------------------------------------

    def _seal(self, batcher: Batcher, uplink: Uplink) -> None:
        sealed = batcher.seal(self._clock())
        if sealed is not None:
            self._sealed(batcher, sealed, uplink)

    def _sealed(self, batcher: Batcher, sealed: SealedBatch, uplink: Uplink) -> None:
        self.counters.readings += sealed.count
        uplink.notify()
        wired = self._wired
        if wired is not None and batcher is self._wired_batcher:
            # Only now, with the batch in the outbox, may the nodes forget these readings.
            for dev_eui, seq in sealed.counters.items():
                wired.commit(dev_eui, seq)

    async def _receive(
        self,
        radio: RadioBackend,
        uplink: Uplink,
        processor: LorawanProcessor,
        batcher: Batcher,
    ) -> None:
        clock = self._clock
        process = processor.process
        add = batcher.add
        counters = self.counters
        started = self._batch_started
        held_downlinks = self.downlinks.pending
        async for rx in radio.frames():
            now = clock()
            result = process(rx, now)
            if type(result) is Reading:
                if held_downlinks and result.dev_eui in held_downlinks:
                    # Before the batch write: RX1 opens 1 s after this uplink.
                    self.downlinks.on_uplink(
                        result.dev_eui, rx, self._session_keys.get(result.dev_eui)
                    )
                try:
                    sealed = add(result, now)
                except OwlgateError as err:
                    # The readings stay held; the timer tries again.
                    log.error("writing a telemetry batch failed, will retry: %s", err)
                    continue
                if sealed is not None:
                    self._sealed(batcher, sealed, uplink)
                elif len(batcher) == 1:
                    started.set()
            elif isinstance(result, JoinRequestForward):
                self._queue_join(result, now)
            else:
                counters.rejected += 1

    async def _receive_wired(self, wired: WiredBus, batcher: Batcher, uplink: Uplink) -> None:
        started = self._wired_started
        async for reading in wired.readings():
            now = self._clock()
            self.counters.wired_readings += 1
            try:
                sealed = batcher.add(reading, now)
            except OwlgateError as err:
                # Held, and not committed: the node keeps its copy until a seal succeeds.
                log.error("writing a wired telemetry batch failed, will retry: %s", err)
                continue
            if sealed is not None:
                self._sealed(batcher, sealed, uplink)
            elif len(batcher) == 1:
                started.set()

    async def _seal_on_age(self, uplink: Uplink, batcher: Batcher, started: asyncio.Event) -> None:
        while True:
            due_at = batcher.next_due_at()
            if due_at is None:
                started.clear()
                await started.wait()
                continue
            delay = due_at - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if batcher.due(self._clock()):
                try:
                    self._seal(batcher, uplink)
                except OwlgateError as err:
                    log.error("sealing a telemetry batch failed, will retry: %s", err)
                    await asyncio.sleep(batcher.max_age_s)

    # --- joins --------------------------------------------------------------------------------

    def _queue_join(self, forward: JoinRequestForward, now: float) -> None:
        self._join_token = self._join_token % _TOKEN_MAX + 1
        token = self._join_token
        joins = self._joins
        joins.pop(token, None)
        joins[token] = _PendingJoin(forward, time.monotonic())
        while len(joins) > MAX_PENDING_JOINS:
            joins.popitem(last=False)
        self._join_queue.put_nowait(JoinForward(token, forward.phy_payload, int(now)))

    async def _send_joins(self, keys: GatewayKeys, uplink: Uplink) -> None:
        while True:
            message = await self._join_queue.get()
            payload = sign(encode_join_forward(message), keys.identity)
            if await uplink.publish_now(JOIN_TOPIC, payload):
                self.counters.joins_forwarded += 1
            else:
                log.warning("join request (token %d) not forwarded: no backhaul", message.token)

    def _take_join(self, token: int) -> JoinRequestForward | None:
        cutoff = time.monotonic() - JOIN_KEEP_S
        joins = self._joins
        while joins:
            first = next(iter(joins.values()))
            if first.heard_at >= cutoff:
                break
            joins.popitem(last=False)
        pending = joins.pop(token, None)
        return None if pending is None else pending.forward

    # --- control from the fleet ---------------------------------------------------------------

    async def _control(
        self,
        keys: GatewayKeys,
        radio: RadioBackend,
        processor: LorawanProcessor,
        batcher: Batcher,
    ) -> None:
        accept_topic = self._prefix + JOIN_ACCEPT_TOPIC
        keys_topic = self._prefix + KEYS_TOPIC
        down_topic = self._prefix + DOWN_TOPIC
        config_topic = self._prefix + CONFIG_TOPIC
        try:
            await self._control_connection(
                keys,
                radio,
                processor,
                batcher,
                (accept_topic, keys_topic, down_topic, config_topic),
            )
        finally:
            # Cancelled (the agent stops, or MQTT settings changed): no subscription now.
            self.control_connected = False
            self._control_ready.clear()

    async def _control_connection(
        self,
        keys: GatewayKeys,
        radio: RadioBackend,
        processor: LorawanProcessor,
        batcher: Batcher,
        topics: tuple[str, str, str, str],
    ) -> None:
        mqtt = self.config.mqtt
        accept_topic, keys_topic, down_topic, config_topic = topics
        attempt = 0
        while True:
            client = aiomqtt.Client(
                mqtt.host,
                mqtt.port,
                identifier=f"owlgate-gw-{self.gateway_id.hex()}-control",
                username=self.gateway_id.hex(),
                password=self._mqtt_password,
                protocol=aiomqtt.ProtocolVersion.V311,
                # Persistent: the broker keeps the subscription and queues what the fleet
                # sends while this connection is down (MQTT 3.1.1 section 3.1.2.4).
                clean_session=False,
                keepalive=mqtt.keepalive_s,
                timeout=CONTROL_CONNECT_TIMEOUT_S,
            )
            try:
                async with client:
                    await client.subscribe(
                        [(accept_topic, 1), (keys_topic, 1), (down_topic, 1), (config_topic, 1)]
                    )
                    self.control_connected = True
                    self.counters.control_connections += 1
                    attempt = 0
                    log.info("control subscription on %s:%d", mqtt.host, mqtt.port)
                    await self._control_subscribed()
                    async for message in client.messages:
                        payload = message.payload
                        topic = message.topic.value
                        if topic == accept_topic:
                            await self._on_join_answer(keys, radio, processor, batcher, payload)
                        elif topic == keys_topic:
                            self._on_session_update(keys, processor, batcher, payload)
                        elif topic == down_topic and isinstance(payload, bytes):
                            self.downlinks.receive(payload, keys.fleet)
                        elif topic == config_topic and isinstance(payload, bytes):
                            self._on_config_document(payload)
            except aiomqtt.MqttError as err:
                self.control_connected = False
                self._control_ready.clear()
                delay_s = backoff_delay_s(
                    attempt, CONTROL_BACKOFF_BASE_S, CONTROL_BACKOFF_CAP_S, self._rng
                )
                attempt += 1
                log.warning("control connection: %s; reconnecting in %.2f s", err, delay_s)
                await asyncio.sleep(delay_s)

    async def _control_gate(self) -> None:
        # The uplink awaits this before each "online" (and may cancel it after a while): the
        # generation is recorded only if the subscription was up when online went out.
        self._announced_generation = -1
        await self._control_ready.wait()
        self._announced_generation = self._control_generation

    async def _control_subscribed(self) -> None:
        self._control_generation += 1
        self._control_ready.set()
        uplink = self._uplink
        # The fleet answers "online" with the device sessions. If online went out before this
        # subscription existed, that answer may be lost: ask again.
        if (
            uplink is not None
            and uplink.announced
            and self._announced_generation != self._control_generation
        ):
            self._announced_generation = self._control_generation
            if await uplink.announce():
                log.info("announced online again for the new control subscription")

    def _install(
        self,
        processor: LorawanProcessor,
        batcher: Batcher,
        session: DeviceSession,
        activation: str,
        last_f_cnt: int | None,
    ) -> None:
        # Seal first: a held reading of the device's old session must not write its old
        # counter over the new session's (StateDb.put advances stored counters).
        uplink = self._uplink
        if uplink is not None:
            self._seal(batcher, uplink)
        processor.add_session(
            dev_eui=session.dev_eui,
            dev_addr=session.dev_addr,
            profile_id=session.profile_id,
            nwk_s_key=session.nwk_s_key,
            app_s_key=session.app_s_key,
            activation=activation,
            last_f_cnt=last_f_cnt,
            now=self._clock(),
        )
        self._session_keys[session.dev_eui] = (
            session.dev_addr,
            session.nwk_s_key,
            session.app_s_key,
        )
        self.counters.sessions_installed += 1

    async def _on_join_answer(
        self,
        keys: GatewayKeys,
        radio: RadioBackend,
        processor: LorawanProcessor,
        batcher: Batcher,
        data: bytes,
    ) -> None:
        try:
            answer = decode_join_answer(verify(data, keys.fleet).payload)
            request = self._take_join(answer.token)
            if request is None:
                self.counters.control_rejected += 1
                log.warning("join answer for unknown or expired token %d dropped", answer.token)
                return
            if not answer.accepted or answer.accept_phy is None or answer.sealed_session is None:
                self.counters.joins_refused += 1
                log.info("join of device %016x refused: %s", request.dev_eui, answer.refusal)
                return
            session = open_session(keys.sealing, self.gateway_id, answer.sealed_session)
            if int.from_bytes(session.dev_eui, "big") != request.dev_eui:
                self.counters.control_rejected += 1
                log.warning(
                    "join answer for token %d carries another device's session", answer.token
                )
                return
            request_tx = join_accept_tx(request, answer.accept_phy, token=1)
        except OwlgateError as err:
            self.counters.control_rejected += 1
            log.warning("join answer dropped: %s", err)
            return
        # Transmit before anything else: RX1 is 5 s after the request and the fleet's round
        # trip has used some of it.
        try:
            ack = await radio.transmit(request_tx)
        except RadioError as err:
            self.counters.tx_failed += 1
            log.warning("join accept for %016x not transmitted: %s", request.dev_eui, err)
            return
        if ack.error is not TxError.NONE:
            self.counters.tx_failed += 1
            log.warning(
                "join accept for %016x refused by the concentrator: %s",
                request.dev_eui,
                ack.error.name,
            )
            return
        self.counters.tx_sent += 1
        self.counters.joins_accepted += 1
        try:
            # A join resets the uplink counter (LoRaWAN 1.0.3 section 6.2.5): a fresh session.
            self._install(processor, batcher, session, "otaa", None)
        except OwlgateError as err:
            self.counters.control_rejected += 1
            log.error("session of joined device %016x not installed: %s", request.dev_eui, err)

    def _on_session_update(
        self, keys: GatewayKeys, processor: LorawanProcessor, batcher: Batcher, data: bytes
    ) -> None:
        try:
            update = decode_session_update(verify(data, keys.fleet).payload)
        except OwlgateError as err:
            self.counters.control_rejected += 1
            log.warning("session update dropped: %s", err)
            return
        self.counters.session_updates += 1
        for sealed in update.sealed_sessions:
            try:
                session = open_session(keys.sealing, self.gateway_id, sealed)
                self._install(
                    processor, batcher, session, "abp", self._start_counter(processor, session)
                )
            except OwlgateError as err:
                self.counters.control_rejected += 1
                log.warning("a session of a session update dropped: %s", err)
        for dev_eui in update.removed:
            if processor.remove_session(dev_eui):
                self._session_keys.pop(dev_eui, None)
                self.counters.sessions_removed += 1
        if update.complete:
            self._sessions_received.set()

    def _start_counter(self, processor: LorawanProcessor, session: DeviceSession) -> int | None:
        # f_cnt_up is the next counter the fleet expects. The same session sent again (the
        # fleet republishes after a restart) must not move the counter back and re-open
        # replays (LoRaWAN 1.0.3 section 4.3.1.5); a new session (other keys) starts afresh.
        from_fleet = session.f_cnt_up - 1 if session.f_cnt_up > 0 else None
        known = self._session_keys.get(session.dev_eui)
        if known != (session.dev_addr, session.nwk_s_key, session.app_s_key):
            return from_fleet
        here = processor.last_f_cnt(session.dev_eui)
        if here is None:
            return from_fleet
        return here if from_fleet is None else max(here, from_fleet)

    # --- configuration documents -----------------------------------------------------------

    def _on_config_document(self, payload: bytes) -> None:
        handler = self.on_config_document
        if handler is None:
            self.counters.control_rejected += 1
            log.warning("configuration document dropped: this agent runs without a service")
            return
        handler(payload)

    def _config_status(self) -> dict[str, Any]:
        config = self.config
        summary: dict[str, Any] = {
            "source": "factory" if config.document_seq is None else "document",
            "seq": config.document_seq,
            "hash": config.running_hash.hex(),
        }
        if config.devices is not None:
            known = self._session_keys
            summary["devices"] = len(config.devices)
            summary["devices_without_session"] = sum(
                dev_eui not in known for dev_eui in config.devices
            )
        hook = self.config_summary
        return summary if hook is None else summary | hook()

    def apply_live(self, config: EdgeConfig) -> None:
        """Run with ``config`` from now on, for the settings that need no restart: the batch
        limits (from the next reading on), the health interval (the wait starts again), the
        expected devices and the outbox bound. The radio and MQTT settings of ``config`` must
        be the running ones (:meth:`reconfigure` restarts those parts first)."""
        state = self._state
        if state is not None and config.outbox.max_bytes != state.max_outbox_bytes:
            state.set_max_outbox_bytes(config.outbox.max_bytes)
        self.config = config
        for batcher in (self._batcher, self._wired_batcher):
            if batcher is not None:
                batcher.max_readings = config.batch.max_readings
                batcher.max_age_s = config.batch.max_age_s
        self._health_wake.set()

    async def reconfigure(self, config: EdgeConfig) -> frozenset[str]:
        """Run with ``config`` from now on, restarting only the parts whose settings differ
        from the running ones (:func:`~owlgate.edge.remote_config.changed_parts`): the radio
        backend (:meth:`restart_radio`), the MQTT connections (:meth:`restart_mqtt`), then
        the rest live (:meth:`apply_live`); the parts that changed.

        Raises what the failing step raises (an :class:`~owlgate.codecs.errors.OwlgateError`);
        the parts done before it run their new settings, the others their old ones, and
        :attr:`config` says which: ``reconfigure`` with the previous configuration then
        restores only what was changed. :class:`EdgeError` while not running."""
        if self._slot is None or self._uplink is None:
            raise EdgeError("the agent is not running")
        parts = changed_parts(self.config, config)
        if "radio" in parts:
            await self.restart_radio(config)
        if "mqtt" in parts:
            await self.restart_mqtt(config)
        self.apply_live(config)
        return parts

    async def restart_radio(self, config: EdgeConfig) -> None:
        """Replace the radio backend with the one ``config``'s ``[radio]`` describes (the
        MQTT connections, the outbox and the held readings are not touched; the radio's
        RADIO_CONFIG carries ``config``'s id). :attr:`config` takes ``config.radio`` once the
        new backend is built. Raises :class:`~owlgate.edge.errors.ConfigError` when it cannot
        be built (nothing changed), the backend's error when it cannot start."""
        slot = self._slot
        if slot is None:
            raise EdgeError("the agent is not running")
        backend = make_radio(config)
        log.info(
            "radio: restarting it with %s (%d channels, %d dBm)",
            config.radio.where,
            len(config.radio.channels),
            config.radio.tx_power_dbm,
        )
        self.config = dataclasses.replace(self.config, radio=config.radio)
        await slot.replace(backend)

    async def restart_mqtt(self, config: EdgeConfig) -> None:
        """Connect the uplink and the control connection again with ``config``'s ``[mqtt]``
        (broker, keep-alive, password); the held batches are sealed into the outbox first,
        and the radio keeps receiving: what arrives meanwhile is batched and published once
        the new connection is up. Raises :class:`~owlgate.edge.errors.ConfigError` when the
        password file cannot be read (nothing changed)."""
        uplink = self._uplink
        if uplink is None:
            raise EdgeError("the agent is not running")
        password = load_mqtt_password(config)
        for held in (self._batcher, self._wired_batcher):
            if held is not None:
                self._seal(held, uplink)
        # What the connection can still deliver goes out before it closes (as at a stop):
        # an entry in flight when it closes would be sent twice.
        await self._drain(uplink)
        mqtt = config.mqtt
        log.info("MQTT: reconnecting to %s:%d", mqtt.host, mqtt.port)
        self.config = dataclasses.replace(self.config, mqtt=mqtt)
        self._mqtt_password = password
        await self._restart_loop("control")
        await uplink.reconnect(
            mqtt.host, mqtt.port, keepalive_s=mqtt.keepalive_s, password=password
        )

    async def heartbeat_now(self) -> bool:
        """Publish a health message now, at QoS 1; True once the broker acknowledged it
        (False while not running or without a connection)."""
        radio, uplink, state, keys = self._slot, self._uplink, self._state, self._active_keys
        if radio is None or uplink is None or state is None or keys is None:
            return False
        payload = sign(encode_health(await self._health(radio, uplink, state)), keys.identity)
        if not await uplink.publish_now(HEALTH_TOPIC, payload):
            return False
        self.counters.health_published += 1
        return True

    def send_durably(self, suffix: str, payload: bytes) -> bool:
        """Write ``payload`` for ``suffix`` to the outbox (sent at least once, across restarts
        and outages); False while the agent's state database is not open. Raises
        :class:`~owlgate.edge.state.StateError` when the write fails."""
        state, uplink = self._state, self._uplink
        if state is None or uplink is None:
            return False
        state.put(suffix, payload, self._clock())
        uplink.notify()
        return True

    @property
    def radio_error(self) -> str | None:
        """Why the radio is not connected now (its last error), None while connected or
        before any attempt failed."""
        radio = self._slot
        if radio is None or radio.status.connected:
            return None
        return radio.status.last_error

    # --- readiness and status -------------------------------------------------------------

    async def _announce_ready(self, radio: RadioBackend) -> None:
        await self._sessions_received.wait()
        # The radio has no "configured" event of its own; this runs once, at start.
        while not radio.status.connected:  # noqa: ASYNC110
            await asyncio.sleep(_READY_POLL_S)
        processor = self._processor
        sessions = 0 if processor is None else processor.session_count
        log.info(
            "gateway %s ready: radio on %s configured, MQTT connected, %d device sessions",
            self.gateway_id.hex(),
            radio.status.port,
            sessions,
        )
        self.ready.set()
        # Supervised tasks run until the agent stops (one that ends by itself stops it).
        await self._stop.wait()

    async def _write_status_every(
        self, radio: RadioBackend, uplink: Uplink, state: StateDb
    ) -> None:
        while True:
            self._status_beat = time.monotonic()
            await asyncio.sleep(STATUS_INTERVAL_S)
            self._write_status(radio, uplink, state)

    def watchdog_ok(self) -> bool:
        """False when the agent is stuck, so the service manager's watchdog restarts it: the
        status loop has not run for :data:`WATCHDOG_MISSED_INTERVALS` intervals (the event
        loop or the supervisor is blocked), or the uplink is connected with data waiting and
        has published nothing for :data:`UPLINK_STALL_S`. True while not running."""
        now = time.monotonic()
        if not self._running:
            return True
        if now - self._status_beat > WATCHDOG_MISSED_INTERVALS * STATUS_INTERVAL_S:
            log.error("watchdog: the status loop last ran %.0f s ago", now - self._status_beat)
            return False
        uplink, state = self._uplink, self._state
        if uplink is None or state is None:
            return True
        since, published = self._uplink_beat
        if published != uplink.published or not uplink.connected or state.depth == 0:
            self._uplink_beat = (now, uplink.published)
            return True
        if now - since > UPLINK_STALL_S:
            log.error(
                "watchdog: the uplink is connected with %d messages waiting and has published"
                " nothing for %.0f s",
                state.depth,
                now - since,
            )
            return False
        return True

    @property
    def outbox_depth(self) -> int | None:
        """Messages waiting in the outbox while running (None otherwise)."""
        return None if self._state is None else self._state.depth

    def status(self, radio: RadioBackend, uplink: Uplink, state: StateDb) -> dict[str, Any]:
        """What ``status.json`` holds: the agent's, the radio's, the LoRaWAN processor's, the
        uplink's and the outbox's counters now."""
        now = self._clock()
        outbox = state.stats(now)
        processor = self._processor
        return {
            "gateway_id": self.gateway_id.hex(),
            "written_at": now,
            "agent_version": _agent_version(),
            "config_hash": self.config.running_hash.hex(),
            "config": self._config_status(),
            "ready": self.ready.is_set(),
            "agent": asdict(self.counters),
            "radio": {
                "backend": self.config.radio.backend,
                "port": radio.status.port,
                "connected": radio.status.connected,
                "last_error": radio.status.last_error,
            }
            | asdict(radio.counters)
            | self._radio_extra(radio),
            "lorawan": {}
            if processor is None
            else {"sessions": processor.session_count} | processor.counters.as_dict(),
            "uplink": {
                "connected": uplink.connected,
                "published": uplink.published,
                "reconnects": uplink.reconnects,
                "connections": uplink.connections,
                "restarts": uplink.restarts,
                "last_rtt_ms": uplink.last_rtt_ms,
                "direct_dropped": uplink.direct_dropped,
            },
            "control": {"connected": self.control_connected},
            "downlinks": self.downlinks.counters.as_dict(),
            "outbox": {
                "depth": outbox.depth,
                "bytes": outbox.bytes,
                "used_bytes": outbox.used_bytes,
                "max_bytes": outbox.max_bytes,
                "warning": outbox.warning,
                "oldest_age_s": outbox.oldest_age_s,
                "evicted": outbox.evicted,
                "evicted_bytes": outbox.evicted_bytes,
                "held_dropped": self._held_dropped(),
            },
            "loops": {"restarts": dict(self._loop_restarts)},
            "wired": self._wired_status(),
        }

    def _radio_extra(self, radio: RadioBackend) -> dict[str, Any]:
        # What only one kind of backend knows: a packet forwarder's own stat reports.
        if self.config.radio.backend != "semtech-udp":
            return {}
        from .semtech_udp import SemtechUdpBackend

        if isinstance(radio, RadioSlot):
            radio = radio.backend
        if not isinstance(radio, SemtechUdpBackend):
            return {}
        stats = radio.forwarder_stats
        return {
            "foreign_datagrams": radio.foreign_datagrams,
            "forwarder": {
                "reports": stats.reports,
                "rx_received": stats.rx_received,
                "rx_ok": stats.rx_ok,
                "rx_forwarded": stats.rx_forwarded,
                "tx_requested": stats.tx_requested,
                "tx_sent": stats.tx_sent,
            },
        }

    def _held_dropped(self) -> int:
        return sum(
            batcher.dropped
            for batcher in (self._batcher, self._wired_batcher)
            if batcher is not None
        )

    def _wired_status(self) -> dict[str, Any] | None:
        wired = self._wired
        if wired is None:
            return None
        return {
            "port": wired.status.port,
            "connected": wired.status.connected,
            "last_error": wired.status.last_error,
            "counters": asdict(wired.counters),
            "nodes": [asdict(node) | {"dev_eui": node.dev_eui.hex()} for node in wired.nodes()],
        }

    def _write_status(self, radio: RadioBackend, uplink: Uplink, state: StateDb) -> None:
        path = Path(self.config.gateway.state_dir) / STATUS_FILE
        partial = path.with_name(path.name + ".partial")
        try:
            partial.write_text(json.dumps(self.status(radio, uplink, state), indent=1) + "\n")
            os.replace(partial, path)
        except OSError as err:
            # Informational only: a full disk must not stop the agent over it.
            log.warning("could not write %s: %s", path, err)

    # --- health -------------------------------------------------------------------------------

    async def _report_health(
        self, keys: GatewayKeys, radio: RadioBackend, uplink: Uplink, state: StateDb
    ) -> None:
        while True:
            # The interval may change while running (apply_live): the wait starts again.
            self._health_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.health.interval_s):
                    await self._health_wake.wait()
            if self._health_wake.is_set():
                continue
            payload = sign(encode_health(await self._health(radio, uplink, state)), keys.identity)
            if await uplink.publish_now(HEALTH_TOPIC, payload):
                self.counters.health_published += 1

    async def _health(self, radio: RadioBackend, uplink: Uplink, state: StateDb) -> Health:
        now = self._clock()
        outbox = state.stats(now)
        counters = radio.counters
        figures = AgentFigures(
            gateway_id=self.gateway_id,
            seq=self._health_seq,
            agent_started_s=self._started_monotonic,
            agent_version=_agent_version(),
            config_hash=self.config.running_hash,
            interval_s=self.config.health.interval_s,
            radio=HealthRadioCounters(
                received=counters.rx_received,
                crc_ok=counters.rx_crc_ok,
                crc_bad=counters.rx_crc_bad,
                forwarded=counters.rx_delivered,
                transmitted=counters.tx_scheduled,
            ),
            backhaul_rtt_ms=uplink.last_rtt_ms,
            outbox_depth=outbox.depth,
            outbox_oldest_age_s=None if outbox.oldest_age_s is None else int(outbox.oldest_age_s),
            outbox_evicted=outbox.evicted,
            outbox_bytes=outbox.used_bytes,
            outbox_max_bytes=outbox.max_bytes,
            reconnects=uplink.reconnects + counters.reconnects,
        )
        self._health_seq += 1
        # collect_health reads files and may run vcgencmd: off the event loop.
        return await asyncio.to_thread(
            collect_health,
            figures,
            self.config.gateway.state_dir,
            self._health_sources,
            now_s=now,
        )
