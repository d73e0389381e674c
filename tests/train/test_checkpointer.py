"""Checkpointer: saves in a real training loop, best/latest/resume, early stopping, retention, async safety."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import torch

import ckpt
from ckpt.errors import CkptError, RecordError, UnsupportedStateError
from ckpt.storage import FaultyBackend, InjectedFault
from ckpt.train import Checkpointer, SaveHandle

from .helpers import assert_same, model_tensors, refs_locked, tiny_model, train_step

pytestmark = pytest.mark.torch

VAL = [0.9, 0.7, 0.6, 0.65, 0.61, 0.62, 0.5, 0.55]  # best at epochs 2 then 6


def _run(store: ckpt.Store, branch: str = "main", epochs: int = 4, **kw: object) -> list[dict[str, torch.Tensor]]:
    """Train and save every epoch; returns the model's weights as they were at each save."""
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []
    with Checkpointer(store, branch, monitor="val_loss", **kw) as ckpts:  # type: ignore[arg-type]
        for epoch in range(epochs):
            train_step(model, opt, epoch)
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}
            handle = ckpts.save(state, step=10 * (epoch + 1), epoch=epoch, metrics={"val_loss": VAL[epoch]})
            assert isinstance(handle, SaveHandle)
            seen.append({k: v.clone() for k, v in model.state_dict().items()})
    return seen


@pytest.mark.parametrize("async_save", [True, False])
def test_saves_every_epoch_and_reads_the_run_back(store: ckpt.Store, async_save: bool) -> None:
    seen = _run(store, async_save=async_save)
    log = store.log("main")
    assert [s.step for s in log] == [40, 30, 20, 10]
    assert {s.relation for s in log[:-1]} == {"continue"} and log[-1].relation == "import"
    for snap, weights in zip(reversed(log), seen, strict=True):
        assert_same(model_tensors(store, snap.id), weights)
        mark = snap.metadata["checkpointer"]
        assert isinstance(mark, dict) and mark["branch"] == "main" and len(str(mark["run"])) == 12
    ckpts = Checkpointer(store, "main", monitor="val_loss")
    assert ckpts.latest() == log[0]
    best = ckpts.best()
    assert best is not None and best.step == 30 and best.metrics == {"val_loss": 0.6}
    state = ckpts.resume()
    assert state["epoch"] == 3 and set(state) == {"model", "optimizer", "epoch"}
    assert_same(dict(state["model"]), seen[-1])
    ckpts.close()


def test_a_new_branch_has_nothing_to_resume(local_store: ckpt.Store) -> None:
    with Checkpointer(local_store, "fresh", monitor="val_loss") as ckpts:
        assert ckpts.latest() is None and ckpts.best() is None and ckpts.resume() is None
        assert not ckpts.should_stop(patience=0)


def test_a_restarted_process_gives_the_same_answers(local_store: ckpt.Store) -> None:
    _run(local_store, epochs=5, keep_last=2)
    first = Checkpointer(local_store, "main", monitor="val_loss", keep_last=2)
    answers = (first.latest(), first.best(), first.should_stop(2), first.should_stop(3))
    assert answers[2] and not answers[3]
    second = Checkpointer(local_store, "main", monitor="val_loss", keep_last=2)
    assert (second.latest(), second.best(), second.should_stop(2), second.should_stop(3)) == answers
    # the second one carries on: its retention prunes the first process's saves too
    model = tiny_model()
    second.save({"model": model.state_dict()}, step=60, metrics={"val_loss": VAL[5]}).result()
    kept = [s.step for s in local_store.log("main") if not s.pruned]
    assert kept == [60, 50, 30]  # the last two, and the best (0.6 at step 30)
    second.save({"model": model.state_dict()}, step=70, metrics={"val_loss": VAL[6]})
    second.close()
    first.close()
    assert [s.step for s in local_store.log("main") if not s.pruned] == [70, 60]  # 0.5 at step 70 is the best


def test_should_stop_follows_early_stopping(local_store: ckpt.Store) -> None:
    model = tiny_model()
    with Checkpointer(local_store, "main", monitor="val_loss", max_pending=8) as ckpts:
        answers = []
        for epoch, val in enumerate([1.0, 0.8, 0.79, 0.85, 0.78]):
            ckpts.save({"model": model.state_dict()}, step=epoch, metrics={"val_loss": val})
            # judged without waiting for the saves in flight
            answers.append((ckpts.should_stop(2), ckpts.should_stop(2, min_delta=0.05)))
        ckpts.save({"model": model.state_dict()}, step=99, metrics={"train_loss": 0.1})  # not judged
        assert ckpts.should_stop(2, min_delta=0.05)
        ckpts.save({"model": model.state_dict()}, step=100, metrics={"val_loss": float("nan")})
        assert ckpts.should_stop(100)
    assert answers == [(False, False), (False, False), (False, False), (False, True), (False, True)]


def test_should_stop_never_counts_a_save_twice(tmp_path: object) -> None:
    """Saves committed while should_stop() reads the history are counted once: async answers = sync answers."""
    vals = [1.0, 0.9, 0.95, 0.85, 0.9, 0.88, 0.86, 0.84, 0.86, 0.87, 0.85, 0.83, 0.9, 0.91]
    answers = {}
    for async_save in (False, True):
        store = ckpt.init(str(tmp_path / f"s{async_save}"), chunk_size=4096)  # type: ignore[operator]
        w = torch.zeros(2000)
        got = []
        with Checkpointer(store, "main", monitor="val_loss", keep_last=1, async_save=async_save) as ckpts:
            for step, val in enumerate(vals):
                w.add_(1)
                ckpts.save({"w": w}, step=step, metrics={"val_loss": val})
                got.append((ckpts.should_stop(2), ckpts.should_stop(3)))
        answers[async_save] = got
    assert answers[True] == answers[False]


def test_should_stop_in_max_mode(local_store: ckpt.Store) -> None:
    model = tiny_model()
    with Checkpointer(local_store, "main", monitor="acc", mode="max", async_save=False) as ckpts:
        for step, acc in enumerate([0.5, 0.6, 0.59, 0.58]):
            ckpts.save({"model": model.state_dict()}, step=step, metrics={"acc": acc})
        assert ckpts.should_stop(2) and not ckpts.should_stop(3)
        best = ckpts.best()
        assert best is not None and best.step == 1


def test_retention_prunes_only_this_branchs_saves(local_store: ckpt.Store) -> None:
    store = local_store
    _run(store, epochs=4)  # main: no retention
    main_ids = [s.id for s in store.log("main")]
    store.branch("retry", at="main~2")
    model = tiny_model(1)
    with Checkpointer(store, "retry", keep_last=1) as ckpts:
        for step in (100, 200, 300):
            ckpts.save({"model": model.state_dict(), "n": step}, step=step)
    retry = store.log("retry")
    assert [(s.step, s.pruned) for s in retry[:3]] == [(300, False), (200, True), (100, True)]
    assert not any(store.get(i).pruned for i in main_ids)  # main's history is main's business

    head = store.resolve("main")
    store.derive("main", {"model": model.state_dict()}, branch="ft", model="tiny-ft")
    with Checkpointer(store, "ft", keep_last=1) as ckpts:
        for step in (1, 2, 3):
            ckpts.save({"model": model.state_dict(), "n": step}, step=step)
    ft = store.log("ft")
    assert [(s.relation, s.pruned) for s in ft[:4]] == [
        ("continue", False),
        ("continue", True),
        ("continue", True),
        ("finetune", False),
    ]
    assert ft[4] == head and ft[1].model == "tiny-ft"


def test_retention_keeps_best_frozen_and_every(local_store: ckpt.Store) -> None:
    store = local_store
    _run(store, epochs=3, keep_last=1)
    with Checkpointer(store, "main", monitor="val_loss", keep_last=1, keep_every=20) as ckpts:
        assert ckpts.freeze_best(model="tiny") == f"tiny-{time.strftime('%Y-%m-%d', time.gmtime())}"
        model = tiny_model(2)
        for epoch in range(3, 8):
            ckpts.save({"model": model.state_dict()}, step=10 * (epoch + 1), metrics={"val_loss": VAL[epoch]})
            train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), epoch)
    kept = {s.step: not s.pruned for s in store.log("main")}
    # 30 is frozen, 70 the best, 80 the last, 40/60/80 every 20th (20 went before keep_every was asked for)
    assert kept == {80: True, 70: True, 60: True, 50: False, 40: True, 30: True, 20: False, 10: False}
    before = store.stats()["chunk_bytes"]
    report = store.gc(grace=timedelta(0))
    assert report.freed_bytes > 0 and store.stats()["chunk_bytes"] < before
    assert len(store.log("main")) == 8  # pruned records stay in the log
    assert store.verify().ok


def test_keep_best_by_the_monitored_metric(local_store: ckpt.Store) -> None:
    _run(local_store, epochs=6, keep_best=2)
    kept = [s.step for s in local_store.log("main") if not s.pruned]
    assert kept == [60, 50, 30]  # the head, and the two best (0.6 at 30, 0.61 at 50)


def test_freeze_best_publishes_the_best(local_store: ckpt.Store) -> None:
    _run(local_store, epochs=5)
    with Checkpointer(local_store, "main", monitor="val_loss", model="tiny-lm") as ckpts:
        tag = ckpts.freeze_best(name="tiny-lm-release")
    assert tag == "tiny-lm-release"
    assert local_store.tags()[tag].frozen and local_store.resolve(tag).step == 30
    with pytest.raises(RecordError):
        Checkpointer(local_store, "main").freeze_best()  # no monitor


def test_mutating_right_after_save_never_changes_the_snapshot(local_store: ckpt.Store) -> None:
    """The loop changes its tensors while the save is still queued: the snapshot keeps the values at save()."""
    store = local_store
    frozen = torch.randn(3000)
    live = torch.randn(3000)
    with Checkpointer(store, "main") as ckpts:
        ckpts.save({"frozen": frozen, "live": live}, step=0).result()
        live.add_(1)  # changed since save 0: copied to staging by save 1
        with refs_locked(store):  # the first save below waits to move the branch; the second waits its turn
            a = ckpts.save({"frozen": frozen, "live": live}, step=1)
            want_a = (frozen.clone(), live.clone())
            frozen.add_(1)  # found unchanged by save 1 (digests reused), changed right after
            live.mul_(-1)
            b = ckpts.save({"frozen": frozen, "live": live}, step=2)
            want_b = (frozen.clone(), live.clone())
            frozen.zero_()
            live.zero_()
            time.sleep(0.2)
            assert not a.done() and not b.done()
        assert a.reused == 1 and b.reused == 0
        for handle, (f, v) in ((a, want_a), (b, want_b)):
            got = store.load(handle.result().id)
            assert torch.equal(got["frozen"], f) and torch.equal(got["live"], v)
    assert store.verify().ok


def test_save_blocks_when_max_pending_saves_are_in_flight(local_store: ckpt.Store) -> None:
    store = local_store
    w = torch.randn(1000)
    returned = threading.Event()
    with Checkpointer(store, "main", max_pending=1) as ckpts:
        with refs_locked(store):
            first = ckpts.save({"w": w}, step=1)
            t = threading.Thread(target=lambda: (ckpts.save({"w": w + 1}, step=2), returned.set()))
            t.start()
            assert not returned.wait(0.5)  # the single staging slot is busy until the first save commits
            assert not first.done()
        t.join(30)
        assert returned.is_set()
    assert [s.step for s in store.log("main")] == [2, 1]


def test_a_background_error_is_raised_at_the_next_call(local_store: ckpt.Store) -> None:
    real = local_store
    real.save({"w": torch.zeros(10)}, step=0)
    faulty = ckpt.Store(FaultyBackend(real.backend, fail_after=0), real.config)
    ckpts = Checkpointer(faulty, "main", monitor="val_loss")
    handle = ckpts.save({"w": torch.ones(10)}, step=1, metrics={"val_loss": 1.0})
    while not handle.done():
        time.sleep(0.01)
    with pytest.raises(InjectedFault):
        ckpts.should_stop(1)
    ckpts.should_stop(1)  # raised once
    with pytest.raises(InjectedFault):
        handle.result()
    # an error the handle already reported is not raised again
    handle = ckpts.save({"w": torch.ones(10)}, step=2)
    with pytest.raises(InjectedFault):
        handle.result()
    ckpts.wait()
    # never swallowed: leaving the block raises it
    with pytest.raises(InjectedFault), Checkpointer(faulty, "main") as other:
        other.save({"w": torch.ones(10)}, step=3)
    ckpts.close()
    assert real.resolve("main").step == 0 and real.verify().ok


def test_sync_save_raises_at_once(local_store: ckpt.Store) -> None:
    faulty = ckpt.Store(FaultyBackend(local_store.backend, fail_after=0), local_store.config)
    with Checkpointer(faulty, "main", async_save=False) as ckpts, pytest.raises(InjectedFault):
        ckpts.save({"w": torch.ones(10)}, step=1)


def test_bad_state_is_refused_before_anything_runs(local_store: ckpt.Store) -> None:
    with Checkpointer(local_store, "main") as ckpts:
        with pytest.raises(UnsupportedStateError, match="opt/fn"):
            ckpts.save({"w": torch.ones(3), "opt": {"fn": print}}, step=1)
        loop: dict[str, object] = {}
        loop["self"] = loop
        with pytest.raises(UnsupportedStateError, match="contains itself"):
            ckpts.save(loop, step=1)
        with pytest.raises(RecordError):
            ckpts.save({"w": torch.ones(3)}, step=1, metrics={"val_loss": "low"})
        with pytest.raises(RecordError):
            ckpts.save({"w": torch.ones(3)}, step=1, metadata={"checkpointer": 1})
        ckpts.save({"w": torch.ones(3)}, step=1, metrics={"val_loss": torch.tensor(0.5)}).result()
    assert local_store.resolve("main").metrics == {"val_loss": 0.5}
    with pytest.raises(CkptError, match="closed"):
        ckpts.save({"w": torch.ones(3)}, step=2)
    assert ckpts.latest() is not None  # reading still works


def test_arguments_are_checked(local_store: ckpt.Store) -> None:
    with pytest.raises(RecordError):
        Checkpointer(local_store, "main", mode="best")  # type: ignore[arg-type]
    with pytest.raises(RecordError):
        Checkpointer(local_store, "main", keep_best=2)
    with pytest.raises(RecordError):
        Checkpointer(local_store, "main", max_pending=0)
    with pytest.raises(ckpt.InvalidNameError):
        Checkpointer(local_store, "bad name")
    with pytest.raises(RecordError):
        Checkpointer(local_store, "main").best()
    c = Checkpointer(str(local_store.url), "main")
    assert c.store.url == local_store.url
    c.close()


def test_numpy_arrays_and_tree_shapes_round_trip(local_store: ckpt.Store) -> None:
    import numpy as np

    arr = np.arange(2000, dtype=np.float32)
    state = {"a": arr, "t": (1, [torch.ones(2), {"x": None}]), 3: "int key", "nan": float("nan")}
    with Checkpointer(local_store, "main") as ckpts:
        handle = ckpts.save(state, step=1)
        arr += 1  # after save(): not in the snapshot
    got = local_store.load(handle.result().id)
    assert (got["a"] == np.arange(2000, dtype=np.float32)).all()
    assert got["t"][0] == 1 and torch.equal(got["t"][1][0], torch.ones(2)) and got["t"][1][1] == {"x": None}
    assert got[3] == "int key" and got["nan"] != got["nan"]


def test_modules_and_optimizers_save_and_resume_as_themselves(local_store: ckpt.Store) -> None:
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    train_step(model, opt, 0)
    sched.step()
    with Checkpointer(local_store, "main") as ckpts:
        ckpts.save({"model": model, "optimizer": opt, "scheduler": sched, "epoch": 0}, step=1)
    fresh = tiny_model(seed=9)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, 1, gamma=0.5)
    with Checkpointer(local_store, "main") as ckpts:
        state = ckpts.resume({"model": fresh, "optimizer": fresh_opt, "scheduler": fresh_sched})
        with pytest.raises(ckpt.StateMismatchError):
            ckpts.resume({"missing": fresh})
    assert state["epoch"] == 0
    assert_same(fresh.state_dict(), model.state_dict())
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 5e-3
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert fresh_sched.state_dict() == sched.state_dict()
