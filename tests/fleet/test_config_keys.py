"""``owlgate fleet config-key``: a config signing key generated or imported is stored wrapped
under the KEK, signs the fleet's documents from then on, and is never shown; a public key
imported verifies documents signed offline; every change is audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from typer.testing import CliRunner

from owlgate.codecs.cli import app
from owlgate.codecs.configdoc import verify_config
from owlgate.codecs.signed import key_id
from owlgate.fleet.audit import events as audit_events
from owlgate.fleet.configs import put_layer
from owlgate.fleet.rollouts import (
    RolloutCreate,
    RolloutEngine,
    RolloutError,
    active_signing_key,
    start_rollout,
)
from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault

RUNNER = CliRunner()
URL = "mqtt://broker.city.example:1883"


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    db = tmp_path / "fleet.sqlite3"
    result = RUNNER.invoke(
        app, ["fleet", "seed", "--db", str(db), "--gateways", "1", "--nodes", "0", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    return db


def _vault(db: Path) -> KeyVault:
    return KeyVault.from_file(db.parent / "gateway-keys" / "fleet-kek.json")


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def test_generate_stores_the_key_wrapped_and_the_fleet_signs_with_it(seeded: Path) -> None:
    result = RUNNER.invoke(app, ["fleet", "config-key", "generate", "--db", str(seeded), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["active"] is True
    assert shown["signs"] is True
    assert "PRIVATE" not in result.output
    with Store(seeded, vault=_vault(seeded)) as store:
        stored = store.sql.query("SELECT private_key FROM config_keys")
        (blob,) = [bytes(row["private_key"]) for row in stored]
        key = active_signing_key(store.sql, store.vault)
        assert key is not None
        # Wrapped (RFC 3394 under the KEK, whose id the blob names): the raw key is not there.
        assert key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()) not in blob
        assert blob[2 : 2 + blob[1]].decode() == _vault(seeded).key_id
        assert key_id(key).hex() == shown["key_id"]
        assert bytes.fromhex(shown["public_key"]) == key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        # The engine signs a rollout's documents with it, not with the fallback key.
        put_layer(store.sql, "defaults", None, {"mqtt": {"url": URL}}, actor="test")
        start_rollout(store, RolloutCreate(target="all"), actor="test")
        engine = RolloutEngine(store, Ed25519PrivateKey.generate())
        (item,) = engine.tick()
        doc = verify_config(item.payload, key.public_key())
        assert doc.signed_by == key_id(key)
        (event,) = audit_events(store.sql, action="config.key_generated").items
        assert event.target == f"config-key:{shown['key_id']}"
    # Without the KEK the key cannot be used, and saying so needs no secret.
    with Store(seeded) as store, pytest.raises(RolloutError, match="--kek-file or --kek-env"):
        active_signing_key(store.sql, None)


def test_import_a_private_then_a_public_key_and_show_them(seeded: Path, tmp_path: Path) -> None:
    signing = Ed25519PrivateKey.generate()
    private_file = tmp_path / "config.pem"
    private_file.write_bytes(_pem(signing))
    private_file.chmod(0o600)
    offline = Ed25519PrivateKey.generate()
    public_file = tmp_path / "offline.pub.pem"
    public_file.write_bytes(
        offline.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    for path in (private_file, public_file):
        result = RUNNER.invoke(
            app, ["fleet", "config-key", "import", "--db", str(seeded), "--key", str(path)]
        )
        assert result.exit_code == 0, result.output
    again = RUNNER.invoke(
        app, ["fleet", "config-key", "import", "--db", str(seeded), "--key", str(public_file)]
    )
    assert again.exit_code == 2
    assert "known already" in again.stderr

    shown = RUNNER.invoke(app, ["fleet", "config-key", "show", "--db", str(seeded), "--json"])
    assert shown.exit_code == 0, shown.output
    keys = {key["key_id"]: key for key in json.loads(shown.stdout)}
    assert keys[key_id(signing).hex()]["active"] is True
    assert keys[key_id(offline).hex()] == {**keys[key_id(offline).hex()], "signs": False}
    text = RUNNER.invoke(app, ["fleet", "config-key", "show", "--db", str(seeded)])
    assert "BEGIN PUBLIC KEY" in text.stdout
    assert "PRIVATE" not in text.stdout
    assert _pem(signing).decode().splitlines()[1] not in text.stdout
    with Store(seeded, vault=_vault(seeded)) as store:
        key = active_signing_key(store.sql, store.vault)
        assert key is not None
        assert key_id(key) == key_id(signing)
        actions = [e.action for e in audit_events(store.sql, action="config.key_imported").items]
        assert actions == ["config.key_imported", "config.key_imported"]


def test_bad_key_files_are_refused_in_one_line(seeded: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    result = RUNNER.invoke(
        app, ["fleet", "config-key", "import", "--db", str(seeded), "--key", str(junk)]
    )
    assert result.exit_code == 2
    assert "not an unencrypted PKCS#8 PEM private key" in result.stderr
    assert "AAAA" not in result.stderr
    missing = RUNNER.invoke(
        app,
        ["fleet", "config-key", "import", "--db", str(seeded), "--key", str(tmp_path / "no")],
    )
    assert missing.exit_code == 2
    empty = RUNNER.invoke(app, ["fleet", "config-key", "show", "--db", str(seeded)])
    assert "no config key" in empty.stdout
    no_db = RUNNER.invoke(app, ["fleet", "config-key", "show", "--db", str(tmp_path / "x.db")])
    assert no_db.exit_code == 2
