"""Concentrator serial protocol v1: the messages between the edge and a concentrator MCU.

The MCU drives an SX130x-class LoRa concentrator and reports what it hears; the edge (the
host) configures it and asks it to transmit. The specification for engineers, with sequence
diagrams and worked examples, is ``docs/protocol/concentrator-v1.md``; the exact wire format
is ``docs/protocol/concentrator-v1.cddl`` (RFC 8610).

Transport: every message is one serial frame (:mod:`owlgate.codecs.node.framing`: COBS,
CRC-16, 0x00 delimiters) whose payload is one CBOR item (RFC 8949), the envelope::

    [type, token, {key: value, ...}]
     uint  uint    integer keys, per message type (MESSAGES)

- ``type`` names the message (:class:`MessageType`); an unknown type is refused.
- ``token`` (0 .. 65535) pairs a request with its answer, as the token of Semtech's UDP
  packet forwarder protocol does: a request carries a non-zero token of the sender's choosing,
  the answer repeats it; events (an RX frame, a periodic stats report) carry 0.
- The body is a map with small unsigned integer keys (one byte each on the wire). A receiver
  ignores keys higher than the highest key it knows for the message type, so a later 1.x
  revision can add optional fields; a new mandatory field needs a new protocol version.

Messages are frozen, slotted dataclasses validated on construction (so on decode as well,
which builds them): a value out of range raises :class:`SchemaError` naming the class, the
field and its key, and the range expected. The one table :data:`MESSAGES` declares every
message type: id, name, class, who sends it, token rule, and its fields (key, name, kind).
Encoding, decoding and :func:`describe_frame` are driven by that table alone.

CPython only (dataclasses and enums); the MCU side is C firmware, or the emulator in ``hil``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from enum import IntEnum
from itertools import pairwise
from operator import attrgetter
from types import MappingProxyType
from typing import Final, TypeAlias, TypeGuard, TypeVar

from .errors import CodecError, CrcError, SchemaError
from .node import cbor
from .node.framing import CRC_SIZE, cobs_decode, crc16, decode_frame, encode_frame

__all__ = [
    "BANDWIDTHS_HZ",
    "MESSAGES",
    "PROTOCOL_VERSION",
    "Capabilities",
    "Channel",
    "CodingRate",
    "CrcStatus",
    "Error",
    "ErrorCode",
    "Field",
    "GetStats",
    "Hello",
    "Message",
    "MessageSpec",
    "MessageType",
    "RadioConfig",
    "RadioConfigAck",
    "RxFrame",
    "Sender",
    "Stats",
    "TokenRule",
    "TxAck",
    "TxError",
    "TxRequest",
    "decode_message",
    "describe_frame",
    "describe_message",
    "encode_message",
    "from_frame",
    "peek_header",
    "to_frame",
]

PROTOCOL_VERSION: Final = 1
#: LoRa bandwidths an SX130x concentrator demodulates (SX1302 datasheet).
BANDWIDTHS_HZ: Final = (125_000, 250_000, 500_000)
_U16_MAX: Final = 0xFFFF
_U32_MAX: Final = 0xFFFF_FFFF
_SHOW_LIMIT: Final = 48


class MessageType(IntEnum):
    """Message type ids, the first item of the envelope. 0 is reserved; ids stay below 24 so
    that the type is one byte of CBOR."""

    HELLO = 1
    RADIO_CONFIG = 2
    RADIO_CONFIG_ACK = 3
    RX_FRAME = 4
    TX_REQUEST = 5
    TX_ACK = 6
    GET_STATS = 7
    STATS = 8
    ERROR = 9


class CrcStatus(IntEnum):
    """The radio's CRC check of a received packet, valued as ``stat`` in Semtech's ``rxpk``."""

    OK = 1
    NONE = 0  # the packet had no CRC (LoRaWAN downlinks, for instance)
    BAD = -1


class CodingRate(IntEnum):
    """LoRa forward error correction rate 4/5 .. 4/8, valued by its denominator."""

    CR_4_5 = 5
    CR_4_6 = 6
    CR_4_7 = 7
    CR_4_8 = 8

    @property
    def label(self) -> str:
        """The usual notation, as in Semtech's ``codr``: ``"4/5"``."""
        return f"4/{self.value}"


class TxError(IntEnum):
    """Outcome of a TX request, named as ``txpk_ack.error`` of Semtech's UDP protocol."""

    NONE = 0  # accepted and scheduled
    TOO_LATE = 1  # the requested counter value has passed (or is too close to schedule)
    TOO_EARLY = 2  # the requested counter value is too far ahead
    COLLISION_PACKET = 3  # another transmission is scheduled at that time
    COLLISION_BEACON = 4  # the time is reserved for a class B beacon
    TX_FREQ = 5  # frequency outside the configured TX range
    TX_POWER = 6  # power above the configured maximum or the radio's range
    GPS_UNLOCKED = 7  # GPS-timed transmission without a GPS lock


class ErrorCode(IntEnum):
    """Why a message could not be handled (the :class:`Error` message)."""

    UNKNOWN_TYPE = 1  # the message type is not known; ref_type names it
    MALFORMED = 2  # the frame was good but its CBOR or fields were not
    UNSUPPORTED_VERSION = 3  # the peer's Hello names a protocol version this side lacks
    BUSY = 4  # the request cannot be taken now; retry later
    NOT_CONFIGURED = 5  # radio use before a RadioConfig was accepted
    INVALID_CONFIG = 6  # a RadioConfig the radio cannot do (outside its capabilities)
    RADIO_FAILURE = 7  # the radio does not answer or reports a fault
    INTERNAL = 8  # anything else on the sender's side; the text says what


class Sender(IntEnum):
    """Who may send a message type."""

    HOST = 1
    CONCENTRATOR = 2
    EITHER = 3


class TokenRule(IntEnum):
    """What the envelope token of a message type must be."""

    ANY = 0  # 0 .. 65535
    NONZERO = 1  # 1 .. 65535: requests, and the answers that repeat their token
    ZERO = 2  # 0: events nobody asked for


# --- value kinds ------------------------------------------------------------------------------


def _show(value: object) -> str:
    # A value in an error message: bytes in hex, anything long cut short.
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        text = raw[:_SHOW_LIMIT].hex()
        return f"h'{text}'" + (f"... ({len(raw)} bytes)" if len(raw) > _SHOW_LIMIT else "")
    text = repr(value)
    return text if len(text) <= 2 * _SHOW_LIMIT else text[: 2 * _SHOW_LIMIT] + "..."


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int in Python; a flag where a number belongs is a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


class Kind:
    """How one field is checked, written to CBOR, read back and shown as JSON."""

    expected = "a value"

    def fail(self, where: str, value: object) -> SchemaError:
        return SchemaError(f"{where} must be {self.expected}, got {_show(value)}")

    def check(self, value: object, where: str) -> object:
        """The value, normalised (bytes for bytes-like, enum members, tuples), or SchemaError."""
        raise self.fail(where, value)

    def encode(self, value: object) -> object:
        """The CBOR item for a checked value."""
        return value

    def decode(self, item: object, where: str) -> object:
        """The constructor argument for a CBOR item; :meth:`check` then validates it."""
        return item

    def describe(self, value: object) -> object:
        """The JSON-ready form of a checked value."""
        return value


class IntRange(Kind):
    """An integer from ``low`` to ``high``, both included; never a bool."""

    def __init__(self, low: int, high: int, unit: str = "") -> None:
        self.low = low
        self.high = high
        self.expected = f"an integer from {low} to {high}" + (f" ({unit})" if unit else "")

    def check(self, value: object, where: str) -> object:
        if not _is_int(value) or not self.low <= value <= self.high:
            raise self.fail(where, value)
        return int(value)


class OneOf(Kind):
    """An integer from a fixed set (the LoRa bandwidths)."""

    def __init__(self, values: tuple[int, ...], unit: str) -> None:
        self.values = frozenset(values)
        self.expected = "one of " + ", ".join(str(value) for value in values) + f" ({unit})"

    def check(self, value: object, where: str) -> object:
        if not _is_int(value) or value not in self.values:
            raise self.fail(where, value)
        return value


class EnumKind(Kind):
    """An ``IntEnum``: held as the member, written as its value, shown by name (or ``label``)."""

    def __init__(self, enum: type[IntEnum], label: Callable[[IntEnum], str] | None = None) -> None:
        self.enum = enum
        self.by_value = {member.value: member for member in enum}
        self.label = label
        self.expected = f"one of the {enum.__name__} values: " + ", ".join(
            f"{member.value} ({member.name})" for member in enum
        )

    def check(self, value: object, where: str) -> object:
        member = self.by_value.get(value) if _is_int(value) else None
        if member is None:
            raise self.fail(where, value)
        return member

    def encode(self, value: object) -> object:
        return int(value)  # type: ignore[call-overload]

    def describe(self, value: object) -> object:
        assert isinstance(value, IntEnum)
        return self.label(value) if self.label is not None else value.name


class Bool(Kind):
    """``True`` or ``False``, not an integer that stands for one."""

    expected = "true or false"

    def check(self, value: object, where: str) -> object:
        if value is not True and value is not False:
            raise self.fail(where, value)
        return value


class Bytes(Kind):
    """A byte string of bounded length; bytes-like input is held as ``bytes``, shown as hex."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        size = f"{low}" if low == high else f"{low} to {high}"
        self.expected = f"{size} bytes"

    def check(self, value: object, where: str) -> object:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise self.fail(where, value)
        raw = bytes(value)
        if not self.low <= len(raw) <= self.high:
            raise SchemaError(f"{where} must be {self.expected}, got {len(raw)}: {_show(raw)}")
        return raw

    def describe(self, value: object) -> object:
        assert isinstance(value, bytes)
        return value.hex()


class Text(Kind):
    """A text string whose UTF-8 length is bounded, as CDDL's ``tstr .size`` bounds it."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        self.expected = f"text of {low} to {high} UTF-8 bytes"

    def check(self, value: object, where: str) -> object:
        if not isinstance(value, str):
            raise self.fail(where, value)
        try:
            size = len(value.encode())
        except UnicodeEncodeError:
            size = -1  # lone surrogates: no UTF-8 for them, so no CBOR text either
        # CDDL's .size of a text string counts UTF-8 bytes (RFC 8610 section 3.8.1).
        if not self.low <= size <= self.high:
            raise self.fail(where, value)
        return value


class Steps(Kind):
    """A real number carried as an integer count of ``1/per`` units (SNR, temperature)."""

    def __init__(self, per: int, low: int, high: int, unit: str) -> None:
        self.per = per
        self.low = low
        self.high = high
        self.expected = (
            f"a multiple of 1/{per} {unit} from {low / per} to {high / per}"
            f" (on the wire: an integer count of 1/{per} {unit}, {low} to {high})"
        )

    def check(self, value: object, where: str) -> object:
        # The bounds first: NaN fails them, and no infinity reaches round().
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not self.low <= value * self.per <= self.high
        ):
            raise self.fail(where, value)
        steps = round(value * self.per)
        if steps / self.per != value:
            raise self.fail(where, value)
        return steps / self.per

    def encode(self, value: object) -> object:
        return round(value * self.per)  # type: ignore[operator]

    def decode(self, item: object, where: str) -> object:
        if not _is_int(item):
            raise self.fail(where, item)
        return item / self.per


class Nullable(Kind):
    """``inner`` or None, written as CBOR null (an explicit choice, never an absent key)."""

    def __init__(self, inner: Kind, meaning: str) -> None:
        self.inner = inner
        self.expected = f"None ({meaning}) or {inner.expected}"

    def check(self, value: object, where: str) -> object:
        if value is None:
            return None
        if not _is_int(value):
            raise self.fail(where, value)
        return self.inner.check(value, where)


class ListOf(Kind):
    """An array of ``item`` values, held as a tuple; ``increasing`` also makes them distinct."""

    def __init__(self, item: Kind, low: int, high: int, *, increasing: bool = False) -> None:
        self.item = item
        self.low = low
        self.high = high
        self.increasing = increasing
        order = ", distinct and in increasing order" if increasing else ""
        self.expected = f"a list of {low} to {high} items{order}, each {item.expected}"

    def check(self, value: object, where: str) -> object:
        if not isinstance(value, list | tuple) or not self.low <= len(value) <= self.high:
            raise self.fail(where, value)
        items = tuple(self.item.check(entry, f"{where}[{i}]") for i, entry in enumerate(value))
        if self.increasing and any(a >= b for a, b in pairwise(items)):  # type: ignore[operator]
            raise self.fail(where, value)
        return items

    def encode(self, value: object) -> object:
        return [self.item.encode(entry) for entry in value]  # type: ignore[attr-defined]

    def decode(self, item: object, where: str) -> object:
        if not isinstance(item, list):
            raise self.fail(where, item)
        return tuple(self.item.decode(entry, f"{where}[{i}]") for i, entry in enumerate(item))

    def describe(self, value: object) -> object:
        return [self.item.describe(entry) for entry in value]  # type: ignore[attr-defined]


class Struct(Kind):
    """A nested map with its own integer keys (a :class:`Channel`, the :class:`Capabilities`)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.expected = f"a {cls.__name__}"

    def check(self, value: object, where: str) -> object:
        if type(value) is not self.cls:
            raise self.fail(where, value)
        return value

    def encode(self, value: object) -> object:
        return _encode_body(_STRUCTS[self.cls], value)

    def decode(self, item: object, where: str) -> object:
        return _decode_body(_STRUCTS[self.cls], item, where, {})

    def describe(self, value: object) -> object:
        return _describe_body(_STRUCTS[self.cls], value)


class TxErrorCounts(Kind):
    """Rejected TX requests by :class:`TxError`, on the wire an array of one counter per error
    (TOO_LATE first, in code order)."""

    kinds: Final = tuple(error for error in TxError if error is not TxError.NONE)
    expected = (
        f"a mapping of TxError (not NONE) to integers from 0 to {_U32_MAX}"
        f" (on the wire: an array of {len(kinds)} counters in TxError order)"
    )

    def check(self, value: object, where: str) -> object:
        if not isinstance(value, Mapping):
            raise self.fail(where, value)
        counts: dict[TxError, int] = dict.fromkeys(self.kinds, 0)
        for key, count in value.items():
            if not _is_int(key) or key not in counts:
                raise self.fail(where, value)
            if not _is_int(count) or not 0 <= count <= _U32_MAX:
                raise self.fail(f"{where}[{TxError(key).name}]", count)
            counts[TxError(key)] = count
        return MappingProxyType(counts)

    def encode(self, value: object) -> object:
        assert isinstance(value, Mapping)
        return [value[error] for error in self.kinds]

    def decode(self, item: object, where: str) -> object:
        if not isinstance(item, list) or len(item) != len(self.kinds):
            raise self.fail(where, item)
        return dict(zip(self.kinds, item, strict=True))

    def describe(self, value: object) -> object:
        assert isinstance(value, Mapping)
        return {error.name: value[error] for error in self.kinds}


U32 = IntRange(0, _U32_MAX)
#: From the lowest to the highest frequency of Semtech's LoRa radios (SX1276: 137 MHz,
#: SX1257: 1020 MHz).
FREQUENCY = IntRange(137_000_000, 1_020_000_000, "Hz")
SPREADING_FACTOR = IntRange(5, 12)
BANDWIDTH = OneOf(BANDWIDTHS_HZ, "Hz")
CODING_RATE = EnumKind(CodingRate, lambda member: CodingRate(member).label)
#: Conducted TX power, dBm: from a module's lowest setting to the 36 dBm EIRP that FCC part 15
#: allows in US915, the highest of any LoRaWAN region.
TX_POWER = IntRange(-20, 36, "dBm")
SF_LIST = ListOf(SPREADING_FACTOR, 1, 8, increasing=True)
TIMESTAMP = IntRange(0, _U32_MAX, "us")


# --- the field tables -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One entry of a message body: its integer key, attribute name and kind."""

    key: int
    name: str
    kind: Kind
    optional: bool = False


class _Body:
    """The fields of one map: a message body or a nested structure."""

    def __init__(self, cls: type, fields: tuple[Field, ...]) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.fields = fields
        self.max_key = max((entry.key for entry in fields), default=0)
        names = [entry.name for entry in fields]
        # One C-level call returns every value in field order (a tuple, or a bare value).
        self.values: Callable[[object], tuple[object, ...]] = (
            attrgetter(*names) if len(names) > 1 else _one(names)
        )
        self.where = {entry.name: f"{self.name}.{entry.name} (key {entry.key})" for entry in fields}
        # Per field, what validation and decoding need, prepared once (they run per message).
        self.checks = tuple(
            (entry.name, entry.kind.check, self.where[entry.name], entry.optional)
            for entry in fields
        )
        self.decoders = {
            entry.key: (
                entry.name,
                # Most kinds pass CBOR items through; the constructor checks them.
                None if type(entry.kind).decode is Kind.decode else entry.kind.decode,
                self.where[entry.name],
                isinstance(entry.kind, Nullable),
                entry.kind.expected,
            )
            for entry in fields
        }
        self.required = tuple(entry.name for entry in fields if not entry.optional)


def _one(names: list[str]) -> Callable[[object], tuple[object, ...]]:
    if not names:
        return lambda _: ()
    getter = attrgetter(names[0])
    return lambda obj: (getter(obj),)


def _validate(obj: object, token: object = None) -> None:
    # Called by every __post_init__: checks and normalises each field by the class's table,
    # and a message's envelope token by its message type's rule.
    body = _STRUCTS[type(obj)]
    for (name, check, where, optional), value in zip(body.checks, body.values(obj), strict=True):
        if value is None and optional:
            continue
        checked = check(value, where)
        if checked is not value:
            object.__setattr__(obj, name, checked)
    spec = _BY_CLASS.get(type(obj))
    if spec is not None:
        _check_token(spec, token)


def _check_token(spec: MessageSpec, token: object) -> None:
    if not _is_int(token) or not 0 <= token <= _U16_MAX:
        raise SchemaError(
            f"{spec.body.name}.token must be an integer from 0 to {_U16_MAX}, got {_show(token)}"
        )
    if spec.token is TokenRule.NONZERO and token == 0:
        raise SchemaError(
            f"{spec.body.name}.token must be from 1 to {_U16_MAX} (it pairs a request with its"
            " answer), got 0"
        )
    if spec.token is TokenRule.ZERO and token != 0:
        raise SchemaError(f"{spec.body.name}.token must be 0 (an event), got {token}")


def _encode_body(body: _Body, obj: object) -> dict[int, object]:
    out: dict[int, object] = {}
    for entry, value in zip(body.fields, body.values(obj), strict=True):
        if value is not None or not entry.optional:
            out[entry.key] = None if value is None else entry.kind.encode(value)
    return out


def _decode_body(body: _Body, item: object, where: str, extra: dict[str, object]) -> object:
    if not isinstance(item, dict):
        raise SchemaError(f"{where} must be a map with integer keys, got {_show(item)}")
    args = extra
    decoders = body.decoders
    for key, value in item.items():
        known = decoders.get(key) if type(key) is int else None
        if known is None:
            # Section "Versioning" of the spec: keys above the highest known are a later
            # revision's optional fields, skipped; anything else is an error.
            if _is_int(key) and key > body.max_key:
                continue
            raise SchemaError(
                f"{where}: key {_show(key)} is not a {body.name} field"
                f" (keys are unsigned integers; known: 1 to {body.max_key})"
            )
        name, decode, field_where, nullable, expected = known
        if value is None and not nullable:
            # An absent optional field is an absent key; null is no value of any field here.
            raise SchemaError(f"{where}: {field_where} is null, expected {expected}")
        args[name] = value if decode is None else decode(value, field_where)
    for name in body.required:
        if name not in args:
            raise SchemaError(f"{where}: {body.where[name]} is missing")
    try:
        result: object = body.cls(**args)
    except SchemaError as err:
        # The constructor names the field; the prefix says where in the message it sits.
        raise SchemaError(f"{where}: {err.message}") from err
    return result


def _describe_body(body: _Body, obj: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for entry, value in zip(body.fields, body.values(obj), strict=True):
        out[entry.name] = None if value is None else entry.kind.describe(value)
    return out


# --- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Channel:
    """One receive channel of a :class:`RadioConfig`: centre frequency, bandwidth, and the
    spreading factors its demodulator listens for (a multi-SF channel lists several)."""

    frequency_hz: int
    bandwidth_hz: int = 125_000
    spreading_factors: tuple[int, ...] = (7, 8, 9, 10, 11, 12)

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What the concentrator can do, reported in its :class:`Hello`."""

    chip: str  # the concentrator chip, e.g. "SX1302"
    max_channels: int  # receive channels it can demodulate at once
    frequency_min_hz: int
    frequency_max_hz: int
    tx_power_min_dbm: int
    tx_power_max_dbm: int
    spreading_factors: tuple[int, ...]
    bandwidths_hz: tuple[int, ...]
    gps: bool  # a GPS time reference (PPS) is fitted

    def __post_init__(self) -> None:
        _validate(self)
        if self.frequency_min_hz > self.frequency_max_hz:
            raise SchemaError(
                f"Capabilities.frequency_min_hz ({self.frequency_min_hz}) must not exceed"
                f" frequency_max_hz ({self.frequency_max_hz})"
            )
        if self.tx_power_min_dbm > self.tx_power_max_dbm:
            raise SchemaError(
                f"Capabilities.tx_power_min_dbm ({self.tx_power_min_dbm}) must not exceed"
                f" tx_power_max_dbm ({self.tx_power_max_dbm})"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Who is on the other end. The host sends one (with a token) when it opens the port; the
    concentrator answers with its own, repeating the token, and also sends one with token 0
    whenever it boots, so the host knows its configuration was lost.

    The host's Hello has no ``eui`` and no ``capabilities``; the concentrator's has both.
    """

    protocol_version: int = PROTOCOL_VERSION
    firmware: str  # the sender's software and version, e.g. "owlgate 0.1.0"
    eui: bytes | None = None  # the concentrator's EUI-64 (the gateway EUI)
    capabilities: Capabilities | None = None
    token: int = 0

    def __post_init__(self) -> None:
        _validate(self, self.token)
        if (self.eui is None) != (self.capabilities is None):
            raise SchemaError(
                "Hello.eui (key 3) and Hello.capabilities (key 4) go together: both (a"
                " concentrator's Hello) or neither (the host's)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RadioConfig:
    """The channel plan and TX limits (host to concentrator). Answered by a
    :class:`RadioConfigAck` naming ``config_id`` once applied, or an :class:`Error`."""

    config_id: int  # 1 .. 2^32-1, chosen by the host; 0 means "none" in Stats
    region: str  # informative, e.g. "EU868"
    lorawan_public: bool = True  # LoRa sync word: public network (0x34) or private (0x12)
    channels: tuple[Channel, ...]
    tx_frequency_min_hz: int
    tx_frequency_max_hz: int
    tx_power_max_dbm: int
    stats_interval_s: int = 30  # 0: Stats only on request (GetStats)
    token: int

    def __post_init__(self) -> None:
        _validate(self, self.token)
        if self.tx_frequency_min_hz > self.tx_frequency_max_hz:
            raise SchemaError(
                f"RadioConfig.tx_frequency_min_hz ({self.tx_frequency_min_hz}) must not exceed"
                f" tx_frequency_max_hz ({self.tx_frequency_max_hz})"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RadioConfigAck:
    """The configuration ``config_id`` is applied and the radio receives with it."""

    config_id: int
    token: int

    def __post_init__(self) -> None:
        _validate(self, self.token)


@dataclass(frozen=True, slots=True, kw_only=True)
class RxFrame:
    """A packet the concentrator received (an event, token 0): the fields of Semtech's
    ``rxpk`` that a LoRaWAN network needs, in integers.

    ``timestamp_us`` is the concentrator's free-running 32-bit microsecond counter at the end
    of the packet (Semtech's ``tmst``); TX requests are scheduled on the same counter.
    ``snr_db`` comes in 0.25 dB steps, the SX130x's resolution.
    """

    frequency_hz: int
    sf: int
    bandwidth_hz: int
    coding_rate: CodingRate
    rssi_dbm: int
    snr_db: float
    timestamp_us: int
    crc_status: CrcStatus
    payload: bytes  # the PHYPayload, 1 .. 255 bytes
    channel: int | None = None  # IF chain that demodulated it (Semtech's chan)
    rf_chain: int | None = None  # radio front end (Semtech's rfch)
    token: int = 0

    def __post_init__(self) -> None:
        _validate(self, self.token)


@dataclass(frozen=True, slots=True, kw_only=True)
class TxRequest:
    """Transmit ``payload`` (host to concentrator), answered by a :class:`TxAck` with the same
    token once the concentrator has scheduled or refused it.

    ``timestamp_us`` is the counter value (see :class:`RxFrame`) at which to start; None sends
    at once. LoRaWAN downlinks invert the IQ polarity and carry no PHY CRC (LoRaWAN 1.0.3
    section 3.2), which the defaults say.
    """

    timestamp_us: int | None
    frequency_hz: int
    sf: int
    bandwidth_hz: int = 125_000
    coding_rate: CodingRate = CodingRate.CR_4_5
    power_dbm: int
    invert_polarity: bool = True
    crc: bool = False
    payload: bytes
    preamble_symbols: int | None = None  # None: 8, the LoRaWAN preamble
    token: int

    def __post_init__(self) -> None:
        _validate(self, self.token)


@dataclass(frozen=True, slots=True, kw_only=True)
class TxAck:
    """The answer to a :class:`TxRequest`: scheduled (``TxError.NONE``) or why not.

    ``timestamp_us`` is the counter value when the concentrator judged the request, which shows
    how much margin a TOO_LATE request lacked.
    """

    error: TxError = TxError.NONE
    timestamp_us: int | None = None
    token: int

    def __post_init__(self) -> None:
        _validate(self, self.token)


@dataclass(frozen=True, slots=True, kw_only=True)
class GetStats:
    """Ask the concentrator for a :class:`Stats` report now (host to concentrator)."""

    token: int

    def __post_init__(self) -> None:
        _validate(self, self.token)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """Counters since the concentrator booted, every ``stats_interval_s`` (token 0) and on
    request (the request's token). Counters are 32-bit and wrap: subtract modulo 2^32.

    ``link_errors`` counts frames from the host the concentrator dropped (CRC, COBS, overflow);
    ``link_dropped`` counts messages it could not send to the host (its queue was full).
    """

    uptime_s: int
    rx_received: int  # packets received, CRC good, bad or absent (Semtech's rxnb)
    rx_crc_ok: int  # (rxok)
    rx_crc_bad: int
    tx_requested: int  # TX requests received (dwnb)
    tx_sent: int  # packets transmitted (txnb)
    tx_errors: Mapping[TxError, int] = field(default_factory=dict)  # rejected, by reason
    config_id: int  # the RadioConfig in use, 0 for none
    link_errors: int = 0
    link_dropped: int = 0
    temperature_c: float | None = None  # the concentrator's sensor, 0.1 degC steps
    token: int = 0

    def __post_init__(self) -> None:
        _validate(self, self.token)

    def __hash__(self) -> int:
        # By hand: the mapping of TX errors is not hashable itself.
        values = _BY_CLASS[Stats].body.values(self)
        items = (tuple(v.items()) if isinstance(v, Mapping) else v for v in values)
        return hash((*items, self.token))


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """A message could not be handled (either direction). ``token`` is the token of the
    request it answers (0 when there is none); ``ref_type`` the type of the refused message."""

    code: ErrorCode
    message: str = ""  # for people: what was wrong
    ref_type: int | None = None
    token: int = 0

    def __post_init__(self) -> None:
        _validate(self, self.token)


Message: TypeAlias = (
    Hello | RadioConfig | RadioConfigAck | RxFrame | TxRequest | TxAck | GetStats | Stats | Error
)


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """One row of :data:`MESSAGES`: a message type and everything needed to carry it."""

    message_type: MessageType
    cls: type[Message]
    sender: Sender
    token: TokenRule
    fields: tuple[Field, ...]
    body: _Body = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", _Body(self.cls, self.fields))


_CHANNEL_FIELDS = (
    Field(1, "frequency_hz", FREQUENCY),
    Field(2, "bandwidth_hz", BANDWIDTH),
    Field(3, "spreading_factors", SF_LIST),
)
_CAPABILITY_FIELDS = (
    Field(1, "chip", Text(1, 32)),
    Field(2, "max_channels", IntRange(1, 32)),
    Field(3, "frequency_min_hz", FREQUENCY),
    Field(4, "frequency_max_hz", FREQUENCY),
    Field(5, "tx_power_min_dbm", TX_POWER),
    Field(6, "tx_power_max_dbm", TX_POWER),
    Field(7, "spreading_factors", SF_LIST),
    Field(8, "bandwidths_hz", ListOf(BANDWIDTH, 1, len(BANDWIDTHS_HZ), increasing=True)),
    Field(9, "gps", Bool()),
)

#: Every message type of protocol v1: the one table the codec is driven by.
MESSAGES: Final = (
    MessageSpec(
        MessageType.HELLO,
        Hello,
        Sender.EITHER,
        TokenRule.ANY,
        (
            Field(1, "protocol_version", IntRange(1, 255)),
            Field(2, "firmware", Text(1, 64)),
            Field(3, "eui", Bytes(8, 8), optional=True),
            Field(4, "capabilities", Struct(Capabilities), optional=True),
        ),
    ),
    MessageSpec(
        MessageType.RADIO_CONFIG,
        RadioConfig,
        Sender.HOST,
        TokenRule.NONZERO,
        (
            Field(1, "config_id", IntRange(1, _U32_MAX)),
            Field(2, "region", Text(1, 16)),
            Field(3, "lorawan_public", Bool()),
            Field(4, "channels", ListOf(Struct(Channel), 1, 32)),
            Field(5, "tx_frequency_min_hz", FREQUENCY),
            Field(6, "tx_frequency_max_hz", FREQUENCY),
            Field(7, "tx_power_max_dbm", TX_POWER),
            Field(8, "stats_interval_s", IntRange(0, 86_400, "s")),
        ),
    ),
    MessageSpec(
        MessageType.RADIO_CONFIG_ACK,
        RadioConfigAck,
        Sender.CONCENTRATOR,
        TokenRule.NONZERO,
        (Field(1, "config_id", IntRange(1, _U32_MAX)),),
    ),
    MessageSpec(
        MessageType.RX_FRAME,
        RxFrame,
        Sender.CONCENTRATOR,
        TokenRule.ZERO,
        (
            Field(1, "frequency_hz", FREQUENCY),
            Field(2, "sf", SPREADING_FACTOR),
            Field(3, "bandwidth_hz", BANDWIDTH),
            Field(4, "coding_rate", CODING_RATE),
            Field(5, "rssi_dbm", IntRange(-200, 30, "dBm")),
            Field(6, "snr_db", Steps(4, -256, 255, "dB")),
            Field(7, "timestamp_us", TIMESTAMP),
            Field(8, "crc_status", EnumKind(CrcStatus)),
            Field(9, "payload", Bytes(1, 255)),
            Field(10, "channel", IntRange(0, 63), optional=True),
            Field(11, "rf_chain", IntRange(0, 7), optional=True),
        ),
    ),
    MessageSpec(
        MessageType.TX_REQUEST,
        TxRequest,
        Sender.HOST,
        TokenRule.NONZERO,
        (
            Field(1, "timestamp_us", Nullable(TIMESTAMP, "immediately")),
            Field(2, "frequency_hz", FREQUENCY),
            Field(3, "sf", SPREADING_FACTOR),
            Field(4, "bandwidth_hz", BANDWIDTH),
            Field(5, "coding_rate", CODING_RATE),
            Field(6, "power_dbm", TX_POWER),
            Field(7, "invert_polarity", Bool()),
            Field(8, "crc", Bool()),
            Field(9, "payload", Bytes(1, 255)),
            Field(10, "preamble_symbols", IntRange(6, _U16_MAX), optional=True),
        ),
    ),
    MessageSpec(
        MessageType.TX_ACK,
        TxAck,
        Sender.CONCENTRATOR,
        TokenRule.NONZERO,
        (
            Field(1, "error", EnumKind(TxError)),
            Field(2, "timestamp_us", TIMESTAMP, optional=True),
        ),
    ),
    MessageSpec(MessageType.GET_STATS, GetStats, Sender.HOST, TokenRule.NONZERO, ()),
    MessageSpec(
        MessageType.STATS,
        Stats,
        Sender.CONCENTRATOR,
        TokenRule.ANY,
        (
            Field(1, "uptime_s", IntRange(0, _U32_MAX, "s")),
            Field(2, "rx_received", U32),
            Field(3, "rx_crc_ok", U32),
            Field(4, "rx_crc_bad", U32),
            Field(5, "tx_requested", U32),
            Field(6, "tx_sent", U32),
            Field(7, "tx_errors", TxErrorCounts()),
            Field(8, "config_id", U32),
            Field(9, "link_errors", U32),
            Field(10, "link_dropped", U32),
            Field(11, "temperature_c", Steps(10, -400, 1250, "degC"), optional=True),
        ),
    ),
    MessageSpec(
        MessageType.ERROR,
        Error,
        Sender.EITHER,
        TokenRule.ANY,
        (
            Field(1, "code", EnumKind(ErrorCode)),
            Field(2, "message", Text(0, 128)),
            Field(3, "ref_type", IntRange(1, 255), optional=True),
        ),
    ),
)

# What encode_message relies on: one-byte keys, listed in increasing order.
assert all(
    [entry.key for entry in spec.fields] == sorted({entry.key for entry in spec.fields})
    and all(0 < entry.key < 24 for entry in spec.fields)
    for spec in MESSAGES
)
_BY_TYPE: Final = {int(spec.message_type): spec for spec in MESSAGES}
_BY_CLASS: Final[dict[type, MessageSpec]] = {spec.cls: spec for spec in MESSAGES}
_STRUCTS: Final[dict[type, _Body]] = {
    Channel: _Body(Channel, _CHANNEL_FIELDS),
    Capabilities: _Body(Capabilities, _CAPABILITY_FIELDS),
    **{spec.cls: spec.body for spec in MESSAGES},
}


# --- the RX_FRAME fast path -------------------------------------------------------------------

# Nearly every message on the line is an RX_FRAME, one per packet heard. decode_message reads
# the form encoders write (envelope [4, 0, {...}], keys 1 to 11 in increasing order, integers,
# and the payload as a definite-length byte string) straight from the bytes, checks each value
# as the kinds of the RX_FRAME row of MESSAGES do (the checks RxFrame's constructor makes), and
# builds the frame from the values it checked rather than checking them a second time. Any
# other form, and any value that fails a check, goes to the general path (None), which accepts
# or refuses it as it always has and names the problem: the fast path changes only the time.

_RX_SPEC: Final = _BY_TYPE[MessageType.RX_FRAME]
_RX_KINDS: Final = {entry.key: entry.kind for entry in _RX_SPEC.fields}
_K = TypeVar("_K", bound=Kind)


def _rx_kind(key: int, cls: type[_K]) -> _K:
    kind = _RX_KINDS[key]
    if not isinstance(kind, cls):
        raise TypeError(f"the RX_FRAME fast path expects key {key} to be {cls.__name__}")
    return kind


_RX_FREQUENCY: Final = _rx_kind(1, IntRange)
_RX_SF: Final = _rx_kind(2, IntRange)
_RX_BANDWIDTH: Final = _rx_kind(3, OneOf)
_RX_CODING_RATE: Final = _rx_kind(4, EnumKind)
_RX_RSSI: Final = _rx_kind(5, IntRange)
_RX_SNR: Final = _rx_kind(6, Steps)
_RX_TIMESTAMP: Final = _rx_kind(7, IntRange)
_RX_CRC: Final = _rx_kind(8, EnumKind)
_RX_PAYLOAD: Final = _rx_kind(9, Bytes)
_RX_CHANNEL: Final = _rx_kind(10, IntRange)
_RX_RF_CHAIN: Final = _rx_kind(11, IntRange)
# What the fast path relies on, so that a change of the table cannot leave it behind: the
# fields it sets, by name, are RxFrame's, and the keys and their order are the table's.
_RX_NAMES: Final = (
    "frequency_hz",
    "sf",
    "bandwidth_hz",
    "coding_rate",
    "rssi_dbm",
    "snr_db",
    "timestamp_us",
    "crc_status",
    "payload",
    "channel",
    "rf_chain",
    "token",
)
assert tuple(entry.name for entry in dataclass_fields(RxFrame)) == _RX_NAMES
assert tuple(entry.name for entry in _RX_SPEC.fields) == _RX_NAMES[:-1]
assert [entry.key for entry in _RX_SPEC.fields] == list(range(1, 12))
assert [entry.optional for entry in _RX_SPEC.fields] == [False] * 9 + [True] * 2
assert _RX_SPEC.token is TokenRule.ZERO
# The ranges of the integer kinds (low and high included), for one test each.
_RX_FREQUENCIES: Final = range(_RX_FREQUENCY.low, _RX_FREQUENCY.high + 1)
_RX_SFS: Final = range(_RX_SF.low, _RX_SF.high + 1)
_RX_BANDWIDTHS: Final = _RX_BANDWIDTH.values
_RX_RSSIS: Final = range(_RX_RSSI.low, _RX_RSSI.high + 1)
_RX_SNR_PER: Final = _RX_SNR.per
_RX_TIMESTAMPS: Final = range(_RX_TIMESTAMP.low, _RX_TIMESTAMP.high + 1)
_RX_PAYLOAD_SIZES: Final = range(_RX_PAYLOAD.low, _RX_PAYLOAD.high + 1)
_RX_CHANNELS: Final = range(_RX_CHANNEL.low, _RX_CHANNEL.high + 1)
_RX_RF_CHAINS: Final = range(_RX_RF_CHAIN.low, _RX_RF_CHAIN.high + 1)
# The envelope of an RX_FRAME: an array of 3, type 4, token 0 (the only token it may carry).
_RX_ENVELOPE: Final = b"\x83\x04\x00"
_new_object = object.__new__
# The slots' own setters, in _RX_NAMES order: what object.__setattr__ ends up calling for a
# frozen dataclass, without the lookup.
_RX_SETTERS: Final = tuple(getattr(RxFrame, name).__set__ for name in _RX_NAMES)


def _rx_int(data: bytes, at: int) -> tuple[int | None, int]:
    # The integer at data[at] in any form cbor.loads reads (RFC 8949 section 3.1: an argument
    # of 0 to 8 bytes, shortest or not), and the offset after it; None for any other item.
    # The forms an RSSI, an SNR and a timestamp take come first.
    initial = data[at]
    if initial < 0x18:
        return initial, at + 1
    if 0x20 <= initial < 0x38:
        return 0x1F - initial, at + 1
    if initial == 0x38:
        return -1 - data[at + 1], at + 2
    if initial == 0x18:
        return data[at + 1], at + 2
    if initial == 0x1A:
        return int.from_bytes(data[at + 1 : at + 5], "big"), at + 5
    major = initial >> 5
    info = initial & 0x1F
    if major > 1 or info > 27:
        return None, at
    size = 1 << (info - 24)
    argument = int.from_bytes(data[at + 1 : at + 1 + size], "big")
    return (argument if major == 0 else -1 - argument), at + 1 + size


# The first 21 bytes of the common form: the map head and keys 1 to 5, frequency and bandwidth
# with four-byte arguments (every valid value needs four, RFC 8949 section 3.1), sf and coding
# rate in the initial byte (every valid value is below 24), and the key of the RSSI.
_RX_HEAD: Final = struct.Struct(">3xBBBIBBBBIBBB")
_RX_HEAD_KEYS: Final = (1, 0x1A, 2, 3, 0x1A, 4, 5)


def _rx_frame(data: bytes) -> RxFrame | None:
    # The RxFrame in data, which starts with _RX_ENVELOPE, or None to leave data to the general
    # path. A read past the end raises IndexError (struct.error for the head), which
    # decode_message takes as None; a slice past the end leaves ``at`` beyond the end, which
    # the final length check refuses.
    (head, k1, h1, frequency_hz, k2, sf, k3, h3, bandwidth_hz, k4, coding_rate, k5) = (
        _RX_HEAD.unpack_from(data)
    )
    # Nine to eleven pairs: the required keys 1 to 9, then channel and RF chain if present.
    if not 0xA9 <= head <= 0xAB or (k1, h1, k2, k3, h3, k4, k5) != _RX_HEAD_KEYS:
        return None
    rssi_dbm, at = _rx_int(data, 21)
    if rssi_dbm is None or data[at] != 6:
        return None
    quarters, at = _rx_int(data, at + 1)
    if quarters is None or data[at] != 7:
        return None
    timestamp_us, at = _rx_int(data, at + 1)
    if timestamp_us is None or data[at] != 8:
        return None
    crc, at = _rx_int(data, at + 1)
    if crc is None or data[at] != 9:
        return None
    initial = data[at + 1]
    if 0x40 <= initial < 0x58:
        size = initial - 0x40
        at += 2
    elif initial == 0x58:
        size = data[at + 2]
        at += 3
    else:
        return None
    payload = data[at : at + size]
    at += size
    channel = rf_chain = None
    extra = head - 0xA9
    if extra and data[at] == 10:
        channel, at = _rx_int(data, at + 1)
        if channel is None:
            return None
        extra -= 1
    if extra and data[at] == 11:
        rf_chain, at = _rx_int(data, at + 1)
        if rf_chain is None:
            return None
        extra -= 1
    if extra or at != len(data):
        return None
    # Each kind's check, in field order (Steps as it decodes: an integer count of steps, then
    # the check of the float that stands for).
    coding_rate_member = _RX_CODING_RATE.by_value.get(coding_rate)
    if (
        frequency_hz not in _RX_FREQUENCIES
        or sf not in _RX_SFS
        or bandwidth_hz not in _RX_BANDWIDTHS
        or coding_rate_member is None
        or rssi_dbm not in _RX_RSSIS
    ):
        return None
    snr_db = quarters / _RX_SNR_PER
    steps = snr_db * _RX_SNR_PER
    if not _RX_SNR.low <= steps <= _RX_SNR.high or round(steps) / _RX_SNR_PER != snr_db:
        return None
    snr_db = round(steps) / _RX_SNR_PER
    crc_member = _RX_CRC.by_value.get(crc)
    if (
        timestamp_us not in _RX_TIMESTAMPS
        or crc_member is None
        or len(payload) not in _RX_PAYLOAD_SIZES
        or (channel is not None and channel not in _RX_CHANNELS)
        or (rf_chain is not None and rf_chain not in _RX_RF_CHAINS)
    ):
        return None
    # Built from the values just checked, in their normal form (enum members, the float of
    # the SNR, bytes), which is what __post_init__ would leave.
    frame = _new_object(RxFrame)
    (s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12) = _RX_SETTERS
    s1(frame, frequency_hz)
    s2(frame, sf)
    s3(frame, bandwidth_hz)
    s4(frame, coding_rate_member)
    s5(frame, rssi_dbm)
    s6(frame, snr_db)
    s7(frame, timestamp_us)
    s8(frame, crc_member)
    s9(frame, payload)
    s10(frame, channel)
    s11(frame, rf_chain)
    s12(frame, 0)
    return frame


# --- encoding and decoding --------------------------------------------------------------------


def _spec_of(message: object) -> MessageSpec:
    spec = _BY_CLASS.get(type(message))
    if spec is None:
        raise SchemaError(f"not a concentrator protocol message: {type(message).__name__}")
    return spec


# encode_message writes the envelope and the body's keys itself, and small items from a table:
# it halves the time of cbor.dumps on the generic structure. Body keys are below 24 and listed
# in increasing order, so each is one byte and the field order is the deterministic key order
# (RFC 8949 section 4.2.1); the tests compare every message with cbor.dumps.
_SMALL_ITEMS: Final = tuple(cbor.dumps(number) for number in range(-24, 256))
_ENVELOPE_HEAD: Final = b"\x83"


def _item(value: object) -> bytes:
    if type(value) is int and -24 <= value < 256:
        return _SMALL_ITEMS[value + 24]
    if type(value) is bytes and len(value) < 24:
        return bytes((0x40 | len(value),)) + value
    return cbor.dumps(value)


def encode_message(message: Message) -> bytes:
    """The CBOR payload of ``message``: ``[type, token, {key: value}]``, deterministic."""
    spec = _spec_of(message)
    parts = [_ENVELOPE_HEAD, _SMALL_ITEMS[spec.message_type + 24], _item(message.token), b""]
    count = 0
    for entry, value in zip(spec.fields, spec.body.values(message), strict=True):
        if value is None:
            if entry.optional:
                continue
            parts.append(_SMALL_ITEMS[entry.key + 24])
            parts.append(b"\xf6")
        else:
            parts.append(_SMALL_ITEMS[entry.key + 24])
            parts.append(_item(entry.kind.encode(value)))
        count += 1
    parts[3] = bytes((0xA0 | count,))
    return b"".join(parts)


def _header(item: object) -> tuple[int, int, object]:
    if not isinstance(item, list) or len(item) != 3:
        raise SchemaError(f"a message is a CBOR array [type, token, body], got {_show(item)}")
    type_id, token, body = item
    if not _is_int(type_id) or not 1 <= type_id <= 255:
        raise SchemaError(f"message type must be an integer from 1 to 255, got {_show(type_id)}")
    if not _is_int(token) or not 0 <= token <= _U16_MAX:
        raise SchemaError(f"token must be an integer from 0 to {_U16_MAX}, got {_show(token)}")
    return type_id, token, body


def peek_header(data: bytes) -> tuple[int, int]:
    """The ``(type, token)`` of a CBOR payload, the body unchecked: what a receiver needs to
    answer an unknown or malformed message with an :class:`Error` that names its token."""
    type_id, token, _ = _header(cbor.loads(data))
    return type_id, token


def decode_message(data: bytes) -> Message:
    """The message in a CBOR payload. Raises :class:`CborError` for bytes that are not one
    well-formed CBOR item and :class:`SchemaError` for anything that is not a valid v1 message
    (the text names the field, its key and what was expected)."""
    if type(data) is bytes and data.startswith(_RX_ENVELOPE):
        frame = None
        try:
            frame = _rx_frame(data)
        except (IndexError, struct.error):
            frame = None  # truncated: the general path says where
        if frame is not None:
            return frame
    return _decode_general(data)


def _decode_general(data: bytes) -> Message:
    # Any CBOR, through cbor.loads and the field table.
    type_id, token, body = _header(cbor.loads(data))
    spec = _BY_TYPE.get(type_id)
    if spec is None:
        known = ", ".join(f"{row.message_type.value} ({row.message_type.name})" for row in MESSAGES)
        raise SchemaError(f"unknown message type {type_id} (token {token}); known: {known}")
    message = _decode_body(spec.body, body, f"{spec.message_type.name} message", {"token": token})
    assert isinstance(message, spec.cls)
    return message


def to_frame(message: Message) -> bytes:
    """``message`` as one serial frame, ready to write: CBOR, CRC-16, COBS, 0x00 delimiters."""
    return encode_frame(encode_message(message))


def from_frame(frame: bytes) -> Message:
    """The message in one serial frame (with or without delimiters): FrameError, CrcError,
    CborError or SchemaError when it cannot be decoded."""
    return decode_message(decode_frame(frame))


def describe_message(message: Message) -> dict[str, object]:
    """A JSON-ready view of ``message``: type name, token, and every field by name (bytes as
    hex, enums by name, coding rates as ``"4/5"``, absent optional fields as None)."""
    spec = _spec_of(message)
    out: dict[str, object] = {
        "type": spec.message_type.name,
        "type_id": int(spec.message_type),
        "token": message.token,
    }
    out.update(_describe_body(spec.body, message))
    return out


def describe_frame(data: bytes) -> dict[str, object]:
    """What ``owlgate decode frame HEX`` prints: one captured serial frame (with or without its
    0x00 delimiters), its sizes, the CRC check, and the message inside.

    A frame whose CRC does not match is still shown (``crc.ok`` false) with the message as
    received when it decodes, or ``message_error`` saying why not, since a capture with one
    flipped bit is exactly what one debugs. A frame that cannot be unwrapped at all (bad COBS,
    too short or too long, several frames) raises :class:`FrameError`, and a frame with a good
    CRC whose message does not decode raises :class:`CborError` or :class:`SchemaError`.
    """
    raw = bytes(data)
    verified = True
    try:
        decode_frame(raw)
    except CrcError:
        verified = False
    body = raw.strip(b"\x00")
    decoded = cobs_decode(body)
    payload = decoded[:-CRC_SIZE]
    got = int.from_bytes(decoded[-CRC_SIZE:], "big")
    expected = crc16(payload)
    out: dict[str, object] = {
        "frame": {
            "size": len(raw),
            "cobs_size": len(body),
            "leading_delimiter": raw[:1] == b"\x00",
            "trailing_delimiter": raw[-1:] == b"\x00",
        },
        "payload_size": len(payload),
        "payload": payload.hex(),
        "crc": {"expected": f"0x{expected:04x}", "got": f"0x{got:04x}", "ok": verified},
    }
    if verified:
        out["message"] = describe_message(decode_message(payload))
        return out
    try:
        out["message"] = describe_message(decode_message(payload))
    except CodecError as err:
        out["message"] = None
        out["message_error"] = err.message
    return out
