"""What every ``owlgate fleet`` command module shares: the exit code and one-line error for
bad input, the ``--db`` option, the actor the audit log names for the command line, and
opening the database for commands that need no key vault.

A module of its own because :mod:`owlgate.fleet.cli` imports the command modules
(``cli_auth``, ``cli_broker``, ``cli_data``) to mount them, so they cannot import it at the top.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Final, NoReturn

import typer

from owlgate.codecs.errors import OwlgateError

from . import schema
from .sql import Sql, connect, is_postgres_url, redacted

EXIT_BAD_INPUT: Final = 2

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        metavar="FILE|URL",
        help="the fleet database: a SQLite file, or a postgresql://USER@HOST:PORT/NAME URL "
        "(password from PGPASSWORD or ~/.pgpass)",
    ),
]


def fail(message: str) -> NoReturn:
    """``error: message`` on stderr and exit 2: bad input, said in one line."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def shown_db(db: str | Path) -> str:
    """``db`` for messages: a URL without its password."""
    return redacted(str(db)) if is_postgres_url(db) else str(db)


def cli_actor() -> str:
    """Who the audit log names for a change made from this command line."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}"


@contextmanager
def open_db(db: str) -> Iterator[Sql]:
    """The database at ``db``, migrated; a one-line error and exit 2 when it cannot be
    opened. A SQLite file must exist already (a typo must not create an empty fleet)."""
    if not is_postgres_url(db) and db != ":memory:" and not Path(db).is_file():
        fail(
            f"--db {db}: no such database (no fleet database there yet: "
            "`owlgate fleet seed` or `serve` creates one)"
        )
    try:
        sql = connect(db if is_postgres_url(db) else Path(db))
        schema.apply(sql)
    except OwlgateError as err:
        fail(f"--db {shown_db(db)}: {err}")
    try:
        yield sql
    finally:
        sql.close()
