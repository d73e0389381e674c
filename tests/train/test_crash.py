"""A training process SIGKILLed while async saves are in flight leaves the store consistent and resumable."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import ckpt
from ckpt.train import Checkpointer

from .helpers import refs_locked

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 64 * 1024
N = 256 * 1024  # 1 MiB of float32 per tensor: 16 chunks

_CHILD = f"""
import queue, sys, threading
import torch
import ckpt
from ckpt.train import Checkpointer

store = ckpt.open(sys.argv[1])
frozen = torch.arange({N}, dtype=torch.float32)  # unchanged from save to save: its digests are reused
layers = [torch.zeros({N}) for _ in range(4)]
handles = queue.Queue()

def report():  # says each commit on stdout, in order, while the loop goes on saving
    while True:
        print("committed", handles.get().result().step, flush=True)

threading.Thread(target=report, daemon=True).start()
with Checkpointer(store, "main", keep_last=2) as ckpts:
    step = (ckpts.latest().step if ckpts.latest() else 0)
    print("ready", flush=True)
    while True:
        step += 1
        for i, t in enumerate(layers):
            t.fill_(step * 10 + i)  # the loop changes its tensors right after each save
        handles.put(ckpts.save({{"frozen": frozen, "layers": layers, "step": step}}, step=step))
"""


def _expected(step: int) -> dict[str, torch.Tensor]:
    return {f"layers/{i}": torch.full((N,), float(step * 10 + i)) for i in range(4)}


def _check_consistent(store: ckpt.Store) -> int:
    report = store.verify()
    if not report.ok:  # killed between a branch move and its reflog entry: exactly that, and repairable
        assert [(d.kind, d.object, d.digest) for d in report.damage] == [("missing", "reflog", "refs/heads/main")]
        assert store.repair().ok
        report = store.verify()
    assert report.ok, report
    head = store.resolve("main")
    for snap in store.log("main"):
        if snap.pruned:
            continue
        state = store.load(snap.id)
        assert state["step"] == snap.step
        assert torch.equal(state["frozen"], torch.arange(N, dtype=torch.float32))
        for i, t in enumerate(state["layers"]):
            assert torch.equal(t, _expected(snap.step)[f"layers/{i}"]), (snap.step, i)
    return head.step or 0


def test_sigkill_during_async_saves(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    store = ckpt.init(url, chunk_size=CHUNK)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(20261128)
    last = 0
    for _trial in range(2):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert child.stdout is not None and child.stderr is not None
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        # kill after a few commits (how many: drawn), while the next saves are queued, hashing, writing
        for _ in range(rng.randint(1, 3)):
            line = child.stdout.readline()
            assert line.startswith("committed "), line + child.stderr.read()
            assert int(line.split()[1]) > last
        child.kill()
        child.communicate(timeout=30)
        assert child.returncode == -9
        step = _check_consistent(store)
        assert step > last  # it got somewhere, and each run carried on from the last one's newest save
        last = step
    # leftovers of the killed saves and the pruned snapshots' chunks go with gc; the store stays whole
    store.gc(grace=timedelta(0))
    assert _check_consistent(store) == last
    with Checkpointer(store, "main") as ckpts:
        state = ckpts.resume()
        assert state is not None and state["step"] == last


def test_a_process_that_exits_with_saves_in_flight_finishes_them(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    store = ckpt.init(url)
    script = """
import multiprocessing, sys, torch, ckpt
from ckpt.train import Checkpointer
ckpts = Checkpointer(ckpt.open(sys.argv[1]), "main")  # never closed
for step in range(2):
    ckpts.save({"w": torch.full((1_000_000,), float(step))}, step=step)
# a forked child (a DataLoader worker …) inherits the saves in flight: it must not wait for them at its exit
worker = multiprocessing.get_context("fork").Process(target=print, args=("worker",))
worker.start()
worker.join(timeout=30)
print(worker.exitcode, flush=True)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with refs_locked(store):  # the saves cannot commit until the workers are gone
        child = subprocess.Popen(
            [sys.executable, "-c", script, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "worker"
        assert child.stdout.readline().strip() == "0"  # it exited, at once
        assert child.poll() is None and store.branches() == {}
    child.communicate(timeout=60)
    assert child.returncode == 0
    assert [s.step for s in store.log("main")] == [1, 0]
    assert torch.equal(store.load("main")["w"], torch.full((1_000_000,), 1.0))
