"""The background thread that commits saves, and the process-exit hook that finishes saves still in flight.

``Background`` runs jobs one at a time, in the order they were submitted. Its thread holds a job (and what the
job holds) only while running it: an idle thread never keeps a ``Checkpointer`` alive, so one that is dropped
without ``close()`` is collected, and its thread stops (``weakref.finalize``).

At interpreter exit, every ``Checkpointer`` not closed yet is closed (its saves in flight finish), from
threading's own exit hooks: they run before the thread pools the store writes with stop taking work. A forked
child (a DataLoader worker …) forgets them: the saves in flight belong to its parent.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import weakref
from typing import Protocol

__all__ = ["Background", "Closable", "Job", "track", "untrack"]


class Job(Protocol):
    """Work for the background thread; ``run()`` never raises (a save records its own errors)."""

    def run(self) -> None:
        """Do the work."""
        ...


def _serve(jobs: queue.SimpleQueue[Job | None]) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        job.run()
        del job  # idle, the thread holds nothing


class Background:
    """One daemon thread that runs jobs in submission order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        """Start the thread (if it is not running), so that ``submit`` is only a queue put."""
        if self._stopped:
            raise RuntimeError(f"background thread {self.name!r} was stopped")
        if self._thread is None:
            thread = threading.Thread(target=_serve, args=(self._jobs,), name=self.name, daemon=True)
            thread.start()
            self._thread = thread

    def submit(self, job: Job) -> None:
        """Run ``job`` after the jobs submitted before it."""
        self.start()
        self._jobs.put(job)

    def stop(self, wait: bool = False) -> None:
        """Stop the thread once the jobs submitted so far have run; ``wait``: until then."""
        self._stopped = True
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._jobs.put(None)
        if wait and thread is not threading.current_thread():
            thread.join()


class Closable(Protocol):
    """What the exit hook closes."""

    branch: str

    def close(self) -> None:
        """Flush and release."""
        ...


_LIVE: weakref.WeakSet[Closable] = weakref.WeakSet()


def track(obj: Closable) -> None:
    """Close ``obj`` at interpreter exit unless it is closed (or collected) before."""
    _LIVE.add(obj)


def untrack(obj: Closable) -> None:
    """``obj`` is closed: nothing to do for it at exit."""
    _LIVE.discard(obj)


def _flush_at_exit() -> None:
    for obj in list(_LIVE):
        try:
            obj.close()
        except Exception as e:
            print(f"ckpt: a background save of branch {obj.branch!r} failed: {e}", file=sys.stderr)
        except KeyboardInterrupt:  # Ctrl-C while the exit waits: the user does not want to wait
            print(
                "ckpt: interrupted at exit; the saves still in flight were abandoned (the store stays "
                "consistent: the branches point at complete saves, and gc removes the leftovers)",
                file=sys.stderr,
            )
            return


def _forget_in_child() -> None:
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
