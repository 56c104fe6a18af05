"""The CBOR codec gives the same bytes and the same errors on real MicroPython as on CPython."""

from __future__ import annotations

import json
import random

from owlgate.codecs.errors import CodecError
from owlgate.codecs.node import cbor
from tests.conftest import MicroPython


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randrange(-(2**64), 2**64)
    if kind == 2:
        return rng.randrange(-300, 70000)
    if kind == 3:
        return rng.choice([0.5, -2.25, 1e-7, 3.4e38, 1e300, float("inf"), rng.uniform(-1e6, 1e6)])
    if kind == 4:
        return rng.randbytes(rng.randrange(0, 30))
    if kind == 5:
        return "".join(rng.choice("aé水🐦 z") for _ in range(rng.randrange(0, 12)))
    if kind == 6:
        return cbor.Tag(rng.randrange(0, 300), rng.randrange(0, 1000))
    if kind == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {
        rng.choice([rng.randrange(-100, 100), "k" + str(rng.randrange(50))]): _random_value(
            rng, depth + 1
        )
        for _ in range(rng.randrange(0, 5))
    }


BAD_INPUTS = ["", "1c", "62c328", "5a7fffffff", "a18101", "a201010102", "f7", "ff", "0100"]


def test_micropython_reencodes_and_rejects_exactly_like_cpython(micropython: MicroPython) -> None:
    rng = random.Random(20261123)
    encoded = [cbor.dumps(_random_value(rng)).hex() for _ in range(300)]

    expected_errors = []
    for bad in BAD_INPUTS:
        try:
            cbor.loads(bytes.fromhex(bad))
        except CodecError as err:
            expected_errors.append(f"{type(err).__name__} {err.offset} {err}")

    script = f"""
from owlgate.codecs.node import cbor
from owlgate.codecs.errors import CodecError
for item in {json.dumps(encoded)}:
    print(cbor.dumps(cbor.loads(bytes.fromhex(item))).hex())
for bad in {json.dumps(BAD_INPUTS)}:
    try:
        cbor.loads(bytes.fromhex(bad))
        print("accepted", bad)
    except CodecError as err:
        print(type(err).__name__, err.offset, err)
# Values built in MicroPython itself, not decoded first.
print(cbor.dumps({{"b": 1, -1: 2, 100: [True, None, 1.5, b"\\x00"], 10: "x", 24: -(2**64)}}).hex())
"""
    lines = micropython(script).splitlines()
    assert lines[: len(encoded)] == encoded
    assert lines[len(encoded) : len(encoded) + len(BAD_INPUTS)] == expected_errors
    built_here = {"b": 1, -1: 2, 100: [True, None, 1.5, b"\x00"], 10: "x", 24: -(2**64)}
    assert lines[-1] == cbor.dumps(built_here).hex()
