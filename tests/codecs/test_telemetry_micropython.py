"""Telemetry batches encode to the same bytes and fail the same way on real MicroPython."""

from __future__ import annotations

import json
import random
import struct
from typing import TypeVar

from owlgate.codecs.errors import CodecError
from owlgate.codecs.node import cbor
from owlgate.codecs.node.telemetry import Batch, Reading, decode_batch, encode_batch
from tests.conftest import MicroPython

T = TypeVar("T")
NAMES = [
    "occupied",
    "battery_mv",
    "temperature_c",
    "fill_pct",
    "distance_mm",
    "tilt_alarm",
    "humidity_pct",
    "co2_ppm",
    "lid",
    "raw",
    "mode",
]


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(12 if depth < 2 else 10)
    if kind == 0:
        return rng.choice([True, False, None])
    if kind == 1:
        return rng.randrange(-500, 70_000)
    if kind == 2:
        return rng.randrange(-(2**64), 2**64)
    if kind == 3:
        return rng.randrange(-4000, 4000) / 10
    if kind == 4:
        return rng.randrange(-4000, 4000) / 100
    if kind == 5:
        return rng.choice([21.0625, -0.0, 1e300, float("inf"), 5e-324, rng.uniform(-1e6, 1e6)])
    if kind == 6:
        return "".join(rng.choice("aé水 z") for _ in range(rng.randrange(6)))
    if kind == 7:
        return rng.randbytes(rng.randrange(6))
    if kind == 8:
        return cbor.Tag(rng.randrange(300), rng.randrange(1000))
    if kind == 9:
        return rng.randrange(0, 2**31 - 1) / 4
    if kind == 10:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {"k" + str(rng.randrange(9)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _maybe(rng: random.Random, value: T) -> T | None:
    return value if rng.random() < 0.6 else None


def seeded_batch(rng: random.Random) -> Batch:
    base_time = rng.choice([0, 1_760_000_000, 2**32 + 5, 2**64 - 10_000])
    readings = []
    time_s = base_time
    for _ in range(rng.randrange(0, 8)):
        time_s = max(0, min(2**64 - 1, time_s + rng.choice([0, 1, 7, 300, -40, 70_000])))
        readings.append(
            Reading(
                rng.randbytes(8),
                time_s,
                {name: _value(rng) for name in rng.sample(NAMES, rng.randrange(len(NAMES)))},
                rssi_dbm=_maybe(rng, rng.randrange(-140, 10)),
                snr_db=_maybe(rng, rng.choice([rng.randrange(-80, 60) / 4, rng.uniform(-30, 30)])),
                fcnt=_maybe(rng, rng.randrange(2**32)),
                sf=_maybe(rng, rng.randrange(5, 13)),
                freq_hz=_maybe(rng, rng.choice([868_100_000, 867_900_000])),
                gw_time_us=_maybe(rng, rng.randrange(2**32)),
            )
        )
    return Batch(rng.randbytes(8), rng.randrange(2**64), base_time, readings, rng.random() < 0.3)


def source(value: object) -> str:
    """``value`` as MicroPython source; floats and text go as bytes so no parser rounds them."""
    if value is None or isinstance(value, bool | int):
        return repr(value)
    if isinstance(value, float):
        return "_f('" + struct.pack(">d", value).hex() + "')"
    if isinstance(value, str):
        return "_s('" + value.encode().hex() + "')"
    if isinstance(value, bytes):
        return "bytes.fromhex('" + value.hex() + "')"
    if isinstance(value, list):
        return "[" + ", ".join(source(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(source(k) + ": " + source(v) for k, v in value.items()) + "}"
    if isinstance(value, cbor.Tag):
        return "cbor.Tag(" + str(value.tag) + ", " + source(value.value) + ")"
    if isinstance(value, Reading):
        fields = [value.dev_eui, value.time_s, value.values, value.rssi_dbm, value.snr_db]
        fields += [value.fcnt, value.sf, value.freq_hz, value.gw_time_us]
        return "Reading(" + ", ".join(source(field) for field in fields) + ")"
    assert isinstance(value, Batch), value
    fields = [value.gateway_id, value.seq, value.base_time, value.readings, value.delayed]
    return "Batch(" + ", ".join(source(field) for field in fields) + ")"


def summary(batch: Batch) -> str:
    """What the decoded batch says, in a form both interpreters print alike."""
    parts = [batch.gateway_id.hex(), str(batch.seq), str(batch.base_time), str(batch.delayed)]
    for reading in batch.readings:
        snr = None if reading.snr_db is None else int(reading.snr_db * 4)
        parts += [reading.dev_eui.hex(), str(reading.time_s), str(reading.rssi_dbm), str(snr)]
        parts += [str(reading.fcnt), ",".join(sorted(reading.values))]
    return " ".join(parts)


_GW = bytes.fromhex("b827ebfffe6c1a2b")
_DEV = bytes.fromhex("70b3d57ed0001234")
_HEAD = [1, _GW, 5, 1_760_000_000]
BAD_INPUTS = [
    "",
    "80",
    "8402",
    cbor.dumps([2, *_HEAD[1:]]).hex(),
    cbor.dumps([1, "gate", *_HEAD[2:]]).hex(),
    cbor.dumps([*_HEAD, False]).hex(),
    cbor.dumps([*_HEAD, [_DEV[:4], 0, None, None]]).hex(),
    cbor.dumps([*_HEAD, [_DEV, 0.5, None, None]]).hex(),
    cbor.dumps([*_HEAD, [1 << 14, _DEV, 0, None, None, 1]]).hex(),
    cbor.dumps([*_HEAD, [1 << 4, _DEV, 0, None, None, 2150]]).hex(),
    cbor.dumps([*_HEAD, [1 << 15, _DEV, 0, None, None, {"x": 1, "occupied": True}]]).hex(),
    "840148" + _GW.hex() + "18051a68e77800",  # 5 written in two bytes
    cbor.dumps(_HEAD).hex() + "00",
]
# Refused by the encoder; the empty byte strings once made MicroPython's error text itself fail
# (its b"".hex() is b"", not "").
BAD_BATCHES = [
    Batch(b"", 1, 0, []),
    Batch(_GW, 1, 0, [Reading(b"", 0)]),
    Batch(_GW, 1, 0, [Reading(_DEV[:3], 0)]),
]


def test_micropython_encodes_decodes_and_refuses_like_cpython(micropython: MicroPython) -> None:
    rng = random.Random(20261123)
    batches = [seeded_batch(rng) for _ in range(60)]
    encoded = [encode_batch(batch).hex() for batch in batches]
    summaries = [summary(decode_batch(bytes.fromhex(item))) for item in encoded]
    expected_errors = []
    for bad in BAD_INPUTS:
        try:
            decode_batch(bytes.fromhex(bad))
            expected_errors.append("accepted " + bad)
        except CodecError as err:
            expected_errors.append(f"{type(err).__name__} {err.offset} {err}")
    for batch in BAD_BATCHES:
        try:
            encode_batch(batch)
            expected_errors.append("encoded")
        except CodecError as err:
            expected_errors.append(f"{type(err).__name__} {err.offset} {err}")

    script = f"""
import struct
from owlgate.codecs.node import cbor
from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch, decode_batch
from owlgate.codecs.node.telemetry import _decode_direct
from owlgate.codecs.errors import CodecError

def _f(text):
    return struct.unpack(">d", bytes.fromhex(text))[0]

def _s(text):
    return bytes.fromhex(text).decode()

{SUMMARY_SOURCE}

batches = [{", ".join(source(batch) for batch in batches)}]
for batch in batches:
    print(encode_batch(batch).hex())
for item in {json.dumps(encoded)}:
    decoded = decode_batch(bytes.fromhex(item))
    print(summary(decoded))
    print(encode_batch(decoded).hex())
# The direct path reads every batch the encoder writes there too (not the general one).
print(all(_decode_direct(bytes.fromhex(item)) is not None for item in {json.dumps(encoded)}))
for bad in {json.dumps(BAD_INPUTS)}:
    try:
        decode_batch(bytes.fromhex(bad))
        print("accepted " + bad)
    except CodecError as err:
        print(type(err).__name__, err.offset, err)
for batch in [{", ".join(source(batch) for batch in BAD_BATCHES)}]:
    try:
        encode_batch(batch)
        print("encoded")
    except CodecError as err:
        print(type(err).__name__, err.offset, err)
"""
    lines = micropython(script).splitlines()
    count = len(batches)
    assert lines[:count] == encoded
    round_trips = lines[count : 3 * count]
    assert round_trips[0::2] == summaries
    assert round_trips[1::2] == encoded
    assert lines[3 * count] == "True"
    assert lines[3 * count + 1 :] == expected_errors
    # The seeds cover what matters: readings, the extension, radio metadata, delayed.
    assert sum(len(batch.readings) for batch in batches) > 150
    assert any(batch.delayed for batch in batches)
    assert any("1a68e77800" in item for item in encoded)


# summary() again, for MicroPython: the same function, without annotations it has no use for.
SUMMARY_SOURCE = """
def summary(batch):
    parts = [batch.gateway_id.hex(), str(batch.seq), str(batch.base_time), str(batch.delayed)]
    for reading in batch.readings:
        snr = None if reading.snr_db is None else int(reading.snr_db * 4)
        parts += [reading.dev_eui.hex(), str(reading.time_s), str(reading.rssi_dbm), str(snr)]
        parts += [str(reading.fcnt), ",".join(sorted(reading.values))]
    return " ".join(parts)
"""
