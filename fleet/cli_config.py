"""``owlgate fleet config-key``: the config signing key the fleet holds.

- ``generate``: make an Ed25519 config signing key, store it wrapped under the vault's KEK
  (:mod:`owlgate.fleet.vault`) and sign every configuration document with it from now on;
- ``import --key FILE``: a PEM private key (PKCS#8, unencrypted, as ``owlgate config keygen``
  writes it) is stored wrapped and signs from now on; a PEM public key is trusted for
  documents signed offline with its private key (``POST /api/v1/config/documents``);
- ``show``: every config key the fleet knows, with its key id and public key. A private key
  is never printed.

Without a config key the fleet signs with the fleet signing key of ``owlgate fleet serve
--signing-key``. Each change is recorded in the audit log (``config.key_generated``,
``config.key_imported``), actor ``cli:<login name>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from owlgate.codecs.errors import OwlgateError

from .cli_common import DbOption, cli_actor, shown_db
from .cli_common import fail as _fail
from .rollouts import ConfigKey, config_keys, generate_config_key, import_config_key
from .sql import is_postgres_url
from .store import Store

#: A PEM key file is a few hundred bytes; anything much larger is not one.
MAX_KEY_FILE_BYTES = 16 * 1024

config_key_command = typer.Typer(
    name="config-key",
    help="The config signing key the fleet holds (wrapped under the KEK): generate, import, show.",
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
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]


@contextmanager
def _store(db: str, kek_file: Path | None, kek_env: str | None, *, vault: bool) -> Iterator[Store]:
    # Imported here: owlgate.fleet.cli mounts this module, so it cannot be imported at the top.
    from . import cli

    if not is_postgres_url(db) and db != ":memory:" and not Path(db).is_file():
        _fail(f"--db {db}: no such database (`owlgate fleet seed` or `serve` creates one)")
    store = cli._open_store(db, cli.load_vault(db, kek_file, kek_env) if vault else None)
    try:
        yield store
    finally:
        store.close()


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key_json(key: ConfigKey) -> dict[str, object]:
    return {
        "key_id": key.key_id,
        "public_key": key.public_key.hex(),
        "signs": key.can_sign,
        "active": key.active,
        "source": key.source,
        "created": _when(key.created),
    }


def _describe(key: ConfigKey) -> str:
    if key.active:
        role = "signs documents"
    elif key.can_sign:
        role = "held, no longer signing"
    else:
        role = "verifies uploaded documents"
    return (
        f"config key {key.key_id} ({key.source}, {role}, since {_when(key.created)})\n"
        f"  public key (raw, for next_key): {key.public_key.hex()}\n"
        + "".join(f"  {line}\n" for line in key.public_pem.splitlines())
    ).rstrip("\n")


@config_key_command.command("generate")
def generate(
    db: DbOption,
    kek_file: KekFile = None,
    kek_env: KekEnv = None,
    as_json: JsonOption = False,
) -> None:
    """Make a config signing key, stored wrapped under the KEK; it signs from now on."""
    with _store(db, kek_file, kek_env, vault=True) as store:
        if store.vault is None:
            _fail("a config key is stored wrapped: give the KEK with --kek-file or --kek-env")
        try:
            key = generate_config_key(store.sql, store.vault, actor=cli_actor())
        except OwlgateError as err:
            _fail(f"--db {shown_db(db)}: {err}")
    typer.echo(json.dumps(_key_json(key)) if as_json else _describe(key))


@config_key_command.command("import")
def import_key(
    db: DbOption,
    key_file: Annotated[
        Path,
        typer.Option(
            "--key",
            metavar="FILE",
            help="a PEM Ed25519 key: private (PKCS#8, signs from now on) or public (verifies "
            "documents signed offline)",
        ),
    ],
    kek_file: KekFile = None,
    kek_env: KekEnv = None,
    as_json: JsonOption = False,
) -> None:
    """Import a config key: a private key signs from now on, a public key verifies uploads."""
    try:
        size = key_file.stat().st_size
        if size > MAX_KEY_FILE_BYTES:
            _fail(f"--key {key_file}: {size} bytes is too large for a PEM key file")
        pem = key_file.read_bytes()
    except OSError as err:
        _fail(f"--key {key_file}: {err.strerror or err}")
    private = b"PRIVATE KEY" in pem
    with _store(db, kek_file, kek_env, vault=private) as store:
        try:
            key = import_config_key(store.sql, store.vault, pem, actor=cli_actor())
        except OwlgateError as err:
            _fail(f"--key {key_file}: {err}")
    typer.echo(json.dumps(_key_json(key)) if as_json else _describe(key))


@config_key_command.command("show")
def show(db: DbOption, as_json: JsonOption = False) -> None:
    """Every config key the fleet knows: key id, public key, whether it signs."""
    with _store(db, None, None, vault=False) as store:
        keys = config_keys(store.sql)
    if as_json:
        typer.echo(json.dumps([_key_json(key) for key in keys], indent=1))
        return
    if not keys:
        typer.echo(
            "no config key: the fleet signs with its fleet signing key (serve --signing-key); "
            "`owlgate fleet config-key generate` makes one"
        )
        return
    for key in keys:
        typer.echo(_describe(key))
