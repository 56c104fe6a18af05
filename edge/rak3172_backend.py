"""A RAK3172 module (RUI3 AT firmware) as a single-channel radio: LoRa P2P receive, and
transmit on request (``docs/radios/rak3172.md``).

Three layers, as on every wire of owlgate: pyserial-asyncio moves the bytes (transport),
:mod:`owlgate.codecs.rui3` turns them into lines and events (framing, pure), and
:class:`Rak3172Backend` runs one AT command at a time, matches replies to it, and turns
``+EVT:RXP2P`` events into :class:`~owlgate.codecs.concentrator.RxFrame` (api).

One supervisor task owns the connection: it opens the port, checks the module answers
``AT``, puts it in LoRa P2P mode if it is not (``AT+NWM=0``, which restarts the module), sets
the radio (``AT+P2P``, ``AT+IQINVER=0``) and starts continuous receive (``AT+PRECV=65534``).
Then it reads until the port goes away, reconfiguring whenever the module restarts (its
banner) or stops answering the periodic ``AT``, and reopens the port as soon as an unplugged
device path is back, or after an exponential backoff with jitter
(:class:`~owlgate.edge.link.ReconnectingLink`). :meth:`Rak3172Backend.frames` does not
notice any of it beyond the packets missed meanwhile.

The module has no clock the host can read, so every time here is the host's monotonic clock
in microseconds, modulo 2**32 like a concentrator's counter: an :class:`RxFrame`'s
``timestamp_us`` is when its line was read, and a :class:`TxRequest` timed from it (RX1 =
the uplink's stamp + 1 s) is sent when the host clock gets there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

from ..codecs.concentrator import (
    BANDWIDTHS_HZ,
    CodingRate,
    CrcStatus,
    ErrorCode,
    RxFrame,
    TxAck,
    TxError,
    TxRequest,
)
from ..codecs.errors import CodecError
from ..codecs.rui3 import (
    MAX_PAYLOAD_BYTES,
    PRECV_CONTINUOUS,
    PRECV_STOP,
    Banner,
    Echo,
    Line,
    Rui3Decoder,
    Rui3LineError,
    Rui3OverflowError,
    RxEvent,
    RxTimeout,
    Status,
    StatusLine,
    TxDone,
    UnknownEvent,
    ValueLine,
    encode_read,
    encode_run,
    encode_set,
    parse_values,
)
from .errors import RadioDisconnected, RadioError, RadioRefused, RadioTimeout
from .link import ConsumerQueue, LinkOwner, ReconnectingLink, serial_session
from .radio import RadioBackend, RadioCounters, RadioStatus

log = logging.getLogger(__name__)

#: RUI3 default line rate (RUI3 AT Command Manual, "Overview"), 8N1.
DEFAULT_BAUDRATE: Final = 115_200
#: One AT command's reply (status line) must come within this.
COMMAND_TIMEOUT_S: Final = 2.0
#: AT_BUSY_ERROR: try a command this many times in all, waiting BUSY_BACKOFF_S, doubling.
BUSY_ATTEMPTS: Final = 5
BUSY_BACKOFF_S: Final = 0.05
#: After AT+NWM changes the work mode the module restarts; its banner must come within this.
RESTART_TIMEOUT_S: Final = 5.0
#: A restarting module prints its banner over several lines (at 115200 baud they take a few
#: milliseconds each): the host waits until no banner line came for this long before its
#: ``AT``, or it would take the later lines as more restarts during that ``AT``.
BANNER_QUIET_S: Final = 0.15
#: While receiving, the module is asked ``AT`` this often; no answer means it hung or
#: restarted without a banner, and it is configured again.
KEEPALIVE_INTERVAL_S: Final = 30.0
#: A transmission whose time passed by no more than this is still sent (at once).
TX_LATE_TOLERANCE_S: Final = 0.02
#: A transmission further ahead than this is refused TOO_EARLY (RX2 of a join accept is 6 s
#: after the uplink: LoRaWAN 1.0.3 section 6.2.5, JOIN_ACCEPT_DELAY2).
TX_MAX_LEAD_S: Final = 10.0
#: The radio is switched to the TX settings this long before the transmission is due (four
#: AT round trips at 115200 baud take a few ms each).
TX_PREPARE_S: Final = 0.1
#: Opening a port (a USB device that is enumerating can hang in open()).
OPEN_TIMEOUT_S: Final = 5.0
#: Backoff between attempts to (re)open the port, as the serial concentrator backend.
RECONNECT_INITIAL_S: Final = 0.5
RECONNECT_MAX_S: Final = 10.0
#: Received packets held for a slow consumer before new ones are dropped (and counted).
MAX_QUEUED_FRAMES: Final = 1024
#: The RAK3172's P2P TX power range (RUI3 AT Command Manual, AT+P2P), dBm.
TX_POWER_MIN_DBM: Final = 5
TX_POWER_MAX_DBM: Final = 22
#: The RAK3172's frequency range (SX1262: 150 MHz to 960 MHz).
FREQUENCY_MIN_HZ: Final = 150_000_000
FREQUENCY_MAX_HZ: Final = 960_000_000

_COUNTER_MODULUS: Final = 1 << 32
_HALF_COUNTER: Final = 1 << 31
_TOKEN_MAX: Final = 0xFFFF
_READ_SIZE: Final = 4096
_AT_ATTEMPTS: Final = 3

#: How a refused command maps onto the common error codes.
_ERROR_CODES: Final = {
    Status.AT_BUSY_ERROR: ErrorCode.BUSY,
    Status.AT_PARAM_ERROR: ErrorCode.INVALID_CONFIG,
    Status.AT_MODE_NO_SUPPORT: ErrorCode.NOT_CONFIGURED,
    Status.AT_COMMAND_NOT_FOUND: ErrorCode.UNKNOWN_TYPE,
}


class Rak3172Refused(RadioRefused):
    """The module answered a command with an error status (``status``: which one)."""

    def __init__(self, message: str, status: Status) -> None:
        super().__init__(message, _ERROR_CODES.get(status, ErrorCode.RADIO_FAILURE))
        self.status = status


class ModuleRestarted(RadioDisconnected):
    """The module restarted (its banner) while a command waited for its reply."""


@dataclass(slots=True)
class _Pending:
    # The one command in flight: its line (to recognise an echo) and what came back so far.
    line: str
    done: asyncio.Future[Status]
    values: list[ValueLine] = field(default_factory=list)


def airtime_s(
    payload_bytes: int, spreading_factor: int, bandwidth_hz: int, coding_rate: int, preamble: int
) -> float:
    """Time on air of a LoRa packet (Semtech AN1200.13), explicit header and CRC on, as
    RUI3 P2P sends; ``coding_rate`` as RUI3 numbers it (0 = 4/5)."""
    symbol_s = (1 << spreading_factor) / bandwidth_hz
    low_rate = 1 if symbol_s > 0.016 else 0
    numerator = 8 * payload_bytes - 4 * spreading_factor + 28 + 16
    symbols = 8 + max(
        math.ceil(numerator / (4 * (spreading_factor - 2 * low_rate))) * (coding_rate + 5), 0
    )
    return (preamble + 4.25) * symbol_s + symbols * symbol_s


class Rak3172Backend(LinkOwner[RadioStatus], RadioBackend):
    """A RAK3172 on ``port`` (device path or pyserial URL), receiving LoRa P2P on one
    channel: ``frequency_hz``, ``spreading_factor``, ``bandwidth_hz``, ``coding_rate`` (RUI3
    numbering: 0 = 4/5 .. 3 = 4/8), ``preamble`` symbols; ``tx_power_dbm`` is the power set
    with the receive settings (a transmission uses its request's power).

    ``command_timeout_s`` bounds each AT reply. The other arguments tune recovery (see the
    module constants); ``rng`` draws the reconnect jitter.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        frequency_hz: int,
        spreading_factor: int,
        bandwidth_hz: int = 125_000,
        coding_rate: int = 0,
        preamble: int = 8,
        tx_power_dbm: int = 14,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        busy_attempts: int = BUSY_ATTEMPTS,
        busy_backoff_s: float = BUSY_BACKOFF_S,
        restart_timeout_s: float = RESTART_TIMEOUT_S,
        keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
        tx_late_tolerance_s: float = TX_LATE_TOLERANCE_S,
        tx_max_lead_s: float = TX_MAX_LEAD_S,
        tx_prepare_s: float = TX_PREPARE_S,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        reconnect_initial_s: float = RECONNECT_INITIAL_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        max_queued_frames: int = MAX_QUEUED_FRAMES,
        rng: random.Random | None = None,
    ) -> None:
        if bandwidth_hz not in BANDWIDTHS_HZ:
            raise ValueError(f"bandwidth_hz must be one of {BANDWIDTHS_HZ}, got {bandwidth_hz}")
        if not 5 <= spreading_factor <= 12:
            raise ValueError(f"spreading_factor must be 5 .. 12, got {spreading_factor}")
        if not 0 <= coding_rate <= 3:
            raise ValueError(f"coding_rate must be 0 (4/5) .. 3 (4/8), got {coding_rate}")
        if not FREQUENCY_MIN_HZ <= frequency_hz <= FREQUENCY_MAX_HZ:
            raise ValueError(f"frequency_hz out of the RAK3172's range: {frequency_hz}")
        if not TX_POWER_MIN_DBM <= tx_power_dbm <= TX_POWER_MAX_DBM:
            raise ValueError(
                f"tx_power_dbm must be {TX_POWER_MIN_DBM} .. {TX_POWER_MAX_DBM}, got {tx_power_dbm}"
            )
        if busy_attempts < 1:
            raise ValueError(f"busy_attempts must be at least 1, got {busy_attempts}")
        # Validated through the command table now, not at the first connection.
        encode_set("P2P", frequency_hz, spreading_factor, bandwidth_hz // 1000, coding_rate,
                   preamble, tx_power_dbm)  # fmt: skip
        self._port = port
        self._baudrate = baudrate
        self._frequency_hz = frequency_hz
        self._sf = spreading_factor
        self._bandwidth_hz = bandwidth_hz
        self._coding_rate = coding_rate
        self._preamble = preamble
        self._tx_power_dbm = tx_power_dbm
        self._command_timeout_s = command_timeout_s
        self._busy_attempts = busy_attempts
        self._busy_backoff_s = busy_backoff_s
        self._restart_timeout_s = restart_timeout_s
        self._keepalive_interval_s = keepalive_interval_s
        self._tx_late_tolerance_s = tx_late_tolerance_s
        self._tx_max_lead_s = tx_max_lead_s
        self._tx_prepare_s = tx_prepare_s
        self._open_timeout_s = open_timeout_s
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._max_queued_frames = max_queued_frames
        self._rng = rng if rng is not None else random.Random()

        self._decoder = Rui3Decoder()
        self._counters = RadioCounters()
        self._busy_retries = 0
        self._restarts = 0
        self._queue = ConsumerQueue[RxFrame](max_queued_frames)
        self._line_lock = asyncio.Lock()  # one command in flight
        self._radio_lock = asyncio.Lock()  # one multi-command sequence (configure, transmit)
        self._pending: _Pending | None = None
        self._tx_done: asyncio.Future[None] | None = None
        self._restart_seen = asyncio.Event()
        #: The loop time of the latest banner line (a restart in progress prints several).
        self._last_banner_at = float("-inf")
        self._banner_line = asyncio.Event()
        self._receive_lost = asyncio.Event()
        self._token = 0
        self._writer: asyncio.StreamWriter | None = None
        self._firmware: str | None = None
        self._link = ReconnectingLink(
            self._session,
            name="RAK3172",
            port=port,
            logger=log,
            reconnect_initial_s=reconnect_initial_s,
            reconnect_max_s=reconnect_max_s,
            rng=self._rng,
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def _on_closed(self) -> None:
        self._fail_waiters(RadioDisconnected("the backend is closed"))
        self._queue.end()

    # --- the consumer's side ------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[RxFrame]:
        """The received packets, in arrival order, across reconnections, until the backend
        is closed."""
        while (frame := await self._queue.next()) is not None:
            self._counters.rx_delivered += 1
            yield frame

    async def transmit(self, request: TxRequest, *, timeout_s: float | None = None) -> TxAck:
        """Send ``request`` when its time comes and return once it is on the air and done.

        ``request.timestamp_us`` is on this backend's clock (see the module docstring); None
        sends at once. A time already past by more than ``tx_late_tolerance_s`` is answered
        ``TOO_LATE``, one more than ``tx_max_lead_s`` ahead ``TOO_EARLY``, a power or frequency
        the module cannot do ``TX_POWER`` / ``TX_FREQ``: returned, not raised.
        ``timeout_s`` bounds the module's part, from the due time to ``+EVT:TXP2P DONE``
        (default: the packet's airtime plus two command timeouts). Raises
        :class:`RadioTimeout`, :class:`RadioDisconnected` when not connected or the module is
        lost meanwhile, :class:`Rak3172Refused` when a command is refused.
        """
        self._require_connected()
        self._counters.tx_requested += 1
        token = self._next_token()
        now_us = self._now_us()
        refusal = self._judge(request, now_us)
        if refusal is not None:
            self._counters.tx_refused += 1
            log.info("RAK3172 transmission refused: %s", refusal.name)
            return TxAck(error=refusal, timestamp_us=now_us, token=token)
        loop = asyncio.get_running_loop()
        due_s = loop.time()
        if request.timestamp_us is not None:
            due_s += self._delta_us(request.timestamp_us, now_us) / 1e6
        coding_rate = int(request.coding_rate) - int(CodingRate.CR_4_5)
        preamble = 8 if request.preamble_symbols is None else request.preamble_symbols
        if timeout_s is None:
            timeout_s = 2 * self._command_timeout_s + airtime_s(
                len(request.payload), request.sf, request.bandwidth_hz, coding_rate, preamble
            )
        # Wait outside the locks: receive goes on, and so does the keepalive.
        await asyncio.sleep(max(0.0, due_s - self._tx_prepare_s - loop.time()))
        try:
            async with self._radio_lock:
                if loop.time() > due_s + self._tx_late_tolerance_s:
                    # Another transmission held the radio past this one's time.
                    self._counters.tx_refused += 1
                    return TxAck(error=TxError.TOO_LATE, timestamp_us=self._now_us(), token=token)
                try:
                    async with asyncio.timeout_at(due_s + timeout_s):
                        sent_us = await self._send(request, due_s, coding_rate, preamble)
                finally:
                    await self._resume_receive()
                if sent_us is None:
                    # Preparing the radio took the time: a late downlink misses its window.
                    self._counters.tx_refused += 1
                    return TxAck(error=TxError.TOO_LATE, timestamp_us=self._now_us(), token=token)
        except TimeoutError as err:
            self._counters.tx_timeouts += 1
            raise RadioTimeout(
                f"RAK3172 on {self._port}: transmission not done within {timeout_s:.2f} s"
            ) from err
        except RadioTimeout:
            self._counters.tx_timeouts += 1
            raise
        except RadioRefused:
            self._counters.tx_refused += 1
            raise
        self._counters.tx_scheduled += 1
        return TxAck(error=TxError.NONE, timestamp_us=sent_us, token=token)

    @property
    def counters(self) -> RadioCounters:
        """A copy of the counters now (``link_frame_errors``: lines dropped as too long)."""
        return dataclasses.replace(self._counters, link_frame_errors=self._decoder.overflows)

    @property
    def status(self) -> RadioStatus:
        """Connected (configured and receiving) or not, and why the last connection ended.
        A RAK3172 has no ``Hello`` and no configuration id: both are None."""
        return RadioStatus(
            connected=self._link.connected,
            port=self._port,
            hello=None,
            config_id=None,
            last_error=self._link.last_error,
        )

    @property
    def busy_retries(self) -> int:
        """Commands sent again after ``AT_BUSY_ERROR``."""
        return self._busy_retries

    @property
    def restarts(self) -> int:
        """Module restarts seen while connected (banner, or no answer to the keepalive)."""
        return self._restarts

    @property
    def firmware(self) -> str | None:
        """What the module's ``AT+VER=?`` answered at the last configuration."""
        return self._firmware

    @property
    def pending_requests(self) -> int:
        """Replies waited for now: a command and a TX done event (0 when idle)."""
        return int(self._pending is not None) + int(self._tx_done is not None)

    # --- one session -------------------------------------------------------------------------

    async def _session(self) -> None:
        """One connection: open, configure, watch until the port goes away."""
        async with serial_session(
            self._port, self._baudrate, self._open_timeout_s, self._read_loop
        ) as (writer, reader_task):
            self._decoder.reset()
            self._writer = writer
            try:
                async with self._radio_lock:
                    await self._configure()
                self._on_connected()
                await self._watch(reader_task)
            finally:
                self._writer = None
                self._fail_waiters(RadioDisconnected("the connection to the RAK3172 was lost"))

    async def _watch(self, reader_task: asyncio.Task[None]) -> None:
        """While connected: restarts, a receive that ended, the keepalive."""
        while True:
            restart = asyncio.create_task(self._restart_seen.wait())
            lost = asyncio.create_task(self._receive_lost.wait())
            try:
                await asyncio.wait(
                    {reader_task, restart, lost},
                    timeout=self._keepalive_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                restart.cancel()
                lost.cancel()
            if reader_task.done():
                reader_task.result()
                return
            async with self._radio_lock:
                if self._restart_seen.is_set():
                    await self._recover("it restarted")
                elif self._receive_lost.is_set():
                    self._receive_lost.clear()
                    log.info("RAK3172 on %s stopped receiving; starting again", self._port)
                    await self._execute(encode_set("PRECV", PRECV_CONTINUOUS))
                else:
                    try:
                        await self._execute(encode_run(""))
                    except RadioTimeout:
                        await self._recover("it does not answer")

    async def _recover(self, why: str) -> None:
        # Called with the radio lock held. A restart loses the receive state (and on older
        # firmware the P2P settings): configure it all again.
        log.warning("RAK3172 on %s: %s; configuring it again", self._port, why)
        self._restarts += 1
        self._link.set_connected(False)
        await self._configure()
        self._counters.reconnects += 1
        self._link.set_connected(True)

    def _on_connected(self) -> None:
        if self._link.established():
            self._counters.reconnects += 1
            log.info("RAK3172 on %s reconnected", self._port)
        else:
            log.info(
                "RAK3172 on %s receiving: %d Hz SF%d %d kHz (firmware %s)",
                self._port,
                self._frequency_hz,
                self._sf,
                self._bandwidth_hz // 1000,
                self._firmware,
            )

    async def _configure(self) -> None:
        """The configuration sequence (``docs/radios/rak3172.md``, "The AT conversation");
        called with the radio lock held."""
        await self._attention()
        # A restart from here on (its banner) means the configuration must start again.
        self._restart_seen.clear()
        values = await self._execute(encode_read("NWM"))
        mode = self._read_value("NWM", values)
        if mode != 0:
            # RUI3: a new work mode restarts the module; wait for its banner, then for AT.
            log.info("RAK3172 on %s in work mode %s; switching to LoRa P2P", self._port, mode)
            await self._execute(encode_set("NWM", 0))
            try:
                async with asyncio.timeout(self._restart_timeout_s):
                    await self._restart_seen.wait()
            except TimeoutError as err:
                raise RadioTimeout(
                    f"RAK3172 on {self._port} did not restart within {self._restart_timeout_s} s"
                    " after AT+NWM=0"
                ) from err
            await self._attention()
            self._restart_seen.clear()
        values = await self._execute(encode_read("VER"))
        self._firmware = values[-1].value if values else None
        # Stop a receive left running (by an earlier host session): RUI3 refuses radio
        # settings while it listens.
        await self._execute(encode_set("PRECV", PRECV_STOP))
        await self._set_receive_radio()
        self._receive_lost.clear()
        await self._execute(encode_set("PRECV", PRECV_CONTINUOUS))

    async def _set_receive_radio(self) -> None:
        await self._execute(
            encode_set(
                "P2P",
                self._frequency_hz,
                self._sf,
                self._bandwidth_hz // 1000,
                self._coding_rate,
                self._preamble,
                self._tx_power_dbm,
            )
        )
        # Uplinks travel with IQ not inverted (LoRaWAN 1.0.3 section 3.2, "the uplink").
        await self._execute(encode_set("IQINVER", 0))

    async def _banner_done(self) -> None:
        """Return once the last banner line is BANNER_QUIET_S old (at once without one)."""
        loop = asyncio.get_running_loop()
        while (left := self._last_banner_at + BANNER_QUIET_S - loop.time()) > 0:
            # Woken by each banner line, to start the quiet period again from it.
            self._banner_line.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._banner_line.wait()

    async def _attention(self) -> None:
        await self._banner_done()
        # A module that just booted may miss the first line: a few tries.
        for attempt in range(1, _AT_ATTEMPTS + 1):
            try:
                await self._execute(encode_run(""))
                return
            except (RadioTimeout, ModuleRestarted):
                if attempt == _AT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_value(self, name: str, values: list[ValueLine]) -> int:
        for line in reversed(values):
            if line.name in (None, name):
                try:
                    (number,) = parse_values(name, line.value)
                except CodecError as err:
                    raise RadioError(
                        f"RAK3172 on {self._port}: unexpected reply to AT+{name}=?: {err}"
                    ) from err
                assert isinstance(number, int)
                return number
        raise RadioError(f"RAK3172 on {self._port}: no value in the reply to AT+{name}=?")

    # --- transmitting -------------------------------------------------------------------------

    def _judge(self, request: TxRequest, now_us: int) -> TxError | None:
        if not TX_POWER_MIN_DBM <= request.power_dbm <= TX_POWER_MAX_DBM:
            return TxError.TX_POWER
        if not FREQUENCY_MIN_HZ <= request.frequency_hz <= FREQUENCY_MAX_HZ:
            return TxError.TX_FREQ
        if request.timestamp_us is None:
            return None
        delta_us = self._delta_us(request.timestamp_us, now_us)
        if delta_us < -self._tx_late_tolerance_s * 1e6:
            return TxError.TOO_LATE
        if delta_us > self._tx_max_lead_s * 1e6:
            return TxError.TOO_EARLY
        return None

    @staticmethod
    def _delta_us(timestamp_us: int, now_us: int) -> int:
        # Both on a 32-bit counter that wraps: the signed difference, as for a concentrator.
        delta = (timestamp_us - now_us) % _COUNTER_MODULUS
        return delta - _COUNTER_MODULUS if delta >= _HALF_COUNTER else delta

    async def _send(
        self, request: TxRequest, due_s: float, coding_rate: int, preamble: int
    ) -> int | None:
        """Switch to the request's settings, wait for its time and send; the host counter
        when the PSEND was written, or None (nothing sent) when it is already too late."""
        loop = asyncio.get_running_loop()
        await self._execute(encode_set("PRECV", PRECV_STOP))
        await self._execute(
            encode_set(
                "P2P",
                request.frequency_hz,
                request.sf,
                request.bandwidth_hz // 1000,
                coding_rate,
                preamble,
                request.power_dbm,
            )
        )
        # LoRaWAN downlinks invert IQ so that devices do not hear each other (1.0.3 sec. 3.2).
        await self._execute(encode_set("IQINVER", int(request.invert_polarity)))
        await asyncio.sleep(max(0.0, due_s - loop.time()))
        if loop.time() > due_s + self._tx_late_tolerance_s:
            return None
        done: asyncio.Future[None] = loop.create_future()
        self._tx_done = done  # registered before the write: the event can beat the OK
        try:
            sent_us = self._now_us()
            await self._execute(encode_set("PSEND", request.payload))
            await done
        finally:
            self._tx_done = None
            if not done.done():
                done.cancel()
            elif not done.cancelled():
                done.exception()  # retrieved: a failed PSEND already says what happened
        return sent_us

    async def _resume_receive(self) -> None:
        # Back to the receive settings whatever happened; a module that cannot be reached
        # now is configured again by the supervisor.
        if self._writer is None:
            return
        try:
            await self._set_receive_radio()
            await self._execute(encode_set("PRECV", PRECV_CONTINUOUS))
        except RadioError as err:
            log.warning("RAK3172 on %s: receive not resumed (%s)", self._port, err.message)
            self._restart_seen.set()

    # --- commands -----------------------------------------------------------------------------

    def _require_connected(self) -> None:
        if not self._link.connected:
            raise RadioDisconnected(
                f"RAK3172 on {self._port} not connected (last error: {self._link.last_error})"
            )

    def _next_token(self) -> int:
        self._token = self._token % _TOKEN_MAX + 1
        return self._token

    async def _execute(self, line: bytes) -> list[ValueLine]:
        """Run one command, retrying with backoff while the module answers busy; OK or
        :class:`Rak3172Refused`."""
        backoff_s = self._busy_backoff_s
        for attempt in range(1, self._busy_attempts + 1):
            status, values = await self._command(line)
            if status is Status.OK:
                return values
            if status is Status.AT_BUSY_ERROR and attempt < self._busy_attempts:
                self._busy_retries += 1
                log.debug("RAK3172 busy; %r again in %.3f s", line, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s *= 2
                continue
            text = line.decode().strip()
            raise Rak3172Refused(
                f"RAK3172 on {self._port} answered {text!r} with {status.value}"
                + (f" after {attempt} attempts" if attempt > 1 else ""),
                status,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _command(self, line: bytes) -> tuple[Status, list[ValueLine]]:
        """Write one command line and wait for its status line; the waiter is registered
        before the write and removed whatever happens."""
        text = line.decode().strip()
        try:
            async with asyncio.timeout(self._command_timeout_s):
                async with self._line_lock:
                    writer = self._writer
                    if writer is None:
                        raise RadioDisconnected(f"RAK3172 on {self._port} not connected")
                    pending = _Pending(text, asyncio.get_running_loop().create_future())
                    self._pending = pending
                    try:
                        log.debug("RAK3172 <- %s", text)
                        writer.write(line)
                        await writer.drain()
                        status = await pending.done
                    finally:
                        self._pending = None
                    return status, pending.values
        except TimeoutError as err:
            raise RadioTimeout(
                f"no answer from the RAK3172 on {self._port} to {text!r}"
                f" within {self._command_timeout_s} s"
            ) from err
        except OSError as err:
            raise RadioDisconnected(f"cannot write to {self._port}: {err}") from err

    def _fail_waiters(self, error: RadioError) -> None:
        pending = self._pending
        if pending is not None and not pending.done.done():
            pending.done.set_exception(error)
        done = self._tx_done
        if done is not None and not done.done():
            done.set_exception(error)

    # --- reading ------------------------------------------------------------------------------

    def _now_us(self) -> int:
        return (time.monotonic_ns() // 1000) % _COUNTER_MODULUS

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    return
                # The packet's time: when its line reached the host (the module keeps none).
                stamp_us = self._now_us()
                for item in self._decoder.feed(data):
                    self._dispatch(item, stamp_us)
        finally:
            self._fail_waiters(RadioDisconnected("the connection to the RAK3172 was lost"))

    def _dispatch(self, item: Line | Rui3LineError, stamp_us: int) -> None:
        pending = self._pending
        match item:
            case Rui3OverflowError():
                # Counted by the decoder (link_frame_errors): framing, not content.
                log.warning("line from the RAK3172 on %s: %s", self._port, item.message)
            case Rui3LineError():
                self._counters.link_invalid += 1
                log.warning("invalid line from the RAK3172 on %s: %s", self._port, item.message)
            case RxEvent():
                self._on_rx(item, stamp_us)
            case StatusLine(status=status):
                if pending is not None and not pending.done.done():
                    pending.done.set_result(status)
                else:
                    self._counters.link_invalid += 1
                    log.warning("RAK3172 status %s answers no command", status.value)
            case ValueLine():
                if pending is not None and not pending.done.done():
                    pending.values.append(item)
                else:
                    self._counters.link_invalid += 1
                    log.warning("RAK3172 line %r answers no command", item.value[:80])
            case Echo():
                log.debug("RAK3172 echo: %s", item.text)
            case TxDone():
                done = self._tx_done
                if done is not None and not done.done():
                    done.set_result(None)
                else:
                    log.debug("RAK3172 TX done with no transmission waiting")
            case RxTimeout():
                self._receive_lost.set()
            case Banner(text=text):
                self._last_banner_at = asyncio.get_running_loop().time()
                self._banner_line.set()
                if not self._restart_seen.is_set():
                    log.info("RAK3172 on %s restarted: %s", self._port, text)
                self._restart_seen.set()
                if pending is not None and not pending.done.done():
                    pending.done.set_exception(
                        ModuleRestarted(
                            f"RAK3172 on {self._port} restarted during {pending.line!r}"
                        )
                    )
            case UnknownEvent(text=text):
                log.info("RAK3172 event ignored: %s", text)

    def _on_rx(self, event: RxEvent, stamp_us: int) -> None:
        counters = self._counters
        counters.rx_received += 1
        try:
            frame = RxFrame(
                frequency_hz=self._frequency_hz,
                sf=self._sf,
                bandwidth_hz=self._bandwidth_hz,
                coding_rate=CodingRate(self._coding_rate + int(CodingRate.CR_4_5)),
                rssi_dbm=event.rssi_dbm,
                snr_db=float(event.snr_db),
                timestamp_us=stamp_us,
                # P2P reports only packets whose CRC checked (RUI3 drops the others).
                crc_status=CrcStatus.OK,
                payload=event.payload[:MAX_PAYLOAD_BYTES],
            )
        except CodecError as err:
            counters.link_invalid += 1
            log.warning("RAK3172 packet dropped: %s", err)
            return
        counters.rx_crc_ok += 1
        if self._queue.full:
            counters.rx_dropped += 1
            log.debug("consumer behind: dropped a received packet")
            return
        self._queue.put(frame)
