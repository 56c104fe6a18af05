"""Alert notifications: signed webhooks and e-mail over SMTP, delivered beside the alerts.

The alert is stored before anything is sent, and sending never holds it up: the
:class:`Notifier` gives each channel a bounded queue and one delivery task, so a receiver
that is slow, down or refusing delays only its own channel. What happens to every
notification is counted per channel and outcome (``delivered``, ``retried``, ``failed``:
gave up after the last attempt, ``refused``: a permanent no, ``dropped``: the queue was
full) and logged.

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
import hashlib
import hmac
import json
import logging
import math
import os
import smtplib
import ssl
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import httpx

from owlgate.codecs.errors import OwlgateError

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Owlgate-Signature"
EVENT_HEADER: Final = "X-Owlgate-Event"
DELIVERY_HEADER: Final = "X-Owlgate-Delivery"
DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_TIMEOUT_S: Final = 10.0
DEFAULT_BACKOFF_INITIAL_S: Final = 1.0
DEFAULT_BACKOFF_MAX_S: Final = 60.0
#: Notifications a channel may have waiting; past it new ones are dropped and counted.
DEFAULT_QUEUE_SIZE: Final = 1000
OUTCOMES: Final = ("delivered", "retried", "failed", "refused", "dropped")
Outcome = Literal["delivered", "retried", "failed", "refused", "dropped"]


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
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance_s:
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


# --- the notifier ------------------------------------------------------------------------------


class Notifier:
    """Fans notifications out to ``channels``, each with its own queue and delivery task."""

    def __init__(
        self, channels: Sequence[Channel] = (), *, queue_size: int = DEFAULT_QUEUE_SIZE
    ) -> None:
        labels = [channel.label for channel in channels]
        if len(set(labels)) != len(labels):
            raise ValueError(f"channel names must be unique, got {labels}")
        self.channels = list(channels)
        self.counters: dict[str, dict[Outcome, int]] = {
            channel.label: dict.fromkeys(OUTCOMES, 0) for channel in channels
        }
        self._queues: dict[str, asyncio.Queue[tuple[Notification, str]]] = {
            channel.label: asyncio.Queue(queue_size) for channel in channels
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Condition()

    @classmethod
    def from_config(cls, config: NotifyConfig) -> Notifier:
        channels: list[Channel] = [WebhookChannel(c) for c in config.webhooks]
        channels += [SmtpChannel(c) for c in config.smtp]
        return cls(channels)

    async def __aenter__(self) -> Self:
        for channel in self.channels:
            await channel.open()
            self._tasks.append(
                asyncio.create_task(self._deliver(channel), name=f"owlgate-notify-{channel.label}")
            )
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
        for channel in self.channels:
            await channel.close()

    def submit(self, notification: Notification) -> None:
        """Queue ``notification`` on every channel; never waits."""
        delivery_id = str(uuid.uuid4())
        for channel in self.channels:
            try:
                self._queues[channel.label].put_nowait((notification, delivery_id))
            except asyncio.QueueFull:
                self._count(channel, "dropped")
                log.error(
                    "notification %s dropped on %s: %d already waiting",
                    notification.event,
                    channel.label,
                    self._queues[channel.label].qsize(),
                )

    async def drained(self) -> None:
        """Return once every queue is empty and no delivery is under way."""
        for queue in self._queues.values():
            await queue.join()

    def stats(self) -> dict[str, object]:
        """``notifications_<outcome>``: counts by channel (``webhook:<name>``, ...)."""
        return {
            f"notifications_{outcome}": {
                label: counts[outcome] for label, counts in self.counters.items()
            }
            for outcome in OUTCOMES
        }

    def _count(self, channel: Channel, outcome: Outcome) -> None:
        self.counters[channel.label][outcome] += 1

    async def _deliver(self, channel: Channel) -> None:
        queue = self._queues[channel.label]
        while True:
            notification, delivery_id = await queue.get()
            try:
                await self._send(channel, notification, delivery_id)
            except Exception:
                # A fault of the channel's own code: counted and logged, and the channel
                # goes on with the next notification rather than stopping for good.
                self._count(channel, "failed")
                log.exception("notification %s on %s failed", notification.event, channel.label)
            finally:
                queue.task_done()

    async def _send(self, channel: Channel, notification: Notification, delivery_id: str) -> None:
        retry = channel.retry
        for attempt in range(1, retry.max_attempts + 1):
            try:
                await channel.attempt(notification, delivery_id)
            except PermanentDeliveryError as err:
                self._count(channel, "refused")
                log.error(
                    "notification %s on %s refused: %s", notification.event, channel.label, err
                )
                return
            except TransientDeliveryError as err:
                if attempt == retry.max_attempts:
                    self._count(channel, "failed")
                    log.error(
                        "notification %s on %s failed after %d attempts: %s",
                        notification.event,
                        channel.label,
                        attempt,
                        err,
                    )
                    return
                self._count(channel, "retried")
                delay = retry.delay_s(attempt)
                log.warning(
                    "notification %s on %s: attempt %d failed (%s); next in %.1f s",
                    notification.event,
                    channel.label,
                    attempt,
                    err,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                self._count(channel, "delivered")
                return


__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "Channel",
    "Notification",
    "Notifier",
    "NotifyConfig",
    "NotifyConfigError",
    "NotifyError",
    "PermanentDeliveryError",
    "Retry",
    "SmtpChannel",
    "SmtpConfig",
    "TransientDeliveryError",
    "WebhookChannel",
    "WebhookConfig",
    "parse_notify_config",
    "signature",
    "verify_signature",
]
