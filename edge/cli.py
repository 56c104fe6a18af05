"""``owlgate edge``: run the gateway agent, install it as a systemd service, show its status.

``owlgate edge run --config FILE`` loads and validates the configuration (and the key files
it names) before anything starts: a bad file is one line, ``error: ...``, on stderr and exit
code 2. Then it replaces itself (``exec``, same process id) with the agent's lean process,
``python -m owlgate.edge`` (:mod:`owlgate.edge.runtime`), which runs until SIGTERM or SIGINT;
they stop it cleanly (the batch held is sealed, the uplink says ``offline``); SIGHUP reloads
the configuration. Logs go to stderr (with journal priorities under systemd).

``owlgate edge install-service`` writes the systemd unit, the sysusers.d and tmpfiles.d
snippets, and a copy of the configuration and its keys under ``/etc/owlgate``
(docs/edge-service.md). ``owlgate edge status`` reads the running agent's ``status.json``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Final

import typer

from .config import EdgeConfig, load_config, load_keys
from .errors import ConfigError
from .service import (
    CONFIG_FILE,
    KEYS_DIR,
    LOG_FORMATS,
    SERVICE_USER,
    STATE_DIR,
    UNIT_NAME,
    ServiceFile,
    render_files,
    under_root,
)

EXIT_OK: Final = 0
EXIT_NOT_READY: Final = 1
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
#: The agent rewrites status.json every 10 s (edge/agent.py STATUS_INTERVAL_S): three missed
#: writes mean it is not running, or its event loop is stuck.
STATUS_STALE_S: Final = 30.0
STATUS_FILE: Final = "status.json"
#: Installed key files, by the [gateway] key that names them.
KEY_FILES: Final = (
    ("identity_key", "identity-ed25519.pem"),
    ("sealing_key", "sealing-x25519.pem"),
    ("fleet_key", "fleet-ed25519.pub.pem"),
)
#: Files copied beside the keys when the configuration names them: (section, key, file name).
OPTIONAL_KEY_FILES: Final = (
    ("mqtt", "password_file", "mqtt-password"),
    ("gateway", "config_key", "config-ed25519.pub.pem"),
)
CONFIG_MODE: Final = 0o640
KEY_MODE: Final = 0o600
KEYS_DIR_MODE: Final = 0o700
_USER_NAME: Final = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
_TABLE: Final = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?$")

edge_command = typer.Typer(
    name="edge",
    help="The gateway agent: radio, LoRaWAN, telemetry to the fleet.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _load(config: Path, *, keys: bool = True) -> EdgeConfig:
    try:
        settings = load_config(config)
        if keys:
            load_keys(settings)
    except ConfigError as err:
        raise _fail(err.message) from err
    return settings


@edge_command.callback()
def edge() -> None:
    """The gateway agent: radio, LoRaWAN, telemetry to the fleet."""


@edge_command.command("run")
def run(
    config: Annotated[Path, typer.Option("--config", help="the agent's TOML configuration file")],
    verbose: Annotated[bool, typer.Option("--verbose", help="log at debug level")] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format", help="auto (journal priorities under systemd), human, journal, json"
        ),
    ] = "auto",
) -> None:
    """Run the gateway agent with the configuration in FILE until SIGTERM or SIGINT."""
    if log_format not in LOG_FORMATS:
        raise _fail(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    _load(config)
    # The agent runs without this command line's framework in memory (edge/runtime.py).
    command = [sys.executable, "-m", "owlgate.edge", "--config", str(config)]
    if verbose:
        command.append("--verbose")
    if log_format != "auto":
        command += ["--log-format", log_format]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


# --- install-service ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Copy:
    """A key file to copy: from ``source`` to ``target`` (on the installed system)."""

    source: Path
    target: PurePosixPath
    mode: int


def _toml_string(value: str) -> str:
    # JSON string escapes are TOML basic-string escapes (TOML 1.0 "String").
    return json.dumps(value)


def installed_config_text(settings: EdgeConfig) -> str:
    """The configuration as installed: ``state_dir`` set to /var/lib/owlgate (the unit's
    StateDirectory), the key files (and the broker password file and config key, when set)
    pointing at /etc/owlgate/keys, and a serial device path of the radio made absolute; every
    other line as the technician wrote it."""
    replace: dict[tuple[str, str], str] = {("gateway", "state_dir"): str(STATE_DIR)}
    for key, name in KEY_FILES:
        replace[("gateway", key)] = str(KEYS_DIR / name)
    for section, key, name in OPTIONAL_KEY_FILES:
        if _optional_source(settings, section, key) is not None:
            replace[(section, key)] = str(KEYS_DIR / name)
    if settings.radio.port and "://" not in settings.radio.port:
        replace[("radio", "port")] = settings.radio.port
    source = settings.path.read_text(encoding="utf-8")
    table = ""
    lines = []
    for line in source.splitlines():
        match = _TABLE.match(line)
        if match:
            table = match.group(1)
        for (section, key), value in replace.items():
            setting = re.match(rf"^(\s*){re.escape(key)}(\s*=\s*)", line)
            if section == table and setting:
                line = f"{setting.group(1)}{key}{setting.group(2)}{_toml_string(value)}"
        lines.append(line)
    text = (
        f"# Installed by `owlgate edge install-service` from {settings.path.resolve()};\n"
        "# state_dir and the key paths point at the service's folders.\n" + "\n".join(lines) + "\n"
    )
    # The rewrite is line by line: check that it said what was meant (a key written as a
    # dotted key or in an inline table would not be found).
    document = tomllib.loads(text)
    for (section, key), value in replace.items():
        if document.get(section, {}).get(key) != value:
            raise _fail(
                f"{settings.path}: [{section}] {key}: could not be rewritten to {value!r}; "
                f'write it as one line, {key} = "...", and install again'
            )
    return text


def _plan(settings: EdgeConfig, *, python: str, user: str) -> tuple[list[ServiceFile], list[_Copy]]:
    files = render_files(python=python, user=user)
    files.append(ServiceFile(CONFIG_FILE, installed_config_text(settings), CONFIG_MODE))
    gateway = settings.gateway
    sources = {
        "identity_key": gateway.identity_key,
        "sealing_key": gateway.sealing_key,
        "fleet_key": gateway.fleet_key,
    }
    copies = [_Copy(sources[key], KEYS_DIR / name, KEY_MODE) for key, name in KEY_FILES]
    for section, key, name in OPTIONAL_KEY_FILES:
        source = _optional_source(settings, section, key)
        if source is not None:
            copies.append(_Copy(source, KEYS_DIR / name, KEY_MODE))
    return files, copies


def _optional_source(settings: EdgeConfig, section: str, key: str) -> Path | None:
    if (section, key) == ("mqtt", "password_file"):
        return settings.mqtt.password_file
    if (section, key) == ("gateway", "config_key"):
        return settings.gateway.config_key
    raise ValueError(f"no optional key file [{section}] {key}")


def _write_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    # Created with its final mode, so a key is never readable by others, not even briefly.
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(partial, mode)
    os.replace(partial, path)


def _chown_to_service(paths: list[tuple[Path, bool]], user: str) -> bool:
    """Give the installed configuration (group) and keys (owner) to ``user`` when it exists
    already; False when it does not (tmpfiles.d does it once sysusers has created it)."""
    import grp
    import pwd

    try:
        uid = pwd.getpwnam(user).pw_uid
        gid = grp.getgrnam(user).gr_gid
    except KeyError:
        return False
    for path, owned in paths:
        os.chown(path, uid if owned else 0, gid)
    return True


@edge_command.command("install-service")
def install_service(
    config: Annotated[
        Path, typer.Option("--config", help="the edge.toml to install (checked first)")
    ],
    root: Annotated[
        Path | None,
        typer.Option("--root", help="write under this folder instead of / (an image, a test)"),
    ] = None,
    user: Annotated[str, typer.Option("--user", help="the system user to run as")] = SERVICE_USER,
    python: Annotated[
        str | None,
        typer.Option("--python", help="the interpreter with owlgate installed (this one)"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print what would be written, write nothing")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite files already there")] = False,
) -> None:
    """Install the agent as the systemd service owlgate-edge, with CONFIG and its keys."""
    if not _USER_NAME.fullmatch(user):
        raise _fail(f"--user must be a system user name (a-z, 0-9, _ and -), got {user!r}")
    interpreter = python if python is not None else sys.executable
    if not os.path.isabs(interpreter):
        raise _fail(f"--python must be an absolute path, got {interpreter!r}")
    settings = _load(config)
    files, copies = _plan(settings, python=interpreter, user=user)
    target_root = Path("/") if root is None else root
    if dry_run:
        for item in files:
            typer.echo(f"--- {under_root(target_root, item.path)} (mode {item.mode:04o})")
            typer.echo(item.text, nl=False)
        for copy in copies:
            typer.echo(
                f"--- {under_root(target_root, copy.target)} (mode {copy.mode:04o}): "
                f"copy of {copy.source}"
            )
        return
    if root is None and os.geteuid() != 0:
        raise _fail(
            "installing into / needs root: run it with sudo "
            "(or give --root DIR to write the files under another folder)",
            EXIT_FAILED,
        )
    targets = [under_root(target_root, item.path) for item in files]
    targets += [under_root(target_root, copy.target) for copy in copies]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not force:
        raise _fail(
            f"{', '.join(existing)} already exist; nothing was written (--force overwrites them)",
            EXIT_FAILED,
        )
    keys_dir = under_root(target_root, KEYS_DIR)
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, KEYS_DIR_MODE)
    try:
        for item in files:
            _write_file(under_root(target_root, item.path), item.text.encode(), item.mode)
        for copy in copies:
            _write_file(under_root(target_root, copy.target), copy.source.read_bytes(), copy.mode)
    except OSError as err:
        raise _fail(f"cannot write {err.filename}: {err.strerror or err}", EXIT_FAILED) from err
    for path in targets:
        typer.echo(f"wrote {path}")
    owned = root is None and _chown_to_service(
        [(under_root(target_root, CONFIG_FILE), False), (keys_dir, True)]
        + [(under_root(target_root, copy.target), True) for copy in copies],
        user,
    )
    typer.echo(
        f"state_dir in the installed configuration is {STATE_DIR}; "
        f"keys are in {KEYS_DIR} (mode {KEY_MODE:04o})."
    )
    typer.echo("Next steps:")
    steps = ["systemd-sysusers"]
    if not owned:
        steps.append("systemd-tmpfiles --create owlgate.conf")
    steps += [
        "systemctl daemon-reload",
        f"systemctl enable --now {UNIT_NAME.removesuffix('.service')}",
    ]
    steps.append(f"owlgate edge status --config {CONFIG_FILE}")
    for step in steps:
        typer.echo(f"  sudo {step}")


# --- status -------------------------------------------------------------------------------------


def _count(value: object) -> str:
    return "-" if value is None else str(value)


def _age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    return f"{seconds:.0f} s"


def _not_connected(part: dict[str, Any]) -> str:
    error = part.get("last_error")
    return "NOT connected" if not error else f"NOT connected ({error})"


def _fill(outbox: dict[str, Any]) -> str:
    used, bound = outbox.get("used_bytes", outbox.get("bytes")), outbox.get("max_bytes")
    if not isinstance(used, int) or not isinstance(bound, int) or bound <= 0:
        return ""
    return (
        f"{used / 1024 / 1024:.1f} of {bound / 1024 / 1024:.0f} MiB ({100 * used / bound:.0f} %), "
    )


def _wired_lines(wired: object) -> list[str]:
    if not isinstance(wired, dict):
        return []
    lines = [
        f"wired     {wired.get('port', '?')}: "
        f"{'connected' if wired.get('connected') else _not_connected(wired)}"
    ]
    for node in wired.get("nodes") or []:
        if not isinstance(node, dict):
            continue
        state = "answering" if node.get("answering") else "SILENT"
        lines.append(
            f"  node {node.get('address', '?'):>3} {node.get('dev_eui', '?')}: {state}; "
            f"readings {_count(node.get('readings'))}, "
            f"timeouts {_count(node.get('timeouts'))}, "
            f"stored up to {_count(node.get('committed_seq'))}"
        )
    return lines


def _config_line(status: dict[str, Any]) -> str:
    # The running configuration: a document from the fleet (its seq and hash) or the factory
    # edge.toml (the file's SHA-256), and what the gateway last reported about a document.
    config = status.get("config")
    if not isinstance(config, dict):
        return f"config    sha256 {status.get('config_hash', '?')}"
    if config.get("source") == "document":
        digest = str(config.get("hash", "?"))[:16]
        line = f"config    document seq {config.get('seq', '?')}, sha256 {digest}"
    else:
        line = f"config    sha256 {status.get('config_hash', '?')} (factory edge.toml)"
    last = config.get("last_status")
    if isinstance(last, dict):
        reason = last.get("reason")
        line += f"; last report: {last.get('state', '?')} seq {last.get('seq', '?')}"
        if reason:
            line += f" ({reason})"
    return line


def status_lines(status: dict[str, Any], now_s: float) -> tuple[list[str], int]:
    """The technician's view of ``status.json`` and the exit code it deserves."""
    written = status.get("written_at")
    age_s = max(0.0, now_s - written) if isinstance(written, int | float) else None
    radio = status.get("radio") or {}
    uplink = status.get("uplink") or {}
    outbox = status.get("outbox") or {}
    control = status.get("control") or {}
    ready = status.get("ready") is True
    rtt = uplink.get("last_rtt_ms")
    lines = [
        f"gateway   {status.get('gateway_id', '?')} ({status.get('agent_version', '?')})",
        f"ready     {'yes' if ready else 'no'}",
        f"radio     {radio.get('backend', 'serial')} on {radio.get('port', '?')}: "
        f"{'connected' if radio.get('connected') else _not_connected(radio)}; "
        f"received {_count(radio.get('rx_received'))}, "
        f"delivered {_count(radio.get('rx_delivered'))}, "
        f"CRC bad {_count(radio.get('rx_crc_bad'))}",
        f"backhaul  MQTT {'connected' if uplink.get('connected') else 'NOT connected'}; "
        f"last RTT {'-' if rtt is None else f'{rtt} ms'}, "
        f"reconnects {_count(uplink.get('reconnects'))}, "
        f"published {_count(uplink.get('published'))}; "
        f"control {'connected' if control.get('connected') else 'NOT connected'}",
        f"outbox    depth {_count(outbox.get('depth'))}, "
        f"{_fill(outbox)}"
        f"oldest {_age(outbox.get('oldest_age_s'))}, "
        f"evicted {_count(outbox.get('evicted'))}",
        *_wired_lines(status.get("wired")),
        _config_line(status),
        f"written   {'unknown' if age_s is None else f'{age_s:.0f} s ago'}",
    ]
    if outbox.get("warning") is True:
        lines.append(
            "WARNING: the outbox is above 80 % of its bound: the backhaul has been down a"
            " while; at 100 % the oldest data is evicted"
        )
    restarts = (status.get("loops") or {}).get("restarts") or {}
    if restarts:
        shown = ", ".join(f"{name} {count}" for name, count in sorted(restarts.items()))
        lines.append(f"WARNING: agent loops failed and were restarted: {shown} (see the log)")
    code = EXIT_OK
    if age_s is None or age_s > STATUS_STALE_S:
        shown = "at an unknown time" if age_s is None else f"{age_s:.0f} s ago"
        lines.append(f"WARNING: agent not running or stuck: status written {shown}")
        code = EXIT_NOT_READY
    elif not ready:
        lines.append("WARNING: agent running but not ready (radio or fleet sessions missing)")
        code = EXIT_NOT_READY
    return lines, code


@edge_command.command("status")
def status(
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help=f"the agent's state folder (default {STATE_DIR})"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="find the state folder in this edge.toml")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print status.json as it is")] = False,
) -> None:
    """Show what the agent last wrote to STATE_DIR/status.json; exit 1 if stale or not ready."""
    if state_dir is not None and config is not None:
        raise _fail("give --state-dir or --config, not both")
    if config is not None:
        folder = _load(config, keys=False).gateway.state_dir
    else:
        folder = Path(str(STATE_DIR)) if state_dir is None else state_dir
    path = folder / STATUS_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise _fail(
            f"{path} does not exist: the agent has not run with state_dir {folder} yet"
        ) from err
    except PermissionError as err:
        raise _fail(f"cannot read {path}: permission denied (try sudo)") from err
    except OSError as err:
        raise _fail(f"cannot read {path}: {err.strerror or err}") from err
    try:
        document = json.loads(raw)
    except ValueError as err:
        raise _fail(f"{path} is not JSON: {err}") from err
    if not isinstance(document, dict) or "written_at" not in document:
        raise _fail(f"{path} is not an agent status file (no written_at)")
    lines, code = status_lines(document, time.time())
    if as_json:
        typer.echo(raw, nl=False)
    else:
        for line in lines:
            typer.echo(line)
    if code != EXIT_OK:
        raise typer.Exit(code)
