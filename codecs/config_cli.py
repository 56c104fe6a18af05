"""``owlgate config``: make, sign and verify gateway configuration documents, offline.

Nothing here talks to a fleet: the config signing key can live on an air-gapped machine, where
``owlgate config keygen`` makes it, ``owlgate config sign`` turns a ``doc.json`` into the signed
COSE bytes, and ``owlgate config verify`` checks signed bytes as a gateway would (pinned key,
target, anti-rollback) before they are carried to the fleet. The document format is
``docs/formats/config-document.md``.

Exit codes: 0 done, 1 a document refused (``rejected (REASON): message`` on stderr, REASON as
the gateway would report it), 2 unusable input (one ``error:`` line).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Final, NoReturn

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from .cli import fail
from .configdoc import ConfigDocumentError, ConfigRejected, from_json, sign_config, to_json
from .configdoc import verify_config as verify_document
from .signed import key_id

EXIT_REJECTED: Final = 1
PRIVATE_MODE: Final = 0o600
PUBLIC_MODE: Final = 0o644
_GATEWAY_ID: Final = re.compile(r"[0-9a-f]{16}")

config_command = typer.Typer(
    name="config",
    help="Gateway configuration documents: keygen, sign and verify, offline (no fleet needed).",
    no_args_is_help=True,
    add_completion=False,
)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        fail(f"cannot read {what} {path}: {err.strerror or err}")


def _private_key(path: Path) -> Ed25519PrivateKey:
    data = _read(path, "the key")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        fail(f"{path} is not an unencrypted PKCS#8 PEM private key")
    if not isinstance(key, Ed25519PrivateKey):
        fail(f"{path} is not an Ed25519 private key")
    return key


def _public_key(path: Path) -> Ed25519PublicKey:
    data = _read(path, "the public key")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        fail(f"{path} is not a PEM public key")
    if not isinstance(key, Ed25519PublicKey):
        fail(f"{path} is not an Ed25519 public key")
    return key


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: a signing key is never silently replaced; the mode is set before any byte lands.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        fail(f"{path} exists: remove it first, or choose another --out")
    except OSError as err:
        fail(f"cannot create {path}: {err.strerror or err}")
    with os.fdopen(fd, "wb") as out:
        out.write(data)


@config_command.command("keygen")
def keygen(
    out: Annotated[
        Path, typer.Option("--out", metavar="FILE", help="private key file (FILE.pub: public)")
    ],
) -> None:
    """Make a config signing key: FILE (PKCS#8 PEM, mode 0600) and FILE.pub (public PEM)."""
    key = Ed25519PrivateKey.generate()
    public = out.with_name(out.name + ".pub")
    if public.exists():
        fail(f"{public} exists: remove it first, or choose another --out")
    _write_new(
        out, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), PRIVATE_MODE
    )
    _write_new(
        public,
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        PUBLIC_MODE,
    )
    typer.echo(f"wrote {out} and {public}; key id {key_id(key).hex()}", err=True)


@config_command.command("sign")
def sign(
    document: Annotated[
        Path, typer.Argument(metavar="DOC.json", help="the document in its JSON form")
    ],
    key_file: Annotated[
        Path, typer.Option("--key", metavar="FILE", help="the config signing key (PKCS#8 PEM)")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE", help="write the COSE bytes here, not to stdout"),
    ] = None,
) -> None:
    """Sign DOC.json: the COSE_Sign1 bytes go to stdout (or --out FILE)."""
    key = _private_key(key_file)
    try:
        doc = from_json(_read(document, "the document"))
    except ConfigDocumentError as err:
        fail(f"{document}: {err.message}")
    message = sign_config(doc, key)
    if out is None:
        sys.stdout.buffer.write(message)
        sys.stdout.buffer.flush()
    else:
        try:
            out.write_bytes(message)
        except OSError as err:
            fail(f"cannot write {out}: {err.strerror or err}")
    typer.echo(
        f"signed: seq {doc.seq}, hash {doc.content_hash.hex()}, target {doc.target_text}, "
        f"key id {key_id(key).hex()}, {len(message)} bytes",
        err=True,
    )


def _reject(err: ConfigRejected) -> NoReturn:
    typer.echo(str(err), err=True)
    raise typer.Exit(EXIT_REJECTED)


@config_command.command("verify")
def verify(
    message_file: Annotated[
        Path, typer.Argument(metavar="DOC.cose", help="a signed configuration document")
    ],
    pubkey: Annotated[
        list[Path],
        typer.Option(
            "--pubkey", metavar="FILE", help="a trusted public key (PEM); repeat during a rotation"
        ),
    ],
    gateway: Annotated[
        str | None,
        typer.Option("--gateway", metavar="ID", help="refuse a document for another gateway"),
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", metavar="NAME", help="a group this gateway is in (repeatable)"),
    ] = None,
    last_seq: Annotated[
        int | None,
        typer.Option("--last-seq", metavar="N", min=0, help="refuse seq <= N (anti-rollback)"),
    ] = None,
) -> None:
    """Verify DOC.cose as a gateway would; print the document as JSON."""
    keys = {}
    for path in pubkey:
        key = _public_key(path)
        keys[key_id(key)] = key
    gateway_id = None
    if gateway is not None:
        if not _GATEWAY_ID.fullmatch(gateway):
            fail(f"--gateway must be 16 lowercase hex digits, got {gateway!r}")
        gateway_id = bytes.fromhex(gateway)
    data = _read(message_file, "the document")
    try:
        doc = verify_document(
            data, keys, gateway_id=gateway_id, groups=tuple(group or ()), last_seq=last_seq
        )
    except ConfigRejected as err:
        _reject(err)
    sys.stdout.write(to_json(doc))
    typer.echo(
        f"verified: seq {doc.seq}, hash {doc.content_hash.hex()}, target {doc.target_text}",
        err=True,
    )
