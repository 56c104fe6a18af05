"""``owlgate hil run SCENARIO``: a scenario against real edge agents and a real fleet, with time
acceleration, and a report.

What runs (every part as a user runs it, except the hardware):

- ``owlgate fleet seed`` registers one fleet gateway per scenario gateway and one device per
  scenario sensor, with the sensor's profile (every ``otaa_every``-th device OTAA, the rest
  ABP); ``owlgate fleet serve`` runs the fleet with its embedded broker, or beside a
  Mosquitto this runner starts (``broker="mosquitto"``); once it serves, each fleet gateway
  and device gets its scenario gateway's or sensor's position as its site (``PUT
  /api/v1/gateways/{id}/site``, ``PUT /api/v1/nodes/{dev_eui}/site``, the district's middle
  at :data:`SITE_CENTRE`), so the dashboard's plan draws the layout;
- per gateway an :class:`~owlgate.hil.concentrator.EmulatedConcentrator` on a pty in this
  process, an ``owlgate edge run`` process reading it, and a :class:`Backhaul` relay between
  that agent and the broker (the gateway's uplink, which a fault can take down);
- the district itself: a :class:`~owlgate.hil.district.DistrictSim` in this process decides
  in simulated time when each sensor sends what (real LoRaWAN frames, joins, retransmissions,
  downlinked settings) and which gateway hears it how strongly; each reception is injected
  into that gateway's concentrator, and what the agents ask the concentrators to transmit
  (join accepts, downlinks) goes back to the devices.

**Time.** Simulated time runs ``speed`` times faster than the wall clock from the moment every
agent is ready: with ``speed=288`` a day lasts five minutes. The district steps in windows
of at least ``step_s`` simulated seconds. The agents and the fleet run on the wall clock: their
batching, heartbeats and offline detection take wall seconds (the agents' heartbeat interval
is scaled down with the speed, to no less than 1 s), so a fault shorter than a few wall
seconds may not raise an alert. Latency is measured on the wall clock, from the injection of a
frame into the first concentrator that heard it to the fleet storing the reading.

**Faults** (the scenario's ``[[faults]]``) at their simulated times: ``backhaul_down`` closes
the gateways' relays (the agents buffer in their outboxes, then catch up); ``power_cut``
kills the agent (SIGKILL), unplugs the concentrator and mutes the gateway in the radio
world, then brings all three back; ``noisy_serial`` adds the faults to the concentrator's
serial fault plan for its window; ``broker_restart`` stops and restarts Mosquitto, or the
fleet process with its embedded broker.

**The report** (:mod:`owlgate.hil.report`): what the district sent (the ground truth kept
here) against what the fleet's API stored, per device and per gateway; latency percentiles;
every frame not stored with its cause; the alerts the fleet raised, on the simulated clock;
plots. A frame is *explained* when the radio lost it (below sensitivity, collision, the
demodulators busy, no powered gateway) or when every gateway that heard it lost power within
the agent's batch age of hearing it. Anything else is *unexplained*, and the run fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import httpx

from ..codecs.errors import OwlgateError
from ..fleet.geo import DEFAULT_CENTRE, to_lat_lon
from .concentrator import EmulatedConcentrator
from .demo import edge_config
from .devices import EmulatedDevice
from .district import ACK_TIMEOUT_S, JOIN_BACKOFF_S, DistrictSim, Uplink
from .processes import (
    MODULE,
    ChildProcess,
    MosquittoProcess,
    ProcessFailed,
    find_mosquitto,
    free_tcp_port,
)
from .scenario import (
    BackhaulDown,
    BrokerRestart,
    NoisySerial,
    PowerCut,
    Scenario,
    ScheduledFault,
    load_scenario,
    shipped_scenarios,
)

log = logging.getLogger(__name__)

#: Where a scenario's district lies on the Earth (its middle), for the fleet's sites.
SITE_CENTRE: Final = DEFAULT_CENTRE
#: Sites set at once over HTTP when a run places its gateways and sensors.
SITE_REQUESTS: Final = 8

BrokerKind = Literal["embedded", "mosquitto"]

#: How long an agent may take to say it is ready (radio configured, sessions in), plus as
#: much per gateway: the fleet seals every device session for every gateway that comes online
#: (100 gateways of the Bielefeld scenario: 9,000 sessions each, four minutes in all).
READY_TIMEOUT_S: Final = 120.0
READY_PER_GATEWAY_S: Final = 4.0
#: The wall-clock tick of the run loop.
TICK_S: Final = 0.02
#: Health and progress samples, wall seconds apart.
SAMPLE_EVERY_S: Final = 1.0
#: After the last simulated second: wait this long at most for the fleet to store the rest.
DRAIN_TIMEOUT_S: Final = 90.0
#: ... and consider it done once nothing new was stored for this long with every outbox empty.
DRAIN_QUIET_S: Final = 3.0
#: The agents' heartbeat at speed 1 (the edge default), scaled down with the speed.
HEARTBEAT_S: Final = 60.0
#: The agent's batch age (edge default): a frame heard this long before a power cut may have
#: been in a batch the kill took with it.
BATCH_AGE_S: Final = 1.0
#: Readings fetched per API page.
PAGE_LIMIT: Final = 1000
#: API requests in flight at once while collecting.
FETCH_CONCURRENCY: Final = 8
LOOPBACK: Final = "127.0.0.1"
#: More gateways than this connecting at once overwhelm the embedded broker (amqtt 0.12: its
#: broadcast task ends with "dictionary changed size during iteration").
EMBEDDED_BROKER_GATEWAYS: Final = 20
#: Wall seconds a device waits for a join accept before it tries again: RX2 of a join opens
#: 6 s after the request (JOIN_ACCEPT_DELAY2), plus the agent's and the fleet's time.
JOIN_ACCEPT_WAIT_WALL_S: Final = 8.0
#: Wall seconds within which an ACK to a confirmed uplink can come (RX2 at 2 s, plus slack).
ROUND_TRIP_WALL_S: Final = 3.0


class RunFailed(ProcessFailed):
    """A scenario run could not start or finish (a process failed, the scenario is bad)."""


def resolve_scenario(name_or_path: str) -> Path:
    """A scenario file path, or the name of a shipped one (``bielefeld``)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise RunFailed(f"scenario {name_or_path}: no such file")
        return path
    shipped = {p.stem: p for p in shipped_scenarios()}
    found = shipped.get(name_or_path)
    if found is None:
        raise RunFailed(
            f"scenario {name_or_path!r}: neither a file nor a shipped scenario "
            f"({', '.join(sorted(shipped))})"
        )
    return found


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What to run and how fast; ``duration_s`` None: the scenario's own length."""

    scenario: Path
    workdir: Path
    speed: float = 60.0
    duration_s: float | None = None
    broker: BrokerKind = "embedded"
    seed: int | None = None
    otaa_every: int = 10
    step_s: float = 1.0
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    plots: bool = True

    def __post_init__(self) -> None:
        if not 0.01 <= self.speed <= 100_000:
            raise RunFailed(f"speed must be 0.01..100000, got {self.speed:g}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise RunFailed(f"duration must be positive, got {self.duration_s:g} s")
        if self.otaa_every < 0:
            raise RunFailed(f"otaa_every must be 0 or more, got {self.otaa_every}")


class SimClock:
    """Simulated seconds since the start, ``speed`` times the wall clock's."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.wall0 = time.monotonic()
        self.epoch0 = time.time()

    def now_s(self) -> float:
        return (time.monotonic() - self.wall0) * self.speed

    def sim_of_epoch(self, epoch_s: float) -> float:
        """The simulated time of a wall-clock Unix time (the fleet's timestamps)."""
        return (epoch_s - self.epoch0) * self.speed


@dataclass(slots=True)
class Event:
    """One line of the run's timeline."""

    sim_s: float
    kind: str
    detail: str

    def as_json(self) -> dict[str, object]:
        return {"sim_s": round(self.sim_s, 3), "kind": self.kind, "detail": self.detail}


class Backhaul:
    """A gateway's uplink: a TCP relay from its agent to the broker that can be taken down
    (connections closed, new ones refused) and brought back on the same port."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.target = (host, port)
        self.port = 0
        self.up = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connections = 0

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, LOOPBACK, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.up = True

    async def down(self) -> None:
        self.up = False
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._pipes):
            writer.close()
        self._pipes.clear()

    async def restore(self) -> None:
        if not self.up:
            await self.start()

    async def close(self) -> None:
        await self.down()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accepted(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Coroutine[Any, Any, None]:
        # Called when the connection is made, before its task runs: down() closes the stream
        # even when the task never gets to.
        self._pipes.add(writer)
        return self._accept(reader, writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(asyncio.current_task())
        if not self.up:
            self._drop(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError as err:
            log.info("%s backhaul: broker %s:%d refused (%s)", self.name, *self.target, err)
            self._drop(writer)
            return
        if writer not in self._pipes:
            # Taken down while the broker side was connecting.
            up_writer.close()
            return
        self.connections += 1
        self._pipes.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            self._track(asyncio.create_task(self._pipe(source, sink)))

    def _track(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._pipes.discard(writer)
        writer.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError) as err:
            log.debug("%s backhaul: a connection ended (%s)", self.name, err)
        finally:
            self._pipes.discard(sink)
            sink.close()


@dataclass(slots=True)
class GatewaySlot:
    """One scenario gateway: its fleet id, concentrator, backhaul and agent."""

    name: str
    gateway_id: str
    folder: Path
    concentrator: EmulatedConcentrator
    backhaul: Backhaul
    config: Path
    edge: ChildProcess | None = None
    powered: bool = True
    seen_tx: int = 0
    #: (start, end) simulated seconds of each power cut, for the loss accounting.
    cuts: list[tuple[float, float]] = field(default_factory=list)
    starts: int = 0


@dataclass(slots=True)
class Sent:
    """The ground truth of one data frame (one FCnt of one device)."""

    sensor_id: str
    dev_eui: str
    fcnt: int
    sent_s: float
    attempts: int = 1
    first_wall_s: float | None = None
    #: Gateways it was injected into, with the simulated time of the (first) injection.
    heard: dict[str, float] = field(default_factory=dict)
    #: Why gateways did not hear it (gateway or None, cause), from the radio world.
    lost: list[tuple[str | None, str]] = field(default_factory=list)


@dataclass(slots=True)
class Samples:
    """Wall-clock samples of the fleet during the run, on the simulated clock."""

    sim_s: list[float] = field(default_factory=list)
    online: list[int] = field(default_factory=list)
    offline: list[int] = field(default_factory=list)
    degraded: list[int] = field(default_factory=list)
    outbox: list[int] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)


@dataclass(slots=True)
class RunResult:
    """Everything the report is made from."""

    scenario: Scenario
    settings: RunSettings
    duration_s: float
    #: Wall seconds of the simulated run, and of the drain after it (until the fleet had
    #: stored what the agents held).
    wall_s: float
    drain_s: float
    gateways: dict[str, str]
    sensors: dict[str, str]
    profiles: dict[str, str]
    sent: dict[tuple[str, int], Sent]
    stored: dict[tuple[str, int], dict[str, Any]]
    joins: dict[str, int]
    alerts: list[dict[str, Any]]
    events: list[Event]
    samples: Samples
    counters: Counter[str]
    edge_status: dict[str, dict[str, Any]]
    cuts: dict[str, list[tuple[float, float]]]
    speed: float
    epoch0: float


def _profile_runs(profiles: list[str]) -> str:
    """``["a", "a", "b"]`` -> ``"a=2,b=1"`` (``fleet seed --profiles``)."""
    runs: list[list[Any]] = []
    for profile in profiles:
        if runs and runs[-1][0] == profile:
            runs[-1][1] += 1
        else:
            runs.append([profile, 1])
    return ",".join(f"{name}={count}" for name, count in runs)


def _cli(args: list[str], workdir: Path, what: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", MODULE, *args], capture_output=True, text=True, check=False
    )
    (workdir / f"{what}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RunFailed(f"{what} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _device(entry: dict[str, Any], report_interval_s: float, seed: int) -> EmulatedDevice:
    eui = bytes.fromhex(entry["dev_eui"])
    if entry["activation"] == "abp":
        return EmulatedDevice.abp(
            entry["profile_id"],
            eui,
            dev_addr=int(entry["dev_addr"], 16),
            nwk_s_key=bytes.fromhex(entry["nwk_s_key"]),
            app_s_key=bytes.fromhex(entry["app_s_key"]),
            seed=seed,
            report_interval_s=report_interval_s,
        )
    return EmulatedDevice.otaa(
        entry["profile_id"],
        eui,
        join_eui=int(entry["join_eui"], 16),
        app_key=bytes.fromhex(entry["app_key"]),
        seed=seed,
        report_interval_s=report_interval_s,
    )


class ScenarioRun:
    """One run (see the module text); :meth:`run` does it all and returns the result."""

    def __init__(self, settings: RunSettings, *, say: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.say = say
        self.scenario = load_scenario(settings.scenario)
        self.duration_s = settings.duration_s or self.scenario.district.duration_s
        self.seed = self.scenario.district.seed if settings.seed is None else settings.seed
        self.workdir = settings.workdir
        self.events: list[Event] = []
        self.sent: dict[tuple[str, int], Sent] = {}
        self.joins: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.samples = Samples()
        self.slots: dict[str, GatewaySlot] = {}
        self.clock: SimClock | None = None
        self.fleet: ChildProcess | None = None
        self.mosquitto: MosquittoProcess | None = None
        self.broker_target: tuple[str, int] = (LOOPBACK, 0)
        self._fleet_args: list[str] = []
        self._children: list[ChildProcess] = []
        self._gateways_seen: list[dict[str, Any]] = []

    # --- setting up ---------------------------------------------------------------------------

    def _seed(self) -> dict[str, Any]:
        expanded = self.expanded
        profiles = [sensor.profile for sensor in expanded.sensors]
        db = self.workdir / "fleet.db"
        _cli(
            ["fleet", "seed", "--db", str(db), "--gateways", str(len(expanded.gateways)),
             "--profiles", _profile_runs(profiles), "--otaa-every", str(self.settings.otaa_every),
             "--seed", str(self.seed), "--no-sites"],
            self.workdir, "seed",
        )  # fmt: skip
        token = self.workdir / "operator-token"
        _cli(
            ["fleet", "token", "create", "--db", str(db), "--role", "operator",
             "--name", "hil run", "--out", str(token)],
            self.workdir, "token",
        )  # fmt: skip
        self.token = token.read_text().strip()
        # Sites are a technician's to set: the gateways' come from the scenario's positions.
        technician = self.workdir / "technician-token"
        _cli(
            ["fleet", "token", "create", "--db", str(db), "--role", "technician",
             "--name", "hil run sites", "--out", str(technician)],
            self.workdir, "token-technician",
        )  # fmt: skip
        self.technician_token = technician.read_text().strip()
        manifest: dict[str, Any] = json.loads((self.workdir / "emulator-secrets.json").read_text())
        return manifest

    async def _place(self, manifest: dict[str, Any]) -> None:
        """Give every fleet gateway and device the site of its scenario gateway or sensor
        (``PUT /api/v1/gateways/{id}/site``, ``PUT /api/v1/nodes/{dev_eui}/site``), for the
        dashboard's plan: the district's middle at :data:`SITE_CENTRE`, x east and y north,
        through the fleet's one projection (:func:`owlgate.fleet.geo.to_lat_lon`)."""
        district = self.scenario.district
        sites: list[tuple[str, str, float, float]] = [
            (f"/api/v1/gateways/{entry['id']}/site", placed.gateway.gateway_id,
             placed.gateway.x_m, placed.gateway.y_m)
            for placed, entry in zip(self.expanded.gateways, manifest["gateways"], strict=True)
        ]  # fmt: skip
        sites += [
            (f"/api/v1/nodes/{entry['dev_eui']}/site", placed.device.device_id,
             placed.device.x_m, placed.device.y_m)
            for placed, entry in zip(self.expanded.sensors, manifest["devices"], strict=True)
        ]  # fmt: skip
        headers = {"Authorization": f"Bearer {self.technician_token}"}
        limits = httpx.Limits(max_connections=SITE_REQUESTS)
        async with httpx.AsyncClient(
            base_url=self.api, headers=headers, timeout=30, limits=limits
        ) as http:

            async def place(path: str, label: str, x_m: float, y_m: float) -> None:
                where = to_lat_lon(
                    SITE_CENTRE, x_m - district.width_m / 2, y_m - district.height_m / 2
                )
                body = {"zone": district.name, "lat": where.lat, "lon": where.lon, "label": label}
                answer = await http.put(path, json=body)
                if answer.status_code != 200:
                    raise RunFailed(
                        f"the site of {label} was refused: {answer.status_code} {answer.text}"
                    )

            for first in range(0, len(sites), SITE_REQUESTS):
                await asyncio.gather(
                    *(place(*site) for site in sites[first : first + SITE_REQUESTS])
                )

    def _start_fleet(self) -> None:
        fleet = ChildProcess("fleet", self._fleet_args, self.workdir / "fleet.log", append=True)
        self._children.append(fleet)
        self.fleet = fleet
        if self.mosquitto is None:
            url = fleet.expect(r"MQTT broker: mqtt://(\S+)").group(1)
            host, port = url.rsplit(":", 1)
            self.broker_target = (host, int(port))
        fleet.expect(r"Uvicorn running on (http://\S+)")

    async def _setup(self, manifest: dict[str, Any]) -> None:
        db = self.workdir / "fleet.db"
        self.http_port = free_tcp_port()
        self.api = f"http://{LOOPBACK}:{self.http_port}"
        alerts = self.workdir / "alerts.toml"
        alerts.write_text(alert_config(self.settings.speed))
        args = ["fleet", "serve", "--db", str(db), "--http-port", str(self.http_port),
                "--signing-key", manifest["fleet_signing_key"],
                "--alerts-config", str(alerts)]  # fmt: skip
        if self.settings.broker == "mosquitto":
            binary = find_mosquitto()
            if binary is None:
                raise RunFailed("--broker mosquitto: no mosquitto binary on PATH")
            folder = self.workdir / "mosquitto"
            folder.mkdir(exist_ok=True)
            # Persistent, as a city runs it: a restart keeps the sessions and their queues.
            self.mosquitto = MosquittoProcess(binary, folder, persistence=True)
            self.mosquitto.start()
            self.broker_target = (LOOPBACK, self.mosquitto.port)
            args += ["--broker", self.mosquitto.url]
        self._fleet_args = args
        if self.mosquitto is None and len(self.expanded.gateways) > EMBEDDED_BROKER_GATEWAYS:
            self.say(
                f"note: {len(self.expanded.gateways)} gateways on the embedded broker; above "
                f"{EMBEDDED_BROKER_GATEWAYS} use --broker mosquitto (amqtt 0.12 loses its "
                "message broadcast when a hundred clients connect at once)"
            )
        await asyncio.to_thread(self._start_fleet)
        heartbeat_s = max(1, round(HEARTBEAT_S / self.settings.speed))
        for index, (placed, entry) in enumerate(
            zip(self.expanded.gateways, manifest["gateways"], strict=True)
        ):
            name = placed.gateway.gateway_id
            folder = self.workdir / "gateways" / name
            folder.mkdir(parents=True, exist_ok=True)
            concentrator = EmulatedConcentrator(folder, seed=self.seed * 1000 + index)
            await concentrator.start()
            backhaul = Backhaul(name, *self.broker_target)
            await backhaul.start()
            config = folder / "edge.toml"
            config.write_text(
                edge_config(
                    entry,
                    state_dir=folder / "state",
                    port=str(concentrator.path),
                    mqtt_url=backhaul.url,
                )
                + f"\n[health]\ninterval_s = {heartbeat_s}\n"
            )
            slot = GatewaySlot(name, entry["id"], folder, concentrator, backhaul, config)
            self.slots[name] = slot
            self._start_edge(slot)
        self.say(f"{len(self.slots)} gateways starting; fleet API {self.api}")
        ready_timeout_s = READY_TIMEOUT_S + READY_PER_GATEWAY_S * len(self.slots)
        await asyncio.gather(
            *(
                asyncio.to_thread(slot.edge.expect, r"ready: ", ready_timeout_s)
                for slot in self.slots.values()
                if slot.edge is not None
            )
        )

    def _start_edge(self, slot: GatewaySlot) -> None:
        slot.starts += 1
        edge = ChildProcess(
            f"edge {slot.name}",
            ["edge", "run", "--config", str(slot.config)],
            slot.folder / "edge.log",
            append=slot.starts > 1,
        )
        self._children.append(edge)
        slot.edge = edge

    # --- the run ------------------------------------------------------------------------------

    def _note(self, kind: str, detail: str) -> None:
        assert self.clock is not None
        event = Event(min(self.clock.now_s(), self.duration_s), kind, detail)
        self.events.append(event)
        self.say(f"{_clock(event.sim_s)} {kind}: {detail}")

    def _fault_actions(self) -> list[tuple[float, str, ScheduledFault]]:
        actions: list[tuple[float, str, ScheduledFault]] = []
        for fault in self.scenario.faults:
            if fault.at_s >= self.duration_s:
                continue
            actions.append((fault.at_s, "begin", fault))
            actions.append((min(fault.at_s + fault.duration_s, self.duration_s), "end", fault))
        actions.sort(key=lambda action: (action[0], action[1] == "begin"))
        return actions

    async def _apply(self, phase: str, fault: ScheduledFault) -> None:
        if isinstance(fault, BackhaulDown):
            for name in fault.gateways:
                backhaul = self.slots[name].backhaul
                await (backhaul.down() if phase == "begin" else backhaul.restore())
            self._note(
                f"backhaul_{'down' if phase == 'begin' else 'up'}", ", ".join(fault.gateways)
            )
        elif isinstance(fault, PowerCut):
            slot = self.slots[fault.gateway]
            if phase == "begin":
                await self._power_off(slot)
            else:
                await self._power_on(slot)
        elif isinstance(fault, NoisySerial):
            slot = self.slots[fault.gateway]
            faults = fault.serial_faults()
            for item in faults:
                if phase == "begin":
                    slot.concentrator.plan.add(item)
                else:
                    slot.concentrator.plan.remove(item)
            kinds = ", ".join(fault.kinds)
            self._note(
                f"noisy_serial_{phase}", f"{fault.gateway} ({kinds}, p={fault.probability:g})"
            )
        elif isinstance(fault, BrokerRestart):
            if phase == "begin":
                await self._broker_stop()
            else:
                await self._broker_start()

    async def _power_off(self, slot: GatewaySlot) -> None:
        assert self.clock is not None
        slot.powered = False
        slot.cuts.append((self.clock.now_s(), self.duration_s))
        self.sim.set_powered(slot.name, False)
        if slot.edge is not None and slot.edge.proc.poll() is None:
            os.kill(slot.edge.proc.pid, signal.SIGKILL)
        slot.concentrator.unplug()
        self._note("power_off", slot.name)

    async def _power_on(self, slot: GatewaySlot) -> None:
        assert self.clock is not None
        if slot.cuts:
            start, _ = slot.cuts[-1]
            slot.cuts[-1] = (start, self.clock.now_s())
        slot.powered = True
        slot.concentrator.replug()
        slot.seen_tx = len(slot.concentrator.tx_requests)
        self.sim.set_powered(slot.name, True)
        if slot.edge is not None:
            await asyncio.to_thread(slot.edge.stop)
        self._start_edge(slot)
        self._note("power_on", slot.name)

    async def _broker_stop(self) -> None:
        if self.mosquitto is not None:
            await asyncio.to_thread(self.mosquitto.stop)
            self._note("broker_stop", "mosquitto")
        elif self.fleet is not None:
            await asyncio.to_thread(self.fleet.stop)
            self._note("broker_stop", "the fleet process with its embedded broker")

    async def _broker_start(self) -> None:
        if self.mosquitto is not None:
            await asyncio.to_thread(self.mosquitto.start)
        else:
            await asyncio.to_thread(self._start_fleet)
            for slot in self.slots.values():
                slot.backhaul.target = self.broker_target
        self._note("broker_start", f"{self.broker_target[0]}:{self.broker_target[1]}")

    def _inject(self, uplink: Uplink) -> None:
        assert self.clock is not None
        record: Sent | None = None
        if uplink.kind == "join":
            self.joins["sent"] += 1
        else:
            assert uplink.fcnt is not None
            key = (uplink.dev_eui, uplink.fcnt)
            record = self.sent.get(key)
            if record is None:
                record = self.sent[key] = Sent(
                    uplink.sensor_id, uplink.dev_eui, uplink.fcnt, uplink.sent_s
                )
            else:
                record.attempts += 1
            record.lost.extend(uplink.lost)
        self.counters["transmissions"] += 1
        for heard in uplink.heard:
            slot = self.slots[heard.gateway_id]
            if not slot.powered:
                self.counters["heard_by_unpowered"] += 1
                continue
            if slot.concentrator.radio_config is None:
                # Powered but not yet configured by its (restarting) agent: a concentrator
                # receives nothing before its host's RADIO_CONFIG.
                self.counters["heard_while_starting"] += 1
                if record is not None:
                    record.lost.append((heard.gateway_id, "gateway_starting"))
                continue
            frame = slot.concentrator.inject(
                uplink.phy,
                frequency_hz=uplink.frequency_hz,
                sf=uplink.sf,
                rssi_dbm=heard.rssi_dbm,
                snr_db=heard.snr_db,
            )
            self.sim.heard_at(uplink, heard.gateway_id, frame.timestamp_us)
            self.counters["injected"] += 1
            if record is not None:
                if record.first_wall_s is None:
                    record.first_wall_s = time.time()
                record.heard.setdefault(heard.gateway_id, uplink.sent_s)

    def _downlinks(self) -> None:
        for slot in self.slots.values():
            requests = slot.concentrator.tx_requests
            for request in requests[slot.seen_tx :]:
                taken = self.sim.downlink(slot.name, request)
                self.counters["tx_requests"] += 1
                if taken is not None:
                    self.counters["downlinks_taken"] += 1
            slot.seen_tx = len(requests)

    async def _sample(self, http: httpx.AsyncClient) -> None:
        assert self.clock is not None
        try:
            gateways = await _all_pages(http, "/api/v1/gateways")
            stats = (await http.get("/api/v1/stats")).raise_for_status().json()
        except (httpx.HTTPError, ValueError) as err:
            self.counters["samples_failed"] += 1
            log.info("a fleet sample failed: %s", err)
            return
        self._gateways_seen = gateways
        states = Counter(g["health"]["state"] for g in gateways)
        self.samples.sim_s.append(min(self.clock.now_s(), self.duration_s))
        self.samples.online.append(states["online"])
        self.samples.offline.append(states["offline"] + states["never_seen"])
        self.samples.degraded.append(states["degraded"])
        self.samples.outbox.append(sum(g["health"]["outbox_depth"] or 0 for g in gateways))
        self.samples.stored.append(_stored_count(stats))

    async def _loop(self, http: httpx.AsyncClient) -> None:
        self.clock = clock = SimClock(self.settings.speed)
        actions = self._fault_actions()
        stepped = 0.0
        next_sample = 0.0
        last_progress = time.monotonic()
        while True:
            now = min(clock.now_s(), self.duration_s)
            while actions and actions[0][0] <= now:
                _, phase, fault = actions.pop(0)
                await self._apply(phase, fault)
            if now - stepped >= self.settings.step_s or now >= self.duration_s:
                for uplink in self.sim.step(now):
                    self._inject(uplink)
                stepped = now
            self._downlinks()
            wall = time.monotonic()
            if wall >= next_sample:
                next_sample = wall + SAMPLE_EVERY_S
                await self._sample(http)
            if wall - last_progress >= 10.0:
                last_progress = wall
                self.say(
                    f"{_clock(now)} {self.counters['transmissions']} transmissions, "
                    f"{len(self.sent)} frames, "
                    f"{self.samples.stored[-1] if self.samples.stored else 0} stored"
                )
            if now >= self.duration_s:
                break
            await asyncio.sleep(TICK_S)
        for _, phase, fault in actions:
            await self._apply(phase, fault)

    async def _drain(self, http: httpx.AsyncClient) -> None:
        """Wait until the fleet has stored what the agents hold, or the drain timeout: every
        gateway has sent a heartbeat since the end (an agent that was cut off may still be
        reconnecting) saying its outbox is empty, and nothing new was stored for a while."""
        started = time.time()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        last = -1
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            self._downlinks()
            await self._sample(http)
            stored = self.samples.stored[-1] if self.samples.stored else 0
            caught_up = bool(self._gateways_seen) and all(
                g["last_seen"] is not None
                and _epoch(g["last_seen"]) >= started
                and not g["health"]["outbox_depth"]
                for g in self._gateways_seen
            )
            if stored != last:
                last = stored
                quiet_since = time.monotonic()
            elif caught_up and time.monotonic() - quiet_since >= DRAIN_QUIET_S:
                return
            await asyncio.sleep(0.5)
        self.counters["drain_timed_out"] += 1
        self.say(f"the drain timed out after {self.settings.drain_timeout_s:g} s")

    async def _collect(
        self, http: httpx.AsyncClient, euis: list[str]
    ) -> dict[tuple[str, int], dict[str, Any]]:
        window = asyncio.Semaphore(FETCH_CONCURRENCY)
        stored: dict[tuple[str, int], dict[str, Any]] = {}

        async def one(eui: str) -> None:
            async with window:
                items = await _all_pages(http, f"/api/v1/nodes/{eui}/readings")
            for item in items:
                if item["fcnt"] is not None:
                    stored.setdefault((eui, item["fcnt"]), item)

        await asyncio.gather(*(one(eui) for eui in euis))
        return stored

    async def _stop_all(self) -> dict[str, dict[str, Any]]:
        edges = [slot.edge for slot in self.slots.values() if slot.edge is not None]
        await _stop_together(edges)
        statuses: dict[str, dict[str, Any]] = {}
        for slot in self.slots.values():
            status = slot.folder / "state" / "status.json"
            with contextlib.suppress(OSError, ValueError):
                statuses[slot.name] = json.loads(status.read_text())
        return statuses

    async def run(self) -> RunResult:
        """Set up, run the district, drain, collect and stop; every process is stopped on the
        way out, whatever happens."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if (self.workdir / "fleet.db").exists():
            raise RunFailed(
                f"--workdir {self.workdir} holds an earlier run (fleet.db): give a new folder"
            )
        self.expanded = self.scenario.expand(self.seed)
        manifest = self._seed()
        sensors = {
            placed.device.device_id: entry
            for placed, entry in zip(self.expanded.sensors, manifest["devices"], strict=True)
        }
        devices = {
            placed.device.device_id: _device(
                sensors[placed.device.device_id], placed.report_interval_s, self.seed + n
            )
            for n, placed in enumerate(self.expanded.sensors)
        }
        speed = self.settings.speed
        self.sim = DistrictSim(
            self.scenario,
            devices,
            expanded=self.expanded,
            seed=self.seed,
            # A join accept or an ACK takes a round trip through an agent and the fleet in wall
            # time, and comes in an RX window seconds (wall) later: the device must not give up
            # on it in the simulated meanwhile.
            ack_timeout_s=max(ACK_TIMEOUT_S, ROUND_TRIP_WALL_S * speed),
            join_backoff_s=tuple(
                max(wait, JOIN_ACCEPT_WAIT_WALL_S * speed) for wait in JOIN_BACKOFF_S
            ),
        )
        started = time.monotonic()
        try:
            await self._setup(manifest)
            await self._place(manifest)
            self.say(
                f"every agent ready; {len(devices)} sensors, {_clock(self.duration_s)} of "
                f"simulated time at {self.settings.speed:g}x"
            )
            headers = {"Authorization": f"Bearer {self.token}"}
            async with httpx.AsyncClient(base_url=self.api, headers=headers, timeout=30) as http:
                run_started = time.monotonic()
                await self._loop(http)
                run_wall = time.monotonic() - run_started
                self.say(f"simulated {_clock(self.duration_s)} in {run_wall:.1f} s; draining")
                drain_started = time.monotonic()
                await self._drain(http)
                drain_s = time.monotonic() - drain_started
                stored = await self._collect(http, [entry["dev_eui"] for entry in sensors.values()])
                alerts = await _all_pages(http, "/api/v1/alerts")
            statuses = await self._stop_all()
        finally:
            await self._teardown()
        assert self.clock is not None
        self.counters.update({f"sim_{k}": v for k, v in self.sim.counters.items()})
        return RunResult(
            scenario=self.scenario,
            settings=self.settings,
            duration_s=self.duration_s,
            wall_s=run_wall,
            drain_s=drain_s,
            gateways={name: slot.gateway_id for name, slot in self.slots.items()},
            sensors={sid: entry["dev_eui"] for sid, entry in sensors.items()},
            profiles={sid: entry["profile_id"] for sid, entry in sensors.items()},
            sent=self.sent,
            stored=stored,
            joins=dict(self.joins) | {"devices_joined": self.sim.counters.get("joined", 0)},
            alerts=alerts,
            events=self.events,
            samples=self.samples,
            counters=self.counters + Counter({"setup_wall_s": round(run_started - started)}),
            edge_status=statuses,
            cuts={name: slot.cuts for name, slot in self.slots.items()},
            speed=self.settings.speed,
            epoch0=self.clock.epoch0,
        )

    async def _teardown(self) -> None:
        for slot in self.slots.values():
            await slot.backhaul.close()
            await slot.concentrator.close()
        # The agents first (they flush to the broker), then the fleet.
        fleets = [child for child in self._children if child.name == "fleet"]
        await _stop_together([c for c in self._children if c.name != "fleet"])
        await _stop_together(fleets)
        if self.mosquitto is not None:
            await asyncio.to_thread(self.mosquitto.stop)


#: The fleet's alert timing at speed 1 (docs/fleet-alerts.md): how often rules are evaluated,
#: and the rules whose thresholds or waits are wall-clock seconds.
ALERT_EVALUATION_S: Final = 60.0
ALERT_SECONDS: Final = {
    "outbox_backlog": {"threshold": 600.0, "clear": 120.0, "for_s": 120.0},
    "cpu_temperature": {"for_s": 300.0},
    "cpu_throttled": {"for_s": 600.0},
    "radio_crc_errors": {"for_s": 900.0},
}


def alert_config(speed: float) -> str:
    """The fleet's alert rules with their seconds divided by ``speed``, so that an alert
    opens after the same *simulated* time as it would in a city (``--alerts-config``).
    Rules counted in heartbeat or reporting intervals follow the intervals themselves."""
    lines = [f"interval_s = {max(0.2, ALERT_EVALUATION_S / speed):.3f}", ""]
    for rule, fields in ALERT_SECONDS.items():
        lines.append(f"[rules.{rule}]")
        lines += [f"{name} = {value / speed:.3f}" for name, value in fields.items()]
        lines.append("")
    return "\n".join(lines)


async def _stop_together(children: list[ChildProcess]) -> None:
    """SIGTERM to every child at once, then wait for each (a hundred agents one after the
    other would take minutes)."""
    for child in children:
        if child.proc.poll() is None:
            with contextlib.suppress(OSError):
                child.proc.send_signal(signal.SIGTERM)
    for child in children:
        with contextlib.suppress(ProcessFailed, OSError):
            await asyncio.to_thread(child.stop)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _stored_count(stats: dict[str, Any]) -> int:
    ingest = stats.get("ingest")
    if not isinstance(ingest, dict):
        return 0
    return int(ingest.get("readings_stored", 0))


async def _all_pages(http: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": PAGE_LIMIT}
        if after is not None:
            params["after"] = after
        body = (await http.get(path, params=params)).raise_for_status().json()
        items.extend(body["items"])
        after = body.get("next")
        if not after:
            return items


def _clock(sim_s: float) -> str:
    """Simulated seconds as ``d+hh:mm:ss``."""
    days, rest = divmod(int(sim_s), 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days}+{hours:02d}:{minutes:02d}:{seconds:02d}"


class RunStopped(RunFailed):
    """SIGTERM stopped the run; every process it started was stopped first."""


async def run_scenario(settings: RunSettings, *, say: Callable[[str], None] = print) -> RunResult:
    """Run ``settings.scenario`` (see the module text). SIGTERM (and Ctrl-C) stop it cleanly:
    the agents, the fleet and the broker are stopped before it returns."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await ScenarioRun(settings, say=say).run()
    except asyncio.CancelledError:
        if terminated:
            raise RunStopped("stopped by SIGTERM; every process of the run was stopped") from None
        raise
    except OwlgateError:
        raise
    except OSError as err:
        raise RunFailed(f"the run failed: {err}") from err
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
