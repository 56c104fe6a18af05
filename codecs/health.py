"""Gateway health messages: what each gateway publishes every ``interval_s`` seconds.

One message is one CBOR map with small integer keys (RFC 8949; one byte per key), specified in
``docs/formats/health.cddl``. A field the machine cannot measure is left out, not sent as a
placeholder: a laptop running the agent has no throttle flags, a gateway without a radio
backend no radio counters. Counters (radio, reconnects, outbox evictions) are cumulative since
the agent started, so a lost message loses nothing and the fleet computes rates from
differences; ``agent_uptime_s`` going down tells it the counters restarted.

====  ======================  ===========================================================
key   field                   CBOR, unit
====  ======================  ===========================================================
0     version                 1
1     gateway_id              bstr, 8 bytes (EUI-64)
2     seq                     uint, +1 per health message since the agent started
3     time_s                  uint, UTC seconds when sampled
4     interval_s              uint, seconds between health messages (the fleet's offline
                              rule is 2 intervals of silence)
5     uptime_s                uint, seconds since the machine booted
6     agent_uptime_s          uint, seconds since the agent started
7     agent_version           tstr, 1..64 bytes
8     config_hash             bstr, 32 bytes: SHA-256 identifying the configuration in force
9     config_seq              ? uint, seq of the applied signed config document
10    cpu_temp_c              ? int, 0.1 degC
11    throttled               ? uint < 2^32, the ``vcgencmd get_throttled`` bit field
12    load                    ? [1m, 5m, 15m], uint each, 0.01
13    memory                  ? [used, total], uint bytes
14    disk                    ? [used, total], uint bytes (the agent's state filesystem)
15    radio                   ? [received, crc_ok, crc_bad, forwarded, transmitted], uint
16    backhaul_rtt_ms         ? uint, ms
17    outbox_depth            uint, batches waiting
18    outbox_oldest_age_s     uint, seconds; present exactly when outbox_depth > 0
19    outbox_evicted          uint, batches dropped oldest-first since the agent started
20    reconnects              uint, backhaul reconnections since the agent started
21    outbox_size             ? [bytes, bound], uint each: payload bytes waiting and the
                              configured bound (eviction starts at the bound; the agent
                              warns from 80 % of it)
====  ======================  ===========================================================

The encoding is deterministic and canonical, as for telemetry: :func:`decode_health` accepts
exactly the bytes :func:`encode_health` writes for the decoded content. Errors are
:class:`CborError` (not one deterministic CBOR item) and :class:`SchemaError` (not a version-1
health message), never anything else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntFlag

from .errors import CborError, CodecError, SchemaError
from .node import cbor

FORMAT_VERSION = 1
DEFAULT_INTERVAL_S = 30

K_VERSION = 0
K_GATEWAY_ID = 1
K_SEQ = 2
K_TIME = 3
K_INTERVAL = 4
K_UPTIME = 5
K_AGENT_UPTIME = 6
K_AGENT_VERSION = 7
K_CONFIG_HASH = 8
K_CONFIG_SEQ = 9
K_CPU_TEMP = 10
K_THROTTLED = 11
K_LOAD = 12
K_MEMORY = 13
K_DISK = 14
K_RADIO = 15
K_BACKHAUL_RTT = 16
K_OUTBOX_DEPTH = 17
K_OUTBOX_OLDEST_AGE = 18
K_OUTBOX_EVICTED = 19
K_RECONNECTS = 20
K_OUTBOX_SIZE = 21

KEY_NAMES = {
    K_VERSION: "version",
    K_GATEWAY_ID: "gateway_id",
    K_SEQ: "seq",
    K_TIME: "time_s",
    K_INTERVAL: "interval_s",
    K_UPTIME: "uptime_s",
    K_AGENT_UPTIME: "agent_uptime_s",
    K_AGENT_VERSION: "agent_version",
    K_CONFIG_HASH: "config_hash",
    K_CONFIG_SEQ: "config_seq",
    K_CPU_TEMP: "cpu_temp_c",
    K_THROTTLED: "throttled",
    K_LOAD: "load",
    K_MEMORY: "memory",
    K_DISK: "disk",
    K_RADIO: "radio",
    K_BACKHAUL_RTT: "backhaul_rtt_ms",
    K_OUTBOX_DEPTH: "outbox_depth",
    K_OUTBOX_OLDEST_AGE: "outbox_oldest_age_s",
    K_OUTBOX_EVICTED: "outbox_evicted",
    K_RECONNECTS: "reconnects",
    K_OUTBOX_SIZE: "outbox_size",
}
REQUIRED_KEYS = (
    K_VERSION,
    K_GATEWAY_ID,
    K_SEQ,
    K_TIME,
    K_INTERVAL,
    K_UPTIME,
    K_AGENT_UPTIME,
    K_AGENT_VERSION,
    K_CONFIG_HASH,
    K_OUTBOX_DEPTH,
    K_OUTBOX_EVICTED,
    K_RECONNECTS,
)

EUI64_LENGTH = 8
CONFIG_HASH_LENGTH = 32  # SHA-256
MAX_VERSION_BYTES = 64
_U64_END = 1 << 64
_U32_END = 1 << 32
# Scaled quantities stay far inside a double's 53-bit mantissa, so raw / divisor * divisor
# rounds back to raw and decode then encode gives the same bytes.
_TEMP_END = 1 << 31
_LAST_DATETIME = 253402300800  # 10000-01-01T00:00:00Z: beyond what datetime formats


class Throttle(IntFlag):
    """The bit field ``vcgencmd get_throttled`` prints on a Raspberry Pi (``throttled=0x50005``).

    Bits 0..3 say what holds now, bits 16..19 what has happened since boot. Bits the firmware
    may add later are kept (``IntFlag`` keeps unknown bits) and shown as such.
    """

    UNDER_VOLTAGE = 1 << 0
    ARM_FREQ_CAPPED = 1 << 1
    THROTTLED = 1 << 2
    SOFT_TEMP_LIMIT = 1 << 3
    UNDER_VOLTAGE_OCCURRED = 1 << 16
    ARM_FREQ_CAPPED_OCCURRED = 1 << 17
    THROTTLED_OCCURRED = 1 << 18
    SOFT_TEMP_LIMIT_OCCURRED = 1 << 19


# (name, bit of "now"); the "since boot" bit of each is 16 higher.
_THROTTLE_NAMES = (
    ("under_voltage", 0),
    ("arm_freq_capped", 1),
    ("throttled", 2),
    ("soft_temp_limit", 3),
)
_SINCE_BOOT_SHIFT = 16
_KNOWN_THROTTLE_BITS = 0xF000F
_GET_THROTTLED = re.compile(r"\s*throttled=0x([0-9a-fA-F]{1,8})\s*")


def parse_get_throttled(text: str) -> Throttle:
    """The flags in the output of ``vcgencmd get_throttled`` (``throttled=0x50005``)."""
    match = _GET_THROTTLED.fullmatch(text)
    if match is None:
        raise CodecError("not the output of vcgencmd get_throttled: " + repr(text[:40]))
    return Throttle(int(match.group(1), 16))


def throttle_flags(bits: int) -> dict[str, object]:
    """Named flags of a ``get_throttled`` bit field: what holds now, what happened since boot."""
    result: dict[str, object] = {
        "bits": hex(bits),
        "now": [name for name, bit in _THROTTLE_NAMES if bits >> bit & 1],
        "since_boot": [
            name for name, bit in _THROTTLE_NAMES if bits >> (bit + _SINCE_BOOT_SHIFT) & 1
        ],
    }
    unknown = bits & ~_KNOWN_THROTTLE_BITS
    if unknown:
        result["unknown_bits"] = hex(unknown)
    return result


@dataclass(frozen=True, slots=True)
class RadioCounters:
    """Radio counters since the agent started (the Semtech ``stat`` rxnb, rxok, rxfw, txnb).

    ``received`` counts every frame the concentrator delivered, ``crc_ok``/``crc_bad`` those
    with a good or bad payload CRC, ``forwarded`` those passed on for processing,
    ``transmitted`` the downlinks sent.
    """

    received: int
    crc_ok: int
    crc_bad: int
    forwarded: int
    transmitted: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """One gateway health message. ``None`` means the machine does not measure that quantity.

    Units are in the names. ``cpu_temp_c`` travels in 0.1 degC steps and the load averages
    in 0.01 steps (values are rounded to them); ``throttled`` is the raw ``get_throttled`` bit
    field (a :class:`Throttle` after decoding). ``mem_*`` and ``disk_*`` come in pairs, as do
    the three load averages: all or none, and so do ``outbox_bytes`` and
    ``outbox_max_bytes``. ``outbox_oldest_age_s`` is given exactly when the outbox is not
    empty.
    """

    gateway_id: bytes
    seq: int
    time_s: int
    uptime_s: int
    agent_uptime_s: int
    agent_version: str
    config_hash: bytes
    interval_s: int = DEFAULT_INTERVAL_S
    config_seq: int | None = None
    cpu_temp_c: float | None = None
    throttled: int | None = None
    load_1m: float | None = None
    load_5m: float | None = None
    load_15m: float | None = None
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    disk_used_bytes: int | None = None
    disk_total_bytes: int | None = None
    radio: RadioCounters | None = None
    backhaul_rtt_ms: int | None = None
    outbox_depth: int = 0
    outbox_oldest_age_s: int | None = None
    outbox_evicted: int = 0
    reconnects: int = 0
    outbox_bytes: int | None = None
    outbox_max_bytes: int | None = None


# --- encoding ---------------------------------------------------------------------------------


def _uint(value: object, name: str, end: int = _U64_END, low: int = 0) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value < end:
        return value
    raise SchemaError(
        name + " must be an integer " + str(low) + " .. " + _bound(end) + ", got " + repr(value)
    )


def _bound(end: int) -> str:
    return {_U64_END: "2**64-1", _U32_END: "2**32-1"}.get(end, str(end - 1))


def _scaled(value: object, name: str, divisor: int, low: int, end: int) -> int:
    # The nearest integer count of 1/divisor units (half to even), within [low, end).
    # (isfinite only for floats: it cannot convert a huge int, and ints are finite anyway.)
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))
        and low <= value * divisor < end
    ):
        raw = round(value * divisor)
        if low <= raw < end:
            return raw
    raise SchemaError(
        name + " must be a finite number within the range of its format, got " + repr(value)
    )


def _pair(used: object, total: object, name: str) -> list[int] | None:
    if used is None and total is None:
        return None
    if used is None or total is None:
        raise SchemaError(name + "_used_bytes and " + name + "_total_bytes go together")
    used_bytes = _uint(used, name + "_used_bytes")
    total_bytes = _uint(total, name + "_total_bytes")
    if used_bytes > total_bytes:
        raise SchemaError(
            name + "_used_bytes " + str(used_bytes) + " exceeds total " + str(total_bytes)
        )
    return [used_bytes, total_bytes]


def _content(health: Health) -> dict[object, object]:
    # The CBOR map of health, checked; None fields are left out.
    if not isinstance(health, Health):
        raise SchemaError("encode_health needs a Health, got " + type(health).__name__)
    gateway_id = health.gateway_id
    if not isinstance(gateway_id, bytes) or len(gateway_id) != EUI64_LENGTH:
        raise SchemaError("gateway_id must be 8 bytes (EUI-64), got " + repr(gateway_id))
    config_hash = health.config_hash
    if not isinstance(config_hash, bytes) or len(config_hash) != CONFIG_HASH_LENGTH:
        raise SchemaError("config_hash must be 32 bytes (SHA-256), got " + repr(config_hash))
    version = health.agent_version
    if not isinstance(version, str) or not 0 < len(version.encode()) <= MAX_VERSION_BYTES:
        raise SchemaError("agent_version must be 1..64 bytes of text, got " + repr(version))
    depth = _uint(health.outbox_depth, "outbox_depth")
    content: dict[object, object] = {
        K_VERSION: FORMAT_VERSION,
        K_GATEWAY_ID: gateway_id,
        K_SEQ: _uint(health.seq, "seq"),
        K_TIME: _uint(health.time_s, "time_s"),
        K_INTERVAL: _uint(health.interval_s, "interval_s", low=1),
        K_UPTIME: _uint(health.uptime_s, "uptime_s"),
        K_AGENT_UPTIME: _uint(health.agent_uptime_s, "agent_uptime_s"),
        K_AGENT_VERSION: version,
        K_CONFIG_HASH: config_hash,
        K_OUTBOX_DEPTH: depth,
        K_OUTBOX_EVICTED: _uint(health.outbox_evicted, "outbox_evicted"),
        K_RECONNECTS: _uint(health.reconnects, "reconnects"),
    }
    if health.config_seq is not None:
        content[K_CONFIG_SEQ] = _uint(health.config_seq, "config_seq")
    if health.cpu_temp_c is not None:
        content[K_CPU_TEMP] = _scaled(health.cpu_temp_c, "cpu_temp_c", 10, 1 - _TEMP_END, _TEMP_END)
    if health.throttled is not None:
        # A plain int on the wire, whether given as an int or a Throttle flag set.
        content[K_THROTTLED] = int(_uint(health.throttled, "throttled", _U32_END))
    loads = (health.load_1m, health.load_5m, health.load_15m)
    if any(load is not None for load in loads):
        if any(load is None for load in loads):
            raise SchemaError("load_1m, load_5m and load_15m go together, got " + repr(loads))
        content[K_LOAD] = [_scaled(load, "load", 100, 0, _U32_END) for load in loads]
    memory = _pair(health.mem_used_bytes, health.mem_total_bytes, "mem")
    if memory is not None:
        content[K_MEMORY] = memory
    disk = _pair(health.disk_used_bytes, health.disk_total_bytes, "disk")
    if disk is not None:
        content[K_DISK] = disk
    radio = health.radio
    if radio is not None:
        if not isinstance(radio, RadioCounters):
            raise SchemaError("radio must be RadioCounters or None, got " + type(radio).__name__)
        content[K_RADIO] = [_uint(getattr(radio, name), "radio." + name) for name in _RADIO_FIELDS]
    if health.backhaul_rtt_ms is not None:
        content[K_BACKHAUL_RTT] = _uint(health.backhaul_rtt_ms, "backhaul_rtt_ms")
    if (health.outbox_bytes is None) != (health.outbox_max_bytes is None):
        raise SchemaError("outbox_bytes and outbox_max_bytes go together")
    if health.outbox_bytes is not None:
        content[K_OUTBOX_SIZE] = [
            _uint(health.outbox_bytes, "outbox_bytes"),
            _uint(health.outbox_max_bytes, "outbox_max_bytes"),
        ]
    age = health.outbox_oldest_age_s
    if (age is None) != (depth == 0):
        raise SchemaError(
            "outbox_oldest_age_s is given exactly when the outbox is not empty; depth "
            + str(depth)
            + ", age "
            + repr(age)
        )
    if age is not None:
        content[K_OUTBOX_OLDEST_AGE] = _uint(age, "outbox_oldest_age_s")
    return content


_RADIO_FIELDS = ("received", "crc_ok", "crc_bad", "forwarded", "transmitted")


def encode_health(health: Health) -> bytes:
    """Encode ``health`` as deterministic CBOR; SchemaError if a field is out of its range."""
    return cbor.dumps(_content(health))


# --- decoding ---------------------------------------------------------------------------------


def _field(key: int) -> str:
    return "health key " + str(key) + " (" + KEY_NAMES[key] + ")"


def _get_uint(content: dict[object, object], key: int, end: int = _U64_END, low: int = 0) -> int:
    value = content[key]
    if isinstance(value, int) and not isinstance(value, bool) and low <= value < end:
        return value
    raise SchemaError(
        _field(key)
        + " must be an integer "
        + str(low)
        + " .. "
        + _bound(end)
        + ", got "
        + _show(value)
    )


def _get_uints(content: dict[object, object], key: int, count: int, end: int) -> list[int]:
    value = content[key]
    if (
        isinstance(value, list)
        and len(value) == count
        and all(
            isinstance(item, int) and not isinstance(item, bool) and 0 <= item < end
            for item in value
        )
    ):
        return value
    raise SchemaError(
        _field(key)
        + " must be an array of "
        + str(count)
        + " integers 0 .. "
        + _bound(end)
        + ", got "
        + _show(value)
    )


def _show(item: object) -> str:
    raw = cbor.dumps(item)
    return raw[:24].hex() + ("..." if len(raw) > 24 else "")


def decode_health(data: bytes) -> Health:
    """Decode a health message.

    Raises CborError for bytes that are not one deterministic CBOR item, SchemaError for CBOR
    that is not a version-1 health message in its canonical form; never anything else.
    """
    raw = bytes(data)
    content = cbor.loads(raw)
    again = cbor.dumps(content)
    if again != raw:
        at = next(
            (i for i, (a, b) in enumerate(zip(raw, again, strict=False)) if a != b),
            min(len(raw), len(again)),
        )
        raise CborError(
            "not deterministic CBOR (RFC 8949 section 4.2.1): from offset "
            + str(at)
            + " the input has "
            + raw[at : at + 8].hex()
            + ", the deterministic form "
            + again[at : at + 8].hex(),
            at,
        )
    if not isinstance(content, dict):
        raise SchemaError(
            "a health message is a CBOR map, got " + type(content).__name__ + ": " + _show(content),
            0,
        )
    # type(): True and 1.0 compare equal to 1, and would pass as keys or as the version.
    if K_VERSION in content and not (
        type(content[K_VERSION]) is int and content[K_VERSION] == FORMAT_VERSION
    ):
        raise SchemaError(
            "unsupported health format version "
            + repr(content[K_VERSION])
            + "; this decoder reads version "
            + str(FORMAT_VERSION)
        )
    for key in content:
        if type(key) is not int or key not in KEY_NAMES:
            raise SchemaError(
                "unknown health key " + repr(key) + " (version 1 defines keys 0 .. 21)"
            )
    for key in REQUIRED_KEYS:
        if key not in content:
            raise SchemaError(
                "the health message has no " + KEY_NAMES[key] + " (key " + str(key) + ")"
            )
    gateway_id = content[K_GATEWAY_ID]
    if not isinstance(gateway_id, bytes) or len(gateway_id) != EUI64_LENGTH:
        raise SchemaError(_field(K_GATEWAY_ID) + " must be 8 bytes, got " + _show(gateway_id))
    config_hash = content[K_CONFIG_HASH]
    if not isinstance(config_hash, bytes) or len(config_hash) != CONFIG_HASH_LENGTH:
        raise SchemaError(_field(K_CONFIG_HASH) + " must be 32 bytes, got " + _show(config_hash))
    version = content[K_AGENT_VERSION]
    if not isinstance(version, str) or not 0 < len(version.encode()) <= MAX_VERSION_BYTES:
        raise SchemaError(
            _field(K_AGENT_VERSION) + " must be 1..64 bytes of text, got " + _show(version)
        )
    fields: dict[str, object] = {
        "gateway_id": gateway_id,
        "seq": _get_uint(content, K_SEQ),
        "time_s": _get_uint(content, K_TIME),
        "interval_s": _get_uint(content, K_INTERVAL, low=1),
        "uptime_s": _get_uint(content, K_UPTIME),
        "agent_uptime_s": _get_uint(content, K_AGENT_UPTIME),
        "agent_version": version,
        "config_hash": config_hash,
        "outbox_depth": _get_uint(content, K_OUTBOX_DEPTH),
        "outbox_evicted": _get_uint(content, K_OUTBOX_EVICTED),
        "reconnects": _get_uint(content, K_RECONNECTS),
    }
    if K_CONFIG_SEQ in content:
        fields["config_seq"] = _get_uint(content, K_CONFIG_SEQ)
    if K_CPU_TEMP in content:
        tenths = content[K_CPU_TEMP]
        if (
            not isinstance(tenths, int)
            or isinstance(tenths, bool)
            or not -_TEMP_END < tenths < _TEMP_END
        ):
            raise SchemaError(
                _field(K_CPU_TEMP)
                + " must be an integer count of 0.1 degC below 2**31 in magnitude, got "
                + _show(tenths)
            )
        fields["cpu_temp_c"] = tenths / 10
    if K_THROTTLED in content:
        fields["throttled"] = Throttle(_get_uint(content, K_THROTTLED, _U32_END))
    if K_LOAD in content:
        hundredths = _get_uints(content, K_LOAD, 3, _U32_END)
        fields["load_1m"], fields["load_5m"], fields["load_15m"] = (h / 100 for h in hundredths)
    for key, name in ((K_MEMORY, "mem"), (K_DISK, "disk")):
        if key in content:
            used, total = _get_uints(content, key, 2, _U64_END)
            if used > total:
                raise SchemaError(_field(key) + ": used " + str(used) + " > total " + str(total))
            fields[name + "_used_bytes"] = used
            fields[name + "_total_bytes"] = total
    if K_RADIO in content:
        fields["radio"] = RadioCounters(*_get_uints(content, K_RADIO, 5, _U64_END))
    if K_BACKHAUL_RTT in content:
        fields["backhaul_rtt_ms"] = _get_uint(content, K_BACKHAUL_RTT)
    if K_OUTBOX_OLDEST_AGE in content:
        fields["outbox_oldest_age_s"] = _get_uint(content, K_OUTBOX_OLDEST_AGE)
    if K_OUTBOX_SIZE in content:
        fields["outbox_bytes"], fields["outbox_max_bytes"] = _get_uints(
            content, K_OUTBOX_SIZE, 2, _U64_END
        )
    if (K_OUTBOX_OLDEST_AGE in content) != (fields["outbox_depth"] != 0):
        raise SchemaError(
            "outbox_oldest_age_s (key 18) must be present exactly when outbox_depth (key 17) "
            "is not 0"
        )
    # Every value was checked above, and each decodes to what encode_health writes back (the
    # tests check that whatever is accepted re-encodes to the same bytes).
    return Health(**fields)  # type: ignore[arg-type]


# --- description for people -------------------------------------------------------------------


def _utc(seconds: int) -> str | None:
    if seconds >= _LAST_DATETIME:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _percent(used: int | None, total: int | None) -> float | None:
    if used is None or total is None or total == 0:
        return None
    return round(100 * used / total, 1)


def describe_health(data: bytes) -> dict[str, object]:
    """A JSON-ready description of a health message: names, units, UTC time, named flags."""
    raw = bytes(data)
    health = decode_health(raw)
    return {
        "format": "owlgate gateway health",
        "version": FORMAT_VERSION,
        "gateway_id": health.gateway_id.hex(),
        "seq": health.seq,
        "time_s": health.time_s,
        "time_utc": _utc(health.time_s),
        "interval_s": health.interval_s,
        "uptime_s": health.uptime_s,
        "agent_uptime_s": health.agent_uptime_s,
        "agent_version": health.agent_version,
        "config_hash": health.config_hash.hex(),
        "config_seq": health.config_seq,
        "cpu_temp_c": health.cpu_temp_c,
        "throttled": None if health.throttled is None else throttle_flags(health.throttled),
        "load": None
        if health.load_1m is None
        else {"1m": health.load_1m, "5m": health.load_5m, "15m": health.load_15m},
        "memory": None
        if health.mem_total_bytes is None
        else {
            "used_bytes": health.mem_used_bytes,
            "total_bytes": health.mem_total_bytes,
            "used_pct": _percent(health.mem_used_bytes, health.mem_total_bytes),
        },
        "disk": None
        if health.disk_total_bytes is None
        else {
            "used_bytes": health.disk_used_bytes,
            "total_bytes": health.disk_total_bytes,
            "used_pct": _percent(health.disk_used_bytes, health.disk_total_bytes),
        },
        "radio": None
        if health.radio is None
        else {name: getattr(health.radio, name) for name in _RADIO_FIELDS},
        "backhaul_rtt_ms": health.backhaul_rtt_ms,
        "outbox": {
            "depth": health.outbox_depth,
            "oldest_age_s": health.outbox_oldest_age_s,
            "evicted": health.outbox_evicted,
            "bytes": health.outbox_bytes,
            "max_bytes": health.outbox_max_bytes,
            "used_pct": _percent(health.outbox_bytes, health.outbox_max_bytes),
        },
        "reconnects": health.reconnects,
        "size_bytes": len(raw),
    }
