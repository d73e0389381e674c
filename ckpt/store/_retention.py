"""Retention: which snapshots of a branch's history keep their tensors, and pruning the others.

A policy looks at a history (newest first) and names the snapshots it keeps; policies compose with
``AnyOf`` (keep what any of them keeps). ``Store.retain(branch, policy)`` prunes the rest. Whatever the
policy says, tagged and frozen snapshots, branch heads and the base of every adapter that keeps its tensors
(``adapter_bases``) are always kept, and pruning keeps every record in the log.

Example:
    >>> policy = AnyOf(KeepLast(3), KeepBest("val_loss", 2, mode="min"), KeepEvery(1000))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from ckpt.errors import CkptError, FrozenRefError, RecordError, RefError
from ckpt.model import Snapshot, TagRecord
from ckpt.store import _layout as layout
from ckpt.store._parts import StoreParts

__all__ = ["AnyOf", "KeepBest", "KeepEvery", "KeepLast", "RetentionPolicy", "adapter_bases", "prune", "retain"]


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


# -- applying a policy ---------------------------------------------------------------------------------------


def prune(parts: StoreParts, rev: str, *, reason: str | None) -> Snapshot:
    """Mark a snapshot pruned, unless a ref or a frozen release needs it; see ``Store.prune``."""
    snap = parts.resolve(rev)
    _check_prunable(parts, snap.id)
    if not snap.pruned:
        parts.mark_pruned(snap.id, reason)
        try:  # a ref made meanwhile (a freeze, a reset) wins over the prune
            _check_prunable(parts, snap.id)
        except RefError:
            parts.backend.delete([layout.pruned_path(snap.id)])
            raise
    return snap.model_copy(update={"pruned": True})


def _check_prunable(parts: StoreParts, snapshot_id: str) -> None:
    short = snapshot_id[:12]
    tags = parts.refs.tags()
    for name, tag in tags.items():
        if tag.id == snapshot_id:
            if tag.frozen:
                raise FrozenRefError(f"snapshot {short} is the frozen release {name!r}; it is never pruned")
            raise RefError(
                f"snapshot {short} is tagged {name!r}",
                hint=f"delete the tag first: store.delete_tag({name!r})",
                cli_hint=f"delete the tag first: `ckpt tag -d {name}`",
            )
    if snapshot_id in parts.release_needs(tags):
        raise FrozenRefError(f"snapshot {short} is the base of a frozen adapter release; it is never pruned")
    needed = adapter_bases(parts, tags)
    if snapshot_id in needed:
        adapter = needed[snapshot_id]
        raise RefError(
            f"snapshot {short} is the base of adapter {adapter[:12]}, which is not pruned: loading the adapter "
            "merged needs the base's tensors",
            hint=f"prune the adapter first (store.prune({adapter[:12]!r})), or keep the base",
            cli_hint=f"prune the adapter first (`ckpt prune {adapter[:12]}`), or keep the base",
        )
    for name, head in parts.refs.branches().items():
        if head == snapshot_id:
            raise RefError(
                f"snapshot {short} is the head of branch {name!r}",
                hint=f"move the branch (store.reset({name!r}, rev)) or delete it (store.delete_branch({name!r}))",
                cli_hint=f"move the branch (`ckpt reset {name} REV`) or delete it (`ckpt branch -d {name}`)",
            )


def retain(parts: StoreParts, branch: str, policy: RetentionPolicy, *, dry_run: bool) -> list[Snapshot]:
    """Prune what ``policy`` does not keep of a branch's history; see ``Store.retain``."""
    history = [s for s in parts.log(branch) if not s.pruned]
    tags = parts.refs.tags()
    protected = {t.id for t in tags.values()} | set(parts.refs.branches().values()) | parts.release_needs(tags)
    keep = policy.keep(history) | protected | set(adapter_bases(parts, tags))
    doomed = [s for s in history if s.id not in keep]
    if not dry_run and doomed:
        for s in doomed:
            parts.mark_pruned(s.id, f"retention: {policy!r}")
        # refs made meanwhile (a freeze, a reset, a branch) win over the prune
        tags = parts.refs.tags()
        now_protected = {t.id for t in tags.values()} | set(parts.refs.branches().values()) | parts.release_needs(tags)
        now_protected |= set(adapter_bases(parts, tags))
        raced = [s for s in doomed if s.id in now_protected]
        if raced:
            parts.backend.delete([layout.pruned_path(s.id) for s in raced])
            doomed = [s for s in doomed if s.id not in now_protected]
    return [s.model_copy(update={"pruned": True}) for s in doomed]


def adapter_bases(parts: StoreParts, tags: Mapping[str, TagRecord] | None = None) -> dict[str, str]:
    """The snapshots some adapter that keeps its tensors needs as its base (transitively), each with one such adapter.

    Every snapshot reachable from a branch or a tag (following parents and bases) that is not pruned and records
    a ``base`` needs that base's tensors to load merged, whether it is tagged, a branch head, or an older save
    that retention kept; so does a base that is itself an adapter. A record that cannot be read ends the walk
    there (``verify`` reports it).

    Returns:
        base id → the id of an adapter that needs it.
    """
    tags = parts.refs.tags() if tags is None else tags
    pruned = parts.pruned()
    todo = [*parts.refs.branches().values(), *(t.id for t in tags.values())]
    bases: dict[str, str | None] = {}
    while todo:
        sid = todo.pop()
        if sid in bases:
            continue
        try:
            snap = parts.objects.get_snapshot(sid)
        except CkptError:
            continue
        bases[sid] = snap.base
        todo.extend(snap.parents)
        if snap.base:
            todo.append(snap.base)
    needed: dict[str, str] = {}
    for sid, base in bases.items():
        if sid in pruned:
            continue
        while base and base not in needed:
            needed[base] = sid
            base = bases.get(base)
    return needed
