"""Dashboard login sessions: a browser proves an API token once and gets a session cookie.

The dashboard admits the same tokens and roles as the API (:mod:`owlgate.fleet.auth`). A
browser cannot send a bearer header on a plain link or form, so the login page takes the token
once, checks it, and answers with a session cookie instead. The token itself is never kept by
the browser and never written by the fleet: the session row holds the token's *id* (to find
its role, and to notice when an admin revokes it or it expires) and the SHA-256 of the
session's own secret, like a token's hash.

A session cookie is ``ows_<id>_<secret>`` (64 random bits of id, hex; 256 random bits of
secret, URL-safe base64), sent ``HttpOnly`` (no script can read it), ``SameSite=Strict`` (no
other site's page makes the browser send it) and ``Secure`` when the dashboard is served over
HTTPS. Forms that change something carry a second value, the CSRF token: an HMAC of the
session secret, so it needs nothing stored and a page of another origin cannot know it.

A session ends at logout, after :data:`IDLE_TIMEOUT_S` without a request (a wall screen
polls, so it stays in), after :data:`MAX_AGE_S` whatever happens, and at once when its token
is revoked or expires. ``last_seen`` is written at most once per :data:`SEEN_RESOLUTION_S`.

A **login link** (:func:`create_login_link`, ``owlgate fleet ui-link``; the demo opens one)
carries a one-time code instead of a token: it works once, within :data:`LINK_TTL_S`, and
opens a session for the token it was made with. Only the code's hash is stored, so the link
left in a browser's history or a terminal's scrollback is worth nothing once used.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

from ..auth import Principal, Unauthenticated, authenticate, principal_of, sql_of
from ..schema import migration
from ..sql import Sql

log = logging.getLogger(__name__)

COOKIE_NAME: Final = "owlgate_session"
SESSION_PREFIX: Final = "ows_"
IDLE_TIMEOUT_S: Final = 12 * 3600.0
MAX_AGE_S: Final = 7 * 86_400.0
SEEN_RESOLUTION_S: Final = 60.0
_SHAPE: Final = re.compile(r"^ows_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
LINK_PREFIX: Final = "owc_"
LINK_TTL_S: Final = 15 * 60.0
_LINK_SHAPE: Final = re.compile(r"^owc_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@migration("0900_dashboard_sessions")
def _sessions_schema(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE dashboard_sessions ("
            "id TEXT PRIMARY KEY, secret_hash {blob} NOT NULL, "
            "token_id TEXT NOT NULL REFERENCES api_tokens (id), "
            "created {float} NOT NULL, last_seen {float} NOT NULL, ended_at {float})"
        )
    )
    db.execute("CREATE INDEX dashboard_sessions_by_token ON dashboard_sessions (token_id)")
    db.execute(
        db.ddl(
            "CREATE TABLE dashboard_login_links ("
            "id TEXT PRIMARY KEY, code_hash {blob} NOT NULL, "
            "token_id TEXT NOT NULL REFERENCES api_tokens (id), "
            "created {float} NOT NULL, expires_at {float} NOT NULL, used_at {float})"
        )
    )


@dataclass(frozen=True, slots=True)
class Session:
    """A live session: who, and the CSRF token its forms carry."""

    id: str
    principal: Principal
    csrf: str


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def csrf_token(cookie: str) -> str:
    """The CSRF token of the session whose cookie value is ``cookie``."""
    return hmac.new(cookie.encode(), b"owlgate dashboard form", hashlib.sha256).hexdigest()


def start_session(store: Any, token: str, *, now: float) -> tuple[str, Session]:
    """Check ``token`` (:class:`Unauthenticated` saying why it is refused) and open a session
    for it: returns the cookie value (shown to no one but the browser) and the session."""
    return _open(store, authenticate(store, token.strip(), now=now), now)


def _open(store: Any, principal: Principal, now: float) -> tuple[str, Session]:
    session_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    cookie = f"{SESSION_PREFIX}{session_id}_{secret}"
    sql_of(store).execute(
        "INSERT INTO dashboard_sessions (id, secret_hash, token_id, created, last_seen)"
        " VALUES (?, ?, ?, ?, ?)",
        [session_id, _hash(cookie), principal.token_id, now, now],
    )
    log.info("dashboard session %s opened for token %s", session_id, principal.token_id)
    return cookie, Session(session_id, principal, csrf_token(cookie))


def create_login_link(store: Any, token: str, *, now: float, ttl_s: float = LINK_TTL_S) -> str:
    """A one-time login code for ``token`` (checked now): the value of ``?code=`` on
    ``/ui/login``. It opens one session, once, before ``now + ttl_s``."""
    principal = authenticate(store, token.strip(), now=now)
    link_id = secrets.token_hex(8)
    code = f"{LINK_PREFIX}{link_id}_{secrets.token_urlsafe(32)}"
    sql_of(store).execute(
        "INSERT INTO dashboard_login_links (id, code_hash, token_id, created, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        [link_id, _hash(code), principal.token_id, now, now + ttl_s],
    )
    log.info("dashboard login link %s made for token %s", link_id, principal.token_id)
    return code


def redeem_login_link(store: Any, code: str, *, now: float) -> tuple[str, Session]:
    """Open a session with a login code (:func:`create_login_link`); the code is spent.
    :class:`Unauthenticated` for a code unknown, used, expired, or whose token is gone."""
    match = _LINK_SHAPE.match(code)
    if match is None:
        raise Unauthenticated("this login link is malformed: ask for a new one", "malformed")
    link_id = match.group(1)
    db = sql_of(store)
    with db.transaction() as tx:
        rows = tx.query(
            "SELECT code_hash, token_id, expires_at, used_at FROM dashboard_login_links"
            " WHERE id = ?",
            [link_id],
        )
        stored = bytes(rows[0]["code_hash"]) if rows else b"\0" * 32
        if not hmac.compare_digest(stored, _hash(code)) or not rows:
            raise Unauthenticated("this login link is not known: ask for a new one", "unknown")
        row = rows[0]
        if row["used_at"] is not None:
            raise Unauthenticated("this login link was used already: ask for a new one", "revoked")
        if row["expires_at"] <= now:
            raise Unauthenticated("this login link has expired: ask for a new one", "expired")
        spent = tx.execute(
            "UPDATE dashboard_login_links SET used_at = ? WHERE id = ? AND used_at IS NULL",
            [now, link_id],
        )
        if spent == 0:
            raise Unauthenticated("this login link was used already: ask for a new one", "revoked")
    return _open(store, principal_of(store, row["token_id"], now=now), now)


def session_of(store: Any, cookie: str, *, now: float) -> Session:
    """The live session of a cookie value; :class:`Unauthenticated` saying why not."""
    match = _SHAPE.match(cookie)
    if match is None:
        raise Unauthenticated("the session cookie is malformed: log in again", "malformed")
    session_id = match.group(1)
    db = sql_of(store)
    rows = db.query(
        "SELECT secret_hash, token_id, created, last_seen, ended_at FROM dashboard_sessions"
        " WHERE id = ?",
        [session_id],
    )
    stored = bytes(rows[0]["secret_hash"]) if rows else b"\0" * 32
    if not hmac.compare_digest(stored, _hash(cookie)) or not rows:
        raise Unauthenticated("this session is not known: log in again", "unknown")
    row = rows[0]
    if row["ended_at"] is not None:
        raise Unauthenticated("this session was ended: log in again", "revoked")
    if now - row["last_seen"] > IDLE_TIMEOUT_S or now - row["created"] > MAX_AGE_S:
        raise Unauthenticated("this session has expired: log in again", "expired")
    principal = principal_of(store, row["token_id"], now=now)
    if now - row["last_seen"] >= SEEN_RESOLUTION_S:
        db.execute("UPDATE dashboard_sessions SET last_seen = ? WHERE id = ?", [now, session_id])
    return Session(session_id, principal, csrf_token(cookie))


def end_session(store: Any, session_id: str, *, now: float) -> None:
    """Log out: the session's cookie is refused from now on."""
    sql_of(store).execute(
        "UPDATE dashboard_sessions SET ended_at = ? WHERE id = ? AND ended_at IS NULL",
        [now, session_id],
    )
    log.info("dashboard session %s ended", session_id)


def csrf_matches(session: Session, presented: str | None) -> bool:
    """Whether a form's CSRF value is its session's."""
    return presented is not None and hmac.compare_digest(session.csrf, presented)


__all__ = [
    "COOKIE_NAME",
    "IDLE_TIMEOUT_S",
    "MAX_AGE_S",
    "Session",
    "csrf_matches",
    "create_login_link",
    "csrf_token",
    "end_session",
    "redeem_login_link",
    "session_of",
    "start_session",
]
