"""``log`` of a long history, on a local folder and on S3 (moto on 127.0.0.1), measured in one run.

    python benchmarks/history.py [--snapshots 1000] [--repeat 3] [--latency-ms 0]

Builds a store of ``--snapshots`` saves on ``main`` (a small state each) in a local folder, copies its objects
to a bucket of moto's S3 server (in its own process, requests counted from its log, as in
``benchmarks/object_store.py``), then times ``store.log("main")``:

- *local folder*: the floor (every record a file on this disk);
- *S3, one record at a time*: no record cache, no batch (each record one ``GET`` along the parent chain: the
  path before issue 15, less the ``HEAD`` it also sent per record);
- *S3, cold cache*: an empty record cache; the walk lists the records and reads the missing ones in one batch;
- *S3, warm cache*: the cache the previous call filled (a new ``Store``, as another process would be);
- *S3, cache off*: ``CKPT_RECORD_CACHE=off``: the batched read on every call;
- ``ckpt log --json`` on S3 with a warm cache, a new process each time (its start-up included).

Every figure is the median of ``--repeat`` runs. Goals (issue 15): the warm ``log`` ≤ 1.5 s and ≤ 50 requests.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from object_store import BUCKET, Moto, options  # noqa: E402

import ckpt  # noqa: E402
from ckpt.store import _parts  # noqa: E402


def build(folder: Path, n: int) -> None:
    store = ckpt.init(folder, chunk_size=4096)
    for i in range(n):
        store.save(
            {"w": np.full(4, i, dtype=np.float32), "step": i},
            branch="main",
            step=i,
            metrics={"loss": 1 / (i + 1)},
            message=f"step {i}",
        )


def upload(folder: Path, url: str, opts: dict[str, Any]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    fs.put(f"{folder}/", url.removeprefix("s3://") + "/", recursive=True)


def timed(moto: Moto | None, fn: Any) -> tuple[float, int, Any]:
    before = sum(moto.counts().values()) if moto else 0
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    after = sum(moto.counts().values()) if moto else 0
    return seconds, after - before, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added by the server to every object request")
    args = parser.parse_args()
    for k, v in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(k, v)
    workdir = Path(tempfile.mkdtemp(prefix="ckpt-bench-history-"))
    moto = Moto(workdir, latency=args.latency_ms / 1000)
    rows: dict[str, dict[str, Any]] = {}
    try:
        import boto3

        boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        t0 = time.perf_counter()
        build(workdir / "store", args.snapshots)
        url = f"s3://{BUCKET}/history-{uuid.uuid4().hex[:8]}"
        upload(workdir / "store", url, options(moto))
        print(f"# built {args.snapshots} snapshots and copied them to S3 in {time.perf_counter() - t0:.1f} s")
        opts = options(moto)
        cli_env = {
            **os.environ,
            "FSSPEC_S3_ENDPOINT_URL": moto.endpoint,
            "FSSPEC_S3_KEY": "testing",
            "FSSPEC_S3_SECRET": "testing",
        }
        batch_after = _parts._BATCH_AFTER

        def row(name: str, seconds: float, requests: int, n: int) -> None:
            r = rows.setdefault(name, {"seconds": [], "requests": requests, "snapshots": n})
            r["seconds"].append(seconds)
            r["requests"] = requests

        for _ in range(args.repeat):
            os.environ["CKPT_RECORD_CACHE"] = "off"
            local = ckpt.open(workdir / "store")
            s, r, out = timed(None, lambda: local.log("main"))  # noqa: B023
            row("local folder", s, 0, len(out))

            _parts._BATCH_AFTER = 10**9
            s3 = ckpt.open(url, skip_instance_cache=True, **opts)
            s, r, out = timed(moto, lambda: s3.log("main"))  # noqa: B023
            row("S3, one record at a time (no cache, no batch)", s, r, len(out))
            _parts._BATCH_AFTER = batch_after

            s3 = ckpt.open(url, skip_instance_cache=True, **opts)
            s, r, out = timed(moto, lambda: s3.log("main"))  # noqa: B023
            row("S3, cache off (batched read every call)", s, r, len(out))

            cache = workdir / f"cache-{uuid.uuid4().hex[:6]}"
            os.environ["CKPT_RECORD_CACHE"] = str(cache)
            s3 = ckpt.open(url, skip_instance_cache=True, **opts)
            s, r, out = timed(moto, lambda: s3.log("main"))  # noqa: B023
            row("S3, cold record cache (first call)", s, r, len(out))
            s3 = ckpt.open(url, skip_instance_cache=True, **opts)  # a new store, as another process
            s, r, out = timed(moto, lambda: s3.log("main"))  # noqa: B023
            row("S3, warm record cache", s, r, len(out))

            cmd = [sys.executable, "-m", "ckpt", "--store", url, "log", "--json"]
            env = {**cli_env, "CKPT_RECORD_CACHE": str(cache), "PYTHONPATH": str(HERE.parent)}
            s, r, out = timed(moto, lambda: subprocess.run(cmd, env=env, capture_output=True, check=True))  # noqa: B023
            row("`ckpt log --json` on S3, warm cache (new process)", s, r, len(json.loads(out.stdout)))
    finally:
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    floor = statistics.median(rows["local folder"]["seconds"])
    width = max(len(k) for k in rows)
    print(f"{'log of main':<{width}}  {'snapshots':>9}  {'median s':>9}  {'× local':>7}  requests")
    for name, r in rows.items():
        med = statistics.median(r["seconds"])
        print(f"{name:<{width}}  {r['snapshots']:>9}  {med:9.3f}  {med / floor:7.1f}  {r['requests']}")
    warm = rows["S3, warm record cache"]
    print(
        f"# goal: warm log <= 1.5 s and <= 50 requests: {statistics.median(warm['seconds']):.3f} s, "
        f"{warm['requests']} requests; latency added by the server {args.latency_ms:g} ms per object request"
    )
    print(json.dumps({name: {**r, "seconds": statistics.median(r["seconds"])} for name, r in rows.items()}))


if __name__ == "__main__":
    main()
