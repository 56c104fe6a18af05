"""The audit log: registrations through the API are recorded with who did them, in the same
transaction; the log is append-only in the database itself (SQLite and PostgreSQL); the API
filters and pages it; nothing secret goes into it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from typer.testing import CliRunner

from owlgate.fleet.api import create_app
from owlgate.fleet.audit import events, record_event
from owlgate.fleet.auth import Principal
from owlgate.fleet.cli_auth import audit_command
from owlgate.fleet.sql import DataRefused
from owlgate.fleet.store import Store
from tests.fleet.conftest import GW1, T0, raw_public
from tests.fleet.test_api import ApiClient, Clock

NEW_GW = "b827ebfffe0000a1"
APP_KEY_HEX = "00112233445566778899aabbccddeeff"


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 10)


@pytest.fixture
def admin(registry: Store, clock: Clock) -> ApiClient:
    return ApiClient(create_app(registry, clock=clock), role="admin")


def gateway_body(gateway_id: str = NEW_GW) -> dict[str, str]:
    return {
        "id": gateway_id,
        "name": "depot roof",
        "sign_public_key": raw_public(Ed25519PrivateKey.generate()).hex(),
        "seal_public_key": raw_public(X25519PrivateKey.generate()).hex(),
    }


def device_body(dev_eui: str = "00000000000000b1") -> dict[str, str]:
    return {
        "dev_eui": dev_eui,
        "profile_id": "parking-v1",
        "activation": "otaa",
        "join_eui": "00000000000000ff",
        "app_key": APP_KEY_HEX,
    }


def test_registrations_through_the_api_are_recorded_with_their_actor(
    admin: ApiClient, clock: Clock
) -> None:
    technician = admin.as_role("technician")
    assert technician.post("/api/v1/admin/gateways", json=gateway_body()).status_code == 201
    clock.now += 5
    assert technician.post("/api/v1/admin/devices", json=device_body()).status_code == 201
    page = admin.get("/api/v1/audit", params={"action": "gateway.provisioned"}).json()
    [gateway] = page["items"]
    assert gateway["target"] == f"gateway:{NEW_GW}"
    assert gateway["actor"] == "test technician"
    assert gateway["actor_role"] == "technician"
    assert gateway["at"] == "2027-01-15T08:00:10Z"
    assert gateway["details"] == {"name": "depot roof", "via": "api"}
    [device] = admin.get("/api/v1/audit", params={"action": "device.provisioned"}).json()["items"]
    assert device["target"] == "device:00000000000000b1"
    assert device["actor_token"] == gateway["actor_token"]
    assert device["details"] == {
        "activation": "otaa",
        "name": "",
        "profile_id": "parking-v1",
        "via": "api",
    }
    assert device["at_s"] == T0 + 15
    assert APP_KEY_HEX not in admin.get("/api/v1/audit").text


def test_a_refused_registration_records_nothing(admin: ApiClient, registry: Store) -> None:
    admin.bearer()  # its token.created is recorded before the count
    before = len(events(registry.sql, limit=1000).items)
    taken = admin.post("/api/v1/admin/gateways", json=gateway_body(GW1))
    assert taken.status_code == 409
    unknown_profile = admin.post(
        "/api/v1/admin/devices", json={**device_body(), "profile_id": "nope"}
    )
    assert unknown_profile.status_code == 422
    assert len(events(registry.sql, limit=1000).items) == before


def test_the_log_is_append_only_in_the_database(registry: Store) -> None:
    record_event(registry.sql, actor="ops", action="alert.acknowledged", target="alert:1")
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with pytest.raises(DataRefused, match="append-only"):
            registry.sql.execute(statement)
    if registry.sql.dialect == "postgres":
        with pytest.raises(DataRefused, match="append-only"):
            registry.sql.execute("TRUNCATE audit_log")
    [event] = events(registry.sql, action="alert.acknowledged").items
    assert event.actor == "ops"


def test_filters_and_keyset_pages(admin: ApiClient, registry: Store) -> None:
    operator = Principal(token_id="00000000000000c1", name="night shift", role="operator")
    with registry.sql.transaction() as tx:
        for n in range(5):
            record_event(
                tx,
                actor=operator,
                action="alert.acknowledged",
                target=f"alert:{n}",
                details={"rule": "offline"},
                at=T0 + n,
            )
        record_event(tx, actor="cli:ops", action="keys.exported", target="device:x", at=T0 + 9)
    acked = {"action": "alert.acknowledged", "limit": 2}
    first = admin.get("/api/v1/audit", params=acked).json()
    assert [e["target"] for e in first["items"]] == ["alert:0", "alert:1"]
    second = admin.get("/api/v1/audit", params={**acked, "after": first["next"]}).json()
    third = admin.get("/api/v1/audit", params={**acked, "after": second["next"]}).json()
    assert [e["target"] for e in second["items"] + third["items"]] == [
        "alert:2",
        "alert:3",
        "alert:4",
    ]
    assert third["next"] is None
    by_actor = admin.get("/api/v1/audit", params={"actor": "00000000000000c1"}).json()
    assert len(by_actor["items"]) == 5
    named = admin.get("/api/v1/audit", params={"actor": "cli:ops"}).json()["items"]
    assert [e["action"] for e in named] == ["keys.exported"]
    since = admin.get(
        "/api/v1/audit", params={"action": "alert.acknowledged", "since": "2027-01-15T08:00:03Z"}
    ).json()
    assert [e["target"] for e in since["items"]] == ["alert:3", "alert:4"]
    one = admin.get("/api/v1/audit", params={"target": "alert:2"}).json()["items"]
    assert [(e["actor"], e["actor_role"], e["details"]) for e in one] == [
        ("night shift", "operator", {"rule": "offline"})
    ]
    family = admin.get("/api/v1/audit", params={"action": "alert.*"}).json()["items"]
    assert len(family) == 5
    bad = admin.get("/api/v1/audit", params={"after": "yesterday"})
    assert bad.status_code == 422
    assert "cursor" in bad.json()["error"]["message"]


def test_secrets_are_refused_from_details(registry: Store) -> None:
    for details in (
        {"app_key": "00"},
        {"nwk_s_key": "00"},
        {"changes": {"password": "hunter2"}},
        {"token": "owl_x"},
    ):
        with pytest.raises(ValueError, match="secret"):
            record_event(
                registry.sql, actor="x", action="device.changed", target="d", details=details
            )
    with pytest.raises(TypeError, match="bytes"):
        record_event(
            registry.sql, actor="x", action="device.changed", target="d", details={"v": b"\1"}
        )
    with pytest.raises(ValueError, match="dotted"):
        record_event(registry.sql, actor="x", action="Provisioned", target="d")
    record_event(
        registry.sql,
        actor="x",
        action="gateway.changed",
        target="gateway:1",
        details={"sign_public_key": "ab" * 32},
    )
    assert events(registry.sql, action="device.changed").items == []
    assert len(events(registry.sql, action="gateway.changed").items) == 1


def test_the_audit_command_prints_json_lines(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite3"
    with Store(db) as store:
        record_event(store.sql, actor="cli:ops", action="keys.exported", target="device:a", at=T0)
        record_event(store.sql, actor="cli:ops", action="token.created", target="token:b", at=T0)
    cli = typer.Typer()
    cli.command("audit")(audit_command)
    result = CliRunner().invoke(cli, ["--db", str(db), "--action", "keys.*"])
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert json.loads(line) == {
        "id": 1,
        "at": "2027-01-15T08:00:00Z",
        "actor": "cli:ops",
        "actor_role": None,
        "action": "keys.exported",
        "target": "device:a",
        "details": {},
    }
