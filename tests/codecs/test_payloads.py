"""Device payloads: round trips, an independent struct encoder, strictness, sizes, the registry.

The expected layouts and ranges are written out here by hand from the format page, not read
from the module's tables, so a change to a table that the page does not follow fails a test.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.errors import CodecError, PayloadError
from owlgate.codecs.node import payloads as node
from owlgate.codecs.node.telemetry import (
    BOOL,
    EXTENSION_BIT,
    FIELDS,
    INT,
    SCALED,
    Batch,
    Reading,
    decode_batch,
    encode_batch,
)
from owlgate.codecs.payloads import (
    MAX_PAYLOAD_SF12,
    PROFILES,
    Profile,
    ProfileError,
    Quantity,
    SettingsDownlink,
    decode_settings,
    decode_uplink,
    describe,
    encode_settings,
    encode_uplink,
    get_profile,
)
from tests.conftest import REPO, typed_error_or_none

PAGE = REPO / "docs" / "formats" / "device-payloads.md"
PROFILE_IDS = ["parking-v1", "waste-bin-v1", "environment-v1"]
MEASUREMENT_PORTS = {"parking-v1": 10, "waste-bin-v1": 11, "environment-v1": 12}
NOT_MEASURED_U16 = 0xFFFF
NOT_MEASURED_S16 = -0x8000

# --- values, written from the format page --------------------------------------------------------

tenths = st.integers(-400, 1250).map(lambda n: n / 10)
hundredths = st.integers(-4000, 12500).map(lambda n: n / 100)
battery = st.integers(0, 12000)
humidity = st.integers(0, 1000).map(lambda n: n / 10)

MEASUREMENTS: dict[str, st.SearchStrategy[dict[str, object]]] = {
    "parking-v1": st.fixed_dictionaries(
        {"occupied": st.booleans()},
        optional={"battery_mv": battery, "temperature_c": tenths | st.integers(-40, 125)},
    ),
    "waste-bin-v1": st.fixed_dictionaries(
        {"tilt_alarm": st.booleans()},
        optional={
            "fill_pct": st.integers(0, 100),
            "distance_mm": st.integers(0, 10_000),
            "temperature_c": tenths,
            "battery_mv": battery,
        },
    ),
    "environment-v1": st.fixed_dictionaries(
        {},
        optional={
            "temperature_c": hundredths | st.integers(-40, 125),
            "humidity_pct": humidity | st.integers(0, 100),
            "co2_ppm": st.integers(0, 40_000),
            "battery_mv": battery,
        },
    ),
}

DEVICE_MESSAGES = st.one_of(
    st.fixed_dictionaries(
        {"message": st.just("status")},
        optional={
            "battery_mv": battery,
            "uptime_s": st.integers(0, 2**32 - 2),
            "report_interval_s": st.integers(60, 604_800),
        },
    ),
    st.fixed_dictionaries(
        {
            "message": st.just("boot"),
            "firmware": st.tuples(*[st.integers(0, 255)] * 3).map(
                lambda parts: ".".join(str(part) for part in parts)
            ),
            "reset_reason": st.sampled_from(
                ["power_on", "watchdog", "command", "brown_out", "firmware_update", "other"]
            ),
        },
        optional={"battery_mv": battery},
    ),
    st.fixed_dictionaries(
        {
            "message": st.just("settings_ack"),
            "settings_seq": st.integers(0, 255),
            "result": st.just("applied"),
        }
    ),
    st.fixed_dictionaries(
        {
            "message": st.just("settings_ack"),
            "settings_seq": st.integers(0, 255),
            "result": st.sampled_from(["unsupported", "invalid"]),
        },
        optional={"setting": st.sampled_from(["report_interval_s", "co2_alarm_ppm", "reboot"])},
    ),
)

# tag, size, values (from the page's settings table)
SETTINGS_SPEC: dict[str, tuple[int, int, st.SearchStrategy[object]]] = {
    "report_interval_s": (0x01, 3, st.integers(60, 604_800)),
    "occupancy_sensitivity": (0x02, 1, st.integers(1, 10)),
    "bin_depth_mm": (0x03, 2, st.integers(100, 5000)),
    "fill_alarm_pct": (0x04, 1, st.integers(0, 100)),
    "temperature_alarm_low_c": (0x05, 2, tenths),
    "temperature_alarm_high_c": (0x06, 2, tenths),
    "humidity_alarm_pct": (0x07, 2, humidity),
    "co2_alarm_ppm": (0x08, 2, st.integers(0, 40_000)),
    "request_status": (0x70, 0, st.just(True)),
    "reboot": (0x71, 0, st.just(True)),
}
COMMON_SETTINGS = ["report_interval_s", "request_status", "reboot"]
PROFILE_SETTINGS = {
    "parking-v1": [*COMMON_SETTINGS, "occupancy_sensitivity"],
    "waste-bin-v1": [
        *COMMON_SETTINGS,
        "bin_depth_mm",
        "fill_alarm_pct",
        "temperature_alarm_high_c",
    ],
    "environment-v1": [
        *COMMON_SETTINGS,
        "temperature_alarm_low_c",
        "temperature_alarm_high_c",
        "humidity_alarm_pct",
        "co2_alarm_ppm",
    ],
}


@st.composite
def measurements(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    profile_id = draw(st.sampled_from(PROFILE_IDS))
    return profile_id, draw(MEASUREMENTS[profile_id])


@st.composite
def settings_for(draw: st.DrawFn, names: list[str]) -> dict[str, object]:
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    values = {name: draw(SETTINGS_SPEC[name][2]) for name in chosen}
    low, high = values.get("temperature_alarm_low_c"), values.get("temperature_alarm_high_c")
    if isinstance(low, float) and isinstance(high, float) and low > high:
        values["temperature_alarm_low_c"], values["temperature_alarm_high_c"] = high, low
    return values


@st.composite
def downlinks(draw: st.DrawFn) -> tuple[str, int, dict[str, object]]:
    profile_id = draw(st.sampled_from(PROFILE_IDS))
    seq = draw(st.integers(0, 255))
    return profile_id, seq, draw(settings_for(PROFILE_SETTINGS[profile_id]))


# --- an independent encoder, with struct ----------------------------------------------------------


def _raw(values: dict[str, object], name: str, divisor: int, absent: int) -> int:
    value = values.get(name)
    if value is None:
        return absent
    assert isinstance(value, int | float)
    return round(value * divisor)


def reference_uplink(profile_id: str, values: dict[str, object]) -> bytes:
    """The page's byte tables, written with struct."""
    u16, s16 = NOT_MEASURED_U16, NOT_MEASURED_S16
    if profile_id == "parking-v1":
        return struct.pack(
            ">BBHh",
            0x11,
            1 if values["occupied"] else 0,
            _raw(values, "battery_mv", 1, u16),
            _raw(values, "temperature_c", 10, s16),
        )
    if profile_id == "waste-bin-v1":
        return struct.pack(
            ">BBBHhH",
            0x11,
            1 if values["tilt_alarm"] else 0,
            _raw(values, "fill_pct", 1, 0xFF),
            _raw(values, "distance_mm", 1, u16),
            _raw(values, "temperature_c", 10, s16),
            _raw(values, "battery_mv", 1, u16),
        )
    assert profile_id == "environment-v1"
    return struct.pack(
        ">BhHHH",
        0x11,
        _raw(values, "temperature_c", 100, s16),
        _raw(values, "humidity_pct", 10, u16),
        _raw(values, "co2_ppm", 1, u16),
        _raw(values, "battery_mv", 1, u16),
    )


def reference_device_message(values: dict[str, object]) -> bytes:
    message = values["message"]
    if message == "status":
        interval = _raw(values, "report_interval_s", 1, 0xFFFFFF)
        head = struct.pack(
            ">BHI",
            0x12,
            _raw(values, "battery_mv", 1, NOT_MEASURED_U16),
            _raw(values, "uptime_s", 1, 0xFFFFFFFF),
        )
        return head + interval.to_bytes(3, "big")
    if message == "boot":
        firmware = [int(part) for part in str(values["firmware"]).split(".")]
        reasons = ["power_on", "watchdog", "command", "brown_out", "firmware_update", "other"]
        return struct.pack(
            ">BBBBBH",
            0x13,
            *firmware,
            reasons.index(str(values["reset_reason"])),
            _raw(values, "battery_mv", 1, NOT_MEASURED_U16),
        )
    assert message == "settings_ack"
    results = ["applied", "unsupported", "invalid"]
    setting = values.get("setting")
    tag = 0 if setting is None else SETTINGS_SPEC[str(setting)][0]
    seq = values["settings_seq"]
    assert isinstance(seq, int)
    return struct.pack(">BBBB", 0x14, seq, results.index(str(values["result"])), tag)


def reference_settings(seq: int, values: dict[str, object]) -> bytes:
    out = bytearray((0x18, seq))
    for name, (tag, size, _) in sorted(SETTINGS_SPEC.items(), key=lambda item: item[1][0]):
        if name not in values:
            continue
        out.append(tag)
        if size:
            divisor = 10 if name.endswith("_c") or name == "humidity_alarm_pct" else 1
            value = values[name]
            assert isinstance(value, int | float)
            signed = name.endswith("_c")  # the temperatures; every other setting is unsigned
            out += round(value * divisor).to_bytes(size, "big", signed=signed)
    return bytes(out)


# --- round trips ------------------------------------------------------------------------------


@given(case=measurements())
def test_measurements_round_trip_and_match_the_page_layout(
    case: tuple[str, dict[str, object]],
) -> None:
    profile_id, values = case
    f_port, payload = encode_uplink(profile_id, values)
    assert f_port == MEASUREMENT_PORTS[profile_id]
    assert payload == reference_uplink(profile_id, values)
    decoded = decode_uplink(profile_id, f_port, payload)
    assert decoded == values
    assert set(decoded) == set(values)
    assert encode_uplink(profile_id, decoded) == (f_port, payload)
    # The node-side calls are the same functions.
    assert node.encode_measurement(profile_id, values) == payload
    assert node.decode_measurement(profile_id, payload) == values
    for name, value in decoded.items():
        # Scaled values decode as floats, integers as ints, flags as bools.
        if name in ("temperature_c", "humidity_pct"):
            assert type(value) is float
        elif name in ("occupied", "tilt_alarm"):
            assert type(value) is bool
        else:
            assert type(value) is int


@given(values=MEASUREMENTS["parking-v1"])
def test_the_per_profile_functions(values: dict[str, object]) -> None:
    payload = node.encode_parking(values)
    assert node.decode_parking(payload) == values
    assert len(payload) == 6


@given(values=MEASUREMENTS["waste-bin-v1"])
def test_the_waste_bin_functions(values: dict[str, object]) -> None:
    payload = node.encode_waste_bin(values)
    assert node.decode_waste_bin(payload) == values
    assert len(payload) == 9


@given(values=MEASUREMENTS["environment-v1"])
def test_the_environment_functions(values: dict[str, object]) -> None:
    payload = node.encode_environment(values)
    assert node.decode_environment(payload) == values
    assert len(payload) == 9


@given(values=DEVICE_MESSAGES, profile_id=st.sampled_from(PROFILE_IDS))
def test_device_messages_round_trip(values: dict[str, object], profile_id: str) -> None:
    f_port, payload = encode_uplink(profile_id, values)
    assert f_port == 20
    assert payload == reference_device_message(values)
    assert decode_uplink(profile_id, 20, payload) == values
    assert node.decode_device_message(payload) == values
    assert len(payload) <= MAX_PAYLOAD_SF12


@given(case=downlinks())
def test_settings_round_trip_within_one_sf12_downlink(
    case: tuple[str, int, dict[str, object]],
) -> None:
    profile_id, seq, values = case
    f_port, payload = encode_settings(profile_id, values, seq=seq)
    assert f_port == 21
    assert payload == reference_settings(seq, values)
    assert len(payload) <= MAX_PAYLOAD_SF12 == 51
    assert decode_settings(profile_id, 21, payload) == SettingsDownlink(seq, values)
    assert node.decode_settings(payload) == (seq, values)
    assert node.decode_settings(payload, profile_id) == (seq, values)
    assert node.encode_settings(seq, values, profile_id) == payload


def test_every_combination_of_settings_fits_one_downlink_at_sf12() -> None:
    # Every subset of the tags, each at its widest value (sizes are fixed per tag), encodes
    # within 51 bytes: header, seq, then a tag byte and the value per setting.
    widest: dict[str, object] = {}
    for _, name, size, _, divisor, _, high, _ in node.SETTINGS_TABLE:
        widest[name] = True if size == 0 else (high if divisor == 1 else high / divisor)
    names = list(widest)
    assert sorted(names) == sorted(SETTINGS_SPEC)
    largest = 0
    count = 0
    for length in range(1, len(names) + 1):
        for combination in itertools.combinations(names, length):
            payload = node.encode_settings(255, {name: widest[name] for name in combination})
            expected = 2 + sum(1 + SETTINGS_SPEC[name][1] for name in combination)
            assert len(payload) == expected <= MAX_PAYLOAD_SF12
            largest = max(largest, len(payload))
            count += 1
    assert count == 2 ** len(names) - 1 == 1023
    assert largest == 27


def test_the_size_limit_is_the_eu868_dr0_payload() -> None:
    assert node.MAX_PAYLOAD_SF12 == MAX_PAYLOAD_SF12 == 51


def test_every_uplink_fits_one_sf12_uplink() -> None:
    sizes = {
        "parking-v1": 6,
        "waste-bin-v1": 9,
        "environment-v1": 9,
    }
    for profile_id, size in sizes.items():
        values: dict[str, object] = {"occupied": True} if profile_id == "parking-v1" else {}
        if profile_id == "waste-bin-v1":
            values = {"tilt_alarm": True}
        assert len(encode_uplink(profile_id, values)[1]) == size <= MAX_PAYLOAD_SF12


@given(values=st.floats(-40, 125), profile_id=st.sampled_from(["parking-v1", "environment-v1"]))
def test_quantise_rounds_to_the_step_and_then_encodes(values: float, profile_id: str) -> None:
    raw: dict[str, object] = {"temperature_c": values, "battery_mv": 3601.7}
    if profile_id == "parking-v1":
        raw["occupied"] = False
    step = 0.1 if profile_id == "parking-v1" else 0.01
    rounded = node.quantise(profile_id, raw)
    assert rounded["battery_mv"] == 3602
    temperature = rounded["temperature_c"]
    assert isinstance(temperature, float)
    assert abs(temperature - values) <= step / 2 + 1e-9
    f_port, payload = encode_uplink(profile_id, raw, quantise=True)
    assert decode_uplink(profile_id, f_port, payload) == rounded
    assert raw["battery_mv"] == 3601.7  # the caller's dict is left alone


def test_quantise_leaves_what_it_cannot_round() -> None:
    values: dict[str, object] = {"occupied": True, "temperature_c": float("nan"), "x": 1.5}
    rounded = node.quantise("parking-v1", values)
    assert rounded["x"] == 1.5
    assert rounded["temperature_c"] != rounded["temperature_c"]
    del values["x"]
    with pytest.raises(PayloadError, match="temperature_c must be a number"):
        encode_uplink("parking-v1", values, quantise=True)
    # Half to even, on the integer count of steps: 21.25 is 212.5 tenths.
    assert node.quantise("parking-v1", {"temperature_c": 21.25}) == {"temperature_c": 21.2}
    assert node.quantise("parking-v1", {"temperature_c": 21.35}) == {"temperature_c": 21.4}


# --- the demo's call --------------------------------------------------------------------------


def test_the_demo_call_round_trips() -> None:
    values = {"occupied": True, "battery_mv": 3600, "temperature_c": 21.5}
    f_port, payload = encode_uplink("parking-v1", values)
    assert (f_port, payload) == (10, bytes.fromhex("11010e1000d7"))
    assert decode_uplink("parking-v1", f_port, payload) == values


# --- telemetry names ----------------------------------------------------------------------------

TELEMETRY_NAMES = {name for _, name, kind, _ in FIELDS if kind in (BOOL, INT, SCALED)}


@given(case=measurements())
@settings(max_examples=60)
def test_decoded_measurements_pack_into_telemetry_without_the_extension_map(
    case: tuple[str, dict[str, object]],
) -> None:
    profile_id, values = case
    f_port, payload = encode_uplink(profile_id, values)
    decoded = decode_uplink(profile_id, f_port, payload)
    assert set(decoded) <= TELEMETRY_NAMES
    reading = Reading(bytes(8), 1_760_000_000, decoded, -100, 5.0, fcnt=7)
    data = encode_batch(Batch(bytes(8), 1, 1_760_000_000, [reading]))
    row = cbor2.loads(data)[4]
    mask = row[0] if isinstance(row[0], int) else 0
    assert not mask >> EXTENSION_BIT & 1
    assert decode_batch(data).readings[0].values == decoded


def test_every_measurement_value_is_a_telemetry_name() -> None:
    for profile in PROFILES.values():
        assert {quantity.name for quantity in profile.values} <= TELEMETRY_NAMES


# --- strictness -----------------------------------------------------------------------------------

SAMPLES = [
    ("parking-v1", {"occupied": True, "battery_mv": 3600, "temperature_c": 21.5}),
    ("waste-bin-v1", {"tilt_alarm": True, "fill_pct": 7, "distance_mm": 900, "battery_mv": 3}),
    ("environment-v1", {"temperature_c": -3.07, "humidity_pct": 51.2, "co2_ppm": 415}),
    (
        "parking-v1",
        {"message": "status", "battery_mv": 3000, "uptime_s": 5, "report_interval_s": 60},
    ),
    ("parking-v1", {"message": "boot", "firmware": "0.10.255", "reset_reason": "other"}),
    ("parking-v1", {"message": "settings_ack", "settings_seq": 0, "result": "invalid"}),
]


@pytest.mark.parametrize(("profile_id", "values"), SAMPLES)
def test_truncated_and_extended_uplinks_are_refused(
    profile_id: str, values: dict[str, object]
) -> None:
    f_port, payload = encode_uplink(profile_id, values)
    for end in range(len(payload)):
        with pytest.raises(PayloadError) as caught:
            decode_uplink(profile_id, f_port, payload[:end])
        assert caught.value.offset == end
    for extra in (b"\x00", b"\xff", payload):
        with pytest.raises(PayloadError, match=f"expected {len(payload)} bytes"):
            decode_uplink(profile_id, f_port, payload + extra)


@pytest.mark.parametrize(("profile_id", "values"), SAMPLES)
def test_single_byte_mutations_are_refused_or_canonical(
    profile_id: str, values: dict[str, object]
) -> None:
    # Every byte set to every value: the decoder refuses with PayloadError, or the result
    # encodes back to exactly the mutated bytes (one content, one encoding).
    f_port, payload = encode_uplink(profile_id, values)
    accepted = 0
    for at in range(len(payload)):
        for byte in range(256):
            mutated = payload[:at] + bytes((byte,)) + payload[at + 1 :]
            try:
                decoded = decode_uplink(profile_id, f_port, mutated)
            except PayloadError:
                continue
            accepted += 1
            assert encode_uplink(profile_id, decoded) == (f_port, mutated)
    assert accepted > len(payload)


def test_headers_are_checked_before_the_length() -> None:
    for header in range(256):
        data = bytes((header,)) + bytes(5)
        err = typed_error_or_none(PayloadError, node.decode_parking, data)
        if header >> 4 != 1:
            assert err is not None
            assert f"layout version {header >> 4} (header 0x{header:02x})" in str(err)
        elif header != 0x11:
            assert err is not None
            assert f"is message type {header & 15} " in str(err)
        else:
            assert err is None


@pytest.mark.parametrize(
    ("profile_id", "payload", "fragment"),
    [
        ("parking-v1", "11800e1000d7", "flags 0x80 have reserved bits 0x80 set"),
        ("waste-bin-v1", "110250019c00b90e03", "flags 0x02 have reserved bits 0x02 set"),
        ("parking-v1", "11012ee100d7", "battery_mv 12001 mV is outside 0 .. 12000 mV"),
        ("parking-v1", "11010e10fe6f", "temperature_c -40.1 °C is outside"),
        ("waste-bin-v1", "110050271100b90e03", "distance_mm 10001 mm is outside"),
        ("environment-v1", "1130d5ffffffffffff", "temperature_c 125.01 °C is outside"),
        ("environment-v1", "11ffff03e9ffffffff", "humidity_pct 100.1 %RH is outside"),
        ("environment-v1", "11ffffffff9c41ffff", "co2_ppm 40001 ppm is outside"),
        ("environment-v1", "11fffffffffffffffe", "battery_mv 65534 mV is outside"),
    ],
)
def test_reserved_bits_and_out_of_range_values_are_refused(
    profile_id: str, payload: str, fragment: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_uplink(profile_id, MEASUREMENT_PORTS[profile_id], bytes.fromhex(payload))
    assert fragment in str(caught.value)
    assert payload in str(caught.value)


def test_a_value_inside_the_range_near_the_edge_decodes() -> None:
    assert node.decode_parking(bytes.fromhex("11010e10047f")) == {
        "occupied": True,
        "battery_mv": 3600,
        "temperature_c": 115.1,
    }


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("", "empty payload"),
        ("12", "expected 10 bytes"),
        ("1301040206", "expected 7 bytes"),
        ("130104020600ff", "reset_reason 6 is undefined"),
        ("14070300", "result 3 is undefined"),
        ("14070109", "setting tag 0x09 is undefined"),
        ("15000000", "message type 5 (undefined); FPort 20 carries status (2), boot (3)"),
        ("11010e1000d7", "message type 1 (measurement); FPort 20"),
        ("18070450", "message type 8 (settings); FPort 20"),
        ("120e10000151800000003b", "expected 10 bytes"),
    ],
)
def test_malformed_device_messages_are_refused(data: str, fragment: str) -> None:
    with pytest.raises(PayloadError) as caught:
        node.decode_device_message(bytes.fromhex(data))
    assert fragment in str(caught.value)


def test_status_interval_outside_its_range_is_refused() -> None:
    with pytest.raises(PayloadError, match=r"report_interval_s 59 s is outside 60 \.\. 604800 s"):
        node.decode_device_message(bytes.fromhex("12ffffffffffff00003b"))
    assert node.decode_device_message(bytes.fromhex("12ffffffffffffffffff")) == {
        "message": "status"
    }


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("", "empty payload"),
        ("28070450", "layout version 2"),
        ("11070450", "message type 1 (measurement); FPort 21 carries settings (type 8)"),
        ("18", "expected header, seq and at least one setting"),
        ("1807", "expected header, seq and at least one setting"),
        ("180709", "setting tag 0x09 is undefined"),
        ("1807000000", "setting tag 0x00 is undefined"),
        ("1807010000", "report_interval_s needs 3 bytes, 2 left"),
        ("180701000000", "report_interval_s 0 s is outside 60 .. 604800 s"),
        ("18070200", "occupancy_sensitivity 0 level is outside 1 .. 10 level"),
        ("1807020b", "occupancy_sensitivity 11 level"),
        ("18070363", "bin_depth_mm needs 2 bytes, 1 left"),
        ("1807030063", "bin_depth_mm 99 mm is outside 100 .. 5000 mm"),
        ("18070465", "fill_alarm_pct 101 %"),
        ("18070703e9", "humidity_alarm_pct 100.1 %RH is outside 0.0 .. 100.0 %RH"),
        ("1807089c41", "co2_alarm_ppm 40001 ppm"),
        ("1807717170", "tag 0x71 after 0x71"),
        ("18077170", "tag 0x70 after 0x71"),
        ("18070450045a", "tag 0x04 after 0x04"),
        ("1807" + "70" * 50, "longer than one downlink at SF12 (51 bytes)"),
    ],
)
def test_malformed_settings_are_refused(data: str, fragment: str) -> None:
    with pytest.raises(PayloadError) as caught:
        node.decode_settings(bytes.fromhex(data))
    assert fragment in str(caught.value)
    assert isinstance(caught.value, CodecError)


@given(data=st.binary(max_size=60), f_port=st.sampled_from([0, 10, 11, 12, 20, 21, 224]))
@settings(max_examples=300)
def test_arbitrary_bytes_raise_only_payload_errors(data: bytes, f_port: int) -> None:
    for profile_id in PROFILE_IDS:
        _decode_or_refuse(profile_id, f_port, data)


@given(
    header=st.sampled_from([0x11, 0x12, 0x13, 0x14, 0x18, 0x21, 0x10]),
    rest=st.binary(max_size=12),
    profile_id=st.sampled_from(PROFILE_IDS),
    f_port=st.sampled_from([10, 11, 12, 20, 21]),
)
@settings(max_examples=400)
def test_plausible_bytes_decode_canonically_or_raise_payload_errors(
    header: int, rest: bytes, profile_id: str, f_port: int
) -> None:
    _decode_or_refuse(profile_id, f_port, bytes((header,)) + rest)


def _decode_or_refuse(profile_id: str, f_port: int, data: bytes) -> None:
    # Whatever the bytes: PayloadError, or values that encode back to the same bytes.
    if f_port == 21:
        try:
            seq, settings_ = node.decode_settings(data, profile_id)
        except PayloadError:
            return
        assert encode_settings(profile_id, settings_, seq=seq) == (21, data)
        return
    try:
        values = decode_uplink(profile_id, f_port, data)
    except PayloadError:
        return
    assert encode_uplink(profile_id, values) == (f_port, data)


# --- the encoders refuse --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile_id", "values", "fragment"),
    [
        ("parking-v1", {}, "occupied must be True or False, got None"),
        ("parking-v1", {"occupied": 1}, "occupied must be True or False, got 1"),
        ("parking-v1", {"occupied": True, "battery": 1}, "unknown value 'battery'"),
        ("parking-v1", {"occupied": True, "z": 1, "a": 2}, "unknown value 'a', 'z'; it takes"),
        ("parking-v1", {"occupied": True, 5: 1}, "unknown value 5"),
        ("parking-v1", {"occupied": True, "battery_mv": None}, "battery_mv must be an integer"),
        ("parking-v1", {"occupied": True, "battery_mv": True}, "0 .. 12000 mV, got True"),
        ("parking-v1", {"occupied": True, "battery_mv": 3600.0}, "got 3600.0"),
        ("parking-v1", {"occupied": True, "battery_mv": "3600"}, "got '3600'"),
        ("parking-v1", {"occupied": True, "battery_mv": 12001}, "battery_mv must be an integer"),
        ("parking-v1", {"occupied": True, "battery_mv": -1}, "0 .. 12000 mV"),
        ("parking-v1", {"occupied": True, "temperature_c": 21.53}, "whole number of 0.1 °C"),
        ("parking-v1", {"occupied": True, "temperature_c": 125.1}, "-40.0 .. 125.0 °C in steps"),
        ("parking-v1", {"occupied": True, "temperature_c": -41}, "got -41"),
        ("parking-v1", {"occupied": True, "temperature_c": float("inf")}, "got inf"),
        ("parking-v1", {"occupied": True, "temperature_c": float("nan")}, "got nan"),
        ("parking-v1", {"occupied": True, "temperature_c": 1e300}, "temperature_c must be"),
        ("parking-v1", {"occupied": True, "temperature_c": 5e-324}, "whole number of 0.1"),
        ("waste-bin-v1", {"tilt_alarm": False, "fill_pct": 101}, "fill_pct must be an integer"),
        ("waste-bin-v1", {"tilt_alarm": False, "fill_pct": 50.0}, "fill_pct must be an integer"),
        ("waste-bin-v1", {"occupied": False}, "unknown value 'occupied'"),
        ("environment-v1", {"humidity_pct": 45.55}, "whole number of 0.1 %RH"),
        ("environment-v1", {"temperature_c": 21.375}, "whole number of 0.01 °C"),
        ("environment-v1", {"co2_ppm": 40001}, "co2_ppm must be an integer 0 .. 40000 ppm"),
        ("environment-v1", [("co2_ppm", 1)], "values must be a mapping"),
        ("parking-v1", {"message": "measurement"}, "leave it out for a measurement"),
        ("parking-v1", {"message": "status", "uptime_s": 2**32 - 1}, "uptime_s must be"),
        ("parking-v1", {"message": "status", "occupied": True}, "unknown value 'occupied'"),
        ("parking-v1", {"message": "status", "report_interval_s": 59}, "60 .. 604800 s"),
        ("parking-v1", {"message": "boot", "reset_reason": "other"}, "firmware must be"),
        ("parking-v1", {"message": "boot", "firmware": "1.2", "reset_reason": "other"}, "1.2"),
        ("parking-v1", {"message": "boot", "firmware": "1.2.3.4"}, "firmware must be"),
        ("parking-v1", {"message": "boot", "firmware": "1.02.3"}, "firmware must be"),
        ("parking-v1", {"message": "boot", "firmware": "1.256.3"}, "firmware must be"),
        ("parking-v1", {"message": "boot", "firmware": "1.².3"}, "firmware must be"),
        ("parking-v1", {"message": "boot", "firmware": "1..3"}, "firmware must be"),
        ("parking-v1", {"message": "boot", "firmware": "1.2.3"}, "reset_reason must be one of"),
        ("parking-v1", {"message": "settings_ack", "result": "applied"}, "settings_seq must be"),
        ("parking-v1", {"message": "settings_ack", "settings_seq": 256}, "0 .. 255"),
        (
            "parking-v1",
            {"message": "settings_ack", "settings_seq": 1, "result": "ok"},
            "result must be one of applied, unsupported, invalid",
        ),
        (
            "parking-v1",
            {
                "message": "settings_ack",
                "settings_seq": 1,
                "result": "applied",
                "setting": "reboot",
            },
            "an 'applied' ack names no refused setting",
        ),
        (
            "parking-v1",
            {"message": "settings_ack", "settings_seq": 1, "result": "invalid", "setting": "x"},
            "setting must be one of report_interval_s",
        ),
    ],
)
def test_encoders_refuse_bad_values_naming_the_field(
    profile_id: str, values: Any, fragment: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        encode_uplink(profile_id, values)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("profile_id", "settings_", "seq", "fragment"),
    [
        ("parking-v1", {}, 1, "give at least one setting or command"),
        ("parking-v1", {"reboot": False}, 1, "reboot is a command: True, or leave it out"),
        ("parking-v1", {"reboot": 1}, 1, "reboot is a command"),
        ("parking-v1", {"reboot": True}, 256, "seq must be an integer 0 .. 255"),
        ("parking-v1", {"reboot": True}, -1, "seq must be"),
        ("parking-v1", {"report_interval_s": 59}, 1, "report_interval_s must be an integer"),
        ("parking-v1", {"report_interval_s": 604_801}, 1, "60 .. 604800 s"),
        ("parking-v1", {"occupancy_sensitivity": 0}, 1, "1 .. 10 level"),
        ("parking-v1", {"fill_alarm_pct": 50}, 1, "parking-v1 has no setting fill_alarm_pct"),
        ("parking-v1", {"nap_s": 5, "doze": 1}, 1, "unknown setting 'doze', 'nap_s'; known:"),
        ("waste-bin-v1", {"bin_depth_mm": 99}, 1, "100 .. 5000 mm"),
        ("waste-bin-v1", {"temperature_alarm_high_c": 60.05}, 1, "whole number of 0.1 °C"),
        ("environment-v1", {"humidity_alarm_pct": 100.1}, 1, "0.0 .. 100.0 %RH in steps of 0.1"),
        (
            "environment-v1",
            {"temperature_alarm_low_c": 20.5, "temperature_alarm_high_c": 20.0},
            1,
            "temperature_alarm_low_c 20.5 is above temperature_alarm_high_c 20.0",
        ),
        ("environment-v1", [("co2_alarm_ppm", 1)], 1, "settings must be a mapping"),
    ],
)
def test_settings_encoder_refuses(profile_id: str, settings_: Any, seq: int, fragment: str) -> None:
    with pytest.raises(PayloadError) as caught:
        encode_settings(profile_id, settings_, seq=seq)
    assert fragment in str(caught.value)


def test_equal_thresholds_are_allowed() -> None:
    values = {"temperature_alarm_low_c": 20.0, "temperature_alarm_high_c": 20.0}
    f_port, payload = encode_settings("environment-v1", values, seq=0)
    assert decode_settings("environment-v1", f_port, payload) == (0, values)


def test_node_side_settings_without_a_profile_take_every_setting() -> None:
    everything: dict[str, object] = {"occupancy_sensitivity": 3, "co2_alarm_ppm": 900}
    payload = node.encode_settings(5, everything)
    assert node.decode_settings(payload) == (5, everything)
    with pytest.raises(PayloadError, match="parking-v1 has no setting co2_alarm_ppm") as caught:
        node.decode_settings(payload, "parking-v1")
    assert caught.value.offset == 4


def test_node_side_calls_refuse_an_unknown_profile_and_non_bytes() -> None:
    with pytest.raises(PayloadError, match="unknown device profile 'bus-v1'; known: environ"):
        node.encode_uplink("bus-v1", {})
    with pytest.raises(PayloadError, match="unknown device profile 7"):
        node.decode_uplink(7, 10, b"")  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="a payload must be bytes, got str"):
        node.decode_parking("11010e1000d7")  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="values must be a dict, got list"):
        node.encode_parking([])  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="quantise: values must be a dict"):
        node.quantise("parking-v1", None)  # type: ignore[arg-type]
    assert node.decode_parking(bytearray.fromhex("11010e1000d7"))["battery_mv"] == 3600


def test_uplinks_on_a_foreign_port_are_refused() -> None:
    for profile_id, port in MEASUREMENT_PORTS.items():
        for other in (0, 1, 21, 224, True, *[p for p in MEASUREMENT_PORTS.values() if p != port]):
            with pytest.raises(PayloadError, match=f"{profile_id} uplinks use FPort {port}"):
                decode_uplink(profile_id, other, bytes.fromhex("11010e1000d7"))


# --- the registry -------------------------------------------------------------------------------


def test_the_builtin_profiles() -> None:
    assert sorted(PROFILES) == sorted(PROFILE_IDS)
    assert len(PROFILES) == 3
    for profile_id, port in MEASUREMENT_PORTS.items():
        profile = get_profile(profile_id)
        assert profile is PROFILES[profile_id]
        assert profile.id == profile_id
        assert profile.fports == (port, 20)
        assert profile.settings_fport == 21
        assert [quantity.name for quantity in profile.settings] == [
            name for name in SETTINGS_SPEC if name in PROFILE_SETTINGS[profile_id]
        ]
        described = profile.describe()
        assert json.loads(json.dumps(described)) == described
        assert described["id"] == profile_id
    parking = get_profile("parking-v1")
    assert parking.values == (
        Quantity("occupied", "", "bool"),
        Quantity("battery_mv", "mV", "int", 0, 12000, None, True),
        Quantity("temperature_c", "°C", "float", -40.0, 125.0, 0.1, True),
    )
    environment = get_profile("environment-v1")
    assert environment.values[0] == Quantity("temperature_c", "°C", "float", -40, 125, 0.01, True)
    assert get_profile("waste-bin-v1").settings[-1] == Quantity("reboot", "", "command")


def test_an_unknown_profile_is_a_typed_error_naming_the_known_ones() -> None:
    with pytest.raises(ProfileError) as caught:
        get_profile("bus-v1")
    assert str(caught.value) == (
        "unknown device profile 'bus-v1'; known: environment-v1, parking-v1, waste-bin-v1"
    )
    assert isinstance(caught.value, PayloadError)
    for call in (
        lambda: decode_uplink("bus-v1", 10, b"\x11"),
        lambda: encode_uplink("bus-v1", {}),
        lambda: encode_settings("bus-v1", {"reboot": True}, seq=1),
        lambda: decode_settings("bus-v1", 21, b"\x18\x01\x71"),
        lambda: describe("bus-v1", 10, b"\x11"),
    ):
        with pytest.raises(ProfileError, match="known: environment-v1"):
            call()
    with pytest.raises(ProfileError, match="unknown device profile None"):
        get_profile(None)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        PROFILES["bus-v1"]


def _counter_profile(profile_id: str = "counter-v1", **changes: Any) -> Profile:
    # A profile with a layout of its own: one byte, a people counter, on FPort 30.
    def decode(f_port: int, payload: bytes) -> dict[str, object]:
        if f_port != 30 or len(payload) != 1:
            raise PayloadError(f"counter-v1: one byte on FPort 30, got {payload.hex()}")
        return {"people": payload[0]}

    def encode(values: dict[str, object]) -> tuple[int, bytes]:
        people = values.get("people")
        if not isinstance(people, int) or not 0 <= people <= 255:
            raise PayloadError(f"counter-v1: people must be 0 .. 255, got {people!r}")
        return 30, bytes((people,))

    fields: dict[str, Any] = {
        "id": profile_id,
        "name": "people counter",
        "description": "counts people passing a door",
        "vendor": "example",
        "fports": (30,),
        "values": (Quantity("people", "", "int", 0, 255),),
        "decode": decode,
        "encode": encode,
    }
    fields.update(changes)
    return Profile(**fields)


def test_the_registry_takes_profiles_of_other_layouts() -> None:
    registry = PROFILES.with_profiles(_counter_profile())
    assert sorted(registry) == ["counter-v1", *sorted(PROFILE_IDS)]
    assert "counter-v1" not in PROFILES
    assert encode_uplink("counter-v1", {"people": 12}, registry=registry) == (30, b"\x0c")
    assert decode_uplink("counter-v1", 30, b"\x0c", registry=registry) == {"people": 12}
    assert encode_uplink("counter-v1", {"people": 12}, quantise=True, registry=registry) == (
        30,
        b"\x0c",
    )
    assert describe("counter-v1", 30, b"\x0c", registry=registry)["values"] == {"people": 12}
    with pytest.raises(ProfileError, match="counter-v1 takes no settings downlinks"):
        encode_settings("counter-v1", {"reboot": True}, seq=1, registry=registry)
    with pytest.raises(ProfileError, match="counter-v1 takes no settings downlinks"):
        decode_settings("counter-v1", 21, b"\x18\x01\x71", registry=registry)
    with pytest.raises(ProfileError, match="'counter-v1' is registered twice"):
        registry.with_profiles(_counter_profile())
    with pytest.raises(ProfileError, match="'parking-v1' is registered twice"):
        PROFILES.with_profiles(_counter_profile("parking-v1"))
    assert "counter-v1" in repr(registry)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"fports": (0,)}, "FPort 0 is not 1 .. 223"),
        ({"fports": (224,)}, "FPort 224 is not 1 .. 223"),
        ({"fports": (True,)}, "FPort True"),
        ({"settings_fport": 31}, "settings_fport, encode_settings and decode_settings go together"),
        ({"settings_fport": 30}, "settings FPort is also an uplink FPort"),
        ({"id": ""}, "a profile id must be non-empty text"),
    ],
)
def test_malformed_profiles_are_refused(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ProfileError, match=re.escape(fragment)):
        _counter_profile(**changes)


def test_a_registry_holds_only_profiles() -> None:
    with pytest.raises(ProfileError, match="a registry holds Profile objects"):
        PROFILES.with_profiles("counter-v1")  # type: ignore[arg-type]


def test_front_calls_check_their_arguments() -> None:
    with pytest.raises(PayloadError, match="a payload must be bytes, got str"):
        decode_uplink("parking-v1", 10, "11010e1000d7")  # type: ignore[arg-type]
    assert decode_uplink("parking-v1", 10, memoryview(bytes.fromhex("11010e1000d7")))
    with pytest.raises(PayloadError, match="settings downlinks use FPort 21, got 20"):
        decode_settings("parking-v1", 20, bytes.fromhex("180471"))
    with pytest.raises(PayloadError, match="got True"):
        decode_settings("parking-v1", True, bytes.fromhex("180471"))
    with pytest.raises(PayloadError, match="parking-v1 has no setting co2_alarm_ppm"):
        decode_settings("parking-v1", 21, bytes.fromhex("180708012c"))


def test_describe_is_json_ready_both_ways() -> None:
    up = describe("parking-v1", 10, bytes.fromhex("11010e1000d7"))
    assert up == {
        "format": "owlgate device payload",
        "profile": "parking-v1",
        "profile_name": "parking occupancy sensor",
        "f_port": 10,
        "direction": "uplink",
        "message": "measurement",
        "size_bytes": 6,
        "max_bytes_sf12": 51,
        "payload": "11010e1000d7",
        "values": {"occupied": True, "battery_mv": 3600, "temperature_c": 21.5},
        "units": {"battery_mv": "mV", "temperature_c": "°C"},
    }
    status = describe("waste-bin-v1", 20, bytes.fromhex("120e1000015180000384"))
    assert status["message"] == "status"
    assert status["values"] == {"battery_mv": 3600, "uptime_s": 86400, "report_interval_s": 900}
    assert status["units"] == {"battery_mv": "mV", "uptime_s": "s", "report_interval_s": "s"}
    down = describe("waste-bin-v1", 21, bytes.fromhex("1807010003840450060258"))
    assert down["direction"] == "downlink"
    assert down["message"] == "settings"
    assert down["seq"] == 7
    assert down["values"] == {
        "report_interval_s": 900,
        "fill_alarm_pct": 80,
        "temperature_alarm_high_c": 60.0,
    }
    assert down["units"] == {
        "report_interval_s": "s",
        "fill_alarm_pct": "%",
        "temperature_alarm_high_c": "°C",
    }
    for out in (up, status, down):
        assert json.loads(json.dumps(out)) == out


# --- the format page ---------------------------------------------------------------------------


def _page_rows(columns: int) -> list[list[str]]:
    rows = []
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in PROFILE_IDS and len(cells) == columns:
            rows.append(cells)
    return rows


def test_the_page_examples_decode_and_encode() -> None:
    rows = _page_rows(4)
    assert len(rows) == 15
    seen = set()
    for profile_id, port_text, payload_cell, decoded_cell in rows:
        f_port = int(port_text)
        payload = bytes.fromhex(payload_cell.strip("`"))
        expected = json.loads(decoded_cell.strip("`"))
        if f_port == 21:
            assert decode_settings(profile_id, f_port, payload) == (
                expected["seq"],
                expected["settings"],
            )
            assert encode_settings(profile_id, expected["settings"], seq=expected["seq"]) == (
                21,
                payload,
            )
            seen.add("settings")
        else:
            assert decode_uplink(profile_id, f_port, payload) == expected
            assert encode_uplink(profile_id, expected) == (f_port, payload)
            seen.add(expected.get("message", profile_id))
    assert seen == {*PROFILE_IDS, "status", "boot", "settings_ack", "settings"}


def test_the_page_errors_are_what_the_decoders_say() -> None:
    rows = _page_rows(5)
    assert len(rows) == 17
    for profile_id, port_text, payload_cell, offset_text, message in rows:
        f_port = int(port_text)
        payload = bytes.fromhex(payload_cell.strip("`"))
        decode = decode_settings if f_port == 21 else decode_uplink
        with pytest.raises(PayloadError) as caught:
            decode(profile_id, f_port, payload)
        assert str(caught.value) == message
        assert caught.value.offset == (int(offset_text) if offset_text else None)


def test_the_page_encoder_errors_are_what_the_encoders_say() -> None:
    block = PAGE.read_text().split("Encoder errors look like this:\n\n```\n", 1)[1]
    lines = block.split("```", 1)[0].splitlines()
    calls: list[Callable[[], object]] = [
        lambda: encode_uplink("parking-v1", {"occupied": True, "temperature_c": 21.53}),
        lambda: encode_uplink("parking-v1", {"occupied": True, "battery_mv": 3600.0}),
        lambda: encode_uplink("parking-v1", {"battery_mv": 3600}),
        lambda: encode_uplink("parking-v1", {"occupied": True, "battery": 3600}),
        lambda: encode_settings("parking-v1", {"co2_alarm_ppm": 900}, seq=1),
    ]
    assert len(lines) == len(calls)
    for line, call in zip(lines, calls, strict=True):
        with pytest.raises(PayloadError) as caught:
            call()
        assert str(caught.value) == line


def test_the_page_python_example_runs() -> None:
    page = PAGE.read_text()
    blocks = [part.split("```", 1)[0] for part in page.split("```python\n")[1:]]
    assert len(blocks) == 1
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], str(PAGE), "exec"), namespace)
    assert namespace["f_port"] == 21


def test_the_page_byte_tables_match_the_module() -> None:
    # Each measurement table row "| offset | size | `name` | ..." against the node table.
    page = PAGE.read_text()
    for profile_id in PROFILE_IDS:
        section = page.split(f"### {profile_id}:", 1)[1].split("###", 1)[0]
        rows = re.findall(r"^\| (\d+) \| (\d+) \| `(\w+)` \|", section, flags=re.MULTILINE)
        _, _, flags, fields, _ = node.PROFILES[profile_id]
        offset = 2 if flags else 1
        expected = []
        for name, size, *_ in fields:
            expected.append((str(offset), str(size), name))
            offset += size
        assert rows == expected
