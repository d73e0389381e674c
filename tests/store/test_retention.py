"""Retention policies prune what they do not keep; tags, frozen releases and heads always stay."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

import ckpt
from ckpt import AnyOf, KeepBest, KeepEvery, KeepLast


def _history(store: ckpt.Store, losses: list[float]) -> list[ckpt.Snapshot]:
    return [
        store.save({"w": np.full(1000, i, np.float32)}, step=i * 10, metrics={"val_loss": loss})
        for i, loss in enumerate(losses)
    ]


def test_policies_choose_what_they_say(store: ckpt.Store) -> None:
    snaps = _history(store, [5, 4, 1, 3, math.nan, 2, 6, 7])
    history = list(reversed(snaps))
    assert KeepLast(2).keep(history) == {snaps[-1].id, snaps[-2].id}
    assert KeepBest("val_loss", 2).keep(history) == {snaps[2].id, snaps[5].id}
    assert KeepBest("val_loss", 1, mode="max").keep(history) == {snaps[7].id}
    assert KeepEvery(30).keep(history) == {snaps[0].id, snaps[3].id, snaps[6].id}


def test_retain_prunes_the_rest_and_gc_reclaims(store: ckpt.Store) -> None:
    snaps = _history(store, [5, 4, 1, 3, 2, 6, 7, 8])
    release = store.freeze(snaps[0].id, model="m", name="m-first")
    store.tag("t", snaps[1].id)
    before = sum(e.size for e in store.backend.list("chunks/"))
    pruned = store.retain("main", AnyOf(KeepLast(2), KeepBest("val_loss", 1)))
    kept = {snaps[0].id, snaps[1].id, snaps[2].id, snaps[6].id, snaps[7].id}
    assert {s.id for s in pruned} == {s.id for s in snaps} - kept
    log = store.log()
    assert len(log) == len(snaps)  # records stay
    assert {s.id for s in log if s.pruned} == {s.id for s in pruned}
    with pytest.raises(ckpt.MissingObjectError):
        store.load(pruned[0].id)
    store.gc(grace=timedelta(0))
    after = sum(e.size for e in store.backend.list("chunks/"))
    assert after < before
    assert store.verify().ok
    assert store.tags()[release].frozen
    for sid in kept:
        store.load(sid)


def test_retain_dry_run_prunes_nothing(store: ckpt.Store) -> None:
    _history(store, [3, 2, 1, 0])
    would = store.retain("main", KeepLast(1), dry_run=True)
    assert len(would) == 3
    assert not any(s.pruned for s in store.log())


def test_bad_policy_arguments() -> None:
    with pytest.raises(ckpt.RecordError):
        KeepLast(-1)
    with pytest.raises(ckpt.RecordError):
        KeepEvery(0)
    with pytest.raises(ckpt.RecordError):
        KeepBest("loss", 1, mode="median")  # type: ignore[arg-type]
