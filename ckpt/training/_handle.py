"""How a background save reports back to the loop: its ``SaveHandle``, and the ``Checkpointer``'s error channel.

``SaveHandle`` is what ``Checkpointer.save`` returns: a save running in the background, or done. A save that
fails on the background thread cannot raise where it was issued: its error is recorded in the ``ErrorChannel``
with the save's handle (``None`` for an error of retention after a committed save), and raised by the next call
of the ``Checkpointer`` (``save``, ``wait``, ``close`` …), oldest first, unless the save's own handle raised it
already (``SaveHandle.result()``). Nothing is dropped: ``close()`` raises the first with the others as notes.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import Future

from ckpt.model import Snapshot

__all__ = ["ErrorChannel", "SaveHandle", "note"]


class SaveHandle:
    """A save issued by ``Checkpointer.save``: running in the background, or done.

    Attributes:
        step: the step the save was issued with.
        reused: how many tensors were found unchanged since an earlier save (neither copied nor hashed).

    Example:
        >>> handle = ckpts.save(state, step=100)  # doctest: +SKIP
        >>> handle.result().short_id  # waits for it  # doctest: +SKIP
    """

    def __init__(self, step: int | None, future: Future[Snapshot], *, reused: int = 0) -> None:
        self.step = step
        self.reused = reused
        self._future = future
        self._observed = False  # its error was raised by result(): the Checkpointer does not raise it again

    def __repr__(self) -> str:
        return f"SaveHandle(step={self.step}, reused={self.reused}, done={self.done()})"

    def done(self) -> bool:
        """Whether the save has finished (committed, failed or cancelled)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> Snapshot:
        """Wait for the save and return its snapshot.

        Args:
            timeout: seconds to wait at most; ``None``: as long as it takes.

        Raises:
            CkptError: the save failed (the error is the save's own, e.g. ``BackendError``).
            concurrent.futures.CancelledError: the save was cancelled before it started (an interrupted
                ``save()`` or ``close()``).
            TimeoutError: the save did not finish in time.
        """
        try:
            return self._future.result(timeout)
        except BaseException:
            if self._future.done():
                self._observed = True
            raise


class ErrorChannel:
    """Errors of background saves not raised yet; safe to use from the loop and the save thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errors: list[tuple[SaveHandle | None, BaseException]] = []

    def record(self, handle: SaveHandle | None, error: BaseException) -> None:
        """Keep ``error`` of the save behind ``handle`` (``None``: retention after a committed save)."""
        with self._lock:
            self._errors.append((handle, error))

    def raise_pending(self, final: bool = False) -> None:
        """Raise the oldest error not raised yet (not by its handle either).

        Args:
            final: raise it with the others attached as notes, and forget them all.
        """
        with self._lock:
            pending = [(h, e) for h, e in self._errors if h is None or not h._observed]
            self._errors = [] if final else pending[1:]
        if not pending:
            return
        first = pending[0][1]
        for _, other in pending[1:] if final else ():
            note(first, f"ckpt: another background save failed too: {type(other).__name__}: {other}")
        raise first


def note(exc: BaseException, text: str) -> None:
    """Attach ``text`` to ``exc`` (``add_note``; printed to stderr on Python 3.10, which has no notes)."""
    if hasattr(exc, "add_note"):
        exc.add_note(text)
    else:  # pragma: no cover - Python 3.10
        print(text, file=sys.stderr)
