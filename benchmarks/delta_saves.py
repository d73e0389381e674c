"""Repeated delta saves from one process, with the reference cache on and off (``CKPT_REFERENCE_CACHE``;
issue 14 item 5; figures in docs/benchmarks.md, "Delta saves").

    python benchmarks/delta_saves.py [--saves 10] [--size-mb 256] [--threads 2]

A Llama-shaped state (fp32 master weights, one real ``torch.optim.Adam`` step on random gradients between
saves) is saved in bf16 ``--saves`` times, each time into two stores (compression on, the default chain limit
of 16): one with the cache at its default, one with it off (``0``: every delta save decodes its parent's chunk
through its chain), and once with ``safetensors.torch.save_file`` (fsynced), interleaved so that a busy machine
disturbs all three alike. Per save: CPU seconds (all threads) of each, as ratios to safetensors'; the stores
must hold the same objects. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from save_load import fsync_path  # a sibling script

import ckpt


def llama_params(size_mb: float) -> dict[str, torch.Tensor]:
    """fp32 master weights of a Llama-shaped model (hidden 1024, MLP 2816, vocabulary 32000) of about
    ``size_mb`` MB in bf16: as many decoder layers as fit beside the embedding and the head."""
    hidden, mlp, vocab = 1024, 2816, 32000
    gen = torch.Generator().manual_seed(0)
    params = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden)}
    layer = 4 * hidden * hidden + 3 * hidden * mlp
    layers = max(1, round((size_mb * 1e6 / 2 - 2 * vocab * hidden) / layer))
    for i in range(layers):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            params[f"model.layers.{i}.self_attn.{name}.weight"] = (hidden, hidden)
        params[f"model.layers.{i}.mlp.gate_proj.weight"] = (mlp, hidden)
        params[f"model.layers.{i}.mlp.up_proj.weight"] = (mlp, hidden)
        params[f"model.layers.{i}.mlp.down_proj.weight"] = (hidden, mlp)
    return {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in params.items()}


def cpu(fn: Callable[[], object]) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--saves", type=int, default=10)
    ap.add_argument("--size-mb", type=float, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = llama_params(args.size_mb)
    names, weights = list(params), [torch.nn.Parameter(t) for t in params.values()]
    del params
    opt = torch.optim.Adam(weights, lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    default = os.environ.get("CKPT_REFERENCE_CACHE")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        stores = {mode: ckpt.init(f"{d}/{mode}") for mode in ("on", "off")}
        for i in range(args.saves):
            for w in weights:
                w.grad = torch.randn(w.shape, generator=gen) * 1e-3
            opt.step()
            state = {n: w.detach().to(torch.bfloat16) for n, w in zip(names, weights, strict=True)}
            path = Path(d) / "state.safetensors"

            def safetensors_save() -> None:
                save_file(state, str(path))  # noqa: B023
                fsync_path(path)  # noqa: B023

            row = {"save": i, "safetensors_cpu_s": cpu(safetensors_save)}
            for mode, store in stores.items():
                if mode == "off":
                    os.environ["CKPT_REFERENCE_CACHE"] = "0"
                elif default is None:
                    os.environ.pop("CKPT_REFERENCE_CACHE", None)
                else:
                    os.environ["CKPT_REFERENCE_CACHE"] = default
                row[f"cache_{mode}_cpu_s"] = cpu(lambda: store.save(state, step=i))  # noqa: B023
            row["cache_on_over_safetensors"] = row["cache_on_cpu_s"] / row["safetensors_cpu_s"]
            row["cache_off_over_safetensors"] = row["cache_off_cpu_s"] / row["safetensors_cpu_s"]
            rows.append(row)
            print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        chunks = {mode: {p.name: p.read_bytes() for p in (Path(d) / mode).rglob("chunks/*/*")} for mode in stores}
        assert chunks["on"] and chunks["on"] == chunks["off"], "the two stores hold different chunk objects"
    raw = sum(t.numel() * 2 for t in weights)
    summary = {
        "state_bytes": raw,
        "mean_on_over_safetensors": sum(r["cache_on_over_safetensors"] for r in rows[1:]) / max(1, len(rows) - 1),
        "mean_off_over_safetensors": sum(r["cache_off_over_safetensors"] for r in rows[1:]) / max(1, len(rows) - 1),
        "last_on_over_safetensors": rows[-1]["cache_on_over_safetensors"],
        "last_off_over_safetensors": rows[-1]["cache_off_over_safetensors"],
        "rows": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
