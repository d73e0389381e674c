"""``Checkpointer``: the saves of one training run on one branch — issued, staged, committed in the background.

The reading half (``latest``, ``best``, ``resume``, ``should_stop``, ``freeze_best``) is ``_reading.RunReader``;
the options are ``_options.CheckpointerOptions``; background failures travel back through
``_handle.ErrorChannel``; one save is committed by ``_commit.commit``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import JsonValue

from ckpt.errors import CkptError, RecordError
from ckpt.training._background import Background, track, untrack
from ckpt.training._commit import commit
from ckpt.training._digest_cache import DigestCache
from ckpt.training._handle import ErrorChannel, SaveHandle, note
from ckpt.training._history import METADATA_KEY
from ckpt.training._options import CheckpointerOptions, keep_policy
from ckpt.training._reading import RunReader
from ckpt.training._save_job import SaveJob, check_record
from ckpt.training._staging import Slot, SlotPool, stage

if TYPE_CHECKING:
    from ckpt.store import RetentionPolicy, Store

__all__ = ["Checkpointer"]


class Checkpointer(RunReader):
    """Checkpoints of one training run on one branch of a store; a context manager.

    The options can be given one by one, or as one ``CheckpointerOptions`` (``options=``), not both; an option
    left ``None`` takes its default (see ``CheckpointerOptions``).

    Args:
        store: the store (or its URL, opened with ``ckpt.open``).
        branch: the branch the run saves to (created by the first save).
        options: every option below at once.
        monitor: the validation metric ``best()``, ``should_stop()``, ``freeze_best()`` and ``keep_best``
            judge by (e.g. ``"val_loss"``); a save without it is not judged.
        mode: ``"min"`` (losses, the default) or ``"max"`` (accuracies).
        retention: which saves keep their tensors, a composable policy:
            ``ckpt.AnyOf(ckpt.KeepLast(3), ckpt.KeepBest("val_loss", 2))``.
        keep_last: shorthand for ``retention=ckpt.KeepLast(keep_last)``.
        keep_best: shorthand for ``retention=ckpt.KeepBest(monitor, keep_best, mode=mode)``.
        keep_every: shorthand for ``retention=ckpt.KeepEvery(keep_every)`` (several shorthands: ``AnyOf`` them).
        async_save: hash and write in the background (``save()`` only copies; the default); ``False``:
            ``save()`` returns when the snapshot is committed.
        model: the model name recorded on the snapshots (kept from the parent when ``None``) and the default
            of ``freeze_best``.
        max_pending: at most this many async saves queued or running (default 2); each keeps one set of
            staging buffers.
        digest_cache: reuse the digests of tensors that did not change (default on; see ``ckpt.training``).

    With a retention policy, retention runs after each save; the best save by ``monitor`` is always kept, and
    so are tagged and frozen snapshots and branch heads. Pruned snapshots stay in the log; ``store.gc()``
    reclaims their bytes.

    Raises:
        RecordError: an invalid argument (``mode``, a negative count, ``keep_best`` without ``monitor``, both
            ``retention`` and a ``keep_*`` shorthand, ``options`` and another option …).

    Example:
        >>> policy = ckpt.AnyOf(ckpt.KeepLast(3), ckpt.KeepBest("val_loss", 1))  # doctest: +SKIP
        >>> with ckpt.Checkpointer(store, "main", monitor="val_loss", retention=policy) as ckpts:  # doctest: +SKIP
        ...     ckpts.save({"model": model.state_dict()}, step=100, metrics={"val_loss": 0.4})
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        branch: str = "main",
        *,
        options: CheckpointerOptions | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] | None = None,
        retention: RetentionPolicy | None = None,
        keep_last: int | None = None,
        keep_best: int | None = None,
        keep_every: int | None = None,
        async_save: bool | None = None,
        model: str | None = None,
        max_pending: int | None = None,
        digest_cache: bool | None = None,
    ) -> None:
        if isinstance(store, (str, os.PathLike, bytes)):
            from ckpt.store import open as open_store

            store = open_store(store)  # bytes: refused there with a StoreError
        elif not callable(getattr(store, "save", None)):
            raise CkptError(
                f"a Checkpointer needs a store or its location, got {type(store).__name__}",
                hint="pass ckpt.open(URL), or the URL or path itself",
            )
        from ckpt.model import check_ref_name

        check_ref_name(branch, kind="branch")
        given = {
            "monitor": monitor,
            "mode": mode,
            "retention": retention,
            "async_save": async_save,
            "model": model,
            "max_pending": max_pending,
            "digest_cache": digest_cache,
        }
        given = {k: v for k, v in given.items() if v is not None}
        shorthand = {"keep_last": keep_last, "keep_best": keep_best, "keep_every": keep_every}
        if options is not None and (given or any(v is not None for v in shorthand.values())):
            raise RecordError(
                f"Checkpointer takes options= or the options one by one, not both (got {sorted(given or shorthand)})",
                hint="set them in the CheckpointerOptions, or use dataclasses.replace(options, ...)",
            )
        if options is None:
            if retention is not None and any(v is not None for v in shorthand.values()):
                raise RecordError(
                    "Checkpointer takes retention= or the keep_last/keep_best/keep_every shorthand, not both",
                    hint="combine policies with ckpt.AnyOf(ckpt.KeepLast(3), ckpt.KeepBest('val_loss', 2))",
                )
            options = CheckpointerOptions(**given)  # type: ignore[arg-type]
            if retention is None:
                sugar = keep_policy(
                    last=keep_last, best=keep_best, every=keep_every, monitor=monitor, mode=options.mode
                )
                if sugar is not None:
                    options = dataclasses.replace(options, retention=sugar)
        super().__init__(store, branch, options)
        self.policy = options.policy(branch)
        self._cache = DigestCache()
        #: marks this object's saves (``metadata["checkpointer"]["run"]``), with their count as ``"save"``
        self.run_id = os.urandom(6).hex()
        self._count = 0
        self._lock = threading.Lock()
        self._errors = ErrorChannel()
        self._jobs: list[SaveJob] = []
        self._slots = SlotPool(options.max_pending if options.async_save else 0)
        self._background = Background(f"ckpt-save-{branch}")
        self._closed = False
        self._pid = os.getpid()
        weakref.finalize(self, self._background.stop)  # dropped without close(): its thread stops too
        track(self)

    @property
    def async_save(self) -> bool:
        """Whether saves are hashed and written in the background (``options.async_save``)."""
        return self.options.async_save

    @property
    def max_pending(self) -> int:
        """At most this many async saves in flight (``options.max_pending``)."""
        return self.options.max_pending

    @property
    def digest_cache(self) -> bool:
        """Whether unchanged tensors reuse their digests (``options.digest_cache``)."""
        return self.options.digest_cache

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
            note(exc, f"ckpt: a background save failed too: {type(save_error).__name__}: {save_error}")

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
            now = SaveJob(self._run, stage(state, None, cache), record, None, None)
            self._run(now)
            self._errors.raise_pending()
            return now.handle
        self._background.start()  # first: handing the job over is then only a queue put
        slot: Slot | None = None
        job: SaveJob | None = None
        try:
            slot = self._slots.take()  # blocks while max_pending saves are in flight
            job = SaveJob(self._run, stage(state, slot, cache), record, slot, self._slots)
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
        self._errors.raise_pending()

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
        self._errors.raise_pending(final=True)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (reading still works; saving does not)."""
        return self._closed

    def reopened(self) -> Checkpointer:
        """A new ``Checkpointer`` on the same store and branch with the same options (e.g. after ``close()``)."""
        return Checkpointer(self.store, self.branch, options=self.options)

    # -- internals -----------------------------------------------------------------------------------

    def _in_flight(self) -> list[SaveJob]:
        self._errors.raise_pending()
        with self._lock:
            return list(self._jobs)

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
        self._errors.raise_pending()

    def _enqueue(self, job: SaveJob) -> None:
        """Hand a staged save to the background thread (after those issued before it)."""
        with self._lock:
            self._jobs = [j for j in self._jobs if not j.future.done()]
            self._jobs.append(job)
        self._background.submit(job)

    def _wait_jobs(self) -> None:
        """Wait for the saves issued so far (interruptible; their errors are raised by ``_errors``)."""
        if self._forked():
            return
        with self._lock:
            futures = [j.future for j in self._jobs]
        concurrent.futures.wait(futures)
        with self._lock:
            self._jobs = [j for j in self._jobs if not j.future.done()]

    def _run(self, job: SaveJob) -> None:
        """Commit one save, then apply retention; errors are recorded before the save's future resolves.

        An error of the save itself is reported by its handle too; one of retention (after a committed save)
        only by the ``Checkpointer``.
        """
        try:
            snap = commit(self.store, self.branch, self.model, job, self._cache)
        except BaseException as e:
            self._errors.record(job.handle, e)
            job.future.set_exception(e)
            return
        finally:
            job.release()
        if self.policy is not None:
            try:
                self.store.retain(self.branch, self.policy)
            except BaseException as e:
                self._errors.record(None, e)
        job.future.set_result(snap)  # after retention: whoever waits for the save sees its effect
