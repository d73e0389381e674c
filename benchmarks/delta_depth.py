"""The delta chain limit (``ckpt init --delta-depth``): stored bytes against the time to load and save, through a
real ``ckpt.Store``, to choose the default (issue 14; figures in docs/benchmarks.md, "Chain depth").

    python benchmarks/delta_depth.py [--model minilm|llama] [--saves 20] [--depths 4,8,16,32] [--repeat 3]

A fine-tune (Adam, lr 1e-4, one step between saves) of the real all-MiniLM-L6-v2 weights (``minilm``, 45 MB in
bf16) or of a freshly initialised Llama-shaped model (``llama``, 58 MB), saved ``--saves`` times in bf16 into a
store per chain limit. For each limit, after 10 and after ``--saves`` saves (loads: best of ``--repeat``):

- stored bytes (``Store.stats().chunk_bytes``) / one raw save;
- the load of the newest save (every chain decoded, every chunk verified; its depth is ``(saves − 1) mod
  (limit + 1)``) / the load of the first save (a keyframe) of the same store, both from the page cache, CPU
  seconds and wall seconds; and the newest load / ``safetensors.torch.load_file`` of the same tensors;
- the newest save / the first save (a delta save reads and decodes its parent's chunk through its chain).

Then, apart from the store (no file, no other tensor, so that a shared machine disturbs it least): the CPU
seconds per GB to decode one 64 MiB bf16 chunk through a chain of each depth 0–32 (a keyframe, then deltas of
Adam-like steps), verified, best of ``--repeat``: what a load of the newest save costs per chunk, by depth.

Ratios are taken in the same run (the machine is shared); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import ckpt

sys.path.insert(0, str(Path(__file__).parent))
from storage import llama, minilm, snapshot_states  # a sibling script


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best (wall, CPU) seconds of ``fn`` over ``repeat`` runs (the machine is shared: the least disturbed)."""
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def touch(state: dict[str, torch.Tensor]) -> int:
    """Every byte in memory, as a training resume needs."""
    return sum(int(t.reshape(-1).view(torch.uint8).sum()) for t in state.values())


def chain_decode(depths: list[int], repeat: int) -> dict[int, float]:
    """CPU seconds per GB to decode a 64 MiB bf16 chunk at the end of a chain of each depth (verified)."""
    import numpy as np

    from ckpt.store._codecs import decode_chain, encode_chunk, hash_raw, layout_for

    n = 64 << 20
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(n // 2, generator=gen) * 0.02
    stored: dict[str, tuple[int, int, bytes]] = {}
    tips: list[str] = []
    previous: tuple[str, bytes, int] | None = None
    for _ in range(max(depths) + 1):
        raw = weights.to(torch.bfloat16).view(torch.uint8).numpy().tobytes()
        digest = hash_raw(raw)
        ref = {}
        if previous is not None:
            ref = {"reference": previous[1], "reference_digest": previous[0], "reference_depth": previous[2]}
        enc = encode_chunk(raw, layout=layout_for("BF16"), max_depth=64, **ref)  # type: ignore[arg-type]
        stored[digest] = (enc.codec, n, b"".join(bytes(memoryview(p)) for p in enc.parts))
        tips.append(digest)
        previous = (digest, raw, enc.depth)
        weights += torch.randn(weights.shape, generator=gen) * 1e-4  # about one bf16 unit in the last place
    out = np.empty(n, dtype=np.uint8)
    result = {}
    for d in depths:
        _, cpu = timed(lambda: decode_chain(tips[d], out, stored.__getitem__, max_depth=64), repeat)  # noqa: B023
        result[d] = cpu / n * 1e9
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("minilm", "llama"), default="minilm")
    ap.add_argument("--saves", type=int, default=20)
    ap.add_argument("--depths", default="4,8,16,32")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-only", action="store_true", help="only the chain decode figures")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    decode = chain_decode([0, 1, 2, 4, 8, 9, 16, 19, 32], args.repeat)
    print("chain decode, CPU s / GB, by depth: " + ", ".join(f"{d}: {v:.2f}" for d, v in decode.items()))
    if args.decode_only:
        print(json.dumps({"chain_decode_cpu_s_per_gb": decode}))
        return
    depths = [int(x) for x in args.depths.split(",")]
    checkpoints = sorted({min(10, args.saves), args.saves})
    model, step = (minilm if args.model == "minilm" else llama)()
    states = []
    for _ in range(args.saves):
        step()
        states.append(snapshot_states(model)[0])
    one_raw = sum(t.numel() * t.element_size() for t in states[0].values())
    print(f"{args.model}: {args.saves} bf16 saves of {one_raw / 1e6:.1f} MB, one Adam step apart")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for depth in depths:
            store = ckpt.init(str(tmp / f"d{depth}"), chunk_size="64MiB", delta_depth=depth)
            ids = []
            first_save = 0.0
            for i, state in enumerate(states):
                t0 = time.process_time()
                ids.append(store.save(state, step=i).id)
                cpu = time.process_time() - t0
                if i == 0:
                    first_save = cpu
                n = i + 1
                if n not in checkpoints:
                    continue
                first = store.load(ids[0])
                assert all(torch.equal(first[k], v) for k, v in states[0].items())
                newest = store.load(ids[-1])
                assert all(torch.equal(newest[k], v) for k, v in state.items()), "round trip"
                key_wall, key_cpu = timed(lambda: touch(store.load(ids[0])), args.repeat)  # noqa: B023
                new_wall, new_cpu = timed(lambda: touch(store.load(ids[-1])), args.repeat)  # noqa: B023
                path = tmp / "newest.safetensors"
                save_file(state, str(path))
                st_wall, _ = timed(lambda: touch(load_file(str(path))), args.repeat)  # noqa: B023
                row = {
                    "limit": depth,
                    "saves": n,
                    "newest_depth": (n - 1) % (depth + 1),
                    "stored_over_one_raw_save": store.stats().chunk_bytes / one_raw,
                    "load_newest_over_keyframe_cpu": new_cpu / key_cpu,
                    "load_newest_over_keyframe_wall": new_wall / key_wall,
                    "load_newest_over_safetensors": new_wall / st_wall,
                    "load_newest_cpu_s_per_gb": new_cpu / one_raw * 1e9,
                    "save_newest_over_first_cpu": cpu / first_save,
                }
                rows.append(row)
                print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print(json.dumps({"store": rows, "chain_decode_cpu_s_per_gb": decode}))


if __name__ == "__main__":
    main()
