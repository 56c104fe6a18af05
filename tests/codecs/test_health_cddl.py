"""docs/formats/health.cddl against the encoder, with two independent CDDL validators.

zcbor 0.9 and pycddl 0.6.4 both validate the schema file as written. pycddl's gaps here:
``bstr .size N`` lets a text string of that size pass (its ``.size`` check does not look at the
type), and in ``nint .ge -2147483647 / 0..2147483647`` the upper bound is not enforced. (It also
refuses every value of a range with a negative bound, which is why the schema spells the
signed range that way.) Each negative case below names the validators that must refuse it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import cbor2
import pycddl
import pytest
import zcbor
from hypothesis import given, settings

from owlgate.codecs.errors import SchemaError
from owlgate.codecs.health import KEY_NAMES, REQUIRED_KEYS, Health, decode_health, encode_health
from owlgate.codecs.node import cbor
from tests.codecs.cddl import BOTH, PYCDDL, ZCBOR, zcbor_cli_accepts
from tests.codecs.test_health import EXAMPLE, LAPTOP, healths
from tests.conftest import REPO

SPEC_PATH = REPO / "docs" / "formats" / "health.cddl"
SPEC = SPEC_PATH.read_text()
ENTRY = "gateway-health"


@functools.cache
def zcbor_health() -> zcbor.DataTranslator:
    return zcbor.DataTranslator.from_cddl(SPEC, 10).my_types[ENTRY]


@functools.cache
def pycddl_health() -> pycddl.Schema:
    return pycddl.Schema(SPEC)  # the first rule is the root


def validate_both(data: bytes) -> None:
    zcbor_health().validate_str(data)
    pycddl_health().validate_cbor(data)


def test_spec_names_every_key_the_codec_knows() -> None:
    body = SPEC[SPEC.index(ENTRY + " = {") : SPEC.index("\n}\n")]
    entries = re.findall(r"^  (\? )?(\d+) => ", body, re.MULTILINE)
    assert sorted(int(key) for _, key in entries) == sorted(KEY_NAMES)
    required = {int(key) for optional, key in entries if not optional}
    assert required == set(REQUIRED_KEYS)


@settings(max_examples=150, deadline=None)
@given(healths())
def test_every_encoded_message_validates(health: Health) -> None:
    validate_both(encode_health(health))


def test_examples_validate() -> None:
    validate_both(encode_health(EXAMPLE))
    validate_both(encode_health(LAPTOP))


def test_zcbor_command_line_accepts_a_message_and_refuses_a_broken_one(tmp_path: Path) -> None:
    broken = dict(cbor2.loads(encode_health(EXAMPLE)))
    del broken[8]
    assert zcbor_cli_accepts(SPEC_PATH, ENTRY, encode_health(EXAMPLE), tmp_path)
    assert not zcbor_cli_accepts(SPEC_PATH, ENTRY, cbor.dumps(broken), tmp_path)


BASE = cbor2.loads(encode_health(EXAMPLE))


def _changed(key: int, value: object) -> dict[int, object]:
    content = dict(BASE)
    if value is None:
        del content[key]
    else:
        content[key] = value
    return content


@pytest.mark.parametrize(
    ("content", "refused_by"),
    [
        pytest.param(_changed(0, 2), BOTH, id="version 2"),
        pytest.param(_changed(1, bytes(7)), BOTH, id="7-byte gateway id"),
        pytest.param(_changed(2, -1), BOTH, id="negative seq"),
        pytest.param(_changed(4, 0), BOTH, id="interval 0"),
        pytest.param(_changed(7, ""), BOTH, id="empty agent version"),
        pytest.param(_changed(7, "v" * 65), BOTH, id="agent version of 65 bytes"),
        pytest.param(_changed(8, None), BOTH, id="no config hash"),
        pytest.param(_changed(8, bytes(31)), BOTH, id="31-byte config hash"),
        pytest.param(_changed(10, -(2**31)), BOTH, id="temperature below the range"),
        pytest.param(_changed(10, 48.3), BOTH, id="float temperature"),
        pytest.param(_changed(11, 2**32), BOTH, id="throttled beyond 32 bits"),
        pytest.param(_changed(12, [1, 2]), BOTH, id="two load averages"),
        pytest.param(_changed(12, [1, 2, -3]), BOTH, id="negative load"),
        pytest.param(_changed(13, [1, 2, 3]), BOTH, id="memory of three"),
        pytest.param(_changed(15, [1, 2, 3, 4]), BOTH, id="four radio counters"),
        pytest.param(_changed(17, None), BOTH, id="no outbox depth"),
        pytest.param(_changed(20, None), BOTH, id="no reconnects"),
        pytest.param({**BASE, 21: 0}, BOTH, id="unknown key 21"),
        # The case pycddl 0.6.4 lets through (see the module docstring).
        pytest.param(_changed(8, "h" * 32), (ZCBOR,), id="config hash as text"),
        pytest.param(_changed(10, 2**31), (ZCBOR,), id="temperature above the range"),
    ],
)
def test_schema_refuses(content: dict[int, object], refused_by: tuple[str, ...]) -> None:
    data = cbor.dumps(content)
    if ZCBOR in refused_by:
        with pytest.raises(zcbor.CddlValidationError):
            zcbor_health().validate_str(data)
    if PYCDDL in refused_by:
        with pytest.raises(pycddl.ValidationError):
            pycddl_health().validate_cbor(data)
    # What the schema refuses, the decoder refuses too.
    with pytest.raises(SchemaError):
        decode_health(data)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(_changed(18, None), id="outbox not empty, no age"),
        pytest.param({**_changed(17, 0), 18: 5}, id="outbox empty, an age"),
        pytest.param(_changed(13, [2, 1]), id="memory used above total"),
    ],
)
def test_what_only_the_decoder_checks(content: dict[int, object]) -> None:
    # Cross-field rules CDDL cannot state: the schema accepts these, the decoder does not.
    data = cbor.dumps(content)
    validate_both(data)
    with pytest.raises(SchemaError):
        decode_health(data)
