"""Provisioning through the HTTP API, on SQLite and PostgreSQL: claim tokens and claimed
gateways (single use, expiry, idempotent re-claim with a new MQTT password, proofs, keys),
sensor modules (roles, wrapped AppKeys, re-runs, conflicts), offline bundles and their sync,
and what the audit log and the counters record."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import FastAPI

from owlgate.codecs.bundle import BundleSealError, open_bundle
from owlgate.codecs.configdoc import verify_config
from owlgate.codecs.signed import key_id
from owlgate.fleet import audit
from owlgate.fleet.api import create_app
from owlgate.fleet.broker import EmbeddedBroker
from owlgate.fleet.brokerauth import PolicyHolder, load_policy
from owlgate.fleet.cli import broker_change_hook
from owlgate.fleet.configs import group_of, put_layer
from owlgate.fleet.provisioning import (
    CHECK_WINDOW_S,
    MAX_FAILED_CLAIMS,
    ProvisioningSettings,
    check_message,
    claim_message,
    configure,
)
from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault
from tests.fleet.conftest import T0, raw_public
from tests.fleet.test_api import ApiClient, Clock

MQTT_URL = "mqtt://broker.example:1883"
GW = "b827ebfffe00c1a1"
DEV = "70b3d57ed000c0d1"
PROFILE = "parking-v1"


class Gateway:
    """A gateway's identity and sealing keys, and the claim body it sends."""

    def __init__(self, gateway_id: str = GW) -> None:
        self.id = gateway_id
        self.identity = Ed25519PrivateKey.generate()
        self.sealing = X25519PrivateKey.generate()

    def body(self, claim: str, **changes: Any) -> dict[str, Any]:
        return {
            "claim": claim,
            "gateway_id": self.id,
            "name": "roof of the town hall",
            "sign_public_key": raw_public(self.identity).hex(),
            "seal_public_key": raw_public(self.sealing).hex(),
            "proof": self.identity.sign(claim_message(claim, self.id)).hex(),
            **changes,
        }

    def check(self, claim: str) -> dict[str, Any]:
        return {"claim": claim, "proof": self.identity.sign(check_message(claim, self.id)).hex()}


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def fleet_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def app(store: Store, clock: Clock, fleet_key: Ed25519PrivateKey) -> FastAPI:
    changes: list[int] = []
    made = create_app(store, clock=clock, on_broker_change=lambda: changes.append(1))
    made.state.broker_changes = changes
    configure(made, ProvisioningSettings(mqtt_url=MQTT_URL, signing_key=fleet_key))
    return made


@pytest.fixture
def operator(app: FastAPI) -> ApiClient:
    return ApiClient(app, role="operator")


@pytest.fixture
def anonymous(app: FastAPI) -> ApiClient:
    return ApiClient(app, role=None)


def new_claim(client: ApiClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/claims", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def claim(client: ApiClient, body: dict[str, Any]) -> httpx.Response:
    return client.post("/api/v1/provision/gateway", json=body)


def actions(store: Store, family: str) -> list[audit.AuditEvent]:
    return audit.events(store.sql, action=family, limit=1000).items


def refused(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    detail: str = response.json()["detail"]
    for word in words:
        assert word in detail, detail
    return detail


# --- claim tokens --------------------------------------------------------------------------------


def test_claim_tokens_are_created_listed_and_revoked_and_only_hashed(
    operator: ApiClient, store: Store
) -> None:
    created = new_claim(
        operator, group="north", site="town hall", expires_in_s=7200, comment="job 4711"
    )
    token = created["token"]
    assert token.startswith("owl-claim-")
    assert len(token) == len("owl-claim-") + 43
    assert created["group"] == "north"
    assert created["site"] == "town hall"
    assert created["expires_at"] == "2027-01-15T10:00:00Z"
    assert created["created_by"] == "test operator"
    # The database holds the SHA-256, nowhere the token itself.
    row = store.sql.query("SELECT * FROM claim_tokens")[0]
    assert token not in repr(row)
    assert token.encode() not in repr(row).encode()
    listing = operator.get("/api/v1/claims").json()["items"]
    assert [(c["id"], c["state"], c["gateway_id"]) for c in listing] == [
        (created["id"], "unused", None)
    ]
    assert "token" not in listing[0]
    assert token not in repr(listing)
    # Technicians claim with tokens; they do not issue them.
    assert operator.as_role("technician").post("/api/v1/claims", json={}).status_code == 403
    revoked = operator.delete(f"/api/v1/claims/{created['id']}").json()
    assert revoked["state"] == "revoked"
    assert revoked["revoked_by"] == "test operator"
    again = operator.delete(f"/api/v1/claims/{created['id']}")
    assert again.status_code == 200
    refused(operator.delete("/api/v1/claims/999"), 404, "no claim token 999")
    refused(operator.post("/api/v1/claims", json={"group": "no spaces"}), 422, "group")
    assert [e.action for e in actions(store, "claim.*")] == ["claim.created", "claim.revoked"]
    assert actions(store, "claim.created")[0].details["group"] == "north"


def test_a_claim_registers_the_gateway_with_its_group_password_keys_and_config(
    app: FastAPI, operator: ApiClient, anonymous: ApiClient, store: Store, fleet_key: Any
) -> None:
    put_layer(store.sql, "defaults", None, {"mqtt": {"url": MQTT_URL}}, actor="test")
    put_layer(store.sql, "group", "north", {"radio": {"tx_power_dbm": 10}}, actor="test")
    token = new_claim(operator, group="north", site="town hall")["token"]
    gateway = Gateway()
    response = claim(anonymous, gateway.body(token))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["gateway_id"] == GW
    assert answer["group"] == "north"
    assert answer["site"] == "town hall"
    assert answer["claimed_at"] == "2027-01-15T08:00:00Z"
    assert answer["mqtt"]["url"] == MQTT_URL
    assert answer["mqtt"]["username"] == GW
    password = answer["mqtt"]["password"]
    assert load_policy(store.sql).authenticate(GW, password)
    assert app.state.broker_changes == [1]
    pinned = load_pem_public_key(answer["fleet_key_pem"].encode())
    assert isinstance(pinned, Ed25519PublicKey)
    assert raw_public(fleet_key) == pinned.public_bytes_raw()
    assert answer["config_key_pem"] is None
    # The first configuration: signed by the pinned key, for this gateway, with the group's
    # radio setting, queued to be published retained like a rollout's documents.
    cose = base64.b64decode(answer["config_document"])
    doc = verify_config(cose, {key_id(fleet_key): fleet_key.public_key()})
    assert doc.target == bytes.fromhex(GW)
    assert doc.seq == 1
    assert doc.config.tx_power_dbm == 10
    queued = store.sql.query("SELECT seq, purpose, state, cose FROM config_documents")
    assert [(r["seq"], r["purpose"], r["state"], bytes(r["cose"])) for r in queued] == [
        (1, "initial", "queued", cose)
    ]
    registered = store.gateway(GW)
    assert registered.sign_public_key == raw_public(gateway.identity)
    assert registered.name == "roof of the town hall"
    assert group_of(store.sql, GW) == "north"
    listing = operator.get("/api/v1/claims").json()["items"][0]
    assert listing["state"] == "used"
    assert listing["gateway_id"] == GW
    assert listing["claimed_at"] == "2027-01-15T08:00:00Z"
    (event,) = actions(store, "gateway.claimed")
    assert event.target == f"gateway:{GW}"
    assert event.actor.startswith("claim:")
    assert event.details["claim_created_by"] == "test operator"
    assert event.details["group"] == "north"
    assert event.details["again"] is False
    # Nowhere in the database or the audit log: the password and the token.
    for table in ("claim_tokens", "broker_credentials", "audit_log"):
        dump = repr(store.sql.query(f"SELECT * FROM {table}"))
        assert password not in dump, table
        assert token not in dump, table


def test_presenting_the_claim_again_gives_a_new_password_and_the_old_one_stops(
    operator: ApiClient, anonymous: ApiClient, store: Store, clock: Clock
) -> None:
    put_layer(store.sql, "defaults", None, {"mqtt": {"url": MQTT_URL}}, actor="test")
    token = new_claim(operator)["token"]
    gateway = Gateway()
    first = claim(anonymous, gateway.body(token)).json()
    clock.now += 600
    second_response = claim(anonymous, gateway.body(token))
    assert second_response.status_code == 200, second_response.text
    second = second_response.json()
    assert second["mqtt"]["password"] != first["mqtt"]["password"]
    del first["mqtt"]["password"], second["mqtt"]["password"]
    assert second == first
    assert load_policy(store.sql).authenticate(GW, second_response.json()["mqtt"]["password"])
    assert store.sql.scalar("SELECT uses FROM claim_tokens") == 2
    assert [e.details["again"] for e in actions(store, "gateway.claimed")] == [False, True]
    assert store.sql.scalar("SELECT count(*) FROM config_documents") == 1


def test_the_old_password_is_refused_after_a_reclaim(
    operator: ApiClient, anonymous: ApiClient, store: Store
) -> None:
    token = new_claim(operator)["token"]
    gateway = Gateway()
    old = claim(anonymous, gateway.body(token)).json()["mqtt"]["password"]
    assert load_policy(store.sql).authenticate(GW, old)
    new = claim(anonymous, gateway.body(token)).json()["mqtt"]["password"]
    policy = load_policy(store.sql)
    assert not policy.authenticate(GW, old)
    assert policy.authenticate(GW, new)


def test_a_claim_is_single_use_and_binds_the_keys(
    operator: ApiClient, anonymous: ApiClient, store: Store
) -> None:
    token = new_claim(operator)["token"]
    gateway = Gateway()
    assert claim(anonymous, gateway.body(token)).status_code == 200
    other = Gateway("b827ebfffe00c1a2")
    refused(claim(anonymous, other.body(token)), 409, "used at", GW, "new one")
    rekeyed = Gateway()
    refused(claim(anonymous, rekeyed.body(token)), 409, "other keys")
    # A gateway id registered before under other keys: the claim does not take it over.
    store.create_gateway(
        other.id,
        name="old",
        sign_public_key=raw_public(Ed25519PrivateKey.generate()),
        seal_public_key=raw_public(X25519PrivateKey.generate()),
        created=T0,
    )
    fresh = new_claim(operator)["token"]
    refused(claim(anonymous, other.body(fresh)), 409, "already registered under other keys")
    listing = {c["id"]: c["state"] for c in operator.get("/api/v1/claims").json()["items"]}
    assert sorted(listing.values()) == ["unused", "used"]


def test_claims_refused_unknown_expired_revoked_bad_proof_malformed(
    operator: ApiClient, anonymous: ApiClient, store: Store, clock: Clock, app: FastAPI
) -> None:
    gateway = Gateway()
    unknown = "owl-claim-" + "A" * 43
    refused(claim(anonymous, gateway.body(unknown)), 401, "not known")
    expiring = new_claim(operator, expires_in_s=60)
    clock.now += 61
    refused(claim(anonymous, gateway.body(expiring["token"])), 410, "expired at", "08:01:00")
    revoked = new_claim(operator)
    operator.delete(f"/api/v1/claims/{revoked['id']}")
    refused(claim(anonymous, gateway.body(revoked["token"])), 410, "revoked")
    good = new_claim(operator)["token"]
    forged = gateway.body(good, proof=Ed25519PrivateKey.generate().sign(b"x").hex())
    refused(claim(anonymous, forged), 403, "proof")
    other_gateway_proof = gateway.body(
        good, proof=gateway.identity.sign(claim_message(good, "b827ebfffe00c1a9")).hex()
    )
    refused(claim(anonymous, other_gateway_proof), 403, "proof")
    malformed = claim(anonymous, {**gateway.body(good), "gateway_id": "xyz"})
    refused(malformed, 422, "gateway_id")
    assert good not in malformed.text
    # None of these registered anything; the good claim still works.
    assert store.gateways().items == []
    assert claim(anonymous, gateway.body(good)).status_code == 200
    stats = operator.get("/api/v1/stats").json()["provisioning"]
    assert stats["claims"] == 1
    assert stats["refused"] == {
        "unknown": 1,
        "expired": 1,
        "revoked": 1,
        "bad_proof": 2,
        "malformed": 1,
    }


def test_too_many_failed_claims_from_one_address_are_refused_for_a_while(
    anonymous: ApiClient, operator: ApiClient, app: FastAPI
) -> None:
    gateway = Gateway()
    unknown = "owl-claim-" + "B" * 43
    for _ in range(MAX_FAILED_CLAIMS):
        assert claim(anonymous, gateway.body(unknown)).status_code == 401
    good = new_claim(operator)["token"]
    limited = claim(anonymous, gateway.body(good))
    refused(limited, 429, "too many failed claim attempts", "wait")
    assert int(limited.headers["retry-after"]) >= 1
    assert operator.get("/api/v1/stats").json()["provisioning"]["refused"]["rate_limited"] == 1


def test_without_complete_layers_the_claim_has_no_config_document(
    operator: ApiClient, anonymous: ApiClient, store: Store
) -> None:
    token = new_claim(operator)["token"]
    answer = claim(anonymous, Gateway().body(token)).json()
    assert answer["config_document"] is None
    assert store.sql.scalar("SELECT count(*) FROM config_documents") == 0


def test_a_fleet_without_signing_key_or_mqtt_url_says_how_to_start(
    store: Store, clock: Clock
) -> None:
    bare = create_app(store, clock=clock)
    token = new_claim(ApiClient(bare, role="operator"))["token"]
    answer = claim(ApiClient(bare, role=None), Gateway().body(token))
    refused(answer, 503, "--public-mqtt-url")
    assert store.gateways().items == []


def test_the_check_route_says_whether_the_heartbeat_arrived(
    operator: ApiClient, anonymous: ApiClient, store: Store, clock: Clock
) -> None:
    token = new_claim(operator)["token"]
    gateway = Gateway()
    claim(anonymous, gateway.body(token))
    url = f"/api/v1/provision/gateway/{GW}/check"
    before = anonymous.post(url, json=gateway.check(token))
    assert before.json() == {"last_seen": None, "last_health_at": None, "online": False}
    clock.now += 5
    store.gateway_heard(GW, clock.now)
    after = anonymous.post(url, json=gateway.check(token)).json()
    assert after == {"last_seen": "2027-01-15T08:00:05Z", "last_health_at": None, "online": True}
    refused(anonymous.post(url, json=Gateway().check(token)), 403, "proof")
    other = "/api/v1/provision/gateway/b827ebfffe00c1a2/check"
    refused(anonymous.post(other, json=gateway.check(token)), 401, "did not claim")
    clock.now += CHECK_WINDOW_S
    refused(anonymous.post(url, json=gateway.check(token)), 410, "after the claim")


# --- sensor modules ------------------------------------------------------------------------------


def provision(client: ApiClient, **changes: Any) -> httpx.Response:
    return client.post(
        "/api/v1/provision/nodes",
        json={"dev_eui": DEV, "profile_id": PROFILE, "name": "bay 12", **changes},
    )


def test_nodes_get_a_random_wrapped_appkey_only_technicians_receive(
    app: FastAPI, store: Store
) -> None:
    technician = ApiClient(app, role="technician")
    assert provision(ApiClient(app, role="operator")).status_code == 403
    assert provision(ApiClient(app, role=None)).status_code == 401
    response = provision(technician, site="market square")
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["dev_eui"] == DEV
    assert answer["created"] is True
    assert answer["join_eui"] == "0000000000000000"
    assert answer["profile_id"] == PROFILE
    app_key = bytes.fromhex(answer["app_key"])
    assert len(app_key) == 16
    stored = bytes(store.sql.scalar("SELECT app_key FROM device_keys WHERE dev_eui = ?", [DEV]))
    assert stored != app_key
    assert app_key not in stored
    assert len(stored) > 16
    assert store.device_keys(DEV).app_key == app_key
    device = store.device(DEV)
    assert device.activation == "otaa"
    assert device.name == "bay 12"
    second = provision(technician, dev_eui="70b3d57ed000c0d2", join_eui="70B3D57ED00000FF")
    assert second.json()["join_eui"] == "70b3d57ed00000ff"
    assert second.json()["app_key"] != answer["app_key"]
    (event, _) = actions(store, "device.provisioned")
    assert event.actor == "test technician"
    assert event.details["site"] == "market square"
    assert answer["app_key"] not in repr(store.sql.query("SELECT * FROM audit_log"))


def test_a_rerun_by_the_same_technician_gets_the_same_key_others_a_conflict(
    app: FastAPI, store: Store
) -> None:
    technician = ApiClient(app, role="technician")
    first = provision(technician).json()
    again = provision(technician)
    assert again.status_code == 200
    assert again.json() == {**first, "created": False}
    assert [e.target for e in actions(store, "keys.exported")] == [f"device:{DEV}"]
    colleague = ApiClient(app, role="technician")
    refused(provision(colleague), 409, f"DevEUI {DEV} is already provisioned", "by test technician")
    refused(provision(technician, profile_id="bin-level-v1"), 409, "with profile parking-v1")
    # Once the device has joined, its key is not handed out again.
    store.sql.execute("UPDATE devices SET joined_at = ? WHERE dev_eui = ?", [T0 + 1, DEV])
    refused(provision(technician), 409, "it joined at")
    refused(provision(technician, profile_id="no-such-profile", dev_eui="70b3d57ed000c0d9"), 422)


# --- offline bundles -----------------------------------------------------------------------------


def fetch_bundle(client: ApiClient, laptop: X25519PrivateKey, count: int = 3) -> Any:
    response = client.post(
        "/api/v1/provision/bundles",
        json={
            "count": count,
            "profile_id": PROFILE,
            "site": "basement B2",
            "public_key": raw_public(laptop).hex(),
        },
    )
    assert response.status_code == 201, response.text
    answer = response.json()
    return answer, open_bundle(laptop, base64.b64decode(answer["bundle"]))


def registration(reservation: int, dev_eui: str, name: str = "") -> dict[str, Any]:
    at = datetime.fromtimestamp(T0 + 60, UTC).isoformat()
    return {"reservation": reservation, "dev_eui": dev_eui, "provisioned_at": at, "name": name}


def test_a_bundle_reserves_keys_sealed_to_the_laptop(app: FastAPI, store: Store) -> None:
    technician = ApiClient(app, role="technician")
    laptop = X25519PrivateKey.generate()
    answer, bundle = fetch_bundle(technician, laptop, count=3)
    assert answer["bundle_id"] == bundle.bundle_id
    assert answer["count"] == 3
    assert bundle.profile_id == PROFILE
    assert bundle.site == "basement B2"
    assert bundle.join_eui == bytes(8)
    assert bundle.expires_at == int(T0) + 30 * 86400
    keys = [r.app_key for r in bundle.reservations]
    assert len(set(keys)) == 3
    stored = [
        bytes(row[0]) for row in store.sql.query_tuples("SELECT app_key FROM key_reservations")
    ]
    assert len(stored) == 3
    assert not set(keys) & set(stored)
    assert all(store.vault is not None and store.vault.unwrap(s) in keys for s in stored)
    (event,) = actions(store, "bundle.issued")
    assert event.details["count"] == 3
    assert event.target == f"bundle:{bundle.bundle_id}"
    assert (
        ApiClient(app, role="operator").post("/api/v1/provision/bundles", json={}).status_code
        == 403
    )
    with pytest.raises(BundleSealError, match="does not open"):
        open_bundle(X25519PrivateKey.generate(), base64.b64decode(answer["bundle"]))


def test_sync_creates_devices_and_reports_conflicts_never_merging(
    app: FastAPI, store: Store
) -> None:
    technician = ApiClient(app, role="technician")
    _, bundle = fetch_bundle(technician, X25519PrivateKey.generate(), count=4)
    one, two, three, four = (r.id for r in bundle.reservations)
    online = provision(technician, dev_eui="70b3d57ed000c0e9").json()
    body = {
        "bundle_id": bundle.bundle_id,
        "registrations": [
            registration(one, "70b3d57ed000c0e1", "bay 1"),
            registration(two, "70b3d57ed000c0e2"),
            # The same DevEUI with another reservation: a conflict, the first stays.
            registration(three, "70b3d57ed000c0e1"),
            # One reservation for two DevEUIs: a conflict.
            registration(two, "70b3d57ed000c0e3"),
            # A DevEUI provisioned online already.
            registration(four, "70b3d57ed000c0e9"),
            registration(999_999, "70b3d57ed000c0e4"),
        ],
    }
    response = technician.post("/api/v1/provision/sync", json=body)
    assert response.status_code == 200, response.text
    results = [(r["reservation"], r["dev_eui"], r["result"]) for r in response.json()["results"]]
    assert results == [
        (one, "70b3d57ed000c0e1", "created"),
        (two, "70b3d57ed000c0e2", "created"),
        (three, "70b3d57ed000c0e1", "conflict"),
        (two, "70b3d57ed000c0e3", "conflict"),
        (four, "70b3d57ed000c0e9", "conflict"),
        (999_999, "70b3d57ed000c0e4", "conflict"),
    ]
    details = [r["detail"] for r in response.json()["results"]]
    assert "already provisioned" in details[2]
    assert "by test technician" in details[2]
    assert "already used for DevEUI 70b3d57ed000c0e2" in details[3]
    assert "not part of bundle" in details[5]
    keys = {r.id: r.app_key for r in bundle.reservations}
    assert store.device_keys("70b3d57ed000c0e1").app_key == keys[one]
    assert store.device("70b3d57ed000c0e1").name == "bay 1"
    assert store.device_keys("70b3d57ed000c0e9").app_key == bytes.fromhex(online["app_key"])
    # Syncing again: the created ones are already synced, nothing changes.
    again = technician.post(
        "/api/v1/provision/sync", json={**body, "registrations": body["registrations"][:2]}
    )
    assert [r["result"] for r in again.json()["results"]] == ["already_synced", "already_synced"]
    synced = actions(store, "bundle.synced")
    assert [e.details for e in synced] == [
        {"created": 2, "already_synced": 0, "conflict": 4},
        {"created": 0, "already_synced": 2, "conflict": 0},
    ]
    via_bundle = [e for e in actions(store, "device.provisioned") if e.details["via"] == "bundle"]
    assert [e.target for e in via_bundle] == ["device:70b3d57ed000c0e1", "device:70b3d57ed000c0e2"]
    # A bundle is its technician's: a colleague cannot sync it; nor is an unknown one found.
    colleague = ApiClient(app, role="technician")
    refused(colleague.post("/api/v1/provision/sync", json=body), 403, "was issued to")
    missing = {**body, "bundle_id": "bnd-00000000000000ff"}
    refused(technician.post("/api/v1/provision/sync", json=missing), 404, "no bundle")


def broker_answer(holder: PolicyHolder, username: str, password: str) -> int | None:
    """The embedded broker enforcing ``holder``: None when the login is accepted, else the
    CONNACK return code."""

    async def attempt() -> int | None:
        async with EmbeddedBroker(policy=holder) as broker:
            try:
                async with aiomqtt.Client(
                    broker.host, broker.port, username=username, password=password
                ):
                    return None
            except aiomqtt.MqttCodeError as err:
                code = getattr(err.rc, "value", err.rc)
                assert isinstance(code, int)
                return code

    return asyncio.run(attempt())


def test_the_embedded_broker_takes_the_new_password_and_refuses_the_old(
    vault: KeyVault, clock: Clock, fleet_key: Ed25519PrivateKey
) -> None:
    # The broker side does not depend on the database: SQLite only.
    with Store(":memory:", vault=vault) as store:
        holder = PolicyHolder(load_policy(store.sql))
        served = create_app(
            store, clock=clock, on_broker_change=broker_change_hook(store, holder, None, None)
        )
        configure(served, ProvisioningSettings(mqtt_url=MQTT_URL, signing_key=fleet_key))
        token = new_claim(ApiClient(served, role="operator"))["token"]
        gateway = Gateway()
        old = claim(ApiClient(served, role=None), gateway.body(token)).json()["mqtt"]["password"]
        assert broker_answer(holder, GW, old) is None
        new = claim(ApiClient(served, role=None), gateway.body(token)).json()["mqtt"]["password"]
        assert broker_answer(holder, GW, new) is None
        # CONNACK 5, "not authorised" (MQTT 3.1.1 section 3.2.2.3), as paho reports it: 135.
        assert broker_answer(holder, GW, old) == 135
