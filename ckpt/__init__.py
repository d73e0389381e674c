"""ckpt: Git for machine-learning checkpoints.

A versioned, content-addressed store of snapshots on any storage fsspec reaches::

    import ckpt
    store = ckpt.open()                                   # ./.ckpt, $CKPT_STORE, or any fsspec URL
    snap = store.save({"model": model.state_dict()}, step=1200, metrics={"val_loss": 0.41})
    store.freeze(snap.id, model="tiny-llama")             # -> "tiny-llama-2026-11-28", immutable
    ckpt.restore(model, store, "main")
"""

from __future__ import annotations

import importlib
import typing
from typing import Any

from ckpt._version import __version__
from ckpt.errors import (
    AmbiguousRevisionError,
    BackendError,
    CkptError,
    CorruptChunkError,
    FormatVersionError,
    FrozenRefError,
    IntegrityError,
    InvalidNameError,
    MissingObjectError,
    RecordError,
    RefConflictError,
    RefError,
    RefExistsError,
    RevisionError,
    RevisionNotFoundError,
    SignatureError,
    StateError,
    StateMismatchError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
    UnsupportedStateError,
)

if typing.TYPE_CHECKING:  # imported on first use (PEP 562), so that `import ckpt` and `ckpt --help` stay fast
    from ckpt.model import ReflogEntry, Relation, Snapshot, StoreConfig, TagRecord, TensorEntry, TensorTable
    from ckpt.rng import rng_state, set_rng_state
    from ckpt.state import TensorSource
    from ckpt.store import (
        Damage,
        GcReport,
        LazyTensors,
        RepairReport,
        Store,
        VerifyReport,
        init,
        open,
    )
    from ckpt.store.signing import ReleaseSigner, ReleaseStatus
    from ckpt.store.sync import SyncReport, sync
    from ckpt.train import Checkpointer, SaveHandle

#: Public names imported on first use: name → the module that defines it.
_LAZY = {
    **dict.fromkeys(
        ("ReflogEntry", "Relation", "Snapshot", "StoreConfig", "TagRecord", "TensorEntry", "TensorTable"), "ckpt.model"
    ),
    **dict.fromkeys(("rng_state", "set_rng_state"), "ckpt.rng"),
    "TensorSource": "ckpt.state",
    **dict.fromkeys(
        (
            "Damage",
            "GcReport",
            "LazyTensors",
            "RepairReport",
            "Store",
            "SyncReport",
            "VerifyReport",
            "init",
            "open",
            "sync",
        ),
        "ckpt.store",
    ),
    **dict.fromkeys(("ReleaseSigner", "ReleaseStatus"), "ckpt.store.signing"),
    **dict.fromkeys(("Checkpointer", "SaveHandle"), "ckpt.train"),
}

#: Re-exports documented as ``ckpt.<name>``: their ``__module__`` says so once loaded.
_CLAIMED = frozenset(
    (
        "Store",
        "Snapshot",
        "LazyTensors",
        "GcReport",
        "VerifyReport",
        "Damage",
        "TensorSource",
        "SyncReport",
        "RepairReport",
        "ReleaseSigner",
        "ReleaseStatus",
        "Checkpointer",
        "SaveHandle",
        "init",
        "open",
        "sync",
        "rng_state",
        "set_rng_state",
    )
)


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if name in _CLAIMED:
        value.__module__ = "ckpt"
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def restore(
    module: Any,
    store: Store,
    rev: str = "main",
    *,
    optimizer: Any = None,
    strict: bool = True,
    key: str | None = "model",
    optimizer_key: str = "optimizer",
    verify: bool = True,
    in_place: bool = False,
) -> Any:
    """Load a snapshot's weights (and optimizer state) into live torch objects.

    Args:
        module: a ``torch.nn.Module``.
        store: the store.
        rev: the revision to restore.
        optimizer: a ``torch.optim.Optimizer`` to restore from ``state[optimizer_key]``, if given.
        strict: refuse missing or unexpected keys (as ``load_state_dict`` does).
        key: where the module's state dict sits in the saved tree; ``None``: the tree is the state dict.
        optimizer_key: where the optimizer's state dict sits.
        verify: check every chunk against its digest.
        in_place: read the weights straight into the module's own memory (no new allocation, no page
            faults: faster for big models). The default loads into new memory first, so that a failure
            (a corrupt chunk, a shape mismatch) leaves the module untouched; with ``in_place=True`` a failure
            part-way can leave it partly updated.

    Returns:
        The whole loaded state tree (so that step, scheduler and RNG state can be restored too).

    Raises:
        StateMismatchError: keys, shapes or dtypes do not fit the module (the message lists them).
        CorruptChunkError: a chunk does not match its digest.
        MissingObjectError: the snapshot was pruned, or a chunk is missing.

    Example:
        >>> state = ckpt.restore(model, store, "main", optimizer=opt)  # doctest: +SKIP
    """
    from ckpt.state.torch import restore_into

    return restore_into(
        module,
        store,
        rev,
        optimizer=optimizer,
        strict=strict,
        key=key,
        optimizer_key=optimizer_key,
        verify=verify,
        in_place=in_place,
    )


restore.__module__ = "ckpt"

__all__ = [
    "AmbiguousRevisionError",
    "BackendError",
    "Checkpointer",
    "CkptError",
    "CorruptChunkError",
    "Damage",
    "FormatVersionError",
    "FrozenRefError",
    "GcReport",
    "IntegrityError",
    "InvalidNameError",
    "LazyTensors",
    "MissingObjectError",
    "RecordError",
    "RefConflictError",
    "RefError",
    "RefExistsError",
    "ReflogEntry",
    "Relation",
    "ReleaseSigner",
    "ReleaseStatus",
    "RepairReport",
    "RevisionError",
    "RevisionNotFoundError",
    "SaveHandle",
    "SignatureError",
    "Snapshot",
    "StateError",
    "StateMismatchError",
    "Store",
    "StoreConfig",
    "StoreError",
    "StoreExistsError",
    "StoreNotFoundError",
    "SyncReport",
    "TagRecord",
    "TensorEntry",
    "TensorSource",
    "TensorTable",
    "UnsupportedStateError",
    "VerifyReport",
    "__version__",
    "init",
    "open",
    "restore",
    "rng_state",
    "set_rng_state",
    "sync",
]
