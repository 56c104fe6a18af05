"""Provision LoRaWAN sensor modules over a serial cable: one, a list, or one after another.

For each module (:func:`provision_port`):

1. **detect** the module on the port and read its firmware and factory DevEUI
   (:mod:`owlgate.provisioning.modules`);
2. refuse it when ``--expect`` lists the DevEUIs expected and this one is not among them;
3. skip it when the journal says an earlier run provisioned it;
4. **register** it: online, ``POST /api/v1/provision/nodes`` (the fleet generates the AppKey
   and returns it to the technician; a re-run for a module this technician registered and
   that has not joined yet returns the same key, so an interrupted module is finished with
   it); offline, the next key reserved in the laptop's bundle
   (:mod:`owlgate.provisioning.offline`);
5. **write** DevEUI, JoinEUI, AppKey, region and OTAA, **read them back**, **save**;
6. append the outcome to the journal and, with the **join test** (``join_test`` in
   :class:`NodeSettings`), have the module join through a nearby gateway
   (:meth:`~owlgate.provisioning.modules.ModuleDriver.join`) and confirm with the fleet that
   it saw the join (``GET /api/v1/nodes/{dev_eui}``: ``joined_at`` set at or after the
   test began); the result's ``join`` says ``joined`` with the seconds it took, or what failed
   and what to do;
7. return one :class:`NodeResult`.

The journal (JSON lines, one per step, flushed and synced as written) holds DevEUIs, ports
and steps, never a key; a re-run skips modules it marks provisioned and completes a half-done
one. The report is a CSV of every module with its result.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

import httpx

from ..codecs.errors import OwlgateError
from .modules import (
    DEFAULT_REPLY_TIMEOUT_S,
    RAK3172_BAUD,
    ModuleDriver,
    ModuleError,
    ModuleInfo,
    NodeKeys,
    SerialLink,
    detect,
    program,
)

log = logging.getLogger(__name__)

DEFAULT_JOURNAL: Final = "owlgate-provision-journal.jsonl"
HTTP_TIMEOUT_S: Final = 15.0
REPORT_FIELDS: Final = (
    "dev_eui",
    "port",
    "module",
    "firmware",
    "result",
    "detail",
    "time",
    "join_eui",
    "profile_id",
    "site",
    "join",
)
#: How long the join test waits for the module's join event by default: one attempt, its
#: receive windows, and the fleet's round trip, with room to spare.
DEFAULT_JOIN_TIMEOUT_S: Final = 20.0
#: What a module reports when no join accept came back: the RAK3172's event, the RN2483's
#: second reply to ``mac join otaa``.
NO_ACCEPT_EVENTS: Final = frozenset({"JOIN_FAILED_RX_TIMEOUT", "denied"})
#: How long the fleet has to show the join after the module reported it.
FLEET_JOIN_WAIT_S: Final = 5.0
#: Clock difference tolerated between this laptop and the fleet when comparing joined_at.
CLOCK_SLACK_S: Final = 5.0

#: Results a module ends with.
PROVISIONED: Final = "provisioned"
SKIPPED: Final = "skipped"
REFUSED: Final = "refused"
FAILED: Final = "failed"


class NodeProvisionError(OwlgateError):
    """A module that was not provisioned: ``what`` happened, ``todo`` is the advice."""

    def __init__(self, what: str, todo: str) -> None:
        super().__init__(what)
        self.what = what
        self.todo = todo


class FleetError(NodeProvisionError):
    """The fleet refused or could not be reached (``status`` 0 when unreachable)."""

    def __init__(self, what: str, todo: str, status: int = 0) -> None:
        super().__init__(what, todo)
        self.status = status


_TODO: Final = {
    401: "check the token file (copy the token again, or ask the fleet's admin for a new one)",
    403: "your token's role may not provision devices: ask for a technician token",
    404: "check --fleet: that address has no provisioning API",
    409: "this module is already registered: check its label, or ask an operator to remove it",
    422: "check --profile and --join-eui",
    429: "wait a few minutes, then run again",
    503: "the fleet is not ready to hand out keys: tell the fleet's operator",
}


@dataclass(frozen=True, slots=True)
class Registration:
    """What the fleet (or the bundle) gave for one module. The AppKey is not in ``repr``."""

    dev_eui: bytes
    join_eui: bytes
    app_key: bytes = field(repr=False)
    profile_id: str
    created: bool
    note: str = ""


class KeySource(Protocol):
    """Where a module's keys come from: the fleet online, a bundle offline."""

    def register(self, dev_eui: bytes, info: ModuleInfo, port: str) -> Registration:
        """The keys for ``dev_eui`` (the same ones again for a module half done)."""
        ...

    def confirm(self, registration: Registration, port: str) -> None:
        """The module holds the keys now (offline: queue the registration)."""
        ...


def read_token_file(path: Path) -> str:
    """The bearer token in ``path`` (one line); never shown."""
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise NodeProvisionError(
            f"cannot read the token file {path}: {err.strerror}",
            "give --token-file the file holding your fleet API token",
        ) from err
    if not token or any(char.isspace() for char in token):
        raise NodeProvisionError(
            f"{path} does not hold a token (one line, no spaces)",
            "write your fleet API token alone into that file",
        )
    return token


def fleet_error(response: httpx.Response) -> FleetError:
    """A fleet error reply as a :class:`FleetError` with its ``detail`` sentence."""
    try:
        body = response.json()
        detail = str(body.get("detail", "")) if isinstance(body, dict) else ""
    except ValueError:
        detail = ""
    what = f"the fleet answered {response.status_code}" + (f": {detail}" if detail else "")
    return FleetError(
        what,
        _TODO.get(response.status_code, "try again; if it persists, tell the fleet's operator"),
        response.status_code,
    )


class FleetKeys:
    """Online registration with the fleet (contract: ``POST /api/v1/provision/nodes``)."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        profile_id: str,
        join_eui: bytes | None = None,
        site: str | None = None,
        name: str = "",
    ) -> None:
        self.client = client
        self.profile_id = profile_id
        self.join_eui = join_eui
        self.site = site
        self.name = name

    def register(self, dev_eui: bytes, info: ModuleInfo, port: str) -> Registration:
        body = {
            "dev_eui": dev_eui.hex(),
            "profile_id": self.profile_id,
            "join_eui": None if self.join_eui is None else self.join_eui.hex(),
            "name": self.name,
            "site": self.site,
        }
        try:
            response = self.client.post("/api/v1/provision/nodes", json=body)
        except httpx.HTTPError as err:
            raise FleetError(
                f"the fleet cannot be reached: {err}",
                "check the network and --fleet, or work offline with a bundle",
            ) from err
        if response.status_code not in (200, 201):
            raise fleet_error(response)
        try:
            data = response.json()
            registration = Registration(
                dev_eui=bytes.fromhex(data["dev_eui"]),
                join_eui=bytes.fromhex(data["join_eui"]),
                app_key=bytes.fromhex(data["app_key"]),
                profile_id=str(data.get("profile_id", self.profile_id)),
                created=bool(data.get("created", True)),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise FleetError(
                "the fleet's answer is not a device registration",
                "check --fleet points at an owlgate fleet",
            ) from err
        if (
            registration.dev_eui != dev_eui
            or len(registration.join_eui) != 8
            or len(registration.app_key) != 16
        ):
            raise FleetError(
                "the fleet's answer does not match the module (DevEUI or key sizes)",
                "tell the fleet's operator; nothing was written to the module",
            )
        return registration

    def confirm(self, registration: Registration, port: str) -> None:
        # Online, the fleet registered the device before the module was written.
        return

    def joined_at(self, dev_eui: bytes) -> float | None:
        """When the fleet last saw ``dev_eui`` join (seconds since the epoch), None if never."""
        path = f"/api/v1/nodes/{dev_eui.hex()}"
        try:
            response = self.client.get(path)
        except httpx.HTTPError as err:
            raise FleetError(
                f"the fleet cannot be reached to confirm the join: {err}",
                "check the network, then run again with --join-test",
            ) from err
        if response.status_code != 200:
            raise fleet_error(response)
        try:
            value = response.json().get("joined_at")
            return None if value is None else datetime.fromisoformat(value).timestamp()
        except (ValueError, TypeError, AttributeError) as err:
            raise FleetError(
                "the fleet's answer is not a device", "check --fleet points at an owlgate fleet"
            ) from err


class JoinConfirmer(Protocol):
    """Who tells whether a device joined: the fleet (:class:`FleetKeys`)."""

    def joined_at(self, dev_eui: bytes) -> float | None:
        """When ``dev_eui`` last joined (seconds since the epoch), None if never."""
        ...


@dataclass(frozen=True, slots=True)
class NodeResult:
    """One module's outcome: one line of the report."""

    dev_eui: str
    port: str
    module: str
    firmware: str
    result: str
    detail: str
    time: str
    join_eui: str = ""
    profile_id: str = ""
    site: str = ""
    app_key: str = field(default="", repr=False)
    todo: str = ""
    #: The join test: "" (not asked), ``joined in 2.1 s`` or ``join failed: <why>; <todo>``.
    join: str = ""

    @property
    def ok(self) -> bool:
        return self.result in (PROVISIONED, SKIPPED)

    @property
    def join_ok(self) -> bool:
        """True unless a join test was asked for and did not end joined."""
        return not self.join or self.join.startswith("joined")

    def line(self, *, show_key: bool = False) -> str:
        """The one line printed for this module."""
        who = f"{self.module} {self.dev_eui}" if self.dev_eui else "no module"
        text = f"{self.port}: {who}: {self.result}: {self.detail}"
        if show_key and self.app_key:
            text += f" (AppKey {self.app_key})"
        if self.todo and not self.ok:
            text += f"; {self.todo}"
        if self.join:
            text += f"; {self.join}"
        return text

    def to_json(self, *, show_key: bool = False) -> dict[str, str]:
        out = {name: str(getattr(self, name)) for name in REPORT_FIELDS}
        if self.todo:
            out["todo"] = self.todo
        if show_key and self.app_key:
            out["app_key"] = self.app_key
        return out


class Journal:
    """The steps of every module, appended as JSON lines to ``path`` (see the module text)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: dict[str, dict[str, str]] = {}
        if path.exists():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self.state.setdefault(entry["dev_eui"], {}).update(entry)
                except (ValueError, KeyError, TypeError):
                    # A line cut by a crash mid-write: the step before it still counts.
                    log.warning("%s line %d is not a journal entry; ignored", path, number)

    def step(self, dev_eui: str, step: str, **fields: str) -> None:
        entry = {"dev_eui": dev_eui, "step": step, "at": _now(), **fields}
        self.state.setdefault(dev_eui, {}).update(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(json.dumps(entry) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def last_step(self, dev_eui: str) -> str | None:
        return self.state.get(dev_eui, {}).get("step")


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """How modules are provisioned in one run."""

    profile_id: str
    site: str | None = None
    baud: int = RAK3172_BAUD
    expect: frozenset[str] | None = None
    reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S
    busy_backoff_s: float = 0.1
    join_test: bool = False
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_expected(path: Path) -> frozenset[str]:
    """The DevEUIs in a CSV (a ``dev_eui`` column, or the first column), lower-case hex."""
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except OSError as err:
        raise NodeProvisionError(
            f"cannot read {path}: {err.strerror}", "give --expect a CSV of DevEUIs"
        ) from err
    if not rows:
        raise NodeProvisionError(f"{path} is empty", "give --expect a CSV of DevEUIs")
    header = [cell.strip().lower() for cell in rows[0]]
    column = header.index("dev_eui") if "dev_eui" in header else 0
    body = rows[1:] if "dev_eui" in header else rows
    found: set[str] = set()
    for number, row in enumerate(body, 2 if "dev_eui" in header else 1):
        if len(row) <= column or not row[column].strip():
            continue
        value = row[column].strip().replace("-", "").replace(":", "").lower()
        if len(value) != 16 or not all(char in "0123456789abcdef" for char in value):
            raise NodeProvisionError(
                f"{path} line {number}: {row[column]!r} is not a DevEUI (16 hex digits)",
                "fix that line of the CSV",
            )
        found.add(value)
    return frozenset(found)


def join_test(
    driver: ModuleDriver,
    dev_eui: bytes,
    fleet: JoinConfirmer | None,
    timeout_s: float,
) -> str:
    """Have the module join and the fleet confirm it (see the module text): the ``join``
    value of the result, never raising for a module or fleet that fails."""
    if not driver.supports_join:
        return (
            f"join failed: the join test is not supported for the {driver.kind};"
            " provision it without --join-test and check its join in the field"
        )
    if fleet is None:
        return (
            "join failed: the join test needs the fleet to confirm it;"
            " run it online (without --offline)"
        )
    began = time.time()
    try:
        outcome = driver.join(timeout_s)
    except ModuleError as err:
        return f"join failed: {err.message}; {err.what_to_do}"
    if not outcome.joined:
        if outcome.event == "keys_not_init":
            return (
                "join failed: the module says it has no keys to join with (keys_not_init);"
                " provision it again, then run again with --join-test"
            )
        if outcome.event in NO_ACCEPT_EVENTS:
            why = "no join accept came back (no gateway heard the module, or none answered)"
        elif outcome.event is None:
            why = f"the module reported no join result within {timeout_s:g} s"
        else:
            why = f"the module reported {outcome.event}"
        return (
            f"join failed: {why}; check a gateway is online nearby and the module's antenna is"
            " fitted, then run again with --join-test"
        )
    deadline = time.monotonic() + FLEET_JOIN_WAIT_S
    while True:
        try:
            joined_at = fleet.joined_at(dev_eui)
        except NodeProvisionError as err:
            return f"join failed: {err.what}; {err.todo}"
        if joined_at is not None and joined_at >= began - CLOCK_SLACK_S:
            return f"joined in {outcome.seconds:.1f} s"
        if time.monotonic() >= deadline:
            return (
                "join failed: the module says it joined but the fleet shows no join for it;"
                " tell the fleet's operator"
            )
        time.sleep(0.2)


def provision_port(
    port: str,
    settings: NodeSettings,
    keys: KeySource,
    journal: Journal,
    *,
    fleet: JoinConfirmer | None = None,
) -> NodeResult:
    """Provision the module on ``port`` (see the module text); never raises for a module
    that fails: the result says what happened and what to do. ``fleet`` confirms a join
    test (``settings.join_test``)."""
    started = time.monotonic()
    info: ModuleInfo | None = None
    dev_eui = ""

    def result(outcome: str, detail: str, todo: str = "", **extra: str) -> NodeResult:
        spent = time.monotonic() - started
        log.info("%s: %s %s (%.2f s)", port, outcome, detail, spent)
        return NodeResult(
            dev_eui=dev_eui,
            port=port,
            module=info.kind if info else "",
            firmware=info.firmware if info else "",
            result=outcome,
            detail=detail,
            time=_now(),
            profile_id=settings.profile_id,
            site=settings.site or "",
            todo=todo,
            **extra,
        )

    link = SerialLink(port, settings.baud, reply_timeout_s=settings.reply_timeout_s)
    try:
        link.open()
    except ModuleError as err:
        return result(FAILED, err.message, "check --port: is the module plugged in?")
    try:
        try:
            driver = detect(link, busy_backoff_s=settings.busy_backoff_s)
            info = driver.identify()
        except ModuleError as err:
            return result(FAILED, err.message, err.what_to_do)
        dev_eui = info.dev_eui.hex()
        if settings.expect is not None and dev_eui not in settings.expect:
            return result(
                REFUSED,
                "this DevEUI is not in the list of expected devices",
                "set this module aside and check its label against the list",
            )
        previous = journal.last_step(dev_eui)
        if previous == PROVISIONED:
            state = journal.state[dev_eui]
            # A module provisioned earlier can still have its join tested.
            joined = (
                join_test(driver, info.dev_eui, fleet, settings.join_timeout_s)
                if settings.join_test
                else ""
            )
            return result(
                SKIPPED,
                f"already provisioned (journal, {state.get('at', '')})",
                join_eui=state.get("join_eui", ""),
                join=joined,
            )
        journal.step(dev_eui, "detected", port=port, module=info.kind, firmware=info.firmware)
        try:
            registration = keys.register(info.dev_eui, info, port)
        except NodeProvisionError as err:
            journal.step(dev_eui, "failed", detail=err.what)
            return result(FAILED, err.what, err.todo)
        join_hex = registration.join_eui.hex()
        journal.step(dev_eui, "registered", join_eui=join_hex, created=str(registration.created))
        node_keys = NodeKeys(info.dev_eui, registration.join_eui, registration.app_key)
        try:
            done = program(driver, node_keys)
        except ModuleError as err:
            journal.step(dev_eui, "failed", detail=err.message)
            return result(FAILED, err.message, err.what_to_do, join_eui=join_hex)
        keys.confirm(registration, port)
        detail = "written, read back and saved"
        if not done.app_key_verified:
            detail += (
                f" (the {info.kind} cannot read its AppKey back:"
                " DevEUI, JoinEUI and region verified)"
            )
        if previous is not None:
            detail += f"; resumed after '{previous}'"
        if not registration.created:
            detail += "; the fleet already had it (same key)"
        if registration.note:
            detail += f"; {registration.note}"
        if done.attempts > 1:
            detail += f"; took {done.attempts} attempts"
        journal.step(dev_eui, PROVISIONED, join_eui=join_hex)
        joined = (
            join_test(driver, info.dev_eui, fleet, settings.join_timeout_s)
            if settings.join_test
            else ""
        )
        return result(
            PROVISIONED,
            detail,
            join_eui=join_hex,
            app_key=registration.app_key.hex().upper(),
            join=joined,
        )
    finally:
        link.close()


def write_report(path: Path, results: Iterable[NodeResult]) -> None:
    """The CSV report: one row per module (:data:`REPORT_FIELDS`), never a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        for item in results:
            writer.writerow({name: getattr(item, name) for name in REPORT_FIELDS})


def read_report(path: Path) -> list[dict[str, str]]:
    """The rows of a report :func:`write_report` wrote."""
    try:
        with path.open(newline="") as source:
            rows = list(csv.DictReader(source))
    except OSError as err:
        raise NodeProvisionError(
            f"cannot read the report {path}: {err.strerror}",
            "give --report the CSV that owlgate provision node --report wrote",
        ) from err
    if rows and not {"dev_eui", "result"} <= set(rows[0]):
        raise NodeProvisionError(
            f"{path} is not a provisioning report (no dev_eui and result columns)",
            "give --report the CSV that owlgate provision node --report wrote",
        )
    return rows


def provision_all(
    ports: Iterable[str],
    settings: NodeSettings,
    keys: KeySource,
    journal: Journal,
    *,
    on_result: Callable[[NodeResult], None] | None = None,
    fleet: JoinConfirmer | None = None,
) -> list[NodeResult]:
    """:func:`provision_port` for each port in turn (an iterable: ports may come from
    prompts)."""
    results = []
    for port in ports:
        item = provision_port(port, settings, keys, journal, fleet=fleet)
        results.append(item)
        if on_result is not None:
            on_result(item)
    return results
