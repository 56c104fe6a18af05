"""The gateway's LoRaWAN processor: radio frames in, readings or join requests out.

For each :class:`~owlgate.codecs.concentrator.RxFrame` the concentrator reports,
:meth:`LorawanProcessor.process` returns one of

* a :class:`~owlgate.codecs.node.telemetry.Reading`: a data uplink from a device with a
  session here, its MIC verified (LoRaWAN 1.0.3 section 4.4), its 16-bit FCnt widened and
  new (section 4.3.1.5), its FRMPayload decrypted (section 4.3.3) and decoded by the
  device's profile;
* a :class:`JoinRequestForward`: a join request (section 6.2.4) for the fleet's join server,
  with what the agent needs to answer in RX1 (:func:`join_accept_tx`);
* a :class:`Rejected` with a :class:`RejectReason`.

Bad radio input never raises: it is counted (:class:`ProcessorCounters`) and logged once.
Frame counters advance in memory when a frame is accepted; they reach the disk with the batch
that stores the frame's reading (:meth:`owlgate.edge.state.StateDb.put`), and a restart loads
them back (:meth:`LorawanProcessor.load_sessions`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Final, TypeAlias

from owlgate.codecs.concentrator import CrcStatus, RxFrame, TxRequest
from owlgate.codecs.errors import LorawanError, MicError, OwlgateError, PayloadError
from owlgate.codecs.lorawan import (
    MAX_FCNT_GAP,
    FCntVerdict,
    JoinRequest,
    SessionKeys,
    decode_uplink,
)
from owlgate.codecs.node.telemetry import Reading
from owlgate.codecs.payloads import PROFILES
from owlgate.codecs.payloads import decode_uplink as decode_payload

from .state import StateDb, StoredSession

__all__ = [
    "JOIN_ACCEPT_DELAY1_S",
    "RECEIVE_DELAY1_S",
    "JoinRequestForward",
    "LorawanProcessor",
    "ProcessResult",
    "ProcessorCounters",
    "RejectReason",
    "Rejected",
    "SessionError",
    "join_accept_tx",
    "rx1_tx",
]

_log = logging.getLogger(__name__)

#: LoRaWAN 1.0.3 section 6.2.6 / Regional Parameters EU868: RX1 of a join accept opens 5 s
#: after the end of the join request.
JOIN_ACCEPT_DELAY1_S: Final = 5
#: RX1 of a data downlink: 1 s after the end of the uplink (EU868 default).
RECEIVE_DELAY1_S: Final = 1
#: EU868 maximum EIRP is 16 dBm; 14 dBm conducted leaves room for a small antenna gain.
EU868_TX_POWER_DBM: Final = 14
_U32: Final = 0xFFFFFFFF
# EU868 data rates DR0..DR6 as (SF, bandwidth) (Regional Parameters 1.0.3, table 2.2.3).
_EU868_DATA_RATES: Final = (
    (12, 125_000),
    (11, 125_000),
    (10, 125_000),
    (9, 125_000),
    (8, 125_000),
    (7, 125_000),
    (7, 250_000),
)


class SessionError(OwlgateError):
    """A session that cannot be installed (bad key length, unknown profile, bad address)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RejectReason(Enum):
    """Why a received frame produced no reading."""

    CRC_BAD = "crc_bad"
    """The radio's CRC check failed: the bytes are damaged."""
    MALFORMED = "malformed"
    """Not a well-formed LoRaWAN frame."""
    NOT_UPLINK = "not_uplink"
    """A well-formed frame a gateway does not process (a downlink heard, proprietary, RFU)."""
    UNKNOWN_DEV_ADDR = "unknown_dev_addr"
    """No session here has this DevAddr (often a neighbouring network's device)."""
    MIC_FAILED = "mic_failed"
    """No session with this DevAddr verifies the MIC: wrong keys or a forged frame."""
    REPLAY = "replay"
    """The counter is below the last accepted one (LoRaWAN 1.0.3 section 4.3.1.5)."""
    RETRANSMISSION = "retransmission"
    """The counter equals the last accepted one: a repeat, already processed. Not an error."""
    FCNT_GAP = "fcnt_gap"
    """The counter jumped MAX_FCNT_GAP or more ahead."""
    FCNT_EXHAUSTED = "fcnt_exhausted"
    """The 32-bit counter would wrap: the device must rejoin."""
    NO_PAYLOAD = "no_payload"
    """Authentic, but without application data (MAC commands only, FPort 0 or none)."""
    UNDECODABLE = "undecodable"
    """Authentic, but the device profile cannot decode the payload."""


# Enum members as module constants: an attribute of an Enum class costs several times a global.
_CRC_BAD: Final = CrcStatus.BAD
_NEW: Final = FCntVerdict.NEW

# Logged at info: normal in a shared band, or not a fault at all.
_QUIET: Final = frozenset(
    (RejectReason.UNKNOWN_DEV_ADDR, RejectReason.RETRANSMISSION, RejectReason.NOT_UPLINK)
)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that produced no reading: why, the DevEUI when the frame was authentic, and
    the FCnt it carried (widened when a session was found)."""

    reason: RejectReason
    detail: str
    dev_eui: bytes | None = None
    f_cnt: int | None = None


@dataclass(frozen=True, slots=True)
class JoinRequestForward:
    """A join request to forward to the fleet's join server (its MIC needs the AppKey, which
    only the join server has), with the radio parameters for the RX1 answer."""

    phy_payload: bytes
    join_eui: int
    dev_eui: int
    dev_nonce: int
    timestamp_us: int
    frequency_hz: int
    sf: int
    bandwidth_hz: int
    rssi_dbm: int
    snr_db: float


ProcessResult: TypeAlias = Reading | JoinRequestForward | Rejected


@dataclass(slots=True)
class ProcessorCounters:
    """What :meth:`LorawanProcessor.process` has seen since start."""

    received: int = 0
    accepted: int = 0
    join_requests: int = 0
    rejected: dict[RejectReason, int] = field(
        default_factory=lambda: dict.fromkeys(RejectReason, 0)
    )

    def as_dict(self) -> dict[str, int]:
        """Flat counters for the health report: ``received``, ``accepted``, ``join_requests``
        and one ``rejected_<reason>`` per reason."""
        out = {
            "received": self.received,
            "accepted": self.accepted,
            "join_requests": self.join_requests,
        }
        for reason, count in self.rejected.items():
            out[f"rejected_{reason.value}"] = count
        return out


class _Session:
    # A plain slotted class: its counter changes on every accepted uplink.
    __slots__ = (
        "activation",
        "decode",
        "dev_addr",
        "dev_eui",
        "keys",
        "last_f_cnt",
        "profile_id",
    )

    def __init__(
        self,
        dev_eui: bytes,
        dev_addr: int,
        profile_id: str,
        keys: SessionKeys,
        last_f_cnt: int | None,
        activation: str,
    ) -> None:
        self.dev_eui = dev_eui
        self.dev_addr = dev_addr
        self.profile_id = profile_id
        self.keys = keys
        self.last_f_cnt = last_f_cnt
        self.activation = activation
        # The profile's payload decoder, looked up once per session rather than per uplink:
        # what payloads.decode_uplink(profile_id, ...) calls (PROFILES is read-only). A stored
        # session of a profile this build lacks keeps going through decode_uplink, which
        # refuses each of its uplinks as before.
        profile = PROFILES.get(profile_id)
        self.decode: Callable[[int, bytes], dict[str, object]] = (
            partial(decode_payload, profile_id) if profile is None else profile.decode
        )


def _check_session(
    dev_eui: bytes, dev_addr: int, profile_id: str, nwk_s_key: bytes, app_s_key: bytes
) -> None:
    if not isinstance(dev_eui, bytes) or len(dev_eui) != 8:
        raise SessionError(f"a DevEUI is 8 bytes, got {dev_eui!r}")
    if isinstance(dev_addr, bool) or not isinstance(dev_addr, int) or not 0 <= dev_addr <= _U32:
        raise SessionError(f"a DevAddr is a 32-bit unsigned integer, got {dev_addr!r}")
    if profile_id not in PROFILES:
        known = ", ".join(sorted(PROFILES))
        raise SessionError(f"unknown device profile {profile_id!r}; known: {known}")
    for name, key in (("NwkSKey", nwk_s_key), ("AppSKey", app_s_key)):
        if not isinstance(key, bytes) or len(key) != 16:
            raise SessionError(f"{name} of {dev_eui.hex()} must be 16 bytes")


class LorawanProcessor:
    """Sessions by DevAddr, and the per-frame processing; see the module docstring.

    ``state`` (optional) is where sessions are stored when added; without it the processor
    keeps them in memory only (tests, tools). ``max_gap`` is passed to the FCnt widening.
    """

    def __init__(self, state: StateDb | None = None, *, max_gap: int = MAX_FCNT_GAP) -> None:
        if isinstance(max_gap, bool) or not isinstance(max_gap, int) or not 2 <= max_gap <= 0x10000:
            raise SessionError(f"max_gap must be from 2 to 65536, got {max_gap!r}")
        self._state = state
        self._max_gap = max_gap
        self._by_addr: dict[int, list[_Session]] = {}
        self._by_eui: dict[bytes, _Session] = {}
        self.counters = ProcessorCounters()

    def load_sessions(self) -> int:
        """Install every session stored in the state database, with its stored counter;
        returns how many."""
        if self._state is None:
            return 0
        stored = self._state.sessions()
        for session in stored:
            self._install(session)
        return len(stored)

    def add_session(
        self,
        *,
        dev_eui: bytes,
        dev_addr: int,
        profile_id: str,
        nwk_s_key: bytes,
        app_s_key: bytes,
        activation: str = "abp",
        last_f_cnt: int | None = None,
        now: float = 0.0,
    ) -> None:
        """Install a device's session (ABP from the fleet, or OTAA after a join accept),
        replacing any earlier session of the same DevEUI. A new OTAA session starts with a
        fresh counter (``last_f_cnt=None``), as a rejoin resets FCnt to 0 (LoRaWAN 1.0.3
        section 6.2.5). Stored in the state database when there is one."""
        if activation not in ("abp", "otaa"):
            raise SessionError(f"activation must be 'abp' or 'otaa', got {activation!r}")
        _check_session(dev_eui, dev_addr, profile_id, nwk_s_key, app_s_key)
        stored = StoredSession(
            dev_eui, dev_addr, profile_id, nwk_s_key, app_s_key, last_f_cnt, activation
        )
        if self._state is not None:
            self._state.save_session(stored, now)
        self._install(stored)
        _log.info(
            "session for device %s installed (%s, DevAddr %08x, profile %s)",
            dev_eui.hex(),
            activation,
            dev_addr,
            profile_id,
        )

    def remove_session(self, dev_eui: bytes) -> bool:
        """Forget a device; False when it had no session."""
        session = self._by_eui.pop(dev_eui, None)
        if session is None:
            return False
        peers = self._by_addr[session.dev_addr]
        peers.remove(session)
        if not peers:
            del self._by_addr[session.dev_addr]
        if self._state is not None:
            self._state.delete_session(dev_eui)
        return True

    def _install(self, stored: StoredSession) -> None:
        old = self._by_eui.get(stored.dev_eui)
        if old is not None:
            peers = self._by_addr[old.dev_addr]
            peers.remove(old)
            if not peers:
                del self._by_addr[old.dev_addr]
        session = _Session(
            stored.dev_eui,
            stored.dev_addr,
            stored.profile_id,
            SessionKeys(stored.nwk_s_key, stored.app_s_key),
            stored.last_f_cnt,
            stored.activation,
        )
        self._by_eui[stored.dev_eui] = session
        self._by_addr.setdefault(stored.dev_addr, []).append(session)

    def last_f_cnt(self, dev_eui: bytes) -> int | None:
        """The last accepted uplink counter of a device (in memory), None if none."""
        session = self._by_eui.get(dev_eui)
        return None if session is None else session.last_f_cnt

    @property
    def session_count(self) -> int:
        return len(self._by_eui)

    def _reject(
        self,
        reason: RejectReason,
        detail: str,
        dev_eui: bytes | None = None,
        f_cnt: int | None = None,
    ) -> Rejected:
        self.counters.rejected[reason] += 1
        level = logging.INFO if reason in _QUIET else logging.WARNING
        _log.log(level, "frame rejected (%s): %s", reason.value, detail)
        return Rejected(reason, detail, dev_eui, f_cnt)

    def process(self, rx: RxFrame, now: float) -> ProcessResult:
        """Process one received frame; ``now`` is UTC seconds (the reading's time). Never
        raises on bad radio input."""
        self.counters.received += 1
        if rx.crc_status is _CRC_BAD:
            return self._reject(RejectReason.CRC_BAD, "the radio's CRC check failed")
        phy = rx.payload
        mhdr = phy[0]
        if mhdr == 0x40 or mhdr == 0x80:
            return self._data_uplink(rx, phy, now)
        if mhdr == 0x00:
            return self._join_request(rx, phy)
        # Downlinks of nearby gateways, join accepts, proprietary or RFU frames, or a
        # Major other than R1 (LoRaWAN 1.0.3 section 4.2).
        return self._reject(RejectReason.NOT_UPLINK, f"MHDR {mhdr:02x} is not a data uplink")

    def _data_uplink(self, rx: RxFrame, phy: bytes, now: float) -> ProcessResult:
        if len(phy) < 12:
            return self._reject(RejectReason.MALFORMED, f"a data frame of {len(phy)} bytes")
        dev_addr = int.from_bytes(phy[1:5], "little")
        candidates = self._by_addr.get(dev_addr)
        if not candidates:
            return self._reject(RejectReason.UNKNOWN_DEV_ADDR, f"DevAddr {dev_addr:08x}")
        max_gap = self._max_gap
        for session in candidates:
            # Several devices may share a DevAddr (LoRaWAN 1.0.3 section 6.1.1 allows it):
            # the MIC, checked with each one's NwkSKey and counter, tells them apart.
            try:
                up = decode_uplink(phy, session.keys, session.last_f_cnt, max_gap=max_gap)
            except MicError:
                continue
            except LorawanError as err:
                return self._reject(RejectReason.MALFORMED, err.message)
            break
        else:
            return self._reject(
                RejectReason.MIC_FAILED,
                f"DevAddr {dev_addr:08x}: MIC fails with all {len(candidates)} session(s)",
            )
        dev_eui = session.dev_eui
        f_cnt = up.f_cnt
        verdict = up.verdict
        if verdict is not _NEW:
            return self._reject(
                _VERDICT_REASONS[verdict],
                f"device {dev_eui.hex()}: FCnt {f_cnt} after {session.last_f_cnt}",
                dev_eui,
                f_cnt,
            )
        session.last_f_cnt = f_cnt
        f_port = up.f_port
        if not f_port:
            return self._reject(
                RejectReason.NO_PAYLOAD, f"device {dev_eui.hex()}: FCnt {f_cnt}", dev_eui, f_cnt
            )
        try:
            values = session.decode(f_port, up.payload)
        except PayloadError as err:
            return self._reject(
                RejectReason.UNDECODABLE,
                f"device {dev_eui.hex()} ({session.profile_id}) FPort {f_port}: {err.message}",
                dev_eui,
                f_cnt,
            )
        self.counters.accepted += 1
        return Reading(
            dev_eui,
            int(now),
            values,
            rx.rssi_dbm,
            rx.snr_db,
            f_cnt,
            rx.sf,
            rx.frequency_hz,
            rx.timestamp_us,
        )

    def _join_request(self, rx: RxFrame, phy: bytes) -> ProcessResult:
        try:
            request = JoinRequest.from_bytes(phy)
        except LorawanError as err:
            return self._reject(RejectReason.MALFORMED, err.message)
        self.counters.join_requests += 1
        _log.info("join request from device %016x, forwarded", request.dev_eui)
        return JoinRequestForward(
            phy_payload=bytes(phy),
            join_eui=request.join_eui,
            dev_eui=request.dev_eui,
            dev_nonce=request.dev_nonce,
            timestamp_us=rx.timestamp_us,
            frequency_hz=rx.frequency_hz,
            sf=rx.sf,
            bandwidth_hz=rx.bandwidth_hz,
            rssi_dbm=rx.rssi_dbm,
            snr_db=rx.snr_db,
        )


_VERDICT_REASONS: Final = {
    FCntVerdict.RETRANSMISSION: RejectReason.RETRANSMISSION,
    FCntVerdict.REPLAY: RejectReason.REPLAY,
    FCntVerdict.GAP: RejectReason.FCNT_GAP,
    FCntVerdict.EXHAUSTED: RejectReason.FCNT_EXHAUSTED,
}


def rx1_tx(
    *,
    rx_timestamp_us: int,
    frequency_hz: int,
    sf: int,
    bandwidth_hz: int,
    payload: bytes,
    token: int,
    delay_s: int = RECEIVE_DELAY1_S,
    rx1_dr_offset: int = 0,
    power_dbm: int = EU868_TX_POWER_DBM,
) -> TxRequest:
    """The :class:`TxRequest` that answers an uplink in its RX1 window (EU868).

    RX1 opens ``delay_s`` after the end of the uplink, which is when the concentrator stamped
    it; the counter is 32 bits of microseconds and wraps (about every 71.6 minutes), so the
    time is taken modulo 2**32. Same frequency; data rate = uplink DR - ``rx1_dr_offset``,
    not below DR0 (Regional Parameters EU868 RX1DROffset table); IQ inverted, no CRC.
    """
    try:
        data_rate = _EU868_DATA_RATES.index((sf, bandwidth_hz))
    except ValueError as err:
        raise SessionError(f"SF{sf} at {bandwidth_hz} Hz is not an EU868 data rate") from err
    if not 0 <= rx1_dr_offset <= 5:
        raise SessionError(f"RX1DROffset is 0 .. 5 in EU868, got {rx1_dr_offset}")
    down_sf, down_bw = _EU868_DATA_RATES[max(0, data_rate - rx1_dr_offset)]
    return TxRequest(
        timestamp_us=(rx_timestamp_us + delay_s * 1_000_000) & _U32,
        frequency_hz=frequency_hz,
        sf=down_sf,
        bandwidth_hz=down_bw,
        power_dbm=power_dbm,
        invert_polarity=True,
        crc=False,
        payload=payload,
        token=token,
    )


def join_accept_tx(request: JoinRequestForward, accept_phy: bytes, token: int) -> TxRequest:
    """The RX1 transmission of a join accept (already encrypted, as the fleet sends it) for
    ``request``: JOIN_ACCEPT_DELAY1 (5 s) after it, same channel and data rate."""
    return rx1_tx(
        rx_timestamp_us=request.timestamp_us,
        frequency_hz=request.frequency_hz,
        sf=request.sf,
        bandwidth_hz=request.bandwidth_hz,
        payload=accept_phy,
        token=token,
        delay_s=JOIN_ACCEPT_DELAY1_S,
    )
