"""docs/protocol/wired-v1.cddl against the encoder, with two independent CDDL validators.

zcbor 0.9 validates the schema file as written, against the top rule ``wired-message``.
pycddl 0.6.4 gets each message's own rule as its root (its choice between the two message
groups lets invalid messages through), and one rewrite: ``tstr .size (1..32)`` as a map key
makes it refuse every map, so names are plain ``tstr`` for it. Its other gap, as in the other
schemas: ``bstr .size 8`` lets an 8-byte text string pass. Each negative case names the
validators that must refuse it; whatever the schema refuses, the decoder refuses too.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pycddl
import pytest
import zcbor
from hypothesis import given, settings

from owlgate.codecs.node import cbor
from owlgate.codecs.node.wired import (
    GetStatus,
    Message,
    Nothing,
    Poll,
    Readings,
    Settings,
    SettingsAck,
    Status,
    WiredError,
    decode_message,
    encode_message,
)
from tests.codecs.cddl import BOTH, PYCDDL, ZCBOR, zcbor_cli_accepts
from tests.codecs.test_wired import EUI, messages
from tests.conftest import REPO

SPEC_PATH = REPO / "docs" / "protocol" / "wired-v1.cddl"
SPEC = SPEC_PATH.read_text()
ENTRY = "wired-message"
_NAME_RULE = "name = tstr .size (1..32)"

RULES: dict[type, str] = {
    Poll: "poll",
    Settings: "settings",
    GetStatus: "get-status",
    Readings: "readings",
    Nothing: "nothing",
    SettingsAck: "settings-ack",
    Status: "status",
}


def rule_of(message: Message) -> str:
    return RULES.get(type(message), "error")


@functools.cache
def zcbor_message() -> zcbor.DataTranslator:
    # default_max_qty bounds every "*" for zcbor; 64 is the most rows or entries here.
    return zcbor.DataTranslator.from_cddl(SPEC, 64).my_types[ENTRY]


def pycddl_text() -> str:
    assert _NAME_RULE in SPEC
    return SPEC.replace(_NAME_RULE, "name = tstr")


@functools.cache
def pycddl_rule(rule: str) -> pycddl.Schema:
    # pycddl validates against the first rule of a schema.
    return pycddl.Schema(f"root = {rule}\n{pycddl_text()}")


@settings(max_examples=200, deadline=None)
@given(messages)
def test_every_encoded_message_validates(message: Message) -> None:
    data = encode_message(message)
    zcbor_message().validate_str(data)
    pycddl_rule(rule_of(message)).validate_cbor(data)


def test_every_message_type_has_a_rule() -> None:
    for rule in [*RULES.values(), "error", "host-message", "node-message"]:
        assert f"\n{rule} = " in SPEC


def test_zcbor_command_line_accepts_a_poll_and_refuses_a_broken_one(tmp_path: Path) -> None:
    assert zcbor_cli_accepts(SPEC_PATH, ENTRY, encode_message(Poll(7, 3, 5)), tmp_path)
    assert not zcbor_cli_accepts(SPEC_PATH, ENTRY, cbor.dumps([1, 0, 3]), tmp_path)


ROW = [1, 0, {"t": 1}]


@pytest.mark.parametrize(
    ("rule", "items", "refused_by"),
    [
        pytest.param("poll", [1, 0, 0], BOTH, id="address 0"),
        pytest.param("poll", [1, 248, 0], BOTH, id="address 248"),
        pytest.param("poll", [1, 7, -1], BOTH, id="negative ack"),
        pytest.param("poll", [1, 7, 0, 1, 2], BOTH, id="poll of five items"),
        pytest.param("poll", [1, 7, 2**32], BOTH, id="ack beyond 32 bits"),
        pytest.param("settings", [2, 7, 0, {"a": 1}], BOTH, id="settings version 0"),
        pytest.param("settings", [2, 7, 1, {"a": "x"}], BOTH, id="text setting"),
        pytest.param("settings", [2, 7, 1, {1: 1}], BOTH, id="integer setting name"),
        pytest.param("settings", [2, 7, 1, {"": 1}], (ZCBOR,), id="empty setting name"),
        pytest.param("get-status", [3, 7, 1], BOTH, id="get status with a body"),
        pytest.param("readings", [17, 7, EUI, 0, True, []], BOTH, id="no readings"),
        pytest.param("readings", [17, 7, EUI, 0, True, [[0, 0, {}]]], BOTH, id="seq 0"),
        pytest.param("readings", [17, 7, EUI, 0, 1, [ROW]], BOTH, id="more as integer"),
        pytest.param("readings", [17, 7, EUI[:7], 0, True, [ROW]], BOTH, id="7-byte eui"),
        pytest.param("readings", [17, 7, EUI, 0, True, [[1, 0.5, {}]]], BOTH, id="float age"),
        pytest.param("readings", [17, 7, EUI, 0, True, [[1, 0, {"t": None}]]], BOTH, id="null"),
        pytest.param("nothing", [18, 7, "8 bytes!", 0], (ZCBOR,), id="8-byte text eui"),
        pytest.param("settings-ack", [19, 7, 0], BOTH, id="ack of version 0"),
        pytest.param("status", [20, 7, EUI, 0, 0, 0, 0, 0], BOTH, id="next seq 0"),
        pytest.param("error", [21, 7, 0, "x"], BOTH, id="error code 0"),
        pytest.param("error", [21, 7, 1, "x" * 65], BOTH, id="error text too long"),
    ],
)
def test_schema_refuses(rule: str, items: list[object], refused_by: tuple[str, ...]) -> None:
    data = cbor.dumps(items)
    if ZCBOR in refused_by:
        with pytest.raises(zcbor.CddlValidationError):
            zcbor_message().validate_str(data)
    if PYCDDL in refused_by:
        with pytest.raises(pycddl.ValidationError):
            pycddl_rule(rule).validate_cbor(data)
    # What the schema refuses, the decoder refuses too.
    with pytest.raises(WiredError):
        decode_message(data)
