"""The connection lifecycle shared by the gateway's backends: one supervisor task per link
that runs sessions, tells an expected failure from a bug, logs each change of state once and
reconnects after an exponential backoff with jitter, or as soon as an unplugged device path
is back.

A backend owns one :class:`ReconnectingLink` and gives it a ``session()`` coroutine: open the
port, configure the device, read until the connection goes away. The link calls it again and
again until it is closed, and keeps the connected / disconnected state that
``wait_connected`` and ``wait_disconnected`` wait on. :func:`serial_session` opens a serial
port (a device path or any pyserial URL) with a reader task for the length of one session.

The log lines name the backend (``concentrator``, ``RAK3172``, ``wired bus``) and go to the
backend's own logger, so that a module's log level governs all of its lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Final, Generic, Self, TypeVar

import serial_asyncio_fast

from .errors import EdgeError, RadioError, RadioTimeout

#: While the device path is absent (USB unplugged), look for it this often, and open it as
#: soon as it is back: the backoff is for a device that is there but failing.
PORT_POLL_S: Final = 0.1
#: Closing a port whose device is gone can hang in the driver: bound the wait.
CLOSE_TIMEOUT_S: Final = 2.0

_T = TypeVar("_T")
_StatusT = TypeVar("_StatusT")


def port_absent(port: str) -> bool:
    """True for a device path (not a pyserial URL such as ``rfc2217://``) that does not exist
    now."""
    return "://" not in port and not os.path.exists(port)


async def within(awaitable: Awaitable[_T], timeout_s: float, error: Callable[[], EdgeError]) -> _T:
    """The result of ``awaitable``, or ``error()`` raised (from the :class:`TimeoutError`)
    when it takes longer than ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TimeoutError as err:
        raise error() from err


async def stop_task(
    task: asyncio.Task[Any] | None, logger: logging.Logger, what: str, *args: object
) -> None:
    """Cancel ``task`` and wait until it ended; a failure other than the cancellation is
    logged on ``logger`` as ``what % args``, with its traceback."""
    if task is None:
        return
    task.cancel()
    # wait(), not await: the task's cancellation is not the caller's.
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        logger.error(what, *args, exc_info=task.exception())


@contextlib.asynccontextmanager
async def serial_session(
    port: str,
    baudrate: int,
    open_timeout_s: float,
    read: Callable[[asyncio.StreamReader], Coroutine[Any, Any, None]],
    *,
    error_type: type[EdgeError] = RadioError,
) -> AsyncIterator[tuple[asyncio.StreamWriter, asyncio.Task[None]]]:
    """Open ``port`` and run ``read(reader)`` in a task for the length of the block, which
    gets the writer and that task; on the way out the task is cancelled and the port closed.

    Raises ``error_type`` when pyserial refuses the port name or a setting, or the open takes
    longer than ``open_timeout_s`` (a USB device that is enumerating can hang in open());
    :class:`OSError` when the port cannot be opened.
    """
    try:
        async with asyncio.timeout(open_timeout_s):
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=port, baudrate=baudrate
            )
    except ValueError as err:
        # pyserial's word for a port name or setting it cannot use.
        raise error_type(f"cannot open {port!r}: {err}") from err
    except TimeoutError as err:
        raise error_type(f"opening {port!r} took over {open_timeout_s} s") from err
    reader_task = asyncio.create_task(read(reader), name=f"read {port}")
    try:
        yield writer, reader_task
    finally:
        reader_task.cancel()
        await asyncio.wait({reader_task})
        if not reader_task.cancelled():
            # Retrieved so asyncio does not report it as never retrieved; the session's own
            # exception (or result) already says what happened.
            reader_task.exception()
        writer.close()
        with contextlib.suppress(OSError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await writer.wait_closed()


class ConsumerQueue(Generic[_T]):
    """What a backend received, in arrival order, until its consumer reads it; ``max_items``
    waiting make it :attr:`full` (the backend decides: drop and count, or stop asking).
    :meth:`end` (at close) ends every reader's :meth:`next`, whatever is still queued
    being read first."""

    def __init__(self, max_items: int) -> None:
        # None is the end marker: it follows everything put before it.
        self._queue: asyncio.Queue[_T | None] = asyncio.Queue()
        self._max_items = max_items

    def __len__(self) -> int:
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        """``max_items`` or more are waiting."""
        return self._queue.qsize() >= self._max_items

    def put(self, item: _T) -> None:
        """Queue ``item`` (even when full: the caller checked :attr:`full` if it cares)."""
        self._queue.put_nowait(item)

    def end(self) -> None:
        """No more items: readers get None once the queued ones are read."""
        self._queue.put_nowait(None)

    async def next(self) -> _T | None:
        """The next item, waiting for one; None once ended."""
        item = await self._queue.get()
        if item is None:
            # Leave the end marker for any other reader.
            self._queue.put_nowait(None)
        return item


class ReconnectingLink:
    """The supervisor of one backend's connection.

    ``session`` runs one connection to its end; it calls :meth:`established` once the device
    is ready, and returns (the port closed) or raises when the connection ends. The link runs
    it again until :meth:`close`: at once when ``port`` is a device path that disappeared and
    has come back (looked for every ``port_poll_s``), else after a delay that starts at
    ``reconnect_initial_s`` and doubles up to ``reconnect_max_s``, half of it drawn from
    ``rng`` (equal jitter), and starts again from ``reconnect_initial_s`` after a session that
    had connected.

    An :class:`OSError` or an :class:`~owlgate.edge.errors.EdgeError` from ``session`` is the
    device's doing: its message becomes :attr:`last_error`. Anything else is a bug, logged with
    its traceback, and handled the same way, so the backend keeps reconnecting instead of
    going silent. ``name`` and ``port`` start every log line (``"concentrator on
    /dev/ttyACM0 lost"``), written to ``logger``. ``error_type`` is raised by a second
    :meth:`start`, ``timeout_type`` by the waits. ``sleep`` is how the link waits
    (``asyncio.sleep``; a test may count the waits instead).

    Raises :class:`ValueError` unless ``0 < reconnect_initial_s <= reconnect_max_s``.
    """

    def __init__(
        self,
        session: Callable[[], Awaitable[None]],
        *,
        name: str,
        port: str,
        logger: logging.Logger,
        reconnect_initial_s: float,
        reconnect_max_s: float,
        rng: random.Random,
        error_type: type[EdgeError] = RadioError,
        timeout_type: type[EdgeError] = RadioTimeout,
        port_poll_s: float = PORT_POLL_S,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if not 0 < reconnect_initial_s <= reconnect_max_s:
            raise ValueError(
                f"need 0 < reconnect_initial_s <= reconnect_max_s, got {reconnect_initial_s}"
                f" and {reconnect_max_s}"
            )
        self._session = session
        self._name = name
        self._port = port
        self._logger = logger
        self._initial_s = reconnect_initial_s
        self._max_s = reconnect_max_s
        self._rng = rng
        self._error_type = error_type
        self._timeout_type = timeout_type
        self._port_poll_s = port_poll_s
        self._sleep = sleep
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self._ever_connected = False
        self._failure_logged = False
        #: Why the last session ended or failed; None while connected and before any failed.
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """The device is ready now (between :meth:`established` and the session's end)."""
        return self._connected.is_set()

    @property
    def closed(self) -> bool:
        """:meth:`close` was called."""
        return self._closed

    def start(self) -> None:
        """Start the supervisor (once: a second call, or one after :meth:`close`, raises
        ``error_type``)."""
        if self._supervisor is not None or self._closed:
            raise self._error_type(f"the {self._name} link on {self._port} is entered once")
        self._supervisor = asyncio.create_task(self._supervise(), name=f"{self._name} {self._port}")

    async def close(self) -> bool:
        """Stop the supervisor (ending the session it runs) and mark the link disconnected;
        True the first time, False when already closed (nothing done)."""
        if self._closed:
            return False
        self._closed = True
        await stop_task(
            self._supervisor, self._logger, "%s supervisor on %s failed", self._name, self._port
        )
        self.set_connected(False)
        return True

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until connected; ``timeout_type`` after ``timeout_s``."""
        await within(
            self._connected.wait(), timeout_s, lambda: self._timeout("not connected", timeout_s)
        )

    async def wait_disconnected(self, timeout_s: float) -> None:
        """Wait until not connected (lost, or not connected yet); ``timeout_type`` after
        ``timeout_s``."""
        await within(
            self._disconnected.wait(),
            timeout_s,
            lambda: self._timeout("still connected", timeout_s),
        )

    def _timeout(self, what: str, timeout_s: float) -> EdgeError:
        return self._timeout_type(
            f"{self._name} on {self._port} {what} after {timeout_s} s"
            f" (last error: {self.last_error})"
        )

    def established(self) -> bool:
        """Record that the session is connected and the device ready; True when this is a
        reconnection (a session had connected before), False the first time."""
        again = self._ever_connected
        self._ever_connected = True
        self._failure_logged = False
        self.last_error = None
        self.set_connected(True)
        return again

    def set_connected(self, connected: bool) -> None:
        """Mark the link connected or not, within a session (a device being configured
        again is not connected meanwhile)."""
        if connected:
            self._disconnected.clear()
            self._connected.set()
        else:
            self._connected.clear()
            self._disconnected.set()

    async def _supervise(self) -> None:
        delay_s = self._initial_s
        while True:
            reason = await self._run_session()
            was_connected = self._connected.is_set()
            self.set_connected(False)
            self.last_error = reason
            # Log each change of state once, not every retry.
            if was_connected:
                self._logger.warning(
                    "%s on %s lost (%s); reconnecting", self._name, self._port, reason
                )
                delay_s = self._initial_s
                self._failure_logged = False
            elif not self._failure_logged:
                self._logger.warning(
                    "%s on %s unavailable (%s); retrying, at most every %.1f s",
                    self._name,
                    self._port,
                    reason,
                    self._max_s,
                )
                self._failure_logged = True
            else:
                self._logger.debug("%s on %s still unavailable: %s", self._name, self._port, reason)
            if port_absent(self._port):
                # Unplugged: wait for the device node to come back, then open it at once.
                # A device node has no event to wait on (without inotify): poll its path.
                while port_absent(self._port):
                    await self._sleep(self._port_poll_s)
                continue
            # Equal jitter: half the delay fixed, half random, so gateways that lost power
            # together do not retry in step, and no retry comes sooner than half the delay.
            await self._sleep(delay_s / 2 + self._rng.uniform(0, delay_s / 2))
            delay_s = min(delay_s * 2, self._max_s)

    async def _run_session(self) -> str:
        """One session to its end; why it ended."""
        try:
            await self._session()
        except (OSError, EdgeError) as err:
            return getattr(err, "message", None) or str(err) or type(err).__name__
        except Exception as err:
            # A bug, not the device: logged with its traceback, then handled as a lost
            # connection, so the backend reconnects instead of going silent for good.
            reason = f"{type(err).__name__}: {err}"
            self._logger.error(
                "%s on %s: session failed: %s", self._name, self._port, reason, exc_info=err
            )
            return reason
        return "the port closed"


class LinkOwner(ABC, Generic[_StatusT]):
    """The lifecycle of a backend whose connection the :class:`ReconnectingLink` in
    ``self._link`` supervises: an async context manager (entering starts the link, once;
    leaving closes it), :meth:`close`, :meth:`wait_connected` and :meth:`wait_disconnected`.

    The backend provides ``status`` and may override :meth:`_on_closed` to fail what still
    waits for an answer and end its consumer's iterator.
    """

    _link: ReconnectingLink

    async def __aenter__(self) -> Self:
        self._link.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection, fail what waits for an answer, and end the consumer's
        iterator (idempotent)."""
        if await self._link.close():
            self._on_closed()

    async def wait_connected(self, timeout_s: float) -> _StatusT:
        """Wait until the device is connected and ready; the backend's timeout error
        (:class:`~owlgate.edge.errors.RadioTimeout` for a radio) after ``timeout_s``."""
        await self._link.wait_connected(timeout_s)
        return self.status

    async def wait_disconnected(self, timeout_s: float) -> _StatusT:
        """Wait until the device is not connected (lost, being configured again, or not
        connected yet); the backend's timeout error after ``timeout_s``."""
        await self._link.wait_disconnected(timeout_s)
        return self.status

    @property
    @abstractmethod
    def status(self) -> _StatusT:
        """The backend's state now."""

    def _on_closed(self) -> None:
        """Called once, after the link closed."""
