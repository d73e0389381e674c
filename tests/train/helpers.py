"""Small real models and data for the training tests (CPU, a few KB of weights)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import ckpt


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A two-layer MLP with dropout."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 1))


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> float:
    """One real optimisation step on a random batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 8, generator=g)
    y = x.sum(1, keepdim=True)
    loss = ((model(x) - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def model_tensors(store: ckpt.Store, rev: str, key: str = "model") -> dict[str, torch.Tensor]:
    """The tensors saved under ``state[key]`` of a snapshot."""
    return dict(store.load(rev)[key])


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bit-identical tensors under the same names."""
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(-1).view(torch.uint8), b[k].contiguous().view(-1).view(torch.uint8)), k


@contextlib.contextmanager
def refs_locked(store: ckpt.Store) -> Iterator[None]:
    """Hold a local store's ref lock: saves write their chunks and records, then wait to move the branch."""
    root = store.backend.local_path("")
    assert root is not None
    path = Path(root) / "locks" / "refs.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
