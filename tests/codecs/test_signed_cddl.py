"""docs/formats/signed-document.cddl against the signer, with two independent CDDL validators.

zcbor 0.9 validates the schema file as written, ``.cbor`` controls included. pycddl 0.6.4 gets
these wrong:

- a ``.cbor`` control inside an array is checked against the wrong element (with
  ``[protected: bstr .cbor header, unprotected: {}, ...]`` it reports that the unprotected
  map is no byte string), so it is given the envelope with plain ``bstr`` in those places, and
  the protected header and the document payload are checked against their own rules as roots;
- ``{}`` accepts a map with entries, and ``.size`` does not check the type (a 7-byte byte
  string passes ``tstr .size (1..64)``, a text string ``bstr .size (1..64)``).

Each negative case below names the validators that must refuse it.
"""

from __future__ import annotations

import functools

import cbor2
import pycddl
import pytest
import zcbor
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.errors import CodecError
from owlgate.codecs.node import cbor
from owlgate.codecs.signed import ED25519, Document, sign, sign_document, verify
from tests.codecs.test_signed import KEY, by_hand, documents, telemetry
from tests.conftest import REPO

SPEC = (REPO / "docs" / "formats" / "signed-document.cddl").read_text()
TELEMETRY_SPEC = (REPO / "docs" / "formats" / "telemetry.cddl").read_text()
# pycddl's envelope: the same rules, without the .cbor controls it misapplies.
PYCDDL_SPEC = SPEC.replace("bstr .cbor protected-header", "bstr").replace(
    "bstr .cbor document", "bstr"
)


@functools.cache
def zcbor_rule(name: str) -> zcbor.DataTranslator:
    return zcbor.DataTranslator.from_cddl(SPEC, 10).my_types[name]


@functools.cache
def pycddl_rule(name: str, spec: str = PYCDDL_SPEC) -> pycddl.Schema:
    # pycddl validates against the first rule of a schema.
    return pycddl.Schema(f"root = {name}\n" + spec)


def validate_pycddl(message: bytes, entry: str) -> None:
    pycddl_rule(entry).validate_cbor(message)
    protected, _, payload, _ = cbor2.loads(message).value
    pycddl_rule("protected-header").validate_cbor(protected)
    if entry == "signed-document":
        pycddl_rule("document").validate_cbor(payload)


def validate_both(message: bytes, entry: str) -> None:
    zcbor_rule(entry).validate_str(message)
    validate_pycddl(message, entry)


def test_spec_replacement_for_pycddl_took_effect() -> None:
    assert ".cbor" in SPEC
    assert ".cbor" not in PYCDDL_SPEC.split("\n;", 1)[0]
    assert "protected: bstr," in PYCDDL_SPEC
    assert "payload: bstr," in PYCDDL_SPEC


@settings(max_examples=60, deadline=None)
@given(
    st.binary(max_size=300),
    st.none() | st.integers(0, 65535) | st.text(min_size=1, max_size=10),
    st.none() | st.binary(min_size=1, max_size=64),
    st.sampled_from([-8, ED25519]),
)
def test_every_signed_message_validates(
    payload: bytes, content_type: int | str | None, kid: bytes | None, alg: int
) -> None:
    validate_both(sign(payload, KEY, kid=kid, content_type=content_type, alg=alg), "signed-message")


@settings(max_examples=60, deadline=None)
@given(documents)
def test_every_signed_document_validates(doc: Document) -> None:
    validate_both(sign_document(doc, KEY), "signed-document")


def test_signed_telemetry_carries_a_valid_batch() -> None:
    message = sign(telemetry(), KEY)
    validate_both(message, "signed-message")
    batch = zcbor.DataTranslator.from_cddl(TELEMETRY_SPEC, 10).my_types["telemetry-batch"]
    batch.validate_str(verify(message, KEY.public_key()).payload)


ZCBOR = "zcbor"
PYCDDL = "pycddl"
BOTH = (ZCBOR, PYCDDL)
PROTECTED = {1: -8, 4: b"kid-0001"}
DOC = cbor2.loads(cbor.dumps({1: "gateway-config", 2: 7, 4: 1_760_000_000, 5: {}}))


def _doc(**changes: object) -> bytes:
    content = dict(DOC)
    for name, value in changes.items():
        key = {"kind": 1, "seq": 2, "target": 3, "issued_at": 4, "body": 5, "extra": 6}[name]
        if value is None:
            del content[key]
        else:
            content[key] = value
    return cbor.dumps(content)


@pytest.mark.parametrize(
    ("message", "entry", "refused_by"),
    [
        pytest.param(by_hand(PROTECTED, b"p", tag=17), "signed-message", BOTH, id="tag 17"),
        pytest.param(by_hand(PROTECTED, b"p", tag=None), "signed-message", BOTH, id="untagged"),
        pytest.param(by_hand(PROTECTED, None), "signed-message", BOTH, id="detached payload"),
        pytest.param(
            by_hand(PROTECTED, b"p", signature=bytes(63)), "signed-message", BOTH, id="63-byte sig"
        ),
        pytest.param(by_hand({1: -7, 4: b"k"}, b"p"), "signed-message", BOTH, id="alg -7"),
        pytest.param(by_hand({4: b"k"}, b"p"), "signed-message", BOTH, id="no alg"),
        pytest.param(by_hand({1: -8}, b"p"), "signed-message", BOTH, id="no kid"),
        pytest.param(by_hand({1: -8, 3: -1, 4: b"k"}, b"p"), "signed-message", BOTH, id="ct -1"),
        pytest.param(by_hand(PROTECTED, _doc(body=None)), "signed-document", BOTH, id="no body"),
        pytest.param(by_hand(PROTECTED, _doc(seq=-1)), "signed-document", BOTH, id="seq -1"),
        pytest.param(by_hand(PROTECTED, _doc(kind="")), "signed-document", BOTH, id="no kind"),
        pytest.param(by_hand(PROTECTED, _doc(extra=1)), "signed-document", BOTH, id="key 6"),
        pytest.param(
            by_hand(PROTECTED, _doc(target="")), "signed-document", BOTH, id="empty group"
        ),
        pytest.param(by_hand(PROTECTED, telemetry()), "signed-document", BOTH, id="a batch"),
        # The cases pycddl 0.6.4 lets through (see the module docstring).
        pytest.param(
            by_hand(PROTECTED, b"p", unprotected={4: b"k"}),
            "signed-message",
            (ZCBOR,),
            id="kid in the unprotected header",
        ),
        pytest.param(by_hand({1: -8, 4: "k"}, b"p"), "signed-message", (ZCBOR,), id="text kid"),
        pytest.param(
            by_hand(PROTECTED, _doc(target=bytes(7))),
            "signed-document",
            (ZCBOR,),
            id="7-byte gateway target",
        ),
    ],
)
def test_schema_refuses(message: bytes, entry: str, refused_by: tuple[str, ...]) -> None:
    if ZCBOR in refused_by:
        with pytest.raises(zcbor.CddlValidationError):
            zcbor_rule(entry).validate_str(message)
    if PYCDDL in refused_by:
        with pytest.raises(pycddl.ValidationError):
            validate_pycddl(message, entry)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(by_hand({1: -8, 4: b"k"}, b"p", tag=17), id="tag 17"),
        pytest.param(by_hand({1: -7, 4: b"k"}, b"p"), id="alg -7"),
        pytest.param(by_hand({4: b"k"}, b"p"), id="no alg"),
        pytest.param(by_hand({1: -8, 4: "k"}, b"p"), id="text kid"),
        pytest.param(by_hand(PROTECTED, None), id="detached"),
    ],
)
def test_what_the_schema_refuses_the_verifier_refuses(message: bytes) -> None:
    with pytest.raises(CodecError):
        verify(message, KEY.public_key())


def test_what_the_verifier_accepts_beyond_the_schema() -> None:
    # Interop latitude (signed-document.md): no kid at all, or a kid only in the unprotected
    # header, as other COSE libraries write them.
    for message, kid in (
        (by_hand({1: -8}, b"p"), None),
        (by_hand({1: -8}, b"p", unprotected={4: b"k"}), b"k"),
    ):
        with pytest.raises(zcbor.CddlValidationError):
            zcbor_rule("signed-message").validate_str(message)
        assert verify(message, KEY.public_key()).kid == kid
