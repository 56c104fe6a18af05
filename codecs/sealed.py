"""Device sessions sealed to one gateway: how the fleet hands LoRaWAN session keys to a gateway.

A gateway needs a device's NwkSKey (to check MICs) and AppSKey (to decrypt payloads). The
fleet sends them on the gateway's ``keys`` topic sealed with HPKE (RFC 9180) in base mode to
the gateway's X25519 sealing key, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
AES-128-GCM. Only the holder of that gateway's private key can open it, and the broker sees
nothing but ciphertext. Layout of the sealed bytes::

    offset  0         1        33
            version   enc      ciphertext (AES-128-GCM, tag included)
    bytes   1 (0x01)  32       len(plaintext) + 16

The plaintext is a deterministic CBOR map with integer keys (:data:`KEYS`):

    {1: dev_eui (8 bytes), 2: dev_addr (uint32), 3: nwk_s_key (16 bytes),
     4: app_s_key (16 bytes), 5: profile_id (text), 6: f_cnt_up (uint32)}

HPKE's ``info`` (RFC 9180 section 5.1) binds the purpose and the gateway's EUI-64, so a
sealed session copied to another gateway's topic fails to open even if that gateway somehow
had the key, and a ciphertext made for another owlgate purpose cannot be passed off as this.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .errors import CborError, SignatureError
from .node import cbor

FORMAT_VERSION = 1
INFO_PREFIX = b"owlgate/v1 device-session gw="
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
_ENC_LEN = 32  # X25519 public key (RFC 9180 section 7.1, Nenc)
_TAG_LEN = 16

KEY_DEV_EUI = 1
KEY_DEV_ADDR = 2
KEY_NWK_S_KEY = 3
KEY_APP_S_KEY = 4
KEY_PROFILE_ID = 5
KEY_F_CNT_UP = 6
KEYS = (KEY_DEV_EUI, KEY_DEV_ADDR, KEY_NWK_S_KEY, KEY_APP_S_KEY, KEY_PROFILE_ID, KEY_F_CNT_UP)


class SealedError(SignatureError):
    """A sealed session that does not open: wrong gateway key, other gateway, or tampered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSession:
    """A device's LoRaWAN 1.0.x session as a gateway needs it. Keys never appear in ``repr``."""

    dev_eui: bytes
    dev_addr: int
    nwk_s_key: bytes
    app_s_key: bytes
    profile_id: str
    f_cnt_up: int = 0

    def __post_init__(self) -> None:
        _check_bytes("dev_eui", self.dev_eui, 8)
        _check_bytes("nwk_s_key", self.nwk_s_key, 16)
        _check_bytes("app_s_key", self.app_s_key, 16)
        _check_uint("dev_addr", self.dev_addr)
        _check_uint("f_cnt_up", self.f_cnt_up)
        if not isinstance(self.profile_id, str) or not self.profile_id:
            raise SealedError(f"profile_id must be non-empty text, got {self.profile_id!r}")

    def __repr__(self) -> str:
        return (
            f"DeviceSession(dev_eui={self.dev_eui.hex()}, dev_addr={self.dev_addr:08x}, "
            f"profile_id={self.profile_id!r}, f_cnt_up={self.f_cnt_up}, keys=<secret>)"
        )


def _check_bytes(name: str, value: object, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        shown = len(value) if isinstance(value, bytes) else type(value).__name__
        raise SealedError(f"{name} must be {length} bytes, got {shown}")


def _check_uint(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise SealedError(f"{name} must be an integer 0 .. 2**32-1, got {value!r}")


def info_for(gateway_id: bytes) -> bytes:
    """The HPKE ``info`` for sessions sealed to the gateway ``gateway_id`` (its EUI-64)."""
    _check_bytes("gateway_id", gateway_id, 8)
    return INFO_PREFIX + gateway_id


def _public(key: X25519PublicKey | bytes) -> X25519PublicKey:
    if isinstance(key, X25519PublicKey):
        return key
    _check_bytes("gateway X25519 public key", key, 32)
    return X25519PublicKey.from_public_bytes(key)


def seal_session(
    gateway_public: X25519PublicKey | bytes, gateway_id: bytes, session: DeviceSession
) -> bytes:
    """Seal ``session`` to the gateway with this X25519 public key (object or 32 raw bytes)."""
    plaintext = cbor.dumps(
        {
            KEY_DEV_EUI: session.dev_eui,
            KEY_DEV_ADDR: session.dev_addr,
            KEY_NWK_S_KEY: session.nwk_s_key,
            KEY_APP_S_KEY: session.app_s_key,
            KEY_PROFILE_ID: session.profile_id,
            KEY_F_CNT_UP: session.f_cnt_up,
        }
    )
    sealed = _SUITE.encrypt(plaintext, _public(gateway_public), info_for(gateway_id))
    return bytes((FORMAT_VERSION,)) + sealed


def open_session(
    gateway_private: X25519PrivateKey, gateway_id: bytes, data: bytes
) -> DeviceSession:
    """Open a sealed session with the gateway's private key; :class:`SealedError` otherwise."""
    data = bytes(data)
    if len(data) < 1 + _ENC_LEN + _TAG_LEN:
        raise SealedError(f"a sealed session is at least 49 bytes, got {len(data)}")
    if data[0] != FORMAT_VERSION:
        raise SealedError(f"sealed session version {data[0]} is not {FORMAT_VERSION}", 0)
    try:
        plaintext = _SUITE.decrypt(data[1:], gateway_private, info_for(gateway_id))
    except InvalidTag as err:
        raise SealedError(
            "sealed session does not open with this gateway's key (wrong key, another "
            "gateway's session, or tampered)"
        ) from err
    try:
        content = cbor.loads(plaintext)
    except CborError as err:
        raise SealedError(f"sealed session plaintext is not CBOR: {err.message}") from err
    if not isinstance(content, dict) or sorted(content, key=str) != sorted(KEYS, key=str):
        raise SealedError(f"sealed session map must have exactly the keys {list(KEYS)}")
    dev_eui = content[KEY_DEV_EUI]
    nwk_s_key = content[KEY_NWK_S_KEY]
    app_s_key = content[KEY_APP_S_KEY]
    dev_addr = content[KEY_DEV_ADDR]
    profile_id = content[KEY_PROFILE_ID]
    f_cnt_up = content[KEY_F_CNT_UP]
    if not (
        isinstance(dev_eui, bytes)
        and isinstance(nwk_s_key, bytes)
        and isinstance(app_s_key, bytes)
        and isinstance(dev_addr, int)
        and isinstance(profile_id, str)
        and isinstance(f_cnt_up, int)
    ):
        raise SealedError("sealed session map has a value of the wrong type")
    return DeviceSession(
        dev_eui=dev_eui,
        dev_addr=dev_addr,
        nwk_s_key=nwk_s_key,
        app_s_key=app_s_key,
        profile_id=profile_id,
        f_cnt_up=f_cnt_up,
    )
