"""``owlgate hil showcase`` (the codec showcase): every hop decodes back, every fault is
refused, and the verdict really depends on the checks."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from owlgate.codecs import lorawan
from owlgate.codecs.cli import app
from owlgate.codecs.node.telemetry import decode_batch
from owlgate.codecs.payloads import decode_uplink
from owlgate.hil.showcase import run_showcase

RUNNER = CliRunner()


def test_showcase_command_runs_and_says_so() -> None:
    result = RUNNER.invoke(
        app, ["hil", "showcase", "--seed", "7", "--readings", "20"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "seed 7" in out
    for hop in run_showcase(7, 20).hops:
        # Long names wrap inside the table: look for their first words.
        assert " ".join(hop.name.split()[:2]) in out
        assert hop.data[:8].hex() in out
    assert "every hop decoded back to what was sent; every fault was refused" in out
    assert "ChirpStack-style JSON uplink event" in out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 99, 2**32 - 1])
def test_every_hop_and_fault_holds_for_many_seeds(seed: int) -> None:
    show = run_showcase(seed, 10)
    assert [hop.name for hop in show.hops if not hop.ok] == []
    assert [fault.name for fault in show.faults if not fault.ok] == []
    assert len(show.hops) == 7
    assert len(show.faults) == 5


def test_hops_show_the_real_bytes() -> None:
    show = run_showcase(11, 10)
    by_name = {hop.name.split(" (")[0]: hop for hop in show.hops}
    uplink = by_name["LoRaWAN uplink"].data
    frame = lorawan.DataFrame.from_bytes(uplink)
    assert frame.mtype is lorawan.MType.UNCONFIRMED_DATA_UP
    # The uplink carries the 6-byte parking payload: 13 bytes of overhead plus FPort.
    assert len(uplink) == 13 + len(by_name["device payload"].data)
    batch = decode_batch(by_name["telemetry batch"].data)
    assert len(batch.readings) == 1
    values = decode_uplink("parking-v1", frame.f_port or 0, by_name["device payload"].data)
    assert batch.readings[0].values == values
    assert batch.readings[0].fcnt == frame.fhdr.f_cnt
    # The signed batch holds the batch bytes verbatim.
    assert by_name["telemetry batch"].data in by_name["signed batch"].data


def test_same_seed_same_run_other_seed_other_run() -> None:
    first, again, other = run_showcase(5, 10), run_showcase(5, 10), run_showcase(6, 10)
    assert [hop.data for hop in first.hops] == [hop.data for hop in again.hops]
    assert first.sizes == again.sizes
    assert [hop.data for hop in first.hops] != [hop.data for hop in other.hops]


def test_sizes_compare_the_same_readings() -> None:
    sizes = {size.format: size for size in run_showcase(3, 100).sizes}
    compact = sizes["owlgate compact CBOR"]
    assert compact.bytes_per_reading <= 24
    for other in ("SenML-CBOR (RFC 8428)", "SenML-JSON (RFC 8428)"):
        assert sizes[other].bytes_per_reading > 5 * compact.bytes_per_reading
    assert sizes["ChirpStack-style JSON uplink event"].bytes_per_reading > 1000


def test_a_hop_that_does_not_decode_back_fails_the_showcase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = decode_uplink

    def wrong(profile: str, f_port: int, payload: bytes) -> dict[str, object]:
        values = real(profile, f_port, payload)
        return {**values, "battery_mv": 1}

    monkeypatch.setattr("owlgate.hil.showcase.decode_uplink", wrong)
    result = RUNNER.invoke(app, ["hil", "showcase", "--seed", "7", "--readings", "5"])
    assert result.exit_code == 1
    assert "a hop did not decode back" in result.stdout


def test_bad_options_exit_2() -> None:
    result = RUNNER.invoke(app, ["hil", "showcase", "--readings", "0"])
    assert result.exit_code == 2
