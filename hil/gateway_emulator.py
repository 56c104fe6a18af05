"""``owlgate hil gateway``: one emulated gateway's radio side in its own process.

It runs an :class:`~owlgate.hil.concentrator.EmulatedConcentrator` on a pty (its stable link
path is the first line on stdout, ``LINK <path>``, so a parent can point an edge agent at it)
and the emulated devices assigned to this gateway, built from the ``fleet seed`` manifest:
ABP devices with their session keys, OTAA devices that join first through the edge agent and
the fleet's join server. Each device is in exactly one gateway process, so its frame counter
has one owner; cross-gateway duplicates are not emulated.

Every ``interval_s`` (with jitter, so devices do not fire together) each joined device sends
one uplink. On SIGTERM or SIGINT, or after ``duration_s``, it stops and writes a JSON report of
every reading it generated (``dev_eui``, ``fcnt``, ``values``) to the report file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..codecs.errors import OwlgateError
from .concentrator import EmulatedConcentrator
from .devices import DeviceError, EmulatedDevice

log = logging.getLogger(__name__)

#: How often the loop looks for due devices and new transmit requests.
_TICK_S = 0.1
#: An OTAA device that heard no accept asks again after this long.
_JOIN_RETRY_S = 8.0
#: After the host configures the radio, time for its MQTT link and the fleet's ABP sessions
#: (sent when the gateway goes online) before the first uplink: frames sent earlier would be
#: dropped as unknown devices, which the demo would count as lost.
_SETTLE_S = 2.0


class EmulatorError(OwlgateError):
    """The gateway emulator cannot start: a bad manifest or device list."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.offset = None


def build_devices(
    manifest: dict[str, Any], dev_euis: list[str] | None, *, interval_s: float, seed: int
) -> list[EmulatedDevice]:
    """The manifest's devices (only ``dev_euis`` if given) as emulated devices."""
    entries = {entry["dev_eui"]: entry for entry in manifest["devices"]}
    wanted = list(entries) if dev_euis is None else dev_euis
    devices = []
    for index, eui in enumerate(wanted):
        entry = entries.get(eui)
        if entry is None:
            raise EmulatorError(f"device {eui} is not in the manifest")
        common: dict[str, Any] = {"seed": seed + index, "report_interval_s": interval_s}
        if entry["activation"] == "abp":
            device = EmulatedDevice.abp(
                entry["profile_id"],
                bytes.fromhex(eui),
                dev_addr=int(entry["dev_addr"], 16),
                nwk_s_key=bytes.fromhex(entry["nwk_s_key"]),
                app_s_key=bytes.fromhex(entry["app_s_key"]),
                **common,
            )
        else:
            device = EmulatedDevice.otaa(
                entry["profile_id"],
                bytes.fromhex(eui),
                join_eui=int(entry["join_eui"], 16),
                app_key=bytes.fromhex(entry["app_key"]),
                **common,
            )
        devices.append(device)
    return devices


@dataclass
class GatewayRun:
    """What one run generated; :meth:`report` is the JSON written at the end."""

    gateway_id: str
    readings: list[dict[str, Any]] = field(default_factory=list)
    joins: int = 0

    def report(self) -> dict[str, Any]:
        return {"gateway_id": self.gateway_id, "joins": self.joins, "readings": self.readings}


async def run_gateway(
    concentrator: EmulatedConcentrator,
    devices: list[EmulatedDevice],
    run: GatewayRun,
    stop: asyncio.Event,
    *,
    interval_s: float,
    rng: random.Random,
) -> None:
    """Drive ``devices`` through ``concentrator`` until ``stop`` is set; the first uplinks wait
    until the host has configured the radio (a real radio hears nothing before that)."""
    while concentrator.radio_config is None and not stop.is_set():
        await _pause(stop, _TICK_S)
    await _pause(stop, _SETTLE_S)
    start = time.monotonic()
    # First reports spread over one interval so the devices do not all fire at once.
    next_at = {d.dev_eui: start + rng.uniform(0.5, max(0.6, interval_s)) for d in devices}
    join_sent: dict[bytes, float] = {}
    seen_tx = 0
    while not stop.is_set():
        now = time.monotonic()
        tx = concentrator.tx_requests
        for request in tx[seen_tx:]:
            for device in devices:
                if device.joined or device.dev_eui not in join_sent:
                    continue
                try:
                    device.accept_join(request.payload)
                except DeviceError:
                    continue
                run.joins += 1
                next_at[device.dev_eui] = now + rng.uniform(0.2, 1.0)
                break
        seen_tx = len(tx)
        for device in devices:
            if now < next_at[device.dev_eui]:
                continue
            if not device.joined:
                if now - join_sent.get(device.dev_eui, -_JOIN_RETRY_S) >= _JOIN_RETRY_S:
                    concentrator.inject(device.join_request())
                    join_sent[device.dev_eui] = now
                continue
            phy, values = device.uplink(now)
            frame = device.rx_frame(phy, timestamp_us=concentrator.counter_us())
            concentrator.inject(phy, rssi_dbm=frame.rssi_dbm, snr_db=frame.snr_db)
            run.readings.append(
                {"dev_eui": device.dev_eui.hex(), "fcnt": device.f_cnt - 1, "values": values}
            )
            next_at[device.dev_eui] = now + interval_s * rng.uniform(0.85, 1.15)
        await _pause(stop, _TICK_S)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def emulate(
    *,
    link_dir: Path,
    manifest: dict[str, Any],
    gateway_id: str,
    dev_euis: list[str] | None,
    duration_s: float | None,
    interval_s: float,
    seed: int,
) -> GatewayRun:
    """The whole process but the report: concentrator up, ``LINK`` printed, devices run until
    SIGTERM, SIGINT or ``duration_s``; returns what was generated."""
    devices = build_devices(manifest, dev_euis, interval_s=interval_s, seed=seed)
    run = GatewayRun(gateway_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if duration_s is not None:
        loop.call_later(duration_s, stop.set)
    async with EmulatedConcentrator(
        link_dir, eui=bytes.fromhex(gateway_id), seed=seed
    ) as concentrator:
        print(f"LINK {concentrator.path}", flush=True)
        await run_gateway(
            concentrator, devices, run, stop, interval_s=interval_s, rng=random.Random(seed)
        )
    return run


def write_report(run: GatewayRun, report: Path) -> None:
    """Write ``run``'s report as JSON, atomically (a reader never sees half a file)."""
    partial = report.with_suffix(".partial")
    partial.write_text(json.dumps(run.report()))
    partial.replace(report)
