"""Child processes as a user starts them: ``python -m owlgate.codecs.cli ...``, the output
copied to a log file and watched for the lines that say a part is up (``LINK <path>``,
``Uvicorn running on ...``, ``ready: ...``). Used by ``owlgate demo`` and the benchmarks that
run the whole system."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Final

from ..codecs.errors import OwlgateError

MODULE: Final = "owlgate.codecs.cli"
START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0


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

    def __init__(self, name: str, args: list[str], log_path: Path, *, stdin: bool = False) -> None:
        self.name = name
        self.log: IO[str] = log_path.open("w")
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
