"""``SaveHandle``: what ``Checkpointer.save`` returns — a save running in the background, or done."""

from __future__ import annotations

from concurrent.futures import Future

from ckpt.model import Snapshot

__all__ = ["SaveHandle"]


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
