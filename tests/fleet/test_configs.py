"""Configuration layers through the HTTP API: defaults, groups and gateways, versioned,
merged into each gateway's effective configuration, diffed, refused when the merge is
invalid, changed by operators only, every change in the audit log. On SQLite and PostgreSQL
(the ``registry`` fixture)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from owlgate.codecs.configdoc import from_json
from owlgate.fleet.api import create_app
from owlgate.fleet.sql import DataRefused
from owlgate.fleet.store import Store
from tests.fleet.conftest import GW1, GW2, T0
from tests.fleet.test_api import ApiClient, Clock

URL = "mqtt://broker.city.example:8883"


@pytest.fixture
def operator(registry: Store) -> ApiClient:
    return ApiClient(create_app(registry, clock=Clock(T0 + 10)), role="operator")


def put(
    client: ApiClient, path: str, settings: dict[str, Any], comment: str = ""
) -> httpx.Response:
    return client.request("PUT", path, json={"settings": settings, "comment": comment})


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def effective(client: ApiClient, gateway_id: str) -> dict[str, Any]:
    return ok(client.get(f"/api/v1/gateways/{gateway_id}/config/effective"))


def join(client: ApiClient, gateway_id: str, group: str | None) -> httpx.Response:
    return client.request("PUT", f"/api/v1/gateways/{gateway_id}/group", json={"group": group})


def audit(client: ApiClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = ok(
        client.as_role("admin").get("/api/v1/audit", params={"action": "config.changed"})
    )["items"]
    return items


def layered(client: ApiClient) -> None:
    """defaults v1, group north v1, GW1 v1 in north; GW2 in no group."""
    ok(
        put(
            client,
            "/api/v1/config/defaults",
            {"mqtt": {"url": URL}, "radio": {"tx_power_dbm": 14}, "log_level": "info"},
            "city broker",
        )
    )
    ok(put(client, "/api/v1/config/groups/north", {"radio": {"tx_power_dbm": 10}}))
    ok(put(client, f"/api/v1/config/gateways/{GW1}", {"log_level": "debug"}))
    ok(join(client, GW1, "north"))


def test_layers_merge_in_order(operator: ApiClient) -> None:
    layered(operator)
    one = effective(operator, GW1)
    assert one["group"] == "north"
    assert one["config"]["radio"]["tx_power_dbm"] == 10
    assert one["config"]["log_level"] == "debug"
    assert one["config"]["mqtt"]["url"] == URL
    # Keys no layer sets keep the built-in defaults of GatewayConfig.
    assert one["config"]["batch"] == {"max_readings": 100, "max_age_ms": 100}
    assert one["sources"]["radio.tx_power_dbm"] == {"layer": "group", "name": "north", "version": 1}
    assert one["sources"]["log_level"] == {"layer": "gateway", "name": GW1, "version": 1}
    assert one["sources"]["mqtt.url"] == {"layer": "defaults", "name": None, "version": 1}
    assert one["sources"]["batch.max_readings"] == {
        "layer": "builtin",
        "name": None,
        "version": None,
    }
    assert [(x["layer"], x["version"]) for x in one["layers"]] == [
        ("defaults", 1),
        ("group", 1),
        ("gateway", 1),
    ]
    # The hash is the configuration document's content hash of these settings.
    document = {"seq": 1, "target": {"gateway": GW1}, "config": one["config"]}
    assert one["content_hash"] == from_json(json.dumps(document)).content_hash.hex()

    two = effective(operator, GW2)
    assert two["group"] is None
    assert two["config"]["radio"]["tx_power_dbm"] == 14
    assert two["config"]["log_level"] == "info"
    assert two["content_hash"] != one["content_hash"]


def test_same_layers_give_the_same_hash(operator: ApiClient) -> None:
    layered(operator)
    # GW2 gets the same settings another way: its own layer instead of group and gateway.
    ok(
        put(
            operator,
            f"/api/v1/config/gateways/{GW2}",
            {"radio": {"tx_power_dbm": 10}, "log_level": "debug"},
        )
    )
    one, two = effective(operator, GW1), effective(operator, GW2)
    assert one["config"] == two["config"]
    assert one["content_hash"] == two["content_hash"]
    assert effective(operator, GW1) == one


def test_moving_a_gateway_between_groups_changes_its_effective_config(
    operator: ApiClient,
) -> None:
    layered(operator)
    ok(put(operator, "/api/v1/config/groups/south", {"radio": {"tx_power_dbm": 12}}))
    before = effective(operator, GW1)
    assert ok(join(operator, GW1, "south")) == {
        "gateway_id": GW1,
        "group": "south",
        "previous": "north",
    }
    moved = effective(operator, GW1)
    assert moved["group"] == "south"
    assert moved["config"]["radio"]["tx_power_dbm"] == 12
    assert moved["content_hash"] != before["content_hash"]
    ok(join(operator, GW1, None))
    alone = effective(operator, GW1)
    assert alone["group"] is None
    assert alone["config"]["radio"]["tx_power_dbm"] == 14
    ok(join(operator, GW1, "north"))
    assert effective(operator, GW1)["content_hash"] == before["content_hash"]


def test_an_invalid_merge_is_refused_and_nothing_stored(operator: ApiClient) -> None:
    layered(operator)
    events = audit(operator)

    # Out of range in the layer itself.
    refused = put(operator, "/api/v1/config/groups/north", {"radio": {"tx_power_dbm": 99}})
    assert refused.status_code == 422
    assert refused.json()["error"]["message"].startswith(
        "radio.tx_power_dbm must be an integer 0..14"
    )

    # Valid alone, invalid merged: the RAK3172 backend transmits at 5 dBm or more, and GW1's
    # own layer, which the group change reaches, sets 3 dBm.
    ok(put(operator, f"/api/v1/config/gateways/{GW1}", {"radio": {"tx_power_dbm": 3}}))
    assert audit(operator)[: len(events)] == events
    events = audit(operator)
    assert len(events) == 5
    before = effective(operator, GW1)
    rak = {
        "radio": {
            "backend": "rak3172",
            "channels": [{"frequency_hz": 868100000, "spreading_factors": [7]}],
        }
    }
    refused = put(operator, "/api/v1/config/groups/north", rak)
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    assert message.startswith("radio.tx_power_dbm: the RAK3172 transmits at 5 dBm or more")
    assert f"gateway {GW1}" in message
    # A change of the defaults reaches GW1's layer through its group too.
    refused = put(operator, "/api/v1/config/defaults", {"mqtt": {"url": URL}, **rak})
    assert refused.status_code == 422
    assert f"gateway {GW1}" in refused.json()["error"]["message"]
    # The same settings in a group no gateway with its own layer is in are fine.
    ok(put(operator, "/api/v1/config/groups/rak", rak))
    assert audit(operator)[:-1] == events
    events = audit(operator)
    # And moving GW1 there is refused the same way.
    moved = join(operator, GW1, "rak")
    assert moved.status_code == 422
    assert "radio.tx_power_dbm" in moved.json()["error"]["message"]

    # Unknown keys and nulls are refused by name.
    for settings, key in (
        ({"radio": {"power": 3}}, "radio.power"),
        ({"colour": "red"}, "colour"),
        ({"log_level": None}, "log_level"),
        ({"mqtt": "mqtt://x"}, "mqtt"),
        ({"devices": ["zz"]}, "devices"),
    ):
        response = put(operator, f"/api/v1/config/gateways/{GW1}", settings)
        assert response.status_code == 422, settings
        assert key in response.json()["error"]["message"]

    assert ok(operator.get("/api/v1/config/defaults"))["version"] == 1
    assert ok(operator.get("/api/v1/config/groups/north"))["version"] == 1
    assert ok(operator.get(f"/api/v1/config/gateways/{GW1}"))["version"] == 2
    assert effective(operator, GW1) == before
    assert audit(operator) == events


def test_versions_are_immutable_and_listed(operator: ApiClient, registry: Store) -> None:
    path = "/api/v1/config/defaults"
    for power, comment in ((14, "first"), (12, "second"), (10, "third")):
        stored = ok(
            put(operator, path, {"mqtt": {"url": URL}, "radio": {"tx_power_dbm": power}}, comment)
        )
    assert stored["version"] == 3
    assert stored["keys"] == ["mqtt.url", "radio.tx_power_dbm"]
    latest = ok(operator.get(path))
    assert (latest["version"], latest["comment"]) == (3, "third")
    assert latest["settings"] == {"mqtt": {"url": URL}, "radio": {"tx_power_dbm": 10}}
    assert latest["actor"] == "test operator"
    assert latest["at"] == "2027-01-15T08:00:10Z"
    old = ok(operator.get(path, params={"version": 1}))
    assert (old["version"], old["comment"], old["settings"]["radio"]) == (
        1,
        "first",
        {"tx_power_dbm": 14},
    )
    assert operator.get(path, params={"version": 4}).status_code == 404
    assert operator.get(path, params={"version": 0}).status_code == 422
    assert operator.get(path, params={"version": 2**40}).status_code == 422

    first = ok(operator.get(f"{path}/versions", params={"limit": 2}))
    assert [v["version"] for v in first["items"]] == [3, 2]
    assert first["next"] == "2"
    rest = ok(operator.get(f"{path}/versions", params={"limit": 2, "after": first["next"]}))
    assert [v["version"] for v in rest["items"]] == [1]
    assert rest["next"] is None

    # Stored versions cannot be changed or deleted, whoever tries.
    for statement in (
        "UPDATE config_versions SET comment = 'rewritten'",
        "DELETE FROM config_versions",
    ):
        with pytest.raises(DataRefused):
            registry.sql.execute(statement)
    assert ok(operator.get(path, params={"version": 1}))["comment"] == "first"


def test_diff_between_two_versions(operator: ApiClient) -> None:
    path = f"/api/v1/config/gateways/{GW1}"
    ok(put(operator, path, {"log_level": "debug", "radio": {"tx_power_dbm": 12}}))
    ok(put(operator, path, {"radio": {"tx_power_dbm": 8}, "health": {"interval_s": 60}}))
    params: dict[str, Any] = {"layer": "gateway", "name": GW1, "from": 1, "to": 2}
    assert ok(operator.get("/api/v1/config/diff", params=params)) == {
        "layer": "gateway",
        "name": GW1,
        "from": 1,
        "to": 2,
        "added": {"health.interval_s": 60},
        "removed": {"log_level": "debug"},
        "changed": {"radio.tx_power_dbm": {"from": 12, "to": 8}},
    }
    first = ok(operator.get("/api/v1/config/diff", params={**params, "from": 0, "to": 1}))
    assert first["added"] == {"log_level": "debug", "radio.tx_power_dbm": 12}
    assert first["removed"] == first["changed"] == {}
    missing = operator.get("/api/v1/config/diff", params={**params, "to": 3})
    assert missing.status_code == 404
    nameless = operator.get("/api/v1/config/diff", params={"layer": "group", "from": 0, "to": 1})
    assert nameless.status_code == 422


def test_roles(operator: ApiClient) -> None:
    technician = operator.as_role("technician")
    layered(operator)
    for path, body in (
        ("/api/v1/config/defaults", {"settings": {"log_level": "error"}}),
        ("/api/v1/config/groups/north", {"settings": {"log_level": "error"}}),
        (f"/api/v1/config/gateways/{GW1}", {"settings": {"log_level": "error"}}),
        (f"/api/v1/gateways/{GW2}/group", {"group": "north"}),
    ):
        refused = technician.request("PUT", path, json=body)
        assert refused.status_code == 403, path
    for path in (
        "/api/v1/config/defaults",
        "/api/v1/config/groups/north/versions",
        f"/api/v1/gateways/{GW1}/config/effective",
    ):
        assert technician.get(path).status_code == 200, path
    assert effective(operator, GW2)["group"] is None
    assert (
        ok(
            operator.as_role("admin").request(
                "PUT", f"/api/v1/gateways/{GW2}/group", json={"group": "north"}
            )
        )["group"]
        == "north"
    )


def test_changes_are_in_the_audit_log(operator: ApiClient) -> None:
    layered(operator)
    ok(put(operator, "/api/v1/config/defaults", {"mqtt": {"url": URL}, "log_level": "warning"}))
    events = [(e["target"], e["details"], e["actor_role"]) for e in audit(operator)]
    assert events == [
        (
            "config:defaults",
            {"version": 1, "changed": ["log_level", "mqtt.url", "radio.tx_power_dbm"]},
            "operator",
        ),
        ("config:group:north", {"version": 1, "changed": ["radio.tx_power_dbm"]}, "operator"),
        (f"config:gateway:{GW1}", {"version": 1, "changed": ["log_level"]}, "operator"),
        (f"config:gateway:{GW1}", {"group": "north", "previous_group": None}, "operator"),
        (
            "config:defaults",
            {"version": 2, "changed": ["log_level", "radio.tx_power_dbm"]},
            "operator",
        ),
    ]


def test_unknown_things_and_incomplete_config(operator: ApiClient) -> None:
    # No layer sets mqtt.url yet: the effective configuration says what to do.
    incomplete = operator.get(f"/api/v1/gateways/{GW1}/config/effective")
    assert incomplete.status_code == 409
    assert "mqtt.url" in incomplete.json()["error"]["message"]
    assert operator.get("/api/v1/config/defaults").status_code == 404
    unknown = "00000000000000ff"
    assert operator.get(f"/api/v1/gateways/{unknown}/config/effective").status_code == 404
    assert put(operator, f"/api/v1/config/gateways/{unknown}", {}).status_code == 404
    assert join(operator, unknown, "north").status_code == 404
    assert join(operator, GW1, "no spaces").status_code == 422
    assert operator.get("/api/v1/config/groups/north").status_code == 404
    assert operator.get("/api/v1/config/groups/x y").status_code == 422
