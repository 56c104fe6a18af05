"""Broker credentials end to end, as an operator sets them up: the fleet writes Mosquitto's
password and ACL files, Mosquitto enforces them, ``owlgate fleet serve`` logs in with the
fleet account, and ``owlgate edge run`` with the gateway's own password gets online, ready
(its control subscription answered) and heard."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from owlgate.hil.concentrator import EmulatedConcentrator
from owlgate.hil.demo import edge_config
from owlgate.hil.processes import (
    MODULE,
    ChildProcess,
    MosquittoProcess,
    children_stopped_at_exit,
    find_mosquitto,
)
from tests.conftest import require_binary

HEALTH_INTERVAL_S = 1


def owlgate(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", MODULE, *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def mosquitto_binary() -> str:
    return find_mosquitto() or require_binary("mosquitto", "install Debian's mosquitto")


def test_a_gateway_with_its_own_credentials_gets_through_a_locked_mosquitto(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    db = str(tmp_path / "fleet.db")
    owlgate("fleet", "seed", "--db", db, "--gateways", "2", "--nodes", "2", "--seed", "5")
    manifest: dict[str, Any] = json.loads((tmp_path / "emulator-secrets.json").read_text())
    first, second = (gateway["id"] for gateway in manifest["gateways"])
    gateway_password = tmp_path / "gw.password"
    fleet_password = tmp_path / "fleet.password"
    owlgate(
        "fleet", "broker", "credentials", first, "--db", db, "--password-out", str(gateway_password)
    )
    owlgate("fleet", "broker", "fleet-account", "--db", db, "--password-out", str(fleet_password))
    files = tmp_path / "broker-files"
    owlgate("fleet", "broker", "write-files", "--out", str(files), "--db", db)
    admin = {"Authorization": f"Bearer {(tmp_path / 'admin-token').read_text().strip()}"}

    with (
        MosquittoProcess(
            mosquitto_binary,
            tmp_path / "mosquitto",
            password_file=files / "owlgate.passwd",
            acl_file=files / "owlgate.acl",
            verbose=False,
        ) as broker,
        children_stopped_at_exit() as children,
    ):
        fleet = ChildProcess(
            "fleet",
            ["fleet", "serve", "--db", db, "--http-port", "0", "--broker", broker.url,
             "--mqtt-password-file", str(fleet_password), "--broker-files", str(files),
             "--signing-key", manifest["fleet_signing_key"]],
            tmp_path / "fleet.log",
        )  # fmt: skip
        children.append(fleet)
        api = fleet.expect(r"Uvicorn running on (http://\S+)").group(1)

        async def scenario() -> dict[str, Any]:
            async with EmulatedConcentrator(tmp_path / "dev") as concentrator:
                config = tmp_path / "edge.toml"
                gateway = next(g for g in manifest["gateways"] if g["id"] == first)
                config.write_text(
                    edge_config(
                        gateway,
                        state_dir=tmp_path / "state",
                        port=str(concentrator.path),
                        mqtt_url=broker.url,
                    )
                    + f"password_file = {json.dumps(str(gateway_password))}\n\n"
                    + f"[health]\ninterval_s = {HEALTH_INTERVAL_S}\n"
                )
                edge = ChildProcess(
                    "edge", ["edge", "run", "--config", str(config)], tmp_path / "edge.log"
                )
                children.append(edge)
                # Ready: online published, and the fleet's answer on the gateway's own keys
                # topic came back through its control subscription.
                await asyncio.to_thread(edge.expect, r"ready: ", 60)
                async with httpx.AsyncClient(base_url=api, headers=admin, timeout=10) as client:
                    deadline = time.monotonic() + 30
                    while True:
                        got = await client.get(f"/api/v1/gateways/{first}")
                        health: dict[str, Any] = got.json()["health"]
                        if health["heartbeat_interval_s"] == HEALTH_INTERVAL_S:
                            break
                        assert time.monotonic() < deadline, health
                        await asyncio.sleep(0.1)
                    # Credentials issued through the API reach Mosquitto's files at once.
                    issued = await client.post(f"/api/v1/broker/gateways/{second}/credentials")
                    assert issued.status_code == 201, issued.text
                return health

        health = asyncio.run(scenario())
    assert health["state"] == "online"
    accounts = (files / "owlgate.passwd").read_text()
    assert f"{second}:$7$" in accounts
    assert f"{first}:$7$" in accounts
    assert gateway_password.read_text().strip() not in accounts
