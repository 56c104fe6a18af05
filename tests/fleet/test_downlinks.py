"""Node settings by downlink in the fleet: the API checks and queues them, the gateway that
heard the device best gets them, and the device's settings ack (ingested as gateways send
it) confirms or refuses them; unanswered ones are sent again, then expire. Every test runs on
SQLite and PostgreSQL (the ``registry`` fixture)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from owlgate.codecs.downlink import decode_downlink
from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch
from owlgate.codecs.payloads import decode_settings
from owlgate.codecs.signed import sign, verify
from owlgate.fleet.api import create_app
from owlgate.fleet.audit import events
from owlgate.fleet.downlinks import Downlinks, DownlinkSettings, Outgoing, queue_settings
from owlgate.fleet.ingest import Ingest
from owlgate.fleet.store import Store
from tests.fleet.conftest import ABP_EUI, OTAA_EUI, T0, raw_public
from tests.fleet.test_api import ApiClient, Clock

NEAR = "b827ebfffe0000a1"
FAR = "b827ebfffe0000a2"


class World:
    """The registry with two gateways whose keys the test holds, the API, the ingest and the
    downlink service's work, all on one clock."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = Clock(T0 + 100)
        self.fleet_key = Ed25519PrivateKey.generate()
        self.gateway_keys = {gid: Ed25519PrivateKey.generate() for gid in (NEAR, FAR)}
        for gid, key in self.gateway_keys.items():
            store.create_gateway(
                gid,
                name=gid,
                sign_public_key=raw_public(key),
                seal_public_key=raw_public(X25519PrivateKey.generate()),
                created=T0,
            )
        self.api = ApiClient(create_app(store, clock=self.clock), role="operator")
        self.ingest = Ingest(store, clock=self.clock)
        self.downlinks = Downlinks(
            store,
            self.fleet_key,
            settings=DownlinkSettings(max_uplinks=2, max_attempts=2),
            clock=self.clock,
        )
        self._seq = {gid: 0 for gid in self.gateway_keys}
        self.fcnt = 100

    def uplink(self, values: dict[str, object], heard: dict[str, tuple[int, float]]) -> None:
        """One uplink of the ABP device, heard by the gateways in ``heard`` (RSSI, SNR),
        each sending it in a signed batch, as the edge does."""
        self.fcnt += 1
        for gid, (rssi, snr) in heard.items():
            reading = Reading(
                bytes.fromhex(ABP_EUI), int(self.clock.now), values, rssi, snr, self.fcnt
            )
            self._seq[gid] += 1
            batch = Batch(bytes.fromhex(gid), self._seq[gid], int(self.clock.now), [reading])
            payload = sign(encode_batch(batch), self.gateway_keys[gid])
            self.ingest.handle(f"owlgate/v1/gw/{gid}/telemetry", payload)
        self.clock.now += 60

    def post(self, settings: dict[str, object], dev_eui: str = ABP_EUI) -> Any:
        return self.api.request("POST", f"/api/v1/devices/{dev_eui}/settings", json=settings)

    def listing(self, dev_eui: str = ABP_EUI) -> list[dict[str, Any]]:
        response = self.api.request("GET", f"/api/v1/devices/{dev_eui}/downlinks")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def states(self) -> list[str]:
        return [item["state"] for item in reversed(self.listing())]


MEASUREMENT: dict[str, object] = {"occupied": True, "battery_mv": 3500}


def ack(seq: int, result: str = "applied", setting: str | None = None) -> dict[str, object]:
    values: dict[str, object] = {"message": "settings_ack", "settings_seq": seq, "result": result}
    if setting is not None:
        values["setting"] = setting
    return values


@pytest.fixture
def world(registry: Store) -> World:
    return World(registry)


def test_settings_are_checked_by_the_profile_encoder(world: World) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"report_interval_s": 59}, "report_interval_s"),
        ({"report_interval_s": 1.5}, "report_interval_s"),
        ({"fill_alarm_pct": 80}, "fill_alarm_pct"),  # a bin setting; the device is parking
        ({"brightness": 3}, "brightness"),
        ({}, "at least one setting"),
    ]
    for body, named in cases:
        response = world.post(body)
        assert response.status_code == 422, (body, response.text)
        assert named in response.json()["error"]["message"], body
    assert world.post({"report_interval_s": "600"}).status_code == 422
    assert world.post({"report_interval_s": 600}, dev_eui="70b3d57ed00000ee").status_code == 404
    technician = world.api.as_role("technician")
    refused = technician.request(
        "POST", f"/api/v1/devices/{ABP_EUI}/settings", json={"report_interval_s": 600}
    )
    assert refused.status_code == 403
    assert world.listing() == []
    assert technician.request("GET", f"/api/v1/devices/{ABP_EUI}/downlinks").status_code == 200


def test_queued_with_a_wrapping_seq_audited_and_listed(world: World) -> None:
    first = world.post({"report_interval_s": 600, "occupancy_sensitivity": 4})
    assert first.status_code == 202, first.text
    body = first.json()
    assert (body["state"], body["seq"], body["f_port"], body["gateway_id"]) == (
        "queued",
        0,
        21,
        None,
    )
    assert decode_settings("parking-v1", 21, bytes.fromhex(body["payload"])).settings == {
        "report_interval_s": 600,
        "occupancy_sensitivity": 4,
    }
    second = world.post({"request_status": True}).json()
    assert second["seq"] == 1
    assert [item["id"] for item in world.listing()] == [second["id"], body["id"]]
    page = world.api.request("GET", f"/api/v1/devices/{ABP_EUI}/downlinks?limit=1").json()
    assert [item["id"] for item in page["items"]] == [second["id"]]
    rest = world.api.request(
        "GET", f"/api/v1/devices/{ABP_EUI}/downlinks?limit=1&after={page['next']}"
    ).json()
    assert [item["id"] for item in rest["items"]] == [body["id"]]
    (event, _) = events(world.store.sql, action="device.settings_queued").items
    assert event.target == f"device:{ABP_EUI}"
    assert event.details["seq"] == 0
    assert event.details["settings"] == {"report_interval_s": 600, "occupancy_sensitivity": 4}
    # The sequence number is one byte and wraps.
    world.store.sql.execute("UPDATE downlinks SET seq = 255 WHERE id = ?", [second["id"]])
    assert world.post({"report_interval_s": 900}).json()["seq"] == 0


def _pushed(world: World) -> list[Outgoing]:
    return world.downlinks.run_once()


def test_the_best_gateway_gets_it_at_once_and_the_ack_confirms(world: World) -> None:
    # The far gateway is louder once, the near one clearly better on average SNR.
    world.uplink(MEASUREMENT, {NEAR: (-100, 8.0), FAR: (-80, 1.0)})
    world.uplink(MEASUREMENT, {NEAR: (-101, 7.5), FAR: (-85, 9.0)})
    assert world.downlinks.best_gateway(ABP_EUI) == NEAR
    first = world.post({"report_interval_s": 600}).json()
    second = world.post({"occupancy_sensitivity": 2}).json()
    (out,) = _pushed(world)
    assert out.topic == f"owlgate/v1/gw/{NEAR}/down"
    message = decode_downlink(verify(out.payload, world.fleet_key.public_key()).payload)
    assert message.id == first["id"]
    assert (message.gateway.hex(), message.dev_eui.hex()) == (NEAR, ABP_EUI)
    assert (message.f_port, message.payload.hex()) == (21, first["payload"])
    assert message.min_f_cnt_down == 0
    assert message.expires_at == int(world.clock.now + DownlinkSettings().hold_s)
    assert world.states() == ["sent", "queued"]
    # One at a time per device: nothing more while the first is open.
    assert _pushed(world) == []
    # The uplink the gateway answers, then the one carrying the ack.
    world.uplink(MEASUREMENT, {NEAR: (-100, 8.0)})
    assert _pushed(world) == []
    world.uplink(ack(first["seq"]), {NEAR: (-100, 8.0), FAR: (-90, 2.0)})
    (out,) = _pushed(world)
    listing = {item["id"]: item for item in world.listing()}
    assert listing[first["id"]]["state"] == "confirmed"
    assert listing[first["id"]]["result"] == "applied"
    assert listing[first["id"]]["gateway_id"] == NEAR
    assert listing[second["id"]]["state"] == "sent"
    following = decode_downlink(verify(out.payload, world.fleet_key.public_key()).payload)
    assert (following.id, following.min_f_cnt_down) == (second["id"], 1)
    # An ack naming the refused setting refuses it.
    world.uplink(ack(second["seq"], "unsupported", "occupancy_sensitivity"), {NEAR: (-99, 8.0)})
    assert _pushed(world) == []
    done = world.listing()[0]
    assert (done["state"], done["result"], done["refused_setting"]) == (
        "refused",
        "unsupported",
        "occupancy_sensitivity",
    )
    assert world.downlinks.counters.as_dict() | {} == {
        "pushed": 2,
        "resent": 0,
        "confirmed": 1,
        "refused": 1,
        "expired": 0,
        "publish_failures": 0,
        "reconnects": 0,
        "errors": 0,
    }


def test_a_device_no_gateway_heard_gets_it_after_its_first_uplink(world: World) -> None:
    queued = world.post({"report_interval_s": 600}).json()
    assert _pushed(world) == []
    assert world.states() == ["queued"]
    # An ack with the seq that arrived before the downlink existed would not count: the
    # readings before it was queued are not looked at.
    world.uplink(MEASUREMENT, {FAR: (-110, -3.0)})
    (out,) = _pushed(world)
    assert out.topic == f"owlgate/v1/gw/{FAR}/down"
    assert world.listing()[0]["id"] == queued["id"]
    assert world.states() == ["sent"]


def test_unanswered_it_is_sent_again_then_expires(world: World) -> None:
    world.uplink(MEASUREMENT, {FAR: (-100, 1.0)})
    world.post({"report_interval_s": 600})
    (out,) = _pushed(world)
    assert FAR in out.topic
    # Two uplinks without the ack (max_uplinks=2): sent again, to who is best now.
    world.uplink(MEASUREMENT, {NEAR: (-70, 9.0), FAR: (-100, 1.0)})
    world.uplink(MEASUREMENT, {NEAR: (-70, 9.0)})
    (again,) = _pushed(world)
    assert NEAR in again.topic
    assert (
        decode_downlink(verify(again.payload, world.fleet_key.public_key()).payload).min_f_cnt_down
        == 1
    )
    item = world.listing()[0]
    assert (item["state"], item["attempts"], item["gateway_id"]) == ("sent", 2, NEAR)
    world.uplink(MEASUREMENT, {NEAR: (-70, 9.0)})
    world.uplink(MEASUREMENT, {NEAR: (-70, 9.0)})
    assert _pushed(world) == []
    assert world.states() == ["expired"]
    assert world.downlinks.counters.resent == 1
    assert world.downlinks.counters.expired == 1
    # Time runs out too: queued with an hour to live, for a device never heard.
    queue_settings(
        world.store,
        OTAA_EUI,
        {"fill_alarm_pct": 90},
        actor="test",
        at=world.clock.now,
        config=DownlinkSettings(expiry_s=3600),
    )
    world.clock.now += 3599
    assert _pushed(world) == []
    assert [item["state"] for item in world.listing(OTAA_EUI)] == ["queued"]
    world.clock.now += 1
    assert _pushed(world) == []
    assert [item["state"] for item in world.listing(OTAA_EUI)] == ["expired"]
    assert world.downlinks.counters.expired == 2


def test_a_publish_that_fails_puts_it_back(world: World) -> None:
    world.uplink(MEASUREMENT, {NEAR: (-100, 5.0)})
    world.post({"report_interval_s": 600})
    (out,) = _pushed(world)
    world.downlinks.unpush(out.downlink_id)
    item = world.listing()[0]
    assert (item["state"], item["attempts"]) == ("queued", 0)
    (again,) = _pushed(world)
    assert again.downlink_id == out.downlink_id


def test_other_devices_are_not_mixed_up(world: World) -> None:
    # The OTAA device has a downlink and no reading: the ABP device's uplinks do not send it.
    world.post({"report_interval_s": 600}, dev_eui=OTAA_EUI)
    world.uplink(MEASUREMENT, {NEAR: (-100, 5.0)})
    assert _pushed(world) == []
    assert [item["state"] for item in world.listing(OTAA_EUI)] == ["queued"]
