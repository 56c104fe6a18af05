"""The fleet's key vault: device secrets wrapped under a key-encryption key (KEK).

Every AppKey and session key the store keeps is wrapped with AES key wrap (RFC 3394) under a
256-bit KEK that never enters the database: it comes from a file (:meth:`KeyVault.from_file`)
or an environment variable (:meth:`KeyVault.from_env`). Each KEK has a short id, written into
every blob it wraps, so a database can say which KEK it needs and a rotation can tell what is
still wrapped under the old one.

A wrapped blob::

    +---------+--------+-----------------+-------------------------------+
    | version | id len | key id (ASCII)  | RFC 3394 wrapped key          |
    | 1 byte  | 1 byte | 1..32 bytes     | len(key) + 8 bytes            |
    +---------+--------+-----------------+-------------------------------+

Version 1 is the only one. The wrapped key carries RFC 3394's integrity check (section
2.2.3: the default initial value A6A6A6A6A6A6A6A6 must come back on unwrap), so a wrong KEK
under the right id is detected rather than giving garbage. A blob is never 16 bytes long
(at least 2 + 1 + 24), which is how a plaintext key from before the vault is told apart.

A KEK file is JSON: ``{"id": "k1", "kek": "<64 hex digits>"}``, mode 0600 or stricter. The
environment form is ``ID:HEX`` (e.g. ``OWLGATE_FLEET_KEK=k1:00112233...``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from owlgate.codecs.errors import OwlgateError

log = logging.getLogger(__name__)

BLOB_VERSION: Final = 1
KEK_LENGTH_BYTES: Final = 32
MAX_KEY_ID_LENGTH: Final = 32
#: RFC 3394 section 2: the wrapped data is n 64-bit blocks with n >= 2.
MIN_WRAPPED_KEY_BYTES: Final = 16
KEK_FILE_MODE: Final = 0o600
DEFAULT_KEK_ENV: Final = "OWLGATE_FLEET_KEK"
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


class VaultError(OwlgateError):
    """A KEK that cannot be loaded, a blob that is not a wrapped key, or a key the vault
    cannot unwrap; ``message`` says what was wrong (never showing key bytes)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WrongKekError(VaultError):
    """The blob was wrapped under a KEK this vault does not hold: ``kek_id`` is the id the
    blob names (the KEK needed), ``held`` the ids the vault has."""

    def __init__(self, message: str, *, kek_id: str, held: tuple[str, ...]) -> None:
        super().__init__(message)
        self.kek_id = kek_id
        self.held = held


class VaultRequiredError(VaultError):
    """A key was to be written or read by a store opened without a vault."""


def check_key_id(key_id: str) -> str:
    """``key_id`` if it is 1 to 32 letters, digits, ``.``, ``_`` or ``-`` starting with a
    letter or digit; VaultError otherwise."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise VaultError(
            f"a KEK id must be 1 to {MAX_KEY_ID_LENGTH} letters, digits, '.', '_' or '-' "
            f"starting with a letter or digit, got {key_id!r}"
        )
    return key_id


def _parse_kek(text: str, where: str) -> bytes:
    try:
        kek = bytes.fromhex(text.strip())
    except ValueError:
        raise VaultError(f"{where}: the KEK is not hex") from None
    if len(kek) != KEK_LENGTH_BYTES:
        raise VaultError(
            f"{where}: the KEK must be {KEK_LENGTH_BYTES} bytes "
            f"({2 * KEK_LENGTH_BYTES} hex digits), got {len(kek)}"
        )
    return kek


def kek_id_of(blob: bytes) -> str:
    """The id of the KEK a wrapped blob was made with; VaultError if it is not a blob."""
    if len(blob) < 3:
        raise VaultError(f"not a wrapped key: {len(blob)} bytes")
    if blob[0] != BLOB_VERSION:
        raise VaultError(f"not a wrapped key: format version {blob[0]}, expected {BLOB_VERSION}")
    id_length = blob[1]
    body = blob[2 + id_length :]
    if not 1 <= id_length <= MAX_KEY_ID_LENGTH or len(body) < MIN_WRAPPED_KEY_BYTES + 8:
        raise VaultError(f"not a wrapped key: key id length {id_length} in {len(blob)} bytes")
    if len(body) % 8:
        raise VaultError(f"not a wrapped key: {len(body)} wrapped bytes, not whole 64-bit blocks")
    try:
        return check_key_id(blob[2 : 2 + id_length].decode("ascii"))
    except UnicodeDecodeError:
        raise VaultError("not a wrapped key: the key id is not ASCII") from None


def is_wrapped(value: bytes) -> bool:
    """Whether ``value`` is a wrapped blob (rather than, say, a plaintext key)."""
    try:
        kek_id_of(value)
    except VaultError:
        return False
    return True


class KeyVault:
    """One current KEK (wraps and unwraps) and any older ones (unwrap only, during a
    rotation). ``keks`` maps id to 32-byte key."""

    __slots__ = ("_current_id", "_keks")

    def __init__(
        self, key_id: str, kek: bytes, *, older: Mapping[str, bytes] | None = None
    ) -> None:
        check_key_id(key_id)
        if len(kek) != KEK_LENGTH_BYTES:
            raise VaultError(f"KEK {key_id!r} must be {KEK_LENGTH_BYTES} bytes, got {len(kek)}")
        keks = {key_id: bytes(kek)}
        for old_id, old_kek in (older or {}).items():
            check_key_id(old_id)
            if len(old_kek) != KEK_LENGTH_BYTES:
                raise VaultError(f"KEK {old_id!r} must be {KEK_LENGTH_BYTES} bytes")
            if old_id in keks and keks[old_id] != old_kek:
                raise VaultError(f"two different KEKs named {old_id!r}")
            keks.setdefault(old_id, bytes(old_kek))
        self._current_id = key_id
        self._keks = keks

    def __repr__(self) -> str:
        return f"KeyVault(current={self._current_id!r}, ids={self.key_ids!r})"

    @property
    def key_id(self) -> str:
        """The id of the KEK new blobs are wrapped under."""
        return self._current_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every KEK id this vault can unwrap, the current one first."""
        return (self._current_id, *(k for k in self._keks if k != self._current_id))

    def with_older(self, others: Iterable[KeyVault]) -> KeyVault:
        """This vault, also able to unwrap what ``others`` wrapped (for a rotation)."""
        older: dict[str, bytes] = {}
        for other in others:
            older.update(other._keks)
        older.update(
            (key_id, kek) for key_id, kek in self._keks.items() if key_id != self._current_id
        )
        return KeyVault(self._current_id, self._keks[self._current_id], older=older)

    def wrap(self, key: bytes) -> bytes:
        """``key`` (16 bytes or more, a multiple of 8) wrapped under the current KEK."""
        if len(key) < MIN_WRAPPED_KEY_BYTES or len(key) % 8:
            raise VaultError(
                f"a key to wrap must be at least {MIN_WRAPPED_KEY_BYTES} bytes in whole "
                f"64-bit blocks (RFC 3394 section 2), got {len(key)} bytes"
            )
        key_id = self._current_id.encode("ascii")
        wrapped = aes_key_wrap(self._keks[self._current_id], bytes(key))
        return bytes([BLOB_VERSION, len(key_id)]) + key_id + wrapped

    def unwrap(self, blob: bytes) -> bytes:
        """The key in ``blob``: WrongKekError when the blob names a KEK this vault does not
        hold or the KEK under that id fails RFC 3394's integrity check; VaultError when the
        blob is not one."""
        key_id = kek_id_of(blob)
        kek = self._keks.get(key_id)
        if kek is None:
            raise WrongKekError(
                f"the key was wrapped under KEK {key_id!r}; this vault holds "
                f"{', '.join(repr(k) for k in self.key_ids)}",
                kek_id=key_id,
                held=self.key_ids,
            )
        try:
            return aes_key_unwrap(kek, blob[2 + len(key_id) :])
        except InvalidUnwrap:
            # RFC 3394 section 2.2.3: the integrity check failed. The id matched, so the KEK
            # under that id is not the one the blob was made with.
            raise WrongKekError(
                f"KEK {key_id!r} of this vault is not the one the key was wrapped under "
                "(integrity check failed)",
                kek_id=key_id,
                held=self.key_ids,
            ) from None

    # --- loading -------------------------------------------------------------------------------

    @classmethod
    def from_env(
        cls, name: str = DEFAULT_KEK_ENV, environ: Mapping[str, str] | None = None
    ) -> KeyVault:
        """The KEK from the environment variable ``name``, written ``ID:HEX``."""
        value = (os.environ if environ is None else environ).get(name)
        if value is None:
            raise VaultError(f"environment variable {name} is not set")
        key_id, colon, hex_text = value.partition(":")
        if not colon:
            raise VaultError(f"{name} must be ID:HEX (e.g. k1:<64 hex digits>), no ':' found")
        try:
            check_key_id(key_id)
        except VaultError as err:
            raise VaultError(f"{name}: {err.message}") from None
        return cls(key_id, _parse_kek(hex_text, name))

    @classmethod
    def from_file(cls, path: str | Path) -> KeyVault:
        """The KEK from a JSON file ``{"id": ..., "kek": ...}``, which must be readable by
        its owner only (mode 0600 or stricter)."""
        path = Path(path)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise VaultError(f"KEK file {path}: {err.strerror or err}") from None
        if mode & 0o077:
            raise VaultError(
                f"KEK file {path} has mode {mode:04o}: others can read it; run `chmod 600 {path}`"
            )
        try:
            document = json.loads(text)
        except ValueError:
            # The parser's message could quote the file, and the file holds a key.
            raise VaultError(f"KEK file {path}: not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("kek"), str):
            raise VaultError(f'KEK file {path}: expected {{"id": "...", "kek": "<hex>"}}')
        key_id = document.get("id")
        if not isinstance(key_id, str):
            raise VaultError(f"KEK file {path}: 'id' must be text")
        try:
            check_key_id(key_id)
        except VaultError as err:
            raise VaultError(f"KEK file {path}: {err.message}") from None
        return cls(key_id, _parse_kek(document["kek"], f"KEK file {path}"))

    @classmethod
    def generate_file(cls, path: str | Path, key_id: str) -> KeyVault:
        """A fresh random KEK named ``key_id``, written to ``path`` with mode 0600. Never
        overwrites: VaultError if ``path`` exists."""
        check_key_id(key_id)
        path = Path(path)
        kek = secrets.token_bytes(KEK_LENGTH_BYTES)
        document = json.dumps({"id": key_id, "kek": kek.hex()}) + "\n"
        try:
            # O_EXCL: never replace a KEK, which would make every key wrapped under it
            # unreadable; created 0600 from the start so it never exists world-readable.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEK_FILE_MODE)
        except FileExistsError:
            raise VaultError(f"KEK file {path} already exists; it is never overwritten") from None
        except OSError as err:
            raise VaultError(f"KEK file {path}: {err.strerror or err}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(document)
        os.chmod(path, KEK_FILE_MODE)
        log.info("wrote a new KEK %r to %s", key_id, path)
        return cls(key_id, kek)
