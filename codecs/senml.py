"""SenML export of telemetry batches (RFC 8428), for systems that speak SenML rather than ours.

Each reading becomes one record per value and per radio quantity. The device is the base
name ``urn:dev:mac:<DevEUI hex>:`` (RFC 9039 section 3.1 names EUI-64 devices this way),
repeated only when the device changes; the batch's base time is the base time of the pack
and each record's ``t`` is relative to it (RFC 8428 section 4.5.3), left out when zero.

Units are primary SenML units (RFC 8428 section 12.1): mV, mm, ppm and dBm are only secondary
unit names (RFC 8798 section 3), so values are converted (battery in V, distance in m, CO2
as the ratio "/", RSSI in dBW). Values without a known quantity keep their name and go out
without a unit: numbers as ``v``, booleans as ``vb``, text as ``vs``, bytes as ``vd``, and
anything else as ``vs`` holding its JSON text; ``None`` values are left out.

The export is a view for interchange, not an archive: the compact batch is what owlgate
stores and signs.
"""

from __future__ import annotations

import base64
import json
import math
import re

from .node import cbor
from .node.telemetry import Batch, Reading

# RFC 8428 section 6, Table 4: CBOR labels of the fields this exporter writes.
CBOR_LABELS = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "t": 6, "vd": 8}

# Known quantities: value name -> (SenML name, SenML unit or None, divisor to that unit).
# Dividing (3003 / 1000 is 3.003) rather than multiplying (3003 * 0.001 is 3.0029999999999997).
QUANTITIES: dict[str, tuple[str, str | None, int]] = {
    "occupied": ("occupied", None, 1),
    "battery_mv": ("battery", "V", 1000),
    "temperature_c": ("temperature", "Cel", 1),
    "fill_pct": ("fill", "%", 1),
    "distance_mm": ("distance", "m", 1000),
    "tilt_alarm": ("tilt", None, 1),
    "humidity_pct": ("humidity", "%RH", 1),
    "co2_ppm": ("co2", "/", 1000000),
}

# RFC 8428 section 4.5.1: a name (base name + name) starts with a letter or digit, then
# letters, digits and "-:./_".
_NAME_UNSAFE = re.compile(r"[^-:./_A-Za-z0-9]")


def base_name(dev_eui: bytes) -> str:
    """The SenML base name of a device: ``urn:dev:mac:<16 hex digits>:`` (RFC 9039)."""
    return "urn:dev:mac:" + bytes(dev_eui).hex() + ":"


def _value_fields(value: object) -> dict[str, object] | None:
    # The SenML value field for a value without a unit, or None to leave it out.
    if value is None:
        return None
    if isinstance(value, bool):
        return {"vb": value}
    if isinstance(value, int):
        return {"v": value}
    if isinstance(value, float):
        # JSON has no NaN or infinity, and SenML numbers are JSON numbers (RFC 8428 section 5).
        return {"v": value} if math.isfinite(value) else {"vs": repr(value)}
    if isinstance(value, str):
        return {"vs": value}
    if isinstance(value, bytes | bytearray):
        return {"vd": bytes(value)}
    return {"vs": json.dumps(value, default=_json_default, sort_keys=True)}


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, cbor.Tag):
        return {"tag": value.tag, "value": value.value}
    return repr(value)


def _reading_records(reading: Reading) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []

    def add(name: str, unit: str | None, fields: dict[str, object] | None) -> None:
        if fields is None:
            return
        record: dict[str, object] = {"n": name}
        if unit is not None:
            record["u"] = unit
        record.update(fields)
        records.append(record)

    for key, value in reading.values.items():
        known = QUANTITIES.get(key)
        if (
            known is not None
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            name, unit, divisor = known
            add(name, unit, {"v": value / divisor if divisor != 1 else value})
        elif known is not None and isinstance(value, bool) and known[1] is None:
            add(known[0], None, {"vb": value})
        else:
            add(_NAME_UNSAFE.sub("_", key), None, _value_fields(value))
    if reading.rssi_dbm is not None:
        add("rssi", "dBW", {"v": reading.rssi_dbm - 30})
    if reading.snr_db is not None:
        add("snr", "dB", {"v": reading.snr_db})
    if reading.fcnt is not None:
        add("fcnt", None, {"v": reading.fcnt})
    if reading.sf is not None:
        add("sf", None, {"v": reading.sf})
    if reading.freq_hz is not None:
        add("frequency", "Hz", {"v": reading.freq_hz})
    return records


def to_senml(batch: Batch) -> list[dict[str, object]]:
    """SenML records (JSON labels, RFC 8428 section 4) for ``batch``; ``vd`` values are bytes."""
    pack: list[dict[str, object]] = []
    current_name = None
    for reading in batch.readings:
        records = _reading_records(reading)
        if not records:
            continue
        name = base_name(reading.dev_eui)
        offset = reading.time_s - batch.base_time
        for position, record in enumerate(records):
            head: dict[str, object] = {}
            if not pack:
                head["bt"] = batch.base_time
            if position == 0 and name != current_name:
                head["bn"] = name
                current_name = name
            if offset != 0:
                record["t"] = offset
            pack.append({**head, **record})
    return pack


def senml_json(batch: Batch) -> str:
    """``application/senml+json`` (RFC 8428 section 5): ``vd`` in unpadded base64url."""
    records = []
    for record in to_senml(batch):
        data = record.get("vd")
        if isinstance(data, bytes):
            record = {**record, "vd": base64.urlsafe_b64encode(data).rstrip(b"=").decode()}
        records.append(record)
    return json.dumps(records, separators=(",", ":"), allow_nan=False)


def senml_cbor(batch: Batch) -> bytes:
    """``application/senml+cbor`` (RFC 8428 section 6): integer labels, deterministic CBOR."""
    return cbor.dumps(
        [
            {CBOR_LABELS[label]: value for label, value in record.items()}
            for record in to_senml(batch)
        ]
    )
