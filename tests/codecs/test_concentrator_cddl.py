"""docs/protocol/concentrator-v1.cddl against the codec, with two independent CDDL validators.

zcbor validates the schema file as written. pycddl 0.6.4 (it embeds cddl-rs 0.9.5) parses it,
but its validator gets four constructs of it wrong, so it is given equivalent or slightly
weaker rules for those (:func:`pycddl_text`):

- a range with a negative bound (``-200..30``) fails with "invalid cddl range": it gets the
  same range as ``(int .ge -200) .and (int .le 30)`` (RFC 9165 ``.and``), which it checks;
- a range as the key type of a map entry (``* key-above-4 => any``) is matched against the
  whole map and refuses every message: the key types become ``uint`` (so pycddl lets key 0
  and, a further bug, keys that are not integers at all through);
- an optional group of two entries (``? (3 => eui, 4 => capabilities)``) demands key 4 even
  when both are absent: it becomes two independent optional entries (so pycddl accepts one
  without the other);
- a repeated array entry whose type is a named choice (``[1*3 bandwidth]``) accepts only the
  first alternative: the choice is written out inline, ``[1*3 (125000 / 250000 / 500000)]``.

As in tests/codecs/test_telemetry_cddl.py, ``bstr .size`` also accepts a text string in
pycddl. Each negative case below names the validators that must refuse it; the decoder
refuses all of them.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pycddl
import pytest
import zcbor
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.concentrator import MESSAGES, Message, MessageType, decode_message
from owlgate.codecs.concentrator import encode_message as encode
from owlgate.codecs.errors import SchemaError
from owlgate.codecs.node import cbor
from tests.codecs.cddl import BOTH, PYCDDL, ZCBOR, zcbor_cli_accepts
from tests.codecs.test_concentrator import BY_TYPE, EXAMPLES, body_of
from tests.conftest import REPO

SPEC_PATH = REPO / "docs" / "protocol" / "concentrator-v1.cddl"
SPEC = SPEC_PATH.read_text()
ENTRY = "concentrator-message"

_HELLO_GROUP = "  ? (\n    3 => eui,\n    4 => capabilities,\n  ),"
_BANDWIDTHS = "bandwidths-hz = [1*3 bandwidth]"


@functools.cache
def zcbor_message() -> zcbor.DataTranslator:
    # default_max_qty bounds every "*" for zcbor; 64 is above any list or map here.
    return zcbor.DataTranslator.from_cddl(SPEC, 64).my_types[ENTRY]


def pycddl_text(spec: str) -> str:
    """The schema with the four constructs pycddl 0.6.4 mishandles rewritten (see above)."""
    assert _HELLO_GROUP in spec
    assert _BANDWIDTHS in spec
    text = re.sub(r"(-\d+)\.\.(\d+)", r"(int .ge \1) .and (int .le \2)", spec)
    text = re.sub(r"^(key-above-\d+) = \d+\.\.\d+$", r"\1 = uint", text, flags=re.MULTILINE)
    text = text.replace(_HELLO_GROUP, "  ? 3 => eui,\n  ? 4 => capabilities,")
    return text.replace(_BANDWIDTHS, "bandwidths-hz = [1*3 (125000 / 250000 / 500000)]")


@functools.cache
def pycddl_schema() -> pycddl.Schema:
    return pycddl.Schema(pycddl_text(SPEC))


def validate_both(data: bytes) -> None:
    zcbor_message().validate_str(data)
    pycddl_schema().validate_cbor(data)


def test_rewrites_for_pycddl_keep_the_rules() -> None:
    text = pycddl_text(SPEC)
    assert "rssi-dbm = (int .ge -200) .and (int .le 30)" in text
    assert "key-above-11 = uint" in text
    assert not re.search(r"-\d+\.\.", text)
    # Everything else is the spec, line for line.
    changed = set(text.splitlines()) - set(SPEC.splitlines())
    assert len(changed) < 20


def test_every_message_type_and_body_has_its_rule() -> None:
    for spec in MESSAGES:
        rule = spec.message_type.name.lower().replace("_", "-")
        assert re.search(
            rf"^{rule} = \[msg-type: {int(spec.message_type)}, token: ", SPEC, re.MULTILINE
        ), rule
        body = re.search(rf"^{rule}-body = \{{\n(.*?)^\}}", SPEC, re.MULTILINE | re.DOTALL)
        assert body, f"{rule}-body"
        keys = [int(key) for key in re.findall(r"^ +\??\s*(\d+) =>", body.group(1), re.M)]
        assert keys == [entry.key for entry in spec.fields], rule
        highest = max(keys, default=0)
        assert f"* key-above-{highest} => any" in body.group(1), rule


def test_examples_validate() -> None:
    for message in EXAMPLES.values():
        validate_both(encode(message))


@pytest.mark.parametrize("message_type", list(MessageType), ids=lambda t: t.name)
@given(st.data())
@settings(max_examples=60, deadline=None)
def test_every_message_type_validates(message_type: MessageType, data: st.DataObject) -> None:
    message: Message = data.draw(BY_TYPE[message_type])
    validate_both(encode(message))


def test_zcbor_command_line_accepts_a_message_and_refuses_a_broken_one(tmp_path: Path) -> None:
    assert zcbor_cli_accepts(SPEC_PATH, ENTRY, encode(EXAMPLES["rx-frame"]), tmp_path)
    assert not zcbor_cli_accepts(SPEC_PATH, ENTRY, cbor.dumps([4, 0, {1: 868_100_000}]), tmp_path)


def item(name: str, **changes: object) -> list[object]:
    """An example message as CBOR items, with body keys ``k<N>`` replaced."""
    decoded = cbor.loads(encode(EXAMPLES[name]))
    assert isinstance(decoded, list)
    decoded[2].update({int(key[1:]): value for key, value in changes.items()})
    return decoded


def without(name: str, key: int) -> list[object]:
    decoded = item(name)
    del decoded[2][key]  # type: ignore[attr-defined]
    return decoded


def nested(name: str, path: tuple[int, ...], value: object) -> list[object]:
    decoded = item(name)
    target: object = decoded[2]
    for step in path[:-1]:
        target = target[step]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return decoded


RX_BODY = body_of(EXAMPLES["rx-frame"])
CHANNEL = {1: 868_100_000, 2: 125_000, 3: [7]}


@pytest.mark.parametrize(
    ("items", "refused_by"),
    [
        pytest.param([10, 0, {}], BOTH, id="unknown type"),
        pytest.param([4, 0], BOTH, id="envelope of two items"),
        pytest.param([4, 1, RX_BODY], BOTH, id="event with a token"),
        pytest.param([5, 0, item("tx-request")[2]], BOTH, id="request with token 0"),
        pytest.param([7, 65_536, {}], BOTH, id="token above 16 bits"),
        pytest.param(item("rx-frame", k1=136_999_999), BOTH, id="frequency too low"),
        pytest.param(item("rx-frame", k2=13), BOTH, id="SF13"),
        pytest.param(item("rx-frame", k3=200_000), BOTH, id="bandwidth 200 kHz"),
        pytest.param(item("rx-frame", k5=-201), BOTH, id="RSSI below range"),
        pytest.param(item("rx-frame", k5=31), BOTH, id="RSSI above range"),
        pytest.param(item("rx-frame", k6=256), BOTH, id="SNR above range"),
        pytest.param(item("rx-frame", k6=9.25), BOTH, id="SNR as a float"),
        pytest.param(item("rx-frame", k8=2), BOTH, id="CRC status 2"),
        pytest.param(item("rx-frame", k9=b""), BOTH, id="empty payload"),
        pytest.param(item("rx-frame", k9=bytes(256)), BOTH, id="256-byte payload"),
        pytest.param(item("rx-frame", k10=None), BOTH, id="null for an absent field"),
        pytest.param(without("rx-frame", 9), BOTH, id="no payload"),
        pytest.param(without("tx-request", 1), BOTH, id="TX without timing"),
        pytest.param(item("tx-request", k6=37), BOTH, id="TX power 37 dBm"),
        pytest.param(item("tx-ack", k1=8), BOTH, id="TX error 8"),
        pytest.param(item("radio-config", k2="x" * 17), BOTH, id="17-byte region"),
        pytest.param(item("radio-config", k4=[]), BOTH, id="no channels"),
        pytest.param(item("radio-config", k4=[CHANNEL] * 33), BOTH, id="33 channels"),
        pytest.param(
            item("radio-config", k4=[CHANNEL | {2: 200_000}]), BOTH, id="channel bandwidth"
        ),
        pytest.param(item("radio-config", k4=[CHANNEL | {3: []}]), BOTH, id="channel no SF"),
        pytest.param(item("stats", k7=[0] * 6), BOTH, id="six TX error counters"),
        pytest.param(item("stats", k11=1251), BOTH, id="temperature above range"),
        pytest.param(item("error", k1=9), BOTH, id="error code 9"),
        pytest.param(item("error", k2="x" * 129), BOTH, id="129-byte error text"),
        pytest.param(item("error", k3=0), BOTH, id="ref type 0"),
        pytest.param(item("hello-concentrator", k3=bytes(7)), BOTH, id="7-byte EUI"),
        pytest.param(nested("hello-concentrator", (4, 8), [200_000]), BOTH, id="caps bandwidth"),
        # The cases pycddl 0.6.4 lets through (see the module docstring).
        pytest.param(item("rx-frame", k9="abc"), (ZCBOR,), id="payload as text"),
        pytest.param(item("hello-concentrator", k3="12345678"), (ZCBOR,), id="EUI as text"),
        pytest.param(item("rx-frame", k0=1), (ZCBOR,), id="key 0"),
        pytest.param([4, 0, RX_BODY | {"sf": 7}], (ZCBOR,), id="text key"),
        pytest.param(without("hello-concentrator", 4), (ZCBOR,), id="EUI without capabilities"),
    ],
)
def test_schema_refuses(items: list[object], refused_by: tuple[str, ...]) -> None:
    data = cbor.dumps(items)
    if ZCBOR in refused_by:
        with pytest.raises(zcbor.CddlValidationError):
            zcbor_message().validate_str(data)
    if PYCDDL in refused_by:
        with pytest.raises(pycddl.ValidationError):
            pycddl_schema().validate_cbor(data)
    # What the schema refuses, the decoder refuses too.
    with pytest.raises(SchemaError):
        decode_message(data)


def test_future_keys_pass_both_and_the_decoder() -> None:
    # Versioning: keys above the highest known are a later revision's; all three skip them.
    data = cbor.dumps([4, 0, RX_BODY | {12: "later", 40: [1, 2]}])
    validate_both(data)
    assert decode_message(data) == EXAMPLES["rx-frame"]
