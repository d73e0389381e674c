"""``Checkpointer``: checkpoints inside a training loop — async saves, best-by-validation, early stopping, retention.

One ``Checkpointer`` saves one run onto one branch::

    with ckpt.Checkpointer(store, "main", monitor="val_loss", keep_last=3) as ckpts:
        if (state := ckpts.resume()) is not None:          # after a crash or preemption: carry on
            model.load_state_dict(state["model"]); opt.load_state_dict(state["optimizer"])
            ckpt.set_rng_state(state["rng"]); start = state["epoch"] + 1
        for epoch in range(start, 100):
            train_one_epoch(); val_loss = evaluate()
            ckpts.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": ckpt.rng_state(),
                        "epoch": epoch}, step=step, epoch=epoch, metrics={"val_loss": val_loss})
            if ckpts.should_stop(patience=3):
                break
        ckpts.freeze_best(model="tiny-lm")

**What a save costs the loop.** With ``async_save=True`` (the default) ``save()`` only copies the tensors into
staging buffers and returns; chunking, hashing and writing run on a background thread. The staging buffers are
kept and reused from save to save (fresh memory costs page faults, several times the copy itself). At most
``max_pending`` saves are queued or running at once, each with its own set of staging buffers, so staging holds
at most ``max_pending`` copies of the state in host memory; a ``save()`` issued when all are busy blocks until
one finishes. The loop may change its tensors as soon as ``save()`` returns: the snapshot holds the values
they had at the call.

**Unchanged tensors cost nothing.** Each tensor's chunk digests are remembered together with its identity: its
storage, offset, shape, strides, dtype, device and torch's version counter ``_version``, which every in-place
torch operation bumps (``add_``, ``copy_``, optimizer steps, ``load_state_dict``, also under ``no_grad``). A
tensor found unchanged is neither copied nor hashed: its known digests go to the store. Writes that bypass
torch's version counter (fused optimizers, ``p.data.add_()``, writes through a numpy view or a raw pointer) are
caught by comparing a sample of each cached tensor's elements (64 of them, every element of a small tensor)
with the values it had when it was hashed; a tensor caught this way is never cached again. A write outside
the version counter that changes only elements outside the sample would go unseen: pass
``digest_cache=False`` if your code does such sparse, untracked writes.

**Everything is read from the store.** ``latest()``, ``best()``, ``should_stop()`` and retention look at the
branch's history, so a restarted process (or a second ``Checkpointer`` on the same branch) gives the same
answers. A run's history is the branch's chain of ``continue`` saves back to the snapshot that started it
(a root, or a fine-tune's first snapshot), through branch points: a branch made at ``main~2`` carries on
``main``'s run. Retention prunes only snapshots that a ``Checkpointer`` saved on this very branch (they carry
``metadata["checkpointer"]["branch"]``), never a parent line's or another branch's.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import JsonValue

from ckpt.errors import (
    CkptError,
    IntegrityError,
    MissingObjectError,
    RecordError,
    StateMismatchError,
    UnsupportedStateError,
)
from ckpt.model import Snapshot
from ckpt.state import TensorSource, flatten
from ckpt.store import layout
from ckpt.store.retention import AnyOf, KeepBest, KeepEvery, KeepLast, RetentionPolicy

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["Checkpointer", "SaveHandle"]

#: Metadata key under which a ``Checkpointer`` marks its saves (``{"branch": name}``).
METADATA_KEY = "checkpointer"
_SAMPLE = 64  # elements compared on a cache hit (all of them below this size)


class SaveHandle:
    """A save issued by ``Checkpointer.save``: running in the background, or done.

    Attributes:
        step: the step the save was issued with.
        reused: how many tensors were found unchanged since an earlier save (neither copied nor hashed).

    Example:
        >>> handle = ckpts.save(state, step=100)  # doctest: +SKIP
        >>> handle.result().short_id  # waits for it  # doctest: +SKIP
    """

    def __init__(self, step: int, future: Future[Snapshot], *, reused: int = 0) -> None:
        self.step = step
        self.reused = reused
        self._future = future
        self._observed = False

    def __repr__(self) -> str:
        return f"SaveHandle(step={self.step}, reused={self.reused}, done={self.done()})"

    def done(self) -> bool:
        """Whether the save has finished (committed or failed)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> Snapshot:
        """Wait for the save and return its snapshot.

        Args:
            timeout: seconds to wait at most; ``None``: as long as it takes.

        Raises:
            CkptError: the save failed (the error is the save's own, e.g. ``BackendError``).
            TimeoutError: the save did not finish in time.
        """
        try:
            return self._future.result(timeout)
        except BaseException:
            if self._future.done():
                self._observed = True
            raise


@dataclass
class _Identity:
    """What makes a live tensor the same tensor, unchanged, as when its digests were computed."""

    storage: weakref.ref[Any]
    data_ptr: int
    offset: int
    version: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: Any
    device: Any
    digests: tuple[str, ...] = ()
    index: Any = None  # sampled element positions (cpu int64 tensor)
    sample: bytes = b""


@dataclass
class _Tensor:
    """One tensor of a save: where it is cached, and what to check or remember after the commit."""

    key: str
    hit: tuple[str, ...] | None = None  # the digests reused from the cache
    identity: _Identity | None = None  # remembered with the new digests after the commit


@dataclass
class _Job:
    tree: Any  # released once committed
    tensors: dict[int, _Tensor] | None  # id(TensorSource) -> what we know of it
    step: int
    epoch: int | float | None
    metrics: dict[str, float]
    message: str | None
    metadata: dict[str, JsonValue]
    files: Mapping[str, bytes] | None
    slot: _Slot | None
    future: Future[Snapshot] = field(default_factory=Future)
    handle: SaveHandle | None = None


class _Slot:
    """One set of staging buffers (tensor key → CPU tensor or numpy array), reused from save to save."""

    def __init__(self) -> None:
        self.buffers: dict[str, Any] = {}


class _OwnSaves:
    """A retention policy applied to the saves a ``Checkpointer`` made on one branch; everything else is kept."""

    def __init__(self, policy: RetentionPolicy, branch: str) -> None:
        self.policy = policy
        self.branch = branch

    def __repr__(self) -> str:
        return f"{self.policy!r} over the saves of branch {self.branch!r}"

    def keep(self, history: Sequence[Snapshot]) -> set[str]:
        """What the policy keeps of this branch's own saves, and every other snapshot."""
        own = [s for s in history if _saved_on(s) == self.branch]
        mine = {s.id for s in own}
        return self.policy.keep(own) | {s.id for s in history if s.id not in mine}


def _mark_of(metadata: Mapping[str, Any]) -> tuple[Any, Any]:
    mark = metadata.get(METADATA_KEY)
    return (mark.get("run"), mark.get("save")) if isinstance(mark, dict) else (None, None)


def _mark(snap: Snapshot) -> tuple[Any, Any] | None:
    """Which ``Checkpointer`` run and which of its saves made a snapshot (``None``: not a ``Checkpointer``'s)."""
    mark = _mark_of(snap.metadata)
    return None if mark == (None, None) else mark


def _saved_on(snap: Snapshot) -> str | None:
    mark = snap.metadata.get(METADATA_KEY)
    if isinstance(mark, dict):
        branch = mark.get("branch")
        return branch if isinstance(branch, str) else None
    return None


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
        digest_cache: reuse the digests of tensors that did not change (see the module docs).

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
        store: Store | str,
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
        if isinstance(store, str):
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
        #: keys of tensors caught changing without a version bump; never cached again
        self.untracked: set[str] = set()
        self._cache: dict[str, _Identity] = {}
        self._lock = threading.Lock()
        self._errors: list[tuple[SaveHandle | None, BaseException]] = []
        self._jobs: list[_Job] = []
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._slots: queue.Queue[_Slot] = queue.LifoQueue()  # the warmest set of buffers first
        for _ in range(max_pending if async_save else 0):
            self._slots.put(_Slot())
        self._worker: threading.Thread | None = None
        self._closed = False
        self._rand = _torch_generator()  # never the global generators: they belong to the run
        #: marks this object's saves (``metadata["checkpointer"]["run"]``), with their count as ``"save"``
        self.run_id = os.urandom(6).hex()
        self._count = 0
        _LIVE.add(self)

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
        return _OwnSaves(policies[0] if len(policies) == 1 else AnyOf(*policies), self.branch)

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
            note = f"ckpt: a background save failed too: {type(save_error).__name__}: {save_error}"
            if hasattr(exc, "add_note"):
                exc.add_note(note)
            else:  # pragma: no cover - Python 3.10
                print(note, file=sys.stderr)

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

        With ``async_save`` this returns once the tensors are copied to staging memory (or found unchanged);
        the tensors may be changed right away. An error in the background is raised by the next call on this
        ``Checkpointer`` (and by the handle's ``result()``).

        Args:
            state: the tree to save, e.g. ``{"model": model.state_dict(), "optimizer": opt.state_dict(),
                "rng": ckpt.rng_state(), "epoch": epoch}``; an object with ``state_dict()`` and
                ``load_state_dict()`` (a module, an optimizer …) stands for its state dict.
            step: the training step.
            epoch: the epoch.
            metrics: named numbers, e.g. ``{"val_loss": 0.41}`` (0-dim tensors and numpy scalars are fine).
            message: a note.
            metadata: your own JSON metadata (the key ``"checkpointer"`` is ckpt's).
            files: attached files (``config.json`` …); ``None`` keeps the parent's.

        Returns:
            A handle: ``result()`` waits for and returns the snapshot.

        Raises:
            UnsupportedStateError: a leaf cannot be stored (raised here, before anything runs in the background).
            RecordError: bad metrics or metadata.
            CkptError: an earlier background save failed (its own error), or the ``Checkpointer`` is closed.
        """
        self._check()
        clean = _clean_metrics(metrics)
        meta = dict(metadata or {})
        if METADATA_KEY in meta:
            raise RecordError(f"the metadata key {METADATA_KEY!r} is ckpt's own")
        self._count += 1
        meta[METADATA_KEY] = {"branch": self.branch, "run": self.run_id, "save": self._count}
        slot = self._slots.get() if self.async_save else None  # blocks while max_pending saves are in flight
        try:
            tree, tensors = self._stage(state, slot)
        except BaseException:
            if slot is not None:
                self._slots.put(slot)
            raise
        job = _Job(tree, tensors, step, epoch, clean, message, meta, files, slot)
        reused = sum(t.hit is not None for t in tensors.values())
        handle = job.handle = SaveHandle(step, job.future, reused=reused)
        if not self.async_save:
            self._run(job)
            self._raise_errors()
            return handle
        with self._lock:
            self._jobs = [j for j in self._jobs if not j.future.done()]
            self._jobs.append(job)
        self._ensure_worker()
        self._queue.put(job)
        return handle

    def wait(self) -> None:
        """Wait until every save issued so far is committed (or failed).

        Raises:
            CkptError: a background save failed (its own error).
        """
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            with contextlib.suppress(BaseException):
                job.future.result()
        with self._lock:
            self._jobs = [j for j in self._jobs if not j.future.done()]
        self._raise_errors()

    def close(self) -> None:
        """Flush the saves in flight, stop the background thread and release the staging memory.

        Calling it again does nothing. Leaving the ``with`` block calls it.

        Raises:
            CkptError: a background save failed (its own error).
        """
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            if self._worker is not None:
                self._queue.put(None)
                self._worker.join()
                self._worker = None
            while not self._slots.empty():
                self._slots.get().buffers.clear()
            self._cache.clear()
            _LIVE.discard(self)

    # -- reading the run -----------------------------------------------------------------------------

    def latest(self) -> Snapshot | None:
        """The branch's newest snapshot (after the saves in flight), or ``None`` before the first save."""
        self.wait()
        head = self.store.branches().get(self.branch)
        return None if head is None else self.store.get(head)

    def best(self) -> Snapshot | None:
        """The run's best snapshot by ``monitor`` that still has its tensors; ties go to the newer one.

        Raises:
            RecordError: no ``monitor`` was given.
        """
        metric = self._require_monitor("best()")
        self.wait()
        scored = [
            s for s in self._run_history() if not s.pruned and metric in s.metrics and math.isfinite(s.metrics[metric])
        ]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda s: s.metrics[metric])  # newest first: ties go to the newer

    def resume(self, objects: Mapping[str, Any] | None = None) -> Any | None:
        """The state tree of the branch's newest save, or ``None`` when the branch has none yet.

        The newest save is always complete: a save interrupted by a crash never moved the branch.

        Args:
            objects: live objects with ``load_state_dict`` (modules, optimizers, schedulers …) by their key in
                the saved tree; each gets ``obj.load_state_dict(state[key])``.

        Raises:
            StateMismatchError: a key of ``objects`` is not in the saved tree.

        Example:
            >>> state = ckpts.resume({"model": model, "optimizer": opt})  # doctest: +SKIP
            >>> start = 0 if state is None else state["epoch"] + 1  # doctest: +SKIP
        """
        snap = self.latest()
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
        committed = list(reversed(self._run_history()))  # oldest first
        marks = {_mark(s) for s in committed}
        values = [s.metrics[metric] for s in committed if metric in s.metrics]
        for job in jobs:  # in flight: not committed when the history was read (a committed one has its mark there)
            if _mark_of(job.metadata) in marks or (job.future.done() and job.future.exception() is not None):
                continue
            if metric in job.metrics:
                values.append(job.metrics[metric])
        return _plateau(values, patience, min_delta, self.mode)

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

    def _run_history(self) -> list[Snapshot]:
        """The run's snapshots, newest first: ``continue`` saves back to (and with) the one that started it."""
        head = self.store.branches().get(self.branch)
        if head is None:
            return []
        out = []
        for snap in self.store.log(head):
            out.append(snap)
            if snap.relation != "continue":
                break
        return out

    def _check(self) -> None:
        if self._closed:
            raise CkptError(f"this Checkpointer of branch {self.branch!r} is closed", hint="make a new one")
        self._raise_errors()

    def _raise_errors(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
        for handle, exc in errors:
            if handle is None or not handle._observed:
                raise exc

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._loop, name=f"ckpt-save-{self.branch}", daemon=True)
            self._worker.start()

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            self._run(job)

    def _run(self, job: _Job) -> None:
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
            job.tree = job.tensors = None
            if job.slot is not None:
                self._slots.put(job.slot)
        if self.policy is not None:
            try:
                self.store.retain(self.branch, self.policy)
            except BaseException as e:
                with self._lock:
                    self._errors.append((None, e))
        job.future.set_result(snap)  # after retention: whoever waits for the save sees its effect

    def _commit(self, job: _Job) -> Snapshot:
        tensors = job.tensors or {}
        hits = {i: t for i, t in tensors.items() if t.hit is not None}
        missing = [
            (t.key, d)
            for t in hits.values()
            for d in t.hit or ()
            if not self.store.backend.exists(layout.chunk_path(d))
        ]
        if missing:
            with self._lock:
                self._cache.clear()
            key, digest = missing[0]
            raise MissingObjectError(
                f"chunk {digest[:12]} of the unchanged tensor {key!r} vanished from the store (gc?); "
                "this save was not written",
                hint="save again: the next save stores every tensor anew",
            )
        snap = self.store.save(
            job.tree,
            self.branch,
            model=self.model,
            step=job.step,
            epoch=job.epoch,
            metrics=job.metrics,
            message=job.message,
            metadata=job.metadata,
            files=job.files,
        )
        if hits or any(t.identity is not None for t in tensors.values()):
            entries = self.store.table(snap.id).tensors
            _, sources = flatten(job.tree)  # the store's names for the same TensorSource objects
            with self._lock:
                for name, src in sources.items():
                    info = tensors.get(id(src))
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
                    if info.identity is not None and info.key not in self.untracked:
                        info.identity.digests = digests
                        self._cache[info.key] = info.identity
        return snap

    def _stage(self, state: Any, slot: _Slot | None) -> tuple[Any, dict[int, _Tensor]]:
        """Copy the state's tensors to staging (or reuse cached digests); returns the tree to store."""
        tensors: dict[int, _Tensor] = {}
        names: set[str] = set()
        seen: set[int] = set()
        torch = sys.modules.get("torch")
        np = sys.modules.get("numpy")
        copied_to_host = False

        def unique(path: str) -> str:
            name = path or "tensor"
            if name in names:
                n = 2
                while f"{name}#{n}" in names:
                    n += 1
                name = f"{name}#{n}"
            names.add(name)
            return name

        def walk(value: Any, path: str) -> Any:
            nonlocal copied_to_host
            if torch is not None and isinstance(value, torch.Tensor):
                src, info, device_copy = self._stage_tensor(value, unique(path), slot)
                copied_to_host |= device_copy
                tensors[id(src)] = info
                return src
            if np is not None and isinstance(value, np.ndarray):
                return _stage_array(value, unique(path), slot)
            if isinstance(value, TensorSource):
                return _stage_source(value, unique(path), slot)
            if _is_stateful(value):  # a module, an optimizer, a scheduler …: its state dict
                value = value.state_dict()
            if isinstance(value, (Mapping, list, tuple)):
                if id(value) in seen:
                    raise UnsupportedStateError(f"the state tree contains itself at {path or '<root>'}")
                seen.add(id(value))
                try:
                    if isinstance(value, Mapping):
                        return {k: walk(v, f"{path}/{k}" if path else str(k)) for k, v in value.items()}
                    items = [walk(v, f"{path}/{i}" if path else str(i)) for i, v in enumerate(value)]
                    return tuple(items) if isinstance(value, tuple) else items
                finally:
                    seen.discard(id(value))
            return value

        if torch is not None:
            with torch.no_grad():
                tree = walk(state, "")
            if copied_to_host:
                torch.cuda.synchronize()
        else:
            tree = walk(state, "")
        if slot is not None:
            for key in set(slot.buffers) - names:
                del slot.buffers[key]  # a tensor that left the state gives its memory back
        flatten(tree)  # refuse what cannot be stored now, not in the background
        return tree, tensors

    def _stage_tensor(self, t: Any, key: str, slot: _Slot | None) -> tuple[TensorSource, _Tensor, bool]:
        """One torch tensor: a cache hit (no copy, no hash) or a staged copy; and whether it came off a device."""
        import torch

        from ckpt.state.torch import torch_source

        if self._rand is None:
            self._rand = _torch_generator()
        cacheable = self.digest_cache and key not in self.untracked and _cacheable(t)
        if cacheable:
            with self._lock:
                known = self._cache.get(key)
            if known is not None and _same(known, t):
                if _sample(t, known.index) == known.sample:
                    if t.device.type == "cpu":
                        src = torch_source(t, key)
                        if slot is not None:
                            slot.buffers.pop(key, None)  # unchanged: its staging memory is given back
                    else:  # never read: the chunks exist (checked before the commit)
                        src = torch_source(_buffer(slot, key, t) if slot is not None else t, key)
                    return _with_digests(src, known.digests), _Tensor(key, hit=known.digests), False
                with self._lock:  # changed behind torch's version counter: never trust it again
                    self.untracked.add(key)
                    self._cache.pop(key, None)
                cacheable = False
        identity = _identity(t) if cacheable else None
        if slot is None:
            staged = t.detach()
            device_copy = False
        else:
            staged = _buffer(slot, key, t)
            staged.copy_(t.detach(), non_blocking=t.device.type == "cuda")
            device_copy = t.device.type == "cuda"
        if identity is not None:
            n = int(t.numel())
            if n <= _SAMPLE:
                identity.index = torch.arange(n)
            else:  # 32 evenly spaced (the first and the last included) and 32 random elements
                spread = torch.linspace(0, n - 1, 32, dtype=torch.float64).to(torch.int64)
                identity.index = torch.cat([spread, torch.randint(n, (32,), generator=self._rand)])
            if device_copy:
                torch.cuda.synchronize()
            identity.sample = _sample(staged, identity.index)
        return torch_source(staged, key), _Tensor(key, identity=identity), device_copy


# -- tensors -----------------------------------------------------------------------------------------------


def _is_stateful(value: Any) -> bool:
    """Whether a leaf is an object with ``state_dict()``/``load_state_dict()`` (not a tensor, not a mapping)."""
    return (
        not isinstance(value, (Mapping, list, tuple, str, bytes, int, float))
        and callable(getattr(value, "state_dict", None))
        and callable(getattr(value, "load_state_dict", None))
    )


def _torch_generator() -> Any:
    """A private torch generator for sample positions (``None`` without torch; made on first use then)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


def _cacheable(t: Any) -> bool:
    """Whether torch's version counter can vouch for this tensor (and its live bytes can stand in for a copy)."""
    import torch

    from ckpt.state.torch import dtype_name

    try:
        if t.is_inference():  # no version counter
            return False
    except AttributeError:  # pragma: no cover - very old torch
        return False
    return bool(
        t.layout == torch.strided
        and t.device.type in ("cpu", "cuda")
        and t.is_contiguous()
        and not t.is_conj()
        and not t.is_neg()
        and t.numel() > 0
        and dtype_name(t.dtype) is not None
    )


def _identity(t: Any) -> _Identity:
    return _Identity(
        storage=weakref.ref(t.untyped_storage()),
        data_ptr=int(t.data_ptr()),
        offset=int(t.storage_offset()),
        version=int(t._version),
        shape=tuple(int(d) for d in t.shape),
        stride=tuple(int(s) for s in t.stride()),
        dtype=t.dtype,
        device=t.device,
    )


def _same(known: _Identity, t: Any) -> bool:
    """The same storage (alive: an address reused after a free does not count), place, layout and version."""
    return bool(
        known.version == t._version
        and known.data_ptr == t.data_ptr()
        and known.offset == t.storage_offset()
        and known.shape == tuple(t.shape)
        and known.stride == tuple(t.stride())
        and known.dtype == t.dtype
        and known.device == t.device
        and known.storage() is t.untyped_storage()
    )


def _sample(t: Any, index: Any) -> bytes:
    """The raw bytes of the elements at ``index`` of a contiguous tensor."""
    import torch

    values = t.detach().reshape(-1)[index.to(t.device)]
    return bytes(values.cpu().contiguous().view(torch.uint8).numpy().tobytes())


def _buffer(slot: _Slot, key: str, like: Any) -> Any:
    """The slot's staging tensor for ``key``, reused when dtype and shape fit (pinned for device tensors)."""
    import torch

    buf = slot.buffers.get(key)
    if buf is None or not isinstance(buf, torch.Tensor) or buf.dtype != like.dtype or buf.shape != like.shape:
        buf = torch.empty(like.shape, dtype=like.dtype, pin_memory=like.device.type == "cuda")
        slot.buffers[key] = buf
    return buf


def _with_digests(src: TensorSource, digests: tuple[str, ...]) -> TensorSource:
    return TensorSource(src.dtype, src.shape, src.kind, src.data, src.owner, digests)


def _stage_array(a: Any, key: str, slot: _Slot | None) -> Any:
    """A numpy array: copied into the slot's reused buffer (not cached)."""
    if slot is None:
        return a
    import numpy as np

    buf = slot.buffers.get(key)
    if not isinstance(buf, np.ndarray) or buf.dtype != a.dtype or buf.shape != a.shape:
        buf = np.empty(a.shape, dtype=a.dtype)
        slot.buffers[key] = buf
    np.copyto(buf, a)
    return buf


def _stage_source(src: TensorSource, key: str, slot: _Slot | None) -> TensorSource:
    """A ``TensorSource`` leaf: its bytes copied into the slot's reused buffer."""
    if slot is None:
        return src
    import numpy as np

    data = src.data.cast("B") if src.data.format != "B" else src.data
    buf = slot.buffers.get(key)
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.shape != (data.nbytes,):
        buf = np.empty(data.nbytes, dtype=np.uint8)
        slot.buffers[key] = buf
    view = memoryview(buf)  # type: ignore[arg-type]
    view[:] = data
    return TensorSource(src.dtype, src.shape, src.kind, view, buf, src.digests)


# -- judging -----------------------------------------------------------------------------------------------


def _plateau(values: Sequence[float], patience: int, min_delta: float, mode: str) -> bool:
    """Lightning's ``EarlyStopping`` over a series of monitored values, oldest first."""
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


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in (metrics or {}).items():
        if not isinstance(name, str):
            raise RecordError(f"metric names must be str, got {name!r}")
        if isinstance(value, bool):
            raise RecordError(f"metric {name!r} must be a number, got {value!r}")
        try:
            out[name] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise RecordError(f"metric {name!r} must be a number, got {value!r}") from None
    return out


# -- process exit: saves in flight are finished, not lost ----------------------------------------------------

_LIVE: weakref.WeakSet[Checkpointer] = weakref.WeakSet()


def _flush_at_exit() -> None:
    for ckpts in list(_LIVE):
        try:
            ckpts.close()
        except Exception as e:
            print(f"ckpt: a background save of branch {ckpts.branch!r} failed: {e}", file=sys.stderr)


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker …) has no save thread: its copies of the saves in flight never end."""
    _LIVE.clear()


def _register_exit_hook() -> None:
    # threading's own exit hooks run before thread pools stop taking work (the store's saves use them),
    # and before daemon threads are abandoned; atexit would be too late.
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - CPython < 3.9
        import atexit

        atexit.register(_flush_at_exit)
    else:
        register(_flush_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_in_child)


_register_exit_hook()
