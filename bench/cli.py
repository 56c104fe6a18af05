"""``owlgate bench``: run the benchmarks, print a table, optionally write JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import (
    api_bench,
    codec_bench,
    e2e_bench,
    edge_bench,
    fleet_bench,
    hil_bench,
    hil_run_bench,
    offline_bench,
    ota_bench,
    provision_bench,
    serial_bench,
    ui_bench,
)
from .figures import Figure

SUITES = {
    "codec": codec_bench.run,
    "edge": edge_bench.run,
    "fleet": fleet_bench.run,
    "e2e": e2e_bench.run,
    "offline": offline_bench.run,
    "api": api_bench.run,
    "serial": serial_bench.run,
    "ota": ota_bench.run,
    "provision": provision_bench.run,
    "hil": hil_bench.run,
    "hil-run": hil_run_bench.run,
    "ui": ui_bench.run,
}

bench_command = typer.Typer(
    name="bench",
    help="Measure owlgate's speed and size figures on this machine.",
    add_completion=False,
)


def to_json(figures: list[Figure]) -> dict[str, object]:
    """One flat object: every figure and its comparisons by name, then goals and context."""
    result: dict[str, object] = {}
    goals: dict[str, dict[str, float]] = {}
    medians: dict[str, float] = {}
    for figure in figures:
        result[figure.name] = round(figure.value, 3)
        for other, value in figure.comparisons.items():
            result[f"{figure.name}.{other}"] = round(value, 3)
        goal = {}
        if figure.goal_max is not None:
            goal["max"] = figure.goal_max
        if figure.goal_min is not None:
            goal["min"] = figure.goal_min
        if goal:
            goals[figure.name] = goal
        if figure.median is not None:
            medians[figure.name] = round(figure.median, 3)
    result["goals"] = goals
    result["medians"] = medians
    result["units"] = {figure.name: figure.unit for figure in figures}
    result["meta"] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    return result


def render(figures: list[Figure], console: Console) -> None:
    table = Table(title="owlgate benchmarks")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("goal", justify="right")
    table.add_column("", justify="center")
    table.add_column("compared with")
    for figure in figures:
        goal = ""
        if figure.goal_max is not None:
            goal = f"≤ {figure.goal_max:g}"
        elif figure.goal_min is not None:
            goal = f"≥ {figure.goal_min:g}"
        verdict = {True: "[green]meets[/]", False: "[red]misses[/]", None: ""}[figure.meets_goal]
        others = ", ".join(f"{name} {value:,.1f}" for name, value in figure.comparisons.items())
        table.add_row(figure.name, f"{figure.value:,.2f}", figure.unit, goal, verdict, others)
    console.print(table)


@bench_command.callback(invoke_without_command=True)
def bench(
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="also write the figures here")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="fewer rounds: a smoke run, not a measurement")
    ] = False,
    suite: Annotated[
        list[str] | None, typer.Option("--suite", help=f"run only these: {', '.join(SUITES)}")
    ] = None,
) -> None:
    """Run the benchmarks and print each figure beside its goal."""
    chosen = suite or list(SUITES)
    unknown = [name for name in chosen if name not in SUITES]
    if unknown:
        known = ", ".join(SUITES)
        typer.echo(f"error: unknown suite {', '.join(unknown)}; known: {known}", err=True)
        raise typer.Exit(2)
    figures: list[Figure] = []
    for name in chosen:
        figures.extend(SUITES[name](quick=quick))
    render(figures, Console())
    if json_path is not None:
        json_path.write_text(json.dumps(to_json(figures), indent=2) + "\n")
        typer.echo(f"wrote {json_path}")
