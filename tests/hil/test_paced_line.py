"""The paced line: every byte through, in order, released no faster than the baud rate allows
by the relay's own schedule; the device's unplug and replug reach the host."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import tty
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import pytest

from owlgate.codecs.concentrator import Channel, RadioConfig, RxFrame
from owlgate.edge.serial_backend import SerialConcentrator
from owlgate.hil.concentrator import EmulatedConcentrator
from owlgate.hil.paced_line import LineSchedule, PacedLine, Release

WAIT_S = 10.0


# --- the schedule, pure -----------------------------------------------------------------------


def test_schedule_releases_bytes_at_the_line_rate() -> None:
    schedule = LineSchedule(115_200, chunk_bytes=12)
    assert schedule.bytes_per_s == 11_520
    chunks = schedule.admit(1152, 10.0)
    assert [size for _, size in chunks] == [12] * 96
    # The k-th chunk's last byte has arrived after 12 k byte times of 10 bits.
    assert [due for due, _ in chunks] == pytest.approx(
        [10.0 + 12 * k / 11_520 for k in range(1, 97)]
    )
    assert chunks[-1][0] == pytest.approx(10.1)
    assert schedule.free_at_s == chunks[-1][0]


def test_schedule_queues_behind_busy_line_and_restarts_when_idle() -> None:
    schedule = LineSchedule(9600, chunk_bytes=100)  # 960 bytes/s
    ((due, size),) = schedule.admit(96, 0.0)
    assert due == pytest.approx(0.1)
    assert size == 96
    # Half-way through, more bytes wait for the first ones: 100 and 44 bytes more.
    queued = schedule.admit(144, 0.05)
    assert [size for _, size in queued] == [100, 44]
    assert [due for due, _ in queued] == pytest.approx([196 / 960, 240 / 960])
    # Long after the line went idle, sending starts at once, no credit saved up.
    ((due, size),) = schedule.admit(9, 5.0)
    assert due == pytest.approx(5.0 + 9 / 960)
    assert size == 9
    assert schedule.admit(0, 6.0) == []
    assert schedule.bytes_admitted == 96 + 144 + 9


def test_schedule_counts_the_bits_per_byte_it_is_given() -> None:
    # 8E1 or 8N2: 11 bits a byte.
    schedule = LineSchedule(11_000, bits_per_byte=11)
    assert schedule.bytes_per_s == 1000
    assert [due for due, _ in schedule.admit(3, 0.0)] == pytest.approx([0.001, 0.002, 0.003])


def test_schedule_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        LineSchedule(0)
    with pytest.raises(ValueError, match="must not be negative"):
        LineSchedule(9600).admit(-1, 0.0)


# --- the relay --------------------------------------------------------------------------------


async def _write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(fd)


async def _read_exactly(fd: int, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < count:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            continue
        assert chunk, "end of file before every byte arrived"
        got += chunk
    return bytes(got)


def _check_paced(releases: list[Release], rate: float, chunk_bytes: int) -> None:
    """The schedule never lets more through than the line carries, and no chunk was written
    before its time."""
    assert releases
    for earlier, later in itertools.pairwise(releases):
        # Each chunk's last byte comes at least its own transmission time after the
        # previous chunk's: over any interval, bytes released <= rate x its length.
        assert later.due_s - earlier.due_s >= later.size / rate - 1e-9
    for release in releases:
        assert 1 <= release.size <= chunk_bytes
        assert release.written_s >= release.due_s


def test_every_byte_arrives_in_order_at_the_paced_rate(tmp_path: Path) -> None:
    rng = random.Random(7)
    down = rng.randbytes(20_000)
    up = rng.randbytes(3_000)

    async def main() -> None:
        device_master, device_slave = os.openpty()
        os.set_blocking(device_master, False)
        try:
            line = PacedLine(os.ttyname(device_slave), tmp_path, baudrate=1_000_000, record=True)
            async with line:
                host = os.open(line.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
                tty.setraw(host)
                try:
                    # Both ways at once: the directions are paced independently.
                    received_down, received_up, _, _ = await asyncio.wait_for(
                        asyncio.gather(
                            _read_exactly(host, len(down)),
                            _read_exactly(device_master, len(up)),
                            _write_all(device_master, down),
                            _write_all(host, up),
                        ),
                        WAIT_S,
                    )
                finally:
                    os.close(host)
                assert received_down == down
                assert received_up == up
                assert line.delivered_down == len(down)
                assert line.delivered_up == len(up)
                assert line.bytes_per_s == 100_000
                releases = line.releases
        finally:
            os.close(device_master)
            os.close(device_slave)
        for name, sent in (("down", down), ("up", up)):
            mine = [release for release in releases if release.direction == name]
            assert sum(release.size for release in mine) == len(sent)
            # 1 ms of line time per chunk at 100 000 bytes/s.
            _check_paced(mine, 100_000, 100)
        # The link is removed when the line closes.
        assert not line.path.exists()

    asyncio.run(main())


CONFIG = RadioConfig(
    config_id=3,
    region="EU868",
    channels=(Channel(frequency_hz=868_100_000), Channel(frequency_hz=868_300_000)),
    tx_frequency_min_hz=863_000_000,
    tx_frequency_max_hz=870_000_000,
    tx_power_max_dbm=14,
    token=1,
)


def test_unplug_and_replug_reach_the_host_through_the_line(tmp_path: Path) -> None:
    """The host (the real serial backend) talks to the emulated concentrator through the
    line; when the concentrator is unplugged the host loses its port, and after the replug it
    reconnects, configures the rebooted MCU again and receives what it reports."""

    async def main() -> None:
        emulator = EmulatedConcentrator(tmp_path / "dev", seed=1)
        async with emulator:
            line = PacedLine(emulator.path, tmp_path, baudrate=115_200, record=True)
            async with line:
                host = SerialConcentrator(
                    port=str(line.path),
                    radio_config=CONFIG,
                    reconnect_initial_s=0.05,
                    reconnect_max_s=0.2,
                    rng=random.Random(1),
                )
                async with host:
                    await host.wait_connected(WAIT_S)
                    frames = cast(AsyncGenerator[RxFrame, None], host.frames())
                    first = emulator.inject(bytes(range(1, 24)))
                    got: list[RxFrame] = []
                    async with asyncio.timeout(WAIT_S):
                        got.append(await anext(frames))

                    emulator.unplug()
                    await host.wait_disconnected(WAIT_S)
                    assert not line.plugged
                    assert not line.path.exists()

                    emulator.replug()
                    await line.wait_plugged(WAIT_S)
                    await host.wait_connected(WAIT_S)
                    second = emulator.inject(bytes(range(30, 60)))
                    async with asyncio.timeout(WAIT_S):
                        got.append(await anext(frames))
                    assert host.counters.reconnects == 1
                    await frames.aclose()
                assert [frame.payload for frame in got] == [first.payload, second.payload]
                assert line.replugs == 1
                # Configured once per boot: at start and after the replug.
                assert [config.config_id for config in emulator.radio_configs] == [3, 3]
                assert {release.direction for release in line.releases} == {"down", "up"}
                _check_paced(
                    [release for release in line.releases if release.direction == "down"],
                    11_520,
                    12,
                )

    asyncio.run(main())
