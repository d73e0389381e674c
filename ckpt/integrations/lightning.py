"""PyTorch Lightning: ``CkptCallback`` saves a run into a ckpt branch, judges it, stops it early, resumes it.

::

    import ckpt
    from ckpt.integrations.lightning import CkptCallback

    cb = CkptCallback(ckpt.Checkpointer(store, "main", monitor="val_loss", keep_last=3, model="tiny-lm"), patience=3)
    trainer = L.Trainer(max_epochs=50, callbacks=[cb])
    trainer.fit(module, train_loader, val_loader, ckpt_path=cb.resume_path())  # None on the first run
    cb.freeze_best()                                                           # -> "tiny-lm-2026-11-28"
    trainer.test(module, test_loader, ckpt_path="best")                        # the best snapshot, from the store

At the end of every ``every_n_epochs``-th training epoch (after that epoch's validation) the callback saves the
full Lightning checkpoint — weights, optimizer and scheduler states, loop progress, callback states, the
random generators (``ckpt.rng_state()``) — as the branch's next snapshot, with ``trainer.callback_metrics`` as
its metrics (an epoch without a validation is saved without the validation's stale metrics, so it is not
judged). Saves run in the background (``ckpt.Checkpointer``); ``patience`` turns on early stopping on
``monitor`` with the semantics of Lightning's ``EarlyStopping``. ``teardown`` releases the staging memory and
the save thread; the next ``fit`` saves again. It takes the place of ``ModelCheckpoint``
(it is a ``Checkpoint`` callback, so Lightning adds no default one).

Paths ``ckpt:<revision>`` (``resume_path()``, ``best_model_path``, ``last_model_path``) load from the store
wherever Lightning takes a ``ckpt_path``: the callback teaches the trainer's ``CheckpointIO`` to read them.
Only the global-zero process saves; the stop decision is broadcast from it.

The callback targets the ``lightning`` package (``lightning.pytorch``), or ``pytorch_lightning`` when only that
one is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Checkpoint
    from lightning.pytorch.plugins.io import CheckpointIO
except ImportError:  # pragma: no cover - the standalone package
    import pytorch_lightning as pl  # type: ignore[no-redef]
    from pytorch_lightning.callbacks import Checkpoint  # type: ignore[assignment]
    from pytorch_lightning.plugins.io import CheckpointIO  # type: ignore[assignment]

from ckpt.errors import RecordError, RevisionNotFoundError
from ckpt.training import Checkpointer, CheckpointerOptions, rng_state, scalar_metrics, set_rng_state

if TYPE_CHECKING:
    from ckpt.model import Snapshot
    from ckpt.store import Store

__all__ = ["PREFIX", "CkptCallback"]

#: Checkpoint paths that start with this name a revision of the callback's store: ``ckpt:main~2``.
PREFIX = "ckpt:"


class CkptCallback(Checkpoint):
    """Save every epoch of a Lightning run into a branch of a ckpt store.

    The run's saves are made by a ``ckpt.Checkpointer``: pass one (its options say what is judged, kept and
    written), or a store and branch with ``CheckpointerOptions``.

    Args:
        checkpointer: the ``Checkpointer`` that saves the run; or the store (or its URL) to make one on.
        branch: with a store: the run's branch (default ``main``).
        options: with a store: the ``Checkpointer``'s options (monitor, mode, retention, model …).
        patience: stop training once this many saves in a row brought no improvement of the ``Checkpointer``'s
            ``monitor`` larger than ``min_delta`` (``None``: no early stopping).
        min_delta: the smallest change that counts as an improvement.
        every_n_epochs: save at the end of every N-th training epoch.
        weights_only: save only the weights (and loop state), not the optimizers and schedulers.

    Raises:
        RecordError: ``patience`` without a monitor; ``branch`` or ``options`` next to a ``Checkpointer``.

    Example:
        >>> ckpts = ckpt.Checkpointer(store, "main", monitor="val_loss", keep_last=3)  # doctest: +SKIP
        >>> cb = CkptCallback(ckpts, patience=3)  # doctest: +SKIP
        >>> L.Trainer(callbacks=[cb]).fit(module, ckpt_path=cb.resume_path())  # doctest: +SKIP
    """

    def __init__(
        self,
        checkpointer: Checkpointer | Store | str,
        branch: str | None = None,
        *,
        options: CheckpointerOptions | None = None,
        patience: int | None = None,
        min_delta: float = 0.0,
        every_n_epochs: int = 1,
        weights_only: bool = False,
    ) -> None:
        super().__init__()
        self.checkpointer = _checkpointer(checkpointer, branch, options)
        self.store = self.checkpointer.store
        self.branch = self.checkpointer.branch
        self.patience = patience
        self.min_delta = min_delta
        self.every_n_epochs = max(1, every_n_epochs)
        self.weights_only = weights_only
        if patience is not None and self.checkpointer.monitor is None:
            raise RecordError("early stopping (patience=…) needs a metric to judge by", hint="pass monitor='val_loss'")
        self._validated = False  # a validation ran since the last save
        self._validation_keys: set[str] = set()  # the metrics validations log
        self._before_validation: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        """Where Lightning keeps this callback's state in a checkpoint (one per branch)."""
        return self._generate_state_key(branch=self.branch)

    # -- paths Lightning can load ----------------------------------------------------------------------

    def resume_path(self) -> str | None:
        """``ckpt:<id>`` of the branch's newest save, to pass as ``fit(ckpt_path=…)``; ``None`` if there is none."""
        snap = self.checkpointer.resume_snapshot()
        return None if snap is None else PREFIX + snap.id

    @property
    def best_model_path(self) -> str:
        """``ckpt:<id>`` of the best save by ``monitor`` (what ``ckpt_path="best"`` loads), or ``""``."""
        if self.checkpointer.monitor is None:
            return ""
        snap = self.checkpointer.best()
        return "" if snap is None else PREFIX + snap.id

    @property
    def last_model_path(self) -> str:
        """``ckpt:<id>`` of the newest save, or ``""``."""
        snap = self.checkpointer.latest()
        return "" if snap is None else PREFIX + snap.id

    def best(self) -> Snapshot | None:
        """The best snapshot by ``monitor`` (see ``Checkpointer.best``)."""
        return self.checkpointer.best()

    def freeze_best(self, *, model: str | None = None, name: str | None = None, message: str | None = None) -> str:
        """Publish the best snapshot as a frozen release tag (see ``Checkpointer.freeze_best``)."""
        return self.checkpointer.freeze_best(model=model, name=name, message=message)

    # -- Lightning hooks -------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Teach the trainer's checkpoint IO to read ``ckpt:`` paths (before Lightning restores any); after an
        earlier ``teardown``, start saving again."""
        if self.checkpointer.closed:
            self.checkpointer = self.checkpointer.reopened()
        io = trainer.strategy.checkpoint_io
        if not (isinstance(io, _StoreIO) and io.store is self.store):
            trainer.strategy.checkpoint_io = _StoreIO(io, self.store)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the metrics before the validation, to tell which ones it logs."""
        if not trainer.sanity_checking:
            self._before_validation = scalar_metrics(trainer.callback_metrics)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The next save carries this validation's metrics."""
        if trainer.sanity_checking:
            return
        before = self._before_validation
        now = scalar_metrics(trainer.callback_metrics)
        self._validation_keys |= {k for k, v in now.items() if k not in before or before[k] != v}
        self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save the epoch (after its validation), apply retention, and decide on early stopping.

        An epoch without a validation (``check_val_every_n_epoch`` > 1) is saved without the validation
        metrics: ``callback_metrics`` still holds the last validation's values, which must not be judged again.
        """
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        metrics = scalar_metrics(trainer.callback_metrics)
        if not self._validated:
            metrics = {k: v for k, v in metrics.items() if k not in self._validation_keys}
        self._validated = False
        stop = False
        if trainer.is_global_zero:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=self.weights_only)
            self.checkpointer.save(
                checkpoint,
                step=int(trainer.global_step),
                epoch=int(trainer.current_epoch),
                metrics=metrics,
                message=f"epoch {trainer.current_epoch}",
            )
            if self.patience is not None:
                stop = self.checkpointer.should_stop(self.patience, self.min_delta)
        if self.patience is not None:
            stop = bool(trainer.strategy.broadcast(stop, src=0))
            trainer.should_stop = trainer.should_stop or stop

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Finish the saves in flight (a failed one raises here) and release the staging memory and the save
        thread; reading (``best()``, the paths) still works, and the next ``fit`` saves again."""
        self.checkpointer.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Finish the saves in flight, so an interrupted run keeps what it saved."""
        try:
            self.checkpointer.wait()
        except Exception as e:
            if hasattr(exception, "add_note"):
                exception.add_note(f"ckpt: a background save failed too: {type(e).__name__}: {e}")

    def state_dict(self) -> dict[str, Any]:
        """The random generators' state, saved in every Lightning checkpoint."""
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put the random generators back when Lightning restores a checkpoint."""
        if "rng" in state_dict:
            set_rng_state(state_dict["rng"])


class _StoreIO(CheckpointIO):
    """A ``CheckpointIO`` that loads ``ckpt:<rev>`` from a store and leaves every other path to the one it wraps."""

    def __init__(self, inner: CheckpointIO, store: Store) -> None:
        self.inner = inner
        self.store = store

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Files are the wrapped IO's business."""
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        """``ckpt:<rev>``: the snapshot's state tree (nothing pickled); any other path: the wrapped IO."""
        text = str(path)
        if text.startswith(PREFIX):
            try:
                return self.store.load(text[len(PREFIX) :], framework="torch")
            except RevisionNotFoundError:
                if not isinstance(self.inner, _StoreIO):
                    raise
        return self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        """Files are the wrapped IO's business."""
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        """Tear down the wrapped IO."""
        self.inner.teardown()


def _checkpointer(
    given: Checkpointer | Store | str, branch: str | None, options: CheckpointerOptions | None
) -> Checkpointer:
    """The callback's ``Checkpointer``: the one given, or one made on the store given.

    Raises:
        RecordError: ``branch`` or ``options`` next to a ``Checkpointer`` (it has its own).
    """
    if isinstance(given, Checkpointer):
        if branch is not None or options is not None:
            raise RecordError(
                "a Checkpointer was given, with its own branch and options; branch= and options= go with a store",
                hint="pass CkptCallback(ckpt.Checkpointer(store, branch, ...)) or "
                "CkptCallback(store, branch, options=...)",
            )
        return given
    return Checkpointer(given, branch or "main", options=options or CheckpointerOptions())
