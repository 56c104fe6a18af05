"""Hostile input over a real broker: garbage, truncated CBOR, forged signatures, replays and
absurd values, interleaved with good messages. Every good reading is stored, every hostile
message is counted under its reason, and the counts are on ``GET /metrics``. The decoders
are fuzzed with hypothesis: whatever the bytes, a typed refusal with a documented reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from owlgate.codecs.control import JoinForward, encode_join_forward
from owlgate.codecs.health import Health, encode_health
from owlgate.codecs.lorawan import AesKey, JoinRequest
from owlgate.codecs.node import cbor
from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch
from owlgate.codecs.signed import sign
from owlgate.fleet.api import create_app, register_stats
from owlgate.fleet.control import Control, ControlService
from owlgate.fleet.ingest import (
    REASONS,
    Ingest,
    IngestService,
    Rejected,
    Signed,
    Verified,
    absurd_reading,
    plausible_readings,
    verify_signed,
)
from owlgate.fleet.joinserver import (
    JOIN_REASONS,
    JoinFrameError,
    JoinServer,
    parse_join_request,
)
from owlgate.fleet.store import Store
from tests.fleet.conftest import (
    ABP_EUI,
    APP_KEY,
    GW1,
    GW2,
    JOIN_EUI,
    OTAA_EUI,
    T0,
    raw_public,
)
from tests.fleet.test_api import ApiClient, Clock
from tests.mqtt_servers import MosquittoServer

pytest_plugins = ["tests.brokers"]

DEV = bytes.fromhex(ABP_EUI)
NOW = T0 + 10
UNKNOWN_GW = "b827ebfffe0000ff"


@pytest.fixture
def fleet(fleet: Store) -> Store:
    """The shared fleet (conftest.py) and an OTAA device, for the join requests."""
    store = fleet
    store.create_device(
        OTAA_EUI,
        profile_id="waste-bin-v1",
        activation="otaa",
        created=T0,
        join_eui=JOIN_EUI,
        app_key=APP_KEY,
    )
    return store


def topic(gateway: str, kind: str) -> str:
    return f"owlgate/v1/gw/{gateway}/{kind}"


def reading(fcnt: int, *, rssi: int = -100, time_s: int | None = None) -> Reading:
    values: dict[str, object] = {"occupied": True, "battery_mv": 3500, "temperature_c": 20.5}
    at = int(T0) + fcnt if time_s is None else time_s
    return Reading(DEV, at, values, rssi_dbm=rssi, snr_db=5.0, fcnt=fcnt)


def batch(key: Ed25519PrivateKey, gateway: str, seq: int, readings: list[Reading]) -> bytes:
    return sign(encode_batch(Batch(bytes.fromhex(gateway), seq, int(T0), readings)), key)


def health(key: Ed25519PrivateKey, seq: int, *, time_s: int, agent_uptime_s: int = 50) -> bytes:
    content = Health(
        gateway_id=bytes.fromhex(GW1),
        seq=seq,
        time_s=time_s,
        uptime_s=1000,
        agent_uptime_s=agent_uptime_s,
        agent_version="owlgate-edge 0.1.0",
        config_hash=bytes(32),
    )
    return sign(encode_health(content), key)


def join_request(dev_nonce: int, *, key: bytes = APP_KEY, dev_eui: str = OTAA_EUI) -> bytes:
    return JoinRequest.build(
        AesKey(key), join_eui=int(JOIN_EUI, 16), dev_eui=int(dev_eui, 16), dev_nonce=dev_nonce
    ).to_bytes()


def join(key: Ed25519PrivateKey, token: int, phy: bytes) -> bytes:
    return sign(encode_join_forward(JoinForward(token, phy, int(NOW))), key)


def join_of_length(key: Ed25519PrivateKey, token: int, phy: bytes) -> bytes:
    # encode_join_forward refuses a request of the wrong length, as an honest gateway
    # would: the hostile one writes the map itself (keys of codecs.control).
    return sign(cbor.dumps({1: token, 2: phy, 3: int(NOW)}), key)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def _until(what: str, done: Callable[[], bool], counters: Callable[[], object]) -> None:
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, f"{what}: {counters()}"
        await asyncio.sleep(0.02)


def _settled(ingest: Ingest, messages: int) -> bool:
    """Every message handled: stored, a duplicate, or refused (an absurd reading is not a
    message: its batch counts as stored)."""
    counts = ingest.counters
    handled = counts.batches + counts.health + counts.health_duplicates + counts.states
    refused = sum(n for reason, n in counts.rejected.items() if reason != "absurd_reading")
    return handled + refused >= messages


def test_hostile_messages_are_counted_by_reason_and_good_ones_stored(
    mosquitto: MosquittoServer, fleet: Store, keys: dict[str, Ed25519PrivateKey]
) -> None:
    gw1, gw2 = keys[GW1], keys[GW2]
    good = [batch(gw1, GW1, seq, [reading(2 * seq), reading(2 * seq + 1)]) for seq in range(1, 8)]
    truncated = batch(gw1, GW1, 50, [reading(50)])
    # One absurd reading among good ones: RSSI no LoRa radio reports; the two others stay.
    mixed = batch(gw1, GW1, 20, [reading(100), reading(101, rssi=50), reading(102)])
    telemetry = topic(GW1, "telemetry")
    ingest_messages: list[tuple[str, bytes]] = [
        (telemetry, good[0]),
        (telemetry, b"\xff\x00 not cbor at all"),  # garbage
        (telemetry, good[1]),
        (telemetry, truncated[: len(truncated) // 2]),  # truncated
        (telemetry, batch(gw2, GW1, 51, [reading(51)])),  # signature: GW2's key on GW1
        (telemetry, good[2]),
        (telemetry, batch(gw1, GW2, 52, [reading(52)])),  # wrong_gateway: names GW2
        (telemetry, sign(b"\xa0", gw1)),  # malformed: signed, but no batch
        (telemetry, mixed),  # absurd_reading: one of three
        (telemetry, good[3]),
        (topic(UNKNOWN_GW, "telemetry"), batch(gw1, UNKNOWN_GW, 1, [reading(53)])),
        ("owlgate/v1/gw/not-hex/telemetry", good[4]),  # topic
        (telemetry, good[0]),  # delivered twice: a batch duplicate, not a refusal
        (topic(GW1, "health"), health(gw1, 1, time_s=int(T0))),
        (topic(GW1, "health"), health(gw1, 2, time_s=int(T0) + 5)),
        (topic(GW1, "health"), health(gw1, 1, time_s=int(T0))),  # replayed
        (topic(GW1, "health"), health(gw1, 2, time_s=int(T0) + 5)),  # the same again
        (topic(GW1, "health"), health(gw1, 3, time_s=0)),  # absurd: an unset clock
        (telemetry, good[4]),
        (topic(GW1, "state"), b"maybe"),  # state
        (topic(GW1, "state"), b"online"),
        (telemetry, good[5]),
        (telemetry, good[6]),
    ]
    joins = topic(GW1, "join")
    join_messages: list[tuple[str, bytes]] = [
        (joins, join(gw1, 1, join_request(1))),  # accepted
        (joins, join(gw1, 2, join_request(1))),  # dev_nonce_reused: a replay
        (joins, join(gw1, 3, join_request(2, key=bytes(16)))),  # mic
        (joins, join(gw1, 4, join_request(3, dev_eui="70b3d57ed00000aa"))),  # unknown_device
        (joins, join(gw1, 5, b"\xe0" + bytes(22))),  # garbage: proprietary MHDR
        (joins, join_of_length(gw1, 6, join_request(4)[:10])),  # wrong length
        (joins, join(gw1, 7, join_request(5))),  # accepted
    ]
    clock = Clock(NOW)
    app = create_app(fleet, clock=clock)
    ingest = IngestService(
        Ingest(fleet, clock=clock), mosquitto.host, mosquitto.port, verify_workers=0
    )
    control = ControlService(
        Control(fleet, Ed25519PrivateKey.generate(), clock=clock), mosquitto.host, mosquitto.port
    )
    for source in (ingest, control, control.control.join_server):
        register_stats(app, source)

    async def run() -> None:
        tasks = [asyncio.create_task(ingest.run()), asyncio.create_task(control.run())]
        try:
            await asyncio.wait_for(ingest.subscribed.wait(), 10)
            await asyncio.wait_for(control.subscribed.wait(), 10)
            async with aiomqtt.Client(
                mosquitto.host, mosquitto.port, identifier="hostile-gw"
            ) as client:
                # Joins and the rest interleaved, in one stream, as a gateway sends them.
                for index in range(max(len(ingest_messages), len(join_messages))):
                    for messages in (ingest_messages, join_messages):
                        if index < len(messages):
                            await client.publish(*messages[index], qos=1)
            await _until(
                "ingest",
                lambda: _settled(ingest.ingest, len(ingest_messages)),
                ingest.stats,
            )
            join_server = control.control.join_server
            await _until(
                "joins",
                lambda: (
                    join_server.counters.accepted + sum(join_server.counters.rejected.values())
                    >= len(join_messages) - 1
                ),  # the wrong length never reaches the join server
                control.stats,
            )
            await _until(
                "control",
                lambda: sum(control.control.counters.rejected.values()) >= 3,
                control.stats,
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())

    stored = fleet.readings(ABP_EUI, limit=1000).items
    expected = sorted([fcnt for seq in range(1, 8) for fcnt in (2 * seq, 2 * seq + 1)] + [100, 102])
    assert sorted(item.fcnt for item in stored if item.fcnt is not None) == expected
    counts = ingest.ingest.counters
    assert counts.rejected == {
        "garbage": 1,
        "truncated": 1,
        "signature": 1,
        "wrong_gateway": 1,
        "malformed": 1,
        "absurd_reading": 1,
        "unknown_gateway": 1,
        "topic": 1,
        "replayed": 1,
        "absurd": 1,
        "state": 1,
    }
    assert set(counts.rejected) <= set(REASONS)
    assert (counts.batch_duplicates, counts.health, counts.health_duplicates) == (1, 2, 1)
    gateway = fleet.gateway(GW1)
    assert gateway.last_health is not None
    assert gateway.last_health["seq"] == 2
    joined = control.control.join_server.counters
    assert joined.accepted == 2
    assert joined.rejected == {"dev_nonce_reused": 1, "mic": 1, "unknown_device": 1, "garbage": 1}
    assert set(joined.rejected) <= set(JOIN_REASONS)

    samples = _samples(ApiClient(app, role="operator").get("/metrics").text)
    for reason, count in counts.rejected.items():
        assert samples[("owlgate_fleet_ingest_rejected_total", (("reason", reason),))] == count
    for reason, count in joined.rejected.items():
        assert samples[("owlgate_fleet_join_rejected_total", (("reason", reason),))] == count
    assert samples[("owlgate_fleet_join_accepted_total", ())] == 2
    # The control service does not answer either request that is no join request: the one of
    # the wrong length it refuses before the join server, the garbage one after it.
    assert samples[("owlgate_fleet_control_rejected_total", (("reason", "malformed"),))] == 2
    assert samples[("owlgate_fleet_ingest_readings_stored_total", ())] == len(expected)
    # The service stopped: its queues are empty.
    assert samples[("owlgate_fleet_ingest_waiting_messages", ())] == 0


# --- the decoders, fuzzed -----------------------------------------------------------------------

_KEY = Ed25519PrivateKey.generate()
_RAW = raw_public(_KEY)
_GOOD = batch(_KEY, GW1, 1, [reading(1), reading(2)])


def _signed(payload: bytes, kind: str = "telemetry") -> Signed:
    return Signed(
        topic(GW1, kind), GW1, "telemetry" if kind == "telemetry" else "health", payload, _RAW, NOW
    )


@given(st.binary(max_size=300), st.sampled_from(["telemetry", "health"]))
def test_any_bytes_are_refused_with_a_documented_reason(data: bytes, kind: str) -> None:
    with pytest.raises(Rejected) as caught:
        verify_signed(_signed(data, kind))
    assert caught.value.reason in REASONS


@given(st.integers(min_value=0, max_value=len(_GOOD) - 1))
def test_every_truncation_is_truncated(length: int) -> None:
    with pytest.raises(Rejected) as caught:
        verify_signed(_signed(_GOOD[:length]))
    assert caught.value.reason == ("garbage" if length == 0 else "truncated")


@given(st.integers(min_value=0, max_value=len(_GOOD) - 1), st.integers(1, 255))
def test_a_changed_byte_never_passes_as_other_content(at: int, flip: int) -> None:
    altered = bytearray(_GOOD)
    altered[at] ^= flip
    outcome: Verified | Rejected
    try:
        outcome = verify_signed(_signed(bytes(altered)))
    except Rejected as err:
        outcome = err
    if isinstance(outcome, Rejected):
        assert outcome.reason in REASONS
    else:
        # Only a change the signature does not cover (the envelope's own encoding) can pass,
        # and then with exactly the content that was signed.
        assert isinstance(outcome, Verified)
        assert outcome.rows == verify_signed(_signed(_GOOD)).rows


@given(
    st.integers(-400, 400),
    st.floats(-100, 100, allow_nan=False),
    st.integers(-(10**6), 10**6),
)
def test_absurd_readings_are_those_outside_the_documented_ranges(
    rssi: int, snr: float, dt: int
) -> None:
    item = Reading(DEV, int(NOW) + dt, {"battery_mv": 3000}, rssi_dbm=rssi, snr_db=snr, fcnt=1)
    why = absurd_reading(item, NOW)
    plausible = -160 <= rssi <= 20 and -40 <= snr <= 40 and dt <= 86_400
    assert (why is None) == plausible
    # The per-batch path the ingest runs judges the same.
    kept, dropped = plausible_readings([item], NOW)
    assert (kept, len(dropped)) == (([item], 0) if plausible else ([], 1))


@given(
    st.dictionaries(
        st.sampled_from(["battery_mv", "temperature_c", "humidity_pct", "occupied", "ext"]),
        st.one_of(
            st.integers(-(10**6), 10**6), st.floats(allow_nan=False), st.booleans(), st.text()
        ),
    )
)
def test_any_values_are_judged_alike_one_by_one_and_per_batch(values: dict[str, object]) -> None:
    item = Reading(DEV, int(NOW), values, rssi_dbm=-90, snr_db=2.0, fcnt=1)
    kept, dropped = plausible_readings([item], NOW)
    assert (absurd_reading(item, NOW) is None) == (kept == [item]) == (not dropped)


@given(st.binary(max_size=40))
def test_any_join_bytes_parse_or_are_refused_by_reason(data: bytes) -> None:
    reason = None
    try:
        parse_join_request(data)
    except JoinFrameError as err:
        reason = err.reason
    if len(data) == 23 and data[0] == 0:
        assert reason is None
    else:
        assert reason == ("wrong_length" if data[:1] == b"\x00" else "garbage")


def test_the_join_server_counts_a_request_of_the_wrong_length(fleet: Store) -> None:
    server = JoinServer(fleet)
    with pytest.raises(JoinFrameError):
        server.join(join_request(9)[:22], at=NOW)
    with pytest.raises(JoinFrameError):
        server.join(b"", at=NOW)
    assert server.stats() == {"accepted": 0, "rejected": {"wrong_length": 1, "garbage": 1}}
