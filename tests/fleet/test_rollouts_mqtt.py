"""Rollouts over a real broker (amqtt and Mosquitto), with the fleet's config service and
emulated gateways each on its own MQTT connection: a good rollout reaches every gateway wave
by wave and stays retained; a bad configuration fails on the canary and the later waves are
never published; a rollback publishes the previous content with a higher seq; a gateway
offline during the rollout times out, then gets the retained document when it connects;
forged reports are refused and counted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from typer.testing import CliRunner

from owlgate.codecs.cli import app
from owlgate.codecs.configdoc import trusted_keys, verify_config
from owlgate.codecs.control import ConfigStatus, encode_config_status
from owlgate.codecs.signed import sign
from owlgate.fleet.api import create_app
from owlgate.fleet.auth import create_token
from owlgate.fleet.configs import put_layer
from owlgate.fleet.rollouts import ConfigService, RolloutEngine, rollout_json, status_topic
from owlgate.fleet.store import Store
from owlgate.hil.config_gateways import (
    ConfigGateways,
    EmulatedConfigGateway,
    gateways_from_manifest,
)
from tests.conftest import REPO
from tests.fleet.conftest import T0, raw_public
from tests.mqtt_servers import BrokerServer

pytest_plugins = ["tests.brokers"]

URL = "mqtt://broker.city.example:1883"
GATEWAYS = [f"b827ebfffe01{index:04x}" for index in range(1, 7)]
TEN_CHANNELS = [{"frequency_hz": 867_100_000 + index * 200_000} for index in range(10)]
#: A guard against a hung test, not a speed goal (those live in bench/).
WAIT_S = 30.0


class Fleet:
    """The fleet side of a test: the config service on the broker and the HTTP API."""

    def __init__(self, store: Store, server: BrokerServer) -> None:
        self.store = store
        self.key = Ed25519PrivateKey.generate()
        self.engine = RolloutEngine(store, self.key)
        self.service = ConfigService(
            self.engine, server.host, server.port, identifier="fleet-config-test", tick_s=0.05
        )
        self.app = create_app(store)
        self.token = create_token(store, role="operator", name="test operator")
        self.emulated: list[EmulatedConfigGateway] = []
        for gid in GATEWAYS:
            identity = Ed25519PrivateKey.generate()
            store.create_gateway(
                gid,
                name=gid,
                sign_public_key=raw_public(identity),
                seal_public_key=raw_public(X25519PrivateKey.generate()),
                created=T0,
            )
            self.emulated.append(
                EmulatedConfigGateway(
                    gateway_id=gid, identity=identity, trusted=trusted_keys(self.key.public_key())
                )
            )
        self.layer({"mqtt": {"url": URL}})

    def layer(self, settings: dict[str, Any]) -> None:
        put_layer(self.store.sql, "defaults", None, settings, actor="test")

    async def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as http:
            response = await http.request(
                method, path, headers={"Authorization": f"Bearer {self.token}"}, **kwargs
            )
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    async def rollout(self, **body: Any) -> int:
        created = await self.call("POST", "/api/v1/rollouts", json=body)
        rollout_id: int = created["id"]
        return rollout_id

    async def until(
        self, rollout_id: int, done: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_S):
            while True:
                found = await asyncio.to_thread(rollout_json, self.store.sql, rollout_id)
                if done(found):
                    return found
                await asyncio.sleep(0.05)

    async def final(self, rollout_id: int) -> dict[str, Any]:
        return await self.until(rollout_id, lambda r: r["state"] not in ("running", "paused"))


@asynccontextmanager
async def running(
    fleet: Fleet, server: BrokerServer, *, offline: tuple[str, ...] = ()
) -> AsyncIterator[ConfigGateways]:
    async with (
        fleet.service,
        ConfigGateways(fleet.emulated, server.host, server.port, offline=offline) as gateways,
    ):
        await asyncio.wait_for(fleet.service.subscribed.wait(), WAIT_S)
        yield gateways


@pytest.fixture
def fleet(store: Store, broker: BrokerServer) -> Fleet:
    return Fleet(store, broker)


async def _retained(server: BrokerServer, gateway_id: str) -> bytes:
    async with aiomqtt.Client(server.host, server.port, identifier="retained-reader") as client:
        await client.subscribe(f"owlgate/v1/gw/{gateway_id}/config", qos=1)
        async with asyncio.timeout(WAIT_S):
            async for message in client.messages:
                if str(message.topic) != f"owlgate/v1/gw/{gateway_id}/config":
                    # amqtt 0.12 also hands a new session, at QoS 0, retained messages of
                    # topics it did not subscribe to; Mosquitto does not.
                    continue
                assert message.retain
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no retained document")


def test_a_good_rollout_then_a_bad_one_stopped_at_the_canary(
    fleet: Fleet, broker: BrokerServer
) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], bytes]:
        async with running(fleet, broker):
            good = await fleet.rollout(target="all", canary=1, waves=[50, 100])
            first = await fleet.final(good)
            fleet.layer({"mqtt": {"url": URL}, "radio": {"channels": TEN_CHANNELS}})
            bad = await fleet.rollout(target="all", canary=1, waves=[100])
            second = await fleet.final(bad)
            retained = await _retained(broker, GATEWAYS[-1])
        return first, second, retained

    first, second, retained = asyncio.run(scenario())
    assert first["state"] == "completed"
    assert [wave["gateways"] for wave in first["waves"]] == [1, 2, 3]
    assert first["counts"]["applied"] == 6
    assert second["state"] == "failed"
    assert second["counts"]["rolled_back"] == 1
    assert second["counts"]["cancelled"] == 5
    canary, *others = fleet.emulated
    assert [report.state for report in canary.reports] == [
        "received",
        "applied",
        "received",
        "rolled_back",
    ]
    assert canary.reports[-1].reason == "radio"
    # The later wave was never published: the others saw one document only.
    for gateway in others:
        assert [report.state for report in gateway.reports] == ["received", "applied"]
        assert [doc.seq for doc in gateway.applied] == [1]
    doc = verify_config(retained, fleet.key.public_key(), gateway_id=bytes.fromhex(GATEWAYS[-1]))
    assert doc.seq == 1
    assert fleet.engine.counters.rejected == {}


def test_rollback_publishes_the_previous_content_with_a_higher_seq(
    fleet: Fleet, broker: BrokerServer
) -> None:
    async def scenario() -> dict[str, Any]:
        async with running(fleet, broker) as gateways:
            await fleet.final(await fleet.rollout(target=GATEWAYS[:3]))
            fleet.layer({"mqtt": {"url": URL}, "log_level": "debug"})
            second = await fleet.rollout(target=GATEWAYS[:3])
            await fleet.final(second)
            await fleet.call("POST", f"/api/v1/rollouts/{second}/rollback")
            await gateways.wait_for(
                lambda: all(len(g.applied) == 3 for g in fleet.emulated[:3]), timeout_s=WAIT_S
            )
            found: dict[str, Any] = await fleet.call("GET", f"/api/v1/rollouts/{second}/gateways")
            return found

    per_gateway = asyncio.run(scenario())
    for gateway in fleet.emulated[:3]:
        first, second, rollback = gateway.applied
        assert (first.seq, second.seq, rollback.seq) == (1, 2, 3)
        assert second.config.log_level == "debug"
        assert rollback.content_hash == first.content_hash
        assert gateway.running_hash == first.content_hash
    assert {item["rollback"]["seq"] for item in per_gateway["items"]} == {3}


def test_an_offline_gateway_times_out_then_gets_the_retained_document(
    fleet: Fleet, broker: BrokerServer
) -> None:
    late = GATEWAYS[-1]

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with running(fleet, broker, offline=(late,)) as gateways:
            rollout_id = await fleet.rollout(
                target="all", timeout_s=1, max_failures=1, success_threshold_pct=80
            )
            found = await fleet.final(rollout_id)
            await gateways.connect(late)
            await gateways.wait_for(lambda: bool(fleet.emulated[-1].applied), timeout_s=WAIT_S)
            async with asyncio.timeout(WAIT_S):
                while True:
                    status = await fleet.call("GET", f"/api/v1/gateways/{late}/config/status")
                    if status["last_status"] and status["last_status"]["state"] == "applied":
                        return found, status
                    await asyncio.sleep(0.05)

    found, status = asyncio.run(scenario())
    assert found["state"] == "completed"
    assert found["counts"]["applied"] == 5
    assert found["counts"]["timeout"] == 1
    assert status["drift"] is False
    assert status["running_hash"] == status["published"]["content_hash"]
    assert fleet.emulated[-1].applied[0].seq == 1


def test_forged_reports_are_refused_and_counted(fleet: Fleet, broker: BrokerServer) -> None:
    target = GATEWAYS[0]

    async def scenario() -> dict[str, Any]:
        async with running(fleet, broker):
            report = encode_config_status(ConfigStatus(state="applied", seq=7, at=int(T0)))
            async with aiomqtt.Client(broker.host, broker.port, identifier="forger") as client:
                await client.publish(
                    status_topic(target), sign(report, Ed25519PrivateKey.generate()), qos=1
                )
                await client.publish(status_topic(target), report, qos=1)
                await client.publish(
                    status_topic("b827ebfffe01ffff"),
                    sign(report, fleet.emulated[0].identity),
                    qos=1,
                )
            async with asyncio.timeout(WAIT_S):
                while sum(fleet.engine.counters.rejected.values()) < 3:  # noqa: ASYNC110
                    # The counters are changed in the engine's worker threads: polled.
                    await asyncio.sleep(0.05)
            return await fleet.call("GET", f"/api/v1/gateways/{target}/config/status")

    status = asyncio.run(scenario())
    assert fleet.engine.counters.rejected == {"signature": 2, "unknown_gateway": 1}
    assert status["last_status"] is None
    assert status["last_seq"] == 0


# --- through `owlgate fleet serve`, as operators run it --------------------------------------


def _serve(db: Path) -> tuple[subprocess.Popen[str], threading.Thread, str, str]:
    """``owlgate fleet serve`` (embedded broker) as a process: it, its broker URL and HTTP
    base URL. Its output is drained in a thread, so a chatty server never blocks on the pipe."""
    serve = [sys.executable, "-m", "owlgate.codecs.cli", "fleet", "serve", "--db", str(db)]
    serve += ["--http-port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env
    )
    assert process.stdout is not None
    broker_url = http_url = ""
    deadline = time.monotonic() + WAIT_S
    while not (broker_url and http_url):
        assert time.monotonic() < deadline, "fleet serve did not start"
        line = process.stdout.readline()
        assert line, "fleet serve exited"
        if line.startswith("MQTT broker: "):
            broker_url = line.split()[2]
        if "Uvicorn running on " in line:
            http_url = line.split("Uvicorn running on ")[1].split()[0]
    drain = threading.Thread(target=process.stdout.read, daemon=True)
    drain.start()
    return process, drain, broker_url, http_url


def test_fleet_serve_rolls_out_to_seeded_gateways(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    seeded = CliRunner().invoke(
        app, ["fleet", "seed", "--db", str(db), "--gateways", "3", "--nodes", "0"]
    )
    assert seeded.exit_code == 0, seeded.output
    emulated = gateways_from_manifest(tmp_path / "emulator-secrets.json")
    token = (tmp_path / "admin-token").read_text().strip()
    process, drain, broker_url, http_url = _serve(db)

    async def scenario() -> dict[str, Any]:
        host, port = broker_url.removeprefix("mqtt://").split(":")
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            ConfigGateways(emulated, host, int(port)),
            httpx.AsyncClient(base_url=http_url, headers=headers) as http,
        ):
            layer = {"settings": {"mqtt": {"url": URL}, "log_level": "debug"}}
            assert (await http.put("/api/v1/config/defaults", json=layer)).status_code == 200
            created = await http.post("/api/v1/rollouts", json={"target": "all", "canary": 1})
            assert created.status_code == 201, created.text
            async with asyncio.timeout(WAIT_S):
                while True:
                    found: dict[str, Any] = (
                        await http.get(f"/api/v1/rollouts/{created.json()['id']}")
                    ).json()
                    if found["state"] != "running":
                        return found
                    await asyncio.sleep(0.1)

    try:
        found = asyncio.run(scenario())
    finally:
        process.terminate()
        process.wait(timeout=30)
        drain.join(timeout=30)
        assert process.stdout is not None
        process.stdout.close()
    assert found["state"] == "completed", found
    assert found["counts"]["applied"] == 3
    for gateway in emulated:
        (doc,) = gateway.applied
        assert doc.config.log_level == "debug"
        assert doc.target == bytes.fromhex(gateway.gateway_id)
