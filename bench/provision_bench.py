"""The provisioning figures.

``provision.gateway_s``: the wall time of ``owlgate provision gateway`` from the first step to
the last (keys made, claimed, files written, logged in to the broker, heartbeat acknowledged
by the broker and recorded by the fleet), against ``owlgate fleet serve`` running as its own
process with the embedded broker, over a SQLite database made by ``owlgate fleet seed`` with a
complete defaults layer (so every claim also signs and queues a first configuration
document). Each round claims a new gateway with a new claim token into a new folder; the
figure is the best round, the median beside it. Goal: at most 10 s (issue "Provisioning for
field technicians"). The program's own start (Python, imports) is not in it: the figure is
the provisioning, as :func:`owlgate.provisioning.gateway.provision` runs it.

A measurement is a function of a :class:`ProvisionFleet` (the running fleet, shared by every
figure of the suite) returning one :class:`~owlgate.bench.figures.Figure`; :data:`FIGURES`
lists them, so another provisioning figure is one function and one entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from owlgate.codecs.cli import app
from owlgate.fleet.provisioning import create_claim
from owlgate.fleet.sql import connect
from owlgate.hil.paced_line import PacedLine
from owlgate.hil.processes import ChildProcess, children_stopped_at_exit
from owlgate.hil.rak3172_lorawan import EmulatedRak3172LoRaWAN
from owlgate.provisioning.gateway import ProvisionRequest, provision
from owlgate.provisioning.node import FleetKeys, Journal, NodeSettings, provision_port

from .figures import Figure

GOAL_GATEWAY_S = 10.0
GATEWAY_ROUNDS = 5
QUICK_GATEWAY_ROUNDS = 1
START_TIMEOUT_S = 60.0


class BenchFailed(RuntimeError):
    """A provisioning run failed: no figure rather than a wrong one."""


@dataclass(frozen=True, slots=True)
class ProvisionFleet:
    """``owlgate fleet serve`` running for the suite: its database, API, broker, an admin
    token, and a folder for the measurements' files."""

    db: Path
    http_url: str
    broker_url: str
    admin_token: str
    folder: Path

    def claim(self, *, group: str | None = None) -> str:
        """A new claim token (an hour), as ``owlgate fleet claim create`` makes it."""
        with contextlib.closing(connect(self.db)) as sql:
            return create_claim(sql, group=group, expires_in_s=3600, actor="bench").token


@contextlib.contextmanager
def running_fleet(folder: Path) -> Iterator[ProvisionFleet]:
    """Seed a database in ``folder`` and run ``owlgate fleet serve`` on it until the end of
    the block."""
    db = folder / "fleet.db"
    seeded = CliRunner().invoke(
        app, ["fleet", "seed", "--db", str(db), "--gateways", "0", "--nodes", "0"]
    )
    if seeded.exit_code != 0:
        raise BenchFailed(f"owlgate fleet seed: {seeded.output}")
    token = (folder / "admin-token").read_text().strip()
    with children_stopped_at_exit() as children:
        serve = ChildProcess(
            "fleet", ["fleet", "serve", "--db", str(db), "--http-port", "0"], folder / "fleet.log"
        )
        children.append(serve)
        broker_url = serve.expect(r"MQTT broker: (mqtt://\S+)", START_TIMEOUT_S).group(1)
        http_url = serve.expect(r"Uvicorn running on (http://\S+)", START_TIMEOUT_S).group(1)
        layer = httpx.put(
            f"{http_url}/api/v1/config/defaults",
            json={"settings": {"mqtt": {"url": broker_url}}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
        )
        if layer.status_code != 200:
            raise BenchFailed(f"PUT /api/v1/config/defaults: {layer.text}")
        yield ProvisionFleet(db, http_url, broker_url, token, folder)


def gateway_figure(fleet: ProvisionFleet, *, quick: bool = False) -> Figure:
    """``provision.gateway_s``: claim to verified, best of the rounds."""
    rounds = QUICK_GATEWAY_ROUNDS if quick else GATEWAY_ROUNDS
    seconds: list[float] = []
    for index in range(rounds):
        request = ProvisionRequest(
            fleet_url=fleet.http_url,
            claim=fleet.claim(group="bench"),
            gateway_id=f"b827ebfffe{0xB000 + index:06x}",
            dir=fleet.folder / f"gateway-{index}",
        )
        started = time.perf_counter()
        result = asyncio.run(provision(request))
        elapsed = time.perf_counter() - started
        if not result.ok:
            raise BenchFailed(result.line)
        seconds.append(elapsed)
    return Figure(
        "provision.gateway_s",
        min(seconds),
        "s",
        "owlgate provision gateway against `owlgate fleet serve` (embedded broker) on this "
        "machine: keys, claim, files, broker login, heartbeat PUBACK and the fleet reporting "
        f"the heartbeat; best of {rounds}",
        goal_max=GOAL_GATEWAY_S,
        median=statistics.median(seconds),
    )


GOAL_NODE_S = 2.0
NODE_ROUNDS = 5
QUICK_NODE_ROUNDS = 1
NODE_BAUD = 115200
#: What one reply of the emulated module waits before it goes out: real modules answer a
#: command in some tens of milliseconds (20 to 50 ms is typical of RUI3 and RN2483 firmware).
NODE_REPLY_DELAY_S = 0.035


def node_figure(fleet: ProvisionFleet, *, quick: bool = False) -> Figure:
    """``provision.node_s``: one RAK3172 provisioned end to end at 115200 baud over a paced
    line, the module answering each command after :data:`NODE_REPLY_DELAY_S`; best of the
    rounds, a new module (DevEUI) each round."""
    rounds = QUICK_NODE_ROUNDS if quick else NODE_ROUNDS
    token_file = fleet.folder / "technician-token"
    made = CliRunner().invoke(
        app,
        ["fleet", "token", "create", "--db", str(fleet.db), "--role", "technician",
         "--name", "bench technician", "--out", str(token_file)],
    )  # fmt: skip
    if made.exit_code != 0:
        raise BenchFailed(f"owlgate fleet token create: {made.output}")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(START_TIMEOUT_S)

    seconds: list[float] = []
    client = httpx.Client(
        base_url=fleet.http_url,
        headers={"Authorization": f"Bearer {token_file.read_text().strip()}"},
        timeout=30.0,
    )
    try:
        keys = FleetKeys(client, profile_id="parking-v1")
        settings = NodeSettings("parking-v1", baud=NODE_BAUD)
        for index in range(rounds):
            devices = fleet.folder / f"node-{index}"

            async def plug(devices: Path = devices, index: int = index) -> tuple[Any, Any]:
                module = EmulatedRak3172LoRaWAN(
                    devices, dev_eui=bytes.fromhex(f"AC1F09FFFEB0{index:04X}")
                )
                module.faults.reply_delay_s = NODE_REPLY_DELAY_S
                await module.start()
                line = PacedLine(module.path, devices, baudrate=NODE_BAUD)
                await line.start()
                return module, line

            module, line = on_loop(plug())
            try:
                started = time.perf_counter()
                result = provision_port(
                    str(line.path), settings, keys, Journal(devices / "journal.jsonl")
                )
                elapsed = time.perf_counter() - started
            finally:
                on_loop(line.close())
                on_loop(module.close())
            if result.result != "provisioned":
                raise BenchFailed(result.line())
            seconds.append(elapsed)
    finally:
        client.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT_S)
        loop.close()
    return Figure(
        "provision.node_s",
        min(seconds),
        "s",
        "owlgate provision node, one RAK3172 (emulated, "
        f"{NODE_REPLY_DELAY_S * 1000:.0f} ms per reply) at {NODE_BAUD} baud over a paced line:"
        " detect, DevEUI, fleet registration, write, read back; best of "
        f"{rounds}",
        goal_max=GOAL_NODE_S,
        median=statistics.median(seconds),
    )


#: The suite's measurements, in order; each gets the running fleet.
FIGURES: tuple[Callable[..., Figure], ...] = (gateway_figure, node_figure)


def run(*, quick: bool = False) -> list[Figure]:
    """The ``provision`` suite; ``quick`` runs one round each (a smoke run)."""
    with (
        tempfile.TemporaryDirectory(prefix="owlgate-provision-bench-") as folder,
        running_fleet(Path(folder)) as fleet,
    ):
        return [measure(fleet, quick=quick) for measure in FIGURES]
