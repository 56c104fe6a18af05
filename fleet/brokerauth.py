"""Broker access: per-gateway MQTT credentials, each gateway confined to its own topics.

Every gateway logs in to the broker with its id (16 hex digits) as user name and a random
password the fleet issues once; the fleet's own MQTT clients log in as the service account
:data:`FLEET_ACCOUNT`. Only a salted hash of each password is stored, in Mosquitto's own
password-file format (``$7$``: PBKDF2-HMAC-SHA512, the format ``mosquitto_passwd`` writes
since Mosquitto 2.0), so the same hash serves both checkers: Mosquitto's ``password_file``
and the embedded broker (:mod:`owlgate.fleet.broker`). A password is shown
exactly once, when it is issued or rotated; a lost one is replaced by rotating it.

The ACL follows the topics the edge and the fleet use (``edge/uplink.py``, ``edge/agent.py``,
``fleet/control.py``, the architecture's topic list) under
``owlgate/v1/gw/<gateway-id>/``:

- a gateway **writes** only its own ``telemetry``, ``health``, ``state`` (retained, and its
  Last Will), ``join`` and ``config/status``; it **reads** only its own ``join/accept``,
  ``keys``, ``config`` and ``down``, the topics the fleet publishes to it;
- the fleet account reads ``owlgate/v1/gw/#`` and writes the fleet-to-gateway topics of every
  gateway (``owlgate/v1/gw/+/join/accept`` ...).

Nothing else is allowed, so one gateway's credentials can neither speak on another gateway's
topics nor read the sessions sealed for it (the fleet also verifies every signature, so a
misconfigured broker still cannot let one gateway speak for another).

For Mosquitto, :func:`write_mosquitto_files` writes the ``password_file`` (mode 0600), the
``acl_file`` (0640) and a configuration snippet that names them, each atomically (a reader
never sees half a file); :func:`reload_mosquitto` sends the running broker SIGHUP, on which
Mosquitto re-reads both files (a client keeps its connection until it reconnects). The
embedded broker takes a :class:`PolicyHolder` and checks the same hashes and the same ACL.

The tables: ``broker_credentials`` (migration ``0400_broker_credentials``), one row per
account, its hash NULL once revoked. Issue, rotation and revocation are recorded in the audit
log (``broker.credentials_issued``, ``broker.credentials_revoked``) in the same transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Final, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from owlgate.codecs.errors import OwlgateError

from .audit import record_event
from .auth import Principal, requires, sql_of
from .schema import migration
from .sql import Sql
from .store import ConflictError, InvalidError, NotFoundError

log = logging.getLogger(__name__)

#: The user name of the fleet's own MQTT clients (ingest, control, rollouts).
FLEET_ACCOUNT: Final = "owlgate-fleet"
TOPIC_PREFIX: Final = "owlgate/v1/gw/"
#: What a gateway publishes under its prefix (edge/uplink.py, edge/agent.py, ARCHITECTURE.md).
GATEWAY_WRITES: Final = ("telemetry", "health", "state", "join", "config/status")
#: What the fleet publishes to a gateway under its prefix (fleet/control.py, ARCHITECTURE.md).
GATEWAY_READS: Final = ("join/accept", "keys", "config", "down")
#: Mosquitto's ``$7$`` hash: PBKDF2-HMAC-SHA512 with a 12-byte salt and a 64-byte result
#: (mosquitto ``src/password_mosq.c``). The passwords are 192 random bits, so the iteration
#: count guards nothing a guess could reach; Mosquitto's own default (101) keeps a CONNECT
#: cheap for the broker, which hashes on every login.
HASH_ITERATIONS: Final = 101
SALT_BYTES: Final = 12
HASH_BYTES: Final = 64
PASSWORD_BYTES: Final = 24
PASSWORD_FILE_MODE: Final = 0o600
ACL_FILE_MODE: Final = 0o640
PASSWORD_FILE_NAME: Final = "owlgate.passwd"
ACL_FILE_NAME: Final = "owlgate.acl"
CONFIG_FILE_NAME: Final = "owlgate-broker.conf"
_GATEWAY_ID: Final = re.compile(r"^[0-9a-f]{16}$")
_ACCOUNT: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Kind = Literal["gateway", "fleet"]
Access = Literal["read", "write"]
Action = Literal["publish", "subscribe", "receive"]


class BrokerAuthError(OwlgateError):
    """Broker credentials that cannot be issued, or broker files that cannot be written."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- hashes --------------------------------------------------------------------------------------


def new_password() -> str:
    """A random password (URL-safe text, 192 bits)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = HASH_ITERATIONS
) -> str:
    """``password`` hashed as Mosquitto's password file holds it: ``$7$iterations$salt$hash``
    with salt and hash in standard base64."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches the ``$7$`` hash ``encoded`` (constant-time compare); a
    hash in any other form matches nothing."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    if not 1 <= iterations <= 10_000_000 or not salt or not expected:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- the ACL -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AclRule:
    """One line of the ACL: ``read`` (subscribe and receive) or ``write`` (publish) on a topic
    filter, with MQTT's ``+`` and ``#`` wildcards."""

    access: Access
    pattern: str


def gateway_rules(gateway_id: str) -> tuple[AclRule, ...]:
    """What the gateway ``gateway_id`` may do: write its own uplink topics, read its own
    downlink topics."""
    prefix = f"{TOPIC_PREFIX}{gateway_id}/"
    return tuple(AclRule("write", prefix + kind) for kind in GATEWAY_WRITES) + tuple(
        AclRule("read", prefix + kind) for kind in GATEWAY_READS
    )


def fleet_rules() -> tuple[AclRule, ...]:
    """What the fleet account may do: read every gateway topic, write every gateway's
    downlink topics."""
    writes = tuple(AclRule("write", f"{TOPIC_PREFIX}+/{kind}") for kind in GATEWAY_READS)
    return (AclRule("read", f"{TOPIC_PREFIX}#"), *writes)


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether the topic name ``topic`` matches the filter ``pattern`` (MQTT 3.1.1 section
    4.7: ``+`` one level, ``#`` the rest, including the parent level). A topic starting with
    ``$`` is not matched by a leading wildcard (section 4.7.2)."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    wanted = pattern.split("/")
    levels = topic.split("/")
    for index, part in enumerate(wanted):
        if part == "#":
            return True
        if index >= len(levels):
            return False
        if part != "+" and part != levels[index]:
            return False
    return len(wanted) == len(levels)


def filter_within(subscription: str, pattern: str) -> bool:
    """Whether every topic the filter ``subscription`` can match is matched by ``pattern``:
    a subscription to ``owlgate/v1/gw/+/keys`` is not within ``owlgate/v1/gw/ab/keys``, as in
    Mosquitto, which checks a subscription against the ACL with its wildcards taken
    literally."""
    wanted = pattern.split("/")
    levels = subscription.split("/")
    for index, part in enumerate(wanted):
        if part == "#":
            return True
        if index >= len(levels):
            return False
        level = levels[index]
        if level == "#":
            return False
        if part != "+" and (level == "+" or level != part):
            return False
    return len(wanted) == len(levels)


def rule_allows(rules: Iterable[AclRule], action: Action, topic: str) -> bool:
    """Whether ``rules`` allow ``action`` on ``topic`` (a topic filter for ``subscribe``)."""
    if action == "subscribe":
        return any(rule.access == "read" and filter_within(topic, rule.pattern) for rule in rules)
    access: Access = "read" if action == "receive" else "write"
    return any(rule.access == access and topic_matches(rule.pattern, topic) for rule in rules)


# --- accounts and the policy ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """One broker account that may log in: its user name, kind and password hash."""

    username: str
    kind: Kind
    password_hash: str = field(repr=False)
    issued_at: float

    @property
    def rules(self) -> tuple[AclRule, ...]:
        return gateway_rules(self.username) if self.kind == "gateway" else fleet_rules()


@dataclass(frozen=True, slots=True)
class BrokerPolicy:
    """Who may log in and what each may do. An empty policy is *unconfigured*: the embedded
    broker then lets every client in, as before credentials existed."""

    accounts: Mapping[str, Account] = field(default_factory=dict)

    @property
    def configured(self) -> bool:
        return bool(self.accounts)

    def authenticate(self, username: str | None, password: str | bytes | None) -> bool:
        """Whether ``username`` and ``password`` log in (anonymous never does)."""
        if not username or password is None:
            return False
        account = self.accounts.get(username)
        if account is None:
            return False
        text = password.decode("utf-8", "replace") if isinstance(password, bytes) else password
        return verify_password(text, account.password_hash)

    def allows(self, username: str | None, action: Action, topic: str) -> bool:
        """Whether the account ``username`` may ``action`` on ``topic``."""
        account = self.accounts.get(username or "")
        return account is not None and rule_allows(account.rules, action, topic)


class PolicyHolder:
    """The policy a running embedded broker enforces; :meth:`update` (or :meth:`reload` from
    the database) after credentials change, the counterpart of SIGHUP for Mosquitto.

    ``extra_accounts`` are added to every policy the holder is given, and kept in memory
    only: :func:`ephemeral_fleet_account` makes one for the fleet process that runs the
    embedded broker, so its own services can log in once gateways have credentials, without
    a password stored anywhere.
    """

    def __init__(
        self, policy: BrokerPolicy | None = None, *, extra_accounts: Iterable[Account] = ()
    ) -> None:
        self._extra = {account.username: account for account in extra_accounts}
        self._policy = self._merged(BrokerPolicy() if policy is None else policy)
        #: Logins refused and publishes or subscriptions denied, for the logs and tests.
        self.refused_logins = 0
        self.denied = 0

    def _merged(self, policy: BrokerPolicy) -> BrokerPolicy:
        # No credentials issued: the broker stays open (the demo default), whatever the
        # extra accounts; a client logging in with one is let in like everyone else.
        if not self._extra or not policy.configured:
            return policy
        return BrokerPolicy({**policy.accounts, **self._extra})

    @property
    def policy(self) -> BrokerPolicy:
        return self._policy

    def update(self, policy: BrokerPolicy) -> None:
        # One reference swap: the broker's event loop reads whole policies, never half one.
        self._policy = self._merged(policy)
        log.info("broker policy updated: %d accounts", len(self._policy.accounts))

    def reload(self, sql: Sql) -> BrokerPolicy:
        self.update(load_policy(sql))
        return self._policy


def ephemeral_fleet_account(username: str = FLEET_ACCOUNT) -> tuple[Account, str]:
    """A fleet account with a fresh random password, for :class:`PolicyHolder`'s
    ``extra_accounts``: the account and its password, which exists in this process only."""
    password = new_password()
    return Account(username, "fleet", hash_password(password), time.time()), password


# --- the database --------------------------------------------------------------------------------


@migration("0400_broker_credentials")
def _broker_credentials(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE broker_credentials ("
            " username TEXT PRIMARY KEY,"
            " kind TEXT NOT NULL CHECK (kind IN ('gateway', 'fleet')),"
            " password_hash TEXT,"
            " issued_at {float} NOT NULL,"
            " revoked_at {float})"
        )
    )


@dataclass(frozen=True, slots=True)
class IssuedCredentials:
    """A password just issued or rotated: the only time it exists outside the account's
    client. ``repr`` hides it."""

    username: str
    kind: Kind
    password: str = field(repr=False)
    issued_at: float
    rotated: bool


@dataclass(frozen=True, slots=True)
class CredentialState:
    """What the fleet knows of an account, without any secret."""

    username: str
    kind: Kind
    active: bool
    issued_at: float
    revoked_at: float | None


def _gateway_id(value: str) -> str:
    gid = value.strip().lower()
    if not _GATEWAY_ID.match(gid):
        raise InvalidError(f"gateway id must be 16 hex digits (an EUI-64), got {value!r}")
    return gid


def _account_name(value: str) -> str:
    if not _ACCOUNT.match(value):
        raise InvalidError(
            f"broker account name must be letters, digits and '_.-' (at most 64), got {value!r}"
        )
    if _GATEWAY_ID.match(value.lower()):
        raise InvalidError(f"{value!r} is a gateway id: a service account needs another name")
    return value


def _row(db: Sql, username: str) -> dict[str, object] | None:
    rows = db.query(
        "SELECT username, kind, password_hash, issued_at, revoked_at"
        " FROM broker_credentials WHERE username = ?",
        [username],
    )
    return rows[0] if rows else None


def _issue(
    db: Sql,
    username: str,
    kind: Kind,
    *,
    rotate: bool,
    actor: Principal | str,
    at: float | None,
) -> IssuedCredentials:
    now = time.time() if at is None else at
    password = new_password()
    encoded = hash_password(password)
    with db.transaction() as tx:
        row = _row(tx, username)
        active = row is not None and row["password_hash"] is not None
        if rotate and not active:
            raise NotFoundError(f"{username} has no broker credentials to rotate; issue them first")
        if not rotate and active:
            raise ConflictError(
                f"{username} already has broker credentials; rotate them to get a new password"
            )
        if row is None:
            tx.execute(
                "INSERT INTO broker_credentials (username, kind, password_hash, issued_at)"
                " VALUES (?, ?, ?, ?)",
                [username, kind, encoded, now],
            )
        else:
            tx.execute(
                "UPDATE broker_credentials SET password_hash = ?, issued_at = ?,"
                " revoked_at = NULL WHERE username = ?",
                [encoded, now, username],
            )
        record_event(
            tx,
            actor=actor,
            action="broker.credentials_issued",
            target=f"{kind}:{username}",
            details={"rotation": rotate},
            at=now,
        )
    log.info("broker credentials %s for %s %s", "rotated" if rotate else "issued", kind, username)
    return IssuedCredentials(username, kind, password, now, rotate)


def _require_gateway(db: Sql, gid: str) -> None:
    if db.scalar("SELECT 1 FROM gateways WHERE id = ?", [gid]) is None:
        raise NotFoundError(f"no gateway {gid}: register it before issuing broker credentials")


def issue_gateway_credentials(
    sql: Sql,
    gateway_id: str,
    *,
    actor: Principal | str,
    rotate: bool = False,
    at: float | None = None,
) -> IssuedCredentials:
    """Issue (or with ``rotate``, replace) the broker password of a registered gateway.

    NotFoundError for an unknown gateway (or rotating credentials it does not have),
    ConflictError when issuing credentials it already has.
    """
    gid = _gateway_id(gateway_id)
    with sql.transaction() as db:
        _require_gateway(db, gid)
        return _issue(db, gid, "gateway", rotate=rotate, actor=actor, at=at)


def issue_fleet_credentials(
    sql: Sql,
    *,
    actor: Principal | str,
    username: str = FLEET_ACCOUNT,
    rotate: bool = False,
    at: float | None = None,
) -> IssuedCredentials:
    """Issue (or with ``rotate``, replace) the password of the fleet's service account."""
    return _issue(sql, _account_name(username), "fleet", rotate=rotate, actor=actor, at=at)


def revoke_credentials(
    sql: Sql, username: str, *, actor: Principal | str, at: float | None = None
) -> None:
    """Revoke an account's password (a gateway id or a service account name): it no longer
    logs in once the broker has the new files (or policy). NotFoundError when it has none."""
    name = username.strip()
    if _GATEWAY_ID.match(name.lower()):
        name = name.lower()
    now = time.time() if at is None else at
    with sql.transaction() as db:
        row = _row(db, name)
        if row is None or row["password_hash"] is None:
            raise NotFoundError(f"{name} has no broker credentials to revoke")
        db.execute(
            "UPDATE broker_credentials SET password_hash = NULL, revoked_at = ? WHERE username = ?",
            [now, name],
        )
        record_event(
            db,
            actor=actor,
            action="broker.credentials_revoked",
            target=f"{row['kind']}:{name}",
            at=now,
        )
    log.info("broker credentials revoked for %s", name)


def credential_states(sql: Sql) -> list[CredentialState]:
    """Every account the fleet has issued, active or revoked, by user name."""
    return [
        CredentialState(
            row["username"],
            row["kind"],
            row["password_hash"] is not None,
            row["issued_at"],
            row["revoked_at"],
        )
        for row in sql.query(
            "SELECT username, kind, password_hash, issued_at, revoked_at"
            " FROM broker_credentials ORDER BY username"
        )
    ]


def load_policy(sql: Sql) -> BrokerPolicy:
    """The accounts that may log in now (revoked ones left out)."""
    rows = sql.query(
        "SELECT username, kind, password_hash, issued_at FROM broker_credentials"
        " WHERE password_hash IS NOT NULL ORDER BY username"
    )
    return BrokerPolicy(
        {
            row["username"]: Account(
                row["username"], row["kind"], row["password_hash"], row["issued_at"]
            )
            for row in rows
        }
    )


# --- Mosquitto files -----------------------------------------------------------------------------


def password_file_text(policy: BrokerPolicy) -> str:
    """Mosquitto's ``password_file``: ``user:$7$...`` per account."""
    return "".join(
        f"{name}:{account.password_hash}\n" for name, account in sorted(policy.accounts.items())
    )


def acl_file_text(policy: BrokerPolicy) -> str:
    """Mosquitto's ``acl_file``: a ``user`` block per account with its ``topic`` lines, and
    no line before the first block (such lines would apply to anonymous clients)."""
    lines = [
        "# owlgate broker ACL, written by the fleet: edit the credentials, not this file.",
        "",
    ]
    for name, account in sorted(policy.accounts.items()):
        lines.append(f"user {name}")
        lines.extend(f"topic {rule.access} {rule.pattern}" for rule in account.rules)
        lines.append("")
    return "\n".join(lines)


def config_snippet(password_file: Path, acl_file: Path) -> str:
    """Lines for ``mosquitto.conf`` (or a file in its ``include_dir``) that make Mosquitto
    check the written files and refuse anonymous clients."""
    return (
        "# owlgate broker access: include in mosquitto.conf (or put in its include_dir).\n"
        "# Send the broker SIGHUP after `owlgate fleet broker write-files` to reload.\n"
        "per_listener_settings false\n"
        "allow_anonymous false\n"
        f"password_file {password_file.resolve()}\n"
        f"acl_file {acl_file.resolve()}\n"
    )


@dataclass(frozen=True, slots=True)
class MosquittoFiles:
    """The files :func:`write_mosquitto_files` wrote, and how many accounts they hold."""

    password_file: Path
    acl_file: Path
    config_file: Path
    accounts: int


def write_atomically(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, created with
    ``mode``, flushed to disk and renamed over ``path``: a reader (Mosquitto on SIGHUP) sees
    the old file or the new one, never half of one, and never a moment of wider permissions."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as err:
        raise BrokerAuthError(f"cannot write in {folder}: {err.strerror or err}") from err
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as err:
        Path(temporary).unlink(missing_ok=True)
        raise BrokerAuthError(f"cannot write {path}: {err.strerror or err}") from err


def write_mosquitto_files(policy: BrokerPolicy, folder: Path) -> MosquittoFiles:
    """Write the password file (0600), the ACL file (0640) and the configuration snippet
    (0640) into ``folder``; BrokerAuthError when the folder cannot be written."""
    files = MosquittoFiles(
        folder / PASSWORD_FILE_NAME,
        folder / ACL_FILE_NAME,
        folder / CONFIG_FILE_NAME,
        len(policy.accounts),
    )
    write_atomically(files.password_file, password_file_text(policy), PASSWORD_FILE_MODE)
    write_atomically(files.acl_file, acl_file_text(policy), ACL_FILE_MODE)
    write_atomically(
        files.config_file, config_snippet(files.password_file, files.acl_file), ACL_FILE_MODE
    )
    log.info("wrote Mosquitto files for %d accounts into %s", files.accounts, folder)
    return files


def reload_mosquitto(pid: int) -> None:
    """Tell the Mosquitto process ``pid`` to re-read its password and ACL files (SIGHUP,
    as ``systemctl reload mosquitto`` does); BrokerAuthError when there is no such process
    or it is not ours to signal."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as err:
        raise BrokerAuthError(f"no process {pid} to reload: is Mosquitto running?") from err
    except PermissionError as err:
        raise BrokerAuthError(
            f"not allowed to signal process {pid}: run as Mosquitto's user or use"
            " `systemctl reload mosquitto`"
        ) from err
    log.info("sent SIGHUP to Mosquitto pid %d", pid)


# --- the API -------------------------------------------------------------------------------------


class IssuedOut(BaseModel):
    """A password just issued or rotated: shown in this response only."""

    username: str
    kind: str
    password: str = Field(description="shown once; the fleet keeps only its hash")
    issued_at: float
    rotated: bool


def _issued_out(issued: IssuedCredentials) -> IssuedOut:
    return IssuedOut(
        username=issued.username,
        kind=issued.kind,
        password=issued.password,
        issued_at=issued.issued_at,
        rotated=issued.rotated,
    )


def router(
    sql: Callable[[], Sql] | None = None, *, on_change: Callable[[], None] | None = None
) -> APIRouter:
    """The admin routes that issue, rotate and revoke broker credentials.

    ``sql`` gives the database (default: the store's, ``request.app.state.store.sql``, read
    per request); ``on_change`` runs after every change, for example to rewrite the
    Mosquitto files and reload the broker, or to update the embedded broker's policy.
    """
    # Here, not at the top: the app module may import this one to mount the router.
    from .api import API_PREFIX

    routes = APIRouter(prefix=f"{API_PREFIX}/broker", tags=["broker"])

    def database(request: Request) -> Sql:
        return sql() if sql is not None else sql_of(request.app.state.store)

    def changed() -> None:
        if on_change is not None:
            on_change()

    @routes.post("/gateways/{gateway_id}/credentials", status_code=201)
    def issue_gateway(
        gateway_id: str, request: Request, principal: Annotated[Principal, requires("admin")]
    ) -> IssuedOut:
        """Issue a gateway's MQTT password (409 if it has one: rotate it instead)."""
        issued = issue_gateway_credentials(database(request), gateway_id, actor=principal)
        changed()
        return _issued_out(issued)

    @routes.post("/gateways/{gateway_id}/credentials/rotate")
    def rotate_gateway(
        gateway_id: str, request: Request, principal: Annotated[Principal, requires("admin")]
    ) -> IssuedOut:
        """Replace a gateway's MQTT password; the old one stops working."""
        issued = issue_gateway_credentials(
            database(request), gateway_id, actor=principal, rotate=True
        )
        changed()
        return _issued_out(issued)

    @routes.delete("/gateways/{gateway_id}/credentials", status_code=204)
    def revoke_gateway(
        gateway_id: str, request: Request, principal: Annotated[Principal, requires("admin")]
    ) -> None:
        """Revoke a gateway's MQTT password."""
        revoke_credentials(database(request), _gateway_id(gateway_id), actor=principal)
        changed()

    @routes.post("/fleet-account/credentials")
    def fleet_account(
        request: Request, principal: Annotated[Principal, requires("admin")], rotate: bool = False
    ) -> IssuedOut:
        """Issue (``?rotate=true``: replace) the fleet service account's MQTT password."""
        issued = issue_fleet_credentials(database(request), actor=principal, rotate=rotate)
        changed()
        return _issued_out(issued)

    @routes.get("/credentials")
    def listing(
        request: Request, principal: Annotated[Principal, requires("admin")]
    ) -> list[dict[str, object]]:
        """Every broker account, active or revoked, without any secret."""
        return [
            {
                "username": state.username,
                "kind": state.kind,
                "active": state.active,
                "issued_at": state.issued_at,
                "revoked_at": state.revoked_at,
            }
            for state in credential_states(database(request))
        ]

    return routes


__all__ = [
    "FLEET_ACCOUNT",
    "Account",
    "AclRule",
    "BrokerAuthError",
    "BrokerPolicy",
    "CredentialState",
    "IssuedCredentials",
    "MosquittoFiles",
    "PolicyHolder",
    "acl_file_text",
    "config_snippet",
    "credential_states",
    "ephemeral_fleet_account",
    "filter_within",
    "fleet_rules",
    "gateway_rules",
    "hash_password",
    "issue_fleet_credentials",
    "issue_gateway_credentials",
    "load_policy",
    "new_password",
    "password_file_text",
    "reload_mosquitto",
    "revoke_credentials",
    "router",
    "topic_matches",
    "verify_password",
    "write_atomically",
    "write_mosquitto_files",
]
