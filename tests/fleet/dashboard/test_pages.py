"""The dashboard's pages over HTTP, as a browser meets them: login and sessions, what each page
shows of a small fleet, the forms that acknowledge alerts and steer rollouts, and what must
never be shown. The same pages in a real browser: tests/ui."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from owlgate.codecs.health import Health, RadioCounters
from owlgate.codecs.node.telemetry import Reading
from owlgate.fleet import views
from owlgate.fleet.alerts import AlertEvaluator, list_alerts
from owlgate.fleet.auth import FailureLimiter, create_token, revoke_token
from owlgate.fleet.dashboard.pages import MAX_FAILED_LOGINS, login_limiter
from owlgate.fleet.dashboard.sessions import COOKIE_NAME
from owlgate.fleet.store import Store
from tests.fleet.conftest import T0
from tests.fleet.test_rollouts import GATEWAYS, Rig

APP_KEY = "000102030405060708090a0b0c0d0e0f"
BAYS = [f"a0000000000000{index:02x}" for index in range(1, 5)]
BINS = [f"b0000000000000{index:02x}" for index in range(1, 4)]
MINUTE = 60.0


class Browser:
    """A browser's view of the app: cookies kept between requests, no redirects followed."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cookies = httpx.Cookies()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://fleet", cookies=self.cookies
            ) as http:
                answer = await http.request(method, path, **kwargs)
                self.cookies.update(http.cookies)
                return answer

        return asyncio.run(go())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, form: dict[str, str], **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, data=form, **kwargs)

    def login(self, token: str) -> httpx.Response:
        return self.post("/ui/login", {"token": token, "next": ""})

    def csrf(self, path: str) -> str:
        page = self.get(path)
        assert page.status_code == 200, page.text
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert found is not None, "the page has no form with a CSRF token"
        return found.group(1)


class City(Rig):
    """The rollout rig's ten gateways, with sites, health history, sensors and readings; one
    gateway silent long enough to be offline and alerted."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.now = T0 + 6 * 3600.0
        for gid in GATEWAYS:
            for step in range(12):
                at = T0 + step * 5 * MINUTE
                self.store.record_health(gid, self._health(gid, step, at), received_at=at)
        for index, eui in enumerate(BAYS + BINS):
            profile = "parking-v1" if eui in BAYS else "waste-bin-v1"
            store.create_device(
                eui,
                profile_id=profile,
                activation="otaa",
                created=T0,
                join_eui="70b3d57ed0000000",
                app_key=bytes.fromhex(APP_KEY),
            )
            with store.transaction() as db:
                views.set_site(
                    db,
                    views.make_site(
                        eui,
                        zone=f"zone-{index % 3 + 1}",
                        street="Obernstraße",
                        label=f"bay {index}" if eui in BAYS else f"bin {index}",
                        lat=52.021 + index * 0.0005,
                        lon=8.531,
                    ),
                    at=T0,
                )
        seq = 0
        for step in range(8):
            at = self.now - 3600.0 + step * 7 * MINUTE
            for index, eui in enumerate(BAYS + BINS):
                seq += 1
                values: dict[str, Any] = (
                    {"occupied": (step + index) % 2 == 0, "battery_mv": 3600}
                    if eui in BAYS
                    else {"fill_pct": 10 + step * 10, "battery_mv": 3500}
                )
                gateway = GATEWAYS[1] if index % 2 else GATEWAYS[2]
                store.record_batch(
                    gateway,
                    seq,
                    [
                        Reading(
                            bytes.fromhex(eui),
                            int(at),
                            values,
                            rssi_dbm=-95 - index,
                            snr_db=4.5,
                            fcnt=step,
                        )
                    ],
                    received_at=at,
                )
        # Every gateway but the first keeps reporting until now; the first went quiet at T0+1h.
        for gid in GATEWAYS[1:]:
            self.store.record_health(
                gid, self._health(gid, 99, self.now - 30), received_at=self.now - 30
            )
        self.clock.now = self.now
        AlertEvaluator(store).evaluate(self.now - 600)
        AlertEvaluator(store).evaluate(self.now)

    @staticmethod
    def _health(gid: str, step: int, at: float) -> Health:
        return Health(
            gateway_id=bytes.fromhex(gid),
            seq=step,
            time_s=int(at),
            uptime_s=1000 + step * 300,
            agent_uptime_s=900 + step * 300,
            agent_version="1.0",
            config_hash=bytes(8),
            interval_s=60,
            cpu_temp_c=45.0 + step % 5,
            radio=RadioCounters(
                received=step * 100,
                crc_ok=step * 95,
                crc_bad=step * 5,
                forwarded=step * 95,
                transmitted=step,
            ),
            backhaul_rtt_ms=40 + step,
            outbox_depth=step % 3,
        )


@pytest.fixture
def city(store: Store) -> City:
    return City(store)


def token(city: City, role: Any) -> str:
    return create_token(city.store, role=role, name=f"dash {role}")


def browser(city: City, role: Any = "operator") -> Browser:
    tab = Browser(city.api.app)
    answer = tab.login(token(city, role))
    assert answer.status_code == 303, answer.text
    return tab


def test_a_page_without_a_session_leads_to_the_login_and_back(city: City) -> None:
    tab = Browser(city.api.app)
    first = tab.get("/ui/gateways?state=offline")
    assert first.status_code == 303
    target = urlsplit(first.headers["location"])
    assert target.path == "/ui/login"
    assert parse_qs(target.query)["next"] == ["/ui/gateways?state=offline"]
    login = tab.get(first.headers["location"])
    assert 'name="token"' in login.text
    secret = token(city, "operator")
    answer = tab.post("/ui/login", {"token": secret, "next": "/ui/gateways?state=offline"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/gateways?state=offline"
    cookie = answer.headers["set-cookie"]
    assert f"{COOKIE_NAME}=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    assert secret not in cookie
    # The session row keeps neither the token nor the cookie, only hashes and the token id.
    rows = city.store.sql.query("SELECT * FROM dashboard_sessions")
    assert len(rows) == 1
    assert all(secret not in str(value) for value in rows[0].values())
    page = tab.get("/ui/gateways?state=offline")
    assert page.status_code == 200
    assert "dash operator" in page.text


def test_a_wrong_token_is_refused_with_words_and_counted(city: City) -> None:
    tab = Browser(city.api.app)
    answer = tab.login("owl_0123456789abcdef_" + "x" * 43)
    assert answer.status_code == 401
    assert "not known to this fleet" in answer.text
    malformed = tab.login("letmein")
    assert malformed.status_code == 401
    assert "starts with owl_" in malformed.text
    assert COOKIE_NAME not in tab.cookies
    stats = city.api.get("/api/v1/stats").json()
    assert stats["auth"]["refused"]["unknown"] >= 1


def test_an_address_with_too_many_failed_logins_waits(city: City) -> None:
    app = city.api.app
    assert login_limiter(app).limit == MAX_FAILED_LOGINS
    now = [1000.0]
    app.state.login_failures = FailureLimiter(limit=3, window_s=60.0, clock=lambda: now[0])
    tab = Browser(app)
    for _ in range(3):
        assert tab.login("owl_0123456789abcdef_" + "x" * 43).status_code == 401
    # Even the right token waits now; so does a login link.
    right = token(city, "operator")
    throttled = tab.login(right)
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "60"
    assert "too many failed logins from this address: wait 60 s" in throttled.text
    assert right not in throttled.text
    assert COOKIE_NAME not in tab.cookies
    assert tab.get("/ui/login?code=owc_0123456789abcdef_" + "y" * 43).status_code == 429
    assert city.api.get("/api/v1/stats").json()["auth"]["refused"]["rate_limited"] == 2
    # Once the failures have aged out the address may log in again.
    now[0] += 61.0
    assert tab.login(right).status_code == 303
    assert COOKIE_NAME in tab.cookies


def test_an_outside_next_is_not_followed(city: City) -> None:
    tab = Browser(city.api.app)
    answer = tab.post("/ui/login", {"token": token(city, "operator"), "next": "//evil.example/"})
    assert answer.headers["location"] == "/ui/"


def test_a_technician_lands_on_site_and_cannot_acknowledge(city: City) -> None:
    tab = Browser(city.api.app)
    answer = tab.login(token(city, "technician"))
    assert answer.headers["location"] == "/ui/site"
    site = tab.get("/ui/site")
    assert site.status_code == 200
    assert GATEWAYS[0] in site.text  # the offline gateway is one to visit
    alert = list_alerts(city.store, states=("open",)).items[0]
    csrf = tab.csrf("/ui/site")
    refused = tab.post(f"/ui/alerts/{alert.id}/acknowledge", {"csrf": csrf, "comment": "on my way"})
    assert refused.status_code == 403
    assert "operator" in refused.text


def test_revoking_the_token_ends_its_sessions(city: City) -> None:
    secret = token(city, "operator")
    tab = Browser(city.api.app)
    tab.login(secret)
    assert tab.get("/ui/").status_code == 200
    token_id = secret.split("_")[1]
    revoke_token(city.store, token_id, actor="test")
    assert tab.get("/ui/").status_code == 303
    # The live script's fragment requests get a 401 it can show, not a redirect.
    assert tab.get("/ui/", headers={"X-Owlgate-Fragment": "1"}).status_code == 401


def test_logout_needs_the_form_token_and_ends_the_session(city: City) -> None:
    tab = browser(city)
    assert tab.post("/ui/logout", {"csrf": "0" * 64}).status_code == 403
    csrf = tab.csrf("/ui/")
    assert tab.post("/ui/logout", {"csrf": csrf}).status_code == 303
    assert tab.get("/ui/").status_code == 303


def test_the_overview_says_what_is_wrong_and_since_when(city: City) -> None:
    tab = browser(city)
    page = tab.get("/ui/")
    assert page.status_code == 200
    html = page.text
    assert re.search(r'id="gw-offline"><strong>1</strong>', html)
    assert re.search(r'id="gw-online"><strong>9</strong>', html)
    assert "1 gateway offline" in html
    assert f'data-gateway="{GATEWAYS[0]}"' in html  # listed as needing attention
    assert "<svg" in html  # the plan and the ingest chart, drawn here
    assert re.search(r'id="sensors-reporting"><strong>7</strong>', html)
    assert "56</strong> readings stored in the last hour" in html
    timing = page.headers["server-timing"]
    assert re.fullmatch(r"app;dur=\d+(\.\d+)?", timing)
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # Nothing is loaded from elsewhere.
    assert "https://" not in html
    assert "http://" not in html


def test_a_fragment_is_the_main_element_only(city: City) -> None:
    tab = browser(city)
    fragment = tab.get("/ui/", headers={"X-Owlgate-Fragment": "1"})
    assert fragment.status_code == 200
    assert "<header" not in fragment.text
    assert fragment.text.strip().startswith('<main id="main"')


def test_the_gateway_table_sorts_and_filters(city: City) -> None:
    tab = browser(city)
    offline = tab.get("/ui/gateways?state=offline").text
    assert offline.count('data-gateway="') == 1
    assert f'data-gateway="{GATEWAYS[0]}"' in offline
    by_name = tab.get("/ui/gateways?sort=name&dir=desc").text
    order = re.findall(r'data-gateway="([0-9a-f]+)"', by_name)
    assert order == sorted(GATEWAYS, reverse=True)
    found = tab.get(f"/ui/gateways?q={GATEWAYS[3][-4:]}").text
    assert re.findall(r'data-gateway="([0-9a-f]+)"', found) == [GATEWAYS[3]]


def test_the_gateway_page_plots_its_history_and_lists_what_it_hears(city: City) -> None:
    tab = browser(city)
    page = tab.get(f"/ui/gateways/{GATEWAYS[1]}")
    assert page.status_code == 200
    html = page.text
    for title in ("Uptime", "CPU temperature", "Outbox backlog", "Backhaul round trip", "Radio"):
        assert title in html
    heard = re.findall(r'href="/ui/sensors/([0-9a-f]+)"', html)
    assert set(heard) == {eui for index, eui in enumerate(BAYS + BINS) if index % 2}
    missing = tab.get("/ui/gateways/ffffffffffffffff")
    assert missing.status_code == 404
    assert "no gateway" in missing.text


def test_the_sensor_pages_show_state_signal_and_the_right_plot(city: City) -> None:
    tab = browser(city)
    table = tab.get("/ui/sensors?type=waste-bin-v1").text
    assert set(re.findall(r'data-sensor="([0-9a-f]+)"', table)) == set(BINS)
    zone = tab.get("/ui/sensors?zone=zone-1").text
    assert set(re.findall(r'data-sensor="([0-9a-f]+)"', zone)) == {
        eui for index, eui in enumerate(BAYS + BINS) if index % 3 == 0
    }
    bin_page = tab.get(f"/ui/sensors/{BINS[0]}").text
    assert "Fill level" in bin_page
    bay_page = tab.get(f"/ui/sensors/{BAYS[0]}").text
    assert "Occupancy" in bay_page
    assert "Obernstraße" in bay_page
    assert GATEWAYS[2] in bay_page  # the gateway that hears it


def test_acknowledging_an_alert_through_the_form(city: City) -> None:
    tab = browser(city)
    alert = list_alerts(city.store, states=("open",)).items[0]
    csrf = tab.csrf("/ui/alerts")
    assert tab.post(f"/ui/alerts/{alert.id}/acknowledge", {"comment": "no csrf"}).status_code == 403
    foreign = tab.post(
        f"/ui/alerts/{alert.id}/acknowledge",
        {"csrf": csrf, "comment": "x"},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    empty = tab.post(f"/ui/alerts/{alert.id}/acknowledge", {"csrf": csrf, "comment": "  "})
    assert empty.status_code == 303
    assert "needs a comment" in parse_qs(urlsplit(empty.headers["location"]).query)["done"][0]
    done = tab.post(
        f"/ui/alerts/{alert.id}/acknowledge",
        {"csrf": csrf, "comment": "crew sent to the roof", "back": "/ui/alerts"},
    )
    assert done.status_code == 303
    assert done.headers["location"].startswith("/ui/alerts?")
    shown = city.api.get(f"/api/v1/alerts/{alert.id}").json()
    assert shown["state"] == "acknowledged"
    assert shown["acknowledged_by"] == "dash operator"
    page = tab.get(done.headers["location"]).text
    assert "crew sent to the roof" in page
    assert f"alert {alert.id} acknowledged" in page


def test_a_rollout_is_paused_resumed_and_aborted_from_its_page(city: City) -> None:
    started = city.start(target="all", canary=1, waves=[100])
    rid = started["id"]
    tab = browser(city)
    page = tab.get(f"/ui/rollouts/{rid}").text
    assert 'id="pause"' in page
    csrf = tab.csrf(f"/ui/rollouts/{rid}")
    assert tab.post(f"/ui/rollouts/{rid}/pause", {"csrf": csrf}).status_code == 303
    assert city.rollout(rid)["state"] == "paused"
    again = tab.post(f"/ui/rollouts/{rid}/pause", {"csrf": csrf})
    assert (
        "only a running one pauses"
        in parse_qs(urlsplit(again.headers["location"]).query)["done"][0]
    )
    assert tab.post(f"/ui/rollouts/{rid}/resume", {"csrf": csrf}).status_code == 303
    assert city.rollout(rid)["state"] == "running"
    assert tab.post(f"/ui/rollouts/{rid}/abort", {"csrf": csrf}).status_code == 303
    assert city.rollout(rid)["state"] == "aborted"
    listing = tab.get("/ui/rollouts").text
    assert f'data-rollout="{rid}"' in listing
    assert tab.post(f"/ui/rollouts/{rid}/explode", {"csrf": csrf}).status_code == 404


def test_no_page_shows_a_key_or_a_token(city: City) -> None:
    secret = token(city, "admin")
    tab = Browser(city.api.app)
    tab.login(secret)
    pages = [
        "/ui/",
        "/ui/gateways",
        f"/ui/gateways/{GATEWAYS[1]}",
        "/ui/sensors",
        f"/ui/sensors/{BAYS[0]}",
        "/ui/alerts",
        "/ui/alerts?show=past",
        "/ui/rollouts",
        "/ui/site?q=bay",
    ]
    for path in pages:
        answer = tab.get(path)
        assert answer.status_code == 200, (path, answer.text[:300])
        assert APP_KEY not in answer.text.lower(), path
        assert secret not in answer.text, path
        assert tab.cookies[COOKIE_NAME] not in answer.text, path


def test_a_hostile_form_gets_a_clear_refusal(city: City) -> None:
    tab = browser(city)
    alert = list_alerts(city.store, states=("open",)).items[0]
    huge = tab.post(f"/ui/alerts/{alert.id}/acknowledge", {"csrf": "x", "comment": "a" * 20_000})
    assert huge.status_code == 413
    as_json = tab.request("POST", f"/ui/alerts/{alert.id}/acknowledge", json={"comment": "json"})
    assert as_json.status_code == 415
    search = tab.get("/ui/sensors?q=%3Cscript%3Ealert(1)%3C/script%3E")
    assert search.status_code == 200
    assert "<script>alert(1)" not in search.text


def test_a_bearer_client_reads_pages_too(city: City) -> None:
    answer = city.api.get("/ui/")
    assert answer.status_code == 200
    assert "Right now" in answer.text
    assert city.api.as_role(None).get("/ui/").status_code == 303
