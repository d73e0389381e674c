"""RNG state as ordinary state, and the proof that matters: a killed-and-resumed run ends bit-identical."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ckpt
from ckpt import rng_state, set_rng_state
from ckpt.errors import StateMismatchError

from .helpers import assert_same

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[2]


def _draws() -> tuple[float, float, float, list[float]]:
    return random.random(), float(np.random.rand()), float(torch.rand(())), torch.randn(3).tolist()


def test_rng_state_round_trips_through_a_store(local_store: ckpt.Store) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()  # and in NumPy's
    local_store.save({"rng": rng_state()}, step=0)
    want = _draws()
    _draws()
    set_rng_state(local_store.load("main")["rng"])
    assert _draws() == want


def test_rng_state_is_plain_storable_state() -> None:
    state = rng_state()
    assert set(state) >= {"python", "numpy", "torch"}
    assert state["torch"].dtype == torch.uint8 and isinstance(state["python"]["state"], tuple)
    from ckpt.state import flatten

    flatten(state)  # no pickling needed: typed JSON and tensors only
    saved = state["torch"].clone()
    torch.rand(10)
    assert torch.equal(state["torch"], saved)  # a copy: later draws do not change it
    assert not torch.equal(rng_state()["torch"], saved)


def test_partial_and_numpy_loaded_states(local_store: ckpt.Store) -> None:
    torch.manual_seed(5)
    local_store.save({"rng": {"torch": rng_state()["torch"]}}, step=0)
    want = torch.rand(4)
    set_rng_state(local_store.load("main", framework="numpy")["rng"])  # the tensor comes back as an array
    assert torch.equal(torch.rand(4), want)


def test_a_state_that_is_not_one_is_refused() -> None:
    with pytest.raises(StateMismatchError):
        set_rng_state([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(StateMismatchError):
        set_rng_state({"python": {"version": 3}})
    with pytest.raises(StateMismatchError):
        set_rng_state({"torch": torch.zeros(3, dtype=torch.uint8)})


_TRAIN = r"""
import os, random, signal, sys
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
import ckpt
from ckpt import rng_state, set_rng_state
from ckpt import Checkpointer

torch.set_num_threads(1)
store_url, branch, epochs, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
random.seed(0); np.random.seed(0); torch.manual_seed(0)
g = torch.Generator().manual_seed(1234)
x = torch.randn(192, 8, generator=g)
data = TensorDataset(x, x.sum(1, keepdim=True))
loader = DataLoader(data, batch_size=16, shuffle=True)  # shuffled by torch's global generator each epoch
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
with Checkpointer(ckpt.open(store_url), branch) as ckpts:
    start = 0
    if (state := ckpts.resume()) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = state["epoch"] + 1
        print("resumed at", start, flush=True)
    for epoch in range(start, epochs):
        model.train()
        for xb, yb in loader:
            jitter = 0.01 * np.random.standard_normal() + 0.01 * random.random()  # Python and NumPy draws too
            loss = ((model(xb + jitter) - yb) ** 2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
        ckpts.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(), "epoch": epoch},
                   step=epoch, epoch=epoch)
        if epoch == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-run, maybe mid-save
print("done", flush=True)
"""


def _start(url: str, branch: str, epochs: int, kill_at: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _TRAIN, url, branch, str(epochs), str(kill_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_killed_and_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    store = ckpt.init(url, chunk_size=4096)
    epochs = 6
    whole = _start(url, "whole", epochs, kill_at=-1)
    killed = _start(url, "killed", epochs, kill_at=2)
    status, out, err = _finish(killed)
    assert status == -9 and "done" not in out, err
    resumed = _start(url, "killed", epochs, kill_at=-1)
    for proc in (whole, resumed):
        status, out, err = _finish(proc)
        assert status == 0, err
    assert "resumed at" in out
    a, b = store.load("whole"), store.load("killed")
    assert a["epoch"] == b["epoch"] == epochs - 1
    assert_same(dict(a["model"]), dict(b["model"]))
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(a["optimizer"]["state"][0][key], b["optimizer"]["state"][0][key])
    assert not torch.equal(store.load("whole~5")["model"]["0.weight"], a["model"]["0.weight"])  # it did train
    assert store.verify().ok
