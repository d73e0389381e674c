"""``Store.verify()`` of a local store against BLAKE3 hashing the same bytes, in one run.

    python benchmarks/verify.py [--size-gb 1] [--repeat 3] [--dir PATH]

Saves ``--size-gb`` of random int32 tensors (64 MiB chunks) into a new local store, then times, hot (the chunk
files in the page cache), interleaved, the median of ``--repeat`` runs:

- *BLAKE3, in memory*: the floor: every chunk's payload already in memory, hashed with BLAKE3's threads;
- *BLAKE3, update_mmap*: BLAKE3 hashing each chunk file through its own memory map;
- ``store.verify()``: every record, table and chunk checked (header, size, digest), ``CKPT_THREADS`` workers;
- ``ckpt verify --json`` as a new process, and that process's start-up alone (``ckpt --version``: the
  interpreter and the imports a command pays before it reads anything), so that the CLI's own cost is counted
  apart from the verification's.

GB/s are 10⁹ payload bytes per second. Goal (issue 15): ``verify`` ≥ 2 GB/s hot and close to the floor.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ckpt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ckpt-bench-verify-") as tmp:
        store = ckpt.init(Path(tmp) / "store")
        rng = np.random.default_rng(0)
        n = max(1, round(args.size_gb * 1e9 / (64 << 20)))
        store.save(  # full-range int32: incompressible, so every chunk is stored raw
            {f"t{i}": rng.integers(-(2**31), 2**31, 16 << 20, dtype=np.int32) for i in range(n)}, branch="main"
        )
        files = sorted((Path(tmp) / "store" / "chunks").glob("*/*"))
        payloads = [f.read_bytes()[16:] for f in files]
        nbytes = sum(len(p) for p in payloads)

        def in_memory() -> None:
            for p in payloads:
                h = blake3.blake3(max_threads=blake3.blake3.AUTO)
                h.update(p)
                h.hexdigest()

        def mapped() -> None:
            for f in files:
                h = blake3.blake3(max_threads=blake3.blake3.AUTO)
                h.update_mmap(f)
                h.hexdigest()

        def verify() -> None:
            assert store.verify().ok

        cli = [sys.executable, "-m", "ckpt", "--store", str(Path(tmp) / "store")]

        def verify_cli() -> None:
            subprocess.run([*cli, "verify", "--json"], check=True, stdout=subprocess.DEVNULL)

        def startup() -> None:
            subprocess.run([*cli, "--version"], check=True, stdout=subprocess.DEVNULL)

        cases = {
            "BLAKE3, in memory (floor)": in_memory,
            "BLAKE3, update_mmap": mapped,
            "store.verify()": verify,
            "ckpt verify (new process)": verify_cli,
            "CLI start-up alone": startup,
        }
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        verify()  # warm: the page cache, imports
        for _ in range(args.repeat):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - start)
    floor = statistics.median(seconds["BLAKE3, in memory (floor)"])
    print(f"{'case':<26}  {'median s':>9}  {'GB/s':>6}  {'× floor':>7}")
    out = {}
    for name, ts in seconds.items():
        med = statistics.median(ts)
        out[name] = {"seconds": med, "gb_per_s": nbytes / med / 1e9}
        print(f"{name:<26}  {med:9.3f}  {nbytes / med / 1e9:6.2f}  {med / floor:7.2f}")
    cli_cost = statistics.median(seconds["ckpt verify (new process)"]) - statistics.median(
        seconds["CLI start-up alone"]
    )
    print(f"ckpt verify less its start-up: {cli_cost:.3f} s, {nbytes / cli_cost / 1e9:.2f} GB/s")
    print(f"# {nbytes / 1e9:.2f} GB in {len(files)} chunks, hot page cache")
    print(json.dumps({"bytes": nbytes, **out}))


if __name__ == "__main__":
    main()
