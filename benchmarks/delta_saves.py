"""Repeated delta saves from one process, with the reference cache on and off (``CKPT_REFERENCE_CACHE``;
issue 14 item 5; figures in docs/benchmarks.md, "Delta saves").

    python benchmarks/delta_saves.py [--saves 10] [--size-mb 256] [--threads 2]

A Llama-shaped state (fp32 master weights, one real ``torch.optim.Adam`` step on random gradients between
saves) is saved in bf16 ``--saves`` times, each time into two stores (compression on, the default chain limit
of 16): one with the cache at its default, one with it off (``0``: every delta save decodes its parent's chunk
through its chain), and once with ``safetensors.torch.save_file`` (fsynced), interleaved so that a busy machine
disturbs all three alike. Per save: CPU seconds (all threads; steadier on a busy machine) and wall seconds of
each, and the wall ratios to safetensors'; the summary gives CPU seconds per GB of state, the mean over the
delta saves (all but the first) and the last (its reference at depth ``saves − 2``). The two stores must hold the
same chunk objects, byte for byte. The last line is one JSON object.
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


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of all threads, wall seconds) of ``fn``."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


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

            row: dict[str, float] = {"save": i}
            row["safetensors_cpu_s"], row["safetensors_wall_s"] = timed(safetensors_save)
            for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):  # neither always first
                if mode == "off":
                    os.environ["CKPT_REFERENCE_CACHE"] = "0"
                elif default is None:
                    os.environ.pop("CKPT_REFERENCE_CACHE", None)
                else:
                    os.environ["CKPT_REFERENCE_CACHE"] = default
                store = stores[mode]
                row[f"{mode}_cpu_s"], row[f"{mode}_wall_s"] = timed(lambda: store.save(state, step=i))  # noqa: B023
            row["on_wall_over_safetensors"] = row["on_wall_s"] / row["safetensors_wall_s"]
            row["off_wall_over_safetensors"] = row["off_wall_s"] / row["safetensors_wall_s"]
            rows.append(row)
            print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        chunks = {mode: {p.name: p.read_bytes() for p in (Path(d) / mode).rglob("chunks/*/*")} for mode in stores}
        assert chunks["on"] and chunks["on"] == chunks["off"], "the two stores hold different chunk objects"
    raw = sum(t.numel() * 2 for t in weights)
    gb, later = raw / 1e9, rows[1:] or rows

    def mean(key: str) -> float:
        return sum(r[key] for r in later) / len(later)

    summary = {
        "state_bytes": raw,
        "on_cpu_s_per_gb_mean": mean("on_cpu_s") / gb,
        "off_cpu_s_per_gb_mean": mean("off_cpu_s") / gb,
        "on_cpu_s_per_gb_last": rows[-1]["on_cpu_s"] / gb,
        "off_cpu_s_per_gb_last": rows[-1]["off_cpu_s"] / gb,
        "safetensors_cpu_s_per_gb_mean": mean("safetensors_cpu_s") / gb,
        "on_wall_over_safetensors_mean": mean("on_wall_over_safetensors"),
        "off_wall_over_safetensors_mean": mean("off_wall_over_safetensors"),
        "on_wall_over_safetensors_last": rows[-1]["on_wall_over_safetensors"],
        "off_wall_over_safetensors_last": rows[-1]["off_wall_over_safetensors"],
        "rows": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
