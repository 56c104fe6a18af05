"""An emulated RAK3172 running RUI3 AT firmware, on a pseudo-terminal, in LoRa P2P mode.

:class:`EmulatedRak3172` plays the module's side of :mod:`owlgate.codecs.rui3` (the same
codec the host uses): it answers the AT commands of the command table, keeps the settings a
real module keeps, and a test drives the radio side: :meth:`~EmulatedRak3172.inject` reports a
received packet, :attr:`~EmulatedRak3172.sent` records what the host transmitted, and fault
hooks answer busy, restart the module, unplug and replug it.

Like :class:`owlgate.hil.concentrator.EmulatedConcentrator` its port is a
:class:`owlgate.hil.serial_device.SerialDevice` (:attr:`EmulatedRak3172.serial`): a pty in raw
mode behind a stable symlink (``<link_dir>/ttyRAK0`` by default) and/or a ``socket://`` port
(``tcp=True``, :attr:`~EmulatedRak3172.url`), optionally paced at the host's baud rate, with a
:class:`~owlgate.hil.faults.FaultPlan` (:attr:`~EmulatedRak3172.plan`) on both directions, in
the caller's asyncio loop. Every AT command and form it answers is one entry of a
:class:`~owlgate.hil.serial_device.CommandTable`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Self

from ..codecs.errors import CodecError
from ..codecs.rui3 import (
    MAX_LINE_BYTES,
    PRECV_CONTINUOUS,
    PRECV_SINGLE,
    PRECV_STOP,
    Request,
    Status,
    format_banner,
    format_rx_event,
    format_status,
    format_value,
    parse_request,
    parse_values,
)
from .faults import FaultPlan
from .pty import AsyncLifecycle
from .serial_device import BytesHandler, CommandTable, OnSerialDevice, SerialDevice

log = logging.getLogger(__name__)

DEFAULT_LINK_NAME: Final = "ttyRAK0"
#: What AT+VER=? answers per firmware style (the single-line RX event came with 3.2.0).
VERSIONS: Final = {"3.2": "RUI_4.0.6_RAK3172-E", "legacy": "RUI_3.0.0-p2_22q1_final.87"}
#: The P2P settings of a module out of the box (RUI3 defaults for EU868).
DEFAULT_P2P: Final = (868_000_000, 7, 125, 0, 8, 14)
#: How long a restart takes before the banner (a real module needs some tens of ms).
RESTART_DELAY_S: Final = 0.05
#: How long a transmission "takes" before +EVT:TXP2P DONE (airtime is not modelled).
TX_DURATION_S: Final = 0.01

FirmwareStyle = Literal["3.2", "legacy"]
_Answer = tuple[bytes, Status]

#: The RUI3 commands this emulator plays, one handler per (command, form).
_COMMANDS: CommandTable[tuple[str, str], EmulatedRak3172, _Answer] = CommandTable("RUI3 P2P")


@dataclass(frozen=True, slots=True)
class SentPacket:
    """One ``AT+PSEND`` the module carried out, with the radio settings it used."""

    payload: bytes
    frequency_hz: int
    spreading_factor: int
    bandwidth_khz: int
    coding_rate: int
    preamble: int
    tx_power_dbm: int
    iq_inverted: bool
    monotonic_s: float  # the host clock (time.monotonic) when the command was read


class EmulatedRak3172(OnSerialDevice, AsyncLifecycle):
    """A RAK3172 with RUI3 on a pty whose stable path is :attr:`path`.

    ``firmware_style``: ``"3.2"`` prints received packets as one ``+EVT:RXP2P:`` line,
    ``"legacy"`` as the older header line and payload line. ``work_mode`` is the AT+NWM the
    module starts in (1, LoRaWAN, as shipped); like P2P settings and IQ inversion it survives
    restarts, as flash-stored settings do; the receive state does not.

    The line: ``pty`` (the path, default) and/or ``tcp`` (``tcp_port``, 0 for a free one);
    ``paced`` paces it at the host's pty rate or ``baudrate`` (off by default: the edge's
    RAK3172 backend reads the four-line boot banner as several restarts when its lines arrive
    at UART speed, see ``docs/hil-devices.md``); ``expected_baud`` refuses a host at another
    rate; ``plan`` the faults on both directions.
    """

    def __init__(
        self,
        link_dir: str | os.PathLike[str],
        *,
        link_name: str = DEFAULT_LINK_NAME,
        firmware_style: FirmwareStyle = "3.2",
        work_mode: int = 1,
        pty: bool = True,
        tcp: bool = False,
        tcp_port: int = 0,
        baudrate: int = 115200,
        expected_baud: int | None = None,
        plan: FaultPlan | None = None,
        paced: bool = False,
    ) -> None:
        if firmware_style not in VERSIONS:
            raise ValueError(f"firmware_style is '3.2' or 'legacy', got {firmware_style!r}")
        self.path = Path(link_dir) / link_name
        self.firmware_style: FirmwareStyle = firmware_style
        self.work_mode = work_mode
        self.p2p: tuple[int, int, int, int, int, int] = DEFAULT_P2P
        self.iq_inverted = False
        #: The AT+PRECV state: 0 idle (can transmit), 65534 continuous, 65535 one packet.
        self.receive_window = PRECV_STOP
        #: Every command line received from the host, in order, without its line end.
        self.commands: list[str] = []
        #: Every packet transmitted, in order.
        self.sent: list[SentPacket] = []
        #: Restarts so far (by restart(), ATZ, or an AT+NWM change).
        self.restarts = 0
        #: Injected packets not delivered (not receiving, other settings, unplugged).
        self.missed = 0
        #: While true the module records commands and answers none (a hung firmware).
        self.silent = False
        self._busy = 0
        self._booting = False
        #: The transport: pty and/or TCP, pacing, faults.
        self.serial = SerialDevice(
            lambda send: BytesHandler(self._on_bytes),
            pty_path=self.path if pty else None,
            tcp=tcp,
            tcp_port=tcp_port,
            baudrate=baudrate,
            expected_baud=expected_baud,
            plan=plan,
            paced=paced,
            label=f"emulated RAK3172 {self.path}",
        )
        #: The faults on the line, and the log of every fault applied or injected.
        self.plan = self.serial.plan
        self._in = bytearray()
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Create the pty and the symlink and/or the TCP port, and start answering."""
        self._loop = asyncio.get_running_loop()
        self._in = bytearray()
        await self.serial.start()
        self._opened()
        return self

    async def close(self) -> None:
        """Close the pty and remove the symlink, close the TCP port (idempotent)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        await self.serial.close()

    @property
    def version(self) -> str:
        """What AT+VER=? answers."""
        return VERSIONS[self.firmware_style]

    def _opened(self) -> None:
        log.info("emulated RAK3172 on %s (%s)", self.path, self.serial.tty_path)

    # --- fault hooks --------------------------------------------------------------------------

    def busy_next(self, count: int) -> None:
        """Answer the next ``count`` commands with ``AT_BUSY_ERROR`` (and carry none out)."""
        self._busy += count

    def restart(self) -> None:
        """The module restarts (reset pin, brown-out, watchdog): it prints its banner and is
        no longer receiving; flash-stored settings (work mode, P2P, IQ) remain."""
        self.plan.log.record(
            "to_host", "reset", self.plan.position("to_host"), b"", "module restart"
        )
        self._restart()

    def _restart(self) -> None:
        self.restarts += 1
        self.receive_window = PRECV_STOP
        self._booting = False
        self.serial.send(format_banner(self.version, self.work_mode))
        self._changed.set()

    def unplug(self) -> None:
        """The USB cable is pulled: the pty closes and the path is gone; the TCP port refuses
        connections."""
        log.info("emulated RAK3172 %s unplugged", self.path)
        self.serial.unplug_now()

    def replug(self) -> None:
        """Plugged back in: a new pty behind the same path (the TCP port listens again), and
        the module has powered up."""
        self.serial.unplug_now()
        self._in = bytearray()
        self.serial.replug_now()
        self._opened()
        self._restart()

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` to the line as it is (garbage, a line in pieces)."""
        self.plan.log.record("to_host", "insert", self.plan.position("to_host"), data, "raw")
        self.serial.send(data)

    # --- the radio side -----------------------------------------------------------------------

    def inject(
        self,
        payload: bytes,
        rssi_dbm: int,
        snr_db: int,
        *,
        frequency_hz: int | None = None,
        spreading_factor: int | None = None,
        bandwidth_khz: int | None = None,
        iq_inverted: bool = False,
    ) -> bool:
        """A packet on the air (an uplink: IQ not inverted unless said). The module prints it
        and True is returned when it is in P2P receive with matching settings (those not given
        match); otherwise it is missed (counted) and False returned."""
        frequency, sf, bandwidth = self.p2p[0], self.p2p[1], self.p2p[2]
        hears = (
            self.plugged
            and not self._booting
            and self.work_mode == 0
            and self.receive_window in (PRECV_CONTINUOUS, PRECV_SINGLE)
            and frequency_hz in (None, frequency)
            and spreading_factor in (None, sf)
            and bandwidth_khz in (None, bandwidth)
            and iq_inverted == self.iq_inverted
        )
        if not hears:
            self.missed += 1
            return False
        if self.receive_window == PRECV_SINGLE:
            self.receive_window = PRECV_STOP
        self.serial.send(
            format_rx_event(rssi_dbm, snr_db, payload, legacy=self.firmware_style == "legacy")
        )
        return True

    def commands_of(self, name: str) -> list[str]:
        """The command lines for ``AT+<name>`` received so far (all forms)."""
        prefix = f"AT+{name.upper()}"
        return [
            line
            for line in self.commands
            if line.upper() == prefix or line.upper().startswith((prefix + "=", prefix + "?"))
        ]

    async def wait_for(self, name: str, count: int = 1, *, timeout_s: float) -> str:
        """Wait until ``count`` command lines for ``AT+<name>`` have arrived; return the last
        of them. ``TimeoutError`` after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while True:
                found = self.commands_of(name)
                if len(found) >= count:
                    return found[count - 1]
                self._changed.clear()
                await self._changed.wait()

    async def wait_sent(self, count: int = 1, *, timeout_s: float) -> SentPacket:
        """Wait until ``count`` packets were transmitted; return the last of them."""
        async with asyncio.timeout(timeout_s):
            while len(self.sent) < count:
                self._changed.clear()
                await self._changed.wait()
            return self.sent[count - 1]

    # --- the module's side of the AT protocol -------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        self._in += data
        while True:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > MAX_LINE_BYTES:
                    self._in.clear()
                return
            raw = bytes(self._in[:end]).rstrip(b"\r")
            del self._in[: end + 1]
            if raw.strip():
                self._handle(raw.decode("ascii", "replace"))

    def _handle(self, line: str) -> None:
        if self._booting:
            # A restarting module hears nothing.
            return
        self.commands.append(line)
        self._changed.set()
        if self.silent:
            return
        if self._busy > 0:
            self._busy -= 1
            self.serial.send(format_status(Status.AT_BUSY_ERROR))
            return
        try:
            request = parse_request(line)
        except CodecError:
            self.serial.send(format_status(Status.AT_COMMAND_NOT_FOUND))
            return
        try:
            reply, status = self._answer(request)
        except CodecError:
            reply, status = b"", Status.AT_PARAM_ERROR
        self.serial.send(reply + format_status(status))

    def _answer(self, request: Request) -> _Answer:
        handler = _COMMANDS.get((request.command.name, request.form))
        if handler is None:
            return b"", Status.AT_ERROR
        return handler(self, request)

    # --- the command table: one handler per command and form --------------------------------

    @_COMMANDS.on(("", "run"))
    def _at(self, request: Request) -> _Answer:
        return b"", Status.OK

    @_COMMANDS.on(("Z", "run"))
    def _atz(self, request: Request) -> _Answer:
        self._later(RESTART_DELAY_S, self._restart)
        self._booting = True
        return b"", Status.OK

    @_COMMANDS.on(("VER", "read"))
    def _read_version(self, request: Request) -> _Answer:
        return format_value("VER", self.version), Status.OK

    @_COMMANDS.on(("NWM", "read"))
    def _read_work_mode(self, request: Request) -> _Answer:
        return format_value("NWM", str(self.work_mode)), Status.OK

    @_COMMANDS.on(("NWM", "set"))
    def _set_work_mode(self, request: Request) -> _Answer:
        (mode,) = parse_values("NWM", request.argument)
        assert isinstance(mode, int)
        if mode != self.work_mode:
            # RUI3: a new work mode is applied by restarting, after the OK.
            self.work_mode = mode
            self._booting = True
            self._later(RESTART_DELAY_S, self._restart)
        return b"", Status.OK

    @_COMMANDS.on(("P2P", "read"))
    def _read_p2p(self, request: Request) -> _Answer:
        value = ":".join(str(part) for part in self.p2p)
        return format_value("P2P", value), Status.OK

    @_COMMANDS.on(("P2P", "set"))
    def _set_p2p(self, request: Request) -> _Answer:
        if self.work_mode != 0:
            return b"", Status.AT_MODE_NO_SUPPORT
        if self.receive_window != PRECV_STOP:
            return b"", Status.AT_BUSY_ERROR
        values = parse_values("P2P", request.argument)
        numbers = tuple(int(value) for value in values if isinstance(value, int))
        if numbers[2] not in (125, 250, 500):
            return b"", Status.AT_PARAM_ERROR
        freq, sf, bw, cr, preamble, power = numbers
        self.p2p = (freq, sf, bw, cr, preamble, power)
        return b"", Status.OK

    @_COMMANDS.on(("IQINVER", "read"))
    def _read_iq(self, request: Request) -> _Answer:
        return format_value("IQINVER", str(int(self.iq_inverted))), Status.OK

    @_COMMANDS.on(("IQINVER", "set"))
    def _set_iq(self, request: Request) -> _Answer:
        if self.receive_window != PRECV_STOP:
            return b"", Status.AT_BUSY_ERROR
        (inverted,) = parse_values("IQINVER", request.argument)
        self.iq_inverted = bool(inverted)
        return b"", Status.OK

    @_COMMANDS.on(("PRECV", "read"))
    def _read_receive(self, request: Request) -> _Answer:
        return format_value("PRECV", str(self.receive_window)), Status.OK

    @_COMMANDS.on(("PRECV", "set"))
    def _set_receive(self, request: Request) -> _Answer:
        if self.work_mode != 0:
            return b"", Status.AT_MODE_NO_SUPPORT
        (window,) = parse_values("PRECV", request.argument)
        assert isinstance(window, int)
        # Timed windows (1 .. 65533 ms) are not needed by the host: listen as if continuous,
        # which only makes the emulator more forgiving.
        self.receive_window = window
        return b"", Status.OK

    @_COMMANDS.on(("PSEND", "set"))
    def _send_packet(self, request: Request) -> _Answer:
        if self.work_mode != 0:
            return b"", Status.AT_MODE_NO_SUPPORT
        if self.receive_window != PRECV_STOP:
            # RUI3 refuses to transmit while the radio listens.
            return b"", Status.AT_BUSY_ERROR
        (payload,) = parse_values("PSEND", request.argument)
        assert isinstance(payload, bytes)
        self._transmit(payload)
        return b"", Status.OK

    def _transmit(self, payload: bytes) -> None:
        assert self._loop is not None
        freq, sf, bw, cr, preamble, power = self.p2p
        self.sent.append(
            SentPacket(
                payload=payload,
                frequency_hz=freq,
                spreading_factor=sf,
                bandwidth_khz=bw,
                coding_rate=cr,
                preamble=preamble,
                tx_power_dbm=power,
                iq_inverted=self.iq_inverted,
                monotonic_s=self._loop.time(),
            )
        )
        self._changed.set()
        self._later(TX_DURATION_S, self._tx_done)

    def _tx_done(self) -> None:
        self.serial.send(b"+EVT:TXP2P DONE\r\n")

    def _later(self, delay_s: float, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        holder: list[asyncio.TimerHandle] = []

        def run() -> None:
            self._timers.discard(holder[0])
            callback()

        handle = self._loop.call_later(delay_s, run)
        holder.append(handle)
        self._timers.add(handle)
