"""``owlgate demo``: the main job of ``make demo``. Today the codec showcase
(:mod:`owlgate.hil.showcase`), printed hop by hop."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .showcase import Showcase, run_showcase

demo_command = typer.Typer(
    name="demo",
    help="Run the owlgate demonstration: one sensor reading along the whole wire path.",
    add_completion=False,
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
    console.print(f"[bold]owlgate demo[/] — seed {show.seed} (repeat with --seed {show.seed})")
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


@demo_command.callback(invoke_without_command=True)
def demo(
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
