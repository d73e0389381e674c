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
from types import ModuleType
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
    from ckpt._restore import restore
    from ckpt.interop import ExportResult, export
    from ckpt.lineage import load_merged, merge_adapter, save_adapter
    from ckpt.model import (
        ReflogEntry,
        Relation,
        SaveFields,
        Snapshot,
        SnapshotFields,
        StoreConfig,
        TagRecord,
        TensorEntry,
        TensorTable,
    )
    from ckpt.state import TensorSource
    from ckpt.store import (
        AnyOf,
        Damage,
        Footprint,
        GcReport,
        KeepBest,
        KeepEvery,
        KeepLast,
        LazyTensors,
        ReleaseSigner,
        ReleaseStatus,
        RepairReport,
        RetentionPolicy,
        Store,
        StoreStats,
        SyncReport,
        VerifyReport,
        init,
        open,
        sync,
    )
    from ckpt.training import Checkpointer, CheckpointerOptions, SaveHandle, rng_state, set_rng_state

#: Public names imported on first use: name → the module that defines it.
_LAZY = {
    **dict.fromkeys(
        (
            "ReflogEntry",
            "Relation",
            "SaveFields",
            "Snapshot",
            "SnapshotFields",
            "StoreConfig",
            "TagRecord",
            "TensorEntry",
            "TensorTable",
        ),
        "ckpt.model",
    ),
    **dict.fromkeys(("ExportResult", "export"), "ckpt.interop"),
    **dict.fromkeys(("load_merged", "merge_adapter", "save_adapter"), "ckpt.lineage"),
    "TensorSource": "ckpt.state",
    "restore": "ckpt._restore",
    **dict.fromkeys(
        (
            "AnyOf",
            "Damage",
            "Footprint",
            "GcReport",
            "KeepBest",
            "KeepEvery",
            "KeepLast",
            "LazyTensors",
            "ReleaseSigner",
            "ReleaseStatus",
            "RepairReport",
            "RetentionPolicy",
            "Store",
            "StoreStats",
            "SyncReport",
            "VerifyReport",
            "init",
            "open",
            "sync",
        ),
        "ckpt.store",
    ),
    **dict.fromkeys(
        ("Checkpointer", "CheckpointerOptions", "SaveHandle", "rng_state", "set_rng_state"), "ckpt.training"
    ),
}

#: Re-exports documented as ``ckpt.<name>``: their ``__module__`` says so once loaded.
_CLAIMED = frozenset(
    (
        "Store",
        "Snapshot",
        "SaveFields",
        "SnapshotFields",
        "StoreStats",
        "Footprint",
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
        "CheckpointerOptions",
        "SaveHandle",
        "AnyOf",
        "KeepBest",
        "KeepEvery",
        "KeepLast",
        "RetentionPolicy",
        "ExportResult",
        "export",
        "load_merged",
        "merge_adapter",
        "save_adapter",
        "init",
        "open",
        "restore",
        "sync",
        "rng_state",
        "set_rng_state",
    )
)


#: Public submodules, imported on first attribute access (``ckpt.diff``, ``ckpt.lineage`` …).
_SUBMODULES = frozenset(
    ("dcp", "diff", "integrations", "interop", "lineage", "plot", "settings", "storage", "testing", "ui")
)


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    if name in _SUBMODULES:  # `import ckpt; ckpt.diff.diff(...)` works as after `import ckpt.diff`
        return importlib.import_module(f"ckpt.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if name in _CLAIMED:
        value.__module__ = "ckpt"
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """What ``dir(ckpt)`` and tab completion offer: ``__all__``, ``__version__`` and the submodules imported so
    far (``ckpt.errors`` …), not this module's own imports (``typing``, ``importlib``, ``annotations``)."""
    modules = (n for n, v in globals().items() if isinstance(v, ModuleType) and v.__name__ == f"ckpt.{n}")
    return sorted({*__all__, "__version__", *(n for n in modules if not n.startswith("_"))})


__all__ = [
    "AmbiguousRevisionError",
    "AnyOf",
    "BackendError",
    "Checkpointer",
    "CheckpointerOptions",
    "CkptError",
    "CorruptChunkError",
    "Damage",
    "ExportResult",
    "Footprint",
    "FormatVersionError",
    "FrozenRefError",
    "GcReport",
    "IntegrityError",
    "InvalidNameError",
    "KeepBest",
    "KeepEvery",
    "KeepLast",
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
    "RetentionPolicy",
    "RevisionError",
    "RevisionNotFoundError",
    "SaveFields",
    "SaveHandle",
    "SignatureError",
    "Snapshot",
    "SnapshotFields",
    "StateError",
    "StateMismatchError",
    "Store",
    "StoreConfig",
    "StoreError",
    "StoreExistsError",
    "StoreNotFoundError",
    "StoreStats",
    "SyncReport",
    "TagRecord",
    "TensorEntry",
    "TensorSource",
    "TensorTable",
    "UnsupportedStateError",
    "VerifyReport",
    "__version__",
    "export",
    "init",
    "load_merged",
    "merge_adapter",
    "open",
    "restore",
    "rng_state",
    "save_adapter",
    "set_rng_state",
    "sync",
]
