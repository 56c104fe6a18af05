"""The outbox figures: how fast the gateway stores readings durably, and how fast it sends a
backlog to the broker after an outage.

- ``edge.outbox_enqueue_per_s``: readings per second through :meth:`Batcher.add` into the
  SQLite outbox (WAL, ``synchronous=FULL``): every batch of 100 is encoded, signed and
  committed with an fsync (a group commit: one fsync per batch, not per reading).
- ``edge.outbox_drain_per_s``: readings per second from a full outbox (batches sealed while
  the backhaul was down) to a real Mosquitto, through the agent's
  :class:`~owlgate.edge.uplink.Uplink` (QoS 1, deleted from the outbox after the PUBACK),
  from the moment the connection is up until the outbox is empty.

Inputs come from a fixed seed; every reading is checked to have been stored or sent.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from owlgate.codecs.node.telemetry import Reading
from owlgate.edge.batcher import Batcher
from owlgate.edge.state import StateDb, UplinkOutbox
from owlgate.edge.uplink import Uplink
from owlgate.hil.processes import find_mosquitto

from .codec_bench import BASE_TIME, GATEWAY, SEED
from .figures import Figure
from .fleet_bench import bench_mosquitto

BATCH = 100
DEVICES = 500


def _readings(count: int, rng: random.Random) -> list[Reading]:
    readings = []
    for index in range(count):
        dev = index % DEVICES
        readings.append(
            Reading(
                bytes.fromhex("70b3d57ed0") + (0x3000 + dev).to_bytes(3, "big"),
                BASE_TIME + index // 50,
                {
                    "occupied": rng.random() < 0.5,
                    "battery_mv": rng.randrange(3300, 3700),
                    "temperature_c": rng.randrange(-50, 350) / 10,
                },
                rssi_dbm=rng.randrange(-120, -60),
                snr_db=rng.randrange(-40, 40) / 4,
                fcnt=index // DEVICES,
                sf=rng.choice((7, 8, 9, 10)),
                freq_hz=rng.choice((868_100_000, 868_300_000, 868_500_000)),
            )
        )
    return readings


def _fill(state: StateDb, readings: Sequence[Reading], *, backhaul_up: bool) -> float:
    """Add ``readings`` through a batcher; seconds taken. Every batch is sealed."""
    batcher = Batcher(
        state,
        Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
        GATEWAY,
        max_readings=BATCH,
        max_age_s=60.0,
        backhaul=lambda: backhaul_up,
    )
    add = batcher.add
    now = float(BASE_TIME)
    began = time.perf_counter()
    for reading in readings:
        add(reading, now)
    batcher.seal(now)
    return time.perf_counter() - began


def outbox_enqueue_per_s(quick: bool) -> tuple[float, float]:
    """(best, median) readings per second over rounds of fresh readings."""
    per_round = 5_000 if quick else 50_000
    repeat = 3 if quick else 5
    rng = random.Random(SEED)
    rounds = []
    with (
        tempfile.TemporaryDirectory(prefix="owlgate-bench-") as tmp,
        StateDb.in_dir(tmp) as state,
    ):
        _fill(state, _readings(1_000, rng), backhaul_up=True)  # warm-up
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(repeat):
                readings = _readings(per_round, rng)
                before = state.depth
                seconds = _fill(state, readings, backhaul_up=True)
                if state.depth - before != per_round // BATCH:
                    raise RuntimeError("the outbox did not take every batch")
                rounds.append(per_round / seconds)
        finally:
            if was_enabled:
                gc.enable()
    return max(rounds), statistics.median(rounds)


async def _drain(state: StateDb, host: str, port: int) -> float:
    uplink = Uplink(UplinkOutbox(state), GATEWAY, host, port)
    async with uplink:
        while not uplink.connected:  # noqa: ASYNC110 - a benchmark's start line
            await asyncio.sleep(0.001)
        began = time.perf_counter()
        while state.depth:  # noqa: ASYNC110 - the outbox has no event to wait on
            await asyncio.sleep(0.001)
        return time.perf_counter() - began


def outbox_drain_per_s(quick: bool, broker: str) -> tuple[float, float]:
    """(best, median) readings per second from a backlog to the broker ``mqtt://host:port``."""
    readings = 10_000 if quick else 100_000
    repeat = 2 if quick else 3
    host, port = broker.removeprefix("mqtt://").rsplit(":", 1)
    rng = random.Random(SEED + 1)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="owlgate-bench-") as tmp:
        for index in range(repeat):
            with StateDb(Path(tmp) / f"agent-{index}.sqlite3") as state:
                # Sealed while the backhaul was down: the backlog after an outage.
                _fill(state, _readings(readings, rng), backhaul_up=False)
                if state.depth != readings // BATCH:
                    raise RuntimeError("the backlog was not written whole")
                seconds = asyncio.run(_drain(state, host, int(port)))
                rounds.append(readings / seconds)
    return max(rounds), statistics.median(rounds)


def run(*, quick: bool = False) -> list[Figure]:
    """The outbox figures (the drain one needs Mosquitto, and is left out without it)."""
    best, median = outbox_enqueue_per_s(quick)
    figures = [
        Figure(
            "edge.outbox_enqueue_per_s",
            best,
            "readings/s",
            f"Batcher.add of parking readings into the SQLite outbox (WAL, synchronous=FULL),"
            f" batches of {BATCH} encoded, signed and committed with one fsync each; best round",
            goal_min=50_000,
            median=median,
        )
    ]
    binary = find_mosquitto()
    if binary is None:
        print(
            "note: edge.outbox_drain_per_s skipped: no mosquitto binary (Debian package mosquitto)",
            file=sys.stderr,
        )
        return figures
    with (
        tempfile.TemporaryDirectory(prefix="owlgate-bench-mosquitto-") as folder,
        bench_mosquitto(binary, Path(folder)) as mosquitto,
    ):
        best, median = outbox_drain_per_s(quick, mosquitto.url)
    figures.append(
        Figure(
            "edge.outbox_drain_per_s",
            best,
            "readings/s",
            f"a backlog of delayed batches of {BATCH} readings from the outbox to Mosquitto"
            " through the Uplink (QoS 1, deleted after PUBACK), connection up to outbox empty;"
            " best round",
            goal_min=20_000,
            median=median,
        )
    )
    return figures
