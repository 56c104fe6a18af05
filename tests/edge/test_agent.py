"""The edge agent end to end, in process: an emulated concentrator on a pty, a real broker
(the embedded amqtt and a Mosquitto of the test's own), and the test playing the fleet.

The fleet's side is independent of the agent: it subscribes on the broker, verifies every
message with the gateway's public key, decodes the batches, and signs its control messages
with a fleet key the gateway pins. Every reading an emulated device sent must arrive exactly
once with exactly its values; a replayed frame never arrives; a join goes up signed and its
accept comes down and out of the concentrator in the RX1 window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from owlgate.codecs.concentrator import RadioConfig, TxError, TxRequest
from owlgate.codecs.control import (
    JoinAnswer,
    SessionUpdate,
    decode_join_forward,
    encode_join_answer,
    encode_session_update,
)
from owlgate.codecs.health import decode_health
from owlgate.codecs.lorawan import AesKey, JoinAccept, JoinRequest
from owlgate.codecs.node.telemetry import decode_batch
from owlgate.codecs.sealed import DeviceSession, seal_session
from owlgate.codecs.signed import sign, verify
from owlgate.edge.agent import EdgeAgent
from owlgate.edge.config import EdgeConfig, load_config
from owlgate.edge.lorawan_proc import RejectReason
from owlgate.hil.concentrator import EmulatedConcentrator
from owlgate.hil.devices import EmulatedDevice
from tests.mqtt_servers import BrokerServer, TcpProxy

pytest_plugins = ["tests.brokers"]

GATEWAY = bytes.fromhex("0016c001ff10a0e1")
PREFIX = f"owlgate/v1/gw/{GATEWAY.hex()}/"
WAIT_S = 15.0
APP_KEY = bytes(range(16, 32))
JOIN_EUI = 0x70B3D57ED0000001


def _private_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Fleet:
    """The fleet's keys, and the gateway's files written as ``owlgate fleet seed`` would."""

    def __init__(self, folder: Path) -> None:
        self.identity = Ed25519PrivateKey.generate()
        self.sealing = X25519PrivateKey.generate()
        self.key = Ed25519PrivateKey.generate()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "identity-ed25519.pem").write_bytes(_private_pem(self.identity))
        (folder / "sealing-x25519.pem").write_bytes(_private_pem(self.sealing))
        (folder / "fleet-ed25519.pub.pem").write_bytes(
            self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def seal(self, device: EmulatedDevice) -> bytes:
        assert device.keys is not None
        assert device.dev_addr is not None
        assert device.keys.nwk_s_key is not None
        assert device.keys.app_s_key is not None
        session = DeviceSession(
            dev_eui=device.dev_eui,
            dev_addr=device.dev_addr,
            nwk_s_key=device.keys.nwk_s_key,
            app_s_key=device.keys.app_s_key,
            profile_id=device.profile_id,
            f_cnt_up=device.f_cnt,
        )
        return seal_session(self.sealing.public_key(), GATEWAY, session)


def write_config(
    folder: Path,
    broker: BrokerServer,
    port: Path | None = None,
    *,
    radio: str | None = None,
    extra: str = "",
) -> EdgeConfig:
    """An ``edge.toml`` for a test: the serial concentrator on ``port``, or the ``[radio]``
    keys given as ``radio``; ``extra`` is appended (more sections)."""
    if radio is None:
        radio = f'port = "{port}"'
    path = folder / "edge.toml"
    path.write_text(
        f"""
[gateway]
id = "{GATEWAY.hex()}"
state_dir = "state"
identity_key = "keys/identity-ed25519.pem"
sealing_key = "keys/sealing-x25519.pem"
fleet_key = "keys/fleet-ed25519.pub.pem"

[radio]
{radio}

[mqtt]
url = "{broker.url}"
keepalive_s = 10

[batch]
max_readings = 4
max_age_s = 0.05

[health]
interval_s = 1
{extra}
"""
    )
    return load_config(path)


class FleetSide:
    """A subscriber to the gateway's topics, and the fleet's publisher of control messages."""

    def __init__(self, broker: BrokerServer) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._client = aiomqtt.Client(broker.host, broker.port, identifier="fleet-test")
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        await self._client.subscribe(PREFIX + "#", qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        await self._client.__aexit__(exc_type, exc, tb)

    async def _collect(self) -> None:
        async for message in self._client.messages:
            self.messages.append((message.topic.value, message.payload))

    def payloads(self, suffix: str) -> list[bytes]:
        return [payload for topic, payload in self.messages if topic == PREFIX + suffix]

    async def publish(self, suffix: str, payload: bytes) -> None:
        await self._client.publish(PREFIX + suffix, payload, qos=1)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_S):
            while not condition():  # noqa: ASYNC110 - the conditions are plain attributes
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out waiting for: {what}")


def uplink_up(agent: EdgeAgent) -> bool:
    return agent.uplink is not None and agent.uplink.announced


def readings_received(
    fleet: FleetSide, gateway_public: Ed25519PublicKey
) -> list[tuple[bytes, int, dict[str, object]]]:
    found = []
    for message in fleet.payloads("telemetry"):
        batch = decode_batch(verify(message, gateway_public).payload)
        assert batch.gateway_id == GATEWAY
        assert batch.delayed is False
        for reading in batch.readings:
            assert reading.fcnt is not None
            found.append((reading.dev_eui, reading.fcnt, reading.values))
    return found


def test_agent_end_to_end(broker: BrokerServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet_keys = Fleet(tmp_path / "keys")
        gateway_public = fleet_keys.identity.public_key()
        devices = [
            EmulatedDevice.abp(
                profile,
                bytes.fromhex(f"70b3d57ed00000{index:02x}"),
                dev_addr=0x26010000 + index,
                nwk_s_key=bytes([index]) * 16,
                app_s_key=bytes([index + 0x40]) * 16,
                seed=index,
            )
            for index, profile in enumerate(("parking-v1", "waste-bin-v1"), start=1)
        ]
        async with (
            EmulatedConcentrator(tmp_path / "dev", seed=3) as concentrator,
            FleetSide(broker) as fleet,
        ):
            config = write_config(tmp_path, broker, concentrator.path)
            agent = EdgeAgent(config)
            run = asyncio.create_task(agent.run())
            try:
                await eventually(lambda: agent.radio_connected, "the radio configured")
                await eventually(lambda: agent.control_connected, "the control subscription")
                # Joins go up on the uplink, which announces itself after the subscription.
                await eventually(lambda: uplink_up(agent), "the uplink online")
                assert concentrator.radio_configs[0].channels == config.radio.channels

                # A session update signed by someone else is refused; the fleet's are taken.
                # The agent is ready once the update marked complete is in.
                sealed = [fleet_keys.seal(device) for device in devices]
                first = encode_session_update(SessionUpdate(sealed[:1]))
                last = encode_session_update(SessionUpdate(sealed[1:], complete=True))
                await fleet.publish("keys", sign(last, Ed25519PrivateKey.generate()))
                await eventually(lambda: agent.counters.control_rejected == 1, "forgery refused")
                await fleet.publish("keys", sign(first, fleet_keys.key))
                await eventually(lambda: agent.counters.sessions_installed == 1, "1 session")
                await asyncio.sleep(0.2)
                assert not agent.ready.is_set()
                await fleet.publish("keys", sign(last, fleet_keys.key))
                await eventually(lambda: agent.counters.sessions_installed == 2, "2 sessions")
                await eventually(agent.ready.is_set, "ready after the complete session update")

                sent: dict[tuple[bytes, int], dict[str, object]] = {}
                phys: list[bytes] = []
                for _ in range(5):
                    for device in devices:
                        f_cnt = device.f_cnt
                        phy, values = device.uplink(0.0)
                        sent[(device.dev_eui, f_cnt)] = values
                        phys.append(phy)
                        concentrator.inject(phy)
                # An old frame replayed, and the newest repeated: neither becomes a reading.
                concentrator.inject(phys[0])
                concentrator.inject(phys[-1])
                await eventually(lambda: agent.counters.readings == 10, "10 readings stored")
                await eventually(
                    lambda: len(readings_received(fleet, gateway_public)) >= 10, "10 delivered"
                )
                processor = agent.processor
                assert processor is not None
                await eventually(lambda: agent.counters.rejected == 2, "the replays rejected")
                assert processor.counters.rejected[RejectReason.REPLAY] == 1
                assert processor.counters.rejected[RejectReason.RETRANSMISSION] == 1

                # Health, signed by the gateway, with the radio's counters.
                await eventually(lambda: bool(fleet.payloads("health")), "a health message")
                health = decode_health(verify(fleet.payloads("health")[-1], gateway_public).payload)
                assert health.gateway_id == GATEWAY
                assert health.config_hash == config.sha256
                assert health.radio is not None
                # The outbox bound is the default 256 MiB; what waits is within it.
                assert health.outbox_max_bytes == 256 * 1024 * 1024
                assert health.outbox_bytes is not None
                assert 0 <= health.outbox_bytes < health.outbox_max_bytes

                # OTAA: the join goes up signed, the accept comes down and goes out in RX1.
                joiner = EmulatedDevice.otaa(
                    "environment-v1",
                    bytes.fromhex("70b3d57ed00000f0"),
                    join_eui=JOIN_EUI,
                    app_key=APP_KEY,
                    seed=9,
                )
                join_phy = joiner.join_request()
                rx = concentrator.inject(join_phy, frequency_hz=868_300_000, sf=9)
                await eventually(lambda: bool(fleet.payloads("join")), "a forwarded join")
                forward = decode_join_forward(
                    verify(fleet.payloads("join")[0], gateway_public).payload
                )
                assert forward.phy_payload == join_phy
                app_key = AesKey(APP_KEY)
                accept = JoinAccept.build(app_key, join_nonce=7, net_id=0x13, dev_addr=0x26019999)
                accept_phy = accept.encrypt(app_key)
                keys = accept.session_keys(app_key, JoinRequest.from_bytes(join_phy).dev_nonce)
                assert keys.nwk_s_key is not None
                assert keys.app_s_key is not None
                session = DeviceSession(
                    dev_eui=joiner.dev_eui,
                    dev_addr=0x26019999,
                    nwk_s_key=keys.nwk_s_key,
                    app_s_key=keys.app_s_key,
                    profile_id=joiner.profile_id,
                )
                answer = JoinAnswer(
                    forward.token,
                    accept_phy,
                    seal_session(fleet_keys.sealing.public_key(), GATEWAY, session),
                )
                await fleet.publish("join/accept", sign(encode_join_answer(answer), fleet_keys.key))
                tx = await concentrator.wait_for(TxRequest, timeout_s=WAIT_S)
                assert tx.payload == accept_phy
                assert tx.timestamp_us == (rx.timestamp_us + 5_000_000) % (1 << 32)
                assert (tx.frequency_hz, tx.sf, tx.bandwidth_hz) == (868_300_000, 9, 125_000)
                assert tx.invert_polarity is True
                assert tx.crc is False
                await eventually(lambda: agent.counters.joins_accepted == 1, "join accepted")
                assert joiner.accept_join(tx.payload) == 0x26019999
                phy, values = joiner.uplink(0.0)
                sent[(joiner.dev_eui, 0)] = values
                concentrator.inject(phy)
                await eventually(
                    lambda: agent.counters.readings == 11, "the joined device's reading"
                )
                await eventually(
                    lambda: len(readings_received(fleet, gateway_public)) >= 11, "11 delivered"
                )
            finally:
                agent.stop()
                await run
            await eventually(lambda: b"offline" in fleet.payloads("state"), "offline on stop")

        received = readings_received(fleet, gateway_public)
        assert len(received) == len(sent)
        assert {(dev_eui, f_cnt): values for dev_eui, f_cnt, values in received} == sent
        counters = agent.counters
        assert (counters.joins_forwarded, counters.tx_sent, counters.tx_failed) == (1, 1, 0)
        assert counters.health_published >= 1
        assert counters.session_updates == 2
        # At shutdown the counters went to status.json, for the technician and the demo.
        status = json.loads((tmp_path / "state" / "status.json").read_text())
        assert status["gateway_id"] == GATEWAY.hex()
        assert status["ready"] is True
        assert status["agent"]["readings"] == 11
        assert status["agent"]["rejected"] == 2
        assert status["lorawan"]["rejected_replay"] == 1
        assert status["lorawan"]["rejected_retransmission"] == 1
        assert status["lorawan"]["sessions"] == 3
        assert status["outbox"]["depth"] == 0
        assert status["radio"]["rx_delivered"] == counters.readings + counters.rejected + 1

    asyncio.run(scenario())


def test_stored_sessions_survive_a_restart(tmp_path: Path, embedded_broker: BrokerServer) -> None:
    # The second run knows the device without a new session update, and refuses the frame
    # it stored before the restart (its counter reached the disk with the batch).
    fleet_keys = Fleet(tmp_path / "keys")
    device = EmulatedDevice.abp(
        "parking-v1",
        bytes.fromhex("70b3d57ed0000042"),
        dev_addr=0x26010042,
        nwk_s_key=b"\x42" * 16,
        app_s_key=b"\x24" * 16,
    )
    update = encode_session_update(SessionUpdate([fleet_keys.seal(device)]))
    first_phy, _ = device.uplink(0.0)
    second_phy, _ = device.uplink(0.0)

    async def one_run(concentrator: EmulatedConcentrator, first: bool) -> EdgeAgent:
        agent = EdgeAgent(write_config(tmp_path, embedded_broker, concentrator.path))
        run = asyncio.create_task(agent.run())
        try:
            await eventually(lambda: agent.radio_connected, "the radio configured")
            await eventually(lambda: agent.control_connected, "control")
            if first:
                async with aiomqtt.Client(embedded_broker.host, embedded_broker.port) as fleet:
                    await fleet.publish(PREFIX + "keys", sign(update, fleet_keys.key), qos=1)
                await eventually(lambda: agent.counters.sessions_installed == 1, "session")
                concentrator.inject(first_phy)
            else:
                concentrator.inject(first_phy)
                concentrator.inject(second_phy)
            await eventually(lambda: agent.counters.readings == 1, "one reading stored")
        finally:
            agent.stop()
            await run
        return agent

    async def scenario() -> None:
        async with EmulatedConcentrator(tmp_path / "dev", seed=4) as concentrator:
            await one_run(concentrator, first=True)
            second = await one_run(concentrator, first=False)
        assert second.counters.sessions_installed == 0
        assert second.counters.rejected == 1

    asyncio.run(scenario())


def test_cli_runs_until_sigterm_and_stops_cleanly(
    tmp_path: Path, embedded_broker: BrokerServer
) -> None:
    async def scenario() -> None:
        Fleet(tmp_path / "keys")
        async with (
            EmulatedConcentrator(tmp_path / "dev", seed=5) as concentrator,
            FleetSide(embedded_broker) as fleet,
        ):
            config = write_config(tmp_path, embedded_broker, concentrator.path)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from owlgate.edge.cli import edge_command; edge_command()",
                "run",
                "--config",
                str(config.path),
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                await eventually(lambda: b"online" in fleet.payloads("state"), "online")
                await concentrator.wait_for(RadioConfig, timeout_s=WAIT_S)
                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(WAIT_S):
                    _, stderr = await process.communicate()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            assert process.returncode == 0, stderr.decode()
            await eventually(lambda: fleet.payloads("state")[-1] == b"offline", "offline")
        assert b"Traceback" not in stderr
        assert b"starting: radio" in stderr

    asyncio.run(scenario())


def test_join_answers_that_cannot_be_used(tmp_path: Path, embedded_broker: BrokerServer) -> None:
    # A refusal, an unknown token, and an accept the concentrator answers TOO_LATE: none
    # installs a session; each is counted.
    async def scenario() -> None:
        fleet_keys = Fleet(tmp_path / "keys")
        joiner = EmulatedDevice.otaa(
            "parking-v1", bytes.fromhex("70b3d57ed00000f1"), join_eui=JOIN_EUI, app_key=APP_KEY
        )
        app_key = AesKey(APP_KEY)
        async with (
            EmulatedConcentrator(tmp_path / "dev", seed=6) as concentrator,
            FleetSide(embedded_broker) as fleet,
        ):
            agent = EdgeAgent(write_config(tmp_path, embedded_broker, concentrator.path))
            run = asyncio.create_task(agent.run())
            try:
                await eventually(lambda: agent.radio_connected, "the radio configured")
                await eventually(lambda: agent.control_connected, "the control subscription")
                # Joins go up on the uplink, which announces itself after the subscription.
                await eventually(lambda: uplink_up(agent), "the uplink online")
                concentrator.tx_error = TxError.TOO_LATE
                tokens: list[int] = []
                for _ in range(2):
                    concentrator.inject(joiner.join_request())
                    await eventually(lambda: len(fleet.payloads("join")) > len(tokens), "a join")
                    message = verify(fleet.payloads("join")[-1], fleet_keys.identity.public_key())
                    tokens.append(decode_join_forward(message.payload).token)
                refusal = JoinAnswer(tokens[0], refusal="unknown device")
                await fleet.publish(
                    "join/accept", sign(encode_join_answer(refusal), fleet_keys.key)
                )
                await eventually(lambda: agent.counters.joins_refused == 1, "the refusal")
                # The same token again: it was used up by the refusal.
                await fleet.publish(
                    "join/accept", sign(encode_join_answer(refusal), fleet_keys.key)
                )
                await eventually(lambda: agent.counters.control_rejected == 1, "unknown token")
                accept = JoinAccept.build(app_key, join_nonce=1, net_id=0x13, dev_addr=0x26010001)
                keys = accept.session_keys(app_key, 1)
                assert keys.nwk_s_key is not None
                assert keys.app_s_key is not None
                session = DeviceSession(
                    dev_eui=joiner.dev_eui,
                    dev_addr=0x26010001,
                    nwk_s_key=keys.nwk_s_key,
                    app_s_key=keys.app_s_key,
                    profile_id=joiner.profile_id,
                )
                late = JoinAnswer(
                    tokens[1],
                    accept.encrypt(app_key),
                    seal_session(fleet_keys.sealing.public_key(), GATEWAY, session),
                )
                await fleet.publish("join/accept", sign(encode_join_answer(late), fleet_keys.key))
                await concentrator.wait_for(TxRequest, timeout_s=WAIT_S)
                await eventually(lambda: agent.counters.tx_failed == 1, "TOO_LATE counted")
                processor = agent.processor
                assert processor is not None
                assert processor.session_count == 0
            finally:
                agent.stop()
                await run
        counters = agent.counters
        assert (counters.joins_forwarded, counters.joins_accepted, counters.tx_sent) == (2, 0, 0)
        assert counters.sessions_installed == 0

    asyncio.run(scenario())


class Responder:
    """The fleet's answer to ``online``: a signed session update with ``sealed`` sessions,
    every time the gateway announces itself; reconnects when the broker comes back."""

    def __init__(self, broker: BrokerServer, fleet_key: Ed25519PrivateKey, sealed: list[bytes]):
        self.answered = 0
        self._broker = broker
        self._update = sign(encode_session_update(SessionUpdate(sealed, complete=True)), fleet_key)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._serve())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _serve(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self._broker.host, self._broker.port) as client:
                    await client.subscribe(PREFIX + "state", qos=1)
                    async for message in client.messages:
                        if message.payload == b"online":
                            await client.publish(PREFIX + "keys", self._update, qos=1)
                            self.answered += 1
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)


def _abp_device(index: int) -> EmulatedDevice:
    return EmulatedDevice.abp(
        "parking-v1",
        bytes.fromhex(f"70b3d57ed00001{index:02x}"),
        dev_addr=0x26020000 + index,
        nwk_s_key=bytes([index]) * 16,
        app_s_key=bytes([index + 0x80]) * 16,
    )


def test_sessions_sent_in_answer_to_online_always_arrive(
    broker: BrokerServer, tmp_path: Path
) -> None:
    # The fleet answers "online" at once. The agent's online waits for its control
    # subscription, so the answer is never lost: not at start, not after the broker restarted
    # and forgot every session and subscription.
    async def scenario() -> None:
        fleet_keys = Fleet(tmp_path / "keys")
        sealed = [fleet_keys.seal(_abp_device(1))]
        async with (
            EmulatedConcentrator(tmp_path / "dev", seed=7) as concentrator,
            Responder(broker, fleet_keys.key, sealed) as responder,
        ):
            agent = EdgeAgent(write_config(tmp_path, broker, concentrator.path))
            run = asyncio.create_task(agent.run())
            try:
                await eventually(agent.ready.is_set, "ready")
                assert agent.counters.sessions_installed == 1
                for restart in range(2):
                    updates = agent.counters.session_updates
                    await asyncio.to_thread(broker.stop)
                    await eventually(lambda: not agent.control_connected, "control lost")
                    await asyncio.to_thread(broker.start)
                    await eventually(
                        functools.partial(_more_updates, agent, updates),
                        f"a session update after restart {restart + 1}",
                    )
                assert responder.answered >= 3
                assert agent.counters.control_rejected == 0
            finally:
                agent.stop()
                await run

    asyncio.run(scenario())


def test_keys_sent_while_the_control_connection_is_down_arrive_later(
    broker: BrokerServer, tmp_path: Path
) -> None:
    # The control connection's session is persistent: what the fleet publishes on "keys"
    # while the gateway's backhaul is cut waits at the broker and arrives on reconnection.
    async def scenario() -> None:
        fleet_keys = Fleet(tmp_path / "keys")
        first, later = _abp_device(1), _abp_device(2)
        async with (
            EmulatedConcentrator(tmp_path / "dev", seed=8) as concentrator,
            TcpProxy(broker.host, broker.port) as proxy,
        ):
            config = write_config(tmp_path, broker, concentrator.path)
            agent = EdgeAgent(config)
            proxied = f"{PREFIX}keys"
            run = asyncio.create_task(_run_via(agent, config, proxy))
            try:
                await eventually(lambda: agent.control_connected, "control subscription")
                async with aiomqtt.Client(broker.host, broker.port) as fleet:
                    update = SessionUpdate([fleet_keys.seal(first)])
                    await fleet.publish(
                        proxied, sign(encode_session_update(update), fleet_keys.key), qos=1
                    )
                    await eventually(lambda: agent.counters.sessions_installed == 1, "first")
                    await proxy.pause()
                    proxy.sever()
                    await eventually(lambda: not agent.control_connected, "control cut")
                    update = SessionUpdate([fleet_keys.seal(later)])
                    await fleet.publish(
                        proxied, sign(encode_session_update(update), fleet_keys.key), qos=1
                    )
                    await asyncio.sleep(0.2)
                    assert agent.counters.sessions_installed == 1
                    await proxy.resume()
                    await eventually(
                        lambda: agent.counters.sessions_installed == 2, "the queued session"
                    )
                processor = agent.processor
                assert processor is not None
                assert processor.session_count == 2
            finally:
                agent.stop()
                await run

    asyncio.run(scenario())


def _more_updates(agent: EdgeAgent, before: int) -> bool:
    return agent.counters.session_updates > before


async def _run_via(agent: EdgeAgent, config: EdgeConfig, proxy: TcpProxy) -> None:
    # The agent's MQTT settings pointed at the proxy instead of the broker itself.
    agent.config = dataclasses.replace(
        config, mqtt=dataclasses.replace(config.mqtt, host=proxy.host, port=proxy.port)
    )
    await agent.run()
