"""Concentrator protocol v1: round trips, validation, strict decoding, describe_frame, the spec."""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs import concentrator
from owlgate.codecs.concentrator import (
    BANDWIDTHS_HZ,
    MESSAGES,
    PROTOCOL_VERSION,
    Capabilities,
    Channel,
    CodingRate,
    CrcStatus,
    Error,
    ErrorCode,
    GetStats,
    Hello,
    Message,
    MessageType,
    RadioConfig,
    RadioConfigAck,
    RxFrame,
    Stats,
    TokenRule,
    TxAck,
    TxError,
    TxRequest,
    decode_message,
    describe_frame,
    describe_message,
    encode_message,
    from_frame,
    peek_header,
    to_frame,
)
from owlgate.codecs.errors import CborError, CodecError, CrcError, FrameError, SchemaError
from owlgate.codecs.node import cbor
from owlgate.codecs.node.framing import MAX_PAYLOAD, FrameDecoder, encode_frame
from tests.conftest import REPO

# --- strategies ------------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
any_tokens = st.integers(0, 0xFFFF)
request_tokens = st.integers(1, 0xFFFF)
frequencies = st.integers(137_000_000, 1_020_000_000) | st.sampled_from(
    [868_100_000, 868_300_000, 868_500_000, 869_525_000]
)
sfs = st.integers(5, 12)
bandwidths = st.sampled_from(BANDWIDTHS_HZ)
coding_rates = st.sampled_from(CodingRate)
tx_powers = st.integers(-20, 36)
sf_lists = st.lists(sfs, min_size=1, max_size=8, unique=True).map(lambda v: tuple(sorted(v)))
phy_payloads = st.binary(min_size=1, max_size=255)


def texts(low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(max_size=high).filter(lambda text: low <= len(text.encode()) <= high)


channels = st.builds(
    Channel, frequency_hz=frequencies, bandwidth_hz=bandwidths, spreading_factors=sf_lists
)


@st.composite
def capabilities(draw: st.DrawFn) -> Capabilities:
    low, high = sorted(draw(st.lists(frequencies, min_size=2, max_size=2)))
    power_low, power_high = sorted(draw(st.lists(tx_powers, min_size=2, max_size=2)))
    chosen = draw(st.lists(bandwidths, min_size=1, max_size=3, unique=True))
    return Capabilities(
        chip=draw(texts(1, 32)),
        max_channels=draw(st.integers(1, 32)),
        frequency_min_hz=low,
        frequency_max_hz=high,
        tx_power_min_dbm=power_low,
        tx_power_max_dbm=power_high,
        spreading_factors=draw(sf_lists),
        bandwidths_hz=tuple(sorted(chosen)),
        gps=draw(st.booleans()),
    )


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    concentrator = draw(st.booleans())
    return Hello(
        protocol_version=draw(st.integers(1, 255)),
        firmware=draw(texts(1, 64)),
        eui=draw(st.binary(min_size=8, max_size=8)) if concentrator else None,
        capabilities=draw(capabilities()) if concentrator else None,
        token=draw(any_tokens),
    )


@st.composite
def radio_configs(draw: st.DrawFn) -> RadioConfig:
    low, high = sorted(draw(st.lists(frequencies, min_size=2, max_size=2)))
    return RadioConfig(
        config_id=draw(st.integers(1, 2**32 - 1)),
        region=draw(texts(1, 16)),
        lorawan_public=draw(st.booleans()),
        channels=tuple(draw(st.lists(channels, min_size=1, max_size=32))),
        tx_frequency_min_hz=low,
        tx_frequency_max_hz=high,
        tx_power_max_dbm=draw(tx_powers),
        stats_interval_s=draw(st.integers(0, 86_400)),
        token=draw(request_tokens),
    )


rx_frames = st.builds(
    RxFrame,
    frequency_hz=frequencies,
    sf=sfs,
    bandwidth_hz=bandwidths,
    coding_rate=coding_rates,
    rssi_dbm=st.integers(-200, 30),
    snr_db=st.integers(-256, 255).map(lambda quarters: quarters / 4),
    timestamp_us=u32,
    crc_status=st.sampled_from(CrcStatus),
    payload=phy_payloads,
    channel=st.none() | st.integers(0, 63),
    rf_chain=st.none() | st.integers(0, 7),
)
tx_requests = st.builds(
    TxRequest,
    timestamp_us=st.none() | u32,
    frequency_hz=frequencies,
    sf=sfs,
    bandwidth_hz=bandwidths,
    coding_rate=coding_rates,
    power_dbm=tx_powers,
    invert_polarity=st.booleans(),
    crc=st.booleans(),
    payload=phy_payloads,
    preamble_symbols=st.none() | st.integers(6, 0xFFFF),
    token=request_tokens,
)
tx_acks = st.builds(
    TxAck, error=st.sampled_from(TxError), timestamp_us=st.none() | u32, token=request_tokens
)
stats = st.builds(
    Stats,
    uptime_s=u32,
    rx_received=u32,
    rx_crc_ok=u32,
    rx_crc_bad=u32,
    tx_requested=u32,
    tx_sent=u32,
    tx_errors=st.dictionaries(st.sampled_from(list(TxError)[1:]), u32),
    config_id=u32,
    link_errors=u32,
    link_dropped=u32,
    temperature_c=st.none() | st.integers(-400, 1250).map(lambda tenths: tenths / 10),
    token=any_tokens,
)
errors = st.builds(
    Error,
    code=st.sampled_from(ErrorCode),
    message=texts(0, 128),
    ref_type=st.none() | st.integers(1, 255),
    token=any_tokens,
)

BY_TYPE: dict[MessageType, st.SearchStrategy[Any]] = {
    MessageType.HELLO: hellos(),
    MessageType.RADIO_CONFIG: radio_configs(),
    MessageType.RADIO_CONFIG_ACK: st.builds(
        RadioConfigAck, config_id=st.integers(1, 2**32 - 1), token=request_tokens
    ),
    MessageType.RX_FRAME: rx_frames,
    MessageType.TX_REQUEST: tx_requests,
    MessageType.TX_ACK: tx_acks,
    MessageType.GET_STATS: st.builds(GetStats, token=request_tokens),
    MessageType.STATS: stats,
    MessageType.ERROR: errors,
}
messages: st.SearchStrategy[Message] = st.one_of(*BY_TYPE.values())


def test_strategies_cover_every_message_type() -> None:
    assert set(BY_TYPE) == set(MessageType) == {spec.message_type for spec in MESSAGES}
    assert len({spec.cls for spec in MESSAGES}) == len(MESSAGES)
    assert PROTOCOL_VERSION == 1


# --- examples (also the worked examples of the spec) ------------------------------------------

UPLINK = bytes.fromhex("40f17dbe4900020001954378762b11ff0d")  # docs/cli.md's LoRaWAN uplink
# The ACK that answers it: unconfirmed downlink, FCnt 2, the MIC under the same NwkSKey.
DOWNLINK = bytes.fromhex("60f17dbe49200200dce69fa8")
SX1302_EU868 = Capabilities(
    chip="SX1302",
    max_channels=9,
    frequency_min_hz=863_000_000,
    frequency_max_hz=870_000_000,
    tx_power_min_dbm=-6,
    tx_power_max_dbm=27,
    spreading_factors=(5, 6, 7, 8, 9, 10, 11, 12),
    bandwidths_hz=(125_000, 250_000, 500_000),
    gps=False,
)
EXAMPLES: dict[str, Message] = {
    "hello-host": Hello(firmware="owlgate 0.1.0", token=1),
    "hello-concentrator": Hello(
        firmware="owlgate-bridge 1.0.0",
        eui=bytes.fromhex("b827ebfffe6c1a2b"),
        capabilities=SX1302_EU868,
        token=1,
    ),
    "radio-config": RadioConfig(
        config_id=1,
        region="EU868",
        channels=(
            Channel(frequency_hz=868_100_000),
            Channel(frequency_hz=868_300_000),
            Channel(frequency_hz=868_500_000),
        ),
        tx_frequency_min_hz=863_000_000,
        tx_frequency_max_hz=870_000_000,
        tx_power_max_dbm=16,
        stats_interval_s=30,
        token=2,
    ),
    "radio-config-ack": RadioConfigAck(config_id=1, token=2),
    "rx-frame": RxFrame(
        frequency_hz=868_100_000,
        sf=7,
        bandwidth_hz=125_000,
        coding_rate=CodingRate.CR_4_5,
        rssi_dbm=-57,
        snr_db=9.25,
        timestamp_us=3_512_348_611,
        crc_status=CrcStatus.OK,
        payload=UPLINK,
        channel=0,
        rf_chain=0,
    ),
    "tx-request": TxRequest(
        timestamp_us=3_513_348_611,
        frequency_hz=868_100_000,
        sf=7,
        power_dbm=14,
        payload=DOWNLINK,
        token=3,
    ),
    "tx-ack": TxAck(error=TxError.NONE, timestamp_us=3_513_012_400, token=3),
    "tx-ack-too-late": TxAck(error=TxError.TOO_LATE, timestamp_us=3_513_340_100, token=4),
    "get-stats": GetStats(token=5),
    "stats": Stats(
        uptime_s=86_400,
        rx_received=5120,
        rx_crc_ok=5002,
        rx_crc_bad=118,
        tx_requested=64,
        tx_sent=62,
        tx_errors={TxError.TOO_LATE: 2},
        config_id=1,
        link_errors=0,
        link_dropped=0,
        temperature_c=41.5,
        token=5,
    ),
    "error": Error(
        code=ErrorCode.UNKNOWN_TYPE, message="unknown message type 42", ref_type=42, token=6
    ),
}


def diagnostic(item: object) -> str:
    """CBOR diagnostic notation (RFC 8949 section 8) of a decoded item, as the spec shows it."""
    if item is None:
        return "null"
    if item is True or item is False:
        return str(item).lower()
    if isinstance(item, int):
        return str(item)
    if isinstance(item, bytes):
        return f"h'{item.hex()}'"
    if isinstance(item, str):
        return json.dumps(item)
    if isinstance(item, list):
        return "[" + ", ".join(diagnostic(entry) for entry in item) + "]"
    assert isinstance(item, dict), item
    return "{" + ", ".join(f"{diagnostic(k)}: {diagnostic(v)}" for k, v in item.items()) + "}"


def hex_lines(data: bytes) -> str:
    return "\n".join(data[at : at + 16].hex(" ") for at in range(0, len(data), 16))


def example_block(message: Message) -> str:
    """What the spec shows for an example: diagnostic notation, CBOR, and the serial frame."""
    data = encode_message(message)
    frame = to_frame(message)
    return (
        f"{diagnostic(cbor.loads(data))}\n\n"
        f"CBOR ({len(data)} bytes):\n{hex_lines(data)}\n\n"
        f"frame ({len(frame)} bytes):\n{hex_lines(frame)}\n"
    )


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


SPEC_DOC = REPO / "docs" / "protocol" / "concentrator-v1.md"


def test_spec_examples_are_what_the_codec_writes() -> None:
    doc = SPEC_DOC.read_text()
    blocks = dict(re.findall(r"<!-- example ([a-z-]+) -->\n```text\n(.*?)```", doc, re.DOTALL))
    assert set(blocks) == set(EXAMPLES), "every example in the spec is checked, and only those"
    for name, message in EXAMPLES.items():
        assert squeeze(blocks[name]) == squeeze(example_block(message)), name
        assert from_frame(to_frame(message)) == message


def test_spec_tables_list_every_field() -> None:
    # Each message section has a table row "| key | `name` | ..." per field.
    doc = SPEC_DOC.read_text()
    for spec in MESSAGES:
        heading = f"`{spec.message_type.name}` ({int(spec.message_type)})"
        assert heading in doc, heading
        section = doc[doc.index(heading) :]
        section = section[: section.find("\n### ", 1)]
        for entry in spec.fields:
            assert f"| {entry.key} | `{entry.name}` |" in section, (spec.message_type, entry)


# --- round trips -----------------------------------------------------------------------------


@given(messages)
@settings(max_examples=400)
def test_round_trip(message: Message) -> None:
    data = encode_message(message)
    assert decode_message(data) == message
    # The hand-written encoder writes exactly deterministic CBOR (RFC 8949 section 4.2.1), and
    # cbor2 (canonical: RFC 7049 order, the same for these small integer keys) agrees.
    assert cbor.dumps(cbor.loads(data)) == data
    assert cbor2.dumps(cbor2.loads(data), canonical=True) == data
    assert peek_header(data) == (_type(message), message.token)
    frame = to_frame(message)
    assert from_frame(frame) == message
    assert FrameDecoder().feed(frame) == [data]
    json.dumps(describe_message(message))  # JSON-ready


def _type(message: Message) -> int:
    return next(int(spec.message_type) for spec in MESSAGES if spec.cls is type(message))


def test_messages_are_frozen_and_hashable() -> None:
    for message in EXAMPLES.values():
        with pytest.raises(dataclasses.FrozenInstanceError):
            message.token = 9  # type: ignore[misc]
        assert hash(message) == hash(decode_message(encode_message(message)))
    stats = EXAMPLES["stats"]
    assert isinstance(stats, Stats)
    assert stats.tx_errors[TxError.TOO_LATE] == 2
    assert stats.tx_errors[TxError.TX_POWER] == 0
    with pytest.raises(TypeError):
        stats.tx_errors[TxError.TX_POWER] = 1  # type: ignore[index]


def test_values_are_normalised_on_construction() -> None:
    frame = RxFrame(
        frequency_hz=868_100_000,
        sf=7,
        bandwidth_hz=125_000,
        coding_rate=5,  # type: ignore[arg-type]
        rssi_dbm=-57,
        snr_db=9,
        timestamp_us=0,
        crc_status=-1,  # type: ignore[arg-type]
        payload=bytearray(b"\x40"),  # type: ignore[arg-type]
    )
    assert frame.coding_rate is CodingRate.CR_4_5
    assert frame.crc_status is CrcStatus.BAD
    assert type(frame.payload) is bytes
    assert type(frame.snr_db) is float
    config = RadioConfig(
        config_id=1,
        region="EU868",
        channels=[Channel(frequency_hz=868_100_000, spreading_factors=[7, 8])],  # type: ignore[arg-type]
        tx_frequency_min_hz=863_000_000,
        tx_frequency_max_hz=870_000_000,
        tx_power_max_dbm=14,
        token=1,
    )
    assert config.channels == (Channel(frequency_hz=868_100_000, spreading_factors=(7, 8)),)


# --- validation ------------------------------------------------------------------------------

RX = {
    "frequency_hz": 868_100_000,
    "sf": 7,
    "bandwidth_hz": 125_000,
    "coding_rate": CodingRate.CR_4_5,
    "rssi_dbm": -57,
    "snr_db": 9.25,
    "timestamp_us": 1,
    "crc_status": CrcStatus.OK,
    "payload": b"\x40",
}
TX: dict[str, object] = {"timestamp_us": None, "frequency_hz": 869_525_000, "sf": 12}
TX |= {"power_dbm": 14}
TX |= {"payload": b"\x60", "token": 1}
CONFIG = {
    "config_id": 1,
    "region": "EU868",
    "channels": (Channel(frequency_hz=868_100_000),),
    "tx_frequency_min_hz": 863_000_000,
    "tx_frequency_max_hz": 870_000_000,
    "tx_power_max_dbm": 14,
    "token": 1,
}
CAPS = {field.name: getattr(SX1302_EU868, field.name) for field in dataclasses.fields(Capabilities)}
STATS: dict[str, object] = {
    "uptime_s": 1,
    "rx_received": 0,
    "rx_crc_ok": 0,
    "rx_crc_bad": 0,
    "tx_requested": 0,
}
STATS |= {"tx_sent": 0, "config_id": 0}


def build(cls: Callable[..., object], base: dict[str, object], **changes: object) -> object:
    return cls(**(base | changes))


INVALID: list[tuple[Callable[..., object], dict[str, object], dict[str, object], str]] = [
    (RxFrame, RX, {"sf": 13}, "RxFrame.sf (key 2) must be an integer from 5 to 12, got 13"),
    (RxFrame, RX, {"sf": True}, "RxFrame.sf (key 2) must be an integer from 5 to 12, got True"),
    (RxFrame, RX, {"sf": 7.0}, "RxFrame.sf (key 2) must be an integer from 5 to 12, got 7.0"),
    (
        RxFrame,
        RX,
        {"bandwidth_hz": 200_000},
        "RxFrame.bandwidth_hz (key 3) must be one of 125000, 250000, 500000 (Hz), got 200000",
    ),
    (
        RxFrame,
        RX,
        {"frequency_hz": 2_400_000_000},
        "RxFrame.frequency_hz (key 1) must be an integer from 137000000 to 1020000000 (Hz)",
    ),
    (RxFrame, RX, {"rssi_dbm": -201}, "RxFrame.rssi_dbm (key 5) must be an integer from -200"),
    (RxFrame, RX, {"snr_db": 0.1}, "RxFrame.snr_db (key 6) must be a multiple of 1/4 dB"),
    (RxFrame, RX, {"snr_db": 64.0}, "from -64.0 to 63.75 (on the wire: an integer count of"),
    (RxFrame, RX, {"snr_db": float("nan")}, "RxFrame.snr_db (key 6) must be a multiple"),
    (RxFrame, RX, {"snr_db": float("inf")}, "RxFrame.snr_db (key 6) must be a multiple"),
    (RxFrame, RX, {"timestamp_us": 2**32}, "RxFrame.timestamp_us (key 7) must be an integer"),
    (
        RxFrame,
        RX,
        {"crc_status": 2},
        "RxFrame.crc_status (key 8) must be one of the CrcStatus values: 1 (OK)",
    ),
    (
        RxFrame,
        RX,
        {"coding_rate": 4},
        "RxFrame.coding_rate (key 4) must be one of the CodingRate values: 5",
    ),
    (RxFrame, RX, {"payload": b""}, "RxFrame.payload (key 9) must be 1 to 255 bytes, got 0: h''"),
    (RxFrame, RX, {"payload": bytes(256)}, "RxFrame.payload (key 9) must be 1 to 255 bytes, got"),
    (RxFrame, RX, {"payload": "40"}, "RxFrame.payload (key 9) must be 1 to 255 bytes, got '40'"),
    (RxFrame, RX, {"channel": 64}, "RxFrame.channel (key 10) must be an integer from 0 to 63"),
    (RxFrame, RX, {"token": 5}, "RxFrame.token must be 0 (an event), got 5"),
    (TxRequest, TX, {"token": 0}, "TxRequest.token must be from 1 to 65535 (it pairs a request"),
    (TxRequest, TX, {"token": 65536}, "TxRequest.token must be an integer from 0 to 65535"),
    (TxRequest, TX, {"power_dbm": 37}, "TxRequest.power_dbm (key 6) must be an integer from -20"),
    (
        TxRequest,
        TX,
        {"timestamp_us": "now"},
        "TxRequest.timestamp_us (key 1) must be None (immediately) or an integer from 0 to",
    ),
    (TxRequest, TX, {"preamble_symbols": 5}, "TxRequest.preamble_symbols (key 10) must be"),
    (TxRequest, TX, {"invert_polarity": 1}, "TxRequest.invert_polarity (key 7) must be true or"),
    (Hello, {"firmware": "x"}, {"eui": bytes(8)}, "Hello.eui (key 3) and Hello.capabilities"),
    (Hello, {"firmware": "x"}, {"protocol_version": 0}, "Hello.protocol_version (key 1) must be"),
    (
        Hello,
        {"firmware": "x"},
        {"firmware": ""},
        "Hello.firmware (key 2) must be text of 1 to 64 UTF-8 bytes",
    ),
    (
        Hello,
        {"firmware": "x"},
        {"firmware": "é" * 33},
        "Hello.firmware (key 2) must be text of 1 to 64 UTF-8",
    ),
    (
        Hello,
        {"firmware": "x"},
        {"firmware": "\ud800"},
        "Hello.firmware (key 2) must be text of 1 to 64 UTF-8",
    ),
    (
        Hello,
        {"firmware": "x", "capabilities": SX1302_EU868},
        {"eui": bytes(7)},
        "Hello.eui (key 3) must be 8 bytes, got 7",
    ),
    (Hello, {"firmware": "x"}, {"capabilities": CAPS}, "Hello.capabilities (key 4) must be a"),
    (RadioConfig, CONFIG, {"channels": ()}, "RadioConfig.channels (key 4) must be a list of 1"),
    (
        RadioConfig,
        CONFIG,
        {"channels": (Channel(frequency_hz=868_100_000),) * 33},
        "RadioConfig.channels (key 4) must be a list of 1 to 32 items",
    ),
    (RadioConfig, CONFIG, {"config_id": 0}, "RadioConfig.config_id (key 1) must be an integer"),
    (RadioConfig, CONFIG, {"region": "x" * 17}, "RadioConfig.region (key 2) must be text of 1"),
    (RadioConfig, CONFIG, {"stats_interval_s": -1}, "RadioConfig.stats_interval_s (key 8)"),
    (
        RadioConfig,
        CONFIG,
        {"tx_frequency_min_hz": 871_000_000},
        "RadioConfig.tx_frequency_min_hz (871000000) must not exceed tx_frequency_max_hz",
    ),
    (
        Channel,
        {"frequency_hz": 868_100_000},
        {"spreading_factors": (8, 7)},
        "Channel.spreading_factors (key 3) must be a list of 1 to 8 items, distinct and in"
        " increasing order, each an integer from 5 to 12, got (8, 7)",
    ),
    (
        Channel,
        {"frequency_hz": 868_100_000},
        {"spreading_factors": (7, 7)},
        "Channel.spreading_factors (key 3) must be a list of 1 to 8 items, distinct",
    ),
    (
        Channel,
        {"frequency_hz": 868_100_000},
        {"spreading_factors": (7, 13)},
        "Channel.spreading_factors (key 3)[1] must be an integer from 5 to 12, got 13",
    ),
    (
        Capabilities,
        CAPS,
        {"tx_power_min_dbm": 30},
        "Capabilities.tx_power_min_dbm (30) must not exceed tx_power_max_dbm (27)",
    ),
    (Capabilities, CAPS, {"bandwidths_hz": ()}, "Capabilities.bandwidths_hz (key 8) must be"),
    (
        Stats,
        STATS,
        {"tx_errors": {TxError.NONE: 1}},
        "Stats.tx_errors (key 7) must be a mapping of TxError (not NONE) to integers",
    ),
    (Stats, STATS, {"tx_errors": {TxError.TX_FREQ: -1}}, "Stats.tx_errors (key 7)[TX_FREQ] must"),
    (Stats, STATS, {"temperature_c": 21.25}, "Stats.temperature_c (key 11) must be a multiple"),
    (Stats, STATS, {"uptime_s": 2**32}, "Stats.uptime_s (key 1) must be an integer from 0 to"),
    (
        Error,
        {"code": ErrorCode.BUSY},
        {"code": 99},
        "Error.code (key 1) must be one of the ErrorCode values: 1 (UNKNOWN_TYPE)",
    ),
    (Error, {"code": 1}, {"message": "x" * 129}, "Error.message (key 2) must be text of 0 to"),
    (Error, {"code": 1}, {"ref_type": 0}, "Error.ref_type (key 3) must be an integer from 1"),
    (
        TxAck,
        {"token": 1},
        {"error": 8},
        "TxAck.error (key 1) must be one of the TxError values: 0 (NONE)",
    ),
    (GetStats, {}, {"token": 0}, "GetStats.token must be from 1 to 65535"),
]


@pytest.mark.parametrize(("cls", "base", "changes", "text"), INVALID)
def test_validation_names_the_field_and_the_range(
    cls: Callable[..., object], base: dict[str, object], changes: dict[str, object], text: str
) -> None:
    with pytest.raises(SchemaError) as caught:
        build(cls, base, **changes)
    assert text in str(caught.value)


def test_a_valid_base_for_each_invalid_case() -> None:
    # The cases fail because of their change, not because the base was already invalid.
    for cls, base, changes, _ in INVALID:
        valid = dict(base)
        if cls is Hello and "eui" in changes:
            valid["capabilities"] = None
        if "token" not in valid and cls in (TxAck, GetStats):
            valid["token"] = 1
        build(cls, valid)


# --- strict decoding -------------------------------------------------------------------------


def wire(type_id: object, token: object, body: object) -> bytes:
    return cbor.dumps([type_id, token, body])


def body_of(message: Message) -> dict[object, object]:
    decoded = cbor.loads(encode_message(message))
    assert isinstance(decoded, list)
    assert isinstance(decoded[2], dict)
    return decoded[2]


RX_BODY = body_of(EXAMPLES["rx-frame"])


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        (b"", CborError, "truncated"),
        (b"\xff", CborError, "unexpected break"),
        (wire(4, 0, RX_BODY) + b"\x00", CborError, "trailing byte"),
        (cbor.dumps(1), SchemaError, "a message is a CBOR array [type, token, body], got 1"),
        (cbor.dumps([4, 0]), SchemaError, "a message is a CBOR array [type, token, body]"),
        (wire(42, 7, {}), SchemaError, "unknown message type 42 (token 7); known: 1 (HELLO)"),
        (wire(0, 7, {}), SchemaError, "message type must be an integer from 1 to 255, got 0"),
        (wire("4", 0, {}), SchemaError, "message type must be an integer from 1 to 255"),
        (wire(4, -1, RX_BODY), SchemaError, "token must be an integer from 0 to 65535, got -1"),
        (wire(4, 3, RX_BODY), SchemaError, "RX_FRAME message: RxFrame.token must be 0"),
        (wire(5, 0, {}), SchemaError, "TX_REQUEST message: TxRequest.timestamp_us (key 1) is"),
        (wire(4, 0, [1, 2]), SchemaError, "RX_FRAME message must be a map with integer keys"),
        (wire(4, 0, RX_BODY | {0: 1}), SchemaError, "key 0 is not a RxFrame field (keys are"),
        (wire(4, 0, RX_BODY | {-1: 1}), SchemaError, "key -1 is not a RxFrame field"),
        (wire(4, 0, RX_BODY | {"sf": 7}), SchemaError, "key 'sf' is not a RxFrame field"),
        (wire(4, 0, RX_BODY | {2: 13}), SchemaError, "RxFrame.sf (key 2) must be an integer"),
        (wire(4, 0, RX_BODY | {6: 9.25}), SchemaError, "RxFrame.snr_db (key 6) must be a"),
        (wire(4, 0, RX_BODY | {9: "40"}), SchemaError, "RxFrame.payload (key 9) must be 1 to"),
        (wire(4, 0, RX_BODY | {10: None}), SchemaError, "RxFrame.channel (key 10) is null"),
        (
            wire(4, 0, {k: v for k, v in RX_BODY.items() if k != 9}),
            SchemaError,
            "RX_FRAME message: RxFrame.payload (key 9) is missing",
        ),
        (
            wire(2, 1, {1: 1, 2: "EU", 3: True, 4: [{1: 868_100_000, 2: 125_000, 3: [8, 7]}]}),
            SchemaError,
            "RadioConfig.channels (key 4)[0]: Channel.spreading_factors (key 3) must be",
        ),
        (
            wire(2, 1, {1: 1, 2: "EU", 3: True, 4: [{1: 868_100_000, 2: 125_000, 3: [7]}, 5]}),
            SchemaError,
            "RadioConfig.channels (key 4)[1] must be a map with integer keys, got 5",
        ),
        (wire(8, 0, {7: [0] * 6}), SchemaError, "Stats.tx_errors (key 7) must be a mapping"),
        (wire(1, 0, {1: 1, 2: "x", 3: bytes(8)}), SchemaError, "Hello.eui (key 3) and Hello."),
    ],
)
def test_decoding_refuses_with_clear_errors(data: bytes, error: type[Exception], text: str) -> None:
    with pytest.raises(error) as caught:
        decode_message(data)
    assert text in str(caught.value)


def test_unknown_higher_keys_are_skipped() -> None:
    # Forward compatibility (spec, Versioning): a later 1.x adds optional fields above.
    message = EXAMPLES["rx-frame"]
    future = wire(4, 0, RX_BODY | {12: "later", 300: [1, 2]})
    assert decode_message(future) == message
    config = cbor.loads(encode_message(EXAMPLES["radio-config"]))
    assert isinstance(config, list)
    config[2][4][0][4] = True  # a future key in a channel
    config[2][9] = {"any": "thing"}
    assert decode_message(cbor.dumps(config)) == EXAMPLES["radio-config"]
    assert decode_message(wire(7, 5, {1: 1})) == GetStats(token=5)


def test_non_deterministic_cbor_is_accepted() -> None:
    # A firmware's encoder may not sort keys or may use longer heads: fine on input.
    data = encode_message(EXAMPLES["radio-config-ack"])
    assert data == bytes.fromhex("830302a10101")
    assert decode_message(bytes.fromhex("9f0302bf011801ffff")) == EXAMPLES["radio-config-ack"]


def test_peek_header_reads_type_and_token_of_unknown_messages() -> None:
    assert peek_header(wire(42, 7, {1: "whatever"})) == (42, 7)
    with pytest.raises(SchemaError):
        peek_header(wire(300, 7, {}))


def test_encode_refuses_what_is_not_a_message() -> None:
    with pytest.raises(SchemaError, match="not a concentrator protocol message: Channel"):
        encode_message(Channel(frequency_hz=868_100_000))  # type: ignore[arg-type]


def test_token_rules_follow_the_table() -> None:
    rules = {spec.message_type: spec.token for spec in MESSAGES}
    assert rules[MessageType.RX_FRAME] is TokenRule.ZERO
    assert rules[MessageType.TX_REQUEST] is TokenRule.NONZERO
    assert rules[MessageType.TX_ACK] is TokenRule.NONZERO
    assert rules[MessageType.STATS] is TokenRule.ANY
    assert rules[MessageType.ERROR] is TokenRule.ANY


# --- fuzz ------------------------------------------------------------------------------------


def only_typed(
    func: Callable[[bytes], object], data: bytes, allowed: tuple[type[BaseException], ...]
) -> None:
    try:
        func(data)
    except allowed:
        return


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_arbitrary_bytes_raise_only_cbor_or_schema_errors(data: bytes) -> None:
    only_typed(decode_message, data, (CborError, SchemaError))
    only_typed(from_frame, data, (CodecError,))
    only_typed(describe_frame, data, (CodecError,))


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.integers(-300, 300)
    | st.floats()
    | st.binary(max_size=10)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(-2, 14) | st.text(max_size=2), inner, max_size=5)
    ),
    max_leaves=12,
)


@given(
    type_id=st.integers(0, 12),
    token=st.integers(-1, 0x10000),
    body=st.dictionaries(st.integers(-1, 13), cbor_values, max_size=12),
)
@settings(max_examples=300)
def test_structured_garbage_raises_only_schema_errors(
    type_id: int, token: int, body: dict[int, object]
) -> None:
    # Well-formed CBOR in the envelope's shape reaches every field check.
    only_typed(decode_message, wire(type_id, token, body), (SchemaError,))


@given(
    message=messages,
    cut=st.integers(0, 2000),
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=3),
)
@settings(max_examples=400)
def test_damaged_messages_raise_only_typed_errors(
    message: Message, cut: int, edits: list[tuple[int, int]]
) -> None:
    damaged = bytearray(encode_message(message))
    for index, value in edits:
        damaged[index % len(damaged)] = value
    data = bytes(damaged[: max(1, cut % (len(damaged) + 1))])
    only_typed(decode_message, data, (CborError, SchemaError))
    frame = bytearray(to_frame(message))
    for index, value in edits:
        frame[index % len(frame)] = value
    only_typed(from_frame, bytes(frame), (CodecError,))
    only_typed(describe_frame, bytes(frame), (CodecError,))


@given(message=messages, bit=st.integers(0, 100_000))
@settings(max_examples=300)
def test_a_flipped_bit_never_passes_as_the_same_message(message: Message, bit: int) -> None:
    data = bytearray(encode_message(message))
    data[(bit // 8) % len(data)] ^= 1 << (bit % 8)
    try:
        decoded = decode_message(bytes(data))
    except (CborError, SchemaError):
        return
    # Every field is covered by its CBOR head or value: one changed bit is a different
    # message (or none), never the same one read from different bytes.
    assert decoded != message


# --- the RX_FRAME fast path ------------------------------------------------------------------
# decode_message reads the usual form of an RX_FRAME straight from the bytes and leaves every
# other input to the general path (cbor.loads and the field table). The two must agree on every
# input: the same frame, field by field and type by type, or the same error.


def _outcome(decode: Callable[[bytes], object], data: bytes) -> str:
    try:
        return "accepted " + repr(decode(data))
    except CodecError as err:
        return f"{type(err).__name__} at {err.offset}: {err}"


def _fast(data: bytes) -> RxFrame | None:
    if not data.startswith(b"\x83\x04\x00"):
        return None
    try:
        return concentrator._rx_frame(data)
    except (IndexError, struct.error):  # decode_message takes these as "not recognised"
        return None


def _agree(data: bytes) -> RxFrame | None:
    """Check that decode_message ends as the general path does on data, and that a frame the
    fast path builds is the general path's; return the fast path's frame."""
    assert _outcome(decode_message, data) == _outcome(concentrator._decode_general, data)
    fast = _fast(data)
    if fast is not None:
        general = concentrator._decode_general(data)
        assert repr(fast) == repr(general)
        assert fast == general
        assert hash(fast) == hash(general)
        assert [type(getattr(fast, f.name)) for f in dataclasses.fields(RxFrame)] == [
            type(getattr(general, f.name)) for f in dataclasses.fields(RxFrame)
        ]
    return fast


@given(rx_frames)
@settings(max_examples=400)
def test_fast_path_takes_every_rx_frame_the_encoder_writes(frame: RxFrame) -> None:
    data = encode_message(frame)
    fast = _agree(data)
    assert fast == frame
    assert encode_message(fast) == data
    assert describe_message(fast) == describe_message(frame)


@given(
    frame=rx_frames,
    edits=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), min_size=1, max_size=3),
    cut=st.integers(0, 300),
)
@settings(max_examples=800)
def test_fast_and_general_paths_agree_on_damaged_rx_frames(
    frame: RxFrame, edits: list[tuple[int, int]], cut: int
) -> None:
    damaged = bytearray(encode_message(frame))
    for index, value in edits:
        damaged[index % len(damaged)] = value
    _agree(bytes(damaged))
    _agree(bytes(damaged[: cut % (len(damaged) + 1)]))


# Values a field may hold on the wire besides its own: the neighbours of each range, other
# types, and null.
rx_values = (
    st.integers(-(2**64), 2**64 - 1)
    | st.sampled_from([-257, -256, -201, -200, -25, -24, -1, 0, 4, 5, 8, 9, 12, 13, 30, 31])
    | st.sampled_from([63, 64, 255, 256, 136_999_999, 137_000_000, 1_020_000_000, 2**32])
    | st.sampled_from([125_000, 250_000, 500_000, 125_001, 2**32 - 1])
    | st.binary(max_size=260)
    | st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text(max_size=3)
)


@given(
    frame=rx_frames,
    changes=st.dictionaries(st.integers(0, 13), rx_values, max_size=3),
    drop=st.lists(st.integers(1, 11), max_size=2),
    token=st.sampled_from([0, 0, 0, 1]),
    shuffle=st.randoms(use_true_random=False),
)
@settings(max_examples=800)
def test_fast_and_general_paths_agree_on_altered_rx_bodies(
    frame: RxFrame,
    changes: dict[int, object],
    drop: list[int],
    token: int,
    shuffle: Any,
) -> None:
    body = body_of(frame)
    body.update(changes.items())
    for key in drop:
        body.pop(key, None)
    _agree(wire(4, token, body))
    # Keys in another order are valid CBOR too (deterministic encoding is not required).
    items = list(body.items())
    shuffle.shuffle(items)
    _agree(wire(4, token, dict(items)))


def _item(head: int, argument: int, size: int) -> bytes:
    # A CBOR head with the argument in ``size`` bytes, shortest or not.
    if size == 0:
        return bytes([head | argument])
    info = {1: 24, 2: 25, 4: 26, 8: 27}[size]
    return bytes([head | info]) + argument.to_bytes(size, "big")


def _longer_forms() -> list[tuple[int, int]]:
    # (key, argument size) for every integer field of the example and every argument size that
    # holds its value: 0 (in the initial byte) to 8 bytes.
    body = body_of(EXAMPLES["rx-frame"])
    arguments = {
        key: value if value >= 0 else -1 - value
        for key, value in body.items()
        if isinstance(key, int) and isinstance(value, int)
    }
    return [
        (key, size)
        for key, argument in arguments.items()
        for size in (0, 1, 2, 4, 8)
        if argument < (24 if size == 0 else 1 << (8 * size))
    ]


@pytest.mark.parametrize(("key", "size"), _longer_forms())
def test_fast_path_reads_integers_in_every_length(key: int, size: int) -> None:
    # cbor.loads takes integers with longer heads than needed, and so does the fast path
    # (or it gives way to the general path), with the same result.
    frame = EXAMPLES["rx-frame"]
    value = body_of(frame)[key]
    assert isinstance(value, int)
    argument = value if value >= 0 else -1 - value
    encoded = encode_message(frame)
    plain = bytes([key]) + cbor.dumps(value)
    longer = bytes([key]) + _item(0x00 if value >= 0 else 0x20, argument, size)
    assert plain in encoded
    data = encoded.replace(plain, longer, 1)
    _agree(data)
    assert decode_message(data) == frame


def test_fast_path_leaves_later_keys_and_indefinite_lengths_to_the_general_path() -> None:
    frame = EXAMPLES["rx-frame"]
    body = body_of(frame)
    future = wire(4, 0, body | {12: "later"})
    assert _fast(future) is None
    assert decode_message(future) == frame
    # An indefinite-length map and payload: valid CBOR, read by the general path.
    data = encode_message(frame)
    indefinite = b"\x83\x04\x00\xbf" + data[4:] + b"\xff"
    assert _fast(indefinite) is None
    assert decode_message(indefinite) == frame
    payload = cbor.dumps(UPLINK)
    chunked = data.replace(payload, b"\x5f" + payload + b"\xff")
    assert _fast(chunked) is None
    assert decode_message(chunked) == frame


def test_fast_path_frames_are_complete_messages() -> None:
    frame = EXAMPLES["rx-frame"]
    fast = _fast(encode_message(frame))
    assert fast is not None
    assert type(fast) is RxFrame
    assert fast == frame
    assert hash(fast) == hash(frame)
    assert repr(fast) == repr(frame)
    assert dataclasses.asdict(fast) == dataclasses.asdict(frame)
    assert dataclasses.replace(fast, sf=8) == dataclasses.replace(frame, sf=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.sf = 8  # type: ignore[misc]
    assert to_frame(fast) == to_frame(frame)


# --- describe_frame --------------------------------------------------------------------------


def test_describe_frame_of_an_rx_frame() -> None:
    frame = to_frame(EXAMPLES["rx-frame"])
    crc = frame[-3:-1].hex()
    described = describe_frame(frame)
    assert described == {
        "frame": {
            "size": 62,
            "cobs_size": 60,
            "leading_delimiter": True,
            "trailing_delimiter": True,
        },
        "payload_size": 57,
        "payload": encode_message(EXAMPLES["rx-frame"]).hex(),
        "crc": {"expected": f"0x{crc}", "got": f"0x{crc}", "ok": True},
        "message": {
            "type": "RX_FRAME",
            "type_id": 4,
            "token": 0,
            "frequency_hz": 868_100_000,
            "sf": 7,
            "bandwidth_hz": 125_000,
            "coding_rate": "4/5",
            "rssi_dbm": -57,
            "snr_db": 9.25,
            "timestamp_us": 3_512_348_611,
            "crc_status": "OK",
            "payload": UPLINK.hex(),
            "channel": 0,
            "rf_chain": 0,
        },
    }
    json.dumps(described)
    # Without delimiters: the same, but for the sizes.
    bare = describe_frame(frame[1:-1])
    assert bare["frame"] == {
        "size": 60,
        "cobs_size": 60,
        "leading_delimiter": False,
        "trailing_delimiter": False,
    }
    assert bare["message"] == described["message"]


def test_describe_frame_shows_enums_by_name() -> None:
    described = describe_frame(to_frame(EXAMPLES["stats"]))
    message = described["message"]
    assert isinstance(message, dict)
    assert message["tx_errors"] == {
        "TOO_LATE": 2,
        "TOO_EARLY": 0,
        "COLLISION_PACKET": 0,
        "COLLISION_BEACON": 0,
        "TX_FREQ": 0,
        "TX_POWER": 0,
        "GPS_UNLOCKED": 0,
    }
    assert message["temperature_c"] == 41.5
    hello = describe_frame(to_frame(EXAMPLES["hello-concentrator"]))["message"]
    assert isinstance(hello, dict)
    assert hello["eui"] == "b827ebfffe6c1a2b"
    assert hello["capabilities"]["bandwidths_hz"] == [125_000, 250_000, 500_000]
    error = describe_frame(to_frame(EXAMPLES["error"]))["message"]
    assert error["code"] == "UNKNOWN_TYPE"  # type: ignore[index]
    ack = describe_frame(to_frame(EXAMPLES["tx-ack-too-late"]))["message"]
    assert ack["error"] == "TOO_LATE"  # type: ignore[index]


def test_describe_frame_with_a_bad_crc_still_shows_the_message() -> None:
    frame = bytearray(to_frame(EXAMPLES["tx-ack"]))
    frame[-2] ^= 0xFF  # the CRC's low byte
    described = describe_frame(bytes(frame))
    crc = described["crc"]
    assert isinstance(crc, dict)
    assert crc["ok"] is False
    assert crc["expected"] != crc["got"]
    assert described["message"] == describe_message(EXAMPLES["tx-ack"])
    # A damaged payload that no longer decodes: the reason instead of the message.
    junk = bytearray(encode_frame(b"\x83\x06\x03\xa1\x01\x00"))
    junk[3] = 0x17  # the message type: 23, and the CRC no longer matches
    described = describe_frame(bytes(junk))
    assert described["message"] is None
    assert "unknown message type 23 (token 3)" in str(described["message_error"])


@pytest.mark.parametrize(
    ("frame", "error", "text"),
    [
        ("00", FrameError, "no frame"),
        ("0511", FrameError, "COBS code 5 at offset 0 runs past the end"),
        ("0201", FrameError, "frame too short"),
        (encode_frame(b"\x01").hex(), SchemaError, "a message is a CBOR array"),
        (encode_frame(b"\xff").hex(), CborError, "unexpected break"),
        (encode_frame(cbor.dumps([42, 1, {}])).hex(), SchemaError, "unknown message type 42"),
    ],
)
def test_describe_frame_raises_typed_errors(frame: str, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=re.escape(text)):
        describe_frame(bytes.fromhex(frame))
    assert not issubclass(error, CrcError)


def test_from_frame_raises_crc_error() -> None:
    frame = bytearray(to_frame(EXAMPLES["get-stats"]))
    frame[2] ^= 0x01
    with pytest.raises(CrcError):
        from_frame(bytes(frame))


# --- the path a gateway uses -----------------------------------------------------------------


def test_uplink_through_a_byte_stream() -> None:
    """What the demo does: RX frame -> serial frame -> stream decoder -> message."""
    rx = EXAMPLES["rx-frame"]
    decoder = FrameDecoder()
    wire_bytes = b"\x13\x37" + to_frame(rx) + to_frame(EXAMPLES["stats"])
    got = []
    for at in range(0, len(wire_bytes), 5):
        got += [decode_message(payload) for payload in decoder.feed(wire_bytes[at : at + 5])]
    assert got == [rx, EXAMPLES["stats"]]
    assert isinstance(got[0], RxFrame)
    assert got[0].payload == UPLINK
    assert decoder.frame_errors == 1  # the two bytes of noise before the first frame


def test_the_largest_messages_fit_a_frame() -> None:
    # Every field at its longest: the protocol stays within the framing's MAX_PAYLOAD.
    widest = Channel(
        frequency_hz=1_020_000_000, bandwidth_hz=500_000, spreading_factors=tuple(range(5, 13))
    )
    largest: list[Message] = [
        RadioConfig(
            config_id=2**32 - 1,
            region="é" * 8,
            channels=(widest,) * 32,
            tx_frequency_min_hz=1_020_000_000,
            tx_frequency_max_hz=1_020_000_000,
            tx_power_max_dbm=-20,
            stats_interval_s=86_400,
            token=0xFFFF,
        ),
        Hello(
            protocol_version=255,
            firmware="é" * 32,
            eui=bytes(8),
            capabilities=dataclasses.replace(SX1302_EU868, chip="é" * 16, max_channels=32),
            token=0xFFFF,
        ),
        TxRequest(
            timestamp_us=2**32 - 1,
            frequency_hz=1_020_000_000,
            sf=12,
            bandwidth_hz=500_000,
            power_dbm=-20,
            payload=bytes(255),
            preamble_symbols=0xFFFF,
            token=0xFFFF,
        ),
        Error(code=ErrorCode.INTERNAL, message="é" * 64, ref_type=255, token=0xFFFF),
    ]
    sizes = [len(encode_message(message)) for message in largest]
    assert max(sizes) <= MAX_PAYLOAD
    assert sizes[0] == max(sizes) == 791  # as the spec says
    assert "is791bytes" in squeeze(SPEC_DOC.read_text())
    for message in largest:
        assert from_frame(to_frame(message)) == message
