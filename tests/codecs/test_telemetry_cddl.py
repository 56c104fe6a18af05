"""docs/formats/telemetry.cddl against the encoder, with two independent CDDL validators.

zcbor validates the schema file as written. pycddl 0.6.4 (it embeds cddl-rs 0.9.5) parses the
file, but its validator gets these constructs wrong:

- an array mixing fixed entries with ``?`` or ``*`` entries is checked as if every element
  matched the repeated entry (anweiss/cddl pull request 621 describes the fix), and of a
  ``* record`` list only the first record is checked;
- ``uint .bits`` rejects values that are within the bits, 0 included;
- ``bstr .size 8`` accepts an 8-byte text string; a map rule, where it is one choice of
  several, accepts non-maps and maps with keys of the wrong type.

So pycddl gets the same rules with the two open arrays instantiated at the shape the data
has (RFC 8610 section 3.2: ``[? a, b, * c]`` holding n items is ``[a, b, c, ...]`` or
``[b, c, ...]``) and ``.bits`` widened to a 16-bit range; each negative case below names the
validators that must refuse it.
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
from owlgate.codecs.node import cbor
from owlgate.codecs.node.telemetry import Batch, Reading, decode_batch, encode_batch
from tests.codecs.cddl import BOTH, PYCDDL, ZCBOR, zcbor_cli_accepts
from tests.codecs.test_telemetry import BASE_TIME, GATEWAY, batches, parking_batch
from tests.conftest import REPO

SPEC_PATH = REPO / "docs" / "formats" / "telemetry.cddl"
SPEC = SPEC_PATH.read_text()
ENTRY = "telemetry-batch"
DEV = bytes.fromhex("70b3d57ed0001234")


@functools.cache
def zcbor_batch() -> zcbor.DataTranslator:
    # default_max_qty bounds every "*" for zcbor; 1000 is above any batch here.
    return zcbor.DataTranslator.from_cddl(SPEC, 1000).my_types[ENTRY]


def _rule_span(text: str, name: str) -> tuple[int, int]:
    match = re.search(r"^" + re.escape(name) + r" = \[$", text, re.MULTILINE)
    assert match, f"rule {name} not found in {SPEC_PATH.name}"
    return match.start(), text.index("\n]\n", match.start()) + 3


def pycddl_text(items: object) -> str:
    """The spec with its two open arrays instantiated at the shape of ``items``."""
    rest = list(items[4:]) if isinstance(items, list) else []
    head = ["version: 1", "gateway-id: eui64", "seq: u64", "base-time: u64"]
    if rest and not isinstance(rest[0], list):
        head.append("delayed: true")
        rest = rest[1:]
    fixed = ["dev-eui: eui64", "dt: int", "rssi: radio-value", "snr: radio-value"]
    rules = []
    for index, row in enumerate(rest):
        entries = list(fixed)
        if isinstance(row, list):
            if row and isinstance(row[0], int) and not isinstance(row[0], bool):
                entries.insert(0, "field-mask: mask")
            entries += ["field-value"] * max(0, len(row) - len(entries))
        head.append(f"reading-{index}")
        rules.append(f"reading-{index} = [{', '.join(entries)}]")
    text = SPEC
    start, end = _rule_span(text, ENTRY)
    batch_rule = f"{ENTRY} = [{', '.join(head)}]\n" + "".join(rule + "\n" for rule in rules)
    text = text[:start] + batch_rule + text[end:]
    start, end = _rule_span(text, "reading")
    text = text[:start] + text[end:]
    assert "mask = uint .bits field-bits" in text
    return text.replace("mask = uint .bits field-bits", "mask = 0..65535")


@functools.cache
def pycddl_schema(text: str) -> pycddl.Schema:
    return pycddl.Schema(text)


def validate_both(data: bytes) -> None:
    zcbor_batch().validate_str(data)
    pycddl_schema(pycddl_text(cbor2.loads(data))).validate_cbor(data)


def test_spec_parses_and_names_every_field_bit() -> None:
    pycddl.Schema(SPEC)
    assert zcbor_batch() is not None
    from owlgate.codecs.node.telemetry import FIELDS

    group = SPEC[SPEC.index("field-bits = &(") : SPEC.index("\n)\n", SPEC.index("field-bits = &("))]
    bits = dict(re.findall(r"^  ([a-z0-9-]+): (\d+),", group, re.MULTILINE))
    assert sorted(int(bit) for bit in bits.values()) == [bit for bit, _, _, _ in FIELDS]


@settings(max_examples=150, deadline=None)
@given(batches(max_readings=4))
def test_every_encoded_batch_validates(batch: Batch) -> None:
    validate_both(encode_batch(batch))


@pytest.mark.parametrize("seed", range(4))
def test_seeded_parking_batches_validate(seed: int) -> None:
    batch = parking_batch(100, seed=seed, fcnt=seed % 2 == 0, places=1 + seed % 2)
    batch.delayed = seed >= 2
    validate_both(encode_batch(batch))


def test_zcbor_command_line_accepts_a_batch_and_refuses_a_broken_one(tmp_path: Path) -> None:
    assert zcbor_cli_accepts(SPEC_PATH, ENTRY, encode_batch(parking_batch(20, seed=9)), tmp_path)
    assert not zcbor_cli_accepts(
        SPEC_PATH, ENTRY, cbor.dumps([1, GATEWAY.hex(), 1, BASE_TIME]), tmp_path
    )


HEAD = [1, GATEWAY, 5, BASE_TIME]
ROW = [DEV, 0, -100, 8]


@pytest.mark.parametrize(
    ("items", "refused_by"),
    [
        pytest.param([2, *HEAD[1:]], BOTH, id="version 2"),
        pytest.param([1, GATEWAY.hex(), 5, BASE_TIME], BOTH, id="gateway EUI as hex text"),
        pytest.param([1, GATEWAY[:7], 5, BASE_TIME], BOTH, id="7-byte gateway EUI"),
        pytest.param([1, GATEWAY, -5, BASE_TIME], BOTH, id="negative seq"),
        pytest.param(
            [1, GATEWAY, 5, cbor.Tag(2, (2**64 + 1).to_bytes(9, "big"))],
            BOTH,
            id="base time as a bignum beyond 64 bits",
        ),
        pytest.param([1, GATEWAY, 5], BOTH, id="no base time"),
        pytest.param([*HEAD, False], BOTH, id="delayed false"),
        pytest.param([*HEAD, [DEV.hex(), 0, -100, 8]], BOTH, id="device EUI as hex text"),
        pytest.param([*HEAD, [DEV[:7], 0, -100, 8]], BOTH, id="7-byte device EUI"),
        pytest.param([*HEAD, [DEV, 0.5, -100, 8]], BOTH, id="fractional dt"),
        pytest.param([*HEAD, [DEV, 0, -100.5, 8]], BOTH, id="fractional rssi"),
        pytest.param([*HEAD, [DEV, 0, -100]], BOTH, id="reading without snr"),
        pytest.param([*HEAD, [2, *ROW, 1.5]], BOTH, id="float field value"),
        pytest.param([*HEAD, [2, *ROW, None]], BOTH, id="null field value"),
        pytest.param([*HEAD, 7], BOTH, id="reading that is no array"),
        # The cases pycddl 0.6.4 lets through (see the module docstring).
        pytest.param([*HEAD, ["8 bytes!", 0, -100, 8]], (ZCBOR,), id="8-byte text EUI"),
        pytest.param([*HEAD, [1 << 14, *ROW, 1]], (ZCBOR,), id="undefined field bit"),
        pytest.param([*HEAD, [2, *ROW, "yes"]], (ZCBOR,), id="text field value"),
        pytest.param([*HEAD, [1 << 15, *ROW, {1: 2}]], (ZCBOR,), id="extension with int key"),
        pytest.param([*HEAD, [1 << 15, *ROW, {}]], (ZCBOR,), id="empty extension"),
    ],
)
def test_schema_refuses(items: list[object], refused_by: tuple[str, ...]) -> None:
    data = cbor.dumps(items)  # deterministic, so the decoder judges the structure, not the CBOR
    if ZCBOR in refused_by:
        with pytest.raises(zcbor.CddlValidationError):
            zcbor_batch().validate_str(data)
    if PYCDDL in refused_by:
        with pytest.raises(pycddl.ValidationError):
            pycddl_schema(pycddl_text(items)).validate_cbor(data)
    # What the schema refuses, the decoder refuses too.
    with pytest.raises(SchemaError):
        decode_batch(data)


def test_pycddl_shape_instantiation_keeps_the_rules() -> None:
    # The instantiated schema still refuses by the spec's own leaf rules, reading by reading.
    batch = Batch(GATEWAY, 5, BASE_TIME, [Reading(DEV, BASE_TIME, {"occupied": True}, -90, 1.0)])
    items = cbor2.loads(encode_batch(batch))
    text = pycddl_text(items)
    assert "reading-0 = [field-mask: mask, dev-eui: eui64, dt: int" in text
    assert "eui64 = bstr .size 8" in text
    items[4][1] = DEV[:7]
    with pytest.raises(pycddl.ValidationError):
        pycddl_schema(text).validate_cbor(cbor2.dumps(items))
