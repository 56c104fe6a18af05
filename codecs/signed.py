"""Signed messages and documents: COSE_Sign1 (RFC 9052) with Ed25519.

Gateways sign their telemetry batches and health messages with their own Ed25519 identity key;
the fleet signs configuration documents with its config signing key. Both use one envelope,
specified in ``docs/formats/signed-document.cddl``::

    18([                                   ; CBOR tag 18: COSE_Sign1
        h'a2 01 27 04 48 <kid>',           ; protected: {1: -8 (alg), 4: kid}, deterministic
        {},                                ; unprotected: empty
        h'<payload>',                      ; the signed bytes (a batch, a health message, ...)
        h'<64-byte Ed25519 signature>',
    ])

The signature is Ed25519 over ``["Signature1", protected, h'', payload]`` (RFC 9052 section
4.4; no external additional data). Choices, and why:

- **alg -8 (EdDSA) is emitted; -8 and -19 (Ed25519, RFC 9864) are accepted.** RFC 9864
  deprecates the polymorphic -8 in favour of -19, but the verifiers deployed today (pycose 1.1
  among them) only know -8. With an Ed25519 key pinned per signer, -8 is not ambiguous here:
  nothing but Ed25519 is ever verified. ``sign(..., alg=ED25519)`` writes -19, so moving over is
  a change of :data:`SIGN_ALG` once every verifier in the field accepts both (owlgate's do).
- **The kid is in the protected header**, so it is signed: a relabelled message does not
  verify. It is :func:`key_id` of the signer's public key unless the caller names another.
  A kid found in the unprotected header (where some libraries put it) is accepted as a hint
  for picking the key; the signature decides either way.
- **The tag is required.** RFC 9052 section 2 leaves tagging to the application; owlgate always
  writes tag 18 and refuses untagged or otherwise tagged items, so a COSE_Sign1 cannot be
  mistaken for another structure of the same shape (COSE_Mac0 is also a four-element array).
- **No detached payloads** (payload ``nil``): every owlgate message carries what it signs.
- **Critical headers** (label 2, RFC 9052 section 3.1) must be protected, and may name only
  the labels this module understands (1 alg, 3 content type, 4 kid); anything else is refused.
  owlgate never writes one.
- **Content type** (label 3) is written only when the caller asks: the MQTT topic already says
  what a message is, and every byte counts on a cellular backhaul.

Refusals: :class:`SignatureError` when the message does not verify (wrong key, bad or
truncated signature, tampered payload or protected header, unknown or missing alg, unknown
key id, critical header not understood); :class:`CborError` or :class:`SchemaError` when the
bytes are not a well-formed COSE_Sign1 (bad CBOR, wrong tag, wrong shape, header of the wrong
type, detached payload). Nothing else, whatever the input.

Documents (:class:`Document`) are the payload the fleet signs for configuration: a CBOR map
with integer keys, a kind, a monotonically increasing sequence number checked by
:func:`check_sequence` (anti-rollback, as in IETF SUIT, RFC 9124), an optional target, the
issue time and the body.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import CborError, RollbackError, SchemaError, SignatureError
from .node import cbor

COSE_SIGN1_TAG = 18  # RFC 9052 section 2, Table 1

# Header labels (RFC 9052 section 3.1, Table 3).
ALG = 1
CRIT = 2
CONTENT_TYPE = 3
KID = 4

# Algorithm identifiers (IANA COSE Algorithms registry).
EDDSA = -8  # RFC 9053 section 2.2: EdDSA, curve given by the key
ED25519 = -19  # RFC 9864 section 2.2: Ed25519, fully specified
ACCEPTED_ALGS = {EDDSA: "EdDSA", ED25519: "Ed25519"}
SIGN_ALG = EDDSA

KID_LENGTH = 8
SIGNATURE_LENGTH = 64  # RFC 8032 section 5.1.6
_UNDERSTOOD = frozenset((ALG, CRIT, CONTENT_TYPE, KID))
_U64_END = 1 << 64

Keys: TypeAlias = Ed25519PublicKey | Mapping[bytes, Ed25519PublicKey]


def _hex(data: bytes, limit: int = 24) -> str:
    text = data[:limit].hex()
    return text + "..." if len(data) > limit else text


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> bytes:
    """The key id of an Ed25519 key: the first 8 bytes of SHA-256 of the raw 32-byte public key.

    Both ends compute it from the key alone, so a fleet that registered a gateway's public key
    can find it by the kid of any message the gateway signs. Eight bytes make an accidental
    collision among a city's keys negligible (birthday bound near 2^32 keys); a collision could
    only make verification fail, never succeed with the wrong key.
    """
    if isinstance(public_key, Ed25519PrivateKey):
        raw = _raw_public(public_key.public_key())
    elif isinstance(public_key, Ed25519PublicKey):
        raw = _raw_public(public_key)
    elif isinstance(public_key, bytes | bytearray) and len(public_key) == 32:
        raw = bytes(public_key)
    else:
        raise TypeError(
            "key_id needs an Ed25519 key or its 32 raw public bytes, got "
            + type(public_key).__name__
        )
    return hashlib.sha256(raw).digest()[:KID_LENGTH]


# --- the envelope -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    """What a verified COSE_Sign1 carries: the payload bytes, and who signed it with what.

    ``kid`` is the key id the message names (``None`` when it names none), ``alg`` the
    algorithm identifier it was signed under (-8 or -19).
    """

    payload: bytes
    kid: bytes | None
    alg: int
    content_type: int | str | None = None


@dataclass(frozen=True, slots=True)
class Unverified:
    """A COSE_Sign1 taken apart without checking its signature (for people, not for trust).

    ``alg`` is whatever the protected header names, unchecked (``None`` when absent);
    ``protected`` the raw protected-header bytes, as signed; ``headers`` the protected and
    unprotected headers merged by label.
    """

    payload: bytes
    kid: bytes | None
    alg: int | str | None
    content_type: int | str | None
    signature: bytes
    protected: bytes
    headers: dict[object, object]
    kid_protected: bool


def _protected_header(alg: int, kid: bytes, content_type: int | str | None) -> bytes:
    header: dict[object, object] = {ALG: alg, KID: kid}
    if content_type is not None:
        header[CONTENT_TYPE] = content_type
    return cbor.dumps(header)


def _bstr_head(length: int) -> bytes:
    # The head of a byte string of that length (RFC 8949 section 3): the unsigned integer's
    # head with major type 0 turned into 2.
    head = cbor.dumps(length)
    return bytes((head[0] | 0x40,)) + head[1:]


def _to_be_signed(protected: bytes, payload: bytes) -> bytes:
    # Sig_structure (RFC 9052 section 4.4): ["Signature1", protected, external_aad, payload],
    # with an empty external_aad. Written directly rather than through cbor.dumps, which would
    # walk the payload once more; the tests compare both.
    return b"".join(
        (
            b"\x84\x6aSignature1",
            _bstr_head(len(protected)),
            protected,
            b"\x40",
            _bstr_head(len(payload)),
            payload,
        )
    )


def _check_content_type(content_type: object) -> int | str | None:
    # RFC 9052 section 3.1: content type is a uint (CoAP Content-Format) or a tstr (media type).
    if content_type is None or isinstance(content_type, str):
        return content_type
    if type(content_type) is int and 0 <= content_type < 0x10000:
        return content_type
    raise SchemaError(
        "content type must be a CoAP Content-Format number 0..65535 or a media type string, "
        "got " + repr(content_type)
    )


def sign(
    payload: bytes,
    private_key: Ed25519PrivateKey,
    *,
    kid: bytes | None = None,
    content_type: int | str | None = None,
    alg: int = SIGN_ALG,
) -> bytes:
    """Sign ``payload`` as a tagged COSE_Sign1 with Ed25519; return the message bytes.

    ``kid`` defaults to :func:`key_id` of the key; ``alg`` is -8 (EdDSA, the default) or -19
    (Ed25519). The message is deterministic CBOR, and Ed25519 signatures are deterministic
    (RFC 8032), so the same payload and key always give the same bytes.
    """
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError("sign needs an Ed25519PrivateKey, got " + type(private_key).__name__)
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise SchemaError("the payload must be bytes, got " + type(payload).__name__)
    # type() rather than isinstance: True and -8.0 compare equal to integers.
    if type(alg) is not int or alg not in ACCEPTED_ALGS:
        raise SchemaError("alg must be -8 (EdDSA) or -19 (Ed25519), got " + repr(alg))
    if kid is None:
        kid = key_id(private_key)
    elif not isinstance(kid, bytes | bytearray) or not kid:
        raise SchemaError("kid must be a non-empty byte string, got " + repr(kid))
    body = bytes(payload)
    protected = _protected_header(alg, bytes(kid), _check_content_type(content_type))
    signature = private_key.sign(_to_be_signed(protected, body))
    return b"".join(
        (
            b"\xd2\x84",  # tag 18, array of 4
            _bstr_head(len(protected)),
            protected,
            b"\xa0",  # unprotected: empty map
            _bstr_head(len(body)),
            body,
            b"\x58\x40",  # byte string of 64
            signature,
        )
    )


def _label_ok(label: object) -> bool:
    # RFC 9052 section 3: label = int / tstr.
    return isinstance(label, str) or (isinstance(label, int) and not isinstance(label, bool))


def _header_map(value: object, what: str) -> dict[object, object]:
    if not isinstance(value, dict):
        raise SchemaError("the " + what + " header must be a CBOR map, got " + type(value).__name__)
    for label in value:
        if not _label_ok(label):
            raise SchemaError("a header label must be an integer or text, got " + repr(label))
    return value


def _protected_map(protected: object) -> tuple[bytes, dict[object, object]]:
    if not isinstance(protected, bytes):
        raise SchemaError(
            "the protected header must be a byte string (a serialised map), got "
            + type(protected).__name__
        )
    # RFC 9052 section 3: an empty protected header is the zero-length byte string.
    if not protected:
        return protected, {}
    decoded = None
    failed = ""
    try:
        decoded = cbor.loads(protected)
    except CborError as err:
        failed = err.message
    if failed:
        raise CborError("the protected header is not one CBOR item: " + failed)
    return protected, _header_map(decoded, "protected")


def _check_headers(
    protected: dict[object, object], unprotected: dict[object, object]
) -> tuple[bytes | None, bool]:
    # Checks the header rules of RFC 9052 section 3; returns the kid and where it was.
    both = [label for label in protected if label in unprotected]
    if both:
        raise SchemaError(
            "header label "
            + repr(both[0])
            + " is in both the protected and the unprotected header (RFC 9052 section 3)"
        )
    if CRIT in unprotected:
        raise SchemaError("the crit header (2) must be protected (RFC 9052 section 3.1)")
    if CRIT in protected:
        crit = protected[CRIT]
        if not isinstance(crit, list) or not crit or not all(_label_ok(item) for item in crit):
            raise SchemaError("crit (2) must be a non-empty array of labels, got " + repr(crit))
        for label in crit:
            if label not in protected:
                raise SchemaError("critical header " + repr(label) + " is not in the header")
    if ALG in protected:
        alg = protected[ALG]
        if not _label_ok(alg):
            raise SchemaError("alg (1) must be an integer or text, got " + repr(alg))
    content_type = protected.get(CONTENT_TYPE, unprotected.get(CONTENT_TYPE))
    if content_type is not None and not (
        isinstance(content_type, str) or (type(content_type) is int and content_type >= 0)
    ):
        raise SchemaError("content type (3) must be a uint or text, got " + repr(content_type))
    kid = protected.get(KID, unprotected.get(KID))
    if kid is not None and not isinstance(kid, bytes):
        raise SchemaError("kid (4) must be a byte string, got " + repr(kid))
    return kid, KID in protected


def unwrap(data: bytes) -> Unverified:
    """Take a tagged COSE_Sign1 apart WITHOUT verifying it: for describing, never for trust.

    Checks the structure and header types (CborError, SchemaError); leaves algorithm, key and
    signature to :func:`verify`.
    """
    item = cbor.loads(bytes(data))
    if not isinstance(item, cbor.Tag):
        if isinstance(item, list) and len(item) == 4 and isinstance(item[0], bytes):
            raise SchemaError(
                "an untagged COSE_Sign1: owlgate requires CBOR tag 18 (RFC 9052 section 2)", 0
            )
        raise SchemaError(
            "not a COSE_Sign1: expected CBOR tag 18, got "
            + type(item).__name__
            + " "
            + _show(item),
            0,
        )
    if item.tag != COSE_SIGN1_TAG:
        raise SchemaError(
            "not a COSE_Sign1: CBOR tag "
            + str(item.tag)
            + _tag_name(item.tag)
            + ", expected tag 18 (RFC 9052 section 2)",
            0,
        )
    parts = item.value
    if not isinstance(parts, list) or len(parts) != 4:
        raise SchemaError(
            "a COSE_Sign1 is [protected, unprotected, payload, signature], got " + _show(parts), 0
        )
    protected_bytes, unprotected_value, payload, signature = parts
    protected_bytes, protected = _protected_map(protected_bytes)
    unprotected = _header_map(unprotected_value, "unprotected")
    kid, kid_protected = _check_headers(protected, unprotected)
    if payload is None:
        raise SchemaError("detached payload (nil): owlgate messages carry their payload")
    if not isinstance(payload, bytes):
        raise SchemaError("the payload must be a byte string, got " + type(payload).__name__)
    if not isinstance(signature, bytes):
        raise SchemaError("the signature must be a byte string, got " + type(signature).__name__)
    content_type = protected.get(CONTENT_TYPE, unprotected.get(CONTENT_TYPE))
    alg = protected.get(ALG)
    return Unverified(
        payload=payload,
        kid=kid,
        alg=alg if isinstance(alg, int | str) else None,
        content_type=content_type if isinstance(content_type, int | str) else None,
        signature=signature,
        protected=protected_bytes,
        headers={**protected, **unprotected},
        kid_protected=kid_protected,
    )


_TAG_NAMES = {
    16: "COSE_Encrypt0",
    17: "COSE_Mac0",
    96: "COSE_Encrypt",
    97: "COSE_Mac",
    98: "COSE_Sign",
}


def _tag_name(tag: int) -> str:
    name = _TAG_NAMES.get(tag)
    return " (" + name + ")" if name else ""


def _show(item: object) -> str:
    # The CBOR of a decoded item, in hex (anything cbor.loads returns re-encodes).
    return _hex(cbor.dumps(item))


def _pick_key(keys: Keys, kid: bytes | None) -> Ed25519PublicKey:
    if isinstance(keys, Ed25519PublicKey):
        return keys
    if not isinstance(keys, Mapping):
        raise TypeError(
            "keys must be an Ed25519PublicKey or a mapping kid -> key, got " + type(keys).__name__
        )
    if kid is None:
        raise SignatureError("the message names no key id (kid), so no key can be chosen for it")
    key = keys.get(kid)
    if key is None:
        raise SignatureError(
            "unknown key id "
            + kid.hex()
            + "; known: "
            + (", ".join(sorted(bytes(known).hex() for known in keys)) or "none")
        )
    if not isinstance(key, Ed25519PublicKey):
        raise TypeError("the key for kid " + kid.hex() + " is not an Ed25519PublicKey")
    return key


def verify(data: bytes, keys: Keys) -> Verified:
    """Verify a tagged COSE_Sign1 signed with Ed25519; return its payload, kid and alg.

    ``keys`` is the one public key to verify with, or a mapping kid -> public key (the fleet
    keeps its current and its next key, for rotation): then the message's kid picks the key,
    and a message without a kid, or with a kid not in the mapping, is refused.
    """
    message = unwrap(data)
    alg = message.alg
    if alg is None:
        if ALG in message.headers:
            raise SignatureError(
                "alg (1) is in the unprotected header; it must be protected (RFC 9052 section 3.1)"
            )
        raise SignatureError("no algorithm: the protected header has no alg (1)")
    if not isinstance(alg, int) or alg not in ACCEPTED_ALGS:
        raise SignatureError(
            "unsupported algorithm " + repr(alg) + "; accepted: -8 (EdDSA), -19 (Ed25519)"
        )
    # RFC 9052 section 3.1: a recipient that does not understand a critical header refuses
    # the message.
    crit = message.headers.get(CRIT)
    for label in crit if isinstance(crit, list) else ():
        if label not in _UNDERSTOOD:
            raise SignatureError(
                "critical header " + repr(label) + " is not understood by this verifier"
            )
    key = _pick_key(keys, message.kid)
    if len(message.signature) != SIGNATURE_LENGTH:
        raise SignatureError("an Ed25519 signature is 64 bytes, got " + str(len(message.signature)))
    failed = False
    try:
        key.verify(message.signature, _to_be_signed(message.protected, message.payload))
    except InvalidSignature:
        failed = True
    if failed:
        raise SignatureError(_bad_signature(message.kid, key))
    return Verified(message.payload, message.kid, alg, message.content_type)


def _bad_signature(kid: bytes | None, key: Ed25519PublicKey) -> str:
    tried = key_id(key)
    if kid is not None and kid != tried:
        return (
            "bad signature: the message names key id "
            + kid.hex()
            + " but was checked with key id "
            + tried.hex()
            + " (wrong key?)"
        )
    return "bad signature: the message was altered or not signed by key id " + tried.hex()


# --- documents --------------------------------------------------------------------------------

# Document map keys. Small integers: one byte each (RFC 8949 section 3).
DOC_KIND = 1
DOC_SEQ = 2
DOC_TARGET = 3
DOC_ISSUED_AT = 4
DOC_BODY = 5
_DOC_KEYS = {
    DOC_KIND: "kind",
    DOC_SEQ: "seq",
    DOC_TARGET: "target",
    DOC_ISSUED_AT: "issued_at",
    DOC_BODY: "body",
}
_KIND = re.compile(r"[a-z][a-z0-9-]{0,63}")
EUI64_LENGTH = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    """A signed document's payload: what the fleet sends to gateways (configuration).

    ``kind`` names the body's schema (lowercase letters, digits, hyphens: ``gateway-config``);
    ``seq`` increases with every document of a kind a gateway is sent, and a gateway refuses
    one not above the last it applied (:func:`check_sequence`); ``target`` is a gateway id
    (8 bytes, EUI-64), a group name (text), or ``None`` for every gateway; ``issued_at`` is UTC
    seconds since the epoch; ``body`` any CBOR-representable value, usually a map.
    """

    kind: str
    seq: int
    target: bytes | str | None = None
    issued_at: int
    body: object


def _u64(value: object, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64_END:
        return value
    raise SchemaError(what + " must be an integer 0 .. 2**64-1, got " + repr(value))


def _check_kind(kind: object) -> str:
    if isinstance(kind, str) and _KIND.fullmatch(kind):
        return kind
    raise SchemaError(
        "document kind must be 1..64 lowercase letters, digits or hyphens, starting with a "
        "letter, got " + repr(kind)
    )


def _check_target(target: object) -> bytes | str | None:
    if target is None:
        return None
    if isinstance(target, bytes) and len(target) == EUI64_LENGTH:
        return target
    if isinstance(target, str) and 0 < len(target.encode()) <= 64:
        return target
    raise SchemaError(
        "document target must be a gateway id (8 bytes), a group name (1..64 bytes of text) "
        "or None, got " + repr(target)
    )


def encode_document(doc: Document) -> bytes:
    """The deterministic CBOR of ``doc`` (the payload :func:`sign_document` signs)."""
    if not isinstance(doc, Document):
        raise SchemaError("encode_document needs a Document, got " + type(doc).__name__)
    content: dict[object, object] = {
        DOC_KIND: _check_kind(doc.kind),
        DOC_SEQ: _u64(doc.seq, "seq"),
        DOC_ISSUED_AT: _u64(doc.issued_at, "issued_at"),
        DOC_BODY: doc.body,
    }
    target = _check_target(doc.target)
    if target is not None:
        content[DOC_TARGET] = target
    failed = ""
    try:
        return cbor.dumps(content)
    except CborError as err:
        failed = err.message
    raise SchemaError("the document body cannot be carried in CBOR: " + failed)


def decode_document(data: bytes) -> Document:
    """Decode a document payload; only the bytes :func:`encode_document` writes are accepted.

    CborError for bytes that are not one deterministic CBOR item, SchemaError for a map that
    is not a document (missing or unknown keys, values of the wrong type).
    """
    raw = bytes(data)
    content = cbor.loads(raw)
    if cbor.dumps(content) != raw:
        raise CborError("a document must be deterministic CBOR (RFC 8949 section 4.2.1)")
    if not isinstance(content, dict):
        raise SchemaError("a document is a CBOR map, got " + type(content).__name__, 0)
    for key in content:
        if key not in _DOC_KEYS:
            raise SchemaError(
                "unknown document key " + repr(key) + "; known: 1 kind, 2 seq, 3 target, "
                "4 issued_at, 5 body"
            )
    for key, name in _DOC_KEYS.items():
        if key != DOC_TARGET and key not in content:
            raise SchemaError("the document has no " + name + " (key " + str(key) + ")")
    return Document(
        kind=_check_kind(content[DOC_KIND]),
        seq=_u64(content[DOC_SEQ], "seq"),
        issued_at=_u64(content[DOC_ISSUED_AT], "issued_at"),
        body=content[DOC_BODY],
        target=_check_target(content.get(DOC_TARGET)),
    )


def sign_document(
    doc: Document, private_key: Ed25519PrivateKey, *, kid: bytes | None = None
) -> bytes:
    """Encode ``doc`` and sign it (COSE_Sign1, Ed25519) with the fleet's key."""
    return sign(encode_document(doc), private_key, kid=kid)


@dataclass(frozen=True, slots=True)
class VerifiedDocument:
    """A document whose signature verified, with the key id and algorithm it was signed under."""

    document: Document
    kid: bytes | None
    alg: int


def verify_document(data: bytes, keys: Keys, *, kind: str | None = None) -> VerifiedDocument:
    """Verify a signed document and decode it; with ``kind``, refuse documents of another kind.

    The signature is checked before the payload is decoded, so nothing unsigned is parsed
    beyond the envelope. The sequence number is the caller's to check, against its own state,
    with :func:`check_sequence`.
    """
    verified = verify(data, keys)
    doc = decode_document(verified.payload)
    if kind is not None and doc.kind != kind:
        raise SchemaError("a " + repr(doc.kind) + " document where " + repr(kind) + " was expected")
    return VerifiedDocument(doc, verified.kid, verified.alg)


def check_sequence(last_applied: int | None, doc: Document) -> None:
    """Refuse ``doc`` unless its ``seq`` is above ``last_applied`` (None: nothing applied yet).

    Raises :class:`RollbackError` (a :class:`SignatureError`): an older or repeated document,
    even validly signed, must not replace a newer one (RFC 9124, REQ.SEC.SEQUENCE).
    """
    if last_applied is not None and doc.seq <= last_applied:
        relation = "equal to" if doc.seq == last_applied else "below"
        raise RollbackError(
            "document seq "
            + str(doc.seq)
            + " is "
            + relation
            + " the last applied seq "
            + str(last_applied)
            + ": refused (rollback or replay)",
            doc.seq,
            last_applied,
        )
