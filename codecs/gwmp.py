"""Semtech's UDP packet forwarder protocol, GWMP version 2: the datagrams between a packet
forwarder (the gateway) and the server it forwards to, and their JSON objects.

Pure: bytes in, messages out, no sockets and no clocks. The source is PROTOCOL.TXT of the
Lora-net ``packet_forwarder`` (sections 3 to 6); the user guide, with the mapping onto the
concentrator protocol's :class:`~owlgate.codecs.concentrator.RxFrame` and
:class:`~owlgate.codecs.concentrator.TxRequest`, is ``docs/radios/semtech-udp.md``.

Every datagram starts with the same header (PROTOCOL.TXT section 3 onwards)::

    byte 0    1 .. 2   3      4 .. 11            12 ..
    +-------+--------+------+------------------+------------------+
    |version| token  | type | gateway EUI      | JSON (UTF-8)     |
    +-------+--------+------+------------------+------------------+
     0x02    random   id     PUSH_DATA, PULL_DATA, TX_ACK only
                               PUSH_ACK, PULL_ACK: 4 bytes, nothing after the type
                               PULL_RESP: JSON right after the type (byte 4)

The token is drawn at random by the sender of a request and repeated by the answer; it is
written most significant byte first, as the reference forwarder writes it. Version 1 (the
protocol before TX_ACK existed) has the same layout and is accepted; every answer repeats the
version of the datagram it answers.

The datagram types are declared once, in :data:`DATAGRAMS` (id, class, who sends it, header
size, JSON body rule); :func:`decode_datagram` is driven by it. The JSON objects (``rxpk``,
``stat``, ``txpk``, ``txpk_ack``) are declared as key tables the same way: JSON name, kind,
required or not. A key the table does not name is ignored, so the later forwarders' extra
fields (``rsig`` arrays, ``brd``, ``jver``, ``aesk``, ``temp``) do no harm.

A datagram that cannot be read raises :class:`GwmpDatagramError`; readable bytes whose JSON
is not the object it should be raise :class:`GwmpJsonError`. One malformed ``rxpk`` in a
PUSH_DATA does not lose the good ones around it: :attr:`PushData.rejected` lists it instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import Any, Final, TypeAlias, TypeVar

from .concentrator import (
    BANDWIDTHS_HZ,
    CodingRate,
    CrcStatus,
    RxFrame,
    TxAck,
    TxError,
    TxRequest,
)
from .errors import CodecError

__all__ = [
    "DATAGRAMS",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Datagram",
    "DatagramHeader",
    "DatagramSpec",
    "GwmpDatagramError",
    "GwmpError",
    "GwmpJsonError",
    "PacketType",
    "PullAck",
    "PullData",
    "PullResp",
    "PushAck",
    "PushData",
    "Rejected",
    "Rsig",
    "Rxpk",
    "Stat",
    "TxAckDatagram",
    "Txpk",
    "TxpkAck",
    "decode_datagram",
    "format_datr",
    "parse_datr",
    "parse_header",
]

#: The protocol version this module writes (PROTOCOL.TXT, "PROTOCOL_VERSION 2").
PROTOCOL_VERSION: Final = 2
#: Versions read: 1 differs only in having no TX_ACK and no token in PULL_RESP.
SUPPORTED_VERSIONS: Final = frozenset({1, 2})
EUI_SIZE: Final = 8
_SHORT_HEADER_SIZE: Final = 4
_LONG_HEADER_SIZE: Final = _SHORT_HEADER_SIZE + EUI_SIZE
_U16_MAX: Final = 0xFFFF
_U32_MAX: Final = 0xFFFF_FFFF
_SHOW_LIMIT: Final = 48
_HZ_PER_MHZ: Final = 1_000_000
#: SX130x SNR resolution: the concentrator measures it in quarter dB.
_SNR_STEPS_PER_DB: Final = 4
_DATR_LORA: Final = re.compile(r"SF(\d{1,2})BW(\d{1,3})")
_CODR: Final = re.compile(r"4/([5-8])")


class GwmpError(CodecError):
    """Bytes or JSON that do not follow the GWMP protocol."""


class GwmpDatagramError(GwmpError):
    """A datagram whose header or layout is wrong: too short, unknown version or type, extra
    bytes where none belong."""


class GwmpJsonError(GwmpError):
    """A datagram with a good header whose JSON body is not what its type requires, or a JSON
    object (``rxpk``, ``txpk``, ...) with a missing, mistyped or out-of-range field."""


def _show(value: object) -> str:
    # A value in an error message: bytes in hex, anything long cut short.
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        text = raw[:_SHOW_LIMIT].hex()
        return text + (f"... ({len(raw)} bytes)" if len(raw) > _SHOW_LIMIT else "")
    text = repr(value)
    return text if len(text) <= 2 * _SHOW_LIMIT else text[: 2 * _SHOW_LIMIT] + "..."


# --- JSON value kinds -------------------------------------------------------------------------


class _Kind:
    """How one JSON value is checked, read into Python and written back."""

    expected = "a value"

    def fail(self, where: str, value: object) -> GwmpJsonError:
        return GwmpJsonError(f"{where} must be {self.expected}, got {_show(value)}")

    def read(self, value: object, where: str) -> object:
        """The Python value for a JSON value, or GwmpJsonError."""
        raise self.fail(where, value)

    def write(self, value: object) -> object:
        """The JSON value for a Python value."""
        return value


class _Int(_Kind):
    """A JSON integer from ``low`` to ``high``; never a boolean, never ``5.0``."""

    def __init__(self, low: int, high: int, unit: str = "") -> None:
        self.low = low
        self.high = high
        self.expected = f"an integer from {low} to {high}" + (f" ({unit})" if unit else "")

    def read(self, value: object, where: str) -> object:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(where, value)
        if not self.low <= value <= self.high:
            raise self.fail(where, value)
        return value


class _Number(_Kind):
    """A finite JSON number (integer or not) from ``low`` to ``high``."""

    def __init__(self, low: float, high: float, unit: str = "") -> None:
        self.low = low
        self.high = high
        self.expected = f"a number from {low} to {high}" + (f" ({unit})" if unit else "")

    def read(self, value: object, where: str) -> object:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.fail(where, value)
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise self.fail(where, value)
        return value


class _Bool(_Kind):
    expected = "true or false"

    def read(self, value: object, where: str) -> object:
        if not isinstance(value, bool):
            raise self.fail(where, value)
        return value


class _Text(_Kind):
    def __init__(self, high: int = 64) -> None:
        self.expected = f"a string of at most {high} characters"
        self.high = high

    def read(self, value: object, where: str) -> object:
        if not isinstance(value, str) or len(value) > self.high:
            raise self.fail(where, value)
        return value


class _Choice(_Kind):
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.expected = "one of " + ", ".join(f'"{choice}"' for choice in choices)

    def read(self, value: object, where: str) -> object:
        if value not in self.choices:
            raise self.fail(where, value)
        return value


class _DataRate(_Kind):
    """``datr``: a string such as ``"SF7BW125"`` for LoRa, an integer in bit/s for FSK."""

    expected = 'a LoRa data rate such as "SF7BW125" or an FSK bit rate (integer)'

    def read(self, value: object, where: str) -> object:
        if isinstance(value, str) and len(value) <= 16:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1_000_000:
            return value
        raise self.fail(where, value)


class _Base64(_Kind):
    """``data``: the payload in base64 (RFC 4648 section 4), written with padding; read
    without padding too."""

    expected = "a base64 string"

    def __init__(self, high: int) -> None:
        self.high = high

    def read(self, value: object, where: str) -> object:
        if not isinstance(value, str):
            raise self.fail(where, value)
        # The example of PROTOCOL.TXT 4 itself mixes in the URL-safe alphabet ("-" for "+",
        # RFC 4648 section 5); the two alphabets do not clash, so both are read.
        text = value.strip().replace("-", "+").replace("_", "/")
        text += "=" * (-len(text) % 4)
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise self.fail(where, value) from err
        if len(raw) > self.high:
            raise GwmpJsonError(f"{where} holds {len(raw)} bytes, at most {self.high} allowed")
        return raw

    def write(self, value: object) -> object:
        assert isinstance(value, bytes)
        return base64.b64encode(value).decode("ascii")


class _ObjectList(_Kind):
    """An array of objects of one table (the ``rsig`` array of an ``rxpk``)."""

    def __init__(self, reader: Callable[[object, str], object], high: int) -> None:
        self.reader = reader
        self.high = high
        self.expected = f"an array of at most {high} objects"

    def read(self, value: object, where: str) -> object:
        if not isinstance(value, list) or len(value) > self.high:
            raise self.fail(where, value)
        return tuple(self.reader(item, f"{where}[{index}]") for index, item in enumerate(value))

    def write(self, value: object) -> object:
        assert isinstance(value, tuple)
        return [item.to_json() for item in value]


@dataclass(frozen=True, slots=True)
class _Key:
    """One key of a JSON object: its name (also the attribute's), kind, and whether it must
    be present."""

    name: str
    kind: _Kind
    required: bool = False


def _read_object(
    keys: tuple[_Key, ...], value: object, where: str
) -> dict[str, Any]:  # the constructor's keyword arguments
    if not isinstance(value, dict):
        raise GwmpJsonError(f"{where} must be a JSON object, got {_show(value)}")
    out: dict[str, Any] = {}
    for key in keys:
        if key.name not in value or value[key.name] is None:
            if key.required:
                raise GwmpJsonError(f"{where} lacks the required key {key.name!r}")
            continue
        out[key.name] = key.kind.read(value[key.name], f"{where}.{key.name}")
    return out


def _write_object(keys: tuple[_Key, ...], obj: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in keys:
        value = getattr(obj, key.name)
        if value is None or (isinstance(value, tuple) and not value):
            continue
        out[key.name] = key.kind.write(value)
    return out


def _validate(keys: tuple[_Key, ...], obj: object, where: str) -> None:
    # A message built in code meets the same rules as one read from the wire: each value
    # is written as JSON and read back through its kind.
    for key in keys:
        value = getattr(obj, key.name)
        if value is None:
            if key.required:
                raise GwmpJsonError(f"{where} lacks the required key {key.name!r}")
            continue
        key.kind.read(key.kind.write(value), f"{where}.{key.name}")


def _check_size(where: str, size: int, data: bytes) -> None:
    # PROTOCOL.TXT 4 and 6: size is the payload's length in bytes; a mismatch means the
    # object was mangled, and guessing which of the two is right would deliver garbage.
    if size != len(data):
        raise GwmpJsonError(f"{where}.size is {size} but data holds {len(data)} bytes")


# --- data rates and coding rates --------------------------------------------------------------


def parse_datr(datr: str) -> tuple[int, int]:
    """``(sf, bandwidth_hz)`` of a LoRa ``datr`` such as ``"SF7BW125"`` (PROTOCOL.TXT 4:
    "SFnBWm", bandwidth in kHz). Raises :class:`GwmpJsonError` for anything else."""
    match = _DATR_LORA.fullmatch(datr)
    if match is None:
        raise GwmpJsonError(f'datr must look like "SF7BW125", got {_show(datr)}')
    sf = int(match.group(1))
    bandwidth_hz = int(match.group(2)) * 1000
    if not 5 <= sf <= 12 or bandwidth_hz not in BANDWIDTHS_HZ:
        raise GwmpJsonError(
            f"datr {datr!r}: need SF5 to SF12 and a bandwidth of 125, 250 or 500 kHz"
        )
    return sf, bandwidth_hz


def format_datr(sf: int, bandwidth_hz: int) -> str:
    """The ``datr`` string of a LoRa data rate: ``format_datr(7, 125_000) == "SF7BW125"``."""
    return f"SF{sf}BW{bandwidth_hz // 1000}"


def _parse_codr(codr: str | None) -> CodingRate:
    match = _CODR.fullmatch(codr) if codr is not None else None
    if match is None:
        raise GwmpJsonError(f'codr must be "4/5" to "4/8", got {_show(codr)}')
    return CodingRate(int(match.group(1)))


def _hz(freq_mhz: float) -> int:
    # freq is in MHz with up to 6 decimals (PROTOCOL.TXT 4): whole hertz.
    return round(freq_mhz * _HZ_PER_MHZ)


def _mhz(frequency_hz: int) -> float:
    # Division gives the double nearest to the decimal value, which json prints exactly
    # ("868.1"), and _hz() reads back to the same hertz.
    return frequency_hz / _HZ_PER_MHZ


# --- the JSON objects -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Rsig:
    """One antenna's view of a packet, an element of the ``rsig`` array that forwarders of
    gateways with several antennas (SX1301 v2 reference design) send instead of, or beside,
    the top-level ``rssi`` and ``lsnr``."""

    ant: int | None = None
    chan: int | None = None
    rssic: float | None = None  # channel RSSI, dBm
    rssis: float | None = None  # signal RSSI, dBm
    lsnr: float | None = None  # dB
    etime: str | None = None  # encrypted fine timestamp
    foff: int | None = None  # frequency offset, Hz

    def __post_init__(self) -> None:
        _validate(_RSIG_KEYS, self, "rsig")

    @classmethod
    def from_json(cls, value: object, where: str = "rsig") -> Rsig:
        """Read one ``rsig`` element; :class:`GwmpJsonError` names the bad key."""
        return cls(**_read_object(_RSIG_KEYS, value, where))

    def to_json(self) -> dict[str, object]:
        """The JSON object, absent keys left out."""
        return _write_object(_RSIG_KEYS, self)


_RSIG_KEYS: Final = (
    _Key("ant", _Int(0, 255)),
    _Key("chan", _Int(0, 255)),
    _Key("rssic", _Number(-300, 100, "dBm")),
    _Key("rssis", _Number(-300, 100, "dBm")),
    _Key("lsnr", _Number(-100, 100, "dB")),
    _Key("etime", _Text(64)),
    _Key("foff", _Int(-1_000_000, 1_000_000, "Hz")),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rxpk:
    """A received packet, one element of a PUSH_DATA's ``rxpk`` array (PROTOCOL.TXT 4).

    Fields carry the JSON names and units: ``freq`` in MHz, ``tmst`` the concentrator's
    32-bit microsecond counter, ``stat`` the CRC (1 good, -1 bad, 0 none), ``datr`` a string
    for LoRa and bit/s for FSK, ``rssi`` dBm, ``lsnr`` dB, ``data`` the decoded payload.
    """

    time: str | None = None  # UTC, ISO 8601 "compact"
    tmms: int | None = None  # GPS time, ms since 1980-01-06
    tmst: int
    freq: float
    chan: int | None = None
    rfch: int | None = None
    stat: int
    modu: str = "LORA"
    datr: str | int
    codr: str | None = None
    rssi: float | None = None
    lsnr: float | None = None
    rssis: float | None = None
    foff: int | None = None
    brd: int | None = None
    rsig: tuple[Rsig, ...] = ()
    size: int
    data: bytes

    def __post_init__(self) -> None:
        _validate(_RXPK_KEYS, self, "rxpk")
        _check_size("rxpk", self.size, self.data)
        if self.stat not in (-1, 0, 1):
            raise GwmpJsonError(f"rxpk.stat must be 1, 0 or -1, got {_show(self.stat)}")
        if self.modu == "LORA" and not isinstance(self.datr, str):
            raise GwmpJsonError(f"rxpk.datr of a LoRa packet must be a string, got {self.datr}")
        if self.modu == "FSK" and not isinstance(self.datr, int):
            raise GwmpJsonError(f"rxpk.datr of an FSK packet must be bit/s, got {self.datr!r}")

    @classmethod
    def from_json(cls, value: object, where: str = "rxpk") -> Rxpk:
        """Read one ``rxpk`` object; :class:`GwmpJsonError` names the bad key."""
        return cls(**_read_object(_RXPK_KEYS, value, where))

    def to_json(self) -> dict[str, object]:
        """The JSON object, absent keys left out."""
        return _write_object(_RXPK_KEYS, self)

    def to_rx_frame(self) -> RxFrame:
        """The packet as the backends' common :class:`RxFrame`.

        ``tmst`` becomes ``timestamp_us``, ``freq`` whole hertz, ``datr`` and ``codr`` the
        spreading factor, bandwidth and coding rate, ``stat`` the CRC status. RSSI and SNR come
        from the top-level ``rssi``/``lsnr``, else from the ``rsig`` entry with the strongest
        channel RSSI; the SNR is rounded to the concentrator's 0.25 dB steps. Raises
        :class:`GwmpJsonError` for what an RxFrame cannot carry (FSK, no RSSI, a bandwidth
        other than 125/250/500 kHz, values out of range).
        """
        if self.modu != "LORA" or not isinstance(self.datr, str):
            raise GwmpJsonError(f"rxpk: {self.modu} packets are not carried (LoRa only)")
        sf, bandwidth_hz = parse_datr(self.datr)
        coding_rate = _parse_codr(self.codr)
        rssi, lsnr = self.rssi, self.lsnr
        strongest = max(
            (entry for entry in self.rsig if entry.rssic is not None),
            key=lambda entry: entry.rssic if entry.rssic is not None else -math.inf,
            default=None,
        )
        if rssi is None and strongest is not None:
            rssi = strongest.rssic
        if lsnr is None and strongest is not None:
            lsnr = strongest.lsnr
        if rssi is None or lsnr is None:
            raise GwmpJsonError("rxpk has neither rssi and lsnr nor an rsig entry with them")
        try:
            return RxFrame(
                frequency_hz=_hz(self.freq),
                sf=sf,
                bandwidth_hz=bandwidth_hz,
                coding_rate=coding_rate,
                rssi_dbm=round(rssi),
                snr_db=round(lsnr * _SNR_STEPS_PER_DB) / _SNR_STEPS_PER_DB,
                timestamp_us=self.tmst,
                crc_status=CrcStatus(self.stat),
                payload=self.data,
                channel=self.chan,
                rf_chain=self.rfch,
            )
        except CodecError as err:
            raise GwmpJsonError(f"rxpk does not fit an RxFrame: {err.message}") from err

    @classmethod
    def from_rx_frame(cls, frame: RxFrame, *, time: str | None = None) -> Rxpk:
        """The ``rxpk`` a forwarder would send for ``frame`` (what an emulator sends)."""
        return cls(
            time=time,
            tmst=frame.timestamp_us,
            freq=_mhz(frame.frequency_hz),
            chan=frame.channel,
            rfch=frame.rf_chain,
            stat=int(frame.crc_status),
            modu="LORA",
            datr=format_datr(frame.sf, frame.bandwidth_hz),
            codr=frame.coding_rate.label,
            rssi=frame.rssi_dbm,
            lsnr=frame.snr_db,
            size=len(frame.payload),
            data=frame.payload,
        )


_RXPK_KEYS: Final = (
    _Key("time", _Text(40)),
    _Key("tmms", _Int(0, 2**63 - 1, "ms")),
    _Key("tmst", _Int(0, _U32_MAX, "us"), required=True),
    _Key("freq", _Number(0, 10_000, "MHz"), required=True),
    _Key("chan", _Int(0, 255)),
    _Key("rfch", _Int(0, 255)),
    _Key("stat", _Int(-1, 1), required=True),
    _Key("modu", _Choice("LORA", "FSK"), required=True),
    _Key("datr", _DataRate(), required=True),
    _Key("codr", _Text(8)),
    _Key("rssi", _Number(-300, 100, "dBm")),
    _Key("lsnr", _Number(-100, 100, "dB")),
    _Key("rssis", _Number(-300, 100, "dBm")),
    _Key("foff", _Int(-1_000_000, 1_000_000, "Hz")),
    _Key("brd", _Int(0, 255)),
    _Key("rsig", _ObjectList(Rsig.from_json, 16)),
    _Key("size", _Int(0, 255, "bytes"), required=True),
    _Key("data", _Base64(255), required=True),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stat:
    """The forwarder's status report, the ``stat`` object of a PUSH_DATA (PROTOCOL.TXT 4).

    The counts are those of the last reporting interval (the reference forwarder resets them
    after each report): ``rxnb`` packets received, ``rxok`` with a good CRC, ``rxfw``
    forwarded, ``ackr`` the percentage of upstream datagrams acknowledged, ``dwnb``
    downlinks received, ``txnb`` packets emitted. ``temp`` (SX1302 forwarders) in degC.
    """

    time: str | None = None
    lati: float | None = None
    long: float | None = None
    alti: float | None = None
    rxnb: int | None = None
    rxok: int | None = None
    rxfw: int | None = None
    ackr: float | None = None
    dwnb: int | None = None
    txnb: int | None = None
    temp: float | None = None

    def __post_init__(self) -> None:
        _validate(_STAT_KEYS, self, "stat")

    @classmethod
    def from_json(cls, value: object, where: str = "stat") -> Stat:
        """Read a ``stat`` object; :class:`GwmpJsonError` names the bad key."""
        return cls(**_read_object(_STAT_KEYS, value, where))

    def to_json(self) -> dict[str, object]:
        """The JSON object, absent keys left out."""
        return _write_object(_STAT_KEYS, self)


_STAT_KEYS: Final = (
    _Key("time", _Text(40)),
    _Key("lati", _Number(-90, 90, "degrees")),
    _Key("long", _Number(-180, 180, "degrees")),
    _Key("alti", _Number(-20_000, 100_000, "m")),
    _Key("rxnb", _Int(0, _U32_MAX)),
    _Key("rxok", _Int(0, _U32_MAX)),
    _Key("rxfw", _Int(0, _U32_MAX)),
    _Key("ackr", _Number(0, 100, "%")),
    _Key("dwnb", _Int(0, _U32_MAX)),
    _Key("txnb", _Int(0, _U32_MAX)),
    _Key("temp", _Number(-100, 200, "degC")),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Txpk:
    """A packet to transmit, the ``txpk`` object of a PULL_RESP (PROTOCOL.TXT 6).

    Exactly one of ``imme`` (send at once), ``tmst`` (at that value of the concentrator's
    microsecond counter) and ``tmms`` (GPS time) says when. ``powe`` is in dBm, ``ipol``
    inverts the IQ polarity (LoRaWAN downlinks), ``ncrc`` true sends no PHY CRC, ``prea`` the
    preamble length in symbols.
    """

    imme: bool = False
    tmst: int | None = None
    tmms: int | None = None
    freq: float
    rfch: int = 0
    powe: int | None = None
    modu: str = "LORA"
    datr: str | int
    codr: str | None = None
    fdev: int | None = None
    ipol: bool | None = None
    prea: int | None = None
    size: int
    data: bytes
    ncrc: bool | None = None

    def __post_init__(self) -> None:
        _validate(_TXPK_KEYS, self, "txpk")
        _check_size("txpk", self.size, self.data)
        when = sum((self.imme, self.tmst is not None, self.tmms is not None))
        if when != 1:
            raise GwmpJsonError("txpk needs exactly one of imme true, tmst, tmms")

    @classmethod
    def from_json(cls, value: object, where: str = "txpk") -> Txpk:
        """Read a ``txpk`` object; :class:`GwmpJsonError` names the bad key."""
        return cls(**_read_object(_TXPK_KEYS, value, where))

    def to_json(self) -> dict[str, object]:
        """The JSON object; ``imme`` only when true, absent keys left out."""
        out = _write_object(_TXPK_KEYS, self)
        if not self.imme:
            out.pop("imme", None)
        return out

    @classmethod
    def from_tx_request(cls, request: TxRequest, *, rf_chain: int = 0) -> Txpk:
        """The ``txpk`` for a :class:`TxRequest`: ``timestamp_us`` becomes ``tmst`` (None:
        ``imme``), ``crc`` false becomes ``ncrc`` true, and ``rf_chain`` the ``rfch``."""
        return cls(
            imme=request.timestamp_us is None,
            tmst=request.timestamp_us,
            freq=_mhz(request.frequency_hz),
            rfch=rf_chain,
            powe=request.power_dbm,
            modu="LORA",
            datr=format_datr(request.sf, request.bandwidth_hz),
            codr=request.coding_rate.label,
            ipol=request.invert_polarity,
            prea=request.preamble_symbols,
            size=len(request.payload),
            data=request.payload,
            ncrc=not request.crc,
        )

    def to_tx_request(self, *, token: int = 1, default_power_dbm: int = 14) -> TxRequest:
        """The :class:`TxRequest` this ``txpk`` asks for (what an emulated forwarder checks).

        Absent ``powe`` is ``default_power_dbm``, absent ``ipol`` false and absent ``ncrc``
        false, the reference forwarder's defaults. Raises :class:`GwmpJsonError` for GPS-timed
        or FSK packets and values a TxRequest cannot carry."""
        if self.modu != "LORA" or not isinstance(self.datr, str):
            raise GwmpJsonError(f"txpk: {self.modu} packets are not carried (LoRa only)")
        if self.tmms is not None:
            raise GwmpJsonError("txpk: GPS-timed (tmms) packets are not carried")
        sf, bandwidth_hz = parse_datr(self.datr)
        try:
            return TxRequest(
                timestamp_us=None if self.imme else self.tmst,
                frequency_hz=_hz(self.freq),
                sf=sf,
                bandwidth_hz=bandwidth_hz,
                coding_rate=_parse_codr(self.codr if self.codr is not None else "4/5"),
                power_dbm=self.powe if self.powe is not None else default_power_dbm,
                invert_polarity=bool(self.ipol),
                crc=not self.ncrc,
                payload=self.data,
                preamble_symbols=self.prea,
                token=token,
            )
        except CodecError as err:
            if isinstance(err, GwmpJsonError):
                raise
            raise GwmpJsonError(f"txpk does not fit a TxRequest: {err.message}") from err


_TXPK_KEYS: Final = (
    _Key("imme", _Bool()),
    _Key("tmst", _Int(0, _U32_MAX, "us")),
    _Key("tmms", _Int(0, 2**63 - 1, "ms")),
    _Key("freq", _Number(0, 10_000, "MHz"), required=True),
    _Key("rfch", _Int(0, 255), required=True),
    _Key("powe", _Int(-30, 40, "dBm")),
    _Key("modu", _Choice("LORA", "FSK"), required=True),
    _Key("datr", _DataRate(), required=True),
    _Key("codr", _Text(8)),
    _Key("fdev", _Int(0, 1_000_000, "Hz")),
    _Key("ipol", _Bool()),
    _Key("prea", _Int(0, _U16_MAX, "symbols")),
    _Key("size", _Int(0, 255, "bytes"), required=True),
    _Key("data", _Base64(255), required=True),
    _Key("ncrc", _Bool()),
)

#: ``txpk_ack.error`` strings (PROTOCOL.TXT 6) by :class:`TxError`, whose names they are.
TX_ACK_ERRORS: Final = MappingProxyType({error.name: error for error in TxError})


@dataclass(frozen=True, slots=True, kw_only=True)
class TxpkAck:
    """The ``txpk_ack`` object of a TX_ACK (PROTOCOL.TXT 5.5 and 6): ``error`` the outcome
    (``NONE``: accepted; an absent object, key or empty string mean NONE too). SX1302
    forwarders may add ``warn`` (``"TX_POWER"`` when they lowered the power) and ``value``."""

    error: TxError = TxError.NONE
    warn: str | None = None
    value: float | None = None

    @classmethod
    def from_json(cls, value: object, where: str = "txpk_ack") -> TxpkAck:
        """Read a ``txpk_ack`` object; an unknown error string is a :class:`GwmpJsonError`."""
        raw = _read_object(_TXPK_ACK_KEYS, value, where)
        name = raw.pop("error", "") or "NONE"
        error = TX_ACK_ERRORS.get(name)
        if error is None:
            raise GwmpJsonError(
                f"{where}.error must be one of {', '.join(TX_ACK_ERRORS)}, got {_show(name)}"
            )
        return cls(error=error, **raw)

    def to_json(self) -> dict[str, object]:
        """The JSON object: ``error`` always written, absent keys left out."""
        out: dict[str, object] = {"error": self.error.name}
        out.update(_write_object(_TXPK_ACK_KEYS[1:], self))
        return out

    def to_tx_ack(self, token: int) -> TxAck:
        """The backends' common :class:`TxAck` with ``token``: the same outcome by name."""
        return TxAck(error=self.error, token=token)


_TXPK_ACK_KEYS: Final = (
    _Key("error", _Text(32)),
    _Key("warn", _Text(32)),
    _Key("value", _Number(-1e9, 1e9)),
)


# --- the datagrams ----------------------------------------------------------------------------


class PacketType(IntEnum):
    """The datagram type identifiers, byte 3 of the header (PROTOCOL.TXT 3 to 5)."""

    PUSH_DATA = 0x00
    PUSH_ACK = 0x01
    PULL_DATA = 0x02
    PULL_RESP = 0x03
    PULL_ACK = 0x04
    TX_ACK = 0x05


@dataclass(frozen=True, slots=True)
class DatagramHeader:
    """What comes before the JSON: enough to answer or drop a datagram whose body is bad."""

    version: int
    token: int
    packet_type: PacketType
    gateway_eui: bytes | None  # PUSH_DATA, PULL_DATA and TX_ACK only
    body_offset: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """An object of a PUSH_DATA that could not be read: ``key`` ``"rxpk"`` or ``"stat"``,
    ``index`` its place in the ``rxpk`` array (None for ``stat``), ``problem`` why."""

    key: str
    index: int | None
    problem: str


def _check_header(token: int, eui: bytes | None, version: int) -> None:
    if not 0 <= token <= _U16_MAX:
        raise GwmpDatagramError(f"token must be 0 to {_U16_MAX}, got {token}")
    if eui is not None and len(eui) != EUI_SIZE:
        raise GwmpDatagramError(f"gateway EUI must be {EUI_SIZE} bytes, got {_show(eui)}")
    if version not in SUPPORTED_VERSIONS:
        raise GwmpDatagramError(f"protocol version must be 1 or 2, got {version}")


def _head(version: int, token: int, packet_type: PacketType, eui: bytes | None = None) -> bytes:
    return bytes((version, token >> 8, token & 0xFF, packet_type)) + (eui or b"")


def _dump(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class PushData:
    """Gateway to server: received packets and status (PROTOCOL.TXT 3.2)::

        | 0x02 | token(2) | 0x00 | gateway EUI(8) | {"rxpk":[...],"stat":{...}} |

    ``rejected`` lists the objects that could not be read (the good ones are in ``rxpk``
    and ``stat``); it is not written by :meth:`to_bytes` and not compared.
    """

    token: int
    gateway_eui: bytes
    rxpk: tuple[Rxpk, ...] = ()
    stat: Stat | None = None
    rejected: tuple[Rejected, ...] = field(default=(), compare=False)
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _check_header(self.token, self.gateway_eui, self.version)

    @classmethod
    def from_bytes(cls, data: bytes) -> PushData:
        """Decode a PUSH_DATA datagram (see :func:`decode_datagram` for the errors)."""
        return _expect(decode_datagram(data), cls)

    def to_bytes(self) -> bytes:
        """The datagram; ``rxpk`` and ``stat`` are written only when present."""
        body: dict[str, object] = {}
        if self.rxpk:
            body["rxpk"] = [rxpk.to_json() for rxpk in self.rxpk]
        if self.stat is not None:
            body["stat"] = self.stat.to_json()
        head = _head(self.version, self.token, PacketType.PUSH_DATA, self.gateway_eui)
        return head + _dump(body)

    @classmethod
    def _from_body(cls, header: DatagramHeader, body: object) -> PushData:
        if not isinstance(body, dict):
            raise GwmpJsonError(f"PUSH_DATA JSON must be an object, got {_show(body)}")
        items = body.get("rxpk", [])
        if not isinstance(items, list):
            raise GwmpJsonError(f"PUSH_DATA rxpk must be an array, got {_show(items)}")
        good: list[Rxpk] = []
        rejected: list[Rejected] = []
        for index, item in enumerate(items):
            try:
                good.append(Rxpk.from_json(item, f"rxpk[{index}]"))
            except GwmpJsonError as err:
                rejected.append(Rejected("rxpk", index, err.message))
        stat = None
        if body.get("stat") is not None:
            try:
                stat = Stat.from_json(body["stat"])
            except GwmpJsonError as err:
                rejected.append(Rejected("stat", None, err.message))
        assert header.gateway_eui is not None
        return cls(
            token=header.token,
            gateway_eui=header.gateway_eui,
            rxpk=tuple(good),
            stat=stat,
            rejected=tuple(rejected),
            version=header.version,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PushAck:
    """Server to gateway, the answer to a PUSH_DATA (PROTOCOL.TXT 3.3)::

    | 0x02 | token(2) | 0x01 |
    """

    token: int
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _check_header(self.token, None, self.version)

    @classmethod
    def from_bytes(cls, data: bytes) -> PushAck:
        """Decode a PUSH_ACK datagram."""
        return _expect(decode_datagram(data), cls)

    def to_bytes(self) -> bytes:
        """The 4-byte datagram."""
        return _head(self.version, self.token, PacketType.PUSH_ACK)

    @classmethod
    def _from_body(cls, header: DatagramHeader, body: object) -> PushAck:
        return cls(token=header.token, version=header.version)


@dataclass(frozen=True, slots=True, kw_only=True)
class PullData:
    """Gateway to server, the keep-alive that opens the downlink path (PROTOCOL.TXT 5.2)::

    | 0x02 | token(2) | 0x02 | gateway EUI(8) |
    """

    token: int
    gateway_eui: bytes
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _check_header(self.token, self.gateway_eui, self.version)

    @classmethod
    def from_bytes(cls, data: bytes) -> PullData:
        """Decode a PULL_DATA datagram."""
        return _expect(decode_datagram(data), cls)

    def to_bytes(self) -> bytes:
        """The 12-byte datagram."""
        return _head(self.version, self.token, PacketType.PULL_DATA, self.gateway_eui)

    @classmethod
    def _from_body(cls, header: DatagramHeader, body: object) -> PullData:
        assert header.gateway_eui is not None
        return cls(token=header.token, gateway_eui=header.gateway_eui, version=header.version)


@dataclass(frozen=True, slots=True, kw_only=True)
class PullAck:
    """Server to gateway, the answer to a PULL_DATA (PROTOCOL.TXT 5.3)::

    | 0x02 | token(2) | 0x04 |
    """

    token: int
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _check_header(self.token, None, self.version)

    @classmethod
    def from_bytes(cls, data: bytes) -> PullAck:
        """Decode a PULL_ACK datagram."""
        return _expect(decode_datagram(data), cls)

    def to_bytes(self) -> bytes:
        """The 4-byte datagram."""
        return _head(self.version, self.token, PacketType.PULL_ACK)

    @classmethod
    def _from_body(cls, header: DatagramHeader, body: object) -> PullAck:
        return cls(token=header.token, version=header.version)


@dataclass(frozen=True, slots=True, kw_only=True)
class PullResp:
    """Server to gateway: a packet to transmit (PROTOCOL.TXT 5.4); in version 2 the token is
    the one the gateway's TX_ACK repeats::

        | 0x02 | token(2) | 0x03 | {"txpk":{...}} |
    """

    token: int
    txpk: Txpk
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _check_header(self.token, None, self.version)

    @classmethod
    def from_bytes(cls, data: bytes) -> PullResp:
        """Decode a PULL_RESP datagram."""
        return _expect(decode_datagram(data), cls)

    def to_bytes(self) -> bytes:
        """The datagram."""
        head = _head(self.version, self.token, PacketType.PULL_RESP)
        return head + _dump({"txpk": self.txpk.to_json()})

    @classmethod
    def _from_body(cls, header: DatagramHeader, body: object) -> PullResp:
        if not isinstance(body, dict) or "txpk" not in body:
            raise GwmpJsonError(f"PULL_RESP JSON must be an object with txpk, got {_show(body)}")
        return cls(token=header.token, txpk=Txpk.from_json(body["txpk"]), version=header.version)


@dataclass(frozen=True, slots=True, kw_only=True)
class TxAckDatagram:
    """Gateway to server, the outcome of a PULL_RESP (PROTOCOL.TXT 5.5, version 2 only)::

        | 0x02 | token(2) | 0x05 | gateway EUI(8) | {"txpk_ack":{"error":"..."}} or nothing |

    The JSON is optional: none, an empty object or an empty error all mean NONE.
    ``ack_json`` says whether a body was sent (the bytes are then written back the same way).
    """

    token: int
    gateway_eui: bytes
    ack: TxpkAck = field(default_factory=TxpkAck)
    ack_json: bool = True
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _check_header(self.token, self.gateway_eui, self.version)

    @classmethod
    def from_bytes(cls, data: bytes) -> TxAckDatagram:
        """Decode a TX_ACK datagram."""
        return _expect(decode_datagram(data), cls)

    def to_bytes(self) -> bytes:
        """The datagram, with its ``txpk_ack`` object when ``ack_json``."""
        head = _head(self.version, self.token, PacketType.TX_ACK, self.gateway_eui)
        return head + (_dump({"txpk_ack": self.ack.to_json()}) if self.ack_json else b"")

    @classmethod
    def _from_body(cls, header: DatagramHeader, body: object) -> TxAckDatagram:
        assert header.gateway_eui is not None
        ack = TxpkAck()
        if body is not None:
            if not isinstance(body, dict):
                raise GwmpJsonError(f"TX_ACK JSON must be an object, got {_show(body)}")
            if body.get("txpk_ack") is not None:
                ack = TxpkAck.from_json(body["txpk_ack"])
        return cls(
            token=header.token,
            gateway_eui=header.gateway_eui,
            ack=ack,
            ack_json=body is not None,
            version=header.version,
        )


Datagram: TypeAlias = PushData | PushAck | PullData | PullAck | PullResp | TxAckDatagram


class _Body(IntEnum):
    NONE = 0  # nothing after the header: the datagram has exactly its header's size
    REQUIRED = 1
    OPTIONAL = 2


@dataclass(frozen=True, slots=True)
class DatagramSpec:
    """One row of :data:`DATAGRAMS`: a datagram type, its class, who sends it, whether the
    gateway EUI follows the type byte, and whether JSON follows the header."""

    packet_type: PacketType
    cls: type[Datagram]
    from_gateway: bool
    has_eui: bool
    body: _Body

    @property
    def header_size(self) -> int:
        """Bytes before the JSON: 12 with the EUI, 4 without."""
        return _LONG_HEADER_SIZE if self.has_eui else _SHORT_HEADER_SIZE


#: Every datagram type, once (PROTOCOL.TXT 3 to 5).
DATAGRAMS: Final = (
    DatagramSpec(PacketType.PUSH_DATA, PushData, True, True, _Body.REQUIRED),
    DatagramSpec(PacketType.PUSH_ACK, PushAck, False, False, _Body.NONE),
    DatagramSpec(PacketType.PULL_DATA, PullData, True, True, _Body.NONE),
    DatagramSpec(PacketType.PULL_RESP, PullResp, False, False, _Body.REQUIRED),
    DatagramSpec(PacketType.PULL_ACK, PullAck, False, False, _Body.NONE),
    DatagramSpec(PacketType.TX_ACK, TxAckDatagram, True, True, _Body.OPTIONAL),
)
_BY_TYPE: Final = {int(spec.packet_type): spec for spec in DATAGRAMS}


def parse_header(data: bytes) -> DatagramHeader:
    """The header of a datagram, the JSON unchecked; :class:`GwmpDatagramError` when the
    bytes are not a GWMP datagram (too short, unknown version or type, wrong size)."""
    raw = bytes(data)
    if len(raw) < _SHORT_HEADER_SIZE:
        raise GwmpDatagramError(
            f"a datagram has at least {_SHORT_HEADER_SIZE} bytes, got {len(raw)}: {_show(raw)}"
        )
    version, token, type_id = raw[0], int.from_bytes(raw[1:3], "big"), raw[3]
    if version not in SUPPORTED_VERSIONS:
        raise GwmpDatagramError(f"unknown protocol version {version}: {_show(raw)}", 0)
    spec = _BY_TYPE.get(type_id)
    if spec is None:
        raise GwmpDatagramError(f"unknown datagram type 0x{type_id:02x}: {_show(raw)}", 3)
    size = spec.header_size
    name = spec.packet_type.name
    if len(raw) < size:
        raise GwmpDatagramError(f"{name} needs {size} header bytes, got {len(raw)}: {_show(raw)}")
    if spec.body is _Body.NONE and len(raw) != size:
        raise GwmpDatagramError(f"{name} is {size} bytes, got {len(raw)}: {_show(raw)}", size)
    eui = raw[_SHORT_HEADER_SIZE:size] if spec.has_eui else None
    return DatagramHeader(version, token, spec.packet_type, eui, size)


def _reject_constant(name: str) -> object:
    raise GwmpJsonError(f"JSON holds {name}, which is not a number GWMP allows")


def decode_datagram(data: bytes) -> Datagram:
    """The datagram in ``data``, any type.

    Raises :class:`GwmpDatagramError` for a bad header or size and :class:`GwmpJsonError`
    for a body that is not UTF-8 JSON of the right shape. A PUSH_DATA whose body is a good
    object still decodes when some of its ``rxpk`` are bad: see :attr:`PushData.rejected`.
    """
    raw = bytes(data)
    header = parse_header(raw)
    spec = _BY_TYPE[header.packet_type]
    body: object = None
    if spec.body is not _Body.NONE:
        # Some forwarders end the JSON with a NUL (a C string written whole): tolerated.
        text = raw[header.body_offset :].rstrip(b"\x00 \t\r\n")
        if text:
            try:
                body = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
            except (ValueError, RecursionError) as err:
                # ValueError covers bad UTF-8, bad JSON and integers too long to convert.
                # The error names the place; the bytes themselves are the caller's to log
                # (at debug level: a body can hold anything).
                raise GwmpJsonError(
                    f"{spec.packet_type.name} body is not JSON ({err}, {len(text)} bytes)",
                    header.body_offset,
                ) from err
        elif spec.body is _Body.REQUIRED:
            raise GwmpJsonError(f"{spec.packet_type.name} has no JSON body", header.body_offset)
    return spec.cls._from_body(header, body)


_D = TypeVar("_D", PushData, PushAck, PullData, PullAck, PullResp, TxAckDatagram)


def _expect(datagram: Datagram, cls: type[_D]) -> _D:
    if not isinstance(datagram, cls):
        raise GwmpDatagramError(f"expected {cls.__name__}, got {type(datagram).__name__}")
    return datagram
