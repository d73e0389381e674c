"""Resume a Hugging Face ``Trainer`` run from a ckpt store, and end exactly where an uninterrupted run ends.

    python examples/docs_trainer_resume.py [STORE]      # default: ./trainer-runs

A tiny GPT-2 (built from a config, dropout on) trains 4 epochs with ``CkptTrainerCallback``, which saves every
evaluation into the store. The first attempt stops after epoch 2 (standing in for a preempted job); a new
Trainer, with a freshly built model, picks the run up with ``trainer.train(resume_from_checkpoint=
cb.resume_path())``. Its final weights and optimizer state are compared, bit for bit, with a run that was never
interrupted.
"""

from __future__ import annotations

import sys
import warnings

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

import ckpt
from ckpt.integrations.transformers import CkptTrainerCallback

warnings.filterwarnings("ignore")  # the Trainer's advice about tiny CPU runs is not the point here
where = sys.argv[1] if len(sys.argv) > 1 else "trainer-runs"
store = ckpt.init(where)


def rows(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": (ids := torch.randint(0, 32, (16,), generator=g)), "labels": ids} for _ in range(n)]


def run(branch: str, *callbacks: TrainerCallback) -> tuple[Trainer, CkptTrainerCallback]:
    """A Trainer of a new tiny GPT-2, saving into ``branch``; it resumes from the branch's newest save, if any."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0)
    )
    cb = CkptTrainerCallback(ckpt.Checkpointer(store, branch, monitor="eval_loss", model="tiny-gpt"))
    args = TrainingArguments(
        f"out-{branch}",
        eval_strategy="epoch",
        save_strategy="no",  # the store keeps the checkpoints; the Trainer writes no folder of its own
        num_train_epochs=4,
        per_device_train_batch_size=8,
        learning_rate=5e-2,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows(32, 1),
        eval_dataset=rows(8, 2),
        callbacks=[cb, *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # quiet: the store has the metrics
    trainer.train(resume_from_checkpoint=cb.resume_path())  # None on a new branch: a fresh start
    return trainer, cb


class Preempted(TrainerCallback):
    """Stops the run after epoch 2, as a preempted job would (it saved epoch 2 first)."""

    def on_epoch_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.epoch >= 2:
            control.should_training_stop = True


uninterrupted, _ = run("whole")

run("main", Preempted())
print("saved before the stop:", [(s.step, s.epoch) for s in store.log("main")])
resumed, cb = run("main")  # a new Trainer and a new model: everything comes back from the store
print("after resuming:       ", [(s.step, s.epoch) for s in store.log("main")])

a, b = uninterrupted.model.state_dict(), resumed.model.state_dict()
weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
a, b = uninterrupted.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
moments = a.keys() == b.keys() and all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
print("bit-identical to the uninterrupted run:", weights and moments)
assert weights and moments and resumed.state.global_step == uninterrupted.state.global_step == 16
print("best:", cb.best().step, "frozen as", cb.freeze_best(name="tiny-gpt-best"))
