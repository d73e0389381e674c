"""A save never deduplicates onto a damaged object, and sync never copies a ref whose chunks are not there whole.

A chunk (or a tensor table, or a snapshot record) found at its address is taken as stored only when it is
whole: a regular object of the right length with a valid header (a record: bytes that hash to its digest). A
damaged one is replaced by the bytes the save holds, which hash to that address (self-healing). The damage
is done through the store's own backend, on every backend (local folder, fsspec memory, S3 on moto).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pytest

import ckpt
from ckpt.store import store_parts

W = np.arange(4096, dtype=np.float32)  # 16 KiB: four 4 KiB chunks

DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda raw: raw[:50],
    "empty": lambda raw: b"",
    "bytes appended": lambda raw: raw + b"\0",
    "bad magic": lambda raw: b"XXXX" + raw[4:],
    "header says another length": lambda raw: raw[:8] + (len(raw) - 15).to_bytes(8, "little") + raw[16:],
}


def _chunks(store: ckpt.Store) -> list[str]:
    return sorted(e.path for e in store.backend.list("chunks/"))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_save_heals_a_damaged_chunk_instead_of_deduplicating_onto_it(store: ckpt.Store, damage: str) -> None:
    store.save({"w": W}, "main")
    path = _chunks(store)[1]
    raw = store.backend.read(path)
    store.backend.replace(path, DAMAGE[damage](raw))
    assert not store.verify().ok

    store.save({"w": W}, "copy", message="the same weights again")

    np.testing.assert_array_equal(store.load("copy")["w"], W)
    np.testing.assert_array_equal(store.load("main")["w"], W)  # healed for the first snapshot too
    assert store.backend.read(path) == raw
    assert store.verify().ok


def test_a_known_digest_is_not_trusted_onto_a_damaged_chunk(local_store: ckpt.Store) -> None:
    """The path the Checkpointer takes (digests already known, no hashing): a damaged chunk is still healed."""
    store = local_store
    snap = store.save({"w": W}, "main")
    digest = store.table(snap.id).tensors["w"].chunks[0]
    [path] = [p for p in _chunks(store) if p.endswith(digest)]
    raw = store.backend.read(path)
    store.backend.replace(path, raw[:20])
    objects = store_parts(store).objects
    piece = memoryview(W.tobytes())[:4096]
    assert objects.put_chunk(piece, digest, dtype="F32", compress=store.config.compression) == (digest, len(raw))
    assert store.backend.read(path) == raw
    assert store.verify().ok


@pytest.mark.parametrize("kind", ["symlink", "fifo-free folder"])
def test_a_chunk_that_is_not_a_regular_file(local_store: ckpt.Store, tmp_path: object, kind: str) -> None:
    store = local_store
    store.save({"w": W}, "main")
    path = _chunks(store)[0]
    full = os.path.join(store.url, path)
    raw = store.backend.read(path)
    os.unlink(full)
    if kind == "symlink":
        other = os.path.join(str(tmp_path), "other")
        with open(other, "wb") as f:
            f.write(raw)  # even the right bytes: a link is never an object
        os.symlink(other, full)
        store.save({"w": W}, "copy")
        assert not os.path.islink(full)
        with open(other, "rb") as f:
            assert f.read() == raw  # the file the link pointed to is left alone
        np.testing.assert_array_equal(store.load("copy")["w"], W)
        assert store.verify().ok
    else:
        os.mkdir(full)
        with open(os.path.join(full, "user-file"), "wb") as f:
            f.write(b"not ckpt's")
        with pytest.raises(ckpt.CorruptChunkError, match="cannot be replaced"):
            store.save({"w": W}, "copy")
        assert "copy" not in store.branches()  # refused, nothing committed
        assert os.path.exists(os.path.join(full, "user-file"))


def test_a_flipped_byte_of_the_right_length_is_found_by_verify(local_store: ckpt.Store) -> None:
    """The documented limit: a save checks length and header, not every byte; ``verify`` reads every byte."""
    store = local_store
    store.save({"w": W}, "main")
    path = _chunks(store)[0]
    raw = bytearray(store.backend.read(path))
    raw[100] ^= 1
    store.backend.replace(path, bytes(raw))
    store.save({"w": W}, "copy")
    report = store.verify()
    assert not report.ok
    assert any(path.rsplit("/", 1)[1][:12] in str(d) for d in report.damage)


@pytest.mark.parametrize("kind", ["tables/", "snapshots/"])
def test_a_damaged_record_is_rewritten_by_the_save_that_needs_it(store: ckpt.Store, kind: str) -> None:
    snap = store.save({"w": W}, "main", message="m")
    [path] = [e.path for e in store.backend.list(kind)]
    raw = store.backend.read(path)
    store.backend.replace(path, raw[:-3] + b"!!!")
    if kind == "tables/":
        store.save({"w": W}, "copy")  # the same tensors: the same table
    else:
        store_parts(store).objects.put_snapshot(snap.model_copy(update={"id": None}))  # the same record
    assert store.backend.read(path) == raw
    np.testing.assert_array_equal(store.load("main")["w"], W)
    assert store.verify().ok


# -- sync: a ref is copied only when every chunk it needs is at the destination -----------------------------


def test_sync_heals_a_damaged_chunk_on_the_destination(store: ckpt.Store, tmp_path: object) -> None:
    src = ckpt.init(os.path.join(str(tmp_path), "src"), chunk_size=4096)
    src.save({"w": W}, "main")
    ckpt.sync(src, store)
    path = _chunks(store)[2]
    raw = store.backend.read(path)
    store.backend.replace(path, raw[:30])
    src.save({"w": W, "v": W[:10]}, "main")  # a new snapshot sharing the damaged chunk
    report = ckpt.sync(src, store)
    assert not report.conflicts
    assert store.backend.read(path) == raw
    np.testing.assert_array_equal(store.load("main")["w"], W)
    assert store.verify().ok


def test_sync_does_not_copy_a_release_pruned_in_the_source(tmp_path: object) -> None:
    src = ckpt.init(os.path.join(str(tmp_path), "src"))
    a = src.save({"w": W}, "main", model="m")
    src.save({"w": W * 0}, "main")
    src.freeze(a.id, name="m-rel")
    store_parts(src).mark_pruned(a.id, "planted beside a frozen release")
    dst = ckpt.init(os.path.join(str(tmp_path), "dst"))
    report = ckpt.sync(src, dst)
    assert any("m-rel" in c and "pruned in the source" in c for c in report.conflicts)
    assert "m-rel" not in dst.tags()
    assert "refs/tags/m-rel" not in report.refs
    np.testing.assert_array_equal(dst.load("main")["w"], W * 0)
    assert dst.verify().ok


def test_sync_does_not_copy_a_release_whose_chunks_the_mirror_collected(store: ckpt.Store, tmp_path: object) -> None:
    src = ckpt.init(os.path.join(str(tmp_path), "src"), chunk_size=4096)
    b = src.save({"w": W}, "main", model="m")
    src.save({"w": W + 1}, "main")
    ckpt.sync(src, store)
    store.prune(b.id)
    store.gc(grace=timedelta(0))
    src.freeze(b.id, name="m-rel")
    report = ckpt.sync(src, store)
    assert any("m-rel" in c and "pruned in the destination" in c for c in report.conflicts)
    assert "m-rel" not in store.tags()
    assert store.verify().ok


def test_digests_a_caller_claims_are_not_trusted(local_store: ckpt.Store) -> None:
    """A ``TensorSource`` claiming the digests of other, stored bytes: the store hashes what it is given."""
    store = local_store
    snap = store.save({"w": W}, "main")
    claimed = store.table(snap.id).tensors["w"].chunks
    other = np.full_like(W, 7.0)
    src = ckpt.TensorSource("F32", other.shape, "numpy", memoryview(other).cast("B"), other, claimed)
    store.save({"w": src}, "other")
    np.testing.assert_array_equal(store.load("other")["w"], other)
    assert store.table(store.resolve("other").id).tensors["w"].chunks != claimed
    assert store.verify().ok


def test_freeze_without_verify_refuses_a_truncated_chunk(local_store: ckpt.Store) -> None:
    """``freeze(verify=False)`` checks each chunk is whole (length, header), not only that it exists."""
    store = local_store
    snap = store.save({"w": W}, "main", model="m")
    path = _chunks(store)[1]
    store.backend.replace(path, store.backend.read(path)[:40])
    with pytest.raises(ckpt.MissingObjectError, match="missing from the store or damaged"):
        store.freeze(snap.id, name="m-rel", verify=False)
    assert "m-rel" not in store.tags()
