"""Control messages (joins and device sessions): round trips, an independent CBOR reading, and
malformed or arbitrary input raising only CborError or SchemaError."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.control import (
    JoinAnswer,
    JoinForward,
    SessionUpdate,
    decode_join_answer,
    decode_join_forward,
    decode_session_update,
    encode_join_answer,
    encode_join_forward,
    encode_session_update,
)
from owlgate.codecs.errors import CborError, SchemaError
from owlgate.codecs.node import cbor

tokens = st.integers(1, 0xFFFF)
join_requests = st.binary(min_size=23, max_size=23)
accepts = st.one_of(st.binary(min_size=17, max_size=17), st.binary(min_size=33, max_size=33))
sealed = st.binary(min_size=0, max_size=120)
euis = st.binary(min_size=8, max_size=8)

forwards = st.builds(JoinForward, tokens, join_requests, st.integers(0, (1 << 64) - 1))
accepted = st.builds(
    lambda token, phy, session: JoinAnswer(token, accept_phy=phy, sealed_session=session),
    tokens,
    accepts,
    sealed,
)
refused = st.builds(lambda token, why: JoinAnswer(token, refusal=why), tokens, st.text())
updates = st.builds(
    SessionUpdate, st.lists(sealed, max_size=6), st.lists(euis, max_size=4), st.booleans()
)


def _encode(message: JoinForward | JoinAnswer | SessionUpdate) -> bytes:
    if isinstance(message, JoinForward):
        return encode_join_forward(message)
    if isinstance(message, JoinAnswer):
        return encode_join_answer(message)
    return encode_session_update(message)


def _outcome(decoder: Callable[[bytes], object], data: bytes) -> object:
    """The decoded message, or the CborError or SchemaError the decoder refused with (any
    other error fails the test)."""
    try:
        return decoder(data)
    except (CborError, SchemaError) as err:
        return err


DECODERS: list[Callable[[bytes], object]] = [
    decode_join_forward,
    decode_join_answer,
    decode_session_update,
]


@settings(max_examples=100, deadline=None)
@given(forwards)
def test_join_forward_round_trip(message: JoinForward) -> None:
    data = encode_join_forward(message)
    assert decode_join_forward(data) == message
    # Read independently: a map with integer keys 1, 2, 3.
    assert cbor2.loads(data) == {1: message.token, 2: message.phy_payload, 3: message.received_at}


@settings(max_examples=100, deadline=None)
@given(st.one_of(accepted, refused))
def test_join_answer_round_trip(message: JoinAnswer) -> None:
    data = encode_join_answer(message)
    decoded = decode_join_answer(data)
    assert decoded == message
    assert decoded.accepted is (message.refusal is None)
    expected: dict[int, object]
    if message.refusal is None:
        expected = {1: message.token, 2: message.accept_phy, 3: message.sealed_session}
    else:
        expected = {1: message.token, 4: message.refusal}
    assert cbor2.loads(data) == expected


@settings(max_examples=100, deadline=None)
@given(updates)
def test_session_update_round_trip(message: SessionUpdate) -> None:
    data = encode_session_update(message)
    assert decode_session_update(data) == message
    expected: dict[int, object] = {5: message.sealed_sessions}
    if message.removed:
        expected[6] = message.removed
    if message.complete:
        expected[7] = True
    assert cbor2.loads(data) == expected


def test_encoding_is_deterministic() -> None:
    message = JoinForward(0x1234, bytes(range(23)), 1_800_000_000)
    assert encode_join_forward(message).hex() == (
        "a3011912340257" + bytes(range(23)).hex() + "031a6b49d200"
    )
    assert encode_session_update(SessionUpdate()) == bytes.fromhex("a10580")
    assert encode_session_update(SessionUpdate(complete=True)) == bytes.fromhex("a2058007f5")


@pytest.mark.parametrize(
    "message",
    [
        JoinForward(0, bytes(23), 0),
        JoinForward(0x10000, bytes(23), 0),
        JoinForward(1, bytes(22), 0),
        JoinForward(1, bytes(23), -1),
        JoinForward(1, bytes(23), 1 << 64),
        JoinAnswer(1),
        JoinAnswer(1, accept_phy=bytes(17)),
        JoinAnswer(1, accept_phy=bytes(16), sealed_session=b"x"),
        JoinAnswer(1, accept_phy=bytes(17), sealed_session=b"x", refusal="no"),
        SessionUpdate(removed=[bytes(7)]),
    ],
    ids=repr,
)
def test_encoders_refuse_what_decoders_would_refuse(
    message: JoinForward | JoinAnswer | SessionUpdate,
) -> None:
    with pytest.raises(SchemaError):
        _encode(message)


P23 = bytes(23)
P17 = bytes(17)


@pytest.mark.parametrize(
    ("decoder", "item"),
    [
        (decode_join_forward, [1, P23, 0]),
        (decode_join_forward, {2: P23, 3: 0}),
        (decode_join_forward, {1: 0, 2: P23, 3: 0}),
        (decode_join_forward, {1: True, 2: P23, 3: 0}),
        (decode_join_forward, {1: 1, 2: bytes(24), 3: 0}),
        (decode_join_forward, {1: 1, 2: "text", 3: 0}),
        (decode_join_forward, {1: 1, 2: P23, 3: -1}),
        (decode_join_forward, {1: 1, 2: P23, 3: False}),
        (decode_join_forward, {1: 1, 2: P23}),
        (decode_join_forward, {1: 1, 2: P23, 3: 0, 9: 0}),
        (decode_join_forward, {"1": 1, 2: P23, 3: 0}),
        (decode_join_answer, {1: 1}),
        (decode_join_answer, {1: 1, 2: P17}),
        (decode_join_answer, {1: 1, 2: bytes(18), 3: b""}),
        (decode_join_answer, {1: 1, 4: b"bytes, not text"}),
        (decode_join_answer, {1: 1, 2: P17, 3: b"", 4: "both"}),
        (decode_join_answer, {2: P17, 3: b""}),
        (decode_join_answer, {1: 1, 2: P17, 3: "text"}),
        (decode_session_update, {}),
        (decode_session_update, {5: b"not an array"}),
        (decode_session_update, {5: ["text"]}),
        (decode_session_update, {5: [], 6: [bytes(9)]}),
        (decode_session_update, {5: [], 6: b""}),
        (decode_session_update, {5: [], 7: []}),
        (decode_session_update, {5: [], 7: False}),
        (decode_session_update, {5: [], 7: 1}),
        (decode_session_update, {5: [], 8: True}),
        (decode_session_update, 5),
    ],
)
def test_malformed_messages_raise_schema_error(
    decoder: Callable[[bytes], object], item: object
) -> None:
    with pytest.raises(SchemaError):
        decoder(cbor.dumps(item))


@pytest.mark.parametrize("decoder", DECODERS)
def test_truncated_cbor_raises_cbor_error(decoder: Callable[[bytes], object]) -> None:
    data = encode_join_forward(JoinForward(7, P23, 5))
    for end in range(len(data)):
        with pytest.raises((CborError, SchemaError)):
            decoder(data[:end])
    with pytest.raises(CborError):
        decoder(data[:-1])


values = st.one_of(
    st.integers(-(1 << 64), (1 << 64) - 1),
    st.booleans(),
    st.none(),
    st.binary(max_size=40),
    st.text(max_size=10),
    st.lists(st.one_of(st.binary(max_size=12), st.integers(0, 9)), max_size=3),
)
maps = st.dictionaries(st.integers(0, 8), values, max_size=5)


@settings(max_examples=300, deadline=None)
@given(maps)
def test_arbitrary_maps_decode_or_raise_schema_error(item: dict[int, object]) -> None:
    data = cbor.dumps(item)
    for decoder in DECODERS:
        decoded = _outcome(decoder, data)
        if isinstance(decoded, CborError):
            pytest.fail(f"valid CBOR refused as CBOR: {decoded.message}")
        if isinstance(decoded, SchemaError):
            assert decoded.message
            continue
        assert isinstance(decoded, JoinForward | JoinAnswer | SessionUpdate)
        # What decodes re-encodes to the same bytes (nothing dropped or coerced), except an
        # empty list of removed DevEUIs, which the encoder leaves out.
        if not (isinstance(decoded, SessionUpdate) and item.get(6) == []):
            assert _encode(decoded) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    for decoder in DECODERS:
        decoded = _outcome(decoder, data)
        if isinstance(decoded, CborError | SchemaError):
            assert decoded.message
        else:
            assert isinstance(decoded, JoinForward | JoinAnswer | SessionUpdate)
