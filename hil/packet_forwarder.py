"""An emulated Semtech UDP packet forwarder: the gateway side of GWMP v2
(``docs/radios/semtech-udp.md``), built on the same codec as the server, :mod:`owlgate.codecs.gwmp`.

:class:`EmulatedPacketForwarder` behaves as Lora-net ``packet_forwarder`` does on the wire: an
"up" socket sends PUSH_DATA (received packets, status) and reads PUSH_ACKs, a "down" socket
sends a PULL_DATA keep-alive every ``keepalive_s``, reads PULL_ACKs and PULL_RESPs, and answers
each PULL_RESP with a TX_ACK. A test drives the radio side: :meth:`push` reports received
packets, :attr:`downlinks` records what the server asked to transmit, :meth:`answer_next_with`
makes the next TX_ACK a refusal, ``send_tx_ack = False`` (or ``version=1``) sends none at all,
and :meth:`send_raw` sends garbage.

It runs in the caller's asyncio loop; the server is anything on ``host``:``port`` (the tests:
:class:`~owlgate.edge.semtech_udp.SemtechUdpBackend` on 127.0.0.1 and a free port).

**Faults.** ``plan`` is a :class:`~owlgate.hil.faults.FaultPlan`
(:attr:`~EmulatedPacketForwarder.plan`, empty by default) over datagrams: ``to_host`` is
what the forwarder sends (both sockets), ``to_device`` what it receives. Each datagram is one
write to the plan, so triggers count datagram bytes. What the kinds mean for UDP, which
delivers a datagram whole or not at all:

- ``drop``: a byte dropped anywhere loses the whole datagram (counted in
  :attr:`~EmulatedPacketForwarder.datagrams_lost`; a per-byte ``probability`` p loses a datagram
  of n bytes with probability 1 - (1 - p)^n);
- ``corrupt``, ``insert``, ``reset``: the datagram goes out changed (flipped bits, extra
  bytes, cut short), for the receiver's codec to reject;
- ``delay`` and ``stall``: the datagram goes out that much later (later ones are not held:
  UDP reorders);
- ``silence``: datagrams in that direction are lost;
- ``unplug``: the network cable is out: every datagram, both directions, is lost for
  ``duration_s`` (0: until :meth:`~EmulatedPacketForwarder.replug`); logged with ``replug``.

Every fault lands in ``plan.log`` with its timestamp, as on the serial emulators. The
datagrams received are dispatched by type through one
:class:`~owlgate.hil.serial_device.CommandTable`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

from ..codecs.concentrator import TxError
from ..codecs.errors import CodecError
from ..codecs.gwmp import (
    PROTOCOL_VERSION,
    PullAck,
    PullData,
    PullResp,
    PushAck,
    PushData,
    Rxpk,
    Stat,
    TxAckDatagram,
    TxpkAck,
    decode_datagram,
)
from .faults import Direction, FaultPlan
from .serial_device import CommandTable

log = logging.getLogger(__name__)

#: The EUI of the example gateway in PROTOCOL.TXT-style configurations (``gateway_ID``).
DEFAULT_EUI: Final = bytes.fromhex("aa555a0000000101")
#: The reference forwarder's ``keepalive_interval`` (seconds between PULL_DATA).
KEEPALIVE_S: Final = 10.0
_COUNTER_MODULUS: Final = 1 << 32
_TOKEN_MAX: Final = 0xFFFF

#: What the forwarder does with each datagram type the server may send (and with those only a
#: forwarder sends).
_RECEIVED: CommandTable[type, EmulatedPacketForwarder, None] = CommandTable("GWMP gateway side")


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, forwarder: EmulatedPacketForwarder, name: str) -> None:
        self._forwarder = forwarder
        self._name = name

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._forwarder._on_datagram(data, self._name)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while no server listens: a real forwarder ignores it too.
        log.debug("emulated forwarder %s socket: %s", self._name, exc)


class EmulatedPacketForwarder:
    """A packet forwarder with ``gateway_eui`` forwarding to ``host``:``port``.

    ``keepalive_s``: PULL_DATA period (the first is sent on start); ``stat_interval_s``: a
    ``stat`` report every so often (None: only when :meth:`send_stat` is called).
    ``version`` 1 emulates a forwarder before GWMP v2: version-1 headers and no TX_ACK.
    ``keepalive_on_start`` False waits for :meth:`start_keepalive` before the first PULL_DATA.
    ``seed`` fixes the concentrator counter's start and the tokens. ``plan``: faults on the
    datagrams (see the module text).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        gateway_eui: bytes = DEFAULT_EUI,
        keepalive_s: float = KEEPALIVE_S,
        stat_interval_s: float | None = None,
        version: int = PROTOCOL_VERSION,
        keepalive_on_start: bool = True,
        seed: int | None = None,
        plan: FaultPlan | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.gateway_eui = gateway_eui
        self.keepalive_s = keepalive_s
        self.stat_interval_s = stat_interval_s
        self.version = version
        self.keepalive_on_start = keepalive_on_start
        #: False: PULL_RESPs are recorded but never answered (a forwarder before v2 does so).
        self.send_tx_ack = version >= 2
        #: False: a successful TX_ACK carries no JSON at all, which PROTOCOL.TXT 5.5 allows
        #: (the reference forwarder always sends ``{"txpk_ack":{"error":"NONE"}}``).
        self.tx_ack_json = True
        #: Every PULL_RESP received, in order.
        self.downlinks: list[PullResp] = []
        #: Tokens of the PUSH_ACKs and PULL_ACKs received, in order.
        self.push_ack_tokens: list[int] = []
        self.pull_ack_tokens: list[int] = []
        #: Datagrams from the server that did not decode, or were not for a forwarder.
        self.invalid_received = 0
        #: Tokens of the PUSH_DATA and PULL_DATA sent, in order.
        self.push_tokens: list[int] = []
        self.pull_tokens: list[int] = []
        self._next_errors: list[TxError] = []
        self._rng = random.Random(seed)
        self._counter_offset_us = self._rng.randrange(_COUNTER_MODULUS)
        self._start_ns = time.monotonic_ns()
        self._up: asyncio.DatagramTransport | None = None
        self._down: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._keepalive: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        #: The faults on the datagrams, and the log of every fault applied.
        self.plan = plan if plan is not None else FaultPlan()
        #: Datagrams lost to the plan (drop, silence, the cable out), both directions.
        self.datagrams_lost = 0
        self._offline_until_s: float | None = None
        self._held: set[asyncio.TimerHandle] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self.plan.start()
        remote = (self.host, self.port)
        self._up, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self, "up"), remote_addr=remote
        )
        self._down, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self, "down"), remote_addr=remote
        )
        if self.keepalive_on_start:
            self.start_keepalive()
        if self.stat_interval_s is not None:
            self._tasks.append(asyncio.create_task(self._stat_loop(self.stat_interval_s)))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the periodic datagrams and close both sockets (held datagrams are lost)."""
        for handle in self._held:
            handle.cancel()
        self._held.clear()
        self.stop_keepalive()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()
        for transport in (self._up, self._down):
            if transport is not None:
                transport.close()
        self._up = self._down = None

    def start_keepalive(self) -> None:
        """Send PULL_DATA now and every ``keepalive_s`` (the forwarder's normal life)."""
        if self._keepalive is None:
            self._keepalive = asyncio.create_task(self._keepalive_loop(), name="emulated pull")

    def stop_keepalive(self) -> None:
        """Stop sending PULL_DATA (the forwarder went away, or its down link is cut)."""
        task, self._keepalive = self._keepalive, None
        if task is not None:
            task.cancel()
            self._tasks.append(task)  # awaited on close

    @property
    def up_port(self) -> int:
        """The local UDP port PUSH_DATA is sent from."""
        return self._local_port(self._up)

    @property
    def down_port(self) -> int:
        """The local UDP port PULL_DATA is sent from, where downlinks arrive."""
        return self._local_port(self._down)

    @staticmethod
    def _local_port(transport: asyncio.DatagramTransport | None) -> int:
        if transport is None:
            raise RuntimeError("the emulated forwarder is not started")
        return int(transport.get_extra_info("sockname")[1])

    # --- the radio side -----------------------------------------------------------------------

    @property
    def counter_us(self) -> int:
        """The emulated concentrator's 32-bit microsecond counter now (``tmst``)."""
        elapsed_us = (time.monotonic_ns() - self._start_ns) // 1000
        return (self._counter_offset_us + elapsed_us) % _COUNTER_MODULUS

    def rxpk(
        self,
        payload: bytes,
        *,
        freq: float = 868.1,
        datr: str = "SF7BW125",
        codr: str = "4/5",
        rssi: float = -57,
        lsnr: float = 9.5,
        stat: int = 1,
        chan: int = 0,
        rfch: int = 0,
        tmst: int | None = None,
    ) -> Rxpk:
        """An ``rxpk`` as this gateway would report ``payload`` (``tmst`` default: now)."""
        return Rxpk(
            time=None,
            tmst=self.counter_us if tmst is None else tmst,
            freq=freq,
            chan=chan,
            rfch=rfch,
            stat=stat,
            modu="LORA",
            datr=datr,
            codr=codr,
            rssi=rssi,
            lsnr=lsnr,
            size=len(payload),
            data=payload,
        )

    def push(self, *packets: bytes | Rxpk, stat: Stat | None = None) -> int:
        """Send one PUSH_DATA with ``packets`` (payloads get :meth:`rxpk`'s defaults) and the
        optional ``stat``; returns its token."""
        token = self._token()
        datagram = PushData(
            token=token,
            gateway_eui=self.gateway_eui,
            rxpk=tuple(self.rxpk(p) if isinstance(p, bytes) else p for p in packets),
            stat=stat,
            version=self.version,
        )
        self.push_tokens.append(token)
        self._send("up", datagram.to_bytes())
        return token

    def send_stat(self, stat: Stat | None = None) -> int:
        """Send a PUSH_DATA holding only a ``stat`` report (default: zero counts)."""
        if stat is None:
            stat = Stat(
                time=time.strftime("%Y-%m-%d %H:%M:%S GMT", time.gmtime()),
                rxnb=0,
                rxok=0,
                rxfw=0,
                ackr=100.0,
                dwnb=len(self.downlinks),
                txnb=0,
            )
        return self.push(stat=stat)

    def send_pull_data(self) -> int:
        """Send one PULL_DATA now; returns its token."""
        token = self._token()
        self.pull_tokens.append(token)
        pull = PullData(token=token, gateway_eui=self.gateway_eui, version=self.version)
        self._send("down", pull.to_bytes())
        return token

    def send_raw(self, data: bytes, *, down: bool = False) -> None:
        """Send ``data`` as it is (garbage, a truncated datagram, a foreign EUI's)."""
        self._send("down" if down else "up", data)

    def answer_next_with(self, *errors: TxError | str) -> None:
        """Answer the next PULL_RESPs with these ``txpk_ack`` errors, one each, in order
        (``"TOO_LATE"`` or ``TxError.TOO_LATE``); later ones get NONE again."""
        self._next_errors.extend(e if isinstance(e, TxError) else TxError[e] for e in errors)

    async def wait_for(self, what: str, count: int, timeout_s: float) -> None:
        """Wait until ``len(getattr(self, what)) >= count`` for ``downlinks``,
        ``push_ack_tokens`` or ``pull_ack_tokens``; TimeoutError after ``timeout_s``."""
        lists: dict[str, list[PullResp] | list[int]] = {
            "downlinks": self.downlinks,
            "push_ack_tokens": self.push_ack_tokens,
            "pull_ack_tokens": self.pull_ack_tokens,
        }
        watched = lists[what]
        async with asyncio.timeout(timeout_s):
            while len(watched) < count:
                self._changed.clear()
                await self._changed.wait()

    async def wait_push_ack(self, token: int, timeout_s: float) -> None:
        """Wait until the PUSH_ACK of ``token`` arrived; TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while token not in self.push_ack_tokens:
                self._changed.clear()
                await self._changed.wait()

    def replug(self) -> None:
        """The network cable is back after an ``unplug`` fault (logged as ``replug``)."""
        if self._offline_until_s is None:
            return
        self._offline_until_s = None
        self.plan.log.record("to_host", "replug", self.plan.position("to_host"), b"", "network")

    @property
    def offline(self) -> bool:
        """Whether an ``unplug`` fault holds the network cable out now."""
        until = self._offline_until_s
        if until is None:
            return False
        if asyncio.get_running_loop().time() < until:
            return True
        self.replug()
        return False

    # --- internals ----------------------------------------------------------------------------

    def _token(self) -> int:
        return self._rng.randint(0, _TOKEN_MAX)

    def _send(self, which: str, data: bytes) -> None:
        transport = self._up if which == "up" else self._down
        if transport is None:
            raise RuntimeError("the emulated forwarder is not started")
        self._through_plan("to_host", data, transport.sendto)

    def _through_plan(
        self, direction: Direction, data: bytes, deliver: Callable[[bytes], object]
    ) -> None:
        """Hand one datagram to the plan, then to ``deliver`` (now, later, changed or never)."""
        if self.offline:
            self.datagrams_lost += 1
            return
        logged = len(self.plan.log)
        applied = self.plan.apply(direction, data)
        loop = asyncio.get_running_loop()
        if applied.unplug_s is not None:
            duration_s = applied.unplug_s
            self._offline_until_s = loop.time() + duration_s if duration_s > 0 else float("inf")
            detail = f"network for {duration_s:g} s" if duration_s > 0 else "network"
            self.plan.log.record(direction, "unplug", self.plan.position(direction), b"", detail)
            self.datagrams_lost += 1
            return
        dropped = any(e.kind == "drop" for e in self.plan.log.events()[logged:])
        if dropped or not applied.data:
            # UDP delivers a datagram whole or not at all: a lost byte loses all of it.
            self.datagrams_lost += 1
            return
        hold_s = applied.delay_s + applied.stall_s
        if hold_s <= 0:
            deliver(applied.data)
            return

        def release() -> None:
            self._held.discard(handle)
            deliver(applied.data)

        handle = loop.call_later(hold_s, release)
        self._held.add(handle)

    async def _keepalive_loop(self) -> None:
        while True:
            self.send_pull_data()
            await asyncio.sleep(self.keepalive_s)

    async def _stat_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.send_stat()

    def _on_datagram(self, data: bytes, socket_name: str) -> None:
        self._through_plan("to_device", data, self._received)

    def _received(self, data: bytes) -> None:
        try:
            datagram = decode_datagram(data)
        except CodecError as err:
            self.invalid_received += 1
            log.debug("emulated forwarder: invalid datagram %s (%s)", data.hex(), err)
            return
        handler = _RECEIVED.get(type(datagram))
        if handler is None:
            self.invalid_received += 1
        else:
            handler(self, datagram)
        self._changed.set()

    @_RECEIVED.on(PushAck)
    def _on_push_ack(self, datagram: PushAck) -> None:
        self.push_ack_tokens.append(datagram.token)

    @_RECEIVED.on(PullAck)
    def _on_pull_ack(self, datagram: PullAck) -> None:
        self.pull_ack_tokens.append(datagram.token)

    @_RECEIVED.on(PushData, PullData, TxAckDatagram)
    def _not_for_a_forwarder(self, datagram: PushData | PullData | TxAckDatagram) -> None:
        # What a gateway sends, not what a server sends to one.
        self.invalid_received += 1

    @_RECEIVED.on(PullResp)
    def _on_pull_resp(self, datagram: PullResp) -> None:
        self.downlinks.append(datagram)
        if not self.send_tx_ack:
            return
        error = self._next_errors.pop(0) if self._next_errors else TxError.NONE
        ack = TxAckDatagram(
            token=datagram.token,
            gateway_eui=self.gateway_eui,
            ack=TxpkAck(error=error),
            ack_json=error is not TxError.NONE or self.tx_ack_json,
            version=self.version,
        )
        self._send("down", ack.to_bytes())
