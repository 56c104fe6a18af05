"""The report of a scenario run (:mod:`owlgate.hil.run`): figures, losses with causes, alerts,
plots.

:func:`build_report` turns a :class:`~owlgate.hil.run.RunResult` into one JSON-ready
document; :func:`write_report` writes it as ``report.json``, a readable ``report.md`` and,
unless switched off, three PNG plots (``traffic.png``, ``delivery.png``, ``health.png``).

**Delivery** is counted per frame, a frame being one FCnt of one device (retransmissions of
a confirmed frame are the same frame): per device, frames stored by the fleet over frames
sent; per gateway, frames the fleet stored *with a reception from that gateway* over frames
injected into that gateway's concentrator.

**Causes of loss**, for each frame the fleet did not store:

- ``radio:<cause>``: no powered gateway received it; ``<cause>`` is the radio world's
  (``collision``, ``demodulator_busy``, ``below_sensitivity``; ``out_of_range`` when no gateway
  was near enough to hear it at all; ``gateway_off`` when only unpowered gateways could have);
- ``gateway_starting``: the gateways that heard it had power but their agents had not yet
  configured the concentrator (after a power cut): a concentrator receives nothing before;
- ``power_cut``: every gateway that received it lost power within the agent's batch age of
  receiving it (the batch it was in died with the agent);
- ``serial_noise``: every gateway that received it had a noisy serial cable at the time;
- ``unexplained``: anything else. A run with unexplained losses fails.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .run import RunResult, Sent

from .scenario import NoisySerial

#: The order in which a frame's radio losses name its cause (the most telling first).
_RADIO_ORDER: Final = (
    "collision",
    "demodulator_busy",
    "below_sensitivity",
    "gateway_starting",
    "gateway_off",
)
#: Slack added to the batch age when a power cut took a frame (wall seconds): the frame may
#: have sat in the serial buffer or the reader before the batch.
_CUT_SLACK_S: Final = 0.5
#: Histogram bins of the traffic plots, in simulated seconds: the smallest giving at most
#: about 48 bins over the run.
_BINS_S: Final = (60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
_MAX_BINS: Final = 48


def _bin_s(duration_s: float) -> float:
    return next((b for b in _BINS_S if duration_s / b <= _MAX_BINS), _BINS_S[-1])


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(share * len(ordered)) - 1)
    return ordered[rank]


def _ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(part / whole, 6)


def _noisy_windows(result: RunResult) -> dict[str, list[tuple[float, float]]]:
    windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for fault in result.scenario.faults:
        if isinstance(fault, NoisySerial):
            windows[fault.gateway].append((fault.at_s, fault.at_s + fault.duration_s))
    return windows


def _cause(
    sent: Sent,
    cuts: dict[str, list[tuple[float, float]]],
    noisy: dict[str, list[tuple[float, float]]],
    cut_window_s: float,
) -> str:
    if not sent.heard:
        causes = {cause for _, cause in sent.lost}
        for cause in _RADIO_ORDER:
            if cause in causes:
                return "gateway_starting" if cause == "gateway_starting" else f"radio:{cause}"
        return "radio:out_of_range" if not causes else f"radio:{sorted(causes)[0]}"

    def cut_took_it(gateway: str, heard_s: float) -> bool:
        return any(
            -cut_window_s <= start - heard_s <= cut_window_s for start, _ in cuts.get(gateway, ())
        )

    def noisy_then(gateway: str, heard_s: float) -> bool:
        return any(start <= heard_s <= end for start, end in noisy.get(gateway, ()))

    if all(cut_took_it(g, s) for g, s in sent.heard.items()):
        return "power_cut"
    if all(noisy_then(g, s) or cut_took_it(g, s) for g, s in sent.heard.items()):
        return "serial_noise"
    return "unexplained"


def build_report(result: RunResult) -> dict[str, Any]:
    """The report as one JSON-ready document (see the module text)."""
    cut_window_s = (1.0 + _CUT_SLACK_S) * result.speed + result.settings.step_s
    noisy = _noisy_windows(result)
    euis = {eui: sid for sid, eui in result.sensors.items()}
    per_device_sent: Counter[str] = Counter()
    per_device_stored: Counter[str] = Counter()
    gateway_heard: Counter[str] = Counter()
    gateway_stored: Counter[str] = Counter()
    by_name = {gid: name for name, gid in result.gateways.items()}
    latencies: list[float] = []
    causes: Counter[str] = Counter()
    lost_examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    bins: dict[int, Counter[str]] = defaultdict(Counter)
    bin_s = _bin_s(result.duration_s)
    for key, sent in result.sent.items():
        per_device_sent[sent.sensor_id] += 1
        hour = int(sent.sent_s // bin_s)
        bins[hour]["sent"] += 1
        for gateway in sent.heard:
            gateway_heard[gateway] += 1
        stored = result.stored.get(key)
        if stored is None:
            cause = _cause(sent, result.cuts, noisy, cut_window_s)
            causes[cause] += 1
            bins[hour]["lost"] += 1
            if len(lost_examples[cause]) < 20:
                lost_examples[cause].append(
                    {
                        "sensor": sent.sensor_id,
                        "dev_eui": sent.dev_eui,
                        "fcnt": sent.fcnt,
                        "sent_s": round(sent.sent_s, 3),
                        "heard_by": sorted(sent.heard),
                    }
                )
            continue
        per_device_stored[sent.sensor_id] += 1
        bins[hour]["stored"] += 1
        for reception in stored.get("receptions", ()):
            name = by_name.get(reception["gateway_id"])
            if name is not None and name in sent.heard:
                gateway_stored[name] += 1
        if sent.first_wall_s is not None and stored.get("received_at"):
            latencies.append(_epoch(stored["received_at"]) - sent.first_wall_s)
    extra = len(set(result.stored) - set(result.sent))
    devices = [
        {
            "sensor": sid,
            "dev_eui": result.sensors[sid],
            "profile": result.profiles[sid],
            "sent": per_device_sent[sid],
            "stored": per_device_stored[sid],
            "delivery": _ratio(per_device_stored[sid], per_device_sent[sid]),
        }
        for sid in sorted(result.sensors)
    ]
    ratios = sorted(ratio for d in devices if isinstance(ratio := d["delivery"], float | int))
    gateways = [
        {
            "gateway": name,
            "id": gid,
            "heard": gateway_heard[name],
            "stored_with_it": gateway_stored[name],
            "delivery": _ratio(gateway_stored[name], gateway_heard[name]),
            "power_cuts": [[round(a, 1), round(b, 1)] for a, b in result.cuts.get(name, ())],
            "edge": _edge_summary(result.edge_status.get(name, {})),
        }
        for name, gid in sorted(result.gateways.items())
    ]
    alerts = [
        {
            "kind": alert["kind"],
            "subject": alert["subject"],
            "severity": alert["severity"],
            "state": alert["state"],
            "message": alert["message"],
            "opened_sim_s": _sim(result, alert.get("opened_at")),
            "resolved_sim_s": _sim(result, alert.get("resolved_at")),
        }
        for alert in sorted(result.alerts, key=lambda a: a.get("opened_at") or "")
    ]
    sent_total = len(result.sent)
    stored_total = sum(1 for key in result.sent if key in result.stored)
    hours = list(range(int(result.duration_s // bin_s) + 1))
    return {
        "scenario": {
            "name": result.scenario.district.name,
            "file": result.scenario.file,
            "gateways": len(result.gateways),
            "sensors": len(result.sensors),
            "simulated_s": result.duration_s,
            "speed": result.speed,
            "wall_s": round(result.wall_s, 3),
            "drain_s": round(result.drain_s, 3),
            "achieved_speed": round(result.duration_s / result.wall_s, 1)
            if result.wall_s
            else None,
        },
        "totals": {
            "frames_sent": sent_total,
            "frames_stored": stored_total,
            "delivery": _ratio(stored_total, sent_total),
            "stored_not_sent": extra,
            "joins": result.joins,
            "lost_by_cause": dict(sorted(causes.items())),
            "unexplained": causes.get("unexplained", 0),
        },
        "latency_s": {
            "count": len(latencies),
            "p50": _round(_percentile(latencies, 0.50)),
            "p90": _round(_percentile(latencies, 0.90)),
            "p99": _round(_percentile(latencies, 0.99)),
            "max": _round(max(latencies) if latencies else None),
        },
        "device_delivery": {
            "min": ratios[0] if ratios else None,
            "p10": _percentile(ratios, 0.10),
            "median": _percentile(ratios, 0.50),
            "devices_below_0_9": sum(1 for r in ratios if r < 0.9),
        },
        "gateways": gateways,
        "devices": devices,
        "alerts": alerts,
        "events": [event.as_json() for event in result.events],
        "losses": {cause: examples for cause, examples in sorted(lost_examples.items())},
        "counters": dict(sorted(result.counters.items())),
        "per_bin": {
            "bin_s": bin_s,
            "start_s": [h * bin_s for h in hours],
            "sent": [bins[h]["sent"] for h in hours],
            "stored": [bins[h]["stored"] for h in hours],
            "lost": [bins[h]["lost"] for h in hours],
        },
        "samples": {
            "sim_s": [round(s, 1) for s in result.samples.sim_s],
            "online": result.samples.online,
            "offline": result.samples.offline,
            "degraded": result.samples.degraded,
            "outbox": result.samples.outbox,
            "stored": result.samples.stored,
        },
        "unknown_euis": sorted({eui for eui, _ in result.stored} - set(euis)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _sim(result: RunResult, iso: str | None) -> float | None:
    if not iso:
        return None
    return round((_epoch(iso) - result.epoch0) * result.speed, 1)


def _edge_summary(status: dict[str, Any]) -> dict[str, Any]:
    """The agent counters worth a line in the report (from the ``status.json`` it writes when
    it stops; a restarted agent counts from its restart)."""

    def part(name: str) -> dict[str, Any]:
        found = status.get(name)
        return found if isinstance(found, dict) else {}

    radio, lorawan, outbox = part("radio"), part("lorawan"), part("outbox")
    picked = {
        "rx_received": radio.get("rx_received"),
        "link_crc_errors": radio.get("link_crc_errors"),
        "link_frame_errors": radio.get("link_frame_errors"),
        "lorawan_accepted": lorawan.get("accepted"),
        "outbox_evicted": outbox.get("evicted"),
    }
    return {key: value for key, value in picked.items() if value is not None}


def _clock(sim_s: float | None) -> str:
    if sim_s is None:
        return "-"
    if sim_s < 0:
        return "setup"  # before the first simulated second: while the agents started
    days, rest = divmod(int(sim_s), 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days}+{hours:02d}:{minutes:02d}:{seconds:02d}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the figures a person reads first."""
    s, t, lat = report["scenario"], report["totals"], report["latency_s"]
    lines = [
        f"# Scenario run: {s['name']}",
        "",
        f"{s['gateways']} gateways, {s['sensors']} sensors, {_clock(s['simulated_s'])} simulated "
        f"in {s['wall_s']:.1f} s of wall time (asked {s['speed']:g}x, achieved "
        f"{s['achieved_speed']}x).",
        "",
        "## Delivery",
        "",
        f"- frames sent: {t['frames_sent']}; stored by the fleet: {t['frames_stored']} "
        f"({_pct(t['delivery'])})",
        f"- joins: {json.dumps(t['joins'])}",
        f"- per device: min {_pct(report['device_delivery']['min'])}, median "
        f"{_pct(report['device_delivery']['median'])}, "
        f"{report['device_delivery']['devices_below_0_9']} devices below 90 %",
        f"- latency (wall, injection to stored): p50 {lat['p50']} s, p90 {lat['p90']} s, "
        f"p99 {lat['p99']} s, max {lat['max']} s",
        "",
        "| gateway | heard | stored with it | delivery | power cuts |",
        "|---|---:|---:|---:|---|",
    ]
    for g in report["gateways"]:
        cuts = ", ".join(f"{_clock(a)}-{_clock(b)}" for a, b in g["power_cuts"]) or "-"
        lines.append(
            f"| {g['gateway']} | {g['heard']} | {g['stored_with_it']} | {_pct(g['delivery'])} "
            f"| {cuts} |"
        )
    lines += ["", "## Losses by cause", ""]
    if t["lost_by_cause"]:
        lines += ["| cause | frames |", "|---|---:|"]
        lines += [f"| {cause} | {count} |" for cause, count in t["lost_by_cause"].items()]
    else:
        lines.append("No frame lost.")
    lines += ["", "## Alerts", ""]
    if report["alerts"]:
        lines += ["| opened | resolved | severity | kind | subject | message |"]
        lines += ["|---|---|---|---|---|---|"]
        for a in report["alerts"]:
            lines.append(
                f"| {_clock(a['opened_sim_s'])} | {_clock(a['resolved_sim_s'])} | "
                f"{a['severity']} | {a['kind']} | {a['subject']} | {a['message']} |"
            )
    else:
        lines.append("No alert raised.")
    lines += ["", "## Timeline", ""]
    lines += [f"- {_clock(e['sim_s'])} {e['kind']}: {e['detail']}" for e in report["events"]]
    lines.append("")
    return "\n".join(lines)


def write_plots(report: dict[str, Any], folder: Path) -> list[Path]:
    """``traffic.png``, ``delivery.png`` and ``health.png`` in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    per_bin = report["per_bin"]
    bin_s = per_bin["bin_s"]
    hours = [start / 3600 for start in per_bin["start_s"]]
    label = f"frames per {_clock(bin_s).removeprefix('0+')} (h:m:s)"
    shade = [
        (e["sim_s"] / 3600, e["kind"]) for e in report["events"] if e["kind"] != "broker_start"
    ]

    figure, axes = plt.subplots(figsize=(9, 4))
    axes.step(hours, per_bin["sent"], where="post", label="sent", color="#1f77b4")
    axes.step(hours, per_bin["stored"], where="post", label="stored", color="#2ca02c")
    axes.bar(
        hours, per_bin["lost"], width=bin_s / 3600, align="edge", label="lost", color="#d62728"
    )
    axes.set(xlabel="simulated hour", ylabel=label, title="Traffic")
    axes.legend()
    for at, _ in shade:
        axes.axvline(at, color="grey", linestyle=":", linewidth=0.8)
    written.append(_save(figure, folder / "traffic.png"))

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ratios = [
        (stored / sent * 100 if sent else None)
        for sent, stored in zip(per_bin["sent"], per_bin["stored"], strict=True)
    ]
    left.step(
        hours, [r if r is not None else float("nan") for r in ratios], where="post", color="#2ca02c"
    )
    left.set(xlabel="simulated hour", ylabel="%", title="Delivery over time", ylim=(0, 101))
    names = [g["gateway"] for g in report["gateways"]]
    values = [(g["delivery"] or 0) * 100 for g in report["gateways"]]
    right.bar(range(len(names)), values, color="#1f77b4")
    right.set(title="Delivery per gateway", ylabel="%", ylim=(0, 101))
    if len(names) <= 20:
        right.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
    written.append(_save(figure, folder / "delivery.png"))

    samples = report["samples"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    at = [s / 3600 for s in samples["sim_s"]]
    top.plot(at, samples["online"], label="online", color="#2ca02c")
    top.plot(at, samples["offline"], label="offline", color="#d62728")
    top.plot(at, samples["degraded"], label="degraded", color="#ff7f0e")
    top.set(ylabel="gateways", title="Gateway health (as the fleet saw it)")
    top.legend()
    bottom.plot(at, samples["outbox"], color="#9467bd")
    bottom.set(xlabel="simulated hour", ylabel="batches in outboxes")
    for moment, _ in shade:
        for axes in (top, bottom):
            axes.axvline(moment, color="grey", linestyle=":", linewidth=0.8)
    written.append(_save(figure, folder / "health.png"))
    return written


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(result: RunResult, folder: Path) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and the plots into ``folder``; return the report."""
    folder.mkdir(parents=True, exist_ok=True)
    report = build_report(result)
    (folder / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (folder / "report.md").write_text(render_markdown(report))
    if result.settings.plots:
        report["plots"] = [str(path) for path in write_plots(report, folder)]
    return report
