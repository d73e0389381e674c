"""The object model in action: chunks shared between snapshots, the tensor table, the record and its id.

Run it with ``python examples/docs_object_model.py [STORE]`` (default: a new temporary folder).
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch

import ckpt
from ckpt.model import digest_bytes


def main(url: str) -> None:
    store = ckpt.init(url, chunk_size="1MiB")
    torch.manual_seed(0)
    model = {"embed": torch.randn(1024, 512), "head": torch.randn(512, 10)}  # 2 MiB and 20 KiB

    a = store.save({"model": model, "step": 1}, step=1, model="demo")
    before = store.stats()
    model["head"] = model["head"] + 1  # change only the small tensor
    b = store.save({"model": model, "step": 2}, step=2)
    after = store.stats()

    # the second save wrote one new chunk: the 2 MiB embedding is stored once, shared by both snapshots
    print(f"chunks: {before.chunks} after the first save, {after.chunks} after the second")
    assert after.chunks - before.chunks == 1

    # the tensor table: each tensor's dtype, shape and chunk digests, plus the rest of the state as typed JSON
    table = store.table(b.id)
    for path, entry in table.tensors.items():
        print(f"{path}: {entry.dtype} {list(entry.shape)}, chunks {[c[:12] for c in entry.chunks]}")
    assert table.tensors["model/embed"].chunks == store.table(a.id).tensors["model/embed"].chunks
    print("tree:", table.tree)

    # the snapshot record: small, immutable, and named by the BLAKE3 digest of its canonical JSON
    record = b.record_bytes()
    assert digest_bytes(record) == b.id
    print(
        f"record of {b.short_id} ({len(record)} bytes): parents={[p[:12] for p in b.parents]}, "
        f"relation={b.relation}, model={b.model}, table={b.table[:12]}"
    )

    # a ref is a name for a snapshot: branches move, tags never do
    print("branches:", {k: v[:12] for k, v in store.branches().items()})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "store"))
