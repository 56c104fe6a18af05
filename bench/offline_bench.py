"""The offline-detection figures: how soon operations see a gateway that lost its power.

A power cut gives the broker no TCP close: the gateway just falls silent. The bench makes that
happen to a real ``owlgate edge run`` process by stopping it (SIGSTOP: its sockets stay open,
nothing more is sent, as with a dead gateway behind a NAT), then polls the fleet's API until
the gateway's health state is ``offline``. Everything runs as users run it: ``owlgate fleet
seed``, ``owlgate fleet serve --broker`` on a Mosquitto of the bench's own, the agent on an
emulated concentrator.

- ``fleet.offline_detect_s``: the Last Will fires. The agent's ``[mqtt] keepalive_s`` is
  :data:`WILL_KEEPALIVE_S`, and its heartbeat long enough not to matter; the broker publishes
  the Will after 1.5 keep-alives of silence (MQTT 3.1.1 section 3.1.2.10). Goal: at most 1.5 x
  the keep-alive.

  Mosquitto 2.0 cannot meet it for a short keep-alive, whatever the client does: its
  ``keepalive__check`` (src/keepalive.c, the default build of 2.0.x) looks at the clients only
  when ``last_keepalive_check + 5 < now``, once every 6 seconds, and then in whole seconds
  (``now - last_msg_in > keepalive * 3 / 2``, integer division). A client silent since
  ``t`` is cut, and its Will sent, between ``t + floor(1.5 k) + 1`` and about
  ``t + floor(1.5 k) + 7`` seconds: 8 .. 14 s for k = 5 s. Sending PINGREQs earlier does not
  help (the broker counts from the last packet, which is then only closer to the power cut).
  The fleet's part is small: it stores the Will's ``offline`` within the same second.
- ``fleet.offline_detect_s.embedded``: the same through the fleet's embedded broker (``owlgate
  fleet serve`` without ``--broker``, the default), which cuts a client after exactly 1.5
  keep-alives of silence (:class:`owlgate.fleet.broker.SilenceCuttingHandler`; amqtt alone
  never cut one). Same goal.
- ``fleet.offline_detect_s.heartbeat``: the Will does not fire in time (a long keep-alive);
  the fleet marks the gateway offline after 2 heartbeat intervals without a message. Goal: at
  most 2 heartbeat intervals (:data:`HEARTBEAT_INTERVAL_S`).

Each figure is the worst of its rounds: a detection time is a promise to operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import aiomqtt
import httpx

from owlgate.hil.concentrator import EmulatedConcentrator
from owlgate.hil.demo import edge_config
from owlgate.hil.processes import (
    MODULE,
    ChildProcess,
    MosquittoProcess,
    children_stopped_at_exit,
    find_mosquitto,
)

from .figures import Figure

WILL_KEEPALIVE_S: Final = 5
#: The heartbeat of the Will scenario: far longer than the Will's 1.5 keep-alives.
WILL_HEARTBEAT_S: Final = 300
HEARTBEAT_INTERVAL_S: Final = 3
#: The keep-alive of the heartbeat scenario: the Will would come only after 1.5 x this.
HEARTBEAT_KEEPALIVE_S: Final = 600
_POLL_S: Final = 0.05
_READY_TIMEOUT_S: Final = 60.0
_DETECT_TIMEOUT_S: Final = 120.0


def _seed(folder: Path) -> dict[str, Any]:
    seeded = subprocess.run(
        [sys.executable, "-m", MODULE, "fleet", "seed", "--db", str(folder / "fleet.db"),
         "--gateways", "1", "--nodes", "2", "--seed", "11"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if seeded.returncode != 0:
        raise RuntimeError(f"fleet seed failed: {seeded.stderr.strip()}")
    # The API wants a bearer token: an operator's, made as an administrator makes one.
    token = folder / "operator.token"
    made = subprocess.run(
        [sys.executable, "-m", MODULE, "fleet", "token", "create", "--db", str(folder / "fleet.db"),
         "--role", "operator", "--name", "offline bench", "--out", str(token)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        raise RuntimeError(f"fleet token create failed: {made.stderr.strip()}")
    manifest: dict[str, Any] = json.loads((folder / "emulator-secrets.json").read_text())
    manifest["operator_token"] = token.read_text().strip()
    return manifest


async def _state(client: httpx.AsyncClient, gateway_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/gateways/{gateway_id}")
    response.raise_for_status()
    health: dict[str, Any] = response.json()["health"]
    return health


async def _watch_will(host: str, port: int, topic: str, ready: asyncio.Event) -> float:
    """When the broker's Will (``offline`` on ``topic``, not the retained copy) arrived."""
    async with aiomqtt.Client(host, port, identifier="offline-bench-watch") as watcher:
        await watcher.subscribe(topic, qos=1)
        ready.set()
        async for message in watcher.messages:
            if message.payload == b"offline" and not message.retain:
                return time.monotonic()
    raise RuntimeError("the watcher's connection ended before the Will came")


async def _one_round(
    folder: Path,
    broker_url: str | None,
    manifest: dict[str, Any],
    *,
    keepalive_s: int,
    interval_s: int,
) -> tuple[float, float | None]:
    """Seconds from the power cut to the API showing ``offline``, and to the broker sending
    the Will (None if it had not come by then). ``broker_url`` None: the fleet's embedded
    broker."""
    gateway = manifest["gateways"][0]
    with children_stopped_at_exit() as children:
        fleet = ChildProcess(
            "fleet",
            ["fleet", "serve", "--db", str(folder / "fleet.db"), "--http-port", "0",
             *(["--broker", broker_url] if broker_url else []), "--instance", "offline-bench",
             "--signing-key", manifest["fleet_signing_key"]],
            folder / "fleet.log",
        )  # fmt: skip
        children.append(fleet)
        announced = await asyncio.to_thread(fleet.expect, r"MQTT broker: (mqtt://\S+)")
        broker_url = broker_url or announced.group(1)
        api = (await asyncio.to_thread(fleet.expect, r"Uvicorn running on (http://\S+)")).group(1)
        async with (
            EmulatedConcentrator(folder / "dev") as concentrator,
            httpx.AsyncClient(
                base_url=api,
                timeout=10.0,
                headers={"Authorization": f"Bearer {manifest['operator_token']}"},
            ) as client,
        ):
            config = folder / "edge.toml"
            # edge_config ends with the [mqtt] section: its keep-alive goes right after it.
            config.write_text(
                edge_config(
                    gateway, state_dir=folder / "state", port=str(concentrator.path),
                    mqtt_url=broker_url,
                )
                + f"keepalive_s = {keepalive_s}\n\n[health]\ninterval_s = {interval_s}\n"
            )  # fmt: skip
            edge = ChildProcess(
                "edge", ["edge", "run", "--config", str(config)], folder / "edge.log"
            )
            children.append(edge)
            await asyncio.to_thread(edge.expect, r"ready: ", _READY_TIMEOUT_S)
            # Online, and for the heartbeat rule the fleet knows the gateway's interval (its
            # first health message came); the Will scenario's heartbeat is too long to wait.
            heartbeat_known = interval_s < keepalive_s
            deadline = time.monotonic() + _READY_TIMEOUT_S
            while True:
                health = await _state(client, gateway["id"])
                if health["state"] == "online" and (
                    not heartbeat_known or health["heartbeat_interval_s"] == interval_s
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway never showed online: {health}")
                await asyncio.sleep(_POLL_S)
            # A subscriber of the gateway's state topic sees when the broker sends the Will:
            # the broker's part of the detection time, apart from the fleet's.
            host, port = broker_url.removeprefix("mqtt://").rsplit(":", 1)
            watching = asyncio.Event()
            will = asyncio.create_task(
                _watch_will(host, int(port), f"owlgate/v1/gw/{gateway['id']}/state", watching)
            )
            async with asyncio.timeout(_READY_TIMEOUT_S):
                await watching.wait()
            # The power cut.
            os.kill(edge.proc.pid, signal.SIGSTOP)
            cut_at = time.monotonic()
            try:
                while (await _state(client, gateway["id"]))["state"] != "offline":
                    if time.monotonic() - cut_at > _DETECT_TIMEOUT_S:
                        raise RuntimeError(f"not offline after {_DETECT_TIMEOUT_S} s")
                    await asyncio.sleep(_POLL_S)
                detected_s = time.monotonic() - cut_at
                will_s = will.result() - cut_at if will.done() else None
            finally:
                will.cancel()
                await asyncio.gather(will, return_exceptions=True)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(edge.proc.pid, signal.SIGKILL)
                    os.kill(edge.proc.pid, signal.SIGCONT)
    return detected_s, will_s


def _rounds(
    binary: str | None, rounds: int, *, keepalive_s: int, interval_s: int
) -> list[tuple[float, float | None]]:
    """``rounds`` power cuts through a Mosquitto of ``binary``, or through the fleet's
    embedded broker when ``binary`` is None."""
    times = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="owlgate-bench-offline-") as tmp:
            folder = Path(tmp)
            manifest = _seed(folder)
            if binary is None:
                times.append(
                    asyncio.run(
                        _one_round(
                            folder, None, manifest, keepalive_s=keepalive_s, interval_s=interval_s
                        )
                    )
                )
                continue
            with MosquittoProcess(binary, folder / "mosquitto", verbose=False) as broker:
                times.append(
                    asyncio.run(
                        _one_round(
                            folder, broker.url, manifest,
                            keepalive_s=keepalive_s, interval_s=interval_s,
                        )
                    )
                )  # fmt: skip
    return times


def run(*, quick: bool = False) -> list[Figure]:
    """The offline-detection figures (they need Mosquitto, and are left out without it)."""
    binary = find_mosquitto()
    if binary is None:
        print(
            "note: fleet.offline_detect_s skipped: no mosquitto binary (Debian package mosquitto)",
            file=sys.stderr,
        )
        return []
    rounds = 1 if quick else 3
    will_rounds = _rounds(binary, rounds, keepalive_s=WILL_KEEPALIVE_S, interval_s=WILL_HEARTBEAT_S)
    will = [detected for detected, _ in will_rounds]
    # The broker's share, the worst cut-to-Will, and the fleet's, the worst Will-to-API
    # (storing the Will's offline, and the API's next poll).
    will_comparisons = {"best": min(will)}
    sent = [(detected, at) for detected, at in will_rounds if at is not None]
    if sent:
        will_comparisons["will_sent"] = max(at for _, at in sent)
        will_comparisons["fleet_after_will"] = max(detected - at for detected, at in sent)
    embedded = [
        detected
        for detected, _ in _rounds(
            None, rounds, keepalive_s=WILL_KEEPALIVE_S, interval_s=WILL_HEARTBEAT_S
        )
    ]
    silent = [
        detected
        for detected, _ in _rounds(
            binary, rounds, keepalive_s=HEARTBEAT_KEEPALIVE_S, interval_s=HEARTBEAT_INTERVAL_S
        )
    ]
    return [
        Figure(
            "fleet.offline_detect_s",
            max(will),
            "s",
            f"owlgate edge run stopped (SIGSTOP: a power cut, no TCP close) to the fleet API"
            f" showing the gateway offline, through its Last Will: MQTT keep-alive"
            f" {WILL_KEEPALIVE_S} s, Mosquitto (which sweeps for silent clients every 6 s);"
            f" worst of {rounds} rounds",
            goal_max=1.5 * WILL_KEEPALIVE_S,
            comparisons=will_comparisons,
        ),
        Figure(
            "fleet.offline_detect_s.embedded",
            max(embedded),
            "s",
            f"the same through the fleet's embedded broker (serve without --broker), which cuts"
            f" a client after 1.5 keep-alives of silence; keep-alive {WILL_KEEPALIVE_S} s; worst"
            f" of {rounds} rounds",
            goal_max=1.5 * WILL_KEEPALIVE_S,
            comparisons={"best": min(embedded)},
        ),
        Figure(
            "fleet.offline_detect_s.heartbeat",
            max(silent),
            "s",
            f"the same with the Will out of reach (keep-alive {HEARTBEAT_KEEPALIVE_S} s): offline"
            f" after 2 heartbeat intervals of {HEARTBEAT_INTERVAL_S} s without a message; worst"
            f" of {rounds} rounds",
            goal_max=2 * HEARTBEAT_INTERVAL_S,
            comparisons={"best": min(silent)},
        ),
    ]
