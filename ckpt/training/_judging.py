"""Judging a run by its monitored metric: which save is best, and whether training should stop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from ckpt.model import Snapshot

__all__ = ["pick_best", "plateau"]

Mode = Literal["min", "max"]


def plateau(values: Sequence[float], patience: int, min_delta: float, mode: Mode) -> bool:
    """Lightning's ``EarlyStopping`` over a series of monitored values, oldest first.

    A value improves when it beats the best so far by more than ``min_delta``; the answer is true once
    ``patience`` values in a row did not, or when the newest value is nan or infinite (Lightning's
    ``check_finite``).
    """
    if values and not math.isfinite(values[-1]):
        return True
    best = math.inf if mode == "min" else -math.inf
    wait = 0
    for v in values:
        improved = v < best - min_delta if mode == "min" else v > best + min_delta
        if improved and math.isfinite(v):
            best, wait = v, 0
        else:
            wait += 1
    return wait > 0 and wait >= patience  # judged at the newest value, as EarlyStopping judges each


def pick_best(history: Sequence[Snapshot], metric: str, mode: Mode) -> Snapshot | None:
    """The snapshot with the best finite value of ``metric`` among those not pruned (history newest first:
    ties go to the newer one)."""
    scored = [s for s in history if not s.pruned and metric in s.metrics and math.isfinite(s.metrics[metric])]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda s: s.metrics[metric])
