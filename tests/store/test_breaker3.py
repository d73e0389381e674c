"""Breaker tests for how a chunk is saved: per-thread codec scratch (``_grouped._scratch``), keyframes hashed while
they are encoded (``Objects._put_keyframe``), a first save that keeps no reference copies and a chunk maybe
unchanged since its parent hashed before it is copied (``ReferenceCache.differs``). Each asserts what a user
checks: loaded tensors equal to what was saved, ``verify`` clean, damage refused loudly."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
import torch

import ckpt
from ckpt.errors import CkptError
from ckpt.store import _layout as layout
from ckpt.store import _objects
from ckpt.store._codecs import decode_into, layout_for
from ckpt.store._codecs._chunk import encode_chunk
from ckpt.store._reference_cache import REFERENCES

pytestmark = pytest.mark.torch

CHUNK = 16 << 10


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CKPT_REFERENCE_CACHE", raising=False)
    REFERENCES.clear()
    yield
    REFERENCES.clear()


def clone(state: dict[str, Any]) -> dict[str, Any]:
    return {k: clone(v) if isinstance(v, dict) else v.detach().clone() for k, v in state.items()}


def assert_equal(back: dict[str, Any], want: dict[str, Any]) -> None:
    assert back.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, dict):
            assert_equal(back[k], v)
        else:
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


def chunk_file(root: Path, digest: str) -> Path:
    return root / layout.chunk_path(digest)


def digests(store: ckpt.Store, sid: str, tensor: str) -> list[str]:
    return list(store.table(sid).tensors[tensor].chunks)


# -- a chunk unchanged since its parent, whose stored object is gone or damaged --------------------------------


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_an_unchanged_chunk_rewritten_while_the_caller_changes_it_stores_what_its_digest_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """The parent's chunk at the same place is gone (or truncated) from the store; the next save finds the chunk
    unchanged by its hash and writes it back, while a caller thread changes the tensor right after that hash:
    the object written must hold the bytes hashed (or the save must store other bytes under their own digest),
    never the changed bytes under the old digest."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=CHUNK)
    w = torch.randn(4 * CHUNK // 4, generator=torch.Generator().manual_seed(0))
    first = store.save({"model": {"w": w}}, step=0)
    target = digests(store, first.id, "model/w")[1]
    path = chunk_file(root, target)
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-7])
    real = _objects.hash_chunk

    def hash_then_scribble(data: Any) -> str:
        digest = real(data)
        if digest == target:  # the caller's memory changes right after the hash
            w.add_(1)
        return digest

    before = w.clone()
    monkeypatch.setattr(_objects, "hash_chunk", hash_then_scribble)
    second = store.save({"model": {"w": w}}, step=1)
    monkeypatch.setattr(_objects, "hash_chunk", real)
    saved = w.clone()
    report = store.verify()
    # healed with the bytes hashed, or the changed bytes stored under their own digest (the first snapshot then
    # keeps the damage done to it): never the changed bytes under the digest of the bytes hashed
    healed = report.ok
    moved = all(d.digest == target for d in report.damage) and target not in digests(store, second.id, "model/w")
    assert healed or moved, report
    back = store.load(second.id)["model"]["w"]  # each chunk as it was when hashed, before or after the change
    per = CHUNK // 4
    assert all(
        torch.equal(x, y) or torch.equal(x, z)
        for x, y, z in zip(back.split(per), before.split(per), saved.split(per), strict=True)
    )


@pytest.mark.parametrize(
    "setting",
    ["cache-off", "cache-tiny", "compression-off", "small-chunks", "first-save-small-chunks"],
)
def test_a_chunk_changed_by_the_caller_right_after_its_hash_is_stored_under_the_digest_of_what_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """A caller thread changes the tensor right after a changed chunk is hashed, in a save that keeps no copy of
    it (the reference cache off or too small, compression off, chunks too small to be kept): what is stored
    under the digest must be the bytes hashed."""
    chunk = 2048 if "small" in setting else CHUNK
    if setting == "cache-off":
        monkeypatch.setenv("CKPT_REFERENCE_CACHE", "0")
    if setting == "cache-tiny":
        monkeypatch.setenv("CKPT_REFERENCE_CACHE", "8KiB")
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=chunk, compression=setting != "compression-off", pack_size=0)
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(4 * chunk // 4, generator=g) * 0.02).to(torch.bfloat16).float()  # compressible
    if not setting.startswith("first"):
        store.save({"model": {"w": w}}, step=0)
        w.add_(torch.randn(w.shape, generator=g) * 1e-3)
    before = w.clone()
    target = blake3.blake3(before[chunk // 4 : 2 * chunk // 4].numpy().tobytes()).hexdigest()
    real = _objects.hash_chunk

    def hash_then_scribble(data: Any) -> str:
        digest = real(data)
        if digest == target:
            w.mul_(-2)
        return digest

    monkeypatch.setattr(_objects, "hash_chunk", hash_then_scribble)
    snap = store.save({"model": {"w": w}}, step=1)
    monkeypatch.setattr(_objects, "hash_chunk", real)
    report = store.verify()
    assert report.ok, report
    back = store.load(snap.id)["model"]["w"]
    per = chunk // 4
    assert all(
        torch.equal(x, y) or torch.equal(x, z)
        for x, y, z in zip(back.split(per), before.split(per), w.split(per), strict=True)
    )
