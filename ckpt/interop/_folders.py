"""The user's folders, read safely: confined walks and bounded reads.

Reading (``scan_folder``, ``open_file``, ``read_file``) — what ``ckpt import`` sees of a folder:

- every regular file of the tree, subfolders and hidden files included, except ``.git/`` folders and ckpt
  stores (a folder holding a ``ckpt.json`` store config), and paths matching ``exclude`` patterns;
- a symbolic link is followed only when its target stays inside the folder (a link into the folder's own tree,
  or, for a Hugging Face hub-cache snapshot ``<repo>/snapshots/<rev>/``, into ``<repo>/blobs/``); any other
  link, a dangling link, a link loop, or a FIFO, socket or device is an error naming it, never skipped;
- files are opened without following links (``O_NOFOLLOW``, component by component from the folder), so a
  link swapped in after the walk is refused too, and size limits are applied while reading (``/proc`` files
  report size 0).

Writing a folder (``FolderWriter``, what ``ckpt restore --to`` does to one): ``_folder_writer``.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ckpt.errors import BackendError, CkptError, RecordError

__all__ = [
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "FolderFile",
    "FolderScan",
    "check_relative_path",
    "inside",
    "is_store",
    "open_file",
    "os_error",
    "read_file",
    "scan_folder",
]

#: The longest file or folder name most filesystems take (ext4, XFS, APFS, NTFS: 255).
MAX_NAME_BYTES = 255
#: The longest relative path ckpt reads or writes inside a folder (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096
#: The deepest relative path ckpt reads or writes inside a folder (model folders nest a few levels).
MAX_DEPTH = 64

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FD = os.open in os.supports_dir_fd and bool(_NOFOLLOW) and bool(_DIRECTORY)
_WINDOWS = os.name == "nt"  # where ':' names an alternate data stream


def os_error(e: OSError, doing: str) -> CkptError:
    """A ``CkptError`` for an operating-system failure, with a hint for the usual causes.

    Args:
        e: the error the OS raised.
        doing: what was being done, e.g. ``"writing out/model.safetensors"``.

    Returns:
        A ``BackendError`` (keep ``e`` as its cause: ``raise os_error(e, ...) from e``).
    """
    hints = {
        errno.ENOSPC: "the disk is full: free some space or write somewhere else",
        errno.EDQUOT: "your disk quota is used up: free some space or write somewhere else",
        errno.EACCES: "you lack permission there: check the folder's owner and mode, or choose another folder",
        errno.EPERM: "the operation is not permitted there: check the folder's owner and mode",
        errno.EROFS: "the filesystem is read-only: write somewhere else",
        errno.ENAMETOOLONG: "a name or path is too long for the filesystem: use a shorter folder path",
        errno.ELOOP: "a symbolic link is in the way; ckpt never follows links there: remove it",
        errno.EXDEV: "the folder spans two filesystems (a mount inside it): write to a new folder instead",
        errno.EBUSY: "the folder is in use or a mount point: write to a new folder instead",
        errno.EMLINK: "too many links to one file: write to a new folder instead",
        errno.EFBIG: "the file is larger than this process may write (ulimit -f) or the filesystem allows",
    }
    reason = e.strerror or str(e)
    return BackendError(f"{doing} failed: {reason}", hint=hints.get(e.errno or 0, "check the path and try again"))


def check_relative_path(rel: str, *, what: str = "path") -> str:
    """Check that a relative POSIX path can be written and read back on common filesystems.

    Args:
        rel: e.g. ``"1_Pooling/config.json"``.
        what: how to name it in the error.

    Returns:
        ``rel``, unchanged.

    Raises:
        RecordError: an absolute path, an empty, ``.`` or ``..`` part, a backslash, a NUL (on Windows a colon), a
            name that is not valid UTF-8 (an undecodable byte), a name over 255 bytes, a path over 4096 bytes or
            64 levels.
    """
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        raise RecordError(
            f"{what} {rel!r} is not valid UTF-8", hint="rename the file: ckpt stores names as UTF-8 text"
        ) from None
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") or "\0" in p or (_WINDOWS and ":" in p) for p in parts):
        raise RecordError(
            f"{what} {rel[:200]!r} would leave its folder (absolute, '..', or a drive or stream name)",
            hint="ckpt reads and writes only inside the folder it is given",
        )
    if "\\" in rel:
        raise RecordError(
            f"{what} {rel!r} has a backslash, which ckpt reads as a folder separator (as Windows does)",
            hint="rename the file, or leave it out with exclude=['PATTERN']",
            cli_hint="rename the file, or leave it out with --exclude PATTERN",
        )
    if size > MAX_PATH_BYTES or len(parts) > MAX_DEPTH:
        raise RecordError(
            f"{what} {rel[:60]!r}… is {size} bytes long and {len(parts)} levels deep (at most {MAX_PATH_BYTES} "
            f"bytes and {MAX_DEPTH} levels)",
            hint="shorten the path: filesystems and tools refuse paths this long or deep",
        )
    for p in parts:
        if len(p.encode("utf-8")) > MAX_NAME_BYTES:
            raise RecordError(
                f"{what} has a name of {len(p.encode('utf-8'))} bytes ({p[:40]!r}…); filesystems take at most "
                f"{MAX_NAME_BYTES}",
                hint="shorten the name",
            )
    return rel


# -- reading -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderFile:
    """One regular file found by ``scan_folder``.

    Attributes:
        path: its relative POSIX path in the folder, e.g. ``"1_Pooling/config.json"`` (for a followed link:
            the link's own path).
        base: the confined folder the file is opened from (the scanned folder itself, or a hub cache's
            ``blobs/``), with every symbolic link resolved.
        inner: the file's real path relative to ``base``; it is opened from ``base`` without following links.
        size: its size in bytes when scanned (a hint only: reads apply their limits to what they read).
        link: the target text of the symbolic link that led to it, if one did.
    """

    path: str
    base: Path
    inner: str
    size: int
    link: str | None = None

    @property
    def source(self) -> Path:
        """The real file (for messages; open it with ``open_file``)."""
        return self.base / self.inner


@dataclass(frozen=True)
class FolderScan:
    """What ``scan_folder`` found.

    Attributes:
        root: the folder, every symbolic link in its path resolved.
        files: every regular file to import, sorted by path.
        skipped: ``(relative path, reason)`` of what was left out on purpose (``.git/``, stores, excluded).
    """

    root: Path
    files: tuple[FolderFile, ...]
    skipped: tuple[tuple[str, str], ...]

    def size(self, predicate: Callable[[FolderFile], bool] | None = None) -> int:
        """Bytes of the files (those ``predicate`` accepts), as scanned."""
        return sum(f.size for f in self.files if predicate is None or predicate(f))


def inside(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _hub_blobs(root: Path) -> Path | None:
    """``<repo>/blobs`` for a hub-cache snapshot folder ``<repo>/snapshots/<rev>``, if it is a real folder."""
    if root.parent.name != "snapshots":
        return None
    blobs = root.parent.parent / "blobs"
    if blobs.is_dir() and not blobs.is_symlink() and os.path.realpath(blobs) == str(blobs):
        return blobs
    return None


def is_store(folder: str) -> bool:
    """Whether ``folder`` is a ckpt store (it holds a store config): never imported, never written into."""
    from ckpt.store import CONFIG_FILE

    config = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(config):
        return False
    try:
        with open(config, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'"format"' in head and b'"ckpt"' in head


def _matches(rel: str, patterns: Sequence[str]) -> str | None:
    for pattern in patterns:
        p = pattern.rstrip("/") + "/*" if pattern.endswith("/") else pattern
        if fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(rel, pattern.rstrip("/")):
            return pattern
    return None


def local_path(path: object, what: str = "a folder") -> Path:
    """A local file or folder argument (a str or ``os.PathLike``) as a ``Path``.

    Raises:
        RecordError: it is bytes (or an ``os.PathLike`` giving bytes), or not a path at all.
    """
    try:
        text = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        raise RecordError(f"{what} must be a path (str or os.PathLike), got {type(path).__name__}") from None
    if not isinstance(text, str):
        raise RecordError(
            f"{what} must be a str path, got bytes {text[:80]!r}", hint="decode it with os.fsdecode(path)"
        )
    return Path(text)


def scan_folder(path: str | os.PathLike[str], *, exclude: Sequence[str] = ()) -> FolderScan:
    """List every regular file of a folder tree that ``ckpt import`` reads, refusing what it cannot prove safe.

    Args:
        path: the folder.
        exclude: glob patterns of relative paths to leave out (``fnmatch``, as ``huggingface_hub``'s
            ``ignore_patterns``: ``"onnx/*"``, ``"*.h5"``; a pattern ending in ``/`` means that folder).

    Returns:
        The files and what was skipped (``.git/`` folders, ckpt stores, excluded paths).

    Raises:
        RecordError: no such folder; a symbolic link that leaves the folder, dangles, or loops; a file that is
            not a regular file (FIFO, socket, device); a name that is not UTF-8 or too long.
        BackendError: a folder cannot be listed (permission …).

    Example:
        >>> scan = scan_folder("all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> sorted(f.path for f in scan.files)[0:2]  # doctest: +SKIP
        ['.gitattributes', '1_Pooling/config.json']
    """
    given = local_path(path)
    try:
        root = Path(os.path.realpath(given))
        mode = os.stat(root).st_mode
    except OSError as e:
        raise RecordError(f"no such file or folder: {given}", hint="check the path") from e
    if not stat.S_ISDIR(mode):
        raise RecordError(f"{given} is not a folder", hint="pass the folder that holds the files")
    roots = [root]
    blobs = _hub_blobs(root)
    if blobs is not None:
        roots.append(blobs)

    files: list[FolderFile] = []
    skipped: list[tuple[str, str]] = []
    stack: list[tuple[str, Path, tuple[Path, ...]]] = [("", root, (root,))]
    while stack:
        rel_dir, real_dir, chain = stack.pop()
        try:
            with os.scandir(real_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise os_error(e, f"listing {given / rel_dir if rel_dir else given}") from e
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            pattern = _matches(rel, exclude)
            if pattern is not None:
                skipped.append((rel, f"excluded by {pattern!r}"))
                continue
            check_relative_path(rel, what="file")
            link: str | None = None
            try:
                if entry.is_symlink():
                    link = os.readlink(entry.path)
                    real = Path(os.path.realpath(entry.path))
                    within = next((r for r in roots if inside(str(real), str(r))), None)
                    if within is None:
                        raise RecordError(
                            f"{given / rel} is a symbolic link to {link} ({real}), outside the folder being "
                            "imported; ckpt follows links only inside it",
                            hint="copy the file into the folder if you mean to import it (cp -L), or remove the link",
                        )
                    try:
                        st = os.stat(real)
                    except OSError as e:
                        what = "a link loop" if e.errno == errno.ELOOP else "which does not exist"
                        raise RecordError(
                            f"{given / rel} is a symbolic link to {link}, {what}",
                            hint="the download may be incomplete (a hub-cache blob is missing): download the "
                            "model again, or remove the link",
                        ) from None
                    if within is not root and not stat.S_ISREG(st.st_mode):
                        raise RecordError(
                            f"{given / rel} links to {real}, which is not a regular file",
                            hint="remove the link, or leave it out with exclude=['PATTERN']",
                            cli_hint="remove the link, or leave it out with --exclude PATTERN",
                        )
                else:
                    real = Path(entry.path)
                    st = entry.stat(follow_symlinks=False)
            except OSError as e:
                raise os_error(e, f"reading {given / rel}") from e
            if stat.S_ISDIR(st.st_mode):
                if entry.name == ".git":
                    skipped.append((rel, "version control (.git)"))
                elif is_store(str(real)):
                    skipped.append((rel, "a ckpt store"))
                elif real in chain:
                    raise RecordError(
                        f"{given / rel} is a symbolic link to {link}, a folder that contains it (a loop)",
                        hint="remove the link, or leave it out with exclude=['PATTERN']",
                        cli_hint="remove the link, or leave it out with --exclude PATTERN",
                    )
                else:
                    stack.append((rel, real, (*chain, real)))
            elif stat.S_ISREG(st.st_mode):
                base = next(r for r in roots if inside(str(real), str(r)))
                inner = os.path.relpath(real, base).replace(os.sep, "/")
                files.append(FolderFile(rel, base, inner, st.st_size, link))
            else:
                kind = (
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
                )
                raise RecordError(
                    f"{given / rel} is {kind}, not a regular file",
                    hint="move it out of the folder, or leave it out with exclude=['PATTERN']",
                    cli_hint="move it out of the folder, or leave it out with --exclude PATTERN",
                )
    files.sort(key=lambda f: f.path)
    skipped.sort()
    return FolderScan(root, tuple(files), tuple(skipped))


def open_file(file: FolderFile) -> BinaryIO:
    """Open a scanned file for reading without following any symbolic link on the way.

    Each folder below ``file.base`` is opened with ``O_NOFOLLOW`` relative to the one before it, so a link
    swapped in after ``scan_folder`` is refused rather than followed out of the folder.

    Raises:
        RecordError: the file changed into something else than a regular file (a link, a FIFO …).
        BackendError: it cannot be opened (permission, gone …).
    """
    what = str(file.source) if file.link is None else f"{file.path} (-> {file.source})"
    flags = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC
    parts = file.inner.split("/")
    fd = -1
    try:
        if _DIR_FD:
            dir_fd = os.open(file.base, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
            try:
                for part in parts[:-1]:
                    nxt = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
                    os.close(dir_fd)
                    dir_fd = nxt
                fd = os.open(parts[-1], flags, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        else:
            fd = os.open(file.base / file.inner, flags)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RecordError(
                f"{what} is no longer a regular file; it changed while it was imported",
                hint="import the folder again when nothing else is changing it",
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except OSError as e:
        if fd >= 0:
            os.close(fd)
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RecordError(
                f"{what} became a symbolic link while it was imported; ckpt does not follow it",
                hint="import the folder again when nothing else is changing it",
            ) from e
        raise os_error(e, f"reading {what}") from e
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def read_file(file: FolderFile, *, limit: int | None = None) -> bytes:
    """Read a scanned file whole, never more than ``limit`` bytes (applied while reading, not from ``stat``).

    Raises:
        RecordError: the file holds more than ``limit`` bytes, or it is not a regular file any more.
        BackendError: it cannot be read.
    """
    with open_file(file) as f:
        try:
            data = f.read() if limit is None else f.read(limit + 1)
        except OSError as e:
            raise os_error(e, f"reading {file.source}") from e
    if limit is not None and len(data) > limit:
        raise RecordError(
            f"{file.path} holds more than {limit} bytes; files other than weights over that are not attached",
            hint="move it out of the folder or leave it out with exclude=['PATTERN'] (weights belong in "
            ".safetensors files)",
            cli_hint="move it out of the folder or leave it out with --exclude PATTERN (weights belong in "
            ".safetensors files)",
        )
    return data
