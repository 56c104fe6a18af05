"""The agent's process: ``python -m owlgate.edge --config FILE [--verbose]``.

``owlgate edge run`` checks the configuration and then replaces itself with this (``exec``):
the agent then runs without the command-line framework in memory (typer, click, rich and the
pydantic that typer uses for its parameters cost about 15 MB of resident memory, a quarter of
the agent's budget on a Raspberry Pi; see ``edge.rss_mb`` in docs/bench.md). It keeps the
process id, so a service manager or a parent process sees one process from start to stop.

Only the standard library and the agent's own modules are imported here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from .agent import EdgeAgent
from .config import load_config, load_keys
from .errors import ConfigError

EXIT_BAD_INPUT: Final = 2
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)


async def run_until_signalled(agent: EdgeAgent) -> None:
    """Run ``agent`` until SIGTERM or SIGINT, which stop it cleanly."""
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, agent.stop)
    try:
        await agent.run()
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)


def run(config_path: Path, *, verbose: bool = False) -> int:
    """Load and check the configuration and keys, then run the agent; the exit code."""
    try:
        settings = load_config(config_path)
        keys = load_keys(settings)
    except ConfigError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    log.info(
        "gateway %s starting: radio %s, MQTT %s:%d",
        settings.gateway.gateway_id_hex,
        settings.radio.port,
        settings.mqtt.host,
        settings.mqtt.port,
    )
    asyncio.run(run_until_signalled(EdgeAgent(settings, keys=keys)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m owlgate.edge",
        description="The gateway agent (what `owlgate edge run` runs).",
    )
    parser.add_argument("--config", type=Path, required=True, help="the TOML configuration")
    parser.add_argument("--verbose", action="store_true", help="log at debug level")
    options = parser.parse_args(argv)
    return run(options.config, verbose=options.verbose)
