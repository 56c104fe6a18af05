"""A ChirpStack-style JSON uplink event for one reading: the yardstick for telemetry size.

ChirpStack v4 publishes every uplink to its MQTT integration as one JSON object
(``application/{id}/device/{dev_eui}/event/up``): a deduplication id, the device's tenant,
application and profile by id and by name, the LoRaWAN header fields, the raw payload in
base64, the decoded ``object``, one ``rxInfo`` entry per gateway that heard the frame, and the
transmission parameters. Those are the field names below; the values are made up to match the
reading (ids derived from the DevEUI so the size is reproducible). owlgate uses the figure to
show what its compact batch saves (``owlgate bench``, ``owlgate demo``); nothing consumes it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime

from .node.telemetry import Reading

__all__ = ["chirpstack_uplink_event", "chirpstack_uplink_json"]


def _uuid(*parts: object) -> str:
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def chirpstack_uplink_event(
    reading: Reading,
    *,
    gateway_id: bytes,
    payload: bytes,
    f_port: int = 10,
    dev_addr: int = 0x260B1234,
    profile_name: str = "parking-v1",
) -> dict[str, object]:
    """The event a ChirpStack-style network server would publish for ``reading``."""
    dev_eui = reading.dev_eui.hex()
    time = datetime.fromtimestamp(reading.time_s, UTC).isoformat(timespec="microseconds")
    sf = reading.sf if reading.sf is not None else 9
    rx: dict[str, object] = {
        "gatewayId": gateway_id.hex(),
        "uplinkId": int.from_bytes(hashlib.sha256(reading.dev_eui).digest()[:4], "big"),
        "gwTime": time,
        "nsTime": time,
        "timeSinceGpsEpoch": f"{reading.time_s - 315_964_782}s",
        "rssi": reading.rssi_dbm,
        "snr": reading.snr_db,
        "channel": 2,
        "location": {"latitude": 52.0302, "longitude": 8.5325, "altitude": 118.0},
        "context": base64.b64encode((reading.gw_time_us or 0).to_bytes(4, "big")).decode(),
        "metadata": {"region_config_id": "eu868", "region_common_name": "EU868"},
        "crcStatus": "CRC_OK",
    }
    return {
        "deduplicationId": _uuid("dedup", dev_eui, reading.time_s),
        "time": time,
        "deviceInfo": {
            "tenantId": _uuid("tenant"),
            "tenantName": "Stadt Bielefeld",
            "applicationId": _uuid("application"),
            "applicationName": "Smart parking",
            "deviceProfileId": _uuid("profile", profile_name),
            "deviceProfileName": profile_name,
            "deviceName": f"parking-{dev_eui[-6:]}",
            "devEui": dev_eui,
            "deviceClassEnabled": "CLASS_A",
            "tags": {"district": "Mitte"},
        },
        "devAddr": f"{dev_addr:08x}",
        "adr": True,
        "dr": 12 - sf,
        "fCnt": reading.fcnt or 0,
        "fPort": f_port,
        "confirmed": False,
        "data": base64.b64encode(payload).decode(),
        "object": dict(reading.values),
        "rxInfo": [rx],
        "txInfo": {
            "frequency": reading.freq_hz or 868_100_000,
            "modulation": {
                "lora": {"bandwidth": 125_000, "spreadingFactor": sf, "codeRate": "CR_4_5"}
            },
        },
    }


def chirpstack_uplink_json(reading: Reading, *, gateway_id: bytes, payload: bytes) -> bytes:
    """:func:`chirpstack_uplink_event` as compact UTF-8 JSON, as an integration receives it."""
    event = chirpstack_uplink_event(reading, gateway_id=gateway_id, payload=payload)
    return json.dumps(event, separators=(",", ":")).encode()
