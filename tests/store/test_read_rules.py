"""One rule for a stored chunk, applied by every read path; work bounded by what the store really holds."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.errors import CorruptChunkError, IntegrityError, StateError
from ckpt.interop import export
from ckpt.model import FileEntry, Snapshot, TensorEntry, TensorTable, format_time, utcnow
from ckpt.store import _layout as layout
from ckpt.store import store_parts
from ckpt.store._objects import CHUNK_HEADER_SIZE

MiB = 1 << 20
DATA = np.arange(MiB // 4, dtype=np.float32)  # 1 MiB: one chunk, big enough to be memory-mapped


def _appended(raw: bytes) -> bytes:
    return raw + b"\x00\x01"


def _truncated(raw: bytes) -> bytes:
    return raw[:-3]


def _flipped(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])


def _bad_magic(raw: bytes) -> bytes:
    return b"kcpt" + raw[4:]


def _header_says_less(raw: bytes) -> bytes:
    n = int.from_bytes(raw[8:16], "little") - 4
    return raw[:8] + n.to_bytes(8, "little") + raw[16:-4]


DAMAGE = {
    "appended": _appended,
    "truncated": _truncated,
    "flipped": _flipped,
    "bad-magic": _bad_magic,
    "header-says-less": _header_says_less,
}


@pytest.fixture
def damaged(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[ckpt.Store, ckpt.Store, str]:
    """A local store whose one chunk (a tensor's and an attached file's) is damaged, and a good replica."""
    store = ckpt.init(str(tmp_path / "store"), chunk_size=2 * MiB)
    store.save({"w": DATA}, files={"blob.bin": DATA.tobytes()})
    good = ckpt.init(str(tmp_path / "replica"), chunk_size=2 * MiB)
    ckpt.sync(store, good)
    digest = store.table("main").tensors["w"].chunks[0]
    assert store.table("main").files["blob.bin"].chunks == (digest,)
    path = layout.chunk_path(digest)
    store.backend.replace(path, DAMAGE[request.param](store.backend.read(path)))
    return store, good, digest


READS: dict[str, Callable[[ckpt.Store], Any]] = {
    "load": lambda s: s.load("main"),
    "load-mmap": lambda s: s.load("main", mmap=True),
    "load-into": lambda s: s.load("main", into={"w": np.empty_like(DATA)}),
    "lazy": lambda s: s.tensors("main")["w"],
    "lazy-mmap": lambda s: s.tensors("main", mmap=True)["w"],
    "tensor_bytes": lambda s: b"".join(s.tensor_bytes("main", "w")),
    "chunk_bytes": lambda s: s.tensors("main").chunk_bytes("w", 0),
    "export": lambda s: export(s, "main", Path(s.url).parent / uuid.uuid4().hex),
    "files": lambda s: s.files("main"),
    "sync": lambda s: ckpt.sync(s, ckpt.init(str(Path(s.url).parent / uuid.uuid4().hex), chunk_size=2 * MiB)),
}


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_every_read_path_refuses_the_same_damaged_chunk(damaged: tuple[ckpt.Store, ckpt.Store, str]) -> None:
    store, good, digest = damaged
    for name, read in READS.items():
        with pytest.raises(CorruptChunkError) as err:
            read(store)
        assert err.value.digest == digest, name
    report = store.verify()
    assert [(d.kind, d.object, d.digest) for d in report.damage] == [("corrupt", "chunk", digest)]
    repaired = store.repair(good)
    assert repaired.ok and [d.digest for d in repaired.repaired] == [digest]
    for read in READS.values():
        read(store)  # every path accepts the repaired chunk
    assert np.array_equal(store.load("main")["w"], DATA)


def test_a_copying_load_never_changes_when_the_chunk_file_does(tmp_path: Path) -> None:
    """The default load copies: what verify checked is what you keep, whatever happens to the file later.

    With ``mmap=True`` the tensor is a private (copy-on-write) mapping: on Linux it still shows later changes to
    pages it has not written to, the documented price of zero-copy.
    """
    store = ckpt.init(str(tmp_path / "store"), chunk_size=2 * MiB, compression=False)  # raw: mappable
    store.save({"w": DATA})
    digest = store.table("main").tensors["w"].chunks[0]
    copied = store.load("main")["w"]
    mapped = store.load("main", mmap=True)["w"]
    with open(store.backend.local_path(layout.chunk_path(digest)), "r+b") as f:  # edited in place
        f.seek(CHUNK_HEADER_SIZE)
        f.write(b"\xff" * 16)
    assert np.array_equal(copied, DATA)
    assert not np.array_equal(mapped, DATA)  # the trade-off mmap=True accepts


def _hostile(store: ckpt.Store, *, claim: int, file: bool = False) -> str:
    """A branch ``evil`` whose table claims ``claim`` bytes over one real 16-byte chunk; returns the chunk."""
    real = store.save({"x": np.arange(4, dtype=np.float32)}, "real")
    digest = store.table(real.id).tensors["x"].chunks[0]
    table = TensorTable(
        chunk_size=claim,
        tensors={} if file else {"w": TensorEntry(dtype="U8", shape=(claim,), chunks=(digest,), kind="numpy")},
        tree={"$dict": []} if file else {"$dict": [["w", {"$tensor": "w"}]]},
        files={"big.bin": FileEntry(size=claim, chunks=(digest,))} if file else {},
    )
    record = Snapshot(
        table=store_parts(store).objects.put_table(table),
        created_at=format_time(utcnow()),
        ckpt_version="0",
        tensor_bytes=claim,
    )
    snap = store_parts(store).objects.put_snapshot(record)
    store_parts(store).refs.move_branch("evil", None, snap.id, action="commit")
    return digest


@pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)
def test_verify_memory_is_bounded_by_what_the_store_holds(store: ckpt.Store) -> None:
    digest = _hostile(store, claim=3 << 30)
    tracemalloc.start()
    try:
        report = store.verify()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * MiB, peak  # a claim of 3 GiB over a 16-byte chunk reads 16 bytes
    assert [(d.kind, d.object, d.digest) for d in report.damage] == [("corrupt", "chunk", digest)]
    assert "3221225472" in report.damage[0].message  # the claim is named, not the bytes
    assert store.repair().unrepaired  # nothing to put back: the table is what lies
    with pytest.raises(CorruptChunkError):
        store.load("evil")
    with pytest.raises(CorruptChunkError):
        b"".join(store.tensor_bytes("evil", "w"))


@pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)
def test_a_file_claiming_gigabytes_reads_only_what_is_stored(store: ckpt.Store) -> None:
    _hostile(store, claim=3 << 30, file=True)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptChunkError):
            store.files("evil")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * MiB, peak


def test_an_absurd_claim_is_a_clear_error(local_store: ckpt.Store) -> None:
    _hostile(local_store, claim=1 << 62)
    with pytest.raises(StateError, match="cannot allocate"):
        local_store.load("evil")
    assert [d.kind for d in local_store.verify().damage] == ["corrupt"]
    with pytest.raises(IntegrityError):
        local_store.freeze("evil", name="evil-1", verify=True)
