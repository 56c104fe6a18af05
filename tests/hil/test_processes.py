"""The Mosquitto runner (``owlgate.hil.processes.MosquittoProcess``) against the real broker:
it starts and accepts MQTT clients, comes back on the same port with a persistent session's
queued message when persistence is on, leaves no process behind, and says clearly why a
binary that is not a broker did not start. Stand-in brokers (small scripts) cover the paths a
real Mosquitto does not take: exiting at once, and ignoring SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiomqtt
import pytest

from owlgate.hil.chaos import ChaosFailed, RestartableMosquitto
from owlgate.hil.processes import (
    MOSQUITTO_MAX_QUEUED_MESSAGES,
    MosquittoFailed,
    MosquittoProcess,
    accepts_connections,
)
from tests.mqtt_servers import mosquitto_binary

TOPIC = "test/kept"
SESSION = "runner-test-keeper"
RECEIVE_TIMEOUT_S = 10.0


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


def _keeper(broker: MosquittoProcess) -> aiomqtt.Client:
    # MQTT 3.1.1 section 3.1.2.4: with CleanSession 0 the broker keeps the subscription and
    # queues QoS 1 messages for the session while the client is away.
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=SESSION,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=False,
    )


async def _subscribe_and_leave(broker: MosquittoProcess) -> None:
    async with _keeper(broker) as client:
        await client.subscribe(TOPIC, qos=1)


async def _publish(broker: MosquittoProcess, payload: bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="runner-test-pub") as pub:
        await pub.publish(TOPIC, payload, qos=1)


async def _first_message(broker: MosquittoProcess) -> tuple[str, bytes]:
    async with _keeper(broker) as client, asyncio.timeout(RECEIVE_TIMEOUT_S):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return str(message.topic), message.payload
    raise AssertionError("the message stream ended without a message")


def test_starts_and_accepts_an_mqtt_client(tmp_path: Path) -> None:
    with MosquittoProcess(mosquitto_binary(), tmp_path / "broker") as broker:
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert broker.pid is not None
        asyncio.run(_subscribe_and_leave(broker))
        asyncio.run(_publish(broker, b"x"))
        assert broker.starts == 1
    log = broker.log_path.read_text()
    assert broker.log_path.name == "mosquitto-1.log"
    # Verbose by default: the log names each client that connected.
    assert SESSION in log
    assert "runner-test-pub" in log


def test_restart_keeps_a_persistent_session_and_its_queued_message(tmp_path: Path) -> None:
    broker = MosquittoProcess(mosquitto_binary(), tmp_path / "broker", persistence=True)
    with broker:
        port, first_pid = broker.port, broker.pid
        asyncio.run(_subscribe_and_leave(broker))
        asyncio.run(_publish(broker, b"queued while away"))
        broker.restart()
        assert broker.persistence_path.stat().st_size > 0
        assert broker.port == port
        assert broker.pid not in (None, first_pid)
        assert broker.starts == 2
        assert asyncio.run(_first_message(broker)) == (TOPIC, b"queued while away")


def test_stop_leaves_no_process_and_frees_the_port(tmp_path: Path) -> None:
    broker = MosquittoProcess(mosquitto_binary(), tmp_path / "broker")
    broker.start()
    pid = broker.pid
    assert pid is not None
    assert accepts_connections(broker.host, broker.port)
    broker.stop()
    assert broker.pid is None
    assert _gone(pid)
    assert broker.returncode == 0
    assert not accepts_connections(broker.host, broker.port)
    broker.stop()  # a second stop is a no-op
    assert broker.returncode == 0


def test_configuration_with_and_without_persistence(tmp_path: Path) -> None:
    plain = MosquittoProcess("mosquitto", tmp_path / "a", port=1883).config_text().splitlines()
    assert plain == [
        "listener 1883 127.0.0.1",
        "allow_anonymous true",
        f"max_queued_messages {MOSQUITTO_MAX_QUEUED_MESSAGES}",
        "persistence false",
    ]
    kept = MosquittoProcess(
        "mosquitto",
        tmp_path / "b",
        port=1884,
        persistence=True,
        autosave_interval_s=60,
        max_queued_messages=7,
    ).config_text()
    lines = kept.splitlines()
    assert lines[:3] == ["listener 1884 127.0.0.1", "allow_anonymous true", "max_queued_messages 7"]
    assert "persistence true" in lines
    assert f"persistence_location {(tmp_path / 'b').resolve()}/" in lines
    assert "persistence_file mosquitto.db" in lines
    assert "autosave_interval 60" in lines
    assert any(line.startswith("user ") for line in lines)


def test_a_free_port_is_picked_once_and_kept(tmp_path: Path) -> None:
    broker = MosquittoProcess("mosquitto", tmp_path)
    assert 0 < broker.port < 65536
    assert f"listener {broker.port} 127.0.0.1" in broker.config_text()


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-mosquitto"
    broker = MosquittoProcess(str(missing), tmp_path / "broker")
    with pytest.raises(MosquittoFailed, match="cannot run mosquitto") as caught:
        broker.start()
    assert str(missing) in caught.value.message
    assert broker.pid is None


def test_a_binary_that_exits_shows_its_code_and_log(tmp_path: Path) -> None:
    binary = _script(
        tmp_path / "not-a-broker",
        "print(\"Error: Unknown option '-c'.\", flush=True)\nraise SystemExit(3)\n",
    )
    broker = MosquittoProcess(binary, tmp_path / "broker")
    with pytest.raises(MosquittoFailed) as caught:
        broker.start()
    message = caught.value.message
    assert "exited with code 3" in message
    assert "Error: Unknown option '-c'." in message
    assert str(broker.log_path) in message
    assert broker.pid is None
    assert broker.returncode == 3


# Listens on the configured port like a broker, but ignores SIGTERM.
_STUBBORN = """\
import signal, socket, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
words = open(sys.argv[sys.argv.index("-c") + 1]).read().split()
server = socket.create_server(("127.0.0.1", int(words[words.index("listener") + 1])))
print("listening", flush=True)
while True:
    signal.pause()
"""


def test_stop_kills_a_broker_that_ignores_sigterm(tmp_path: Path) -> None:
    binary = _script(tmp_path / "stubborn", _STUBBORN)
    broker = MosquittoProcess(binary, tmp_path / "broker", stop_timeout_s=0.2)
    broker.start()
    pid = broker.pid
    assert pid is not None
    broker.stop()
    assert broker.returncode == -signal.SIGKILL
    assert _gone(pid)
    assert "listening" in broker.log_path.read_text()


def test_the_chaos_broker_persists_and_raises_chaos_failed(tmp_path: Path) -> None:
    broker = RestartableMosquitto(str(tmp_path / "missing"), tmp_path / "broker")
    config = broker.config_text().splitlines()
    assert "persistence true" in config
    assert f"max_queued_messages {RestartableMosquitto.MAX_QUEUED_MESSAGES}" in config
    with pytest.raises(ChaosFailed, match="cannot run mosquitto"):
        broker.start()
