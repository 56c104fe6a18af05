"""``owlgate demo`` end to end: fleet, broker, emulated gateways and devices and edge agents as
separate processes; every generated reading must be stored, on the embedded broker and on
Mosquitto. Plus the pieces that need no processes: the edge configuration and the summary."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from owlgate.hil.demo import edge_config, neighbourhood, refusals, summarise
from tests.mqtt_servers import MosquittoServer

pytest_plugins = ["tests.brokers"]


def _run_demo(tmp_path: Path, *extra: str) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-m", "owlgate.codecs.cli", "demo", "--duration", "8",
         "--gateways", "2", "--nodes", "8", "--http-port", "0", "--seed", "5",
         "--hostile-every", "1", "--overlap", "0.5",
         "--workdir", str(tmp_path / "demo"), *extra],
        capture_output=True, text=True, timeout=90, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    counts = {}
    for label in ("readings generated", "readings stored", "readings missing",
                  "uplinks heard by two gateways", "duplicates merged", "rejected"):  # fmt: skip
        match = re.search(rf"{label}\s*│\s*(\d+)", result.stdout)
        assert match, result.stdout
        counts[label] = int(match.group(1))
    assert "every generated reading was stored" in result.stdout
    # Every kind of bad input was sent at least once and refused as often as it was sent.
    rows = re.findall(r"│ (.+?)\s*│ (edge|fleet)\s*│\s*(\d+) │\s*(\d+) │ (.) │", result.stdout)
    assert len(rows) == 7, result.stdout
    for what, _, sent, refused, mark in rows:
        assert int(sent) >= 1, what
        assert int(refused) >= int(sent), what
        assert mark == "✓", what
    assert "not refused" not in result.stdout
    return counts


def _check(counts: dict[str, int]) -> None:
    # 8 devices reporting every 3 s for 8 s: at least one reading each from the ABP half.
    assert counts["readings generated"] >= 4
    assert counts["readings stored"] == counts["readings generated"]
    assert counts["readings missing"] == 0
    # Half of each gateway's devices are heard by the other one too: those frames are merged.
    assert counts["uplinks heard by two gateways"] >= 1
    assert 1 <= counts["duplicates merged"] <= counts["uplinks heard by two gateways"]
    assert counts["rejected"] >= 7


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


def test_refusals_compare_what_was_sent_with_what_was_counted() -> None:
    reports = [
        {"hostile": {"replay": 2, "bad_mic": 1, "crc_bad": 1, "line_noise": 1}},
        {"hostile": {"replay": 1, "bad_mic": 0, "crc_bad": 1, "line_noise": 2}},
    ]
    statuses = [
        {
            "lorawan": {"rejected_replay": 2, "rejected_mic_failed": 1},
            "radio": {"rx_crc_bad": 1, "link_crc_errors": 1},
        },
        {
            "lorawan": {"rejected_replay": 1, "rejected_mic_failed": 0},
            "radio": {"rx_crc_bad": 0, "link_frame_errors": 1, "link_invalid": 1},
        },
    ]
    stats = {"ingest": {"rejected": {"signature": 2, "wrong_gateway": 1}, "batch_duplicates": 3}}
    sent = {"forged": 1, "unsigned": 1, "wrong_gateway": 1, "repeated": 1}
    found = {
        r.what: (r.where, r.sent, r.refused, r.ok) for r in refusals(reports, statuses, stats, sent)
    }
    assert found["replayed frames"] == ("edge", 3, 3, True)
    assert found["frames with an altered MIC"] == ("edge", 1, 1, True)
    # One CRC-bad frame was not counted as refused: that is a failure the demo reports.
    assert found["frames with a bad radio CRC"] == ("edge", 2, 1, False)
    assert found["line noise on the serial link"] == ("edge", 3, 3, True)
    assert found["batches signed with a foreign key, or unsigned"] == ("fleet", 2, 2, True)
    assert found["batches naming another gateway"] == ("fleet", 1, 1, True)
    assert found["a real batch published twice"] == ("fleet", 1, 3, True)
    summary = summarise([], {})
    assert summary.ok
    failing = dataclasses.replace(summary, refusals=refusals(reports, statuses, stats, sent))
    assert not failing.ok


def test_neighbours_form_a_ring_sharing_the_first_devices() -> None:
    gateways = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    euis = [f"{n:016x}" for n in range(12)]
    mine, shared = neighbourhood(gateways, euis, 0.25)
    assert mine == [euis[0::3], euis[1::3], euis[2::3]]
    assert shared == [[euis[0]], [euis[1]], [euis[2]]]
    assert neighbourhood(gateways[:1], euis, 0.5)[1] == [[]]
