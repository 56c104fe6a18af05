"""``owlgate fleet broker``: broker credentials and the Mosquitto files, from the command line.

- ``credentials GW`` issues a gateway's MQTT password (``--rotate`` replaces it);
- ``fleet-account`` issues (or rotates) the password of the fleet's own service account;
- ``revoke NAME`` revokes a gateway's or a service account's password;
- ``list`` shows every account, without secrets;
- ``write-files --out DIR`` writes Mosquitto's password file, ACL file and a configuration
  snippet, and with ``--reload-pid`` sends the running Mosquitto SIGHUP.

A new password is printed once on standard output, or with ``--password-out FILE`` written
to a new file readable by its owner only (0600) and not printed at all. The fleet keeps only
its hash. Each change is recorded in the audit log as done by ``cli:<user>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from owlgate.codecs.errors import OwlgateError

from .brokerauth import (
    FLEET_ACCOUNT,
    BrokerAuthError,
    IssuedCredentials,
    credential_states,
    issue_fleet_credentials,
    issue_gateway_credentials,
    load_policy,
    reload_mosquitto,
    revoke_credentials,
    write_mosquitto_files,
)
from .cli_common import DbOption, open_db
from .cli_common import cli_actor as _actor
from .cli_common import fail as _fail

broker_command = typer.Typer(
    name="broker",
    help="Broker access: per-gateway MQTT credentials, the fleet account, Mosquitto files.",
    no_args_is_help=True,
    add_completion=False,
)

PasswordOut = Annotated[
    Path | None,
    typer.Option(
        "--password-out",
        help="write the new password to this new file (0600) instead of printing it",
    ),
]
Rotate = Annotated[
    bool, typer.Option("--rotate", help="replace the existing password (the old one stops)")
]


def _check_password_out(path: Path | None) -> None:
    # Checked before anything changes: a password that cannot be delivered must not replace
    # the one that works.
    if path is None:
        return
    if path.exists():
        _fail(f"--password-out {path}: already exists; give a new file")
    if not path.parent.is_dir():
        _fail(f"--password-out {path}: folder {path.parent} does not exist")


def _deliver(issued: IssuedCredentials, path: Path | None) -> None:
    what = "rotated" if issued.rotated else "issued"
    if path is None:
        typer.echo(f"{issued.kind} {issued.username}: password {what}; shown once:", err=True)
        typer.echo(issued.password)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(issued.password + "\n")
    except OSError as err:
        _fail(
            f"--password-out {path}: {err.strerror or err} (the password was {what} anyway:"
            " rotate it to get one you can store)"
        )
    typer.echo(f"{issued.kind} {issued.username}: password {what}, written to {path}")


@broker_command.command("credentials")
def credentials(
    gateway: Annotated[str, typer.Argument(help="the gateway id (16 hex digits)")],
    db: DbOption,
    rotate: Rotate = False,
    password_out: PasswordOut = None,
) -> None:
    """Issue a gateway's MQTT password (user name: the gateway id)."""
    _check_password_out(password_out)
    with open_db(db) as sql:
        try:
            issued = issue_gateway_credentials(sql, gateway, actor=_actor(), rotate=rotate)
        except OwlgateError as err:
            _fail(str(err))
    _deliver(issued, password_out)


@broker_command.command("fleet-account")
def fleet_account(
    db: DbOption,
    username: Annotated[
        str, typer.Option("--username", help="the service account's user name")
    ] = FLEET_ACCOUNT,
    rotate: Rotate = False,
    password_out: PasswordOut = None,
) -> None:
    """Issue the MQTT password of the fleet's own service account."""
    _check_password_out(password_out)
    with open_db(db) as sql:
        try:
            issued = issue_fleet_credentials(sql, actor=_actor(), username=username, rotate=rotate)
        except OwlgateError as err:
            _fail(str(err))
    _deliver(issued, password_out)


@broker_command.command("revoke")
def revoke(
    username: Annotated[str, typer.Argument(help="a gateway id or a service account name")],
    db: DbOption,
) -> None:
    """Revoke an account's MQTT password (write the files and reload the broker after)."""
    with open_db(db) as sql:
        try:
            revoke_credentials(sql, username, actor=_actor())
        except OwlgateError as err:
            _fail(str(err))
    typer.echo(f"{username}: broker credentials revoked")


@broker_command.command("list")
def listing(db: DbOption) -> None:
    """Every broker account, active or revoked (no secrets)."""
    with open_db(db) as sql:
        states = credential_states(sql)
    for state in states:
        status = "active" if state.active else "revoked"
        typer.echo(f"{state.username}\t{state.kind}\t{status}")


@broker_command.command("write-files")
def write_files(
    out: Annotated[Path, typer.Option("--out", help="folder for the Mosquitto files")],
    db: DbOption,
    reload_pid: Annotated[
        int | None,
        typer.Option("--reload-pid", help="send this Mosquitto process SIGHUP afterwards"),
    ] = None,
) -> None:
    """Write Mosquitto's password file, ACL file and a config snippet naming them."""
    with open_db(db) as sql:
        policy = load_policy(sql)
    try:
        files = write_mosquitto_files(policy, out)
        if reload_pid is not None:
            reload_mosquitto(reload_pid)
    except BrokerAuthError as err:
        _fail(err.message)
    typer.echo(f"password file: {files.password_file} ({files.accounts} accounts)")
    typer.echo(f"ACL file: {files.acl_file}")
    typer.echo(f"config snippet: {files.config_file}")
    if reload_pid is not None:
        typer.echo(f"sent SIGHUP to {reload_pid}")
