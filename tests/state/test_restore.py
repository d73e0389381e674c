"""``ckpt.restore`` and lazy reads: resuming training from a snapshot is bit-identical to never stopping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import ckpt
from ckpt import MissingObjectError, StateMismatchError

pytestmark = pytest.mark.torch


def make_model(seed: int, hidden: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    return [(torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)) for _ in range(n)]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_from_snapshot_is_bit_identical(store: ckpt.Store) -> None:
    data = batches(6)
    model = make_model(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for batch in data[:3]:
        train_step(model, opt, batch)
    snap = store.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3}, step=3)

    expected = []
    for batch in data[3:]:
        train_step(model, opt, batch)
        expected.append(weights(model))

    fresh = make_model(seed=99)  # different initial weights
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    assert not torch.equal(fresh.state_dict()["0.weight"], model.state_dict()["0.weight"])
    state = ckpt.restore(fresh, store, snap.id, optimizer=fresh_opt)
    assert state["step"] == 3

    for batch, want in zip(data[3:], expected, strict=True):
        train_step(fresh, fresh_opt, batch)
        got = weights(fresh)
        assert list(got) == list(want)
        for name in want:
            assert torch.equal(got[name], want[name]), name
    # the optimizer state matches too: same step counts and moments
    a, b = opt.state_dict(), fresh_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k]), (i, k)


def test_restore_by_branch_name(local_store: ckpt.Store) -> None:
    model = make_model(seed=0)
    local_store.save({"model": model.state_dict()})
    fresh = make_model(seed=1)
    ckpt.restore(fresh, local_store, "main")
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_restore_with_wrong_shapes_is_a_state_mismatch(local_store: ckpt.Store) -> None:
    model = make_model(seed=0, hidden=8)
    snap = local_store.save({"model": model.state_dict()})
    other = make_model(seed=0, hidden=16)
    with pytest.raises(StateMismatchError, match=r"size mismatch|shape"):
        ckpt.restore(other, local_store, snap.id)


def test_restore_with_missing_key_is_a_state_mismatch(local_store: ckpt.Store) -> None:
    model = make_model(seed=0)
    sd = dict(model.state_dict())
    del sd["2.bias"]
    snap = local_store.save({"model": sd})
    with pytest.raises(StateMismatchError, match=r"2\.bias"):
        ckpt.restore(make_model(seed=1), local_store, snap.id)


def test_restore_with_unexpected_key_is_a_state_mismatch(local_store: ckpt.Store) -> None:
    sd = {**make_model(seed=0).state_dict(), "extra.weight": torch.ones(1)}
    snap = local_store.save({"model": sd})
    with pytest.raises(StateMismatchError, match=r"extra\.weight"):
        ckpt.restore(make_model(seed=1), local_store, snap.id)
    # strict=False accepts it, like load_state_dict
    ckpt.restore(make_model(seed=1), local_store, snap.id, strict=False)


def test_restore_without_the_model_key_is_a_state_mismatch(local_store: ckpt.Store) -> None:
    snap = local_store.save({"weights": make_model(seed=0).state_dict()})
    with pytest.raises(StateMismatchError, match="model") as info:
        ckpt.restore(make_model(seed=1), local_store, snap.id)
    assert info.value.hint
    ckpt.restore(make_model(seed=1), local_store, snap.id, key="weights")


def test_restore_optimizer_without_its_entry_is_a_state_mismatch(local_store: ckpt.Store) -> None:
    model = make_model(seed=0)
    snap = local_store.save({"model": model.state_dict()})
    with pytest.raises(StateMismatchError, match="optimizer"):
        ckpt.restore(model, local_store, snap.id, optimizer=torch.optim.Adam(model.parameters()))


def test_restore_optimizer_of_another_shape_is_a_state_mismatch(local_store: ckpt.Store) -> None:
    model = make_model(seed=0)
    opt = torch.optim.Adam(model.parameters())
    train_step(model, opt, batches(1)[0])
    snap = local_store.save({"model": model.state_dict(), "optimizer": opt.state_dict()})
    fresh = make_model(seed=1)
    two_groups = torch.optim.Adam([{"params": [fresh[0].weight]}, {"params": [fresh[0].bias]}])
    with pytest.raises(StateMismatchError):
        ckpt.restore(fresh, local_store, snap.id, optimizer=two_groups)


def test_restore_with_key_none_takes_the_whole_tree(store: ckpt.Store) -> None:
    model = make_model(seed=0)
    snap = store.save(model.state_dict())
    fresh = make_model(seed=1)
    state = ckpt.restore(fresh, store, snap.id, key=None)
    assert list(state) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


# -- lazy reads ------------------------------------------------------------------------------------------


def big_state() -> dict[str, object]:
    torch.manual_seed(0)
    return {
        "model": {
            "embed": torch.randn(40, 64),  # 10240 bytes: 3 chunks
            "layer.weight": torch.randn(32, 32, dtype=torch.float64),  # 8192 bytes: 2 chunks
            "layer.bias": torch.randn(32),
            "scale": torch.tensor(2.0, dtype=torch.bfloat16),
        },
        "step": 5,
        "optimizer": {"state": {0: {"exp_avg": torch.randn(100)}}},
    }


NAMES = ["model/embed", "model/layer.weight", "model/layer.bias", "model/scale", "optimizer/state/0/exp_avg"]


def test_lazy_tensors_iterate_in_saved_order(memory_url: str) -> None:
    store = ckpt.init(memory_url, chunk_size=4096)
    snap = store.save(big_state())
    lazy = store.tensors(snap.id)
    # the order of the saved state (the order store.load gives back), not sorted: layer.weight before layer.bias
    assert list(lazy) == NAMES
    assert list(lazy.keys()) == NAMES
    layers = {f"layers.{i}.weight": torch.full((1,), float(i)) for i in (0, 1, 2, 10, 11)}
    snap = store.save({"model": layers})
    assert list(store.tensors(snap.id)) == [f"model/{k}" for k in layers]


def test_lazy_tensors_mapping(store: ckpt.Store) -> None:
    state = big_state()
    snap = store.save(state)
    lazy = store.tensors(snap.id)
    assert sorted(lazy) == sorted(NAMES)
    assert len(lazy) == 5
    assert "model/embed" in lazy and "step" not in lazy
    assert torch.equal(lazy["model/layer.weight"], state["model"]["layer.weight"])  # type: ignore[index]
    assert torch.equal(lazy["optimizer/state/0/exp_avg"], state["optimizer"]["state"][0]["exp_avg"])  # type: ignore[index]
    full = store.load(snap.id)
    assert torch.equal(lazy["model/embed"], full["model"]["embed"])
    entry = lazy.entry("model/embed")
    assert (entry.dtype, entry.shape, len(entry.chunks)) == ("F32", (40, 64), 3)
    assert entry.nbytes == 40 * 64 * 4
    scale = lazy.entry("model/scale")
    assert (scale.dtype, scale.shape, len(scale.chunks)) == ("BF16", (), 1)
    assert lazy.entry("model/layer.weight").dtype == "F64"
    assert lazy.snapshot.id == snap.id
    with pytest.raises(KeyError):
        lazy["model/nope"]


def test_lazy_tensors_as_numpy(memory_url: str) -> None:
    import numpy as np

    store = ckpt.init(memory_url, chunk_size=4096)
    w = torch.randn(3, 3)
    snap = store.save({"w": w})
    got = store.tensors(snap.id, framework="numpy")["w"]
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, w.numpy())


def test_lazy_lookup_reads_only_that_tensors_chunks(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    state = big_state()
    snap = store.save(state)
    table = store.table(snap.id)
    wanted = "model/layer.weight"
    keep = set(table.tensors[wanted].chunks)
    others = set().union(*(e.chunks for n, e in table.tensors.items() if n != wanted))
    assert keep and not keep & others  # random tensors share no chunk
    for digest in others:
        (tmp_path / "store" / "chunks" / digest[:2] / digest).unlink()

    lazy = store.tensors(snap.id)
    assert torch.equal(lazy[wanted], state["model"]["layer.weight"])  # type: ignore[index]
    with pytest.raises(MissingObjectError):
        lazy["model/embed"]
    with pytest.raises(MissingObjectError):
        store.load(snap.id)


def test_failed_restore_leaves_the_live_model_untouched(tmp_path: Path) -> None:
    """A restore that fails on a damaged chunk must not leave damaged or half-restored weights in the model."""
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    saved = make_model(seed=0, hidden=256)  # 0.weight: 4 KiB, 2.weight: 2 KiB
    snap = store.save({"model": saved.state_dict()})
    digest = store.table(snap.id).tensors["model/0.weight"].chunks[0]
    path = tmp_path / "store" / "chunks" / digest[:2] / digest
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))

    live = make_model(seed=1, hidden=256)
    before = weights(live)
    with pytest.raises(ckpt.CorruptChunkError, match=r"model/0\.weight"):
        ckpt.restore(live, store, snap.id)
    after = weights(live)
    for name in before:
        assert torch.equal(after[name], before[name]), name


class TiedLM(nn.Module):
    """A tiny language model whose output head shares its input embedding (``tie_word_embeddings``)."""

    def __init__(self, seed: int, tied: bool = True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(16, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 16, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(ids)))


def test_tied_weights_are_recorded_restored_and_stay_tied(local_store: ckpt.Store) -> None:
    model = TiedLM(seed=0)
    snap = local_store.save({"model": model.state_dict()})
    table = local_store.table(snap.id)
    assert table.tied == (("model/embed.weight", "model/head.weight"),)
    before = local_store.stats().chunk_bytes
    assert before < 2 * 16 * 8 * 4  # the tied matrix is stored once

    loaded = local_store.load(snap.id)["model"]
    assert loaded["embed.weight"] is loaded["head.weight"]

    for in_place in (False, True):
        fresh = TiedLM(seed=1)
        ckpt.restore(fresh, local_store, snap.id, in_place=in_place)
        assert fresh.head.weight is fresh.embed.weight  # the model keeps its tie
        assert torch.equal(fresh.embed.weight, model.embed.weight)
        ids = torch.arange(16).reshape(2, 8)
        with torch.no_grad():
            assert torch.equal(fresh(ids), model(ids))

    untied = TiedLM(seed=2, tied=False)  # an untied model gets both weights, equal
    ckpt.restore(untied, local_store, snap.id)
    assert untied.head.weight is not untied.embed.weight
    assert torch.equal(untied.head.weight, model.embed.weight) and torch.equal(untied.embed.weight, model.embed.weight)
    assert local_store.verify().ok


def test_restore_refuses_two_values_for_one_tied_parameter(local_store: ckpt.Store) -> None:
    """An untied state (head ≠ embed) into a tied model: load_state_dict would keep the last key; ckpt refuses."""
    untied = TiedLM(seed=0, tied=False)
    snap = local_store.save({"model": untied.state_dict()})
    assert local_store.table(snap.id).tied == ()
    fresh = TiedLM(seed=1)
    before = fresh.embed.weight.detach().clone()
    with pytest.raises(StateMismatchError, match=r"'embed\.weight' and 'head\.weight'") as info:
        ckpt.restore(fresh, local_store, snap.id)
    assert info.value.hint and "tie_word_embeddings" in info.value.hint
    assert torch.equal(fresh.embed.weight, before)  # nothing was loaded

    # equal values in an untied snapshot load fine into the tied model
    same = TiedLM(seed=3, tied=False)
    with torch.no_grad():
        same.head.weight.copy_(same.embed.weight)
    snap = local_store.save({"model": same.state_dict()})
    ckpt.restore(fresh, local_store, snap.id)
    assert fresh.head.weight is fresh.embed.weight and torch.equal(fresh.embed.weight, same.embed.weight)
    assert local_store.verify().ok


def test_shared_memory_that_is_not_the_same_view_is_not_tied(local_store: ckpt.Store) -> None:
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "w": w,
        "t": w.T,
        "row": w[1],
        "same": w,
        "view": w.view(3, 4),
        "empty": torch.empty(0),
        "e2": torch.empty(0),
    }
    snap = local_store.save(state)
    assert local_store.table(snap.id).tied == (("w", "same", "view"),)
    loaded = local_store.load(snap.id)
    assert loaded["w"] is loaded["same"] is loaded["view"]
    for name in ("t", "row"):
        assert torch.equal(loaded[name], state[name]) and loaded[name] is not loaded["w"]
    assert loaded["empty"] is not loaded["e2"]


@pytest.mark.parametrize("async_save", [True, False])
def test_checkpointer_records_ties_too(local_store: ckpt.Store, async_save: bool) -> None:
    """The Checkpointer stages a copy of each tensor: tied weights must stay one staged tensor (and one table tie)."""
    from ckpt.training import Checkpointer

    model = TiedLM(seed=0)
    with Checkpointer(local_store, "run", async_save=async_save) as ckpts:
        for step in (1, 2):
            with torch.no_grad():
                model.embed.weight.add_(1.0)
            ckpts.save({"model": model.state_dict()}, step=step)
    for snap in local_store.log("run"):
        assert local_store.table(snap.id).tied == (("model/embed.weight", "model/head.weight"),)
    fresh = TiedLM(seed=1)
    ckpt.restore(fresh, local_store, "run")
    assert fresh.head.weight is fresh.embed.weight and torch.equal(fresh.embed.weight, model.embed.weight)
    assert local_store.verify().ok
