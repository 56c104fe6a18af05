"""Alert notifications: signed webhooks and e-mail over SMTP, delivered from a durable outbox.

A notification is a row per channel in the ``notification_outbox`` table, written in the same
transaction as the alert change that causes it (:meth:`Notifier.enqueue`): the alert and its
notifications are stored together or not at all, a restart or a crash loses none, and a mass
outage queues as many as the database holds. The :class:`Notifier` gives each channel one
delivery task that claims due rows (several fleet processes share one database without
sending a row twice), so a receiver that is slow, down or refusing delays only its own
channel; retries and their backoff are kept in the row. What happens to every notification is
counted per channel and outcome (``delivered``, ``retried``, ``failed``: gave up after the
last attempt, ``refused``: a permanent no, ``dropped``: a stored row that no longer holds a
notification), logged, and left in the row (its state and last error).

Webhook: ``POST`` of the JSON body (:meth:`Notification.body`) with
``X-Owlgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>.<body>">`` (the scheme
Stripe made common: the timestamp inside the MAC lets a receiver refuse a replayed request),
``X-Owlgate-Event`` and ``X-Owlgate-Delivery`` (the same id on every attempt, so a receiver
can drop a repeat). A timeout, a connection error or a 5xx is tried again with exponential
backoff, up to ``max_attempts``; any other answer outside 2xx is final (``refused``).

SMTP: one message per notification, ``smtplib`` in a worker thread, STARTTLS when configured
(and then required: no falling back to plaintext), login only over TLS.

Secrets (the webhook's HMAC key, the SMTP password) are read at start from an environment
variable or a file the configuration names, are kept in memory only, never in the database,
and never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import smtplib
import socket
import ssl
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import httpx

from owlgate.codecs.errors import OwlgateError

from .schema import migration
from .sql import Sql, SqlError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SIGNATURE_HEADER: Final = "X-Owlgate-Signature"
EVENT_HEADER: Final = "X-Owlgate-Event"
DELIVERY_HEADER: Final = "X-Owlgate-Delivery"
DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_TIMEOUT_S: Final = 10.0
DEFAULT_BACKOFF_INITIAL_S: Final = 1.0
DEFAULT_BACKOFF_MAX_S: Final = 60.0
OUTCOMES: Final = ("delivered", "retried", "failed", "refused", "dropped")
Outcome = Literal["delivered", "retried", "failed", "refused", "dropped"]
OUTBOX_TABLE: Final = "notification_outbox"
#: ``pending``: waiting for its first or next attempt; the other three are final.
OutboxState = Literal["pending", "delivered", "failed", "refused"]
#: How often a delivery task looks at the table when nothing woke it (rows written by other
#: fleet processes, claims that ran out).
DEFAULT_POLL_INTERVAL_S: Final = 5.0
#: How long a claimed row is held for one attempt: well above an attempt's timeout, so a
#: slow receiver's row is not taken over (and sent twice) while its attempt still runs.
DEFAULT_CLAIM_S: Final = 300.0
#: Delivered rows are kept a week (what was sent, and when), refused and failed ones a month.
DEFAULT_RETENTION_S: Final = 7 * 86_400.0
DEFAULT_FINAL_RETENTION_S: Final = 30 * 86_400.0
DEFAULT_PRUNE_INTERVAL_S: Final = 3_600.0
#: The longest last_error kept in a row.
_ERROR_MAX: Final = 500


class NotifyError(OwlgateError):
    """Root of the notification errors; ``message`` says what went wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotifyConfigError(NotifyError):
    """A notification channel's configuration is not valid (names the file and key)."""


class TransientDeliveryError(NotifyError):
    """This attempt failed in a way that may pass: try again later."""


class PermanentDeliveryError(NotifyError):
    """The receiver said no for good: trying again would get the same answer."""


@dataclass(frozen=True, slots=True)
class Notification:
    """What is sent: ``event`` (``alert.opened``, ``alert.resolved``) and the alert as the
    API shows it."""

    event: str
    alert: Mapping[str, Any]

    def body(self) -> bytes:
        """The JSON document a webhook receives (keys sorted, UTF-8)."""
        return json.dumps(
            {"event": self.event, "alert": dict(self.alert)}, sort_keys=True, ensure_ascii=False
        ).encode("utf-8")

    def subject_line(self) -> str:
        alert = self.alert
        what = self.event.removeprefix("alert.")
        return (
            f"[owlgate] {str(alert.get('severity', '')).upper()} {what}: "
            f"{alert.get('rule')} {alert.get('subject')}"
        )

    def text(self) -> str:
        alert = self.alert
        lines = [
            f"{self.event}: {alert.get('message')}",
            "",
            f"rule:      {alert.get('rule')} ({alert.get('kind')})",
            f"subject:   {alert.get('subject')}",
            f"severity:  {alert.get('severity')}",
            f"value:     {alert.get('value')} ({alert.get('unit')})",
            f"threshold: {alert.get('threshold')}, clears at {alert.get('clear')}",
            f"opened:    {alert.get('opened_at')}",
        ]
        if alert.get("resolved_at"):
            lines.append(f"resolved:  {alert.get('resolved_at')}")
        lines.append(f"alert id:  {alert.get('id')}")
        return "\n".join(lines) + "\n"


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Owlgate-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: bytes, body: bytes, header: str, *, now: float, tolerance_s: float = 300.0
) -> bool:
    """What a receiver does: True if ``header`` signs ``body`` with ``secret`` and its
    timestamp is within ``tolerance_s`` of ``now``."""
    parts = dict(part.partition("=")[::2] for part in header.split(","))
    stamp, given = parts.get("t", ""), parts.get("v1", "")
    if not (stamp.isascii() and stamp.isdigit()) or abs(now - int(stamp)) > tolerance_s:
        return False
    expected = signature(secret, body, int(stamp)).partition(",v1=")[2]
    return hmac.compare_digest(expected, given)


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """Attempts and exponential backoff between them: ``initial_s``, doubled each time, at
    most ``max_s``."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    max_s: float = DEFAULT_BACKOFF_MAX_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_s < 0 or self.max_s < self.initial_s:
            raise ValueError(
                "max_attempts must be >= 1 and 0 <= backoff_initial_s <= backoff_max_s"
            )

    def delay_s(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_s, self.initial_s * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    name: str
    url: str
    secret: bytes = field(repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry: Retry = field(default_factory=Retry)


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpConfig:
    name: str
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    starttls: bool = False
    #: CA certificates to trust for STARTTLS (default: the system's).
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry: Retry = field(default_factory=Retry)


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyConfig:
    webhooks: tuple[WebhookConfig, ...] = ()
    smtp: tuple[SmtpConfig, ...] = ()


_COMMON_KEYS: Final = {"name", "timeout_s", "max_attempts", "backoff_initial_s", "backoff_max_s"}
_WEBHOOK_KEYS: Final = _COMMON_KEYS | {"url", "secret_env", "secret_file"}
_SMTP_KEYS: Final = _COMMON_KEYS | {
    "host",
    "port",
    "sender",
    "recipients",
    "starttls",
    "ca_file",
    "username",
    "password_env",
    "password_file",
}


def parse_notify_config(
    data: Mapping[str, Any], source: str, *, environ: Mapping[str, str] | None = None
) -> NotifyConfig:
    """The ``[notify]`` table: ``[[notify.webhook]]`` and ``[[notify.smtp]]`` entries.
    Secrets are read here from the variables and files named."""
    env = os.environ if environ is None else environ
    unknown = set(data) - {"webhook", "smtp"}
    if unknown:
        raise NotifyConfigError(f"{source}: notify: unknown key(s) {sorted(unknown)}")
    webhooks = [
        _webhook(entry, source, f"notify.webhook[{index}]", env)
        for index, entry in enumerate(_entries(data, "webhook", source))
    ]
    smtp = [
        _smtp(entry, source, f"notify.smtp[{index}]", env)
        for index, entry in enumerate(_entries(data, "smtp", source))
    ]
    names = [c.name for c in webhooks] + [c.name for c in smtp]
    if len(set(names)) != len(names):
        raise NotifyConfigError(f"{source}: notify: channel names must be unique, got {names}")
    return NotifyConfig(webhooks=tuple(webhooks), smtp=tuple(smtp))


def _entries(data: Mapping[str, Any], key: str, source: str) -> list[Mapping[str, Any]]:
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise NotifyConfigError(
            f"{source}: notify.{key} must be an array of tables [[notify.{key}]]"
        )
    return entries


def _required(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise NotifyConfigError(f"{where}.{key} must be non-empty text")
    return value


def _text(entry: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    if entry.get(key) is None and not required:
        return None
    return _required(entry, key, where)


def _positive(entry: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise NotifyConfigError(f"{where}.{key} must be a number, got {value!r}")
    if value < 0:
        raise NotifyConfigError(f"{where}.{key} must be >= 0, got {value}")
    return float(value)


def _retry(entry: Mapping[str, Any], where: str) -> Retry:
    attempts = entry.get("max_attempts", DEFAULT_MAX_ATTEMPTS)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise NotifyConfigError(f"{where}.max_attempts must be an integer >= 1, got {attempts!r}")
    initial = _positive(entry, "backoff_initial_s", where, DEFAULT_BACKOFF_INITIAL_S)
    top = _positive(entry, "backoff_max_s", where, max(initial, DEFAULT_BACKOFF_MAX_S))
    if top < initial:
        raise NotifyConfigError(f"{where}.backoff_max_s must be >= backoff_initial_s")
    return Retry(max_attempts=attempts, initial_s=initial, max_s=top)


def _secret(
    entry: Mapping[str, Any], where: str, env_key: str, file_key: str, env: Mapping[str, str]
) -> str | None:
    """The secret from the environment variable or file named (one of the two), or None
    if neither is given."""
    variable = _text(entry, env_key, where)
    path = _text(entry, file_key, where)
    if variable is not None and path is not None:
        raise NotifyConfigError(f"{where}: give {env_key} or {file_key}, not both")
    if variable is not None:
        value = env.get(variable)
        if not value:
            raise NotifyConfigError(
                f"{where}.{env_key}: environment variable {variable} is not set"
            )
        return value
    if path is not None:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise NotifyConfigError(
                f"{where}.{file_key}: cannot read {path}: {err.strerror or err}"
            ) from err
        if not value:
            raise NotifyConfigError(f"{where}.{file_key}: {path} is empty")
        return value
    return None


def _webhook(
    entry: Mapping[str, Any], source: str, key: str, env: Mapping[str, str]
) -> WebhookConfig:
    where = f"{source}: {key}"
    bad = set(entry) - _WEBHOOK_KEYS
    if bad:
        raise NotifyConfigError(f"{where}: unknown key(s) {sorted(bad)}")
    name = _required(entry, "name", where)
    url = _required(entry, "url", where)
    if not url.startswith(("https://", "http://")):
        raise NotifyConfigError(f"{where}.url must be an http:// or https:// URL")
    secret = _secret(entry, where, "secret_env", "secret_file", env)
    if secret is None:
        raise NotifyConfigError(
            f"{where}: a webhook needs secret_env or secret_file (the HMAC key it signs with)"
        )
    return WebhookConfig(
        name=name,
        url=url,
        secret=secret.encode("utf-8"),
        timeout_s=_positive(entry, "timeout_s", where, DEFAULT_TIMEOUT_S),
        retry=_retry(entry, where),
    )


def _smtp(entry: Mapping[str, Any], source: str, key: str, env: Mapping[str, str]) -> SmtpConfig:
    where = f"{source}: {key}"
    bad = set(entry) - _SMTP_KEYS
    if bad:
        raise NotifyConfigError(f"{where}: unknown key(s) {sorted(bad)}")
    name = _required(entry, "name", where)
    host = _required(entry, "host", where)
    sender = _required(entry, "sender", where)
    port = entry.get("port", 587)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise NotifyConfigError(f"{where}.port must be 1 .. 65535, got {port!r}")
    recipients = entry.get("recipients")
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(r, str) and "@" in r for r in recipients)
    ):
        raise NotifyConfigError(f"{where}.recipients must be a non-empty list of addresses")
    starttls = entry.get("starttls", False)
    if not isinstance(starttls, bool):
        raise NotifyConfigError(f"{where}.starttls must be true or false")
    username = _text(entry, "username", where)
    password = _secret(entry, where, "password_env", "password_file", env)
    if (username is None) != (password is None):
        raise NotifyConfigError(f"{where}: username and password_env/password_file go together")
    if username is not None and not starttls:
        raise NotifyConfigError(
            f"{where}: logging in without TLS would send the password in plaintext; "
            "set starttls = true"
        )
    ca_file = _text(entry, "ca_file", where)
    return SmtpConfig(
        name=name,
        host=host,
        port=port,
        sender=sender,
        recipients=tuple(recipients),
        starttls=starttls,
        ca_file=None if ca_file is None else Path(ca_file),
        username=username,
        password=password,
        timeout_s=_positive(entry, "timeout_s", where, DEFAULT_TIMEOUT_S),
        retry=_retry(entry, where),
    )


# --- channels ----------------------------------------------------------------------------------


class Channel(ABC):
    """One way of sending: :meth:`attempt` sends once, raising TransientDeliveryError or
    PermanentDeliveryError."""

    name: str
    kind: str
    retry: Retry

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    @abstractmethod
    async def attempt(self, notification: Notification, delivery_id: str) -> None: ...

    @abstractmethod
    async def open(self) -> None:
        """Called once before the first delivery."""

    @abstractmethod
    async def close(self) -> None:
        """Called once after the last delivery."""


class WebhookChannel(Channel):
    kind = "webhook"

    def __init__(self, config: WebhookConfig, *, clock: Any = time.time) -> None:
        self.name = config.name
        self.config = config
        self.retry = config.retry
        self._clock = clock
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        # No redirects followed: a signed body must not go where the configuration did not say.
        self._client = httpx.AsyncClient(timeout=self.config.timeout_s, follow_redirects=False)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def attempt(self, notification: Notification, delivery_id: str) -> None:
        if self._client is None:
            await self.open()
        assert self._client is not None
        body = notification.body()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self.config.secret, body, int(self._clock())),
            EVENT_HEADER: notification.event,
            DELIVERY_HEADER: delivery_id,
        }
        try:
            response = await self._client.post(self.config.url, content=body, headers=headers)
        except httpx.TimeoutException as err:
            raise TransientDeliveryError(f"timed out after {self.config.timeout_s} s") from err
        except httpx.TransportError as err:
            raise TransientDeliveryError(f"cannot reach the receiver: {err}") from err
        status = response.status_code
        if 200 <= status < 300:
            return
        if status >= 500:
            raise TransientDeliveryError(f"the receiver answered {status}")
        raise PermanentDeliveryError(f"the receiver answered {status}: not tried again")


class SmtpChannel(Channel):
    kind = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.name = config.name
        self.config = config
        self.retry = config.retry

    async def open(self) -> None:
        """Nothing to open: one SMTP connection per message (alerts are rare, and a held
        connection would time out between them)."""

    async def close(self) -> None:
        """Nothing held."""

    def message(self, notification: Notification, delivery_id: str) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.config.sender
        mail["To"] = ", ".join(self.config.recipients)
        mail["Subject"] = notification.subject_line()
        mail["X-Owlgate-Event"] = notification.event
        mail["Message-ID"] = f"<{delivery_id}@owlgate>"
        mail.set_content(notification.text())
        return mail

    async def attempt(self, notification: Notification, delivery_id: str) -> None:
        await asyncio.to_thread(self._send, self.message(notification, delivery_id))

    def _send(self, mail: EmailMessage) -> None:
        config = self.config
        try:
            with smtplib.SMTP(config.host, config.port, timeout=config.timeout_s) as smtp:
                if config.starttls:
                    context = ssl.create_default_context(
                        cafile=None if config.ca_file is None else str(config.ca_file)
                    )
                    smtp.starttls(context=context)
                if config.username is not None and config.password is not None:
                    smtp.login(config.username, config.password)
                smtp.send_message(mail)
        except smtplib.SMTPNotSupportedError as err:
            # STARTTLS configured and the server does not offer it: never fall back.
            raise PermanentDeliveryError(f"{config.host}:{config.port}: {err}") from err
        except smtplib.SMTPAuthenticationError as err:
            raise PermanentDeliveryError(
                f"{config.host}:{config.port}: login refused ({err.smtp_code})"
            ) from err
        except smtplib.SMTPRecipientsRefused as err:
            raise PermanentDeliveryError(
                f"{config.host}:{config.port}: every recipient refused"
            ) from err
        except smtplib.SMTPResponseException as err:
            text = f"{config.host}:{config.port}: answered {err.smtp_code}"
            if 400 <= err.smtp_code < 500:
                raise TransientDeliveryError(text) from err
            raise PermanentDeliveryError(text) from err
        except ssl.SSLError as err:
            raise PermanentDeliveryError(f"{config.host}:{config.port}: TLS failed: {err}") from err
        except (smtplib.SMTPException, OSError) as err:
            raise TransientDeliveryError(f"{config.host}:{config.port}: {err}") from err


# --- the outbox --------------------------------------------------------------------------------


@migration("0210_notification_outbox")
def _outbox_schema(sql: Sql) -> None:
    # One row per (notification, channel). The row is the queue: a notification exists once
    # its row is committed, in the same transaction as the alert change that caused it, and
    # is gone only when pruned after its final state. (Registered here; the schema finds it
    # because owlgate.fleet.alerts, listed in schema.FEATURE_MODULES, imports this module.)
    sql.execute(
        sql.ddl(
            f"CREATE TABLE {OUTBOX_TABLE} ("
            "id {serial}, delivery_id TEXT NOT NULL, channel TEXT NOT NULL, "
            "event TEXT NOT NULL, payload TEXT NOT NULL, state TEXT NOT NULL, "
            "attempts {int} NOT NULL, created_at {float} NOT NULL, next_at {float} NOT NULL, "
            "claimed_by TEXT, claimed_until {float}, finished_at {float}, last_error TEXT, "
            "UNIQUE (delivery_id, channel))"
        )
    )
    sql.execute(f"CREATE INDEX {OUTBOX_TABLE}_due ON {OUTBOX_TABLE} (channel, state, id)")
    sql.execute(f"CREATE INDEX {OUTBOX_TABLE}_finished ON {OUTBOX_TABLE} (state, finished_at)")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """One row of the outbox: a notification for one channel and what became of it."""

    id: int
    delivery_id: str
    channel: str
    event: str
    state: OutboxState
    attempts: int
    created_at: float
    next_at: float
    finished_at: float | None
    last_error: str | None
    claimed_by: str | None


def outbox_entries(
    sql: Sql, *, states: Sequence[OutboxState] = (), limit: int = 100
) -> list[OutboxEntry]:
    """Outbox rows, oldest first, of the given ``states`` (all when empty)."""
    where = f"WHERE state IN ({', '.join('?' * len(states))}) " if states else ""
    rows = sql.query(
        "SELECT id, delivery_id, channel, event, state, attempts, created_at, next_at, "
        f"finished_at, last_error, claimed_by FROM {OUTBOX_TABLE} {where}ORDER BY id LIMIT ?",
        [*states, limit],
    )
    return [
        OutboxEntry(
            id=int(row["id"]),
            delivery_id=row["delivery_id"],
            channel=row["channel"],
            event=row["event"],
            state=row["state"],
            attempts=int(row["attempts"]),
            created_at=float(row["created_at"]),
            next_at=float(row["next_at"]),
            finished_at=None if row["finished_at"] is None else float(row["finished_at"]),
            last_error=row["last_error"],
            claimed_by=row["claimed_by"],
        )
        for row in rows
    ]


class OutboxPayloadError(NotifyError):
    """A stored outbox row does not hold a notification (edited or damaged by hand)."""


def _load(payload: str) -> Notification:
    try:
        document = json.loads(payload)
    except ValueError as err:
        raise OutboxPayloadError(f"the stored payload is not JSON: {err}") from err
    if (
        not isinstance(document, dict)
        or not isinstance(document.get("event"), str)
        or not isinstance(document.get("alert"), dict)
    ):
        raise OutboxPayloadError("the stored payload is not {'event': text, 'alert': object}")
    return Notification(event=document["event"], alert=document["alert"])


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    delivery_id: str
    payload: str
    attempts: int


# --- the notifier ------------------------------------------------------------------------------


class Notifier:
    """Delivers the notifications of the outbox table to ``channels``, one delivery task per
    channel.

    :meth:`enqueue` writes a notification's rows inside the caller's transaction (the alert
    change that causes it): both are stored or neither is. Each channel's task claims its
    oldest unclaimed pending row, once due, for ``claim_s`` seconds (so several fleet
    processes on one database never send the same row at once), attempts it, and writes the
    outcome: ``delivered``, ``refused``, ``failed`` after the last attempt, or, after a
    transient failure, the next attempt's time (the backoff is in the row, so it survives a
    restart). A row whose claim ran out (its process died mid-delivery) is claimed again by
    whoever comes next: delivery is at least once, and the delivery id, kept across attempts
    and restarts, lets a receiver drop a repeat.
    """

    def __init__(
        self,
        channels: Sequence[Channel] = (),
        *,
        sql: Sql,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        claim_s: float = DEFAULT_CLAIM_S,
        retention_s: float = DEFAULT_RETENTION_S,
        final_retention_s: float = DEFAULT_FINAL_RETENTION_S,
        prune_interval_s: float = DEFAULT_PRUNE_INTERVAL_S,
    ) -> None:
        labels = [channel.label for channel in channels]
        if len(set(labels)) != len(labels):
            raise ValueError(f"channel names must be unique, got {labels}")
        if not (poll_interval_s > 0 and claim_s > 0 and prune_interval_s > 0):
            raise ValueError("poll_interval_s, claim_s and prune_interval_s must be above 0")
        self.channels = list(channels)
        self.sql = sql
        self.clock = clock
        #: Written into the rows this notifier claims: which process holds them.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.poll_interval_s = poll_interval_s
        self.claim_s = claim_s
        self.retention_s = retention_s
        self.final_retention_s = final_retention_s
        self.prune_interval_s = prune_interval_s
        self.counters: dict[str, dict[Outcome, int]] = {
            channel.label: dict.fromkeys(OUTCOMES, 0) for channel in channels
        }
        #: The database failed under the delivery loop (it tries again at the next poll).
        self.outbox_errors = 0
        #: A row's claim ran out during its delivery and another process took it over.
        self.claims_lost = 0
        self._wakeups = {channel.label: asyncio.Event() for channel in channels}
        self._tasks: list[asyncio.Task[None]] = []
        self._steps = 0
        self._stepped = asyncio.Condition()

    @classmethod
    def from_config(
        cls, config: NotifyConfig, *, sql: Sql, clock: Callable[[], float] = time.time
    ) -> Notifier:
        channels: list[Channel] = [WebhookChannel(c) for c in config.webhooks]
        channels += [SmtpChannel(c) for c in config.smtp]
        return cls(channels, sql=sql, clock=clock)

    async def __aenter__(self) -> Self:
        try:
            await asyncio.to_thread(self._warn_orphans)
        except SqlError as err:
            self._outbox_error("read the outbox", err)
        for channel in self.channels:
            await channel.open()
            self._tasks.append(
                asyncio.create_task(self._deliver(channel), name=f"owlgate-notify-{channel.label}")
            )
        self._tasks.append(asyncio.create_task(self._prune_loop(), name="owlgate-notify-prune"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A delivery cut short by the stop: its row goes back to pending at once rather than
        # waiting out the claim, so the next process (or this one, restarted) sends it.
        try:
            await asyncio.to_thread(self._release_claims)
        except SqlError as err:
            self._outbox_error("release the claimed rows", err)
        for channel in self.channels:
            await channel.close()

    def enqueue(self, db: Sql, notification: Notification) -> str:
        """Write ``notification``'s rows, one per channel, with ``db`` (inside the caller's
        transaction); returns the delivery id. Call :meth:`wake` after the commit."""
        delivery_id = str(uuid.uuid4())
        if not self.channels:
            return delivery_id
        now = self.clock()
        payload = notification.body().decode("utf-8")
        db.executemany(
            f"INSERT INTO {OUTBOX_TABLE} (delivery_id, channel, event, payload, state, "
            "attempts, created_at, next_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
            [
                (delivery_id, channel.label, notification.event, payload, now, now)
                for channel in self.channels
            ],
        )
        return delivery_id

    def submit(self, notification: Notification) -> str:
        """Store ``notification`` for every channel in a transaction of its own and wake the
        delivery tasks; returns the delivery id. Blocks only for the INSERT: SqlError when
        the database refuses it."""
        with self.sql.transaction() as db:
            delivery_id = self.enqueue(db, notification)
        self.wake()
        return delivery_id

    def wake(self) -> None:
        """Tell the delivery tasks new rows are committed (otherwise they look every
        ``poll_interval_s``). Call from the event loop's thread."""
        for event in self._wakeups.values():
            event.set()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, checked after every delivery step."""
        async with self._stepped:
            await self._stepped.wait_for(predicate)

    async def drained(self) -> None:
        """Return once no row of this notifier's channels is pending (delivered, refused or
        failed, here or by another process on the same database)."""
        while True:
            seen = self._steps
            if await asyncio.to_thread(self._pending_total) == 0:
                return
            # Rows another process delivers step nothing here: look again at the poll.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval_s):
                    await self.wait_until(functools.partial(self._stepped_since, seen))

    def _stepped_since(self, seen: int) -> bool:
        return self._steps != seen

    def pending(self) -> dict[str, int]:
        """Outbox depth: pending rows by channel label (every configured channel, and any
        other label rows are still waiting for)."""
        depth = dict.fromkeys(self.counters, 0)
        for label, count in self.sql.query_tuples(
            f"SELECT channel, COUNT(*) FROM {OUTBOX_TABLE} WHERE state = 'pending' GROUP BY channel"
        ):
            depth[label] = int(count)
        return depth

    def stats(self) -> dict[str, object]:
        """``notifications_<outcome>``: counts by channel (``webhook:<name>``, ...);
        ``notifications_pending``: the outbox depth by channel (None when the database
        cannot be read); ``notification_outbox_errors``, ``notification_claims_lost``."""
        counts: dict[str, object] = {
            f"notifications_{outcome}": {
                label: counts[outcome] for label, counts in self.counters.items()
            }
            for outcome in OUTCOMES
        }
        try:
            counts["notifications_pending"] = self.pending()
        except SqlError as err:
            self._outbox_error("count the pending rows", err)
            counts["notifications_pending"] = None
        counts["notification_outbox_errors"] = self.outbox_errors
        counts["notification_claims_lost"] = self.claims_lost
        return counts

    def prune(self) -> int:
        """Delete delivered rows older than ``retention_s`` and refused or failed ones older
        than ``final_retention_s``; returns how many."""
        now = self.clock()
        with self.sql.transaction() as db:
            removed = db.execute(
                f"DELETE FROM {OUTBOX_TABLE} WHERE state = 'delivered' AND finished_at < ?",
                [now - self.retention_s],
            )
            removed += db.execute(
                f"DELETE FROM {OUTBOX_TABLE} WHERE state IN ('failed', 'refused') "
                "AND finished_at < ?",
                [now - self.final_retention_s],
            )
        if removed:
            log.info("notification outbox: pruned %d finished rows", removed)
        return removed

    # --- the delivery tasks --------------------------------------------------------------------

    async def _deliver(self, channel: Channel) -> None:
        wakeup = self._wakeups[channel.label]
        while True:
            wakeup.clear()
            try:
                claimed = await self._in_thread(self._claim, channel.label)
                delay = 0.0 if claimed else await self._in_thread(self._idle_s, channel.label)
            except SqlError as err:
                self._outbox_error(f"claim a row for {channel.label}", err)
                claimed, delay = None, self.poll_interval_s
            if claimed is not None:
                await self._send(channel, claimed)
                continue
            if delay > 0:
                # The timer is the poll: rows committed by other processes, retries coming
                # due and claims running out are found without a wake-up.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wakeup.wait()

    async def _send(self, channel: Channel, row: _Claimed) -> None:
        label = channel.label
        try:
            notification = _load(row.payload)
        except OutboxPayloadError as err:
            self._count(channel, "dropped")
            log.error("outbox row %d for %s dropped: %s", row.id, label, err)
            await self._finish(channel, row, "failed", row.attempts, err.message)
            return
        attempt = row.attempts + 1
        try:
            await channel.attempt(notification, row.delivery_id)
        except PermanentDeliveryError as err:
            self._count(channel, "refused")
            log.error("notification %s on %s refused: %s", notification.event, label, err)
            await self._finish(channel, row, "refused", attempt, err.message)
        except TransientDeliveryError as err:
            if attempt >= channel.retry.max_attempts:
                self._count(channel, "failed")
                log.error(
                    "notification %s on %s failed after %d attempts: %s",
                    notification.event,
                    label,
                    attempt,
                    err,
                )
                await self._finish(channel, row, "failed", attempt, err.message)
                return
            self._count(channel, "retried")
            delay = channel.retry.delay_s(attempt)
            log.warning(
                "notification %s on %s: attempt %d failed (%s); next in %.1f s",
                notification.event,
                label,
                attempt,
                err,
                delay,
            )
            await self._finish(channel, row, "pending", attempt, err.message, next_in_s=delay)
        except Exception as err:
            # A fault of the channel's own code: counted, logged with its traceback, and the
            # row ends failed, so the channel goes on with the next one rather than stopping.
            self._count(channel, "failed")
            log.exception("notification %s on %s failed", notification.event, label)
            await self._finish(channel, row, "failed", attempt, f"{type(err).__name__}: {err}")
        else:
            self._count(channel, "delivered")
            await self._finish(channel, row, "delivered", attempt, None)

    async def _finish(
        self,
        channel: Channel,
        row: _Claimed,
        state: OutboxState,
        attempts: int,
        error: str | None,
        *,
        next_in_s: float = 0.0,
    ) -> None:
        try:
            # A stop arriving during the write waits for it: a delivered row left pending
            # would be sent again by the next service.
            kept = await self._in_thread(self._record, row, state, attempts, error, next_in_s)
        except SqlError as err:
            # The row keeps its claim until it runs out, then is attempted again (same
            # delivery id): a repeat the receiver drops, never a loss.
            self._outbox_error(f"record the outcome of row {row.id} on {channel.label}", err)
        else:
            if not kept:
                self.claims_lost += 1
                log.warning(
                    "outbox row %d on %s: its claim ran out during delivery and another "
                    "process took it over (raise claim_s above the channel's timeout)",
                    row.id,
                    channel.label,
                )
        async with self._stepped:
            self._steps += 1
            self._stepped.notify_all()

    async def _in_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        """``function(*args)`` in a worker thread. Cancelled (the notifier stops), it waits
        for the call to end before the cancellation goes on: a claim or an outcome is then
        written before :meth:`__aexit__` gives back this process's claims, never after."""
        running = asyncio.ensure_future(asyncio.to_thread(function, *args))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            (ended,) = await asyncio.gather(running, return_exceptions=True)
            if isinstance(ended, SqlError):
                self._outbox_error(f"finish {function.__name__} at the stop", ended)
            raise

    async def _prune_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.prune)
            except SqlError as err:
                self._outbox_error("prune", err)
            await asyncio.sleep(self.prune_interval_s)

    # --- database calls (in a worker thread) ---------------------------------------------------

    def _claim(self, label: str) -> _Claimed | None:
        now = self.clock()
        # The channel's oldest unclaimed row, if it is due: rows go out in the order they
        # were written, and a row waiting for its retry holds back the ones behind it (an
        # "alert.resolved" never overtakes its "alert.opened").
        #
        # One portable statement: the inner SELECT picks the row, the outer WHERE checks again
        # that it is unclaimed. Two processes racing for one row: SQLite runs the writes one
        # after the other, PostgreSQL re-checks the outer WHERE on the row the first one
        # changed; either way the second changes nothing and gets no row.
        rows = self.sql.query_tuples(
            f"UPDATE {OUTBOX_TABLE} SET claimed_by = ?, claimed_until = ? "
            f"WHERE id = (SELECT id FROM {OUTBOX_TABLE} WHERE channel = ? "
            "AND state = 'pending' AND (claimed_until IS NULL OR claimed_until < ?) "
            "ORDER BY id LIMIT 1) "
            "AND next_at <= ? AND state = 'pending' "
            "AND (claimed_until IS NULL OR claimed_until < ?) "
            "RETURNING id, delivery_id, payload, attempts",
            [self.owner, now + self.claim_s, label, now, now, now],
        )
        if not rows:
            return None
        row_id, delivery_id, payload, attempts = rows[0]
        return _Claimed(int(row_id), delivery_id, payload, int(attempts))

    def _idle_s(self, label: str) -> float:
        """How long the channel's task may wait: until its oldest unclaimed row comes due
        (0: it is due now; another process took the one just tried), at most
        ``poll_interval_s``."""
        now = self.clock()
        due = self.sql.scalar(
            f"SELECT next_at FROM {OUTBOX_TABLE} WHERE channel = ? AND state = 'pending' "
            "AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY id LIMIT 1",
            [label, now],
        )
        if due is None:
            return self.poll_interval_s
        return min(self.poll_interval_s, max(0.0, float(due) - now))

    def _record(
        self,
        row: _Claimed,
        state: OutboxState,
        attempts: int,
        error: str | None,
        next_in_s: float,
    ) -> bool:
        now = self.clock()
        changed = self.sql.execute(
            # A delivered row keeps the error of the attempt before it: why it took several.
            f"UPDATE {OUTBOX_TABLE} SET state = ?, attempts = ?, next_at = ?, "
            "last_error = COALESCE(?, last_error), "
            "finished_at = ?, claimed_by = NULL, claimed_until = NULL "
            "WHERE id = ? AND claimed_by = ? AND state = 'pending'",
            [
                state,
                attempts,
                now + next_in_s,
                None if error is None else error[:_ERROR_MAX],
                None if state == "pending" else now,
                row.id,
                self.owner,
            ],
        )
        return changed == 1

    def _release_claims(self) -> None:
        self.sql.execute(
            f"UPDATE {OUTBOX_TABLE} SET claimed_by = NULL, claimed_until = NULL "
            "WHERE claimed_by = ? AND state = 'pending'",
            [self.owner],
        )

    def _pending_total(self) -> int:
        labels = list(self.counters)
        if not labels:
            return 0
        return int(
            self.sql.scalar(
                f"SELECT COUNT(*) FROM {OUTBOX_TABLE} WHERE state = 'pending' "
                f"AND channel IN ({', '.join('?' * len(labels))})",
                labels,
            )
        )

    def _warn_orphans(self) -> None:
        for label, count in self.pending().items():
            if label not in self.counters and count:
                log.warning(
                    "notification outbox: %d pending rows for %s, which is not configured: "
                    "they wait until a channel of that name is configured again",
                    count,
                    label,
                )

    def _outbox_error(self, doing: str, err: SqlError) -> None:
        self.outbox_errors += 1
        log.error("notification outbox: cannot %s: %s", doing, err)

    def _count(self, channel: Channel, outcome: Outcome) -> None:
        self.counters[channel.label][outcome] += 1


__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "OUTBOX_TABLE",
    "SIGNATURE_HEADER",
    "Channel",
    "Notification",
    "Notifier",
    "NotifyConfig",
    "NotifyConfigError",
    "NotifyError",
    "OutboxEntry",
    "OutboxPayloadError",
    "PermanentDeliveryError",
    "Retry",
    "SmtpChannel",
    "SmtpConfig",
    "TransientDeliveryError",
    "WebhookChannel",
    "WebhookConfig",
    "outbox_entries",
    "parse_notify_config",
    "signature",
    "verify_signature",
]
