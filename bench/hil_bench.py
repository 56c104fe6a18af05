"""The hardware-in-the-loop figures.

``hil.world_frames_per_s``: how many transmissions a second the radio world
(:mod:`owlgate.hil.radio_world`) decides, at city scale: 100 gateways on a square grid 1.6 km
apart, 10,000 devices scattered over the same 16 km x 16 km, one hour of traffic (each device
reports twice, at a fixed SF7..SF10, on one of the eight EU868 channels of a full gateway,
20-byte PHYPayloads). Each round builds a fresh world from the same seed and runs the hour in
one batch, so the links of every device are computed in the round too: the figure is
transmissions over wall time, every gateway's receptions and losses included. No goal of its
own; the issue's scale goal (100 gateways, 10,000 sensors on this machine) needs this to
stay well above the 5.6 frames/s those sensors send.
"""

from __future__ import annotations

import random
import statistics
import time

from owlgate.hil.radio_world import Device, Gateway, RadioWorld, Transmission

from .figures import Figure

SEED = 2026
GATEWAY_SPACING_M = 1600.0
#: EU868: the three default channels and the five of a full eight-channel gateway.
CHANNELS_HZ = (
    868_100_000,
    868_300_000,
    868_500_000,
    867_100_000,
    867_300_000,
    867_500_000,
    867_700_000,
    867_900_000,
)


class BenchFailed(RuntimeError):
    """The world lost track of a transmission: no figure rather than a wrong one."""


def city(devices: int, gateways: int, seed: int = SEED) -> RadioWorld:
    """Gateways on a square grid, devices scattered uniformly over the same area."""
    rng = random.Random(seed)
    side = max(1, round(gateways**0.5))
    placed = [
        Gateway(f"gw{i}", (i % side) * GATEWAY_SPACING_M, (i // side) * GATEWAY_SPACING_M)
        for i in range(gateways)
    ]
    extent = side * GATEWAY_SPACING_M
    scattered = [
        Device(f"dev{i}", rng.uniform(0, extent), rng.uniform(0, extent)) for i in range(devices)
    ]
    return RadioWorld(placed, scattered, seed=seed)


def hour_of_traffic(world: RadioWorld, seed: int = SEED) -> list[Transmission]:
    """Two reports per device in one hour, half an hour apart."""
    rng = random.Random(seed)
    frames: list[Transmission] = []
    for device_id in world.devices:
        sf = rng.choice((7, 7, 7, 8, 9, 10))
        first = rng.uniform(0, 1800)
        frames.extend(
            Transmission(device_id, start, rng.choice(CHANNELS_HZ), sf, 20)
            for start in (first, first + 1800)
        )
    return frames


def _round(devices: int, gateways: int) -> float:
    world = city(devices, gateways)
    frames = hour_of_traffic(world)
    started = time.perf_counter()
    result = world.run(frames)
    elapsed = time.perf_counter() - started
    decided = result.counters["sent"] + result.counters["refused_duty_cycle"]
    if decided != len(frames):
        raise BenchFailed(f"{len(frames)} transmissions in, {decided} decided")
    return len(frames) / elapsed


def run(*, quick: bool = False) -> list[Figure]:
    """The ``hil`` suite; ``quick``: 1,000 devices and 9 gateways, one round (a smoke run)."""
    devices, gateways, rounds = (1_000, 9, 1) if quick else (10_000, 100, 3)
    rates = [_round(devices, gateways) for _ in range(rounds)]
    return [
        Figure(
            "hil.world_frames_per_s",
            max(rates),
            "frames/s",
            f"radio world: one hour of traffic of {devices:,} devices (two reports each) "
            f"through {gateways} gateways 1.6 km apart, links, collisions, demodulators and "
            "duty cycle decided, transmissions per second of wall time",
            median=statistics.median(rates),
        )
    ]
