"""The overview's plan draws a marker for each gateway whose site was given through
``PUT /api/v1/gateways/{gateway_id}/site``, linked to its page, beside the sensors' grid."""

from __future__ import annotations

import re

import pytest

from owlgate.fleet.store import Store
from tests.fleet.dashboard.test_pages import City, browser
from tests.fleet.test_rollouts import GATEWAYS

MARKER = re.compile(
    r'<a href="/ui/gateways/([0-9a-f]{16})"><title>[^<]*</title><circle class="gateway '
    r'state-([a-z_]+)" cx="([-0-9.]+)" cy="([-0-9.]+)"'
)


@pytest.fixture
def city(store: Store) -> City:
    return City(store)


def plan_of(page: str) -> str:
    start = page.index('<svg class="chart plan"')
    return page[start : page.index("</svg>", start)]


def test_the_plan_shows_a_marker_for_each_gateway_with_a_site(city: City) -> None:
    tab = browser(city)
    before = plan_of(tab.get("/ui/").text)
    assert MARKER.findall(before) == []
    assert ": 0 gateways" in before
    technician = city.api.as_role("technician")
    placed = GATEWAYS[:3]
    for index, gid in enumerate(placed):
        answer = technician.request(
            "PUT",
            f"/api/v1/gateways/{gid}/site",
            json={"zone": "zone-1", "lat": 52.020 + index * 0.001, "lon": 8.530, "label": "mast"},
        )
        assert answer.status_code == 200, answer.text
    page = tab.get("/ui/")
    assert page.status_code == 200
    plan = plan_of(page.text)
    markers = MARKER.findall(plan)
    assert sorted(m[0] for m in markers) == sorted(placed)
    assert ": 3 gateways" in plan
    # North up: the gateway furthest north is highest on the plan (smallest y).
    heights = {m[0]: float(m[3]) for m in markers}
    assert heights[placed[2]] < heights[placed[1]] < heights[placed[0]]
    # The first gateway went quiet an hour in: its marker says offline, the others online.
    states = {m[0]: m[1] for m in markers}
    assert states[placed[0]] == "offline"
    assert states[placed[1]] == states[placed[2]] == "online"
    # The sensors' grid is still drawn beside the markers.
    assert 'class="cell' in plan
