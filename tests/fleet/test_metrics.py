"""``GET /metrics``: Prometheus text format, parsed with the Prometheus client's own parser."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from owlgate.codecs.health import Health
from owlgate.codecs.signed import sign
from owlgate.fleet.api import create_app, register_stats
from owlgate.fleet.control import Control, ControlService
from owlgate.fleet.ingest import Ingest, IngestService, Rejected
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
