"""Run codec work on all cores with a bounded number of chunks in flight."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

__all__ = ["map_bounded"]

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
