"""The serial port of an emulated device: a pseudo-terminal behind a stable symlink.

Every emulator in this package (the concentrator, the RAK3172, the RN2483, the wired bus, the
paced line's host side) shows the host the same thing a USB serial adapter does: a tty at a
fixed path that a client opens with pyserial, that vanishes when the cable is pulled (the
client's reads fail) and comes back, as a new tty, behind the same path. :class:`PtyPort` is
that port, held by a :class:`owlgate.hil.serial_device.SerialDevice` (the emulators'
transport) or by the paced line, and driven with callbacks:

- ``on_bytes(data)`` receives what the host wrote, as it arrives;
- :meth:`PtyPort.write` sends bytes to the host; it never blocks: what the pty's buffer cannot
  take now (no client reads) waits and is finished by ``loop.add_writer`` when the client
  drains it; a write while unplugged is refused and counted;
- :meth:`PtyPort.open` / :meth:`PtyPort.close` plug and unplug it.

The two halves, :class:`FdReader` and :class:`FdWriter`, work on any non-blocking descriptor;
the paced line uses them on the device tty it relays from as well.

Everything runs in the caller's asyncio loop (``add_reader`` / ``add_writer``), no threads.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import termios
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self

log = logging.getLogger(__name__)

#: How much one read takes from a descriptor (a pty hands over at most about this much).
DEFAULT_READ_SIZE_BYTES: Final = 4096

#: termios speed constants back to bits per second.
_SPEEDS: Final = {
    getattr(termios, f"B{rate}"): rate
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
    if hasattr(termios, f"B{rate}")
}

#: Called with a reason (``"read failed: ..."``, ``"write failed: ..."``, ``"end of file"``).
ErrorCallback = Callable[[str], None]


def host_baud(tty_path: str) -> int | None:
    """The baud rate the host set on the pty at ``tty_path`` (None if it cannot be read).

    A pty carries no signal, but its termios settings are shared by both ends: what pyserial
    set on the slave is what a UART on the device side would have to match.
    """
    try:
        fd = os.open(tty_path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        speed = termios.tcgetattr(fd)[5]
    except termios.error:
        return None
    finally:
        os.close(fd)
    return _SPEEDS.get(speed)


class AsyncLifecycle(abc.ABC):
    """``async with device:`` for a device with ``start()`` and ``close()``: every emulator
    here is started and stopped the same way."""

    @abc.abstractmethod
    async def start(self) -> Self:
        """Open the device's ports and start serving."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close everything :meth:`start` opened (idempotent)."""

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class FdReader:
    """Calls ``on_bytes(data)`` with what a non-blocking descriptor yields, from the loop's
    reader callback, between :meth:`attach` and :meth:`detach`.

    A failed read (EIO once the far end is gone) or an end of file stops reading and calls
    ``on_error(reason)``; without ``on_error`` it is logged as a warning under ``label``.
    :meth:`pause` and :meth:`resume` stop and restart reading (backpressure) while attached.
    """

    def __init__(
        self,
        label: str,
        on_bytes: Callable[[bytes], None],
        *,
        on_error: ErrorCallback | None = None,
        read_size_bytes: int = DEFAULT_READ_SIZE_BYTES,
    ) -> None:
        self.label = label
        self._on_bytes = on_bytes
        self._on_error = on_error
        self._read_size_bytes = read_size_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._reading = False

    @property
    def attached(self) -> bool:
        """Whether a descriptor is attached."""
        return self._fd is not None

    @property
    def reading(self) -> bool:
        """Whether the loop watches the descriptor now (attached and not paused)."""
        return self._reading

    def attach(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        """Start reading ``fd`` (detaching the previous descriptor, if any)."""
        self.detach()
        self._loop, self._fd = loop, fd
        self.resume()

    def detach(self) -> None:
        """Stop reading and forget the descriptor (idempotent; the caller closes it)."""
        self.pause()
        self._fd = None

    def pause(self) -> None:
        """Stop reading for now; what arrives stays in the descriptor's buffer."""
        if self._reading and self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._reading = False

    def resume(self) -> None:
        """Read again after :meth:`pause` (nothing while detached)."""
        if self._fd is None or self._reading or self._loop is None:
            return
        self._loop.add_reader(self._fd, self._on_readable)
        self._reading = True

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, self._read_size_bytes)
        except BlockingIOError:
            return
        except OSError as err:
            # EIO: the far end is gone. Stop rather than spin on a descriptor that stays
            # readable.
            self._fail(f"read failed: {err}")
            return
        if not data:
            self._fail("end of file")
            return
        self._on_bytes(data)

    def _fail(self, reason: str) -> None:
        self.pause()
        if self._on_error is not None:
            self._on_error(reason)
        else:
            log.warning("%s: %s", self.label, reason)


class FdWriter:
    """Non-blocking writes to a descriptor that never lose order: what the descriptor cannot
    take now is buffered and finished from the loop's writer callback.

    :meth:`write` while no descriptor is attached is refused (False) and counted in
    :attr:`dropped_writes`; so is a write whose bytes a failed ``os.write`` discarded, which
    also calls ``on_error(reason)`` (without it, a warning is logged under ``label``).
    ``on_dropped()`` is called for every dropped write, ``on_drained()`` when a buffer that had
    to wait for the writer callback has gone out.
    """

    def __init__(
        self,
        label: str,
        *,
        on_error: ErrorCallback | None = None,
        on_dropped: Callable[[], None] | None = None,
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self.label = label
        self._on_error = on_error
        self._on_dropped = on_dropped
        self._on_drained = on_drained
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._buffer = bytearray()
        self._waiting = False
        #: Bytes the descriptors took, over every attachment.
        self.bytes_written = 0
        #: Writes refused while detached or lost to a failed write, over every attachment.
        self.dropped_writes = 0

    @property
    def attached(self) -> bool:
        """Whether a descriptor is attached."""
        return self._fd is not None

    @property
    def pending_bytes(self) -> int:
        """Bytes accepted but not yet taken by the descriptor."""
        return len(self._buffer)

    def attach(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        """Write to ``fd`` from now on, with an empty buffer (detaching the previous one)."""
        self.detach()
        self._loop, self._fd = loop, fd

    def detach(self) -> int:
        """Forget the descriptor (the caller closes it) and discard what was still buffered;
        return how many bytes that was (idempotent)."""
        self._stop_waiting()
        discarded = len(self._buffer)
        self._buffer = bytearray()
        self._fd = None
        return discarded

    def write(self, data: bytes) -> bool:
        """Send ``data`` after what is buffered; False (counted) when detached."""
        if self._fd is None:
            self._drop()
            return False
        self._buffer += data
        self.flush()
        return True

    def flush(self) -> None:
        """Write what the descriptor takes now; wait on the loop for the rest."""
        fd = self._fd
        if fd is None:
            return
        while self._buffer:
            try:
                written = os.write(fd, self._buffer)
            except BlockingIOError:
                break
            except OSError as err:
                self._stop_waiting()
                self._drop()
                # The handler sees the buffer still there: a detach() in it reports the bytes
                # lost with the descriptor.
                if self._on_error is not None:
                    self._on_error(f"write failed: {err}")
                else:
                    log.warning("%s: write failed: %s", self.label, err)
                if self._fd == fd:
                    self._buffer = bytearray()
                return
            self.bytes_written += written
            del self._buffer[:written]
        assert self._loop is not None
        # The buffer behind the descriptor is full (a pty nobody reads): finish when it drains.
        if self._buffer and not self._waiting:
            self._loop.add_writer(fd, self.flush)
            self._waiting = True
        elif not self._buffer and self._waiting:
            self._stop_waiting()
            if self._on_drained is not None:
                self._on_drained()

    def _stop_waiting(self) -> None:
        if self._waiting and self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)
        self._waiting = False

    def _drop(self) -> None:
        self.dropped_writes += 1
        if self._on_dropped is not None:
            self._on_dropped()


class PtyPort:
    """A pty pair in raw mode with a symlink at ``path`` pointing at its slave end: the port
    an emulated device offers the host (see the module text).

    ``on_bytes(data)``: what the host wrote. ``on_error(reason)``: a read or write on the pty
    failed (reading stops, the buffer is dropped); without it a warning is logged under
    ``label``. ``on_dropped()``: one write was lost (refused while unplugged, or failed).
    ``on_drained()``: a buffer that waited for the client has gone out.

    The port is reusable: :meth:`open` after :meth:`close` makes a new pty behind the same
    path. :meth:`open` needs a running event loop.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        label: str,
        on_bytes: Callable[[bytes], None],
        on_error: ErrorCallback | None = None,
        on_dropped: Callable[[], None] | None = None,
        on_drained: Callable[[], None] | None = None,
        read_size_bytes: int = DEFAULT_READ_SIZE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.label = label
        #: The reading half, on the pty master (pause / resume it for backpressure).
        self.reader = FdReader(label, on_bytes, on_error=on_error, read_size_bytes=read_size_bytes)
        #: The writing half, on the pty master.
        self.writer = FdWriter(
            label, on_error=on_error, on_dropped=on_dropped, on_drained=on_drained
        )
        self._master: int | None = None
        self._slave: int | None = None
        self._tty_path: str | None = None

    # --- plugging -----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the pty is there (between :meth:`open` and :meth:`close`)."""
        return self._master is not None

    @property
    def tty_path(self) -> str | None:
        """The pty's own path (``/dev/pts/N``) now, None while closed."""
        return self._tty_path

    def open(self) -> None:
        """Make a new pty, point the symlink at it and start reading (a pty still open is
        closed first: a replug)."""
        loop = asyncio.get_running_loop()
        self.close()
        master, slave = os.openpty()
        try:
            # Raw mode on the slave: no echo, no line editing, no CR/LF mapping; a serial
            # program that opens the path gets a clean 8-bit line (pyserial sets its own
            # modes too).
            tty.setraw(slave)
            os.set_blocking(master, False)
            tty_path = os.ttyname(slave)
            self._link(tty_path)
        except OSError:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._tty_path = master, slave, tty_path
        self.writer.attach(loop, master)
        self.reader.attach(loop, master)

    def close(self) -> int:
        """Close both ends and remove the symlink: to a client, a vanished USB adapter (its
        reads fail). Return how many bytes were still waiting to be written (idempotent)."""
        self.reader.detach()
        discarded = self.writer.detach()
        master, slave = self._master, self._slave
        self._master = self._slave = self._tty_path = None
        if master is not None:
            os.close(master)
        if slave is not None:
            # The port holds the slave open too, so the master never reads EIO while no client
            # has the port open; closing both is what a pulled cable looks like.
            os.close(slave)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        return discarded

    def _link(self, target: str) -> None:
        # Point the link at the new pty atomically (a temporary link renamed over the old
        # one): a client never sees a half-made or missing link during a replug.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(target)
        temporary.replace(self.path)

    # --- bytes --------------------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Send ``data`` to the host, in order after what is buffered; False (counted in
        :attr:`dropped_writes`) while unplugged."""
        return self.writer.write(data)

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet taken by the pty (no client reads)."""
        return self.writer.pending_bytes

    @property
    def bytes_written(self) -> int:
        """Bytes the pty took, over every plug."""
        return self.writer.bytes_written

    @property
    def dropped_writes(self) -> int:
        """Writes refused while unplugged or lost to a failed write, over every plug."""
        return self.writer.dropped_writes
