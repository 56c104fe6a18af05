"""The HTTP API through a real ASGI client: every route, pagination, errors, no secrets.

Every call carries a bearer token (``ApiClient`` creates one for its role); what the roles
admit and refuse is tested in test_auth.py and, for every route, test_openapi_roles.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from owlgate.codecs.health import Health
from owlgate.codecs.node.telemetry import Reading
from owlgate.codecs.payloads import PROFILES
from owlgate.codecs.signed import sign
from owlgate.fleet.api import StatsSource, create_app, register_stats
from owlgate.fleet.auth import Role, create_token
from owlgate.fleet.ingest import Ingest, IngestService, Rejected
from owlgate.fleet.store import Store
from tests.conftest import REPO
from tests.fleet.conftest import (
    ABP_ADDR,
    ABP_EUI,
    APP_KEY,
    APP_S_KEY,
    GW1,
    GW2,
    NWK_S_KEY,
    OTAA_EUI,
    T0,
    raw_public,
)

SECRETS = [k.hex() for k in (APP_KEY, NWK_S_KEY, APP_S_KEY)]
NEW_KEYS = ["00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100"]


class ApiClient:
    """A synchronous client over ``httpx.ASGITransport``: requests go through the whole ASGI
    app (routing, validation, exception handlers, JSON encoding) without a socket. (Starlette's
    own TestClient warns about its httpx dependency, and warnings are errors here.)

    It sends ``Authorization: Bearer`` with ``token``, or with a token of ``role`` that it
    creates in the app's store on first use; ``role=None`` and no token: no header at all."""

    def __init__(self, app: Any, *, role: Role | None = "admin", token: str | None = None) -> None:
        self.app = app
        self.role = role
        self.token = token

    def as_role(self, role: Role | None) -> ApiClient:
        """A client of the same app calling with a (new) token of ``role``."""
        return ApiClient(self.app, role=role)

    def bearer(self) -> str | None:
        if self.token is None and self.role is not None:
            self.token = create_token(
                self.app.state.store, role=self.role, name=f"test {self.role}"
            )
        return self.token

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        token = self.bearer()
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as http:
                return await http.request(method, path, headers=headers, **kwargs)

        return asyncio.run(go())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 10)


@pytest.fixture
def client(registry: Store, clock: Clock) -> ApiClient:
    """An operator's client: what operations read."""
    return ApiClient(create_app(registry, clock=clock), role="operator")


@pytest.fixture
def technician(client: ApiClient) -> ApiClient:
    """A technician's client of the same app: registering gateways and devices."""
    return client.as_role("technician")


def no_secrets(response_text: str) -> None:
    lowered = response_text.lower()
    for secret in [*SECRETS, *NEW_KEYS]:
        assert secret not in lowered


def test_gateways_with_health_state(client: ApiClient, registry: Store, clock: Clock) -> None:
    listing = client.get("/api/v1/gateways")
    assert listing.status_code == 200
    body = listing.json()
    assert [g["id"] for g in body["items"]] == [GW1, GW2]
    assert body["next"] is None
    assert body["items"][0]["health"]["state"] == "never_seen"
    registry.gateway_heard(GW1, T0 + 5)
    one = client.get(f"/api/v1/gateways/{GW1.upper()}").json()
    assert one["health"]["state"] == "online"
    assert one["last_seen"] == "2027-01-15T08:00:05Z"
    clock.now = T0 + 5 + 121
    one = client.get(f"/api/v1/gateways/{GW1}").json()
    assert one["health"]["state"] == "offline"
    assert "nothing heard" in one["health"]["reasons"][0]
    assert len(bytes.fromhex(one["seal_public_key"])) == 32


def test_a_filling_outbox_makes_a_gateway_degraded(
    client: ApiClient, registry: Store, clock: Clock
) -> None:
    health = Health(
        gateway_id=bytes.fromhex(GW1),
        seq=1,
        time_s=int(T0),
        uptime_s=100,
        agent_uptime_s=50,
        agent_version="owlgate-edge 0.1.0",
        config_hash=bytes(32),
        outbox_depth=4000,
        outbox_oldest_age_s=30,
        outbox_bytes=220 * 1024 * 1024,
        outbox_max_bytes=256 * 1024 * 1024,
    )
    registry.record_health(GW1, health, received_at=T0 + 5)
    one = client.get(f"/api/v1/gateways/{GW1}").json()
    assert one["health"]["state"] == "degraded"
    assert any("outbox at 86% of its 256 MiB bound" in r for r in one["health"]["reasons"])


def test_gateway_pagination(client: ApiClient) -> None:
    first = client.get("/api/v1/gateways", params={"limit": 1}).json()
    assert [g["id"] for g in first["items"]] == [GW1]
    assert first["next"] == GW1
    second = client.get("/api/v1/gateways", params={"limit": 1, "after": first["next"]}).json()
    assert [g["id"] for g in second["items"]] == [GW2]
    assert second["next"] is None


def test_nodes_and_readings(client: ApiClient, registry: Store) -> None:
    nodes = client.get("/api/v1/nodes", params={"limit": 1})
    assert nodes.status_code == 200
    assert [n["dev_eui"] for n in nodes.json()["items"]] == [ABP_EUI]
    rest = client.get("/api/v1/nodes", params={"after": nodes.json()["next"]}).json()
    assert [n["dev_eui"] for n in rest["items"]] == [OTAA_EUI]
    node = client.get(f"/api/v1/nodes/{ABP_EUI}").json()
    assert node["dev_addr"] == f"{ABP_ADDR:08x}"
    assert node["activation"] == "abp"
    readings = [
        Reading(
            bytes.fromhex(ABP_EUI),
            int(T0) + n,
            {"occupied": n % 2 == 0},
            rssi_dbm=-90,
            snr_db=5.5,
            fcnt=n,
        )
        for n in range(5)
    ]
    registry.record_batch(GW1, 1, readings, T0 + 9)
    registry.record_batch(GW2, 1, readings[:1], T0 + 9)
    page = client.get(f"/api/v1/nodes/{ABP_EUI}/readings", params={"limit": 2}).json()
    assert [r["fcnt"] for r in page["items"]] == [0, 1]
    assert [g["gateway_id"] for g in page["items"][0]["receptions"]] == [GW1, GW2]
    assert page["items"][0]["values"] == {"occupied": True}
    more = client.get(
        f"/api/v1/nodes/{ABP_EUI}/readings", params={"limit": 2, "after": page["next"]}
    ).json()
    assert [r["fcnt"] for r in more["items"]] == [2, 3]
    for since in (str(int(T0) + 3), "2027-01-15T08:00:03Z"):
        late = client.get(f"/api/v1/nodes/{ABP_EUI}/readings", params={"since": since}).json()
        assert [r["fcnt"] for r in late["items"]] == [3, 4]


def test_profiles_route(client: ApiClient) -> None:
    items = client.get("/api/v1/profiles").json()["items"]
    assert [p["id"] for p in items] == sorted(PROFILES)
    assert items[0]["fports"] == list(PROFILES[items[0]["id"]].fports)


def test_unknown_ids_are_404_and_bad_values_422(client: ApiClient) -> None:
    for path in (
        "/api/v1/gateways/00000000000000ff",
        "/api/v1/nodes/00000000000000ff",
        "/api/v1/nodes/00000000000000ff/readings",
        "/api/v1/nodes/not-an-eui",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
        assert "no " in response.json()["error"]["message"]
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}):
        response = client.get("/api/v1/gateways", params=params)
        assert response.status_code == 422
        assert response.json()["error"]["message"].startswith("query.limit")
    bad_since = client.get(f"/api/v1/nodes/{ABP_EUI}/readings", params={"since": "yesterday"})
    assert bad_since.status_code == 422
    bad_cursor = client.get(f"/api/v1/nodes/{ABP_EUI}/readings", params={"after": "x"})
    assert bad_cursor.status_code == 422
    assert "cursor" in bad_cursor.json()["error"]["message"]


def test_admin_create_gateway(technician: ApiClient) -> None:
    client = technician
    sign, seal = raw_public(Ed25519PrivateKey.generate()), raw_public(X25519PrivateKey.generate())
    body = {
        "id": "B827EBFFFE000003",
        "name": "roof",
        "sign_public_key": sign.hex(),
        "seal_public_key": seal.hex(),
    }
    created = client.post("/api/v1/admin/gateways", json=body)
    assert created.status_code == 201
    assert created.json()["id"] == "b827ebfffe000003"
    assert created.json()["health"]["state"] == "never_seen"
    assert client.post("/api/v1/admin/gateways", json=body).status_code == 409
    bad = client.post("/api/v1/admin/gateways", json={**body, "seal_public_key": "00"})
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid"


def test_admin_create_devices_never_returns_secrets(
    client: ApiClient, technician: ApiClient
) -> None:
    otaa = {
        "dev_eui": "00000000000000a1",
        "profile_id": "parking-v1",
        "activation": "otaa",
        "join_eui": "00000000000000ff",
        "app_key": NEW_KEYS[0],
    }
    abp = {
        "dev_eui": "00000000000000a2",
        "profile_id": "environment-v1",
        "activation": "abp",
        "dev_addr": "01020304",
        "nwk_s_key": NEW_KEYS[0],
        "app_s_key": NEW_KEYS[1],
    }
    responses = [
        technician.post("/api/v1/admin/devices", json=otaa),
        technician.post("/api/v1/admin/devices", json=abp),
    ]
    assert [r.status_code for r in responses] == [201, 201]
    assert responses[1].json()["dev_addr"] == "01020304"
    # Invalid requests must not echo the keys they carried either.
    responses.append(technician.post("/api/v1/admin/devices", json={**abp, "dev_eui": "zz"}))
    responses.append(
        technician.post(
            "/api/v1/admin/devices",
            json={**otaa, "dev_eui": "00000000000000a3", "app_key": NEW_KEYS[1] + "0"},
        )
    )
    responses.append(technician.post("/api/v1/admin/devices", json={**otaa, "profile_id": "nope"}))
    assert [r.status_code for r in responses[2:]] == [422, 422, 422]
    responses.append(technician.post("/api/v1/admin/devices", json=otaa))
    assert responses[-1].status_code == 409
    everything = [
        client.get("/api/v1/nodes"),
        client.get("/api/v1/nodes/00000000000000a1"),
        client.get("/api/v1/nodes/00000000000000a2"),
        client.get(f"/api/v1/nodes/{ABP_EUI}"),
        client.get(f"/api/v1/nodes/{OTAA_EUI}"),
        client.get("/api/v1/gateways"),
        client.get("/openapi.json"),
        client.as_role("admin").get("/api/v1/audit"),
    ]
    for response in [*responses, *everything]:
        no_secrets(response.text)
        json.loads(response.text)


def test_openapi_lists_every_route(client: ApiClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert paths == {
        "/api/v1/gateways",
        "/api/v1/gateways/{gateway_id}",
        "/api/v1/nodes",
        "/api/v1/nodes/{dev_eui}",
        "/api/v1/nodes/{dev_eui}/readings",
        "/api/v1/profiles",
        "/api/v1/stats",
        "/metrics",
        "/api/v1/admin/gateways",
        "/api/v1/admin/devices",
        "/api/v1/admin/tokens",
        "/api/v1/admin/tokens/{token_id}",
        "/api/v1/audit",
        "/api/v1/alerts",
        "/api/v1/alerts/{alert_id}",
        "/api/v1/alerts/{alert_id}/acknowledge",
        "/api/v1/alert-rules",
        "/api/v1/nodes/{dev_eui}/site",
        "/api/v1/gateways/{gateway_id}/site",
        "/api/v1/views/parking",
        "/api/v1/views/bins",
        "/api/v1/admin/import",
        "/api/v1/admin/export",
        "/api/v1/export/readings",
        "/api/v1/broker/credentials",
        "/api/v1/broker/fleet-account/credentials",
        "/api/v1/broker/gateways/{gateway_id}/credentials",
        "/api/v1/broker/gateways/{gateway_id}/credentials/rotate",
        "/api/v1/config/defaults",
        "/api/v1/config/defaults/versions",
        "/api/v1/config/groups/{group}",
        "/api/v1/config/groups/{group}/versions",
        "/api/v1/config/gateways/{gateway_id}",
        "/api/v1/config/gateways/{gateway_id}/versions",
        "/api/v1/config/diff",
        "/api/v1/gateways/{gateway_id}/group",
        "/api/v1/gateways/{gateway_id}/config/effective",
        "/api/v1/rollouts",
        "/api/v1/rollouts/{rollout_id}",
        "/api/v1/rollouts/{rollout_id}/gateways",
        "/api/v1/rollouts/{rollout_id}/pause",
        "/api/v1/rollouts/{rollout_id}/resume",
        "/api/v1/rollouts/{rollout_id}/abort",
        "/api/v1/rollouts/{rollout_id}/rollback",
        "/api/v1/config/documents",
        "/api/v1/config/keys",
        "/api/v1/gateways/{gateway_id}/config/status",
        "/api/v1/devices/{dev_eui}/settings",
        "/api/v1/devices/{dev_eui}/downlinks",
        "/api/v1/claims",
        "/api/v1/claims/{claim_id}",
        "/api/v1/provision/gateway",
        "/api/v1/provision/gateway/{gateway_id}/check",
        "/api/v1/provision/nodes",
        "/api/v1/provision/bundles",
        "/api/v1/provision/sync",
    }


def test_every_route_is_documented(client: ApiClient) -> None:
    # The registry and readings in docs/fleet.md, each feature's routes in its own page.
    pages = (
        "fleet.md",
        "fleet-access.md",
        "fleet-alerts.md",
        "fleet-data.md",
        "fleet-broker.md",
        "fleet-config.md",
        "fleet-rollouts.md",
        "fleet-provisioning.md",
    )
    doc = "\n".join((REPO / "docs" / name).read_text() for name in pages)
    for path, methods in client.get("/openapi.json").json()["paths"].items():
        for method in methods:
            assert f"`{method.upper()} {path}" in doc, f"docs/fleet*.md lack {method} {path}"


def test_stats_route_shows_each_services_counters(registry: Store, clock: Clock) -> None:
    app = create_app(registry, clock=clock)
    client = ApiClient(app, role="operator")
    # The API counts its own refusals too (test_auth.py): the first call is admitted.
    assert client.get("/api/v1/stats").json() == {
        "started_at": "2027-01-15T08:00:10Z",
        "auth": {
            "admitted": 1,
            "refused": dict.fromkeys(
                (
                    "missing",
                    "malformed",
                    "unknown",
                    "revoked",
                    "expired",
                    "forbidden",
                    "rate_limited",
                ),
                0,
            ),
        },
    }
    ingest = IngestService(Ingest(registry, clock=clock), "127.0.0.1", 1883)
    assert isinstance(ingest, StatsSource)
    register_stats(app, ingest)
    forged = sign(b"not a batch", Ed25519PrivateKey.generate())
    with pytest.raises(Rejected):
        ingest.ingest.handle(f"owlgate/v1/gw/{GW1}/telemetry", forged)
    with pytest.raises(Rejected):
        ingest.ingest.handle(f"owlgate/v1/gw/{GW1}/state", b"maybe")
    body = client.get("/api/v1/stats").json()
    assert body["ingest"]["rejected"] == {"signature": 1, "state": 1}
    assert body["ingest"]["readings_stored"] == 0
    assert set(body) == {"started_at", "auth", "ingest"}


@pytest.mark.parametrize(
    "path",
    ["/api/v1/alerts", "/api/v1/config/defaults/versions", "/api/v1/config/groups/g/versions"],
)
def test_a_cursor_of_non_ascii_digits_is_a_422(client: ApiClient, path: str) -> None:
    # "²" is a digit to str.isdigit() but not to int(): once a 500 (found by the fuzz test).
    response = client.get(path, params={"after": "\u00b2"})
    assert response.status_code == 422, response.text
    assert "\u00b2" in response.json()["error"]["message"]
