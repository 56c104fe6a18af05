"""Fixtures for MQTT brokers: ``embedded_broker``, ``mosquitto`` and ``broker`` (both).

A test module uses them with ``pytest_plugins = ["tests.brokers"]`` at its top (never import
this module: pytest must load it as a plugin) and imports the classes it needs, such as
:class:`~tests.mqtt_servers.TcpProxy`, from ``tests.mqtt_servers``. ``broker`` is
parametrised, so a test asking for it runs once against amqtt and once against Mosquitto.
Each fixture starts a broker of the test's own on a free port and stops it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_servers import (
    BrokerServer,
    MosquittoServer,
    ThreadedEmbeddedBroker,
    mosquitto_binary,
)


@pytest.fixture
def embedded_broker() -> Iterator[ThreadedEmbeddedBroker]:
    """The embedded amqtt broker, started on a free port; stopped at the end."""
    server = ThreadedEmbeddedBroker()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A Mosquitto of the test's own on a free port; terminated at the end."""
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    server = MosquittoServer(mosquitto_binary(), folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request: pytest.FixtureRequest) -> BrokerServer:
    """Each test that asks for it runs twice: against amqtt and against Mosquitto."""
    name = "embedded_broker" if request.param == "embedded" else "mosquitto"
    server: BrokerServer = request.getfixturevalue(name)
    return server
