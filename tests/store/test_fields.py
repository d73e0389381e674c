"""The snapshot fields declared once (``SaveFields``), their cleaning, and ``Store.stats``'s record."""

from __future__ import annotations

from typing import get_type_hints

import numpy as np
import pytest

import ckpt
from ckpt.model import SaveFields, SnapshotFields, clean_metrics


def test_save_refuses_a_keyword_that_is_not_a_field(local_store: ckpt.Store) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'stpe'"):
        local_store.save({"w": np.ones(2)}, stpe=3)  # type: ignore[call-arg]
    assert local_store.branches() == {}  # refused before anything was written


def test_derive_takes_the_fields_but_not_the_history(local_store: ckpt.Store) -> None:
    base = local_store.save({"w": np.ones(2)}, model="base", step=1, files={"config.json": b"{}"})
    with pytest.raises(TypeError, match="unexpected keyword argument 'parents'"):
        local_store.derive(base.id, {"w": np.zeros(2)}, branch="ft", parents=[base.id])  # type: ignore[call-arg]
    ft = local_store.derive(base.id, {"w": np.zeros(2)}, branch="ft", step=2, metrics={"val_loss": 0.5})
    assert (ft.parents, ft.relation, ft.model, ft.step, ft.metrics) == (
        (base.id,),
        "finetune",
        "base",
        2,
        {"val_loss": 0.5},
    )
    assert local_store.files("ft") == {"config.json": b"{}"}  # a fine-tune keeps its parent's files


def test_the_fields_are_declared_once() -> None:
    names = set(get_type_hints(SaveFields))
    assert set(get_type_hints(SnapshotFields)) | {"parents", "relation"} == names
    assert names == {"model", "step", "epoch", "metrics", "message", "metadata", "files", "base", "parents", "relation"}
    assert ckpt.SaveFields is SaveFields


@pytest.mark.parametrize("bad", [True, "fast", None, [1.0], np.ones(2)])
def test_a_metric_that_is_not_one_number_is_a_record_error(local_store: ckpt.Store, bad: object) -> None:
    with pytest.raises(ckpt.RecordError, match="val_loss"):
        local_store.save({"w": np.ones(2)}, metrics={"val_loss": bad})  # type: ignore[dict-item]
    assert clean_metrics({"a": np.float32(0.25), "b": 1}) == {"a": 0.25, "b": 1.0}


def test_stats_is_a_record_of_what_is_stored(local_store: ckpt.Store) -> None:
    local_store.save({"w": np.arange(1000, dtype=np.float32)})
    stats = local_store.stats()
    assert isinstance(stats, ckpt.StoreStats)
    assert (stats.chunks, stats.tables, stats.snapshots) == (1, 1, 1)
    assert stats.chunk_bytes == 4000 + 16  # as stored: the payload and the chunk's header
    assert stats.total_bytes > stats.chunk_bytes + stats.table_bytes + stats.snapshot_bytes  # refs, logs, config
    assert local_store.verify().bytes == stats.chunk_bytes


def test_a_tensor_metric_must_hold_one_number(local_store: ckpt.Store) -> None:
    torch = pytest.importorskip("torch")
    snap = local_store.save({"w": np.ones(2)}, metrics={"val_loss": torch.tensor(0.5)})
    assert snap.metrics == {"val_loss": 0.5}
    with pytest.raises(ckpt.RecordError, match="val_loss"):  # torch raises RuntimeError here: one cleaner for all
        local_store.save({"w": np.ones(2)}, metrics={"val_loss": torch.ones(2)})  # type: ignore[dict-item]
