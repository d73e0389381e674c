"""A backend on the local disk, with POSIX calls for speed and crash safety.

Writes go to a temporary file under ``tmp/`` that is fsynced and then hard-linked into place (``link`` fails
if the target exists, which makes ``put_if_absent`` exclusive); ``replace`` renames over the target. Ref
updates hold an exclusive ``flock`` on ``locks/refs.lock``, which the kernel releases if the process dies,
so a killed writer never leaves a stale lock.

Confinement: nothing inside the root is followed if it is a symbolic link. Every folder between the root and
an object is checked with ``lstat`` before the object is touched, objects are opened with ``O_NOFOLLOW``, and
only regular files are read. A store whose ``chunks/``, ``tmp/``, ``logs/`` … is a link is refused (``gc``
would otherwise delete, and ``save`` write, wherever the link points). The root itself may be a link: it is
the place the user named.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone

from ckpt.errors import BackendError, IntegrityError, MissingObjectError
from ckpt.storage._batch import BatchedVerbs, run_inline
from ckpt.storage.base import Buffer, CasResult, Entry

__all__ = ["LocalBackend"]

_TMP = "tmp"
_LOCK = "locks/refs.lock"

#: Flags every read of an object opens it with: never through a link, never blocking on a FIFO.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)

_LINK_HINT = (
    "ckpt never follows symbolic links inside a store: replace the link with the folder or file it points to "
    "(or open the store where it really lives)"
)


def _parts(data: Buffer) -> builtins.list[bytes | bytearray | memoryview]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [data]
    return list(data)


class LocalBackend(BatchedVerbs):
    """Objects as files under a root folder.

    The batched verbs run on a thread pool (``pwrite``, ``fsync``, ``preadv`` release the GIL, and parallel
    fsyncs overlap on the device), except ``exists_many``, whose ``lstat`` calls are faster than a thread hop.

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
        self._check_root()

    def _check_root(self) -> None:
        """Refuse a root that holds a symbolic link (``tmp -> ~/important`` would make gc delete there)."""
        try:
            entries = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return  # created on first write
        except OSError as e:
            raise BackendError(f"cannot open the store folder {self.root}: {e}") from e
        for entry in entries:
            if entry.is_symlink():
                raise BackendError(f"{entry.path} in the store at {self.root} is a symbolic link", hint=_LINK_HINT)

    def _abs(self, path: str, *, whole: bool = False) -> str:
        """The object's path on disk, after checking that no folder on the way is a symbolic link.

        With ``whole``, the last component (a folder being listed) is checked too.
        """
        full = os.path.normpath(os.path.join(self.root, path))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise BackendError(f"path {path!r} leaves the store root")
        parts = full[len(self.root) + 1 :].split(os.sep) if full != self.root else []
        current = self.root
        for part in parts if whole else parts[:-1]:
            current = os.path.join(current, part)
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                break
            except OSError as e:
                raise BackendError(f"cannot check {current}: {e}") from e
            if stat.S_ISLNK(st.st_mode):
                raise BackendError(f"{current} in the store at {self.root} is a symbolic link", hint=_LINK_HINT)
        return full

    def _open_object(self, full: str, path: str) -> int:
        """Open an object for reading, refusing links and anything that is not a regular file."""
        try:
            fd = os.open(full, _READ_FLAGS)
        except FileNotFoundError as e:
            raise MissingObjectError(f"object {path} is missing from {self.url}") from e
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise IntegrityError(
                    f"object {path} in {self.url} is a symbolic link, not a stored object", hint=_LINK_HINT
                ) from e
            raise BackendError(f"cannot read {full}: {e}") from e
        try:
            st = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            raise BackendError(f"cannot read {full}: {e}") from e
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise IntegrityError(f"object {path} in {self.url} is not a regular file", hint=_LINK_HINT)
        return fd

    def _write_tmp(self, data: Buffer) -> str:
        tmpdir = self._abs(_TMP, whole=True)
        os.makedirs(tmpdir, exist_ok=True)
        tmp = os.path.join(tmpdir, f"{os.getpid()}-{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
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
        """Touch an existing object (so a concurrent gc sees it as young again); returns whether it exists.

        A link or other non-file at the path counts as existing (it is never overwritten, and reading it is
        refused), and is not touched.
        """
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            return False
        if not stat.S_ISREG(st.st_mode):
            return True
        try:
            # stamped from the fine clock: the kernel's own stamp comes from a coarse clock that can lag this
            # process's by milliseconds, and gc compares it with the moment it made its plan
            now = time.time_ns()
            os.utime(full, ns=(now, now), follow_symlinks=False)
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
        lock_path = self._abs(_LOCK)
        try:
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)
            with self._thread_lock:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    current = self._read_or_none(full, path)
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

    def _read_or_none(self, full: str, path: str) -> bytes | None:
        try:
            return self._read_fd(full, path, 0, None)
        except MissingObjectError:
            return None

    def _read_fd(self, full: str, path: str, start: int, end: int | None) -> bytes:
        fd = self._open_object(full, path)
        try:
            size = os.fstat(fd).st_size
            stop = size if end is None else min(end, size)  # never allocate more than the object holds
            if stop <= start:
                return b""
            parts = []
            pos = start
            while pos < stop:
                piece = os.pread(fd, stop - pos, pos)
                if not piece:
                    break
                parts.append(piece)
                pos += len(piece)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        except OSError as e:
            raise BackendError(f"cannot read {full}: {e}") from e
        finally:
            os.close(fd)

    def read(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Read bytes ``[start, end)`` of an object (fewer if it ends first); links are refused."""
        return self._read_fd(self._abs(path), path, start, end)

    def read_into(self, path: str, out: Sequence[memoryview], start: int = 0) -> int:
        """Fill the buffers ``out`` from offset ``start`` with ``preadv`` (no intermediate copy).

        Returns the number of bytes read: less than the buffers hold when the object ends first.
        """
        full = self._abs(path)
        fd = self._open_object(full, path)
        total = 0
        try:
            views = [v.cast("B") if v.format != "B" else v for v in out]
            views = [v for v in views if v.nbytes]
            pos = start
            while views:
                n = os.preadv(fd, views, pos)
                if n == 0:
                    break
                pos += n
                total += n
                while views and n >= views[0].nbytes:
                    n -= views[0].nbytes
                    views.pop(0)
                if views and n:
                    views[0] = views[0][n:]
        except OSError as e:
            raise BackendError(f"cannot read {full}: {e}") from e
        finally:
            os.close(fd)
        return total

    def exists(self, path: str) -> bool:
        """Whether something is stored at ``path`` (a link counts: reading it is then refused)."""
        try:
            st = os.lstat(self._abs(path))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise BackendError(f"cannot check {path} in {self.url}: {e}") from e
        return not stat.S_ISDIR(st.st_mode)

    def list(self, prefix: str) -> Iterator[Entry]:
        """Every object under ``prefix``, with size and mtime.

        The backend's own ``locks/`` and ``tmp/`` folders are left out unless listed explicitly. Folders that
        are symbolic links are never entered (and a listed folder that is one is refused); a file that is a
        link is listed with the link's own size, so that gc can remove it and verify reports it.
        """
        base = self._abs(prefix, whole=True) if prefix else self.root
        try:
            st = os.lstat(base)
        except FileNotFoundError:
            return
        except OSError as e:
            raise BackendError(f"cannot list {base}: {e}") from e
        if not stat.S_ISDIR(st.st_mode):
            yield Entry(prefix, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))
            return
        internal = {os.path.join(self.root, "locks"), os.path.join(self.root, _TMP)} - {base}
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in internal]
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
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

    def _exists_batch(self, paths: Iterable[str], concurrency: int, fail_fast: bool) -> builtins.list[bool | Exception]:
        return run_inline(self.exists, paths, fail_fast=fail_fast)
