"""The fleet's MQTT supervisor: stable client ids, PUBACKs in arrival order and only when a
message is settled, and the one place that reaches inside aiomqtt for it."""

from __future__ import annotations

import asyncio

import aiomqtt
import paho.mqtt.client as paho
import pytest

from owlgate.fleet.mqtt import (
    Delivery,
    InstanceNameError,
    PubackQueue,
    check_instance,
    client_id,
    default_instance,
    paho_client,
)
from tests.mqtt_servers import BrokerServer, MosquittoServer

pytest_plugins = ["tests.brokers"]


class _Message:
    """What PubackQueue reads of an aiomqtt.Message."""

    def __init__(self, mid: int, qos: int = 1) -> None:
        self.mid = mid
        self.qos = qos


def _queue() -> tuple[PubackQueue, list[int]]:
    sent: list[int] = []

    def ack(mid: int, qos: int) -> int:
        assert qos == 1
        sent.append(mid)
        return paho.MQTT_ERR_SUCCESS

    return PubackQueue(ack), sent


def _receive(acks: PubackQueue, mid: int, qos: int = 1) -> Delivery:
    message = _Message(mid, qos)
    return acks.receive(message)  # type: ignore[arg-type]


def test_pubacks_wait_for_the_messages_before_them() -> None:
    acks, sent = _queue()
    first, second, third = (_receive(acks, mid) for mid in (7, 8, 9))
    # Settled out of order (the third refused at once, the second stored first)...
    acks.settle(third)
    acks.settle(second)
    assert sent == []
    assert len(acks) == 3
    # ...acknowledged in the order the PUBLISHes arrived (MQTT 3.1.1 section 4.6).
    acks.settle(first)
    assert sent == [7, 8, 9]
    assert len(acks) == 0
    assert acks.sent == 3


def test_a_qos0_message_keeps_its_place_but_sends_nothing() -> None:
    acks, sent = _queue()
    one = _receive(acks, 1)
    zero = _receive(acks, 0, qos=0)
    two = _receive(acks, 2)
    acks.settle(zero)
    acks.settle(two)
    assert sent == []
    acks.settle(one)
    assert sent == [1, 2]


def test_the_paho_client_is_where_paho_client_looks() -> None:
    """Fails if an aiomqtt upgrade moves or renames the paho client it wraps: manual
    acknowledgement would then have to be ported, not silently lost."""

    async def inner() -> paho.Client:
        return paho_client(aiomqtt.Client("127.0.0.1", 1, identifier="probe"))

    client = asyncio.run(inner())
    assert isinstance(client, paho.Client)
    assert callable(client.manual_ack_set)
    assert callable(client.ack)

    class NotAiomqtt:
        _client = object()

    with pytest.raises(TypeError, match="paho client"):
        paho_client(NotAiomqtt())  # type: ignore[arg-type]


def test_client_ids_come_from_the_instance_name() -> None:
    assert client_id("north-1", "ingest") == "owlgate-fleet-north-1-ingest"
    assert client_id("north-1", "control") == "owlgate-fleet-north-1-control"
    assert check_instance(default_instance()) == default_instance()
    for bad in ("", "-x", "a/b", "a b", "x" * 65, "#", "a+b"):
        with pytest.raises(InstanceNameError):
            check_instance(bad)


async def _unacknowledged_then_again(server: BrokerServer) -> tuple[list[bytes], list[bytes]]:
    """A manual-ack subscriber with a persistent session receives three messages and
    acknowledges none, disconnects, and connects again: what it got each time."""

    def subscriber() -> aiomqtt.Client:
        client = aiomqtt.Client(
            server.host,
            server.port,
            identifier="manual-ack-test",
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
        )
        paho_client(client).manual_ack_set(True)
        return client

    async def drain(client: aiomqtt.Client, count: int) -> list[bytes]:
        got: list[bytes] = []
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append(message.payload)
                if len(got) == count:
                    return got
        return got

    async with subscriber() as client:
        await client.subscribe("test/manual-ack", qos=1)
        async with aiomqtt.Client(server.host, server.port, identifier="pub") as publisher:
            for n in range(3):
                await publisher.publish("test/manual-ack", f"m{n}".encode(), qos=1)
        first = await drain(client, 3)
    async with subscriber() as client:
        again = await drain(client, 3)
    return first, again


def test_an_unacknowledged_message_comes_back(mosquitto: MosquittoServer) -> None:
    """Manual acknowledgement really holds the PUBACK back: the broker delivers the messages
    again on the next connection of the session (MQTT 3.1.1 section 4.4). Mosquitto only:
    amqtt 0.12.1 forgets a message it sent once the connection closes (docs/fleet.md)."""
    first, again = asyncio.run(_unacknowledged_then_again(mosquitto))
    assert first == [b"m0", b"m1", b"m2"]
    assert again == [b"m0", b"m1", b"m2"]
