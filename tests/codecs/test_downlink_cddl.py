"""docs/formats/downlink.cddl against the encoder, with two independent CDDL validators.

As in the other schemas, pycddl 0.6.4 lets a text string pass for ``bstr .size N``; those
cases name zcbor alone. Whatever the schema refuses, the decoder refuses.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pycddl
import pytest
import zcbor
from hypothesis import given, settings

from owlgate.codecs.downlink import Downlink, decode_downlink, encode_downlink
from owlgate.codecs.errors import SchemaError
from owlgate.codecs.node import cbor
from tests.codecs.cddl import BOTH, PYCDDL, ZCBOR, zcbor_cli_accepts
from tests.codecs.test_downlink import EUI, GOOD, GW, downlinks
from tests.conftest import REPO

SPEC_PATH = REPO / "docs" / "formats" / "downlink.cddl"
SPEC = SPEC_PATH.read_text()


@functools.cache
def zcbor_rule() -> zcbor.DataTranslator:
    return zcbor.DataTranslator.from_cddl(SPEC, 10).my_types["downlink"]


@functools.cache
def pycddl_rule() -> pycddl.Schema:
    return pycddl.Schema(SPEC)


@settings(max_examples=60, deadline=None)
@given(downlinks)
def test_every_downlink_validates(message: Downlink) -> None:
    data = encode_downlink(message)
    zcbor_rule().validate_str(data)
    pycddl_rule().validate_cbor(data)


def test_zcbor_command_line_accepts_a_downlink_and_refuses_a_broken_one(tmp_path: Path) -> None:
    good = encode_downlink(Downlink(3, GW, EUI, 21, b"\x18\x00\x70", 1_800_000_000))
    assert zcbor_cli_accepts(SPEC_PATH, "downlink", good, tmp_path)
    broken = cbor.dumps({**GOOD, 4: 0})
    assert not zcbor_cli_accepts(SPEC_PATH, "downlink", broken, tmp_path)


@pytest.mark.parametrize(
    ("change", "refused_by"),
    [
        pytest.param({1: 0}, BOTH, id="id 0"),
        pytest.param({2: bytes(9)}, BOTH, id="9-byte gateway"),
        pytest.param({4: 224}, BOTH, id="FPort 224"),
        pytest.param({5: b""}, BOTH, id="empty payload"),
        pytest.param({5: bytes(52)}, BOTH, id="52-byte payload"),
        pytest.param({6: -1}, BOTH, id="negative expiry"),
        pytest.param({7: 2**32}, BOTH, id="counter past 32 bits"),
        pytest.param({9: 0}, BOTH, id="unknown key"),
        pytest.param({3: "t" * 8}, (ZCBOR,), id="DevEUI as text"),
    ],
)
def test_schema_refuses(change: dict[int, object], refused_by: tuple[str, ...]) -> None:
    data = cbor.dumps({**GOOD, **change})
    if ZCBOR in refused_by:
        with pytest.raises(zcbor.CddlValidationError):
            zcbor_rule().validate_str(data)
    if PYCDDL in refused_by:
        with pytest.raises(pycddl.ValidationError):
            pycddl_rule().validate_cbor(data)
    with pytest.raises(SchemaError):
        decode_downlink(data)


def test_schema_refuses_a_missing_key() -> None:
    data = cbor.dumps({key: value for key, value in GOOD.items() if key != 7})
    with pytest.raises(zcbor.CddlValidationError):
        zcbor_rule().validate_str(data)
    with pytest.raises(pycddl.ValidationError):
        pycddl_rule().validate_cbor(data)
    with pytest.raises(SchemaError):
        decode_downlink(data)
