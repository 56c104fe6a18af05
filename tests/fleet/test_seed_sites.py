"""``owlgate fleet seed`` gives every seeded gateway and device a site: zones around
``--centre`` within ``--radius-m``, the same ones again with the same ``--seed``, none with
``--no-sites``; and the one projection from metres to degrees that seed and the HIL runner
share (:mod:`owlgate.fleet.geo`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from owlgate.fleet.cli import fleet_command
from owlgate.fleet.geo import DEFAULT_CENTRE, LatLon, distance_m, to_lat_lon, to_metres
from owlgate.fleet.store import InvalidError, Store
from owlgate.fleet.vault import KeyVault

RUNNER = CliRunner()


def seed(folder: Path, *extra: str) -> tuple[int, str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    result = RUNNER.invoke(fleet_command, ["seed", "--db", str(folder / "fleet.db"), *extra])
    return result.exit_code, result.stdout, result.stderr


def sites(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The gateway sites and device sites of the database seeded in ``folder``."""
    vault = KeyVault.from_file(folder / "gateway-keys" / "fleet-kek.json")
    with Store(folder / "fleet.db", vault=vault) as store:
        gateways = store.sql.query(
            "SELECT g.id, s.zone, s.lat, s.lon, s.label FROM gateways AS g "
            "LEFT JOIN gateway_sites AS s ON s.gateway_id = g.id ORDER BY g.name"
        )
        devices = store.sql.query(
            "SELECT d.dev_eui, s.zone, s.lat, s.lon FROM devices AS d "
            "LEFT JOIN device_sites AS s ON s.dev_eui = d.dev_eui ORDER BY d.dev_eui"
        )
    return gateways, devices


def test_seeded_gateways_and_devices_stand_within_the_radius(tmp_path: Path) -> None:
    code, out, err = seed(
        tmp_path,
        *("--gateways", "3", "--nodes", "12", "--seed", "5"),
        *("--centre", "48.1374,11.5755", "--radius-m", "800"),
    )
    assert code == 0, err
    assert "sites within 800 m of 48.1374,11.5755" in out
    centre = LatLon(48.1374, 11.5755)
    gateways, devices = sites(tmp_path)
    assert len(gateways) == 3
    assert len(devices) == 12
    for row in gateways + devices:
        assert row["lat"] is not None, row
        assert row["lon"] is not None, row
        assert distance_m(centre, LatLon(row["lat"], row["lon"])) <= 800.0, row
    assert [g["zone"] for g in gateways] == ["zone-1", "zone-2", "zone-3"]
    assert [g["label"] for g in gateways] == ["mast 1", "mast 2", "mast 3"]
    by_zone: dict[str, list[LatLon]] = defaultdict(list)
    for device in devices:
        by_zone[device["zone"]].append(LatLon(device["lat"], device["lon"]))
    assert sorted(by_zone) == ["zone-1", "zone-2", "zone-3"]
    assert sorted(len(members) for members in by_zone.values()) == [4, 4, 4]
    # A zone's devices stand around its gateway: within the share of the radius a zone spans
    # (0.4 of it) plus how far the gateway stands from the zone's middle (0.05).
    for gateway in gateways:
        mast = LatLon(gateway["lat"], gateway["lon"])
        for place in by_zone[gateway["zone"]]:
            assert distance_m(mast, place) <= 800.0 * 0.45 + 1.0


def test_the_same_seed_gives_the_same_sites_and_the_default_centre_is_bielefeld(
    tmp_path: Path,
) -> None:
    for name in ("a", "b"):
        code, _, err = seed(tmp_path / name, "--gateways", "2", "--nodes", "4", "--seed", "9")
        assert code == 0, err
    assert sites(tmp_path / "a") == sites(tmp_path / "b")
    code, _, err = seed(tmp_path / "c", "--gateways", "2", "--nodes", "4", "--seed", "10")
    assert code == 0, err
    other = sites(tmp_path / "c")
    assert [g["lat"] for g in other[0]] != [g["lat"] for g in sites(tmp_path / "a")[0]]
    for row in other[0] + other[1]:
        assert distance_m(DEFAULT_CENTRE, LatLon(row["lat"], row["lon"])) <= 1500.0


def test_no_sites_gives_none_and_devices_without_gateways_share_one_zone(tmp_path: Path) -> None:
    code, out, err = seed(tmp_path / "none", "--gateways", "2", "--nodes", "3", "--no-sites")
    assert code == 0, err
    assert "sites within" not in out
    gateways, devices = sites(tmp_path / "none")
    assert len(gateways) == 2
    assert len(devices) == 3
    assert all(row["zone"] is None and row["lat"] is None for row in gateways + devices)
    code, _, err = seed(tmp_path / "lone", "--gateways", "0", "--nodes", "3", "--seed", "1")
    assert code == 0, err
    gateways, devices = sites(tmp_path / "lone")
    assert gateways == []
    assert {device["zone"] for device in devices} == {"zone-1"}


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (("--centre", "52.0"), "LAT,LON"),
        (("--centre", "north,south"), "LAT,LON"),
        (("--centre", "89.9,8.5"), "latitude must be -85 .. 85"),
        (("--centre", "52.0,181"), "longitude must be -180 .. 180"),
        (("--radius-m", "0"), "radius must be more than 0"),
        (("--radius-m", "60000"), "at most 50000 m"),
    ],
)
def test_a_bad_centre_or_radius_is_a_one_line_error(
    tmp_path: Path, extra: tuple[str, ...], says: str
) -> None:
    code, _, err = seed(tmp_path, "--gateways", "1", "--nodes", "1", *extra)
    assert code == 2
    assert err.startswith("error: --centre ")
    assert says in err
    assert len(err.strip().splitlines()) == 1
    # Refused before anything was written.
    assert not (tmp_path / "fleet.db").exists()


@given(
    lat=st.floats(-80.0, 80.0),
    lon=st.floats(-180.0, 180.0),
    east=st.floats(-50_000.0, 50_000.0),
    north=st.floats(-50_000.0, 50_000.0),
)
def test_the_projection_goes_there_and_back(
    lat: float, lon: float, east: float, north: float
) -> None:
    centre = LatLon(lat, lon)
    point = to_lat_lon(centre, east, north)
    assert -180.0 <= point.lon < 180.0
    back = to_metres(centre, point)
    assert back[0] == pytest.approx(east, abs=1e-6)
    assert back[1] == pytest.approx(north, abs=1e-6)


def test_the_projection_keeps_distances_over_a_district() -> None:
    # 1 km north and 1 km east of Bielefeld: a geodesic says the same to well under a metre.
    north = to_lat_lon(DEFAULT_CENTRE, 0.0, 1000.0)
    east = to_lat_lon(DEFAULT_CENTRE, 1000.0, 0.0)
    assert distance_m(DEFAULT_CENTRE, north) == pytest.approx(1000.0, abs=0.5)
    assert distance_m(DEFAULT_CENTRE, east) == pytest.approx(1000.0, abs=0.5)
    assert north.lon == DEFAULT_CENTRE.lon
    assert east.lat == DEFAULT_CENTRE.lat
    with pytest.raises(InvalidError, match="choose a centre nearer"):
        to_lat_lon(DEFAULT_CENTRE, 60_000.0, 0.0)
