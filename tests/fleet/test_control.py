"""The fleet's control service: joins forwarded by gateways answered with a signed accept and
the session sealed to every gateway; forged joins rejected and counted, replayed ones refused;
a gateway coming online gets every device session; over amqtt and Mosquitto; and the fleet's
signing key as ``owlgate fleet seed`` writes it and ``owlgate fleet serve`` loads it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from typer.testing import CliRunner

from owlgate.codecs.control import (
    JoinAnswer,
    JoinForward,
    SessionUpdate,
    decode_join_answer,
    decode_session_update,
    encode_join_forward,
)
from owlgate.codecs.lorawan import (
    AesKey,
    EncryptedJoinAccept,
    JoinAccept,
    JoinRequest,
    derive_session_keys,
)
from owlgate.codecs.sealed import DeviceSession, open_session
from owlgate.codecs.signed import sign, verify
from owlgate.fleet.cli import (
    FLEET_PUBLIC_KEY_FILE,
    FLEET_SIGNING_KEY_FILE,
    IDENTITY_KEY_FILE,
    SEALING_KEY_FILE,
    fleet_command,
)
from owlgate.fleet.control import (
    JOIN_DUPLICATE_WINDOW_S,
    MAX_SESSIONS_PER_UPDATE,
    Control,
    ControlRejected,
    ControlService,
    Outgoing,
    parse_topic,
    subscriptions,
)
from owlgate.fleet.store import Store
from tests.conftest import REPO
from tests.fleet.conftest import (
    ABP_ADDR,
    ABP_EUI,
    APP_KEY,
    APP_S_KEY,
    GW1,
    GW2,
    JOIN_EUI,
    NWK_S_KEY,
    OTAA_EUI,
    T0,
    raw_public,
)
from tests.mqtt_servers import BrokerServer

pytest_plugins = ["tests.brokers"]

RUNNER = CliRunner()
APP = AesKey(APP_KEY)
UNKNOWN_GW = "b827ebfffe0000ff"


@pytest.fixture
def identities() -> dict[str, Ed25519PrivateKey]:
    return {GW1: Ed25519PrivateKey.generate(), GW2: Ed25519PrivateKey.generate()}


@pytest.fixture
def fleet_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def fleet(
    store: Store,
    identities: dict[str, Ed25519PrivateKey],
    seal_keys: dict[str, X25519PrivateKey],
) -> Store:
    """Two gateways whose private keys the test holds, one ABP and one OTAA device."""
    for gid, identity in identities.items():
        store.create_gateway(
            gid,
            name=gid,
            sign_public_key=raw_public(identity),
            seal_public_key=raw_public(seal_keys[gid]),
            created=T0,
        )
    store.create_device(
        ABP_EUI,
        profile_id="parking-v1",
        activation="abp",
        created=T0,
        dev_addr=ABP_ADDR,
        nwk_s_key=NWK_S_KEY,
        app_s_key=APP_S_KEY,
    )
    store.create_device(
        OTAA_EUI,
        profile_id="waste-bin-v1",
        activation="otaa",
        created=T0,
        join_eui=JOIN_EUI,
        app_key=APP_KEY,
    )
    return store


@pytest.fixture
def control(fleet: Store, fleet_key: Ed25519PrivateKey) -> Control:
    return Control(fleet, fleet_key, clock=lambda: T0 + 10)


def topic(gateway: str, kind: str) -> str:
    return f"owlgate/v1/gw/{gateway}/{kind}"


def join_request(dev_nonce: int, *, key: AesKey = APP, dev_eui: str = OTAA_EUI) -> bytes:
    request = JoinRequest.build(
        key, join_eui=int(JOIN_EUI, 16), dev_eui=int(dev_eui, 16), dev_nonce=dev_nonce
    )
    return request.to_bytes()


def forwarded(identity: Ed25519PrivateKey, token: int, phy: bytes) -> bytes:
    return sign(encode_join_forward(JoinForward(token, phy, int(T0))), identity)


def answer_of(message: Outgoing, fleet_key: Ed25519PrivateKey) -> JoinAnswer:
    return decode_join_answer(verify(message.payload, fleet_key.public_key()).payload)


def update_of(message: Outgoing, fleet_key: Ed25519PrivateKey) -> SessionUpdate:
    return decode_session_update(verify(message.payload, fleet_key.public_key()).payload)


def device_side_session(accept_phy: bytes, dev_nonce: int) -> tuple[JoinAccept, bytes, bytes]:
    """What the device makes of the accept: (accept, NwkSKey, AppSKey)."""
    accept = EncryptedJoinAccept.from_bytes(accept_phy).decrypt(APP)
    accept.verify_mic(APP)
    keys = derive_session_keys(APP, accept.join_nonce, accept.net_id, dev_nonce)
    assert keys.nwk_s_key is not None
    assert keys.app_s_key is not None
    return accept, keys.nwk_s_key, keys.app_s_key


# --- the handler, without a broker --------------------------------------------------------------


def test_a_join_is_accepted_and_the_session_sealed_to_every_gateway(
    control: Control,
    fleet_key: Ed25519PrivateKey,
    identities: dict[str, Ed25519PrivateKey],
    seal_keys: dict[str, X25519PrivateKey],
) -> None:
    out = control.handle(topic(GW1, "join"), forwarded(identities[GW1], 7, join_request(0x1234)))
    assert [message.topic for message in out] == [topic(GW1, "join/accept"), topic(GW2, "keys")]
    answer = answer_of(out[0], fleet_key)
    assert answer.token == 7
    assert answer.accepted
    assert answer.accept_phy is not None
    assert answer.sealed_session is not None
    accept, nwk_s_key, app_s_key = device_side_session(answer.accept_phy, 0x1234)
    # The device and the forwarding gateway end up with the same session.
    mine = open_session(seal_keys[GW1], bytes.fromhex(GW1), answer.sealed_session)
    assert (mine.dev_eui, mine.dev_addr) == (bytes.fromhex(OTAA_EUI), accept.dev_addr)
    assert (mine.nwk_s_key, mine.app_s_key) == (nwk_s_key, app_s_key)
    assert mine.profile_id == "waste-bin-v1"
    # The other gateway gets it too, sealed to its own key.
    (other,) = update_of(out[1], fleet_key).sealed_sessions
    theirs = open_session(seal_keys[GW2], bytes.fromhex(GW2), other)
    assert theirs == mine
    assert control.store.device(OTAA_EUI).dev_addr == accept.dev_addr
    assert control.counters.joins_accepted == 1
    assert control.counters.session_updates == 1
    assert control.counters.rejected == {}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("other gateway's key", "signature"),
        ("unsigned", "signature"),
        ("unknown gateway", "unknown_gateway"),
        ("not a join forward", "malformed"),
        ("not a join topic", "topic"),
    ],
)
def test_a_forged_join_is_rejected_counted_and_not_answered(
    control: Control, identities: dict[str, Ed25519PrivateKey], case: str, reason: str
) -> None:
    good = join_request(0x0001)
    where = topic(GW1, "join")
    if case == "other gateway's key":
        message = forwarded(identities[GW2], 1, good)
    elif case == "unsigned":
        message = encode_join_forward(JoinForward(1, good, int(T0)))
    elif case == "unknown gateway":
        where = topic(UNKNOWN_GW, "join")
        message = forwarded(identities[GW1], 1, good)
    elif case == "not a join forward":
        message = sign(b"\xa1\x01\x02", identities[GW1])
    else:
        where = topic(GW1, "join/accept")
        message = forwarded(identities[GW1], 1, good)
    with pytest.raises(ControlRejected) as caught:
        control.handle(where, message)
    assert caught.value.reason == reason
    assert control.counters.rejected == {reason: 1}
    # Nothing was written: the device has not joined and its DevNonce is still unused.
    assert control.store.device(OTAA_EUI).dev_addr is None
    out = control.handle(topic(GW1, "join"), forwarded(identities[GW1], 2, good))
    assert out[0].topic == topic(GW1, "join/accept")
    assert control.counters.joins_accepted == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("replayed DevNonce", "dev_nonce_reused"),
        ("wrong AppKey", "mic"),
        ("unknown device", "unknown_device"),
    ],
)
def test_a_refused_join_is_answered_with_the_reason(
    control: Control,
    fleet_key: Ed25519PrivateKey,
    identities: dict[str, Ed25519PrivateKey],
    case: str,
    reason: str,
) -> None:
    first = forwarded(identities[GW1], 1, join_request(0x0042))
    assert len(control.handle(topic(GW1, "join"), first)) == 2
    if case == "replayed DevNonce":
        # The same request again, forwarded by the other gateway, once the window in which it
        # would count as that gateway's copy of the first has passed: a replay.
        control.clock = lambda: T0 + 10 + JOIN_DUPLICATE_WINDOW_S + 1
        message = forwarded(identities[GW2], 9, join_request(0x0042))
    elif case == "wrong AppKey":
        message = forwarded(identities[GW2], 9, join_request(0x0043, key=AesKey(bytes(16))))
    else:
        message = forwarded(identities[GW2], 9, join_request(1, dev_eui="70b3d57ed00000aa"))
    (out,) = control.handle(topic(GW2, "join"), message)
    assert out.topic == topic(GW2, "join/accept")
    answer = answer_of(out, fleet_key)
    assert answer == JoinAnswer(9, refusal=reason)
    assert control.counters.refused == {reason: 1}
    assert control.counters.joins_accepted == 1
    assert control.counters.rejected == {}


def _open_all(
    messages: list[Outgoing], fleet_key: Ed25519PrivateKey, gateway: str, key: X25519PrivateKey
) -> list[DeviceSession]:
    sessions: list[DeviceSession] = []
    for message in messages:
        assert message.topic == topic(gateway, "keys")
        sealed = update_of(message, fleet_key).sealed_sessions
        sessions.extend(open_session(key, bytes.fromhex(gateway), item) for item in sealed)
    return sessions


def test_a_gateway_coming_online_gets_every_session(
    control: Control,
    fleet_key: Ed25519PrivateKey,
    identities: dict[str, Ed25519PrivateKey],
    seal_keys: dict[str, X25519PrivateKey],
) -> None:
    # Before the OTAA device joins, only the ABP session exists.
    before = _open_all(
        control.handle(topic(GW2, "state"), b"online"), fleet_key, GW2, seal_keys[GW2]
    )
    assert [session.dev_eui.hex() for session in before] == [ABP_EUI]
    (abp,) = before
    assert (abp.dev_addr, abp.nwk_s_key, abp.app_s_key) == (ABP_ADDR, NWK_S_KEY, APP_S_KEY)
    out = control.handle(topic(GW1, "join"), forwarded(identities[GW1], 3, join_request(5)))
    accept, nwk_s_key, app_s_key = device_side_session(
        answer_of(out[0], fleet_key).accept_phy or b"", 5
    )
    after = _open_all(
        control.handle(topic(GW1, "state"), b"online"), fleet_key, GW1, seal_keys[GW1]
    )
    by_eui = {session.dev_eui.hex(): session for session in after}
    assert sorted(by_eui) == sorted([ABP_EUI, OTAA_EUI])
    otaa = by_eui[OTAA_EUI]
    assert (otaa.dev_addr, otaa.nwk_s_key, otaa.app_s_key) == (
        accept.dev_addr,
        nwk_s_key,
        app_s_key,
    )
    assert by_eui[ABP_EUI] == abp
    # Going offline sends nothing; an unregistered gateway or a bad state is rejected.
    assert control.handle(topic(GW1, "state"), b"offline") == []
    with pytest.raises(ControlRejected):
        control.handle(topic(UNKNOWN_GW, "state"), b"online")
    with pytest.raises(ControlRejected):
        control.handle(topic(GW1, "state"), b"maybe")
    counters = control.counters
    assert (counters.onlines, counters.offlines) == (2, 1)
    assert counters.rejected == {"unknown_gateway": 1, "state": 1}
    assert counters.sessions_sent == 1 + 1 + 2  # online, the join's update for GW2, online


def test_many_sessions_are_split_over_several_updates(
    control: Control, fleet_key: Ed25519PrivateKey, seal_keys: dict[str, X25519PrivateKey]
) -> None:
    extra = MAX_SESSIONS_PER_UPDATE + 5
    for index in range(extra):
        control.store.create_device(
            f"70b3d57ee{index:07x}",
            profile_id="parking-v1",
            activation="abp",
            created=T0,
            dev_addr=0x02000000 + index,
            nwk_s_key=NWK_S_KEY,
            app_s_key=APP_S_KEY,
        )
    out = control.handle(topic(GW1, "state"), b"online")
    sizes = [len(update_of(message, fleet_key).sealed_sessions) for message in out]
    assert sizes == [MAX_SESSIONS_PER_UPDATE, extra + 1 - MAX_SESSIONS_PER_UPDATE]
    sessions = _open_all(out, fleet_key, GW1, seal_keys[GW1])
    assert len({session.dev_eui for session in sessions}) == extra + 1


def test_topics() -> None:
    assert parse_topic("owlgate/v1/gw/B827EBFFFE000001/join") == (GW1, "join")
    assert subscriptions(True) == [
        "$share/owlgate-control/owlgate/v1/gw/+/join",
        "owlgate/v1/gw/+/state",
    ]
    assert subscriptions(False) == ["owlgate/v1/gw/+/join", "owlgate/v1/gw/+/state"]
    for bad in ("owlgate/v1/gw/zz/join", "owlgate/v1/gw/b827ebfffe000001/telemetry", "x/join"):
        with pytest.raises(ControlRejected):
            parse_topic(bad)


# --- over a real broker -------------------------------------------------------------------------


async def _gateways_talk(
    server: BrokerServer, control: Control, identity: Ed25519PrivateKey
) -> list[tuple[str, bytes]]:
    """Fake gateway GW1 forwards a join, then GW2 comes online; returns what the two receive
    on ``join/accept`` and ``keys``, in order."""
    service = ControlService(control, server.host, server.port)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.subscribed.wait(), 10)
        async with aiomqtt.Client(server.host, server.port, identifier="gw-test") as client:
            await client.subscribe(topic(GW1, "join/accept"), qos=1)
            await client.subscribe(topic(GW2, "keys"), qos=1)
            await client.publish(
                topic(GW1, "join"), forwarded(identity, 11, join_request(0x0777)), qos=1
            )
            received: list[tuple[str, bytes]] = []
            async with asyncio.timeout(10):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    received.append((str(message.topic), message.payload))
                    if len(received) == 2:
                        await client.publish(topic(GW2, "state"), b"online", qos=1)
                    if len(received) == 3:
                        break
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return received


def test_a_join_and_an_online_over_the_broker(
    broker: BrokerServer,
    control: Control,
    fleet_key: Ed25519PrivateKey,
    identities: dict[str, Ed25519PrivateKey],
    seal_keys: dict[str, X25519PrivateKey],
) -> None:
    received = asyncio.run(_gateways_talk(broker, control, identities[GW1]))
    by_topic = dict(received[:2])
    answer = decode_join_answer(
        verify(by_topic[topic(GW1, "join/accept")], fleet_key.public_key()).payload
    )
    assert answer.token == 11
    assert answer.accept_phy is not None
    assert answer.sealed_session is not None
    accept, nwk_s_key, _ = device_side_session(answer.accept_phy, 0x0777)
    mine = open_session(seal_keys[GW1], bytes.fromhex(GW1), answer.sealed_session)
    assert (mine.dev_addr, mine.nwk_s_key) == (accept.dev_addr, nwk_s_key)
    update = decode_session_update(
        verify(by_topic[topic(GW2, "keys")], fleet_key.public_key()).payload
    )
    (sealed,) = update.sealed_sessions
    assert open_session(seal_keys[GW2], bytes.fromhex(GW2), sealed) == mine
    # GW2 online: both sessions, the ABP one and the one just joined.
    where, payload = received[2]
    assert where == topic(GW2, "keys")
    everything = decode_session_update(verify(payload, fleet_key.public_key()).payload)
    opened = [
        open_session(seal_keys[GW2], bytes.fromhex(GW2), item)
        for item in everything.sealed_sessions
    ]
    assert sorted(session.dev_eui.hex() for session in opened) == sorted([ABP_EUI, OTAA_EUI])
    assert mine in opened
    assert control.counters.joins_accepted == 1
    assert control.counters.onlines == 1
    assert control.counters.rejected == {}


# --- the fleet's signing key: seed writes it, serve loads it -------------------------------------


def test_seed_writes_the_fleet_signing_key_and_each_gateway_pins_its_public_key(
    tmp_path: Path,
) -> None:
    db = tmp_path / "fleet.db"
    args = ["seed", "--db", str(db), "--gateways", "2", "--nodes", "2"]
    result = RUNNER.invoke(fleet_command, args)
    assert result.exit_code == 0, result.stderr
    keys_dir = tmp_path / "gateway-keys"
    private_path = keys_dir / FLEET_SIGNING_KEY_FILE
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(private_path.read_bytes(), None)
    assert isinstance(private, Ed25519PrivateKey)
    manifest = json.loads((tmp_path / "emulator-secrets.json").read_text())
    assert manifest["fleet_signing_key"] == str(private_path)
    assert len(manifest["gateways"]) == 2
    for gateway in manifest["gateways"]:
        pinned_path = Path(gateway["fleet_public_key"])
        assert pinned_path == keys_dir / gateway["id"] / FLEET_PUBLIC_KEY_FILE
        pinned = serialization.load_pem_public_key(pinned_path.read_bytes())
        assert isinstance(pinned, Ed25519PublicKey)
        assert raw_public(private) == pinned.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert b"PRIVATE" not in pinned_path.read_bytes()
    # Seeding more gateways into the same folder keeps the key the first ones pinned.
    before = private_path.read_bytes()
    assert RUNNER.invoke(fleet_command, args).exit_code == 0
    assert private_path.read_bytes() == before


def test_serve_refuses_a_missing_or_wrong_signing_key(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    result = RUNNER.invoke(fleet_command, ["serve", "--db", str(db)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --signing-key ")
    assert FLEET_SIGNING_KEY_FILE in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello\n")
    result = RUNNER.invoke(
        fleet_command, ["serve", "--db", str(db), "--signing-key", str(not_a_key)]
    )
    assert result.exit_code == 2
    assert "not an unencrypted PEM private key" in result.stderr
    x25519 = tmp_path / "x25519.pem"
    x25519.write_bytes(
        X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = RUNNER.invoke(fleet_command, ["serve", "--db", str(db), "--signing-key", str(x25519)])
    assert result.exit_code == 2
    assert "not an Ed25519 key" in result.stderr
    assert not db.exists()


def _serve(db: Path) -> tuple[subprocess.Popen[str], str]:
    """``owlgate fleet serve`` (embedded broker, default signing key) as a process; returns it
    and the broker URL it prints."""
    serve = [sys.executable, "-m", "owlgate.codecs.cli", "fleet", "serve", "--db", str(db)]
    serve += ["--http-port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env
    )
    assert process.stdout is not None
    broker_url = ""
    started = False
    deadline = time.monotonic() + 30
    while not (broker_url and started):
        assert time.monotonic() < deadline, "fleet serve did not start"
        line = process.stdout.readline()
        assert line, "fleet serve exited"
        if line.startswith("MQTT broker: "):
            broker_url = line.split()[2]
        started = started or "Uvicorn running on " in line
    return process, broker_url


async def _seeded_gateway(
    host: str, port: int, gateway: str, identity: Ed25519PrivateKey, phy: bytes
) -> tuple[bytes, bytes]:
    """The seeded gateway connects (state ``online``), then forwards a join; returns the first
    payload on its ``keys`` topic and the one on ``join/accept``."""
    async with aiomqtt.Client(host, port, identifier="gw-seeded") as client:
        await client.subscribe(topic(gateway, "keys"), qos=1)
        await client.subscribe(topic(gateway, "join/accept"), qos=1)
        await client.publish(topic(gateway, "state"), b"online", qos=1, retain=True)
        received: dict[str, bytes] = {}
        async with asyncio.timeout(15):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                where = str(message.topic)
                received.setdefault(where, message.payload)
                if where == topic(gateway, "keys") and len(received) == 1:
                    await client.publish(topic(gateway, "join"), forwarded(identity, 1, phy), qos=1)
                if len(received) == 2:
                    break
    return received[topic(gateway, "keys")], received[topic(gateway, "join/accept")]


def test_fleet_serve_answers_a_seeded_gateway_with_its_pinned_key(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    args = ["seed", "--db", str(db), "--gateways", "1", "--nodes", "2"]
    assert RUNNER.invoke(fleet_command, args).exit_code == 0
    manifest = json.loads((tmp_path / "emulator-secrets.json").read_text())
    gateway = manifest["gateways"][0]
    folder = Path(gateway["keys_dir"])
    identity = serialization.load_pem_private_key((folder / IDENTITY_KEY_FILE).read_bytes(), None)
    sealing = serialization.load_pem_private_key((folder / SEALING_KEY_FILE).read_bytes(), None)
    pinned = serialization.load_pem_public_key(Path(gateway["fleet_public_key"]).read_bytes())
    assert isinstance(identity, Ed25519PrivateKey)
    assert isinstance(sealing, X25519PrivateKey)
    assert isinstance(pinned, Ed25519PublicKey)
    abp, otaa = manifest["devices"]
    app_key = AesKey(bytes.fromhex(otaa["app_key"]))
    phy = JoinRequest.build(
        app_key, join_eui=int(otaa["join_eui"], 16), dev_eui=int(otaa["dev_eui"], 16), dev_nonce=9
    ).to_bytes()
    process, broker_url = _serve(db)
    try:
        host, port = broker_url.removeprefix("mqtt://").split(":")
        keys_payload, accept_payload = asyncio.run(
            _seeded_gateway(host, int(port), gateway["id"], identity, phy)
        )
    finally:
        process.terminate()
        process.communicate(timeout=30)
    gid = bytes.fromhex(gateway["id"])
    # Online: the ABP device's session (the OTAA one has not joined yet).
    (sealed,) = decode_session_update(verify(keys_payload, pinned).payload).sealed_sessions
    session = open_session(sealing, gid, sealed)
    assert session.dev_eui.hex() == abp["dev_eui"]
    assert session.nwk_s_key.hex() == abp["nwk_s_key"]
    # The join: an accept the device decrypts, and the same session sealed to the gateway.
    answer = decode_join_answer(verify(accept_payload, pinned).payload)
    assert answer.accept_phy is not None
    assert answer.sealed_session is not None
    accept = EncryptedJoinAccept.from_bytes(answer.accept_phy).decrypt(app_key)
    accept.verify_mic(app_key)
    joined = open_session(sealing, gid, answer.sealed_session)
    assert joined.dev_eui.hex() == otaa["dev_eui"]
    assert joined.dev_addr == accept.dev_addr
    assert joined.nwk_s_key == accept.session_keys(app_key, 9).nwk_s_key


def test_copies_of_a_join_from_other_gateways_are_dropped_and_a_late_replay_refused(
    control: Control,
    fleet_key: Ed25519PrivateKey,
    identities: dict[str, Ed25519PrivateKey],
) -> None:
    request = join_request(0x4242)
    first = control.handle(topic(GW1, "join"), forwarded(identities[GW1], 1, request))
    assert answer_of(first[0], fleet_key).accepted
    # Heard by the second gateway too: that copy is not answered, and only counted.
    assert control.handle(topic(GW2, "join"), forwarded(identities[GW2], 9, request)) == []
    assert control.counters.join_duplicates == 1
    assert control.counters.joins_accepted == 1
    # The first gateway sending it again is a replay, refused by the join server.
    replay = control.handle(topic(GW1, "join"), forwarded(identities[GW1], 2, request))
    assert answer_of(replay[0], fleet_key).refusal == "dev_nonce_reused"
    # A forged copy is still refused for its signature, not taken for a duplicate.
    with pytest.raises(ControlRejected) as caught:
        control.handle(topic(GW2, "join"), forwarded(identities[GW1], 9, request))
    assert caught.value.reason == "signature"
    # Past the window, the same request is a replay the join server refuses.
    control.clock = lambda: T0 + JOIN_DUPLICATE_WINDOW_S + 60
    late = control.handle(topic(GW2, "join"), forwarded(identities[GW2], 3, request))
    assert answer_of(late[0], fleet_key).refusal == "dev_nonce_reused"
    assert control.counters.join_duplicates == 1
