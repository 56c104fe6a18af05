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

It runs in the caller's asyncio loop, like the emulator: the host side is a
:class:`owlgate.hil.pty.PtyPort`, the device side an :class:`~owlgate.hil.pty.FdReader` and an
:class:`~owlgate.hil.pty.FdWriter` on the device's tty.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tty
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

from .pty import AsyncLifecycle, FdReader, FdWriter, PtyPort

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
    the source it reads from and the sink that holds what was released but not yet taken."""

    def __init__(self, name: str, schedule: LineSchedule, source: FdReader, sink: FdWriter):
        self.name = name
        self.schedule = schedule
        self.source = source
        self.sink = sink
        self.waiting: deque[tuple[float, bytes]] = deque()
        self.waiting_bytes = 0
        self.timer: asyncio.TimerHandle | None = None

    def backlog(self) -> int:
        return self.waiting_bytes + self.sink.pending_bytes

    def clear(self) -> int:
        """Forget what is waiting (the line was cut); the sink's buffer is the caller's."""
        dropped = self.waiting_bytes
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.waiting.clear()
        self.waiting_bytes = 0
        self.schedule.reset()
        return dropped


class PacedLine(AsyncLifecycle):
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
        # The host's port, and the device's tty read and written through the same halves.
        self._host = PtyPort(
            self.path,
            label=f"paced line {self.path}",
            on_bytes=self._from_host,
            on_error=self._lost,
            on_drained=self._down_drained,
        )
        label = f"paced line device {self.device}"
        self._device_reader = FdReader(label, self._from_device, on_error=self._lost)
        self._device_writer = FdWriter(label, on_error=self._lost, on_drained=self._up_drained)
        self._down = _Direction(
            "down",
            LineSchedule(baudrate, bits_per_byte=bits_per_byte, chunk_bytes=chunk_bytes),
            source=self._device_reader,
            sink=self._host.writer,
        )
        self._up = _Direction(
            "up",
            LineSchedule(baudrate, bits_per_byte=bits_per_byte, chunk_bytes=chunk_bytes),
            source=self._host.reader,
            sink=self._device_writer,
        )
        self._device_fd: int | None = None
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
        return self._down.sink.bytes_written

    @property
    def delivered_up(self) -> int:
        """Bytes written to the device so far."""
        return self._up.sink.bytes_written

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
            # The host's port holds its slave open, so that its master does not read EIO while
            # no host has the port open (the emulator does the same).
            self._host.open()
        except OSError:
            os.close(device)
            raise
        self._device_fd = device
        self._device_reader.attach(loop, device)
        self._device_writer.attach(loop, device)
        self._plugged.set()
        log.info(
            "paced line %s <-> %s at %d baud (%s)",
            self.device,
            self.path,
            self.baudrate,
            self._host.tty_path,
        )

    def _disconnect(self) -> None:
        for direction in (self._down, self._up):
            self.dropped_bytes += direction.clear()
        self._device_reader.detach()
        self.dropped_bytes += self._device_writer.detach()
        self.dropped_bytes += self._host.close()
        device, self._device_fd = self._device_fd, None
        if device is not None:
            os.close(device)
        self._plugged.clear()

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

    def _from_device(self, data: bytes) -> None:
        self._admit(self._down, data)

    def _from_host(self, data: bytes) -> None:
        self._admit(self._up, data)

    def _admit(self, direction: _Direction, data: bytes) -> None:
        loop = self._loop
        assert loop is not None
        offset = 0
        for due_s, size in direction.schedule.admit(len(data), loop.time()):
            direction.waiting.append((due_s, data[offset : offset + size]))
            offset += size
        direction.waiting_bytes += len(data)
        if direction.backlog() >= self.max_backlog_bytes:
            # Backpressure: the rest stays in the source's buffer until the line catches up.
            direction.source.pause()
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
        out = bytearray()
        # Everything due by now goes out in one write: a late wake-up catches up at once.
        while direction.waiting and direction.waiting[0][0] <= now_s:
            due_s, chunk = direction.waiting.popleft()
            direction.waiting_bytes -= len(chunk)
            out += chunk
            self.max_late_s = max(self.max_late_s, now_s - due_s)
            if self._record:
                self.releases.append(Release(direction.name, due_s, now_s, len(chunk)))
        self._arm(direction)
        if out:
            # A failed write calls _lost, which cuts the line; _resume is then a no-op.
            direction.sink.write(bytes(out))
        self._resume(direction)

    def _resume(self, direction: _Direction) -> None:
        if not direction.source.reading and direction.backlog() < self.max_backlog_bytes // 2:
            direction.source.resume()

    def _down_drained(self) -> None:
        # The host took a buffer that had to wait: the device may be read again.
        self._resume(self._down)

    def _up_drained(self) -> None:
        self._resume(self._up)
