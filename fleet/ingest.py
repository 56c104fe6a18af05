"""MQTT ingest: what the gateways publish, verified, de-duplicated and stored.

The ingest subscribes to every gateway's ``telemetry``, ``health`` and ``state`` topics
(``owlgate/v1/gw/+/...``). Telemetry and health arrive signed (COSE_Sign1, Ed25519): each is
verified against the public key the gateway registered, and a message that is unsigned,
forged, signed by another gateway's key, or names another gateway inside is rejected — counted
and logged, never stored. A batch the fleet has already stored (the same gateway and sequence
number, as after an edge re-publishes an entry whose PUBACK it missed) is counted as a
duplicate and stores nothing; the same frame heard by several gateways becomes one reading
with every gateway's reception (:meth:`owlgate.fleet.store.Store.record_batches`). The retained
``state`` topic (``online``, or ``offline`` from the gateway's Last Will) feeds the health
state.

The subscription is plain by default. With ``shared`` (``owlgate fleet serve
--shared-subscriptions``) and MQTT 5 it is shared (``$share/owlgate-ingest/...``, MQTT 5.0
section 4.8.2) so several fleet processes split the load; see
:attr:`owlgate.fleet.mqtt.MqttService.shared` for why that is not the default.

Every message refused is counted under one reason (``rejected`` in ``GET /api/v1/stats``,
``owlgate_fleet_ingest_rejected_total{reason=...}`` in ``GET /metrics``) and logged in one line,
at most :data:`LOG_BURST` lines per reason per :data:`LOG_WINDOW_S` (a flood cannot fill the
log; what was left out is counted in the next line). The reasons (:data:`REASONS`):

- ``topic``: not ``owlgate/v1/gw/{16 hex digits}/{telemetry,health,state}``;
- ``unknown_gateway``: the gateway is not registered;
- ``state``: a ``state`` payload other than ``online`` or ``offline``;
- ``garbage``: not well-formed CBOR at all; anyone who can publish can send it, so it says
  nothing about the gateway;
- ``truncated``: well-formed CBOR up to where it ends too early: the start of a message
  whose end is missing;
- ``signature``: not signed, or not by the gateway: well-formed CBOR that is no COSE_Sign1
  (an unsigned batch), or a COSE_Sign1 that does not verify with the gateway's registered
  key (forged, tampered, signed by another gateway);
- ``malformed``: signed by the gateway's key, but the content is not a telemetry batch or
  health message: a broken or incompatible agent, not an outsider;
- ``wrong_gateway``: signed content that names another gateway than its topic;
- ``replayed``: a health message that is not newer than the last one stored for the gateway
  (its ``seq`` is not higher and its ``time_s`` not later: an agent that restarted counts
  from 0 again but with a later time, and is accepted). The same health message delivered
  twice (same ``seq`` and ``time_s``, as after a fleet crash before its PUBACK) is not a
  refusal: it is counted in ``health_duplicates``. Telemetry has no ``replayed``: a batch
  whose ``(gateway, seq)`` is already stored is counted in ``batch_duplicates`` and stores
  nothing, and since the ``batches`` table is never pruned, every replayed batch lands
  there, however old;
- ``absurd``: a health message with values no gateway can report (:class:`Plausibility`:
  a time far from the fleet's clock, memory or disk used above the total, a CPU temperature
  outside -60 .. 150 degC, a machine up for less time than its agent);
- ``absurd_reading``: one reading of a batch with a value no sensor or radio can give (a
  time far from the fleet's clock, RSSI or SNR outside what LoRa can receive, an impossible
  battery voltage, temperature or humidity). Only that reading is dropped: the batch is
  signed by the gateway, so its other readings are as trustworthy as ever, and dropping the
  whole batch would lose them; the batch is stored (and its ``seq`` recorded) without it;
- ``store``: the database refused the content (a reading it cannot hold).

How a message travels (:class:`IngestService`):

1. **receive**: each message is registered, in arrival order, for its PUBACK.
2. **verify**: the messages waiting are taken together; :meth:`Ingest.admit` checks topic and
   gateway in this process, :func:`verify_all` checks the signatures and decodes in a worker
   process (``verify_workers``), turning readings into table rows on the way. A message
   refused here is counted and logged and never reaches the database.
3. **store**: what was verified is written in transactions of at most ``max_readings``
   readings (:meth:`Ingest.write`, in a worker thread) while the next messages are verified;
   messages that arrive meanwhile go into the next transaction. At low load a transaction
   holds one message, so latency stays one message's worth; under load transactions grow and
   the per-message cost of a commit shrinks.
4. **acknowledge**: the PUBACK of a message goes out only once its transaction committed, or
   once it was refused for good (a forged message must not come back forever), and always in
   the order the messages arrived (:class:`~owlgate.fleet.mqtt.PubackQueue`). A fleet that
   stops or crashes before that leaves the message with the broker, which sends it again on
   the next connection of the same persistent session (MQTT 3.1.1 section 4.4); the batch
   de-duplication makes the repeat harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Final, Literal, Unpack

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from owlgate.codecs.errors import CborError, CodecError, OwlgateError
from owlgate.codecs.health import Health, decode_health
from owlgate.codecs.node.telemetry import Batch, Reading, decode_batch
from owlgate.codecs.signed import verify

from .metrics import RateLimitedLog
from .mqtt import Delivery, MqttOptions, MqttService, PubackQueue
from .sql import DatabaseFault
from .store import (
    FleetError,
    IncomingBatch,
    NotFoundError,
    ReadingRow,
    Store,
    StoreResult,
    reading_rows,
)

log = logging.getLogger(__name__)

TOPIC_PREFIX = "owlgate/v1/gw/"
SHARE_GROUP = "owlgate-ingest"
KINDS = ("telemetry", "health", "state")
#: Readings one transaction takes at most. A few thousand amortise what every commit costs
#: whatever its size: the fsync, and the index pages it rewrites (one per device per index
#: on ``dev_eui``, see docs/fleet.md). More would hold the store's lock, which the API's
#: reads wait for, longer than the tenth of a second or so that this many take.
DEFAULT_MAX_READINGS: Final = 5000
#: Messages the worker takes in one go, to verify and then store in transactions of at most
#: ``max_readings`` readings each.
DEFAULT_MAX_MESSAGES: Final = 200
#: Worker processes that verify and decode while this process stores: one takes the
#: Python work of verifying off the GIL the writer needs; on a machine with cores to spare
#: more keep up with more gateways.
DEFAULT_VERIFY_WORKERS: Final = 1
#: MQTT 5 Receive Maximum the ingest asks for: how many messages the broker may have sent
#: before it sees a PUBACK. Acknowledging after the commit keeps every message of a
#: transaction unacknowledged while it is written; this many (of up to 100 readings) keeps
#: the next transaction's messages already arriving meanwhile.
RECEIVE_MAXIMUM: Final = 500
#: How often a verifying worker checks that the fleet process is still there.
PARENT_POLL_S: Final = 1.0
STORE_RETRY_INITIAL_S: Final = 0.2
STORE_RETRY_MAX_S: Final = 10.0
#: Refusal lines logged per reason per window, at most (see the module docstring).
LOG_BURST: Final = 20
LOG_WINDOW_S: Final = 60.0

#: Every reason a message (or, ``absurd_reading``, one reading) is refused for.
REASONS: Final = (
    "topic",
    "unknown_gateway",
    "state",
    "garbage",
    "truncated",
    "signature",
    "malformed",
    "wrong_gateway",
    "replayed",
    "absurd",
    "absurd_reading",
    "store",
)

Kind = Literal["telemetry", "health", "state"]
_KINDS: Final[dict[str, Kind]] = {"telemetry": "telemetry", "health": "health", "state": "state"}


@dataclass(slots=True)
class IngestCounters:
    """What the ingest did since it started; ``rejected`` by reason (:data:`REASONS`).
    ``transactions`` counts the transactions committed, ``store_retries`` the ones the
    database failed and that were tried again, ``health_duplicates`` health messages
    delivered a second time (not refused, not stored again). Verification and storing
    run in different worker threads: change the counts only through the methods, which hold
    a lock."""

    batches: int = 0
    readings_stored: int = 0
    duplicates_merged: int = 0
    batch_duplicates: int = 0
    health: int = 0
    health_duplicates: int = 0
    states: int = 0
    reconnects: int = 0
    transactions: int = 0
    store_retries: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def reject(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + count

    def committed(
        self,
        results: Sequence[StoreResult],
        *,
        health: int,
        states: int,
        rejected: Sequence[str],
        health_duplicates: int = 0,
    ) -> None:
        """One transaction committed: its batches, health and state messages, refusals."""
        with self._lock:
            self.transactions += 1
            for result in results:
                self.batches += 1
                self.batch_duplicates += int(result.batch_duplicate)
                self.readings_stored += result.stored
                self.duplicates_merged += result.duplicates_merged
            self.health += health
            self.health_duplicates += health_duplicates
            self.states += states
            for reason in rejected:
                self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1

    def store_retry(self) -> None:
        with self._lock:
            self.store_retries += 1

    def as_dict(self) -> dict[str, object]:
        with self._lock:
            return {
                "batches": self.batches,
                "readings_stored": self.readings_stored,
                "duplicates_merged": self.duplicates_merged,
                "batch_duplicates": self.batch_duplicates,
                "health": self.health,
                "health_duplicates": self.health_duplicates,
                "states": self.states,
                "reconnects": self.reconnects,
                "transactions": self.transactions,
                "store_retries": self.store_retries,
                "rejected": dict(self.rejected),
            }


class Rejected(OwlgateError):
    """A message the ingest refuses; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[Rejected], tuple[str, str]]:
        # Raised in the verifying worker process and re-raised here: pickle must rebuild it
        # from both fields, not from ``args`` alone.
        return Rejected, (self.reason, self.message)


_DAY_S: Final = 86_400


@dataclass(frozen=True, slots=True, kw_only=True)
class Plausibility:
    """What a gateway or a sensor can report at all; outside it a value is ``absurd``.

    Times are checked against the fleet's receive time: a gateway's clock may be off by
    hours (local time taken for UTC), and its outbox may hold readings for weeks of backhaul
    outage, but a reading from next week or from 1970 (an unset clock) is no measurement.
    RSSI and SNR: an SX130x concentrator reports RSSI down to about -140 dBm, and LoRa
    demodulates down to -20 dB SNR (SF12); the margins cover other radios. The value
    ranges are physical: no battery cell of a sensor node exceeds 20 V, no outdoor
    temperature leaves -90 .. 150 degC."""

    future_s: float = 1.0 * _DAY_S
    past_s: float = 366.0 * _DAY_S
    rssi_dbm: tuple[int, int] = (-160, 20)
    snr_db: tuple[float, float] = (-40.0, 40.0)
    battery_mv: tuple[int, int] = (1, 20_000)
    temperature_c: tuple[float, float] = (-90.0, 150.0)
    humidity_pct: tuple[float, float] = (0.0, 100.0)
    cpu_temp_c: tuple[float, float] = (-60.0, 150.0)
    #: A machine's uptime measured a little after its agent's: slack for that, in seconds.
    uptime_slack_s: int = 5


DEFAULT_PLAUSIBILITY: Final = Plausibility()


def _outside(value: float, bounds: tuple[float, float]) -> bool:
    return not bounds[0] <= value <= bounds[1]


def _absurd_time(time_s: float, received_at: float, limits: Plausibility) -> str | None:
    if time_s > received_at + limits.future_s:
        return f"time {time_s:.0f} is {time_s - received_at:.0f} s ahead of the fleet's clock"
    if time_s < received_at - limits.past_s:
        return f"time {time_s:.0f} is {received_at - time_s:.0f} s behind the fleet's clock"
    return None


def absurd_reading(
    reading: Reading, received_at: float, limits: Plausibility = DEFAULT_PLAUSIBILITY
) -> str | None:
    """Why ``reading`` cannot be a measurement, or None if it can."""
    why = _absurd_time(reading.time_s, received_at, limits)
    if why is not None:
        return why
    if reading.rssi_dbm is not None and _outside(reading.rssi_dbm, limits.rssi_dbm):
        return f"RSSI {reading.rssi_dbm} dBm is outside {limits.rssi_dbm}"
    if reading.snr_db is not None and _outside(reading.snr_db, limits.snr_db):
        return f"SNR {reading.snr_db} dB is outside {limits.snr_db}"
    values = reading.values
    for name, bounds in (
        ("battery_mv", limits.battery_mv),
        ("temperature_c", limits.temperature_c),
        ("humidity_pct", limits.humidity_pct),
    ):
        value = values.get(name)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and _outside(value, bounds)
        ):
            return f"{name} {value} is outside {bounds}"
    return None


_NUMBERS: Final = (int, float)


def plausible_readings(
    readings: Sequence[Reading], received_at: float, limits: Plausibility = DEFAULT_PLAUSIBILITY
) -> tuple[list[Reading], list[str]]:
    """``readings`` split into those kept and, for each one dropped, why
    (:func:`absurd_reading`). The same judgement, with the limits read once per batch rather
    than once per reading: this runs for every reading the fleet receives."""
    earliest, latest = received_at - limits.past_s, received_at + limits.future_s
    rssi_low, rssi_high = limits.rssi_dbm
    snr_low, snr_high = limits.snr_db
    battery_low, battery_high = limits.battery_mv
    temperature_low, temperature_high = limits.temperature_c
    humidity_low, humidity_high = limits.humidity_pct
    kept: list[Reading] = []
    dropped: list[str] = []
    for index, item in enumerate(readings):
        rssi, snr, values = item.rssi_dbm, item.snr_db, item.values
        battery = values.get("battery_mv")
        temperature = values.get("temperature_c")
        humidity = values.get("humidity_pct")
        if (
            earliest <= item.time_s <= latest
            and (rssi is None or rssi_low <= rssi <= rssi_high)
            and (snr is None or snr_low <= snr <= snr_high)
            # (A bool passes isinstance as 0 or 1; absurd_reading, below, leaves it alone.)
            and (not isinstance(battery, _NUMBERS) or battery_low <= battery <= battery_high)
            and (
                not isinstance(temperature, _NUMBERS)
                or temperature_low <= temperature <= temperature_high
            )
            and (not isinstance(humidity, _NUMBERS) or humidity_low <= humidity <= humidity_high)
        ):
            kept.append(item)
            continue
        why = absurd_reading(item, received_at, limits)
        if why is None:
            kept.append(item)
        else:
            dropped.append(f"reading {index} ({item.dev_eui.hex()}): {why}")
    return kept, dropped


def absurd_health(
    health: Health, received_at: float, limits: Plausibility = DEFAULT_PLAUSIBILITY
) -> str | None:
    """Why ``health`` cannot come from a working gateway, or None if it can."""
    why = _absurd_time(health.time_s, received_at, limits)
    if why is not None:
        return why
    if health.cpu_temp_c is not None and _outside(health.cpu_temp_c, limits.cpu_temp_c):
        return f"CPU temperature {health.cpu_temp_c} degC is outside {limits.cpu_temp_c}"
    for what, used, total in (
        ("memory", health.mem_used_bytes, health.mem_total_bytes),
        ("disk", health.disk_used_bytes, health.disk_total_bytes),
    ):
        if used is not None and total is not None and used > total:
            return f"{what} used ({used} bytes) is above the total ({total} bytes)"
    if health.agent_uptime_s > health.uptime_s + limits.uptime_slack_s:
        return (
            f"the agent has been up {health.agent_uptime_s} s, longer than the machine"
            f" ({health.uptime_s} s)"
        )
    return None


@dataclass(frozen=True, slots=True)
class Verified:
    """A message that passed :meth:`Ingest.prepare`: what to store, and when it arrived."""

    topic: str
    gateway: str
    kind: Kind
    received_at: float
    #: Telemetry: the batch's sequence number and its readings as table rows
    #: (:func:`~owlgate.fleet.store.reading_rows`), made while verifying, so the transaction
    #: has only SQL left to do.
    seq: int | None = None
    rows: Sequence[ReadingRow] = field(default=(), repr=False)
    health: Health | None = field(default=None, repr=False)
    online: bool = False
    #: Telemetry: why each reading dropped as ``absurd_reading`` was (not in ``rows``).
    absurd: tuple[str, ...] = ()

    @property
    def readings(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True)
class Signed:
    """A telemetry or health message whose topic and gateway are known, with the gateway's
    registered Ed25519 key (raw): what :func:`verify_signed` needs, and nothing that cannot
    travel to a worker process."""

    topic: str
    gateway: str
    kind: Kind
    payload: bytes = field(repr=False)
    key: bytes = field(repr=False)
    received_at: float
    limits: Plausibility = DEFAULT_PLAUSIBILITY


#: Public keys a process has already loaded, by their raw bytes.
_PUBLIC_KEYS: dict[bytes, Ed25519PublicKey] = {}
_PUBLIC_KEYS_MAX: Final = 100_000


def verify_signed(message: Signed) -> Verified:
    """Verify the signature of ``message`` against its gateway's key and decode it; the
    telemetry's readings are turned into table rows as well. :class:`Rejected` (not counted:
    the caller counts) if refused. Needs neither the store nor the ingest's state, so it runs
    in a worker process as well as in this one."""
    key = _PUBLIC_KEYS.get(message.key)
    if key is None:
        if len(_PUBLIC_KEYS) >= _PUBLIC_KEYS_MAX:
            _PUBLIC_KEYS.clear()
        key = _PUBLIC_KEYS[message.key] = Ed25519PublicKey.from_public_bytes(message.key)
    gateway = message.gateway
    if not message.payload:
        raise Rejected("garbage", f"empty {message.kind} message on {gateway}'s topic")
    try:
        content = verify(message.payload, key).payload
    except CborError as err:
        raise Rejected(
            _unreadable(err), f"{message.kind} on {gateway}'s topic is not CBOR: {err}"
        ) from err
    except CodecError as err:
        # SignatureError (does not verify), SchemaError (CBOR, but no COSE_Sign1: unsigned).
        raise Rejected("signature", f"{message.kind} from gateway {gateway}: {err}") from err
    if message.kind == "health":
        health = _health(gateway, content)
        why = absurd_health(health, message.received_at, message.limits)
        if why is not None:
            raise Rejected("absurd", f"health from {gateway}: {why}")
        return Verified(message.topic, gateway, "health", message.received_at, health=health)
    batch = _batch(gateway, content)
    kept, absurd = plausible_readings(batch.readings, message.received_at, message.limits)
    try:
        rows = reading_rows(kept)
    except FleetError as err:
        raise Rejected("store", f"telemetry from {gateway}: {err}") from err
    return Verified(
        message.topic,
        gateway,
        "telemetry",
        message.received_at,
        seq=batch.seq,
        rows=rows,
        absurd=tuple(f"batch {batch.seq}, {why}" for why in absurd),
    )


def _unreadable(err: CborError) -> str:
    """``truncated`` for CBOR that ends too early, ``garbage`` for bytes that are not CBOR."""
    return "truncated" if err.message.startswith("truncated") else "garbage"


def _exit_with_parent(parent: int) -> None:
    """In a verifying worker process: exit as soon as the fleet process that started it is
    gone. A worker of ``concurrent.futures`` holds both ends of its task queue, so it never
    sees the queue close when its parent is killed (SIGKILL, OOM) and would otherwise live on
    as an orphan, one more after every crash."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="owlgate-parent-watch", daemon=True).start()


def verify_all(messages: Sequence[Signed]) -> list[Verified | Rejected]:
    """:func:`verify_signed` for each message, the refusals returned in their places: one
    round trip to a worker process for a whole group."""
    results: list[Verified | Rejected] = []
    for message in messages:
        try:
            results.append(verify_signed(message))
        except Rejected as err:
            results.append(err)
    return results


def _batch(gateway: str, content: bytes) -> Batch:
    try:
        batch = decode_batch(content)
    except OwlgateError as err:
        raise Rejected("malformed", f"telemetry from {gateway}: {err}") from err
    if batch.gateway_id.hex() != gateway:
        raise Rejected(
            "wrong_gateway",
            f"batch on {gateway}'s topic names gateway {batch.gateway_id.hex()}",
        )
    return batch


def _health(gateway: str, content: bytes) -> Health:
    try:
        health = decode_health(content)
    except OwlgateError as err:
        raise Rejected("malformed", f"health from {gateway}: {err}") from err
    if health.gateway_id.hex() != gateway:
        raise Rejected(
            "wrong_gateway",
            f"health on {gateway}'s topic names gateway {health.gateway_id.hex()}",
        )
    return health


def parse_topic(topic: str) -> tuple[str, Kind]:
    """``owlgate/v1/gw/{id}/{kind}`` -> (gateway id in lowercase hex, kind)."""
    if not topic.startswith(TOPIC_PREFIX):
        raise Rejected("topic", f"not an owlgate gateway topic: {topic!r}")
    parts = topic[len(TOPIC_PREFIX) :].split("/")
    if len(parts) != 2 or parts[1] not in KINDS:
        raise Rejected("topic", f"not a gateway telemetry, health or state topic: {topic!r}")
    gateway = parts[0].lower()
    if len(gateway) != 16 or any(char not in "0123456789abcdef" for char in gateway):
        raise Rejected("topic", f"gateway id in {topic!r} is not 16 hex digits")
    return gateway, _KINDS[parts[1]]


class Ingest:
    """Verifies gateway messages (:meth:`prepare`) and stores them, several per transaction
    (:meth:`write`), against ``store``; synchronous (see :class:`IngestService` for the MQTT
    side). :meth:`handle` does both for one message. ``clock`` gives the fleet's receive
    time, which ``plausibility`` judges the messages' own times against. Counters:
    :attr:`counters` (:meth:`IngestCounters.as_dict`)."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        plausibility: Plausibility = DEFAULT_PLAUSIBILITY,
    ) -> None:
        self.store = store
        self.clock = clock
        self.plausibility = plausibility
        self.counters = IngestCounters()
        self._keys: dict[str, bytes] = {}
        self.refusal_log = RateLimitedLog(log, burst=LOG_BURST, window_s=LOG_WINDOW_S)

    def _key(self, gateway: str) -> bytes:
        key = self._keys.get(gateway)
        if key is None:
            try:
                key = self.store.gateway(gateway).sign_public_key
            except NotFoundError as err:
                raise Rejected("unknown_gateway", f"gateway {gateway} is not registered") from err
            self._keys[gateway] = key
        return key

    def refused(self, topic: str, err: Rejected) -> None:
        """Count and log a refusal."""
        self.counters.reject(err.reason)
        self._log_refusal(topic, err)

    def _log_refusal(self, topic: str, err: Rejected) -> None:
        self.refusal_log.warning(err.reason, "rejected %s (%s): %s", topic, err.reason, err.message)

    def accepted(self, item: Verified) -> Verified:
        """Count and log the readings a verified batch dropped as absurd; ``item`` back."""
        if item.absurd:
            self.counters.reject("absurd_reading", len(item.absurd))
            for why in item.absurd:
                self.refusal_log.warning(
                    "absurd_reading", "dropped from %s (absurd_reading): %s", item.topic, why
                )
        return item

    def handle(self, topic: str, payload: bytes) -> None:
        """Verify and store one message in a transaction of its own; :class:`Rejected`
        (already counted and logged) if refused."""
        (refused,) = self.write([self.prepare(topic, payload)])
        if refused is not None:
            raise refused

    def admit(self, topic: str, payload: bytes) -> Verified | Signed:
        """What is checked in this process before the signature: the topic, a state's
        payload, and that the gateway is registered (its key is read from the store the
        first time). A state message comes back ready to store; telemetry and health come
        back :class:`Signed`, for :func:`verify_signed`. :class:`Rejected` (not counted)
        otherwise."""
        received_at = self.clock()
        gateway, kind = parse_topic(topic)
        if kind == "state":
            if payload not in (b"online", b"offline"):
                raise Rejected("state", f"state of {gateway} is neither online nor offline")
            return Verified(topic, gateway, kind, received_at, online=payload == b"online")
        return Signed(
            topic, gateway, kind, payload, self._key(gateway), received_at, self.plausibility
        )

    def prepare(self, topic: str, payload: bytes) -> Verified:
        """:meth:`admit` and :func:`verify_signed` in this process: the message ready to
        store, or :class:`Rejected` (already counted and logged)."""
        try:
            admitted = self.admit(topic, payload)
            if isinstance(admitted, Verified):
                return admitted
            return self.accepted(verify_signed(admitted))
        except Rejected as err:
            self.refused(topic, err)
            raise

    def _health_order(
        self, gateway: str, health: Health
    ) -> Literal["new", "duplicate", "replayed"]:
        """How ``health`` compares with the last health message stored for ``gateway``
        (read in the caller's transaction, so two fleet processes agree)."""
        last = _health_seen(self.store.gateway(gateway).last_health)
        if last is None:
            return "new"
        seq, time_s = last
        if (health.seq, health.time_s) == (seq, time_s):
            return "duplicate"
        if health.seq <= seq and health.time_s <= time_s:
            return "replayed"
        return "new"

    def write(self, items: Sequence[Verified]) -> list[Rejected | None]:
        """Store ``items`` in one transaction; per item, None if stored (or a duplicate) or
        the :class:`Rejected` it got (counted and logged once the transaction committed).

        An item that cannot be stored is rolled back alone (a savepoint each) and refused
        for good, with reason ``store`` (``unknown_gateway`` for a gateway no longer
        registered). A fault of the database itself (a
        :class:`~owlgate.fleet.sql.DatabaseFault` out of the transaction) stores nothing,
        counts nothing, and is raised: the caller tries again.
        """
        outcomes: list[Rejected | None] = [None] * len(items)
        telemetry = [(index, item) for index, item in enumerate(items) if item.seq is not None]
        stored: list[StoreResult] = []
        health = states = health_duplicates = 0
        with self.store.transaction():
            results = self.store.record_batches(
                [
                    IncomingBatch(item.gateway, item.seq, (), item.received_at, rows=item.rows)
                    for _, item in telemetry
                    if item.seq is not None
                ]
            )
            for (index, item), result in zip(telemetry, results, strict=True):
                if isinstance(result, NotFoundError):
                    outcomes[index] = Rejected("unknown_gateway", f"{item.topic}: {result}")
                elif isinstance(result, FleetError):
                    outcomes[index] = Rejected("store", f"telemetry from {item.gateway}: {result}")
                else:
                    stored.append(result)
            # Health and state after the batches: each touches other columns of the gateway
            # only, so their order relative to telemetry does not matter; among themselves
            # they keep the order they arrived in (online, then the Will's offline).
            for index, item in enumerate(items):
                if item.seq is not None:
                    continue
                try:
                    # Each call is a savepoint of its own inside this transaction.
                    if item.health is not None:
                        order = self._health_order(item.gateway, item.health)
                        if order == "replayed":
                            outcomes[index] = Rejected(
                                "replayed",
                                f"health {item.health.seq} of {item.gateway} (time"
                                f" {item.health.time_s}) is not newer than the last one stored",
                            )
                            continue
                        if order == "duplicate":
                            health_duplicates += 1
                            continue
                        self.store.record_health(
                            item.gateway, item.health, received_at=item.received_at
                        )
                        health += 1
                    else:
                        self.store.set_gateway_state(item.gateway, item.online, item.received_at)
                        states += 1
                except NotFoundError as err:
                    outcomes[index] = Rejected(
                        "unknown_gateway", f"gateway {item.gateway} is not registered ({err})"
                    )
                except FleetError as err:
                    outcomes[index] = Rejected("store", f"{item.kind} from {item.gateway}: {err}")
        refused = [
            (item, outcome) for item, outcome in zip(items, outcomes, strict=True) if outcome
        ]
        self.counters.committed(
            stored,
            health=health,
            states=states,
            rejected=[refusal.reason for _, refusal in refused],
            health_duplicates=health_duplicates,
        )
        for item, refusal in refused:
            self._log_refusal(item.topic, refusal)
        for result, (_, item) in zip(results, telemetry, strict=True):
            if isinstance(result, StoreResult) and result.batch_duplicate:
                log.info("batch %s of %s was already stored", item.seq, item.gateway)
        return outcomes


def _health_seen(last: object) -> tuple[int, int] | None:
    """``(seq, time_s)`` of the last health message the store kept, if it kept one."""
    if not isinstance(last, dict):
        return None
    seq, time_s = last.get("seq"), last.get("time_s")
    if isinstance(seq, int) and isinstance(time_s, int):
        return seq, time_s
    return None


def subscriptions(shared: bool) -> list[str]:
    """The topic filters the ingest subscribes to."""
    filters = [f"{TOPIC_PREFIX}+/{kind}" for kind in KINDS]
    return [f"$share/{SHARE_GROUP}/{topic}" for topic in filters] if shared else filters


class _Waiting:
    """Received messages waiting for the worker, in arrival order."""

    def __init__(self) -> None:
        self._items: deque[tuple[Delivery, str, bytes]] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, delivery: Delivery, topic: str, payload: bytes) -> None:
        self._items.append((delivery, topic, payload))
        self._ready.set()

    async def take(self, most: int) -> list[tuple[Delivery, str, bytes]]:
        """Everything waiting, at most ``most`` messages (at least one: waits while there is
        nothing)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return [self._items.popleft() for _ in range(min(most, len(self._items)))]


def _transactions(
    items: Sequence[tuple[Delivery, Verified]], max_readings: int
) -> list[list[tuple[Delivery, Verified]]]:
    """``items`` cut, in order, into groups of at most ``max_readings`` readings (a health or
    state message counts as one; a single larger batch is a group of its own)."""
    groups: list[list[tuple[Delivery, Verified]]] = []
    size = 0
    for entry in items:
        weight = max(1, entry[1].readings)
        if not groups or size + weight > max_readings:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += weight
    return groups


class IngestService(MqttService):
    """The ingest on MQTT: subscribes, verifies, stores in batched transactions and
    acknowledges after the commit, reconnecting as :class:`~owlgate.fleet.mqtt.MqttService`
    does, under a persistent session.

    ``verify_workers`` processes verify signatures and decode (:func:`verify_all`) while
    this process writes the previous group to the database; 0 verifies in this process,
    taking turns with the writer (see :meth:`_turn`)."""

    name = "ingest"
    manual_ack = True
    receive_maximum = RECEIVE_MAXIMUM

    def __init__(
        self,
        ingest: Ingest,
        host: str,
        port: int,
        *,
        max_readings: int = DEFAULT_MAX_READINGS,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        verify_workers: int = DEFAULT_VERIFY_WORKERS,
        **options: Unpack[MqttOptions],
    ) -> None:
        super().__init__(host, port, **options)
        self.ingest = ingest
        self.max_readings = max_readings
        self.max_messages = max_messages
        self.verify_workers = verify_workers
        self._pool: ProcessPoolExecutor | None = None
        self._turns = asyncio.Lock()
        # The queues of the current connection, for stats(); None between connections.
        self._queues: (
            tuple[
                _Waiting,
                asyncio.Queue[list[tuple[Delivery, Verified | None]]],
                PubackQueue,
            ]
            | None
        ) = None

    def topics(self, mqtt5: bool) -> list[tuple[str, int]]:
        return [(topic, 1) for topic in subscriptions(mqtt5 and self.shared)]

    def count_reconnect(self) -> None:
        self.ingest.counters.reconnect()

    def stats(self) -> dict[str, object]:
        """The ingest's counters now (``GET /api/v1/stats``), and under ``gauges`` its queue
        depths (:func:`owlgate.fleet.metrics.render_metrics` shows them as gauges):
        ``waiting_messages`` received and not yet verified, ``verified_groups`` groups of
        verified messages waiting for the database, ``unacknowledged_messages`` received and
        not yet acknowledged (bounded by the Receive Maximum)."""
        counters = self.ingest.counters.as_dict()
        queues = self._queues
        counters["gauges"] = {
            "waiting_messages": 0 if queues is None else len(queues[0]),
            "verified_groups": 0 if queues is None else queues[1].qsize(),
            "unacknowledged_messages": 0 if queues is None else len(queues[2]),
        }
        return counters

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)

    def _workers(self) -> ProcessPoolExecutor | None:
        if self._pool is None and self.verify_workers > 0:
            # spawn, not fork: this process runs threads (the event loop's helpers, uvicorn),
            # and a forked child would inherit their locks in whatever state they were.
            self._pool = ProcessPoolExecutor(
                self.verify_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
            # Start the workers now rather than with the first message.
            for _ in range(self.verify_workers):
                self._pool.submit(verify_all, [])
        return self._pool

    def _turn(self) -> AbstractAsyncContextManager[object]:
        """Held by verifying and by storing when both run in this process: both are mostly
        Python under the GIL, and a thread running Python while the other waits in SQLite
        takes the GIL from it after every statement step, for a whole switch interval
        (5 ms); overlapped that way a transaction took ten times as long as verifying and
        storing one after the other."""
        return self._turns if self.verify_workers == 0 else contextlib.nullcontext()

    async def serve(self, client: aiomqtt.Client) -> None:
        self._workers()
        acks = PubackQueue.for_client(client)
        waiting = _Waiting()
        # Not bounded: what can be waiting is bounded by what the broker may send before it
        # sees PUBACKs (Receive Maximum), and verifying never waits for the database, so a
        # refusal is logged (and its PUBACK ready) however long a transaction takes.
        verified: asyncio.Queue[list[tuple[Delivery, Verified | None]]] = asyncio.Queue()
        self._queues = (waiting, verified, acks)
        tasks = [
            asyncio.create_task(self._receive(client, acks, waiting), name="owlgate-ingest-rx"),
            asyncio.create_task(self._verify(waiting, verified), name="owlgate-ingest-verify"),
            asyncio.create_task(self._write(acks, verified), name="owlgate-ingest-write"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            # Whatever was not committed stays unacknowledged: the broker sends it again.
            await asyncio.gather(*tasks, return_exceptions=True)
            self._queues = None
        for task in done:
            task.result()  # the end of the connection (MqttError), or a fault of a stage

    async def _receive(self, client: aiomqtt.Client, acks: PubackQueue, waiting: _Waiting) -> None:
        async for message in client.messages:
            delivery = acks.receive(message)
            topic = str(message.topic)
            # Typed bytes, but paho hands over whatever it decoded: checked, not trusted.
            payload: object = message.payload
            if not isinstance(payload, bytes | bytearray):
                self.ingest.refused(topic, Rejected("garbage", "the payload is not bytes"))
                acks.settle(delivery)
                continue
            waiting.put(delivery, topic, bytes(payload))

    async def _verify(
        self,
        waiting: _Waiting,
        verified: asyncio.Queue[list[tuple[Delivery, Verified | None]]],
    ) -> None:
        while True:
            group = await waiting.take(self.max_messages)
            async with self._turn():
                result = await asyncio.to_thread(self._verify_group, group)
            await verified.put(result)

    def _verify_group(
        self, group: Sequence[tuple[Delivery, str, bytes]]
    ) -> list[tuple[Delivery, Verified | None]]:
        """In a worker thread: admit each message here (the gateway's key may have to be
        read from the store), verify the signed ones in a worker process, count and log
        every refusal. None in place of a refused message."""
        admitted: list[Verified | Signed | None] = []
        for _, topic, payload in group:
            try:
                admitted.append(self.ingest.admit(topic, payload))
            except Rejected as err:
                self.ingest.refused(topic, err)
                admitted.append(None)
        signed = [item for item in admitted if isinstance(item, Signed)]
        outcomes = iter(self._verify_signed(signed))
        result: list[tuple[Delivery, Verified | None]] = []
        for (delivery, topic, _), item in zip(group, admitted, strict=True):
            if isinstance(item, Signed):
                outcome = next(outcomes)
                if isinstance(outcome, Rejected):
                    self.ingest.refused(topic, outcome)
                    item = None
                else:
                    item = self.ingest.accepted(outcome)
            result.append((delivery, item))
        return result

    def _verify_signed(self, signed: list[Signed]) -> list[Verified | Rejected]:
        pool = self._pool
        if not signed or pool is None:
            return verify_all(signed)
        try:
            return pool.submit(verify_all, signed).result()
        except BrokenProcessPool as err:
            # A worker died (killed, out of memory): verify here this time, and start new
            # workers for the next group.
            log.error("the ingest's verifying worker failed (%s); starting a new one", err)
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            return verify_all(signed)

    async def _write(
        self,
        acks: PubackQueue,
        verified: asyncio.Queue[list[tuple[Delivery, Verified | None]]],
    ) -> None:
        while True:
            entries = await verified.get()
            while not verified.empty() and len(entries) < self.max_messages:
                entries += verified.get_nowait()
            accepted: list[tuple[Delivery, Verified]] = []
            for delivery, item in entries:
                if item is None:
                    acks.settle(delivery)  # refused for good: acknowledged, in its turn
                else:
                    accepted.append((delivery, item))
            for transaction in _transactions(accepted, self.max_readings):
                await self._store([item for _, item in transaction])
                for delivery, _ in transaction:
                    acks.settle(delivery)

    async def _store(self, items: list[Verified]) -> None:
        delay = STORE_RETRY_INITIAL_S
        while True:
            try:
                async with self._turn():
                    await asyncio.to_thread(self.ingest.write, items)
                return
            except DatabaseFault as err:
                # Nothing of the transaction was stored, so nothing is acknowledged: the same
                # messages are tried again; later ones wait behind them (their PUBACKs could
                # not overtake these anyway, MQTT 3.1.1 section 4.6).
                self.ingest.counters.store_retry()
                log.error(
                    "storing %d messages failed (%s); trying again in %.1f s",
                    len(items),
                    err,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)


def ingest_service(
    host: str,
    port: int,
    *,
    mqtt5: bool = True,
    instance: str | None = None,
    verify_workers: int = DEFAULT_VERIFY_WORKERS,
    shared: bool = False,
    username: str | None = None,
    password: str | None = None,
) -> Callable[[Store], AbstractAsyncContextManager[IngestService]]:
    """A fleet service (see :func:`owlgate.fleet.cli.build_server`) running the ingest under
    the persistent session of fleet instance ``instance`` (default: the host name), through
    shared subscriptions when ``shared``, logged in as ``username`` (the fleet's broker
    account) when given."""

    def service(store: Store) -> IngestService:
        return IngestService(
            Ingest(store),
            host,
            port,
            mqtt5=mqtt5,
            instance=instance,
            verify_workers=verify_workers,
            shared=shared,
            username=username,
            password=password,
        )

    return service
