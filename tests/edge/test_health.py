"""Health collection from a fake /proc and /sys tree; absent sources are left out."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from owlgate.codecs.health import Health, RadioCounters, Throttle, decode_health, encode_health
from owlgate.edge.health import (
    AgentFigures,
    HealthSources,
    collect_health,
    read_cpu_temp_c,
    read_memory,
    read_throttled,
    read_uptime_s,
)

GATEWAY = bytes.fromhex("b827ebfffe000001")
CONFIG_HASH = bytes(range(32))
MEMINFO = """MemTotal:        3884096 kB
MemFree:          181172 kB
MemAvailable:    2884096 kB
Buffers:          123456 kB
HugePages_Total:       0
"""


def agent(**changes: object) -> AgentFigures:
    fields: dict[str, object] = {
        "gateway_id": GATEWAY,
        "seq": 7,
        "agent_started_s": 1000.0,
        "agent_version": "0.1.0",
        "config_hash": CONFIG_HASH,
        "radio": RadioCounters(10, 8, 2, 8, 1),
        "backhaul_rtt_ms": 42,
        "outbox_depth": 3,
        "outbox_oldest_age_s": 95,
        "outbox_evicted": 1,
        "reconnects": 4,
    }
    fields.update(changes)
    return AgentFigures(**fields)  # type: ignore[arg-type]


def fake_tree(root: Path) -> HealthSources:
    (root / "proc").mkdir()
    (root / "proc" / "uptime").write_text("12345.67 40000.12\n")
    (root / "proc" / "meminfo").write_text(MEMINFO)
    zone = root / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("48312\n")
    return HealthSources(
        proc_uptime=root / "proc" / "uptime",
        proc_meminfo=root / "proc" / "meminfo",
        thermal_temp=zone / "temp",
        vcgencmd=None,
        load=False,
    )


def fake_vcgencmd(folder: Path, output: str, exit_code: int = 0) -> str:
    script = folder / "vcgencmd"
    script.write_text(
        f"#!/bin/sh\n[ \"$1\" = get_throttled ] || exit 2\necho '{output}'\nexit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_collects_from_a_fake_pi(tmp_path: Path) -> None:
    sources = fake_tree(tmp_path)
    sources = HealthSources(
        proc_uptime=sources.proc_uptime,
        proc_meminfo=sources.proc_meminfo,
        thermal_temp=sources.thermal_temp,
        vcgencmd=fake_vcgencmd(tmp_path, "throttled=0x50005"),
        load=False,
    )
    health = collect_health(agent(), tmp_path, sources, now_s=1_780_000_000.9, monotonic_s=1300.5)
    assert health.time_s == 1_780_000_000
    assert health.uptime_s == 12345
    assert health.agent_uptime_s == 300
    assert health.cpu_temp_c == pytest.approx(48.312)
    assert health.throttled == Throttle.UNDER_VOLTAGE | Throttle.THROTTLED | (
        Throttle.UNDER_VOLTAGE_OCCURRED | Throttle.THROTTLED_OCCURRED
    )
    assert (health.mem_used_bytes, health.mem_total_bytes) == (
        (3884096 - 2884096) * 1024,
        3884096 * 1024,
    )
    assert health.disk_total_bytes is not None
    assert health.disk_used_bytes is not None
    assert 0 < health.disk_used_bytes <= health.disk_total_bytes
    assert health.load_1m is None
    assert (health.radio, health.backhaul_rtt_ms, health.reconnects) == (
        RadioCounters(10, 8, 2, 8, 1),
        42,
        4,
    )
    assert (health.outbox_depth, health.outbox_oldest_age_s, health.outbox_evicted) == (3, 95, 1)
    decoded = decode_health(encode_health(health))
    assert decoded.cpu_temp_c == 48.3  # 0.1 degC on the wire
    assert decoded.throttled == 0x50005
    assert decoded.mem_total_bytes == 3884096 * 1024
    assert decoded.gateway_id == GATEWAY


def test_absent_sources_are_left_out(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    sources = HealthSources(
        proc_uptime=missing / "uptime",
        proc_meminfo=missing / "meminfo",
        thermal_temp=missing / "temp",
        vcgencmd=str(missing / "vcgencmd"),
        load=False,
    )
    health = collect_health(
        agent(outbox_depth=0, outbox_oldest_age_s=None, radio=None, backhaul_rtt_ms=None),
        missing,
        sources,
        now_s=5.0,
        monotonic_s=1010.0,
    )
    expected = Health(
        gateway_id=GATEWAY,
        seq=7,
        time_s=5,
        # Without /proc/uptime the agent's own uptime stands in for the machine's.
        uptime_s=10,
        agent_uptime_s=10,
        agent_version="0.1.0",
        config_hash=CONFIG_HASH,
        outbox_evicted=1,
        reconnects=4,
    )
    assert health == expected
    assert decode_health(encode_health(health)) == expected


def test_load_averages_come_from_the_system(tmp_path: Path) -> None:
    sources = fake_tree(tmp_path)
    sources = HealthSources(
        proc_uptime=sources.proc_uptime,
        proc_meminfo=sources.proc_meminfo,
        thermal_temp=sources.thermal_temp,
        vcgencmd=None,
        load=True,
    )
    health = collect_health(agent(), tmp_path, sources)
    assert health.load_1m is not None
    assert health.load_5m is not None
    assert health.load_15m is not None
    assert min(health.load_1m, health.load_5m, health.load_15m) >= 0
    assert decode_health(encode_health(health)).load_15m == round(health.load_15m, 2)


def test_oldest_age_follows_the_depth(tmp_path: Path) -> None:
    sources = fake_tree(tmp_path)
    empty = collect_health(agent(outbox_depth=0, outbox_oldest_age_s=12), tmp_path, sources)
    assert empty.outbox_oldest_age_s is None
    unknown_age = collect_health(agent(outbox_depth=2, outbox_oldest_age_s=None), tmp_path, sources)
    assert unknown_age.outbox_oldest_age_s == 0
    for health in (empty, unknown_age):
        decoded = decode_health(encode_health(health))
        assert (decoded.outbox_depth, decoded.outbox_oldest_age_s) == (
            health.outbox_depth,
            health.outbox_oldest_age_s,
        )


@pytest.mark.parametrize(
    ("content", "expected"),
    [("0.00 0.00\n", 0), ("987654.99 1.0", 987654), ("", None), ("garbage", None)],
)
def test_uptime_parsing(tmp_path: Path, content: str, expected: int | None) -> None:
    path = tmp_path / "uptime"
    path.write_text(content)
    assert read_uptime_s(path) == expected


@pytest.mark.parametrize(
    ("content", "expected"), [("-5250\n", -5.25), ("0", 0.0), ("hot", None), ("", None)]
)
def test_temperature_parsing(tmp_path: Path, content: str, expected: float | None) -> None:
    path = tmp_path / "temp"
    path.write_text(content)
    assert read_cpu_temp_c(path) == expected


@pytest.mark.parametrize(
    "content",
    [
        "MemTotal: 100 kB\n",  # no MemAvailable (kernels before 3.14)
        "MemTotal: 100 kB\nMemAvailable: 200 kB\n",  # available > total
        "MemTotal: lots\nMemAvailable: 1 kB\n",
    ],
)
def test_meminfo_that_cannot_be_used(tmp_path: Path, content: str) -> None:
    path = tmp_path / "meminfo"
    path.write_text(content)
    assert read_memory(path) is None


def test_vcgencmd_failures_are_left_out(tmp_path: Path) -> None:
    assert read_throttled(None) is None
    assert read_throttled(str(tmp_path / "absent")) is None
    bad_output = tmp_path / "bad"
    bad_output.mkdir()
    assert read_throttled(fake_vcgencmd(bad_output, "VCHI initialization failed")) is None
    failing = tmp_path / "failing"
    failing.mkdir()
    assert read_throttled(fake_vcgencmd(failing, "throttled=0x0", exit_code=1)) is None
    good = tmp_path / "good"
    good.mkdir()
    assert read_throttled(fake_vcgencmd(good, "throttled=0x0")) == 0
