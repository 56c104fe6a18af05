"""Offline key bundles: AppKeys reserved for one technician's laptop, sealed to its key.

A technician who will provision sensor modules where there is no network (a basement) first
fetches a bundle from the fleet (``POST /api/v1/provision/bundles``): ``count`` AppKeys, each
under a reservation id that only this technician may use, for one device profile, JoinEUI
and site. The bundle is sealed with HPKE (RFC 9180) in base mode to the laptop's X25519 key,
suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM, as device sessions are
(:mod:`owlgate.codecs.sealed`), so the keys exist in clear only in the fleet and in the
laptop's memory. Layout of the sealed bytes::

    offset  0         1        33
            version   enc      ciphertext (AES-128-GCM, tag included)
    bytes   1 (0x01)  32       len(plaintext) + 16

HPKE's ``info`` (RFC 9180 section 5.1) is :data:`INFO`, its own purpose string: a sealed
device session, or any other owlgate ciphertext, does not open as a bundle. The recipient's
public key is bound by the KEM itself (RFC 9180 section 4.1, ``kem_context``).

The plaintext is one deterministic CBOR map (RFC 8949 section 4.2.1) with integer keys;
the CDDL is ``docs/formats/bundle.cddl``::

    { 1: bundle id (tstr), 2: issued at (uint, s), 3: expires at (uint, s),
      4: profile id (tstr), 5: JoinEUI (bstr .size 8), ? 6: site (tstr),
      7: [+ [reservation id (uint), AppKey (bstr .size 16)]] }

The site is left out when there is none. Reservation ids are unique within a bundle and
listed in increasing order. A decoder refuses unknown keys and values of the wrong type
(:class:`~owlgate.codecs.errors.SchemaError`); a bundle that does not open (wrong laptop key,
tampered bytes) is a :class:`BundleSealError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .errors import CborError, SchemaError, SignatureError
from .node import cbor

FORMAT_VERSION = 1
INFO = b"owlgate/v1 key-bundle"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
_ENC_LEN = 32  # X25519 public key (RFC 9180 section 7.1, Nenc)
_TAG_LEN = 16
#: The most keys one bundle holds (the fleet's API caps requests at this too).
MAX_KEYS = 1000
MAX_TEXT = 200
_UINT64 = 1 << 64

KEY_BUNDLE_ID = 1
KEY_ISSUED_AT = 2
KEY_EXPIRES_AT = 3
KEY_PROFILE_ID = 4
KEY_JOIN_EUI = 5
KEY_SITE = 6
KEY_RESERVATIONS = 7
_REQUIRED = (
    KEY_BUNDLE_ID,
    KEY_ISSUED_AT,
    KEY_EXPIRES_AT,
    KEY_PROFILE_ID,
    KEY_JOIN_EUI,
    KEY_RESERVATIONS,
)
_KNOWN = frozenset((*_REQUIRED, KEY_SITE))


class BundleSealError(SignatureError):
    """A sealed bundle that does not open: another laptop's key, or tampered bytes."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """One reserved AppKey: the reservation id the fleet knows it by, and the key. The key
    never appears in ``repr``."""

    id: int
    app_key: bytes

    def __post_init__(self) -> None:
        _check_uint("reservation id", self.id)
        _check_bytes("app_key", self.app_key, 16)

    def __repr__(self) -> str:
        return f"Reservation(id={self.id}, app_key=<secret>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyBundle:
    """What a bundle holds; checked when built (:class:`SchemaError` naming the field)."""

    bundle_id: str
    issued_at: int
    expires_at: int
    profile_id: str
    join_eui: bytes
    site: str | None
    reservations: tuple[Reservation, ...]

    def __post_init__(self) -> None:
        _check_text("bundle_id", self.bundle_id)
        _check_text("profile_id", self.profile_id)
        if self.site is not None:
            _check_text("site", self.site)
        _check_uint("issued_at", self.issued_at)
        _check_uint("expires_at", self.expires_at)
        if self.expires_at <= self.issued_at:
            raise SchemaError(
                f"expires_at {self.expires_at} must be after issued_at {self.issued_at}"
            )
        _check_bytes("join_eui", self.join_eui, 8)
        if not isinstance(self.reservations, tuple) or not 1 <= len(self.reservations) <= MAX_KEYS:
            raise SchemaError(f"a bundle holds 1 .. {MAX_KEYS} reservations as a tuple")
        ids = [item.id for item in self.reservations]
        if ids != sorted(set(ids)):
            raise SchemaError("reservation ids must be unique and in increasing order")

    def __repr__(self) -> str:
        return (
            f"KeyBundle(bundle_id={self.bundle_id!r}, profile_id={self.profile_id!r}, "
            f"join_eui={self.join_eui.hex()}, site={self.site!r}, "
            f"reservations={len(self.reservations)}, keys=<secret>)"
        )


def _check_bytes(name: str, value: object, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        shown = len(value) if isinstance(value, bytes) else type(value).__name__
        raise SchemaError(f"{name} must be {length} bytes, got {shown}")


def _check_uint(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _UINT64:
        raise SchemaError(f"{name} must be an unsigned 64-bit integer, got {value!r}")


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT:
        raise SchemaError(f"{name} must be text of 1 .. {MAX_TEXT} characters, got {value!r}")


def encode_bundle(bundle: KeyBundle) -> bytes:
    """The bundle's plaintext: one deterministic CBOR map (see the module docstring)."""
    content: dict[int, object] = {
        KEY_BUNDLE_ID: bundle.bundle_id,
        KEY_ISSUED_AT: bundle.issued_at,
        KEY_EXPIRES_AT: bundle.expires_at,
        KEY_PROFILE_ID: bundle.profile_id,
        KEY_JOIN_EUI: bundle.join_eui,
        KEY_RESERVATIONS: [[item.id, item.app_key] for item in bundle.reservations],
    }
    if bundle.site is not None:
        content[KEY_SITE] = bundle.site
    return cbor.dumps(content)


def decode_bundle(data: bytes) -> KeyBundle:
    """The bundle in a plaintext :func:`encode_bundle` made; :class:`SchemaError` saying what
    is wrong otherwise."""
    try:
        content = cbor.loads(bytes(data))
    except CborError as err:
        raise SchemaError(f"bundle plaintext is not CBOR: {err.message}") from err
    if not isinstance(content, dict):
        raise SchemaError(f"a bundle is a CBOR map, got {type(content).__name__}")
    unknown = [key for key in content if key not in _KNOWN]
    if unknown:
        raise SchemaError(f"a bundle has the keys {sorted(_KNOWN)}, not {unknown!r}")
    missing = [key for key in _REQUIRED if key not in content]
    if missing:
        raise SchemaError(f"a bundle needs the keys {missing}")
    entries = content[KEY_RESERVATIONS]
    if not isinstance(entries, list):
        raise SchemaError("bundle key 7 (reservations) must be an array")
    reservations: list[Reservation] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, list) or len(entry) != 2:
            raise SchemaError(f"reservation {index} must be [id, app_key]")
        reservations.append(Reservation(entry[0], entry[1]))
    site = content.get(KEY_SITE)
    if KEY_SITE in content and not isinstance(site, str):
        raise SchemaError(f"bundle key 6 (site) must be text, got {type(site).__name__}")
    bundle_id = content[KEY_BUNDLE_ID]
    profile_id = content[KEY_PROFILE_ID]
    issued_at = content[KEY_ISSUED_AT]
    expires_at = content[KEY_EXPIRES_AT]
    join_eui = content[KEY_JOIN_EUI]
    if not (isinstance(bundle_id, str) and isinstance(profile_id, str)):
        raise SchemaError("bundle keys 1 (bundle id) and 4 (profile id) must be text")
    if not (isinstance(issued_at, int) and isinstance(expires_at, int)):
        raise SchemaError("bundle keys 2 and 3 (issued at, expires at) must be integers")
    if not isinstance(join_eui, bytes):
        raise SchemaError("bundle key 5 (JoinEUI) must be bytes")
    return KeyBundle(
        bundle_id=bundle_id,
        issued_at=issued_at,
        expires_at=expires_at,
        profile_id=profile_id,
        join_eui=join_eui,
        site=site if isinstance(site, str) else None,
        reservations=tuple(reservations),
    )


def _public(key: X25519PublicKey | bytes) -> X25519PublicKey:
    if isinstance(key, X25519PublicKey):
        return key
    _check_bytes("laptop X25519 public key", key, 32)
    return X25519PublicKey.from_public_bytes(key)


def seal_bundle(laptop_public: X25519PublicKey | bytes, bundle: KeyBundle) -> bytes:
    """Seal ``bundle`` to the laptop with this X25519 public key (object or 32 raw bytes)."""
    sealed = _SUITE.encrypt(encode_bundle(bundle), _public(laptop_public), INFO)
    return bytes((FORMAT_VERSION,)) + sealed


def open_bundle(laptop_private: X25519PrivateKey, data: bytes) -> KeyBundle:
    """Open a sealed bundle with the laptop's private key: :class:`BundleSealError` when it
    does not open, :class:`SchemaError` when what it holds is not a bundle."""
    data = bytes(data)
    if len(data) < 1 + _ENC_LEN + _TAG_LEN:
        raise BundleSealError(f"a sealed bundle is at least 49 bytes, got {len(data)}")
    if data[0] != FORMAT_VERSION:
        raise BundleSealError(f"sealed bundle version {data[0]} is not {FORMAT_VERSION}", 0)
    try:
        plaintext = _SUITE.decrypt(data[1:], laptop_private, INFO)
    except InvalidTag as err:
        raise BundleSealError(
            "the bundle does not open with this key (sealed to another laptop's key, or "
            "tampered): fetch a new bundle with this laptop's key"
        ) from err
    return decode_bundle(plaintext)


__all__ = [
    "FORMAT_VERSION",
    "INFO",
    "MAX_KEYS",
    "BundleSealError",
    "KeyBundle",
    "Reservation",
    "decode_bundle",
    "encode_bundle",
    "open_bundle",
    "seal_bundle",
]
