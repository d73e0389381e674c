"""The storage boundary: what ckpt needs from a place that keeps bytes.

A backend stores objects (byte strings) at ``/``-separated relative paths under one root. The store layer
calls it in this order when it commits (see docs/concepts/commit-protocol.md):

1. ``put_if_absent`` (or ``put_many``) for every chunk, then for the tensor table, then for the snapshot record;
2. ``flush`` so that everything written so far is durable;
3. ``compare_and_swap`` to move the branch.

Guarantees every backend gives:

- ``put_if_absent`` is atomic and idempotent: readers see the whole object or nothing, and of two writers
  of the same path exactly one wins (on the local disk, the memory filesystem and S3; on other fsspec
  filesystems it is best-effort, which is harmless for content-addressed objects).
- ``replace`` atomically replaces an object.
- ``compare_and_swap`` replaces (or deletes) an object only if its content is still the expected one, and
  tells the caller what it found otherwise.
- ``read``/``read_into`` return exactly the stored bytes (fewer when the object ends before the range does,
  never more than it holds: memory is bounded by what is really stored) or raise ``MissingObjectError``.
- Paths stay under the root: ``..`` and absolute paths are refused, and a local backend never follows a
  symbolic link inside the root (a link is refused as ``IntegrityError``; ``exists`` still reports it).
- Any other failure of the underlying system is raised as ``BackendError`` with the original as cause.

Batched calls (``put_many``, ``read_many``, ``read_ranges``, ``exists_many``) do what the one-object verb does for
each item, several at a time, and keep every guarantee above item by item:

- Items are taken from the iterable lazily, in order, and at most ``concurrency`` of them are in flight (taken
  and not finished): a generator that encodes chunks as they are asked for keeps at most that many in memory.
  ``concurrency`` defaults to ``ckpt.settings.io_concurrency()`` (``$CKPT_IO_CONCURRENCY``, else 16).
- Items run in any order and may overlap; the results come back in the order of the items.
- Each item succeeds or fails on its own; a failure never undoes or hides another item's result. With
  ``errors="return"`` every item is tried and a failed item's place in the result list holds its exception
  (``MissingObjectError``, ``IntegrityError`` or ``BackendError``, as the one-object verb raises). With
  ``errors="raise"`` (the default) no new item starts after the first failure, the items in flight finish, and
  the failure of the earliest failed item is raised (with a note counting the others); writes that finished
  are in the store, exactly as if they had been made one by one.
- An interrupt (``KeyboardInterrupt``, ``SystemExit``) is not an item's failure: it cancels what has not started
  and propagates.
- A batched call blocks until every item it started has finished; nothing runs in the background afterwards.
- Object stores run the items concurrently in one event loop (fsspec's, for S3 with s3fs's client), with no
  existence check before a conditional write and no ``HEAD`` before a read; the local disk runs them on
  threads; in-process filesystems run them one after the other.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Literal, NamedTuple, Protocol, overload, runtime_checkable

__all__ = ["Backend", "BatchErrors", "Buffer", "CasResult", "Entry", "RangeRead"]

#: Bytes, or a sequence of byte buffers written one after the other (no concatenation copy).
Buffer = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]

#: What a batched call does when an item fails: raise the first failure, or return it in the item's place.
BatchErrors = Literal["raise", "return"]


class RangeRead(NamedTuple):
    """One item of ``Backend.read_ranges``: fill ``out`` with the object's bytes from offset ``start``.

    Attributes:
        path: the object's path relative to the backend root.
        start: the first byte to read (bytes).
        out: the destination buffers, filled one after the other (e.g. ``memoryview``\\ s of a tensor's
            storage); the range read is ``[start, start + total size of out)``.
    """

    path: str
    start: int
    out: Sequence[memoryview]


class Entry(NamedTuple):
    """One object found by ``Backend.list``.

    Attributes:
        path: the object's path relative to the backend root.
        size: its length in bytes.
        mtime: when it was last written, if the backend knows.
    """

    path: str
    size: int
    mtime: datetime | None


class CasResult(NamedTuple):
    """What ``compare_and_swap`` did.

    Attributes:
        ok: the swap happened.
        current: on failure, the content found instead of the expected one (``None``: no object).
    """

    ok: bool
    current: bytes | None


@runtime_checkable
class Backend(Protocol):
    """A place that keeps objects: a local folder, fsspec's memory filesystem, an S3 prefix…

    Attributes:
        url: where the root is, as the user would write it.
        conditional_writes: whether ``put_if_absent`` and ``compare_and_swap`` are race-free here.
    """

    url: str
    conditional_writes: bool

    def put_if_absent(self, path: str, data: Buffer) -> bool:
        """Write an object unless one exists at ``path``; returns whether this call wrote it. Atomic."""
        ...

    def replace(self, path: str, data: Buffer) -> None:
        """Write or overwrite an object atomically."""
        ...

    def compare_and_swap(self, path: str, expected: bytes | None, new: bytes | None) -> CasResult:
        """Set ``path`` to ``new`` (``None``: delete) only if it holds ``expected`` (``None``: absent)."""
        ...

    def read(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Read bytes ``[start, end)`` of an object (``end=None``: to its end; fewer if the object ends first)."""
        ...

    def read_into(self, path: str, out: Sequence[memoryview], start: int = 0) -> int:
        """Fill the buffers ``out``, one after the other, with the object's bytes from offset ``start``.

        Returns how many bytes were read: fewer than the buffers hold when the object ends first (the rest of
        the buffers is left as it was). A caller that must know an object's exact length asks for one byte more.
        """
        ...

    def exists(self, path: str) -> bool:
        """Whether an object exists at ``path``."""
        ...

    def list(self, prefix: str) -> Iterator[Entry]:
        """Every object whose path starts with ``prefix`` (a folder, ``/``-terminated, or ``""``)."""
        ...

    def delete(self, paths: Sequence[str]) -> None:
        """Delete objects; paths that do not exist are ignored."""
        ...

    def flush(self) -> None:
        """Make everything written so far durable (e.g. fsync directories); a no-op where PUT is durable."""
        ...

    def local_path(self, path: str) -> str | None:
        """The object's path on the local disk, for memory-mapping, or ``None`` if it is not local."""
        ...

    # -- batched verbs: the one-object verbs above, many at a time (see the module docstring) ------------

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
        """``put_if_absent`` for each ``(path, data)``: for each, whether this call wrote it. Each write is atomic."""
        ...

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
        """``read`` of each whole object (records, tables, small files)."""
        ...

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
        """``read_into`` for each request, straight into its buffers: for each, how many bytes were read.

        Only the bytes asked for are fetched (one ranged GET per request on an object store).
        """
        ...

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
        """``exists`` for each path."""
        ...
