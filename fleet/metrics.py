"""``GET /metrics``: the fleet's figures in the Prometheus text exposition format (version
0.0.4, https://prometheus.io/docs/instrumenting/exposition_formats/).

What it shows:

- ``owlgate_fleet_gateways{state=...}`` (gauge): registered gateways by health state
  (``never_seen``, ``online``, ``degraded``, ``offline``; :func:`owlgate.fleet.health.assess`
  at scrape time), every state always present so a dashboard's series do not come and go;
- ``owlgate_fleet_devices`` (gauge): registered sensor nodes;
- for every background service of this process that counts (the ingest, the control service:
  :class:`~owlgate.fleet.api.StatsSource`), each counter as
  ``owlgate_fleet_<service>_<counter>_total``, and each counter by reason (the ingest's
  ``rejected``, the control service's ``refused`` and ``rejected``) as one family with a
  ``reason`` label;
- ``owlgate_fleet_started_timestamp_seconds`` (gauge): when this process started, so a reset
  of the counters is visible.

Names follow the Prometheus conventions: a ``owlgate_fleet_`` prefix, snake case, base units
in the name, ``_total`` on counters. Counters are this process's since it started (several
fleet processes are scraped each on its own and summed by the query).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from .health import GatewayState, HealthThresholds, assess
from .store import Store

__all__ = ["CONTENT_TYPE", "render_metrics"]

#: The media type of the text format.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "owlgate_fleet_"
_NAME: Final = re.compile(r"[^a-zA-Z0-9_]")
_PAGE: Final = 1000


def _name(*parts: str) -> str:
    return PREFIX + "_".join(_NAME.sub("_", part) for part in parts)


def _label(value: str) -> str:
    # Exposition format: backslash, double quote and line feed are escaped in label values.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def _gateway_states(
    store: Store, now: float, thresholds: HealthThresholds | None
) -> dict[GatewayState, int]:
    counts = dict.fromkeys(GatewayState, 0)
    after: str | None = None
    while True:
        page = store.gateways(limit=_PAGE, after=after)
        for gateway in page.items:
            counts[assess(gateway.facts, now, thresholds).state] += 1
        if page.next is None:
            return counts
        after = page.next


def _device_count(store: Store) -> int:
    count = 0
    after: str | None = None
    while True:
        page = store.devices(limit=_PAGE, after=after)
        count += len(page.items)
        if page.next is None:
            return count
        after = page.next


def _service_lines(service: str, counters: Mapping[str, object]) -> list[str]:
    lines: list[str] = []
    for counter, value in sorted(counters.items()):
        name = _name(service, counter, "total")
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            lines += _family(name, "counter", f"{service}: {counter}", [f"{name} {value}"])
        elif isinstance(value, Mapping):
            samples = [
                f'{name}{{reason="{_label(str(reason))}"}} {count}'
                for reason, count in sorted(value.items())
                if isinstance(count, int) and not isinstance(count, bool)
            ]
            lines += _family(name, "counter", f"{service}: {counter}, by reason", samples)
    return lines


def render_metrics(
    store: Store,
    services: Mapping[str, Callable[[], Mapping[str, object]]],
    *,
    now: float,
    started_at: float,
    thresholds: HealthThresholds | None = None,
) -> str:
    """The exposition text: gateways by state and devices from ``store`` at ``now``, and the
    counters of each service in ``services`` (name -> a function returning its counters)."""
    states = _gateway_states(store, now, thresholds)
    gateways = _name("gateways")
    devices = _name("devices")
    started = _name("started_timestamp_seconds")
    lines = _family(
        gateways,
        "gauge",
        "registered gateways by health state",
        [f'{gateways}{{state="{state.value}"}} {count}' for state, count in states.items()],
    )
    lines += _family(
        devices, "gauge", "registered sensor nodes", [f"{devices} {_device_count(store)}"]
    )
    lines += _family(
        started,
        "gauge",
        "when this fleet process started, UTC seconds",
        [f"{started} {started_at}"],
    )
    for service, counters in sorted(services.items()):
        lines += _service_lines(service, counters())
    return "\n".join(lines) + "\n"
