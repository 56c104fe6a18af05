"""Device payloads: what the sensors in the street send, and the settings the fleet sends them.

Three device profiles, each a few bytes of fixed-point integers, **big-endian**, signed values
in two's complement. The first byte of every message, uplink or downlink, is a header::

    bit  7 6 5 4   3 2 1 0
         version   message type      version 1: 0x1_

    type 1  measurement    uplink, on the profile's own FPort (10, 11, 12)
    type 2  status         uplink, FPort 20 (device messages, every profile)
    type 3  boot           uplink, FPort 20
    type 4  settings ack   uplink, FPort 20
    type 8  settings       downlink, FPort 21

A decoder refuses any other version, so a later layout can change anything after the header.

Measurements (``parking-v1`` on FPort 10, ``waste-bin-v1`` on 11, ``environment-v1`` on 12)::

    parking-v1      11 | flags | battery_mv u16 | temperature_c s16 (0.1 C)          6 bytes
    waste-bin-v1    11 | flags | fill_pct u8 | distance_mm u16 | temperature_c s16 (0.1 C)
                       | battery_mv u16                                               9 bytes
    environment-v1  11 | temperature_c s16 (0.01 C) | humidity_pct u16 (0.1 %RH)
                       | co2_ppm u16 | battery_mv u16                                 9 bytes

    flags: bit 0 occupied (parking) or tilt_alarm (waste bin); bits 1-7 reserved, zero.

Device messages (FPort 20, every profile)::

    status          12 | battery_mv u16 | uptime_s u32 | report_interval_s u24      10 bytes
    boot            13 | firmware major u8, minor u8, patch u8 | reset_reason u8
                       | battery_mv u16                                              7 bytes
    settings ack    14 | settings_seq u8 | result u8 | setting tag u8                4 bytes

Every numeric uplink field has a "not measured" code, all ones (``ffff``) for an unsigned
field and the lowest value (``8000``) for a signed one: the encoder writes it for a value left
out of the dict, and the decoder leaves the name out (a bin sensor whose ultrasonic echo was
lost still reports its battery). Booleans are always present.

Settings downlink (FPort 21)::

    18 | seq u8 | tag u8, value | tag u8, value | ...      tags ascending, each at most once

The value's size follows from the tag (:data:`SETTINGS_TABLE`); commands (``request_status``,
``reboot``) have no value. With every tag once the message is 27 bytes, inside
:data:`MAX_PAYLOAD_SF12`, and the encoder refuses anything longer all the same.

Values use the names and units of the telemetry table (``codecs/node/telemetry.py``), so a
decoded measurement packs compactly into a batch. Scaled values round trip exactly: the encoder
takes a float only when it is a whole number of steps (``21.5`` at 0.1 °C, not ``21.53``),
the decoder divides (``215 / 10``); :func:`quantise` rounds a raw reading to the steps first.
Anything malformed raises :class:`PayloadError` naming the field, what was expected, the
payload in hex and the offset. This module runs unchanged on MicroPython; the full byte tables
are in ``docs/formats/device-payloads.md``.
"""

from ..errors import PayloadError
from .hextext import hex_text

#: The layout version in the high nibble of every header byte.
LAYOUT_VERSION = 1

#: The largest application payload (FRMPayload, FOpts empty) of EU868 at DR0 (SF12, 125 kHz):
#: N = 51 in the "EU863-870 maximum payload size" table of the LoRaWAN Regional Parameters
#: (RP002-1.0.x). A downlink must fit whatever data rate the network server chooses for it.
MAX_PAYLOAD_SF12 = 51

# Application FPorts are 1..223 (LoRaWAN 1.0.3 section 4.3.2); these are owlgate's choices.
PORT_PARKING = 10
PORT_WASTE_BIN = 11
PORT_ENVIRONMENT = 12
#: Device messages of every profile: status, boot, settings ack.
PORT_DEVICE = 20
#: Settings downlinks, fleet to node.
PORT_SETTINGS = 21

# Message types, the low nibble of the header. Plain numbers: MicroPython has no enum module.
MEASUREMENT = 1
STATUS = 2
BOOT = 3
SETTINGS_ACK = 4
SETTINGS = 8
MESSAGE_NAMES = {
    MEASUREMENT: "measurement",
    STATUS: "status",
    BOOT: "boot",
    SETTINGS_ACK: "settings_ack",
    SETTINGS: "settings",
}

# A numeric field: (name, size in bytes, signed, divisor, lowest raw, highest raw, unit). The
# value is raw / divisor (an int when the divisor is 1); the range is in raw units so that it is
# exact, and every range leaves out the "not measured" code of its size.
_BATTERY = ("battery_mv", 2, False, 1, 0, 12000, "mV")
_TEMPERATURE_TENTHS = ("temperature_c", 2, True, 10, -400, 1250, "°C")
_TEMPERATURE_HUNDREDTHS = ("temperature_c", 2, True, 100, -4000, 12500, "°C")
_REPORT_INTERVAL = ("report_interval_s", 3, False, 1, 60, 604800, "s")

PARKING_FIELDS = (_BATTERY, _TEMPERATURE_TENTHS)
WASTE_BIN_FIELDS = (
    ("fill_pct", 1, False, 1, 0, 100, "%"),
    ("distance_mm", 2, False, 1, 0, 10000, "mm"),
    _TEMPERATURE_TENTHS,
    _BATTERY,
)
ENVIRONMENT_FIELDS = (
    _TEMPERATURE_HUNDREDTHS,
    ("humidity_pct", 2, False, 10, 0, 1000, "%RH"),
    ("co2_ppm", 2, False, 1, 0, 40000, "ppm"),
    _BATTERY,
)
STATUS_FIELDS = (_BATTERY, ("uptime_s", 4, False, 1, 0, 0xFFFFFFFE, "s"), _REPORT_INTERVAL)
BOOT_FIELDS = (_BATTERY,)

# Settings downlink items: (tag, name, size, signed, divisor, lowest raw, highest raw, unit).
# Size 0 is a command: no value on the wire, True in the dict. Ascending tags; a node answers
# a tag it does not have with a settings ack "unsupported". A threshold of 0 turns its alarm off
# where 0 is not a meaningful threshold (fill, humidity, CO2).
SETTINGS_TABLE = (
    (0x01, "report_interval_s", 3, False, 1, 60, 604800, "s"),
    (0x02, "occupancy_sensitivity", 1, False, 1, 1, 10, "level"),
    (0x03, "bin_depth_mm", 2, False, 1, 100, 5000, "mm"),
    (0x04, "fill_alarm_pct", 1, False, 1, 0, 100, "%"),
    (0x05, "temperature_alarm_low_c", 2, True, 10, -400, 1250, "°C"),
    (0x06, "temperature_alarm_high_c", 2, True, 10, -400, 1250, "°C"),
    (0x07, "humidity_alarm_pct", 2, False, 10, 0, 1000, "%RH"),
    (0x08, "co2_alarm_ppm", 2, False, 1, 0, 40000, "ppm"),
    (0x70, "request_status", 0, False, 1, 1, 1, ""),
    (0x71, "reboot", 0, False, 1, 1, 1, ""),
)

# The boot message's reset reasons and the settings ack's results, by code.
RESET_REASONS = ("power_on", "watchdog", "command", "brown_out", "firmware_update", "other")
ACK_RESULTS = ("applied", "unsupported", "invalid")

#: The device profiles: id -> (name, measurement FPort, flag names by bit, numeric fields,
#: setting names). Plain tuples so that a node can read the table as it is.
PROFILES: dict[
    str,
    tuple[
        str,
        int,
        tuple[str, ...],
        tuple[tuple[str, int, bool, int, int, int, str], ...],
        tuple[str, ...],
    ],
] = {
    "parking-v1": (
        "parking occupancy sensor",
        PORT_PARKING,
        ("occupied",),
        PARKING_FIELDS,
        ("report_interval_s", "occupancy_sensitivity", "request_status", "reboot"),
    ),
    "waste-bin-v1": (
        "waste-bin fill-level sensor",
        PORT_WASTE_BIN,
        ("tilt_alarm",),
        WASTE_BIN_FIELDS,
        (
            "report_interval_s",
            "bin_depth_mm",
            "fill_alarm_pct",
            "temperature_alarm_high_c",
            "request_status",
            "reboot",
        ),
    ),
    "environment-v1": (
        "environment sensor",
        PORT_ENVIRONMENT,
        (),
        ENVIRONMENT_FIELDS,
        (
            "report_interval_s",
            "temperature_alarm_low_c",
            "temperature_alarm_high_c",
            "humidity_alarm_pct",
            "co2_alarm_ppm",
            "request_status",
            "reboot",
        ),
    ),
}

_SETTING_BY_TAG: dict[int, tuple[int, str, int, bool, int, int, int, str]] = {}
_SETTING_BY_NAME: dict[str, tuple[int, str, int, bool, int, int, int, str]] = {}
for _setting in SETTINGS_TABLE:
    _SETTING_BY_TAG[_setting[0]] = _setting
    _SETTING_BY_NAME[_setting[1]] = _setting
_SETTING_NAMES = tuple(entry[1] for entry in SETTINGS_TABLE)


# --- helpers ----------------------------------------------------------------------------------


def _hex(data: bytes) -> str:
    return hex_text(data, 64)


def _fail(what: str, problem: str, data: bytes, offset: int | None) -> PayloadError:
    where = "" if offset is None else " at offset " + str(offset)
    shown = " (payload " + _hex(data) + ")" if data else ""
    return PayloadError(what + ": " + problem + where + shown, offset)


def _outside(
    what: str, name: str, raw: int, field: tuple[int, int, int, str], data: bytes, at: int
) -> PayloadError:
    # A raw value a decoder read that is outside its field's range: field is
    # (divisor, lowest raw, highest raw, unit).
    divisor, low, high, unit = field
    return _fail(
        what,
        name
        + " "
        + _value_text(raw, divisor, unit)
        + " is outside "
        + _range_text(divisor, low, high, unit, False),
        data,
        at,
    )


def _bytes(payload: object, what: str) -> bytes:
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    raise PayloadError(what + ": a payload must be bytes, got " + type(payload).__name__)


def _decimal(raw: int, divisor: int) -> str:
    # raw / divisor written with integer arithmetic, so both interpreters print the same text.
    if divisor == 1:
        return str(raw)
    digits = len(str(divisor)) - 1
    whole = abs(raw) // divisor
    fraction = str(abs(raw) % divisor)
    return ("-" if raw < 0 else "") + str(whole) + "." + "0" * (digits - len(fraction)) + fraction


def _range_text(divisor: int, low: int, high: int, unit: str, steps: bool = True) -> str:
    text = _decimal(low, divisor) + " .. " + _decimal(high, divisor)
    if unit:
        text += " " + unit
    if steps and divisor != 1:
        text += " in steps of " + _decimal(1, divisor)
    return text


def _value_text(raw: int, divisor: int, unit: str) -> str:
    return _decimal(raw, divisor) + (" " + unit if unit else "")


def _absent(size: int, signed: bool) -> int:
    # The "not measured" code: the lowest value of a signed field, all ones otherwise.
    return -(1 << (8 * size - 1)) if signed else (1 << (8 * size)) - 1


def _put(out: bytearray, raw: int, size: int) -> None:
    if raw < 0:
        raw += 1 << (8 * size)
    out.extend(raw.to_bytes(size, "big"))


def _get(data: bytes, at: int, size: int, signed: bool) -> int:
    # MicroPython's int.from_bytes has no signed argument: two's complement by hand.
    raw = int.from_bytes(data[at : at + size], "big")
    if signed and raw >= 1 << (8 * size - 1):
        raw -= 1 << (8 * size)
    return raw


def _raw(what: str, name: str, divisor: int, low: int, high: int, unit: str, value: object) -> int:
    # The integer on the wire for value, which must be a whole number of steps inside the range.
    raw = None
    # bool is an int on CPython and not on MicroPython: refused on both.
    if isinstance(value, int) and value is not True and value is not False:
        raw = value * divisor
    elif isinstance(value, float) and divisor != 1:
        product = value * divisor
        # NaN fails both comparisons, the infinities the bounds (round would raise on both).
        if -(1 << 31) < product < 1 << 31:
            raw = round(product)
            if raw / divisor != value:
                raise PayloadError(
                    what
                    + ": "
                    + name
                    + " must be a whole number of "
                    + _decimal(1, divisor)
                    + " "
                    + unit
                    + " steps, got "
                    + repr(value)
                    + " (quantise() rounds it)"
                )
    if raw is None or not low <= raw <= high:
        kind = "an integer" if divisor == 1 else "a number"
        raise PayloadError(
            what
            + ": "
            + name
            + " must be "
            + kind
            + " "
            + _range_text(divisor, low, high, unit)
            + ", got "
            + repr(value)
        )
    return raw


def _check_names(what: str, values: object, allowed: tuple[str, ...]) -> dict[str, object]:
    if not isinstance(values, dict):
        raise PayloadError(what + ": values must be a dict, got " + type(values).__name__)
    unknown = _unknown(values, allowed)
    if unknown:
        raise PayloadError(what + ": unknown value " + unknown + "; it takes " + ", ".join(allowed))
    return values


def _unknown(names: dict[str, object], allowed: tuple[str, ...]) -> str:
    # Every name not allowed, sorted: dict order differs between CPython and MicroPython, and
    # the message must not.
    return ", ".join(sorted([repr(name) for name in names if name not in allowed]))


def _message_type(data: bytes, what: str) -> int:
    # The message type of the header byte, after checking the version (first, so that a later
    # layout is named as such rather than as a wrong length or type).
    if not data:
        raise _fail(what, "empty payload, expected a header byte", data, 0)
    if data[0] >> 4 != LAYOUT_VERSION:
        raise _fail(
            what,
            "layout version %d (header 0x%02x) is not supported; this decoder reads version %d"
            % (data[0] >> 4, data[0], LAYOUT_VERSION),
            data,
            0,
        )
    return data[0] & 0x0F


_MEASUREMENT_HEADER = LAYOUT_VERSION << 4 | MEASUREMENT


def _wrong_type(data: bytes, what: str, carries: str) -> PayloadError:
    kind = data[0] & 0x0F
    return _fail(
        what,
        "header 0x%02x is message type %d (%s); %s"
        % (data[0], kind, MESSAGE_NAMES.get(kind, "undefined"), carries),
        data,
        0,
    )


def _check_length(data: bytes, what: str, size: int, layout: str) -> None:
    if len(data) != size:
        raise _fail(
            what,
            "expected " + str(size) + " bytes (" + layout + "), got " + str(len(data)),
            data,
            min(len(data), size),
        )


def _layout_text(
    flags: tuple[str, ...], fields: tuple[tuple[str, int, bool, int, int, int, str], ...]
) -> str:
    parts = ["header"]
    if flags:
        parts.append("flags")
    parts.extend(field[0] for field in fields)
    return ", ".join(parts)


def _size(
    flags: tuple[str, ...], fields: tuple[tuple[str, int, bool, int, int, int, str], ...]
) -> int:
    size = 2 if flags else 1
    for field in fields:
        size += field[1]
    return size


# --- fixed layouts: measurements and device messages ------------------------------------------


def _encode_flags(what: str, flags: tuple[str, ...], values: dict[str, object]) -> int:
    byte = 0
    bit = 0
    for name in flags:
        value = values.get(name)
        if value is True:
            byte |= 1 << bit
        elif value is not False:
            raise PayloadError(what + ": " + name + " must be True or False, got " + repr(value))
        bit += 1
    return byte


def _encode_fields(
    out: bytearray,
    what: str,
    fields: tuple[tuple[str, int, bool, int, int, int, str], ...],
    values: dict[str, object],
) -> None:
    for name, size, signed, divisor, low, high, unit in fields:
        if name in values:
            raw = _raw(what, name, divisor, low, high, unit, values[name])
        else:
            raw = _absent(size, signed)
        _put(out, raw, size)


def _decode_flags(
    what: str, data: bytes, flags: tuple[str, ...], values: dict[str, object]
) -> None:
    byte = data[1]
    reserved = byte & (0xFF ^ ((1 << len(flags)) - 1))
    if reserved:
        raise _fail(
            what,
            "flags 0x%02x have reserved bits 0x%02x set (defined: %s)"
            % (byte, reserved, ", ".join(flags)),
            data,
            1,
        )
    bit = 0
    for name in flags:
        values[name] = byte >> bit & 1 == 1
        bit += 1


def _decode_fields(
    what: str,
    data: bytes,
    at: int,
    fields: tuple[tuple[str, int, bool, int, int, int, str], ...],
    values: dict[str, object],
) -> dict[str, object]:
    # The length is checked: read the fields from offset at into values. (What _get and
    # _absent compute, written out: this runs for every uplink a gateway hears.)
    for name, size, signed, divisor, low, high, unit in fields:
        raw = int.from_bytes(data[at : at + size], "big")
        if signed:
            half = 1 << (8 * size - 1)
            if raw >= half:
                raw -= half << 1
            absent = -half
        else:
            absent = (1 << (8 * size)) - 1
        if raw != absent:
            if not low <= raw <= high:
                raise _outside(what, name, raw, (divisor, low, high, unit), data, at)
            values[name] = raw if divisor == 1 else raw / divisor
        at += size
    return values


def _profile(
    profile_id: object,
) -> tuple[
    str,
    int,
    tuple[str, ...],
    tuple[tuple[str, int, bool, int, int, int, str], ...],
    tuple[str, ...],
]:
    spec = PROFILES.get(profile_id) if isinstance(profile_id, str) else None
    if spec is None:
        raise PayloadError(
            "unknown device profile " + repr(profile_id) + "; known: " + ", ".join(sorted(PROFILES))
        )
    return spec


def encode_measurement(profile_id: str, values: dict[str, object]) -> bytes:
    """The measurement uplink of ``profile_id`` for ``values``; PayloadError naming a bad value.

    Booleans are required; a numeric value left out is sent as "not measured".
    """
    _, _, flags, fields, _ = _profile(profile_id)
    what = profile_id + " measurement"
    allowed = flags + tuple(field[0] for field in fields)
    _check_names(what, values, allowed)
    out = bytearray((LAYOUT_VERSION << 4 | MEASUREMENT,))
    if flags:
        out.append(_encode_flags(what, flags, values))
    _encode_fields(out, what, fields, values)
    return bytes(out)


def decode_measurement(profile_id: str, payload: bytes | bytearray) -> dict[str, object]:
    """The values of a measurement uplink of ``profile_id``; PayloadError if it is malformed."""
    return _decode_measurement(profile_id, _profile(profile_id), payload)


def _decode_measurement(
    profile_id: str,
    spec: tuple[
        str,
        int,
        tuple[str, ...],
        tuple[tuple[str, int, bool, int, int, int, str], ...],
        tuple[str, ...],
    ],
    payload: bytes | bytearray,
) -> dict[str, object]:
    _, port, flags, fields, _ = spec
    what = profile_id + " measurement"
    data = _bytes(payload, what)
    # A version 1 measurement header passes both checks of the header; anything else gets
    # them in order, for the error.
    if not data or data[0] != _MEASUREMENT_HEADER:
        if _message_type(data, what) != MEASUREMENT:
            raise _wrong_type(data, what, "FPort %d carries measurements (type 1)" % port)
    size = _size(flags, fields)
    if len(data) != size:
        # The layout text is only needed for the error.
        _check_length(data, what, size, _layout_text(flags, fields))
    values: dict[str, object] = {}
    if flags:
        _decode_flags(what, data, flags, values)
    return _decode_fields(what, data, 2 if flags else 1, fields, values)


def encode_parking(values: dict[str, object]) -> bytes:
    """A ``parking-v1`` measurement: ``occupied``, ``battery_mv``, ``temperature_c`` (0.1 °C)."""
    return encode_measurement("parking-v1", values)


def decode_parking(payload: bytes | bytearray) -> dict[str, object]:
    """The values of a ``parking-v1`` measurement (FPort 10)."""
    return decode_measurement("parking-v1", payload)


def encode_waste_bin(values: dict[str, object]) -> bytes:
    """A ``waste-bin-v1`` measurement.

    ``tilt_alarm``, ``fill_pct``, ``distance_mm``, ``temperature_c`` (0.1 °C), ``battery_mv``.
    """
    return encode_measurement("waste-bin-v1", values)


def decode_waste_bin(payload: bytes | bytearray) -> dict[str, object]:
    """The values of a ``waste-bin-v1`` measurement (FPort 11)."""
    return decode_measurement("waste-bin-v1", payload)


def encode_environment(values: dict[str, object]) -> bytes:
    """An ``environment-v1`` measurement.

    ``temperature_c`` (0.01 °C), ``humidity_pct`` (0.1 %RH), ``co2_ppm``, ``battery_mv``.
    """
    return encode_measurement("environment-v1", values)


def decode_environment(payload: bytes | bytearray) -> dict[str, object]:
    """The values of an ``environment-v1`` measurement (FPort 12)."""
    return decode_measurement("environment-v1", payload)


# --- device messages: status, boot, settings ack ------------------------------------------------

_DEVICE = "device message"
_DEVICE_CARRIES = "FPort 20 carries status (2), boot (3) and settings_ack (4)"
_STATUS_NAMES = ("message", "battery_mv", "uptime_s", "report_interval_s")
_BOOT_NAMES = ("message", "firmware", "reset_reason", "battery_mv")
_ACK_NAMES = ("message", "settings_seq", "result", "setting")
_BOOT_LAYOUT = "header, firmware major, minor, patch, reset_reason, battery_mv"
_ACK_LAYOUT = "header, settings_seq, result, setting tag"


def _code(what: str, name: str, value: object, table: tuple[str, ...]) -> int:
    if isinstance(value, str):
        for code in range(len(table)):
            if table[code] == value:
                return code
    raise PayloadError(
        what + ": " + name + " must be one of " + ", ".join(table) + ", got " + repr(value)
    )


def _all_digits(text: str) -> bool:
    # ASCII digits only: str.isdigit also takes superscripts, which int() refuses.
    for char in text:
        if char not in "0123456789":
            return False
    return True


def _firmware(what: str, value: object) -> bytes:
    # "major.minor.patch", each 0..255 without leading zeros: the text it decodes to.
    if isinstance(value, str):
        # Each part 1-3 digits, no leading zero.
        numbers = [
            int(part)
            for part in value.split(".")
            if 0 < len(part) <= 3 and _all_digits(part) and (part == "0" or part[0] != "0")
        ]
        if len(numbers) == 3 and value.count(".") == 2 and max(numbers) <= 255:
            return bytes(numbers)
    raise PayloadError(
        what + ": firmware must be text 'major.minor.patch', each 0 .. 255, got " + repr(value)
    )


def encode_device_message(values: dict[str, object]) -> bytes:
    """A device message (FPort 20) of any profile; ``values["message"]`` says which.

    - ``status``: ``battery_mv``, ``uptime_s``, ``report_interval_s``, each optional;
    - ``boot``: ``firmware`` ("1.4.2"), ``reset_reason`` (:data:`RESET_REASONS`), optional
      ``battery_mv``;
    - ``settings_ack``: ``settings_seq`` (0..255), ``result`` (:data:`ACK_RESULTS`), and for a
      refused downlink optionally ``setting``, the name of the setting refused.
    """
    if not isinstance(values, dict):
        raise PayloadError(_DEVICE + ": values must be a dict, got " + type(values).__name__)
    message = values.get("message")
    if message == "status":
        what = "status message"
        _check_names(what, values, _STATUS_NAMES)
        out = bytearray((LAYOUT_VERSION << 4 | STATUS,))
        _encode_fields(out, what, STATUS_FIELDS, values)
        return bytes(out)
    if message == "boot":
        what = "boot message"
        _check_names(what, values, _BOOT_NAMES)
        out = bytearray((LAYOUT_VERSION << 4 | BOOT,))
        out.extend(_firmware(what, values.get("firmware")))
        out.append(_code(what, "reset_reason", values.get("reset_reason"), RESET_REASONS))
        _encode_fields(out, what, BOOT_FIELDS, values)
        return bytes(out)
    if message == "settings_ack":
        what = "settings ack"
        _check_names(what, values, _ACK_NAMES)
        seq = _raw(what, "settings_seq", 1, 0, 255, "", values.get("settings_seq"))
        result = _code(what, "result", values.get("result"), ACK_RESULTS)
        tag = 0
        if "setting" in values:
            setting = values["setting"]
            spec = _SETTING_BY_NAME.get(setting) if isinstance(setting, str) else None
            if spec is None:
                raise PayloadError(
                    what
                    + ": setting must be one of "
                    + ", ".join(_SETTING_NAMES)
                    + ", got "
                    + repr(setting)
                )
            if result == 0:
                raise PayloadError(what + ": an 'applied' ack names no refused setting")
            tag = spec[0]
        return bytes((LAYOUT_VERSION << 4 | SETTINGS_ACK, seq, result, tag))
    raise PayloadError(
        _DEVICE
        + ": message must be 'status', 'boot' or 'settings_ack' (leave it out for a measurement)"
        + ", got "
        + repr(message)
    )


def decode_device_message(payload: bytes | bytearray) -> dict[str, object]:
    """A device message (FPort 20): a dict with ``message`` and the message's values."""
    data = _bytes(payload, _DEVICE)
    kind = _message_type(data, _DEVICE)
    values: dict[str, object] = {"message": MESSAGE_NAMES.get(kind)}
    if kind == STATUS:
        what = "status message"
        size = _size((), STATUS_FIELDS)
        if len(data) != size:
            _check_length(data, what, size, _layout_text((), STATUS_FIELDS))
        return _decode_fields(what, data, 1, STATUS_FIELDS, values)
    if kind == BOOT:
        what = "boot message"
        _check_length(data, what, 7, _BOOT_LAYOUT)
        if data[4] >= len(RESET_REASONS):
            raise _fail(what, "reset_reason " + str(data[4]) + " is undefined", data, 4)
        values["firmware"] = "%d.%d.%d" % (data[1], data[2], data[3])
        values["reset_reason"] = RESET_REASONS[data[4]]
        return _decode_fields(what, data, 5, BOOT_FIELDS, values)
    if kind == SETTINGS_ACK:
        what = "settings ack"
        _check_length(data, what, 4, _ACK_LAYOUT)
        if data[2] >= len(ACK_RESULTS):
            raise _fail(what, "result " + str(data[2]) + " is undefined", data, 2)
        values["settings_seq"] = data[1]
        values["result"] = ACK_RESULTS[data[2]]
        if data[3]:
            spec = _SETTING_BY_TAG.get(data[3])
            if spec is None:
                raise _fail(what, "setting tag 0x%02x is undefined" % data[3], data, 3)
            if data[2] == 0:
                raise _fail(what, "an 'applied' ack names a refused setting", data, 3)
            values["setting"] = spec[1]
        return values
    raise _wrong_type(data, _DEVICE, _DEVICE_CARRIES)


# --- uplinks by profile -------------------------------------------------------------------------


def encode_uplink(profile_id: str, values: dict[str, object]) -> tuple[int, bytes]:
    """``(FPort, payload)`` of an uplink: a device message when ``values`` has ``message``,
    else a measurement of ``profile_id``."""
    _, port, _, _, _ = _profile(profile_id)
    if isinstance(values, dict) and "message" in values:
        return PORT_DEVICE, encode_device_message(values)
    return port, encode_measurement(profile_id, values)


def decode_uplink(profile_id: str, f_port: int, payload: bytes | bytearray) -> dict[str, object]:
    """The values of an uplink of ``profile_id`` received on ``f_port``."""
    spec = _profile(profile_id)
    port = spec[1]
    if f_port == port and f_port is not True:
        return _decode_measurement(profile_id, spec, payload)
    if f_port == PORT_DEVICE and f_port is not True:
        return decode_device_message(payload)
    raise PayloadError(
        profile_id
        + " uplinks use FPort "
        + str(port)
        + " (measurements) and "
        + str(PORT_DEVICE)
        + " (device messages), got FPort "
        + repr(f_port)
    )


def quantise(profile_id: str, values: dict[str, object]) -> dict[str, object]:
    """A copy of ``values`` with each float rounded to its field's step (half to even).

    For emulators and nodes that measure finer than the payload carries: 21.53 becomes 21.5
    for a 0.1 °C field, 3601.7 mV becomes 3602. Anything else is left for the encoder to judge.
    """
    _, _, _, fields, _ = _profile(profile_id)
    if not isinstance(values, dict):
        raise PayloadError("quantise: values must be a dict, got " + type(values).__name__)
    result = dict(values)
    for name, _, _, divisor, _, _, _ in fields:
        value = result.get(name)
        if isinstance(value, float) and -(1 << 31) < value * divisor < 1 << 31:
            raw = round(value * divisor)
            result[name] = raw if divisor == 1 else raw / divisor
    return result


# --- settings downlinks -------------------------------------------------------------------------

_SETTINGS = "settings downlink"


def _check_thresholds(raws: dict[str, int], data: bytes | None) -> None:
    # A low alarm above the high one could never be quiet: refused when both travel together.
    low = raws.get("temperature_alarm_low_c")
    high = raws.get("temperature_alarm_high_c")
    if low is not None and high is not None and low > high:
        problem = (
            "temperature_alarm_low_c "
            + _decimal(low, 10)
            + " is above temperature_alarm_high_c "
            + _decimal(high, 10)
        )
        if data is None:
            raise PayloadError(_SETTINGS + ": " + problem)
        raise _fail(_SETTINGS, problem, data, None)


def _unsupported(profile_id: str | None, names: list[str]) -> str | None:
    # The first of names (in tag order) that profile_id has no setting for, with the message.
    if profile_id is None:
        return None
    supported = _profile(profile_id)[4]
    for name in names:
        if name not in supported:
            return name
    return None


def _unsupported_text(profile_id: str, name: str) -> str:
    return (
        profile_id + " has no setting " + name + "; it takes " + ", ".join(_profile(profile_id)[4])
    )


def encode_settings(seq: int, settings: dict[str, object], profile_id: str | None = None) -> bytes:
    """A settings downlink (FPort 21) with sequence number ``seq`` (0..255, echoed in the ack).

    ``settings`` maps names of :data:`SETTINGS_TABLE` to values, commands to True. With
    ``profile_id``, settings that profile does not have are refused.
    """
    seq = _raw(_SETTINGS, "seq", 1, 0, 255, "", seq)
    if not isinstance(settings, dict):
        raise PayloadError(_SETTINGS + ": settings must be a dict, got " + type(settings).__name__)
    if not settings:
        raise PayloadError(_SETTINGS + ": give at least one setting or command")
    unknown = _unknown(settings, _SETTING_NAMES)
    if unknown:
        raise PayloadError(
            _SETTINGS + ": unknown setting " + unknown + "; known: " + ", ".join(_SETTING_NAMES)
        )
    names = [entry[1] for entry in SETTINGS_TABLE if entry[1] in settings]
    missing = _unsupported(profile_id, names)
    if profile_id is not None and missing is not None:
        raise PayloadError(_SETTINGS + ": " + _unsupported_text(profile_id, missing))
    out = bytearray((LAYOUT_VERSION << 4 | SETTINGS, seq))
    raws: dict[str, int] = {}
    for tag, name, size, _, divisor, low, high, unit in SETTINGS_TABLE:
        if name not in settings:
            continue
        value = settings[name]
        out.append(tag)
        if size == 0:
            if value is not True:
                raise PayloadError(
                    _SETTINGS
                    + ": "
                    + name
                    + " is a command: True, or leave it out; got "
                    + repr(value)
                )
        else:
            raws[name] = _raw(_SETTINGS, name, divisor, low, high, unit, value)
            _put(out, raws[name], size)
    _check_thresholds(raws, None)
    if len(out) > MAX_PAYLOAD_SF12:
        raise PayloadError(
            _SETTINGS
            + ": "
            + str(len(out))
            + " bytes, more than the "
            + str(MAX_PAYLOAD_SF12)
            + " of one downlink at SF12"
        )
    return bytes(out)


def decode_settings(
    payload: bytes | bytearray, profile_id: str | None = None
) -> tuple[int, dict[str, object]]:
    """``(seq, settings)`` of a settings downlink; PayloadError if it is malformed.

    With ``profile_id``, a setting that profile does not have is refused too.
    """
    data = _bytes(payload, _SETTINGS)
    if _message_type(data, _SETTINGS) != SETTINGS:
        raise _wrong_type(data, _SETTINGS, "FPort 21 carries settings (type 8)")
    if len(data) > MAX_PAYLOAD_SF12:
        raise _fail(
            _SETTINGS,
            "longer than one downlink at SF12 (" + str(MAX_PAYLOAD_SF12) + " bytes)",
            data,
            MAX_PAYLOAD_SF12,
        )
    if len(data) < 3:
        raise _fail(_SETTINGS, "expected header, seq and at least one setting", data, len(data))
    settings: dict[str, object] = {}
    raws: dict[str, int] = {}
    offsets: dict[str, int] = {}
    names: list[str] = []
    at = 2
    previous = 0
    while at < len(data):
        tag = data[at]
        spec = _SETTING_BY_TAG.get(tag)
        if spec is None:
            raise _fail(_SETTINGS, "setting tag 0x%02x is undefined" % tag, data, at)
        if tag <= previous:
            raise _fail(
                _SETTINGS,
                "tag 0x%02x after 0x%02x: tags ascend, each at most once" % (tag, previous),
                data,
                at,
            )
        previous = tag
        _, name, size, signed, divisor, low, high, unit = spec
        offsets[name] = at
        names.append(name)
        at += 1
        if size == 0:
            settings[name] = True
            continue
        if at + size > len(data):
            raise _fail(
                _SETTINGS,
                name + " needs " + str(size) + " bytes, " + str(len(data) - at) + " left",
                data,
                at,
            )
        raw = _get(data, at, size, signed)
        if not low <= raw <= high:
            raise _outside(_SETTINGS, name, raw, (divisor, low, high, unit), data, at)
        raws[name] = raw
        settings[name] = raw if divisor == 1 else raw / divisor
        at += size
    _check_thresholds(raws, data)
    missing = _unsupported(profile_id, names)
    if profile_id is not None and missing is not None:
        raise _fail(_SETTINGS, _unsupported_text(profile_id, missing), data, offsets[missing])
    return data[1], settings
