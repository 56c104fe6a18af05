"""Rollouts through the HTTP API with the engine and emulated gateways back to back (no
broker: each publication goes straight to the gateway, each report straight back): waves,
thresholds, pause/resume/abort, rollback, timeouts, documents signed offline, refused
reports, drift, roles and typed errors. On SQLite and PostgreSQL (the ``store`` fixture)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, cast

import aiomqtt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from owlgate.codecs.configdoc import ConfigDocument, from_json, sign_config, trusted_keys
from owlgate.codecs.control import ConfigStatus, encode_config_status
from owlgate.codecs.signed import sign
from owlgate.fleet.api import create_app
from owlgate.fleet.configs import put_layer
from owlgate.fleet.rollouts import (
    ROLLOUT_LOCK,
    ConfigService,
    Publication,
    RolloutCreate,
    RolloutEngine,
    StatusRejected,
    change_rollout,
    import_config_key,
    start_rollout,
    status_topic,
)
from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault
from owlgate.hil.config_gateways import EmulatedConfigGateway
from tests.fleet.conftest import T0, StoreFactory, raw_public
from tests.fleet.test_api import ApiClient, Clock

URL = "mqtt://broker.city.example:1883"
GATEWAYS = [f"b827ebfffe00{index:04x}" for index in range(1, 11)]
TEN_CHANNELS = [{"frequency_hz": 867_100_000 + index * 200_000} for index in range(10)]


class Rig:
    """A fleet with ten gateways, its engine, and an emulated gateway for each."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = Clock(T0 + 10)
        self.fleet_key = Ed25519PrivateKey.generate()
        self.engine = RolloutEngine(store, self.fleet_key, clock=self.clock)
        self.api = ApiClient(create_app(store, clock=self.clock), role="operator")
        self.gateways: dict[str, EmulatedConfigGateway] = {}
        self.published: list[Publication] = []
        self.silent: set[str] = set()
        for gid in GATEWAYS:
            identity = Ed25519PrivateKey.generate()
            store.create_gateway(
                gid,
                name=gid,
                sign_public_key=raw_public(identity),
                seal_public_key=raw_public(X25519PrivateKey.generate()),
                created=T0,
            )
            self.gateways[gid] = EmulatedConfigGateway(
                gateway_id=gid,
                identity=identity,
                trusted=trusted_keys(self.fleet_key.public_key()),
            )
        self.layer("defaults", None, {"mqtt": {"url": URL}})

    def layer(self, kind: Any, name: str | None, settings: dict[str, Any]) -> None:
        put_layer(self.store.sql, kind, name, settings, actor="test", at=self.clock.now)

    def step(self) -> list[Publication]:
        """One engine tick; what it publishes is delivered, and the answers recorded."""
        due = self.engine.tick()
        self.engine.published(due)
        self.published.extend(due)
        for item in due:
            if item.gateway_id in self.silent:
                continue
            for report in self.gateways[item.gateway_id].handle(item.payload):
                self.engine.handle_status(status_topic(item.gateway_id), report)
        return due

    def settle(self, steps: int = 8) -> None:
        for _ in range(steps):
            self.step()

    def start(self, **body: Any) -> dict[str, Any]:
        response = self.api.post("/api/v1/rollouts", json=body)
        assert response.status_code == 201, response.text
        found: dict[str, Any] = response.json()
        return found

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        found: dict[str, Any] = ok(self.api.get(f"/api/v1/rollouts/{rollout_id}"))
        return found

    def per_gateway(self, rollout_id: int) -> dict[str, dict[str, Any]]:
        items = ok(self.api.get(f"/api/v1/rollouts/{rollout_id}/gateways"))["items"]
        return {item["gateway_id"]: item for item in items}


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def rig(store: Store) -> Rig:
    return Rig(store)


def test_a_good_rollout_goes_wave_by_wave_and_completes(rig: Rig) -> None:
    started = rig.start(target="all", canary=1, waves=[50, 100], comment="tx power")
    assert [wave["gateways"] for wave in started["waves"]] == [1, 4, 5]
    assert [wave["name"] for wave in started["waves"]] == ["canary", "50%", "100%"]
    rollout_id = started["id"]

    first = rig.step()
    assert [item.gateway_id for item in first] == GATEWAYS[:1]
    second = rig.step()
    assert [item.gateway_id for item in second] == GATEWAYS[1:5]
    third = rig.step()
    assert [item.gateway_id for item in third] == GATEWAYS[5:]
    rig.step()

    found = rig.rollout(rollout_id)
    assert found["state"] == "completed"
    assert found["counts"]["applied"] == 10
    assert [wave["state"] for wave in found["waves"]] == ["passed"] * 3
    expected_hash = ok(rig.api.get(f"/api/v1/gateways/{GATEWAYS[0]}/config/effective"))[
        "content_hash"
    ]
    for gid, item in rig.per_gateway(rollout_id).items():
        assert item["state"] == "applied"
        assert item["content_hash"] == expected_hash
        assert rig.gateways[gid].running_hash == bytes.fromhex(expected_hash)
        assert item["seq"] == 1
        assert item["sent_at"] is not None
        assert item["answered_at"] is not None
    # Every document was published once, retained on the gateway's own config topic.
    assert sorted(item.topic for item in rig.published) == sorted(
        f"owlgate/v1/gw/{gid}/config" for gid in GATEWAYS
    )
    status = ok(rig.api.get(f"/api/v1/gateways/{GATEWAYS[3]}/config/status"))
    assert status["last_status"]["state"] == "applied"
    assert status["drift"] is False
    assert status["running_hash"] == expected_hash


def test_a_bad_config_fails_on_the_canary_and_later_waves_are_never_sent(rig: Rig) -> None:
    rig.layer("defaults", None, {"mqtt": {"url": URL}, "radio": {"channels": TEN_CHANNELS}})
    rollout_id = rig.start(target="all", canary=2, waves=[100])["id"]
    rig.settle()

    found = rig.rollout(rollout_id)
    assert found["state"] == "failed"
    assert "max_failures 0" in found["reason"]
    # Both canaries were published together (one wave); the rest never was.
    assert found["counts"]["rolled_back"] == 2
    assert found["counts"]["cancelled"] == 8
    assert sorted(item.gateway_id for item in rig.published) == GATEWAYS[:2]
    per_gateway = rig.per_gateway(rollout_id)
    assert per_gateway[GATEWAYS[0]]["reason"] == "radio"
    assert all(per_gateway[gid]["state"] == "cancelled" for gid in GATEWAYS[2:])
    assert all(rig.gateways[gid].reports == [] for gid in GATEWAYS[2:])
    events = ok(
        rig.api.as_role("admin").get("/api/v1/audit", params={"action": "rollout.stopped"})
    )["items"]
    assert [event["target"] for event in events] == [f"rollout:{rollout_id}"]


def test_a_failure_within_the_limits_lets_the_rollout_go_on(rig: Rig) -> None:
    rig.layer("gateway", GATEWAYS[0], {"radio": {"channels": TEN_CHANNELS}})
    rollout_id = rig.start(
        target="all", canary=1, waves=[100], success_threshold_pct=50, max_failure_pct=20
    )["id"]
    rig.settle()
    found = rig.rollout(rollout_id)
    # The canary wave (one gateway) missed its threshold: failed, whatever the error limit.
    assert found["state"] == "failed"
    assert "success_threshold_pct 50" in found["reason"]

    rig.layer("gateway", GATEWAYS[0], {"log_level": "debug"})
    rig.layer("gateway", GATEWAYS[9], {"radio": {"channels": TEN_CHANNELS}})
    second = rig.start(
        target="all", canary=1, waves=[100], max_failures=1, success_threshold_pct=80
    )["id"]
    rig.settle()
    found = rig.rollout(second)
    assert found["state"] == "completed"
    assert found["counts"] == {**found["counts"], "applied": 9, "rolled_back": 1}
    assert found["failures"] == 1


def test_pause_holds_the_next_wave_resume_goes_on_abort_cancels(rig: Rig) -> None:
    rollout_id = rig.start(target=GATEWAYS[:6], canary=2, waves=[50, 100])["id"]
    assert len(rig.step()) == 2
    ok(rig.api.post(f"/api/v1/rollouts/{rollout_id}/pause"))
    assert rig.step() == []
    assert rig.rollout(rollout_id)["state"] == "paused"
    conflict = rig.api.post(f"/api/v1/rollouts/{rollout_id}/pause")
    assert conflict.status_code == 409
    assert "only a running one pauses" in conflict.json()["error"]["message"]

    ok(rig.api.post(f"/api/v1/rollouts/{rollout_id}/resume"))
    assert [item.gateway_id for item in rig.step()] == GATEWAYS[2:3]
    ok(rig.api.post(f"/api/v1/rollouts/{rollout_id}/abort"))
    rig.settle()
    found = rig.rollout(rollout_id)
    assert found["state"] == "aborted"
    assert found["counts"]["applied"] == 3
    assert found["counts"]["cancelled"] == 3
    assert len(rig.published) == 3
    actions = [
        event["action"]
        for event in ok(rig.api.as_role("admin").get("/api/v1/audit"))["items"]
        if event["target"] == f"rollout:{rollout_id}"
    ]
    assert sorted(actions) == sorted(
        ["rollout.started", "rollout.paused", "rollout.resumed", "rollout.aborted"]
    )


def test_rollback_sends_the_previous_content_with_a_higher_seq(rig: Rig) -> None:
    first = rig.start(target=GATEWAYS[:3])["id"]
    rig.settle()
    before = {gid: rig.gateways[gid].running_hash for gid in GATEWAYS[:3]}
    rig.layer("defaults", None, {"mqtt": {"url": URL}, "radio": {"tx_power_dbm": 10}})
    second = rig.start(target=GATEWAYS[:3])["id"]
    rig.settle()
    assert rig.rollout(second)["state"] == "completed"
    assert all(rig.gateways[gid].running_hash != before[gid] for gid in GATEWAYS[:3])
    rig.published.clear()

    found = ok(rig.api.post(f"/api/v1/rollouts/{second}/rollback"))
    assert found["state"] == "rolled_back"
    rig.settle()
    assert sorted(item.gateway_id for item in rig.published) == GATEWAYS[:3]
    for gid in GATEWAYS[:3]:
        gateway = rig.gateways[gid]
        assert gateway.running_hash == before[gid]
        assert [doc.seq for doc in gateway.applied] == [1, 2, 3]
        assert gateway.applied[-1].config.tx_power_dbm == 14
    rollback = rig.per_gateway(second)[GATEWAYS[0]]["rollback"]
    assert rollback["state"] == "applied"
    assert rollback["seq"] == 3
    # A rollback of a rollout with no earlier document skips its gateways, saying why.
    first_rollback = ok(rig.api.post(f"/api/v1/rollouts/{first}/rollback"))
    assert first_rollback["state"] == "rolled_back"
    skipped = rig.per_gateway(first)[GATEWAYS[0]]["rollback"]
    assert skipped["state"] == "skipped"
    assert "no previous document" in skipped["reason"]
    again = rig.api.post(f"/api/v1/rollouts/{second}/rollback")
    assert again.status_code == 409


def test_a_gateway_that_does_not_answer_times_out(rig: Rig) -> None:
    rig.silent.add(GATEWAYS[1])
    rollout_id = rig.start(
        target=GATEWAYS[:4], timeout_s=30, max_failures=1, success_threshold_pct=75
    )["id"]
    rig.settle(3)
    found = rig.rollout(rollout_id)
    assert found["state"] == "running"
    assert found["counts"]["sent"] == 1
    rig.clock.now += 31
    rig.settle(2)
    found = rig.rollout(rollout_id)
    assert found["state"] == "completed"
    assert found["counts"]["timeout"] == 1
    item = rig.per_gateway(rollout_id)[GATEWAYS[1]]
    assert item["state"] == "timeout"
    assert item["reason"] == "timeout"
    # It answers late: its report is recorded, the rollout's decision stands.
    late = next(p for p in rig.published if p.gateway_id == GATEWAYS[1])
    for report in rig.gateways[GATEWAYS[1]].handle(late.payload):
        rig.engine.handle_status(status_topic(GATEWAYS[1]), report)
    assert rig.per_gateway(rollout_id)[GATEWAYS[1]]["state"] == "timeout"
    status = ok(rig.api.get(f"/api/v1/gateways/{GATEWAYS[1]}/config/status"))
    assert status["last_status"]["state"] == "applied"


def test_seq_is_above_anything_a_gateway_reported(rig: Rig) -> None:
    gid = GATEWAYS[0]
    gateway = rig.gateways[gid]
    report = ConfigStatus(state="applied", seq=41, at=int(T0), running_hash=bytes(32))
    rig.engine.handle_status(
        status_topic(gid), sign(encode_config_status(report), gateway.identity)
    )
    rig.start(target=[gid])
    (item,) = rig.step()
    assert item.seq == 42
    assert gateway.applied[-1].seq == 42
    status = ok(rig.api.get(f"/api/v1/gateways/{gid}/config/status"))
    assert status["last_seq"] == 42


def test_forged_and_unknown_reports_are_refused_and_counted(rig: Rig) -> None:
    gid = GATEWAYS[0]
    report = encode_config_status(ConfigStatus(state="applied", seq=1, at=int(T0)))
    with pytest.raises(StatusRejected) as forged:
        rig.engine.handle_status(status_topic(gid), sign(report, Ed25519PrivateKey.generate()))
    assert forged.value.reason == "signature"
    with pytest.raises(StatusRejected) as unknown:
        rig.engine.handle_status(
            status_topic("b827ebfffe00ffff"), sign(report, rig.gateways[gid].identity)
        )
    assert unknown.value.reason == "unknown_gateway"
    with pytest.raises(StatusRejected) as garbage:
        rig.engine.handle_status(status_topic(gid), sign(b"\xa0", rig.gateways[gid].identity))
    assert garbage.value.reason == "malformed"
    with pytest.raises(StatusRejected) as unsigned:
        rig.engine.handle_status(status_topic(gid), report)
    assert unsigned.value.reason == "signature"
    assert rig.engine.counters.rejected == {"signature": 2, "unknown_gateway": 1, "malformed": 1}
    assert rig.engine.counters.statuses == 0
    status = ok(rig.api.get(f"/api/v1/gateways/{gid}/config/status"))
    assert status["last_status"] is None


def test_drift_is_shown_when_a_gateway_runs_something_else(rig: Rig) -> None:
    gid = GATEWAYS[0]
    rig.start(target=[gid])
    rig.settle(2)
    other = ConfigStatus(state="applied", seq=1, at=int(T0), running_hash=b"\x01" * 32)
    rig.engine.handle_status(
        status_topic(gid), sign(encode_config_status(other), rig.gateways[gid].identity)
    )
    status = ok(rig.api.get(f"/api/v1/gateways/{gid}/config/status"))
    assert status["drift"] is True
    assert status["running_hash"] == "01" * 32
    rig.clock.now += 5
    rig.engine.tick()
    assert rig.engine.counters.as_dict()["gauges"] == {"drift": 1}


def _offline_document(seq: int, target: str, key: Ed25519PrivateKey) -> bytes:
    text = json.dumps(
        {
            "seq": seq,
            "target": {"gateway": target},
            "config": {"mqtt": {"url": URL}, "log_level": "debug"},
        }
    )
    doc: ConfigDocument = from_json(text)
    return sign_config(doc, key)


def test_a_document_signed_offline_is_checked_and_published_as_is(rig: Rig) -> None:
    gid = GATEWAYS[0]
    offline = Ed25519PrivateKey.generate()
    public_pem = offline.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    rig.gateways[gid].trusted.update(trusted_keys(offline.public_key()))
    cbor = {"Content-Type": "application/cbor"}
    document = _offline_document(5, gid, offline)
    nothing_known = rig.api.post("/api/v1/config/documents", content=document, headers=cbor)
    assert nothing_known.status_code == 409
    assert "config-key import" in nothing_known.json()["error"]["message"]
    # What serve does at start: the fleet signing key verifies uploads too.
    rig.engine.remember_fleet_key()
    refused = rig.api.post("/api/v1/config/documents", content=document, headers=cbor)
    assert refused.status_code == 422
    assert "(signature)" in refused.json()["error"]["message"]

    import_config_key(rig.store.sql, None, public_pem, actor="test")
    accepted = rig.api.post("/api/v1/config/documents", content=document, headers=cbor)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["gateways"] == [gid]
    (item,) = rig.step()
    assert item.payload == document
    assert rig.gateways[gid].applied[-1].config.log_level == "debug"

    stale = rig.api.post(
        "/api/v1/config/documents", content=_offline_document(5, gid, offline), headers=cbor
    )
    assert stale.status_code == 409
    assert "seq 6 or more" in stale.json()["error"]["message"]
    # The fleet's own next document for that gateway is above the uploaded one.
    rig.start(target=[gid])
    (mine,) = rig.step()
    assert mine.seq == 6
    not_cbor = rig.api.post("/api/v1/config/documents", content=b"x")
    assert not_cbor.status_code == 422
    assert (
        rig.api.as_role("technician")
        .post("/api/v1/config/documents", content=document, headers=cbor)
        .status_code
        == 403
    )


def test_roles_and_typed_errors(rig: Rig) -> None:
    technician = rig.api.as_role("technician")
    assert technician.post("/api/v1/rollouts", json={"target": "all"}).status_code == 403
    rollout_id = rig.start(target="all")["id"]
    assert technician.get(f"/api/v1/rollouts/{rollout_id}").status_code == 200
    assert technician.get("/api/v1/rollouts").json()["items"][0]["id"] == rollout_id
    assert technician.post(f"/api/v1/rollouts/{rollout_id}/pause").status_code == 403

    busy = rig.api.post("/api/v1/rollouts", json={"target": [GATEWAYS[2]]})
    assert busy.status_code == 409
    assert f"abort it (POST /api/v1/rollouts/{rollout_id}/abort)" in busy.json()["error"]["message"]
    unknown = rig.api.post("/api/v1/rollouts", json={"target": ["b827ebfffe00ffff"]})
    assert unknown.status_code == 404
    empty_group = rig.api.post("/api/v1/rollouts", json={"target": "north"})
    assert empty_group.status_code == 404
    assert "put gateways in it first" in empty_group.json()["error"]["message"]
    waves = rig.api.post("/api/v1/rollouts", json={"target": "all", "waves": [50, 20, 100]})
    assert waves.status_code == 422
    last = rig.api.post("/api/v1/rollouts", json={"target": "all", "waves": [10, 50]})
    assert last.status_code == 422
    assert "last wave must be 100" in last.json()["error"]["message"]
    assert rig.api.get("/api/v1/rollouts/999").status_code == 404


def test_no_effective_configuration_is_a_conflict(store: Store) -> None:
    identity = Ed25519PrivateKey.generate()
    store.create_gateway(
        GATEWAYS[0],
        name="one",
        sign_public_key=raw_public(identity),
        seal_public_key=raw_public(X25519PrivateKey.generate()),
        created=T0,
    )
    api = ApiClient(create_app(store, clock=Clock(T0)), role="operator")
    response = api.post("/api/v1/rollouts", json={"target": "all"})
    assert response.status_code == 409
    assert "mqtt.url" in response.json()["error"]["message"]
    assert api.get("/api/v1/rollouts").json()["items"] == []


def test_seqs_and_queued_documents_survive_a_restart(store_factory: StoreFactory) -> None:
    first = store_factory()
    identity = Ed25519PrivateKey.generate()
    first.create_gateway(
        GATEWAYS[0],
        name="one",
        sign_public_key=raw_public(identity),
        seal_public_key=raw_public(X25519PrivateKey.generate()),
        created=T0,
    )
    put_layer(first.sql, "defaults", None, {"mqtt": {"url": URL}}, actor="test")
    key = Ed25519PrivateKey.generate()
    rollout_id = start_rollout(first, RolloutCreate(target="all"), actor="test")
    (sent,) = RolloutEngine(first, key).tick()  # signed, then the fleet stops before the PUBACK
    first.close()

    again = store_factory()
    engine = RolloutEngine(again, key)
    (resent,) = engine.tick()
    assert resent == sent  # the same document, not a new seq
    engine.published([resent])
    change_rollout(again.sql, rollout_id, "abort", actor="test")
    start_rollout(again, RolloutCreate(target="all"), actor="test")
    (following,) = engine.tick()
    assert following.seq == sent.seq + 1


def test_the_tick_loop_stops_when_cancelled_just_as_it_is_woken(rig: Rig) -> None:
    """A wake and a cancellation in the same loop turn (a status report arriving as the
    service shuts down) must still stop the tick loop; with ``asyncio.wait_for`` in Python
    3.11 the cancellation was lost and the shutdown waited for ever."""
    service = ConfigService(rig.engine, "127.0.0.1", 1, tick_s=0.05)
    real_tick = rig.engine.tick

    async def scenario() -> bool:
        running = asyncio.get_running_loop()
        ticked = asyncio.Event()

        def noted_tick() -> list[Publication]:
            running.call_soon_threadsafe(ticked.set)
            return real_tick()

        rig.engine.tick = noted_tick  # type: ignore[method-assign]
        loop = asyncio.create_task(service._ticks(cast(aiomqtt.Client, None)))
        await ticked.wait()
        await asyncio.sleep(0.01)  # back in the wait for the next tick
        service.wake()
        loop.cancel()
        done, _ = await asyncio.wait({loop}, timeout=2.0)
        if not done:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
        return loop in done and loop.cancelled()

    assert asyncio.run(scenario())


def test_fleet_processes_sharing_a_database_change_a_rollout_one_after_the_other(
    postgres_url: str, vault: KeyVault
) -> None:
    # Two stores on one PostgreSQL database, as two fleet processes running the config service
    # have: while one is changing the rollouts, the other's tick waits for it, then starts
    # from what it committed.
    with Store(postgres_url, vault=vault) as mine, Store(postgres_url, vault=vault) as theirs:
        rig = Rig(mine)
        started = rig.start(target="all", canary=1, waves=[100], comment="tx power")
        ticked: list[list[Publication]] = []
        with theirs.sql.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", [ROLLOUT_LOCK])
            tick = threading.Thread(target=lambda: ticked.append(rig.engine.tick()))
            tick.start()
            tick.join(0.5)
            assert tick.is_alive(), "the tick went on while another process held the rollouts"
            assert rig.per_gateway(started["id"])[GATEWAYS[0]]["state"] == "pending"
        tick.join(10)
        assert not tick.is_alive()
        assert [item.gateway_id for item in ticked[0]] == GATEWAYS[:1]
        rig.engine.published(ticked[0])
        for report in rig.gateways[GATEWAYS[0]].handle(ticked[0][0].payload):
            rig.engine.handle_status(status_topic(GATEWAYS[0]), report)
        # Both processes tick at once: the next wave is queued once, one seq per gateway.
        other = RolloutEngine(theirs, rig.fleet_key, clock=rig.clock)
        both: list[list[Publication]] = []
        threads = [
            threading.Thread(target=lambda engine=engine: both.append(engine.tick()))
            for engine in (rig.engine, other)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        # Neither tick failed (a wave queued twice would break config_documents' key).
        assert len(both) == 2
        documents = mine.sql.query_tuples(
            "SELECT gateway_id, seq FROM config_documents WHERE rollout_id = ? ORDER BY gateway_id",
            [started["id"]],
        )
        assert documents == [(gid, 1) for gid in sorted(GATEWAYS)]
