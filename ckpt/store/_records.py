"""The local record cache: snapshot records and tensor tables read from object stores, kept on this machine.

A record's address is the BLAKE3 digest of its exact bytes, so what an address names never changes: a copy
kept here is as good as the store's, for every store, forever. Each entry is checked against its address when
it is read; one that does not hash to it (a disk error, a hand edit, a planted file) is deleted and the record
is read from the store again, so the cache can make ``log`` fast but can never change what it shows. An entry
that is not a plain file (a link, a FIFO, a device) is removed unread. The folders are made ``0o700`` and the
entries ``0o600``: records of a private store stay this user's.

What the cache cannot say is whether a store *still holds* a record: it answers the readers that follow ids
the store itself gave (refs, parent links, listings): ``log``, ``show``, ``ls``, revisions, ``snapshots()``.
``verify`` and ``repair`` read the store itself (``fresh=True``).

Where: ``ckpt.settings.record_cache()`` (``$CKPT_RECORD_CACHE``, else ``~/.cache/ckpt/records``), one file per
record at ``<kind>/<ab>/<digest>.json``; ``CKPT_RECORD_CACHE=off`` turns it off. Only stores that are not on
this machine use it (a local folder is read directly; an in-process memory store needs no copy). Deleting the
folder at any time is safe. Writing to it never fails a read: a cache that cannot be written is skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path

from ckpt import settings
from ckpt.errors import CorruptChunkError, MissingObjectError
from ckpt.model import digest_bytes
from ckpt.storage import Backend
from ckpt.store import _layout as layout
from ckpt.store._io import is_remote

__all__ = ["KINDS", "RecordCache", "check_record", "read_record", "record_cache_for"]

#: The kinds of record kept: snapshot records and tensor tables.
KINDS = ("snapshots", "tables")

_DIGEST = re.compile(r"[0-9a-f]{64}")


class RecordCache:
    """Immutable records by digest in a local folder, checked against their digest on every read.

    Args:
        root: the cache folder (created when first written).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"RecordCache({str(self.root)!r})"

    def _path(self, kind: str, digest: str) -> Path | None:
        if kind not in KINDS or not _DIGEST.fullmatch(digest):
            return None  # never a path built from anything but a digest: it stays inside the folder
        return self.root / kind / digest[:2] / f"{digest}.json"

    def get(self, kind: str, digest: str) -> bytes | None:
        """The record's bytes if kept here and they hash to ``digest``; else ``None`` (a bad entry is deleted)."""
        path = self._path(kind, digest)
        if path is None:
            return None
        data = _read_entry(path)
        if data is None:
            return None
        if digest_bytes(data) == digest:
            return data
        with contextlib.suppress(OSError):
            path.unlink()
        return None

    def put(self, kind: str, digest: str, data: bytes) -> None:
        """Keep a record that the caller checked against ``digest``; silently skipped if it cannot be written."""
        path = self._path(kind, digest)
        if path is None or digest_bytes(data) != digest:
            return
        tmp = None
        try:
            if not path.parent.is_dir():  # records of private stores: this user's alone
                for folder in (self.root, path.parent.parent, path.parent):
                    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # whole or absent: a reader never sees half an entry (and checks it anyway)
            tmp = None
        except OSError:
            pass
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _read_entry(path: Path) -> bytes | None:
    """An entry's bytes, if it is a regular file (not a link, a FIFO or a device): ``None`` otherwise.

    Opened without following a link and without blocking, so a planted FIFO cannot hang a read and a link to
    ``/dev/zero`` cannot fill memory; anything that is not a plain file is removed like a bad entry.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError:  # a link (ELOOP), or unreadable
        if path.is_symlink():
            with contextlib.suppress(OSError):
                path.unlink()
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read()
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def record_cache_for(backend: Backend) -> RecordCache | None:
    """The record cache for a store on ``backend``: ``None`` when it is off or the store is on this machine."""
    if not is_remote(backend):
        return None
    root = settings.record_cache()
    return None if root is None else RecordCache(root)


def check_record(kind: str, digest: str, data: bytes) -> None:
    """Raise ``CorruptChunkError`` unless a ``table``'s or ``snapshot``'s bytes hash to ``digest``."""
    if digest_bytes(data) == digest:
        return
    if kind == "table":
        raise CorruptChunkError(f"tensor table {digest[:12]} is corrupt", digest=digest)
    if kind == "snapshot":
        raise CorruptChunkError(f"snapshot record {digest[:12]} is corrupt", digest=digest, snapshot=digest)
    raise CorruptChunkError(f"{kind} record {digest[:12]} is corrupt", digest=digest)


def read_record(backend: Backend, cache: RecordCache | None, kind: str, digest: str) -> bytes:
    """A table's (``kind="table"``) or snapshot record's exact bytes, checked against its digest.

    From ``cache`` when it holds them (checked there), else from the store (then kept in ``cache``).

    Raises:
        MissingObjectError: the store does not hold it.
        CorruptChunkError: its bytes do not hash to ``digest``.
    """
    folder = "tables" if kind == "table" else "snapshots"
    if cache is not None:
        kept = cache.get(folder, digest)
        if kept is not None:
            return kept
    path = layout.table_path(digest) if kind == "table" else layout.snapshot_path(digest)
    what = "tensor table" if kind == "table" else kind
    try:
        data = backend.read(path)
    except MissingObjectError as e:
        raise MissingObjectError(f"{what} {digest[:12]} is missing from the store") from e
    check_record(kind, digest, data)
    if cache is not None:
        cache.put(folder, digest, data)
    return data
