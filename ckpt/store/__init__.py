"""The store layer: objects, refs, revisions, the commit protocol, gc, verify, repair, sync, signed releases.

The package is internal; this module is its interface for the layers above (``ckpt`` re-exports the public
names). Upper layers import from here, never from a ``ckpt.store._module``. Its modules, lowest first:

- ``_types``, ``_layout``: progress callbacks and frameworks; where each object lives under the store's root.
- ``_objects``, ``_refs``, ``_revisions``: chunks and records by digest; branches, tags, reflog; ``main~2``.
- ``_keys``, ``_signatures``, ``_model_signing``: signing keys; release signatures; folder signing.
- ``_parts``: ``StoreParts``, the working parts of one store, handed to the modules below.
- ``_reports``, ``_liveness``, ``_gc``, ``_verify``, ``_repair``, ``_sync``: checking, collecting, copying.
- ``_shards``, ``_transfer``, ``_commit``, ``_reading``, ``_loading``: tensor bytes in and out; the commit protocol;
  reads (``_loading``: a subset by prefix, onto a device).
- ``_releases``, ``_retention``, ``_open``: freeze and sign; policies and pruning; create and open.
- ``_maintenance``, ``_store``, ``_entry``: ``Store``, the facade; ``init`` / ``open`` / ``sync``.
"""

from ckpt.store._commit import INHERITS_FILES, inherited_files
from ckpt.store._entry import init, open, sync
from ckpt.store._gc import GcPlan, GcReport, OnDamage
from ckpt.store._keys import ReleaseSigner, TrustedKey, key_is_encrypted, load_private_key, load_trusted_keys
from ckpt.store._layout import CONFIG as CONFIG_FILE
from ckpt.store._loading import cut_state
from ckpt.store._model_signing import check_folder_key, sign_folder
from ckpt.store._packs import PackCache
from ckpt.store._parts import StoreParts
from ckpt.store._reading import LazyTensors, open_snapshot
from ckpt.store._repair import RepairReport
from ckpt.store._reports import Damage, Footprint, StoreStats, VerifyReport
from ckpt.store._retention import AnyOf, KeepBest, KeepEvery, KeepLast, RetentionPolicy
from ckpt.store._shards import chunk_jobs
from ckpt.store._signatures import ReleaseStatus, require_signed_release
from ckpt.store._store import Store, store_parts
from ckpt.store._sync import SyncReport
from ckpt.store._transfer import ProvenSource, WriteStats, read_tensors, write_files, write_tensors
from ckpt.store._types import Framework, Progress

__all__ = [
    "CONFIG_FILE",
    "INHERITS_FILES",
    "AnyOf",
    "Damage",
    "Framework",
    "GcPlan",
    "GcReport",
    "KeepBest",
    "KeepEvery",
    "KeepLast",
    "LazyTensors",
    "OnDamage",
    "PackCache",
    "Progress",
    "ProvenSource",
    "ReleaseSigner",
    "ReleaseStatus",
    "RepairReport",
    "RetentionPolicy",
    "Store",
    "StoreParts",
    "Footprint",
    "StoreStats",
    "SyncReport",
    "TrustedKey",
    "VerifyReport",
    "WriteStats",
    "check_folder_key",
    "chunk_jobs",
    "cut_state",
    "inherited_files",
    "init",
    "key_is_encrypted",
    "load_private_key",
    "load_trusted_keys",
    "open",
    "open_snapshot",
    "read_tensors",
    "require_signed_release",
    "sign_folder",
    "store_parts",
    "sync",
    "write_files",
    "write_tensors",
]
