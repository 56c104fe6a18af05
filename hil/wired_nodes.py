"""Emulated wired sensor nodes on a pseudo-terminal: the node side of wired protocol v1
(``docs/protocol/wired-v1.md``), built on the node-side code itself,
:class:`owlgate.codecs.node.wired.WiredNode`, which real nodes run under MicroPython.

:class:`EmulatedWiredBus` opens a pty, puts it in raw mode and points a stable symlink
(``<link_dir>/ttyOWLW0`` by default) at its slave end, so the gateway's bus master opens it
like a USB RS-485 adapter. Every frame the host sends reaches every emulated node, as on a
shared RS-485 pair; the addressed node answers. Test hooks add readings, silence a node,
corrupt its next answer, make it repeat a stale answer, unplug and replug the line, and tell
what each node has been acknowledged and which settings it applied.

It runs in the caller's asyncio loop on a :class:`owlgate.hil.serial_device.SerialDevice`
(:attr:`EmulatedWiredBus.serial`), as :mod:`owlgate.hil.concentrator` does: the pty path
and/or a ``socket://`` port (``tcp=True``, :attr:`~EmulatedWiredBus.url`), optionally paced at
the host's baud rate, with a :class:`~owlgate.hil.faults.FaultPlan`
(:attr:`~EmulatedWiredBus.plan`) on both directions; the test hooks' line faults (a corrupted
answer, line noise) are logged in the plan's log too. The requests are answered by the node
code itself (:meth:`owlgate.codecs.node.wired.WiredNode.handle`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

from ..codecs.node.framing import DELIMITER, FrameDecoder, cobs_encode, crc16, encode_frame
from ..codecs.node.wired import Readings, WiredNode, decode_message, encode_message
from .faults import FaultKind, FaultPlan
from .pty import AsyncLifecycle
from .serial_device import BytesHandler, OnSerialDevice, SerialDevice

log = logging.getLogger(__name__)

DEFAULT_LINK_NAME: Final = "ttyOWLW0"


@dataclass(slots=True)
class _Emulated:
    node: WiredNode
    silent: bool = False
    corrupt_next: bool = False
    replay_next: bool = False
    garble_next: bool = False
    answer_as: int | None = None
    last_readings: bytes | None = None
    answers: int = 0
    requests: list[object] = field(default_factory=list)


class EmulatedWiredBus(OnSerialDevice, AsyncLifecycle):
    """Wired nodes answering by address on a pty whose path is :attr:`path`.

    Add nodes with :meth:`add_node` (before or after :meth:`start`); reach each one's node
    side with :meth:`node` (``node(7).add_reading({...})``).

    The line: ``pty`` (the path, default) and/or ``tcp`` (``tcp_port``, 0 for a free one);
    ``paced`` paces it at the host's pty rate or ``baudrate`` (off by default: an answer still
    on the line when a host closes the pty reaches the next host that opens it, which the
    edge's bus tests do not expect, see ``docs/hil-devices.md``); ``expected_baud`` refuses a
    host at another rate; ``plan`` the faults on both directions.
    """

    def __init__(
        self,
        link_dir: str | os.PathLike[str],
        *,
        link_name: str = DEFAULT_LINK_NAME,
        pty: bool = True,
        tcp: bool = False,
        tcp_port: int = 0,
        baudrate: int = 115200,
        expected_baud: int | None = None,
        plan: FaultPlan | None = None,
        paced: bool = False,
    ):
        self.path = Path(link_dir) / link_name
        self._nodes: dict[int, _Emulated] = {}
        self._decoder = FrameDecoder()
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
            label=f"emulated wired bus {self.path}",
            on_dropped=self._count_dropped,
        )
        #: The faults on the line, and the log of every fault applied or injected.
        self.plan = self.serial.plan
        self._changed = asyncio.Event()
        self._request_count = 0
        #: Answers that could not be written because the line was unplugged (or a write failed).
        self.link_dropped = 0

    # --- nodes --------------------------------------------------------------------------------

    def add_node(
        self,
        address: int,
        dev_eui: bytes,
        *,
        settings: Mapping[str, int | float | bool] | None = None,
        capacity: int = 64,
        next_seq: int = 1,
    ) -> WiredNode:
        """Put a node on the bus; ``settings`` are the ones it understands, with defaults."""
        if address in self._nodes:
            raise ValueError(f"a node already answers at address {address}")
        node = WiredNode(
            address,
            dev_eui,
            settings=dict(settings) if settings is not None else None,
            capacity=capacity,
            next_seq=next_seq,
        )
        self._nodes[address] = _Emulated(node)
        return node

    def replace_node(self, address: int, node: WiredNode) -> None:
        """Put ``node`` at ``address`` in place of the one there (a node that rebooted, or was
        swapped for another board)."""
        self._nodes[address] = _Emulated(node)

    def node(self, address: int) -> WiredNode:
        """The node side of the node at ``address``."""
        return self._nodes[address].node

    def set_silent(self, address: int, silent: bool = True) -> None:
        """Make the node stop answering (it still hears the bus), or answer again."""
        self._nodes[address].silent = silent

    def corrupt_next(self, address: int) -> None:
        """Send that node's next answer with a wrong CRC, as a flipped bit would."""
        self._nodes[address].corrupt_next = True

    def replay_next(self, address: int) -> None:
        """Make the node answer its next POLL with its previous READINGS answer, byte for
        byte (a node firmware that repeats a stale reply)."""
        self._nodes[address].replay_next = True

    def garble_next(self, address: int) -> None:
        """Send that node's next answer as a frame with a good CRC around bytes that are no
        wired message (a node with a firmware bug)."""
        self._nodes[address].garble_next = True

    def answer_as(self, address: int, other: int | None) -> None:
        """Make that node put address ``other`` in its answers (a misconfigured node), or,
        with None, its own again."""
        self._nodes[address].answer_as = other

    def inject_garbage(self, size: int = 16) -> None:
        """Line noise: ``size`` non-zero bytes between two delimiters, one bad frame."""
        self._write_fault(DELIMITER + bytes(range(1, size + 1)) + DELIMITER, "insert", "noise")

    def acked(self, address: int) -> int:
        """The highest sequence number the host has acknowledged to that node."""
        return self._nodes[address].node.acked_seq

    def pending(self, address: int) -> list[int]:
        """The sequence numbers that node still holds (unacknowledged)."""
        return self._nodes[address].node.pending()

    def applied_settings(self, address: int) -> tuple[int, dict[str, object]]:
        """The settings version that node runs and its settings now."""
        node = self._nodes[address].node
        return node.settings_version, dict(node.settings)

    def requests(self, address: int) -> list[object]:
        """The valid requests addressed to that node, in order (``Poll``, ``Settings``...)."""
        return list(self._nodes[address].requests)

    def answers(self, address: int) -> int:
        """Answers that node wrote (corrupted ones included)."""
        return self._nodes[address].answers

    async def wait_for(self, address: int, kind: type, count: int = 1, *, timeout_s: float) -> None:
        """Wait until the node at ``address`` has received ``count`` requests of class
        ``kind``; ``TimeoutError`` after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while True:
                seen = [item for item in self._nodes[address].requests if isinstance(item, kind)]
                if len(seen) >= count:
                    return
                self._changed.clear()
                await self._changed.wait()

    async def next_request(self, *, timeout_s: float) -> None:
        """Wait until any node receives its next valid request (the host has then finished
        with the previous answer); ``TimeoutError`` after ``timeout_s``."""
        seen = self._request_count
        async with asyncio.timeout(timeout_s):
            while self._request_count == seen:
                self._changed.clear()
                await self._changed.wait()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Create the pty and the symlink and/or the TCP port, and start answering."""
        self._decoder.reset()
        await self.serial.start()
        self._opened()
        return self

    async def close(self) -> None:
        """Close the pty and remove the symlink, close the TCP port (idempotent)."""
        await self.serial.close()

    @property
    def link_errors(self) -> int:
        """Frames from the host dropped by the bus's decoder (CRC, COBS, overflow)."""
        decoder = self._decoder
        return decoder.crc_errors + decoder.frame_errors + decoder.overflows

    def unplug(self) -> None:
        """The adapter is pulled: the pty closes (the host's reads fail), the path is gone.
        The nodes keep their readings, as powered nodes on a cut line would."""
        log.info("emulated wired bus %s unplugged", self.path)
        self.serial.unplug_now()

    def replug(self) -> None:
        """Plugged back in: a new pty behind the same path (the TCP port listens again)."""
        self.serial.unplug_now()
        self._decoder.reset()
        self.serial.replug_now()
        self._opened()

    def _opened(self) -> None:
        log.info("emulated wired bus on %s (%s)", self.path, self.serial.tty_path)

    # --- the bus ------------------------------------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        for payload in self._decoder.feed(data):
            self._frame(payload)

    def _frame(self, payload: bytes) -> None:
        # Every node hears every frame; at most the addressed one answers.
        for emulated in self._nodes.values():
            node = emulated.node
            ignored, invalid = node.ignored, node.invalid
            reply = node.handle(payload)
            if node.ignored == ignored and node.invalid == invalid:
                emulated.requests.append(decode_message(payload))
                self._request_count += 1
                self._changed.set()
            if reply is None or emulated.silent:
                continue
            if isinstance(decode_message(reply), Readings):
                reply = self._maybe_replay(emulated, reply)
            self._answer(emulated, reply)

    @staticmethod
    def _maybe_replay(emulated: _Emulated, reply: bytes) -> bytes:
        if emulated.replay_next and emulated.last_readings is not None:
            emulated.replay_next = False
            return emulated.last_readings
        emulated.last_readings = reply
        return reply

    def _answer(self, emulated: _Emulated, reply: bytes) -> None:
        emulated.answers += 1
        if emulated.answer_as is not None:
            message = decode_message(reply)
            message.address = emulated.answer_as
            reply = encode_message(message)
        if emulated.garble_next:
            emulated.garble_next = False
            reply = b"\xa1\x01\x02"  # a CBOR map {1: 2}: well-formed, but no message
            if not emulated.corrupt_next:
                self._write_fault(encode_frame(reply), "corrupt", "answer garbled, good CRC")
                return
        if emulated.corrupt_next:
            emulated.corrupt_next = False
            wrong = crc16(reply) ^ 0x0001
            frame = DELIMITER + cobs_encode(reply + wrong.to_bytes(2, "big")) + DELIMITER
            self._write_fault(frame, "corrupt", "answer with a wrong CRC")
            return
        self.serial.send(encode_frame(reply))

    def _write_fault(self, data: bytes, kind: FaultKind, detail: str) -> None:
        # A test hook's bytes: logged with the plan's faults, then sent as any answer is.
        self.plan.log.record("to_host", kind, self.plan.position("to_host"), data, detail)
        self.serial.send(data)

    def _count_dropped(self) -> None:
        self.link_dropped += 1
