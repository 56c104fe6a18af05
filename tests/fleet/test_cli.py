"""``owlgate fleet seed`` and ``owlgate fleet serve``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from typer.testing import CliRunner

from owlgate.codecs.lorawan import AesKey, JoinRequest
from owlgate.codecs.sealed import open_session
from owlgate.fleet.auth import create_token
from owlgate.fleet.cli import IDENTITY_KEY_FILE, SEALING_KEY_FILE, build_server, fleet_command
from owlgate.fleet.joinserver import JoinServer
from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault

RUNNER = CliRunner()


def seed(tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    result = RUNNER.invoke(fleet_command, ["seed", "--db", str(tmp_path / "fleet.db"), *extra])
    return result.exit_code, result.stdout, result.stderr


def test_seed_registers_public_keys_and_writes_private_ones(tmp_path: Path) -> None:
    code, out, _ = seed(tmp_path, "--gateways", "2", "--nodes", "6", "--seed", "7")
    assert code == 0, out
    assert "2 gateways" in out
    assert "6 devices (3 ABP, 3 OTAA)" in out
    manifest_path = tmp_path / "emulator-secrets.json"
    assert stat.S_IMODE(manifest_path.stat().st_mode) == 0o600
    manifest = json.loads(manifest_path.read_text())
    assert "EMULATOR SECRETS" in manifest["warning"]
    assert sorted({d["profile_id"] for d in manifest["devices"]}) == [
        "environment-v1",
        "parking-v1",
        "waste-bin-v1",
    ]
    vault = KeyVault.from_file(tmp_path / "gateway-keys" / "fleet-kek.json")
    with Store(tmp_path / "fleet.db", vault=vault) as store:
        gateways = store.gateways().items
        assert [g.id for g in gateways] == sorted(g["id"] for g in manifest["gateways"])
        for gateway in gateways:
            folder = tmp_path / "gateway-keys" / gateway.id
            identity_pem = (folder / IDENTITY_KEY_FILE).read_bytes()
            sealing_pem = (folder / SEALING_KEY_FILE).read_bytes()
            for name in (IDENTITY_KEY_FILE, SEALING_KEY_FILE):
                assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
            identity = serialization.load_pem_private_key(identity_pem, None)
            sealing = serialization.load_pem_private_key(sealing_pem, None)
            assert isinstance(identity, Ed25519PrivateKey)
            assert isinstance(sealing, X25519PrivateKey)
            raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
            assert gateway.sign_public_key == identity.public_key().public_bytes(*raw)
            assert gateway.seal_public_key == sealing.public_key().public_bytes(*raw)
            # Only public keys are in the database.
            private_raw = identity.private_bytes_raw()
            assert private_raw not in (tmp_path / "fleet.db").read_bytes()
        # An emulated OTAA device from the manifest can join, and the session is sealed to a
        # gateway whose private key the seed wrote.
        otaa = next(d for d in manifest["devices"] if d["activation"] == "otaa")
        request = JoinRequest.build(
            AesKey(bytes.fromhex(otaa["app_key"])),
            join_eui=int(otaa["join_eui"], 16),
            dev_eui=int(otaa["dev_eui"], 16),
            dev_nonce=1,
        )
        result = JoinServer(store).join(request.to_bytes(), at=0.0, gateway_ids=[gateways[0].id])
        sealing_key = serialization.load_pem_private_key(
            (tmp_path / "gateway-keys" / gateways[0].id / SEALING_KEY_FILE).read_bytes(), None
        )
        assert isinstance(sealing_key, X25519PrivateKey)
        opened = open_session(
            sealing_key, bytes.fromhex(gateways[0].id), result.sealed[gateways[0].id]
        )
        assert opened.dev_eui.hex() == otaa["dev_eui"]
        abp = [d for d in manifest["devices"] if d["activation"] == "abp"]
        assert store.device_keys(abp[0]["dev_eui"]).nwk_s_key == bytes.fromhex(abp[0]["nwk_s_key"])


def test_seed_is_reproducible_and_refuses_bad_input(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert seed(tmp_path / "a", "--nodes", "3", "--seed", "1")[0] == 0
    assert seed(tmp_path / "b", "--nodes", "3", "--seed", "1")[0] == 0
    devices = [
        json.loads((tmp_path / d / "emulator-secrets.json").read_text())["devices"]
        for d in ("a", "b")
    ]
    assert devices[0] == devices[1]
    code, _, err = seed(tmp_path, "--nodes", "-1")
    assert code == 2
    assert err.strip() == "error: --gateways and --nodes must not be negative"
    code, _, err = seed(tmp_path / "missing")
    assert code == 2
    assert "does not exist" in err
    assert len(err.strip().splitlines()) == 1
    # Seeding the same ids into the same database again: a duplicate, one line, exit 2.
    code, _, err = seed(tmp_path / "a", "--nodes", "3", "--seed", "1")
    assert code == 2
    assert "already registered" in err


def test_seed_takes_devices_per_profile_and_the_share_of_otaa(tmp_path: Path) -> None:
    code, out, err = seed(
        tmp_path, "--profiles", "parking-v1=3,waste-bin-v1=2", "--otaa-every", "0", "--seed", "4"
    )
    assert code == 0, err
    assert "5 devices (5 ABP, 0 OTAA)" in out
    devices = json.loads((tmp_path / "emulator-secrets.json").read_text())["devices"]
    assert [d["profile_id"] for d in devices] == ["parking-v1"] * 3 + ["waste-bin-v1"] * 2
    assert {d["activation"] for d in devices} == {"abp"}
    (tmp_path / "b").mkdir()
    assert seed(tmp_path / "b", "--profiles", "environment-v1=6", "--otaa-every", "3")[0] == 0
    devices = json.loads((tmp_path / "b" / "emulator-secrets.json").read_text())["devices"]
    assert [d["activation"] for d in devices] == ["abp", "abp", "otaa"] * 2
    for bad, why in (
        ("parking-v1", "is not PROFILE=COUNT"),
        ("parking-v1=x", "is not PROFILE=COUNT"),
        ("lamp-v1=3", "unknown device profile 'lamp-v1'"),
    ):
        code, _, err = seed(tmp_path / "b", "--profiles", bad)
        assert code == 2
        assert why in err
        assert len(err.strip().splitlines()) == 1
    code, _, err = seed(tmp_path / "b", "--otaa-every", "-1")
    assert code == 2
    assert "--otaa-every must be 0 or more" in err


def test_build_server_runs_services_beside_the_api(tmp_path: Path) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def service(store: Store) -> AsyncIterator[str]:
        events.append(f"start {len(store.profiles())}")
        yield "running"
        events.append("stop")

    async def scenario() -> int:
        with Store(":memory:") as store:
            token = create_token(store, role="operator", name="t")
            server = build_server(store, host="127.0.0.1", port=_free_port(), services=[service])
            task = asyncio.create_task(server.serve())
            try:
                for _ in range(200):
                    if server.started:
                        break
                    await asyncio.sleep(0.01)
                port = server.servers[0].sockets[0].getsockname()[1]
                async with httpx.AsyncClient() as http:
                    response = await http.get(
                        f"http://127.0.0.1:{port}/api/v1/gateways",
                        headers={"Authorization": f"Bearer {token}"},
                    )
            finally:
                server.should_exit = True
                await asyncio.wait_for(task, 10)
            return response.status_code

    assert asyncio.run(scenario()) == 200
    assert events == ["start 3", "stop"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_as_a_process(tmp_path: Path) -> None:
    assert seed(tmp_path, "--gateways", "1", "--nodes", "2")[0] == 0
    # seed writes an admin token beside the database, for the demo and for this.
    token_file = tmp_path / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    port = _free_port()
    code = (
        "import sys; from owlgate.fleet.cli import fleet_command; "
        "fleet_command(sys.argv[1:], prog_name='owlgate fleet')"
    )
    argv = [
        sys.executable,
        "-c",
        code,
        "serve",
        "--db",
        str(tmp_path / "fleet.db"),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(port),
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ}
    )
    try:
        body = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/gateways", headers=auth, timeout=1
                )
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            body = response.json()
            break
        assert body is not None, "serve did not answer"
        assert len(body["items"]) == 1
        assert body["items"][0]["health"]["state"] == "never_seen"
        spec = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()
        assert "/api/v1/nodes/{dev_eui}/readings" in spec["paths"]
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert process.returncode in (0, -15)


def test_serve_refuses_bad_input(tmp_path: Path) -> None:
    result = RUNNER.invoke(fleet_command, ["serve", "--db", str(tmp_path / "no" / "f.db")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    result = RUNNER.invoke(fleet_command, ["serve", "--http-port", "70000"])
    assert result.exit_code == 2
    assert "--http-port" in result.stderr
    for bad in ("a/b", "", "-x"):
        result = RUNNER.invoke(fleet_command, ["serve", "--instance", bad])
        assert result.exit_code == 2
        assert "--instance" in result.stderr
    result = RUNNER.invoke(fleet_command, ["serve", "--verify-workers", "-1"])
    assert result.exit_code == 2
    assert "--verify-workers" in result.stderr
