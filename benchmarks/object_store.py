"""Object-store I/O of ckpt's storage layer against an S3 server (moto on 127.0.0.1), measured in one run.

    python benchmarks/object_store.py [--size-gb 1] [--small 2000] [--repeat 3] [--concurrency 16] [--no-load]

Starts moto's S3 server in its own process (objects kept in memory) and counts the requests it serves, by
method, from its request log. Every figure is the median of ``--repeat`` runs, the contenders interleaved.
On 127.0.0.1 a request costs no network time, only moto's CPU; ``--latency-ms 20`` makes the server wait that
long before answering each object request, as S3's time to first byte does, which is what concurrency hides.

1. **Chunks**: ``--size-gb`` of 64 MiB chunks (distinct random bytes), written and read back into
   preallocated buffers:
   - *previous path*: what ``FsspecBackend`` did before issue 15/16: ``exists`` (a HEAD, plus a LIST when the
     object is missing) and ``pipe_file(bytes(view))`` per chunk; ``cat_file`` of the range and a copy into
     the destination per read;
   - *one at a time*: today's ``put_if_absent`` / ``read_into``, one chunk after the other (one request each,
     no copy of the body);
   - *batched*: ``put_many`` / ``read_ranges`` with ``--concurrency`` requests in flight.
2. **Small objects**: ``--small`` objects of 1 KiB (records, tables), one at a time and batched
   (``put_many`` / ``read_many`` / ``exists_many``).
3. **Loading a model from S3** (issue 16): a Llama-shaped bf16 state dict of about ``--size-gb`` GB saved
   once into a ckpt store on S3 and once as one safetensors file in the same bucket, then loaded:
   ``Store.load`` (every chunk verified), with ``--concurrency`` chunk requests in flight and with one
   (``CKPT_IO_CONCURRENCY``, ``CKPT_THREADS``); the storage layer reading every chunk object of that snapshot
   straight into preallocated memory, batched and one at a time; ``runai-model-streamer`` (with
   ``runai-model-streamer-s3``) streaming the safetensors file (tensors consumed in place, not copied); and
   s3fs ``cat_file`` of the file.

GB/s are 10⁹ bytes per second of payload. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ckpt.storage import RangeRead  # noqa: E402
from ckpt.storage.fsspec import FsspecBackend  # noqa: E402

CHUNK = 64 * 1024 * 1024
BUCKET = "bench"
_LOG_LINE = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) ')


#: The server process: moto, with one change: a GET of an object over 128 MiB serves its range from the object's
#: bytes kept once, instead of copying the whole object for every request (moto reads its whole buffer, then
#: slices the range), so that a range costs its length, as on S3. Without it, clients that read a big file by
#: ranges (s3fs ``cat_file``, runai-model-streamer) pay O(object size) per range and are measured against moto.
_SERVER = """
import threading
from moto.s3.models import FakeKey
from moto.server import ThreadedMotoServer

_get, _set = FakeKey.value.fget, FakeKey.value.fset

def _value(self):
    kept = self.__dict__.get("_kept_value")
    if kept is None:
        kept = _get(self)
        if len(kept) > 128 << 20:
            self.__dict__["_kept_value"] = kept
    return kept

def _assign(self, new):
    self.__dict__.pop("_kept_value", None)
    _set(self, new)

FakeKey.value = property(_value, _assign)

if {latency}:
    import time
    from moto.s3.responses import S3Response

    _respond = S3Response.key_response

    def _late(self, *args, **kwargs):
        time.sleep({latency})  # an S3-like time to first byte (a sleeping thread holds no lock)
        return _respond(self, *args, **kwargs)

    S3Response.key_response = _late
ThreadedMotoServer(ip_address="127.0.0.1", port={port}).start()
threading.Event().wait()
"""


class Moto:
    """moto's S3 server in a child process, its request log in a file."""

    def __init__(self, workdir: Path, latency: float = 0.0) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "moto.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the server
        env = {**os.environ, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(1 << 30)}  # keep objects in memory
        code = _SERVER.format(port=self.port, latency=latency)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=self._log, stderr=self._log, env=env)
        for _ in range(300):
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto did not start: " + self.log_path.read_text()) from None
                threading.Event().wait(0.1)

    def counts(self) -> dict[str, int]:
        """Requests served so far, by method (werkzeug logs each before it sends the answer)."""
        out: dict[str, int] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = _LOG_LINE.search(line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + 1
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()


def options(moto: Moto) -> dict[str, Any]:
    return {"endpoint_url": moto.endpoint, "key": "testing", "secret": "testing"}


@contextlib.contextmanager
def measured(moto: Moto, into: dict[str, Any], nbytes: int) -> Iterator[None]:
    """Time the block and count the server's requests during it; adds a row to ``into``.

    A contender that fails is reported in the row (``failed``) instead of ending the benchmark.
    """
    before = moto.counts()
    start = time.perf_counter()
    try:
        yield
    except Exception as e:
        into.setdefault("failed", []).append(f"{type(e).__name__}: {str(e)[:200]}")
        return
    seconds = time.perf_counter() - start
    after = moto.counts()
    into.setdefault("seconds", []).append(seconds)
    into["requests"] = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}
    into["bytes"] = nbytes


def gbps(row: dict[str, Any]) -> float | None:
    if not row.get("seconds") or not row.get("bytes"):
        return None
    return float(row["bytes"] / statistics.median(row["seconds"]) / 1e9)


def median(row: dict[str, Any]) -> float | None:
    return statistics.median(row["seconds"]) if row.get("seconds") else None


def random_chunks(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(n)]


# -- 1 and 2: the storage layer -----------------------------------------------------------------------------


def bench_chunks(moto: Moto, args: argparse.Namespace, rows: dict[str, dict[str, Any]]) -> None:
    n = max(1, round(args.size_gb * 1e9 / CHUNK))
    chunks = random_chunks(n, CHUNK)
    total = n * CHUNK
    dest = [np.empty(CHUNK, dtype=np.uint8) for _ in range(n)]
    for _ in range(args.repeat):
        for name in ("previous path", "one at a time", "batched"):
            prefix = f"s3://{BUCKET}/chunks-{uuid.uuid4().hex[:8]}"
            backend = FsspecBackend(prefix, **options(moto))
            paths = [f"chunks/{i:02x}/{uuid.uuid4().hex}" for i in range(n)]
            fs, root = backend.fs, backend.root
            with measured(moto, rows.setdefault(f"chunks write: {name}", {}), total):
                if name == "previous path":
                    for p, c in zip(paths, chunks, strict=True):
                        if not fs.exists(f"{root}/{p}"):
                            fs.pipe_file(f"{root}/{p}", bytes(memoryview(c)), mode="create")
                elif name == "one at a time":
                    for p, c in zip(paths, chunks, strict=True):
                        backend.put_if_absent(p, memoryview(c))
                else:
                    backend.put_many(
                        ((p, memoryview(c)) for p, c in zip(paths, chunks, strict=True)), concurrency=args.concurrency
                    )
            for d in dest:
                d.fill(0)
            with measured(moto, rows.setdefault(f"chunks read: {name}", {}), total):
                if name == "previous path":
                    for p, d in zip(paths, dest, strict=True):
                        data = fs.cat_file(f"{root}/{p}", start=0, end=CHUNK)
                        memoryview(d)[: len(data)] = data
                elif name == "one at a time":
                    for p, d in zip(paths, dest, strict=True):
                        backend.read_into(p, [memoryview(d)])
                else:
                    backend.read_ranges(
                        [RangeRead(p, 0, [memoryview(d)]) for p, d in zip(paths, dest, strict=True)],
                        concurrency=args.concurrency,
                    )
            if not all(np.array_equal(c, d) for c, d in zip(chunks, dest, strict=True)):
                rows[f"chunks read: {name}"].setdefault("failed", []).append("read back different bytes")
            backend.delete([p for p in paths])


def bench_small(moto: Moto, args: argparse.Namespace, rows: dict[str, dict[str, Any]]) -> None:
    n = args.small
    payloads = [bytes(x) for x in random_chunks(1, n * 1024)[0].reshape(n, 1024)]
    total = n * 1024
    for _ in range(args.repeat):
        for name in ("one at a time", "batched"):
            backend = FsspecBackend(f"s3://{BUCKET}/small-{uuid.uuid4().hex[:8]}", **options(moto))
            paths = [f"snapshots/{i % 256:02x}/{uuid.uuid4().hex}.json" for i in range(n)]
            with measured(moto, rows.setdefault(f"{n} small write: {name}", {}), total):
                if name == "batched":
                    backend.put_many(zip(paths, payloads, strict=True), concurrency=args.concurrency)
                else:
                    for p, data in zip(paths, payloads, strict=True):
                        backend.put_if_absent(p, data)
            with measured(moto, rows.setdefault(f"{n} small read: {name}", {}), total):
                if name == "batched":
                    got = backend.read_many(paths, concurrency=args.concurrency)
                else:
                    got = [backend.read(p) for p in paths]
                if got != payloads:
                    raise AssertionError("read back different bytes")
            with measured(moto, rows.setdefault(f"{n} small exists: {name}", {}), 0):
                if name == "batched":
                    assert all(backend.exists_many(paths, concurrency=args.concurrency))
                else:
                    assert all(backend.exists(p) for p in paths)
            backend.delete(paths)


# -- 3: loading a model ------------------------------------------------------------------------------------


def llama_state(size_gb: float) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(HERE))
    from distributed import shapes  # the same Llama-shaped tensors as the other benchmarks

    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g, dtype=torch.float32).to(torch.bfloat16) for k, s in shapes(size_gb).items()}


def runai_load(url: str, moto: Moto) -> tuple[int, str | None]:
    """Stream a safetensors file with runai-model-streamer; returns the bytes seen, or why it could not."""
    try:
        from runai_model_streamer import SafetensorsStreamer
    except ImportError as e:
        return 0, f"runai-model-streamer is not installed ({e}); pip install 'runai-model-streamer[s3]'"
    env = {
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",  # path-style URLs: moto has no bucket subdomains
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    seen = 0
    try:
        with SafetensorsStreamer() as streamer:
            streamer.stream_file(url)
            for _, tensor in streamer.get_tensors():
                seen += tensor.nbytes
    except Exception as e:  # the streamer's own errors: report, and compare with s3fs cat instead
        return 0, f"{type(e).__name__}: {e}"
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return seen, None


def bench_load(moto: Moto, args: argparse.Namespace, rows: dict[str, dict[str, Any]], notes: list[str]) -> None:
    import torch
    from safetensors.torch import save

    import ckpt

    state = llama_state(args.size_gb)
    total = sum(t.nbytes for t in state.values())
    store_url = f"s3://{BUCKET}/store-{uuid.uuid4().hex[:8]}"
    store = ckpt.init(store_url, **options(moto))
    store.save(state, message="benchmark")
    blob = save(state)
    file_url = f"s3://{BUCKET}/safetensors-{uuid.uuid4().hex[:8]}/model.safetensors"
    backend = FsspecBackend(f"s3://{BUCKET}", **options(moto))
    backend.replace(file_url.split("/", 3)[3], blob)
    del blob
    chunk_objects = [e for e in store.backend.list("chunks/")]
    chunk_bytes = sum(e.size for e in chunk_objects)
    buffers = [np.empty(e.size, dtype=np.uint8) for e in chunk_objects]
    notes.append(
        f"load: {len(state)} tensors, {total / 1e9:.2f} GB of bf16; ckpt store: {len(chunk_objects)} chunk objects, "
        f"{chunk_bytes / 1e9:.2f} GB"
    )
    saved_env = {k: os.environ.get(k) for k in ("CKPT_THREADS", "CKPT_IO_CONCURRENCY")}
    for _ in range(args.repeat):
        os.environ["CKPT_IO_CONCURRENCY"] = str(args.concurrency)
        with measured(moto, rows.setdefault("load: ckpt Store.load (verified, parallel)", {}), total):
            loaded = ckpt.open(store_url, **options(moto)).load()
        if not all(torch.equal(loaded[k], v) for k, v in state.items()):
            raise AssertionError("loaded different tensors")
        loaded = None
        os.environ.update(CKPT_THREADS="1", CKPT_IO_CONCURRENCY="1")
        try:
            with measured(moto, rows.setdefault("load: ckpt Store.load, one request at a time", {}), total):
                loaded = ckpt.open(store_url, **options(moto)).load()
            loaded = None
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        with measured(moto, rows.setdefault("load: storage read_ranges of the chunks (batched)", {}), chunk_bytes):
            store.backend.read_ranges(
                [RangeRead(e.path, 0, [memoryview(b)]) for e, b in zip(chunk_objects, buffers, strict=True)],
                concurrency=args.concurrency,
            )
        with measured(moto, rows.setdefault("load: storage read_into of the chunks, one at a time", {}), chunk_bytes):
            for e, b in zip(chunk_objects, buffers, strict=True):
                store.backend.read_into(e.path, [memoryview(b)])
        row = rows.setdefault("load: runai-model-streamer (safetensors file)", {})
        with measured(moto, row, total):
            seen, why = runai_load(file_url, moto)
            if why is None and seen != total:
                raise AssertionError(f"streamed {seen} of {total} bytes")
        if why is not None:
            row.setdefault("failed", []).append(why)
        with measured(moto, rows.setdefault("load: s3fs cat_file (safetensors file)", {}), total):
            if len(backend.fs.cat_file(file_url[len("s3://") :])) < total:
                raise AssertionError("a short file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="bytes of chunks, and of the model (GB)")
    parser.add_argument("--small", type=int, default=2000, help="how many 1 KiB objects (0: skip)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight in the batched runs")
    parser.add_argument("--no-load", action="store_true", help="skip the model load comparison (needs torch)")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="added by the server to every object request (S3: ~10-30 ms)"
    )
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    workdir = Path(tempfile.mkdtemp(prefix="ckpt-bench-s3-"))
    moto = Moto(workdir, latency=args.latency_ms / 1000)
    rows: dict[str, dict[str, Any]] = {}
    notes: list[str] = [
        f"moto {moto.endpoint}, {os.cpu_count()} cores, concurrency {args.concurrency}, "
        f"latency added by the server {args.latency_ms:g} ms per object request"
    ]
    try:
        import boto3

        boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        bench_chunks(moto, args, rows)
        if args.small:
            bench_small(moto, args, rows)
        if not args.no_load:
            bench_load(moto, args, rows, notes)
    finally:
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(k) for k in rows)
    print(f"{'case':<{width}}  {'median s':>9}  {'GB/s':>6}  requests")
    for name, row in rows.items():
        seconds, speed = median(row), gbps(row)
        reqs = " ".join(f"{k}={v}" for k, v in row.get("requests", {}).items())
        failed = f"  FAILED {len(row['failed'])}x: {row['failed'][0]}" if row.get("failed") else ""
        shown = f"{seconds:9.3f}" if seconds is not None else "        -"
        print(f"{name:<{width}}  {shown}  {f'{speed:6.2f}' if speed is not None else '     -'}  {reqs}{failed}")
    for note in notes:
        print(f"# {note}")
    summary = {
        name: {
            "seconds": median(row),
            "gb_per_s": gbps(row),
            "requests": row.get("requests", {}),
            "failed": row.get("failed", []),
        }
        for name, row in rows.items()
    }
    print(json.dumps({"rows": summary, "notes": notes}))


if __name__ == "__main__":
    main()
