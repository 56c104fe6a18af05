"""The join server against real join requests, built as a device builds them."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from owlgate.codecs.errors import LorawanError
from owlgate.codecs.lorawan import AesKey, EncryptedJoinAccept, JoinRequest
from owlgate.codecs.sealed import SealedError, open_session
from owlgate.fleet.joinserver import (
    AddressSpaceError,
    DevNonceReusedError,
    JoinMicError,
    JoinServer,
    JoinSettings,
    UnknownDeviceError,
    dev_addr_prefix,
    device_session,
    seal_for_gateway,
)
from owlgate.fleet.store import Store
from tests.fleet.conftest import (
    ABP_ADDR,
    ABP_EUI,
    APP_KEY,
    APP_S_KEY,
    GW1,
    GW2,
    JOIN_EUI,
    NWK_S_KEY,
    OTAA_EUI,
    T0,
)


def request(dev_nonce: int, key: bytes = APP_KEY, dev_eui: str = OTAA_EUI) -> bytes:
    return JoinRequest.build(
        AesKey(key), join_eui=int(JOIN_EUI, 16), dev_eui=int(dev_eui, 16), dev_nonce=dev_nonce
    ).to_bytes()


def test_join_accept_decrypts_on_the_device_to_the_same_session(
    registry: Store, seal_keys: dict[str, X25519PrivateKey]
) -> None:
    server = JoinServer(registry, JoinSettings(net_id=0x000013))
    result = server.join(request(0x1234), at=T0, gateway_ids=[GW1])
    # The device's side: decrypt, check the MIC, derive keys from its own DevNonce.
    accept = EncryptedJoinAccept.from_bytes(result.accept_phy).decrypt(AesKey(APP_KEY))
    accept.verify_mic(AesKey(APP_KEY))
    assert (accept.dev_addr, accept.net_id, accept.join_nonce) == (result.dev_addr, 0x13, 1)
    assert (accept.rx1_dr_offset, accept.rx2_data_rate, accept.rx1_delay_s) == (0, 0, 1)
    assert (accept.dl_settings, accept.rx_delay, accept.cf_list) == (0x00, 0x01, None)
    assert accept.dev_addr >> 25 == 0x13  # NetID type 0: NwkID in the top 7 bits
    keys = accept.session_keys(AesKey(APP_KEY), 0x1234)
    assert (keys.nwk_s_key, keys.app_s_key) == (result.session.nwk_s_key, result.session.app_s_key)
    # Stored: the session, a fresh frame counter, the DevAddr.
    device = registry.device(OTAA_EUI)
    assert (device.dev_addr, device.last_fcnt, device.joined_at) == (result.dev_addr, None, T0)
    stored = registry.device_keys(OTAA_EUI)
    assert (stored.nwk_s_key, stored.app_s_key) == (keys.nwk_s_key, keys.app_s_key)
    # Sealed for GW1 only; opens only with GW1's key.
    assert list(result.sealed) == [GW1]
    opened = open_session(seal_keys[GW1], bytes.fromhex(GW1), result.sealed[GW1])
    assert opened == result.session
    assert opened.profile_id == "waste-bin-v1"
    with pytest.raises(SealedError):
        open_session(seal_keys[GW2], bytes.fromhex(GW1), result.sealed[GW1])
    assert APP_KEY.hex() not in repr(result)
    assert result.session.nwk_s_key.hex() not in repr(result)
    assert result.session.app_s_key.hex() not in repr(result)


def test_wrong_key_unknown_device_and_replay_are_refused(registry: Store) -> None:
    server = JoinServer(registry)
    with pytest.raises(JoinMicError, match="does not match"):
        server.join(request(1, key=bytes(16)), at=T0)
    # A refused MIC does not use up the nonce.
    server.join(request(1), at=T0)
    with pytest.raises(DevNonceReusedError, match="DevNonce 0001 was already used"):
        server.join(request(1), at=T0 + 1)
    with pytest.raises(UnknownDeviceError, match="unknown DevEUI"):
        server.join(request(2, dev_eui="00000000000000aa"), at=T0)
    with pytest.raises(UnknownDeviceError, match="no OTAA device"):
        server.join(request(2, dev_eui=ABP_EUI), at=T0)
    with pytest.raises(LorawanError):
        server.join(b"\x00" * 5, at=T0)
    # The replay survived nothing in memory: a new server on the same store refuses it too.
    with pytest.raises(DevNonceReusedError):
        JoinServer(registry).join(request(1), at=T0 + 2)
    second = server.join(request(2), at=T0 + 3)
    assert second.join_nonce == 2


def test_two_devices_get_different_dev_addrs(registry: Store) -> None:
    other = "70b3d57ed0000003"
    registry.create_device(
        other,
        profile_id="parking-v1",
        activation="otaa",
        created=T0,
        join_eui=JOIN_EUI,
        app_key=APP_KEY,
    )
    # A random source that first offers the ABP device's address, then the same one twice.
    prefix, _ = dev_addr_prefix(0)
    draws = itertools.chain([ABP_ADDR - prefix - 1, 41, 41, 42], itertools.repeat(43))
    server = JoinServer(registry, random_below=lambda _n: next(draws))
    first = server.join(request(7), at=T0)
    second = server.join(request(7, dev_eui=other), at=T0)
    assert first.dev_addr == prefix | 42
    assert second.dev_addr == prefix | 43
    assert len({first.dev_addr, second.dev_addr, ABP_ADDR}) == 3
    # Rejoining keeps working: the device's own current address is not "in use" against it.
    again = JoinServer(registry, random_below=lambda _n: 41).join(request(8), at=T0)
    assert again.dev_addr == prefix | 42


def test_address_space_exhausted_and_netid_types(registry: Store) -> None:
    server = JoinServer(
        registry, JoinSettings(dev_addr_attempts=3), random_below=lambda _n: ABP_ADDR - 1
    )
    with pytest.raises(AddressSpaceError, match="no free DevAddr"):
        server.join(request(3), at=T0)
    assert dev_addr_prefix(0x000013) == (0x13 << 25, 25)
    assert dev_addr_prefix(0x200005) == ((0b10 << 30) | (5 << 24), 24)
    with pytest.raises(AddressSpaceError, match="type 3"):
        dev_addr_prefix(0x600000)


def test_abp_session_is_sealed_the_same_way(
    registry: Store, seal_keys: dict[str, X25519PrivateKey]
) -> None:
    session = device_session(registry, ABP_EUI)
    assert (session.dev_addr, session.nwk_s_key, session.app_s_key) == (
        ABP_ADDR,
        NWK_S_KEY,
        APP_S_KEY,
    )
    sealed = seal_for_gateway(registry, GW2, session)
    assert open_session(seal_keys[GW2], bytes.fromhex(GW2), sealed) == session
