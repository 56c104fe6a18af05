"""The join server: LoRaWAN 1.0.x over-the-air activation (OTAA) for EU868.

A gateway forwards a join request (``join`` topic); :meth:`JoinServer.join` checks it, sets up
the session and returns the encrypted join accept for the gateway to send as a downlink, plus
the new session sealed to each gateway that must decode the device's uplinks
(:mod:`owlgate.codecs.sealed`). The order of checks matters: the MIC is verified before the
DevNonce is recorded, so someone without the AppKey cannot use up a device's nonces.

Every join request refused is counted by reason (:attr:`JoinServer.counters`; shown as
``owlgate_fleet_join_rejected_total{reason=...}`` once the server registers the join server's
stats) and logged in one line, at most :data:`LOG_BURST` per reason per :data:`LOG_WINDOW_S`
(a flood of forged joins cannot fill the log). The reasons (:data:`JOIN_REASONS`):

- ``garbage``: not a join request at all (empty, or an MHDR other than ``00``);
- ``wrong_length``: a join request MHDR, but not the 23 bytes of one (LoRaWAN 1.0.3 6.2.4);
- ``unknown_device``: no OTAA device with that DevEUI and JoinEUI (or without an AppKey);
- ``mic``: the MIC does not verify with the device's AppKey (forged, or the wrong key);
- ``dev_nonce_reused``: the device already used this DevNonce: a replayed join request;
- ``address_space``: no DevAddr or JoinNonce left to give (the network's fault, not the
  device's; counted so that it is seen).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from owlgate.codecs.errors import LorawanError, MicError
from owlgate.codecs.lorawan import AesKey, JoinAccept, JoinRequest, derive_session_keys
from owlgate.codecs.sealed import DeviceSession, seal_session

from .metrics import RateLimitedLog
from .store import ConflictError, FleetError, NotFoundError, Store, eui_hex

log = logging.getLogger(__name__)

# EU868 defaults (RP002-1.0.3 section 2.4): RX1 one second after the uplink, RX1 on the
# uplink's data rate (offset 0), RX2 on DR0 (869.525 MHz). DLSettings (LoRaWAN 1.0.3
# section 6.2.5): bit 7 RFU, bits 6..4 RX1DROffset, bits 3..0 RX2DataRate.
EU868_RX1_DR_OFFSET: Final = 0
EU868_RX2_DATA_RATE: Final = 0
EU868_RX_DELAY_S: Final = 1
_JOIN_NONCE_END: Final = 1 << 24
#: LoRaWAN 1.0.3 section 6.2.4: MHDR, JoinEUI, DevEUI, DevNonce, MIC.
JOIN_REQUEST_LENGTH: Final = 23
_MHDR_JOIN_REQUEST: Final = 0x00
#: Refusal lines logged per reason per window, at most.
LOG_BURST: Final = 20
LOG_WINDOW_S: Final = 60.0
#: Every reason a join request is refused for (see the module docstring).
JOIN_REASONS: Final = (
    "garbage",
    "wrong_length",
    "unknown_device",
    "mic",
    "dev_nonce_reused",
    "address_space",
)


class JoinError(FleetError):
    """A join request the join server refuses."""


class UnknownDeviceError(JoinError):
    """No OTAA device with that DevEUI and JoinEUI is registered."""


class JoinMicError(JoinError):
    """The join request's MIC does not verify with the device's AppKey."""


class DevNonceReusedError(JoinError):
    """The device already used this DevNonce: a replayed join request (LoRaWAN 1.0.3 6.2.4)."""


class AddressSpaceError(JoinError):
    """No free DevAddr left in the NetID's range, or a NetID type this server does not handle."""


class JoinFrameError(LorawanError):
    """Bytes that are not a join request (``reason`` ``garbage``) or not one of the right
    length (``wrong_length``). A :class:`LorawanError`, not a :class:`JoinError`: there is no
    device to answer."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


#: The counter each refusal goes to.
_REASON_OF: Final[tuple[tuple[type[Exception], str], ...]] = (
    (UnknownDeviceError, "unknown_device"),
    (JoinMicError, "mic"),
    (DevNonceReusedError, "dev_nonce_reused"),
    (AddressSpaceError, "address_space"),
)


@dataclass(slots=True)
class JoinCounters:
    """What the join server did since it started: ``accepted`` joins, ``rejected`` by reason
    (:data:`JOIN_REASONS`). Joins may be handled in several threads: change the counts only
    through the methods, which hold a lock."""

    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def accept(self) -> None:
        with self._lock:
            self.accepted += 1

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        with self._lock:
            return {"accepted": self.accepted, "rejected": dict(self.rejected)}


def parse_join_request(phy: bytes) -> JoinRequest:
    """``phy`` as a join request, or :class:`JoinFrameError` saying whether it is no join
    request at all or one of the wrong length."""
    if not phy or phy[0] != _MHDR_JOIN_REQUEST:
        first = "nothing" if not phy else f"MHDR {phy[0]:02x}"
        raise JoinFrameError("garbage", f"not a join request ({len(phy)} bytes, {first})")
    if len(phy) != JOIN_REQUEST_LENGTH:
        raise JoinFrameError(
            "wrong_length", f"a join request is {JOIN_REQUEST_LENGTH} bytes, got {len(phy)}"
        )
    try:
        return JoinRequest.from_bytes(phy)
    except LorawanError as err:
        raise JoinFrameError("garbage", f"not a join request: {err.message}") from err


def dev_addr_prefix(net_id: int) -> tuple[int, int]:
    """``(prefix, nwk_addr_bits)`` of the DevAddrs a NetID owns (LoRaWAN Backend Interfaces
    1.0, section 13): type 0 is ``0`` + 6-bit NwkID + 25-bit NwkAddr, type 1 is ``10`` +
    6-bit NwkID + 24-bit NwkAddr; the NwkID is the NetID's low 6 bits. Only types 0 and 1
    (private, experimental and small networks) are handled."""
    if not 0 <= net_id < 1 << 24:
        raise AddressSpaceError(f"a NetID is 24 bits, got {net_id:#x}")
    net_type = net_id >> 21
    nwk_id = net_id & 0x3F
    if net_type == 0:
        return nwk_id << 25, 25
    if net_type == 1:
        return (0b10 << 30) | (nwk_id << 24), 24
    raise AddressSpaceError(f"NetID {net_id:06x} is of type {net_type}; only types 0 and 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinSettings:
    """The network's identity and the join accept's radio settings (EU868 by default)."""

    net_id: int = 0x000000
    rx1_dr_offset: int = EU868_RX1_DR_OFFSET
    rx2_data_rate: int = EU868_RX2_DATA_RATE
    rx_delay_s: int = EU868_RX_DELAY_S
    #: DevAddr draws before giving up; the space holds 2**24 or 2**25 addresses.
    dev_addr_attempts: int = 64

    def __post_init__(self) -> None:
        dev_addr_prefix(self.net_id)
        if not 0 <= self.rx1_dr_offset <= 7 or not 0 <= self.rx2_data_rate <= 15:
            raise ValueError("rx1_dr_offset is 0 .. 7 and rx2_data_rate 0 .. 15")
        if not 1 <= self.rx_delay_s <= 15:
            raise ValueError("rx_delay_s is 1 .. 15")

    @property
    def dl_settings(self) -> int:
        return (self.rx1_dr_offset << 4) | self.rx2_data_rate

    @property
    def rx_delay(self) -> int:
        return self.rx_delay_s


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinResult:
    """An accepted join: the PHYPayload to send, the session, and the session sealed per
    gateway id (hex). ``repr`` does not show the keys."""

    accept_phy: bytes
    dev_eui: str
    dev_addr: int
    join_nonce: int
    dev_nonce: int
    session: DeviceSession = field(repr=False)
    sealed: dict[str, bytes] = field(repr=False)


def seal_for_gateway(store: Store, gateway_id: str | bytes, session: DeviceSession) -> bytes:
    """Seal ``session`` to a registered gateway's X25519 key (NotFoundError if unknown)."""
    gateway = store.gateway(gateway_id)
    return seal_session(gateway.seal_public_key, bytes.fromhex(gateway.id), session)


def device_session(store: Store, dev_eui: str | bytes) -> DeviceSession:
    """A device's current session (ABP as registered, OTAA after its last join)."""
    device = store.device(dev_eui)
    keys = store.device_keys(dev_eui)
    if device.dev_addr is None or keys.nwk_s_key is None or keys.app_s_key is None:
        raise NotFoundError(f"device {device.dev_eui} has no session yet (it has not joined)")
    return DeviceSession(
        dev_eui=bytes.fromhex(device.dev_eui),
        dev_addr=device.dev_addr,
        nwk_s_key=keys.nwk_s_key,
        app_s_key=keys.app_s_key,
        profile_id=device.profile_id,
        f_cnt_up=0 if device.last_fcnt is None else device.last_fcnt,
    )


class JoinServer:
    """Handles OTAA join requests against the registry in ``store``; a
    :class:`~owlgate.fleet.api.StatsSource` (its counters under ``join``)."""

    #: The name its counters go under (``GET /api/v1/stats``, ``GET /metrics``).
    name = "join"

    def __init__(
        self,
        store: Store,
        settings: JoinSettings | None = None,
        *,
        random_below: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        self.store = store
        self.settings = settings or JoinSettings()
        self._random_below = random_below
        self.counters = JoinCounters()
        self.refusal_log = RateLimitedLog(log, burst=LOG_BURST, window_s=LOG_WINDOW_S)

    def stats(self) -> dict[str, object]:
        """The join server's counters now."""
        return self.counters.as_dict()

    def _allocate(self, in_use: Callable[[int], bool]) -> int:
        prefix, bits = dev_addr_prefix(self.settings.net_id)
        for _ in range(self.settings.dev_addr_attempts):
            # NwkAddr 0 is avoided: an all-zero DevAddr looks like "unset" to many tools.
            addr = prefix | (1 + self._random_below((1 << bits) - 1))
            if not in_use(addr):
                return addr
        raise AddressSpaceError(
            f"no free DevAddr found in {self.settings.dev_addr_attempts} draws for NetID "
            f"{self.settings.net_id:06x}"
        )

    def join(self, phy: bytes, *, at: float, gateway_ids: Sequence[str | bytes] = ()) -> JoinResult:
        """Accept a join request PHYPayload or raise a :class:`JoinError` (or
        :class:`JoinFrameError` if the bytes are not a join request), counted and logged.
        ``gateway_ids`` get the new session sealed."""
        try:
            result = self._join(phy, at=at, gateway_ids=gateway_ids)
        except JoinFrameError as err:
            self._refused(err.reason, err.message)
            raise
        except JoinError as err:
            reason = next((r for kind, r in _REASON_OF if isinstance(err, kind)), "refused")
            self._refused(reason, err.message)
            raise
        self.counters.accept()
        return result

    def _refused(self, reason: str, message: str) -> None:
        self.counters.reject(reason)
        self.refusal_log.warning(reason, "join request refused (%s): %s", reason, message)

    def _join(self, phy: bytes, *, at: float, gateway_ids: Sequence[str | bytes]) -> JoinResult:
        request = parse_join_request(phy)
        dev_eui = f"{request.dev_eui:016x}"
        join_eui = f"{request.join_eui:016x}"
        try:
            device = self.store.device(dev_eui)
        except NotFoundError as err:
            raise UnknownDeviceError(f"join from unknown DevEUI {dev_eui}") from err
        if device.activation != "otaa" or device.join_eui != join_eui:
            raise UnknownDeviceError(
                f"no OTAA device {dev_eui} with JoinEUI {join_eui} is registered"
            )
        app_key_bytes = self.store.device_keys(dev_eui).app_key
        if app_key_bytes is None:
            raise UnknownDeviceError(f"device {dev_eui} has no AppKey")
        app_key = AesKey(app_key_bytes)
        try:
            request.verify_mic(app_key)
        except MicError as err:
            raise JoinMicError(f"join request from {dev_eui}: {err.message}") from err

        settings = self.settings

        def next_join_nonce(last: int) -> int:
            # LoRaWAN 1.0.4 section 6.2.3: JoinNonce is a per-device counter, never repeated.
            if last + 1 >= _JOIN_NONCE_END:
                raise AddressSpaceError(f"device {dev_eui} has used every JoinNonce")
            return last + 1

        def session(join_nonce: int) -> tuple[bytes, bytes]:
            keys = derive_session_keys(app_key, join_nonce, settings.net_id, request.dev_nonce)
            if keys.nwk_s_key is None or keys.app_s_key is None:
                raise LorawanError("session key derivation returned no keys")
            return keys.nwk_s_key, keys.app_s_key

        try:
            join_nonce, dev_addr = self.store.record_join(
                dev_eui,
                dev_nonce=request.dev_nonce,
                next_join_nonce=next_join_nonce,
                allocate_dev_addr=self._allocate,
                session=session,
                at=at,
            )
        except ConflictError as err:
            raise DevNonceReusedError(err.message) from err
        accept = JoinAccept.build(
            app_key,
            join_nonce=join_nonce,
            net_id=settings.net_id,
            dev_addr=dev_addr,
            dl_settings=settings.dl_settings,
            rx_delay=settings.rx_delay,
        )
        nwk_s_key, app_s_key = session(join_nonce)
        device_session = DeviceSession(
            dev_eui=bytes.fromhex(dev_eui),
            dev_addr=dev_addr,
            nwk_s_key=nwk_s_key,
            app_s_key=app_s_key,
            profile_id=device.profile_id,
        )
        sealed = {
            eui_hex(gid, "gateway id"): seal_for_gateway(self.store, gid, device_session)
            for gid in gateway_ids
        }
        log.debug("device %s joined as %08x (JoinNonce %d)", dev_eui, dev_addr, join_nonce)
        return JoinResult(
            accept_phy=accept.encrypt(app_key),
            dev_eui=dev_eui,
            dev_addr=dev_addr,
            join_nonce=join_nonce,
            dev_nonce=request.dev_nonce,
            session=device_session,
            sealed=sealed,
        )
