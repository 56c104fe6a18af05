"""Offline provisioning: keys reserved for this laptop in a sealed bundle, a local queue,
and a sync when the network is back.

- :func:`fetch_bundle` makes the laptop's X25519 key (``<bundle>.key``, mode 0600, beside
  the bundle), asks the fleet for ``count`` reserved AppKeys sealed to it
  (``POST /api/v1/provision/bundles``), and writes the sealed bundle (:mod:`owlgate.codecs.bundle`)
  as it came: the keys are in clear only in memory while a module is written.
- :class:`BundleKeys` is the key source of ``owlgate provision node --offline``: each new
  DevEUI gets the next reservation not used yet; the choice is written to the queue
  (``<bundle>.queue.jsonl``) *before* the module is written, so a module half done keeps
  its key on a re-run, and marked written once the module holds it.
- :func:`sync_bundle` uploads the written registrations (``POST /api/v1/provision/sync``)
  and records each result in the queue; a conflict (the same DevEUI provisioned twice, a
  reservation used twice) is reported as the fleet describes it, never merged.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..codecs.bundle import KeyBundle, Reservation, open_bundle
from ..codecs.errors import CodecError
from .modules import ModuleInfo
from .node import FleetError, NodeProvisionError, Registration, fleet_error

log = logging.getLogger(__name__)

KEY_SUFFIX: Final = ".key"
QUEUE_SUFFIX: Final = ".queue.jsonl"


def key_path(bundle: Path) -> Path:
    """Where the laptop's private key of ``bundle`` lives."""
    return bundle.with_name(bundle.name + KEY_SUFFIX)


def queue_path(bundle: Path) -> Path:
    """Where the registrations made with ``bundle`` are queued."""
    return bundle.with_name(bundle.name + QUEUE_SUFFIX)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def fetch_bundle(
    client: httpx.Client,
    out: Path,
    *,
    count: int,
    profile_id: str,
    join_eui: bytes | None = None,
    site: str | None = None,
) -> KeyBundle:
    """Fetch a bundle of ``count`` reserved keys into ``out`` (see the module text)."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw().hex()
    body = {
        "count": count,
        "profile_id": profile_id,
        "join_eui": None if join_eui is None else join_eui.hex(),
        "site": site,
        "public_key": public,
    }
    try:
        response = client.post("/api/v1/provision/bundles", json=body)
    except httpx.HTTPError as err:
        raise FleetError(
            f"the fleet cannot be reached: {err}", "check the network and --fleet"
        ) from err
    if response.status_code != 201:
        raise fleet_error(response)
    try:
        sealed = base64.b64decode(response.json()["bundle"], validate=True)
        bundle = open_bundle(private, sealed)
    except (ValueError, KeyError, TypeError, CodecError) as err:
        raise FleetError(
            f"the fleet's bundle does not open: {err}", "fetch the bundle again"
        ) from err
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_private(key_path(out), private.private_bytes_raw().hex().encode() + b"\n")
    _write_private(out, sealed)
    log.info("bundle %s: %d keys, written to %s", bundle.bundle_id, len(bundle.reservations), out)
    return bundle


def load_bundle(path: Path) -> KeyBundle:
    """Open the bundle at ``path`` with the key beside it."""
    try:
        sealed = path.read_bytes()
        private_hex = key_path(path).read_text().strip()
    except OSError as err:
        raise NodeProvisionError(
            f"cannot read the bundle {path} or its key: {err.strerror}",
            "give --bundle the file that owlgate provision bundle fetch wrote (its .key beside it)",
        ) from err
    try:
        private = X25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex))
        return open_bundle(private, sealed)
    except (ValueError, CodecError) as err:
        raise NodeProvisionError(
            f"the bundle {path} does not open: {err}",
            "fetch a new bundle on this laptop (owlgate provision bundle fetch)",
        ) from err


@dataclass(slots=True)
class QueueEntry:
    reservation: int
    dev_eui: str
    assigned_at: str
    provisioned_at: str = ""
    name: str = ""
    result: str = ""
    detail: str = ""


class Queue:
    """The registrations made with one bundle (JSON lines, appended and synced)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[int, QueueEntry] = {}
        if not path.exists():
            return
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                self._apply(event)
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d is not a queue entry; ignored", path, number)

    def _apply(self, event: dict[str, object]) -> None:
        reservation = int(str(event["reservation"]))
        kind = event["event"]
        if kind == "assigned":
            self.entries[reservation] = QueueEntry(
                reservation,
                str(event["dev_eui"]),
                str(event["at"]),
                name=str(event.get("name", "")),
            )
            return
        entry = self.entries[reservation]
        if kind == "written":
            entry.provisioned_at = str(event["at"])
        elif kind == "synced":
            entry.result = str(event["result"])
            entry.detail = str(event.get("detail", ""))

    def append(self, event: dict[str, object]) -> None:
        self._apply(event)
        with self.path.open("a") as out:
            out.write(json.dumps(event) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def by_dev_eui(self, dev_eui: str) -> QueueEntry | None:
        for entry in self.entries.values():
            if entry.dev_eui == dev_eui:
                return entry
        return None


class BundleKeys:
    """The key source of ``--offline`` (see the module text)."""

    def __init__(self, bundle_path: Path, *, name: str = "") -> None:
        self.bundle = load_bundle(bundle_path)
        self.queue = Queue(queue_path(bundle_path))
        self.name = name
        self._keys = {item.id: item for item in self.bundle.reservations}

    @property
    def left(self) -> int:
        """Reservations not used yet."""
        return len(self._keys) - len(self.queue.entries)

    def register(self, dev_eui: bytes, info: ModuleInfo, port: str) -> Registration:
        if time.time() >= self.bundle.expires_at:
            raise NodeProvisionError(
                f"the bundle {self.bundle.bundle_id} expired at "
                f"{datetime.fromtimestamp(self.bundle.expires_at, UTC).isoformat()}",
                "sync what you provisioned, then fetch a new bundle",
            )
        entry = self.queue.by_dev_eui(dev_eui.hex())
        note = "offline, queued for sync"
        if entry is None:
            reservation = self._next()
            self.queue.append(
                {
                    "event": "assigned",
                    "reservation": reservation.id,
                    "dev_eui": dev_eui.hex(),
                    "at": _now(),
                    "name": self.name,
                }
            )
        else:
            reservation = self._keys[entry.reservation]
        return Registration(
            dev_eui=dev_eui,
            join_eui=self.bundle.join_eui,
            app_key=reservation.app_key,
            profile_id=self.bundle.profile_id,
            created=entry is None,
            note=note + f" (reservation {reservation.id})",
        )

    def _next(self) -> Reservation:
        for reservation in self.bundle.reservations:
            if reservation.id not in self.queue.entries:
                return reservation
        raise NodeProvisionError(
            f"every key of the bundle {self.bundle.bundle_id} is used"
            f" ({len(self.bundle.reservations)})",
            "sync, then fetch a new bundle (owlgate provision bundle fetch)",
        )

    def confirm(self, registration: Registration, port: str) -> None:
        entry = self.queue.by_dev_eui(registration.dev_eui.hex())
        assert entry is not None
        if not entry.provisioned_at:
            self.queue.append({"event": "written", "reservation": entry.reservation, "at": _now()})


@dataclass(frozen=True, slots=True)
class SyncResult:
    reservation: int
    dev_eui: str
    result: str
    detail: str


def sync_bundle(client: httpx.Client, bundle_path: Path) -> list[SyncResult]:
    """Upload the written registrations not synced yet (see the module text)."""
    bundle = load_bundle(bundle_path)
    queue = Queue(queue_path(bundle_path))
    pending = [
        entry
        for entry in queue.entries.values()
        if entry.provisioned_at and entry.result in ("", "conflict")
    ]
    if not pending:
        return []
    body = {
        "bundle_id": bundle.bundle_id,
        "registrations": [
            {
                "reservation": entry.reservation,
                "dev_eui": entry.dev_eui,
                "provisioned_at": entry.provisioned_at,
                "name": entry.name,
            }
            for entry in pending
        ],
    }
    try:
        response = client.post("/api/v1/provision/sync", json=body)
    except httpx.HTTPError as err:
        raise FleetError(
            f"the fleet cannot be reached: {err}", "try again when the network is back"
        ) from err
    if response.status_code != 200:
        raise fleet_error(response)
    try:
        items = response.json()["results"]
        results = [
            SyncResult(
                int(item["reservation"]),
                str(item["dev_eui"]),
                str(item["result"]),
                str(item.get("detail", "")),
            )
            for item in items
        ]
    except (ValueError, KeyError, TypeError) as err:
        raise FleetError(
            "the fleet's sync answer is malformed", "tell the fleet's operator"
        ) from err
    for item in results:
        if item.reservation in queue.entries:
            queue.append(
                {
                    "event": "synced",
                    "reservation": item.reservation,
                    "result": item.result,
                    "detail": item.detail,
                    "at": _now(),
                }
            )
    return results
