"""gc reads refs again just before deleting: a ref made to a doomed snapshot between plan and execution wins.

The writer acts exactly between gc's plan and its deletion (the plan function is wrapped, no timing): it
freezes, branches, resets or saves a child onto a snapshot the plan found unreachable. That snapshot must
survive whole, on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.store import _gc

X = np.arange(1000, dtype=np.float32)


def _writers(store: ckpt.Store, x: ckpt.Snapshot) -> dict[str, Callable[[], str]]:
    def freeze() -> str:
        store.freeze(x.id, name="keep-x")
        return "keep-x"

    def branch() -> str:
        store.branch("rescue", at=x.id)
        return "rescue"

    def reset() -> str:
        store.reset("main", x.id)
        return "main"

    def save_child() -> str:
        store.save({"w": X, "v": X[:3]}, "main", parents=[x.id], force=True)
        return "main~1"

    return {"freeze": freeze, "branch": branch, "reset": reset, "save a child": save_child}


@pytest.mark.parametrize("verb", ["freeze", "branch", "reset", "save a child"])
def test_a_ref_made_while_gc_runs_keeps_its_snapshot(
    store: ckpt.Store, monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    store.save({"w": np.ones(1000, np.float32)}, "main", model="m")
    store.branch("exp", at="main")
    x = store.save({"w": X}, "exp", message="X: the experiment to keep")
    store.delete_branch("exp")
    act = _writers(store, x)[verb]
    made: list[str] = []
    planned = _gc.plan_gc

    def plan_then_write(*args: Any, **kwargs: Any) -> _gc.GcPlan:
        plan = planned(*args, **kwargs)
        assert any(x.id in p for p in plan.snapshot_paths), "the plan must doom X"
        made.append(act())  # another writer, right between the plan and the deletion
        return plan

    monkeypatch.setattr(_gc, "plan_gc", plan_then_write)
    report = store.gc(grace=timedelta(0), expire_reflog=timedelta(0))
    assert made
    assert report.revived_snapshots >= 1
    np.testing.assert_array_equal(store.load(made[0])["w"], X)
    assert store.verify().ok


def test_a_record_rewritten_after_the_plan_is_spared(local_store: ckpt.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: a record a writer touched (re-wrote) after the plan is not deleted, ref or not."""
    store = local_store
    store.save({"w": np.ones(10, np.float32)}, "main")
    store.branch("exp", at="main")
    x = store.save({"w": X}, "exp")
    store.delete_branch("exp")
    planned = _gc.plan_gc
    from ckpt.store import store_parts

    def plan_then_touch(*args: Any, **kwargs: Any) -> _gc.GcPlan:
        plan = planned(*args, **kwargs)
        store_parts(store).objects.put_snapshot(x.model_copy(update={"id": None}))  # refreshes its mtime
        return plan

    monkeypatch.setattr(_gc, "plan_gc", plan_then_touch)
    store.gc(grace=timedelta(0), expire_reflog=timedelta(0))
    assert store_parts(store).objects.has_snapshot(x.id)
