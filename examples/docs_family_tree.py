"""The family tree of the home page: a base model, its instruct and chat fine-tunes, and a LoRA adapter.

    python examples/docs_family_tree.py [STORE]      # default: ./family

Builds a small store with numpy only (no torch): three epochs of a base model on ``main`` (the best one
frozen as a dated release, and a retry from epoch 1 on a branch), an instruct model fine-tuned from the
release, a chat model fine-tuned from the instruct model, and a LoRA adapter over the chat model. Then
``ckpt --store STORE log --graph --all`` draws it; the home page shows that drawing, and a test checks that it
still matches what this script makes.
"""

from __future__ import annotations

import sys

import numpy as np

import ckpt
from ckpt.adapters import save_adapter

where = sys.argv[1] if len(sys.argv) > 1 else "family"
store = ckpt.init(where)
rng = np.random.default_rng(0)
names = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qkvo"] + ["lm_head.weight"]
Weights = dict[str, np.ndarray]


def tune(start: Weights, names_to_change: list[str], scale: float) -> Weights:
    """Stands in for training from ``start``: changes only the named tensors (the others stay byte-identical,
    so their chunks are shared with ``start``'s snapshot)."""
    out = dict(start)
    for name in names_to_change:
        out[name] = start[name] + scale * rng.standard_normal((16, 16)).astype(np.float32)
    return out


def weights_of(rev: str) -> Weights:
    """The model weights a snapshot holds: every line of the family starts from what its parent really is."""
    return dict(store.load(rev, framework="numpy")["model"])


# the base model: three epochs on main; the best is frozen as tiny-llama-<YYYY-MM-DD>
base = {name: rng.standard_normal((16, 16)).astype(np.float32) for name in names}
for epoch, val_loss in enumerate([0.92, 0.61, 0.48]):
    base = tune(base, names, 0.1)
    store.save(
        {"model": base},
        model="tiny-llama",
        epoch=epoch,
        step=100 * (epoch + 1),
        metrics={"val_loss": val_loss},
        message=f"epoch {epoch}",
    )
release = store.freeze("main")

# a retry from epoch 1 with a lower learning rate, on its own branch (main keeps its history)
store.branch("retry", at="main~1")
retry = tune(weights_of("retry"), names, 0.05)
store.save({"model": retry}, "retry", epoch=2, step=300, metrics={"val_loss": 0.52}, message="lower lr")

# instruct and chat: each a fine-tune of the one before, changing the top layer and the head
instruct = tune(weights_of(release), names[-5:], 0.01)
store.derive(release, {"model": instruct}, branch="instruct", model="tiny-llama-instruct", message="sft")
instruct = tune(instruct, names[-5:], 0.01)
store.save({"model": instruct}, "instruct", step=50, message="more sft")
chat = tune(weights_of("instruct"), names[-5:], 0.01)
store.derive("instruct", {"model": chat}, branch="chat", model="tiny-llama-chat", message="chat sft")

# a LoRA adapter over the chat model: only its own small tensors are stored
lora = {}
for module in ("q", "v"):
    prefix = f"base_model.model.model.layers.1.self_attn.{module}_proj"
    lora[f"{prefix}.lora_A.weight"] = rng.standard_normal((4, 16)).astype(np.float32)
    lora[f"{prefix}.lora_B.weight"] = np.zeros((16, 4), np.float32)
config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
save_adapter(store, "chat", lora, branch="chat-lora", config=config, message="persona adapter")

print(f"{len(store.snapshots())} snapshots; draw them with: ckpt --store {where} log --graph --all")
