"""The emulators' serial port: a pty behind a stable symlink that can be pulled and plugged
back, with writes that never block and never reorder, and nothing left open after close."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from owlgate.hil.paced_line import PacedLine
from owlgate.hil.pty import FdReader, FdWriter, PtyPort

WAIT_S = 10.0


class Recorder:
    """The callbacks of one port, recorded."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.errors: list[str] = []
        self.dropped = 0
        self.drained = 0
        self.arrived = asyncio.Event()

    def on_bytes(self, data: bytes) -> None:
        self.received += data
        self.arrived.set()

    def on_error(self, reason: str) -> None:
        self.errors.append(reason)
        self.arrived.set()

    def on_dropped(self) -> None:
        self.dropped += 1

    def on_drained(self) -> None:
        self.drained += 1

    async def wait_bytes(self, count: int) -> bytes:
        async with asyncio.timeout(WAIT_S):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return bytes(self.received)


def make_port(path: Path, recorder: Recorder) -> PtyPort:
    return PtyPort(
        path,
        label=f"test port {path}",
        on_bytes=recorder.on_bytes,
        on_dropped=recorder.on_dropped,
        on_drained=recorder.on_drained,
    )


@contextlib.asynccontextmanager
async def connected(path: Path) -> AsyncIterator[tuple[PtyPort, Recorder, int]]:
    """An open port at ``path`` with a client on it; both closed at the end."""
    recorder = Recorder()
    port = make_port(path, recorder)
    port.open()
    client = open_client(port.path)
    try:
        yield port, recorder, client
    finally:
        os.close(client)
        port.close()


def open_client(path: Path) -> int:
    """What pyserial does with the path: open it, non-blocking, raw."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    return fd


async def wait_fd(fd: int, *, write: bool = False) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    if write:
        loop.add_writer(fd, ready.set_result, None)
    else:
        loop.add_reader(fd, ready.set_result, None)
    try:
        async with asyncio.timeout(WAIT_S):
            await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def read_exactly(fd: int, count: int) -> bytes:
    got = bytearray()
    while len(got) < count:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await wait_fd(fd)
            continue
        assert chunk, f"end of file after {len(got)} of {count} bytes"
        got += chunk
    return bytes(got)


async def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await wait_fd(fd, write=True)


def reading(port: PtyPort) -> bool:
    # A call, not the attribute, so that a type checker does not carry the value across the
    # pause() and resume() that change it.
    return port.reader.reading


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_symlink_points_at_the_live_pty_and_bytes_flow_both_ways(tmp_path: Path) -> None:
    async def main() -> None:
        closed = make_port(tmp_path / "ttyCLOSED", Recorder())
        assert (closed.is_open, closed.tty_path) == (False, None)
        async with connected(tmp_path / "dev" / "ttyTEST0") as (port, recorder, client):
            assert port.is_open
            assert str(port.tty_path).startswith("/dev/pts/")
            assert port.path.is_symlink()
            assert os.readlink(port.path) == port.tty_path
            # No temporary link is left beside it.
            assert sorted(p.name for p in port.path.parent.iterdir()) == ["ttyTEST0"]
            await write_all(client, b"\x00hello\r\n\xff")
            assert await recorder.wait_bytes(9) == b"\x00hello\r\n\xff"
            assert port.write(b"\x00\x0a\x0d\x7f answer") is True
            assert await read_exactly(client, 11) == b"\x00\x0a\x0d\x7f answer"
            assert port.bytes_written == 11
            assert port.pending_bytes == 0
            assert (recorder.dropped, recorder.errors) == (0, [])
        assert not port.path.exists()
        assert not port.path.is_symlink()

    asyncio.run(main())


def test_unplug_removes_the_path_and_the_client_loses_its_port(tmp_path: Path) -> None:
    async def main() -> None:
        recorder = Recorder()
        port = make_port(tmp_path / "ttyTEST0", recorder)
        port.open()
        client = open_client(port.path)
        try:
            assert port.write(b"never read") is True
            assert port.close() == 0  # the pty took it all; nothing was discarded
            assert port.is_open is False
            assert port.tty_path is None
            assert not port.path.exists()
            # A hung-up tty: what was not read is gone, reads give end of file (pyserial's
            # "returned no data"), and writes fail with EIO.
            assert os.read(client, 4096) == b""
            with pytest.raises(OSError) as caught:
                os.write(client, b"x")
            assert caught.value.errno == errno.EIO
            # Closing again is harmless.
            assert port.close() == 0
        finally:
            os.close(client)

    asyncio.run(main())


def test_writes_while_unplugged_are_refused_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        recorder = Recorder()
        port = make_port(tmp_path / "ttyTEST0", recorder)
        assert port.write(b"before start") is False
        port.open()
        port.close()
        assert port.write(b"one") is False
        assert port.write(b"two") is False
        assert port.dropped_writes == 3
        assert recorder.dropped == 3
        assert port.bytes_written == 0
        assert port.pending_bytes == 0
        # After a replug the port writes again, and none of the refused bytes come along.
        port.open()
        client = open_client(port.path)
        try:
            assert port.write(b"fresh") is True
            assert await read_exactly(client, 5) == b"fresh"
            assert port.dropped_writes == 3
        finally:
            os.close(client)
            port.close()

    asyncio.run(main())


def test_replug_makes_a_new_pty_behind_the_same_path(tmp_path: Path) -> None:
    async def main() -> None:
        recorder = Recorder()
        port = make_port(tmp_path / "ttyTEST0", recorder)
        port.open()
        first_tty = port.tty_path
        old_client = open_client(port.path)
        # open() on an open port is a replug: the old pty goes, a new one takes the path.
        port.open()
        try:
            assert port.is_open is True
            assert port.tty_path is not None
            assert port.tty_path != first_tty
            assert os.readlink(port.path) == port.tty_path
            assert os.read(old_client, 4096) == b""  # the old port hung up
            client = open_client(port.path)
            try:
                await write_all(client, b"after replug")
                assert await recorder.wait_bytes(12) == b"after replug"
                assert port.write(b"ok") is True
                assert await read_exactly(client, 2) == b"ok"
            finally:
                os.close(client)
            # close then open: the same path again, a pty of its own.
            port.close()
            assert not port.path.exists()
            port.open()
            assert os.readlink(port.path) == port.tty_path
        finally:
            os.close(old_client)
            port.close()

    asyncio.run(main())


def test_a_full_buffer_is_finished_by_the_writer_callback_when_the_client_reads(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB: far more than a pty buffers

    async def main() -> None:
        async with connected(tmp_path / "ttyTEST0") as (port, recorder, client):
            assert port.write(data[:100_000]) is True
            assert port.write(data[100_000:]) is True
            # The client has read nothing: the rest waits in the port, in order.
            waiting = port.pending_bytes
            assert 0 < waiting < len(data)
            assert port.bytes_written == len(data) - waiting
            assert recorder.drained == 0
            assert await read_exactly(client, len(data)) == data
            assert port.pending_bytes == 0
            assert port.bytes_written == len(data)
            assert recorder.drained == 1
            assert (recorder.dropped, port.dropped_writes) == (0, 0)

    asyncio.run(main())


def test_close_reports_what_was_still_waiting(tmp_path: Path) -> None:
    async def main() -> None:
        recorder = Recorder()
        port = make_port(tmp_path / "ttyTEST0", recorder)
        port.open()
        assert port.write(bytes(300_000)) is True
        waiting = port.pending_bytes
        assert waiting > 0
        assert port.close() == waiting
        assert port.pending_bytes == 0
        # Nothing left watching a closed descriptor: the loop runs on without errors.
        await asyncio.sleep(0)

    asyncio.run(main())


def test_paused_reading_leaves_bytes_in_the_pty_until_resumed(tmp_path: Path) -> None:
    async def main() -> None:
        async with connected(tmp_path / "ttyTEST0") as (port, recorder, client):
            assert reading(port) is True
            port.reader.pause()
            assert reading(port) is False
            await write_all(client, b"held back")
            for _ in range(20):
                await asyncio.sleep(0)
            assert recorder.received == b""
            port.reader.resume()
            assert reading(port) is True
            assert await recorder.wait_bytes(9) == b"held back"
        assert reading(port) is False

    asyncio.run(main())


def test_no_descriptor_is_left_open(tmp_path: Path) -> None:
    async def main() -> None:
        before = open_fds()
        recorder = Recorder()
        port = make_port(tmp_path / "ttyTEST0", recorder)
        for _ in range(5):
            port.open()  # a replug each time after the first
            client = open_client(port.path)
            port.write(bytes(200_000))  # leaves the writer callback armed
            os.close(client)
        port.close()
        port.open()
        port.close()
        port.close()
        assert open_fds() == before
        assert not port.path.exists()

    asyncio.run(main())


def test_reader_reports_end_of_file_once_and_stops(tmp_path: Path) -> None:
    async def main() -> None:
        recorder = Recorder()
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        reader = FdReader("test pipe", recorder.on_bytes, on_error=recorder.on_error)
        reader.attach(asyncio.get_running_loop(), read_end)
        try:
            os.write(write_end, b"last words")
            os.close(write_end)
            async with asyncio.timeout(WAIT_S):
                while not recorder.errors:
                    recorder.arrived.clear()
                    await recorder.arrived.wait()
            assert recorder.received == b"last words"
            assert recorder.errors == ["end of file"]
            assert reader.reading is False
            assert reader.attached is True
        finally:
            reader.detach()
            os.close(read_end)

    asyncio.run(main())


def test_writer_failure_drops_the_buffer_counts_and_reports(tmp_path: Path) -> None:
    async def main() -> None:
        recorder = Recorder()
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        writer = FdWriter("test pipe", on_error=recorder.on_error, on_dropped=recorder.on_dropped)
        writer.attach(asyncio.get_running_loop(), write_end)
        try:
            assert writer.write(b"taken") is True
            assert os.read(read_end, 100) == b"taken"
            os.close(read_end)
            # The reader is gone: EPIPE, the bytes are dropped and counted, no exception.
            assert writer.write(b"lost") is True
            assert writer.pending_bytes == 0
            assert writer.dropped_writes == recorder.dropped == 1
            assert len(recorder.errors) == 1
            assert recorder.errors[0].startswith("write failed: ")
            assert "Broken pipe" in recorder.errors[0]
            assert writer.bytes_written == 5
        finally:
            assert writer.detach() == 0
            os.close(write_end)
        assert writer.write(b"detached") is False
        assert writer.dropped_writes == 2

    asyncio.run(main())


def test_a_failed_write_without_a_handler_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        read_end, write_end = os.pipe()
        os.close(read_end)
        writer = FdWriter("test pipe")
        writer.attach(asyncio.get_running_loop(), write_end)
        try:
            with caplog.at_level("WARNING", logger="owlgate.hil.pty"):
                assert writer.write(b"x") is True
        finally:
            writer.detach()
            os.close(write_end)
        messages = [record.getMessage() for record in caplog.records]
        assert len(messages) == 1
        assert messages[0].startswith("test pipe: write failed: ")
        assert writer.dropped_writes == 1

    asyncio.run(main())


def test_paced_line_reads_the_device_again_once_the_host_drains_its_port(
    tmp_path: Path,
) -> None:
    """The relay stops reading the device while the host's port is full (backpressure) and
    must start again when the port's writer callback has finished the buffer, not only when
    the schedule releases more bytes (there are none then: it stopped reading)."""
    data = bytes(range(251)) * 1200  # 301 200 bytes, 0.3 s of line time at 10 Mbaud

    async def main() -> None:
        device_master, device_slave = os.openpty()
        os.set_blocking(device_master, False)
        try:
            line = PacedLine(
                os.ttyname(device_slave), tmp_path, baudrate=10_000_000, max_backlog_bytes=4096
            )
            async with line:
                host = open_client(line.path)
                try:
                    sending = asyncio.get_running_loop().create_task(write_all(device_master, data))
                    # The host is busy elsewhere for a while: its port fills and the relay
                    # stops reading the device.
                    await asyncio.sleep(0.3)
                    assert await read_exactly(host, len(data)) == data
                    await sending
                finally:
                    os.close(host)
                assert line.delivered_down == len(data)
                assert line.dropped_bytes == 0
        finally:
            os.close(device_master)
            os.close(device_slave)

    asyncio.run(main())


def test_a_handler_that_detaches_on_a_failed_write_learns_what_was_lost(tmp_path: Path) -> None:
    async def main() -> None:
        read_end, write_end = os.pipe()
        os.close(read_end)
        lost: list[int] = []
        writer = FdWriter("test pipe", on_error=lambda reason: lost.append(writer.detach()))
        writer.attach(asyncio.get_running_loop(), write_end)
        try:
            assert writer.write(b"twelve bytes") is True
        finally:
            os.close(write_end)
        assert lost == [12]
        assert writer.attached is False
        assert (writer.pending_bytes, writer.bytes_written, writer.dropped_writes) == (0, 0, 1)

    asyncio.run(main())
