"""A serial line at a real baud rate between an emulated device and the host.

A pty moves bytes as fast as the kernel copies them, so a test over the emulated
concentrator's pty says nothing about what a 115200-baud cable carries. :class:`PacedLine`
sits between the two: it opens the device's tty (the emulator's path), offers a pty of its
own at a stable symlink (``<link_dir>/ttyPACED0`` by default) for the host to open, and relays
bytes both ways no faster than a UART of the given baud rate sends them.

The pacing model is that of a UART with 8N1 framing: every byte costs ``bits_per_byte`` (10:
a start bit, eight data bits, a stop bit) bit times, bytes go out back to back while there is
something to send, and a byte reaches the far end when its last bit has. :class:`LineSchedule`
is that model as a pure calculation (byte counts and times in, release times out, no I/O);
the relay releases bytes in chunks of about ``chunk_s`` of line time at the times the schedule
computes. Late wake-ups of the event loop delay a chunk but do not slow the line: release
times are computed from when the bytes arrived, not from when the relay got to them.

When the device goes away (the emulator's ``unplug()``: its pty closes), the relay drops what
was on the line, removes its own pty (the host's reads fail, as with a pulled USB cable) and
looks for the device path every ``poll_s``; once it can open it again (``replug()``), it makes
a new pty behind the same symlink.

It runs in the caller's asyncio loop (``loop.add_reader`` on the descriptors), like the
emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

log = logging.getLogger(__name__)

#: 8N1: one start bit, eight data bits, one stop bit per byte.
BITS_PER_BYTE_8N1: Final = 10
#: Release granularity: bytes leave the relay in chunks of about this much line time.
DEFAULT_CHUNK_S: Final = 0.001
#: How often the relay looks for the device path while the device is unplugged.
DEFAULT_POLL_S: Final = 0.01
#: Bytes queued per direction before the relay stops reading its source (the source's own
#: buffer, a pty or the emulator's queue, then holds the rest).
DEFAULT_MAX_BACKLOG_BYTES: Final = 64 * 1024
DEFAULT_LINK_NAME: Final = "ttyPACED0"

_READ_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class Release:
    """One chunk the relay let through: ``size`` bytes due at ``due_s`` by the schedule and
    written at ``written_s`` (both on the event loop's clock), in ``direction``
    (``"down"``: device to host, ``"up"``: host to device)."""

    direction: str
    due_s: float
    written_s: float
    size: int


class LineSchedule:
    """The release times of bytes sent on a UART of ``baudrate`` with ``bits_per_byte`` bit
    times per byte, cut into chunks of at most ``chunk_bytes`` bytes.

    Pure arithmetic: :meth:`admit` takes the number of bytes handed to the line at ``now_s``
    and returns, per chunk, the time its last byte has been received. Bytes wait behind those
    already on the line; an idle line starts sending at once. Times within one busy period
    are computed from its start, so rounding does not accumulate.
    """

    def __init__(
        self, baudrate: int, *, bits_per_byte: int = BITS_PER_BYTE_8N1, chunk_bytes: int = 1
    ) -> None:
        if baudrate <= 0 or bits_per_byte <= 0 or chunk_bytes <= 0:
            raise ValueError(
                f"baudrate, bits_per_byte and chunk_bytes must be positive, got {baudrate},"
                f" {bits_per_byte} and {chunk_bytes}"
            )
        self.baudrate = baudrate
        self.bits_per_byte = bits_per_byte
        self.chunk_bytes = chunk_bytes
        self._busy_start_s = 0.0
        self._busy_bytes = 0
        self._free_at_s = float("-inf")
        #: Every byte admitted so far.
        self.bytes_admitted = 0

    @property
    def bytes_per_s(self) -> float:
        """The line's capacity: ``baudrate / bits_per_byte`` bytes per second."""
        return self.baudrate / self.bits_per_byte

    @property
    def free_at_s(self) -> float:
        """When the last admitted byte has been received (-inf before the first)."""
        return self._free_at_s

    def admit(self, count: int, now_s: float) -> list[tuple[float, int]]:
        """Hand ``count`` bytes to the line at ``now_s``: ``[(release_s, size), ...]``, one
        pair per chunk, in order, the sizes adding up to ``count``."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        if now_s >= self._free_at_s:
            # The line was idle: a new busy period starts now.
            self._busy_start_s = now_s
            self._busy_bytes = 0
        chunks = []
        rate = self.bytes_per_s
        left = count
        while left > 0:
            size = min(left, self.chunk_bytes)
            self._busy_bytes += size
            chunks.append((self._busy_start_s + self._busy_bytes / rate, size))
            left -= size
        if chunks:
            self._free_at_s = chunks[-1][0]
        self.bytes_admitted += count
        return chunks

    def reset(self) -> None:
        """Forget the bytes on the line (it was cut): the next byte starts an idle line."""
        self._free_at_s = float("-inf")
        self._busy_bytes = 0


class _Direction:
    """One way through the relay: its schedule, the chunks waiting for their release time,
    and the bytes released but not yet taken by the sink."""

    def __init__(self, name: str, schedule: LineSchedule) -> None:
        self.name = name
        self.schedule = schedule
        self.waiting: deque[tuple[float, bytes]] = deque()
        self.waiting_bytes = 0
        self.out = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.reading = False
        self.writing = False
        self.delivered = 0

    def backlog(self) -> int:
        return self.waiting_bytes + len(self.out)

    def clear(self) -> int:
        dropped = self.backlog()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.waiting.clear()
        self.waiting_bytes = 0
        self.out = bytearray()
        self.schedule.reset()
        return dropped


class PacedLine:
    """A UART of ``baudrate`` between the device tty at ``device`` and a pty of this relay's
    own at :attr:`path` (``<link_dir>/<link_name>``), paced both ways (see the module text).

    ``record``: keep every :class:`Release` in :attr:`releases` (for tests; a long run should
    leave it off and read the counters).
    """

    def __init__(
        self,
        device: str | os.PathLike[str],
        link_dir: str | os.PathLike[str],
        *,
        baudrate: int,
        bits_per_byte: int = BITS_PER_BYTE_8N1,
        link_name: str = DEFAULT_LINK_NAME,
        chunk_s: float = DEFAULT_CHUNK_S,
        poll_s: float = DEFAULT_POLL_S,
        max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
        record: bool = False,
    ) -> None:
        if chunk_s <= 0 or poll_s <= 0 or max_backlog_bytes <= 0:
            raise ValueError("chunk_s, poll_s and max_backlog_bytes must be positive")
        self.device = Path(device)
        self.path = Path(link_dir) / link_name
        self.baudrate = baudrate
        self.poll_s = poll_s
        self.max_backlog_bytes = max_backlog_bytes
        bytes_per_s = baudrate / bits_per_byte
        chunk_bytes = max(1, round(bytes_per_s * chunk_s))
        self._down = _Direction(
            "down", LineSchedule(baudrate, bits_per_byte=bits_per_byte, chunk_bytes=chunk_bytes)
        )
        self._up = _Direction(
            "up", LineSchedule(baudrate, bits_per_byte=bits_per_byte, chunk_bytes=chunk_bytes)
        )
        self._device_fd: int | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._poll: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._plugged = asyncio.Event()
        self._record = record
        #: Every chunk released, in order (only with ``record``).
        self.releases: list[Release] = []
        #: Bytes lost on the line because the device went away while they were on it.
        self.dropped_bytes = 0
        #: Times the device came back after going away.
        self.replugs = 0
        #: Largest delay of a write after its chunk's release time (event-loop lateness).
        self.max_late_s = 0.0

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Open the device and the host-side pty; ``OSError`` if the device cannot be opened."""
        self._loop = asyncio.get_running_loop()
        self._connect()
        return self

    async def close(self) -> None:
        """Stop relaying, close both ends and remove the symlink (idempotent)."""
        self._closed = True
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        self._disconnect()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def plugged(self) -> bool:
        """Whether the device is open and the host-side pty is there."""
        return self._device_fd is not None

    @property
    def bytes_per_s(self) -> float:
        """The line's capacity in bytes per second (``baudrate / bits_per_byte``)."""
        return self._down.schedule.bytes_per_s

    @property
    def delivered_down(self) -> int:
        """Bytes written to the host side so far."""
        return self._down.delivered

    @property
    def delivered_up(self) -> int:
        """Bytes written to the device so far."""
        return self._up.delivered

    async def wait_plugged(self, timeout_s: float) -> None:
        """Wait until the device is open (``TimeoutError`` after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            await self._plugged.wait()

    # --- the two ends -------------------------------------------------------------------------

    def _connect(self) -> None:
        loop = self._loop
        assert loop is not None
        device = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            if os.isatty(device):
                tty.setraw(device)
            master, slave = os.openpty()
        except OSError:
            os.close(device)
            raise
        # Raw on the host side too, and the relay holds the slave open so that the master does
        # not read EIO while no host has the port open (the emulator does the same).
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._device_fd, self._master, self._slave = device, master, slave
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(os.ttyname(slave))
        temporary.replace(self.path)
        self._start_reading(self._down)
        self._start_reading(self._up)
        self._plugged.set()
        log.info(
            "paced line %s <-> %s at %d baud (%s)",
            self.device,
            self.path,
            self.baudrate,
            os.ttyname(slave),
        )

    def _disconnect(self) -> None:
        for direction in (self._down, self._up):
            self._stop_reading(direction)
            self._stop_writing(direction)
            self.dropped_bytes += direction.clear()
        for fd in (self._device_fd, self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._device_fd = self._master = self._slave = None
        self._plugged.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _source(self, direction: _Direction) -> int | None:
        return self._device_fd if direction is self._down else self._master

    def _sink(self, direction: _Direction) -> int | None:
        return self._master if direction is self._down else self._device_fd

    def _lost(self, why: str) -> None:
        """The device went away: cut the line, remove the host's port, look for the device."""
        log.info("paced line: device %s lost (%s)", self.device, why)
        self._disconnect()
        if not self._closed:
            self._schedule_poll()

    def _schedule_poll(self) -> None:
        assert self._loop is not None
        self._poll = self._loop.call_later(self.poll_s, self._try_reconnect)

    def _try_reconnect(self) -> None:
        self._poll = None
        if self._closed:
            return
        try:
            self._connect()
        except OSError as err:
            # Not back yet (ENOENT while the path is gone, EIO on a half-made pty).
            log.debug("paced line: device %s not back: %s", self.device, err)
            self._schedule_poll()
            return
        self.replugs += 1

    # --- relaying -----------------------------------------------------------------------------

    def _start_reading(self, direction: _Direction) -> None:
        source = self._source(direction)
        if source is None or direction.reading:
            return
        assert self._loop is not None
        self._loop.add_reader(source, self._on_readable, direction)
        direction.reading = True

    def _stop_reading(self, direction: _Direction) -> None:
        source = self._source(direction)
        if direction.reading and source is not None and self._loop is not None:
            self._loop.remove_reader(source)
        direction.reading = False

    def _stop_writing(self, direction: _Direction) -> None:
        sink = self._sink(direction)
        if direction.writing and sink is not None and self._loop is not None:
            self._loop.remove_writer(sink)
        direction.writing = False

    def _on_readable(self, direction: _Direction) -> None:
        source = self._source(direction)
        if source is None:
            return
        try:
            data = os.read(source, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as err:
            # EIO on the device's tty: its other end closed (unplugged). The relay holds its
            # own pty's slave open, so the host side never reads EIO for want of a reader.
            self._lost(f"read failed: {err}")
            return
        if not data:
            self._lost("end of file")
            return
        loop = self._loop
        assert loop is not None
        offset = 0
        for due_s, size in direction.schedule.admit(len(data), loop.time()):
            direction.waiting.append((due_s, data[offset : offset + size]))
            offset += size
        direction.waiting_bytes += len(data)
        if direction.backlog() >= self.max_backlog_bytes:
            # Backpressure: the rest stays in the source's buffer until the line catches up.
            self._stop_reading(direction)
        if direction.timer is None:
            self._arm(direction)

    def _arm(self, direction: _Direction) -> None:
        assert self._loop is not None
        if direction.waiting:
            due_s = direction.waiting[0][0]
            direction.timer = self._loop.call_at(due_s, self._release, direction)
        else:
            direction.timer = None

    def _release(self, direction: _Direction) -> None:
        loop = self._loop
        assert loop is not None
        now_s = loop.time()
        # Everything due by now goes out in one write: a late wake-up catches up at once.
        while direction.waiting and direction.waiting[0][0] <= now_s:
            due_s, chunk = direction.waiting.popleft()
            direction.waiting_bytes -= len(chunk)
            direction.out += chunk
            self.max_late_s = max(self.max_late_s, now_s - due_s)
            if self._record:
                self.releases.append(Release(direction.name, due_s, now_s, len(chunk)))
        self._arm(direction)
        self._flush(direction)
        if not direction.reading and direction.backlog() < self.max_backlog_bytes // 2:
            self._start_reading(direction)

    def _flush(self, direction: _Direction) -> None:
        sink = self._sink(direction)
        if sink is None:
            return
        while direction.out:
            try:
                written = os.write(sink, direction.out)
            except BlockingIOError:
                break
            except OSError as err:
                self._lost(f"write failed: {err}")
                return
            direction.delivered += written
            del direction.out[:written]
        assert self._loop is not None
        # The sink's buffer is full (nobody reads the host side): finish when it drains.
        if direction.out and not direction.writing:
            self._loop.add_writer(sink, self._flush, direction)
            direction.writing = True
        elif not direction.out and direction.writing:
            self._stop_writing(direction)
