"""Fixtures for the dashboard's browser tests: Debian's Chromium driven by Playwright, and one
fleet for the module (``owlgate fleet serve`` as a child process, with its embedded broker)
fed over MQTT by an emulated district (:mod:`owlgate.hil.ops_district`, in a thread).

Playwright's sync API must not run inside an asyncio loop: the fleet lives in its own
process and the district's loop in its own thread, so a test itself is plain blocking code.

Every ``page``, ``phone_page`` and ``technician_page`` leaves a full-page screenshot in
``artifacts/ui/<test name>[-<fixture>].png`` at teardown, passed or failed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    StorageState,
    sync_playwright,
)

from owlgate.hil.ops_district import OpsDistrict
from owlgate.hil.processes import MODULE, ChildProcess
from tests.conftest import REPO, require_binary

ARTIFACTS: Final = REPO / "artifacts" / "ui"
CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
GATEWAYS: Final = 6
PROFILES: Final = "parking-v1=8,waste-bin-v1=4,environment-v1=3"
#: The district's heartbeat and the alert evaluation, seconds: short, so that a gateway cut
#: off is offline and alerted within seconds. The alerts file takes any interval above 0;
#: below a second would only load the fleet.
HEARTBEAT_S: Final = 2
EVALUATION_S: Final = 1.0
TELEMETRY_S: Final = 3.0
#: How long the fleet may take for a gateway cut off to show: two heartbeats and an
#: evaluation, plus a margin for a loaded two-core CI machine.
DETECTION_S: Final = 2 * HEARTBEAT_S + EVALUATION_S + 10.0
#: Dashboard pages other than the overview poll every 10 s (fleet/dashboard/pages.py).
PAGE_REFRESH_S: Final = 10.0
#: Playwright's own waits (``expect``): generous, for a loaded CI machine.
UI_TIMEOUT_MS: Final = 30_000
READY_TIMEOUT_S: Final = 60.0
ROLES: Final = ("operator", "technician")


def _owlgate(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", MODULE, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"owlgate {' '.join(args[:2])} failed:\n{done.stderr}{done.stdout}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class OpsFleet:
    """The module's fleet: where it serves, its database, tokens and district."""

    url: str
    mqtt_url: str
    db: Path
    folder: Path
    district: OpsDistrict
    token_files: dict[str, Path]
    admin: httpx.Client
    #: Gateway ids, sorted; names are ``gateway-1`` ... in the order the seed made them.
    gateways: list[str]
    names: dict[str, str]
    sensors: list[str]

    def login_link(self, role: str) -> str:
        """A one-time dashboard login link with the token of ``role``."""
        out = _owlgate(
            "fleet", "ui-link", "--db", str(self.db),
            "--token-file", str(self.token_files[role]), "--url", self.url,
        )  # fmt: skip
        return out.strip().splitlines()[-1]

    def api(self, path: str, **params: Any) -> Any:
        answer = self.admin.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()


def wait_for(check: Callable[[], object], what: str, timeout_s: float = READY_TIMEOUT_S) -> Any:
    """Poll ``check`` until it returns something true, and return that; fail naming ``what``
    after ``timeout_s``. For the fleet to get somewhere before a page is opened, not to
    judge how fast it got there."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.25)


def _reporting(admin: httpx.Client, gateways: list[str]) -> bool:
    """Whether the fleet has every gateway online and has stored readings."""
    states = {admin.get(f"/api/v1/gateways/{gid}").json()["health"]["state"] for gid in gateways}
    stored = admin.get("/api/v1/stats").json()["ingest"]["readings_stored"]
    return states == {"online"} and stored > 0


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium; skipped without it, failed under CI=true (.ci/run installs it)."""
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    return require_binary("chromium", "install Debian's chromium (apt-get install chromium)")


# Package scope, not session: while Playwright's sync API runs, the thread's asyncio loop is
# marked running, so asyncio.run() in any other test fails. The driver must stop when the
# last browser test is done, whatever runs after it (or beside it, in another file of the
# same worker).
@pytest.fixture(scope="package")
def playwright_driver() -> Iterator[Playwright]:
    driver = sync_playwright().start()
    try:
        yield driver
    finally:
        driver.stop()


@pytest.fixture(scope="package")
def browser(playwright_driver: Playwright, chromium_path: str) -> Iterator[Browser]:
    launched = playwright_driver.chromium.launch(
        executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture(scope="module")
def ops_fleet(tmp_path_factory: pytest.TempPathFactory, chromium_path: str) -> Iterator[OpsFleet]:
    """A seeded fleet served on free ports, its district connected and publishing."""
    folder = tmp_path_factory.mktemp("ops-fleet")
    db = folder / "fleet.db"
    _owlgate("fleet", "seed", "--db", str(db), "--gateways", str(GATEWAYS),
             "--profiles", PROFILES, "--seed", "7")  # fmt: skip
    manifest = json.loads((folder / "emulator-secrets.json").read_text())
    token_files = {}
    for role in ROLES:
        token_files[role] = folder / f"{role}-token"
        _owlgate("fleet", "token", "create", "--db", str(db), "--role", role,
                 "--name", f"ops {role}", "--out", str(token_files[role]))  # fmt: skip
    alerts = folder / "alerts.toml"
    alerts.write_text(f"interval_s = {EVALUATION_S}\n")
    serve = ["fleet", "serve", "--db", str(db), "--http-port", "0", "--alerts-config",
             str(alerts), "--signing-key", manifest["fleet_signing_key"]]  # fmt: skip
    fleet = ChildProcess("fleet", serve, folder / "fleet.log")
    try:
        mqtt_url = fleet.expect(r"MQTT broker: (mqtt://\S+)").group(1)
        url = fleet.expect(r"Uvicorn running on (http://\S+)").group(1)
        host, port = urlsplit(mqtt_url).hostname, urlsplit(mqtt_url).port
        assert host is not None, mqtt_url
        assert port is not None, mqtt_url
        admin_token = (folder / "admin-token").read_text().strip()
        admin = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30.0
        )
        ids = sorted(g["id"] for g in manifest["gateways"])
        # The first gateway by id takes its configuration documents and never answers, so a
        # rollout that includes it stays running (tests/ui/test_dashboard_browser.py).
        district = OpsDistrict(
            folder / "emulator-secrets.json",
            host,
            port,
            health_interval_s=HEARTBEAT_S,
            telemetry_interval_s=TELEMETRY_S,
            unanswered=[ids[0]],
        )
        with admin, district:
            wait_for(lambda: _reporting(admin, ids), "every gateway online, readings stored")
            yield OpsFleet(
                url=url,
                mqtt_url=mqtt_url,
                db=db,
                folder=folder,
                district=district,
                token_files=token_files,
                admin=admin,
                gateways=ids,
                names={g["id"]: f"gateway-{n + 1}" for n, g in enumerate(manifest["gateways"])},
                sensors=[d["dev_eui"] for d in manifest["devices"]],
            )
    finally:
        fleet.stop()


def _screenshot_name(request: pytest.FixtureRequest, suffix: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    return ARTIFACTS / f"{name}{suffix}.png"


@pytest.fixture(scope="module")
def sessions(browser: Browser, ops_fleet: OpsFleet) -> dict[str, StorageState]:
    """A dashboard session per role, opened once through its one-time login link; each
    test's tab starts with that session's cookie (a login link works only once)."""
    out: dict[str, StorageState] = {}
    for role in ROLES:
        context = browser.new_context(base_url=ops_fleet.url)
        try:
            tab = context.new_page()
            tab.goto(ops_fleet.login_link(role))
            landing = "/ui/site" if role == "technician" else "/ui/"
            assert urlsplit(tab.url).path == landing, (role, tab.url)
            out[role] = context.storage_state()
        finally:
            context.close()
    return out


def _page(
    browser: Browser,
    request: pytest.FixtureRequest,
    ops_fleet: OpsFleet,
    session: StorageState,
    suffix: str,
    **context: Any,
) -> Iterator[Page]:
    opened: BrowserContext = browser.new_context(
        base_url=ops_fleet.url, storage_state=session, **context
    )
    opened.set_default_timeout(UI_TIMEOUT_MS)
    tab = opened.new_page()
    try:
        yield tab
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            tab.screenshot(path=str(_screenshot_name(request, suffix)), full_page=True)
        finally:
            opened.close()


@pytest.fixture
def page(
    browser: Browser,
    request: pytest.FixtureRequest,
    ops_fleet: OpsFleet,
    sessions: dict[str, StorageState],
) -> Iterator[Page]:
    """A desktop browser tab (1366 x 768) logged in as an operator."""
    yield from _page(
        browser,
        request,
        ops_fleet,
        sessions["operator"],
        "",
        viewport={"width": 1366, "height": 768},
    )


@pytest.fixture
def technician_page(
    browser: Browser,
    request: pytest.FixtureRequest,
    ops_fleet: OpsFleet,
    sessions: dict[str, StorageState],
) -> Iterator[Page]:
    """A desktop browser tab logged in as a technician."""
    yield from _page(
        browser,
        request,
        ops_fleet,
        sessions["technician"],
        "-technician",
        viewport={"width": 1366, "height": 768},
    )


@pytest.fixture
def phone_page(
    browser: Browser,
    request: pytest.FixtureRequest,
    ops_fleet: OpsFleet,
    sessions: dict[str, StorageState],
) -> Iterator[Page]:
    """A phone-sized tab (390 x 844, touch) logged in as an operator."""
    yield from _page(
        browser,
        request,
        ops_fleet,
        sessions["operator"],
        "-phone",
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
    )
