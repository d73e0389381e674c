"""What checkpointing costs a training loop: the stall per save (async vs sync), and re-saving a LoRA run.

    python benchmarks/training_stall.py [--size-mb 256] [--saves 5] [--every 4] [--lora-base-mb 1024] [--dir DIR]

1. **Stall per save.** A real training loop (a stack of ``Linear`` layers of about ``--size-mb`` MB of float32
   weights, trained with Adam, so a save holds weights + two moment buffers: three times that) saves its full
   state every ``--every`` steps, ``--saves`` times, into a fresh local store — once with
   ``Checkpointer(async_save=True)``, once with ``async_save=False``. The stall is the time the loop spends
   inside ``save()``. With async saves that is a copy into staging buffers reused from save to save; the
   first async save also allocates them (page faults), so the steady state (median of the later saves) is
   the figure, and the first save is printed too.
2. **Re-saving a LoRA run.** A model of ``--lora-base-mb`` MB of 4096 × 4096 layers (a 7B model's width) whose
   base is frozen and only LoRA adapters (rank 8 on every layer) train with Adam: the first save of the whole
   state (weights and optimizer), and then, after more training steps, a re-save (time until committed).
   The frozen base is proven unchanged by comparing it byte for byte with the staging buffer of the previous
   committed save (torch's version counter cannot prove it: writes through ``.data`` bypass it), so it is
   neither copied nor hashed, and its chunks are already stored. Baselines measured in the same run:
   ``safetensors.torch.save_file`` of the same state (fsynced), and a re-save with ``digest_cache=False``
   (everything copied and hashed, the chunks deduplicated).

The last line is one JSON object: ``stall_ratio`` (async stall / sync stall per save, target ≤ 0.15),
``lora_resave_ratio`` (re-save / first full save: no longer ≤ 0.1 as with the version counter, which missed
writes through ``.data``; the byte comparison reads the frozen base, about the cost of copying it),
``lora_resave_vs_safetensors`` (re-save / ``safetensors.save_file`` of the same state, target ≤ 1) and
``lora_nocache_vs_safetensors``, with the raw seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import ckpt
from ckpt import Checkpointer

HIDDEN = 2048


def stack(size_mb: float, hidden: int = HIDDEN, seed: int = 0) -> torch.nn.Sequential:
    """Linear(hidden, hidden) layers with tanh between them, about ``size_mb`` MB of float32 weights."""
    layers = max(1, round(size_mb * 1e6 / (4 * hidden * (hidden + 1))))
    torch.manual_seed(seed)
    mods: list[torch.nn.Module] = []
    for _ in range(layers):
        mods += [torch.nn.Linear(hidden, hidden), torch.nn.Tanh()]
    return torch.nn.Sequential(*mods)


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: int = 8) -> None:
    """One forward/backward/update on a random batch."""
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    x = torch.randn(batch, first.in_features)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def training_run(root: Path, size_mb: float, saves: int, every: int, async_save: bool) -> dict[str, Any]:
    """Train, saving every ``every`` steps; returns the seconds spent in each ``save()`` and in the whole loop."""
    store = ckpt.init(str(root))
    model = stack(size_mb)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step(model, opt)  # Adam's moment buffers exist from here on
    stalls = []
    start = time.perf_counter()
    with Checkpointer(store, "main", async_save=async_save, keep_last=2) as ckpts:
        for n in range(saves * every):
            step(model, opt)
            if (n + 1) % every == 0:
                t = time.perf_counter()
                ckpts.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, step=n + 1)
                stalls.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    state_bytes = sum(p.numel() * 4 * 3 for p in model.parameters())
    return {"stalls": stalls, "total": total, "state_bytes": state_bytes}


class LoRA(torch.nn.Module):
    """A frozen ``Linear`` plus a trainable low-rank update ``B @ A`` (as PEFT's LoRA layers)."""

    def __init__(self, base: torch.nn.Linear, r: int = 8) -> None:
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t()) @ self.lora_B.t()


def flat(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a nested state (state dicts, an optimizer's state) under ``/``-joined names."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(state, torch.Tensor):
        out[prefix] = state.detach().contiguous()
    elif isinstance(state, dict):
        for k, v in state.items():
            out.update(flat(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(flat(v, f"{prefix}/{i}" if prefix else str(i)))
    return out


def safetensors_save(path: Path, state: Any) -> float:
    """Seconds for ``safetensors.torch.save_file`` of the state's tensors, fsynced (as a ckpt save is)."""
    tensors = flat(state)
    t = time.perf_counter()
    save_file(tensors, str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    took = time.perf_counter() - t
    path.unlink()
    return took


def lora_run(root: Path, size_mb: float, hidden: int) -> dict[str, float]:
    """First save of a LoRA model (base included), a re-save after training only the adapters, and the same
    re-save with the digest cache off and with ``safetensors.save_file``."""
    store = ckpt.init(str(root))
    base = stack(size_mb, hidden, seed=1)
    for p in base.parameters():
        p.requires_grad_(False)
    model = torch.nn.Sequential(*[LoRA(m) if isinstance(m, torch.nn.Linear) else m for m in base])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    step(model, opt)
    with Checkpointer(store, "lora") as ckpts:
        t = time.perf_counter()
        ckpts.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, step=1).result()
        first = time.perf_counter() - t
        resaves = []
        for n in range(3):
            for _ in range(2):
                step(model, opt)
            t = time.perf_counter()
            handle = ckpts.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, step=n + 2)
            handle.result()
            resaves.append(time.perf_counter() - t)
            assert handle.reused >= 2 * len(base) // 2, handle  # every frozen weight and bias
    nocache = []
    with Checkpointer(store, "lora", digest_cache=False) as ckpts:
        for n in range(3):
            step(model, opt)
            t = time.perf_counter()
            ckpts.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, step=n + 10).result()
            nocache.append(time.perf_counter() - t)
    st = [
        safetensors_save(root / "model.safetensors", {"model": model.state_dict(), "optimizer": opt.state_dict()})
        for _ in range(3)
    ]
    return {
        "first": first,
        "resave": statistics.median(resaves),
        "nocache": statistics.median(nocache),
        "safetensors": statistics.median(st),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=256.0, help="Model weights in MB (the state is 3x that).")
    ap.add_argument("--saves", type=int, default=5)
    ap.add_argument("--every", type=int, default=4, help="Training steps between saves.")
    ap.add_argument("--lora-base-mb", type=float, default=1024.0, help="Frozen base of the LoRA run, in MB.")
    ap.add_argument("--dir", default=None, help="Working folder (default: a temporary folder, removed after).")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-stall-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        runs = {}
        for mode in ("sync", "async"):
            runs[mode] = training_run(work / mode, args.size_mb, args.saves, args.every, async_save=mode == "async")
            shutil.rmtree(work / mode)
        gb = runs["sync"]["state_bytes"] / 1e9
        sync_stall = statistics.median(runs["sync"]["stalls"])
        async_stall = statistics.median(runs["async"]["stalls"][1:] or runs["async"]["stalls"])  # buffers warm
        print(f"training state: {gb:.2f} GB per save (weights + Adam moments), {args.saves} saves")
        for mode in ("sync", "async"):
            stalls = ", ".join(f"{s:.3f}" for s in runs[mode]["stalls"])
            print(f"  {mode:5s} save(): {stalls} s   (whole loop {runs[mode]['total']:.2f} s)")
        print(f"  stall per save: async {async_stall:.3f} s (steady state; first {runs['async']['stalls'][0]:.3f} s)")
        print(f"                  sync  {sync_stall:.3f} s   ratio {async_stall / sync_stall:.3f} (target <= 0.15)")
        lora = lora_run(work / "lora", args.lora_base_mb, 4096)
        shutil.rmtree(work / "lora")
        print(f"LoRA run over a frozen {args.lora_base_mb:.0f} MB base: first save {lora['first']:.3f} s,")
        print(f"  re-save {lora['resave']:.4f} s   ratio {lora['resave'] / lora['first']:.4f}")
        print(
            f"  re-save with digest_cache=False {lora['nocache']:.4f} s;"
            f" safetensors.save_file of the same state {lora['safetensors']:.4f} s"
        )
        print(
            f"  re-save / safetensors {lora['resave'] / lora['safetensors']:.4f};"
            f" digest_cache=False / safetensors {lora['nocache'] / lora['safetensors']:.4f}"
        )
        result = {
            "stall_ratio": round(async_stall / sync_stall, 4),
            "lora_resave_ratio": round(lora["resave"] / lora["first"], 4),
            "async_stall_s": round(async_stall, 4),
            "async_first_stall_s": round(runs["async"]["stalls"][0], 4),
            "sync_stall_s": round(sync_stall, 4),
            "lora_first_save_s": round(lora["first"], 4),
            "lora_resave_s": round(lora["resave"], 4),
            "lora_nocache_resave_s": round(lora["nocache"], 4),
            "lora_safetensors_save_s": round(lora["safetensors"], 4),
            "lora_resave_vs_safetensors": round(lora["resave"] / lora["safetensors"], 4),
            "lora_nocache_vs_safetensors": round(lora["nocache"] / lora["safetensors"], 4),
            "state_gb": round(gb, 3),
        }
        print(json.dumps(result))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
