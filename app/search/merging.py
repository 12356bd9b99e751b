"""Which segments to merge: a tiered policy that keeps the segment count logarithmic.

Segments are grouped in tiers by live size (tier 0 below `floor_questions`, then one tier per factor
of `factor`); when a tier holds `factor` segments they are merged into one of the next tier, so a
question is rewritten about log_factor(N / floor) times over its life and a write never copies the
large base segment. A segment whose rows are mostly deleted is rewritten on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.search.segment import SegmentView


@dataclass(frozen=True)
class MergePolicy:
    factor: int = 8
    floor_questions: int = 1024
    max_dead_fraction: float = 0.4

    def __post_init__(self):
        if self.factor < 2:
            raise ValueError(f"merge factor must be at least 2, got {self.factor}")
        if self.floor_questions < 1:
            raise ValueError(f"floor_questions must be at least 1, got {self.floor_questions}")

    def tier(self, questions: int) -> int:
        if questions < self.floor_questions:
            return 0
        return 1 + int(math.log(questions / self.floor_questions, self.factor))

    def pick(self, views: tuple[SegmentView, ...]) -> tuple[SegmentView, ...] | None:
        """The views to merge next (by identity of their segments), or None."""
        for view in views:
            if view.segment.size >= self.floor_questions and view.dead_fraction > self.max_dead_fraction:
                return (view,)
        tiers: dict[int, list[SegmentView]] = {}
        for view in views:
            tiers.setdefault(self.tier(view.live_count), []).append(view)
        for tier in sorted(tiers):
            if len(tiers[tier]) >= self.factor:
                return tuple(tiers[tier])
        return None
