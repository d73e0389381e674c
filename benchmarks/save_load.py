"""Save/load speed and storage size of ckpt against plain safetensors files, measured in the same run.

    python benchmarks/save_load.py [--size-gb 1] [--repeat 3] [--compression on|off] [--dir DIR] [--plot PNG]

Builds a Llama-shaped bf16 state dict of about ``--size-gb`` GB and prints:

- save: ``ckpt Store.save`` / ``safetensors.torch.save_file``; both durable (every file fsynced, and the
  folders that gained entries), each into a fresh location;
- load: ``Store.load`` (defaults: every chunk verified, tensors copied) / ``safetensors.torch.load_file``; both
  from a cold page cache (``POSIX_FADV_DONTNEED`` on every file of both sides before each run), and both end
  with every byte of every tensor in memory (the safetensors tensors are touched page by page, because an
  untouched mmap is not a load); hot-cache figures, ckpt without verification and ckpt with ``mmap=True``
  (zero-copy, still verified) are printed too;
- re-save of unchanged tensors / first save (content addressing: nothing new is written);
- store bytes after two saves that differ in 10% of the tensors / bytes of one safetensors file.

``--compression on`` (the default, as ``ckpt init``) stores chunks byte-grouped and zstd-coded where that pays;
``off`` stores every chunk raw (``ckpt init --no-compression``). Memory: the peak resident set of the process
of one save and of one load beyond what the process held before (RSS sampled every 2 ms) is printed beside
the state's own bytes: a load holds the state it returns, so its figure beyond the state is the overhead. So are
the CPU seconds (all threads) of one save and one hot load of each side, which a shared machine disturbs far
less than wall time.

The last line is one JSON object with ``save_ratio``, ``load_ratio``, ``resave_ratio`` and ``bytes_ratio``
(targets: ≤ 1.3, ≤ 1.3, ≤ 0.3, ≤ 1.15). ``--plot PNG`` also draws those ratios against their targets as a small
bar chart (needs matplotlib, imported only then); the docs' benchmarks page shows it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import ckpt


def llama_state(size_gb: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Llama-shaped bf16 state dict of about ``size_gb`` GB (hidden 2048, MLP 5632, vocab 32000)."""
    hidden, inter, vocab = 2048, 5632, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    fixed = 2 * vocab * hidden + hidden
    layers = max(1, round((size_gb * 1e9 / 2 - fixed) / per_layer))
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(torch.bfloat16)

    sd = {"model.embed_tokens.weight": rnd(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[p + f"self_attn.{name}.weight"] = rnd(hidden, hidden)
        sd[p + "mlp.gate_proj.weight"] = rnd(inter, hidden)
        sd[p + "mlp.up_proj.weight"] = rnd(inter, hidden)
        sd[p + "mlp.down_proj.weight"] = rnd(hidden, inter)
        sd[p + "input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    sd["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    sd["lm_head.weight"] = rnd(vocab, hidden)
    return sd


def files_under(path: Path) -> list[Path]:
    """Every regular file at or below ``path``."""
    if path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_file()]


def drop_cache(paths: list[Path]) -> None:
    """Evict files from the page cache (after syncing them, so the eviction sticks).

    Pages still mapped by a live mmap (a tensor of an earlier run not yet collected) cannot be evicted, so
    garbage is collected first.
    """
    gc.collect()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fsync_path(path: Path) -> None:
    """fsync a file and its folder."""
    for p, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY)):
        fd = os.open(p, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def touch_pages(tensors: dict[str, torch.Tensor]) -> int:
    """Read one byte of every 4 KiB page of every tensor, so that a lazily mapped file is really read."""
    total = 0
    for t in tensors.values():
        flat = t.reshape(-1).view(torch.uint8)
        total += int(flat[::4096].sum()) if flat.numel() else 0
    return total


def timed(fn: Callable[[], object], repeat: int, before: Callable[[], None] | None = None) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs, with ``before`` run untimed before each."""
    times = []
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rss() -> int:
    """Resident bytes of this process now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], object]) -> int:
    """The most resident bytes beyond the start that ``fn`` held at any time (sampled every 2 ms)."""
    gc.collect()
    start = rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], rss()) - start


#: The ratios the benchmark checks, with their targets and the labels of the plot.
TARGETS = {
    "save_ratio": (1.3, "save\n(cold write)"),
    "load_ratio": (1.3, "load\n(cold cache)"),
    "resave_ratio": (0.3, "re-save\nunchanged"),
    "bytes_ratio": (1.15, "bytes\n2 saves, 10% new"),
}


def plot_ratios(result: dict[str, float], path: str | Path) -> Path:
    """Draw the measured ratios next to their targets as a small bar chart, saved as a PNG at ``path``.

    matplotlib is imported here only, so the benchmark runs without it unless a plot is asked for.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(TARGETS)
    values = [result[k] for k in keys]
    targets = [TARGETS[k][0] for k in keys]
    colours = ["#3f51b5" if v <= t else "#e53935" for v, t in zip(values, targets, strict=True)]
    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=100)
    xs = range(len(keys))
    bars = ax.bar(xs, values, width=0.55, color=colours, label="ckpt / baseline (lower is better)")
    ax.hlines(
        targets,
        [x - 0.38 for x in xs],
        [x + 0.38 for x in xs],
        colors="#212121",
        linestyles="--",
        lw=1.4,
        label="target (at most)",
    )
    for bar, v, t in zip(bars, values, targets, strict=True):
        ax.annotate(
            f"{v:.2f}",
            (bar.get_x() + bar.get_width() / 2, max(v, t)),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_xticks(list(xs), [TARGETS[k][1] for k in keys], fontsize=9)
    ax.set_ylabel("ratio", fontsize=9)
    ax.set_ylim(0, max([*values, *targets]) * 1.25)
    ax.set_title(f"ckpt vs safetensors, {result.get('size_gb', 0):.2f} GB bf16 state dict", fontsize=10)
    ax.legend(fontsize=8, loc="upper right", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--compression", choices=("on", "off"), default="on", help="Store chunks compressed (default) or raw."
    )
    ap.add_argument("--dir", default=None, help="Working folder (default: a temporary folder, removed after).")
    ap.add_argument(
        "--plot", default=None, metavar="PNG", help="Also draw the ratios against their targets (matplotlib)."
    )
    args = ap.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sd = llama_state(args.size_gb)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    print(f"state: {len(sd)} bf16 tensors, {nbytes / 1e9:.2f} GB; work dir {work}; threads {ckpt.settings.threads()}")

    try:
        # -- save ----------------------------------------------------------------------------------
        st_file = work / "model.safetensors"
        counter = iter(range(10**6))

        def st_save() -> None:
            if st_file.exists():
                st_file.unlink()
            save_file(sd, str(st_file))
            fsync_path(st_file)

        def fresh_store() -> ckpt.Store:
            path = work / f"store-{next(counter)}"
            return ckpt.init(str(path), compression=args.compression == "on")

        stores: list[ckpt.Store] = []

        def ck_prepare() -> None:
            for s in stores:
                shutil.rmtree(s.url, ignore_errors=True)
            stores.clear()
            stores.append(fresh_store())

        def ck_save() -> None:
            stores[-1].save({"model": sd})

        t_st_save = timed(st_save, args.repeat)
        t_ck_save = timed(ck_save, args.repeat, before=ck_prepare)
        store = stores[-1]
        print(
            f"save   safetensors.save_file+fsync {t_st_save:7.3f} s   ckpt save (fsync) {t_ck_save:7.3f} s   "
            f"ratio {t_ck_save / t_st_save:.3f}"
        )

        # -- re-save of unchanged tensors -------------------------------------------------------------
        t_resave = timed(lambda: store.save({"model": sd}), args.repeat)
        print(
            f"resave unchanged tensors {t_resave:7.3f} s / first save {t_ck_save:7.3f} s   "
            f"ratio {t_resave / t_ck_save:.3f}"
        )

        # -- load ------------------------------------------------------------------------------------
        st_files = [st_file]
        ck_files = files_under(Path(store.url))

        def st_load() -> None:
            touch_pages(load_file(str(st_file)))

        def ck_load(verify: bool = True, mmap: bool = False) -> None:
            touch_pages(store.load("main", verify=verify, mmap=mmap)["model"])

        t_st_cold = timed(st_load, args.repeat, before=lambda: drop_cache(st_files))
        t_ck_cold = timed(ck_load, args.repeat, before=lambda: drop_cache(ck_files))
        t_ck_cold_nv = timed(lambda: ck_load(False), args.repeat, before=lambda: drop_cache(ck_files))
        t_st_hot = timed(st_load, args.repeat)
        t_ck_hot = timed(ck_load, args.repeat)
        t_ck_hot_nv = timed(lambda: ck_load(False), args.repeat)
        t_ck_cold_mm = timed(lambda: ck_load(mmap=True), args.repeat, before=lambda: drop_cache(ck_files))
        print(
            f"load   cold: safetensors {t_st_cold:7.3f} s   ckpt (verified) {t_ck_cold:7.3f} s   "
            f"ratio {t_ck_cold / t_st_cold:.3f}   ckpt unverified {t_ck_cold_nv:7.3f} s   "
            f"ckpt mmap=True (verified) {t_ck_cold_mm:7.3f} s"
        )
        print(
            f"load   hot:  safetensors {t_st_hot:7.3f} s   ckpt (verified) {t_ck_hot:7.3f} s   "
            f"ratio {t_ck_hot / t_st_hot:.3f}   ckpt unverified {t_ck_hot_nv:7.3f} s"
        )

        # -- memory: one save, one load, beyond what the process held before -------------------------
        ck_prepare()
        cpu = {}
        c0 = time.process_time()
        mem_save = peak_memory(ck_save)
        cpu["ckpt_save"] = time.process_time() - c0
        store = stores[-1]
        c0 = time.process_time()
        mem_load = peak_memory(lambda: ck_load())
        cpu["ckpt_load"] = time.process_time() - c0
        c0 = time.process_time()
        mem_st_load = peak_memory(st_load)
        cpu["safetensors_load"] = time.process_time() - c0
        c0 = time.process_time()
        st_save()
        cpu["safetensors_save"] = time.process_time() - c0
        print(
            f"cpu    (all threads; what a busy machine does not change much): save ckpt {cpu['ckpt_save']:.3f} s, "
            f"safetensors {cpu['safetensors_save']:.3f} s; load (hot) ckpt {cpu['ckpt_load']:.3f} s, "
            f"safetensors {cpu['safetensors_load']:.3f} s"
        )
        print(
            f"memory peak beyond the process before: save {mem_save / 1e6:7.1f} MB, "
            f"load {mem_load / 1e6:7.1f} MB (the loaded state is {nbytes / 1e6:.1f} MB; "
            f"safetensors load {mem_st_load / 1e6:.1f} MB)"
        )

        # -- bytes after two saves differing in 10% of tensors ------------------------------------
        bstore = fresh_store()
        bstore.save({"model": sd})
        names = list(sd)
        layer_names = [n for n in names if ".layers." in n]
        pick = set(layer_names[3::10][: max(1, round(len(names) / 10))])  # 10% of tensors, spread over layers
        changed = {k: (v + 1 if k in pick else v) for k, v in sd.items()}
        n_changed = len(pick)
        changed_bytes = sum(sd[k].numel() * sd[k].element_size() for k in pick)
        bstore.save({"model": changed})
        store_bytes = sum(p.stat().st_size for p in files_under(Path(bstore.url)))
        one_save = st_file.stat().st_size
        print(
            f"bytes  two saves ({n_changed}/{len(names)} tensors changed, {changed_bytes / nbytes:.1%} of bytes): "
            f"store {store_bytes / 1e9:.3f} GB / "
            f"one safetensors file {one_save / 1e9:.3f} GB   ratio {store_bytes / one_save:.3f}"
        )
        stored = sum(p.stat().st_size for p in files_under(Path(store.url) / "chunks"))
        print(f"stored chunks of one save / raw bytes: {stored / nbytes:.3f} (compression {args.compression})")

        result = {
            "size_gb": round(nbytes / 1e9, 3),
            "save_ratio": round(t_ck_save / t_st_save, 3),
            "load_ratio": round(t_ck_cold / t_st_cold, 3),
            "load_ratio_hot": round(t_ck_hot / t_st_hot, 3),
            "load_ratio_unverified": round(t_ck_cold_nv / t_st_cold, 3),
            "load_ratio_mmap": round(t_ck_cold_mm / t_st_cold, 3),
            "resave_ratio": round(t_resave / t_ck_save, 3),
            "bytes_ratio": round(store_bytes / one_save, 3),
            "compression": args.compression,
            "save_cpu_ratio": round(cpu["ckpt_save"] / cpu["safetensors_save"], 3),
            "load_cpu_ratio": round(cpu["ckpt_load"] / cpu["safetensors_load"], 3),
            "save_memory_over_state": round(mem_save / nbytes, 3),
            "load_memory_over_state": round(mem_load / nbytes, 3),
            "changed_fraction_of_bytes": round(changed_bytes / nbytes, 3),
        }
        if args.plot:
            print(f"plot: {plot_ratios(result, args.plot)}", file=sys.stderr)
        print(json.dumps(result))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
