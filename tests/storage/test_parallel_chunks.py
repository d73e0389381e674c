"""Chunk PUTs and GETs of save, load, sync and repair run concurrently on S3, bounded (moto on 127.0.0.1).

The moto server holds the chunk requests of one method until ``parties`` of them are there at once (a barrier):
a client that never has that many in flight together times out and fails; the peak seen together shows the
bound. ``CKPT_THREADS=2`` and ``CKPT_IO_CONCURRENCY=6``: six in flight prove the requests are not tied to the
hashing threads; never more than six, or than ``CKPT_IO_MEMORY`` allows chunks in memory for a copy.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.store import _layout as layout
from ckpt.store import store_parts

pytestmark = pytest.mark.s3

CHUNK = 4096
CHUNKS = 12


class Gate:
    def __init__(self) -> None:
        self.parties = 0
        self.method = ""
        self.prefix = ""
        self.barrier: threading.Barrier | None = None
        self.active = self.peak = self.seen = 0
        self.lock = threading.Lock()

    def arm(self, method: str, prefix: str, parties: int) -> None:
        with self.lock:
            self.method, self.prefix, self.parties = method, prefix, parties
            self.barrier = threading.Barrier(parties, timeout=30)
            self.active = self.peak = self.seen = 0

    def disarm(self) -> None:
        with self.lock:
            self.barrier = None


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    from moto.s3.responses import S3Response

    held = Gate()
    original = S3Response.key_response

    def key_response(self: Any, request: Any, full_url: str, headers: Any) -> Any:
        barrier = held.barrier
        ours = request.method == held.method and held.prefix in full_url and "/chunks/" in full_url
        if barrier is None or not ours:
            return original(self, request, full_url, headers)
        with held.lock:
            held.active += 1
            held.seen += 1
            held.peak = max(held.peak, held.active)
        try:
            barrier.wait()
            return original(self, request, full_url, headers)
        finally:
            with held.lock:
                held.active -= 1

    monkeypatch.setattr(S3Response, "key_response", key_response)
    monkeypatch.setenv("CKPT_THREADS", "2")
    monkeypatch.setenv("CKPT_IO_CONCURRENCY", "6")
    yield held


def _state() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    return {"w": rng.standard_normal(CHUNK * CHUNKS // 4).astype(np.float32)}  # 12 distinct 4 KiB chunks


def _s3(opts: dict[str, Any], name: str) -> tuple[ckpt.Store, str]:
    url = f"s3://ckpt-test/{name}-{uuid.uuid4().hex[:8]}"
    return ckpt.init(url, chunk_size=CHUNK, **opts), url.split("/", 3)[3]


def _run(gate: Gate, method: str, prefix: str, parties: int, fn: Callable[[], Any]) -> Any:
    gate.arm(method, prefix, parties)
    try:
        return fn()
    finally:
        gate.disarm()


def test_save_and_load_keep_the_io_concurrency_in_flight(s3_server: dict[str, Any], gate: Gate) -> None:
    store, prefix = _s3(s3_server, "parallel-save")
    state = _state()
    _run(gate, "PUT", prefix, 6, lambda: store.save(state, branch="main"))
    assert (gate.peak, gate.seen) == (6, CHUNKS)
    loaded = _run(gate, "GET", prefix, 6, lambda: store.load("main"))
    assert (gate.peak, gate.seen) == (6, CHUNKS)
    np.testing.assert_array_equal(loaded["w"], state["w"])
    lazy = store.tensors("main")
    assert _run(gate, "GET", prefix, 6, lambda: lazy["w"]).tobytes() == state["w"].tobytes()


def test_sync_copies_chunks_concurrently_within_the_memory_bound(
    s3_server: dict[str, Any], gate: Gate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, prefix = _s3(s3_server, "parallel-src")
    state = _state()
    src.save(state, branch="main")
    dst = ckpt.init(tmp_path / "dst", chunk_size=CHUNK)
    # two GETs per chunk: the first bytes of each (is it a delta, and of what?), then each object whole
    report = _run(gate, "GET", prefix, 6, lambda: src.sync_to(dst))
    assert report.chunks == CHUNKS and (gate.peak, gate.seen) == (6, 2 * CHUNKS)
    np.testing.assert_array_equal(dst.load("main")["w"], state["w"])
    # a copy holds up to three chunks in memory (as stored, decoded, and the link below it in a delta chain):
    # CKPT_IO_MEMORY of nine chunks lets three run at once, no more
    monkeypatch.setenv("CKPT_IO_MEMORY", str(9 * (CHUNK + 16)))
    again = ckpt.init(tmp_path / "again", chunk_size=CHUNK)
    report = _run(gate, "GET", prefix, 3, lambda: src.sync_to(again))
    assert report.chunks == CHUNKS and (gate.peak, gate.seen) == (3, 2 * CHUNKS)
    assert again.verify().ok


def test_repair_copies_damaged_chunks_concurrently(s3_server: dict[str, Any], gate: Gate, tmp_path: Path) -> None:
    good, prefix = _s3(s3_server, "parallel-good")
    state = _state()
    good.save(state, branch="main")
    damaged = ckpt.init(tmp_path / "damaged", chunk_size=CHUNK)
    good.sync_to(damaged)
    chunks = damaged.table("main").tensors["w"].chunks
    store_parts(damaged).backend.delete([layout.chunk_path(d) for d in chunks])
    report = _run(gate, "GET", prefix, 6, lambda: damaged.repair(good))
    assert report.ok and len(report.repaired) == CHUNKS
    assert (gate.peak, gate.seen) == (6, CHUNKS)
    np.testing.assert_array_equal(damaged.load("main")["w"], state["w"])


def test_verify_checks_chunks_concurrently(s3_server: dict[str, Any], gate: Gate) -> None:
    store, prefix = _s3(s3_server, "parallel-verify")
    store.save(_state(), branch="main")
    report = _run(gate, "GET", prefix, 6, store.verify)
    assert report.ok and report.chunks == CHUNKS
    assert (gate.peak, gate.seen) == (6, CHUNKS)
