"""Timing helpers shared by every benchmark."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timing:
    """Per-call time in microseconds over ``repeat`` rounds of ``number`` calls each."""

    best_us: float
    median_us: float
    number: int
    repeat: int


def per_call(func: Callable[[], object], *, number: int, repeat: int = 7) -> Timing:
    """Time ``func`` like ``timeit``: the best round estimates the cost without noise from
    other processes; the median says what a loaded machine sees. GC is off while timing, as
    in ``timeit``, and one warm-up round runs first."""
    for _ in range(max(1, number // 10)):
        func()
    rounds = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                func()
            rounds.append((time.perf_counter() - start) / number * 1e6)
    finally:
        if was_enabled:
            gc.enable()
    return Timing(min(rounds), statistics.median(rounds), number, repeat)
