"""``CheckpointerOptions``: how a ``Checkpointer`` judges, keeps and writes a run's saves.

Everything about a run but its store and branch, in one frozen record: a ``Checkpointer`` is made from it, and
the framework callbacks (Lightning, the Hugging Face ``Trainer``) take one instead of copying its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ckpt.errors import RecordError
from ckpt.store import AnyOf, KeepBest, KeepEvery, KeepLast, RetentionPolicy
from ckpt.training._history import OwnSaves

__all__ = ["CheckpointerOptions", "keep_policy"]


@dataclass(frozen=True)
class CheckpointerOptions:
    """How a ``Checkpointer`` judges, keeps and writes the saves of a run.

    Attributes:
        monitor: the validation metric ``best()``, ``should_stop()`` and ``freeze_best()`` judge by (e.g.
            ``"val_loss"``); a save without it is not judged.
        mode: ``"min"`` (losses) or ``"max"`` (accuracies).
        retention: which of the run's saves keep their tensors after each save, a composable policy
            (``ckpt.AnyOf(ckpt.KeepLast(3), ckpt.KeepBest("val_loss", 2))``); ``None``: every save is kept.
            With a ``monitor``, the best save by it is always kept too (``best()`` and ``freeze_best()`` need it),
            and so are tagged and frozen snapshots and branch heads. Only the saves a ``Checkpointer`` made on
            this branch are ever pruned.
        async_save: hash and write in the background (``save()`` only copies); ``False``: ``save()`` returns
            when the snapshot is committed.
        model: the model name recorded on the snapshots (kept from the parent when ``None``) and the default
            of ``freeze_best``.
        max_pending: at most this many async saves queued or running; each keeps one set of staging buffers.
        digest_cache: reuse the digests of tensors that did not change (see ``ckpt.training``).

    Raises:
        RecordError: ``mode`` is not ``"min"`` or ``"max"``; ``max_pending`` is below 1; ``retention`` is not a
            policy.

    Example:
        >>> options = CheckpointerOptions(monitor="val_loss", retention=KeepLast(3))
        >>> options.retention
        KeepLast(n=3)
    """

    monitor: str | None = None
    mode: Literal["min", "max"] = "min"
    retention: RetentionPolicy | None = None
    async_save: bool = True
    model: str | None = None
    max_pending: int = 2
    digest_cache: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise RecordError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.max_pending < 1:
            raise RecordError(f"max_pending must be at least 1, got {self.max_pending}")
        if self.retention is not None and not isinstance(self.retention, RetentionPolicy):
            raise RecordError(
                f"retention must be a retention policy, got {type(self.retention).__name__}",
                hint="e.g. retention=ckpt.AnyOf(ckpt.KeepLast(3), ckpt.KeepBest('val_loss', 2))",
            )

    def policy(self, branch: str) -> OwnSaves | None:
        """The policy ``Store.retain`` applies after each save on ``branch``: ``retention``, plus the best save by
        ``monitor``, over the saves a ``Checkpointer`` made on ``branch``; ``None`` without ``retention``."""
        if self.retention is None:
            return None
        keep = self.retention
        if self.monitor is not None and not _keeps_best(keep, self.monitor, self.mode):
            keep = AnyOf(keep, KeepBest(self.monitor, 1, mode=self.mode))
        return OwnSaves(keep, branch)


def keep_policy(
    *, last: int | None, best: int | None, every: int | None, monitor: str | None, mode: Literal["min", "max"]
) -> RetentionPolicy | None:
    """The policy of ``Checkpointer``'s ``keep_last`` / ``keep_best`` / ``keep_every`` shorthand.

    Raises:
        RecordError: ``keep_best`` without a ``monitor``; a negative count.
    """
    if best is not None and monitor is None:
        raise RecordError("keep_best needs a metric to judge by", hint="pass monitor='val_loss' (or another)")
    policies: list[RetentionPolicy] = []
    if last is not None:
        policies.append(KeepLast(last))
    if best is not None and monitor is not None:
        policies.append(KeepBest(monitor, best, mode=mode))
    if every is not None:
        policies.append(KeepEvery(every))
    if not policies:
        return None
    return policies[0] if len(policies) == 1 else AnyOf(*policies)


def _keeps_best(policy: RetentionPolicy, metric: str, mode: str) -> bool:
    """Whether ``policy`` keeps at least the best save by ``metric`` (a ``KeepBest`` of it, at its top level)."""
    parts = policy.policies if isinstance(policy, AnyOf) else (policy,)
    return any(isinstance(p, KeepBest) and p.metric == metric and p.mode == mode and p.k >= 1 for p in parts)
