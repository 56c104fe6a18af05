"""Bulk provisioning through the CLI: a list of ports with a progress bar and a CSV report,
the expected-devices list, the next-module prompts, and a resume after an interruption."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from owlgate.codecs.cli import app
from tests.provisioning.conftest import ModuleBench, NodeFleet

PROFILE = "parking-v1"


def run(fleet: NodeFleet, token: Path, tmp_path: Path, *args: str, stdin: str = "") -> Any:
    argv = ["provision", "node", "--fleet", fleet.http_url, "--token-file", str(token)]
    argv += ["--profile", PROFILE, "--journal", str(tmp_path / "journal.jsonl")]
    argv += ["--reply-timeout", "0.3", *args]
    return CliRunner().invoke(app, argv, input=stdin)


def report_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as source:
        return list(csv.DictReader(source))


def test_a_list_of_ports_ends_in_a_report_of_every_module(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path
) -> None:
    rak, rn = modules.rak(), modules.rn()
    missing = tmp_path / "dev" / "ttyUSB9"
    report = tmp_path / "report.csv"
    ports = ["--port", str(rak.path), "--port", str(rn.path), "--port", str(missing)]
    labels = tmp_path / "labels"
    result = run(node_fleet, node_fleet.token_file(), tmp_path, *ports, "--report", str(report),
                 "--labels", str(labels))  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "2 of 3 modules provisioned" in result.output
    rows = report_rows(report)
    assert [row["port"] for row in rows] == [str(rak.path), str(rn.path), str(missing)]
    assert [row["result"] for row in rows] == ["provisioned", "provisioned", "failed"]
    assert [row["module"] for row in rows] == ["RAK3172", "RN2483", ""]
    assert rows[0]["dev_eui"] == rak.factory_dev_eui.hex()
    assert rows[1]["firmware"].startswith("RN2483 1.0.5")
    assert "cannot open" in rows[2]["detail"]
    assert list(rows[0]) == ["dev_eui", "port", "module", "firmware", "result", "detail",
                             "time", "join_eui", "profile_id", "site", "join"]  # fmt: skip
    # Labels for the two provisioned modules only.
    assert sorted(path.name for path in labels.glob("*.png")) == sorted(
        f"{row['dev_eui'].upper()}.png" for row in rows[:2]
    )
    # Never a key in the report.
    assert rak.app_key.hex() not in report.read_text().lower()


def test_a_module_not_expected_is_refused(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path
) -> None:
    listed, stranger = modules.rak(), modules.rak()
    expect = tmp_path / "devices.csv"
    expect.write_text(f"dev_eui,name\n{listed.factory_dev_eui.hex().upper()},bay 1\n")
    result = run(node_fleet, node_fleet.token_file(), tmp_path, "--port", str(listed.path),
                 "--port", str(stranger.path), "--expect", str(expect), "--json")  # fmt: skip
    assert result.exit_code == 1
    answers = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [a["result"] for a in answers] == ["provisioned", "refused"]
    assert "not in the list of expected devices" in answers[1]["detail"]
    assert stranger.app_key == bytes(16)
    bad = tmp_path / "bad.csv"
    bad.write_text("dev_eui\nnot-an-eui\n")
    refused = run(node_fleet, node_fleet.token_file(), tmp_path, "--port", str(listed.path),
                  "--expect", str(bad))  # fmt: skip
    assert refused.exit_code == 2
    assert "line 2" in refused.output


def test_next_prompts_until_q(modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path) -> None:
    rak = modules.rak()
    result = run(node_fleet, node_fleet.token_file(), tmp_path, "--port", str(rak.path),
                 "--next", stdin="\n\nq\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.count("connect the next module") == 3
    assert "provisioned: written" in result.output
    assert "skipped: already provisioned (journal" in result.output
    assert "2 of 2 modules provisioned" in result.output


def journal_steps(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [
        (entry["dev_eui"], entry["step"])
        for entry in map(json.loads, path.read_text().splitlines())
    ]


def test_a_rerun_after_a_kill_skips_finished_modules_and_completes_the_half_done_one(
    modules: ModuleBench, node_fleet: NodeFleet, tmp_path: Path
) -> None:
    done, interrupted = modules.rak(), modules.rn()
    token = node_fleet.token_file()
    rn_eui = interrupted.hweui.hex()
    journal = tmp_path / "journal.jsonl"
    # A slow module, and the laptop dies (SIGKILL) once the fleet has registered it.
    interrupted.faults.reply_delay_s = 0.2
    ports = ["--port", str(done.path), "--port", str(interrupted.path)]
    argv = [str(Path(sys.executable).parent / "owlgate"), "provision", "node", "--fleet",
            node_fleet.http_url, "--token-file", str(token), "--profile", PROFILE,
            "--journal", str(journal), "--json", *ports]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child:
        deadline = time.monotonic() + 30
        while (rn_eui, "registered") not in journal_steps(journal):
            assert child.poll() is None, child.stdout.read() if child.stdout else b""
            assert time.monotonic() < deadline, "the run never registered the second module"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
    steps = journal_steps(journal)
    assert (done.factory_dev_eui.hex(), "provisioned") in steps
    assert (rn_eui, "provisioned") not in steps
    assert interrupted.saved["appkey"] == bytes(16)
    assert "app_key" not in journal.read_text().lower()
    interrupted.faults.reply_delay_s = 0.0
    writes_before = len(done.commands)
    second = run(node_fleet, token, tmp_path, *ports, "--json", "--show-key")
    assert second.exit_code == 0, second.output
    again = [json.loads(line) for line in second.output.strip().splitlines()]
    assert [a["result"] for a in again] == ["skipped", "provisioned"]
    assert "resumed after 'registered'" in again[1]["detail"]
    assert "the fleet already had it (same key)" in again[1]["detail"]
    assert interrupted.saved["appkey"].hex().upper() == again[1]["app_key"]
    # The finished module was identified, not written again.
    assert not [c for c in done.commands[writes_before:] if c.startswith("AT+APPKEY=")]
