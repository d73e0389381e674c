"""How long the command line takes to start: ``ckpt --help`` and ``ckpt log -n 20`` beside ``python -c pass``.

    python benchmarks/startup.py [--runs 15] [--snapshots 200]

Each command runs ``--runs`` times as a fresh process (``python -m ckpt …``, this checkout's code) and the median
wall time (and CPU time) is reported, with its ratio to the median of ``python -c pass`` measured in the same run
(the cost of starting Python at all on this machine). Bytecode caches are on, as users have them, even where
``PYTHONDONTWRITEBYTECODE`` is set. ``ckpt log -n 20`` reads a local store of ``--snapshots`` snapshots made
first in a temporary folder. The goals (issue 12): ``ckpt --help`` ≤ 0.25 s and ``ckpt log -n 20`` ≤ 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(argv: list[str], runs: int, env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of ``runs`` fresh runs of ``argv``.

    One warm-up run comes first, not counted. CPU time is the steadier figure on a shared machine: other
    processes lengthen the wall time of a run, not its CPU time.
    """
    walls, cpus = [], []
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i:
            walls.append(wall)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def make_store(path: Path, snapshots: int) -> None:
    """A store of ``snapshots`` small snapshots on ``main``, each with a step, a metric and a message."""
    import numpy as np

    import ckpt

    store = ckpt.init(str(path), chunk_size=4096)
    weights = np.zeros(256, np.float32)
    for i in range(snapshots):
        weights[i % 256] += 1
        store.save({"model": {"w": weights}}, step=i, metrics={"val_loss": 1 / (i + 1)}, message=f"epoch {i}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="Fresh processes per command (the median is reported).")
    ap.add_argument("--snapshots", type=int, default=200, help="Snapshots in the store `ckpt log` reads.")
    args = ap.parse_args()
    # bytecode caches as users have them (the warm-up run writes them), whatever this shell says
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="ckpt-startup-") as tmp:
        make_store(Path(tmp) / ".ckpt", args.snapshots)
        py = sys.executable
        cases = [
            ("python -c pass", [py, "-c", "pass"], None),
            ("python -c 'import ckpt'", [py, "-c", "import ckpt"], None),
            ("ckpt --help", [py, "-m", "ckpt", "--help"], 0.25),
            (f"ckpt log -n 20 ({args.snapshots} snapshots)", [py, "-m", "ckpt", "log", "-n", "20"], 0.5),
        ]
        results = [(name, *median_seconds(argv, args.runs, env, tmp), goal) for name, argv, goal in cases]
    base = results[0][1]
    print(f"median of {args.runs} runs each, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"{'command':<40} {'wall s':>7} {'CPU s':>7} {'× python':>9}  goal (wall)")
    for name, wall, cpu, goal in results:
        verdict = "" if goal is None else f"≤ {goal} s: {'met' if wall <= goal else 'MISSED'}"
        print(f"{name:<40} {wall:>7.3f} {cpu:>7.3f} {wall / base:>9.2f}  {verdict}")


if __name__ == "__main__":
    main()
