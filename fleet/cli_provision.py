"""``owlgate fleet claim``: issue, list and revoke the claim tokens technicians provision
gateways with (:mod:`owlgate.fleet.provisioning`).

These commands open the database directly (``--db``, a SQLite file or a ``postgresql://``
URL) and need no key vault: claim tokens are stored hashed. A token is printed once, by
``create``, and cannot be shown again; ``--out FILE`` writes it to a file of mode 0600
instead. Every change is recorded in the audit log with the actor ``cli:<login name>``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from owlgate.codecs.errors import OwlgateError

from .cli_auth import write_token_file
from .cli_common import DbOption, cli_actor, open_db
from .cli_common import fail as _fail
from .provisioning import DEFAULT_CLAIM_TTL_S, claims, create_claim, revoke_claim

SECONDS_PER_HOUR = 3600.0

claim_command = typer.Typer(
    name="claim",
    help="Claim tokens for provisioning gateways: create (shown once), list, revoke.",
    no_args_is_help=True,
    add_completion=False,
)


def _iso(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@claim_command.command("create")
def create(
    db: DbOption,
    group: Annotated[
        str | None, typer.Option("--group", help="the group the claimed gateway joins")
    ] = None,
    site: Annotated[str | None, typer.Option("--site", help="where the gateway goes")] = None,
    expires_hours: Annotated[
        float,
        typer.Option("--expires-hours", help="valid for this many hours (1 minute .. 30 days)"),
    ] = DEFAULT_CLAIM_TTL_S / SECONDS_PER_HOUR,
    comment: Annotated[str, typer.Option("--comment", help="a note: who, which job")] = "",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the token to this file (0600) instead of printing it"),
    ] = None,
) -> None:
    """Create a claim token. It is printed once (or written to --out) and never again."""
    with open_db(db) as sql:
        try:
            issued = create_claim(
                sql,
                group=group,
                site=site,
                expires_in_s=expires_hours * SECONDS_PER_HOUR,
                comment=comment,
                actor=cli_actor(),
            )
        except OwlgateError as err:
            _fail(str(err))
    where = f"group {issued.group or '-'}, site {issued.site or '-'}"
    if out is not None:
        try:
            write_token_file(out, issued.token)
        except OSError as err:
            _fail(
                f"--out {out}: {err.strerror or err} (claim {issued.id} was created: revoke it"
                f" with `owlgate fleet claim revoke {issued.id}`)"
            )
        typer.echo(
            f"claim {issued.id} ({where}, expires {_iso(issued.expires_at)}) written to {out}"
            " (mode 0600)"
        )
        return
    typer.echo(issued.token)
    typer.echo(
        f"claim {issued.id} ({where}, expires {_iso(issued.expires_at)}): shown this once, give"
        " it to the technician now",
        err=True,
    )


@claim_command.command("list")
def list_claims(
    db: DbOption,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List the claim tokens (never the tokens): state, group, site, who claimed what when."""
    with open_db(db) as sql:
        found = claims(sql)
    now = time.time()
    for info in found:
        if as_json:
            typer.echo(json.dumps(info.as_json(now), sort_keys=True))
            continue
        claimed = (
            f"gateway {info.gateway_id} at {_iso(info.used_at)}"
            if info.gateway_id is not None
            else "-"
        )
        typer.echo(
            f"{info.id:>5}  {info.state(now):<7}  group {info.group or '-'}  site"
            f" {info.site or '-'}  created {_iso(info.created)} by {info.created_by}  expires"
            f" {_iso(info.expires_at)}  claimed {claimed}  {info.comment}".rstrip()
        )
    if not found and not as_json:
        typer.echo("no claim tokens (create one: owlgate fleet claim create --group G)")


@claim_command.command("revoke")
def revoke(
    claim_id: Annotated[int, typer.Argument(help="the claim's id (`claim list`)")],
    db: DbOption,
) -> None:
    """Revoke a claim token: it claims nothing any more."""
    with open_db(db) as sql:
        try:
            info = revoke_claim(sql, claim_id, actor=cli_actor())
        except OwlgateError as err:
            _fail(str(err))
    claimed = "" if info.gateway_id is None else f" (it had claimed gateway {info.gateway_id})"
    typer.echo(f"claim {info.id} revoked{claimed}")


__all__ = ["claim_command"]
