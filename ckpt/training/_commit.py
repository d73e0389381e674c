"""One staged save committed to the store, with what the digest cache assumed checked before and after.

A tensor found byte-for-byte equal to a staging buffer whose committed digests are known (``_digest_cache``) is
not hashed again: those digests go to the store, with the buffer's bytes. Before the commit, those chunks must
still exist, whole (a ``gc`` beside the run could have removed them); after it, the table must name the digests
the cache gave. Either failure refuses the save, or flags it, rather than record tensors the loop did not hold
at ``save()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckpt.errors import IntegrityError, MissingObjectError
from ckpt.model import Snapshot
from ckpt.state import flatten
from ckpt.store import store_parts
from ckpt.training._digest_cache import DigestCache
from ckpt.training._save_job import SaveJob

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["commit"]


def _chunks_exist(store: Store, digests: list[str]) -> list[bool]:
    """Whether the store holds each chunk (existence checks of their objects, all at once: on an object store
    one round trip of concurrent requests; the store's own write checks each is whole, and heals it from the
    save's buffer if not)."""
    return store_parts(store).objects.has_chunks(digests)


def commit(store: Store, branch: str, model: str | None, job: SaveJob, cache: DigestCache) -> Snapshot:
    """Commit the staged save ``job`` as the next snapshot of ``branch``; teach ``cache`` the new digests.

    Raises:
        MissingObjectError: a chunk of an unchanged tensor vanished before the commit (nothing was written).
        IntegrityError: one vanished during the commit (the snapshot holds the tensor as it was stored then).
        CkptError: what ``Store.save`` raises.
    """
    staged, record = job.staged, job.record
    assert staged is not None
    hits = [t for t in staged.tensors.values() if t.hit is not None]
    wanted = [(t.key, d) for t in hits for d in t.hit or ()]
    found = _chunks_exist(store, [d for _, d in wanted])
    missing = [w for w, there in zip(wanted, found, strict=True) if not there]
    if missing:
        cache.clear()
        key, digest = missing[0]
        raise MissingObjectError(
            f"chunk {digest[:12]} of the unchanged tensor {key!r} vanished from the store (gc?); "
            "this save was not written",
            hint="save again: the next save stores every tensor anew",
        )
    fields = record.copy()
    fields["model"] = model
    snap = store.save(staged.tree, branch, **fields)
    if any(t.hit is not None or t.remember for t in staged.tensors.values()):
        entries = store.table(snap.id).tensors
        _, sources = flatten(staged.tree)  # the store's names for the same TensorSource objects
        for name, src in sources.items():
            info = staged.tensors.get(id(src))
            if info is None:
                continue
            if entries[name].pack is not None:
                continue  # its chunk is a pack shared with other tensors: it says nothing of this tensor's bytes
            digests = entries[name].chunks
            if info.hit is not None and info.hit != digests:
                cache.clear()
                raise IntegrityError(
                    f"snapshot {snap.short_id}: the chunks of the unchanged tensor {name!r} vanished while it "
                    "was saved, and it was stored as it was by then, not as it was at save()",
                    hint="load and check that snapshot, or prune it; do not run gc with no grace period "
                    "beside a training run",
                )
            if info.remember and staged.slot is not None:
                cache.remember(staged.slot, info.key, digests)  # the slot's buffer holds exactly these bytes
    return snap
