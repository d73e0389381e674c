"""A delta is stored whole only when its chain is: dedup (a save of the same bytes) and sync count on a stored
delta only when every reference down its chain is there whole, so that neither commits a snapshot that cannot
be decoded; they write the chunk again (whole) instead, as they do for a damaged raw chunk."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpt
from ckpt import CorruptChunkError, MissingObjectError
from ckpt.store import _layout as layout
from ckpt.store import store_parts
from ckpt.store._chunk_reads import CHUNK_HEADER_SIZE
from ckpt.store._gc import _recheck, plan_gc

CHUNK = 16 << 10


def states(n: int = 8192) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, generator=g) * 0.02
    out = []
    for _ in range(3):
        w = w - 1e-4 * torch.randn(n, generator=g) * w.abs()
        out.append({"w": w.to(torch.bfloat16)})
    return out


def codec(store: ckpt.Store, digest: str) -> int:
    return store.backend.read(layout.chunk_path(digest), 0, CHUNK_HEADER_SIZE)[5]


def damage(store: ckpt.Store, digest: str, how: str) -> None:
    path = layout.chunk_path(digest)
    if how == "deleted":
        store.backend.delete([path])
    else:
        data = store.backend.read(path)
        store.backend.replace(path, data[: len(data) // 2])


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_saving_the_same_bytes_again_heals_a_delta_whose_reference_is_damaged(
    location: tuple[str, dict[str, Any]], how: str
) -> None:
    url, opts = location
    store = ckpt.init(url, chunk_size=CHUNK, delta_depth=8, **opts)
    parent, child, _ = states()
    store.save(parent)
    first = store.save(child)
    delta = store.table(first.id).tensors["w"].chunks[0]
    ref = store.table(first.parents[0]).tensors["w"].chunks[0]
    assert codec(store, delta) == 2
    assert store_parts(store).objects.chunk_whole(delta, CHUNK)
    damage(store, ref, how)
    assert not store_parts(store).objects.chunk_whole(delta, CHUNK)  # its chain is broken
    with pytest.raises((CorruptChunkError, MissingObjectError)):
        store.load(first.id)
    again = store.save(child, force=True)  # what a user does after the error: save the same weights again
    assert torch.equal(store.load(again.id)["w"], child["w"])  # healed: stored again whole
    assert torch.equal(store.load(first.id)["w"], child["w"])  # the same address: the first one reads again
    assert codec(store, delta) != 2


def test_sync_does_not_count_on_a_delta_whose_reference_is_damaged_at_the_destination(tmp_path: Path) -> None:
    parent, child, _ = states()
    dst = ckpt.init(str(tmp_path / "dst"), chunk_size=CHUNK, delta_depth=8)
    dst.save(parent)
    mine = dst.save(child)  # the destination's own saves: a delta against the parent's chunk
    delta = dst.table(mine.id).tensors["w"].chunks[0]
    ref = dst.table(mine.parents[0]).tensors["w"].chunks[0]
    assert codec(dst, delta) == 2
    damage(dst, ref, "truncated")

    src = ckpt.init(str(tmp_path / "src"), chunk_size=CHUNK, delta_depth=8)
    src.save(parent, "train")
    theirs = src.save(child, "train")
    src.prune(theirs.parents[0])  # the parent's chunks are not sent: only the child's
    report = src.sync_to(dst, ["train"])
    assert report.refs == ("refs/heads/train",)
    assert report.chunks >= 1  # the destination's delta was not counted as present
    assert torch.equal(dst.load("train")["w"], child["w"])


def test_gc_keeps_the_reference_of_a_delta_saved_between_its_plan_and_its_deletion(
    location: tuple[str, dict[str, Any]],
) -> None:
    """A save onto a pruned snapshot (a branch reset to it) while gc runs: its delta names a chunk the plan
    doomed. On S3 nothing refreshes a chunk a save finds (a conditional PUT that fails changes nothing), so
    the re-check before deleting must follow the new delta's chain."""
    url, opts = location
    store = ckpt.init(url, chunk_size=CHUNK, delta_depth=8, **opts)
    first, second, third = states()
    store.save(first)
    head = store.save(second)  # a delta against the first save's chunk
    store.save(first)  # the same bytes again: nothing new
    store.prune(head.id)
    store.reset("main", head.id)  # onto a pruned snapshot: its chunks are doomed
    parts = store_parts(store)
    plan = plan_gc(parts, grace=timedelta(0), expire_reflog=timedelta(0))
    doomed = store.table(head.id).tensors["w"].chunks[0]
    assert layout.chunk_path(doomed) in plan.chunk_paths
    new = store.save(third)  # a delta against the doomed chunk, while gc runs
    assert codec(store, store.table(new.id).tensors["w"].chunks[0]) == 2
    collect_plan = _recheck(parts, plan, expire_reflog=timedelta(0), on_damage="refuse")
    collect_plan.execute(store.backend)
    assert torch.equal(store.load(new.id)["w"], third["w"])
    assert store.verify().ok


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_verify_names_the_damaged_reference_once(tmp_path: Path, how: str) -> None:
    """verify of a delta whose reference is damaged or gone: the dependent is reported (it cannot be read),
    its message names the reference, and the dependent is not said to be missing itself."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, delta_depth=8)
    parent, child, _ = states()
    store.save(parent)
    snap = store.save(child)
    delta = store.table(snap.id).tensors["w"].chunks[0]
    ref = store.table(snap.parents[0]).tensors["w"].chunks[0]
    damage(store, ref, how)
    found = {d.digest: d.message for d in store.verify().damage if d.object == "chunk"}
    message = found[delta]
    assert f"delta reference {ref[:12]}" in message
    assert message.count(f"chunk {delta[:12]}") == 1
    assert f"chunk {delta[:12]} of tensor 'w' in snapshot {snap.id[:12]} is missing" not in message
