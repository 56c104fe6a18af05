"""The agent's process: ``python -m owlgate.edge --config FILE [--verbose] [--log-format F]``.

``owlgate edge run`` checks the configuration and then replaces itself with this (``exec``):
the agent then runs without the command-line framework in memory (typer, click, rich and the
pydantic that typer uses for its parameters cost about 15 MB of resident memory, a quarter of
the agent's budget on a Raspberry Pi; see ``edge.rss_mb`` in docs/bench.md). It keeps the
process id, so a service manager or a parent process sees one process from start to stop.

Under systemd (``Type=notify``, see :mod:`owlgate.edge.service`) the process tells the
service manager what it does:

- ``READY=1`` once the agent is ready (:attr:`EdgeAgent.ready`: radio configured, the fleet's
  sessions in), or after :data:`READY_GRACE_S` of running without it: with the backhaul down
  the fleet cannot answer, and the agent must go on receiving and buffering rather than be
  killed by the start timeout. ``STATUS=`` says which.
- ``WATCHDOG=1`` every half watchdog interval, but only while the agent says its loops are
  not stuck (``EdgeAgent.watchdog_ok()``), so systemd kills and restarts a stuck agent.
- ``STATUS=`` every :data:`STATUS_TEXT_INTERVAL_S`: radio, backhaul, outbox depth.
- SIGTERM / SIGINT: ``STOPPING=1`` and a clean stop (the held batch is sealed first).
- SIGHUP: the configuration file is read and checked again. A bad file is logged (naming the
  problem) and the agent keeps its old configuration; the same bytes (same SHA-256) change
  nothing; a valid new file stops the agent cleanly and starts a new one with it, in this same
  process, between ``RELOADING=1`` and ``READY=1``.

The exit code is 0 after a requested stop, 1 when the agent failed (systemd restarts it), 2
for a bad configuration at start (systemd does not: ``RestartPreventExitStatus=2``).

Only the standard library and the agent's own modules are imported here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from .agent import EdgeAgent
from .config import EdgeConfig, GatewayKeys, load_config, load_keys
from .errors import ConfigError
from .service import (
    LOG_FORMATS,
    configure_logging,
    notify_ready,
    notify_reloading,
    notify_status,
    notify_stopping,
    notify_watchdog,
    watchdog_interval_s,
)

__all__ = ["AgentService", "main", "run"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
#: READY=1 goes out at the latest this long after the agent started (below the unit's
#: TimeoutStartSec=90), ready or not.
READY_GRACE_S: Final = 45.0
#: How often STATUS= is refreshed.
STATUS_TEXT_INTERVAL_S: Final = 10.0

log = logging.getLogger(__name__)

AgentFactory = Callable[[EdgeConfig, GatewayKeys], EdgeAgent]


def _new_agent(config: EdgeConfig, keys: GatewayKeys) -> EdgeAgent:
    return EdgeAgent(config, keys=keys)


def describe(agent: EdgeAgent) -> str:
    """One line for ``STATUS=``: readiness, radio, backhaul and outbox depth."""
    uplink = agent.uplink
    parts = [
        "radio connected" if agent.radio_connected else "radio not connected",
        "backhaul up" if uplink is not None and uplink.connected else "backhaul down",
    ]
    depth = agent.outbox_depth
    if depth is not None:
        parts.append(f"outbox {depth}")
    state = "ready" if agent.ready.is_set() else "not ready"
    return f"{state}: {', '.join(parts)}"


class AgentService:
    """Runs one :class:`EdgeAgent` at a time until asked to stop; a reload replaces it.

    ``config`` and ``keys`` are the checked start configuration; ``agent_factory`` makes each
    agent (tests may pass their own).
    """

    def __init__(
        self,
        config: EdgeConfig,
        keys: GatewayKeys,
        *,
        agent_factory: AgentFactory = _new_agent,
    ) -> None:
        self.config = config
        self.keys = keys
        self.reloads = 0
        self.reloads_refused = 0
        self._factory = agent_factory
        self._agent = agent_factory(config, keys)
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._pending: tuple[EdgeConfig, GatewayKeys] | None = None

    @property
    def agent(self) -> EdgeAgent:
        """The agent running now."""
        return self._agent

    def request_stop(self) -> None:
        """Stop the agent and return from :meth:`run` (safe from a signal handler)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the configuration file (safe from a signal handler)."""
        self._reload.set()

    async def run(self) -> int:
        """Run until :meth:`request_stop`; the process exit code."""
        loop = asyncio.get_running_loop()
        handlers = (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        )
        for number, handler in handlers:
            loop.add_signal_handler(number, handler)
        helpers = [asyncio.create_task(self._report_status(), name="service status")]
        interval_s = watchdog_interval_s()
        if interval_s is not None:
            log.info("watchdog: pinging every %.1f s (timeout %.1f s)", interval_s / 2, interval_s)
            helpers.append(asyncio.create_task(self._feed_watchdog(interval_s), name="watchdog"))
        try:
            return await self._serve()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.wait(helpers)
            for number, _ in handlers:
                loop.remove_signal_handler(number)

    async def _serve(self) -> int:
        while True:
            agent = self._agent
            running = asyncio.create_task(agent.run(), name="agent")
            announcer = asyncio.create_task(self._announce_ready(agent), name="readiness")
            try:
                outcome = await self._until_event(running)
            finally:
                announcer.cancel()
                await asyncio.wait([announcer])
            if outcome == "ended":
                return self._ended(running, requested=False)
            if outcome == "stop":
                notify_stopping()
                log.info("stopping the agent")
                agent.stop()
                await asyncio.wait([running])
                return self._ended(running, requested=True)
            # outcome == "reload": the new configuration is checked and different.
            new = self._pending
            assert new is not None
            self._pending = None
            notify_reloading()
            log.info("reloading: stopping the agent to start it with %s", new[0].path)
            agent.stop()
            await asyncio.wait([running])
            if not running.cancelled() and running.exception() is not None:
                log.error("the agent failed while stopping for a reload: %s", running.exception())
            if self._stop.is_set():
                # SIGTERM came while the old agent was stopping: do not start the new one.
                notify_stopping()
                return self._ended(running, requested=True)
            self.config, self.keys = new
            self._agent = self._factory(*new)
            self.reloads += 1

    async def _until_event(self, running: asyncio.Task[None]) -> str:
        """Wait for the agent to end, a stop, or a reload with a new valid configuration."""
        while True:
            stop = asyncio.create_task(self._stop.wait())
            reload = asyncio.create_task(self._reload.wait())
            try:
                await asyncio.wait([running, stop, reload], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stop, reload):
                    task.cancel()
                await asyncio.wait([stop, reload])
            if running.done():
                return "ended"
            if self._stop.is_set():
                return "stop"
            self._reload.clear()
            if self._check_reload():
                return "reload"

    def _check_reload(self) -> bool:
        path = self.config.path
        try:
            config = load_config(path)
            keys = load_keys(config)
        except ConfigError as err:
            self.reloads_refused += 1
            log.error("reload refused, still running the previous configuration: %s", err.message)
            notify_status(f"reload refused ({err.message}); running the previous configuration")
            return False
        if config.sha256 == self.config.sha256:
            log.info("reload: %s is unchanged (sha256 %s)", path, config.sha256.hex()[:12])
            return False
        self._pending = (config, keys)
        return True

    def _ended(self, running: asyncio.Task[None], *, requested: bool) -> int:
        error = None if running.cancelled() else running.exception()
        if error is not None:
            log.error("the agent failed: %s", error, exc_info=error)
            return EXIT_FAILED
        if not requested:
            log.error("the agent stopped by itself")
            return EXIT_FAILED
        log.info("agent stopped")
        return EXIT_OK

    async def _announce_ready(self, agent: EdgeAgent) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_GRACE_S):
                await agent.ready.wait()
        if agent.ready.is_set():
            notify_ready(describe(agent))
            return
        log.warning(
            "not ready after %.0f s (no session update from the fleet yet): running anyway",
            READY_GRACE_S,
        )
        notify_ready(f"running, {describe(agent)} (waiting for the fleet's sessions)")
        await agent.ready.wait()
        notify_status(describe(agent))

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_TEXT_INTERVAL_S)
            notify_status(describe(self._agent))

    async def _feed_watchdog(self, interval_s: float) -> None:
        # Half the timeout, as sd_watchdog_enabled(3) recommends: one late ping is survived.
        stuck = False
        while True:
            if self._agent.watchdog_ok():
                notify_watchdog()
                if stuck:
                    log.info("watchdog: the agent is healthy again")
                stuck = False
            elif not stuck:
                stuck = True
                log.error("watchdog not fed: the agent reports a stuck loop")
            await asyncio.sleep(interval_s / 2)


def run(config_path: Path, *, verbose: bool = False, log_format: str = "auto") -> int:
    """Load and check the configuration and keys, then run the agent; the exit code."""
    try:
        settings = load_config(config_path)
        keys = load_keys(settings)
    except ConfigError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    configure_logging(
        verbose=verbose, log_format=log_format, gateway_id=settings.gateway.gateway_id_hex
    )
    log.info(
        "gateway %s starting: radio %s, MQTT %s:%d",
        settings.gateway.gateway_id_hex,
        settings.radio.where,
        settings.mqtt.host,
        settings.mqtt.port,
    )

    async def serve() -> int:
        return await AgentService(settings, keys).run()

    return asyncio.run(serve())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m owlgate.edge",
        description="The gateway agent (what `owlgate edge run` runs).",
    )
    parser.add_argument("--config", type=Path, required=True, help="the TOML configuration")
    parser.add_argument("--verbose", action="store_true", help="log at debug level")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto",
        help="auto (journal prefixes under systemd, else human), human, journal or json",
    )
    options = parser.parse_args(argv)
    return run(options.config, verbose=options.verbose, log_format=options.log_format)
