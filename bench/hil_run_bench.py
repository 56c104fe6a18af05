"""The whole-system HIL figure: a day of a 1,000-sensor district through real agents and a
real fleet.

``hil.district_1000_day_s``: ``owlgate hil run district-1000`` (:mod:`owlgate.hil.run`: 6 edge
agents as processes, ``owlgate fleet serve`` with its embedded broker, the district simulated
in the runner's process) at :data:`SPEED` times real time: wall seconds from the first
simulated second to the fleet having stored what the agents held (the simulated day, then the
drain, whose last :data:`~owlgate.hil.run.DRAIN_QUIET_S` seconds are the quiet that ends it).
Setup (seeding, starting the processes) and the report are outside it. Goal: at most 300 s,
the issue's "24 hours of a 1,000-sensor district in at most 5 minutes". Beside it: the speed
achieved, the delivery ratio, the p99 latency from a frame's injection to the fleet storing it
(a pipeline that falls behind shows there first) and the frames lost for no known reason
(which must be 0). With ``quick``: one simulated hour at the same speed.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Final

from owlgate.hil.report import build_report
from owlgate.hil.run import RunSettings, resolve_scenario, run_scenario

from .figures import Figure

SPEED: Final = 300.0
GOAL_S: Final = 300.0
QUICK_DURATION_S: Final = 3600.0


def run(*, quick: bool = False) -> list[Figure]:
    """The ``hil-run`` suite (one run: a day, or an hour with ``quick``)."""
    with tempfile.TemporaryDirectory(prefix="owlgate-bench-hil-run-") as folder:
        settings = RunSettings(
            scenario=resolve_scenario("district-1000"),
            workdir=Path(folder) / "run",
            speed=SPEED,
            duration_s=QUICK_DURATION_S if quick else None,
            plots=False,
        )
        result = asyncio.run(run_scenario(settings, say=lambda _line: None))
        report = build_report(result)
    totals, latency = report["totals"], report["latency_s"]
    return [
        Figure(
            "hil.district_1000_day_s",
            result.wall_s + result.drain_s,
            "s",
            f"owlgate hil run district-1000 at {SPEED:g}x: {result.duration_s / 3600:g} h of "
            "1,000 sensors through 6 real edge agents and a real fleet (embedded broker), "
            "wall seconds from the first simulated second until the fleet had stored what the "
            f"agents held (drain {result.drain_s:.1f} s); {totals['frames_sent']:,} frames",
            goal_max=None if quick else GOAL_S,
            comparisons={
                "achieved_speed": result.duration_s / result.wall_s,
                "delivery": totals["delivery"] or 0.0,
                "latency_p99_s": latency["p99"] or 0.0,
                "unexplained": float(totals["unexplained"]),
            },
        )
    ]
