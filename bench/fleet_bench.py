"""The fleet figures: readings per second the fleet's MQTT ingest verifies, stores and
acknowledges, through the interface operators run (``owlgate fleet serve``), on the embedded
broker, on Mosquitto, and on Mosquitto with the database on PostgreSQL.

The bench seeds a database (``owlgate fleet seed``: 10 gateways, 1,000 devices), starts
``owlgate fleet serve`` on a copy of it as a separate process, and feeds it from one MQTT
publisher per seeded gateway (QoS 1), each publishing batches of 100 readings of that
gateway's devices, encoded and signed with the gateway's own key before timing starts. A round
runs from the first PUBLISH to the moment the fleet has committed the last batch, seen by
polling the SQLite file read-only (or PostgreSQL over a connection of its own); every reading
published must then be in the database, or the suite fails. Mosquitto is started by the bench,
on a free port with a configuration of its own in a temporary folder; without the binary that
figure is skipped, with a note.

``fleet.ingest_readings_per_s_postgres`` is the Mosquitto figure with ``--db
postgresql://...``: the bench starts a PostgreSQL server of its own
(:class:`~owlgate.hil.processes.PostgresProcess`, durable: fsync and synchronous commit on,
as a production server runs), seeds a database there with ``owlgate fleet seed --db URL``,
and measures the same way. Without the PostgreSQL server programs it is skipped, with a note.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch
from owlgate.codecs.signed import sign
from owlgate.hil.processes import (
    MOSQUITTO_MAX_QUEUED_MESSAGES,
    ChildProcess,
    MosquittoProcess,
    PostgresProcess,
    ProcessFailed,
    children_stopped_at_exit,
    find_mosquitto,
    find_postgres,
)

from .figures import Figure

GATEWAYS = 10
DEVICES = 1000
QUICK_DEVICES = 100
BATCH = 100
GOAL_READINGS_PER_S = 20_000
SEED = 2026
#: Messages a publisher keeps in flight (awaiting the broker's PUBACK) at once.
PUBLISH_WINDOW = 50
STARTUP_TIMEOUT_S = 60.0
MOSQUITTO_STOP_TIMEOUT_S = 30.0
ROUND_TIMEOUT_S = 300.0
POLL_S = 0.01
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Plan:
    """How much work: rounds timed, messages of BATCH readings per round."""

    devices: int
    rounds: int
    messages: int


FULL = Plan(devices=DEVICES, rounds=3, messages=1000)
QUICK = Plan(devices=QUICK_DEVICES, rounds=1, messages=30)


@dataclass(frozen=True, slots=True)
class Seeded:
    #: The seeded database: a SQLite file (copied for each figure) or a PostgreSQL URL.
    db: str
    #: Where the seed put the keys (``gateway-keys/``) and the manifest.
    folder: Path
    keys: dict[str, Ed25519PrivateKey]
    devices: dict[str, list[tuple[str, str]]]  # gateway -> [(dev_eui, profile_id)]

    @property
    def postgres(self) -> bool:
        return self.db.startswith("postgresql://")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "owlgate.codecs.cli", *args]


def _seed(folder: Path, plan: Plan, db: str | None = None) -> Seeded:
    """``owlgate fleet seed`` into ``db`` (default: ``folder/seed.sqlite3``), its keys and
    manifest in ``folder``."""
    db = db or str(folder / "seed.sqlite3")
    command = _cli("fleet", "seed", "--db", db, "--gateways", str(GATEWAYS))
    command += ["--nodes", str(plan.devices), "--seed", str(SEED)]
    command += ["--keys-dir", str(folder / "gateway-keys")]
    command += ["--manifest", str(folder / "emulator-secrets.json")]
    command += ["--kek-file", str(folder / "gateway-keys" / "fleet-kek.json")]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"owlgate fleet seed failed: {done.stderr.strip()}")
    manifest = json.loads((folder / "emulator-secrets.json").read_text())
    keys: dict[str, Ed25519PrivateKey] = {}
    for gateway in manifest["gateways"]:
        pem = (Path(gateway["keys_dir"]) / "identity-ed25519.pem").read_bytes()
        key = load_pem_private_key(pem, None)
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"gateway {gateway['id']}: identity key is not Ed25519")
        keys[gateway["id"]] = key
    gateway_ids = list(keys)
    devices: dict[str, list[tuple[str, str]]] = {gid: [] for gid in gateway_ids}
    # Each device is heard by one gateway, as on a street where the gateways are far apart.
    for index, device in enumerate(manifest["devices"]):
        devices[gateway_ids[index % GATEWAYS]].append((device["dev_eui"], device["profile_id"]))
    return Seeded(db, folder, keys, devices)


def _values(profile_id: str, rng: random.Random) -> dict[str, object]:
    battery = rng.randrange(2900, 3650)
    temperature = rng.randrange(-100, 350) / 10
    if profile_id == "parking-v1":
        return {"occupied": rng.random() < 0.5, "battery_mv": battery, "temperature_c": temperature}
    if profile_id == "waste-bin-v1":
        fill = rng.randrange(0, 101)
        return {
            "tilt_alarm": rng.random() < 0.01,
            "fill_pct": fill,
            "distance_mm": 1200 - 10 * fill,
            "temperature_c": temperature,
            "battery_mv": battery,
        }
    return {
        "temperature_c": temperature,
        "humidity_pct": rng.randrange(20, 95),
        "co2_ppm": rng.randrange(400, 2000),
        "battery_mv": battery,
    }


class Payloads:
    """Signed telemetry messages, made ahead of timing: each gateway's batches take turns
    through its devices, every frame counter fresh, so nothing is merged or refused."""

    def __init__(self, seeded: Seeded) -> None:
        self._seeded = seeded
        self._rng = random.Random(SEED)
        self._seq = dict.fromkeys(seeded.keys, 0)
        self._fcnt: dict[str, int] = {}
        self._next_device = dict.fromkeys(seeded.keys, 0)
        # A week back, one second per reading: a full run's readings (about 300,000 per
        # figure) stay in the past, which the ingest requires (a reading more than a day
        # ahead of the fleet's clock is refused as absurd).
        self._time = int(time.time()) - 7 * 86_400

    def make(self, messages: int) -> list[tuple[str, bytes]]:
        """``messages`` (topic, payload) pairs, the gateways taking turns."""
        gateways = list(self._seeded.keys)
        return [self._one(gateways[index % len(gateways)]) for index in range(messages)]

    def _one(self, gateway: str) -> tuple[str, bytes]:
        devices = self._seeded.devices[gateway]
        readings = []
        for _ in range(BATCH):
            dev_eui, profile_id = devices[self._next_device[gateway] % len(devices)]
            self._next_device[gateway] += 1
            fcnt = self._fcnt.get(dev_eui, 0) + 1
            self._fcnt[dev_eui] = fcnt
            self._time += 1
            readings.append(
                Reading(
                    bytes.fromhex(dev_eui),
                    self._time,
                    _values(profile_id, self._rng),
                    rssi_dbm=self._rng.randrange(-125, -60),
                    snr_db=self._rng.randrange(-80, 40) / 4,
                    fcnt=fcnt,
                    sf=self._rng.randrange(7, 13),
                    freq_hz=868_100_000 + 200_000 * self._rng.randrange(3),
                    gw_time_us=self._rng.randrange(1 << 32),
                )
            )
        self._seq[gateway] += 1
        batch = Batch(bytes.fromhex(gateway), self._seq[gateway], readings[0].time_s, readings)
        payload = sign(encode_batch(batch), self._seeded.keys[gateway])
        return f"owlgate/v1/gw/{gateway}/telemetry", payload


def bench_mosquitto(binary: str, folder: Path) -> MosquittoProcess:
    """The benches' Mosquitto, not started: loopback only, nothing on disk, no verbose log (it
    would cost the broker time per message), and a per-client queue deep enough for a round
    published faster than it is stored (the default, 1000 messages above those in flight,
    would silently drop the rest: docs/fleet.md)."""
    return MosquittoProcess(
        binary,
        folder,
        persistence=False,
        max_queued_messages=MOSQUITTO_MAX_QUEUED_MESSAGES,
        verbose=False,
        start_timeout_s=STARTUP_TIMEOUT_S,
        stop_timeout_s=MOSQUITTO_STOP_TIMEOUT_S,
    )


@contextmanager
def _fleet(seeded: Seeded, folder: Path, broker: str | None) -> Iterator[tuple[str, str]]:
    """``owlgate fleet serve`` on a copy of the seeded SQLite database (on the seeded
    PostgreSQL database itself); yields the database and the broker URL it prints."""
    db = seeded.db
    if not seeded.postgres:
        db = str(folder / "fleet.sqlite3")
        shutil.copyfile(seeded.db, db)
    args = ["fleet", "serve", "--db", db, "--http-port", "0", "--instance", "bench"]
    args += ["--signing-key", str(seeded.folder / "gateway-keys/fleet-signing-ed25519.pem")]
    args += ["--kek-file", str(seeded.folder / "gateway-keys/fleet-kek.json")]
    if broker is not None:
        args += ["--broker", broker]
    with children_stopped_at_exit() as children:
        fleet = ChildProcess("fleet", args, folder / "fleet.log")
        children.append(fleet)
        try:
            url = fleet.expect(r"^MQTT broker: (\S+)", STARTUP_TIMEOUT_S).group(1)
            fleet.expect(r"Uvicorn running on ", STARTUP_TIMEOUT_S)
        except ProcessFailed as err:
            log = (folder / "fleet.log").read_text(errors="replace")
            raise RuntimeError(f"{err.message}; log:\n{log}") from err
        yield db, url


Count = Callable[[str], int]


@contextmanager
def _counter(db: str) -> Iterator[Count]:
    """``count(table)``: the rows of ``table`` in ``db`` now, through a read-only SQLite
    connection or a PostgreSQL connection of the bench's own."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:

            def count_postgres(table: str) -> int:
                row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
                return 0 if row is None else int(row[0])

            yield count_postgres
        return
    lite = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:

        def count_sqlite(table: str) -> int:
            return int(lite.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

        yield count_sqlite
    finally:
        lite.close()


async def _publish(url: str, messages: list[tuple[str, bytes]]) -> float:
    """Publish every message (QoS 1), one client per gateway, each with PUBLISH_WINDOW
    messages in flight; returns the seconds until the last PUBACK from the broker."""
    host, port = url.removeprefix("mqtt://").split(":")
    by_gateway: dict[str, list[tuple[str, bytes]]] = {}
    for topic, payload in messages:
        by_gateway.setdefault(topic, []).append((topic, payload))
    began = time.perf_counter()

    async def one(index: int, batch: list[tuple[str, bytes]]) -> None:
        async with aiomqtt.Client(
            host,
            int(port),
            identifier=f"bench-gw-{index}",
            max_inflight_messages=PUBLISH_WINDOW,
        ) as client:
            client.pending_calls_threshold = PUBLISH_WINDOW + 1
            window = asyncio.Semaphore(PUBLISH_WINDOW)

            async def send(topic: str, payload: bytes) -> None:
                async with window:
                    await client.publish(topic, payload, qos=1, timeout=ROUND_TIMEOUT_S)

            async with asyncio.TaskGroup() as group:
                for topic, payload in batch:
                    group.create_task(send(topic, payload))

    async with asyncio.TaskGroup() as group:
        for index, batch in enumerate(by_gateway.values()):
            group.create_task(one(index, batch))
    return time.perf_counter() - began


async def _round(url: str, db: str, messages: list[tuple[str, bytes]]) -> tuple[float, float]:
    """(seconds until every batch is committed, seconds until every PUBACK from the broker),
    both from the first PUBLISH."""
    with _counter(db) as count:
        target = count("batches") + len(messages)
        began = time.perf_counter()
        publishing = asyncio.create_task(_publish(url, messages))
        deadline = began + ROUND_TIMEOUT_S
        while count("batches") < target:
            if publishing.done() and publishing.exception() is not None:
                await publishing
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"only {count('batches')} of {target} batches stored after "
                    f"{ROUND_TIMEOUT_S:.0f} s"
                )
            await asyncio.sleep(POLL_S)
        stored = time.perf_counter() - began
        published = await publishing
        return stored, published


def _measure(seeded: Seeded, folder: Path, broker: str | None, plan: Plan) -> Figure:
    payloads = Payloads(seeded)
    warm_up = payloads.make(GATEWAYS)
    rounds = [payloads.make(plan.messages) for _ in range(plan.rounds)]
    which = "embedded" if broker is None else "mosquitto"
    name = (
        "fleet.ingest_readings_per_s_postgres"
        if seeded.postgres
        else f"fleet.ingest_readings_per_s.{which}"
    )
    with _fleet(seeded, folder, broker) as (db_path, url):
        # The first batch of each gateway loads its key: not part of the steady state.
        asyncio.run(_round(url, db_path, warm_up))
        rates, publish_rates = [], []
        for messages in rounds:
            stored_s, published_s = asyncio.run(_round(url, db_path, messages))
            readings = len(messages) * BATCH
            rates.append(readings / stored_s)
            publish_rates.append(readings / published_s)
    with _counter(db_path) as count:
        expected = (len(warm_up) + plan.messages * plan.rounds) * BATCH
        stored = count("readings")
    if stored != expected:
        raise RuntimeError(f"{name}: {stored} readings stored of {expected} published")
    best_publish = max(publish_rates)
    if best_publish < 1.5 * max(rates):
        print(
            f"note: {name}: the publishers reached only "
            f"{best_publish:,.0f} readings/s; the figure may be theirs, not the ingest's"
        )
    database = ", PostgreSQL" if seeded.postgres else ""
    return Figure(
        name,
        max(rates),
        "readings/s",
        f"`owlgate fleet serve` ({'embedded amqtt' if broker is None else 'Mosquitto'}"
        f"{database}): "
        f"{GATEWAYS} publishers (QoS 1) of signed batches of {BATCH} readings, "
        f"{plan.messages * BATCH} readings per round, first PUBLISH to last commit, best round",
        goal_min=GOAL_READINGS_PER_S,
        comparisons={"publish": best_publish},
        median=statistics.median(rates),
    )


def run(*, quick: bool = False) -> list[Figure]:
    """The fleet suite's figures."""
    plan = QUICK if quick else FULL
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="owlgate-fleet-bench-") as tmp:
        folder = Path(tmp)
        seeded = _seed(folder, plan)
        (folder / "embedded").mkdir()
        figures.append(_measure(seeded, folder / "embedded", None, plan))
        binary = find_mosquitto()
        if binary is None:
            print(
                "note: fleet.ingest_readings_per_s.mosquitto skipped: no mosquitto binary "
                "(Debian package mosquitto)"
            )
            return figures
        with bench_mosquitto(binary, folder / "mosquitto") as mosquitto:
            figures.append(_measure(seeded, folder / "mosquitto", mosquitto.url, plan))
            figures += _postgres_figures(folder / "postgres", plan, mosquitto.url)
    return figures


def _postgres_figures(folder: Path, plan: Plan, broker: str) -> list[Figure]:
    """``fleet.ingest_readings_per_s_postgres``: the Mosquitto figure on a PostgreSQL server
    the bench starts (durable settings), seeded there."""
    bin_folder = find_postgres()
    if bin_folder is None:
        print(
            "note: fleet.ingest_readings_per_s_postgres skipped: no PostgreSQL server "
            "programs (Debian package postgresql)"
        )
        return []
    folder.mkdir()
    with PostgresProcess(bin_folder, folder, start_timeout_s=STARTUP_TIMEOUT_S) as server:
        import psycopg

        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE owlgate_bench")
        seeded = _seed(folder, plan, server.url("owlgate_bench"))
        return [_measure(seeded, folder, broker, plan)]
