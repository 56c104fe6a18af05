"""API tokens and roles through the HTTP API and the CLI: 401 without a valid token (saying
why), 403 for a weaker role, tokens stored only as hashes, counters of refusals."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from owlgate.codecs.cli import app as root_app
from owlgate.fleet.api import create_app
from owlgate.fleet.auth import (
    LAST_USED_RESOLUTION_S,
    Unauthenticated,
    authenticate,
    create_token,
    tokens,
)
from owlgate.fleet.cli_auth import write_admin_token
from owlgate.fleet.store import InvalidError, Store
from tests.fleet.conftest import GW1, T0
from tests.fleet.test_api import ApiClient, Clock

NO_REFUSALS = dict.fromkeys(
    ("missing", "malformed", "unknown", "revoked", "expired", "rate_limited"), 0
)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 10)


@pytest.fixture
def anonymous(registry: Store, clock: Clock) -> ApiClient:
    return ApiClient(create_app(registry, clock=clock), role=None)


def bearer(client: ApiClient, token: str) -> ApiClient:
    return ApiClient(client.app, token=token)


def refusal(response_code: int, body: dict[str, object]) -> tuple[int, object, object]:
    error = body["error"]
    assert isinstance(error, dict)
    return response_code, error["code"], error["reason"]


def test_a_call_without_a_token_is_401_with_a_bearer_challenge(anonymous: ApiClient) -> None:
    response = anonymous.get("/api/v1/gateways")
    assert refusal(response.status_code, response.json()) == (401, "unauthenticated", "missing")
    assert response.headers["www-authenticate"] == 'Bearer realm="owlgate"'
    assert "Authorization: Bearer" in response.json()["error"]["message"]
    # Not a way around it: another scheme, or an empty bearer.
    for header in ("Basic YWRtaW46YWRtaW4=", "Bearer ", "bearer"):
        again = anonymous.get("/api/v1/gateways", headers={"Authorization": header})
        assert again.status_code == 401, header


def test_malformed_and_unknown_tokens_are_401_invalid_token(
    anonymous: ApiClient, registry: Store
) -> None:
    real = create_token(registry, role="admin", name="real")
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    cases = {
        "owl_not-a-token": "malformed",
        "x" * 60: "malformed",
        forged: "unknown",
        "owl_00000000000000ff_" + "A" * 43: "unknown",
    }
    for token, reason in cases.items():
        response = bearer(anonymous, token).get("/api/v1/gateways")
        assert refusal(response.status_code, response.json()) == (401, "unauthenticated", reason)
        assert (
            response.headers["www-authenticate"] == 'Bearer realm="owlgate", error="invalid_token"'
        )
        # The refusal never echoes what was sent.
        assert token not in response.text


def test_a_weaker_role_is_403_naming_the_roles_needed(anonymous: ApiClient) -> None:
    operator = anonymous.as_role("operator")
    body = {"id": "b827ebfffe000009", "sign_public_key": "00" * 32, "seal_public_key": "00" * 32}
    response = operator.post("/api/v1/admin/gateways", json=body)
    assert refusal(response.status_code, response.json()) == (403, "forbidden", "forbidden")
    message = response.json()["error"]["message"]
    assert "admin or technician" in message
    assert "has operator" in message
    assert operator.get("/api/v1/audit").status_code == 403
    technician = anonymous.as_role("technician")
    assert technician.get("/api/v1/audit").status_code == 403
    assert technician.get(f"/api/v1/gateways/{GW1}").status_code == 200
    assert technician.post("/api/v1/admin/gateways", json=body).status_code == 201


def test_revoked_and_expired_tokens_are_401_saying_so(
    anonymous: ApiClient, registry: Store, clock: Clock
) -> None:
    admin = anonymous.as_role("admin")
    created = admin.post(
        "/api/v1/admin/tokens", json={"role": "operator", "name": "dashboard", "expires_days": 1}
    )
    assert created.status_code == 201
    token = created.json()["token"]
    assert created.json()["expires_at"] == "2027-01-16T08:00:10Z"
    dashboard = bearer(anonymous, token)
    assert dashboard.get("/api/v1/gateways").status_code == 200
    clock.now += 86400
    expired = dashboard.get("/api/v1/gateways")
    assert refusal(expired.status_code, expired.json()) == (401, "unauthenticated", "expired")
    assert "has expired" in expired.json()["error"]["message"]
    clock.now -= 86400
    other = admin.post("/api/v1/admin/tokens", json={"role": "technician", "name": "van 3"})
    token_id = other.json()["id"]
    van = bearer(anonymous, other.json()["token"])
    assert van.get("/api/v1/nodes").status_code == 200
    revoked = admin.delete(f"/api/v1/admin/tokens/{token_id}")
    assert revoked.status_code == 200
    assert revoked.json()["state"] == "revoked"
    refused = van.get("/api/v1/nodes")
    assert refusal(refused.status_code, refused.json()) == (401, "unauthenticated", "revoked")
    assert f"{token_id} was revoked" in refused.json()["error"]["message"]
    assert admin.delete("/api/v1/admin/tokens/00000000000000ff").status_code == 404


def test_tokens_are_stored_as_sha256_only_and_never_listed(
    anonymous: ApiClient, registry: Store
) -> None:
    admin = anonymous.as_role("admin")
    created = admin.post("/api/v1/admin/tokens", json={"role": "operator", "name": "grafana"})
    token = created.json()["token"]
    prefix, token_id, secret = token.split("_", 2)
    assert prefix == "owl"
    assert token_id == created.json()["id"]
    # 32 random bytes, URL-safe base64 without padding.
    assert len(secret) == 43
    rows = registry.sql.query("SELECT * FROM api_tokens WHERE id = ?", [token_id])
    assert bytes(rows[0]["token_hash"]) == hashlib.sha256(token.encode()).digest()
    stored = json.dumps(rows, default=lambda value: bytes(value).hex())
    assert secret not in stored
    assert token not in stored
    listing = admin.get("/api/v1/admin/tokens")
    assert listing.status_code == 200
    assert token_id in [t["id"] for t in listing.json()["items"]]
    assert secret not in listing.text
    audit = admin.get("/api/v1/audit", params={"action": "token.*"}).text
    assert secret not in audit


def test_last_used_is_written_at_most_once_a_minute(registry: Store) -> None:
    token = create_token(registry, role="operator", name="poller", now=T0)
    authenticate(registry, token, now=T0 + 1)
    authenticate(registry, token, now=T0 + 30)
    [info] = [t for t in tokens(registry) if t.name == "poller"]
    assert info.last_used == T0 + 1
    authenticate(registry, token, now=T0 + 1 + LAST_USED_RESOLUTION_S)
    [info] = [t for t in tokens(registry) if t.name == "poller"]
    assert info.last_used == T0 + 1 + LAST_USED_RESOLUTION_S


def test_bad_token_requests_are_refused_with_typed_errors(registry: Store) -> None:
    with pytest.raises(InvalidError, match="unknown role"):
        create_token(registry, role="root", name="x")  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match="name"):
        create_token(registry, role="operator", name="  ")
    with pytest.raises(InvalidError, match="future"):
        create_token(registry, role="operator", name="x", expires_at=T0, now=T0 + 1)
    with pytest.raises(Unauthenticated, match="not an owlgate API token"):
        authenticate(registry, "owl_")


def test_refusals_are_counted_by_reason_in_stats_and_metrics(anonymous: ApiClient) -> None:
    anonymous.get("/api/v1/nodes")
    anonymous.get("/api/v1/nodes")
    bearer(anonymous, "owl_garbage").get("/api/v1/nodes")
    anonymous.as_role("technician").get("/api/v1/audit")
    operator = anonymous.as_role("operator")
    stats = operator.get("/api/v1/stats").json()["auth"]
    assert stats == {
        "admitted": 1,
        "refused": {**NO_REFUSALS, "missing": 2, "malformed": 1, "forbidden": 1},
    }
    metrics = operator.get("/metrics")
    assert metrics.status_code == 200
    assert 'owlgate_fleet_auth_refused_total{reason="missing"} 2' in metrics.text
    assert 'owlgate_fleet_auth_refused_total{reason="forbidden"} 1' in metrics.text
    assert anonymous.get("/metrics").status_code == 401


def test_the_token_commands_create_list_and_revoke(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite3"
    Store(db).close()
    runner = CliRunner()
    created = runner.invoke(
        root_app,
        [
            "fleet",
            "token",
            "create",
            "--db",
            str(db),
            "--role",
            "operator",
            "--name",
            "wall screen",
        ],
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("owl_")
    assert "shown this once" in created.stderr
    out = tmp_path / "admin-token"
    written = runner.invoke(
        root_app,
        ["fleet", "token", "create", "--db", str(db), "--role", "admin", "--name", "ops",
         "--expires-days", "30", "--out", str(out)],
    )  # fmt: skip
    assert written.exit_code == 0, written.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().strip() not in written.output
    listed = runner.invoke(root_app, ["fleet", "token", "list", "--db", str(db), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["name"], r["role"], r["state"]) for r in rows] == [
        ("wall screen", "operator", "active"),
        ("ops", "admin", "active"),
    ]
    assert rows[1]["expires_at"] is not None
    assert token not in listed.output
    with Store(db) as store:
        # The real clock: the CLI dates its tokens with it.
        client = ApiClient(create_app(store), token=token)
        assert client.get("/api/v1/gateways").status_code == 200
        revoked = runner.invoke(
            root_app, ["fleet", "token", "revoke", rows[0]["id"], "--db", str(db)]
        )
        assert revoked.exit_code == 0, revoked.output
        assert client.get("/api/v1/gateways").status_code == 401
        audit = ApiClient(client.app, token=out.read_text().strip()).get("/api/v1/audit").json()
    assert [e["action"] for e in audit["items"]] == [
        "token.created",
        "token.created",
        "token.revoked",
    ]
    assert all(e["actor"].startswith("cli:") for e in audit["items"])


def test_the_token_commands_refuse_bad_input_with_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite3"
    runner = CliRunner()
    missing = runner.invoke(root_app, ["fleet", "token", "list", "--db", str(db)])
    assert missing.exit_code == 2
    assert "no such database" in missing.stderr
    assert not db.exists()
    Store(db).close()
    for args in (
        ["create", "--role", "root", "--name", "x"],
        ["create", "--role", "admin", "--name", "x", "--expires-days", "0"],
        ["revoke", "00000000000000ff"],
    ):
        result = runner.invoke(root_app, ["fleet", "token", *args, "--db", str(db)])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("error: ")


def test_the_token_is_checked_before_the_request_is_validated(anonymous: ApiClient) -> None:
    not_json = {"content": b"{nope", "headers": {"content-type": "application/json"}}
    assert anonymous.get("/api/v1/gateways", params={"limit": 0}).status_code == 401
    assert anonymous.post("/api/v1/admin/gateways", **not_json).status_code == 401
    assert (
        anonymous.as_role("operator").post("/api/v1/admin/gateways", **not_json).status_code == 403
    )
    admin = anonymous.as_role("admin")
    assert admin.post("/api/v1/admin/gateways", **not_json).status_code == 422
    assert admin.post("/api/v1/admin/gateways", json={"id": 1}).status_code == 422
    # Each call counted once, whichever path refused it.
    stats = admin.get("/api/v1/stats").json()["auth"]
    assert stats == {"admitted": 3, "refused": {**NO_REFUSALS, "missing": 2, "forbidden": 1}}


def test_write_admin_token_writes_a_0600_file_that_the_api_admits(
    tmp_path: Path, anonymous: ApiClient, registry: Store
) -> None:
    path = write_admin_token(registry, tmp_path / "admin-token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    admin = bearer(anonymous, path.read_text().strip())
    assert admin.get("/api/v1/audit").status_code == 200
