"""``verify`` on a local store hashes each chunk where it lies (memory-mapped): no copy, no fresh memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

import ckpt
from ckpt.store import _layout as layout

MiB = 1 << 20


def test_verify_of_a_local_store_allocates_nothing_for_the_bytes_it_checks(tmp_path: Path) -> None:
    store = ckpt.init(tmp_path / "store", chunk_size=4 * MiB, compression=False)  # raw chunks are mapped
    rng = np.random.default_rng(3)
    store.save({"w": rng.integers(0, 2**31, 4 * MiB, dtype=np.int32)}, branch="main")  # 16 MiB: 4 chunks
    store.verify()  # warm: imports, thread pools
    tracemalloc.start()
    try:
        report = store.verify()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.chunks == 4 and report.bytes == 16 * MiB + 4 * 16
    assert peak < MiB, peak  # not one chunk (4 MiB), let alone the 16 MiB checked

    chunk = store.table("main").tensors["w"].chunks[2]
    path = tmp_path / "store" / layout.chunk_path(chunk)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    damage = store.verify().damage
    assert [(d.kind, d.object, d.digest) for d in damage] == [("corrupt", "chunk", chunk)]
    path.write_bytes(bytes(data[: 2 * MiB]))  # cut short
    damage = store.verify().damage
    assert [(d.kind, d.digest) for d in damage] == [("corrupt", chunk)] and "holds" in damage[0].message
