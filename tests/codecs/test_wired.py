"""Wired protocol v1: round trips, typed errors, and the node side (WiredNode) on CPython."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.errors import CborError, CodecError, SchemaError
from owlgate.codecs.node import cbor
from owlgate.codecs.node.framing import FrameDecoder, encode_frame
from owlgate.codecs.node.wired import (
    ERR_BAD_SETTING,
    ERR_MALFORMED,
    ERR_UNKNOWN_TYPE,
    MAX_REPLY_BYTES,
    MESSAGE_TYPES,
    Error,
    GetStatus,
    Message,
    Nothing,
    Poll,
    Readings,
    Settings,
    SettingsAck,
    Status,
    WiredError,
    WiredNode,
    WiredReading,
    decode_message,
    encode_message,
    message_name,
    peek_address,
)
from tests.conftest import typed_error_or_none

EUI = bytes.fromhex("70b3d57ed0001234")

# --- strategies ------------------------------------------------------------------------------

addresses = st.integers(1, 247)
u32 = st.integers(0, 2**32 - 1)
seqs = st.integers(1, 2**32 - 1)
euis = st.binary(min_size=8, max_size=8)
names = st.text(min_size=1, max_size=8).filter(lambda name: len(name.encode()) <= 32)
scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.sampled_from([0.5, -0.0, 1e300, math.inf])
)
value_maps = st.dictionaries(names, scalars, max_size=6)
wired_readings = st.builds(WiredReading, seqs, u32, value_maps)


@st.composite
def reading_lists(draw: st.DrawFn) -> list[WiredReading]:
    rows = draw(st.lists(wired_readings, min_size=1, max_size=6))
    seq = draw(st.integers(1, 2**32 - 100))
    for row in rows:
        row.seq = seq
        seq += draw(st.integers(1, 10))
    return rows


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Poll, addresses, u32, st.none() | u32),
    st.builds(Settings, addresses, seqs, value_maps),
    st.builds(GetStatus, addresses),
    st.builds(Readings, addresses, euis, u32, st.booleans(), reading_lists()),
    st.builds(Nothing, addresses, euis, u32),
    st.builds(SettingsAck, addresses, seqs),
    st.builds(Status, addresses, euis, u32, u32, u32, seqs, u32),
    st.builds(Error, addresses, st.integers(1, 255), st.text(max_size=20)),
)


# --- messages --------------------------------------------------------------------------------


@settings(max_examples=300)
@given(messages)
def test_every_message_round_trips_deterministically(message: Message) -> None:
    data = encode_message(message)
    decoded = decode_message(data)
    assert decoded == message
    assert encode_message(decoded) == data
    assert data == cbor.dumps(cbor.loads(data))  # deterministic CBOR
    assert peek_address(data) == (cbor.loads(data)[0], message.address)  # type: ignore[index]


@settings(max_examples=100)
@given(messages)
def test_every_message_survives_the_serial_framing(message: Message) -> None:
    data = encode_message(message)
    assert len(data) <= 1024
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(data)) == [data]


def test_byte_exact_examples_of_the_spec() -> None:
    # The examples in docs/protocol/wired-v1.md, byte for byte.
    assert encode_message(Poll(7, 0)).hex() == "83010700"
    assert encode_message(Poll(7, 41, 43)).hex() == "840107182918" + "2b"
    reading = WiredReading(42, 3, {"temperature_c": 21.5, "door": False})
    readings = Readings(7, EUI, 0, False, [reading])
    assert encode_message(readings).hex() == (
        "861107" + "48" + EUI.hex() + "00f4" + "81" + "83182a03"
        "a2" + "64646f6f72f4" + "6d74656d70657261747572655f63f94d60"
    )
    assert encode_message(Nothing(7, EUI, 0)).hex() == "841207" + "48" + EUI.hex() + "00"
    assert encode_message(Settings(7, 5, {"interval_s": 30})).hex() == (
        "84020705a16a696e74657276616c5f73181e"
    )
    assert encode_message(SettingsAck(7, 5)).hex() == "83130705"


def test_message_table_has_one_name_per_type() -> None:
    types = [entry[0] for entry in MESSAGE_TYPES]
    assert len(set(types)) == len(types) == 8
    assert all(entry[2] == (entry[0] < 16) for entry in MESSAGE_TYPES)
    assert message_name(17) == "READINGS"
    assert message_name(99) == "type 99"


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        pytest.param({"a": 1}, "non-empty CBOR array", id="a map"),
        pytest.param([], "non-empty CBOR array", id="empty array"),
        pytest.param([9, 7], "unknown message type 9", id="unknown type"),
        pytest.param([True, 7], "message type must be an integer", id="bool type"),
        pytest.param([1], "POLL has no address", id="no address"),
        pytest.param([1, 0, 0], "address must be an integer 1..247", id="address 0"),
        pytest.param([1, 248, 0], "address must be an integer 1..247", id="address 248"),
        pytest.param([1, 7], "POLL is [1, address, ack, ?received]", id="poll without ack"),
        pytest.param([1, 7, -1], "ack must be an integer 0..4294967295", id="negative ack"),
        pytest.param([1, 7, 2**32], "ack must be", id="ack beyond 32 bits"),
        pytest.param([1, 7, 0, 1, 2], "got 5 items", id="poll too long"),
        pytest.param([2, 7, 0, {}], "settings version must be an integer 1..", id="version 0"),
        pytest.param([2, 7, 1, {"a": "x"}], "must be an integer (64 bits)", id="text setting"),
        pytest.param([2, 7, 1, {1: 1}], "names must be text", id="int setting name"),
        pytest.param([2, 7, 1, {"": 1}], "names must be text", id="empty setting name"),
        pytest.param([2, 7, 1, {"x" * 33: 1}], "names must be text", id="long name"),
        pytest.param([2, 7, 1, [1]], "settings must be a map", id="settings as array"),
        pytest.param([3, 7, 1], "GET_STATUS is [3, address]", id="get status too long"),
        pytest.param([17, 7, EUI, 0, True, []], "non-empty array of readings", id="no rows"),
        pytest.param([17, 7, EUI[:7], 0, True, [[1, 0, {}]]], "eui must be an 8-byte", id="eui7"),
        pytest.param([17, 7, EUI.hex(), 0, True, [[1, 0, {}]]], "eui must be", id="eui text"),
        pytest.param([17, 7, EUI, 0, 1, [[1, 0, {}]]], "more must be true or false", id="more"),
        pytest.param([17, 7, EUI, 0, True, [[0, 0, {}]]], "seq must be an integer 1..", id="seq0"),
        pytest.param([17, 7, EUI, 0, True, [[1, 0.5, {}]]], "age_s must be", id="float age"),
        pytest.param([17, 7, EUI, 0, True, [[1, 0]]], "a reading is [seq", id="short reading"),
        pytest.param(
            [17, 7, EUI, 0, False, [[2, 0, {}], [2, 0, {}]]],
            "sequence numbers must increase",
            id="repeated seq",
        ),
        pytest.param([18, 7, EUI, -1], "settings_version must be", id="negative version"),
        pytest.param([19, 7, 0], "settings version must be", id="ack of version 0"),
        pytest.param([20, 7, EUI, 0, 0, 0, 0, 0], "next_seq must be", id="next seq 0"),
        pytest.param([21, 7, 0, ""], "error code must be", id="error code 0"),
        pytest.param([21, 7, 1, "x" * 65], "text must be text of at most 64", id="long text"),
        pytest.param(
            [2, 7, 1, {f"k{index}": index for index in range(33)}],
            "must have 0..32 entries",
            id="too many settings",
        ),
    ],
)
def test_invalid_messages_are_refused_with_a_wired_error(items: object, fragment: str) -> None:
    with pytest.raises(WiredError) as caught:
        decode_message(cbor.dumps(items))
    assert fragment in caught.value.message
    assert isinstance(caught.value, SchemaError)


def test_bad_cbor_is_a_cbor_error() -> None:
    with pytest.raises(CborError):
        decode_message(b"")
    with pytest.raises(CborError):
        decode_message(bytes.fromhex("830107"))  # truncated
    with pytest.raises(CborError):
        decode_message(encode_message(Poll(7, 0)) + b"\x00")  # trailing byte


def test_the_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(WiredError, match="address"):
        encode_message(Poll(0, 0))
    with pytest.raises(WiredError, match="eui"):
        encode_message(Nothing(7, EUI[:4], 0))
    with pytest.raises(WiredError, match="not a wired protocol message"):
        encode_message("POLL")  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_fail_typed(data: bytes) -> None:
    typed_error_or_none(CodecError, decode_message, data)
    head = peek_address(data)
    assert head is None or isinstance(head[1], int)


# --- the node side ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_node(**kw: object) -> tuple[WiredNode, Clock]:
    clock = Clock()
    options: dict[str, object] = {
        "settings": {"interval_s": 60, "threshold": 1.5, "on": True},
        "clock": clock,
    }
    options.update(kw)
    return WiredNode(7, EUI, **options), clock  # type: ignore[arg-type]


def ask(node: WiredNode, message: Message) -> Message | None:
    reply = node.handle(encode_message(message))
    return None if reply is None else decode_message(reply)


def test_poll_sends_readings_with_ages_and_keeps_them_until_acked() -> None:
    node, clock = make_node()
    assert ask(node, Poll(7, 0)) == Nothing(7, EUI, 0)
    assert node.add_reading({"t": 20.5}) == 1
    clock.now += 4
    assert node.add_reading({"t": 21}) == 2
    clock.now += 2
    answer = ask(node, Poll(7, 0))
    assert answer == Readings(
        7, EUI, 0, False, [WiredReading(1, 6, {"t": 20.5}), WiredReading(2, 2, {"t": 21})]
    )
    # Received but not acknowledged: not sent again, still held.
    assert ask(node, Poll(7, 0, 2)) == Nothing(7, EUI, 0)
    assert node.pending() == [1, 2]
    assert node.acked_seq == 0
    # The host lost its session (restart): it says nothing of "received", so both come again.
    again = ask(node, Poll(7, 0))
    assert isinstance(again, Readings)
    assert [row.seq for row in again.readings] == [1, 2]
    # Acknowledged: dropped.
    assert ask(node, Poll(7, 1, 2)) == Nothing(7, EUI, 0)
    assert node.pending() == [2]
    assert node.acked_seq == 1
    ask(node, Poll(7, 2))
    assert node.pending() == []
    assert node.buffered == 0


def test_the_buffer_drops_the_oldest_and_counts() -> None:
    node, _ = make_node(capacity=3)
    for value in range(5):
        node.add_reading({"v": value})
    assert node.pending() == [3, 4, 5]
    assert node.dropped == 2
    status = ask(node, GetStatus(7))
    assert status == Status(7, EUI, 0, 3, 2, 6, 0)


def test_a_full_reply_says_more() -> None:
    node, _ = make_node(capacity=300)
    for value in range(200):
        node.add_reading({"value": value, "name_that_takes_room": value / 4})
    received = 0
    batches = 0
    while True:
        answer = ask(node, Poll(7, 0, received or None))
        if isinstance(answer, Nothing):
            break
        assert isinstance(answer, Readings)
        assert len(encode_message(answer)) <= MAX_REPLY_BYTES
        assert [row.seq for row in answer.readings] == list(
            range(received + 1, received + 1 + len(answer.readings))
        )
        received = answer.readings[-1].seq
        batches += 1
        assert answer.more is (received < 200)
    assert received == 200
    assert batches > 3


def test_a_reading_too_large_for_a_reply_is_refused() -> None:
    node, _ = make_node()
    with pytest.raises(WiredError, match="does not fit one reply"):
        node.add_reading(
            {f"name_{index:02d}_of_length_thirty_two"[:32]: index for index in range(32)}
        )
    assert node.pending() == []
    assert node.next_seq == 1
    with pytest.raises(WiredError, match="must be an integer"):
        node.add_reading({"text": "not a scalar"})


def test_settings_apply_all_or_nothing() -> None:
    node, _ = make_node()
    assert ask(node, Settings(7, 5, {"interval_s": 30, "threshold": 2})) == SettingsAck(7, 5)
    assert node.settings == {"interval_s": 30, "threshold": 2.0, "on": True}
    assert isinstance(node.settings["threshold"], float)
    assert node.settings_version == 5
    refused = ask(node, Settings(7, 6, {"interval_s": 10, "on": 1}))
    assert refused == Error(7, ERR_BAD_SETTING, "on must be a bool")
    unknown = ask(node, Settings(7, 6, {"colour": 1}))
    assert unknown == Error(7, ERR_BAD_SETTING, "unknown setting colour")
    assert ask(node, Settings(7, 6, {"interval_s": 1.5})) == Error(
        7, ERR_BAD_SETTING, "interval_s must be an integer"
    )
    assert node.settings == {"interval_s": 30, "threshold": 2.0, "on": True}
    assert node.settings_version == 5
    # The version travels in every POLL answer.
    assert ask(node, Poll(7, 0)) == Nothing(7, EUI, 5)


def test_the_node_ignores_what_is_not_its_request() -> None:
    node, _ = make_node()
    node.add_reading({"v": 1})
    assert ask(node, Poll(8, 0)) is None
    assert ask(node, Nothing(7, EUI, 0)) is None  # another node's answer on the bus
    assert ask(node, Readings(9, EUI, 0, False, [WiredReading(1, 0, {})])) is None
    assert node.ignored == 3
    assert node.pending() == [1]
    # Undecodable, or not provably addressed to this node: silent, counted.
    assert node.handle(b"\xff") is None
    assert node.handle(cbor.dumps([1, 8])) is None
    assert node.invalid == 2


def test_malformed_requests_for_this_node_get_an_error() -> None:
    node, _ = make_node()
    reply = node.handle(cbor.dumps([1, 7]))
    assert reply is not None
    error = decode_message(reply)
    assert isinstance(error, Error)
    assert error.code == ERR_MALFORMED
    assert "POLL" in error.text
    unknown = node.handle(cbor.dumps([9, 7]))
    assert unknown is not None
    assert decode_message(unknown) == Error(7, ERR_UNKNOWN_TYPE, "unknown message type 9")
    assert node.invalid == 2


def test_a_node_that_lost_its_counter_renumbers_above_the_host() -> None:
    node, _ = make_node()
    node.add_reading({"v": 1})
    node.add_reading({"v": 2})
    # The host has stored up to 500 from this node before it rebooted without its counter.
    answer = ask(node, Poll(7, 500))
    assert isinstance(answer, Readings)
    assert [row.seq for row in answer.readings] == [501, 502]
    assert [row.values for row in answer.readings] == [{"v": 1}, {"v": 2}]
    assert node.renumbered == 1
    assert node.next_seq == 503
    assert node.acked_seq == 500
    assert node.add_reading({"v": 3}) == 503


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"address": 0}, "address", id="address 0"),
        pytest.param({"eui": b"short"}, "eui", id="short eui"),
        pytest.param({"capacity": 0}, "capacity", id="no capacity"),
        pytest.param({"next_seq": 0}, "next_seq", id="seq 0"),
        pytest.param({"settings": {"a": "b"}}, "settings", id="text setting"),
    ],
)
def test_bad_node_arguments_are_typed_errors(kwargs: dict[str, object], fragment: str) -> None:
    arguments: dict[str, object] = {"address": 7, "eui": EUI}
    arguments.update(kwargs)
    with pytest.raises(WiredError, match=fragment):
        WiredNode(**arguments)  # type: ignore[arg-type]


def test_every_message_class_defines_its_wire_items() -> None:
    # The base class's _items is abstract (MicroPython has no abc): none may be left to it.
    from owlgate.codecs.node import wired

    classes: list[type] = [wired.WiredReading, *wired.Message.__subclasses__()]
    assert len(classes) == 9
    for cls in classes:
        assert "_items" in vars(cls), cls.__name__
