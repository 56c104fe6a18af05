"""Configuration documents restart only the parts they change, on one running gateway: a real
:class:`AgentService` with the emulated concentrator, an emulated ABP device and a broker of
the test's own (amqtt and Mosquitto), the test playing the fleet.

What restarted is read where a user sees it: the ``RADIO_CONFIG`` messages the concentrator
received, the ``online`` announcements on the gateway's retained ``state`` topic (one per
uplink connection, seen by the broker's other clients), the gateway's signed status reports,
health messages and telemetry; the uplink's and the agent's connection counters say the same
from the inside.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from owlgate.codecs.concentrator import (
    Channel,
    CodingRate,
    CrcStatus,
    RxFrame,
    TxAck,
    TxRequest,
)
from owlgate.codecs.control import SessionUpdate, encode_session_update
from owlgate.codecs.health import decode_health
from owlgate.codecs.node.telemetry import decode_batch
from owlgate.codecs.signed import sign, verify
from owlgate.edge.agent import EdgeAgent, RadioSlot
from owlgate.edge.config import DEFAULT_CHANNELS, load_keys
from owlgate.edge.errors import EdgeError, RadioDisconnected, RadioError
from owlgate.edge.radio import RadioCounters, RadioStatus
from owlgate.edge.runtime import AgentService
from owlgate.edge.uplink import Uplink
from owlgate.hil.concentrator import EmulatedConcentrator
from owlgate.hil.devices import EmulatedDevice
from tests.edge.test_agent import PREFIX, Fleet, FleetSide, eventually
from tests.edge.test_config_apply import TEN_CHANNELS, Documents, _config, last, states
from tests.mqtt_servers import BrokerServer

pytest_plugins = ["tests.brokers"]

#: Another plan the concentrator accepts (three channels, one of them new).
NEW_CHANNELS = (*DEFAULT_CHANNELS[:2], Channel(frequency_hz=867_300_000))
#: Readings the emulated device sends while a part restarts, one every this many seconds.
SEND_EVERY_S = 0.02


def _device() -> EmulatedDevice:
    return EmulatedDevice.abp(
        "parking-v1",
        bytes.fromhex("70b3d57ed00000a1"),
        dev_addr=0x260100A1,
        nwk_s_key=bytes([0xA1]) * 16,
        app_s_key=bytes([0xA2]) * 16,
        seed=11,
    )


def _readings(fleet: FleetSide, public: Ed25519PublicKey) -> list[tuple[int, dict[str, object]]]:
    # Delayed batches count too: they were sealed while the backhaul was being replaced.
    found = []
    for payload in fleet.payloads("telemetry"):
        for reading in decode_batch(verify(payload, public).payload).readings:
            assert reading.fcnt is not None
            found.append((reading.fcnt, reading.values))
    return found


def _onlines(fleet: FleetSide) -> int:
    return sum(payload == b"online" for payload in fleet.payloads("state"))


def _uplink(agent: EdgeAgent) -> Uplink:
    uplink = agent.uplink
    assert uplink is not None
    return uplink


class Sender:
    """The emulated device reporting every :data:`SEND_EVERY_S` while a part restarts."""

    def __init__(self, device: EmulatedDevice, concentrator: EmulatedConcentrator) -> None:
        self.device = device
        self.concentrator = concentrator
        self.sent: list[tuple[int, dict[str, object]]] = []
        self._task: asyncio.Task[None] | None = None

    def send(self) -> None:
        f_cnt = self.device.f_cnt
        phy, values = self.device.uplink(0.0)
        self.sent.append((f_cnt, values))
        self.concentrator.inject(phy)

    def start(self) -> None:
        self._task = asyncio.create_task(self._every())

    async def stop(self) -> None:
        task = self._task
        assert task is not None
        task.cancel()
        await asyncio.wait([task])

    async def _every(self) -> None:
        while True:
            self.send()
            await asyncio.sleep(SEND_EVERY_S)


async def _ready(
    service: AgentService, fleet: FleetSide, keys: Fleet, device: EmulatedDevice
) -> None:
    agent = service.agent
    await eventually(lambda: agent.radio_connected, "the radio configured")
    await eventually(lambda: agent.control_connected, "the control subscription")
    update = encode_session_update(SessionUpdate([keys.seal(device)], complete=True))
    await fleet.publish("keys", sign(update, keys.key))
    await eventually(agent.ready.is_set, "ready")


@dataclasses.dataclass
class _Rig:
    """A running agent on an emulated concentrator, connected and ready, and what it counted
    then (the baseline a configuration change is measured against)."""

    identity: Ed25519PrivateKey
    public: Ed25519PublicKey
    concentrator: EmulatedConcentrator
    fleet: FleetSide
    documents: Documents
    service: AgentService
    sender: Sender
    agent: EdgeAgent
    uplink: Uplink
    connections: int
    onlines: int
    controls: int
    configured: int


@asynccontextmanager
async def _running_agent(broker: BrokerServer, tmp_path: Path, *, seed: int) -> AsyncIterator[_Rig]:
    keys = Fleet(tmp_path / "keys")
    device = _device()
    async with (
        EmulatedConcentrator(tmp_path / "dev", seed=seed) as concentrator,
        FleetSide(broker) as fleet,
        aiomqtt.Client(broker.host, broker.port, identifier="fleet-config") as publisher,
    ):
        config = _config(tmp_path, broker, concentrator.path)
        service = AgentService(config, load_keys(config))
        running = asyncio.create_task(service.run())
        try:
            await _ready(service, fleet, keys, device)
            agent = service.agent
            uplink = _uplink(agent)
            yield _Rig(
                identity=keys.identity,
                public=keys.identity.public_key(),
                concentrator=concentrator,
                fleet=fleet,
                documents=Documents(keys, broker, publisher),
                service=service,
                sender=Sender(device, concentrator),
                agent=agent,
                uplink=uplink,
                connections=uplink.connections,
                onlines=_onlines(fleet),
                controls=agent.counters.control_connections,
                configured=len(concentrator.radio_configs),
            )
        finally:
            service.request_stop()
            assert await running == 0


def test_a_radio_change_restarts_only_the_radio_and_its_rollback_only_the_radio(
    broker: BrokerServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with _running_agent(broker, tmp_path, seed=31) as rig:
            identity, public, fleet, agent = rig.identity, rig.public, rig.fleet, rig.agent
            concentrator, documents, service = rig.concentrator, rig.documents, rig.service
            sender, uplink, connections = rig.sender, rig.uplink, rig.connections
            onlines, controls, configured = rig.onlines, rig.controls, rig.configured
            sender.send()
            await eventually(lambda: len(_readings(fleet, public)) == 1, "a first reading")

            # New channels: the radio alone restarts; MQTT stays connected throughout.
            sender.start()
            plan = documents.doc(2, channels=NEW_CHANNELS)
            await documents.publish(documents.signed(plan))
            await eventually(
                lambda: states(fleet, identity, 2) == ["received", "applied"], "applied 2"
            )
            assert last(fleet, identity, 2).detail is not None
            # A few more readings through the new radio, then the device stops.
            applied_at = len(sender.sent)
            await eventually(lambda: len(sender.sent) >= applied_at + 3, "3 more readings")
            await sender.stop()
            await eventually(
                lambda: _readings(fleet, public)[-1:] == sender.sent[-1:],
                "the last reading delivered",
            )
            assert len(concentrator.radio_configs) == configured + 1
            sent_config = concentrator.radio_configs[-1]
            assert sent_config.channels == NEW_CHANNELS
            assert sent_config.config_id == service.config.radio_config_id()
            assert service.agent is agent
            assert agent.uplink is uplink
            assert (uplink.connections, uplink.restarts, uplink.reconnects) == (
                connections,
                0,
                0,
            )
            assert agent.counters.control_connections == controls
            assert _onlines(fleet) == onlines
            # Every reading the radio heard is delivered once: those still queued in the
            # old backend when it closed, and those the new one received.
            heard = agent.radio_counters
            assert heard is not None
            delivered = _readings(fleet, public)
            assert len(delivered) == heard.rx_delivered
            assert len({f_cnt for f_cnt, _ in delivered}) == len(delivered)
            assert all(reading in sender.sent for reading in delivered)
            # Only what went on air in the moment the port was closed is not heard.
            assert len(delivered) >= len(sender.sent) - 2

            # The outbox bound is taken live: nothing restarts, health shows it.
            bound = documents.doc(3, channels=NEW_CHANNELS, outbox_max_bytes=8 * 1024 * 1024)
            await documents.publish(documents.signed(bound))
            await eventually(
                lambda: states(fleet, identity, 3) == ["received", "applied"], "applied 3"
            )
            since = len(fleet.payloads("health"))
            await eventually(
                lambda: any(
                    decode_health(verify(payload, public).payload).outbox_max_bytes
                    == 8 * 1024 * 1024
                    for payload in fleet.payloads("health")[since:]
                ),
                "health with the new bound",
            )
            assert len(concentrator.radio_configs) == configured + 1
            assert uplink.connections == connections
            assert _onlines(fleet) == onlines

            # Ten channels: refused (the concentrator's HELLO says it has nine), rolled back
            # by restarting the radio once more with the plan that ran; MQTT untouched.
            before = len(concentrator.radio_configs)
            hellos = len(concentrator.hellos)
            bad = documents.doc(4, channels=TEN_CHANNELS, outbox_max_bytes=8 * 1024 * 1024)
            await documents.publish(documents.signed(bad))
            await eventually(
                lambda: states(fleet, identity, 4) == ["received", "rolled_back"],
                "rolled back 4",
            )
            assert last(fleet, identity, 4).reason == "radio"
            await eventually(lambda: agent.radio_connected, "the old plan back")
            # The ten channels never reach it; the plan that ran is sent once again.
            assert [sent.channels for sent in concentrator.radio_configs[before:]] == [NEW_CHANNELS]
            assert len(concentrator.hellos) >= hellos + 2
            assert concentrator.radio_config is not None
            assert concentrator.radio_config.channels == NEW_CHANNELS
            assert service.agent is agent
            assert service.config.document_seq == 3
            assert (uplink.connections, uplink.restarts, uplink.reconnects) == (
                connections,
                0,
                0,
            )
            assert agent.counters.control_connections == controls
            assert _onlines(fleet) == onlines
            sender.send()
            await eventually(
                lambda: _readings(fleet, public)[-1:] == sender.sent[-1:],
                "a reading through the restored radio",
            )

    asyncio.run(scenario())


def test_an_mqtt_change_restarts_only_the_connections_and_loses_no_reading(
    broker: BrokerServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with _running_agent(broker, tmp_path, seed=32) as rig:
            identity, public, fleet, agent = rig.identity, rig.public, rig.fleet, rig.agent
            concentrator, documents, service = rig.concentrator, rig.documents, rig.service
            sender, uplink, connections = rig.sender, rig.uplink, rig.connections
            onlines, controls, configured = rig.onlines, rig.controls, rig.configured
            radio_counters = agent.radio_counters
            assert radio_counters is not None

            # A new keep-alive: the uplink and the control connection reconnect once each,
            # the radio goes on receiving, and every reading sent meanwhile arrives.
            sender.start()
            keepalive = documents.doc(2, mqtt_keepalive_s=20)
            await documents.publish(documents.signed(keepalive))
            await eventually(
                lambda: states(fleet, identity, 2) == ["received", "applied"], "applied 2"
            )
            await asyncio.sleep(5 * SEND_EVERY_S)
            await sender.stop()
            await eventually(
                lambda: sorted(_readings(fleet, public)) == sorted(sender.sent),
                "every reading sent during the switch",
            )
            assert len(_readings(fleet, public)) == len(sender.sent)
            assert service.config.mqtt.keepalive_s == 20
            assert service.agent is agent
            assert agent.uplink is uplink
            assert (uplink.connections, uplink.restarts, uplink.reconnects) == (
                connections + 1,
                1,
                0,
            )
            assert agent.counters.control_connections == controls + 1
            assert _onlines(fleet) == onlines + 1
            assert len(concentrator.radio_configs) == configured
            counters = agent.radio_counters
            assert counters is not None
            assert counters.reconnects == radio_counters.reconnects
            assert agent.radio_connected
        # The fleet's view of the topic is the gateway's: online last, offline at the stop.
        assert [payload for topic, payload in fleet.messages if topic == PREFIX + "state"][-1:] == [
            b"offline"
        ]

    asyncio.run(scenario())


class _Backend:
    """A radio backend of the test's own: the frames it was given, until closed."""

    def __init__(self, name: str, *, fails: bool = False) -> None:
        self.name = name
        self.fails = fails
        self.opened = self.closed = 0
        self._queue: asyncio.Queue[RxFrame | None] = asyncio.Queue()
        self._counters = RadioCounters()

    async def __aenter__(self) -> Self:
        if self.fails:
            raise RadioError(f"{self.name} cannot start")
        self.opened += 1
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.closed += 1
        self._queue.put_nowait(None)

    def hear(self, frame: RxFrame) -> None:
        self._counters.rx_received += 1
        self._queue.put_nowait(frame)

    async def frames(self) -> AsyncIterator[RxFrame]:
        while (frame := await self._queue.get()) is not None:
            self._counters.rx_delivered += 1
            yield frame

    async def transmit(self, request: TxRequest, *, timeout_s: float | None = None) -> TxAck:
        raise RadioDisconnected(f"{self.name} does not transmit")

    @property
    def counters(self) -> RadioCounters:
        return dataclasses.replace(self._counters)

    @property
    def status(self) -> RadioStatus:
        return RadioStatus(self.opened > self.closed, self.name, None, None, None)


def _frame(index: int) -> RxFrame:
    return RxFrame(
        frequency_hz=868_100_000,
        sf=7,
        bandwidth_hz=125_000,
        coding_rate=CodingRate.CR_4_5,
        rssi_dbm=-60,
        snr_db=7.0,
        timestamp_us=index,
        crc_status=CrcStatus.OK,
        payload=bytes([index]),
    )


def test_the_radio_slot_hands_over_frames_and_counters_across_replacements() -> None:
    async def scenario() -> None:
        first, broken, second = _Backend("first"), _Backend("broken", fails=True), _Backend("2")
        received: list[int] = []
        slot = RadioSlot(first)
        async with slot:

            async def receive() -> None:
                # One by one, not a comprehension: the test reads the list while this runs.
                async for rx in slot.frames():
                    received.append(rx.timestamp_us)  # noqa: PERF401

            receiver = asyncio.create_task(receive())
            # Iterating, as the agent's receive loop is when a document arrives.
            await asyncio.sleep(0)
            first.hear(_frame(1))
            first.hear(_frame(2))
            # Heard before the switch, still queued: delivered after it, not dropped.
            with pytest.raises(RadioError, match="broken cannot start"):
                await slot.replace(broken)
            assert (first.opened, first.closed) == (1, 1)
            assert slot.backend is broken
            assert not slot.status.connected
            with pytest.raises(RadioDisconnected):
                await slot.transmit(
                    TxRequest(
                        frequency_hz=869_525_000,
                        sf=9,
                        bandwidth_hz=125_000,
                        power_dbm=14,
                        payload=b"\x01",
                        timestamp_us=0,
                        token=1,
                    )
                )
            await slot.replace(second)
            # The backend that never started is not closed; the new one is open.
            assert (broken.opened, broken.closed, second.opened) == (0, 0, 1)
            second.hear(_frame(3))
            await eventually(lambda: len(received) == 3, "three frames")
            assert received == [1, 2, 3]
            assert slot.counters.rx_received == 3
            assert slot.counters.rx_delivered == 3
            assert slot.replacements == 2
        # Closing the slot closes the backend in it and ends the frames.
        await asyncio.wait_for(receiver, 5)
        assert second.closed == 1
        with pytest.raises(EdgeError, match="closed"):
            await slot.replace(_Backend("late"))

    asyncio.run(scenario())
