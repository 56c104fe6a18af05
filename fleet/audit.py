"""The audit log: an append-only record of who changed what in the fleet, and when.

Who provisioned a gateway or a device, who created or revoked an API token, who exported a
key, changed a configuration, started a rollout or acknowledged an alert: each change calls
:func:`record_event` *inside the transaction of the change*, so the event is stored if and
only if the change is.

Append-only is kept by the database, not only by this module having no update or delete
function: migration ``0110_audit_log`` adds triggers, per dialect, that refuse every
``UPDATE`` and ``DELETE`` on ``audit_log`` (and, on PostgreSQL, ``TRUNCATE``), whoever runs
them. An event's ``details`` are JSON and must never carry a secret: :func:`record_event`
refuses a details key that names one (``app_key``, ``password``, ``token`` ...) and any bytes
value, so a careless caller fails loudly in its tests rather than leaking a key into a log
that cannot be cleaned.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .auth import Principal
from .schema import migration
from .sql import Sql
from .store import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, InvalidError, Page

#: Actions are dotted lowercase names: ``device.provisioned``, ``keys.exported`` ...
_ACTION: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
#: Details keys that name a secret; such a value has no place in a log nobody can clean.
_SECRET_KEY: Final = re.compile(
    r"(^|_)(key|keys|secret|password|passwd|token|kek|credential|credentials)$|_s_key$|^app_key$"
)
MAX_TEXT: Final = 500

#: Well-known actions (others may be recorded; these are what the fleet records today).
ACTIONS: Final = (
    "gateway.provisioned",
    "device.provisioned",
    "token.created",
    "token.revoked",
    "keys.exported",
    "alert.acknowledged",
    "broker.credentials_issued",
    "broker.credentials_revoked",
    "device.site_changed",
    "gateway.site_changed",
    "keys.rewrapped",
    "config.changed",
    "config.key_generated",
    "config.key_imported",
    "config.document_uploaded",
    "rollout.started",
    "rollout.paused",
    "rollout.resumed",
    "rollout.aborted",
    "rollout.rolled_back",
    "rollout.stopped",
    "rollout.completed",
    "device.settings_queued",
    "claim.created",
    "claim.revoked",
    "gateway.claimed",
    "bundle.issued",
    "bundle.synced",
)


@migration("0110_audit_log")
def _audit_log(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE audit_log ("
            " id {serial},"
            " at {float} NOT NULL,"
            " actor TEXT NOT NULL,"
            " actor_token TEXT,"
            " actor_role TEXT,"
            " action TEXT NOT NULL,"
            " target TEXT NOT NULL,"
            " details TEXT NOT NULL)"
        )
    )
    db.execute("CREATE INDEX audit_log_action ON audit_log (action, id)")
    db.execute("CREATE INDEX audit_log_target ON audit_log (target, id)")
    db.execute("CREATE INDEX audit_log_at ON audit_log (at)")
    refusal = "the audit log is append-only: events cannot be changed or deleted"
    if db.dialect == "sqlite":
        for statement in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER audit_log_no_{statement.lower()} BEFORE {statement}"
                f" ON audit_log BEGIN SELECT RAISE(ABORT, '{refusal}'); END"
            )
    else:
        # restrict_violation (SQLSTATE 23001) is an integrity error: the driver reports it as
        # the data being refused, like any other constraint.
        db.execute(
            "CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN RAISE EXCEPTION '{refusal}' USING ERRCODE = 'restrict_violation'; END $$"
        )
        db.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log"
            " FOR EACH ROW EXECUTE FUNCTION audit_log_refuse()"
        )
        db.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log"
            " FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse()"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One recorded change. ``actor`` is the token's name (or what a CLI or service gave),
    ``actor_token`` and ``actor_role`` the token's id and role when an API call did it."""

    id: int
    at: float
    actor: str
    actor_token: str | None
    actor_role: str | None
    action: str
    target: str
    details: dict[str, Any]


def _checked_details(details: Mapping[str, object] | None) -> str:
    if not details:
        return "{}"

    def check(value: object, where: str) -> None:
        if isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"audit details {where} is bytes: record what changed, not a key")
        if isinstance(value, Mapping):
            for key, inner in value.items():
                name = str(key).lower()
                # A public key is no secret (a gateway's sign_public_key may be recorded).
                if _SECRET_KEY.search(name) and "public" not in name:
                    raise ValueError(
                        f"audit details may not carry a secret ({where}.{key}): record that it"
                        " changed, not its value"
                    )
                check(inner, f"{where}.{key}")
        elif isinstance(value, list | tuple):
            for index, inner in enumerate(value):
                check(inner, f"{where}[{index}]")

    check(details, "details")
    return json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)


def record_event(
    db: Sql,
    *,
    actor: Principal | str,
    action: str,
    target: str,
    details: Mapping[str, object] | None = None,
    at: float | None = None,
) -> None:
    """Append one event. Call it inside the transaction of the change it records.

    Raises ValueError for an action that is not a dotted name, an empty actor or target, or
    details whose key names a secret, and TypeError for a bytes value in the details.
    """
    if not _ACTION.match(action):
        raise ValueError(f"audit action {action!r} is not a dotted name like 'device.provisioned'")
    if isinstance(actor, Principal):
        name, token_id, role = actor.name, actor.token_id, actor.role
    else:
        name, token_id, role = actor, None, None
    if not name or not target:
        raise ValueError("an audit event needs an actor and a target")
    db.execute(
        "INSERT INTO audit_log (at, actor, actor_token, actor_role, action, target, details)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            time.time() if at is None else at,
            name[:MAX_TEXT],
            token_id,
            role,
            action,
            target[:MAX_TEXT],
            _checked_details(details),
        ],
    )


def events(
    db: Sql,
    *,
    action: str | None = None,
    actor: str | None = None,
    target: str | None = None,
    since: float | None = None,
    limit: int = DEFAULT_PAGE_LIMIT,
    after: str | None = None,
) -> Page[AuditEvent]:
    """Events oldest first, filtered; ``actor`` matches the actor's name or token id;
    ``action`` ending in ``.*`` matches a family (``token.*``). The cursor is the last
    event's id."""
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidError(f"limit must be 1 .. {MAX_PAGE_LIMIT}, got {limit}")
    where: list[str] = []
    params: list[Any] = []
    if action is not None:
        if action.endswith(".*"):
            # A range, not LIKE: '_' is a LIKE wildcard and action names contain it.
            family = action[:-1]
            where.append("action >= ? AND action < ?")
            params += [family, family[:-1] + "/"]
        else:
            where.append("action = ?")
            params.append(action)
    if actor is not None:
        where.append("(actor = ? OR actor_token = ?)")
        params += [actor, actor]
    if target is not None:
        where.append("target = ?")
        params.append(target)
    if since is not None:
        where.append("at >= ?")
        params.append(since)
    if after is not None:
        try:
            after_id = int(after)
        except ValueError as err:
            raise InvalidError(f"not an audit cursor: {after!r}") from err
        where.append("id > ?")
        params.append(after_id)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = db.query(
        "SELECT id, at, actor, actor_token, actor_role, action, target, details"
        f" FROM audit_log {clause} ORDER BY id LIMIT ?",
        [*params, limit + 1],
    )
    items = [
        AuditEvent(
            id=row["id"],
            at=row["at"],
            actor=row["actor"],
            actor_token=row["actor_token"],
            actor_role=row["actor_role"],
            action=row["action"],
            target=row["target"],
            details=json.loads(row["details"]),
        )
        for row in rows[:limit]
    ]
    return Page(items, str(items[-1].id) if len(rows) > limit else None)


__all__ = ["ACTIONS", "AuditEvent", "events", "record_event"]
