"""MQTT brokers for tests: the embedded amqtt and a real Mosquitto, each on a free port.

The fixtures that hand them out live in ``tests/brokers.py``; this module holds the classes, for
test modules to import. Every broker is a :class:`BrokerServer`: ``host``, ``port``, ``url``
(``mqtt://127.0.0.1:PORT``) and blocking ``stop()`` / ``start()`` to take it down and bring it
back on the same port, for reconnection tests.

Both run outside the test's event loop (Mosquitto as a process, amqtt in a thread with its own
loop), so tests may use ``asyncio.run`` and a broker outlives a test's loop. Mosquitto is asked
for with ``require_binary``: a missing binary skips locally and fails under ``CI=true``.

:class:`TcpProxy` sits between a client and a broker and can cut every connection at once
without a DISCONNECT, which is what a dead backhaul or a crashed gateway looks like to the
broker (it publishes the Will), and refuse new connections between ``pause()`` and ``resume()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Protocol, Self

from owlgate.fleet.broker import EmbeddedBroker, free_port
from owlgate.hil.processes import MosquittoProcess, find_mosquitto
from tests.conftest import require_binary

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class BrokerServer(Protocol):
    """A broker a test can stop and start again on the same port."""

    host: str
    port: int

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class ThreadedEmbeddedBroker:
    """:class:`owlgate.fleet.broker.EmbeddedBroker` on an event loop of its own thread."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = free_port() if port is None else port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: EmbeddedBroker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="amqtt", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        broker = EmbeddedBroker(self.port)
        asyncio.run_coroutine_threadsafe(broker.start(), loop).result(READY_TIMEOUT_S)
        self._broker = broker

    def stop(self) -> None:
        loop, thread, broker = self._loop, self._thread, self._broker
        self._loop = self._thread = self._broker = None
        if loop is None or thread is None:
            return
        if broker is not None:
            asyncio.run_coroutine_threadsafe(broker.stop(), loop).result(STOP_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT_S)
        _close_loop(loop)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    # amqtt 0.12.1 can leave a client's transport open after the client vanished without a
    # DISCONNECT (reading stopped, never closed), and Broker.shutdown() does not close it
    # either; closing the loop would then turn it into a ResourceWarning, which fails the
    # test that happens to be running when it is collected. The selector loop's transport
    # registry is not public API, hence getattr.
    for transport in list(getattr(loop, "_transports", {}).values()):
        if transport is not None and not transport.is_closing():
            transport.abort()
    # Cancel what amqtt left scheduled (per-client handlers) and let it unwind, so closing the
    # loop does not warn about pending tasks.
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def mosquitto_binary() -> str:
    """The mosquitto binary (see :func:`owlgate.hil.processes.find_mosquitto`); skips the test
    without it, fails under CI=true."""
    return find_mosquitto() or require_binary(
        "mosquitto", "install Mosquitto (Debian package mosquitto)"
    )


#: The tests' Mosquitto (:class:`owlgate.hil.processes.MosquittoProcess`): loopback only, no
#: persistence unless asked for, a verbose log per start in its folder, and a per-client queue of
#: ``MOSQUITTO_MAX_QUEUED_MESSAGES`` (100,000) QoS 1 messages, so that tests which publish while a
#: subscriber with a persistent session is away, or faster than it stores, lose none to
#: Mosquitto's default of 1000. A start that fails raises
#: :class:`~owlgate.hil.processes.MosquittoFailed` with the end of the broker's log.
MosquittoServer = MosquittoProcess


class TcpProxy:
    """A TCP relay to ``target_host:target_port`` on a free local port (async, in-loop).

    ``sever()`` cuts every relayed connection abruptly (no MQTT DISCONNECT reaches the
    broker); after ``pause()`` the port refuses connections (as a host whose broker is down
    does) until ``resume()`` listens on it again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = "127.0.0.1"
        self.port = 0
        self.severed = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self.resume()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.pause()
        self.sever()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            self._tasks.difference_update(tasks)

    async def pause(self) -> None:
        """Stop listening: connection attempts are refused until :meth:`resume`."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def resume(self) -> None:
        """Listen again, on the same port as before (a free one the first time)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    def sever(self) -> None:
        """Cut every relayed connection now, both sides, without a goodbye."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self.severed += 1

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Every socket is registered before the first await, and aborted in the outer finally
        # before anything else, so no cancellation can leave one open.
        me = asyncio.current_task()
        if me is not None:
            self._tasks.add(me)
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            self._writers.add(up_writer)
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            self._tasks.update(pumps)
            # When either direction ends, the relayed connection is over in both.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for side in (writer, up_writer):
                if side is not None:
                    self._writers.discard(side)
                    side.transport.abort()
            for pump in pumps:
                pump.cancel()
            if me is not None:
                self._tasks.discard(me)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
