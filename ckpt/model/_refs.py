"""Ref records (branches, tags), reflog entries, pruned markers, and the rules for ref names."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ckpt.errors import InvalidNameError
from ckpt.model._types import Digest, Timestamp

__all__ = [
    "BranchRecord",
    "PrunedMarker",
    "ReflogAction",
    "ReflogEntry",
    "TagRecord",
    "check_ref_name",
    "ref_name_problem",
    "ref_name_readable",
]

ReflogAction = Literal["commit", "branch", "delete", "tag", "freeze", "conflict", "sync", "reset"]

_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_BAD_PATH = re.compile(r"[\x00-\x1f\x7f\\]")
_MAX_NAME = 200
#: The longest path component (between slashes) in UTF-8 bytes: file systems refuse more than 255.
_MAX_COMPONENT_BYTES = 200


def check_ref_name(name: str, *, kind: str = "ref") -> str:
    """Check a branch or tag name against Git's check-ref-format rules.

    The rules: not empty, at most 200 characters; valid Unicode (no lone surrogate); no ASCII control
    characters, space, ``~ ^ : ? * [ \\``; no ``..``, ``@{``, ``//``; does not start or end with ``/``, does
    not start with ``-``; no component starts with ``.`` or ends with ``.lock``, or is longer than 200 bytes
    in UTF-8; does not end with ``.``; is not ``@``. A valid name can never reach outside the store's
    ``refs/`` folder, and every valid name can be stored on every backend (file systems, S3).

    Args:
        name: the proposed name.
        kind: ``branch`` or ``tag``, for the message.

    Returns:
        The name, unchanged.

    Raises:
        InvalidNameError: the name breaks a rule; the message says which.

    Example:
        >>> check_ref_name("exp/lr-3e-4")
        'exp/lr-3e-4'
    """
    problem = _name_problem(name)
    if problem:
        raise InvalidNameError(f"invalid {kind} name {name!r}: {problem}")
    return name


def ref_name_readable(name: object) -> bool:
    """Whether a ref of this name can be looked up at all: a looser rule than ``check_ref_name`` (which
    decides what may be created), so that refs made under older rules stay readable, while names that
    cannot be a path inside ``refs/`` (control characters, invalid Unicode, ``..``) are never looked up."""
    if not isinstance(name, str) or not name or len(name) > 4 * _MAX_NAME or _BAD_PATH.search(name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def ref_name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid branch or tag name, or ``None`` when it is (see ``check_ref_name``)."""
    return _name_problem(name)


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if len(name) > _MAX_NAME:
        return f"it is longer than {_MAX_NAME} characters"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode (it holds a lone surrogate)"
    if name == "@":
        return "'@' alone is reserved"
    m = _BAD_CHARS.search(name)
    if m:
        return f"it contains the character {m.group()!r} (no control characters, spaces or ~^:?*[\\)"
    if ".." in name:
        return "it contains '..'"
    if "@{" in name:
        return "it contains '@{'"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "it starts or ends with '/' or contains '//'"
    if name.startswith("-"):
        return "it starts with '-'"
    if name.endswith("."):
        return "it ends with '.'"
    for part in name.split("/"):
        if part.startswith("."):
            return f"the component {part!r} starts with '.'"
        if part.endswith(".lock"):
            return f"the component {part!r} ends with '.lock'"
        if len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES:
            return f"the component {part[:20]!r}… is longer than {_MAX_COMPONENT_BYTES} bytes in UTF-8"
    return None


class BranchRecord(BaseModel):
    """The content of ``refs/heads/<name>``: the snapshot the branch points at."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Digest


class TagRecord(BaseModel):
    """The content of ``refs/tags/<name>``.

    Attributes:
        id: the tagged snapshot.
        frozen: a frozen tag is a published release: it never moves, is never deleted, and its snapshot is
            never pruned.
        created_at: when the tag was made.
        message: optional note.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Digest
    frozen: bool = False
    created_at: Timestamp
    message: str | None = None


class ReflogEntry(BaseModel):
    """One move of a ref, stored append-only under ``logs/``.

    Attributes:
        ref: the full ref path, e.g. ``refs/heads/main``.
        old: the id before the move (``None``: the ref was created).
        new: the id after the move (``None``: the ref was deleted).
        action: what moved it; ``conflict`` records a snapshot whose ref move lost a race.
        time: when, ISO 8601 UTC.
        message: free text.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref: str = Field(pattern=r"^refs/(heads|tags)/")
    old: Digest | None
    new: Digest | None
    action: ReflogAction
    time: Timestamp
    message: str | None = None


class PrunedMarker(BaseModel):
    """The content of ``pruned/<id>.json``: the snapshot's tensors were released, its record stays."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pruned_at: Timestamp
    reason: str | None = None
