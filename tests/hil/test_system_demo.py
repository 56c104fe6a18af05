"""``owlgate demo`` end to end: fleet, broker, emulated gateways and devices and edge agents as
separate processes; every generated reading must be stored, on the embedded broker and on
Mosquitto. Plus the pieces that need no processes: the edge configuration and the summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from owlgate.hil.demo import edge_config, summarise
from tests.mqtt_servers import MosquittoServer

pytest_plugins = ["tests.brokers"]


def _run_demo(tmp_path: Path, *extra: str) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-m", "owlgate.codecs.cli", "demo", "--duration", "8",
         "--gateways", "2", "--nodes", "8", "--http-port", "0", "--seed", "5",
         "--workdir", str(tmp_path / "demo"), *extra],
        capture_output=True, text=True, timeout=90, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    counts = {}
    for label in ("generated", "stored", "missing"):
        match = re.search(rf"readings {label}\s*│\s*(\d+)", result.stdout)
        assert match, result.stdout
        counts[label] = int(match.group(1))
    assert "every generated reading was stored" in result.stdout
    return counts


def _check(counts: dict[str, int]) -> None:
    # 8 devices reporting every 3 s for 8 s: at least one reading each from the ABP half.
    assert counts["generated"] >= 4
    assert counts["stored"] == counts["generated"]
    assert counts["missing"] == 0


def test_demo_on_the_embedded_broker(tmp_path: Path) -> None:
    _check(_run_demo(tmp_path))


def test_demo_on_mosquitto(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    _check(_run_demo(tmp_path, "--broker", mosquitto.url))


def test_edge_config_is_valid_toml_naming_the_seeded_keys(tmp_path: Path) -> None:
    gateway = {"id": "00112233445566aa", "keys_dir": str(tmp_path / 'k "q"')}
    text = edge_config(gateway, state_dir=tmp_path / "s", port="/x/tty", mqtt_url="mqtt://h:1")
    config = tomllib.loads(text)
    assert config["gateway"]["id"] == "00112233445566aa"
    assert config["gateway"]["identity_key"] == str(tmp_path / 'k "q"' / "identity-ed25519.pem")
    assert config["gateway"]["fleet_key"].endswith("fleet-ed25519.pub.pem")
    assert config["radio"]["port"] == "/x/tty"
    assert config["mqtt"]["url"] == "mqtt://h:1"


def test_summary_counts_missing_unexpected_and_merged() -> None:
    reports = [
        {"readings": [{"dev_eui": "aa", "fcnt": 0}, {"dev_eui": "aa", "fcnt": 1}]},
        {"readings": [{"dev_eui": "bb", "fcnt": 0}]},
    ]
    stored = {
        "aa": [{"fcnt": 0, "receptions": [{}, {}]}, {"fcnt": 7, "receptions": [{}]}],
        "bb": [{"fcnt": 0, "receptions": [{}]}],
    }
    summary = summarise(reports, stored)
    assert (summary.generated, summary.stored, summary.missing) == (3, 2, 1)
    assert (summary.unexpected, summary.duplicates) == (1, 1)
    assert not summary.ok
    assert summarise(reports[1:], {"bb": stored["bb"]}).ok
