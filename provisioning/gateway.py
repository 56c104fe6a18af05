"""Provision a gateway: from a claim token to a gateway the fleet has heard.

:func:`provision` runs six steps and reports each one to a :class:`Reporter` (the CLI shows
them with a progress display, ``docs/provisioning.md`` is the technician's guide):

1. **keys**: the gateway's identity key (Ed25519) and sealing key (X25519) are made here, in
   ``DIR``, PKCS#8 PEM, mode 0600 (``DIR`` 0700), or the ones already there are reused. The
   private keys never leave the machine: the fleet gets the public halves and a proof of
   possession (an Ed25519 signature over ``b"owlgate/v1 claim " + claim + b" " + id``).
2. **claim**: ``POST /api/v1/provision/gateway`` with the claim token; the fleet registers
   the gateway, puts it in the claim's group and answers with the MQTT credentials, its pinned
   signing key, the configuration key and the initial signed configuration document. The
   same claim presented again with the same id and keys gets the same answer with a new MQTT
   password, so running the command again after any failure is safe.
3. **files**: the pinned fleet key, the password file, the configuration key, the initial
   configuration document (verified here against the pinned key before it is kept) and the
   agent's ``edge.toml``, each written atomically with mode 0600, plus ``provisioned.json``
   (what was claimed, no secret).
4. **broker**: an MQTT 3.1.1 connection to the fleet's broker with the gateway's id and new
   password, as the agent logs in.
5. **heartbeat**: one signed health message (:mod:`owlgate.codecs.health`) at QoS 1, done
   when the broker's PUBACK arrives.
6. **fleet saw it**: ``POST /api/v1/provision/gateway/{id}/check`` until the fleet reports a
   health message received after the one it had before (``last_health_at`` moved), within
   :data:`HEARTBEAT_WAIT_S`. Only the fleet's own times are compared, never this machine's
   clock against the fleet's.

The initial configuration document is kept as ``DIR/initial-config.cose`` for the record; the
agent does not read it. The fleet publishes the same document retained on the gateway's
``config`` topic, so the agent receives it on its first connection and runs it through its
usual trial (verify, apply, self-check, commit or roll back; ``docs/edge-config-ota.md``).
Putting it straight into the agent's state folder would skip that self-check and tie this
tool to the agent's internal file layout.

Every failure is a :class:`ProvisionError` naming the step, what happened and what to do;
nothing secret (claim token, password, private keys) is ever part of a message or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlsplit

import aiomqtt
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..codecs.configdoc import ConfigRejected, verify_config
from ..codecs.errors import OwlgateError
from ..codecs.health import DEFAULT_INTERVAL_S, Health, encode_health
from ..codecs.signed import sign

__all__ = [
    "CONFIG_DOCUMENT_FILE",
    "CONFIG_KEY_FILE",
    "EDGE_CONFIG_FILE",
    "FLEET_KEY_FILE",
    "IDENTITY_KEY_FILE",
    "PASSWORD_FILE",
    "RECORD_FILE",
    "SEALING_KEY_FILE",
    "STEPS",
    "ClaimAnswer",
    "ProvisionError",
    "ProvisionRequest",
    "ProvisionResult",
    "Reporter",
    "StepResult",
    "claim_proof",
    "check_proof",
    "gateway_id_from_mac",
    "machine_gateway_id",
    "normalise_gateway_id",
    "provision",
    "read_claim_file",
]

log = logging.getLogger(__name__)

#: The files of ``DIR`` (the key file names are those ``owlgate fleet seed`` writes).
IDENTITY_KEY_FILE: Final = "identity-ed25519.pem"
SEALING_KEY_FILE: Final = "sealing-x25519.pem"
FLEET_KEY_FILE: Final = "fleet-ed25519.pub.pem"
CONFIG_KEY_FILE: Final = "config-ed25519.pub.pem"
PASSWORD_FILE: Final = "mqtt-password"
CONFIG_DOCUMENT_FILE: Final = "initial-config.cose"
EDGE_CONFIG_FILE: Final = "edge.toml"
RECORD_FILE: Final = "provisioned.json"
STATE_DIR: Final = "state"
#: The concentrator's usual serial port on a gateway (docs/edge.md).
DEFAULT_RADIO_PORT: Final = "/dev/ttyACM0"

#: The steps, in order, as :class:`Reporter` and the final line name them.
STEPS: Final = ("keys", "claim", "files", "broker", "heartbeat", "fleet saw it")

#: How long the fleet gets to report the heartbeat: the ingest stores a health message well
#: within a second; a cellular backhaul may add a few.
HEARTBEAT_WAIT_S: Final = 15.0
HEARTBEAT_POLL_S: Final = 0.1
HTTP_TIMEOUT_S: Final = 15.0
MQTT_TIMEOUT_S: Final = 10.0

#: The bytes the proofs sign (contract: provisioning API, items 2 and 3).
CLAIM_CONTEXT: Final = b"owlgate/v1 claim "
CHECK_CONTEXT: Final = b"owlgate/v1 check "
_GATEWAY_ID: Final = re.compile(r"[0-9a-f]{16}")
_CLAIM: Final = re.compile(r"[\x21-\x7e]{8,256}")
_NULL_MACS: Final = frozenset({"00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"})
#: ``/sys/class/net/*/type`` of an Ethernet-like interface (ARPHRD_ETHER, Wi-Fi included).
_ARPHRD_ETHER: Final = "1"
SYS_CLASS_NET: Final = Path("/sys/class/net")
PROC_UPTIME: Final = Path("/proc/uptime")

_T = TypeVar("_T")


class ProvisionError(OwlgateError):
    """A step failed: ``step`` (one of :data:`STEPS`, or ``input``), ``what`` happened and
    ``todo``, what the technician should do. ``bad_input`` marks a problem with what was
    typed (exit code 2) rather than with the world (exit code 1)."""

    def __init__(self, step: str, what: str, todo: str, *, bad_input: bool = False) -> None:
        super().__init__(f"failed at {step}: {what}; {todo}")
        self.step = step
        self.what = what
        self.todo = todo
        self.bad_input = bad_input

    @property
    def line(self) -> str:
        return f"failed at {self.step}: {self.what}; {self.todo}"


# --- the gateway's id -------------------------------------------------------------------------


def normalise_gateway_id(text: str) -> str:
    """``text`` as 16 lowercase hex digits (separators ``:`` and ``-`` allowed), or
    :class:`ProvisionError` (bad input)."""
    cleaned = text.strip().lower().replace(":", "").replace("-", "")
    if not _GATEWAY_ID.fullmatch(cleaned):
        raise ProvisionError(
            "input",
            f"--gateway-id {text!r} is not an EUI-64",
            "give 16 hex digits, e.g. --gateway-id b827ebfffe6c1a2b",
            bad_input=True,
        )
    return cleaned


def gateway_id_from_mac(mac: str) -> str:
    """The EUI-64 a packet forwarder derives from a 48-bit MAC address: ``FFFE`` inserted
    between its two halves (``b8:27:eb:6c:1a:2b`` -> ``b827ebfffe6c1a2b``)."""
    digits = mac.strip().lower().replace(":", "").replace("-", "")
    if not re.fullmatch(r"[0-9a-f]{12}", digits):
        raise ValueError(f"not a MAC address: {mac!r}")
    return digits[:6] + "fffe" + digits[6:]


def machine_gateway_id(sys_class_net: Path = SYS_CLASS_NET) -> str | None:
    """The gateway id from the first (by name) non-loopback Ethernet or Wi-Fi interface with a
    real MAC address, or None when the machine has none (a container, another OS)."""
    try:
        names = sorted(entry.name for entry in sys_class_net.iterdir())
    except OSError as err:
        log.debug("cannot list %s: %s", sys_class_net, err)
        return None
    for name in names:
        folder = sys_class_net / name
        try:
            kind = (folder / "type").read_text().strip()
            mac = (folder / "address").read_text().strip().lower()
        except OSError as err:
            log.debug("cannot read the MAC address of %s: %s", name, err)
            continue
        if name == "lo" or kind != _ARPHRD_ETHER or mac in _NULL_MACS:
            continue
        try:
            return gateway_id_from_mac(mac)
        except ValueError:
            log.debug("interface %s has no 48-bit MAC address (%r)", name, mac)
    return None


# --- the claim token and the proofs -------------------------------------------------------------


def check_claim(claim: str, where: str) -> str:
    """The claim token, stripped; :class:`ProvisionError` (bad input) when it cannot be one."""
    token = claim.strip()
    if not _CLAIM.fullmatch(token):
        raise ProvisionError(
            "input",
            f"{where} does not hold a claim token (8..256 printable characters, no spaces)",
            "copy the token `owlgate fleet claim create` printed, e.g. owl-claim-...",
            bad_input=True,
        )
    return token


def read_claim_file(path: Path) -> str:
    """The claim token in ``path`` (one line); :class:`ProvisionError` (bad input) when it
    cannot be read or holds something else. The token is never shown."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ProvisionError(
            "input",
            f"--claim-file {path}: {reason or err}",
            "give the file `owlgate fleet claim create --out FILE` wrote",
            bad_input=True,
        ) from err
    return check_claim(text, f"--claim-file {path}")


def claim_proof(identity: Ed25519PrivateKey, claim: str, gateway_id: str) -> bytes:
    """The proof of possession sent with a claim (contract item 2)."""
    return identity.sign(CLAIM_CONTEXT + claim.encode() + b" " + bytes.fromhex(gateway_id))


def check_proof(identity: Ed25519PrivateKey, claim: str, gateway_id: str) -> bytes:
    """The proof sent with a heartbeat check (contract item 3)."""
    return identity.sign(CHECK_CONTEXT + claim.encode() + b" " + bytes.fromhex(gateway_id))


def _raw(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- files --------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from the start: a temporary file,
    fsync, rename over ``path``, fsync of the folder (a power cut leaves the old file or the
    new one, never half of either)."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
    _fsync_dir(path.parent)


def _private_folder(folder: Path, step: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)
    except OSError as err:
        raise ProvisionError(
            step,
            f"cannot create {folder}: {err.strerror or err}",
            "choose a --dir this user may write (on the gateway's SD card: mount it first)",
        ) from err


def _pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_private(path: Path) -> object:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), None)
    except (OSError, ValueError, TypeError) as err:
        # Only the kind of failure: a parser's message could quote the file's bytes.
        raise ProvisionError(
            "keys",
            f"{path} is not a readable unencrypted PKCS#8 PEM private key ({type(err).__name__})",
            "restore the file from the gateway's backup, or provision into a new --dir",
        ) from err


def _wrong_kind(path: Path, key: object, wanted: str) -> ProvisionError:
    return ProvisionError(
        "keys",
        f"{path} holds a {type(key).__name__}, not an {wanted} private key",
        "restore the file from the gateway's backup, or provision into a new --dir",
    )


def load_or_make_keys(folder: Path) -> tuple[Ed25519PrivateKey, X25519PrivateKey, bool]:
    """The identity and sealing keys in ``folder``, made there when neither exists; True
    when they were made now. One without the other is refused: a new half would not match
    what the fleet registered."""
    _private_folder(folder, "keys")
    identity_path, sealing_path = folder / IDENTITY_KEY_FILE, folder / SEALING_KEY_FILE
    present = [path.exists() for path in (identity_path, sealing_path)]
    if all(present):
        identity, sealing = _load_private(identity_path), _load_private(sealing_path)
        if not isinstance(identity, Ed25519PrivateKey):
            raise _wrong_kind(identity_path, identity, "Ed25519")
        if not isinstance(sealing, X25519PrivateKey):
            raise _wrong_kind(sealing_path, sealing, "X25519")
        return identity, sealing, False
    if any(present):
        missing = sealing_path if present[0] else identity_path
        raise ProvisionError(
            "keys",
            f"{missing} is missing while its partner key is there",
            "restore it from the gateway's backup, or provision into a new --dir",
        )
    identity, sealing = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    try:
        write_private(identity_path, _pem(identity))
        write_private(sealing_path, _pem(sealing))
    except OSError as err:
        raise ProvisionError(
            "keys",
            f"cannot write the keys into {folder}: {err.strerror or err}",
            "choose a --dir this user may write",
        ) from err
    return identity, sealing, True


def _record(folder: Path) -> dict[str, Any]:
    path = folder / RECORD_FILE
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("%s cannot be read (%s): starting a new record", path, err)
        return {}
    return found if isinstance(found, dict) else {}


# --- the fleet's answer -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimAnswer:
    """The fleet's answer to a claim (contract item 2). ``repr`` hides the password."""

    gateway_id: str
    group: str | None
    site: str | None
    mqtt_url: str
    mqtt_host: str
    mqtt_port: int
    mqtt_username: str
    mqtt_password: str = field(repr=False)
    fleet_key: Ed25519PublicKey
    fleet_key_pem: bytes
    config_key_pem: bytes | None
    config_key: Ed25519PublicKey | None
    config_document: bytes | None
    claimed_at: str

    @classmethod
    def from_json(cls, body: object, gateway_id: str) -> ClaimAnswer:
        """Check the answer's shape; :class:`ProvisionError` at ``claim`` when the fleet sent
        something else (a fleet of another version)."""

        def bad(problem: str) -> ProvisionError:
            return ProvisionError(
                "claim",
                f"the fleet's answer is not what this tool understands ({problem})",
                "check that the fleet and this tool are the same owlgate version",
            )

        if not isinstance(body, dict):
            raise bad("not a JSON object")
        mqtt = body.get("mqtt")
        if not isinstance(mqtt, dict):
            raise bad("no mqtt object")
        url, password = mqtt.get("url"), mqtt.get("password")
        if not isinstance(url, str) or not isinstance(password, str) or not password:
            raise bad("mqtt.url and mqtt.password must be strings")
        if "\n" in password or "\r" in password:
            raise bad("mqtt.password holds a line break")
        try:
            parts = urlsplit(url)
            port = parts.port or 1883
        except ValueError as err:
            raise bad(f"mqtt.url {url!r}: {err}") from err
        if parts.scheme != "mqtt" or not parts.hostname:
            raise bad(f"mqtt.url {url!r} is not mqtt://host:port")
        if body.get("gateway_id") != gateway_id:
            raise bad(f"it names gateway {body.get('gateway_id')!r}")
        username = mqtt.get("username", gateway_id)
        if username != gateway_id:
            raise bad(f"mqtt.username {username!r} is not the gateway id")
        fleet_pem = body.get("fleet_key_pem")
        fleet_key = _public_key(fleet_pem)
        if fleet_key is None or not isinstance(fleet_pem, str):
            raise bad("fleet_key_pem is not an Ed25519 public key in PEM")
        config_pem = body.get("config_key_pem")
        config_key = None
        if config_pem is not None:
            config_key = _public_key(config_pem)
            if config_key is None or not isinstance(config_pem, str):
                raise bad("config_key_pem is not an Ed25519 public key in PEM")
        document = body.get("config_document")
        config_document = None
        if document is not None:
            if not isinstance(document, str):
                raise bad("config_document is not base64 text")
            try:
                config_document = base64.b64decode(document, validate=True)
            except (binascii.Error, ValueError) as err:
                raise bad("config_document is not base64") from err
        group, site = body.get("group"), body.get("site")
        if group is not None and not isinstance(group, str):
            raise bad("group is not a string")
        if site is not None and not isinstance(site, str):
            raise bad("site is not a string")
        claimed_at = body.get("claimed_at")
        return cls(
            gateway_id=gateway_id,
            group=group or None,
            site=site or None,
            mqtt_url=url,
            mqtt_host=parts.hostname,
            mqtt_port=port,
            mqtt_username=gateway_id,
            mqtt_password=password,
            fleet_key=fleet_key,
            fleet_key_pem=fleet_pem.encode(),
            config_key_pem=None if config_pem is None else str(config_pem).encode(),
            config_key=config_key,
            config_document=config_document,
            claimed_at=claimed_at if isinstance(claimed_at, str) else "",
        )


def _public_key(pem: object) -> Ed25519PublicKey | None:
    if not isinstance(pem, str):
        return None
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, Ed25519PublicKey) else None


# --- the fleet over HTTP ------------------------------------------------------------------------

#: What to do after each refusal of a claim. The fleet's own sentence comes first and already
#: says whom to ask for what; this says what to do then.
_CLAIM_TODO: Final = {
    401: "then run this command again with the whole token",
    403: "the keys in --dir did not sign the claim: provision into a new --dir",
    409: "then run this command again with the new token",
    410: "then run this command again with the new token",
    422: "check --gateway-id and --name; if they are right, update this tool",
    429: "wait five minutes, then run this command again",
}


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail:
        return detail.rstrip(".")
    if detail is not None:
        # FastAPI's own validation errors are a list: name the fields only.
        fields = []
        if isinstance(detail, list):
            fields = [
                ".".join(str(part) for part in item.get("loc", ())[1:])
                for item in detail
                if isinstance(item, dict)
            ]
        return "the fleet refused the request" + (f" ({', '.join(fields)})" if fields else "")
    return f"the fleet answered HTTP {response.status_code}"


class FleetClient:
    """The two unauthenticated provisioning routes of the fleet's API; the claim token is
    the credential (contract items 2 and 3)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    async def _post(self, step: str, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self.http.post(path, json=body)
        except httpx.TimeoutException as err:
            raise ProvisionError(
                step,
                f"the fleet at {self.base_url} did not answer within {HTTP_TIMEOUT_S:g} s",
                "check the network and --fleet, then run the same command again",
            ) from err
        except httpx.HTTPError as err:
            raise ProvisionError(
                step,
                f"cannot reach the fleet at {self.base_url} ({type(err).__name__})",
                "check the network and --fleet, then run the same command again",
            ) from err

    async def claim(self, body: dict[str, Any], gateway_id: str) -> ClaimAnswer:
        response = await self._post("claim", "/api/v1/provision/gateway", body)
        if response.status_code == 200:
            try:
                answer = response.json()
            except ValueError as err:
                raise ProvisionError(
                    "claim",
                    "the fleet's answer is not JSON",
                    "check --fleet: it must be the fleet's API address",
                ) from err
            return ClaimAnswer.from_json(answer, gateway_id)
        todo = _CLAIM_TODO.get(
            response.status_code,
            "check --fleet; if it is right, tell the fleet's operator and run the command again",
        )
        wait = response.headers.get("Retry-After", "")
        if response.status_code == 429 and wait.isdigit():
            todo = f"wait {int(wait)} s, then run this command again"
        raise ProvisionError("claim", _detail(response), todo)

    async def check(
        self, claim: str, gateway_id: str, proof: bytes, *, step: str = "fleet saw it"
    ) -> str | None:
        """The fleet's ``last_health_at`` for the gateway (ISO text, None: never); a failure
        is reported at ``step``."""
        response = await self._post(
            step,
            f"/api/v1/provision/gateway/{gateway_id}/check",
            {"claim": claim, "proof": proof.hex()},
        )
        if response.status_code != 200:
            raise ProvisionError(
                step,
                _detail(response),
                "run the same command again (the check is allowed for an hour after the claim)",
            )
        try:
            body = response.json()
        except ValueError as err:
            raise ProvisionError(step, "the fleet's answer is not JSON", "check --fleet") from err
        found = body.get("last_health_at") if isinstance(body, dict) else None
        return found if isinstance(found, str) else None


# --- what is asked, what happened ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    """What the technician typed. ``claim`` is secret (never shown); ``state_dir`` defaults
    to ``dir/state``, ``name`` to the gateway id."""

    fleet_url: str
    claim: str = field(repr=False)
    gateway_id: str
    dir: Path
    name: str | None = None
    state_dir: Path | None = None
    radio_port: str = DEFAULT_RADIO_PORT
    heartbeat_wait_s: float = HEARTBEAT_WAIT_S


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step: its name (:data:`STEPS`), whether it succeeded, how long it took, and a
    line of what it did (or what went wrong)."""

    step: str
    ok: bool
    seconds: float
    detail: str


@dataclass(slots=True)
class ProvisionResult:
    """The outcome: every step run, and on success what was claimed and where it went."""

    gateway_id: str
    dir: Path
    steps: list[StepResult] = field(default_factory=list)
    group: str | None = None
    site: str | None = None
    claimed_at: str | None = None
    keys_made: bool = False
    files: dict[str, str] = field(default_factory=dict)
    heartbeat_s: float | None = None
    error: ProvisionError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def line(self) -> str:
        """The one line that ends the command."""
        if self.error is not None:
            return self.error.line
        group = "no group" if self.group is None else f"group {self.group}"
        return (
            f"provisioned: gateway {self.gateway_id} in {group}; heartbeat acknowledged by"
            f" the fleet in {self.heartbeat_s or 0.0:.2f} s"
        )

    def to_json(self) -> dict[str, Any]:
        """The machine-readable result (``--json``); no secret in it."""
        error = self.error
        return {
            "ok": self.ok,
            "gateway_id": self.gateway_id,
            "group": self.group,
            "site": self.site,
            "claimed_at": self.claimed_at,
            "dir": str(self.dir),
            "keys_made": self.keys_made,
            "files": dict(self.files),
            "heartbeat_s": None if self.heartbeat_s is None else round(self.heartbeat_s, 3),
            "steps": [
                {
                    "step": step.step,
                    "ok": step.ok,
                    "seconds": round(step.seconds, 3),
                    "detail": step.detail,
                }
                for step in self.steps
            ],
            "error": None
            if error is None
            else {"step": error.step, "what": error.what, "todo": error.todo},
            "line": self.line,
        }


class Reporter(Protocol):
    """Told about each step as it starts and ends (the CLI's progress display)."""

    def started(self, step: str) -> None: ...

    def finished(self, result: StepResult) -> None: ...


class _Silent:
    def started(self, step: str) -> None:
        return None

    def finished(self, result: StepResult) -> None:
        return None


# --- the edge agent's files ---------------------------------------------------------------------


def _q(value: object) -> str:
    # A TOML basic string is a JSON string for everything written here.
    return json.dumps(str(value))


def edge_toml(
    *,
    gateway_id: str,
    folder: Path,
    state_dir: Path,
    groups: tuple[str, ...],
    config_key: bool,
    radio_port: str,
    mqtt_url: str,
) -> str:
    """The agent's ``edge.toml`` (``docs/edge.md``): relative paths resolve against the
    file's folder, so ``DIR`` can be moved (an SD card mounted elsewhere) with its files."""
    state = os.path.relpath(state_dir, folder) if state_dir.is_relative_to(folder) else state_dir
    lines = [
        "# Written by `owlgate provision gateway`; the fleet's configuration document adds the",
        "# managed settings (channels, batch, health, log level) when the agent connects.",
        "[gateway]",
        f"id = {_q(gateway_id)}",
        f"state_dir = {_q(state)}",
        f"identity_key = {_q(IDENTITY_KEY_FILE)}",
        f"sealing_key = {_q(SEALING_KEY_FILE)}",
        f"fleet_key = {_q(FLEET_KEY_FILE)}",
    ]
    if config_key:
        lines.append(f"config_key = {_q(CONFIG_KEY_FILE)}")
    if groups:
        lines.append(f"groups = [{', '.join(_q(group) for group in groups)}]")
    lines += [
        "",
        "[radio]",
        f"port = {_q(radio_port)}",
        "",
        "[mqtt]",
        f"url = {_q(mqtt_url)}",
        f"password_file = {_q(PASSWORD_FILE)}",
        "",
    ]
    return "\n".join(lines)


def _write_files(
    request: ProvisionRequest, answer: ClaimAnswer, result: ProvisionResult
) -> tuple[int, bytes]:
    """Write what the claim brought; the seq for the heartbeat (one above the last run's)
    and the SHA-256 of ``edge.toml``, the configuration hash the agent reports without a
    document."""
    folder = request.dir
    state_dir = request.state_dir or folder / STATE_DIR
    groups = () if answer.group is None else (answer.group,)
    if answer.config_document is not None:
        trusted = answer.config_key or answer.fleet_key
        try:
            doc = verify_config(
                answer.config_document,
                trusted,
                gateway_id=bytes.fromhex(answer.gateway_id),
                groups=groups,
            )
        except ConfigRejected as err:
            raise ProvisionError(
                "files",
                f"the initial configuration document does not verify ({err.reason.value}:"
                f" {err.message})",
                "tell the fleet's operator; then run the same command again",
            ) from err
        log.info("initial configuration document seq %d verified", doc.seq)
    text = edge_toml(
        gateway_id=answer.gateway_id,
        folder=folder,
        state_dir=state_dir,
        groups=groups,
        config_key=answer.config_key_pem is not None,
        radio_port=request.radio_port,
        mqtt_url=answer.mqtt_url,
    )
    record = _record(folder)
    # One above the last run's: the fleet takes a health message only when its seq is higher
    # or its time later than the last one's, and a re-run may fall in the same second.
    last_seq = record.get("heartbeat_seq")
    heartbeat_seq = last_seq + 1 if type(last_seq) is int and last_seq >= 0 else 0
    files: list[tuple[str, bytes]] = [
        (FLEET_KEY_FILE, answer.fleet_key_pem),
        (PASSWORD_FILE, answer.mqtt_password.encode() + b"\n"),
    ]
    if answer.config_key_pem is not None:
        files.append((CONFIG_KEY_FILE, answer.config_key_pem))
    if answer.config_document is not None:
        files.append((CONFIG_DOCUMENT_FILE, answer.config_document))
    files.append((EDGE_CONFIG_FILE, text.encode()))
    written = {
        "gateway_id": answer.gateway_id,
        "group": answer.group,
        "site": answer.site,
        "fleet": request.fleet_url,
        "claimed_at": answer.claimed_at,
        "mqtt_url": answer.mqtt_url,
        "heartbeat_seq": heartbeat_seq,
    }
    files.append((RECORD_FILE, (json.dumps(written, indent=1) + "\n").encode()))
    try:
        _private_folder(state_dir, "files")
        for name, data in files:
            write_private(folder / name, data)
            result.files[name] = str(folder / name)
        # Files of an earlier claim that this answer no longer brings would mislead.
        for name, brought in (
            (CONFIG_KEY_FILE, answer.config_key_pem),
            (CONFIG_DOCUMENT_FILE, answer.config_document),
        ):
            if brought is None:
                (folder / name).unlink(missing_ok=True)
    except OSError as err:
        raise ProvisionError(
            "files",
            f"cannot write into {folder}: {err.strerror or err}",
            "free some space or choose another --dir, then run the same command again",
        ) from err
    result.files["state_dir"] = str(state_dir)
    return heartbeat_seq, hashlib.sha256(text.encode()).digest()


# --- broker and heartbeat -----------------------------------------------------------------------


def _agent_version() -> str:
    try:
        return f"owlgate {version('owlgate')} provisioning"
    except PackageNotFoundError:
        return "owlgate provisioning"


def _uptime_s(path: Path = PROC_UPTIME) -> int:
    try:
        return int(float(path.read_text().split()[0]))
    except (OSError, ValueError, IndexError) as err:
        log.debug("cannot read %s: %s", path, err)
        return 0


def heartbeat(identity: Ed25519PrivateKey, gateway_id: str, seq: int, config_hash: bytes) -> bytes:
    """One signed health message as the agent sends it (:mod:`owlgate.codecs.health`), with
    what this tool knows: no radio, an empty outbox."""
    health = Health(
        gateway_id=bytes.fromhex(gateway_id),
        seq=seq,
        time_s=int(time.time()),
        uptime_s=_uptime_s(),
        agent_uptime_s=0,
        agent_version=_agent_version(),
        config_hash=config_hash,
        interval_s=DEFAULT_INTERVAL_S,
    )
    return sign(encode_health(health), identity)


def _broker_error(answer: ClaimAnswer, err: aiomqtt.MqttError) -> ProvisionError:
    rc = getattr(err, "rc", None)
    code = getattr(rc, "value", rc)
    where = f"{answer.mqtt_host}:{answer.mqtt_port}"
    if code in (4, 5, 134, 135):
        return ProvisionError(
            "broker",
            f"the broker at {where} refused the gateway's password",
            "run the same command again: the fleet issues a new password",
        )
    return ProvisionError(
        "broker",
        f"cannot connect to the broker at {where} ({err})",
        "check that this machine reaches the fleet's broker (firewall, port), then run the"
        " same command again",
    )


async def _timed(
    step: str,
    reporter: Reporter,
    result: ProvisionResult,
    work: Callable[[], Awaitable[tuple[_T, str]]],
) -> _T:
    reporter.started(step)
    started = time.perf_counter()
    try:
        value, detail = await work()
    except ProvisionError as err:
        outcome = StepResult(step, False, time.perf_counter() - started, err.what)
        result.steps.append(outcome)
        reporter.finished(outcome)
        raise
    outcome = StepResult(step, True, time.perf_counter() - started, detail)
    result.steps.append(outcome)
    reporter.finished(outcome)
    return value


async def provision(
    request: ProvisionRequest,
    reporter: Reporter | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ProvisionResult:
    """Run every step (module docstring); the result holds the steps and, on failure, the
    :class:`ProvisionError` that stopped them. ``transport`` replaces the HTTP transport
    (tests)."""
    reporter = reporter or _Silent()
    result = ProvisionResult(request.gateway_id, request.dir)
    try:
        async with httpx.AsyncClient(
            base_url=request.fleet_url, timeout=HTTP_TIMEOUT_S, transport=transport
        ) as http:
            await _run(request, reporter, result, FleetClient(http, request.fleet_url))
    except ProvisionError as err:
        result.error = err
        log.info("provisioning gateway %s %s", request.gateway_id, err.line)
    return result


async def _run(
    request: ProvisionRequest, reporter: Reporter, result: ProvisionResult, fleet: FleetClient
) -> None:
    gid = request.gateway_id
    record = _record(request.dir) if request.dir.exists() else {}
    if record.get("gateway_id") not in (None, gid):
        raise ProvisionError(
            "input",
            f"{request.dir} holds the keys of gateway {record['gateway_id']}",
            f"pass --gateway-id {record['gateway_id']} to provision it again, or use another --dir",
            bad_input=True,
        )

    async def keys() -> tuple[tuple[Ed25519PrivateKey, X25519PrivateKey], str]:
        identity, sealing, made = load_or_make_keys(request.dir)
        result.keys_made = made
        how = "made new" if made else "reused the"
        return (identity, sealing), f"{how} identity and sealing keys in {request.dir}"

    identity, sealing = await _timed("keys", reporter, result, keys)

    async def claim() -> tuple[ClaimAnswer, str]:
        body = {
            "claim": request.claim,
            "gateway_id": gid,
            "name": request.name or gid,
            "sign_public_key": _raw(identity).hex(),
            "seal_public_key": _raw(sealing).hex(),
            "proof": claim_proof(identity, request.claim, gid).hex(),
        }
        answer = await fleet.claim(body, gid)
        result.group, result.site, result.claimed_at = answer.group, answer.site, answer.claimed_at
        where = "no group" if answer.group is None else f"group {answer.group}"
        return answer, f"registered gateway {gid} in {where}"

    answer = await _timed("claim", reporter, result, claim)

    async def files() -> tuple[tuple[int, bytes], str]:
        seq, config_hash = _write_files(request, answer, result)
        kept = "with" if answer.config_document is not None else "without"
        return (seq, config_hash), (
            f"wrote edge.toml, keys and password into {request.dir} ({kept} an initial"
            " configuration document)"
        )

    seq, config_hash = await _timed("files", reporter, result, files)
    await _verify(request, reporter, result, fleet, answer, identity, seq, config_hash)


async def _verify(
    request: ProvisionRequest,
    reporter: Reporter,
    result: ProvisionResult,
    fleet: FleetClient,
    answer: ClaimAnswer,
    identity: Ed25519PrivateKey,
    seq: int,
    config_hash: bytes,
) -> None:
    gid = request.gateway_id
    proof = check_proof(identity, request.claim, gid)
    client = aiomqtt.Client(
        answer.mqtt_host,
        answer.mqtt_port,
        # Not the agent's client ids: a re-run on a running gateway must not take over the
        # agent's connection. No Last Will: this connection says nothing about the agent.
        identifier=f"owlgate-gw-{gid}-provision",
        username=gid,
        password=answer.mqtt_password,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
        timeout=MQTT_TIMEOUT_S,
    )

    async def connect() -> tuple[None, str]:
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as err:
            raise _broker_error(answer, err) from err
        return None, f"logged in to {answer.mqtt_url} as {gid}"

    await _timed("broker", reporter, result, connect)
    try:
        before: str | None = None
        published = 0.0

        async def publish() -> tuple[None, str]:
            nonlocal before, published
            # What the fleet knew before: the heartbeat is seen when this moves.
            before = await fleet.check(request.claim, gid, proof, step="heartbeat")
            payload = heartbeat(identity, gid, seq, config_hash)
            published = time.perf_counter()
            try:
                await client.publish(
                    f"owlgate/v1/gw/{gid}/health", payload, qos=1, timeout=MQTT_TIMEOUT_S
                )
            except aiomqtt.MqttError as err:
                raise ProvisionError(
                    "heartbeat",
                    f"the broker did not acknowledge the health message ({err})",
                    "check the connection to the broker, then run the same command again",
                ) from err
            return None, f"signed health message acknowledged by the broker (seq {seq})"

        await _timed("heartbeat", reporter, result, publish)

        async def seen() -> tuple[None, str]:
            deadline = time.monotonic() + request.heartbeat_wait_s
            while True:
                now = await fleet.check(request.claim, gid, proof)
                if now is not None and (before is None or _later(now, before)):
                    result.heartbeat_s = time.perf_counter() - published
                    return None, f"the fleet recorded the heartbeat at {now}"
                if time.monotonic() >= deadline:
                    raise ProvisionError(
                        "fleet saw it",
                        f"the fleet did not record the heartbeat within"
                        f" {request.heartbeat_wait_s:g} s",
                        "check that the fleet's ingest is running (GET /api/v1/stats), then run"
                        " the same command again",
                    )
                await asyncio.sleep(HEARTBEAT_POLL_S)

        await _timed("fleet saw it", reporter, result, seen)
    finally:
        try:
            await client.__aexit__(None, None, None)
        except aiomqtt.MqttError as err:
            log.info("closing the broker connection: %s", err)


def _later(now: str, before: str) -> bool:
    try:
        return datetime.fromisoformat(now) > datetime.fromisoformat(before)
    except ValueError:
        return now != before
