"""The Semtech UDP packet forwarder backend: the agent plays the server side of GWMP v2
(``docs/radios/semtech-udp.md``) for one packet forwarder, such as Lora-net
``packet_forwarder`` or ``sx1302_hal``'s ``lora_pkt_fwd``, running beside it.

Three layers, as on every wire of owlgate: an asyncio datagram endpoint moves the bytes
(transport), :mod:`owlgate.codecs.gwmp` turns them into datagrams and maps ``rxpk`` and
``txpk`` onto the concentrator protocol's :class:`RxFrame` and :class:`TxRequest` (pure), and
:class:`SemtechUdpBackend` answers, matches TX_ACKs to downlinks by token and hands received
packets to the consumer (api).

There is no connection in UDP: the forwarder counts as connected while its PULL_DATA
keep-alives arrive (PROTOCOL.TXT 5.2: every few seconds), and the address of the last
PULL_DATA is where downlinks go. GWMP has no authentication: listen on 127.0.0.1 (the
forwarder on the same machine) or a trusted LAN only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Self

from ..codecs.concentrator import CrcStatus, RxFrame, TxAck, TxError, TxRequest
from ..codecs.gwmp import (
    DatagramHeader,
    GwmpDatagramError,
    GwmpError,
    PacketType,
    PullAck,
    PullResp,
    PushAck,
    PushData,
    Stat,
    TxAckDatagram,
    Txpk,
    decode_datagram,
    parse_header,
)
from .errors import RadioDisconnected, RadioError, RadioTimeout
from .link import ConsumerQueue, stop_task, within
from .radio import RadioBackend, RadioCounters, RadioStatus

log = logging.getLogger(__name__)

#: The port packet forwarders send to by default (``serv_port_up`` / ``serv_port_down``).
DEFAULT_PORT: Final = 1700
#: The reference forwarder sends PULL_DATA every ``keepalive_interval`` (10 s by default);
#: three missed in a row mean it is gone.
PULL_TIMEOUT_S: Final = 30.0
#: How long a PULL_RESP waits for its TX_ACK. A forwarder answers as soon as its JIT queue
#: took or refused the packet, well under a second on a loaded Pi.
TX_ACK_TIMEOUT_S: Final = 2.0
#: Received packets held for a slow consumer before new ones are dropped (and counted).
MAX_QUEUED_FRAMES: Final = 1024
#: Foreign gateway EUIs logged at warning level, each once; later ones at debug level only,
#: so a flood of spoofed EUIs cannot flood the log or grow memory.
_FOREIGN_EUIS_LOGGED: Final = 16
_TOKEN_MAX: Final = 0xFFFF
_HEX_LIMIT: Final = 256


def _host_port(host: str, port: int) -> str:
    # RFC 3986 section 3.2.2: an IPv6 literal goes in brackets.
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class ForwarderStats:
    """What the forwarder said in its ``stat`` reports since the backend started.

    The forwarder's counts are per reporting interval (it resets them after each report);
    here they are summed: ``rx_received`` (``rxnb``), ``rx_ok`` (``rxok``), ``rx_forwarded``
    (``rxfw``), ``tx_requested`` (``dwnb``), ``tx_sent`` (``txnb``). ``last`` is the last
    report as sent, with its ``ackr``, position and time; ``reports`` how many arrived.
    """

    reports: int = 0
    rx_received: int = 0
    rx_ok: int = 0
    rx_forwarded: int = 0
    tx_requested: int = 0
    tx_sent: int = 0
    last: Stat | None = None


class _Endpoint(asyncio.DatagramProtocol):
    """The transport layer: hands every datagram to the backend, nothing else."""

    def __init__(self, backend: SemtechUdpBackend) -> None:
        self._backend = backend

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        # IPv6 addresses come as 4-tuples; host and port are what a reply needs.
        self._backend._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # An ICMP "port unreachable" for a datagram sent earlier: the forwarder went away.
        log.debug("UDP error from the network: %s", exc)


class SemtechUdpBackend(RadioBackend):
    """A radio backend that is the server of one Semtech UDP packet forwarder.

    Listens on ``host``:``port`` (port 0 picks a free one, see :attr:`local_port`). With
    ``gateway_eui``, datagrams from any other gateway are dropped and counted; without it,
    the first gateway heard is the one served, the others dropped, counted and logged (one
    agent, one gateway). ``pull_timeout_s``: how long after the last PULL_DATA the forwarder
    still counts as connected; ``tx_ack_timeout_s``: the default wait for a TX_ACK.
    ``rng`` draws the downlink tokens (seed it to make them reproducible).
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        *,
        gateway_eui: bytes | None = None,
        pull_timeout_s: float = PULL_TIMEOUT_S,
        tx_ack_timeout_s: float = TX_ACK_TIMEOUT_S,
        max_queued_frames: int = MAX_QUEUED_FRAMES,
        tx_rf_chain: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        if gateway_eui is not None and len(gateway_eui) != 8:
            raise ValueError(f"gateway_eui must be 8 bytes, got {gateway_eui.hex()}")
        if pull_timeout_s <= 0 or tx_ack_timeout_s <= 0:
            raise ValueError("pull_timeout_s and tx_ack_timeout_s must be positive")
        self._host = host
        self._port = port
        self._configured_eui = gateway_eui
        self._gateway_eui = gateway_eui
        self._pull_timeout_s = pull_timeout_s
        self._tx_ack_timeout_s = tx_ack_timeout_s
        self._max_queued_frames = max_queued_frames
        self._tx_rf_chain = tx_rf_chain
        self._rng = rng if rng is not None else random.Random()

        self._counters = RadioCounters()
        self._foreign = 0
        self._foreign_logged: set[bytes] = set()
        self._stats = ForwarderStats()
        self._queue = ConsumerQueue[RxFrame](max_queued_frames)
        self._waiters: dict[int, asyncio.Future[TxAckDatagram]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._local_port: int | None = None
        self._forwarder_addr: tuple[str, int] | None = None
        self._forwarder_version = 2
        self._last_pull: float | None = None
        self._pulled = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._monitor: asyncio.Task[None] | None = None
        self._entered = False
        self._closed = False
        self._lost = False
        self._last_error: str | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RadioError("a SemtechUdpBackend is entered once")
        self._entered = True
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self), local_addr=(self._host, self._port)
            )
        except OSError as err:
            self._closed = True
            raise RadioError(f"cannot listen on udp://{self._host}:{self._port}: {err}") from err
        self._transport = transport
        self._local_port = int(transport.get_extra_info("sockname")[1])
        self._monitor = asyncio.create_task(self._watch_keepalive(), name="gwmp keep-alive")
        log.info("listening for a packet forwarder on udp://%s:%d", self._host, self._local_port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening, fail pending transmissions, and end :meth:`frames` (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await stop_task(self._monitor, log, "keep-alive monitor failed")
        self._disconnected.set()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(RadioDisconnected("the backend is closed"))
        self._queue.end()

    @property
    def local_port(self) -> int:
        """The UDP port listened on (the one chosen when constructed with port 0)."""
        if self._local_port is None:
            raise RadioError("the backend is not listening (enter it first)")
        return self._local_port

    async def wait_connected(self, timeout_s: float) -> RadioStatus:
        """Wait until a PULL_DATA from the served gateway arrived within ``pull_timeout_s``;
        :class:`RadioTimeout` after ``timeout_s``."""

        def late() -> RadioTimeout:
            where = _host_port(self._host, self._local_port or self._port)
            return RadioTimeout(
                f"no PULL_DATA from a packet forwarder on udp://{where} within {timeout_s} s"
            )

        await within(self._until_connected(), timeout_s, late)
        return self.status

    async def _until_connected(self) -> None:
        while not self._is_connected():
            self._pulled.clear()
            await self._pulled.wait()

    async def wait_disconnected(self, timeout_s: float) -> RadioStatus:
        """Wait until ``pull_timeout_s`` passed without a PULL_DATA; :class:`RadioTimeout`
        after ``timeout_s``."""
        await within(
            self._disconnected.wait(),
            timeout_s,
            lambda: RadioTimeout(f"packet forwarder still connected after {timeout_s} s"),
        )
        return self.status

    # --- the consumer's side ------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[RxFrame]:
        """The received packets with a good or no CRC, in arrival order, until closed."""
        while (frame := await self._queue.next()) is not None:
            self._counters.rx_delivered += 1
            yield frame

    async def transmit(self, request: TxRequest, *, timeout_s: float | None = None) -> TxAck:
        """Send ``request`` to the forwarder as a PULL_RESP and return its TX_ACK as a
        :class:`TxAck` (token: the PULL_RESP's; a refusal is returned, not raised).

        Raises :class:`RadioDisconnected` when no forwarder is connected (no PULL_DATA within
        ``pull_timeout_s``), :class:`RadioTimeout` without a TX_ACK within ``timeout_s``
        (default ``tx_ack_timeout_s``). A forwarder older than GWMP v2 never sends a TX_ACK:
        its downlinks always end in RadioTimeout, although it may well have sent them.
        """
        transport = self._transport
        addr = self._forwarder_addr
        if transport is None or addr is None or not self._is_connected():
            raise RadioDisconnected(f"no packet forwarder connected ({self._describe_peer()})")
        wait_s = self._tx_ack_timeout_s if timeout_s is None else timeout_s
        token = self._next_token()
        datagram = PullResp(
            token=token,
            txpk=Txpk.from_tx_request(request, rf_chain=self._tx_rf_chain),
            version=self._forwarder_version,
        )
        future: asyncio.Future[TxAckDatagram] = asyncio.get_running_loop().create_future()
        # Register the waiter before sending: the TX_ACK may come back before sendto returns.
        self._waiters[token] = future
        self._counters.tx_requested += 1
        try:
            transport.sendto(datagram.to_bytes(), addr)
            async with asyncio.timeout(wait_s):
                answer = await future
        except TimeoutError as err:
            self._counters.tx_timeouts += 1
            raise RadioTimeout(
                f"no TX_ACK from the packet forwarder at {addr[0]}:{addr[1]} for token"
                f" {token} within {wait_s} s (it may or may not have transmitted)"
            ) from err
        finally:
            self._waiters.pop(token, None)
        ack = answer.ack.to_tx_ack(token)
        if ack.error is TxError.NONE:
            self._counters.tx_scheduled += 1
        else:
            self._counters.tx_refused += 1
            log.info("packet forwarder refused a transmission: %s", ack.error.name)
        return ack

    @property
    def counters(self) -> RadioCounters:
        """A copy of the counters now."""
        return dataclasses.replace(self._counters)

    @property
    def status(self) -> RadioStatus:
        """Connected while PULL_DATA keeps arriving; ``port`` names the listening address and
        the forwarder served."""
        return RadioStatus(
            connected=self._is_connected(),
            port=f"udp://{_host_port(self._host, self._local_port or self._port)}"
            f" ({self._describe_peer()})",
            hello=None,
            config_id=None,
            last_error=self._last_error,
        )

    @property
    def forwarder_stats(self) -> ForwarderStats:
        """The forwarder's own figures from its ``stat`` reports."""
        return self._stats

    @property
    def foreign_datagrams(self) -> int:
        """Datagrams dropped because they came from another gateway EUI."""
        return self._foreign

    @property
    def gateway_eui(self) -> bytes | None:
        """The EUI of the gateway served: the configured one, or the first heard."""
        return self._gateway_eui

    @property
    def pending_requests(self) -> int:
        """Transmissions waiting for their TX_ACK now (0 when idle: none are left behind)."""
        return len(self._waiters)

    # --- keep-alive ---------------------------------------------------------------------------

    def _connected_for_s(self) -> float:
        if self._last_pull is None:
            return 0.0
        return self._last_pull + self._pull_timeout_s - time.monotonic()

    def _is_connected(self) -> bool:
        return not self._closed and self._connected_for_s() > 0

    def _describe_peer(self) -> str:
        eui = self._gateway_eui.hex() if self._gateway_eui is not None else "not heard yet"
        addr = self._forwarder_addr
        if addr is None:
            return f"forwarder {eui}, no PULL_DATA yet"
        return f"forwarder {eui} at {_host_port(*addr)}"

    async def _watch_keepalive(self) -> None:
        # Wakes when the last PULL_DATA expires, to log the loss once when it happens (the
        # state itself is computed from the clock whenever it is read).
        while True:
            remaining_s = self._connected_for_s()
            if remaining_s > 0:
                await asyncio.sleep(remaining_s)
                continue
            if self._last_pull is not None and not self._lost:
                self._lost = True
                self._last_error = f"no PULL_DATA for {self._pull_timeout_s} s"
                log.warning(
                    "packet forwarder lost: %s (%s)", self._last_error, self._describe_peer()
                )
                self._disconnected.set()
            self._pulled.clear()
            await self._pulled.wait()

    # --- receiving ----------------------------------------------------------------------------

    def _next_token(self) -> int:
        # PROTOCOL.TXT 5.4: a random token, which the TX_ACK repeats; skip tokens in use
        # and 0 (the token a v1 forwarder would echo, and not a valid TxAck token).
        for _ in range(_TOKEN_MAX):
            token = self._rng.randint(1, _TOKEN_MAX)
            if token not in self._waiters:
                return token
        raise RadioError(f"all {_TOKEN_MAX} tokens are waiting for TX_ACKs")

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._closed:
            return
        try:
            header = parse_header(data)
        except GwmpDatagramError as err:
            self._counters.link_frame_errors += 1
            log.debug("bad datagram from %s:%d: %s", addr[0], addr[1], err.message)
            return
        if header.gateway_eui is None:
            # PUSH_ACK, PULL_ACK, PULL_RESP: sent by servers, never by a forwarder.
            self._counters.link_invalid += 1
            log.debug(
                "dropped a %s from %s:%d (a server's datagram): %s",
                header.packet_type.name,
                addr[0],
                addr[1],
                data[:_HEX_LIMIT].hex(),
            )
            return
        if not self._accept_eui(header.gateway_eui, addr):
            return
        if header.packet_type is PacketType.PUSH_DATA:
            # PROTOCOL.TXT 3.3: acknowledge at once, whatever the JSON holds; the forwarder
            # only uses the PUSH_ACK for its ackr figure and never resends.
            self._send(PushAck(token=header.token, version=header.version).to_bytes(), addr)
        elif header.packet_type is PacketType.PULL_DATA:
            self._on_pull(header, addr)
            return
        try:
            datagram = decode_datagram(data)
        except GwmpError as err:
            self._counters.link_invalid += 1
            log.warning("invalid %s from the packet forwarder: %s", header.packet_type.name, err)
            log.debug("invalid datagram: %s", data[:_HEX_LIMIT].hex())
            return
        if isinstance(datagram, PushData):
            self._on_push(datagram)
        elif isinstance(datagram, TxAckDatagram):
            self._on_tx_ack(datagram)

    def _accept_eui(self, eui: bytes, addr: tuple[str, int]) -> bool:
        if self._gateway_eui is None:
            # One agent serves one gateway: the first heard, when none was configured.
            self._gateway_eui = eui
            log.info("serving packet forwarder %s (first heard, at %s:%d)", eui.hex(), *addr)
            return True
        if eui == self._gateway_eui:
            return True
        self._foreign += 1
        if eui not in self._foreign_logged and len(self._foreign_logged) < _FOREIGN_EUIS_LOGGED:
            self._foreign_logged.add(eui)
            log.warning(
                "dropping datagrams of gateway %s from %s:%d: this agent serves %s",
                eui.hex(),
                addr[0],
                addr[1],
                self._gateway_eui.hex(),
            )
        else:
            log.debug("dropped a datagram of gateway %s from %s:%d", eui.hex(), *addr)
        return False

    def _on_pull(self, header: DatagramHeader, addr: tuple[str, int]) -> None:
        # PROTOCOL.TXT 5.2: the PULL_DATA's source is where downlinks go (the forwarder's
        # "down" socket, often another port than its PUSH_DATA's, and behind NAT the only
        # address that reaches it).
        was_connected = self._is_connected()
        if self._last_pull is not None and not was_connected:
            self._counters.reconnects += 1
            log.info("packet forwarder back (%s:%d)", *addr)
        elif self._last_pull is None:
            log.info("packet forwarder connected from %s:%d", *addr)
        if self._forwarder_addr not in (None, addr):
            log.info("packet forwarder moved to %s:%d", *addr)
        self._forwarder_addr = addr
        self._forwarder_version = header.version
        self._last_pull = time.monotonic()
        self._lost = False
        self._disconnected.clear()
        self._last_error = None
        self._send(PullAck(token=header.token, version=header.version).to_bytes(), addr)
        self._pulled.set()

    def _on_push(self, datagram: PushData) -> None:
        counters = self._counters
        for rejected in datagram.rejected:
            counters.link_invalid += 1
            log.warning("invalid object in a PUSH_DATA: %s", rejected.problem)
        if datagram.stat is not None:
            self._on_stat(datagram.stat)
        for rxpk in datagram.rxpk:
            counters.rx_received += 1
            if rxpk.stat == CrcStatus.BAD:
                # Like the serial backend: a bad CRC is counted and dropped, never delivered.
                counters.rx_crc_bad += 1
                continue
            try:
                frame = rxpk.to_rx_frame()
            except GwmpError as err:
                counters.link_invalid += 1
                log.warning("received packet not usable: %s", err.message)
                continue
            if frame.crc_status is CrcStatus.OK:
                counters.rx_crc_ok += 1
            # stat 0 (no CRC) is delivered, as RadioBackend promises for packets without a
            # CRC: the LoRaWAN layer's MIC check is what rejects a damaged one.
            if self._queue.full:
                counters.rx_dropped += 1
                log.debug("consumer behind: dropped a received packet")
                continue
            self._queue.put(frame)

    def _on_stat(self, stat: Stat) -> None:
        old = self._stats
        self._stats = ForwarderStats(
            reports=old.reports + 1,
            rx_received=old.rx_received + (stat.rxnb or 0),
            rx_ok=old.rx_ok + (stat.rxok or 0),
            rx_forwarded=old.rx_forwarded + (stat.rxfw or 0),
            tx_requested=old.tx_requested + (stat.dwnb or 0),
            tx_sent=old.tx_sent + (stat.txnb or 0),
            last=stat,
        )
        log.debug("packet forwarder stat: %s", stat)

    def _on_tx_ack(self, datagram: TxAckDatagram) -> None:
        future = self._waiters.get(datagram.token)
        if future is None or future.done():
            log.debug("TX_ACK with token %d matches no downlink", datagram.token)
            return
        future.set_result(datagram)
