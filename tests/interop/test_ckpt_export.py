"""ckpt understands its own exports: a training snapshot restored to a folder imports back as the same state tree
(same tensor table) and the same record fields, so ``ckpt.restore`` resumes from it; anything else is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ckpt
from ckpt.errors import RecordError
from ckpt.interop import LAYOUT_KEY, export, import_folder

pytestmark = pytest.mark.torch


def trained() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    for _ in range(3):
        model(torch.randn(5, 8)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def training_state() -> dict[str, Any]:
    model, opt, sched = trained()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": 3,
        "best": math.inf,
        "betas": (0.9, 0.999),
        "ema": {"w": np.arange(4, dtype=np.float32)},  # a numpy array: comes back as numpy
    }


FIELDS = ("model", "step", "epoch", "metrics", "message", "metadata", "tensor_count", "tensor_bytes")


@pytest.mark.parametrize("shard_size", [None, "1KB"])
def test_a_training_snapshot_round_trips_through_a_folder(
    local_store: ckpt.Store, tmp_path: Path, shard_size: str | None
) -> None:
    files = {"config.json": b'{"hidden": 16}', "notes/README.md": b"# run 7\n"}
    snap = local_store.save(
        training_state(),
        branch="train",
        model="tiny-mlp",
        step=3,
        epoch=1.5,
        metrics={"val_loss": 0.25, "grad_norm": math.nan},
        message="epoch 1.5",
        metadata={"lr": 1e-3, "tags": ["a", "b"]},
        files=files,
    )
    out = tmp_path / "out"
    written = export(local_store, "train", out, shard_size=shard_size).written
    names = sorted(p.relative_to(out).as_posix() for p in written)
    assert "state.json" in names and "state.safetensors" in names and "notes/README.md" in names

    back = import_folder(local_store, out, branch="back")
    assert {f: getattr(back, f) for f in FIELDS if f != "metrics"} == {
        f: getattr(snap, f) for f in FIELDS if f != "metrics"
    }
    assert back.metrics["val_loss"] == 0.25 and math.isnan(back.metrics["grad_norm"])
    assert LAYOUT_KEY not in back.metadata
    assert back.table == snap.table  # the same tree, tensors, chunks and attached files: the same table
    assert back.relation == "import" and back.parents == ()

    loaded = local_store.load("back")
    assert isinstance(loaded["ema"]["w"], np.ndarray) and loaded["betas"] == (0.9, 0.999)
    model, opt, _ = trained()
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    ckpt.restore(fresh, local_store, "back", optimizer=fresh_opt)
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert local_store.verify().ok


def test_the_same_export_imported_with_new_fields_keeps_the_rest(local_store: ckpt.Store, tmp_path: Path) -> None:
    local_store.save({"model": {"w": torch.ones(2)}, "step": 1}, model="m", step=1, metrics={"loss": 1.0})
    export(local_store, "main", tmp_path / "out")
    back = import_folder(local_store, tmp_path / "out", branch="b", model="renamed", message="from disk")
    assert (back.model, back.message, back.step, back.metrics) == ("renamed", "from disk", 1, {"loss": 1.0})


def test_an_export_whose_files_no_longer_match_its_state_json_is_refused(
    local_store: ckpt.Store, tmp_path: Path
) -> None:
    local_store.save(training_state())
    out = tmp_path / "out"
    export(local_store, "main", out)
    weights = load_file(out / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "0.bias"}, out / "model.safetensors")
    with pytest.raises(RecordError, match="names tensors the folder's files do not hold") as e:
        import_folder(local_store, out, branch="x")
    assert "state.json" in (e.value.hint or "")
    save_file({**weights, "extra": torch.ones(1)}, out / "model.safetensors")
    with pytest.raises(RecordError, match="'extra'"):
        import_folder(local_store, out, branch="x")
    (out / "model.safetensors").unlink()
    with pytest.raises(RecordError, match=r"names model\.safetensors, which is not in the folder"):
        import_folder(local_store, out, branch="x")
    assert "x" not in local_store.branches()


def test_older_and_foreign_state_files(local_store: ckpt.Store, tmp_path: Path) -> None:
    out = tmp_path / "old"
    out.mkdir()
    save_file({"w": torch.ones(2)}, out / "model.safetensors")
    (out / "state.json").write_text(json.dumps({"$dict": [["step", 3]]}))  # what ckpt wrote before
    with pytest.raises(RecordError, match="older ckpt") as e:
        import_folder(local_store, out)
    assert "restore the snapshot again" in (e.value.hint or "")
    (out / "state.json").write_text('{"global_step": 10}')  # someone else's state.json: an ordinary file
    snap = import_folder(local_store, out)
    assert local_store.files(snap.id)["state.json"] == b'{"global_step": 10}'
    (out / "state.json").write_text(json.dumps({"ckpt_export": 99, "snapshot": {}, "files": {}, "state": None}))
    with pytest.raises(RecordError, match="format 99"):
        import_folder(local_store, out)
    (out / "state.json").write_text(json.dumps({"ckpt_export": 1, "snapshot": [], "files": {}, "state": None}))
    with pytest.raises(RecordError, match="malformed"):
        import_folder(local_store, out)
