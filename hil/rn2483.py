"""An emulated Microchip RN2483 LoRaWAN module on a pseudo-terminal.

The RN2483 speaks plain-text commands (RN2483 LoRa Technology Module Command Reference User's
Guide, DS40001784): a command is words separated by one space and ends in CR LF; every reply
is one line ending in CR LF::

    host    sys get ver<CR><LF>
    module  RN2483 1.0.5 Oct 31 2018 15:06:52<CR><LF>
    host    mac set deveui 0004A30B001A2B3C<CR><LF>
    module  ok<CR><LF>

Commands played: ``sys get ver``, ``sys get hweui``, ``sys reset``, ``mac reset 868|433``,
``mac set deveui|appeui|appkey <hex>``, ``mac get deveui|appeui|band|devaddr``, ``mac save``,
``mac join otaa|abp``. Bad arguments, unknown commands and a line without its CR answer
``invalid_param``; the busy fault answers ``busy``. The module cannot read its AppKey back
(there is no ``mac get appkey``), as on the real part.

**Joining.** ``mac join otaa`` has two replies, as on the part: ``ok`` at once (the join has
started; ``keys_not_init`` instead while no AppKey is set, ``busy`` while a join is under
way), then ``accepted`` when a join accept it can open with its AppKey arrives, or ``denied``
when none came within the receive windows. One command is one join request. The radio is a
:class:`owlgate.hil.module_radio.JoinRadio` on the loopback air (``air_address``,
``air_receive_port``, as for the RAK3172). ``mac join abp`` answers ``keys_not_init``: this
emulator keeps no ABP session keys. The join lives in RAM: a restart forgets it.

Settings written with ``mac set`` live in RAM until ``mac save`` writes them to EEPROM: a
restart (``sys reset``, a brown-out) loses unsaved ones. A factory module reports its
hardware EUI with ``sys get hweui`` and a DevEUI of zeros.

**Auto-baud** (command reference, "auto-baud detection"): the module starts at 57600 baud
and follows the host to another rate when it sees a break condition followed by 0x55. The
emulator reads the host's baud rate from the pty's termios settings (pyserial sets them as it
would on a USB adapter) when the bytes were written
(:attr:`owlgate.hil.serial_device.SerialDevice.rx_baud`): bytes sent at another rate than the
module's are garbage to it and dropped (counted in :attr:`EmulatedRn2483.garbled_bytes`).
Over ``socket://`` there is no baud rate: every byte is understood. A pty carries no break signal; a
NUL byte stands for one (a UART reads a break as a NUL with a framing error, and a host sends
a break portably as a NUL at a low baud rate). A restart returns to 57600.

The commands are one :class:`~owlgate.hil.serial_device.CommandTable` keyed by the command's
words, ``"*"`` standing for an argument (``("mac", "set", "deveui", "*")``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Final

from .faults import FaultPlan
from .module_radio import JOIN_RX_TIMEOUT_S, JoinKeys
from .pty import host_baud as host_baud  # where it was first defined; importers use it
from .rak3172_lorawan import JoiningModule
from .serial_device import CommandTable

log = logging.getLogger(__name__)

DEFAULT_LINK_NAME: Final = "ttyRN0"
VERSION: Final = "RN2483 1.0.5 Oct 31 2018 15:06:52"
#: Microchip's EUI block, as printed on the module's label.
FACTORY_HWEUI: Final = bytes.fromhex("0004A30B001A2B3C")
DEFAULT_BAUD: Final = 57600
#: The byte that ends an auto-baud sequence after the break (alternating bits to measure).
AUTOBAUD_SYNC: Final = 0x55
BREAK: Final = 0x00

#: A command's words, ``"*"`` for each argument.
_Words = tuple[str, ...]
#: The commands of the RN2483 command reference this emulator plays; a handler gets the
#: command's words (arguments included) and returns the reply (None: none now).
_COMMANDS: CommandTable[_Words, EmulatedRn2483, bytes | None] = CommandTable("RN2483")
#: The most arguments a command here takes.
_MAX_ARGUMENTS: Final = 1
_INVALID: Final = b"invalid_param\r\n"
_OK: Final = b"ok\r\n"
_KEYS_NOT_INIT: Final = b"keys_not_init\r\n"


class EmulatedRn2483(JoiningModule):
    """An RN2483 on a pty at ``<link_dir>/<link_name>`` (see the module text)."""

    label = "RN2483"
    joined_line = b"accepted\r\n"
    failed_line = b"denied\r\n"

    def __init__(
        self,
        link_dir: str | os.PathLike[str],
        *,
        link_name: str = DEFAULT_LINK_NAME,
        hweui: bytes = FACTORY_HWEUI,
        air_address: tuple[str, int] | None = None,
        air_receive_port: int = 0,
        join_rx_timeout_s: float = JOIN_RX_TIMEOUT_S,
        pty: bool = True,
        tcp: bool = False,
        tcp_port: int = 0,
        baudrate: int = DEFAULT_BAUD,
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
        self.hweui = hweui
        #: The rate the module listens and answers at now.
        self.baud = DEFAULT_BAUD
        #: What ``mac save`` wrote (EEPROM): kept across restarts.
        self.saved: dict[str, bytes] = {
            "deveui": bytes(8),
            "appeui": bytes(8),
            "appkey": bytes(16),
        }
        #: The settings in RAM (what ``mac set`` changed).
        self.settings: dict[str, bytes] = dict(self.saved)
        self.band = 868
        #: Bytes dropped because the host sent them at another baud rate.
        self.garbled_bytes = 0
        #: Auto-baud sequences the module followed.
        self.autobauds = 0
        self._break_seen = False
        self._radio(air_address, air_receive_port, join_rx_timeout_s)

    # --- bytes and baud -----------------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        # The rate the host wrote these bytes at (termios, read per write): a host changes its
        # rate between writes, not within.
        rate = self.serial.rx_baud
        understood = bytearray()
        for byte in data:
            if byte == BREAK:
                # A break: what came before it on this line is void.
                self._break_seen = True
                understood.clear()
                self._in.clear()
                continue
            if self._break_seen and byte == AUTOBAUD_SYNC:
                self._break_seen = False
                if rate is not None:
                    self.baud = rate
                self.autobauds += 1
                log.info("emulated RN2483 %s follows the host to %s baud", self.path, self.baud)
                continue
            self._break_seen = False
            if rate is not None and rate != self.baud:
                self.garbled_bytes += 1
                continue
            understood.append(byte)
        if understood:
            self.take(bytes(understood))

    def _host_listens(self) -> bool:
        rate = self.serial.host_rate()
        return rate is None or rate == self.baud

    # --- commands -----------------------------------------------------------------------------

    def busy_reply(self) -> bytes:
        return b"busy\r\n"

    def on_restart(self) -> bytes:
        self._forget_join()
        self.settings = dict(self.saved)
        self.band = 868
        self.baud = DEFAULT_BAUD
        # The version line after a reset goes out at 57600; at another rate the host reads
        # garbage, which a real UART mostly drops as framing errors.
        return f"{VERSION}\r\n".encode() if self._host_listens() else b""

    def answer(self, line: str) -> bytes | None:
        if not line.endswith("\r\n"):
            return _INVALID
        words = tuple(line[:-2].split(" "))
        # The longest command first: "mac set deveui X" is ("mac", "set", "deveui", "*").
        for count in range(min(_MAX_ARGUMENTS, len(words) - 1), -1, -1):
            key = words[: len(words) - count] + ("*",) * count
            handler = _COMMANDS.get(key)
            if handler is not None:
                return handler(self, words)
        return _INVALID

    # --- the command table --------------------------------------------------------------------

    @_COMMANDS.on(("sys", "get", "ver"))
    def _version(self, words: _Words) -> bytes | None:
        return f"{VERSION}\r\n".encode()

    @_COMMANDS.on(("sys", "get", "hweui"))
    def _hweui(self, words: _Words) -> bytes | None:
        return f"{self.hweui.hex().upper()}\r\n".encode()

    @_COMMANDS.on(("sys", "reset"))
    def _reset(self, words: _Words) -> bytes | None:
        self.restart()
        return None

    @_COMMANDS.on(("mac", "reset", "*"))
    def _mac_reset(self, words: _Words) -> bytes | None:
        band = words[2]
        if band not in ("868", "433"):
            return _INVALID
        self.band = int(band)
        self.settings = {"deveui": bytes(8), "appeui": bytes(8), "appkey": bytes(16)}
        return _OK

    @_COMMANDS.on(
        ("mac", "set", "deveui", "*"), ("mac", "set", "appeui", "*"), ("mac", "set", "appkey", "*")
    )
    def _mac_set(self, words: _Words) -> bytes | None:
        _, _, name, value = words
        raw = _hex(value, 16 if name == "appkey" else 8)
        if raw is None:
            return _INVALID
        self.settings[name] = raw
        return _OK

    @_COMMANDS.on(("mac", "get", "deveui"), ("mac", "get", "appeui"))
    def _mac_get(self, words: _Words) -> bytes | None:
        return f"{self.settings[words[2]].hex().upper()}\r\n".encode()

    @_COMMANDS.on(("mac", "get", "band"))
    def _mac_get_band(self, words: _Words) -> bytes | None:
        return f"{self.band}\r\n".encode()

    @_COMMANDS.on(("mac", "save"))
    def _mac_save(self, words: _Words) -> bytes | None:
        self.saved = dict(self.settings)
        return _OK

    @_COMMANDS.on(("mac", "get", "devaddr"))
    def _mac_get_devaddr(self, words: _Words) -> bytes | None:
        return f"{self.dev_addr or 0:08X}\r\n".encode()

    @_COMMANDS.on(("mac", "join", "*"))
    def _mac_join(self, words: _Words) -> bytes | None:
        mode = words[2]
        if mode not in ("otaa", "abp"):
            return _INVALID
        if self.radio.joining:
            return b"busy\r\n"
        if mode == "abp" or self.settings["appkey"] == bytes(16):
            return _KEYS_NOT_INIT
        self._begin_join(
            JoinKeys(self.settings["deveui"], self.settings["appeui"], self.settings["appkey"]),
            attempts=1,
            interval_s=0.0,
        )
        return _OK


def _hex(text: str, size: int) -> bytes | None:
    if len(text) != 2 * size:
        return None
    with contextlib.suppress(ValueError):
        return bytes.fromhex(text)
    return None
