"""Fixtures of the fleet tests: a fresh database per test, registered gateways and devices."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault

T0 = 1_800_000_000.0
GW1 = "b827ebfffe000001"
GW2 = "b827ebfffe000002"
ABP_EUI = "70b3d57ed0000001"
OTAA_EUI = "70b3d57ed0000002"
JOIN_EUI = "70b3d57ed00000ff"
APP_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NWK_S_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
APP_S_KEY = bytes.fromhex("f0e0d0c0b0a090807060504030201000")
ABP_ADDR = 0x01234567


def raw_public(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture
def vault(tmp_path: Path) -> KeyVault:
    """A fresh KEK, written to a 0600 file in the test's folder as ``seed`` would."""
    return KeyVault.generate_file(tmp_path / "test-kek.json", "test1")


@pytest.fixture
def store(vault: KeyVault) -> Iterator[Store]:
    with Store(":memory:", vault=vault) as fresh:
        yield fresh


@pytest.fixture
def seal_keys() -> dict[str, X25519PrivateKey]:
    return {GW1: X25519PrivateKey.generate(), GW2: X25519PrivateKey.generate()}


@pytest.fixture
def registry(store: Store, seal_keys: dict[str, X25519PrivateKey]) -> Store:
    """Two gateways, one ABP and one OTAA device."""
    for gid, seal in seal_keys.items():
        store.create_gateway(
            gid,
            name=f"gw {gid[-1]}",
            sign_public_key=raw_public(Ed25519PrivateKey.generate()),
            seal_public_key=raw_public(seal),
            created=T0,
        )
    store.create_device(
        ABP_EUI,
        profile_id="parking-v1",
        activation="abp",
        created=T0,
        dev_addr=ABP_ADDR,
        nwk_s_key=NWK_S_KEY,
        app_s_key=APP_S_KEY,
    )
    store.create_device(
        OTAA_EUI,
        profile_id="waste-bin-v1",
        activation="otaa",
        created=T0,
        join_eui=JOIN_EUI,
        app_key=APP_KEY,
    )
    return store
