"""RAKwireless RUI3 AT firmware (RAK3172 and relatives): the command table and the line codec.

Pure: bytes in, lines out, no I/O and no timers. The host side is
:class:`owlgate.edge.rak3172_backend.Rak3172Backend`; the module side is
:class:`owlgate.hil.rak3172.EmulatedRak3172`; both are built on this module.

The wire (RUI3 AT Command Manual, "RUI3 AT Command Format") is 115200 8N1 text, one line per
command or reply, each ending in CR LF::

    host    AT+P2P=868100000:7:125:0:8:14<CR><LF>
    module  <CR><LF>OK<CR><LF>

``AT+X=?`` reads a value (answered ``AT+X=<value>`` then the status), ``AT+X=<v>`` sets it,
``AT+X`` runs a command. Every command except ``ATZ`` ends with one status line (``OK``,
``AT_ERROR``, ``AT_BUSY_ERROR``, ...). Unsolicited events start with ``+EVT:``; the ones a
LoRa P2P receiver sees:

- ``+EVT:RXP2P:-30:13:1234ABCD``: a packet, RSSI (dBm) : SNR (dB) : payload in hex (RUI3
  3.2.0 and later);
- ``+EVT:RXP2P, RSSI -30, SNR 13`` then the payload hex on the next line (earlier RUI3; a
  payload line prefixed ``+EVT:`` is accepted as well);
- ``+EVT:TXP2P DONE``: an ``AT+PSEND`` is on the air and finished;
- ``+EVT:RXP2P RECEIVE TIMEOUT``: a timed ``AT+PRECV`` ended without a packet.

After a reset, and after ``AT+NWM`` changes the work mode (the module restarts to apply it),
the firmware prints a banner such as::

    RAKwireless RAK3172-E Example
    ------------------------------------------------------
    Version: RUI_4.0.6_RAK3172-E
    Current Work Mode: LoRa P2P.

:class:`Rui3Decoder` turns any such line into a :class:`Banner`, which is how a restart is
seen. Lines are capped at :data:`MAX_LINE_BYTES`: a flood without line ends is dropped and
reported, it does not grow memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final, TypeAlias

from .errors import CodecError

__all__ = [
    "COMMANDS",
    "MAX_LINE_BYTES",
    "MAX_PAYLOAD_BYTES",
    "PRECV_CONTINUOUS",
    "PRECV_SINGLE",
    "PRECV_STOP",
    "AtCommand",
    "Banner",
    "Echo",
    "Line",
    "Param",
    "ParamKind",
    "Request",
    "RxEvent",
    "RxTimeout",
    "Rui3CommandError",
    "Rui3Decoder",
    "Rui3Error",
    "Rui3LineError",
    "Rui3OverflowError",
    "Status",
    "StatusLine",
    "TxDone",
    "UnknownEvent",
    "ValueLine",
    "command",
    "encode_read",
    "encode_run",
    "encode_set",
    "format_banner",
    "format_rx_event",
    "format_status",
    "format_value",
    "parse_line",
    "parse_request",
    "parse_values",
]

#: A received P2P packet and an AT+PSEND payload are at most 255 bytes (the SX126x FIFO).
MAX_PAYLOAD_BYTES: Final = 255
#: The longest line either side writes is an RX event or AT+PSEND with 255 bytes of hex
#: (510 characters) plus a short prefix; anything longer is not RUI3 output.
MAX_LINE_BYTES: Final = 600
#: AT+PRECV values (RUI3 AT Command Manual, AT+PRECV): 65534 listens continuously, 65535
#: until one packet arrives, 0 stops receiving (the radio can then transmit).
PRECV_CONTINUOUS: Final = 65534
PRECV_SINGLE: Final = 65535
PRECV_STOP: Final = 0

_LINE_END: Final = b"\n"
_EVENT_PREFIX: Final = "+EVT:"
_SHOW_LIMIT: Final = 80
#: Line starts that only a booting module prints (its banner and version lines).
_BANNER_PREFIXES: Final = (
    "RAKwireless",
    "RAK3172",
    "RUI_",
    "Version: RUI",
    "Current Work Mode",
    "-----",
)


# --- errors -----------------------------------------------------------------------------------


class Rui3Error(CodecError):
    """Text that does not follow the RUI3 AT format."""


class Rui3LineError(Rui3Error):
    """A line from the module that is no RUI3 output (or an event with bad fields); ``line``
    is the offending line as received (cut short in the message)."""

    def __init__(self, message: str, line: str) -> None:
        super().__init__(f"{message}: {_show(line)}")
        self.line = line


class Rui3OverflowError(Rui3LineError):
    """A line longer than :data:`MAX_LINE_BYTES`, dropped (``line``: its start)."""


class Rui3CommandError(Rui3Error):
    """A command that cannot be written: unknown name, a form it lacks, a bad argument."""


def _show(line: str) -> str:
    text = repr(line[:_SHOW_LIMIT])
    return text + (f"... ({len(line)} characters)" if len(line) > _SHOW_LIMIT else "")


# --- the command table ------------------------------------------------------------------------


class ParamKind(Enum):
    """How one colon-separated argument is written."""

    INT = "int"
    HEX = "hex"  # bytes as hex digits, MSB first (RUI3 writes upper case, reads either)


@dataclass(frozen=True, slots=True)
class Param:
    """One argument of a set command (or one field of a read value): an integer from
    ``low`` to ``high``, or (``HEX``) ``low`` to ``high`` bytes."""

    name: str
    kind: ParamKind
    low: int
    high: int

    def encode(self, value: int | bytes, where: str) -> str:
        if self.kind is ParamKind.HEX:
            if not isinstance(value, bytes) or not self.low <= len(value) <= self.high:
                raise Rui3CommandError(
                    f"{where} {self.name} must be {self.low} to {self.high} bytes, got {value!r}"
                )
            return value.hex().upper()
        if isinstance(value, bool) or not isinstance(value, int):
            raise Rui3CommandError(f"{where} {self.name} must be an integer, got {value!r}")
        if not self.low <= value <= self.high:
            raise Rui3CommandError(
                f"{where} {self.name} must be from {self.low} to {self.high}, got {value}"
            )
        return str(value)

    def decode(self, text: str, where: str) -> int | bytes:
        if self.kind is ParamKind.HEX:
            raw = _hex(text)
            if raw is None or not self.low <= len(raw) <= self.high:
                raise Rui3LineError(
                    f"{where} {self.name} must be {self.low} to {self.high} bytes of hex", text
                )
            return raw
        number = _int(text)
        if number is None or not self.low <= number <= self.high:
            raise Rui3LineError(
                f"{where} {self.name} must be an integer from {self.low} to {self.high}", text
            )
        return number


@dataclass(frozen=True, slots=True)
class AtCommand:
    """One RUI3 AT command: ``name`` as written after ``AT+`` (empty for the bare ``AT``,
    ``"Z"`` is special-cased as ``ATZ``), whether it can be read (``AT+X=?``), set
    (``AT+X=<params>``) or run (``AT+X``), and the colon-separated ``params`` of a set, which
    are also the fields of the value a read returns."""

    name: str
    readable: bool
    settable: bool
    runnable: bool
    params: tuple[Param, ...]
    summary: str

    @property
    def text(self) -> str:
        """The command as written: ``AT``, ``ATZ``, ``AT+NWM``."""
        if self.name in ("", "Z"):
            return "AT" + self.name
        return "AT+" + self.name


_U16 = 0xFFFF

#: The commands the RAK3172 backend, the node provisioning tool and the emulators use (RUI3 AT
#: Command Manual, sections "General", "LoRaWAN network" (NWM), "LoRaWAN Keys, IDs and EUI"
#: and "LoRa P2P"). The one table every side is driven by.
COMMANDS: Final = (
    AtCommand("", False, False, True, (), "attention: answers OK"),
    AtCommand("Z", False, False, True, (), "reset the MCU (no status line; a banner follows)"),
    # The value is free text (``RUI_4.0.6_RAK3172-E``): read ValueLine.value as it is.
    AtCommand("VER", True, False, False, (), "firmware version"),
    AtCommand(
        "NWM",
        True,
        True,
        False,
        (Param("mode", ParamKind.INT, 0, 2),),
        "work mode: 0 LoRa P2P, 1 LoRaWAN, 2 FSK P2P; a change restarts the module",
    ),
    # LoRaWAN keys and settings (RUI3 AT Command Manual, "LoRaWAN Keys, IDs and EUI" and
    # "LoRaWAN Joining and Sending"): what a provisioning tool writes into a module. RUI3
    # saves each of them to flash as it is set; a read answers the hex in upper case.
    AtCommand(
        "DEVEUI",
        True,
        True,
        False,
        (Param("dev_eui", ParamKind.HEX, 8, 8),),
        "the device EUI (OTAA)",
    ),
    AtCommand(
        "APPEUI",
        True,
        True,
        False,
        (Param("join_eui", ParamKind.HEX, 8, 8),),
        "the JoinEUI (LoRaWAN 1.0.x AppEUI)",
    ),
    AtCommand(
        "APPKEY",
        True,
        True,
        False,
        (Param("app_key", ParamKind.HEX, 16, 16),),
        "the AppKey (OTAA root key)",
    ),
    AtCommand(
        "BAND",
        True,
        True,
        False,
        (Param("band", ParamKind.INT, 0, 12),),
        "the regional plan: 4 EU868 (0 EU433, 1 CN470, 5 US915, 6 AU915, 8 AS923-1 ...)",
    ),
    AtCommand(
        "NJM",
        True,
        True,
        False,
        (Param("mode", ParamKind.INT, 0, 1),),
        "network join mode: 0 ABP, 1 OTAA",
    ),
    # Joining (RUI3 AT Command Manual, "LoRaWAN Joining and Sending"): AT+JOIN answers OK at
    # once; the outcome comes later as +EVT:JOINED or +EVT:JOIN_FAILED_<why>.
    AtCommand(
        "JOIN",
        True,
        True,
        True,
        (
            Param("join", ParamKind.INT, 0, 1),  # 1 join, 0 stop joining
            Param("auto_join", ParamKind.INT, 0, 1),  # join again at every power-up
            Param("interval_s", ParamKind.INT, 7, 255),  # between attempts
            Param("attempts", ParamKind.INT, 0, 255),
        ),
        "join the network (OTAA); then +EVT:JOINED or +EVT:JOIN_FAILED_RX_TIMEOUT",
    ),
    AtCommand(
        "NJS",
        True,
        False,
        False,
        (Param("joined", ParamKind.INT, 0, 1),),
        "network join status: 1 joined, 0 not",
    ),
    AtCommand(
        "P2P",
        True,
        True,
        False,
        (
            Param("frequency_hz", ParamKind.INT, 150_000_000, 960_000_000),
            Param("spreading_factor", ParamKind.INT, 5, 12),
            Param("bandwidth_khz", ParamKind.INT, 125, 500),
            Param("coding_rate", ParamKind.INT, 0, 3),  # 0 = 4/5 .. 3 = 4/8
            Param("preamble", ParamKind.INT, 5, _U16),
            Param("tx_power_dbm", ParamKind.INT, 5, 22),
        ),
        "all P2P radio settings at once",
    ),
    AtCommand(
        "IQINVER",
        True,
        True,
        False,
        (Param("inverted", ParamKind.INT, 0, 1),),
        "P2P IQ inversion (LoRaWAN downlinks are inverted, uplinks are not)",
    ),
    AtCommand(
        "PRECV",
        True,
        True,
        False,
        (Param("window_ms", ParamKind.INT, 0, _U16),),
        "P2P receive: 65534 continuous, 65535 one packet, 0 stop",
    ),
    AtCommand(
        "PSEND",
        False,
        True,
        False,
        (Param("payload", ParamKind.HEX, 1, MAX_PAYLOAD_BYTES),),
        "P2P transmit now; +EVT:TXP2P DONE when sent",
    ),
)

_BY_NAME: Final = {entry.name: entry for entry in COMMANDS}


def command(name: str) -> AtCommand:
    """The table row for ``name`` (``"NWM"``, ``""`` for ``AT``, ``"Z"`` for ``ATZ``)."""
    try:
        return _BY_NAME[name.upper()]
    except KeyError as err:
        raise Rui3CommandError(f"no AT command {name!r} in the table") from err


def encode_read(name: str) -> bytes:
    """``AT+X=?`` with its line end."""
    entry = command(name)
    if not entry.readable:
        raise Rui3CommandError(f"{entry.text} cannot be read")
    return f"{entry.text}=?\r\n".encode()


def encode_set(name: str, *values: int | bytes) -> bytes:
    """``AT+X=v1:v2:...`` with its line end; each value checked against the table."""
    entry = command(name)
    if not entry.settable:
        raise Rui3CommandError(f"{entry.text} cannot be set")
    if len(values) != len(entry.params):
        raise Rui3CommandError(f"{entry.text} takes {len(entry.params)} values, got {len(values)}")
    text = ":".join(
        param.encode(value, entry.text) for param, value in zip(entry.params, values, strict=True)
    )
    return f"{entry.text}={text}\r\n".encode()


def encode_run(name: str) -> bytes:
    """``AT``, ``ATZ`` or ``AT+X`` with its line end."""
    entry = command(name)
    if not entry.runnable:
        raise Rui3CommandError(f"{entry.text} cannot be run")
    return f"{entry.text}\r\n".encode()


def parse_values(name: str, value: str) -> tuple[int | bytes, ...]:
    """The fields of a read value (``"868100000:7:125:0:8:14"`` for P2P) by the table."""
    entry = command(name)
    parts = value.split(":")
    if len(parts) != len(entry.params):
        raise Rui3LineError(f"{entry.text} value needs {len(entry.params)} fields", value)
    return tuple(
        param.decode(part.strip(), entry.text)
        for param, part in zip(entry.params, parts, strict=True)
    )


# --- what the module says ---------------------------------------------------------------------


class Status(Enum):
    """The status line that ends every reply (RUI3 AT Command Manual, "status codes")."""

    OK = "OK"
    AT_ERROR = "AT_ERROR"
    AT_PARAM_ERROR = "AT_PARAM_ERROR"
    AT_BUSY_ERROR = "AT_BUSY_ERROR"
    AT_TEST_PARAM_OVERFLOW = "AT_TEST_PARAM_OVERFLOW"
    AT_NO_CLASSB_ENABLE = "AT_NO_CLASSB_ENABLE"
    AT_NO_NETWORK_JOINED = "AT_NO_NETWORK_JOINED"
    AT_RX_ERROR = "AT_RX_ERROR"
    AT_MODE_NO_SUPPORT = "AT_MODE_NO_SUPPORT"
    AT_COMMAND_NOT_FOUND = "AT_COMMAND_NOT_FOUND"


_STATUSES: Final = {status.value: status for status in Status}


@dataclass(frozen=True, slots=True)
class StatusLine:
    """``OK`` or an error status: the end of a reply."""

    status: Status


@dataclass(frozen=True, slots=True)
class ValueLine:
    """The value of a read: ``AT+NWM=0`` gives ``name="NWM"``, ``value="0"``; a bare value
    line (some commands print the value alone) has ``name`` None."""

    name: str | None
    value: str


@dataclass(frozen=True, slots=True)
class Echo:
    """A command line coming back (echo on, ``ATE``): ``text`` without the line end."""

    text: str


@dataclass(frozen=True, slots=True)
class RxEvent:
    """A received P2P packet, from either firmware style (``legacy`` tells which)."""

    rssi_dbm: int
    snr_db: int
    payload: bytes
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class TxDone:
    """``+EVT:TXP2P DONE``: the packet of the last ``AT+PSEND`` has been sent."""


@dataclass(frozen=True, slots=True)
class RxTimeout:
    """``+EVT:RXP2P RECEIVE TIMEOUT``: a timed receive ended; the radio no longer listens."""


@dataclass(frozen=True, slots=True)
class Banner:
    """One line of the banner a module prints when it boots: it has restarted."""

    text: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """Another ``+EVT:`` line (``+EVT:JOINED`` and the like), passed on as text."""

    text: str


Line: TypeAlias = (
    StatusLine | ValueLine | Echo | RxEvent | TxDone | RxTimeout | Banner | UnknownEvent
)


@dataclass(frozen=True, slots=True)
class _LegacyHeader:
    # ``+EVT:RXP2P, RSSI -30, SNR 13``: the first half of an older firmware's RX event.
    rssi_dbm: int
    snr_db: int
    line: str


def _int(text: str) -> int | None:
    body = text[1:] if text[:1] in ("-", "+") else text
    if not body.isascii() or not body.isdigit():
        return None
    return int(text)


def _hex(text: str) -> bytes | None:
    if len(text) % 2 or not text.isascii():
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


# Radio limits the SX1262 inside a RAK3172 can report (datasheet ranges, with margin).
_RSSI_RANGE: Final = (-200, 30)
_SNR_RANGE: Final = (-64, 63)


def _rx_values(rssi_text: str, snr_text: str, line: str) -> tuple[int, int]:
    rssi = _int(rssi_text.strip())
    snr = _int(snr_text.strip())
    if rssi is None or not _RSSI_RANGE[0] <= rssi <= _RSSI_RANGE[1]:
        raise Rui3LineError(f"RX event RSSI must be an integer from {_RSSI_RANGE} dBm", line)
    if snr is None or not _SNR_RANGE[0] <= snr <= _SNR_RANGE[1]:
        raise Rui3LineError(f"RX event SNR must be an integer from {_SNR_RANGE} dB", line)
    return rssi, snr


def _payload(text: str, line: str) -> bytes:
    raw = _hex(text.strip())
    if raw is None or not 1 <= len(raw) <= MAX_PAYLOAD_BYTES:
        raise Rui3LineError(
            f"RX event payload must be 1 to {MAX_PAYLOAD_BYTES} bytes of hex digits", line
        )
    return raw


def _parse(line: str) -> Line | _LegacyHeader:
    status = _STATUSES.get(line)
    if status is not None:
        return StatusLine(status)
    if line.startswith(_EVENT_PREFIX):
        body = line[len(_EVENT_PREFIX) :]
        if body.startswith("RXP2P:"):
            # RUI3 >= 3.2.0: +EVT:RXP2P:<rssi>:<snr>:<hex>
            fields = body.split(":")
            if len(fields) != 4:
                raise Rui3LineError("RX event needs RSSI:SNR:payload", line)
            rssi, snr = _rx_values(fields[1], fields[2], line)
            return RxEvent(rssi, snr, _payload(fields[3], line))
        if body.startswith("RXP2P,"):
            # Before 3.2.0: +EVT:RXP2P, RSSI <rssi>, SNR <snr>, the payload on the next line.
            parts = [part.strip() for part in body.split(",")]
            if (
                len(parts) != 3
                or not parts[1].startswith("RSSI ")
                or not parts[2].startswith("SNR ")
            ):
                raise Rui3LineError("legacy RX event needs 'RSSI <n>, SNR <n>'", line)
            rssi, snr = _rx_values(parts[1][5:], parts[2][4:], line)
            return _LegacyHeader(rssi, snr, line)
        if body.replace(" ", "") == "TXP2PDONE":
            return TxDone()
        if body.startswith(("RXP2P RECEIVE TIMEOUT", "RXP2P RECEIVE TIME OUT")):
            return RxTimeout()
        if body.startswith(("RXP2P", "TXP2P")):
            raise Rui3LineError("P2P event of no known form", line)
        return UnknownEvent(body)
    if line.startswith(_BANNER_PREFIXES):
        return Banner(line)
    if line.upper().startswith("AT"):
        head, sep, value = line.partition("=")
        if not sep or value in ("?", ""):
            return Echo(line)
        name = head[3:] if head.upper().startswith("AT+") else head[2:]
        if not name or not name.isascii() or not name.replace("_", "").isalnum():
            raise Rui3LineError("value line with no command name", line)
        return ValueLine(name.upper(), value)
    if line.isascii() and line.isprintable():
        # A value alone (a read reply without the echoed name); only a pending read takes it.
        return ValueLine(None, line)
    raise Rui3LineError("not RUI3 output", line)


def parse_line(line: str) -> Line:
    """One complete line (without its line end) as a :class:`Line`.

    A legacy RX header cannot stand alone; :class:`Rui3Decoder` joins it with its payload
    line, and here it raises :class:`Rui3LineError`.
    """
    parsed = _parse(line.strip("\r\n"))
    if isinstance(parsed, _LegacyHeader):
        raise Rui3LineError("legacy RX event without its payload line", line)
    return parsed


class Rui3Decoder:
    """Bytes from the module in, :class:`Line` items (or :class:`Rui3LineError` values for
    bad lines) out, in order. Resynchronises at every line end; a bad line never takes a good
    one with it.

    A legacy RX event's payload is its next non-empty line (hex, with or without ``+EVT:``);
    when the next line is anything else, the header is reported as an error and that line is
    parsed on its own. :attr:`overflows` counts lines dropped for exceeding
    :data:`MAX_LINE_BYTES` (each also reported as an error).
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._discarding = False
        self._legacy: _LegacyHeader | None = None
        self.overflows = 0

    def reset(self) -> None:
        """Forget a partial line (a new connection)."""
        self._buffer.clear()
        self._discarding = False
        self._legacy = None

    def feed(self, data: bytes) -> list[Line | Rui3LineError]:
        """The lines completed by ``data``."""
        out: list[Line | Rui3LineError] = []
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(_LINE_END)
            if end < 0:
                if len(buffer) > self._max:
                    # A flood without line ends: drop it now, and the rest of it up to the
                    # next line end, instead of holding it.
                    if not self._discarding:
                        self.overflows += 1
                        out.append(
                            Rui3OverflowError(
                                f"line longer than {self._max} bytes dropped",
                                bytes(buffer[:_SHOW_LIMIT]).decode("ascii", "replace"),
                            )
                        )
                    self._discarding = True
                    buffer.clear()
                break
            raw = bytes(buffer[:end])
            del buffer[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(raw) > self._max:
                self.overflows += 1
                out.append(
                    Rui3OverflowError(
                        f"line longer than {self._max} bytes dropped",
                        raw[:_SHOW_LIMIT].decode("ascii", "replace"),
                    )
                )
                continue
            self._line(raw, out)
        return out

    def _line(self, raw: bytes, out: list[Line | Rui3LineError]) -> None:
        try:
            text = raw.decode("ascii").strip("\r\n\0 ")
        except UnicodeDecodeError:
            out.append(Rui3LineError("line is not ASCII", raw.decode("ascii", "replace")))
            return
        if not text:
            return
        legacy = self._legacy
        if legacy is not None:
            self._legacy = None
            candidate = text[len(_EVENT_PREFIX) :] if text.startswith(_EVENT_PREFIX) else text
            raw_payload = _hex(candidate)
            if raw_payload is not None and 1 <= len(raw_payload) <= MAX_PAYLOAD_BYTES:
                out.append(RxEvent(legacy.rssi_dbm, legacy.snr_db, raw_payload, legacy=True))
                return
            out.append(Rui3LineError("legacy RX event without its payload line", legacy.line))
        try:
            parsed = _parse(text)
        except Rui3LineError as err:
            out.append(err)
            return
        if isinstance(parsed, _LegacyHeader):
            self._legacy = parsed
            return
        out.append(parsed)


# --- what the module writes (the emulator's side) ---------------------------------------------


def format_status(status: Status) -> bytes:
    """A status line as RUI3 frames it: ``<CR><LF>OK<CR><LF>``."""
    return f"\r\n{status.value}\r\n".encode()


def format_value(name: str, value: str) -> bytes:
    """The value line of a read: ``AT+NWM=0<CR><LF>``."""
    return f"{command(name).text}={value}\r\n".encode()


def format_rx_event(rssi_dbm: int, snr_db: int, payload: bytes, *, legacy: bool = False) -> bytes:
    """A received packet as the firmware prints it: one line (RUI3 >= 3.2.0) or, ``legacy``,
    the header line and the payload line."""
    if not 1 <= len(payload) <= MAX_PAYLOAD_BYTES:
        raise Rui3CommandError(f"a P2P payload is 1 to {MAX_PAYLOAD_BYTES} bytes")
    if legacy:
        return f"+EVT:RXP2P, RSSI {rssi_dbm}, SNR {snr_db}\r\n{payload.hex().upper()}\r\n".encode()
    return f"+EVT:RXP2P:{rssi_dbm}:{snr_db}:{payload.hex().upper()}\r\n".encode()


def format_banner(version: str, mode: int) -> bytes:
    """The lines a module prints when it boots (``mode`` as AT+NWM numbers it)."""
    work_mode = {0: "LoRa P2P", 1: "LoRaWAN", 2: "FSK P2P"}.get(mode, "unknown")
    return (
        "RAKwireless RAK3172-E Example\r\n"
        "------------------------------------------------------\r\n"
        f"Version: {version}\r\n"
        f"Current Work Mode: {work_mode}.\r\n"
    ).encode()


@dataclass(frozen=True, slots=True)
class Request:
    """A command line as the module reads it: the table row, the form, and the raw
    argument text of a set (split by :func:`parse_values`)."""

    command: AtCommand
    form: str  # "run", "read", "set" or "help"
    argument: str


def parse_request(line: str) -> Request:
    """A command line from the host (without its line end), by the table."""
    text = line.strip()
    upper = text.upper()
    if not upper.startswith("AT"):
        raise Rui3LineError("not an AT command", line)
    rest = text[2:]
    if rest.startswith("+"):
        rest = rest[1:]
        head, sep, argument = rest.partition("=")
        if head.endswith("?") and not sep:
            return Request(command(head[:-1]), "help", "")
    elif rest.upper() in ("", "Z"):
        head, sep, argument = rest, "", ""
    else:
        raise Rui3LineError("not an AT command", line)
    try:
        entry = command(head)
    except Rui3CommandError as err:
        raise Rui3LineError("unknown AT command", line) from err
    if not sep:
        return Request(entry, "run", "")
    if argument == "?":
        return Request(entry, "read", "")
    return Request(entry, "set", argument)
