"""Configuration documents from the fleet, on the gateway: verify, keep, overlay, fall back.

The fleet publishes a signed configuration document (:mod:`owlgate.codecs.configdoc`) retained
on ``owlgate/v1/gw/{id}/config``; the agent's control connection receives it and the service
(:class:`~owlgate.edge.runtime.AgentService`) asks a :class:`ConfigKeeper` what to do with it
(:meth:`ConfigKeeper.consider`), applies it, checks itself and commits or rolls back. The
keeper owns ``state_dir/config/`` (``docs/edge-config-ota.md`` is the technician's guide)::

    current.cose     the document running, or being tried (the signed bytes as received)
    last-good.cose   the last document that passed its self-check
    trial            present while current.cose is being tried: {"seq", "content_hash"}
    keeper.json      applied seq (anti-rollback), trusted keys, the last rolled-back
                     document, the last status reported
    reports/         signed status reports not yet in the agent's outbox
    credentials/     broker password files a document may name (``file:NAME``)

Every file is written atomically: a temporary file, fsync, rename, fsync of the folder; a
power cut leaves the old file or the new one, never half of either. Steps that touch several
files are ordered so that the trial marker is removed last and :meth:`ConfigKeeper.boot` can
finish (or undo) a step a crash interrupted:

- commit: keeper.json (applied seq, rotated keys), last-good.cose, then the marker;
- roll back: keeper.json (the rolled-back seq), current.cose (back to last good), marker;
- a marker at boot that neither step accounts for: the agent died while trying the document.
  It is rolled back and reported ``rolled_back`` with reason ``interrupted``.

At boot the running configuration is the current document, or when it is unreadable or no
longer verifies or fits ``edge.toml``, the last good one, or else the factory ``edge.toml``
alone. The applied seq survives all of that: a gateway that fell back never accepts an
older document.

A retained document that was rolled back comes again on every reconnection. It is not
tried again: the first time it comes in a process, its earlier ``rolled_back`` status is
sent again (the fleet may have missed it); after that it is only logged. A refused document
is answered once per process as well. The fleet retries a configuration by publishing it with
a higher seq.

Reports are signed with the gateway's identity key and written to ``reports/`` before anything
else happens; the service moves them into the agent's durable outbox, so neither a restart of
the agent nor a backhaul outage loses one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..codecs import signed
from ..codecs.configdoc import (
    B_CONTENT_HASH,
    ConfigDocument,
    ConfigRejected,
    GatewayConfig,
    next_trusted,
    raw_public_key,
    verify_config,
)
from ..codecs.control import ConfigStatus, encode_config_status, short_detail
from ..codecs.errors import OwlgateError
from .config import (
    DEFAULT_MQTT_PORT,
    BatchSettings,
    EdgeConfig,
    HealthSettings,
    MqttSettings,
    OutboxSettings,
    load_mqtt_password,
)
from .errors import ConfigError, EdgeError

__all__ = [
    "ANSWER",
    "APPLY",
    "CONFIG_DIR",
    "CONFIG_TOPIC",
    "IGNORE",
    "LIVE_PARTS",
    "RESTART_PARTS",
    "STATUS_TOPIC",
    "ConfigKeeper",
    "Decision",
    "KeeperError",
    "Unsupported",
    "changed_parts",
    "overlay",
]

log = logging.getLogger(__name__)

#: Topic suffixes under ``owlgate/v1/gw/{id}/``.
CONFIG_TOPIC: Final = "config"
STATUS_TOPIC: Final = "config/status"
#: The keeper's folder under the state directory, and its files.
CONFIG_DIR: Final = "config"
CURRENT_FILE: Final = "current.cose"
LAST_GOOD_FILE: Final = "last-good.cose"
TRIAL_FILE: Final = "trial"
KEEPER_FILE: Final = "keeper.json"
REPORTS_DIR: Final = "reports"
CREDENTIALS_DIR: Final = "credentials"
#: Reports waiting for the outbox, at most; beyond, the oldest is dropped (and logged). The
#: agent empties the folder within a second of running, so this bounds a broken disk only.
MAX_SPOOLED_REPORTS: Final = 256
#: Refused documents remembered (by SHA-256 of their bytes) so a retained one is answered once.
MAX_ANSWERED: Final = 64
#: The parts of a configuration. A change of these restarts that part alone inside the
#: running agent (``radio``: the radio backend; ``mqtt``: the uplink and the control
#: connection); the others are taken live by the running agent (``outbox``: the state
#: database's bound, changed while open).
RESTART_PARTS: Final = frozenset({"radio", "mqtt"})
LIVE_PARTS: Final = frozenset({"batch", "health", "log_level", "devices", "outbox"})
#: ``mqtt_credentials`` a gateway understands: ``file:NAME``, a password file in
#: ``state_dir/config/credentials/`` (a plain name: no folder, not hidden).
_CREDENTIALS_FILE = re.compile(r"file:([A-Za-z0-9_][A-Za-z0-9._-]{0,63})")
_MIB: Final = 1024 * 1024

#: What :meth:`ConfigKeeper.consider` decides.
APPLY: Final = "apply"
ANSWER: Final = "answer"
IGNORE: Final = "ignore"


class KeeperError(EdgeError):
    """The keeper's folder cannot be written (the document is then not applied)."""


class Unsupported(EdgeError):
    """A valid document this gateway cannot run (reported ``rejected``, ``unsupported``)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one received document.

    ``action`` is :data:`APPLY` (``doc``, its bytes in ``payload`` and the configuration it
    makes, ``config``), :data:`ANSWER` (send ``status``, already made: a refusal or an
    earlier ``rolled_back`` again) or :data:`IGNORE` (``note`` says why, for the log).
    """

    action: str
    note: str
    doc: ConfigDocument | None = None
    payload: bytes = b""
    config: EdgeConfig | None = None
    status: ConfigStatus | None = None


@dataclass(frozen=True, slots=True)
class _RolledBack:
    seq: int
    content_hash: bytes
    reason: str
    detail: str


# --- the overlay ----------------------------------------------------------------------------------


def credentials_file(reference: str, config_dir: Path) -> Path:
    """The password file a ``mqtt_credentials`` reference names; :class:`Unsupported` for a
    reference this gateway does not understand."""
    match = _CREDENTIALS_FILE.fullmatch(reference)
    if match is None:
        raise Unsupported(
            f"mqtt credentials {reference!r}: this gateway understands only file:NAME, a"
            f" password file in {config_dir / CREDENTIALS_DIR}"
        )
    return config_dir / CREDENTIALS_DIR / match.group(1)


def overlay(factory: EdgeConfig, doc: ConfigDocument, *, config_dir: Path) -> EdgeConfig:
    """The configuration ``doc`` makes of the factory ``edge.toml`` (``factory``).

    The document sets what the fleet manages (:class:`~owlgate.codecs.configdoc.GatewayConfig`);
    the file keeps what describes the machine: the gateway's id, keys and state folder, the
    radio's serial port and baud rate or UDP address, the wired bus, ``[config]``. A document
    without ``mqtt_credentials`` keeps the file's ``password_file``. :class:`Unsupported`
    when the file lacks what the document needs (a serial port for ``serial`` or
    ``rak3172``) or the credentials reference is not ``file:NAME``.
    """
    settings: GatewayConfig = doc.config
    radio = factory.radio
    backend = settings.radio_backend
    if backend in ("serial", "rak3172") and not radio.port:
        raise Unsupported(
            f'the document asks for the "{backend}" radio backend, but {factory.path} has no'
            " [radio] port for it"
        )
    url = urlsplit(settings.mqtt_url)
    if url.hostname is None:  # checked by GatewayConfig already; here for the type
        raise Unsupported(f"mqtt_url {settings.mqtt_url!r} names no host")
    password_file = factory.mqtt.password_file
    if settings.mqtt_credentials is not None:
        password_file = credentials_file(settings.mqtt_credentials, config_dir)
    return dataclasses.replace(
        factory,
        radio=dataclasses.replace(
            radio,
            backend=backend,
            channels=settings.channels,
            tx_power_dbm=settings.tx_power_dbm,
        ),
        mqtt=MqttSettings(
            url.hostname,
            DEFAULT_MQTT_PORT if url.port is None else url.port,
            settings.mqtt_keepalive_s,
            password_file,
        ),
        batch=BatchSettings(settings.batch_max_readings, settings.batch_max_age_ms / 1000),
        outbox=OutboxSettings(settings.outbox_max_bytes / _MIB),
        health=HealthSettings(settings.health_interval_s),
        log_level=settings.log_level,
        devices=settings.devices,
        document_seq=doc.seq,
        document_hash=doc.content_hash,
    )


def changed_parts(old: EdgeConfig, new: EdgeConfig) -> frozenset[str]:
    """Which parts differ between two configurations: names of :data:`RESTART_PARTS` and
    :data:`LIVE_PARTS`."""
    parts = {
        "radio": old.radio != new.radio,
        "mqtt": old.mqtt != new.mqtt,
        "outbox": old.outbox.max_bytes != new.outbox.max_bytes,
        "batch": old.batch != new.batch,
        "health": old.health != new.health,
        "log_level": old.log_level != new.log_level,
        "devices": old.devices != new.devices,
    }
    return frozenset(name for name, changed in parts.items() if changed)


# --- files ----------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old file or the new one: a temporary
    file (owner-only), fsync, rename over ``path``, fsync of the folder."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
    _fsync_dir(path.parent)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    _fsync_dir(path.parent)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _peek(payload: bytes) -> tuple[int, bytes | None]:
    """The seq and content hash a document says it has, unverified (0 and None when they
    cannot be read): only to name a refused document in its report."""
    try:
        document = signed.decode_document(signed.unwrap(bytes(payload)).payload)
    except OwlgateError:
        return 0, None
    body = document.body
    stated = body.get(B_CONTENT_HASH) if isinstance(body, dict) else None
    content_hash = stated if isinstance(stated, bytes) and len(stated) == 32 else None
    return document.seq, content_hash


# --- the keeper -----------------------------------------------------------------------------------


class ConfigKeeper:
    """The gateway's configuration documents in ``state_dir/config/`` (see the module
    docstring).

    ``trusted`` is the key documents must be signed with before any rotation (the pinned
    fleet key, or ``[gateway] config_key``); once a document was applied the keys it leaves
    trusted (:func:`~owlgate.codecs.configdoc.next_trusted`) are kept in ``keeper.json``
    instead. ``signing_key`` (the gateway's identity key) signs the status reports; ``clock``
    gives their ``at`` (UTC seconds).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        gateway_id: bytes,
        groups: Iterable[str] = (),
        trusted: Ed25519PublicKey,
        signing_key: Ed25519PrivateKey,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = Path(state_dir) / CONFIG_DIR
        self.gateway_id = gateway_id
        self.groups = tuple(groups)
        self._initial_trusted = trusted
        self._signing_key = signing_key
        self._clock = clock
        self.counters: dict[str, int] = {}
        self._answered: OrderedDict[bytes, None] = OrderedDict()
        # The rolled-back seqs whose status was sent again in this process.
        self._repeated: set[int] = set()
        try:
            for folder in (self.folder, self.folder / REPORTS_DIR, self.folder / CREDENTIALS_DIR):
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise KeeperError(f"cannot create {self.folder}: {err.strerror or err}") from err
        self.applied_seq: int | None = None
        self._trusted: dict[bytes, Ed25519PublicKey] | None = None
        self._rolled_back: _RolledBack | None = None
        self.last_status: dict[str, Any] | None = None
        self._load_state()

    # --- keeper.json ------------------------------------------------------------------------

    @property
    def trusted(self) -> dict[bytes, Ed25519PublicKey]:
        """The keys a document must be signed with now, by key id."""
        if self._trusted is not None:
            return dict(self._trusted)
        return {signed.key_id(self._initial_trusted): self._initial_trusted}

    def _load_state(self) -> None:
        path = self.folder / KEEPER_FILE
        raw = _read(path)
        if raw is None:
            return
        try:
            state = json.loads(raw)
            applied = state.get("applied_seq")
            if applied is not None and (type(applied) is not int or applied < 0):
                raise ValueError(f"applied_seq {applied!r}")
            self.applied_seq = applied
            keys = state.get("trusted")
            if keys is not None:
                trusted = [Ed25519PublicKey.from_public_bytes(bytes.fromhex(k)) for k in keys]
                if not trusted:
                    raise ValueError("no trusted key")
                self._trusted = {signed.key_id(key): key for key in trusted}
            rolled = state.get("rolled_back")
            if rolled is not None:
                self._rolled_back = _RolledBack(
                    int(rolled["seq"]),
                    bytes.fromhex(rolled["content_hash"]),
                    str(rolled["reason"]),
                    str(rolled["detail"]),
                )
            last = state.get("last_status")
            self.last_status = last if isinstance(last, dict) else None
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            # The seq still comes back from the documents themselves (boot() takes the
            # highest seq of those that verify), so a damaged file does not re-open replays.
            self._count("keeper_file_damaged")
            log.error("%s is damaged (%s): starting from the documents alone", path, err)
            self.applied_seq = None
            self._trusted = None
            self._rolled_back = None

    def _save_state(self) -> None:
        rolled = self._rolled_back
        state = {
            "applied_seq": self.applied_seq,
            "trusted": None
            if self._trusted is None
            else [raw_public_key(key).hex() for key in self._trusted.values()],
            "rolled_back": None
            if rolled is None
            else {
                "seq": rolled.seq,
                "content_hash": rolled.content_hash.hex(),
                "reason": rolled.reason,
                "detail": rolled.detail,
            },
            "last_status": self.last_status,
        }
        self._write(KEEPER_FILE, (json.dumps(state, indent=1) + "\n").encode())

    def _write(self, name: str, data: bytes) -> None:
        try:
            write_atomic(self.folder / name, data)
        except OSError as err:
            raise KeeperError(f"cannot write {self.folder / name}: {err.strerror or err}") from err

    def _read_stored(self, name: str) -> bytes:
        try:
            return (self.folder / name).read_bytes()
        except OSError as err:
            raise KeeperError(f"cannot read {self.folder / name}: {err.strerror or err}") from err

    def _unlink(self, name: str) -> None:
        try:
            _remove(self.folder / name)
        except OSError as err:
            raise KeeperError(f"cannot remove {self.folder / name}: {err.strerror or err}") from err

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # --- boot -------------------------------------------------------------------------------

    def _load(self, name: str, factory: EdgeConfig) -> tuple[EdgeConfig, ConfigDocument] | None:
        """The configuration the stored document ``name`` makes, or None (logged) when it is
        missing, unreadable, no longer verifies or does not fit ``factory``."""
        path = self.folder / name
        try:
            data = _read(path)
        except OSError as err:
            log.error("cannot read %s: %s", path, err.strerror or err)
            return None
        if data is None:
            return None
        try:
            doc = verify_config(data, self.trusted, gateway_id=self.gateway_id, groups=self.groups)
            return overlay(factory, doc, config_dir=self.folder), doc
        except (ConfigRejected, Unsupported) as err:
            self._count("stored_unusable")
            log.error("%s cannot be used: %s", path, err)
            return None

    def boot(self, factory: EdgeConfig) -> EdgeConfig:
        """The configuration to start with: the current document over ``factory``, or the
        last good one, or ``factory`` itself. Finishes a commit or a roll-back a crash
        interrupted, and rolls back a document whose trial was interrupted (reported
        ``rolled_back``, reason ``interrupted``)."""
        marker = self._trial_marker()
        if marker is not None:
            self._settle_trial(marker, factory)
        for name in (CURRENT_FILE, LAST_GOOD_FILE):
            loaded = self._load(name, factory)
            if loaded is None:
                continue
            config, doc = loaded
            if self.applied_seq is None or doc.seq > self.applied_seq:
                # keeper.json was lost or damaged: the documents still say what was applied.
                self.applied_seq = doc.seq
                self._save_state()
            if name == LAST_GOOD_FILE:
                log.warning(
                    "running the last good configuration document (seq %d): %s cannot be used",
                    doc.seq,
                    self.folder / CURRENT_FILE,
                )
                self._write(CURRENT_FILE, self._read_stored(LAST_GOOD_FILE))
            log.info(
                "configuration document seq %d (content hash %s) over %s",
                doc.seq,
                doc.content_hash.hex()[:16],
                factory.path,
            )
            return config
        if (self.folder / CURRENT_FILE).exists() or (self.folder / LAST_GOOD_FILE).exists():
            log.warning("no stored configuration document can be used: running %s", factory.path)
        return factory

    def effective(self, factory: EdgeConfig) -> EdgeConfig:
        """The current document over a new ``factory`` (after ``edge.toml`` changed), or
        ``factory`` alone when there is none or it does not fit the new file (logged)."""
        loaded = self._load(CURRENT_FILE, factory)
        return factory if loaded is None else loaded[0]

    def _trial_marker(self) -> tuple[int, bytes] | None:
        raw = _read(self.folder / TRIAL_FILE)
        if raw is None:
            return None
        try:
            marker = json.loads(raw)
            return int(marker["seq"]), bytes.fromhex(marker["content_hash"])
        except (ValueError, TypeError, KeyError) as err:
            log.error("the trial marker is damaged (%s): treating the trial as interrupted", err)
            seq, content_hash = _peek(_read(self.folder / CURRENT_FILE) or b"")
            return seq, content_hash or bytes(32)

    def _settle_trial(self, marker: tuple[int, bytes], factory: EdgeConfig) -> None:
        seq, content_hash = marker
        if self.applied_seq is not None and self.applied_seq >= seq:
            # The commit was decided (keeper.json says so) and not finished.
            log.info("finishing the commit of configuration document seq %d", seq)
            self._write(LAST_GOOD_FILE, self._read_stored(CURRENT_FILE))
            self._unlink(TRIAL_FILE)
            return
        rolled = self._rolled_back
        if rolled is None or rolled.seq != seq:
            detail = (
                f"the gateway restarted while trying configuration document seq {seq};"
                " the last good configuration runs again"
            )
            log.warning("%s", detail)
            self._rolled_back = _RolledBack(seq, content_hash, "interrupted", detail)
            self._save_state()
            self._restore_last_good()
            running = self._load(CURRENT_FILE, factory)
            self.report(
                "rolled_back",
                seq,
                content_hash=content_hash,
                reason="interrupted",
                detail=detail,
                running_hash=factory.sha256 if running is None else running[1].content_hash,
            )
        else:
            self._restore_last_good()
        self._unlink(TRIAL_FILE)

    def _restore_last_good(self) -> None:
        last_good = _read(self.folder / LAST_GOOD_FILE)
        if last_good is None:
            self._unlink(CURRENT_FILE)
        else:
            self._write(CURRENT_FILE, last_good)

    # --- documents --------------------------------------------------------------------------

    def _answer_once(self, payload: bytes, status: ConfigStatus, note: str) -> Decision:
        digest = hashlib.sha256(payload).digest()
        if digest in self._answered:
            return Decision(IGNORE, note + " (answered before)")
        self._answered[digest] = None
        while len(self._answered) > MAX_ANSWERED:
            self._answered.popitem(last=False)
        return Decision(ANSWER, note, status=status)

    def consider(self, payload: bytes, factory: EdgeConfig, running: EdgeConfig) -> Decision:
        """What to do with ``payload`` received on the ``config`` topic, given the factory
        ``edge.toml`` and the configuration running now. Every refusal is counted (by
        reason) and its status report made, not yet sent."""
        now = int(self._clock())
        try:
            doc = verify_config(
                payload, self.trusted, gateway_id=self.gateway_id, groups=self.groups
            )
        except ConfigRejected as err:
            reason = err.reason.value
            self._count("rejected_" + reason)
            seq, content_hash = _peek(payload)
            status = self._status(
                "rejected", seq, now, content_hash, reason, err.message, running.running_hash
            )
            return self._answer_once(payload, status, f"refused ({reason}): {err.message}")
        if self.applied_seq is not None and doc.seq <= self.applied_seq:
            if doc.seq == self.applied_seq and doc.content_hash == running.running_hash:
                # The retained document this gateway runs, delivered again on a reconnection.
                return Decision(IGNORE, f"configuration document seq {doc.seq} runs already")
            self._count("rejected_replayed")
            relation = "equal to" if doc.seq == self.applied_seq else "below"
            detail = (
                f"seq {doc.seq} is {relation} the last applied seq {self.applied_seq}"
                " (rollback or replay)"
            )
            status = self._status(
                "rejected",
                doc.seq,
                now,
                doc.content_hash,
                "replayed",
                detail,
                running.running_hash,
            )
            return self._answer_once(payload, status, f"refused (replayed): {detail}")
        rolled = self._rolled_back
        if rolled is not None and rolled.seq == doc.seq:
            note = (
                f"configuration document seq {doc.seq} was rolled back ({rolled.reason}) and is"
                " not tried again"
            )
            if doc.seq in self._repeated:
                return Decision(IGNORE, note)
            self._repeated.add(doc.seq)
            status = self._status(
                "rolled_back",
                doc.seq,
                now,
                rolled.content_hash,
                rolled.reason,
                rolled.detail,
                running.running_hash,
            )
            return Decision(ANSWER, note + "; its status is sent again", status=status)
        try:
            config = overlay(factory, doc, config_dir=self.folder)
            if config.mqtt.password_file != factory.mqtt.password_file:
                _check_password_file(config)
        except Unsupported as err:
            self._count("rejected_unsupported")
            status = self._status(
                "rejected",
                doc.seq,
                now,
                doc.content_hash,
                "unsupported",
                err.message,
                running.running_hash,
            )
            return self._answer_once(payload, status, f"refused (unsupported): {err.message}")
        return Decision(
            APPLY,
            f"configuration document seq {doc.seq} verified",
            doc=doc,
            payload=bytes(payload),
            config=config,
        )

    def begin_trial(self, decision: Decision) -> None:
        """Store the document of an :data:`APPLY` decision as current, on trial."""
        doc = decision.doc
        assert doc is not None
        marker = {"seq": doc.seq, "content_hash": doc.content_hash.hex()}
        # The marker first: a current.cose without it would be taken as committed.
        self._write(TRIAL_FILE, (json.dumps(marker) + "\n").encode())
        self._write(CURRENT_FILE, decision.payload)

    def commit(self, decision: Decision) -> None:
        """The document on trial passed its self-check: it is the last good one now, its seq
        the applied seq, and the keys it leaves trusted are the trusted keys."""
        doc = decision.doc
        assert doc is not None
        self.applied_seq = doc.seq
        self._trusted = next_trusted(doc, self.trusted)
        self._save_state()
        self._write(LAST_GOOD_FILE, decision.payload)
        self._unlink(TRIAL_FILE)

    def roll_back(self, decision: Decision, reason: str, detail: str) -> None:
        """The document on trial failed (``reason``, ``detail``): current is the last good
        one again and the document is remembered as rolled back."""
        doc = decision.doc
        assert doc is not None
        self._rolled_back = _RolledBack(doc.seq, doc.content_hash, reason, short_detail(detail))
        self._repeated.add(doc.seq)
        self._save_state()
        self._restore_last_good()
        self._unlink(TRIAL_FILE)

    # --- reports ----------------------------------------------------------------------------

    def _status(
        self,
        state: str,
        seq: int,
        at: int,
        content_hash: bytes | None,
        reason: str | None,
        detail: str,
        running_hash: bytes,
    ) -> ConfigStatus:
        return ConfigStatus(
            state=state,
            seq=seq,
            at=at,
            content_hash=content_hash,
            reason=reason,
            detail=short_detail(detail),
            running_hash=running_hash,
        )

    def report(
        self,
        state: str,
        seq: int,
        *,
        content_hash: bytes | None,
        reason: str | None = None,
        detail: str,
        running_hash: bytes,
    ) -> ConfigStatus:
        """Make, sign and spool a status report (see :meth:`send`)."""
        status = self._status(
            state, seq, int(self._clock()), content_hash, reason, detail, running_hash
        )
        self.send(status)
        return status

    def send(self, status: ConfigStatus) -> None:
        """Sign ``status`` with the identity key and write it to ``reports/`` for the
        outbox; remembered as the last status (``keeper.json``)."""
        payload = signed.sign(encode_config_status(status), self._signing_key)
        folder = self.folder / REPORTS_DIR
        waiting = self._spooled()
        number = int(waiting[-1].stem) + 1 if waiting else 1
        self._write(f"{REPORTS_DIR}/{number:012d}.cose", payload)
        for old in waiting[: max(0, len(waiting) + 1 - MAX_SPOOLED_REPORTS)]:
            self._count("reports_dropped")
            log.error("more than %d status reports waiting: dropped %s", MAX_SPOOLED_REPORTS, old)
            self._unlink(f"{REPORTS_DIR}/{old.name}")
        self._count(status.state)
        self.last_status = {
            "state": status.state,
            "seq": status.seq,
            "at": status.at,
            "reason": status.reason,
            "detail": status.detail,
        }
        self._save_state()
        log.info(
            "configuration status %s seq %d%s spooled in %s",
            status.state,
            status.seq,
            "" if status.reason is None else f" ({status.reason})",
            folder,
        )

    def _spooled(self) -> list[Path]:
        folder = self.folder / REPORTS_DIR
        return sorted(
            path for path in folder.glob("*.cose") if path.stem.isascii() and path.stem.isdigit()
        )

    def pending_reports(self) -> list[tuple[Path, bytes]]:
        """The signed reports waiting for the outbox, oldest first."""
        found = []
        for path in self._spooled():
            data = _read(path)
            if data is not None:
                found.append((path, data))
        return found

    def report_sent(self, path: Path) -> None:
        """The report in ``path`` is in the outbox: forget it."""
        try:
            _remove(path)
        except OSError as err:
            raise KeeperError(f"cannot remove {path}: {err.strerror or err}") from err

    def update(
        self, *, groups: Iterable[str], trusted: Ed25519PublicKey, signing_key: Ed25519PrivateKey
    ) -> None:
        """Take the groups and keys of a reloaded ``edge.toml``."""
        self.groups = tuple(groups)
        self._initial_trusted = trusted
        self._signing_key = signing_key

    def summary(self) -> dict[str, Any]:
        """What ``status.json`` shows under ``config`` beside what runs: the applied seq, the
        last status reported and the keeper's counters."""
        return {
            "applied_seq": self.applied_seq,
            "last_status": self.last_status,
            "counters": dict(self.counters),
        }


def _check_password_file(config: EdgeConfig) -> None:
    # The file must be there (and private) before the agent restarts for it, or the
    # document could only fail its self-check.
    try:
        load_mqtt_password(config)
    except ConfigError as err:
        raise Unsupported(f"mqtt credentials: {err.problem}") from err
