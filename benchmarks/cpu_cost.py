"""CPU seconds per GB of ``Store.save`` and ``Store.load`` (all threads, best of ``--repeat``): the cost of the
codecs and the store whatever else runs on the machine, where wall-clock ratios (``save_load.py``) are not
steady. Compare two checkouts by running it with ``PYTHONPATH`` pointing at each.

    python benchmarks/cpu_cost.py [--size-gb 0.5] [--repeat 4] [--compression on|off]
    PYTHONPATH=/path/to/other/checkout python benchmarks/cpu_cost.py

A Llama-shaped bf16 state dict (``save_load.llama_state``) is saved into a new local store (fsynced) and loaded
back (every chunk verified) ``--repeat`` times; the last line is one JSON object (seconds per GB of raw bytes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from save_load import llama_state  # a sibling script

import ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--compression", choices=("on", "off"), default="on")
    args = ap.parse_args()
    state = llama_state(args.size_gb)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    best = dict.fromkeys(("save_cpu", "save_wall", "load_cpu", "load_wall"), float("inf"))
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeat):
            store = ckpt.init(f"{d}/s{i}", compression=args.compression == "on")
            c0, w0 = time.process_time(), time.perf_counter()
            store.save({"model": state})
            best["save_cpu"] = min(best["save_cpu"], time.process_time() - c0)
            best["save_wall"] = min(best["save_wall"], time.perf_counter() - w0)
            c0, w0 = time.process_time(), time.perf_counter()
            back = store.load("main")
            best["load_cpu"] = min(best["load_cpu"], time.process_time() - c0)
            best["load_wall"] = min(best["load_wall"], time.perf_counter() - w0)
            del back
            shutil.rmtree(store.url)
    per_gb = {f"{k}_s_per_gb": round(v / nbytes * 1e9, 3) for k, v in best.items()}
    print(f"{ckpt.__file__}: {nbytes / 1e9:.2f} GB bf16, compression {args.compression}")
    print(json.dumps(per_gb))


if __name__ == "__main__":
    main()
