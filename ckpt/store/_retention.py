"""Retention policies: which snapshots of a branch's history keep their tensors.

A policy looks at a history (newest first) and names the snapshots it keeps; policies compose with
``AnyOf`` (keep what any of them keeps). ``Store.retain(branch, policy)`` prunes the rest. Whatever the
policy says, tagged and frozen snapshots and branch heads are always kept, and pruning keeps every record in
the log.

Example:
    >>> policy = AnyOf(KeepLast(3), KeepBest("val_loss", 2, mode="min"), KeepEvery(1000))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from ckpt.errors import RecordError
from ckpt.model import Snapshot

__all__ = ["AnyOf", "KeepBest", "KeepEvery", "KeepLast", "RetentionPolicy"]


@runtime_checkable
class RetentionPolicy(Protocol):
    """Decides which snapshots of a history keep their tensors."""

    def keep(self, history: Sequence[Snapshot]) -> set[str]:
        """Ids to keep, given a branch's history newest first (pruned snapshots already left out)."""
        ...


@dataclass(frozen=True)
class KeepLast:
    """Keep the ``n`` newest snapshots."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise RecordError(f"KeepLast needs n >= 0, got {self.n}")

    def keep(self, history: Sequence[Snapshot]) -> set[str]:
        """The ``n`` newest."""
        return {s.id for s in history[: self.n]}


@dataclass(frozen=True)
class KeepBest:
    """Keep the ``k`` best snapshots by a metric (``mode="min"`` for losses, ``"max"`` for accuracies).

    Snapshots without the metric, or with a NaN value, are never among the best.
    """

    metric: str
    k: int
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        if self.k < 0 or self.mode not in ("min", "max"):
            raise RecordError(f"KeepBest needs k >= 0 and mode 'min' or 'max', got k={self.k}, mode={self.mode!r}")

    def keep(self, history: Sequence[Snapshot]) -> set[str]:
        """The ``k`` best; ties go to the newer snapshot."""
        scored = [
            (s.metrics[self.metric], i, s.id)
            for i, s in enumerate(history)
            if self.metric in s.metrics and not math.isnan(s.metrics[self.metric])
        ]
        sign = 1 if self.mode == "min" else -1
        scored.sort(key=lambda t: (sign * t[0], t[1]))
        return {sid for _, _, sid in scored[: self.k]}


@dataclass(frozen=True)
class KeepEvery:
    """Keep every snapshot whose ``step`` is a multiple of ``n`` (snapshots without a step are not kept)."""

    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise RecordError(f"KeepEvery needs n > 0, got {self.n}")

    def keep(self, history: Sequence[Snapshot]) -> set[str]:
        """Snapshots at steps divisible by ``n``."""
        return {s.id for s in history if s.step is not None and s.step % self.n == 0}


class AnyOf:
    """Keep what any of the policies keeps."""

    def __init__(self, *policies: RetentionPolicy) -> None:
        self.policies = policies

    def __repr__(self) -> str:
        return f"AnyOf({', '.join(map(repr, self.policies))})"

    def keep(self, history: Sequence[Snapshot]) -> set[str]:
        """The union of every policy's choice."""
        out: set[str] = set()
        for p in self.policies:
            out |= p.keep(history)
        return out
