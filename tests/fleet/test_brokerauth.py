"""Broker credentials and topic ACLs: issued through the API and the CLI, enforced by a real
Mosquitto (with the files the fleet writes) and by the embedded broker (with the same hashes).

The broker tests run each scenario against both brokers. What a broker drops silently (a
QoS 1 publish outside the ACL under MQTT 3.1.1, a delivery outside it) is observed without
waiting for nothing: the forbidden message goes first, then an allowed marker on the same
connection and to the same subscriber; brokers keep the order of one client's messages
(MQTT 3.1.1 section 4.6), so the marker arriving first proves the forbidden one was dropped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import stat
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from owlgate.fleet import schema
from owlgate.fleet.api import create_app
from owlgate.fleet.audit import events
from owlgate.fleet.broker import EmbeddedBroker
from owlgate.fleet.brokerauth import (
    FLEET_ACCOUNT,
    BrokerAuthError,
    BrokerPolicy,
    PolicyHolder,
    acl_file_text,
    ephemeral_fleet_account,
    filter_within,
    hash_password,
    issue_fleet_credentials,
    issue_gateway_credentials,
    load_policy,
    password_file_text,
    revoke_credentials,
    topic_matches,
    verify_password,
    write_mosquitto_files,
)
from owlgate.fleet.cli_broker import broker_command
from owlgate.fleet.sql import SqliteSql
from owlgate.fleet.store import ConflictError, InvalidError, NotFoundError, Store
from owlgate.fleet.vault import KeyVault
from owlgate.hil.processes import MosquittoProcess
from tests.conftest import require_binary
from tests.fleet.conftest import GW1, GW2, T0, raw_public
from tests.fleet.test_api import ApiClient
from tests.mqtt_servers import TcpProxy, ThreadedEmbeddedBroker, mosquitto_binary

TIMEOUT_S = 10.0
#: CONNACK return code 5 "not authorized" (MQTT 3.1.1 section 3.2.2.3), which paho reports
#: as the MQTT 5 reason code 0x87 (MQTT 5.0 section 3.2.2.2).
NOT_AUTHORIZED = 0x87
SUBACK_FAILURE = 0x80  # MQTT 3.1.1 section 3.9.3
NOT_AUTHORIZED_V5 = 0x87  # PUBACK reason code, MQTT 5.0 section 3.4.2.1


def topic(gateway: str, kind: str) -> str:
    return f"owlgate/v1/gw/{gateway}/{kind}"


# --- hashes ---------------------------------------------------------------------------------------


def test_a_hash_is_mosquittos_pbkdf2_sha512_form() -> None:
    salt = bytes(range(12))
    encoded = hash_password("s3cret", salt=salt, iterations=101)
    expected = hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101, 64)
    assert encoded == (
        f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(expected).decode()}"
    )
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3cret ", encoded)


def test_a_hash_from_mosquitto_passwd_verifies(tmp_path: Path) -> None:
    tool = require_binary("mosquitto_passwd", "install Mosquitto (Debian package mosquitto)")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(path), "gw", "pa:ss word"], check=True)
    encoded = path.read_text().strip().split(":", 1)[1]
    assert encoded.startswith("$7$")
    assert verify_password("pa:ss word", encoded)
    assert not verify_password("pa:ss wore", encoded)


@pytest.mark.parametrize(
    "encoded",
    ["", "plain", "$6$abc$def", "$7$x$AAAA$AAAA", "$7$101$!!$AAAA", "$7$0$AAAA$AAAA", "$7$101$$"],
)
def test_a_malformed_hash_matches_nothing(encoded: str) -> None:
    assert not verify_password("", encoded)
    assert not verify_password("anything", encoded)


@given(st.text(max_size=40), st.text(max_size=40))
def test_a_hash_verifies_its_password_only(password: str, other: str) -> None:
    encoded = hash_password(password)
    assert verify_password(password, encoded)
    assert verify_password(other, encoded) == (other == password)


# --- topic matching -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("owlgate/v1/gw/#", "owlgate/v1/gw/aa/telemetry", True),
        ("owlgate/v1/gw/#", "owlgate/v1/gw", True),
        ("owlgate/v1/gw/+/keys", "owlgate/v1/gw/aa/keys", True),
        ("owlgate/v1/gw/+/keys", "owlgate/v1/gw/aa/keys/x", False),
        ("owlgate/v1/gw/aa/join", "owlgate/v1/gw/aa/join/accept", False),
        ("owlgate/v1/gw/aa/join", "owlgate/v1/gw/ab/join", False),
        ("#", "$SYS/broker/uptime", False),
        ("+/broker", "$SYS/broker", False),
    ],
)
def test_topic_names_match_filters_as_mqtt_says(pattern: str, name: str, matches: bool) -> None:
    assert topic_matches(pattern, name) is matches


@pytest.mark.parametrize(
    ("subscription", "pattern", "within"),
    [
        ("owlgate/v1/gw/aa/keys", "owlgate/v1/gw/aa/keys", True),
        ("owlgate/v1/gw/+/keys", "owlgate/v1/gw/aa/keys", False),
        ("owlgate/v1/gw/#", "owlgate/v1/gw/aa/keys", False),
        ("owlgate/v1/gw/+/telemetry", "owlgate/v1/gw/#", True),
        ("owlgate/v1/gw/#", "owlgate/v1/gw/#", True),
        ("owlgate/v1/#", "owlgate/v1/gw/#", False),
        ("owlgate/v1/gw/+/keys", "owlgate/v1/gw/+/keys", True),
        ("owlgate/v1/gw/aa", "owlgate/v1/gw/aa/keys", False),
    ],
)
def test_a_subscription_is_allowed_only_within_an_acl_filter(
    subscription: str, pattern: str, within: bool
) -> None:
    assert filter_within(subscription, pattern) is within


# --- issuing, rotating, revoking ------------------------------------------------------------------


def test_issue_rotate_revoke_keep_only_hashes_and_audit(registry: Store) -> None:
    sql = registry.sql
    issued = issue_gateway_credentials(sql, GW1.upper(), actor="tester", at=T0)
    assert issued.username == GW1
    assert issued.kind == "gateway"
    assert not issued.rotated
    assert issued.password not in repr(issued)
    stored = sql.query_tuples("SELECT * FROM broker_credentials")
    assert issued.password not in repr(stored)
    policy = load_policy(sql)
    assert policy.authenticate(GW1, issued.password)
    assert not policy.authenticate(GW1, issued.password + "x")
    assert not policy.authenticate(GW2, issued.password)

    with pytest.raises(ConflictError, match="rotate"):
        issue_gateway_credentials(sql, GW1, actor="tester")
    with pytest.raises(NotFoundError, match="register it"):
        issue_gateway_credentials(sql, "00000000000000ff", actor="tester")
    with pytest.raises(NotFoundError, match="issue them first"):
        issue_gateway_credentials(sql, GW2, actor="tester", rotate=True)

    rotated = issue_gateway_credentials(sql, GW1, actor="tester", rotate=True, at=T0 + 1)
    assert rotated.rotated
    assert rotated.password != issued.password
    policy = load_policy(sql)
    assert policy.authenticate(GW1, rotated.password)
    assert not policy.authenticate(GW1, issued.password)

    revoke_credentials(sql, GW1, actor="tester", at=T0 + 2)
    assert GW1 not in load_policy(sql).accounts
    with pytest.raises(NotFoundError):
        revoke_credentials(sql, GW1, actor="tester")
    again = issue_gateway_credentials(sql, GW1, actor="tester", at=T0 + 3)
    assert load_policy(sql).authenticate(GW1, again.password)

    logged = events(sql, action="broker.*").items
    assert [(e.action, e.target, e.details) for e in logged] == [
        ("broker.credentials_issued", f"gateway:{GW1}", {"rotation": False}),
        ("broker.credentials_issued", f"gateway:{GW1}", {"rotation": True}),
        ("broker.credentials_revoked", f"gateway:{GW1}", {}),
        ("broker.credentials_issued", f"gateway:{GW1}", {"rotation": False}),
    ]
    for secret in (issued.password, rotated.password, again.password):
        assert secret not in repr(sql.query_tuples("SELECT * FROM audit_log"))


def test_a_service_account_cannot_take_a_gateway_name(registry: Store) -> None:
    with pytest.raises(InvalidError, match="gateway id"):
        issue_fleet_credentials(registry.sql, actor="tester", username=GW1)
    with pytest.raises(InvalidError, match="letters, digits"):
        issue_fleet_credentials(registry.sql, actor="tester", username="has space")


def test_the_migration_runs_on_a_bare_database() -> None:
    sql = SqliteSql(":memory:")
    assert "0400_broker_credentials" in schema.apply(sql)
    assert "broker_credentials" in sql.table_names()
    assert load_policy(sql).accounts == {}


# --- Mosquitto files ------------------------------------------------------------------------------


def test_the_files_hold_every_active_account_with_its_own_topics(
    registry: Store, tmp_path: Path
) -> None:
    sql = registry.sql
    one = issue_gateway_credentials(sql, GW1, actor="tester")
    issue_gateway_credentials(sql, GW2, actor="tester")
    issue_fleet_credentials(sql, actor="tester")
    revoke_credentials(sql, GW2, actor="tester")
    files = write_mosquitto_files(load_policy(sql), tmp_path / "broker")

    assert stat.S_IMODE(files.password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.acl_file.stat().st_mode) == 0o640
    users = dict(line.split(":", 1) for line in files.password_file.read_text().splitlines())
    assert sorted(users) == [GW1, FLEET_ACCOUNT]
    assert verify_password(one.password, users[GW1])
    assert one.password not in files.password_file.read_text()

    acl = files.acl_file.read_text()
    gw1_block = acl.split(f"user {GW1}\n")[1].split("\n\n")[0].splitlines()
    assert gw1_block == [
        f"topic write {topic(GW1, 'telemetry')}",
        f"topic write {topic(GW1, 'health')}",
        f"topic write {topic(GW1, 'state')}",
        f"topic write {topic(GW1, 'join')}",
        f"topic write {topic(GW1, 'config/status')}",
        f"topic read {topic(GW1, 'join/accept')}",
        f"topic read {topic(GW1, 'keys')}",
        f"topic read {topic(GW1, 'config')}",
        f"topic read {topic(GW1, 'down')}",
    ]
    assert GW2 not in acl
    fleet_block = acl.split(f"user {FLEET_ACCOUNT}\n")[1].strip().splitlines()
    assert fleet_block[0] == "topic read owlgate/v1/gw/#"
    assert "topic write owlgate/v1/gw/+/keys" in fleet_block
    # Nothing before the first user line: such lines would apply to anonymous clients.
    assert [line for line in acl.split("user ")[0].splitlines() if line.startswith("topic")] == []
    config = files.config_file.read_text()
    assert "allow_anonymous false" in config
    assert f"password_file {files.password_file.resolve()}" in config
    assert f"acl_file {files.acl_file.resolve()}" in config


def test_rewriting_replaces_the_files_whole(registry: Store, tmp_path: Path) -> None:
    sql = registry.sql
    issue_gateway_credentials(sql, GW1, actor="tester")
    folder = tmp_path / "broker"
    write_mosquitto_files(load_policy(sql), folder)
    revoke_credentials(sql, GW1, actor="tester")
    files = write_mosquitto_files(load_policy(sql), folder)
    assert files.password_file.read_text() == ""
    assert GW1 not in files.acl_file.read_text()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [files.password_file.name, files.acl_file.name, files.config_file.name]
    )


def test_an_unwritable_folder_is_a_typed_error(registry: Store, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BrokerAuthError, match="cannot write"):
        write_mosquitto_files(load_policy(registry.sql), blocker / "sub")


# --- the API --------------------------------------------------------------------------------------


@pytest.fixture
def api(registry: Store) -> tuple[ApiClient, list[str]]:
    changes: list[str] = []
    app = create_app(registry, on_broker_change=lambda: changes.append("changed"))
    return ApiClient(app, role="admin"), changes


def test_an_admin_issues_rotates_and_revokes_through_the_api(
    api: tuple[ApiClient, list[str]], registry: Store
) -> None:
    client, changes = api
    base = f"/api/v1/broker/gateways/{GW1}/credentials"
    issued = client.post(base)
    assert issued.status_code == 201, issued.text
    body = issued.json()
    assert body["username"] == GW1
    assert body["rotated"] is False
    assert load_policy(registry.sql).authenticate(GW1, body["password"])

    assert client.post(base).status_code == 409
    rotated = client.post(f"{base}/rotate")
    assert rotated.status_code == 200
    assert rotated.json()["password"] != body["password"]
    assert not load_policy(registry.sql).authenticate(GW1, body["password"])

    listed = client.get("/api/v1/broker/credentials")
    assert listed.status_code == 200
    assert listed.json() == [
        {
            "username": GW1,
            "kind": "gateway",
            "active": True,
            "issued_at": listed.json()[0]["issued_at"],
            "revoked_at": None,
        }
    ]
    assert rotated.json()["password"] not in listed.text

    assert client.delete(base).status_code == 204
    assert client.delete(base).status_code == 404
    assert client.post("/api/v1/broker/gateways/00000000000000ff/credentials").status_code == 404
    assert client.post("/api/v1/broker/gateways/not-hex/credentials").status_code == 422
    fleet = client.post("/api/v1/broker/fleet-account/credentials")
    assert fleet.status_code == 200
    assert fleet.json()["username"] == FLEET_ACCOUNT
    assert changes == ["changed"] * 4
    actions = [e.action for e in events(registry.sql, action="broker.*").items]
    assert actions == [
        "broker.credentials_issued",
        "broker.credentials_issued",
        "broker.credentials_revoked",
        "broker.credentials_issued",
    ]


@pytest.mark.parametrize("role", ["operator", "technician", None])
def test_only_an_admin_may_touch_broker_credentials(
    api: tuple[ApiClient, list[str]], registry: Store, role: Any
) -> None:
    client = api[0].as_role(role)
    expected = 401 if role is None else 403
    base = f"/api/v1/broker/gateways/{GW1}/credentials"
    assert client.post(base).status_code == expected
    assert client.post(f"{base}/rotate").status_code == expected
    assert client.delete(base).status_code == expected
    assert client.get("/api/v1/broker/credentials").status_code == expected
    assert client.post("/api/v1/broker/fleet-account/credentials").status_code == expected
    assert load_policy(registry.sql).accounts == {}


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def fleet_db(tmp_path: Path, vault: KeyVault) -> Path:
    """A database file with the two gateways GW1 and GW2."""
    path = tmp_path / "fleet.sqlite3"
    with Store(path, vault=vault) as store:
        for gateway in (GW1, GW2):
            store.create_gateway(
                gateway,
                name=gateway,
                sign_public_key=raw_public(Ed25519PrivateKey.generate()),
                seal_public_key=raw_public(X25519PrivateKey.generate()),
                created=T0,
            )
    return path


def test_the_cli_issues_to_a_private_file_and_writes_the_broker_files(
    fleet_db: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / "gw1.password"
    done = runner.invoke(
        broker_command, ["credentials", GW1, "--db", str(fleet_db), "--password-out", str(out)]
    )
    assert done.exit_code == 0, done.output
    password = out.read_text().strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert password not in done.output

    again = runner.invoke(broker_command, ["credentials", GW1, "--db", str(fleet_db)])
    assert again.exit_code == 2
    assert "rotate" in again.output
    rotated = runner.invoke(broker_command, ["credentials", GW1, "--db", str(fleet_db), "--rotate"])
    assert rotated.exit_code == 0
    new_password = rotated.stdout.strip().splitlines()[-1]
    assert new_password != password

    folder = tmp_path / "mosquitto"
    written = runner.invoke(
        broker_command, ["write-files", "--out", str(folder), "--db", str(fleet_db)]
    )
    assert written.exit_code == 0, written.output
    line = (folder / "owlgate.passwd").read_text().strip()
    assert line.startswith(f"{GW1}:$7$")
    assert verify_password(new_password, line.split(":", 1)[1])
    assert stat.S_IMODE((folder / "owlgate.passwd").stat().st_mode) == 0o600

    listed = runner.invoke(broker_command, ["list", "--db", str(fleet_db)])
    assert listed.stdout.splitlines() == [f"{GW1}\tgateway\tactive"]
    revoked = runner.invoke(broker_command, ["revoke", GW1, "--db", str(fleet_db)])
    assert revoked.exit_code == 0
    listed = runner.invoke(broker_command, ["list", "--db", str(fleet_db)])
    assert listed.stdout.splitlines() == [f"{GW1}\tgateway\trevoked"]


def test_the_cli_refuses_before_changing_anything(fleet_db: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    taken = tmp_path / "taken"
    taken.write_text("x")
    done = runner.invoke(
        broker_command, ["credentials", GW1, "--db", str(fleet_db), "--password-out", str(taken)]
    )
    assert done.exit_code == 2
    assert "already exists" in done.output
    missing = runner.invoke(broker_command, ["credentials", GW1, "--db", str(tmp_path / "no.db")])
    assert missing.exit_code == 2
    assert "no fleet database" in missing.output
    unknown = runner.invoke(
        broker_command, ["credentials", "00000000000000ff", "--db", str(fleet_db)]
    )
    assert unknown.exit_code == 2
    assert "register it" in unknown.output
    listed = runner.invoke(broker_command, ["list", "--db", str(fleet_db)])
    assert listed.stdout == ""


# --- enforcement by both brokers ------------------------------------------------------------------


@dataclass
class Accounts:
    gw1: str
    gw2: str
    fleet: str


class PolicyBroker(ThreadedEmbeddedBroker):
    """The embedded broker enforcing ``holder``, on a loop of its own thread."""

    def __init__(self, holder: PolicyHolder) -> None:
        super().__init__()
        self.holder = holder

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="amqtt", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        broker = EmbeddedBroker(self.port, policy=self.holder)
        asyncio.run_coroutine_threadsafe(broker.start(), loop).result(TIMEOUT_S)
        self._broker = broker


@dataclass
class Enforcing:
    """A broker enforcing the fleet's credentials, and how to make it re-read them."""

    name: str
    host: str
    port: int
    accounts: Accounts
    reload: Any
    #: Waits until the broker's log holds a line (Mosquitto; nothing to wait for in amqtt).
    wait_for: Any = None


@pytest.fixture(params=["embedded", "mosquitto"])
def enforcing(
    request: pytest.FixtureRequest, registry: Store, tmp_path: Path
) -> Iterator[Enforcing]:
    sql = registry.sql
    accounts = Accounts(
        issue_gateway_credentials(sql, GW1, actor="tester").password,
        issue_gateway_credentials(sql, GW2, actor="tester").password,
        issue_fleet_credentials(sql, actor="tester").password,
    )
    if request.param == "embedded":
        holder = PolicyHolder(load_policy(sql))
        embedded = PolicyBroker(holder)
        embedded.start()
        try:
            yield Enforcing("embedded", embedded.host, embedded.port, accounts, holder.reload)
        finally:
            embedded.stop()
        return
    binary = mosquitto_binary()
    files = write_mosquitto_files(load_policy(sql), tmp_path / "files")
    process = MosquittoProcess(
        binary, tmp_path / "mosquitto", password_file=files.password_file, acl_file=files.acl_file
    )

    def reload(sql: Any) -> None:
        write_mosquitto_files(load_policy(sql), tmp_path / "files")
        reloads = process.log_path.read_text().count("Reloading config")
        process.reload()
        wait_for_log(process, "Reloading config", reloads + 1)

    process.start()
    try:
        yield Enforcing(
            "mosquitto",
            process.host,
            process.port,
            accounts,
            reload,
            lambda text: wait_for_log(process, text, 1),
        )
    finally:
        process.stop()


def wait_for_log(process: MosquittoProcess, text: str, count: int) -> None:
    """Wait until ``text`` is in the broker's log ``count`` times (Mosquitto logs it when it
    handles SIGHUP, before the next CONNECT is read)."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if process.log_path.read_text().count(text) >= count:
                done.set()
                return
            done.wait(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    watcher.join(TIMEOUT_S)
    done.set()
    assert process.log_path.read_text().count(text) >= count, f"no {text!r} in the log"


@asynccontextmanager
async def connected(
    broker: Enforcing, username: str | None, password: str | None, **options: Any
) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        broker.host, broker.port, username=username, password=password, **options
    ) as client:
        yield client


async def first_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(TIMEOUT_S):
        return await anext(aiter(client.messages))


def reason_value(code: object) -> int:
    """The number of a paho ReasonCode, or of a plain int."""
    value = getattr(code, "value", code)
    assert isinstance(value, int), code
    return value


def received(message: aiomqtt.Message) -> tuple[str, bytes]:
    assert isinstance(message.payload, bytes)
    return str(message.topic), message.payload


def connack_code(broker: Enforcing, username: str | None, password: str | None) -> int | None:
    async def attempt() -> int | None:
        try:
            async with connected(broker, username, password):
                return None
        except aiomqtt.MqttCodeError as err:
            return reason_value(err.rc)

    return asyncio.run(attempt())


def test_a_gateway_publishes_its_own_telemetry_but_not_anothers(enforcing: Enforcing) -> None:
    accounts = enforcing.accounts

    async def scenario() -> list[tuple[str, bytes]]:
        async with connected(enforcing, FLEET_ACCOUNT, accounts.fleet) as fleet:
            await fleet.subscribe("owlgate/v1/gw/+/telemetry", qos=1)
            async with connected(enforcing, GW1, accounts.gw1) as gw1:
                await gw1.publish(topic(GW2, "telemetry"), b"forged", qos=1)
                await gw1.publish(topic(GW2, "state"), b"offline", qos=1, retain=True)
                await gw1.publish(topic(GW1, "telemetry"), b"own", qos=1)
                message = await first_message(fleet)
            async with connected(enforcing, GW2, accounts.gw2) as gw2:
                await gw2.publish(topic(GW2, "telemetry"), b"gw2's own", qos=1)
                second = await first_message(fleet)
        return [received(message), received(second)]

    assert asyncio.run(scenario()) == [
        (topic(GW1, "telemetry"), b"own"),
        (topic(GW2, "telemetry"), b"gw2's own"),
    ]


def test_a_gateway_cannot_read_anothers_downlink(enforcing: Enforcing) -> None:
    accounts = enforcing.accounts

    async def scenario() -> tuple[list[int], tuple[str, bytes]]:
        async with connected(enforcing, GW2, accounts.gw2) as gw2:
            granted = await gw2.subscribe(
                [(topic(GW1, "keys"), 1), ("owlgate/v1/gw/+/down", 1), (topic(GW2, "keys"), 1)]
            )
            async with connected(enforcing, FLEET_ACCOUNT, accounts.fleet) as fleet:
                await fleet.publish(topic(GW1, "keys"), b"sealed for gw1", qos=1)
                await fleet.publish(topic(GW1, "down"), b"downlink for gw1", qos=1)
                await fleet.publish(topic(GW2, "keys"), b"sealed for gw2", qos=1)
            message = await first_message(gw2)
        return [reason_value(code) for code in granted], received(message)

    codes, message = asyncio.run(scenario())
    assert message == (topic(GW2, "keys"), b"sealed for gw2")
    assert codes[2] == 1
    if enforcing.name == "embedded":
        # amqtt refuses the subscriptions outright; Mosquitto's acl_file grants them and
        # filters every delivery instead (the message above shows it delivered none).
        assert codes[:2] == [SUBACK_FAILURE, SUBACK_FAILURE]


def test_wrong_passwords_anonymous_and_unknown_users_are_refused(enforcing: Enforcing) -> None:
    accounts = enforcing.accounts
    assert connack_code(enforcing, GW1, accounts.gw1) is None
    assert connack_code(enforcing, GW1, accounts.gw2) == NOT_AUTHORIZED
    assert connack_code(enforcing, GW1, None) == NOT_AUTHORIZED
    assert connack_code(enforcing, None, None) == NOT_AUTHORIZED
    assert connack_code(enforcing, "someone", accounts.fleet) == NOT_AUTHORIZED


def test_rotation_and_revocation_take_effect_on_reload(
    enforcing: Enforcing, registry: Store
) -> None:
    sql = registry.sql
    old = enforcing.accounts.gw1
    new = issue_gateway_credentials(sql, GW1, actor="tester", rotate=True).password
    revoke_credentials(sql, GW2, actor="tester")
    enforcing.reload(sql)
    assert connack_code(enforcing, GW1, new) is None
    assert connack_code(enforcing, GW1, old) == NOT_AUTHORIZED
    assert connack_code(enforcing, GW2, enforcing.accounts.gw2) == NOT_AUTHORIZED


def test_mosquitto_answers_a_forbidden_mqtt5_publish_with_not_authorized(
    registry: Store, tmp_path: Path
) -> None:
    password = issue_gateway_credentials(registry.sql, GW1, actor="tester").password
    issue_gateway_credentials(registry.sql, GW2, actor="tester")
    files = write_mosquitto_files(load_policy(registry.sql), tmp_path / "files")
    with MosquittoProcess(
        mosquitto_binary(),
        tmp_path / "m",
        password_file=files.password_file,
        acl_file=files.acl_file,
    ) as process:
        codes: dict[int, int] = {}
        acked = threading.Event()
        connected_event = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.username_pw_set(GW1, password)

        def on_connect(*args: Any) -> None:
            connected_event.set()

        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
            codes[mid] = int(reason.value)
            if len(codes) == 2:
                acked.set()

        client.on_connect = on_connect
        client.on_publish = on_publish
        client.connect(process.host, process.port)
        client.loop_start()
        try:
            assert connected_event.wait(TIMEOUT_S)
            forged = client.publish(topic(GW2, "telemetry"), b"forged", qos=1).mid
            own = client.publish(topic(GW1, "telemetry"), b"own", qos=1).mid
            assert acked.wait(TIMEOUT_S)
        finally:
            client.disconnect()
            client.loop_stop()
    assert codes[forged] == NOT_AUTHORIZED_V5
    # 0x10 "no matching subscribers" is a success too (MQTT 5.0 section 3.4.2.1).
    assert codes[own] in (0x00, 0x10)


def test_without_credentials_the_embedded_broker_lets_everyone_in() -> None:
    holder = PolicyHolder()

    async def scenario() -> bytes:
        async with (
            EmbeddedBroker(policy=holder) as broker,
            aiomqtt.Client(broker.host, broker.port) as anonymous,
        ):
            await anonymous.subscribe("owlgate/v1/gw/+/keys", qos=1)
            await anonymous.publish(topic(GW1, "keys"), b"anything", qos=1)
            message = await first_message(anonymous)
        assert isinstance(message.payload, bytes)
        return message.payload

    assert asyncio.run(scenario()) == b"anything"
    assert holder.refused_logins == 0
    assert holder.denied == 0


def test_files_for_no_accounts_admit_nobody() -> None:
    policy = BrokerPolicy()
    assert password_file_text(policy) == ""
    assert "user " not in acl_file_text(policy)
    assert not policy.authenticate(None, None)
    assert not policy.allows(None, "publish", topic(GW1, "telemetry"))


def test_the_fleet_process_logs_in_to_its_embedded_broker_with_an_ephemeral_account(
    registry: Store,
) -> None:
    account, password = ephemeral_fleet_account()
    holder = PolicyHolder(extra_accounts=[account])
    assert not holder.policy.configured  # nothing issued: the broker stays open
    gateway = issue_gateway_credentials(registry.sql, GW1, actor="tester").password
    stored_fleet = issue_fleet_credentials(registry.sql, actor="tester").password
    holder.reload(registry.sql)
    assert holder.policy.authenticate(FLEET_ACCOUNT, password)
    assert not holder.policy.authenticate(FLEET_ACCOUNT, stored_fleet)
    assert holder.policy.authenticate(GW1, gateway)
    assert holder.policy.allows(FLEET_ACCOUNT, "subscribe", "owlgate/v1/gw/+/telemetry")
    assert password_file_text(load_policy(registry.sql)).count(FLEET_ACCOUNT) == 1
    assert password not in repr(registry.sql.query_tuples("SELECT * FROM broker_credentials"))


def test_a_will_on_another_gateways_state_topic_never_reaches_the_fleet(
    enforcing: Enforcing,
) -> None:
    """The embedded broker refuses such a CONNECT; Mosquitto 2.0 accepts it and drops the
    Will when the connection dies (it checks a Will against the ACL when it publishes it)."""
    accounts = enforcing.accounts
    forged_will = aiomqtt.Will(topic(GW2, "state"), b"offline", qos=1, retain=True)

    async def scenario() -> tuple[str, bytes] | int:
        async with connected(enforcing, FLEET_ACCOUNT, accounts.fleet) as fleet:
            await fleet.subscribe("owlgate/v1/gw/+/state", qos=1)
            async with TcpProxy(enforcing.host, enforcing.port) as proxy:
                forger = aiomqtt.Client(
                    proxy.host,
                    proxy.port,
                    identifier="forged-will",
                    username=GW1,
                    password=accounts.gw1,
                    will=forged_will,
                )
                try:
                    await forger.__aenter__()
                except aiomqtt.MqttCodeError as err:
                    return reason_value(err.rc)
                # Cut without DISCONNECT, so the broker handles the Will.
                proxy.sever()
                with contextlib.suppress(aiomqtt.MqttError):
                    await forger.__aexit__(None, None, None)
            await asyncio.to_thread(enforcing.wait_for, "Client forged-will closed its connection")
            async with connected(enforcing, GW1, accounts.gw1) as gw1:
                await gw1.publish(topic(GW1, "state"), b"online", qos=1, retain=True)
            return received(await first_message(fleet))

    outcome = asyncio.run(scenario())
    if enforcing.name == "embedded":
        assert outcome == NOT_AUTHORIZED
    else:
        assert outcome == (topic(GW1, "state"), b"online")
