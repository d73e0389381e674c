"""A local store never reads, writes or deletes outside its folder through a symbolic link, and no error
message quotes the bytes of what it read."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.errors import BackendError, CorruptChunkError, RecordError
from ckpt.storage import LocalBackend
from ckpt.store import _layout as layout

NOW = timedelta(0)
SECRET = b"SECRET-token-0123456789"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the store, with files that must survive everything the store does."""
    folder = tmp_path / "important"
    folder.mkdir()
    (folder / "keep.txt").write_bytes(SECRET)
    (folder / "old").write_bytes(b"x" * 100)
    os.utime(folder / "old", (0, 0))  # older than any grace period
    return folder


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["tmp", "chunks", "tables", "snapshots", "logs", "refs", "pruned", "locks"])
def test_a_store_whose_folder_is_a_link_is_refused(tmp_path: Path, outside: Path, name: str) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096)
    store.save({"w": np.arange(8.0)})
    target = root / name
    if target.exists():
        for p in sorted(target.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        target.rmdir()
    target.symlink_to(outside)
    before = files_under(outside)
    with pytest.raises(BackendError) as err:
        ckpt.open(str(root))
    assert "symbolic link" in str(err.value) and err.value.hint and "never follows" in err.value.hint
    assert files_under(outside) == before


@pytest.mark.parametrize("name", ["tmp", "chunks", "logs"])
def test_a_link_made_under_an_open_store_is_never_followed(tmp_path: Path, outside: Path, name: str) -> None:
    """The store was opened before the link appeared: every operation still refuses to go through it."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096)
    store.save({"w": np.arange(8.0)})
    target = root / name
    moved = tmp_path / f"{name}.real"
    target.rename(moved)
    target.symlink_to(outside)
    before = files_under(outside)
    with pytest.raises(BackendError, match="symbolic link"):
        store.gc(grace=NOW)
    if name == "logs":  # the branch moves (the commit point); the reflog entry is refused, with a warning
        with pytest.warns(UserWarning, match="reflog entry could not be written"):
            store.save({"w": np.arange(9.0)})
    else:
        with pytest.raises(BackendError, match="symbolic link"):
            store.save({"w": np.arange(9.0)})
    assert files_under(outside) == before  # nothing deleted, nothing written


def test_gc_through_a_linked_tmp_deletes_nothing_outside(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096)
    store.save({"w": np.arange(8.0)})
    (root / "tmp").rmdir() if (root / "tmp").exists() else None
    (root / "tmp").symlink_to(outside)
    with pytest.raises(BackendError, match="symbolic link"):
        store.gc(grace=NOW)
    assert files_under(outside) == {"keep.txt": SECRET, "old": b"x" * 100}


def test_a_chunk_that_is_a_link_is_refused_and_its_target_never_quoted(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096)
    store.save({"w": np.arange(8.0)})
    digest = store.table("main").tensors["w"].chunks[0]
    path = Path(store.backend.local_path(layout.chunk_path(digest)))
    path.unlink()
    path.symlink_to(outside / "keep.txt")
    store = ckpt.open(str(root))
    with pytest.raises(CorruptChunkError) as err:
        store.load("main")
    assert "symbolic link" in str(err.value) and "SECRET" not in str(err.value)
    for mmap in (False, True):
        with pytest.raises(CorruptChunkError):
            store.load("main", mmap=mmap)
    with pytest.raises(CorruptChunkError):
        b"".join(store.tensor_bytes("main", "w"))
    damage = store.verify().damage
    assert [(d.kind, d.object, d.digest) for d in damage] == [("corrupt", "chunk", digest)]
    assert all("SECRET" not in d.message for d in damage)
    assert store.gc(grace=NOW).chunks == 0  # a live chunk (damaged) is kept; gc never reads chunks
    store.reset("main", store.save({"w": np.ones(8)}, "other").id)
    store.delete_branch("other")
    assert store.gc(grace=NOW, expire_reflog=NOW).chunks == 1  # now unneeded: the link itself is removed
    assert not os.path.lexists(path)
    assert files_under(outside)["keep.txt"] == SECRET


def test_a_chunk_that_is_a_fifo_does_not_hang_a_reader(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096)
    store.save({"w": np.arange(8.0)})
    digest = store.table("main").tensors["w"].chunks[0]
    path = store.backend.local_path(layout.chunk_path(digest))
    os.unlink(path)
    os.mkfifo(path)
    with pytest.raises(CorruptChunkError, match="regular file"):
        store.load("main")
    assert [d.kind for d in store.verify().damage] == ["corrupt"]


def test_records_and_refs_that_are_links_are_refused(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096)
    snap = store.save({"w": np.arange(8.0)})
    table = Path(store.backend.local_path(layout.table_path(snap.table)))
    table.unlink()
    table.symlink_to(outside / "keep.txt")
    with pytest.raises(ckpt.IntegrityError) as err:
        store.load("main")
    assert "SECRET" not in str(err.value)
    ref = root / "refs" / "heads" / "evil"
    ref.symlink_to(outside / "keep.txt")
    damage = store.verify().damage
    assert {d.object for d in damage} == {"table", "ref"} and all("SECRET" not in d.message for d in damage)


def test_error_messages_never_quote_object_bytes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=4096)
    snap = store.save({"w": np.arange(8.0)})
    digest = store.table("main").tensors["w"].chunks[0]
    # a chunk whose header is someone's secret
    store.backend.replace(layout.chunk_path(digest), SECRET + b"\x00" * 64)
    with pytest.raises(CorruptChunkError) as err:
        store.load("main")
    assert "SECRET" not in str(err.value) and "token" not in str(err.value)
    assert all("SECRET" not in d.message for d in store.verify().damage)
    # a branch, a tag and a reflog entry holding a secret in a field
    store.backend.replace("refs/heads/main", b'{"id": "SECRET-token-0123456789"}')
    with pytest.raises(RecordError) as rerr:
        store.resolve("main")
    assert "SECRET" not in str(rerr.value)
    store.backend.replace(
        "refs/tags/t", b'{"id": "' + snap.id.encode() + b'", "created_at": "x", "extra": "SECRET-token"}'
    )
    with pytest.raises(RecordError) as terr:
        store.resolve("t")
    assert "SECRET" not in str(terr.value)
    assert all("SECRET" not in d.message for d in store.verify().damage)


def test_the_root_itself_may_be_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    store = ckpt.init(str(real), chunk_size=4096)
    store.save({"w": np.arange(8.0)})
    (tmp_path / "alias").symlink_to(real)
    again = ckpt.open(str(tmp_path / "alias"))
    assert again.load("main")["w"].tolist() == list(np.arange(8.0))
    assert again.verify().ok and again.gc(grace=NOW).chunks == 0


def test_local_backend_confines_every_verb(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "b"
    backend = LocalBackend(str(root))
    backend.put_if_absent("a/x", b"1")
    (root / "link").symlink_to(outside)
    verbs = [
        lambda: backend.read("link/keep.txt"),
        lambda: backend.read_into("link/keep.txt", [memoryview(bytearray(4))]),
        lambda: backend.put_if_absent("link/new", b"2"),
        lambda: backend.replace("link/new", b"2"),
        lambda: backend.compare_and_swap("link/new", None, b"2"),
        lambda: backend.delete(["link/keep.txt"]),
        lambda: list(backend.list("link/")),
        lambda: backend.exists("link/keep.txt"),
    ]
    for verb in verbs:
        with pytest.raises(BackendError, match="symbolic link"):
            verb()
    assert files_under(outside) == {"keep.txt": SECRET, "old": b"x" * 100}
