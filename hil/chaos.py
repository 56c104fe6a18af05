"""Chaos runs: the whole gateway path under SIGKILL, broker outages and serial unplugs, and an
account of every frame a device sent.

A run (:func:`run_chaos`) starts what a user starts: ``owlgate fleet seed`` and ``owlgate fleet
serve`` on a Mosquitto of its own (with persistence, so what it queued survives a restart), an
:class:`~owlgate.hil.concentrator.EmulatedConcentrator` on a pty and ``owlgate edge run`` as a
process. Emulated ABP devices from the seeded manifest send uplinks at a steady rate while three
disruptors, each drawing its moments and durations from one seeded :class:`random.Random`,
hit the system:

* the agent gets SIGKILL and is started again;
* the broker is stopped (SIGTERM: Mosquitto writes its persistence file) and started again
  on the same port;
* the concentrator's USB cable is pulled and plugged back in.

Every disruption and every recovery seen (a new ``RADIO_CONFIG`` at the concentrator, an
uplink connection in the agent's log) goes on a :class:`Timeline`. At the end the fleet's
database (read-only, as an operator reads it) and the agent's ``status.json`` say what arrived
and what was evicted, and :func:`account` files every injected frame under exactly one of:

``delivered``
    stored by the fleet; stored more than once is a failure (``duplicates``);
``not_acknowledged``
    missing, but sent when the agent could not have taken it: from ``held_s`` before a kill
    (the batch held in memory, sealed every ``max_age_s``, and frames still in the serial
    pipeline) or ``in_flight_s`` before an unplug (bytes on the line), until the concentrator
    was configured again by a running agent;
``evicted``
    missing, sent around a broker outage while the agent's outbox counted evictions (at most
    ``max_readings`` readings per evicted batch, and no more missing batches than evictions);
``lost``
    anything else: the run fails, naming each frame and showing the timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..codecs.concentrator import RadioConfig
from .concentrator import EmulatedConcentrator
from .devices import EmulatedDevice
from .processes import (
    MODULE,
    ChildProcess,
    MosquittoFailed,
    MosquittoProcess,
    ProcessFailed,
    find_mosquitto,
)

__all__ = [
    "Accounting",
    "ChaosEvent",
    "ChaosFailed",
    "ChaosReport",
    "ChaosSettings",
    "EventKind",
    "Injection",
    "RestartableMosquitto",
    "Timeline",
    "Window",
    "account",
    "eviction_windows",
    "loss_windows",
    "read_fleet",
    "read_sealed_batches",
    "run_chaos",
]

log = logging.getLogger(__name__)

#: Frames still between the concentrator and the agent's batch (pty buffer, the serial
#: backend's queue, the LoRaWAN processor) when the agent dies or the cable is pulled. The
#: pipeline takes well under a millisecond per frame; this bound is for a loaded 2-core machine
#: where the agent may not be scheduled for a while.
PIPELINE_MARGIN_S: Final = 0.5
#: After the uplink reconnects following an outage, how long its backlog may still be draining
#: (and the outbox therefore still full enough to evict).
DRAIN_MARGIN_S: Final = 2.0
#: How often the run polls the fleet's database and the agent's output.
_POLL_S: Final = 0.02
_DB_POLL_S: Final = 0.5
#: Reading the fleet's database waits this long for its writer.
_DB_TIMEOUT_S: Final = 5.0
_FLEET_START_S: Final = 30.0
_BROKER_START_S: Final = 10.0
_BROKER_STOP_S: Final = 10.0
_UPLINK_CONNECTED: Final = re.compile(r"MQTT \S+ connected")
#: How long the stored set must stay the same before the run takes it as final.
_QUIET_S: Final = 1.0


class ChaosFailed(ProcessFailed):
    """A chaos run could not be carried out (a part did not start or did not recover); a run
    that completes but loses frames is not this: its :class:`ChaosReport` says so."""


class EventKind(enum.StrEnum):
    """What happened, as the timeline records it."""

    AGENT_STARTED = "agent started"
    AGENT_KILLED = "agent killed (SIGKILL)"
    RADIO_CONFIGURED = "radio configured"
    UPLINK_CONNECTED = "uplink connected"
    BROKER_STOPPED = "broker stopped"
    BROKER_STARTED = "broker started"
    UNPLUGGED = "serial unplugged"
    REPLUGGED = "serial replugged"
    INJECTION_STARTED = "injection started"
    INJECTION_STOPPED = "injection stopped"


@dataclass(frozen=True, slots=True)
class ChaosEvent:
    """One entry of the timeline: ``at_s`` seconds after the run's start."""

    at_s: float
    kind: EventKind
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Injection:
    """One uplink frame handed to the emulated concentrator, ``at_s`` seconds after the start;
    ``plugged``: whether the concentrator's port existed then (unplugged, it is dropped)."""

    dev_eui: bytes
    f_cnt: int
    at_s: float
    plugged: bool
    values: Mapping[str, object] = field(compare=False)

    @property
    def key(self) -> tuple[str, int]:
        """``(DevEUI hex, FCnt)``: how the fleet's store names the reading."""
        return self.dev_eui.hex(), self.f_cnt


@dataclass(frozen=True, slots=True)
class Window:
    """``[start_s, end_s]`` during which frames may go unacknowledged, why, and when the
    event that opened it happened (``cause_s``)."""

    start_s: float
    end_s: float
    reason: str
    cause_s: float

    def contains(self, at_s: float) -> bool:
        return self.start_s <= at_s <= self.end_s


class Timeline:
    """Events in the order they happened, timed by ``clock`` from the timeline's creation."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._zero = clock()
        self.events: list[ChaosEvent] = []

    def now(self) -> float:
        """Seconds since the start."""
        return self._clock() - self._zero

    def record(self, kind: EventKind, detail: str = "") -> ChaosEvent:
        event = ChaosEvent(self.now(), kind, detail)
        self.events.append(event)
        log.info("chaos %7.3f s: %s %s", event.at_s, kind.value, detail)
        return event

    def render(self) -> str:
        """The timeline as text, one event a line."""
        return "\n".join(
            f"  {event.at_s:8.3f} s  {event.kind.value}{' ' + event.detail if event.detail else ''}"
            for event in self.events
        )


def _first_after(
    events: Sequence[ChaosEvent], kinds: Iterable[EventKind], after_s: float
) -> float | None:
    wanted = set(kinds)
    for event in events:
        if event.kind in wanted and event.at_s > after_s:
            return event.at_s
    return None


def loss_windows(
    events: Sequence[ChaosEvent], *, held_s: float, in_flight_s: float, end_s: float
) -> list[Window]:
    """The windows in which frames could not have been acknowledged.

    A kill at ``t`` opens ``[t - held_s, next RADIO_CONFIGURED after t]``: what the agent held
    in memory and what it was still reading is gone, and nothing is read until the next agent
    has configured the radio. An unplug at ``t`` opens ``[t - in_flight_s, next
    RADIO_CONFIGURED after the replug]``. A window never closed ends at ``end_s``.
    """
    windows: list[Window] = []
    for event in events:
        if event.kind is EventKind.AGENT_KILLED:
            end = _first_after(events, [EventKind.RADIO_CONFIGURED], event.at_s)
            windows.append(
                Window(
                    event.at_s - held_s,
                    end_s if end is None else end,
                    "agent killed",
                    event.at_s,
                )
            )
        elif event.kind is EventKind.UNPLUGGED:
            replug = _first_after(events, [EventKind.REPLUGGED], event.at_s)
            end = (
                None
                if replug is None
                else _first_after(events, [EventKind.RADIO_CONFIGURED], replug)
            )
            windows.append(
                Window(
                    event.at_s - in_flight_s,
                    end_s if end is None else end,
                    "serial unplugged",
                    event.at_s,
                )
            )
    return windows


def eviction_windows(
    events: Sequence[ChaosEvent], *, in_flight_s: float, drain_s: float, end_s: float
) -> list[Window]:
    """Where an evicted frame can come from: a broker stop at ``t`` opens ``[t - in_flight_s,
    first UPLINK_CONNECTED after the broker's restart + drain_s]`` (the outbox only fills, and
    evicts its oldest, while it cannot drain)."""
    windows: list[Window] = []
    for event in events:
        if event.kind is EventKind.BROKER_STOPPED:
            back = _first_after(events, [EventKind.BROKER_STARTED], event.at_s)
            up = None if back is None else _first_after(events, [EventKind.UPLINK_CONNECTED], back)
            end = end_s if up is None else min(end_s, up + drain_s)
            windows.append(Window(event.at_s - in_flight_s, end, "broker outage", event.at_s))
    return windows


@dataclass(frozen=True, slots=True)
class Accounting:
    """Every injected frame filed once (see the module docstring); ``duplicates``: frames the
    fleet stored more than once, with the count; ``unexpected``: stored readings no device
    sent; ``wrong_values``: delivered frames whose stored values differ from those sent."""

    injected: int
    delivered: int
    not_acknowledged: list[tuple[Injection, Window]]
    evicted: list[tuple[Injection, Window]]
    lost: list[Injection]
    duplicates: dict[tuple[str, int], int]
    unexpected: list[tuple[str, int]]
    wrong_values: list[tuple[Injection, object]]
    evicted_batches: int
    missing_batches: list[int]
    max_readings: int

    @property
    def eviction_consistent(self) -> bool:
        """No more batches missing than evicted, and no more frames put down to eviction
        than those batches can have held."""
        return (
            len(self.missing_batches) <= self.evicted_batches
            and len(self.evicted) <= len(self.missing_batches) * self.max_readings
        )

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.duplicates
            and not self.unexpected
            and not self.wrong_values
            and self.eviction_consistent
        )

    def problems(self) -> list[str]:
        """What is wrong, one line per finding (empty when :attr:`ok`)."""
        lines = [
            f"lost: device {item.dev_eui.hex()} fcnt {item.f_cnt} injected at {item.at_s:.3f} s"
            f" ({'plugged' if item.plugged else 'unplugged'})"
            for item in self.lost
        ]
        lines += [
            f"stored {count} times: device {eui} fcnt {fcnt}"
            for (eui, fcnt), count in sorted(self.duplicates.items())
        ]
        lines += [
            f"stored but never sent: device {eui} fcnt {fcnt}" for eui, fcnt in self.unexpected
        ]
        lines += [
            f"stored values differ: device {item.dev_eui.hex()} fcnt {item.f_cnt}: sent "
            f"{dict(item.values)}, stored {stored}"
            for item, stored in self.wrong_values
        ]
        if not self.eviction_consistent:
            lines.append(
                f"{len(self.missing_batches)} batches missing ({self.missing_batches[:20]}), "
                f"{self.evicted_batches} evicted, {len(self.evicted)} frames put down to eviction"
            )
        return lines


def account(
    injections: Sequence[Injection],
    stored: Mapping[tuple[str, int], Sequence[object]],
    *,
    loss: Sequence[Window],
    evictable: Sequence[Window],
    evicted_batches: int,
    batch_seqs: Iterable[int],
    max_readings: int,
    sealed_batches: int | None = None,
) -> Accounting:
    """File each of ``injections`` against ``stored`` (per ``(DevEUI hex, FCnt)``, the values
    of every stored copy) and the windows; ``batch_seqs``: the gateway's batch sequence
    numbers the fleet stored, ``evicted_batches``: the agent's eviction counter,
    ``sealed_batches``: how many batches the agent sealed (sequence numbers ``0 ..
    sealed_batches - 1``; default: up to the highest stored)."""
    sent = {item.key: item for item in injections}
    not_acknowledged: list[tuple[Injection, Window]] = []
    evicted: list[tuple[Injection, Window]] = []
    lost: list[Injection] = []
    wrong: list[tuple[Injection, object]] = []
    delivered = 0
    for item in injections:
        copies = stored.get(item.key)
        if copies:
            delivered += 1
            if copies[0] != dict(item.values):
                wrong.append((item, copies[0]))
            continue
        window = next((w for w in loss if w.contains(item.at_s)), None)
        if window is not None:
            not_acknowledged.append((item, window))
            continue
        window = next((w for w in evictable if w.contains(item.at_s)), None)
        if window is not None and evicted_batches > 0:
            evicted.append((item, window))
            continue
        lost.append(item)
    seqs = set(batch_seqs)
    if sealed_batches is None:
        sealed_batches = max(seqs) + 1 if seqs else 0
    missing = sorted(set(range(sealed_batches)) - seqs)
    return Accounting(
        injected=len(injections),
        delivered=delivered,
        not_acknowledged=not_acknowledged,
        evicted=evicted,
        lost=lost,
        duplicates={key: len(copies) for key, copies in stored.items() if len(copies) > 1},
        unexpected=sorted(key for key in stored if key not in sent),
        wrong_values=wrong,
        evicted_batches=evicted_batches,
        missing_batches=missing,
        max_readings=max_readings,
    )


# --- the broker ---------------------------------------------------------------------------------


class RestartableMosquitto(MosquittoProcess):
    """The chaos run's broker: a :class:`~owlgate.hil.processes.MosquittoProcess` with
    persistence, so that stopped with SIGTERM it writes its sessions, subscriptions and queued
    QoS 1 messages to ``folder/mosquitto.db`` and reads them back when started again on the
    same port. A start that fails is a :class:`ChaosFailed`."""

    #: Mosquitto's default (1000 per client) would drop messages queued for a subscriber that
    #: is away for a while; a chaos run must not lose any that way.
    MAX_QUEUED_MESSAGES: Final = 1_000_000

    def __init__(self, binary: str, folder: Path, port: int | None = None) -> None:
        super().__init__(
            binary,
            folder,
            port,
            persistence=True,
            max_queued_messages=self.MAX_QUEUED_MESSAGES,
            start_timeout_s=_BROKER_START_S,
            stop_timeout_s=_BROKER_STOP_S,
        )

    def start(self) -> None:
        try:
            super().start()
        except MosquittoFailed as err:
            raise ChaosFailed(err.message) from err


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChaosSettings:
    """One run's shape. Ranges are ``(low, high)`` seconds drawn uniformly.

    ``outbox_max_mb`` bounds the agent's outbox (``[outbox] max_mb``), None for the default;
    a small bound with long outages forces evictions.
    """

    seed: int
    devices: int = 6
    rate_hz: float = 30.0
    kills: int = 3
    outages: int = 2
    unplugs: int = 2
    gap_s: tuple[float, float] = (4.0, 9.0)
    dead_s: tuple[float, float] = (0.2, 1.5)
    outage_s: tuple[float, float] = (1.0, 3.0)
    unplugged_s: tuple[float, float] = (0.3, 2.0)
    settle_s: float = 2.0
    max_age_s: float = 0.1
    max_readings: int = 20
    outbox_max_mb: float | None = None
    recovery_timeout_s: float = 40.0
    drain_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ChaosReport:
    """What a run did and found."""

    settings: ChaosSettings
    accounting: Accounting
    events: list[ChaosEvent]
    timeline: str
    runtime_s: float
    outbox_depth: int
    agent_status: dict[str, Any]
    #: The longest time before a kill at which a frame went missing (how much of
    #: ``max_age_s + PIPELINE_MARGIN_S`` the run needed).
    max_kill_lead_s: float

    @property
    def ok(self) -> bool:
        return self.accounting.ok and self.outbox_depth == 0

    def figures(self) -> str:
        """One line of counts."""
        acc = self.accounting
        kinds = [event.kind for event in self.events]
        return (
            f"seed {self.settings.seed}: {acc.injected} injected, {acc.delivered} delivered, "
            f"{len(acc.evicted)} evicted ({acc.evicted_batches} batches), "
            f"{len(acc.not_acknowledged)} not acknowledged, {len(acc.lost)} lost, "
            f"{len(acc.duplicates)} stored twice; {kinds.count(EventKind.AGENT_KILLED)} kills, "
            f"{kinds.count(EventKind.BROKER_STOPPED)} broker outages, "
            f"{kinds.count(EventKind.UNPLUGGED)} unplugs; longest loss before a kill "
            f"{self.max_kill_lead_s:.3f} s; {self.runtime_s:.1f} s"
        )

    def describe(self) -> str:
        """Figures, problems and the timeline: the failure message."""
        problems = self.accounting.problems()
        if self.outbox_depth:
            problems.append(f"{self.outbox_depth} entries still in the agent's outbox at the end")
        return "\n".join([self.figures(), *problems, "timeline:", self.timeline])


def _edge_config(
    gateway: Mapping[str, Any], *, state_dir: Path, port: Path, url: str, settings: ChaosSettings
) -> str:
    keys = Path(gateway["keys_dir"])

    def q(value: object) -> str:
        return json.dumps(str(value))

    text = (
        "[gateway]\n"
        f"id = {q(gateway['id'])}\n"
        f"state_dir = {q(state_dir)}\n"
        f"identity_key = {q(keys / 'identity-ed25519.pem')}\n"
        f"sealing_key = {q(keys / 'sealing-x25519.pem')}\n"
        f"fleet_key = {q(keys / 'fleet-ed25519.pub.pem')}\n\n"
        f"[radio]\nport = {q(port)}\n\n"
        f"[mqtt]\nurl = {q(url)}\n\n"
        f"[batch]\nmax_readings = {settings.max_readings}\nmax_age_s = {settings.max_age_s}\n"
    )
    if settings.outbox_max_mb is not None:
        text += f"\n[outbox]\nmax_mb = {settings.outbox_max_mb}\n"
    return text


def _seed_fleet(workdir: Path, settings: ChaosSettings) -> dict[str, Any]:
    db = workdir / "fleet.sqlite3"
    # Seeded devices alternate ABP and OTAA: twice as many nodes give ``devices`` ABP ones.
    command = [sys.executable, "-m", MODULE, "fleet", "seed", "--db", str(db), "--gateways", "1"]
    command += ["--nodes", str(2 * settings.devices), "--seed", str(settings.seed)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    (workdir / "seed.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise ChaosFailed(f"fleet seed failed: {done.stderr.strip()}")
    manifest: dict[str, Any] = json.loads((workdir / "emulator-secrets.json").read_text())
    return manifest


def _devices(manifest: Mapping[str, Any], seed: int) -> list[EmulatedDevice]:
    return [
        EmulatedDevice.abp(
            entry["profile_id"],
            bytes.fromhex(entry["dev_eui"]),
            dev_addr=int(entry["dev_addr"], 16),
            nwk_s_key=bytes.fromhex(entry["nwk_s_key"]),
            app_s_key=bytes.fromhex(entry["app_s_key"]),
            seed=seed + index,
        )
        for index, entry in enumerate(manifest["devices"])
        if entry["activation"] == "abp"
    ]


def read_fleet(db: Path, gateway: str) -> tuple[dict[tuple[str, int], list[object]], list[int]]:
    """The gateway's readings as the fleet stored them, ``(DevEUI hex, FCnt)`` to the values of
    each stored copy, and its batch sequence numbers; read-only, as an operator would."""
    stored: dict[tuple[str, int], list[object]] = {}
    with contextlib.closing(
        sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=_DB_TIMEOUT_S)
    ) as conn:
        for eui, fcnt, values in conn.execute(
            "SELECT dev_eui, fcnt, values_json FROM readings WHERE gateway_id = ?", (gateway,)
        ):
            stored.setdefault((eui, int(fcnt)), []).append(json.loads(values))
        seqs = [
            int(row[0])
            for row in conn.execute("SELECT seq FROM batches WHERE gateway_id = ?", (gateway,))
        ]
    return stored, seqs


#: The agent's state database in its state directory, and where it keeps the next batch's
#: sequence number (edge/state.py, table ``meta``).
AGENT_STATE_FILE: Final = "agent.sqlite3"


def read_sealed_batches(state_dir: Path) -> int | None:
    """How many telemetry batches the agent has sealed (its next sequence number), read-only
    from its state database; None when there is none to read."""
    path = state_dir / AGENT_STATE_FILE
    if not path.exists():
        return None
    with contextlib.closing(
        sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=_DB_TIMEOUT_S)
    ) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'batch_seq'").fetchone()
    return None if row is None else int(row[0])


class _Run:
    """The moving parts of one run, in one event loop."""

    def __init__(self, settings: ChaosSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.timeline = Timeline()
        self.injections: list[Injection] = []
        self.rng = random.Random(settings.seed)
        self.agent: ChildProcess | None = None
        self.agent_starts = 0
        self.config_path = workdir / "edge.toml"
        self.state_dir = workdir / "state"
        self.stopping = asyncio.Event()
        self.concentrator: EmulatedConcentrator | None = None
        self._configs_noted = 0
        self._lines_seen = 0

    # --- the agent ----------------------------------------------------------------------------

    def start_agent(self) -> ChildProcess:
        self.agent_starts += 1
        args = ["edge", "run", "--config", str(self.config_path)]
        log_path = self.workdir / f"edge-{self.agent_starts}.log"
        self.agent = ChildProcess(f"edge #{self.agent_starts}", args, log_path)
        self._lines_seen = 0
        self.timeline.record(EventKind.AGENT_STARTED, f"pid {self.agent.proc.pid}")
        return self.agent

    def kill_agent(self) -> None:
        agent = self.agent
        if agent is None:
            return
        self.note_configs()
        agent.proc.send_signal(signal.SIGKILL)
        self.timeline.record(EventKind.AGENT_KILLED, f"pid {agent.proc.pid}")

    async def reap_agent(self) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            await asyncio.to_thread(agent.stop)

    async def watch_agent_log(self) -> None:
        # Uplink connections, from the agent's own log line (edge/uplink.py, "connected").
        while True:
            agent = self.agent
            if agent is not None:
                lines = agent.lines
                for line in lines[self._lines_seen :]:
                    if _UPLINK_CONNECTED.search(line):
                        self.timeline.record(EventKind.UPLINK_CONNECTED, agent.name)
                self._lines_seen = len(lines)
            await asyncio.sleep(_POLL_S)

    def note_configs(self) -> None:
        """Record the RADIO_CONFIGs received since the last call. Called before each
        disruption is recorded too: a configuration that arrived before a kill must not be
        taken for the next agent's, which would close the kill's window too early."""
        concentrator = self.concentrator
        if concentrator is None:
            return
        while self._configs_noted < len(concentrator.radio_configs):
            self._configs_noted += 1
            self.timeline.record(EventKind.RADIO_CONFIGURED, f"#{self._configs_noted}")

    async def watch_radio(self) -> None:
        concentrator = self.concentrator
        assert concentrator is not None
        while True:
            await concentrator.wait_for(RadioConfig, self._configs_noted + 1, timeout_s=3600.0)
            self.note_configs()

    async def wait_configured(self, concentrator: EmulatedConcentrator, before: int) -> None:
        try:
            await concentrator.wait_for(
                RadioConfig, before + 1, timeout_s=self.settings.recovery_timeout_s
            )
        except TimeoutError as err:
            raise ChaosFailed(
                f"the radio was not configured again within {self.settings.recovery_timeout_s}"
                f" s\ntimeline:\n{self.timeline.render()}"
            ) from err

    async def wait_uplink(self, after_s: float) -> None:
        # The uplink's reconnection backoff has full jitter and a 60 s cap (edge/uplink.py):
        # after a long outage the next attempt may be many seconds away.
        deadline = time.monotonic() + self.settings.recovery_timeout_s
        while not any(
            event.kind is EventKind.UPLINK_CONNECTED and event.at_s > after_s
            for event in self.timeline.events
        ):
            if time.monotonic() > deadline:
                raise ChaosFailed(
                    f"the uplink did not reconnect within {self.settings.recovery_timeout_s} s"
                    f"\ntimeline:\n{self.timeline.render()}"
                )
            await asyncio.sleep(_POLL_S)

    # --- the devices --------------------------------------------------------------------------

    async def inject(
        self, concentrator: EmulatedConcentrator, devices: list[EmulatedDevice]
    ) -> None:
        period_s = 1.0 / self.settings.rate_hz
        self.timeline.record(EventKind.INJECTION_STARTED, f"{self.settings.rate_hz:g}/s")
        next_at = time.monotonic()
        index = 0
        while not self.stopping.is_set():
            device = devices[index % len(devices)]
            index += 1
            f_cnt = device.f_cnt
            phy, values = device.uplink(0.0)
            plugged = concentrator.plugged
            concentrator.inject(phy)
            self.injections.append(
                Injection(device.dev_eui, f_cnt, self.timeline.now(), plugged, values)
            )
            # A steady rate: the schedule, not the last wake-up, decides the next frame.
            next_at += period_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        self.timeline.record(EventKind.INJECTION_STOPPED, f"{len(self.injections)} frames")

    # --- the disruptors -----------------------------------------------------------------------

    async def kills(self, concentrator: EmulatedConcentrator, rng: random.Random) -> None:
        settings = self.settings
        for _ in range(settings.kills):
            await asyncio.sleep(rng.uniform(*settings.gap_s))
            before = len(concentrator.radio_configs)
            self.kill_agent()
            await self.reap_agent()
            await asyncio.sleep(rng.uniform(*settings.dead_s))
            self.start_agent()
            await self.wait_configured(concentrator, before)

    async def outages(self, broker: RestartableMosquitto, rng: random.Random) -> None:
        settings = self.settings
        for _ in range(settings.outages):
            await asyncio.sleep(rng.uniform(*settings.gap_s))
            self.timeline.record(EventKind.BROKER_STOPPED)
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(rng.uniform(*settings.outage_s))
            await asyncio.to_thread(broker.start)
            back = self.timeline.record(EventKind.BROKER_STARTED, f"start #{broker.starts}")
            await self.wait_uplink(back.at_s)

    async def unplugs(self, concentrator: EmulatedConcentrator, rng: random.Random) -> None:
        settings = self.settings
        for _ in range(settings.unplugs):
            await asyncio.sleep(rng.uniform(*settings.gap_s))
            self.note_configs()
            self.timeline.record(EventKind.UNPLUGGED)
            concentrator.unplug()
            await asyncio.sleep(rng.uniform(*settings.unplugged_s))
            before = len(concentrator.radio_configs)
            concentrator.replug()
            self.timeline.record(EventKind.REPLUGGED)
            await self.wait_configured(concentrator, before)


@contextlib.contextmanager
def _tasks_cancelled(tasks: list[asyncio.Task[None]]) -> Iterator[list[asyncio.Task[None]]]:
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()


async def _drain(db: Path, gateway: str, expected: set[tuple[str, int]], timeout_s: float) -> None:
    # Until every frame that must arrive has, or the timeout: the accounting says what is
    # missing either way.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stored, _ = await asyncio.to_thread(read_fleet, db, gateway)
        if expected <= stored.keys():
            return
        await asyncio.sleep(_DB_POLL_S)
    log.warning("chaos: not every expected frame arrived within %.0f s", timeout_s)


async def _quiet(db: Path, gateway: str, timeout_s: float) -> None:
    # Stragglers (a batch republished after a reconnect) land now, duplicates included.
    deadline = time.monotonic() + timeout_s
    last: tuple[int, int] | None = None
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        stored, seqs = await asyncio.to_thread(read_fleet, db, gateway)
        now = (sum(len(copies) for copies in stored.values()), len(seqs))
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= _QUIET_S:
            return
        await asyncio.sleep(_DB_POLL_S / 2)


async def _run(settings: ChaosSettings, workdir: Path, mosquitto: str | None) -> ChaosReport:
    started = time.monotonic()
    binary = mosquitto or find_mosquitto()
    if binary is None:
        raise ChaosFailed("mosquitto not found (Debian package mosquitto)")
    manifest = _seed_fleet(workdir, settings)
    gateway = manifest["gateways"][0]
    db = workdir / "fleet.sqlite3"
    devices = _devices(manifest, settings.seed)
    run = _Run(settings, workdir)
    # One stream of draws per disruptor, all from the seed: the plan does not depend on how
    # the disruptors interleave.
    kill_rng, outage_rng, unplug_rng = (random.Random(run.rng.getrandbits(64)) for _ in range(3))
    broker = RestartableMosquitto(binary, workdir / "mosquitto")
    broker.start()
    fleet: ChildProcess | None = None
    try:
        serve = ["fleet", "serve", "--db", str(db), "--http-port", "0", "--broker", broker.url]
        serve += ["--instance", "chaos", "--signing-key", manifest["fleet_signing_key"]]
        fleet = ChildProcess("fleet", serve, workdir / "fleet.log")
        await asyncio.to_thread(fleet.expect, r"Uvicorn running on ", _FLEET_START_S)
        async with EmulatedConcentrator(workdir / "dev", seed=settings.seed) as concentrator:
            run.concentrator = concentrator
            run.config_path.write_text(
                _edge_config(
                    gateway,
                    state_dir=run.state_dir,
                    port=concentrator.path,
                    url=broker.url,
                    settings=settings,
                )
            )
            watchers = [
                asyncio.create_task(run.watch_radio(), name="radio watcher"),
                asyncio.create_task(run.watch_agent_log(), name="log watcher"),
            ]
            with _tasks_cancelled(watchers):
                agent = run.start_agent()
                # Devices start once the agent has the fleet's sessions (as in the demo).
                await asyncio.to_thread(agent.expect, r"ready: ", settings.recovery_timeout_s)
                injector = asyncio.create_task(run.inject(concentrator, devices), name="inject")
                with _tasks_cancelled([injector]):
                    disruptors = [
                        asyncio.create_task(run.kills(concentrator, kill_rng), name="kills"),
                        asyncio.create_task(run.outages(broker, outage_rng), name="outages"),
                        asyncio.create_task(run.unplugs(concentrator, unplug_rng), name="unplugs"),
                    ]
                    with _tasks_cancelled(disruptors):
                        await asyncio.gather(*disruptors)
                    await asyncio.sleep(settings.settle_s)
                    run.stopping.set()
                    await injector
                end_s = run.timeline.now()
                # What must arrive: every frame outside the windows where it may be missing.
                excused = loss_windows(
                    run.timeline.events,
                    held_s=settings.max_age_s + PIPELINE_MARGIN_S,
                    in_flight_s=PIPELINE_MARGIN_S,
                    end_s=end_s,
                ) + eviction_windows(
                    run.timeline.events,
                    in_flight_s=PIPELINE_MARGIN_S,
                    drain_s=DRAIN_MARGIN_S,
                    end_s=end_s,
                )
                expected = {
                    item.key
                    for item in run.injections
                    if not any(window.contains(item.at_s) for window in excused)
                }
                await _drain(db, gateway["id"], expected, settings.drain_timeout_s)
                # SIGTERM: the agent writes its counters to status.json as it stops.
                await run.reap_agent()
                await _quiet(db, gateway["id"], settings.drain_timeout_s)
    finally:
        if run.agent is not None:
            await run.reap_agent()
        if fleet is not None:
            await asyncio.to_thread(fleet.stop)
        await asyncio.to_thread(broker.stop)
    status_path = run.state_dir / "status.json"
    status: dict[str, Any] = json.loads(status_path.read_text()) if status_path.exists() else {}
    outbox = status.get("outbox", {})
    stored, seqs = read_fleet(db, gateway["id"])
    events = list(run.timeline.events)
    end_s = run.timeline.now()
    loss = loss_windows(
        events,
        held_s=settings.max_age_s + PIPELINE_MARGIN_S,
        in_flight_s=PIPELINE_MARGIN_S,
        end_s=end_s,
    )
    evictable = eviction_windows(
        events, in_flight_s=PIPELINE_MARGIN_S, drain_s=DRAIN_MARGIN_S, end_s=end_s
    )
    accounting = account(
        run.injections,
        stored,
        loss=loss,
        evictable=evictable,
        evicted_batches=int(outbox.get("evicted", 0)),
        batch_seqs=seqs,
        max_readings=settings.max_readings,
        sealed_batches=read_sealed_batches(run.state_dir),
    )
    # How long before a kill a frame went missing, for kills alone: a frame also inside
    # another window may have gone for that reason instead.
    leads = [
        window.cause_s - item.at_s
        for item, window in accounting.not_acknowledged
        if window.reason == "agent killed"
        and item.at_s <= window.cause_s
        and sum(other.contains(item.at_s) for other in [*loss, *evictable]) == 1
    ]
    return ChaosReport(
        settings=settings,
        accounting=accounting,
        events=events,
        timeline=run.timeline.render(),
        runtime_s=time.monotonic() - started,
        outbox_depth=int(outbox.get("depth", -1)),
        agent_status=status,
        max_kill_lead_s=max(leads, default=0.0),
    )


def run_chaos(
    settings: ChaosSettings, workdir: Path, *, mosquitto: str | None = None
) -> ChaosReport:
    """Run the chaos described in the module docstring in ``workdir`` (logs, databases and
    the broker's persistence stay there) and return the report. ``mosquitto``: the broker's
    binary (default: :func:`~owlgate.hil.processes.find_mosquitto`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(settings, workdir, mosquitto))
