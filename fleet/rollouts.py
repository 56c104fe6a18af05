"""Configuration rollouts in waves, the fleet's config signing key, and what gateways report.

A **rollout** sends every gateway of a target (``all``, a group, or a list of gateway ids) a
configuration document of its own (:mod:`owlgate.codecs.configdoc`) with its effective
configuration (:func:`owlgate.fleet.configs.effective_config`, taken when the rollout starts)
and a fresh sequence number, in waves: a canary set of N gateways, then cumulative
percentages of the target (``[10, 50, 100]``). The next wave starts once
``success_threshold_pct`` of the current wave reported ``applied``; the rollout stops
(``failed``, later waves never sent) as soon as the failures (``rejected``, ``rolled_back``,
``timeout``) of the whole rollout exceed ``max_failures`` or ``max_failure_pct``; it is
``completed`` when the last wave passed and every gateway has a final state. A gateway that
gives no final answer within ``timeout_s`` of its document being published counts as failed
(``timeout``). A rollout can be paused (no new wave starts, answers are still counted),
resumed, aborted (gateways not yet sent are ``cancelled``) and rolled back: every gateway
that applied gets a new document with the configuration of its previous document (the one
it had applied when the rollout started) and a higher sequence number.

**The wire** (``docs/fleet-rollouts.md``): documents are published retained, QoS 1, on
``owlgate/v1/gw/{id}/config``, so a gateway that is offline gets its latest document when it
connects; gateways answer on ``owlgate/v1/gw/{id}/config/status`` with a
:class:`~owlgate.codecs.control.ConfigStatus` signed by their identity key. Unsigned, forged
and unknown-gateway reports are refused, counted and logged, like joins in
:mod:`owlgate.fleet.control`.

**Sequence numbers** are strictly increasing per gateway, forever: ``config_seqs`` keeps the
highest seq the fleet issued to each gateway, or saw in a document signed offline and
uploaded, or saw a gateway report; a new document always gets one more, in the transaction
that records it. A gateway refuses a seq at or below the one it applied (anti-rollback), so
a seq is never reused, even by a rollback.

**Signing**: the fleet signs with the config signing key held in the database, wrapped
under the vault's KEK (``owlgate fleet config-key generate|import``), when one is active;
else with the fleet signing key ``owlgate fleet serve --signing-key`` loads, which gateways
pin at provisioning. Documents signed offline (``owlgate config sign``) can be uploaded
(``POST /api/v1/config/documents``): verified against the config public keys the fleet knows,
checked to be above every seq their gateways got, then published as they are.

**The engine** runs in ``owlgate fleet serve`` inside :class:`ConfigService` (one MQTT
connection for the status subscription and the publishing), ticking every
:data:`TICK_S` and whenever a report arrives. Every decision is in the database, so a fleet
that restarts carries on where it was; documents not yet published stay queued and go out on
the next connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self, Unpack

import aiomqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from owlgate.codecs.configdoc import (
    ConfigRejected,
    from_json,
    raw_public_key,
    sign_config,
    to_json,
    verify_config,
)
from owlgate.codecs.control import ConfigStatus, decode_config_status
from owlgate.codecs.errors import OwlgateError
from owlgate.codecs.signed import key_id, verify

from .audit import record_event
from .auth import Principal, requires
from .configs import effective_config
from .metrics import RateLimitedLog
from .mqtt import MqttOptions, MqttService
from .schema import migration
from .sql import Sql, SqlError
from .store import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    ConflictError,
    FleetError,
    InvalidError,
    NotFoundError,
    Page,
    Store,
)
from .vault import KeyVault, VaultError

log = logging.getLogger(__name__)

#: The PostgreSQL advisory lock (transaction-scoped) every change of rollout state takes:
#: several fleet processes may run the config service on one database, and they change the
#: rollouts one after the other, each from what the one before committed, never two from the
#: same stale state (a wave queued twice, a seq issued twice). SQLite needs none: a
#: transaction holds the database's only write lock.
ROLLOUT_LOCK: Final = 0x6F776C6703


def _serialised(db: Sql) -> None:
    """Wait for, and hold until the end of ``db``'s transaction, the rollouts' lock."""
    if db.dialect == "postgres":
        db.execute("SELECT pg_advisory_xact_lock(?)", [ROLLOUT_LOCK])


TOPIC_PREFIX: Final = "owlgate/v1/gw/"
STATUS_FILTER: Final = f"{TOPIC_PREFIX}+/config/status"
QOS: Final = 1
#: How often the engine looks at running rollouts (it also runs when a report arrives).
TICK_S: Final = 0.25
#: How often the drift gauge is counted again.
DRIFT_INTERVAL_S: Final = 2.0
DEFAULT_TIMEOUT_S: Final = 300.0
#: Documents in flight (published, PUBACK not yet received) at once.
PUBLISH_WINDOW: Final = 8
#: The largest seq the database holds (a signed 64-bit column on PostgreSQL).
MAX_SEQ: Final = 2**63 - 1
MAX_COMMENT: Final = 500
MAX_WAVES: Final = 20
MAX_DOCUMENT_BYTES: Final = 256 * 1024

RolloutState = Literal["running", "paused", "completed", "failed", "aborted", "rolled_back"]
ROLLOUT_STATES: Final = ("running", "paused", "completed", "failed", "aborted", "rolled_back")
ACTIVE: Final = ("running", "paused")
#: A gateway's state in a rollout: waiting for its wave (``pending``), published (``sent``),
#: then what it reported, or ``timeout``, or ``cancelled`` (never sent: the rollout stopped).
GATEWAY_STATES: Final = (
    "pending",
    "sent",
    "received",
    "applied",
    "rejected",
    "rolled_back",
    "timeout",
    "cancelled",
    "skipped",
)
OPEN: Final = ("pending", "sent", "received")
FAILURES: Final = ("rejected", "rolled_back", "timeout")
FINAL: Final = ("applied", "rejected", "rolled_back", "timeout", "cancelled", "skipped")


class RolloutError(FleetError):
    """Root of the rollout module's own errors."""


class StatusRejected(OwlgateError):
    """A config status report not acted on; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- schema ------------------------------------------------------------------------------------


@migration("0510_rollouts")
def _rollouts(db: Sql) -> None:
    # A config key: private_key is the raw Ed25519 key wrapped under the vault's KEK, NULL
    # for a public key only (one that signs offline; uploaded documents are checked with it).
    db.execute(
        db.ddl(
            "CREATE TABLE config_keys ("
            " key_id TEXT PRIMARY KEY,"
            " public_key {blob} NOT NULL,"
            " private_key {blob},"
            " source TEXT NOT NULL,"
            " active {int} NOT NULL,"
            " created {float} NOT NULL)"
        )
    )
    db.execute(db.ddl("CREATE TABLE config_seqs (gateway_id TEXT PRIMARY KEY, seq {int} NOT NULL)"))
    db.execute(
        db.ddl(
            "CREATE TABLE rollouts ("
            " id {serial},"
            " state TEXT NOT NULL,"
            " target TEXT NOT NULL,"
            " plan TEXT NOT NULL,"
            " current_wave {int} NOT NULL,"
            " reason TEXT,"
            " comment TEXT NOT NULL,"
            " actor TEXT NOT NULL,"
            " created {float} NOT NULL,"
            " updated {float} NOT NULL)"
        )
    )
    db.execute("CREATE INDEX rollouts_state ON rollouts (state)")
    db.execute(
        db.ddl(
            "CREATE TABLE rollout_gateways ("
            " rollout_id {int} NOT NULL REFERENCES rollouts (id),"
            " gateway_id TEXT NOT NULL,"
            " wave {int} NOT NULL,"
            " state TEXT NOT NULL,"
            " seq {int} NOT NULL,"
            " config TEXT NOT NULL,"
            " content_hash TEXT NOT NULL,"
            " previous_seq {int},"
            " reason TEXT,"
            " detail TEXT,"
            " sent_at {float},"
            " received_at {float},"
            " answered_at {float},"
            " rollback_seq {int},"
            " rollback_state TEXT,"
            " rollback_reason TEXT,"
            " rollback_sent_at {float},"
            " rollback_answered_at {float},"
            " PRIMARY KEY (rollout_id, gateway_id))"
        )
    )
    db.execute("CREATE INDEX rollout_gateways_seq ON rollout_gateways (gateway_id, seq)")
    db.execute(
        "CREATE INDEX rollout_gateways_rollback ON rollout_gateways (gateway_id, rollback_seq)"
    )
    # Every document the fleet sent or will send, by gateway and seq: queued (cose NULL until
    # the engine signs it), published, or cancelled.
    db.execute(
        db.ddl(
            "CREATE TABLE config_documents ("
            " gateway_id TEXT NOT NULL,"
            " seq {int} NOT NULL,"
            " config TEXT NOT NULL,"
            " content_hash TEXT NOT NULL,"
            " next_key TEXT,"
            " purpose TEXT NOT NULL,"
            " rollout_id {int},"
            " state TEXT NOT NULL,"
            " cose {blob},"
            " signed_by TEXT,"
            " created {float} NOT NULL,"
            " published_at {float},"
            " PRIMARY KEY (gateway_id, seq))"
        )
    )
    db.execute("CREATE INDEX config_documents_state ON config_documents (state)")
    db.execute(
        db.ddl(
            "CREATE TABLE gateway_config_status ("
            " gateway_id TEXT PRIMARY KEY,"
            " state TEXT NOT NULL,"
            " seq {int} NOT NULL,"
            " content_hash TEXT,"
            " reason TEXT,"
            " detail TEXT,"
            " running_hash TEXT,"
            " reported_at {float} NOT NULL,"
            " received_at {float} NOT NULL,"
            " applied_seq {int})"
        )
    )


# --- small helpers -----------------------------------------------------------------------------


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _gateway_id(text: str) -> str:
    lowered = text.lower()
    if len(lowered) != 16 or any(c not in "0123456789abcdef" for c in lowered):
        raise NotFoundError(f"no gateway {text!r}: gateway ids are 16 hex digits")
    return lowered


def config_topic(gateway_id: str) -> str:
    """``owlgate/v1/gw/{gateway_id}/config``: where a gateway's document is retained."""
    return f"{TOPIC_PREFIX}{gateway_id}/config"


def status_topic(gateway_id: str) -> str:
    """``owlgate/v1/gw/{gateway_id}/config/status``: where a gateway reports."""
    return f"{TOPIC_PREFIX}{gateway_id}/config/status"


def parse_status_topic(topic: str) -> str:
    """The gateway id (lowercase hex) of a ``.../config/status`` topic, or StatusRejected."""
    if not topic.startswith(TOPIC_PREFIX) or not topic.endswith("/config/status"):
        raise StatusRejected("topic", f"not a config status topic: {topic!r}")
    gateway = topic[len(TOPIC_PREFIX) : -len("/config/status")].lower()
    if len(gateway) != 16 or any(c not in "0123456789abcdef" for c in gateway):
        raise StatusRejected("topic", f"gateway id in {topic!r} is not 16 hex digits")
    return gateway


def _registered(db: Sql, gateway_id: str) -> bool:
    return db.scalar("SELECT 1 FROM gateways WHERE id = ?", [gateway_id]) is not None


def _all_gateways(db: Sql) -> list[str]:
    return [row[0] for row in db.query_tuples("SELECT id FROM gateways ORDER BY id")]


# --- config keys ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigKey:
    """A config key the fleet knows: ``can_sign`` when its private key is held (wrapped)."""

    key_id: str
    public_key: bytes
    can_sign: bool
    source: str
    active: bool
    created: float

    @property
    def public_pem(self) -> str:
        public = Ed25519PublicKey.from_public_bytes(self.public_key)
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


def config_keys(sql: Sql) -> list[ConfigKey]:
    """Every config key the fleet knows, the active signing key first."""
    rows = sql.query(
        "SELECT key_id, public_key, private_key IS NOT NULL AS can_sign, source, active,"
        " created FROM config_keys ORDER BY active DESC, created DESC, key_id"
    )
    return [
        ConfigKey(
            key_id=row["key_id"],
            public_key=bytes(row["public_key"]),
            can_sign=bool(row["can_sign"]),
            source=row["source"],
            active=bool(row["active"]),
            created=row["created"],
        )
        for row in rows
    ]


def _store_key(
    sql: Sql,
    public: Ed25519PublicKey,
    private: bytes | None,
    *,
    source: str,
    actor: Principal | str,
    action: str,
    now: float,
) -> ConfigKey:
    raw = raw_public_key(public)
    kid = key_id(raw).hex()
    with sql.transaction() as db:
        if db.scalar("SELECT 1 FROM config_keys WHERE key_id = ?", [kid]) is not None:
            raise ConflictError(
                f"config key {kid} is known already (`owlgate fleet config-key show` lists it)"
            )
        if private is not None:
            db.execute("UPDATE config_keys SET active = 0 WHERE active = 1")
        db.execute(
            "INSERT INTO config_keys (key_id, public_key, private_key, source, active, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [kid, raw, private, source, 1 if private is not None else 0, now],
        )
        record_event(
            db,
            actor=actor,
            action=action,
            target=f"config-key:{kid}",
            details={"source": source, "signs": private is not None},
            at=now,
        )
    found = [key for key in config_keys(sql) if key.key_id == kid]
    return found[0]


def generate_config_key(
    sql: Sql, vault: KeyVault, *, actor: Principal | str, now: float | None = None
) -> ConfigKey:
    """Make a config signing key, store it wrapped under ``vault``'s KEK and make it the one
    the fleet signs with (``config.key_generated``)."""
    key = Ed25519PrivateKey.generate()
    wrapped = vault.wrap(
        key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    )
    return _store_key(
        sql,
        key.public_key(),
        wrapped,
        source="generated",
        actor=actor,
        action="config.key_generated",
        now=time.time() if now is None else now,
    )


def import_config_key(
    sql: Sql,
    vault: KeyVault | None,
    pem: bytes,
    *,
    actor: Principal | str,
    now: float | None = None,
) -> ConfigKey:
    """Import a config key from PEM (``config.key_imported``): a private key (PKCS#8,
    unencrypted) is stored wrapped under ``vault``'s KEK and signs from now on; a public key
    is trusted for documents signed offline with its private key."""
    when = time.time() if now is None else now
    if b"PRIVATE KEY" in pem:
        if vault is None:
            raise InvalidError("a private config key needs the vault's KEK to be stored wrapped")
        try:
            private = serialization.load_pem_private_key(pem, None)
        except (ValueError, TypeError) as err:
            # Only the kind of failure: the parser's message could quote the file.
            raise InvalidError(
                f"not an unencrypted PKCS#8 PEM private key ({type(err).__name__})"
            ) from None
        if not isinstance(private, Ed25519PrivateKey):
            raise InvalidError(f"a config key is Ed25519, got {type(private).__name__}")
        raw = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return _store_key(
            sql,
            private.public_key(),
            vault.wrap(raw),
            source="imported",
            actor=actor,
            action="config.key_imported",
            now=when,
        )
    try:
        public = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as err:
        raise InvalidError(f"not a PEM public or private key ({type(err).__name__})") from None
    if not isinstance(public, Ed25519PublicKey):
        raise InvalidError(f"a config key is Ed25519, got {type(public).__name__}")
    return _store_key(
        sql,
        public,
        None,
        source="imported-public",
        actor=actor,
        action="config.key_imported",
        now=when,
    )


def remember_serve_key(sql: Sql, public: Ed25519PublicKey, now: float) -> None:
    """Record the fleet signing key's public half (the one gateways pin) as a config key
    uploaded documents may be signed with; nothing when it is known already."""
    raw = raw_public_key(public)
    sql.execute(
        "INSERT INTO config_keys (key_id, public_key, private_key, source, active, created)"
        " VALUES (?, ?, NULL, 'fleet-signing-key', 0, ?) ON CONFLICT (key_id) DO NOTHING",
        [key_id(raw).hex(), raw, now],
    )


def trusted_config_keys(sql: Sql) -> dict[bytes, Ed25519PublicKey]:
    """The public keys uploaded documents are verified with, by key id."""
    return {
        bytes.fromhex(key.key_id): Ed25519PublicKey.from_public_bytes(key.public_key)
        for key in config_keys(sql)
    }


def active_signing_key(sql: Sql, vault: KeyVault | None) -> Ed25519PrivateKey | None:
    """The config signing key held in the database (unwrapped), or None when there is none."""
    row = sql.query(
        "SELECT key_id, private_key FROM config_keys WHERE active = 1 AND private_key IS NOT NULL"
    )
    if not row:
        return None
    if vault is None:
        raise RolloutError(
            f"config key {row[0]['key_id']} is wrapped under the vault's KEK: start the fleet "
            "with --kek-file or --kek-env"
        )
    try:
        raw = vault.unwrap(bytes(row[0]["private_key"]))
    except VaultError as err:
        raise RolloutError(f"config key {row[0]['key_id']}: {err.message}") from err
    return Ed25519PrivateKey.from_private_bytes(raw)


# --- sequence numbers --------------------------------------------------------------------------


def _next_seq(db: Sql, gateway_id: str) -> int:
    # One statement: two transactions allocating for one gateway at once cannot both get
    # the same number (the row is locked by the first until it commits).
    seq: int = db.scalar(
        "INSERT INTO config_seqs (gateway_id, seq) VALUES (?, 1)"
        " ON CONFLICT (gateway_id) DO UPDATE SET seq = config_seqs.seq + 1 RETURNING seq",
        [gateway_id],
    )
    return seq


def _raise_seq(db: Sql, gateway_id: str, seq: int) -> None:
    db.execute(
        "INSERT INTO config_seqs (gateway_id, seq) VALUES (?, ?)"
        " ON CONFLICT (gateway_id) DO UPDATE SET seq = CASE WHEN excluded.seq > config_seqs.seq"
        " THEN excluded.seq ELSE config_seqs.seq END",
        [gateway_id, min(seq, MAX_SEQ)],
    )


def last_seq(sql: Sql, gateway_id: str) -> int:
    """The highest seq issued to (or seen from) ``gateway_id``; 0 when none."""
    found = sql.scalar("SELECT seq FROM config_seqs WHERE gateway_id = ?", [gateway_id])
    return 0 if found is None else int(found)


def queue_signed_document(
    sql: Sql,
    gateway_id: str,
    config: dict[str, Any],
    signer: Ed25519PrivateKey,
    *,
    purpose: str,
    now: float,
) -> tuple[int, bytes]:
    """Sign a document of ``config`` (the JSON form, every key) for ``gateway_id`` with the
    next seq now, and queue it for publishing retained like a rollout's (the
    :class:`ConfigService` publishes queued documents on its next tick). Returns the seq and
    the COSE bytes. For documents outside rollouts, e.g. a claimed gateway's first."""
    with sql.transaction() as db:
        _serialised(db)
        seq = _next_seq(db, gateway_id)
        doc = from_json(
            json.dumps(
                {
                    "seq": seq,
                    "target": {"gateway": gateway_id},
                    "issued_at": int(now),
                    "config": config,
                }
            )
        )
        payload = sign_config(doc, signer)
        db.execute(
            "INSERT INTO config_documents (gateway_id, seq, config, content_hash, next_key,"
            " purpose, rollout_id, state, cose, signed_by, created, published_at)"
            " VALUES (?, ?, ?, ?, NULL, ?, NULL, 'queued', ?, ?, ?, NULL)",
            [
                gateway_id,
                seq,
                json.dumps(config, sort_keys=True),
                doc.content_hash.hex(),
                purpose,
                payload,
                key_id(signer).hex(),
                now,
            ],
        )
    return seq, payload


# --- starting a rollout --------------------------------------------------------------------------


class RolloutCreate(BaseModel):
    """A rollout to start. ``target``: ``"all"``, a group name, or a list of gateway ids.
    ``canary``: gateways in the first wave; ``waves``: cumulative percentages of the target
    after the canary, ascending, the last 100."""

    target: str | list[str] = Field(description='"all", a group name, or a list of gateway ids')
    canary: int = Field(default=0, ge=0, le=100_000)
    waves: list[float] = Field(default_factory=lambda: [100.0], min_length=1, max_length=MAX_WAVES)
    success_threshold_pct: float = Field(default=100.0, gt=0, le=100)
    max_failures: int | None = Field(default=None, ge=0, le=100_000)
    max_failure_pct: float | None = Field(default=None, ge=0, le=100)
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=7 * 86_400)
    comment: str = Field(default="", max_length=MAX_COMMENT)
    next_key: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="the raw Ed25519 public key (64 hex digits) later documents may be signed "
        "with (key rotation)",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How a rollout proceeds: wave boundaries (cumulative gateway counts) and thresholds."""

    wave_ends: list[int]
    wave_names: list[str]
    success_threshold_pct: float
    max_failures: int | None
    max_failure_pct: float | None
    timeout_s: float
    next_key: str | None

    def as_json(self) -> str:
        return json.dumps(
            {
                "wave_ends": self.wave_ends,
                "wave_names": self.wave_names,
                "success_threshold_pct": self.success_threshold_pct,
                "max_failures": self.max_failures,
                "max_failure_pct": self.max_failure_pct,
                "timeout_s": self.timeout_s,
                "next_key": self.next_key,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        return cls(**data)

    def crossed(self, failures: int, total: int) -> str | None:
        """Why ``failures`` of ``total`` stop the rollout, or None."""
        limit = self.max_failures
        if limit is None and self.max_failure_pct is None:
            limit = 0
        if limit is not None and failures > limit:
            return f"{failures} gateways failed, more than max_failures {limit}"
        pct = self.max_failure_pct
        if pct is not None and total and failures * 100 > pct * total:
            return (
                f"{failures} of {total} gateways failed ({failures * 100 / total:.1f}%), "
                f"more than max_failure_pct {pct:g}"
            )
        return None


def make_plan(body: RolloutCreate, total: int) -> Plan:
    """The waves of ``body`` over ``total`` gateways; InvalidError for waves that are not
    ascending percentages ending at 100."""
    previous = 0.0
    for pct in body.waves:
        if not 0 < pct <= 100 or pct <= previous:
            raise InvalidError(
                f"waves must be ascending percentages above 0 and at most 100, got {body.waves}"
            )
        previous = pct
    if body.waves[-1] != 100:
        raise InvalidError(
            f"the last wave must be 100 (every gateway of the target), got {body.waves[-1]:g}"
        )
    ends: list[int] = []
    names: list[str] = []
    if body.canary:
        ends.append(min(body.canary, total))
        names.append("canary")
    for pct in body.waves:
        end = total if pct == 100 else math.ceil(total * pct / 100)
        if end > (ends[-1] if ends else 0):
            ends.append(end)
            names.append(f"{pct:g}%")
    return Plan(
        wave_ends=ends,
        wave_names=names,
        success_threshold_pct=body.success_threshold_pct,
        max_failures=body.max_failures,
        max_failure_pct=body.max_failure_pct,
        timeout_s=body.timeout_s,
        next_key=None if body.next_key is None else body.next_key.lower(),
    )


def _target_gateways(db: Sql, target: str | list[str]) -> tuple[list[str], str]:
    if isinstance(target, list):
        if not target:
            raise InvalidError("target lists no gateway: name at least one gateway id")
        ids = sorted({_gateway_id(item) for item in target})
        missing = [gid for gid in ids if not _registered(db, gid)]
        if missing:
            raise NotFoundError(
                f"no gateway {', '.join(missing)}: register it first or leave it out of target"
            )
        return ids, json.dumps(ids)
    if target == "all":
        ids = _all_gateways(db)
        if not ids:
            raise InvalidError("target all: no gateway is registered yet")
        return ids, json.dumps("all")
    ids = [
        row[0]
        for row in db.query_tuples(
            "SELECT gateway_id FROM gateway_groups WHERE group_name = ? ORDER BY gateway_id",
            [target],
        )
    ]
    if not ids:
        raise NotFoundError(
            f"group {target!r} has no gateway: put gateways in it first "
            '(PUT /api/v1/gateways/{id}/group) or target "all" or a list of ids'
        )
    return ids, json.dumps({"group": target})


def _previous_seq(db: Sql, gateway_id: str) -> int | None:
    found = db.scalar(
        "SELECT s.applied_seq FROM gateway_config_status s JOIN config_documents d"
        " ON d.gateway_id = s.gateway_id AND d.seq = s.applied_seq WHERE s.gateway_id = ?",
        [gateway_id],
    )
    return None if found is None else int(found)


def start_rollout(
    store: Store, body: RolloutCreate, *, actor: Principal | str, now: float | None = None
) -> int:
    """Start a rollout (``rollout.started``) and return its id. Every gateway's effective
    configuration is taken now, and its seq allocated; the engine publishes wave by wave.
    404 for an unknown gateway or empty group, 409 for a gateway in an active rollout or
    without an effective configuration, 422 for bad waves."""
    when = time.time() if now is None else now
    sql = store.sql
    with sql.transaction() as db:
        _serialised(db)
        gateways, target_json = _target_gateways(db, body.target)
        plan = make_plan(body, len(gateways))
        placeholders = ", ".join("?" * len(gateways))
        busy = db.query_tuples(
            "SELECT g.gateway_id, r.id, r.state FROM rollout_gateways g JOIN rollouts r"
            f" ON r.id = g.rollout_id WHERE r.state IN ('running', 'paused')"
            f" AND g.gateway_id IN ({placeholders}) ORDER BY g.gateway_id LIMIT 1",
            gateways,
        )
        if busy:
            gid, other, state = busy[0]
            raise ConflictError(
                f"gateway {gid} is in rollout {other} ({state}): wait until it ends, or abort "
                f"it (POST /api/v1/rollouts/{other}/abort)"
            )
        configs = {}
        for gid in gateways:
            found = effective_config(db, gid)
            configs[gid] = found
        rollout_id: int = db.scalar(
            "INSERT INTO rollouts (state, target, plan, current_wave, reason, comment, actor,"
            " created, updated) VALUES ('running', ?, ?, 0, NULL, ?, ?, ?, ?) RETURNING id",
            [
                target_json,
                plan.as_json(),
                body.comment,
                actor.name if isinstance(actor, Principal) else actor,
                when,
                when,
            ],
        )
        wave = 0
        rows = []
        for index, gid in enumerate(gateways):
            while index >= plan.wave_ends[wave]:
                wave += 1
            eff = configs[gid]
            rows.append(
                [
                    rollout_id,
                    gid,
                    wave,
                    "pending",
                    _next_seq(db, gid),
                    json.dumps(eff.config, sort_keys=True),
                    eff.content_hash,
                    _previous_seq(db, gid),
                ]
            )
        db.executemany(
            "INSERT INTO rollout_gateways (rollout_id, gateway_id, wave, state, seq, config,"
            " content_hash, previous_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        record_event(
            db,
            actor=actor,
            action="rollout.started",
            target=f"rollout:{rollout_id}",
            details={
                "target": json.loads(target_json),
                "gateways": len(gateways),
                "waves": plan.wave_names,
                "comment": body.comment,
            },
            at=when,
        )
    log.info(
        "rollout %d started: %d gateways in waves %s", rollout_id, len(gateways), plan.wave_names
    )
    return rollout_id


# --- pause, resume, abort, rollback ------------------------------------------------------------


def _rollout_row(db: Sql, rollout_id: int) -> dict[str, Any]:
    rows = db.query("SELECT * FROM rollouts WHERE id = ?", [rollout_id])
    if not rows:
        raise NotFoundError(f"no rollout {rollout_id}: GET /api/v1/rollouts lists them")
    return rows[0]


def _set_state(db: Sql, rollout_id: int, state: str, reason: str | None, now: float) -> None:
    db.execute(
        "UPDATE rollouts SET state = ?, reason = ?, updated = ? WHERE id = ?",
        [state, reason, now, rollout_id],
    )


def _cancel_unsent(db: Sql, rollout_id: int, reason: str) -> None:
    db.execute(
        "UPDATE rollout_gateways SET state = 'cancelled', reason = ?"
        " WHERE rollout_id = ? AND state = 'pending'",
        [reason, rollout_id],
    )
    db.execute(
        "UPDATE config_documents SET state = 'cancelled'"
        " WHERE rollout_id = ? AND purpose = 'rollout' AND state = 'queued'",
        [rollout_id],
    )


def change_rollout(
    sql: Sql,
    rollout_id: int,
    action: Literal["pause", "resume", "abort", "rollback"],
    *,
    actor: Principal | str,
    now: float | None = None,
) -> str:
    """Pause, resume, abort or roll back a rollout (audited); returns its new state.
    409 when the rollout's state does not allow it, saying what does."""
    when = time.time() if now is None else now
    with sql.transaction() as db:
        _serialised(db)
        row = _rollout_row(db, rollout_id)
        state = row["state"]
        details: dict[str, object] = {"previous_state": state}
        if action == "pause":
            if state != "running":
                raise ConflictError(f"rollout {rollout_id} is {state}: only a running one pauses")
            new, verb = "paused", "rollout.paused"
        elif action == "resume":
            if state != "paused":
                raise ConflictError(f"rollout {rollout_id} is {state}: only a paused one resumes")
            new, verb = "running", "rollout.resumed"
        elif action == "abort":
            if state not in ACTIVE:
                raise ConflictError(
                    f"rollout {rollout_id} is {state} already: only a running or paused one "
                    "can be aborted (roll it back to undo what it applied)"
                )
            new, verb = "aborted", "rollout.aborted"
            _cancel_unsent(db, rollout_id, "aborted")
        else:
            if state == "rolled_back":
                raise ConflictError(f"rollout {rollout_id} is rolled back already")
            new, verb = "rolled_back", "rollout.rolled_back"
            _cancel_unsent(db, rollout_id, "rolled back")
            details.update(_queue_rollback(db, rollout_id, when))
        _set_state(db, rollout_id, new, row["reason"] if action != "abort" else "aborted", when)
        record_event(
            db, actor=actor, action=verb, target=f"rollout:{rollout_id}", details=details, at=when
        )
    log.info("rollout %d: %s (was %s)", rollout_id, new, state)
    return new


def _queue_rollback(db: Sql, rollout_id: int, now: float) -> dict[str, object]:
    rows = db.query(
        "SELECT gateway_id, previous_seq FROM rollout_gateways"
        " WHERE rollout_id = ? AND state IN ('applied', 'received', 'sent')"
        " ORDER BY gateway_id",
        [rollout_id],
    )
    queued = skipped = 0
    for row in rows:
        gid = row["gateway_id"]
        previous = None
        if row["previous_seq"] is not None:
            found = db.query(
                "SELECT config, content_hash, next_key FROM config_documents"
                " WHERE gateway_id = ? AND seq = ?",
                [gid, row["previous_seq"]],
            )
            previous = found[0] if found else None
        if previous is None:
            skipped += 1
            db.execute(
                "UPDATE rollout_gateways SET rollback_state = 'skipped', rollback_reason = ?"
                " WHERE rollout_id = ? AND gateway_id = ?",
                [
                    "no previous document from the fleet: set its configuration and start a "
                    "new rollout",
                    rollout_id,
                    gid,
                ],
            )
            continue
        seq = _next_seq(db, gid)
        db.execute(
            "INSERT INTO config_documents (gateway_id, seq, config, content_hash, next_key,"
            " purpose, rollout_id, state, cose, signed_by, created, published_at)"
            " VALUES (?, ?, ?, ?, NULL, 'rollback', ?, 'queued', NULL, NULL, ?, NULL)",
            [gid, seq, previous["config"], previous["content_hash"], rollout_id, now],
        )
        db.execute(
            "UPDATE rollout_gateways SET rollback_seq = ?, rollback_state = 'pending'"
            " WHERE rollout_id = ? AND gateway_id = ?",
            [seq, rollout_id, gid],
        )
        queued += 1
    return {"rollback_documents": queued, "rollback_skipped": skipped}


# --- reading -------------------------------------------------------------------------------------


def _target_json(text: str) -> object:
    return json.loads(text)


def rollout_json(sql: Sql, rollout_id: int) -> dict[str, Any]:
    """A rollout with its plan, its waves and their counts by gateway state."""
    row = _rollout_row(sql, rollout_id)
    plan = Plan.from_json(row["plan"])
    counts = sql.query_tuples(
        "SELECT wave, state, COUNT(*) FROM rollout_gateways WHERE rollout_id = ?"
        " GROUP BY wave, state",
        [rollout_id],
    )
    by_wave: dict[int, dict[str, int]] = {}
    for wave, state, count in counts:
        by_wave.setdefault(int(wave), {})[state] = int(count)
    waves = []
    start = 0
    for index, (end, name) in enumerate(zip(plan.wave_ends, plan.wave_names, strict=True)):
        tally = by_wave.get(index, {})
        waves.append(
            {
                "index": index,
                "name": name,
                "gateways": end - start,
                "counts": {state: tally.get(state, 0) for state in GATEWAY_STATES},
                "state": _wave_state(row, index, tally, plan, end - start),
            }
        )
        start = end
    total = plan.wave_ends[-1] if plan.wave_ends else 0
    overall: dict[str, int] = dict.fromkeys(GATEWAY_STATES, 0)
    for tally in by_wave.values():
        for state, count in tally.items():
            overall[state] = overall.get(state, 0) + count
    return {
        "id": row["id"],
        "state": row["state"],
        "reason": row["reason"],
        "target": _target_json(row["target"]),
        "gateways": total,
        "current_wave": row["current_wave"],
        "waves": waves,
        "counts": overall,
        "failures": sum(overall[state] for state in FAILURES),
        "success_threshold_pct": plan.success_threshold_pct,
        "max_failures": plan.max_failures,
        "max_failure_pct": plan.max_failure_pct,
        "timeout_s": plan.timeout_s,
        "next_key": plan.next_key,
        "comment": row["comment"],
        "actor": row["actor"],
        "created": _iso(row["created"]),
        "updated": _iso(row["updated"]),
    }


def _wave_state(
    row: dict[str, Any], index: int, tally: dict[str, int], plan: Plan, size: int
) -> str:
    if index > row["current_wave"]:
        return "cancelled" if tally.get("cancelled") else "waiting"
    applied = tally.get("applied", 0)
    if applied * 100 >= plan.success_threshold_pct * size:
        return "passed"
    if sum(tally.get(state, 0) for state in OPEN) == 0:
        return "failed"
    return "paused" if row["state"] == "paused" else "running"


def rollouts(
    sql: Sql, *, limit: int = DEFAULT_PAGE_LIMIT, after: str | None = None
) -> Page[dict[str, Any]]:
    """Rollouts, newest first; ``after`` is the ``next`` cursor of the previous page."""
    if after is not None and not (after.isascii() and after.isdigit()):
        raise InvalidError(f"after must be the next cursor of a previous page, got {after!r}")
    before = min(int(after), MAX_SEQ) if after else MAX_SEQ
    ids = [
        int(row[0])
        for row in sql.query_tuples(
            "SELECT id FROM rollouts WHERE id < ? ORDER BY id DESC LIMIT ?", [before, limit + 1]
        )
    ]
    items = [rollout_json(sql, rid) for rid in ids[:limit]]
    return Page(items, str(ids[limit - 1]) if len(ids) > limit else None)


def rollout_gateways(
    sql: Sql, rollout_id: int, *, limit: int = DEFAULT_PAGE_LIMIT, after: str | None = None
) -> Page[dict[str, Any]]:
    """Each gateway of a rollout: its wave, state, seq, hash, reason and times."""
    _rollout_row(sql, rollout_id)
    rows = sql.query(
        "SELECT * FROM rollout_gateways WHERE rollout_id = ? AND gateway_id > ?"
        " ORDER BY gateway_id LIMIT ?",
        [rollout_id, after or "", limit + 1],
    )
    items = [
        {
            "gateway_id": row["gateway_id"],
            "wave": row["wave"],
            "state": row["state"],
            "seq": row["seq"],
            "content_hash": row["content_hash"],
            "previous_seq": row["previous_seq"],
            "reason": row["reason"],
            "detail": row["detail"],
            "sent_at": _iso(row["sent_at"]),
            "received_at": _iso(row["received_at"]),
            "answered_at": _iso(row["answered_at"]),
            "rollback": None
            if row["rollback_state"] is None
            else {
                "state": row["rollback_state"],
                "seq": row["rollback_seq"],
                "reason": row["rollback_reason"],
                "sent_at": _iso(row["rollback_sent_at"]),
                "answered_at": _iso(row["rollback_answered_at"]),
            },
        }
        for row in rows[:limit]
    ]
    return Page(items, items[-1]["gateway_id"] if len(rows) > limit else None)


def gateway_config_status(sql: Sql, gateway_id: str) -> dict[str, Any]:
    """What a gateway last reported about its configuration, what the fleet last published
    to it, and whether they differ (drift)."""
    gid = _gateway_id(gateway_id)
    if not _registered(sql, gid):
        raise NotFoundError(f"no gateway {gid}")
    status = sql.query("SELECT * FROM gateway_config_status WHERE gateway_id = ?", [gid])
    published = sql.query(
        "SELECT seq, content_hash, published_at FROM config_documents WHERE gateway_id = ?"
        " AND state = 'published' ORDER BY seq DESC LIMIT 1",
        [gid],
    )
    report = status[0] if status else None
    expected = published[0] if published else None
    running = None if report is None else report["running_hash"]
    return {
        "gateway_id": gid,
        "last_status": None
        if report is None
        else {
            "state": report["state"],
            "seq": report["seq"],
            "content_hash": report["content_hash"],
            "reason": report["reason"],
            "detail": report["detail"],
            "at": _iso(report["reported_at"]),
            "received_at": _iso(report["received_at"]),
        },
        "applied_seq": None if report is None else report["applied_seq"],
        "running_hash": running,
        "published": None
        if expected is None
        else {
            "seq": expected["seq"],
            "content_hash": expected["content_hash"],
            "published_at": _iso(expected["published_at"]),
        },
        "drift": running is not None
        and expected is not None
        and running != expected["content_hash"],
        "last_seq": last_seq(sql, gid),
    }


def drift_count(sql: Sql) -> int:
    """Gateways whose reported running configuration is not the last one published to them."""
    found = sql.scalar(
        "SELECT COUNT(*) FROM gateway_config_status s JOIN config_documents d"
        " ON d.gateway_id = s.gateway_id AND d.seq = (SELECT MAX(seq) FROM config_documents"
        " WHERE gateway_id = s.gateway_id AND state = 'published')"
        " WHERE s.running_hash IS NOT NULL AND s.running_hash <> d.content_hash"
    )
    return int(found or 0)


# --- documents signed offline --------------------------------------------------------------------


def upload_document(
    sql: Sql, data: bytes, *, actor: Principal | str, now: float | None = None
) -> dict[str, Any]:
    """Queue a document signed offline for publishing as it is (``config.document_uploaded``):
    verified against the config keys the fleet knows (422 naming the reason), its seq above
    every seq its gateway(s) already got (409 naming the lowest acceptable)."""
    when = time.time() if now is None else now
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InvalidError(f"a config document is at most {MAX_DOCUMENT_BYTES} bytes")
    trusted = trusted_config_keys(sql)
    if not trusted:
        raise ConflictError(
            "the fleet knows no config key to check the document with: import the public key "
            "(owlgate fleet config-key import --key FILE.pub)"
        )
    try:
        doc = verify_config(data, trusted)
    except ConfigRejected as err:
        raise InvalidError(
            f"the document is refused ({err.reason.value}): {err.message}; sign it with "
            "`owlgate config sign --key FILE` with a key the fleet knows"
        ) from err
    if doc.seq > MAX_SEQ:
        raise InvalidError(f"seq {doc.seq} is above {MAX_SEQ}, the largest the fleet stores")
    config = json.loads(to_json(doc))["config"]
    with sql.transaction() as db:
        _serialised(db)
        if isinstance(doc.target, bytes):
            gateways = [doc.target.hex()]
            if not _registered(db, gateways[0]):
                raise NotFoundError(f"the document is for gateway {gateways[0]}, not registered")
        else:
            gateways = [
                row[0]
                for row in db.query_tuples(
                    "SELECT gateway_id FROM gateway_groups WHERE group_name = ?"
                    " ORDER BY gateway_id",
                    [doc.target],
                )
            ]
            if not gateways:
                raise NotFoundError(f"the document is for group {doc.target!r}, which is empty")
        for gid in gateways:
            issued = last_seq(db, gid)
            if doc.seq <= issued:
                raise ConflictError(
                    f"seq {doc.seq} is not above seq {issued} the fleet already sent gateway "
                    f"{gid}: sign the document again with seq {issued + 1} or more"
                )
        for gid in gateways:
            _raise_seq(db, gid, doc.seq)
            db.execute(
                "INSERT INTO config_documents (gateway_id, seq, config, content_hash, next_key,"
                " purpose, rollout_id, state, cose, signed_by, created, published_at)"
                " VALUES (?, ?, ?, ?, ?, 'offline', NULL, 'queued', ?, ?, ?, NULL)",
                [
                    gid,
                    doc.seq,
                    json.dumps(config, sort_keys=True),
                    doc.content_hash.hex(),
                    None if doc.next_key is None else doc.next_key.hex(),
                    bytes(data),
                    None if doc.signed_by is None else doc.signed_by.hex(),
                    when,
                ],
            )
        record_event(
            db,
            actor=actor,
            action="config.document_uploaded",
            target=f"config:{doc.target_text}",
            details={
                "seq": doc.seq,
                "gateways": gateways,
                "content_hash": doc.content_hash.hex(),
                "signed_by": None if doc.signed_by is None else doc.signed_by.hex(),
            },
            at=when,
        )
    return {
        "seq": doc.seq,
        "target": doc.target_text,
        "gateways": gateways,
        "content_hash": doc.content_hash.hex(),
        "signed_by": None if doc.signed_by is None else doc.signed_by.hex(),
        "state": "queued",
    }


# --- the engine ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publication:
    """One document to publish retained on its gateway's config topic."""

    gateway_id: str
    seq: int
    payload: bytes = field(repr=False)

    @property
    def topic(self) -> str:
        return config_topic(self.gateway_id)


@dataclass(slots=True)
class ConfigCounters:
    """What the config service did since it started (``GET /api/v1/stats`` as ``config``,
    ``/metrics`` as ``owlgate_fleet_config_*``). Reports are handled in worker threads:
    change the counts through the methods, which hold a lock."""

    statuses: int = 0
    documents_signed: int = 0
    documents_published: int = 0
    publish_failures: int = 0
    reconnects: int = 0
    ticks: int = 0
    tick_errors: int = 0
    drift: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, name: str, by: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + by)

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        with self._lock:
            return {
                "statuses": self.statuses,
                "documents_signed": self.documents_signed,
                "documents_published": self.documents_published,
                "publish_failures": self.publish_failures,
                "reconnects": self.reconnects,
                "ticks": self.ticks,
                "tick_errors": self.tick_errors,
                "rejected": dict(self.rejected),
                "gauges": {"drift": self.drift},
            }


class RolloutEngine:
    """The rollout decisions and the status reports, against ``store`` (synchronous; the
    :class:`ConfigService` runs it in worker threads). Signs with the active config key of
    the database, else ``signing_key``."""

    def __init__(
        self,
        store: Store,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.counters = ConfigCounters()
        self._fallback_key = signing_key
        self._refusals = RateLimitedLog(log, burst=10, window_s=60.0)
        self._last_drift = -math.inf

    @property
    def sql(self) -> Sql:
        return self.store.sql

    def signer(self) -> Ed25519PrivateKey:
        """The key documents are signed with now."""
        held = active_signing_key(self.sql, self.store.vault)
        return held if held is not None else self._fallback_key

    def remember_fleet_key(self) -> None:
        remember_serve_key(self.sql, self._fallback_key.public_key(), self.clock())

    # -- ticking --

    def tick(self) -> list[Publication]:
        """Advance every active rollout (timeouts, thresholds, waves) and return the
        documents to publish now, signed, in seq order per gateway."""
        now = self.clock()
        self.counters.count("ticks")
        active = [
            int(row[0])
            for row in self.sql.query_tuples(
                "SELECT id FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id"
            )
        ]
        for rollout_id in active:
            self._advance(rollout_id, now)
        self._rollback_timeouts(now)
        if now - self._last_drift >= DRIFT_INTERVAL_S:
            self._last_drift = now
            self.counters.drift = drift_count(self.sql)
        return self._queued(now)

    def _advance(self, rollout_id: int, now: float) -> None:
        with self.sql.transaction() as db:
            _serialised(db)
            row = _rollout_row(db, rollout_id)
            if row["state"] not in ACTIVE:
                return
            plan = Plan.from_json(row["plan"])
            db.execute(
                "UPDATE rollout_gateways SET state = 'timeout', reason = 'timeout', detail = ?,"
                " answered_at = ? WHERE rollout_id = ? AND state IN ('sent', 'received')"
                " AND sent_at IS NOT NULL AND sent_at <= ?",
                [
                    f"no final answer within {plan.timeout_s:g} s",
                    now,
                    rollout_id,
                    now - plan.timeout_s,
                ],
            )
            tally: dict[int, dict[str, int]] = {}
            for wave, state, count in db.query_tuples(
                "SELECT wave, state, COUNT(*) FROM rollout_gateways WHERE rollout_id = ?"
                " GROUP BY wave, state",
                [rollout_id],
            ):
                tally.setdefault(int(wave), {})[state] = int(count)
            total = plan.wave_ends[-1]
            failures = sum(t.get(s, 0) for t in tally.values() for s in FAILURES)
            crossed = plan.crossed(failures, total)
            if crossed is not None:
                self._stop(db, rollout_id, "failed", crossed, now)
                return
            current = int(row["current_wave"])
            while True:
                size = plan.wave_ends[current] - (plan.wave_ends[current - 1] if current else 0)
                wave = tally.get(current, {})
                applied = wave.get("applied", 0)
                passed = applied * 100 >= plan.success_threshold_pct * size
                still_open = sum(wave.get(state, 0) for state in OPEN)
                if not passed:
                    if still_open == 0:
                        self._stop(
                            db,
                            rollout_id,
                            "failed",
                            f"wave {current} ({plan.wave_names[current]}): {applied} of {size} "
                            f"applied, below success_threshold_pct "
                            f"{plan.success_threshold_pct:g}",
                            now,
                        )
                        return
                    break
                if current + 1 == len(plan.wave_ends):
                    if not any(t.get(state, 0) for t in tally.values() for state in OPEN):
                        _set_state(db, rollout_id, "completed", None, now)
                        record_event(
                            db,
                            actor="fleet:rollouts",
                            action="rollout.completed",
                            target=f"rollout:{rollout_id}",
                            details={"failures": failures, "gateways": total},
                            at=now,
                        )
                        log.info("rollout %d completed (%d failures)", rollout_id, failures)
                    break
                if row["state"] == "paused":
                    break
                current += 1
                db.execute(
                    "UPDATE rollouts SET current_wave = ?, updated = ? WHERE id = ?",
                    [current, now, rollout_id],
                )
                log.info(
                    "rollout %d: wave %d (%s) starts", rollout_id, current, plan.wave_names[current]
                )
            if row["state"] == "running":
                self._queue_wave(db, rollout_id, current, plan, now)

    def _queue_wave(self, db: Sql, rollout_id: int, wave: int, plan: Plan, now: float) -> None:
        rows = db.query(
            "SELECT g.gateway_id, g.seq, g.config, g.content_hash FROM rollout_gateways g"
            " LEFT JOIN config_documents d ON d.gateway_id = g.gateway_id AND d.seq = g.seq"
            " WHERE g.rollout_id = ? AND g.wave <= ? AND g.state = 'pending'"
            " AND d.seq IS NULL ORDER BY g.gateway_id",
            [rollout_id, wave],
        )
        db.executemany(
            "INSERT INTO config_documents (gateway_id, seq, config, content_hash, next_key,"
            " purpose, rollout_id, state, cose, signed_by, created, published_at)"
            " VALUES (?, ?, ?, ?, ?, 'rollout', ?, 'queued', NULL, NULL, ?, NULL)",
            [
                [
                    row["gateway_id"],
                    row["seq"],
                    row["config"],
                    row["content_hash"],
                    plan.next_key,
                    rollout_id,
                    now,
                ]
                for row in rows
            ],
        )

    def _stop(self, db: Sql, rollout_id: int, state: str, reason: str, now: float) -> None:
        _cancel_unsent(db, rollout_id, f"rollout {state}: {reason}")
        _set_state(db, rollout_id, state, reason, now)
        record_event(
            db,
            actor="fleet:rollouts",
            action="rollout.stopped",
            target=f"rollout:{rollout_id}",
            details={"state": state, "reason": reason},
            at=now,
        )
        log.warning("rollout %d stopped (%s): %s", rollout_id, state, reason)

    def _rollback_timeouts(self, now: float) -> None:
        rows = self.sql.query_tuples(
            "SELECT g.rollout_id, g.gateway_id, r.plan FROM rollout_gateways g JOIN rollouts r"
            " ON r.id = g.rollout_id WHERE g.rollback_state IN ('sent', 'received')"
        )
        for rollout_id, gid, plan_text in rows:
            timeout = Plan.from_json(plan_text).timeout_s
            self.sql.execute(
                "UPDATE rollout_gateways SET rollback_state = 'timeout', rollback_reason ="
                " 'timeout', rollback_answered_at = ? WHERE rollout_id = ? AND gateway_id = ?"
                " AND rollback_state IN ('sent', 'received') AND rollback_sent_at <= ?",
                [now, rollout_id, gid, now - timeout],
            )

    def _queued(self, now: float) -> list[Publication]:
        rows = self.sql.query(
            "SELECT gateway_id, seq, config, next_key, cose FROM config_documents"
            " WHERE state = 'queued' ORDER BY gateway_id, seq"
        )
        if not rows:
            return []
        out: list[Publication] = []
        signer: Ed25519PrivateKey | None = None
        for row in rows:
            payload = row["cose"]
            if payload is None:
                signer = signer or self.signer()
                payload = self._sign(row, signer, now)
            out.append(Publication(row["gateway_id"], int(row["seq"]), bytes(payload)))
        return out

    def _sign(self, row: dict[str, Any], signer: Ed25519PrivateKey, now: float) -> bytes:
        document = {
            "seq": int(row["seq"]),
            "target": {"gateway": row["gateway_id"]},
            "issued_at": int(now),
            "config": json.loads(row["config"]),
        }
        if row["next_key"] is not None:
            document["next_key"] = row["next_key"]
        doc = from_json(json.dumps(document))
        payload = sign_config(doc, signer)
        self.sql.execute(
            "UPDATE config_documents SET cose = ?, signed_by = ? WHERE gateway_id = ? AND seq = ?"
            " AND cose IS NULL",
            [payload, key_id(signer).hex(), row["gateway_id"], row["seq"]],
        )
        self.counters.count("documents_signed")
        return payload

    def published(self, items: Sequence[Publication]) -> None:
        """Record that ``items`` were published (PUBACK received)."""
        now = self.clock()
        with self.sql.transaction() as db:
            _serialised(db)
            for item in items:
                db.execute(
                    "UPDATE config_documents SET state = 'published', published_at = ?"
                    " WHERE gateway_id = ? AND seq = ? AND state = 'queued'",
                    [now, item.gateway_id, item.seq],
                )
                db.execute(
                    "UPDATE rollout_gateways SET state = CASE WHEN state = 'pending' THEN 'sent'"
                    " ELSE state END, sent_at = CASE WHEN sent_at IS NULL THEN ? ELSE sent_at"
                    " END WHERE gateway_id = ? AND seq = ?",
                    [now, item.gateway_id, item.seq],
                )
                db.execute(
                    "UPDATE rollout_gateways SET rollback_state = CASE WHEN rollback_state ="
                    " 'pending' THEN 'sent' ELSE rollback_state END, rollback_sent_at = CASE"
                    " WHEN rollback_sent_at IS NULL THEN ? ELSE rollback_sent_at END"
                    " WHERE gateway_id = ? AND rollback_seq = ?",
                    [now, item.gateway_id, item.seq],
                )
        self.counters.count("documents_published", len(items))

    # -- reports --

    def handle_status(self, topic: str, payload: bytes) -> ConfigStatus:
        """Verify and record one report; StatusRejected (counted, logged) if not acted on."""
        try:
            return self._status(topic, payload)
        except StatusRejected as err:
            self.counters.reject(err.reason)
            self._refusals.warning(err.reason, "config status refused: %s", err.message)
            raise

    def _status(self, topic: str, payload: bytes) -> ConfigStatus:
        gid = parse_status_topic(topic)
        try:
            raw = self.store.gateway(gid).sign_public_key
        except NotFoundError as err:
            raise StatusRejected("unknown_gateway", f"gateway {gid} is not registered") from err
        try:
            content = verify(payload, Ed25519PublicKey.from_public_bytes(raw)).payload
        except OwlgateError as err:
            raise StatusRejected("signature", f"status from gateway {gid}: {err}") from err
        try:
            status = decode_config_status(content)
        except OwlgateError as err:
            raise StatusRejected("malformed", f"status from gateway {gid}: {err}") from err
        self._record(gid, status)
        self.counters.count("statuses")
        return status

    def _record(self, gid: str, status: ConfigStatus) -> None:
        now = self.clock()
        seq = min(status.seq, MAX_SEQ)
        content = None if status.content_hash is None else status.content_hash.hex()
        running = None if status.running_hash is None else status.running_hash.hex()
        with self.sql.transaction() as db:
            _serialised(db)
            applied = seq if status.state == "applied" else None
            db.execute(
                "INSERT INTO gateway_config_status (gateway_id, state, seq, content_hash, reason,"
                " detail, running_hash, reported_at, received_at, applied_seq)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE SET"
                " state = excluded.state, seq = excluded.seq, content_hash ="
                " excluded.content_hash, reason = excluded.reason, detail = excluded.detail,"
                " running_hash = CASE WHEN excluded.running_hash IS NULL THEN"
                " gateway_config_status.running_hash ELSE excluded.running_hash END,"
                " reported_at = excluded.reported_at, received_at = excluded.received_at,"
                " applied_seq = CASE WHEN excluded.applied_seq IS NULL THEN"
                " gateway_config_status.applied_seq ELSE excluded.applied_seq END",
                [
                    gid,
                    status.state,
                    seq,
                    content,
                    status.reason,
                    status.detail,
                    running,
                    float(status.at),
                    now,
                    applied,
                ],
            )
            if seq:
                # A seq the fleet did not issue (a document signed offline and published by
                # other means): later documents must still be above it.
                _raise_seq(db, gid, seq)
            self._apply_to_rollouts(db, gid, status, seq, now)

    def _apply_to_rollouts(
        self, db: Sql, gid: str, status: ConfigStatus, seq: int, now: float
    ) -> None:
        if seq == 0:
            return
        reason = status.reason
        detail = status.detail
        if status.state == "received":
            db.execute(
                "UPDATE rollout_gateways SET state = 'received', received_at = ?,"
                " sent_at = CASE WHEN sent_at IS NULL THEN ? ELSE sent_at END"
                " WHERE gateway_id = ? AND seq = ? AND state IN ('pending', 'sent')",
                [now, now, gid, seq],
            )
            db.execute(
                "UPDATE rollout_gateways SET rollback_state = 'received' WHERE gateway_id = ?"
                " AND rollback_seq = ? AND rollback_state IN ('pending', 'sent')",
                [gid, seq],
            )
            return
        db.execute(
            "UPDATE rollout_gateways SET state = ?, reason = ?, detail = ?, answered_at = ?,"
            " sent_at = CASE WHEN sent_at IS NULL THEN ? ELSE sent_at END"
            " WHERE gateway_id = ? AND seq = ? AND state IN ('pending', 'sent', 'received')",
            [status.state, reason, detail, now, now, gid, seq],
        )
        db.execute(
            "UPDATE rollout_gateways SET rollback_state = ?, rollback_reason = ?,"
            " rollback_answered_at = ? WHERE gateway_id = ? AND rollback_seq = ?"
            " AND rollback_state IN ('pending', 'sent', 'received')",
            [status.state, reason, now, gid, seq],
        )


class ConfigService(MqttService):
    """The rollout engine and the status subscriber on one MQTT connection: subscribes to
    every gateway's ``config/status``, ticks the engine and publishes what it queues
    (retained, QoS 1), reconnecting as :class:`~owlgate.fleet.mqtt.MqttService` does."""

    name = "config"

    def __init__(
        self,
        engine: RolloutEngine,
        host: str,
        port: int,
        *,
        tick_s: float = TICK_S,
        **options: Unpack[MqttOptions],
    ) -> None:
        super().__init__(host, port, **options)
        self.engine = engine
        self.tick_s = tick_s
        self._wake = asyncio.Event()
        # A fault that lasts (the database gone, a config key the KEK cannot unwrap) would
        # otherwise log four lines a second.
        self._tick_log = RateLimitedLog(log, burst=3, window_s=60.0)

    async def __aenter__(self) -> Self:
        try:
            await asyncio.to_thread(self.engine.remember_fleet_key)
        except SqlError as err:
            log.error("config: could not record the fleet signing key: %s", err)
        await super().__aenter__()
        return self

    def topics(self, mqtt5: bool) -> list[tuple[str, int]]:
        # Never shared: every fleet process that runs the engine needs every report.
        return [(STATUS_FILTER, QOS)]

    def count_reconnect(self) -> None:
        self.engine.counters.count("reconnects")

    def stats(self) -> dict[str, object]:
        """The config service's counters now (``GET /api/v1/stats``)."""
        return self.engine.counters.as_dict()

    def wake(self) -> None:
        """Tick now rather than at the next interval."""
        self._wake.set()

    async def serve(self, client: aiomqtt.Client) -> None:
        ticker = asyncio.create_task(self._ticks(client), name="owlgate-config-ticks")
        try:
            async for message in client.messages:
                payload: object = message.payload
                if not isinstance(payload, bytes | bytearray):
                    self.engine.counters.reject("malformed")
                    log.warning("config status on %s refused: payload is not bytes", message.topic)
                    continue
                try:
                    await asyncio.to_thread(
                        self.engine.handle_status, str(message.topic), bytes(payload)
                    )
                except StatusRejected:
                    continue  # counted and logged by handle_status
                except (FleetError, SqlError) as err:
                    self.engine.counters.reject("store")
                    log.error("config status on %s not stored: %s", message.topic, err)
                    continue
                self._wake.set()
        finally:
            ticker.cancel()
            (ended,) = await asyncio.gather(ticker, return_exceptions=True)
            if isinstance(ended, Exception):
                log.error("config engine stopped: %r", ended)

    async def _ticks(self, client: aiomqtt.Client) -> None:
        while True:
            try:
                due = await asyncio.to_thread(self.engine.tick)
            except (FleetError, SqlError, OwlgateError) as err:
                # The database may be back at the next tick; the rollouts wait for it.
                self.engine.counters.count("tick_errors")
                self._tick_log.warning("tick", "config engine tick failed: %s", err)
                due = []
            if due:
                await self._publish(client, due)
            self._wake.clear()
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for returns normally when
            # the task is cancelled just as the event is set, so the cancellation is lost and
            # this loop (and whoever awaits it on shutdown) runs forever.
            with suppress(TimeoutError):
                async with asyncio.timeout(self.tick_s):
                    await self._wake.wait()

    async def _publish(self, client: aiomqtt.Client, items: list[Publication]) -> None:
        # A few PUBLISHes in flight at once, not a wave's worth: below the point where
        # aiomqtt starts warning about pending calls, and well within a broker's inflight
        # window (Mosquitto's max_inflight_messages is 20).
        window = asyncio.Semaphore(PUBLISH_WINDOW)

        async def one(item: Publication) -> Publication | None:
            try:
                async with window:
                    await client.publish(item.topic, item.payload, qos=QOS, retain=True)
            except aiomqtt.MqttCodeError as err:
                self.engine.counters.count("publish_failures")
                log.error("could not publish config seq %d to %s: %s", item.seq, item.topic, err)
                return None
            return item

        done = [item for item in await asyncio.gather(*(one(i) for i in items)) if item]
        if done:
            await asyncio.to_thread(self.engine.published, done)


def config_service(
    host: str,
    port: int,
    signing_key: Ed25519PrivateKey,
    *,
    mqtt5: bool = True,
    instance: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Callable[[Store], AbstractAsyncContextManager[ConfigService]]:
    """A fleet service (see :func:`owlgate.fleet.cli.build_server`) running rollouts and
    recording config status reports over MQTT, signing with the database's config key or
    else ``signing_key``."""

    def service(store: Store) -> ConfigService:
        return ConfigService(
            RolloutEngine(store, signing_key),
            host,
            port,
            mqtt5=mqtt5,
            instance=instance,
            username=username,
            password=password,
        )

    return service


# --- the API -------------------------------------------------------------------------------------

#: Who may read rollouts and statuses, and who may start and steer them.
READERS: Final = ("operator", "technician")
CHANGERS: Final = ("operator",)
changers = requires(*CHANGERS)

RolloutId = Annotated[int, Path(ge=1, le=2**63 - 1)]
GatewayId = Annotated[str, Path(max_length=16)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)]
After = Annotated[str | None, Query(max_length=19, pattern=r"^[0-9]{1,19}$")]


def _app_clock(request: Request) -> Callable[[], float]:
    found = getattr(request.app.state, "clock", None)
    return found if callable(found) else time.time


def _decode_upload(body: bytes, content_type: str) -> bytes:
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/cbor":
        return body
    if kind == "application/json":
        try:
            value = json.loads(body)
            text = value["document"]
            if not isinstance(text, str):
                raise TypeError("document is not text")
            return base64.b64decode(text, validate=True)
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidError(
                'a JSON upload is {"document": "<base64 of the COSE bytes>"}'
            ) from err
    raise InvalidError(
        "send the signed document (the output of `owlgate config sign`) as application/cbor, "
        'or as application/json {"document": "<base64>"}'
    )


def router() -> APIRouter:
    """The rollout routes under ``/api/v1``: reading for operators and technicians, changing
    for operators (and admin); the store is ``request.app.state.store``."""
    from .api import API_PREFIX

    routes = APIRouter(prefix=API_PREFIX, tags=["rollouts"])
    readers = requires(*READERS)

    def store_of(request: Request) -> Store:
        found: Store = request.app.state.store
        return found

    def now(request: Request) -> float:
        return float(_app_clock(request)())

    @routes.post("/rollouts", summary="Start a configuration rollout in waves", status_code=201)
    def create_route(
        request: Request, body: RolloutCreate, principal: Annotated[Principal, changers]
    ) -> dict[str, Any]:
        store = store_of(request)
        rollout_id = start_rollout(store, body, actor=principal, now=now(request))
        return rollout_json(store.sql, rollout_id)

    @routes.get("/rollouts", summary="Rollouts, newest first", dependencies=[readers])
    def list_route(
        request: Request, limit: Limit = DEFAULT_PAGE_LIMIT, after: After = None
    ) -> dict[str, Any]:
        page = rollouts(store_of(request).sql, limit=limit, after=after)
        return {"items": page.items, "next": page.next}

    @routes.get(
        "/rollouts/{rollout_id}", summary="A rollout: waves, counts, state", dependencies=[readers]
    )
    def get_route(request: Request, rollout_id: RolloutId) -> dict[str, Any]:
        return rollout_json(store_of(request).sql, rollout_id)

    @routes.get(
        "/rollouts/{rollout_id}/gateways",
        summary="Each gateway of a rollout: state, seq, hash, reason, times",
        dependencies=[readers],
    )
    def gateways_route(
        request: Request,
        rollout_id: RolloutId,
        limit: Limit = DEFAULT_PAGE_LIMIT,
        after: Annotated[str | None, Query(max_length=16)] = None,
    ) -> dict[str, Any]:
        page = rollout_gateways(store_of(request).sql, rollout_id, limit=limit, after=after)
        return {"items": page.items, "next": page.next}

    def steer(
        request: Request,
        rollout_id: int,
        action: Literal["pause", "resume", "abort", "rollback"],
        principal: Principal,
    ) -> dict[str, Any]:
        sql = store_of(request).sql
        change_rollout(sql, rollout_id, action, actor=principal, now=now(request))
        return rollout_json(sql, rollout_id)

    @routes.post("/rollouts/{rollout_id}/pause", summary="Pause a rollout")
    def pause_route(
        request: Request, rollout_id: RolloutId, principal: Annotated[Principal, changers]
    ) -> dict[str, Any]:
        return steer(request, rollout_id, "pause", principal)

    @routes.post("/rollouts/{rollout_id}/resume", summary="Resume a paused rollout")
    def resume_route(
        request: Request, rollout_id: RolloutId, principal: Annotated[Principal, changers]
    ) -> dict[str, Any]:
        return steer(request, rollout_id, "resume", principal)

    @routes.post("/rollouts/{rollout_id}/abort", summary="Abort a rollout")
    def abort_route(
        request: Request, rollout_id: RolloutId, principal: Annotated[Principal, changers]
    ) -> dict[str, Any]:
        return steer(request, rollout_id, "abort", principal)

    @routes.post(
        "/rollouts/{rollout_id}/rollback",
        summary="Send each gateway that applied its previous configuration, with a higher seq",
    )
    def rollback_route(
        request: Request, rollout_id: RolloutId, principal: Annotated[Principal, changers]
    ) -> dict[str, Any]:
        return steer(request, rollout_id, "rollback", principal)

    @routes.post(
        "/config/documents",
        summary="Publish a configuration document signed offline",
        status_code=202,
    )
    async def upload_route(
        request: Request, principal: Annotated[Principal, changers]
    ) -> dict[str, Any]:
        body = await request.body()
        data = _decode_upload(body, request.headers.get("content-type", ""))
        sql = store_of(request).sql
        return await asyncio.to_thread(
            upload_document, sql, data, actor=principal, now=now(request)
        )

    @routes.get(
        "/config/keys",
        summary="The config keys the fleet knows (public keys only)",
        dependencies=[readers],
    )
    def keys_route(request: Request) -> dict[str, Any]:
        return {
            "items": [
                {
                    "key_id": key.key_id,
                    "public_key": key.public_key.hex(),
                    "signs": key.can_sign,
                    "active": key.active,
                    "source": key.source,
                    "created": _iso(key.created),
                }
                for key in config_keys(store_of(request).sql)
            ]
        }

    @routes.get(
        "/gateways/{gateway_id}/config/status",
        summary="A gateway's last config report, what was last published to it, and drift",
        dependencies=[readers],
    )
    def status_route(request: Request, gateway_id: GatewayId) -> dict[str, Any]:
        return gateway_config_status(store_of(request).sql, gateway_id)

    return routes


__all__ = [
    "ConfigService",
    "RolloutCreate",
    "RolloutEngine",
    "change_rollout",
    "config_service",
    "generate_config_key",
    "import_config_key",
    "queue_signed_document",
    "rollout_json",
    "start_rollout",
    "upload_document",
]
