"""Inline SVG charts for the dashboard, drawn by the fleet server.

The dashboard loads nothing from anywhere but the fleet server and uses no third-party
front-end code, so its charts are SVG strings built here and inserted unescaped by Jinja2
(each function returns :class:`markupsafe.Markup`). Every text placed in the SVG is escaped
here. Colours come from CSS classes (``series-N``, ``state-*``, ``part-*``) so the stylesheet
decides contrast and the dark theme; only neutral fallbacks are written inline.

Input rules: ``end <= start``, a non-finite ``start``/``end``/size or a negative count raise
:class:`ValueError`; a NaN or infinite *value* in a series is treated as a gap (like ``None``).
Empty data draws a chart that says "no data in this period".
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from markupsafe import Markup, escape

NO_DATA: Final = "no data in this period"
_MARGIN_L: Final = 48
_MARGIN_R: Final = 12
_MARGIN_T: Final = 22
_MARGIN_B: Final = 22
_TIME_STEPS: Final = (
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    172800,
    604800,
    1209600,
    2592000,
)
_counter = itertools.count(1)


@dataclass(frozen=True)
class Series:
    """One line of a line chart: ``points`` are ``(UTC seconds, value or None)``."""

    name: str
    points: Sequence[tuple[float, float | None]]
    css_class: str = "series-0"


@dataclass(frozen=True)
class PlanGateway:
    id: str
    name: str
    lat: float
    lon: float
    state: str
    href: str


@dataclass(frozen=True)
class PlanCell:
    lat0: float
    lon0: float
    lat1: float
    lon1: float
    count: int
    silent: int = 0


_STATES: Final = frozenset({"online", "degraded", "offline", "never_seen"})


def _prefix(id_prefix: str | None) -> str:
    raw = id_prefix if id_prefix else f"chart{next(_counter)}"
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in raw)


def _f(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if abs(x) < 1e15 else f"{x:.0f}"


def _check_span(start: float, end: float) -> None:
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"start and end must be finite numbers, got {start!r} and {end!r}")
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start}): pass a non-empty period")


def _check_size(width: int, height: int) -> None:
    if width < 16 or height < 8:
        raise ValueError(f"chart size {width}x{height} is too small: use at least 16x8")


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"


def _with_unit(value: float, unit: str) -> str:
    return f"{_fmt(value)} {unit}" if unit else _fmt(value)


def _open(pfx: str, width: int, height: int, title: str, desc: str, cls: str) -> list[str]:
    return [
        f'<svg class="chart {cls}" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-labelledby="{pfx}-title {pfx}-desc">',
        f'<title id="{pfx}-title">{escape(title)}</title>',
        f'<desc id="{pfx}-desc">{escape(desc)}</desc>',
    ]


def _empty(pfx: str, width: int, height: int, title: str, cls: str) -> Markup:
    parts = _open(pfx, width, height, title, f"{title}: {NO_DATA}", cls)
    parts.append(
        f'<text class="no-data" x="{width / 2:.1f}" y="{height / 2:.1f}" '
        f'text-anchor="middle">{NO_DATA}</text></svg>'
    )
    return Markup("".join(parts))


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering ``lo..hi``."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def time_ticks(start: float, end: float, count: int = 6) -> list[tuple[float, str]]:
    """Ticks at a round time step with ``HH:MM`` labels, or dates for spans over two days."""
    span = end - start
    step = next((s for s in _TIME_STEPS if span / s <= count), _TIME_STEPS[-1])
    dates = span > 2 * 86400
    first = math.ceil(start / step) * step
    ticks = []
    t = float(first)
    while t <= end:
        moment = datetime.fromtimestamp(t, UTC)
        ticks.append((t, moment.strftime("%d %b" if dates else "%H:%M")))
        t += step
    return ticks


@dataclass(frozen=True)
class _Frame:
    x0: float
    x1: float
    y0: float  # top
    y1: float  # bottom
    start: float
    end: float
    lo: float
    hi: float

    def x(self, t: float) -> float:
        return self.x0 + (t - self.start) / (self.end - self.start) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        return self.y1 - (v - self.lo) / (self.hi - self.lo) * (self.y1 - self.y0)


def _axes(frame: _Frame, unit: str, y_ticks: Sequence[float]) -> list[str]:
    out = ['<g class="axes" stroke="#888" stroke-width="1">']
    out.append(
        f'<line class="axis" x1="{_f(frame.x0)}" y1="{_f(frame.y1)}" '
        f'x2="{_f(frame.x1)}" y2="{_f(frame.y1)}"/>'
    )
    for v in y_ticks:
        y = frame.y(v)
        out.append(
            f'<line class="grid" x1="{_f(frame.x0)}" y1="{_f(y)}" x2="{_f(frame.x1)}" '
            f'y2="{_f(y)}" stroke-opacity="0.3"/>'
        )
    out.append("</g>")
    out.extend(
        f'<text class="tick" x="{_f(frame.x0 - 4)}" y="{_f(frame.y(v) + 4)}" '
        f'text-anchor="end">{escape(_fmt(v))}</text>'
        for v in y_ticks
    )
    for t, label in time_ticks(frame.start, frame.end):
        out.append(
            f'<text class="tick" x="{_f(frame.x(t))}" y="{_f(frame.y1 + 15)}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    if unit:
        out.append(f'<text class="unit" x="4" y="12">{escape(unit)}</text>')
    return out


def _clean(
    points: Iterable[tuple[float, float | None]], start: float, end: float
) -> list[tuple[float, float | None]]:
    kept: list[tuple[float, float | None]] = []
    for t, v in points:
        if not math.isfinite(t) or t < start or t > end:
            continue
        kept.append((t, v if v is not None and math.isfinite(v) else None))
    kept.sort(key=lambda p: p[0])
    return kept


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Split at None values and at jumps of more than 3x the median step."""
    times = [t for t, _ in points]
    steps = [b - a for a, b in itertools.pairwise(times) if b > a]
    limit = 3 * statistics.median(steps) if steps else math.inf
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for t, v in points:
        if v is None or (current and t - current[-1][0] > limit):
            if current:
                runs.append(current)
            current = []
        if v is not None:
            current.append((t, v))
    if current:
        runs.append(current)
    return runs


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    unit: str,
    start: float,
    end: float,
    width: int = 640,
    height: int = 180,
    y_min: float | None = None,
    y_max: float | None = None,
    id_prefix: str | None = None,
) -> Markup:
    """Time on x, one polyline per run of each series; gaps where values are missing."""
    _check_span(start, end)
    _check_size(width, height)
    pfx = _prefix(id_prefix)
    cleaned = [(s, _clean(s.points, start, end)) for s in series]
    values = [v for _, pts in cleaned for _, v in pts if v is not None]
    if not values:
        return _empty(pfx, width, height, title, "line-chart")
    lo = min(values) if y_min is None else min(y_min, min(values))
    hi = max(values) if y_max is None else max(y_max, max(values))
    ticks = nice_ticks(lo, hi if hi > lo else lo + 1.0, 4)
    lo, hi = (
        (ticks[0], ticks[-1])
        if y_min is None and y_max is None
        else (lo if y_min is not None else ticks[0], hi if y_max is not None else ticks[-1])
    )
    if hi <= lo:
        hi = lo + 1.0
    ticks = [v for v in ticks if lo <= v <= hi]
    legend = len(series) > 1
    top = _MARGIN_T + (14 if legend else 0)
    frame = _Frame(_MARGIN_L, width - _MARGIN_R, top, height - _MARGIN_B, start, end, lo, hi)
    described = []
    for s, pts in cleaned:
        vals = [v for _, v in pts if v is not None]
        if vals:
            described.append(
                f"{s.name} from {_fmt(min(vals))} to {_with_unit(max(vals), unit)}, "
                f"latest {_with_unit(vals[-1], unit)}"
            )
        else:
            described.append(f"{s.name}: {NO_DATA}")
    out = _open(pfx, width, height, title, f"{title}: " + "; ".join(described), "line-chart")
    out += _axes(frame, unit, ticks)
    for s, pts in cleaned:
        cls = escape(s.css_class)
        out.append(f'<g class="series {cls}" stroke="#555"><title>{escape(s.name)}</title>')
        for run in _runs(pts):
            if len(run) == 1:
                t, v = run[0]
                out.append(
                    f'<circle class="{cls}" cx="{_f(frame.x(t))}" cy="{_f(frame.y(v))}" r="2"/>'
                )
            else:
                coords = " ".join(f"{_f(frame.x(t))},{_f(frame.y(v))}" for t, v in run)
                out.append(f'<polyline class="{cls}" fill="none" points="{coords}"/>')
        out.append("</g>")
    if legend:
        x = float(_MARGIN_L)
        for s, _ in cleaned:
            cls = escape(s.css_class)
            out.append(
                f'<rect class="{cls}" x="{_f(x)}" y="6" width="10" height="10"/>'
                f'<text class="legend" x="{_f(x + 14)}" y="15">{escape(s.name)}</text>'
            )
            x += 24 + 7 * len(s.name)
    out.append("</svg>")
    return Markup("".join(out))


def bar_chart(
    bars: Sequence[tuple[float, float]],
    *,
    title: str,
    unit: str,
    start: float,
    end: float,
    bar_seconds: float,
    width: int = 640,
    height: int = 180,
    id_prefix: str | None = None,
) -> Markup:
    """Bars of ``bar_seconds`` each starting at their time (e.g. readings per minute)."""
    _check_span(start, end)
    _check_size(width, height)
    if not (math.isfinite(bar_seconds) and bar_seconds > 0):
        raise ValueError(f"bar_seconds must be a positive number, got {bar_seconds!r}")
    pfx = _prefix(id_prefix)
    kept = [(t, v) for t, v in bars if math.isfinite(t) and math.isfinite(v) and start <= t < end]
    if not kept:
        return _empty(pfx, width, height, title, "bar-chart")
    hi = max(max(v for _, v in kept), 0.0)
    lo = min(min(v for _, v in kept), 0.0)
    ticks = nice_ticks(lo, hi if hi > lo else lo + 1.0, 4)
    frame = _Frame(
        _MARGIN_L, width - _MARGIN_R, _MARGIN_T, height - _MARGIN_B, start, end, ticks[0], ticks[-1]
    )
    vals = [v for _, v in kept]
    desc = (
        f"{title}: {len(kept)} bars, from {_fmt(min(vals))} to {_with_unit(max(vals), unit)}, "
        f"total {_with_unit(sum(vals), unit)}"
    )
    out = _open(pfx, width, height, title, desc, "bar-chart")
    out += _axes(frame, unit, ticks)
    out.append('<g class="bars series-0" fill="#888">')
    for t, v in kept:
        x0 = frame.x(t)
        x1 = frame.x(min(t + bar_seconds, end))
        ya, yb = sorted((frame.y(v), frame.y(0.0)))
        out.append(
            f'<rect x="{_f(x0)}" y="{_f(ya)}" width="{_f(max(x1 - x0 - 0.5, 0.5))}" '
            f'height="{_f(yb - ya)}"><title>{escape(_with_unit(v, unit))}</title></rect>'
        )
    out.append("</g></svg>")
    return Markup("".join(out))


def step_timeline(
    points: Sequence[tuple[float, bool | None]],
    *,
    title: str,
    start: float,
    end: float,
    on_label: str,
    off_label: str,
    width: int = 640,
    height: int = 64,
    id_prefix: str | None = None,
) -> Markup:
    """A state held from each point to the next: filled where on, hatched where unknown."""
    _check_span(start, end)
    _check_size(width, height)
    pfx = _prefix(id_prefix)
    kept = sorted(((t, s) for t, s in points if math.isfinite(t) and t <= end), key=lambda p: p[0])
    # The state at ``start`` is the last one before it.
    before = [p for p in kept if p[0] < start]
    inside = [p for p in kept if p[0] >= start]
    if not inside and not before:
        return _empty(pfx, width, height, title, "timeline")
    steps = ([(start, before[-1][1])] if before else []) + inside
    frame = _Frame(8, width - 8, 6, height - _MARGIN_B, start, end, 0.0, 1.0)
    out: list[str] = []
    on_s = off_s = 0.0
    bands: list[tuple[float, float, bool | None]] = []
    first_t = steps[0][0]
    if first_t > start:
        bands.append((start, first_t, None))
    for (t, s), nxt in itertools.zip_longest(steps, steps[1:]):
        t1 = nxt[0] if nxt else end
        bands.append((t, t1, s))
    for t0, t1, s in bands:
        if t1 <= t0:
            continue
        on_s += (t1 - t0) if s is True else 0.0
        off_s += (t1 - t0) if s is False else 0.0
        cls, label = (
            ("on", on_label) if s else ("off", off_label) if s is False else ("unknown", "unknown")
        )
        fill = {"on": "#666", "off": "none", "unknown": f"url(#{pfx}-hatch)"}[cls]
        out.append(
            f'<rect class="band band-{cls}" x="{_f(frame.x(t0))}" y="{_f(frame.y0)}" '
            f'width="{_f(frame.x(t1) - frame.x(t0))}" height="{_f(frame.y1 - frame.y0)}" '
            f'fill="{fill}"><title>{escape(label)}</title></rect>'
        )
    span = end - start
    desc = (
        f"{title}: {on_label} {100 * on_s / span:.0f}% of the time, "
        f"{off_label} {100 * off_s / span:.0f}%, unknown "
        f"{100 * max(span - on_s - off_s, 0) / span:.0f}%; "
        f"now {_state_word(steps[-1][1], on_label, off_label)}"
    )
    head = _open(pfx, width, height, title, desc, "timeline")
    head.append(
        f'<defs><pattern id="{pfx}-hatch" width="6" height="6" '
        f'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="#999" stroke-width="2"/>'
        f"</pattern></defs>"
    )
    head.append(
        f'<rect class="frame" x="{_f(frame.x0)}" y="{_f(frame.y0)}" '
        f'width="{_f(frame.x1 - frame.x0)}" height="{_f(frame.y1 - frame.y0)}" '
        f'fill="none" stroke="#888"/>'
    )
    for t, label in time_ticks(start, end):
        out.append(
            f'<text class="tick" x="{_f(frame.x(t))}" y="{_f(frame.y1 + 15)}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    return Markup("".join(head + out) + "</svg>")


def _state_word(state: bool | None, on_label: str, off_label: str) -> str:
    return on_label if state else off_label if state is False else "unknown"


def plan(
    gateways: Sequence[PlanGateway],
    cells: Sequence[PlanCell],
    *,
    title: str,
    width: int = 720,
    height: int = 460,
    id_prefix: str | None = None,
) -> Markup:
    """Gateways as linked markers and sensors as a density grid, north up, with a scale bar."""
    _check_size(width, height)
    pfx = _prefix(id_prefix)
    gws = [
        g
        for g in gateways
        if math.isfinite(g.lat)
        and math.isfinite(g.lon)
        and -90 <= g.lat <= 90
        and -180 <= g.lon <= 180
    ]
    cls_ = [
        c
        for c in cells
        if all(math.isfinite(v) for v in (c.lat0, c.lon0, c.lat1, c.lon1)) and c.count > 0
    ]
    for c in cells:
        if c.count < 0 or c.silent < 0:
            raise ValueError(f"a plan cell has a negative count ({c.count}, {c.silent})")
    lats = [g.lat for g in gws] + [v for c in cls_ for v in (c.lat0, c.lat1)]
    lons = [g.lon for g in gws] + [v for c in cls_ for v in (c.lon0, c.lon1)]
    if not lats:
        return _empty(pfx, width, height, title, "plan")
    lat_lo, lat_hi, lon_lo, lon_hi = min(lats), max(lats), min(lons), max(lons)
    k = math.cos(math.radians((lat_lo + lat_hi) / 2))
    span_x = max((lon_hi - lon_lo) * k, 1e-6)
    span_y = max(lat_hi - lat_lo, 1e-6)
    margin = 24
    scale = min((width - 2 * margin) / span_x, (height - 2 * margin - 16) / span_y)
    ox = (width - span_x * scale) / 2
    oy = (height - 16 - span_y * scale) / 2
    cx_lon = lon_lo if lon_hi > lon_lo else lon_lo - 0.5e-6 / max(k, 1e-9)
    cy_lat = lat_hi if lat_hi > lat_lo else lat_hi + 0.5e-6

    def px(lon: float) -> float:
        return ox + (lon - cx_lon) * k * scale

    def py(lat: float) -> float:
        return oy + (cy_lat - lat) * scale

    counts = {s: 0 for s in ("online", "degraded", "offline", "never_seen")}
    for g in gws:
        if g.state in counts:
            counts[g.state] += 1
    sensors = sum(c.count for c in cls_)
    silent = sum(c.silent for c in cls_)
    desc = (
        f"{title}: {len(gws)} gateways ("
        + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items())
        + f"); {sensors} sensors in {len(cls_)} cells, {silent} silent"
    )
    out = _open(pfx, width, height, title, desc, "plan")
    most = max((c.count for c in cls_), default=1)
    out.append('<g class="cells" fill="#888">')
    for c in cls_:
        x0, x1 = sorted((px(c.lon0), px(c.lon1)))
        y0, y1 = sorted((py(c.lat0), py(c.lat1)))
        shade = 0.15 + 0.75 * math.sqrt(c.count / most)
        mark = (
            ' class="cell cell-silent" stroke="#c00" stroke-width="1.5"'
            if c.silent
            else ' class="cell"'
        )
        out.append(
            f'<rect{mark} x="{_f(x0)}" y="{_f(y0)}" width="{_f(max(x1 - x0, 1))}" '
            f'height="{_f(max(y1 - y0, 1))}" fill-opacity="{shade:.2f}">'
            f"<title>{c.count} sensors, {c.silent} silent</title></rect>"
        )
    out.append('</g><g class="gateways">')
    for g in gws:
        state = g.state if g.state in _STATES else "unknown"
        out.append(
            f'<a href="{escape(g.href)}"><title>{escape(g.name)} ({escape(g.id)}): '
            f'{escape(g.state.replace("_", " "))}</title><circle class="gateway '
            f'state-{state}" cx="{_f(px(g.lon))}" cy="{_f(py(g.lat))}" r="5" '
            f'fill="#777" stroke="#fff"/></a>'
        )
    out.append("</g>")
    out += _scale_bar(scale, width, height)
    out.append("</svg>")
    return Markup("".join(out))


def _scale_bar(px_per_deg_lat: float, width: int, height: int) -> list[str]:
    metres_per_px = 111_320.0 / px_per_deg_lat
    want = metres_per_px * width / 5
    power = 10 ** math.floor(math.log10(max(want, 1e-3)))
    metres = max(m * power for m in (1, 2, 5) if m * power <= want) if want >= power else power
    length = metres / metres_per_px
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    y = height - 8
    return [
        f'<g class="scale"><line class="axis" x1="10" y1="{y}" x2="{_f(10 + length)}" '
        f'y2="{y}" stroke="#888" stroke-width="2"/><text x="{_f(14 + length)}" y="{y + 4}">'
        f"{label}</text></g>"
    ]


def progress_bar(
    parts: Sequence[tuple[str, int, str]],
    *,
    total: int,
    label: str,
    width: int = 200,
    height: int = 14,
    id_prefix: str | None = None,
) -> Markup:
    """A stacked bar of ``(name, count, css class)`` parts out of ``total``."""
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    if any(n < 0 for _, n, _ in parts):
        raise ValueError("progress_bar parts must not have negative counts")
    _check_size(width, height)
    pfx = _prefix(id_prefix)
    whole = max(total, sum(n for _, n, _ in parts))
    desc = (
        f"{label}: "
        + (", ".join(f"{n} {name}" for name, n, _ in parts) or "nothing yet")
        + f" of {total}"
    )
    out = _open(pfx, width, height, label, desc, "progress")
    out.append(f'<rect class="track" x="0" y="0" width="{width}" height="{height}" fill="#eee"/>')
    x = 0.0
    for name, n, cls in parts:
        w = width * n / whole
        out.append(
            f'<rect class="{escape(cls)}" x="{_f(x)}" y="0" width="{_f(w)}" '
            f'height="{height}" fill="#888"><title>{n} {escape(name)}</title></rect>'
        )
        x += w
    out.append("</svg>")
    return Markup("".join(out))


def sparkline(
    values: Sequence[float | None],
    *,
    label: str = "trend",
    width: int = 80,
    height: int = 18,
    css_class: str = "series-0",
    id_prefix: str | None = None,
) -> Markup:
    """A tiny trend for a table cell; missing or non-finite values are gaps."""
    _check_size(width, height)
    pfx = _prefix(id_prefix)
    pts = [
        (float(i), v if v is not None and math.isfinite(v) else None) for i, v in enumerate(values)
    ]
    vals = [v for _, v in pts if v is not None]
    if not vals:
        return _empty(pfx, width, height, label, "sparkline")
    lo, hi = min(vals), max(vals)
    if hi <= lo:
        hi = lo + 1.0
    frame = _Frame(1, width - 1, 1, height - 1, 0.0, max(len(pts) - 1, 1), lo, hi)
    desc = f"{label}: from {_fmt(min(vals))} to {_fmt(max(vals))}, latest {_fmt(vals[-1])}"
    out = _open(pfx, width, height, label, desc, "sparkline")
    segments: list[list[tuple[float, float]]] = [[]]
    for t, v in pts:
        if v is None:
            segments.append([])
        else:
            segments[-1].append((t, v))
    for seg in (s for s in segments if s):
        coords = " ".join(f"{_f(frame.x(t))},{_f(frame.y(v))}" for t, v in seg)
        out.append(
            f'<polyline class="{escape(css_class)}" fill="none" stroke="#555" points="{coords}"/>'
        )
    out.append("</svg>")
    return Markup("".join(out))


__all__ = [
    "NO_DATA",
    "PlanCell",
    "PlanGateway",
    "Series",
    "bar_chart",
    "line_chart",
    "nice_ticks",
    "plan",
    "progress_bar",
    "sparkline",
    "step_timeline",
    "time_ticks",
]
