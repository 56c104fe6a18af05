"""The MQTT uplink against real brokers: the embedded amqtt and a Mosquitto of the test's own.

A fake outbox records every ack; an independent subscriber records what the broker delivered.
"Acked only after PUBACK" is checked as: every acked entry reached the subscriber, and nothing
is acked while no broker is reachable.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiomqtt
import pytest

from owlgate.edge.uplink import Uplink, UplinkError, backoff_delay_s
from tests.mqtt_servers import BrokerServer, TcpProxy

pytest_plugins = ["tests.brokers"]

GATEWAY = bytes.fromhex("b827ebfffe000001")
PREFIX = "owlgate/v1/gw/b827ebfffe000001/"
STATE = PREFIX + "state"
WAIT_S = 15.0


@dataclass(frozen=True)
class Entry:
    id: int
    topic: str
    payload: bytes


class FakeOutbox:
    """The outbox interface in memory; records acks in order (duplicates included)."""

    def __init__(self) -> None:
        self.entries: dict[int, Entry] = {}
        self.acked: list[int] = []
        self._next_id = 1

    def add(self, payload: bytes, topic: str = "telemetry") -> int:
        entry_id = self._next_id
        self._next_id += 1
        self.entries[entry_id] = Entry(entry_id, topic, payload)
        return entry_id

    def pending(self, limit: int) -> list[Entry]:
        return [self.entries[key] for key in sorted(self.entries)[:limit]]

    def ack_many(self, entry_ids: Sequence[int]) -> None:
        for entry_id in entry_ids:
            self.acked.append(entry_id)
            self.entries.pop(entry_id, None)

    def depth(self) -> int:
        return len(self.entries)


class Recorder:
    """A subscriber to every gateway topic, recording (topic, payload, retain) as delivered."""

    def __init__(self, server: BrokerServer, name: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lost = False
        self._client = aiomqtt.Client(server.host, server.port, identifier=name)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        await self._client.subscribe("owlgate/v1/gw/#", qos=1)
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
        # Ends with MqttError when the broker goes away (the restart test stops it).
        try:
            async for message in self._client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                self.messages.append((message.topic.value, payload, message.retain))
        except aiomqtt.MqttError:
            self.lost = True

    def payloads(self, topic: str) -> list[bytes]:
        return [payload for name, payload, _ in self.messages if name == topic]


def fast_uplink(outbox: FakeOutbox, host: str, port: int, seed: int) -> Uplink:
    """Fast, seeded backoff: reconnections happen within a fraction of a second in tests."""
    return Uplink(
        outbox,
        GATEWAY,
        host,
        port,
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
        keepalive_s=5,
        max_inflight=8,
        connect_timeout_s=5.0,
        rng=random.Random(seed),
    )


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after WAIT_S."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not condition():  # noqa: ASYNC110 - the conditions are plain attributes
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out waiting for: {what}")


async def retained_state(server: BrokerServer) -> bytes:
    """The retained state message a newly subscribing client receives."""
    async with aiomqtt.Client(server.host, server.port) as client:
        await client.subscribe(STATE, qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(client.messages))
    assert message.retain
    assert isinstance(message.payload, bytes)
    return message.payload


def test_publishes_qos1_acks_after_puback_and_says_goodbye(broker: BrokerServer) -> None:
    async def scenario() -> None:
        outbox = FakeOutbox()
        first = [f"batch {n}".encode() for n in range(20)]
        for payload in first:
            outbox.add(payload)
        async with Recorder(broker, "watcher") as watcher:
            uplink = fast_uplink(outbox, broker.host, broker.port, 1)
            async with uplink:
                await eventually(lambda: outbox.depth() == 0, "the first 20 entries acked")
                await eventually(
                    lambda: len(watcher.payloads(PREFIX + "telemetry")) == 20, "20 delivered"
                )
                assert watcher.payloads(STATE)[0] == b"online"
                assert await retained_state(broker) == b"online"
                # New entries while connected: notify() wakes the drain.
                outbox.add(b"late", topic="telemetry")
                uplink.notify()
                await eventually(lambda: outbox.depth() == 0, "the late entry acked")
                assert await uplink.publish_now("health", b"h1") is True
                assert uplink.connected
                assert uplink.last_rtt_ms is not None
            await eventually(lambda: b"offline" in watcher.payloads(STATE), "offline on close")
        assert sorted(outbox.acked) == list(range(1, 22))
        assert len(set(outbox.acked)) == len(outbox.acked)
        delivered = watcher.payloads(PREFIX + "telemetry")
        assert sorted(delivered) == sorted([*first, b"late"])
        assert watcher.payloads(PREFIX + "health") == [b"h1"]
        assert watcher.payloads(STATE) == [b"online", b"offline"]
        counters = (uplink.published, uplink.reconnects, uplink.direct_published, uplink.connected)
        assert counters == (21, 0, 1, False)
        assert await uplink.publish_now("health", b"h2") is False
        assert uplink.direct_dropped == 1
        assert await retained_state(broker) == b"offline"

    asyncio.run(scenario())


def test_unclean_drop_fires_the_will_then_reconnects(broker: BrokerServer) -> None:
    async def scenario() -> None:
        outbox = FakeOutbox()
        async with (
            Recorder(broker, "watcher") as watcher,
            TcpProxy(broker.host, broker.port) as proxy,
        ):
            uplink = fast_uplink(outbox, proxy.host, proxy.port, 2)
            async with uplink:
                await eventually(lambda: uplink.connected, "first connection")
                await eventually(lambda: watcher.payloads(STATE) == [b"online"], "online")
                # Keep the uplink out while the broker notices the dead connection, so the
                # order on the state topic does not depend on a race.
                await proxy.pause()
                proxy.sever()
                await eventually(
                    lambda: watcher.payloads(STATE) == [b"online", b"offline"], "the Will"
                )
                assert await retained_state(broker) == b"offline"
                await eventually(lambda: uplink.reconnects >= 2, "failed reconnection attempts")
                assert not uplink.connected
                await proxy.resume()
                await eventually(lambda: uplink.connected, "reconnection")
                await eventually(lambda: watcher.payloads(STATE)[-1] == b"online", "online again")
                assert await retained_state(broker) == b"online"
                outbox.add(b"after")
                uplink.notify()
                await eventually(lambda: outbox.acked == [1], "entry after reconnection")
        assert watcher.payloads(PREFIX + "telemetry") == [b"after"]

    asyncio.run(scenario())


def test_broker_restart_delivers_everything_pending(broker: BrokerServer) -> None:
    async def scenario() -> None:
        outbox = FakeOutbox()
        for n in range(5):
            outbox.add(f"before {n}".encode())
        async with TcpProxy(broker.host, broker.port) as proxy:
            uplink = fast_uplink(outbox, proxy.host, proxy.port, 3)
            async with uplink:
                async with Recorder(broker, "watcher-1") as watcher:
                    await eventually(lambda: outbox.acked == [1, 2, 3, 4, 5], "first five acked")
                    await eventually(
                        lambda: len(watcher.payloads(PREFIX + "telemetry")) == 5, "five delivered"
                    )
                    # The proxy refuses new connections from here on (established ones carry
                    # on), so the uplink's attempts fail fast instead of being accepted and
                    # cut before CONNACK, which aiomqtt only notices at its connect timeout.
                    # It also keeps the uplink out until the second watcher has subscribed.
                    await proxy.pause()
                    await asyncio.to_thread(broker.stop)
                    await eventually(lambda: watcher.lost, "the watcher's connection lost")
                await eventually(lambda: not uplink.connected, "connection lost")
                for n in range(5):
                    outbox.add(f"during {n}".encode())
                uplink.notify()
                await eventually(lambda: uplink.reconnects >= 3, "attempts while down")
                assert outbox.acked == [1, 2, 3, 4, 5]
                await asyncio.to_thread(broker.start)
                async with Recorder(broker, "watcher-2") as watcher2:
                    await proxy.resume()
                    await eventually(lambda: outbox.depth() == 0, "everything pending acked")
                    await eventually(
                        lambda: len(watcher2.payloads(PREFIX + "telemetry")) == 5,
                        "five delivered after the restart",
                    )
                    assert uplink.connected
            assert sorted(watcher2.payloads(PREFIX + "telemetry")) == [
                f"during {n}".encode() for n in range(5)
            ]
        assert sorted(outbox.acked) == list(range(1, 11))
        assert uplink.published == 10
        assert uplink.reconnects >= 3

    asyncio.run(scenario())


def test_online_waits_for_the_announce_gate(embedded_broker: BrokerServer) -> None:
    # Nothing is published before the gate opens: not online, not the outbox.
    async def scenario() -> None:
        outbox = FakeOutbox()
        outbox.add(b"held")
        gate = asyncio.Event()
        async with Recorder(embedded_broker, "watcher") as watcher:
            uplink = Uplink(
                outbox, GATEWAY, embedded_broker.host, embedded_broker.port, announce_gate=gate.wait
            )
            async with uplink:
                await asyncio.sleep(0.5)
                assert watcher.messages == []
                assert outbox.depth() == 1
                assert not uplink.announced
                gate.set()
                await eventually(lambda: outbox.depth() == 0 and uplink.announced, "drained")
                await eventually(lambda: watcher.payloads(STATE) == [b"online"], "online")
                # announce() publishes online again on the same connection.
                assert await uplink.announce() is True
                await eventually(
                    lambda: watcher.payloads(STATE) == [b"online", b"online"], "online again"
                )
            assert not uplink.announced
            assert await uplink.announce() is False

    asyncio.run(scenario())


def test_a_gate_that_stays_closed_delays_online_only_for_a_while(
    embedded_broker: BrokerServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        outbox = FakeOutbox()
        never = asyncio.Event()
        async with Recorder(embedded_broker, "watcher") as watcher:
            uplink = Uplink(
                outbox,
                GATEWAY,
                embedded_broker.host,
                embedded_broker.port,
                announce_gate=never.wait,
                announce_wait_s=0.3,
            )
            async with uplink:
                await eventually(lambda: watcher.payloads(STATE) == [b"online"], "online")
        assert "announcing online anyway" in caplog.text

    asyncio.run(scenario())


def test_backoff_is_full_jitter_capped_and_seedable() -> None:
    delays = [backoff_delay_s(n, 0.5, 8.0, random.Random(9)) for n in range(10)]
    again = [backoff_delay_s(n, 0.5, 8.0, random.Random(9)) for n in range(10)]
    assert delays == again
    for attempt, delay in enumerate(delays):
        assert 0.0 <= delay <= min(8.0, 0.5 * 2**attempt)
    rng = random.Random(4)
    many = [backoff_delay_s(1000, 0.5, 8.0, rng) for _ in range(200)]
    assert max(many) <= 8.0
    # Full jitter spreads over the whole range, not just near the cap.
    assert min(many) < 1.0 < 7.0 < max(many)


def test_settings_are_checked() -> None:
    async def scenario() -> None:
        with pytest.raises(UplinkError, match="8 bytes"):
            Uplink(FakeOutbox(), b"\x01" * 7, "127.0.0.1")
        with pytest.raises(UplinkError, match="max_inflight"):
            Uplink(FakeOutbox(), GATEWAY, "127.0.0.1", max_inflight=0)
        with pytest.raises(UplinkError, match="backoff"):
            Uplink(FakeOutbox(), GATEWAY, "127.0.0.1", backoff_base_s=2, backoff_cap_s=1)

    asyncio.run(scenario())
