"""Compact CBOR telemetry batches: what a gateway (or a wired node) sends to the fleet.

One batch is one CBOR array (RFC 8949), specified in ``docs/formats/telemetry.cddl``::

    [1, gateway_eui, seq, base_time, ?true, reading, reading, ...]
         version 1         seconds   delayed

    reading = [?field_mask, dev_eui, dt, rssi, snr, value, value, ...]

- ``dt`` is seconds since the previous reading (the first: since ``base_time``), so a batch
  of readings a few seconds apart spends one byte per reading on time.
- ``rssi`` is whole dBm and ``snr`` quarter dB (the resolution of SX130x concentrators),
  both ``null`` for a reading that came over a wire.
- ``field_mask`` says which entries of :data:`FIELDS` follow, in bit order. It is written only
  when it differs from the previous reading's, so a batch of one sensor type names its fields
  once. Quantities are scaled integers; a value no row can carry exactly goes, under its own
  key, into the extension map (bit 15), so nothing a decoder produced is ever lost.

The encoding is deterministic and canonical: :func:`decode_batch` accepts exactly the bytes
:func:`encode_batch` produces for the decoded content, which makes a batch's hash a stable
identity for duplicate detection. This module runs unchanged on MicroPython.
"""

from ..errors import CborError, SchemaError
from . import cbor
from .hextext import hex_text

FORMAT_VERSION = 1

# Field kinds. A plain table instead of an enum: MicroPython has no enum module.
BOOL = 0  # CBOR true/false
INT = 1  # integer, unit as named
SCALED = 2  # integer count of 1/divisor units; decodes to float
UINT32 = 3  # radio metadata, 0 .. 2**32-1
SF = 4  # LoRa spreading factor, 5 .. 12
EXTENSION = 5  # map of text key -> any CBOR value

# (bit, name, kind, divisor). name is the key in Reading.values (the names the device
# payload decoders use) or, for radio metadata, the Reading attribute. A name may have
# several rows: the encoder uses the first that carries the value exactly, so 21.5 degC costs
# two bytes (215 tenths) and 21.37 degC three (2137 hundredths). Version 1 fixes this table;
# a new row needs a new format version.
FIELDS = (
    (0, "fcnt", UINT32, 1),
    (1, "occupied", BOOL, 1),
    (2, "battery_mv", INT, 1),
    (3, "temperature_c", SCALED, 10),
    (4, "temperature_c", SCALED, 100),
    (5, "fill_pct", INT, 1),
    (6, "fill_pct", SCALED, 10),
    (7, "distance_mm", INT, 1),
    (8, "tilt_alarm", BOOL, 1),
    (9, "humidity_pct", SCALED, 10),
    (10, "co2_ppm", INT, 1),
    (11, "sf", SF, 1),
    (12, "freq_hz", UINT32, 1),
    (13, "gw_time_us", UINT32, 1),
    (15, "ext", EXTENSION, 1),
)
EXTENSION_BIT = 15

_U64_END = 1 << 64
_U32_END = 1 << 32
# Scaled values stay well inside the 53-bit mantissa of a double, so raw / divisor * divisor
# rounds back to raw. (Ports with single-precision floats check exactness with their own
# floats, so what they encode still decodes to the value they hold.)
_SCALED_END = 1 << 31
_RADIO_END = 1 << 31

_BY_BIT: list[tuple[int, str, int, int] | None] = [None] * 16
_ROWS_BY_NAME: dict[str, list[tuple[int, int, int]]] = {}
_KNOWN_MASK = 0
for _row in FIELDS:
    _BY_BIT[_row[0]] = _row
    _KNOWN_MASK |= 1 << _row[0]
    if _row[2] != UINT32 and _row[2] != SF and _row[2] != EXTENSION:
        _ROWS_BY_NAME.setdefault(_row[1], []).append((_row[0], _row[2], _row[3]))


class Reading:
    """One decoded uplink: device, UTC time in seconds, values by name, radio metadata.

    ``snr_db`` travels in 0.25 dB steps (rounded half to even); ``fcnt`` is the 32-bit frame
    counter, which with ``dev_eui`` identifies a frame heard by several gateways.
    """

    # A plain class with slots, not a dataclass: this module runs on MicroPython.
    __slots__ = (
        "dev_eui",
        "fcnt",
        "freq_hz",
        "gw_time_us",
        "rssi_dbm",
        "sf",
        "snr_db",
        "time_s",
        "values",
    )

    def __init__(
        self,
        dev_eui: bytes,
        time_s: int,
        values: dict[str, object] | None = None,
        rssi_dbm: int | None = None,
        snr_db: float | None = None,
        fcnt: int | None = None,
        sf: int | None = None,
        freq_hz: int | None = None,
        gw_time_us: int | None = None,
    ) -> None:
        self.dev_eui = dev_eui
        self.time_s = time_s
        self.values: dict[str, object] = {} if values is None else values
        self.rssi_dbm = rssi_dbm
        self.snr_db = snr_db
        self.fcnt = fcnt
        self.sf = sf
        self.freq_hz = freq_hz
        self.gw_time_us = gw_time_us

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Reading)
            and self.dev_eui == other.dev_eui
            and self.time_s == other.time_s
            and self.values == other.values
            and self.rssi_dbm == other.rssi_dbm
            and self.snr_db == other.snr_db
            and self.fcnt == other.fcnt
            and self.sf == other.sf
            and self.freq_hz == other.freq_hz
            and self.gw_time_us == other.gw_time_us
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            "Reading(dev_eui="
            + _hex(self.dev_eui)
            + ", time_s="
            + repr(self.time_s)
            + ", values="
            + repr(self.values)
            + ", rssi_dbm="
            + repr(self.rssi_dbm)
            + ", snr_db="
            + repr(self.snr_db)
            + ", fcnt="
            + repr(self.fcnt)
            + ", sf="
            + repr(self.sf)
            + ", freq_hz="
            + repr(self.freq_hz)
            + ", gw_time_us="
            + repr(self.gw_time_us)
            + ")"
        )


class Batch:
    """Readings one gateway sends in one message.

    ``seq`` counts batches per gateway (0 .. 2**64-1); ``base_time`` is UTC seconds since the
    Unix epoch; ``delayed`` is set when the batch was sealed while the backhaul was down, so it
    waited in the outbox.
    """

    # A plain class with slots, not a dataclass: this module runs on MicroPython.
    __slots__ = ("base_time", "delayed", "gateway_id", "readings", "seq")

    def __init__(
        self,
        gateway_id: bytes,
        seq: int,
        base_time: int,
        readings: list[Reading] | None = None,
        delayed: bool = False,
    ) -> None:
        self.gateway_id = gateway_id
        self.seq = seq
        self.base_time = base_time
        self.readings: list[Reading] = [] if readings is None else readings
        self.delayed = delayed

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Batch)
            and self.gateway_id == other.gateway_id
            and self.seq == other.seq
            and self.base_time == other.base_time
            and self.delayed == other.delayed
            and self.readings == other.readings
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            "Batch(gateway_id="
            + _hex(self.gateway_id)
            + ", seq="
            + repr(self.seq)
            + ", base_time="
            + repr(self.base_time)
            + ", delayed="
            + repr(self.delayed)
            + ", readings="
            + repr(self.readings)
            + ")"
        )


def _hex(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "h'" + hex_text(value) + "'"
    return repr(value)


def _int(value: object) -> int | None:
    # bool is an int subclass on CPython and not on MicroPython: exclude it on both.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


# --- encoding ---------------------------------------------------------------------------------

# The encoder writes CBOR heads itself instead of building a list for cbor.dumps: it halves the
# time per reading. decode_batch re-encodes every input with cbor.dumps and the tests compare,
# so the two cannot drift apart.
_SMALL_INTS = [cbor.dumps(number) for number in range(-256, 256)]
_ARRAY_HEADS = [bytes((0x80 | count,)) for count in range(24)]
_NULL = b"\xf6"
_TRUE = b"\xf5"
_FALSE = b"\xf4"
_EUI_HEAD = b"\x48"  # byte string of length 8


def _int_item(number: int) -> bytes:
    if -256 <= number < 256:
        return _SMALL_INTS[number + 256]
    return cbor.dumps(number)


def _array_head(count: int) -> bytes:
    if count < 24:
        return _ARRAY_HEADS[count]
    head = cbor.dumps(count)  # the same argument, major type 0 -> 4
    return bytes((head[0] | 0x80,)) + head[1:]


def _scaled(value: object, divisor: int) -> int | None:
    # The integer count of 1/divisor units that decodes back to exactly value, or None.
    if isinstance(value, float):
        product = value * divisor
        # NaN fails both comparisons, the infinities fail the bounds.
        if not -_SCALED_END < product < _SCALED_END:
            return None
        raw = round(product)
        if raw / divisor == value and -_SCALED_END < raw < _SCALED_END:
            return raw
        return None
    number = _int(value)
    if number is None:
        return None
    raw = number * divisor
    return raw if -_SCALED_END < raw < _SCALED_END else None


def _check_eui(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 8:
        raise SchemaError(what + " must be 8 bytes (an EUI-64), got " + _hex(value))
    return bytes(value)


def _check_range(value: object, low: int, end: int, what: str) -> int:
    number = _int(value)
    if number is None or not low <= number < end:
        raise SchemaError(
            what
            + " must be an integer "
            + str(low)
            + " .. "
            + str(end - 1)
            + ", got "
            + repr(value)
        )
    return number


def _snr_item(snr: object, where: str) -> bytes:
    # SNR as an integer count of quarter dB.
    quarters = _scaled(snr, 4)
    if quarters is None and isinstance(snr, float) and -_RADIO_END < snr * 4 < _RADIO_END:
        # Finer than a quarter dB: round to the nearest step, half to even (Python's round).
        quarters = round(snr * 4)
    if quarters is None or not -_RADIO_END < quarters < _RADIO_END:
        raise SchemaError(where + "snr_db must be None or a finite number, got " + repr(snr))
    return _int_item(quarters)


def _value_item(rows: list[tuple[int, int, int]], value: object) -> tuple[int, bytes] | None:
    # The first row that carries value exactly, and the value's CBOR; None if none does.
    for bit, kind, divisor in rows:
        if kind == BOOL:
            if value is True:
                return bit, _TRUE
            if value is False:
                return bit, _FALSE
        elif kind == INT:
            number = _int(value)
            if number is not None and -_U64_END <= number < _U64_END:
                return bit, _int_item(number)
        else:
            raw = _scaled(value, divisor)
            if raw is not None:
                return bit, _int_item(raw)
    return None


# Radio metadata carried as fields, rarely present: (bit, attribute, lowest value, range end).
_OPTIONAL_META = (
    (11, "sf", 5, 13),
    (12, "freq_hz", 0, _U32_END),
    (13, "gw_time_us", 0, _U32_END),
)


def _fields(reading: Reading, where: str) -> tuple[int, list[tuple[int, bytes]]]:
    # The field mask of reading and (bit, CBOR) of each field, in bit order.
    fields: list[tuple[int, bytes]] = []
    if reading.fcnt is not None:
        fields.append((0, _int_item(_check_range(reading.fcnt, 0, _U32_END, where + "fcnt"))))
    if reading.sf is not None or reading.freq_hz is not None or reading.gw_time_us is not None:
        for bit, name, low, end in _OPTIONAL_META:
            value = getattr(reading, name)
            if value is not None:
                fields.append((bit, _int_item(_check_range(value, low, end, where + name))))
    values = reading.values
    if not isinstance(values, dict):
        raise SchemaError(where + "values must be a dict, got " + type(values).__name__)
    extension: dict[str, object] | None = None
    for name, value in values.items():
        rows = _ROWS_BY_NAME.get(name)
        field = None if rows is None else _value_item(rows, value)
        if field is not None:
            fields.append(field)
            continue
        if not isinstance(name, str):
            raise SchemaError(where + "value names must be text, got " + repr(name))
        if extension is None:
            extension = {}
        extension[name] = value
    if extension is not None:
        fields.append((EXTENSION_BIT, _extension_item(extension, where)))
    fields.sort(key=_first)
    mask = 0
    for bit, _ in fields:
        mask |= 1 << bit
    return mask, fields


def _first(pair: tuple[int, bytes]) -> int:
    return pair[0]


def _extension_item(extension: dict[str, object], where: str) -> bytes:
    # Values no row carries travel as they are, so CBOR must be able to carry them. (The error
    # is raised outside the handler: MicroPython warns on exception chaining.)
    failed = ""
    try:
        return cbor.dumps(extension)
    except CborError as err:
        failed = err.message
    raise SchemaError(where + "a value CBOR cannot carry: " + failed)


def encode_batch(batch: Batch) -> bytes:
    """Encode ``batch`` as deterministic telemetry CBOR; SchemaError if a field is invalid."""
    if not isinstance(batch, Batch):
        raise SchemaError("encode_batch needs a Batch, got " + type(batch).__name__)
    readings = batch.readings
    if not isinstance(readings, (list, tuple)):
        raise SchemaError("readings must be a list, got " + type(readings).__name__)
    delayed = batch.delayed
    if delayed is not True and delayed is not False:
        raise SchemaError("delayed must be True or False, got " + repr(delayed))
    base_time = _check_range(batch.base_time, 0, _U64_END, "base_time")
    parts = [
        _array_head(4 + len(readings) + (1 if delayed else 0)),
        _int_item(FORMAT_VERSION),
        _EUI_HEAD,
        _check_eui(batch.gateway_id, "gateway_id"),
        _int_item(_check_range(batch.seq, 0, _U64_END, "seq")),
        _int_item(base_time),
    ]
    if delayed:
        parts.append(_TRUE)
    previous_time = base_time
    current_mask = 0
    index = 0
    for reading in readings:
        where = "reading " + str(index) + ": "
        if not isinstance(reading, Reading):
            raise SchemaError(where + "expected a Reading, got " + type(reading).__name__)
        mask, fields = _fields(reading, where)
        time_s = _check_range(reading.time_s, 0, _U64_END, where + "time_s")
        dev_eui = _check_eui(reading.dev_eui, where + "dev_eui")
        rssi = reading.rssi_dbm
        snr = reading.snr_db
        if mask != current_mask:
            # At most 20 items (mask, 4 fixed, 15 fields): the head is one byte.
            parts.append(_ARRAY_HEADS[5 + len(fields)])
            parts.append(_int_item(mask))
            current_mask = mask
        else:
            parts.append(_ARRAY_HEADS[4 + len(fields)])
        parts.append(_EUI_HEAD)
        parts.append(dev_eui)
        parts.append(_int_item(time_s - previous_time))
        if rssi is None:
            parts.append(_NULL)
        else:
            rssi = _check_range(rssi, 1 - _RADIO_END, _RADIO_END, where + "rssi_dbm")
            parts.append(_int_item(rssi))
        parts.append(_NULL if snr is None else _snr_item(snr, where))
        for _, item in fields:
            parts.append(item)
        previous_time = time_s
        index += 1
    return b"".join(parts)


# --- decoding ---------------------------------------------------------------------------------


def _show(item: object) -> str:
    # The CBOR bytes of item in hex (the input is deterministic, so they are the input's).
    raw = cbor.dumps(item)
    text = hex_text(raw[:24])
    return text + "..." if len(raw) > 24 else text


def _head_length(count: int) -> int:
    # Shortest argument (RFC 8949 section 4.2.1): 1, 2, 3, 5 or 9 bytes of head.
    if count < 24:
        return 1
    if count < 0x100:
        return 2
    if count < 0x10000:
        return 3
    return 5 if count < 0x100000000 else 9


def _fail(items: list[object], position: int, message: str) -> SchemaError:
    # Deterministic input: every element's bytes are its re-encoding, so offsets add up.
    offset = _head_length(len(items))
    for item in items[:position]:
        offset += len(cbor.dumps(item))
    return SchemaError(
        message + " (batch item " + str(position) + ": " + _show(items[position]) + ")", offset
    )


def _decode_field(kind: int, divisor: int, value: object) -> object:
    # The Python value of one field, or None when value is not of the row's wire type.
    if kind == BOOL:
        return value if value is True or value is False else None
    if kind == EXTENSION:
        if not isinstance(value, dict) or not value:
            return None
        for key in value:
            if type(key) is not str:
                return None
        return value
    number = _int(value)
    if number is None:
        return None
    if kind == INT:
        return number
    if kind == SCALED:
        return number / divisor if -_SCALED_END < number < _SCALED_END else None
    if kind == SF:
        return number if 5 <= number <= 12 else None
    return number if 0 <= number < _U32_END else None


_EXPECTED = {
    BOOL: "true or false",
    INT: "an integer",
    SCALED: "an integer below 2**31 in magnitude",
    UINT32: "an integer 0 .. 2**32-1",
    SF: "a spreading factor 5 .. 12",
    EXTENSION: "a non-empty map with text keys",
}


def _decode_reading(
    items: list[object], position: int, mask: int, previous_time: int
) -> tuple[Reading, int]:
    # Decode the reading at items[position]; return it and the field mask in force.
    row = items[position]
    if not isinstance(row, list):
        raise _fail(items, position, "a reading must be an array")
    start = 0
    new_mask = _int(row[0]) if row else None
    if new_mask is not None:
        if new_mask < 0 or new_mask & ~_KNOWN_MASK:
            raise _fail(
                items,
                position,
                "field mask " + hex(new_mask) + " has bits version 1 does not define",
            )
        if new_mask == mask:
            raise _fail(items, position, "field mask repeats the one in force")
        mask = new_mask
        start = 1
    specs = [spec for spec in _BY_BIT if spec is not None and mask >> spec[0] & 1]
    if len(row) != start + 4 + len(specs):
        raise _fail(
            items,
            position,
            "a reading is [?mask, dev_eui, dt, rssi, snr] and "
            + str(len(specs))
            + " value(s) for mask "
            + hex(mask)
            + "; got "
            + str(len(row))
            + " items",
        )
    dev_eui = row[start]
    if not isinstance(dev_eui, bytes) or len(dev_eui) != 8:
        raise _fail(items, position, "dev_eui must be an 8-byte byte string")
    dt = _int(row[start + 1])
    if dt is None:
        raise _fail(items, position, "dt must be an integer (seconds)")
    time_s = previous_time + dt
    if not 0 <= time_s < _U64_END:
        raise _fail(items, position, "time " + str(time_s) + " is outside 0 .. 2**64-1")
    rssi = None
    if row[start + 2] is not None:
        rssi = _int(row[start + 2])
        if rssi is None or not -_RADIO_END < rssi < _RADIO_END:
            raise _fail(items, position, "rssi must be null or an integer (dBm)")
    snr_db = None
    if row[start + 3] is not None:
        quarters = _int(row[start + 3])
        if quarters is None or not -_RADIO_END < quarters < _RADIO_END:
            raise _fail(items, position, "snr must be null or an integer (0.25 dB)")
        snr_db = quarters / 4
    reading = Reading(dev_eui, time_s, {}, rssi, snr_db)
    values = reading.values
    extension: dict[str, object] = {}
    cursor = start + 4
    for bit, name, kind, divisor in specs:
        decoded = _decode_field(kind, divisor, row[cursor])
        cursor += 1
        if decoded is None:
            raise _fail(
                items, position, name + " (field bit " + str(bit) + ") must be " + _EXPECTED[kind]
            )
        if isinstance(decoded, dict):
            extension = decoded
        elif kind == UINT32 or kind == SF:
            setattr(reading, name, decoded)
        elif name in values:
            raise _fail(items, position, name + " is given twice")
        else:
            values[name] = decoded
    for key, value in extension.items():
        if key in values:
            raise _fail(items, position, key + " is given twice")
        values[key] = value
    return reading, mask


def _header(items: object) -> tuple[list[object], bytes, int, int]:
    # Check the fixed head of a batch; return the items, gateway id, seq and base time.
    if not isinstance(items, list):
        raise SchemaError(
            "a telemetry batch is a CBOR array, got " + type(items).__name__ + ": " + _show(items),
            0,
        )
    if len(items) < 4:
        raise SchemaError(
            "a telemetry batch starts [version, gateway_id, seq, base_time]; got "
            + str(len(items))
            + " item(s): "
            + _show(items),
            0,
        )
    if _int(items[0]) != FORMAT_VERSION:
        raise _fail(
            items,
            0,
            "unsupported telemetry format version "
            + repr(items[0])
            + "; this decoder reads version "
            + str(FORMAT_VERSION),
        )
    gateway = items[1]
    if not isinstance(gateway, bytes) or len(gateway) != 8:
        raise _fail(items, 1, "gateway_id must be an 8-byte byte string (EUI-64)")
    seq = _int(items[2])
    if seq is None or seq < 0:
        raise _fail(items, 2, "seq must be an unsigned integer")
    base_time = _int(items[3])
    if base_time is None or base_time < 0:
        raise _fail(items, 3, "base_time must be an unsigned integer (seconds)")
    return items, gateway, seq, base_time


def decode_batch(data: bytes) -> Batch:
    """Decode a telemetry batch.

    Raises CborError for bytes that are not one deterministic CBOR item, SchemaError for CBOR
    that is not a version-1 batch in its canonical form; never anything else.
    """
    raw = bytes(data)
    decoded = cbor.loads(raw)
    again = cbor.dumps(decoded)
    if again != raw:
        at = _first_difference(raw, again)
        raise CborError(
            "not deterministic CBOR (RFC 8949 section 4.2.1): from offset "
            + str(at)
            + " the input has "
            + hex_text(raw[at : at + 8])
            + ", the deterministic form "
            + hex_text(again[at : at + 8]),
            at,
        )
    items, gateway, seq, base_time = _header(decoded)
    position = 4
    delayed = False
    if len(items) > 4 and not isinstance(items[4], list):
        if items[4] is not True:
            raise _fail(items, 4, "item 4 must be true (delayed) or the first reading")
        delayed = True
        position = 5
    batch = Batch(gateway, seq, base_time, [], delayed)
    previous_time = base_time
    mask = 0
    while position < len(items):
        reading, mask = _decode_reading(items, position, mask, previous_time)
        batch.readings.append(reading)
        previous_time = reading.time_s
        position += 1
    canonical = encode_batch(batch)
    if canonical != raw:
        # Well-formed, but not what the encoder writes for this content (a scaled value that a
        # coarser row carries, an extension entry a row could carry): rejected, so that one
        # content has one encoding and one hash.
        at = _first_difference(raw, canonical)
        raise SchemaError(
            "not the canonical encoding of its content: from offset "
            + str(at)
            + " the input has "
            + hex_text(raw[at : at + 8])
            + ", the encoder writes "
            + hex_text(canonical[at : at + 8]),
            at,
        )
    return batch


def _first_difference(left: bytes, right: bytes) -> int:
    length = min(len(left), len(right))
    for at in range(length):
        if left[at] != right[at]:
            return at
    return length


# --- description for people -------------------------------------------------------------------


def _utc(seconds: int) -> str:
    # ISO 8601 UTC of Unix seconds (no datetime module on MicroPython).
    days, rest = divmod(seconds, 86400)
    # Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (
        year,
        month,
        day,
        rest // 3600,
        rest // 60 % 60,
        rest % 60,
    )


def _jsonable(value: object) -> object:
    if value is None or value is True or value is False or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity.
        if value != value:
            return "NaN"
        if value - value != 0.0:
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, bytes):
        return hex_text(value)
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, cbor.Tag):
        return {"tag": value.tag, "value": _jsonable(value.value)}
    return repr(value)


def _describe_reading(reading: Reading) -> dict[str, object]:
    return {
        "dev_eui": reading.dev_eui.hex(),
        "time_s": reading.time_s,
        "time_utc": _utc(reading.time_s),
        "values": _jsonable(reading.values),
        "rssi_dbm": reading.rssi_dbm,
        "snr_db": reading.snr_db,
        "fcnt": reading.fcnt,
        "sf": reading.sf,
        "freq_hz": reading.freq_hz,
        "gw_time_us": reading.gw_time_us,
    }


def describe_batch(data: bytes) -> dict[str, object]:
    """A JSON-ready description of a telemetry batch: hex for bytes, values by name, UTC times."""
    raw = bytes(data)
    batch = decode_batch(raw)
    return {
        "format": "owlgate telemetry batch",
        "version": FORMAT_VERSION,
        "gateway_id": batch.gateway_id.hex(),
        "seq": batch.seq,
        "base_time": batch.base_time,
        "base_time_utc": _utc(batch.base_time),
        "delayed": batch.delayed,
        "size_bytes": len(raw),
        "reading_count": len(batch.readings),
        "readings": [_describe_reading(reading) for reading in batch.readings],
    }
