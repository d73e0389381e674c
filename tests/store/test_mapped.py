"""``Store.load(mmap=True)`` maps a tensor of many raw chunks as one contiguous copy-on-write view (``_mapped``,
``_regions``): bytes equal, files never written, damage named, nothing left mapped, and a read where it cannot map.
"""

from __future__ import annotations

import errno
import gc
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ckpt
from ckpt.errors import CorruptChunkError
from ckpt.store import _chunk_reads, _mapped, _regions, _transfer
from ckpt.store import _layout as layout

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="placed maps are Linux only"),
]

CHUNK = 2 * _regions.PAGE_SIZE


@pytest.fixture(autouse=True)
def _map_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_transfer, "MMAP_MIN_BYTES", 1)


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def state() -> dict[str, Any]:
    """Tensors of 3 chunks and a bit (a short last chunk of 100 bytes), exactly 4, and 5 chunks."""
    return {
        "embed": noise(3 * CHUNK + 100),
        "w": noise(4 * CHUNK, seed=1).view(torch.float32).reshape(-1, 64),
        "head": noise(5 * CHUNK - 16, seed=2).view(torch.int16),  # ends just before a page boundary
    }


def store_of(tmp_path: Path, chunk_size: int = CHUNK, compression: bool = False) -> ckpt.Store:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=chunk_size, compression=compression)
    store.save({"model": state()})
    return store


def as_bytes(t: Any) -> bytes:
    return (
        bytes(np.ascontiguousarray(t).reshape(-1).view(np.uint8))
        if isinstance(t, np.ndarray)
        else bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    )


def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The tensors ``map_chunks`` mapped (their chunk counts)."""
    mapped: list[int] = []
    real = _mapped.map_chunks

    def spy(objects: Any, digests: Any, *a: Any, **kw: Any) -> Any:
        out = real(objects, digests, *a, **kw)
        if out is not None:
            mapped.append(len(digests))
        return out

    monkeypatch.setattr(_transfer, "map_chunks", spy)
    return mapped


def region_lines() -> int:
    """Mappings of chunk files of a test store (the whole map count also moves with thread stacks and malloc
    arenas of other work in the process, so it is not counted)."""
    with open("/proc/self/maps") as f:
        return sum("/store/chunks/" in line for line in f)


@pytest.mark.parametrize("framework", ["torch", "numpy"])
@pytest.mark.parametrize("verify", [True, False])
def test_many_chunks_map_as_one_view_bytes_equal(
    tmp_path: Path, framework: str, verify: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(tmp_path)
    mapped = counted(monkeypatch)
    back = store.load("main", mmap=True, verify=verify, framework=framework)["model"]  # type: ignore[arg-type]
    assert sorted(mapped) == [4, 4, 5]
    for name, t in state().items():
        got = back[name]
        assert isinstance(got, np.ndarray if framework == "numpy" else torch.Tensor)
        assert as_bytes(got) == as_bytes(t) and tuple(got.shape) == tuple(t.shape)


def test_writing_to_a_mapped_tensor_never_changes_the_store(tmp_path: Path) -> None:
    store = store_of(tmp_path)
    files = {p: p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()}
    back = store.load("main", mmap=True)["model"]
    for t in back.values():
        t.view(-1).view(torch.uint8).fill_(0xAB)  # every byte, the copied boundary pages included
    assert all(p.read_bytes() == data for p, data in files.items())
    assert store.verify().ok
    again = store.load("main", mmap=True)["model"]
    assert all(as_bytes(again[k]) == as_bytes(v) for k, v in state().items())


def test_a_damaged_middle_chunk_names_the_tensor_and_leaves_nothing_mapped(tmp_path: Path) -> None:
    store = store_of(tmp_path)
    store.load("main", mmap=True)  # warm up: libraries, pools
    middle = store.table("main").tensors["model/head"].chunks[2]
    path = tmp_path / "store" / layout.chunk_path(middle)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # in the last 16 bytes: the bytes copied into the boundary page
    path.write_bytes(bytes(data))
    gc.collect()
    before = region_lines()
    with pytest.raises(CorruptChunkError, match="do not match its digest") as e:
        store.load("main", mmap=True)
    assert e.value.tensor == "model/head" and e.value.digest == middle
    del e  # its traceback holds the tensors mapped before the damage was found
    gc.collect()
    assert region_lines() <= before


@pytest.mark.parametrize("verify", [True, False])
def test_appended_or_missing_bytes_are_refused(tmp_path: Path, verify: bool) -> None:
    store = store_of(tmp_path)
    digest = store.table("main").tensors["model/embed"].chunks[1]
    path = tmp_path / "store" / layout.chunk_path(digest)
    data = path.read_bytes()
    for changed, message in ((data + b"\0", "bytes follow"), (data[:-1], "holds")):
        path.write_bytes(changed)
        with pytest.raises(CorruptChunkError, match=message) as e:
            store.load("main", mmap=True, verify=verify)
        assert e.value.tensor == "model/embed"
    path.write_bytes(data)


def test_a_linked_chunk_is_refused(tmp_path: Path) -> None:
    store = store_of(tmp_path)
    digest = store.table("main").tensors["model/w"].chunks[2]
    path = tmp_path / "store" / layout.chunk_path(digest)
    copy = tmp_path / "elsewhere"
    copy.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(copy)
    with pytest.raises(CorruptChunkError, match="symbolic link") as e:
        store.load("main", mmap=True)
    assert e.value.tensor == "model/w"


def test_the_region_is_unmapped_when_the_tensor_goes(tmp_path: Path) -> None:
    store = store_of(tmp_path)
    store.load("main", mmap=True)  # warm up
    gc.collect()
    before = region_lines()
    back = store.load("main", mmap=True)["model"]
    assert region_lines() > before
    view = back["w"][1:3]  # a view keeps it mapped
    del back
    gc.collect()
    assert float(view.sum()) == float(state()["w"][1:3].sum())
    del view
    gc.collect()
    assert region_lines() <= before


def test_a_compressed_chunk_among_raw_ones_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=CHUNK, compression=True)
    embed = noise(4 * CHUNK)
    embed[CHUNK : 2 * CHUNK] = 7  # one compressible chunk among incompressible ones
    store.save({"model": {"embed": embed}})
    codecs = [
        (tmp_path / "store" / layout.chunk_path(d)).read_bytes()[5]
        for d in store.table("main").tensors["model/embed"].chunks
    ]
    assert codecs.count(0) == 3 and codecs[1] != 0
    mapped = counted(monkeypatch)
    back = store.load("main", mmap=True)["model"]
    assert mapped == [] and as_bytes(back["embed"]) == as_bytes(embed)


def test_a_chunk_size_of_no_whole_pages_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(tmp_path, chunk_size=CHUNK + 8)
    mapped = counted(monkeypatch)
    back = store.load("main", mmap=True)["model"]
    assert mapped == []
    assert all(as_bytes(back[k]) == as_bytes(v) for k, v in state().items())


def test_where_placed_maps_are_not_available_the_tensor_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(tmp_path)
    monkeypatch.setattr(_mapped, "available", lambda: False)
    mapped = counted(monkeypatch)
    back = store.load("main", mmap=True)["model"]
    assert mapped == []
    assert all(as_bytes(back[k]) == as_bytes(v) for k, v in state().items())


def test_a_tensor_used_twice_and_a_chunk_repeated_inside_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=CHUNK, compression=False)
    block = noise(CHUNK, seed=4)
    repeated = torch.cat([block, block, noise(CHUNK, seed=5), block])  # one chunk file mapped three times
    store.save({"model": {"a": repeated, "b": repeated.clone()}})
    mapped = counted(monkeypatch)
    back = store.load("main", mmap=True)["model"]
    assert mapped and all(n == 4 for n in mapped)
    back["a"][:10] = 0  # copy-on-write: neither the other tensor nor the shared chunk changes
    assert as_bytes(back["b"]) == as_bytes(repeated) and as_bytes(back["a"][CHUNK:]) == as_bytes(repeated[CHUNK:])
    assert store.verify().ok


def test_lazy_tensors_map_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(tmp_path)
    mapped = counted(monkeypatch)
    lazy = store.tensors("main", mmap=True)
    assert as_bytes(lazy["model/head"]) == as_bytes(state()["head"]) and mapped == [5]


def test_out_of_mappings_the_tensor_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mmap`` failing with ``ENOMEM`` (``vm.max_map_count`` reached) reads the tensor; nothing stays mapped."""
    store = store_of(tmp_path)
    store.load("main", mmap=True)  # warm up
    real = _regions.Region.map_file
    calls = []

    def refuse_third(self: _regions.Region, *a: Any) -> None:
        calls.append(a)
        if len(calls) % 3 == 0:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        real(self, *a)

    monkeypatch.setattr(_regions.Region, "map_file", refuse_third)
    gc.collect()
    before = region_lines()
    back = store.load("main", mmap=True)["model"]
    assert all(as_bytes(back[k]) == as_bytes(v) for k, v in state().items())
    del back
    gc.collect()
    assert calls and region_lines() <= before


def test_a_one_chunk_tensor_out_of_mappings_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-chunk tensor whose ``mmap`` fails with ``ENOMEM`` is read, not reported as a corrupt chunk."""
    store = ckpt.init(str(tmp_path / "one"), compression=False, pack_size=0)
    big = {"w": torch.arange(1 << 19, dtype=torch.float32)}  # 2 MiB: one chunk, above the mapping threshold
    store.save({"model": big})

    def out_of_mappings(*a: Any, **k: Any) -> Any:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(_chunk_reads.mmap, "mmap", out_of_mappings)
    back = store.load("main", mmap=True)["model"]
    monkeypatch.undo()
    assert torch.equal(back["w"], big["w"])
