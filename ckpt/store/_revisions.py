"""Revisions: how people name snapshots (``main``, ``main~2``, ``v1^``, ``tiny-llama-2026-11-28``, ``3f9a``).

Grammar: ``BASE SUFFIX*`` where BASE is a branch, a tag, a full id or a unique id prefix of at least 4 hex
characters (looked up in that order), or ``BRANCH@{N}`` (where the branch pointed N moves ago, from its reflog:
``main@{1}`` is main before its last commit, reset or deletion), and each SUFFIX is ``~N`` (N-th first-parent
ancestor; ``~`` alone is ``~1``) or ``^N`` (N-th parent; ``^`` alone is ``^1``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

from ckpt.errors import AmbiguousRevisionError, RevisionNotFoundError
from ckpt.model import ReflogEntry, Snapshot, is_digest, ref_name_readable
from ckpt.store._layout import REFS_HEADS, REFS_TAGS

__all__ = ["MAX_REVISION", "MIN_PREFIX", "ParsedRevision", "parse_revision"]

MIN_PREFIX = 4
#: The longest revision text accepted (a 200-character name with a few suffixes fits many times over).
MAX_REVISION = 1024
_MAX_COUNT_DIGITS = 9  # ~N, ^N and @{N} take at most 999,999,999
_SUFFIX = re.compile(r"(~|\^)([0-9]*)", re.ASCII)
_HEX = re.compile(r"^[0-9a-f]+$")
_REFLOG = re.compile(r"^(?P<name>.+)@\{(?P<n>[0-9]+)\}$", re.ASCII | re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXAMPLES = "examples: main, main~2, v1^, main@{1}, 3f9a"


@dataclass(frozen=True)
class ParsedRevision:
    """A revision split into its base and its ancestry steps.

    Attributes:
        base: the branch, tag or id part.
        steps: ``("~", n)`` or ``("^", n)`` pairs, applied left to right.
        reflog: N of ``BRANCH@{N}`` (``base`` is then the branch), else ``None``.
    """

    base: str
    steps: tuple[tuple[str, int], ...]
    reflog: int | None = None


def parse_revision(rev: str) -> ParsedRevision:
    """Split ``main~2^`` into ``ParsedRevision("main", (("~", 2), ("^", 1)))``.

    Raises:
        RevisionNotFoundError: the text is not a revision.

    Example:
        >>> parse_revision("main~2^")
        ParsedRevision(base='main', steps=(('~', 2), ('^', 1)))
    """
    if not isinstance(rev, str):
        raise RevisionNotFoundError(f"a revision is a string, not a {type(rev).__name__}", hint=_EXAMPLES)
    if not rev.strip():
        raise RevisionNotFoundError("empty revision", hint=_EXAMPLES)
    shown = _show(rev)
    if len(rev) > MAX_REVISION:
        raise RevisionNotFoundError(f"revision {shown} is longer than {MAX_REVISION} characters", hint=_EXAMPLES)
    if _CONTROL.search(rev) or not _is_unicode(rev):
        raise RevisionNotFoundError(
            f"revision {shown} holds a control character or invalid Unicode; no name or id can", hint=_EXAMPLES
        )
    cut = min((i for i in (rev.find("~"), rev.find("^")) if i >= 0), default=len(rev))
    base, rest = rev[:cut], rev[cut:]
    steps = []
    pos = 0
    while pos < len(rest):
        m = _SUFFIX.match(rest, pos)
        if not m:
            raise RevisionNotFoundError(f"cannot parse revision {shown}", hint=_EXAMPLES)
        steps.append((m.group(1), _count(m.group(2), rev) if m.group(2) else 1))
        pos = m.end()
    if not base:
        raise RevisionNotFoundError(f"revision {shown} has no branch, tag or id before its suffix", hint=_EXAMPLES)
    m = _REFLOG.match(base)
    if m:
        name = m.group("name")
        if not ref_name_readable(name):
            raise RevisionNotFoundError(f"revision {shown}: {_show(name)} cannot be a branch name")
        return ParsedRevision(name, tuple(steps), reflog=_count(m.group("n"), rev))
    return ParsedRevision(base, tuple(steps))


def _count(digits: str, rev: str) -> int:
    if len(digits) > _MAX_COUNT_DIGITS:
        raise RevisionNotFoundError(f"revision {_show(rev)}: the count {digits[:12]}… is too large", hint=_EXAMPLES)
    return int(digits)


def _show(text: str, limit: int = 80) -> str:
    """``text`` quoted for a message: escaped, and cut when long (a revision can come from anywhere)."""
    shown = repr(text if len(text) <= limit else text[:limit] + "…")
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve_reflog(branch: str, n: int, entries: list[ReflogEntry]) -> str:
    """``BRANCH@{N}``: the id the branch pointed at N moves before its latest (``@{0}``: after its latest move).

    Args:
        branch: the branch name.
        n: how many moves back.
        entries: the branch's reflog, oldest first.

    Raises:
        RevisionNotFoundError: the reflog is shorter, or the branch did not exist at that point.
    """
    if not entries:
        raise RevisionNotFoundError(
            f"no reflog for branch {branch!r}",
            hint="`store.reflog()` lists every ref move",
            cli_hint="`ckpt reflog` lists every ref move",
        )
    if n >= len(entries):
        raise RevisionNotFoundError(
            f"{branch}@{{{n}}}: the reflog of {branch!r} has only {len(entries)} entries",
            hint=f"{branch}@{{0}} to {branch}@{{{len(entries) - 1}}}; `store.reflog()` lists them",
            cli_hint=f"{branch}@{{0}} to {branch}@{{{len(entries) - 1}}}; `ckpt reflog {branch}` lists them",
        )
    entry = entries[len(entries) - 1 - n]
    if entry.new is None:
        raise RevisionNotFoundError(
            f"{branch}@{{{n}}}: the branch had just been deleted ({entry.time}); try {branch}@{{{n + 1}}}"
        )
    return entry.new


def resolve_base(
    base: str,
    *,
    branch: Callable[[str], str | None],
    tag: Callable[[str], str | None],
    has_snapshot: Callable[[str], bool],
    ids_with_prefix: Callable[[str], list[str]],
    names: Callable[[], list[str]],
) -> str:
    """Resolve the base of a revision to a snapshot id.

    Raises:
        RevisionNotFoundError: nothing matches; the message suggests close names.
        AmbiguousRevisionError: an id prefix matches several snapshots; all are listed.
    """
    for prefix, lookup, kind in ((REFS_HEADS, branch, "branch"), (REFS_TAGS, tag, "tag")):
        if base.startswith(prefix) and ref_name_readable(base[len(prefix) :]):  # a qualified name: one kind only
            found_ref = lookup(base[len(prefix) :])
            if found_ref is None:
                raise RevisionNotFoundError(f"no {kind} named {_show(base[len(prefix) :])}")
            return found_ref
    if ref_name_readable(base):  # only what can be a ref's name is looked up as one
        head, tagged = branch(base), tag(base)
        if head is not None and tagged is not None and head != tagged:
            raise AmbiguousRevisionError(
                f"{_show(base)} is both a branch (at {head[:12]}) and a tag (at {tagged[:12]})",
                candidates=[head, tagged],
                hint=f"use refs/heads/{base} for the branch or refs/tags/{base} for the tag, and rename one of them",
            )
        named = head if head is not None else tagged
        if named is not None:
            low = base.lower()
            if len(low) >= MIN_PREFIX and _HEX.match(low):  # a ref named like an id (made before names were checked)
                ids = sorted(i for i in ids_with_prefix(low) if i != named)
                if ids:
                    kind = "branch" if head is not None else "tag"
                    raise AmbiguousRevisionError(
                        f"{_show(base)} is both a {kind} (at {named[:12]}) and the id (prefix) of snapshot "
                        f"{ids[0][:12]}",
                        candidates=[named, *ids],
                        hint=f"use refs/{'heads' if head is not None else 'tags'}/{base} for the {kind}, or more "
                        "characters of the id; and rename the ref",
                    )
            return named
    low = base.lower()
    if is_digest(low) and has_snapshot(low):
        return low
    if len(low) >= MIN_PREFIX and _HEX.match(low):
        found = sorted(ids_with_prefix(low))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise AmbiguousRevisionError(
                f"id prefix {_show(base)} matches {len(found)} snapshots: " + ", ".join(f[:12] for f in found[:10]),
                candidates=found,
            )
    close = difflib.get_close_matches(base, names(), n=3) if len(base) <= 200 else []
    hint = f"did you mean {', '.join(close)}?" if close else None
    if _HEX.match(low) and len(low) < MIN_PREFIX:
        short = f"an id prefix needs at least {MIN_PREFIX} hex digits: give more of the id"
        hint = f"{short}, or did you mean {', '.join(close)}?" if close else short
    raise RevisionNotFoundError(f"no branch, tag or snapshot matches {_show(base)}", hint=hint)


def walk_steps(
    snap: Snapshot, steps: tuple[tuple[str, int], ...], get: Callable[[str], Snapshot], rev: str
) -> Snapshot:
    """Apply ``~N`` and ``^N`` steps to a snapshot.

    Raises:
        RevisionNotFoundError: history is shorter than asked.
    """
    for kind, n in steps:
        if kind == "~":
            for _ in range(n):
                if not snap.parents:
                    raise RevisionNotFoundError(f"{rev!r} goes past the first snapshot of its history")
                snap = get(snap.parents[0])
        else:
            if n == 0:
                continue
            if len(snap.parents) < n:
                raise RevisionNotFoundError(f"{rev!r}: snapshot {snap.short_id} has no parent number {n}")
            snap = get(snap.parents[n - 1])
    return snap
