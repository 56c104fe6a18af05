"""Offline provisioning through the CLI against a real fleet: fetch a bundle (the laptop's
key 0600 beside it), provision modules with no fleet, sync, and a conflict reported, never
merged."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from owlgate.codecs.cli import app
from owlgate.provisioning.offline import BundleKeys, key_path, queue_path
from tests.provisioning.conftest import ModuleBench, NodeFleet

PROFILE = "parking-v1"


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def offline(bundle: Path, tmp_path: Path, *ports: str) -> Any:
    argv = ["provision", "node", "--offline", "--bundle", str(bundle), "--json", "--show-key"]
    argv += ["--journal", str(tmp_path / "journal.jsonl"), "--reply-timeout", "0.3"]
    for port in ports:
        argv += ["--port", port]
    return cli(*argv)


def test_offline_then_sync_with_a_conflict(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path
) -> None:
    token = node_fleet.token_file()
    bundle = tmp_path / "bundle.owlb"
    fetched = cli("provision", "bundle", "fetch", "--fleet", node_fleet.http_url, "--token-file",
                  str(token), "--count", "3", "--profile", PROFILE, "--site", "basement B2",
                  "--out", str(bundle))  # fmt: skip
    assert fetched.exit_code == 0, fetched.output
    assert "3 keys for parking-v1" in fetched.output
    assert stat.S_IMODE(key_path(bundle).stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    keys = {r.id: r.app_key for r in BundleKeys(bundle).bundle.reservations}

    first, second, twice = modules.rak(), modules.rn(), modules.rak()
    # A colleague provisions one module online before this laptop gets to it offline.
    colleague = node_fleet.token_file()
    journal = str(tmp_path / "colleague.jsonl")
    online = cli("provision", "node", "--fleet", node_fleet.http_url, "--token-file",
                 str(colleague), "--profile", PROFILE, "--port", str(twice.path),
                 "--journal", journal, "--reply-timeout", "0.3")  # fmt: skip
    assert online.exit_code == 0, online.output
    result = offline(bundle, tmp_path, str(first.path), str(second.path), str(twice.path))
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [a["result"] for a in answers] == ["provisioned"] * 3
    assert all("offline, queued for sync" in a["detail"] for a in answers)
    assert {a["app_key"] for a in answers} == {k.hex().upper() for k in keys.values()}
    assert first.app_key in keys.values()
    assert second.saved["appkey"] in keys.values()
    assert answers[0]["site"] == "basement B2"
    queued = queue_path(bundle).read_text()
    assert all(k.hex() not in queued.lower() for k in keys.values())

    # Every key is used: a fourth module is refused before anything is written.
    fourth = modules.rak()
    more = offline(bundle, tmp_path, str(fourth.path))
    assert more.exit_code == 1
    assert "every key of the bundle" in more.output
    assert fourth.app_key == bytes(16)

    sync = ["provision", "sync", "--fleet", node_fleet.http_url, "--token-file", str(token),
            "--bundle", str(bundle)]  # fmt: skip
    synced = cli(*sync)
    assert synced.exit_code == 1, synced.output
    lines = synced.output.strip().splitlines()
    assert f"{first.factory_dev_eui.hex()} (reservation" in lines[0]
    assert "created" in lines[0]
    assert "created" in lines[1]
    assert twice.factory_dev_eui.hex() in lines[2]
    assert ": conflict: " in lines[2]
    assert "already provisioned" in lines[2]
    assert lines[-1] == "3 registrations synced, 1 conflicts"
    device = node_fleet.admin("GET", f"/api/v1/nodes/{first.factory_dev_eui.hex()}")
    assert device.status_code == 200
    assert device.json()["profile_id"] == PROFILE
    # The conflict is not merged: the fleet keeps the online registration; a re-sync says so
    # again, and what was created is not sent twice.
    again = cli(*sync, "--json")
    assert again.exit_code == 1
    (still,) = json.loads(again.output)
    assert still["dev_eui"] == twice.factory_dev_eui.hex()
    assert still["result"] == "conflict"


def test_a_bundle_without_its_key_does_not_open(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.owlb"
    bundle.write_bytes(b"\x01" + bytes(60))
    result = offline(bundle, tmp_path, str(tmp_path / "ttyUSB0"))
    assert result.exit_code == 2
    assert "cannot read the bundle" in result.output
