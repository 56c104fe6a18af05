"""Node settings by downlink: queued in the fleet, sent through the gateway that hears the
device best, confirmed by the device's next uplink.

``POST /api/v1/devices/{dev_eui}/settings`` (operator, admin) takes settings by name, e.g.
``{"report_interval_s": 600}``; they are checked by the device profile's settings encoder
(:func:`owlgate.codecs.payloads.encode_settings`: a setting the profile lacks or a value out
of range is a 422 naming it), get the device's next settings sequence number (one byte,
wrapping) and are stored as one row of ``downlinks`` with the audit event
``device.settings_queued``, in one transaction. ``GET /api/v1/devices/{dev_eui}/downlinks``
lists them, newest first, with their states:

``queued``
    waiting: no gateway has heard the device yet, or an earlier downlink of the device is
    still open (a device gets one downlink at a time, in the order they were queued).
``sent``
    published to the gateway that heard the device best (highest mean SNR, then RSSI, over
    its last :attr:`DownlinkSettings.recent_uplinks` uplinks). The gateway holds it until the
    device's next uplink and transmits it in RX1 (class A).
``confirmed``
    an uplink of the device after it was sent carried the settings ack (FPort 20) with its
    sequence number and result ``applied``.
``refused``
    the ack said ``unsupported`` or ``invalid``; ``refused_setting`` names the setting when the
    device said which.
``expired``
    not confirmed: after :attr:`DownlinkSettings.max_uplinks` uplinks without the ack it is
    sent again (to the gateway that is best then), at most
    :attr:`DownlinkSettings.max_attempts` times in all; then, or once
    :attr:`DownlinkSettings.expiry_s` passed since it was queued, it expires.

Confirmation reads stored readings: the ingest already stores every device message the
gateways decoded (a settings ack is a reading whose values carry ``message``,
``settings_seq`` and ``result``), so nothing in the ingest path changes. The
:class:`DownlinkService` (one MQTT connection of ``owlgate fleet serve``) looks every
:attr:`DownlinkSettings.poll_interval_s` at the open downlinks only, in a worker thread:
:meth:`Downlinks.step` settles what the new readings say and :meth:`Downlinks.push` marks a
downlink sent and gives the signed message (:mod:`owlgate.codecs.downlink`) for
``owlgate/v1/gw/{gateway}/down``, QoS 1, not retained. A publish that fails puts the downlink
back to ``queued``. All of it is in the database: another fleet process can take over, and two
pushing the same downlink at once send one message twice, which the gateway drops as a repeat.

Each push raises the device's lowest FCntDown (key 7 of the message) by one, so a device whose
downlinks go through different gateways still sees its downlink counter increase.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Unpack

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import StrictBool, StrictFloat, StrictInt

from owlgate.codecs.downlink import Downlink, encode_downlink
from owlgate.codecs.errors import OwlgateError, PayloadError
from owlgate.codecs.payloads import ProfileError, encode_settings
from owlgate.codecs.signed import sign

from .audit import record_event
from .auth import Principal, requires
from .mqtt import MqttOptions, MqttService
from .schema import migration
from .sql import Sql
from .store import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    FleetError,
    InvalidError,
    NotFoundError,
    Page,
    Store,
    eui_hex,
)

log = logging.getLogger(__name__)

TOPIC_PREFIX: Final = "owlgate/v1/gw/"
DOWN_KIND: Final = "down"
QOS: Final = 1
STATES: Final = ("queued", "sent", "confirmed", "refused", "expired")
OPEN_STATES: Final = ("queued", "sent")
#: The settings ack results that confirm; the others refuse.
APPLIED: Final = "applied"
#: Settings in one request: the table has 10 names.
MAX_SETTINGS: Final = 16
_SEQ_MODULUS: Final = 256
#: How far behind the fleet's clock a gateway's reading times may be and still count as
#: uplinks after a downlink was queued.
CLOCK_SLACK_S: Final = 3600.0
_U32: Final = 0xFFFFFFFF

#: Who may change a device's settings, and who may read its downlinks.
CHANGERS: Final = ("operator",)
READERS: Final = ("operator", "technician")
changers = requires(*CHANGERS)


@migration("0600_downlinks")
def _downlinks_table(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE downlinks ("
            " id {serial},"
            " dev_eui TEXT NOT NULL,"
            " seq {int} NOT NULL,"
            " f_port {int} NOT NULL,"
            " payload {blob} NOT NULL,"
            " settings TEXT NOT NULL,"
            " state TEXT NOT NULL,"
            " gateway_id TEXT,"
            " attempts {int} NOT NULL,"
            " uplinks {int} NOT NULL,"
            " after_reading {int} NOT NULL,"
            " f_cnt_down {int},"
            " result TEXT,"
            " refused_setting TEXT,"
            " actor TEXT NOT NULL,"
            " queued_at {float} NOT NULL,"
            " sent_at {float},"
            " done_at {float},"
            " expires_at {float} NOT NULL)"
        )
    )
    db.execute("CREATE INDEX downlinks_device ON downlinks (dev_eui, id)")
    db.execute("CREATE INDEX downlinks_state ON downlinks (state, id)")


@dataclass(frozen=True, slots=True)
class DownlinkSettings:
    """How downlinks are sent and when they give up.

    ``max_uplinks``: uplinks of the device after a push without the ack before it is sent
    again (the first uplink is the one the gateway answers; the ack comes with the one after);
    ``max_attempts``: pushes in all before it expires; ``expiry_s``: it expires this long after
    it was queued, whatever happened (set on the row when it is queued: ``expires_at``);
    ``hold_s``: how long a gateway holds it waiting for the device (the message's
    ``expires_at``); ``recent_uplinks``: how many of the device's last uplinks choose the
    gateway; ``poll_interval_s``: how often the service looks."""

    max_uplinks: int = 3
    max_attempts: int = 3
    expiry_s: float = 7 * 86400.0
    hold_s: float = 86400.0
    recent_uplinks: int = 10
    poll_interval_s: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_uplinks", "max_attempts", "recent_uplinks"):
            if getattr(self, name) < 1:
                raise ValueError(f"downlinks: {name} must be at least 1")
        for name in ("expiry_s", "hold_s", "poll_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"downlinks: {name} must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredDownlink:
    """One row of ``downlinks`` (see the module docstring for the states)."""

    id: int
    dev_eui: str
    seq: int
    f_port: int
    payload: bytes
    settings: dict[str, Any]
    state: str
    gateway_id: str | None
    attempts: int
    uplinks: int
    after_reading: int
    f_cnt_down: int | None
    result: str | None
    refused_setting: str | None
    actor: str
    queued_at: float
    sent_at: float | None
    done_at: float | None
    expires_at: float


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A signed downlink message to publish; ``repr`` hides the payload."""

    downlink_id: int
    topic: str
    payload: bytes = field(repr=False)


@dataclass(slots=True)
class DownlinkCounters:
    """What the downlink service did since it started (``GET /api/v1/stats``)."""

    pushed: int = 0
    resent: int = 0
    confirmed: int = 0
    refused: int = 0
    expired: int = 0
    publish_failures: int = 0
    reconnects: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + count)

    def as_dict(self) -> dict[str, object]:
        return {
            name: getattr(self, name)
            for name in (
                "pushed",
                "resent",
                "confirmed",
                "refused",
                "expired",
                "publish_failures",
                "reconnects",
                "errors",
            )
        }


def _row(row: Mapping[str, Any]) -> StoredDownlink:
    return StoredDownlink(
        id=int(row["id"]),
        dev_eui=row["dev_eui"],
        seq=int(row["seq"]),
        f_port=int(row["f_port"]),
        payload=bytes(row["payload"]),
        settings=json.loads(row["settings"]),
        state=row["state"],
        gateway_id=row["gateway_id"],
        attempts=int(row["attempts"]),
        uplinks=int(row["uplinks"]),
        after_reading=int(row["after_reading"]),
        f_cnt_down=None if row["f_cnt_down"] is None else int(row["f_cnt_down"]),
        result=row["result"],
        refused_setting=row["refused_setting"],
        actor=row["actor"],
        queued_at=float(row["queued_at"]),
        sent_at=None if row["sent_at"] is None else float(row["sent_at"]),
        done_at=None if row["done_at"] is None else float(row["done_at"]),
        expires_at=float(row["expires_at"]),
    )


def _latest_reading(db: Sql, dev_eui: str) -> int:
    return int(db.scalar("SELECT COALESCE(MAX(id), 0) FROM readings WHERE dev_eui = ?", [dev_eui]))


def queue_settings(
    store: Store,
    dev_eui: str,
    settings: Mapping[str, object],
    *,
    actor: Principal | str,
    at: float | None = None,
    config: DownlinkSettings | None = None,
) -> StoredDownlink:
    """Check ``settings`` against the device's profile, store them as the device's next
    settings downlink (``queued``) and record ``device.settings_queued``, in one transaction.
    NotFoundError for an unknown device; InvalidError (naming the setting) for settings the
    encoder refuses."""
    config = config or DownlinkSettings()
    eui = eui_hex(dev_eui, "DevEUI")
    when = time.time() if at is None else at
    if len(settings) > MAX_SETTINGS:
        raise InvalidError(f"at most {MAX_SETTINGS} settings in one downlink")
    who = actor.name if isinstance(actor, Principal) else actor
    with store.transaction() as db:
        device = store.device(eui)
        last = db.scalar(
            "SELECT seq FROM downlinks WHERE dev_eui = ? ORDER BY id DESC LIMIT 1", [eui]
        )
        seq = 0 if last is None else (int(last) + 1) % _SEQ_MODULUS
        try:
            f_port, payload = encode_settings(device.profile_id, dict(settings), seq=seq)
        except (PayloadError, ProfileError) as err:
            raise InvalidError(f"settings for device {eui}: {err.message}") from err
        plain = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))
        found = db.query(
            "INSERT INTO downlinks (dev_eui, seq, f_port, payload, settings, state, attempts,"
            " uplinks, after_reading, actor, queued_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, 'queued', 0, 0, ?, ?, ?, ?) RETURNING *",
            [
                eui,
                seq,
                f_port,
                payload,
                plain,
                _latest_reading(db, eui),
                who,
                when,
                when + config.expiry_s,
            ],
        )
        stored = _row(found[0])
        record_event(
            db,
            actor=actor,
            action="device.settings_queued",
            target=f"device:{eui}",
            details={"downlink_id": stored.id, "seq": seq, "settings": dict(settings)},
            at=when,
        )
    log.info("settings downlink %d (seq %d) queued for device %s", stored.id, seq, eui)
    return stored


def device_downlinks(
    store: Store, dev_eui: str, *, limit: int = DEFAULT_PAGE_LIMIT, after: str | None = None
) -> Page[StoredDownlink]:
    """A device's downlinks, newest first; the cursor is the last id of the page."""
    eui = eui_hex(dev_eui, "DevEUI")
    store.device(eui)
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidError(f"limit must be 1 .. {MAX_PAGE_LIMIT}, got {limit}")
    params: list[Any] = [eui]
    where = "dev_eui = ?"
    if after is not None:
        if not after.isascii() or not after.isdigit():
            raise InvalidError(f"not a downlinks cursor: {after!r}")
        where += " AND id < ?"
        params.append(int(after))
    rows = store.sql.query(
        f"SELECT * FROM downlinks WHERE {where} ORDER BY id DESC LIMIT ?", [*params, limit + 1]
    )
    items = [_row(row) for row in rows[:limit]]
    more = len(rows) > limit
    return Page(items, str(items[-1].id) if more and items else None)


class Downlinks:
    """The downlink queue's work against ``store`` (synchronous; the MQTT side is
    :class:`DownlinkService`): :meth:`step` settles open downlinks from new readings and
    returns those due to be pushed, :meth:`push` marks one sent and signs its message with
    ``signing_key`` (the fleet's)."""

    def __init__(
        self,
        store: Store,
        signing_key: Ed25519PrivateKey,
        *,
        settings: DownlinkSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or DownlinkSettings()
        self.clock = clock
        self.counters = DownlinkCounters()
        self._signing_key = signing_key

    def best_gateway(self, dev_eui: str) -> str | None:
        """The registered gateway that heard ``dev_eui`` best over its recent uplinks: the
        highest mean SNR, then the highest mean RSSI, then the lowest id; None if none did."""
        rows = self.store.sql.query_tuples(
            "SELECT r.gateway_id, AVG(r.snr_db), AVG(r.rssi_dbm) FROM receptions r"
            " JOIN gateways g ON g.id = r.gateway_id"
            " WHERE r.reading_id IN (SELECT id FROM readings WHERE dev_eui = ?"
            " ORDER BY time_s DESC, id DESC LIMIT ?) GROUP BY r.gateway_id",
            [dev_eui, self.settings.recent_uplinks],
        )
        low = float("-inf")
        ranked = sorted(
            (
                -(low if snr is None else float(snr)),
                -(low if rssi is None else float(rssi)),
                gateway,
            )
            for gateway, snr, rssi in rows
        )
        return ranked[0][2] if ranked else None

    def step(self) -> list[StoredDownlink]:
        """Settle what the devices' new uplinks say about open downlinks (confirmed, refused,
        sent again, expired) and return the downlinks due to be pushed now, one per device
        at most, each with the gateway to push to in ``gateway_id``."""
        now = self.clock()
        with self.store.transaction() as db:
            expired = db.execute(
                "UPDATE downlinks SET state = 'expired', done_at = ?"
                " WHERE state IN ('queued', 'sent') AND expires_at <= ?",
                [now, now],
            )
            rows = db.query("SELECT * FROM downlinks WHERE state IN ('queued', 'sent') ORDER BY id")
        if expired:
            self.counters.add("expired", expired)
            log.info("%d downlinks expired (not confirmed in time)", expired)
        by_device: dict[str, list[StoredDownlink]] = {}
        for row in rows:
            by_device.setdefault(row["dev_eui"], []).append(_row(row))
        due: list[StoredDownlink] = []
        for open_ones in by_device.values():
            # The oldest open one goes first; once it is settled, the next may go at once.
            for downlink in open_ones:
                current = self._settle(downlink, now)
                if current is None:
                    continue
                if current.state == "queued":
                    gateway = self.best_gateway(current.dev_eui)
                    if gateway is not None:
                        due.append(_with_gateway(current, gateway))
                break
        return due

    def _settle(self, downlink: StoredDownlink, now: float) -> StoredDownlink | None:
        # None: it is done (confirmed, refused, expired), or another fleet process changed it.
        # The device's readings stored since the downlink was queued or last pushed. The
        # time bound only lets the (dev_eui, time_s, id) index skip the device's history: an
        # uplink sent after the downlink was queued carries a later time, give or take the
        # gateway's clock.
        readings = self.store.sql.query_tuples(
            "SELECT id, values_json FROM readings WHERE dev_eui = ? AND time_s >= ? AND id > ?"
            " ORDER BY id",
            [downlink.dev_eui, downlink.queued_at - CLOCK_SLACK_S, downlink.after_reading],
        )
        if not readings:
            return downlink
        uplinks = downlink.uplinks
        last_id = downlink.after_reading
        for reading_id, values_json in readings:
            last_id = int(reading_id)
            values = json.loads(values_json)
            if (
                values.get("message") == "settings_ack"
                and values.get("settings_seq") == downlink.seq
            ):
                return self._finish(downlink, values, now)
            if downlink.state == "sent":
                uplinks += 1
        settings = self.settings
        state = downlink.state
        if state == "sent" and uplinks >= settings.max_uplinks:
            state = "queued" if downlink.attempts < settings.max_attempts else "expired"
        with self.store.transaction() as db:
            changed = db.execute(
                "UPDATE downlinks SET state = ?, uplinks = ?, after_reading = ?, done_at = ?"
                " WHERE id = ? AND state = ? AND after_reading = ?",
                [
                    state,
                    0 if state == "queued" else uplinks,
                    last_id,
                    now if state == "expired" else None,
                    downlink.id,
                    downlink.state,
                    downlink.after_reading,
                ],
            )
        if not changed:
            return None  # another fleet process got there first
        if state == "expired":
            self.counters.add("expired")
            log.warning(
                "downlink %d for %s expired: no ack after %d attempts",
                downlink.id,
                downlink.dev_eui,
                downlink.attempts,
            )
            return None
        if state != downlink.state:
            self.counters.add("resent")
            log.info(
                "downlink %d for %s not acknowledged after %d uplinks: sending it again",
                downlink.id,
                downlink.dev_eui,
                uplinks,
            )
        return _replace_state(downlink, state, last_id)

    def _finish(
        self, downlink: StoredDownlink, values: Mapping[str, Any], now: float
    ) -> StoredDownlink | None:
        result = str(values.get("result"))
        state = "confirmed" if result == APPLIED else "refused"
        setting = values.get("setting")
        with self.store.transaction() as db:
            changed = db.execute(
                "UPDATE downlinks SET state = ?, result = ?, refused_setting = ?, done_at = ?"
                " WHERE id = ? AND state IN ('queued', 'sent')",
                [state, result, setting if isinstance(setting, str) else None, now, downlink.id],
            )
        if not changed:
            return None
        self.counters.add(state)
        log.info(
            "downlink %d for %s %s by the device (%s%s)",
            downlink.id,
            downlink.dev_eui,
            state,
            result,
            f", setting {setting}" if isinstance(setting, str) else "",
        )
        return None

    def push(self, downlink: StoredDownlink) -> Outgoing | None:
        """Mark ``downlink`` (from :meth:`step`) sent to its ``gateway_id`` and return the
        signed message; None when another fleet process pushed it meanwhile."""
        gateway = downlink.gateway_id
        if gateway is None:
            raise FleetError(f"downlink {downlink.id} has no gateway to go to")
        now = self.clock()
        with self.store.transaction() as db:
            highest = db.scalar(
                "SELECT MAX(f_cnt_down) FROM downlinks WHERE dev_eui = ?", [downlink.dev_eui]
            )
            f_cnt_down = 0 if highest is None else min(int(highest) + 1, _U32)
            changed = db.execute(
                "UPDATE downlinks SET state = 'sent', gateway_id = ?, attempts = attempts + 1,"
                " uplinks = 0, after_reading = ?, f_cnt_down = ?, sent_at = ?"
                " WHERE id = ? AND state = 'queued' AND attempts = ?",
                [
                    gateway,
                    _latest_reading(db, downlink.dev_eui),
                    f_cnt_down,
                    now,
                    downlink.id,
                    downlink.attempts,
                ],
            )
        if not changed:
            return None
        message = Downlink(
            id=downlink.id,
            gateway=bytes.fromhex(gateway),
            dev_eui=bytes.fromhex(downlink.dev_eui),
            f_port=downlink.f_port,
            payload=downlink.payload,
            expires_at=int(min(downlink.expires_at, now + self.settings.hold_s)),
            min_f_cnt_down=f_cnt_down,
        )
        self.counters.add("pushed")
        log.info(
            "downlink %d (seq %d) for %s pushed to gateway %s (attempt %d)",
            downlink.id,
            downlink.seq,
            downlink.dev_eui,
            gateway,
            downlink.attempts + 1,
        )
        return Outgoing(
            downlink.id,
            f"{TOPIC_PREFIX}{gateway}/{DOWN_KIND}",
            sign(encode_downlink(message), self._signing_key),
        )

    def unpush(self, downlink_id: int) -> None:
        """Put a pushed downlink back to ``queued`` (its message could not be published)."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE downlinks SET state = 'queued', attempts = attempts - 1"
                " WHERE id = ? AND state = 'sent'",
                [downlink_id],
            )

    def run_once(self) -> list[Outgoing]:
        """:meth:`step`, then :meth:`push` for each downlink due: the messages to publish."""
        out: list[Outgoing] = []
        for downlink in self.step():
            pushed = self.push(downlink)
            if pushed is not None:
                out.append(pushed)
        return out


def _with_gateway(downlink: StoredDownlink, gateway: str) -> StoredDownlink:
    return StoredDownlink(**{**_fields(downlink), "gateway_id": gateway})


def _replace_state(downlink: StoredDownlink, state: str, after_reading: int) -> StoredDownlink:
    return StoredDownlink(**{**_fields(downlink), "state": state, "after_reading": after_reading})


def _fields(downlink: StoredDownlink) -> dict[str, Any]:
    return {name: getattr(downlink, name) for name in StoredDownlink.__dataclass_fields__}


class DownlinkService(MqttService):
    """Publishes the downlinks :class:`Downlinks` finds due, every ``poll_interval_s``; it
    subscribes to nothing."""

    name = "downlinks"

    def __init__(
        self, downlinks: Downlinks, host: str, port: int, **options: Unpack[MqttOptions]
    ) -> None:
        super().__init__(host, port, **options)
        self.downlinks = downlinks

    def topics(self, mqtt5: bool) -> list[tuple[str, int]]:
        return []

    def count_reconnect(self) -> None:
        self.downlinks.counters.add("reconnects")

    def stats(self) -> dict[str, object]:
        """The downlink service's counters now (``GET /api/v1/stats``)."""
        return self.downlinks.counters.as_dict()

    async def serve(self, client: aiomqtt.Client) -> None:
        while True:
            due = await self._due()
            for number, outgoing in enumerate(due):
                try:
                    await client.publish(outgoing.topic, outgoing.payload, qos=QOS)
                except aiomqtt.MqttError:
                    self.downlinks.counters.add("publish_failures")
                    log.error(
                        "downlink %d not published to %s", outgoing.downlink_id, outgoing.topic
                    )
                    # This one and those not tried yet wait for the next connection.
                    for left in due[number:]:
                        await asyncio.to_thread(self.downlinks.unpush, left.downlink_id)
                    raise
            await asyncio.sleep(self.downlinks.settings.poll_interval_s)

    async def _due(self) -> list[Outgoing]:
        try:
            return await asyncio.to_thread(self.downlinks.run_once)
        except OwlgateError as err:
            # A database fault must not end the service: count it and look again next time.
            self.downlinks.counters.add("errors")
            log.error("downlinks: %s", err)
            return []


def downlink_service(
    host: str,
    port: int,
    signing_key: Ed25519PrivateKey,
    *,
    mqtt5: bool = True,
    settings: DownlinkSettings | None = None,
    instance: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Callable[[Store], AbstractAsyncContextManager[DownlinkService]]:
    """A fleet service (see :func:`owlgate.fleet.cli.build_server`) publishing device
    downlinks, signed with ``signing_key``."""

    def service(store: Store) -> DownlinkService:
        return DownlinkService(
            Downlinks(store, signing_key, settings=settings),
            host,
            port,
            mqtt5=mqtt5,
            instance=instance,
            username=username,
            password=password,
        )

    return service


# --- HTTP ---------------------------------------------------------------------------------


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def downlink_json(downlink: StoredDownlink) -> dict[str, Any]:
    """A downlink as the API shows it (the payload in hex)."""
    return {
        "id": downlink.id,
        "dev_eui": downlink.dev_eui,
        "kind": "settings",
        "seq": downlink.seq,
        "settings": downlink.settings,
        "f_port": downlink.f_port,
        "payload": downlink.payload.hex(),
        "state": downlink.state,
        "gateway_id": downlink.gateway_id,
        "attempts": downlink.attempts,
        "uplinks_since_sent": downlink.uplinks,
        "result": downlink.result,
        "refused_setting": downlink.refused_setting,
        "queued_by": downlink.actor,
        "queued_at": _iso(downlink.queued_at),
        "sent_at": _iso(downlink.sent_at),
        "done_at": _iso(downlink.done_at),
        "expires_at": _iso(downlink.expires_at),
    }


SettingValue = StrictBool | StrictInt | StrictFloat
DevEui = Annotated[str, Path(max_length=16)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)]
After = Annotated[str | None, Query(max_length=20)]


def _app_clock(request: Request) -> Callable[[], float]:
    found = getattr(request.app.state, "clock", None)
    return found if callable(found) else time.time


def router() -> APIRouter:
    """The downlink routes under ``/api/v1``; the store is ``request.app.state.store``."""
    from .api import API_PREFIX

    routes = APIRouter(prefix=API_PREFIX, tags=["downlinks"])
    readers = requires(*READERS)

    def device_id(text: str) -> str:
        lowered = text.lower()
        if len(lowered) != 16 or any(c not in "0123456789abcdef" for c in lowered):
            raise NotFoundError(f"no device {text!r}: ids are 16 hex digits")
        return lowered

    @routes.post(
        "/devices/{dev_eui}/settings",
        summary="Queue a settings downlink for a device",
        status_code=202,
    )
    def post_settings(
        request: Request,
        dev_eui: DevEui,
        body: Annotated[dict[str, SettingValue], Body()],
        principal: Annotated[Principal, changers],
    ) -> dict[str, Any]:
        stored = queue_settings(
            request.app.state.store,
            device_id(dev_eui),
            body,
            actor=principal,
            at=float(_app_clock(request)()),
        )
        return downlink_json(stored)

    @routes.get(
        "/devices/{dev_eui}/downlinks",
        summary="A device's downlinks and their states, newest first",
        dependencies=[readers],
    )
    def get_downlinks(
        request: Request, dev_eui: DevEui, limit: Limit = DEFAULT_PAGE_LIMIT, after: After = None
    ) -> dict[str, Any]:
        page = device_downlinks(
            request.app.state.store, device_id(dev_eui), limit=limit, after=after
        )
        return {"items": [downlink_json(item) for item in page.items], "next": page.next}

    return routes


__all__ = [
    "OPEN_STATES",
    "STATES",
    "DownlinkCounters",
    "DownlinkService",
    "DownlinkSettings",
    "Downlinks",
    "Outgoing",
    "StoredDownlink",
    "device_downlinks",
    "downlink_json",
    "downlink_service",
    "queue_settings",
    "router",
]
