"""Application views through the API: parking bays by street and zone, waste bins with their
predicted full time, and where a device stands (``/nodes/{dev_eui}/site``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from owlgate.codecs.node.telemetry import Reading
from owlgate.fleet import views
from owlgate.fleet.api import create_app
from owlgate.fleet.store import Store
from tests.fleet.conftest import APP_KEY, GW1, JOIN_EUI, OTAA_EUI, T0
from tests.fleet.test_api import ApiClient, Clock

HOUR = 3600.0
NOW = T0 + 30 * 86_400.0
BAYS = {
    "a0000000000000a1": ("Main Street", "north", "bay 1"),
    "a0000000000000a2": ("Main Street", "north", "bay 2"),
    "a0000000000000a3": ("Elm Street", "south", "bay 3"),
    "a0000000000000a4": ("Elm Street", "south", "bay 4"),
}
UNSITED_BAY = "a0000000000000a5"
BINS = ["b0000000000000b1", "b0000000000000b2", "b0000000000000b3", "b0000000000000b4"]


class Seq:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


def reading(store: Store, seq: Seq, eui: str, time_s: float, values: dict[str, Any]) -> None:
    n = seq()
    store.record_batch(
        GW1,
        n,
        [Reading(bytes.fromhex(eui), int(time_s), values, rssi_dbm=-90, snr_db=5.0, fcnt=n)],
        received_at=time_s,
    )


def register(store: Store, eui: str, profile: str) -> None:
    store.create_device(
        eui, profile_id=profile, activation="otaa", created=T0, join_eui=JOIN_EUI, app_key=APP_KEY
    )


@pytest.fixture
def client(registry: Store) -> ApiClient:
    return ApiClient(create_app(registry, clock=Clock(NOW)), role="operator")


@pytest.fixture
def city(registry: Store, client: ApiClient) -> Store:
    """Four bays on two streets and one without a site; four bins."""
    seq = Seq()
    technician = client.as_role("technician")
    for eui, (street, zone, label) in BAYS.items():
        register(registry, eui, "parking-v1")
        answer = technician.request(
            "PUT",
            f"/api/v1/nodes/{eui}/site",
            json={"street": street, "zone": zone, "label": label, "lat": 52.5, "lon": 13.4},
        )
        assert answer.status_code == 200, answer.text
    register(registry, UNSITED_BAY, "parking-v1")
    a1, a2, a3, a4 = BAYS
    # a1: occupied, then free.
    reading(registry, seq, a1, NOW - 3 * HOUR, {"occupied": True, "battery_mv": 3600})
    reading(registry, seq, a1, NOW - 1 * HOUR, {"occupied": False, "battery_mv": 3600})
    # a2: occupied, and a status message came after it (no "occupied" in it).
    reading(registry, seq, a2, NOW - 2 * HOUR, {"occupied": True})
    reading(registry, seq, a2, NOW - 1 * HOUR, {"message": "status", "battery_mv": 3500})
    # a3: free, but two days ago: stale.
    reading(registry, seq, a3, NOW - 2 * 86_400.0, {"occupied": False})
    # a4: occupied.
    reading(registry, seq, a4, NOW - 600, {"occupied": True})
    for eui in BINS:
        register(registry, eui, "waste-bin-v1")
    b1, b2, b3, b4 = BINS
    # b1: rose to 95, emptied to 5, then +10 % an hour: 5, 15, 25, 35 at hours 3..6.
    for hour, fill in enumerate([60, 80, 95, 5, 15, 25, 35]):
        reading(registry, seq, b1, NOW - 7 * HOUR + hour * HOUR, {"fill_pct": fill})
    # b2: two readings since its emptying.
    for hour, fill in enumerate([70, 2, 4]):
        reading(registry, seq, b2, NOW - 3 * HOUR + hour * HOUR, {"fill_pct": fill})
    # b3: flat (and a 3 % wobble that is noise, not an emptying).
    for hour, fill in enumerate([40, 40, 37, 40, 40]):
        reading(registry, seq, b3, NOW - 5 * HOUR + hour * HOUR, {"fill_pct": fill})
    # b4: full already.
    for hour, fill in enumerate([90, 100]):
        reading(registry, seq, b4, NOW - 2 * HOUR + hour * HOUR, {"fill_pct": fill})
    return registry


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def test_parking_view_counts_bays_by_street(city: Store, client: ApiClient) -> None:
    answer = client.get("/api/v1/views/parking")
    assert answer.status_code == 200, answer.text
    view = answer.json()
    # The OTAA waste bin of the registry fixture is not a bay; the ABP parking sensor is.
    assert view["totals"] == {"bays": 6, "occupied": 2, "free": 1, "unknown": 3}
    groups = {group["street"]: group for group in view["groups"]}
    assert list(groups) == ["Elm Street", "Main Street", None]
    main = groups["Main Street"]
    assert (main["bays"], main["occupied"], main["free"], main["unknown"]) == (2, 1, 1, 0)
    states = {item["dev_eui"]: item["state"] for item in main["items"]}
    assert states == {"a0000000000000a1": "free", "a0000000000000a2": "occupied"}
    a2 = next(item for item in main["items"] if item["dev_eui"] == "a0000000000000a2")
    # The state comes from the reading that carried it, not from the later status message.
    assert a2["reading_at"] == iso(NOW - 2 * HOUR)
    assert a2["label"] == "bay 2"
    assert a2["lat"] == 52.5
    elm = {item["dev_eui"]: item["state"] for item in groups["Elm Street"]["items"]}
    assert elm == {"a0000000000000a3": "unknown", "a0000000000000a4": "occupied"}
    assert {item["dev_eui"] for item in groups[None]["items"]} == {
        UNSITED_BAY,
        "70b3d57ed0000001",
    }


def test_parking_view_by_zone_filtered_and_with_a_longer_staleness(
    city: Store, client: ApiClient
) -> None:
    view = client.get(
        "/api/v1/views/parking",
        params={"group_by": "zone", "zone": "south", "stale_after_s": 3 * 86_400, "items": False},
    ).json()
    assert view["group_by"] == "zone"
    assert view["groups"] == [{"zone": "south", "bays": 2, "occupied": 1, "free": 1, "unknown": 0}]


def test_bins_view_predicts_the_full_time_from_the_fill_since_the_last_emptying(
    city: Store, client: ApiClient
) -> None:
    answer = client.get("/api/v1/views/bins")
    assert answer.status_code == 200, answer.text
    view = answer.json()
    items = {item["dev_eui"]: item for item in view["items"]}
    b1, b2, b3, b4 = BINS
    first = items[b1]
    assert first["fill_pct"] == 35
    prediction = first["prediction"]
    assert prediction["status"] == "predicted"
    assert prediction["points"] == 4
    assert prediction["cycle_start"] == iso(NOW - 4 * HOUR)
    assert prediction["rate_pct_per_day"] == pytest.approx(240.0)
    # 5 % at hour 3 rising 10 % an hour: 100 % at hour 12.5, i.e. 6.5 h after the last one.
    assert prediction["full_at"] == iso(NOW - HOUR + 6.5 * HOUR)
    assert prediction["full_in_s"] == pytest.approx(5.5 * HOUR)
    assert items[b2]["prediction"]["status"] == "too_few_points"
    assert "2 reading(s)" in items[b2]["prediction"]["message"]
    assert items[b2]["prediction"]["full_at"] is None
    assert items[b3]["prediction"]["status"] == "not_rising"
    assert items[b3]["prediction"]["points"] == 5
    assert items[b4]["prediction"]["status"] == "full"
    assert items[OTAA_EUI]["prediction"]["status"] == "no_readings"
    assert items[OTAA_EUI]["fill_pct"] is None
    # Full bins first, then by predicted time, then those without a prediction.
    order = [item["dev_eui"] for item in view["items"]]
    assert order[:2] == [b4, b1]
    assert set(order[2:]) == {b2, b3, OTAA_EUI}


def test_bins_view_takes_a_lower_full_threshold(city: Store, client: ApiClient) -> None:
    view = client.get("/api/v1/views/bins", params={"full_pct": 45, "min_points": 5}).json()
    items = {item["dev_eui"]: item for item in view["items"]}
    # Four points since the emptying, five needed.
    assert items[BINS[0]]["prediction"]["status"] == "too_few_points"
    view = client.get("/api/v1/views/bins", params={"full_pct": 45}).json()
    items = {item["dev_eui"]: item for item in view["items"]}
    assert items[BINS[0]]["prediction"]["full_at"] == iso(NOW - 4 * HOUR + 4 * HOUR)
    assert client.get("/api/v1/views/bins", params={"full_pct": 0}).status_code == 422


def test_site_routes_check_roles_values_and_devices(city: Store, client: ApiClient) -> None:
    eui = "a0000000000000a1"
    got = client.get(f"/api/v1/nodes/{eui}/site").json()
    assert got == {
        "dev_eui": eui,
        "zone": "north",
        "street": "Main Street",
        "lat": 52.5,
        "lon": 13.4,
        "label": "bay 1",
    }
    body = {"street": "Oak Street"}
    assert client.request("PUT", f"/api/v1/nodes/{eui}/site", json=body).status_code == 403
    assert client.as_role(None).get("/api/v1/views/parking").status_code == 401
    technician = client.as_role("technician")
    assert technician.get("/api/v1/views/bins").status_code == 200
    bad = technician.request("PUT", f"/api/v1/nodes/{eui}/site", json={"lat": 91, "lon": 0})
    assert bad.status_code == 422
    one = technician.request("PUT", f"/api/v1/nodes/{eui}/site", json={"lat": 50.0})
    assert one.status_code == 422
    assert "lat, lon" in one.json()["error"]["message"]
    missing = technician.request("PUT", "/api/v1/nodes/00000000000000ff/site", json=body)
    assert missing.status_code == 404
    moved = technician.request("PUT", f"/api/v1/nodes/{eui}/site", json=body)
    assert moved.json()["street"] == "Oak Street"
    assert moved.json()["zone"] is None
    assert client.get(f"/api/v1/nodes/{eui}/site").json()["street"] == "Oak Street"
    events = city.sql.query(
        "SELECT actor_role, details FROM audit_log WHERE action = 'device.site_changed' "
        "AND target = ? ORDER BY id",
        [eui],
    )
    assert len(events) == 2
    assert events[-1]["actor_role"] == "technician"
    assert '"street":"Oak Street"' in events[-1]["details"]


def test_predict_full_ignores_noise_and_never_predicts_the_past() -> None:
    # Rising 1 % an hour with a 2 % dip (noise, under the 10 % emptying threshold).
    history = [(i * HOUR, 50.0 + i - (2.0 if i == 3 else 0.0)) for i in range(6)]
    prediction = views.predict_full(history)
    assert prediction.status == "predicted"
    assert prediction.points == 6
    assert prediction.full_at is not None
    # Least squares: 0.942857 % an hour from 49.8095 %, so 100 % after 53.232 h.
    assert prediction.full_at == pytest.approx(53.2323 * HOUR, rel=1e-5)
    # The last reading is below the trend, which has crossed 60 % already: due now.
    late = [(0.0, 10.0), (HOUR, 40.0), (2 * HOUR, 70.0), (3 * HOUR, 55.0)]
    due = views.predict_full(late, full_pct=60.0, emptying_drop_pct=20.0)
    assert due.status == "predicted"
    assert due.full_at == 3 * HOUR


def test_every_data_route_states_its_roles(registry: Store) -> None:
    from fastapi.routing import APIRoute

    from owlgate.fleet import bulk, export
    from owlgate.fleet.auth import route_roles
    from tests.fleet.test_openapi_roles import operations

    routers = (views.router(), bulk.router(), export.router())
    roles = {
        f"{method} {route.path}": route_roles(route)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods or ())
    }
    assert roles == {
        "GET /api/v1/views/parking": ("admin", "operator", "technician"),
        "GET /api/v1/views/bins": ("admin", "operator", "technician"),
        "GET /api/v1/nodes/{dev_eui}/site": ("admin", "operator", "technician"),
        "PUT /api/v1/nodes/{dev_eui}/site": ("admin", "technician"),
        "GET /api/v1/gateways/{gateway_id}/site": ("admin", "operator", "technician"),
        "PUT /api/v1/gateways/{gateway_id}/site": ("admin", "technician"),
        "POST /api/v1/admin/import": ("admin", "technician"),
        "GET /api/v1/admin/export": ("admin", "operator", "technician"),
        "GET /api/v1/export/readings": ("admin", "operator"),
    }
    # create_app includes these routers: each operation has the roles and the bearer scheme.
    app = create_app(registry, clock=Clock(NOW))
    documented = {
        f"{method} {path}": (operation.get("security"), operation.get("x-owlgate-roles"))
        for method, path, operation in operations(app.openapi())
    }
    for name, admitted in roles.items():
        assert documented[name] == ([{"bearerAuth": []}], list(admitted or ())), name
