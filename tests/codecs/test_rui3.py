"""The RUI3 AT codec: command table, line parser, decoder, and the module-side encoders."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from owlgate.codecs.errors import CodecError
from owlgate.codecs.rui3 import (
    COMMANDS,
    MAX_LINE_BYTES,
    Banner,
    Echo,
    Rui3CommandError,
    Rui3Decoder,
    Rui3LineError,
    Rui3OverflowError,
    RxEvent,
    RxTimeout,
    Status,
    StatusLine,
    TxDone,
    UnknownEvent,
    ValueLine,
    command,
    encode_read,
    encode_run,
    encode_set,
    format_banner,
    format_rx_event,
    format_status,
    format_value,
    parse_line,
    parse_request,
    parse_values,
)

payloads = st.binary(min_size=1, max_size=255)
rssis = st.integers(min_value=-200, max_value=30)
snrs = st.integers(min_value=-64, max_value=63)


# --- the command table ------------------------------------------------------------------------


def test_the_table_names_each_command_once() -> None:
    names = [entry.name for entry in COMMANDS]
    assert len(names) == len(set(names))
    assert {entry.text for entry in COMMANDS} >= {"AT", "ATZ", "AT+NWM", "AT+P2P", "AT+PRECV"}


def test_commands_are_written_as_rui3_reads_them() -> None:
    assert encode_run("") == b"AT\r\n"
    assert encode_run("Z") == b"ATZ\r\n"
    assert encode_read("NWM") == b"AT+NWM=?\r\n"
    assert encode_set("NWM", 0) == b"AT+NWM=0\r\n"
    assert encode_set("P2P", 868_100_000, 7, 125, 0, 8, 14) == b"AT+P2P=868100000:7:125:0:8:14\r\n"
    assert encode_set("PRECV", 65534) == b"AT+PRECV=65534\r\n"
    assert encode_set("IQINVER", 1) == b"AT+IQINVER=1\r\n"
    assert encode_set("PSEND", b"\x12\x34\xab") == b"AT+PSEND=1234AB\r\n"


@pytest.mark.parametrize(
    ("name", "values", "problem"),
    [
        ("NWM", (3,), "from 0 to 2"),
        ("P2P", (868_100_000, 13, 125, 0, 8, 14), "spreading_factor"),
        ("P2P", (868_100_000, 7, 125, 0, 8), "takes 6 values"),
        ("PRECV", (True,), "integer"),
        ("PSEND", (b"",), "1 to 255 bytes"),
        ("PSEND", (bytes(256),), "1 to 255 bytes"),
        ("VER", ("x",), "cannot be set"),
        ("NOPE", (1,), "no AT command"),
    ],
)
def test_bad_commands_are_refused_typed(
    name: str, values: tuple[int | bytes, ...], problem: str
) -> None:
    with pytest.raises(Rui3CommandError, match=problem):
        encode_set(name, *values)


def test_read_and_run_forms_are_checked() -> None:
    with pytest.raises(Rui3CommandError, match="cannot be read"):
        encode_read("PSEND")
    with pytest.raises(Rui3CommandError, match="cannot be run"):
        encode_run("NWM")


@given(
    frequency=st.integers(150_000_000, 960_000_000),
    sf=st.integers(5, 12),
    bw=st.sampled_from([125, 250, 500]),
    cr=st.integers(0, 3),
    preamble=st.integers(5, 0xFFFF),
    power=st.integers(5, 22),
)
def test_p2p_set_round_trips_through_the_request_parser(
    frequency: int, sf: int, bw: int, cr: int, preamble: int, power: int
) -> None:
    line = encode_set("P2P", frequency, sf, bw, cr, preamble, power).decode().rstrip("\r\n")
    request = parse_request(line)
    assert request.command is command("P2P")
    assert request.form == "set"
    assert parse_values("P2P", request.argument) == (frequency, sf, bw, cr, preamble, power)


@given(payload=payloads)
def test_psend_round_trips(payload: bytes) -> None:
    request = parse_request(encode_set("PSEND", payload).decode().strip())
    assert parse_values("PSEND", request.argument) == (payload,)


def test_request_forms() -> None:
    assert parse_request("AT").command is command("")
    assert parse_request("ATZ").form == "run"
    assert parse_request("AT+NWM=?").form == "read"
    assert parse_request("at+nwm=1").form == "set"
    assert parse_request("AT+NWM?").form == "help"
    with pytest.raises(Rui3LineError, match="unknown AT command"):
        parse_request("AT+FOO=1")
    with pytest.raises(Rui3LineError, match="not an AT command"):
        parse_request("hello")


# --- lines from the module --------------------------------------------------------------------


@pytest.mark.parametrize("status", list(Status))
def test_every_status_line(status: Status) -> None:
    assert parse_line(status.value) == StatusLine(status)
    (line,) = Rui3Decoder().feed(format_status(status))
    assert line == StatusLine(status)


def test_value_lines_and_their_fields() -> None:
    assert parse_line("AT+NWM=1") == ValueLine("NWM", "1")
    assert parse_line("AT+P2P=868100000:7:125:0:8:14") == ValueLine("P2P", "868100000:7:125:0:8:14")
    assert parse_values("P2P", "868100000:7:125:0:8:14") == (868_100_000, 7, 125, 0, 8, 14)
    assert parse_line("AT+VER=3.2.0-p2_22q1_final.87") == ValueLine("VER", "3.2.0-p2_22q1_final.87")
    assert parse_line("V1.0.4") == ValueLine(None, "V1.0.4")
    with pytest.raises(Rui3LineError, match="needs 6 fields") as caught:
        parse_values("P2P", "868100000:7")
    assert caught.value.line == "868100000:7"
    with pytest.raises(Rui3LineError, match="from 0 to 2"):
        parse_values("NWM", "7")


def test_echo_of_a_command() -> None:
    assert parse_line("AT+NWM=?") == Echo("AT+NWM=?")
    assert parse_line("AT") == Echo("AT")


def test_rx_events_of_both_firmware_styles() -> None:
    assert parse_line("+EVT:RXP2P:-30:13:1234ABCD") == RxEvent(-30, 13, bytes.fromhex("1234abcd"))
    assert parse_line("+EVT:RXP2P:-110:-7:ab") == RxEvent(-110, -7, b"\xab")
    lines = Rui3Decoder().feed(b"+EVT:RXP2P, RSSI -30, SNR 13\r\n1234ABCD\r\n")
    assert lines == [RxEvent(-30, 13, bytes.fromhex("1234abcd"), legacy=True)]
    # A payload line prefixed as an event is accepted as well.
    lines = Rui3Decoder().feed(b"+EVT:RXP2P, RSSI -5, SNR -2\r\n+EVT:00FF\r\n")
    assert lines == [RxEvent(-5, -2, b"\x00\xff", legacy=True)]


def test_tx_done_timeout_banner_and_other_events() -> None:
    assert parse_line("+EVT:TXP2P DONE") == TxDone()
    assert parse_line("+EVT:RXP2P RECEIVE TIMEOUT") == RxTimeout()
    assert parse_line("+EVT:JOINED") == UnknownEvent("JOINED")
    banner = Rui3Decoder().feed(format_banner("RUI_4.0.6_RAK3172-E", 0))
    assert all(isinstance(line, Banner) for line in banner)
    assert [line.text for line in banner if isinstance(line, Banner)][2:] == [
        "Version: RUI_4.0.6_RAK3172-E",
        "Current Work Mode: LoRa P2P.",
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("+EVT:RXP2P:-30:13", "RSSI:SNR:payload"),
        ("+EVT:RXP2P:-30:13:ABC", "payload"),
        ("+EVT:RXP2P:-30:13:", "payload"),
        ("+EVT:RXP2P:-30:13:ZZ", "payload"),
        ("+EVT:RXP2P:loud:13:AB", "RSSI"),
        ("+EVT:RXP2P:-300:13:AB", "RSSI"),
        ("+EVT:RXP2P:-30:1.5:AB", "SNR"),
        ("+EVT:RXP2P, RSSI -30", "legacy RX event"),
        ("+EVT:RXP2P, RSSI -30, SNR 13", "without its payload"),
        ("+EVT:TXP2P FAILED", "no known form"),
        ("AT+=1", "no command name"),
        ("bad\x07bell", "not RUI3 output"),
    ],
)
def test_bad_lines_raise_typed_errors_showing_the_line(line: str, problem: str) -> None:
    with pytest.raises(Rui3LineError, match=problem) as caught:
        parse_line(line)
    assert isinstance(caught.value, CodecError)
    assert caught.value.line == line
    # The offending line is shown in the message.
    assert repr(line) in caught.value.message


# --- the decoder ------------------------------------------------------------------------------


@given(
    events=st.lists(st.tuples(payloads, rssis, snrs, st.booleans()), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50),
)
def test_rx_events_round_trip_in_any_pieces(
    events: list[tuple[bytes, int, int, bool]], cuts: list[int]
) -> None:
    stream = b"".join(
        format_rx_event(rssi, snr, payload, legacy=legacy) for payload, rssi, snr, legacy in events
    )
    decoder = Rui3Decoder()
    out = []
    at = index = 0
    while at < len(stream):
        size = cuts[index % len(cuts)]
        out.extend(decoder.feed(stream[at : at + size]))
        at += size
        index += 1
    assert out == [
        RxEvent(rssi, snr, payload, legacy=legacy) for payload, rssi, snr, legacy in events
    ]


@given(
    name=st.sampled_from(["NWM", "P2P", "PRECV", "IQINVER", "VER"]),
    value=st.text(alphabet="0123456789:ABCDEF.-_", min_size=1, max_size=40),
)
def test_value_lines_round_trip(name: str, value: str) -> None:
    assert Rui3Decoder().feed(format_value(name, value)) == [ValueLine(name, value)]


@given(
    garbage=st.binary(min_size=1, max_size=300).filter(lambda raw: b"\n" not in raw),
    payload=payloads,
    rssi=rssis,
    snr=snrs,
)
def test_garbage_never_takes_the_next_good_line_with_it(
    garbage: bytes, payload: bytes, rssi: int, snr: int
) -> None:
    decoder = Rui3Decoder()
    out = decoder.feed(garbage + b"\r\n" + format_rx_event(rssi, snr, payload))
    assert out[-1] == RxEvent(rssi, snr, payload)
    assert len(out) <= 2


def test_a_legacy_header_followed_by_another_line_keeps_that_line() -> None:
    lines = Rui3Decoder().feed(b"+EVT:RXP2P, RSSI -30, SNR 13\r\nOK\r\n")
    assert isinstance(lines[0], Rui3LineError)
    assert "without its payload" in lines[0].message
    assert lines[1:] == [StatusLine(Status.OK)]


def test_an_overlong_line_is_dropped_and_the_buffer_bounded() -> None:
    decoder = Rui3Decoder()
    first = decoder.feed(b"X" * (MAX_LINE_BYTES + 1))
    assert len(first) == 1
    assert isinstance(first[0], Rui3OverflowError)
    # The rest of the flood goes too, without growing the buffer, up to the next line end.
    assert decoder.feed(b"X" * 10_000) == []
    assert decoder.feed(b"XX\r\nOK\r\n") == [StatusLine(Status.OK)]
    assert decoder.overflows == 1
    long_line = decoder.feed(b"Y" * (MAX_LINE_BYTES + 50) + b"\n")
    assert isinstance(long_line[0], Rui3OverflowError)
    assert decoder.overflows == 2


def test_blank_lines_and_crlf_framing() -> None:
    assert Rui3Decoder().feed(b"\r\n\r\nOK\r\n\r\n") == [StatusLine(Status.OK)]
    assert Rui3Decoder().feed(b"\r\nAT_BUSY_ERROR\n") == [StatusLine(Status.AT_BUSY_ERROR)]


def test_non_ascii_line_is_an_error_value() -> None:
    (error, ok) = Rui3Decoder().feed(b"\xff\xfeabc\r\nOK\r\n")
    assert isinstance(error, Rui3LineError)
    assert "not ASCII" in error.message
    assert ok == StatusLine(Status.OK)


def test_reset_forgets_a_partial_line() -> None:
    decoder = Rui3Decoder()
    assert decoder.feed(b"+EVT:RXP2P, RSSI -1, SNR 1\r\nGARB") == []
    decoder.reset()
    assert decoder.feed(b"OK\r\n") == [StatusLine(Status.OK)]


def test_rx_event_encoder_refuses_bad_payloads() -> None:
    with pytest.raises(Rui3CommandError):
        format_rx_event(-30, 1, b"")
