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
  nothing; a valid new file is applied in the running agent as a document is (only the parts
  that changed restart), or, when ``[gateway]`` (id, state folder, keys) or ``[wired]``
  changed or applying it in place failed, the agent stops cleanly and a new one starts with
  it, in this same process; either way between ``RELOADING=1`` and ``READY=1``. A
  configuration document from the fleet that runs stays in force over the new file.
- A configuration document from the fleet (``docs/edge-config-ota.md``) is applied here,
  inside the running agent: live for the batch limits, the health interval, the log level,
  the device list and the outbox bound; a radio change restarts only the radio backend, an
  MQTT change only the two MQTT connections (:meth:`EdgeAgent.reconfigure`). Then the
  self-check commits it or rolls it back, restarting again only what was restarted.

The exit code is 0 after a requested stop, 1 when the agent failed (systemd restarts it), 2
for a bad configuration at start (systemd does not: ``RestartPreventExitStatus=2``).

Only the standard library and the agent's own modules are imported here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..codecs.errors import OwlgateError
from .agent import EdgeAgent
from .config import EdgeConfig, GatewayKeys, load_config, load_keys
from .errors import ConfigError
from .remote_config import (
    ANSWER,
    IGNORE,
    RESTART_PARTS,
    STATUS_TOPIC,
    ConfigKeeper,
    Decision,
    KeeperError,
    changed_parts,
)
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

__all__ = ["AgentService", "CheckResult", "main", "run"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
#: READY=1 goes out at the latest this long after the agent started (below the unit's
#: TimeoutStartSec=90), ready or not.
READY_GRACE_S: Final = 45.0
#: How often STATUS= is refreshed.
STATUS_TEXT_INTERVAL_S: Final = 10.0
#: Configuration documents waiting to be dealt with, at most (the fleet publishes one,
#: retained, per gateway: more than a few waiting is a flood).
MAX_WAITING_DOCUMENTS: Final = 16
#: The self-check fails on the radio, before its deadline, once the radio has kept failing
#: this long: a concentrator that refuses a channel plan refuses every attempt at once, and
#: the link retries every 0.5, 1, 2 s, so a passing hiccup clears within this.
RADIO_REFUSAL_S: Final = 2.0
#: The self-check's heartbeat is tried again this often until it is acknowledged.
HEARTBEAT_RETRY_S: Final = 0.5
CHECK_POLL_S: Final = 0.05
#: A status report finds no agent to take it (between two agents): tried again this often.
REPORT_RETRY_S: Final = 0.2
#: A configuration document's ``log_level``, as the logging module counts.
LOG_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

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


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of a self-check: passed, or failed with a ``reason`` (``radio``,
    ``broker``, ``heartbeat``, ``apply``) and a ``detail`` for people."""

    passed: bool
    reason: str | None = None
    detail: str = ""


class AgentService:
    """Runs one :class:`EdgeAgent` at a time until asked to stop; a reload replaces it. A
    configuration document from the fleet is applied inside the running agent
    (:meth:`EdgeAgent.reconfigure`: only the parts that changed restart).

    ``config`` and ``keys`` are the checked start configuration (the factory ``edge.toml``);
    ``agent_factory`` makes each agent (tests may pass their own). The configuration the
    agent runs (:attr:`config`) is ``config`` with the stored configuration document over it
    (:class:`~owlgate.edge.remote_config.ConfigKeeper`, in ``state_dir/config/``).

    A document arrives on the agent's control connection and is applied here: verified,
    reported ``received``, stored on trial, applied (live, or restarting only the radio or the
    MQTT connections), then
    the self-check within ``[config] apply_deadline_s``: radio connected, broker connected,
    a heartbeat acknowledged. Pass: committed and reported ``applied``. Fail: the previous
    configuration runs again and ``rolled_back`` is reported with the check that failed.
    A stop requested meanwhile stops at once; the next start rolls the trial back
    (``interrupted``). A reload requested meanwhile waits until the document is settled.
    """

    def __init__(
        self,
        config: EdgeConfig,
        keys: GatewayKeys,
        *,
        agent_factory: AgentFactory = _new_agent,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.factory_config = config
        self.keys = keys
        self.reloads = 0
        self.reloads_refused = 0
        #: Documents dropped because too many were waiting (the newest are kept).
        self.documents_dropped = 0
        self._factory = agent_factory
        self.keeper = ConfigKeeper(
            config.gateway.state_dir,
            gateway_id=config.gateway.gateway_id,
            groups=config.gateway.groups,
            trusted=keys.config_trusted,
            signing_key=keys.identity,
            clock=clock,
        )
        #: The configuration the agent runs: the factory file with the document over it.
        self.config = self.keeper.boot(config)
        self._agent = self._make_agent(self.config)
        self._running: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._pending: tuple[EdgeConfig, GatewayKeys] | None = None
        self._documents: deque[bytes] = deque()
        self._document_waiting = asyncio.Event()
        self._reports_waiting = asyncio.Event()
        self._reports_waiting.set()
        self._base_log_level = logging.getLogger().level

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
        self._base_log_level = logging.getLogger().level
        self._set_log_level(self.config.log_level)
        helpers = [
            asyncio.create_task(self._report_status(), name="service status"),
            asyncio.create_task(self._pump_reports(), name="config reports"),
        ]
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
            logging.getLogger().setLevel(self._base_log_level)

    # --- agents -----------------------------------------------------------------------------

    def _make_agent(self, config: EdgeConfig) -> EdgeAgent:
        agent = self._factory(config, self.keys)
        agent.on_config_document = self._document_arrived
        agent.config_summary = self.keeper.summary
        return agent

    def _launch(self) -> asyncio.Task[None]:
        agent = self._agent
        running = asyncio.create_task(agent.run(), name="agent")
        self._running = running
        self._announcer = asyncio.create_task(self._announce_ready(agent), name="readiness")
        return running

    async def _stop_agent(self) -> asyncio.Task[None]:
        """Stop the running agent and wait until it ended; its task."""
        running, announcer = self._running, self._announcer
        assert running is not None
        if announcer is not None:
            announcer.cancel()
            await asyncio.wait([announcer])
        self._announcer = None
        self._agent.stop()
        await asyncio.wait([running])
        return running

    async def _restart(self, config: EdgeConfig, why: str) -> None:
        """Stop the agent and start a new one with ``config`` (between ``RELOADING=1`` and
        the new agent's ``READY=1``)."""
        notify_reloading()
        log.info("%s: stopping the agent to start it again", why)
        stopped = await self._stop_agent()
        if not stopped.cancelled() and stopped.exception() is not None:
            log.error("the agent failed while stopping: %s", stopped.exception())
        self.config = config
        self._agent = self._make_agent(config)
        self._launch()

    async def _serve(self) -> int:
        self._launch()
        try:
            while True:
                outcome = await self._until_event()
                running = self._running
                assert running is not None
                if outcome == "ended":
                    return self._ended(running, requested=False)
                if outcome == "stop":
                    return await self._stopping()
                if outcome == "documents":
                    code = await self._handle_documents()
                    if code is not None:
                        return code
                    continue
                # outcome == "reload": the new configuration is checked and different.
                new = self._pending
                assert new is not None
                self._pending = None
                code = await self._reload_with(*new)
                if code is not None:
                    return code
        finally:
            announcer = self._announcer
            if announcer is not None:
                announcer.cancel()
                await asyncio.wait([announcer])

    async def _reload_with(self, factory: EdgeConfig, keys: GatewayKeys) -> int | None:
        """Run the new file ``factory`` (with the running document over it): in the running
        agent when only what :meth:`EdgeAgent.reconfigure` changes differs (the radio alone
        restarted for a radio change, the MQTT connections for an MQTT change, the rest
        live), otherwise, or when that fails, in a new agent. The exit code when a stop came
        meanwhile, else None."""
        notify_reloading()
        old_factory, old_keys = self.factory_config, self.keys
        self.factory_config, self.keys = factory, keys
        self.keeper.update(
            groups=factory.gateway.groups, trusted=keys.config_trusted, signing_key=keys.identity
        )
        # The running document stays, over the new file.
        effective = self.keeper.effective(factory)
        why = _new_agent_needed(old_factory, factory, old_keys, keys)
        if why is None:
            try:
                parts = await self._agent.reconfigure(effective)
            except OwlgateError as err:
                why = f"applying it in the running agent failed ({err})"
            else:
                self.config = effective
                self._set_log_level(effective.log_level)
                log.info(
                    "reloaded %s in the running agent: %s",
                    factory.path,
                    ", ".join(sorted(parts)) + " changed" if parts else "nothing to restart",
                )
                notify_ready(describe(self._agent))
                self.reloads += 1
                return None
        log.info("reloading: stopping the agent to start it with %s (%s)", factory.path, why)
        stopped = await self._stop_agent()
        if not stopped.cancelled() and stopped.exception() is not None:
            log.error("the agent failed while stopping for a reload: %s", stopped.exception())
        if self._stop.is_set():
            # SIGTERM came while the old agent was stopping: do not start the new one.
            notify_stopping()
            return self._ended(stopped, requested=True)
        self.config = effective
        self._set_log_level(self.config.log_level)
        self._agent = self._make_agent(self.config)
        self._launch()
        self.reloads += 1
        return None

    async def _stopping(self) -> int:
        notify_stopping()
        log.info("stopping the agent")
        stopped = await self._stop_agent()
        return self._ended(stopped, requested=True)

    async def _until_event(self) -> str:
        """Wait for the agent to end, a stop, a configuration document, or a reload with a
        new valid configuration."""
        while True:
            running = self._running
            assert running is not None
            if not running.done() and not self._stop.is_set() and self._documents:
                return "documents"
            stop = asyncio.create_task(self._stop.wait())
            reload = asyncio.create_task(self._reload.wait())
            document = asyncio.create_task(self._document_waiting.wait())
            waits = (stop, reload, document)
            try:
                await asyncio.wait([running, *waits], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
                await asyncio.wait(waits)
            if running.done():
                return "ended"
            if self._stop.is_set():
                return "stop"
            if self._documents:
                return "documents"
            self._document_waiting.clear()
            if self._reload.is_set():
                self._reload.clear()
                if self._check_reload():
                    return "reload"

    def _check_reload(self) -> bool:
        path = self.factory_config.path
        try:
            config = load_config(path)
            keys = load_keys(config)
        except ConfigError as err:
            self.reloads_refused += 1
            log.error("reload refused, still running the previous configuration: %s", err.message)
            notify_status(f"reload refused ({err.message}); running the previous configuration")
            return False
        if config.sha256 == self.factory_config.sha256:
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

    # --- configuration documents ------------------------------------------------------------

    def _document_arrived(self, payload: bytes) -> None:
        # Called by the agent's control loop, in this event loop.
        self._documents.append(payload)
        while len(self._documents) > MAX_WAITING_DOCUMENTS:
            self._documents.popleft()
            self.documents_dropped += 1
            log.warning(
                "more than %d configuration documents waiting: dropped the oldest",
                MAX_WAITING_DOCUMENTS,
            )
        self._document_waiting.set()

    async def _handle_documents(self) -> int | None:
        """Deal with the documents waiting, in order; an exit code when a stop came while one
        was on trial, else None."""
        while self._documents:
            running = self._running
            if self._stop.is_set() or running is None or running.done():
                # _serve deals with those first; the documents wait (a stop drops them).
                return None
            payload = self._documents.popleft()
            decision = self.keeper.consider(payload, self.factory_config, self.config)
            if decision.action == IGNORE:
                log.info("configuration document ignored: %s", decision.note)
                continue
            if decision.action == ANSWER:
                status = decision.status
                assert status is not None
                log.warning("configuration document %s", decision.note)
                try:
                    self.keeper.send(status)
                except KeeperError as err:
                    log.error("configuration status not recorded: %s", err.message)
                self._reports_waiting.set()
                continue
            code = await self._apply(decision)
            if code is not None:
                return code
        return None

    async def _apply(self, decision: Decision) -> int | None:
        doc, new = decision.doc, decision.config
        assert doc is not None
        assert new is not None
        old = self.config
        parts = changed_parts(old, new)
        changes = ", ".join(sorted(parts)) or "nothing"
        how = _how(parts)
        log.info(
            "applying configuration document seq %d (%s): %s changed, %s",
            doc.seq,
            doc.content_hash.hex()[:16],
            changes,
            how,
        )
        try:
            self.keeper.report(
                "received",
                doc.seq,
                content_hash=doc.content_hash,
                detail=f"verified; applying it {how} ({changes} changed)",
                running_hash=old.running_hash,
            )
            self.keeper.begin_trial(decision)
        except KeeperError as err:
            log.error("configuration document seq %d not applied: %s", doc.seq, err.message)
            self._settle_failure(decision, "apply", err.message, old)
            return None
        finally:
            self._reports_waiting.set()
        try:
            self._take(new)
            await self._agent.reconfigure(new)
        except OwlgateError as err:
            result: CheckResult | None = CheckResult(False, "apply", _message(err))
        else:
            result = await self._self_check(new.config.apply_deadline_s)
        if result is None:
            # A stop: the trial stays marked, and the next start rolls it back.
            log.warning(
                "stopping while configuration document seq %d is on trial: the next start"
                " rolls it back",
                doc.seq,
            )
            return await self._stopping()
        if result.passed:
            try:
                self.keeper.commit(decision)
                self.keeper.report(
                    "applied",
                    doc.seq,
                    content_hash=doc.content_hash,
                    detail=result.detail,
                    running_hash=new.running_hash,
                )
            except KeeperError as err:
                log.error("configuration document seq %d not committed: %s", doc.seq, err.message)
            self._reports_waiting.set()
            log.info("configuration document seq %d applied: %s", doc.seq, result.detail)
            return None
        assert result.reason is not None
        log.error(
            "configuration document seq %d failed its self-check (%s): %s; rolling back",
            doc.seq,
            result.reason,
            result.detail,
        )
        self._settle_failure(decision, result.reason, result.detail, old)
        await self._roll_back(old, doc.seq)
        self._take(old)
        return None

    async def _roll_back(self, old: EdgeConfig, seq: int) -> None:
        """Run ``old`` again: the same paths in reverse, restarting only the parts the
        document changed (the agent knows which it took), or a new agent when the running
        one ended or cannot go back in place."""
        why = f"rolling back configuration document seq {seq}"
        running = self._running
        if running is None or running.done():
            await self._restart(old, why)
            return
        try:
            parts = await self._agent.reconfigure(old)
        except OwlgateError as err:
            log.error("%s in place failed (%s): starting the agent again", why, _message(err))
            await self._restart(old, why)
            return
        log.info("%s: %s", why, _how(parts))

    def _settle_failure(
        self, decision: Decision, reason: str, detail: str, old: EdgeConfig
    ) -> None:
        doc = decision.doc
        assert doc is not None
        # Recorded before the old configuration is started again: a crash in between boots
        # into the last good configuration without trying the document again.
        try:
            self.keeper.roll_back(decision, reason, detail)
            self.keeper.report(
                "rolled_back",
                doc.seq,
                content_hash=doc.content_hash,
                reason=reason,
                detail=detail,
                running_hash=old.running_hash,
            )
        except KeeperError as err:
            log.error("the roll-back of document seq %d not recorded: %s", doc.seq, err.message)
        self._reports_waiting.set()

    def _take(self, config: EdgeConfig) -> None:
        self.config = config
        self._set_log_level(config.log_level)

    def _set_log_level(self, level: str | None) -> None:
        root = logging.getLogger()
        wanted = self._base_log_level if level is None else LOG_LEVELS[level]
        if root.level != wanted:
            root.setLevel(wanted)
            log.info("log level %s", logging.getLevelName(wanted).lower())

    async def _self_check(self, deadline_s: float) -> CheckResult | None:
        """Radio connected, broker connected, a heartbeat acknowledged, within ``deadline_s``;
        None when a stop was requested meanwhile.

        A radio that keeps failing for :data:`RADIO_REFUSAL_S` (a concentrator that refuses
        the channel plan fails every attempt at once) fails the check without waiting for
        the deadline."""
        agent, running = self._agent, self._running
        assert running is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        end = started + deadline_s
        radio_failing_since: float | None = None
        radio_error: str | None = None
        next_heartbeat = started
        radio_ok = broker_ok = False
        while True:
            if self._stop.is_set():
                return None
            if running.done():
                failure = None if running.cancelled() else running.exception()
                why = "it was cancelled" if failure is None else str(failure)
                return CheckResult(False, "apply", f"the agent stopped: {why}")
            now = loop.time()
            radio_ok = agent.radio_connected
            error = agent.radio_error
            if radio_ok or error is None:
                radio_failing_since = None
            else:
                radio_error = error
                if radio_failing_since is None:
                    radio_failing_since = now
                elif now - radio_failing_since >= RADIO_REFUSAL_S:
                    return CheckResult(False, "radio", f"the radio does not start: {error}")
            uplink = agent.uplink
            broker_ok = uplink is not None and uplink.connected
            if radio_ok and broker_ok and now >= next_heartbeat:
                next_heartbeat = now + HEARTBEAT_RETRY_S
                acknowledged = False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(end - now, HEARTBEAT_RETRY_S)):
                        acknowledged = await agent.heartbeat_now()
                if acknowledged:
                    took = loop.time() - started
                    return CheckResult(
                        True,
                        detail="radio up, broker reachable, heartbeat acknowledged"
                        f" in {took:.1f} s",
                    )
            if loop.time() >= end:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_POLL_S):
                    await self._stop.wait()
        if not radio_ok:
            last = "" if radio_error is None else f" (last error: {radio_error})"
            return CheckResult(
                False, "radio", f"the radio was not up within {deadline_s:g} s{last}"
            )
        if not broker_ok:
            return CheckResult(
                False, "broker", f"the broker was not reachable within {deadline_s:g} s"
            )
        return CheckResult(
            False, "heartbeat", f"no heartbeat was acknowledged within {deadline_s:g} s"
        )

    async def _pump_reports(self) -> None:
        # Status reports wait in state_dir/config/reports/ until the agent's outbox takes
        # them: a report made while no agent runs (at boot, between two agents) goes out
        # with the next one.
        while True:
            await self._reports_waiting.wait()
            self._reports_waiting.clear()
            delivered_all = True
            for path, payload in self.keeper.pending_reports():
                try:
                    if not self._agent.send_durably(STATUS_TOPIC, payload):
                        delivered_all = False
                        break
                    self.keeper.report_sent(path)
                except OwlgateError as err:
                    log.warning("configuration status not yet in the outbox: %s", _message(err))
                    delivered_all = False
                    break
            if not delivered_all:
                await asyncio.sleep(REPORT_RETRY_S)
                self._reports_waiting.set()

    # --- readiness, status, watchdog --------------------------------------------------------

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


def _how(parts: frozenset[str]) -> str:
    """How a change of ``parts`` is applied, for the log and the ``received`` report."""
    restarted = sorted(parts & RESTART_PARTS)
    if not restarted:
        return "live, without a restart"
    return f"restarting only the {' and the '.join(restarted)}"


def _message(err: OwlgateError) -> str:
    # Every owlgate error carries .message but the root class does not declare it.
    text = getattr(err, "message", None)
    return text if isinstance(text, str) else str(err)


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
        try:
            service = AgentService(settings, keys)
        except KeeperError as err:
            log.error("cannot start: %s", err.message)
            return EXIT_FAILED
        return await service.run()

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


def _key_material(keys: GatewayKeys) -> tuple[bytes, ...]:
    """The public halves of ``keys``: equal for the same key files' contents."""
    signing = keys.config_signing
    return (
        keys.identity.public_key().public_bytes_raw(),
        keys.sealing.public_key().public_bytes_raw(),
        keys.fleet.public_bytes_raw(),
        b"" if signing is None else signing.public_bytes_raw(),
    )


def _new_agent_needed(
    old: EdgeConfig, new: EdgeConfig, old_keys: GatewayKeys, new_keys: GatewayKeys
) -> str | None:
    """Why a reload from ``old`` to ``new`` needs a new agent (what the running one cannot
    change in place: the gateway's identity, keys and state folder, the wired bus), or None."""
    if dataclasses.replace(old.gateway, groups=()) != dataclasses.replace(new.gateway, groups=()):
        return "[gateway] changed"
    if old.wired != new.wired:
        return "[wired] changed"
    if _key_material(old_keys) != _key_material(new_keys):
        return "a key file changed"
    return None
