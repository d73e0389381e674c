"""One rank of the multi-rank tests: a gloo process group on CPU, started by ``tests/dcp`` as a subprocess.

Usage: ``python ranks.py SCENARIO RANK WORLD PORT ARGS_JSON``. A scenario checks what it can on its rank (the
test sees the exit status and stderr) and prints one line ``RESULT <json>`` for the test to check the rest.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import threading
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

import ckpt
import ckpt.dcp
from ckpt.store import Store


def placement(i: int, t: torch.Tensor, flip: bool = False) -> Any:
    """Rows, columns or replicated, by position: every kind of block appears in one state."""
    if t.ndim == 2:
        return Shard(1) if (i % 2 == 0) != flip else Shard(0)
    return Replicate() if not flip else Shard(0)


def extra_state(values: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The non-model part of the saved state (the test builds the same on one process)."""
    return {
        "plain": values["plain"],
        "step": 3,
        "sched": {"last_epoch": 3, "lrs": [0.1, 0.01]},
        "betas": (0.9, 0.999),
        "note": None,
    }


def uneven() -> dict[str, torch.Tensor]:
    """Tensors whose dimensions do not divide by two: blocks of unequal sizes."""
    base = torch.arange(35, dtype=torch.float32).reshape(7, 5)
    return {
        "rows": base,
        "cols": base.T.contiguous() * 2,
        "one": torch.tensor([[1.0, 2.0, 3.0]]),  # one row for two ranks: rank 1 holds an empty block
        "plain": torch.arange(6, dtype=torch.float64),
    }


def sharded(mesh: DeviceMesh, weights: dict[str, torch.Tensor], flip: bool = False) -> dict[str, DTensor]:
    return {k: distribute_tensor(v, mesh, [placement(i, v, flip)]) for i, (k, v) in enumerate(weights.items())}


def scenario_save(rank: int, world: int, a: dict[str, Any]) -> dict[str, Any]:
    """Save a model as DTensors (rows, columns, replicated, uneven), load it back resharded, save again async."""
    mesh = init_device_mesh("cpu", (world,))
    weights = load_file(a["weights"])
    more = uneven()
    state = {
        "model": sharded(mesh, weights),
        "uneven": {
            "rows": distribute_tensor(more["rows"], mesh, [Shard(0)]),
            "cols": distribute_tensor(more["cols"], mesh, [Shard(1)]),
            "one": distribute_tensor(more["one"], mesh, [Shard(0)]),
        },
        **extra_state(more),
    }
    store = ckpt.open(a["url"], **a["opts"])
    with open(a["config"], "rb") as f:
        config = f.read()
    writer = ckpt.dcp.StorageWriter(
        store, "main", step=3, model="tiny", metrics={"loss": 0.5}, files={"config.json": config}
    )
    md = dcp.save(state, storage_writer=writer)
    sid = md.storage_data["snapshot"]
    assert (writer.snapshot is not None) == (rank == 0), "the coordinator holds the snapshot"
    if rank == 0:
        assert writer.snapshot is not None and writer.snapshot.id == sid

    # 2 -> 2 with every placement changed: DCP reads the blocks each rank now needs
    target = {
        "model": sharded(mesh, {k: torch.zeros_like(v) for k, v in weights.items()}, flip=True),
        "uneven": {
            "rows": distribute_tensor(torch.zeros(7, 5), mesh, [Shard(1)]),
            "cols": distribute_tensor(torch.zeros(5, 7), mesh, [Replicate()]),
            "one": distribute_tensor(torch.zeros(1, 3), mesh, [Shard(1)]),
        },
        "plain": torch.zeros(6, dtype=torch.float64),
        "step": 0,
        "sched": {"last_epoch": 0, "lrs": [0.0, 0.0]},
        "betas": (0.0, 0.0),
        "note": "x",
    }
    dcp.load(target, storage_reader=ckpt.dcp.StorageReader(store, sid))
    for k, v in weights.items():
        assert torch.equal(target["model"][k].full_tensor(), v), k
    assert torch.equal(target["uneven"]["rows"].full_tensor(), more["rows"])
    assert torch.equal(target["uneven"]["cols"].full_tensor(), more["cols"])
    assert torch.equal(target["uneven"]["one"].full_tensor(), more["one"])
    assert torch.equal(target["plain"], more["plain"])
    assert (target["step"], target["sched"], target["betas"], target["note"]) == (
        3,
        {"last_epoch": 3, "lrs": [0.1, 0.01]},
        (0.9, 0.999),
        None,
    ), target

    # a second save, asynchronous, with a tenth of the tensors changed
    changed = sorted(weights)[:: max(1, len(weights) // 10)][: max(1, len(weights) // 10)]
    later = dict(weights)
    for k in changed:
        later[k] = weights[k] + 1
    state2 = {**state, "model": sharded(mesh, later), "step": 4}
    future = dcp.async_save(state2, storage_writer=ckpt.dcp.StorageWriter(store, "main", step=4))
    md2 = future.result()
    return {"snap": sid, "snap2": md2.storage_data["snapshot"], "changed": changed}


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(8, 16)
        self.down = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _fsdp(mesh: DeviceMesh, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    net = _Net()
    fully_shard(net.up, mesh=mesh)
    fully_shard(net.down, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return net, torch.optim.Adam(net.parameters(), lr=1e-2)


def _train(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: range, rank: int) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(1000 * step + rank)
        x, y = torch.randn(4, 8, generator=g), torch.randn(4, 4, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()


def _full(net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    msd, osd = get_state_dict(net, opt)
    out = {f"model.{k}": v.full_tensor() for k, v in msd.items()}
    for name, st in osd["state"].items():
        for k, v in st.items():
            out[f"optim.{name}.{k}"] = v.full_tensor() if isinstance(v, DTensor) else v
    return out


def scenario_train(rank: int, world: int, a: dict[str, Any]) -> dict[str, Any]:
    """FSDP2 on two ranks: load a one-process snapshot (1 -> 2), train, save, go on; then resume a fresh
    model and optimizer from the save and check that the same steps give the same bits."""
    mesh = init_device_mesh("cpu", (world,))
    store = ckpt.open(a["url"], **a["opts"])
    net, opt = _fsdp(mesh, seed=1)
    dcp.load({"model": net.state_dict()}, storage_reader=ckpt.dcp.StorageReader(store, "plain"))
    saved = store.load("plain")["model"]  # the same snapshot, whole, in one process
    for k, v in net.state_dict().items():
        assert torch.equal(v.full_tensor(), saved[k]), k

    _train(net, opt, range(0, 3), rank)
    msd, osd = get_state_dict(net, opt)
    dcp.save({"model": msd, "optim": osd, "step": 3}, storage_writer=ckpt.dcp.StorageWriter(store, "main", step=3))
    _train(net, opt, range(3, 6), rank)
    reference = _full(net, opt)

    fresh, fresh_opt = _fsdp(mesh, seed=2)
    msd, osd = get_state_dict(fresh, fresh_opt)
    state = {"model": msd, "optim": osd, "step": 0}
    dcp.load(state, storage_reader=ckpt.dcp.StorageReader(store, "main"))
    set_state_dict(fresh, fresh_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    assert state["step"] == 3
    _train(fresh, fresh_opt, range(3, 6), rank)
    resumed = _full(fresh, fresh_opt)
    assert list(resumed) == list(reference)
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    return {"compared": len(reference)}


class _Gate:
    """A backend that lets one chunk through, says so on stdout, and then holds every write forever."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self._lock = threading.Lock()
        self._passed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def put_if_absent(self, path: str, data: Any) -> bool:
        if path.startswith("chunks/"):
            with self._lock:
                self._passed += 1
                first = self._passed == 1
            if not first:
                threading.Event().wait()  # held until the test kills this process
            done = self._real.put_if_absent(path, data)
            print("STARTED", flush=True)
            threading.Event().wait()
            return done  # pragma: no cover - never reached
        return self._real.put_if_absent(path, data)


def _small_state(mesh: DeviceMesh, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    full = {f"layer{i}": torch.randn(16, 32, generator=g) for i in range(4)}
    return {"model": {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in full.items()}, "step": seed}


def scenario_kill(rank: int, world: int, a: dict[str, Any]) -> dict[str, Any]:
    """Rank 1 stops for good after its first chunk (the test kills it); rank 0 must see the save fail."""
    mesh = init_device_mesh("cpu", (world,))
    store = ckpt.open(a["url"], **a["opts"])
    if rank == 1:
        store = Store(_Gate(store.backend), store.config)  # type: ignore[arg-type]
    try:
        dcp.save(_small_state(mesh, a["seed"]), storage_writer=ckpt.dcp.StorageWriter(store, "main", step=a["seed"]))
    except Exception as e:  # gloo reports the dead peer
        return {"raised": type(e).__name__}
    return {"raised": None}


def scenario_resave(rank: int, world: int, a: dict[str, Any]) -> dict[str, Any]:
    """The same save, with every rank alive."""
    mesh = init_device_mesh("cpu", (world,))
    store = ckpt.open(a["url"], **a["opts"])
    md = dcp.save(_small_state(mesh, a["seed"]), storage_writer=ckpt.dcp.StorageWriter(store, "main", step=a["seed"]))
    return {"snap": md.storage_data["snapshot"]}


SCENARIOS = {"save": scenario_save, "train": scenario_train, "kill": scenario_kill, "resave": scenario_resave}


def main() -> None:
    scenario, rank, world, port, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        result = SCENARIOS[scenario](rank, world, json.loads(args))
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        dist.destroy_process_group()
    os._exit(0)  # no lingering threads of a dead peer's process group


if __name__ == "__main__":
    main()
