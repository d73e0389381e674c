"""The Lightning callback, with real tiny training runs on CPU."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpt
from ckpt.training._judging import plateau as _plateau

pl = pytest.importorskip("lightning.pytorch")
from ckpt.integrations.lightning import CkptCallback  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    # Lightning's own advice (few dataloader workers, deprecations inside it) is not what these tests check
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning"),
]


class Regressor(pl.LightningModule):  # type: ignore[misc]
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.lr = lr

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, _: int) -> None:
        x, y = batch
        self.log("val_loss", ((self.net(x) - y) ** 2).mean())

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)}


def _loaders() -> tuple[Any, Any]:
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    data = TensorDataset(x, x.sum(1, keepdim=True))
    return DataLoader(data, batch_size=16, shuffle=True), DataLoader(data, batch_size=32)


def _trainer(cb: CkptCallback, epochs: int, **kw: Any) -> Any:
    return pl.Trainer(
        max_epochs=epochs,
        callbacks=[cb],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        **kw,
    )


def test_saves_every_epoch_and_resumes_from_the_store(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    train, val = _loaders()
    torch.manual_seed(0)
    whole = Regressor()
    _trainer(CkptCallback(ckpt.Checkpointer(store, "whole", monitor="val_loss")), 4).fit(whole, train, val)

    torch.manual_seed(0)
    cb = CkptCallback(ckpt.Checkpointer(store, "main", monitor="val_loss", keep_last=2, model="tiny-reg"))
    assert cb.resume_path() is None
    _trainer(cb, 2).fit(Regressor(), train, val, ckpt_path=cb.resume_path())
    log = store.log("main")
    assert [(s.epoch, s.step) for s in log] == [(1, 12), (0, 6)]
    assert {"val_loss", "train_loss"} <= set(log[0].metrics)
    state = store.load("main")
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks"} <= set(state)

    # a new process: a new trainer, a new module, picks the run up from the store
    torch.manual_seed(0)
    module = Regressor()
    cb2 = CkptCallback(ckpt.Checkpointer(store, "main", monitor="val_loss", keep_last=2, model="tiny-reg"))
    assert cb2.resume_path() == "ckpt:" + log[0].id
    trainer = _trainer(cb2, 4)
    trainer.fit(module, train, val, ckpt_path=cb2.resume_path())
    assert [s.epoch for s in store.log("main")] == [3, 2, 1, 0]
    kept = [s for s in store.log("main") if not s.pruned]
    assert kept[:2] == store.log("main")[:2] and len(kept) <= 3 and cb2.best() in kept  # keep_last=2 + the best
    assert store.resolve("main").step == store.resolve("whole").step == 24
    # the weights went on from the resumed ones, optimizer and scheduler too: the same as an uninterrupted run
    for k, v in store.load("whole")["state_dict"].items():
        assert torch.equal(store.load("main")["state_dict"][k], v), k

    # Lightning loads ckpt: paths anywhere it takes a ckpt_path; "best" means the best save
    best = cb2.best()
    assert best is not None and cb2.best_model_path == "ckpt:" + best.id
    result = trainer.validate(module, val, ckpt_path="best", verbose=False)
    assert result[0]["val_loss"] == pytest.approx(best.metrics["val_loss"], rel=1e-5)
    assert cb2.freeze_best() == f"tiny-reg-{ckpt.model.utcnow():%Y-%m-%d}"


def test_early_stopping_stops_the_trainer(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    train, val = _loaders()
    cb = CkptCallback(ckpt.Checkpointer(store, "main", monitor="val_loss", async_save=False), patience=2)
    trainer = _trainer(cb, 30)
    trainer.fit(Regressor(lr=0.0), train, val)  # nothing learns: validation never improves
    assert trainer.current_epoch == 3  # the first save sets the best; two more without improvement
    assert len(store.log("main")) == 3


def test_should_stop_is_lightnings_early_stopping() -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    rng = random.Random(0)
    for _ in range(200):
        mode = rng.choice(["min", "max"])
        patience = rng.randint(0, 4)
        min_delta = rng.choice([0.0, 0.01, 0.1])
        values = [round(rng.uniform(0, 1), 2) for _ in range(rng.randint(1, 12))]
        es = EarlyStopping(monitor="m", patience=patience, min_delta=min_delta, mode=mode)
        for i, v in enumerate(values):
            stop, _ = es._evaluate_stopping_criteria(torch.tensor(v))
            assert _plateau(values[: i + 1], patience, min_delta, mode) == stop, (mode, patience, min_delta, values)
            if stop:
                break


def test_an_epoch_without_validation_is_not_judged(tmp_path: Path) -> None:
    """With validation every other epoch, the epochs in between carry the last validation's stale value in
    ``callback_metrics``: it must not count as a save without improvement."""
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    train, val = _loaders()
    torch.manual_seed(0)
    cb = CkptCallback(ckpt.Checkpointer(store, "main", monitor="val_loss", async_save=False), patience=1)
    trainer = _trainer(cb, 6, check_val_every_n_epoch=2)
    trainer.fit(Regressor(), train, val)  # it learns: every validation improves on the one before
    assert trainer.current_epoch == 6  # not stopped early
    log = store.log("main")
    assert [s.epoch for s in log] == [5, 4, 3, 2, 1, 0]
    judged = [(s.epoch, s.metrics["val_loss"]) for s in reversed(log) if "val_loss" in s.metrics]
    assert [e for e, _ in judged] == [1, 3, 5]
    assert [v for _, v in judged] == sorted((v for _, v in judged), reverse=True)
    assert all("train_loss" in s.metrics for s in log)  # the training metrics are recorded every epoch


def test_the_callback_releases_its_thread_and_buffers_after_fit_and_fits_again(tmp_path: Path) -> None:
    import threading

    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    train, val = _loaders()
    torch.manual_seed(0)
    cb = CkptCallback(ckpt.Checkpointer(store, "released", monitor="val_loss"))
    module = Regressor()
    _trainer(cb, 1).fit(module, train, val)
    assert not [t for t in threading.enumerate() if t.name == "ckpt-save-released" and t.is_alive()]
    assert cb.best() is not None and cb.best_model_path.startswith("ckpt:")  # reading needs no thread
    _trainer(cb, 2).fit(module, train, val, ckpt_path=cb.resume_path())  # the same callback, once more
    assert [s.epoch for s in store.log("released")] == [1, 0]
    assert not [t for t in threading.enumerate() if t.name == "ckpt-save-released" and t.is_alive()]


def test_the_callback_takes_a_checkpointer_or_its_options(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"))
    ckpts = ckpt.Checkpointer(store, "run", monitor="val_loss", keep_last=2)
    cb = CkptCallback(ckpts, patience=2)
    assert cb.checkpointer is ckpts and cb.branch == "run" and cb.store is store
    other = CkptCallback(store, "other", options=ckpt.CheckpointerOptions(monitor="val_loss"))
    assert other.branch == "other" and other.checkpointer.monitor == "val_loss"
    assert CkptCallback(store).branch == "main"
    with pytest.raises(ckpt.RecordError, match="its own branch and options"):
        CkptCallback(ckpts, "main")
    with pytest.raises(ckpt.RecordError, match="needs a metric"):
        CkptCallback(ckpt.Checkpointer(store, "plain"), patience=1)
    for made in (ckpts, other.checkpointer):
        made.close()
