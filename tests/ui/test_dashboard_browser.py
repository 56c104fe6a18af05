"""The operations dashboard in a real browser (Debian's Chromium through Playwright), against a
fleet fed over MQTT by an emulated district: what a person sees on every page, a gateway
whose power is cut turning red and raising an alert without a reload, acknowledging that
alert, pausing and resuming a rollout, what a technician may not do, the phone layout and
keyboard navigation. The same pages over HTTP, in process: tests/fleet/dashboard."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Locator, Page, Request, expect

from tests.ui.conftest import DETECTION_S, PAGE_REFRESH_S, UI_TIMEOUT_MS, OpsFleet, wait_for

#: The light theme's colours of an offline state (fleet/dashboard/static/dashboard.css:
#: --bad and --bad-bg); the browser runs with the light colour scheme.
BAD = "rgb(164, 14, 38)"
BAD_BG = "rgb(255, 235, 233)"
#: Waits that include one poll of a page that refreshes every 10 s.
PHONE_WIDTH = 390
LIVE_TIMEOUT_MS = int((DETECTION_S + PAGE_REFRESH_S) * 1000) + UI_TIMEOUT_MS


@dataclass
class Watch:
    """What a tab's console and network said while the test ran."""

    origin: str
    errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def request(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and (
            f"{parts.scheme}://{parts.netloc}" != self.origin
        ):
            self.outside.append(request.url)

    def request_failed(self, request: Request) -> None:
        # A poll still in flight when the test navigates on is aborted by the browser itself.
        if request.failure != "net::ERR_ABORTED":
            self.failed.append(f"{request.url}: {request.failure}")


def watch(page: Page, fleet: OpsFleet) -> Watch:
    parts = urlsplit(fleet.url)
    seen = Watch(f"{parts.scheme}://{parts.netloc}")
    page.on("console", seen.console)
    page.on("request", seen.request)
    page.on("requestfailed", seen.request_failed)
    return seen


def gateway_row(page: Page, name: str) -> Locator:
    link = page.get_by_role("link", name=name, exact=True)
    return page.get_by_role("row").filter(has=link)


def alert_row(page: Page, gateway_id: str) -> Locator:
    where = page.get_by_role("link", name=f"gateway {gateway_id}", exact=True)
    return page.get_by_role("row").filter(has=where)


def open_alerts(fleet: OpsFleet, gateway_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = fleet.api(
        "/api/v1/alerts", subject=f"gateway:{gateway_id}", kind="gateway_offline"
    )["items"]
    return [a for a in found if a["state"] in ("open", "acknowledged")]


@pytest.fixture(scope="module")
def open_alert(ops_fleet: OpsFleet) -> str:
    """A gateway cut off and its gateway_offline alert open (never acknowledged here)."""
    victim = ops_fleet.gateways[-3]
    ops_fleet.district.power_cut(victim)
    wait_for(lambda: open_alerts(ops_fleet, victim), f"an alert for {victim}", DETECTION_S)
    return victim


@pytest.fixture(scope="module")
def rollout(ops_fleet: OpsFleet) -> int:
    """A rollout to three gateways, one of which never answers: it stays running, two of
    three applied."""
    admin = ops_fleet.admin
    defaults = admin.put(
        "/api/v1/config/defaults", json={"settings": {"mqtt": {"url": ops_fleet.mqtt_url}}}
    )
    assert defaults.status_code in (200, 201), defaults.text
    started = admin.post(
        "/api/v1/rollouts",
        json={
            "target": ops_fleet.gateways[:3],
            "waves": [100],
            "timeout_s": 3600,
            "comment": "browser test",
        },
    )
    assert started.status_code == 201, started.text
    rollout_id: int = started.json()["id"]
    wait_for(
        lambda: ops_fleet.api(f"/api/v1/rollouts/{rollout_id}")["counts"].get("applied") == 2,
        "two gateways to apply the rollout",
    )
    return rollout_id


def test_every_page_shows_its_heading_without_errors_or_outside_requests(
    page: Page, ops_fleet: OpsFleet
) -> None:
    seen = watch(page, ops_fleet)
    gateway = ops_fleet.gateways[1]
    sensor = ops_fleet.sensors[0]
    pages = [
        ("/ui/", "Right now"),
        ("/ui/gateways", "Gateways"),
        (f"/ui/gateways/{gateway}", ops_fleet.names[gateway]),
        ("/ui/sensors", "Sensors"),
        (f"/ui/sensors/{sensor}", "node-1"),
        ("/ui/alerts", "Alerts"),
        ("/ui/rollouts", "Rollouts"),
        ("/ui/site", "On site"),
    ]
    for path, heading in pages:
        answer = page.goto(path)
        assert answer is not None, path
        assert answer.status == 200, path
        expect(page.get_by_role("heading", level=1)).to_contain_text(heading)
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    # The live poll ran at least once on the overview, and the gateway page's plots are drawn.
    page.goto(f"/ui/gateways/{gateway}")
    expect(page.get_by_role("img").first).to_be_visible()
    assert seen.errors == []
    assert seen.outside == []
    assert seen.failed == []


def test_a_gateway_whose_power_is_cut_turns_red_and_raises_an_alert(
    page: Page, ops_fleet: OpsFleet
) -> None:
    victim = ops_fleet.gateways[-1]
    name = ops_fleet.names[victim]
    page.goto("/ui/gateways")
    row = gateway_row(page, name)
    expect(row).to_contain_text("online")
    expect(row).not_to_have_class(re.compile(r"\brow-offline\b"))
    # A mark that a reload would wipe: the row must turn red through the live poll.
    page.evaluate("window.owlgateTestMark = 'not reloaded'")

    ops_fleet.district.power_cut(victim)

    expect(row).to_contain_text("offline", timeout=LIVE_TIMEOUT_MS)
    expect(row).to_have_class(re.compile(r"\brow-offline\b"))
    assert row.evaluate("e => getComputedStyle(e).backgroundColor") == BAD_BG
    badge = row.get_by_text("offline", exact=True)
    assert badge.evaluate("e => getComputedStyle(e).color") == BAD
    assert page.evaluate("window.owlgateTestMark") == "not reloaded"
    for other in ops_fleet.gateways[:2]:
        expect(gateway_row(page, ops_fleet.names[other])).to_contain_text("online")

    page.goto("/ui/alerts")
    alert = alert_row(page, victim)
    expect(alert).to_contain_text("critical", timeout=LIVE_TIMEOUT_MS)
    expect(alert).to_contain_text(f"gateway {victim} offline")
    found = open_alerts(ops_fleet, victim)
    assert [a["rule"] for a in found] == ["gateway_offline"]


def test_a_gateway_back_from_a_power_cut_is_online_again(page: Page, ops_fleet: OpsFleet) -> None:
    gateway = ops_fleet.gateways[1]

    def state() -> str:
        found: str = ops_fleet.api(f"/api/v1/gateways/{gateway}")["health"]["state"]
        return found

    ops_fleet.district.power_cut(gateway)
    wait_for(lambda: state() == "offline", f"{gateway} offline", DETECTION_S)
    ops_fleet.district.reconnect(gateway)
    wait_for(lambda: state() == "online", f"{gateway} online again", DETECTION_S)
    page.goto(f"/ui/gateways/{gateway}")
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_contain_text(ops_fleet.names[gateway])
    expect(heading).to_contain_text("online")


def test_acknowledging_an_alert_with_a_comment(page: Page, ops_fleet: OpsFleet) -> None:
    victim = ops_fleet.gateways[-2]
    ops_fleet.district.power_cut(victim)
    wait_for(lambda: open_alerts(ops_fleet, victim), f"an alert for {victim}", DETECTION_S)
    page.goto("/ui/alerts")
    row = alert_row(page, victim)
    expect(row).to_contain_text("open", timeout=LIVE_TIMEOUT_MS)
    comment = "crew on the way to the roof"
    row.get_by_label("Comment").fill(comment)
    row.get_by_role("button", name="Acknowledge").click()

    expect(page.get_by_role("status").filter(has_text="acknowledged")).to_be_visible()
    row = alert_row(page, victim)
    expect(row).to_contain_text("acknowledged by ops operator")
    expect(row).to_contain_text(comment)
    expect(row.get_by_role("button", name="Acknowledge")).to_have_count(0)
    (found,) = open_alerts(ops_fleet, victim)
    assert found["state"] == "acknowledged"
    assert found["acknowledged_by"] == "ops operator"


def test_a_rollout_shows_progress_and_pauses_and_resumes(
    page: Page, ops_fleet: OpsFleet, rollout: int
) -> None:
    page.goto("/ui/rollouts")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"#{rollout}"))
    expect(row).to_contain_text("running")
    # Two of the three gateways answer at once; the third never does.
    expect(row).to_contain_text("2 of 3 applied", timeout=LIVE_TIMEOUT_MS)
    expect(row.get_by_role("img")).to_be_visible()

    row.get_by_role("link", name=f"#{rollout}").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Rollout #{rollout}")
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_contain_text("running")
    page.get_by_role("button", name="Pause").click()
    expect(heading).to_contain_text("paused")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    assert ops_fleet.api(f"/api/v1/rollouts/{rollout}")["state"] == "paused"

    page.get_by_role("button", name="Resume").click()
    expect(heading).to_contain_text("running")
    assert ops_fleet.api(f"/api/v1/rollouts/{rollout}")["state"] == "running"


def test_a_technician_cannot_acknowledge_or_pause_and_an_operator_can(
    page: Page, technician_page: Page, ops_fleet: OpsFleet, open_alert: str, rollout: int
) -> None:
    for tab, allowed in ((page, True), (technician_page, False)):
        tab.goto("/ui/alerts")
        row = alert_row(tab, open_alert)
        expect(row).to_contain_text("critical", timeout=LIVE_TIMEOUT_MS)
        expect(row.get_by_role("button", name="Acknowledge")).to_have_count(1 if allowed else 0)
        tab.goto(f"/ui/rollouts/{rollout}")
        expect(tab.get_by_role("heading", level=1)).to_contain_text(f"Rollout #{rollout}")
        expect(tab.get_by_role("button", name="Pause")).to_have_count(1 if allowed else 0)
        expect(tab.get_by_role("button", name="Abort")).to_have_count(1 if allowed else 0)
    technician_page.goto("/ui/alerts")
    expect(technician_page.get_by_text("operators acknowledge them")).to_be_visible()


@pytest.mark.parametrize("path", ["/ui/", "/ui/gateways", "/ui/sensors", "/ui/alerts"])
def test_on_a_phone_nothing_scrolls_sideways(phone_page: Page, path: str) -> None:
    phone_page.goto(path)
    expect(phone_page.get_by_role("heading", level=1)).to_be_visible()
    expect(phone_page.get_by_role("link", name="Overview")).to_be_visible()
    wide = phone_page.evaluate(
        "[document.scrollingElement.scrollWidth, window.innerWidth]"
    )  # fmt: skip
    assert wide[0] <= wide[1], f"{path}: page {wide[0]} px wide in a {wide[1]} px window"


def test_the_overview_on_a_phone_shows_the_headings(phone_page: Page) -> None:
    phone_page.goto("/ui/")
    for name in ("Right now", "Gateways", "Sensors", "Open alerts", "Data freshness"):
        heading = phone_page.get_by_role("heading", name=name)
        expect(heading.first).to_be_visible()
        box = heading.first.bounding_box()
        assert box is not None, name
        assert box["x"] >= 0, (name, box)
        assert box["x"] + box["width"] <= PHONE_WIDTH, (name, box)


def focused(page: Page) -> dict[str, Any]:
    found: dict[str, Any] = page.evaluate(
        """() => { const e = document.activeElement; const s = getComputedStyle(e);
        const r = e.getBoundingClientRect();
        return {text: e.textContent.trim(), tag: e.tagName, outline: s.outlineStyle,
                width: parseFloat(s.outlineWidth), left: r.left, top: r.top,
                visible: r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0}; }"""
    )
    return found


def test_the_keyboard_reaches_the_skip_link_and_the_menu_with_visible_focus(page: Page) -> None:
    page.goto("/ui/")
    page.keyboard.press("Tab")
    first = focused(page)
    assert first["text"] == "Skip to content", first
    assert first["visible"], first
    assert first["outline"] != "none", first
    assert first["width"] >= 2, first
    # Then the brand link and the six entries of the menu, in order.
    names = []
    for _ in range(7):
        page.keyboard.press("Tab")
        now = focused(page)
        assert now["outline"] != "none", now
        names.append(now["text"])
    menu = ["Overview", "Gateways", "Sensors", "Alerts", "Rollouts", "On site"]
    assert names == ["owlgate", *menu], names
    # Enter on the skip link goes to the content.
    page.goto("/ui/gateways")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#main$"))


def test_last_updated_changes_without_a_reload(page: Page) -> None:
    page.goto("/ui/")
    live = page.get_by_role("status").filter(has_text="Last updated")
    expect(live).to_be_visible()
    before = live.inner_text()
    page.evaluate("window.owlgateTestMark = 'not reloaded'")
    expect(live).not_to_have_text(before, timeout=LIVE_TIMEOUT_MS)
    expect(live).to_contain_text("Last updated")
    assert page.evaluate("window.owlgateTestMark") == "not reloaded"
    # The time stays machine-readable after an update, as the server first rendered it.
    stamp = live.locator("time").get_attribute("datetime")
    assert stamp is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", stamp), stamp
    assert live.locator("time").inner_text() in live.inner_text()
