"""The agent as a systemd service: readiness and watchdog notifications, journal logging, and
the unit files ``owlgate edge install-service`` writes.

Standard library only: the agent's lean process (:mod:`owlgate.edge.runtime`) imports this.

**Notifications** follow the ``sd_notify`` protocol (systemd ``sd_notify(3)``, section
"Notes"): one datagram of newline-separated ``VARIABLE=value`` assignments sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``, a file system path or, when it starts with
``@``, a name in the abstract namespace. Outside systemd the variable is unset and every
helper returns False without doing anything, so the agent runs the same from a terminal.

**Watchdog**: with ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``,
the process it means); :func:`watchdog_interval_s` reads them and the agent's process sends
``WATCHDOG=1`` every half of that interval while the agent is healthy
(``sd_watchdog_enabled(3)`` recommends half).

**Journal**: when stderr is a journald stream (``$JOURNAL_STREAM`` holds its
``device:inode``, ``systemd.exec(5)``), each log line starts with the syslog priority in
angle brackets, ``<3>`` for an error, ``<6>`` for information, which journald strips and
records as the entry's priority (``SyslogLevelPrefix=``, on by default); the timestamp is
left out, journald adds its own. Elsewhere lines keep the human format with a timestamp.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final, TextIO

__all__ = [
    "CONFIG_DIR",
    "CONFIG_FILE",
    "HUMAN_LOG_FORMAT",
    "LOG_FORMATS",
    "STATE_DIR",
    "UNIT_NAME",
    "JournalFormatter",
    "JsonFormatter",
    "ServiceFile",
    "configure_logging",
    "journal_connected",
    "notify_ready",
    "notify_reloading",
    "notify_status",
    "notify_stopping",
    "notify_watchdog",
    "render_files",
    "render_sysusers",
    "render_tmpfiles",
    "render_unit",
    "sd_notify",
    "watchdog_interval_s",
]

log = logging.getLogger(__name__)

UNIT_NAME: Final = "owlgate-edge.service"
SERVICE_USER: Final = "owlgate"
#: ``ConfigurationDirectory=owlgate`` and ``StateDirectory=owlgate`` (systemd.exec(5),
#: "RuntimeDirectory=, StateDirectory=, ...") are these two folders.
CONFIG_DIR: Final = PurePosixPath("/etc/owlgate")
CONFIG_FILE: Final = CONFIG_DIR / "edge.toml"
KEYS_DIR: Final = CONFIG_DIR / "keys"
STATE_DIR: Final = PurePosixPath("/var/lib/owlgate")
UNIT_DIR: Final = PurePosixPath("/etc/systemd/system")
SYSUSERS_FILE: Final = PurePosixPath("/usr/lib/sysusers.d/owlgate.conf")
TMPFILES_FILE: Final = PurePosixPath("/usr/lib/tmpfiles.d/owlgate.conf")
#: systemd kills and restarts the agent when no ``WATCHDOG=1`` came for this long.
WATCHDOG_SEC: Final = 30
RESTART_SEC: Final = 2
#: At most this many starts within the interval, then systemd gives up (unit "failed").
START_LIMIT_INTERVAL_SEC: Final = 300
START_LIMIT_BURST: Final = 10
#: The agent's shutdown drains for 2 s (edge/agent.py SHUTDOWN_DRAIN_S) then closes the
#: radio, MQTT and the database; 20 s leaves room on a slow SD card.
TIMEOUT_STOP_SEC: Final = 20
#: READY=1 comes at the latest after runtime.READY_GRACE_S (45 s), well inside this.
TIMEOUT_START_SEC: Final = 90
#: ``owlgate edge run`` exits with this on a bad configuration: restarting cannot help.
EXIT_BAD_CONFIG: Final = 2

HUMAN_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_LOG_FORMAT: Final = "%(name)s: %(message)s"
#: ``auto``: ``journal`` when stderr is the journal, else ``human``.
LOG_FORMATS: Final = ("auto", "human", "journal", "json")

#: Syslog priorities (RFC 5424 section 6.2.1) of the logging levels.
_SYSLOG_PRIORITY: Final = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_SYSLOG_DEBUG: Final = 7
_USEC_PER_S: Final = 1_000_000

_failure_logged = False


# --- sd_notify ----------------------------------------------------------------------------------


def _socket_address(name: str) -> str | bytes:
    if name.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the "@" (unix(7)).
        return b"\0" + name[1:].encode()
    return name


def sd_notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``VARIABLE=value`` lines) to the service manager.

    Returns True when the datagram was sent, False when not running under systemd
    (``$NOTIFY_SOCKET`` unset or empty) or when the socket refused it; the first failure is
    logged as a warning, later ones at debug level.
    """
    global _failure_logged  # one warning per process, not one per ping
    name = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not name or name[0] not in "/@":
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_socket_address(name))
            sock.sendall(message.encode())
    except OSError as err:
        if not _failure_logged:
            _failure_logged = True
            log.warning("cannot notify the service manager at %s: %s", name, err)
        else:
            log.debug("cannot notify the service manager at %s: %s", name, err)
        return False
    return True


def _one_line(text: str) -> str:
    # STATUS= is one assignment: a newline would start another variable.
    return " ".join(text.split())


def notify_ready(status: str | None = None) -> bool:
    """``READY=1`` (startup or a reload finished), with a ``STATUS=`` line if given."""
    message = "READY=1"
    if status:
        message += f"\nSTATUS={_one_line(status)}"
    return sd_notify(message)


def notify_status(text: str) -> bool:
    """``STATUS=text``: what ``systemctl status`` shows beside the unit."""
    return sd_notify(f"STATUS={_one_line(text)}")


def notify_stopping() -> bool:
    """``STOPPING=1``: the agent is shutting down."""
    return sd_notify("STOPPING=1\nSTATUS=stopping")


def notify_reloading() -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC``: a reload has begun.

    systemd 253 and later want ``MONOTONIC_USEC`` (CLOCK_MONOTONIC in microseconds) with it
    for ``Type=notify-reload``; older ones ignore it. The reload ends with :func:`notify_ready`.
    """
    now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return sd_notify(f"RELOADING=1\nMONOTONIC_USEC={now_us}\nSTATUS=reloading the configuration")


def notify_watchdog() -> bool:
    """``WATCHDOG=1``: the agent is alive and healthy."""
    return sd_notify("WATCHDOG=1")


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd set (``$WATCHDOG_USEC``) in seconds, or None when there is
    no watchdog, the value is not a positive integer, or ``$WATCHDOG_PID`` names another
    process (the variables were inherited, sd_watchdog_enabled(3))."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / _USEC_PER_S


# --- logging ------------------------------------------------------------------------------------


def journal_connected(
    stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether ``stream`` (stderr by default) is the journald stream ``$JOURNAL_STREAM``
    names: its ``device:inode`` must match the stream's own, since the variable is inherited
    by children whose stderr may point elsewhere (systemd.exec(5), ``$JOURNAL_STREAM``)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isascii() and device.isdigit()) or not (inode.isascii() and inode.isdigit()):
        return False
    target = sys.stderr if stream is None else stream
    try:
        info = os.fstat(target.fileno())
    except (OSError, ValueError, AttributeError):
        # A stream without a descriptor (a test's StringIO) is not the journal.
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def syslog_priority(levelno: int) -> int:
    """The syslog priority (0 emergency .. 7 debug) of a :mod:`logging` level."""
    for level, priority in _SYSLOG_PRIORITY:
        if levelno >= level:
            return priority
    return _SYSLOG_DEBUG


class JournalFormatter(logging.Formatter):
    """``<N>logger: message`` with no timestamp; every line of a multi-line record (a
    traceback) carries the prefix, since journald makes each line an entry of its own."""

    def __init__(self, fmt: str = JOURNAL_LOG_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC seconds), ``level``, ``logger``, ``message``,
    ``gateway_id``, and ``exception`` when there is one; ``<N>`` in front when ``journal``
    (journald strips it, so the entry's message is the JSON alone)."""

    def __init__(self, gateway_id: str | None = None, *, journal: bool = False) -> None:
        super().__init__()
        self.gateway_id = gateway_id
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "gateway_id": self.gateway_id,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        text = json.dumps(entry, separators=(",", ":"))
        if self.journal:
            return f"<{syslog_priority(record.levelno)}>{text}"
        return text


def configure_logging(
    *,
    verbose: bool = False,
    log_format: str = "auto",
    gateway_id: str | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) in ``log_format`` (one of
    :data:`LOG_FORMATS`); returns the handler installed (replacing any earlier one)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    target = sys.stderr if stream is None else stream
    journal = journal_connected(target)
    handler = logging.StreamHandler(target)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter(gateway_id, journal=journal)
    elif log_format == "journal" or (log_format == "auto" and journal):
        formatter = JournalFormatter()
    else:
        formatter = logging.Formatter(HUMAN_LOG_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


# --- unit files ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceFile:
    """One file ``install-service`` writes: its absolute path on the target system, its text
    and its mode."""

    path: PurePosixPath
    text: str
    mode: int


def _protect_home(python: str) -> str:
    # ProtectHome=yes hides /home, /root and /run/user: an interpreter in a virtualenv there
    # (pip install --user, a venv in /home/pi) could not even start. Read-only keeps it
    # usable and still unwritable.
    parts = PurePosixPath(python).parts
    if len(parts) > 1 and (parts[1] in ("home", "root") or parts[1:3] == ("run", "user")):
        return "read-only"
    return "yes"


def render_unit(
    *,
    python: str,
    user: str = SERVICE_USER,
    config_file: PurePosixPath = CONFIG_FILE,
    verbose: bool = False,
) -> str:
    """The text of ``owlgate-edge.service`` for the interpreter at ``python`` (absolute)."""
    if not PurePosixPath(python).is_absolute():
        raise ValueError(f"the interpreter must be an absolute path, got {python!r}")
    # systemd splits ExecStart= on spaces unless the word is quoted (systemd.service(5),
    # "Command lines").
    program = f'"{python}"' if any(c.isspace() for c in python) else python
    command = f"{program} -m owlgate.edge --config {config_file}"
    if verbose:
        command += " --verbose"
    protect_home = _protect_home(python)
    return f"""\
# {UNIT_NAME}: the owlgate gateway agent (written by `owlgate edge install-service`).
# See docs/edge-service.md for what each setting is for.
[Unit]
Description=owlgate gateway agent (LoRaWAN concentrator to fleet)
Wants=network-online.target
After=network-online.target
# Give up after {START_LIMIT_BURST} starts in {START_LIMIT_INTERVAL_SEC} s (a crash loop)
# rather than restart forever; `systemctl reset-failed {UNIT_NAME}` clears it.
StartLimitIntervalSec={START_LIMIT_INTERVAL_SEC}
StartLimitBurst={START_LIMIT_BURST}

[Service]
# The agent sends READY=1 once it runs, WATCHDOG=1 while healthy, STOPPING=1 and
# RELOADING=1 (sd_notify protocol); only the main process may notify.
Type=notify
NotifyAccess=main
ExecStart={command}
ExecReload=/bin/kill -HUP $MAINPID
WatchdogSec={WATCHDOG_SEC}
TimeoutStartSec={TIMEOUT_START_SEC}
TimeoutStopSec={TIMEOUT_STOP_SEC}
KillSignal=SIGTERM
# A gateway must always be running: restart after a crash, a watchdog kill or an
# unexpected clean exit, but not after a bad configuration (exit {EXIT_BAD_CONFIG}), which
# a restart cannot fix.
Restart=always
RestartSec={RESTART_SEC}
RestartPreventExitStatus={EXIT_BAD_CONFIG}
User={user}
Group={user}
# Serial concentrators (/dev/ttyACM*, /dev/ttyUSB*, /dev/serial0) belong to group dialout.
SupplementaryGroups=dialout
# /var/lib/owlgate (the state: outbox, sessions, status.json) and /etc/owlgate.
StateDirectory=owlgate
StateDirectoryMode=0700
ConfigurationDirectory=owlgate
# Hardening. /dev stays as it is (no PrivateDevices=), so the serial port keeps working.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp=yes
ReadWritePaths={STATE_DIR}
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
"""


def render_sysusers(user: str = SERVICE_USER) -> str:
    """The sysusers.d snippet creating the service's system user and group
    (sysusers.d(5): ``u NAME ID GECOS HOME``; ``-`` lets systemd pick a system id)."""
    return f"""\
# The system user the owlgate gateway agent runs as (`systemd-sysusers` applies it).
u {user} - "owlgate gateway agent" {STATE_DIR}
"""


def render_tmpfiles(user: str = SERVICE_USER) -> str:
    """The tmpfiles.d snippet giving the installed configuration and keys to the service
    user (tmpfiles.d(5): ``z`` sets mode and owner of what exists; globs are allowed)."""
    return f"""\
# Ownership of the owlgate configuration (`systemd-tmpfiles --create owlgate.conf`).
# The configuration is readable by the agent's group, the keys by the agent alone.
z {CONFIG_FILE} 0640 root {user} -
z {KEYS_DIR} 0700 {user} {user} -
z {KEYS_DIR}/*.pem 0600 {user} {user} -
z {KEYS_DIR}/mqtt-password 0600 {user} {user} -
"""


def render_files(
    *, python: str, user: str = SERVICE_USER, verbose: bool = False
) -> list[ServiceFile]:
    """The unit, sysusers.d and tmpfiles.d files, with their target paths and modes."""
    return [
        ServiceFile(
            UNIT_DIR / UNIT_NAME, render_unit(python=python, user=user, verbose=verbose), 0o644
        ),
        ServiceFile(SYSUSERS_FILE, render_sysusers(user), 0o644),
        ServiceFile(TMPFILES_FILE, render_tmpfiles(user), 0o644),
    ]


def under_root(root: Path, target: PurePosixPath) -> Path:
    """``target`` (absolute, on the installed system) inside the folder ``root``."""
    return root.joinpath(*target.parts[1:])
