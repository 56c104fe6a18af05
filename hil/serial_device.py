"""One emulated serial device behind a pty path and/or a TCP ``socket://`` port, paced at its
baud rate, with a :class:`~owlgate.hil.faults.FaultPlan` on both directions.

The device's behaviour is a handler, built by a factory that gets the device's ``send``::

    class Echo:
        def __init__(self, send: Send) -> None:
            self.send = send

        def on_bytes(self, data: bytes) -> None:
            self.send(data)

    device = SerialDevice(Echo, pty_path=tmp / "ttyECHO0", tcp=True, baudrate=9600)

``on_bytes(data)`` gets what the host wrote (after faults and pacing), ``send(data)`` answers
(faults, then pacing, then every connected host side). The emulators in this package already
have this shape (a ``PtyPort``'s ``on_bytes`` callback and its ``write``).

Exposure:

- ``pty_path``: a :class:`~owlgate.hil.pty.PtyPort` symlink for pyserial and any serial
  program. Pacing follows the baud rate the host set on the pty (termios, read per write as
  :mod:`owlgate.hil.rn2483` does), else ``baudrate``.
- ``tcp=True``: a server on ``127.0.0.1`` (``tcp_port``, 0 for a free one), reached with
  ``serial.serial_for_url(device.url)`` (``socket://127.0.0.1:PORT``). One client at a time (a
  new connection replaces the old one). A socket has no baud rate: pacing uses ``baudrate``.

``expected_baud``: while the host's pty speed differs, bytes in both directions are lost
(``wrong_baud_mode="ignore"``, a UART that sees only framing errors) or garbled
(``"garble"``, :func:`~owlgate.hil.faults.garble`), and each such write is logged as a
``wrong_baud`` event in the fault log and counted in :attr:`SerialDevice.wrong_baud_writes`.

:meth:`SerialDevice.unplug` removes the pty path and closes the TCP server and connection (new
connections are refused); :meth:`SerialDevice.replug` brings both back (same path, same port).
An ``unplug`` fault does the same from the plan, replugging after its ``duration_s``.

Everything runs in the caller's asyncio loop; the plan may be changed from another thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final, Literal, Protocol, Self

from .faults import Direction, FaultPlan, garble
from .paced_line import BITS_PER_BYTE_8N1, LineSchedule
from .pty import AsyncLifecycle, PtyPort
from .rn2483 import host_baud

log = logging.getLogger(__name__)

#: Bytes leave the pacer in chunks of about this much line time.
DEFAULT_CHUNK_S: Final = 0.002
TCP_HOST: Final = "127.0.0.1"

Send = Callable[[bytes], None]
WrongBaudMode = Literal["ignore", "garble"]


class DeviceHandler(Protocol):
    """A device's behaviour: ``on_bytes`` gets what the host wrote."""

    def on_bytes(self, data: bytes) -> None: ...


HandlerFactory = Callable[[Send], DeviceHandler]


class _Lane:
    """One direction of one host side: its pacing schedule and the chunks waiting for their
    release time, written to ``sink``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, baudrate: int, sink: Send) -> None:
        self.loop = loop
        self.sink = sink
        self.schedule = self._schedule(baudrate)
        self.waiting: deque[tuple[float, bytes]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.hold_until_s = float("-inf")

    @staticmethod
    def _schedule(baudrate: int) -> LineSchedule:
        chunk = max(1, round(baudrate / BITS_PER_BYTE_8N1 * DEFAULT_CHUNK_S))
        return LineSchedule(baudrate, chunk_bytes=chunk)

    def push(self, data: bytes, baudrate: int, *, delay_s: float, stall_s: float) -> None:
        now_s = self.loop.time()
        if baudrate != self.schedule.baudrate:
            self.schedule = self._schedule(baudrate)
        if stall_s > 0:
            self.hold_until_s = max(self.hold_until_s, now_s + stall_s)
        start_s = max(now_s + delay_s, self.hold_until_s)
        offset = 0
        for due_s, size in self.schedule.admit(len(data), start_s):
            self.waiting.append((due_s, data[offset : offset + size]))
            offset += size
        if self.timer is None:
            self._arm()

    def _arm(self) -> None:
        if self.waiting:
            self.timer = self.loop.call_at(self.waiting[0][0], self._release)
        else:
            self.timer = None

    def _release(self) -> None:
        now_s = self.loop.time()
        out = bytearray()
        while self.waiting and self.waiting[0][0] <= now_s:
            out += self.waiting.popleft()[1]
        self._arm()
        if out:
            self.sink(bytes(out))

    def clear(self) -> int:
        dropped = sum(len(chunk) for _, chunk in self.waiting)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.waiting.clear()
        self.schedule.reset()
        self.hold_until_s = float("-inf")
        return dropped


class SerialDevice(AsyncLifecycle):
    """An emulated serial device (see the module text)."""

    def __init__(
        self,
        handler: HandlerFactory,
        *,
        pty_path: str | os.PathLike[str] | None = None,
        tcp: bool = False,
        tcp_port: int = 0,
        baudrate: int = 115200,
        expected_baud: int | None = None,
        wrong_baud_mode: WrongBaudMode = "ignore",
        plan: FaultPlan | None = None,
        label: str = "serial device",
    ) -> None:
        if pty_path is None and not tcp:
            raise ValueError("a serial device needs a pty_path, tcp=True, or both")
        if baudrate <= 0:
            raise ValueError(f"baudrate must be positive, got {baudrate}")
        self.label = label
        self.baudrate = baudrate
        self.expected_baud = expected_baud
        self.wrong_baud_mode: WrongBaudMode = wrong_baud_mode
        self.plan = plan if plan is not None else FaultPlan()
        self.handler = handler(self.send)
        self.path = Path(pty_path) if pty_path is not None else None
        self._tcp = tcp
        self.tcp_port = tcp_port
        self._pty: PtyPort | None = None
        self._server: asyncio.Server | None = None
        self._client: asyncio.StreamWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lanes: dict[str, dict[Direction, _Lane]] = {}
        self._replug_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.plugged = False
        #: Writes lost or garbled because the host's pty speed was not ``expected_baud``.
        self.wrong_baud_writes = 0
        #: Bytes lost on the line by an unplug.
        self.dropped_bytes = 0

    @property
    def url(self) -> str:
        """The pyserial URL of the TCP side (``socket://127.0.0.1:PORT``)."""
        if not self._tcp:
            raise ValueError(f"{self.label} has no TCP side")
        return f"socket://{TCP_HOST}:{self.tcp_port}"

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Open the pty and/or the TCP server and start the fault plan's clock."""
        self._loop = asyncio.get_running_loop()
        self.plan.start()
        await self._plug()
        return self

    async def close(self) -> None:
        """Close every side (idempotent)."""
        if self._replug_timer is not None:
            self._replug_timer.cancel()
            self._replug_timer = None
        await self._unplug_sides()

    async def unplug(self) -> None:
        """Pull the cable: the pty path disappears, the TCP port refuses connections."""
        if not self.plugged:
            return
        await self._unplug_sides()
        self.plan.log.record("to_host", "unplug", self.plan.position("to_host"), b"", self.label)

    async def replug(self) -> None:
        """Plug the cable back: the same path and port, a new pty and a new server."""
        if self._replug_timer is not None:
            self._replug_timer.cancel()
            self._replug_timer = None
        if self.plugged:
            return
        await self._plug()
        self.plan.log.record("to_host", "replug", self.plan.position("to_host"), b"", self.label)

    async def _plug(self) -> None:
        loop = self._loop
        assert loop is not None
        if self.path is not None:
            self._pty = PtyPort(
                self.path,
                label=f"{self.label} {self.path}",
                on_bytes=self._from_pty,
                on_error=self._pty_error,
            )
            self._pty.open()
            self._lanes["pty"] = self._make_lanes(loop, self._pty_write)
        if self._tcp:
            self._server = await asyncio.start_server(self._accept, TCP_HOST, self.tcp_port)
            self.tcp_port = self._server.sockets[0].getsockname()[1]
        self.plugged = True
        log.info("%s plugged: pty %s, tcp %s", self.label, self.path, self._tcp and self.tcp_port)

    def _make_lanes(self, loop: asyncio.AbstractEventLoop, sink: Send) -> dict[Direction, _Lane]:
        return {
            "to_device": _Lane(loop, self.baudrate, self.handler.on_bytes),
            "to_host": _Lane(loop, self.baudrate, sink),
        }

    async def _unplug_sides(self) -> None:
        self.plugged = False
        for lanes in self._lanes.values():
            for lane in lanes.values():
                self.dropped_bytes += lane.clear()
        self._lanes.clear()
        if self._pty is not None:
            self.dropped_bytes += self._pty.close()
            self._pty = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Closing the client's writer ends its reader loop (end of file): no cancel needed.
        self._drop_client()
        if server is not None:
            await server.wait_closed()

    def _pty_write(self, data: bytes) -> None:
        if self._pty is not None and not self._pty.write(data):
            log.info("%s: %d bytes refused by the unplugged pty", self.label, len(data))

    def _pty_error(self, reason: str) -> None:
        log.warning("%s: pty %s", self.label, reason)

    # --- TCP ----------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = self._loop
        assert loop is not None
        if self._client is not None:
            log.info("%s: a new TCP client replaces the old one", self.label)
            self._drop_client()
        self._client = writer
        self._lanes["tcp"] = self._make_lanes(loop, self._tcp_write)
        try:
            while data := await reader.read(4096):
                self._from_host("tcp", data, self.baudrate)
        except ConnectionError as err:
            log.info("%s: TCP client gone: %s", self.label, err)
        finally:
            if self._client is writer:
                self._drop_client()
            writer.close()

    def _tcp_write(self, data: bytes) -> None:
        if self._client is not None and not self._client.is_closing():
            self._client.write(data)

    def _drop_client(self) -> None:
        lanes = self._lanes.pop("tcp", None)
        if lanes is not None:
            for lane in lanes.values():
                self.dropped_bytes += lane.clear()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- bytes --------------------------------------------------------------------------------

    def _pty_rate(self) -> int | None:
        tty_path = self._pty.tty_path if self._pty is not None else None
        return host_baud(tty_path) if tty_path is not None else None

    def _from_pty(self, data: bytes) -> None:
        rate = self._pty_rate()
        data = self._baud_check("to_device", data, rate)
        if data:
            self._from_host("pty", data, rate or self.baudrate)

    def _baud_check(self, direction: Direction, data: bytes, rate: int | None) -> bytes:
        if self.expected_baud is None or rate is None or rate == self.expected_baud:
            return data
        self.wrong_baud_writes += 1
        detail = f"host at {rate} baud, device at {self.expected_baud}: {self.wrong_baud_mode}"
        self.plan.log.record(direction, "wrong_baud", self.plan.position(direction), data, detail)
        return garble(data) if self.wrong_baud_mode == "garble" else b""

    def _from_host(self, side: str, data: bytes, rate: int) -> None:
        applied = self.plan.apply("to_device", data)
        lanes = self._lanes.get(side)
        if applied.unplug_s is not None:
            self._fault_unplug(applied.unplug_s)
            return
        if lanes is not None and applied.data:
            lanes["to_device"].push(
                applied.data, rate, delay_s=applied.delay_s, stall_s=applied.stall_s
            )

    def send(self, data: bytes) -> None:
        """The device answers ``data``: faults, pacing, then every connected host side."""
        if not self.plugged or not data:
            return
        applied = self.plan.apply("to_host", data)
        if applied.unplug_s is not None:
            self._fault_unplug(applied.unplug_s)
            return
        if not applied.data:
            return
        for side, lanes in self._lanes.items():
            out, rate = applied.data, self.baudrate
            if side == "pty":
                host_rate = self._pty_rate()
                out = self._baud_check("to_host", out, host_rate)
                rate = host_rate or self.baudrate
            if out:
                lanes["to_host"].push(out, rate, delay_s=applied.delay_s, stall_s=applied.stall_s)

    def _fault_unplug(self, duration_s: float) -> None:
        loop = self._loop
        assert loop is not None
        detail = f"{self.label} for {duration_s:g} s" if duration_s > 0 else self.label
        self.plan.log.record("to_host", "unplug", self.plan.position("to_host"), b"", detail)
        # Unplugging closes the TCP client whose reader may be the caller: run it as a task.
        self._spawn(self._unplug_sides())
        if duration_s > 0:
            self._replug_timer = loop.call_later(duration_s, self._scheduled_replug)

    def _scheduled_replug(self) -> None:
        assert self._loop is not None
        self._replug_timer = None
        self._spawn(self.replug())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: unplug or replug failed", self.label, exc_info=task.exception())
