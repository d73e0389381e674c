"""Pruning (release a snapshot's tensors, keep its record) and garbage collection."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import torch

import ckpt
from ckpt.errors import FrozenRefError, MissingObjectError, RefConflictError, RefError, RevisionNotFoundError

#: Run a test on the local and memory stores only (the rule it checks does not depend on the backend, and
#: each S3 round trip to moto costs time). What depends on listings and object times runs on all three.
no_s3 = pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)

NOW = timedelta(0)


def state(i: int) -> dict[str, Any]:
    """One chunk shared by every snapshot, two chunks of its own (4 KiB chunks)."""
    return {
        "shared": torch.arange(1024, dtype=torch.float32),
        "own": torch.arange(2048, dtype=torch.float32) + 10_000 * (i + 1),
        "step": i,
    }


def chunks(store: ckpt.Store) -> set[str]:
    """Digests of every chunk object in the store."""
    return {e.path.rsplit("/", 1)[-1] for e in store.backend.list("chunks/")}


def needs(store: ckpt.Store, *revs: str) -> set[str]:
    """Digests of the chunks these snapshots need."""
    out: set[str] = set()
    for rev in revs:
        out |= store.table(rev).chunk_digests()
    return out


def assert_loads(store: ckpt.Store, rev: str, i: int) -> None:
    got = store.load(rev)
    want = state(i)
    assert got["step"] == i
    assert torch.equal(got["own"], want["own"]) and torch.equal(got["shared"], want["shared"])


@pytest.fixture
def history(store: ckpt.Store) -> list[ckpt.Snapshot]:
    """main: a ← b ← c."""
    # whole saves: a pruned save's chunks that later deltas need stay (tests/store/test_codecs_deltas.py)
    return [store.save(state(i), step=i, compression=False) for i in range(3)]


# -- prune refuses what refs hold ------------------------------------------------------------------------


@no_s3
def test_prune_refuses_a_frozen_release(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    a = history[0]
    name = store.freeze(a.id, name="rel-1")
    for rev in (a.id, name):
        with pytest.raises(FrozenRefError) as err:
            store.prune(rev)
        assert err.value.hint
    assert not store.get(a.id).pruned
    store.gc(grace=NOW)
    assert_loads(store, name, 0)


@no_s3
def test_prune_refuses_a_frozen_release_that_is_also_a_head(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    store.freeze("main", name="rel-head")
    with pytest.raises(FrozenRefError):
        store.prune("main")


@no_s3
def test_prune_refuses_a_branch_head(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    a, _b, c = history
    with pytest.raises(RefError) as err:
        store.prune("main")
    assert not isinstance(err.value, FrozenRefError)
    assert "main" in str(err.value) and err.value.hint
    store.branch("exp", at=a.id)
    with pytest.raises(RefError):
        store.prune(a.id)
    assert not store.get(c.id).pruned and not store.get(a.id).pruned


@no_s3
def test_prune_refuses_a_tagged_snapshot(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    b = history[1]
    store.tag("v1", b.id)
    with pytest.raises(RefError) as err:
        store.prune(b.id)
    assert not isinstance(err.value, FrozenRefError)
    assert "v1" in str(err.value)
    assert not store.get(b.id).pruned
    store.delete_tag("v1")
    assert store.prune(b.id).pruned


# -- prune + gc ------------------------------------------------------------------------------------------


def test_prune_then_gc_frees_only_unneeded_chunks(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    a, b, c = history
    before = chunks(store)
    assert before == needs(store, a.id, b.id, c.id)
    only_b = needs(store, b.id) - needs(store, a.id, c.id)
    assert len(only_b) == 2 and len(before) == 7
    sizes = {e.path.rsplit("/", 1)[-1]: e.size for e in store.backend.list("chunks/")}  # as stored

    assert store.prune(b.id, reason="worse val_loss").pruned
    assert chunks(store) == before, "prune alone releases, gc deletes"
    with pytest.raises(MissingObjectError):
        store.load(b.id)

    report = store.gc(grace=NOW)
    assert not report.dry_run
    assert (report.snapshots, report.tables, report.chunks) == (0, 0, 2)
    assert report.freed_bytes == sum(sizes[d] for d in only_b)
    assert report.kept_chunks == 5
    assert chunks(store) == before - only_b == needs(store, a.id, c.id)

    log = store.log()
    assert [s.id for s in log] == [c.id, b.id, a.id]
    assert [s.pruned for s in log] == [False, True, False]
    assert store.resolve("main~1").step == 1  # the record stays readable
    with pytest.raises(MissingObjectError):
        store.load(b.id)
    with pytest.raises(MissingObjectError):
        store.load("main~1")
    assert_loads(store, a.id, 0)
    assert_loads(store, "main", 2)
    assert store.verify().ok

    again = store.gc(grace=NOW)
    assert (again.snapshots, again.tables, again.chunks) == (0, 0, 0)


@no_s3
def test_pruning_twice_is_harmless(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    b = history[1]
    store.prune(b.id)
    assert store.prune(b.id).pruned
    store.gc(grace=NOW)
    assert store.prune(b.id).pruned
    assert store.verify().ok


@no_s3
def test_gc_keeps_chunks_a_pruned_snapshot_shares(store: ckpt.Store) -> None:
    a = store.save(state(0))
    b = store.save(state(0), message="same tensors again")
    store.save(state(1))
    assert needs(store, a.id) == needs(store, b.id)
    store.prune(b.id)
    report = store.gc(grace=NOW)
    assert report.chunks == 0
    assert_loads(store, a.id, 0)
    assert store.verify().ok


@no_s3
def test_gc_dry_run_deletes_nothing(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    b = history[1]
    store.prune(b.id)
    before = chunks(store)
    listing = {e.path for e in store.backend.list("")}

    plan = store.gc(grace=NOW, dry_run=True)
    assert plan.dry_run
    assert plan.chunks == 2 and plan.freed_bytes > 0
    assert chunks(store) == before
    assert {e.path for e in store.backend.list("")} == listing

    done = store.gc(grace=NOW)
    assert not done.dry_run
    assert (done.snapshots, done.tables, done.chunks, done.freed_bytes) == (
        plan.snapshots,
        plan.tables,
        plan.chunks,
        plan.freed_bytes,
    )
    assert len(chunks(store)) == len(before) - 2


def test_gc_default_grace_keeps_fresh_objects(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    a, b, _c = history
    store.prune(b.id)
    store.branch("exp", at=a.id)
    e = store.save(state(7), branch="exp")
    store.delete_branch("exp")
    before = {x.path for x in store.backend.list("")}

    report = store.gc()  # grace: 1 hour
    assert (report.snapshots, report.tables, report.chunks) == (0, 0, 0)
    report = store.gc(expire_reflog=NOW)  # unreachable now, but written moments ago
    assert (report.snapshots, report.tables, report.chunks) == (0, 0, 0)
    assert {x.path for x in store.backend.list("")} == before
    assert_loads(store, e.id, 7)


# -- deleted branches and the reflog ---------------------------------------------------------------------


def test_deleted_branch_is_kept_until_its_reflog_expires(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    a, _b, c = history
    store.branch("exp", at=a.id)
    e1 = store.save(state(5), branch="exp")
    e2 = store.save(state(6), branch="exp")
    only_exp = needs(store, e1.id, e2.id) - needs(store, *(s.id for s in history))
    assert len(only_exp) == 4
    store.delete_branch("exp")
    before = chunks(store)

    report = store.gc(grace=NOW)  # the reflog entries are younger than 30 days
    assert (report.snapshots, report.tables, report.chunks) == (0, 0, 0)
    assert chunks(store) == before
    assert_loads(store, e2.id, 6)
    assert_loads(store, e1.id, 5)

    report = store.gc(grace=NOW, expire_reflog=NOW)
    assert (report.snapshots, report.tables, report.chunks) == (2, 2, 4)
    assert chunks(store) == before - only_exp
    for gone in (e1.id, e2.id):
        with pytest.raises(RevisionNotFoundError):
            store.resolve(gone)
    assert [s.id for s in store.log()] == [c.id, history[1].id, a.id]
    for i, snap in enumerate(history):
        assert_loads(store, snap.id, i)
    assert [x.action for x in store.reflog("refs/heads/exp")] == ["branch", "commit", "commit", "delete"]
    assert store.verify().ok


@no_s3
def test_reflog_kept_forever_with_expire_none(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    store.branch("exp", at=history[0].id)
    e = store.save(state(5), branch="exp")
    store.delete_branch("exp")
    report = store.gc(grace=NOW, expire_reflog=None)
    assert (report.snapshots, report.chunks) == (0, 0)
    assert_loads(store, e.id, 5)


@no_s3
def test_gc_keeps_what_tags_and_other_branches_reach(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    a, b, c = history
    store.branch("exp", at=a.id)
    e = store.save(state(5), branch="exp")
    store.tag("keep", e.id)
    store.delete_branch("exp")
    store.reset("main", a.id)  # b and c now only in main's reflog
    report = store.gc(grace=NOW, expire_reflog=NOW)
    assert report.snapshots == 2  # b and c
    assert_loads(store, "keep", 5)
    assert_loads(store, "main", 0)
    for gone in (b.id, c.id):
        with pytest.raises(RevisionNotFoundError):
            store.resolve(gone)
    assert store.verify().ok


@no_s3
def test_gc_keeps_the_snapshot_of_a_lost_race(store: ckpt.Store, history: list[ckpt.Snapshot]) -> None:
    writer_a = ckpt.open(store.url)
    won: list[ckpt.Snapshot] = []
    lock = threading.Lock()

    def a_saves_first(nbytes: int) -> None:  # called from B's chunk-writing threads
        with lock:
            if not won:
                won.append(writer_a.save(state(8)))

    with pytest.raises(RefConflictError) as err:
        ckpt.open(store.url).save(state(9), progress=a_saves_first)
    lost = err.value.snapshot
    assert lost is not None
    store.gc(grace=NOW)  # the conflict entry in the reflog keeps it alive
    assert_loads(store, lost, 9)
    assert store.verify().ok
    store.gc(grace=NOW, expire_reflog=NOW)
    with pytest.raises(RevisionNotFoundError):
        store.resolve(lost)
    assert_loads(store, "main", 8)
