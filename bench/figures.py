"""What a benchmark reports: named figures with units, goals and comparison figures."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure.

    ``goal_max``/``goal_min`` are the targets the issue sets (``None`` where it sets none);
    ``comparisons`` are the same quantity measured for other formats or systems, reported
    beside it under ``<name>.<comparison>``.
    """

    name: str
    value: float
    unit: str
    description: str
    goal_max: float | None = None
    goal_min: float | None = None
    comparisons: dict[str, float] = field(default_factory=dict)
    median: float | None = None

    @property
    def meets_goal(self) -> bool | None:
        if self.goal_max is None and self.goal_min is None:
            return None
        if self.goal_max is not None and self.value > self.goal_max:
            return False
        return not (self.goal_min is not None and self.value < self.goal_min)
