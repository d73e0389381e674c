"""Distributed saves: ckpt's DCP writer against DCP's own ``FileSystemWriter``, measured in the same run.

    python benchmarks/distributed.py [--size-gb 1] [--repeat 3] [--ranks 2] [--s3-load-gb 1] [--dir DIR]
                                     [--compression on|off]

Starts ``--ranks`` processes (a gloo process group on CPU). Each holds its shards of a Llama-shaped bf16 model
of about ``--size-gb`` GB in total, as ``DTensor``s split by rows (FSDP2's layout), and saves them with
``torch.distributed.checkpoint.save``:

- **first save**: ``ckpt.dcp.StorageWriter`` into a new local store (``--compression on``, the default as for
  ``ckpt init``: chunks byte-grouped and zstd-coded; ``off``: raw) / ``FileSystemWriter`` into a new folder
  (its defaults: one file per rank, fsync on). Both are durable when ``dcp.save`` returns. Time is from a
  barrier before the save to its return (the slowest rank); bytes are what each leaves on disk;
- **second save** with a tenth of the tensors changed: ckpt saves into the same store (unchanged chunks are
  not written again), DCP into a new folder (a DCP checkpoint is a folder; it rewrites everything). Bytes
  written are the growth of the store / the new folder.

- **load from S3** (moto on 127.0.0.1; ``--s3-load-gb 0`` skips it): ``benchmarks/object_store.py``'s model load,
  GB/s of ``Store.load`` with parallel chunk requests and one at a time, runai-model-streamer streaming a
  safetensors file of the same tensors from the same server, and s3fs ``cat_file`` of that file.

Prints a table and, last, one JSON line: ``save_ratio`` (ckpt / DCP time of the first save; target ≤ 1.1),
``second_bytes_fraction`` for each side (bytes written by the second save / by the first), ``s3_load`` (GB/s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

import ckpt
import ckpt.dcp

HIDDEN, INTER, VOCAB = 2048, 5632, 32000


def shapes(size_gb: float) -> dict[str, tuple[int, ...]]:
    """The tensors of a Llama-shaped model of about ``size_gb`` GB in bf16 (as ``benchmarks/save_load.py``)."""
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER + 2 * HIDDEN
    fixed = 2 * VOCAB * HIDDEN + HIDDEN
    layers = max(1, round((size_gb * 1e9 / 2 - fixed) / per_layer))
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[p + f"self_attn.{name}.weight"] = (HIDDEN, HIDDEN)
        out[p + "mlp.gate_proj.weight"] = (INTER, HIDDEN)
        out[p + "mlp.up_proj.weight"] = (INTER, HIDDEN)
        out[p + "mlp.down_proj.weight"] = (HIDDEN, INTER)
        out[p + "input_layernorm.weight"] = (HIDDEN,)
        out[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    out["model.norm.weight"] = (HIDDEN,)
    out["lm_head.weight"] = (VOCAB, HIDDEN)
    return out


def local_shards(size_gb: float, rank: int, world: int) -> dict[str, torch.Tensor]:
    """This rank's rows of every tensor (random bf16), generated here: nothing is sent between ranks."""
    g = torch.Generator().manual_seed(1000 + rank)
    out = {}
    for name, shape in shapes(size_gb).items():
        rows = shape[0] // world
        out[name] = torch.randn(rows, *shape[1:], generator=g, dtype=torch.float32).to(torch.bfloat16)
    return out


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed_save(state: dict[str, Any], writer: Any) -> float:
    """Seconds from a barrier to the return of ``dcp.save`` on the slowest rank."""
    dist.barrier()
    t = time.perf_counter()
    dcp.save(state, storage_writer=writer)
    took = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
    dist.all_reduce(took, op=dist.ReduceOp.MAX)
    return float(took.item())


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    mesh = init_device_mesh("cpu", (world,))
    local = local_shards(args.size_gb, rank, world)
    names = list(local)
    changed = set(names[1::10])  # a tenth of the tensors (about a tenth of the bytes), spread over the layers

    def state(step: int) -> dict[str, Any]:
        tensors = {k: (v + 1 if step > 1 and k in changed else v) for k, v in local.items()}
        return {"model": {k: DTensor.from_local(v, mesh, [Shard(0)]) for k, v in tensors.items()}, "step": step}

    first, second = state(1), state(2)
    root = Path(args.dir)
    rows: dict[str, list[float]] = {k: [] for k in ("dcp_s", "ckpt_s", "dcp2_s", "ckpt2_s")}
    sizes: dict[str, int] = {}
    for r in range(args.repeat):
        run = root / f"run{r}"
        if rank == 0:
            run.mkdir(parents=True)
            ckpt.init(str(run / "store"), compression=args.compression == "on")
        dist.barrier()
        store = ckpt.open(str(run / "store"))
        order = ["dcp", "ckpt"] if r % 2 == 0 else ["ckpt", "dcp"]
        for side in order:
            if side == "dcp":
                rows["dcp_s"].append(timed_save(first, dcp.FileSystemWriter(run / "dcp1")))
            else:
                rows["ckpt_s"].append(timed_save(first, ckpt.dcp.StorageWriter(store, "main", step=1)))
        if rank == 0:
            sizes["dcp1"] = disk_bytes(run / "dcp1")
            sizes["ckpt1"] = disk_bytes(run / "store")
        dist.barrier()
        for side in order:
            if side == "dcp":
                rows["dcp2_s"].append(timed_save(second, dcp.FileSystemWriter(run / "dcp2")))
            else:
                rows["ckpt2_s"].append(timed_save(second, ckpt.dcp.StorageWriter(store, "main", step=2)))
        if rank == 0:
            sizes["dcp2"] = disk_bytes(run / "dcp2")
            sizes["ckpt2"] = disk_bytes(run / "store") - sizes["ckpt1"]
            assert store.verify().ok
            shutil.rmtree(run)
        dist.barrier()
    if rank == 0:
        total = sum(v.nbytes for v in local.values()) * world
        changed_bytes = sum(local[k].nbytes for k in changed) * world
        Path(out).write_text(
            json.dumps({"rows": rows, "sizes": sizes, "total": total, "changed_bytes": changed_bytes}),
            encoding="utf-8",
        )
    dist.destroy_process_group()


def s3_load_comparison(args: argparse.Namespace) -> dict[str, float] | None:
    """Load ~``--size-gb`` from S3 (moto on 127.0.0.1): GB/s of ckpt with parallel object-store I/O, ckpt one
    request at a time, runai-model-streamer (+ runai-model-streamer-s3) streaming a safetensors file of the same
    tensors from the same server, and s3fs ``cat`` of that file. Runs ``benchmarks/object_store.py`` (its model
    load part; ``--s3-load-gb 0`` skips it) and returns ``case → GB/s`` (``None`` where a contender failed)."""
    if not args.s3_load_gb:
        return None
    command = [
        sys.executable,
        str(Path(__file__).with_name("object_store.py")),
        "--size-gb",
        str(args.s3_load_gb),
        "--small",
        "0",
        "--repeat",
        str(args.repeat),
        "--latency-ms",
        str(args.s3_latency_ms),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    return {name: row["gb_per_s"] for name, row in rows.items() if name.startswith("load:")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--compression", choices=("on", "off"), default="on", help="the store's compression")
    parser.add_argument("--s3-load-gb", type=float, default=1.0, help="GB loaded from S3 (moto); 0 skips it")
    parser.add_argument("--s3-latency-ms", type=float, default=0.0, help="moto's added time per object request")
    parser.add_argument("--dir", default=None, help="where the stores and folders go (default: a temporary one)")
    args = parser.parse_args()
    own = args.dir is None
    args.dir = args.dir or tempfile.mkdtemp(prefix="ckpt-bench-dist-")
    out = os.path.join(args.dir, "result.json")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.spawn(worker, args=(args.ranks, port, args, out), nprocs=args.ranks, join=True)
        result = json.loads(Path(out).read_text(encoding="utf-8"))
    finally:
        if own:
            shutil.rmtree(args.dir, ignore_errors=True)
    rows, sizes = result["rows"], result["sizes"]
    med = {k: statistics.median(v) for k, v in rows.items()}
    gb = result["total"] / 1e9
    print(
        f"{args.ranks} ranks, {gb:.3f} GB of bf16 DTensors (rows), ckpt threads per rank: "
        f"{os.environ.get('CKPT_THREADS', 'default')}, compression {args.compression}, median of {args.repeat}"
    )
    print(f"{'':48} {'DCP FileSystemWriter':>22} {'ckpt StorageWriter':>20} {'ratio':>8}")
    print(f"{'first save, seconds':48} {med['dcp_s']:22.3f} {med['ckpt_s']:20.3f} {med['ckpt_s'] / med['dcp_s']:8.2f}")
    print(
        f"{'first save, bytes on disk':48} {sizes['dcp1']:22,} {sizes['ckpt1']:20,} "
        f"{sizes['ckpt1'] / sizes['dcp1']:8.2f}"
    )
    print(
        f"{'second save (10% of tensors changed), seconds':48} {med['dcp2_s']:22.3f} {med['ckpt2_s']:20.3f} "
        f"{med['ckpt2_s'] / med['dcp2_s']:8.2f}"
    )
    print(
        f"{'second save, bytes written':48} {sizes['dcp2']:22,} {sizes['ckpt2']:20,} "
        f"{sizes['ckpt2'] / sizes['dcp2']:8.2f}"
    )
    print(f"(changed tensors hold {result['changed_bytes'] / result['total']:.1%} of the bytes)")
    print("every run, seconds:", {k: [round(x, 3) for x in v] for k, v in rows.items()})
    s3 = s3_load_comparison(args)
    for name, speed in (s3 or {}).items():
        print(f"{name:60} {'failed' if speed is None else f'{speed:.2f} GB/s'}")
    summary = {
        "size_gb": round(gb, 3),
        "ranks": args.ranks,
        "compression": args.compression,
        "save_ratio": round(med["ckpt_s"] / med["dcp_s"], 3),
        "dcp_save_s": round(med["dcp_s"], 3),
        "ckpt_save_s": round(med["ckpt_s"], 3),
        "second_bytes_fraction": {
            "dcp": round(sizes["dcp2"] / sizes["dcp1"], 3),
            "ckpt": round(sizes["ckpt2"] / sizes["ckpt1"], 3),
        },
        "changed_fraction_of_bytes": round(result["changed_bytes"] / result["total"], 3),
        "s3_load": s3,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
