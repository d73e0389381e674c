"""gc is fail-closed: whatever it cannot read makes it refuse (or, asked to, keep all it might need).

Each scenario damages one object of a sound store, then checks that gc deletes nothing a reader could need,
that its error names the damage and says what to do, that ``verify`` reports exactly that damage, and that no
ref points at missing data afterwards.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt import KeepLast
from ckpt.errors import IntegrityError, MissingObjectError
from ckpt.store import _layout as layout
from ckpt.store import store_parts

NOW = timedelta(0)
no_s3 = pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)


def state(i: int) -> dict[str, Any]:
    """One chunk shared by every snapshot, two of its own (4 KiB chunks)."""
    return {
        "shared": np.arange(1024, dtype=np.float32),
        "own": np.arange(2048, dtype=np.float32) + 10_000 * (i + 1),
        "step": i,
    }


def objects(store: ckpt.Store) -> set[str]:
    """Every record, table and chunk in the store."""
    return {e.path for prefix in ("snapshots/", "tables/", "chunks/") for e in store.backend.list(prefix)}


def flip(store: ckpt.Store, path: str, at: int = -1) -> None:
    """Flip one bit of one byte of a stored object (through the backend, so on any backend)."""
    data = bytearray(store.backend.read(path))
    data[at] ^= 0x01
    store.backend.replace(path, bytes(data))


def assert_no_ref_dangles(store: ckpt.Store) -> None:
    for head in store.branches().values():
        assert store_parts(store).objects.has_snapshot(head)
    for tag in store.tags().values():
        assert store_parts(store).objects.has_snapshot(tag.id)


@pytest.fixture
def five(store: ckpt.Store) -> list[ckpt.Snapshot]:
    """main: five saves."""
    # whole saves: in a store with deltas a pruned save's chunks stay while a later save's deltas need them
    # (tests/store/test_codecs_deltas.py); these tests are about what gc frees when nothing else needs them
    return [store.save(state(i), step=i, compression=False) for i in range(5)]


def test_a_flipped_bit_in_the_head_record_makes_gc_refuse(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    head = five[-1]
    flip(store, layout.snapshot_path(head.id), at=20)
    before = objects(store)
    with pytest.raises(IntegrityError) as err:
        store.gc(grace=NOW, expire_reflog=NOW)
    assert head.id[:12] in str(err.value) and "store.verify()" in (err.value.hint or "")
    assert "store.repair(" in (err.value.hint or "") and "on_damage='keep'" in (err.value.hint or "")
    assert "`ckpt verify`" in (err.value.cli_hint or "") and "`ckpt repair --from URL`" in (err.value.cli_hint or "")
    assert "hint:" not in err.value.message  # the damage it names is told without the damaged object's own hint
    assert objects(store) == before  # nothing deleted, not even what is really garbage
    damage = store.verify().damage
    assert [(d.kind, d.object, d.digest) for d in damage] == [("corrupt", "snapshot", head.id)]
    assert_no_ref_dangles(store)


@no_s3
def test_keep_mode_collects_around_a_damaged_record_keeping_all_it_might_need(
    store: ckpt.Store, five: list[ckpt.Snapshot]
) -> None:
    head = five[-1]
    # real garbage: a branch made, saved on and deleted, its reflog entries expired by expire_reflog=0
    store.branch("tmp", at=five[0].id)
    store.save(state(99), "tmp")
    store.delete_branch("tmp")
    flip(store, layout.snapshot_path(head.id), at=20)
    before = objects(store)
    report = store.gc(grace=NOW, expire_reflog=NOW, on_damage="keep")
    assert [(d.kind, d.object) for d in report.damage] == [("corrupt", "snapshot")]
    # an unreadable record could have any parent and any table: every record, table and chunk stays
    assert objects(store) == before
    assert (report.snapshots, report.tables, report.chunks) == (0, 0, 0)
    assert [(d.kind, d.object, d.digest) for d in store.verify().damage] == [("corrupt", "snapshot", head.id)]
    for snap in five[:-1]:
        assert store.load(snap.id)["step"] == five.index(snap)


def test_gc_after_repair_collects_again(store: ckpt.Store, five: list[ckpt.Snapshot], tmp_path: Any) -> None:
    replica = ckpt.init(str(tmp_path / "replica"), chunk_size=4096)
    ckpt.sync(store, replica)
    store.prune(five[1].id)
    flip(store, layout.snapshot_path(five[-1].id), at=20)
    with pytest.raises(IntegrityError):
        store.gc(grace=NOW)
    assert store.repair(replica).ok
    report = store.gc(grace=NOW)
    assert report.chunks == 2  # the pruned snapshot's own chunks
    assert store.verify().ok
    assert store.load("main")["step"] == 4


def test_a_flipped_bit_in_a_table_makes_gc_refuse(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    victim = five[2]
    flip(store, layout.table_path(victim.table), at=40)
    store.prune(victim.id)  # even pruned: gc cannot prove what its chunks are
    before = objects(store)
    with pytest.raises(IntegrityError) as err:
        store.gc(grace=NOW)
    assert victim.table[:12] in str(err.value)
    assert objects(store) == before
    damage = store.verify().damage
    assert [(d.kind, d.object, d.digest) for d in damage] == [("corrupt", "table", victim.table)]


@no_s3
def test_keep_mode_keeps_every_chunk_when_a_live_table_is_unreadable(
    store: ckpt.Store, five: list[ckpt.Snapshot]
) -> None:
    victim = five[2]
    chunks = store.table(victim.id).chunk_digests()
    flip(store, layout.table_path(victim.table), at=40)
    store.prune(five[1].id)  # real garbage: two chunks of its own
    report = store.gc(grace=NOW, on_damage="keep")
    assert report.chunks == 0 and [d.object for d in report.damage] == ["table"]
    assert all(store_parts(store).objects.has_chunk(d) for d in chunks)


def test_a_damaged_reflog_line_is_reported_never_a_bare_value_error(
    store: ckpt.Store, five: list[ckpt.Snapshot]
) -> None:
    entry = sorted(e.path for e in store.backend.list("logs/refs/heads/main/"))[0]
    data = store.backend.read(entry)
    at = data.index(b'"time":"') + len(b'"time":"') + 4  # the '-' after the year: ',' makes it no time
    flip(store, entry, at=at)
    damage = store.verify().damage
    assert [(d.kind, d.object, d.digest) for d in damage] == [("invalid", "reflog", entry)]
    assert "time" in damage[0].message
    with pytest.raises(IntegrityError) as err:
        store.gc(grace=NOW)
    assert entry in str(err.value)
    assert len(store.reflog("refs/heads/main")) == 4  # the damaged entry is left out of the listing
    # keep mode: an unreadable entry could name any snapshot, so every record stays
    store.branch("tmp", at=five[0].id)
    store.save(state(99), "tmp")
    store.delete_branch("tmp")
    report = store.gc(grace=NOW, expire_reflog=NOW, on_damage="keep")
    assert report.snapshots == 0 and report.tables == 0
    assert store.repair().unrepaired[0].object == "reflog"  # not content-addressed: says what to do instead


@no_s3
def test_a_reflog_id_that_is_not_an_id_is_damage(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    entry = sorted(e.path for e in store.backend.list("logs/refs/heads/main/"))[-1]
    data = store.backend.read(entry)
    at = data.index(b'"new":"') + len(b'"new":"')
    raw = bytearray(data)
    raw[at] = ord("G")
    store.backend.replace(entry, bytes(raw))
    assert [d.object for d in store.verify().damage] == ["reflog"]
    with pytest.raises(IntegrityError):
        store.gc(grace=NOW)


@no_s3
def test_a_damaged_branch_file_makes_gc_refuse(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    store.branch("side", at=five[1].id)
    store.backend.replace("refs/heads/side", b'{"id": "not json')
    with pytest.raises(IntegrityError) as err:
        store.gc(grace=NOW, expire_reflog=NOW)
    assert "refs/heads/side" in str(err.value)
    assert [(d.object, d.digest) for d in store.verify().damage] == [("ref", "refs/heads/side")]


@no_s3
def test_a_branch_pointing_at_a_missing_record_makes_gc_refuse(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    store.branch("side", at=five[1].id)
    store.backend.delete([layout.snapshot_path(five[1].id)])
    before = objects(store)
    with pytest.raises(IntegrityError) as err:
        store.gc(grace=NOW)
    assert "side" in str(err.value)
    assert objects(store) == before  # its table and chunks stay: a repair can bring the record back
    damage = store.verify().damage  # the branch points at nothing, and main~3's parent is gone
    assert sorted((d.kind, d.object, d.digest) for d in damage) == [
        ("missing", "ref", "refs/heads/side"),
        ("missing", "snapshot", five[1].id),
    ]


@no_s3
def test_a_missing_parent_makes_gc_refuse(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    store.backend.delete([layout.snapshot_path(five[2].id)])
    with pytest.raises(IntegrityError):
        store.gc(grace=NOW)
    damage = store.verify().damage
    assert [(d.kind, d.object, d.digest) for d in damage] == [("missing", "snapshot", five[2].id)]


@no_s3
def test_a_damaged_pruned_marker_makes_gc_refuse(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    store.prune(five[1].id)
    path = layout.pruned_path(five[1].id)
    store.backend.replace(path, b"\xff\xfe garbage")
    with pytest.raises(IntegrityError) as err:
        store.gc(grace=NOW)
    assert path in str(err.value)
    assert [(d.object, d.digest) for d in store.verify().damage] == [("marker", path)]
    report = store.gc(grace=NOW, on_damage="keep")  # an unreadable marker prunes nothing
    assert report.chunks == 0
    assert all(store_parts(store).objects.has_chunk(d) for d in store.table(five[1].id).chunk_digests())
    assert store.repair().ok  # written again: the snapshot stays pruned, as it was meant to be
    assert store.gc(grace=NOW).chunks == 2


def test_nothing_in_the_store_is_damaged_and_gc_collects(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    store.prune(five[1].id)
    report = store.gc(grace=NOW)
    assert report.chunks == 2 and report.damage == ()
    assert store.verify().ok
    assert_no_ref_dangles(store)


# -- what the grace period spared --------------------------------------------------------------------------


def test_the_report_says_what_the_grace_period_kept(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    store.prune(five[1].id)
    spared = store.gc()  # the default hour: everything here is younger
    assert spared.chunks == 0 and spared.young_chunks == 2 and spared.grace_seconds == 3600
    sizes = {e.path.rsplit("/", 1)[-1]: e.size for e in store.backend.list("chunks/")}
    only_b = store.table(five[1].id).chunk_digests() - set().union(
        *(store.table(s.id).chunk_digests() for s in five if s is not five[1])
    )
    assert spared.young_bytes == sum(sizes[d] for d in only_b)  # as stored (compressed or raw)
    assert spared.kept_chunks == store.stats().chunks
    done = store.gc(grace=NOW)
    assert done.chunks == 2 and done.young_chunks == 0 and done.freed_bytes == spared.young_bytes


def test_byte_figures_agree_across_verify_gc_and_stats(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    report = store.verify()
    plan = store.gc(grace=NOW, dry_run=True)
    stats = store.stats()
    assert report.bytes == plan.kept_bytes == stats.chunk_bytes
    assert report.chunks == plan.kept_chunks == stats.chunks


# -- frozen releases ------------------------------------------------------------------------------------------


@no_s3
def test_a_pruned_marker_planted_on_a_frozen_release(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    rel = five[1]
    name = store.freeze(rel.id, name="rel-1")
    store_parts(store).mark_pruned(rel.id, "planted")  # what prune refuses, written behind its back
    store.gc(grace=NOW)
    assert store.load(name)["step"] == 1  # gc never deletes a frozen release's objects
    damage = store.verify().damage
    assert [(d.kind, d.object, d.snapshots) for d in damage] == [("invalid", "marker", (rel.id,))]
    assert store.repair().ok and store.verify().ok
    assert not store.get(rel.id).pruned


@no_s3
def test_freeze_refuses_what_cannot_be_loaded(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    store.prune(five[1].id)
    with pytest.raises(MissingObjectError, match="pruned"):
        store.freeze(five[1].id, name="rel-pruned")
    store.gc(grace=NOW)
    with pytest.raises(MissingObjectError):
        store.freeze(five[1].id, name="rel-collected")
    digest = store.table(five[2].id).tensors["own"].chunks[0]
    store.backend.delete([layout.chunk_path(digest)])
    with pytest.raises(MissingObjectError, match=digest[:12]):
        store.freeze(five[2].id, name="rel-missing")
    flip(store, layout.chunk_path(store.table(five[3].id).tensors["own"].chunks[0]))
    store.freeze(five[3].id, name="rel-unchecked")  # only presence, by default
    with pytest.raises(IntegrityError):
        store.freeze(five[3].id, name="rel-checked", verify=True)
    assert set(store.tags()) == {"rel-unchecked"}


@no_s3
def test_prune_refuses_the_base_of_a_frozen_adapter_release(store: ckpt.Store, five: list[ckpt.Snapshot]) -> None:
    base = five[1]
    adapter = store.save(
        {"lora_A": np.ones((2, 4), np.float32)}, "lora", parents=[base.id], relation="adapter", base=base.id
    )
    store.freeze(adapter.id, name="lora-1")
    with pytest.raises(ckpt.FrozenRefError):
        store.prune(base.id)
    pruned = store.retain("main", KeepLast(1))
    assert base.id not in {s.id for s in pruned} and not store.get(base.id).pruned


# -- a save never references what it did not write or find -------------------------------------------------


@no_s3
def test_a_save_never_inherits_files_whose_chunks_are_gone(store: ckpt.Store) -> None:
    x = store.save(state(0), files={"config.json": b'{"a": 1}'}, model="m")
    store.save(state(1), files={})
    store.prune(x.id)
    store.gc(grace=NOW)  # x's chunks (its file's included) are collected
    before = objects(store)
    with pytest.raises(MissingObjectError) as err:
        store.save(state(2), "retry", parents=[x.id])
    assert "config.json" in str(err.value) and "files=" in (err.value.hint or "")
    assert objects(store) - before <= {p for p in objects(store) if p.startswith("chunks/")}  # no record
    assert "retry" not in store.branches()
    snap = store.save(state(2), "retry", parents=[x.id], files={"config.json": b'{"a": 2}'})
    assert store.files(snap.id) == {"config.json": b'{"a": 2}'}
    assert store.verify().ok


def test_inherited_files_are_found_present_and_refreshed(store: ckpt.Store) -> None:
    x = store.save(state(0), files={"config.json": b'{"a": 1}'})
    y = store.save(state(1))
    assert store.files(y.id) == {"config.json": b'{"a": 1}'}
    assert store.table(y.id).files == store.table(x.id).files  # the same chunks, nothing copied


@no_s3
def test_a_table_a_save_reuses_while_gc_runs_is_spared(store: ckpt.Store) -> None:
    """A table is content-addressed too: a save of the same tree and tensors reuses an unreachable one."""
    from ckpt.store._gc import plan_gc

    store.save(state(9))
    old = store.save(state(0), "tmp")
    store.delete_branch("tmp")
    plan = plan_gc(store_parts(store), grace=NOW, expire_reflog=NOW)
    assert layout.table_path(old.table) in plan.table_paths
    again = store.save(state(0), "again")  # the same table, found present and refreshed
    assert again.table == old.table
    report = plan.execute(store.backend)
    assert report.tables == 0 and report.reused_chunks == 2
    assert store.verify().ok and store.load("again")["step"] == 0
