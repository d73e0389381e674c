"""Distributed training with FSDP2, saved with torch.distributed.checkpoint into a ckpt store.

Run it on two CPU processes (gloo), the same way as on GPUs (nccl)::

    torchrun --standalone --nproc-per-node 2 examples/distributed.py [STORE]

STORE is any ckpt URL every rank can reach: a shared folder (default ``./distributed-store``) or an object
store (``s3://bucket/run``, with the credentials in the environment). Each save is one snapshot of the branch
``main``; each rank writes the chunks of its own shards, and rank 0 commits the snapshot once every rank has
written its part. Then the script starts over from the last save, as a restarted job would, and checks that
it resumes exactly.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import ckpt
import ckpt.dcp


def build(mesh: object, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A small MLP sharded with FSDP2 (each parameter split by rows over the ranks), and its optimizer."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> float:
    """One step on this rank's batch (a deterministic function of the step and the rank)."""
    g = torch.Generator().manual_seed(step * 100 + dist.get_rank())
    x, y = torch.randn(16, 32, generator=g), torch.randn(16, 8, generator=g)
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach().item()


def main() -> None:
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.get_world_size(),))
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CKPT_STORE", "distributed-store")
    if rank == 0:
        with contextlib.suppress(ckpt.StoreExistsError):  # a later run finds it there
            ckpt.init(url, chunk_size="1MiB")
    dist.barrier()
    store = ckpt.open(url)  # every rank opens the store itself

    model, opt = build(mesh, seed=0)
    for step in range(1, 7):
        loss = train_step(model, opt, step)
        if step % 3 == 0:
            model_sd, optim_sd = get_state_dict(model, opt)
            writer = ckpt.dcp.StorageWriter(store, "main", step=step, metrics={"loss": loss}, model="tiny-mlp")
            meta = dcp.save({"model": model_sd, "optim": optim_sd, "step": step}, storage_writer=writer)
            if rank == 0:
                print(f"step {step}: saved {meta.storage_data['snapshot'][:12]}, loss {loss:.4f}")
    expected = {k: v.full_tensor() for k, v in model.state_dict().items()}

    # a restarted job: a fresh model and optimizer, the last save loaded into them (any number of ranks works)
    model, opt = build(mesh, seed=1)
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd, "step": 0}
    dcp.load(state, storage_reader=ckpt.dcp.StorageReader(store, "main"))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    assert state["step"] == 6
    for name, value in model.state_dict().items():
        assert torch.equal(value.full_tensor(), expected[name]), name

    if rank == 0:
        # the same snapshot from one process, without DCP: whole tensors under the model's own names
        whole = store.load("main")
        print("one process reads:", {k: tuple(v.shape) for k, v in whole["model"].items()})
        for snap in store.log("main"):
            print(snap.short_id, "step", snap.step, "loss", round(snap.metrics["loss"], 4))
        print("verify:", "ok" if store.verify().ok else "DAMAGED")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
