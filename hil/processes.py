"""Child processes as a user starts them: ``python -m owlgate.codecs.cli ...``, the output
copied to a log file and watched for the lines that say a part is up (``LINK <path>``,
``Uvicorn running on ...``, ``ready: ...``). Used by ``owlgate demo`` and the benchmarks that
run the whole system.

:class:`MosquittoProcess` runs a Mosquitto broker with a configuration of its own, for the
tests, the chaos runs and the benchmarks: one place that writes the configuration, waits for
the listener and stops the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from ..codecs.errors import OwlgateError

MODULE: Final = "owlgate.codecs.cli"
START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0

log = logging.getLogger(__name__)


def find_mosquitto() -> str | None:
    """The mosquitto binary, or None: on PATH, or where Debian installs it (/usr/sbin), which
    is not on every user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class ProcessFailed(OwlgateError):
    """A child process did not start, did not say what was expected, or could not be fed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ChildProcess:
    """A child process with its output copied to a log file and watched for patterns."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_path: Path,
        *,
        stdin: bool = False,
        append: bool = False,
    ) -> None:
        self.name = name
        # append: a restarted process (after a power cut, say) keeps the earlier log.
        self.log: IO[str] = log_path.open("a" if append else "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Its own session: Ctrl-C reaches only the demo, which then stops the children in
            # order (emulators first, so their reports are complete before the drain).
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def expect(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> re.Match[str]:
        """The first output line matching ``pattern``, waiting up to ``timeout_s``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        checked = 0
        with self._seen:
            while True:
                for line in self.lines[checked:]:
                    match = regex.search(line)
                    if match:
                        return match
                checked = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise ProcessFailed(f"{self.name}: no line matching {pattern!r} (see its log)")
                self._seen.wait(min(left, 0.5))

    def send_line(self, line: str) -> None:
        """Write ``line`` and a newline to the child's stdin (started with ``stdin=True``)."""
        if self.proc.stdin is None:
            raise ProcessFailed(f"{self.name} was started without stdin")
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError as err:
            raise ProcessFailed(f"{self.name}: cannot write to its stdin ({err})") from err

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not end in time."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(STOP_TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


@contextmanager
def children_stopped_at_exit() -> Iterator[list[ChildProcess]]:
    """A list to append started children to; at exit they are stopped, last started first."""
    started: list[ChildProcess] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


# --- Mosquitto ----------------------------------------------------------------------------------

LOOPBACK: Final = "127.0.0.1"
#: Mosquitto keeps at most this many QoS 1 messages per client beyond those in flight, then
#: drops the rest silently (its own default is 1000): a subscriber with a persistent session
#: that is away for a while, or slower than its publishers, must not lose any that way.
MOSQUITTO_MAX_QUEUED_MESSAGES: Final = 100_000
#: Mosquitto's own default for how often it writes its persistence file while running; it
#: also writes it when it stops on SIGTERM, which is what a restart relies on.
MOSQUITTO_AUTOSAVE_INTERVAL_S: Final = 1800
#: The name of the persistence file, in the runner's folder.
MOSQUITTO_PERSISTENCE_FILE: Final = "mosquitto.db"
#: Lines of the broker's log shown when it does not start.
_LOG_TAIL_LINES: Final = 20
_ACCEPT_POLL_S: Final = 0.02
_CONNECT_TIMEOUT_S: Final = 1.0


class ServerProcess(ABC):
    """A server run as a child process for tests and benchmarks: :meth:`start` returns once
    it serves, :meth:`stop` ends it; as a context manager, started on entry and stopped on
    exit."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MosquittoFailed(ProcessFailed):
    """Mosquitto could not be run, exited before it listened, or did not listen in time."""


def free_tcp_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on now on ``host`` (the operating system's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def accepts_connections(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _current_user() -> str | None:
    # A uid without a passwd entry (some containers) has no name to give Mosquitto; such a
    # user is not root, and Mosquitto only switches users when started as root.
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(cannot read {path}: {err.strerror})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(empty)"


class MosquittoProcess(ServerProcess):
    """A Mosquitto broker as a child process, with its configuration, logs and (optionally)
    persistence in ``folder``, listening on ``127.0.0.1:port`` only, anonymous clients allowed.

    ``port`` defaults to a free one, picked once: :meth:`stop` then :meth:`start` (or
    :meth:`restart`) bring the broker back on the same port, as a restarted server comes back
    at the same address. Each start writes ``mosquitto.conf`` again and logs to a file of its
    own, ``mosquitto-N.log`` for start N (:attr:`log_path`).

    With ``persistence`` Mosquitto keeps sessions, subscriptions and queued QoS 1 messages in
    ``folder/mosquitto.db``: written every ``autosave_interval_s`` and when it stops on
    SIGTERM, read back on the next start. The configuration then names the current user
    (``user``): started as root, Mosquitto would otherwise drop to the user ``mosquitto``,
    which cannot write the folder.

    With ``password_file`` (and ``acl_file``) Mosquitto checks logins and topics against
    those files, as written by :func:`owlgate.fleet.brokerauth.write_mosquitto_files`, and
    refuses anonymous clients unless ``allow_anonymous`` says otherwise (``allow_anonymous``
    None: allowed exactly when there is no password file). ``extra_config`` lines are
    appended to the configuration as they are. :meth:`reload` sends SIGHUP, on which
    Mosquitto re-reads both files.

    ``verbose`` runs it with ``-v`` (every connection and packet in the log). Blocking calls;
    also a context manager that starts and stops it::

        with MosquittoProcess(find_mosquitto() or "mosquitto", Path("broker")) as broker:
            print(broker.url)  # mqtt://127.0.0.1:PORT
    """

    def __init__(
        self,
        binary: str,
        folder: Path,
        port: int | None = None,
        *,
        persistence: bool = False,
        autosave_interval_s: int = MOSQUITTO_AUTOSAVE_INTERVAL_S,
        max_queued_messages: int = MOSQUITTO_MAX_QUEUED_MESSAGES,
        verbose: bool = True,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        allow_anonymous: bool | None = None,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.folder = folder
        self.host = LOOPBACK
        self.port = free_tcp_port(self.host) if port is None else port
        self.persistence = persistence
        self.autosave_interval_s = autosave_interval_s
        self.max_queued_messages = max_queued_messages
        self.verbose = verbose
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.password_file = password_file
        self.acl_file = acl_file
        self.allow_anonymous = password_file is None if allow_anonymous is None else allow_anonymous
        self.extra_config = extra_config
        #: How many times :meth:`start` launched the process.
        self.starts = 0
        #: The exit code of the latest process once it ended (negative: the signal that ended
        #: it); None before that.
        self.returncode: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``, as ``owlgate fleet serve --broker`` takes it."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.folder / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """The log of the latest start (``mosquitto-N.log``)."""
        return self.folder / f"mosquitto-{self.starts}.log"

    @property
    def persistence_path(self) -> Path:
        return self.folder / MOSQUITTO_PERSISTENCE_FILE

    @property
    def pid(self) -> int | None:
        """The running broker's process id; None while it is stopped."""
        return None if self._process is None else self._process.pid

    def config_text(self) -> str:
        """The configuration each start writes to :attr:`config_path`."""
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"max_queued_messages {self.max_queued_messages}",
        ]
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file.resolve()}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file.resolve()}")
        if self.persistence:
            lines += [
                "persistence true",
                # The trailing slash: Mosquitto joins location and file name as strings.
                f"persistence_location {self.folder.resolve()}/",
                f"persistence_file {MOSQUITTO_PERSISTENCE_FILE}",
                f"autosave_interval {self.autosave_interval_s}",
            ]
            user = _current_user()
            if user is not None:
                lines.append(f"user {user}")
        else:
            lines.append("persistence false")
        if not self.persistence and (self.password_file or self.acl_file):
            # Started as root, Mosquitto would drop to the user ``mosquitto`` before it reads
            # the files, which are private to the current user (mode 0600).
            user = _current_user()
            if user is not None:
                lines.append(f"user {user}")
        lines.extend(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start the broker and return once it accepts TCP connections; :class:`MosquittoFailed`
        (with the end of its log) when it cannot run, exits, or does not listen within
        ``start_timeout_s``. Does nothing while it runs."""
        if self._process is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.config_path.write_text(self.config_text())
        log_path = self.log_path
        args = [self.binary, "-c", str(self.config_path), *(["-v"] if self.verbose else [])]
        with log_path.open("wb") as out:
            try:
                process = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            except OSError as err:
                raise MosquittoFailed(
                    f"cannot run mosquitto {self.binary!r}: {err.strerror or err}"
                ) from err
        self._process = process
        deadline = time.monotonic() + self.start_timeout_s
        while not accepts_connections(self.host, self.port):
            code = process.poll()
            if code is not None:
                self._process = None
                self.returncode = code
                raise MosquittoFailed(
                    f"mosquitto {self.binary!r} exited with code {code} before it listened on "
                    f"{self.host}:{self.port}; {log_path} ends:\n{_log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise MosquittoFailed(
                    f"mosquitto {self.binary!r} did not listen on {self.host}:{self.port} "
                    f"within {self.start_timeout_s:.0f} s; {log_path} ends:\n"
                    f"{_log_tail(log_path)}"
                )
            time.sleep(_ACCEPT_POLL_S)
        log.info(
            "mosquitto pid %d listening on %s:%d (start %d)",
            process.pid,
            self.host,
            self.port,
            self.starts,
        )

    def stop(self) -> None:
        """SIGTERM (Mosquitto then writes its persistence file), SIGKILL if it has not ended
        within ``stop_timeout_s``; returns once the process is gone. Does nothing while it is
        stopped."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "mosquitto pid %d still running %.0f s after SIGTERM; killing it",
                    process.pid,
                    self.stop_timeout_s,
                )
                process.kill()
                process.wait()
        self.returncode = process.returncode
        log.info("mosquitto pid %d ended with code %s", process.pid, process.returncode)

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its password and ACL files (MosquittoFailed while it
        is stopped). The reload happens in the broker's next loop turn, after this returns."""
        process = self._process
        if process is None or process.poll() is not None:
            raise MosquittoFailed("mosquitto is not running: nothing to reload")
        process.send_signal(signal.SIGHUP)

    def restart(self) -> None:
        """:meth:`stop`, then :meth:`start` on the same port."""
        self.stop()
        self.start()


# --- PostgreSQL ---------------------------------------------------------------------------------

#: The line PostgreSQL logs once it accepts connections (after crash recovery, if any).
POSTGRES_READY_LINE: Final = "database system is ready to accept connections"
#: The superuser :class:`PostgresProcess` makes, whatever the operating-system user.
POSTGRES_SUPERUSER: Final = "postgres"
#: Who runs initdb and postgres when the caller is root (both refuse to run as root).
_POSTGRES_USERS: Final = ("postgres", "nobody")


class PostgresFailed(ProcessFailed):
    """PostgreSQL could not be set up or run, exited before it was ready, or was not ready
    in time."""


def find_postgres() -> Path | None:
    """The folder holding PostgreSQL's server programs (``initdb``, ``postgres``), or None:
    where ``postgres`` on PATH really lives, else the newest Debian install
    (``/usr/lib/postgresql/<version>/bin``, not on PATH)."""
    found = shutil.which("postgres")
    if found:
        folder = Path(found).resolve().parent
        if (folder / "initdb").is_file():
            return folder
    installs = [
        folder
        for folder in Path("/usr/lib/postgresql").glob("*/bin")
        if (folder / "postgres").is_file() and (folder / "initdb").is_file()
    ]

    def version(folder: Path) -> tuple[int, ...]:
        digits = re.findall(r"\d+", folder.parent.name)
        return tuple(int(d) for d in digits)

    return max(installs, key=version) if installs else None


class PostgresProcess(ServerProcess):
    """A PostgreSQL server as a child process: a new cluster (``initdb``, trust
    authentication, superuser ``postgres``) in a data folder of its own, listening on
    ``127.0.0.1:port`` only (``port`` defaults to a free one) and on a Unix socket in the
    data folder, its log in ``folder/postgres.log``.

    PostgreSQL refuses to run as root: started by root (CI runs as root), the data folder is
    made outside ``folder`` (whose parents the other user may not be allowed to enter, as
    pytest's are not) and owned by the first of the users ``postgres`` and ``nobody`` that
    exists, who runs both programs; it is removed when the server stops. Otherwise the data
    is ``folder/data``, kept.

    ``durable=False`` turns fsync, synchronous commit and full-page writes off: much faster
    for tests, and a crash of the machine may then corrupt the cluster. ``settings`` are
    more ``-c name=value`` options. Blocking calls; also a context manager that starts and
    stops it::

        with PostgresProcess(find_postgres() or Path("/usr/bin"), Path("pg")) as server:
            print(server.url())  # postgresql://postgres@127.0.0.1:PORT/postgres
    """

    def __init__(
        self,
        bin_folder: Path,
        folder: Path,
        port: int | None = None,
        *,
        durable: bool = True,
        settings: dict[str, str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.bin_folder = bin_folder
        self.folder = folder
        self.host = LOOPBACK
        self.port = free_tcp_port(self.host) if port is None else port
        self.durable = durable
        self.settings = dict(settings or {})
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        #: The data folder (the cluster); set by the first :meth:`start`.
        self.data: Path | None = None
        self._user: pwd.struct_passwd | None = None
        self._temporary_data = False
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:PORT/<database>``, as ``owlgate fleet serve
        --db`` takes it."""
        return f"postgresql://{POSTGRES_SUPERUSER}@{self.host}:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The running server's process id; None while it is stopped."""
        return None if self._process is None else self._process.pid

    def _run_as(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        for name in _POSTGRES_USERS:
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise PostgresFailed(
            "PostgreSQL refuses to run as root and none of the users "
            f"{', '.join(_POSTGRES_USERS)} exists: create one (useradd postgres)"
        )

    def _spawn(self, args: list[str], out: IO[bytes]) -> subprocess.Popen[bytes]:
        user = self._user
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=None if user is None else user.pw_uid,
                group=None if user is None else user.pw_gid,
                extra_groups=None if user is None else [],
                # The other user's home and locale: root's may be unreadable to it.
                env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
                cwd="/",
            )
        except OSError as err:
            raise PostgresFailed(f"cannot run {args[0]!r}: {err.strerror or err}") from err

    def _initdb(self) -> Path:
        import tempfile

        self._user = self._run_as()
        if self._user is None:
            data = self.folder / "data"
            if (data / "PG_VERSION").is_file():
                return data
        else:
            data = Path(tempfile.mkdtemp(prefix="owlgate-pg-"))
            os.chown(data, self._user.pw_uid, self._user.pw_gid)
            self._temporary_data = True
        init_log = self.folder / "initdb.log"
        with init_log.open("wb") as out:
            process = self._spawn(
                [
                    str(self.bin_folder / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    POSTGRES_SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                out,
            )
            try:
                code = process.wait(self.start_timeout_s * 3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = None
        if code != 0:
            self._remove_data(data)
            raise PostgresFailed(
                f"initdb {self.bin_folder / 'initdb'} failed (exit {code}); {init_log} ends:\n"
                f"{_log_tail(init_log)}"
            )
        return data

    def start(self) -> None:
        """Make the cluster (first start) and start the server; return once it accepts
        connections. :class:`PostgresFailed` (with the end of its log) when it cannot run,
        exits, or is not ready within ``start_timeout_s``. Does nothing while it runs."""
        if self._process is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.data is None:
            self.data = self._initdb()
        options = dict(self.settings)
        if not self.durable:
            options = {
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                **options,
            }
        args = [
            str(self.bin_folder / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-h",
            self.host,
            "-k",
            str(self.data),
        ]
        for name, value in options.items():
            args += ["-c", f"{name}={value}"]
        log_path = self.log_path
        with log_path.open("wb") as out:
            process = self._spawn(args, out)
        self._process = process
        deadline = time.monotonic() + self.start_timeout_s
        while not (
            POSTGRES_READY_LINE in log_path.read_text(errors="replace")
            and accepts_connections(self.host, self.port)
        ):
            code = process.poll()
            if code is not None:
                self._process = None
                raise PostgresFailed(
                    f"postgres exited with code {code} before it was ready on "
                    f"{self.host}:{self.port}; {log_path} ends:\n{_log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresFailed(
                    f"postgres was not ready on {self.host}:{self.port} within "
                    f"{self.start_timeout_s:.0f} s; {log_path} ends:\n{_log_tail(log_path)}"
                )
            time.sleep(_ACCEPT_POLL_S)
        log.info("postgres pid %d ready on %s:%d", process.pid, self.host, self.port)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open sessions are ended, the data is kept consistent),
        SIGKILL if it has not ended within ``stop_timeout_s``; then the data folder is
        removed if it was a temporary one. Does nothing while it is stopped."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "postgres pid %d still running %.0f s after SIGINT; killing it",
                    process.pid,
                    self.stop_timeout_s,
                )
                process.kill()
                process.wait()
        if self._temporary_data and self.data is not None:
            self._remove_data(self.data)
            self.data = None

    def _remove_data(self, data: Path) -> None:
        if self._temporary_data:
            shutil.rmtree(data, ignore_errors=True)
            self._temporary_data = False
