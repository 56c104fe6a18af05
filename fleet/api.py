"""The fleet's HTTP API (FastAPI): read routes for operations, admin routes to register.

Read routes live under ``/api/v1``; routes that change the registry under
``/api/v1/admin``. Every route states the roles it admits with
:func:`owlgate.fleet.auth.requires` (bearer tokens; see ``docs/fleet-access.md``): reads are
for ``operator`` and ``technician``, registering for ``technician``, the audit log and tokens
for ``admin`` only (``admin`` is admitted everywhere). The roles are in the OpenAPI document
too, as ``x-owlgate-roles`` on every operation. Registering a gateway or a device records an
event in the audit log, in the same transaction as the change.
Every listing is keyset-paginated: ``?limit=`` (1..1000, default 100) and ``?after=`` (the
``next`` cursor of the previous page). Errors are JSON: ``{"error": {"code", "message"}}``
with 404 for an unknown id, 409 for a duplicate, 422 for a bad value. Secrets (AppKey,
session keys) are accepted when a device is created and never returned, not even echoed in
a 422 response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Protocol, runtime_checkable

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from owlgate.codecs.payloads import PROFILES

from . import audit
from .auth import (
    AuthError,
    Principal,
    Role,
    TokenInfo,
    add_roles_to_openapi,
    auth_stats,
    create_token,
    refusal_before_validation,
    requires,
    revoke_token,
    sql_of,
    token_id_of,
    token_info,
    tokens,
)
from .health import HealthThresholds, assess
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import render_metrics
from .sql import DatabaseFault, DataRefused, Sql
from .store import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    ConflictError,
    Device,
    FleetError,
    Gateway,
    InvalidError,
    NotFoundError,
    Profile,
    Store,
    StoredReading,
)

if TYPE_CHECKING:
    from .alerts import AlertConfig

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
ADMIN_PREFIX = "/api/v1/admin"

#: Who may read the fleet's state (health, readings, profiles, counters).
READERS: Final[tuple[Role, ...]] = ("operator", "technician")
#: Who may register gateways and devices (the field technicians; admin too).
REGISTRARS: Final[tuple[Role, ...]] = ("technician",)
# Module-level, not local to create_app: FastAPI resolves ``Annotated[Principal, ...]`` in
# the module's namespace.
readers = requires(*READERS)
registrars = requires(*REGISTRARS)
admins = requires("admin")

_HEX_EUI = r"^[0-9a-fA-F]{16}$"
_HEX_KEY16 = r"^[0-9a-fA-F]{32}$"
_HEX_KEY32 = r"^[0-9a-fA-F]{64}$"

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)]
After = Annotated[str | None, Query(max_length=64)]


class GatewayCreate(BaseModel):
    """A gateway to register: its EUI-64 and its two public keys, hex."""

    id: str = Field(pattern=_HEX_EUI)
    name: str = Field(default="", max_length=200)
    sign_public_key: str = Field(pattern=_HEX_KEY32, description="Ed25519, 32 bytes hex")
    seal_public_key: str = Field(pattern=_HEX_KEY32, description="X25519, 32 bytes hex")


class DeviceCreate(BaseModel):
    """A device to register: OTAA with ``join_eui`` and ``app_key``, ABP with ``dev_addr``
    (8 hex digits) and both session keys."""

    dev_eui: str = Field(pattern=_HEX_EUI)
    profile_id: str = Field(min_length=1, max_length=100)
    activation: Literal["abp", "otaa"]
    name: str = Field(default="", max_length=200)
    join_eui: str | None = Field(default=None, pattern=_HEX_EUI)
    app_key: str | None = Field(default=None, pattern=_HEX_KEY16)
    dev_addr: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{8}$")
    nwk_s_key: str | None = Field(default=None, pattern=_HEX_KEY16)
    app_s_key: str | None = Field(default=None, pattern=_HEX_KEY16)


class TokenCreate(BaseModel):
    """An API token to create: its role, a name saying who or what uses it, and optionally
    how many days it is valid."""

    role: Literal["admin", "operator", "technician"]
    name: str = Field(min_length=1, max_length=200)
    expires_days: float | None = Field(default=None, gt=0, le=3650)


@runtime_checkable
class StatsSource(Protocol):
    """A background service whose counters ``GET /api/v1/stats`` shows under ``name``."""

    name: str

    def stats(self) -> dict[str, object]:
        """The counters now, JSON-ready."""
        ...


def register_stats(app: FastAPI, source: StatsSource) -> None:
    """Show ``source``'s counters in ``GET /api/v1/stats`` (the server does this for every
    service it starts that is a :class:`StatsSource`)."""
    app.state.stats_sources[source.name] = source


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else bytes.fromhex(text)


def create_app(
    store: Store,
    *,
    clock: Callable[[], float] = time.time,
    thresholds: HealthThresholds | None = None,
    lifespan: Any = None,
    alerts: AlertConfig | None = None,
    on_broker_change: Callable[[], None] | None = None,
) -> FastAPI:
    """The API over ``store``. ``clock`` gives "now" for health states; ``lifespan`` is passed
    to FastAPI, for the server to start background services (the MQTT ingest) beside it;
    ``alerts`` is the alert configuration whose rules ``/api/v1/alert-rules`` shows;
    ``on_broker_change`` runs after broker credentials changed (the server reloads the
    broker's accounts there)."""
    app = FastAPI(
        title="owlgate fleet manager",
        version="1",
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    limits = thresholds or HealthThresholds()
    started = clock()
    app.state.stats_sources = {}
    app.state.store = store
    app.state.clock = clock
    # The dashboard judges health with the same thresholds as the API.
    app.state.thresholds = limits
    register_stats(app, auth_stats(app))
    add_roles_to_openapi(app)

    def db() -> Sql:
        # Looked up per call: the store's database is reached through ``store.sql``.
        return sql_of(store)

    @app.exception_handler(AuthError)
    async def refused(request: Request, exc: AuthError) -> JSONResponse:
        response = _error(exc.status, exc.code, exc.message, reason=exc.reason)
        if exc.status == 401:
            # RFC 6750 section 3: a 401 names the scheme, and why the token was refused.
            error = "" if exc.reason == "missing" else ', error="invalid_token"'
            response.headers["WWW-Authenticate"] = f'Bearer realm="owlgate"{error}'
        return response

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, "not_found", exc.message)

    @app.exception_handler(ConflictError)
    async def conflict(request: Request, exc: ConflictError) -> JSONResponse:
        return _error(409, "conflict", exc.message)

    @app.exception_handler(InvalidError)
    async def invalid(request: Request, exc: InvalidError) -> JSONResponse:
        return _error(422, "invalid", exc.message)

    @app.exception_handler(DataRefused)
    async def refused_by_database(request: Request, exc: DataRefused) -> JSONResponse:
        # A value the database cannot hold (an id past 64 bits, a constraint): the request's.
        log.info("%s %s: refused by the database: %s", request.method, request.url.path, exc)
        return _error(
            422, "invalid", f"a value of the request cannot be stored or looked up: {exc}"
        )

    @app.exception_handler(DatabaseFault)
    async def database_fault(request: Request, exc: DatabaseFault) -> JSONResponse:
        log.error("%s %s: database fault: %s", request.method, request.url.path, exc)
        return _error(503, "database_unavailable", "the fleet database failed; try again later")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own answers (no such route, a method the route does not take) in the
        # API's error shape too, so that every error a client sees has a code and a message.
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        response = _error(exc.status_code, code, message)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        auth_refusal = await refusal_before_validation(request)
        if auth_refusal is not None:
            return await refused(request, auth_refusal)
        # FastAPI's default body echoes the offending input, which may be a key: keep only
        # where and what.
        problems = [
            {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg"))}
            for error in exc.errors()
        ]
        first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc'])}: {first['msg']}"
        return _error(422, "invalid", message, problems=problems)

    def gateway_json(gateway: Gateway) -> dict[str, Any]:
        facts = gateway.facts
        verdict = assess(facts, clock(), limits)
        return {
            "id": gateway.id,
            "name": gateway.name,
            "sign_public_key": gateway.sign_public_key.hex(),
            "seal_public_key": gateway.seal_public_key.hex(),
            "created": _iso(gateway.created),
            "last_seen": _iso(facts.last_seen),
            "health": {
                "state": verdict.state.value,
                "reasons": list(verdict.reasons),
                "heartbeat_interval_s": facts.heartbeat_interval_s,
                "outbox_depth": facts.outbox_depth,
                "outbox_oldest_age_s": facts.outbox_oldest_age_s,
                "last_message": gateway.last_health,
            },
        }

    def device_json(device: Device) -> dict[str, Any]:
        return {
            "dev_eui": device.dev_eui,
            "name": device.name,
            "profile_id": device.profile_id,
            "activation": device.activation,
            "join_eui": device.join_eui,
            "dev_addr": None if device.dev_addr is None else f"{device.dev_addr:08x}",
            "created": _iso(device.created),
            "joined_at": _iso(device.joined_at),
            "last_seen": _iso(device.last_seen),
            "last_fcnt": device.last_fcnt,
            "battery_mv": device.battery_mv,
        }

    def reading_json(reading: StoredReading) -> dict[str, Any]:
        return {
            "id": reading.id,
            "dev_eui": reading.dev_eui,
            "time": _iso(reading.time_s),
            "time_s": reading.time_s,
            "fcnt": reading.fcnt,
            "values": reading.values,
            "received_at": _iso(reading.received_at),
            "receptions": [
                {"gateway_id": r.gateway_id, "rssi_dbm": r.rssi_dbm, "snr_db": r.snr_db}
                for r in reading.receptions
            ],
        }

    def profile_json(profile: Profile) -> dict[str, Any]:
        described = PROFILES[profile.id].describe() if profile.id in PROFILES else {}
        return {
            **described,
            "id": profile.id,
            "name": profile.name,
            "description": profile.description,
        }

    def with_sites(
        kind: Literal["device", "gateway"], key: str, items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        # Where each stands (PUT .../site), null when nobody said: one query per page.
        from .views import places_of

        places = places_of(store.sql, kind, [item[key] for item in items])
        for item in items:
            place = places.get(item[key])
            item["site"] = None if place is None else place.place_json()
        return items

    @app.get(
        f"{API_PREFIX}/gateways",
        dependencies=[readers],
        summary="List gateways with their health state",
    )
    def list_gateways(limit: Limit = DEFAULT_PAGE_LIMIT, after: After = None) -> dict[str, Any]:
        page = store.gateways(limit=limit, after=after)
        items = with_sites("gateway", "id", [gateway_json(g) for g in page.items])
        return {"items": items, "next": page.next}

    @app.get(f"{API_PREFIX}/gateways/{{gateway_id}}", dependencies=[readers], summary="One gateway")
    def get_gateway(gateway_id: str) -> dict[str, Any]:
        item = gateway_json(store.gateway(_id(gateway_id, "gateway")))
        return with_sites("gateway", "id", [item])[0]

    @app.get(f"{API_PREFIX}/nodes", dependencies=[readers], summary="List sensor nodes (devices)")
    def list_nodes(limit: Limit = DEFAULT_PAGE_LIMIT, after: After = None) -> dict[str, Any]:
        page = store.devices(limit=limit, after=after)
        items = with_sites("device", "dev_eui", [device_json(d) for d in page.items])
        return {"items": items, "next": page.next}

    @app.get(f"{API_PREFIX}/nodes/{{dev_eui}}", dependencies=[readers], summary="One sensor node")
    def get_node(dev_eui: str) -> dict[str, Any]:
        item = device_json(store.device(_id(dev_eui, "device")))
        return with_sites("device", "dev_eui", [item])[0]

    @app.get(
        f"{API_PREFIX}/nodes/{{dev_eui}}/readings",
        dependencies=[readers],
        summary="A node's readings",
    )
    def node_readings(
        dev_eui: str,
        since: Annotated[
            datetime | None, Query(description="ISO 8601 time or Unix seconds, inclusive")
        ] = None,
        limit: Limit = DEFAULT_PAGE_LIMIT,
        after: After = None,
    ) -> dict[str, Any]:
        eui = _id(dev_eui, "device")
        store.device(eui)
        since_s = None if since is None else _seconds(since)
        page = store.readings(eui, since=since_s, limit=limit, after=after)
        return {"items": [reading_json(r) for r in page.items], "next": page.next}

    @app.get(
        f"{API_PREFIX}/stats",
        dependencies=[readers],
        summary="What this fleet process's services counted",
    )
    def stats() -> dict[str, Any]:
        sources: dict[str, StatsSource] = app.state.stats_sources
        return {
            "started_at": _iso(started),
            **{name: source.stats() for name, source in sorted(sources.items())},
        }

    @app.get(
        "/metrics",
        dependencies=[readers],
        summary="Prometheus metrics: gateways by state, devices, ingest and control counters",
        response_class=PlainTextResponse,
    )
    def metrics() -> PlainTextResponse:
        from .alerts import alert_counts

        sources: dict[str, StatsSource] = app.state.stats_sources
        text = render_metrics(
            store,
            {name: source.stats for name, source in sources.items()},
            now=clock(),
            started_at=started,
            thresholds=limits,
            alert_counts=lambda counted: alert_counts(counted).items(),
        )
        return PlainTextResponse(text, media_type=METRICS_CONTENT_TYPE)

    @app.get(
        f"{API_PREFIX}/profiles",
        dependencies=[readers],
        summary="Device profiles (from the codec registry)",
    )
    def list_profiles() -> dict[str, Any]:
        return {"items": [profile_json(p) for p in store.profiles()], "next": None}

    @app.post(f"{ADMIN_PREFIX}/gateways", status_code=201, summary="Register a gateway")
    def create_gateway(
        body: GatewayCreate, principal: Annotated[Principal, registrars]
    ) -> dict[str, Any]:
        now = clock()
        with db().transaction() as tx:
            gateway = store.create_gateway(
                body.id,
                name=body.name,
                sign_public_key=bytes.fromhex(body.sign_public_key),
                seal_public_key=bytes.fromhex(body.seal_public_key),
                created=now,
            )
            audit.record_event(
                tx,
                actor=principal,
                action="gateway.provisioned",
                target=f"gateway:{gateway.id}",
                details={"name": gateway.name, "via": "api"},
                at=now,
            )
        return gateway_json(gateway)

    @app.post(f"{ADMIN_PREFIX}/devices", status_code=201, summary="Register a device")
    def create_device(
        body: DeviceCreate, principal: Annotated[Principal, registrars]
    ) -> dict[str, Any]:
        now = clock()
        with db().transaction() as tx:
            device = store.create_device(
                body.dev_eui,
                profile_id=body.profile_id,
                activation=body.activation,
                created=now,
                name=body.name,
                join_eui=body.join_eui,
                app_key=_bytes(body.app_key),
                dev_addr=None if body.dev_addr is None else int(body.dev_addr, 16),
                nwk_s_key=_bytes(body.nwk_s_key),
                app_s_key=_bytes(body.app_s_key),
            )
            # Which keys were given, never their values.
            audit.record_event(
                tx,
                actor=principal,
                action="device.provisioned",
                target=f"device:{device.dev_eui}",
                details={
                    "name": device.name,
                    "profile_id": device.profile_id,
                    "activation": device.activation,
                    "via": "api",
                },
                at=now,
            )
        return device_json(device)

    @app.get(
        f"{API_PREFIX}/audit",
        dependencies=[admins],
        summary="The audit log: who provisioned, exported, changed, acknowledged what",
    )
    def audit_log(
        action: Annotated[
            str | None,
            Query(max_length=100, description="An action, or a family: 'token.*'"),
        ] = None,
        actor: Annotated[
            str | None, Query(max_length=200, description="The actor's name or token id")
        ] = None,
        target: Annotated[
            str | None, Query(max_length=200, description="e.g. 'device:0004a30b001c0530'")
        ] = None,
        since: Annotated[
            datetime | None, Query(description="ISO 8601 time or Unix seconds, inclusive")
        ] = None,
        limit: Limit = DEFAULT_PAGE_LIMIT,
        after: After = None,
    ) -> dict[str, Any]:
        page = audit.events(
            db(),
            action=action,
            actor=actor,
            target=target,
            since=None if since is None else _seconds(since),
            limit=limit,
            after=after,
        )
        return {
            "items": [
                {
                    "id": event.id,
                    "at": _iso(event.at),
                    "at_s": event.at,
                    "actor": event.actor,
                    "actor_token": event.actor_token,
                    "actor_role": event.actor_role,
                    "action": event.action,
                    "target": event.target,
                    "details": event.details,
                }
                for event in page.items
            ],
            "next": page.next,
        }

    def token_json(info: TokenInfo) -> dict[str, Any]:
        return {
            "id": info.id,
            "name": info.name,
            "role": info.role,
            "state": info.state(clock()),
            "created": _iso(info.created),
            "expires_at": _iso(info.expires_at),
            "revoked_at": _iso(info.revoked_at),
            "last_used": _iso(info.last_used),
        }

    @app.get(f"{ADMIN_PREFIX}/tokens", dependencies=[admins], summary="List API tokens")
    def list_tokens() -> dict[str, Any]:
        return {"items": [token_json(t) for t in tokens(db())], "next": None}

    @app.post(
        f"{ADMIN_PREFIX}/tokens",
        status_code=201,
        summary="Create an API token (the token is in this answer only)",
    )
    def new_token(body: TokenCreate, principal: Annotated[Principal, admins]) -> dict[str, Any]:
        now = clock()
        expires = None if body.expires_days is None else now + body.expires_days * 86400.0
        secret = create_token(
            db(), role=body.role, name=body.name, expires_at=expires, actor=principal, now=now
        )
        info = token_info(db(), token_id_of(secret))
        return {**token_json(info), "token": secret}

    @app.delete(f"{ADMIN_PREFIX}/tokens/{{token_id}}", summary="Revoke an API token")
    def delete_token(token_id: str, principal: Annotated[Principal, admins]) -> dict[str, Any]:
        return token_json(revoke_token(db(), token_id.lower(), actor=principal, now=clock()))

    # The feature routers import this module inside router(), so these imports are here.
    from . import alerts as alerts_module
    from . import brokerauth, bulk, configs, downlinks, export, provisioning, rollouts, views
    from .dashboard import pages as dashboard

    app.include_router(alerts_module.router(alerts))
    app.include_router(views.router())
    app.include_router(bulk.router())
    app.include_router(export.router())
    app.include_router(brokerauth.router(on_change=on_broker_change))
    app.include_router(configs.router())
    app.include_router(rollouts.router())
    app.include_router(downlinks.router())
    app.include_router(provisioning.router(on_broker_change))
    # The operations dashboard's pages under /ui/ (HTML, not in the OpenAPI document).
    dashboard.install(app)
    return app


def _seconds(moment: datetime) -> float:
    """A query time as Unix seconds; a time without a zone is UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _id(text: str, what: str) -> str:
    """A path id must be 16 hex digits; anything else cannot exist, so it is a 404."""
    lowered = text.lower()
    if len(lowered) != 16 or any(c not in "0123456789abcdef" for c in lowered):
        raise NotFoundError(f"no {what} {text!r}: ids are 16 hex digits")
    return lowered


__all__ = [
    "ADMIN_PREFIX",
    "API_PREFIX",
    "READERS",
    "REGISTRARS",
    "FleetError",
    "StatsSource",
    "create_app",
    "register_stats",
]
