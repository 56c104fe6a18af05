"""SenML export (RFC 8428): records, JSON and CBOR representations, names and units."""

from __future__ import annotations

import base64
import json
import math
import re

import cbor2
from hypothesis import given, settings

from owlgate.codecs.node import cbor
from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch
from owlgate.codecs.senml import CBOR_LABELS, base_name, senml_cbor, senml_json, to_senml
from tests.codecs.test_telemetry import BASE_TIME, GATEWAY, batches, parking_batch

# RFC 8428 section 6, Table 4 (all of it, to check the exporter's subset against).
RFC8428_CBOR_LABELS = {
    "bver": -1,
    "bn": -2,
    "bt": -3,
    "bu": -4,
    "bv": -5,
    "bs": -6,
    "n": 0,
    "u": 1,
    "v": 2,
    "vs": 3,
    "vb": 4,
    "s": 5,
    "t": 6,
    "ut": 7,
    "vd": 8,
}
# RFC 8428 section 4.5.1.
NAME = re.compile(r"^[A-Za-z0-9][-:./_A-Za-z0-9]*$")
DEV = bytes.fromhex("70b3d57ed0001234")
BIN = bytes.fromhex("0004a30b001c0530")


def resolve(pack: list[dict[str, object]]) -> list[dict[str, object]]:
    """RFC 8428 section 4.6: each record with its base name and base time applied."""
    resolved = []
    name, time = "", 0
    for record in pack:
        name = str(record.get("bn", name))
        time = int(record.get("bt", time))  # type: ignore[call-overload]
        entry = {key: value for key, value in record.items() if key not in {"bn", "bt"}}
        entry["n"] = name + str(record["n"])
        entry["t"] = time + int(record.get("t", 0))  # type: ignore[call-overload]
        resolved.append(entry)
    return resolved


def example_batch() -> Batch:
    return Batch(
        GATEWAY,
        seq=3,
        base_time=BASE_TIME,
        readings=[
            Reading(
                DEV,
                BASE_TIME,
                {"occupied": True, "battery_mv": 3003, "temperature_c": 21.5},
                rssi_dbm=-97,
                snr_db=-7.25,
                fcnt=4711,
            ),
            Reading(
                BIN,
                BASE_TIME + 30,
                {"fill_pct": 80, "distance_mm": 412, "co2_ppm": 415, "humidity_pct": 55.5},
            ),
            Reading(
                BIN,
                BASE_TIME + 45,
                {"tilt_alarm": True, "lid state": "open", "raw": b"\xfb\xff", "none": None},
                rssi_dbm=-120,
                sf=12,
                freq_hz=868_100_000,
            ),
        ],
    )


def test_records_carry_names_units_and_relative_times() -> None:
    assert to_senml(example_batch()) == [
        {"bt": BASE_TIME, "bn": "urn:dev:mac:70b3d57ed0001234:", "n": "occupied", "vb": True},
        {"n": "battery", "u": "V", "v": 3.003},
        {"n": "temperature", "u": "Cel", "v": 21.5},
        {"n": "rssi", "u": "dBW", "v": -127},
        {"n": "snr", "u": "dB", "v": -7.25},
        {"n": "fcnt", "v": 4711},
        {"bn": "urn:dev:mac:0004a30b001c0530:", "n": "fill", "u": "%", "v": 80, "t": 30},
        {"n": "distance", "u": "m", "v": 0.412, "t": 30},
        {"n": "co2", "u": "/", "v": 0.000415, "t": 30},
        {"n": "humidity", "u": "%RH", "v": 55.5, "t": 30},
        # Same device: the base name stays in force.
        {"n": "tilt", "vb": True, "t": 45},
        {"n": "lid_state", "vs": "open", "t": 45},
        {"n": "raw", "vd": b"\xfb\xff", "t": 45},
        {"n": "rssi", "u": "dBW", "v": -150, "t": 45},
        {"n": "sf", "v": 12, "t": 45},
        {"n": "frequency", "u": "Hz", "v": 868_100_000, "t": 45},
    ]


def test_json_uses_the_text_labels_and_base64url_data() -> None:
    records = json.loads(senml_json(example_batch()))
    expected = to_senml(example_batch())
    assert [set(record) for record in records] == [set(record) for record in expected]
    raw = next(record for record in records if record["n"] == "raw")
    assert raw["vd"] == "-_8"  # RFC 4648 section 5 alphabet, padding left out
    assert base64.urlsafe_b64decode(raw["vd"] + "=") == b"\xfb\xff"
    assert [record for record in records if "vd" not in record] == [
        record for record in expected if "vd" not in record
    ]


def test_cbor_uses_the_integer_labels_of_rfc_8428() -> None:
    assert {label: RFC8428_CBOR_LABELS[label] for label in CBOR_LABELS} == CBOR_LABELS
    decoded = cbor2.loads(senml_cbor(example_batch()))
    by_number = {number: label for label, number in CBOR_LABELS.items()}
    assert [{by_number[key]: value for key, value in record.items()} for record in decoded] == (
        to_senml(example_batch())
    )
    first = decoded[0]
    assert first[-2] == "urn:dev:mac:70b3d57ed0001234:"
    assert first[-3] == BASE_TIME
    assert first[0] == "occupied"
    assert first[4] is True


def test_base_names_are_rfc_9039_device_urns() -> None:
    assert base_name(DEV) == "urn:dev:mac:70b3d57ed0001234:"


@settings(max_examples=150, deadline=None)
@given(batches(max_readings=4))
def test_every_export_is_valid_senml(batch: Batch) -> None:
    pack = to_senml(batch)
    text = senml_json(batch)  # allow_nan=False inside: no NaN or infinity leaks into JSON
    assert len(json.loads(text)) == len(pack)
    assert cbor2.loads(senml_cbor(batch)) == cbor.loads(senml_cbor(batch))
    resolved = resolve(pack)
    times = {reading.time_s for reading in batch.readings}
    for record in resolved:
        assert NAME.match(str(record["n"])), record
        assert record["t"] in times
        assert sum(key in record for key in ("v", "vs", "vb", "vd")) == 1, record
        value = record.get("v")
        assert value is None or math.isfinite(value)  # type: ignore[arg-type]
    # Every reading that has anything to say appears under its device's name.
    speaking = [
        reading
        for reading in batch.readings
        if reading.rssi_dbm is not None
        or any(value is not None for value in reading.values.values())
    ]
    names = {str(record["n"]).rsplit(":", 1)[0] + ":" for record in resolved}
    assert {base_name(reading.dev_eui) for reading in speaking} <= names


def test_awkward_values_stay_valid_json() -> None:
    reading = Reading(
        DEV,
        BASE_TIME,
        {
            "temperature_c": float("inf"),
            "spike": float("nan"),
            "nested": {"b": b"\x01", "a": [1, None]},
            "tagged": cbor.Tag(1, 5),
        },
    )
    records = json.loads(senml_json(Batch(GATEWAY, 1, BASE_TIME, [reading])))
    assert [(record["n"], record["vs"]) for record in records] == [
        ("temperature_c", "inf"),
        ("spike", "nan"),
        ("nested", '{"a": [1, null], "b": "01"}'),
        ("tagged", '{"tag": 1, "value": 5}'),
    ]


def test_senml_cbor_costs_several_times_the_compact_batch() -> None:
    # The comparison telemetry.md quotes: 100 parking readings, same content both ways.
    batch = parking_batch(100, seed=1)
    compact = len(encode_batch(batch)) / 100
    senml = len(senml_cbor(batch)) / 100
    assert compact <= 24
    assert senml > 5 * compact
    assert senml > 100  # one record per quantity, each with its name and unit
