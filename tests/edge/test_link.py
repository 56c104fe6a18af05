"""The shared connection supervisor of the serial backends, driven by a scripted session.

The link waits through an injected ``sleep`` that records each wait and returns at once, so
the tests assert on the sequence of attempts and waits, never on how long anything took.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from owlgate.edge.errors import EdgeError, RadioError, RadioTimeout
from owlgate.edge.link import (
    PORT_POLL_S,
    ConsumerQueue,
    LinkOwner,
    ReconnectingLink,
    serial_session,
    within,
)

WAIT_S = 10.0  # generous bound for anything that should happen soon; never reached
LOGGER = logging.getLogger("owlgate.edge.test_link")
URL = "socket://127.0.0.1:9"  # a pyserial URL: never looked for on the file system

Step = Callable[[ReconnectingLink], Awaitable[None]]


class LinkError(EdgeError):
    """A backend's own error type."""


class LinkTimeout(LinkError):
    """A backend's own timeout type."""


class FullJitter(random.Random):
    """Draws the top of every range: each backoff wait is then the whole delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def fail(link: ReconnectingLink) -> None:
    raise OSError("no such device")


async def connect_then_drop(link: ReconnectingLink) -> None:
    link.established()
    raise OSError("read failed")


async def bug(link: ReconnectingLink) -> None:
    raise ZeroDivisionError("division by zero")


async def close_port(link: ReconnectingLink) -> None:
    return


class Script:
    """A fake session running ``steps`` in turn, then staying connected; it records every
    attempt and every wait of the link in ``events``, and the link's ``last_error`` at each
    wait in ``errors``. With ``hang``, the first wait never ends."""

    def __init__(self, *steps: Step, hang: bool = False) -> None:
        self.steps = list(steps)
        self.hang = hang
        self.events: list[tuple[str, float]] = []
        self.errors: list[str | None] = []
        self.settled = asyncio.Event()
        self.link: ReconnectingLink | None = None

    def make(self, port: str = URL, **kw: object) -> ReconnectingLink:
        options: dict[str, object] = {
            "name": "test device",
            "port": port,
            "logger": LOGGER,
            "reconnect_initial_s": 0.1,
            "reconnect_max_s": 0.4,
            "rng": FullJitter(),
            "sleep": self.sleep,
        }
        options.update(kw)
        self.link = ReconnectingLink(self.session, **options)  # type: ignore[arg-type]
        return self.link

    async def session(self) -> None:
        assert self.link is not None
        self.events.append(("session", len(self.events)))
        if self.steps:
            await self.steps.pop(0)(self.link)
            return
        self.link.established()
        self.settled.set()
        await asyncio.Event().wait()

    async def sleep(self, delay_s: float) -> None:
        assert self.link is not None
        self.events.append(("sleep", delay_s))
        self.errors.append(self.link.last_error)
        if self.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(0)

    def waits(self) -> list[float]:
        return [value for kind, value in self.events if kind == "sleep"]


async def settle(script: Script, link: ReconnectingLink) -> None:
    link.start()
    await asyncio.wait_for(script.settled.wait(), WAIT_S)


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_connection() -> None:
    async def main() -> None:
        script = Script(fail, fail, fail, fail, connect_then_drop, fail, fail)
        link = script.make()
        await settle(script, link)
        # 0.1 doubling to the 0.4 cap; a session that had connected starts again from 0.1.
        assert script.waits() == [0.1, 0.2, 0.4, 0.4, 0.1, 0.2, 0.4]
        assert [kind for kind, _ in script.events].count("session") == 8
        assert link.connected
        assert link.last_error is None
        await link.close()

    asyncio.run(main())


def test_equal_jitter_waits_half_fixed_half_drawn_from_the_rng() -> None:
    async def main() -> None:
        script = Script(fail, fail, fail, fail)
        link = script.make(rng=random.Random(7), reconnect_initial_s=1.0, reconnect_max_s=4.0)
        await settle(script, link)
        twin = random.Random(7)
        expected = [d / 2 + twin.uniform(0, d / 2) for d in (1.0, 2.0, 4.0, 4.0)]
        assert script.waits() == expected
        assert all(
            d / 2 <= w <= d for w, d in zip(script.waits(), (1.0, 2.0, 4.0, 4.0), strict=True)
        )
        await link.close()

    asyncio.run(main())


def test_each_change_of_state_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        script = Script(fail, fail, fail, connect_then_drop, fail)
        link = script.make()
        with caplog.at_level(logging.DEBUG, logger=LOGGER.name):
            await settle(script, link)
        await link.close()

    asyncio.run(main())
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER.name]
    unavailable = (
        f"test device on {URL} unavailable (no such device); retrying, at most every 0.4 s"
    )
    assert lines == [
        (logging.WARNING, unavailable),
        (logging.DEBUG, f"test device on {URL} still unavailable: no such device"),
        (logging.DEBUG, f"test device on {URL} still unavailable: no such device"),
        (logging.WARNING, f"test device on {URL} lost (read failed); reconnecting"),
        (logging.WARNING, unavailable),
    ]
    # Expected failures are the device's doing: no traceback.
    assert all(r.exc_info is None for r in caplog.records)


def test_an_unexpected_exception_is_logged_with_traceback_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        script = Script(bug)
        link = script.make()
        with caplog.at_level(logging.ERROR, logger=LOGGER.name):
            await settle(script, link)
        assert script.errors == ["ZeroDivisionError: division by zero"]
        assert [kind for kind, _ in script.events] == ["session", "sleep", "session"]
        assert link.connected
        await link.close()

    asyncio.run(main())
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == (
        f"test device on {URL}: session failed: ZeroDivisionError: division by zero"
    )
    assert record.exc_info is not None
    assert record.exc_info[0] is ZeroDivisionError


def test_a_session_that_returns_counts_as_the_port_closing() -> None:
    async def main() -> None:
        script = Script(close_port)
        link = script.make()
        await settle(script, link)
        assert script.errors == ["the port closed"]
        await link.close()

    asyncio.run(main())


def test_an_absent_device_path_is_polled_and_opened_as_soon_as_it_is_back(
    tmp_path: Path,
) -> None:
    port = tmp_path / "ttyUSB0"
    port.touch()

    async def unplug(link: ReconnectingLink) -> None:
        link.established()
        port.unlink()
        raise OSError("device disconnected")

    async def main() -> None:
        script = Script(unplug)
        polls = 0

        async def sleep(delay_s: float) -> None:
            nonlocal polls
            await script.sleep(delay_s)
            polls += 1
            if polls == 3:
                port.touch()  # plugged in again during the third poll

        # A backoff wait would be 1 s, not PORT_POLL_S: the events tell which it was.
        link = script.make(str(port), sleep=sleep, reconnect_initial_s=1.0, reconnect_max_s=4.0)
        await settle(script, link)
        # Three polls of the path, then the port is opened at once: no backoff wait.
        assert script.events == [
            ("session", 0),
            ("sleep", PORT_POLL_S),
            ("sleep", PORT_POLL_S),
            ("sleep", PORT_POLL_S),
            ("session", 4),
        ]
        assert link.connected
        await link.close()

    asyncio.run(main())


def test_a_device_path_that_is_there_but_failing_gets_the_backoff(tmp_path: Path) -> None:
    port = tmp_path / "ttyACM0"
    port.touch()

    async def main() -> None:
        script = Script(fail, fail)
        link = script.make(str(port))
        await settle(script, link)
        assert script.waits() == [0.1, 0.2]
        await link.close()

    asyncio.run(main())


def test_close_is_idempotent_and_a_link_is_started_once() -> None:
    async def main() -> None:
        script = Script()
        link = script.make(error_type=LinkError)
        await settle(script, link)
        with pytest.raises(LinkError, match="entered once"):
            link.start()
        assert await link.close() is True
        assert link.closed
        assert not link.connected
        assert await link.close() is False
        with pytest.raises(LinkError, match="entered once"):
            link.start()
        # Never started: closing still works, once.
        idle = Script().make()
        assert await idle.close() is True
        assert await idle.close() is False

    asyncio.run(main())


def test_waits_raise_the_backends_timeout_type() -> None:
    async def main() -> None:
        script = Script(fail, hang=True)  # stays unavailable
        link = script.make(timeout_type=LinkTimeout)
        link.start()
        await link.wait_disconnected(WAIT_S)
        with pytest.raises(LinkTimeout) as caught:
            await link.wait_connected(0.05)
        assert caught.value.message == (
            f"test device on {URL} not connected after 0.05 s (last error: no such device)"
        )
        await link.close()

        script = Script()
        link = script.make(timeout_type=LinkTimeout)
        await settle(script, link)
        await link.wait_connected(WAIT_S)
        with pytest.raises(LinkTimeout, match=r"still connected after 0\.05 s"):
            await link.wait_disconnected(0.05)
        await link.close()
        await link.wait_disconnected(WAIT_S)

    asyncio.run(main())


def test_a_failed_supervisor_is_logged_at_close(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        broke = asyncio.Event()

        async def broken_sleep(delay_s: float) -> None:
            broke.set()
            raise RuntimeError("sleep broke")

        script = Script(fail)
        link = script.make(sleep=broken_sleep)
        link.start()
        # The supervisor ends in the same step that sets the event: it has failed by now.
        await asyncio.wait_for(broke.wait(), WAIT_S)
        with caplog.at_level(logging.ERROR, logger=LOGGER.name):
            assert await link.close() is True

    asyncio.run(main())
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == f"test device supervisor on {URL} failed"
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError


def test_bad_backoff_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="reconnect_initial_s"):
        Script().make(reconnect_initial_s=0.0)
    with pytest.raises(ValueError, match="reconnect_initial_s"):
        Script().make(reconnect_initial_s=2.0, reconnect_max_s=1.0)


class Owner(LinkOwner[str]):
    """The smallest backend: a link, a status and a close hook."""

    def __init__(self, script: Script) -> None:
        self._link = script.make()
        self.closed_calls = 0

    @property
    def status(self) -> str:
        return "up" if self._link.connected else "down"

    def _on_closed(self) -> None:
        self.closed_calls += 1


def test_a_link_owner_is_an_async_context_manager() -> None:
    async def main() -> None:
        script = Script(fail)
        owner = Owner(script)
        async with owner as entered:
            assert entered is owner
            assert await owner.wait_connected(WAIT_S) == "up"
            with pytest.raises(RadioTimeout):
                await owner.wait_disconnected(0.05)
            with pytest.raises(RadioError, match="entered once"):
                await owner.__aenter__()
        assert owner.closed_calls == 1
        await owner.close()
        assert owner.closed_calls == 1
        assert await owner.wait_disconnected(WAIT_S) == "down"

    asyncio.run(main())


def test_consumer_queue_ends_every_reader_after_the_queued_items() -> None:
    async def main() -> None:
        queue = ConsumerQueue[int](2)
        full = []
        for item in (1, 2, 3):
            queue.put(item)  # put never refuses: the caller decides on full
            full.append(queue.full)
        assert full == [False, True, True]
        assert len(queue) == 3
        queue.end()
        assert [await queue.next() for _ in range(5)] == [1, 2, 3, None, None]

    asyncio.run(main())


def test_within_raises_the_given_error() -> None:
    async def main() -> None:
        assert await within(asyncio.sleep(0, "done"), WAIT_S, lambda: LinkTimeout("late")) == "done"
        with pytest.raises(LinkTimeout, match="late") as caught:
            await within(asyncio.Event().wait(), 0.01, lambda: LinkTimeout("late"))
        assert isinstance(caught.value.__cause__, TimeoutError)

    asyncio.run(main())


def test_serial_session_turns_a_bad_port_name_into_the_backends_error() -> None:
    async def read(reader: asyncio.StreamReader) -> None:
        raise AssertionError("never started")

    async def main() -> None:
        with pytest.raises(LinkError, match="cannot open 'nonsense://x'"):
            async with serial_session("nonsense://x", 115_200, 1.0, read, error_type=LinkError):
                raise AssertionError("never entered")

    asyncio.run(main())


def test_serial_session_reads_until_the_block_ends_then_closes(tmp_path: Path) -> None:
    async def main() -> None:
        received = asyncio.Queue[bytes]()
        peer_closed = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello")
            await writer.drain()
            assert await reader.read() == b"ping"  # until the session closes the port
            peer_closed.set()
            writer.close()

        async def read(reader: asyncio.StreamReader) -> None:
            while data := await reader.read(64):
                received.put_nowait(data)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            async with serial_session(f"socket://127.0.0.1:{port}", 115_200, WAIT_S, read) as (
                writer,
                reader_task,
            ):
                assert await asyncio.wait_for(received.get(), WAIT_S) == b"hello"
                writer.write(b"ping")
                await writer.drain()
            assert reader_task.cancelled()
            await asyncio.wait_for(peer_closed.wait(), WAIT_S)

    asyncio.run(main())


def test_a_link_owner_must_say_its_status() -> None:
    class Silent(LinkOwner[str]):
        pass

    with pytest.raises(TypeError, match="status"):
        Silent()  # type: ignore[abstract]
