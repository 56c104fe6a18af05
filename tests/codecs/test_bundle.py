"""Offline key bundles (owlgate.codecs.bundle): round trips, sealing to one laptop, and every
way a bundle is refused."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs import sealed
from owlgate.codecs.bundle import (
    INFO,
    BundleSealError,
    KeyBundle,
    Reservation,
    decode_bundle,
    encode_bundle,
    open_bundle,
    seal_bundle,
)
from owlgate.codecs.errors import SchemaError
from owlgate.codecs.node import cbor

texts = st.text(min_size=1, max_size=40)


@st.composite
def bundles(draw: st.DrawFn) -> KeyBundle:
    ids = sorted(draw(st.sets(st.integers(0, 2**64 - 1), min_size=1, max_size=20)))
    issued = draw(st.integers(0, 2**40))
    return KeyBundle(
        bundle_id=draw(texts),
        issued_at=issued,
        expires_at=issued + draw(st.integers(1, 2**40)),
        profile_id=draw(texts),
        join_eui=draw(st.binary(min_size=8, max_size=8)),
        site=draw(st.none() | texts),
        reservations=tuple(Reservation(i, draw(st.binary(min_size=16, max_size=16))) for i in ids),
    )


def example(site: str | None = "basement B2") -> KeyBundle:
    return KeyBundle(
        bundle_id="bnd-00112233445566ff",
        issued_at=1_800_000_000,
        expires_at=1_802_592_000,
        profile_id="parking-v1",
        join_eui=bytes.fromhex("70b3d57ed00000ff"),
        site=site,
        reservations=(Reservation(7, bytes(range(16))), Reservation(9, bytes(16))),
    )


@settings(max_examples=80, deadline=None)
@given(bundles())
def test_every_bundle_round_trips(bundle: KeyBundle) -> None:
    data = encode_bundle(bundle)
    assert decode_bundle(data) == bundle
    assert encode_bundle(decode_bundle(data)) == data


def test_the_layout_is_the_documented_map() -> None:
    assert cbor.loads(encode_bundle(example())) == {
        1: "bnd-00112233445566ff",
        2: 1_800_000_000,
        3: 1_802_592_000,
        4: "parking-v1",
        5: bytes.fromhex("70b3d57ed00000ff"),
        6: "basement B2",
        7: [[7, bytes(range(16))], [9, bytes(16)]],
    }
    assert 6 not in cbor.loads(encode_bundle(example(site=None)))  # type: ignore[operator]


def test_a_bundle_opens_only_with_its_laptops_key() -> None:
    laptop = X25519PrivateKey.generate()
    data = seal_bundle(laptop.public_key(), example())
    assert data[0] == 1
    assert len(data) == 1 + 32 + len(encode_bundle(example())) + 16
    assert open_bundle(laptop, data) == example()
    assert bytes(range(16)) not in data
    with pytest.raises(BundleSealError, match="another laptop"):
        open_bundle(X25519PrivateKey.generate(), data)
    flipped = bytearray(data)
    flipped[-1] ^= 1
    with pytest.raises(BundleSealError, match="tampered"):
        open_bundle(laptop, bytes(flipped))
    with pytest.raises(BundleSealError, match="version 2"):
        open_bundle(laptop, b"\x02" + data[1:])
    with pytest.raises(BundleSealError, match="at least 49 bytes"):
        open_bundle(laptop, data[:48])


def test_a_sealed_device_session_does_not_open_as_a_bundle() -> None:
    # Same suite, other purpose: the info strings keep the two apart.
    assert INFO != sealed.INFO_PREFIX
    laptop = X25519PrivateKey.generate()
    session = sealed.DeviceSession(
        dev_eui=bytes(8), dev_addr=1, nwk_s_key=bytes(16), app_s_key=bytes(16), profile_id="p"
    )
    with pytest.raises(BundleSealError):
        open_bundle(laptop, sealed.seal_session(laptop.public_key(), bytes(8), session))


def test_repr_shows_no_key() -> None:
    shown = repr(example())
    assert bytes(range(16)).hex() not in shown
    assert "<secret>" in shown
    assert repr(example().reservations[0]) == "Reservation(id=7, app_key=<secret>)"


def content_of(bundle: KeyBundle) -> dict[int, Any]:
    content = cbor.loads(encode_bundle(bundle))
    assert isinstance(content, dict)
    return content


GOOD = content_of(example())


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param([1, 2], "a CBOR map", id="not a map"),
        pytest.param({**GOOD, 8: 0}, "not [8]", id="unknown key"),
        pytest.param({k: v for k, v in GOOD.items() if k != 5}, "needs the keys [5]", id="no eui"),
        pytest.param({**GOOD, 5: bytes(7)}, "join_eui must be 8 bytes", id="7-byte JoinEUI"),
        pytest.param({**GOOD, 7: []}, "1 .. 1000 reservations", id="no reservations"),
        pytest.param({**GOOD, 7: [[1, bytes(15)]]}, "app_key must be 16 bytes", id="short key"),
        pytest.param({**GOOD, 7: [[2, bytes(16)], [1, bytes(16)]]}, "increasing", id="order"),
        pytest.param({**GOOD, 7: [[1, bytes(16)], [1, bytes(16)]]}, "unique", id="twice"),
        pytest.param({**GOOD, 7: [[-1, bytes(16)]]}, "reservation id", id="negative id"),
        pytest.param({**GOOD, 7: [[1]]}, "[id, app_key]", id="no key"),
        pytest.param({**GOOD, 3: GOOD[2]}, "must be after", id="expired at issue"),
        pytest.param({**GOOD, 6: 5}, "site", id="site not text"),
        pytest.param({**GOOD, 4: ""}, "profile_id", id="empty profile"),
    ],
)
def test_the_decoder_refuses(content: object, words: str) -> None:
    with pytest.raises(SchemaError, match=words.replace("[", r"\[").replace("]", r"\]")):
        decode_bundle(cbor.dumps(content))


def test_bytes_that_are_not_cbor_are_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="not CBOR"):
        decode_bundle(b"\xff\x00")
