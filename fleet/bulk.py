"""Bulk import and export of the registry: gateways and devices, CSV or JSON.

An import is validated **row by row**: a row that cannot be registered (a bad field, a
duplicate id, an unknown profile, a gateway row from a caller who may not register gateways)
is reported with its line (CSV) or position (JSON), the field and what was wrong, and every
other row goes in. Rows are registered through the store's own ``create_gateway`` and
``create_device``, so keys are wrapped by the store's vault exactly as for a single
registration; each one records ``gateway.provisioned`` or ``device.provisioned`` in the audit
log in the same transaction. Rows commit in transactions of :data:`IMPORT_CHUNK`, each row in
a savepoint of its own. A **dry run** does all of it in one transaction and rolls it back, so
it reports what a real import would (including duplicates within the file).

An export writes the same shapes, so an export imports into another fleet unchanged. Device
keys are in it only when asked for (``with_keys``), which the API admits for admins alone and
which records ``keys.exported`` with the number of devices, never the keys.

File shapes (see ``docs/fleet-data.md``):

- CSV: a header, then one row per gateway or device; ``kind`` says which and ``id`` is the
  gateway's EUI or the DevEUI (columns in :data:`CSV_COLUMNS`; ``dev_eui`` is taken for
  ``id``; unused columns empty);
- JSON: ``{"gateways": [...], "devices": [...]}`` (what export writes, with ``format`` and
  ``version``), or a list of objects each with ``kind``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from owlgate.codecs.payloads import PROFILES

from .audit import record_event
from .auth import Forbidden, Principal, requires
from .sql import DataRefused, Sql
from .store import ConflictError, FleetError, InvalidError, Store, eui_hex
from .vault import VaultError
from .views import Site, get_site, make_site, set_site

log = logging.getLogger(__name__)

BulkFormat = Literal["csv", "json"]
#: Rows per transaction of a real import (each row in a savepoint of its own).
IMPORT_CHUNK: Final = 200
#: The largest import the API takes, bytes (about 100 000 device rows).
MAX_IMPORT_BYTES: Final = 32 * 1024 * 1024
FORMAT_NAME: Final = "owlgate-registry"
FORMAT_VERSION: Final = 1

CSV_COLUMNS: Final = (
    "kind",
    "id",
    "name",
    "profile_id",
    "activation",
    "join_eui",
    "dev_addr",
    "app_key",
    "nwk_s_key",
    "app_s_key",
    "sign_public_key",
    "seal_public_key",
    "zone",
    "street",
    "lat",
    "lon",
    "label",
)
GATEWAY_FIELDS: Final = frozenset({"kind", "id", "name", "sign_public_key", "seal_public_key"})
DEVICE_FIELDS: Final = frozenset(
    {
        "kind",
        "id",
        "dev_eui",
        "name",
        "profile_id",
        "activation",
        "join_eui",
        "dev_addr",
        "app_key",
        "nwk_s_key",
        "app_s_key",
        "zone",
        "street",
        "lat",
        "lon",
        "label",
    }
)
KEY_FIELDS: Final = ("app_key", "nwk_s_key", "app_s_key")
SITE_FIELDS: Final = ("zone", "street", "lat", "lon", "label")


class ImportFileError(InvalidError):
    """The file as a whole cannot be read (not JSON, no CSV header, wrong shape): no row of it
    was imported."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """One problem with one row: where (``line`` of a CSV file, 1 the header; ``location``
    always), which field (None for the row as a whole) and what is wrong."""

    location: str
    line: int | None
    field: str | None
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "location": self.location,
            "line": self.line,
            "field": self.field,
            "message": self.message,
        }


@dataclass(slots=True)
class ImportReport:
    """What an import did (or, for a dry run, would do)."""

    dry_run: bool
    rows: int = 0
    gateways_created: list[str] = field(default_factory=list)
    devices_created: list[str] = field(default_factory=list)
    sites_set: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def rejected_rows(self) -> int:
        return len({rejection.location for rejection in self.rejected})

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "rows": self.rows,
            "gateways_created": len(self.gateways_created),
            "devices_created": len(self.devices_created),
            "sites_set": self.sites_set,
            "rejected_rows": self.rejected_rows,
            "rejected": [rejection.to_json() for rejection in self.rejected],
        }


@dataclass(frozen=True, slots=True)
class _Row:
    location: str
    line: int | None
    values: dict[str, Any]


class _RowRefused(Exception):
    """The problems of one row, raised inside its savepoint to roll it back."""

    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


class _DryRun(Exception):
    """Raised at the end of a dry run to roll its transaction back."""


# --- reading files -------------------------------------------------------------------------------


def detect_format(name: str) -> BulkFormat:
    """The format of a file by its name's ending; InvalidError when it says neither."""
    lowered = name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(".json"):
        return "json"
    raise InvalidError(f"{name}: cannot tell the format from the name: give csv or json")


def parse_rows(data: str, fmt: BulkFormat) -> list[_Row]:
    """The rows of an import file; ImportFileError when the file as a whole is unreadable."""
    return _csv_rows(data) if fmt == "csv" else _json_rows(data)


def _csv_rows(data: str) -> list[_Row]:
    reader = csv.reader(io.StringIO(data.removeprefix("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError("the CSV file is empty: it needs a header line") from None
    except csv.Error as err:
        raise ImportFileError(f"line 1: the CSV header cannot be read: {err}") from err
    names = [name.strip().lower() for name in header]
    unknown = sorted(set(names) - set(CSV_COLUMNS) - {"dev_eui"})
    if "kind" not in names or unknown:
        raise ImportFileError(
            "line 1: the CSV header needs a 'kind' column and only these: "
            + ", ".join(CSV_COLUMNS)
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    if len(set(names)) != len(names):
        raise ImportFileError("line 1: the CSV header names a column twice")
    rows: list[_Row] = []
    line = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            # A broken quote swallows the rest of the file: nothing after it can be trusted.
            raise ImportFileError(f"line {line + 1}: {err}; nothing imported") from err
        start, line = line + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        location = f"line {start}"
        if len(cells) != len(names):
            rows.append(
                _Row(location, start, {"__error__": f"{len(cells)} cells, header has {len(names)}"})
            )
            continue
        values = {
            name: cell.strip() for name, cell in zip(names, cells, strict=True) if cell.strip()
        }
        rows.append(_Row(location, start, values))
    return rows


def _json_rows(data: str) -> list[_Row]:
    try:
        document = json.loads(data)
    except ValueError as err:
        raise ImportFileError(f"not JSON: {err}; nothing imported") from err
    items: list[tuple[str, Any, str | None]] = []
    if isinstance(document, list):
        items = [(f"[{index}]", item, None) for index, item in enumerate(document)]
    elif isinstance(document, dict):
        unknown = sorted(set(document) - {"format", "version", "with_keys", "gateways", "devices"})
        if unknown:
            raise ImportFileError(
                f"unknown top-level member(s) {', '.join(unknown)}: expected gateways, devices"
            )
        for kind in ("gateways", "devices"):
            listed = document.get(kind, [])
            if not isinstance(listed, list):
                raise ImportFileError(f"{kind}: must be a list")
            items += [(f"{kind}[{i}]", item, kind[:-1]) for i, item in enumerate(listed)]
    else:
        raise ImportFileError("the JSON document must be an object or a list of objects")
    rows: list[_Row] = []
    for location, item, shape_kind in items:
        if not isinstance(item, dict):
            rows.append(_Row(location, None, {"__error__": "must be an object"}))
            continue
        values = {
            str(key): value for key, value in item.items() if value is not None and value != ""
        }
        if shape_kind is not None:
            values.setdefault("kind", shape_kind)
        rows.append(_Row(location, None, values))
    return rows


# --- validating ----------------------------------------------------------------------------------


def _text(values: Mapping[str, Any], name: str, problems: list[tuple[str | None, str]]) -> str:
    value = values.get(name)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.append((name, "must be text"))
        return ""
    return str(value).strip()


def _hex(
    values: Mapping[str, Any],
    name: str,
    length: int,
    problems: list[tuple[str | None, str]],
    *,
    required: bool = False,
) -> bytes | None:
    text = _text(values, name, problems)
    if not text:
        if required:
            problems.append((name, "is required"))
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        # The message never repeats the value: it may be a key.
        problems.append((name, f"must be {length * 2} hex digits"))
        return None
    if len(raw) != length:
        problems.append((name, f"must be {length * 2} hex digits, got {len(text)} characters"))
        return None
    return raw


def _eui(
    values: Mapping[str, Any], name: str, problems: list[tuple[str | None, str]], what: str
) -> str | None:
    text = _text(values, name, problems)
    if not text:
        return None
    try:
        return eui_hex(text, what)
    except InvalidError as err:
        problems.append((name, err.message))
        return None


def _float(
    values: Mapping[str, Any], name: str, problems: list[tuple[str | None, str]]
) -> float | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        problems.append((name, "must be a number"))
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        problems.append((name, f"must be a number, got {str(value)[:40]!r}"))
        return None


def _site(
    values: Mapping[str, Any], eui: str, problems: list[tuple[str | None, str]]
) -> Site | None:
    if not any(values.get(name) not in (None, "") for name in SITE_FIELDS):
        return None
    lat, lon = _float(values, "lat", problems), _float(values, "lon", problems)
    texts = {name: _text(values, name, problems) or None for name in ("zone", "street", "label")}
    try:
        return make_site(eui, lat=lat, lon=lon, **texts)
    except InvalidError as err:
        field_name = err.message.split(":", 1)[0]
        known = field_name if field_name in SITE_FIELDS else None
        problems.append((known, err.message.split(": ", 1)[-1] if known else err.message))
        return None


def _store_error_field(err: FleetError, kind: str) -> str | None:
    text = err.message
    if isinstance(err, ConflictError):
        return "dev_addr" if "DevAddr" in text else "id"
    if "profile" in text:
        return "profile_id"
    for name, marker in (
        ("join_eui", "JoinEUI"),
        ("app_key", "AppKey"),
        ("nwk_s_key", "NwkSKey"),
        ("app_s_key", "AppSKey"),
        ("dev_addr", "DevAddr"),
    ):
        if marker in text:
            return name
    return "activation" if kind == "device" and "activation" in text else None


# --- importing -----------------------------------------------------------------------------------


def import_registry(
    store: Store,
    data: str,
    fmt: BulkFormat,
    *,
    actor: Principal | str,
    allow_gateways: bool,
    dry_run: bool = False,
    now: float | None = None,
) -> ImportReport:
    """Import the gateways and devices of ``data``; every row that cannot be imported is in
    the report's ``rejected``, every other row is registered (or, ``dry_run``, checked and
    rolled back). ``allow_gateways`` is whether ``actor`` may register gateways.
    ImportFileError when the file as a whole cannot be read."""
    rows = parse_rows(data, fmt)
    report = ImportReport(dry_run=dry_run, rows=len(rows))
    at = time.time() if now is None else now
    if dry_run:
        # Every row is checked by really registering it, in one transaction that _DryRun
        # then rolls back: nothing stays, and the report is the one a real import would give.
        with contextlib.suppress(_DryRun), store.sql.transaction() as tx:
            for row in rows:
                _import_row(store, tx, row, report, actor, allow_gateways, at)
            raise _DryRun
    else:
        for start in range(0, len(rows), IMPORT_CHUNK):
            with store.sql.transaction() as tx:
                for row in rows[start : start + IMPORT_CHUNK]:
                    _import_row(store, tx, row, report, actor, allow_gateways, at)
    log.info(
        "import%s by %s: %d rows, %d gateways and %d devices %s, %d rows rejected",
        " (dry run)" if dry_run else "",
        actor.name if isinstance(actor, Principal) else actor,
        report.rows,
        len(report.gateways_created),
        len(report.devices_created),
        "would be created" if dry_run else "created",
        report.rejected_rows,
    )
    return report


def _import_row(
    store: Store,
    tx: Sql,
    row: _Row,
    report: ImportReport,
    actor: Principal | str,
    allow_gateways: bool,
    at: float,
) -> None:
    def reject(problems: list[tuple[str | None, str]]) -> None:
        report.rejected.extend(Rejection(row.location, row.line, f, m) for f, m in problems)

    if "__error__" in row.values:
        reject([(None, str(row.values["__error__"]))])
        return
    kind = row.values.get("kind")
    try:
        with tx.transaction() as savepoint:
            if kind == "gateway":
                if not allow_gateways:
                    raise _RowRefused([("kind", "registering gateways needs the admin role")])
                gid = _import_gateway(store, savepoint, row.values, actor, at)
                report.gateways_created.append(gid)
            elif kind == "device":
                eui, site = _import_device(store, savepoint, row.values, actor, at)
                report.devices_created.append(eui)
                report.sites_set += site
            else:
                raise _RowRefused([("kind", f"must be 'gateway' or 'device', got {kind!r}")])
    except _RowRefused as refused:
        reject(refused.problems)
    except FleetError as err:
        reject([(_store_error_field(err, str(kind)), err.message)])
    except DataRefused as err:
        reject([(None, f"the database refused the row: {err}")])
    except VaultError as err:
        # The store cannot wrap this row's keys (opened without its vault): the row is
        # refused like any other, and a gateway row, which has no secret, still goes in.
        reject([(None, err.message)])


def _import_gateway(
    store: Store, db: Sql, values: Mapping[str, Any], actor: Principal | str, at: float
) -> str:
    problems: list[tuple[str | None, str]] = []
    unknown = sorted(set(values) - GATEWAY_FIELDS)
    problems += [(name, "is not a gateway field") for name in unknown]
    gid = _eui(values, "id", problems, "gateway id")
    if gid is None and not any(f == "id" for f, _ in problems):
        problems.append(("id", "is required"))
    name = _text(values, "name", problems)
    sign = _hex(values, "sign_public_key", 32, problems, required=True)
    seal = _hex(values, "seal_public_key", 32, problems, required=True)
    if problems or gid is None or sign is None or seal is None:
        raise _RowRefused(problems)
    store.create_gateway(gid, name=name, sign_public_key=sign, seal_public_key=seal, created=at)
    record_event(
        db,
        actor=actor,
        action="gateway.provisioned",
        target=f"gateway:{gid}",
        details={"via": "bulk import", "name": name},
        at=at,
    )
    return gid


def _import_device(
    store: Store, db: Sql, values: Mapping[str, Any], actor: Principal | str, at: float
) -> tuple[str, int]:
    problems: list[tuple[str | None, str]] = []
    # Set by the shape (JSON list of devices), not by the file: not an unknown field.
    unknown = sorted(set(values) - DEVICE_FIELDS)
    problems += [(name, "is not a device field") for name in unknown]
    id_field = "dev_eui" if "dev_eui" in values else "id"
    if "dev_eui" in values and "id" in values:
        problems.append(("id", "give the DevEUI as dev_eui or id, not both"))
    eui = _eui(values, id_field, problems, "DevEUI")
    if eui is None and not any(f == id_field for f, _ in problems):
        problems.append((id_field, "is required"))
    profile_id = _text(values, "profile_id", problems)
    if not profile_id:
        problems.append(("profile_id", "is required"))
    elif profile_id not in PROFILES:
        problems.append(
            ("profile_id", f"unknown profile {profile_id!r}; known: {', '.join(sorted(PROFILES))}")
        )
    activation = _text(values, "activation", problems).lower()
    if activation not in ("abp", "otaa"):
        problems.append(("activation", f"must be abp or otaa, got {activation!r}"))
    join_eui = _eui(values, "join_eui", problems, "JoinEUI")
    dev_addr_text = _text(values, "dev_addr", problems)
    dev_addr = None
    if dev_addr_text:
        try:
            dev_addr = int(dev_addr_text, 16)
        except ValueError:
            problems.append(("dev_addr", f"must be 8 hex digits, got {dev_addr_text[:20]!r}"))
        else:
            if len(dev_addr_text) != 8:
                problems.append(("dev_addr", f"must be 8 hex digits, got {dev_addr_text!r}"))
    keys = {name: _hex(values, name, 16, problems) for name in KEY_FIELDS}
    if activation == "otaa":
        problems += [
            (n, "is required for OTAA") for n in ("join_eui", "app_key") if not values.get(n)
        ]
        problems += [
            (n, "an OTAA device gets it by joining: leave it empty")
            for n in ("dev_addr", "nwk_s_key", "app_s_key")
            if values.get(n)
        ]
    elif activation == "abp":
        problems += [
            (n, "is required for ABP")
            for n in ("dev_addr", "nwk_s_key", "app_s_key")
            if not values.get(n)
        ]
    site = _site(values, eui or "0" * 16, problems)
    if problems or eui is None:
        raise _RowRefused(problems)
    name = _text(values, "name", problems)
    store.create_device(
        eui,
        profile_id=profile_id,
        activation="otaa" if activation == "otaa" else "abp",
        created=at,
        name=name,
        join_eui=join_eui,
        app_key=keys["app_key"],
        dev_addr=dev_addr,
        nwk_s_key=keys["nwk_s_key"],
        app_s_key=keys["app_s_key"],
    )
    if site is not None:
        set_site(db, site, at=at)
    record_event(
        db,
        actor=actor,
        action="device.provisioned",
        target=f"device:{eui}",
        details={"via": "bulk import", "profile_id": profile_id, "activation": activation},
        at=at,
    )
    return eui, int(site is not None)


# --- exporting -----------------------------------------------------------------------------------


def _gateway_rows(store: Store) -> Iterator[dict[str, Any]]:
    after: str | None = None
    while True:
        page = store.gateways(limit=1000, after=after)
        for gateway in page.items:
            yield {
                "kind": "gateway",
                "id": gateway.id,
                "name": gateway.name,
                "sign_public_key": gateway.sign_public_key.hex(),
                "seal_public_key": gateway.seal_public_key.hex(),
            }
        if page.next is None:
            return
        after = page.next


def _device_rows(store: Store, with_keys: bool) -> Iterator[dict[str, Any]]:
    after: str | None = None
    while True:
        page = store.devices(limit=1000, after=after)
        for device in page.items:
            row: dict[str, Any] = {
                "kind": "device",
                "id": device.dev_eui,
                "name": device.name,
                "profile_id": device.profile_id,
                "activation": device.activation,
                "join_eui": device.join_eui,
                # An OTAA device's DevAddr and session keys come from its join: a fleet
                # importing it gives it new ones when it joins there.
                "dev_addr": None
                if device.dev_addr is None or device.activation == "otaa"
                else f"{device.dev_addr:08x}",
            }
            if with_keys:
                keys = store.device_keys(device.dev_eui)
                row["app_key"] = None if keys.app_key is None else keys.app_key.hex()
                if device.activation == "abp":
                    row["nwk_s_key"] = None if keys.nwk_s_key is None else keys.nwk_s_key.hex()
                    row["app_s_key"] = None if keys.app_s_key is None else keys.app_s_key.hex()
            site = get_site(store.sql, device.dev_eui)
            if site is not None:
                row.update({k: v for k, v in site.to_json().items() if k != "dev_eui"})
            yield row
        if page.next is None:
            return
        after = page.next


def export_registry(
    store: Store,
    fmt: BulkFormat,
    *,
    with_keys: bool,
    actor: Principal | str,
    now: float | None = None,
) -> str:
    """Every gateway and device as an import file of ``fmt``; with the devices' keys (in hex)
    when ``with_keys``, which is recorded as ``keys.exported`` in the same transaction that
    reads them. The caller decides who may ask for keys."""
    with store.sql.transaction() as tx:
        gateways = list(_gateway_rows(store))
        devices = list(_device_rows(store, with_keys))
        if with_keys:
            record_event(
                tx,
                actor=actor,
                action="keys.exported",
                target="registry",
                details={"devices": len(devices), "format": fmt},
                at=now,
            )
    if with_keys:
        log.warning(
            "device keys of %d devices exported (%s) by %s",
            len(devices),
            fmt,
            actor.name if isinstance(actor, Principal) else actor,
        )
    if fmt == "json":
        for device in devices:
            device["dev_eui"] = device.pop("id")
        document = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "with_keys": with_keys,
            "gateways": [{k: v for k, v in g.items() if k != "kind"} for g in gateways],
            "devices": [
                {k: v for k, v in d.items() if k != "kind" and v is not None} for d in devices
            ],
        }
        return json.dumps(document, indent=1, sort_keys=False) + "\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for item in (*gateways, *devices):
        writer.writerow({k: "" if v is None else v for k, v in item.items()})
    return out.getvalue()


# --- API -----------------------------------------------------------------------------------------

_MEDIA: Final = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


def _store(request: Request) -> Store:
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None:
        raise RuntimeError("the app has no store: build it with owlgate.fleet.api.create_app")
    return store


def router(*, clock: Callable[[], float] | None = None) -> APIRouter:
    """``POST /api/v1/admin/import`` (technician; gateway rows need admin) and
    ``GET /api/v1/admin/export`` (operator, technician; ``with_keys`` admin only)."""
    from .api import ADMIN_PREFIX

    api = APIRouter(prefix=ADMIN_PREFIX)

    def now(request: Request) -> float:
        if clock is not None:
            return clock()
        app_clock: Callable[[], float] = getattr(request.app.state, "clock", time.time)
        return app_clock()

    @api.post(
        "/import",
        summary="Import gateways and devices from CSV or JSON, row by row (dry_run: check only)",
    )
    async def import_file(
        request: Request,
        store: Annotated[Store, Depends(_store)],
        principal: Annotated[Principal, requires("technician")],
        format: BulkFormat | None = None,
        dry_run: bool = False,
    ) -> dict[str, object]:
        body = await request.body()
        if len(body) > MAX_IMPORT_BYTES:
            raise InvalidError(
                f"the import is {len(body)} bytes, more than {MAX_IMPORT_BYTES}: split it"
            )
        fmt = format or _format_of(request.headers.get("content-type", ""))
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ImportFileError(f"the file is not UTF-8 (byte {err.start})") from err
        report = await run_in_threadpool(
            import_registry,
            store,
            text,
            fmt,
            actor=principal,
            allow_gateways=principal.role == "admin",
            dry_run=dry_run,
            now=now(request),
        )
        return report.to_json()

    @api.get("/export", summary="Export gateways and devices as CSV or JSON (keys: admin only)")
    def export_file(
        request: Request,
        store: Annotated[Store, Depends(_store)],
        principal: Annotated[Principal, requires("operator", "technician")],
        format: BulkFormat = "json",
        with_keys: Annotated[bool, Query(description="include device keys (admin only)")] = False,
    ) -> Response:
        if with_keys and principal.role != "admin":
            raise Forbidden(
                f"exporting device keys needs the admin role; token {principal.token_id} has "
                f"{principal.role}",
                "forbidden",
            )
        text = export_registry(
            store, format, with_keys=with_keys, actor=principal, now=now(request)
        )
        suffix = "with-keys." if with_keys else ""
        return Response(
            text,
            media_type=_MEDIA[format],
            headers={
                "Content-Disposition": f'attachment; filename="registry.{suffix}{format}"',
                "Cache-Control": "no-store",
            },
        )

    return api


def _format_of(content_type: str) -> BulkFormat:
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in ("text/csv", "application/csv"):
        return "csv"
    if kind in ("application/json", "text/json"):
        return "json"
    raise InvalidError(
        f"cannot tell the import's format from Content-Type {kind or 'missing'!r}: send "
        "text/csv or application/json, or give ?format=csv|json"
    )


__all__ = [
    "CSV_COLUMNS",
    "ImportFileError",
    "ImportReport",
    "Rejection",
    "detect_format",
    "export_registry",
    "import_registry",
    "router",
]
