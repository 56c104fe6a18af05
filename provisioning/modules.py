"""LoRaWAN sensor modules on a serial cable: detection and the command sequence per module.

Three layers, as for every wire in owlgate: :class:`SerialLink` only moves bytes and lines
(pyserial, blocking, with a deadline on every read); the command tables are the codecs'
(:mod:`owlgate.codecs.rui3` for RUI3 AT) or, for the RN2483, its plain command words; a
driver per module (:class:`Rak3172Driver`, :class:`Rn2483Driver`) runs one command at a time
and reads its reply.

What a driver does for the provisioning tool, each step idempotent so that any of them can be
run again after a failure: :meth:`~ModuleDriver.sync` (get the module listening: ``AT`` ->
``OK``; for the RN2483 a break and 0x55 first, its auto-baud), :meth:`~ModuleDriver.identify`
(firmware and the factory DevEUI, read twice: a flaky cable must not register a wrong
DevEUI), :meth:`~ModuleDriver.write`, :meth:`~ModuleDriver.verify` (read back; the RN2483
cannot read its AppKey back, which the result says), :meth:`~ModuleDriver.save`, and, for the
optional join test, :meth:`~ModuleDriver.join` (RAK3172: ``AT+JOIN=1:0:8:1``, then the
``+EVT:JOINED`` or ``+EVT:JOIN_FAILED_...`` event, confirmed by ``AT+NJS=?``; RN2483:
``mac join otaa``, ``ok`` and then ``accepted`` or ``denied``).

:func:`program` runs write, verify and save, and when the module restarts in the middle, the
cable loses the port, or a read-back does not match, it syncs again and starts the sequence
over (a restarted RN2483 has lost its unsaved settings), up to ``attempts`` times.

Retries are per command too: a busy reply waits ``busy_backoff_s`` and asks again; no reply,
or a reply the cable garbled, asks again after clearing the input.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final

import serial  # type: ignore[import-untyped]  # pyserial ships no type information

from ..codecs.errors import OwlgateError
from ..codecs.rui3 import (
    Banner,
    Echo,
    Rui3CommandError,
    Rui3LineError,
    Status,
    StatusLine,
    UnknownEvent,
    ValueLine,
    encode_read,
    encode_run,
    encode_set,
    parse_line,
)

log = logging.getLogger(__name__)

#: How long a module has to answer one command (real modules answer in tens of ms).
DEFAULT_REPLY_TIMEOUT_S: Final = 1.0
#: How long ``mac save`` may take (an EEPROM write).
SAVE_TIMEOUT_S: Final = 3.0
#: How long to wait before asking a busy module again.
DEFAULT_BUSY_BACKOFF_S: Final = 0.1
#: Tries per command (no reply or a garbled one) and busy replies tolerated per command.
COMMAND_TRIES: Final = 3
BUSY_TRIES: Final = 10
#: Attempts at the whole write-verify-save sequence.
SEQUENCE_ATTEMPTS: Final = 4
#: How long to wait for a port that vanished (a module re-enumerating) to come back.
REOPEN_TIMEOUT_S: Final = 5.0
#: RUI3 modules talk at 115200 8N1; the RN2483 starts at 57600 and follows a host by auto-baud.
RAK3172_BAUD: Final = 115200
RN2483_BAUD: Final = 57600
#: The rate at which a NUL byte is sent as a break: at 2400 baud it holds the line low for
#: 3.75 ms, longer than several characters at 57600, which a UART reads as a break.
BREAK_BAUD: Final = 2400
#: RUI3 AT+BAND for EU868; the RN2483 is reset to its 868 band.
RUI3_BAND_EU868: Final = 4
#: The join test's AT+JOIN: join, no auto-join, 8 s between attempts (the RUI3 default), one
#: attempt.
JOIN_INTERVAL_S: Final = 8
JOIN_ATTEMPTS: Final = 1
RN2483_BAND: Final = "868"
#: The first replies ``mac join otaa`` can have (RN2483 command reference, ``mac join``):
#: ``ok`` when the join has started, the others when it could not start.
RN2483_JOIN_FIRST_REPLIES: Final = frozenset(
    {"ok", "keys_not_init", "no_free_ch", "silent", "mac_paused", "denied"}
)


# --- errors -----------------------------------------------------------------------------------


class ModuleError(OwlgateError):
    """A module that could not be provisioned; ``what_to_do`` is the advice for the
    technician."""

    what_to_do = "check the cable and the module, then run the command again"

    def __init__(self, message: str, *, port: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.port = port


class NoModuleError(ModuleError):
    """Nothing on the port answered as a known module."""

    what_to_do = (
        "check that the module is powered and connected to this port, and that no other"
        " program has the port open; only RAK3172 (RUI3) and RN2483 modules are supported"
    )


class LinkError(ModuleError):
    """The module stopped answering (or answered garbage) after every retry, or the port
    vanished and did not come back."""


class ModuleRestarted(ModuleError):
    """The module restarted in the middle of a command."""


class ModuleRefused(ModuleError):
    """The module answered a command with an error (``AT_PARAM_ERROR``, ``invalid_param``,
    ...): retrying will not help."""

    what_to_do = "check the module's firmware (AT+VER / sys get ver) and the profile"


class VerifyError(ModuleError):
    """A read-back differs from what was written."""


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """What is written into a module. The AppKey never appears in ``repr``."""

    dev_eui: bytes
    join_eui: bytes
    app_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """A detected module: ``kind`` (``"RAK3172"``, ``"RN2483"``), its firmware version
    string, and the DevEUI it came with (RUI3 AT+DEVEUI, RN2483 ``sys get hweui``)."""

    kind: str
    firmware: str
    dev_eui: bytes


@dataclass(frozen=True, slots=True)
class Programmed:
    """What :func:`program` did: the fields read back and found equal, whether the AppKey was
    among them, and how many sequence attempts it took."""

    verified: tuple[str, ...]
    app_key_verified: bool
    attempts: int


@dataclass(frozen=True, slots=True)
class JoinOutcome:
    """What a join test saw on the module: ``joined``, or ``event`` the failure the module
    reported (``JOIN_FAILED_RX_TIMEOUT``; None when it reported nothing in time), and the
    seconds from the join command to the outcome."""

    joined: bool
    event: str | None
    seconds: float


@dataclass(slots=True)
class LinkCounters:
    """What went wrong on the line and was recovered from."""

    retries: int = 0
    busy: int = 0
    garbled: int = 0
    restarts: int = 0
    reopens: int = 0


# --- the serial transport ---------------------------------------------------------------------


class SerialLink:
    """One serial port, opened with pyserial (8N1, no flow control): write bytes, read lines
    with a deadline. A port that vanishes (a read or write fails) is reopened by
    :meth:`reopen`, waiting up to :data:`REOPEN_TIMEOUT_S` for the path to come back."""

    def __init__(
        self,
        port: str,
        baud: int,
        *,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
        open_port: Callable[[str, int], serial.Serial] | None = None,
    ) -> None:
        self.port = port
        self.baud = baud
        self.reply_timeout_s = reply_timeout_s
        self.counters = LinkCounters()
        self._open_port = open_port or _open_serial
        self._serial: serial.Serial | None = None
        self._buffer = bytearray()

    def open(self) -> None:
        """Open the port (a :class:`LinkError` naming it if that fails)."""
        try:
            self._serial = self._open_port(self.port, self.baud)
        except (serial.SerialException, OSError) as err:
            raise LinkError(f"cannot open {self.port}: {err}", port=self.port) from err
        self._buffer.clear()

    def close(self) -> None:
        """Close the port (idempotent)."""
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError) as err:
                log.debug("closing %s: %s", self.port, err)
            self._serial = None

    def reopen(self) -> None:
        """Close and open again, waiting for the port to reappear."""
        self.close()
        self.counters.reopens += 1
        deadline = time.monotonic() + REOPEN_TIMEOUT_S
        while True:
            if Path(self.port).exists():
                try:
                    self.open()
                    return
                except LinkError:
                    if time.monotonic() >= deadline:
                        raise
            elif time.monotonic() >= deadline:
                raise LinkError(
                    f"{self.port} vanished and did not come back within {REOPEN_TIMEOUT_S:g} s",
                    port=self.port,
                )
            time.sleep(0.05)

    def __enter__(self) -> SerialLink:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _port(self) -> serial.Serial:
        if self._serial is None:
            raise LinkError(f"{self.port} is not open", port=self.port)
        return self._serial

    def set_baud(self, baud: int) -> None:
        """Change the host's rate (the module must follow or already be there)."""
        self.baud = baud
        try:
            self._port().baudrate = baud
        except (serial.SerialException, OSError) as err:
            raise LinkError(f"{self.port}: cannot set {baud} baud: {err}", port=self.port) from err

    def write(self, data: bytes) -> None:
        try:
            port = self._port()
            port.write(data)
            port.flush()
        except (serial.SerialException, OSError) as err:
            raise LinkError(f"writing to {self.port} failed: {err}", port=self.port) from err

    def send_break(self) -> None:
        """A break condition, sent portably: a NUL byte at :data:`BREAK_BAUD` (a long low
        level to a module at a higher rate), then back to the link's rate."""
        baud = self.baud
        try:
            port = self._port()
            port.baudrate = BREAK_BAUD
            port.write(b"\x00")
            port.flush()
            port.baudrate = baud
        except (serial.SerialException, OSError) as err:
            raise LinkError(
                f"sending a break on {self.port} failed: {err}", port=self.port
            ) from err

    def discard_input(self) -> None:
        """Drop what the module sent and nobody read (a late or garbled reply)."""
        self._buffer.clear()
        try:
            self._port().reset_input_buffer()
        except (serial.SerialException, OSError) as err:
            raise LinkError(f"reading {self.port} failed: {err}", port=self.port) from err

    def read_line(self, deadline_s: float) -> str | None:
        """The next non-empty line (without CR LF and NULs), or None at ``deadline_s``
        (``time.monotonic()``)."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                raw = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                text = raw.replace(b"\x00", b"").decode("ascii", "replace").strip("\r ")
                if text:
                    return text
                continue
            left_s = deadline_s - time.monotonic()
            if left_s <= 0:
                return None
            try:
                port = self._port()
                port.timeout = min(left_s, 0.05)
                chunk = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as err:
                raise LinkError(f"reading {self.port} failed: {err}", port=self.port) from err
            self._buffer += chunk
            if len(self._buffer) > 4096:
                # A flood without line ends is not a module talking.
                self._buffer.clear()


def _open_serial(port: str, baud: int) -> serial.Serial:
    return serial.Serial(port, baud, timeout=0.05, write_timeout=2.0, exclusive=True)


# --- drivers ----------------------------------------------------------------------------------


class ModuleDriver(abc.ABC):
    """The command sequence of one kind of module on a :class:`SerialLink`."""

    kind: ClassVar[str]
    #: Whether the module can read its AppKey back.
    reads_app_key: ClassVar[bool]

    def __init__(self, link: SerialLink, *, busy_backoff_s: float = DEFAULT_BUSY_BACKOFF_S):
        self.link = link
        self.busy_backoff_s = busy_backoff_s

    @abc.abstractmethod
    def sync(self) -> None:
        """Get the module listening (raises :class:`LinkError` when it does not answer)."""

    def probe(self) -> None:
        """Whether this kind of module is on the line (raises if not); syncs it."""
        self.sync()

    @abc.abstractmethod
    def identify(self) -> ModuleInfo:
        """Firmware and factory DevEUI."""

    @abc.abstractmethod
    def write(self, keys: NodeKeys) -> None:
        """Write DevEUI, JoinEUI, AppKey, the region and OTAA."""

    @abc.abstractmethod
    def verify(self, keys: NodeKeys) -> tuple[str, ...]:
        """Read back what :meth:`write` wrote; the names of the fields checked."""

    @abc.abstractmethod
    def save(self) -> None:
        """Make the settings survive a restart."""

    #: Whether :meth:`join` is played for this kind of module.
    supports_join: ClassVar[bool] = False

    def join(self, timeout_s: float) -> JoinOutcome:
        """Join the network with the saved keys and wait up to ``timeout_s`` for the result."""
        raise ModuleRefused(f"the join test is not supported for the {self.kind}")

    def _stable(self, read: Callable[[], bytes], what: str) -> bytes:
        # The same value twice in a row: one corrupted read must not pass for the truth.
        previous: bytes | None = None
        for _ in range(4):
            value = read()
            if value == previous:
                return value
            previous = value
        raise LinkError(f"{what} read differently every time (a bad cable?)", port=self.link.port)

    def _busy_wait(self, busy: int, text: str) -> int:
        busy += 1
        self.link.counters.busy += 1
        if busy > BUSY_TRIES:
            raise LinkError(f"the module stayed busy for {text}", port=self.link.port)
        time.sleep(self.busy_backoff_s)
        return busy


class Rak3172Driver(ModuleDriver):
    """RAK3172 with RUI3 AT firmware (the table in :mod:`owlgate.codecs.rui3`)."""

    kind = "RAK3172"
    reads_app_key = True

    def _command(
        self, raw: bytes, name: str | None, *, read: bool, probing: bool = False
    ) -> str | None:
        """Send one AT command; the value of a read (``name`` the table name) or None."""
        text = raw.decode().strip()
        tries = busy = 0
        while True:
            self.link.discard_input()
            self.link.write(raw)
            outcome, value = self._reply(text, name, read=read)
            if outcome == "ok":
                return value
            if outcome == "busy":
                busy = self._busy_wait(busy, text)
                continue
            tries += 1
            self.link.counters.retries += 1
            if outcome == "garbled":
                self.link.counters.garbled += 1
            # Detection gives up on silence at once (another kind of module would make every
            # retry a timeout), but not on a garbled reply: something answered.
            if tries >= COMMAND_TRIES or (probing and outcome == "timeout"):
                why = "garbled replies" if outcome == "garbled" else "no reply"
                raise LinkError(f"{why} to {_shown(text)} after {tries} tries", port=self.link.port)

    def _reply(self, text: str, name: str | None, *, read: bool) -> tuple[str, str | None]:
        # ("ok", value), ("busy", None), ("garbled", None) or ("timeout", None).
        deadline = time.monotonic() + self.link.reply_timeout_s
        value: str | None = None
        garbled = False
        while True:
            line = self.link.read_line(deadline)
            if line is None:
                return ("garbled" if garbled else "timeout"), None
            try:
                parsed = parse_line(line)
            except Rui3LineError:
                garbled = True
                continue
            match parsed:
                case Banner():
                    self.link.counters.restarts += 1
                    raise ModuleRestarted(
                        f"the module restarted during {_shown(text)}", port=self.link.port
                    )
                case Echo():
                    continue
                case ValueLine(name=got, value=found) if read and got in (name, None):
                    value = found
                case StatusLine(status=Status.OK):
                    if garbled or (read and value is None):
                        return "garbled", None
                    return "ok", value
                case StatusLine(status=Status.AT_BUSY_ERROR):
                    return "busy", None
                case StatusLine(status=status):
                    raise ModuleRefused(
                        f"the module answered {_shown(text)} with {status.value}",
                        port=self.link.port,
                    )
                case _:
                    garbled = True

    def _read(self, name: str) -> str:
        value = self._command(encode_read(name), name, read=True)
        assert value is not None
        return value.strip()

    def _read_hex(self, name: str, size: int) -> bytes:
        for _ in range(COMMAND_TRIES):
            value = self._read(name)
            if _is_hex(value, size):
                return bytes.fromhex(value)
            # A value the cable garbled: ask again.
            self.link.counters.garbled += 1
        raise LinkError(f"AT+{name}=? never answered {size} bytes of hex", port=self.link.port)

    def _set(self, name: str, *values: int | bytes) -> None:
        self._command(encode_set(name, *values), None, read=False)

    def sync(self) -> None:
        self._command(encode_run(""), None, read=False)

    def probe(self) -> None:
        self._command(encode_run(""), None, read=False, probing=True)

    def identify(self) -> ModuleInfo:
        firmware = self._read("VER")
        self._ensure_lorawan()
        dev_eui = self._stable(lambda: self._read_hex("DEVEUI", 8), "the DevEUI")
        return ModuleInfo(self.kind, firmware, dev_eui)

    def _ensure_lorawan(self) -> None:
        if self._read("NWM") == "1":
            return
        # A module left in P2P mode: LoRaWAN mode is applied by a restart (RUI3 AT+NWM).
        # The banner may come before the OK: that restart is the one asked for.
        with contextlib.suppress(ModuleRestarted):
            self._set("NWM", 1)
        deadline = time.monotonic() + REOPEN_TIMEOUT_S
        while True:
            try:
                self.sync()
                if self._read("NWM") == "1":
                    return
            except (ModuleRestarted, LinkError):
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def write(self, keys: NodeKeys) -> None:
        try:
            self._set("NJM", 1)
            self._set("BAND", RUI3_BAND_EU868)
            self._set("DEVEUI", keys.dev_eui)
            self._set("APPEUI", keys.join_eui)
            self._set("APPKEY", keys.app_key)
        except Rui3CommandError as err:
            raise ModuleRefused(str(err), port=self.link.port) from err

    def verify(self, keys: NodeKeys) -> tuple[str, ...]:
        checks: tuple[tuple[str, Callable[[], object], object], ...] = (
            ("DevEUI", lambda: self._read_hex("DEVEUI", 8), keys.dev_eui),
            ("JoinEUI", lambda: self._read_hex("APPEUI", 8), keys.join_eui),
            ("AppKey", lambda: self._read_hex("APPKEY", 16), keys.app_key),
            ("region", lambda: self._read("BAND"), str(RUI3_BAND_EU868)),
            ("OTAA", lambda: self._read("NJM"), "1"),
        )
        for label, read, expected in checks:
            if read() != expected:
                # Never show the AppKey, even in a mismatch.
                raise VerifyError(f"{label} read back differs", port=self.link.port)
        return tuple(label for label, _, _ in checks)

    def save(self) -> None:
        # RUI3 writes every setting to flash as it is set: nothing to do.
        return

    supports_join = True

    def join(self, timeout_s: float) -> JoinOutcome:
        started = time.monotonic()
        deadline = started + timeout_s
        # RUI3 answers OK at once; the outcome is an event, seconds later.
        self._set("JOIN", 1, 0, JOIN_INTERVAL_S, JOIN_ATTEMPTS)
        while True:
            line = self.link.read_line(deadline)
            if line is None:
                return JoinOutcome(False, None, time.monotonic() - started)
            try:
                parsed = parse_line(line)
            except Rui3LineError:
                self.link.counters.garbled += 1
                continue
            match parsed:
                case Banner():
                    self.link.counters.restarts += 1
                    raise ModuleRestarted("the module restarted while joining", port=self.link.port)
                case UnknownEvent(text="JOINED"):
                    seconds = time.monotonic() - started
                    # The status the module keeps must agree with the event it printed.
                    if self._read("NJS") != "1":
                        return JoinOutcome(False, "NJS=0 after JOINED", seconds)
                    return JoinOutcome(True, None, seconds)
                case UnknownEvent(text=text) if text.startswith("JOIN_FAILED"):
                    return JoinOutcome(False, text, time.monotonic() - started)
                case _:
                    # Other events and stray lines are not the join's outcome.
                    continue


class Rn2483Driver(ModuleDriver):
    """Microchip RN2483 (its command reference's syntax; auto-baud to the link's rate)."""

    kind = "RN2483"
    reads_app_key = False

    def _command(
        self,
        text: str,
        accept: Callable[[str], bool],
        *,
        timeout_s: float | None = None,
        restart_ok: bool = False,
    ) -> str:
        tries = busy = 0
        while True:
            self.link.discard_input()
            self.link.write(text.encode() + b"\r\n")
            deadline = time.monotonic() + (timeout_s or self.link.reply_timeout_s)
            line = self.link.read_line(deadline)
            if line == "busy":
                busy = self._busy_wait(busy, text)
                continue
            if line == "invalid_param":
                raise ModuleRefused(
                    f"the module answered {_shown(text)} with invalid_param",
                    port=self.link.port,
                )
            if line is not None and accept(line):
                return line
            if line is not None and line.startswith("RN2483") and not restart_ok:
                self.link.counters.restarts += 1
                raise ModuleRestarted(
                    f"the module restarted during {_shown(text)}", port=self.link.port
                )
            tries += 1
            self.link.counters.retries += 1
            if line is not None:
                self.link.counters.garbled += 1
            if tries >= COMMAND_TRIES:
                why = "garbled replies" if line is not None else "no reply"
                raise LinkError(f"{why} to {_shown(text)} after {tries} tries", port=self.link.port)

    def _hex(self, text: str, size: int) -> bytes:
        line = self._command(text, lambda got: _is_hex(got, size))
        return bytes.fromhex(line)

    def _ok(self, text: str, *, timeout_s: float | None = None) -> None:
        self._command(text, lambda got: got == "ok", timeout_s=timeout_s)

    def sync(self) -> None:
        # Auto-baud: a break, then 0x55 for the module to measure (RN2483 command reference,
        # "auto-baud detection"); then a command to see that it follows.
        self.link.discard_input()
        self.link.send_break()
        self.link.write(b"\x55")
        time.sleep(0.01)
        self._command("sys get ver", lambda got: got.startswith("RN2483"), restart_ok=True)

    def identify(self) -> ModuleInfo:
        firmware = self._command("sys get ver", lambda got: got.startswith("RN2483"))
        dev_eui = self._stable(lambda: self._hex("sys get hweui", 8), "the hardware EUI")
        return ModuleInfo(self.kind, firmware, dev_eui)

    def write(self, keys: NodeKeys) -> None:
        self._ok(f"mac reset {RN2483_BAND}")
        self._ok(f"mac set deveui {keys.dev_eui.hex().upper()}")
        self._ok(f"mac set appeui {keys.join_eui.hex().upper()}")
        self._ok(f"mac set appkey {keys.app_key.hex().upper()}")

    def verify(self, keys: NodeKeys) -> tuple[str, ...]:
        if self._hex("mac get deveui", 8) != keys.dev_eui:
            raise VerifyError("DevEUI read back differs", port=self.link.port)
        if self._hex("mac get appeui", 8) != keys.join_eui:
            raise VerifyError("JoinEUI read back differs", port=self.link.port)
        band = self._command("mac get band", lambda got: got in ("868", "433"))
        if band != RN2483_BAND:
            raise VerifyError(f"the band read back is {band}", port=self.link.port)
        # There is no ``mac get appkey``: the AppKey cannot be read back.
        return ("DevEUI", "JoinEUI", "region")

    def save(self) -> None:
        self._ok("mac save", timeout_s=max(SAVE_TIMEOUT_S, self.link.reply_timeout_s))

    supports_join = True

    def join(self, timeout_s: float) -> JoinOutcome:
        started = time.monotonic()
        deadline = started + timeout_s
        # The command reference: a first reply at once (ok: the join has started), and for
        # ok a second one when the join is over, accepted or denied.
        first = self._command("mac join otaa", lambda got: got in RN2483_JOIN_FIRST_REPLIES)
        if first != "ok":
            return JoinOutcome(False, first, time.monotonic() - started)
        while True:
            line = self.link.read_line(deadline)
            if line is None:
                return JoinOutcome(False, None, time.monotonic() - started)
            if line == "accepted":
                return JoinOutcome(True, None, time.monotonic() - started)
            if line == "denied":
                return JoinOutcome(False, line, time.monotonic() - started)
            if line.startswith("RN2483"):
                self.link.counters.restarts += 1
                raise ModuleRestarted("the module restarted while joining", port=self.link.port)
            # A stray or garbled line is not the join's outcome.
            self.link.counters.garbled += 1


def _is_hex(text: str, size: int) -> bool:
    if len(text) != 2 * size:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


DRIVERS: Final[tuple[type[ModuleDriver], ...]] = (Rak3172Driver, Rn2483Driver)


def detect(link: SerialLink, *, busy_backoff_s: float = DEFAULT_BUSY_BACKOFF_S) -> ModuleDriver:
    """The driver of the module on ``link`` (RAK3172 first: ``AT``; then RN2483 auto-baud
    and ``sys get ver``), synced; :class:`NoModuleError` when neither answers."""
    tried: list[str] = []
    for driver_type in DRIVERS:
        driver = driver_type(link, busy_backoff_s=busy_backoff_s)
        try:
            driver.probe()
        except (LinkError, ModuleRefused, ModuleRestarted) as err:
            log.debug("%s: no %s: %s", link.port, driver.kind, err)
            tried.append(driver.kind)
            continue
        log.info("%s: %s detected", link.port, driver.kind)
        return driver
    raise NoModuleError(
        f"no module answered on {link.port} at {link.baud} baud (tried {', '.join(tried)})",
        port=link.port,
    )


def program(
    driver: ModuleDriver, keys: NodeKeys, *, attempts: int = SEQUENCE_ATTEMPTS
) -> Programmed:
    """Write, verify and save ``keys``, starting over after a restart, a lost port or a
    mismatched read-back (see the module text)."""
    last: ModuleError | None = None
    for attempt in range(1, attempts + 1):
        try:
            if attempt > 1:
                _recover(driver, last)
            driver.write(keys)
            verified = driver.verify(keys)
            driver.save()
        except (ModuleRestarted, LinkError, VerifyError) as err:
            log.info("%s: attempt %d: %s", driver.link.port, attempt, err)
            last = err
            continue
        return Programmed(verified, "AppKey" in verified, attempt)
    assert last is not None
    raise last


def _recover(driver: ModuleDriver, error: ModuleError | None) -> None:
    # A lost port is opened again; a restarting module needs a moment before it listens
    # (and an RN2483 is back at 57600 baud): sync until it answers.
    reopen = isinstance(error, LinkError)
    deadline = time.monotonic() + REOPEN_TIMEOUT_S
    while True:
        try:
            if reopen:
                driver.link.reopen()
            driver.sync()
            return
        except (LinkError, ModuleRestarted) as err:
            reopen = isinstance(err, LinkError)
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _shown(command: str) -> str:
    """A command as it may be logged or shown: never with a key in it."""
    head, sep, _ = command.partition("=")
    if head.upper() == "AT+APPKEY" and sep:
        return "AT+APPKEY=..."
    if command.startswith("mac set appkey"):
        return "mac set appkey ..."
    return command
