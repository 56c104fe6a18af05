"""docs/formats/bundle.cddl against the encoder, with two independent CDDL validators.

zcbor 0.9 and pycddl 0.6.4 both validate the schema file as written. pycddl's gaps here: as in
the other schemas, ``bstr .size N`` lets a text string of that size pass; and an optional
entry (``? 6 => site``) whose value has the wrong type passes. Each negative case
names the validators that must refuse it; whatever the schema refuses, the decoder refuses.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pycddl
import pytest
import zcbor
from hypothesis import given, settings

from owlgate.codecs.bundle import KeyBundle, decode_bundle, encode_bundle
from owlgate.codecs.errors import SchemaError
from owlgate.codecs.node import cbor
from tests.codecs.cddl import BOTH, PYCDDL, ZCBOR, zcbor_cli_accepts
from tests.codecs.test_bundle import GOOD, bundles, example
from tests.conftest import REPO

SPEC_PATH = REPO / "docs" / "formats" / "bundle.cddl"
SPEC = SPEC_PATH.read_text()
RULE = "key-bundle"


@functools.cache
def zcbor_rule() -> zcbor.DataTranslator:
    return zcbor.DataTranslator.from_cddl(SPEC, 10).my_types[RULE]


@functools.cache
def pycddl_rule() -> pycddl.Schema:
    return pycddl.Schema(f"root = {RULE}\n{SPEC}")


@settings(max_examples=60, deadline=None)
@given(bundles())
def test_every_bundle_validates(bundle: KeyBundle) -> None:
    data = encode_bundle(bundle)
    zcbor_rule().validate_str(data)
    pycddl_rule().validate_cbor(data)


def test_zcbor_command_line_accepts_a_bundle_and_refuses_a_broken_one(tmp_path: Path) -> None:
    assert zcbor_cli_accepts(SPEC_PATH, RULE, encode_bundle(example()), tmp_path)
    broken = cbor.dumps({**GOOD, 7: []})
    assert not zcbor_cli_accepts(SPEC_PATH, RULE, broken, tmp_path)


@pytest.mark.parametrize(
    ("content", "refused_by"),
    [
        pytest.param({**GOOD, 8: 0}, BOTH, id="unknown key"),
        pytest.param({k: v for k, v in GOOD.items() if k != 1}, BOTH, id="no bundle id"),
        pytest.param({**GOOD, 5: bytes(7)}, BOTH, id="7-byte JoinEUI"),
        pytest.param({**GOOD, 7: []}, BOTH, id="no reservations"),
        pytest.param({**GOOD, 7: [[1, bytes(15)]]}, BOTH, id="15-byte AppKey"),
        pytest.param({**GOOD, 7: [[-1, bytes(16)]]}, BOTH, id="negative reservation"),
        pytest.param({**GOOD, 2: -5}, BOTH, id="negative issue time"),
        pytest.param({**GOOD, 4: ""}, BOTH, id="empty profile"),
        # The cases pycddl 0.6.4 lets through (see the module docstring).
        pytest.param({**GOOD, 5: "t" * 8}, (ZCBOR,), id="JoinEUI as text"),
        pytest.param({**GOOD, 6: 5}, (ZCBOR,), id="site not text"),
    ],
)
def test_schema_refuses(content: object, refused_by: tuple[str, ...]) -> None:
    data = cbor.dumps(content)
    if ZCBOR in refused_by:
        with pytest.raises(zcbor.CddlValidationError):
            zcbor_rule().validate_str(data)
    if PYCDDL in refused_by:
        with pytest.raises(pycddl.ValidationError):
            pycddl_rule().validate_cbor(data)
    with pytest.raises(SchemaError):
        decode_bundle(data)
