"""COSE_Sign1 with Ed25519: round trips, refusals, interop with pycose and cwt, documents."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from cwt import COSE, COSEKey
from cwt.exceptions import VerifyError
from hypothesis import given, settings
from hypothesis import strategies as st
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys.curves import Ed25519
from pycose.keys.okp import OKPKey
from pycose.messages.cosemessage import CoseMessage
from pycose.messages.sign1message import Sign1Message

from owlgate.codecs.errors import (
    CborError,
    CodecError,
    RollbackError,
    SchemaError,
    SignatureError,
)
from owlgate.codecs.node import cbor
from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch
from owlgate.codecs.signed import (
    ED25519,
    EDDSA,
    Document,
    Verified,
    check_sequence,
    decode_document,
    encode_document,
    key_id,
    sign,
    sign_document,
    unwrap,
    verify,
    verify_document,
)
from tests.conftest import REPO, typed_error_or_none

# RFC 8032 section 7.1, TEST 1: a published key, so examples and failures are reproducible.
SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
KEY = Ed25519PrivateKey.from_private_bytes(SECRET)
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
GATEWAY = bytes.fromhex("b827ebfffe6c1a2b")


def raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def telemetry() -> bytes:
    reading = Reading(bytes(8), 1_760_000_000, {"occupied": True, "battery_mv": 3600}, -100, 2.5)
    return encode_batch(Batch(GATEWAY, 1, 1_760_000_000, [reading]))


def by_hand(
    protected: Mapping[Any, object] | bytes,
    payload: object,
    *,
    unprotected: object = None,
    key: Ed25519PrivateKey = KEY,
    tag: int | None = 18,
    signature: object = None,
) -> bytes:
    """A COSE_Sign1 built with cbor2, correctly signed over whatever headers it is given.

    So a refusal of it is for the property under test, never for a bad signature.
    """
    protected_bytes = protected if isinstance(protected, bytes) else cbor2.dumps(protected)
    if signature is None:
        to_sign = cbor2.dumps(["Signature1", protected_bytes, b"", payload])
        signature = key.sign(to_sign)
    parts = [protected_bytes, {} if unprotected is None else unprotected, payload, signature]
    return cbor2.dumps(parts if tag is None else cbor2.CBORTag(tag, parts))


# --- key ids ----------------------------------------------------------------------------------


def test_key_id_is_the_first_8_bytes_of_sha256_of_the_raw_public_key() -> None:
    expected = hashlib.sha256(PUBLIC).digest()[:8]
    assert key_id(KEY) == key_id(KEY.public_key()) == key_id(PUBLIC) == expected
    assert key_id(OTHER) != expected
    with pytest.raises(TypeError):
        key_id(b"short")


# --- round trips ------------------------------------------------------------------------------

payloads = st.binary(max_size=300) | st.sampled_from([bytes(24), bytes(256), bytes(70_000)])
content_types = st.none() | st.integers(0, 65535) | st.text(min_size=1, max_size=30)
kids = st.none() | st.binary(min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(payloads, content_types, kids, st.sampled_from([EDDSA, ED25519]))
def test_sign_verify_round_trip(
    payload: bytes, content_type: int | str | None, kid: bytes | None, alg: int
) -> None:
    message = sign(payload, KEY, kid=kid, content_type=content_type, alg=alg)
    expected_kid = key_id(KEY) if kid is None else kid
    assert verify(message, KEY.public_key()) == Verified(payload, expected_kid, alg, content_type)
    # Deterministic CBOR and a deterministic signature scheme (RFC 8032): same input, same bytes.
    assert sign(payload, KEY, kid=kid, content_type=content_type, alg=alg) == message
    assert cbor.dumps(cbor.loads(message)) == message
    # The structure RFC 9052 section 4.2 defines, as an independent decoder sees it.
    protected: dict[int, object] = {1: alg, 4: expected_kid}
    if content_type is not None:
        protected[3] = content_type
    decoded = cbor2.loads(message)
    assert decoded.tag == 18
    assert decoded.value[:3] == [cbor2.dumps(protected, canonical=True), {}, payload]
    # The signature is over the Sig_structure of section 4.4, encoded by cbor2.
    to_sign = cbor2.dumps(["Signature1", decoded.value[0], b"", payload])
    KEY.public_key().verify(decoded.value[3], to_sign)
    found = unwrap(message)
    assert (found.payload, found.kid, found.alg, found.kid_protected) == (
        payload,
        expected_kid,
        alg,
        True,
    )


def test_signing_a_telemetry_batch_costs_85_bytes() -> None:
    # Tag and array head 2, protected header 13 (alg, 8-byte kid) + 1, empty unprotected 1,
    # payload head 2 (24..255 bytes), signature 66.
    batch = telemetry()
    assert 24 <= len(batch) < 256
    assert len(sign(batch, KEY)) - len(batch) == 85


def test_key_map_picks_the_key_by_kid() -> None:
    keys = {key_id(KEY): KEY.public_key(), key_id(OTHER): OTHER.public_key()}
    for signer in (KEY, OTHER):
        verified = verify(sign(b"rotation", signer), keys)
        assert verified.kid == key_id(signer)
    with pytest.raises(SignatureError, match="unknown key id"):
        verify(sign(b"x", KEY), {key_id(OTHER): OTHER.public_key()})
    no_kid = by_hand({1: -8}, b"x")
    with pytest.raises(SignatureError, match="names no key id"):
        verify(no_kid, keys)
    # One key given: the kid is not needed to choose it.
    assert verify(no_kid, KEY.public_key()).kid is None
    # A kid the signer chose (not derived from its key) picks the key it is mapped to.
    assert verify(sign(b"x", KEY, kid=b"fleet-2026"), {b"fleet-2026": KEY.public_key()}).kid


# --- refusals ---------------------------------------------------------------------------------


def test_wrong_key_is_refused_and_named() -> None:
    message = sign(b"payload", KEY)
    with pytest.raises(SignatureError, match="wrong key") as caught:
        verify(message, OTHER.public_key())
    assert key_id(KEY).hex() in caught.value.message
    assert key_id(OTHER).hex() in caught.value.message


def _spans(message: bytes) -> dict[str, range]:
    # Where the content of each part lies in a message sign() wrote (definite, shortest heads).
    parts = cbor2.loads(message).value
    protected, payload, signature = parts[0], parts[2], parts[3]
    start = 2 + len(cbor2.dumps(protected)) - len(protected)
    payload_start = message.index(payload, start + len(protected) + 1)
    return {
        "protected": range(start, start + len(protected)),
        "payload": range(payload_start, payload_start + len(payload)),
        "signature": range(len(message) - len(signature), len(message)),
    }


def test_every_single_bit_flip_is_refused() -> None:
    message = sign(telemetry(), KEY)
    spans = _spans(message)
    public = KEY.public_key()
    for at in range(len(message)):
        for bit in range(8):
            flipped = bytearray(message)
            flipped[at] ^= 1 << bit
            error = typed_error_or_none(CodecError, verify, bytes(flipped), public)
            assert error is not None, f"flip of bit {bit} at {at} verified"
            if at in spans["payload"] or at in spans["signature"]:
                assert isinstance(error, SignatureError), (at, bit, error)
            if at in spans["protected"]:
                # A changed kid or alg, or a header that no longer parses.
                assert isinstance(error, SignatureError | CborError | SchemaError)


def test_tampered_payload_and_protected_header_are_refused() -> None:
    message = sign(b"open the gate", KEY)
    tampered = message.replace(b"open the gate", b"open the GATE")
    with pytest.raises(SignatureError, match="bad signature"):
        verify(tampered, KEY.public_key())
    # The kid is protected: relabelling the message breaks the signature.
    relabelled = message.replace(key_id(KEY), key_id(OTHER))
    with pytest.raises(SignatureError, match="bad signature"):
        verify(relabelled, KEY.public_key())
    # Changing the algorithm within the accepted ones breaks it too (the header is signed).
    switched = message.replace(b"\xa2\x01\x27", b"\xa2\x01\x32")
    assert unwrap(switched).alg == ED25519
    with pytest.raises(SignatureError, match="bad signature"):
        verify(switched, KEY.public_key())


@pytest.mark.parametrize(
    ("protected", "unprotected", "words"),
    [
        pytest.param({1: -7, 4: b"k"}, None, "unsupported algorithm -7", id="ES256"),
        pytest.param({1: -35, 4: b"k"}, None, "unsupported algorithm -35", id="ES384"),
        pytest.param({1: -53, 4: b"k"}, None, "unsupported algorithm -53", id="Ed448"),
        pytest.param({1: "EdDSA", 4: b"k"}, None, "unsupported algorithm 'EdDSA'", id="text"),
        pytest.param({4: b"k"}, None, "no algorithm", id="missing alg"),
        pytest.param({4: b"k"}, {1: -8}, "must be protected", id="alg unprotected"),
        pytest.param({}, {1: -8}, "must be protected", id="empty protected"),
        pytest.param({1: -8, 2: [99], 99: 1}, None, "critical header 99", id="crit unknown"),
    ],
)
def test_algorithm_problems_are_signature_errors(
    protected: dict[object, object], unprotected: dict[object, object] | None, words: str
) -> None:
    message = by_hand(protected, b"payload", unprotected=unprotected)
    with pytest.raises(SignatureError) as caught:
        verify(message, KEY.public_key())
    assert words in caught.value.message


GOOD = {1: -8, 4: b"kid"}


@pytest.mark.parametrize(
    ("message", "error", "words"),
    [
        pytest.param(by_hand(GOOD, b"p", tag=None), SchemaError, "untagged", id="untagged"),
        pytest.param(by_hand(GOOD, b"p", tag=17), SchemaError, "tag 17 (COSE_Mac0)", id="mac0"),
        pytest.param(by_hand(GOOD, b"p", tag=98), SchemaError, "tag 98 (COSE_Sign)", id="sign"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"p"])), SchemaError, "[protected"),
        pytest.param(cbor2.dumps({1: 2}), SchemaError, "expected CBOR tag 18", id="map"),
        pytest.param(by_hand(GOOD, None), SchemaError, "detached payload", id="detached"),
        pytest.param(by_hand(GOOD, "text"), SchemaError, "payload must be a byte string"),
        pytest.param(by_hand(GOOD, b"p", signature="sig"), SchemaError, "signature must be"),
        pytest.param(
            cbor2.dumps(cbor2.CBORTag(18, [GOOD, {}, b"p", bytes(64)])),
            SchemaError,
            "protected header must be a byte string",
            id="protected as a map",
        ),
        pytest.param(by_hand(b"\x82\x01\x02", b"p"), SchemaError, "must be a CBOR map"),
        pytest.param(by_hand(b"\xa1\x01", b"p"), CborError, "protected header is not"),
        pytest.param(by_hand(b"\xa1\x01\x27\x00", b"p"), CborError, "protected header is not"),
        pytest.param(by_hand(GOOD, b"p", unprotected=[]), SchemaError, "unprotected header"),
        pytest.param(by_hand(GOOD, b"p", unprotected={4: b"x"}), SchemaError, "in both"),
        pytest.param(by_hand({1: -8}, b"p", unprotected={2: [4]}), SchemaError, "crit"),
        pytest.param(by_hand({1: -8, 2: []}, b"p"), SchemaError, "non-empty array"),
        pytest.param(by_hand({1: -8, 2: [3]}, b"p"), SchemaError, "not in the header"),
        pytest.param(by_hand({1: -8, 4: "kid"}, b"p"), SchemaError, "kid (4) must be a byte"),
        pytest.param(by_hand({1: -8, 3: -1}, b"p"), SchemaError, "content type"),
        pytest.param(by_hand({1: -8, 1.5: 0}, b"p"), SchemaError, "header label"),
        pytest.param(by_hand({1: True}, b"p"), SchemaError, "alg (1) must be"),
        pytest.param(sign(b"p", KEY) + b"\x00", CborError, "trailing", id="trailing byte"),
        pytest.param(sign(b"p", KEY)[:-1], CborError, "truncated", id="truncated"),
        pytest.param(b"", CborError, "truncated", id="empty"),
    ],
)
def test_malformed_structure_is_named(message: bytes, error: type[CodecError], words: str) -> None:
    for operation in (unwrap, lambda data: verify(data, KEY.public_key())):
        with pytest.raises(error) as caught:
            operation(message)
        assert type(caught.value) is error
        assert words in caught.value.message, caught.value.message


def test_short_signature_is_a_signature_error() -> None:
    message = by_hand(GOOD, b"p", signature=bytes(63))
    with pytest.raises(SignatureError, match="64 bytes, got 63"):
        verify(message, KEY.public_key())


def test_understood_critical_headers_verify() -> None:
    message = by_hand({1: -8, 2: [3], 3: "application/cbor", 4: key_id(KEY)}, b"p")
    assert verify(message, KEY.public_key()).content_type == "application/cbor"


def test_kid_in_the_unprotected_header_is_a_hint() -> None:
    message = by_hand({1: -8}, b"p", unprotected={4: key_id(KEY)})
    verified = verify(message, {key_id(KEY): KEY.public_key()})
    assert verified.kid == key_id(KEY)
    assert unwrap(message).kid_protected is False
    # Pointing the hint at another registered key gets a refusal, not a forged acceptance.
    redirected = by_hand({1: -8}, b"p", unprotected={4: key_id(OTHER)})
    with pytest.raises(SignatureError, match="bad signature"):
        verify(redirected, {key_id(OTHER): OTHER.public_key()})


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda: sign("text", KEY), SchemaError, id="text payload"),  # type: ignore[arg-type]
        pytest.param(lambda: sign(b"p", KEY, kid=b""), SchemaError, id="empty kid"),
        pytest.param(lambda: sign(b"p", KEY, alg=-7), SchemaError, id="alg -7"),
        pytest.param(lambda: sign(b"p", KEY, alg=-8.0), SchemaError, id="alg float"),  # type: ignore[arg-type]
        pytest.param(lambda: sign(b"p", KEY, content_type=-1), SchemaError, id="content type"),
        pytest.param(lambda: sign(b"p", KEY.public_key()), TypeError, id="public key"),  # type: ignore[arg-type]
        pytest.param(lambda: verify(sign(b"p", KEY), KEY), TypeError, id="private key"),  # type: ignore[arg-type]
    ],
)
def test_misuse_is_refused(call: object, error: type[Exception]) -> None:
    assert callable(call)
    with pytest.raises(error):
        call()


# --- arbitrary input --------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    typed_error_or_none(CodecError, verify, data, KEY.public_key())
    typed_error_or_none(CodecError, unwrap, data)
    typed_error_or_none(CodecError, decode_document, data)


cbor_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats()
    | st.binary(max_size=70)
    | st.text(max_size=5)
)
cbor_items = st.recursive(
    cbor_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(cbor_scalars, inner, max_size=4),
    max_leaves=12,
)
headers = st.dictionaries(
    st.sampled_from([1, 2, 3, 4, 5, "x", -1]),
    st.sampled_from([-8, -19, -7, b"kid", [3], [4], [], "t", 0, None]) | cbor_items,
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(
    headers.map(cbor2.dumps) | st.binary(max_size=12),
    headers | cbor_items,
    st.binary(max_size=20) | cbor_items,
    st.binary(min_size=63, max_size=65) | cbor_items,
    st.sampled_from([18, 18, 18, 17, None]),
)
def test_cose_lookalikes_raise_only_codec_errors(
    protected: bytes, unprotected: object, payload: object, signature: object, tag: int | None
) -> None:
    # Nearly COSE_Sign1: every part is plausible or arbitrary, never all of them right.
    parts = [protected, unprotected, payload, signature]
    data = cbor2.dumps(parts if tag is None else cbor2.CBORTag(tag, parts))
    error = typed_error_or_none(CodecError, verify, data, {key_id(KEY): KEY.public_key()})
    assert error is not None  # nothing here is signed by KEY
    typed_error_or_none(CodecError, unwrap, data)


# --- interop: pycose 1.1 and cwt --------------------------------------------------------------


def test_pycose_signs_and_we_verify() -> None:
    key = OKPKey(crv=Ed25519, d=raw_private(KEY), x=raw_public(KEY))
    payload = telemetry()
    message = Sign1Message(
        phdr={Algorithm: EdDSA, KID: key_id(KEY)}, payload=payload, key=key
    ).encode()
    verified = verify(message, {key_id(KEY): KEY.public_key()})
    assert verified == Verified(payload, key_id(KEY), EDDSA)
    with pytest.raises(SignatureError):
        verify(message, OTHER.public_key())


def test_we_sign_and_pycose_verifies() -> None:
    # pycose 1.1 registers EdDSA (-8) only, not -19: one reason owlgate emits -8.
    payload = telemetry()
    decoded = CoseMessage.decode(sign(payload, KEY))
    assert isinstance(decoded, Sign1Message)
    assert decoded.payload == payload
    assert decoded.phdr[KID] == key_id(KEY)
    decoded.key = OKPKey(crv=Ed25519, x=raw_public(KEY))
    assert decoded.verify_signature() is True
    decoded.key = OKPKey(crv=Ed25519, x=raw_public(OTHER))
    assert decoded.verify_signature() is False


def cwt_key(key: Ed25519PrivateKey, alg: int, *, private: bool, kid: bytes | None = None) -> object:
    kid = key_id(key) if kid is None else kid
    params: dict[int, object] = {1: 1, -1: 6, -2: raw_public(key), 3: alg, 2: kid}
    if private:
        params[-4] = raw_private(key)
    return COSEKey.new(params)


@pytest.mark.parametrize("alg", [EDDSA, ED25519])
@pytest.mark.parametrize("kid_place", ["protected", "unprotected"])
def test_cwt_signs_and_we_verify(alg: int, kid_place: str) -> None:
    payload = telemetry()
    context = COSE.new(
        alg_auto_inclusion=True,
        kid_auto_inclusion=kid_place == "unprotected",
        deterministic_header=True,
    )
    protected = {4: key_id(KEY)} if kid_place == "protected" else {}
    message = context.encode_and_sign(payload, cwt_key(KEY, alg, private=True), protected=protected)
    verified = verify(message, {key_id(KEY): KEY.public_key()})
    assert verified == Verified(payload, key_id(KEY), alg)
    assert unwrap(message).kid_protected is (kid_place == "protected")
    with pytest.raises(SignatureError):
        verify(message, OTHER.public_key())


@pytest.mark.parametrize("alg", [EDDSA, ED25519])
def test_we_sign_and_cwt_verifies(alg: int) -> None:
    payload = telemetry()
    message = sign(payload, KEY, alg=alg)
    context = COSE.new()
    protected, unprotected, decoded = context.decode_with_headers(
        message, cwt_key(KEY, alg, private=False)
    )
    assert decoded == payload
    assert protected == {1: alg, 4: key_id(KEY)}
    assert unprotected == {}
    # Another public key under the signer's kid: cwt tries it, and the signature fails.
    with pytest.raises(VerifyError):
        context.decode(message, cwt_key(OTHER, alg, private=False, kid=key_id(KEY)))


# --- documents --------------------------------------------------------------------------------

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)
documents = st.builds(
    Document,
    kind=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    seq=st.integers(0, 2**64 - 1),
    issued_at=st.integers(0, 2**64 - 1),
    body=json_like | st.binary(max_size=10),
    target=st.none() | st.binary(min_size=8, max_size=8) | st.text(min_size=1, max_size=16),
)


@settings(max_examples=150, deadline=None)
@given(documents)
def test_document_round_trip(doc: Document) -> None:
    data = encode_document(doc)
    assert decode_document(data) == doc
    decoded = cbor2.loads(data)
    assert decoded[1] == doc.kind
    assert decoded[2] == doc.seq
    assert decoded.get(3) == doc.target
    assert decoded[4] == doc.issued_at
    signed = sign_document(doc, KEY)
    verified = verify_document(signed, KEY.public_key(), kind=doc.kind)
    assert (verified.document, verified.kid, verified.alg) == (doc, key_id(KEY), EDDSA)


CONFIG = Document(
    kind="gateway-config",
    seq=42,
    issued_at=1_760_000_000,
    target=GATEWAY,
    body={"health_interval_s": 30, "region": "EU868"},
)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param([1, 2], "a document is a CBOR map", id="array"),
        pytest.param({1: "gateway-config", 2: 1, 4: 0}, "no body", id="no body"),
        pytest.param({1: "gateway-config", 4: 0, 5: {}}, "no seq", id="no seq"),
        pytest.param({2: 1, 4: 0, 5: {}}, "no kind", id="no kind"),
        pytest.param({1: "x", 2: 1, 4: 0, 5: {}, 6: 1}, "unknown document key 6", id="key 6"),
        pytest.param({1: "Config", 2: 1, 4: 0, 5: {}}, "document kind", id="uppercase kind"),
        pytest.param({1: "x", 2: -1, 4: 0, 5: {}}, "seq must be", id="negative seq"),
        pytest.param({1: "x", 2: True, 4: 0, 5: {}}, "seq must be", id="bool seq"),
        pytest.param({1: "x", 2: 1, 4: 1.5, 5: {}}, "issued_at", id="float time"),
        pytest.param({1: "x", 2: 1, 3: bytes(7), 4: 0, 5: {}}, "target", id="7-byte target"),
        pytest.param({1: "x", 2: 1, 3: "", 4: 0, 5: {}}, "target", id="empty group"),
        pytest.param({1: "x", 2: 1, 3: 5, 4: 0, 5: {}}, "target", id="int target"),
    ],
)
def test_document_schema_errors(content: object, words: str) -> None:
    with pytest.raises(SchemaError) as caught:
        decode_document(cbor.dumps(content))
    assert words in caught.value.message


def test_document_must_be_deterministic() -> None:
    data = encode_document(CONFIG)
    reordered = cbor2.dumps(dict(reversed(list(cbor2.loads(data).items()))))
    assert reordered != data
    with pytest.raises(CborError, match="deterministic"):
        decode_document(reordered)
    with pytest.raises(SchemaError):
        encode_document(Document(kind="x", seq=1, issued_at=0, body=object()))


def test_verify_document_checks_signature_and_kind() -> None:
    signed = sign_document(CONFIG, KEY)
    keys = {key_id(KEY): KEY.public_key()}
    assert verify_document(signed, keys).document == CONFIG
    with pytest.raises(SchemaError, match="'node-settings' was expected"):
        verify_document(signed, keys, kind="node-settings")
    with pytest.raises(SignatureError):
        verify_document(sign_document(CONFIG, OTHER), keys)
    # A validly signed payload that is no document.
    with pytest.raises(SchemaError, match="CBOR map"):
        verify_document(sign(telemetry(), KEY), keys)


def test_worked_example_of_the_docs_is_what_the_signer_writes() -> None:
    doc = (REPO / "docs" / "formats" / "signed-documents.md").read_text()
    block = doc.split("156 bytes:\n\n```\n", 1)[1].split("```", 1)[0]
    message = sign_document(CONFIG, KEY)
    assert bytes.fromhex(block.replace("\n", "")) == message
    assert key_id(KEY).hex() == "21fe31dfa154a261"
    assert f"kid `{key_id(KEY).hex()}`" in doc
    assert verify_document(message, {key_id(KEY): KEY.public_key()}).document == CONFIG


def test_check_sequence_refuses_rollback_and_replay() -> None:
    check_sequence(None, CONFIG)
    check_sequence(41, CONFIG)
    check_sequence(0, CONFIG)
    for last in (42, 43, 2**64 - 1):
        with pytest.raises(RollbackError) as caught:
            check_sequence(last, CONFIG)
        assert isinstance(caught.value, SignatureError)
        assert (caught.value.seq, caught.value.last_applied) == (42, last)
        expected = "equal to" if last == 42 else "below"
        assert f"seq 42 is {expected} the last applied seq {last}" in caught.value.message
