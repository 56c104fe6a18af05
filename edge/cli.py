"""``owlgate edge``: run the gateway agent.

``owlgate edge run --config FILE`` loads and validates the configuration (and the key files
it names) before anything starts: a bad file is one line, ``error: ...``, on stderr and exit
code 2. Then it replaces itself (``exec``, same process id) with the agent's lean process,
``python -m owlgate.edge`` (:mod:`owlgate.edge.runtime`), which runs until SIGTERM or SIGINT;
they stop it cleanly (the batch held is sealed, the uplink says ``offline``). Logs go to
stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Final

import typer

from .config import load_config, load_keys
from .errors import ConfigError

EXIT_BAD_INPUT: Final = 2

edge_command = typer.Typer(
    name="edge",
    help="The gateway agent: radio, LoRaWAN, telemetry to the fleet.",
    no_args_is_help=True,
    add_completion=False,
)


@edge_command.callback()
def edge() -> None:
    """The gateway agent: radio, LoRaWAN, telemetry to the fleet."""


@edge_command.command("run")
def run(
    config: Annotated[Path, typer.Option("--config", help="the agent's TOML configuration file")],
    verbose: Annotated[bool, typer.Option("--verbose", help="log at debug level")] = False,
) -> None:
    """Run the gateway agent with the configuration in FILE until SIGTERM or SIGINT."""
    try:
        load_keys(load_config(config))
    except ConfigError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from err
    # The agent runs without this command line's framework in memory (edge/runtime.py).
    command = [sys.executable, "-m", "owlgate.edge", "--config", str(config)]
    if verbose:
        command.append("--verbose")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
