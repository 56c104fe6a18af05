"""Device downlinks on the gateway: held from the fleet, sent in RX1 after the device's uplink.

The fleet publishes a signed :class:`~owlgate.codecs.downlink.Downlink` on the gateway's
``down`` topic. :meth:`EdgeDownlinks.receive` verifies it with the pinned fleet key, checks it
names this gateway and has not expired, and holds it under its DevEUI: one per device (a newer
one replaces the older, as the fleet sends a device one downlink at a time), at most
:data:`MAX_PENDING` in all (the one expiring first makes room). A repeat of an id already held
or sent is dropped, so a message replayed by the broker is not transmitted twice.

Class A devices listen only right after they sent (LoRaWAN 1.0.3 section 3.3), so the
downlink waits for the device's next uplink: :meth:`EdgeDownlinks.on_uplink`, called for each
data uplink the processor accepted, builds the unconfirmed data down frame (FPort and
FRMPayload from the fleet, encrypted with the session's AppSKey, the MIC with its NwkSKey) and
queues it for RX1: ``RECEIVE_DELAY1`` (1 s, EU868) after the end of the uplink, same channel
and data rate (:func:`~owlgate.edge.lorawan_proc.rx1_tx`, the path join accepts take).
:meth:`EdgeDownlinks.send` is the loop that hands them to the radio.

FCntDown: the next counter of the device's session, persisted (``synchronous=FULL``) in
:data:`STATE_FILE` in the state directory *before* the frame goes to the radio, so a restart
never reuses one (the device would drop the frame, section 4.3.1.5); at least the fleet's
``min_f_cnt_down``, so it keeps increasing when downlinks alternate between gateways. A new
session (another DevAddr or keys: the device joined again) counts from 0 again, as the device
does.

Nothing bad from the network raises: each refusal is counted (:class:`DownlinkCounters`) and
logged. The payload is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..codecs.concentrator import RxFrame, TxError, TxRequest
from ..codecs.downlink import Downlink, decode_downlink
from ..codecs.errors import CborError, OwlgateError, SchemaError
from ..codecs.lorawan import DataFrame, MType, SessionKeys
from ..codecs.signed import verify
from .errors import EdgeError, RadioError
from .lorawan_proc import rx1_tx
from .radio import RadioBackend

__all__ = [
    "DOWN_TOPIC",
    "MAX_PENDING",
    "REJECT_REASONS",
    "STATE_FILE",
    "DownlinkCounters",
    "EdgeDownlinks",
]

log = logging.getLogger(__name__)

#: The topic under the gateway's prefix where the fleet publishes downlinks.
DOWN_TOPIC: Final = "down"
#: The database of downlink frame counters, beside the agent's state database.
STATE_FILE: Final = "downlinks.sqlite3"
#: Downlinks held at once, all devices together.
MAX_PENDING: Final = 4096
#: Ids of downlinks already handled, kept to drop repeats.
MAX_REMEMBERED: Final = 8192
#: Why a downlink from the fleet is dropped unsent.
REJECT_REASONS: Final = (
    "signature",
    "malformed",
    "wrong_gateway",
    "expired",
    "repeat",
    "no_session",
    "counter",
)
_U32: Final = 0xFFFFFFFF
_BUSY_TIMEOUT_S: Final = 5.0


@dataclass(slots=True)
class DownlinkCounters:
    """What the gateway did with the fleet's downlinks since start: ``received`` verified and
    held, ``replaced`` by a newer one for the same device before it was sent, ``evicted`` to
    make room, ``queued`` for RX1 after an uplink, ``sent`` (the radio scheduled it),
    ``failed`` (the radio refused or did not answer), ``rejected`` by reason
    (:data:`REJECT_REASONS`; ``expired`` also counts held ones that expired unsent)."""

    received: int = 0
    replaced: int = 0
    evicted: int = 0
    queued: int = 0
    sent: int = 0
    failed: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received,
            "replaced": self.replaced,
            "evicted": self.evicted,
            "queued": self.queued,
            "sent": self.sent,
            "failed": self.failed,
            "rejected": dict(self.rejected),
        }


@dataclass(frozen=True, slots=True)
class _Queued:
    downlink: Downlink
    f_cnt_down: int
    request: TxRequest


def _session_tag(dev_addr: int, nwk_s_key: bytes, app_s_key: bytes) -> bytes:
    # Which session a stored counter belongs to, without storing the keys a second time.
    digest = hashlib.sha256(b"owlgate fcnt-down session\x00")
    digest.update(dev_addr.to_bytes(4, "big") + nwk_s_key + app_s_key)
    return digest.digest()[:16]


class EdgeDownlinks:
    """The gateway's pending downlinks (see the module docstring). ``state_dir`` holds the
    counter database (opened per write: downlinks are rare); ``clock`` gives UTC seconds."""

    def __init__(
        self,
        gateway_id: bytes,
        state_dir: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if max_pending < 1:
            raise EdgeError(f"max_pending must be positive, got {max_pending}")
        self.gateway_id = gateway_id
        self.path = Path(state_dir) / STATE_FILE
        self.counters = DownlinkCounters()
        self._clock = clock
        self._max_pending = max_pending
        self._pending: dict[bytes, Downlink] = {}
        self._seen: dict[int, None] = {}
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()

    def _reject(self, reason: str, message: str, *args: object) -> None:
        self.counters.rejected[reason] += 1
        log.warning("downlink dropped (%s): " + message, reason, *args)

    # --- from the fleet -------------------------------------------------------------------

    def receive(self, data: bytes, fleet_key: Ed25519PublicKey) -> Downlink | None:
        """Verify, check and hold one message of the ``down`` topic; the downlink held, or
        None when it was dropped (counted and logged)."""
        try:
            content = verify(data, fleet_key).payload
        except OwlgateError as err:
            self._reject("signature", "%s", err)
            return None
        try:
            downlink = decode_downlink(content)
        except (CborError, SchemaError) as err:
            self._reject("malformed", "%s", err)
            return None
        if downlink.gateway != self.gateway_id:
            self._reject(
                "wrong_gateway",
                "downlink %d is for gateway %s",
                downlink.id,
                downlink.gateway.hex(),
            )
            return None
        now = self._clock()
        if downlink.expires_at <= now:
            self._reject("expired", "downlink %d expired before it arrived", downlink.id)
            return None
        if downlink.id in self._seen:
            self._reject("repeat", "downlink %d arrived before", downlink.id)
            return None
        self._remember(downlink.id)
        if downlink.dev_eui in self._pending:
            self.counters.replaced += 1
        self._pending[downlink.dev_eui] = downlink
        self._bound(now)
        self.counters.received += 1
        log.info(
            "downlink %d for device %s held until its next uplink (FPort %d, %d bytes)",
            downlink.id,
            downlink.dev_eui.hex(),
            downlink.f_port,
            len(downlink.payload),
        )
        return downlink

    def _remember(self, downlink_id: int) -> None:
        seen = self._seen
        seen[downlink_id] = None
        while len(seen) > MAX_REMEMBERED:
            del seen[next(iter(seen))]

    def _bound(self, now: float) -> None:
        pending = self._pending
        for dev_eui in [eui for eui, held in pending.items() if held.expires_at <= now]:
            del pending[dev_eui]
            self.counters.rejected["expired"] += 1
        while len(pending) > self._max_pending:
            first = min(pending, key=lambda eui: pending[eui].expires_at)
            log.warning("downlink %d evicted: %d held", pending[first].id, len(pending))
            del pending[first]
            self.counters.evicted += 1

    @property
    def pending(self) -> dict[bytes, Downlink]:
        """The downlinks held now, by DevEUI (read-only use)."""
        return self._pending

    # --- after an uplink ------------------------------------------------------------------

    def on_uplink(
        self, dev_eui: bytes, rx: RxFrame, session: tuple[int, bytes, bytes] | None
    ) -> TxRequest | None:
        """The device ``dev_eui`` just sent ``rx``: if a downlink is held for it, build its
        frame for RX1 with ``session`` (DevAddr, NwkSKey, AppSKey), persist the counter and
        queue it for :meth:`send`; returns the request queued."""
        downlink = self._pending.pop(dev_eui, None)
        if downlink is None:
            return None
        if downlink.expires_at <= self._clock():
            self._reject("expired", "downlink %d expired unsent", downlink.id)
            return None
        if session is None:
            self._reject("no_session", "no session for device %s", dev_eui.hex())
            return None
        dev_addr, nwk_s_key, app_s_key = session
        try:
            f_cnt = self._next_f_cnt(
                dev_eui, _session_tag(dev_addr, nwk_s_key, app_s_key), downlink.min_f_cnt_down
            )
        except EdgeError as err:
            self._reject("counter", "downlink %d: %s", downlink.id, err)
            return None
        try:
            frame = DataFrame.build(
                SessionKeys(nwk_s_key, app_s_key),
                mtype=MType.UNCONFIRMED_DATA_DOWN,
                dev_addr=dev_addr,
                f_cnt=f_cnt,
                payload=downlink.payload,
                f_port=downlink.f_port,
            )
            request = rx1_tx(
                rx_timestamp_us=rx.timestamp_us,
                frequency_hz=rx.frequency_hz,
                sf=rx.sf,
                bandwidth_hz=rx.bandwidth_hz,
                payload=frame.to_bytes(),
                token=1,
            )
        except OwlgateError as err:
            self._reject("malformed", "downlink %d cannot be framed: %s", downlink.id, err)
            return None
        self._queue.put_nowait(_Queued(downlink, f_cnt, request))
        self.counters.queued += 1
        return request

    def _next_f_cnt(self, dev_eui: bytes, tag: bytes, floor: int) -> int:
        try:
            with self._database() as db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute(
                    "SELECT session, last FROM f_cnt_down WHERE dev_eui = ?", (dev_eui,)
                ).fetchone()
                following = 0 if row is None or row[0] != tag else row[1] + 1
                f_cnt = max(following, floor)
                if f_cnt > _U32:
                    db.execute("ROLLBACK")
                    raise EdgeError(f"FCntDown of device {dev_eui.hex()} is used up: rejoin")
                db.execute(
                    "INSERT OR REPLACE INTO f_cnt_down (dev_eui, session, last, updated_at)"
                    " VALUES (?, ?, ?, ?)",
                    (dev_eui, tag, f_cnt, self._clock()),
                )
                db.execute("COMMIT")
        except sqlite3.Error as err:
            raise EdgeError(f"{self.path}: cannot store the downlink counter: {err}") from err
        return f_cnt

    @contextlib.contextmanager
    def _database(self) -> Iterator[sqlite3.Connection]:
        created = not self.path.exists()
        db = sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT_S)
        try:
            if created:
                os.chmod(self.path, 0o600)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS f_cnt_down (dev_eui BLOB PRIMARY KEY,"
                " session BLOB NOT NULL, last INTEGER NOT NULL, updated_at REAL NOT NULL)"
            )
            yield db
        finally:
            db.close()

    def last_f_cnt_down(self, dev_eui: bytes) -> int | None:
        """The last FCntDown stored for ``dev_eui`` (any session), None if none."""
        if not self.path.exists():
            return None
        with self._database() as db:
            row = db.execute("SELECT last FROM f_cnt_down WHERE dev_eui = ?", (dev_eui,)).fetchone()
        return None if row is None else int(row[0])

    # --- to the radio ---------------------------------------------------------------------

    async def send(self, radio: RadioBackend) -> None:
        """Hand each queued downlink to ``radio`` (run for good, as a supervised loop)."""
        while True:
            queued = await self._queue.get()
            await self._transmit(radio, queued)

    async def _transmit(self, radio: RadioBackend, queued: _Queued) -> None:
        downlink = queued.downlink
        try:
            ack = await radio.transmit(queued.request)
        except RadioError as err:
            self.counters.failed += 1
            log.warning("downlink %d not transmitted: %s", downlink.id, err)
            return
        if ack.error is not TxError.NONE:
            self.counters.failed += 1
            log.warning("downlink %d refused by the concentrator: %s", downlink.id, ack.error.name)
            return
        self.counters.sent += 1
        log.info(
            "downlink %d sent to device %s in RX1 (FCntDown %d)",
            downlink.id,
            downlink.dev_eui.hex(),
            queued.f_cnt_down,
        )
