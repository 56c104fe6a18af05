"""What the gateway measures about itself for its health message.

:func:`collect_health` reads the machine (Linux, Raspberry Pi OS on a gateway) and combines it
with the agent's own figures into an :class:`owlgate.codecs.health.Health`. Every source is
optional: a laptop has no ``vcgencmd`` and often no thermal zone, a container may hide
``/proc/meminfo``. What cannot be read is left out of the message (``None``), never guessed;
an unreadable source is logged at debug level only, because it stays unreadable every interval.

Sources (REFERENCE.md, "Gateway health sources"): ``/proc/uptime`` (seconds since boot, first
field), ``/sys/class/thermal/thermal_zone0/temp`` (millidegrees C), ``vcgencmd get_throttled``
(the throttle bit field), ``os.getloadavg()``, ``/proc/meminfo`` (``MemTotal`` and
``MemAvailable`` in KiB; used = total - available, as ``free`` computes it) and
``shutil.disk_usage`` of the agent's state directory. The paths are parameters so the tests
can point them at a fake tree.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..codecs.errors import CodecError
from ..codecs.health import DEFAULT_INTERVAL_S, Health, RadioCounters, parse_get_throttled

log = logging.getLogger(__name__)

PROC_UPTIME = Path("/proc/uptime")
PROC_MEMINFO = Path("/proc/meminfo")
THERMAL_ZONE0 = Path("/sys/class/thermal/thermal_zone0/temp")
VCGENCMD = "vcgencmd"
VCGENCMD_TIMEOUT_S = 2.0
_KIB = 1024


@dataclass(frozen=True, slots=True)
class HealthSources:
    """Where the machine's figures come from; the defaults are the real ones.

    ``vcgencmd`` is a command name looked up on PATH, or a path; None skips the throttle flags.
    ``load`` False skips the load averages (``os.getloadavg``), which a test cannot fake.
    """

    proc_uptime: Path = PROC_UPTIME
    proc_meminfo: Path = PROC_MEMINFO
    thermal_temp: Path = THERMAL_ZONE0
    vcgencmd: str | None = VCGENCMD
    vcgencmd_timeout_s: float = VCGENCMD_TIMEOUT_S
    load: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentFigures:
    """What only the agent knows: its identity, counters and state."""

    gateway_id: bytes
    seq: int
    agent_started_s: float  # time.monotonic() when the agent started
    agent_version: str
    config_hash: bytes
    config_seq: int | None = None
    interval_s: int = DEFAULT_INTERVAL_S
    radio: RadioCounters | None = None
    backhaul_rtt_ms: int | None = None
    outbox_depth: int = 0
    outbox_oldest_age_s: int | None = None
    outbox_evicted: int = 0
    outbox_bytes: int | None = None
    outbox_max_bytes: int | None = None
    reconnects: int = 0


def read_uptime_s(path: Path = PROC_UPTIME) -> int | None:
    """Whole seconds since boot from ``/proc/uptime`` (``"12345.67 54321.00"``)."""
    text = _read(path)
    if text is None:
        return None
    try:
        return int(float(text.split()[0]))
    except (IndexError, ValueError):
        log.debug("unexpected content in %s: %r", path, text[:40])
        return None


def read_cpu_temp_c(path: Path = THERMAL_ZONE0) -> float | None:
    """Degrees C from a thermal zone's ``temp`` file (millidegrees, ``"48312"``)."""
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip()) / 1000
    except ValueError:
        log.debug("unexpected content in %s: %r", path, text[:40])
        return None


def read_memory(path: Path = PROC_MEMINFO) -> tuple[int, int] | None:
    """``(used, total)`` bytes from ``/proc/meminfo``; used is total minus MemAvailable."""
    text = _read(path)
    if text is None:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        # Lines look like "MemTotal:        3884096 kB".
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isascii() and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * _KIB
    total = fields.get("MemTotal")
    available = fields.get("MemAvailable")
    if total is None or available is None or available > total:
        log.debug("no MemTotal/MemAvailable in %s", path)
        return None
    return total - available, total


def read_disk(path: Path) -> tuple[int, int] | None:
    """``(used, total)`` bytes of the file system holding ``path``."""
    try:
        usage = shutil.disk_usage(path)
    except OSError as err:
        log.debug("disk usage of %s: %s", path, err)
        return None
    return usage.used, usage.total


def read_throttled(vcgencmd: str | None, timeout_s: float = VCGENCMD_TIMEOUT_S) -> int | None:
    """The ``vcgencmd get_throttled`` bit field, when the command exists (Raspberry Pi)."""
    if vcgencmd is None:
        return None
    binary = shutil.which(vcgencmd)
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, "get_throttled"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
        return int(parse_get_throttled(done.stdout))
    except (OSError, subprocess.SubprocessError, CodecError) as err:
        # Counted nowhere else: a Pi whose firmware tool fails is worth a warning.
        log.warning("vcgencmd get_throttled failed: %s", err)
        return None


def read_load() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, where the system has them."""
    try:
        return os.getloadavg()
    except OSError:
        log.debug("no load averages on this system")
        return None


def collect_health(
    agent: AgentFigures,
    state_dir: Path,
    sources: HealthSources | None = None,
    *,
    now_s: float | None = None,
    monotonic_s: float | None = None,
) -> Health:
    """A :class:`Health` from the machine's figures and the agent's.

    Blocking (file reads and at most one short subprocess): an asyncio caller runs it in a
    thread (``asyncio.to_thread``). ``now_s`` (UTC seconds) and ``monotonic_s`` default to
    the clocks; tests pass fixed values.
    """
    src = sources if sources is not None else HealthSources()
    now = time.time() if now_s is None else now_s
    monotonic = time.monotonic() if monotonic_s is None else monotonic_s
    uptime_s = read_uptime_s(src.proc_uptime)
    agent_uptime_s = max(0, int(monotonic - agent.agent_started_s))
    load = read_load() if src.load else None
    memory = read_memory(src.proc_meminfo)
    disk = read_disk(state_dir)
    return Health(
        gateway_id=agent.gateway_id,
        seq=agent.seq,
        time_s=int(now),
        interval_s=agent.interval_s,
        # Without /proc/uptime the agent's own uptime is the best lower bound for the machine's.
        uptime_s=agent_uptime_s if uptime_s is None else uptime_s,
        agent_uptime_s=agent_uptime_s,
        agent_version=agent.agent_version,
        config_hash=agent.config_hash,
        config_seq=agent.config_seq,
        cpu_temp_c=read_cpu_temp_c(src.thermal_temp),
        throttled=read_throttled(src.vcgencmd, src.vcgencmd_timeout_s),
        load_1m=None if load is None else load[0],
        load_5m=None if load is None else load[1],
        load_15m=None if load is None else load[2],
        mem_used_bytes=None if memory is None else memory[0],
        mem_total_bytes=None if memory is None else memory[1],
        disk_used_bytes=None if disk is None else disk[0],
        disk_total_bytes=None if disk is None else disk[1],
        radio=agent.radio,
        backhaul_rtt_ms=agent.backhaul_rtt_ms,
        outbox_depth=agent.outbox_depth,
        # The format wants the age exactly when the outbox is not empty.
        outbox_oldest_age_s=(agent.outbox_oldest_age_s or 0) if agent.outbox_depth > 0 else None,
        outbox_evicted=agent.outbox_evicted,
        outbox_bytes=agent.outbox_bytes,
        outbox_max_bytes=agent.outbox_max_bytes,
        reconnects=agent.reconnects,
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError as err:
        log.debug("cannot read %s: %s", path, err)
        return None
