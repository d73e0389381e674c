"""A backend wrapper that fails on purpose, for crash tests.

``FaultyBackend`` wraps a real backend and lets the first ``fail_after`` write operations through; the next
one, and every one after it, raises ``InjectedFault``, as if the process had died at that moment. Reads are
always delegated, so after the fault a test can open a ``Store`` on the real backend and check what the
interrupted operation left behind::

    faulty = FaultyBackend(store.backend, fail_after=3)
    with pytest.raises(InjectedFault):
        Store(faulty, store.config).save(state)
    assert store.verify().ok

Write operations are ``put_if_absent``, ``replace``, ``compare_and_swap`` and ``delete``; they are counted
across threads. Each item of ``put_many`` counts as one write, numbered in the order the batch takes the items:
the items before the fault go to the real backend's ``put_many`` (so its concurrent path is what is tested),
and each item from the fault on fails on its own with the injected error, in its place of the result (or
raised, per the ``errors`` mode). With ``applied=True`` the failing write reaches the real backend before the
error is raised, which models a reply lost on its way back (the write happened but the caller never learnt it).
"""

from __future__ import annotations

import builtins
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from ckpt.errors import BackendError
from ckpt.storage._batch import BatchedVerbs
from ckpt.storage.base import Backend, Buffer, CasResult, Entry, RangeRead

__all__ = ["FaultyBackend", "InjectedFault"]

_T = TypeVar("_T")


class InjectedFault(BackendError):
    """The failure a ``FaultyBackend`` raises in place of a write."""


class FaultyBackend(BatchedVerbs):
    """A backend that fails every write operation after the first ``fail_after``.

    Args:
        real: the backend that does the work.
        fail_after: how many write operations succeed; the next one fails, and so does every later one
            (``None``: never fail, only count).
        exc: the exception class raised; it is built with one argument, the message.
        applied: let the failing write (only the first failing one) reach ``real`` before raising.

    Attributes:
        url: the real backend's URL.
        conditional_writes: whether the real backend's conditional writes are race-free.
        real: the wrapped backend.
        writes: write operations attempted so far (failed ones included).
        failures: write operations that raised.

    Example:
        >>> from ckpt.storage import open_backend
        >>> b = FaultyBackend(open_backend("memory://faults-doc"), fail_after=1)
        >>> b.put_if_absent("a", b"1")
        True
        >>> b.put_if_absent("b", b"2")
        Traceback (most recent call last):
        ...
        ckpt.storage.faults.InjectedFault: injected fault on write 2 (put_if_absent b)
        >>> b.exists("a"), b.exists("b"), b.writes, b.failures
        (True, False, 2, 1)
    """

    def __init__(
        self,
        real: Backend,
        *,
        fail_after: int | None,
        exc: type[BaseException] = InjectedFault,
        applied: bool = False,
    ) -> None:
        if fail_after is not None and fail_after < 0:
            raise ValueError(f"fail_after must be >= 0 or None, got {fail_after}")
        self.real = real
        self.url = real.url
        self.conditional_writes = real.conditional_writes
        self.fail_after = fail_after
        self.exc = exc
        self.applied = applied
        self.writes = 0
        self.failures = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FaultyBackend({self.real!r}, fail_after={self.fail_after}, writes={self.writes})"

    def _count(self) -> tuple[int, bool]:
        """Count one write: its number, and whether it fails."""
        with self._lock:
            self.writes += 1
            number = self.writes
            fail = self.fail_after is not None and number > self.fail_after
            if fail:
                self.failures += 1
        return number, fail

    def _fault(self, number: int, what: str, path: str, op: Callable[[], object]) -> BaseException:
        """The injected error for write ``number`` (after letting it through when it is the applied one)."""
        if self.applied and number == (self.fail_after or 0) + 1:
            op()
        return self.exc(f"injected fault on write {number} ({what} {path})")

    def _write(self, what: str, path: str, op: Callable[[], _T]) -> _T:
        number, fail = self._count()
        if not fail:
            return op()
        raise self._fault(number, what, path, op)

    # -- writes: counted, and failed after fail_after ---------------------------------------------------

    def put_if_absent(self, path: str, data: Buffer) -> bool:
        """Delegate to the real backend, unless this write is past ``fail_after``.

        Raises:
            InjectedFault: (or ``exc``) this write is past ``fail_after``.
        """
        return self._write("put_if_absent", path, lambda: self.real.put_if_absent(path, data))

    def replace(self, path: str, data: Buffer) -> None:
        """Delegate to the real backend, unless this write is past ``fail_after``.

        Raises:
            InjectedFault: (or ``exc``) this write is past ``fail_after``.
        """
        self._write("replace", path, lambda: self.real.replace(path, data))

    def compare_and_swap(self, path: str, expected: bytes | None, new: bytes | None) -> CasResult:
        """Delegate to the real backend, unless this write is past ``fail_after``.

        Raises:
            InjectedFault: (or ``exc``) this write is past ``fail_after``.
        """
        return self._write("compare_and_swap", path, lambda: self.real.compare_and_swap(path, expected, new))

    def delete(self, paths: Sequence[str]) -> None:
        """Delegate to the real backend, unless this write is past ``fail_after``.

        Raises:
            InjectedFault: (or ``exc``) this write is past ``fail_after``.
        """
        self._write("delete", ",".join(paths), lambda: self.real.delete(paths))

    # -- everything else: delegated ----------------------------------------------------------------------

    def read(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Delegated to the real backend."""
        return self.real.read(path, start, end)

    def read_into(self, path: str, out: Sequence[memoryview], start: int = 0) -> int:
        """Delegated to the real backend."""
        return self.real.read_into(path, out, start)

    def exists(self, path: str) -> bool:
        """Delegated to the real backend."""
        return self.real.exists(path)

    def list(self, prefix: str) -> Iterator[Entry]:
        """Delegated to the real backend."""
        return self.real.list(prefix)

    def flush(self) -> None:
        """Delegated to the real backend."""
        self.real.flush()

    def local_path(self, path: str) -> str | None:
        """Delegated to the real backend."""
        return self.real.local_path(path)

    # -- batched verbs: writes counted per item, the rest of the work done by the real backend's batch ------

    def _put_batch(
        self, items: Iterable[tuple[str, Buffer]], concurrency: int, fail_fast: bool
    ) -> builtins.list[bool | Exception]:
        """Count each item as a write; pass those before the fault to the real ``put_many``, fail the rest."""
        faults: dict[int, Exception] = {}
        passed: list[int] = []

        def before_the_fault() -> Iterator[tuple[str, Buffer]]:
            for i, (path, data) in enumerate(items):
                number, fail = self._count()
                if not fail:
                    passed.append(i)
                    yield path, data
                    continue
                error = self._fault(
                    number, "put_if_absent", path, functools.partial(self.real.put_if_absent, path, data)
                )
                if not isinstance(error, Exception):
                    raise error  # an interrupt is not an item's failure
                faults[i] = error
                if fail_fast:
                    return

        real = self.real.put_many(before_the_fault(), concurrency=concurrency, errors="return")
        results: dict[int, bool | Exception] = dict(zip(passed, real, strict=True))
        results.update(faults)
        return [results[i] for i in sorted(results)]

    def _read_batch(self, paths: Iterable[str], concurrency: int, fail_fast: bool) -> builtins.list[bytes | Exception]:
        return self.real.read_many(paths, concurrency=concurrency, errors="return")

    def _range_batch(
        self, requests: Iterable[RangeRead], concurrency: int, fail_fast: bool
    ) -> builtins.list[int | Exception]:
        return self.real.read_ranges(requests, concurrency=concurrency, errors="return")

    def _exists_batch(self, paths: Iterable[str], concurrency: int, fail_fast: bool) -> builtins.list[bool | Exception]:
        return self.real.exists_many(paths, concurrency=concurrency, errors="return")
