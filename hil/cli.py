"""``owlgate hil``: hardware-in-the-loop tools. ``showcase`` prints the codec showcase
(:mod:`owlgate.hil.showcase`) hop by hop; ``gateway`` runs one emulated gateway's radio side
(:mod:`owlgate.hil.gateway_emulator`) for ``owlgate demo``."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .gateway_emulator import EmulatorError, emulate, write_report
from .showcase import Showcase, run_showcase

hil_command = typer.Typer(
    name="hil",
    help="Hardware-in-the-loop tools: the codec showcase and the emulated gateway.",
    add_completion=False,
    no_args_is_help=True,
)

_HEX_SHOWN = 24


def _hex(data: bytes) -> str:
    if len(data) <= _HEX_SHOWN:
        return data.hex()
    return data[:_HEX_SHOWN].hex() + "…"


def _mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[red]✗[/]"


def render(show: Showcase, console: Console) -> None:
    """Print a showcase: the hops, the refused faults, the size comparison, a verdict."""
    console.print(
        f"[bold]owlgate hil showcase[/] — seed {show.seed} (repeat with --seed {show.seed})"
    )
    hops = Table(title="One parking reading, hop by hop", title_justify="left")
    hops.add_column("#", justify="right")
    hops.add_column("hop")
    hops.add_column("bytes", justify="right")
    hops.add_column("hex")
    hops.add_column("decoded back")
    hops.add_column("", justify="center")
    for number, hop in enumerate(show.hops, 1):
        hops.add_row(
            str(number),
            f"{hop.name}\n[dim]{hop.wire}[/]",
            str(len(hop.data)),
            _hex(hop.data),
            hop.decoded,
            _mark(hop.ok),
        )
    console.print(hops)

    faults = Table(title="Bad input, refused", title_justify="left")
    faults.add_column("injected")
    faults.add_column("what the receiver did")
    faults.add_column("", justify="center")
    for fault in show.faults:
        faults.add_row(fault.name, fault.outcome, _mark(fault.ok))
    console.print(faults)

    sizes = Table(title="The same readings in other formats", title_justify="left")
    sizes.add_column("format")
    sizes.add_column("one reading, bytes", justify="right")
    sizes.add_column(f"per reading in a batch of {show.readings}", justify="right")
    for size in show.sizes:
        sizes.add_row(size.format, str(size.bytes_single), f"{size.bytes_per_reading:.1f}")
    console.print(sizes)

    if show.ok:
        console.print("[green]every hop decoded back to what was sent; every fault was refused[/]")
    else:
        console.print("[red]a hop did not decode back, or a fault was not refused: see ✗ above[/]")


@hil_command.command("showcase")
def showcase(
    readings: Annotated[
        int,
        typer.Option("--readings", min=1, max=10_000, help="batch size for the size comparison"),
    ] = 100,
    seed: Annotated[
        int | None,
        typer.Option("--seed", min=0, help="seed for values and keys (default: a fresh one)"),
    ] = None,
) -> None:
    """One parking reading from an emulated sensor along the whole wire path, every hop
    decoded back; then corrupted and forged input, refused. Exit code 1 if any check fails."""
    chosen = secrets.randbelow(2**32) if seed is None else seed
    show = run_showcase(chosen, readings)
    render(show, Console())
    if not show.ok:
        raise typer.Exit(1)


@hil_command.command("gateway")
def gateway(
    link_dir: Annotated[
        Path, typer.Option("--link-dir", help="folder for the concentrator's pty symlink")
    ],
    manifest: Annotated[
        Path, typer.Option("--manifest", help="emulator secrets written by `fleet seed`")
    ],
    gateway_id: Annotated[str, typer.Option("--gateway", help="the gateway's EUI, 16 hex")],
    devices: Annotated[
        str | None,
        typer.Option("--devices", help="comma-separated DevEUIs to emulate (default: all)"),
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", min=0, help="stop after S seconds")
    ] = None,
    interval_s: Annotated[
        float, typer.Option("--interval-s", min=0.1, help="seconds between a device's uplinks")
    ] = 5.0,
    report: Annotated[
        Path | None, typer.Option("--report", help="JSON file of every generated reading")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="seed for values and jitter")] = 0,
    wait_for_start: Annotated[
        bool,
        typer.Option("--wait-for-start", help="devices wait for the line `start` on stdin"),
    ] = False,
    air_port: Annotated[
        int | None,
        typer.Option(
            "--air-port",
            min=1,
            max=65535,
            help="UDP port on 127.0.0.1 where neighbours send frames this gateway also hears",
        ),
    ] = None,
    neighbour_ports: Annotated[
        list[int] | None,
        typer.Option(
            "--neighbour-port",
            min=1,
            max=65535,
            help="a neighbour's air port: it hears the --shared-devices too (repeatable)",
        ),
    ] = None,
    shared_devices: Annotated[
        str | None,
        typer.Option(
            "--shared-devices", help="comma-separated DevEUIs the neighbours hear as well"
        ),
    ] = None,
    tx_air_ports: Annotated[
        list[int] | None,
        typer.Option(
            "--tx-air-port",
            min=1,
            max=65535,
            help="also send every frame the concentrator transmits (a join accept, a downlink)"
            " to this UDP port on 127.0.0.1, where an emulated module listens (repeatable)",
        ),
    ] = None,
    hostile_every: Annotated[
        int,
        typer.Option(
            "--hostile-every",
            min=0,
            help="after every N-th uplink send one bad input (replay, bad MIC, bad CRC, "
            "line noise); 0: never",
        ),
    ] = 0,
) -> None:
    """Run an emulated concentrator and its devices until SIGTERM, SIGINT or --duration;
    prints `LINK <path>` first, then writes the report."""
    euis = None if devices is None else [e for e in devices.split(",") if e]
    shared = None if shared_devices is None else [e for e in shared_devices.split(",") if e]
    try:
        secrets_file = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        typer.echo(f"error: --manifest {manifest}: {err}", err=True)
        raise typer.Exit(2) from err
    try:
        run = asyncio.run(
            emulate(
                link_dir=link_dir,
                manifest=secrets_file,
                gateway_id=gateway_id,
                dev_euis=euis,
                duration_s=duration,
                interval_s=interval_s,
                seed=seed,
                wait_for_start=wait_for_start,
                air_port=air_port,
                neighbour_ports=tuple(neighbour_ports or ()),
                shared=shared,
                hostile_every=hostile_every,
                tx_air_ports=tuple(tx_air_ports or ()),
            )
        )
    except EmulatorError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from err
    if report is not None:
        write_report(run, report)
    hostile = sum(run.hostile.values())
    typer.echo(
        f"generated {len(run.readings)} readings, {run.joins} joins; {run.relayed} uplinks "
        f"also sent to neighbours, {run.heard} heard from neighbours; {hostile} bad inputs"
    )


@hil_command.command("run")
def run(
    scenario: Annotated[
        str, typer.Argument(help="a scenario file, or the name of a shipped one (bielefeld)")
    ],
    speed: Annotated[
        float,
        typer.Option(
            "--speed", min=0.01, help="simulated seconds per wall second (288: a day in 5 minutes)"
        ),
    ] = 60.0,
    duration: Annotated[
        str | None,
        typer.Option("--duration", help="simulate this long instead (90s, 15m, 2h, 1d)"),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            help="folder for the fleet, the agents, logs and the report [a new temporary folder]",
        ),
    ] = None,
    broker: Annotated[
        str,
        typer.Option("--broker", help="embedded (the fleet's) or mosquitto (started here)"),
    ] = "embedded",
    seed: Annotated[
        int | None, typer.Option("--seed", help="placement, traffic and keys [the scenario's]")
    ] = None,
    otaa_every: Annotated[
        int, typer.Option("--otaa-every", min=0, help="every N-th sensor joins by OTAA; 0: none")
    ] = 10,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write the PNG plots")] = True,
) -> None:
    """Run a scenario against real edge agents and a real fleet, faster than real time, and
    write a report (report.md, report.json, PNG plots) into the work folder. Exit code 1 if
    a frame was lost for no reason the run can name."""
    import tempfile

    from .report import write_report as write_run_report
    from .run import RunFailed, RunSettings, RunStopped, resolve_scenario, run_scenario
    from .scenario import ScenarioError, parse_duration

    console = Console()
    if broker not in ("embedded", "mosquitto"):
        typer.echo(f"error: --broker must be embedded or mosquitto, got {broker!r}", err=True)
        raise typer.Exit(2)
    try:
        duration_s = None if duration is None else parse_duration(duration)
    except ValueError as err:
        typer.echo(f"error: --duration: {err}", err=True)
        raise typer.Exit(2) from err
    folder = workdir or Path(tempfile.mkdtemp(prefix="owlgate-hil-run-"))
    try:
        settings = RunSettings(
            scenario=resolve_scenario(scenario),
            workdir=folder,
            speed=speed,
            duration_s=duration_s,
            broker="mosquitto" if broker == "mosquitto" else "embedded",
            seed=seed,
            otaa_every=otaa_every,
            plots=plots,
        )
        result = asyncio.run(run_scenario(settings, say=lambda line: console.print(line)))
    except RunStopped as err:
        typer.echo(err.message, err=True)
        raise typer.Exit(143) from err
    except (RunFailed, ScenarioError) as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from err
    except KeyboardInterrupt as err:
        typer.echo("interrupted: every process was stopped", err=True)
        raise typer.Exit(130) from err
    report = write_run_report(result, folder / "report")
    totals, latency = report["totals"], report["latency_s"]
    table = Table(title=f"scenario {report['scenario']['name']}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("simulated / wall", f"{result.duration_s:.0f} s / {result.wall_s:.1f} s")
    table.add_row("frames sent", str(totals["frames_sent"]))
    table.add_row("frames stored", str(totals["frames_stored"]))
    delivery = totals["delivery"]
    table.add_row("delivery", "-" if delivery is None else f"{delivery * 100:.2f} %")
    table.add_row("latency p50 / p99", f"{latency['p50']} s / {latency['p99']} s")
    for cause, count in totals["lost_by_cause"].items():
        table.add_row(f"lost: {cause}", str(count))
    table.add_row("alerts raised", str(len(report["alerts"])))
    console.print(table)
    console.print(f"report: {folder / 'report' / 'report.md'}")
    if totals["unexplained"]:
        console.print(f"[red]{totals['unexplained']} frames lost for no known reason[/]")
        raise typer.Exit(1)
