"""Sync sends chunks as they are stored (compressed, deltas) where the destination can decode them.

What a user checks: after a sync of a compressed, delta-coded training history, the destination holds about as
many bytes as the source (not the raw size), loads the same tensors and verifies clean, both ways between a
folder and S3; a damaged reference at the source is reported and never copied; a store of an older format
gets only chunks it can decode (no deltas in 1.3, nothing encoded in 1.2); a delta deeper than the
destination's chain limit arrives as a keyframe.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpt
from ckpt import CorruptChunkError
from ckpt.store import _layout as layout
from ckpt.store._chunk_reads import CHUNK_HEADER_SIZE

CHUNK = 16 << 10


def training(store: ckpt.Store, saves: int = 5, n: int = 16384) -> list[tuple[str, dict[str, Any]]]:
    """``saves`` snapshots of fp32 weights and their bf16 copy, moving a little between saves (Adam-like)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, generator=g) * 0.02
    out = []
    for step in range(saves):
        w = w - 1e-4 * torch.randn(n, generator=g) * w.abs()
        state = {"model": {"w": w.clone(), "half": w.to(torch.bfloat16)}}
        out.append((store.save(state, step=step).id, state))
    return out


def stored(store: ckpt.Store) -> dict[str, int]:
    """Every chunk object: its digest → its codec byte."""
    found = {}
    for e in store.backend.list(layout.CHUNKS):
        found[layout.digest_from_path(e.path)] = store.backend.read(e.path, 0, CHUNK_HEADER_SIZE)[5]
    return found


def chunk_bytes(store: ckpt.Store) -> int:
    return sum(e.size for e in store.backend.list(layout.CHUNKS))


def assert_same(store: ckpt.Store, history: list[tuple[str, dict[str, Any]]]) -> None:
    for sid, state in history:
        back = store.load(sid)["model"]
        assert all(torch.equal(back[k], v) for k, v in state["model"].items())
    report = store.verify()
    assert report.ok, report


@pytest.fixture
def source(tmp_path: Path) -> tuple[ckpt.Store, list[tuple[str, dict[str, Any]]]]:
    store = ckpt.init(str(tmp_path / "src"), chunk_size=CHUNK, delta_depth=8)
    return store, training(store)


def _s3(s3: dict[str, Any], **config: Any) -> ckpt.Store:
    return ckpt.init(f"s3://ckpt-test/sync-{uuid.uuid4().hex[:10]}", chunk_size=CHUNK, **config, **s3)


@pytest.mark.s3
def test_local_to_s3_and_back_keeps_compression_and_deltas(
    source: tuple[ckpt.Store, list[tuple[str, dict[str, Any]]]], s3_server: dict[str, Any], tmp_path: Path
) -> None:
    src, history = source
    raw = sum(store_raw(src, sid) for sid, _ in history)
    assert 2 in set(stored(src).values())
    remote = _s3(s3_server, delta_depth=8)
    report = src.sync_to(remote)
    back = ckpt.init(str(tmp_path / "back"), chunk_size=CHUNK, delta_depth=8)
    again = remote.sync_to(back)
    sizes = {"raw": raw, "source": chunk_bytes(src), "s3": chunk_bytes(remote), "back": chunk_bytes(back)}
    print(f"chunk bytes: {sizes}")
    assert sizes["source"] == sizes["s3"] == sizes["back"] == report.bytes == again.bytes
    assert sizes["source"] < raw / 2
    assert stored(remote) == stored(src) == stored(back)  # every chunk with the source's codec
    assert_same(remote, history)
    assert_same(back, history)
    assert src.sync_to(remote).chunks == 0  # nothing left to send


def store_raw(store: ckpt.Store, sid: str) -> int:
    table = store.table(sid)
    return sum(t.nbytes for t in table.tensors.values())


def test_a_damaged_reference_is_reported_and_nothing_that_needs_it_is_copied(
    source: tuple[ckpt.Store, list[tuple[str, dict[str, Any]]]], tmp_path: Path
) -> None:
    src, history = source
    first = src.table(history[0][0]).tensors["model/w"].chunks[0]
    path = Path(src.backend.local_path(layout.chunk_path(first)) or "")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    dst = ckpt.init(str(tmp_path / "dst"), chunk_size=CHUNK, delta_depth=8)
    with pytest.raises(CorruptChunkError, match=first[:12]):
        src.sync_to(dst)
    dependents = {src.table(sid).tensors["model/w"].chunks[0] for sid, _ in history}
    assert not dependents & set(stored(dst))
    assert not dst.branches()


def test_a_store_without_deltas_gets_none(
    source: tuple[ckpt.Store, list[tuple[str, dict[str, Any]]]], tmp_path: Path
) -> None:
    src, history = source
    dst = ckpt.init(str(tmp_path / "dst"), chunk_size=CHUNK, delta_depth=0)
    assert dst.config.delta_depth == 0  # format 3.0 (packs) without deltas, or 1.3 with pack_size=0
    src.sync_to(dst)
    codecs = set(stored(dst).values())
    assert codecs <= {0, 1} and 1 in codecs  # keyframes, compressed where that pays
    assert chunk_bytes(dst) < sum(store_raw(src, sid) for sid, _ in history)
    assert_same(dst, history)


def test_a_format_12_store_gets_raw_chunks(
    source: tuple[ckpt.Store, list[tuple[str, dict[str, Any]]]], tmp_path: Path
) -> None:
    src, history = source
    root = tmp_path / "old"
    ckpt.init(str(root), chunk_size=CHUNK, compression=False, pack_size=0)
    config = json.loads((root / "ckpt.json").read_bytes())
    del config["compression"]
    config["format_version"] = "1.2"
    (root / "ckpt.json").write_bytes(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    dst = ckpt.open(str(root))
    src.sync_to(dst)
    assert set(stored(dst).values()) == {0}
    assert_same(dst, history)


def test_a_chain_deeper_than_the_destination_allows_arrives_as_keyframes(
    source: tuple[ckpt.Store, list[tuple[str, dict[str, Any]]]], tmp_path: Path
) -> None:
    src, history = source
    dst = ckpt.init(str(tmp_path / "dst"), chunk_size=CHUNK, delta_depth=2)
    src.sync_to(dst)
    for e in dst.backend.list(layout.CHUNKS):
        head = dst.backend.read(e.path, 0, CHUNK_HEADER_SIZE + 34)
        assert head[5] != 2 or head[CHUNK_HEADER_SIZE + 32] <= 2
    assert 2 in set(stored(dst).values())
    assert_same(dst, history)


def test_the_chunks_of_a_pruned_parent_that_deltas_need_are_copied(
    source: tuple[ckpt.Store, list[tuple[str, dict[str, Any]]]], tmp_path: Path
) -> None:
    src, history = source
    for sid, _ in history[:-1]:
        src.prune(sid)
    src.gc(grace=timedelta(0))
    last, state = history[-1]
    assert 2 in {stored(src)[d] for d in src.table(last).chunk_digests()}  # its deltas need pruned chunks
    dst = ckpt.init(str(tmp_path / "dst"), chunk_size=CHUNK, delta_depth=8)
    report = src.sync_to(dst)
    assert report.refs and not report.conflicts
    assert stored(dst) == stored(src)
    assert_same(dst, [(last, state)])
