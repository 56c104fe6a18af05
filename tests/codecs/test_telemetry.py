"""The compact telemetry batch: round trips, determinism, sizes, strictness, cbor2 cross-check."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.errors import CborError, CodecError, SchemaError
from owlgate.codecs.node import cbor, telemetry
from owlgate.codecs.node.telemetry import (
    BOOL,
    FIELDS,
    INT,
    SCALED,
    Batch,
    Reading,
    decode_batch,
    describe_batch,
    encode_batch,
)
from tests.conftest import REPO, typed_error_or_none

GATEWAY = bytes.fromhex("b827ebfffe6c1a2b")
BASE_TIME = 1_760_000_000  # 2025-10-09T08:53:20Z

# --- data -------------------------------------------------------------------------------------

euis = st.binary(min_size=8, max_size=8)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
cbor_ints = st.integers(-(2**64), 2**64 - 1)
tenths = st.integers(-20_000, 20_000).map(lambda n: n / 10)
hundredths = st.integers(-20_000, 20_000).map(lambda n: n / 100)
# Values of any kind a decoder might produce; NaN is left out because NaN != NaN.
scalars = (
    st.booleans()
    | cbor_ints
    | st.floats(allow_nan=False)
    | tenths
    | hundredths
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.none()
)
any_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
TABLE_NAMES = sorted({name for _, name, kind, _ in FIELDS if kind in (BOOL, INT, SCALED)})
# Values that fit a row of the table, by name, so that the rows are exercised more often than
# the extension map.
FITTING = {
    "occupied": st.booleans(),
    "tilt_alarm": st.booleans(),
    "battery_mv": st.integers(0, 5000) | cbor_ints,
    "temperature_c": tenths | hundredths,
    "fill_pct": st.integers(0, 100) | tenths,
    "distance_mm": st.integers(0, 10_000),
    "humidity_pct": st.integers(0, 1000).map(lambda n: n / 10),
    "co2_ppm": st.integers(300, 5000),
}


@st.composite
def value_dicts(draw: st.DrawFn) -> dict[str, object]:
    values: dict[str, object] = {}
    for name in draw(st.lists(st.sampled_from(TABLE_NAMES), unique=True)):
        values[name] = draw(FITTING[name] | any_values)
    for name in draw(st.lists(st.text(max_size=12), max_size=3, unique=True)):
        values.setdefault(name, draw(any_values))
    return values


@st.composite
def readings(draw: st.DrawFn, base_time: int) -> Reading:
    return Reading(
        dev_eui=draw(euis),
        time_s=draw(st.integers(0, 2**64 - 1) | st.integers(base_time, base_time + 600)),
        values=draw(value_dicts()),
        rssi_dbm=draw(st.none() | st.integers(-(2**31) + 1, 2**31 - 1) | st.integers(-140, 0)),
        snr_db=draw(st.none() | st.integers(-(2**31) + 1, 2**31 - 1).map(lambda q: q / 4)),
        fcnt=draw(st.none() | u32),
        sf=draw(st.none() | st.integers(5, 12)),
        freq_hz=draw(st.none() | u32),
        gw_time_us=draw(st.none() | u32),
    )


@st.composite
def batches(draw: st.DrawFn, max_readings: int = 6) -> Batch:
    base_time = draw(u64 | st.integers(BASE_TIME - 10, BASE_TIME + 10))
    return Batch(
        gateway_id=draw(euis),
        seq=draw(u64),
        base_time=base_time,
        readings=draw(st.lists(readings(min(base_time, 2**64 - 700)), max_size=max_readings)),
        delayed=draw(st.booleans()),
    )


def parking_batch(count: int, seed: int, *, fcnt: bool = False, places: int = 1) -> Batch:
    """Parking sensors as a gateway sees them: a few seconds apart, plausible values."""
    rng = random.Random(seed)

    def parking(index: int) -> Reading:
        return Reading(
            dev_eui=bytes.fromhex("70b3d57ed0") + (0x1000 + index).to_bytes(3, "big"),
            time_s=BASE_TIME + 4 * index + rng.randrange(4),
            values={
                "occupied": rng.random() < 0.5,
                "battery_mv": rng.randrange(2900, 3650),
                "temperature_c": round(rng.uniform(-10, 35), places),
            },
            rssi_dbm=rng.randrange(-125, -60),
            snr_db=rng.randrange(-80, 40) / 4,
            fcnt=rng.randrange(200, 60_000) if fcnt else None,
        )

    rows = [parking(index) for index in range(count)]
    return Batch(GATEWAY, seq=rng.randrange(1, 2**32), base_time=BASE_TIME, readings=rows)


# --- round trips and determinism -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(batches())
def test_round_trip(batch: Batch) -> None:
    data = encode_batch(batch)
    assert decode_batch(data) == batch
    # The encoder's hand-written heads are exactly deterministic CBOR (RFC 8949 4.2.1).
    assert cbor.dumps(cbor.loads(data)) == data


@settings(max_examples=200, deadline=None)
@given(batches(), st.randoms(use_true_random=False))
def test_dict_order_does_not_change_bytes(batch: Batch, rng: random.Random) -> None:
    data = encode_batch(batch)
    for reading in batch.readings:
        items = list(reading.values.items())
        rng.shuffle(items)
        reading.values = dict(items)
    assert encode_batch(batch) == data


@settings(max_examples=500, deadline=None)
@given(
    cbor_ints
    | st.sampled_from([255, 256, 0xFFFF, 0x10000, 2**32 - 1, 2**32, -257, -0x10001, -(2**32) - 1])
)
def test_integer_items_are_what_cbor_dumps_writes(number: int) -> None:
    # The encoder writes integer heads itself (telemetry._int_item); they must be cbor.dumps's.
    assert telemetry._int_item(number) == cbor.dumps(number)


def test_scaled_rows_pick_the_coarsest_exact_scale() -> None:
    def mask_and_values(values: dict[str, object]) -> list[object]:
        batch = Batch(GATEWAY, 1, BASE_TIME, [Reading(bytes(8), BASE_TIME, values)])
        row = cbor2.loads(encode_batch(batch))[4]
        return [row[0], *row[5:]]

    assert mask_and_values({"temperature_c": 21.5}) == [1 << 3, 215]
    assert mask_and_values({"temperature_c": 21.37}) == [1 << 4, 2137]
    assert mask_and_values({"temperature_c": 21}) == [1 << 3, 210]
    # 1/16 degC steps (DS18B20) fit neither scale: the value travels unchanged.
    assert mask_and_values({"temperature_c": 21.0625}) == [1 << 15, {"temperature_c": 21.0625}]
    assert mask_and_values({"fill_pct": 42}) == [1 << 5, 42]
    assert mask_and_values({"fill_pct": 42.5}) == [1 << 6, 425]
    # An integer row takes integers only, so a float keeps its type through the extension.
    assert mask_and_values({"battery_mv": 3600.0}) == [1 << 15, {"battery_mv": 3600.0}]
    assert mask_and_values({"occupied": 1}) == [1 << 15, {"occupied": 1}]
    assert mask_and_values({"co2_ppm": 415, "x": None}) == [(1 << 10) | (1 << 15), 415, {"x": None}]


def test_scaled_values_decode_as_float() -> None:
    batch = Batch(GATEWAY, 1, BASE_TIME, [Reading(bytes(8), BASE_TIME, {"temperature_c": 21})])
    value = decode_batch(encode_batch(batch)).readings[0].values["temperature_c"]
    assert value == 21.0
    assert isinstance(value, float)


def test_snr_is_carried_in_quarter_db() -> None:
    def snr_after(snr: float) -> object:
        reading = Reading(bytes(8), BASE_TIME, {}, rssi_dbm=-100, snr_db=snr)
        data = encode_batch(Batch(GATEWAY, 1, BASE_TIME, [reading]))
        return decode_batch(data).readings[0].snr_db

    assert snr_after(-7.25) == -7.25
    assert snr_after(9) == 9.0
    assert snr_after(7.3) == 7.25
    assert snr_after(-7.375) == -7.5  # -29.5 quarters, half to even: -30


def test_mask_is_written_only_when_it_changes() -> None:
    parking: dict[str, object] = {"occupied": True, "battery_mv": 3600, "temperature_c": 20.5}
    bin_level: dict[str, object] = {"fill_pct": 40, "distance_mm": 812}
    rows = [
        Reading(bytes([index] * 8), BASE_TIME + index, values, -100, 2.5)
        for index, values in enumerate([parking, parking, bin_level, bin_level, parking, {}])
    ]
    decoded = cbor2.loads(encode_batch(Batch(GATEWAY, 9, BASE_TIME, rows)))
    masks = [row[0] if isinstance(row[0], int) else None for row in decoded[4:]]
    assert masks == [0b1110, None, (1 << 5) | (1 << 7), None, 0b1110, 0]
    devices = [row[0 if mask is None else 1] for row, mask in zip(decoded[4:], masks, strict=True)]
    assert devices == [bytes([index] * 8) for index in range(6)]


def test_time_deltas_are_from_the_previous_reading() -> None:
    times = [BASE_TIME + 5, BASE_TIME + 7, BASE_TIME + 3, BASE_TIME + 3, 0, 2**64 - 1]
    rows = [Reading(bytes(8), time_s) for time_s in times]
    batch = Batch(GATEWAY, 1, BASE_TIME, rows)
    data = encode_batch(batch)
    deltas = [row[1] for row in cbor2.loads(data)[4:]]
    assert deltas == [5, 2, -4, 0, -(BASE_TIME + 3), 2**64 - 1]
    assert [reading.time_s for reading in decode_batch(data).readings] == times


def test_delayed_is_one_true_after_the_base_time() -> None:
    batch = Batch(GATEWAY, 3, BASE_TIME, [Reading(bytes(8), BASE_TIME)], delayed=True)
    data = encode_batch(batch)
    assert cbor2.loads(data)[4] is True
    assert decode_batch(data).delayed is True
    batch.delayed = False
    assert len(encode_batch(batch)) == len(data) - 1


# --- sizes (deterministic, so tested here; speed is the benchmark's job) ----------------------


def test_hundred_parking_readings_fit_24_bytes_each() -> None:
    for places in (1, 2):
        data = encode_batch(parking_batch(100, seed=places, places=places))
        assert len(data) / 100 <= 24, (places, len(data))
    # Tenths of a degree, the common sensor resolution, cost one byte less than hundredths.
    tenths_size = len(encode_batch(parking_batch(100, seed=5, places=1)))
    hundredths_size = len(encode_batch(parking_batch(100, seed=5, places=2)))
    assert hundredths_size > tenths_size


def test_single_parking_reading_fits_40_bytes() -> None:
    # 17 bytes of header while seq < 24, then a 21..23-byte reading. A longer seq adds the
    # bytes of its argument (RFC 8949 section 3): 1 from 24, 2 from 256, 4 from 65536.
    for seed in range(50):
        for places in (1, 2):
            batch = parking_batch(1, seed=seed, places=places)
            batch.seq = 23
            size = len(encode_batch(batch))
            assert size <= 40, (seed, places, size)
            for seq, extra in ((255, 1), (65535, 2), (2**32 - 1, 4)):
                batch.seq = seq
                assert len(encode_batch(batch)) == size + extra


def test_size_of_one_reading_is_the_sum_of_its_items() -> None:
    # The byte budget of telemetry.md, checked against cbor2's encoding of the same items.
    batch = Batch(
        GATEWAY,
        seq=7,
        base_time=BASE_TIME,
        readings=[
            Reading(
                bytes.fromhex("70b3d57ed0001234"),
                BASE_TIME,
                {"occupied": True, "battery_mv": 3600, "temperature_c": 21.5},
                rssi_dbm=-110,
                snr_db=-7.5,
            )
        ],
    )
    data = encode_batch(batch)
    row = [0b1110, bytes.fromhex("70b3d57ed0001234"), 0, -110, -30, True, 3600, 215]
    assert data == cbor2.dumps([1, GATEWAY, 7, BASE_TIME, row])
    assert len(data) == 1 + 1 + 9 + 1 + 5 + (1 + 1 + 9 + 1 + 2 + 2 + 1 + 3 + 2) == 39


def test_worked_example_of_the_docs_is_what_the_encoder_writes() -> None:
    doc = (REPO / "docs" / "formats" / "telemetry.md").read_text()
    block = doc.split("99 bytes:\n\n```\n", 1)[1].split("```", 1)[0]
    batch = Batch(
        gateway_id=GATEWAY,
        seq=42,
        base_time=BASE_TIME,
        readings=[
            Reading(
                bytes.fromhex("70b3d57ed0001234"),
                BASE_TIME,
                {"occupied": True, "battery_mv": 3600, "temperature_c": 21.5},
                -110,
                -7.5,
            ),
            Reading(
                bytes.fromhex("70b3d57ed0001235"),
                BASE_TIME + 3,
                {"occupied": False, "battery_mv": 3587, "temperature_c": 21.37},
                -98,
                6.25,
                fcnt=1234,
            ),
            Reading(
                bytes.fromhex("0004a30b001c0530"),
                BASE_TIME + 12,
                {"fill_pct": 80, "distance_mm": 412, "lid": "open"},
                -121,
                -15.0,
            ),
        ],
    )
    data = encode_batch(batch)
    assert len(data) == 99
    assert bytes.fromhex(block.replace("\n", "")) == data


# --- cross-decoding with cbor2 ----------------------------------------------------------------


def test_cbor2_sees_the_documented_structure() -> None:
    batch = Batch(
        GATEWAY,
        seq=1234,
        base_time=BASE_TIME,
        delayed=True,
        readings=[
            Reading(
                bytes.fromhex("70b3d57ed0001234"),
                BASE_TIME + 2,
                {"occupied": False, "battery_mv": 3012, "temperature_c": -4.25},
                rssi_dbm=-97,
                snr_db=6.5,
                fcnt=40_001,
            ),
            Reading(
                bytes.fromhex("70b3d57ed0005678"),
                BASE_TIME + 5,
                {"fill_pct": 87, "distance_mm": 140, "tilt_alarm": True, "lid": "open"},
                rssi_dbm=-121,
                snr_db=-15.0,
                fcnt=77,
                sf=12,
                freq_hz=868_500_000,
                gw_time_us=3_000_000_123,
            ),
            Reading(bytes.fromhex("0004a30b001c0530"), BASE_TIME + 5, {"co2_ppm": 612}),
        ],
    )
    assert cbor2.loads(encode_batch(batch)) == [
        1,
        GATEWAY,
        1234,
        BASE_TIME,
        True,
        [0b10111, bytes.fromhex("70b3d57ed0001234"), 2, -97, 26, 40_001, False, 3012, -425],
        [
            (1 << 0)
            | (1 << 5)
            | (1 << 7)
            | (1 << 8)
            | (1 << 11)
            | (1 << 12)
            | (1 << 13)
            | (1 << 15),
            bytes.fromhex("70b3d57ed0005678"),
            3,
            -121,
            -60,
            77,
            87,
            140,
            True,
            12,
            868_500_000,
            3_000_000_123,
            {"lid": "open"},
        ],
        [1 << 10, bytes.fromhex("0004a30b001c0530"), 0, None, None, 612],
    ]


@settings(max_examples=200, deadline=None)
@given(batches())
def test_cbor2_and_our_decoder_agree(batch: Batch) -> None:
    data = encode_batch(batch)
    assert cbor2.loads(data) == cbor.loads(data)


# --- strictness -------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    typed_error_or_none(CodecError, decode_batch, data)
    typed_error_or_none(CodecError, describe_batch, data)


cbor_like = st.recursive(
    st.none() | st.booleans() | cbor_ints | st.binary(max_size=9) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


@st.composite
def batch_like(draw: st.DrawFn) -> list[object]:
    """CBOR that looks like a batch: a real header then arrays of plausible items."""
    head: list[object] = [draw(st.sampled_from([1, 1, 1, 0, 2])), draw(euis), 5, BASE_TIME]
    if draw(st.booleans()):
        head.append(draw(st.sampled_from([True, False, None])))
    rows = draw(
        st.lists(
            st.lists(
                st.integers(0, 0xFFFF) | euis | st.integers(-300, 300) | cbor_like, max_size=12
            ),
            max_size=4,
        )
    )
    return head + rows


@settings(max_examples=500, deadline=None)
@given(batch_like() | cbor_like)
def test_accepted_input_is_canonical(item: object) -> None:
    # Whatever the decoder accepts, the encoder writes back byte for byte; the rest is refused
    # with a typed error.
    data = cbor.dumps(item)
    if typed_error_or_none(CodecError, decode_batch, data) is None:
        assert encode_batch(decode_batch(data)) == data


@settings(max_examples=100, deadline=None)
@given(batches(max_readings=3))
def test_truncation_is_a_cbor_error(batch: Batch) -> None:
    data = encode_batch(batch)
    for end in range(len(data)):
        with pytest.raises(CborError):
            decode_batch(data[:end])


@settings(max_examples=300, deadline=None)
@given(batches(max_readings=3), st.data())
def test_mutation_is_refused_or_decodes_to_what_it_says(batch: Batch, data: st.DataObject) -> None:
    encoded = bytearray(encode_batch(batch))
    at = data.draw(st.integers(0, len(encoded) - 1))
    encoded[at] ^= data.draw(st.integers(1, 255))
    mutated = bytes(encoded)
    error = typed_error_or_none(CodecError, decode_batch, mutated)
    if error is None:
        decoded = decode_batch(mutated)
        assert decoded != batch
        assert encode_batch(decoded) == mutated
    else:
        assert isinstance(error, CborError | SchemaError)


def _batch_items(*rows: object, head: tuple[object, ...] = (1, GATEWAY, 5, BASE_TIME)) -> bytes:
    return cbor.dumps([*head, *rows])


DEV = bytes.fromhex("70b3d57ed0001234")


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (_batch_items(head=(2, GATEWAY, 5, BASE_TIME)), SchemaError, "version 2"),
        (_batch_items(head=(0, GATEWAY, 5, BASE_TIME)), SchemaError, "version 0"),
        (_batch_items(head=("1", GATEWAY, 5, BASE_TIME)), SchemaError, "version '1'"),
        (_batch_items(head=(True, GATEWAY, 5, BASE_TIME)), SchemaError, "version True"),
        (_batch_items(head=(1, GATEWAY.hex(), 5, BASE_TIME)), SchemaError, "gateway_id"),
        (_batch_items(head=(1, GATEWAY, -5, BASE_TIME)), SchemaError, "seq"),
        (_batch_items(head=(1, GATEWAY, 5)), SchemaError, "starts [version"),
        (cbor.dumps({1: 2}), SchemaError, "CBOR array"),
        (_batch_items(False), SchemaError, "true (delayed)"),
        (_batch_items([DEV.hex(), 0, None, None]), SchemaError, "dev_eui"),
        (_batch_items([DEV[:7], 0, None, None]), SchemaError, "dev_eui"),
        (_batch_items([DEV, 0.5, None, None]), SchemaError, "dt"),
        (_batch_items([DEV, 0, -100.5, None]), SchemaError, "rssi"),
        (_batch_items([DEV, 0, None, 1.5]), SchemaError, "snr"),
        (_batch_items([DEV, -BASE_TIME - 1, None, None]), SchemaError, "outside"),
        (_batch_items([1 << 14, DEV, 0, None, None, 5]), SchemaError, "does not define"),
        (_batch_items([0, DEV, 0, None, None]), SchemaError, "repeats"),
        (_batch_items([2, DEV, 0, None, None]), SchemaError, "1 value(s)"),
        (_batch_items([2, DEV, 0, None, None, 1]), SchemaError, "occupied (field bit 1)"),
        (_batch_items([1 << 11, DEV, 0, None, None, 13]), SchemaError, "spreading factor"),
        (_batch_items([1, DEV, 0, None, None, 2**32]), SchemaError, "fcnt"),
        (_batch_items([1 << 15, DEV, 0, None, None, {}]), SchemaError, "non-empty map"),
        (_batch_items([1 << 15, DEV, 0, None, None, {1: 2}]), SchemaError, "text keys"),
        (
            _batch_items([(1 << 2) | (1 << 15), DEV, 0, None, None, 1, {"battery_mv": 3}]),
            SchemaError,
            "battery_mv is given twice",
        ),
        (_batch_items([(1 << 3) | (1 << 4), DEV, 0, None, None, 1, 2]), SchemaError, "twice"),
        # Well-formed and typed right, but not what the encoder writes for that content.
        (_batch_items([1 << 4, DEV, 0, None, None, 2150]), SchemaError, "canonical"),
        (_batch_items([1 << 15, DEV, 0, None, None, {"battery_mv": 3}]), SchemaError, "canonical"),
        # Well-formed CBOR, not deterministic: 5 in two bytes, an indefinite-length array.
        (bytes.fromhex("840148") + GATEWAY + bytes.fromhex("18051a68e77800"), CborError, "4.2.1"),
        (bytes.fromhex("9f0148") + GATEWAY + bytes.fromhex("051a68e77800ff"), CborError, "4.2.1"),
        (_batch_items() + b"\x00", CborError, "trailing"),
    ],
)
def test_structural_problems_are_named(data: bytes, error: type[CodecError], words: str) -> None:
    with pytest.raises(error) as caught:
        decode_batch(data)
    assert type(caught.value) is error
    assert words in caught.value.message


def test_schema_errors_point_at_the_offending_item() -> None:
    good = Reading(DEV, BASE_TIME, {"occupied": True}, -90, 3.0)
    data = _batch_items(
        *cbor2.loads(encode_batch(Batch(GATEWAY, 5, BASE_TIME, [good, good])))[4:],
        [DEV, 0, "loud", None],
    )
    with pytest.raises(SchemaError) as caught:
        decode_batch(data)
    offset = caught.value.offset
    assert offset is not None
    assert data[offset:].startswith(cbor.dumps([DEV, 0, "loud", None]))
    assert cbor.dumps([DEV, 0, "loud", None]).hex() in caught.value.message


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        (Batch(GATEWAY[:7], 1, BASE_TIME), "gateway_id must be 8 bytes"),
        (Batch(GATEWAY, -1, BASE_TIME), "seq"),
        (Batch(GATEWAY, 2**64, BASE_TIME), "seq"),
        (Batch(GATEWAY, 1, 1.5), "base_time"),  # type: ignore[arg-type]
        (Batch(GATEWAY, 1, BASE_TIME, delayed=1), "delayed"),  # type: ignore[arg-type]
        (Batch(GATEWAY, 1, BASE_TIME, ["x"]), "expected a Reading"),  # type: ignore[list-item]
        (Batch(GATEWAY, 1, BASE_TIME, iter([])), "readings must be a list"),  # type: ignore[arg-type]
        (Batch(GATEWAY, 1, BASE_TIME, [Reading("abc", BASE_TIME)]), "dev_eui"),  # type: ignore[arg-type]
        (Batch(GATEWAY, 1, BASE_TIME, [Reading(DEV, -1)]), "time_s"),
        (Batch(GATEWAY, 1, BASE_TIME, [Reading(DEV, 1, rssi_dbm=-1.5)]), "rssi_dbm"),  # type: ignore[arg-type]
        (Batch(GATEWAY, 1, BASE_TIME, [Reading(DEV, 1, snr_db=float("nan"))]), "snr_db"),
        (Batch(GATEWAY, 1, BASE_TIME, [Reading(DEV, 1, fcnt=2**32)]), "fcnt"),
        (Batch(GATEWAY, 1, BASE_TIME, [Reading(DEV, 1, sf=4)]), "sf"),
        (Batch(GATEWAY, 1, BASE_TIME, [Reading(DEV, 1, {3: 4})]), "value names must be text"),  # type: ignore[dict-item]
        (Batch(GATEWAY, 1, BASE_TIME, [Reading(DEV, 1, {"x": {1, 2}})]), "CBOR cannot carry"),
        (Batch(GATEWAY, 1, BASE_TIME, [Reading(DEV, 1, {"x": 2**64})]), "CBOR cannot carry"),
    ],
)
def test_encoder_refuses_invalid_batches(batch: Batch, words: str) -> None:
    with pytest.raises(SchemaError) as caught:
        encode_batch(batch)
    assert words in caught.value.message


def test_nothing_is_lost_through_the_extension() -> None:
    odd = {
        "temperature_c": float("inf"),
        "battery_mv": 2**63,
        "label": "bay 12",
        "raw": b"\x01\x02",
        "nested": {"a": [1, 2.5, None]},
        "unit": None,
    }
    data = encode_batch(Batch(GATEWAY, 1, BASE_TIME, [Reading(DEV, BASE_TIME, odd)]))
    assert decode_batch(data).readings[0].values == odd


# --- the direct decoding path -----------------------------------------------------------------
# decode_batch reads the canonical encodings gateways send straight from the bytes, and leaves
# anything else to the general path (cbor.loads, then cbor.dumps and encode_batch compared).
# The two must agree on every input: the same batch, down to value types and order, or the
# same error with the same offset.


def _outcome(decode: Callable[[bytes], Batch], data: bytes) -> str:
    try:
        return "accepted " + repr(decode(data))
    except CodecError as err:
        return f"{type(err).__name__} at {err.offset}: {err.message}"


def _direct(data: bytes) -> Batch | None:
    try:
        return telemetry._decode_direct(data)
    except IndexError:  # decode_batch treats running off the end as "not recognised"
        return None


def _agree(data: bytes) -> Batch | None:
    """Check that decode_batch ends as the general path does on data, and that what the direct
    path accepts the general path accepts as the same batch; return the direct path's batch."""
    assert _outcome(decode_batch, data) == _outcome(telemetry._decode_general, data)
    direct = _direct(data)
    if direct is not None:
        assert repr(direct) == repr(telemetry._decode_general(data))
    return direct


@settings(max_examples=300, deadline=None)
@given(batches())
def test_direct_path_takes_every_batch_the_encoder_writes(batch: Batch) -> None:
    data = encode_batch(batch)
    direct = _agree(data)
    assert direct is not None
    assert direct == batch


def test_direct_path_takes_gateway_batches() -> None:
    for batch in [parking_batch(100, seed=1), parking_batch(100, seed=2, fcnt=True, places=2)]:
        for reading in batch.readings[::3]:
            reading.sf, reading.freq_hz, reading.gw_time_us = 9, 868_300_000, 3_512_348_611
        data = encode_batch(batch)
        assert _agree(data) == batch


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    """An encoded batch with a few bytes flipped, replaced, inserted or removed, or cut short."""
    data = bytearray(encode_batch(draw(batches(max_readings=4))))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        if kind == "insert":
            data[at:at] = bytes([draw(st.integers(0, 255))])
        elif at == len(data):
            continue
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0x17, 0x18, 0x19, 0x38, 0x40, 0x48, 0xF4, 0xF6]))
        elif kind == "delete":
            del data[at]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=700, deadline=None)
@given(mutations())
def test_direct_and_general_paths_agree_on_mutated_batches(data: bytes) -> None:
    _agree(data)


@settings(max_examples=500, deadline=None)
@given(batch_like() | cbor_like)
def test_direct_and_general_paths_agree_on_batch_like_cbor(item: object) -> None:
    _agree(cbor.dumps(item))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_direct_and_general_paths_agree_on_arbitrary_bytes(data: bytes) -> None:
    _agree(data)


def _reading_bytes(*items: bytes) -> bytes:
    # A batch of one reading whose items are given as raw CBOR, so heads can be non-shortest.
    head = cbor.dumps([1, GATEWAY, 5, BASE_TIME])
    return b"\x85" + head[1:] + bytes([0x80 | len(items)]) + b"".join(items)


PARKING_MASK = cbor.dumps(0b1110)
EUI_ITEM = cbor.dumps(DEV)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        # Valid CBOR in a longer form than needed (RFC 8949 section 4.2.1) at each position.
        (
            _reading_bytes(
                b"\x18\x0e",
                EUI_ITEM,
                b"\x00",
                b"\xf6",
                b"\xf6",
                b"\xf5",
                b"\x19\x0e\x10",
                b"\x18\xd7",
            ),
            "4.2.1",
        ),
        (
            _reading_bytes(
                PARKING_MASK,
                EUI_ITEM,
                b"\x18\x03",
                b"\xf6",
                b"\xf6",
                b"\xf5",
                b"\x19\x0e\x10",
                b"\x18\xd7",
            ),
            "4.2.1",
        ),
        (
            _reading_bytes(
                PARKING_MASK,
                EUI_ITEM,
                b"\x00",
                b"\x38\x05",
                b"\xf6",
                b"\xf5",
                b"\x19\x0e\x10",
                b"\x18\xd7",
            ),
            "4.2.1",
        ),
        (
            _reading_bytes(
                PARKING_MASK,
                EUI_ITEM,
                b"\x00",
                b"\xf6",
                b"\x39\x00\x1d",
                b"\xf5",
                b"\x19\x0e\x10",
                b"\x18\xd7",
            ),
            "4.2.1",
        ),
        (
            _reading_bytes(
                PARKING_MASK,
                EUI_ITEM,
                b"\x00",
                b"\xf6",
                b"\xf6",
                b"\xf5",
                b"\x1a\x00\x00\x0e\x10",
                b"\x18\xd7",
            ),
            "4.2.1",
        ),
        (
            _reading_bytes(
                PARKING_MASK,
                EUI_ITEM,
                b"\x00",
                b"\xf6",
                b"\xf6",
                b"\xf5",
                b"\x19\x0e\x10",
                b"\x19\x00\xd7",
            ),
            "4.2.1",
        ),
        (
            _reading_bytes(
                PARKING_MASK,
                b"\x58\x08" + DEV,
                b"\x00",
                b"\xf6",
                b"\xf6",
                b"\xf5",
                b"\x19\x0e\x10",
                b"\x18\xd7",
            ),
            "4.2.1",
        ),
        # Shortest form, but a value in a finer row than the encoder picks.
        (
            _reading_bytes(
                cbor.dumps(1 << 4), EUI_ITEM, b"\x00", b"\xf6", b"\xf6", cbor.dumps(2150)
            ),
            "canonical",
        ),
        (
            _reading_bytes(
                cbor.dumps(1 << 6), EUI_ITEM, b"\x00", b"\xf6", b"\xf6", cbor.dumps(420)
            ),
            "accepted",
        ),
        (
            _reading_bytes(
                cbor.dumps(1 << 15),
                EUI_ITEM,
                b"\x00",
                b"\xf6",
                b"\xf6",
                cbor.dumps({"fill_pct": 42}),
            ),
            "canonical",
        ),
        (
            _reading_bytes(
                cbor.dumps(1 << 15),
                EUI_ITEM,
                b"\x00",
                b"\xf6",
                b"\xf6",
                cbor.dumps({"fill_pct": 42.25}),
            ),
            "accepted",
        ),
        # An extension map in a non-deterministic form: keys out of order, indefinite length.
        (
            _reading_bytes(
                cbor.dumps(1 << 15), EUI_ITEM, b"\x00", b"\xf6", b"\xf6", b"\xa2\x61b\x01\x61a\x02"
            ),
            "4.2.1",
        ),
        (
            _reading_bytes(
                cbor.dumps(1 << 15), EUI_ITEM, b"\x00", b"\xf6", b"\xf6", b"\xbf\x61a\x02\xff"
            ),
            "4.2.1",
        ),
        # A mask of zero written out for the first reading: the encoder leaves it out.
        (_reading_bytes(b"\x00", EUI_ITEM, b"\x00", b"\xf6", b"\xf6"), "repeats"),
    ],
)
def test_direct_path_leaves_non_canonical_input_to_the_general_path(
    data: bytes, words: str
) -> None:
    assert _direct(data) is None or words == "accepted"
    outcome = _agree(data)
    text = _outcome(decode_batch, data)
    assert words in text, text
    if words == "accepted":
        assert outcome is not None


@pytest.mark.parametrize("depth", range(26, 34))
def test_direct_path_keeps_the_nesting_limit(depth: int) -> None:
    nested: object = 1
    for _ in range(depth):
        nested = [nested]
    data = _reading_bytes(
        cbor.dumps(1 << 15), EUI_ITEM, b"\x00", b"\xf6", b"\xf6", cbor.dumps({"x": nested})
    )
    _agree(data)
    # The map sits at depth 2 and the innermost integer at depth 3 + depth.
    accepted = _outcome(decode_batch, data).startswith("accepted")
    assert accepted == (3 + depth <= cbor.MAX_DEPTH)


# --- description for the CLI ------------------------------------------------------------------


def test_describe_batch_is_json_ready() -> None:
    reading = Reading(
        DEV,
        BASE_TIME + 61,
        {"occupied": True, "raw": b"\xff", "spike": float("nan"), "t": cbor.Tag(1, 5)},
        rssi_dbm=-101,
        snr_db=-2.25,
        fcnt=4711,
    )
    data = encode_batch(Batch(GATEWAY, 77, BASE_TIME, [reading], delayed=True))
    described = describe_batch(data)
    text = json.dumps(described, allow_nan=False)
    assert json.loads(text) == described
    assert described["gateway_id"] == GATEWAY.hex()
    assert described["base_time_utc"] == "2025-10-09T08:53:20Z"
    assert described["delayed"] is True
    assert described["size_bytes"] == len(data)
    assert described["readings"] == [
        {
            "dev_eui": DEV.hex(),
            "time_s": BASE_TIME + 61,
            "time_utc": "2025-10-09T08:54:21Z",
            "values": {
                "occupied": True,
                "raw": "ff",
                "spike": "NaN",
                "t": {"tag": 1, "value": 5},
            },
            "rssi_dbm": -101,
            "snr_db": -2.25,
            "fcnt": 4711,
            "sf": None,
            "freq_hz": None,
            "gw_time_us": None,
        }
    ]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 253_402_300_799))  # up to 9999-12-31T23:59:59Z
def test_utc_times_match_datetime(seconds: int) -> None:
    data = encode_batch(Batch(GATEWAY, 1, seconds))
    expected = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert describe_batch(data)["base_time_utc"] == expected


def test_equality_covers_every_field() -> None:
    def reading(**changes: object) -> Reading:
        fields: dict[str, object] = {
            "dev_eui": DEV,
            "time_s": 5,
            "values": {"a": 1},
            "rssi_dbm": -1,
            "snr_db": 1.0,
            "fcnt": 1,
            "sf": 7,
            "freq_hz": 1,
            "gw_time_us": 1,
        }
        fields.update(changes)
        return Reading(**fields)  # type: ignore[arg-type]

    base = reading()
    assert base == reading()
    assert not base != reading()  # noqa: SIM202 - __ne__ is defined explicitly
    for name, other in [
        ("dev_eui", bytes(8)),
        ("time_s", 6),
        ("values", {"a": 2}),
        ("rssi_dbm", -2),
        ("snr_db", 1.25),
        ("fcnt", 2),
        ("sf", 8),
        ("freq_hz", 2),
        ("gw_time_us", 2),
    ]:
        assert base != reading(**{name: other}), name
    batch = Batch(GATEWAY, 1, 2, [base], delayed=False)
    assert batch == Batch(GATEWAY, 1, 2, [reading()], delayed=False)
    for other_batch in [
        Batch(bytes(8), 1, 2, [base]),
        Batch(GATEWAY, 9, 2, [base]),
        Batch(GATEWAY, 1, 9, [base]),
        Batch(GATEWAY, 1, 2, [base], delayed=True),
        Batch(GATEWAY, 1, 2, [reading(time_s=9)]),
        Batch(GATEWAY, 1, 2, []),
    ]:
        assert batch != other_batch
    assert base != "reading"
    assert "Reading(dev_eui=h'70b3d57ed0001234'" in repr(base)
