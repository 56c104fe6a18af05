"""``owlgate fleet claim create|list|revoke`` through the command line, on SQLite and
PostgreSQL: the token is printed once (or written 0600), listed never, and a token the
command line issued claims a gateway through the API until it is revoked."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from owlgate.codecs.cli import app as root_app
from owlgate.fleet import audit
from owlgate.fleet.api import create_app
from owlgate.fleet.provisioning import ProvisioningSettings, configure
from owlgate.fleet.store import Store
from tests.fleet.test_api import ApiClient
from tests.fleet.test_provisioning import GW, Gateway

RUNNER = CliRunner()


def claim_cli(*args: str) -> tuple[int, str, str]:
    result = RUNNER.invoke(root_app, ["fleet", "claim", *args])
    return result.exit_code, result.stdout, result.stderr


def test_a_claim_from_the_command_line_claims_once_and_is_revoked(
    store_target: str, tmp_path: Path
) -> None:
    Store(store_target).close()
    code, out, err = claim_cli(
        "create",
        "--db",
        store_target,
        "--group",
        "north",
        "--site",
        "depot",
        "--expires-hours",
        "2",
        "--comment",
        "job 12",
    )
    assert code == 0, err
    token = out.strip()
    assert token.startswith("owl-claim-")
    assert "shown this once" in err
    assert "group north, site depot" in err
    code, out, err = claim_cli("create", "--db", store_target, "--out", str(tmp_path / "claim"))
    assert code == 0, err
    written = (tmp_path / "claim").read_text().strip()
    assert written.startswith("owl-claim-")
    assert written not in out
    assert stat.S_IMODE((tmp_path / "claim").stat().st_mode) == 0o600

    with Store(store_target) as store:
        app = create_app(store)
        configure(
            app,
            ProvisioningSettings(
                mqtt_url="mqtt://fleet:1883", signing_key=Ed25519PrivateKey.generate()
            ),
        )
        gateway = Gateway()
        answer = ApiClient(app, role=None).post(
            "/api/v1/provision/gateway", json=gateway.body(token)
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["group"] == "north"

    code, out, err = claim_cli("list", "--db", store_target, "--json")
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(c["state"], c["gateway_id"], c["group"]) for c in listed] == [
        ("used", GW, "north"),
        ("unused", None, None),
    ]
    assert token not in out
    assert written not in out
    code, table, _ = claim_cli("list", "--db", store_target)
    assert f"claimed gateway {GW} at" in table
    assert "job 12" in table

    code, out, err = claim_cli("revoke", str(listed[0]["id"]), "--db", store_target)
    assert code == 0, err
    assert f"claim {listed[0]['id']} revoked (it had claimed gateway {GW})" in out
    with Store(store_target) as store:
        app = create_app(store)
        again = ApiClient(app, role=None).post(
            "/api/v1/provision/gateway", json=gateway.body(token)
        )
        assert again.status_code == 410
        assert "revoked" in again.json()["detail"]
        assert [e.action for e in audit.events(store.sql, action="claim.*").items] == [
            "claim.created",
            "claim.created",
            "claim.revoked",
        ]
        assert all(
            e.actor.startswith("cli:") for e in audit.events(store.sql, action="claim.*").items
        )


def test_the_claim_commands_refuse_bad_input_with_exit_2(store_target: str, tmp_path: Path) -> None:
    missing = tmp_path / "none.sqlite3"
    code, _, err = claim_cli("list", "--db", str(missing))
    assert code == 2
    assert "no such database" in err
    Store(store_target).close()
    for args, words in (
        (["create", "--expires-hours", "0"], "expires in 60 .. 2592000 s"),
        (["create", "--group", "two words"], "group name"),
        (["revoke", "42"], "no claim token 42"),
    ):
        code, _, err = claim_cli(*args, "--db", store_target)
        assert code == 2, args
        assert words in err, (args, err)
    code, out, _ = claim_cli("list", "--db", store_target)
    assert "no claim tokens" in out


def test_serve_refuses_a_public_mqtt_url_that_is_not_one(tmp_path: Path) -> None:
    result = RUNNER.invoke(
        root_app,
        [
            "fleet",
            "serve",
            "--db",
            str(tmp_path / "fleet.sqlite3"),
            "--public-mqtt-url",
            "https://broker.example",
        ],
    )
    assert result.exit_code == 2
    assert "--public-mqtt-url" in result.stderr
    assert "mqtt://" in result.stderr
    assert not (tmp_path / "fleet.sqlite3").exists()
