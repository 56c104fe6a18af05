"""Scenario files: the shipped scenarios, expansion, and errors that name file, table and key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from owlgate.hil.faults import Fault, FaultPlan
from owlgate.hil.radio_world import Transmission
from owlgate.hil.scenario import (
    BackhaulDown,
    BinFill,
    NoisySerial,
    ParkingDay,
    PowerCut,
    ScenarioError,
    load_scenario,
    parse_duration,
    shipped_scenarios,
)

EXPECTED = {
    # file: (gateways, sensors by profile)
    "parking-street.toml": (2, {"parking-v1": 200}),
    "bins-and-outage.toml": (4, {"waste-bin-v1": 300, "environment-v1": 100}),
    "district-1000.toml": (6, {"parking-v1": 400, "waste-bin-v1": 350, "environment-v1": 250}),
    "bielefeld.toml": (
        100,
        {"parking-v1": 4000, "waste-bin-v1": 4000, "environment-v1": 2000},
    ),
}

MINIMAL = """\
[district]
name = "test"
size = [1000, 500]
seed = 3
duration = "6h"

[[gateways]]
id = "gw-a"
position = [250, 250]

[[gateways]]
id = "gw-b"
position = [750, 250]

[[sensors]]
profile = "parking-v1"
count = 10
placement = "line"
from = [0, 100]
to = [1000, 100]
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_four_scenarios_ship_with_the_package() -> None:
    assert sorted(p.name for p in shipped_scenarios()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_scenarios_expand_as_declared(name: str) -> None:
    (path,) = [p for p in shipped_scenarios() if p.name == name]
    scenario = load_scenario(path)
    gateways, by_profile = EXPECTED[name]
    first = scenario.expand()
    assert len(first.gateways) == gateways
    counts: dict[str, int] = {}
    for sensor in first.sensors:
        counts[sensor.profile] = counts.get(sensor.profile, 0) + 1
    assert counts == by_profile
    district = scenario.district
    points = [(g.gateway.x_m, g.gateway.y_m) for g in first.gateways] + [
        (s.device.x_m, s.device.y_m) for s in first.sensors
    ]
    assert all(0 <= x <= district.width_m and 0 <= y <= district.height_m for x, y in points)
    assert len({s.device.device_id for s in first.sensors}) == len(first.sensors)
    assert len({g.gateway.gateway_id for g in first.gateways}) == gateways
    # Same seed, same places; the district's seed is the default.
    assert scenario.expand(district.seed) == first
    assert scenario.expand() == first


def test_a_different_seed_moves_the_randomly_placed_sensors() -> None:
    (path,) = [p for p in shipped_scenarios() if p.name == "bins-and-outage.toml"]
    scenario = load_scenario(path)
    one, other = scenario.expand(1), scenario.expand(2)
    assert [s.device.device_id for s in one.sensors] == [s.device.device_id for s in other.sensors]
    assert [s.device for s in one.sensors] != [s.device for s in other.sensors]
    # The grid of gateways does not depend on the seed.
    assert one.gateways == other.gateways


def test_bins_and_outage_schedule_reads_into_typed_faults() -> None:
    (path,) = [p for p in shipped_scenarios() if p.name == "bins-and-outage.toml"]
    scenario = load_scenario(path)
    backhaul, power, noisy = scenario.faults
    assert backhaul == BackhaulDown(("gw-001", "gw-002"), 8 * 3600.0, 2 * 3600.0)
    assert power == PowerCut("gw-003", 13 * 3600.0, 20 * 60.0)
    assert isinstance(noisy, NoisySerial)
    faults = noisy.serial_faults()
    assert [(f.kind, f.direction, f.probability) for f in faults] == [
        ("corrupt", "to_host", 0.001),
        ("drop", "to_host", 0.001),
    ]
    bins, _environment = scenario.traffic
    assert bins == BinFill(2.5, (6.5 * 3600, 18 * 3600.0))


def test_noisy_serial_faults_drive_a_fault_plan(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """
[[faults]]
kind = "noisy_serial"
gateway = "gw-a"
at = "1h"
duration = "15m"
kinds = ["drop"]
probability = 1.0
""",
    )
    (noisy,) = load_scenario(path).faults
    assert isinstance(noisy, NoisySerial)
    plan = FaultPlan(list(noisy.serial_faults()))
    assert plan.apply("to_host", b"abc").data == b""
    assert plan.apply("to_device", b"abc").data == b"abc"
    assert len(plan.log.events("drop")) == 3
    assert all(isinstance(f, Fault) for f in noisy.serial_faults())


def test_minimal_scenario_values_and_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(
        write(
            tmp_path,
            MINIMAL.replace('duration = "6h"', 'duration = "1h30m"\nstart = "07:45"')
            + '\n[[traffic]]\npattern = "parking-day"\noccupancy = '
            + str([0.5] * 24)
            + "\n",
        )
    )
    district = scenario.district
    assert (district.name, district.width_m, district.height_m, district.seed) == (
        "test",
        1000.0,
        500.0,
        3,
    )
    assert (district.duration_s, district.start_s) == (5400.0, 7 * 3600 + 45 * 60.0)
    assert scenario.gateway_ids == ("gw-a", "gw-b")
    (sensors,) = scenario.sensors
    assert (sensors.prefix, sensors.report_interval_s) == ("parking", 600.0)
    assert scenario.traffic == (ParkingDay((0.5,) * 24),)
    placed = scenario.expand().sensors
    assert [s.device.device_id for s in placed[:2]] == ["parking-00001", "parking-00002"]
    assert [(s.device.x_m, s.device.y_m) for s in placed[:2]] == [(50.0, 100.0), (150.0, 100.0)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0), ("1h30m", 5400.0)],
)
def test_durations(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "h", "2 h", "2x", "1h 30m", "-5m", "m15"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("change", "table", "key", "problem"),
    [
        (
            ("[[sensors]]\n", '[[sensors]]\ncolour = "red"\n'),
            "sensors[0]",
            "colour",
            "unknown key",
        ),
        (('duration = "6h"', 'duration = "6 hours"'), "district", "duration", "a duration"),
        (('profile = "parking-v1"', 'profile = "tank-v1"'), "sensors[0]", "profile", "tank-v1"),
        (("count = 10", "count = -3"), "sensors[0]", "count", "an integer 1..1000000"),
        (("size = [1000, 500]", 'size = "big"'), "district", "size", "[width, height]"),
        (("position = [750, 250]", "position = [750, 900]"), "gateways[1]", "position", "outside"),
        (('id = "gw-b"', 'id = "gw-a"'), "gateways", "id", "declared twice"),
        (('placement = "line"', 'placement = "spiral"'), "sensors[0]", "placement", "one of"),
        (('name = "test"\n', ""), "district", "name", "required"),
    ],
)
def test_errors_name_file_table_and_key(
    tmp_path: Path, change: tuple[str, str], table: str, key: str, problem: str
) -> None:
    assert change[0] in MINIMAL
    path = write(tmp_path, MINIMAL.replace(change[0], change[1], 1))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    err = caught.value
    assert (err.file, err.table, err.key) == (str(path), table, key)
    assert problem in err.problem
    assert str(err).startswith(f"{path}: [{table}] {key}: ")


@pytest.mark.parametrize(
    ("fault", "key", "problem"),
    [
        ('kind = "power_cut"\ngateway = "gw-z"\nat = "1h"\nduration = "5m"', "gateway", "gw-z"),
        (
            'kind = "backhaul_down"\ngateways = ["gw-a", "gw-q"]\nat = "1h"\nduration = "2h"',
            "gateways",
            "unknown gateway 'gw-q'",
        ),
        (
            'kind = "power_cut"\ngateway = "gw-a"\nat = "7h"\nduration = "5m"',
            "at",
            "before the end",
        ),
        ('kind = "power_cut"\ngateway = "gw-a"\nat = "1h"\nduration = "0s"', "duration", "zero"),
        ('kind = "meteor"\nat = "1h"', "kind", "one of backhaul_down"),
        (
            'kind = "noisy_serial"\ngateway = "gw-a"\nat = "1h"\nduration = "5m"\n'
            'kinds = ["unplug"]\nprobability = 0.1',
            "kinds",
            "corrupt, drop",
        ),
        (
            'kind = "noisy_serial"\ngateway = "gw-a"\nat = "1h"\nduration = "5m"\nprobability = 2',
            "probability",
            "0..1",
        ),
        ('kind = "broker_restart"\nat = "1h"\ngateway = "gw-a"', "gateway", "unknown key"),
    ],
)
def test_fault_errors(tmp_path: Path, fault: str, key: str, problem: str) -> None:
    path = write(tmp_path, MINIMAL + "\n[[faults]]\n" + fault + "\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert (caught.value.table, caught.value.key) == ("faults[0]", key)
    assert problem in caught.value.problem


def test_file_level_errors_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ScenarioError, match="unknown table") as caught:
        load_scenario(write(tmp_path, MINIMAL + "\n[weather]\nrain = true\n"))
    assert caught.value.table == "weather"
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(write(tmp_path, "[district\n"))
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    with pytest.raises(ScenarioError, match="bin-fill drives waste-bin-v1") as caught:
        load_scenario(
            write(tmp_path, MINIMAL + '\n[[traffic]]\npattern = "bin-fill"\nfill_per_hour = 1\n')
        )
    assert (caught.value.table, caught.value.key) == ("traffic[0]", "pattern")
    refused = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refused) == 4
    assert all("scenario refused" in r.getMessage() for r in refused)


def test_an_expanded_scenario_runs_in_the_radio_world() -> None:
    (path,) = [p for p in shipped_scenarios() if p.name == "parking-street.toml"]
    expanded = load_scenario(path).expand()
    world = expanded.radio_world()
    # One frame from every tenth bay, a second apart, so none overlap.
    sent = [
        Transmission(sensor.device.device_id, float(n), 868_100_000, 7, 20)
        for n, sensor in enumerate(expanded.sensors[::10])
    ]
    result = world.run(sent)
    assert set(result.gateways) == {"gw-west", "gw-east"}
    assert result.counters["sent"] == len(sent)
    # Every bay is within 700 m of a gateway: at SF7 each frame is heard somewhere.
    assert all(result.heard_by(t) for t in sent)
    assert not result.refused


def test_the_example_in_the_docs_loads(tmp_path: Path) -> None:
    docs = (Path(__file__).parents[2] / "docs" / "hil.md").read_text(encoding="utf-8")
    section = docs.split("## Scenarios", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    scenario = load_scenario(write(tmp_path, example, "market.toml"))
    expanded = scenario.expand()
    assert (len(expanded.gateways), len(expanded.sensors)) == (3, 120)
    assert scenario.gateway_ids == ("gw-town-hall", "gw-roof-001", "gw-roof-002")
    assert [type(f).__name__ for f in scenario.faults] == ["BackhaulDown", "NoisySerial"]
