"""The store layer: objects, refs, revisions, the commit protocol, gc and verify (layer 4)."""

from ckpt.store.gc import GcPlan, GcReport
from ckpt.store.repair import RepairReport
from ckpt.store.store import LazyTensors, Store, init, open
from ckpt.store.sync import SyncReport, sync
from ckpt.store.verify import Damage, VerifyReport

__all__ = [
    "Damage",
    "GcPlan",
    "GcReport",
    "LazyTensors",
    "RepairReport",
    "Store",
    "SyncReport",
    "VerifyReport",
    "init",
    "open",
    "sync",
]
