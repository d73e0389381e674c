"""The chunk size of a store (``ckpt init --chunk-size``) with the codecs on: what each of 1, 4, 16 and 64 MiB
costs, measured through a real ``ckpt.Store`` in one run, printed as ratios against 64 MiB (issue 14 item 4;
figures in docs/benchmarks.md, "Chunk size").

    python benchmarks/chunk_size.py [--sizes 1,4,16,64] [--size-gb 0.25] [--latency-ms 20] [--repeat 3] [--no-s3]

1. **A one-row change**: a 200 MB fp32 embedding (51200 × 1024) saved, then saved again with one 4 KiB row
   changed: the bytes the second save adds to the store (``Store.footprint(new, over=old)``: objects with their
   headers), with compression and deltas on (the default) and off (``--no-compression``).
2. **Objects**: chunk objects of one save of a ~1 GB Llama-shaped bf16 state dict (``save_load.llama_state``:
   hidden 2048, 22 layers; every tensor is at least one object).
3. **Local save and load**: a Llama-shaped state of ``--size-gb`` GB saved (fsynced) into a new local store
   and loaded back (every chunk verified, every byte touched), against ``safetensors`` ``save_file`` (fsynced)
   / ``load_file`` of the same state in the same run; best of ``--repeat``; and the peak memory of the save
   beyond the state (sampled).
4. **S3**: the same state saved into and loaded from a store on moto's S3 server (127.0.0.1) that waits
   ``--latency-ms`` before answering each object request (S3's time to first byte): seconds and requests, as
   counted in the server's log.

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from object_store import BUCKET, Moto, options  # noqa: E402  (sibling scripts)
from save_load import drop_cache, files_under, fsync_path, llama_state, peak_memory  # noqa: E402

import ckpt  # noqa: E402

MiB = 1 << 20


def best(fn: Callable[[], object], repeat: int, before: Callable[[], None] | None = None) -> float:
    """Best wall seconds of ``fn`` over ``repeat`` runs, ``before`` run untimed before each."""
    out = math.inf
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def touch(state: dict[str, torch.Tensor]) -> int:
    return sum(int(t.reshape(-1).view(torch.uint8)[::4096].sum()) for t in state.values())


def one_row_change(sizes: list[int], tmp: Path) -> dict[int, dict[str, int]]:
    rows = 51200
    rng = np.random.default_rng(0)
    emb = torch.from_numpy(rng.standard_normal((rows, 1024), dtype=np.float32) * 0.02)
    changed = emb.clone()
    changed[rows // 3] += 1e-3  # one 4 KiB row
    out: dict[int, dict[str, int]] = {}
    for mib in sizes:
        row: dict[str, int] = {}
        for compression in (True, False):
            store = ckpt.init(str(tmp / f"emb-{mib}-{compression}"), chunk_size=mib * MiB, compression=compression)
            store.save({"emb": emb})
            store.save({"emb": changed})
            key = "codecs" if compression else "raw"
            row[f"first_save_{key}"] = store.footprint("main~1").stored_bytes
            row[f"one_row_change_{key}"] = store.footprint("main", over="main~1").stored_bytes
            shutil.rmtree(store.url)
        out[mib] = row
    return out


def object_count(sizes: list[int]) -> dict[int, int]:
    shapes = {k: v.numel() * v.element_size() for k, v in llama_state(1.0).items()}
    return {mib: sum(max(1, math.ceil(n / (mib * MiB))) for n in shapes.values()) for mib in sizes}


def local_times(sizes: list[int], state: dict[str, torch.Tensor], tmp: Path, repeat: int) -> dict[str, Any]:
    path = tmp / "model.safetensors"

    def st_save() -> None:
        path.unlink(missing_ok=True)
        save_file(state, str(path))
        fsync_path(path)

    out: dict[str, Any] = {"safetensors_save_s": best(st_save, repeat)}
    out["safetensors_load_s"] = best(lambda: touch(load_file(str(path))), repeat, lambda: drop_cache([path]))
    for mib in sizes:
        out[mib] = _local_one(mib, state, tmp, repeat)
    return out


def _local_one(mib: int, state: dict[str, torch.Tensor], tmp: Path, repeat: int) -> dict[str, Any]:
    stores: list[ckpt.Store] = []

    def fresh() -> None:
        for s in stores:
            shutil.rmtree(s.url, ignore_errors=True)
        stores[:] = [ckpt.init(str(tmp / f"local-{mib}-{uuid.uuid4().hex[:6]}"), chunk_size=mib * MiB)]

    save_s = best(lambda: stores[0].save({"model": state}), repeat, fresh)
    fresh()
    memory = peak_memory(lambda: stores[0].save({"model": state}))
    files = files_under(Path(stores[0].url))
    load_s = best(lambda: touch(stores[0].load("main")["model"]), repeat, lambda: drop_cache(files))
    shutil.rmtree(stores[0].url, ignore_errors=True)
    return {"save_s": save_s, "load_s": load_s, "save_memory_bytes": memory}


def s3_times(sizes: list[int], state: dict[str, torch.Tensor], latency_ms: float, tmp: Path) -> dict[int, Any]:
    moto = Moto(tmp, latency=latency_ms / 1000)
    out: dict[int, Any] = {}
    try:
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto.endpoint}, key="testing", secret="testing").mkdir(BUCKET)
        for mib in sizes:
            url = f"s3://{BUCKET}/store-{mib}"
            store = ckpt.init(url, chunk_size=mib * MiB, **options(moto))
            before = moto.counts()
            t0 = time.perf_counter()
            store.save({"model": state})
            save_s = time.perf_counter() - t0
            middle = moto.counts()
            t0 = time.perf_counter()
            touch(ckpt.open(url, **options(moto)).load("main")["model"])
            load_s = time.perf_counter() - t0
            after = moto.counts()
            out[mib] = {
                "save_s": save_s,
                "load_s": load_s,
                "save_requests": sum(middle.values()) - sum(before.values()),
                "load_requests": sum(after.values()) - sum(middle.values()),
            }
    finally:
        moto.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4,16,64", help="chunk sizes in MiB")
    ap.add_argument("--size-gb", type=float, default=0.25, help="the state saved and loaded (3 and 4)")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    ref = 64 if 64 in sizes else max(sizes)
    result: dict[str, Any] = {"threads": ckpt.settings.threads()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        emb = one_row_change(sizes, tmp)
        result["one_row_change"] = emb
        print("== a 200 MB fp32 embedding, one 4 KiB row changed: bytes the second save adds ==")
        for mib, row in emb.items():
            print(
                f"  {mib:3d} MiB: codecs {row['one_row_change_codecs']:>10,d} B, "
                f"raw {row['one_row_change_raw']:>11,d} B  (first save: codecs "
                f"{row['first_save_codecs'] / 1e6:.1f} MB, raw {row['first_save_raw'] / 1e6:.1f} MB)"
            )
        objects = object_count(sizes)
        result["objects_1gb"] = objects
        print("== chunk objects of one save of a 1 GB Llama-shaped bf16 state ==")
        print("  " + ", ".join(f"{mib} MiB: {n}" for mib, n in objects.items()))
        state = llama_state(args.size_gb)
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        local = local_times(sizes, state, tmp, args.repeat)
        result["local"] = local
        print(f"== local store, {nbytes / 1e9:.2f} GB bf16, compression on: / safetensors (save fsynced; load cold) ==")
        for mib in sizes:
            r = local[mib]
            print(
                f"  {mib:3d} MiB: save {r['save_s']:.3f} s ({r['save_s'] / local['safetensors_save_s']:.2f}), "
                f"load {r['load_s']:.3f} s ({r['load_s'] / local['safetensors_load_s']:.2f}), "
                f"save memory beyond the state {r['save_memory_bytes'] / 1e6:.0f} MB"
            )
        if not args.no_s3:
            s3 = s3_times(sizes, state, args.latency_ms, tmp)
            result["s3"] = s3
            print(f"== S3 (moto, {args.latency_ms:g} ms per object request), {nbytes / 1e9:.2f} GB: / {ref} MiB ==")
            for mib in sizes:
                r, base = s3[mib], s3[ref]
                print(
                    f"  {mib:3d} MiB: save {r['save_s']:.2f} s ({r['save_s'] / base['save_s']:.2f}), "
                    f"{r['save_requests']} requests; load {r['load_s']:.2f} s ({r['load_s'] / base['load_s']:.2f}), "
                    f"{r['load_requests']} requests"
                )
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
