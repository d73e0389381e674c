"""A run's history, read from the store: the marks a ``Checkpointer`` leaves on its saves, and what they allow.

A run's history is the branch's chain of ``continue`` saves back to (and with) the snapshot that started it
(a root, or a fine-tune's first snapshot), through branch points. Every save a ``Checkpointer`` makes carries
``metadata["checkpointer"] = {"branch": …, "run": …, "save": n}``: retention prunes only the saves made on
its own branch, and ``should_stop`` tells a committed save from one still in flight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ckpt.model import Snapshot
from ckpt.store import RetentionPolicy

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["METADATA_KEY", "OwnSaves", "RunHistory", "mark", "mark_of", "saved_on"]

#: Metadata key under which a ``Checkpointer`` marks its saves.
METADATA_KEY = "checkpointer"


def mark_of(metadata: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(run, save)`` of a ``Checkpointer``'s mark in metadata (``(None, None)`` without one)."""
    m = metadata.get(METADATA_KEY)
    return (m.get("run"), m.get("save")) if isinstance(m, dict) else (None, None)


def mark(snap: Snapshot) -> tuple[Any, Any] | None:
    """Which ``Checkpointer`` run and which of its saves made a snapshot (``None``: not a ``Checkpointer``'s)."""
    m = mark_of(snap.metadata)
    return None if m == (None, None) else m


def saved_on(snap: Snapshot) -> str | None:
    """The branch a ``Checkpointer`` saved a snapshot on (``None``: not a ``Checkpointer``'s)."""
    m = snap.metadata.get(METADATA_KEY)
    if isinstance(m, dict):
        branch = m.get("branch")
        return branch if isinstance(branch, str) else None
    return None


class OwnSaves:
    """A retention policy applied to the saves a ``Checkpointer`` made on one branch; everything else is kept."""

    def __init__(self, policy: RetentionPolicy, branch: str) -> None:
        self.policy = policy
        self.branch = branch

    def __repr__(self) -> str:
        return f"{self.policy!r} over the saves of branch {self.branch!r}"

    def keep(self, history: Sequence[Snapshot]) -> set[str]:
        """What the policy keeps of this branch's own saves, and every other snapshot."""
        own = [s for s in history if saved_on(s) == self.branch]
        mine = {s.id for s in own}
        return self.policy.keep(own) | {s.id for s in history if s.id not in mine}


class RunHistory:
    """The run of one branch, read from the store; snapshot records (immutable) are remembered, so that
    reading the run again costs the new saves only, not the whole history."""

    def __init__(self, store: Store, branch: str) -> None:
        self.store = store
        self.branch = branch
        self._records: dict[str, Snapshot] = {}

    def head(self) -> str | None:
        """The branch's head, or ``None`` before its first save."""
        return self.store.branches().get(self.branch)

    def run(self) -> list[Snapshot]:
        """The run's snapshots, newest first, from remembered records (their ``pruned`` flags may be stale)."""
        sid = self.head()
        out: list[Snapshot] = []
        batch = 1
        while sid is not None:
            snap = self._records.get(sid)
            if snap is None:  # not seen yet: read in batches that double while they are all new
                for s in self.store.log(sid, limit=batch):
                    self._records[s.id] = s
                batch *= 2
                snap = self._records[sid]
            else:
                batch = 1
            out.append(snap)
            if snap.relation != "continue" or not snap.parents:
                break
            sid = snap.parents[0]
        return out

    def run_fresh(self) -> list[Snapshot]:
        """The run's snapshots, newest first, with up-to-date ``pruned`` flags (reads the whole history)."""
        sid = self.head()
        if sid is None:
            return []
        out = []
        for snap in self.store.log(sid):
            self._records[snap.id] = snap
            out.append(snap)
            if snap.relation != "continue":
                break
        return out
