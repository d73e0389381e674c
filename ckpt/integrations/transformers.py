"""Hugging Face ``Trainer``: ``CkptTrainerCallback`` saves each evaluation into a ckpt branch and stops early.

::

    from ckpt.integrations.transformers import CkptTrainerCallback

    cb = CkptTrainerCallback(store, "main", monitor="eval_loss", patience=3, keep_last=3, model="tiny-gpt")
    args = TrainingArguments("out", eval_strategy="epoch", save_strategy="no", ...)
    Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[cb]).train()
    cb.freeze_best()                                          # -> "tiny-gpt-2026-11-28"

Every evaluation during training becomes the branch's next snapshot: the model's state dict, the optimizer's
and scheduler's, the ``TrainerState`` (as JSON), the random generators (``ckpt.rng_state()``), with the
evaluation's metrics (``eval_loss`` …) and the model's ``config.json`` attached. Saves run in the background
(``ckpt.Checkpointer``). With ``patience`` the callback sets ``control.should_training_stop`` as
``EarlyStoppingCallback`` would, judged on ``monitor``; in a distributed run the main process (the one that
saves) decides, and every process gets its answer. The Trainer's own checkpoints are not needed
(``save_strategy="no"``). At the end of training the staging memory and the save thread are released.

Load the weights back with ``ckpt.restore(model, store, "main")`` (or ``store.load``); the Trainer's
``resume_from_checkpoint`` reads only its own folders.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ckpt.rng import rng_state
from ckpt.train import Checkpointer

if TYPE_CHECKING:
    from ckpt.model import Snapshot
    from ckpt.store import Store

__all__ = ["CkptTrainerCallback"]


class CkptTrainerCallback(TrainerCallback):
    """Save a Hugging Face ``Trainer`` run into a branch of a ckpt store, one snapshot per evaluation.

    Args:
        store: the store (or its URL).
        branch: the run's branch.
        monitor: the evaluation metric to judge by; ``loss`` and ``eval_loss`` are the same (the Trainer
            prefixes ``eval_``).
        mode: ``"min"`` or ``"max"``.
        patience: stop training once this many evaluations in a row brought no improvement of ``monitor``
            larger than ``min_delta`` (``None``: no early stopping).
        min_delta: the smallest change that counts as an improvement.
        keep_last: retention: keep the last N saves (see ``ckpt.Checkpointer``).
        keep_best: retention: keep the best K saves by ``monitor``.
        keep_every: retention: keep saves at steps divisible by N.
        async_save: hash and write in the background.
        model: the model name recorded on the snapshots and used by ``freeze_best``.
        save_optimizer: also save the optimizer's and scheduler's state.

    Example:
        >>> cb = CkptTrainerCallback(store, "main", monitor="eval_loss", patience=2)  # doctest: +SKIP
        >>> Trainer(model=model, args=args, callbacks=[cb], ...).train()  # doctest: +SKIP
    """

    def __init__(
        self,
        store: Store | str,
        branch: str = "main",
        *,
        monitor: str = "eval_loss",
        mode: Literal["min", "max"] = "min",
        patience: int | None = None,
        min_delta: float = 0.0,
        keep_last: int | None = None,
        keep_best: int | None = None,
        keep_every: int | None = None,
        async_save: bool = True,
        model: str | None = None,
        save_optimizer: bool = True,
    ) -> None:
        self.monitor = monitor if monitor.startswith("eval_") else f"eval_{monitor}"
        self.checkpointer = Checkpointer(
            store,
            branch,
            monitor=self.monitor,
            mode=mode,
            keep_last=keep_last,
            keep_best=keep_best,
            keep_every=keep_every,
            async_save=async_save,
            model=model,
        )
        self.store = self.checkpointer.store
        self.branch = branch
        self.patience = patience
        self.min_delta = min_delta
        self.save_optimizer = save_optimizer
        self._training = False

    def best(self) -> Snapshot | None:
        """The best snapshot by ``monitor`` (see ``Checkpointer.best``)."""
        return self.checkpointer.best()

    def freeze_best(self, *, model: str | None = None, name: str | None = None, message: str | None = None) -> str:
        """Publish the best snapshot as a frozen release tag (see ``Checkpointer.freeze_best``)."""
        return self.checkpointer.freeze_best(model=model, name=name, message=message)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Evaluations from here to the end of training are saved (again, after an earlier ``train()``)."""
        if self.checkpointer.closed:
            self.checkpointer = self.checkpointer.reopened()
        self._training = True

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Save the model (and optimizer, scheduler, trainer state, RNG) with the evaluation's metrics."""
        if not self._training:
            return  # a trainer.evaluate() of its own: nothing new to save
        metrics = _metrics(kwargs.get("metrics") or {})
        if state.is_world_process_zero:
            model = kwargs["model"]
            tree: dict[str, Any] = {"model": model.state_dict()}
            if self.save_optimizer and kwargs.get("optimizer") is not None:
                tree["optimizer"] = kwargs["optimizer"].state_dict()
            if self.save_optimizer and kwargs.get("lr_scheduler") is not None:
                tree["scheduler"] = kwargs["lr_scheduler"].state_dict()
            tree["trainer_state"] = json.loads(json.dumps(dataclasses.asdict(state)))
            tree["rng"] = rng_state()
            config = getattr(model, "config", None)
            to_json = getattr(config, "to_json_string", None)
            files = {"config.json": str(to_json()).encode()} if callable(to_json) else None
            self.checkpointer.save(
                tree,
                step=int(state.global_step),
                epoch=state.epoch,
                metrics=metrics,
                message=f"step {state.global_step}",
                files=files,
            )
        if self.patience is not None:
            stop = state.is_world_process_zero and self.checkpointer.should_stop(self.patience, self.min_delta)
            if _main_process_says(stop):  # every process stops, or none: the others would hang without it
                control.should_training_stop = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Finish the saves in flight (a failed one raises here) and release the staging memory and the save
        thread; reading (``best()``, ``freeze_best()``) still works."""
        self._training = False
        self.checkpointer.close()


def _main_process_says(stop: bool) -> bool:
    """The main process's stop decision, on every process of a distributed run (``stop`` when not distributed)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - transformers' Trainer needs torch
        return stop
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stop
    box = [stop]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def _metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of an evaluation's metrics."""
    out = {}
    for name, value in values.items():
        if isinstance(value, bool):
            continue
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            continue
    return out
