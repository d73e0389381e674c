"""A backend on the local disk, with POSIX calls for speed and crash safety.

Writes go to a temporary file under ``tmp/`` that is fsynced and then hard-linked into place (``link`` fails
if the target exists, which makes ``put_if_absent`` exclusive); ``replace`` renames over the target. Ref
updates hold an exclusive ``flock`` on ``locks/refs.lock``, which the kernel releases if the process dies,
so a killed writer never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone

from ckpt.errors import BackendError, MissingObjectError
from ckpt.storage.base import Buffer, CasResult, Entry

__all__ = ["LocalBackend"]

_TMP = "tmp"
_LOCK = "locks/refs.lock"


def _parts(data: Buffer) -> list[bytes | bytearray | memoryview]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [data]
    return list(data)


class LocalBackend:
    """Objects as files under a root folder.

    Args:
        root: the folder (created on first write).
        durable: fsync files and folders so that a power loss keeps what was committed.

    Example:
        >>> b = LocalBackend("/tmp/store")  # doctest: +SKIP
        >>> b.put_if_absent("a/b", b"hello")  # doctest: +SKIP
        True
    """

    conditional_writes = True

    def __init__(self, root: str, *, durable: bool = True) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.url = self.root
        self.durable = durable
        self._dirty_dirs: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._thread_lock = threading.Lock()

    def _abs(self, path: str) -> str:
        full = os.path.normpath(os.path.join(self.root, path))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise BackendError(f"path {path!r} leaves the store root")
        return full

    def _write_tmp(self, data: Buffer) -> str:
        tmpdir = os.path.join(self.root, _TMP)
        os.makedirs(tmpdir, exist_ok=True)
        tmp = os.path.join(tmpdir, f"{os.getpid()}-{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for part in _parts(data):
                view = memoryview(part).cast("B")
                while view.nbytes:
                    n = os.write(fd, view)
                    view = view[n:]
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _mark_dirty(self, full: str) -> None:
        if self.durable:
            with self._dirty_lock:
                self._dirty_dirs.add(os.path.dirname(full))

    def put_if_absent(self, path: str, data: Buffer) -> bool:
        """Write an object unless one exists; atomic (temp file + fsync + hard link).

        An object that exists already gets its mtime refreshed, so that a gc planned before this call
        does not delete what a new snapshot is about to reference.
        """
        full = self._abs(path)
        if self._freshen(full):
            return False
        try:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = self._write_tmp(data)
            try:
                try:
                    os.link(tmp, full)
                except FileNotFoundError:  # a concurrent delete removed the emptied folder
                    os.makedirs(os.path.dirname(full), exist_ok=True)
                    os.link(tmp, full)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise BackendError(f"cannot write {full}: {e}") from e
        self._mark_dirty(full)
        return True

    @staticmethod
    def _freshen(full: str) -> bool:
        """Touch an existing object (so a concurrent gc sees it as young again); returns whether it exists."""
        if not os.path.isfile(full):
            return False
        try:
            os.utime(full)
        except FileNotFoundError:
            return False
        except PermissionError:  # read-only store: existence is all that matters
            pass
        return True

    def replace(self, path: str, data: Buffer) -> None:
        """Write or overwrite an object atomically (temp file + fsync + rename)."""
        full = self._abs(path)
        try:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = self._write_tmp(data)
            os.replace(tmp, full)
        except OSError as e:
            raise BackendError(f"cannot write {full}: {e}") from e
        self._mark_dirty(full)
        self.flush()

    def compare_and_swap(self, path: str, expected: bytes | None, new: bytes | None) -> CasResult:
        """Swap under an exclusive ``flock`` (released by the kernel if the process dies)."""
        full = self._abs(path)
        lock_path = os.path.join(self.root, _LOCK)
        try:
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)
            with self._thread_lock:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    current = self._read_or_none(full)
                    if current != expected:
                        return CasResult(False, current)
                    if new is None:
                        os.unlink(full)
                        self._mark_dirty(full)
                        self._prune_empty_dirs(os.path.dirname(full))
                        self.flush()
                    else:
                        self.replace(path, new)
                    return CasResult(True, None)
                finally:
                    os.close(fd)  # closing releases the flock
        except OSError as e:
            raise BackendError(f"cannot update {full}: {e}") from e

    @staticmethod
    def _read_or_none(full: str) -> bytes | None:
        try:
            with open(full, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def read(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Read bytes ``[start, end)`` of an object."""
        full = self._abs(path)
        try:
            with open(full, "rb") as f:
                if start:
                    f.seek(start)
                return f.read() if end is None else f.read(max(0, end - start))
        except FileNotFoundError as e:
            raise MissingObjectError(f"object {path} is missing from {self.url}") from e
        except OSError as e:
            raise BackendError(f"cannot read {full}: {e}") from e

    def read_into(self, path: str, out: Sequence[memoryview], start: int = 0) -> None:
        """Fill the buffers ``out`` from offset ``start`` with one ``preadv`` (no intermediate copy)."""
        full = self._abs(path)
        try:
            fd = os.open(full, os.O_RDONLY)
        except FileNotFoundError as e:
            raise MissingObjectError(f"object {path} is missing from {self.url}") from e
        except OSError as e:
            raise BackendError(f"cannot read {full}: {e}") from e
        try:
            views = [v.cast("B") if v.format != "B" else v for v in out]
            views = [v for v in views if v.nbytes]
            pos = start
            while views:
                n = os.preadv(fd, views, pos)
                if n == 0:
                    raise MissingObjectError(f"object {path} in {self.url} is shorter than expected")
                pos += n
                while views and n >= views[0].nbytes:
                    n -= views[0].nbytes
                    views.pop(0)
                if views and n:
                    views[0] = views[0][n:]
        except OSError as e:
            raise BackendError(f"cannot read {full}: {e}") from e
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        """Whether the object exists."""
        return os.path.isfile(self._abs(path))

    def list(self, prefix: str) -> Iterator[Entry]:
        """Every object under ``prefix``, with size and mtime.

        The backend's own ``locks/`` and ``tmp/`` folders are left out unless listed explicitly.
        """
        base = self._abs(prefix) if prefix else self.root
        if os.path.isfile(base):
            st = os.stat(base)
            yield Entry(prefix, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))
            return
        internal = {os.path.join(self.root, "locks"), os.path.join(self.root, _TMP)} - {base}
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in internal]
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                yield Entry(rel, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))

    def delete(self, paths: Sequence[str]) -> None:
        """Delete objects; missing ones are ignored."""
        for p in paths:
            full = self._abs(p)
            try:
                os.unlink(full)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise BackendError(f"cannot delete {full}: {e}") from e
            self._mark_dirty(full)
            self._prune_empty_dirs(os.path.dirname(full))
        self.flush()

    def _prune_empty_dirs(self, folder: str) -> None:
        """Remove folders left empty, up to the root, so that a deleted ``a/b`` frees the name ``a``.

        Fan-out folders of content-addressed objects (``chunks/ab``) are shared by concurrent writers, so
        only a folder that is the last of its path is removed, and ``put_if_absent`` recreates a folder that
        vanished under it.
        """
        while folder != self.root and folder.startswith(self.root + os.sep):
            try:
                os.rmdir(folder)
            except OSError:  # not empty (or gone): stop
                return
            folder = os.path.dirname(folder)

    def flush(self) -> None:
        """fsync every folder that gained or lost an entry since the last flush."""
        if not self.durable:
            return
        with self._dirty_lock:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        for d in dirs:
            try:
                fd = os.open(d, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            except OSError as e:  # some filesystems refuse fsync on folders
                if e.errno not in (errno.EINVAL, errno.EBADF):
                    raise BackendError(f"cannot fsync {d}: {e}") from e
            finally:
                os.close(fd)

    def local_path(self, path: str) -> str | None:
        """The object's path on disk."""
        return self._abs(path)
