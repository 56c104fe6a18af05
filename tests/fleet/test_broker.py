"""The embedded broker and broker URLs."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from pathlib import Path

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


def _connect_packet(client_id: str, keepalive_s: int, will_topic: str, will: bytes) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and a QoS 1 Will (section 3.1)."""

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(2, "big") + data

    body = field(b"MQTT") + bytes([4, 0x02 | 0x04 | 0x08]) + keepalive_s.to_bytes(2, "big")
    body += field(client_id.encode()) + field(will_topic.encode()) + field(will)
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


def test_a_silent_client_is_cut_after_one_and_a_half_keepalives_and_its_will_sent() -> None:
    # A gateway whose power is cut: connected, then nothing, not even a TCP close.
    keepalive_s = 2

    async def scenario() -> tuple[bytes, float, bytes]:
        loop = asyncio.get_running_loop()
        async with (
            EmbeddedBroker() as broker,
            aiomqtt.Client(broker.host, broker.port, identifier="watch") as watch,
        ):
            await watch.subscribe("owlgate/v1/gw/+/state", qos=1)
            reader, writer = await asyncio.open_connection(broker.host, broker.port)
            try:
                packet = _connect_packet(
                    "silent", keepalive_s, "owlgate/v1/gw/b827ebfffe000001/state", b"offline"
                )
                writer.write(packet)
                await writer.drain()
                connack = await asyncio.wait_for(reader.readexactly(4), 10)
                silent_since = loop.time()
                async with asyncio.timeout(30):
                    message = await anext(aiter(watch.messages))
                cut_after = loop.time() - silent_since
            finally:
                writer.close()
        assert isinstance(message.payload, bytes)
        return connack, cut_after, message.payload

    connack, cut_after, will = asyncio.run(scenario())
    assert connack == b"\x20\x02\x00\x00"
    assert will == b"offline"
    # Not before the grace MQTT 3.1.1 section 3.1.2.10 gives a client.
    assert cut_after >= keepalive_s * 1.5 - 0.1


def test_a_client_that_pings_is_not_cut() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        async with (
            EmbeddedBroker() as broker,
            aiomqtt.Client(broker.host, broker.port, identifier="watch") as watch,
        ):
            await watch.subscribe("owlgate/v1/gw/+/state", qos=1)
            will = aiomqtt.Will("owlgate/v1/gw/b827ebfffe000001/state", b"offline", qos=1)
            async with aiomqtt.Client(
                broker.host, broker.port, identifier="alive", keepalive=1, will=will
            ) as alive:
                # Four keep-alive periods with nothing to say but PINGREQs; then a
                # message of its own, which must be the first the watcher sees.
                await asyncio.sleep(4)
                await alive.publish("owlgate/v1/gw/b827ebfffe000001/state", b"online", qos=1)
                async with asyncio.timeout(10):
                    message = await anext(aiter(watch.messages))
                assert isinstance(message.payload, bytes)
                seen.append(message.payload.decode())
        return seen

    assert asyncio.run(scenario()) == ["online"]


def _open_sockets() -> int:
    return sum(1 for fd in Path("/proc/self/fd").iterdir() if _is_socket(fd))


def _is_socket(fd: Path) -> bool:
    try:
        return os.readlink(fd).startswith("socket:")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_connections_that_end_before_connect_leave_no_socket_open() -> None:
    # amqtt leaves these server-side sockets to the garbage collector; the embedded broker
    # closes them itself. Collection is off, so only an explicit close can free them.
    async def scenario() -> tuple[int, int]:
        async with EmbeddedBroker() as broker:
            await asyncio.sleep(0.1)
            before = _open_sockets()
            for _ in range(10):
                _, writer = await asyncio.open_connection(broker.host, broker.port)
                writer.close()
                await writer.wait_closed()
            # The broker notices each closed connection on its next read.
            for _ in range(50):
                await asyncio.sleep(0.05)
                if _open_sockets() <= before:
                    break
            return before, _open_sockets()

    gc.disable()
    try:
        before, after = asyncio.run(scenario())
    finally:
        gc.enable()
    assert after <= before


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_connections_still_waiting_for_connect_are_closed_when_the_broker_stops() -> None:
    # Clients that connected but sent no CONNECT are not sessions yet, so amqtt's shutdown
    # does not see them; the embedded broker closes them itself when it stops.
    clients = 5

    async def scenario() -> tuple[int, int]:
        broker = EmbeddedBroker()
        await broker.start()
        await asyncio.sleep(0.1)
        before = _open_sockets()  # the broker's listener among them
        writers = [
            (await asyncio.open_connection(broker.host, broker.port))[1] for _ in range(clients)
        ]
        await asyncio.sleep(0.2)
        assert _open_sockets() == before + 2 * clients  # both ends of each, in this process
        await broker.stop()
        # Left: the clients' own ends, not the listener or the broker's ends.
        expected = before - 1 + clients
        for _ in range(50):
            if _open_sockets() <= expected:
                break
            await asyncio.sleep(0.05)
        after = _open_sockets()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        return after, expected

    gc.disable()
    try:
        after, expected = asyncio.run(scenario())
    finally:
        gc.enable()
    assert after == expected
