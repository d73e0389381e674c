"""The exception hierarchy of ckpt.

Every failure a user can meet is one of these, with a message that says what happened and, where there is
one, a hint that says what to do, in the terms of the person reading it: ``hint`` talks Python
(``store.verify()``, ``force=True``) and is part of ``str(error)``, so a traceback shows it; ``cli_hint`` talks
command line (``ckpt verify``, ``--force``). The command line prints ``error: <message>`` and ``hint:
<cli_hint>``, and exits with the class's ``exit_code``.

```
CkptError                                  exit_code 1, .message, .hint / .cli_hint: str | None
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

from ckpt.extras import DISTRIBUTION

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


class Hint(str):
    """A hint in Python's terms that also knows its command-line form (``cli``).

    A ``str``, so it travels wherever hints are passed as text; ``CkptError(hint=Hint(...))`` takes ``cli`` as
    its ``cli_hint`` unless one is given.

    Example:
        >>> h = Hint("check the store with store.verify()", cli="run `ckpt verify`")
        >>> CkptError("damaged", hint=h).cli_hint
        'run `ckpt verify`'
    """

    cli: str

    def __new__(cls, text: str, *, cli: str) -> Hint:
        self = super().__new__(cls, text)
        self.cli = cli
        return self


class CkptError(Exception):
    """Root of every error ckpt raises on purpose.

    ``str(error)`` is the message, then ``hint: …`` on a second line when there is a hint, so a Python traceback
    shows what to do. The command line prints ``error: <message>`` and ``hint: <cli_hint>`` instead.

    Args:
        message: what went wrong, as one sentence.
        hint: what to do about it, in Python's terms (``store.verify()``, ``force=True``), or ``None`` for the
            class's default; ``""`` for none at all.
        cli_hint: the same for someone at the command line (``ckpt verify``, ``--force``); ``None``: the same as
            ``hint`` when one is given (a hint that names no API), else the class's default.

    Attributes:
        message: what went wrong, without the hint.
        hint: the Python hint, or ``None``.
        cli_hint: the command-line hint, or ``None``.

    Example:
        >>> try:
        ...     raise CkptError("something broke", hint="call it again", cli_hint="run it again")
        ... except CkptError as e:
        ...     print(e)
        ...     print(e.message, "/", e.cli_hint)
        something broke
        hint: call it again
        something broke / run it again
    """

    exit_code: ClassVar[int] = 1
    default_hint: ClassVar[str | None] = None
    default_cli_hint: ClassVar[str | None] = None

    def __init__(self, message: str, *, hint: str | None = None, cli_hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is None:
            self.hint = self.default_hint or None
            fallback = self.default_cli_hint or self.default_hint
        else:
            self.hint = str(hint) or None
            fallback = hint.cli if isinstance(hint, Hint) else hint
        self.cli_hint = (cli_hint if cli_hint is not None else fallback) or None

    def __str__(self) -> str:
        return f"{self.message}\nhint: {self.hint}" if self.hint else self.message


class StoreError(CkptError):
    """The store as a whole cannot be used: missing, exists already, too new, or its backend failed."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No ckpt store at the given location."""

    default_hint = "create one with `ckpt.init(url)`, or open an existing one (the url, or $CKPT_STORE)"
    default_cli_hint = "create one with `ckpt init [URL]`, or name an existing one with --store URL or $CKPT_STORE"


class StoreExistsError(StoreError, FileExistsError):
    """``init`` was asked to create a store where one exists already."""

    default_hint = "open it with `ckpt.open(url)` instead"
    default_cli_hint = "it is ready to use: run commands in its folder, or name it with --store URL"


class FormatVersionError(StoreError):
    """The store was written in a format this version of ckpt cannot read."""

    default_hint = f"upgrade ckpt: pip install -U {DISTRIBUTION}"


class BackendError(StoreError, OSError):
    """The storage backend (local disk, S3, …) failed; the original exception is kept as ``__cause__``."""


class RevisionError(CkptError, LookupError):
    """A revision (branch, tag, id, ``main~2`` …) could not be resolved."""


class RevisionNotFoundError(RevisionError):
    """No branch, tag or snapshot matches the revision."""

    default_hint = "list what exists with `store.branches()`, `store.tags()` and `store.snapshots()`"
    default_cli_hint = "list what exists with `ckpt ls` and `ckpt log --all`"


class AmbiguousRevisionError(RevisionError):
    """An id prefix matches more than one snapshot.

    Args:
        message: what went wrong.
        candidates: the snapshot ids that match.
    """

    default_hint = "give more characters of the id"

    def __init__(
        self, message: str, *, candidates: Sequence[str], hint: str | None = None, cli_hint: str | None = None
    ) -> None:
        self.candidates = list(candidates)
        super().__init__(message, hint=hint, cli_hint=cli_hint)


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
    default_cli_hint = (
        "nothing was lost: `ckpt reflog` lists both snapshots; branch off one with `ckpt branch NAME --at ID`"
    )

    def __init__(
        self,
        message: str,
        *,
        ref: str,
        expected: str | None,
        actual: str | None,
        snapshot: str | None = None,
        hint: str | None = None,
        cli_hint: str | None = None,
    ) -> None:
        self.ref = ref
        self.expected = expected
        self.actual = actual
        self.snapshot = snapshot
        super().__init__(message, hint=hint, cli_hint=cli_hint)


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
        "find all damage with `store.verify()`, then put it back from a good copy (a replica, a backup) with "
        "`store.repair(ckpt.open(url))`"
    )
    default_cli_hint = (
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
        cli_hint: str | None = None,
    ) -> None:
        self.digest = digest
        self.tensor = tensor
        self.snapshot = snapshot
        super().__init__(message, hint=hint, cli_hint=cli_hint)


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
