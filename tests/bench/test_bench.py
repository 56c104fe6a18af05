"""``owlgate bench``: the figures the issue names are all measured and written as JSON.

Only a smoke run (``--quick``) here: the numbers are measurements for people, never asserted as
timings in the suite. Sizes are not timings: those are checked exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from owlgate.bench.codec_bench import GATEWAY, SEQ, parking_readings
from owlgate.codecs.cli import app
from owlgate.codecs.node.telemetry import Batch, encode_batch

REQUIRED = [
    "codec.telemetry_bytes_per_reading_batch100",
    "codec.telemetry_bytes_single",
    "codec.lorawan_decode_us",
    "codec.telemetry_encode_us_per_reading",
    "codec.frame_roundtrip_us",
    "edge.pipeline_us_per_uplink",
]


def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--quick", "--json", str(out)])
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
    assert figures["meta"]["cpus"] >= 1


def test_size_figures_are_the_encoded_sizes(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--quick", "--json", str(out)])
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
