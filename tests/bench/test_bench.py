"""``owlgate bench``: the figures the issue names are all measured and written as JSON.

Only a smoke run (``--quick``) here: the numbers are measurements for people, never asserted as
timings in the suite. Sizes are not timings: those are checked exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from owlgate.bench.codec_bench import GATEWAY, SEQ, parking_readings
from owlgate.codecs.cli import app
from owlgate.codecs.node.telemetry import Batch, encode_batch
from owlgate.hil.processes import find_postgres
from tests.mqtt_servers import mosquitto_binary

REQUIRED = [
    "codec.telemetry_bytes_per_reading_batch100",
    "codec.telemetry_bytes_single",
    "codec.lorawan_decode_us",
    "codec.telemetry_encode_us_per_reading",
    "codec.frame_roundtrip_us",
    "edge.pipeline_us_per_uplink",
    "edge.outbox_enqueue_per_s",
]


def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # The suites that need servers have tests of their own below.
    suites = ["--suite", "codec", "--suite", "edge"]
    result = CliRunner().invoke(app, ["bench", *suites, "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    for name in REQUIRED:
        assert isinstance(figures[name], float | int), name
        assert figures[name] > 0, name
        assert name in figures["units"]
    # Comparison figures sit beside the size figures.
    for name in REQUIRED[:2]:
        for other in ("chirpstack_json", "senml_cbor", "senml_json"):
            assert figures[f"{name}.{other}"] > figures[name]
    assert figures["goals"]["codec.lorawan_decode_us"] == {"max": 6}
    assert figures["goals"]["codec.telemetry_bytes_per_reading_batch100"] == {"max": 24}
    assert figures["goals"]["edge.pipeline_us_per_uplink"] == {"max": 50}
    assert figures["medians"]["edge.pipeline_us_per_uplink"] > 0
    assert figures["goals"]["edge.outbox_enqueue_per_s"] == {"min": 50_000}
    assert figures["meta"]["cpus"] >= 1
    # The drain figure needs Mosquitto: without it this skips here (fails under CI=true).
    mosquitto_binary()
    assert figures["edge.outbox_drain_per_s"] > 0
    assert figures["goals"]["edge.outbox_drain_per_s"] == {"min": 20_000}
    assert figures["units"]["edge.outbox_drain_per_s"] == "readings/s"


def test_size_figures_are_the_encoded_sizes(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--suite", "codec", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    readings = parking_readings(100)
    batch = encode_batch(Batch(GATEWAY, SEQ, readings[0].time_s, readings))
    assert figures["codec.telemetry_bytes_per_reading_batch100"] == round(len(batch) / 100, 3)
    singles = [len(encode_batch(Batch(GATEWAY, SEQ, r.time_s, [r]))) for r in readings]
    assert figures["codec.telemetry_bytes_single"] == round(sum(singles) / 100, 3)


def test_unknown_suite_is_refused() -> None:
    result = CliRunner().invoke(app, ["bench", "--suite", "nope"])
    assert result.exit_code == 2
    assert "unknown suite nope" in result.stderr


def test_fleet_suite_measures_both_brokers(tmp_path: Path) -> None:
    """The fleet figures come from a real ``owlgate fleet serve`` fed over MQTT, once on the
    embedded broker and once on a Mosquitto the bench starts itself; the suite fails rather
    than report a figure for which a published reading went missing."""
    mosquitto_binary()  # skips locally without Mosquitto, fails under CI=true
    if find_postgres() is None:
        message = "PostgreSQL server programs not found (Debian package postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: a missing binary is a failure)")
        pytest.skip(message)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--suite", "fleet", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    for broker in ("embedded", "mosquitto"):
        name = f"fleet.ingest_readings_per_s.{broker}"
        assert figures[name] > 0, name
        assert figures[f"{name}.publish"] > 0, name
        assert figures["units"][name] == "readings/s"
        assert figures["goals"][name] == {"min": 20000}
        assert figures["medians"][name] > 0
    # The same on PostgreSQL (skipped only when its programs are missing, failed under CI).
    postgres = "fleet.ingest_readings_per_s_postgres"
    assert figures[postgres] > 0
    assert figures["goals"][postgres] == {"min": 20000}


def test_e2e_suite_measures_the_running_system(tmp_path: Path) -> None:
    """Latency from the radio to the fleet's database, and the agent's memory and CPU, from a
    real fleet and edge agent; the suite fails rather than report a latency with a reading
    missing."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--suite", "e2e", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    latency = "e2e.latency_ms_p99"
    assert 0 < figures[f"{latency}.p50"] <= figures[latency] <= figures[f"{latency}.max"]
    assert figures["goals"][latency] == {"max": 250}
    assert figures["goals"]["edge.rss_mb"] == {"max": 60}
    # A Python process with the agent's imports is tens of megabytes, never a handful.
    assert figures["edge.rss_mb"] > 20
    assert figures["edge.cpu_pct"] > 0
    assert figures["units"]["edge.cpu_pct"] == "% of a core"


def test_serial_suite_measures_the_paced_line_and_the_replug(tmp_path: Path) -> None:
    """Goodput through a paced line to the real serial backend, and recovery after a replug;
    the suite fails rather than report a burst with a frame lost or reordered."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--suite", "serial", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    for baud in (115200, 921600):
        name = f"serial.goodput_ratio_{baud}"
        assert figures["goals"][name] == {"min": 0.9}
        assert figures["units"][name] == "ratio"
        # Message bytes are a fixed share of the serial frame bytes: 5 bytes of framing each.
        assert 0.9 < figures[f"{name}.framing_efficiency"] < 0.96
        assert 0 < figures[f"{name}.phy_payload"] < figures[name] <= 1.01
    assert figures["goals"]["edge.recovery_s"] == {"max": 2.0}
    assert 0 < figures["edge.recovery_s"] <= figures["edge.recovery_s.max"]


def test_offline_suite_measures_a_power_cut(tmp_path: Path) -> None:
    """A stopped agent (a power cut: no TCP close) shown offline by the fleet API, once through
    the Last Will and once through the heartbeat rule; on a Mosquitto the bench starts."""
    mosquitto_binary()
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--suite", "offline", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["goals"]["fleet.offline_detect_s"] == {"max": 7.5}
    assert figures["goals"]["fleet.offline_detect_s.embedded"] == {"max": 7.5}
    assert figures["goals"]["fleet.offline_detect_s.heartbeat"] == {"max": 6}
    # The embedded broker cuts a silent client after exactly 1.5 keep-alives: its Will comes
    # at least half a keep-alive after the cut, and it comes (no waiting out the heartbeat).
    assert 1.5 * 5 - 5 <= figures["fleet.offline_detect_s.embedded"] < 2 * 60
    # Never sooner than the rules allow: the Will after 1.5 keep-alives of silence counted from
    # the last packet (at most one keep-alive before the cut), offline after 2 heartbeat
    # intervals counted from the last health message (at most one interval before the cut).
    assert figures["fleet.offline_detect_s"] >= 1.5 * 5 - 5
    assert figures["fleet.offline_detect_s.heartbeat"] >= 2 * 3 - 3


def test_api_suite_measures_the_routes_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API latency figure: a seeded database (cached under OWLGATE_BENCH_CACHE), a real
    ``owlgate fleet serve``, the four routes over HTTP with a bearer token."""
    monkeypatch.setenv("OWLGATE_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--suite", "api", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["goals"]["fleet.api_p99_ms"] == {"max": 50}
    assert figures["units"]["fleet.api_p99_ms"] == "ms"
    assert figures["fleet.api_p99_ms"] > 0
    assert any((tmp_path / "cache").iterdir())
