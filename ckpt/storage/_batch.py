"""Running many storage requests at once: bounded in flight, per-item results, one shape for every backend.

``run_bounded`` takes items lazily from an iterable and hands each to a ``submit`` function that starts it and
returns a ``concurrent.futures.Future`` (a thread pool's, or ``asyncio.run_coroutine_threadsafe``'s for an
event loop). At most ``concurrency`` items are in flight; the items are taken in the caller's thread, so a
generator that encodes chunks runs beside the I/O, never inside the event loop.

``BatchedVerbs`` gives a backend the public batched verbs of ``Backend`` (``put_many``, ``read_many``,
``read_ranges``, ``exists_many``) on top of its one-object verbs; a backend that can do better (S3 in one
event loop) overrides the ``_*_batch`` hooks.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal, TypeVar, cast, overload

from ckpt import settings
from ckpt.errors import BackendError
from ckpt.storage.base import BatchErrors, Buffer, RangeRead

__all__ = ["BatchedVerbs", "fail_fast", "finish", "run_bounded", "run_inline", "thread_submitter"]

_I = TypeVar("_I")
_T = TypeVar("_T")

#: Submits one item and returns the future of its result.
Submit = Callable[[_I], "Future[_T]"]


def run_inline(fn: Callable[[_I], _T], items: Iterable[_I], *, fail_fast: bool) -> builtins.list[_T | Exception]:
    """Run ``fn`` on each item in turn, in this thread: for backends where overlap gains nothing (memory)."""
    results: list[_T | Exception] = []
    for item in items:
        try:
            results.append(fn(item))
        except Exception as e:  # an item's failure is its result; interrupts propagate
            results.append(e)
            if fail_fast:
                break
    return results


def run_bounded(
    submit: Callable[[_I], Future[_T]], items: Iterable[_I], *, concurrency: int, fail_fast: bool
) -> builtins.list[_T | Exception]:
    """Start each item with ``submit``, keeping at most ``concurrency`` in flight; wait for all of them.

    Args:
        submit: starts one item; its future's exception is that item's failure.
        items: taken lazily, in order, in this thread.
        concurrency: the most items taken and not yet finished.
        fail_fast: take no new item after one failed (those in flight still finish).

    Returns:
        One entry per item taken, in their order: the item's result, or the ``Exception`` it failed with.

    Raises:
        BaseException: an interrupt (``KeyboardInterrupt`` …) in an item or while waiting, or an error raised by
            the iterable itself; items not yet started are cancelled and those running are waited for first.
    """
    slots = threading.BoundedSemaphore(max(1, concurrency))
    failed = threading.Event()
    futures: list[Future[_T]] = []

    def done(future: Future[_T]) -> None:
        if future.cancelled() or future.exception() is not None:
            failed.set()
        slots.release()

    try:
        for item in items:
            slots.acquire()
            if fail_fast and failed.is_set():
                slots.release()
                break
            try:
                future = submit(item)
            except BaseException:
                slots.release()
                raise
            futures.append(future)
            future.add_done_callback(done)
    except BaseException:
        for f in futures:
            f.cancel()
        wait_futures(futures)
        raise
    wait_futures(futures)
    results: list[_T | Exception] = []
    for f in futures:
        try:
            results.append(f.result())
        except CancelledError:  # nothing here cancels a future; if something else did, the item did not happen
            results.append(BackendError("a batched storage request was cancelled before it finished"))
        except Exception as e:
            results.append(e)
        # a BaseException (KeyboardInterrupt, SystemExit) raised by an item propagates from f.result()
    return results


@contextmanager
def thread_submitter(fn: Callable[[_I], _T], concurrency: int) -> Iterator[Callable[[_I], Future[_T]]]:
    """A ``submit`` for ``run_bounded`` backed by a thread pool that lives as long as the ``with`` block."""
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ckpt-io") as pool:
        yield lambda item: pool.submit(fn, item)


def fail_fast(errors: BatchErrors) -> bool:
    """Check the ``errors`` mode before any work starts; whether the batch stops at its first failure."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    return errors == "raise"


@overload
def finish(results: list[_T | Exception], errors: Literal["raise"]) -> builtins.list[_T]: ...
@overload
def finish(results: list[_T | Exception], errors: Literal["return"]) -> builtins.list[_T | Exception]: ...
@overload
def finish(results: list[_T | Exception], errors: BatchErrors) -> builtins.list[_T] | list[_T | Exception]: ...
def finish(results: list[_T | Exception], errors: BatchErrors) -> builtins.list[_T] | list[_T | Exception]:
    """Apply the ``errors`` mode: return the list, or raise the earliest failure (noting how many others failed)."""
    if errors == "return":
        return results
    failures = [r for r in results if isinstance(r, Exception)]
    if failures:
        first = failures[0]
        note = getattr(first, "add_note", None)  # Python >= 3.11
        if len(failures) > 1 and note is not None:
            note(f"{len(failures) - 1} more of the {len(results)} items of this batch failed too")
        raise first
    return cast("list[_T]", results)


def _each(
    owner: object, fn: Callable[[_I], _T], items: Iterable[_I], concurrency: int, fail_fast: bool
) -> list[_T | Exception]:
    """Run ``fn`` per item on a thread pool, or in turn where ``owner._batch_threads`` is false."""
    if not getattr(owner, "_batch_threads", True) or concurrency <= 1:
        return run_inline(fn, items, fail_fast=fail_fast)
    with thread_submitter(fn, concurrency) as submit:
        return run_bounded(submit, items, concurrency=concurrency, fail_fast=fail_fast)


class BatchedVerbs:
    """The batched verbs of ``Backend`` (``put_many``, ``read_many``, ``read_ranges``, ``exists_many``), built on
    a class's one-object verbs (``put_if_absent``, ``read``, ``read_into``, ``exists``).

    Subclass it to write a backend, or a wrapper around one (a test double that counts or holds writes), with
    only the one-object verbs: each item of a batch then goes through them, on a pool of up to ``concurrency``
    threads. The call order, per-item results and error modes are those the ``Backend`` docstring promises.

    A subclass may set ``_batch_threads = False`` (run the items one after the other in the caller's thread,
    where overlapping gains nothing, e.g. in-process memory) and may override the hooks ``_put_batch``,
    ``_read_batch``, ``_range_batch`` and ``_exists_batch`` (each returns one result or ``Exception`` per item
    it took; S3 runs them on its event loop).

    Example:
        >>> from ckpt.storage import BatchedVerbs, open_backend
        >>> class Counting(BatchedVerbs):
        ...     def __init__(self, real):
        ...         self.real, self.puts = real, 0
        ...     def put_if_absent(self, path, data):
        ...         self.puts += 1
        ...         return self.real.put_if_absent(path, data)
        >>> counting = Counting(open_backend("memory://batched-verbs-doc"))
        >>> counting.put_many([("a", b"1"), ("b", b"2")]), counting.puts
        ([True, True], 2)
    """

    #: Overlap items on a thread pool (local disk) rather than run them in turn (in-process memory).
    _batch_threads: bool = True

    if TYPE_CHECKING:  # the one-object verbs a subclass provides

        def put_if_absent(self, path: str, data: Buffer) -> bool: ...
        def read(self, path: str, start: int = 0, end: int | None = None) -> bytes: ...
        def read_into(self, path: str, out: Sequence[memoryview], start: int = 0) -> int: ...
        def exists(self, path: str) -> bool: ...

    # -- hooks -------------------------------------------------------------------------------------------

    def _put_batch(
        self, items: Iterable[tuple[str, Buffer]], concurrency: int, fail_fast: bool
    ) -> builtins.list[bool | Exception]:
        return _each(self, lambda item: self.put_if_absent(*item), items, concurrency, fail_fast)

    def _read_batch(self, paths: Iterable[str], concurrency: int, fail_fast: bool) -> builtins.list[bytes | Exception]:
        return _each(self, self.read, paths, concurrency, fail_fast)

    def _range_batch(
        self, requests: Iterable[RangeRead], concurrency: int, fail_fast: bool
    ) -> builtins.list[int | Exception]:
        return _each(self, lambda r: self.read_into(r.path, r.out, r.start), requests, concurrency, fail_fast)

    def _exists_batch(self, paths: Iterable[str], concurrency: int, fail_fast: bool) -> builtins.list[bool | Exception]:
        return _each(self, self.exists, paths, concurrency, fail_fast)

    # -- the public batched verbs (documented on ``Backend``) ------------------------------------------------

    @overload
    def put_many(
        self,
        items: Iterable[tuple[str, Buffer]],
        *,
        concurrency: int | None = None,
        errors: Literal["raise"] = "raise",
    ) -> builtins.list[bool]: ...
    @overload
    def put_many(
        self, items: Iterable[tuple[str, Buffer]], *, concurrency: int | None = None, errors: Literal["return"]
    ) -> builtins.list[bool | Exception]: ...
    def put_many(
        self, items: Iterable[tuple[str, Buffer]], *, concurrency: int | None = None, errors: BatchErrors = "raise"
    ) -> builtins.list[bool] | builtins.list[bool | Exception]:
        """``put_if_absent`` for each ``(path, data)``, several at a time: for each, whether this call wrote it.

        Args:
            items: ``(path, data)`` pairs, taken lazily (at most ``concurrency`` held at once).
            concurrency: requests in flight; default ``ckpt.settings.io_concurrency()``.
            errors: ``"raise"`` the earliest failure, or ``"return"`` each failure in its item's place.

        Returns:
            For each item, in order: ``True`` if this call wrote it, ``False`` if an object was there already.

        Raises:
            BackendError: (``errors="raise"``) a write failed; the others that finished are stored.
            RecordError: ``concurrency`` is not a whole number >= 1.

        Example:
            >>> from ckpt.storage import open_backend
            >>> b = open_backend("memory://put-many-doc")
            >>> b.put_many([("a", b"1"), ("b", [b"2", b"3"]), ("a", b"x")])
            [True, True, False]
        """
        stop = fail_fast(errors)
        results = self._put_batch(items, settings.io_concurrency(concurrency), stop)
        return finish(results, errors)

    @overload
    def read_many(
        self, paths: Iterable[str], *, concurrency: int | None = None, errors: Literal["raise"] = "raise"
    ) -> builtins.list[bytes]: ...
    @overload
    def read_many(
        self, paths: Iterable[str], *, concurrency: int | None = None, errors: Literal["return"]
    ) -> builtins.list[bytes | Exception]: ...
    def read_many(
        self, paths: Iterable[str], *, concurrency: int | None = None, errors: BatchErrors = "raise"
    ) -> builtins.list[bytes] | builtins.list[bytes | Exception]:
        """Read whole objects (records, tables, small files), several at a time.

        Args:
            paths: the objects, taken lazily.
            concurrency: requests in flight; default ``ckpt.settings.io_concurrency()``.
            errors: ``"raise"`` the earliest failure, or ``"return"`` each failure in its item's place.

        Returns:
            Each object's bytes, in the order of ``paths``.

        Raises:
            MissingObjectError: (``errors="raise"``) an object does not exist.
            BackendError: (``errors="raise"``) a read failed.

        Example:
            >>> from ckpt.storage import open_backend
            >>> b = open_backend("memory://read-many-doc")
            >>> b.put_many([("a", b"1"), ("b", b"22")])
            [True, True]
            >>> b.read_many(["b", "a"])
            [b'22', b'1']
            >>> [type(r).__name__ for r in b.read_many(["a", "nope"], errors="return")]
            ['bytes', 'MissingObjectError']
        """
        stop = fail_fast(errors)
        results = self._read_batch(paths, settings.io_concurrency(concurrency), stop)
        return finish(results, errors)

    @overload
    def read_ranges(
        self, requests: Iterable[RangeRead], *, concurrency: int | None = None, errors: Literal["raise"] = "raise"
    ) -> builtins.list[int]: ...
    @overload
    def read_ranges(
        self, requests: Iterable[RangeRead], *, concurrency: int | None = None, errors: Literal["return"]
    ) -> builtins.list[int | Exception]: ...
    def read_ranges(
        self, requests: Iterable[RangeRead], *, concurrency: int | None = None, errors: BatchErrors = "raise"
    ) -> builtins.list[int] | builtins.list[int | Exception]:
        """Read byte ranges straight into the callers' buffers, several at a time (``read_into`` for each).

        Only the bytes asked for are fetched: one ranged GET per request on an object store, ``preadv`` on a
        local disk.

        Args:
            requests: ``RangeRead(path, start, out)`` items, taken lazily.
            concurrency: requests in flight; default ``ckpt.settings.io_concurrency()``.
            errors: ``"raise"`` the earliest failure, or ``"return"`` each failure in its item's place.

        Returns:
            For each request, how many bytes were read: fewer than its buffers hold when the object ends first.

        Raises:
            MissingObjectError: (``errors="raise"``) an object does not exist.
            BackendError: (``errors="raise"``) a read failed.

        Example:
            >>> from ckpt.storage import RangeRead, open_backend
            >>> b = open_backend("memory://read-ranges-doc")
            >>> b.put_if_absent("a", b"0123456789")
            True
            >>> x, y = bytearray(3), bytearray(4)
            >>> b.read_ranges([RangeRead("a", 2, [memoryview(x)]), RangeRead("a", 8, [memoryview(y)])])
            [3, 2]
            >>> bytes(x), bytes(y)
            (b'234', b'89\\x00\\x00')
        """
        stop = fail_fast(errors)
        results = self._range_batch(requests, settings.io_concurrency(concurrency), stop)
        return finish(results, errors)

    @overload
    def exists_many(
        self, paths: Iterable[str], *, concurrency: int | None = None, errors: Literal["raise"] = "raise"
    ) -> builtins.list[bool]: ...
    @overload
    def exists_many(
        self, paths: Iterable[str], *, concurrency: int | None = None, errors: Literal["return"]
    ) -> builtins.list[bool | Exception]: ...
    def exists_many(
        self, paths: Iterable[str], *, concurrency: int | None = None, errors: BatchErrors = "raise"
    ) -> builtins.list[bool] | builtins.list[bool | Exception]:
        """Whether each object exists, several at a time.

        Raises:
            BackendError: (``errors="raise"``) a check failed, or a path leaves the root.

        Example:
            >>> from ckpt.storage import open_backend
            >>> b = open_backend("memory://exists-many-doc")
            >>> b.put_if_absent("a", b"1")
            True
            >>> b.exists_many(["a", "b"])
            [True, False]
        """
        stop = fail_fast(errors)
        results = self._exists_batch(paths, settings.io_concurrency(concurrency), stop)
        return finish(results, errors)
