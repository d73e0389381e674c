"""Hugging Face ``Trainer``: ``CkptTrainerCallback`` saves each evaluation into a ckpt branch, stops early, resumes.

::

    import ckpt
    from ckpt.integrations.transformers import CkptTrainerCallback

    ckpts = ckpt.Checkpointer(store, "main", monitor="eval_loss", keep_last=3, model="tiny-gpt")
    cb = CkptTrainerCallback(ckpts, patience=3)
    args = TrainingArguments("out", eval_strategy="epoch", save_strategy="no", ...)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[cb])
    trainer.train(resume_from_checkpoint=cb.resume_path())   # None on the first run
    cb.freeze_best()                                          # -> "tiny-gpt-2026-11-28"

Every evaluation during training becomes the branch's next snapshot: the model's state dict, the optimizer's
and scheduler's, the ``TrainerState`` (as JSON), the random generators (``ckpt.rng_state()``), with the
evaluation's metrics (``eval_loss`` …) and the model's ``config.json`` attached. Saves run in the background
(``ckpt.Checkpointer``). With ``patience`` the callback sets ``control.should_training_stop`` as
``EarlyStoppingCallback`` would, judged on ``monitor``; in a distributed run the main process (the one that
saves) decides, and every process gets its answer. The Trainer's own checkpoints are not needed
(``save_strategy="no"``). At the end of training the staging memory and the save thread are released.

Resuming: ``resume_path()`` takes the branch's newest save and writes what the Trainer reads from a checkpoint
folder, ``model.safetensors`` (streamed from the store), ``trainer_state.json`` and ``config.json``, into a
temporary folder, whose path goes to ``trainer.train(resume_from_checkpoint=…)``. The Trainer then loads the
weights and its ``TrainerState`` (global step, epoch, log history, best metric …) and skips the data it already
trained on, as it does for its own folders: the epochs done, and within a save made mid-epoch the batches done
(``skip_first_batches``; not with ``ignore_data_skip``). What the Trainer would read from pickles
(``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``) the callback loads itself, straight from the store and
never pickled: the optimizer's and scheduler's states when training begins, the random generators (Python,
NumPy, torch CPU, CUDA) where the Trainer would put its own back. For a save made mid-epoch, the generators as
they were when that epoch began are put back before its data is drawn again too, so even a sampler that draws
its order from the global generator (``use_seedable_sampler=False``) repeats it. A run resumed this way goes on
bit for bit as if it had never stopped. The folder is deleted once training begins.

Not covered: the gradient scaler of fp16 mixed precision (the Trainer keeps it out of callbacks' reach),
DeepSpeed and FSDP runs (their checkpoints are sharded, in a layout of their own), and the state of other
stateful callbacks (``restore_callback_states_from_checkpoint``): they start afresh. In a distributed run every
process's generators are gathered to the main process, which saves them (``rng_by_rank``); each gets its own back.

Load the weights alone with ``ckpt.restore(model, store, "main")`` (or ``store.load``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ckpt.errors import RecordError, StateMismatchError
from ckpt.interop import write_file
from ckpt.state import unflatten
from ckpt.training import Checkpointer, CheckpointerOptions, rng_state, scalar_metrics, set_rng_state

if TYPE_CHECKING:
    from ckpt.model import Snapshot
    from ckpt.store import Store

__all__ = ["CkptTrainerCallback"]

#: What the callback puts back itself when a run resumes (the Trainer reads the weights and its state).
_PUT_BACK = ("optimizer", "scheduler", "rng", "rng_at_epoch_start", "rng_by_rank")


class CkptTrainerCallback(TrainerCallback):
    """Save a Hugging Face ``Trainer`` run into a branch of a ckpt store, one snapshot per evaluation; resume it.

    The run's saves are made by a ``ckpt.Checkpointer``: pass one (its options say what is judged, kept and
    written), or a store and branch with ``CheckpointerOptions``. The Trainer reports evaluation metrics as
    ``eval_<name>``: a ``monitor`` in the options is read that way (``loss`` and ``eval_loss`` are the same), and
    is ``eval_loss`` when no options are given.

    Args:
        checkpointer: the ``Checkpointer`` that saves the run (its ``monitor``, if any, an ``eval_`` metric); or
            the store (or its URL) to make one on.
        branch: with a store: the run's branch (default ``main``).
        options: with a store: the ``Checkpointer``'s options (default: ``monitor="eval_loss"``).
        patience: stop training once this many evaluations in a row brought no improvement of ``monitor``
            larger than ``min_delta`` (``None``: no early stopping).
        min_delta: the smallest change that counts as an improvement.
        save_optimizer: also save the optimizer's and scheduler's state (a resumed run needs them to go on
            exactly as the interrupted one would have).

    Raises:
        RecordError: ``patience`` without a monitor; a ``Checkpointer`` whose monitor is not an ``eval_`` metric;
            ``branch`` or ``options`` next to a ``Checkpointer``.

    Example:
        >>> ckpts = ckpt.Checkpointer(store, "main", monitor="eval_loss")  # doctest: +SKIP
        >>> cb = CkptTrainerCallback(ckpts, patience=2)  # doctest: +SKIP
        >>> trainer = Trainer(model=model, args=args, callbacks=[cb], ...)  # doctest: +SKIP
        >>> trainer.train(resume_from_checkpoint=cb.resume_path())  # doctest: +SKIP
    """

    def __init__(
        self,
        checkpointer: Checkpointer | Store | str,
        branch: str | None = None,
        *,
        options: CheckpointerOptions | None = None,
        patience: int | None = None,
        min_delta: float = 0.0,
        save_optimizer: bool = True,
    ) -> None:
        self.checkpointer = _checkpointer(checkpointer, branch, options)
        self.monitor = self.checkpointer.monitor
        if patience is not None and self.monitor is None:
            raise RecordError("early stopping (patience=…) needs a metric to judge by", hint="monitor='eval_loss'")
        self.store = self.checkpointer.store
        self.branch = self.checkpointer.branch
        self.patience = patience
        self.min_delta = min_delta
        self.save_optimizer = save_optimizer
        self._training = False
        self._resume: _Resume | None = None  # prepared by resume_path(), applied when training begins
        self._rng_at_epoch: Any | None = None  # generators to put back when the next epoch begins
        self._rng_at_step: Any | None = None  # … when the next optimizer step begins
        self._epoch_rng: Any | None = None  # the generators as the current epoch began (saved with each save)

    def best(self) -> Snapshot | None:
        """The best snapshot by ``monitor`` (see ``Checkpointer.best``)."""
        return self.checkpointer.best()

    def freeze_best(self, *, model: str | None = None, name: str | None = None, message: str | None = None) -> str:
        """Publish the best snapshot as a frozen release tag (see ``Checkpointer.freeze_best``)."""
        return self.checkpointer.freeze_best(model=model, name=name, message=message)

    # -- resuming ---------------------------------------------------------------------------------------

    def resume_path(self) -> str | None:
        """A checkpoint folder of the branch's newest save, to pass as ``trainer.train(resume_from_checkpoint=…)``.

        The folder is temporary and holds what the Trainer reads itself: ``model.safetensors`` (streamed from
        the store, byte for byte the saved tensors), ``trainer_state.json`` and ``config.json`` when one was
        attached. The optimizer's, scheduler's and random generators' states stay with the callback, which puts
        them back when training begins (nothing is pickled). The folder is deleted when training begins, or
        with the callback.

        Returns:
            The folder's path, or ``None`` when the branch has no save yet (a first run: ``train()`` starts
            afresh).

        Raises:
            StateMismatchError: the newest save was not made by a ``CkptTrainerCallback`` (it lacks ``model``
                or ``trainer_state``).
            MissingObjectError: every save of the run was pruned.

        Example:
            >>> trainer.train(resume_from_checkpoint=cb.resume_path())  # doctest: +SKIP
        """
        snap = self.checkpointer.resume_snapshot()
        if snap is None:
            return None
        self._drop_resume()
        table = self.store.table(snap.id)
        paths = unflatten(table.tree, _TensorPath)  # the state tree, each tensor's path in its place (nothing read)
        if not isinstance(paths, dict) or not {"model", "trainer_state"} <= set(paths):
            keys = sorted(map(str, paths)) if isinstance(paths, dict) else type(paths).__name__
            raise StateMismatchError(
                f"snapshot {snap.short_id} of branch {self.branch!r} was not saved by a CkptTrainerCallback "
                f"(its top level: {keys}); the Trainer cannot resume from it",
                hint="load its weights with ckpt.restore(model, store, rev), or resume a branch this callback saved",
            )
        folder = tempfile.TemporaryDirectory(prefix="ckpt-resume-")
        try:
            root = Path(folder.name)
            weights = _model_paths(paths["model"], snap.short_id)
            write_file(
                root / "model.safetensors",
                (
                    (key, table.tensors[path].dtype, table.tensors[path].shape, self.store.tensor_bytes(snap.id, path))
                    for key, path in weights.items()
                ),
                metadata={"format": "pt"},
            )
            (root / "trainer_state.json").write_text(_trainer_state_json(paths["trainer_state"], snap), "utf-8")
            config = self.store.files(snap.id).get("config.json")
            if config is not None:
                (root / "config.json").write_bytes(config)
            lazy = self.store.tensors(snap.id, framework="torch")
            rest = {k: v for k, v in paths.items() if k in _PUT_BACK}
            state = _fill(rest, lambda ref: lazy[ref.path])
        except BaseException:
            folder.cleanup()
            raise
        self._resume = _Resume(snap, folder, state, paths["trainer_state"], frozenset(weights))
        return folder.name

    def _drop_resume(self) -> None:
        if self._resume is not None:
            self._resume.folder.cleanup()
            self._resume = None

    def _start_from(self, resume: _Resume, args: TrainingArguments, state: TrainerState, kwargs: Any) -> None:
        """Put back what the Trainer did not load from ``resume``'s folder, if it resumed from it."""
        saved = resume.trainer_state
        if state.global_step != saved.get("global_step") or _json(state.log_history) != _json(saved.get("log_history")):
            warnings.warn(
                f"ckpt: resume_path() prepared snapshot {resume.snapshot.short_id} (step {resume.snapshot.step}), "
                "but this training did not resume from it; its optimizer, scheduler and RNG states are not "
                "applied (pass trainer.train(resume_from_checkpoint=cb.resume_path()))",
                stacklevel=3,
            )
            return
        model = kwargs.get("model")
        if model is not None:  # the Trainer loads weights leniently (strict=False): a partial load must not go on
            live = set(model.state_dict())
            missing, unexpected = sorted(live - resume.weights), sorted(resume.weights - live)
            if missing or unexpected:
                raise StateMismatchError(
                    f"snapshot {resume.snapshot.short_id} holds the weights of another model: "
                    f"{len(missing)} of this model's tensors are not in it (e.g. {missing[:3]}), "
                    f"{len(unexpected)} of its tensors are not in this model (e.g. {unexpected[:3]})",
                    hint="resume with the model the interrupted run trained",
                )
        for key, name in (("optimizer", "optimizer"), ("scheduler", "lr_scheduler")):
            live = kwargs.get(name)
            if live is None:
                continue
            if key not in resume.state:
                warnings.warn(
                    f"ckpt: snapshot {resume.snapshot.short_id} holds no {key} state (saved with "
                    f"save_optimizer=False): the {key} starts afresh, so the run will not go on exactly as before",
                    stacklevel=3,
                )
                continue
            try:
                live.load_state_dict(resume.state[key])
            except (KeyError, ValueError, RuntimeError, TypeError) as e:
                raise StateMismatchError(
                    f"the {key} state of snapshot {resume.snapshot.short_id} does not fit this Trainer's {key}: {e}",
                    hint="resume with the same model, optimizer and scheduler settings as the interrupted run",
                ) from e
        # where the Trainer puts its own saved generators back (``_load_rng_state``): at the start of the next
        # epoch when the save ended one, else after it has skipped to the save's batch
        per_epoch = _update_steps_per_epoch(args, state, kwargs.get("train_dataloader"))
        into_epoch = 0 if getattr(args, "ignore_data_skip", False) else state.global_step % per_epoch
        own = _own_generators(resume.state, resume.snapshot.short_id)
        if into_epoch == 0:
            self._rng_at_epoch, self._rng_at_step = own.get("rng"), None
        else:
            self._rng_at_epoch, self._rng_at_step = own.get("rng_at_epoch_start"), own.get("rng")

    # -- Trainer hooks ----------------------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Evaluations from here to the end of training are saved (again, after an earlier ``train()``); a run
        resumed from ``resume_path()`` gets its optimizer's and scheduler's states back."""
        if self.checkpointer.closed:
            self.checkpointer = self.checkpointer.reopened()
        self._training = True
        self._rng_at_epoch = self._rng_at_step = self._epoch_rng = None
        resume, self._resume = self._resume, None
        if resume is not None:
            try:
                self._start_from(resume, args, state, kwargs)
            finally:
                resume.folder.cleanup()  # the Trainer has read the weights and the state

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """A resumed run's generators go back as the epoch begins; the generators' state is noted for the saves."""
        if not self._training:
            return
        if self._rng_at_epoch is not None:
            set_rng_state(self._rng_at_epoch)
            self._rng_at_epoch = None
        self._epoch_rng = rng_state()

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """A run resumed mid-epoch gets its generators back once the Trainer has skipped to the save's batch."""
        if self._rng_at_step is not None:
            set_rng_state(self._rng_at_step)
            self._rng_at_step = None

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Save the model (and optimizer, scheduler, trainer state, RNG) with the evaluation's metrics."""
        if not self._training:
            return  # a trainer.evaluate() of its own: nothing new to save
        raw = kwargs.get("metrics") or {}
        metrics = scalar_metrics(raw)
        generators = {"rng": rng_state(), "rng_at_epoch_start": self._epoch_rng}
        ranks = _generators_by_rank(generators)  # a collective: every process, before the main one saves
        if state.is_world_process_zero:
            model = kwargs["model"]
            tree: dict[str, Any] = {"model": model.state_dict()}
            if self.save_optimizer and kwargs.get("optimizer") is not None:
                tree["optimizer"] = kwargs["optimizer"].state_dict()
            if self.save_optimizer and kwargs.get("lr_scheduler") is not None:
                tree["scheduler"] = kwargs["lr_scheduler"].state_dict()
            tree["trainer_state"] = _saved_trainer_state(args, state, raw)
            tree["rng"] = generators["rng"]
            if self._epoch_rng is not None:
                tree["rng_at_epoch_start"] = self._epoch_rng
            if ranks is not None:
                tree["rng_by_rank"] = ranks
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
        self._rng_at_epoch = self._rng_at_step = self._epoch_rng = None
        self._drop_resume()
        self.checkpointer.close()


@dataclasses.dataclass
class _Resume:
    """What ``resume_path()`` prepared: the snapshot, the folder the Trainer reads, the states put back later."""

    snapshot: Snapshot
    folder: tempfile.TemporaryDirectory[str]
    state: dict[str, Any]
    trainer_state: dict[str, Any]
    weights: frozenset[str]


@dataclasses.dataclass(frozen=True)
class _TensorPath:
    """A tensor's path in a snapshot, standing in the state tree where the tensor will go."""

    path: str


def _model_paths(node: Any, short_id: str) -> dict[str, str]:
    """The model's state-dict keys → tensor paths, from the saved tree's ``model`` entry."""
    if not isinstance(node, dict) or not all(
        isinstance(k, str) and isinstance(v, _TensorPath) for k, v in node.items()
    ):
        raise StateMismatchError(f"the 'model' entry of snapshot {short_id} is not a state dict of named tensors")
    return {k: v.path for k, v in node.items()}


def _fill(node: Any, load: Any) -> Any:
    """``node`` with each ``_TensorPath`` replaced by ``load(it)``."""
    if isinstance(node, _TensorPath):
        return load(node)
    if isinstance(node, dict):
        return {k: _fill(v, load) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, load) for v in node]
    if isinstance(node, tuple):
        return tuple(_fill(v, load) for v in node)
    return node


def _json(value: Any) -> str:
    """Canonical JSON text of a JSON-like value (``NaN`` equals ``NaN`` here, unlike in ``==``)."""
    return json.dumps(value, sort_keys=True)


def _saved_trainer_state(args: TrainingArguments | None, state: TrainerState, metrics: Mapping[str, Any]) -> Any:
    """The ``TrainerState`` as JSON, as the Trainer writes it to ``trainer_state.json`` after this evaluation.

    ``on_evaluate`` runs before the Trainer updates ``best_metric`` and ``best_global_step`` with the
    evaluation (``Trainer._determine_best_metric``); the saved copy gets the update, by the same rule.
    """
    out = json.loads(json.dumps(dataclasses.asdict(state)))
    name = getattr(args, "metric_for_best_model", None)
    if not name:
        return out
    key = name if name.startswith("eval_") else f"eval_{name}"
    if key not in metrics:
        return out  # the Trainer raises for this evaluation; nothing to record
    value = float(metrics[key])
    greater = bool(getattr(args, "greater_is_better", False))
    best = out.get("best_metric")
    if best is None:
        best = -math.inf if greater else math.inf
        out["best_metric"] = best
    if (value > best) if greater else (value < best):
        out["best_metric"] = value
        strategy = getattr(args, "save_strategy", None)
        if str(getattr(strategy, "value", strategy)) in ("steps", "epoch", "best"):
            out["best_global_step"] = int(state.global_step)
    return out


def _trainer_state_json(saved: Any, snap: Snapshot) -> str:
    """``trainer_state.json`` for the Trainer to resume from: the saved state, without a path to a Trainer folder
    (``best_model_checkpoint``) and without fields this version of ``TrainerState`` does not have."""
    if not isinstance(saved, dict):
        raise StateMismatchError(f"the trainer_state of snapshot {snap.short_id} is not a TrainerState as JSON")
    fields = {f.name for f in dataclasses.fields(TrainerState)}
    data = {k: v for k, v in saved.items() if k in fields}
    data["best_model_checkpoint"] = None
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    try:
        TrainerState(**json.loads(text))
    except (TypeError, ValueError) as e:
        raise StateMismatchError(f"the trainer_state of snapshot {snap.short_id} is not a TrainerState: {e}") from e
    return text


def _update_steps_per_epoch(args: TrainingArguments, state: TrainerState, dataloader: Any) -> int:
    """Optimizer steps per epoch, as the Trainer counts them (``Trainer.set_initial_training_values``)."""
    try:
        batches = len(dataloader)
    except TypeError:  # no length (an iterable dataset): the Trainer counts max_steps as one epoch
        return max(int(state.max_steps), 1)
    accumulation = max(int(getattr(args, "gradient_accumulation_steps", 1)), 1)
    return max(batches // accumulation + int(batches % accumulation > 0), 1)


def _distributed() -> Any | None:
    """``torch.distributed`` when this is one process of a distributed run of several, else ``None``."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - transformers' Trainer needs torch
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist


def _main_process_says(stop: bool) -> bool:
    """The main process's stop decision, on every process of a distributed run (``stop`` when not distributed)."""
    dist = _distributed()
    if dist is None:
        return stop
    box = [stop]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def _generators_by_rank(own: dict[str, Any]) -> list[Any] | None:
    """Every process's generators, on the main process of a distributed run (``None`` elsewhere, or when not
    distributed): each process draws its own dropout masks, so each needs its own state back."""
    dist = _distributed()
    if dist is None:
        return None
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(own, out, dst=0)
    return out


def _own_generators(state: Mapping[str, Any], short_id: str) -> dict[str, Any]:
    """The generators this process saved (``rng``, ``rng_at_epoch_start``): its own entry of ``rng_by_rank`` in a
    distributed run, else the main process's."""
    dist = _distributed()
    rank, world = (0, 1) if dist is None else (dist.get_rank(), dist.get_world_size())
    ranks = state.get("rng_by_rank")
    if isinstance(ranks, list) and len(ranks) == world and isinstance(ranks[rank], Mapping):
        return {k: v for k, v in ranks[rank].items() if v is not None}
    own = {k: state[k] for k in ("rng", "rng_at_epoch_start") if state.get(k) is not None}
    if rank != 0:
        saved = len(ranks) if isinstance(ranks, list) else 1
        warnings.warn(
            f"ckpt: snapshot {short_id} was saved by a run of {saved} process(es), this one has {world}: process "
            f"{rank} gets the main process's random generators, so its dropout masks differ from the saved run's",
            stacklevel=4,
        )
    return own


def _checkpointer(
    given: Checkpointer | Store | str, branch: str | None, options: CheckpointerOptions | None
) -> Checkpointer:
    """The callback's ``Checkpointer``: the one given, or one made on the store given (monitor read as ``eval_``).

    Raises:
        RecordError: ``branch`` or ``options`` next to a ``Checkpointer``; a ``Checkpointer`` that monitors a
            metric the Trainer never reports (not ``eval_…``).
    """
    if isinstance(given, Checkpointer):
        if branch is not None or options is not None:
            raise RecordError(
                "a Checkpointer was given, with its own branch and options; branch= and options= go with a store",
                hint="pass CkptTrainerCallback(ckpt.Checkpointer(store, branch, ...)) or "
                "CkptTrainerCallback(store, branch, options=...)",
            )
        if given.monitor is not None and not given.monitor.startswith("eval_"):
            raise RecordError(
                f"the Trainer reports evaluation metrics as eval_<name>; this Checkpointer monitors {given.monitor!r}",
                hint=f"make it with monitor='eval_{given.monitor}'",
            )
        return given
    options = options or CheckpointerOptions(monitor="eval_loss")
    if options.monitor is not None and not options.monitor.startswith("eval_"):
        options = dataclasses.replace(options, monitor=f"eval_{options.monitor}")
    return Checkpointer(given, branch or "main", options=options)
