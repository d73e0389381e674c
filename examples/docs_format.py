"""Build the tiny store of the worked example in docs/format.md and print every file in it.

Run it with ``python examples/docs_format.py [STORE]`` (default: a new temporary folder). JSON records are
printed as stored; chunks are printed as hex, header first.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch

import ckpt


def main(root: str) -> None:
    store = ckpt.init(root)  # default chunk size: 64 MiB
    snap = store.save(
        {"w": torch.tensor([1.0, 2.0]), "step": 3},
        step=3,
        model="tiny",
        metrics={"val_loss": 0.25},
        message="first save",
    )
    store.freeze(snap.id, name="tiny-2026-11-28")  # a fixed name, so the example reads the same every day
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, "rb") as f:
                data = f.read()
            if rel.startswith("chunks/"):
                print(f"{rel}  ({len(data)} bytes)\n  header  {data[:16].hex(' ')}\n  payload {data[16:].hex(' ')}")
            elif data:
                print(f"{rel}  ({len(data)} bytes)\n  {data.decode('utf-8')}")
            else:
                print(f"{rel}  (empty)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "store"))
