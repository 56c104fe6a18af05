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
# time per reading. The general path of decode_batch re-encodes its input with cbor.dumps, and
# the tests compare cbor.dumps with every batch the encoder writes, so the two cannot drift
# apart.
_SMALL_INTS = [cbor.dumps(number) for number in range(-256, 256)]
_ARRAY_HEADS = [bytes((0x80 | count,)) for count in range(24)]
_NULL = b"\xf6"
_TRUE = b"\xf5"
_FALSE = b"\xf4"
_EUI_HEAD = b"\x48"  # byte string of length 8


def _int_item(number: int) -> bytes:
    if -256 <= number < 256:
        return _SMALL_INTS[number + 256]
    # The shortest head (RFC 8949 section 4.2.1) written here rather than by cbor.dumps, whose
    # type dispatch costs more than the bytes: the argument is 256 or more at this point.
    if number >= 0:
        if number < 0x10000:
            return bytes((0x19, number >> 8, number & 0xFF))
        if number < 0x100000000:
            return b"\x1a" + number.to_bytes(4, "big")
    else:
        argument = -1 - number
        if argument < 0x10000:
            return bytes((0x39, argument >> 8, argument & 0xFF))
        if argument < 0x100000000:
            return b"\x3a" + argument.to_bytes(4, "big")
    # Eight-byte arguments, and the error for what does not fit 64 bits.
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
            number = value if type(value) is int else _int(value)
            if number is not None and -_U64_END <= number < _U64_END:
                return bit, _int_item(number)
        else:
            raw = _scaled(value, divisor)
            if raw is not None:
                return bit, _int_item(raw)
    return None


def _where(index: int) -> str:
    # What an encoder error about reading ``index`` starts with; built only for an error.
    return "reading " + str(index) + ": "


def _fields(reading: Reading, index: int) -> tuple[int, list[bytes]]:
    # The field mask of reading and the CBOR of each field, in bit order. A plain int in range
    # is taken as it is; anything else goes to _check_range, which raises (or takes an int
    # subclass), so what is refused, and in which order, is unchanged by the shortcut.
    small = _SMALL_INTS
    mask = 0
    items: list[bytes] = []
    fcnt = reading.fcnt
    if fcnt is not None:
        if type(fcnt) is not int or not 0 <= fcnt < _U32_END:
            fcnt = _check_range(fcnt, 0, _U32_END, _where(index) + "fcnt")
        mask = 1
        items.append(_int_item(fcnt))
    # Radio metadata, rarely present: bits 11 (sf, 5 .. 12), 12 (freq_hz) and 13 (gw_time_us,
    # both 32 bits), checked here but written after the value rows (bits 1 to 10).
    sf = reading.sf
    freq_hz = reading.freq_hz
    gw_time_us = reading.gw_time_us
    meta: list[bytes] | None = None
    meta_mask = 0
    if sf is not None or freq_hz is not None or gw_time_us is not None:
        meta = []
        if sf is not None:
            if type(sf) is not int or not 5 <= sf < 13:
                sf = _check_range(sf, 5, 13, _where(index) + "sf")
            meta_mask = 1 << 11
            meta.append(_int_item(sf))
        if freq_hz is not None:
            if type(freq_hz) is not int or not 0 <= freq_hz < _U32_END:
                freq_hz = _check_range(freq_hz, 0, _U32_END, _where(index) + "freq_hz")
            meta_mask |= 1 << 12
            meta.append(_int_item(freq_hz))
        if gw_time_us is not None:
            if type(gw_time_us) is not int or not 0 <= gw_time_us < _U32_END:
                gw_time_us = _check_range(gw_time_us, 0, _U32_END, _where(index) + "gw_time_us")
            meta_mask |= 1 << 13
            meta.append(_int_item(gw_time_us))
    values = reading.values
    if not isinstance(values, dict):
        raise SchemaError(_where(index) + "values must be a dict, got " + type(values).__name__)
    rows_by_name = _ROWS_BY_NAME
    first = len(items)
    bits: list[int] = []
    last_bit = 0
    in_order = True
    extension: dict[str, object] | None = None
    for name, value in values.items():
        rows = rows_by_name.get(name)
        item = None
        if rows is not None:
            # The first row of the name, for the common values written out (what _value_item
            # does for them); anything else goes to _value_item, which tries every row.
            bit, kind, divisor = rows[0]
            if kind == BOOL:
                if value is True:
                    item = _TRUE
                elif value is False:
                    item = _FALSE
            elif kind == INT:
                if type(value) is int and -_U64_END <= value < _U64_END:
                    item = small[value + 256] if -256 <= value < 256 else _int_item(value)
            elif type(value) is float:
                product = value * divisor
                if -_SCALED_END < product < _SCALED_END:
                    raw = round(product)
                    if raw / divisor == value and -_SCALED_END < raw < _SCALED_END:
                        item = small[raw + 256] if -256 <= raw < 256 else _int_item(raw)
            if item is None:
                field = _value_item(rows, value)
                if field is not None:
                    bit, item = field
        if item is not None:
            mask |= 1 << bit
            # Decoded readings list their values in bit order: the sort is rarely needed.
            if bit < last_bit:
                in_order = False
            last_bit = bit
            bits.append(bit)
            items.append(item)
            continue
        if not isinstance(name, str):
            raise SchemaError(_where(index) + "value names must be text, got " + repr(name))
        if extension is None:
            extension = {}
        extension[name] = value
    if not in_order:
        # (Not zip: MicroPython's takes no strict argument, which the linter asks for.)
        pairs = [(bits[at], items[first + at]) for at in range(len(bits))]
        pairs.sort()  # the bits differ, so the items are never compared
        items = items[:first] + [pair[1] for pair in pairs]
    if meta is not None:
        mask |= meta_mask
        items.extend(meta)
    if extension is not None:
        mask |= 1 << EXTENSION_BIT
        items.append(_extension_item(extension, _where(index)))
    return mask, items


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
    append = parts.append
    small = _SMALL_INTS
    previous_time = base_time
    current_mask = 0
    index = 0
    # Per reading, the checks of _check_range and _check_eui run only for a value that is not
    # a plain int in range (or 8 bytes): they raise the error, or take an int subclass.
    for reading in readings:
        if not isinstance(reading, Reading):
            raise SchemaError(_where(index) + "expected a Reading, got " + type(reading).__name__)
        mask, items = _fields(reading, index)
        time_s = reading.time_s
        if type(time_s) is not int or not 0 <= time_s < _U64_END:
            time_s = _check_range(time_s, 0, _U64_END, _where(index) + "time_s")
        dev_eui = reading.dev_eui
        if type(dev_eui) is not bytes or len(dev_eui) != 8:
            dev_eui = _check_eui(dev_eui, _where(index) + "dev_eui")
        rssi = reading.rssi_dbm
        snr = reading.snr_db
        if mask != current_mask:
            # At most 20 items (mask, 4 fixed, 15 fields): the head is one byte.
            append(_ARRAY_HEADS[5 + len(items)])
            append(_int_item(mask))
            current_mask = mask
        else:
            append(_ARRAY_HEADS[4 + len(items)])
        append(_EUI_HEAD)
        append(dev_eui)
        dt = time_s - previous_time
        append(small[dt + 256] if -256 <= dt < 256 else _int_item(dt))
        if rssi is None:
            append(_NULL)
        else:
            if type(rssi) is not int or not -_RADIO_END < rssi < _RADIO_END:
                rssi = _check_range(rssi, 1 - _RADIO_END, _RADIO_END, _where(index) + "rssi_dbm")
            append(small[rssi + 256] if -256 <= rssi < 256 else _int_item(rssi))
        if snr is None:
            append(_NULL)
        elif type(snr) is float:
            # What _snr_item computes for a float: the nearest quarter dB, half to even.
            product = snr * 4
            quarters = round(product) if -_RADIO_END < product < _RADIO_END else _RADIO_END
            if -256 <= quarters < 256:
                append(small[quarters + 256])
            elif -_RADIO_END < quarters < _RADIO_END:
                append(_int_item(quarters))
            else:
                append(_snr_item(snr, _where(index)))  # raises: not finite, or out of range
        else:
            append(_snr_item(snr, _where(index)))
        parts.extend(items)
        previous_time = time_s
        index += 1
    return b"".join(parts)


# --- decoding: the direct path ----------------------------------------------------------------

# decode_batch first reads the bytes directly, checking on the way everything that makes them
# the one encoding encode_batch writes for their content: every head in its shortest form
# (RFC 8949 section 4.2.1), a field mask only where it changes, each value in the row the
# encoder picks for it, no trailing bytes. Whatever it does not recognise, valid or not, it
# leaves to the general path (it returns None), which decodes with cbor.loads, compares with
# cbor.dumps and encode_batch, and names the problem: results and errors are the general
# path's, only faster for the batches gateways send.


def _argument(raw: bytes, at: int) -> tuple[int, int]:
    # The argument of the head at raw[at] and the offset after the head; -1 for an argument
    # not in its shortest form, an indefinite length or a reserved value.
    info = raw[at] & 0x1F
    if info < 24:
        return info, at + 1
    if info == 24:
        argument = raw[at + 1]
        return (argument if argument >= 24 else -1), at + 2
    if info == 25:
        argument = raw[at + 1] << 8 | raw[at + 2]
        return (argument if argument >= 0x100 else -1), at + 3
    if info == 26:
        argument = int.from_bytes(raw[at + 1 : at + 5], "big")
        return (argument if argument >= 0x10000 else -1), at + 5
    if info == 27:
        argument = int.from_bytes(raw[at + 1 : at + 9], "big")
        return (argument if argument >= 0x100000000 else -1), at + 9
    return -1, at + 1


def _int_at(raw: bytes, at: int) -> tuple[int | None, int]:
    # The integer (major type 0 or 1, shortest form) at raw[at] and the offset after it, or
    # None for anything else.
    initial = raw[at]
    if initial < 0x18:
        return initial, at + 1
    if initial >= 0x40:
        return None, at
    if 0x20 <= initial < 0x38:
        return 0x1F - initial, at + 1
    argument, at = _argument(raw, at)
    if argument < 0:
        return None, at
    return (argument if initial < 0x20 else -1 - argument), at


# What has to be checked of a value for it to be in the row the encoder picks for it:
_IN_ITS_ROW = 0  # nothing: the first boolean or integer row of a name, or radio metadata
_EXACT = 1  # the first, scaled, row of a name: that it carries the value exactly
_NO_EARLIER_ROW = 2  # a later row of a name: what _value_item picks (no earlier row fits)

# Per field bit: (bit, name, kind, divisor, rows of the name, what to check).
_DIRECT_BY_BIT: list[tuple[int, str, int, int, list[tuple[int, int, int]], int] | None] = [
    None
] * 16
for _row in FIELDS:
    _rows = _ROWS_BY_NAME.get(_row[1], [])
    if not _rows or (_rows[0][0] == _row[0] and _row[2] != SCALED):
        _check = _IN_ITS_ROW
    elif _rows[0][0] == _row[0]:
        _check = _EXACT
    else:
        _check = _NO_EARLIER_ROW
    _DIRECT_BY_BIT[_row[0]] = (_row[0], _row[1], _row[2], _row[3], _rows, _check)


def _extension_at(raw: bytes, at: int, values: dict[str, object]) -> int:
    # Add the extension map at raw[at] to values; the offset after it, or -1 when the map is
    # not one the encoder writes for these values. Nested as in the general path (batch,
    # reading, map: depth 2), so the nesting limit is the same.
    if raw[at] >> 5 != 5:
        return -1
    extension = None
    after = -1
    try:
        extension, after = cbor.load_prefix(raw, at, 2)
    except CborError:
        extension = None  # the general path raises it
    if not isinstance(extension, dict) or not extension or cbor.dumps(extension) != raw[at:after]:
        return -1
    for key, value in extension.items():
        if type(key) is not str or key in values:
            return -1
        # A value a row carries goes in that row, never in the extension.
        rows = _ROWS_BY_NAME.get(key)
        if rows is not None and _value_item(rows, value) is not None:
            return -1
    values.update(extension)
    return after


def _decode_direct(raw: bytes) -> Batch | None:
    # The batch in raw when raw is the canonical encoding of one, else None (see above).
    # Reading past the end raises IndexError, which decode_batch takes as a None.
    if raw[0] >> 5 != 4:
        return None
    count, at = _argument(raw, 0)
    if count < 4 or raw[at] != FORMAT_VERSION or raw[at + 1] != 0x48:
        return None
    gateway = raw[at + 2 : at + 10]
    seq, at = _int_at(raw, at + 10)
    if seq is None or seq < 0:
        return None
    base_time, at = _int_at(raw, at)
    if base_time is None or base_time < 0:
        return None
    left = count - 4
    delayed = False
    if left and raw[at] == 0xF5:
        delayed = True
        at += 1
        left -= 1
    readings: list[Reading] = []
    previous_time = base_time
    mask = 0
    specs: list[tuple[int, str, int, int, list[tuple[int, int, int]], int]] = []
    while left:
        left -= 1
        initial = raw[at]
        # A reading has at most 20 items (mask, 4 fixed, 15 fields): a one-byte array head.
        if not 0x80 <= initial < 0x98:
            return None
        length = initial - 0x80
        at += 1
        if raw[at] < 0x40:
            # An integer before the DevEUI is a new field mask.
            new_mask, at = _int_at(raw, at)
            if new_mask is None or new_mask < 0 or new_mask & ~_KNOWN_MASK or new_mask == mask:
                return None
            mask = new_mask
            specs = [spec for spec in _DIRECT_BY_BIT if spec is not None and mask >> spec[0] & 1]
            length -= 1
        if length != 4 + len(specs) or raw[at] != 0x48:
            return None
        dev_eui = raw[at + 1 : at + 9]
        at += 9
        # dt, rssi and snr, with their commonest forms read here (a time step under 24 s, an
        # RSSI of -25 to -256 dBm); the others through _int_at.
        initial = raw[at]
        if initial < 0x18:
            dt = initial
            at += 1
        else:
            wide, at = _int_at(raw, at)
            if wide is None:
                return None
            dt = wide
        time_s = previous_time + dt
        if not 0 <= time_s < _U64_END:
            return None
        initial = raw[at]
        rssi = None
        if initial == 0xF6:
            at += 1
        elif initial == 0x38 and raw[at + 1] >= 24:
            rssi = -1 - raw[at + 1]
            at += 2
        else:
            rssi, at = _int_at(raw, at)
            if rssi is None or not -_RADIO_END < rssi < _RADIO_END:
                return None
        snr_db = None
        if raw[at] == 0xF6:
            at += 1
        else:
            quarters, at = _int_at(raw, at)
            if quarters is None or not -_RADIO_END < quarters < _RADIO_END:
                return None
            snr_db = quarters / 4
        reading = Reading(dev_eui, time_s, {}, rssi, snr_db)
        values = reading.values
        for bit, name, kind, divisor, rows, check in specs:
            start = at
            value: object = None
            if kind == BOOL:
                initial = raw[at]
                if initial == 0xF5:
                    value = True
                elif initial == 0xF4:
                    value = False
                else:
                    return None
                at += 1
            elif kind == EXTENSION:
                at = _extension_at(raw, at, values)
                if at < 0:
                    return None
                continue
            else:
                number, at = _int_at(raw, at)
                if number is None:
                    return None
                if kind == INT:
                    value = number
                elif kind == SCALED:
                    if not -_SCALED_END < number < _SCALED_END:
                        return None
                    value = number / divisor
                    if check == _EXACT:
                        # What _scaled(value, divisor) computes must give number back (it
                        # does with doubles; a port with single floats checks its own).
                        product = number / divisor * divisor
                        if not -_SCALED_END < product < _SCALED_END:
                            return None
                        exact = round(product)
                        if exact != number or exact / divisor != value:
                            return None
                else:
                    if not (5 <= number <= 12 if kind == SF else 0 <= number < _U32_END):
                        return None
                    setattr(reading, name, number)
                    continue
            if name in values:
                return None
            if check == _NO_EARLIER_ROW and _value_item(rows, value) != (bit, raw[start:at]):
                return None
            values[name] = value
        readings.append(reading)
        previous_time = time_s
    if at != len(raw):
        return None
    return Batch(gateway, seq, base_time, readings, delayed)


# --- decoding: the general path ---------------------------------------------------------------


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
    batch = None
    try:
        batch = _decode_direct(raw)
    except IndexError:
        batch = None  # truncated: the general path says where
    if batch is not None:
        return batch
    return _decode_general(raw)


def _decode_general(raw: bytes) -> Batch:
    # Any CBOR: decoded, then compared with its deterministic and its canonical encoding.
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
