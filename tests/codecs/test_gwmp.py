"""GWMP v2 datagrams and JSON objects: layouts, the examples of PROTOCOL.TXT, bad input, and
round trips (hypothesis) through bytes and through the concentrator protocol's messages."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from owlgate.codecs.concentrator import (
    BANDWIDTHS_HZ,
    CodingRate,
    CrcStatus,
    RxFrame,
    TxError,
    TxRequest,
)
from owlgate.codecs.errors import CodecError
from owlgate.codecs.gwmp import (
    DATAGRAMS,
    GwmpDatagramError,
    GwmpError,
    GwmpJsonError,
    PacketType,
    PullAck,
    PullData,
    PullResp,
    PushAck,
    PushData,
    Rsig,
    Rxpk,
    Stat,
    TxAckDatagram,
    Txpk,
    TxpkAck,
    decode_datagram,
    format_datr,
    parse_datr,
    parse_header,
)
from tests.conftest import typed_error_or_none

EUI = bytes.fromhex("aa555a0000000101")
PAYLOAD = bytes.fromhex("40f17dbe4900020001954378762b11ff0d")

# PROTOCOL.TXT section 4, the upstream example (its data field mixes base64 alphabets).
SPEC_RXPK = {
    "time": "2013-03-31T16:21:17.528002Z",
    "tmst": 3512348611,
    "chan": 2,
    "rfch": 0,
    "freq": 866.349812,
    "stat": 1,
    "modu": "LORA",
    "datr": "SF7BW125",
    "codr": "4/6",
    "rssi": -35,
    "lsnr": 5.1,
    "size": 32,
    "data": "-DS4CGaDCdG+48eJNM3Vai-zDpsR71Pn9CPA9uCON84",
}
SPEC_STAT = {
    "time": "2014-01-12 08:59:28 GMT",
    "lati": 46.24000,
    "long": 3.25230,
    "alti": 145,
    "rxnb": 2,
    "rxok": 2,
    "rxfw": 2,
    "ackr": 100.0,
    "dwnb": 2,
    "txnb": 2,
}


def push_bytes(body: object, token: int = 0xABCD, eui: bytes = EUI) -> bytes:
    return b"\x02" + token.to_bytes(2, "big") + b"\x00" + eui + json.dumps(body).encode()


def rxpk_json(**changes: object) -> dict[str, object]:
    good: dict[str, object] = {
        "tmst": 1000,
        "freq": 868.1,
        "chan": 0,
        "rfch": 0,
        "stat": 1,
        "modu": "LORA",
        "datr": "SF7BW125",
        "codr": "4/5",
        "rssi": -57,
        "lsnr": 9.5,
        "size": len(PAYLOAD),
        "data": base64.b64encode(PAYLOAD).decode(),
    }
    good.update(changes)
    return {key: value for key, value in good.items() if value is not None}


# --- headers and layouts ----------------------------------------------------------------------


def test_datagram_table_names_every_type_once() -> None:
    assert [spec.packet_type for spec in DATAGRAMS] == list(PacketType)
    assert {spec.packet_type: spec.header_size for spec in DATAGRAMS} == {
        PacketType.PUSH_DATA: 12,
        PacketType.PUSH_ACK: 4,
        PacketType.PULL_DATA: 12,
        PacketType.PULL_RESP: 4,
        PacketType.PULL_ACK: 4,
        PacketType.TX_ACK: 12,
    }


def test_layouts_byte_for_byte() -> None:
    assert PushAck(token=0x1234).to_bytes() == bytes.fromhex("02123401")
    assert PullAck(token=0x1234).to_bytes() == bytes.fromhex("02123404")
    assert PullData(token=0x0102, gateway_eui=EUI).to_bytes() == bytes.fromhex(
        "02010202aa555a0000000101"
    )
    assert PushAck(token=7, version=1).to_bytes() == bytes.fromhex("01000701")
    ack = TxAckDatagram(token=0xBEEF, gateway_eui=EUI, ack=TxpkAck(error=TxError.TOO_LATE))
    assert ack.to_bytes() == (
        bytes.fromhex("02beef05aa555a0000000101") + b'{"txpk_ack":{"error":"TOO_LATE"}}'
    )
    empty = TxAckDatagram(token=1, gateway_eui=EUI, ack_json=False)
    assert empty.to_bytes() == bytes.fromhex("02000105aa555a0000000101")


def test_header_of_a_push_data() -> None:
    header = parse_header(push_bytes({}, token=0x0A0B))
    assert (header.version, header.token, header.packet_type) == (2, 0x0A0B, PacketType.PUSH_DATA)
    assert header.gateway_eui == EUI
    assert header.body_offset == 12


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "at least 4 bytes"),
        (b"\x02\x00", "at least 4 bytes"),
        (bytes.fromhex("03000101"), "unknown protocol version 3"),
        (bytes.fromhex("02000109"), "unknown datagram type 0x09"),
        (bytes.fromhex("0200010100"), "PUSH_ACK is 4 bytes, got 5"),
        (bytes.fromhex("02000102aa555a00"), "PULL_DATA needs 12 header bytes"),
        (bytes.fromhex("02000102aa555a000000010100"), "PULL_DATA is 12 bytes, got 13"),
        (bytes.fromhex("02000100aa55"), "PUSH_DATA needs 12 header bytes"),
    ],
)
def test_bad_headers_name_the_problem(data: bytes, words: str) -> None:
    with pytest.raises(GwmpDatagramError) as caught:
        decode_datagram(data)
    assert words in caught.value.message
    assert isinstance(caught.value, CodecError)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (bytes.fromhex("02000100aa555a0000000101"), "PUSH_DATA has no JSON body"),
        (bytes.fromhex("02000100aa555a0000000101") + b"{rxpk", "not JSON"),
        (bytes.fromhex("02000100aa555a0000000101") + b"\xff\xfe", "not JSON"),
        (push_bytes([1, 2]), "PUSH_DATA JSON must be an object"),
        (push_bytes({"rxpk": {"tmst": 1}}), "rxpk must be an array"),
        (bytes.fromhex("02000103") + b'{"tx":{}}', "PULL_RESP JSON must be an object with txpk"),
        (bytes.fromhex("02000103") + b'{"txpk":{"imme":true}}', "lacks the required key"),
        (
            bytes.fromhex("02000105aa555a0000000101") + b'{"txpk_ack":{"error":"BROKEN"}}',
            "txpk_ack.error must be one of NONE, TOO_LATE",
        ),
        (push_bytes({"rxpk": []})[:12] + b'{"rxpk":[{"rssi":NaN}]}', "NaN"),
    ],
)
def test_bad_json_names_the_problem(data: bytes, words: str) -> None:
    with pytest.raises(GwmpJsonError) as caught:
        decode_datagram(data)
    assert words in caught.value.message


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_a_gwmp_error(data: bytes) -> None:
    typed_error_or_none(GwmpError, decode_datagram, data)


@given(st.sampled_from([0, 3, 5]), st.binary(max_size=64))
def test_any_body_decodes_or_raises_a_gwmp_error(type_id: int, body: bytes) -> None:
    eui = EUI if type_id in (0, 5) else b""
    typed_error_or_none(GwmpError, decode_datagram, bytes((2, 0, 1, type_id)) + eui + body)


# --- PUSH_DATA --------------------------------------------------------------------------------


def test_the_protocol_example_decodes() -> None:
    push = PushData.from_bytes(push_bytes({"rxpk": [SPEC_RXPK], "stat": SPEC_STAT}))
    assert push.token == 0xABCD
    assert push.gateway_eui == EUI
    assert push.rejected == ()
    (rxpk,) = push.rxpk
    assert rxpk.tmst == 3512348611
    assert rxpk.freq == 866.349812
    assert rxpk.datr == "SF7BW125"
    assert rxpk.size == 32
    assert len(rxpk.data) == 32
    assert rxpk.data[:4] == bytes.fromhex("f834b808")
    assert push.stat == Stat(
        time="2014-01-12 08:59:28 GMT",
        lati=46.24,
        long=3.2523,
        alti=145,
        rxnb=2,
        rxok=2,
        rxfw=2,
        ackr=100.0,
        dwnb=2,
        txnb=2,
    )


def test_rxpk_to_rx_frame_metadata() -> None:
    frame = Rxpk.from_json(SPEC_RXPK).to_rx_frame()
    assert frame.frequency_hz == 866_349_812
    assert (frame.sf, frame.bandwidth_hz) == (7, 125_000)
    assert frame.coding_rate is CodingRate.CR_4_6
    assert frame.rssi_dbm == -35
    # 5.1 dB is the forwarder's %.1f print of the SX1301's 5.0 or 5.25: the nearest step.
    assert frame.snr_db == 5.0
    assert frame.timestamp_us == 3512348611
    assert frame.crc_status is CrcStatus.OK
    assert (frame.channel, frame.rf_chain) == (2, 0)


def test_one_bad_rxpk_does_not_lose_the_good_ones() -> None:
    body = {
        "rxpk": [
            rxpk_json(tmst=1),
            rxpk_json(tmst=2, size=3),
            {"tmst": 3},
            rxpk_json(tmst=4, data="!!not base64!!"),
            rxpk_json(tmst=5),
        ],
        "stat": {"rxnb": "many"},
    }
    push = PushData.from_bytes(push_bytes(body))
    assert [rxpk.tmst for rxpk in push.rxpk] == [1, 5]
    assert [(r.key, r.index) for r in push.rejected] == [
        ("rxpk", 1),
        ("rxpk", 2),
        ("rxpk", 3),
        ("stat", None),
    ]
    problems = [r.problem for r in push.rejected]
    assert problems[0] == f"rxpk.size is 3 but data holds {len(PAYLOAD)} bytes"
    assert problems[1] == "rxpk[2] lacks the required key 'freq'"
    assert "rxpk[3].data must be a base64 string" in problems[2]
    assert "stat.rxnb must be an integer" in problems[3]
    assert push.stat is None


def test_later_forwarders_fields_are_accepted() -> None:
    # SX1301 v2 reference design: RSSI and SNR per antenna in rsig, plus brd and aesk, and
    # keys this codec does not know (jver, a future "xyz") are ignored.
    rsig = [
        {"ant": 0, "chan": 7, "rssic": -95, "lsnr": 2.25, "etime": "abc"},
        {"ant": 1, "chan": 7, "rssic": -88, "lsnr": 6.75, "foff": -120},
    ]
    body = {"rxpk": [rxpk_json(rssi=None, lsnr=None, rsig=rsig, brd=1, aesk=0, jver=1, xyz=[])]}
    (rxpk,) = PushData.from_bytes(push_bytes(body)).rxpk
    assert rxpk.brd == 1
    assert rxpk.rsig[1] == Rsig(ant=1, chan=7, rssic=-88, lsnr=6.75, foff=-120)
    frame = rxpk.to_rx_frame()
    assert (frame.rssi_dbm, frame.snr_db) == (-88, 6.75)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"modu": "FSK", "datr": 50000}, "FSK packets are not carried"),
        ({"datr": "SF7BW62"}, "bandwidth of 125, 250 or 500 kHz"),
        ({"datr": "SF13BW125"}, "SF5 to SF12"),
        ({"codr": "4/9"}, 'codr must be "4/5" to "4/8"'),
        ({"rssi": None}, "neither rssi and lsnr"),
        ({"freq": 100.0}, "does not fit an RxFrame"),
    ],
)
def test_rxpk_an_rx_frame_cannot_carry(changes: dict[str, object], words: str) -> None:
    rxpk = Rxpk.from_json(rxpk_json(**changes))
    with pytest.raises(GwmpJsonError) as caught:
        rxpk.to_rx_frame()
    assert words in caught.value.message


def test_datr_parse_and_format() -> None:
    assert parse_datr("SF12BW500") == (12, 500_000)
    assert format_datr(9, 250_000) == "SF9BW250"
    with pytest.raises(GwmpJsonError):
        parse_datr("SF7 BW125")


# --- PULL_RESP, TX_ACK ------------------------------------------------------------------------


def test_txpk_from_a_tx_request() -> None:
    request = TxRequest(
        timestamp_us=4_000_000_123,
        frequency_hz=869_525_000,
        sf=12,
        power_dbm=27,
        payload=PAYLOAD,
        token=1,
    )
    resp = PullResp(token=0x55AA, txpk=Txpk.from_tx_request(request))
    data = resp.to_bytes()
    assert data[:4] == bytes.fromhex("0255aa03")
    assert json.loads(data[4:]) == {
        "txpk": {
            "tmst": 4_000_000_123,
            "freq": 869.525,
            "rfch": 0,
            "powe": 27,
            "modu": "LORA",
            "datr": "SF12BW125",
            "codr": "4/5",
            "ipol": True,
            "size": len(PAYLOAD),
            "data": base64.b64encode(PAYLOAD).decode(),
            "ncrc": True,
        }
    }
    assert PullResp.from_bytes(data) == resp
    assert resp.txpk.to_tx_request(token=1) == request


def test_txpk_immediate_and_timing_rule() -> None:
    request = TxRequest(
        timestamp_us=None, frequency_hz=868_100_000, sf=7, power_dbm=14, payload=b"\x01", token=9
    )
    txpk = Txpk.from_tx_request(request)
    assert txpk.to_json()["imme"] is True
    assert "tmst" not in txpk.to_json()
    with pytest.raises(GwmpJsonError, match="exactly one of imme"):
        Txpk.from_json({**txpk.to_json(), "tmst": 5})
    with pytest.raises(GwmpJsonError, match="exactly one of imme"):
        Txpk.from_json({key: v for key, v in txpk.to_json().items() if key != "imme"})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", TxError.NONE),
        (b"\x00", TxError.NONE),
        (b"{}", TxError.NONE),
        (b'{"txpk_ack":{}}', TxError.NONE),
        (b'{"txpk_ack":{"error":""}}', TxError.NONE),
        (b'{"txpk_ack":{"warn":"TX_POWER","value":20}}', TxError.NONE),
        *((f'{{"txpk_ack":{{"error":"{e.name}"}}}}'.encode(), e) for e in TxError),
    ],
)
def test_tx_ack_errors(body: bytes, error: TxError) -> None:
    datagram = TxAckDatagram.from_bytes(bytes.fromhex("02123405") + EUI + body)
    assert datagram.token == 0x1234
    assert datagram.ack.error is error
    ack = datagram.ack.to_tx_ack(0x1234)
    assert (ack.error, ack.token) == (error, 0x1234)


def test_from_bytes_of_the_wrong_type() -> None:
    with pytest.raises(GwmpDatagramError, match="expected PullData, got PushAck"):
        PullData.from_bytes(PushAck(token=1).to_bytes())


# --- round trips ------------------------------------------------------------------------------

tokens = st.integers(0, 0xFFFF)
euis = st.binary(min_size=8, max_size=8)
versions = st.sampled_from([1, 2])
payloads = st.binary(min_size=1, max_size=255)
finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)
small_text = st.text(st.characters(codec="utf-8"), max_size=30)


@st.composite
def rxpks(draw: st.DrawFn) -> Rxpk:
    data = draw(st.binary(max_size=255))
    fsk = draw(st.booleans())
    return Rxpk(
        time=draw(st.none() | small_text),
        tmms=draw(st.none() | st.integers(0, 2**40)),
        tmst=draw(st.integers(0, 2**32 - 1)),
        freq=draw(st.floats(0, 10_000, allow_nan=False) | st.integers(0, 10_000)),
        chan=draw(st.none() | st.integers(0, 255)),
        rfch=draw(st.none() | st.integers(0, 255)),
        stat=draw(st.sampled_from([-1, 0, 1])),
        modu="FSK" if fsk else "LORA",
        datr=draw(st.integers(1, 300_000)) if fsk else draw(st.text(max_size=16)),
        codr=draw(st.none() | st.sampled_from(["4/5", "4/6", "4/7", "4/8"])),
        rssi=draw(st.none() | st.integers(-300, 100) | finite),
        lsnr=draw(st.none() | finite),
        brd=draw(st.none() | st.integers(0, 255)),
        rsig=tuple(
            Rsig(ant=draw(st.integers(0, 3)), rssic=draw(finite))
            for _ in range(draw(st.integers(0, 2)))
        ),
        size=len(data),
        data=data,
    )


@st.composite
def rx_frames(draw: st.DrawFn) -> RxFrame:
    return RxFrame(
        frequency_hz=draw(st.integers(137_000_000, 1_020_000_000)),
        sf=draw(st.integers(5, 12)),
        bandwidth_hz=draw(st.sampled_from(BANDWIDTHS_HZ)),
        coding_rate=draw(st.sampled_from(CodingRate)),
        rssi_dbm=draw(st.integers(-200, 30)),
        snr_db=draw(st.integers(-256, 255)) / 4,
        timestamp_us=draw(st.integers(0, 2**32 - 1)),
        crc_status=draw(st.sampled_from(CrcStatus)),
        payload=draw(payloads),
        channel=draw(st.none() | st.integers(0, 63)),
        rf_chain=draw(st.none() | st.integers(0, 7)),
    )


@st.composite
def tx_requests(draw: st.DrawFn) -> TxRequest:
    return TxRequest(
        timestamp_us=draw(st.none() | st.integers(0, 2**32 - 1)),
        frequency_hz=draw(st.integers(137_000_000, 1_020_000_000)),
        sf=draw(st.integers(5, 12)),
        bandwidth_hz=draw(st.sampled_from(BANDWIDTHS_HZ)),
        coding_rate=draw(st.sampled_from(CodingRate)),
        power_dbm=draw(st.integers(-20, 36)),
        invert_polarity=draw(st.booleans()),
        crc=draw(st.booleans()),
        payload=draw(payloads),
        preamble_symbols=draw(st.none() | st.integers(6, 0xFFFF)),
        token=draw(st.integers(1, 0xFFFF)),
    )


stats = st.builds(
    Stat,
    time=st.none() | small_text,
    lati=st.none() | st.floats(-90, 90),
    long=st.none() | st.floats(-180, 180),
    alti=st.none() | st.integers(-100, 9000),
    rxnb=st.none() | st.integers(0, 2**32 - 1),
    rxok=st.none() | st.integers(0, 2**32 - 1),
    ackr=st.none() | st.floats(0, 100),
    temp=st.none() | st.floats(-40, 90),
)


@given(tokens, euis, versions, st.lists(rxpks(), max_size=4), st.none() | stats)
def test_push_data_round_trip(
    token: int, eui: bytes, version: int, items: list[Rxpk], stat: Stat | None
) -> None:
    push = PushData(token=token, gateway_eui=eui, rxpk=tuple(items), stat=stat, version=version)
    decoded = PushData.from_bytes(push.to_bytes())
    assert decoded == push
    assert decoded.rejected == ()


@given(tokens, euis, versions)
def test_short_datagrams_round_trip(token: int, eui: bytes, version: int) -> None:
    for datagram in (
        PushAck(token=token, version=version),
        PullAck(token=token, version=version),
        PullData(token=token, gateway_eui=eui, version=version),
    ):
        assert decode_datagram(datagram.to_bytes()) == datagram


@given(tokens, euis, st.sampled_from(TxError), st.booleans())
def test_tx_ack_round_trip(token: int, eui: bytes, error: TxError, with_json: bool) -> None:
    datagram = TxAckDatagram(
        token=token,
        gateway_eui=eui,
        ack=TxpkAck(error=error),
        ack_json=with_json or error is not TxError.NONE,
    )
    assert TxAckDatagram.from_bytes(datagram.to_bytes()) == datagram


@given(rx_frames())
def test_rx_frame_through_rxpk_and_back(frame: RxFrame) -> None:
    push = PushData(token=1, gateway_eui=EUI, rxpk=(Rxpk.from_rx_frame(frame),))
    (rxpk,) = PushData.from_bytes(push.to_bytes()).rxpk
    assert rxpk.to_rx_frame() == frame


@given(tx_requests(), tokens)
def test_tx_request_through_pull_resp_and_back(request: TxRequest, token: int) -> None:
    resp = PullResp(token=token, txpk=Txpk.from_tx_request(request))
    decoded = PullResp.from_bytes(resp.to_bytes())
    assert decoded == resp
    assert decoded.txpk.to_tx_request(token=request.token) == request


def test_objects_built_in_code_meet_the_wire_rules() -> None:
    with pytest.raises(GwmpJsonError, match=r"rxpk\.datr must be"):
        Rxpk(tmst=1, freq=868.1, stat=1, datr="x" * 17, size=1, data=b"\x01")
    with pytest.raises(GwmpJsonError, match=r"rxpk\.tmst must be an integer from 0 to 4294967295"):
        Rxpk(tmst=2**32, freq=868.1, stat=1, datr="SF7BW125", size=1, data=b"\x01")
    with pytest.raises(GwmpJsonError, match=r"stat\.ackr must be a number from 0 to 100"):
        Stat(ackr=101.0)
    with pytest.raises(GwmpJsonError, match=r"txpk\.size is 2 but data holds 1 bytes"):
        Txpk(imme=True, freq=868.1, datr="SF7BW125", size=2, data=b"\x01")
    with pytest.raises(GwmpDatagramError, match="gateway EUI must be 8 bytes"):
        PullData(token=1, gateway_eui=b"\x01")
    with pytest.raises(GwmpDatagramError, match="token must be 0 to 65535"):
        PushAck(token=0x10000)
