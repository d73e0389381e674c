"""A model folder as the Hub hands it over, in and out of a store: every file, links kept inside, pickles left out.

Run it with ``python examples/hub_folder.py [STORE]`` (default: a new temporary folder). No torch needed: the
weights are numpy arrays written with ``safetensors.numpy``.
"""

from __future__ import annotations

import filecmp
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import ckpt
from ckpt.interop import export, import_folder, plan_import


def hub_cache(root: Path) -> Path:
    """``models--org--tiny-st/snapshots/<commit>/``: every file a link into ``../../blobs``, as the Hub caches."""
    repo = root / "models--org--tiny-st"
    snapshot = repo / "snapshots" / "0123abcd"
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {
        "config.json": b'{"hidden_size": 16}',
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
        "modules.json": b'[{"idx": 0, "path": ""}, {"idx": 1, "path": "1_Pooling"}]',
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "pytorch_model.bin": b"a pickle: never opened",
    }
    repo.mkdir(parents=True)
    weights = repo / "weights.tmp"
    save_file({"embeddings.weight": rng.standard_normal((32, 16)).astype(np.float32)}, str(weights))
    files["model.safetensors"] = weights.read_bytes()
    weights.unlink()
    (repo / "blobs").mkdir()
    for i, (rel, data) in enumerate(sorted(files.items())):
        blob = repo / "blobs" / f"blob{i}"
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def main(root: Path) -> None:
    store = ckpt.init(str(root / "store"))
    snapshot = hub_cache(root / "hub")

    plan = plan_import(snapshot, skip_pickles=True)
    print("skipped:", plan.skipped)
    snap = import_folder(store, snapshot, skip_pickles=True)
    print(snap.model, sorted(p for p in store.files(snap.id) if not p.startswith(".ckpt/")))

    out = root / "out"
    export(store, snap.id, out)
    for folder, _, names in os.walk(out):
        for name in names:
            rel = Path(folder, name).relative_to(out)
            assert filecmp.cmp(snapshot / rel, out / rel, shallow=False), rel
    print("every file back, byte for byte:", len(list(out.rglob("*.json"))), "json files and the weights")

    # a training snapshot restored to a folder comes back as the same state and record
    train = store.save(
        {
            "model": store.load(snap.id, framework="numpy")["model"],
            "optimizer": {"exp_avg": np.zeros(3, np.float32)},
            "step": 3,
        },
        branch="train",
        step=3,
        metrics={"val_loss": 0.5},
    )
    export(store, "train", root / "train-out")
    back = import_folder(store, root / "train-out", branch="back")
    assert back.table == train.table and (back.step, back.metrics) == (3, {"val_loss": 0.5})
    print("the training folder imports back as the same snapshot state:", back.short_id)
    assert store.verify().ok


if __name__ == "__main__":
    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
        target.mkdir(parents=True, exist_ok=True)
        main(target)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
