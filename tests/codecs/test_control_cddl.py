"""docs/formats/control.cddl against the encoder, with two independent CDDL validators.

zcbor 0.9 and pycddl 0.6.4 both validate the schema file as written. pycddl's gaps here: as in
the other schemas, ``bstr .size N`` lets a text string of that size pass; and in the choice
``join-accepted / join-refused`` a map with the keys of both passes. Each negative case names
the validators that must refuse it; whatever the schema refuses, the decoder refuses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pycddl
import pytest
import zcbor
from hypothesis import given, settings

from owlgate.codecs.control import (
    JoinAnswer,
    JoinForward,
    SessionUpdate,
    decode_join_answer,
    decode_join_forward,
    decode_session_update,
    encode_join_answer,
    encode_join_forward,
    encode_session_update,
)
from owlgate.codecs.errors import SchemaError
from owlgate.codecs.node import cbor
from tests.codecs.cddl import BOTH, PYCDDL, ZCBOR, zcbor_cli_accepts
from tests.codecs.test_control import accepted, forwards, refused, updates
from tests.conftest import REPO

SPEC_PATH = REPO / "docs" / "formats" / "control.cddl"
SPEC = SPEC_PATH.read_text()
RULES = ("join-forward", "join-answer", "session-update")


@functools.cache
def zcbor_rule(rule: str) -> zcbor.DataTranslator:
    return zcbor.DataTranslator.from_cddl(SPEC, 10).my_types[rule]


@functools.cache
def pycddl_rule(rule: str) -> pycddl.Schema:
    # pycddl validates against the first rule of a schema.
    return pycddl.Schema(f"root = {rule}\n{SPEC}")


def validate_both(rule: str, data: bytes) -> None:
    zcbor_rule(rule).validate_str(data)
    pycddl_rule(rule).validate_cbor(data)
    # Every message is a control-message too.
    pycddl_rule("control-message").validate_cbor(data)


@settings(max_examples=60, deadline=None)
@given(forwards)
def test_every_join_forward_validates(message: JoinForward) -> None:
    validate_both("join-forward", encode_join_forward(message))


@settings(max_examples=60, deadline=None)
@given(accepted | refused)
def test_every_join_answer_validates(message: JoinAnswer) -> None:
    validate_both("join-answer", encode_join_answer(message))


@settings(max_examples=60, deadline=None)
@given(updates)
def test_every_session_update_validates(message: SessionUpdate) -> None:
    validate_both("session-update", encode_session_update(message))


def test_zcbor_command_line_accepts_an_update_and_refuses_a_broken_one(tmp_path: Path) -> None:
    good = encode_session_update(SessionUpdate([b"sealed"], complete=True))
    assert zcbor_cli_accepts(SPEC_PATH, "session-update", good, tmp_path)
    broken = cbor.dumps({5: [b"sealed"], 7: False})
    assert not zcbor_cli_accepts(SPEC_PATH, "session-update", broken, tmp_path)


P23 = bytes(23)
DECODERS: dict[str, Callable[[bytes], object]] = {
    "join-forward": decode_join_forward,
    "join-answer": decode_join_answer,
    "session-update": decode_session_update,
}


@pytest.mark.parametrize(
    ("rule", "content", "refused_by"),
    [
        pytest.param("join-forward", {1: 0, 2: P23, 3: 0}, BOTH, id="token 0"),
        pytest.param("join-forward", {1: 1, 2: bytes(22), 3: 0}, BOTH, id="22-byte request"),
        pytest.param("join-forward", {1: 1, 2: P23, 3: -1}, BOTH, id="negative time"),
        pytest.param("join-forward", {1: 1, 2: P23}, BOTH, id="no time"),
        pytest.param("join-forward", {1: 1, 2: P23, 3: 0, 9: 0}, BOTH, id="unknown key"),
        pytest.param("join-answer", {1: 1, 2: bytes(18), 3: b""}, BOTH, id="18-byte accept"),
        pytest.param("join-answer", {1: 1, 2: bytes(17)}, BOTH, id="accept without session"),
        pytest.param("join-answer", {1: 1, 4: b"why"}, BOTH, id="refusal as bytes"),
        pytest.param("session-update", {}, BOTH, id="no sessions"),
        pytest.param("session-update", {5: ["text"]}, BOTH, id="a session as text"),
        pytest.param("session-update", {5: [], 6: [bytes(9)]}, BOTH, id="9-byte DevEUI"),
        pytest.param("session-update", {5: [], 7: False}, BOTH, id="complete false"),
        pytest.param("session-update", {5: [], 8: True}, BOTH, id="unknown key 8"),
        # The case pycddl 0.6.4 lets through (see the module docstring).
        pytest.param("join-forward", {1: 1, 2: "t" * 23, 3: 0}, (ZCBOR,), id="request as text"),
        pytest.param(
            "join-answer", {1: 1, 2: bytes(17), 3: b"", 4: "x"}, (ZCBOR,), id="accept and refusal"
        ),
    ],
)
def test_schema_refuses(rule: str, content: object, refused_by: tuple[str, ...]) -> None:
    data = cbor.dumps(content)
    if ZCBOR in refused_by:
        with pytest.raises(zcbor.CddlValidationError):
            zcbor_rule(rule).validate_str(data)
    if PYCDDL in refused_by:
        with pytest.raises(pycddl.ValidationError):
            pycddl_rule(rule).validate_cbor(data)
    with pytest.raises(SchemaError):
        DECODERS[rule](data)
