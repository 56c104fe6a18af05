"""Bulk import and export of gateways and devices, through the API and the CLI: row-by-row
validation with a report of every rejected row, dry runs, keys for admins only, audit."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from typer.testing import CliRunner

from owlgate.fleet import audit, bulk
from owlgate.fleet.api import create_app
from owlgate.fleet.cli_data import data_command
from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault
from owlgate.fleet.views import get_site
from tests.fleet.conftest import (
    ABP_EUI,
    APP_KEY,
    GW1,
    JOIN_EUI,
    NWK_S_KEY,
    OTAA_EUI,
    T0,
    raw_public,
)
from tests.fleet.test_api import ApiClient, Clock

RUNNER = CliRunner()
KEY_A = "00112233445566778899aabbccddeeff"
KEY_B = "ffeeddccbbaa99887766554433221100"
SIGN = raw_public(Ed25519PrivateKey.generate()).hex()
SEAL = raw_public(X25519PrivateKey.generate()).hex()
HEADER = (
    "kind,id,name,profile_id,activation,join_eui,dev_addr,app_key,nwk_s_key,app_s_key,"
    "zone,street,lat,lon,label"
)

CSV_IMPORT = "\r\n".join(
    [
        HEADER,
        # line 2: a good OTAA bin with its site
        f"device,c0000000000000c1,bin 1,waste-bin-v1,otaa,{JOIN_EUI},,{KEY_A},,,"
        "north,Main Street,52.5,13.4,B-17",
        # line 3: a good ABP bay
        f"device,c0000000000000c2,bay 1,parking-v1,abp,,0a0b0c0d,,{KEY_A},{KEY_B},,,,,",
        # line 4: an AppKey one digit short
        f"device,c0000000000000c3,,waste-bin-v1,otaa,{JOIN_EUI},,{KEY_A[:-1]},,,,,,,",
        # line 5: already registered
        f"device,{ABP_EUI},,parking-v1,abp,,0a0b0c0e,,{KEY_A},{KEY_B},,,,,",
        # line 6: an unknown profile and a latitude off the planet
        f"device,c0000000000000c4,,lamp-v9,otaa,{JOIN_EUI},,{KEY_A},,,,,95,13.4,",
        "",
        # line 8: a row with too few cells
        "device,c0000000000000c5,short",
        # line 9: the DevAddr of line 3, taken by then
        f"device,c0000000000000c6,,parking-v1,abp,,0a0b0c0d,,{KEY_A},{KEY_B},,,,,",
        # line 10: good
        f"device,c0000000000000c7,bay 2,parking-v1,otaa,{JOIN_EUI},,{KEY_B},,,south,Elm Street,,,",
    ]
)


@pytest.fixture
def client(registry: Store) -> ApiClient:
    return ApiClient(create_app(registry, clock=Clock(T0 + 100)), role="technician")


def rejections(report: dict[str, object]) -> list[tuple[object, object]]:
    listed = report["rejected"]
    assert isinstance(listed, list)
    return [(item["line"], item["field"]) for item in listed]


def test_csv_import_registers_the_good_rows_and_reports_every_rejected_one(
    registry: Store, client: ApiClient
) -> None:
    answer = client.post(
        "/api/v1/admin/import", content=CSV_IMPORT, headers={"Content-Type": "text/csv"}
    )
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["dry_run"] is False
    assert report["rows"] == 8
    assert report["devices_created"] == 3
    assert report["sites_set"] == 2
    assert report["rejected_rows"] == 5
    assert rejections(report) == [
        (4, "app_key"),
        (5, "id"),
        (6, "profile_id"),
        (6, "lat"),
        (8, None),
        (9, "dev_addr"),
    ]
    text = json.dumps(report)
    assert KEY_A not in text
    assert KEY_A[:-1] not in text
    assert registry.device("c0000000000000c1").name == "bin 1"
    keys = registry.device_keys("c0000000000000c2")
    assert (keys.nwk_s_key, keys.app_s_key) == (bytes.fromhex(KEY_A), bytes.fromhex(KEY_B))
    assert registry.device_keys("c0000000000000c7").app_key == bytes.fromhex(KEY_B)
    # Keys are stored wrapped, not as given.
    stored = registry.sql.scalar(
        "SELECT app_key FROM device_keys WHERE dev_eui = ?", ["c0000000000000c1"]
    )
    assert bytes(stored) != bytes.fromhex(KEY_A)
    site = get_site(registry.sql, "c0000000000000c1")
    assert site is not None
    assert (site.street, site.label, site.lat) == ("Main Street", "B-17", 52.5)
    for eui in ("c0000000000000c3", "c0000000000000c4", "c0000000000000c6"):
        assert registry.sql.scalar("SELECT 1 FROM devices WHERE dev_eui = ?", [eui]) is None
    events = audit.events(registry.sql, action="device.provisioned").items
    assert sorted(e.target for e in events) == [
        "device:c0000000000000c1",
        "device:c0000000000000c2",
        "device:c0000000000000c7",
    ]
    assert {e.actor_role for e in events} == {"technician"}


def test_gateway_rows_need_an_admin_and_json_dry_run_changes_nothing(
    registry: Store, client: ApiClient
) -> None:
    document = {
        "gateways": [
            {"id": "b827ebfffe0000a1", "name": "roof", "sign_public_key": SIGN,
             "seal_public_key": SEAL},
            {"id": GW1, "name": "again", "sign_public_key": SIGN, "seal_public_key": SEAL},
        ],
        "devices": [
            {"dev_eui": "c0000000000000d1", "profile_id": "parking-v1", "activation": "otaa",
             "join_eui": JOIN_EUI, "app_key": KEY_A, "street": "Main Street"},
            {"dev_eui": "c0000000000000d2", "profile_id": "parking-v1", "activation": "otaa",
             "join_eui": JOIN_EUI, "appkey": KEY_A},
        ],
    }  # fmt: skip
    as_technician = client.post("/api/v1/admin/import", json=document).json()
    assert rejections(as_technician) == [
        (None, "kind"),
        (None, "kind"),
        (None, "appkey"),
        (None, "app_key"),
    ]
    assert [r["location"] for r in as_technician["rejected"]][:2] == ["gateways[0]", "gateways[1]"]
    assert as_technician["devices_created"] == 1
    admin = client.as_role("admin")
    document["devices"] = document["devices"][1:]
    dry = admin.post("/api/v1/admin/import", params={"dry_run": True}, json=document).json()
    assert dry["dry_run"] is True
    assert dry["gateways_created"] == 1
    assert rejections(dry) == [(None, "id"), (None, "appkey"), (None, "app_key")]
    assert registry.sql.scalar("SELECT COUNT(*) FROM gateways") == 2
    assert audit.events(registry.sql, action="gateway.provisioned").items == []
    real = admin.post("/api/v1/admin/import", json=document).json()
    assert real["gateways_created"] == 1
    assert rejections(real) == rejections(dry)
    assert registry.gateway("b827ebfffe0000a1").sign_public_key.hex() == SIGN
    assert [e.target for e in audit.events(registry.sql, action="gateway.provisioned").items] == [
        "gateway:b827ebfffe0000a1"
    ]


def test_an_unreadable_file_imports_nothing(registry: Store, client: ApiClient) -> None:
    broken = client.post(
        "/api/v1/admin/import",
        content=b'{"devices": [',
        headers={"Content-Type": "application/json"},
    )
    assert broken.status_code == 422
    assert "not JSON" in broken.json()["error"]["message"]
    header = client.post(
        "/api/v1/admin/import", params={"format": "csv"}, content=b"kind,id,appkey\r\n"
    )
    assert header.status_code == 422
    assert "unknown: appkey" in header.json()["error"]["message"]
    unknown = client.post("/api/v1/admin/import", content=b"x", headers={"Content-Type": "x/y"})
    assert unknown.status_code == 422
    assert client.as_role("operator").post("/api/v1/admin/import", json=[]).status_code == 403


def test_export_gives_keys_only_to_admins_and_records_it(
    registry: Store, client: ApiClient
) -> None:
    operator = client.as_role("operator")
    plain = operator.get("/api/v1/admin/export", params={"format": "json"})
    assert plain.status_code == 200
    document = plain.json()
    assert document["with_keys"] is False
    assert {d["dev_eui"] for d in document["devices"]} == {ABP_EUI, OTAA_EUI}
    assert all(not set(d) & {"app_key", "nwk_s_key", "app_s_key"} for d in document["devices"])
    refused = operator.get("/api/v1/admin/export", params={"with_keys": True})
    assert refused.status_code == 403
    assert client.get("/api/v1/admin/export", params={"with_keys": True}).status_code == 403
    assert audit.events(registry.sql, action="keys.exported").items == []
    admin = client.as_role("admin")
    answer = admin.get("/api/v1/admin/export", params={"format": "csv", "with_keys": True})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["cache-control"] == "no-store"
    lines = answer.text.splitlines()
    assert lines[0] == ",".join(bulk.CSV_COLUMNS)
    assert any(NWK_S_KEY.hex() in line and line.startswith(f"device,{ABP_EUI}") for line in lines)
    assert any(APP_KEY.hex() in line and line.startswith(f"device,{OTAA_EUI}") for line in lines)
    (event,) = audit.events(registry.sql, action="keys.exported").items
    assert event.actor_role == "admin"
    assert event.details == {"devices": 2, "format": "csv"}


def fresh_store(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir()
    kek = folder / "kek.json"
    db = folder / f"{name}.sqlite3"
    Store(db, vault=KeyVault.generate_file(kek, name)).close()
    return db, kek


def test_cli_round_trip_moves_devices_and_keys_between_fleets(tmp_path: Path) -> None:
    db_a, kek_a = fresh_store(tmp_path / "a", "a")
    source = tmp_path / "import.csv"
    source.write_text(CSV_IMPORT)
    first = RUNNER.invoke(
        data_command, ["import", str(source), "--db", str(db_a), "--kek-file", str(kek_a)]
    )
    # Rejected rows: exit 1, each on standard error with its line and field.
    assert first.exit_code == 1, first.output
    assert "registered 0 gateways and 4 devices; 4 rows rejected" in first.stdout
    assert f"{source}: line 4: app_key: must be 32 hex digits" in first.stderr
    assert f"{source}: line 9: dev_addr:" in first.stderr
    exported = tmp_path / "registry.json"
    out = RUNNER.invoke(
        data_command,
        ["export", "--db", str(db_a), "--kek-file", str(kek_a), "--with-keys", "-o", str(exported)],
    )
    assert out.exit_code == 0, out.output
    assert stat.S_IMODE(os.stat(exported).st_mode) == 0o600
    db_b, kek_b = fresh_store(tmp_path / "b", "b")
    dry = RUNNER.invoke(
        data_command,
        [
            "import",
            str(exported),
            "--db",
            str(db_b),
            "--kek-file",
            str(kek_b),
            "--dry-run",
            "--json",
        ],
    )
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["devices_created"] == 4
    second = RUNNER.invoke(
        data_command, ["import", str(exported), "--db", str(db_b), "--kek-file", str(kek_b)]
    )
    assert second.exit_code == 0, second.output
    with (
        Store(db_a, vault=KeyVault.from_file(kek_a)) as a,
        Store(db_b, vault=KeyVault.from_file(kek_b)) as b,
    ):
        euis = [d.dev_eui for d in a.devices().items]
        assert euis == [d.dev_eui for d in b.devices().items]
        for eui in euis:
            assert a.device_keys(eui) == b.device_keys(eui)
            assert get_site(a.sql, eui) == get_site(b.sql, eui)
        assert b.device_keys("c0000000000000c2").app_s_key == bytes.fromhex(KEY_B)
        (event,) = audit.events(a.sql, action="keys.exported").items
        assert event.actor.startswith("cli:")
    again = RUNNER.invoke(
        data_command, ["import", str(exported), "--db", str(db_b), "--kek-file", str(kek_b)]
    )
    assert again.exit_code == 1
    assert "registered 0 gateways and 0 devices; 4 rows rejected" in again.stdout
    missing = RUNNER.invoke(data_command, ["import", str(source), "--db", str(tmp_path / "x.db")])
    assert missing.exit_code == 2
    assert "no such database" in missing.stderr


def test_cli_reports_a_file_it_cannot_read(tmp_path: Path) -> None:
    db, kek = fresh_store(tmp_path / "a", "a")
    wrong = tmp_path / "devices.txt"
    wrong.write_text("kind\n")
    answer = RUNNER.invoke(
        data_command, ["import", str(wrong), "--db", str(db), "--kek-file", str(kek)]
    )
    assert answer.exit_code == 2
    assert "cannot tell the format" in answer.stderr
    broken = tmp_path / "devices.json"
    broken.write_text("[")
    answer = RUNNER.invoke(
        data_command, ["import", str(broken), "--db", str(db), "--kek-file", str(kek)]
    )
    assert answer.exit_code == 2
    assert "not JSON" in answer.stderr
