"""API authentication and roles: bearer tokens, stored hashed, each with one role.

Every API route states the roles it admits with :func:`requires`; a call without a valid
bearer token is refused with 401 (and ``WWW-Authenticate: Bearer``), a call whose token has a
role the route does not admit with 403. ``admin`` is admitted everywhere. The roles a route
admits are also written into the OpenAPI document, as ``x-owlgate-roles`` on each operation
(:func:`add_roles_to_openapi`), so a client, a reviewer and the test that walks the document
all read the same list.

A token is ``owl_<id>_<secret>``: the id (64 random bits, hex) names the row, the secret
(256 random bits, URL-safe base64) is the credential. The database keeps only the SHA-256 of
the whole token. A plain hash is right here, and a slow password hash (bcrypt, scrypt,
Argon2) is not: those exist to make guessing a *low-entropy* human password expensive, while a
256-bit random secret cannot be guessed at any speed, and a slow hash would cost every API
call tens of milliseconds for nothing. A copy of the database therefore gives no usable token.
The row is found by its id, never by the secret, and the hashes are compared with
:func:`hmac.compare_digest`, so the time a refusal takes says nothing about the secret.

``last_used`` is written at most once per :data:`LAST_USED_RESOLUTION_S` per token, so a busy
client does not turn every read into a write.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute

from .schema import migration
from .sql import Sql
from .store import FleetError, InvalidError, NotFoundError

log = logging.getLogger(__name__)

Role = Literal["admin", "operator", "technician"]
ROLES: Final[tuple[Role, ...]] = ("admin", "operator", "technician")

#: Why a call was refused; the keys of :func:`auth_stats`.
#: Why a call or a login was refused; ``rate_limited``: a dashboard login from an address with
#: too many failed ones just before (see ``owlgate.fleet.dashboard.pages``).
RefusalReason = Literal[
    "missing", "malformed", "unknown", "revoked", "expired", "forbidden", "rate_limited"
]
REFUSAL_REASONS: Final[tuple[RefusalReason, ...]] = get_args(RefusalReason)

TOKEN_PREFIX: Final = "owl_"
TOKEN_ID_BYTES: Final = 8
TOKEN_SECRET_BYTES: Final = 32
#: ``last_used`` is at most this stale; it is not rewritten more often than this.
LAST_USED_RESOLUTION_S: Final = 60.0
MAX_TOKEN_NAME: Final = 200

_TOKEN_SHAPE: Final = re.compile(r"^owl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
#: The OpenAPI extension that lists, per operation, the roles admitted.
OPENAPI_ROLES_KEY: Final = "x-owlgate-roles"
#: Name of the bearer security scheme in the OpenAPI document.
SECURITY_SCHEME: Final = "bearerAuth"

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name=SECURITY_SCHEME,
    description="An API token: `owlgate fleet token create --role R`.",
)


@migration("0100_api_tokens")
def _api_tokens(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE api_tokens ("
            " id TEXT PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'technician')),"
            " token_hash {blob} NOT NULL UNIQUE,"
            " created {float} NOT NULL,"
            " expires_at {float},"
            " revoked_at {float},"
            " last_used {float})"
        )
    )


# --- errors --------------------------------------------------------------------------------------


class AuthError(FleetError):
    """A call the API refuses: ``status`` (401 or 403), ``code`` and ``reason`` for the
    answer and the counters."""

    status: int = 401
    code: str = "unauthenticated"

    def __init__(self, message: str, reason: RefusalReason) -> None:
        super().__init__(message)
        self.reason = reason


class Unauthenticated(AuthError):
    """No token, or one that is malformed, unknown, revoked or expired: 401."""


class Forbidden(AuthError):
    """A valid token whose role the route does not admit: 403."""

    status = 403
    code = "forbidden"


# --- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id and name, and its role."""

    token_id: str
    name: str
    role: Role


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    """A stored token, without anything that could authenticate."""

    id: str
    name: str
    role: Role
    created: float
    expires_at: float | None
    revoked_at: float | None
    last_used: float | None

    def state(self, now: float) -> Literal["active", "revoked", "expired"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class AuthStats:
    """Refused calls by reason, for ``/api/v1/stats`` and ``/metrics`` (a
    :class:`~owlgate.fleet.api.StatsSource` named ``auth``)."""

    name = "auth"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.refused: dict[RefusalReason, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self.admitted = 0

    def count_refusal(self, reason: RefusalReason) -> None:
        with self._lock:
            self.refused[reason] += 1

    def count_admitted(self) -> None:
        with self._lock:
            self.admitted += 1

    def stats(self) -> dict[str, object]:
        with self._lock:
            # A mapping is rendered by reason in /metrics: owlgate_fleet_auth_refused_total.
            return {"admitted": self.admitted, "refused": dict(self.refused)}


# --- tokens --------------------------------------------------------------------------------------


def sql_of(store_or_sql: Any) -> Sql:
    """The :class:`Sql` of a store (its ``sql`` attribute), or ``store_or_sql`` itself."""
    if isinstance(store_or_sql, Sql):
        return store_or_sql
    db = getattr(store_or_sql, "sql", None)
    if not isinstance(db, Sql):
        raise TypeError(f"{type(store_or_sql).__name__} has no Sql database (.sql)")
    return db


def token_hash(token: str) -> bytes:
    """SHA-256 of the token's text (see the module docstring for why not a slow hash)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def _role(role: str) -> Role:
    if role not in ROLES:
        raise InvalidError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role


def create_token(
    store: Any,
    *,
    role: Role,
    name: str,
    expires_at: float | None = None,
    actor: Principal | str = "cli",
    now: float | None = None,
) -> str:
    """Create an API token, store its hash, record ``token.created`` in the audit log, and
    return the token: it is shown this once and cannot be recovered."""
    from . import audit

    checked = _role(role)
    label = name.strip()
    if not label or len(label) > MAX_TOKEN_NAME:
        raise InvalidError(f"a token needs a name of 1 .. {MAX_TOKEN_NAME} characters")
    created = time.time() if now is None else now
    if expires_at is not None and expires_at <= created:
        raise InvalidError("a token's expiry must be in the future")
    token_id = secrets.token_hex(TOKEN_ID_BYTES)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"
    db = sql_of(store)
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO api_tokens (id, name, role, token_hash, created, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [token_id, label, checked, token_hash(token), created, expires_at],
        )
        audit.record_event(
            tx,
            actor=actor,
            action="token.created",
            target=f"token:{token_id}",
            details={"name": label, "role": checked, "expires_at": expires_at},
            at=created,
        )
    log.info("API token %s (%s, role %s) created", token_id, label, checked)
    return token


def token_id_of(token: str) -> str:
    """The id part of a token (raises :class:`Unauthenticated` for anything else)."""
    match = _TOKEN_SHAPE.match(token)
    if match is None:
        raise Unauthenticated(
            "the bearer token is not an owlgate API token (owl_<id>_<secret>)", "malformed"
        )
    return match.group(1)


def _info(row: Mapping[str, Any]) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        name=row["name"],
        role=_role(row["role"]),
        created=row["created"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used=row["last_used"],
    )


_COLUMNS: Final = "id, name, role, created, expires_at, revoked_at, last_used"


def tokens(store: Any) -> list[TokenInfo]:
    """Every token, revoked and expired ones too, oldest first."""
    rows = sql_of(store).query(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created, id")
    return [_info(row) for row in rows]


def token_info(store: Any, token_id: str) -> TokenInfo:
    """One token by id (:class:`NotFoundError` naming the command that lists them)."""
    rows = sql_of(store).query(f"SELECT {_COLUMNS} FROM api_tokens WHERE id = ?", [token_id])
    if not rows:
        raise NotFoundError(f"no API token {token_id!r}: `owlgate fleet token list` shows them")
    return _info(rows[0])


def revoke_token(
    store: Any, token_id: str, *, actor: Principal | str = "cli", now: float | None = None
) -> TokenInfo:
    """Revoke a token (for good: a revoked token is never valid again) and record
    ``token.revoked``. Revoking a revoked token changes nothing and records nothing."""
    from . import audit

    at = time.time() if now is None else now
    db = sql_of(store)
    with db.transaction() as tx:
        changed = tx.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            [at, token_id],
        )
        info = token_info(tx, token_id)
        if changed:
            audit.record_event(
                tx,
                actor=actor,
                action="token.revoked",
                target=f"token:{token_id}",
                details={"name": info.name, "role": info.role},
                at=at,
            )
    if changed:
        log.info("API token %s (%s) revoked", token_id, info.name)
    return info


def authenticate(store: Any, presented: str, *, now: float | None = None) -> Principal:
    """The :class:`Principal` of a presented token; :class:`Unauthenticated` saying why
    otherwise (malformed, unknown, revoked, expired)."""
    at = time.time() if now is None else now
    token_id = token_id_of(presented)
    db = sql_of(store)
    rows = db.query(
        "SELECT id, name, role, token_hash, expires_at, revoked_at, last_used"
        " FROM api_tokens WHERE id = ?",
        [token_id],
    )
    # A missing row is compared against a dummy hash so that both refusals take the same time.
    stored = bytes(rows[0]["token_hash"]) if rows else b"\0" * 32
    if not hmac.compare_digest(stored, token_hash(presented)) or not rows:
        raise Unauthenticated("the bearer token is not known to this fleet", "unknown")
    return _admitted_row(db, rows[0], at)


def principal_of(store: Any, token_id: str, *, now: float | None = None) -> Principal:
    """The :class:`Principal` of the token with id ``token_id``, checked as
    :func:`authenticate` checks a presented one (revoked, expired), for a caller that proved
    the token once and holds a reference to it, such as a dashboard login session."""
    at = time.time() if now is None else now
    db = sql_of(store)
    rows = db.query(
        "SELECT id, name, role, expires_at, revoked_at, last_used FROM api_tokens WHERE id = ?",
        [token_id],
    )
    if not rows:
        raise Unauthenticated(f"the token {token_id} is no longer known to this fleet", "unknown")
    return _admitted_row(db, rows[0], at)


def _admitted_row(db: Sql, row: Mapping[str, Any], at: float) -> Principal:
    token_id = str(row["id"])
    if row["revoked_at"] is not None:
        raise Unauthenticated(
            f"the bearer token {token_id} was revoked: ask an admin for a new one", "revoked"
        )
    if row["expires_at"] is not None and row["expires_at"] <= at:
        raise Unauthenticated(
            f"the bearer token {token_id} has expired: ask an admin for a new one", "expired"
        )
    last_used = row["last_used"]
    if last_used is None or at - last_used >= LAST_USED_RESOLUTION_S:
        db.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", [at, token_id])
    return Principal(token_id=token_id, name=row["name"], role=_role(row["role"]))


# --- FastAPI -------------------------------------------------------------------------------------


def auth_stats(app: FastAPI) -> AuthStats:
    """The app's counters of admitted and refused calls (created on first use)."""
    stats = getattr(app.state, "auth_stats", None)
    if not isinstance(stats, AuthStats):
        stats = app.state.auth_stats = AuthStats()
    return stats


def admit(request: Request, bearer: str | None, admitted: Sequence[Role]) -> Principal:
    """The caller of ``request`` if ``bearer`` (the token sent, or None) is valid and its role
    is in ``admitted``; counts the call, and raises :class:`AuthError` saying why not."""
    stats = auth_stats(request.app)
    try:
        if not bearer:
            raise Unauthenticated(
                "this route needs an API token: send 'Authorization: Bearer <token>'", "missing"
            )
        clock: Callable[[], float] = getattr(request.app.state, "clock", time.time)
        principal = authenticate(request.app.state.store, bearer, now=clock())
        if principal.role not in admitted:
            raise Forbidden(
                f"{request.method} {request.url.path} needs the role"
                f" {' or '.join(admitted)}; token {principal.token_id} has {principal.role}",
                "forbidden",
            )
    except AuthError as err:
        stats.count_refusal(err.reason)
        log.info("refused %s %s: %s", request.method, request.url.path, err.reason)
        raise
    stats.count_admitted()
    request.state.owlgate_principal = principal
    return principal


def requires(*roles: Role) -> Any:
    """A FastAPI dependency (``Depends(...)``) that admits a bearer token whose role is in
    ``roles`` (or ``admin``) and gives the route its :class:`Principal`::

        @router.post("/x")
        def x(principal: Annotated[Principal, requires("operator")]) -> ...

    It reads the store at ``request.app.state.store`` and "now" from
    ``request.app.state.clock`` when there is one.
    """
    admitted: tuple[Role, ...] = ("admin", *(r for r in dict.fromkeys(roles) if r != "admin"))
    for role in admitted:
        _role(role)

    def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Principal:
        return admit(request, None if credentials is None else credentials.credentials, admitted)

    dependency.__owlgate_roles__ = admitted  # type: ignore[attr-defined]
    return Depends(dependency)


async def refusal_before_validation(request: Request) -> AuthError | None:
    """For a request FastAPI refused before its dependencies ran (a body that is not JSON):
    the refusal its route's :func:`requires` would have given, or None. So an
    unauthenticated caller gets 401, not a description of what the body should be."""
    if getattr(request.state, "owlgate_principal", None) is not None:
        return None
    route = request.scope.get("route")
    roles = route_roles(route) if isinstance(route, APIRoute) else None
    if roles is None:
        return None
    credentials = await _bearer(request)
    bearer = None if credentials is None else credentials.credentials
    try:
        await run_in_threadpool(admit, request, bearer, roles)
    except AuthError as err:
        return err
    return None


def route_roles(route: APIRoute) -> tuple[Role, ...] | None:
    """The roles a route admits, from its :func:`requires` dependency (None without one)."""
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        roles = getattr(dependant.call, "__owlgate_roles__", None)
        if roles is not None:
            return cast(tuple[Role, ...], roles)
        pending.extend(dependant.dependencies)
    return None


def api_routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every API route under ``routes`` with the path it is served at, routers added with
    ``include_router`` included: FastAPI (0.165) keeps those as one entry holding the original
    router and the prefix it was included with."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path_format, route
            continue
        included = getattr(route, "original_router", None)
        context = getattr(route, "include_context", None)
        if included is not None:
            yield from api_routes(included.routes, prefix + str(getattr(context, "prefix", "")))


def add_roles_to_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` list the roles of every operation under ``x-owlgate-roles``
    (routes added later, with ``include_router``, included: the document is built on first
    request)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        paths = document.get("paths", {})
        for path, route in api_routes(app.routes):
            if not route.include_in_schema:
                continue
            roles = route_roles(route)
            for method in route.methods or ():
                operation = paths.get(path, {}).get(method.lower())
                if operation is not None and roles is not None:
                    operation[OPENAPI_ROLES_KEY] = list(roles)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


class FailureLimiter:
    """Failed attempts per client address in a sliding window (claims, dashboard logins):
    once an address has ``limit`` failures in ``window_s`` it is refused until the oldest
    ages out. Kept in the process: each fleet replica limits what reaches it. An address is
    forgotten once its failures have aged out, so a spread of addresses leaves no trail."""

    def __init__(
        self, *, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def _recent(self, address: str, now: float) -> list[float]:
        kept = [at for at in self._failures.get(address, []) if now - at < self.window_s]
        if kept:
            self._failures[address] = kept
        else:
            self._failures.pop(address, None)
        return kept

    def wait_s(self, address: str) -> float:
        """Seconds ``address`` must wait before its next attempt (0: it may try now)."""
        with self._lock:
            now = self._clock()
            recent = self._recent(address, now)
            if len(recent) < self.limit:
                return 0.0
            return max(0.0, self.window_s - (now - recent[0]))

    def failed(self, address: str) -> None:
        with self._lock:
            now = self._clock()
            self._recent(address, now)
            self._failures.setdefault(address, []).append(now)


def failure_limiter(app: Any, name: str, *, limit: int, window_s: float) -> FailureLimiter:
    """The app's :class:`FailureLimiter` kept as ``app.state.<name>`` (made on first use)."""
    found = getattr(app.state, name, None)
    if not isinstance(found, FailureLimiter):
        found = FailureLimiter(limit=limit, window_s=window_s)
        setattr(app.state, name, found)
    return found


__all__ = [
    "OPENAPI_ROLES_KEY",
    "FailureLimiter",
    "failure_limiter",
    "REFUSAL_REASONS",
    "ROLES",
    "AuthError",
    "AuthStats",
    "Forbidden",
    "Principal",
    "Role",
    "TokenInfo",
    "Unauthenticated",
    "add_roles_to_openapi",
    "api_routes",
    "admit",
    "auth_stats",
    "authenticate",
    "create_token",
    "principal_of",
    "refusal_before_validation",
    "requires",
    "revoke_token",
    "route_roles",
    "token_id_of",
    "token_info",
    "tokens",
]
