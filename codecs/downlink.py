"""Downlinks from the fleet to a device, through the gateway that will transmit them.

One message, a deterministic CBOR map with small integer keys (as :mod:`owlgate.codecs.control`),
carried in a COSE_Sign1 signed by the fleet's signing key (:mod:`owlgate.codecs.signed`), which
every gateway pins: a broker alone cannot make a gateway transmit.

``owlgate/v1/gw/{id}/down`` — :class:`Downlink`, fleet to gateway, QoS 1, not retained::

    { 1: downlink id (uint 1 .. 2**63-1), 2: gateway (bstr .size 8), 3: DevEUI (bstr .size 8),
      4: FPort (uint 1 .. 223), 5: FRMPayload (bstr .size (1..51)), 6: expires at (uint, s),
      7: lowest FCntDown (uint 0 .. 2**32-1) }

The gateway holds the downlink until the device's next uplink (class A: a device listens only
in the two windows after it sent, LoRaWAN 1.0.3 section 3.3), then transmits it in RX1 as an
unconfirmed data down frame: FRMPayload encrypted with the session's AppSKey, the MIC with its
NwkSKey, FCntDown the higher of the gateway's next counter for that session and key 7. The
fleet raises key 7 with every downlink it sends a device, so the counter keeps increasing when
the next downlink goes through another gateway (a device drops a frame whose counter is not
higher than the last it took, section 4.3.1.5).

The payload is plaintext application data (the fleet has no session keys to spare for it, and
the gateway encrypts it for the session it holds); at most :data:`MAX_FRM_PAYLOAD` bytes, what
one downlink carries at the slowest EU868 data rate (DR0, Regional Parameters 1.0.3 section
2.4.6, N = 51). ``gateway`` names the addressee inside the signature, so a message for one
gateway cannot be replayed to another; the ``id`` lets a gateway drop a repeat. After
``expires_at`` (UTC seconds) the gateway drops it unsent. The CDDL is
``docs/formats/downlink.cddl``; the prose ``docs/formats/downlink.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SchemaError
from .node import cbor

__all__ = [
    "MAX_DOWNLINK_ID",
    "MAX_FRM_PAYLOAD",
    "Downlink",
    "decode_downlink",
    "encode_downlink",
]

_ID = 1
_GATEWAY = 2
_DEV_EUI = 3
_F_PORT = 4
_PAYLOAD = 5
_EXPIRES = 6
_F_CNT_DOWN = 7
_KEYS = (_ID, _GATEWAY, _DEV_EUI, _F_PORT, _PAYLOAD, _EXPIRES, _F_CNT_DOWN)
_NAMES = {
    _ID: "id",
    _GATEWAY: "gateway",
    _DEV_EUI: "dev_eui",
    _F_PORT: "f_port",
    _PAYLOAD: "payload",
    _EXPIRES: "expires_at",
    _F_CNT_DOWN: "min_f_cnt_down",
}
#: One downlink at EU868 DR0 (SF12, 125 kHz) carries at most 51 bytes of FRMPayload.
MAX_FRM_PAYLOAD = 51
MAX_DOWNLINK_ID = (1 << 63) - 1
#: Application FPorts (LoRaWAN 1.0.3 section 4.3.2: 0 is MAC commands, 224 the test port).
_F_PORT_RANGE = (1, 223)
_U32_END = 1 << 32
_U64_END = 1 << 64


@dataclass(frozen=True, slots=True)
class Downlink:
    """A downlink for ``dev_eui`` that ``gateway`` transmits after the device's next uplink
    (see the module docstring). ``repr`` shows the payload's length only."""

    id: int
    gateway: bytes
    dev_eui: bytes
    f_port: int
    payload: bytes
    expires_at: int
    min_f_cnt_down: int = 0

    def __repr__(self) -> str:
        return (
            f"Downlink(id={self.id}, gateway={self.gateway.hex()}, dev_eui={self.dev_eui.hex()},"
            f" f_port={self.f_port}, payload=<{len(self.payload)} bytes>,"
            f" expires_at={self.expires_at}, min_f_cnt_down={self.min_f_cnt_down})"
        )


def _uint(name: str, value: object, low: int, end: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < end:
        raise SchemaError(f"downlink: {name} must be an integer {low} .. {end - 1}, got {value!r}")
    return value


def _eui(name: str, value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != 8:
        raise SchemaError(f"downlink: {name} must be 8 bytes, got {value!r:.60}")
    return value


def _checked(message: Downlink) -> dict[int, object]:
    payload = message.payload
    if not isinstance(payload, bytes) or not 1 <= len(payload) <= MAX_FRM_PAYLOAD:
        size = len(payload) if isinstance(payload, bytes) else type(payload).__name__
        raise SchemaError(f"downlink: payload must be 1 .. {MAX_FRM_PAYLOAD} bytes, got {size}")
    return {
        _ID: _uint("id", message.id, 1, MAX_DOWNLINK_ID + 1),
        _GATEWAY: _eui("gateway", message.gateway),
        _DEV_EUI: _eui("dev_eui", message.dev_eui),
        _F_PORT: _uint("f_port", message.f_port, _F_PORT_RANGE[0], _F_PORT_RANGE[1] + 1),
        _PAYLOAD: payload,
        _EXPIRES: _uint("expires_at", message.expires_at, 0, _U64_END),
        _F_CNT_DOWN: _uint("min_f_cnt_down", message.min_f_cnt_down, 0, _U32_END),
    }


def encode_downlink(message: Downlink) -> bytes:
    """The CBOR of a :class:`Downlink` (sign it with the fleet's key before publishing);
    SchemaError naming the field when a value is out of range."""
    return cbor.dumps(_checked(message))


def decode_downlink(data: bytes) -> Downlink:
    """A :class:`Downlink` from its CBOR; CborError or SchemaError when malformed."""
    item = cbor.loads(data)
    if not isinstance(item, dict):
        raise SchemaError(f"a downlink is a CBOR map, got {type(item).__name__}", 0)
    unknown = sorted(repr(key) for key in item if key not in _KEYS)
    if unknown:
        raise SchemaError(f"a downlink has no key(s) {', '.join(unknown)}", 0)
    for key in _KEYS:
        if key not in item:
            raise SchemaError(f"downlink: key {key} ({_NAMES[key]}) is missing", 0)
    message = Downlink(
        id=item[_ID],  # each checked by _checked below
        gateway=item[_GATEWAY],
        dev_eui=item[_DEV_EUI],
        f_port=item[_F_PORT],
        payload=item[_PAYLOAD],
        expires_at=item[_EXPIRES],
        min_f_cnt_down=item[_F_CNT_DOWN],
    )
    _checked(message)
    return message
