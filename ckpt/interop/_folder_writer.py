"""Writing a folder that ``ckpt.export`` owns: beside it, then put in place with one rename.

The new content is written into a fresh folder beside the target (``.<name>.ckpt-export-<random>`` in the same
parent), the target's other files are hard-linked into it, and the new folder is renamed into place. A crash
never leaves a folder with old and new weights mixed; nothing is ever written through a link found in the
target. (Reading a folder: ``_folders``.)

A target that is a mount point (a container's ``/output`` volume) cannot be renamed or swapped: there the new
files are written into a fresh folder *inside* it (the same file system), the superseded weight files are
removed first, then each new file is renamed into place (atomic one by one), the index and ``state.json``
last. A crash part-way can leave a folder that has lost its old weights and lacks the new index, so that
loaders fail loudly; never one whose index names old and new weights mixed.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from ckpt.errors import RecordError
from ckpt.interop._folders import MAX_PATH_BYTES, check_relative_path, inside, is_store, local_path, os_error

__all__ = ["FolderWriter"]


class FolderWriter:
    """Write a folder's new content beside it and put it in place with one rename.

    Call order: ``FolderWriter(dest, ...)`` checks the target and lists what it holds; ``target(rel)`` gives
    the path to write each new file at (inside the fresh folder); ``commit()`` hard-links the target's other
    files into the fresh folder, swaps the two folders (two renames: a crash between them leaves both
    complete folders, never a mixed one), and removes the old one. ``abort()`` (or leaving a ``with`` block
    by an exception) removes the fresh folder and leaves the target as it was.

    Args:
        dest: the folder to write; created if missing. A symbolic link naming it is followed (you chose it);
            links *inside* it are never followed: a file written over one replaces the link.
        planned: every relative path that will be written.
        force: allow a non-empty target.
        owns: ``owns(rel, path)`` is true for an existing file the export owns (old weights, index, ckpt's
            ``state.json``): it is removed unless written again, and reported in ``removed``.

    Raises:
        RecordError: ``dest`` is a file; it is not empty and ``force`` is false; a planned file would replace a
            folder.
        BackendError: the OS refuses (permission, disk full, a mount point …); the target is left as it was.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        planned: Iterable[str],
        *,
        force: bool,
        owns: Callable[[str, Path], bool] = lambda rel, path: False,
    ) -> None:
        self.given = local_path(dest, "the output folder")
        self.real = Path(os.path.realpath(self.given))
        self.planned = {check_relative_path(p, what="file") for p in planned}
        folders = {"/".join(parts[:i]) for p in self.planned for parts in [p.split("/")] for i in range(1, len(parts))}
        both = sorted(self.planned & folders)
        if both:  # checked before anything is written: the OS would refuse midway ("File exists")
            inside = min(p for p in self.planned if p.startswith(both[0] + "/"))
            raise RecordError(
                f"{both[0]!r} would be both a file and the folder of {inside!r}",
                hint="rename or drop the file (store.files(rev) lists a snapshot's attached files)",
            )
        room = MAX_PATH_BYTES - 1 - len(os.fsencode(self.real.parent / f".{self.real.name}.ckpt-export-{'0' * 12}/"))
        for p in self.planned:
            if len(p.encode("utf-8")) > room:
                raise RecordError(
                    f"{self.given}/{p[:60]}… would be a path of more than {MAX_PATH_BYTES} bytes",
                    hint="export to a folder with a shorter path, or shorten the file's path",
                )
        self.removed: list[str] = []
        self._kept: list[tuple[str, os.stat_result, bool]] = []  # rel, lstat, is a folder
        self._known: set[tuple[int, int]] = set()
        self._tmp: Path | None = None
        self._mode: int | None = None
        self._in_place = False  # a mount point: written inside, file by file
        try:
            exists, is_dir = self.real.exists(), self.real.is_dir()
        except OSError as e:
            raise os_error(e, f"looking at {self.given}") from e
        if exists and not is_dir:
            raise RecordError(f"{self.given} is a file, not a folder", hint="choose a folder to write into")
        for folder in (self.real, *self.real.parents):
            if is_store(str(folder)):
                raise RecordError(
                    f"{self.given} is {'a ckpt store' if folder == self.real else f'inside the ckpt store {folder}'}",
                    hint="export to a folder outside any store",
                )
        if is_dir:
            try:
                self._mode = stat.S_IMODE(os.stat(self.real).st_mode)
                self._in_place = os.path.ismount(self.real)
            except OSError as e:
                raise os_error(e, f"looking at {self.given}") from e
            self._list_existing(force, owns)

    def _list_existing(self, force: bool, owns: Callable[[str, Path], bool]) -> None:
        if self.real == Path(self.real.anchor):  # with --force the whole file system would be walked and kept
            raise RecordError(
                f"{self.given} is the root of a file system: an export writes into a folder of its own",
                hint="choose an empty or new folder, e.g. out/model",
            )
        if not force:  # refuse a non-empty folder at its first entry, before walking what it holds
            try:
                with os.scandir(self.real) as it:
                    empty = next(it, None) is None
            except OSError as e:
                raise os_error(e, f"listing {self.given}") from e
            if not empty:
                raise RecordError(
                    f"{self.given} is not empty",
                    hint="choose an empty or new folder, or pass force=True to write into it",
                    cli_hint="choose an empty or new folder, or pass --force to write into it",
                )
        ancestors = {"/".join(p.split("/")[:i]) for p in self.planned for i in range(1, p.count("/") + 1)}
        found = False
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            folder = self.real / rel_dir if rel_dir else self.real
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                raise os_error(e, f"listing {self.given / rel_dir}") from e
            for entry in entries:
                found = True
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as e:
                    raise os_error(e, f"looking at {self.given / rel}") from e
                is_dir = stat.S_ISDIR(st.st_mode)
                if rel in self.planned and is_dir:
                    raise RecordError(
                        f"{self.given / rel} is a folder; the export would write a file there",
                        hint="move it away, or export to a new folder",
                    )
                if is_dir and is_store(entry.path):
                    raise RecordError(
                        f"{self.given / rel} is a ckpt store; an export never moves a store",
                        hint="export to a folder that holds no store",
                    )
                if is_dir:  # kept, and so is everything in it (hard-linked one by one)
                    self._kept.append((rel, st, True))
                    stack.append(rel)
                    continue
                self._known.add((st.st_dev, st.st_ino))
                if rel in self.planned:
                    continue  # replaced by the new file (a link there is replaced, never written through)
                if rel in ancestors:
                    self.removed.append(rel)  # a file or link where the export needs a folder
                elif owns(rel, Path(entry.path)):
                    self.removed.append(rel)
                else:
                    self._kept.append((rel, st, False))
        if found and not force:
            raise RecordError(
                f"{self.given} is not empty",
                hint="choose an empty or new folder, or pass force=True to write into it",
                cli_hint="choose an empty or new folder, or pass --force to write into it",
            )

    def __enter__(self) -> FolderWriter:
        return self

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is not None:
            self.abort()

    def _fresh(self) -> Path:
        if self._tmp is None and self._in_place:
            tmp = self.real / f".ckpt-export-{uuid.uuid4().hex[:12]}"
            try:
                os.mkdir(tmp)
            except OSError as e:
                raise os_error(e, f"creating a folder inside {self.given}") from e
            self._tmp = tmp
        if self._tmp is None:
            parent = self.real.parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
                tmp = parent / f".{self.real.name}.ckpt-export-{uuid.uuid4().hex[:12]}"
                os.mkdir(tmp)
            except OSError as e:
                raise os_error(e, f"creating a folder beside {self.given}") from e
            self._tmp = tmp
        return self._tmp

    def target(self, rel: str) -> Path:
        """Where to write the new file ``rel`` (its folder exists)."""
        if rel not in self.planned:
            raise RecordError(f"{rel!r} was not planned for {self.given}")
        path = self._fresh() / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, f"writing {self.given / rel}") from e
        return path

    def commit(self) -> None:
        """Link the target's other files into the new folder, then put the new folder in place."""
        tmp = self._fresh()
        if self._in_place:
            self._commit_in_place(tmp)
            return
        try:
            for rel, _, is_dir in self._kept:
                dst = tmp / rel
                if is_dir:
                    dst.mkdir(exist_ok=True)
                else:
                    os.link(self.real / rel, dst, follow_symlinks=False)
            for rel, st, is_dir in reversed(self._kept):
                if is_dir:
                    os.chmod(tmp / rel, stat.S_IMODE(st.st_mode))
            if self._mode is not None:
                os.chmod(tmp, self._mode)
        except OSError as e:
            raise os_error(e, f"linking the other files of {self.given} into the new folder") from e
        cwd = _cwd()
        if self._mode is None:
            try:
                os.rename(tmp, self.real)
            except OSError as e:
                raise os_error(e, f"moving the new folder to {self.given}") from e
            self._tmp = None
            return
        old = self.real.parent / f".{self.real.name}.ckpt-old-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(self.real, old)
        except OSError as e:
            raise os_error(e, f"moving {self.given} aside") from e
        try:
            os.rename(tmp, self.real)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.rename(old, self.real)
            raise os_error(e, f"moving the new folder to {self.given}") from e
        self._tmp = None
        if cwd is not None and inside(cwd, str(self.real)):
            with contextlib.suppress(OSError):
                os.chdir(cwd)  # this process was inside the old folder: step into the new one
        self._clear_old(old)

    def _commit_in_place(self, tmp: Path) -> None:
        """A mount point: superseded files go first, then each new file is renamed in, entry files last."""
        try:
            for rel in self.removed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.real / rel)
            last = {p for p in self.planned if p.endswith(".index.json") or p in ("state.json", "config.json")}
            for rel in [*sorted(self.planned - last), *sorted(last)]:
                if not os.path.lexists(tmp / rel):
                    continue  # planned, not written
                dst = self.real / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / rel, dst)  # a link found at dst is replaced, never written through
        except OSError as e:
            raise os_error(e, f"moving the new files into {self.given}") from e
        _remove_tree(tmp)
        self._tmp = None

    def _clear_old(self, old: Path) -> None:
        """Remove the old folder: what ckpt knew of goes; anything that appeared meanwhile is moved over."""
        for dirpath, dirnames, filenames in os.walk(old, topdown=False):
            rel_dir = os.path.relpath(dirpath, old)
            for name in [*filenames, *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))]:
                path = os.path.join(dirpath, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    if (st.st_dev, st.st_ino) in self._known:
                        os.unlink(path)
                    else:  # created while exporting: keep it
                        rel = os.path.normpath(os.path.join(rel_dir, name))
                        dst = self.real / rel
                        if dst.exists() or dst.is_symlink():
                            dst = dst.with_name(f"{dst.name}.ckpt-conflict-{uuid.uuid4().hex[:8]}")
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        os.rename(path, dst)
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)

    def abort(self) -> None:
        """Remove the new folder; the target stays as it was."""
        if self._tmp is not None:
            _remove_tree(self._tmp)
            self._tmp = None


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def _remove_tree(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(dirpath, name))
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
