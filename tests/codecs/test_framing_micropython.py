"""Serial framing gives the same bytes, frames, counters and errors on real MicroPython.

One script runs on both interpreters and their outputs are compared line by line. On CPython
the CRC comes from ``binascii.crc_hqx``; MicroPython has none and uses the table, so the
comparison also holds the two CRC paths to each other.
"""

from __future__ import annotations

import contextlib
import io
import json
import random

from owlgate.codecs.node.framing import MAX_FRAME, MAX_PAYLOAD, encode_frame
from tests.codecs.test_framing import COBS_VECTORS, cobs_data_positions
from tests.conftest import MicroPython

SCRIPT = """
from owlgate.codecs.errors import FrameError
from owlgate.codecs.node.framing import (
    FrameDecoder, cobs_decode, cobs_encode, crc16, crc16_table, decode_frame, encode_frame,
)

def hx(data):
    # MicroPython's b"".hex() returns b"", which prints differently.
    return data.hex() if data else ""

def show_error(err):
    print(type(err).__name__, err.offset, err.message)

for item in VECTORS:
    data = bytes.fromhex(item)
    print(hex(crc16(data)), hex(crc16_table(data)), hex(crc16(data[3:], crc16(data[:3]))))
    encoded = cobs_encode(data)
    print(hx(encoded), cobs_decode(encoded) == data)
    try:
        frame = encode_frame(data)
        print(hx(frame), decode_frame(frame) == data)
    except FrameError as err:
        show_error(err)

for item in BAD:
    try:
        print("accepted", hx(decode_frame(bytes.fromhex(item))))
    except FrameError as err:
        show_error(err)

decoder = FrameDecoder(MAX_FRAME_SMALL)
for chunk in CHUNKS:
    for payload in decoder.feed(bytes.fromhex(chunk)):
        print("frame", hx(payload))
print("counters", decoder.frames_ok, decoder.crc_errors, decoder.frame_errors,
      decoder.overflows, decoder.bytes_discarded, decoder.buffered)
show_error(decoder.last_error)
"""


def vectors(rng: random.Random) -> list[str]:
    shared = [raw for raw, _ in COBS_VECTORS] + ["313233343536373839"]
    seeded = []
    for _ in range(120):
        size = rng.choice([0, 1, 2, 20, 253, 254, 255, 300, 508, 509, rng.randrange(700)])
        if rng.random() < 0.3:
            data = bytes(rng.choice([0, 0, 1, 0xFF]) for _ in range(size))
        else:
            data = rng.randbytes(size)
        seeded.append(data.hex())
    edges = [bytes(MAX_PAYLOAD).hex(), (b"\x01" * MAX_PAYLOAD).hex(), bytes(MAX_PAYLOAD + 1).hex()]
    return shared + seeded + edges


def hostile_stream(rng: random.Random, max_frame: int) -> list[str]:
    """Good frames, flipped bytes, noise, lost delimiters and floods, in random reads."""
    stream = bytearray()
    for _ in range(150):
        frame = bytearray(encode_frame(rng.randbytes(rng.randrange(0, 120))))
        kind = rng.randrange(8)
        if kind == 0:
            positions = cobs_data_positions(bytes(frame))
            if positions:
                frame[rng.choice(positions)] ^= rng.randrange(1, 256)
        elif kind == 1:
            stream += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
        elif kind == 2:
            frame = frame[:-1]  # the trailing delimiter lost
        elif kind == 3 and rng.random() < 0.3:
            stream += bytes(rng.randrange(1, 256) for _ in range(max_frame + rng.randrange(50)))
        stream += frame
    stream += b"\x05\x01\x02"  # an unfinished frame at the end
    chunks = []
    at = 0
    while at < len(stream):
        size = rng.choice([1, 3, 16, 100, 1000])
        chunks.append(bytes(stream[at : at + size]).hex())
        at += size
    return chunks


BAD = ["", "0000", "0201", "01", "0511", "03110022", "0002010002010000", "00038306e40000"]


def test_micropython_frames_like_cpython(micropython: MicroPython) -> None:
    rng = random.Random(20261124)
    max_frame = 200
    header = (
        f"VECTORS = {json.dumps(vectors(rng))}\n"
        f"BAD = {json.dumps(BAD)}\n"
        f"CHUNKS = {json.dumps(hostile_stream(rng, max_frame))}\n"
        f"MAX_FRAME_SMALL = {max_frame}\n"
    )
    script = header + SCRIPT
    cpython = io.StringIO()
    with contextlib.redirect_stdout(cpython):
        exec(script, {})  # the same source, on CPython
    expected = cpython.getvalue().splitlines()
    assert micropython(script).splitlines() == expected
    # The script exercised what it claims to: every path, with results worth comparing.
    assert len([line for line in expected if line.endswith(" True")]) > 250
    assert sum(line.startswith("frame ") for line in expected) > 80
    counters = next(line for line in expected if line.startswith("counters")).split()
    frames_ok, crc_errors, frame_errors, overflows = (int(value) for value in counters[1:5])
    assert crc_errors > 5
    assert frame_errors > 5
    assert overflows > 0
    assert frames_ok == sum(line.startswith("frame ") for line in expected)
    assert "FrameError None payload of 1025 bytes is longer than MAX_PAYLOAD (1024)" in expected
    assert MAX_FRAME == 1031
