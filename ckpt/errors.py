"""The exception hierarchy of ckpt.

Every failure a user can meet is one of these, with a message that says what happened and, where there is
one, a ``hint`` that says what to do. The command line prints ``error: <message>`` and the hint, and exits
with the class's ``exit_code``.

```
CkptError                                  exit_code 1, .hint: str | None
├── StoreError
│   ├── StoreNotFoundError(FileNotFoundError)     hint: run `ckpt init`
│   ├── StoreExistsError(FileExistsError)
│   ├── FormatVersionError                         store written by a newer ckpt
│   └── BackendError(OSError)                      wraps fsspec/S3 failures, keeps __cause__
├── RevisionError(LookupError)
│   ├── RevisionNotFoundError
│   └── AmbiguousRevisionError                     lists candidates
├── RefError
│   ├── RefConflictError                           CAS lost: names expected and actual snapshot
│   ├── FrozenRefError                             frozen tags never move
│   ├── RefExistsError(FileExistsError)
│   └── InvalidNameError(ValueError)               bad branch/tag name
├── IntegrityError
│   ├── CorruptChunkError                          digest mismatch: names tensor and snapshot
│   ├── MissingObjectError                         pruned or GC'd object
│   └── SignatureError                             a release is not signed as required, or cannot be signed
├── RecordError(ValueError)                        invalid record; wraps pydantic ValidationError
└── StateError
    ├── UnsupportedStateError(TypeError)           leaf cannot be stored (never pickled)
    └── StateMismatchError                         missing/unexpected keys, shape/dtype mismatch
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

__all__ = [
    "AmbiguousRevisionError",
    "BackendError",
    "CkptError",
    "CorruptChunkError",
    "FormatVersionError",
    "FrozenRefError",
    "IntegrityError",
    "InvalidNameError",
    "MissingObjectError",
    "RecordError",
    "RefConflictError",
    "RefError",
    "RefExistsError",
    "RevisionError",
    "RevisionNotFoundError",
    "SignatureError",
    "StateError",
    "StateMismatchError",
    "StoreError",
    "StoreExistsError",
    "StoreNotFoundError",
    "UnsupportedStateError",
]


class CkptError(Exception):
    """Root of every error ckpt raises on purpose.

    Args:
        message: what went wrong, as one sentence.
        hint: what the user can do about it, or ``None``.

    Example:
        >>> try:
        ...     raise CkptError("something broke", hint="try again")
        ... except CkptError as e:
        ...     print(e, "/", e.hint)
        something broke / try again
    """

    exit_code: ClassVar[int] = 1
    default_hint: ClassVar[str | None] = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class StoreError(CkptError):
    """The store as a whole cannot be used: missing, exists already, too new, or its backend failed."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No ckpt store at the given location."""

    default_hint = "create one with `ckpt init [URL]` or `ckpt.init(url)`, or point CKPT_STORE at an existing one"


class StoreExistsError(StoreError, FileExistsError):
    """``init`` was asked to create a store where one exists already."""

    default_hint = "open it with `ckpt.open(url)` instead"


class FormatVersionError(StoreError):
    """The store was written in a format this version of ckpt cannot read."""

    default_hint = "upgrade ckpt: pip install -U ckpt"


class BackendError(StoreError, OSError):
    """The storage backend (local disk, S3, …) failed; the original exception is kept as ``__cause__``."""


class RevisionError(CkptError, LookupError):
    """A revision (branch, tag, id, ``main~2`` …) could not be resolved."""


class RevisionNotFoundError(RevisionError):
    """No branch, tag or snapshot matches the revision."""

    default_hint = "list what exists with `ckpt ls` and `ckpt log --all`"


class AmbiguousRevisionError(RevisionError):
    """An id prefix matches more than one snapshot.

    Args:
        message: what went wrong.
        candidates: the snapshot ids that match.
    """

    def __init__(self, message: str, *, candidates: Sequence[str], hint: str | None = None) -> None:
        self.candidates = list(candidates)
        super().__init__(message, hint=hint or "give more characters of the id")


class RefError(CkptError):
    """A branch or tag cannot be created, moved or deleted as asked."""


class RefConflictError(RefError):
    """A branch moved between the moment a writer read it and the moment it tried to move it.

    Args:
        message: what went wrong.
        ref: the ref that moved, e.g. ``refs/heads/main``.
        expected: the snapshot id the writer started from (``None``: the branch did not exist).
        actual: the snapshot id the branch points at now (``None``: the branch was deleted).
        snapshot: the snapshot the writer committed; it is stored and recorded in the reflog.
    """

    default_hint = "nothing was lost: branch off the new snapshot, or reload the branch and save again"

    def __init__(
        self,
        message: str,
        *,
        ref: str,
        expected: str | None,
        actual: str | None,
        snapshot: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.ref = ref
        self.expected = expected
        self.actual = actual
        self.snapshot = snapshot
        super().__init__(message, hint=hint)


class FrozenRefError(RefError):
    """A frozen tag (a published release) was asked to move, be deleted, or lose its snapshot."""

    default_hint = "frozen releases never change; freeze a new snapshot under a new name"


class RefExistsError(RefError, FileExistsError):
    """A branch or tag with that name exists already."""


class InvalidNameError(RefError, ValueError):
    """A branch or tag name breaks the naming rules (Git's check-ref-format)."""

    default_hint = "use letters, digits and . _ - /, e.g. `main`, `exp/lr-3e-4`, `tiny-llama-2026-11-28`"


class IntegrityError(CkptError):
    """Stored data does not match its digest, or is missing."""


class CorruptChunkError(IntegrityError):
    """A chunk's bytes do not hash to its address.

    Args:
        message: what went wrong.
        digest: the chunk's address.
        tensor: the tensor (or file) that holds the chunk, if known.
        snapshot: the snapshot being read, if known.
    """

    default_hint = (
        "run `ckpt verify` to find all damage, then `ckpt repair --from URL` to put it back from a good copy "
        "(a replica, a backup)"
    )

    def __init__(
        self,
        message: str,
        *,
        digest: str,
        tensor: str | None = None,
        snapshot: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.digest = digest
        self.tensor = tensor
        self.snapshot = snapshot
        super().__init__(message, hint=hint)


class MissingObjectError(IntegrityError):
    """An object the snapshot needs is not in the store (pruned, collected, or lost)."""


class SignatureError(IntegrityError):
    """A release is not signed by a trusted key as it is now (unsigned, repointed, forged), or a folder cannot
    be signed (a missing signing tool, a key type it does not take)."""

    default_hint = "run `ckpt verify --trust KEY.pub` to see the state of every release"


class RecordError(CkptError, ValueError):
    """A record (snapshot, tensor table, ref, config) is malformed, or an argument cannot become one."""


class StateError(CkptError):
    """A state tree cannot be saved or restored."""


class UnsupportedStateError(StateError, TypeError):
    """A leaf of the state tree has a type ckpt does not store (ckpt never pickles)."""

    default_hint = (
        "convert it to tensors, numbers, strings, None, bool, or dict/list/tuple of those; "
        "ckpt never pickles, so nothing read back can run code"
    )


class StateMismatchError(StateError):
    """The stored state does not fit the live objects it is restored into (keys, shapes or dtypes)."""
