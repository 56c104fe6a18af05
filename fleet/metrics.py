"""``GET /metrics``: the fleet's figures in the Prometheus text exposition format (version
0.0.4, https://prometheus.io/docs/instrumenting/exposition_formats/).

What it shows:

- ``owlgate_fleet_gateways{state=...}`` (gauge): registered gateways by health state
  (``never_seen``, ``online``, ``degraded``, ``offline``; :func:`owlgate.fleet.health.assess`
  at scrape time), every state always present so a dashboard's series do not come and go;
- ``owlgate_fleet_devices`` (gauge): registered sensor nodes;
- for every background service of this process that counts (the ingest, the control service,
  the join server: :class:`~owlgate.fleet.api.StatsSource`), each counter as
  ``owlgate_fleet_<service>_<counter>_total``, each counter by reason (the ingest's
  ``rejected``, the control service's ``refused`` and ``rejected``, the join server's
  ``rejected``) as one family with a ``reason`` label, and what a service reports under
  ``gauges`` (the ingest's queue depths) as ``owlgate_fleet_<service>_<name>`` gauges;
- ``owlgate_fleet_alerts{state=...,severity=...}`` (gauge): alerts by state and severity,
  when the server passes ``alert_counts`` (a function of the store giving ``((state,
  severity), count)`` pairs: the items of :func:`owlgate.fleet.alerts.alert_counts`);
- ``owlgate_fleet_started_timestamp_seconds`` (gauge): when this process started, so a reset
  of the counters is visible.

Names follow the Prometheus conventions: a ``owlgate_fleet_`` prefix, snake case, base units
in the name, ``_total`` on counters. Counters are this process's since it started (several
fleet processes are scraped each on its own and summed by the query).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from .health import GatewayState, HealthThresholds, assess
from .store import Store

__all__ = ["CONTENT_TYPE", "GAUGES", "RateLimitedLog", "render_metrics"]

#: The media type of the text format.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "owlgate_fleet_"
_NAME: Final = re.compile(r"[^a-zA-Z0-9_]")
_PAGE: Final = 1000
#: The key of a service's stats whose mapping is shown as gauges, not counters.
GAUGES: Final = "gauges"


class RateLimitedLog:
    """Log lines by kind (a refusal's reason), at most ``burst`` per kind in any window of
    ``window_s`` seconds: a flood of hostile messages fills neither the disk nor an
    operator's screen, while the first lines of each kind still say what happened. The
    next line after a quiet spell says how many were left out. Thread-safe (the ingest
    refuses in worker threads)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or window_s <= 0:
            raise ValueError("a rate-limited log needs burst >= 1 and window_s > 0")
        self.logger = logger
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> (window start, lines logged in it, lines left out since the last logged)
        self._windows: dict[str, tuple[float, int, int]] = {}
        #: Lines left out so far, by kind.
        self.suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` at warning level unless ``kind`` has used up its burst;
        True if logged."""
        now = self._clock()
        with self._lock:
            start, logged, left_out = self._windows.get(kind, (now, 0, 0))
            if now - start >= self.window_s:
                start, logged = now, 0
            if logged >= self.burst:
                self._windows[kind] = (start, logged, left_out + 1)
                self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
                return False
            self._windows[kind] = (start, logged + 1, 0)
        if left_out:
            self.logger.warning(
                message + " (%d more like it not logged)", *args, left_out, stacklevel=2
            )
        else:
            self.logger.warning(message, *args, stacklevel=2)
        return True


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


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _service_lines(service: str, counters: Mapping[str, object]) -> list[str]:
    lines: list[str] = []
    for counter, value in sorted(counters.items()):
        if counter == GAUGES and isinstance(value, Mapping):
            for gauge, level in sorted(value.items()):
                if _number(level):
                    name = _name(service, str(gauge))
                    lines += _family(name, "gauge", f"{service}: {gauge}", [f"{name} {level}"])
            continue
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
    alert_counts: Callable[[Store], Iterable[tuple[tuple[str, str], int]]] | None = None,
) -> str:
    """The exposition text: gateways by state and devices from ``store`` at ``now``, the
    counters of each service in ``services`` (name -> a function returning its counters),
    and alerts by state and severity from ``alert_counts`` when given."""
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
    if alert_counts is not None:
        alerts = _name("alerts")
        lines += _family(
            alerts,
            "gauge",
            "alerts by state and severity",
            [
                f'{alerts}{{state="{_label(str(state))}",severity="{_label(str(severity))}"}} '
                f"{count}"
                for (state, severity), count in sorted(alert_counts(store))
                if _number(count)
            ],
        )
    for service, counters in sorted(services.items()):
        lines += _service_lines(service, counters())
    return "\n".join(lines) + "\n"
