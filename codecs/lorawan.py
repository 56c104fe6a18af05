"""LoRaWAN 1.0.x frames: parse and build every message type, check MICs, encrypt payloads.

Covers the LoRaWAN 1.0.x link layer as a gateway, a join server and an emulated end device
need it (LoRaWAN 1.0.3 / 1.0.4 specification, chapters 4 and 6):

* :func:`parse` turns a PHYPayload into :class:`JoinRequest`, :class:`EncryptedJoinAccept`,
  :class:`DataFrame` or :class:`OpaqueFrame` (RFU and Proprietary); each class has
  ``from_bytes`` / ``to_bytes``.
* Data frames: MIC (AES-CMAC over the B0 block and the frame) and FRMPayload encryption
  (AES keystream from the A_i blocks), with NwkSKey for FPort 0 and AppSKey otherwise.
* Join: join request MIC, join accept encryption (the network side applies AES *decrypt*),
  decryption and MIC, and the 1.0.x session key derivation.
* Frame counters: :func:`widen_fcnt` turns the 16 bits on air into the 32-bit counter and a
  :class:`FCntVerdict`; :func:`check_fcnt` raises instead.
* :func:`decode_uplink` is the gateway's fast path: parse, MIC check and decryption of a data
  uplink in one call, with the AES contexts and CMAC subkeys prepared once per session in
  :class:`SessionKeys`.
* :func:`describe` is what ``owlgate decode lorawan`` prints.

Every multi-byte field is little-endian on air (LoRaWAN 1.0.3 section 4); in this API DevAddr,
EUIs, nonces, NetID and counters are plain integers, and keys and MICs are ``bytes`` in the
order they are used by AES and sent on air. Anything malformed raises :class:`LorawanError`
(a wrong MIC :class:`MicError`, a replayed counter :class:`ReplayError`), with the bytes in hex.
LoRaWAN 1.1 is out of scope (its MIC, FOpts encryption and key hierarchy differ).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import ClassVar, Final, NamedTuple, TypeAlias

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import LorawanError, MicError, ReplayError

__all__ = [
    "MAX_FCNT_GAP",
    "AesKey",
    "DataFrame",
    "DecodedUplink",
    "EncryptedJoinAccept",
    "FCntVerdict",
    "FCtrl",
    "Fhdr",
    "Frame",
    "JoinAccept",
    "JoinRequest",
    "MType",
    "Mhdr",
    "OpaqueFrame",
    "SessionKeys",
    "WidenedFCnt",
    "check_fcnt",
    "data_mic",
    "decode_uplink",
    "derive_session_keys",
    "describe",
    "encrypt_frm_payload",
    "parse",
    "widen_fcnt",
]

#: The largest LoRa PHY payload; no LoRaWAN frame can be longer.
MAX_PHY_PAYLOAD: Final = 255
#: LoRaWAN 1.0.3 section 4.3.1.5 discards a frame whose counter moved MAX_FCNT_GAP or more past
#: the last accepted one; the value is the default of the Regional Parameters for 1.0.x.
#: LoRaWAN 1.0.4 and 1.1 dropped the constant (common practice there: one 16-bit rollover,
#: i.e. ``max_gap=0x10000``).
MAX_FCNT_GAP: Final = 16384

_MASK128: Final = (1 << 128) - 1
_U32_END: Final = 1 << 32
_MIC_LEN: Final = 4
_KEY_LEN: Final = 16
# Shortest data frame: MHDR 1 + FHDR 7 (no FOpts) + MIC 4 (LoRaWAN 1.0.3 section 4.3).
_DATA_MIN: Final = 12
_JOIN_REQUEST_LEN: Final = 23
_JOIN_ACCEPT_LENS: Final = (17, 33)
_ONE_BYTE: Final = tuple(bytes((value,)) for value in range(256))
# CMAC padding of an incomplete last block (RFC 4493 section 2.4): 0x80 then zeros.
_CMAC_PAD: Final = tuple(b"\x80" + bytes(15 - used) for used in range(16))
# B0 (MIC) and A_i (keystream) blocks up to the DevAddr: tag, four zero bytes, Dir
# (LoRaWAN 1.0.3 sections 4.3.3 and 4.4), indexed by ``uplink``.
_B0_HEAD: Final = (b"\x49\x00\x00\x00\x00\x01", b"\x49\x00\x00\x00\x00\x00")
_AI_HEAD: Final = (b"\x01\x00\x00\x00\x00\x01", b"\x01\x00\x00\x00\x00\x00")


def _hex(data: bytes) -> str:
    if len(data) <= 64:
        return data.hex()
    return f"{data[:64].hex()}... ({len(data)} bytes)"


def _error(message: str, data: bytes, offset: int | None = None) -> LorawanError:
    return LorawanError(f"{message}: {_hex(data)}", offset)


def _check_uint(name: str, value: object, bits: int) -> int:
    # bool is an int in Python; a flag where a number belongs is a caller's mistake.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise LorawanError(f"{name} must be an integer from 0 to {(1 << bits) - 1}, got {value!r}")
    return value


def _check_bytes(name: str, value: object, lengths: tuple[int, ...]) -> bytes:
    if not isinstance(value, bytes) or len(value) not in lengths:
        wanted = " or ".join(str(length) for length in lengths)
        raise LorawanError(f"{name} must be {wanted} bytes, got {value!r}")
    return value


# --- AES and CMAC ---------------------------------------------------------------------------


def _double(value: int) -> int:
    """Multiply by x in GF(2^128), the subkey step of RFC 4493 section 2.3."""
    value <<= 1
    if value >> 128:
        value = (value & _MASK128) ^ 0x87
    return value


class AesKey:
    """An AES-128 key with its ECB context and CMAC subkeys K1/K2 prepared once.

    Creating a cipher context costs microseconds, encrypting a block a fraction of one: a
    gateway keeps one ``AesKey`` per session key (see :class:`SessionKeys`). An ECB context
    encrypts every 16-byte block independently, so one context serves every call. The key
    never appears in ``repr``. Not safe to share between threads without a lock.
    """

    __slots__ = ("_cbc", "_chain", "_decryptor", "_k1", "_k2", "_update", "key")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != _KEY_LEN:
            length = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
            raise LorawanError(f"an AES-128 key must be 16 bytes, got {length}")
        self.key = bytes(key)
        self._update: Callable[[bytes], bytes] = (
            Cipher(algorithms.AES(self.key), modes.ECB()).encryptor().update
        )
        # CMAC is CBC-MAC with a zero IV (RFC 4493 section 2.4). One CBC context serves every
        # call: it chains each call onto the last ciphertext block it produced (``_chain``),
        # so XOR-ing that block into the next message's first block restarts the chain from
        # zero, and a whole message goes through AES in a single call.
        self._cbc: Callable[[bytes], bytes] = (
            Cipher(algorithms.AES(self.key), modes.CBC(bytes(16))).encryptor().update
        )
        self._chain = 0
        # The inverse cipher is only needed to build join accepts: made on first use.
        self._decryptor: Callable[[bytes], bytes] | None = None
        self._k1 = _double(int.from_bytes(self._update(bytes(16)), "big"))
        self._k2 = _double(self._k1)

    def __repr__(self) -> str:
        return "AesKey(<secret>)"

    def encrypt(self, blocks: bytes) -> bytes:
        """AES-ECB encrypt a whole number of 16-byte blocks."""
        if len(blocks) % 16:
            raise LorawanError(f"AES-ECB needs whole 16-byte blocks, got {len(blocks)} bytes")
        return self._update(blocks)

    def decrypt(self, blocks: bytes) -> bytes:
        """AES-ECB decrypt (the inverse cipher) a whole number of 16-byte blocks."""
        if len(blocks) % 16:
            raise LorawanError(f"AES-ECB needs whole 16-byte blocks, got {len(blocks)} bytes")
        if self._decryptor is None:
            self._decryptor = Cipher(algorithms.AES(self.key), modes.ECB()).decryptor().update
        return self._decryptor(blocks)

    def cmac(self, data: bytes) -> bytes:
        """AES-CMAC of ``data`` (RFC 4493), all 16 bytes; LoRaWAN MICs are the first four."""
        size = len(data)
        used = size % 16
        if size and not used:
            last_at = size - 16
            last = int.from_bytes(data[last_at:], "big") ^ self._k1
        else:
            last_at = size - used
            last = int.from_bytes(data[last_at:] + _CMAC_PAD[used], "big") ^ self._k2
        if last_at:
            first = int.from_bytes(data[:16], "big") ^ self._chain
            blocks = first.to_bytes(16, "big") + data[16:last_at] + last.to_bytes(16, "big")
        else:
            blocks = (last ^ self._chain).to_bytes(16, "big")
        mac = self._cbc(blocks)[-16:]
        self._chain = int.from_bytes(mac, "big")
        return mac


class SessionKeys:
    """The two 1.0.x session keys of a device, each ready for use (see :class:`AesKey`).

    NwkSKey checks MICs and encrypts FPort 0 payloads (MAC commands); AppSKey encrypts every
    other FPort (LoRaWAN 1.0.3 section 4.3.3). Either may be None when only one is known (a
    capture decoded with one key); using the missing one raises :class:`LorawanError`.
    """

    __slots__ = ("app", "nwk")

    def __init__(self, nwk_s_key: bytes | None, app_s_key: bytes | None) -> None:
        self.nwk = None if nwk_s_key is None else AesKey(nwk_s_key)
        self.app = None if app_s_key is None else AesKey(app_s_key)

    @property
    def nwk_s_key(self) -> bytes | None:
        return None if self.nwk is None else self.nwk.key

    @property
    def app_s_key(self) -> bytes | None:
        return None if self.app is None else self.app.key

    def __repr__(self) -> str:
        have = [name for name, key in (("nwk", self.nwk), ("app", self.app)) if key is not None]
        return f"SessionKeys(<secret: {', '.join(have) or 'none'}>)"

    def mic_key(self) -> AesKey:
        """NwkSKey, or :class:`LorawanError` when it is unknown."""
        if self.nwk is None:
            raise LorawanError("NwkSKey is needed for a data frame MIC and was not given")
        return self.nwk

    def payload_key(self, f_port: int) -> AesKey:
        """The key that encrypts FRMPayload on ``f_port``: NwkSKey for 0, else AppSKey."""
        if f_port == 0:
            return self.mic_key()
        if self.app is None:
            raise LorawanError(f"AppSKey is needed for the payload on FPort {f_port}")
        return self.app


def data_mic(key: AesKey, msg: bytes, *, dev_addr: int, f_cnt: int, uplink: bool) -> bytes:
    """MIC of a data frame: the first 4 bytes of AES-CMAC over B0 | ``msg``.

    ``msg`` is MHDR | FHDR | FPort | FRMPayload as sent (the PHYPayload without its MIC);
    ``f_cnt`` the full 32-bit counter. B0 = 0x49 | 4 x 0x00 | Dir | DevAddr | FCnt | 0x00 |
    len(msg) (LoRaWAN 1.0.3 section 4.4).
    """
    _check_uint("DevAddr", dev_addr, 32)
    _check_uint("FCnt", f_cnt, 32)
    if len(msg) > MAX_PHY_PAYLOAD:
        raise _error("a data frame is at most 255 bytes", msg)
    b0 = (
        _B0_HEAD[uplink]
        + dev_addr.to_bytes(4, "little")
        + f_cnt.to_bytes(4, "little")
        + _ONE_BYTE[0]
        + _ONE_BYTE[len(msg)]
    )
    return key.cmac(b0 + msg)[:_MIC_LEN]


def _keystream_xor(
    update: Callable[[bytes], bytes], data: bytes, head: bytes, dev_addr_le: bytes, f_cnt: int
) -> bytes:
    size = len(data)
    if not size:
        return b""
    prefix = head + dev_addr_le + f_cnt.to_bytes(4, "little") + b"\x00"
    if size <= 16:
        blocks = prefix + b"\x01"
    else:
        blocks = b"".join([prefix + _ONE_BYTE[i] for i in range(1, (size + 15) // 16 + 1)])
    # All A_i blocks go through AES in one call; the XOR is one big-integer operation.
    stream = update(blocks)
    plain = int.from_bytes(data, "big") ^ int.from_bytes(stream[:size], "big")
    return plain.to_bytes(size, "big")


def encrypt_frm_payload(
    key: AesKey, payload: bytes, *, dev_addr: int, f_cnt: int, uplink: bool
) -> bytes:
    """Encrypt or decrypt FRMPayload (the same XOR both ways, LoRaWAN 1.0.3 section 4.3.3).

    Block i (from 1) of the keystream is AES(key, A_i) with A_i = 0x01 | 4 x 0x00 | Dir |
    DevAddr | FCnt (32 bits) | 0x00 | i. ``key`` is NwkSKey on FPort 0, AppSKey otherwise.
    """
    _check_uint("DevAddr", dev_addr, 32)
    _check_uint("FCnt", f_cnt, 32)
    if len(payload) > MAX_PHY_PAYLOAD:
        raise _error("FRMPayload is at most 255 bytes", payload)
    head = _AI_HEAD[uplink]
    return _keystream_xor(key._update, payload, head, dev_addr.to_bytes(4, "little"), f_cnt)


# --- Frame counters ---------------------------------------------------------------------------


class FCntVerdict(Enum):
    """What a received frame counter means against the last accepted one."""

    NEW = "new"
    """Higher than the last accepted counter, within the allowed gap: process it."""
    RETRANSMISSION = "retransmission"
    """Equal to the last accepted counter: a repeated (confirmed) frame, not a new one."""
    REPLAY = "replay"
    """Lower than the last accepted counter: a replay or a device that reset its counter."""
    GAP = "gap"
    """Further ahead than ``max_gap`` allows (LoRaWAN 1.0.3 section 4.3.1.5): discard."""
    EXHAUSTED = "exhausted"
    """The 32-bit counter would wrap: the session is used up and the device must rejoin."""


class WidenedFCnt(NamedTuple):
    """A received 16-bit FCnt with its 32-bit value and verdict."""

    f_cnt: int
    verdict: FCntVerdict


# The verdicts as plain module constants: looking a member up on an Enum class costs several
# times a global lookup, and _widen runs for every uplink.
_NEW: Final = FCntVerdict.NEW
_RETRANSMISSION: Final = FCntVerdict.RETRANSMISSION
_REPLAY: Final = FCntVerdict.REPLAY
_GAP: Final = FCntVerdict.GAP
_EXHAUSTED: Final = FCntVerdict.EXHAUSTED


def _widen(last: int | None, received: int, max_gap: int) -> tuple[int, FCntVerdict]:
    if last is None:
        # A fresh session: counters start at 0 after a join (LoRaWAN 1.0.3 section 4.3.1.5).
        base = expected = 0
    else:
        if received == last & 0xFFFF:
            return last, _RETRANSMISSION
        base = last
        expected = last + 1
    # The sender only ever counts up: assume the nearest value at or above the expected one,
    # across a 16-bit rollover if need be. The MIC, computed with this value, confirms it.
    ahead = (received - expected) & 0xFFFF
    candidate = expected + ahead
    if candidate - base < max_gap:
        if candidate > 0xFFFFFFFF:
            return candidate & 0xFFFFFFFF, _EXHAUSTED
        return candidate, _NEW
    earlier = expected - (0x10000 - ahead)
    if earlier >= 0:
        return earlier, _REPLAY
    return candidate & 0xFFFFFFFF, _GAP


def _check_widen_args(last: int | None, received: int, max_gap: int) -> None:
    if last is not None:
        _check_uint("last accepted FCnt", last, 32)
    _check_uint("received FCnt", received, 16)
    if isinstance(max_gap, bool) or not isinstance(max_gap, int) or not 2 <= max_gap <= 0x10000:
        raise LorawanError(f"max_gap must be from 2 to 65536, got {max_gap!r}")


def widen_fcnt(last: int | None, received: int, max_gap: int = MAX_FCNT_GAP) -> WidenedFCnt:
    """Widen a received 16-bit FCnt to 32 bits and judge it against the last accepted one.

    ``last`` is the last accepted 32-bit counter, or None for a fresh session (the first frame
    after a join, which counts from 0). Rules, in order:

    * equal to ``last`` in its low 16 bits: RETRANSMISSION, widened to ``last``;
    * the nearest value above ``last`` (across a 16-bit rollover), if it is less than
      ``max_gap`` past ``last`` (past 0 for a fresh session): NEW; EXHAUSTED if that value no
      longer fits 32 bits;
    * otherwise the nearest value below ``last``, if there is one: REPLAY, widened to it;
    * otherwise GAP, widened to the value ahead.

    ``max_gap`` defaults to MAX_FCNT_GAP (16384, LoRaWAN 1.0.3 section 4.3.1.5); 65536 accepts
    any forward jump within one rollover, as LoRaWAN 1.0.4 networks do. The verdict is only
    trustworthy once the MIC has been verified with the widened counter.
    """
    _check_widen_args(last, received, max_gap)
    return WidenedFCnt(*_widen(last, received, max_gap))


def check_fcnt(
    last: int | None,
    received: int,
    max_gap: int = MAX_FCNT_GAP,
    *,
    allow_retransmission: bool = True,
) -> int:
    """:func:`widen_fcnt` for callers who want exceptions; returns the 32-bit counter.

    Raises :class:`ReplayError` for a replay (and for a retransmission unless
    ``allow_retransmission``), :class:`LorawanError` for a gap or an exhausted counter.
    """
    f_cnt, verdict = widen_fcnt(last, received, max_gap)
    if verdict is FCntVerdict.NEW:
        return f_cnt
    if verdict is FCntVerdict.RETRANSMISSION:
        if allow_retransmission:
            return f_cnt
        raise ReplayError(f"FCnt {f_cnt} was already accepted (retransmission)")
    if verdict is FCntVerdict.REPLAY:
        raise ReplayError(f"FCnt {received} is a replay: {f_cnt} is below the last accepted {last}")
    if verdict is FCntVerdict.GAP:
        raise LorawanError(
            f"FCnt {received} is {max_gap} or more frames past the last accepted {last} "
            "(MAX_FCNT_GAP, LoRaWAN 1.0.3 section 4.3.1.5)"
        )
    raise LorawanError(f"FCnt {received} after {last} would wrap 32 bits: the device must rejoin")


# --- Frame structures -------------------------------------------------------------------------


class MType(IntEnum):
    """Message type, bits 7..5 of the MHDR (LoRaWAN 1.0.3 section 4.2.1)."""

    JOIN_REQUEST = 0
    JOIN_ACCEPT = 1
    UNCONFIRMED_DATA_UP = 2
    UNCONFIRMED_DATA_DOWN = 3
    CONFIRMED_DATA_UP = 4
    CONFIRMED_DATA_DOWN = 5
    RFU = 6
    PROPRIETARY = 7

    @property
    def spec_name(self) -> str:
        """The name the specification uses, e.g. ``UnconfirmedDataUp``."""
        return _SPEC_NAMES[self]

    @property
    def is_data(self) -> bool:
        return 2 <= self <= 5

    @property
    def uplink(self) -> bool:
        """True for types a device sends (join request and data up)."""
        return self in (MType.JOIN_REQUEST, MType.UNCONFIRMED_DATA_UP, MType.CONFIRMED_DATA_UP)


_SPEC_NAMES: Final = {
    MType.JOIN_REQUEST: "JoinRequest",
    MType.JOIN_ACCEPT: "JoinAccept",
    MType.UNCONFIRMED_DATA_UP: "UnconfirmedDataUp",
    MType.UNCONFIRMED_DATA_DOWN: "UnconfirmedDataDown",
    MType.CONFIRMED_DATA_UP: "ConfirmedDataUp",
    MType.CONFIRMED_DATA_DOWN: "ConfirmedDataDown",
    MType.RFU: "RFU",
    MType.PROPRIETARY: "Proprietary",
}
_MTYPES: Final = tuple(MType)


@dataclass(frozen=True, slots=True)
class Mhdr:
    """MAC header, the first byte of every PHYPayload (LoRaWAN 1.0.3 section 4.2)::

    bit   7  6  5 | 4  3  2 | 1  0
          MType   | RFU = 0 | Major (0 = LoRaWAN R1)
    """

    mtype: MType
    major: int = 0

    def __post_init__(self) -> None:
        _check_uint("MType", self.mtype, 3)
        object.__setattr__(self, "mtype", _MTYPES[self.mtype])
        _check_uint("Major", self.major, 2)

    @classmethod
    def from_byte(cls, value: int) -> Mhdr:
        """Parse one MHDR byte; the RFU bits must be zero."""
        if value & 0x1C:
            raise LorawanError(f"MHDR {value:02x} has RFU bits 4..2 set", 0)
        return cls(_MTYPES[value >> 5], value & 0x03)

    def to_byte(self) -> int:
        return self.mtype << 5 | self.major


@dataclass(frozen=True, slots=True)
class FCtrl:
    """Frame control flags of the FHDR; bits 6 and 4 mean different things per direction
    (LoRaWAN 1.0.3 section 4.3.1)::

        bit        7     6          5     4          3..0
        uplink     ADR   ADRACKReq  ACK   ClassB     FOptsLen
        downlink   ADR   RFU        ACK   FPending   FOptsLen

    FOptsLen is not stored: it is the length of :attr:`Fhdr.f_opts`.
    """

    adr: bool = False
    adr_ack_req: bool = False
    ack: bool = False
    class_b: bool = False
    f_pending: bool = False
    rfu: bool = False

    @classmethod
    def from_byte(cls, value: int, *, uplink: bool) -> FCtrl:
        """Read the flags of an FCtrl byte (FOptsLen, bits 3..0, is ignored here)."""
        if uplink:
            return cls(
                adr=bool(value & 0x80),
                adr_ack_req=bool(value & 0x40),
                ack=bool(value & 0x20),
                class_b=bool(value & 0x10),
            )
        return cls(
            adr=bool(value & 0x80),
            rfu=bool(value & 0x40),
            ack=bool(value & 0x20),
            f_pending=bool(value & 0x10),
        )

    def to_byte(self, f_opts_len: int, *, uplink: bool) -> int:
        """The FCtrl byte for a frame in the given direction with ``f_opts_len`` FOpts bytes."""
        _check_uint("FOptsLen", f_opts_len, 4)
        if uplink and (self.f_pending or self.rfu):
            raise LorawanError("FPending and the RFU bit are downlink-only FCtrl flags")
        if not uplink and (self.class_b or self.adr_ack_req):
            raise LorawanError("ClassB and ADRACKReq are uplink-only FCtrl flags")
        return (
            self.adr << 7
            | (self.adr_ack_req or self.rfu) << 6
            | self.ack << 5
            | (self.class_b or self.f_pending) << 4
            | f_opts_len
        )


@dataclass(frozen=True, slots=True)
class Fhdr:
    """Frame header of a data frame (LoRaWAN 1.0.3 section 4.3.1), 7 to 22 bytes::

        offset  0          4       5          7
                DevAddr    FCtrl   FCnt       FOpts
        bytes   4 (LE)     1       2 (LE)     FOptsLen (0..15)

    ``f_cnt`` is the 16 bits on air; MIC and encryption use the widened 32-bit counter.
    ``f_opts`` are MAC commands, sent in clear in 1.0.x.
    """

    dev_addr: int
    f_cnt: int
    f_ctrl: FCtrl = FCtrl()
    f_opts: bytes = b""

    def __post_init__(self) -> None:
        _check_uint("DevAddr", self.dev_addr, 32)
        _check_uint("FCnt (16 bits on air)", self.f_cnt, 16)
        if not isinstance(self.f_ctrl, FCtrl):
            raise LorawanError(f"f_ctrl must be an FCtrl, got {self.f_ctrl!r}")
        if not isinstance(self.f_opts, bytes) or len(self.f_opts) > 15:
            raise LorawanError(f"FOpts must be at most 15 bytes, got {self.f_opts!r}")

    @classmethod
    def from_bytes(cls, data: bytes, *, uplink: bool) -> Fhdr:
        """Parse exactly one FHDR (its length must match FOptsLen)."""
        data = bytes(data)
        if len(data) < 7 or len(data) != 7 + (data[4] & 0x0F):
            raise _error("an FHDR is 7 bytes plus FOptsLen (FCtrl bits 3..0)", data)
        return cls(
            dev_addr=int.from_bytes(data[0:4], "little"),
            f_cnt=int.from_bytes(data[5:7], "little"),
            f_ctrl=FCtrl.from_byte(data[4], uplink=uplink),
            f_opts=data[7:],
        )

    def to_bytes(self, *, uplink: bool) -> bytes:
        return (
            self.dev_addr.to_bytes(4, "little")
            + _ONE_BYTE[self.f_ctrl.to_byte(len(self.f_opts), uplink=uplink)]
            + self.f_cnt.to_bytes(2, "little")
            + self.f_opts
        )


def _full_fcnt(fhdr: Fhdr, f_cnt: int | None) -> int:
    if f_cnt is None:
        return fhdr.f_cnt
    _check_uint("FCnt", f_cnt, 32)
    if f_cnt & 0xFFFF != fhdr.f_cnt:
        raise LorawanError(f"FCnt {f_cnt} does not end in the frame's 16 bits {fhdr.f_cnt}")
    return f_cnt


@dataclass(frozen=True, slots=True)
class DataFrame:
    """An (un)confirmed data up/down frame (LoRaWAN 1.0.3 section 4.3)::

        offset  0      1               1+len(FHDR)   +1                    n-4
                MHDR   FHDR            FPort         FRMPayload            MIC
        bytes   1      7..22           0 or 1        0..n-13 (encrypted)   4

    MHDR is 0x40 / 0x60 / 0x80 / 0xA0 (Major 0). FPort is absent (None) exactly when the frame
    ends after the FHDR; it may be present with an empty FRMPayload. FPort 0 carries MAC
    commands in FRMPayload and then FOpts must be empty. ``frm_payload`` is kept as sent
    (encrypted); :meth:`build` and :meth:`decrypt` go between it and plaintext.
    """

    mtype: MType
    fhdr: Fhdr
    f_port: int | None = None
    frm_payload: bytes = b""
    mic: bytes = bytes(_MIC_LEN)

    def __post_init__(self) -> None:
        _check_uint("MType", self.mtype, 3)
        if not 2 <= self.mtype <= 5:
            raise LorawanError(f"MType {self.mtype} is not a data frame type (2..5)")
        object.__setattr__(self, "mtype", _MTYPES[self.mtype])
        if not isinstance(self.fhdr, Fhdr):
            raise LorawanError(f"fhdr must be an Fhdr, got {self.fhdr!r}")
        if not isinstance(self.frm_payload, bytes):
            raise LorawanError(f"FRMPayload must be bytes, got {self.frm_payload!r}")
        _check_bytes("MIC", self.mic, (_MIC_LEN,))
        if self.f_port is None:
            if self.frm_payload:
                raise LorawanError("FRMPayload needs an FPort (None given)")
        else:
            _check_uint("FPort", self.f_port, 8)
            if self.f_port == 0 and self.fhdr.f_opts:
                raise LorawanError(
                    "FPort 0 (MAC commands in FRMPayload) forbids FOpts (LoRaWAN 1.0.3 4.3.1.6)"
                )
        # Checked here so a frame that cannot be sent cannot be built either.
        self.fhdr.f_ctrl.to_byte(len(self.fhdr.f_opts), uplink=self.uplink)
        size = 12 + len(self.fhdr.f_opts) + (self.f_port is not None) + len(self.frm_payload)
        if size > MAX_PHY_PAYLOAD:
            raise LorawanError(f"the frame would be {size} bytes; LoRa carries at most 255")

    @property
    def uplink(self) -> bool:
        return self.mtype in (MType.UNCONFIRMED_DATA_UP, MType.CONFIRMED_DATA_UP)

    @property
    def confirmed(self) -> bool:
        return self.mtype in (MType.CONFIRMED_DATA_UP, MType.CONFIRMED_DATA_DOWN)

    @classmethod
    def from_bytes(cls, phy: bytes) -> DataFrame:
        """Parse a data frame PHYPayload; see the class docstring for the layout."""
        phy = bytes(phy)
        size = len(phy)
        if size < _DATA_MIN or size > MAX_PHY_PAYLOAD:
            raise _error(f"a data frame is 12 to 255 bytes, got {size}", phy)
        mhdr = _parse_mhdr(phy)
        if not mhdr.mtype.is_data:
            raise _error(f"MType {mhdr.mtype.spec_name} is not a data frame", phy, 0)
        uplink = mhdr.mtype.uplink
        fhdr_end = 8 + (phy[5] & 0x0F)
        mic_at = size - _MIC_LEN
        if fhdr_end > mic_at:
            raise _error(
                f"FOptsLen {phy[5] & 0x0F} runs past the MIC ({mic_at - 8} bytes left)", phy, 5
            )
        f_port: int | None = None
        if fhdr_end < mic_at:
            f_port = phy[fhdr_end]
            if f_port == 0 and fhdr_end > 8:
                raise _error("FPort 0 with FOpts (LoRaWAN 1.0.3 4.3.1.6)", phy, fhdr_end)
        return cls(
            mtype=mhdr.mtype,
            fhdr=Fhdr(
                dev_addr=int.from_bytes(phy[1:5], "little"),
                f_cnt=int.from_bytes(phy[6:8], "little"),
                f_ctrl=FCtrl.from_byte(phy[5], uplink=uplink),
                f_opts=phy[8:fhdr_end],
            ),
            f_port=f_port,
            frm_payload=phy[fhdr_end + 1 : mic_at],
            mic=phy[mic_at:],
        )

    def _msg(self) -> bytes:
        port = b"" if self.f_port is None else _ONE_BYTE[self.f_port]
        return _ONE_BYTE[self.mtype << 5] + self.fhdr.to_bytes(uplink=self.uplink) + port

    def to_bytes(self) -> bytes:
        return self._msg() + self.frm_payload + self.mic

    def compute_mic(self, keys: SessionKeys, f_cnt: int | None = None) -> bytes:
        """The MIC this frame should carry; ``f_cnt`` is the 32-bit counter (default: the
        16 bits on air, upper bits zero) and must end in the frame's 16 bits."""
        return data_mic(
            keys.mic_key(),
            self._msg() + self.frm_payload,
            dev_addr=self.fhdr.dev_addr,
            f_cnt=_full_fcnt(self.fhdr, f_cnt),
            uplink=self.uplink,
        )

    def verify_mic(self, keys: SessionKeys, f_cnt: int | None = None) -> None:
        """Raise :class:`MicError` unless the MIC matches (see :meth:`compute_mic`)."""
        expected = self.compute_mic(keys, f_cnt)
        if not hmac.compare_digest(expected, self.mic):
            raise MicError(
                f"data frame MIC {self.mic.hex()} does not match (expected with this NwkSKey "
                f"and FCnt {_full_fcnt(self.fhdr, f_cnt)}): {_hex(self.to_bytes())}"
            )

    def decrypt(self, keys: SessionKeys, f_cnt: int | None = None) -> bytes:
        """The plaintext FRMPayload (b"" when there is none)."""
        if self.f_port is None:
            return b""
        return encrypt_frm_payload(
            keys.payload_key(self.f_port),
            self.frm_payload,
            dev_addr=self.fhdr.dev_addr,
            f_cnt=_full_fcnt(self.fhdr, f_cnt),
            uplink=self.uplink,
        )

    @classmethod
    def build(
        cls,
        keys: SessionKeys,
        *,
        mtype: MType,
        dev_addr: int,
        f_cnt: int,
        payload: bytes = b"",
        f_port: int | None = None,
        f_ctrl: FCtrl = FCtrl(),
        f_opts: bytes = b"",
    ) -> DataFrame:
        """A data frame with ``payload`` (plaintext) encrypted and the MIC computed.

        ``f_cnt`` is the full 32-bit counter; its low 16 bits go on air.
        """
        _check_uint("FCnt", f_cnt, 32)
        if not isinstance(payload, bytes):
            raise LorawanError(f"payload must be bytes, got {payload!r}")
        fhdr = Fhdr(dev_addr=dev_addr, f_cnt=f_cnt & 0xFFFF, f_ctrl=f_ctrl, f_opts=f_opts)
        draft = cls(mtype=mtype, fhdr=fhdr, f_port=f_port, frm_payload=payload)
        sealed = cls(mtype, fhdr, f_port, draft.decrypt(keys, f_cnt))
        return cls(mtype, fhdr, f_port, sealed.frm_payload, sealed.compute_mic(keys, f_cnt))


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A join request (LoRaWAN 1.0.3 section 6.2.4), 23 bytes, sent in clear::

        offset  0      1              9              17             19
                MHDR   JoinEUI        DevEUI         DevNonce       MIC
        bytes   1      8 (LE)         8 (LE)         2 (LE)         4

    MHDR is 0x00. MIC = AES-CMAC(AppKey, MHDR | JoinEUI | DevEUI | DevNonce)[0:4].
    """

    mtype: ClassVar[MType] = MType.JOIN_REQUEST
    join_eui: int
    dev_eui: int
    dev_nonce: int
    mic: bytes = bytes(_MIC_LEN)

    def __post_init__(self) -> None:
        _check_uint("JoinEUI", self.join_eui, 64)
        _check_uint("DevEUI", self.dev_eui, 64)
        _check_uint("DevNonce", self.dev_nonce, 16)
        _check_bytes("MIC", self.mic, (_MIC_LEN,))

    @classmethod
    def from_bytes(cls, phy: bytes) -> JoinRequest:
        """Parse a join request PHYPayload."""
        phy = bytes(phy)
        if len(phy) != _JOIN_REQUEST_LEN:
            raise _error(f"a join request is 23 bytes, got {len(phy)}", phy)
        if phy[0] != 0x00:
            raise _error(f"a join request starts with MHDR 00, not {phy[0]:02x}", phy, 0)
        return cls(
            join_eui=int.from_bytes(phy[1:9], "little"),
            dev_eui=int.from_bytes(phy[9:17], "little"),
            dev_nonce=int.from_bytes(phy[17:19], "little"),
            mic=phy[19:],
        )

    def _msg(self) -> bytes:
        return (
            b"\x00"
            + self.join_eui.to_bytes(8, "little")
            + self.dev_eui.to_bytes(8, "little")
            + self.dev_nonce.to_bytes(2, "little")
        )

    def to_bytes(self) -> bytes:
        return self._msg() + self.mic

    def compute_mic(self, app_key: AesKey) -> bytes:
        return app_key.cmac(self._msg())[:_MIC_LEN]

    def verify_mic(self, app_key: AesKey) -> None:
        """Raise :class:`MicError` unless the MIC matches this AppKey."""
        if not hmac.compare_digest(self.compute_mic(app_key), self.mic):
            raise MicError(f"join request MIC {self.mic.hex()} does not match this AppKey")

    @classmethod
    def build(cls, app_key: AesKey, *, join_eui: int, dev_eui: int, dev_nonce: int) -> JoinRequest:
        """A join request with its MIC computed."""
        draft = cls(join_eui, dev_eui, dev_nonce)
        return cls(join_eui, dev_eui, dev_nonce, draft.compute_mic(app_key))


@dataclass(frozen=True, slots=True)
class JoinAccept:
    """A join accept in clear (LoRaWAN 1.0.3 section 6.2.5), 17 or 33 bytes::

        offset  0     1           4        7          11          12        13        13/29
                MHDR  JoinNonce   NetID    DevAddr    DLSettings  RxDelay   [CFList]  MIC
        bytes   1     3 (LE)      3 (LE)   4 (LE)     1           1         0 or 16   4

    MHDR is 0x20. MIC = AES-CMAC(AppKey, MHDR | JoinNonce ... CFList)[0:4]. On air everything
    after the MHDR is encrypted: see :meth:`encrypt` and :class:`EncryptedJoinAccept`.
    DLSettings: bit 7 RFU (OptNeg in 1.1), bits 6..4 RX1DROffset, 3..0 RX2DataRate. RxDelay:
    bits 3..0 the RX1 delay in seconds (0 means 1). CFList: 16 bytes, region-specific.
    """

    mtype: ClassVar[MType] = MType.JOIN_ACCEPT
    join_nonce: int
    net_id: int
    dev_addr: int
    dl_settings: int = 0
    rx_delay: int = 0
    cf_list: bytes | None = None
    mic: bytes = bytes(_MIC_LEN)

    def __post_init__(self) -> None:
        _check_uint("JoinNonce", self.join_nonce, 24)
        _check_uint("NetID", self.net_id, 24)
        _check_uint("DevAddr", self.dev_addr, 32)
        _check_uint("DLSettings", self.dl_settings, 8)
        _check_uint("RxDelay", self.rx_delay, 8)
        if self.cf_list is not None:
            _check_bytes("CFList", self.cf_list, (16,))
        _check_bytes("MIC", self.mic, (_MIC_LEN,))

    @property
    def rx1_dr_offset(self) -> int:
        return (self.dl_settings >> 4) & 0x07

    @property
    def rx2_data_rate(self) -> int:
        return self.dl_settings & 0x0F

    @property
    def rx1_delay_s(self) -> int:
        return (self.rx_delay & 0x0F) or 1

    @classmethod
    def from_bytes(cls, phy: bytes) -> JoinAccept:
        """Parse a join accept PHYPayload *in clear* (after :meth:`EncryptedJoinAccept.decrypt`)."""
        phy = bytes(phy)
        if len(phy) not in _JOIN_ACCEPT_LENS:
            raise _error(f"a join accept is 17 or 33 bytes, got {len(phy)}", phy)
        if phy[0] != 0x20:
            raise _error(f"a join accept starts with MHDR 20, not {phy[0]:02x}", phy, 0)
        return cls(
            join_nonce=int.from_bytes(phy[1:4], "little"),
            net_id=int.from_bytes(phy[4:7], "little"),
            dev_addr=int.from_bytes(phy[7:11], "little"),
            dl_settings=phy[11],
            rx_delay=phy[12],
            cf_list=phy[13:29] if len(phy) == 33 else None,
            mic=phy[-_MIC_LEN:],
        )

    def _msg(self) -> bytes:
        return (
            b"\x20"
            + self.join_nonce.to_bytes(3, "little")
            + self.net_id.to_bytes(3, "little")
            + self.dev_addr.to_bytes(4, "little")
            + _ONE_BYTE[self.dl_settings]
            + _ONE_BYTE[self.rx_delay]
            + (self.cf_list or b"")
        )

    def to_bytes(self) -> bytes:
        """The join accept in clear (not what goes on air: see :meth:`encrypt`)."""
        return self._msg() + self.mic

    def compute_mic(self, app_key: AesKey) -> bytes:
        return app_key.cmac(self._msg())[:_MIC_LEN]

    def verify_mic(self, app_key: AesKey) -> None:
        """Raise :class:`MicError` unless the MIC matches this AppKey."""
        if not hmac.compare_digest(self.compute_mic(app_key), self.mic):
            raise MicError(f"join accept MIC {self.mic.hex()} does not match this AppKey")

    def encrypt(self, app_key: AesKey) -> bytes:
        """The PHYPayload to send: MHDR, then AES-ECB *decrypt* of the rest under AppKey, so
        that the device only needs the AES encrypt operation (LoRaWAN 1.0.3 section 6.2.5)."""
        plain = self.to_bytes()
        return plain[:1] + app_key.decrypt(plain[1:])

    @classmethod
    def build(
        cls,
        app_key: AesKey,
        *,
        join_nonce: int,
        net_id: int,
        dev_addr: int,
        dl_settings: int = 0,
        rx_delay: int = 0,
        cf_list: bytes | None = None,
    ) -> JoinAccept:
        """A join accept (in clear) with its MIC computed; :meth:`encrypt` it to send it."""
        draft = cls(join_nonce, net_id, dev_addr, dl_settings, rx_delay, cf_list)
        mic = draft.compute_mic(app_key)
        return cls(join_nonce, net_id, dev_addr, dl_settings, rx_delay, cf_list, mic)

    def session_keys(self, app_key: AesKey, dev_nonce: int) -> SessionKeys:
        """The session keys this accept sets up with the join request's ``dev_nonce``."""
        return derive_session_keys(app_key, self.join_nonce, self.net_id, dev_nonce)


@dataclass(frozen=True, slots=True)
class EncryptedJoinAccept:
    """A join accept as received, everything after the MHDR (0x20) still encrypted::

    offset  0      1
            MHDR   AES-ECB-decrypt(AppKey, JoinNonce ... MIC)
    bytes   1      16 or 32
    """

    mtype: ClassVar[MType] = MType.JOIN_ACCEPT
    ciphertext: bytes

    def __post_init__(self) -> None:
        _check_bytes("join accept ciphertext", self.ciphertext, (16, 32))

    @classmethod
    def from_bytes(cls, phy: bytes) -> EncryptedJoinAccept:
        phy = bytes(phy)
        if len(phy) not in _JOIN_ACCEPT_LENS:
            raise _error(f"a join accept is 17 or 33 bytes, got {len(phy)}", phy)
        if phy[0] != 0x20:
            raise _error(f"a join accept starts with MHDR 20, not {phy[0]:02x}", phy, 0)
        return cls(phy[1:])

    def to_bytes(self) -> bytes:
        return b"\x20" + self.ciphertext

    def decrypt(self, app_key: AesKey) -> JoinAccept:
        """The join accept in clear (AES-ECB encrypt undoes the network's decrypt). The MIC is
        not checked here: call :meth:`JoinAccept.verify_mic`."""
        return JoinAccept.from_bytes(b"\x20" + app_key.encrypt(self.ciphertext))


def derive_session_keys(
    app_key: AesKey, join_nonce: int, net_id: int, dev_nonce: int
) -> SessionKeys:
    """NwkSKey and AppSKey of a 1.0.x join (LoRaWAN 1.0.3 section 6.2.5):
    AES(AppKey, 0x01 | JoinNonce | NetID | DevNonce | zero padding), and 0x02 for AppSKey."""
    _check_uint("JoinNonce", join_nonce, 24)
    _check_uint("NetID", net_id, 24)
    _check_uint("DevNonce", dev_nonce, 16)
    tail = (
        join_nonce.to_bytes(3, "little")
        + net_id.to_bytes(3, "little")
        + dev_nonce.to_bytes(2, "little")
        + bytes(7)
    )
    both = app_key.encrypt(b"\x01" + tail + b"\x02" + tail)
    return SessionKeys(nwk_s_key=both[:16], app_s_key=both[16:])


@dataclass(frozen=True, slots=True)
class OpaqueFrame:
    """A frame whose MACPayload 1.0.x does not define (MType RFU or Proprietary)::

    offset  0      1
            MHDR   payload (kept as is, including any MIC)
    bytes   1      0..254
    """

    mhdr: Mhdr
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.mhdr, Mhdr) or self.mhdr.mtype not in (MType.RFU, MType.PROPRIETARY):
            raise LorawanError(f"an opaque frame is RFU or Proprietary, got {self.mhdr!r}")
        if not isinstance(self.payload, bytes) or len(self.payload) >= MAX_PHY_PAYLOAD:
            raise LorawanError(
                f"an opaque frame's payload is bytes up to 254, got {self.payload!r}"
            )

    @property
    def mtype(self) -> MType:
        return self.mhdr.mtype

    @classmethod
    def from_bytes(cls, phy: bytes) -> OpaqueFrame:
        phy = bytes(phy)
        if not phy or len(phy) > MAX_PHY_PAYLOAD:
            raise _error(f"a PHYPayload is 1 to 255 bytes, got {len(phy)}", phy)
        mhdr = _parse_mhdr(phy)
        if mhdr.mtype not in (MType.RFU, MType.PROPRIETARY):
            raise _error(f"MType {mhdr.mtype.spec_name} is not RFU or Proprietary", phy, 0)
        return cls(mhdr, phy[1:])

    def to_bytes(self) -> bytes:
        return _ONE_BYTE[self.mhdr.to_byte()] + self.payload


Frame: TypeAlias = JoinRequest | EncryptedJoinAccept | DataFrame | OpaqueFrame


def _parse_mhdr(phy: bytes) -> Mhdr:
    try:
        mhdr = Mhdr.from_byte(phy[0])
    except LorawanError as err:
        raise _error(err.message, phy, 0) from err
    if mhdr.major != 0 and mhdr.mtype not in (MType.RFU, MType.PROPRIETARY):
        # LoRaWAN 1.0.3 section 4.2.2: the Major version defines the MACPayload format, and
        # only R1 (0) is defined.
        raise _error(f"MHDR Major {mhdr.major} is not LoRaWAN R1 (0)", phy, 0)
    return mhdr


_PARSERS: Final[dict[MType, Callable[[bytes], Frame]]] = {
    MType.JOIN_REQUEST: JoinRequest.from_bytes,
    MType.JOIN_ACCEPT: EncryptedJoinAccept.from_bytes,
    MType.UNCONFIRMED_DATA_UP: DataFrame.from_bytes,
    MType.UNCONFIRMED_DATA_DOWN: DataFrame.from_bytes,
    MType.CONFIRMED_DATA_UP: DataFrame.from_bytes,
    MType.CONFIRMED_DATA_DOWN: DataFrame.from_bytes,
    MType.RFU: OpaqueFrame.from_bytes,
    MType.PROPRIETARY: OpaqueFrame.from_bytes,
}


def parse(phy: bytes) -> Frame:
    """Parse any PHYPayload by its MType. A join accept stays encrypted
    (:class:`EncryptedJoinAccept`) until decrypted with the AppKey."""
    phy = bytes(phy)
    if not phy or len(phy) > MAX_PHY_PAYLOAD:
        raise _error(f"a PHYPayload is 1 to 255 bytes, got {len(phy)}", phy)
    return _PARSERS[_parse_mhdr(phy).mtype](phy)


# --- The uplink fast path ---------------------------------------------------------------------


class DecodedUplink(NamedTuple):
    """A data uplink whose MIC verified, with its payload decrypted.

    A named tuple rather than a dataclass: it is built once per uplink on the gateway's hot
    path, where a frozen dataclass's ``__init__`` would cost as much as the MIC check.
    """

    mtype: MType
    dev_addr: int
    f_ctrl: int
    """The FCtrl byte as sent (FOptsLen included); see the flag properties."""
    f_cnt: int
    """The widened 32-bit counter the MIC verified with."""
    verdict: FCntVerdict
    f_opts: bytes
    f_port: int | None
    payload: bytes
    """FRMPayload decrypted (b"" without FPort)."""

    @property
    def confirmed(self) -> bool:
        return self.mtype is MType.CONFIRMED_DATA_UP

    @property
    def adr(self) -> bool:
        return bool(self.f_ctrl & 0x80)

    @property
    def adr_ack_req(self) -> bool:
        return bool(self.f_ctrl & 0x40)

    @property
    def ack(self) -> bool:
        return bool(self.f_ctrl & 0x20)

    @property
    def class_b(self) -> bool:
        return bool(self.f_ctrl & 0x10)


_new_tuple = tuple.__new__
_UNCONFIRMED_UP: Final = MType.UNCONFIRMED_DATA_UP
_CONFIRMED_UP: Final = MType.CONFIRMED_DATA_UP
# decode_uplink builds it from eight values in field order.
assert len(DecodedUplink._fields) == 8


def _not_an_uplink(phy: bytes) -> LorawanError:
    frame = parse(phy)  # raises the precise reason when the frame is malformed
    return _error(f"a {frame.mtype.spec_name} frame is not a data uplink", phy, 0)


def decode_uplink(
    phy: bytes,
    keys: SessionKeys,
    last_f_cnt: int | None = None,
    *,
    max_gap: int = MAX_FCNT_GAP,
) -> DecodedUplink:
    """Parse a data uplink, widen its FCnt, verify its MIC and decrypt its FRMPayload.

    ``last_f_cnt`` is the last accepted 32-bit uplink counter of the session (None for a fresh
    one). The result carries the widened counter and its :class:`FCntVerdict`; acting on the
    verdict (and storing the new counter) is the caller's job, as the counter state lives
    with the caller. Raises :class:`LorawanError` for anything but a well-formed data uplink,
    :class:`MicError` when the MIC does not verify with the widened counter.

    Same results as :meth:`DataFrame.from_bytes`, :func:`widen_fcnt`,
    :meth:`DataFrame.verify_mic` and :meth:`DataFrame.decrypt` together, without building the
    intermediate objects.
    """
    size = len(phy)
    # Unconfirmed (0x40) or confirmed (0x80) data up, Major 0, RFU bits clear.
    if size < _DATA_MIN or size > MAX_PHY_PAYLOAD or (phy[0] != 0x40 and phy[0] != 0x80):
        raise _not_an_uplink(bytes(phy))
    f_ctrl = phy[5]
    fhdr_end = 8 + (f_ctrl & 0x0F)
    mic_at = size - _MIC_LEN
    if fhdr_end > mic_at:
        raise _error(
            f"FOptsLen {f_ctrl & 0x0F} runs past the MIC ({mic_at - 8} bytes left)", bytes(phy), 5
        )
    if fhdr_end > 8 and fhdr_end < mic_at and phy[fhdr_end] == 0:
        raise _error("FPort 0 with FOpts (LoRaWAN 1.0.3 4.3.1.6)", bytes(phy), fhdr_end)
    received = phy[6] | phy[7] << 8
    # ``received`` is 16 bits by construction; the caller's counter and gap are checked in
    # full (and the error raised) only when they are not plain integers in range.
    if (
        type(max_gap) is not int
        or not 2 <= max_gap <= 0x10000
        or (
            last_f_cnt is not None
            and (type(last_f_cnt) is not int or not 0 <= last_f_cnt < _U32_END)
        )
    ):
        _check_widen_args(last_f_cnt, received, max_gap)
    f_cnt, verdict = _widen(last_f_cnt, received, max_gap)

    nwk = keys.nwk
    if nwk is None:
        nwk = keys.mic_key()  # raises: no NwkSKey
    dev_addr_le = phy[1:5]
    b0 = _B0_HEAD[True] + dev_addr_le + f_cnt.to_bytes(4, "little") + b"\x00" + _ONE_BYTE[mic_at]
    mic = nwk.cmac(b0 + phy[:mic_at])
    if not hmac.compare_digest(mic[:_MIC_LEN], phy[mic_at:]):
        raise MicError(
            f"data uplink MIC {phy[mic_at:].hex()} does not match (NwkSKey, FCnt {f_cnt}): "
            f"{_hex(bytes(phy))}"
        )

    if fhdr_end == mic_at:
        f_port = None
        payload = b""
    else:
        f_port = phy[fhdr_end]
        key = nwk if f_port == 0 else keys.app
        if key is None:
            key = keys.payload_key(f_port)  # raises: no AppSKey
        payload = _keystream_xor(
            key._update, phy[fhdr_end + 1 : mic_at], _AI_HEAD[True], dev_addr_le, f_cnt
        )
    # tuple.__new__ is what the named tuple's own __new__ ends in, without its Python frame.
    return _new_tuple(
        DecodedUplink,
        (
            _UNCONFIRMED_UP if phy[0] == 0x40 else _CONFIRMED_UP,
            int.from_bytes(dev_addr_le, "little"),
            f_ctrl,
            f_cnt,
            verdict,
            bytes(phy[8:fhdr_end]),
            f_port,
            payload,
        ),
    )


# --- What `owlgate decode lorawan` prints -----------------------------------------------------


def _cf_list(cf_list: bytes) -> dict[str, object]:
    out: dict[str, object] = {"raw": cf_list.hex(), "cf_list_type": cf_list[15]}
    if cf_list[15] == 0:
        # Type 0: five channel frequencies, 3 bytes each (LE), in units of 100 Hz
        # (LoRaWAN 1.0.3 section 6.2.5 / Regional Parameters).
        out["frequencies_hz"] = [
            int.from_bytes(cf_list[i : i + 3], "little") * 100 for i in range(0, 15, 3)
        ]
    return out


def _describe_data(
    frame: DataFrame, nwk_s_key: bytes | None, app_s_key: bytes | None
) -> dict[str, object]:
    flags = frame.fhdr.f_ctrl
    f_ctrl: dict[str, object] = {"adr": flags.adr, "ack": flags.ack}
    if frame.uplink:
        f_ctrl.update(adr_ack_req=flags.adr_ack_req, class_b=flags.class_b)
    else:
        f_ctrl.update(f_pending=flags.f_pending, rfu=flags.rfu)
    f_ctrl["f_opts_len"] = len(frame.fhdr.f_opts)
    out: dict[str, object] = {
        "direction": "up" if frame.uplink else "down",
        "dev_addr": f"{frame.fhdr.dev_addr:08x}",
        "f_ctrl": f_ctrl,
        "f_cnt": frame.fhdr.f_cnt,
        "f_opts": frame.fhdr.f_opts.hex(),
        "f_port": frame.f_port,
        "frm_payload": frame.frm_payload.hex(),
        "mic": frame.mic.hex(),
    }
    keys = SessionKeys(nwk_s_key, app_s_key)
    if keys.nwk is not None:
        # Only 16 bits of the counter are on air: the check assumes the upper 16 are zero.
        out["mic_ok"] = hmac.compare_digest(frame.compute_mic(keys), frame.mic)
        out["mic_f_cnt"] = frame.fhdr.f_cnt
    if frame.f_port is not None:
        payload_key = keys.nwk if frame.f_port == 0 else keys.app
        if payload_key is not None:
            out["payload"] = frame.decrypt(keys).hex()
    return out


def describe(
    phy: bytes,
    nwk_s_key: bytes | None = None,
    app_s_key: bytes | None = None,
    app_key: bytes | None = None,
) -> dict[str, object]:
    """A JSON-ready description of a PHYPayload: every field (bytes as hex, DevAddr and EUIs
    most significant byte first), the MIC check when the key for it is given, the decrypted
    FRMPayload when the key for its FPort is given, and a join accept in clear with the AppKey.

    Session keys are never included (they are secrets, and deriving them needs the join
    request's DevNonce anyway). A data frame's MIC is checked with the upper 16 bits of FCnt
    zero, as only the low 16 bits are on air.
    """
    frame = parse(phy)
    out: dict[str, object] = {"mtype": frame.mtype.spec_name, "phy_payload": bytes(phy).hex()}
    if isinstance(frame, DataFrame):
        out.update(_describe_data(frame, nwk_s_key, app_s_key))
    elif isinstance(frame, JoinRequest):
        out.update(
            join_eui=f"{frame.join_eui:016x}",
            dev_eui=f"{frame.dev_eui:016x}",
            dev_nonce=f"{frame.dev_nonce:04x}",
            mic=frame.mic.hex(),
        )
        if app_key is not None:
            out["mic_ok"] = hmac.compare_digest(frame.compute_mic(AesKey(app_key)), frame.mic)
    elif isinstance(frame, EncryptedJoinAccept):
        out["encrypted"] = frame.ciphertext.hex()
        if app_key is not None:
            key = AesKey(app_key)
            accept = frame.decrypt(key)
            out.update(
                join_nonce=f"{accept.join_nonce:06x}",
                net_id=f"{accept.net_id:06x}",
                dev_addr=f"{accept.dev_addr:08x}",
                dl_settings={
                    "raw": f"{accept.dl_settings:02x}",
                    "rx1_dr_offset": accept.rx1_dr_offset,
                    "rx2_data_rate": accept.rx2_data_rate,
                },
                rx_delay={"raw": f"{accept.rx_delay:02x}", "rx1_delay_s": accept.rx1_delay_s},
                cf_list=None if accept.cf_list is None else _cf_list(accept.cf_list),
                mic=accept.mic.hex(),
                mic_ok=hmac.compare_digest(accept.compute_mic(key), accept.mic),
            )
    else:
        out.update(major=frame.mhdr.major, payload=frame.payload.hex())
    return out
