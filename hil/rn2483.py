"""An emulated Microchip RN2483 LoRaWAN module on a pseudo-terminal.

The RN2483 speaks plain-text commands (RN2483 LoRa Technology Module Command Reference User's
Guide, DS40001784): a command is words separated by one space and ends in CR LF; every reply
is one line ending in CR LF::

    host    sys get ver<CR><LF>
    module  RN2483 1.0.5 Oct 31 2018 15:06:52<CR><LF>
    host    mac set deveui 0004A30B001A2B3C<CR><LF>
    module  ok<CR><LF>

Commands played: ``sys get ver``, ``sys get hweui``, ``sys reset``, ``mac reset 868|433``,
``mac set deveui|appeui|appkey <hex>``, ``mac get deveui|appeui|band``, ``mac save``. Bad
arguments, unknown commands and a line without its CR answer ``invalid_param``; the busy
fault answers ``busy``. The module cannot read its AppKey back (there is no
``mac get appkey``), as on the real part.

Settings written with ``mac set`` live in RAM until ``mac save`` writes them to EEPROM: a
restart (``sys reset``, a brown-out) loses unsaved ones. A factory module reports its
hardware EUI with ``sys get hweui`` and a DevEUI of zeros.

**Auto-baud** (command reference, "auto-baud detection"): the module starts at 57600 baud
and follows the host to another rate when it sees a break condition followed by 0x55. The
emulator reads the host's baud rate from the pty's termios settings (pyserial sets them as it
would on a USB adapter): bytes sent at another rate than the module's are garbage to it and
dropped (counted in :attr:`EmulatedRn2483.garbled_bytes`). A pty carries no break signal; a
NUL byte stands for one (a UART reads a break as a NUL with a framing error, and a host sends
a break portably as a NUL at a low baud rate). A restart returns to 57600.
"""

from __future__ import annotations

import contextlib
import logging
import os
import termios
from pathlib import Path
from typing import Final

from .rak3172_lorawan import EmulatedSerialModule

log = logging.getLogger(__name__)

DEFAULT_LINK_NAME: Final = "ttyRN0"
VERSION: Final = "RN2483 1.0.5 Oct 31 2018 15:06:52"
#: Microchip's EUI block, as printed on the module's label.
FACTORY_HWEUI: Final = bytes.fromhex("0004A30B001A2B3C")
DEFAULT_BAUD: Final = 57600
#: The byte that ends an auto-baud sequence after the break (alternating bits to measure).
AUTOBAUD_SYNC: Final = 0x55
BREAK: Final = 0x00

#: termios speed constants back to bits per second.
_SPEEDS: Final = {
    getattr(termios, f"B{rate}"): rate
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
    if hasattr(termios, f"B{rate}")
}


def host_baud(tty_path: str) -> int | None:
    """The baud rate the host set on the pty at ``tty_path`` (None if it cannot be read)."""
    try:
        fd = os.open(tty_path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        speed = termios.tcgetattr(fd)[5]
    except termios.error:
        return None
    finally:
        os.close(fd)
    return _SPEEDS.get(speed)


class EmulatedRn2483(EmulatedSerialModule):
    """An RN2483 on a pty at ``<link_dir>/<link_name>`` (see the module text)."""

    label = "RN2483"

    def __init__(
        self,
        link_dir: str | os.PathLike[str],
        *,
        link_name: str = DEFAULT_LINK_NAME,
        hweui: bytes = FACTORY_HWEUI,
    ) -> None:
        super().__init__(Path(link_dir) / link_name)
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

    # --- bytes and baud -----------------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        # termios is read once per chunk: a host changes its rate between writes, not within.
        tty_path = self.tty_path
        rate = host_baud(tty_path) if tty_path is not None else None
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
        tty_path = self.tty_path
        rate = host_baud(tty_path) if tty_path is not None else None
        return rate is None or rate == self.baud

    # --- commands -----------------------------------------------------------------------------

    def busy_reply(self) -> bytes:
        return b"busy\r\n"

    def on_restart(self) -> bytes:
        self.settings = dict(self.saved)
        self.band = 868
        self.baud = DEFAULT_BAUD
        # The version line after a reset goes out at 57600; at another rate the host reads
        # garbage, which a real UART mostly drops as framing errors.
        return f"{VERSION}\r\n".encode() if self._host_listens() else b""

    def answer(self, line: str) -> bytes | None:
        if not line.endswith("\r\n"):
            return b"invalid_param\r\n"
        words = line[:-2].split(" ")
        match words:
            case ["sys", "get", "ver"]:
                return f"{VERSION}\r\n".encode()
            case ["sys", "get", "hweui"]:
                return f"{self.hweui.hex().upper()}\r\n".encode()
            case ["sys", "reset"]:
                self.restart()
                return None
            case ["mac", "reset", band] if band in ("868", "433"):
                self.band = int(band)
                self.settings = {"deveui": bytes(8), "appeui": bytes(8), "appkey": bytes(16)}
                return b"ok\r\n"
            case ["mac", "set", ("deveui" | "appeui" | "appkey") as name, value]:
                size = 16 if name == "appkey" else 8
                raw = _hex(value, size)
                if raw is None:
                    return b"invalid_param\r\n"
                self.settings[name] = raw
                return b"ok\r\n"
            case ["mac", "get", ("deveui" | "appeui") as name]:
                return f"{self.settings[name].hex().upper()}\r\n".encode()
            case ["mac", "get", "band"]:
                return f"{self.band}\r\n".encode()
            case ["mac", "save"]:
                self.saved = dict(self.settings)
                return b"ok\r\n"
            case _:
                return b"invalid_param\r\n"


def _hex(text: str, size: int) -> bytes | None:
    if len(text) != 2 * size:
        return None
    with contextlib.suppress(ValueError):
        return bytes.fromhex(text)
    return None
