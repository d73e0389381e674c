"""Run codec work on all cores with a bounded number of chunks in flight."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["block_pool", "map_bounded"]

_T = TypeVar("_T")
_R = TypeVar("_R")


def map_bounded(fn: Callable[[_T], _R], items: Iterable[_T], *, executor: Executor, max_in_flight: int) -> Iterator[_R]:
    """``map(fn, items)`` on ``executor``, in order, with at most ``max_in_flight`` items submitted and not yet
    consumed, so that memory stays at a few chunks however many there are (``items`` is read lazily).

    ``fn`` must not wait on work it submits to the same ``executor`` (a full pool would wait on itself): give
    chunk-level work here and block-level work to ``encode_chunk``'s ``executor`` from a thread outside the pool.
    Closing the iterator early cancels what has not started.

    Example:
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> with ThreadPoolExecutor(2) as pool:
        ...     list(map_bounded(len, [b"a", b"bc"], executor=pool, max_in_flight=2))
        [1, 2]
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    pending: deque[Future[_R]] = deque()
    try:
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) >= max_in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


@contextmanager
def block_pool() -> Iterator[ThreadPoolExecutor]:
    """A pool with one thread per core for the blocks of chunks being coded (zstd and numpy release the GIL).

    Chunk-level workers (a save's or a load's transfer threads) hand it a chunk's blocks and wait for them, so
    that one big chunk, or a few, still use every core; it never waits on anything itself, so it cannot
    deadlock on the workers. Threads start with the first block; queued blocks are dropped when the block ends
    on an error.
    """
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ckpt-codec")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
