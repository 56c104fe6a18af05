"""Notifications against real local receivers: an HTTP server that checks the signature and
fails the first attempts, and an SMTP server (aiosmtpd) that receives the mail, plain and
over STARTTLS with a login. Then the alert service end to end, with a fake clock, and the
durable outbox: restarts, two fleet processes on one database, rolled-back alert changes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from owlgate.fleet import schema
from owlgate.fleet.alerts import (
    DEFAULT_RULES,
    AlertChange,
    AlertConfig,
    AlertEvaluator,
    alert_json,
    alert_service,
    list_alerts,
    load_config,
)
from owlgate.fleet.api import create_app, register_stats
from owlgate.fleet.notify import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    OUTBOX_TABLE,
    SIGNATURE_HEADER,
    Channel,
    Notification,
    Notifier,
    NotifyConfig,
    NotifyConfigError,
    OutboxEntry,
    Retry,
    SmtpChannel,
    SmtpConfig,
    WebhookChannel,
    WebhookConfig,
    outbox_entries,
    parse_notify_config,
    signature,
    verify_signature,
)
from owlgate.fleet.sql import DatabaseFault, Sql, SqliteSql
from owlgate.fleet.store import Store
from owlgate.hil.processes import free_tcp_port
from tests.conftest import REPO
from tests.fleet.conftest import GW1, T0, StoreFactory, raw_public
from tests.fleet.test_api import ApiClient, Clock

SECRET = b"whsec-test-0123456789abcdef"
FAST = Retry(max_attempts=4, initial_s=0.01, max_s=0.05)
NOTICE = Notification(
    event="alert.opened",
    alert={
        "id": 7,
        "rule": "gateway_offline",
        "kind": "gateway_offline",
        "subject": f"gateway:{GW1}",
        "severity": "critical",
        "message": f"gateway {GW1}: nothing heard for 300 s",
        "value": 5.0,
        "unit": "heartbeat intervals without a message",
        "threshold": 2.0,
        "clear": 1.0,
        "opened_at": "2027-01-15T08:05:00Z",
    },
)


# --- a webhook receiver ------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server: answers the given statuses in turn, then 200; ``hold`` keeps
    every answer back until the test ends (a receiver that times out)."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    hold: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    #: Set when a request has arrived (before it is answered).
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(Received(dict(self.headers.items()), body))
            state.arrived.set()
            if state.hold:
                state.release.wait(30)
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/owlgate"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def webhook(url: str, *, retry: Retry = FAST, timeout_s: float = 5.0) -> WebhookChannel:
    return WebhookChannel(
        WebhookConfig(name="ops", url=url, secret=SECRET, timeout_s=timeout_s, retry=retry)
    )


@dataclass
class Delivery:
    """What one notifier run left: its counters and stats, and the outbox rows."""

    counters: dict[str, dict[str, int]]
    stats: dict[str, object]
    entries: list[OutboxEntry]


def migrated() -> SqliteSql:
    sql = SqliteSql(":memory:")
    schema.apply(sql)
    return sql


def deliver(channel: Channel, *notifications: Notification) -> Delivery:
    """Submit ``notifications`` to a notifier with ``channel`` on a fresh database and wait
    until none is pending."""
    sql = migrated()
    try:

        async def go() -> Notifier:
            async with Notifier([channel], sql=sql) as notifier:
                for notification in notifications:
                    notifier.submit(notification)
                await notifier.drained()
            return notifier

        notifier = asyncio.run(go())
        return Delivery(
            {label: {str(k): v for k, v in c.items()} for label, c in notifier.counters.items()},
            notifier.stats(),
            outbox_entries(sql),
        )
    finally:
        sql.close()


def counts(delivery: Delivery, label: str = "webhook:ops") -> dict[str, int]:
    return dict(delivery.counters[label])


def test_webhook_is_signed_and_retried_after_5xx(receiver: Receiver) -> None:
    receiver.statuses = [503, 500]
    notifier = deliver(webhook(receiver.url), NOTICE)
    assert counts(notifier) == {
        "delivered": 1,
        "retried": 2,
        "failed": 0,
        "refused": 0,
        "dropped": 0,
    }
    assert len(receiver.requests) == 3
    (entry,) = notifier.entries
    assert (entry.state, entry.attempts, entry.channel) == ("delivered", 3, "webhook:ops")
    assert entry.last_error == "the receiver answered 500"
    assert entry.delivery_id == receiver.requests[0].headers[DELIVERY_HEADER]
    assert notifier.stats["notifications_pending"] == {"webhook:ops": 0}
    for request in receiver.requests:
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers[EVENT_HEADER] == "alert.opened"
        assert verify_signature(
            SECRET, request.body, request.headers[SIGNATURE_HEADER], now=time.time()
        )
        assert json.loads(request.body) == {"event": "alert.opened", "alert": dict(NOTICE.alert)}
    # One delivery id on every attempt, so the receiver can drop repeats.
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.requests}) == 1
    stamp = int(receiver.requests[0].headers[SIGNATURE_HEADER].split(",")[0][2:])
    assert receiver.requests[0].headers[SIGNATURE_HEADER] == signature(
        SECRET, receiver.requests[0].body, stamp
    )


def test_a_signature_does_not_verify_with_another_body_secret_or_an_old_timestamp() -> None:
    body = NOTICE.body()
    header = signature(SECRET, body, 1_800_000_000)
    assert verify_signature(SECRET, body, header, now=1_800_000_010)
    assert not verify_signature(SECRET, body + b" ", header, now=1_800_000_010)
    assert not verify_signature(b"another secret", body, header, now=1_800_000_010)
    assert not verify_signature(SECRET, body, header, now=1_800_000_000 + 301)
    assert not verify_signature(SECRET, body, "v1=00", now=1_800_000_000)


def test_the_verification_recipe_in_the_docs_accepts_our_signature() -> None:
    doc = (REPO / "docs" / "fleet-alerts.md").read_text(encoding="utf-8")
    recipe = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(recipe, namespace)  # the documented code, as a receiver would paste it
    verify = namespace["verify"]
    body = NOTICE.body()
    header = signature(SECRET, body, int(time.time()))
    assert verify(SECRET, body, header) is True
    assert verify(SECRET, body.replace(b"critical", b"info"), header) is False
    assert verify(SECRET, body, signature(SECRET, body, int(time.time()) - 3600)) is False


def test_a_4xx_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400]
    notifier = deliver(webhook(receiver.url), NOTICE)
    assert counts(notifier)["refused"] == 1
    assert counts(notifier)["retried"] == 0
    assert len(receiver.requests) == 1
    (entry,) = notifier.entries
    assert (entry.state, entry.attempts) == ("refused", 1)
    assert entry.last_error == "the receiver answered 400: not tried again"
    assert entry.finished_at is not None


def test_the_webhook_gives_up_after_max_attempts(receiver: Receiver) -> None:
    receiver.statuses = [503] * 10
    notifier = deliver(webhook(receiver.url, retry=Retry(max_attempts=3, initial_s=0.0)), NOTICE)
    assert counts(notifier)["failed"] == 1
    assert counts(notifier)["retried"] == 2
    assert len(receiver.requests) == 3
    (entry,) = notifier.entries
    assert (entry.state, entry.attempts) == ("failed", 3)
    assert entry.last_error == "the receiver answered 503"


def test_a_timeout_is_retried_then_given_up(receiver: Receiver) -> None:
    receiver.hold = True
    channel = webhook(receiver.url, retry=Retry(max_attempts=2, initial_s=0.0), timeout_s=0.2)
    notifier = deliver(channel, NOTICE)
    assert counts(notifier)["failed"] == 1
    assert counts(notifier)["retried"] == 1
    assert len(receiver.requests) == 2


def test_an_unreachable_receiver_counts_as_failed() -> None:
    url = f"http://127.0.0.1:{free_tcp_port()}/hook"
    notifier = deliver(webhook(url, retry=Retry(max_attempts=2, initial_s=0.0)), NOTICE)
    assert counts(notifier)["failed"] == 1
    (entry,) = notifier.entries
    assert entry.state == "failed"
    assert entry.last_error is not None
    assert entry.last_error.startswith("cannot reach the receiver")


def test_backoff_doubles_up_to_its_cap() -> None:
    retry = Retry(max_attempts=6, initial_s=1.0, max_s=5.0)
    assert [retry.delay_s(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


class Gated(Channel):
    """A channel that delivers only once ``gate`` is open, recording the delivery ids."""

    kind = "test"

    def __init__(self) -> None:
        self.name = "gated"
        self.retry = Retry(max_attempts=1)
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.delivered: list[str] = []

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing held."""

    async def attempt(self, notification: Notification, delivery_id: str) -> None:
        self.started.set()
        await self.gate.wait()
        self.delivered.append(delivery_id)


def test_a_mass_outage_keeps_every_notification_and_shows_the_depth() -> None:
    sql = migrated()

    async def go() -> tuple[dict[str, object], dict[str, object], list[str], list[str]]:
        channel = Gated()
        async with Notifier([channel], sql=sql) as notifier:
            ids = [notifier.submit(NOTICE) for _ in range(1200)]
            await channel.started.wait()
            during = notifier.stats()
            channel.gate.set()
            await notifier.drained()
            return during, notifier.stats(), ids, channel.delivered

    try:
        during, after, ids, delivered = asyncio.run(go())
        assert outbox_entries(sql, states=["pending"]) == []
    finally:
        sql.close()
    # Past the 1000 an in-memory queue held: nothing dropped, the depth is the gauge.
    assert during["notifications_pending"] == {"test:gated": 1200}
    assert during["notifications_dropped"] == {"test:gated": 0}
    assert after["notifications_pending"] == {"test:gated": 0}
    assert after["notifications_delivered"] == {"test:gated": 1200}
    assert delivered == ids  # in the order they were written


class Faulty(Channel):
    """A channel whose code raises something that is not a delivery error."""

    kind = "test"

    def __init__(self) -> None:
        self.name = "faulty"
        self.retry = Retry(max_attempts=3, initial_s=0.0)

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing held."""

    async def attempt(self, notification: Notification, delivery_id: str) -> None:
        raise KeyError(notification.event)


def test_a_fault_in_a_channel_fails_the_row_with_the_error() -> None:
    delivery = deliver(Faulty(), NOTICE)
    assert counts(delivery, "test:faulty")["failed"] == 1
    (entry,) = delivery.entries
    assert (entry.state, entry.attempts) == ("failed", 1)
    assert entry.last_error == "KeyError: 'alert.opened'"


def test_a_damaged_row_is_dropped_and_the_next_one_delivered(receiver: Receiver) -> None:
    sql = migrated()
    channel = webhook(receiver.url)
    sql.execute(
        f"INSERT INTO {OUTBOX_TABLE} (delivery_id, channel, event, payload, state, attempts, "
        "created_at, next_at) VALUES ('d-1', 'webhook:ops', 'alert.opened', '{not json', "
        "'pending', 0, 0, 0)"
    )

    async def go() -> dict[str, object]:
        async with Notifier([channel], sql=sql) as notifier:
            notifier.submit(NOTICE)
            await notifier.drained()
            return notifier.stats()

    try:
        stats = asyncio.run(go())
        damaged, good = outbox_entries(sql)
    finally:
        sql.close()
    assert stats["notifications_dropped"] == {"webhook:ops": 1}
    assert stats["notifications_delivered"] == {"webhook:ops": 1}
    assert damaged.state == "failed"
    assert damaged.last_error is not None
    assert damaged.last_error.startswith("the stored payload is not JSON")
    assert good.state == "delivered"
    assert [json.loads(r.body) for r in receiver.requests] == [
        {"event": "alert.opened", "alert": dict(NOTICE.alert)}
    ]


def test_delivered_rows_are_pruned_after_the_retention(receiver: Receiver) -> None:
    sql = migrated()
    clock = Clock(T0)

    async def go() -> list[int]:
        async with Notifier([webhook(receiver.url)], sql=sql, clock=clock) as notifier:
            notifier.submit(NOTICE)
            await notifier.drained()
            # A refused one, kept longer for the operators to look into.
            receiver.statuses = [410]
            notifier.submit(NOTICE)
            await notifier.drained()
            clock.now = T0 + 7 * 86_400 - 1
            kept = notifier.prune()
            clock.now = T0 + 7 * 86_400 + 1
            week = notifier.prune()
            clock.now = T0 + 30 * 86_400 + 1
            month = notifier.prune()
            return [kept, week, month]

    try:
        assert asyncio.run(go()) == [0, 1, 1]
        assert outbox_entries(sql) == []
    finally:
        sql.close()


# --- configuration -----------------------------------------------------------------------------


def test_secrets_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text("from-a-file\n", encoding="utf-8")
    password_file = tmp_path / "smtp.password"
    password_file.write_text("hunter2\n", encoding="utf-8")
    config = parse_notify_config(
        {
            "webhook": [
                {"name": "a", "url": "https://ops.example/hook", "secret_env": "HOOK_SECRET"},
                {"name": "b", "url": "https://ops.example/hook", "secret_file": str(secret_file)},
            ],
            "smtp": [
                {
                    "name": "mail",
                    "host": "smtp.example",
                    "sender": "fleet@example.org",
                    "recipients": ["oncall@example.org"],
                    "starttls": True,
                    "username": "fleet",
                    "password_file": str(password_file),
                }
            ],
        },
        "alerts.toml",
        environ={"HOOK_SECRET": "from-the-env"},
    )
    assert [w.secret for w in config.webhooks] == [b"from-the-env", b"from-a-file"]
    assert config.smtp[0].password == "hunter2"
    assert config.smtp[0].port == 587
    # Never shown.
    assert "from-the-env" not in repr(config)
    assert "hunter2" not in repr(config)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"webhook": [{"name": "a", "url": "https://x"}]}, "needs secret_env or secret_file"),
        (
            {"webhook": [{"name": "a", "url": "https://x", "secret_env": "UNSET_VAR"}]},
            "environment variable UNSET_VAR is not set",
        ),
        (
            {"webhook": [{"name": "a", "url": "ftp://x", "secret_env": "S"}]},
            "notify.webhook[0].url",
        ),
        (
            {
                "smtp": [
                    {
                        "name": "m",
                        "host": "h",
                        "sender": "a@b",
                        "recipients": ["c@d"],
                        "username": "u",
                        "password_env": "S",
                    }
                ]
            },
            "password in plaintext; set starttls = true",
        ),
        (
            {"smtp": [{"name": "m", "host": "h", "sender": "a@b", "recipients": []}]},
            "recipients must be a non-empty list",
        ),
        ({"pager": []}, "unknown key(s) ['pager']"),
    ],
)
def test_bad_notify_config_is_refused_naming_the_key(entry: dict[str, Any], expected: str) -> None:
    with pytest.raises(NotifyConfigError) as caught:
        parse_notify_config(entry, "alerts.toml", environ={"S": "x"})
    assert "alerts.toml" in caught.value.message
    assert expected in caught.value.message


# --- an SMTP sink ------------------------------------------------------------------------------


@dataclass
class Sink:
    port: int
    envelopes: list[Envelope] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        # handled=False: aiosmtpd answers the refusal (535) itself.
        return AuthResult(success=data.password == b"hunter2", handled=False)


@pytest.fixture
def smtp_sink() -> Iterator[Sink]:
    sink = Sink(free_tcp_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@dataclass
class Tls:
    cert_file: Path
    context: ssl.SSLContext


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    """A self-signed certificate for 127.0.0.1, and the server's context with it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "owlgate test smtp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_path / "smtp-cert.pem"
    key_file = tmp_path / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return Tls(cert_file, context)


def smtp_channel(port: int, **extra: Any) -> SmtpChannel:
    return SmtpChannel(
        SmtpConfig(
            name="oncall",
            host="127.0.0.1",
            port=port,
            sender="fleet@owlgate.example",
            recipients=("oncall@city.example", "ops@city.example"),
            retry=Retry(max_attempts=2, initial_s=0.0),
            **extra,
        )
    )


def test_mail_reaches_the_smtp_sink(smtp_sink: Sink) -> None:
    notifier = deliver(smtp_channel(smtp_sink.port), NOTICE)
    assert counts(notifier, "smtp:oncall")["delivered"] == 1
    (envelope,) = smtp_sink.envelopes
    assert envelope.mail_from == "fleet@owlgate.example"
    assert envelope.rcpt_tos == ["oncall@city.example", "ops@city.example"]
    assert isinstance(envelope.content, bytes)
    mail = message_from_bytes(envelope.content)
    assert mail["Subject"] == f"[owlgate] CRITICAL opened: gateway_offline gateway:{GW1}"
    assert mail["X-Owlgate-Event"] == "alert.opened"
    text = mail.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert f"gateway {GW1}: nothing heard for 300 s" in text.decode()


def test_starttls_configured_but_not_offered_is_refused_not_sent_in_plaintext(
    smtp_sink: Sink, tls: Tls
) -> None:
    notifier = deliver(smtp_channel(smtp_sink.port, starttls=True, ca_file=tls.cert_file), NOTICE)
    assert counts(notifier, "smtp:oncall")["refused"] == 1
    assert smtp_sink.envelopes == []


def test_mail_over_starttls_with_a_login(tls: Tls) -> None:
    sink = Sink(free_tcp_port())
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=sink.port,
        server_hostname="127.0.0.1",
        tls_context=tls.context,
        require_starttls=True,
        authenticator=sink.authenticate,
        auth_required=True,
    )
    controller.start()
    try:
        right = smtp_channel(
            sink.port, starttls=True, ca_file=tls.cert_file, username="fleet", password="hunter2"
        )
        assert counts(deliver(right, NOTICE), "smtp:oncall")["delivered"] == 1
        wrong = smtp_channel(
            sink.port, starttls=True, ca_file=tls.cert_file, username="fleet", password="nope"
        )
        assert counts(deliver(wrong, NOTICE), "smtp:oncall")["refused"] == 1
    finally:
        controller.stop()
    assert len(sink.envelopes) == 1
    # smtplib tries each mechanism the server offers (PLAIN, then LOGIN) before giving up;
    # the refusal is final, so there is no second connection.
    assert sink.logins == [(b"fleet", b"hunter2"), (b"fleet", b"nope"), (b"fleet", b"nope")]


# --- the alert service -------------------------------------------------------------------------


def test_the_service_notifies_opened_and_resolved_alerts(
    registry: Store, receiver: Receiver, smtp_sink: Sink, tmp_path: Path
) -> None:
    receiver.statuses = [502]
    config_file = tmp_path / "alerts.toml"
    secret_file = tmp_path / "hook.secret"
    secret_file.write_bytes(SECRET + b"\n")
    config_file.write_text(
        f"""
interval_s = 3600

[[notify.webhook]]
name = "ops"
url = "{receiver.url}"
secret_file = "{secret_file}"
backoff_initial_s = 0.01

[[notify.smtp]]
name = "oncall"
host = "127.0.0.1"
port = {smtp_sink.port}
sender = "fleet@owlgate.example"
recipients = ["oncall@city.example"]

[[notify.smtp]]
name = "broken"
host = "127.0.0.1"
port = {free_tcp_port()}
sender = "fleet@owlgate.example"
recipients = ["oncall@city.example"]
max_attempts = 2
backoff_initial_s = 0
""",
        encoding="utf-8",
    )
    config = load_config(config_file)
    assert config.rules == DEFAULT_RULES
    clock = Clock(T0 + 1)
    registry.gateway_heard(GW1, T0)

    async def go() -> dict[str, object]:
        async with alert_service(registry, config, clock=clock) as service:
            await service.wait_evaluations(1)
            assert service.evaluator.counters.opened == 0
            clock.now = T0 + 300
            (opened,) = await service.evaluate_now()
            registry.gateway_heard(GW1, T0 + 301)
            clock.now = T0 + 302
            (resolved,) = await service.evaluate_now()
            await service.notifier.drained()
            assert opened.alert.id == resolved.alert.id
            return service.stats()

    stats = asyncio.run(go())
    events = [json.loads(r.body)["event"] for r in receiver.requests]
    assert events == ["alert.opened", "alert.opened", "alert.resolved"]  # one 502, retried
    for request in receiver.requests:
        assert verify_signature(
            SECRET, request.body, request.headers[SIGNATURE_HEADER], now=time.time()
        )
    assert json.loads(receiver.requests[-1].body)["alert"]["state"] == "resolved"
    subjects = [message_from_bytes(e.content)["Subject"] for e in smtp_sink.envelopes]  # type: ignore[arg-type]
    assert subjects == [
        f"[owlgate] CRITICAL opened: gateway_offline gateway:{GW1}",
        f"[owlgate] CRITICAL resolved: gateway_offline gateway:{GW1}",
    ]
    assert stats["opened"] == 1
    assert stats["resolved"] == 1
    assert stats["notifications_delivered"] == {
        "webhook:ops": 2,
        "smtp:oncall": 2,
        "smtp:broken": 0,
    }
    assert stats["notifications_retried"] == {
        "webhook:ops": 1,
        "smtp:oncall": 0,
        "smtp:broken": 2,
    }
    # The channel that cannot deliver lost neither alert nor the other channels' mail.
    assert stats["notifications_failed"] == {"webhook:ops": 0, "smtp:oncall": 0, "smtp:broken": 2}


def test_the_service_counters_show_in_the_stats_route(registry: Store) -> None:
    app = create_app(registry)
    register_stats(app, alert_service(registry, AlertConfig()))
    body = ApiClient(app, role="operator").get("/api/v1/stats").json()
    assert body["alerts"]["evaluations"] == 0
    assert body["alerts"]["evaluation_errors"] == 0
    assert body["alerts"]["notifications_pending"] == {}
    assert body["alerts"]["notification_outbox_errors"] == 0


def test_a_failed_evaluation_is_counted_and_the_next_one_runs(registry: Store) -> None:
    service = alert_service(registry, AlertConfig(interval_s=0.01))
    real = service.evaluator.evaluate
    calls: list[float] = []

    def flaky(now: float) -> list[AlertChange]:
        calls.append(now)
        if len(calls) == 1:
            raise DatabaseFault("database is locked")
        return real(now)

    service.evaluator.evaluate = flaky  # type: ignore[method-assign]

    async def go() -> None:
        async with service:
            await service.wait_evaluations(1)

    asyncio.run(go())
    assert service.evaluation_errors == 1
    assert len(calls) >= 2
    assert service.stats()["evaluation_errors"] == 1


# --- durability: the outbox table, restarts, several fleet processes -----------------------------


def hook_config(receiver: Receiver, retry: Retry = FAST) -> AlertConfig:
    hook = WebhookConfig(name="ops", url=receiver.url, secret=SECRET, retry=retry)
    return AlertConfig(interval_s=3600, notify=NotifyConfig(webhooks=(hook,)))


def with_gateway(store: Store) -> Store:
    store.create_gateway(
        GW1,
        name="gw 1",
        sign_public_key=raw_public(Ed25519PrivateKey.generate()),
        seal_public_key=raw_public(X25519PrivateKey.generate()),
        created=T0,
    )
    store.gateway_heard(GW1, T0)
    return store


def test_a_retry_waiting_at_a_stop_is_sent_by_the_next_service(
    store_factory: StoreFactory, receiver: Receiver
) -> None:
    receiver.statuses = [503]
    config = hook_config(receiver, Retry(max_attempts=3, initial_s=60.0, max_s=60.0))
    first = with_gateway(store_factory())
    # The notifiers' clocks stand still: the retry is due 60 s after the failure, which the
    # first service never reaches and the second one starts past.
    sent_at = Clock(T0)

    async def run_first() -> None:
        notifier = Notifier.from_config(config.notify, sql=first.sql, clock=sent_at)
        async with alert_service(first, config, notifier=notifier, clock=Clock(T0 + 300)) as svc:
            await svc.wait_evaluations(1)
            await notifier.wait_until(lambda: notifier.counters["webhook:ops"]["retried"] == 1)

    asyncio.run(run_first())
    second = store_factory()
    (waiting,) = outbox_entries(second.sql)
    assert (waiting.state, waiting.attempts, waiting.next_at) == ("pending", 1, T0 + 60)
    assert waiting.last_error == "the receiver answered 503"
    assert waiting.claimed_by is None

    async def run_second() -> dict[str, object]:
        notifier = Notifier.from_config(config.notify, sql=second.sql, clock=Clock(T0 + 61))
        async with alert_service(second, config, notifier=notifier, clock=Clock(T0 + 301)) as svc:
            await svc.wait_evaluations(1)
            await notifier.drained()
            return svc.stats()

    stats = asyncio.run(run_second())
    assert stats["opened"] == 0  # the alert was already open: nothing new to send
    assert stats["notifications_delivered"] == {"webhook:ops": 1}
    assert stats["notifications_pending"] == {"webhook:ops": 0}
    (done,) = outbox_entries(second.sql)
    assert (done.id, done.state, done.attempts) == (waiting.id, "delivered", 2)
    assert [r.headers[DELIVERY_HEADER] for r in receiver.requests] == [waiting.delivery_id] * 2
    assert [json.loads(r.body)["event"] for r in receiver.requests] == ["alert.opened"] * 2


def test_a_delivery_cut_short_by_a_stop_is_sent_by_the_next_service(
    store_factory: StoreFactory, receiver: Receiver
) -> None:
    receiver.hold = True
    first = store_factory()

    async def run_first() -> str:
        async with Notifier([webhook(receiver.url)], sql=first.sql) as notifier:
            delivery_id = notifier.submit(NOTICE)
            await asyncio.to_thread(receiver.arrived.wait, 30)
        return delivery_id

    delivery_id = asyncio.run(run_first())
    receiver.hold = False
    second = store_factory()
    (cut,) = outbox_entries(second.sql)
    # The stop gave the row back: no claim for the next service to wait out.
    assert (cut.state, cut.attempts, cut.claimed_by) == ("pending", 0, None)

    async def run_second() -> int:
        async with Notifier([webhook(receiver.url)], sql=second.sql) as notifier:
            await notifier.drained()
            return notifier.counters["webhook:ops"]["delivered"]

    assert asyncio.run(run_second()) == 1
    assert [r.headers[DELIVERY_HEADER] for r in receiver.requests] == [delivery_id] * 2
    (done,) = outbox_entries(second.sql)
    assert (done.state, done.attempts) == ("delivered", 1)


def test_two_services_on_one_database_send_each_notification_once(
    store_factory: StoreFactory, receiver: Receiver
) -> None:
    one, two = store_factory(), store_factory()
    receiver.statuses = [503, 503, 503]  # a few retries in the mix

    async def go() -> tuple[list[str], int, int]:
        # Short polls: each finds the rows the other one wrote, and they race for them.
        a = Notifier([webhook(receiver.url)], sql=one.sql, owner="fleet-a", poll_interval_s=0.01)
        b = Notifier([webhook(receiver.url)], sql=two.sql, owner="fleet-b", poll_interval_s=0.01)
        async with a, b:
            ids = [(a if n % 2 else b).submit(NOTICE) for n in range(30)]
            await a.drained()
            await b.drained()
        return ids, a.counters["webhook:ops"]["delivered"], b.counters["webhook:ops"]["delivered"]

    ids, by_a, by_b = asyncio.run(go())
    delivered = [r.headers[DELIVERY_HEADER] for r in receiver.requests]
    assert len(delivered) == 30 + 3
    assert sorted(set(delivered)) == sorted(ids)
    assert by_a + by_b == 30
    entries = outbox_entries(one.sql)
    assert [e.state for e in entries] == ["delivered"] * 30
    assert sum(e.attempts for e in entries) == 33


def test_an_alert_change_rolled_back_leaves_no_notification(
    registry: Store, receiver: Receiver
) -> None:
    config = hook_config(receiver)
    notifier = Notifier.from_config(config.notify, sql=registry.sql)
    evaluator = AlertEvaluator(registry, config, notifier=notifier)
    registry.gateway_heard(GW1, T0)
    real = notifier.enqueue

    def then_fail(db: Sql, notification: Notification) -> str:
        real(db, notification)
        raise DatabaseFault("disk I/O error")

    notifier.enqueue = then_fail  # type: ignore[method-assign]
    with pytest.raises(DatabaseFault):
        evaluator.evaluate(T0 + 300)
    assert list_alerts(registry).items == []
    assert outbox_entries(registry.sql) == []
    notifier.enqueue = real  # type: ignore[method-assign]
    (change,) = evaluator.evaluate(T0 + 300)
    (entry,) = outbox_entries(registry.sql)
    assert (entry.event, entry.state, entry.channel) == ("alert.opened", "pending", "webhook:ops")
    payload = registry.sql.scalar(f"SELECT payload FROM {OUTBOX_TABLE} WHERE id = ?", [entry.id])
    assert json.loads(payload)["alert"] == alert_json(change.alert)
    # An evaluation that changes nothing writes nothing.
    assert evaluator.evaluate(T0 + 310) == []
    assert len(outbox_entries(registry.sql)) == 1


def test_a_row_claimed_by_a_process_that_died_is_sent_once_its_claim_runs_out(
    store: Store, receiver: Receiver
) -> None:
    clock = Clock(T0)
    dead = Notifier([webhook(receiver.url)], sql=store.sql, clock=clock, claim_s=300)
    orphan = dead.submit(NOTICE)
    # What a process leaves behind when it dies in the middle of an attempt.
    store.sql.execute(
        f"UPDATE {OUTBOX_TABLE} SET claimed_by = 'fleet-dead', claimed_until = ?",
        [T0 + 300],
    )
    clock.now = T0 + 10

    async def go() -> str:
        live = Notifier([webhook(receiver.url)], sql=store.sql, clock=clock, owner="fleet-live")
        async with live:
            later = live.submit(NOTICE)
            await live.wait_until(lambda: live.counters["webhook:ops"]["delivered"] == 1)
            # Still claimed: only the row behind it went out.
            assert [r.headers[DELIVERY_HEADER] for r in receiver.requests] == [later]
            clock.now = T0 + 301
            live.wake()
            await live.drained()
        return later

    later = asyncio.run(go())
    assert [r.headers[DELIVERY_HEADER] for r in receiver.requests] == [later, orphan]
    assert [e.state for e in outbox_entries(store.sql)] == ["delivered", "delivered"]
