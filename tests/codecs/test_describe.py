"""What ``owlgate decode telemetry`` and ``owlgate decode health`` show, plain and signed."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from owlgate.codecs.cli import app
from owlgate.codecs.describe import describe_health_message, describe_telemetry
from owlgate.codecs.errors import CborError, CodecError, SchemaError
from owlgate.codecs.health import describe_health, encode_health
from owlgate.codecs.node.telemetry import describe_batch
from owlgate.codecs.signed import ED25519, key_id, sign
from tests.codecs.test_health import EXAMPLE, LAPTOP
from tests.codecs.test_signed import KEY, by_hand, telemetry
from tests.conftest import typed_error_or_none

BATCH = telemetry()
HEALTH = encode_health(EXAMPLE)


def test_plain_telemetry_is_the_batch_description() -> None:
    described = describe_telemetry(BATCH)
    assert described == {"signed": None, **describe_batch(BATCH)}
    json.dumps(described, allow_nan=False)


def test_signed_telemetry_shows_the_headers_and_the_batch() -> None:
    message = sign(BATCH, KEY)
    described = describe_telemetry(message)
    assert described["signed"] == {
        "format": "COSE_Sign1 (RFC 9052)",
        "alg": -8,
        "alg_name": "EdDSA",
        "kid": key_id(KEY).hex(),
        "kid_protected": True,
        "content_type": None,
        "signature": message[-64:].hex(),
        "size_bytes": len(message),
        "verified": False,
    }
    assert {key: value for key, value in described.items() if key != "signed"} == describe_batch(
        BATCH
    )
    json.dumps(described, allow_nan=False)


def test_signed_health_shows_the_headers_and_the_health() -> None:
    message = sign(HEALTH, KEY, alg=ED25519, content_type="application/cbor")
    described = describe_health_message(message)
    signed = described.pop("signed")
    assert isinstance(signed, dict)
    assert (signed["alg"], signed["alg_name"], signed["content_type"]) == (
        -19,
        "Ed25519",
        "application/cbor",
    )
    assert described == describe_health(HEALTH)
    plain = describe_health_message(encode_health(LAPTOP))
    assert plain["signed"] is None
    assert plain["throttled"] is None


def test_the_signature_is_shown_not_checked() -> None:
    # Signed by another key, an unknown algorithm: shown as they are, never marked verified.
    forged = by_hand({1: -7, 4: b"someone"}, BATCH, signature=bytes(64))
    signed = describe_telemetry(forged)["signed"]
    assert isinstance(signed, dict)
    assert (signed["alg"], signed["alg_name"], signed["kid"], signed["verified"]) == (
        -7,
        None,
        b"someone".hex(),
        False,
    )


@pytest.mark.parametrize(
    ("describe", "data", "error", "words"),
    [
        (describe_telemetry, b"", CborError, "not a telemetry batch nor a COSE_Sign1"),
        (describe_telemetry, BATCH[:-1], CborError, "truncated"),
        (describe_telemetry, HEALTH, SchemaError, "a telemetry batch is a CBOR array"),
        (describe_health_message, BATCH, SchemaError, "a health message is a CBOR map"),
        (describe_health_message, b"\xff", CborError, "not a health message nor a COSE_Sign1"),
        (
            describe_telemetry,
            sign(HEALTH, KEY),
            SchemaError,
            "a COSE_Sign1 whose payload is not a telemetry batch",
        ),
        (
            describe_health_message,
            sign(BATCH, KEY),
            SchemaError,
            "a COSE_Sign1 whose payload is not a health message",
        ),
        (describe_telemetry, by_hand({1: -8}, BATCH, tag=17), SchemaError, "(COSE_Mac0)"),
        (describe_telemetry, by_hand({1: -8}, BATCH, tag=None), SchemaError, "untagged"),
        (describe_telemetry, by_hand({1: -8}, None), SchemaError, "detached"),
        (
            describe_health_message,
            sign(HEALTH[:-1], KEY),
            CborError,
            "payload is not a health message: truncated",
        ),
    ],
)
def test_bad_input_says_what_was_tried(
    describe: object, data: bytes, error: type[CodecError], words: str
) -> None:
    assert callable(describe)
    with pytest.raises(error) as caught:
        describe(data)
    assert type(caught.value) is error
    assert words in caught.value.message, caught.value.message


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=60)
    | st.binary(max_size=60).map(
        lambda payload: cbor2.dumps(cbor2.CBORTag(18, [b"", {}, payload, b""]))
    )
)
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    typed_error_or_none(CodecError, describe_telemetry, data)
    typed_error_or_none(CodecError, describe_health_message, data)


# --- through the command line -----------------------------------------------------------------


def test_cli_decodes_signed_telemetry_from_hex() -> None:
    message = sign(BATCH, KEY)
    result = CliRunner().invoke(app, ["decode", "telemetry", message.hex()])
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["signed"]["kid"] == key_id(KEY).hex()
    assert printed["readings"][0]["values"] == {"occupied": True, "battery_mv": 3600}


def test_cli_decodes_health_from_a_raw_file(tmp_path: Path) -> None:
    path = tmp_path / "health.cbor"
    path.write_bytes(sign(HEALTH, KEY))
    result = CliRunner().invoke(app, ["decode", "health", str(path)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["cpu_temp_c"] == 48.3


def test_cli_bad_input_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(app, ["decode", "health", BATCH.hex()])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: not a health message nor a COSE_Sign1 around one: ")
    assert result.stderr.count("\n") == 1
