"""Node settings end to end, every part a separate process as in ``owlgate demo``: an operator
POSTs a new report interval for a device; the fleet pushes it to the gateway that heard the
device, the edge agent sends it in RX1 after the device's next uplink, the emulated device
applies it and acknowledges, and the API shows the downlink ``confirmed`` and the device's
status reporting the new interval. On the embedded broker and on Mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from owlgate.hil.demo import edge_config
from owlgate.hil.gateway_emulator import START_WORD
from owlgate.hil.processes import MODULE, ChildProcess, children_stopped_at_exit
from tests.mqtt_servers import MosquittoServer

pytest_plugins = ["tests.brokers"]

WAIT_S = 45.0
T = TypeVar("T")


def _cli(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", MODULE, *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _until(what: str, probe: Callable[[], T | None]) -> T:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _run(tmp_path: Path, broker: str | None) -> None:
    db = tmp_path / "fleet.db"
    _cli("fleet", "seed", "--db", str(db), "--gateways", "1", "--nodes", "4", "--seed", "11")
    token_file = tmp_path / "operator-token"
    _cli("fleet", "token", "create", "--db", str(db), "--role", "operator", "--name", "e2e",
         "--out", str(token_file))  # fmt: skip
    manifest_path = tmp_path / "emulator-secrets.json"
    manifest = json.loads(manifest_path.read_text())
    (gateway,) = manifest["gateways"]
    device = next(d for d in manifest["devices"] if d["activation"] == "abp")
    eui = device["dev_eui"]
    with children_stopped_at_exit() as children:
        serve = ["fleet", "serve", "--db", str(db), "--http-port", "0",
                 "--signing-key", manifest["fleet_signing_key"]]  # fmt: skip
        if broker is not None:
            serve += ["--broker", broker]
        fleet = ChildProcess("fleet", serve, tmp_path / "fleet.log")
        children.append(fleet)
        mqtt_url = fleet.expect(r"MQTT broker: (mqtt://\S+)").group(1)
        api_url = fleet.expect(r"Uvicorn running on (http://\S+)").group(1)
        gw_dir = tmp_path / gateway["id"]
        gw_dir.mkdir()
        report_path = gw_dir / "report.json"
        args = ["hil", "gateway", "--link-dir", str(gw_dir), "--manifest", str(manifest_path),
                "--gateway", gateway["id"], "--devices", eui, "--interval-s", "1",
                "--report", str(report_path), "--seed", "3", "--wait-for-start"]  # fmt: skip
        emulator = ChildProcess(
            "emulator",
            args,
            gw_dir / "emulator.log",
            stdin=True,
        )
        children.append(emulator)
        link = emulator.expect(r"^LINK (\S+)").group(1)
        config = gw_dir / "edge.toml"
        config.write_text(
            edge_config(gateway, state_dir=gw_dir / "state", port=link, mqtt_url=mqtt_url)
        )
        edge = ChildProcess("edge", ["edge", "run", "--config", str(config)], gw_dir / "edge.log")
        children.append(edge)
        edge.expect(r"ready: ", WAIT_S)
        emulator.expect(r"^READY_FOR_START")
        emulator.send_line(START_WORD)
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        with httpx.Client(base_url=api_url, timeout=10.0, headers=headers) as client:

            def readings() -> list[dict[str, Any]]:
                page = client.get(f"/api/v1/nodes/{eui}/readings", params={"limit": 1000})
                items: list[dict[str, Any]] = page.raise_for_status().json()["items"]
                return items

            # Queued before any gateway heard the device: it goes out after the first uplink.
            posted = client.post(f"/api/v1/devices/{eui}/settings", json={"report_interval_s": 600})
            assert posted.status_code == 202, posted.text
            assert posted.json()["state"] == "queued"

            def confirmed() -> dict[str, Any] | None:
                (item,) = client.get(f"/api/v1/devices/{eui}/downlinks").json()["items"]
                return item if item["state"] == "confirmed" else None

            done = _until("the downlink confirmed", confirmed)
            assert done["gateway_id"] == gateway["id"]
            assert done["result"] == "applied"
            # Sent once, unless a slow machine let three uplinks pass before the ack came.
            assert 1 <= done["attempts"] <= 3

            def status() -> dict[str, Any] | None:
                for reading in readings():
                    if reading["values"].get("message") == "status":
                        return dict(reading["values"])
                return None

            assert _until("the device's status", status)["report_interval_s"] == 600
        emulator.stop()
        report = json.loads(report_path.read_text())
    assert report["settings"] == {eui: {"report_interval_s": 600}}
    taken = report["downlinks"]
    assert [(t["seq"], t["result"]) for t in taken] == [(0, "applied")] * len(taken)
    # FCntDown starts at 0 and only goes up (a re-sent downlink gets the next one).
    counters = [t["f_cnt_down"] for t in taken]
    assert counters == sorted(set(counters))
    assert counters[0] == 0 or done["attempts"] > 1
    assert 1 <= len(taken) <= done["attempts"]
    acks = [r for r in report["readings"] if r["values"].get("message") == "settings_ack"]
    assert [ack["values"]["settings_seq"] for ack in acks] == [0] * len(taken)


def test_node_settings_on_the_embedded_broker(tmp_path: Path) -> None:
    _run(tmp_path, None)


def test_node_settings_on_mosquitto(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    _run(tmp_path, mosquitto.url)
