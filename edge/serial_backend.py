"""The serial concentrator backend: protocol v1 (``docs/protocol/concentrator-v1.md``) over a
serial port or any pyserial URL.

Three layers, as on every wire of owlgate: pyserial-asyncio moves the bytes (transport),
:class:`~owlgate.codecs.node.framing.FrameDecoder` and :mod:`owlgate.codecs.concentrator`
turn them into messages (framing, pure), and :class:`SerialConcentrator` matches requests to
answers by token and hands received packets to the consumer (api).

One supervisor task owns the connection: it opens the port, says ``HELLO``, checks the
protocol version and capabilities, sends the ``RADIO_CONFIG`` and waits for its ack, then
reads until the port goes away (USB unplugged, EOF, read error), and starts again as soon as
an unplugged device path is back, or after an exponential backoff with jitter
(:class:`~owlgate.edge.link.ReconnectingLink`). The consumer's
:meth:`SerialConcentrator.frames` iterator does not notice a reconnection beyond the packets
missed meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncIterator
from typing import Final, TypeVar

from ..codecs.concentrator import (
    PROTOCOL_VERSION,
    CrcStatus,
    Error,
    ErrorCode,
    GetStats,
    Hello,
    Message,
    RadioConfig,
    RadioConfigAck,
    RxFrame,
    Stats,
    TxAck,
    TxError,
    TxRequest,
    decode_message,
    to_frame,
)
from ..codecs.errors import CodecError
from ..codecs.node.framing import FrameDecoder
from .errors import RadioDisconnected, RadioError, RadioRefused, RadioTimeout
from .link import PORT_POLL_S as PORT_POLL_S
from .link import ConsumerQueue, LinkOwner, ReconnectingLink, serial_session
from .radio import RadioBackend, RadioCounters, RadioStatus

log = logging.getLogger(__name__)

#: What the host's HELLO names as its software.
HOST_FIRMWARE: Final = "owlgate-edge 0.1.0"
#: Suggested line rate of protocol v1 (section "Transport"), 8N1.
DEFAULT_BAUDRATE: Final = 115_200
#: Section "Sequences", start-up: no answer to HELLO within 1 s, send it again, three times.
HELLO_TIMEOUT_S: Final = 1.0
HELLO_ATTEMPTS: Final = 3
#: Section "Sequences", transmitting: expect the TX_ACK within 100 ms.
TX_ACK_TIMEOUT_S: Final = 0.1
#: RADIO_CONFIG restarts the radios, GET_STATS is cheap: one generous bound for both.
REQUEST_TIMEOUT_S: Final = 2.0
#: Opening a port (a USB device that is enumerating can hang in open()).
OPEN_TIMEOUT_S: Final = 5.0
#: Backoff between attempts to (re)open the port: doubles from the first to the cap, which is
#: the 10 s retry of an unreachable concentrator in section "Sequences".
RECONNECT_INITIAL_S: Final = 0.5
RECONNECT_MAX_S: Final = 10.0
#: Received packets held for a slow consumer before new ones are dropped (and counted).
MAX_QUEUED_FRAMES: Final = 1024

_TOKEN_MAX: Final = 0xFFFF
_READ_SIZE: Final = 4096

_Answer = TypeVar("_Answer", Hello, RadioConfigAck, TxAck, Stats)


class SerialConcentrator(LinkOwner[RadioStatus], RadioBackend):
    """A concentrator on ``port`` (a device path such as ``/dev/ttyACM0`` or a pyserial URL
    such as ``rfc2217://host:port``), configured with ``radio_config``.

    Use as an async context manager; entering starts the connection in the background (see
    :meth:`wait_connected`), leaving closes the port and ends :meth:`frames`. The tokens of
    ``radio_config`` and of transmitted requests are replaced by the backend's own (protocol
    v1, "Tokens": counted up per request, wrapping from 65535 to 1).

    ``rng`` draws the backoff jitter (a seeded ``random.Random`` makes it reproducible).
    """

    def __init__(
        self,
        *,
        port: str,
        radio_config: RadioConfig,
        baudrate: int = DEFAULT_BAUDRATE,
        firmware: str = HOST_FIRMWARE,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
        hello_attempts: int = HELLO_ATTEMPTS,
        tx_timeout_s: float = TX_ACK_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        reconnect_initial_s: float = RECONNECT_INITIAL_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        max_queued_frames: int = MAX_QUEUED_FRAMES,
        rng: random.Random | None = None,
    ) -> None:
        if hello_attempts < 1:
            raise ValueError(f"hello_attempts must be at least 1, got {hello_attempts}")
        self._port = port
        self._radio_config = radio_config
        self._baudrate = baudrate
        self._firmware = firmware
        self._hello_timeout_s = hello_timeout_s
        self._hello_attempts = hello_attempts
        self._tx_timeout_s = tx_timeout_s
        self._request_timeout_s = request_timeout_s
        self._open_timeout_s = open_timeout_s
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._max_queued_frames = max_queued_frames
        self._rng = rng if rng is not None else random.Random()

        self._decoder = FrameDecoder()
        self._counters = RadioCounters()
        self._queue = ConsumerQueue[RxFrame](max_queued_frames)
        self._waiters: dict[int, asyncio.Future[Message]] = {}
        self._lock = asyncio.Lock()
        self._token = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reconfigure = asyncio.Event()
        self._hello: Hello | None = None
        self._config_id: int | None = None
        self._last_stats: Stats | None = None
        self._link = ReconnectingLink(
            self._session,
            name="concentrator",
            port=port,
            logger=log,
            reconnect_initial_s=reconnect_initial_s,
            reconnect_max_s=reconnect_max_s,
            rng=self._rng,
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def _on_closed(self) -> None:
        self._fail_waiters("the backend is closed")
        self._queue.end()

    # --- the consumer's side ------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[RxFrame]:
        """The received packets with a good or no CRC, in arrival order, across reconnections,
        until the backend is closed."""
        while (frame := await self._queue.next()) is not None:
            self._counters.rx_delivered += 1
            yield frame

    async def transmit(self, request: TxRequest, *, timeout_s: float | None = None) -> TxAck:
        """Send ``request`` (token replaced) and return the concentrator's :class:`TxAck`.

        A refusal (``TOO_LATE``, ``TX_FREQ``, ...) is an ack with that ``error``, returned, not
        raised: the caller decides (another window, say). Raises :class:`RadioTimeout` without
        an answer within ``timeout_s`` (default: the constructor's ``tx_timeout_s``; the
        request may or may not be scheduled), :class:`RadioDisconnected` when not connected,
        :class:`RadioRefused` when answered with a protocol ``ERROR`` (nothing scheduled).
        """
        self._require_connected()
        self._counters.tx_requested += 1
        wait_s = self._tx_timeout_s if timeout_s is None else timeout_s
        try:
            ack = self._expect(await self._request(request, wait_s), TxAck)
        except RadioTimeout:
            self._counters.tx_timeouts += 1
            raise
        except RadioRefused as err:
            self._counters.tx_refused += 1
            if err.code is ErrorCode.NOT_CONFIGURED:
                # It rebooted and both its HELLO and a STATS were missed: configure it again.
                self._reconfigure.set()
            raise
        if ack.error is TxError.NONE:
            self._counters.tx_scheduled += 1
        else:
            self._counters.tx_refused += 1
            log.info("concentrator refused a transmission: %s", ack.error.name)
        return ack

    async def get_stats(self, *, timeout_s: float | None = None) -> Stats:
        """Ask the concentrator for its counters now (``GET_STATS``)."""
        self._require_connected()
        wait_s = self._request_timeout_s if timeout_s is None else timeout_s
        stats = self._expect(await self._request(GetStats(token=1), wait_s), Stats)
        self._on_stats(stats)
        return stats

    @property
    def counters(self) -> RadioCounters:
        """A copy of the counters now; the link counters come from the frame decoder."""
        decoder = self._decoder
        return dataclasses.replace(
            self._counters,
            link_crc_errors=decoder.crc_errors,
            link_frame_errors=decoder.frame_errors + decoder.overflows,
        )

    @property
    def status(self) -> RadioStatus:
        """Connected or not, the concentrator's HELLO and acknowledged configuration."""
        return RadioStatus(
            connected=self._link.connected,
            port=self._port,
            hello=self._hello,
            config_id=self._config_id,
            last_error=self._link.last_error,
        )

    @property
    def last_stats(self) -> Stats | None:
        """The concentrator's last ``STATS``, periodic or requested (None before the first)."""
        return self._last_stats

    @property
    def pending_requests(self) -> int:
        """Requests waiting for their answer now (0 when idle: none are left behind)."""
        return len(self._waiters)

    # --- one session -------------------------------------------------------------------------

    async def _session(self) -> None:
        """One connection: open, handshake, read until the port goes away."""
        async with serial_session(
            self._port, self._baudrate, self._open_timeout_s, self._read_loop
        ) as (writer, reader_task):
            # Section "Sequences", start-up: the concentrator may be mid-frame.
            self._decoder.reset()
            self._reconfigure.clear()
            self._writer = writer
            try:
                await self._handshake(reader_task)
                self._on_connected()
                while True:
                    wake = asyncio.create_task(self._reconfigure.wait())
                    try:
                        await asyncio.wait({reader_task, wake}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        wake.cancel()
                    if reader_task.done():
                        reader_task.result()  # the read error, if it was one
                        return
                    # Section "Sequences", concentrator reboot: it lost its configuration.
                    self._reconfigure.clear()
                    log.warning("concentrator on %s lost its configuration; resending", self._port)
                    self._link.set_connected(False)
                    await self._configure(reader_task)
                    self._link.set_connected(True)
            finally:
                self._writer = None
                self._fail_waiters("the connection to the concentrator was lost")

    def _on_connected(self) -> None:
        hello = self._hello
        assert hello is not None
        assert hello.eui is not None
        if self._link.established():
            self._counters.reconnects += 1
            log.info("concentrator on %s reconnected", self._port)
        else:
            log.info(
                "concentrator on %s connected: %s, EUI %s, configuration %d",
                self._port,
                hello.firmware,
                hello.eui.hex(),
                self._config_id,
            )

    async def _handshake(self, reader_task: asyncio.Task[None]) -> None:
        answer: Message | None = None
        for _ in range(self._hello_attempts):
            try:
                answer = await self._request(
                    Hello(firmware=self._firmware), self._hello_timeout_s, reader_task
                )
                break
            except RadioTimeout:
                continue
        if answer is None:
            raise RadioTimeout(
                f"no HELLO from the concentrator on {self._port} after"
                f" {self._hello_attempts} attempts of {self._hello_timeout_s} s"
            )
        hello = self._expect(answer, Hello)
        # Section "Versioning": the host speaks version 1 only.
        if hello.protocol_version != PROTOCOL_VERSION:
            raise RadioError(
                f"the concentrator on {self._port} speaks protocol version"
                f" {hello.protocol_version}, this host speaks {PROTOCOL_VERSION}"
            )
        if hello.eui is None or hello.capabilities is None:
            raise RadioError(f"the concentrator on {self._port} sent a HELLO without its EUI")
        self._check_capabilities(hello)
        self._hello = hello
        await self._configure(reader_task)

    def _check_capabilities(self, hello: Hello) -> None:
        caps = hello.capabilities
        assert caps is not None
        config = self._radio_config
        problems = []
        if len(config.channels) > caps.max_channels:
            problems.append(f"{len(config.channels)} channels, it has {caps.max_channels}")
        problems.extend(
            f"channel at {channel.frequency_hz} Hz is outside its range"
            for channel in config.channels
            if not caps.frequency_min_hz <= channel.frequency_hz <= caps.frequency_max_hz
        )
        if problems:
            raise RadioError(
                f"the radio configuration does not fit the concentrator on {self._port}: "
                + "; ".join(problems)
            )

    async def _configure(self, reader_task: asyncio.Task[None]) -> None:
        answer = await self._request(self._radio_config, self._request_timeout_s, reader_task)
        ack = self._expect(answer, RadioConfigAck)
        if ack.config_id != self._radio_config.config_id:
            raise RadioError(
                f"the concentrator acknowledged configuration {ack.config_id}, not"
                f" {self._radio_config.config_id}"
            )
        self._config_id = ack.config_id

    # --- requests and answers -----------------------------------------------------------------

    def _require_connected(self) -> None:
        if not self._link.connected:
            raise RadioDisconnected(
                f"concentrator on {self._port} not connected (last error: {self._link.last_error})"
            )

    def _next_token(self) -> int:
        # Section "The envelope", tokens: count up, wrap from 65535 to 1, skip tokens in use.
        for _ in range(_TOKEN_MAX):
            self._token = self._token % _TOKEN_MAX + 1
            if self._token not in self._waiters:
                return self._token
        raise RadioError(f"all {_TOKEN_MAX} tokens are waiting for answers")

    async def _request(
        self,
        message: Hello | RadioConfig | TxRequest | GetStats,
        timeout_s: float,
        reader_task: asyncio.Task[None] | None = None,
    ) -> Message:
        """Send ``message`` with a fresh token and return the answer that repeats it.

        The waiter is registered before the write (an answer can beat the return of the
        write), under the one lock that orders writes, and removed whatever happens.
        """
        if reader_task is not None and reader_task.done():
            raise RadioDisconnected(f"the connection to {self._port} was lost")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        token: int | None = None
        try:
            async with asyncio.timeout(timeout_s):
                async with self._lock:
                    writer = self._writer
                    if writer is None:
                        raise RadioDisconnected(f"concentrator on {self._port} not connected")
                    token = self._next_token()
                    self._waiters[token] = future
                    writer.write(to_frame(dataclasses.replace(message, token=token)))
                    await writer.drain()
                return await future
        except TimeoutError as err:
            raise RadioTimeout(
                f"no answer from the concentrator on {self._port} to"
                f" {type(message).__name__} (token {token}) within {timeout_s} s"
            ) from err
        except OSError as err:
            raise RadioDisconnected(f"cannot write to {self._port}: {err}") from err
        finally:
            if token is not None:
                self._waiters.pop(token, None)

    def _expect(self, answer: Message, cls: type[_Answer]) -> _Answer:
        if isinstance(answer, Error):
            raise RadioRefused(
                f"the concentrator refused the request: {answer.code.name}"
                + (f" ({answer.message})" if answer.message else ""),
                answer.code,
            )
        if not isinstance(answer, cls):
            raise RadioError(
                f"the concentrator answered with {type(answer).__name__}, expected {cls.__name__}"
            )
        return answer

    def _fail_waiters(self, why: str) -> None:
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(RadioDisconnected(why))

    # --- reading ------------------------------------------------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        # No timeout here: this waits for events, not for an answer; requests carry their own.
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    return
                for payload in self._decoder.feed(data):
                    self._dispatch(payload)
        finally:
            # No answer can come any more: fail the waiting requests now, not at their timeout.
            self._fail_waiters("the connection to the concentrator was lost")

    def _dispatch(self, payload: bytes) -> None:
        try:
            message = decode_message(payload)
        except CodecError as err:
            # Section "Errors": a good frame without a valid message; the host logs and drops.
            self._counters.link_invalid += 1
            log.warning("invalid message from the concentrator: %s", err.message)
            log.debug("invalid message payload: %s", payload.hex())
            return
        if isinstance(message, RxFrame):
            self._on_rx(message)
            return
        if message.token != 0:
            future = self._waiters.get(message.token)
            if future is not None and not future.done():
                future.set_result(message)
            else:
                log.debug("answer %s with token %d matches no request", message, message.token)
            return
        if isinstance(message, Hello):
            # Section "Sequences", concentrator reboot: HELLO with token 0 after every boot.
            log.info("concentrator on %s rebooted (%s)", self._port, message.firmware)
            self._reconfigure.set()
        elif isinstance(message, Stats):
            self._on_stats(message)
        elif isinstance(message, Error):
            log.warning("concentrator reports an error: %s %s", message.code.name, message.message)
        else:
            log.warning("dropped a %s from the concentrator (host-bound)", type(message).__name__)

    def _on_stats(self, stats: Stats) -> None:
        self._last_stats = stats
        if self._link.connected and stats.config_id != self._config_id:
            # Section "Sequences", concentrator reboot: when its HELLO was lost, the
            # configuration it reports in use tells the same.
            log.info(
                "concentrator on %s reports configuration %d, not %s",
                self._port,
                stats.config_id,
                self._config_id,
            )
            self._reconfigure.set()

    def _on_rx(self, frame: RxFrame) -> None:
        counters = self._counters
        counters.rx_received += 1
        if frame.crc_status is CrcStatus.BAD:
            # Protocol v1, RX_FRAME: packets with a bad CRC are reported; the host counts
            # and drops them.
            counters.rx_crc_bad += 1
            return
        if frame.crc_status is CrcStatus.OK:
            counters.rx_crc_ok += 1
        if self._queue.full:
            counters.rx_dropped += 1
            log.debug("consumer behind: dropped a received packet")
            return
        self._queue.put(frame)
