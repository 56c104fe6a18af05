"""Emulated modules for the provisioning tests, served from an event loop in a thread.

The provisioning tool is synchronous (pyserial, httpx, typer), as a technician's command
is; the emulators live in an asyncio loop. :class:`ModuleBench` runs that loop in a thread
and hands out emulated modules on ptys the tool opens by path.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from typer.testing import CliRunner

from owlgate.codecs.cli import app
from owlgate.hil.processes import ChildProcess, children_stopped_at_exit
from owlgate.hil.rak3172_lorawan import EmulatedRak3172LoRaWAN, EmulatedSerialModule
from owlgate.hil.rn2483 import EmulatedRn2483

T = TypeVar("T")
M = TypeVar("M", bound=EmulatedSerialModule)
TIMEOUT_S = 10.0


class ModuleBench:
    """An event loop in a thread that serves emulated modules (closed at the end)."""

    def __init__(self, link_dir: Path) -> None:
        self.link_dir = link_dir
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._modules: list[EmulatedSerialModule] = []
        self._count = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(TIMEOUT_S)

    def call(self, function: Callable[[], T]) -> T:
        async def run() -> T:
            return function()

        return self.run(run())

    def _start(self, module: M) -> M:
        self.run(module.start())
        self._modules.append(module)
        return module

    def rak(self, dev_eui: bytes | None = None, **kwargs: Any) -> EmulatedRak3172LoRaWAN:
        self._count += 1
        eui = dev_eui or bytes.fromhex("AC1F09FFFE") + secrets.token_bytes(3)

        async def make() -> EmulatedRak3172LoRaWAN:
            return EmulatedRak3172LoRaWAN(
                self.link_dir, link_name=f"ttyRAK{self._count}", dev_eui=eui, **kwargs
            )

        return self._start(self.run(make()))

    def rn(self, hweui: bytes | None = None, **kwargs: Any) -> EmulatedRn2483:
        self._count += 1
        eui = hweui or bytes.fromhex("0004A30B00") + secrets.token_bytes(3)

        async def make() -> EmulatedRn2483:
            return EmulatedRn2483(
                self.link_dir, link_name=f"ttyRN{self._count}", hweui=eui, **kwargs
            )

        return self._start(self.run(make()))

    def close(self) -> None:
        for module in self._modules:
            self.run(module.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT_S)
        self.loop.close()


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[ModuleBench]:
    bench = ModuleBench(tmp_path / "dev")
    try:
        yield bench
    finally:
        bench.close()


# --- a real fleet, for the node tool -------------------------------------------------------------


class NodeFleet:
    """``owlgate fleet serve`` on a seeded SQLite database, and tokens for it."""

    def __init__(self, db: Path, http_url: str, folder: Path) -> None:
        self.db = db
        self.http_url = http_url
        self.folder = folder
        self._tokens = 0

    def token_file(self, role: str = "technician") -> Path:
        """A new API token of ``role`` in a 0600 file (``owlgate fleet token create --out``)."""
        self._tokens += 1
        out = self.folder / f"{role}-{self._tokens}.token"
        made = CliRunner().invoke(
            app,
            ["fleet", "token", "create", "--db", str(self.db), "--role", role,
             "--name", f"{role} {self._tokens}", "--out", str(out)],
        )  # fmt: skip
        assert made.exit_code == 0, made.output
        return out

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        token = (self.folder / "admin-token").read_text().strip()
        return httpx.request(
            method,
            self.http_url + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
            **kwargs,
        )


@pytest.fixture(scope="module")
def node_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFleet]:
    folder = tmp_path_factory.mktemp("node-fleet")
    db = folder / "fleet.db"
    seeded = CliRunner().invoke(
        app, ["fleet", "seed", "--db", str(db), "--gateways", "0", "--nodes", "0"]
    )
    assert seeded.exit_code == 0, seeded.output
    with children_stopped_at_exit() as children:
        serve = ChildProcess(
            "fleet", ["fleet", "serve", "--db", str(db), "--http-port", "0"], folder / "fleet.log"
        )
        children.append(serve)
        http_url = serve.expect(r"Uvicorn running on (http://\S+)").group(1)
        yield NodeFleet(db, http_url, folder)
