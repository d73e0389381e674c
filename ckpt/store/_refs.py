"""Branches, tags and the reflog.

A branch moves by compare-and-swap against the id its writer started from; a tag is created once with
put-if-absent and never moves. The swap alone decides: no listing done before it ever refuses a move that the
swap would allow, so two writers racing get the documented error (``RefConflictError`` for a branch,
``RefExistsError`` for a new tag or branch name) from the swap itself.

Every move appends a reflog entry (its own object, so appending needs no read-modify-write on object stores),
including a ``conflict`` entry for a snapshot whose move lost a race. The swap is the commit point: a reflog
entry that cannot be written after it is a warning, not an error (the move happened; ``verify`` reports the
ref whose latest move is not in its reflog, and ``repair`` writes the entry back).
"""

from __future__ import annotations

import os
import re
import time
import warnings
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from ckpt.errors import (
    BackendError,
    CkptError,
    FrozenRefError,
    Hint,
    InvalidNameError,
    MissingObjectError,
    RecordError,
    RefConflictError,
    RefExistsError,
    RevisionNotFoundError,
)
from ckpt.model import (
    BranchRecord,
    ReflogAction,
    ReflogEntry,
    TagRecord,
    canonical_json,
    check_ref_name,
    format_time,
    is_digest,
    parse_record,
    parse_time,
    ref_name_readable,
    utcnow,
)
from ckpt.storage import Backend
from ckpt.store import _layout as layout

#: a name of this many hex digits or more reads as a snapshot id (prefix): refused for branches and tags
_ID_LIKE_MIN = 7
_ID_LIKE = re.compile(rf"[0-9a-fA-F]{{{_ID_LIKE_MIN},}}")

__all__ = ["RefDamage", "Refs", "branch_bytes"]

_R = TypeVar("_R", bound=BaseModel)
_REF_HINT = Hint(
    "a ref file was damaged or written by something else; store.reflog() lists where each ref pointed, and "
    "store.verify() checks the rest of the store",
    cli="a ref file was damaged or written by something else; `ckpt reflog` lists where each ref pointed, and "
    "`ckpt verify` checks the rest of the store",
)


class RefDamage(BaseModel):
    """A ref, reflog entry or pruned marker that cannot be read.

    Attributes:
        path: the object's path in the store (``refs/heads/main``, ``logs/refs/heads/main/….json`` …).
        message: what is wrong with it (never its content).
    """

    model_config = ConfigDict(frozen=True)

    path: str
    message: str


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
        """Parse a ref record or reflog entry; every failure is a ``RecordError`` that never quotes the bytes."""
        record = parse_record(model, raw, what=what, minor_newer=self.minor_newer, hint=_REF_HINT)
        for field in ("id", "old", "new"):
            value = getattr(record, field, None)
            if value is not None and not is_digest(value):
                raise RecordError(f"{what} is invalid: its {field} is not a snapshot id", hint=_REF_HINT)
        if isinstance(record, ReflogEntry):
            try:
                parse_time(record.time)
            except ValueError:
                raise RecordError(f"{what} is invalid: its time is not a stored time", hint=_REF_HINT) from None
        return record

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
        """The id a branch points at, or ``None`` if there is no such branch (or ``name`` cannot be one).

        Raises:
            RecordError: the branch's file is damaged.
        """
        if not ref_name_readable(name):
            return None
        raw = self._read(layout.branch_path(name))
        if raw is None:
            return None
        return self._parse(BranchRecord, raw, f"branch {name!r}").id

    def tag(self, name: str) -> TagRecord | None:
        """A tag's record, or ``None`` if there is no such tag (or ``name`` cannot be one).

        Raises:
            RecordError: the tag's file is damaged.
        """
        if not ref_name_readable(name):
            return None
        raw = self._read(layout.tag_path(name))
        if raw is None:
            return None
        return self._parse(TagRecord, raw, f"tag {name!r}")

    def scan(self) -> tuple[dict[str, str], dict[str, TagRecord], list[RefDamage]]:
        """Every branch and tag that can be read, and the damage of those that cannot (for verify and gc)."""
        branches: dict[str, str] = {}
        tags: dict[str, TagRecord] = {}
        damage: list[RefDamage] = []
        for folder, kind in ((layout.REFS_HEADS, "branch"), (layout.REFS_TAGS, "tag")):
            for entry in self.backend.list(folder):
                name = entry.path[len(folder) :]
                try:
                    if kind == "branch":
                        head = self.branch_head(name)
                        if head is not None:
                            branches[name] = head
                    else:
                        tag = self.tag(name)
                        if tag is not None:
                            tags[name] = tag
                except CkptError as e:
                    damage.append(RefDamage(path=entry.path, message=e.message))
        return dict(sorted(branches.items())), dict(sorted(tags.items())), damage

    def _read(self, path: str) -> bytes | None:
        if "/" in path and not self._safe(path):
            return None
        try:
            return self.backend.read(path)  # one request: a missing ref is the read's own answer, no check first
        except (FileNotFoundError, MissingObjectError):
            return None
        except CkptError:
            if not self.backend.exists(path):  # not an object at all (a folder of nested names on a local disk)
                return None
            raise

    @staticmethod
    def _safe(path: str) -> bool:
        return ".." not in path.split("/")

    # -- moving ----------------------------------------------------------------------------------------

    def check_new_name(self, name: str, kind: str, *, same_branch_ok: bool = False) -> None:
        """Refuse a name that is taken by a branch or tag, or that nests with one (``a`` vs ``a/b``).

        This is a check on names, not a lock: the swap that creates the ref decides between writers racing for
        the same name. With ``same_branch_ok`` a branch of exactly this name is let through (the caller's swap,
        expecting no branch, then fails with ``RefConflictError``), so the error a racing writer gets never
        depends on whether its listing came before or after the other's swap.
        """
        check_ref_name(name, kind=kind)
        if _ID_LIKE.fullmatch(name):
            raise InvalidNameError(
                f"invalid {kind} name {name!r}: it reads as a snapshot id (hex digits only, {_ID_LIKE_MIN} or more), "
                "so a revision naming it would be ambiguous",
                hint="add a letter outside a-f or a separator, e.g. 'run-" + name[:8] + "'",
            )
        if name.startswith("refs/"):
            raise InvalidNameError(
                f"invalid {kind} name {name!r}: refs/heads/NAME and refs/tags/NAME are how a revision names a "
                "branch or a tag explicitly",
                hint="choose a name that does not start with refs/",
            )
        clash = self._clash(name, kind, same_ok=same_branch_ok and kind == "branch")
        if clash:
            raise RefExistsError(clash)

    def _clash(self, name: str, kind: str, *, same_ok: bool) -> str | None:
        """What a ref ``name`` of ``kind`` would clash with: a ref of the other kind of the same name (or one of
        the same kind unless ``same_ok``), or one that nests with it (``a`` vs ``a/b``)."""
        for other, other_kind in [*((n, "branch") for n in self.branches()), *((n, "tag") for n in self.tags())]:
            if other == name:
                if same_ok and other_kind == kind:
                    continue
                return f"a {other_kind} named {name!r} exists already"
            if other.startswith(name + "/") or name.startswith(other + "/"):
                return f"{kind} {name!r} would clash with the {other_kind} {other!r}"
        return None

    def _undo_if_clashing(self, name: str, kind: str, ref: str, data: bytes) -> str | None:
        """Right after creating ``ref`` (holding ``data``): if a clashing ref appeared meanwhile (another writer
        passed the same name check at the same time), delete ours again. Returns the clash, or ``None``.

        Of two writers racing for one name, at most one ref stays: each looks after its own swap, so the later
        one always sees the earlier (both may give up; then both are told so and may retry).
        """
        clash = self._clash(name, kind, same_ok=True)
        if clash is None:
            return None
        if not self.backend.compare_and_swap(ref, data, None).ok:  # already changed by someone else: it stands
            return None
        return clash

    def move_branch(
        self,
        name: str,
        expected: str | None,
        new: str | None,
        *,
        action: ReflogAction,
        message: str | None = None,
        create: bool = False,
    ) -> None:
        """Move (or create, or delete) a branch by compare-and-swap, then record the move in the reflog.

        The swap is the commit point. If the backend fails without saying whether the swap happened (a reply
        lost on its way back), the branch is read again: found at ``new``, the move counts as done. After the
        swap nothing raises: a reflog entry that cannot be written is a warning.

        Args:
            name: the branch.
            expected: the id it must point at now (``None``: it must not exist).
            new: the id to point it at (``None``: delete it).
            action: what the reflog records.
            message: the reflog entry's note.
            create: a branch being created from an existing snapshot (``branch()``): if one of that name
                exists, raise ``RefExistsError`` and record no conflict.

        Raises:
            RefConflictError: the branch does not point at ``expected``; the attempted snapshot is recorded
                in the reflog as a ``conflict`` so that it is never lost.
            RefExistsError: with ``create``, a branch of that name exists.
        """
        ref = layout.branch_path(name)
        want = None if new is None else branch_bytes(new)
        try:
            result = self.backend.compare_and_swap(ref, None if expected is None else branch_bytes(expected), want)
        except BackendError:
            try:
                landed = self._read(ref) == want
            except CkptError:
                landed = False
            if not landed:
                raise
            warnings.warn(
                f"ckpt: the store failed while moving branch {name!r}, but the move happened: "
                f"it points at {_short(new)}",
                stacklevel=3,
            )
            result = None
        if result is not None and not result.ok:
            actual = None
            if result.current is not None:
                try:
                    actual = self._parse(BranchRecord, result.current, ref).id
                except RecordError:
                    actual = "<unreadable>"
            if create and expected is None and result.current is not None:
                raise RefExistsError(f"a branch named {name!r} exists already")
            if new is not None:
                self._append_after_commit(ref, actual, new, "conflict", message)
            raise RefConflictError(
                f"branch {name!r} moved: expected it at {_short(expected)}, found it at {_short(actual)}"
                + (f"; snapshot {_short(new)} was saved but the branch was not moved" if new else ""),
                ref=ref,
                expected=expected,
                actual=actual,
                snapshot=new,
                hint=(
                    f"nothing was lost: snapshot {_short(new)} is stored and in the reflog; branch off it "
                    f"(store.branch(name, at={_short(new)!r})) or reload the branch and save again"
                )
                if new
                else None,
            )
        if expected is None and want is not None:
            clash = self._undo_if_clashing(name, "branch", ref, want)
            if clash is not None:
                if not create:  # a save's snapshot: kept in the reflog, never lost
                    self._append_after_commit(ref, None, new, "conflict", message)
                raise RefExistsError(
                    f"{clash} (another writer created it at the same time); branch {name!r} was not created"
                    + (f", snapshot {_short(new)} is stored and in its reflog" if not create else ""),
                    hint="choose another name, or look at the other ref with store.resolve()",
                )
        self._append_after_commit(ref, expected, new, action, message)

    def _append_after_commit(
        self, ref: str, old: str | None, new: str | None, action: ReflogAction, message: str | None
    ) -> None:
        """Append a reflog entry after the ref moved: a failure is a warning, never an error (the move is done)."""
        try:
            self.append_reflog(ref, old, new, action, message)
        except CkptError as e:
            warnings.warn(
                f"ckpt: {ref} moved to {_short(new)}, but its reflog entry could not be written ({e}); "
                "the move is done and stands: do not retry it. `ckpt verify` reports the missing entry and "
                "`ckpt repair` writes it back",
                stacklevel=4,
            )

    def create_tag(self, name: str, record: TagRecord, *, action: ReflogAction = "tag") -> None:
        """Create a tag; tags never move.

        Raises:
            RefExistsError: the tag exists.
        """
        ref = layout.tag_path(name)
        data = canonical_json(record.model_dump(mode="json"))
        if not self.backend.put_if_absent(ref, data):
            raise RefExistsError(f"tag {name!r} exists already", hint="tags never move; choose another name")
        clash = self._undo_if_clashing(name, "tag", ref, data)
        if clash is not None:
            raise RefExistsError(
                f"{clash} (another writer created it at the same time); tag {name!r} was not created",
                hint="choose another name, or look at the other ref with store.resolve()",
            )
        self._append_after_commit(ref, None, record.id, action, record.message)

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
        data = self._read(ref)
        if data is None:
            raise RevisionNotFoundError(f"no tag named {name!r}")
        result = self.backend.compare_and_swap(ref, data, None)
        if not result.ok:
            if result.current is None:
                raise RevisionNotFoundError(f"no tag named {name!r} (another writer deleted it)")
            raise RefConflictError(
                f"tag {name!r} changed while it was being deleted",
                ref=ref,
                expected=tag.id,
                actual=None,
                hint="tags never move: check the store with store.verify(), then look at store.reflog()",
                cli_hint="tags never move: run `ckpt verify`, then look at `ckpt show` and `ckpt reflog`",
            )
        self._append_after_commit(ref, tag.id, None, "delete", None)

    # -- reflog ----------------------------------------------------------------------------------------

    def append_reflog(
        self, ref: str, old: str | None, new: str | None, action: ReflogAction, message: str | None
    ) -> None:
        """Append one entry to a ref's reflog (a new object named by time and a random suffix)."""
        entry = ReflogEntry(ref=ref, old=old, new=new, action=action, time=format_time(utcnow()), message=message)
        name = f"{time.time_ns():020d}-{os.urandom(4).hex()}.json"
        self.backend.put_if_absent(layout.reflog_prefix(ref) + name, canonical_json(entry.model_dump(mode="json")))

    def reflog(self, ref: str | None = None) -> list[ReflogEntry]:
        """Reflog entries, oldest first: of one ref (e.g. ``refs/heads/main``), or of every ref.

        Damaged entries are left out here (``scan_reflog`` reports them; ``verify`` and ``gc`` use it).
        """
        return self.scan_reflog(ref)[0]

    def scan_reflog(self, ref: str | None = None) -> tuple[list[ReflogEntry], list[RefDamage]]:
        """Reflog entries that can be read, oldest first, and the damage of those that cannot.

        An entry is damaged when it is not a valid record, its time cannot be parsed, an id in it is not a
        snapshot id, or it sits in another ref's folder than the ref it names.
        """
        if ref is not None and not _is_ref(ref):
            return [], []
        prefix = layout.reflog_prefix(ref) if ref else layout.LOGS
        listed = sorted(self.backend.list(prefix), key=lambda e: e.path.rsplit("/", 1)[-1])
        out = []
        damage = []
        for e in listed:
            try:
                entry = self._parse(ReflogEntry, self.backend.read(e.path), f"reflog entry {e.path}")
                if layout.reflog_prefix(entry.ref) + e.path.rsplit("/", 1)[-1] != e.path:
                    raise RecordError(f"reflog entry {e.path} is invalid: it names another ref")
            except MissingObjectError:
                continue  # removed between the listing and the read
            except CkptError as e2:
                damage.append(RefDamage(path=e.path, message=str(e2)))
                continue
            if ref is None or entry.ref == ref:
                out.append(entry)
        return out, damage


def _is_ref(ref: str) -> bool:
    """Whether ``ref`` is ``refs/heads/NAME`` or ``refs/tags/NAME`` with a valid name."""
    for prefix in (layout.REFS_HEADS, layout.REFS_TAGS):
        if isinstance(ref, str) and ref.startswith(prefix):
            return ref_name_readable(ref[len(prefix) :])
    return False


def _short(snapshot_id: str | None) -> str:
    return snapshot_id[:12] if snapshot_id else "nothing"
