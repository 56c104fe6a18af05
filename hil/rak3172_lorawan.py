"""An emulated RAK3172 (RUI3 AT firmware) in LoRaWAN mode, as a provisioning tool meets it.

:class:`EmulatedRak3172LoRaWAN` answers the LoRaWAN key commands of the RUI3 table in
:mod:`owlgate.codecs.rui3` (``AT``, ``AT+VER=?``, ``AT+NWM``, ``AT+DEVEUI``, ``AT+APPEUI``,
``AT+APPKEY``, ``AT+BAND``, ``AT+NJM``, ``AT+JOIN``, ``AT+NJS``, ``ATZ``) with the codec's own
formatters, so the wire is the one a real module speaks::

    host    AT+DEVEUI=?<CR><LF>
    module  AT+DEVEUI=AC1F09FFFE0A0B0C<CR><LF><CR><LF>OK<CR><LF>

Like a real RUI3 module it saves every setting to flash as it is written: a restart (``ATZ``,
a brown-out) keeps them. It ships with a factory DevEUI (RAK's ``AC1F09FFFE`` prefix), a
JoinEUI of zeros and no AppKey. In P2P work mode (AT+NWM=0) the LoRaWAN commands answer
``AT_MODE_NO_SUPPORT``.

**Joining.** ``AT+JOIN=1:0:<interval>:<attempts>`` answers ``OK`` at once; the module then sends
a LoRaWAN 1.0.3 join request (its DevEUI, JoinEUI and AppKey, a fresh random DevNonce, section
6.2.4) and prints ``+EVT:JOINED`` when a join accept it can open with its AppKey arrives, or,
when none came within the receive window (:data:`JOIN_RX_TIMEOUT_S`, JOIN_ACCEPT_DELAY2) after
the last attempt, ``+EVT:JOIN_FAILED_RX_TIMEOUT``. ``AT+NJS=?`` answers 1 once joined. The
radio is a :class:`owlgate.hil.module_radio.JoinRadio` on the loopback "air" of
:mod:`owlgate.hil.gateway_emulator` (``air_address``, ``air_receive_port``); without
``air_address`` a join request reaches no gateway and the join fails after the window. The
join status is not flash-stored: a restart forgets it.

:class:`EmulatedSerialModule` is what it shares with the RN2483 emulator
(:mod:`owlgate.hil.rn2483`): the port (a :class:`owlgate.hil.serial_device.SerialDevice`:
a pty behind a stable symlink and/or a ``socket://`` port, optionally paced at the host's
baud rate, with a :class:`~owlgate.hil.faults.FaultPlan` in
:attr:`~EmulatedSerialModule.plan`), line splitting, the command log, and the faults a test
sets in :attr:`faults` (:class:`ModuleFaults`): a delay per reply, busy replies, a restart in
the middle of a sequence, and a flaky cable that corrupts or drops a byte of a reply. Those
faults are logged in the plan's log as they fire (``delay``, ``reset``, ``corrupt``,
``drop``), with the plan's own.

The commands are answered by handlers declared per command and form in one
:class:`~owlgate.hil.serial_device.CommandTable`.
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
from .faults import FaultKind, FaultPlan
from .module_radio import JOIN_RX_TIMEOUT_S, JoinKeys, JoinRadio
from .pty import AsyncLifecycle
from .serial_device import CommandTable, OnSerialDevice, SerialDevice

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
#: The AT+JOIN defaults (RUI3 AT Command Manual): no auto-join, 8 s between attempts.
DEFAULT_JOIN_INTERVAL_S: Final = 8
#: Commands that exist only in LoRaWAN work mode.
LORAWAN_COMMANDS: Final = frozenset({"DEVEUI", "APPEUI", "APPKEY", "BAND", "NJM", "JOIN", "NJS"})

_Answer = tuple[bytes, Status]
#: The RUI3 commands the LoRaWAN module plays, one handler per (command, form); a handler
#: returning None has answered (or restarted) by itself.
_COMMANDS: CommandTable[tuple[str, str], EmulatedRak3172LoRaWAN, _Answer | None] = CommandTable(
    "RUI3 LoRaWAN"
)


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


class EmulatedSerialModule(OnSerialDevice, AsyncLifecycle, abc.ABC):
    """A line-oriented serial module on a pty at :attr:`path` (see the module text).

    Subclasses answer one command line at a time in :meth:`answer` (None: no reply) and
    say what a restart does in :meth:`on_restart`.

    The line: ``pty`` (the path, default) and/or ``tcp`` (``tcp_port``, 0 for a free one),
    paced at the host's pty rate or ``baudrate`` with ``paced`` (off by default, as before the
    framework: a program that opens the pty without setting its speed leaves it at 38400, see
    ``docs/hil-devices.md``); ``expected_baud`` refuses a host at another rate; ``plan`` the
    faults on both directions.
    """

    label = "serial module"

    def __init__(
        self,
        path: Path,
        *,
        pty: bool = True,
        tcp: bool = False,
        tcp_port: int = 0,
        baudrate: int = 115200,
        expected_baud: int | None = None,
        plan: FaultPlan | None = None,
        paced: bool = False,
    ) -> None:
        self.path = path
        self.faults = ModuleFaults()
        #: Every command line received, in order, without its line end.
        self.commands: list[str] = []
        #: Restarts so far (a command, a fault, or :meth:`restart`).
        self.restarts = 0
        #: Replies a fault changed or cut.
        self.garbled_replies = 0
        #: The transport: pty and/or TCP, pacing, faults.
        self.serial = SerialDevice(
            lambda send: self,
            pty_path=path if pty else None,
            tcp=tcp,
            tcp_port=tcp_port,
            baudrate=baudrate,
            expected_baud=expected_baud,
            plan=plan,
            paced=paced,
            label=f"emulated {self.label} {path}",
        )
        #: The faults on the line, and the log of every fault applied or injected.
        self.plan = self.serial.plan
        self._in = bytearray()
        self._booting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._next_reply_s = 0.0
        self._random: random.Random | None = None
        self._random_seed = 0

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Create the pty and the symlink and/or the TCP port, and start answering."""
        self._loop = asyncio.get_running_loop()
        self._in = bytearray()
        await self.serial.start()
        log.info("emulated %s on %s (%s)", self.label, self.path, self.serial.tty_path)
        return self

    async def close(self) -> None:
        """Close the pty and remove the symlink, close the TCP port (idempotent)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        await self.serial.close()

    def unplug(self) -> None:
        """The USB cable is pulled: the pty path is gone, the TCP port refuses connections;
        the module, unpowered, forgets what it was reading."""
        self.serial.unplug_now()
        self._in.clear()

    def replug(self) -> None:
        """Plugged back in: a new pty behind the same path (the TCP port listens again), and
        the module powers up (a restart)."""
        self.serial.unplug_now()
        self.serial.replug_now()
        self.restart()

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
            self.serial.send(banner)

    def _log_fault(self, kind: FaultKind, data: bytes, detail: str) -> None:
        self.plan.log.record("to_host", kind, self.plan.position("to_host"), data, detail)

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
                self._log_fault("reset", raw, "ModuleFaults.restart_after: restart, no answer")
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
            self._log_fault("corrupt", reply, "ModuleFaults.corrupt_replies: one bit flipped")
            reply = garble(reply, drop=False, rng=self._rng())
        elif faults.drop_reply_bytes > 0:
            faults.drop_reply_bytes -= 1
            self.garbled_replies += 1
            self._log_fault("drop", reply, "ModuleFaults.drop_reply_bytes: one byte lost")
            reply = garble(reply, drop=True, rng=self._rng())
        if faults.reply_delay_s <= 0:
            self.serial.send(reply)
            return
        assert self._loop is not None
        self._log_fault("delay", b"", f"ModuleFaults.reply_delay_s: {faults.reply_delay_s:g} s")
        # Replies keep their order however the delays fall.
        due_s = max(self._loop.time() + faults.reply_delay_s, self._next_reply_s)
        self._next_reply_s = due_s
        self._later(due_s - self._loop.time(), lambda: self.serial.send(reply))

    def _rng(self) -> random.Random:
        if self._random is None or self._random_seed != self.faults.seed:
            self._random = random.Random(self.faults.seed)
            self._random_seed = self.faults.seed
        return self._random

    def _later(self, delay_s: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        assert self._loop is not None

        def run() -> None:
            self._timers.discard(handle)
            callback()

        handle = self._loop.call_later(delay_s, run)
        self._timers.add(handle)
        return handle

    def _cancel(self, handle: asyncio.TimerHandle | None) -> None:
        if handle is not None:
            handle.cancel()
            self._timers.discard(handle)


class JoiningModule(EmulatedSerialModule):
    """An emulated LoRaWAN module whose radio joins (:class:`~owlgate.hil.module_radio.JoinRadio`
    on the loopback air): what the RAK3172 and the RN2483 emulators share. A module prints
    :attr:`joined_line` or :attr:`failed_line` when a join is over; the join lives in RAM."""

    #: What the module prints when a join accept came / when none came.
    joined_line: bytes = b""
    failed_line: bytes = b""

    def _radio(
        self, air_address: tuple[str, int] | None, air_receive_port: int, rx_timeout_s: float
    ) -> None:
        #: The radio joins are made with.
        self.radio = JoinRadio(
            f"{self.label} {self.path}",
            air_address=air_address,
            air_receive_port=air_receive_port,
            rx_timeout_s=rx_timeout_s,
            later=self._later,
            cancel=self._cancel,
            on_joined=self._joined,
            on_failed=lambda: self.serial.send(self.failed_line),
        )
        #: The DevAddr the last join accept gave (None: not joined since the last restart).
        self.dev_addr: int | None = None

    @property
    def joined(self) -> bool:
        return self.dev_addr is not None

    @property
    def air_receive_port(self) -> int:
        """The port the module's radio listens on (picked when started, if 0 was given)."""
        return self.radio.air_receive_port

    @property
    def join_requests(self) -> int:
        return self.radio.join_requests

    async def start(self) -> Self:
        await super().start()
        await self.radio.open()
        return self

    async def close(self) -> None:
        self.radio.close()
        await super().close()

    def _begin_join(self, keys: JoinKeys, *, attempts: int, interval_s: float) -> None:
        self.dev_addr = None
        self.radio.join(keys, attempts=attempts, interval_s=interval_s)

    def _forget_join(self) -> None:
        """A restart: the join and any join under way are gone."""
        self.radio.stop()
        self.dev_addr = None

    def _joined(self, dev_addr: int) -> None:
        self.dev_addr = dev_addr
        self.serial.send(self.joined_line)


class EmulatedRak3172LoRaWAN(JoiningModule):
    """A RAK3172 with RUI3 in LoRaWAN mode on a pty at ``<link_dir>/<link_name>``.

    Settings (:attr:`dev_eui`, :attr:`join_eui`, :attr:`app_key`, :attr:`band`,
    :attr:`join_mode`, :attr:`work_mode`) are flash-stored: kept across restarts.
    ``air_address``, ``air_receive_port`` and ``join_rx_timeout_s``: the emulated radio used by
    ``AT+JOIN`` (see the module text); ``air_receive_port`` 0 picks a free port
    (:attr:`air_receive_port` tells which once started).
    """

    label = "RAK3172"
    joined_line = b"+EVT:JOINED\r\n"
    failed_line = b"+EVT:JOIN_FAILED_RX_TIMEOUT\r\n"

    def __init__(
        self,
        link_dir: str | os.PathLike[str],
        *,
        link_name: str = DEFAULT_LINK_NAME,
        dev_eui: bytes = FACTORY_DEV_EUI,
        work_mode: int = 1,
        air_address: tuple[str, int] | None = None,
        air_receive_port: int = 0,
        join_rx_timeout_s: float = JOIN_RX_TIMEOUT_S,
        pty: bool = True,
        tcp: bool = False,
        tcp_port: int = 0,
        baudrate: int = 115200,
        expected_baud: int | None = None,
        plan: FaultPlan | None = None,
        paced: bool = False,
    ) -> None:
        super().__init__(
            Path(link_dir) / link_name,
            pty=pty,
            tcp=tcp,
            tcp_port=tcp_port,
            baudrate=baudrate,
            expected_baud=expected_baud,
            plan=plan,
            paced=paced,
        )
        self._radio(air_address, air_receive_port, join_rx_timeout_s)
        self._join_params: tuple[int, int, int, int] = (0, 0, DEFAULT_JOIN_INTERVAL_S, 0)
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
        # The join status lives in RAM: a restarted module has to join again.
        self._forget_join()
        return format_banner(VERSION, self.work_mode)

    # --- joining ------------------------------------------------------------------------------

    def _start_joining(self, interval_s: int, attempts: int) -> None:
        # RUI3 counts 0 attempts as one (the default of AT+JOIN); so does the radio.
        self._begin_join(
            JoinKeys(self.dev_eui, self.join_eui, self.app_key),
            attempts=attempts,
            interval_s=interval_s,
        )

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

    def _answer(self, request: Request) -> _Answer | None:
        name = request.command.name
        if name in LORAWAN_COMMANDS and self.work_mode != 1:
            return b"", Status.AT_MODE_NO_SUPPORT
        handler = _COMMANDS.get((name, request.form))
        if handler is None:
            return b"", Status.AT_ERROR
        return handler(self, request)

    # --- the command table: one handler per command and form --------------------------------

    @_COMMANDS.on(("", "run"))
    def _at(self, request: Request) -> _Answer | None:
        return b"", Status.OK

    @_COMMANDS.on(("Z", "run"))
    def _atz(self, request: Request) -> _Answer | None:
        # RUI3: ATZ answers nothing; the banner follows the restart.
        self.restart()
        return None

    @_COMMANDS.on(("VER", "read"))
    def _read_version(self, request: Request) -> _Answer | None:
        return format_value("VER", VERSION), Status.OK

    @_COMMANDS.on(("NWM", "read"))
    def _read_work_mode(self, request: Request) -> _Answer | None:
        return format_value("NWM", str(self.work_mode)), Status.OK

    @_COMMANDS.on(("NWM", "set"))
    def _set_work_mode(self, request: Request) -> _Answer | None:
        (mode,) = parse_values("NWM", request.argument)
        assert isinstance(mode, int)
        if mode != self.work_mode:
            # A new work mode is applied by restarting, after the OK.
            self.work_mode = mode
            self._reply(format_status(Status.OK))
            self.restart()
            return None
        return b"", Status.OK

    def _keys(self) -> dict[str, bytes]:
        return {"DEVEUI": self.dev_eui, "APPEUI": self.join_eui, "APPKEY": self.app_key}

    @_COMMANDS.on(("DEVEUI", "read"), ("APPEUI", "read"), ("APPKEY", "read"))
    def _read_key(self, request: Request) -> _Answer | None:
        name = request.command.name
        return format_value(name, self._keys()[name].hex().upper()), Status.OK

    @_COMMANDS.on(("DEVEUI", "set"))
    def _set_dev_eui(self, request: Request) -> _Answer | None:
        self.dev_eui = self._raw("DEVEUI", request)
        return b"", Status.OK

    @_COMMANDS.on(("APPEUI", "set"))
    def _set_join_eui(self, request: Request) -> _Answer | None:
        self.join_eui = self._raw("APPEUI", request)
        return b"", Status.OK

    @_COMMANDS.on(("APPKEY", "set"))
    def _set_app_key(self, request: Request) -> _Answer | None:
        self.app_key = self._raw("APPKEY", request)
        return b"", Status.OK

    @staticmethod
    def _raw(name: str, request: Request) -> bytes:
        (raw,) = parse_values(name, request.argument)
        assert isinstance(raw, bytes)
        return raw

    @_COMMANDS.on(("BAND", "read"))
    def _read_band(self, request: Request) -> _Answer | None:
        return format_value("BAND", str(self.band)), Status.OK

    @_COMMANDS.on(("BAND", "set"))
    def _set_band(self, request: Request) -> _Answer | None:
        (band,) = parse_values("BAND", request.argument)
        assert isinstance(band, int)
        self.band = band
        return b"", Status.OK

    @_COMMANDS.on(("NJM", "read"))
    def _read_join_mode(self, request: Request) -> _Answer | None:
        return format_value("NJM", str(self.join_mode)), Status.OK

    @_COMMANDS.on(("NJM", "set"))
    def _set_join_mode(self, request: Request) -> _Answer | None:
        (mode,) = parse_values("NJM", request.argument)
        assert isinstance(mode, int)
        self.join_mode = mode
        return b"", Status.OK

    @_COMMANDS.on(("JOIN", "read"))
    def _read_join(self, request: Request) -> _Answer | None:
        return format_value("JOIN", ":".join(map(str, self._join_params))), Status.OK

    @_COMMANDS.on(("JOIN", "set"), ("JOIN", "run"))
    def _join(self, request: Request) -> _Answer | None:
        if request.form == "set":
            # Every field of the JOIN row is an integer.
            values = parse_values("JOIN", request.argument)
            join, auto, interval_s, attempts = (int(value) for value in values)
            self._join_params = (join, auto, interval_s, attempts)
        join, _auto, interval_s, attempts = self._join_params
        if self.join_mode != 1:
            # An ABP module has its session already: there is nothing to join.
            return b"", Status.AT_ERROR
        if request.form == "set" and join == 0:
            self.radio.stop()
        else:
            self._start_joining(interval_s, attempts)
        return b"", Status.OK

    @_COMMANDS.on(("NJS", "read"))
    def _read_join_status(self, request: Request) -> _Answer | None:
        return format_value("NJS", "1" if self.joined else "0"), Status.OK
