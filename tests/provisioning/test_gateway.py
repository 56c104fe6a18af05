"""``owlgate provision gateway`` as a technician runs it, against a running fleet.

The fleet is a process with the embedded broker (enforcing the credentials it issues) and the
MQTT ingest, started once for the module (:func:`fleet`); each test uses its own claim token,
gateway id and folder. The last test hands the written ``edge.toml`` to ``owlgate edge run``
with an emulated concentrator and sees the agent ready.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from owlgate.codecs import configdoc
from owlgate.codecs.cli import app
from owlgate.edge.config import load_config, load_keys, load_mqtt_password
from owlgate.fleet.broker import EmbeddedBroker
from owlgate.fleet.provisioning import create_claim
from owlgate.fleet.sql import connect
from owlgate.hil.processes import ChildProcess, children_stopped_at_exit
from owlgate.provisioning import gateway as gw

WAIT_S = 30.0
KEY_FILES = (gw.IDENTITY_KEY_FILE, gw.SEALING_KEY_FILE)
HOUR_S = 3600.0


@dataclass
class Fleet:
    """``owlgate fleet serve`` with its embedded broker, and how to reach it."""

    db: Path
    http_url: str
    broker_url: str
    token: str
    log: Path

    def claim(self, folder: Path, *, group: str | None = None) -> Path:
        """A new claim token (``owlgate fleet claim create --out``), in a file of ``folder``."""
        out = folder / "claim"
        args = ["fleet", "claim", "create", "--db", str(self.db), "--site", "depot"]
        args += ["--out", str(out)] + ([] if group is None else ["--group", group])
        created = CliRunner().invoke(app, args)
        assert created.exit_code == 0, created.output
        return out

    def api(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        answer = httpx.request(
            method,
            self.http_url + path,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10.0,
            **kwargs,
        )
        assert answer.status_code in (200, 201), answer.text
        body: dict[str, Any] = answer.json()
        return body


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleet")
    db = folder / "fleet.db"
    seeded = CliRunner().invoke(
        app, ["fleet", "seed", "--db", str(db), "--gateways", "0", "--nodes", "0"]
    )
    assert seeded.exit_code == 0, seeded.output
    token = (folder / "admin-token").read_text().strip()
    with children_stopped_at_exit() as children:
        serve = ChildProcess(
            "fleet", ["fleet", "serve", "--db", str(db), "--http-port", "0"], folder / "fleet.log"
        )
        children.append(serve)
        broker_url = serve.expect(r"MQTT broker: (mqtt://\S+)").group(1)
        http_url = serve.expect(r"Uvicorn running on (http://\S+)").group(1)
        fleet = Fleet(db, http_url, broker_url, token, folder / "fleet.log")
        # A complete configuration, so that a claimed gateway gets its first document.
        fleet.api(
            "PUT", "/api/v1/config/defaults", json={"settings": {"mqtt": {"url": broker_url}}}
        )
        yield fleet


def _provision(fleet: Fleet, claim: Path, gid: str, folder: Path, *extra: str) -> Any:
    args = ["provision", "gateway", "--fleet", fleet.http_url, "--claim-file", str(claim)]
    args += ["--gateway-id", gid, "--dir", str(folder), *extra]
    return CliRunner().invoke(app, args)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_happy_path_writes_a_configuration_the_agent_can_start_with(
    fleet: Fleet, tmp_path: Path
) -> None:
    folder = tmp_path / "gw"
    gid = "b827ebfffe000a01"
    token = fleet.claim(tmp_path, group="north").read_text().strip()
    args = ["provision", "gateway", "--fleet", fleet.http_url, "--claim", token]
    args += ["--gateway-id", gid, "--dir", str(folder), "--radio-port", "/dev/ttyUSB3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert re.fullmatch(
        rf"provisioned: gateway {gid} in group north; heartbeat acknowledged by the fleet in"
        r" \d+\.\d\d s",
        lines[-1],
    ), lines[-1]
    for step in gw.STEPS:
        assert any(line.startswith(f"ok   {step}") for line in lines), (step, lines)
    # Tight permissions everywhere, and nothing secret on the screen.
    assert _mode(folder) == 0o700
    for name in (
        gw.IDENTITY_KEY_FILE,
        gw.SEALING_KEY_FILE,
        gw.FLEET_KEY_FILE,
        gw.PASSWORD_FILE,
        gw.CONFIG_DOCUMENT_FILE,
        gw.EDGE_CONFIG_FILE,
        gw.RECORD_FILE,
    ):
        assert _mode(folder / name) == 0o600, name
    assert _mode(folder / "state") == 0o700
    password = (folder / gw.PASSWORD_FILE).read_text().strip()
    assert password not in result.output
    assert "PRIVATE KEY" not in result.output
    assert token not in result.output
    assert password not in fleet.log.read_text()
    # The agent's own loaders take the files.
    config = load_config(folder / gw.EDGE_CONFIG_FILE)
    assert config.gateway.gateway_id_hex == gid
    assert config.gateway.groups == ("north",)
    assert config.gateway.state_dir == folder / "state"
    assert config.radio.port == "/dev/ttyUSB3"
    assert f"mqtt://{config.mqtt.host}:{config.mqtt.port}" == fleet.broker_url
    assert load_mqtt_password(config) == password
    keys = load_keys(config)
    assert keys.identity.public_key().public_bytes_raw() == bytes.fromhex(
        _fleet_gateway(fleet, gid)["sign_public_key"]
    )
    document = configdoc.verify_config(
        (folder / gw.CONFIG_DOCUMENT_FILE).read_bytes(), keys.fleet, gateway_id=bytes.fromhex(gid)
    )
    assert document.config.mqtt_url == fleet.broker_url
    record = json.loads((folder / gw.RECORD_FILE).read_text())
    assert (record["gateway_id"], record["group"], record["site"]) == (gid, "north", "depot")


def _fleet_gateway(fleet: Fleet, gid: str) -> dict[str, Any]:
    """The gateway as the fleet registered it (through its API, an admin token)."""
    return fleet.api("GET", f"/api/v1/gateways/{gid}")


async def _login(url: str, gid: str, password: str) -> None:
    host, port = url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(
        host,
        int(port),
        identifier=f"test-{gid}",
        username=gid,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=5,
    ):
        pass


def test_rerun_keeps_the_keys_and_replaces_the_password(fleet: Fleet, tmp_path: Path) -> None:
    folder = tmp_path / "gw"
    gid = "b827ebfffe000a02"
    claim = fleet.claim(tmp_path, group="north")
    first = _provision(fleet, claim, gid, folder)
    assert first.exit_code == 0, first.output
    keys = {name: (folder / name).read_bytes() for name in KEY_FILES}
    old_password = (folder / gw.PASSWORD_FILE).read_text().strip()
    again = _provision(fleet, claim, gid, folder, "--json")
    assert again.exit_code == 0, again.output
    answer = json.loads(again.output)
    assert answer["ok"] is True
    assert answer["keys_made"] is False
    assert answer["group"] == "north"
    assert [step["step"] for step in answer["steps"]] == list(gw.STEPS)
    assert all(step["ok"] for step in answer["steps"])
    assert answer["heartbeat_s"] > 0
    assert {name: (folder / name).read_bytes() for name in KEY_FILES} == keys
    # The second heartbeat is newer than the first for the fleet even within one second.
    assert json.loads((folder / gw.RECORD_FILE).read_text())["heartbeat_seq"] == 1
    new_password = (folder / gw.PASSWORD_FILE).read_text().strip()
    assert new_password != old_password
    assert new_password not in again.output
    # The old password no longer opens the broker; the new one does.
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(_login(fleet.broker_url, gid, old_password))
    asyncio.run(_login(fleet.broker_url, gid, new_password))


def test_a_used_token_is_refused_with_the_fleets_sentence(fleet: Fleet, tmp_path: Path) -> None:
    claim = fleet.claim(tmp_path)
    first = _provision(fleet, claim, "b827ebfffe000a03", tmp_path / "first")
    assert first.exit_code == 0, first.output
    other = _provision(fleet, claim, "b827ebfffe000a04", tmp_path / "second")
    assert other.exit_code == 1, other.output
    last = other.output.strip().splitlines()[-1]
    assert last.startswith("failed at claim: "), last
    assert re.search(r"claim token \d+ was used at \S+ by gateway b827ebfffe000a03", last), last
    assert last.endswith("; then run this command again with the new token"), last
    # The second folder got its own keys but nothing from the fleet.
    assert not (tmp_path / "second" / gw.PASSWORD_FILE).exists()
    assert not (tmp_path / "second" / gw.EDGE_CONFIG_FILE).exists()


def test_an_unknown_token_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    claim = tmp_path / "claim"
    claim.write_text("owl-claim-" + "A" * 43 + "\n")
    result = _provision(fleet, claim, "b827ebfffe000a0d", tmp_path / "gw")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "failed at claim: this claim token is not known to this fleet: check that it was copied"
        " whole, or ask an operator for a new one (owlgate fleet claim create); then run this"
        " command again with the whole token"
    )


def test_an_expired_token_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    claim = tmp_path / "claim"
    with closing(connect(fleet.db)) as sql:
        # Issued two hours ago, for an hour.
        issued = create_claim(sql, expires_in_s=HOUR_S, actor="test", now=time.time() - 2 * HOUR_S)
    claim.write_text(issued.token + "\n")
    result = _provision(fleet, claim, "b827ebfffe000a05", tmp_path / "gw", "--json")
    assert result.exit_code == 1
    answer = json.loads(result.output)
    assert answer["ok"] is False
    assert answer["error"]["step"] == "claim"
    assert answer["error"]["what"].startswith(f"claim token {issued.id} expired at ")
    assert answer["error"]["todo"] == "then run this command again with the new token"
    assert [(s["step"], s["ok"]) for s in answer["steps"]] == [("keys", True), ("claim", False)]


def test_fleet_down(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    args = ["provision", "gateway", "--fleet", url, "--claim", "owl-claim-0123456789"]
    args += ["--gateway-id", "b827ebfffe000a06", "--dir", str(tmp_path / "gw")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"failed at claim: cannot reach the fleet at {url} (ConnectError); check the network"
        " and --fleet, then run the same command again"
    )


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        (
            ["--gateway-id", "b827ebfffe00", "--claim", "owl-claim-0123456789"],
            "--gateway-id 'b827ebfffe00' is not an EUI-64",
        ),
        (["--claim", "owl-claim-0123456789", "--claim-file", "x"], "either --claim or"),
        ([], "either --claim or"),
        (["--claim", "short"], "--claim does not hold a claim token"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, extra: list[str], what: str) -> None:
    args = ["provision", "gateway", "--fleet", "http://127.0.0.1:9", "--dir", str(tmp_path)]
    if not any(arg == "--gateway-id" for arg in extra):
        args += ["--gateway-id", "b827ebfffe000a07"]
    result = CliRunner().invoke(app, args + extra)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("failed at input: "), line
    assert what in line, line
    assert list(tmp_path.iterdir()) == []


def test_claim_file_and_fleet_url_checked(tmp_path: Path) -> None:
    missing = CliRunner().invoke(
        app,
        [
            "provision",
            "gateway",
            "--fleet",
            "ftp://fleet",
            "--claim",
            "owl-claim-0123456789",
            "--gateway-id",
            "b827ebfffe000a08",
            "--dir",
            str(tmp_path),
        ],
    )
    assert missing.exit_code == 2
    assert "is not an http:// or https:// address" in missing.output
    token_file = tmp_path / "claim"
    token_file.write_text("two words\n")
    unreadable = CliRunner().invoke(
        app,
        [
            "provision",
            "gateway",
            "--fleet",
            "http://fleet",
            "--claim-file",
            str(token_file),
            "--gateway-id",
            "b827ebfffe000a08",
            "--dir",
            str(tmp_path / "gw"),
        ],
    )
    assert unreadable.exit_code == 2
    assert f"--claim-file {token_file} does not hold a claim token" in unreadable.output
    assert "two words" not in unreadable.output


def test_gateway_id_from_the_machine(tmp_path: Path) -> None:
    net = tmp_path / "net"
    for name, kind, mac in (
        ("lo", "772", "00:00:00:00:00:00"),
        ("docker0", "1", "00:00:00:00:00:00"),
        ("wlan0", "1", "b8:27:eb:11:22:33"),
        ("eth0", "1", "B8:27:EB:6C:1A:2B"),
        ("can0", "280", ""),
    ):
        (net / name).mkdir(parents=True)
        (net / name / "type").write_text(kind + "\n")
        (net / name / "address").write_text(mac + "\n")
    assert gw.machine_gateway_id(net) == "b827ebfffe6c1a2b"
    assert gw.machine_gateway_id(tmp_path / "none") is None
    assert gw.gateway_id_from_mac("b8:27:eb:11:22:33") == "b827ebfffe112233"
    with pytest.raises(ValueError, match="not a MAC address"):
        gw.gateway_id_from_mac("b8:27:eb:11:22")
    assert gw.normalise_gateway_id("B8:27:EB:FF:FE:6C:1A:2B") == "b827ebfffe6c1a2b"


def test_a_folder_of_another_gateway_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    folder = tmp_path / "gw"
    folder.mkdir(mode=0o700)
    (folder / gw.RECORD_FILE).write_text(json.dumps({"gateway_id": "b827ebfffe00ffff"}))
    result = _provision(fleet, fleet.claim(tmp_path), "b827ebfffe000a09", folder)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"failed at input: {folder} holds the keys of gateway b827ebfffe00ffff; pass"
        " --gateway-id b827ebfffe00ffff to provision it again, or use another --dir"
    )


def test_broker_refusing_the_password(fleet: Fleet, tmp_path: Path) -> None:
    """The fleet's answer names a password the broker does not take."""
    gid = "b827ebfffe000a0a"
    assert _provision(fleet, fleet.claim(tmp_path), gid, tmp_path / "first").exit_code == 0
    identity_pem = (tmp_path / "first" / gw.FLEET_KEY_FILE).read_text()

    def fleet_api(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/provision/gateway"
        return httpx.Response(200, json=_answer(gid, fleet.broker_url, identity_pem, "wrong"))

    result = asyncio.run(
        gw.provision(_request(gid, tmp_path / "second"), transport=httpx.MockTransport(fleet_api))
    )
    assert result.error is not None
    assert result.line == (
        f"failed at broker: the broker at {fleet.broker_url.removeprefix('mqtt://')} refused the"
        " gateway's password; run the same command again: the fleet issues a new password"
    )


def _request(gid: str, folder: Path, wait_s: float = gw.HEARTBEAT_WAIT_S) -> gw.ProvisionRequest:
    return gw.ProvisionRequest(
        fleet_url="http://fleet",
        claim="owl-claim-0123456789",
        gateway_id=gid,
        dir=folder,
        heartbeat_wait_s=wait_s,
    )


def _answer(gid: str, mqtt_url: str, fleet_pem: str, password: str) -> dict[str, Any]:
    return {
        "gateway_id": gid,
        "group": None,
        "site": None,
        "mqtt": {"url": mqtt_url, "username": gid, "password": password},
        "fleet_key_pem": fleet_pem,
        "config_key_pem": None,
        "config_document": None,
        "claimed_at": "2026-12-02T01:00:00+00:00",
    }


def test_heartbeat_not_seen_and_a_bad_document(tmp_path: Path) -> None:
    """A fleet that never records the heartbeat, and one whose initial document does not
    verify against the key it pins: each ends at its step with what to do."""
    gid = "b827ebfffe000a0b"
    fleet_key = Ed25519PrivateKey.generate()
    pem = (
        fleet_key.public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    checks: list[dict[str, Any]] = []

    async def scenario(document: bytes | None, folder: Path) -> gw.ProvisionResult:
        async with EmbeddedBroker() as broker:

            def fleet_api(request: httpx.Request) -> httpx.Response:
                if request.url.path.endswith("/check"):
                    checks.append(json.loads(request.content))
                    return httpx.Response(200, json={"last_health_at": None, "online": False})
                answer = _answer(gid, broker.url, pem, "any")
                if document is not None:
                    answer["config_document"] = base64.b64encode(document).decode()
                return httpx.Response(200, json=answer)

            return await gw.provision(
                _request(gid, folder, wait_s=0.3), transport=httpx.MockTransport(fleet_api)
            )

    unseen = asyncio.run(scenario(None, tmp_path / "a"))
    assert unseen.error is not None
    assert unseen.error.step == "fleet saw it"
    assert unseen.line.startswith(
        "failed at fleet saw it: the fleet did not record the heartbeat within 0.3 s;"
    )
    assert [s.ok for s in unseen.steps] == [True, True, True, True, True, False]
    identity = gw.load_or_make_keys(tmp_path / "a")[0]
    proof = bytes.fromhex(checks[0]["proof"])
    identity.public_key().verify(
        proof, b"owlgate/v1 check owl-claim-0123456789 " + bytes.fromhex(gid)
    )
    foreign = configdoc.sign_config(
        configdoc.ConfigDocument(
            seq=1,
            target=bytes.fromhex(gid),
            issued_at=1_800_000_000,
            config=configdoc.GatewayConfig(mqtt_url="mqtt://fleet:1883"),
        ),
        Ed25519PrivateKey.generate(),
    )
    refused = asyncio.run(scenario(foreign, tmp_path / "b"))
    assert refused.error is not None
    assert refused.error.step == "files"
    assert "the initial configuration document does not verify (signature" in refused.line
    assert not (tmp_path / "b" / gw.EDGE_CONFIG_FILE).exists()


def test_the_agent_starts_with_what_was_written(fleet: Fleet, tmp_path: Path) -> None:
    """The handoff: the emulated concentrator on a pty, provisioning with --radio-port, then
    ``owlgate edge run`` on the written edge.toml reaches ready."""
    gid = "b827ebfffe000a0c"
    manifest = tmp_path / "emulator-secrets.json"
    manifest.write_text(json.dumps({"gateways": [], "devices": []}))
    with children_stopped_at_exit() as children:
        emulator = ChildProcess(
            "emulator",
            ["hil", "gateway", "--link-dir", str(tmp_path), "--manifest", str(manifest),
             "--gateway", gid],
            tmp_path / "emulator.log",
        )  # fmt: skip
        children.append(emulator)
        link = emulator.expect(r"^LINK (\S+)").group(1)
        folder = tmp_path / "gw"
        result = _provision(fleet, fleet.claim(tmp_path), gid, folder, "--radio-port", link)
        assert result.exit_code == 0, result.output
        edge = ChildProcess(
            "edge",
            ["edge", "run", "--config", str(folder / gw.EDGE_CONFIG_FILE)],
            tmp_path / "edge.log",
        )
        children.append(edge)
        ready = edge.expect(rf"gateway {gid} ready: ", WAIT_S)
        assert "MQTT connected" in ready.string, ready.string
        # The fleet's initial document, kept in DIR for the record, reaches the agent retained
        # from the broker and passes its trial there.
        keys = load_keys(load_config(folder / gw.EDGE_CONFIG_FILE))
        document = (folder / gw.CONFIG_DOCUMENT_FILE).read_bytes()
        seq = configdoc.verify_config(document, keys.fleet, gateway_id=bytes.fromhex(gid)).seq
        edge.expect(rf"configuration document seq {seq} applied: radio up", WAIT_S)


def test_provision_bench_measures_claim_to_verified(tmp_path: Path) -> None:
    """``owlgate bench --suite provision`` runs its own fleet and reports the figure; the
    suite fails rather than report a run that did not end verified."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app, ["bench", "--suite", "provision", "--quick", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["provision.gateway_s"] > 0
    assert figures["goals"]["provision.gateway_s"] == {"max": 10.0}
    assert figures["units"]["provision.gateway_s"] == "s"
