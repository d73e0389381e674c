"""Loading a snapshot, each figure next to its floor and its peer, in one run.

    python benchmarks/load.py [--size-gb 1] [--repeat 3] [--dir DIR] [--compressed]

Builds a Llama-shaped bf16 state dict of about ``--size-gb`` GB (``save_load.llama_state``: the embedding and
``lm_head`` are bigger than one 64 MiB chunk), saves it into a local store with raw chunks
(``compression=False``: the floors are about the stored bytes themselves) and as one safetensors file, then
times, interleaved, the median of ``--repeat`` runs:

- floors: *BLAKE3 in memory* (every chunk's payload already in memory, hashed with BLAKE3's threads: what a
  verified load cannot beat) and *dd* (the chunk files read with large sequential reads into one buffer, after
  dropping them from the page cache: what a cold load cannot beat);
- the peer: ``safetensors.torch.load_file``, every page of every tensor touched (an untouched memory map has not
  been read), hot and cold;
- ckpt: ``Store.load`` hot (the chunk files in the page cache; each hot case runs once untimed right before
  it is timed, so that it does not pay for the memory the case before it left behind) verified (the default),
  unverified, ``mmap=True`` (verified, zero-copy) and ``mmap=True`` unverified (what safetensors does); cold
  (``POSIX_FADV_DONTNEED`` on every file first) verified and ``mmap=True``. Every ckpt load ends with every
  page of every tensor touched, as the peer's.

Each line shows the ratio to its floor and to the peer, and the goal (issue 15): hot verified ≤ 1.3× BLAKE3,
hot unverified ≤ 2× safetensors, cold ≤ 1.3× dd. ``--compressed`` adds the same hot and cold loads of a store
with the default settings (compression on: chunks byte-grouped and zstd-coded where that pays), whose decoding
no floor above counts. The last line is one JSON object with every figure.
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
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import torch
from safetensors.torch import load_file, save_file

import ckpt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from save_load import drop_cache, files_under, llama_state, touch_pages

_HEADER = 16  # a chunk object's header (docs/format.md)

#: A case: (its function, what runs untimed before it, its floor's name, its peer's name, its goal: (against
#: "floor" or "peer", at most this ratio)).
Case = tuple[Callable[[], None], Callable[[], None] | None, str | None, str | None, tuple[str, float] | None]


def dd_read(paths: list[Path], buffer: memoryview, block: int = 8 << 20) -> int:
    """Read every file whole into ``buffer`` (one after the other) with ``block``-sized sequential reads."""
    pos = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while True:
                n = f.readinto(buffer[pos : pos + block])
                if not n:
                    break
                pos += n
    return pos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="working folder (default: a temporary folder, removed after)")
    ap.add_argument("--compressed", action="store_true", help="also load a store with compression on")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-load-", dir=args.dir))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    sd = llama_state(args.size_gb)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    st_file = work / "model.safetensors"
    save_file(sd, str(st_file))
    store = ckpt.init(str(work / "raw"), compression=False)
    store.save({"model": sd})
    table = store.table("main")
    big = sum(e.nbytes for e in table.tensors.values() if len(e.chunks) > 1)
    zipped = None
    if args.compressed:
        zipped = ckpt.init(str(work / "zstd"))
        zipped.save({"model": sd})
    del sd
    chunk_files = sorted(files_under(work / "raw" / "chunks"))
    stored = sum(p.stat().st_size for p in chunk_files)
    payloads = [p.read_bytes()[_HEADER:] for p in chunk_files]
    dd_buffer = memoryview(bytearray(stored))
    store_files = files_under(work / "raw")
    print(
        f"state: {len(table.tensors)} bf16 tensors, {nbytes / 1e9:.2f} GB ({big / nbytes:.0%} in tensors bigger "
        f"than one chunk), {len(chunk_files)} chunk files; threads {ckpt.settings.threads()}; work dir {work}"
    )

    def blake3_floor() -> None:
        for p in payloads:
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            h.update(p)
            h.hexdigest()

    def dd_floor() -> None:
        dd_read(chunk_files, dd_buffer)

    def st_load() -> None:
        touch_pages(load_file(str(st_file)))

    def ck(s: ckpt.Store, **kw: bool) -> Callable[[], None]:
        return lambda: touch_pages(s.load("main", **kw)["model"])

    def cold(paths: list[Path]) -> Callable[[], None]:
        return lambda: drop_cache(paths)

    hot_floor, cold_floor = "BLAKE3 in memory (floor)", "dd, cold (floor)"
    cases: dict[str, Case] = {
        "BLAKE3 in memory (floor)": (blake3_floor, None, None, None, None),
        "dd, cold (floor)": (dd_floor, cold(chunk_files), None, None, None),
        "safetensors hot": (st_load, None, None, None, None),
        "safetensors cold": (st_load, cold([st_file]), "dd, cold (floor)", None, None),
        "ckpt hot, verified": (ck(store), None, hot_floor, "safetensors hot", ("floor", 1.3)),
        "ckpt hot, unverified": (ck(store, verify=False), None, None, "safetensors hot", ("peer", 2.0)),
        "ckpt hot, mmap=True": (ck(store, mmap=True), None, hot_floor, "safetensors hot", ("floor", 1.3)),
        "ckpt hot, mmap=True, unverified": (ck(store, mmap=True, verify=False), None, None, "safetensors hot", None),
        "ckpt cold, verified": (ck(store), cold(store_files), cold_floor, "safetensors cold", ("floor", 1.3)),
        "ckpt cold, mmap=True": (
            ck(store, mmap=True),
            cold(store_files),
            cold_floor,
            "safetensors cold",
            ("floor", 1.3),
        ),
    }
    if zipped is not None:
        zfiles = files_under(Path(zipped.url))
        cases["ckpt hot, compressed store"] = (ck(zipped), None, hot_floor, "safetensors hot", None)
        cases["ckpt cold, compressed store"] = (ck(zipped), cold(zfiles), cold_floor, "safetensors cold", None)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}  # this process's CPU seconds, all threads
    for fn, _, _, _, _ in cases.values():  # warm: imports, the page cache
        fn()
    for _ in range(args.repeat):
        for name, (fn, before, _, _, _) in cases.items():
            if before:
                before()
            else:  # hot: the page cache and the allocator both warm (memory freed by the case before reused)
                fn()
            gc.collect()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    med = {name: statistics.median(ts) for name, ts in seconds.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    print(f"{'case':<30} {'s':>7} {'GB/s':>6} {'× floor':>8} {'× peer':>7} {'cpu s':>6} {'cpu×floor':>9}  goal")
    out: dict[str, object] = {"bytes": nbytes, "big_tensor_fraction": round(big / nbytes, 3)}
    for name, (_, _, floor, peer, goal) in cases.items():
        s = med[name]
        xf = s / med[floor] if floor else None
        xp = s / med[peer] if peer else None
        xc = med_cpu[name] / med_cpu[floor] if floor == hot_floor else None  # CPU-bound: a busy machine's view
        mark = ""
        if goal:
            value = xf if goal[0] == "floor" else xp
            assert value is not None
            mark = f"≤ {goal[1]}× {goal[0]}: {'met' if value <= goal[1] else 'NOT met'}"
        print(
            f"{name:<30} {s:7.3f} {nbytes / s / 1e9:6.2f} {f'{xf:.2f}' if xf else '':>8} "
            f"{f'{xp:.2f}' if xp else '':>7} {med_cpu[name]:6.3f} {f'{xc:.2f}' if xc else '':>9}  {mark}"
        )
        out[name] = {
            "seconds": round(s, 4),
            "cpu_seconds": round(med_cpu[name], 4),
            "x_floor": xf and round(xf, 3),
            "x_peer": xp and round(xp, 3),
            "cpu_x_floor": xc and round(xc, 3),
        }
    print(f"# {nbytes / 1e9:.2f} GB, medians of {args.repeat} interleaved runs")
    for name in cases:  # every run, wall/CPU seconds: on a busy machine the spread says how far to trust a median
        print("# runs:", name, " ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(seconds[name], cpu[name], strict=True)))
    print(json.dumps(out))


if __name__ == "__main__":
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    main()
