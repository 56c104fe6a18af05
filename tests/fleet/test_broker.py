"""The embedded broker and broker URLs."""

from __future__ import annotations

import asyncio
import socket

import aiomqtt
import pytest

from owlgate.fleet.broker import BrokerError, EmbeddedBroker, parse_broker_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("mqtt://broker.example:18830", ("broker.example", 18830)),
        ("mqtt://broker.example", ("broker.example", 1883)),
        ("mqtt://broker.example/", ("broker.example", 1883)),
        ("mqtt://[::1]:1884", ("::1", 1884)),
    ],
)
def test_accepted_urls(url: str, expected: tuple[str, int]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("mqtts://broker.example:8883", "scheme 'mqtts'"),
        ("tcp://broker.example:1883", "scheme 'tcp'"),
        ("broker.example:1883", "scheme"),
        ("mqtt://:1883", "no host"),
        ("mqtt://user:secret@broker.example:1883", "credentials"),
        ("mqtt://broker.example:1883/owlgate", "path"),
        ("mqtt://broker.example:1883?x=1", "query"),
        ("mqtt://broker.example:99999", "not a broker URL"),
        ("mqtt://broker.example:0", "port 0"),
    ],
)
def test_refused_urls_say_what_is_accepted(url: str, complaint: str) -> None:
    with pytest.raises(BrokerError) as caught:
        parse_broker_url(url)
    assert complaint in caught.value.message
    assert "accepted: mqtt://host:port" in caught.value.message
    assert "secret" not in caught.value.message


def test_embedded_broker_carries_messages_and_restarts_on_its_port() -> None:
    async def roundtrip(broker: EmbeddedBroker, payload: bytes) -> bytes:
        host, port = parse_broker_url(broker.url)
        async with aiomqtt.Client(host, port) as client:
            await client.subscribe("owlgate/test", qos=1)
            await client.publish("owlgate/test", payload, qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(client.messages))
        assert isinstance(message.payload, bytes)
        return message.payload

    async def scenario() -> None:
        running: list[bool] = []
        async with EmbeddedBroker() as broker:
            running.append(broker.running)
            assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
            assert await roundtrip(broker, b"one") == b"one"
            await broker.stop()
            running.append(broker.running)
            await broker.start()
            running.append(broker.running)
            assert await roundtrip(broker, b"two") == b"two"
        running.append(broker.running)
        assert running == [True, False, True, False]

    asyncio.run(scenario())


def test_a_taken_port_is_a_clear_error() -> None:
    async def scenario(port: int) -> None:
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port}"):
            await EmbeddedBroker(port).start()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        asyncio.run(scenario(taken.getsockname()[1]))
