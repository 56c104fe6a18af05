"""Serial framing: CRC-16, COBS, frames, and the streaming decoder over hostile byte streams."""

from __future__ import annotations

import random
import re
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from owlgate.codecs.errors import CodecError, CrcError, FrameError
from owlgate.codecs.node.framing import (
    CRC_SIZE,
    MAX_FRAME,
    MAX_PAYLOAD,
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    crc16,
    crc16_table,
    decode_frame,
    encode_frame,
)
from tests.conftest import REPO, typed_error_or_none

# --- independent references ------------------------------------------------------------------


def crc16_bitwise(data: bytes) -> int:
    """CRC-16/CCITT-FALSE one bit at a time, straight from its definition."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def cobs_reference(data: bytes) -> bytes:
    """COBS one byte at a time, as the algorithm is usually written down (in C, with a code
    pointer): a block that completes on the last input byte opens no new block."""
    out = bytearray([0])
    code_at = 0
    code = 1
    for index, byte in enumerate(data):
        if byte:
            out.append(byte)
            code += 1
        if not byte or code == 0xFF:
            out[code_at] = code
            code = 1
            code_at = len(out)
            if not byte or index < len(data) - 1:
                out.append(0)
    if code_at < len(out):
        out[code_at] = code
    return bytes(out)


def cobs_decode_reference(data: bytes) -> bytes | None:
    """COBS decoding block by block, as the paper describes it; None where a block runs past
    the end."""
    out = bytearray()
    at = 0
    while at < len(data):
        code = data[at]
        if at + code > len(data):
            return None
        out += data[at + 1 : at + code]
        at += code
        if code != 0xFF and at < len(data):
            out.append(0)
    return bytes(out)


def frame_bodies(stream: bytes) -> list[bytes]:
    return [piece for piece in stream.split(b"\x00") if piece]


zero_heavy = st.lists(st.sampled_from([0, 0, 1, 0xFF, 0x7E]), max_size=600).map(bytes)
any_data = st.binary(max_size=700) | zero_heavy
payloads = st.binary(max_size=300) | st.lists(st.sampled_from([0, 1, 0xFF]), max_size=80).map(bytes)

# --- CRC -------------------------------------------------------------------------------------


def test_crc_check_value() -> None:
    # The check value of the CRC catalogue (reveng.sourceforge.io, CRC-16/IBM-3740).
    assert crc16(b"123456789") == 0x29B1
    assert crc16_table(b"123456789") == 0x29B1
    assert crc16_bitwise(b"123456789") == 0x29B1
    assert crc16(b"") == crc16_table(b"") == 0xFFFF


@given(data=any_data, cut=st.integers(0, 700))
@settings(max_examples=300)
def test_crc_paths_agree_and_continue(data: bytes, cut: int) -> None:
    assert crc16(data) == crc16_table(data) == crc16_bitwise(data)
    assert crc16(data[cut:], crc16(data[:cut])) == crc16(data)
    assert crc16_table(data[cut:], crc16_table(data[:cut])) == crc16(data)
    # No reflection and no final XOR: the CRC appended big-endian leaves a residue of 0.
    assert crc16(data + crc16(data).to_bytes(2, "big")) == 0


# --- COBS ------------------------------------------------------------------------------------

COBS_VECTORS = [
    ("", "01"),
    ("00", "0101"),
    ("0000", "010101"),
    ("11220033", "0311220233"),
    ("11223344", "0511223344"),
    ("11000000", "0211010101"),
    (bytes(range(1, 255)).hex(), "ff" + bytes(range(1, 255)).hex()),
    (bytes(range(255)).hex(), "01ff" + bytes(range(1, 255)).hex()),
    (bytes(range(1, 256)).hex(), "ff" + bytes(range(1, 255)).hex() + "02ff"),
    (bytes(range(2, 256)).hex() + "00", "ff" + bytes(range(2, 256)).hex() + "0101"),
    (bytes(range(3, 256)).hex() + "0001", "fe" + bytes(range(3, 256)).hex() + "0201"),
    ("01" * 508, "ff" + "01" * 254 + "ff" + "01" * 254),
    ("01" * 508 + "00", "ff" + "01" * 254 + "ff" + "01" * 254 + "0101"),
]


@pytest.mark.parametrize(("raw", "encoded"), COBS_VECTORS)
def test_cobs_vectors(raw: str, encoded: str) -> None:
    assert cobs_encode(bytes.fromhex(raw)).hex() == encoded
    assert cobs_decode(bytes.fromhex(encoded)).hex() == raw
    assert cobs_reference(bytes.fromhex(raw)).hex() == encoded


@given(any_data)
@settings(max_examples=400)
def test_cobs_round_trip_and_overhead(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert b"\x00" not in encoded
    assert cobs_decode(encoded) == data
    assert encoded == cobs_reference(data)
    assert len(data) + 1 <= len(encoded) <= len(data) + 1 + len(data) // 254
    # Accepts bytearray and memoryview too.
    assert cobs_encode(bytearray(data)) == encoded == cobs_encode(memoryview(data))
    assert cobs_decode(bytearray(encoded)) == data


@given(
    st.binary(max_size=600).map(lambda raw: raw.replace(b"\x00", b"\x01"))
    | st.lists(st.sampled_from([1, 2, 3, 0xFE, 0xFF]), max_size=600).map(bytes)
)
@settings(max_examples=400)
def test_cobs_decode_of_any_zero_free_bytes_is_the_reference(data: bytes) -> None:
    # Every block sequence, valid or not, with and without 0xFF blocks: the decoder puts the
    # zeros in place where it can and goes block by block otherwise, with the same outcome.
    expected = cobs_decode_reference(data)
    if expected is None:
        with pytest.raises(FrameError, match="runs past the end"):
            cobs_decode(data)
    else:
        assert cobs_decode(data) == expected


def test_cobs_decode_accepts_a_closing_empty_block() -> None:
    # Some encoders close input that ends on a full block with an empty "01" block.
    block = bytes(range(1, 255))
    assert cobs_decode(b"\xff" + block + b"\x01") == block


@pytest.mark.parametrize(
    ("encoded", "offset", "text"),
    [
        ("03110022", 2, "COBS data has a 00 byte at offset 2: 03110022"),
        ("0511", 0, "COBS code 5 at offset 0 runs past the end (2 bytes): 0511"),
        ("021104", 2, "COBS code 4 at offset 2 runs past the end (3 bytes): 021104"),
    ],
)
def test_cobs_decode_errors(encoded: str, offset: int, text: str) -> None:
    with pytest.raises(FrameError) as caught:
        cobs_decode(bytes.fromhex(encoded))
    assert caught.value.offset == offset
    assert str(caught.value) == text


# --- frames ----------------------------------------------------------------------------------


@given(payloads)
@settings(max_examples=300)
def test_frame_round_trip(payload: bytes) -> None:
    frame = encode_frame(payload)
    assert frame[:1] == frame[-1:] == b"\x00"
    assert b"\x00" not in frame[1:-1]
    inner = cobs_decode(frame[1:-1])
    assert inner == payload + crc16_bitwise(payload).to_bytes(2, "big")
    assert decode_frame(frame) == payload
    assert decode_frame(frame[1:-1]) == payload  # without delimiters
    assert decode_frame(frame[1:]) == decode_frame(b"\x00\x00" + frame[:-1]) == payload


def test_frame_limits() -> None:
    assert MAX_PAYLOAD == 1024
    worst = encode_frame(b"\x01" * MAX_PAYLOAD)  # no zero: the most code bytes
    assert len(worst) == MAX_FRAME + 2
    assert decode_frame(worst) == b"\x01" * MAX_PAYLOAD
    with pytest.raises(FrameError, match=r"payload of 1025 bytes is longer than MAX_PAYLOAD"):
        encode_frame(bytes(MAX_PAYLOAD + 1))
    # COBS of 1030 zeros is 1031 bytes of 01: within MAX_FRAME, but a 1028-byte payload.
    with pytest.raises(FrameError, match=r"frame too long: payload of 1028 bytes"):
        decode_frame(b"\x01" * MAX_FRAME)
    with pytest.raises(FrameError, match=r"frame too long: 1032 bytes between delimiters"):
        decode_frame(b"\x01" * (MAX_FRAME + 1))


def test_crc_error_shows_both_values_and_the_payload() -> None:
    frame = bytearray(encode_frame(b"\x83\x07\x01\xa0"))
    frame[-2] ^= 0x01  # the low CRC byte
    with pytest.raises(CrcError) as caught:
        decode_frame(bytes(frame))
    crc = crc16(b"\x83\x07\x01\xa0")
    assert str(caught.value) == (
        f"CRC mismatch: frame carries 0x{crc ^ 1:04x}, payload computes 0x{crc:04x};"
        " payload: 830701a0"
    )
    assert caught.value.offset == 4
    assert isinstance(caught.value, FrameError)


def test_long_bytes_are_cut_short_in_messages() -> None:
    payload = bytes(range(1, 101))
    frame = bytearray(encode_frame(payload))
    frame[60] ^= 0x40  # past the 32 bytes the message shows
    with pytest.raises(CrcError, match=re.escape(payload[:32].hex()) + r"\.\.\. \(100 bytes\)$"):
        decode_frame(bytes(frame))


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        ("", "no frame: only delimiters or nothing: "),
        ("0000", "no frame: only delimiters or nothing: 0000"),
        (
            "0201",
            "frame too short: 1 byte(s) after COBS decoding, need at least 2 (the CRC-16): 0201",
        ),
        ("01", "frame too short: 0 byte(s) after COBS decoding, need at least 2 (the CRC-16): 01"),
        ("0002010002010000", "more than one frame: a 00 delimiter inside, at offset 3"),
        ("098306", "COBS code 9 at offset 0 runs past the end (3 bytes): 098306"),
    ],
)
def test_decode_frame_errors(frame: str, text: str) -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(bytes.fromhex(frame))
    assert not isinstance(caught.value, CrcError)
    assert str(caught.value).startswith(text)


@given(st.binary(max_size=1200))
@settings(max_examples=400)
def test_decode_frame_raises_only_frame_errors(data: bytes) -> None:
    error = typed_error_or_none(FrameError, decode_frame, data)
    if error is None:
        # Whatever it accepted re-encodes to the same frame (modulo delimiters and the
        # non-canonical closing block COBS allows).
        assert decode_frame(encode_frame(decode_frame(data))) == decode_frame(data)
    typed_error_or_none(FrameError, cobs_decode, data)


def test_serial_framing_doc_example_and_errors() -> None:
    doc = (REPO / "docs" / "formats" / "serial-framing.md").read_text()
    block = re.search(r"<!-- example framing -->\n```text\n(.*?)```", doc, re.DOTALL)
    assert block, "serial-framing.md has no framing example"
    payload = bytes.fromhex("8306190100a10100")  # TxAck(error=NONE, token=256)
    crc = crc16(payload)
    with_crc = payload + crc.to_bytes(2, "big")
    expected = (
        f"payload ({len(payload)} bytes): {payload.hex(' ')}\n"
        f"CRC-16/CCITT-FALSE: 0x{crc:04x}\n"
        f"payload | CRC ({len(with_crc)} bytes): {with_crc.hex(' ')}\n"
        f"COBS ({len(cobs_encode(with_crc))} bytes): {cobs_encode(with_crc).hex(' ')}\n"
        f"frame on the wire ({len(encode_frame(payload))}): {encode_frame(payload).hex(' ')}\n"
    )
    assert re.sub(r"\s+", " ", block.group(1)) == re.sub(r"\s+", " ", expected)
    # The error table quotes the real messages.
    for bad in ["0000", "0002010002010000", "098306", "0201"]:
        error = typed_error_or_none(FrameError, decode_frame, bytes.fromhex(bad))
        assert error is not None
        assert f"`{type(error).__name__}: {error}`" in doc
    bad_crc = bytearray(encode_frame(payload))
    bad_crc[-2] ^= 0x03
    error = typed_error_or_none(FrameError, decode_frame, bytes(bad_crc))
    assert f"`CrcError: {error}`" in doc
    error = typed_error_or_none(FrameError, encode_frame, bytes(1025))
    assert f"`FrameError: {error}`" in doc
    # The usage snippet at the top runs as written (its asserts included).
    snippet = re.search(r"```python\n(.*?)```", doc, re.DOTALL)
    assert snippet
    exec(snippet.group(1), {})


# --- the streaming decoder -------------------------------------------------------------------


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
        assert decoder.buffered <= decoder.max_frame
    return out


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


@given(st.lists(payloads, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
@settings(max_examples=200)
def test_any_chunking_gives_the_same_frames(items: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(item) for item in items)
    whole = FrameDecoder()
    assert whole.feed(stream) == items
    pieces = FrameDecoder()
    assert feed_all(pieces, chunked(stream, cuts)) == items
    assert pieces.frames_ok == len(items)
    assert (pieces.crc_errors, pieces.frame_errors, pieces.overflows) == (0, 0, 0)
    assert (pieces.bytes_discarded, pieces.buffered, pieces.last_error) == (0, 0, None)


def test_byte_by_byte() -> None:
    items = [b"", b"\x00", b"hello", bytes(300), bytes(range(256)) * 3]
    stream = b"".join(encode_frame(item) for item in items)
    decoder = FrameDecoder()
    out = feed_all(decoder, [stream[i : i + 1] for i in range(len(stream))])
    assert out == items
    # Frames sent back to back without a leading delimiter decode as well.
    trailing_only = b"".join(encode_frame(item)[1:] for item in items)
    assert FrameDecoder().feed(trailing_only) == items


@given(
    items=st.lists(payloads, min_size=1, max_size=6),
    garbage=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=7),
    cuts=st.lists(st.integers(0, 5000), max_size=8),
)
@settings(max_examples=200)
def test_garbage_before_and_between_frames_is_dropped_and_counted(
    items: list[bytes], garbage: list[bytes], cuts: list[int]
) -> None:
    # Garbage that happens to hold a valid frame would be a frame: leave those out.
    assume(
        all(
            typed_error_or_none(FrameError, decode_frame, b)
            for g in garbage
            for b in frame_bodies(g)
        )
    )
    stream = b""
    for index, item in enumerate(items):
        stream += garbage[index % len(garbage)] + encode_frame(item)
    stream += garbage[-1]
    decoder = FrameDecoder()
    out = feed_all(decoder, chunked(stream, cuts))
    assert out == items
    used = [garbage[index % len(garbage)] for index in range(len(items))] + [garbage[-1]]
    complete = used[:-1] + [piece for piece in [garbage[-1].rpartition(b"\x00")[0]] if piece]
    bad_bodies = [body for g in complete for body in frame_bodies(g)]
    assert decoder.crc_errors + decoder.frame_errors == len(bad_bodies)
    assert decoder.bytes_discarded == sum(len(body) for body in bad_bodies)
    # What follows the last delimiter waits for its own.
    assert decoder.buffered == len(garbage[-1].rpartition(b"\x00")[2])


def cobs_data_positions(frame: bytes) -> list[int]:
    """Offsets in ``frame`` (both delimiters included) of data bytes, not COBS code bytes."""
    positions: list[int] = []
    at = 1
    while at < len(frame) - 1:
        code = frame[at]
        positions.extend(range(at + 1, at + code))
        at += code
    return positions


@given(
    items=st.lists(payloads, min_size=2, max_size=6),
    which=st.integers(0, 5),
    pick=st.integers(0, 10_000),
    flip=st.integers(1, 255),
)
@settings(max_examples=300)
def test_a_corrupted_frame_is_a_crc_error_and_its_neighbours_survive(
    items: list[bytes], which: int, pick: int, flip: int
) -> None:
    frames = [encode_frame(item) for item in items]
    target = which % len(frames)
    positions = cobs_data_positions(frames[target])
    assume(positions)  # payload and CRC all zeros: nothing but code bytes
    damaged = bytearray(frames[target])
    at = positions[pick % len(positions)]
    assume(damaged[at] ^ flip != 0)  # a new 00 would split the frame: another test's case
    damaged[at] ^= flip
    frames[target] = bytes(damaged)
    decoder = FrameDecoder()
    # A CRC-16 catches every error burst of up to 16 bits: one changed data byte always.
    assert decoder.feed(b"".join(frames)) == items[:target] + items[target + 1 :]
    assert (decoder.crc_errors, decoder.frame_errors) == (1, 0)
    assert decoder.bytes_discarded == len(damaged) - 2
    assert isinstance(decoder.last_error, CrcError)


def common(wanted: list[bytes], got: list[bytes]) -> int:
    """The length of the longest common subsequence of two lists of payloads."""
    row = [0] * (len(got) + 1)
    for item in wanted:
        previous = row[:]
        for index, payload in enumerate(got):
            row[index + 1] = (
                previous[index] + 1 if item == payload else max(row[index], previous[index + 1])
            )
    return row[-1]


@given(
    items=st.lists(payloads, min_size=2, max_size=6),
    pick=st.integers(0, 100_000),
    flip=st.integers(1, 255),
)
@settings(max_examples=300)
def test_one_bad_byte_anywhere_loses_at_most_one_frame(
    items: list[bytes], pick: int, flip: int
) -> None:
    # Delimiters on both sides confine the damage of one byte (a changed COBS code, a data
    # byte turned 00, a delimiter turned data) to the frame around it.
    stream = bytearray(b"".join(encode_frame(item) for item in items))
    stream[pick % len(stream)] ^= flip
    decoder = FrameDecoder()
    out = decoder.feed(bytes(stream))
    assert common(items, out) >= len(items) - 1
    assert decoder.frames_ok == len(out)


def test_overflow_keeps_memory_bounded_and_recovers() -> None:
    decoder = FrameDecoder(max_frame=100)
    good = encode_frame(b"after the flood")
    assert decoder.feed(b"\x01" * 60) == []
    assert decoder.buffered == 60
    assert decoder.feed(b"\x02" * 60) == []  # 120 > 100 bytes without a delimiter
    assert (decoder.overflows, decoder.buffered, decoder.bytes_discarded) == (1, 0, 120)
    assert isinstance(decoder.last_error, FrameError)
    assert "more than 100 bytes without a 00 delimiter" in str(decoder.last_error)
    for _ in range(1000):  # 1 MB more of noise, in 1 kB reads
        assert decoder.feed(bytes([0x55]) * 1000) == []
        assert decoder.buffered == 0
    assert decoder.overflows == 1
    assert decoder.bytes_discarded == 120 + 1_000_000
    # The next delimiter ends the flood; the frame after it is whole.
    assert decoder.feed(b"\x55\x55" + good + good[:4]) == [b"after the flood"]
    assert decoder.bytes_discarded == 120 + 1_000_002
    assert decoder.feed(good[4:]) == [b"after the flood"]
    assert (decoder.frames_ok, decoder.crc_errors, decoder.frame_errors) == (2, 0, 0)


def test_overlong_frame_in_one_read_is_an_overflow() -> None:
    decoder = FrameDecoder(max_frame=50)
    big = encode_frame(bytes(range(1, 80)))
    small = encode_frame(b"ok")
    assert decoder.feed(big + small) == [b"ok"]
    assert (decoder.overflows, decoder.frame_errors, decoder.crc_errors) == (1, 0, 0)
    assert decoder.bytes_discarded == len(big) - 2
    # The same frame split over two reads overflows as well.
    decoder = FrameDecoder(max_frame=50)
    assert decoder.feed(big[:40]) == []
    assert decoder.feed(big[40:] + small) == [b"ok"]
    assert (decoder.overflows, decoder.bytes_discarded) == (1, len(big) - 2)


def test_a_frame_of_exactly_max_frame_is_accepted() -> None:
    payload = bytes(range(1, 49))
    body = encode_frame(payload)[1:-1]
    assert len(body) == 51  # 48 bytes, 2 of CRC, 1 code byte (the CRC has no 00 here)
    decoder = FrameDecoder(max_frame=len(body))
    assert decoder.feed(encode_frame(payload)) == [payload]
    decoder = FrameDecoder(max_frame=len(body) - 1)
    assert decoder.feed(encode_frame(payload)) == []
    assert decoder.overflows == 1


def test_reset_drops_a_partial_frame_and_keeps_counters() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"abc")
    decoder.feed(b"\x07\x00" + frame[:4])
    assert decoder.buffered == 3
    decoder.reset()
    assert decoder.buffered == 0
    assert decoder.frame_errors == 1
    assert decoder.feed(frame) == [b"abc"]


def test_feed_takes_bytearray_and_memoryview() -> None:
    frame = encode_frame(b"xyz")
    decoder = FrameDecoder()
    assert decoder.feed(bytearray(frame)) == [b"xyz"]
    assert decoder.feed(memoryview(frame)) == [b"xyz"]
    assert all(type(payload) is bytes for payload in FrameDecoder().feed(bytearray(frame)))


@pytest.mark.parametrize("bad", [0, 2, -1, True, 3.5, "100"])
def test_max_frame_must_be_sensible(bad: object) -> None:
    with pytest.raises(FrameError, match="max_frame must be an integer of at least 3"):
        FrameDecoder(max_frame=bad)  # type: ignore[arg-type]


@given(st.lists(st.binary(max_size=200) | zero_heavy, max_size=10), st.integers(3, 300))
@settings(max_examples=300)
def test_arbitrary_bytes_never_raise_from_feed(chunks: list[bytes], max_frame: int) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    out = feed_all(decoder, chunks)
    assert decoder.frames_ok == len(out)
    errors = decoder.crc_errors + decoder.frame_errors + decoder.overflows
    assert (decoder.last_error is None) == (errors == 0)
    # Every input byte is a delimiter, in a returned frame, discarded, or waiting.
    stream = b"".join(chunks)
    assert decoder.bytes_discarded + decoder.buffered <= len(stream) - stream.count(0)
    if not out:
        assert decoder.bytes_discarded + decoder.buffered == len(stream) - stream.count(0)


def test_seeded_hostile_stream() -> None:
    """Every kind of damage at once, in random reads: each good frame survives, once."""
    rng = random.Random(7)
    sent: list[bytes] = []
    stream = bytearray()
    damaged = noises = floods = 0
    for index in range(400):
        payload = rng.randbytes(rng.randrange(0, 200))
        frame = bytearray(encode_frame(payload))
        if index % 50 == 25:  # a flood past max_frame, ended by the frame's delimiter
            stream += b"\xaa" * (MAX_FRAME + 10)
            floods += 1
        elif rng.random() < 0.1:  # noise without delimiters
            stream += bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 30)))
            noises += 1
        positions = cobs_data_positions(bytes(frame))
        if rng.random() < 0.1 and positions:  # one changed data byte, never to 00
            at = rng.choice(positions)
            frame[at] = frame[at] % 255 + 1 if frame[at] != 0xFF else 0x01
            damaged += 1
        else:
            sent.append(payload)
        stream += frame
    reads = []
    at = 0
    while at < len(stream):
        size = rng.choice([1, 2, 7, 64, 300, 4096])
        reads.append(bytes(stream[at : at + size]))
        at += size
    decoder = FrameDecoder()
    assert feed_all(decoder, reads) == sent
    assert decoder.crc_errors >= damaged > 10
    assert decoder.crc_errors + decoder.frame_errors == damaged + noises
    assert decoder.overflows == floods == 8


def test_all_errors_are_codec_errors() -> None:
    assert issubclass(CrcError, FrameError)
    assert issubclass(FrameError, CodecError)
    assert CRC_SIZE == 2
