"""``Checkpointer``: the saves of one training run on one branch, and what can be read back from them."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import JsonValue

from ckpt.errors import CkptError, IntegrityError, MissingObjectError, RecordError, StateMismatchError
from ckpt.model import Snapshot
from ckpt.state import flatten
from ckpt.store import AnyOf, KeepBest, KeepEvery, KeepLast, RetentionPolicy
from ckpt.store import _layout as layout
from ckpt.training.background import Background, track, untrack
from ckpt.training.digest_cache import DigestCache
from ckpt.training.handle import SaveHandle
from ckpt.training.history import METADATA_KEY, OwnSaves, RunHistory, mark, mark_of
from ckpt.training.judging import pick_best, plateau
from ckpt.training.save_job import SaveJob, check_record
from ckpt.training.staging import Slot, SlotPool, stage

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["Checkpointer"]


class Checkpointer:
    """Checkpoints of one training run on one branch of a store; a context manager.

    Args:
        store: the store (or its URL, opened with ``ckpt.open``).
        branch: the branch the run saves to (created by the first save).
        monitor: the validation metric ``best()``, ``should_stop()``, ``freeze_best()`` and ``keep_best``
            judge by (e.g. ``"val_loss"``); a save without it is not judged.
        mode: ``"min"`` (losses) or ``"max"`` (accuracies).
        keep_last: retention: keep the last N saves.
        keep_best: retention: keep the best K saves by ``monitor``.
        keep_every: retention: keep the saves at steps divisible by N.
        async_save: hash and write in the background (``save()`` only copies); ``False``: ``save()`` returns
            when the snapshot is committed.
        model: the model name recorded on the snapshots (kept from the parent when ``None``) and the default
            of ``freeze_best``.
        max_pending: at most this many async saves queued or running; each keeps one set of staging buffers.
        digest_cache: reuse the digests of tensors that did not change (see ``ckpt.training``).

    With any ``keep_*`` set, retention runs after each save; the best save by ``monitor`` is always kept, and
    so are tagged and frozen snapshots and branch heads. Pruned snapshots stay in the log; ``store.gc()``
    reclaims their bytes.

    Raises:
        RecordError: an invalid argument (``mode``, a negative count, ``keep_best`` without ``monitor`` …).

    Example:
        >>> with ckpt.Checkpointer(store, "main", monitor="val_loss", keep_last=3) as ckpts:  # doctest: +SKIP
        ...     ckpts.save({"model": model.state_dict()}, step=100, metrics={"val_loss": 0.4})
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        branch: str = "main",
        *,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        keep_last: int | None = None,
        keep_best: int | None = None,
        keep_every: int | None = None,
        async_save: bool = True,
        model: str | None = None,
        max_pending: int = 2,
        digest_cache: bool = True,
    ) -> None:
        if isinstance(store, (str, os.PathLike)):
            from ckpt.store import open as open_store

            store = open_store(store)
        from ckpt.model import check_ref_name

        check_ref_name(branch, kind="branch")
        if mode not in ("min", "max"):
            raise RecordError(f"mode must be 'min' or 'max', got {mode!r}")
        if keep_best is not None and monitor is None:
            raise RecordError("keep_best needs a metric to judge by", hint="pass monitor='val_loss' (or another)")
        if max_pending < 1:
            raise RecordError(f"max_pending must be at least 1, got {max_pending}")
        self.store = store
        self.branch = branch
        self.monitor = monitor
        self.mode: Literal["min", "max"] = mode
        self.model = model
        self.async_save = async_save
        self.max_pending = max_pending
        self.digest_cache = digest_cache
        self.policy = self._policy(keep_last, keep_best, keep_every)
        self._keep = (keep_last, keep_best, keep_every)
        self._cache = DigestCache()
        #: keys of tensors caught changing without a version bump; never cached again
        self.untracked: set[str] = self._cache.untracked
        #: marks this object's saves (``metadata["checkpointer"]["run"]``), with their count as ``"save"``
        self.run_id = os.urandom(6).hex()
        self._count = 0
        self._history = RunHistory(store, branch)
        self._lock = threading.Lock()
        self._errors: list[tuple[SaveHandle | None, BaseException]] = []
        self._jobs: list[SaveJob] = []
        self._slots = SlotPool(max_pending if async_save else 0)
        self._background = Background(f"ckpt-save-{branch}")
        self._closed = False
        self._pid = os.getpid()
        weakref.finalize(self, self._background.stop)  # dropped without close(): its thread stops too
        track(self)

    def _policy(self, last: int | None, best: int | None, every: int | None) -> RetentionPolicy | None:
        policies: list[RetentionPolicy] = []
        if last is not None:
            policies.append(KeepLast(last))
        if best is not None and self.monitor is not None:
            policies.append(KeepBest(self.monitor, best, mode=self.mode))
        if every is not None:
            policies.append(KeepEvery(every))
        if not policies:
            return None
        if self.monitor is not None and not best:
            policies.append(KeepBest(self.monitor, 1, mode=self.mode))  # best() and freeze_best() need it
        return OwnSaves(policies[0] if len(policies) == 1 else AnyOf(*policies), self.branch)

    def __repr__(self) -> str:
        return f"Checkpointer({self.store.url!r}, {self.branch!r})"

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception as save_error:  # the body's exception wins; the save's is attached to it
            _note(exc, f"ckpt: a background save failed too: {type(save_error).__name__}: {save_error}")

    # -- saving --------------------------------------------------------------------------------------

    def save(
        self,
        state: Any,
        *,
        step: int,
        epoch: int | float | None = None,
        metrics: Mapping[str, Any] | None = None,
        message: str | None = None,
        metadata: Mapping[str, JsonValue] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> SaveHandle:
        """Save a state tree as the branch's next snapshot (relation ``continue``).

        With ``async_save`` this copies the tensors to staging buffers and returns; the rest runs in the
        background. The state may be changed as soon as it returns: the snapshot holds the values of the call.
        Values, metadata and files are checked (and copied) here, so that a bad one fails this call, not a
        later one.

        Args:
            state: a tree of dicts, lists and tuples with tensors, arrays, numbers, strings, bools and None;
                objects with ``state_dict()`` (modules, optimizers, schedulers) stand for their state dicts.
            step: the training step.
            epoch: the epoch.
            metrics: named numbers, e.g. ``{"val_loss": 0.41}`` (0-d tensors are fine).
            message: a note.
            metadata: your own JSON metadata (the key ``"checkpointer"`` is ckpt's).
            files: attached files (``config.json`` …); ``None`` keeps the parent's.

        Returns:
            A handle: ``result()`` waits for and returns the snapshot.

        Raises:
            UnsupportedStateError: a leaf cannot be stored (raised here, before anything runs in the background).
            RecordError: a bad step, epoch, metric, message, metadata or file.
            CkptError: an earlier background save failed (its own error; one per call, oldest first), or the
                ``Checkpointer`` is closed.
        """
        self._check()
        meta = dict(metadata or {})
        if METADATA_KEY in meta:
            raise RecordError(f"the metadata key {METADATA_KEY!r} is ckpt's own")
        meta[METADATA_KEY] = {"branch": self.branch, "run": self.run_id, "save": self._count + 1}
        record = check_record(step, epoch, metrics, message, meta, files)
        cache = self._cache if self.digest_cache else None
        if not self.async_save:
            self._count += 1
            now = SaveJob(self, stage(state, None, cache), record, None, None)
            self._run(now)
            self._raise_errors()
            return now.handle
        self._background.start()  # first: handing the job over is then only a queue put
        slot: Slot | None = None
        job: SaveJob | None = None
        try:
            slot = self._slots.take()  # blocks while max_pending saves are in flight
            job = SaveJob(self, stage(state, slot, cache), record, slot, self._slots)
            self._count += 1
            self._enqueue(job)
        except BaseException:  # a bad state, or Ctrl-C: the save is not made, its buffers are free again
            if job is not None:
                job.cancel()  # unless the background thread took it already: then it simply completes
            elif slot is not None:
                self._slots.give(slot)
            raise
        return job.handle

    def wait(self) -> None:
        """Wait until every save issued so far is committed (or failed).

        Raises:
            CkptError: a background save failed (its own error; one per call, oldest first).
        """
        self._wait_jobs()
        self._raise_errors()

    def close(self) -> None:
        """Flush the saves in flight, stop the background thread and release the staging memory.

        Calling it again does nothing. Leaving the ``with`` block calls it. Interrupted (Ctrl-C) while it
        waits, it cancels the saves that have not started, lets the one being written finish in the
        background, and re-raises.

        Raises:
            CkptError: a background save failed (its own error; the errors of other failed saves are attached
                to it as notes).
        """
        if self._closed:
            return
        self._closed = True
        interrupted = True
        try:
            self._wait_jobs()
            interrupted = False
        finally:
            with self._lock:
                jobs, self._jobs = self._jobs, []
            for job in jobs:
                job.cancel()
            self._background.stop(wait=not interrupted)
            self._slots.release()
            self._cache.clear()
            untrack(self)
        self._raise_errors(final=True)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (reading still works; saving does not)."""
        return self._closed

    def reopened(self) -> Checkpointer:
        """A new ``Checkpointer`` on the same store and branch with the same settings (e.g. after ``close()``)."""
        keep_last, keep_best, keep_every = self._keep
        return Checkpointer(
            self.store,
            self.branch,
            monitor=self.monitor,
            mode=self.mode,
            keep_last=keep_last,
            keep_best=keep_best,
            keep_every=keep_every,
            async_save=self.async_save,
            model=self.model,
            max_pending=self.max_pending,
            digest_cache=self.digest_cache,
        )

    # -- reading the run -----------------------------------------------------------------------------

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

        Raises:
            RecordError: no ``monitor``, or a negative ``patience`` or ``min_delta``.
        """
        metric = self._require_monitor("should_stop()")
        if patience < 0 or min_delta < 0:
            raise RecordError(f"patience and min_delta must be >= 0, got {patience} and {min_delta}")
        self._raise_errors()
        with self._lock:
            jobs = list(self._jobs)
        committed = list(reversed(self._history.run()))  # oldest first
        marks = {mark(s) for s in committed}
        values = [s.metrics[metric] for s in committed if metric in s.metrics]
        for job in jobs:  # in flight: not committed when the history was read (a committed one has its mark there)
            if mark_of(job.record.metadata) in marks or job.failed():
                continue
            if metric in job.record.metrics:
                values.append(job.record.metrics[metric])
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

    # -- internals -----------------------------------------------------------------------------------

    def _require_monitor(self, what: str) -> str:
        if self.monitor is None:
            raise RecordError(f"{what} needs a metric to judge by", hint="Checkpointer(..., monitor='val_loss')")
        return self.monitor

    def _forked(self) -> bool:
        """Whether this is a forked copy of the process that made this object (its saves do not run here)."""
        return os.getpid() != self._pid

    def _check(self) -> None:
        if self._forked():
            raise CkptError(
                f"this Checkpointer of branch {self.branch!r} was made in another process; this one is a fork "
                "of it, where its background saves do not run",
                hint="make a new Checkpointer in this process",
            )
        if self._closed:
            raise CkptError(f"this Checkpointer of branch {self.branch!r} is closed", hint="make a new one")
        self._raise_errors()

    def _enqueue(self, job: SaveJob) -> None:
        """Hand a staged save to the background thread (after those issued before it)."""
        with self._lock:
            self._jobs = [j for j in self._jobs if not j.future.done()]
            self._jobs.append(job)
        self._background.submit(job)

    def _wait_jobs(self) -> None:
        """Wait for the saves issued so far (interruptible; their errors are raised by ``_raise_errors``)."""
        if self._forked():
            return
        with self._lock:
            futures = [j.future for j in self._jobs]
        concurrent.futures.wait(futures)
        with self._lock:
            self._jobs = [j for j in self._jobs if not j.future.done()]

    def _raise_errors(self, final: bool = False) -> None:
        """Raise the oldest error of a background save not raised yet (not by its handle either).

        ``final``: raise it with the others attached as notes, and forget them all.
        """
        with self._lock:
            pending = [(h, e) for h, e in self._errors if h is None or not h._observed]
            self._errors = [] if final else pending[1:]
        if not pending:
            return
        first = pending[0][1]
        for _, other in pending[1:] if final else ():
            _note(first, f"ckpt: another background save failed too: {type(other).__name__}: {other}")
        raise first

    def _run(self, job: SaveJob) -> None:
        """Commit one save, then apply retention; errors are recorded before the save's future resolves.

        An error of the save itself is reported by its handle too; one of retention (after a committed save)
        only by the ``Checkpointer``.
        """
        try:
            snap = self._commit(job)
        except BaseException as e:
            with self._lock:
                self._errors.append((job.handle, e))
            job.future.set_exception(e)
            return
        finally:
            job.release()
        if self.policy is not None:
            try:
                self.store.retain(self.branch, self.policy)
            except BaseException as e:
                with self._lock:
                    self._errors.append((None, e))
        job.future.set_result(snap)  # after retention: whoever waits for the save sees its effect

    def _commit(self, job: SaveJob) -> Snapshot:
        staged, record = job.staged, job.record
        assert staged is not None
        hits = [t for t in staged.tensors.values() if t.hit is not None]
        missing = [(t.key, d) for t in hits for d in t.hit or () if not self.store.backend.exists(layout.chunk_path(d))]
        if missing:
            self._cache.clear()
            key, digest = missing[0]
            raise MissingObjectError(
                f"chunk {digest[:12]} of the unchanged tensor {key!r} vanished from the store (gc?); "
                "this save was not written",
                hint="save again: the next save stores every tensor anew",
            )
        snap = self.store.save(
            staged.tree,
            self.branch,
            model=self.model,
            step=record.step,
            epoch=record.epoch,
            metrics=record.metrics,
            message=record.message,
            metadata=record.metadata,
            files=record.files,
        )
        if any(t.hit is not None or t.identity is not None for t in staged.tensors.values()):
            entries = self.store.table(snap.id).tensors
            _, sources = flatten(staged.tree)  # the store's names for the same TensorSource objects
            for name, src in sources.items():
                info = staged.tensors.get(id(src))
                if info is None:
                    continue
                digests = entries[name].chunks
                if info.hit is not None and info.hit != digests:
                    self._cache.clear()
                    raise IntegrityError(
                        f"snapshot {snap.short_id}: the chunks of the unchanged tensor {name!r} vanished while it "
                        "was saved, and it was stored as it was by then, not as it was at save()",
                        hint="load and check that snapshot, or prune it; do not run gc with no grace period "
                        "beside a training run",
                    )
                if info.identity is not None:
                    self._cache.remember(info.key, info.identity, digests)
        # only the tensors of the newest committed save stay known: the chunks of one that left the state may
        # be referenced by pruned snapshots only, and go with the next gc
        self._cache.keep_only(staged.keys)
        return snap


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(text)
    else:  # pragma: no cover - Python 3.10
        print(text, file=sys.stderr)
