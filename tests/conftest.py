"""Fixtures shared by every suite.

Tests that need an outside program (Node for MicroPython and lora-packet, later Mosquitto,
PostgreSQL, Chromium) ask for it through :func:`require_binary`: it skips locally when the
program is missing, and fails under ``CI=true``, where a missing program is a broken CI image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# No per-example deadline: a loaded two-core CI machine must not turn a slow example into a
# failure (speed is measured by the benchmarks, not here). Under CI the examples are
# derandomised, so a red run can be reproduced exactly.
settings.register_profile("default", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO.parent / "shared" / "vectors"


def require_binary(name: str, hint: str) -> str:
    """Return the path of ``name``; skip the test without it (fail under CI=true)."""
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} not found: {hint}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: a missing binary is a failure)")
    pytest.skip(message)


def require_node_module(module: str) -> str:
    """Return the node binary when ``node_modules/<module>`` is installed (see ``make node``)."""
    node = require_binary("node", "install Node.js (Debian package nodejs)")
    if not (REPO / "node_modules" / module).is_dir():
        message = f"node module {module} missing: run `make node` (npm ci)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return node


@pytest.fixture(scope="session")
def lorawan_vectors() -> dict[str, Any]:
    path = VECTORS / "lorawan-public.json"
    if not path.exists():
        path = REPO / "tests" / "data" / "lorawan-public.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def typed_error_or_none(
    expected: type[Exception], func: Callable[..., object], *args: object
) -> Exception | None:
    """Call ``func``; return the ``expected`` error it raised, or None. Any other error fails.

    For fuzz properties: on arbitrary input a decoder may refuse, but only with its typed error.
    """
    try:
        func(*args)
    except expected as err:
        return err
    return None


MicroPython = Callable[[str], str]


@pytest.fixture(scope="session")
def micropython(tmp_path_factory: pytest.TempPathFactory) -> MicroPython:
    """Run a script on real MicroPython with ``owlgate.codecs.node`` importable; return stdout."""
    node = require_node_module("@micropython/micropython-webassembly-pyscript")
    folder = tmp_path_factory.mktemp("mpy")
    counter = iter(range(1_000_000))

    def run(code: str) -> str:
        script = folder / f"script{next(counter)}.py"
        script.write_text(code)
        done = subprocess.run(
            [node, str(REPO / "tests" / "tools" / "mpy_run.mjs"), str(REPO), str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        if done.returncode != 0:
            raise AssertionError(f"MicroPython failed:\n{done.stderr}\n{done.stdout}")
        return done.stdout

    return run
