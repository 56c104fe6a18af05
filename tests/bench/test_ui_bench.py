"""The dashboard figures end to end: api_bench's seeded file (quick scale) copied and given the
dashboard's rows, a real ``owlgate fleet serve``, both pages over HTTP with a bearer token."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from owlgate.bench import ui_bench
from owlgate.bench.api_bench import QUICK
from owlgate.codecs.cli import app


def test_ui_suite_measures_both_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWLGATE_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--suite", "ui", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["goals"]["ui.overview_ms"] == {"max": 1000}
    assert figures["goals"]["ui.gateway_page_ms"] == {"max": 300}
    for name in ("ui.overview_ms", "ui.gateway_page_ms"):
        assert figures["units"][name] == "ms"
        assert figures[name] > 0
        assert figures[f"{name}.p90"] >= figures[name]
        assert figures[f"{name}.first_render_ms"] > 0
        # The client waits for the whole answer, which includes the server's time.
        assert figures[f"{name}.client_ms"] >= figures[name]


def test_seeding_fills_the_dashboard_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OWLGATE_BENCH_CACHE", str(tmp_path / "cache"))
    now = 1_800_000_000.0
    path, kek = ui_bench.ui_database(QUICK, now)
    assert kek.stat().st_mode & 0o077 == 0
    db = sqlite3.connect(path)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        severities = {row[0] for row in db.execute("SELECT DISTINCT severity FROM alerts")}
        assert severities == {"critical", "warning", "info"}
        assert db.execute("SELECT COUNT(*) FROM device_sites").fetchone()[0] == QUICK.devices
        if "gateway_health" in tables:
            count, newest = db.execute("SELECT COUNT(*), MAX(at) FROM gateway_health").fetchone()
            assert count > QUICK.gateways * 1400
            assert now - 60 <= newest <= now
        if "ingest_minutes" in tables:
            assert db.execute("SELECT COUNT(*) FROM ingest_minutes").fetchone()[0] == 60
        if "gateway_sites" in tables:
            assert db.execute("SELECT COUNT(*) FROM gateway_sites").fetchone()[0] == QUICK.gateways
    finally:
        db.close()
