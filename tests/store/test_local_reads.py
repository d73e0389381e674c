"""Reading local raw chunks straight into their tensors, in pieces hashed as they land (``_local_reads``).

Every read path of a load on a local store: tensors of many chunks (read in parallel into their one allocation),
``into=`` (in place), tied tensors, numpy arrays, prefixes, ``mmap=True``, and encoded chunks among raw ones in
one tensor; damage anywhere in a tensor is named; an S3 store's path is unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ckpt
from ckpt.errors import CorruptChunkError
from ckpt.store import _chunk_reads, _local_reads
from ckpt.store import _layout as layout

pytestmark = pytest.mark.torch

CHUNK = 4096


@pytest.fixture(autouse=True)
def _small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces smaller than a chunk and not dividing it, so that every chunk is read in several pieces."""
    monkeypatch.setattr(_local_reads, "READ_PIECE", 1000)


def raw_store(tmp_path: Path) -> ckpt.Store:
    return ckpt.init(str(tmp_path / "store"), chunk_size=CHUNK, compression=False)


def noise(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` incompressible bytes as a uint8 tensor."""
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def chunk_file(store: ckpt.Store, digest: str) -> Path:
    return Path(store.url) / layout.chunk_path(digest)


def codec(store: ckpt.Store, digest: str) -> int:
    return chunk_file(store, digest).read_bytes()[5]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (random bits make NaNs, which ``torch.equal`` calls different)."""
    as_bytes = [bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy()) for t in (a, b)]
    return a.dtype == b.dtype and a.shape == b.shape and as_bytes[0] == as_bytes[1]


def big_state() -> dict[str, Any]:
    """A tensor of 7 chunks and a bit (the last chunk short), one of exactly 2, and a small one."""
    return {
        "embed": noise(7 * CHUNK + 123).view(-1),
        "w": noise(2 * CHUNK, seed=1).view(torch.float32).reshape(32, 64),
        "b": noise(64, seed=2).view(torch.int16),
    }


@pytest.mark.parametrize("mmap", [False, True])
def test_a_tensor_of_many_chunks_is_read_into_its_memory_bytes_equal(
    tmp_path: Path, mmap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = raw_store(tmp_path)
    state = big_state()
    store.save({"model": state})
    assert len(store.table("main").tensors["model/embed"].chunks) == 8
    read = []

    def counted(path: str, digest: str, out: memoryview, **kw: Any) -> bool:
        read.append(out.nbytes)
        return _local_reads.read_raw_into(path, digest, out, **kw)

    monkeypatch.setattr(_chunk_reads, "read_raw_into", counted)
    back = store.load("main", mmap=mmap)["model"]
    assert sorted(read) == sorted([CHUNK] * 7 + [123] + [CHUNK] * 2 + [64])  # every chunk, in its place
    assert all(same(back[k], v) for k, v in state.items())


def test_a_damaged_middle_chunk_names_the_tensor(tmp_path: Path) -> None:
    store = raw_store(tmp_path)
    store.save({"model": big_state()})
    middle = store.table("main").tensors["model/embed"].chunks[3]
    path = chunk_file(store, middle)
    data = bytearray(path.read_bytes())
    data[16 + 2500] ^= 0x01  # one bit, in the third piece of the chunk
    path.write_bytes(bytes(data))
    for mmap in (False, True):
        with pytest.raises(CorruptChunkError, match="do not match its digest") as e:
            store.load("main", mmap=mmap)
        assert e.value.tensor == "model/embed" and e.value.digest == middle
        assert "model/embed" in str(e.value)


@pytest.mark.parametrize("change", ["append", "truncate"])
@pytest.mark.parametrize("tensor", ["model/embed", "model/b"])  # read in pieces; read in one call
def test_a_chunk_of_another_size_is_refused_verified_or_not(tmp_path: Path, change: str, tensor: str) -> None:
    store = raw_store(tmp_path)
    store.save({"model": big_state()})
    chunks = store.table("main").tensors[tensor].chunks
    digest = chunks[min(5, len(chunks) - 1)]
    path = chunk_file(store, digest)
    data = path.read_bytes()
    path.write_bytes(data + b"\0" if change == "append" else data[:-1])
    message = "bytes follow" if change == "append" else "holds"
    for verify in (True, False):
        with pytest.raises(CorruptChunkError, match=message) as e:
            store.load("main", verify=verify)
        assert e.value.tensor == tensor


def test_into_fills_existing_tensors_in_place(tmp_path: Path) -> None:
    store = raw_store(tmp_path)
    state = big_state()
    store.save({"model": state})
    buffers = {f"model/{k}": torch.zeros_like(v) for k, v in state.items()}
    back = store.load("main", into=buffers)["model"]
    for name, t in state.items():
        assert back[name] is buffers[f"model/{name}"]
        assert same(back[name], t)


def test_tied_tensors_of_many_chunks_load_once_as_one(tmp_path: Path) -> None:
    store = raw_store(tmp_path)
    shared = noise(5 * CHUNK + 7, seed=3)
    store.save({"model": {"embed.weight": shared, "lm_head.weight": shared}})
    back = store.load("main")["model"]
    assert back["embed.weight"] is back["lm_head.weight"]
    assert torch.equal(back["embed.weight"], shared)


def test_numpy_arrays_of_many_chunks(tmp_path: Path) -> None:
    store = raw_store(tmp_path)
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal(3 * CHUNK // 8 + 5), "b": rng.integers(0, 9, (40, 70), dtype=np.int64)}
    store.save({"model": arrays})
    for mmap in (False, True):
        back = store.load("main", mmap=mmap)["model"]
        for name, a in arrays.items():
            assert isinstance(back[name], np.ndarray) and back[name].dtype == a.dtype
            np.testing.assert_array_equal(back[name], a)


def test_a_prefix_reads_only_its_tensors(tmp_path: Path) -> None:
    store = raw_store(tmp_path)
    state = big_state()
    store.save({"model": state, "other": {"x": noise(3 * CHUNK, seed=9)}})
    for digest in store.table("main").tensors["other/x"].chunks:
        chunk_file(store, digest).unlink()  # a prefix load never opens them
    back = store.load("main", prefix="model/")
    assert list(back) == ["model"]
    assert same(back["model"]["embed"], state["embed"])


def test_an_encoded_chunk_among_raw_ones_in_one_tensor(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=CHUNK)  # compression on: zeros compress, noise not
    t = torch.cat([noise(2 * CHUNK), torch.zeros(2 * CHUNK, dtype=torch.uint8), noise(CHUNK + 11, seed=4)])
    store.save({"model": {"t": t}})
    chunks = store.table("main").tensors["model/t"].chunks
    codecs = [codec(store, d) for d in chunks]
    assert 0 in codecs and 1 in codecs  # raw and byte-grouped in one tensor
    for mmap in (False, True):
        assert torch.equal(store.load("main", mmap=mmap)["model"]["t"], t)
    raw = next(d for d, c in zip(chunks, codecs, strict=True) if c == 0)
    path = chunk_file(store, raw)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptChunkError) as e:
        store.load("main")
    assert e.value.tensor == "model/t" and e.value.digest == raw


def test_unverified_loads_read_the_same_bytes(tmp_path: Path) -> None:
    store = raw_store(tmp_path)
    state = big_state()
    store.save({"model": state})
    back = store.load("main", verify=False)["model"]
    assert all(same(back[k], v) for k, v in state.items())


@pytest.mark.s3
def test_an_s3_store_reads_through_its_backend(s3_server: dict[str, Any]) -> None:
    import uuid

    store = ckpt.init(f"s3://ckpt-test/{uuid.uuid4().hex[:10]}", chunk_size=CHUNK, compression=False, **s3_server)
    state = big_state()
    store.save({"model": state})
    for mmap in (False, True):  # mmap=True on an object store reads (nothing to map)
        back = store.load("main", mmap=mmap)["model"]
        assert all(same(back[k], v) for k, v in state.items())


def test_a_delta_chunk_inside_a_tensor_of_many_chunks(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=CHUNK, delta_depth=4)
    base = torch.cat([torch.zeros(3 * CHUNK, dtype=torch.uint8), noise(CHUNK + 5)])
    store.save({"model": {"t": base}})
    child = base.clone()
    child[CHUNK + 10] = 7  # one byte of the second chunk: stored as a delta against the parent's
    store.save({"model": {"t": child}})
    chunks = store.table("main").tensors["model/t"].chunks
    assert 2 in [codec(store, d) for d in chunks]
    for mmap in (False, True):
        assert torch.equal(store.load("main", mmap=mmap)["model"]["t"], child)
        assert torch.equal(store.load("main~1", mmap=mmap)["model"]["t"], base)


def test_verify_of_encoded_chunks_finds_damage_after_good_ones(tmp_path: Path) -> None:
    """verify decodes a local encoded chunk from where it lies into one buffer per worker, reused: a damaged
    chunk after good ones is still found (nothing of an earlier chunk stands in for it)."""
    store = ckpt.init(str(tmp_path / "store"), chunk_size=CHUNK)
    ramp = (torch.arange(4 * CHUNK) % 251).to(torch.uint8)  # compresses (codec 1); no two chunks alike
    store.save({"model": {"t": ramp.reshape(4, CHUNK)}})
    chunks = store.table("main").tensors["model/t"].chunks
    assert len(set(chunks)) == 4 and [codec(store, d) for d in chunks] == [1] * 4
    assert store.verify().ok
    path = chunk_file(store, chunks[-1])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    report = store.verify()
    assert [d.digest for d in report.damage] == [chunks[-1]]
    with pytest.raises(CorruptChunkError) as e:
        store.load("main")
    assert e.value.tensor == "model/t"
