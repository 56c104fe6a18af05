"""Device payloads encode, decode and refuse alike on real MicroPython and on CPython.

One Node run: shared vectors (the format page's examples and errors) and a seeded random set
for every profile, device message and settings downlink go through the node-side module on
MicroPython; bytes, decoded values (floats compared bit for bit) and errors (class, offset,
message) must be what CPython gives.
"""

from __future__ import annotations

import json
import random
import struct

from owlgate.codecs.errors import PayloadError
from owlgate.codecs.node import payloads
from tests.codecs.test_payloads import PAGE, PROFILE_IDS
from tests.conftest import MicroPython

# How decoded values are printed, on both interpreters: sorted names (MicroPython's dicts do
# not keep insertion order), floats as the hex of their IEEE 754 double.
SHOW_SOURCE = """
def show(values):
    parts = []
    for name in sorted(values):
        value = values[name]
        if isinstance(value, float):
            text = "f" + struct.pack(">d", value).hex()
        else:
            text = type(value).__name__ + ":" + str(value)
        parts.append(str(name) + "=" + text)
    return " ".join(parts)


def refused(call, *args):
    # The error a call raises, or what it accepted.
    try:
        result = call(*args)
    except PayloadError as err:
        return "E " + type(err).__name__ + " " + str(err.offset) + " " + err.message
    if isinstance(result, tuple):
        return "accepted " + str(result[0]) + " " + show(result[1])
    return "accepted " + show(result)
"""
_SHARED: dict[str, object] = {"struct": struct, "PayloadError": PayloadError}
exec(SHOW_SOURCE, _SHARED)


def show(values: dict[str, object]) -> str:
    result = _SHARED["show"](values)  # type: ignore[operator]
    assert isinstance(result, str)
    return result


def refused(call: object, *args: object) -> str:
    result = _SHARED["refused"](call, *args)  # type: ignore[operator]
    assert isinstance(result, str)
    return result


def source(value: object) -> str:
    """``value`` as MicroPython source; floats and text as bytes so no parser rounds them."""
    if value is None or isinstance(value, bool | int):
        return repr(value)
    if isinstance(value, float):
        return "_f('" + struct.pack(">d", value).hex() + "')"
    if isinstance(value, str):
        return "_s('" + value.encode().hex() + "')"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(source(item) for item in value) + "]"
    assert isinstance(value, dict), value
    return "{" + ", ".join(source(k) + ": " + source(v) for k, v in value.items()) + "}"


# --- seeded cases -------------------------------------------------------------------------------


def _number(rng: random.Random, field: tuple[str, int, bool, int, int, int, str]) -> int | float:
    _, _, _, divisor, low, high, _ = field
    raw = rng.choice([low, high, rng.randint(low, high), rng.randint(low, high)])
    if divisor == 1:
        return raw
    # Now and then an integer for a scaled field: it decodes as the equal float.
    if rng.random() < 0.1 and raw % divisor == 0:
        return raw // divisor
    return raw / divisor


def random_measurement(rng: random.Random, profile_id: str) -> dict[str, object]:
    _, _, flags, fields, _ = payloads.PROFILES[profile_id]
    values: dict[str, object] = {flag: rng.random() < 0.5 for flag in flags}
    for field in fields:
        if rng.random() < 0.8:
            values[field[0]] = _number(rng, field)
    return values


def random_device_message(rng: random.Random) -> dict[str, object]:
    kind = rng.choice(["status", "boot", "settings_ack"])
    values: dict[str, object] = {"message": kind}
    if kind == "status":
        for field in payloads.STATUS_FIELDS:
            if rng.random() < 0.8:
                values[field[0]] = _number(rng, field)
    elif kind == "boot":
        values["firmware"] = ".".join(str(rng.choice([0, 1, 9, 10, 255])) for _ in range(3))
        values["reset_reason"] = rng.choice(payloads.RESET_REASONS)
        if rng.random() < 0.7:
            values["battery_mv"] = rng.randint(0, 12000)
    else:
        values["settings_seq"] = rng.randint(0, 255)
        values["result"] = rng.choice(payloads.ACK_RESULTS)
        if values["result"] != "applied" and rng.random() < 0.6:
            values["setting"] = rng.choice(payloads.SETTINGS_TABLE)[1]
    return values


def random_settings(rng: random.Random, profile_id: str) -> dict[str, object]:
    names = payloads.PROFILES[profile_id][4]
    chosen = rng.sample(names, rng.randint(1, len(names)))
    values: dict[str, object] = {}
    for _, name, size, signed, divisor, low, high, unit in payloads.SETTINGS_TABLE:
        if name in chosen:
            field = (name, size, signed, divisor, low, high, unit)
            values[name] = True if size == 0 else _number(rng, field)
    low_c, high_c = values.get("temperature_alarm_low_c"), values.get("temperature_alarm_high_c")
    if isinstance(low_c, int | float) and isinstance(high_c, int | float) and low_c > high_c:
        values["temperature_alarm_low_c"], values["temperature_alarm_high_c"] = high_c, low_c
    return values


def page_vectors() -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    """The format page's examples and error rows: (profile, FPort, payload hex)."""
    examples: list[tuple[str, int, str]] = []
    errors: list[tuple[str, int, str]] = []
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in PROFILE_IDS:
            row = (cells[0], int(cells[1]), cells[2].strip("`"))
            (examples if len(cells) == 4 else errors).append(row)
    return examples, errors


# Encoder refusals whose messages hold no float repr that the two interpreters might print
# differently (integers, text, and floats with short exact representations).
BAD_VALUES: list[tuple[str, object]] = [
    ("parking-v1", {}),
    ("parking-v1", {"occupied": 1}),
    ("parking-v1", {"occupied": True, "z": 1, "a": 2, "battery": 3}),
    ("parking-v1", {"occupied": True, "battery_mv": 12001}),
    ("parking-v1", {"occupied": True, "battery_mv": None}),
    ("parking-v1", {"occupied": True, "battery_mv": True}),
    ("parking-v1", {"occupied": True, "battery_mv": "3600"}),
    ("parking-v1", {"occupied": True, "temperature_c": 21.53}),
    ("parking-v1", {"occupied": True, "temperature_c": 125.5}),
    ("parking-v1", {"occupied": True, "temperature_c": float("inf")}),
    ("parking-v1", {"occupied": True, "temperature_c": float("nan")}),
    ("waste-bin-v1", {"tilt_alarm": False, "fill_pct": 101}),
    ("environment-v1", {"humidity_pct": 45.55}),
    ("environment-v1", {"temperature_c": 21.375}),
    ("environment-v1", []),
    ("parking-v1", {"message": "measurement"}),
    ("parking-v1", {"message": "status", "report_interval_s": 59}),
    ("parking-v1", {"message": "boot", "firmware": "1.02.3", "reset_reason": "other"}),
    ("parking-v1", {"message": "boot", "firmware": "1.2.3", "reset_reason": "nap"}),
    ("parking-v1", {"message": "settings_ack", "settings_seq": 256, "result": "applied"}),
    (
        "parking-v1",
        {"message": "settings_ack", "settings_seq": 1, "result": "applied", "setting": "reboot"},
    ),
    ("bus-v1", {}),
]
BAD_SETTINGS: list[tuple[str, int, object]] = [
    ("parking-v1", 1, {}),
    ("parking-v1", 1, {"reboot": False}),
    ("parking-v1", 256, {"reboot": True}),
    ("parking-v1", 1, {"fill_alarm_pct": 50}),
    ("parking-v1", 1, {"nap_s": 5, "doze": 1}),
    ("environment-v1", 1, {"humidity_alarm_pct": 100.5}),
    ("environment-v1", 1, {"temperature_alarm_low_c": 20.5, "temperature_alarm_high_c": 20.0}),
]


def test_micropython_encodes_decodes_and_refuses_like_cpython(micropython: MicroPython) -> None:
    rng = random.Random(20261124)
    examples, errors = page_vectors()
    uplinks: list[tuple[str, dict[str, object]]] = []
    downlinks: list[tuple[str, int, dict[str, object]]] = []
    for profile_id, f_port, hex_payload in examples:
        payload = bytes.fromhex(hex_payload)
        if f_port == payloads.PORT_SETTINGS:
            seq, values = payloads.decode_settings(payload, profile_id)
            downlinks.append((profile_id, seq, values))
        else:
            uplinks.append((profile_id, payloads.decode_uplink(profile_id, f_port, payload)))
    for profile_id in PROFILE_IDS:
        uplinks += [(profile_id, random_measurement(rng, profile_id)) for _ in range(40)]
        downlinks += [
            (profile_id, rng.randint(0, 255), random_settings(rng, profile_id)) for _ in range(30)
        ]
    uplinks += [(rng.choice(PROFILE_IDS), random_device_message(rng)) for _ in range(60)]
    rounding: list[tuple[str, dict[str, object]]] = [
        (
            profile_id,
            {"temperature_c": rng.uniform(-40, 125), "battery_mv": rng.uniform(0, 12000)},
        )
        for profile_id in ("parking-v1", "environment-v1")
        for _ in range(20)
    ]
    rounding.append(("parking-v1", {"temperature_c": 21.25, "battery_mv": 3600.5}))
    # Malformed input: the page's error rows, then every encoded uplink cut short, grown, and
    # with one byte changed at random.
    bad: list[tuple[str, int, str]] = list(errors)
    encoded = [payloads.encode_uplink(profile_id, values) for profile_id, values in uplinks]
    for (profile_id, _), (f_port, payload) in zip(uplinks, encoded, strict=True):
        at = rng.randrange(len(payload))
        changed = payload[:at] + bytes((rng.randrange(256),)) + payload[at + 1 :]
        bad += [
            (profile_id, f_port, payload[: rng.randrange(len(payload))].hex()),
            (profile_id, f_port, (payload + b"\x00").hex()),
            (profile_id, f_port, changed.hex()),
        ]
    for _ in range(60):
        header = rng.choice([0x11, 0x12, 0x13, 0x14, 0x18, 0x21])
        noise = bytes((header,)) + rng.randbytes(rng.randrange(12))
        bad.append((rng.choice(PROFILE_IDS), rng.choice([10, 11, 12, 20, 21]), noise.hex()))

    expected: list[str] = []
    for (profile_id, _), (f_port, payload) in zip(uplinks, encoded, strict=True):
        expected.append(f"U {f_port} {payload.hex()}")
        expected.append(show(payloads.decode_uplink(profile_id, f_port, payload)))
    settings_encoded = []
    for profile_id, seq, values in downlinks:
        payload = payloads.encode_settings(seq, values, profile_id)
        settings_encoded.append(payload.hex())
        expected.append("S " + payload.hex())
        decoded_seq, decoded = payloads.decode_settings(payload, profile_id)
        expected.append(str(decoded_seq) + " " + show(decoded))
    expected += [show(payloads.quantise(profile_id, values)) for profile_id, values in rounding]
    for profile_id, f_port, hex_payload in bad:
        data = bytes.fromhex(hex_payload)
        if f_port == payloads.PORT_SETTINGS:
            expected.append(refused(payloads.decode_settings, data, profile_id))
        else:
            expected.append(refused(payloads.decode_uplink, profile_id, f_port, data))
    expected += [refused(payloads.encode_uplink, p, v) for p, v in BAD_VALUES]
    expected += [refused(payloads.encode_settings, s, v, p) for p, s, v in BAD_SETTINGS]
    # At least the page's errors, every cut and grown uplink and every bad value are refused.
    refusals = [line for line in expected if line.startswith("E PayloadError ")]
    assert len(refusals) >= len(errors) + 2 * len(uplinks) + len(BAD_VALUES) + len(BAD_SETTINGS)

    uplink_source = source(
        [
            (profile_id, values, payload.hex())
            for (profile_id, values), (_, payload) in zip(uplinks, encoded, strict=True)
        ]
    )
    downlink_source = source(
        [
            (profile_id, seq, values, hex_payload)
            for (profile_id, seq, values), hex_payload in zip(
                downlinks, settings_encoded, strict=True
            )
        ]
    )
    script = f"""
import struct
from owlgate.codecs.errors import PayloadError
from owlgate.codecs.node import payloads

def _f(text):
    return struct.unpack(">d", bytes.fromhex(text))[0]

def _s(text):
    return bytes.fromhex(text).decode()

{SHOW_SOURCE}

for profile_id, values, hex_payload in {uplink_source}:
    f_port, payload = payloads.encode_uplink(profile_id, values)
    print("U", f_port, payload.hex())
    print(show(payloads.decode_uplink(profile_id, f_port, bytes.fromhex(hex_payload))))
for profile_id, seq, values, hex_payload in {downlink_source}:
    print("S " + payloads.encode_settings(seq, values, profile_id).hex())
    decoded_seq, decoded = payloads.decode_settings(bytes.fromhex(hex_payload), profile_id)
    print(str(decoded_seq) + " " + show(decoded))
for profile_id, values in {source(rounding)}:
    print(show(payloads.quantise(profile_id, values)))
for profile_id, f_port, hex_payload in {json.dumps(bad)}:
    data = bytes.fromhex(hex_payload)
    if f_port == payloads.PORT_SETTINGS:
        print(refused(payloads.decode_settings, data, profile_id))
    else:
        print(refused(payloads.decode_uplink, profile_id, f_port, data))
for profile_id, values in {source(BAD_VALUES)}:
    print(refused(payloads.encode_uplink, profile_id, values))
for profile_id, seq, values in {source(BAD_SETTINGS)}:
    print(refused(payloads.encode_settings, seq, values, profile_id))
"""
    lines = micropython(script).splitlines()
    assert lines == expected
    # The seeds cover what matters: every profile, message kind and setting; missing values.
    assert {values.get("message") for _, values in uplinks} == {
        None,
        "status",
        "boot",
        "settings_ack",
    }
    assert {name for _, _, values in downlinks for name in values} == {
        entry[1] for entry in payloads.SETTINGS_TABLE
    }
    assert any("ffff" in line for line in expected if line.startswith("U 1"))
