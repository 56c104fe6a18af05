"""``owlgate demo``: the whole system on one machine (issue #3).

Seeds a fleet into a work folder, starts ``owlgate fleet serve`` (with its embedded broker
unless ``--broker`` names one), then per gateway an emulated concentrator with its devices
(``owlgate hil gateway``) and an edge agent (``owlgate edge run``), each a separate process
whose log goes to the work folder. It prints the API URL and progress, and at the end compares
what the emulators generated with what the API stored. Exit code 1 if a reading is missing.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

demo_command = typer.Typer(
    name="demo",
    help="Run the whole system: fleet, broker, emulated gateways and devices, edge agents.",
    add_completion=False,
)

_MODULE = "owlgate.codecs.cli"
_START_TIMEOUT_S = 20.0
_DRAIN_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 10.0
_PROGRESS_S = 5.0
_INTERVAL_S = 3.0


class DemoFailed(Exception):
    """A child process did not start as expected."""


@dataclass(frozen=True, slots=True)
class Summary:
    """Generated against stored readings; ``duplicates`` counts readings heard by several
    gateways and merged into one (more than one reception)."""

    generated: int
    stored: int
    missing: int
    unexpected: int
    duplicates: int

    @property
    def ok(self) -> bool:
        return self.missing == 0


def edge_config(gateway: dict[str, Any], *, state_dir: Path, port: str, mqtt_url: str) -> str:
    """The edge agent's TOML configuration for one seeded gateway (docs/edge.md)."""
    keys = Path(gateway["keys_dir"])

    def q(value: object) -> str:
        return json.dumps(str(value))

    return (
        "[gateway]\n"
        f"id = {q(gateway['id'])}\n"
        f"state_dir = {q(state_dir)}\n"
        f"identity_key = {q(keys / 'identity-ed25519.pem')}\n"
        f"sealing_key = {q(keys / 'sealing-x25519.pem')}\n"
        f"fleet_key = {q(keys / 'fleet-ed25519.pub.pem')}\n\n"
        "[radio]\n"
        f"port = {q(port)}\n\n"
        "[mqtt]\n"
        f"url = {q(mqtt_url)}\n"
    )


def summarise(reports: list[dict[str, Any]], stored: dict[str, list[dict[str, Any]]]) -> Summary:
    """Compare the emulators' reports with the readings the API returned per device."""
    generated = {(r["dev_eui"], r["fcnt"]) for rep in reports for r in rep["readings"]}
    kept = {(eui, item["fcnt"]) for eui, items in stored.items() for item in items}
    duplicates = sum(
        1 for items in stored.values() for item in items if len(item.get("receptions", [])) > 1
    )
    return Summary(
        generated=len(generated),
        stored=len(kept & generated),
        missing=len(generated - kept),
        unexpected=len(kept - generated),
        duplicates=duplicates,
    )


class _Child:
    """A child process with its output copied to a log file and watched for patterns."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.log: IO[str] = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", _MODULE, *args],
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

    def expect(self, pattern: str, timeout_s: float = _START_TIMEOUT_S) -> re.Match[str]:
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
                    raise DemoFailed(f"{self.name}: no line matching {pattern!r} (see its log)")
                self._seen.wait(min(left, 0.5))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not end in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(_STOP_TIMEOUT_S)
        self.log.close()


@contextmanager
def _children() -> Iterator[list[_Child]]:
    started: list[_Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def _stored(client: httpx.Client, euis: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for eui in euis:
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if after is not None:
                params["after"] = after
            page = client.get(f"/api/v1/nodes/{eui}/readings", params=params).json()
            items.extend(page["items"])
            after = page.get("next")
            if not after:
                break
        out[eui] = items
    return out


def run_demo(
    *,
    gateways: int,
    nodes: int,
    duration: float | None,
    http_port: int,
    broker: str | None,
    workdir: Path,
    seed: int,
    console: Console,
) -> Summary:
    """Run the system as the module docstring says; returns the summary."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "fleet.db"
    seeded = subprocess.run(
        [sys.executable, "-m", _MODULE, "fleet", "seed", "--db", str(db),
         "--gateways", str(gateways), "--nodes", str(nodes), "--seed", str(seed)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    (workdir / "seed.log").write_text(seeded.stdout + seeded.stderr)
    if seeded.returncode != 0:
        raise DemoFailed(f"fleet seed failed: {seeded.stderr.strip()}")
    manifest_path = workdir / "emulator-secrets.json"
    manifest = json.loads(manifest_path.read_text())
    euis = [d["dev_eui"] for d in manifest["devices"]]
    gws = manifest["gateways"]
    reports: list[dict[str, Any]] = []
    with _children() as children:
        serve = ["fleet", "serve", "--db", str(db), "--http-port", str(http_port)]
        serve += ["--signing-key", manifest["fleet_signing_key"]]
        if broker is not None:
            serve += ["--broker", broker]
        fleet = _Child("fleet", serve, workdir / "fleet.log")
        children.append(fleet)
        mqtt_url = fleet.expect(r"MQTT broker: (mqtt://\S+)").group(1)
        api_url = fleet.expect(r"Uvicorn running on (http://\S+)").group(1)
        emulators: list[_Child] = []
        for index, gw in enumerate(gws):
            mine = euis[index :: len(gws)]
            gw_dir = workdir / gw["id"]
            gw_dir.mkdir(exist_ok=True)
            args = ["hil", "gateway", "--link-dir", str(gw_dir), "--manifest", str(manifest_path),
                    "--gateway", gw["id"], "--devices", ",".join(mine),
                    "--interval-s", str(_INTERVAL_S), "--report", str(gw_dir / "report.json"),
                    "--seed", str(seed + index * 1000)]  # fmt: skip
            emulator = _Child(f"emulator {gw['id']}", args, gw_dir / "emulator.log")
            children.append(emulator)
            emulators.append(emulator)
            link = emulator.expect(r"^LINK (\S+)").group(1)
            config = gw_dir / "edge.toml"
            config.write_text(
                edge_config(gw, state_dir=gw_dir / "state", port=link, mqtt_url=mqtt_url)
            )
            children.append(
                _Child(f"edge {gw['id']}", ["edge", "run", "--config", str(config)],
                       gw_dir / "edge.log")
            )  # fmt: skip
        console.print(f"API: [bold]{api_url}[/]  (e.g. {api_url}/api/v1/nodes)")
        console.print(f"broker: {mqtt_url}; work folder and logs: {workdir}")
        client = httpx.Client(base_url=api_url, timeout=10.0)
        with ExitStack() as stack:
            stack.callback(client.close)
            start = time.monotonic()
            try:
                while duration is None or time.monotonic() - start < duration:
                    time.sleep(
                        min(_PROGRESS_S, max(0.0, (duration or 1e9) - (time.monotonic() - start)))
                    )
                    elapsed = time.monotonic() - start
                    try:
                        count = sum(len(v) for v in _stored(client, euis).values())
                    except httpx.HTTPError as err:
                        console.print(f"{elapsed:5.0f} s: the API did not answer ({err})")
                        continue
                    console.print(f"{elapsed:5.0f} s: {count} readings stored")
            except KeyboardInterrupt:
                console.print("stopping…")
            for emulator in emulators:
                emulator.stop()
            for gw in gws:
                report = workdir / gw["id"] / "report.json"
                if report.exists():
                    reports.append(json.loads(report.read_text()))
                else:
                    raise DemoFailed(f"emulator {gw['id']} wrote no report")
            deadline = time.monotonic() + _DRAIN_TIMEOUT_S
            while True:
                summary = summarise(reports, _stored(client, euis))
                if summary.ok or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    return summary


def render(summary: Summary, console: Console) -> None:
    """The end-of-run table."""
    table = Table(title="owlgate demo summary", title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("readings generated", str(summary.generated))
    table.add_row("readings stored", str(summary.stored))
    table.add_row("readings missing", str(summary.missing))
    table.add_row("stored but not generated", str(summary.unexpected))
    table.add_row("duplicates merged", str(summary.duplicates))
    table.add_row("rejected", "n/a (the API exposes no ingest counters; see the edge logs)")
    console.print(table)
    if summary.ok:
        console.print("[green]every generated reading was stored[/]")
    else:
        console.print(f"[red]{summary.missing} generated readings are missing[/]")


@demo_command.callback(invoke_without_command=True)
def demo(
    gateways: Annotated[int, typer.Option("--gateways", min=1, help="emulated gateways")] = 3,
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="emulated devices")] = 60,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=1, help="seconds to run (default: until Ctrl-C)"),
    ] = None,
    http_port: Annotated[
        int, typer.Option("--http-port", min=0, max=65535, help="API port (0: any free port)")
    ] = 8080,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker", metavar="mqtt://HOST:PORT", help="MQTT broker (default: embedded)"
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="folder for the database, keys and logs (default: new)"),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="seed for ids, keys and values")
    ] = None,
) -> None:
    """Run fleet, broker, emulated gateways and devices and edge agents; at the end compare
    generated and stored readings. Exit code 1 if any generated reading is missing."""
    console = Console()
    folder = workdir or Path(tempfile.mkdtemp(prefix="owlgate-demo-"))
    chosen = secrets.randbelow(2**31) if seed is None else seed
    console.print(f"[bold]owlgate demo[/] — work folder {folder}, seed {chosen}")
    try:
        summary = run_demo(
            gateways=gateways, nodes=nodes, duration=duration, http_port=http_port,
            broker=broker, workdir=folder, seed=chosen, console=console,
        )  # fmt: skip
    except DemoFailed as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from err
    render(summary, console)
    if not summary.ok:
        raise typer.Exit(1)
