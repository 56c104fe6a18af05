"""``owlgate fleet token``: create, list and revoke API tokens; ``owlgate fleet audit``: read
the audit log.

These commands open the database directly (``--db``, a SQLite file or a ``postgresql://``
URL) and need no key vault: tokens are stored hashed, and nothing here reads a device key.
A token is printed once, by ``create``, and cannot be shown again; ``--out FILE`` writes it to
a file of mode 0600 instead, for scripts. Every change is recorded in the audit log with the
actor ``cli:<login name>``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from owlgate.codecs.errors import OwlgateError

from . import audit
from .auth import ROLES, Role, create_token, revoke_token, token_id_of, tokens
from .cli_common import DbOption, cli_actor, open_db
from .cli_common import fail as _fail

SECONDS_PER_DAY = 86400.0

token_command = typer.Typer(
    name="token",
    help="API tokens: create (shown once), list, revoke.",
    no_args_is_help=True,
    add_completion=False,
)


def write_token_file(path: Path, token: str) -> Path:
    """Write ``token`` to ``path``, mode 0600 from the moment it exists (never world
    readable, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    return path


def write_admin_token(db: Any, path: Path, *, name: str = "demo admin") -> Path:
    """Create an admin token in ``db`` (a store or its Sql) and write it to ``path`` (0600):
    what ``owlgate fleet seed`` does so that a demo can call the API."""
    return write_token_file(path, create_token(db, role="admin", name=name, actor=cli_actor()))


def _role(value: str) -> Role:
    for role in ROLES:
        if value == role:
            return role
    _fail(f"--role {value!r}: use one of {', '.join(ROLES)}")


def _iso(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@token_command.command("create")
def create(
    db: DbOption,
    role: Annotated[str, typer.Option("--role", help=f"one of {', '.join(ROLES)}")],
    name: Annotated[str, typer.Option("--name", help="who or what uses the token")],
    expires_days: Annotated[
        float | None, typer.Option("--expires-days", help="valid for this many days [forever]")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the token to this file (0600) instead of printing it"),
    ] = None,
) -> None:
    """Create an API token. It is printed once (or written to --out) and never again."""
    checked = _role(role)
    if expires_days is not None and expires_days <= 0:
        _fail("--expires-days must be positive")
    now = time.time()
    expires_at = None if expires_days is None else now + expires_days * SECONDS_PER_DAY
    with open_db(db) as sql:
        try:
            secret = create_token(
                sql, role=checked, name=name, expires_at=expires_at, actor=cli_actor(), now=now
            )
        except OwlgateError as err:
            _fail(str(err))
    token_id = token_id_of(secret)
    if out is not None:
        try:
            write_token_file(out, secret)
        except OSError as err:
            _fail(f"--out {out}: {err.strerror or err} (token {token_id} was created: revoke it)")
        typer.echo(f"token {token_id} ({checked}, {name!r}) written to {out} (mode 0600)")
        return
    typer.echo(secret)
    typer.echo(
        f"token {token_id} ({checked}, {name!r}, expires {_iso(expires_at)}): shown this once, "
        "store it now",
        err=True,
    )


@token_command.command("list")
def list_tokens(
    db: DbOption,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List the tokens (never their secrets): id, role, state, name, dates."""
    with open_db(db) as sql:
        found = tokens(sql)
    now = time.time()
    for info in found:
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "id": info.id,
                        "name": info.name,
                        "role": info.role,
                        "state": info.state(now),
                        "created": info.created,
                        "expires_at": info.expires_at,
                        "revoked_at": info.revoked_at,
                        "last_used": info.last_used,
                    }
                )
            )
        else:
            typer.echo(
                f"{info.id}  {info.role:<10}  {info.state(now):<7}  created {_iso(info.created)}"
                f"  expires {_iso(info.expires_at)}  last used {_iso(info.last_used)}  {info.name}"
            )
    if not found and not as_json:
        typer.echo("no tokens (create one: owlgate fleet token create --role R --name N)")


@token_command.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="the token's id (`token list`)")],
    db: DbOption,
) -> None:
    """Revoke a token for good: every call with it is refused from now on."""
    with open_db(db) as sql:
        try:
            info = revoke_token(sql, token_id.lower(), actor=cli_actor())
        except OwlgateError as err:
            _fail(str(err))
    typer.echo(f"token {info.id} ({info.role}, {info.name!r}) revoked")


def audit_command(
    db: DbOption,
    action: Annotated[
        str | None, typer.Option("--action", help="an action or a family: 'token.*'")
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="actor name or token id")] = None,
    target: Annotated[str | None, typer.Option("--target", help="e.g. device:70b3...")] = None,
    since_days: Annotated[
        float | None, typer.Option("--since-days", help="only the last N days")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="at most this many events")] = 100,
) -> None:
    """Print audit events, oldest first, as JSON lines."""
    since = None if since_days is None else time.time() - since_days * SECONDS_PER_DAY
    with open_db(db) as sql:
        try:
            page = audit.events(
                sql, action=action, actor=actor, target=target, since=since, limit=limit
            )
        except OwlgateError as err:
            _fail(str(err))
    for event in page.items:
        typer.echo(
            json.dumps(
                {
                    "id": event.id,
                    "at": _iso(event.at),
                    "actor": event.actor,
                    "actor_role": event.actor_role,
                    "action": event.action,
                    "target": event.target,
                    "details": event.details,
                },
                sort_keys=True,
            )
        )
    if page.next is not None:
        typer.echo(f"(more: raise --limit, or use GET /api/v1/audit?after={page.next})", err=True)


__all__ = ["audit_command", "open_db", "token_command", "write_admin_token", "write_token_file"]


def ui_link_command(
    db: DbOption,
    token_file: Annotated[
        Path,
        typer.Option("--token-file", help="file holding the API token the link logs in with"),
    ],
    url: Annotated[
        str, typer.Option("--url", help="where the fleet serves, as a browser reaches it")
    ] = "http://127.0.0.1:8080",
    minutes: Annotated[
        float, typer.Option("--minutes", help="the link works once, within this many minutes")
    ] = 15.0,
) -> None:
    """Print a one-time link that logs a browser into the dashboard with a token's role.

    The link holds a code, not the token: it works once, then it is worth nothing."""
    from .dashboard.sessions import create_login_link

    if not 0 < minutes <= 24 * 60:
        _fail("--minutes must be above 0 and at most 1440 (a day)")
    try:
        token = token_file.read_text().strip()
    except OSError as err:
        _fail(f"--token-file {token_file}: {err.strerror or err}")
    with open_db(db) as sql:
        try:
            code = create_login_link(sql, token, now=time.time(), ttl_s=minutes * 60.0)
        except OwlgateError as err:
            _fail(f"--token-file {token_file}: {err}")
    typer.echo(f"{url.rstrip('/')}/ui/login?code={code}")
