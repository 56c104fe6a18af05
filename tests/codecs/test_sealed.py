"""Device sessions sealed to a gateway (HPKE, RFC 9180): round trip, wrong key, tampering."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.errors import SignatureError
from owlgate.codecs.node import cbor
from owlgate.codecs.sealed import (
    FORMAT_VERSION,
    INFO_PREFIX,
    DeviceSession,
    SealedError,
    open_session,
    seal_session,
)

GW = bytes.fromhex("b827ebfffe000001")
OTHER_GW = bytes.fromhex("b827ebfffe000002")
NWK = bytes(range(16))
APP = bytes(range(16, 32))
SESSION = DeviceSession(
    dev_eui=bytes.fromhex("0011223344556677"),
    dev_addr=0x01ABCDEF,
    nwk_s_key=NWK,
    app_s_key=APP,
    profile_id="parking-v1",
    f_cnt_up=7,
)


@pytest.fixture(scope="module")
def gw_key() -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def test_round_trip_with_object_and_raw_public_key(gw_key: X25519PrivateKey) -> None:
    raw = gw_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    for public in (gw_key.public_key(), raw):
        sealed = seal_session(public, GW, SESSION)
        assert sealed[0] == FORMAT_VERSION
        assert NWK not in sealed
        assert APP not in sealed
        assert open_session(gw_key, GW, sealed) == SESSION


def test_sealing_is_randomised(gw_key: X25519PrivateKey) -> None:
    assert seal_session(gw_key.public_key(), GW, SESSION) != seal_session(
        gw_key.public_key(), GW, SESSION
    )


def test_plaintext_is_deterministic_cbor_with_integer_keys(gw_key: X25519PrivateKey) -> None:
    sealed = seal_session(gw_key.public_key(), GW, SESSION)
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    plaintext = suite.decrypt(sealed[1:], gw_key, INFO_PREFIX + GW)
    assert cbor.loads(plaintext) == {
        1: SESSION.dev_eui,
        2: 0x01ABCDEF,
        3: NWK,
        4: APP,
        5: "parking-v1",
        6: 7,
    }
    assert cbor.dumps(cbor.loads(plaintext)) == plaintext


def test_wrong_key_other_gateway_and_tampering_are_refused(gw_key: X25519PrivateKey) -> None:
    sealed = seal_session(gw_key.public_key(), GW, SESSION)
    with pytest.raises(SealedError, match="does not open"):
        open_session(X25519PrivateKey.generate(), GW, sealed)
    with pytest.raises(SealedError, match="does not open"):
        open_session(gw_key, OTHER_GW, sealed)
    for index in (1, 20, 40, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(SignatureError):
            open_session(gw_key, GW, bytes(tampered))
    with pytest.raises(SealedError, match="version"):
        open_session(gw_key, GW, b"\x02" + sealed[1:])
    with pytest.raises(SealedError, match="at least 49"):
        open_session(gw_key, GW, sealed[:48])


def test_bad_session_values_are_typed_errors() -> None:
    with pytest.raises(SealedError, match="nwk_s_key must be 16 bytes"):
        DeviceSession(
            dev_eui=bytes(8), dev_addr=1, nwk_s_key=bytes(15), app_s_key=APP, profile_id="p"
        )
    with pytest.raises(SealedError, match="dev_addr"):
        DeviceSession(
            dev_eui=bytes(8), dev_addr=1 << 32, nwk_s_key=NWK, app_s_key=APP, profile_id="p"
        )
    with pytest.raises(SealedError, match="gateway_id"):
        seal_session(X25519PrivateKey.generate().public_key(), b"short", SESSION)


def test_repr_hides_keys() -> None:
    assert NWK.hex() not in repr(SESSION)
    assert APP.hex() not in repr(SESSION)
    assert "<secret>" in repr(SESSION)


@settings(max_examples=25, deadline=None)
@given(
    dev_eui=st.binary(min_size=8, max_size=8),
    dev_addr=st.integers(0, 2**32 - 1),
    keys=st.binary(min_size=32, max_size=32),
    profile_id=st.text(min_size=1, max_size=20),
    f_cnt_up=st.integers(0, 2**32 - 1),
)
def test_any_session_round_trips(
    gw_key: X25519PrivateKey,
    dev_eui: bytes,
    dev_addr: int,
    keys: bytes,
    profile_id: str,
    f_cnt_up: int,
) -> None:
    session = DeviceSession(
        dev_eui=dev_eui,
        dev_addr=dev_addr,
        nwk_s_key=keys[:16],
        app_s_key=keys[16:],
        profile_id=profile_id,
        f_cnt_up=f_cnt_up,
    )
    assert open_session(gw_key, GW, seal_session(gw_key.public_key(), GW, session)) == session


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=120))
def test_arbitrary_bytes_raise_only_sealed_error(gw_key: X25519PrivateKey, data: bytes) -> None:
    with pytest.raises(SealedError):
        open_session(gw_key, GW, data)
