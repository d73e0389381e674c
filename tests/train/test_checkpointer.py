"""Checkpointer: saves in a real training loop, best/latest/resume, early stopping, retention, async safety."""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta

import pytest
import torch
from pydantic import JsonValue

import ckpt
from ckpt import Checkpointer, SaveHandle
from ckpt.errors import CkptError, RecordError, UnsupportedStateError
from ckpt.storage import FaultyBackend, InjectedFault

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
    before = store.stats().chunk_bytes
    report = store.gc(grace=timedelta(0))
    assert report.freed_bytes > 0 and store.stats().chunk_bytes < before
    assert len(store.log("main")) == 8  # pruned records stay in the log
    assert store.verify().ok


def test_keep_best_by_the_monitored_metric(local_store: ckpt.Store) -> None:
    _run(local_store, epochs=6, keep_best=2)
    kept = [s.step for s in local_store.log("main") if not s.pruned]
    assert kept == [60, 50, 30]  # the head, and the two best (0.6 at 30, 0.61 at 50)


def test_a_retention_policy_is_the_shorthand_spelled_out(tmp_path) -> None:
    """retention=AnyOf(KeepLast, KeepEvery) prunes exactly what keep_last/keep_every prune; options= is the same."""
    kept = []
    for name, kw in {
        "shorthand": {"keep_last": 1, "keep_every": 20},
        "policy": {"retention": ckpt.AnyOf(ckpt.KeepLast(1), ckpt.KeepEvery(20))},
        "options": {
            "options": ckpt.CheckpointerOptions(
                monitor="val_loss", retention=ckpt.AnyOf(ckpt.KeepLast(1), ckpt.KeepEvery(20))
            )
        },
    }.items():
        store = ckpt.init(str(tmp_path / name), chunk_size=4096)
        if "options" in kw:
            model = tiny_model()
            with Checkpointer(store, "main", **kw) as ckpts:  # type: ignore[arg-type]
                for epoch in range(6):
                    ckpts.save({"model": model.state_dict()}, step=10 * (epoch + 1), metrics={"val_loss": VAL[epoch]})
        else:
            _run(store, epochs=6, **kw)
        kept.append([s.step for s in store.log("main") if not s.pruned])
    assert kept[0] == kept[1] == kept[2] == [60, 40, 30, 20]  # the last, every 20th, and the best by val_loss (30)


def test_options_come_one_way(local_store: ckpt.Store) -> None:
    options = ckpt.CheckpointerOptions(monitor="val_loss", retention=ckpt.KeepLast(2))
    with pytest.raises(RecordError, match="not both"):
        Checkpointer(local_store, "main", options=options, model="x")
    with pytest.raises(RecordError, match="not both"):
        Checkpointer(local_store, "main", retention=ckpt.KeepLast(2), keep_last=3)
    with pytest.raises(RecordError, match="retention policy"):
        ckpt.CheckpointerOptions(retention=3)  # type: ignore[arg-type]
    with pytest.raises(RecordError, match="mode"):
        ckpt.CheckpointerOptions(mode="median")  # type: ignore[arg-type]
    made = Checkpointer(local_store, "main", options=options)
    assert made.options is options and made.reopened().options == options
    assert made.monitor == "val_loss" and made.async_save and made.max_pending == 2
    made.close()


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
            while not any(s.step == 1 for s in store.snapshots()):  # save 1 is written: it waits for the lock
                threading.Event().wait(0.005)
            assert not a.done() and not b.done()
        assert a.reused == 1 and b.reused == 0
        for handle, (f, v) in ((a, want_a), (b, want_b)):
            got = store.load(handle.result().id)
            assert torch.equal(got["frozen"], f) and torch.equal(got["live"], v)
    assert store.verify().ok


def _blocked_in(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is inside a function of that name (somewhere on its stack)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_save_blocks_when_max_pending_saves_are_in_flight(local_store: ckpt.Store) -> None:
    store = local_store
    w = torch.randn(1000)
    returned = threading.Event()
    with Checkpointer(store, "main", max_pending=1) as ckpts:
        with refs_locked(store):
            first = ckpts.save({"w": w}, step=1)
            t = threading.Thread(target=lambda: (ckpts.save({"w": w + 1}, step=2), returned.set()))
            t.start()
            while not _blocked_in(t, "take") and not returned.is_set():  # waiting for the one staging slot
                threading.Event().wait(0.005)
            assert not returned.is_set()  # the single staging slot is busy until the first save commits
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


@pytest.mark.parametrize(
    "bad",
    [
        {"step": 1.5},
        {"step": 1, "epoch": "first"},
        {"step": 1, "message": 3},
        {"step": 1, "metadata": {"tags": {1, 2}}},
        {"step": 1, "files": {"config.json": "text, not bytes"}},
    ],
    ids=["float step", "str epoch", "int message", "set in metadata", "str file"],
)
def test_a_bad_record_fails_the_save_call_not_a_later_one(local_store: ckpt.Store, bad: dict[str, object]) -> None:
    with Checkpointer(local_store, "main") as ckpts:
        with pytest.raises(RecordError):
            ckpts.save({"w": torch.ones(3)}, **bad)  # type: ignore[arg-type]
        ckpts.save({"w": torch.ones(3)}, step=2).result()  # nothing was left to fail in the background
        ckpts.wait()
    assert [s.step for s in local_store.log("main")] == [2]


def test_metadata_and_files_are_taken_at_save(local_store: ckpt.Store) -> None:
    """Like the tensors, the metadata and files a save was called with are those it records."""
    tags: list[JsonValue] = ["a"]
    config = bytearray(b'{"n": 1}')
    with Checkpointer(local_store, "main", max_pending=2) as ckpts, refs_locked(local_store):
        ckpts.save({"w": torch.ones(3)}, step=1)  # waits to move the branch; the next save waits behind it
        handle = ckpts.save({"w": torch.ones(3)}, step=2, metadata={"tags": tags}, files={"config.json": config})  # type: ignore[dict-item]
        tags.append("b")
        config[:] = b'{"n": 2}'
    snap = handle.result()
    assert snap.metadata["tags"] == ["a"]
    assert local_store.files(snap.id)["config.json"] == b'{"n": 1}'


def test_resume_when_the_head_was_pruned(local_store: ckpt.Store) -> None:
    """A branch made (or reset) at a pruned snapshot resumes from the newest save that still has its tensors."""
    store = local_store
    with Checkpointer(store, "main", keep_last=1, keep_every=2) as ckpts:
        for step in (1, 2, 3, 4):
            ckpts.save({"w": torch.full((10,), float(step)), "step": step}, step=step)
    assert [(s.step, s.pruned) for s in store.log("main")] == [(4, False), (3, True), (2, False), (1, True)]
    store.branch("retry", at="main~1")  # step 3: pruned
    with Checkpointer(store, "retry") as ckpts:
        with pytest.warns(UserWarning, match="was pruned; resuming from"):
            state = ckpts.resume()
        assert state is not None and state["step"] == 2 and torch.equal(state["w"], torch.full((10,), 2.0))
        assert ckpts.latest() == store.resolve("main~1")  # latest() is still the branch's head
        ckpts.save({"w": torch.full((10,), 2.5), "step": 3}, step=3).result()  # and the run carries on
        assert ckpts.resume()["step"] == 3  # type: ignore[index]
    store.branch("nothing-left", at="main~3")  # step 1: pruned, and the first save of the run
    with Checkpointer(store, "nothing-left") as ckpts, pytest.raises(ckpt.MissingObjectError, match="every save"):
        ckpts.resume()


def test_a_tensor_back_in_the_state_after_gc_is_saved_anew(local_store: ckpt.Store) -> None:
    """A tensor that left the state is forgotten by the digest cache: when it comes back, its old chunks may
    have gone with gc (only pruned snapshots held them), and the save must not fail for that."""
    store = local_store
    a, b = torch.randn(5000), torch.randn(5000)
    with Checkpointer(store, "main", keep_last=1) as ckpts:
        ckpts.save({"a": a, "b": b}, step=1).result()
        ckpts.save({"b": b}, step=2).result()  # a left the state; step 1 was pruned
        store.gc(grace=timedelta(0))  # a's chunks are gone
        handle = ckpts.save({"a": a, "b": b}, step=3)
        assert handle.result().step == 3 and handle.reused == 1  # b only
    assert torch.equal(store.load("main")["a"], a)
    assert store.verify().ok


def test_should_stop_reads_only_the_new_saves(local_store: ckpt.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Judging after every save must not read the whole history each time (a GET per record on S3)."""
    store = local_store
    w = torch.zeros(10)
    reads: list[str] = []
    read = store.backend.read

    def counting(path: str, *args: object, **kwargs: object) -> bytes:
        reads.append(path)
        return read(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store.backend, "read", counting)
    with Checkpointer(store, "main", monitor="val_loss", async_save=False) as ckpts:
        for step in range(40):
            ckpts.save({"w": w}, step=step, metrics={"val_loss": 1.0 / (step + 1)})
            reads.clear()
            assert not ckpts.should_stop(patience=3)
            records = [p for p in reads if p.startswith("snapshots/")]
            assert len(records) <= 2 or step < 8, (step, len(records))


def test_staging_memory_follows_the_state(local_store: ckpt.Store) -> None:
    """Buffers are reused while shapes stay, replaced (not added to) when they change, given back by tensors
    that leave the state, and kept by unchanged tensors (the buffer is what proves them unchanged)."""
    frozen = torch.randn(3000)
    with Checkpointer(local_store, "main", max_pending=1) as ckpts:
        for step, (n, extra) in enumerate([(1000, True), (4000, True), (4000, False), (2000, False)]):
            state: dict[str, object] = {"w": torch.randn(n), "frozen": frozen}
            if extra:
                state["extra"] = torch.randn(500)
            ckpts.save(state, step=step).result()
            (slot,) = [ckpts._slots.take()]
            try:
                held = {k: int(b.numel()) for k, b in slot.buffers.items()}
            finally:
                ckpts._slots.give(slot)
            want = {"w": n, "frozen": 3000, **({"extra": 500} if extra else {})}
            assert held == want, step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_are_staged_and_hashed(local_store: ckpt.Store) -> None:
    """A device tensor cannot be proven unchanged without the copy (no version counter is trusted): it is
    copied and hashed at every save, and the snapshot holds its bytes as they were at ``save()``."""
    base = torch.randn(1 << 20, device="cuda")
    live = torch.randn(1 << 20, device="cuda")
    with Checkpointer(local_store, "main") as ckpts:
        ckpts.save({"base": base, "live": live}, step=0).result()
        base.data[7] = 1.5  # behind the version counter
        want = live.cpu()
        handle = ckpts.save({"base": base, "live": live}, step=1)
        live.zero_()  # right after save(): not in the snapshot
        assert handle.reused == 0
    got = local_store.load(handle.result().id)
    assert torch.equal(got["base"], base.cpu()) and torch.equal(got["live"], want)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_a_device_other_than_the_current_one_are_copied_whole(local_store: ckpt.Store) -> None:
    """The copies off every device are waited for, not only those off the current device."""
    torch.cuda.set_device(0)
    n = 16 << 20  # 64 MB per tensor: copies long enough to still run when save() returns
    ws = [torch.empty(n, device=f"cuda:{i}") for i in (0, 1)]
    handles = []
    with Checkpointer(local_store, "main", max_pending=3) as ckpts:
        for step in range(3):
            for i, w in enumerate(ws):
                w.fill_(float(step * 10 + i))
            handles.append(ckpts.save({"w0": ws[0], "w1": ws[1]}, step=step))
            for w in ws:
                w.fill_(-1.0)
    for step, handle in enumerate(handles):
        got = local_store.load(handle.result().id)
        for i in (0, 1):
            assert torch.equal(got[f"w{i}"], torch.full((n,), float(step * 10 + i))), (step, i)


def test_scalar_metrics_picks_the_numbers_a_framework_logged() -> None:
    from ckpt.training import scalar_metrics

    logged = {"val_loss": torch.tensor(0.5), "acc": 0.75, "epoch": 3, "done": True, "vec": torch.ones(2), "s": "x"}
    assert scalar_metrics(logged) == {"val_loss": 0.5, "acc": 0.75, "epoch": 3.0}
