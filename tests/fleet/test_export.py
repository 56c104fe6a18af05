"""Readings export through the API and the CLI: SenML JSON and CBOR (RFC 8428), CSV,
filters, roles, and ranges larger than one page of the database."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from typer.testing import CliRunner

from owlgate.codecs.node.telemetry import Reading
from owlgate.fleet import export
from owlgate.fleet.api import create_app
from owlgate.fleet.cli_data import data_command
from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault
from tests.fleet.conftest import ABP_EUI, GW1, GW2, OTAA_EUI, T0
from tests.fleet.test_api import ApiClient, Clock

RUNNER = CliRunner()
CBOR_LABELS = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "t": 6}


def fill(store: Store) -> None:
    """Two parking readings (one heard by two gateways) and two bin readings."""
    abp, otaa = bytes.fromhex(ABP_EUI), bytes.fromhex(OTAA_EUI)
    store.record_batch(
        GW1,
        1,
        [
            Reading(abp, int(T0), {"occupied": True, "battery_mv": 3600, "temperature_c": 21.5},
                    rssi_dbm=-100, snr_db=2.5, fcnt=1),
            Reading(otaa, int(T0) + 5, {"fill_pct": 40, "distance_mm": 750, "tilt_alarm": False},
                    rssi_dbm=-90, snr_db=7.0, fcnt=1),
            Reading(abp, int(T0) + 60, {"occupied": False, "battery_mv": 3598,
                                        "temperature_c": 21.0}, rssi_dbm=-101, snr_db=2.0, fcnt=2),
        ],
        received_at=T0 + 61,
    )  # fmt: skip
    store.record_batch(
        GW2,
        1,
        [
            Reading(abp, int(T0), {"occupied": True, "battery_mv": 3600, "temperature_c": 21.5},
                    rssi_dbm=-80, snr_db=9.5, fcnt=1),
            Reading(otaa, int(T0) + 3605, {"fill_pct": 55, "distance_mm": 560, "tilt_alarm": False,
                                           "message_note": "lid open"}, fcnt=2),
        ],
        received_at=T0 + 3606,
    )  # fmt: skip


@pytest.fixture
def client(registry: Store) -> ApiClient:
    fill(registry)
    return ApiClient(create_app(registry, clock=Clock(T0 + 7200)), role="operator")


PARKING_SENML: list[dict[str, Any]] = [
    {"bn": f"urn:dev:mac:{ABP_EUI}:", "bt": T0, "n": "battery", "u": "V", "v": 3.6},
    {"n": "occupied", "vb": True},
    {"n": "temperature", "u": "Cel", "v": 21.5},
    # The best of the two gateways that heard FCnt 1: GW2 at -80 dBm.
    {"n": "rssi", "u": "dBW", "v": -110},
    {"n": "snr", "u": "dB", "v": 9.5},
    {"n": "fcnt", "v": 1},
    {"n": "battery", "u": "V", "v": 3.598, "t": 60.0},
    {"n": "occupied", "vb": False, "t": 60.0},
    {"n": "temperature", "u": "Cel", "v": 21.0, "t": 60.0},
    {"n": "rssi", "u": "dBW", "v": -131, "t": 60.0},
    {"n": "snr", "u": "dB", "v": 2.0, "t": 60.0},
    {"n": "fcnt", "v": 2, "t": 60.0},
]


def test_senml_json_export_has_base_names_units_and_relative_times(client: ApiClient) -> None:
    answer = client.get("/api/v1/export/readings", params={"format": "senml-json"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/senml+json"
    pack = answer.json()
    assert pack[: len(PARKING_SENML)] == PARKING_SENML
    bins = pack[len(PARKING_SENML) :]
    assert bins[0] == {
        "bn": f"urn:dev:mac:{OTAA_EUI}:",
        "bt": T0 + 5,
        "n": "distance",
        "u": "m",
        "v": 0.75,
    }
    assert {"n": "fill", "u": "%", "v": 55, "t": 3600.0} in bins
    assert {"n": "message_note", "vs": "lid open", "t": 3600.0} in bins
    assert {"n": "tilt", "vb": False} in bins


def test_senml_cbor_export_is_the_same_pack_with_integer_labels(client: ApiClient) -> None:
    as_json = client.get("/api/v1/export/readings", params={"format": "senml-json"}).json()
    answer = client.get("/api/v1/export/readings", params={"format": "senml-cbor"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/senml+cbor"
    # One indefinite-length array (RFC 8949 section 3.2.2): written as the rows come.
    assert answer.content[:1] == b"\x9f"
    assert answer.content[-1:] == b"\xff"
    decoded = cbor2.loads(answer.content)
    assert decoded == [
        {CBOR_LABELS[label]: value for label, value in record.items()} for record in as_json
    ]


def test_csv_export_is_one_line_per_value_in_the_profile_units(client: ApiClient) -> None:
    answer = client.get(
        "/api/v1/export/readings", params={"format": "csv", "dev_eui": OTAA_EUI.upper()}
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert list(rows[0]) == list(export.CSV_COLUMNS)
    assert {row["dev_eui"] for row in rows} == {OTAA_EUI}
    by_name = {(row["time_s"], row["name"]): row for row in rows}
    distance = by_name[(str(T0 + 5), "distance_mm")]
    assert (distance["value"], distance["unit"], distance["kind"]) == ("750", "mm", "reading")
    assert distance["time"] == "2027-01-15T08:00:05Z"
    assert by_name[(str(T0 + 5), "rssi_dbm")]["value"] == "-90"
    assert by_name[(str(T0 + 3605), "fill_pct")]["fcnt"] == "2"
    assert (str(T0 + 3605), "rssi_dbm") not in by_name


def test_filters_and_roles(client: ApiClient) -> None:
    def names(**params: Any) -> list[str]:
        answer = client.get("/api/v1/export/readings", params=params)
        assert answer.status_code == 200, answer.text
        return [record["bn"] for record in answer.json() if "bn" in record]

    assert names(profile_id="waste-bin-v1") == [f"urn:dev:mac:{OTAA_EUI}:"]
    assert names(since=T0 + 30, until="2027-01-15T09:00:06Z") == [
        f"urn:dev:mac:{ABP_EUI}:",
        f"urn:dev:mac:{OTAA_EUI}:",
    ]
    assert names(since="2027-01-15T08:30:00") == [f"urn:dev:mac:{OTAA_EUI}:"]
    assert names(since=T0 + 100_000) == []
    assert client.get("/api/v1/export/readings", params={"since": "soon"}).status_code == 422
    unknown = client.get("/api/v1/export/readings", params={"profile_id": "lamp-v9"})
    assert unknown.status_code == 422
    assert client.get("/api/v1/export/readings", params={"format": "xml"}).status_code == 422
    assert client.get("/api/v1/export/readings", params={"dev_eui": "12"}).status_code == 422
    path = "/api/v1/export/readings"
    assert client.as_role("technician").get(path).status_code == 403
    assert client.as_role(None).get(path).status_code == 401
    assert client.as_role("admin").get(path).status_code == 200


def test_a_range_of_many_pages_streams_every_reading_once(registry: Store) -> None:
    eui = bytes.fromhex(OTAA_EUI)
    count = export.EXPORT_PAGE * 2 + 7
    for batch in range(3):
        registry.record_batch(
            GW1,
            100 + batch,
            [
                Reading(eui, int(T0) + i, {"fill_pct": i % 100}, fcnt=i)
                for i in range(batch * 1000, min(count, (batch + 1) * 1000))
            ],
            received_at=T0,
        )
    chunks = list(
        export.export_stream(registry.sql, export.ReadingsQuery(dev_euis=(OTAA_EUI,)), "senml-json")
    )
    assert len(chunks) > 1
    assert all(len(chunk) < export.CHUNK_BYTES + 200 for chunk in chunks)
    pack = json.loads(b"".join(chunks))
    fills = [record for record in pack if record["n"] == "fill"]
    assert [record.get("t", 0) for record in fills] == [float(i) for i in range(count)]
    csv_text = b"".join(
        export.export_stream(registry.sql, export.ReadingsQuery(dev_euis=(OTAA_EUI,)), "csv")
    )
    assert csv_text.count(b",fill_pct,") == count


def test_cli_writes_each_format(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite3"
    kek = tmp_path / "kek.json"
    with Store(db, vault=KeyVault.generate_file(kek, "k1")) as store:
        for gid in (GW1, GW2):
            store.create_gateway(
                gid, name="gw", sign_public_key=b"\x01" * 32, seal_public_key=b"\x02" * 32,
                created=T0,
            )  # fmt: skip
        store.create_device(
            ABP_EUI, profile_id="parking-v1", activation="abp", created=T0, dev_addr=1,
            nwk_s_key=b"\x03" * 16, app_s_key=b"\x04" * 16,
        )  # fmt: skip
        store.create_device(
            OTAA_EUI, profile_id="waste-bin-v1", activation="otaa", created=T0,
            join_eui="70b3d57ed00000ff", app_key=b"\x05" * 16,
        )  # fmt: skip
        fill(store)
    out = tmp_path / "readings.csv"
    answer = RUNNER.invoke(
        data_command,
        ["readings", "--db", str(db), "--format", "csv", "--dev-eui", ABP_EUI, "-o", str(out)],
    )
    assert answer.exit_code == 0, answer.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 10
    assert {row["name"] for row in rows} == {
        "occupied", "battery_mv", "temperature_c", "rssi_dbm", "snr_db",
    }  # fmt: skip
    senml = RUNNER.invoke(data_command, ["readings", "--db", str(db), "--profile", "parking-v1"])
    assert senml.exit_code == 0, senml.output
    assert json.loads(senml.stdout) == PARKING_SENML
    packed = RUNNER.invoke(data_command, ["readings", "--db", str(db), "--format", "senml-cbor"])
    assert packed.exit_code == 0
    assert len(cbor2.loads(packed.stdout_bytes)) == len(json.loads(senml.stdout)) + 11
    bad = RUNNER.invoke(data_command, ["readings", "--db", str(db), "--format", "xml"])
    assert bad.exit_code == 2
    assert "--format must be one of" in bad.stderr
    wrong = RUNNER.invoke(data_command, ["readings", "--db", str(db), "--since", "later"])
    assert wrong.exit_code == 2
    assert "--since: not a time" in wrong.stderr
