"""The store layer: objects, refs, revisions, the commit protocol, gc, verify, repair, sync, signed releases.

The package is internal; this module is its interface for the layers above (``ckpt`` re-exports the public
names). Upper layers import from here, never from a ``ckpt.store._module``.
"""

from ckpt.store._gc import GcPlan, GcReport
from ckpt.store._layout import CONFIG as CONFIG_FILE
from ckpt.store._repair import RepairReport
from ckpt.store._retention import AnyOf, KeepBest, KeepEvery, KeepLast, RetentionPolicy
from ckpt.store._shards import chunk_jobs
from ckpt.store._signing import (
    ReleaseSigner,
    ReleaseStatus,
    TrustedKey,
    check_folder_key,
    key_is_encrypted,
    load_private_key,
    load_trusted_keys,
    require_signed_release,
    sign_folder,
)
from ckpt.store._store import Framework, LazyTensors, Store, init, open
from ckpt.store._sync import SyncReport, sync
from ckpt.store._transfer import Progress, WriteStats, read_tensors, write_files, write_tensors
from ckpt.store._verify import Damage, VerifyReport

__all__ = [
    "CONFIG_FILE",
    "AnyOf",
    "Damage",
    "Framework",
    "GcPlan",
    "GcReport",
    "KeepBest",
    "KeepEvery",
    "KeepLast",
    "LazyTensors",
    "Progress",
    "ReleaseSigner",
    "ReleaseStatus",
    "RepairReport",
    "RetentionPolicy",
    "Store",
    "SyncReport",
    "TrustedKey",
    "VerifyReport",
    "WriteStats",
    "check_folder_key",
    "chunk_jobs",
    "init",
    "key_is_encrypted",
    "load_private_key",
    "load_trusted_keys",
    "open",
    "read_tensors",
    "require_signed_release",
    "sign_folder",
    "sync",
    "write_files",
    "write_tensors",
]
