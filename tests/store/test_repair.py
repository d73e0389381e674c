"""``Store.repair``: damaged and missing objects put back from a good copy, on every backend."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.store import _layout as layout
from ckpt.testing import assert_state_equal


def _damage(store: ckpt.Store, path: str) -> None:
    """Flip one bit of the last byte of the object at ``path``."""
    data = bytearray(store.backend.read(path))
    data[-1] ^= 1
    store.backend.replace(path, bytes(data))


@pytest.fixture
def saved(store: ckpt.Store, tmp_path: Path) -> tuple[ckpt.Store, ckpt.Store]:
    """Three saves on the store under test (small chunks: a tensor spans several), and a good copy on disk."""
    for i in range(3):
        store.save(
            {"w": np.arange(3000, dtype=np.float32) + i, "b": np.full(8, i, np.int64)},
            message=f"save {i}",
            files={"config.json": b'{"v": %d}' % i},
        )
    good = ckpt.init(str(tmp_path / "good"), chunk_size=store.chunk_size)
    ckpt.sync(store, good, ["main"])
    return store, good


@pytest.fixture
def store(location: tuple[str, dict[str, object]]) -> ckpt.Store:
    url, options = location
    return ckpt.init(url, chunk_size=4096, **options)


def test_every_kind_of_damage_is_repaired(saved: tuple[ckpt.Store, ckpt.Store]) -> None:
    store, good = saved
    expected = store.load("main")
    chunk = store.table("main").tensors["w"].chunks[1]
    _damage(store, layout.chunk_path(chunk))  # a flipped bit
    store.backend.delete([layout.chunk_path(store.table("main").tensors["b"].chunks[0])])  # a lost chunk
    middle = store.resolve("main~1")
    store.backend.delete([layout.table_path(middle.table)])  # a lost table
    _damage(store, layout.snapshot_path(store.resolve("main~2").id))  # a damaged record
    before = store.verify()
    assert {(d.kind, d.object) for d in before.damage} == {
        ("corrupt", "chunk"),
        ("missing", "chunk"),
        ("missing", "table"),
        ("corrupt", "snapshot"),
    }

    report = store.repair(good)

    assert report.ok and report.verify.ok and report.unrepaired == ()
    # the table and the record hid their own chunks from the first pass; nothing else needed copying
    assert {(d.kind, d.object) for d in report.repaired} >= {(d.kind, d.object) for d in before.damage}
    assert report.bytes_copied > 0
    assert store.verify().ok
    assert_state_equal(store.load("main"), expected)
    assert [s.message for s in store.log()] == ["save 2", "save 1", "save 0"]
    assert store.files("main~1") == {"config.json": b'{"v": 1}'}


def test_a_sound_store_is_left_alone(saved: tuple[ckpt.Store, ckpt.Store]) -> None:
    store, good = saved
    report = store.repair(good)
    assert report.ok and report.repaired == () and report.bytes_copied == 0


def test_what_the_source_lacks_is_reported_and_nothing_is_lost(store: ckpt.Store, tmp_path: Path) -> None:
    store.save({"w": np.arange(3000, dtype=np.float32)}, message="old")
    good = ckpt.init(str(tmp_path / "good"), chunk_size=store.chunk_size)
    ckpt.sync(store, good, ["main"])
    store.save({"w": np.arange(3000, dtype=np.float32) * 2, "new": np.ones(4)}, message="new, not in the copy")
    lost = store.table("main").tensors["new"].chunks[0]
    store.backend.delete([layout.chunk_path(lost)])
    old_chunk = store.table("main~1").tensors["w"].chunks[0]
    _damage(store, layout.chunk_path(old_chunk))

    report = store.repair(good)

    assert not report.ok
    assert [(d.kind, d.object, d.digest) for d in report.repaired] == [("corrupt", "chunk", old_chunk)]
    (left,) = report.unrepaired
    assert (left.kind, left.object, left.digest) == ("missing", "chunk", lost)
    assert "not repaired" in left.message and "missing" in left.message
    assert store.load("main~1")["w"][0] == 0  # the repairable snapshot reads again
    assert store.branches()["main"] == store.log()[0].id  # refs untouched


def test_a_bad_copy_in_the_source_is_never_copied(store: ckpt.Store, tmp_path: Path) -> None:
    store.save({"w": np.arange(3000, dtype=np.float32)})
    good = ckpt.init(str(tmp_path / "good"), chunk_size=store.chunk_size)
    ckpt.sync(store, good, ["main"])
    digest = store.table("main").tensors["w"].chunks[0]
    _damage(store, layout.chunk_path(digest))
    _damage(good, layout.chunk_path(digest))  # the replica rotted too
    damaged = store.backend.read(layout.chunk_path(digest))

    report = store.repair(good)

    assert not report.ok and report.repaired == ()
    assert "corrupt" in report.unrepaired[0].message.split("not repaired:")[1]
    assert store.backend.read(layout.chunk_path(digest)) == damaged  # left as it was, for a better source


def test_repair_of_some_revisions_only(saved: tuple[ckpt.Store, ckpt.Store]) -> None:
    store, good = saved
    head, oldest = store.table("main"), store.table("main~2")
    _damage(store, layout.chunk_path(head.tensors["w"].chunks[0]))
    _damage(store, layout.chunk_path(oldest.tensors["b"].chunks[0]))
    report = store.repair(good, revs=["main"])
    assert report.ok and len(report.repaired) == 1  # only what main needs
    assert not store.verify().ok  # main~2's chunk is still damaged
    assert store.repair(good, revs=["main~2"]).ok and store.verify().ok


def test_a_branch_whose_snapshot_record_is_gone(saved: tuple[ckpt.Store, ckpt.Store]) -> None:
    store, good = saved
    head = store.resolve("main").id
    store.backend.delete([layout.snapshot_path(head)])
    assert any(d.object == "ref" for d in store.verify().damage)
    report = store.repair(good)
    assert report.ok and store.resolve("main").id == head


def test_a_revision_whose_own_record_is_damaged(saved: tuple[ckpt.Store, ckpt.Store]) -> None:
    store, good = saved
    head = store.resolve("main").id
    _damage(store, layout.snapshot_path(head))  # `main` cannot even be resolved to a readable snapshot
    report = store.repair(good, revs=["main"])
    assert report.ok and [(d.kind, d.object, d.digest) for d in report.repaired] == [("corrupt", "snapshot", head)]
    assert store.verify().ok


def test_a_damaged_record_on_the_way_to_a_revision(saved: tuple[ckpt.Store, ckpt.Store]) -> None:
    store, good = saved
    head, middle, oldest = (store.resolve(r).id for r in ("main", "main~1", "main~2"))
    chunk = store.table("main~2").tensors["w"].chunks[0]
    store.backend.delete([layout.snapshot_path(middle)])  # main~2 is found through main~1's parents
    _damage(store, layout.chunk_path(chunk))
    # on S3 the local record cache still knows main~1 (it would answer for it, as verify tells); another
    # machine's cache never saw it
    shutil.rmtree(os.environ["CKPT_RECORD_CACHE"], ignore_errors=True)
    with pytest.raises(ckpt.RevisionNotFoundError):
        store.resolve("main~2")

    report = store.repair(good, revs="main~2")  # one revision may be given as a string

    assert report.ok, report.unrepaired
    assert {(d.kind, d.object, d.digest) for d in report.repaired} == {
        ("missing", "snapshot", middle),
        ("corrupt", "chunk", chunk),
    }
    assert store.resolve("main~2").id == oldest and store.resolve("main").id == head
    assert store.verify().ok


def test_a_revision_the_source_cannot_resolve_is_reported(store: ckpt.Store, tmp_path: Path) -> None:
    store.save({"w": np.ones(4)}, message="one")
    empty = ckpt.init(str(tmp_path / "empty"))
    head = store.resolve("main").id
    store.backend.delete([layout.snapshot_path(head)])

    report = store.repair(empty, revs=["main~1"])

    assert not report.ok and report.repaired == () and report.bytes_copied == 0
    (left,) = report.unrepaired
    assert (left.kind, left.object, left.digest) == ("missing", "snapshot", head)
    assert "not repaired: the source" in left.message
    assert store.branches()["main"] == head  # the ref is left as it was


def test_the_good_copy_may_live_on_another_backend(saved: tuple[ckpt.Store, ckpt.Store], tmp_path: Path) -> None:
    store, good = saved
    import fsspec

    other = ckpt.init(f"memory://ckpt-repair-{tmp_path.name}", chunk_size=store.chunk_size)
    try:
        ckpt.sync(good, other, ["main"])
        digest = store.table("main").tensors["w"].chunks[0]
        _damage(store, layout.chunk_path(digest))
        report = store.repair(other)
        assert report.ok and [d.digest for d in report.repaired] == [digest]
    finally:
        fs = fsspec.filesystem("memory")
        fs.rm(fs._strip_protocol(other.url), recursive=True)
