"""A tiny GPT-2 ``Trainer`` run saved by ``CkptTrainerCallback``: built the same way by the resume tests and by
the process they kill.

As a script, ``python tests/train/trainer_run.py STORE BRANCH PAUSE_AT OUT`` trains 4 epochs of 4 optimizer steps;
once step PAUSE_AT is done it waits until its saves are committed, prints ``paused <branch head id>`` and
blocks reading stdin, in the middle of an epoch whose save is not made yet: the test kills it there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import transformers

import ckpt
from ckpt.integrations.transformers import CkptTrainerCallback

EPOCHS = 4
STEPS_PER_EPOCH = 4  # 32 rows, batches of 8


def tiny_gpt2() -> transformers.GPT2LMHeadModel:
    """A 1-layer GPT-2 with dropout on (its masks draw from torch's global generator)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def tiny_gpt2_lora() -> Any:
    """The tiny GPT-2 with a LoRA on its attention (dropout on), as PEFT trains it: only the LoRA learns."""
    from peft import LoraConfig, get_peft_model

    model = tiny_gpt2()
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.1)
    return get_peft_model(model, config)


def rows(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` random sequences of 16 tokens, their own labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 32, (16,), generator=g)
        out.append({"input_ids": ids, "labels": ids})
    return out


def trainer(
    store: ckpt.Store, branch: str, out: Path, *, lora: bool = False, **overrides: Any
) -> tuple[Any, CkptTrainerCallback]:
    """A ``Trainer`` of the tiny GPT-2 (with a LoRA) with a ``CkptTrainerCallback`` on ``branch``, and the callback."""
    options: dict[str, Any] = {
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "num_train_epochs": EPOCHS,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-2,
        "metric_for_best_model": "eval_loss",
        "report_to": [],
        "use_cpu": True,
        "logging_strategy": "epoch",
        "disable_tqdm": True,
    }
    options.update(overrides)
    cb = CkptTrainerCallback(ckpt.Checkpointer(store, branch, monitor="eval_loss"))
    t = transformers.Trainer(
        model=tiny_gpt2_lora() if lora else tiny_gpt2(),
        args=transformers.TrainingArguments(str(out), **options),
        train_dataset=rows(8 * STEPS_PER_EPOCH, 1),
        eval_dataset=rows(8, 2),
        callbacks=[cb],
    )
    return t, cb


class PauseAt(transformers.TrainerCallback):  # type: ignore[misc]
    """After optimizer step ``step``: wait for the saves, tell the parent through stdout, block on stdin."""

    def __init__(self, cb: CkptTrainerCallback, step: int) -> None:
        self.cb = cb
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            head = self.cb.checkpointer.latest()  # waits until every save issued so far is committed
            print("paused", None if head is None else head.id, flush=True)
            sys.stdin.readline()


if __name__ == "__main__":
    url, branch, pause_at, out = sys.argv[1:5]
    store = ckpt.open(url)
    t, cb = trainer(store, branch, Path(out))
    t.add_callback(PauseAt(cb, int(pause_at)))
    t.train(resume_from_checkpoint=cb.resume_path())
    print("finished", flush=True)
