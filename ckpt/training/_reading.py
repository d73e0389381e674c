"""What a ``Checkpointer`` reads back from its run: the newest save, the best, the state to resume, early stopping.

Everything is read from the store (``_history``), so a restarted process, or a second ``Checkpointer`` on the
same branch, gets the same answers. ``RunReader`` is the reading half of ``Checkpointer``; the saving half
supplies ``wait()`` (saves in flight committed first) and ``_in_flight()`` (those saves, for ``should_stop``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from ckpt.errors import MissingObjectError, RecordError, StateMismatchError
from ckpt.model import Snapshot
from ckpt.training._history import RunHistory, mark, mark_of
from ckpt.training._judging import pick_best, plateau
from ckpt.training._options import CheckpointerOptions
from ckpt.training._save_job import SaveJob

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["RunReader"]


class RunReader:
    """The reading half of a ``Checkpointer``: queries over the saves of one run, read from the store.

    Attributes:
        store: the store.
        branch: the run's branch.
        options: how the run is judged, kept and written.
    """

    def __init__(self, store: Store, branch: str, options: CheckpointerOptions) -> None:
        self.store = store
        self.branch = branch
        self.options = options
        self._history = RunHistory(store, branch)

    @property
    def monitor(self) -> str | None:
        """The metric the run is judged by (``options.monitor``)."""
        return self.options.monitor

    @property
    def mode(self) -> Literal["min", "max"]:
        """``"min"`` or ``"max"`` (``options.mode``)."""
        return self.options.mode

    @property
    def model(self) -> str | None:
        """The model name recorded on the saves (``options.model``)."""
        return self.options.model

    def wait(self) -> None:
        """Wait until every save issued so far is committed (the saving half does; nothing to wait for here)."""

    def _in_flight(self) -> list[SaveJob]:
        """The saves issued and not known to be done (the saving half knows them; it raises their errors first)."""
        return []

    def latest(self) -> Snapshot | None:
        """The branch's newest snapshot (after the saves in flight), or ``None`` before the first save."""
        self.wait()
        head = self._history.head()
        return None if head is None else self.store.get(head)

    def best(self) -> Snapshot | None:
        """The run's best snapshot by ``monitor`` that still has its tensors; ties go to the newer one.

        Raises:
            RecordError: no ``monitor`` was given.
        """
        metric = self._require_monitor("best()")
        self.wait()
        return pick_best(self._history.run_fresh(), metric, self.mode)

    def resume_snapshot(self) -> Snapshot | None:
        """The snapshot ``resume()`` loads: the newest save of the run that still has its tensors.

        That is the branch's head, unless the head was pruned (a branch made or reset at a pruned snapshot):
        then the newest save before it that was not, with a warning.

        Raises:
            MissingObjectError: every save of the run was pruned.
        """
        return self._resume_point()

    def _resume_point(self, stacklevel: int = 3) -> Snapshot | None:
        self.wait()
        history = self._history.run_fresh()
        if not history:
            return None
        snap = next((s for s in history if not s.pruned), None)
        head = history[0]
        if snap is None:
            raise MissingObjectError(
                f"every save of branch {self.branch!r}, back to {history[-1].short_id}, was pruned: "
                "there is no state to resume from",
                hint=f"reset the branch to a snapshot that has its tensors: store.reset({self.branch!r}, rev)",
            )
        if snap is not head:
            warnings.warn(
                f"ckpt: the head of branch {self.branch!r}, {head.short_id} (step {head.step}), was pruned; "
                f"resuming from {snap.short_id} (step {snap.step}), the newest save that still has its tensors",
                stacklevel=stacklevel,
            )
        return snap

    def resume(self, objects: Mapping[str, Any] | None = None) -> Any | None:
        """The state tree of the run's newest complete save, or ``None`` when the branch has none yet.

        The newest save is the branch's head: a save interrupted by a crash never moved the branch. If the head
        was pruned (its tensors released), the newest save before it that was not (see ``resume_snapshot``).

        Args:
            objects: live objects with ``load_state_dict`` (modules, optimizers, schedulers …) by their key in
                the saved tree; each gets ``obj.load_state_dict(state[key])``.

        Returns:
            The saved state tree, or ``None``.

        Raises:
            StateMismatchError: a key of ``objects`` is not in the saved tree.
            MissingObjectError: every save of the run was pruned.

        Example:
            >>> state = ckpts.resume({"model": model, "optimizer": opt})  # doctest: +SKIP
            >>> start = 0 if state is None else state["epoch"] + 1  # doctest: +SKIP
        """
        snap = self._resume_point()
        if snap is None:
            return None
        state = self.store.load(snap.id)
        for key, obj in (objects or {}).items():
            if not isinstance(state, dict) or key not in state:
                keys = list(state) if isinstance(state, dict) else type(state).__name__
                raise StateMismatchError(f"snapshot {snap.short_id} has no {key!r} entry (its top level: {keys})")
            obj.load_state_dict(state[key])
        return state

    def should_stop(self, patience: int, min_delta: float = 0.0) -> bool:
        """Whether the monitored validation metric stopped improving: early stopping as Lightning's ``EarlyStopping``.

        Going through the run's saves that carry ``monitor`` (the ones in flight included, so this never waits
        for a background save), a save improves when it beats the best so far by more than ``min_delta``;
        the answer is true once ``patience`` saves in a row did not, or when the newest value is nan or inf.

        Args:
            patience: how many saves without improvement to tolerate.
            min_delta: the smallest change that counts as an improvement (≥ 0).

        Returns:
            Whether to stop.

        Raises:
            RecordError: no ``monitor``, or a negative ``patience`` or ``min_delta``.
        """
        metric = self._require_monitor("should_stop()")
        if patience < 0 or min_delta < 0:
            raise RecordError(f"patience and min_delta must be >= 0, got {patience} and {min_delta}")
        jobs = self._in_flight()
        committed = list(reversed(self._history.run()))  # oldest first
        marks = {mark(s) for s in committed}
        values = [s.metrics[metric] for s in committed if metric in s.metrics]
        for job in jobs:  # in flight: not committed when the history was read (a committed one has its mark there)
            if mark_of(job.record.get("metadata") or {}) in marks or job.failed():
                continue
            metrics = job.record.get("metrics") or {}
            if metric in metrics:
                values.append(metrics[metric])
        return plateau(values, patience, min_delta, self.mode)

    def freeze_best(self, *, model: str | None = None, name: str | None = None, message: str | None = None) -> str:
        """Publish the best snapshot as a frozen release tag, ``<model>-<YYYY-MM-DD>`` by default.

        Args:
            model: the model name of the release; default: the ``Checkpointer``'s, else the snapshot's.
            name: the full tag name instead.
            message: a release note.

        Returns:
            The tag name.

        Raises:
            RecordError: no ``monitor``, no save carries it, or no model name is known.
            RefExistsError: the tag exists (releases are never overwritten).
        """
        best = self.best()
        if best is None:
            raise RecordError(f"no snapshot of branch {self.branch!r} has the metric {self.monitor!r} to judge by")
        return self.store.freeze(best.id, model=model or self.model, name=name, message=message)

    def _require_monitor(self, what: str) -> str:
        if self.monitor is None:
            raise RecordError(f"{what} needs a metric to judge by", hint="Checkpointer(..., monitor='val_loss')")
        return self.monitor
