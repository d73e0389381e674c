"""Branches, tags and the reflog.

A branch moves by compare-and-swap against the id its writer started from; a tag is created once with
put-if-absent and never moves. Every move appends a reflog entry (its own object, so appending needs no
read-modify-write on object stores), including a ``conflict`` entry for a snapshot whose move lost a race.
"""

from __future__ import annotations

import os
import time
from typing import TypeVar

from pydantic import BaseModel

from ckpt.errors import (
    FrozenRefError,
    MissingObjectError,
    RecordError,
    RefConflictError,
    RefExistsError,
    RevisionNotFoundError,
)
from ckpt.model import (
    BranchRecord,
    ReflogEntry,
    TagRecord,
    canonical_json,
    check_ref_name,
    format_time,
    parse_record,
    ref_name_readable,
    utcnow,
)
from ckpt.model.refs import ReflogAction
from ckpt.storage import Backend
from ckpt.store import layout

__all__ = ["Refs", "branch_bytes"]

_R = TypeVar("_R", bound=BaseModel)
_REF_HINT = (
    "a ref file was damaged or written by something else; `ckpt reflog` lists where each ref pointed, and "
    "`ckpt verify` checks the rest of the store"
)


def branch_bytes(snapshot_id: str) -> bytes:
    """The exact content of a branch ref pointing at ``snapshot_id``."""
    return canonical_json(BranchRecord(id=snapshot_id).model_dump(mode="json"))


class Refs:
    """The refs of one store.

    Args:
        backend: the store's backend.
    """

    def __init__(self, backend: Backend, *, minor_newer: bool = False) -> None:
        self.backend = backend
        self.minor_newer = minor_newer

    def _parse(self, model: type[_R], raw: bytes, what: str) -> _R:
        return parse_record(model, raw, what=what, minor_newer=self.minor_newer, hint=_REF_HINT)

    # -- reading ---------------------------------------------------------------------------------------

    def branches(self) -> dict[str, str]:
        """Branch name → snapshot id, sorted by name."""
        out = {}
        for entry in self.backend.list(layout.REFS_HEADS):
            name = entry.path[len(layout.REFS_HEADS) :]
            head = self.branch_head(name)
            if head is not None:
                out[name] = head
        return dict(sorted(out.items()))

    def tags(self) -> dict[str, TagRecord]:
        """Tag name → tag record, sorted by name."""
        out = {}
        for entry in self.backend.list(layout.REFS_TAGS):
            name = entry.path[len(layout.REFS_TAGS) :]
            tag = self.tag(name)
            if tag is not None:
                out[name] = tag
        return dict(sorted(out.items()))

    def branch_head(self, name: str) -> str | None:
        """The id a branch points at, or ``None`` if there is no such branch (or ``name`` cannot be one)."""
        if not ref_name_readable(name):
            return None
        raw = self._read(layout.branch_path(name))
        if raw is None:
            return None
        return self._parse(BranchRecord, raw, f"branch {name!r}").id

    def tag(self, name: str) -> TagRecord | None:
        """A tag's record, or ``None`` if there is no such tag (or ``name`` cannot be one)."""
        if not ref_name_readable(name):
            return None
        raw = self._read(layout.tag_path(name))
        if raw is None:
            return None
        return self._parse(TagRecord, raw, f"tag {name!r}")

    def _read(self, path: str) -> bytes | None:
        if "/" in path and not self._safe(path):
            return None
        try:
            return self.backend.read(path) if self.backend.exists(path) else None
        except (FileNotFoundError, MissingObjectError):  # deleted between the two calls
            return None

    @staticmethod
    def _safe(path: str) -> bool:
        return ".." not in path.split("/")

    # -- moving ----------------------------------------------------------------------------------------

    def check_new_name(self, name: str, kind: str) -> None:
        """Refuse a name that is taken by a branch or tag, or that nests with one (``a`` vs ``a/b``)."""
        check_ref_name(name, kind=kind)
        taken = {**{n: "branch" for n in self.branches()}, **{n: "tag" for n in self.tags()}}
        for other, other_kind in taken.items():
            if other == name:
                raise RefExistsError(f"a {other_kind} named {name!r} exists already")
            if other.startswith(name + "/") or name.startswith(other + "/"):
                raise RefExistsError(f"{kind} {name!r} would clash with the {other_kind} {other!r}")

    def move_branch(
        self,
        name: str,
        expected: str | None,
        new: str | None,
        *,
        action: ReflogAction,
        message: str | None = None,
    ) -> None:
        """Move (or create, or delete) a branch by compare-and-swap, then record the move in the reflog.

        Raises:
            RefConflictError: the branch does not point at ``expected``; the attempted snapshot is recorded
                in the reflog as a ``conflict`` so that it is never lost.
        """
        ref = layout.branch_path(name)
        result = self.backend.compare_and_swap(
            ref,
            None if expected is None else branch_bytes(expected),
            None if new is None else branch_bytes(new),
        )
        if not result.ok:
            actual = None
            if result.current is not None:
                try:
                    actual = self._parse(BranchRecord, result.current, ref).id
                except RecordError:
                    actual = "<unreadable>"
            if new is not None:
                self.append_reflog(ref, actual, new, "conflict", message)
            raise RefConflictError(
                f"branch {name!r} moved: expected it at {_short(expected)}, found it at {_short(actual)}"
                + (f"; snapshot {_short(new)} was saved but the branch was not moved" if new else ""),
                ref=ref,
                expected=expected,
                actual=actual,
                snapshot=new,
            )
        self.append_reflog(ref, expected, new, action, message)

    def create_tag(self, name: str, record: TagRecord, *, action: ReflogAction = "tag") -> None:
        """Create a tag; tags never move.

        Raises:
            RefExistsError: the tag exists.
        """
        ref = layout.tag_path(name)
        data = canonical_json(record.model_dump(mode="json"))
        if not self.backend.put_if_absent(ref, data):
            raise RefExistsError(f"tag {name!r} exists already", hint="tags never move; choose another name")
        self.append_reflog(ref, None, record.id, action, record.message)

    def delete_tag(self, name: str) -> None:
        """Delete a tag that is not frozen.

        Raises:
            FrozenRefError: the tag is frozen.
            RevisionNotFoundError: no such tag.
        """
        tag = self.tag(name)
        if tag is None:
            raise RevisionNotFoundError(f"no tag named {name!r}")
        if tag.frozen:
            raise FrozenRefError(f"tag {name!r} is frozen: it can never be deleted")
        ref = layout.tag_path(name)
        data = canonical_json(tag.model_dump(mode="json"))
        if self.backend.compare_and_swap(ref, data, None).ok:
            self.append_reflog(ref, tag.id, None, "delete", None)

    # -- reflog ----------------------------------------------------------------------------------------

    def append_reflog(
        self, ref: str, old: str | None, new: str | None, action: ReflogAction, message: str | None
    ) -> None:
        """Append one entry to a ref's reflog (a new object named by time and a random suffix)."""
        entry = ReflogEntry(ref=ref, old=old, new=new, action=action, time=format_time(utcnow()), message=message)
        name = f"{time.time_ns():020d}-{os.urandom(4).hex()}.json"
        self.backend.put_if_absent(layout.reflog_prefix(ref) + name, canonical_json(entry.model_dump(mode="json")))

    def reflog(self, ref: str | None = None) -> list[ReflogEntry]:
        """Reflog entries, oldest first: of one ref (e.g. ``refs/heads/main``), or of every ref."""
        if ref is not None and not _is_ref(ref):
            return []
        prefix = layout.reflog_prefix(ref) if ref else layout.LOGS
        entries = sorted(self.backend.list(prefix), key=lambda e: e.path.rsplit("/", 1)[-1])
        out = []
        for e in entries:
            try:
                entry = self._parse(ReflogEntry, self.backend.read(e.path), e.path)
            except RecordError:
                continue  # a damaged reflog entry never blocks anything
            if ref is None or entry.ref == ref:
                out.append(entry)
        return out


def _is_ref(ref: str) -> bool:
    """Whether ``ref`` is ``refs/heads/NAME`` or ``refs/tags/NAME`` with a valid name."""
    for prefix in (layout.REFS_HEADS, layout.REFS_TAGS):
        if isinstance(ref, str) and ref.startswith(prefix):
            return ref_name_readable(ref[len(prefix) :])
    return False


def _short(snapshot_id: str | None) -> str:
    return snapshot_id[:12] if snapshot_id else "nothing"
