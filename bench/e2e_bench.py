"""The end-to-end figures: the whole system as it runs on a gateway and a fleet host.

One run, through the interfaces the parts have in the field: ``owlgate fleet seed``, then
``owlgate fleet serve`` (its embedded broker, SQLite) and ``owlgate edge run`` as processes,
with the default batching; the emulated concentrator runs in this process on a pty and is fed
real LoRaWAN uplinks of the seeded ABP devices at a fixed rate. Every uplink's injection time
is noted; a reader thread polls the fleet's database (read-only, WAL) and notes when each
reading's row appears. Meanwhile the agent's resident memory and CPU time are sampled from
``/proc``.

- ``e2e.latency_ms_p99``: radio frame to row in the database, 99th percentile, at
  :data:`RATE_PER_S` frames/s (goal: at most 250 ms);
- ``edge.rss_mb``: the agent's peak resident memory (``VmHWM``) over the run, with every
  device session loaded (goal: at most 60 MB);
- ``edge.cpu_pct``: the agent's CPU time over the load, as a share of one core.

Every uplink must reach the database, or the suite fails rather than report a latency of the
ones that did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from owlgate.hil.concentrator import EmulatedConcentrator
from owlgate.hil.demo import edge_config
from owlgate.hil.devices import EmulatedDevice
from owlgate.hil.gateway_emulator import build_devices
from owlgate.hil.processes import MODULE, ChildProcess, children_stopped_at_exit

from .figures import Figure

RATE_PER_S: Final = 100
SEED: Final = 4711
_POLL_S: Final = 0.002
_RSS_SAMPLE_S: Final = 0.25
_DRAIN_TIMEOUT_S: Final = 30.0
_READY_TIMEOUT_S: Final = 60.0
#: /proc reports kB of 1024 bytes; the goal is in MB of 10**6 bytes.
_BYTES_PER_KB: Final = 1024


@dataclass(frozen=True, slots=True)
class Plan:
    """How much load: ``devices`` ABP devices taking turns, ``seconds`` of it."""

    devices: int
    seconds: float


FULL: Final = Plan(devices=1000, seconds=30.0)
QUICK: Final = Plan(devices=40, seconds=3.0)


@dataclass(slots=True)
class Sightings:
    """When each reading, by (DevEUI hex, FCnt), appeared in the fleet's database."""

    seen_at: dict[tuple[str, int], float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _watch_database(path: Path, sightings: Sightings, stop: threading.Event) -> None:
    """Poll the readings table for new rows (by rowid) every ``_POLL_S`` until ``stop``."""
    last_id = 0
    connection: sqlite3.Connection | None = None
    try:
        while not stop.is_set():
            if connection is None:
                try:
                    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                except sqlite3.Error as err:
                    sightings.errors.append(str(err))
                    time.sleep(_POLL_S)
                    continue
            rows = connection.execute(
                "SELECT id, dev_eui, fcnt FROM readings WHERE id > ? ORDER BY id", [last_id]
            ).fetchall()
            now = time.time()
            for row_id, dev_eui, fcnt in rows:
                sightings.seen_at.setdefault((dev_eui, fcnt), now)
                last_id = row_id
            time.sleep(_POLL_S)
    finally:
        if connection is not None:
            connection.close()


def _proc_status_kb(pid: int, field_name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_seconds(pid: int) -> float | None:
    # Fields 14 and 15 of /proc/<pid>/stat are utime and stime in clock ticks (proc(5)); the
    # command name (field 2) may hold spaces, so count from the closing parenthesis.
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class Run:
    latencies_ms: list[float]
    peak_rss_kb: int
    cpu_pct: float
    frames: int


async def _load(
    concentrator: EmulatedConcentrator, devices: list[EmulatedDevice], plan: Plan
) -> dict[tuple[str, int], float]:
    """Inject uplinks at RATE_PER_S for ``plan.seconds``; returns their injection times."""
    sent: dict[tuple[str, int], float] = {}
    count = int(plan.seconds * RATE_PER_S)
    began = time.monotonic()
    for index in range(count):
        due = began + index / RATE_PER_S
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        device = devices[index % len(devices)]
        phy, _ = device.uplink(time.time())
        frame = device.rx_frame(phy, timestamp_us=concentrator.counter_us())
        sent[(device.dev_eui.hex(), device.f_cnt - 1)] = time.time()
        concentrator.inject(phy, rssi_dbm=frame.rssi_dbm, snr_db=frame.snr_db)
    return sent


def _seed(folder: Path, plan: Plan) -> None:
    # Half the seeded devices are ABP: those are the ones that report at once.
    seeded = subprocess.run(
        [sys.executable, "-m", MODULE, "fleet", "seed", "--db", str(folder / "fleet.db"),
         "--gateways", "1", "--nodes", str(plan.devices * 2), "--seed", str(SEED)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if seeded.returncode != 0:
        raise RuntimeError(f"fleet seed failed: {seeded.stderr.strip()}")


async def _measure(folder: Path, plan: Plan) -> Run:
    db = folder / "fleet.db"
    manifest = json.loads((folder / "emulator-secrets.json").read_text())
    gateway = manifest["gateways"][0]
    abp = [entry["dev_eui"] for entry in manifest["devices"] if entry["activation"] == "abp"]
    devices = build_devices(manifest, abp, interval_s=1.0, seed=SEED)
    sightings = Sightings()
    stop_watching = threading.Event()
    with children_stopped_at_exit() as children:
        fleet = ChildProcess(
            "fleet",
            ["fleet", "serve", "--db", str(db), "--http-port", "0",
             "--signing-key", manifest["fleet_signing_key"]],
            folder / "fleet.log",
        )  # fmt: skip
        children.append(fleet)
        mqtt_url = (await asyncio.to_thread(fleet.expect, r"MQTT broker: (mqtt://\S+)")).group(1)
        await asyncio.to_thread(fleet.expect, r"Uvicorn running on")
        async with EmulatedConcentrator(folder / "dev", seed=SEED) as concentrator:
            config = folder / "edge.toml"
            config.write_text(
                edge_config(
                    gateway, state_dir=folder / "state", port=str(concentrator.path),
                    mqtt_url=mqtt_url,
                )
            )  # fmt: skip
            edge = ChildProcess(
                "edge", ["edge", "run", "--config", str(config)], folder / "edge.log"
            )
            children.append(edge)
            await asyncio.to_thread(edge.expect, r"ready: ", _READY_TIMEOUT_S)
            pid = edge.proc.pid
            watcher = threading.Thread(
                target=_watch_database, args=(db, sightings, stop_watching), daemon=True
            )
            watcher.start()
            try:
                peak_kb = 0

                async def sample_rss() -> None:
                    nonlocal peak_kb
                    while True:
                        peak_kb = max(peak_kb, _proc_status_kb(pid, "VmRSS") or 0)
                        await asyncio.sleep(_RSS_SAMPLE_S)

                sampler = asyncio.create_task(sample_rss())
                cpu_before, wall_before = _cpu_seconds(pid), time.monotonic()
                try:
                    sent = await _load(concentrator, devices, plan)
                    cpu_after, wall_after = _cpu_seconds(pid), time.monotonic()
                    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
                    while not sent.keys() <= sightings.seen_at.keys():
                        if time.monotonic() > deadline:
                            missing = len(sent.keys() - sightings.seen_at.keys())
                            raise RuntimeError(
                                f"{missing} of {len(sent)} uplinks never reached the database "
                                f"(logs in {folder})"
                            )
                        await asyncio.sleep(0.05)
                    peak_kb = max(peak_kb, _proc_status_kb(pid, "VmHWM") or 0)
                finally:
                    sampler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
            finally:
                stop_watching.set()
                await asyncio.to_thread(watcher.join)
    if cpu_before is None or cpu_after is None:
        raise RuntimeError("the agent's CPU time could not be read from /proc")
    latencies = [(sightings.seen_at[key] - at) * 1000 for key, at in sent.items()]
    cpu_pct = (cpu_after - cpu_before) / (wall_after - wall_before) * 100
    return Run(latencies, peak_kb, cpu_pct, len(sent))


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run(*, quick: bool = False) -> list[Figure]:
    """The end-to-end suite's figures."""
    plan = QUICK if quick else FULL
    # Kept when the run fails: the logs of the fleet and the agent are in it.
    folder = Path(tempfile.mkdtemp(prefix="owlgate-bench-e2e-"))
    _seed(folder, plan)
    result = asyncio.run(_measure(folder, plan))
    shutil.rmtree(folder)
    latencies = result.latencies_ms
    setup = (
        f"{RATE_PER_S} frames/s from {plan.devices} ABP devices for {plan.seconds:g} s "
        f"({result.frames} uplinks): emulated concentrator on a pty -> owlgate edge run "
        "(default batching) -> embedded broker -> owlgate fleet serve -> SQLite"
    )
    return [
        Figure(
            "e2e.latency_ms_p99",
            _percentile(latencies, 0.99),
            "ms",
            f"radio frame injected to its row seen in the fleet database, 99th percentile; {setup}",
            goal_max=250,
            median=statistics.median(latencies),
            comparisons={"p50": _percentile(latencies, 0.5), "max": max(latencies)},
        ),
        Figure(
            "edge.rss_mb",
            result.peak_rss_kb * _BYTES_PER_KB / 1e6,
            "MB",
            f"owlgate edge run: peak resident memory (VmHWM), {plan.devices} device sessions "
            f"loaded, under load; {setup}",
            goal_max=60,
        ),
        Figure(
            "edge.cpu_pct",
            result.cpu_pct,
            "% of a core",
            f"owlgate edge run: CPU time (user + system) over the load; {setup}",
        ),
    ]
