"""Provisioning for field technicians: claim tokens for gateways, AppKeys for sensor modules,
offline key bundles and their sync (``docs/fleet-provisioning.md``).

**Gateways.** An operator issues a one-time *claim token* (``owl-claim-<random>``), bound to a
group and a site and expiring (``POST /api/v1/claims``, ``owlgate fleet claim create``). The
gateway tool presents it with the gateway's public keys and a proof that it holds the
identity key (an Ed25519 signature over ``b"owlgate/v1 claim " + claim + b" " + gateway id``)
at ``POST /api/v1/provision/gateway``, which needs no bearer token: the claim token is the
credential. The fleet then, in one transaction, registers the gateway, puts it in the
claim's group, issues its MQTT password and records ``gateway.claimed``; when the layers
make a complete configuration it signs the gateway's first configuration document and
queues it to be published retained, as a rollout's documents are. Presenting the same claim
again with the same gateway id and keys (a re-run after a crash) gives the same answer with
a new MQTT password, the old one revoked. Only the SHA-256 of a claim token is stored, and
the MQTT password exists only in the answer.

**Sensor modules.** A technician asks for a device's AppKey (``POST
/api/v1/provision/nodes``): the fleet draws a random one, stores the device (OTAA) with it
wrapped under the vault's KEK, and returns it to that technician only. The same technician
asking again for a device that has not joined yet gets the same key back (recorded as
``keys.exported``), so an interrupted module can be finished; anyone else gets 409.

**Offline.** ``POST /api/v1/provision/bundles`` reserves ``count`` AppKeys for the calling
technician and returns them sealed to the laptop's X25519 key (:mod:`owlgate.codecs.bundle`);
``POST /api/v1/provision/sync`` later registers the devices written with them. A DevEUI
provisioned twice, or a reservation used for two DevEUIs, is reported as a conflict, never
merged.

Refusals are typed (:class:`ProvisioningError`, with the HTTP status), answered as
``{"detail": "<what to do>", "error": {"code", "message"}}``, counted
(:class:`ProvisioningStats`, in ``/api/v1/stats`` under ``provisioning``) and logged, failed
claim attempts through a rate-limited log; an address with too many failed claim attempts in
a window is refused with 429 for a while (:class:`FailureLimiter`).

Tables (migration ``0700_provisioning``): ``claim_tokens``, ``provisioned_devices`` (who
provisioned which device, how and when), ``key_bundles`` and ``key_reservations`` (the
reserved AppKeys, wrapped).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import APIRouter, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from owlgate.codecs.bundle import MAX_KEYS, KeyBundle, Reservation, seal_bundle

from .audit import record_event
from .auth import (
    AuthError,
    FailureLimiter,
    Principal,
    failure_limiter,
    refusal_before_validation,
    requires,
)
from .brokerauth import issue_gateway_credentials
from .configs import GROUP_PATTERN, ConfigRefused, effective_config, group_of, set_group
from .health import GatewayState, assess
from .metrics import RateLimitedLog
from .rollouts import active_signing_key, config_keys, queue_signed_document
from .schema import migration
from .sql import DatabaseFault, DataRefused, Sql
from .store import ConflictError, FleetError, InvalidError, NotFoundError, Store, eui_hex

log = logging.getLogger(__name__)

CLAIM_PREFIX: Final = "owl-claim-"
CLAIM_SECRET_BYTES: Final = 32
#: What a proof of the identity key signs (``+ claim + b" " + gateway id bytes``).
CLAIM_PROOF_PREFIX: Final = b"owlgate/v1 claim "
CHECK_PROOF_PREFIX: Final = b"owlgate/v1 check "
#: How long after a claim the gateway may ask whether its heartbeat arrived, and re-present
#: the claim (a re-run after a crash) even if the token has expired meanwhile.
CHECK_WINDOW_S: Final = 3600.0
DEFAULT_CLAIM_TTL_S: Final = 86400
MIN_CLAIM_TTL_S: Final = 60
MAX_CLAIM_TTL_S: Final = 30 * 86400
DEFAULT_BUNDLE_TTL_S: Final = 30 * 86400
MAX_BUNDLE_TTL_S: Final = 180 * 86400
#: The JoinEUI written into modules when neither the request nor the fleet's settings give
#: one (LoRaWAN 1.0.4 section 6.2.2: any value the join server answers for; all zeros is the
#: usual choice of a private network).
DEFAULT_JOIN_EUI: Final = "0000000000000000"
#: Failed claim attempts one address may make in :data:`FAILURE_WINDOW_S` before it is
#: refused with 429 until the window has passed.
MAX_FAILED_CLAIMS: Final = 10
FAILURE_WINDOW_S: Final = 300.0
MAX_TEXT: Final = 200
MAX_COMMENT: Final = 500

_CLAIM_SHAPE: Final = r"^owl-claim-[A-Za-z0-9_-]{43}$"
_HEX_EUI: Final = r"^[0-9a-fA-F]{16}$"
_HEX_KEY32: Final = r"^[0-9a-fA-F]{64}$"
_HEX_SIG: Final = r"^[0-9a-fA-F]{128}$"

#: The roles that issue claim tokens, and those that provision sensor modules.
CLAIM_ISSUERS: Final = ("operator",)
NODE_PROVISIONERS: Final = ("technician",)
issuers = requires(*CLAIM_ISSUERS)
provisioners = requires(*NODE_PROVISIONERS)

#: The OpenAPI extension that names the credential of a route that takes no bearer token.
OPENAPI_CREDENTIAL_KEY: Final = "x-owlgate-credential"
CLAIM_CREDENTIAL: Final = "claim-token"

ClaimState = Literal["unused", "used", "expired", "revoked"]
SyncResult = Literal["created", "already_synced", "conflict"]


# --- errors --------------------------------------------------------------------------------------


class ProvisioningError(FleetError):
    """A provisioning request the fleet refuses: ``status`` is the HTTP status, ``code`` a
    short name (also the counter's), the message says what to do."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ClaimRefused(ProvisioningError):
    """A claim (or check) that is refused: unknown 401, bad proof 403, used or keys taken
    409, expired or revoked 410, too many failures 429."""


class NotConfigured(ProvisioningError):
    """The fleet process was started without what gateways need (signing key, MQTT URL)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503, code="not_configured")


# --- settings and counters -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProvisioningSettings:
    """What this fleet process hands a claimed gateway: the MQTT URL it connects to, the
    fleet signing key whose public half it pins (and that signs its first configuration
    when no config key is held in the database), and the JoinEUI modules get by default."""

    mqtt_url: str | None = None
    signing_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    default_join_eui: str = DEFAULT_JOIN_EUI


class ProvisioningStats:
    """Claims, nodes, bundles and refusals by code (``GET /api/v1/stats``)."""

    name = "provisioning"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {
            "claims": 0,
            "reclaims": 0,
            "checks": 0,
            "nodes_created": 0,
            "nodes_resumed": 0,
            "bundles": 0,
            "synced": 0,
            "sync_conflicts": 0,
        }
        self.refused: dict[str, int] = {}

    def count(self, name: str, by: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + by

    def refuse(self, code: str) -> None:
        with self._lock:
            self.refused[code] = self.refused.get(code, 0) + 1

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {**self.counts, "refused": dict(self.refused)}


def configure(app: FastAPI, settings: ProvisioningSettings) -> None:
    """Give ``app`` (from :func:`~owlgate.fleet.api.create_app`) what claimed gateways are
    handed: ``owlgate fleet serve`` does this with its signing key and public MQTT URL."""
    app.state.provisioning_settings = settings
    provisioning_stats(app)


def _settings(app: Any) -> ProvisioningSettings:
    found = getattr(app.state, "provisioning_settings", None)
    return found if isinstance(found, ProvisioningSettings) else ProvisioningSettings()


def provisioning_stats(app: Any) -> ProvisioningStats:
    """The app's provisioning counters, shown in ``/api/v1/stats`` (created on first use)."""
    stats = getattr(app.state, "provisioning_stats", None)
    if not isinstance(stats, ProvisioningStats):
        stats = app.state.provisioning_stats = ProvisioningStats()
        sources = getattr(app.state, "stats_sources", None)
        if isinstance(sources, dict):
            sources[stats.name] = stats
    return stats


def _limiter(app: Any) -> FailureLimiter:
    return failure_limiter(
        app, "claim_failures", limit=MAX_FAILED_CLAIMS, window_s=FAILURE_WINDOW_S
    )


_refusal_log = RateLimitedLog(log, burst=10, window_s=60.0)


# --- schema --------------------------------------------------------------------------------------


@migration("0700_provisioning")
def _provisioning(db: Sql) -> None:
    db.execute(
        db.ddl(
            "CREATE TABLE claim_tokens ("
            " id {serial},"
            " token_hash {blob} NOT NULL UNIQUE,"
            " group_name TEXT,"
            " site TEXT,"
            " comment TEXT NOT NULL,"
            " created {float} NOT NULL,"
            " created_by TEXT NOT NULL,"
            " created_by_token TEXT,"
            " expires_at {float} NOT NULL,"
            " revoked_at {float},"
            " revoked_by TEXT,"
            " used_at {float},"
            " gateway_id TEXT,"
            " gateway_name TEXT,"
            " sign_public_key {blob},"
            " seal_public_key {blob},"
            " config_seq {int},"
            " uses {int} NOT NULL)"
        )
    )
    db.execute("CREATE INDEX claim_tokens_gateway ON claim_tokens (gateway_id)")
    db.execute(
        db.ddl(
            "CREATE TABLE provisioned_devices ("
            " dev_eui TEXT PRIMARY KEY REFERENCES devices (dev_eui),"
            " actor TEXT NOT NULL,"
            " actor_token TEXT,"
            " via TEXT NOT NULL CHECK (via IN ('online', 'bundle')),"
            " bundle_id TEXT,"
            " reservation_id {int},"
            " site TEXT,"
            " provisioned_at {float} NOT NULL,"
            " recorded_at {float} NOT NULL)"
        )
    )
    db.execute(
        db.ddl(
            "CREATE TABLE key_bundles ("
            " id TEXT PRIMARY KEY,"
            " actor TEXT NOT NULL,"
            " actor_token TEXT,"
            " profile_id TEXT NOT NULL,"
            " join_eui TEXT NOT NULL,"
            " site TEXT,"
            " key_count {int} NOT NULL,"
            " public_key {blob} NOT NULL,"
            " created {float} NOT NULL,"
            " expires_at {float} NOT NULL)"
        )
    )
    # app_key is wrapped under the vault's KEK, like device_keys.
    db.execute(
        db.ddl(
            "CREATE TABLE key_reservations ("
            " id {serial},"
            " bundle_id TEXT NOT NULL REFERENCES key_bundles (id),"
            " app_key {blob} NOT NULL,"
            " dev_eui TEXT UNIQUE,"
            " name TEXT,"
            " provisioned_at {float},"
            " synced_at {float})"
        )
    )
    db.execute("CREATE INDEX key_reservations_bundle ON key_reservations (bundle_id, id)")


# --- helpers -------------------------------------------------------------------------------------


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def claim_hash(token: str) -> bytes:
    """SHA-256 of a claim token's text: what the database keeps (a 256-bit random secret
    needs no slow hash; see :mod:`owlgate.fleet.auth`)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def claim_message(claim: str, gateway_id: str) -> bytes:
    """The bytes a gateway signs to claim: ``owlgate/v1 claim <claim> <gateway id bytes>``."""
    return CLAIM_PROOF_PREFIX + claim.encode() + b" " + bytes.fromhex(gateway_id)


def check_message(claim: str, gateway_id: str) -> bytes:
    """The bytes a gateway signs to ask whether its heartbeat arrived."""
    return CHECK_PROOF_PREFIX + claim.encode() + b" " + bytes.fromhex(gateway_id)


def _public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _text(value: str | None, what: str, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    stripped = value.strip()
    if not stripped:
        return None
    if len(stripped) > limit:
        raise InvalidError(f"{what} is at most {limit} characters")
    return stripped


def _actor_parts(actor: Principal | str) -> tuple[str, str | None]:
    if isinstance(actor, Principal):
        return actor.name, actor.token_id
    return actor, None


# --- claim tokens --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedClaim:
    """A claim token just created: the only time its text exists outside the technician's
    hands. ``repr`` hides it."""

    id: int
    token: str = field(repr=False)
    group: str | None
    site: str | None
    expires_at: float
    created_by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimInfo:
    """A stored claim token, without anything that could claim."""

    id: int
    group: str | None
    site: str | None
    comment: str
    created: float
    created_by: str
    expires_at: float
    revoked_at: float | None
    revoked_by: str | None
    used_at: float | None
    gateway_id: str | None
    gateway_name: str | None
    uses: int

    def state(self, now: float) -> ClaimState:
        if self.revoked_at is not None:
            return "revoked"
        if self.used_at is not None:
            return "used"
        if self.expires_at <= now:
            return "expired"
        return "unused"

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state(now),
            "group": self.group,
            "site": self.site,
            "comment": self.comment,
            "created_at": _iso(self.created),
            "created_by": self.created_by,
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "revoked_by": self.revoked_by,
            "claimed_at": _iso(self.used_at),
            "gateway_id": self.gateway_id,
            "gateway_name": self.gateway_name,
            "claims": self.uses,
        }


_CLAIM_COLUMNS: Final = (
    "id, group_name, site, comment, created, created_by, expires_at, revoked_at, revoked_by,"
    " used_at, gateway_id, gateway_name, uses"
)


def _claim_info(row: dict[str, Any]) -> ClaimInfo:
    return ClaimInfo(
        id=int(row["id"]),
        group=row["group_name"],
        site=row["site"],
        comment=row["comment"],
        created=row["created"],
        created_by=row["created_by"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
        used_at=row["used_at"],
        gateway_id=row["gateway_id"],
        gateway_name=row["gateway_name"],
        uses=int(row["uses"]),
    )


def _group_name(group: str | None) -> str | None:
    # The rule of configuration groups: the claim puts the gateway in it, so a name the
    # layers would refuse is refused now, not on the roof.
    name = _text(group, "group")
    if name is not None and not re.match(GROUP_PATTERN, name):
        raise InvalidError(
            "a group name is 1..64 letters, digits, '.', '_' or '-' (starting with a letter"
            f" or digit), got {group!r}"
        )
    return name


def create_claim(
    sql: Sql,
    *,
    group: str | None = None,
    site: str | None = None,
    expires_in_s: float = DEFAULT_CLAIM_TTL_S,
    comment: str = "",
    actor: Principal | str,
    now: float | None = None,
) -> IssuedClaim:
    """Create a claim token, store its hash, record ``claim.created``, and return it: it is
    shown this once and cannot be recovered."""
    at = time.time() if now is None else now
    if not MIN_CLAIM_TTL_S <= expires_in_s <= MAX_CLAIM_TTL_S:
        raise InvalidError(
            f"a claim token expires in {MIN_CLAIM_TTL_S} .. {MAX_CLAIM_TTL_S} s, got"
            f" {expires_in_s:g}"
        )
    group_name = _group_name(group)
    site_name = _text(site, "site")
    note = comment.strip()
    if len(note) > MAX_COMMENT:
        raise InvalidError(f"a claim's comment is at most {MAX_COMMENT} characters")
    name, token_id = _actor_parts(actor)
    token = CLAIM_PREFIX + secrets.token_urlsafe(CLAIM_SECRET_BYTES)
    expires_at = at + expires_in_s
    with sql.transaction() as db:
        claim_id = int(
            db.scalar(
                "INSERT INTO claim_tokens (token_hash, group_name, site, comment, created,"
                " created_by, created_by_token, expires_at, uses)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0) RETURNING id",
                [claim_hash(token), group_name, site_name, note, at, name, token_id, expires_at],
            )
        )
        record_event(
            db,
            actor=actor,
            action="claim.created",
            target=f"claim:{claim_id}",
            details={
                "group": group_name,
                "site": site_name,
                "expires_at": expires_at,
                "comment": note,
            },
            at=at,
        )
    log.info("claim %d created by %s (group %s, site %s)", claim_id, name, group_name, site_name)
    return IssuedClaim(
        id=claim_id,
        token=token,
        group=group_name,
        site=site_name,
        expires_at=expires_at,
        created_by=name,
    )


def claims(sql: Sql) -> list[ClaimInfo]:
    """Every claim token, used, expired and revoked ones too, oldest first."""
    return [
        _claim_info(row)
        for row in sql.query(f"SELECT {_CLAIM_COLUMNS} FROM claim_tokens ORDER BY id")
    ]


def claim_info(sql: Sql, claim_id: int) -> ClaimInfo:
    rows = sql.query(f"SELECT {_CLAIM_COLUMNS} FROM claim_tokens WHERE id = ?", [claim_id])
    if not rows:
        raise NotFoundError(
            f"no claim token {claim_id}: `owlgate fleet claim list` (GET /api/v1/claims) shows them"
        )
    return _claim_info(rows[0])


def revoke_claim(
    sql: Sql, claim_id: int, *, actor: Principal | str, now: float | None = None
) -> ClaimInfo:
    """Revoke a claim token for good (``claim.revoked``): it claims nothing and checks
    nothing any more. Revoking a revoked token changes and records nothing."""
    at = time.time() if now is None else now
    name, _ = _actor_parts(actor)
    with sql.transaction() as db:
        changed = db.execute(
            "UPDATE claim_tokens SET revoked_at = ?, revoked_by = ? WHERE id = ?"
            " AND revoked_at IS NULL",
            [at, name, claim_id],
        )
        info = claim_info(db, claim_id)
        if changed:
            record_event(
                db,
                actor=actor,
                action="claim.revoked",
                target=f"claim:{claim_id}",
                details={"gateway_id": info.gateway_id, "was_used": info.used_at is not None},
                at=at,
            )
    if changed:
        log.info("claim %d revoked by %s", claim_id, name)
    return info


# --- claiming a gateway --------------------------------------------------------------------------


class GatewayClaim(BaseModel):
    """What the gateway tool sends to claim: the claim token, the gateway's id, name and
    public keys, and the proof that it holds the identity key."""

    claim: str = Field(pattern=_CLAIM_SHAPE, description="the claim token, owl-claim-...")
    gateway_id: str = Field(pattern=_HEX_EUI, description="the gateway's EUI-64, 16 hex")
    name: str = Field(default="", max_length=MAX_TEXT)
    sign_public_key: str = Field(pattern=_HEX_KEY32, description="Ed25519, 32 bytes hex")
    seal_public_key: str = Field(pattern=_HEX_KEY32, description="X25519, 32 bytes hex")
    proof: str = Field(
        pattern=_HEX_SIG,
        description="Ed25519 signature by the identity key over"
        " b'owlgate/v1 claim ' + claim + b' ' + gateway id bytes, hex",
    )


class GatewayCheck(BaseModel):
    """The gateway tool asking whether the gateway's heartbeat reached the fleet."""

    claim: str = Field(pattern=_CLAIM_SHAPE)
    proof: str = Field(
        pattern=_HEX_SIG,
        description="Ed25519 signature over b'owlgate/v1 check ' + claim + b' ' + gateway id"
        " bytes, hex",
    )


def _claim_row(db: Sql, token: str) -> dict[str, Any] | None:
    rows = db.query(
        f"SELECT {_CLAIM_COLUMNS}, sign_public_key, seal_public_key, config_seq"
        " FROM claim_tokens WHERE token_hash = ?",
        [claim_hash(token)],
    )
    return rows[0] if rows else None


def _refuse(message: str, status: int, code: str) -> ClaimRefused:
    return ClaimRefused(message, status=status, code=code)


def _fleet_keys(sql: Sql, settings: ProvisioningSettings) -> tuple[str, str | None]:
    if settings.signing_key is None:
        raise NotConfigured(
            "this fleet process has no signing key for gateways to pin: start it with"
            " `owlgate fleet serve --signing-key FILE`"
        )
    active = [key for key in config_keys(sql) if key.active and key.can_sign]
    return _public_pem(settings.signing_key.public_key()), (
        active[0].public_pem if active else None
    )


def _initial_document(
    store: Store, settings: ProvisioningSettings, gateway_id: str, now: float
) -> int | None:
    """Sign and queue the gateway's first configuration document when its layers make a
    complete configuration; its seq, or None while they do not (no ``mqtt.url`` yet)."""
    try:
        effective = effective_config(store.sql, gateway_id)
    except ConflictError as err:
        log.info("gateway %s claimed without a first configuration: %s", gateway_id, err)
        return None
    signer = active_signing_key(store.sql, store.vault) or settings.signing_key
    if signer is None:
        return None
    seq, _ = queue_signed_document(
        store.sql, gateway_id, effective.config, signer, purpose="initial", now=now
    )
    return seq


def _document_base64(sql: Sql, gateway_id: str, seq: int | None) -> str | None:
    if seq is None:
        return None
    payload = sql.scalar(
        "SELECT cose FROM config_documents WHERE gateway_id = ? AND seq = ?", [gateway_id, seq]
    )
    return None if payload is None else base64.b64encode(bytes(payload)).decode("ascii")


def claim_gateway(
    store: Store, settings: ProvisioningSettings, body: GatewayClaim, *, now: float
) -> dict[str, Any]:
    """Claim a gateway with a claim token (see the module docstring): the answer the API
    returns, MQTT password included. :class:`ClaimRefused` saying why and what to do
    otherwise; :class:`NotConfigured` when this process cannot hand out what gateways need."""
    gid = body.gateway_id.lower()
    sign_key = bytes.fromhex(body.sign_public_key)
    seal_key = bytes.fromhex(body.seal_public_key)
    sql = store.sql
    with sql.transaction() as db:
        row = _claim_row(db, body.claim)
        if row is None:
            raise _refuse(
                "this claim token is not known to this fleet: check that it was copied whole,"
                " or ask an operator for a new one (owlgate fleet claim create)",
                401,
                "unknown",
            )
        info = _claim_info(row)
        if info.revoked_at is not None:
            raise _refuse(
                f"claim token {info.id} was revoked at {_iso(info.revoked_at)}: ask an operator"
                " for a new one",
                410,
                "revoked",
            )
        if not _verify(sign_key, bytes.fromhex(body.proof), claim_message(body.claim, gid)):
            raise _refuse(
                "the proof is not a signature of this claim by the gateway's identity key:"
                " sign b'owlgate/v1 claim ' + claim + b' ' + gateway id with the key whose"
                " public half is sign_public_key",
                403,
                "bad_proof",
            )
        again = info.used_at is not None
        if again:
            same = (
                info.gateway_id == gid
                and bytes(row["sign_public_key"]) == sign_key
                and bytes(row["seal_public_key"]) == seal_key
            )
            if not same:
                other = (
                    f"gateway {gid} with other keys"
                    if info.gateway_id == gid
                    else f"gateway {info.gateway_id}"
                )
                raise _refuse(
                    f"claim token {info.id} was used at {_iso(info.used_at)} by {other}: a claim"
                    " token claims one gateway once; ask an operator for a new one",
                    409,
                    "used",
                )
            assert info.used_at is not None
            if now >= max(info.expires_at, info.used_at + CHECK_WINDOW_S):
                raise _refuse(
                    f"claim token {info.id} expired at {_iso(info.expires_at)} (gateway {gid}"
                    f" was claimed with it at {_iso(info.used_at)}): ask an operator for a new"
                    " one to provision it again",
                    410,
                    "expired",
                )
        elif info.expires_at <= now:
            raise _refuse(
                f"claim token {info.id} expired at {_iso(info.expires_at)}: ask an operator for"
                " a new one",
                410,
                "expired",
            )
        existing = db.query(
            "SELECT sign_public_key, seal_public_key FROM gateways WHERE id = ?", [gid]
        )
        if existing and (
            bytes(existing[0]["sign_public_key"]) != sign_key
            or bytes(existing[0]["seal_public_key"]) != seal_key
        ):
            raise _refuse(
                f"gateway {gid} is already registered under other keys: if it was reinstalled,"
                " ask an admin to remove the old registration, or check the gateway id",
                409,
                "gateway_keys",
            )
        # Only a claim that would succeed learns how this process is set up.
        if settings.mqtt_url is None:
            raise NotConfigured(
                "this fleet process has no MQTT URL for gateways: start it with"
                " `owlgate fleet serve --public-mqtt-url mqtt://HOST:PORT`"
            )
        fleet_key_pem, config_key_pem = _fleet_keys(db, settings)
        if not again:
            taken = db.execute(
                "UPDATE claim_tokens SET used_at = ?, gateway_id = ?, gateway_name = ?,"
                " sign_public_key = ?, seal_public_key = ? WHERE id = ? AND used_at IS NULL",
                [now, gid, body.name.strip(), sign_key, seal_key, info.id],
            )
            if taken == 0:
                # Another gateway won the race for this token between our read and update.
                raise _refuse(
                    f"claim token {info.id} was just used by another gateway: ask an operator"
                    " for a new one",
                    409,
                    "used",
                )
            if not existing:
                store.create_gateway(
                    gid,
                    name=body.name.strip(),
                    sign_public_key=sign_key,
                    seal_public_key=seal_key,
                    created=now,
                )
            if info.group is not None and group_of(db, gid) != info.group:
                try:
                    set_group(db, gid, info.group, actor=f"claim:{info.id}", at=now)
                except ConfigRefused as err:
                    raise _refuse(
                        f"gateway {gid} cannot join group {info.group!r}: {err.message}; ask"
                        " an operator to fix the group's configuration",
                        409,
                        "group_refused",
                    ) from err
        active = (
            db.scalar(
                "SELECT 1 FROM broker_credentials WHERE username = ? AND password_hash IS NOT NULL",
                [gid],
            )
            is not None
        )
        issued = issue_gateway_credentials(db, gid, actor=f"claim:{info.id}", rotate=active, at=now)
        seq = row["config_seq"]
        if seq is None:
            seq = _initial_document(store, settings, gid, now)
        db.execute(
            "UPDATE claim_tokens SET uses = uses + 1, config_seq = ? WHERE id = ?",
            [seq, info.id],
        )
        document = _document_base64(db, gid, None if seq is None else int(seq))
        record_event(
            db,
            actor=f"claim:{info.id}",
            action="gateway.claimed",
            target=f"gateway:{gid}",
            details={
                "claim": info.id,
                "claim_created_by": info.created_by,
                "name": body.name.strip(),
                "group": info.group,
                "site": info.site,
                "again": again,
                "config_seq": seq,
                "sign_public_key": body.sign_public_key.lower(),
            },
            at=now,
        )
    claimed_at = now if info.used_at is None else info.used_at
    log.info(
        "gateway %s %s with claim %d (group %s, site %s)",
        gid,
        "claimed again" if again else "claimed",
        info.id,
        info.group,
        info.site,
    )
    return {
        "gateway_id": gid,
        "group": info.group,
        "site": info.site,
        "mqtt": {"url": settings.mqtt_url, "username": gid, "password": issued.password},
        "fleet_key_pem": fleet_key_pem,
        "config_key_pem": config_key_pem,
        "config_document": document,
        "claimed_at": _iso(claimed_at),
    }


def check_gateway(
    store: Store, gateway_id: str, body: GatewayCheck, *, now: float
) -> dict[str, Any]:
    """Whether the gateway claimed with ``body.claim`` has been heard: for the gateway tool's
    verify step, within :data:`CHECK_WINDOW_S` of the claim."""
    gid = gateway_id.lower()
    row = _claim_row(store.sql, body.claim)
    if row is None or row["gateway_id"] != gid:
        raise _refuse(
            f"this claim token did not claim gateway {gid}: claim first"
            " (POST /api/v1/provision/gateway)",
            401,
            "unknown",
        )
    info = _claim_info(row)
    if info.revoked_at is not None:
        raise _refuse(f"claim token {info.id} was revoked: ask an operator", 410, "revoked")
    if not _verify(
        bytes(row["sign_public_key"]), bytes.fromhex(body.proof), check_message(body.claim, gid)
    ):
        raise _refuse(
            "the proof is not a signature of b'owlgate/v1 check ' + claim + b' ' + gateway id"
            " by the gateway's identity key",
            403,
            "bad_proof",
        )
    assert info.used_at is not None
    if now > info.used_at + CHECK_WINDOW_S:
        raise _refuse(
            f"checks are allowed for {CHECK_WINDOW_S:.0f} s after the claim (gateway {gid} was"
            f" claimed at {_iso(info.used_at)}): look at the gateway in the dashboard instead",
            410,
            "expired",
        )
    gateway = store.gateway(gid)
    facts = gateway.facts
    last_health_at = store.sql.scalar("SELECT last_health_at FROM gateways WHERE id = ?", [gid])
    state = assess(facts, now).state
    return {
        "last_seen": _iso(facts.last_seen),
        "last_health_at": _iso(last_health_at),
        "online": state in (GatewayState.ONLINE, GatewayState.DEGRADED),
    }


# --- sensor modules ------------------------------------------------------------------------------


class NodeProvision(BaseModel):
    """A sensor module to provision: its DevEUI (read from the module) and profile."""

    dev_eui: str = Field(pattern=_HEX_EUI)
    profile_id: str = Field(min_length=1, max_length=100)
    join_eui: str | None = Field(default=None, pattern=_HEX_EUI)
    name: str = Field(default="", max_length=MAX_TEXT)
    site: str | None = Field(default=None, max_length=MAX_TEXT)


def _provisioned_by(db: Sql, eui: str) -> dict[str, Any] | None:
    rows = db.query(
        "SELECT actor, actor_token, via, bundle_id, reservation_id, provisioned_at"
        " FROM provisioned_devices WHERE dev_eui = ?",
        [eui],
    )
    return rows[0] if rows else None


def _already(db: Sql, eui: str) -> str:
    """'by X at T' for a device that exists, for a 409's message."""
    by = _provisioned_by(db, eui)
    if by is not None:
        return f"by {by['actor']} at {_iso(by['provisioned_at'])}"
    created = db.scalar("SELECT created FROM devices WHERE dev_eui = ?", [eui])
    return f"by a registration at {_iso(created)}"


def _node_json(
    eui: str, join_eui: str, app_key: bytes, profile_id: str, created: bool
) -> dict[str, Any]:
    return {
        "dev_eui": eui,
        "join_eui": join_eui,
        "app_key": app_key.hex(),
        "profile_id": profile_id,
        "created": created,
    }


def provision_node(
    store: Store,
    settings: ProvisioningSettings,
    body: NodeProvision,
    *,
    principal: Principal,
    now: float,
) -> dict[str, Any]:
    """Give a module a fresh AppKey and register it OTAA (``device.provisioned``), or give the
    same principal its key again for a device not joined yet (``keys.exported``); a
    :class:`ProvisioningError` (409) when someone else provisioned it or it has joined."""
    eui = body.dev_eui.lower()
    join_eui = eui_hex(body.join_eui or settings.default_join_eui, "JoinEUI")
    site = _text(body.site, "site")
    with store.transaction() as db:
        if db.scalar("SELECT 1 FROM devices WHERE dev_eui = ?", [eui]) is not None:
            device = store.device(eui)
            by = _provisioned_by(db, eui)
            mine = by is not None and by["actor_token"] == principal.token_id
            if (
                not mine
                or device.joined_at is not None
                or device.profile_id != body.profile_id
                or (body.join_eui is not None and device.join_eui != join_eui)
            ):
                why = ""
                if mine and device.joined_at is not None:
                    why = f"; it joined at {_iso(device.joined_at)}"
                elif mine:
                    why = (
                        f" with profile {device.profile_id} and JoinEUI {device.join_eui}:"
                        " ask for it with those"
                    )
                raise ProvisioningError(
                    f"DevEUI {eui} is already provisioned ({_already(db, eui)}){why}; if this"
                    " module is to be provisioned again, ask an admin to remove the device",
                    status=409,
                    code="device_provisioned",
                )
            keys = store.device_keys(eui)
            if keys.app_key is None or device.join_eui is None:
                raise ProvisioningError(
                    f"DevEUI {eui} has no AppKey in the fleet: ask an admin",
                    status=409,
                    code="device_provisioned",
                )
            record_event(
                db,
                actor=principal,
                action="keys.exported",
                target=f"device:{eui}",
                details={"what": "app_key", "via": "provision", "reason": "re-run"},
                at=now,
            )
            log.info("DevEUI %s: AppKey given again to %s (re-run)", eui, principal.name)
            return _node_json(eui, device.join_eui, keys.app_key, device.profile_id, False)
        app_key = secrets.token_bytes(16)
        store.create_device(
            eui,
            profile_id=body.profile_id,
            activation="otaa",
            created=now,
            name=body.name.strip(),
            join_eui=join_eui,
            app_key=app_key,
        )
        db.execute(
            "INSERT INTO provisioned_devices (dev_eui, actor, actor_token, via, bundle_id,"
            " reservation_id, site, provisioned_at, recorded_at)"
            " VALUES (?, ?, ?, 'online', NULL, NULL, ?, ?, ?)",
            [eui, principal.name, principal.token_id, site, now, now],
        )
        record_event(
            db,
            actor=principal,
            action="device.provisioned",
            target=f"device:{eui}",
            details={
                "name": body.name.strip(),
                "profile_id": body.profile_id,
                "activation": "otaa",
                "join_eui": join_eui,
                "site": site,
                "via": "provision",
            },
            at=now,
        )
    log.info("DevEUI %s provisioned by %s (profile %s)", eui, principal.name, body.profile_id)
    return _node_json(eui, join_eui, app_key, body.profile_id, True)


# --- offline bundles -----------------------------------------------------------------------------


class BundleRequest(BaseModel):
    """AppKeys to reserve for an offline session, sealed to the laptop's X25519 key."""

    count: int = Field(ge=1, le=MAX_KEYS)
    profile_id: str = Field(min_length=1, max_length=100)
    join_eui: str | None = Field(default=None, pattern=_HEX_EUI)
    site: str | None = Field(default=None, max_length=MAX_TEXT)
    public_key: str = Field(pattern=_HEX_KEY32, description="the laptop's X25519 key, hex")
    expires_in_s: int = Field(default=DEFAULT_BUNDLE_TTL_S, ge=3600, le=MAX_BUNDLE_TTL_S)


class Registration(BaseModel):
    """One module provisioned offline with a reserved key."""

    reservation: int = Field(ge=1, le=2**63 - 1)
    dev_eui: str = Field(pattern=_HEX_EUI)
    provisioned_at: datetime
    name: str = Field(default="", max_length=MAX_TEXT)


class SyncRequest(BaseModel):
    """The registrations of one bundle, uploaded once there is a network again."""

    bundle_id: str = Field(pattern=r"^bnd-[0-9a-f]{16}$")
    registrations: list[Registration] = Field(max_length=MAX_KEYS)


def _profile_known(db: Sql, profile_id: str) -> None:
    if db.scalar("SELECT 1 FROM device_profiles WHERE id = ?", [profile_id]) is None:
        known = ", ".join(row[0] for row in db.query_tuples("SELECT id FROM device_profiles"))
        raise InvalidError(f"unknown device profile {profile_id!r}; known: {known or 'none'}")


def issue_bundle(
    store: Store,
    settings: ProvisioningSettings,
    body: BundleRequest,
    *,
    principal: Principal,
    now: float,
) -> dict[str, Any]:
    """Reserve ``body.count`` AppKeys for ``principal`` (stored wrapped) and seal them to the
    laptop's key (``bundle.issued``)."""
    vault = store.vault
    if vault is None:
        raise NotConfigured("this fleet process has no key vault: start it with --kek-file")
    join_eui = eui_hex(body.join_eui or settings.default_join_eui, "JoinEUI")
    site = _text(body.site, "site")
    bundle_id = "bnd-" + secrets.token_hex(8)
    expires_at = now + body.expires_in_s
    keys = [secrets.token_bytes(16) for _ in range(body.count)]
    with store.transaction() as db:
        _profile_known(db, body.profile_id)
        db.execute(
            "INSERT INTO key_bundles (id, actor, actor_token, profile_id, join_eui, site,"
            " key_count, public_key, created, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                bundle_id,
                principal.name,
                principal.token_id,
                body.profile_id,
                join_eui,
                site,
                body.count,
                bytes.fromhex(body.public_key),
                now,
                expires_at,
            ],
        )
        reservations = [
            Reservation(
                int(
                    db.scalar(
                        "INSERT INTO key_reservations (bundle_id, app_key) VALUES (?, ?)"
                        " RETURNING id",
                        [bundle_id, vault.wrap(key)],
                    )
                ),
                key,
            )
            for key in keys
        ]
        record_event(
            db,
            actor=principal,
            action="bundle.issued",
            target=f"bundle:{bundle_id}",
            details={
                "count": body.count,
                "profile_id": body.profile_id,
                "join_eui": join_eui,
                "site": site,
                "expires_at": expires_at,
                "reservations": [reservations[0].id, reservations[-1].id],
            },
            at=now,
        )
    sealed = seal_bundle(
        bytes.fromhex(body.public_key),
        KeyBundle(
            bundle_id=bundle_id,
            issued_at=int(now),
            expires_at=int(expires_at),
            profile_id=body.profile_id,
            join_eui=bytes.fromhex(join_eui),
            site=site,
            reservations=tuple(sorted(reservations, key=lambda item: item.id)),
        ),
    )
    log.info("bundle %s of %d keys issued to %s", bundle_id, body.count, principal.name)
    return {
        "bundle_id": bundle_id,
        "bundle": base64.b64encode(sealed).decode("ascii"),
        "count": body.count,
        "expires_at": _iso(expires_at),
    }


def _seconds(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def sync_bundle(
    store: Store, body: SyncRequest, *, principal: Principal, now: float
) -> dict[str, Any]:
    """Register the devices provisioned offline with a bundle's reserved keys: each item is
    ``created``, ``already_synced`` or a ``conflict`` with a detail, never merged."""
    vault = store.vault
    if vault is None:
        raise NotConfigured("this fleet process has no key vault: start it with --kek-file")
    results: list[dict[str, Any]] = []
    counted = {"created": 0, "already_synced": 0, "conflict": 0}
    with store.transaction() as db:
        rows = db.query(
            "SELECT id, actor, actor_token, profile_id, join_eui, site, expires_at"
            " FROM key_bundles WHERE id = ?",
            [body.bundle_id],
        )
        if not rows:
            raise NotFoundError(
                f"no bundle {body.bundle_id}: sync the bundle file this laptop fetched"
            )
        bundle = rows[0]
        if bundle["actor_token"] != principal.token_id and principal.role != "admin":
            raise ProvisioningError(
                f"bundle {body.bundle_id} was issued to {bundle['actor']}: sync it with the"
                " token it was fetched with (or as an admin)",
                status=403,
                code="not_your_bundle",
            )
        for item in body.registrations:
            eui = item.dev_eui.lower()
            result, detail = _sync_one(db, store, bundle, item, eui, principal, now)
            counted[result] += 1
            results.append(
                {
                    "reservation": item.reservation,
                    "dev_eui": eui,
                    "result": result,
                    "detail": detail,
                }
            )
        record_event(
            db,
            actor=principal,
            action="bundle.synced",
            target=f"bundle:{body.bundle_id}",
            details=dict(counted),
            at=now,
        )
    log.info(
        "bundle %s synced by %s: %d created, %d already synced, %d conflicts",
        body.bundle_id,
        principal.name,
        counted["created"],
        counted["already_synced"],
        counted["conflict"],
    )
    return {"results": results}


def _sync_one(
    db: Sql,
    store: Store,
    bundle: dict[str, Any],
    item: Registration,
    eui: str,
    principal: Principal,
    now: float,
) -> tuple[SyncResult, str]:
    reserved = db.query(
        "SELECT id, bundle_id, app_key, dev_eui FROM key_reservations WHERE id = ?",
        [item.reservation],
    )
    if not reserved or reserved[0]["bundle_id"] != bundle["id"]:
        return "conflict", (
            f"reservation {item.reservation} is not part of bundle {bundle['id']}: was the"
            " registration queued with another bundle?"
        )
    reservation = reserved[0]
    if reservation["dev_eui"] == eui:
        return "already_synced", f"DevEUI {eui} was synced with reservation {item.reservation}"
    if reservation["dev_eui"] is not None:
        return "conflict", (
            f"reservation {item.reservation} was already used for DevEUI"
            f" {reservation['dev_eui']}: one key went into two modules; provision {eui} again"
            " with a key of its own"
        )
    if db.scalar("SELECT 1 FROM devices WHERE dev_eui = ?", [eui]) is not None:
        return "conflict", (
            f"DevEUI {eui} is already provisioned ({_already(db, eui)}) with another key:"
            f" reservation {item.reservation} stays unused; write the fleet's key into the"
            " module again, or ask an admin to remove the other registration"
        )
    provisioned_at = _seconds(item.provisioned_at)
    if provisioned_at > bundle["expires_at"]:
        return "conflict", (
            f"DevEUI {eui} was provisioned at {_iso(provisioned_at)}, after bundle"
            f" {bundle['id']} expired at {_iso(bundle['expires_at'])}: provision it again online"
        )
    app_key = store.vault.unwrap(bytes(reservation["app_key"])) if store.vault else None
    try:
        with db.transaction() as one:
            store.create_device(
                eui,
                profile_id=bundle["profile_id"],
                activation="otaa",
                created=now,
                name=item.name.strip(),
                join_eui=bundle["join_eui"],
                app_key=app_key,
            )
            one.execute(
                "UPDATE key_reservations SET dev_eui = ?, name = ?, provisioned_at = ?,"
                " synced_at = ? WHERE id = ? AND dev_eui IS NULL",
                [eui, item.name.strip(), provisioned_at, now, item.reservation],
            )
            one.execute(
                "INSERT INTO provisioned_devices (dev_eui, actor, actor_token, via, bundle_id,"
                " reservation_id, site, provisioned_at, recorded_at)"
                " VALUES (?, ?, ?, 'bundle', ?, ?, ?, ?, ?)",
                [
                    eui,
                    bundle["actor"],
                    bundle["actor_token"],
                    bundle["id"],
                    item.reservation,
                    bundle["site"],
                    provisioned_at,
                    now,
                ],
            )
            record_event(
                one,
                actor=principal,
                action="device.provisioned",
                target=f"device:{eui}",
                details={
                    "name": item.name.strip(),
                    "profile_id": bundle["profile_id"],
                    "activation": "otaa",
                    "join_eui": bundle["join_eui"],
                    "site": bundle["site"],
                    "via": "bundle",
                    "bundle_id": bundle["id"],
                    "reservation": item.reservation,
                    "provisioned_at": provisioned_at,
                },
                at=now,
            )
    except (ConflictError, DataRefused) as err:
        return "conflict", f"DevEUI {eui} could not be registered: {err}"
    return "created", f"DevEUI {eui} registered with reservation {item.reservation}"


# --- the API -------------------------------------------------------------------------------------


class ClaimCreate(BaseModel):
    """A claim token to issue to a technician."""

    group: str | None = Field(default=None, max_length=64)
    site: str | None = Field(default=None, max_length=MAX_TEXT)
    expires_in_s: int = Field(default=DEFAULT_CLAIM_TTL_S, ge=MIN_CLAIM_TTL_S, le=MAX_CLAIM_TTL_S)
    comment: str = Field(default="", max_length=MAX_COMMENT)


_STATUS_OF: Final = (
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (InvalidError, 422, "invalid"),
)


def _answer(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    # ``detail`` is what the provisioning tools show; ``error`` the shape of the rest of the API.
    return JSONResponse(
        {"detail": message, "error": {"code": code, "message": message, **extra}},
        status_code=status,
    )


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


class _ProvisioningRoute(APIRoute):
    """Every refusal of these routes as ``{"detail": ..., "error": {...}}``, counted, and the
    failed claim attempts of an address limited."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        claims_route = getattr(self.endpoint, "__owlgate_claim__", False)

        async def route(request: Request) -> Response:
            stats = provisioning_stats(request.app)
            address = _client(request)
            if claims_route:
                wait = _limiter(request.app).wait_s(address)
                if wait > 0:
                    stats.refuse("rate_limited")
                    _refusal_log.warning(
                        "rate_limited", "claim attempts from %s refused for %.0f s", address, wait
                    )
                    response = _answer(
                        429,
                        "rate_limited",
                        f"too many failed claim attempts from {address}: wait {wait:.0f} s, and"
                        " check the claim token",
                    )
                    response.headers["Retry-After"] = str(max(1, round(wait)))
                    return response
            try:
                return await handler(request)
            except ProvisioningError as err:
                stats.refuse(err.code)
                if claims_route and isinstance(err, ClaimRefused):
                    _limiter(request.app).failed(address)
                    _refusal_log.warning(
                        err.code, "claim from %s refused (%s): %s", address, err.code, err.message
                    )
                else:
                    log.info("%s %s refused: %s", request.method, request.url.path, err.message)
                return _answer(err.status, err.code, err.message)
            except AuthError as err:
                response = _answer(err.status, err.code, err.message, reason=err.reason)
                if err.status == 401:
                    error = "" if err.reason == "missing" else ', error="invalid_token"'
                    response.headers["WWW-Authenticate"] = f'Bearer realm="owlgate"{error}'
                return response
            except RequestValidationError as err:
                refusal = await refusal_before_validation(request)
                if refusal is not None:
                    return _answer(
                        refusal.status, refusal.code, refusal.message, reason=refusal.reason
                    )
                stats.refuse("malformed")
                if claims_route:
                    _limiter(request.app).failed(address)
                # Only where and what: the input may hold a key or a token.
                problems = [
                    {"loc": [str(p) for p in error.get("loc", ())], "msg": str(error.get("msg"))}
                    for error in err.errors()
                ]
                first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
                return _answer(
                    422,
                    "invalid",
                    f"{'.'.join(first['loc'])}: {first['msg']}",
                    problems=problems,
                )
            except DatabaseFault:
                raise
            except FleetError as err:
                for kind, status, code in _STATUS_OF:
                    if isinstance(err, kind):
                        stats.refuse(code)
                        return _answer(status, code, err.message)
                raise

        return route


def _claim_route(function: Callable[..., Any]) -> Callable[..., Any]:
    function.__owlgate_claim__ = True  # type: ignore[attr-defined]
    return function


#: What the OpenAPI document says of the routes a claim token authorises.
_CLAIM_OPENAPI: Final = {
    "security": [],
    OPENAPI_CREDENTIAL_KEY: CLAIM_CREDENTIAL,
    "description": "No bearer token: the claim token in the body is the credential (and the"
    " proof shows the gateway holds its identity key). Failed attempts are counted and an"
    " address with too many is refused with 429 for a while.",
}


def router(on_broker_change: Callable[[], None] | None = None) -> APIRouter:
    """The provisioning routes. ``on_broker_change`` runs after a claim issued MQTT
    credentials (the server reloads the broker's accounts there)."""
    from .api import API_PREFIX

    routes = APIRouter(prefix=API_PREFIX, tags=["provisioning"], route_class=_ProvisioningRoute)

    def store_of(request: Request) -> Store:
        found: Store = request.app.state.store
        return found

    def now(request: Request) -> float:
        clock = getattr(request.app.state, "clock", None)
        return float(clock() if callable(clock) else time.time())

    @routes.post(
        "/claims", status_code=201, summary="Issue a claim token (shown in this answer only)"
    )
    def create_claim_route(
        body: ClaimCreate, request: Request, principal: Annotated[Principal, issuers]
    ) -> dict[str, Any]:
        issued = create_claim(
            store_of(request).sql,
            group=body.group,
            site=body.site,
            expires_in_s=body.expires_in_s,
            comment=body.comment,
            actor=principal,
            now=now(request),
        )
        return {
            "id": issued.id,
            "token": issued.token,
            "group": issued.group,
            "site": issued.site,
            "expires_at": _iso(issued.expires_at),
            "created_by": issued.created_by,
        }

    @routes.get("/claims", summary="List claim tokens (never the tokens)")
    def list_claims_route(
        request: Request, principal: Annotated[Principal, issuers]
    ) -> dict[str, Any]:
        at = now(request)
        return {"items": [c.as_json(at) for c in claims(store_of(request).sql)], "next": None}

    @routes.delete("/claims/{claim_id}", summary="Revoke a claim token")
    def revoke_claim_route(
        request: Request,
        claim_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
        principal: Annotated[Principal, issuers],
    ) -> dict[str, Any]:
        at = now(request)
        return revoke_claim(store_of(request).sql, claim_id, actor=principal, now=at).as_json(at)

    @routes.post(
        "/provision/gateway",
        summary="Claim a gateway with a claim token: registration, MQTT password, keys, config",
        openapi_extra=_CLAIM_OPENAPI,
    )
    @_claim_route
    def claim_route(body: GatewayClaim, request: Request) -> dict[str, Any]:
        answer = claim_gateway(store_of(request), _settings(request.app), body, now=now(request))
        provisioning_stats(request.app).count("claims")
        if on_broker_change is not None:
            on_broker_change()
        return answer

    @routes.post(
        "/provision/gateway/{gateway_id}/check",
        summary="Whether a claimed gateway's heartbeat reached the fleet",
        openapi_extra=_CLAIM_OPENAPI,
    )
    @_claim_route
    def check_route(
        body: GatewayCheck,
        request: Request,
        gateway_id: Annotated[str, Path(pattern=_HEX_EUI)],
    ) -> dict[str, Any]:
        answer = check_gateway(store_of(request), gateway_id, body, now=now(request))
        provisioning_stats(request.app).count("checks")
        return answer

    @routes.post("/provision/nodes", status_code=201, summary="Provision a sensor module")
    def node_route(
        body: NodeProvision,
        request: Request,
        response: Response,
        principal: Annotated[Principal, provisioners],
    ) -> dict[str, Any]:
        answer = provision_node(
            store_of(request), _settings(request.app), body, principal=principal, now=now(request)
        )
        if not answer["created"]:
            response.status_code = 200
        provisioning_stats(request.app).count(
            "nodes_created" if answer["created"] else "nodes_resumed"
        )
        return answer

    @routes.post(
        "/provision/bundles",
        status_code=201,
        summary="Reserve AppKeys for offline provisioning, sealed to the laptop's key",
    )
    def bundle_route(
        body: BundleRequest, request: Request, principal: Annotated[Principal, provisioners]
    ) -> dict[str, Any]:
        answer = issue_bundle(
            store_of(request), _settings(request.app), body, principal=principal, now=now(request)
        )
        provisioning_stats(request.app).count("bundles")
        return answer

    @routes.post("/provision/sync", summary="Register modules provisioned offline")
    def sync_route(
        body: SyncRequest, request: Request, principal: Annotated[Principal, provisioners]
    ) -> dict[str, Any]:
        answer = sync_bundle(store_of(request), body, principal=principal, now=now(request))
        results = answer["results"]
        stats = provisioning_stats(request.app)
        stats.count("synced", sum(1 for r in results if r["result"] == "created"))
        stats.count("sync_conflicts", sum(1 for r in results if r["result"] == "conflict"))
        return answer

    return routes


__all__ = [
    "CLAIM_CREDENTIAL",
    "CLAIM_PREFIX",
    "OPENAPI_CREDENTIAL_KEY",
    "ClaimInfo",
    "ClaimRefused",
    "FailureLimiter",
    "IssuedClaim",
    "NotConfigured",
    "ProvisioningError",
    "ProvisioningSettings",
    "ProvisioningStats",
    "check_message",
    "claim_gateway",
    "claim_hash",
    "claim_message",
    "claims",
    "configure",
    "create_claim",
    "issue_bundle",
    "provision_node",
    "provisioning_stats",
    "revoke_claim",
    "router",
    "sync_bundle",
]
