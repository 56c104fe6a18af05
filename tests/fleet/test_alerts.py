"""Alert rules, the evaluator with a fake clock, and the alert routes of the API.

Every test runs on SQLite and on PostgreSQL (the ``registry`` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from owlgate.codecs.health import Health, RadioCounters
from owlgate.codecs.node.telemetry import Reading
from owlgate.fleet import audit
from owlgate.fleet.alerts import (
    DEFAULT_RULES,
    AlertConfig,
    AlertConfigError,
    AlertEvaluator,
    AlertRule,
    alert_counts,
    alert_metric_lines,
    get_alert,
    list_alerts,
    load_config,
    parse_config,
    router,
)
from owlgate.fleet.api import create_app
from owlgate.fleet.auth import route_roles
from owlgate.fleet.store import Store
from tests.conftest import REPO
from tests.fleet.conftest import ABP_EUI, GW1, GW2, OTAA_EUI, T0
from tests.fleet.test_api import ApiClient, Clock

GW1_SUBJECT = f"gateway:{GW1}"


def only(config_rules: str, **extra: object) -> AlertConfig:
    """A configuration with only the named default rules (so a test sees only its alerts)."""
    names = config_rules.split()
    return AlertConfig(rules=tuple(r for r in DEFAULT_RULES if r.name in names), **extra)  # type: ignore[arg-type]


def health(
    gid: str,
    *,
    seq: int = 1,
    cpu_temp_c: float | None = None,
    throttled: int | None = None,
    outbox_depth: int = 0,
    outbox_oldest_age_s: int | None = None,
    radio: RadioCounters | None = None,
) -> Health:
    return Health(
        gateway_id=bytes.fromhex(gid),
        seq=seq,
        time_s=int(T0),
        uptime_s=100,
        agent_uptime_s=50,
        agent_version="owlgate-edge 0.1.0",
        config_hash=bytes(32),
        interval_s=60,
        cpu_temp_c=cpu_temp_c,
        throttled=throttled,
        outbox_depth=outbox_depth,
        outbox_oldest_age_s=outbox_oldest_age_s,
        radio=radio,
    )


_SEQ = iter(range(1, 1_000_000))


def uplink(store: Store, eui: str, at: float, **values: object) -> None:
    """One reading of ``eui`` at ``at`` through the store's ingest path."""
    reading = Reading(bytes.fromhex(eui), int(at), dict(values), rssi_dbm=-90, snr_db=7.5)
    store.record_batch(GW1, next(_SEQ), [reading], received_at=at)


def test_gateway_offline_opens_stays_one_and_resolves(registry: Store) -> None:
    evaluator = AlertEvaluator(registry, only("gateway_offline"))
    registry.gateway_heard(GW1, T0)
    assert evaluator.evaluate(T0 + 60) == []
    # Default heartbeat 60 s, threshold 2 intervals: offline past T0 + 120.
    (opened,) = evaluator.evaluate(T0 + 130)
    assert opened.event == "opened"
    assert opened.alert.subject == GW1_SUBJECT
    assert opened.alert.severity == "critical"
    assert opened.alert.state == "open"
    assert opened.alert.value == pytest.approx(130 / 60, abs=0.01)
    assert "nothing heard for 130 s" in opened.alert.message
    # Still offline: no second alert, the value follows.
    assert evaluator.evaluate(T0 + 600) == []
    (current,) = list_alerts(registry, states=["open"]).items
    assert current.id == opened.alert.id
    assert current.value == pytest.approx(10.0)
    registry.gateway_heard(GW1, T0 + 610)
    (resolved,) = evaluator.evaluate(T0 + 615)
    assert resolved.event == "resolved"
    assert resolved.alert.id == opened.alert.id
    assert resolved.alert.resolved_at == T0 + 615
    history = get_alert(registry, opened.alert.id).history
    assert [e.event for e in history] == ["opened", "resolved"]
    assert [e.at for e in history] == [T0 + 130, T0 + 615]
    # Offline again later: a new alert, the old one stays resolved.
    (again,) = evaluator.evaluate(T0 + 610 + 200)
    assert again.event == "opened"
    assert again.alert.id != opened.alert.id
    assert evaluator.counters.opened == 2
    assert evaluator.counters.resolved == 1


def test_the_last_will_opens_gateway_offline_at_once(registry: Store) -> None:
    evaluator = AlertEvaluator(registry, only("gateway_offline"))
    registry.gateway_heard(GW1, T0)
    registry.set_gateway_state(GW1, False, T0 + 5)
    (opened,) = evaluator.evaluate(T0 + 6)
    assert "last will" in opened.alert.message
    registry.set_gateway_state(GW1, True, T0 + 30)
    (resolved,) = evaluator.evaluate(T0 + 31)
    assert resolved.event == "resolved"


def test_never_seen_gateways_and_devices_raise_nothing(registry: Store) -> None:
    evaluator = AlertEvaluator(registry)
    assert evaluator.evaluate(T0 + 100_000) == []
    assert list_alerts(registry).items == []


def test_battery_near_its_threshold_does_not_flap(registry: Store) -> None:
    evaluator = AlertEvaluator(registry, only("battery_low"))
    at = T0
    seen: list[str] = []
    # Threshold 3000 mV, clears at 3200 mV: values in between change nothing.
    for battery in (3100, 2990, 3050, 2995, 3150, 3199, 3210, 3100, 3001, 2999):
        at += 600
        uplink(registry, ABP_EUI, at, battery_mv=battery)
        seen += [f"{c.event}@{battery}" for c in evaluator.evaluate(at + 1)]
    assert seen == ["opened@2990", "resolved@3210", "opened@2999"]
    first, second = sorted(list_alerts(registry).items, key=lambda a: a.id)
    assert first.state == "resolved"
    assert second.state == "open"
    assert second.subject == f"device:{ABP_EUI}"


def test_value_changes_are_history_by_step(registry: Store) -> None:
    evaluator = AlertEvaluator(registry, only("battery_low"))
    uplink(registry, ABP_EUI, T0, battery_mv=2950)
    (opened,) = evaluator.evaluate(T0 + 1)
    # change_step 100 mV: 2900 is not enough, 2840 is (110 below the last event's 2950).
    for at, battery in ((T0 + 600, 2900), (T0 + 1200, 2840), (T0 + 1800, 2800)):
        uplink(registry, ABP_EUI, at, battery_mv=battery)
        evaluator.evaluate(at + 1)
    alert = get_alert(registry, opened.alert.id)
    assert [(e.event, e.value) for e in alert.history] == [
        ("opened", 2950),
        ("value_changed", 2840),
    ]
    assert alert.value == 2800
    assert alert.message.endswith("battery at 2800 mV")


def test_for_duration_and_hysteresis_on_cpu_temperature(registry: Store) -> None:
    evaluator = AlertEvaluator(registry, only("cpu_temperature"))

    def heat(at: float, temp: float) -> list[str]:
        registry.record_health(GW1, health(GW1, cpu_temp_c=temp), received_at=at)
        return [c.event for c in evaluator.evaluate(at)]

    assert heat(T0, 82.0) == []  # above 80 degC, but not yet for 300 s
    assert heat(T0 + 60, 83.0) == []
    assert heat(T0 + 120, 79.0) == []  # below the threshold: the wait starts over
    assert heat(T0 + 180, 81.0) == []
    assert heat(T0 + 420, 84.0) == []  # 240 s
    assert heat(T0 + 481, 84.0) == ["opened"]  # 301 s
    assert heat(T0 + 540, 77.0) == []  # between 75 and 80: stays open
    assert heat(T0 + 600, 74.5) == ["resolved"]
    (alert,) = list_alerts(registry, kind="cpu_temperature").items
    assert alert.opened_at == T0 + 481
    assert "for 301 s" in get_alert(registry, alert.id).history[0].message


def test_outbox_throttle_and_crc_rules(registry: Store) -> None:
    evaluator = AlertEvaluator(
        registry,
        AlertConfig(
            rules=(
                AlertRule(name="outbox", kind="outbox_backlog", threshold=600, clear=120),
                AlertRule(name="throttle", kind="cpu_throttled", threshold=0, clear=0),
                AlertRule(name="crc", kind="radio_crc_errors", threshold=0.2, clear=0.1),
            )
        ),
    )
    registry.record_health(
        GW1,
        health(
            GW1,
            outbox_depth=40,
            outbox_oldest_age_s=900,
            throttled=0x50005,
            radio=RadioCounters(received=100, crc_ok=70, crc_bad=30, forwarded=70, transmitted=0),
        ),
        received_at=T0,
    )
    # Too few frames to judge the error rate on the second gateway.
    registry.record_health(
        GW2,
        health(
            GW2, radio=RadioCounters(received=10, crc_ok=1, crc_bad=9, forwarded=1, transmitted=0)
        ),
        received_at=T0,
    )
    changes = evaluator.evaluate(T0 + 1)
    assert sorted((c.alert.rule, c.alert.subject) for c in changes) == [
        ("crc", GW1_SUBJECT),
        ("outbox", GW1_SUBJECT),
        ("throttle", GW1_SUBJECT),
    ]
    by_rule = {c.alert.rule: c.alert for c in changes}
    assert by_rule["outbox"].value == 900
    assert by_rule["crc"].value == pytest.approx(0.3)
    assert "under_voltage" in by_rule["throttle"].message
    # Once the gateway is offline its last health figures neither open nor resolve anything.
    registry.record_health(GW1, health(GW1, seq=2), received_at=T0 + 10)
    assert evaluator.evaluate(T0 + 10_000) == []
    assert len(list_alerts(registry, states=["open"]).items) == 3


def test_the_crc_error_rate_is_judged_over_recent_frames(registry: Store) -> None:
    rule = AlertRule(name="crc", kind="radio_crc_errors", threshold=0.2, clear=0.1)
    evaluator = AlertEvaluator(registry, AlertConfig(rules=(rule,)))

    def counters(at: float, seq: int, ok: int, bad: int) -> list[tuple[str, float | None]]:
        radio = RadioCounters(
            received=ok + bad, crc_ok=ok, crc_bad=bad, forwarded=ok, transmitted=0
        )
        registry.record_health(GW1, health(GW1, seq=seq, radio=radio), received_at=at)
        return [(c.event, c.alert.value) for c in evaluator.evaluate(at)]

    assert counters(T0, 1, 1000, 10) == []  # 1 % over the first 1010 frames
    # 30 bad of the 60 frames since: 50 %, where the rate since the start is under 4 %.
    assert counters(T0 + 60, 2, 1030, 40) == [("opened", 0.5)]
    assert counters(T0 + 120, 3, 1040, 45) == []  # 15 frames: too few, the window goes on
    # 7 bad of the 77 frames since the last complete window: 9 %, under the clear level.
    assert counters(T0 + 180, 4, 1100, 47) == [("resolved", round(7 / 77, 4))]
    # The agent restarted: its counters start again, and so does the window.
    assert counters(T0 + 240, 1, 10, 40) == [("opened", 0.8)]


def test_device_silent_uses_the_reported_interval(registry: Store) -> None:
    evaluator = AlertEvaluator(registry, only("device_silent"))
    uplink(registry, ABP_EUI, T0, message="status", report_interval_s=600, battery_mv=3600)
    assert evaluator.evaluate(T0 + 1700) == []  # 2.8 intervals
    (opened,) = evaluator.evaluate(T0 + 1900)
    assert opened.alert.details["interval_source"] == "reported"
    assert opened.alert.details["interval_s"] == 600
    assert "reported" in opened.alert.message
    uplink(registry, ABP_EUI, T0 + 1950, occupied=True)
    (resolved,) = evaluator.evaluate(T0 + 1960)
    assert resolved.event == "resolved"


def test_device_silent_uses_the_profile_interval_then_the_observed_one(registry: Store) -> None:
    config = only("device_silent", profile_intervals={"parking-v1": 900.0})
    evaluator = AlertEvaluator(registry, config)
    # ABP_EUI is a parking-v1 device: its profile interval applies from the first reading.
    uplink(registry, ABP_EUI, T0, occupied=False)
    # OTAA_EUI (waste-bin-v1, no interval configured): gaps of 300 and 600 s, the longer is
    # taken (event-driven uplinks only ever make a gap shorter than the interval).
    uplink(registry, OTAA_EUI, T0 - 900, fill_pct=10)
    uplink(registry, OTAA_EUI, T0 - 600, fill_pct=11)
    assert evaluator.evaluate(T0 + 1) == []
    assert evaluator.counters.devices_without_interval == 1
    uplink(registry, OTAA_EUI, T0, fill_pct=12)
    changes = evaluator.evaluate(T0 + 2800)  # 3.1 intervals of 900 s, 4.7 of 600 s
    by_subject = {c.alert.subject: c.alert for c in changes}
    assert by_subject[f"device:{ABP_EUI}"].details["interval_source"] == "profile"
    assert by_subject[f"device:{ABP_EUI}"].details["interval_s"] == 900
    assert by_subject[f"device:{OTAA_EUI}"].details["interval_source"] == "observed"
    assert by_subject[f"device:{OTAA_EUI}"].details["interval_s"] == 600
    assert evaluator.counters.devices_without_interval == 0


def test_two_evaluators_keep_one_open_alert_per_rule_and_subject(registry: Store) -> None:
    first = AlertEvaluator(registry, only("gateway_offline"))
    second = AlertEvaluator(registry, only("gateway_offline"))
    registry.gateway_heard(GW1, T0)
    assert len(first.evaluate(T0 + 200)) == 1
    assert second.evaluate(T0 + 201) == []
    assert len(list_alerts(registry).items) == 1


def test_alerts_of_a_rule_taken_out_of_the_config_resolve(registry: Store) -> None:
    registry.gateway_heard(GW1, T0)
    (opened,) = AlertEvaluator(registry, only("gateway_offline")).evaluate(T0 + 300)
    (resolved,) = AlertEvaluator(registry, only("battery_low")).evaluate(T0 + 301)
    assert resolved.alert.id == opened.alert.id
    assert resolved.alert.state == "resolved"
    assert get_alert(registry, opened.alert.id).history[-1].message == (
        "rule gateway_offline is no longer configured"
    )


def test_alert_counts_by_state_and_severity(registry: Store) -> None:
    evaluator = AlertEvaluator(registry, only("gateway_offline battery_low"))
    registry.gateway_heard(GW1, T0)
    registry.gateway_heard(GW2, T0)
    uplink(registry, ABP_EUI, T0, battery_mv=2500)
    evaluator.evaluate(T0 + 500)
    counts = alert_counts(registry)
    assert counts[("open", "critical")] == 2
    assert counts[("open", "warning")] == 1
    assert counts[("resolved", "info")] == 0
    assert len(counts) == 9
    lines = alert_metric_lines(registry)
    assert 'owlgate_fleet_alerts{state="open",severity="critical"} 2' in lines
    assert lines[1] == "# TYPE owlgate_fleet_alerts gauge"


# --- configuration -----------------------------------------------------------------------------


def test_config_file_overrides_adds_and_disables(tmp_path: Path) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text(
        """
interval_s = 15

[rules.battery_low]
threshold = 3300
clear = 3500

[rules.battery_critical]
kind = "battery_low"
threshold = 2900
clear = 3100
severity = "critical"

[rules.radio_crc_errors]
enabled = false

[profiles.parking-v1]
report_interval_s = 3600
""",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.interval_s == 15
    names = [rule.name for rule in config.rules]
    assert "radio_crc_errors" not in names
    assert config.rule("battery_low").threshold == 3300
    assert config.rule("battery_low").change_step == 100  # kept from the default
    assert config.rule("battery_critical").severity == "critical"
    assert config.profile_intervals == {"parking-v1": 3600.0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("intervall_s = 3", "unknown key(s) ['intervall_s']"),
        ("[rules.new_rule]\nthreshold = 1\nclear = 0", "rules.new_rule.kind must be one of"),
        ("[rules.battery_low]\nclear = 2000", "must be at or above threshold"),
        ("[rules.cpu_temperature]\nthreshold = 'hot'", "rules.cpu_temperature.threshold"),
        ("[rules.cpu_temperature]\nkind = 'battery_low'", "give the new rule another name"),
        ("[profiles.parking-v1]\nreport_interval_s = 5", "must be >= 60"),
        ("[rules.x]\nkind = 'battery_low'\nthreshold = 1", "rules.x.clear is required"),
        ("not toml at all =", "not TOML"),
    ],
)
def test_a_bad_config_names_the_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AlertConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.message
    assert expected in caught.value.message


def test_rules_validate_their_thresholds() -> None:
    with pytest.raises(ValueError, match="at or below threshold"):
        AlertRule(name="t", kind="cpu_temperature", threshold=70, clear=75)
    with pytest.raises(ValueError, match="severity"):
        AlertRule(name="t", kind="cpu_temperature", threshold=70, clear=65, severity="page")  # type: ignore[arg-type]
    assert parse_config({}).rules == DEFAULT_RULES


# --- the API -----------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def app_client(registry: Store, clock: Clock) -> ApiClient:
    return ApiClient(create_app(registry, clock=clock), role="operator")


def test_acknowledge_through_the_api_keeps_it_open_and_in_the_history(
    app_client: ApiClient, registry: Store, clock: Clock
) -> None:
    evaluator = AlertEvaluator(registry, only("gateway_offline"))
    registry.gateway_heard(GW1, T0)
    (opened,) = evaluator.evaluate(T0 + 300)
    alert_id = opened.alert.id
    clock.now = T0 + 400
    path = f"/api/v1/alerts/{alert_id}/acknowledge"
    body = {"comment": "mast power cut, crew on the way"}
    assert app_client.as_role("technician").post(path, json=body).status_code == 403
    assert app_client.as_role(None).post(path, json=body).status_code == 401
    assert app_client.post(path, json={"comment": ""}).status_code == 422
    assert app_client.post("/api/v1/alerts/424242/acknowledge", json=body).status_code == 404
    answer = app_client.post(path, json=body)
    assert answer.status_code == 200
    acked = answer.json()
    assert acked["state"] == "acknowledged"
    assert acked["acknowledged_by"] == "test operator"
    assert acked["ack_comment"] == body["comment"]
    assert acked["acknowledged_at"] == "2027-01-15T08:06:40Z"
    again = app_client.post(path, json=body)
    assert again.status_code == 409
    assert "already acknowledged by test operator" in again.json()["error"]["message"]
    # Still open for the evaluator: it resolves when the gateway is back.
    assert evaluator.evaluate(T0 + 500) == []
    registry.gateway_heard(GW1, T0 + 550)
    (resolved,) = evaluator.evaluate(T0 + 560)
    assert resolved.alert.acknowledged_by == "test operator"
    one = app_client.get(f"/api/v1/alerts/{alert_id}").json()
    assert one["state"] == "resolved"
    assert [(h["event"], h["actor"], h["comment"]) for h in one["history"]] == [
        ("opened", None, None),
        ("acknowledged", "test operator", body["comment"]),
        ("resolved", None, None),
    ]
    assert app_client.post(path, json=body).status_code == 409
    (logged,) = audit.events(registry.sql, action="alert.acknowledged").items
    assert logged.actor == "test operator"
    assert logged.target == f"alert:{alert_id}"
    assert logged.details["comment"] == body["comment"]


def test_alert_listing_filters_and_pages(app_client: ApiClient, registry: Store) -> None:
    evaluator = AlertEvaluator(registry, only("gateway_offline battery_low"))
    registry.gateway_heard(GW1, T0)
    registry.gateway_heard(GW2, T0)
    uplink(registry, ABP_EUI, T0, battery_mv=2500)
    evaluator.evaluate(T0 + 500)
    registry.gateway_heard(GW2, T0 + 600)
    evaluator.evaluate(T0 + 601)
    technician = app_client.as_role("technician")
    everything = technician.get("/api/v1/alerts").json()
    assert len(everything["items"]) == 3
    ids = [a["id"] for a in everything["items"]]
    assert ids == sorted(ids, reverse=True)

    def subjects(**params: object) -> list[str]:
        answer = app_client.get("/api/v1/alerts", params=params)
        assert answer.status_code == 200, answer.text
        return sorted(a["subject"] for a in answer.json()["items"])

    assert subjects(state="open") == [f"device:{ABP_EUI}", GW1_SUBJECT]
    assert subjects(state=["open", "resolved"]) == sorted(
        [f"device:{ABP_EUI}", GW1_SUBJECT, f"gateway:{GW2}"]
    )
    assert subjects(state="resolved") == [f"gateway:{GW2}"]
    assert subjects(severity="warning") == [f"device:{ABP_EUI}"]
    assert subjects(kind="gateway_offline", state="open") == [GW1_SUBJECT]
    assert subjects(subject=f"gateway:{GW2}") == [f"gateway:{GW2}"]
    assert app_client.get("/api/v1/alerts", params={"state": "gone"}).status_code == 422
    first = app_client.get("/api/v1/alerts", params={"limit": 2}).json()
    assert len(first["items"]) == 2
    rest = app_client.get("/api/v1/alerts", params={"limit": 2, "after": first["next"]}).json()
    assert [a["id"] for a in first["items"] + rest["items"]] == ids
    assert rest["next"] is None
    assert app_client.get("/api/v1/alerts/999999").status_code == 404
    assert app_client.as_role(None).get("/api/v1/alerts").status_code == 401


def test_every_alert_route_declares_roles_and_is_documented() -> None:
    doc = (REPO / "docs" / "fleet-alerts.md").read_text(encoding="utf-8")
    routes = [r for r in router().routes if isinstance(r, APIRoute)]
    assert len(routes) == 4
    for route in routes:
        assert route_roles(route) is not None, route.path
        for method in route.methods or ():
            assert f"`{method} {route.path}" in doc, f"docs/fleet-alerts.md lacks {route.path}"


def test_rules_route_lists_the_rules_in_force(registry: Store, clock: Clock) -> None:
    config = only("battery_low", profile_intervals={"parking-v1": 3600.0})
    client = ApiClient(create_app(registry, clock=clock, alerts=config), role="technician")
    body = client.get("/api/v1/alert-rules").json()
    (rule,) = body["items"]
    assert rule == {
        "name": "battery_low",
        "kind": "battery_low",
        "subject": "device",
        "direction": "below",
        "threshold": 3000,
        "clear": 3200,
        "for_s": 0,
        "severity": "warning",
        "change_step": 100,
        "unit": "mV",
    }
    assert body["profile_intervals"] == {"parking-v1": 3600.0}
