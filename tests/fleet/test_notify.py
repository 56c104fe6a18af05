"""Notifications against real local receivers: an HTTP server that checks the signature and
fails the first attempts, and an SMTP server (aiosmtpd) that receives the mail, plain and
over STARTTLS with a login. Then the alert service end to end, with a fake clock."""

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
from cryptography.x509.oid import NameOID

from owlgate.fleet.alerts import (
    DEFAULT_RULES,
    AlertChange,
    AlertConfig,
    alert_service,
    load_config,
)
from owlgate.fleet.api import create_app, register_stats
from owlgate.fleet.notify import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Channel,
    Notification,
    Notifier,
    NotifyConfigError,
    Retry,
    SmtpChannel,
    SmtpConfig,
    WebhookChannel,
    WebhookConfig,
    parse_notify_config,
    signature,
    verify_signature,
)
from owlgate.fleet.sql import DatabaseFault
from owlgate.fleet.store import Store
from owlgate.hil.processes import free_tcp_port
from tests.conftest import REPO
from tests.fleet.conftest import GW1, T0
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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(Received(dict(self.headers.items()), body))
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


def deliver(channel: Channel, *notifications: Notification) -> Notifier:
    async def go() -> Notifier:
        async with Notifier([channel]) as notifier:
            for notification in notifications:
                notifier.submit(notification)
            await notifier.drained()
        return notifier

    return asyncio.run(go())


def counts(notifier: Notifier, label: str = "webhook:ops") -> dict[str, int]:
    return {outcome: count for outcome, count in notifier.counters[label].items()}


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


def test_the_webhook_gives_up_after_max_attempts(receiver: Receiver) -> None:
    receiver.statuses = [503] * 10
    notifier = deliver(webhook(receiver.url, retry=Retry(max_attempts=3, initial_s=0.0)), NOTICE)
    assert counts(notifier)["failed"] == 1
    assert counts(notifier)["retried"] == 2
    assert len(receiver.requests) == 3


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


def test_backoff_doubles_up_to_its_cap() -> None:
    retry = Retry(max_attempts=6, initial_s=1.0, max_s=5.0)
    assert [retry.delay_s(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


class Blocked(Channel):
    """A channel whose first delivery never completes: the queue behind it fills up."""

    kind = "test"

    def __init__(self) -> None:
        self.name = "blocked"
        self.retry = Retry(max_attempts=1)
        self.started = asyncio.Event()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def attempt(self, notification: Notification, delivery_id: str) -> None:
        self.started.set()
        await asyncio.Event().wait()


def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    async def go() -> Notifier:
        channel = Blocked()
        async with Notifier([channel], queue_size=2) as notifier:
            notifier.submit(NOTICE)
            await channel.started.wait()
            for _ in range(5):
                notifier.submit(NOTICE)
        return notifier

    notifier = asyncio.run(go())
    assert notifier.counters["test:blocked"]["dropped"] == 3
    assert notifier.stats()["notifications_dropped"] == {"test:blocked": 3}


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
