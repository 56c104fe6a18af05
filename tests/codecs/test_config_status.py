"""Config status reports (gateway to fleet): round trips, an independent CBOR reading, the CDDL
in docs/formats/control.cddl with zcbor and pycddl, and refusals of malformed reports."""

from __future__ import annotations

import cbor2
import pycddl
import pytest
import zcbor
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.control import (
    CONFIG_STATES,
    MAX_DETAIL_CHARS,
    MAX_REASON_CHARS,
    ConfigStatus,
    decode_config_status,
    encode_config_status,
    short_detail,
)
from owlgate.codecs.errors import CborError, SchemaError
from owlgate.codecs.node import cbor
from tests.codecs.cddl import BOTH, PYCDDL, ZCBOR
from tests.codecs.test_control_cddl import pycddl_rule, validate_both, zcbor_rule

hashes = st.none() | st.binary(min_size=32, max_size=32)
u64 = st.integers(0, (1 << 64) - 1)


def _bounded_text(limit: int) -> st.SearchStrategy[str]:
    return st.text(min_size=1, max_size=limit).filter(lambda text: len(text.encode()) <= limit)


statuses = st.builds(
    ConfigStatus,
    st.sampled_from(CONFIG_STATES),
    u64,
    u64,
    hashes,
    st.none() | _bounded_text(MAX_REASON_CHARS),
    st.none() | _bounded_text(MAX_DETAIL_CHARS),
    hashes,
)


@settings(max_examples=100, deadline=None)
@given(statuses)
def test_round_trip_and_independent_reading(message: ConfigStatus) -> None:
    data = encode_config_status(message)
    assert decode_config_status(data) == message
    optional = {
        10: message.content_hash,
        11: message.reason,
        12: message.detail,
        14: message.running_hash,
    }
    expected: dict[int, object] = {8: message.state, 9: message.seq, 13: message.at}
    expected |= {key: value for key, value in optional.items() if value is not None}
    assert cbor2.loads(data) == expected


@settings(max_examples=60, deadline=None)
@given(statuses)
def test_every_status_validates_against_the_schema(message: ConfigStatus) -> None:
    validate_both("config-status", encode_config_status(message))


def test_a_rolled_back_report_is_deterministic() -> None:
    message = ConfigStatus("rolled_back", 5, 1_800_000_000, reason="radio")
    assert encode_config_status(message).hex() == (
        "a4086b726f6c6c65645f6261636b09050b65726164696f0d1a6b49d200"
    )


H32 = bytes(32)


@pytest.mark.parametrize(
    ("content", "refused_by"),
    [
        pytest.param({8: "done", 9: 1, 13: 0}, BOTH, id="unknown state"),
        pytest.param({8: "applied", 13: 0}, BOTH, id="no seq"),
        pytest.param({8: "applied", 9: 1}, BOTH, id="no time"),
        pytest.param({8: "applied", 9: -1, 13: 0}, BOTH, id="negative seq"),
        pytest.param({8: "applied", 9: 1, 13: 0, 10: bytes(31)}, BOTH, id="31-byte hash"),
        pytest.param({8: "applied", 9: 1, 13: 0, 11: ""}, BOTH, id="empty reason"),
        pytest.param({8: "applied", 9: 1, 13: 0, 11: "r" * 33}, BOTH, id="33-byte reason"),
        pytest.param({8: "applied", 9: 1, 13: 0, 12: "d" * 241}, BOTH, id="241-byte detail"),
        pytest.param({8: "applied", 9: 1, 13: 0, 15: 0}, BOTH, id="unknown key"),
        pytest.param({8: "applied", 9: 1, 13: 0, 14: "h" * 32}, (ZCBOR,), id="hash as text"),
    ],
)
def test_schema_and_decoder_refuse(content: object, refused_by: tuple[str, ...]) -> None:
    data = cbor.dumps(content)
    if ZCBOR in refused_by:
        with pytest.raises(zcbor.CddlValidationError):
            zcbor_rule("config-status").validate_str(data)
    if PYCDDL in refused_by:
        with pytest.raises(pycddl.ValidationError):
            pycddl_rule("config-status").validate_cbor(data)
    with pytest.raises(SchemaError):
        decode_config_status(data)


@pytest.mark.parametrize(
    "message",
    [
        ConfigStatus("pending", 1, 0),
        ConfigStatus("applied", -1, 0),
        ConfigStatus("applied", 1, 1 << 64),
        ConfigStatus("applied", True, 0),  # a bool is not a seq
        ConfigStatus("applied", 1, 0, content_hash=bytes(16)),
        ConfigStatus("applied", 1, 0, reason=""),
        ConfigStatus("applied", 1, 0, detail="é" * 121),  # 242 bytes of UTF-8
    ],
    ids=repr,
)
def test_encoder_refuses_what_the_decoder_would(message: ConfigStatus) -> None:
    with pytest.raises(SchemaError):
        encode_config_status(message)


def test_truncated_report_is_a_cbor_error() -> None:
    data = encode_config_status(ConfigStatus("applied", 3, 9, H32, running_hash=H32))
    with pytest.raises(CborError):
        decode_config_status(data[:-1])


def test_short_detail_keeps_a_report_encodable() -> None:
    assert short_detail("radio\n  not up") == "radio not up"
    long = short_detail("ü" * 500)
    assert len(long.encode()) <= MAX_DETAIL_CHARS
    assert long.endswith("\u2026")
    encode_config_status(ConfigStatus("rejected", 0, 0, reason="signature", detail=long))
