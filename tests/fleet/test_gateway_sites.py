"""Where a gateway stands, over HTTP: ``GET`` / ``PUT /api/v1/gateways/{gateway_id}/site``
(readers read, technicians write), checked values, a 404 for a gateway the fleet does not
know, and an audit entry per change. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from owlgate.fleet import views
from owlgate.fleet.api import create_app
from owlgate.fleet.store import Store
from tests.fleet.conftest import GW1, GW2, T0
from tests.fleet.test_api import ApiClient, Clock

NOW = T0 + 3600.0
MAST = {
    "zone": "Altstadt",
    "street": "Obernstraße",
    "lat": 52.0219,
    "lon": 8.5325,
    "label": "mast on the town hall",
}


@pytest.fixture
def app(registry: Store) -> FastAPI:
    return create_app(registry, clock=Clock(NOW))


def site_url(gateway_id: str) -> str:
    return f"/api/v1/gateways/{gateway_id}/site"


def test_a_technician_sets_a_site_and_a_reader_reads_it(app: FastAPI, registry: Store) -> None:
    technician = ApiClient(app, role="technician")
    operator = ApiClient(app, role="operator")
    assert operator.get(site_url(GW1)).json() == {
        "gateway_id": GW1,
        "zone": None,
        "street": None,
        "lat": None,
        "lon": None,
        "label": None,
    }
    put = technician.request("PUT", site_url(GW1), json={**MAST, "zone": "  Altstadt  "})
    assert put.status_code == 200, put.text
    assert put.json() == {"gateway_id": GW1, **MAST}
    assert operator.get(site_url(GW1)).json() == {"gateway_id": GW1, **MAST}
    # Upper-case ids name the same gateway.
    assert technician.get(site_url(GW1.upper())).json()["label"] == "mast on the town hall"
    # The other gateway is untouched.
    assert operator.get(site_url(GW2)).json()["lat"] is None
    row = registry.sql.query("SELECT updated_at FROM gateway_sites WHERE gateway_id = ?", [GW1])
    assert row == [{"updated_at": NOW}]


def test_a_field_left_out_is_cleared_and_the_list_follows(app: FastAPI, registry: Store) -> None:
    technician = ApiClient(app, role="technician")
    technician.request("PUT", site_url(GW1), json=MAST)
    technician.request("PUT", site_url(GW2), json={"zone": "Nord", "lat": 52.05, "lon": 8.53})
    moved = technician.request("PUT", site_url(GW1), json={"label": "mast 1"})
    assert moved.status_code == 200
    assert moved.json() == {
        "gateway_id": GW1,
        "zone": None,
        "street": None,
        "lat": None,
        "lon": None,
        "label": "mast 1",
    }
    listed = views.gateway_sites(registry.sql)
    assert [(s.gateway_id, s.zone, s.label) for s in listed] == [
        (GW1, None, "mast 1"),
        (GW2, "Nord", None),
    ]
    assert [s.gateway_id for s in views.gateway_sites(registry.sql, zone="Nord")] == [GW2]


def test_roles_the_route_does_not_admit_are_refused(app: FastAPI) -> None:
    assert ApiClient(app, role=None).get(site_url(GW1)).status_code == 401
    refused = ApiClient(app, role="operator").request("PUT", site_url(GW1), json=MAST)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert ApiClient(app, role=None).request("PUT", site_url(GW1), json=MAST).status_code == 401
    assert ApiClient(app, role="admin").request("PUT", site_url(GW1), json=MAST).status_code == 200
    # Nothing the refused calls sent was kept: the admin's is the only change.
    assert ApiClient(app, role="technician").get(site_url(GW1)).json()["zone"] == "Altstadt"


def test_an_unknown_gateway_is_a_404_that_says_what_to_do(app: FastAPI) -> None:
    technician = ApiClient(app, role="technician")
    unknown = "00000000000000ff"
    put = technician.request("PUT", site_url(unknown), json=MAST)
    assert put.status_code == 404
    assert put.json()["error"]["message"] == (
        f"no gateway {unknown}: register it before giving its site"
    )
    assert technician.get(site_url(unknown)).status_code == 404
    malformed = technician.request("PUT", site_url("mast-1"), json=MAST)
    assert malformed.status_code == 404
    assert "16 hex digits" in malformed.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"lat": 91.0, "lon": 8.5}, "lat"),
        ({"lat": 52.0, "lon": -180.5}, "lon"),
        ({"lat": 52.0}, "lat, lon: give both coordinates or neither"),
        ({"lon": 8.5}, "lat, lon: give both coordinates or neither"),
        ({"zone": "z" * 201}, "zone"),
        ({"label": "x" * 201}, "label"),
    ],
)
def test_bad_values_are_a_422_naming_the_field(
    app: FastAPI, registry: Store, body: dict[str, object], says: str
) -> None:
    technician = ApiClient(app, role="technician")
    answer = technician.request("PUT", site_url(GW1), json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid"
    assert says in answer.json()["error"]["message"]
    assert registry.sql.query("SELECT * FROM gateway_sites") == []


def test_each_change_is_in_the_audit_log(app: FastAPI) -> None:
    technician = ApiClient(app, role="technician")
    admin = ApiClient(app, role="admin")
    technician.request("PUT", site_url(GW1), json=MAST)
    admin.request("PUT", site_url(GW1), json={"zone": "Mitte", "lat": 52.02, "lon": 8.53})
    refused = technician.request("PUT", site_url(GW1), json={"lat": 95.0, "lon": 0.0})
    assert refused.status_code == 422
    events = admin.get("/api/v1/audit", params={"action": "gateway.site_changed"}).json()["items"]
    # Oldest first; the refused change left no entry.
    assert [(e["actor_role"], e["target"]) for e in events] == [
        ("technician", GW1),
        ("admin", GW1),
    ]
    assert events[0]["details"] == MAST
    assert events[1]["details"] == {
        "zone": "Mitte",
        "street": None,
        "lat": 52.02,
        "lon": 8.53,
        "label": None,
    }


def test_the_routes_state_the_roles_of_the_node_site_routes(app: FastAPI) -> None:
    document = app.openapi()
    node = document["paths"]["/api/v1/nodes/{dev_eui}/site"]
    gateway = document["paths"]["/api/v1/gateways/{gateway_id}/site"]
    for method in ("get", "put"):
        assert gateway[method]["x-owlgate-roles"] == node[method]["x-owlgate-roles"], method
    assert gateway["put"]["x-owlgate-roles"] == ["admin", "technician"]


def test_the_gateway_and_node_lists_carry_each_site(app: FastAPI) -> None:
    technician = ApiClient(app, role="technician")
    operator = ApiClient(app, role="operator")
    assert technician.request("PUT", site_url(GW1), json=MAST).status_code == 200
    listed = {item["id"]: item["site"] for item in operator.get("/api/v1/gateways").json()["items"]}
    assert listed == {GW1: MAST, GW2: None}
    assert operator.get(f"/api/v1/gateways/{GW2}").json()["site"] is None
    assert operator.get(f"/api/v1/gateways/{GW1}").json()["site"] == MAST
    # Nodes alike, with their own sites.
    nodes = operator.get("/api/v1/nodes").json()["items"]
    assert nodes
    assert all(node["site"] is None for node in nodes)
    bay = nodes[0]["dev_eui"]
    put = technician.request(
        "PUT", f"/api/v1/nodes/{bay}/site", json={"street": "Obernstraße", "label": "bay 7"}
    )
    assert put.status_code == 200, put.text
    sites = {
        node["dev_eui"]: node["site"] for node in operator.get("/api/v1/nodes").json()["items"]
    }
    assert sites[bay] == {
        "zone": None,
        "street": "Obernstraße",
        "lat": None,
        "lon": None,
        "label": "bay 7",
    }
    assert all(site is None for eui, site in sites.items() if eui != bay)
    assert operator.get(f"/api/v1/nodes/{bay}").json()["site"]["label"] == "bay 7"
