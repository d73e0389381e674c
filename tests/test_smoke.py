"""A first end-to-end pass on every backend."""

from __future__ import annotations

import torch

import ckpt


def test_save_load_on_every_backend(store: ckpt.Store) -> None:
    state = {"model": {"w": torch.randn(64, 64), "b": torch.zeros(3)}, "step": 3}
    a = store.save(state, step=1, model="m")
    b = store.save({**state, "step": 4}, step=2)
    assert b.parents == (a.id,)
    back = store.load("main~1")
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert store.verify().ok
    tag = store.freeze("main")
    assert store.tags()[tag].frozen
