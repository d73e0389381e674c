"""One save as it travels from ``save()`` to the background thread: its checked record and its staged state."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import JsonValue, ValidationError

from ckpt.errors import RecordError
from ckpt.model import Snapshot
from ckpt.training.handle import SaveHandle
from ckpt.training.judging import clean_metrics
from ckpt.training.staging import Slot, SlotPool, Staged

if TYPE_CHECKING:
    from ckpt.training.checkpointer import Checkpointer

__all__ = ["Record", "SaveJob", "check_record"]


@dataclass(frozen=True)
class Record:
    """The record fields of one save, checked (and copied) when ``save()`` is called."""

    step: int | None
    epoch: int | float | None
    metrics: dict[str, float]
    message: str | None
    metadata: dict[str, JsonValue]
    files: dict[str, bytes] | None


class SaveJob:
    """One async save: staged, then queued, then run by the background thread — or cancelled before it runs."""

    def __init__(
        self, owner: Checkpointer, staged: Staged, record: Record, slot: Slot | None, pool: SlotPool | None
    ) -> None:
        self.owner: Checkpointer | None = owner  # held while queued: a Checkpointer with saves queued stays alive
        self.staged: Staged | None = staged
        self.record = record
        self._slot = slot
        self._pool = pool
        self.future: Future[Snapshot] = Future()
        self.handle = SaveHandle(record.step, self.future, reused=staged.reused)
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
        owner = self.owner
        if owner is None or not self._claim("taken"):
            return
        try:
            owner._run(self)
        finally:
            self.owner = None

    def cancel(self) -> bool:
        """Cancel the save unless it started; its staging buffers are then free at once."""
        if not self._claim("cancelled"):
            return False
        self.owner = None
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
) -> Record:
    """The record fields, checked by the snapshot model itself and copied (later changes do not reach them)."""
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
    copied: dict[str, bytes] | None = None
    if files is not None:
        copied = {}
        for path, data in files.items():
            if not isinstance(path, str) or not isinstance(data, (bytes, bytearray, memoryview)):
                raise RecordError(f"attached file {path!r} must be bytes under a str path, got {type(data).__name__}")
            copied[path] = bytes(data)
    return Record(checked.step, checked.epoch, clean, checked.message, dict(checked.metadata), copied)
