"""Faults on an emulated serial line, per direction, and the log of every fault applied.

A :class:`FaultPlan` holds :class:`Fault` entries for the two directions of a line,
``to_device`` (what the host writes) and ``to_host`` (what the device answers). The transport
(:class:`owlgate.hil.serial_device.SerialDevice`) hands every write to :meth:`FaultPlan.apply`
before pacing it and gets back the bytes to send and how long to hold them.

Kinds (:data:`FAULT_KINDS`):

- ``corrupt``: XOR a byte with ``mask`` (a random single bit when ``mask`` is None);
- ``drop``: lose a byte;
- ``insert``: put ``garbage`` (or ``count`` random bytes) in front of a byte;
- ``delay``: deliver a write ``duration_s`` later (order is kept: later bytes wait behind it);
- ``stall``: no bytes at all in that direction for ``duration_s`` from the trigger;
- ``silence``: every byte in that direction is lost from the trigger for ``duration_s``
  (0: until the fault is cleared) -- on ``to_host``, a device that stops answering;
- ``reset``: cut a write in the middle: its rest is lost (a device reset mid-frame);
- ``wrong_baud``: bytes are garbled as a UART at another rate would read them;
- ``unplug``: the transport removes its port for ``duration_s`` (0: until ``replug()``);
  ``replug`` is only ever logged, by the transport.

Triggers, at most one per fault:

- ``at_s``: once, on the first write at or after ``at_s`` seconds since :meth:`FaultPlan.start`;
- ``after_bytes``: once, at that offset of the direction's stream (bytes given to
  :meth:`~FaultPlan.apply`, counted before faults);
- ``offsets``: once at each of these stream offsets (byte kinds: corrupt, drop, insert);
- ``probability``: at random from the plan's ``random.Random(seed)``, per byte for the byte
  kinds, per write for the others;
- none: always (every byte, every write; for silence and wrong_baud: from now on).

One draw is taken per byte for every random byte fault whatever the chunking, so a seeded plan
fed the same bytes applies the same faults. Faults are added and cleared while the line runs
(from any thread). Every fault applied lands in :attr:`FaultPlan.log` (a :class:`FaultLog`)
with its ``time.monotonic()`` timestamp.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from owlgate.codecs.errors import OwlgateError

log = logging.getLogger(__name__)

Direction = Literal["to_device", "to_host"]
FaultKind = Literal[
    "corrupt",
    "drop",
    "insert",
    "delay",
    "stall",
    "silence",
    "reset",
    "wrong_baud",
    "unplug",
    "replug",
]

DIRECTIONS: Final[tuple[Direction, ...]] = get_args(Direction)
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
#: Kinds applied byte by byte (the others act on a whole write).
BYTE_KINDS: Final = frozenset({"corrupt", "drop", "insert"})
#: Kinds a :class:`Fault` may hold (``replug`` is an event the transport logs).
PLANNED_KINDS: Final = frozenset(FAULT_KINDS) - {"replug"}


class FaultError(OwlgateError):
    """A fault that cannot be planned (unknown kind or direction, bad trigger or value)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault (see the module text for kinds and triggers)."""

    kind: FaultKind
    direction: Direction
    at_s: float | None = None
    after_bytes: int | None = None
    offsets: tuple[int, ...] = ()
    probability: float | None = None
    duration_s: float = 0.0
    mask: int | None = None
    garbage: bytes = b""
    count: int = 1

    def __post_init__(self) -> None:
        if self.kind not in PLANNED_KINDS:
            raise FaultError(
                f"unknown fault kind {self.kind!r}, expected one of {sorted(PLANNED_KINDS)}"
            )
        if self.direction not in DIRECTIONS:
            raise FaultError(f"unknown direction {self.direction!r}, expected one of {DIRECTIONS}")
        triggers = [
            self.at_s is not None,
            self.after_bytes is not None,
            bool(self.offsets),
            self.probability is not None,
        ]
        if sum(triggers) > 1:
            raise FaultError(
                f"{self.kind}: give at most one of at_s, after_bytes, offsets, probability"
            )
        if self.offsets and self.kind not in BYTE_KINDS:
            raise FaultError(f"{self.kind}: offsets only apply to {sorted(BYTE_KINDS)}")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise FaultError(f"{self.kind}: probability must be in [0, 1], got {self.probability}")
        if self.duration_s < 0 or (self.at_s is not None and self.at_s < 0):
            raise FaultError(f"{self.kind}: duration_s and at_s must not be negative")
        if (self.after_bytes is not None and self.after_bytes < 0) or any(
            o < 0 for o in self.offsets
        ):
            raise FaultError(f"{self.kind}: byte offsets must not be negative")
        if self.mask is not None and not 0 < self.mask <= 0xFF:
            raise FaultError(f"corrupt: mask must be 1..255, got {self.mask}")
        if self.count < 1:
            raise FaultError(f"{self.kind}: count must be at least 1, got {self.count}")

    @property
    def random(self) -> bool:
        """Whether the fault fires at random (a probability)."""
        return self.probability is not None

    @property
    def once(self) -> bool:
        """Whether the fault fires once (at a time or after a number of bytes)."""
        return self.at_s is not None or self.after_bytes is not None


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One fault applied: when (``time.monotonic()``), in which direction, of which kind, at
    which offset of the direction's stream, the bytes it touched (lost, inserted, or the
    original of a corrupted byte) and a human-readable detail."""

    time_s: float
    direction: Direction
    kind: FaultKind
    offset: int
    data: bytes = b""
    detail: str = ""


class FaultLog:
    """Every :class:`FaultEvent`, in order; safe to read from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[FaultEvent] = []

    def record(
        self,
        direction: Direction,
        kind: FaultKind,
        offset: int,
        data: bytes = b"",
        detail: str = "",
    ) -> FaultEvent:
        """Append one event stamped now and return it."""
        event = FaultEvent(time.monotonic(), direction, kind, offset, bytes(data), detail)
        with self._lock:
            self._events.append(event)
        log.info(
            "fault %s %s at byte %d: %s", kind, direction, offset, detail or f"{len(data)} bytes"
        )
        return event

    def events(
        self, kind: FaultKind | None = None, direction: Direction | None = None
    ) -> list[FaultEvent]:
        """The events so far, optionally of one kind and/or direction."""
        with self._lock:
            return [
                e
                for e in self._events
                if (kind is None or e.kind == kind)
                and (direction is None or e.direction == direction)
            ]

    def kinds(self) -> list[FaultKind]:
        """The kind of every event, in order."""
        return [e.kind for e in self.events()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def clear(self) -> None:
        """Forget every event."""
        with self._lock:
            self._events.clear()


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`FaultPlan.apply` made of a write: the bytes to send, how long to hold them
    (``delay_s``), how long the direction stalls from now (``stall_s``), and, for an unplug,
    how long to stay unplugged (``unplug_s``: 0 until replugged; None: no unplug)."""

    data: bytes
    delay_s: float = 0.0
    stall_s: float = 0.0
    unplug_s: float | None = None


@dataclass(slots=True)
class _State:
    fault: Fault
    fired_offsets: set[int] = field(default_factory=set)
    done: bool = False
    active_until_s: float | None = None  # silence and wrong_baud once triggered


class FaultPlan:
    """The faults of one line, both directions (see the module text).

    ``seed`` seeds the plan's :class:`random.Random`; ``log`` is shared with the transport,
    which records unplug, replug and wrong-baud events in it too.
    """

    def __init__(self, faults: tuple[Fault, ...] | list[Fault] = (), *, seed: int = 0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.log = FaultLog()
        self._lock = threading.Lock()
        self._states: list[_State] = []
        self._position: dict[Direction, int] = dict.fromkeys(DIRECTIONS, 0)
        self._started_s = time.monotonic()
        for fault in faults:
            self.add(fault)

    def start(self) -> None:
        """Restart the clock ``at_s`` counts from (the transport calls it when it starts)."""
        with self._lock:
            self._started_s = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self._started_s

    def position(self, direction: Direction) -> int:
        """How many bytes :meth:`apply` has been given in ``direction``."""
        with self._lock:
            return self._position[direction]

    def add(self, fault: Fault) -> Fault:
        """Plan ``fault`` from now on and return it (a handle for :meth:`remove`)."""
        with self._lock:
            self._states.append(_State(fault))
        log.info("fault planned: %s", fault)
        return fault

    def remove(self, fault: Fault) -> bool:
        """Drop one planned fault (the first equal one); whether it was planned."""
        with self._lock:
            for index, state in enumerate(self._states):
                if state.fault == fault:
                    del self._states[index]
                    return True
        return False

    def clear(self, kind: FaultKind | None = None, direction: Direction | None = None) -> int:
        """Drop every planned fault, or those of one kind and/or direction; how many."""
        with self._lock:
            kept = [
                s
                for s in self._states
                if not (
                    (kind is None or s.fault.kind == kind)
                    and (direction is None or s.fault.direction == direction)
                )
            ]
            dropped = len(self._states) - len(kept)
            self._states = kept
        return dropped

    @property
    def faults(self) -> list[Fault]:
        """The faults planned now."""
        with self._lock:
            return [s.fault for s in self._states]

    def active(self, kind: FaultKind, direction: Direction) -> bool:
        """Whether a lasting fault (silence, wrong_baud) holds ``direction`` now."""
        with self._lock:
            now_s = self.elapsed_s
            return any(
                self._lasting(s, now_s)
                for s in self._states
                if s.fault.kind == kind and s.fault.direction == direction
            )

    # --- applying -----------------------------------------------------------------------------

    def apply(self, direction: Direction, data: bytes) -> Applied:
        """Apply the plan to one write in ``direction``; log what it did."""
        if direction not in DIRECTIONS:
            raise FaultError(f"unknown direction {direction!r}")
        with self._lock:
            start = self._position[direction]
            self._position[direction] = start + len(data)
            states = [s for s in self._states if s.fault.direction == direction]
            now_s = self.elapsed_s
            result = self._apply(direction, data, start, now_s, states)
            self._states = [s for s in self._states if not s.done]
        return result

    def _apply(
        self, direction: Direction, data: bytes, start: int, now_s: float, states: list[_State]
    ) -> Applied:
        end = start + len(data)
        delay_s = stall_s = 0.0
        unplug_s: float | None = None
        for state in states:
            if state.fault.kind in {"silence", "wrong_baud"}:
                self._fires(state, start, end, now_s)  # starts the lasting window
        # A silent direction loses everything; nothing else matters for this write.
        if any(self._lasting(s, now_s) for s in states if s.fault.kind == "silence"):
            if data:
                self.log.record(direction, "silence", start, data, f"{len(data)} bytes lost")
            return Applied(b"")
        cut: int | None = None
        for state in states:
            fault = state.fault
            if fault.kind in BYTE_KINDS or fault.kind in {"silence", "wrong_baud"}:
                continue
            if not self._fires(state, start, end, now_s):
                continue
            if fault.kind == "delay":
                delay_s = max(delay_s, fault.duration_s)
                self.log.record(direction, "delay", start, b"", f"{fault.duration_s:g} s added")
            elif fault.kind == "stall":
                stall_s = max(stall_s, fault.duration_s)
                self.log.record(
                    direction, "stall", start, b"", f"no bytes for {fault.duration_s:g} s"
                )
            elif fault.kind == "unplug":
                unplug_s = fault.duration_s
            elif fault.kind == "reset" and len(data) > 1:
                if fault.after_bytes is not None:
                    at = max(fault.after_bytes - start, 0)
                elif fault.random:
                    at = self.rng.randrange(1, len(data))
                else:
                    at = len(data) // 2
                cut = at if cut is None else min(cut, at)
        if cut is not None:
            self.log.record(
                direction,
                "reset",
                start + cut,
                data[cut:],
                f"write cut after {cut} of {len(data)} bytes",
            )
            data = data[:cut]
        out = self._bytes(direction, data, start, now_s, states)
        if any(self._lasting(s, now_s) for s in states if s.fault.kind == "wrong_baud") and out:
            out = garble(out)
            self.log.record(direction, "wrong_baud", start, out, f"{len(out)} bytes garbled")
        return Applied(out, delay_s, stall_s, unplug_s)

    def _bytes(
        self, direction: Direction, data: bytes, start: int, now_s: float, states: list[_State]
    ) -> bytes:
        byte_states = [s for s in states if s.fault.kind in BYTE_KINDS]
        if not byte_states:
            return data
        out = bytearray()
        for index, value in enumerate(data):
            offset = start + index
            keep = True
            for state in byte_states:
                fault = state.fault
                # One draw per byte per random fault, whatever else happens: the same bytes
                # give the same faults however the writes were cut.
                hit = self._fires(state, offset, offset + 1, now_s)
                if not hit or not keep:
                    continue
                if fault.kind == "drop":
                    keep = False
                    self.log.record(direction, "drop", offset, bytes([value]))
                elif fault.kind == "insert":
                    garbage = fault.garbage or self.rng.randbytes(fault.count)
                    out += garbage
                    self.log.record(direction, "insert", offset, garbage)
                else:
                    mask = fault.mask if fault.mask is not None else 1 << self.rng.randrange(8)
                    self.log.record(
                        direction, "corrupt", offset, bytes([value]), f"xor 0x{mask:02x}"
                    )
                    value ^= mask
            if keep:
                out.append(value)
        return bytes(out)

    def _fires(self, state: _State, start: int, end: int, now_s: float) -> bool:
        """Whether ``state`` fires for the stream bytes ``[start, end)`` at ``now_s``."""
        fault = state.fault
        if state.done:
            return False
        if fault.offsets:
            hits = {o for o in fault.offsets if start <= o < end} - state.fired_offsets
            state.fired_offsets |= hits
            if state.fired_offsets >= set(fault.offsets):
                state.done = True
            return bool(hits)
        if fault.probability is not None:
            fired = self.rng.random() < fault.probability
        elif fault.at_s is not None:
            fired = now_s >= fault.at_s
        elif fault.after_bytes is not None:
            fired = start <= fault.after_bytes < end or (
                fault.kind not in BYTE_KINDS and start >= fault.after_bytes
            )
        else:
            fired = True
        if fired and fault.kind in {"silence", "wrong_baud"}:
            if state.active_until_s is None:
                state.active_until_s = (
                    now_s + fault.duration_s if fault.duration_s > 0 else float("inf")
                )
            return True
        if fired and fault.once:
            state.done = True
        return fired

    @staticmethod
    def _lasting(state: _State, now_s: float) -> bool:
        until = state.active_until_s
        return until is not None and now_s < until


def garble(data: bytes) -> bytes:
    """What a UART at twice or half the sender's rate makes of ``data``, deterministically: each
    byte's bits rotated and inverted (not the bytes sent, and rarely a valid frame)."""
    return bytes((((b << 3) | (b >> 5)) & 0xFF) ^ 0xA5 for b in data)
