"""The storage boundary: what ckpt needs from a place that keeps bytes.

A backend stores objects (byte strings) at ``/``-separated relative paths under one root. The store layer
calls it in this order when it commits (see docs/concepts/commit-protocol.md):

1. ``put_if_absent`` for every chunk, then for the tensor table, then for the snapshot record;
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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["Backend", "Buffer", "CasResult", "Entry"]

#: Bytes, or a sequence of byte buffers written one after the other (no concatenation copy).
Buffer = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]


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
