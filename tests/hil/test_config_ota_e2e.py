"""Configuration over the air, end to end, as it runs in the field: ``owlgate fleet serve``
(embedded broker), and per gateway an emulated concentrator (``owlgate hil gateway``) and the
real agent (``owlgate edge run``), each its own process.

One district of three gateways goes through what operations do and what can go wrong:

1. a good rollout (canary, then the rest) reaches every gateway, and each one's health message
   then carries the content hash the fleet computed;
2. a bad configuration (ten radio channels; the emulated concentrator demodulates nine) is
   rolled back on the canary, which keeps running its last good configuration, and the
   rollout stops before it reaches the others;
3. an old document replayed, a document with one byte flipped and one signed by another key
   are rejected, each with its reason, and change nothing;
4. a gateway whose agent is down during a rollout times out there, and gets the retained
   document when it comes back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from owlgate.codecs import configdoc
from owlgate.codecs.control import ConfigStatus, decode_config_status
from owlgate.codecs.signed import verify
from owlgate.hil.demo import edge_config
from owlgate.hil.processes import ChildProcess, children_stopped_at_exit

#: How long the agents get to pass their self-check after a document (a bad radio setting
#: costs the canary this long before it rolls back).
APPLY_DEADLINE_S = 4
WAIT_S = 60.0
THREE_CHANNELS = [{"frequency_hz": hz} for hz in (868_100_000, 868_300_000, 868_500_000)]
TEN_CHANNELS = [{"frequency_hz": 867_100_000 + 200_000 * index} for index in range(10)]


class District:
    """The running processes and the fleet's API, for one test."""

    def __init__(self, workdir: Path, children: list[ChildProcess]) -> None:
        self.workdir = workdir
        self.children = children
        seeded = ChildProcess(
            "seed",
            ["fleet", "seed", "--db", str(workdir / "fleet.db"), "--gateways", "3",
             "--nodes", "0", "--seed", "11"],
            workdir / "seed.log",
        )  # fmt: skip
        seeded.proc.wait(WAIT_S)
        seeded.stop()
        assert seeded.proc.returncode == 0, (workdir / "seed.log").read_text()
        self.manifest = json.loads((workdir / "emulator-secrets.json").read_text())
        self.gateways: list[dict[str, Any]] = self.manifest["gateways"]
        token = (workdir / "admin-token").read_text().strip()
        serve = ["fleet", "serve", "--db", str(workdir / "fleet.db"), "--http-port", "0",
                 "--signing-key", self.manifest["fleet_signing_key"]]  # fmt: skip
        fleet = ChildProcess("fleet", serve, workdir / "fleet.log")
        children.append(fleet)
        self.mqtt_url = fleet.expect(r"MQTT broker: (mqtt://\S+)").group(1)
        api_url = fleet.expect(r"Uvicorn running on (http://\S+)").group(1)
        self.http = httpx.Client(
            base_url=api_url, timeout=10.0, headers={"Authorization": f"Bearer {token}"}
        )
        self.edges: dict[str, ChildProcess] = {}
        for gw in self.gateways:
            folder = workdir / gw["id"]
            folder.mkdir()
            emulator = ChildProcess(
                f"emulator {gw['id']}",
                ["hil", "gateway", "--link-dir", str(folder), "--manifest",
                 str(workdir / "emulator-secrets.json"), "--gateway", gw["id"]],
                folder / "emulator.log",
            )  # fmt: skip
            children.append(emulator)
            link = emulator.expect(r"^LINK (\S+)").group(1)
            text = edge_config(gw, state_dir=folder / "state", port=link, mqtt_url=self.mqtt_url)
            # Health every 2 s, so the test sees the hash a gateway runs soon after a change.
            text += (
                f"\n[health]\ninterval_s = 2\n\n[config]\napply_deadline_s = {APPLY_DEADLINE_S}\n"
            )
            (folder / "edge.toml").write_text(text)
            self.start_edge(gw["id"])
        for gateway_id in self.edges:
            self.edges[gateway_id].expect(r"ready: ", WAIT_S)
        self.defaults: dict[str, Any] = {}
        self.put_defaults({"mqtt": {"url": self.mqtt_url}})

    def start_edge(self, gateway_id: str) -> None:
        folder = self.workdir / gateway_id
        edge = ChildProcess(
            f"edge {gateway_id}",
            ["edge", "run", "--config", str(folder / "edge.toml")],
            folder / f"edge-{len(self.children)}.log",
        )
        self.children.append(edge)
        self.edges[gateway_id] = edge

    def put_defaults(self, changes: dict[str, Any]) -> None:
        """Store a new version of the defaults layer: the last one with ``changes`` (a layer
        version holds every key it sets, so the earlier keys are carried over)."""
        for key, value in changes.items():
            if isinstance(value, dict):
                self.defaults.setdefault(key, {}).update(value)
            else:
                self.defaults[key] = value
        answer = self.http.put("/api/v1/config/defaults", json={"settings": self.defaults})
        assert answer.status_code == 200, answer.text

    def effective_hash(self, gateway_id: str) -> str:
        found = self.http.get(f"/api/v1/gateways/{gateway_id}/config/effective")
        assert found.status_code == 200, found.text
        return str(found.json()["content_hash"])

    def rollout(self, **plan: Any) -> dict[str, Any]:
        """Start a rollout and wait until it is no longer running; its final JSON."""
        created = self.http.post("/api/v1/rollouts", json={"target": "all", **plan})
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        deadline = time.monotonic() + WAIT_S
        while True:
            found: dict[str, Any] = self.http.get(f"/api/v1/rollouts/{rollout_id}").json()
            if found["state"] not in ("running", "queued"):
                gateways = self.http.get(f"/api/v1/rollouts/{rollout_id}/gateways").json()
                found["per_gateway"] = {row["gateway_id"]: row for row in gateways["items"]}
                return found
            assert time.monotonic() < deadline, found
            time.sleep(0.2)

    def config_status(self, gateway_id: str) -> dict[str, Any]:
        found = self.http.get(f"/api/v1/gateways/{gateway_id}/config/status")
        assert found.status_code == 200, found.text
        return dict(found.json())

    def health_hash(self, gateway_id: str, wanted: str) -> str:
        """The config hash in the gateway's health as the fleet stored it, once it is
        ``wanted`` (or the last one seen when the wait runs out)."""
        deadline = time.monotonic() + WAIT_S
        seen = ""
        while time.monotonic() < deadline:
            found = self.http.get(f"/api/v1/gateways/{gateway_id}").json()
            last = (found.get("health") or {}).get("last_message") or {}
            seen = str(last.get("config_hash", ""))
            if seen == wanted:
                break
            time.sleep(0.3)
        return seen


@pytest.fixture
def district(tmp_path: Path) -> Iterator[District]:
    with children_stopped_at_exit() as children:
        place = District(tmp_path, children)
        try:
            yield place
        finally:
            place.http.close()


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("mqtt://").partition(":")
    return host, int(port)


async def _tamper(
    url: str, gateway_id: str, documents: list[bytes], identity: Ed25519PrivateKey | None
) -> tuple[bytes, list[ConfigStatus]]:
    """Publish each of ``documents`` on the gateway's config topic (not retained: the real
    document stays the retained one) and collect the gateway's status reports; returns the
    retained document seen first and the reports."""
    host, port = _host_port(url)
    prefix = f"owlgate/v1/gw/{gateway_id}/"
    reports: list[ConfigStatus] = []
    retained = b""
    async with aiomqtt.Client(host, port, identifier=f"tamper-{gateway_id}") as client:
        await client.subscribe([(prefix + "config", 1), (prefix + "config/status", 1)])
        async with asyncio.timeout(WAIT_S):
            async for message in client.messages:
                if message.topic.matches(prefix + "config") and message.retain:
                    retained = bytes(message.payload)
                    break
        for document in documents:
            await client.publish(prefix + "config", document, qos=1)
        async with asyncio.timeout(WAIT_S):
            async for message in client.messages:
                if not message.topic.matches(prefix + "config/status"):
                    continue
                payload = bytes(message.payload)
                body = verify(payload, identity.public_key()).payload if identity else payload
                report = decode_config_status(body)
                if report.state == "rejected":
                    reports.append(report)
                if len(reports) == len(documents):
                    break
    return retained, reports


def _retained(url: str, gateway_id: str) -> bytes:
    async def read() -> bytes:
        host, port = _host_port(url)
        topic = f"owlgate/v1/gw/{gateway_id}/config"
        async with aiomqtt.Client(host, port, identifier=f"reader-{gateway_id}") as client:
            await client.subscribe(topic, qos=1)
            async with asyncio.timeout(WAIT_S):
                async for message in client.messages:
                    if message.topic.matches(topic) and message.retain:
                        return bytes(message.payload)
        raise AssertionError("unreachable")

    return asyncio.run(read())


def test_config_over_the_air_in_a_district(district: District) -> None:
    ids = [gw["id"] for gw in district.gateways]
    canary = None

    # 1. A good rollout: canary first, then everyone.
    district.put_defaults({"batch": {"max_readings": 50}})
    first = district.rollout(canary=1, waves=[100], timeout_s=30)
    assert first["state"] == "completed", first
    assert first["counts"]["applied"] == 3, first
    wanted = district.effective_hash(ids[0])
    for gateway_id in ids:
        row = first["per_gateway"][gateway_id]
        assert row["state"] == "applied", row
        assert row["content_hash"] == wanted
        status = district.config_status(gateway_id)
        assert status["running_hash"] == wanted, status
        assert status["drift"] is False
        assert district.health_hash(gateway_id, wanted) == wanted
        if row["wave"] == 0:
            canary = gateway_id
    assert canary is not None
    others = [gateway_id for gateway_id in ids if gateway_id != canary]
    old_documents = {gateway_id: _retained(district.mqtt_url, gateway_id) for gateway_id in ids}

    # 2. A bad configuration: the canary's concentrator refuses ten channels.
    district.put_defaults({"radio": {"channels": TEN_CHANNELS}})
    bad = district.rollout(canary=1, waves=[100], timeout_s=30, max_failures=0)
    assert bad["state"] == "failed", bad
    canary_row = next(row for row in bad["per_gateway"].values() if row["wave"] == 0)
    assert canary_row["state"] == "rolled_back", canary_row
    assert canary_row["reason"] == "radio", canary_row
    canary = canary_row["gateway_id"]
    others = [gateway_id for gateway_id in ids if gateway_id != canary]
    for gateway_id in others:
        assert bad["per_gateway"][gateway_id]["state"] == "cancelled"
        # Never published to: the retained document is still the good one.
        assert _retained(district.mqtt_url, gateway_id) == old_documents[gateway_id]
    # The canary runs its last good configuration again, and says so.
    status = district.config_status(canary)
    assert status["running_hash"] == wanted, status
    assert district.health_hash(canary, wanted) == wanted
    district.put_defaults({"radio": {"channels": THREE_CHANNELS}})

    # 3. A second good rollout, then the first document replayed, a flipped byte, and a
    # document signed by a key the gateways do not trust.
    district.put_defaults({"log_level": "debug"})
    second = district.rollout(canary=1, waves=[100], timeout_s=30)
    assert second["state"] == "completed", second
    victim = others[0]
    current = _retained(district.mqtt_url, victim)
    flipped = bytearray(current)
    flipped[-5] ^= 0x01
    doc = configdoc.verify_config(current, district_fleet_key(district))
    foreign = configdoc.sign_config(
        configdoc.ConfigDocument(
            seq=doc.seq + 1000, target=doc.target, issued_at=doc.issued_at, config=doc.config
        ),
        Ed25519PrivateKey.generate(),
    )
    identity = gateway_identity(district, victim)
    _, reports = asyncio.run(
        _tamper(
            district.mqtt_url, victim, [old_documents[victim], bytes(flipped), foreign], identity
        )
    )
    assert [report.reason for report in reports] == ["replayed", "signature", "signature"]
    running = district.effective_hash(victim)
    assert district.config_status(victim)["running_hash"] == running

    # 4. A gateway offline during a rollout gets the retained document when it is back.
    offline = others[1]
    district.edges[offline].stop()
    district.put_defaults({"health": {"interval_s": 3}})
    third = district.rollout(canary=1, waves=[100], timeout_s=APPLY_DEADLINE_S * 2, max_failures=1)
    assert third["per_gateway"][offline]["state"] == "timeout", third
    assert all(
        third["per_gateway"][gateway_id]["state"] == "applied"
        for gateway_id in ids
        if gateway_id != offline
    ), third
    district.start_edge(offline)
    wanted = district.effective_hash(offline)
    deadline = time.monotonic() + WAIT_S
    while district.config_status(offline)["running_hash"] != wanted:
        assert time.monotonic() < deadline, district.config_status(offline)
        time.sleep(0.3)
    status = district.config_status(offline)
    assert status["last_status"]["state"] == "applied"
    assert status["drift"] is False


def district_fleet_key(district: District) -> Ed25519PublicKey:
    key = load_pem_private_key(Path(district.manifest["fleet_signing_key"]).read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key.public_key()


def gateway_identity(district: District, gateway_id: str) -> Ed25519PrivateKey:
    gw = next(gw for gw in district.gateways if gw["id"] == gateway_id)
    key = load_pem_private_key((Path(gw["keys_dir"]) / "identity-ed25519.pem").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key
