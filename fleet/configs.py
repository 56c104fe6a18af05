"""Gateway configuration as versioned layers: defaults, per group, per gateway, merged.

Operations do not edit one configuration per gateway: they set what every gateway runs (the
``defaults`` layer), what a group of gateways runs differently (a ``group`` layer, by group
name) and what one gateway runs differently (a ``gateway`` layer, by gateway id). A layer
holds only the keys it sets, in the JSON form of the configuration document
(``docs/formats/config-document.md``), e.g. ``{"radio": {"tx_power_dbm": 10}}``.

Why versions and not updates: a configuration change is what most often breaks a gateway, so
every change is a new, immutable row (migration ``0500_config_layers`` adds triggers that
refuse ``UPDATE`` and ``DELETE`` on ``config_versions``); what ran before can always be read
back and diffed, and the audit log's ``config.changed`` event names the version it made.

The effective configuration of a gateway is ``defaults <- its group's latest <- its own
latest``, merged key by key over the leaf keys of :data:`KEYS` (a layer's value replaces the
one below; lists, ``radio.channels`` and ``devices``, are leaves: replaced whole, never
merged item by item), then the built-in defaults of
:class:`~owlgate.codecs.configdoc.GatewayConfig` for keys no layer sets. It is validated by
building that ``GatewayConfig``, so its content hash is the one a gateway will report: the
same layers give the same hash. A change that would make the effective configuration of any
gateway it reaches invalid is refused (:class:`ConfigRefused`, 422 naming the key) before
anything is stored. ``mqtt.url`` has no built-in default: until a layer sets it, the layers
are checked with a stand-in URL and the effective configuration is a conflict (409) saying
to set it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from owlgate.codecs.configdoc import ConfigDocument, ConfigDocumentError, from_json, to_json
from owlgate.codecs.errors import CodecError

from .audit import record_event
from .auth import Principal, requires
from .schema import migration
from .sql import DataRefused, Sql
from .store import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    ConflictError,
    InvalidError,
    NotFoundError,
    Page,
)

log = logging.getLogger(__name__)

LayerKind = Literal["defaults", "group", "gateway"]
#: The layers from the bottom up: a later one's value replaces an earlier one's.
LAYER_KINDS: Final[tuple[LayerKind, ...]] = ("defaults", "group", "gateway")

#: The leaf keys a layer may set, dotted (``section.key``), with the GatewayConfig field each
#: one is; the JSON sections are those of the configuration document's JSON form.
KEYS: Final = {
    "radio.backend": "radio_backend",
    "radio.channels": "channels",
    "radio.tx_power_dbm": "tx_power_dbm",
    "batch.max_readings": "batch_max_readings",
    "batch.max_age_ms": "batch_max_age_ms",
    "health.interval_s": "health_interval_s",
    "outbox.max_bytes": "outbox_max_bytes",
    "mqtt.url": "mqtt_url",
    "mqtt.keepalive_s": "mqtt_keepalive_s",
    "mqtt.credentials": "mqtt_credentials",
    "log_level": "log_level",
    "devices": "devices",
}
_SECTIONS: Final = ("radio", "batch", "health", "outbox", "mqtt")
#: Checked in this order when naming the key of a refusal: longer field names first, so
#: ``mqtt_keepalive_s`` is not reported as some shorter name it contains.
_FIELDS_BY_LENGTH: Final = sorted(KEYS.items(), key=lambda item: -len(item[1]))
#: Where the checks of an incomplete configuration point mqtt.url (never stored or sent).
_STAND_IN_URL: Final = "mqtt://mqtt-url-not-set.invalid"
#: Group names: what a configuration document's group target may be (1..64 bytes), kept to
#: characters that read well in a URL, a topic and a log line.
GROUP_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_GROUP: Final = re.compile(GROUP_PATTERN)
_GATEWAY: Final = re.compile(r"^[0-9a-f]{16}$")
MAX_VERSION: Final = 2**31
MAX_COMMENT: Final = 500


@migration("0500_config_layers")
def _config_layers(db: Sql) -> None:
    db.execute(
        "CREATE TABLE gateway_groups ("
        " gateway_id TEXT PRIMARY KEY REFERENCES gateways (id) ON DELETE CASCADE,"
        " group_name TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX gateway_groups_group ON gateway_groups (group_name)")
    # name is '' for the one defaults layer: a NULL would not take part in the unique key.
    db.execute(
        db.ddl(
            "CREATE TABLE config_versions ("
            " id {serial},"
            " layer TEXT NOT NULL,"
            " name TEXT NOT NULL,"
            " version {int} NOT NULL,"
            " settings TEXT NOT NULL,"
            " actor TEXT NOT NULL,"
            " at {float} NOT NULL,"
            " comment TEXT NOT NULL,"
            " UNIQUE (layer, name, version))"
        )
    )
    refusal = "configuration versions are immutable: store a new version instead"
    if db.dialect == "sqlite":
        for statement in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER config_versions_no_{statement.lower()} BEFORE {statement}"
                f" ON config_versions BEGIN SELECT RAISE(ABORT, '{refusal}'); END"
            )
    else:
        db.execute(
            "CREATE FUNCTION config_versions_refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN RAISE EXCEPTION '{refusal}' USING ERRCODE = 'restrict_violation'; END $$"
        )
        db.execute(
            "CREATE TRIGGER config_versions_immutable BEFORE UPDATE OR DELETE"
            " ON config_versions FOR EACH ROW EXECUTE FUNCTION config_versions_refuse()"
        )


class ConfigRefused(InvalidError):
    """A layer that is not well-formed, or that would make an effective configuration
    invalid; ``key`` is the dotted key at fault (or None when no single key is)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerVersion:
    """One stored version of a layer: ``settings`` nested as the JSON form has them."""

    layer: LayerKind
    name: str | None
    version: int
    settings: dict[str, Any]
    actor: str
    at: float
    comment: str

    @property
    def flat(self) -> dict[str, Any]:
        return flatten(self.settings)


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Where one key of an effective configuration came from (``builtin``: no layer)."""

    layer: LayerKind | Literal["builtin"]
    name: str | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EffectiveConfig:
    """A gateway's merged configuration: ``config`` in the JSON form (every key), its
    content hash, and per dotted key where it came from."""

    gateway_id: str
    group: str | None
    config: dict[str, Any]
    content_hash: str
    sources: dict[str, Source]
    layers: list[LayerVersion]


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerDiff:
    """The keys that differ between two versions of one layer."""

    added: dict[str, Any]
    removed: dict[str, Any]
    changed: dict[str, tuple[Any, Any]]

    @property
    def keys(self) -> list[str]:
        return sorted({*self.added, *self.removed, *self.changed})


# --- settings ------------------------------------------------------------------------------------


def flatten(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Nested layer settings (the JSON form) as ``{dotted key: value}``; raises
    :class:`ConfigRefused` for an unknown key, a section that is not an object, or null."""
    if not isinstance(settings, Mapping):
        raise ConfigRefused("settings must be a JSON object of the keys this layer sets")
    flat: dict[str, Any] = {}
    for top, value in settings.items():
        if top in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigRefused(f"{top} must be a JSON object, got {_short(value)}", top)
            items = [(f"{top}.{key}", inner) for key, inner in value.items()]
        else:
            items = [(str(top), value)]
        for key, inner in items:
            if key not in KEYS:
                raise ConfigRefused(f"unknown key {key!r}; known keys: {', '.join(KEYS)}", key)
            if inner is None:
                raise ConfigRefused(
                    f"{key}: null is no value; leave the key out to inherit it from below", key
                )
            flat[key] = inner
    return dict(sorted(flat.items()))


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{dotted key: value}`` back in the nested JSON form."""
    nested: dict[str, Any] = {}
    for key, value in sorted(flat.items()):
        section, _, inner = key.partition(".")
        if inner:
            nested.setdefault(section, {})[inner] = value
        else:
            nested[key] = value
    return nested


def _short(value: object) -> str:
    return json.dumps(value, default=str)[:60]


def _key_of(message: str) -> str | None:
    # The codec's messages start with the field or JSON path they are about; a field named
    # further in (or in an echoed value) is the fallback.
    for key, field in _FIELDS_BY_LENGTH:
        if message.startswith((field, f"config.{key}")):
            return key
    for key, field in _FIELDS_BY_LENGTH:
        if field in message or f"config.{key}" in message:
            return key
    return None


def _named(message: str, key: str | None) -> str:
    """``message`` of the codec, starting with the dotted key people wrote."""
    if key is None:
        return message
    for said in ("config." + key, KEYS[key]):
        if message.startswith(said):
            return key + message[len(said) :]
    return f"{key}: {message}"


def _document(flat: Mapping[str, Any]) -> ConfigDocument:
    """Merged ``flat`` settings as a configuration document (seq and target are stand-ins);
    raises :class:`ConfigRefused` naming the key when they are not a valid configuration."""
    document = {"seq": 1, "target": {"group": "merge"}, "issued_at": 0, "config": nest(flat)}
    try:
        return from_json(json.dumps(document, allow_nan=False))
    except ConfigDocumentError as err:
        key = _key_of(err.message)
        raise ConfigRefused(_named(err.message, key), key) from err
    except (CodecError, TypeError, ValueError, RecursionError) as err:
        raise ConfigRefused(f"the settings are not a configuration: {err}") from err


def _build(flat: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The full configuration (JSON form, every key) of merged ``flat`` settings and its
    content hash."""
    doc = _document(flat)
    full: dict[str, Any] = json.loads(to_json(doc))["config"]
    return full, doc.content_hash.hex()


def diff_settings(before: Mapping[str, Any], after: Mapping[str, Any]) -> LayerDiff:
    """The dotted keys added, removed and changed from ``before`` to ``after`` (both flat)."""
    return LayerDiff(
        added={k: after[k] for k in sorted(after) if k not in before},
        removed={k: before[k] for k in sorted(before) if k not in after},
        changed={
            k: (before[k], after[k]) for k in sorted(after) if k in before and before[k] != after[k]
        },
    )


# --- storage -------------------------------------------------------------------------------------


def layer_target(layer: LayerKind, name: str | None) -> str:
    """The layer as an audit target: ``config:defaults``, ``config:group:<name>`` ..."""
    return "config:defaults" if layer == "defaults" else f"config:{layer}:{name}"


def _checked_name(db: Sql, layer: LayerKind, name: str | None) -> str:
    """The stored name of a layer ('' for defaults); a gateway must be registered."""
    if layer == "defaults":
        return ""
    if layer == "group":
        if name is None or not _GROUP.match(name):
            raise InvalidError(
                f"a group name is 1..64 letters, digits, '.', '_' or '-' (starting with a letter"
                f" or digit), got {name!r}"
            )
        return name
    if layer != "gateway":
        raise InvalidError(f"layer must be one of {', '.join(LAYER_KINDS)}, got {layer!r}")
    gateway_id = (name or "").lower()
    if not _GATEWAY.match(gateway_id):
        raise NotFoundError(f"no gateway {name!r}: ids are 16 hex digits")
    if db.scalar("SELECT id FROM gateways WHERE id = ?", [gateway_id]) is None:
        raise NotFoundError(
            f"no gateway {gateway_id}: register it first (POST /api/v1/admin/gateways)"
        )
    return gateway_id


def _version(row: Mapping[str, Any]) -> LayerVersion:
    layer: LayerKind = row["layer"]
    return LayerVersion(
        layer=layer,
        name=row["name"] or None,
        version=int(row["version"]),
        settings=json.loads(row["settings"]),
        actor=row["actor"],
        at=float(row["at"]),
        comment=row["comment"],
    )


_COLUMNS: Final = "layer, name, version, settings, actor, at, comment"


def _latest(db: Sql, layer: LayerKind, name: str) -> LayerVersion | None:
    rows = db.query(
        f"SELECT {_COLUMNS} FROM config_versions WHERE layer = ? AND name = ?"
        " ORDER BY version DESC LIMIT 1",
        [layer, name],
    )
    return _version(rows[0]) if rows else None


def layer_version(
    db: Sql, layer: LayerKind, name: str | None = None, version: int | None = None
) -> LayerVersion:
    """A layer's latest version, or ``version``; :class:`NotFoundError` when there is none."""
    stored = _checked_name(db, layer, name)
    if version is None:
        found = _latest(db, layer, stored)
    else:
        rows = db.query(
            f"SELECT {_COLUMNS} FROM config_versions WHERE layer = ? AND name = ? AND version = ?",
            [layer, stored, version],
        )
        found = _version(rows[0]) if rows else None
    if found is None:
        which = "any version" if version is None else f"a version {version}"
        raise NotFoundError(
            f"{layer_target(layer, stored or None)} has no {which} yet"
            " (PUT its settings to create one)"
        )
    return found


def layer_versions(
    db: Sql,
    layer: LayerKind,
    name: str | None = None,
    *,
    limit: int = DEFAULT_PAGE_LIMIT,
    after: str | None = None,
) -> Page[LayerVersion]:
    """A layer's versions, newest first; the cursor is the last version number listed."""
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidError(f"limit must be 1 .. {MAX_PAGE_LIMIT}, got {limit}")
    stored = _checked_name(db, layer, name)
    below = MAX_VERSION + 1
    if after is not None:
        # ASCII digits only: str.isdigit() is also true of '²', which int() refuses.
        if not (after.isascii() and after.isdigit()) or not 1 <= int(after) <= MAX_VERSION:
            raise InvalidError(f"after must be a version number (the 'next' cursor), got {after!r}")
        below = int(after)
    rows = db.query(
        f"SELECT {_COLUMNS} FROM config_versions WHERE layer = ? AND name = ? AND version < ?"
        " ORDER BY version DESC LIMIT ?",
        [layer, stored, below, limit + 1],
    )
    items = [_version(row) for row in rows[:limit]]
    return Page(items, str(items[-1].version) if len(rows) > limit else None)


def group_of(db: Sql, gateway_id: str) -> str | None:
    found: str | None = db.scalar(
        "SELECT group_name FROM gateway_groups WHERE gateway_id = ?", [gateway_id]
    )
    return found


def _merge(layers: list[LayerVersion]) -> tuple[dict[str, Any], dict[str, Source]]:
    merged: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for layer in layers:
        for key, value in layer.flat.items():
            merged[key] = value
            sources[key] = Source(layer=layer.layer, name=layer.name, version=layer.version)
    return merged, sources


def _stack(
    db: Sql,
    gateway_id: str | None,
    group: str | None,
    replaced: LayerVersion | None = None,
) -> list[LayerVersion]:
    """The latest versions that make one effective configuration, bottom up, with
    ``replaced`` standing in for its layer's stored latest."""
    names: list[tuple[LayerKind, str]] = [("defaults", "")]
    if group is not None:
        names.append(("group", group))
    if gateway_id is not None:
        names.append(("gateway", gateway_id))
    stack: list[LayerVersion] = []
    for layer, name in names:
        if replaced is not None and replaced.layer == layer and (replaced.name or "") == name:
            stack.append(replaced)
            continue
        found = _latest(db, layer, name)
        if found is not None:
            stack.append(found)
    return stack


def _check(stack: list[LayerVersion], what: str) -> None:
    merged, _ = _merge(stack)
    merged.setdefault("mqtt.url", _STAND_IN_URL)
    try:
        _document(merged)
    except ConfigRefused as err:
        raise ConfigRefused(
            f"{err.message} (in the effective configuration of {what})", err.key
        ) from err


def _check_reach(db: Sql, candidate: LayerVersion) -> None:
    """Check every effective configuration ``candidate`` reaches, as if it were stored."""
    name = candidate.name
    if candidate.layer == "gateway" and name is not None:
        _check(_stack(db, name, group_of(db, name), candidate), f"gateway {name}")
        return
    if candidate.layer == "group":
        group_rows = [(name,)]
    else:
        _check(_stack(db, None, None, candidate), "a gateway in no group")
        group_rows = db.query_tuples(
            "SELECT DISTINCT name FROM config_versions WHERE layer = 'group'"
            " UNION SELECT DISTINCT group_name FROM gateway_groups"
        )
    for (group,) in sorted(group_rows):
        _check(_stack(db, None, group, candidate), f"a gateway of group {group}")
    # Only a gateway with a layer of its own can differ from its group's configuration.
    if candidate.layer == "group":
        members = db.query_tuples(
            "SELECT g.gateway_id, g.group_name FROM gateway_groups g WHERE g.group_name = ?"
            " AND EXISTS (SELECT 1 FROM config_versions c"
            " WHERE c.layer = 'gateway' AND c.name = g.gateway_id)",
            [name],
        )
        loose: list[tuple[Any, ...]] = []
    else:
        members = db.query_tuples(
            "SELECT g.gateway_id, g.group_name FROM gateway_groups g WHERE EXISTS (SELECT 1"
            " FROM config_versions c WHERE c.layer = 'gateway' AND c.name = g.gateway_id)"
        )
        loose = db.query_tuples(
            "SELECT DISTINCT c.name FROM config_versions c WHERE c.layer = 'gateway'"
            " AND NOT EXISTS (SELECT 1 FROM gateway_groups g WHERE g.gateway_id = c.name)"
        )
    for gateway_id, group in sorted(members):
        _check(_stack(db, gateway_id, group, candidate), f"gateway {gateway_id}")
    for (gateway_id,) in sorted(loose):
        _check(_stack(db, gateway_id, None, candidate), f"gateway {gateway_id}")


@contextmanager
def _storing(what: str) -> Iterator[None]:
    try:
        yield
    except DataRefused as err:
        # Two changes of one layer at once: the later one's version number is taken.
        raise ConflictError(f"could not store {what} (changed at the same time?): {err}") from err


def put_layer(
    sql: Sql,
    layer: LayerKind,
    name: str | None,
    settings: Mapping[str, Any],
    *,
    actor: Principal | str,
    comment: str = "",
    at: float | None = None,
) -> LayerVersion:
    """Store ``settings`` as the next version of a layer and record ``config.changed``, in
    one transaction; nothing is stored when a gateway it reaches would get an invalid
    configuration (:class:`ConfigRefused`)."""
    flat = flatten(settings)
    if len(comment) > MAX_COMMENT:
        raise InvalidError(f"comment is at most {MAX_COMMENT} characters, got {len(comment)}")
    who = actor.name if isinstance(actor, Principal) else actor
    when = time.time() if at is None else at
    with _storing(layer_target(layer, name)), sql.transaction() as db:
        stored = _checked_name(db, layer, name)
        previous = _latest(db, layer, stored)
        number = 1 if previous is None else previous.version + 1
        if number > MAX_VERSION:
            raise ConflictError(f"{layer_target(layer, stored or None)} has no version left")
        candidate = LayerVersion(
            layer=layer,
            name=stored or None,
            version=number,
            settings=nest(flat),
            actor=who,
            at=when,
            comment=comment,
        )
        _check_reach(db, candidate)
        db.execute(
            f"INSERT INTO config_versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                layer,
                stored,
                number,
                json.dumps(candidate.settings, sort_keys=True, separators=(",", ":")),
                who,
                when,
                comment,
            ],
        )
        changed = diff_settings({} if previous is None else previous.flat, flat).keys
        record_event(
            db,
            actor=actor,
            action="config.changed",
            target=layer_target(layer, stored or None),
            details={"version": number, "changed": changed},
            at=when,
        )
    log.info("%s: version %d (%d keys changed)", layer_target(layer, name), number, len(changed))
    return candidate


def set_group(
    sql: Sql,
    gateway_id: str,
    group: str | None,
    *,
    actor: Principal | str,
    at: float | None = None,
) -> str | None:
    """Put a gateway in ``group`` (None: in no group); refused like a layer change when its
    effective configuration would be invalid there. Returns the group it was in."""
    with sql.transaction() as db:
        gid = _checked_name(db, "gateway", gateway_id)
        if group is not None:
            _checked_name(db, "group", group)
        previous = group_of(db, gid)
        _check(_stack(db, gid, group), f"gateway {gid} in " + (group or "no group"))
        if group is None:
            db.execute("DELETE FROM gateway_groups WHERE gateway_id = ?", [gid])
        else:
            db.execute(
                "INSERT INTO gateway_groups (gateway_id, group_name) VALUES (?, ?)"
                " ON CONFLICT (gateway_id) DO UPDATE SET group_name = excluded.group_name",
                [gid, group],
            )
        record_event(
            db,
            actor=actor,
            action="config.changed",
            target=layer_target("gateway", gid),
            details={"group": group, "previous_group": previous},
            at=at,
        )
    return previous


def effective_config(sql: Sql, gateway_id: str) -> EffectiveConfig:
    """The merged configuration of a registered gateway; :class:`ConflictError` while no
    layer sets ``mqtt.url``."""
    with sql.transaction() as db:
        gid = _checked_name(db, "gateway", gateway_id)
        group = group_of(db, gid)
        stack = _stack(db, gid, group)
    merged, sources = _merge(stack)
    if "mqtt.url" not in merged:
        raise ConflictError(
            f"gateway {gid} has no effective configuration: no layer sets mqtt.url; set it in"
            ' the defaults (PUT /api/v1/config/defaults {"settings": {"mqtt": {"url": ...}}})'
        )
    config, content_hash = _build(merged)
    for key in flatten(config):
        sources.setdefault(key, Source(layer="builtin"))
    return EffectiveConfig(
        gateway_id=gid,
        group=group,
        config=config,
        content_hash=content_hash,
        sources=dict(sorted(sources.items())),
        layers=stack,
    )


def diff_versions(
    sql: Sql, layer: LayerKind, name: str | None, first: int, second: int
) -> LayerDiff:
    """What changed from version ``first`` to ``second`` of a layer (0: before version 1)."""

    def settings(version: int) -> dict[str, Any]:
        return {} if version == 0 else layer_version(sql, layer, name, version).flat

    return diff_settings(settings(first), settings(second))


# --- API -----------------------------------------------------------------------------------------


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def version_json(found: LayerVersion) -> dict[str, Any]:
    return {
        "layer": found.layer,
        "name": found.name,
        "version": found.version,
        "settings": found.settings,
        "keys": list(found.flat),
        "actor": found.actor,
        "at": _iso(found.at),
        "comment": found.comment,
    }


def source_json(source: Source) -> dict[str, Any]:
    return {"layer": source.layer, "name": source.name, "version": source.version}


class LayerChange(BaseModel):
    """A new version of a layer: the keys it sets (JSON form, nested by section) and why."""

    settings: dict[str, Any] = Field(
        description='Only the keys this layer sets, e.g. {"radio": {"tx_power_dbm": 10}}'
    )
    comment: str = Field(default="", max_length=MAX_COMMENT)


class GroupChange(BaseModel):
    """The group a gateway belongs to, or null for none."""

    group: str | None = Field(pattern=GROUP_PATTERN)


Version = Annotated[int | None, Query(ge=1, le=MAX_VERSION)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)]
After = Annotated[str | None, Query(max_length=20)]
GroupName = Annotated[str, Path(pattern=GROUP_PATTERN)]
GatewayId = Annotated[str, Path(max_length=16)]


#: Who may read the layers and effective configurations, and who may change them.
READERS: Final = ("operator", "technician")
CHANGERS: Final = ("operator",)
# Module-level: FastAPI resolves ``Annotated[Principal, ...]`` in the module's namespace.
changers = requires(*CHANGERS)


def _app_clock(request: Request) -> Callable[[], float]:
    found = getattr(request.app.state, "clock", None)
    return found if callable(found) else time.time


def router() -> APIRouter:
    """The configuration routes under ``/api/v1``: reading for operators and technicians,
    changing for operators (and admin); the store is ``request.app.state.store``."""
    from .api import API_PREFIX

    routes = APIRouter(prefix=API_PREFIX, tags=["config"])
    readers = requires(*READERS)

    def sql(request: Request) -> Sql:
        found: Sql = request.app.state.store.sql
        return found

    def page_json(page: Page[LayerVersion]) -> dict[str, Any]:
        return {"items": [version_json(v) for v in page.items], "next": page.next}

    def change(
        request: Request,
        layer: LayerKind,
        name: str | None,
        body: LayerChange,
        principal: Principal,
    ) -> dict[str, Any]:
        stored = put_layer(
            sql(request),
            layer,
            name,
            body.settings,
            actor=principal,
            comment=body.comment,
            at=float(_app_clock(request)()),
        )
        return version_json(stored)

    @routes.get("/config/defaults", summary="The defaults layer", dependencies=[readers])
    def get_defaults(request: Request, version: Version = None) -> dict[str, Any]:
        return version_json(layer_version(sql(request), "defaults", None, version))

    @routes.put("/config/defaults", summary="Store a new version of the defaults")
    def put_defaults(
        request: Request, body: LayerChange, principal: Annotated[Principal, changers]
    ) -> dict[str, Any]:
        return change(request, "defaults", None, body, principal)

    @routes.get(
        "/config/defaults/versions", summary="Versions of the defaults", dependencies=[readers]
    )
    def defaults_versions(
        request: Request, limit: Limit = DEFAULT_PAGE_LIMIT, after: After = None
    ) -> dict[str, Any]:
        return page_json(layer_versions(sql(request), "defaults", limit=limit, after=after))

    @routes.get("/config/groups/{group}", summary="A group's layer", dependencies=[readers])
    def get_group(request: Request, group: GroupName, version: Version = None) -> dict[str, Any]:
        return version_json(layer_version(sql(request), "group", group, version))

    @routes.put("/config/groups/{group}", summary="Store a new version of a group's layer")
    def put_group(
        request: Request,
        group: GroupName,
        body: LayerChange,
        principal: Annotated[Principal, changers],
    ) -> dict[str, Any]:
        return change(request, "group", group, body, principal)

    @routes.get(
        "/config/groups/{group}/versions",
        summary="Versions of a group's layer",
        dependencies=[readers],
    )
    def group_versions(
        request: Request,
        group: GroupName,
        limit: Limit = DEFAULT_PAGE_LIMIT,
        after: After = None,
    ) -> dict[str, Any]:
        return page_json(layer_versions(sql(request), "group", group, limit=limit, after=after))

    @routes.get(
        "/config/gateways/{gateway_id}", summary="A gateway's own layer", dependencies=[readers]
    )
    def get_gateway(
        request: Request, gateway_id: GatewayId, version: Version = None
    ) -> dict[str, Any]:
        return version_json(layer_version(sql(request), "gateway", gateway_id, version))

    @routes.put("/config/gateways/{gateway_id}", summary="Store a new version of a gateway's layer")
    def put_gateway(
        request: Request,
        gateway_id: GatewayId,
        body: LayerChange,
        principal: Annotated[Principal, changers],
    ) -> dict[str, Any]:
        return change(request, "gateway", gateway_id, body, principal)

    @routes.get(
        "/config/gateways/{gateway_id}/versions",
        summary="Versions of a gateway's layer",
        dependencies=[readers],
    )
    def gateway_versions(
        request: Request,
        gateway_id: GatewayId,
        limit: Limit = DEFAULT_PAGE_LIMIT,
        after: After = None,
    ) -> dict[str, Any]:
        return page_json(
            layer_versions(sql(request), "gateway", gateway_id, limit=limit, after=after)
        )

    @routes.get(
        "/config/diff",
        summary="What changed between two versions of a layer",
        dependencies=[readers],
    )
    def diff_route(
        request: Request,
        layer: Annotated[LayerKind, Query()],
        first: Annotated[int, Query(alias="from", ge=0, le=MAX_VERSION)],
        second: Annotated[int, Query(alias="to", ge=0, le=MAX_VERSION)],
        name: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        found = diff_versions(sql(request), layer, name, first, second)
        return {
            "layer": layer,
            "name": None if layer == "defaults" else name,
            "from": first,
            "to": second,
            "added": found.added,
            "removed": found.removed,
            "changed": {k: {"from": a, "to": b} for k, (a, b) in found.changed.items()},
        }

    @routes.put("/gateways/{gateway_id}/group", summary="Put a gateway in a group (or none)")
    def put_membership(
        request: Request,
        gateway_id: GatewayId,
        body: GroupChange,
        principal: Annotated[Principal, changers],
    ) -> dict[str, Any]:
        previous = set_group(
            sql(request),
            gateway_id,
            body.group,
            actor=principal,
            at=float(_app_clock(request)()),
        )
        return {"gateway_id": gateway_id.lower(), "group": body.group, "previous": previous}

    @routes.get(
        "/gateways/{gateway_id}/config/effective",
        summary="A gateway's merged configuration, its hash and where each key came from",
        dependencies=[readers],
    )
    def effective_route(request: Request, gateway_id: GatewayId) -> dict[str, Any]:
        found = effective_config(sql(request), gateway_id)
        return {
            "gateway_id": found.gateway_id,
            "group": found.group,
            "config": found.config,
            "content_hash": found.content_hash,
            "sources": {k: source_json(s) for k, s in found.sources.items()},
            "layers": [
                {"layer": v.layer, "name": v.name, "version": v.version} for v in found.layers
            ],
        }

    return routes
