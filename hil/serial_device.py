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
(faults, then pacing, then every connected host side). Every emulator in this package
(concentrator, RAK3172, RN2483, wired bus) is such a handler, its transport a
:class:`SerialDevice`; their commands are :class:`CommandTable` entries.

Exposure:

- ``pty_path``: a :class:`~owlgate.hil.pty.PtyPort` symlink for pyserial and any serial
  program. Pacing follows the baud rate the host set on the pty (termios, read per write),
  else ``baudrate``; :attr:`SerialDevice.rx_baud` tells a handler the host's rate for the
  bytes it is given now (an auto-bauding modem needs it).
- ``tcp=True``: a server on ``127.0.0.1`` (``tcp_port``, 0 for a free one), reached with
  ``serial.serial_for_url(device.url)`` (``socket://127.0.0.1:PORT``). One client at a time (a
  new connection replaces the old one). A socket has no baud rate: pacing uses ``baudrate``.

``paced=False`` passes bytes on as they come (faults still apply, and delays and stalls
still hold them back): a pty as fast as the kernel moves it.

``expected_baud``: while the host's pty speed differs, bytes in both directions are lost
(``wrong_baud_mode="ignore"``, a UART that sees only framing errors) or garbled
(``"garble"``, :func:`~owlgate.hil.faults.garble`), and each such write is logged as a
``wrong_baud`` event in the fault log and counted in :attr:`SerialDevice.wrong_baud_writes`.

:meth:`SerialDevice.unplug` removes the pty path and closes the TCP server and connection (new
connections are refused); :meth:`SerialDevice.replug` brings both back (same path, same port).
:meth:`~SerialDevice.unplug_now` and :meth:`~SerialDevice.replug_now` do the same without
awaiting, for callers in the loop's thread that are not coroutines (the emulators' own sync
``unplug()`` / ``replug()``). An ``unplug`` fault does the same from the plan, replugging after
its ``duration_s``.

Everything runs in the caller's asyncio loop; the plan may be changed from another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, Literal, Protocol, Self, TypeVar

from .faults import Direction, FaultPlan, garble
from .paced_line import BITS_PER_BYTE_8N1, LineSchedule
from .pty import AsyncLifecycle, PtyPort, host_baud

log = logging.getLogger(__name__)

#: Bytes leave the pacer in chunks of about this much line time.
DEFAULT_CHUNK_S: Final = 0.002
TCP_HOST: Final = "127.0.0.1"

Send = Callable[[bytes], None]
WrongBaudMode = Literal["ignore", "garble"]
#: A lane's sink: the bytes, and the host's baud rate they were written at (None: unknown).
_Sink = Callable[[bytes, int | None], None]

K = TypeVar("K")
O = TypeVar("O")  # noqa: E741 -- the owner of the handlers
R = TypeVar("R")
A = TypeVar("A")


class DeviceHandler(Protocol):
    """A device's behaviour: ``on_bytes`` gets what the host wrote."""

    def on_bytes(self, data: bytes) -> None: ...


HandlerFactory = Callable[[Send], DeviceHandler]


@dataclass(frozen=True, slots=True)
class BytesHandler:
    """A handler that is one callback (an emulator whose ``on_bytes`` is private)."""

    on_bytes: Callable[[bytes], None]


class CommandTable(Generic[K, O, R]):
    """An emulator's commands, declared once: one index from a key (a message class, an AT
    command and form, a command's words) to the method that answers it, registered with
    ``@TABLE.on(key, ...)`` on the method itself. A key declared twice is an error at import.

    ``O`` is the emulator class, ``R`` what every handler returns; each handler takes the
    emulator and one request (its own type: the table does not check it, the key does).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._handlers: dict[K, Callable[[O, Any], R]] = {}

    def on(self, *keys: K) -> Callable[[Callable[[O, A], R]], Callable[[O, A], R]]:
        """Register the decorated method for every one of ``keys``."""

        def register(handler: Callable[[O, A], R]) -> Callable[[O, A], R]:
            for key in keys:
                if key in self._handlers:
                    raise ValueError(f"{self.name}: {key!r} has two handlers")
                self._handlers[key] = handler
            return handler

        return register

    def get(self, key: K) -> Callable[[O, Any], R] | None:
        """The handler for ``key`` (None: not a command of this table)."""
        return self._handlers.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._handlers

    def __iter__(self) -> Iterator[K]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)


class _Lane:
    """One direction of one host side: its pacing schedule and the chunks waiting for their
    release time (each with the host's baud rate it was written at), written to ``sink``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, baudrate: int, sink: _Sink, *, paced: bool
    ) -> None:
        self.loop = loop
        self.sink = sink
        self.paced = paced
        self.schedule = self._schedule(baudrate)
        self.waiting: deque[tuple[float, bytes, int | None]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.hold_until_s = float("-inf")

    @staticmethod
    def _schedule(baudrate: int) -> LineSchedule:
        chunk = max(1, round(baudrate / BITS_PER_BYTE_8N1 * DEFAULT_CHUNK_S))
        return LineSchedule(baudrate, chunk_bytes=chunk)

    def push(
        self,
        data: bytes,
        baudrate: int,
        *,
        host_rate: int | None,
        delay_s: float,
        stall_s: float,
    ) -> None:
        now_s = self.loop.time()
        if stall_s > 0:
            self.hold_until_s = max(self.hold_until_s, now_s + stall_s)
        start_s = max(now_s + delay_s, self.hold_until_s)
        if not self.paced:
            if start_s <= now_s and not self.waiting:
                self.sink(data, host_rate)
                return
            self.waiting.append((start_s, data, host_rate))
        else:
            if baudrate != self.schedule.baudrate:
                self.schedule = self._schedule(baudrate)
            offset = 0
            for due_s, size in self.schedule.admit(len(data), start_s):
                self.waiting.append((due_s, data[offset : offset + size], host_rate))
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
        # Chunks due now go out together, one sink call per run of the same host rate.
        runs: list[tuple[bytearray, int | None]] = []
        while self.waiting and self.waiting[0][0] <= now_s:
            _, chunk, rate = self.waiting.popleft()
            if runs and runs[-1][1] == rate:
                runs[-1][0].extend(chunk)
            else:
                runs.append((bytearray(chunk), rate))
        self._arm()
        for out, rate in runs:
            if out:
                self.sink(bytes(out), rate)

    def clear(self) -> int:
        dropped = sum(len(chunk) for _, chunk, _ in self.waiting)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.waiting.clear()
        self.schedule.reset()
        self.hold_until_s = float("-inf")
        return dropped


class OnSerialDevice:
    """For an emulator whose transport is a :class:`SerialDevice` in ``self.serial``: the
    port's state, read through from it."""

    serial: SerialDevice

    @property
    def plugged(self) -> bool:
        """Whether the port is there (between ``start`` / ``replug`` and ``unplug`` /
        ``close``)."""
        return self.serial.plugged

    @property
    def tty_path(self) -> str | None:
        """The pty's own path (``/dev/pts/N``) now, None while unplugged or without a pty."""
        return self.serial.tty_path

    @property
    def url(self) -> str:
        """The ``socket://127.0.0.1:PORT`` URL of the TCP side (``tcp=True`` only)."""
        return self.serial.url


class SerialDevice(AsyncLifecycle):
    """An emulated serial device (see the module text).

    ``on_dropped()`` is called for every write of the device lost to the cable: sent while
    unplugged, or refused by the pty (counted in :attr:`dropped_writes`).
    """

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
        paced: bool = True,
        label: str = "serial device",
        on_dropped: Callable[[], None] | None = None,
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
        self.paced = paced
        self._on_dropped = on_dropped
        self.handler = handler(self.send)
        self.path = Path(pty_path) if pty_path is not None else None
        self._tcp = tcp
        self.tcp_port = tcp_port
        self._pty: PtyPort | None = None
        self._listener: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._client: asyncio.StreamWriter | None = None
        #: Every accepted TCP stream not yet closed, registered when it is accepted: one
        #: whose task never got to run (unplugged or stopped at once) is still closed.
        self._accepted: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lanes: dict[str, dict[Direction, _Lane]] = {}
        self._replug_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # One per plug: a connection the kernel accepted before an unplug, and asyncio hands
        # over after it, belongs to no plug and is closed.
        self._plug_number = 0
        self.plugged = False
        #: The host's baud rate for the bytes ``on_bytes`` is given now (None over TCP, or when
        #: the pty's speed cannot be read).
        self.rx_baud: int | None = None
        #: Writes lost or garbled because the host's pty speed was not ``expected_baud``.
        self.wrong_baud_writes = 0
        #: Bytes lost on the line by an unplug.
        self.dropped_bytes = 0
        #: Writes of the device lost to the cable (sent while unplugged, refused by the pty).
        self.dropped_writes = 0
        #: Bytes handed to the host sides (the pty and the TCP client), over every plug.
        self.bytes_written = 0

    @property
    def url(self) -> str:
        """The pyserial URL of the TCP side (``socket://127.0.0.1:PORT``)."""
        if not self._tcp:
            raise ValueError(f"{self.label} has no TCP side")
        return f"socket://{TCP_HOST}:{self.tcp_port}"

    @property
    def tcp(self) -> bool:
        """Whether the device has a TCP side."""
        return self._tcp

    @property
    def tty_path(self) -> str | None:
        """The pty's own path (``/dev/pts/N``) now, None while unplugged or without a pty."""
        return self._pty.tty_path if self._pty is not None else None

    @property
    def tcp_connected(self) -> bool:
        """Whether a TCP client is connected now."""
        return self._client is not None

    def host_rate(self) -> int | None:
        """The baud rate the host set on the pty now (None: no pty, or unreadable)."""
        tty_path = self.tty_path
        return host_baud(tty_path) if tty_path is not None else None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Open the pty and/or the TCP server and start the fault plan's clock."""
        self._loop = asyncio.get_running_loop()
        self.plan.start()
        self._plug()
        await self._serving_started()
        return self

    async def close(self) -> None:
        """Close every side (idempotent)."""
        if self._replug_timer is not None:
            self._replug_timer.cancel()
            self._replug_timer = None
        server = self._unplug_sides()
        await self._closed(server)
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def unplug(self) -> None:
        """Pull the cable: the pty path disappears, the TCP port refuses connections."""
        await self._closed(self.unplug_now())

    async def replug(self) -> None:
        """Plug the cable back: the same path and port, a new pty and a new server."""
        self.replug_now()
        await self._serving_started()

    def unplug_now(self) -> asyncio.Server | None:
        """:meth:`unplug` from the loop's thread without awaiting; returns the TCP server
        being closed, if any (its ``wait_closed`` is the caller's, or runs as a task)."""
        if not self.plugged:
            return None
        server = self._unplug_sides()
        self.plan.log.record("to_host", "unplug", self.plan.position("to_host"), b"", self.label)
        return server

    def replug_now(self) -> None:
        """:meth:`replug` from the loop's thread without awaiting: the pty is back at once,
        the TCP port listens at once (connections are accepted as soon as the loop runs)."""
        if self._replug_timer is not None:
            self._replug_timer.cancel()
            self._replug_timer = None
        if self.plugged:
            return
        self._plug()
        self.plan.log.record("to_host", "replug", self.plan.position("to_host"), b"", self.label)

    def _plug(self) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self.label} is not started")
        if self.path is not None:
            self._pty = PtyPort(
                self.path,
                label=f"{self.label} {self.path}",
                on_bytes=self._from_pty,
                on_error=self._pty_error,
                on_dropped=self._count_dropped,
            )
            self._pty.open()
            self._lanes["pty"] = self._make_lanes(loop, self._pty_write)
        if self._tcp:
            # Bound and listening now (not in a coroutine): a replug from sync code is
            # reachable at once, connections wait in the backlog until the server accepts.
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((TCP_HOST, self.tcp_port))
                listener.listen(8)
                listener.setblocking(False)
            except OSError:
                listener.close()
                raise
            self.tcp_port = listener.getsockname()[1]
            self._listener = listener
            self._plug_number += 1
            self._serving = self._spawn(self._serve(listener))
        self.plugged = True
        log.info("%s plugged: pty %s, tcp %s", self.label, self.path, self._tcp and self.tcp_port)

    async def _serve(self, listener: socket.socket) -> None:
        plug_number = self._plug_number

        def accept(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> Coroutine[Any, Any, None]:
            # Called when the connection is made; asyncio runs the coroutine as a task.
            self._accepted.add(writer)
            return self._accept(reader, writer, plug_number)

        try:
            server = await asyncio.start_server(accept, sock=listener)
        except BaseException:
            listener.close()
            raise
        if self._listener is not listener:
            # Unplugged before the server was up: it closes at once.
            server.close()
            await server.wait_closed()
            return
        self._server = server

    async def _serving_started(self) -> None:
        serving = self._serving
        if serving is not None:
            await asyncio.wait({serving})
            if not serving.cancelled() and serving.exception() is not None:
                raise OSError(f"{self.label}: the TCP server did not start") from (
                    serving.exception()
                )

    def _make_lanes(self, loop: asyncio.AbstractEventLoop, sink: _Sink) -> dict[Direction, _Lane]:
        return {
            "to_device": _Lane(loop, self.baudrate, self._deliver, paced=self.paced),
            "to_host": _Lane(loop, self.baudrate, sink, paced=self.paced),
        }

    def _unplug_sides(self) -> asyncio.Server | None:
        self.plugged = False
        for lanes in self._lanes.values():
            for lane in lanes.values():
                self.dropped_bytes += lane.clear()
        self._lanes.clear()
        if self._pty is not None:
            self.dropped_bytes += self._pty.close()
            self._pty = None
        server, self._server = self._server, None
        listener, self._listener = self._listener, None
        self._serving = None
        if server is not None:
            server.close()
        elif listener is not None:
            # The server task has not taken the socket yet: it sees the change and closes it;
            # closing the socket here too refuses connections at once.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
        # Closing the client's writer ends its reader loop (end of file): no cancel needed.
        self._drop_client()
        for writer in list(self._accepted):
            writer.close()
        self._accepted.clear()
        return server

    async def _closed(self, server: asyncio.Server | None) -> None:
        if server is not None:
            await server.wait_closed()

    def _pty_write(self, data: bytes, rate: int | None) -> None:
        if self._pty is not None and self._pty.write(data):
            self.bytes_written += len(data)
        else:
            log.info("%s: %d bytes refused by the unplugged pty", self.label, len(data))

    def _pty_error(self, reason: str) -> None:
        log.warning("%s: pty %s", self.label, reason)

    def _count_dropped(self) -> None:
        self.dropped_writes += 1
        if self._on_dropped is not None:
            self._on_dropped()

    # --- TCP ----------------------------------------------------------------------------------

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, plug_number: int
    ) -> None:
        loop = self._loop
        assert loop is not None
        if not self.plugged or plug_number != self._plug_number:
            log.info("%s: a TCP client from before an unplug is closed", self.label)
            self._accepted.discard(writer)
            writer.close()
            return
        if self._client is not None:
            log.info("%s: a new TCP client replaces the old one", self.label)
            self._drop_client()
        self._client = writer
        self._lanes["tcp"] = self._make_lanes(loop, self._tcp_write)
        try:
            while data := await reader.read(4096):
                self._from_host("tcp", data, self.baudrate, None)
        except ConnectionError as err:
            log.info("%s: TCP client gone: %s", self.label, err)
        finally:
            if self._client is writer:
                self._drop_client()
            self._accepted.discard(writer)
            writer.close()

    def _tcp_write(self, data: bytes, rate: int | None) -> None:
        if self._client is not None and not self._client.is_closing():
            self._client.write(data)
            self.bytes_written += len(data)

    def _drop_client(self) -> None:
        lanes = self._lanes.pop("tcp", None)
        if lanes is not None:
            for lane in lanes.values():
                self.dropped_bytes += lane.clear()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- bytes --------------------------------------------------------------------------------

    def _from_pty(self, data: bytes) -> None:
        rate = self.host_rate()
        data = self._baud_check("to_device", data, rate)
        if data:
            self._from_host("pty", data, rate or self.baudrate, rate)

    def _baud_check(self, direction: Direction, data: bytes, rate: int | None) -> bytes:
        if self.expected_baud is None or rate is None or rate == self.expected_baud:
            return data
        self.wrong_baud_writes += 1
        detail = f"host at {rate} baud, device at {self.expected_baud}: {self.wrong_baud_mode}"
        self.plan.log.record(direction, "wrong_baud", self.plan.position(direction), data, detail)
        return garble(data) if self.wrong_baud_mode == "garble" else b""

    def _from_host(self, side: str, data: bytes, rate: int, host_rate: int | None) -> None:
        applied = self.plan.apply("to_device", data)
        lanes = self._lanes.get(side)
        if applied.unplug_s is not None:
            self._fault_unplug(applied.unplug_s)
            return
        if lanes is not None and applied.data:
            lanes["to_device"].push(
                applied.data,
                rate,
                host_rate=host_rate,
                delay_s=applied.delay_s,
                stall_s=applied.stall_s,
            )

    def _deliver(self, data: bytes, rate: int | None) -> None:
        self.rx_baud = rate
        self.handler.on_bytes(data)

    def send(self, data: bytes) -> None:
        """The device answers ``data``: faults, pacing, then every connected host side. While
        unplugged the write is lost (counted in :attr:`dropped_writes`)."""
        if not data:
            return
        if not self.plugged:
            self._count_dropped()
            return
        applied = self.plan.apply("to_host", data)
        if applied.unplug_s is not None:
            self._fault_unplug(applied.unplug_s)
            return
        if not applied.data:
            return
        for side, lanes in list(self._lanes.items()):
            out, rate = applied.data, self.baudrate
            host_rate: int | None = None
            if side == "pty":
                host_rate = self.host_rate()
                out = self._baud_check("to_host", out, host_rate)
                rate = host_rate or self.baudrate
            if out:
                lanes["to_host"].push(
                    out,
                    rate,
                    host_rate=host_rate,
                    delay_s=applied.delay_s,
                    stall_s=applied.stall_s,
                )

    def _fault_unplug(self, duration_s: float) -> None:
        loop = self._loop
        assert loop is not None
        detail = f"{self.label} for {duration_s:g} s" if duration_s > 0 else self.label
        self.plan.log.record("to_host", "unplug", self.plan.position("to_host"), b"", detail)
        # Unplugging closes the TCP client whose reader may be the caller: the server's
        # wait_closed runs as a task.
        server = self._unplug_sides()
        if server is not None:
            self._spawn(self._closed(server))
        if duration_s > 0:
            self._replug_timer = loop.call_later(duration_s, self._scheduled_replug)

    def _scheduled_replug(self) -> None:
        assert self._loop is not None
        self._replug_timer = None
        self._spawn(self.replug())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._loop is not None
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: serving, unplug or replug failed", self.label, exc_info=task.exception())
