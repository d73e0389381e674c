"""Saves, loads and a sync on S3 (moto on 127.0.0.1): requests and seconds per operation, against a baseline tree.

    python benchmarks/s3_saves.py [--size-mb 256] [--chunk-mib 16] [--repeat 3] [--latency-ms 20]
                                  [--baseline 3404fb0] [--memory]

Starts moto's S3 server in its own process (``benchmarks/object_store.py``'s, requests counted from its log,
``--latency-ms`` added to every object request as S3's time to first byte). Each contender runs in a process
of its own, the contenders interleaved: ckpt as it is in this tree (*now*) and, with ``--baseline REV``, ckpt at
that git revision (*baseline*, exported with ``git archive``), on the same server in the same run.

Operations, on a state of ``--size-mb`` MB of fp32 weights cut into ``--chunk-mib`` MiB chunks, in a store with
compression off (*raw*) and one with compression and deltas (*deltas*, the default):

- *first save*: every chunk new;
- *re-save*: the same state again (every chunk unchanged: nothing should be encoded or uploaded);
- *next step*: every weight moved by an Adam-like step (every chunk changed: a delta against the parent's);
- *load*: the last snapshot into fresh memory, every chunk verified;
- *sync*: a folder holding 3 such saves (deltas) copied to an empty S3 store: bytes written there beside the
  bytes the folder holds.

``--memory`` also reports each operation's peak of traced memory (``tracemalloc``, numpy buffers included)
beyond the state itself. Every figure is the median of ``--repeat`` runs; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUCKET = "bench"  # object_store.py's (imported by the parent only: it imports the ckpt of this tree)
_LOG_LINE = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) ')


def _counts(log: Path) -> dict[str, int]:
    """Requests moto served so far, by method (object_store.Moto.counts, without importing ckpt)."""
    out: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _LOG_LINE.search(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def _child(args: argparse.Namespace) -> None:
    """One contender's run of every operation; prints one JSON object (this process imports its ckpt)."""
    sys.path.insert(0, args.child)
    import numpy as np

    import ckpt

    assert Path(ckpt.__file__).resolve().is_relative_to(Path(args.child).resolve()), ckpt.__file__

    log = Path(args.log)
    opts = {"endpoint_url": args.endpoint, "key": "testing", "secret": "testing"}
    rows: dict[str, dict[str, Any]] = {}

    def measure(name: str, fn: Any) -> Any:
        before = _counts(log)
        if args.memory:
            tracemalloc.start()
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if args.memory else None
        if args.memory:
            tracemalloc.stop()
        after = _counts(log)
        rows[name] = {
            "seconds": seconds,
            "requests": {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)},
            "peak_mb": None if peak is None else peak / 1e6,
        }
        return out

    n = args.size_mb * 1_000_000 // 4
    rng = np.random.default_rng(0)
    w0 = (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(np.float32)
    w1 = (w0 - 1e-4 * rng.standard_normal(n, dtype=np.float32) * np.abs(w0)).astype(np.float32)
    chunk = args.chunk_mib << 20
    for kind, config in (("raw", {"compression": False}), ("deltas", {})):
        url = f"s3://{BUCKET}/saves-{uuid.uuid4().hex[:8]}"
        store = ckpt.init(url, chunk_size=chunk, **config, **opts)
        measure(f"{kind}: first save", lambda s=store: s.save({"w": w0}))
        measure(f"{kind}: re-save", lambda s=store: s.save({"w": w0}))
        last = measure(f"{kind}: next step", lambda s=store: s.save({"w": w1}))
        back = measure(f"{kind}: load", lambda s=store, i=last.id: s.load(i, framework="numpy"))
        assert np.array_equal(back["w"], w1)
    local = Path(tempfile.mkdtemp(prefix="ckpt-bench-sync-"))
    try:
        src = ckpt.init(str(local / "s"), chunk_size=chunk)
        w = w0
        for _ in range(3):
            src.save({"w": w})
            w = (w - 1e-4 * rng.standard_normal(n, dtype=np.float32) * np.abs(w)).astype(np.float32)
        held = sum(p.stat().st_size for p in (local / "s" / "chunks").rglob("*") if p.is_file())
        dst = ckpt.init(f"s3://{BUCKET}/sync-{uuid.uuid4().hex[:8]}", chunk_size=chunk, **opts)
        report = measure("sync of 3 saves to S3", lambda: src.sync_to(dst))
        rows["sync of 3 saves to S3"]["bytes"] = {"source": held, "written": report.bytes}
    finally:
        shutil.rmtree(local, ignore_errors=True)
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--chunk-mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--baseline", default=None, help="a git revision to measure beside this tree")
    parser.add_argument("--memory", action="store_true", help="peak traced memory of each operation")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    sys.path.insert(0, str(HERE))
    from object_store import Moto

    workdir = Path(tempfile.mkdtemp(prefix="ckpt-bench-saves-"))
    trees = {"now": str(HERE.parent)}
    if args.baseline:
        base = workdir / "baseline"
        base.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(HERE.parent), "archive", args.baseline], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        trees = {"baseline": str(base), **trees}
    moto = Moto(workdir, latency=args.latency_ms / 1000)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        import boto3

        boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        for _ in range(args.repeat):
            for name, tree in trees.items():
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    tree,
                    "--endpoint",
                    moto.endpoint,
                    "--log",
                    str(moto.log_path),
                ]
                cmd += ["--size-mb", str(args.size_mb), "--chunk-mib", str(args.chunk_mib)]
                cmd += ["--memory"] if args.memory else []
                env = {**os.environ, "PYTHONPATH": tree, "CKPT_RECORD_CACHE": "off"}
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=tree)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        for op in results[0]:
            row = summary.setdefault(op, {})
            row[name] = {
                "seconds": statistics.median(r[op]["seconds"] for r in results),
                "requests": results[0][op]["requests"],
                **({"peak_mb": results[0][op]["peak_mb"]} if args.memory else {}),
                **({"bytes": results[0][op]["bytes"]} if "bytes" in results[0][op] else {}),
            }
    print(
        f"# {args.size_mb} MB fp32 state, {args.chunk_mib} MiB chunks, {args.latency_ms:g} ms per object request, "
        f"median of {args.repeat}"
    )
    for op, row in summary.items():
        for name, fig in row.items():
            ratio = ""
            if name == "now" and "baseline" in row and row["baseline"]["seconds"]:
                ratio = f"  ({fig['seconds'] / row['baseline']['seconds']:.2f}x baseline)"
            reqs = " ".join(f"{k}={v}" for k, v in fig["requests"].items())
            extra = f"  peak {fig['peak_mb']:.0f} MB" if fig.get("peak_mb") is not None else ""
            extra += f"  bytes {fig['bytes']}" if "bytes" in fig else ""
            print(f"{op:<24} {name:<9} {fig['seconds']:8.3f} s  {reqs}{ratio}{extra}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
