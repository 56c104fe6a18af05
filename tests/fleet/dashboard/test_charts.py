"""The inline SVG charts: well-formed XML, coordinates, gaps, escaping, empty data."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.fleet.dashboard import charts

T0 = 1_700_000_000.0


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def polylines(root: ET.Element) -> list[list[tuple[float, float]]]:
    found = []
    for line in root.iter("polyline"):
        pairs = line.attrib["points"].split()
        found.append([(float(a), float(b)) for a, b in (p.split(",") for p in pairs)])
    return found


def test_line_chart_highest_value_at_top_and_gap_splits_line() -> None:
    points: list[tuple[float, float | None]] = [
        (T0 + 60 * i, float(v)) for i, v in enumerate([1, 3, 10, 2])
    ]
    points += [(T0 + 300, None), (T0 + 360, 4.0), (T0 + 420, 5.0)]
    svg = charts.line_chart(
        [charts.Series("temp", points, "series-1")],
        title="CPU",
        unit="°C",
        start=T0,
        end=T0 + 600,
        id_prefix="t1",
    )
    root = parse(svg)
    lines = polylines(root)
    assert len(lines) == 2
    ys = [y for line in lines for _, y in line]
    assert min(ys) == pytest.approx(lines[0][2][1])  # 10 is the highest point
    assert root.attrib["role"] == "img"
    assert root.attrib["aria-labelledby"].split()[0] == "t1-title"
    desc = root.find("desc")
    assert desc is not None
    assert desc.text is not None
    assert "from 1.0 to 10.0 °C" in desc.text
    assert "latest 5.0 °C" in desc.text


def test_line_chart_splits_at_long_pause() -> None:
    points: list[tuple[float, float | None]] = [(T0 + 60 * i, 1.0) for i in range(5)]
    points += [(T0 + 3000 + 60 * i, 2.0) for i in range(5)]
    svg = charts.line_chart(
        [charts.Series("a", points)], title="x", unit="", start=T0, end=T0 + 3600
    )
    assert len(polylines(parse(svg))) == 2


def test_y_max_maps_to_top_of_plot_area() -> None:
    svg = charts.line_chart(
        [charts.Series("fill", [(T0, 0.0), (T0 + 60, 100.0)])],
        title="Fill",
        unit="%",
        start=T0,
        end=T0 + 60,
        y_min=0,
        y_max=100,
    )
    (line,) = polylines(parse(svg))
    assert line[1][1] < line[0][1]
    assert line[1][0] == pytest.approx(640 - 12)


def test_legend_and_escaping_of_hostile_names() -> None:
    hostile = '<script>alert("x")</script>'
    svg = charts.line_chart(
        [charts.Series(hostile, [(T0, 1.0)]), charts.Series("b", [(T0, 2.0)], "series-1")],
        title=hostile,
        unit="&",
        start=T0,
        end=T0 + 60,
    )
    assert "<script>" not in str(svg)
    root = parse(svg)
    texts = [t.text for t in root.iter("text")]
    assert hostile in texts


def test_empty_data_says_so() -> None:
    svg = charts.line_chart([], title="x", unit="", start=T0, end=T0 + 60)
    assert charts.NO_DATA in str(svg)
    parse(svg)
    assert charts.NO_DATA in str(
        charts.bar_chart([], title="b", unit="", start=0, end=1, bar_seconds=1)
    )
    assert charts.NO_DATA in str(charts.plan([], [], title="p"))


@pytest.mark.parametrize(("start", "end"), [(10.0, 10.0), (10.0, 5.0), (math.nan, 1.0)])
def test_bad_period_raises(start: float, end: float) -> None:
    with pytest.raises(ValueError, match="start"):
        charts.line_chart([], title="x", unit="", start=start, end=end)


def test_nan_values_are_gaps() -> None:
    pts = [(T0, 1.0), (T0 + 60, math.nan), (T0 + 120, 2.0), (T0 + 180, 3.0)]
    svg = charts.line_chart([charts.Series("a", pts)], title="x", unit="", start=T0, end=T0 + 180)
    assert "nan" not in str(svg).lower().replace("nano", "")
    assert len(list(parse(svg).iter("circle"))) == 1


def test_bar_chart_tallest_bar_reaches_top() -> None:
    bars = [(T0 + 60 * i, float(i)) for i in range(60)]
    root = parse(
        charts.bar_chart(
            bars, title="ingest", unit="readings", start=T0, end=T0 + 3600, bar_seconds=60
        )
    )
    rects = list(root.iter("rect"))
    assert len(rects) == 60
    assert min(float(r.attrib["y"]) for r in rects) == pytest.approx(float(rects[-1].attrib["y"]))


def test_step_timeline_bands() -> None:
    svg = charts.step_timeline(
        [(T0 + 100, True), (T0 + 200, False), (T0 + 300, None)],
        title="Occupancy",
        start=T0,
        end=T0 + 400,
        on_label="occupied",
        off_label="free",
        id_prefix="occ",
    )
    root = parse(svg)
    classes = [r.attrib.get("class", "") for r in root.iter("rect")]
    assert classes.count("band band-on") == 1
    assert classes.count("band band-unknown") == 2
    desc = root.find("desc")
    assert desc is not None
    assert "occupied 25%" in (desc.text or "")


def test_plan_markers_links_and_cells() -> None:
    gws = [
        charts.PlanGateway("gw1", "<b>North</b>", 52.52, 13.40, "online", "/ui/gateways/gw1"),
        charts.PlanGateway("gw2", "South", 52.50, 13.42, "offline", "/ui/gateways/gw2"),
    ]
    cells = [charts.PlanCell(52.50, 13.40, 52.51, 13.41, 10, 2)]
    root = parse(charts.plan(gws, cells, title="Plan", width=720, height=460))
    links = list(root.iter("a"))
    assert [a.attrib["href"] for a in links] == ["/ui/gateways/gw1", "/ui/gateways/gw2"]
    titles = [a.find("title") for a in links]
    assert titles[0] is not None
    assert (titles[0].text or "").startswith("<b>North</b>")
    circles = list(root.iter("circle"))
    north, south = (float(c.attrib["cy"]) for c in circles)
    assert north < south  # north up
    assert "state-offline" in circles[1].attrib["class"]
    assert any("cell-silent" in r.attrib.get("class", "") for r in root.iter("rect"))


def test_progress_bar_parts() -> None:
    root = parse(
        charts.progress_bar(
            [("applied", 3, "part-ok"), ("failed", 1, "part-bad")],
            total=8,
            label="wave 1",
            width=200,
        )
    )
    rects = list(root.iter("rect"))
    assert float(rects[1].attrib["width"]) == pytest.approx(75.0)
    assert float(rects[2].attrib["x"]) == pytest.approx(75.0)


def test_nice_ticks_are_round() -> None:
    assert charts.nice_ticks(0, 97, 5) == [0, 20, 40, 60, 80, 100]


def test_ids_unique_without_prefix() -> None:
    a = parse(charts.sparkline([1.0, 2.0]))
    b = parse(charts.sparkline([1.0, 2.0]))
    assert a.attrib["aria-labelledby"] != b.attrib["aria-labelledby"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3600), st.floats(-1e9, 1e9) | st.none()), max_size=50))
def test_any_finite_series_renders_inside_viewbox(
    points: list[tuple[float, float | None]],
) -> None:
    svg = charts.line_chart(
        [charts.Series("s", [(T0 + t, v) for t, v in points])],
        title="h",
        unit="u",
        start=T0,
        end=T0 + 3600,
    )
    root = parse(svg)
    for line in polylines(root):
        for x, y in line:
            assert 0 <= x <= 640
            assert 0 <= y <= 180
