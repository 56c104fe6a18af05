"""An emulated RAK3172 (RUI3 AT firmware) in LoRaWAN mode, as a provisioning tool meets it.

:class:`EmulatedRak3172LoRaWAN` answers the LoRaWAN key commands of the RUI3 table in
:mod:`owlgate.codecs.rui3` (``AT``, ``AT+VER=?``, ``AT+NWM``, ``AT+DEVEUI``, ``AT+APPEUI``,
``AT+APPKEY``, ``AT+BAND``, ``AT+NJM``, ``ATZ``) with the codec's own formatters, so the wire
is the one a real module speaks::

    host    AT+DEVEUI=?<CR><LF>
    module  AT+DEVEUI=AC1F09FFFE0A0B0C<CR><LF><CR><LF>OK<CR><LF>

Like a real RUI3 module it saves every setting to flash as it is written: a restart (``ATZ``,
a brown-out) keeps them. It ships with a factory DevEUI (RAK's ``AC1F09FFFE`` prefix), a
JoinEUI of zeros and no AppKey. In P2P work mode (AT+NWM=0) the LoRaWAN commands answer
``AT_MODE_NO_SUPPORT``.

:class:`EmulatedSerialModule` is what it shares with the RN2483 emulator
(:mod:`owlgate.hil.rn2483`): the pty (a :class:`owlgate.hil.pty.PtyPort` behind a stable
symlink), line splitting, the command log, and the faults a test sets in :attr:`faults`
(:class:`ModuleFaults`): a delay per reply, busy replies, a restart in the middle of a
sequence, and a flaky cable that corrupts or drops a byte of a reply.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

from ..codecs.errors import CodecError
from ..codecs.rui3 import (
    MAX_LINE_BYTES,
    Request,
    Status,
    format_banner,
    format_status,
    format_value,
    parse_request,
    parse_values,
)
from .pty import AsyncLifecycle, PtyPort

log = logging.getLogger(__name__)

DEFAULT_LINK_NAME: Final = "ttyRAKWAN0"
#: What AT+VER=? answers.
VERSION: Final = "RUI_4.0.6_RAK3172-E"
#: A factory DevEUI in RAKwireless's block (the label on the module shows the same one).
FACTORY_DEV_EUI: Final = bytes.fromhex("AC1F09FFFE0A0B0C")
#: AT+BAND numbers (RUI3 AT Command Manual, AT+BAND): 4 is EU868.
BAND_EU868: Final = 4
#: How long a restart takes before the banner.
RESTART_DELAY_S: Final = 0.05


@dataclass(slots=True)
class ModuleFaults:
    """Faults an emulated module plays, set by a test (counts are used up as they fire).

    ``reply_delay_s``: every reply is written this long after its command arrived (a module
    is never instant: tens of milliseconds is typical). ``busy``: the next commands answer
    busy and are not carried out. ``restart_after``: the module restarts on receiving that
    many more commands, without answering the last one (a brown-out in the middle of a
    sequence). ``corrupt_replies`` / ``drop_reply_bytes``: the next replies have one byte
    changed / lost on the way (a flaky cable).
    """

    reply_delay_s: float = 0.0
    busy: int = 0
    restart_after: int | None = None
    corrupt_replies: int = 0
    drop_reply_bytes: int = 0
    #: Seeds where in a line the flaky cable strikes (reproducible, and not the same byte
    #: every time, as a bad contact is not).
    seed: int = 1


def garble(reply: bytes, *, drop: bool, rng: random.Random | None = None) -> bytes:
    """``reply`` with one byte of its first non-empty line changed (bit 0 flipped) or,
    ``drop``, removed: what a bad contact does to one byte. The byte is the middle one, or
    one drawn from ``rng``."""
    start = 0
    while start < len(reply) and reply[start] in b"\r\n":
        start += 1
    end = start
    while end < len(reply) and reply[end] not in b"\r\n":
        end += 1
    if end == start:
        return reply
    middle = (start + end) // 2 if rng is None else rng.randrange(start, end)
    if drop:
        return reply[:middle] + reply[middle + 1 :]
    return reply[:middle] + bytes([reply[middle] ^ 0x01]) + reply[middle + 1 :]


class EmulatedSerialModule(AsyncLifecycle, abc.ABC):
    """A line-oriented serial module on a pty at :attr:`path` (see the module text).

    Subclasses answer one command line at a time in :meth:`answer` (None: no reply) and
    say what a restart does in :meth:`on_restart`.
    """

    label = "serial module"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.faults = ModuleFaults()
        #: Every command line received, in order, without its line end.
        self.commands: list[str] = []
        #: Restarts so far (a command, a fault, or :meth:`restart`).
        self.restarts = 0
        #: Replies a fault changed or cut.
        self.garbled_replies = 0
        self._port = PtyPort(path, label=f"emulated {self.label} {path}", on_bytes=self.on_bytes)
        self._in = bytearray()
        self._booting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._next_reply_s = 0.0
        self._random: random.Random | None = None
        self._random_seed = 0

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Create the pty and the symlink, and start answering."""
        self._loop = asyncio.get_running_loop()
        self._in = bytearray()
        self._port.open()
        log.info("emulated %s on %s (%s)", self.label, self.path, self._port.tty_path)
        return self

    async def close(self) -> None:
        """Close the pty and remove the symlink (idempotent)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._port.close()

    @property
    def tty_path(self) -> str | None:
        """The pty behind :attr:`path` now (None while closed)."""
        return self._port.tty_path

    def restart(self) -> None:
        """The module restarts now: it hears nothing for :data:`RESTART_DELAY_S`, then it is
        back, with what :meth:`on_restart` keeps."""
        self.restarts += 1
        self._booting = True
        self._in.clear()
        self._later(RESTART_DELAY_S, self._booted)

    def _booted(self) -> None:
        self._booting = False
        banner = self.on_restart()
        if banner:
            self._port.write(banner)

    # --- what subclasses say ------------------------------------------------------------------

    @abc.abstractmethod
    def answer(self, line: str) -> bytes | None:
        """The reply to one command line (None: the command restarts the module)."""

    @abc.abstractmethod
    def on_restart(self) -> bytes:
        """Apply a restart to the settings; return what the module prints when it is up."""

    # --- bytes --------------------------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        self.take(data)

    def take(self, data: bytes) -> None:
        """Add bytes the module understood to its line buffer; answer complete lines."""
        if self._booting:
            return
        self._in += data
        while True:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > MAX_LINE_BYTES:
                    self._in.clear()
                return
            raw = bytes(self._in[: end + 1])
            del self._in[: end + 1]
            if raw.strip():
                self._line(raw)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("ascii", "replace")
        self.commands.append(line.rstrip("\r\n"))
        faults = self.faults
        if faults.restart_after is not None:
            faults.restart_after -= 1
            if faults.restart_after <= 0:
                faults.restart_after = None
                log.info("emulated %s %s restarts (fault)", self.label, self.path)
                self.restart()
                return
        if faults.busy > 0:
            faults.busy -= 1
            self._reply(self.busy_reply())
            return
        reply = self.answer(line)
        if reply is not None:
            self._reply(reply)

    @abc.abstractmethod
    def busy_reply(self) -> bytes:
        """What the module says to a command it cannot take now."""

    def _reply(self, reply: bytes) -> None:
        faults = self.faults
        if faults.corrupt_replies > 0:
            faults.corrupt_replies -= 1
            self.garbled_replies += 1
            reply = garble(reply, drop=False, rng=self._rng())
        elif faults.drop_reply_bytes > 0:
            faults.drop_reply_bytes -= 1
            self.garbled_replies += 1
            reply = garble(reply, drop=True, rng=self._rng())
        if faults.reply_delay_s <= 0:
            self._port.write(reply)
            return
        assert self._loop is not None
        # Replies keep their order however the delays fall.
        due_s = max(self._loop.time() + faults.reply_delay_s, self._next_reply_s)
        self._next_reply_s = due_s
        self._later(due_s - self._loop.time(), lambda: self._port.write(reply))

    def _rng(self) -> random.Random:
        if self._random is None or self._random_seed != self.faults.seed:
            self._random = random.Random(self.faults.seed)
            self._random_seed = self.faults.seed
        return self._random

    def _later(self, delay_s: float, callback: Callable[[], object]) -> None:
        assert self._loop is not None

        def run() -> None:
            self._timers.discard(handle)
            callback()

        handle = self._loop.call_later(delay_s, run)
        self._timers.add(handle)


class EmulatedRak3172LoRaWAN(EmulatedSerialModule):
    """A RAK3172 with RUI3 in LoRaWAN mode on a pty at ``<link_dir>/<link_name>``.

    Settings (:attr:`dev_eui`, :attr:`join_eui`, :attr:`app_key`, :attr:`band`,
    :attr:`join_mode`, :attr:`work_mode`) are flash-stored: kept across restarts.
    """

    label = "RAK3172"

    def __init__(
        self,
        link_dir: str | os.PathLike[str],
        *,
        link_name: str = DEFAULT_LINK_NAME,
        dev_eui: bytes = FACTORY_DEV_EUI,
        work_mode: int = 1,
    ) -> None:
        super().__init__(Path(link_dir) / link_name)
        self.factory_dev_eui = dev_eui
        self.dev_eui = dev_eui
        self.join_eui = bytes(8)
        self.app_key = bytes(16)
        self.band = BAND_EU868
        self.join_mode = 1
        self.work_mode = work_mode

    def busy_reply(self) -> bytes:
        return format_status(Status.AT_BUSY_ERROR)

    def on_restart(self) -> bytes:
        return format_banner(VERSION, self.work_mode)

    def answer(self, line: str) -> bytes | None:
        try:
            request = parse_request(line.rstrip("\r\n"))
        except CodecError:
            return format_status(Status.AT_COMMAND_NOT_FOUND)
        try:
            result = self._answer(request)
        except CodecError:
            return format_status(Status.AT_PARAM_ERROR)
        if result is None:
            return None
        reply, status = result
        return reply + format_status(status)

    def _answer(self, request: Request) -> tuple[bytes, Status] | None:
        # One case per command and form of the RUI3 table that a LoRaWAN module answers.
        name, form = request.command.name, request.form
        lorawan = name in ("DEVEUI", "APPEUI", "APPKEY", "BAND", "NJM")
        if lorawan and self.work_mode != 1:
            return b"", Status.AT_MODE_NO_SUPPORT
        match (name, form):
            case ("", "run"):
                return b"", Status.OK
            case ("Z", "run"):
                # RUI3: ATZ answers nothing; the banner follows the restart.
                self.restart()
                return None
            case ("VER", "read"):
                return format_value("VER", VERSION), Status.OK
            case ("NWM", "read"):
                return format_value("NWM", str(self.work_mode)), Status.OK
            case ("NWM", "set"):
                (mode,) = parse_values("NWM", request.argument)
                assert isinstance(mode, int)
                if mode != self.work_mode:
                    # A new work mode is applied by restarting, after the OK.
                    self.work_mode = mode
                    self._reply(format_status(Status.OK))
                    self.restart()
                    return None
                return b"", Status.OK
            case ("DEVEUI" | "APPEUI" | "APPKEY", "read"):
                value = {"DEVEUI": self.dev_eui, "APPEUI": self.join_eui, "APPKEY": self.app_key}
                return format_value(name, value[name].hex().upper()), Status.OK
            case ("DEVEUI" | "APPEUI" | "APPKEY", "set"):
                (raw,) = parse_values(name, request.argument)
                assert isinstance(raw, bytes)
                if name == "DEVEUI":
                    self.dev_eui = raw
                elif name == "APPEUI":
                    self.join_eui = raw
                else:
                    self.app_key = raw
                return b"", Status.OK
            case ("BAND", "read"):
                return format_value("BAND", str(self.band)), Status.OK
            case ("BAND", "set"):
                (band,) = parse_values("BAND", request.argument)
                assert isinstance(band, int)
                self.band = band
                return b"", Status.OK
            case ("NJM", "read"):
                return format_value("NJM", str(self.join_mode)), Status.OK
            case ("NJM", "set"):
                (mode,) = parse_values("NJM", request.argument)
                assert isinstance(mode, int)
                self.join_mode = mode
                return b"", Status.OK
            case _:
                return b"", Status.AT_ERROR
