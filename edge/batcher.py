"""Telemetry batching: readings in, signed batches in the durable outbox out.

A batch is sealed when it holds ``max_readings`` readings or when its first reading is
``max_age_s`` old, whichever comes first. Sealing encodes it as compact telemetry CBOR
(:func:`owlgate.codecs.node.telemetry.encode_batch`), signs it as a COSE_Sign1 with the
gateway's Ed25519 key (:func:`owlgate.codecs.signed.sign`), and writes it to the outbox
together with the frame counters of its readings and its sequence number, in one
transaction (:meth:`owlgate.edge.state.StateDb.put`). Only then do the readings count as
received.

Time is always passed in (UTC seconds), so tests decide what "old" means; :meth:`Batcher.run`
is the small timer loop the agent runs to seal on age.

A batch sealed while the backhaul is down is marked *delayed* (the payload says so, and the
outbox sends live batches first). Readings from wired nodes carry the node's reading sequence
number in ``fcnt``; a batcher made with ``counters="node_seq"`` stores those as the nodes'
sequence numbers instead of LoRaWAN frame counters.

If the outbox cannot be written the readings stay held, up to ``max_held`` of them; beyond that
the oldest are dropped and counted in ``dropped`` (memory is bounded too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from owlgate.codecs.errors import OwlgateError
from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch
from owlgate.codecs.signed import sign

from .state import StateDb

__all__ = ["TELEMETRY_TOPIC", "BatchError", "Batcher", "SealedBatch"]

#: Readings held while the outbox cannot be written, in multiples of ``max_readings``.
MAX_HELD_BATCHES: Final = 100

_log = logging.getLogger(__name__)

#: The topic suffix of telemetry (ARCHITECTURE.md: ``owlgate/v1/gw/{gateway_id}/telemetry``).
TELEMETRY_TOPIC: Final = "telemetry"


class BatchError(OwlgateError):
    """A batcher that cannot be set up as asked."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SealedBatch:
    """What :meth:`Batcher.seal` wrote: the outbox id, the sequence number, how many
    readings, the signed message, and the highest counter stored per DevEUI."""

    __slots__ = ("count", "counters", "entry_id", "message", "seq")

    def __init__(
        self,
        entry_id: int,
        seq: int,
        count: int,
        message: bytes,
        counters: dict[bytes, int] | None = None,
    ) -> None:
        self.entry_id = entry_id
        self.seq = seq
        self.count = count
        self.message = message
        self.counters: dict[bytes, int] = {} if counters is None else counters

    def __repr__(self) -> str:
        return (
            f"SealedBatch(entry_id={self.entry_id}, seq={self.seq}, count={self.count}, "
            f"{len(self.message)} bytes)"
        )


class Batcher:
    """Collects readings into signed batches; see the module docstring.

    ``gateway_id`` is the gateway's 8-byte EUI; ``signing_key`` its Ed25519 identity key.
    ``backhaul`` says whether the backhaul is up now (None: always up); it decides the
    ``delayed`` flag of the next sealed batch. ``counters`` is
    ``"f_cnt"`` (LoRaWAN readings) or ``"node_seq"`` (wired readings).
    """

    def __init__(
        self,
        state: StateDb,
        signing_key: Ed25519PrivateKey,
        gateway_id: bytes,
        *,
        max_readings: int = 100,
        max_age_s: float = 10.0,
        topic: str = TELEMETRY_TOPIC,
        backhaul: Callable[[], bool] | None = None,
        counters: str = "f_cnt",
        max_held: int | None = None,
    ) -> None:
        if not isinstance(gateway_id, bytes) or len(gateway_id) != 8:
            raise BatchError(f"a gateway id is an 8-byte EUI, got {gateway_id!r}")
        if max_readings < 1:
            raise BatchError(f"max_readings must be at least 1, got {max_readings}")
        if not max_age_s > 0:
            raise BatchError(f"max_age_s must be positive, got {max_age_s}")
        if counters not in ("f_cnt", "node_seq"):
            raise BatchError(f'counters must be "f_cnt" or "node_seq", got {counters!r}')
        self._state = state
        self._key = signing_key
        self._backhaul = backhaul
        self._node_seq = counters == "node_seq"
        self.max_held = max_held if max_held is not None else max_readings * MAX_HELD_BATCHES
        #: Readings dropped because the outbox could not be written for too long.
        self.dropped = 0
        self._gateway_id = gateway_id
        self.max_readings = max_readings
        self.max_age_s = max_age_s
        self.topic = topic
        self._readings: list[Reading] = []
        self._first_at: float | None = None
        self.sealed_batches = 0

    def __len__(self) -> int:
        return len(self._readings)

    def add(self, reading: Reading, now: float) -> SealedBatch | None:
        """Take one reading; seal and return the batch when this one fills it (or when the
        batch held had already come of age), else None."""
        readings = self._readings
        if not readings:
            self._first_at = now
        readings.append(reading)
        if len(readings) >= self.max_readings or self.due(now):
            if len(readings) > self.max_held:
                self._drop_oldest()
            return self.seal(now)
        return None

    def _drop_oldest(self) -> None:
        excess = len(self._readings) - self.max_held
        del self._readings[:excess]
        self.dropped += excess
        _log.error(
            "the outbox has not been writable for %d readings: dropped the %d oldest held"
            " (%d dropped so far)",
            self.max_held,
            excess,
            self.dropped,
        )

    def due(self, now: float) -> bool:
        """True when the batch held has a reading ``max_age_s`` old or older."""
        first = self._first_at
        return first is not None and now - first >= self.max_age_s

    def next_due_at(self) -> float | None:
        """When the batch held comes of age (same clock as ``now``); None when empty."""
        first = self._first_at
        return None if first is None else first + self.max_age_s

    def poll(self, now: float) -> SealedBatch | None:
        """Seal the batch if it has come of age; the timer calls this."""
        return self.seal(now) if self.due(now) else None

    def seal(self, now: float) -> SealedBatch | None:
        """Seal what is held now, whatever its size or age (None when empty); raises
        :class:`~owlgate.edge.state.StateError` if the outbox write fails, in which case the
        readings stay held for the next attempt."""
        readings = self._readings
        if not readings:
            return None
        seq = self._state.next_batch_seq
        backhaul = self._backhaul
        delayed = backhaul is not None and not backhaul()
        base_time = min(reading.time_s for reading in readings)
        payload = encode_batch(Batch(self._gateway_id, seq, base_time, readings, delayed))
        message = sign(payload, self._key)
        counters: dict[bytes, int] = {}
        for reading in readings:
            f_cnt = reading.fcnt
            if f_cnt is not None and f_cnt > counters.get(reading.dev_eui, -1):
                counters[reading.dev_eui] = f_cnt
        if self._node_seq:
            entry_id = self._state.put(
                self.topic, message, now, delayed=delayed, node_seqs=counters, batch_seq=seq
            )
        else:
            entry_id = self._state.put(
                self.topic, message, now, delayed=delayed, f_cnts=counters, batch_seq=seq
            )
        count = len(readings)
        self._readings = []
        self._first_at = None
        self.sealed_batches += 1
        _log.debug("batch %d sealed: %d readings, %d bytes", seq, count, len(message))
        return SealedBatch(entry_id, seq, count, message, counters)

    async def run(self, clock: Callable[[], float] = time.time, tick_s: float = 1.0) -> None:
        """Seal batches on age until cancelled: wake every ``tick_s`` (or at the held batch's
        due time, if sooner) and :meth:`poll`. A failed outbox write is logged and retried
        on the next tick, as the readings stay held."""
        while True:
            due_at = self.next_due_at()
            delay = tick_s if due_at is None else min(tick_s, max(0.0, due_at - clock()))
            await asyncio.sleep(delay)
            try:
                self.poll(clock())
            except OwlgateError as err:
                _log.error("sealing a telemetry batch failed, will retry: %s", err)
