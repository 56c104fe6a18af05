"""The gateway's bus master for wired sensor nodes: wired protocol v1
(``docs/protocol/wired-v1.md``) on a UART or an RS-485 line.

Three layers, as on every wire of owlgate: pyserial-asyncio moves the bytes (transport),
:class:`~owlgate.codecs.node.framing.FrameDecoder` and :mod:`owlgate.codecs.node.wired` turn
them into messages (framing, pure), and :class:`WiredBus` polls the nodes in turn, matches
each answer to the one request outstanding and hands readings to the consumer (api).

The bus is half-duplex: one supervisor task owns the port, sends one request at a time and
waits for that node's answer (or ``response_timeout_s``) before the next, so on a shared
RS-485 pair only one side ever transmits. When the line goes away (USB adapter unplugged,
read error) it reopens the port as soon as the device path is back, or after an exponential
backoff while the port is there but failing (:class:`~owlgate.edge.link.ReconnectingLink`).

Lossless rule (protocol section "Acknowledgment"): a POLL acknowledges only what the agent
declared durable through :meth:`WiredBus.commit`, never what was merely delivered, so a
gateway that crashes between delivery and storage gets the same readings again from the node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ..codecs.errors import CodecError
from ..codecs.node import cbor
from ..codecs.node.framing import FrameDecoder, encode_frame
from ..codecs.node.telemetry import Reading
from ..codecs.node.wired import (
    ADDRESS_MAX,
    ADDRESS_MIN,
    ERROR_CODES,
    GetStatus,
    Message,
    Nothing,
    Poll,
    Readings,
    Settings,
    SettingsAck,
    Status,
    decode_message,
    encode_message,
)
from ..codecs.node.wired import Error as NodeError
from .errors import EdgeError
from .link import ConsumerQueue, LinkOwner, ReconnectingLink, serial_session

log = logging.getLogger(__name__)

#: Suggested line rate (protocol section "Transport"), 8N1.
DEFAULT_BAUDRATE: Final = 115_200
DEFAULT_POLL_INTERVAL_S: Final = 5.0
#: Section "Timing": a node answers within 50 ms; 0.5 s leaves room for slow interpreters.
DEFAULT_RESPONSE_TIMEOUT_S: Final = 0.5
DEFAULT_SILENT_AFTER_POLLS: Final = 3
#: Polls of one node in a row while it says it has more, before the next node's turn.
MAX_POLLS_IN_A_ROW: Final = 16
#: Readings held for a slow consumer; at this depth the bus stops asking for more (the nodes
#: keep them: nothing is dropped).
MAX_QUEUED_READINGS: Final = 4096
OPEN_TIMEOUT_S: Final = 5.0
RECONNECT_INITIAL_S: Final = 0.5
RECONNECT_MAX_S: Final = 10.0

_READ_SIZE: Final = 4096
_U32_END: Final = 1 << 32
_EUI_SIZE: Final = 8
_ERROR_NAMES: Final = dict(ERROR_CODES)


class WiredBusError(EdgeError):
    """The wired bus could not do what was asked: a bad node specification, a commit of a
    reading never delivered, an unknown node."""


class WiredBusTimeout(WiredBusError):
    """Waiting for the bus (to connect, say) took longer than allowed."""


def settings_version(settings: Mapping[str, int | float | bool]) -> int:
    """The version number the host gives a set of node settings: the CRC-32 of their
    deterministic CBOR, so a version names its content (0, which means "defaults", becomes 1).
    """
    value = zlib.crc32(cbor.dumps(dict(settings)))
    return value if value != 0 else 1


@dataclass(frozen=True, slots=True)
class WiredNodeSpec:
    """One configured node: bus ``address`` (1..247), ``dev_eui`` (8 bytes) it must report,
    and the ``settings`` it must run with (None: whatever it has)."""

    address: int
    dev_eui: bytes
    settings: Mapping[str, int | float | bool] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.address, bool) or not ADDRESS_MIN <= self.address <= ADDRESS_MAX:
            raise WiredBusError(
                f"node address must be {ADDRESS_MIN}..{ADDRESS_MAX}, got {self.address!r}"
            )
        if not isinstance(self.dev_eui, bytes) or len(self.dev_eui) != _EUI_SIZE:
            raise WiredBusError(f"node {self.address}: dev_eui must be 8 bytes")
        if self.settings is not None:
            try:
                # The node refuses what the protocol cannot carry: refuse it here, at start.
                encode_message(Settings(self.address, 1, dict(self.settings)))
            except CodecError as err:
                raise WiredBusError(f"node {self.address}: settings: {err.message}") from err


@dataclass(frozen=True, slots=True)
class WiredNodeStatus:
    """One node as the bus master sees it now.

    ``answering``: it answered within the last ``silent_after_polls`` requests; ``last_seen``:
    UTC seconds of its last valid answer; ``polls`` / ``timeouts``: requests sent and left
    unanswered; ``readings``: delivered; ``duplicates``: received again and dropped;
    ``refused``: readings refused because the node reported another EUI;
    ``settings_version``: the version the node reports applied (None before it answered),
    ``settings_wanted``: the configured one (None: no settings configured);
    ``committed_seq`` / ``delivered_seq``: acknowledged and delivered sequence numbers;
    ``node_buffered`` / ``node_dropped`` / ``node_uptime_s``: from its last STATUS.
    """

    address: int
    dev_eui: bytes
    answering: bool
    last_seen: float | None
    polls: int
    timeouts: int
    readings: int
    duplicates: int
    refused: int
    settings_version: int | None
    settings_wanted: int | None
    committed_seq: int
    delivered_seq: int
    last_error: str | None
    node_buffered: int | None
    node_dropped: int | None
    node_uptime_s: int | None


@dataclass(slots=True)
class WiredCounters:
    """What the bus master counted since it was created (across reconnections).

    - ``crc_errors`` / ``frame_errors``: frames dropped for a bad CRC, or bad framing (COBS,
      length, overflow);
    - ``invalid_messages``: intact frames holding no valid v1 message;
    - ``wrong_address``: answers from another address than the one asked;
    - ``unexpected``: valid answers that arrived when none was awaited, or of the wrong kind;
    - ``echoes``: the host's own requests read back (an RS-485 transceiver whose receiver
      stays enabled while sending);
    - ``timeouts``: requests without an answer within ``response_timeout_s``;
    - ``duplicates``: readings received again and dropped; ``eui_mismatches``: answers that
      named another EUI than the node's configured one (their readings refused);
    - ``node_errors``: ERROR answers; ``reconnects``: the port re-opened after a loss.
    """

    crc_errors: int = 0
    frame_errors: int = 0
    invalid_messages: int = 0
    wrong_address: int = 0
    unexpected: int = 0
    echoes: int = 0
    timeouts: int = 0
    duplicates: int = 0
    eui_mismatches: int = 0
    node_errors: int = 0
    reconnects: int = 0


@dataclass(frozen=True, slots=True)
class WiredBusStatus:
    """``connected`` while the port is open; ``last_error`` why the last connection ended or
    failed (None if none did)."""

    connected: bool
    port: str
    last_error: str | None


@dataclass(slots=True)
class _NodeState:
    spec: WiredNodeSpec
    wanted: int | None
    committed: int
    delivered: int
    applied: int | None = None
    refused_version: int | None = None
    answering: bool = False
    silent_logged: bool = False
    ever_answered: bool = False
    need_status: bool = True
    misses: int = 0
    polls: int = 0
    timeouts: int = 0
    readings: int = 0
    duplicates: int = 0
    refused: int = 0
    last_seen: float | None = None
    last_error: str | None = None
    status: Status | None = None


class WiredBus(LinkOwner[WiredBusStatus]):
    """The bus master for the wired nodes ``nodes`` on ``port`` (a device path such as
    ``/dev/ttyUSB0`` or a pyserial URL).

    Every ``poll_interval_s`` it polls each node in turn (again at once while a node says it
    has more), sends SETTINGS to a node whose applied version differs from its configured
    one, and marks a node silent after ``silent_after_polls`` unanswered requests.
    ``committed`` maps a node's DevEUI to the last sequence number already stored durably
    (from a previous run): the first POLL acknowledges it, and readings up to it that arrive
    again are dropped as duplicates.

    Use as an async context manager; read :meth:`readings`; call :meth:`commit` once readings
    are durable. ``rng`` draws the reconnect jitter (seed it to reproduce a run).
    """

    def __init__(
        self,
        port: str,
        nodes: Sequence[WiredNodeSpec],
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S,
        silent_after_polls: int = DEFAULT_SILENT_AFTER_POLLS,
        committed: Mapping[bytes, int] | None = None,
        reconnect_initial_s: float = RECONNECT_INITIAL_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        max_queued_readings: int = MAX_QUEUED_READINGS,
        rng: random.Random | None = None,
    ) -> None:
        if poll_interval_s <= 0 or response_timeout_s <= 0:
            raise WiredBusError(
                "poll_interval_s and response_timeout_s must be positive, got"
                f" {poll_interval_s} and {response_timeout_s}"
            )
        if silent_after_polls < 1:
            raise WiredBusError(f"silent_after_polls must be at least 1, got {silent_after_polls}")
        done = dict(committed or {})
        self._nodes: list[_NodeState] = []
        by_address: set[int] = set()
        self._by_eui: dict[bytes, _NodeState] = {}
        for spec in nodes:
            if spec.address in by_address:
                raise WiredBusError(f"two nodes at address {spec.address}")
            if spec.dev_eui in self._by_eui:
                raise WiredBusError(f"two nodes with DevEUI {spec.dev_eui.hex()}")
            seq = done.get(spec.dev_eui, 0)
            if isinstance(seq, bool) or not 0 <= seq < _U32_END:
                raise WiredBusError(f"committed sequence of {spec.dev_eui.hex()}: {seq!r}")
            wanted = None if spec.settings is None else settings_version(spec.settings)
            state = _NodeState(spec=spec, wanted=wanted, committed=seq, delivered=seq)
            self._nodes.append(state)
            self._by_eui[spec.dev_eui] = state
            by_address.add(spec.address)
        self._port = port
        self._baudrate = baudrate
        self._poll_interval_s = poll_interval_s
        self._response_timeout_s = response_timeout_s
        self._silent_after_polls = silent_after_polls
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._open_timeout_s = open_timeout_s
        self._max_queued_readings = max_queued_readings
        self._rng = rng if rng is not None else random.Random()

        self._decoder = FrameDecoder()
        self._counters = WiredCounters()
        self._queue = ConsumerQueue[Reading](max_queued_readings)
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        try:
            self._link = ReconnectingLink(
                self._session,
                name="wired bus",
                port=port,
                logger=log,
                reconnect_initial_s=reconnect_initial_s,
                reconnect_max_s=reconnect_max_s,
                rng=self._rng,
                error_type=WiredBusError,
                timeout_type=WiredBusTimeout,
            )
        except ValueError as err:
            raise WiredBusError(str(err)) from err
        # What was logged as a warning already: repeats go to debug (the counters count).
        self._warned: set[tuple[object, ...]] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    def _on_closed(self) -> None:
        self._queue.end()

    # --- the consumer's side ------------------------------------------------------------------

    async def readings(self) -> AsyncIterator[Reading]:
        """The nodes' readings in arrival order (``fcnt``: the node's sequence number,
        ``time_s``: UTC seconds from the node's age field and the host clock), across
        reconnections, until the bus is closed. Duplicates never appear here."""
        while (reading := await self._queue.next()) is not None:
            yield reading

    def commit(self, dev_eui: bytes, seq: int) -> None:
        """Declare the readings of node ``dev_eui`` up to ``seq`` durably stored: the next
        POLL to it acknowledges them, and the node drops them. Raises
        :class:`WiredBusError` for an unknown node or a ``seq`` never delivered."""
        state = self._by_eui.get(dev_eui)
        if state is None:
            raise WiredBusError(f"no wired node has DevEUI {dev_eui.hex()}")
        if seq > state.delivered:
            raise WiredBusError(
                f"node {dev_eui.hex()}: cannot commit {seq}, only {state.delivered} was delivered"
            )
        if seq > state.committed:
            state.committed = seq

    def nodes(self) -> list[WiredNodeStatus]:
        """Every configured node's status now, in configuration order."""
        return [self._node_status(state) for state in self._nodes]

    @property
    def counters(self) -> WiredCounters:
        """A copy of the counters now; the frame counters come from the frame decoder."""
        decoder = self._decoder
        return dataclasses.replace(
            self._counters,
            crc_errors=decoder.crc_errors,
            frame_errors=decoder.frame_errors + decoder.overflows,
        )

    @property
    def status(self) -> WiredBusStatus:
        """Connected or not, the port, and why the last connection ended."""
        return WiredBusStatus(
            connected=self._link.connected, port=self._port, last_error=self._link.last_error
        )

    @staticmethod
    def _node_status(state: _NodeState) -> WiredNodeStatus:
        status = state.status
        return WiredNodeStatus(
            address=state.spec.address,
            dev_eui=state.spec.dev_eui,
            answering=state.answering,
            last_seen=state.last_seen,
            polls=state.polls,
            timeouts=state.timeouts,
            readings=state.readings,
            duplicates=state.duplicates,
            refused=state.refused,
            settings_version=state.applied,
            settings_wanted=state.wanted,
            committed_seq=state.committed,
            delivered_seq=state.delivered,
            last_error=state.last_error,
            node_buffered=None if status is None else status.buffered,
            node_dropped=None if status is None else status.dropped,
            node_uptime_s=None if status is None else status.uptime_s,
        )

    # --- one session -------------------------------------------------------------------------

    async def _session(self) -> None:
        """One connection: open, then poll cycles until the port goes away."""
        async with serial_session(
            self._port,
            self._baudrate,
            self._open_timeout_s,
            self._read_loop,
            error_type=WiredBusError,
        ) as (writer, reader_task):
            self._decoder.reset()
            self._writer = writer
            try:
                if self._link.established():
                    self._counters.reconnects += 1
                    log.info("wired bus on %s reconnected", self._port)
                else:
                    log.info("wired bus on %s open, %d node(s)", self._port, len(self._nodes))
                loop = asyncio.get_running_loop()
                while True:
                    started = loop.time()
                    for state in self._nodes:
                        await self._serve(state, reader_task)
                    remaining = started + self._poll_interval_s - loop.time()
                    if remaining > 0:
                        await asyncio.wait({reader_task}, timeout=remaining)
                    if reader_task.done():
                        reader_task.result()  # the read error, if it was one
                        return
            finally:
                self._writer = None

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        # No timeout here: each request carries its own.
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                return
            for payload in self._decoder.feed(data):
                self._inbox.put_nowait(payload)

    # --- serving one node ---------------------------------------------------------------------

    async def _serve(self, state: _NodeState, reader_task: asyncio.Task[None]) -> None:
        if state.need_status and state.answering:
            answer = await self._request(state, GetStatus(state.spec.address), reader_task)
            if isinstance(answer, Status) and self._eui_ok(state, answer.eui):
                state.status = answer
                state.applied = answer.settings_version
                state.need_status = False
        await self._poll(state, reader_task)
        # After the POLL: its answer says which settings version the node runs (a node that
        # rebooted is back at 0, its defaults).
        if (
            state.answering
            and state.wanted is not None
            and state.applied is not None
            and state.applied != state.wanted
            and state.refused_version != state.wanted
        ):
            await self._send_settings(state, reader_task)

    async def _poll(self, state: _NodeState, reader_task: asyncio.Task[None]) -> None:
        address = state.spec.address
        for _ in range(MAX_POLLS_IN_A_ROW):
            if self._queue.full:
                # The consumer is behind; the node keeps its readings until asked again.
                return
            # Section "Acknowledgment": ack only what was committed; "received" only moves
            # the point the node sends from.
            received = state.delivered if state.delivered > state.committed else None
            answer = await self._request(
                state, Poll(address, state.committed, received), reader_task
            )
            if isinstance(answer, Readings):
                if not self._eui_ok(state, answer.eui):
                    state.refused += len(answer.readings)
                    return
                state.applied = answer.settings_version
                self._deliver(state, answer)
                if not answer.more:
                    return
            else:
                if isinstance(answer, Nothing) and self._eui_ok(state, answer.eui):
                    state.applied = answer.settings_version
                return
        # A node that always has more gets its turn again next cycle.

    async def _send_settings(self, state: _NodeState, reader_task: asyncio.Task[None]) -> None:
        spec = state.spec
        wanted = state.wanted
        assert spec.settings is not None
        assert wanted is not None
        answer = await self._request(
            state, Settings(spec.address, wanted, dict(spec.settings)), reader_task
        )
        if isinstance(answer, SettingsAck) and answer.version == wanted:
            state.applied = wanted
            log.info("wired node %d applied settings version %d", spec.address, wanted)
        elif isinstance(answer, NodeError):
            # Not sent again until the configuration changes: the node would refuse it again.
            state.refused_version = wanted
            log.warning(
                "wired node %d refused settings version %d: %s",
                spec.address,
                wanted,
                state.last_error,
            )

    def _eui_ok(self, state: _NodeState, eui: bytes) -> bool:
        if eui == state.spec.dev_eui:
            return True
        self._counters.eui_mismatches += 1
        problem = (
            f"reports EUI {eui.hex()}, configured {state.spec.dev_eui.hex()}: readings refused"
        )
        # Warned once per node and reported EUI, not at every poll: the counter shows how often.
        self._warn_once(
            ("eui", state.spec.address, eui), "wired node %d %s", state.spec.address, problem
        )
        state.last_error = problem
        return False

    def _warn_once(self, key: tuple[object, ...], message: str, *args: object) -> None:
        if key in self._warned:
            log.debug(message, *args)
            return
        self._warned.add(key)
        log.warning(message, *args)

    def _deliver(self, state: _NodeState, answer: Readings) -> None:
        now_s = time.time()
        for item in answer.readings:
            if item.seq <= state.delivered:
                # Already delivered (or stored by a previous run): the node sent it again.
                state.duplicates += 1
                self._counters.duplicates += 1
                continue
            reading = Reading(
                state.spec.dev_eui,
                max(0, int(now_s) - item.age_s),
                dict(item.values),
                fcnt=item.seq,
            )
            state.delivered = item.seq
            state.readings += 1
            self._queue.put(reading)

    # --- one request, one answer --------------------------------------------------------------

    async def _request(
        self, state: _NodeState, message: Message, reader_task: asyncio.Task[None]
    ) -> Message | None:
        """Send ``message`` to its node and return the node's answer, or None when it did not
        answer validly within ``response_timeout_s`` (counted)."""
        if reader_task.done():
            raise WiredBusError(f"the connection to {self._port} was lost")
        writer = self._writer
        if writer is None:
            raise WiredBusError(f"wired bus on {self._port} not connected")
        # Whatever arrived since the last answer belongs to no request: a late answer.
        while not self._inbox.empty():
            self._classify_stray(self._inbox.get_nowait())
        state.polls += 1
        try:
            writer.write(encode_frame(encode_message(message)))
            await writer.drain()
        except OSError as err:
            raise WiredBusError(f"cannot write to {self._port}: {err}") from err
        address = state.spec.address
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._response_timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            getter = asyncio.ensure_future(self._inbox.get())
            try:
                await asyncio.wait(
                    {getter, reader_task}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                if not getter.done():
                    getter.cancel()
            if not getter.done() or getter.cancelled():
                if reader_task.done():
                    raise WiredBusError(f"the connection to {self._port} was lost")
                continue
            answer = self._decode(getter.result())
            if answer is None:
                continue
            if answer.address != address:
                self._counters.wrong_address += 1
                self._warn_once(
                    ("address", address, answer.address),
                    "wired bus: answer from address %d while waiting for node %d",
                    answer.address,
                    address,
                )
                continue
            self._answered(state)
            if isinstance(answer, NodeError):
                self._counters.node_errors += 1
                name = _ERROR_NAMES.get(answer.code, str(answer.code))
                state.last_error = f"ERROR {name}: {answer.text}"
                log.warning("wired node %d answered %s", address, state.last_error)
            return answer
        self._missed(state)
        return None

    def _decode(self, payload: bytes) -> Message | None:
        # A valid node-to-host message, or None (counted) for anything else.
        try:
            answer = decode_message(payload)
        except CodecError as err:
            self._counters.invalid_messages += 1
            self._warn_once(("invalid",), "wired bus: invalid message: %s", err.message)
            log.debug("invalid message payload: %s", payload.hex())
            return None
        if isinstance(answer, (Poll, Settings, GetStatus)):
            # The request read back by a transceiver that listens while it talks.
            self._counters.echoes += 1
            return None
        return answer

    def _classify_stray(self, payload: bytes) -> None:
        if self._decode(payload) is not None:
            self._counters.unexpected += 1
            log.debug("wired bus: an answer arrived after its request timed out")

    def _answered(self, state: _NodeState) -> None:
        state.misses = 0
        state.last_seen = time.time()
        if state.answering:
            return
        state.answering = True
        state.need_status = True
        if state.silent_logged:
            log.info("wired node %d answers again", state.spec.address)
            state.silent_logged = False
        elif not state.ever_answered:
            log.info("wired node %d (%s) answering", state.spec.address, state.spec.dev_eui.hex())
        state.ever_answered = True
        state.last_error = None

    def _missed(self, state: _NodeState) -> None:
        state.misses += 1
        state.timeouts += 1
        self._counters.timeouts += 1
        if state.misses < self._silent_after_polls or state.silent_logged:
            return
        state.answering = False
        state.silent_logged = True
        state.last_error = f"no answer to {state.misses} requests in a row"
        log.warning(
            "wired node %d (%s) is silent: %s",
            state.spec.address,
            state.spec.dev_eui.hex(),
            state.last_error,
        )
