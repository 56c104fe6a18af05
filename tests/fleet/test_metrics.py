"""``GET /metrics``: Prometheus text format, parsed with the Prometheus client's own parser."""

from __future__ import annotations

import logging
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from owlgate.codecs.health import Health
from owlgate.codecs.signed import sign
from owlgate.fleet.api import create_app, register_stats
from owlgate.fleet.control import Control, ControlService
from owlgate.fleet.ingest import Ingest, IngestService, Rejected
from owlgate.fleet.joinserver import JoinServer
from owlgate.fleet.metrics import GAUGES, RateLimitedLog, render_metrics
from owlgate.fleet.store import Store
from tests.fleet.conftest import GW1, GW2, T0
from tests.fleet.test_api import ApiClient, Clock


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_show_gateways_by_state_devices_and_service_counters(registry: Store) -> None:
    clock = Clock(T0 + 10)
    app = create_app(registry, clock=clock)
    client = ApiClient(app)
    ingest = IngestService(Ingest(registry, clock=clock), "127.0.0.1", 1883)
    control = ControlService(Control(registry, Ed25519PrivateKey.generate()), "127.0.0.1", 1883)
    register_stats(app, ingest)
    register_stats(app, control)
    registry.gateway_heard(GW1, T0 + 5)
    registry.record_health(
        GW2,
        Health(
            gateway_id=bytes.fromhex(GW2),
            seq=1,
            time_s=int(T0),
            uptime_s=10,
            agent_uptime_s=5,
            agent_version="owlgate-edge 0.1.0",
            config_hash=bytes(32),
            outbox_depth=5000,
            outbox_oldest_age_s=900,
        ),
        received_at=T0 + 8,
    )
    forged = sign(b"not a batch", Ed25519PrivateKey.generate())
    for _ in range(2):
        with pytest.raises(Rejected):
            ingest.ingest.handle(f"owlgate/v1/gw/{GW1}/telemetry", forged)
    with pytest.raises(Rejected):
        ingest.ingest.handle(f"owlgate/v1/gw/{GW1}/state", b"maybe")

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(response.text)
    assert samples[("owlgate_fleet_gateways", (("state", "online"),))] == 1
    assert samples[("owlgate_fleet_gateways", (("state", "degraded"),))] == 1
    assert samples[("owlgate_fleet_gateways", (("state", "offline"),))] == 0
    assert samples[("owlgate_fleet_gateways", (("state", "never_seen"),))] == 0
    assert samples[("owlgate_fleet_devices", ())] == 2
    assert samples[("owlgate_fleet_started_timestamp_seconds", ())] == T0 + 10
    reason = "reason"
    assert samples[("owlgate_fleet_ingest_rejected_total", ((reason, "signature"),))] == 2
    assert samples[("owlgate_fleet_ingest_rejected_total", ((reason, "state"),))] == 1
    assert samples[("owlgate_fleet_ingest_readings_stored_total", ())] == 0
    assert samples[("owlgate_fleet_control_joins_accepted_total", ())] == 0
    # Every family is typed, and counters end in _total (the parser strips it from the family
    # name and keeps it on the samples).
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    assert families["owlgate_fleet_ingest_rejected"] == "counter"
    assert families["owlgate_fleet_gateways"] == "gauge"


def test_metrics_without_services_still_describe_the_registry(registry: Store) -> None:
    client = ApiClient(create_app(registry, clock=Clock(T0)))
    samples = _samples(client.get("/metrics").text)
    assert samples[("owlgate_fleet_gateways", (("state", "never_seen"),))] == 2
    assert not [name for name, _ in samples if name.startswith("owlgate_fleet_ingest")]


class _Queues:
    """A service reporting queue depths beside a counter, as the ingest does."""

    name = "ingest"

    def stats(self) -> dict[str, object]:
        return {
            "batches": 3,
            "rejected": {"garbage": 2},
            GAUGES: {"waiting_messages": 7, "unacknowledged_messages": 9},
        }


def test_queue_depths_are_gauges_and_alerts_are_counted_by_state(registry: Store) -> None:
    app = create_app(registry, clock=Clock(T0))
    register_stats(app, _Queues())
    text = ApiClient(app).get("/metrics").text
    samples = _samples(text)
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert samples[("owlgate_fleet_ingest_waiting_messages", ())] == 7
    assert samples[("owlgate_fleet_ingest_unacknowledged_messages", ())] == 9
    assert families["owlgate_fleet_ingest_waiting_messages"] == "gauge"
    assert samples[("owlgate_fleet_ingest_rejected_total", (("reason", "garbage"),))] == 2
    assert samples[("owlgate_fleet_ingest_batches_total", ())] == 3
    assert not [name for name, _ in samples if "gauges" in name]

    # The app's own /metrics has every (state, severity) pair, 0 with no alert yet.
    assert samples[("owlgate_fleet_alerts", (("severity", "critical"), ("state", "open")))] == 0

    # Alerts by state and severity, from the function the server passes in.
    asked: list[Store] = []

    def alert_counts(store: Store) -> list[tuple[tuple[str, str], int]]:
        asked.append(store)
        return [(("open", "critical"), 4), (("acknowledged", "warning"), 1)]

    text = render_metrics(registry, {}, now=T0, started_at=T0, alert_counts=alert_counts)
    samples = _samples(text)
    assert asked == [registry]
    assert samples[("owlgate_fleet_alerts", (("severity", "critical"), ("state", "open")))] == 4
    acknowledged = (("severity", "warning"), ("state", "acknowledged"))
    assert samples[("owlgate_fleet_alerts", acknowledged)] == 1
    assert {f.name: f.type for f in text_string_to_metric_families(text)}[
        "owlgate_fleet_alerts"
    ] == ("gauge")
    assert "owlgate_fleet_alerts" not in render_metrics(registry, {}, now=T0, started_at=T0)


def test_every_family_follows_the_prometheus_naming_conventions(registry: Store) -> None:
    app = create_app(registry, clock=Clock(T0))
    register_stats(app, _Queues())
    register_stats(app, JoinServer(registry))
    text = ApiClient(app).get("/metrics").text
    declared = [line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE")]
    names = [name for name, _ in declared]
    assert len(names) == len(set(names))
    for name, kind in declared:
        assert re.fullmatch(r"owlgate_fleet_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (kind == "counter"), name
    assert "owlgate_fleet_join_rejected_total" in names


def test_refusal_lines_are_rate_limited_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(
        logging.getLogger("owlgate.test.flood"), burst=2, window_s=10.0, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="owlgate.test.flood"):
        logged = [limited.warning("garbage", "refused %d", n) for n in range(5)]
        assert limited.warning("signature", "forged %d", 0)  # another reason: its own budget
        now[0] = 10.0
        assert limited.warning("garbage", "refused %d", 5)
    assert logged == [True, True, False, False, False]
    assert limited.suppressed == {"garbage": 3}
    assert [record.getMessage() for record in caplog.records] == [
        "refused 0",
        "refused 1",
        "forged 0",
        "refused 5 (3 more like it not logged)",
    ]
