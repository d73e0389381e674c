"""One save as it travels from ``save()`` to the background thread: its checked record and its staged state."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Literal

from pydantic import ValidationError

from ckpt.errors import RecordError
from ckpt.model import Snapshot, SnapshotFields, clean_files, clean_metrics
from ckpt.training._handle import SaveHandle
from ckpt.training._staging import Slot, SlotPool, Staged

__all__ = ["SaveJob", "check_record"]


class SaveJob:
    """One async save: staged, then queued, then run by the background thread — or cancelled before it runs.

    ``runner`` commits it (the ``Checkpointer``'s bound method: held while queued, so a ``Checkpointer`` with
    saves queued stays alive).
    """

    def __init__(
        self,
        runner: Callable[[SaveJob], None],
        staged: Staged,
        record: SnapshotFields,
        slot: Slot | None,
        pool: SlotPool | None,
    ) -> None:
        self.runner: Callable[[SaveJob], None] | None = runner
        self.staged: Staged | None = staged
        self.record = record
        self._slot = slot
        self._pool = pool
        self.future: Future[Snapshot] = Future()
        self.handle = SaveHandle(record.get("step"), self.future, reused=staged.reused)
        self._state: Literal["issued", "taken", "cancelled"] = "issued"
        self._lock = threading.Lock()

    def _claim(self, state: Literal["taken", "cancelled"]) -> bool:
        with self._lock:
            if self._state != "issued":
                return False
            self._state = state
            return True

    def run(self) -> None:
        """Commit the save (the background thread's side); a cancelled job is skipped."""
        runner = self.runner
        if runner is None or not self._claim("taken"):
            return
        try:
            runner(self)
        finally:
            self.runner = None

    def cancel(self) -> bool:
        """Cancel the save unless it started; its staging buffers are then free at once."""
        if not self._claim("cancelled"):
            return False
        self.runner = None
        self.release()
        self.future.cancel()
        return True

    def release(self) -> None:
        """Drop the staged state and give the staging buffers back (once): nothing reads them any more."""
        self.staged = None
        slot, self._slot = self._slot, None
        if slot is not None and self._pool is not None:
            self._pool.give(slot)

    def failed(self) -> bool:
        """Whether it ended without a snapshot (an error, or cancelled)."""
        f = self.future
        return f.done() and (f.cancelled() or f.exception() is not None)


def check_record(
    step: int | None,
    epoch: int | float | None,
    metrics: Mapping[str, Any] | None,
    message: str | None,
    metadata: dict[str, Any],
    files: Mapping[str, bytes] | None,
) -> SnapshotFields:
    """The record fields, checked by the snapshot model itself and copied (later changes do not reach them).

    Raises:
        RecordError: a bad step, epoch, metric, message, metadata or attached file (path or content).
    """
    clean = clean_metrics(metrics)
    try:
        checked = Snapshot(
            step=step,
            epoch=epoch,
            metrics=clean,
            message=message,
            metadata=metadata,
            created_at="2000-01-01T00:00:00.000000Z",  # placeholders: only the caller's fields are checked
            ckpt_version="",
            table="0" * 64,
        )
        checked.record_bytes()
    except RecordError as e:
        raise RecordError(f"cannot record this save: {e.message}", hint=e.hint or "", cli_hint=e.cli_hint or "") from e
    except (ValidationError, TypeError, ValueError) as e:
        raise RecordError(f"cannot record this save: {e}") from e
    return SnapshotFields(
        step=checked.step,
        epoch=checked.epoch,
        metrics=clean,
        message=checked.message,
        metadata=dict(checked.metadata),
        files=None if files is None else clean_files(files),
    )
