"""The agent as a systemd service: sd_notify, the watchdog, reloads, journal logs, the unit
files ``owlgate edge install-service`` writes, and ``owlgate edge status``.

The service manager is played by the test: an ``AF_UNIX`` datagram socket bound where
``$NOTIFY_SOCKET`` says, receiving with ``SO_PASSCRED`` so each notification carries the
sender's process id. The agent runs as systemd would run it, ``python -m owlgate.edge``,
against the embedded broker and the emulated concentrator of tests/edge/test_agent.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from owlgate.edge.agent import EdgeAgent
from owlgate.edge.cli import edge_command
from owlgate.edge.config import EdgeConfig, GatewayKeys, load_config, load_keys
from owlgate.edge.errors import RadioError
from owlgate.edge.runtime import AgentService
from owlgate.edge.service import (
    JournalFormatter,
    configure_logging,
    journal_connected,
    notify_ready,
    notify_reloading,
    render_unit,
    sd_notify,
    watchdog_interval_s,
)
from owlgate.hil.concentrator import EmulatedConcentrator
from tests.edge.test_agent import WAIT_S, Fleet, FleetSide, Responder, eventually, write_config
from tests.mqtt_servers import BrokerServer

pytest_plugins = ["tests.brokers"]

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid (unix(7))


class NotifySocket:
    """The service manager's end of ``$NOTIFY_SOCKET``: (sender pid, message) received."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: list[tuple[int, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self._sock.bind(bind_to)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.setblocking(False)

    def close(self) -> None:
        self._sock.close()

    def drain(self) -> list[tuple[int, str]]:
        """Take in every datagram waiting; return all received so far."""
        while True:
            try:
                data, ancillary, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return self.messages
            pid = -1
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CREDENTIALS.unpack(value[: _CREDENTIALS.size])[0]
            self.messages.append((pid, data.decode()))

    def count(self, line: str) -> int:
        return sum(line in message.split("\n") for _, message in self.drain())

    def senders(self, line: str) -> set[int]:
        return {pid for pid, message in self.drain() if line in message.split("\n")}


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # Abstract namespace: no path length limit, nothing to clean up.
    server = NotifySocket(f"@owlgate-test-{uuid.uuid4().hex}")
    try:
        yield server
    finally:
        server.close()


def _config_with(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _log_has(log_path: Path, text: str) -> bool:
    return text in log_path.read_text()


# --- the real agent process under a pretend systemd -------------------------------------------


def test_service_lifecycle_ready_watchdog_reload_and_stop(
    tmp_path: Path, embedded_broker: BrokerServer, notify_socket: NotifySocket
) -> None:
    async def scenario() -> None:
        fleet_keys = Fleet(tmp_path / "keys")
        log_path = tmp_path / "agent.log"
        async with (
            EmulatedConcentrator(tmp_path / "dev", seed=11) as concentrator,
            FleetSide(embedded_broker) as fleet,
            Responder(embedded_broker, fleet_keys.key, []),
        ):
            config = write_config(tmp_path, embedded_broker, concentrator.path)
            environment = dict(os.environ, NOTIFY_SOCKET=notify_socket.address)
            # 1 s: WATCHDOG=1 every 0.5 s.
            environment["WATCHDOG_USEC"] = "1000000"
            with log_path.open("wb") as log_file:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "owlgate.edge",
                    "--config",
                    str(config.path),
                    env=environment,
                    stderr=log_file,
                )
            try:
                pid = process.pid
                await eventually(lambda: notify_socket.count("READY=1") == 1, "READY=1")
                assert notify_socket.senders("READY=1") == {pid}
                ready = next(m for _, m in notify_socket.drain() if "READY=1" in m)
                assert "STATUS=ready: radio connected" in ready
                await eventually(lambda: notify_socket.count("WATCHDOG=1") >= 2, "pings")
                assert notify_socket.senders("WATCHDOG=1") == {pid}

                # The same bytes again: nothing happens but a log line.
                process.send_signal(signal.SIGHUP)
                await eventually(lambda: _log_has(log_path, "is unchanged"), "unchanged")

                # A broken file: refused, logged with the problem, the old agent goes on.
                original = config.path.read_text()
                _config_with(config.path, "max_readings = 4", 'max_readings = "x"')
                process.send_signal(signal.SIGHUP)
                await eventually(lambda: _log_has(log_path, "reload refused"), "refusal")
                assert "[batch] max_readings: must be an integer" in log_path.read_text()
                await eventually(
                    lambda: any("STATUS=reload refused" in m for _, m in notify_socket.drain()),
                    "the refusal in STATUS=",
                )
                assert notify_socket.count("RELOADING=1") == 0
                pings = notify_socket.count("WATCHDOG=1")
                await eventually(lambda: notify_socket.count("WATCHDOG=1") > pings, "alive")

                # A valid file changing what the running agent can change: applied in it
                # (the health interval live: neither the radio nor MQTT restarts).
                configured = len(concentrator.radio_configs)
                config.path.write_text(original.replace("interval_s = 1", "interval_s = 2"))
                live_hash = load_config(config.path).sha256.hex()
                assert live_hash != config.sha256.hex()
                process.send_signal(signal.SIGHUP)
                await eventually(lambda: notify_socket.count("RELOADING=1") == 1, "RELOADING")
                await eventually(lambda: notify_socket.count("READY=1") == 2, "READY again")
                assert notify_socket.senders("RELOADING=1") == {pid}
                assert notify_socket.senders("READY=1") == {pid}
                reloading = next(m for _, m in notify_socket.drain() if "RELOADING=1" in m)
                assert "MONOTONIC_USEC=" in reloading
                await eventually(
                    lambda: _log_has(log_path, "in the running agent: health changed"), "in place"
                )
                assert log_path.read_text().count("device sessions loaded") == 1
                assert len(concentrator.radio_configs) == configured

                # A new state folder: the running agent cannot move it, a new one starts.
                moved = config.path.read_text().replace(
                    'state_dir = "state"', 'state_dir = "moved"'
                )
                config.path.write_text(moved)
                new_hash = load_config(config.path).sha256.hex()
                process.send_signal(signal.SIGHUP)
                await eventually(lambda: notify_socket.count("RELOADING=1") == 2, "RELOADING")
                await eventually(lambda: notify_socket.count("READY=1") == 3, "READY again")
                assert "([gateway] changed)" in log_path.read_text()
                still_running = process.returncode is None
                assert still_running

                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(WAIT_S):
                    await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            log_text = log_path.read_text()
            assert process.returncode == 0, log_text
            assert notify_socket.senders("STOPPING=1") == {pid}
            await eventually(lambda: fleet.payloads("state")[-1] == b"offline", "offline")
        assert "Traceback" not in log_text
        # Two agents ran; the second one's configuration is what status.json says at the end,
        # in the new state folder.
        assert log_text.count("device sessions loaded") == 2
        status = json.loads((tmp_path / "moved" / "status.json").read_text())
        assert status["config_hash"] == new_hash
        result = CliRunner().invoke(edge_command, ["status", "--config", str(config.path)])
        assert result.exit_code == 0, result.output
        assert f"config    sha256 {new_hash}" in result.stdout

    asyncio.run(scenario())


class _ScriptedAgent(EdgeAgent):
    """An agent whose watchdog verdicts are scripted: healthy twice, then stuck."""

    verdicts = (True, True)

    def __init__(self, config: EdgeConfig, keys: GatewayKeys) -> None:
        super().__init__(config, keys=keys)
        self.checks = 0

    def watchdog_ok(self) -> bool:
        self.checks += 1
        return self.checks <= len(self.verdicts)


def test_watchdog_is_fed_only_while_the_agent_is_healthy(
    tmp_path: Path,
    embedded_broker: BrokerServer,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    async def scenario() -> None:
        Fleet(tmp_path / "keys")
        async with EmulatedConcentrator(tmp_path / "dev", seed=12) as concentrator:
            config = write_config(tmp_path, embedded_broker, concentrator.path)
            service = AgentService(config, load_keys(config), agent_factory=_ScriptedAgent)
            agent = service.agent
            assert isinstance(agent, _ScriptedAgent)
            running = asyncio.create_task(service.run())
            try:
                await eventually(lambda: agent.checks >= 4, "four watchdog checks")
            finally:
                service.request_stop()
                assert await running == 0
        # Exactly the two healthy checks were answered with a ping.
        assert notify_socket.count("WATCHDOG=1") == 2
        assert notify_socket.count("STOPPING=1") == 1

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    assert sum("watchdog not fed" in r.getMessage() for r in caplog.records) == 1


class _FailingAgent(EdgeAgent):
    """An agent whose run fails at once, as one with a dead resource does."""

    def __init__(self, config: EdgeConfig, keys: GatewayKeys) -> None:
        super().__init__(config, keys=keys)

    async def run(self) -> None:
        raise RadioError("the concentrator went away for good")


def test_a_failing_agent_exits_non_zero_so_systemd_restarts_it(
    tmp_path: Path, embedded_broker: BrokerServer, caplog: pytest.LogCaptureFixture
) -> None:
    Fleet(tmp_path / "keys")
    config = write_config(tmp_path, embedded_broker, tmp_path / "no-such-port")

    async def scenario() -> int:
        service = AgentService(config, load_keys(config), agent_factory=_FailingAgent)
        return await service.run()

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == 1
    assert any(
        "the agent failed: the concentrator went away for good" in r.getMessage()
        for r in caplog.records
    )


# --- sd_notify and the environment ----------------------------------------------------------------


def test_sd_notify_to_a_path_socket_and_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tempfile.mkdtemp(prefix="owl", dir="/tmp")  # short: sun_path is 108 bytes
    try:
        server = NotifySocket(f"{folder}/notify")
        try:
            monkeypatch.setenv("NOTIFY_SOCKET", server.address)
            assert notify_ready("ready: radio\nconnected")
            assert notify_reloading()
            assert server.drain()[0] == (os.getpid(), "READY=1\nSTATUS=ready: radio connected")
            lines = server.drain()[1][1].split("\n")
            assert lines[0] == "RELOADING=1"
            assert abs(int(lines[1].removeprefix("MONOTONIC_USEC=")) / 1e6 - time.monotonic()) < 60
        finally:
            server.close()
        # The socket is gone: the send fails, reported as False, not raised.
        assert sd_notify("WATCHDOG=1") is False
    finally:
        shutil.rmtree(folder)
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sd_notify("READY=1") is False
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": "relative/not-allowed"}) is False


def test_watchdog_interval_from_the_environment() -> None:
    me = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({}) is None


# --- journal logging -------------------------------------------------------------------------


def _log_through(stream_path: Path, log_format: str, *, journal: bool) -> str:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    with stream_path.open("w") as stream:
        info = os.fstat(stream.fileno())
        env_value = f"{info.st_dev}:{info.st_ino}" if journal else f"{info.st_dev}:1"
        old = os.environ.get("JOURNAL_STREAM")
        os.environ["JOURNAL_STREAM"] = env_value
        try:
            assert journal_connected(stream) is journal
            handler = configure_logging(
                log_format=log_format, gateway_id="0016c001ff10a0e1", stream=stream
            )
            logger = logging.getLogger("owlgate.edge.test")
            logger.info("radio on %s", "/dev/ttyACM0")
            logger.error("outbox full")
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("it failed")
            handler.flush()
        finally:
            if old is None:
                del os.environ["JOURNAL_STREAM"]
            else:
                os.environ["JOURNAL_STREAM"] = old
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
    return stream_path.read_text()


def test_journal_lines_carry_syslog_priorities(tmp_path: Path) -> None:
    lines = _log_through(tmp_path / "err", "auto", journal=True).splitlines()
    assert lines[0] == "<6>owlgate.edge.test: radio on /dev/ttyACM0"
    assert lines[1] == "<3>owlgate.edge.test: outbox full"
    assert lines[2] == "<3>owlgate.edge.test: it failed"
    # Every traceback line keeps the error priority (journald splits on newlines).
    assert len(lines) > 4
    assert all(line.startswith("<3>") for line in lines[2:])
    assert lines[-1] == "<3>ValueError: boom"


def test_human_format_off_the_journal(tmp_path: Path) -> None:
    lines = _log_through(tmp_path / "err", "auto", journal=False).splitlines()
    # "2026-12-01 19:21:31,123 INFO owlgate.edge.test: radio on /dev/ttyACM0"
    assert lines[0].endswith(" INFO owlgate.edge.test: radio on /dev/ttyACM0")
    assert lines[0][:4].isdigit()
    assert lines[0][4] == "-"
    assert not lines[1].startswith("<")


def test_json_format(tmp_path: Path) -> None:
    lines = _log_through(tmp_path / "err", "json", journal=True).splitlines()
    assert lines[0].startswith("<6>{")
    first = json.loads(lines[0][3:])
    assert first["level"] == "info"
    assert first["logger"] == "owlgate.edge.test"
    assert first["message"] == "radio on /dev/ttyACM0"
    assert first["gateway_id"] == "0016c001ff10a0e1"
    third = json.loads(lines[2].removeprefix("<3>"))
    assert third["level"] == "error"
    assert "ValueError: boom" in third["exception"]
    assert len(lines) == 3


def test_journal_formatter_levels() -> None:
    formatter = JournalFormatter()

    def line(level: int) -> str:
        record = logging.LogRecord("x", level, __file__, 1, "m", None, None)
        return formatter.format(record)

    assert [line(level) for level in (10, 20, 30, 40, 50)] == [
        "<7>x: m",
        "<6>x: m",
        "<4>x: m",
        "<3>x: m",
        "<2>x: m",
    ]


# --- install-service -------------------------------------------------------------------------


def _technician_config(folder: Path) -> Path:
    Fleet(folder / "keys")
    path = folder / "edge.toml"
    path.write_text(
        """# the gateway on the roof of the depot
[gateway]
id = "0016c001ff10a0e1"
state_dir = "state"   # only for the bench test
identity_key = "keys/identity-ed25519.pem"
sealing_key = "keys/sealing-x25519.pem"
fleet_key = "keys/fleet-ed25519.pub.pem"

[radio]
port = "/dev/ttyACM0"

[mqtt]
url = "mqtt://fleet.example:1883"
"""
    )
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_service_into_a_root(tmp_path: Path) -> None:
    config = _technician_config(tmp_path / "src")
    root = tmp_path / "root"
    runner = CliRunner()
    args = ["install-service", "--config", str(config), "--root", str(root)]
    result = runner.invoke(edge_command, [*args, "--python", "/opt/owlgate/bin/python"])
    assert result.exit_code == 0, result.output

    unit = (root / "etc/systemd/system/owlgate-edge.service").read_text()
    unit_lines = set(unit.splitlines())
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "Restart=always",
        "RestartPreventExitStatus=2",
        "User=owlgate",
        "Group=owlgate",
        "SupplementaryGroups=dialout",
        "StateDirectory=owlgate",
        "ConfigurationDirectory=owlgate",
        "ExecStart=/opt/owlgate/bin/python -m owlgate.edge --config /etc/owlgate/edge.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/lib/owlgate",
        "KillSignal=SIGTERM",
        "WantedBy=multi-user.target",
    ):
        assert line in unit_lines, line
    assert not any(line.startswith("PrivateDevices") for line in unit_lines)
    sysusers = (root / "usr/lib/sysusers.d/owlgate.conf").read_text()
    assert 'u owlgate - "owlgate gateway agent" /var/lib/owlgate' in sysusers.splitlines()
    tmpfiles = (root / "usr/lib/tmpfiles.d/owlgate.conf").read_text().splitlines()
    assert "z /etc/owlgate/keys/*.pem 0600 owlgate owlgate -" in tmpfiles

    installed = root / "etc/owlgate/edge.toml"
    assert _mode(installed) == 0o640
    settings = load_config(installed)
    assert settings.gateway.state_dir == Path("/var/lib/owlgate")
    assert settings.gateway.identity_key == Path("/etc/owlgate/keys/identity-ed25519.pem")
    assert settings.radio.port == "/dev/ttyACM0"
    assert settings.mqtt.host == "fleet.example"
    assert "# the gateway on the roof of the depot" in installed.read_text()
    keys = root / "etc/owlgate/keys"
    assert _mode(keys) == 0o700
    for name in ("identity-ed25519.pem", "sealing-x25519.pem", "fleet-ed25519.pub.pem"):
        assert _mode(keys / name) == 0o600
        assert (keys / name).read_bytes() == (tmp_path / "src/keys" / name).read_bytes()
    assert "systemctl enable --now owlgate-edge" in result.stdout
    assert "systemd-sysusers" in result.stdout
    assert "systemctl daemon-reload" in result.stdout

    # Again: refused, nothing touched; with --force, rewritten.
    installed.write_text("# edited on site\n")
    again = runner.invoke(edge_command, args)
    assert again.exit_code == 1
    assert "already exist" in again.stderr
    assert "--force" in again.stderr
    assert installed.read_text() == "# edited on site\n"
    forced = runner.invoke(edge_command, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert load_config(installed).gateway.state_dir == Path("/var/lib/owlgate")


def test_install_service_copies_the_broker_password_and_the_config_key(tmp_path: Path) -> None:
    config = _technician_config(tmp_path / "src")
    secret = tmp_path / "src" / "keys" / "mqtt.password"
    secret.write_text("not-a-real-password\n")
    secret.chmod(0o600)
    pinned = tmp_path / "src" / "keys" / "fleet-ed25519.pub.pem"
    text = config.read_text().replace(
        "[radio]", 'config_key = "keys/fleet-ed25519.pub.pem"\n\n[radio]'
    )
    config.write_text(text + 'password_file = "keys/mqtt.password"\n')
    root = tmp_path / "root"
    result = CliRunner().invoke(
        edge_command, ["install-service", "--config", str(config), "--root", str(root)]
    )
    assert result.exit_code == 0, result.output
    settings = load_config(root / "etc/owlgate/edge.toml")
    assert settings.mqtt.password_file == Path("/etc/owlgate/keys/mqtt-password")
    assert settings.gateway.config_key == Path("/etc/owlgate/keys/config-ed25519.pub.pem")
    keys = root / "etc/owlgate/keys"
    assert (keys / "mqtt-password").read_bytes() == secret.read_bytes()
    assert _mode(keys / "mqtt-password") == 0o600
    assert (keys / "config-ed25519.pub.pem").read_bytes() == pinned.read_bytes()
    tmpfiles = (root / "usr/lib/tmpfiles.d/owlgate.conf").read_text().splitlines()
    assert "z /etc/owlgate/keys/mqtt-password 0600 owlgate owlgate -" in tmpfiles
    assert "not-a-real-password" not in result.output


def test_install_service_dry_run_bad_config_and_no_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _technician_config(tmp_path / "src")
    root = tmp_path / "root"
    runner = CliRunner()
    dry = runner.invoke(
        edge_command,
        ["install-service", "--config", str(config), "--root", str(root), "--dry-run"],
    )
    assert dry.exit_code == 0, dry.output
    assert f"--- {root}/etc/systemd/system/owlgate-edge.service (mode 0644)" in dry.stdout
    assert 'state_dir = "/var/lib/owlgate"' in dry.stdout
    assert not root.exists()

    _config_with(config, 'url = "mqtt://fleet.example:1883"', 'url = "http://fleet.example"')
    bad = runner.invoke(
        edge_command, ["install-service", "--config", str(config), "--root", str(root)]
    )
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: ")
    assert "[mqtt] url" in bad.stderr
    assert not root.exists()

    _config_with(config, 'url = "http://fleet.example"', 'url = "mqtt://fleet.example"')
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    no_root = runner.invoke(edge_command, ["install-service", "--config", str(config)])
    assert no_root.exit_code == 1
    assert "sudo" in no_root.stderr


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (optional)")
    unit = tmp_path / "owlgate-edge.service"
    unit.write_text(render_unit(python=sys.executable))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "owlgate-edge.service" not in done.stderr, done.stderr


def test_protect_home_is_read_only_for_an_interpreter_in_home() -> None:
    unit = render_unit(python="/home/pi/owlgate/.venv/bin/python").splitlines()
    assert "ProtectHome=read-only" in unit


# --- status -------------------------------------------------------------------------------------


def _status(written_at: float, *, ready: bool = True) -> dict[str, Any]:
    return {
        "gateway_id": "0016c001ff10a0e1",
        "written_at": written_at,
        "agent_version": "owlgate-edge 0.1.0",
        "config_hash": "ab" * 32,
        "ready": ready,
        "agent": {"readings": 40},
        "radio": {
            "backend": "serial",
            "port": "/dev/ttyACM0",
            "connected": True,
            "rx_received": 120,
            "rx_delivered": 117,
            "rx_crc_bad": 3,
        },
        "uplink": {"connected": True, "published": 12, "reconnects": 1, "last_rtt_ms": 14},
        "control": {"connected": True},
        "outbox": {"depth": 2, "oldest_age_s": 0.4, "evicted": 0},
    }


def _status_dir(tmp_path: Path, status: dict[str, Any]) -> tuple[Path, str]:
    folder = tmp_path / "state"
    folder.mkdir()
    text = json.dumps(status, indent=1) + "\n"
    (folder / "status.json").write_text(text)
    return folder, text


def test_status_of_a_fresh_file(tmp_path: Path) -> None:
    folder, _ = _status_dir(tmp_path, _status(time.time()))
    result = CliRunner().invoke(edge_command, ["status", "--state-dir", str(folder)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "gateway   0016c001ff10a0e1 (owlgate-edge 0.1.0)"
    assert lines[1] == "ready     yes"
    assert lines[2] == (
        "radio     serial on /dev/ttyACM0: connected; received 120, delivered 117, CRC bad 3"
    )
    assert lines[3] == (
        "backhaul  MQTT connected; last RTT 14 ms, reconnects 1, published 12; control connected"
    )
    assert lines[4] == "outbox    depth 2, oldest 0 s, evicted 0"
    assert lines[5] == f"config    sha256 {'ab' * 32}"
    assert lines[6].startswith("written   ")
    assert lines[6].endswith(" s ago")
    assert "WARNING" not in result.stdout


def test_status_shows_wired_nodes_a_filling_outbox_and_restarted_loops(tmp_path: Path) -> None:
    status = _status(time.time())
    status["radio"] |= {
        "backend": "rak3172",
        "port": "/dev/ttyUSB0",
        "connected": False,
        "last_error": "the port closed",
    }
    status["outbox"] |= {
        "bytes": 220 * 1024 * 1024,
        "max_bytes": 256 * 1024 * 1024,
        "warning": True,
    }
    status["loops"] = {"restarts": {"health": 2}}
    status["wired"] = {
        "port": "/dev/ttyAMA0",
        "connected": True,
        "last_error": None,
        "nodes": [
            {
                "address": 1,
                "dev_eui": "70b3d57ed000a001",
                "answering": True,
                "readings": 40,
                "timeouts": 0,
                "committed_seq": 40,
            },
            {
                "address": 12,
                "dev_eui": "70b3d57ed000a00c",
                "answering": False,
                "readings": 3,
                "timeouts": 9,
                "committed_seq": 3,
            },
        ],
    }
    folder, _ = _status_dir(tmp_path, status)
    result = CliRunner().invoke(edge_command, ["status", "--state-dir", str(folder)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2] == (
        "radio     rak3172 on /dev/ttyUSB0: NOT connected (the port closed); received 120,"
        " delivered 117, CRC bad 3"
    )
    assert lines[4] == "outbox    depth 2, 220.0 of 256 MiB (86 %), oldest 0 s, evicted 0"
    assert lines[5:8] == [
        "wired     /dev/ttyAMA0: connected",
        "  node   1 70b3d57ed000a001: answering; readings 40, timeouts 0, stored up to 40",
        "  node  12 70b3d57ed000a00c: SILENT; readings 3, timeouts 9, stored up to 3",
    ]
    assert "WARNING: the outbox is above 80 % of its bound" in result.stdout
    assert "WARNING: agent loops failed and were restarted: health 2 (see the log)" in (
        result.stdout
    )


def test_status_of_a_stale_or_unready_agent(tmp_path: Path) -> None:
    folder, _ = _status_dir(tmp_path, _status(time.time() - 120))
    result = CliRunner().invoke(edge_command, ["status", "--state-dir", str(folder)])
    assert result.exit_code == 1
    warning = result.stdout.splitlines()[-1]
    assert warning.startswith("WARNING: agent not running or stuck: status written 12")
    seconds = int(warning.split()[-3])
    assert 120 <= seconds < 180

    (folder / "status.json").write_text(json.dumps(_status(time.time(), ready=False)))
    unready = CliRunner().invoke(edge_command, ["status", "--state-dir", str(folder)])
    assert unready.exit_code == 1
    assert "ready     no" in unready.stdout
    assert "agent running but not ready" in unready.stdout


def test_status_json_missing_and_bad_files(tmp_path: Path) -> None:
    folder, text = _status_dir(tmp_path, _status(time.time()))
    runner = CliRunner()
    raw = runner.invoke(edge_command, ["status", "--state-dir", str(folder), "--json"])
    assert raw.exit_code == 0
    assert raw.stdout == text

    missing = runner.invoke(edge_command, ["status", "--state-dir", str(tmp_path / "none")])
    assert missing.exit_code == 2
    assert "has not run with state_dir" in missing.stderr
    assert str(tmp_path / "none" / "status.json") in missing.stderr

    (folder / "status.json").write_text('{"half": ')
    broken = runner.invoke(edge_command, ["status", "--state-dir", str(folder)])
    assert broken.exit_code == 2
    assert "is not JSON" in broken.stderr

    both = runner.invoke(
        edge_command, ["status", "--state-dir", str(folder), "--config", "edge.toml"]
    )
    assert both.exit_code == 2
