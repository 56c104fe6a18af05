"""The deterministic CBOR codec, against RFC 8949 Appendix A and against cbor2."""

from __future__ import annotations

import math
import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.errors import CborError, CodecError
from owlgate.codecs.node import cbor
from tests.conftest import typed_error_or_none

# RFC 8949 Appendix A: (value, encoding) pairs whose encoding is also the deterministic one.
APPENDIX_A = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (0.0, "f90000"),
    (-0.0, "f98000"),
    (1.0, "f93c00"),
    (1.1, "fb3ff199999999999a"),
    (1.5, "f93e00"),
    (65504.0, "f97bff"),
    (100000.0, "fa47c35000"),
    (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"),
    (5.960464477539063e-8, "f90001"),
    (0.00006103515625, "f90400"),
    (-4.0, "f9c400"),
    (-4.1, "fbc010666666666666"),
    (math.inf, "f97c00"),
    (-math.inf, "f9fc00"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (cbor.Tag(0, "2013-03-21T20:04:00Z"), "c074323031332d30332d32315432303a30343a30305a"),
    (cbor.Tag(1, 1363896240), "c11a514b67b0"),
    (cbor.Tag(1, 1363896240.5), "c1fb41d452d9ec200000"),
    (cbor.Tag(23, b"\x01\x02\x03\x04"), "d74401020304"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    (
        {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
        "a56161614161626142616361436164614461656145",
    ),
]

# Appendix A items that are well-formed but not deterministic: indefinite lengths.
APPENDIX_A_DECODE_ONLY = [
    ("5f42010243030405ff", b"\x01\x02\x03\x04\x05"),
    ("7f657374726561646d696e67ff", "streaming"),
    ("9fff", []),
    ("9f018202039f0405ffff", [1, [2, 3], [4, 5]]),
    ("9f01820203820405ff", [1, [2, 3], [4, 5]]),
    ("83018202039f0405ff", [1, [2, 3], [4, 5]]),
    ("83019f0203ff820405", [1, [2, 3], [4, 5]]),
    ("bf61610161629f0203ffff", {"a": 1, "b": [2, 3]}),
    ("826161bf61626163ff", ["a", {"b": "c"}]),
    ("bf6346756ef563416d7421ff", {"Fun": True, "Amt": -2}),
]


@pytest.mark.parametrize(("value", "encoded"), APPENDIX_A)
def test_rfc8949_appendix_a_encodes(value: object, encoded: str) -> None:
    assert cbor.dumps(value).hex() == encoded


@pytest.mark.parametrize(("value", "encoded"), APPENDIX_A)
def test_rfc8949_appendix_a_decodes(value: object, encoded: str) -> None:
    decoded = cbor.loads(bytes.fromhex(encoded))
    assert decoded == value
    assert type(decoded) is type(value)


@pytest.mark.parametrize(("encoded", "value"), APPENDIX_A_DECODE_ONLY)
def test_indefinite_lengths_decode_and_reencode_definite(encoded: str, value: object) -> None:
    decoded = cbor.loads(bytes.fromhex(encoded))
    assert decoded == value
    assert cbor.loads(cbor.dumps(decoded)) == value
    assert 0x1F not in {byte & 0x1F for byte in cbor.dumps(decoded)[:1]}


def test_nan_has_one_encoding() -> None:
    assert cbor.dumps(math.nan).hex() == "f97e00"
    other_nan = struct.unpack(">d", bytes.fromhex("7ff8000000000001"))[0]
    assert cbor.dumps(other_nan).hex() == "f97e00"
    assert math.isnan(cbor.loads(bytes.fromhex("fb7ff8000000000000")))  # type: ignore[arg-type]


def test_map_keys_sorted_bytewise_by_encoding() -> None:
    # RFC 8949 section 4.2.1: bytewise order of the encoded keys, so 24 (0x1818) sorts before
    # -1 (0x20), and 10 (0x0a) before 100 (0x1864); insertion order never matters.
    value = {"b": 1, -1: 2, 100: 3, 10: 4, 24: 5, "a": 6, b"x": 7}
    encoded = cbor.dumps(value)
    assert encoded.hex() == "a70a041818051864032002417807616106616201"
    reordered = dict(reversed(list(value.items())))
    assert cbor.dumps(reordered) == encoded


def test_same_key_twice_is_refused() -> None:
    with pytest.raises(CborError, match="repeated map key") as caught:
        cbor.loads(bytes.fromhex("a201020103"))
    assert caught.value.offset == 3


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        ("", "truncated"),
        ("18", "truncated"),
        ("1c", "reserved additional information 28"),
        ("1f", "no indefinite length"),
        ("3f", "no indefinite length"),
        ("df", "no indefinite length"),
        ("62c328", "not valid UTF-8"),
        ("5a7fffffff", "truncated"),
        ("9b00000000ffffffff", "truncated"),
        ("bb00000000ffffffff", "truncated"),
        ("a18101", "not hashable"),
        ("a201010102", "repeated map key"),
        ("f7", "unsupported simple value 23"),
        ("f820", "unsupported simple value 24"),
        ("ff", "unexpected break"),
        ("0100", "trailing"),
        ("5f01ff", "wrong type"),
        ("5f6161ff", "wrong type"),
        ("bf01ff", "unexpected break"),
        ("9f01", "truncated"),
    ],
)
def test_malformed_input_is_a_typed_error(encoded: str, message: str) -> None:
    with pytest.raises(CborError, match=message) as caught:
        cbor.loads(bytes.fromhex(encoded))
    assert caught.value.offset is not None


def test_nesting_is_capped() -> None:
    deep = bytes.fromhex("81" * (cbor.MAX_DEPTH + 1) + "00")
    with pytest.raises(CborError, match="nesting deeper"):
        cbor.loads(deep)
    ok = bytes.fromhex("81" * cbor.MAX_DEPTH + "00")
    assert cbor.dumps(cbor.loads(ok)) == ok


def test_unencodable_values_are_refused() -> None:
    with pytest.raises(CborError, match="type set"):
        cbor.dumps({1, 2})
    with pytest.raises(CborError, match="64 bits"):
        cbor.dumps(2**64)
    with pytest.raises(CborError, match="64 bits"):
        cbor.dumps(-(2**64) - 1)
    with pytest.raises(CborError, match="tag number"):
        cbor.dumps(cbor.Tag(-1, 0))


def test_load_prefix_reads_a_sequence() -> None:
    stream = cbor.dumps([1, 2]) + cbor.dumps("x") + cbor.dumps({3: b"4"})
    items = []
    offset = 0
    while offset < len(stream):
        item, offset = cbor.load_prefix(stream, offset)
        items.append(item)
    assert items == [[1, 2], "x", {3: b"4"}]


# --- properties, and cross-checks against cbor2 (an independent implementation) ------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=40)
    | st.text(max_size=20)
)
keys = (
    st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(keys, children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=400)
@given(values)
def test_round_trip(value: object) -> None:
    assert cbor.loads(cbor.dumps(value)) == value


@settings(max_examples=400)
@given(values)
def test_cbor2_reads_what_we_write_and_we_read_what_it_writes(value: object) -> None:
    assert cbor2.loads(cbor.dumps(value)) == value
    assert cbor.loads(cbor2.dumps(value)) == value


@settings(max_examples=300)
@given(scalars | st.lists(scalars, max_size=5))
def test_same_bytes_as_cbor2_canonical_without_maps(value: object) -> None:
    # Without maps, cbor2's canonical mode and RFC 8949 deterministic encoding coincide
    # (cbor2 sorts map keys length-first, the older RFC 7049 rule, so maps are left out).
    assert cbor.dumps(value) == cbor2.dumps(value, canonical=True)


@settings(max_examples=300)
@given(values)
def test_encoding_is_a_fixed_point(value: object) -> None:
    encoded = cbor.dumps(value)
    assert cbor.dumps(cbor.loads(encoded)) == encoded


@settings(max_examples=1000)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    error = typed_error_or_none(CodecError, cbor.loads, data)
    assert error is None or isinstance(error, CborError)


@settings(max_examples=300)
@given(values, st.data())
def test_truncation_is_always_detected(value: object, data: st.DataObject) -> None:
    encoded = cbor.dumps(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(CborError):
        cbor.loads(encoded[:cut])
