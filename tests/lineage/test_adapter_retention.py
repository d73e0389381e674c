"""An adapter that keeps its tensors keeps its base: retention, prune and gc never release a base still needed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import ckpt  # noqa: E402
from ckpt.errors import RefError  # noqa: E402
from ckpt.lineage import save_adapter  # noqa: E402
from ckpt.store import store_parts  # noqa: E402

from .models import adapter_state, input_ids, tiny_llama, weights, with_lora  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


def _setup(tmp_path: Path) -> tuple[ckpt.Store, ckpt.Snapshot, object]:
    """main: base (step 0) then 3 more saves; chat-lora: an adapter of the base, then a second save of it."""
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    model = tiny_llama()
    base = store.save({"model": weights(model)}, "main", model="tiny", step=0)
    lora = with_lora(model)
    save_adapter(store, base.id, adapter_state(lora), branch="chat-lora", config=lora.peft_config["default"])
    for step in (1, 2, 3):  # training goes on on main: the base is no longer near the head
        store.save({"model": {k: v + 0.01 * step for k, v in weights(model).items()}}, "main", step=step)
    return store, base, lora


def _merged_logits(store: ckpt.Store, rev: str) -> torch.Tensor:
    fresh = tiny_llama(seed=5)
    ckpt.restore(fresh, store, rev)
    with torch.no_grad():
        return fresh(input_ids()).logits


def test_retention_keeps_the_base_of_a_tagged_adapter(tmp_path: Path) -> None:
    store, base, lora = _setup(tmp_path)
    store.tag("lora-v1", "chat-lora")  # tagged, not frozen
    pruned = store.retain("main", ckpt.KeepLast(2))
    assert base.id not in {s.id for s in pruned} and len(pruned) == 1
    store.gc(grace=timedelta(0))
    assert store.verify().ok
    with torch.no_grad():
        expected = lora.merge_and_unload()(input_ids()).logits
    torch.testing.assert_close(_merged_logits(store, "lora-v1"), expected, atol=1e-5, rtol=0)


def test_retention_keeps_the_bases_of_a_stack_of_adapters(tmp_path: Path) -> None:
    """An adapter over an adapter: the tag on the top one keeps both snapshots it stands on."""
    store, base, lora = _setup(tmp_path)
    lower = store.resolve("chat-lora")
    top = save_adapter(
        store,
        lower.id,
        adapter_state(with_lora(tiny_llama(), seed=2)),
        branch="top",
        config=lora.peft_config["default"],
    )
    store.tag("top-v1", top.id)
    store.delete_branch("top")
    store.delete_branch("chat-lora")  # the lower adapter is now named by nothing but the top one's base
    assert base.id not in {s.id for s in store.retain("main", ckpt.KeepLast(1))}
    with pytest.raises(RefError, match="base of adapter"):
        store.prune(lower.id)


def test_prune_of_a_needed_base_is_refused(tmp_path: Path) -> None:
    store, base, _ = _setup(tmp_path)
    with pytest.raises(RefError, match="base of adapter"):
        store.prune(base.id)
    assert not store.get(base.id).pruned
    # once the adapter itself is pruned (it is a branch head: move the branch away first), the base may go
    store.delete_branch("chat-lora")
    store.prune(base.id)
    assert store.get(base.id).pruned


def test_gc_keeps_the_chunks_of_a_base_pruned_before_the_rule(tmp_path: Path) -> None:
    """A store whose adapter base was pruned by an older ckpt: gc never deletes the bytes the adapter needs."""
    store, base, _ = _setup(tmp_path)
    store_parts(store).mark_pruned(base.id, "an older retention")
    store.gc(grace=timedelta(0))
    table = store.table(base.id)
    assert all(store_parts(store).objects.has_chunk(d) for e in table.tensors.values() for d in e.chunks)
    damage = store.verify().damage
    assert [d.object for d in damage] == ["marker"] and "adapter in use" in damage[0].message
    store.repair()  # removes the marker: the adapter loads again
    assert store.verify().ok and not store.get(base.id).pruned
    _merged_logits(store, "chat-lora")
