"""Gateway health messages: round trips with absent fields, strictness, throttle flags, describe."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.errors import CborError, CodecError, SchemaError
from owlgate.codecs.health import (
    Health,
    RadioCounters,
    Throttle,
    decode_health,
    describe_health,
    encode_health,
    parse_get_throttled,
    throttle_flags,
)
from owlgate.codecs.node import cbor
from tests.conftest import REPO, typed_error_or_none

GATEWAY = bytes.fromhex("b827ebfffe6c1a2b")
CONFIG_HASH = bytes.fromhex("5f1c8e2a") * 8
TIME = 1_760_000_000  # 2025-10-09T08:53:20Z

u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, 100_000)


@st.composite
def healths(draw: st.DrawFn) -> Health:
    """Any valid Health: every optional field present or absent, values over their full range."""
    depth = draw(st.just(0) | small | u64)
    loads = draw(st.none() | st.tuples(*[st.integers(0, 2**32 - 1).map(lambda n: n / 100)] * 3))
    outbox_size = draw(st.none() | st.tuples(u64, u64))
    memory = draw(st.none() | st.tuples(u64, u64).map(sorted))
    disk = draw(st.none() | st.tuples(u64, u64).map(sorted))
    return Health(
        gateway_id=draw(st.binary(min_size=8, max_size=8)),
        seq=draw(small | u64),
        time_s=draw(st.integers(TIME - 10, TIME + 10) | u64),
        uptime_s=draw(small | u64),
        agent_uptime_s=draw(small | u64),
        agent_version=draw(
            st.text(min_size=1, max_size=16).filter(lambda t: len(t.encode()) <= 64)
        ),
        config_hash=draw(st.binary(min_size=32, max_size=32)),
        interval_s=draw(st.integers(1, 3600) | st.integers(1, 2**64 - 1)),
        config_seq=draw(st.none() | small | u64),
        cpu_temp_c=draw(
            st.none()
            | st.integers(-400, 1200).map(lambda n: n / 10)
            | st.integers(-(2**31) + 1, 2**31 - 1).map(lambda n: n / 10)
        ),
        throttled=draw(st.none() | st.integers(0, 2**32 - 1) | st.sampled_from([0, 0x50005])),
        load_1m=None if loads is None else loads[0],
        load_5m=None if loads is None else loads[1],
        load_15m=None if loads is None else loads[2],
        mem_used_bytes=None if memory is None else memory[0],
        mem_total_bytes=None if memory is None else memory[1],
        disk_used_bytes=None if disk is None else disk[0],
        disk_total_bytes=None if disk is None else disk[1],
        radio=draw(st.none() | st.builds(RadioCounters, u64, u64, u64, u64, u64)),
        backhaul_rtt_ms=draw(st.none() | small | u64),
        outbox_depth=depth,
        outbox_oldest_age_s=None if depth == 0 else draw(small | u64),
        outbox_evicted=draw(small | u64),
        reconnects=draw(small | u64),
        outbox_bytes=None if outbox_size is None else outbox_size[0],
        outbox_max_bytes=None if outbox_size is None else outbox_size[1],
    )


# A Raspberry Pi gateway with everything measured: the worked example of health.md.
EXAMPLE = Health(
    gateway_id=GATEWAY,
    seq=2880,
    time_s=TIME,
    uptime_s=864_000,
    agent_uptime_s=86_400,
    agent_version="0.1.0",
    config_hash=CONFIG_HASH,
    config_seq=12,
    cpu_temp_c=48.3,
    throttled=0x50005,
    load_1m=0.42,
    load_5m=0.35,
    load_15m=0.3,
    mem_used_bytes=312_000_000,
    mem_total_bytes=948_000_000,
    disk_used_bytes=2_500_000_000,
    disk_total_bytes=15_000_000_000,
    radio=RadioCounters(
        received=12_040, crc_ok=11_800, crc_bad=240, forwarded=11_795, transmitted=96
    ),
    backhaul_rtt_ms=48,
    outbox_depth=3,
    outbox_oldest_age_s=95,
    outbox_evicted=0,
    reconnects=2,
)
# A laptop running the agent: no throttle flags, no radio, nothing waiting.
LAPTOP = Health(
    gateway_id=GATEWAY,
    seq=0,
    time_s=TIME,
    uptime_s=3_600,
    agent_uptime_s=10,
    agent_version="0.1.0",
    config_hash=CONFIG_HASH,
)


# --- round trips ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(healths())
def test_round_trip(health: Health) -> None:
    data = encode_health(health)
    assert decode_health(data) == health
    assert cbor.dumps(cbor.loads(data)) == data
    # An independent decoder sees the same map.
    assert cbor2.loads(data) == cbor.loads(data)


def test_absent_fields_are_left_out() -> None:
    assert cbor2.loads(encode_health(LAPTOP)) == {
        0: 1,
        1: GATEWAY,
        2: 0,
        3: TIME,
        4: 30,
        5: 3_600,
        6: 10,
        7: "0.1.0",
        8: CONFIG_HASH,
        17: 0,
        19: 0,
        20: 0,
    }
    decoded = decode_health(encode_health(LAPTOP))
    assert decoded.throttled is None
    assert decoded.radio is None
    assert decoded.cpu_temp_c is None
    assert decoded.load_1m is None


def test_every_field_has_its_documented_key() -> None:
    assert cbor2.loads(encode_health(EXAMPLE)) == {
        0: 1,
        1: GATEWAY,
        2: 2880,
        3: TIME,
        4: 30,
        5: 864_000,
        6: 86_400,
        7: "0.1.0",
        8: CONFIG_HASH,
        9: 12,
        10: 483,
        11: 0x50005,
        12: [42, 35, 30],
        13: [312_000_000, 948_000_000],
        14: [2_500_000_000, 15_000_000_000],
        15: [12_040, 11_800, 240, 11_795, 96],
        16: 48,
        17: 3,
        18: 95,
        19: 0,
        20: 2,
    }


def test_outbox_size_travels_as_a_pair_under_key_21() -> None:
    health = _with(LAPTOP, outbox_bytes=210_000_000, outbox_max_bytes=268_435_456)
    assert cbor2.loads(encode_health(health))[21] == [210_000_000, 268_435_456]
    decoded = decode_health(encode_health(health))
    assert (decoded.outbox_bytes, decoded.outbox_max_bytes) == (210_000_000, 268_435_456)
    assert describe_health(encode_health(health))["outbox"] == {
        "depth": 0,
        "oldest_age_s": None,
        "evicted": 0,
        "bytes": 210_000_000,
        "max_bytes": 268_435_456,
        "used_pct": 78.2,
    }
    with pytest.raises(SchemaError, match="outbox_bytes and outbox_max_bytes go together"):
        encode_health(_with(LAPTOP, outbox_bytes=1))


def test_scaled_values_are_rounded_to_their_step() -> None:
    def after(**fields: object) -> Health:
        return decode_health(encode_health(_with(LAPTOP, **fields)))

    assert after(cpu_temp_c=48.37).cpu_temp_c == 48.4
    assert after(cpu_temp_c=-5).cpu_temp_c == -5.0
    assert after(cpu_temp_c=55.05).cpu_temp_c in (55.0, 55.1)  # 550.5 in binary: either side
    loads = after(load_1m=1.234, load_5m=2, load_15m=0.005)
    assert (loads.load_1m, loads.load_5m, loads.load_15m) == (1.23, 2.0, 0.0)


def test_a_full_message_is_small() -> None:
    # Every field present, 8-byte gateway id and 32-byte config hash included.
    assert len(encode_health(EXAMPLE)) == 155
    assert len(encode_health(LAPTOP)) == 78


# --- the documentation ------------------------------------------------------------------------


def test_worked_example_of_the_docs_is_what_the_encoder_writes() -> None:
    doc = (REPO / "docs" / "formats" / "health.md").read_text()
    block = doc.split("155 bytes:\n\n```\n", 1)[1].split("```", 1)[0]
    assert bytes.fromhex(block.replace("\n", "")) == encode_health(EXAMPLE)
    laptop = doc.split("78 bytes:\n\n```\n", 1)[1].split("```", 1)[0]
    assert bytes.fromhex(laptop.replace("\n", "")) == encode_health(LAPTOP)


# --- encoder refusals -------------------------------------------------------------------------


def _with(base: Health, **fields: object) -> Health:
    values = {name: getattr(base, name) for name in Health.__dataclass_fields__}
    values.update(fields)
    return Health(**values)


@pytest.mark.parametrize(
    ("health", "words"),
    [
        pytest.param(_with(EXAMPLE, gateway_id=GATEWAY[:7]), "gateway_id", id="short gateway id"),
        pytest.param(_with(EXAMPLE, config_hash=bytes(31)), "config_hash", id="short hash"),
        pytest.param(_with(EXAMPLE, agent_version=""), "agent_version", id="empty version"),
        pytest.param(_with(EXAMPLE, agent_version="v" * 65), "agent_version", id="long version"),
        pytest.param(_with(EXAMPLE, interval_s=0), "interval_s", id="interval 0"),
        pytest.param(_with(EXAMPLE, seq=-1), "seq", id="negative seq"),
        pytest.param(_with(EXAMPLE, uptime_s=True), "uptime_s", id="bool uptime"),
        pytest.param(_with(EXAMPLE, time_s=2**64), "time_s", id="time beyond u64"),
        pytest.param(_with(EXAMPLE, cpu_temp_c=float("nan")), "cpu_temp_c", id="NaN"),
        pytest.param(_with(EXAMPLE, cpu_temp_c=float("inf")), "cpu_temp_c", id="infinity"),
        pytest.param(_with(EXAMPLE, cpu_temp_c="48"), "cpu_temp_c", id="text temperature"),
        pytest.param(_with(EXAMPLE, cpu_temp_c=10**400), "cpu_temp_c", id="huge temperature"),
        pytest.param(_with(EXAMPLE, throttled="0x5"), "throttled", id="text throttled"),
        pytest.param(_with(EXAMPLE, throttled=5.0), "throttled", id="float throttled"),
        pytest.param(_with(EXAMPLE, throttled=2**32), "throttled", id="throttled beyond 32 bits"),
        pytest.param(_with(EXAMPLE, load_15m=None), "go together", id="two loads"),
        pytest.param(_with(EXAMPLE, load_1m=-0.5), "load", id="negative load"),
        pytest.param(_with(EXAMPLE, mem_total_bytes=None), "go together", id="memory used only"),
        pytest.param(
            _with(EXAMPLE, disk_used_bytes=2 * 10**10), "exceeds total", id="disk over total"
        ),
        pytest.param(_with(EXAMPLE, radio=(1, 2, 3, 4, 5)), "RadioCounters", id="radio tuple"),
        pytest.param(
            _with(EXAMPLE, radio=RadioCounters(1, 2, 3, 4, -5)), "radio.transmitted", id="radio"
        ),
        pytest.param(
            _with(EXAMPLE, outbox_oldest_age_s=None), "exactly when", id="depth without age"
        ),
        pytest.param(_with(EXAMPLE, outbox_depth=0), "exactly when", id="age without depth"),
        pytest.param(_with(EXAMPLE, backhaul_rtt_ms=4.5), "backhaul_rtt_ms", id="float rtt"),
    ],
)
def test_encoder_refuses_out_of_range_fields(health: Health, words: str) -> None:
    with pytest.raises(SchemaError) as caught:
        encode_health(health)
    assert words in caught.value.message


# --- decoder strictness -----------------------------------------------------------------------

LAPTOP_MAP = cbor2.loads(encode_health(LAPTOP))


DROP = object()


def _map(key: int, value: object) -> bytes:
    """The laptop's message with one entry replaced, added, or (value DROP) removed."""
    content = dict(LAPTOP_MAP)
    if value is DROP:
        del content[key]
    else:
        content[key] = value
    return cbor.dumps(content)


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (_map(0, 2), SchemaError, "unsupported health format version 2"),
        (_map(0, True), SchemaError, "version True"),
        (_map(0, 1.0), SchemaError, "version 1.0"),
        (_map(0, DROP), SchemaError, "no version (key 0)"),
        (_map(22, 0), SchemaError, "unknown health key 22"),
        (_map(8, DROP), SchemaError, "no config_hash (key 8)"),
        (_map(17, DROP), SchemaError, "no outbox_depth"),
        (cbor.dumps({**LAPTOP_MAP, "x": 1}), SchemaError, "unknown health key 'x'"),
        (cbor.dumps({**LAPTOP_MAP, -1: 1}), SchemaError, "unknown health key -1"),
        (_map(1, GATEWAY.hex()), SchemaError, "key 1 (gateway_id)"),
        (_map(2, -1), SchemaError, "key 2 (seq)"),
        (_map(4, 0), SchemaError, "key 4 (interval_s) must be an integer 1 .."),
        (_map(3, 1.5), SchemaError, "key 3 (time_s)"),
        (_map(7, ""), SchemaError, "key 7 (agent_version)"),
        (_map(8, bytes(20)), SchemaError, "key 8 (config_hash)"),
        (_map(10, 48.3), SchemaError, "key 10 (cpu_temp_c)"),
        (_map(10, 2**31), SchemaError, "key 10 (cpu_temp_c)"),
        (_map(11, 2**32), SchemaError, "key 11 (throttled)"),
        (_map(12, [1, 2]), SchemaError, "array of 3 integers"),
        (_map(12, [1, 2, -3]), SchemaError, "key 12 (load)"),
        (_map(13, [2, 1]), SchemaError, "used 2 > total 1"),
        (_map(14, {0: 1}), SchemaError, "key 14 (disk)"),
        (_map(15, [1, 2, 3, 4]), SchemaError, "array of 5"),
        (_map(16, None), SchemaError, "key 16 (backhaul_rtt_ms)"),
        (_map(18, 5), SchemaError, "exactly when"),
        (_map(17, 4), SchemaError, "exactly when"),
        (cbor.dumps([1, 2]), SchemaError, "a health message is a CBOR map"),
        (encode_health(LAPTOP) + b"\x00", CborError, "trailing"),
        (encode_health(LAPTOP)[:-1], CborError, "truncated"),
        # Well-formed, not deterministic: keys out of order, an integer in a longer head.
        (cbor2.dumps(dict(reversed(list(LAPTOP_MAP.items())))), CborError, "4.2.1"),
        (b"\xa1\x18\x00\x01", CborError, "4.2.1"),
    ],
)
def test_structural_problems_are_named(data: bytes, error: type[CodecError], words: str) -> None:
    with pytest.raises(error) as caught:
        decode_health(data)
    assert type(caught.value) is error
    assert words in caught.value.message, caught.value.message


def test_boolean_and_float_keys_are_not_integer_keys() -> None:
    # On CPython True == 1 and 1.0 == 1, so such keys would find the entry of key 1.
    for alias in (True, 1.0):
        content = {key: value for key, value in LAPTOP_MAP.items() if key != 1}
        content[alias] = GATEWAY
        with pytest.raises(SchemaError, match="unknown health key"):
            decode_health(cbor.dumps(content))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    typed_error_or_none(CodecError, decode_health, data)
    typed_error_or_none(CodecError, describe_health, data)


plausible = (
    st.integers(-3, 2**33)
    | st.sampled_from([None, True, 1.5, "0.1.0", GATEWAY, CONFIG_HASH, [1, 2, 3], [5, 9], []])
    | st.lists(st.integers(-1, 2**64 - 1), max_size=6)
    | st.binary(max_size=40)
)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(st.integers(-1, 22), plausible, max_size=6),
    st.lists(st.integers(0, 20), max_size=4),
)
def test_accepted_input_is_canonical(changes: dict[int, object], dropped: list[int]) -> None:
    # Health-like maps: a valid message with some entries replaced, added or dropped. Whatever
    # the decoder accepts, the encoder writes back byte for byte; the rest is a typed error.
    content = {**LAPTOP_MAP, **changes}
    for key in dropped:
        content.pop(key, None)
    data = cbor.dumps(content)
    if typed_error_or_none(CodecError, decode_health, data) is None:
        assert encode_health(decode_health(data)) == data


@settings(max_examples=200, deadline=None)
@given(healths(), st.data())
def test_bit_flips_are_refused_or_decode_to_what_they_say(
    health: Health, data: st.DataObject
) -> None:
    encoded = bytearray(encode_health(health))
    at = data.draw(st.integers(0, len(encoded) - 1))
    encoded[at] ^= 1 << data.draw(st.integers(0, 7))
    mutated = bytes(encoded)
    error = typed_error_or_none(CodecError, decode_health, mutated)
    if error is None:
        decoded = decode_health(mutated)
        assert decoded != health
        assert encode_health(decoded) == mutated
    else:
        assert isinstance(error, CborError | SchemaError)


# --- throttle flags ---------------------------------------------------------------------------


def test_throttle_bits_are_those_of_vcgencmd() -> None:
    # REFERENCE.md: bits 0..3 now, 16..19 since boot.
    assert Throttle.UNDER_VOLTAGE.value == 1
    assert Throttle.ARM_FREQ_CAPPED.value == 2
    assert Throttle.THROTTLED.value == 4
    assert Throttle.SOFT_TEMP_LIMIT.value == 8
    assert Throttle.UNDER_VOLTAGE_OCCURRED.value == 1 << 16
    assert Throttle.SOFT_TEMP_LIMIT_OCCURRED.value == 1 << 19


@pytest.mark.parametrize(
    ("bits", "now", "since_boot"),
    [
        (0x0, [], []),
        (0x50005, ["under_voltage", "throttled"], ["under_voltage", "throttled"]),
        (0x50000, [], ["under_voltage", "throttled"]),
        (0xE0000, [], ["arm_freq_capped", "throttled", "soft_temp_limit"]),
        (0xF000F, *[["under_voltage", "arm_freq_capped", "throttled", "soft_temp_limit"]] * 2),
        (0x8, ["soft_temp_limit"], []),
    ],
)
def test_throttle_flags_are_named(bits: int, now: list[str], since_boot: list[str]) -> None:
    assert throttle_flags(bits) == {"bits": hex(bits), "now": now, "since_boot": since_boot}


def test_unknown_throttle_bits_are_kept_and_shown() -> None:
    assert throttle_flags(0x1_0100_0001) == {
        "bits": "0x101000001",
        "now": ["under_voltage"],
        "since_boot": [],
        "unknown_bits": "0x101000000",
    }
    decoded = decode_health(encode_health(_with(EXAMPLE, throttled=0x8000_0004)))
    assert decoded.throttled == 0x8000_0004
    assert isinstance(decoded.throttled, Throttle)
    assert Throttle.THROTTLED in decoded.throttled


def test_vcgencmd_output_is_parsed() -> None:
    assert parse_get_throttled("throttled=0x50005\n") == 0x50005
    assert parse_get_throttled("throttled=0x0") == Throttle(0)
    for text in ("", "throttled=50005", "throttled=0x", "temp=48.3'C", "throttled=0x123456789"):
        with pytest.raises(CodecError, match="vcgencmd"):
            parse_get_throttled(text)


# --- description ------------------------------------------------------------------------------


def test_describe_names_units_and_flags() -> None:
    described = describe_health(encode_health(EXAMPLE))
    json.dumps(described, allow_nan=False)
    assert described["gateway_id"] == "b827ebfffe6c1a2b"
    assert described["time_utc"] == "2025-10-09T08:53:20Z"
    assert described["cpu_temp_c"] == 48.3
    assert described["throttled"] == {
        "bits": "0x50005",
        "now": ["under_voltage", "throttled"],
        "since_boot": ["under_voltage", "throttled"],
    }
    assert described["load"] == {"1m": 0.42, "5m": 0.35, "15m": 0.3}
    assert described["memory"] == {
        "used_bytes": 312_000_000,
        "total_bytes": 948_000_000,
        "used_pct": 32.9,
    }
    assert described["radio"] == {
        "received": 12_040,
        "crc_ok": 11_800,
        "crc_bad": 240,
        "forwarded": 11_795,
        "transmitted": 96,
    }
    assert described["outbox"] == {
        "depth": 3,
        "oldest_age_s": 95,
        "evicted": 0,
        "bytes": None,
        "max_bytes": None,
        "used_pct": None,
    }
    assert described["config_hash"] == CONFIG_HASH.hex()
    assert described["size_bytes"] == 155


def test_describe_shows_absent_fields_as_null() -> None:
    described = describe_health(encode_health(LAPTOP))
    for name in ("throttled", "cpu_temp_c", "load", "memory", "disk", "radio", "config_seq"):
        assert described[name] is None, name
    assert described["outbox"] == {
        "depth": 0,
        "oldest_age_s": None,
        "evicted": 0,
        "bytes": None,
        "max_bytes": None,
        "used_pct": None,
    }
    far = describe_health(encode_health(_with(EXAMPLE, time_s=2**64 - 1)))
    assert far["time_utc"] is None  # beyond what an ISO date can say
    empty_disk = describe_health(
        encode_health(_with(EXAMPLE, disk_used_bytes=0, disk_total_bytes=0))
    )
    assert empty_disk["disk"] == {"used_bytes": 0, "total_bytes": 0, "used_pct": None}
