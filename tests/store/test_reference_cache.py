"""The in-process reference cache (``CKPT_REFERENCE_CACHE``): a delta save reuses the raw bytes this process
stored at its previous save instead of decoding the parent's chunk through its chain.

What a user checks: the store is byte for byte the one written with the cache off (same objects, same codecs,
same chain depths), also from a new process whose cache is empty; bytes changed in the caller's buffer after (or
while) a chunk is stored never reach a delta; the cache stays within its budget; a cached chunk that is gone
from the store is not used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import ckpt
from ckpt.store import _layout as layout
from ckpt.store import _objects
from ckpt.store._chunk_reads import ChunkReads
from ckpt.store._encoded import MIN_ENCODE
from ckpt.store._objects import hash_chunk
from ckpt.store._reference_cache import REFERENCES, STALE, ReferenceCache

CHUNK = 16 << 10


pytestmark = pytest.mark.usefixtures("empty_reference_cache")


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The digests of the chunks decoded through their chain (the real decoder, counted)."""
    seen: list[str] = []
    real = ChunkReads._decode

    def counted(self: ChunkReads, digest: str, *args: Any, **kwargs: Any) -> None:
        seen.append(digest)
        real(self, digest, *args, **kwargs)

    monkeypatch.setattr(ChunkReads, "_decode", counted)
    return seen


def states(saves: int, n: int = 3 * 8192) -> Iterator[dict[str, Any]]:
    """A weight (fp32, and its bf16 copy) one Adam step apart between saves."""
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(n, generator=g) * 0.02)
    opt = torch.optim.Adam([w], lr=1e-4)
    for _ in range(saves):
        w.grad = torch.randn(n, generator=g)
        opt.step()
        yield {"model": {"w": w.detach().clone(), "half": w.detach().to(torch.bfloat16)}}


def chunk_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.rglob("chunks/*/*")}


def chunks_of(store: ckpt.Store, sid: str) -> list[str]:
    return [d for entry in store.table(sid).tensors.values() for d in entry.chunks]


def assert_loads(store: ckpt.Store, sid: str, state: dict[str, Any]) -> None:
    back = store.load(sid)["model"]
    for k, v in state["model"].items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_ten_saves_write_the_same_store_with_the_cache_on_and_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decodes: list[str]
) -> None:
    """Interleaved, with two chain limits (the same digest sits at other depths in each store)."""
    stores = {
        (mode, limit): ckpt.init(str(tmp_path / f"{mode}{limit}"), chunk_size=CHUNK, delta_depth=limit)
        for mode in ("on", "off")
        for limit in (3, 16)
    }
    ids: dict[tuple[str, int], list[str]] = {key: [] for key in stores}
    history = list(states(10))
    decoded = {"on": 0, "off": 0}
    second: list[str] = []
    for step, state in enumerate(history):
        for (mode, limit), store in stores.items():
            monkeypatch.setenv("CKPT_REFERENCE_CACHE", "0" if mode == "off" else "64MiB")
            before = len(decodes)
            ids[mode, limit].append(store.save(state, step=len(ids[mode, limit])).id)
            if step == 1 and mode == "on":
                second += decodes[before:]
            elif step > 1:
                decoded[mode] += len(decodes) - before
    # a first save keeps no copies (it has no reference: a one-off save pays for nothing): the second save
    # decodes each of its keyframes once, and from then on the cache spares every chain decode
    firsts = [d for (m, limit), store in stores.items() if m == "on" for d in chunks_of(store, ids[m, limit][0])]
    assert sorted(second) == sorted(firsts)
    assert decoded["on"] == 0 and decoded["off"] > 0
    for limit in (3, 16):
        on, off = tmp_path / f"on{limit}", tmp_path / f"off{limit}"
        tables = {mode: [stores[mode, limit].resolve(sid).table for sid in ids[mode, limit]] for mode in ("on", "off")}
        assert tables["on"] == tables["off"]  # the same tensor tables (snapshot records differ by their time)
        assert chunk_files(on) == chunk_files(off)  # the same objects, byte for byte: same codecs, same depths
        assert {f[5] for f in chunk_files(on).values()} >= {2}  # deltas were written
        store = stores["on", limit]
        assert_loads(store, ids["on", limit][-1], history[-1])
        assert store.verify().ok


def test_a_new_process_decodes_the_chain_and_writes_the_same_delta(tmp_path: Path) -> None:
    history = list(states(6))
    whole = ckpt.init(str(tmp_path / "whole"), chunk_size=CHUNK)
    for step, state in enumerate(history):
        whole.save(state, step=step)
    split = ckpt.init(str(tmp_path / "split"), chunk_size=CHUNK)
    for step, state in enumerate(history[:5]):
        split.save(state, step=step)
    save_file(history[5]["model"], str(tmp_path / "last.safetensors"))
    script = (
        "import sys, ckpt\nfrom safetensors.torch import load_file\n"
        "from ckpt.store._reference_cache import REFERENCES\n"
        "store = ckpt.open(sys.argv[1])\n"
        "store.save({'model': load_file(sys.argv[2])}, step=5)\n"
        "assert REFERENCES.size > 0\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "split"), str(tmp_path / "last.safetensors")], check=True
    )
    assert chunk_files(tmp_path / "split") == chunk_files(tmp_path / "whole")
    assert [s.table for s in ckpt.open(str(tmp_path / "split")).log()] == [s.table for s in whole.log()]


def test_bytes_changed_in_the_callers_buffer_never_reach_a_delta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decodes: list[str]
) -> None:
    """The caller's tensor changes while its chunk is hashed (as a reused staging buffer could) and after the
    save: the chunk stored, the bytes kept and the next save's delta are all those of the bytes hashed."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK)
    zeroth, first, second = states(3)
    store.save(zeroth, step=0)  # the parent: ``first`` has references, so its chunks are kept for ``second``
    buffer = first["model"]["half"]
    real = _objects.hash_chunk

    scribbled: list[bool] = []

    def hash_then_scribble(data: Any) -> str:
        digest = real(data)
        if not scribbled:  # the caller's memory changes right after a hash (a copy taken now would differ)
            scribbled.append(True)
            buffer.add_(1)
        return digest

    monkeypatch.setattr(_objects, "hash_chunk", hash_then_scribble)
    kept = {k: v.clone() for k, v in first["model"].items()}
    a = store.save(first, step=1)
    monkeypatch.setattr(_objects, "hash_chunk", real)
    buffer.mul_(-3)  # and again after the save
    assert REFERENCES.size > 0
    for digest, entry in list(REFERENCES._entries.items()):
        assert hash_chunk(entry.raw) == digest
    del decodes[:]  # ``first`` decoded its parent's keyframes (a first save keeps no copies)
    b = store.save(second, step=2)
    assert not decodes  # the last save took its references from the cache
    back = store.load(a.id)["model"]  # each chunk of ``half`` as it was when hashed, before or after a change
    assert torch.equal(back["w"], kept["w"])
    assert all(
        torch.equal(x, y) or torch.equal(x, y + 1)
        for x, y in zip(back["half"].split(CHUNK // 2), kept["half"].split(CHUNK // 2), strict=True)
    )
    assert_loads(store, b.id, second)
    assert store.verify().ok


def test_the_cache_stays_within_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", "40KiB")
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK)
    history = list(states(4))
    for step, state in enumerate(history):
        store.save(state, step=step)
        # a first save keeps none
        assert (0 if step == 0 else 1) <= REFERENCES.size <= 40 << 10 and len(REFERENCES) <= 2
    assert_loads(store, store.log()[0].id, history[-1])
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", "0")  # off: nothing kept, nothing used
    REFERENCES.clear()
    store.save(next(iter(states(1))), step=9)
    assert REFERENCES.size == 0 and REFERENCES.get(next(iter(chunk_files(tmp_path / "s"))), CHUNK) is None


K = MIN_ENCODE  # the smallest chunk that can be a delta's reference


def test_a_used_reference_goes_first() -> None:
    cache = ReferenceCache(budget=3 * K)
    for name in "abc":
        assert cache.admits(K)
        cache.put(name, name.encode() * K)
    assert cache.get("a", K) == b"a" * K  # used as a reference: first out now
    assert cache.admits(K)
    cache.put("d", b"d" * K)
    assert [k for k in "abcd" if cache.get(k, K) is not None] == ["b", "c", "d"]
    assert cache.get("b", K + 1) is None  # another length: not that chunk
    assert not cache.admits(3 * K + 1) and not cache.admits(K - 1)  # larger than the budget; never a delta
    cache.put("big", b"x" * (3 * K + 1))
    assert cache.size <= 3 * K and cache.get("big", 3 * K + 1) is None


def test_a_state_larger_than_the_budget_keeps_its_first_chunks_and_they_hit() -> None:
    """Five chunks saved over and over with room for three: plain LRU would never hit (each chunk is evicted
    just before the next save needs it); here the first three hit at every save and the rest are not even
    copied."""
    cache = ReferenceCache(budget=3 * K)
    previous: list[str | None] = [None] * 5
    hits = []
    for save in range(6):
        hit = 0
        for place in range(5):
            ref = previous[place]
            hit += ref is not None and cache.get(ref, K) is not None
            name = f"{save}-{place}"
            if cache.admits(K):
                cache.put(name, name.encode().ljust(K))
            previous[place] = name
        hits.append(hit)
        assert cache.size <= 3 * K
    assert hits == [0, 3, 3, 3, 3, 3]


def test_entries_never_used_again_go_stale() -> None:
    cache = ReferenceCache(budget=3 * K)
    for name in "abc":
        assert cache.admits(K)
        cache.put(name, b"x" * K)  # then never used again: a branch given up
    assert not cache.admits(K)  # full of fresh entries
    for _ in range(STALE * 3):
        cache.admits(K)  # other chunks offered meanwhile
    assert cache.admits(K)
    cache.put("d", b"d" * K)
    assert cache.get("d", K) is not None and cache.get("a", K) is None


def test_a_cached_reference_gone_from_the_store_is_not_used(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK)
    first, second = states(2)
    store.save(first, step=0)
    gone = set(store.table(store.log()[0].id).chunk_digests())
    store.backend.delete([layout.chunk_path(d) for d in gone])  # as a gc running beside would
    b = store.save(second, step=1)
    for digest in store.table(b.id).chunk_digests():
        head = store.backend.read(layout.chunk_path(digest), 0, 16 + 34)
        assert head[5] != 2 or head[16:48].hex() not in gone  # no delta against a chunk that is gone
    assert_loads(store, b.id, second)


def test_an_evicted_buffer_serves_the_next_copy_but_never_while_a_save_uses_it() -> None:
    """Copies go into the memory of evicted entries (no fresh pages), never into a buffer handed out as a
    reference and not yet released."""
    cache = ReferenceCache(budget=2 * K)
    a, b = cache.take(K), cache.take(K)
    a[:], b[:] = b"a" * K, b"b" * K
    assert cache.put("a", a) and cache.put("b", b)
    held = cache.get("a", K)  # a save codes a delta against it
    assert held is a
    c = cache.take(K)
    assert c is not a and c is not b  # nothing evicted yet: a new buffer
    c[:] = b"c" * K
    assert cache.put("c", c)  # evicts "a" (used), which is still held: not recycled
    d = cache.take(K)
    assert d is not a
    assert bytes(held) == b"a" * K
    cache.give_back(d)
    cache.release(held)  # now it may serve a copy
    e = cache.take(K)
    assert e is a or e is d
    assert cache.take(K + 1) is not a  # another length: a new buffer


def test_saves_of_a_training_loop_reuse_their_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the budget is full (here from the fifth save on), each copy of a changed chunk lands in a buffer an
    evicted entry held, and every save loads exactly."""
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", "200KiB")
    monkeypatch.setenv("CKPT_THREADS", "1")  # one chunk in flight: which copy finds a spare does not vary
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK)
    fresh: list[int] = []
    real = REFERENCES.take

    def counted(length: int) -> bytearray:
        with REFERENCES._lock:
            spare = bool(REFERENCES._spare.get(length))
        fresh[-1] += not spare
        return real(length)

    monkeypatch.setattr(REFERENCES, "take", counted)
    saved = []
    for step, state in enumerate(states(6)):
        fresh.append(0)
        saved.append((store.save(state, step=step).id, state))
    assert fresh[0] == 0 and fresh[1] > 0  # a first save copies nothing; the second copies every chunk
    assert fresh[4:] == [0, 0]
    for sid, state in saved:
        assert_loads(store, sid, state)
    assert store.verify().ok


def test_a_link_changed_after_it_was_proven_is_never_built_on(tmp_path: Path) -> None:
    """The chain proof reads every link at every save: a keyframe changed in place after it was proven twice
    (its modification time even set back) is found damaged, and the next save is not a delta on it."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=CHUNK)
    history = list(states(5))
    ids = [store.save(state, step=step).id for step, state in enumerate(history[:4])]  # keyframes proven twice
    first = store.table(ids[0]).tensors["model/w"].chunks[0]
    path = root / layout.chunk_path(first)
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(64)
        byte = f.read(1)
        f.seek(64)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    last = store.save(history[4], step=4)
    assert_loads(store, last.id, history[4])  # not built on the damaged keyframe
    assert store.verify(last.id).ok  # the last save stands on no damage
    assert not store.verify(ids[0]).ok  # the damage itself is reported
