"""The agent with each radio backend the configuration can name, and with wired nodes.

Each test writes an ``edge.toml`` as a gateway owner would (``[radio] backend = ...``,
``[wired]``), runs the real :class:`EdgeAgent` against the embedded broker, drives the emulated
hardware (a RAK3172 on a pty, a Semtech packet forwarder over UDP, wired nodes on a pty bus),
and checks on the broker, as the fleet would, that every reading arrived signed, exactly once,
with exactly its values. The agent's supervisor and watchdog are checked here too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

import pytest

from owlgate.codecs.gwmp import Stat
from owlgate.codecs.node.telemetry import decode_batch
from owlgate.codecs.signed import verify
from owlgate.edge.agent import EdgeAgent
from owlgate.edge.config import EdgeConfig
from owlgate.edge.errors import ConfigError
from owlgate.edge.semtech_udp import SemtechUdpBackend
from owlgate.edge.state import StateDb, StoredSession
from owlgate.hil.devices import EmulatedDevice
from owlgate.hil.packet_forwarder import EmulatedPacketForwarder
from owlgate.hil.rak3172 import EmulatedRak3172
from owlgate.hil.wired_nodes import EmulatedWiredBus
from tests.edge.test_agent import GATEWAY, Fleet, FleetSide, eventually, write_config
from tests.mqtt_servers import BrokerServer

pytest_plugins = ["tests.brokers"]

FORWARDER_EUI = bytes.fromhex("aa555a0000000101")
NODE_EUIS = (bytes.fromhex("70b3d57ed000a001"), bytes.fromhex("70b3d57ed000a002"))


def _config(folder: Path, broker: BrokerServer, radio: str, extra: str = "") -> EdgeConfig:
    return write_config(folder, broker, radio=radio, extra=extra)


def _devices(count: int) -> list[EmulatedDevice]:
    return [
        EmulatedDevice.abp(
            "parking-v1",
            bytes.fromhex(f"70b3d57ed00002{index:02x}"),
            dev_addr=0x26030000 + index,
            nwk_s_key=bytes([index + 1]) * 16,
            app_s_key=bytes([index + 0x81]) * 16,
            seed=index,
        )
        for index in range(count)
    ]


def _store_sessions(config: EdgeConfig, devices: list[EmulatedDevice]) -> None:
    # Sessions as an earlier run of the agent left them (the fleet sent them then).
    config.gateway.state_dir.mkdir(parents=True, exist_ok=True)
    with StateDb.in_dir(config.gateway.state_dir) as state:
        for device in devices:
            assert device.keys is not None
            assert device.dev_addr is not None
            assert device.keys.nwk_s_key is not None
            assert device.keys.app_s_key is not None
            state.save_session(
                StoredSession(
                    device.dev_eui,
                    device.dev_addr,
                    device.profile_id,
                    device.keys.nwk_s_key,
                    device.keys.app_s_key,
                ),
                now=0.0,
            )


def _received(fleet: FleetSide, keys: Fleet) -> list[tuple[bytes, int | None, dict[str, object]]]:
    found: list[tuple[bytes, int | None, dict[str, object]]] = []
    for message in fleet.payloads("telemetry"):
        batch = decode_batch(verify(message, keys.identity.public_key()).payload)
        assert batch.gateway_id == GATEWAY
        found.extend((r.dev_eui, r.fcnt, r.values) for r in batch.readings)
    return found


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _run(agent: EdgeAgent) -> asyncio.Task[None]:
    task = asyncio.create_task(agent.run())
    await eventually(
        lambda: agent.uplink is not None and agent.uplink.connected, "the uplink to connect"
    )
    return task


async def _stop(agent: EdgeAgent, task: asyncio.Task[None]) -> None:
    agent.stop()
    await asyncio.wait_for(task, 15)


def test_rak3172_backend_from_the_configuration(
    tmp_path: Path, embedded_broker: BrokerServer
) -> None:
    keys = Fleet(tmp_path / "keys")
    devices = _devices(3)

    async def scenario() -> None:
        async with EmulatedRak3172(tmp_path, firmware_style="legacy") as module:
            config = _config(
                tmp_path,
                embedded_broker,
                f'backend = "rak3172"\nport = "{module.path}"\n'
                "channels = [{frequency_hz = 868100000, spreading_factors = [7]}]",
            )
            _store_sessions(config, devices)
            agent = EdgeAgent(config, keys=None)
            async with FleetSide(embedded_broker) as fleet:
                task = await _run(agent)
                await eventually(lambda: agent.radio_connected, "the RAK3172 in P2P receive")
                # The backend switched the module from LoRaWAN to P2P and set the channel.
                assert module.work_mode == 0
                assert module.commands_of("P2P")[-1] == "AT+P2P=868100000:7:125:0:8:14"
                sent = []
                for round_ in range(4):
                    for device in devices:
                        phy, values = device.uplink(1_764_000_000 + round_)
                        assert module.inject(phy, rssi_dbm=-70 - round_, snr_db=8)
                        sent.append((device.dev_eui, device.f_cnt - 1, values))
                await eventually(lambda: len(_received(fleet, keys)) == len(sent), "12 readings")
                assert sorted(_received(fleet, keys), key=repr) == sorted(sent, key=repr)
                status = agent.status(agent._radio, agent.uplink, agent._state)  # type: ignore[arg-type]
                assert status["radio"]["backend"] == "rak3172"
                assert status["radio"]["rx_delivered"] == 12
                await _stop(agent, task)

    asyncio.run(scenario())


def test_semtech_udp_backend_from_the_configuration(
    tmp_path: Path, embedded_broker: BrokerServer
) -> None:
    keys = Fleet(tmp_path / "keys")
    devices = _devices(2)
    port = _free_udp_port()
    config = _config(
        tmp_path,
        embedded_broker,
        f'backend = "semtech-udp"\nlisten = "127.0.0.1:{port}"\n'
        f'gateway_eui = "{FORWARDER_EUI.hex()}"',
    )
    _store_sessions(config, devices)

    async def scenario() -> None:
        agent = EdgeAgent(config)
        async with FleetSide(embedded_broker) as fleet:
            task = await _run(agent)
            async with EmulatedPacketForwarder(
                "127.0.0.1", port, gateway_eui=FORWARDER_EUI, keepalive_s=0.2
            ) as forwarder:
                await eventually(lambda: agent.radio_connected, "the forwarder's PULL_DATA")
                sent = []
                for round_ in range(3):
                    phys = []
                    for device in devices:
                        phy, values = device.uplink(1_764_000_000 + round_)
                        phys.append(phy)
                        sent.append((device.dev_eui, device.f_cnt - 1, values))
                    # Both devices' frames in one PUSH_DATA, as a forwarder batches them.
                    token = forwarder.push(*phys)
                    await forwarder.wait_push_ack(token, timeout_s=5)
                await eventually(lambda: len(_received(fleet, keys)) == len(sent), "6 readings")
                assert sorted(_received(fleet, keys), key=repr) == sorted(sent, key=repr)
                # A forwarder of another gateway is not this agent's radio.
                stranger = EmulatedPacketForwarder(
                    "127.0.0.1", port, gateway_eui=bytes.fromhex("aa555a00000009ff")
                )
                async with stranger:
                    phy, _ = devices[0].uplink(1_764_000_100)
                    stranger.push(phy)
                    radio = agent._radio
                    assert isinstance(radio, SemtechUdpBackend)
                    await eventually(lambda: radio.foreign_datagrams >= 1, "the stranger dropped")
                    assert agent.radio_counters is not None
                    assert agent.radio_counters.rx_received == 6
                    forwarder.send_stat(Stat(rxnb=7, rxok=6, rxfw=6, ackr=100.0, dwnb=0, txnb=0))
                    await eventually(
                        lambda: radio.forwarder_stats.reports == 1, "the forwarder's stat"
                    )
                    status = agent.status(radio, agent.uplink, agent._state)  # type: ignore[arg-type]
                    assert status["radio"]["forwarder"] == {
                        "reports": 1,
                        "rx_received": 7,
                        "rx_ok": 6,
                        "rx_forwarded": 6,
                        "tx_requested": 0,
                        "tx_sent": 0,
                    }
                    assert status["radio"]["foreign_datagrams"] >= 1
                await _stop(agent, task)
        assert len(_received(fleet, keys)) == 6

    asyncio.run(scenario())


def test_wired_nodes_beside_the_radio(tmp_path: Path, embedded_broker: BrokerServer) -> None:
    keys = Fleet(tmp_path / "keys")

    async def scenario() -> None:
        async with EmulatedRak3172(tmp_path, link_name="ttyRAK0") as module:
            bus = EmulatedWiredBus(tmp_path)
            nodes = [
                bus.add_node(1, NODE_EUIS[0], settings={"interval_s": 300}),
                bus.add_node(2, NODE_EUIS[1]),
            ]
            async with bus:
                config = _config(
                    tmp_path,
                    embedded_broker,
                    f'backend = "rak3172"\nport = "{module.path}"',
                    f"""
[wired]
port = "{bus.path}"
poll_interval_s = 0.2
response_timeout_s = 0.2
nodes = [
  {{ address = 1, dev_eui = "{NODE_EUIS[0].hex()}", settings = {{ interval_s = 60 }} }},
  {{ address = 2, dev_eui = "{NODE_EUIS[1].hex()}" }},
]
""",
                )
                agent = EdgeAgent(config)
                async with FleetSide(embedded_broker) as fleet:
                    task = await _run(agent)
                    for level in range(5):
                        for node in nodes:
                            node.add_reading({"fill_pct": level * 10 + node.address})
                    await eventually(lambda: len(_received(fleet, keys)) == 10, "10 readings")
                    received = _received(fleet, keys)
                    for index, eui in enumerate(NODE_EUIS):
                        mine = [(seq, values) for dev, seq, values in received if dev == eui]
                        assert mine == [
                            (seq, {"fill_pct": level * 10 + index + 1})
                            for level, seq in enumerate(range(1, 6))
                        ]
                    # Stored, so acknowledged: the nodes dropped them; the settings applied.
                    await eventually(
                        lambda: bus.acked(1) == 5 and bus.acked(2) == 5, "the nodes acked to 5"
                    )
                    assert bus.pending(1) == []
                    assert bus.pending(2) == []
                    assert bus.applied_settings(1)[1] == {"interval_s": 60}
                    await _stop(agent, task)
                status = json.loads((config.gateway.state_dir / "status.json").read_text())
                assert status["agent"]["wired_readings"] == 10
                assert [node["dev_eui"] for node in status["wired"]["nodes"]] == [
                    eui.hex() for eui in NODE_EUIS
                ]
                assert all(node["answering"] for node in status["wired"]["nodes"])
            with StateDb.in_dir(config.gateway.state_dir) as state:
                assert state.node_seqs() == dict.fromkeys(NODE_EUIS, 5)

    asyncio.run(scenario())


def test_a_failing_loop_is_restarted_and_the_others_go_on(
    tmp_path: Path,
    embedded_broker: BrokerServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Fleet(tmp_path / "keys")
    devices = _devices(1)

    async def scenario() -> None:
        async with EmulatedRak3172(tmp_path) as module:
            config = _config(
                tmp_path, embedded_broker, f'backend = "rak3172"\nport = "{module.path}"'
            )
            _store_sessions(config, devices)
            agent = EdgeAgent(config)
            calls = 0
            original = EdgeAgent._receive

            async def flaky_receive(self: EdgeAgent, *args: object) -> None:
                # The first run of the receive loop fails as a bug would; later runs work.
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("a bug in the receive loop")
                await original(self, *args)  # type: ignore[arg-type]

            monkeypatch.setattr(EdgeAgent, "_receive", flaky_receive)
            async with FleetSide(embedded_broker) as fleet:
                task = await _run(agent)
                await eventually(lambda: calls >= 2, "the receive loop to start again")
                assert agent.counters.loop_restarts == 1
                assert agent.watchdog_ok()
                await eventually(lambda: agent.radio_connected, "the radio")
                phy, values = devices[0].uplink(1_764_000_000)
                assert module.inject(phy, rssi_dbm=-80, snr_db=5)
                await eventually(lambda: len(_received(fleet, keys)) == 1, "the reading")
                assert _received(fleet, keys) == [(devices[0].dev_eui, 0, values)]
                # A status loop that stopped running is what the watchdog reports as stuck.
                agent._status_beat -= 1000
                assert not agent.watchdog_ok()
                await _stop(agent, task)
        assert any(
            "receive loop failed: RuntimeError: a bug in the receive loop" in r.getMessage()
            for r in caplog.records
        )

    with caplog.at_level(logging.ERROR, logger="owlgate.edge.agent"):
        asyncio.run(scenario())


#: A setting name longer than the wired protocol's 32 bytes.
LONG_NAME = "reporting_interval_in_seconds_for_bins"


def test_wired_node_settings_the_protocol_cannot_carry_are_a_config_error(
    tmp_path: Path, embedded_broker: BrokerServer
) -> None:
    Fleet(tmp_path / "keys")
    with pytest.raises(ConfigError, match=r"\[wired\] nodes\[0\]\.settings: "):
        _config(
            tmp_path,
            embedded_broker,
            'port = "/dev/ttyACM0"',
            f"""
[wired]
port = "/dev/ttyAMA0"
nodes = [{{ address = 1, dev_eui = "{NODE_EUIS[0].hex()}", settings = {{ {LONG_NAME} = 1 }} }}]
""",
        )
