"""``owlgate edge``: run the gateway agent.

``owlgate edge run --config FILE`` loads and validates the configuration (and the key files
it names) before anything starts: a bad file is one line, ``error: ...``, on stderr and exit
code 2. Then the agent runs until SIGTERM or SIGINT, which stop it cleanly (the batch held is
sealed, the uplink says ``offline``). Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated, Final

import typer

from .agent import EdgeAgent
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


async def _run_until_signalled(agent: EdgeAgent) -> None:
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, agent.stop)
    try:
        await agent.run()
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)


@edge_command.command("run")
def run(
    config: Annotated[Path, typer.Option("--config", help="the agent's TOML configuration file")],
    verbose: Annotated[bool, typer.Option("--verbose", help="log at debug level")] = False,
) -> None:
    """Run the gateway agent with the configuration in FILE until SIGTERM or SIGINT."""
    try:
        settings = load_config(config)
        keys = load_keys(settings)
    except ConfigError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from err
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger(__name__).info(
        "gateway %s starting: radio %s, MQTT %s:%d",
        settings.gateway.gateway_id_hex,
        settings.radio.port,
        settings.mqtt.host,
        settings.mqtt.port,
    )
    asyncio.run(_run_until_signalled(EdgeAgent(settings, keys=keys)))
