"""The dashboard's pages: server-rendered HTML from the fleet's FastAPI app, under ``/ui/``.

Every page is a plain HTML document that works without script: tables sort and filter
through links and query parameters, actions are forms. A small script of our own
(``static/live.js``) makes the pages live: it re-fetches the page every few seconds as a
fragment (``X-Owlgate-Fragment: 1``: the ``<main>`` element only), swaps it in and shows the
time of the last update, or how long the fleet has not answered. Charts are inline SVG drawn
here (:mod:`.charts`); nothing is loaded from anywhere but the fleet server, and the Content
Security Policy says so to the browser.

Who sees what: the same tokens and roles as the API. A browser logs in with a token once
(:mod:`.sessions`); a client may send ``Authorization: Bearer`` instead. Every role reads;
``operator`` (and ``admin``) acknowledge alerts and steer rollouts, as in the API; a
``technician`` lands on the on-site page. No page shows a key or a token: the store hands the
pages no secret to show.

Each response says how long the server took to build it (``Server-Timing: app;dur=<ms>``),
which ``owlgate bench`` reads for ``ui.overview_ms``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from ..alerts import Alert, acknowledge, get_alert, list_alerts
from ..auth import (
    AuthError,
    FailureLimiter,
    Principal,
    Role,
    admit,
    auth_stats,
    failure_limiter,
)
from ..health import HealthThresholds
from ..rollouts import change_rollout
from ..store import ConflictError, FleetError, InvalidError, NotFoundError, Store
from . import charts, data
from .sessions import (
    COOKIE_NAME,
    MAX_AGE_S,
    csrf_matches,
    end_session,
    redeem_login_link,
    session_of,
    start_session,
)

log = logging.getLogger(__name__)

PREFIX: Final = "/ui"
HERE: Final = Path(__file__).parent
#: Seconds between live updates of a page (the overview faster: it is the wall screen).
REFRESH_S: Final = 10
OVERVIEW_REFRESH_S: Final = 5
#: Shown for a value that is not known (an en dash, as tables print it).
NO_VALUE: Final = "\N{EN DASH}"
#: The biggest form body accepted (a comment is at most 2,000 characters).
MAX_FORM_BYTES: Final = 16_384
READERS: Final[tuple[Role, ...]] = ("operator", "technician")
#: Who acknowledges alerts and steers rollouts: as the API's routes admit.
ACTORS: Final[tuple[Role, ...]] = ("operator",)
CSP: Final = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
    " connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


class LoginNeeded(Exception):
    """The request has no valid session or token: send the browser to the login page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking: their principal, and for a browser session its CSRF token."""

    principal: Principal
    csrf: str | None
    session_id: str | None

    @property
    def can_act(self) -> bool:
        return self.principal.role in ("admin", *ACTORS)


# --- formatting --------------------------------------------------------------------------------


def _utc(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def duration(seconds: float | None) -> str:
    """A span in words a person reads at a glance: ``45 s``, ``12 min``, ``3 h 5 min``."""
    if seconds is None or not math.isfinite(seconds):
        return NO_VALUE
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        hours, minutes = divmod(s // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(s // 3600, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.filters["iso"] = _iso
    env.filters["duration"] = duration
    env.filters["pct"] = lambda v: NO_VALUE if v is None else f"{v * 100:.1f} %"
    env.filters["num"] = lambda v, digits=0: NO_VALUE if v is None else f"{v:,.{digits}f}"
    return env


ENV: Final = _environment()


def _url(path: str, query: Mapping[str, object]) -> str:
    kept = {k: v for k, v in query.items() if v not in (None, "", False)}
    return f"{path}?{urlencode(kept)}" if kept else path


# --- the app's parts ---------------------------------------------------------------------------


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _now(request: Request) -> float:
    clock: Callable[[], float] = getattr(request.app.state, "clock", time.time)
    return float(clock())


def _limits(request: Request) -> HealthThresholds:
    found = getattr(request.app.state, "thresholds", None)
    return found if isinstance(found, HealthThresholds) else HealthThresholds()


def viewer_of(request: Request, roles: tuple[Role, ...] = READERS) -> Viewer:
    """The caller: a bearer token (checked by the API's own :func:`admit`) or a session
    cookie. :class:`LoginNeeded` without either, AuthError (403) for a role not admitted."""
    header = request.headers.get("authorization", "")
    admitted: tuple[Role, ...] = ("admin", *roles)
    if header.lower().startswith("bearer "):
        principal = admit(request, header[7:].strip(), admitted)
        return Viewer(principal, None, None)
    cookie = request.cookies.get(COOKIE_NAME)
    stats = auth_stats(request.app)
    if not cookie:
        stats.count_refusal("missing")
        raise LoginNeeded("")
    try:
        session = session_of(_store(request), cookie, now=_now(request))
    except AuthError as err:
        stats.count_refusal(err.reason)
        log.info("dashboard: refused %s %s: %s", request.method, request.url.path, err.reason)
        raise LoginNeeded(err.message) from err
    if session.principal.role not in admitted:
        stats.count_refusal("forbidden")
        raise _Refused(
            403,
            f"this needs the role {' or '.join(admitted)}; you are logged in as"
            f" {session.principal.role}",
        )
    stats.count_admitted()
    request.state.owlgate_principal = session.principal
    return Viewer(session.principal, session.csrf, session.id)


class _Refused(Exception):
    """A request the dashboard answers with an error page (status and words)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def render(
    request: Request,
    template: str,
    viewer: Viewer | None,
    *,
    title: str,
    started: float,
    status: int = 200,
    refresh_s: int | None = REFRESH_S,
    **context: Any,
) -> HTMLResponse:
    """The page (or, asked for by the live script, only its ``<main>``), with the time it
    took in ``Server-Timing``."""
    fragment = request.headers.get("x-owlgate-fragment") == "1"
    now = _now(request)
    html = ENV.get_template(template).render(
        title=title,
        viewer=viewer,
        fragment=fragment,
        now=now,
        refresh_s=refresh_s,
        path=request.url.path,
        full_path=_url(request.url.path, dict(request.query_params)),
        url=_url,
        quote=quote,
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    _secure(response)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    response.headers["Server-Timing"] = f"app;dur={elapsed_ms:.1f}"
    return response


def _secure(response: Response) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form body (at most :data:`MAX_FORM_BYTES`), one value per field."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise _Refused(415, "send the form as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _Refused(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as err:
        raise _Refused(400, "the form is not UTF-8") from err
    return {key: values[0] for key, values in fields.items() if values}


def _same_origin(request: Request) -> None:
    """A form posted from a page of another origin is refused (with SameSite=Strict the
    cookie would not come along anyway; this also covers bearer clients' browsers)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return
    if urlsplit(origin).netloc != request.headers.get("host", ""):
        raise _Refused(403, "a form from another site was refused")


def _check_csrf(viewer: Viewer, form: Mapping[str, str]) -> None:
    if viewer.session_id is None:
        return  # a bearer client: no cookie, so nothing another site could ride on
    from .sessions import Session

    session = Session(viewer.session_id, viewer.principal, viewer.csrf or "")
    if not csrf_matches(session, form.get("csrf")):
        raise _Refused(403, "this form has expired: reload the page and try again")


def _safe_next(target: str | None) -> str:
    """Where to go after login: a dashboard path of this server, nothing else."""
    if (
        target
        and target.startswith(PREFIX + "/")
        and not any(bad in target for bad in ("\\", "\n", "\r", "//"))
    ):
        return target
    return PREFIX + "/"


def _landing(principal: Principal) -> str:
    return f"{PREFIX}/site" if principal.role == "technician" else f"{PREFIX}/"


def _hours(request: Request) -> int:
    try:
        hours = int(request.query_params.get("hours", data.DEFAULT_HOURS))
    except ValueError:
        return data.DEFAULT_HOURS
    return hours if hours in data.HOUR_CHOICES else data.DEFAULT_HOURS


def _page_number(request: Request) -> int:
    text = request.query_params.get("page", "1")
    return int(text) if text.isascii() and text.isdigit() and 0 < len(text) < 7 else 1


# --- charts of a page ----------------------------------------------------------------------------


def _series_points(
    samples: list[data.HealthSample], name: str, scale: float = 1.0
) -> list[tuple[float, float | None]]:
    return [
        (s.at, None if s.values.get(name) is None else float(s.values[name] or 0) * scale)
        for s in samples
    ]


def _rates(samples: list[data.HealthSample], name: str) -> list[tuple[float, float | None]]:
    """A cumulative counter as frames per minute between messages; a fall (the agent
    restarted) is a gap, not a negative rate."""
    points: list[tuple[float, float | None]] = []
    for before, after in itertools.pairwise(samples):
        a, b = before.values.get(name), after.values.get(name)
        span = after.at - before.at
        if a is None or b is None or span <= 0 or b < a:
            points.append((after.at, None))
        else:
            points.append((after.at, (b - a) * 60.0 / span))
    return points


def gateway_charts(detail: data.GatewayDetail, start: float, end: float) -> list[Markup]:
    history = detail.history
    gid = detail.row.id
    return [
        charts.line_chart(
            [charts.Series("uptime", _series_points(history, "uptime_s", 1 / 3600), "series-0")],
            title="Uptime",
            unit="h",
            start=start,
            end=end,
            y_min=0,
            id_prefix=f"gw{gid}-up",
        ),
        charts.line_chart(
            [charts.Series("CPU", _series_points(history, "cpu_temp_c"), "series-1")],
            title="CPU temperature",
            unit="°C",
            start=start,
            end=end,
            id_prefix=f"gw{gid}-temp",
        ),
        charts.line_chart(
            [charts.Series("outbox", _series_points(history, "outbox_depth"), "series-2")],
            title="Outbox backlog",
            unit="entries",
            start=start,
            end=end,
            y_min=0,
            id_prefix=f"gw{gid}-backlog",
        ),
        charts.line_chart(
            [charts.Series("RTT", _series_points(history, "backhaul_rtt_ms"), "series-3")],
            title="Backhaul round trip",
            unit="ms",
            start=start,
            end=end,
            y_min=0,
            id_prefix=f"gw{gid}-rtt",
        ),
        charts.line_chart(
            [
                charts.Series("received", _rates(history, "radio_received"), "series-0"),
                charts.Series("CRC ok", _rates(history, "radio_crc_ok"), "series-1"),
                charts.Series("CRC bad", _rates(history, "radio_crc_bad"), "series-4"),
            ],
            title="Radio packets",
            unit="per min",
            start=start,
            end=end,
            y_min=0,
            id_prefix=f"gw{gid}-radio",
        ),
    ]


#: Values of a reading that are not worth a chart of their own on a sensor page.
_NOT_PLOTTED: Final = frozenset({"occupied", "fill_pct", "battery_mv", "status", "boot"})


def sensor_charts(detail: data.SensorDetail, start: float, end: float) -> list[Markup]:
    readings = detail.readings
    eui = detail.device.dev_eui
    found: list[Markup] = []
    if any("fill_pct" in values for _, values in readings):
        found.append(
            charts.line_chart(
                [
                    charts.Series(
                        "fill",
                        [(t, _as_float(v.get("fill_pct"))) for t, v in readings if "fill_pct" in v],
                        "series-0",
                    )
                ],
                title="Fill level",
                unit="%",
                start=start,
                end=end,
                y_min=0,
                y_max=100,
                id_prefix=f"s{eui}-fill",
            )
        )
    if any("occupied" in values for _, values in readings):
        found.append(
            charts.step_timeline(
                [(t, _as_bool(v.get("occupied"))) for t, v in readings if "occupied" in v],
                title="Occupancy",
                start=start,
                end=end,
                on_label="occupied",
                off_label="free",
                id_prefix=f"s{eui}-occ",
            )
        )
    names = sorted(
        {
            name
            for _, values in readings
            for name, value in values.items()
            if name not in _NOT_PLOTTED and _as_float(value) is not None
        }
    )
    for index, name in enumerate(names[:4]):
        found.append(
            charts.line_chart(
                [
                    charts.Series(
                        name,
                        [(t, _as_float(v.get(name))) for t, v in readings if name in v],
                        f"series-{index % 5}",
                    )
                ],
                title=name.replace("_", " "),
                unit="",
                start=start,
                end=end,
                id_prefix=f"s{eui}-{index}",
            )
        )
    if any("battery_mv" in values for _, values in readings):
        found.append(
            charts.line_chart(
                [
                    charts.Series(
                        "battery",
                        [(t, _as_float(v.get("battery_mv"))) for t, v in readings],
                        "series-2",
                    )
                ],
                title="Battery",
                unit="mV",
                start=start,
                end=end,
                id_prefix=f"s{eui}-batt",
            )
        )
    return found


def _as_float(value: object) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _as_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    return None


def plan_chart(overview: data.Overview) -> Markup:
    gateways = [
        charts.PlanGateway(
            id=row.id,
            name=row.name or row.id,
            lat=row.lat,
            lon=row.lon,
            state=row.state,
            href=f"{PREFIX}/gateways/{row.id}",
        )
        for row in overview.gateways
        if row.lat is not None and row.lon is not None
    ]
    cells = [
        charts.PlanCell(
            lat0=c.lat0, lon0=c.lon0, lat1=c.lat1, lon1=c.lon1, count=c.count, silent=c.silent
        )
        for c in overview.cells
    ]
    return charts.plan(
        gateways, cells, title="Where the gateways and sensors are", width=720, height=460
    )


# --- the routes --------------------------------------------------------------------------------


#: Failed logins (a token or a login link refused) one address may make in
#: :data:`LOGIN_WINDOW_S` before its logins are refused with 429 until the window has passed.
#: Tokens and links are 256-bit random, so this is not what keeps them from being guessed: it
#: keeps a client that tries and tries from filling the log and the database's time.
MAX_FAILED_LOGINS: Final = 10
LOGIN_WINDOW_S: Final = 300.0


def login_limiter(app: Any) -> FailureLimiter:
    """The app's failed-login counts by client address (created on first use)."""
    return failure_limiter(app, "login_failures", limit=MAX_FAILED_LOGINS, window_s=LOGIN_WINDOW_S)


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _login_page(
    request: Request, started: float, target: str | None, *, status: int = 200,
    error: str | None = None,
) -> HTMLResponse:  # fmt: skip
    """The login page, with ``error`` said above the form."""
    return render(
        request,
        "login.html",
        None,
        title="Log in",
        started=started,
        status=status,
        refresh_s=None,
        next=_safe_next(target),
        error=error,
    )


def _login_refused(
    request: Request, started: float, target: str | None, err: AuthError, what: str, error: str
) -> HTMLResponse:
    """A refused token or login link (``what``): counted for the address and by reason,
    logged, and the login page again with ``error``."""
    login_limiter(request.app).failed(_address(request))
    auth_stats(request.app).count_refusal(err.reason)
    log.info("dashboard %s refused: %s", what, err.reason)
    return _login_page(request, started, target, status=401, error=error)


def _login_throttled(request: Request, started: float, target: str | None) -> Response | None:
    """The 429 login page for an address with too many failed logins just now, else None."""
    address = _address(request)
    wait = login_limiter(request.app).wait_s(address)
    if wait <= 0:
        return None
    auth_stats(request.app).count_refusal("rate_limited")
    log.warning("dashboard logins from %s refused for %.0f s: too many failed", address, wait)
    answer = _login_page(
        request,
        started,
        target,
        status=429,
        error=f"too many failed logins from this address: wait {wait:.0f} s, then log in"
        " with a token from an admin (owlgate fleet token create)",
    )
    answer.headers["Retry-After"] = str(max(1, round(wait)))
    return answer


def router() -> APIRouter:
    """The dashboard's routes (not in the OpenAPI document: they answer HTML)."""
    routes = APIRouter(prefix=PREFIX, include_in_schema=False)

    @routes.get("/login")
    def login_page(request: Request, next: str | None = None, code: str | None = None) -> Response:
        started = time.perf_counter()
        if code:
            throttled = _login_throttled(request, started, next)
            if throttled is not None:
                return throttled
            try:
                cookie_value, opened = redeem_login_link(_store(request), code, now=_now(request))
            except AuthError as err:
                return _login_refused(request, started, next, err, "login link", err.message)
            auth_stats(request.app).count_admitted()
            return _signed_in(request, cookie_value, next or _landing(opened.principal))
        cookie = request.cookies.get(COOKIE_NAME)
        session = None
        if cookie:
            try:
                session = session_of(_store(request), cookie, now=_now(request))
            except AuthError as err:
                log.info("dashboard: the login page was opened with a stale session: %s", err)
        if session is not None:
            return RedirectResponse(_safe_next(next) if next else _landing(session.principal), 303)
        return _login_page(request, started, next)

    @routes.post("/login")
    async def login(request: Request) -> Response:
        started = time.perf_counter()
        _same_origin(request)
        form = await _form(request)
        token = form.get("token", "")
        target = form.get("next")
        throttled = _login_throttled(request, started, target)
        if throttled is not None:
            return throttled
        store, now = _store(request), _now(request)
        try:
            cookie, session = await run_in_threadpool(start_session, store, token, now=now)
        except AuthError as err:
            error = err.message
            if err.reason == "malformed":
                error = (
                    "that is not an owlgate token: it starts with owl_ (ask an admin for one:"
                    " owlgate fleet token create --role operator)"
                )
            return _login_refused(request, started, target, err, "login", error)
        auth_stats(request.app).count_admitted()
        return _signed_in(request, cookie, target or _landing(session.principal))

    @routes.post("/logout")
    async def logout(request: Request) -> Response:
        _same_origin(request)
        form = await _form(request)
        viewer = await run_in_threadpool(viewer_of, request)
        _check_csrf(viewer, form)
        if viewer.session_id is not None:
            await run_in_threadpool(
                end_session, _store(request), viewer.session_id, now=_now(request)
            )
        answer = RedirectResponse(f"{PREFIX}/login", 303)
        answer.delete_cookie(COOKIE_NAME, path="/")
        return answer

    @routes.get("/")
    def overview_page(request: Request) -> Response:
        started = time.perf_counter()
        viewer = viewer_of(request)
        now = _now(request)
        found = data.overview(_store(request), now, _limits(request))
        ingest = charts.bar_chart(
            found.ingest,
            title="Readings stored per minute, last hour",
            unit="readings",
            start=now - 3600.0,
            end=now,
            bar_seconds=60,
            id_prefix="ingest",
        )
        return render(
            request,
            "overview.html",
            viewer,
            title="Overview",
            started=started,
            refresh_s=OVERVIEW_REFRESH_S,
            o=found,
            plan=plan_chart(found),
            ingest=ingest,
            problems=[row for row in found.gateways if row.state in ("offline", "degraded")],
        )

    @routes.get("/gateways")
    def gateways_page(request: Request) -> Response:
        started = time.perf_counter()
        viewer = viewer_of(request)
        query = request.query_params
        sort = query.get("sort", "state")
        if sort not in data.GATEWAY_SORTS:
            sort = "state"
        descending = query.get("dir", "asc") == "desc"
        state = query.get("state") or None
        if state not in (None, *data.GATEWAY_STATES):
            state = None
        rows = data.gateway_rows(_store(request), _now(request), _limits(request))
        shown = data.sort_gateways(
            data.filter_gateways(rows, state=state, text=query.get("q")),
            sort,  # type: ignore[arg-type]
            descending,
        )
        pages = max(1, math.ceil(len(shown) / data.PAGE_SIZE))
        page = min(_page_number(request), pages)
        return render(
            request,
            "gateways.html",
            viewer,
            title="Gateways",
            started=started,
            rows=shown[(page - 1) * data.PAGE_SIZE : page * data.PAGE_SIZE],
            total=len(rows),
            matching=len(shown),
            page=page,
            pages=pages,
            sort=sort,
            descending=descending,
            state=state,
            q=query.get("q", ""),
            states=data.GATEWAY_STATES,
        )

    @routes.get("/gateways/{gateway_id}")
    def gateway_page(request: Request, gateway_id: str) -> Response:
        started = time.perf_counter()
        viewer = viewer_of(request)
        now = _now(request)
        hours = _hours(request)
        detail = _found(
            lambda: data.gateway_detail(_store(request), gateway_id, now, _limits(request), hours)
        )
        return render(
            request,
            "gateway.html",
            viewer,
            title=f"Gateway {detail.row.name or detail.row.id}",
            started=started,
            d=detail,
            hours=hours,
            hour_choices=data.HOUR_CHOICES,
            plots=gateway_charts(detail, now - hours * 3600.0, now),
        )

    @routes.get("/sensors")
    def sensors_page(request: Request) -> Response:
        started = time.perf_counter()
        viewer = viewer_of(request)
        query = request.query_params
        sort = query.get("sort", "silent_for")
        if sort not in data.SENSOR_SORTS:
            sort = "silent_for"
        state = query.get("state") or None
        if state not in (None, *data.SENSOR_STATES):
            state = None
        found = data.sensor_page(
            _store(request),
            profile=query.get("type") or None,
            zone=query.get("zone") or None,
            state=state,
            text=query.get("q"),
            sort=sort,  # type: ignore[arg-type]
            descending=query.get("dir", "desc") == "desc",
            page=_page_number(request),
        )
        return render(
            request,
            "sensors.html",
            viewer,
            title="Sensors",
            started=started,
            s=found,
            sort=sort,
            descending=query.get("dir", "desc") == "desc",
            state=state,
            profile=query.get("type", ""),
            zone=query.get("zone", ""),
            q=query.get("q", ""),
            states=data.SENSOR_STATES,
        )

    @routes.get("/sensors/{dev_eui}")
    def sensor_page(request: Request, dev_eui: str) -> Response:
        started = time.perf_counter()
        viewer = viewer_of(request)
        now = _now(request)
        hours = _hours(request)
        detail = _found(lambda: data.sensor_detail(_store(request), dev_eui, now, hours))
        return render(
            request,
            "sensor.html",
            viewer,
            title=f"Sensor {detail.device.name or detail.device.dev_eui}",
            started=started,
            d=detail,
            hours=hours,
            hour_choices=data.HOUR_CHOICES,
            plots=sensor_charts(detail, now - hours * 3600.0, now),
            signal=signal_quality(detail.row.rssi_dbm, detail.row.snr_db),
        )

    @routes.get("/alerts")
    def alerts_page(request: Request) -> Response:
        started = time.perf_counter()
        viewer = viewer_of(request)
        query = request.query_params
        which = query.get("show", "open")
        states: tuple[Any, ...] = ("resolved",) if which == "past" else ("open", "acknowledged")
        severity = query.get("severity") or None
        if severity not in (None, *data.SEVERITY_ORDER):
            severity = None
        after = query.get("after") or None
        page = _found(
            lambda: list_alerts(
                _store(request),
                states=states,
                severities=[s for s in data.SEVERITY_ORDER if s == severity],
                limit=100,
                after=after,
            )
        )
        items = page.items
        if which != "past":
            rank = {s: i for i, s in enumerate(data.SEVERITY_ORDER)}
            items = sorted(
                items, key=lambda a: (rank.get(a.severity, 9), a.state != "open", a.opened_at)
            )
        return render(
            request,
            "alerts.html",
            viewer,
            title="Alerts",
            started=started,
            alerts=items,
            next=page.next,
            show="past" if which == "past" else "open",
            severity=severity,
            severities=data.SEVERITY_ORDER,
            message=query.get("done"),
        )

    @routes.get("/alerts/{alert_id}")
    def alert_page(request: Request, alert_id: int) -> Response:
        started = time.perf_counter()
        viewer = viewer_of(request)
        alert = _found(lambda: get_alert(_store(request), alert_id))
        return render(
            request,
            "alert.html",
            viewer,
            title=f"Alert {alert.id}",
            started=started,
            a=alert,
            message=request.query_params.get("done"),
        )

    @routes.post("/alerts/{alert_id}/acknowledge")
    async def acknowledge_alert(request: Request, alert_id: int) -> Response:
        _same_origin(request)
        form = await _form(request)
        viewer = await run_in_threadpool(viewer_of, request, ACTORS)
        _check_csrf(viewer, form)
        comment = form.get("comment", "")
        back = _safe_next(form.get("back")) if form.get("back") else f"{PREFIX}/alerts/{alert_id}"

        def run() -> Alert:
            return acknowledge(
                _store(request),
                alert_id,
                actor=viewer.principal,
                comment=comment,
                at=_now(request),
            )

        try:
            await run_in_threadpool(run)
        except (InvalidError, ConflictError) as err:
            return _back(back, str(err))
        return _back(back, f"alert {alert_id} acknowledged")

    @routes.get("/rollouts")
    def rollouts_page(request: Request) -> Response:
        started = time.perf_counter()
        viewer = viewer_of(request)
        return render(
            request,
            "rollouts.html",
            viewer,
            title="Rollouts",
            started=started,
            items=data.rollout_list(_store(request)),
            bar=_rollout_bar,
        )

    @routes.get("/rollouts/{rollout_id}")
    def rollout_page(request: Request, rollout_id: int) -> Response:
        started = time.perf_counter()
        viewer = viewer_of(request)
        after = request.query_params.get("after") or None
        summary, gateways, following = _found(
            lambda: data.rollout_detail(_store(request), rollout_id, after)
        )
        return render(
            request,
            "rollout.html",
            viewer,
            title=f"Rollout {rollout_id}",
            started=started,
            r=summary,
            gateways=gateways,
            next=following,
            bar=_rollout_bar,
            message=request.query_params.get("done"),
        )

    @routes.post("/rollouts/{rollout_id}/{action}")
    async def steer_rollout(request: Request, rollout_id: int, action: str) -> Response:
        if action not in ("pause", "resume", "abort"):
            raise _Refused(404, f"a rollout can be paused, resumed or aborted, not {action!r}")
        _same_origin(request)
        form = await _form(request)
        viewer = await run_in_threadpool(viewer_of, request, ACTORS)
        _check_csrf(viewer, form)
        back = f"{PREFIX}/rollouts/{rollout_id}"

        def run() -> str:
            return change_rollout(
                _store(request).sql,
                rollout_id,
                action,  # type: ignore[arg-type]
                actor=viewer.principal,
                now=_now(request),
            )

        try:
            state = await run_in_threadpool(run)
        except ConflictError as err:
            return _back(back, str(err))
        except NotFoundError as err:
            raise _Refused(404, str(err)) from err
        return _back(back, f"rollout {rollout_id} is now {state}")

    @routes.get("/site")
    def site_page(request: Request) -> Response:
        started = time.perf_counter()
        viewer = viewer_of(request)
        q = request.query_params.get("q", "").strip()
        store, now = _store(request), _now(request)
        rows = data.gateway_rows(store, now, _limits(request))
        visits = [row for row in rows if row.state in ("offline", "degraded")]
        found = data.sensor_page(store, text=q).rows[:20] if q else []
        silent = data.sensor_page(store, state="silent", sort="zone", descending=False)
        low = data.sensor_page(store, state="low_battery", sort="battery", descending=False)
        return render(
            request,
            "site.html",
            viewer,
            title="On site",
            started=started,
            q=q,
            found_gateways=data.filter_gateways(rows, state=None, text=q)[:20] if q else [],
            found_sensors=found,
            visits=sorted(visits, key=lambda r: (r.zone or "", r.id)),
            silent=silent,
            low=low,
        )

    return routes


def _signed_in(request: Request, cookie: str, target: str) -> Response:
    """Off to ``target`` (a dashboard path, else the overview) with the session cookie."""
    answer = RedirectResponse(_safe_next(target), 303)
    answer.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=int(MAX_AGE_S),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    _secure(answer)
    return answer


def _rollout_bar(counts: Mapping[str, int], total: int, label: str) -> Markup:
    parts = [
        ("applied", counts.get("applied", 0), "part-ok"),
        ("received", counts.get("received", 0), "part-busy"),
        ("sent", counts.get("sent", 0), "part-busy"),
        (
            "failed",
            sum(counts.get(s, 0) for s in ("rejected", "rolled_back", "timed_out")),
            "part-bad",
        ),
        ("waiting", counts.get("pending", 0) + counts.get("waiting", 0), "part-idle"),
        ("cancelled", counts.get("cancelled", 0), "part-idle"),
    ]
    return charts.progress_bar([p for p in parts if p[1]], total=max(total, 1), label=label)


def signal_quality(rssi: int | None, snr: float | None) -> str:
    """The radio link in a technician's words, from the newest reception's RSSI and SNR
    (LoRa demodulates down to about -20 dB SNR at SF12, -7.5 dB at SF7)."""
    if rssi is None or snr is None:
        return "unknown"
    if rssi >= -105 and snr >= 0:
        return "good"
    if rssi >= -118 and snr >= -10:
        return "fair"
    return "poor"


def _back(target: str, message: str) -> Response:
    separator = "&" if "?" in target else "?"
    answer = RedirectResponse(f"{target}{separator}{urlencode({'done': message})}", 303)
    _secure(answer)
    return answer


def _found(build: Callable[[], Any]) -> Any:
    try:
        return build()
    except NotFoundError as err:
        raise _Refused(404, str(err)) from err
    except InvalidError as err:
        raise _Refused(400, str(err)) from err


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: the pages, their static files, ``/`` leading to the
    overview, and the answers to a missing login or a refused request as pages."""
    app.include_router(router())
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse(f"{PREFIX}/", 307)

    @app.exception_handler(LoginNeeded)
    def login_needed(request: Request, exc: LoginNeeded) -> Response:
        if request.headers.get("x-owlgate-fragment") == "1" or request.method != "GET":
            answer: Response = HTMLResponse(
                "<p>Your session has ended: <a href='/ui/login'>log in again</a>.</p>",
                status_code=401,
            )
        else:
            target = _url(request.url.path, dict(request.query_params))
            answer = RedirectResponse(f"{PREFIX}/login?{urlencode({'next': target})}", 303)
        _secure(answer)
        return answer

    @app.exception_handler(_Refused)
    def refused(request: Request, exc: _Refused) -> Response:
        return _error_page(request, exc.status, exc.message)

    app.state.dashboard_errors = _error_page


def _error_page(request: Request, status: int, message: str) -> Response:
    started = time.perf_counter()
    return render(
        request,
        "error.html",
        None,
        title="Not possible",
        started=started,
        status=status,
        refresh_s=None,
        status_code=status,
        message=message,
    )


def is_dashboard(request: Request) -> bool:
    """Whether a request is for a dashboard page (its errors are pages, not JSON)."""
    return request.url.path == PREFIX or request.url.path.startswith(PREFIX + "/")


__all__ = [
    "PREFIX",
    "FleetError",
    "LoginNeeded",
    "Viewer",
    "duration",
    "install",
    "is_dashboard",
    "router",
    "signal_quality",
    "viewer_of",
]
