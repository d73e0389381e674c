"""Many small tensors (an MoE checkpoint has tens of thousands): every operation must be linear in tensors.

    python benchmarks/many_tensors.py [--tensors 30000] [--elements 64] [--repeat 1] [--dir DIR] [--pack-size SIZE]
    python benchmarks/many_tensors.py --tensors 10000 --elements 256   # issue 14: 10,000 tensors of 1 KiB

Builds ``--tensors`` float32 tensors of ``--elements`` elements each (distinct values, so nothing deduplicates)
and times, each against the same run's ``safetensors.torch`` baseline (``save_file`` with the file and its folder
fsynced, as durable as a ckpt save; ``load_file`` with one byte of every page of every tensor read, since an
untouched memory map is not a load):

- ``save``:   ``Store.save({"model": sd})`` into a fresh local store     / ``save_file``
- ``load``:   ``Store.load`` (every chunk verified)                     / ``load_file``
- ``import``: ``ckpt.interop.import_folder`` of the safetensors file         / ``load_file`` + ``save_file``
- ``export``: ``ckpt.interop.export`` (the imported snapshot's file)  / ``load_file`` + ``save_file``
- ``diff``:   ``ckpt.diff.diff`` of two saves, 10 % of tensors changed  / ``load_file`` of both files
- ``verify``: ``Store.verify`` of the store (every chunk hashed)        / ``load_file``

Each line shows ckpt's seconds, the baseline's, their ratio (goal ≤ 2 where comparable) and µs per tensor.
The same operations run at a tenth of the tensors too, and the last column is the time per tensor at full size
over the time per tensor at a tenth: about 1 for linear work (10 for quadratic). Page caches are warm on both
sides. Then the disk the saved store takes (bytes allocated, as ``du`` counts them, and apparent bytes of its
files) over the tensors' bytes, beside the safetensors file's. New stores pack small tensors into shared chunks
(``--pack-size``, default the store default; ``0``: no packs, every tensor a chunk of its own). The last line is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import ckpt
from ckpt.diff import diff
from ckpt.interop import export, import_folder


def tensors(n: int, elements: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    experts = max(1, n // 3 // 48)
    names = [
        f"model.layers.{i % 48}.mlp.experts.{i // 48 % experts}.{p}_proj.weight.{i // (48 * experts)}"
        for i in range(n)
        for p in ("gate", "up", "down")
    ][:n]
    return {name: torch.randn(elements, generator=g) for name in names}


def timed(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def durable_save(sd: dict[str, torch.Tensor], path: Path) -> None:
    """``save_file`` made as durable as a ckpt save: the file and its folder fsynced."""
    save_file(sd, str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def touched_load(path: Path) -> dict[str, torch.Tensor]:
    """``load_file`` with one byte of every page of every tensor read (an untouched memory map is not a load)."""
    out = load_file(str(path))
    for t in out.values():
        t.reshape(-1).view(torch.uint8)[::4096].sum()
    return out


def disk(path: Path) -> tuple[int, int]:
    """(bytes allocated, apparent bytes) of every file under ``path``."""
    files = [p.stat() for p in path.rglob("*") if p.is_file()]
    return sum(f.st_blocks * 512 for f in files), sum(f.st_size for f in files)


def run(
    n: int, elements: int, repeat: int, root: Path, pack_size: str | None, sizes: dict[str, int] | None = None
) -> dict[str, tuple[float, float]]:
    """``{operation: (ckpt seconds, safetensors seconds)}`` for ``n`` tensors."""
    sd = tensors(n, elements)
    changed = dict(sd)
    for i, name in enumerate(sd):
        if i % 10 == 0:
            changed[name] = sd[name] + 1
    work = root / f"n{n}"
    work.mkdir()
    st_file = work / "model.safetensors"
    st_changed = work / "changed.safetensors"
    counter = iter(range(1_000_000))

    def fresh_store() -> ckpt.Store:
        return ckpt.init(str(work / f"store-{next(counter)}"), pack_size=pack_size)

    st_save = timed(lambda: durable_save(sd, st_file), repeat)
    save_file(changed, str(st_changed))
    st_load = timed(lambda: touched_load(st_file), repeat)
    st_both = timed(lambda: (touched_load(st_file), touched_load(st_changed)), repeat)

    def save() -> None:
        fresh_store().save({"model": sd})

    ckpt_save = timed(save, repeat)
    store = fresh_store()
    if sizes is not None:
        single = fresh_store()
        single.save({"model": sd})
        allocated, apparent = disk(Path(single.url))
        sizes.update(
            data=sum(t.numel() * t.element_size() for t in sd.values()),
            store_allocated=allocated,
            store_apparent=apparent,
            safetensors=st_file.stat().st_size,
            objects=sum(1 for p in (Path(single.url) / "chunks").rglob("*") if p.is_file()),
        )
    store.save({"model": sd}, branch="a")
    store.save({"model": changed}, branch="b")
    ckpt_load = timed(lambda: store.load("a"), repeat)
    ckpt_diff = timed(lambda: diff(store, "a", "b"), repeat)
    ckpt_verify = timed(store.verify, repeat)

    folder = work / "hf"
    folder.mkdir()
    shutil.copy(st_file, folder / "model.safetensors")
    ckpt_import = timed(lambda: import_folder(fresh_store(), folder), repeat)
    imported = fresh_store()
    import_folder(imported, folder)
    ckpt_export = timed(lambda: export(imported, "main", work / f"out-{next(counter)}"), repeat)
    assert (work / f"out-{next(counter) - 1}" / "model.safetensors").read_bytes() == st_file.read_bytes()
    shutil.rmtree(work)
    return {
        "save": (ckpt_save, st_save),
        "load": (ckpt_load, st_load),
        "import": (ckpt_import, st_load + st_save),
        "export": (ckpt_export, st_load + st_save),
        "diff": (ckpt_diff, st_both),
        "verify": (ckpt_verify, st_load),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tensors", type=int, default=30_000)
    parser.add_argument("--elements", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: a temporary folder)")
    parser.add_argument("--pack-size", default=None, help="the stores' pack size (default: ckpt's; 0: no packs)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ckpt-many-", dir=args.dir))
    sizes: dict[str, int] = {}
    try:
        small = run(max(1, args.tensors // 10), args.elements, args.repeat, root, args.pack_size)
        full = run(args.tensors, args.elements, args.repeat, root, args.pack_size, sizes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n = args.tensors
    print(f"{n} tensors of {args.elements} float32 elements; warm page cache; best of {args.repeat}")
    print(f"{'operation':<8} {'ckpt s':>8} {'safetensors s':>14} {'ratio':>6} {'µs/tensor':>10} {'linearity':>9}")
    report: dict[str, Any] = {"tensors": n, "elements": args.elements}
    for op, (ours, base) in full.items():
        per = ours / n * 1e6
        small_per = small[op][0] / max(1, n // 10) * 1e6
        linearity = per / small_per if small_per else float("nan")
        print(f"{op:<8} {ours:8.2f} {base:14.3f} {ours / base:6.1f} {per:10.1f} {linearity:9.2f}")
        report[op] = {
            "ckpt_s": round(ours, 4),
            "safetensors_s": round(base, 4),
            "ratio": round(ours / base, 2),
            "linearity": round(linearity, 2),
        }
    data = sizes["data"]
    print(
        f"disk: store {sizes['store_allocated'] / data:.2f}× the data allocated ({sizes['store_allocated']} B, "
        f"{sizes['objects']} chunk objects), {sizes['store_apparent'] / data:.2f}× apparent; safetensors file "
        f"{sizes['safetensors'] / data:.3f}× ({data} B of tensor data)"
    )
    report["disk"] = {**sizes, "ratio_allocated": round(sizes["store_allocated"] / data, 3)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
