"""A small model family for the UI's tests, screenshots and docs: runs with curves, a branch, a frozen release,
pruned saves, a fine-tune, a LoRA adapter and a merge — numpy weights, real records in a real store."""

from __future__ import annotations

from typing import Any

import numpy as np

import ckpt

#: The validation loss of each save of main: it improves, bottoms out at the 5th save, then creeps up.
VAL = [1.20, 0.86, 0.71, 0.62, 0.58, 0.59, 0.61, 0.64]
TRAIN = [1.31, 0.92, 0.74, 0.61, 0.52, 0.45, 0.40, 0.36]
LAYERS = 4


def weights(seed: int) -> dict[str, Any]:
    """A tiny transformer-shaped state dict of float32 arrays."""
    rng = np.random.default_rng(seed)
    sd: dict[str, Any] = {"embed_tokens.weight": rng.standard_normal((64, 16)).astype(np.float32)}
    for i in range(LAYERS):
        for part in ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"):
            sd[f"layers.{i}.{part}.weight"] = rng.standard_normal((16, 16)).astype(np.float32)
    sd["lm_head.weight"] = rng.standard_normal((64, 16)).astype(np.float32)
    return sd


def nudge(sd: dict[str, Any], scale: float, seed: int, only: str = "") -> dict[str, Any]:
    """Each tensor (whose name contains ``only``) plus a little noise: what one epoch of training does."""
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.standard_normal(v.shape).astype(np.float32)) if only in k else v for k, v in sd.items()}


def build(store: ckpt.Store) -> dict[str, ckpt.Snapshot]:
    """Fill ``store`` with the family; returns the snapshots by a short name.

    main: m1 … m8 (import, then continue; val_loss best at m5, frozen as ``tiny-lm-v1``; m2 and m3 pruned);
    exp/lr-3e-4: from m4, e1 … e3; instruct: finetune of the release, i1 … i2 (config.json attached);
    lora: an adapter over i2; merged: lora merged with its base (two parents).
    """
    snaps: dict[str, ckpt.Snapshot] = {}
    sd = weights(0)
    for i, (train, val) in enumerate(zip(TRAIN, VAL, strict=True)):
        sd = nudge(sd, 0.05 / (i + 1), seed=100 + i)
        snaps[f"m{i + 1}"] = store.save(
            {"model": sd, "step": (i + 1) * 500},
            step=(i + 1) * 500,
            epoch=i + 1,
            model="tiny-lm",
            metrics={"train_loss": train, "val_loss": val},
            message=f"epoch {i + 1}",
        )
    store.freeze(snaps["m5"].id, name="tiny-lm-v1", message="best validation loss")
    store.branch("exp/lr-3e-4", at=snaps["m4"].id)
    exp = store.load(snaps["m4"].id)["model"]
    for j, val in enumerate([0.57, 0.55, 0.56]):
        exp = nudge(exp, 0.03, seed=200 + j)
        snaps[f"e{j + 1}"] = store.save(
            {"model": exp, "step": 2500 + 500 * j},
            branch="exp/lr-3e-4",
            step=2500 + 500 * j,
            epoch=5 + j,
            metrics={"train_loss": 0.55 - 0.05 * j, "val_loss": val},
            message="lr 3e-4",
        )
    config = b'{"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 4}'
    inst = nudge(store.load("tiny-lm-v1")["model"], 0.02, seed=300, only="mlp")
    snaps["i1"] = store.derive(
        "tiny-lm-v1", {"model": inst}, branch="instruct", model="tiny-lm-instruct", step=100,
        metrics={"val_loss": 0.48}, message="instruction tuning", files={"config.json": config},
    )  # fmt: skip
    inst = nudge(inst, 0.01, seed=301, only="mlp")
    snaps["i2"] = store.save(
        {"model": inst}, branch="instruct", step=200, metrics={"val_loss": 0.45}, files={"config.json": config}
    )
    rng = np.random.default_rng(400)
    lora = {
        f"layers.{i}.self_attn.q_proj.lora_{ab}.weight": rng.standard_normal(shape).astype(np.float32)
        for i in range(LAYERS)
        for ab, shape in (("A", (2, 16)), ("B", (16, 2)))
    }
    snaps["lora"] = store.save(
        {"lora": lora}, branch="lora", parents=[snaps["i2"].id], relation="adapter", base=snaps["i2"].id,
        model="tiny-lm-chat-lora", message="LoRA r=2 on q_proj",
    )  # fmt: skip
    snaps["merged"] = store.save(
        {"model": nudge(inst, 0.01, seed=500, only="q_proj")}, branch="merged",
        parents=[snaps["lora"].id, snaps["i2"].id], relation="merge", model="tiny-lm-chat",
        message="lora merged into instruct",
    )  # fmt: skip
    for name in ("m2", "m3"):
        store.prune(snaps[name].id, reason="retention: KeepLast(3) | KeepBest('val_loss', 1)")
        snaps[name] = store.get(snaps[name].id)
    return snaps
