"""Content addressing: identical bytes are stored once, and a save writes only the chunks that changed."""

from __future__ import annotations

import math
import random

import pytest
import torch

import ckpt

pytestmark = pytest.mark.torch

HEADER = 16  # every stored chunk: 16-byte header + raw bytes


def chunk_objects(store: ckpt.Store) -> dict[str, int]:
    """Every chunk object in the store: path → stored size."""
    return {e.path: e.size for e in store.backend.list("chunks/")}


def new_chunks(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    assert set(before) <= set(after), "a save removed chunks"
    return {p: s for p, s in after.items() if p not in before}


def state_of(n: int, seed: int = 0) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {f"layer{i}.weight": torch.randn(40, 30, generator=g) for i in range(n)},  # 4800 B: 2 chunks
        "step": 1,
    }


def test_saving_the_same_state_twice_writes_no_chunk(store: ckpt.Store) -> None:
    state = state_of(4)
    first = store.save(state, step=1, compression=False)  # raw chunks: their sizes are known to the byte
    before = chunk_objects(store)
    assert len(before) == 4 * 2
    assert sum(before.values()) == 4 * (40 * 30 * 4) + len(before) * HEADER

    second = store.save(state, step=2)  # compression on: the chunks are there, raw, and nothing is written
    after = chunk_objects(store)
    assert after == before
    assert second.id != first.id and second.parents == (first.id,)
    assert second.table == first.table  # same tensors, same tree: the very same table object
    assert store.verify().ok


def test_changing_one_tensor_writes_only_its_chunks(store: ckpt.Store) -> None:
    state = state_of(5)
    store.save(state)
    before = chunk_objects(store)

    changed = torch.randn(50, 50)  # 10000 bytes: 3 chunks (4096 + 4096 + 1808)
    state["model"]["layer2.weight"] = changed  # type: ignore[index]
    snap = store.save(state, compression=False)
    added = new_chunks(before, chunk_objects(store))

    n = math.ceil(changed.numel() * 4 / store.chunk_size)
    assert len(added) == n == 3
    assert sum(added.values()) == changed.numel() * 4 + n * HEADER
    digests = {p.rsplit("/", 1)[-1] for p in added}
    assert digests == set(store.table(snap.id).tensors["model/layer2.weight"].chunks)
    assert torch.equal(store.load(snap.id)["model"]["layer2.weight"], changed)


def test_changing_one_chunk_of_a_big_tensor_writes_one_chunk(store: ckpt.Store) -> None:
    big = torch.randn(16 * 1024)  # 64 KiB: 16 chunks of 4 KiB
    first = store.save({"big": big})
    before = chunk_objects(store)
    assert len(before) == 16

    edited = big.clone()
    edited[5 * 1024 + 17] += 1.0  # inside chunk 5 only
    second = store.save({"big": edited}, compression=False)
    added = new_chunks(before, chunk_objects(store))
    assert len(added) == 1
    assert sum(added.values()) == store.chunk_size + HEADER

    old, new = store.table(first.id).tensors["big"].chunks, store.table(second.id).tensors["big"].chunks
    assert [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b] == [5]
    assert torch.equal(store.load(second.id)["big"], edited)
    assert torch.equal(store.load(first.id)["big"], big)


def test_identical_tensors_under_different_names_share_chunks(store: ckpt.Store) -> None:
    w = torch.randn(2048)  # 8 KiB: 2 chunks
    snap = store.save({"a": w, "b": w.clone(), "c": {"tied": w}})
    assert len(chunk_objects(store)) == 2
    back = store.load(snap.id)
    assert torch.equal(back["a"], w) and torch.equal(back["c"]["tied"], w)


def test_attached_files_are_deduplicated(store: ckpt.Store) -> None:
    config = b'{"hidden_size": 64, "num_layers": 2}'
    tokenizer = random.Random(0).randbytes(10240)  # 3 distinct chunks
    w = torch.randn(100)
    store.save({"w": w}, files={"config.json": config, "tokenizer.bin": tokenizer})
    before = chunk_objects(store)
    assert len(before) == 1 + 1 + 3

    # same files, new weights: only the weights' chunk is new
    w2 = torch.randn(100)
    snap = store.save({"w": w2}, files={"config.json": config, "tokenizer.bin": tokenizer})
    added = new_chunks(before, chunk_objects(store))
    assert len(added) == 1 and sum(added.values()) == 400 + HEADER
    assert store.files(snap.id) == {"config.json": config, "tokenizer.bin": tokenizer}

    # a file holding the same bytes as another file (or a tensor) is stored once
    mid = chunk_objects(store)
    store.save({"w": w2}, files={"copy/config.json": config, "raw.bin": w2.numpy().tobytes()})
    assert chunk_objects(store) == mid


def test_repeated_bytes_inside_one_file_are_stored_once(store: ckpt.Store) -> None:
    block = random.Random(1).randbytes(store.chunk_size)
    snap = store.save({}, files={"weights.bin": block * 3 + b"tail"})
    assert len(chunk_objects(store)) == 2  # the repeated 4 KiB block once, and the tail
    assert store.files(snap.id)["weights.bin"] == block * 3 + b"tail"


def test_dedup_across_branches(store: ckpt.Store) -> None:
    state = state_of(3)
    store.save(state)
    before = chunk_objects(store)
    store.save(state, branch="experiment")
    store.save(state, branch="main", message="again")
    assert chunk_objects(store) == before
