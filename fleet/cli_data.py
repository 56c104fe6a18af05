"""``owlgate fleet data``: bulk import and export of the registry, readings export, retention.

- ``import FILE``: gateways and devices from CSV or JSON, row by row (:mod:`owlgate.fleet.bulk`);
  every rejected row is printed with its line and field, the others are registered. Exit 1
  when a row was rejected, 2 when the file or an option is unusable.
- ``export``: the registry as CSV or JSON, device keys only with ``--with-keys`` (recorded in
  the audit log; a file given with ``--output`` is then created with mode 0600).
- ``readings``: readings (and rollups) as SenML JSON, SenML CBOR or CSV, streamed to a file or
  standard output (:mod:`owlgate.fleet.export`).
- ``retention``: roll readings older than ``--raw-days`` up and delete rollups older than
  ``--rollup-days``, once (``owlgate fleet serve`` can run it periodically).

Commands that touch device keys (``import``, ``export --with-keys``) open the store with its
key vault (``--kek-file`` / ``--kek-env``, as the other fleet commands); the others need none.
The command line acts with every right, as whoever can open the database has them: the audit
log names the actor ``cli:<login name>``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated

import typer

from owlgate.codecs.errors import OwlgateError

from .bulk import BulkFormat, detect_format, export_registry, import_registry
from .cli_common import DbOption, cli_actor
from .cli_common import fail as _fail
from .export import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUCKET_S,
    ExportFormat,
    ReadingsQuery,
    RetentionPolicy,
    export_stream,
    parse_time,
    run_retention,
)
from .sql import is_postgres_url
from .store import Store

EXIT_REJECTED = 1

data_command = typer.Typer(
    name="data",
    help="Bulk import/export of gateways and devices, readings export (SenML, CSV), retention.",
    no_args_is_help=True,
    add_completion=False,
)

KekFile = Annotated[
    Path | None,
    typer.Option("--kek-file", metavar="FILE", help="the key-encryption key (JSON, mode 0600)"),
]
KekEnv = Annotated[
    str | None,
    typer.Option("--kek-env", metavar="NAME", help="read the KEK from this variable (ID:HEX)"),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", metavar="FILE", help="write here [standard output]"),
]


@contextmanager
def _store(db: str, *, kek_file: Path | None, kek_env: str | None, keys: bool) -> Iterator[Store]:
    # Imported here: owlgate.fleet.cli mounts this module, so it cannot be imported at the top.
    from . import cli

    if not is_postgres_url(db) and db != ":memory:" and not Path(db).is_file():
        _fail(f"--db {db}: no such database (`owlgate fleet seed` or `serve` creates one)")
    vault = cli.load_vault(db, kek_file, kek_env) if keys else None
    store = cli._open_store(db, vault)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def _output(path: Path | None, *, private: bool) -> Iterator[IO[bytes]]:
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        # A file with keys is 0600 from the moment it exists.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    except OSError as err:
        _fail(f"--output {path}: {err.strerror or err}")
    if private:
        os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        yield handle


@data_command.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="CSV or JSON file of gateways and devices")],
    db: DbOption,
    format: Annotated[
        str | None, typer.Option("--format", help="csv or json [from the file name]")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check every row, register nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    kek_file: KekFile = None,
    kek_env: KekEnv = None,
) -> None:
    """Register the gateways and devices of FILE; print every rejected row."""
    try:
        fmt: BulkFormat = _bulk_format(format) if format else detect_format(file.name)
        text = file.read_text(encoding="utf-8")
    except OwlgateError as err:
        _fail(str(err))
    except (OSError, UnicodeDecodeError) as err:
        _fail(f"{file}: {getattr(err, 'strerror', None) or err}")
    with _store(db, kek_file=kek_file, kek_env=kek_env, keys=True) as store:
        try:
            report = import_registry(
                store, text, fmt, actor=cli_actor(), allow_gateways=True, dry_run=dry_run
            )
        except OwlgateError as err:
            _fail(f"{file}: {err}")
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=1))
    else:
        verb = "would register" if dry_run else "registered"
        typer.echo(
            f"{file}: {report.rows} rows; {verb} {len(report.gateways_created)} gateways and "
            f"{len(report.devices_created)} devices; {report.rejected_rows} rows rejected"
        )
        for rejection in report.rejected:
            where = f"{rejection.field}: " if rejection.field else ""
            typer.echo(f"{file}: {rejection.location}: {where}{rejection.message}", err=True)
    if report.rejected:
        raise typer.Exit(EXIT_REJECTED)


def _bulk_format(text: str) -> BulkFormat:
    if text == "csv":
        return "csv"
    if text == "json":
        return "json"
    _fail(f"--format must be csv or json, got {text!r}")


@data_command.command("export")
def export_command(
    db: DbOption,
    format: Annotated[str, typer.Option("--format", help="csv or json")] = "json",
    with_keys: Annotated[
        bool,
        typer.Option("--with-keys", help="include the device keys (recorded in the audit log)"),
    ] = False,
    output: OutputOption = None,
    kek_file: KekFile = None,
    kek_env: KekEnv = None,
) -> None:
    """Write every gateway and device as an import file."""
    fmt = _bulk_format(format)
    with _store(db, kek_file=kek_file, kek_env=kek_env, keys=with_keys) as store:
        try:
            text = export_registry(store, fmt, with_keys=with_keys, actor=cli_actor())
        except OwlgateError as err:
            _fail(f"--db {db}: {err}")
    with _output(output, private=with_keys) as out:
        out.write(text.encode("utf-8"))
    if output is not None:
        typer.echo(f"wrote {output}" + (" (mode 0600: it holds device keys)" if with_keys else ""))


_EXPORT_FORMATS: tuple[ExportFormat, ...] = ("senml-json", "senml-cbor", "csv")


@data_command.command("readings")
def readings_command(
    db: DbOption,
    format: Annotated[
        str, typer.Option("--format", help="senml-json, senml-cbor or csv")
    ] = "senml-json",
    dev_eui: Annotated[
        list[str] | None,
        typer.Option("--dev-eui", metavar="EUI", help="only this device (repeatable)"),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="only devices of this profile")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="from this time (ISO 8601 or Unix s)")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="before this time (ISO 8601 or Unix s)")
    ] = None,
    rollups: Annotated[
        bool, typer.Option("--rollups/--no-rollups", help="include the rollups of old readings")
    ] = True,
    output: OutputOption = None,
) -> None:
    """Export readings as SenML (JSON or CBOR) or CSV, streamed."""
    fmt = next((f for f in _EXPORT_FORMATS if f == format), None)
    if fmt is None:
        _fail(f"--format must be one of {', '.join(_EXPORT_FORMATS)}, got {format!r}")
    try:
        query = ReadingsQuery(
            dev_euis=tuple(dev_eui or ()),
            profile_id=profile,
            since=None if since is None else parse_time(since, "--since"),
            until=None if until is None else parse_time(until, "--until"),
            rollups=rollups,
        )
    except OwlgateError as err:
        _fail(str(err))
    with (
        _store(db, kek_file=None, kek_env=None, keys=False) as store,
        _output(output, private=False) as out,
    ):
        try:
            for chunk in export_stream(store.sql, query, fmt):
                out.write(chunk)
        except OwlgateError as err:
            _fail(str(err))


@data_command.command("retention")
def retention_command(
    db: DbOption,
    raw_days: Annotated[
        float, typer.Option("--raw-days", metavar="N", help="keep readings raw this long")
    ],
    rollup_days: Annotated[
        float | None,
        typer.Option("--rollup-days", metavar="M", help="keep rollups this long [for ever]"),
    ] = None,
    bucket_s: Annotated[
        int, typer.Option("--bucket-s", help="rollup bucket, seconds (divides a day)")
    ] = DEFAULT_BUCKET_S,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="most readings per transaction")
    ] = DEFAULT_BATCH_SIZE,
) -> None:
    """Roll readings older than N days up (min/mean/max/count per bucket); delete rollups
    older than M days."""
    try:
        policy = RetentionPolicy(
            raw_days=raw_days, rollup_days=rollup_days, bucket_s=bucket_s, batch_size=batch_size
        )
    except OwlgateError as err:
        _fail(str(err))
    with _store(db, kek_file=None, kek_env=None, keys=False) as store:
        try:
            result = run_retention(store.sql, policy, now=time.time())
        except OwlgateError as err:
            _fail(f"--db {db}: {err}")
    typer.echo(
        f"rolled up {result.readings_rolled_up} readings of {result.devices} devices into "
        f"{result.buckets_written} buckets ({result.transactions} transactions); deleted "
        f"{result.rollups_deleted} rollups"
    )
