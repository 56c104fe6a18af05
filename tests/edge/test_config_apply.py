"""Configuration over the air, end to end on one gateway: a real :class:`AgentService` with
the emulated concentrator and a broker of the test's own (amqtt and Mosquitto), the test
playing the fleet. Documents are published signed and retained on the gateway's ``config``
topic, as the fleet publishes them; what the gateway did is read back from its signed
``config/status`` reports and its health messages, never from its insides alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from owlgate.codecs.concentrator import Channel
from owlgate.codecs.configdoc import ConfigDocument, GatewayConfig, sign_config
from owlgate.codecs.control import ConfigStatus, decode_config_status
from owlgate.codecs.health import decode_health
from owlgate.codecs.signed import verify
from owlgate.edge.cli import edge_command
from owlgate.edge.config import DEFAULT_CHANNELS, EdgeConfig, load_config, load_keys
from owlgate.edge.remote_config import APPLY, ConfigKeeper
from owlgate.edge.runtime import AgentService
from owlgate.fleet.broker import free_port
from owlgate.hil.concentrator import EmulatedConcentrator
from tests.edge.test_agent import GATEWAY, PREFIX, Fleet, FleetSide, eventually, write_config
from tests.mqtt_servers import BrokerServer

pytest_plugins = ["tests.brokers"]

#: Ten EU868 channels: the emulated concentrator has nine (its HELLO says so).
TEN_CHANNELS = tuple(
    Channel(frequency_hz=hz)
    for hz in (
        867_100_000,
        867_300_000,
        867_500_000,
        867_700_000,
        867_900_000,
        868_100_000,
        868_300_000,
        868_500_000,
        868_800_000,
        869_525_000,
    )
)
FOUR_CHANNELS = (*DEFAULT_CHANNELS, Channel(frequency_hz=867_100_000, spreading_factors=(7, 8, 9)))


class Documents:
    """The fleet's configuration documents for this gateway: the settings of the test's
    edge.toml unless told otherwise, signed with the fleet key."""

    def __init__(self, fleet: Fleet, broker: BrokerServer, client: aiomqtt.Client) -> None:
        self.fleet = fleet
        self.broker = broker
        self.client = client

    def doc(self, seq: int, **settings: object) -> ConfigDocument:
        fields: dict[str, object] = {
            "mqtt_url": self.broker.url,
            "mqtt_keepalive_s": 10,
            "channels": DEFAULT_CHANNELS,
            "batch_max_readings": 4,
            "batch_max_age_ms": 50,
            "health_interval_s": 1,
        }
        fields.update(settings)
        return ConfigDocument(
            seq=seq,
            target=GATEWAY,
            issued_at=1_760_000_000 + seq,
            config=GatewayConfig(**fields),  # type: ignore[arg-type]
        )

    def signed(self, doc: ConfigDocument, key: Ed25519PrivateKey | None = None) -> bytes:
        return sign_config(doc, self.fleet.key if key is None else key)

    async def publish(self, payload: bytes) -> None:
        # As the fleet does: retained, QoS 1.
        await self.client.publish(PREFIX + "config", payload, qos=1, retain=True)


def statuses(fleet: FleetSide, identity: Ed25519PrivateKey) -> list[ConfigStatus]:
    public = identity.public_key()
    return [
        decode_config_status(verify(payload, public).payload)
        for payload in fleet.payloads("config/status")
    ]


def states(fleet: FleetSide, identity: Ed25519PrivateKey, seq: int) -> list[str]:
    return [status.state for status in statuses(fleet, identity) if status.seq == seq]


def last(fleet: FleetSide, identity: Ed25519PrivateKey, seq: int) -> ConfigStatus:
    return [status for status in statuses(fleet, identity) if status.seq == seq][-1]


def _rejections(fleet: FleetSide, identity: Ed25519PrivateKey) -> list[ConfigStatus]:
    return [status for status in statuses(fleet, identity) if status.state == "rejected"]


def _rejections_are(fleet: FleetSide, identity: Ed25519PrivateKey, count: int) -> bool:
    return len(_rejections(fleet, identity)) == count


def health_hashes(fleet: FleetSide, identity: Ed25519PrivateKey) -> list[bytes]:
    public = identity.public_key()
    return [
        decode_health(verify(payload, public).payload).config_hash
        for payload in fleet.payloads("health")
    ]


async def _up(service: AgentService) -> None:
    await eventually(lambda: service.agent.radio_connected, "the radio configured")
    await eventually(
        lambda: service.agent.uplink is not None and service.agent.uplink.announced, "online"
    )


def _config(tmp_path: Path, broker: BrokerServer, port: Path, deadline_s: int = 8) -> EdgeConfig:
    return write_config(
        tmp_path, broker, port, extra=f"\n[config]\napply_deadline_s = {deadline_s}\n"
    )


def test_documents_applied_rolled_back_refused_and_kept_across_a_restart(
    broker: BrokerServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        keys = Fleet(tmp_path / "keys")
        identity = keys.identity
        async with (
            EmulatedConcentrator(tmp_path / "dev", seed=21) as concentrator,
            FleetSide(broker) as fleet,
            aiomqtt.Client(broker.host, broker.port, identifier="fleet-config") as publisher,
        ):
            documents = Documents(keys, broker, publisher)
            config = _config(tmp_path, broker, concentrator.path)
            service = AgentService(config, load_keys(config))
            running = asyncio.create_task(service.run())
            try:
                await _up(service)
                agent = service.agent
                configured = len(concentrator.radio_configs)

                # Batch limits only: applied live, the radio is not touched.
                live = documents.doc(5, batch_max_readings=8, batch_max_age_ms=200)
                await documents.publish(documents.signed(live))
                await eventually(
                    lambda: states(fleet, identity, 5) == ["received", "applied"], "applied 5"
                )
                applied = last(fleet, identity, 5)
                assert applied.content_hash == applied.running_hash == live.content_hash
                assert service.agent is agent
                assert len(concentrator.radio_configs) == configured
                assert (agent.config.batch.max_readings, agent.config.batch.max_age_s) == (8, 0.2)
                await eventually(
                    lambda: live.content_hash in health_hashes(fleet, identity),
                    "a health message with the document's hash",
                )
                received = next(s for s in statuses(fleet, identity) if s.state == "received")
                assert received.running_hash == config.sha256

                # Ten channels: the concentrator refuses them, the document is rolled back.
                bad = documents.doc(6, channels=TEN_CHANNELS)
                await documents.publish(documents.signed(bad))
                await eventually(
                    lambda: states(fleet, identity, 6) == ["received", "rolled_back"],
                    "rolled back 6",
                )
                rolled = last(fleet, identity, 6)
                assert rolled.reason == "radio"
                assert rolled.detail is not None
                assert "10 channels, it has 9" in rolled.detail
                assert rolled.content_hash == bad.content_hash
                assert rolled.running_hash == live.content_hash
                await _up(service)
                assert service.config.document_seq == 5
                assert concentrator.radio_configs[-1].channels == DEFAULT_CHANNELS
                assert all(len(sent.channels) <= 9 for sent in concentrator.radio_configs)
                since = len(fleet.payloads("health"))
                await eventually(
                    lambda: live.content_hash in health_hashes(fleet, identity)[since:],
                    "health with the previous hash again",
                )

                # Replayed, altered, and signed by another key: refused, each with its reason.
                refusals = [
                    (documents.signed(documents.doc(4)), 4, "replayed"),
                    (_flip(documents.signed(documents.doc(7))), 7, "signature"),
                    (
                        documents.signed(documents.doc(7), Ed25519PrivateKey.generate()),
                        7,
                        "signature",
                    ),
                ]
                for index, (payload, seq, reason) in enumerate(refusals):
                    await documents.publish(payload)
                    await eventually(
                        functools.partial(_rejections_are, fleet, identity, index + 1),
                        f"refusal {reason}",
                    )
                    refused = _rejections(fleet, identity)[-1]
                    assert (refused.seq, refused.reason) == (seq, reason)
                    assert refused.running_hash == live.content_hash
                assert service.config.document_seq == 5

                # A new channel plan: the radio restarts with it (in the same agent), and the
                # document is committed.
                wider = documents.doc(8, channels=FOUR_CHANNELS, batch_max_readings=8)
                await documents.publish(documents.signed(wider))
                await eventually(
                    lambda: states(fleet, identity, 8) == ["received", "applied"], "applied 8"
                )
                assert service.agent is agent
                assert concentrator.radio_configs[-1].channels == FOUR_CHANNELS
                await eventually(
                    lambda: wider.content_hash in health_hashes(fleet, identity),
                    "health with the new hash",
                )

                # SIGHUP with a changed edge.toml: the document stays over the new file.
                text = config.path.read_text().replace(
                    "apply_deadline_s = 8", "apply_deadline_s = 9"
                )
                config.path.write_text(text)
                service.request_reload()
                await eventually(lambda: service.reloads == 1, "the reload")
                assert service.config.document_seq == 8
                assert service.config.config.apply_deadline_s == 9
                assert service.config.radio.channels == FOUR_CHANNELS
                # Applied in the running agent: nothing to restart for it.
                assert service.agent is agent
                assert concentrator.radio_configs[-1].channels == FOUR_CHANNELS
                await _up(service)
            finally:
                service.request_stop()
                assert await running == 0
            # What the technician sees at the gateway.
            result = CliRunner().invoke(edge_command, ["status", "--config", str(config.path)])
            lines = [line for line in result.stdout.splitlines() if line.startswith("config ")]
            assert lines == [
                f"config    document seq 8, sha256 {wider.content_hash.hex()[:16]};"
                " last report: applied seq 8"
            ]

            # The gateway dies while trying a document (the trial is stored, nothing else).
            crashed = ConfigKeeper(
                config.gateway.state_dir,
                gateway_id=GATEWAY,
                trusted=keys.key.public_key(),
                signing_key=identity,
            )
            factory = load_config(config.path)
            trial = crashed.consider(
                documents.signed(documents.doc(9, health_interval_s=2)), factory, factory
            )
            assert trial.action == APPLY
            crashed.begin_trial(trial)

            # Started again on the same state folder: document 8 runs, the trial of 9 is
            # reported interrupted, and an older document is refused.
            reported = len(fleet.payloads("config/status"))
            service = AgentService(factory, load_keys(factory))
            assert service.config.document_seq == 8
            running = asyncio.create_task(service.run())
            try:
                await _up(service)
                assert concentrator.radio_configs[-1].channels == FOUR_CHANNELS
                await eventually(
                    lambda: states(fleet, identity, 9) == ["rolled_back"], "interrupted reported"
                )
                assert last(fleet, identity, 9).reason == "interrupted"
                await documents.publish(documents.signed(live))
                await eventually(
                    lambda: states(fleet, identity, 5) == ["received", "applied", "rejected"],
                    "the old seq refused",
                )
                assert last(fleet, identity, 5).reason == "replayed"
                # Document 8, retained before, came again at the start: not applied twice.
                assert states(fleet, identity, 8) == ["received", "applied"]
                assert len(fleet.payloads("config/status")) == reported + 2
            finally:
                service.request_stop()
                assert await running == 0

    asyncio.run(scenario())


def _flip(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[-3] ^= 0x40
    return bytes(changed)


def test_an_offline_gateway_takes_the_retained_document_and_rolls_back_a_dead_broker(
    broker: BrokerServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        keys = Fleet(tmp_path / "keys")
        identity = keys.identity
        async with (
            EmulatedConcentrator(tmp_path / "dev", seed=22) as concentrator,
            FleetSide(broker) as fleet,
            aiomqtt.Client(broker.host, broker.port, identifier="fleet-config") as publisher,
        ):
            documents = Documents(keys, broker, publisher)
            config = _config(tmp_path, broker, concentrator.path, deadline_s=2)
            # Published while the gateway is off: it is there, retained, when the gateway starts.
            waiting = documents.doc(3, health_interval_s=2, log_level="debug")
            await documents.publish(documents.signed(waiting))
            service = AgentService(config, load_keys(config))
            running = asyncio.create_task(service.run())
            try:
                await eventually(
                    lambda: states(fleet, identity, 3) == ["received", "applied"], "applied 3"
                )
                assert service.agent.config.health.interval_s == 2
                assert logging.getLogger().level == logging.DEBUG

                # A broker the gateway cannot reach: the agent restarts for it, fails its
                # self-check at the deadline, and comes back on the broker it had.
                dead = documents.doc(4, mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
                await documents.publish(documents.signed(dead))
                await eventually(
                    lambda: states(fleet, identity, 4) == ["received", "rolled_back"],
                    "rolled back 4",
                )
                rolled = last(fleet, identity, 4)
                assert rolled.reason == "broker"
                assert rolled.running_hash == waiting.content_hash
                await _up(service)
                assert (service.config.mqtt.host, service.config.mqtt.port) == (
                    broker.host,
                    broker.port,
                )
                assert service.config.document_seq == 3
            finally:
                service.request_stop()
                assert await running == 0
        # The service put the log level back as it found it.
        assert logging.getLogger().level == logging.INFO

    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.INFO)
    try:
        asyncio.run(scenario())
    finally:
        root.setLevel(saved)
