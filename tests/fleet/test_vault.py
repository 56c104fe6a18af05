"""The key vault: RFC 3394 vectors, blobs, KEK files and variables, wrapped keys in the store,
and a scan of the database file for any key in plaintext, before and after a rotation."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from owlgate.codecs.bundle import open_bundle
from owlgate.codecs.lorawan import AesKey, JoinRequest
from owlgate.fleet import audit
from owlgate.fleet.auth import Principal
from owlgate.fleet.cli import KEK_FILE, fleet_command
from owlgate.fleet.joinserver import JoinServer
from owlgate.fleet.provisioning import (
    BundleRequest,
    ProvisioningSettings,
    Registration,
    SyncRequest,
    issue_bundle,
    sync_bundle,
)
from owlgate.fleet.rollouts import active_signing_key
from owlgate.fleet.store import KEY_COLUMNS, Store
from owlgate.fleet.vault import (
    KeyVault,
    VaultError,
    VaultRequiredError,
    WrongKekError,
    is_wrapped,
    kek_id_of,
)
from tests.fleet.conftest import APP_KEY, JOIN_EUI, NWK_S_KEY, OTAA_EUI, T0

RUNNER = CliRunner()
KEK_A = bytes(range(32))
KEK_B = bytes(range(32, 64))


# --- RFC 3394 ----------------------------------------------------------------------------------


def test_rfc3394_section_4_1_128_bit_kek_128_bit_data() -> None:
    kek = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
    data = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    expected = bytes.fromhex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5")
    assert aes_key_wrap(kek, data) == expected
    assert aes_key_unwrap(kek, expected) == data


def test_rfc3394_section_4_6_256_bit_kek_256_bit_data_through_the_vault() -> None:
    kek = bytes.fromhex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
    data = bytes.fromhex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
    expected = bytes.fromhex(
        "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"
    )
    assert aes_key_wrap(kek, data) == expected
    blob = KeyVault("k1", kek).wrap(data)
    # Version 1, id length 2, "k1", then exactly the RFC's output.
    assert blob == b"\x01\x02k1" + expected
    assert KeyVault("k1", kek).unwrap(blob) == data
    assert kek_id_of(blob) == "k1"


# --- blobs -------------------------------------------------------------------------------------

key_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", fullmatch=True)


@given(
    key_id=key_ids,
    kek=st.binary(min_size=32, max_size=32),
    key=st.integers(2, 8).flatmap(lambda n: st.binary(min_size=8 * n, max_size=8 * n)),
)
def test_wrap_unwrap_round_trip(key_id: str, kek: bytes, key: bytes) -> None:
    vault = KeyVault(key_id, kek)
    blob = vault.wrap(key)
    assert len(blob) == 2 + len(key_id) + len(key) + 8
    assert is_wrapped(blob)
    assert not is_wrapped(key[:16])
    assert kek_id_of(blob) == key_id
    assert vault.unwrap(blob) == key


def test_a_wrong_kek_is_detected_and_named_without_key_bytes() -> None:
    blob = KeyVault("k1", KEK_A).wrap(APP_KEY)
    # The same id, another KEK: RFC 3394's integrity check fails.
    with pytest.raises(WrongKekError) as same_id:
        KeyVault("k1", KEK_B).unwrap(blob)
    assert same_id.value.kek_id == "k1"
    assert "integrity check failed" in same_id.value.message
    # Another id: the error names the KEK needed.
    with pytest.raises(WrongKekError) as other_id:
        KeyVault("k2", KEK_B).unwrap(blob)
    assert other_id.value.kek_id == "k1"
    assert other_id.value.held == ("k2",)
    assert "'k1'" in other_id.value.message
    for err in (same_id.value, other_id.value):
        for secret in (APP_KEY, KEK_A, KEK_B):
            assert secret.hex() not in str(err).lower()
    # A flipped bit in the wrapped key is caught the same way.
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(WrongKekError):
        KeyVault("k1", KEK_A).unwrap(tampered)
    # An older KEK still unwraps during a rotation; new blobs use the current one.
    rotating = KeyVault("k2", KEK_B).with_older([KeyVault("k1", KEK_A)])
    assert rotating.unwrap(blob) == APP_KEY
    assert rotating.key_ids == ("k2", "k1")
    assert kek_id_of(rotating.wrap(APP_KEY)) == "k2"


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (APP_KEY, "format version"),
        (b"\x01", "1 bytes"),
        (b"\x01\x00" + bytes(24), "key id length 0"),
        (b"\x01\x02k1" + bytes(20), "key id length 2"),
        (b"\x01\x02k1" + bytes(25), "whole 64-bit blocks"),
        (b"\x01\x02k\xff" + bytes(24), "not ASCII"),
        (b"\x01\x02k/" + bytes(24), "KEK id"),
    ],
)
def test_what_is_not_a_blob_is_refused(blob: bytes, reason: str) -> None:
    with pytest.raises(VaultError, match=reason):
        KeyVault("k1", KEK_A).unwrap(blob)
    assert not is_wrapped(blob)


def test_keys_and_keks_of_wrong_sizes_are_refused() -> None:
    with pytest.raises(VaultError, match="at least 16 bytes"):
        KeyVault("k1", KEK_A).wrap(bytes(8))
    with pytest.raises(VaultError, match="whole 64-bit blocks"):
        KeyVault("k1", KEK_A).wrap(bytes(20))
    with pytest.raises(VaultError, match="32 bytes"):
        KeyVault("k1", bytes(16))
    with pytest.raises(VaultError, match="KEK id"):
        KeyVault("", KEK_A)
    with pytest.raises(VaultError, match="two different KEKs"):
        KeyVault("k1", KEK_A, older={"k1": KEK_B})


# --- loading -----------------------------------------------------------------------------------


def test_kek_files_are_written_0600_never_overwritten_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    made = KeyVault.generate_file(path, "2026-12")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["id"] == "2026-12"
    assert len(bytes.fromhex(document["kek"])) == 32
    loaded = KeyVault.from_file(path)
    assert loaded.key_id == "2026-12"
    assert loaded.unwrap(made.wrap(APP_KEY)) == APP_KEY
    before = path.read_bytes()
    with pytest.raises(VaultError, match="never overwritten"):
        KeyVault.generate_file(path, "other")
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_kek_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek.json"
    KeyVault.generate_file(path, "k1")
    path.chmod(mode)
    with pytest.raises(VaultError) as refused:
        KeyVault.from_file(path)
    assert f"chmod 600 {path}" in refused.value.message
    assert f"{mode:04o}" in refused.value.message
    path.chmod(0o400)
    assert KeyVault.from_file(path).key_id == "k1"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected"),
        ('{"id": "k1"}', "expected"),
        ('{"id": 7, "kek": "00"}', "'id' must be text"),
        ('{"id": "bad id", "kek": "' + KEK_A.hex() + '"}', "KEK id"),
        ('{"id": "k1", "kek": "zz"}', "not hex"),
        ('{"id": "k1", "kek": "' + KEK_A.hex()[:32] + '"}', "got 16"),
    ],
)
def test_bad_kek_files_are_refused(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "kek.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(VaultError, match=reason) as refused:
        KeyVault.from_file(path)
    assert KEK_A.hex()[:32] not in refused.value.message
    with pytest.raises(VaultError, match="No such file"):
        KeyVault.from_file(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "is not set"),
        (KEK_A.hex(), "no ':' found"),
        (":" + KEK_A.hex(), "KEK id"),
        ("k 1:" + KEK_A.hex(), "KEK id"),
        ("k1:" + "g" * 64, "not hex"),
        ("k1:" + KEK_A.hex()[:62], "got 31"),
        ("k1:" + KEK_A.hex()[:61], "not hex"),
        ("k1:" + KEK_A.hex()[:60], "got 30"),
    ],
)
def test_bad_kek_variables_are_refused(value: str | None, reason: str) -> None:
    environ = {} if value is None else {"FLEET_KEK": value}
    with pytest.raises(VaultError, match=reason) as refused:
        KeyVault.from_env("FLEET_KEK", environ)
    assert "FLEET_KEK" in refused.value.message
    assert KEK_A.hex()[:60] not in refused.value.message


def test_a_kek_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWLGATE_FLEET_KEK", f"k7:{KEK_B.hex().upper()}")
    vault = KeyVault.from_env()
    assert vault.key_id == "k7"
    assert KeyVault("k7", KEK_B).unwrap(vault.wrap(APP_KEY)) == APP_KEY


# --- the store ---------------------------------------------------------------------------------


def _raw_keys(db: Path) -> list[tuple[bytes | None, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT {', '.join(KEY_COLUMNS)} FROM device_keys").fetchall()
    finally:
        conn.close()


def test_the_store_wraps_what_it_writes_and_refuses_keys_without_a_vault(
    tmp_path: Path, vault: KeyVault
) -> None:
    db = tmp_path / "fleet.db"
    with Store(db, vault=vault) as store:
        store.create_device(
            OTAA_EUI,
            profile_id="parking-v1",
            activation="otaa",
            created=T0,
            join_eui=JOIN_EUI,
            app_key=APP_KEY,
        )
        assert store.device_keys(OTAA_EUI).app_key == APP_KEY
    ((app_key, nwk_s_key, app_s_key),) = _raw_keys(db)
    assert isinstance(app_key, bytes)
    assert kek_id_of(app_key) == vault.key_id
    assert (nwk_s_key, app_s_key) == (None, None)
    with Store(db) as bare:
        # The registry works; keys neither go in nor come out.
        assert [d.dev_eui for d in bare.devices().items] == [OTAA_EUI]
        with pytest.raises(VaultRequiredError):
            bare.device_keys(OTAA_EUI)
        with pytest.raises(VaultRequiredError):
            bare.create_device(
                "70b3d57ed0000009",
                profile_id="parking-v1",
                activation="otaa",
                created=T0,
                join_eui=JOIN_EUI,
                app_key=APP_KEY,
            )
        assert len(bare.devices().items) == 1
    with pytest.raises(WrongKekError) as wrong:
        Store(db, vault=KeyVault("other", KEK_B))
    assert wrong.value.kek_id == vault.key_id


def test_plaintext_keys_of_an_old_database_are_wrapped_at_open(
    tmp_path: Path, vault: KeyVault
) -> None:
    db = tmp_path / "fleet.db"
    with Store(db, vault=vault) as store:
        for index in range(3):
            store.create_device(
                f"70b3d57ed000000{index}",
                profile_id="parking-v1",
                activation="abp",
                created=T0,
                dev_addr=0x01000000 + index,
                nwk_s_key=NWK_S_KEY,
                app_s_key=bytes([index]) * 16,
            )
    # What a release before the vault left: raw 16-byte keys.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE device_keys SET nwk_s_key = ?, app_s_key = ?", [NWK_S_KEY, APP_KEY])
        conn.execute("DELETE FROM migrations WHERE name = '0004_wrapped_device_keys'")
    conn.close()
    with Store(db, vault=vault) as store:
        assert store.plaintext_keys_wrapped == 6
        assert "0004_wrapped_device_keys" in store.applied_migrations()
        for index in range(3):
            keys = store.device_keys(f"70b3d57ed000000{index}")
            assert (keys.nwk_s_key, keys.app_s_key) == (NWK_S_KEY, APP_KEY)
    assert all(is_wrapped(v) for row in _raw_keys(db) for v in row if v is not None)
    assert _found(db, {NWK_S_KEY, APP_KEY}) == set()
    with Store(db, vault=vault) as again:
        assert again.plaintext_keys_wrapped == 0
    # One damaged blob: that device's keys are refused and counted, the others still read.
    conn = sqlite3.connect(db)
    with conn:
        (blob,) = conn.execute("SELECT app_s_key FROM device_keys WHERE rowid = 3").fetchone()
        damaged = blob[:-1] + bytes([blob[-1] ^ 0x80])
        conn.execute("UPDATE device_keys SET app_s_key = ? WHERE rowid = 3", [damaged])
    conn.close()
    with Store(db, vault=vault) as damaged_store:
        with pytest.raises(WrongKekError, match="integrity check failed"):
            damaged_store.device_keys("70b3d57ed0000002")
        assert damaged_store.unwrap_errors == 1
        assert damaged_store.device_keys("70b3d57ed0000000").app_s_key == APP_KEY
        assert damaged_store.device_keys("70b3d57ed0000001").nwk_s_key == NWK_S_KEY
    # A value that is neither refuses the open, naming the device, and changes nothing.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE device_keys SET app_s_key = ? WHERE rowid = 1", [bytes(5)])
    conn.close()
    with pytest.raises(VaultError, match="neither a wrapped key nor a plaintext one"):
        Store(db, vault=vault)


# --- the scan ----------------------------------------------------------------------------------


def _database_bytes(db: Path) -> bytes:
    """Everything SQLite keeps on disk for ``db``: the file, its WAL and its journal."""
    parts = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-journal")]
    return b"".join(part.read_bytes() for part in parts if part.exists())


def _found(db: Path, secrets: set[bytes]) -> set[bytes]:
    data = _database_bytes(db)
    return {secret for secret in secrets if secret in data}


def _manifest_keys(folder: Path) -> set[bytes]:
    manifest = json.loads((folder / "emulator-secrets.json").read_text())
    return {
        bytes.fromhex(device[name])
        for device in manifest["devices"]
        for name in ("app_key", "nwk_s_key", "app_s_key")
        if name in device
    }


def _store_keys(store: Store) -> set[bytes]:
    found: set[bytes] = set()
    for device in store.devices(limit=1000).items:
        keys = store.device_keys(device.dev_eui)
        found |= {k for k in (keys.app_key, keys.nwk_s_key, keys.app_s_key) if k is not None}
    return found


def test_no_key_is_in_the_database_file_in_plaintext_before_or_after_rotation(
    tmp_path: Path,
) -> None:
    db = tmp_path / "fleet.db"
    seeded = RUNNER.invoke(fleet_command, ["seed", "--db", str(db), "--nodes", "12"])
    assert seeded.exit_code == 0, seeded.stderr
    kek_path = tmp_path / "gateway-keys" / KEK_FILE
    assert stat.S_IMODE(kek_path.stat().st_mode) == 0o600
    vault = KeyVault.from_file(kek_path)
    kek = bytes.fromhex(json.loads(kek_path.read_text())["kek"])
    seeded_keys = _manifest_keys(tmp_path)
    assert len(seeded_keys) == 6 * 2 + 6  # 6 ABP (two session keys), 6 OTAA (AppKey)
    manifest = json.loads((tmp_path / "emulator-secrets.json").read_text())
    gateway = manifest["gateways"][0]["id"]
    otaa = [d for d in manifest["devices"] if d["activation"] == "otaa"]
    with Store(db, vault=vault) as store:
        # Joins write session keys, as the fleet does when serving.
        for device in otaa[:3]:
            request = JoinRequest.build(
                AesKey(bytes.fromhex(device["app_key"])),
                join_eui=int(device["join_eui"], 16),
                dev_eui=int(device["dev_eui"], 16),
                dev_nonce=7,
            )
            JoinServer(store).join(request.to_bytes(), at=T0, gateway_ids=[gateway])
        stored_keys = _store_keys(store)
        # Read back through the vault: what seed wrote, and three sessions' keys more.
        assert seeded_keys <= stored_keys
        assert len(stored_keys) == len(seeded_keys) + 3 * 2
        # Scanned while the store is open (the WAL holds the latest writes) and after.
        assert _found(db, stored_keys | {kek}) == set()
        old_blobs = {v for row in _raw_keys(db) for v in row if isinstance(v, bytes)}
        assert len(old_blobs) == len(stored_keys)
        assert _found(db, old_blobs) == old_blobs
    assert _found(db, stored_keys | {kek}) == set()

    # The scan can fail: the same keys written raw into a scratch table of a copy are found.
    control = tmp_path / "control"
    control.mkdir()
    for part in tmp_path.glob("fleet.db*"):
        shutil.copy(part, control / part.name)
    conn = sqlite3.connect(control / "fleet.db")
    with conn:
        conn.execute("CREATE TABLE scratch (k BLOB)")
        conn.executemany("INSERT INTO scratch VALUES (?)", [(k,) for k in sorted(stored_keys)])
    conn.close()
    assert _found(control / "fleet.db", stored_keys) == stored_keys

    new_kek = tmp_path / "new-kek.json"
    rotated = RUNNER.invoke(
        fleet_command,
        ["rotate-kek", "--db", str(db), "--new-kek-file", str(new_kek), "--new-kek-id", "k2"],
    )
    assert rotated.exit_code == 0, rotated.stderr
    assert f"re-wrapped {len(stored_keys)} keys" in rotated.stdout
    assert "'k2'" in rotated.stdout
    assert stat.S_IMODE(new_kek.stat().st_mode) == 0o600
    new_vault = KeyVault.from_file(new_kek)
    with Store(db, vault=new_vault) as store:
        assert _store_keys(store) == stored_keys
        # The rotation is in the audit log: who, which KEK ids, how many keys.
        (event,) = audit.events(store.sql, action="keys.rewrapped").items
        assert event.actor.startswith("cli:")
        assert event.target == "kek-id:k2"
        assert event.details["rewrapped"] == len(stored_keys)
    # Nothing in plaintext, and the blobs wrapped under the old KEK are gone from the file.
    new_secret = bytes.fromhex(json.loads(new_kek.read_text())["kek"])
    assert _found(db, stored_keys | {kek, new_secret}) == set()
    assert _found(db, old_blobs) == set()
    assert {kek_id_of(v) for row in _raw_keys(db) for v in row if isinstance(v, bytes)} == {"k2"}
    # The old KEK alone no longer opens the database, and says which KEK it needs.
    with pytest.raises(WrongKekError) as old_only:
        Store(db, vault=vault)
    assert old_only.value.kek_id == "k2"
    refused = RUNNER.invoke(fleet_command, ["seed", "--db", str(db), "--nodes", "0"])
    assert refused.exit_code == 2
    assert "'k2'" in refused.stderr
    # Without its KEK file, seed names the KEK the database needs and makes no new one.
    kek_path.unlink()
    with Store(db) as bare:
        assert bare.kek_ids_in_use() == {"k2"}
    lost = RUNNER.invoke(fleet_command, ["seed", "--db", str(db), "--nodes", "0"])
    assert lost.exit_code == 2
    assert "wrapped under KEK k2" in lost.stderr
    assert not kek_path.exists()


def test_rotation_with_a_wrong_old_kek_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    assert RUNNER.invoke(fleet_command, ["seed", "--db", str(db), "--nodes", "4"]).exit_code == 0
    kek_path = tmp_path / "gateway-keys" / KEK_FILE
    real_id = KeyVault.from_file(kek_path).key_id
    before = _raw_keys(db)
    impostor = tmp_path / "impostor.json"
    impostor.write_text(json.dumps({"id": real_id, "kek": KEK_B.hex()}))
    impostor.chmod(0o600)
    new_kek = tmp_path / "new-kek.json"
    args = ["rotate-kek", "--db", str(db), "--new-kek-file", str(new_kek)]
    refused = RUNNER.invoke(fleet_command, [*args, "--kek-file", str(impostor)])
    assert refused.exit_code == 2
    assert "integrity check failed" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not new_kek.exists()
    assert _raw_keys(db) == before
    # From an environment variable, the right KEK rotates.
    kek_hex = json.loads(kek_path.read_text())["kek"]
    env = {"OLD_KEK": f"{real_id}:{kek_hex}"}
    done = RUNNER.invoke(fleet_command, [*args, "--kek-env", "OLD_KEK"], env=env)
    assert done.exit_code == 0, done.stderr
    assert "re-wrapped 6 keys" in done.stdout
    # The KEK in use given as both the old and the new one: refused.
    again = RUNNER.invoke(
        fleet_command, [*args, "--kek-file", str(new_kek)], catch_exceptions=False
    )
    assert again.exit_code == 2
    assert "needs an id of its own" in again.stderr
    both = RUNNER.invoke(
        fleet_command, [*args, "--kek-file", str(new_kek), "--kek-env", "OLD_KEK"], env=env
    )
    assert both.exit_code == 2
    assert "not both" in both.stderr


def test_serve_needs_the_kek(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    assert RUNNER.invoke(fleet_command, ["seed", "--db", str(db), "--nodes", "2"]).exit_code == 0
    missing = RUNNER.invoke(
        fleet_command, ["serve", "--db", str(db), "--kek-file", str(tmp_path / "none.json")]
    )
    assert missing.exit_code == 2
    assert "No such file" in missing.stderr
    assert "fleet seed" in missing.stderr
    kek_path = tmp_path / "gateway-keys" / KEK_FILE
    kek_path.chmod(0o644)
    loose = RUNNER.invoke(fleet_command, ["serve", "--db", str(db)])
    assert loose.exit_code == 2
    assert "chmod 600" in loose.stderr


def test_rotation_rewraps_the_config_key_and_the_appkeys_reserved_for_offline_bundles(
    tmp_path: Path,
) -> None:
    # No device yet: only the config signing key and a bundle's reserved AppKeys are wrapped,
    # so nothing else would show whether the rotation (and the KEK check at open) sees them.
    db = tmp_path / "fleet.db"
    assert RUNNER.invoke(fleet_command, ["seed", "--db", str(db), "--nodes", "0"]).exit_code == 0
    old = KeyVault.from_file(tmp_path / "gateway-keys" / KEK_FILE)
    made = RUNNER.invoke(fleet_command, ["config-key", "generate", "--db", str(db), "--json"])
    assert made.exit_code == 0, made.stderr
    config_public = json.loads(made.stdout)["public_key"]
    laptop = X25519PrivateKey.generate()
    technician = Principal(token_id="00000000000000d1", name="ladder", role="technician")
    with Store(db, vault=old) as store:
        issued = issue_bundle(
            store,
            ProvisioningSettings(),
            BundleRequest(
                count=3,
                profile_id="parking-v1",
                public_key=laptop.public_key().public_bytes_raw().hex(),
            ),
            principal=technician,
            now=time.time(),
        )
    reserved = open_bundle(laptop, base64.b64decode(issued["bundle"])).reservations

    new_kek = tmp_path / "new-kek.json"
    rotated = RUNNER.invoke(
        fleet_command,
        ["rotate-kek", "--db", str(db), "--new-kek-file", str(new_kek), "--new-kek-id", "k2"],
    )
    assert rotated.exit_code == 0, rotated.stderr
    assert (
        "re-wrapped 4 keys (device keys: 0, reserved AppKeys: 3, config signing keys: 1)"
        in rotated.stdout
    )
    new = KeyVault.from_file(new_kek)
    with Store(db, vault=new) as store:
        assert store.kek_ids_in_use() == {"k2"}
        # The fleet still signs with the same key: gateways go on trusting its documents.
        signer = active_signing_key(store.sql, new)
        assert signer is not None
        assert signer.public_key().public_bytes_raw().hex() == config_public
        # A technician's sync after the rotation registers the modules with the keys the
        # bundle gave them.
        synced = sync_bundle(
            store,
            SyncRequest(
                bundle_id=issued["bundle_id"],
                registrations=[
                    Registration(
                        reservation=item.id,
                        dev_eui=f"70b3d57ed00001{index:02x}",
                        provisioned_at=datetime.now(UTC),
                    )
                    for index, item in enumerate(reserved)
                ],
            ),
            principal=technician,
            now=time.time(),
        )
        assert [item["result"] for item in synced["results"]] == ["created"] * 3
        for index, item in enumerate(reserved):
            keys = store.device_keys(f"70b3d57ed00001{index:02x}")
            assert keys.app_key == item.app_key
    # The old KEK alone no longer opens the database, though no device key is stored.
    with pytest.raises(WrongKekError) as old_only:
        Store(db, vault=old)
    assert old_only.value.kek_id == "k2"
