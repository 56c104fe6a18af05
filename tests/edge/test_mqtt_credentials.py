"""The gateway's broker password: ``[mqtt] password_file`` in edge.toml, read and checked once,
and the uplink logging in with it to brokers that enforce the fleet's credentials (a real
Mosquitto with the files the fleet writes, and the embedded broker with the same hashes)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from owlgate.edge.config import load_config, load_mqtt_password
from owlgate.edge.errors import ConfigError
from owlgate.edge.uplink import Uplink
from owlgate.fleet.brokerauth import (
    FLEET_ACCOUNT,
    Account,
    BrokerPolicy,
    PolicyHolder,
    hash_password,
    write_mosquitto_files,
)
from owlgate.hil.processes import MosquittoProcess
from tests.edge.test_config import base, write
from tests.edge.test_uplink import FakeOutbox, eventually
from tests.fleet.test_brokerauth import PolicyBroker
from tests.mqtt_servers import mosquitto_binary

GATEWAY = bytes.fromhex("b827ebfffe000001")
OTHER = "b827ebfffe000002"
PASSWORD = "gw-password-7f3a"
FLEET_PASSWORD = "fleet-password-91c2"
WAIT_S = 15.0


def with_password_file(tmp_path: Path, content: str, mode: int = 0o600) -> Path:
    secret = tmp_path / "secrets" / "mqtt.password"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text(content)
    secret.chmod(mode)
    sections = base()
    sections["mqtt"]["password_file"] = '"secrets/mqtt.password"'
    return write(tmp_path, sections)


def test_without_a_password_file_there_is_no_password(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, base()))
    assert config.mqtt.password_file is None
    assert load_mqtt_password(config) is None


def test_the_password_file_resolves_against_the_config_folder(tmp_path: Path) -> None:
    config = load_config(with_password_file(tmp_path, PASSWORD + "\n"))
    assert config.mqtt.password_file == tmp_path.resolve() / "secrets" / "mqtt.password"
    assert load_mqtt_password(config) == PASSWORD
    assert PASSWORD not in repr(config)


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        (PASSWORD, 0o644, "can be read by others (mode 644): chmod 600"),
        (PASSWORD, 0o640, "can be read by others (mode 640)"),
        ("", 0o600, "must hold the password on one line"),
        (f"{PASSWORD}\nsecond line\n", 0o600, "must hold the password on one line"),
    ],
)
def test_a_bad_password_file_names_the_key_and_never_the_password(
    tmp_path: Path, content: str, mode: int, problem: str
) -> None:
    config = load_config(with_password_file(tmp_path, content, mode))
    with pytest.raises(ConfigError) as caught:
        load_mqtt_password(config)
    assert caught.value.section == "mqtt"
    assert caught.value.key == "password_file"
    assert problem in caught.value.problem
    assert PASSWORD not in str(caught.value)


def test_a_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    sections = base()
    sections["mqtt"]["password_file"] = '"nowhere/mqtt.password"'
    config = load_config(write(tmp_path, sections))
    with pytest.raises(ConfigError, match=r"\[mqtt\] password_file: cannot read"):
        load_mqtt_password(config)


def test_an_empty_password_file_setting_is_refused(tmp_path: Path) -> None:
    sections = base()
    sections["mqtt"]["password_file"] = '""'
    with pytest.raises(ConfigError, match=r"\[mqtt\] password_file: must be a non-empty string"):
        load_config(write(tmp_path, sections))


# --- the uplink against enforcing brokers ---------------------------------------------------------


@dataclass
class Enforcing:
    host: str
    port: int


def policy() -> BrokerPolicy:
    gateway = GATEWAY.hex()
    return BrokerPolicy(
        {
            gateway: Account(gateway, "gateway", hash_password(PASSWORD), 0.0),
            OTHER: Account(OTHER, "gateway", hash_password("other"), 0.0),
            FLEET_ACCOUNT: Account(FLEET_ACCOUNT, "fleet", hash_password(FLEET_PASSWORD), 0.0),
        }
    )


@pytest.fixture(params=["embedded", "mosquitto"])
def enforcing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Enforcing]:
    if request.param == "embedded":
        embedded = PolicyBroker(PolicyHolder(policy()))
        embedded.start()
        try:
            yield Enforcing(embedded.host, embedded.port)
        finally:
            embedded.stop()
        return
    files = write_mosquitto_files(policy(), tmp_path / "files")
    with MosquittoProcess(
        mosquitto_binary(),
        tmp_path / "mosquitto",
        password_file=files.password_file,
        acl_file=files.acl_file,
    ) as process:
        yield Enforcing(process.host, process.port)


def uplink(outbox: FakeOutbox, broker: Enforcing, password: str | None) -> Uplink:
    return Uplink(
        outbox,
        GATEWAY,
        broker.host,
        broker.port,
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
        connect_timeout_s=5.0,
        rng=random.Random(7),
        password=password,
    )


def test_the_uplink_logs_in_with_its_password_and_delivers(enforcing: Enforcing) -> None:
    outbox = FakeOutbox()
    outbox.add(b"batch-1")

    async def scenario() -> tuple[str, bytes]:
        async with aiomqtt.Client(
            enforcing.host, enforcing.port, username=FLEET_ACCOUNT, password=FLEET_PASSWORD
        ) as fleet:
            await fleet.subscribe("owlgate/v1/gw/+/telemetry", qos=1)
            async with uplink(outbox, enforcing, PASSWORD) as gateway:
                gateway.notify()
                async with asyncio.timeout(WAIT_S):
                    message = await anext(aiter(fleet.messages))
                await eventually(lambda: outbox.acked == [1], "the PUBACK of entry 1")
        assert isinstance(message.payload, bytes)
        return str(message.topic), message.payload

    assert asyncio.run(scenario()) == (f"owlgate/v1/gw/{GATEWAY.hex()}/telemetry", b"batch-1")


@pytest.mark.parametrize("password", [None, "not-the-password"])
def test_the_uplink_without_the_right_password_is_refused(
    enforcing: Enforcing, password: str | None
) -> None:
    outbox = FakeOutbox()
    outbox.add(b"batch-1")

    async def scenario() -> Uplink:
        async with uplink(outbox, enforcing, password) as gateway:
            gateway.notify()
            await eventually(lambda: gateway.reconnects >= 3, "three refused connections")
            return gateway

    gateway = asyncio.run(scenario())
    assert not gateway.announced
    assert gateway.published == 0
    assert outbox.acked == []
