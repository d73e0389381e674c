"""The digest cache: unchanged tensors are neither copied nor hashed, and a changed tensor is never missed.

Every way a training loop changes a tensor is tried between two saves; the second snapshot must hold the
tensor's new bytes. Most bump torch's version counter; the ones that do not (fused optimizers, ``.data``
writes, numpy views, ``torch.from_numpy`` aliases) change a single element anywhere, and the byte-for-byte
comparison with the staging buffer must see every one of them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import ckpt
from ckpt import Checkpointer
from ckpt.store._objects import hash_chunk

from .helpers import train_step

pytestmark = pytest.mark.torch

N = 5000  # 20 KB of float32: five 4 KiB chunks


def _check(store: ckpt.Store, handle: object, state: dict[str, torch.Tensor]) -> None:
    snap = handle.result()  # type: ignore[attr-defined]
    got = store.load(snap.id)
    for k, v in state.items():
        assert torch.equal(got[k], v.detach()), k


def _mutations() -> dict[str, Callable[[torch.Tensor], None]]:
    def no_grad_add(t: torch.Tensor) -> None:
        with torch.no_grad():
            t.add_(1)

    def via_view(t: torch.Tensor) -> None:
        t.detach()[10:20].fill_(7)

    def data_assign(t: torch.Tensor) -> None:
        t.data = t.data * 3

    def data_inplace(t: torch.Tensor) -> None:  # .data has a version counter of its own
        t.data.add_(1)

    def numpy_write(t: torch.Tensor) -> None:  # invisible to torch
        t.detach().numpy()[:] += 1

    def set_(t: torch.Tensor) -> None:
        with torch.no_grad():
            t.set_(torch.full_like(t, 5.0))

    def setitem(t: torch.Tensor) -> None:
        with torch.no_grad():
            t[-1] = 123.0

    def load_state_dict(t: torch.Tensor) -> None:
        m = torch.nn.Module()
        m.p = torch.nn.Parameter(t.detach(), requires_grad=False)
        m.load_state_dict({"p": torch.ones_like(t)})

    return {
        "add_": lambda t: t.detach().add_(1),
        "copy_": lambda t: t.detach().copy_(torch.arange(N, dtype=t.dtype)),
        "no_grad add_": no_grad_add,
        "mul_ through a view": via_view,
        ".data = ...": data_assign,
        ".data.add_()": data_inplace,
        "numpy view write": numpy_write,
        "set_": set_,
        "__setitem__": setitem,
        "load_state_dict": load_state_dict,
    }


@pytest.mark.parametrize("how", list(_mutations()))
@pytest.mark.parametrize("async_save", [True, False])
def test_a_changed_tensor_is_saved_with_its_new_bytes(local_store: ckpt.Store, how: str, async_save: bool) -> None:
    mutate = _mutations()[how]
    w = torch.nn.Parameter(torch.randn(N))
    frozen = torch.randn(N)
    with Checkpointer(local_store, "main", async_save=async_save) as ckpts:
        _check(local_store, ckpts.save({"w": w, "frozen": frozen}, step=0), {"w": w, "frozen": frozen})
        same = ckpts.save({"w": w, "frozen": frozen}, step=1)
        assert same.reused == (2 if async_save else 0)  # a synchronous save has no buffer to compare with
        _check(local_store, same, {"w": w, "frozen": frozen})
        before = w.detach().clone()
        mutate(w)
        assert not torch.equal(w.detach(), before), "the mutation must change the tensor"
        changed = ckpts.save({"w": w, "frozen": frozen}, step=2)
        assert changed.reused == (1 if async_save else 0)  # only the frozen one
        _check(local_store, changed, {"w": w, "frozen": frozen})
        again = ckpts.save({"w": w, "frozen": frozen}, step=3)
        _check(local_store, again, {"w": w, "frozen": frozen})
    assert again.reused == (2 if async_save else 0)  # proven equal again: trusted again


@pytest.mark.parametrize("kind", ["sgd-foreach", "adam-single", "adam-fused", "adamw"])
def test_optimizer_steps_are_never_missed(tmp_path: Path, kind: str) -> None:
    local_store = ckpt.init(str(tmp_path / "store"), chunk_size=4096, pack_size=0)  # reuse is per chunk of its own
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 1))
    frozen = model[0]
    for p in frozen.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = {
        "sgd-foreach": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True),
        "adam-single": lambda: torch.optim.Adam(params, lr=0.01, foreach=False),
        "adam-fused": lambda: torch.optim.Adam(params, lr=0.01, fused=True),  # bumps no version counter
        "adamw": lambda: torch.optim.AdamW(params, lr=0.01),
    }[kind]()
    with Checkpointer(local_store, "main") as ckpts:
        handles = []
        for step in range(4):
            train_step(model, opt, step)  # also moves BatchNorm's running statistics
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            handles.append((ckpts.save(state, step=step), _clone(state)))
            if step % 2:
                ckpts.wait()  # the cache fills when a save commits
        ckpts.wait()
        for step in range(4, 6):  # one save at a time: each compares with the buffers of the one before
            train_step(model, opt, step)
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            handles.append((ckpts.save(state, step=step), _clone(state)))
            ckpts.wait()
        for handle, want in handles:
            got = local_store.load(handle.result().id)
            for k, v in want["model"].items():
                assert torch.equal(got["model"][k], v), (k, handle.step)
            for i, s in want["optimizer"]["state"].items():
                for name, v in s.items():
                    assert torch.equal(got["optimizer"]["state"][i][name], v), (i, name, handle.step)
    # the frozen layer was neither copied nor hashed once the first save had committed
    assert [h.reused for h, _ in handles][4:] == [2, 2]


def _clone(state: dict[str, object]) -> dict[str, object]:
    def walk(x: object) -> object:
        if isinstance(x, torch.Tensor):
            return x.detach().clone()
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v) for v in x)
        return x

    return walk(state)  # type: ignore[return-value]


def test_a_new_tensor_at_a_freed_address_is_not_mistaken_for_the_old_one(local_store: ckpt.Store) -> None:
    """Same path, same shape, version 0, maybe the very same address: only the bytes decide."""
    with Checkpointer(local_store, "main") as ckpts:
        for i in range(4):
            t = torch.full((N,), float(i))  # freed at the next assignment; the allocator reuses addresses
            h = ckpts.save({"buf": t}, step=i)
            assert h.reused == 0
            _check(local_store, h, {"buf": t})
            del t
            gc.collect()


def _write_one(t: torch.Tensor, i: int, value: float, how: str) -> None:
    """Change element ``i`` of ``t`` in a way torch's version counter does not see."""
    if how == ".data[i] =":
        t.data[i] = value
    elif how == "numpy view":
        t.detach().numpy()[i] = value
    elif how == "from_numpy alias":
        torch.from_numpy(t.detach().numpy())[i] = value
    elif how == "-0.0 for 0.0":  # equal as numbers, different bytes
        t.data[i] = -0.0
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize("how", [".data[i] =", "numpy view", "from_numpy alias", "-0.0 for 0.0"])
def test_a_single_element_changed_behind_the_version_counter_is_never_missed(local_store: ckpt.Store, how: str) -> None:
    """The breaker's case: a few rows of an embedding change through ``.data`` between saves (new-token init,
    a sparse update). Every save must hold the live bytes, wherever the changed element lies."""
    w = torch.nn.Parameter(torch.zeros(N) if how == "-0.0 for 0.0" else torch.randn(N))
    positions = [0, 1, N // 2, N - 2, N - 1, 1234, 4097]
    with Checkpointer(local_store, "main") as ckpts:
        _check(local_store, ckpts.save({"w": w}, step=0), {"w": w})
        for step, i in enumerate(positions, start=1):
            version = w._version
            _write_one(w, i, float(step), how)
            assert w._version == version  # invisible to torch
            h = ckpts.save({"w": w}, step=step)
            assert h.reused == 0, (how, i)
            _check(local_store, h, {"w": w})
        h = ckpts.save({"w": w}, step=len(positions) + 1)
        assert h.reused == 1  # unchanged since the last committed save: proven equal, not hashed
        _check(local_store, h, {"w": w})
    assert local_store.verify().ok


def test_the_loop_may_change_a_reused_tensor_as_soon_as_save_returns(local_store: ckpt.Store) -> None:
    """A tensor found unchanged is stored from the save's own buffer, not from the live tensor."""
    w = torch.randn(N)
    with Checkpointer(local_store, "main") as ckpts:
        ckpts.save({"w": w}, step=0).result()
        want = w.clone()
        h = ckpts.save({"w": w}, step=1)
        w.data.fill_(9.0)  # at once, while the save may still be in flight
        assert h.reused == 1
        assert torch.equal(local_store.load(h.result().id)["w"], want)


def test_cached_digests_are_the_stores_own(tmp_path: object) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=3000)  # type: ignore[operator]
    w = torch.randn(N)
    with Checkpointer(store, "main") as ckpts:
        ckpts.save({"w": w}, step=0).result()
        [known] = list(ckpts._cache._known.values())
        cached = known["w"]
        h = ckpts.save({"w": w}, step=1)
        assert h.reused == 1
    raw = w.numpy().tobytes()
    cuts = [hash_chunk(raw[i : i + store.chunk_size]) for i in range(0, len(raw), store.chunk_size)]
    assert list(cached) == cuts == list(store.table(h.result().id).tensors["w"].chunks)


def test_tensors_the_cache_cannot_vouch_for_are_always_copied(local_store: ckpt.Store) -> None:
    with torch.inference_mode():
        inference = torch.randn(N)  # no version counter: compared like any other
    strided = torch.randn(N, 2).t()  # not contiguous
    empty = torch.empty(0)
    state = {"inference": inference, "strided": strided, "empty": empty, "rng": torch.get_rng_state()}
    with Checkpointer(local_store, "main") as ckpts:
        for step in range(3):
            h = ckpts.save(state, step=step)
            assert h.reused == 0 if step == 0 else h.reused == 2  # the inference tensor and the rng state
            _check(local_store, h, state)


def test_digest_cache_off_copies_everything(local_store: ckpt.Store) -> None:
    w = torch.randn(N)
    with Checkpointer(local_store, "main", digest_cache=False) as ckpts:
        ckpts.save({"w": w}, step=0)
        w.data[N // 2 + 1] = 42.0  # a sparse write torch does not see
        h = ckpts.save({"w": w}, step=1)
        assert h.reused == 0
        _check(local_store, h, {"w": w})


def test_numpy_state_is_never_cached_and_always_right(local_store: ckpt.Store) -> None:
    a = np.arange(N, dtype=np.float32)
    with Checkpointer(local_store, "main") as ckpts:
        first = ckpts.save({"a": a}, step=0)
        a[3] = -1
        second = ckpts.save({"a": a}, step=1)
    assert local_store.load(first.result().id)["a"][3] == 3
    assert local_store.load(second.result().id)["a"][3] == -1


def test_many_unchanged_and_changed_tensors_keep_their_own_digests(tmp_path: Path) -> None:
    """Dozens of tensors, half frozen, half trained, interleaved: each one's digests stay its own (what a
    save found unchanged is counted exactly, and every snapshot holds the right bytes)."""
    local_store = ckpt.init(str(tmp_path / "store"), chunk_size=4096, pack_size=0)
    frozen = {f"layer{i}.base": torch.randn(300) for i in range(40)}
    trained = {f"layer{i}.lora": torch.randn(300) for i in range(40)}
    with Checkpointer(local_store, "main") as ckpts:
        for step in range(4):
            state = {k: v for pair in zip(frozen.items(), trained.items(), strict=True) for k, v in pair}
            handle = ckpts.save(state, step=step)
            want = {k: v.clone() for k, v in state.items()}
            snap = handle.result()
            assert handle.reused == (0 if step == 0 else 40), step
            got = local_store.load(snap.id)
            for k, v in want.items():
                assert torch.equal(got[k], v), (step, k)
            for t in trained.values():
                t.add_(1)
    assert local_store.verify().ok


def test_packed_tensors_are_hashed_with_their_pack_every_save(local_store: ckpt.Store) -> None:
    """In a store with packs (format 3.0), small tensors are never reused from the cache: a pack holds other
    tensors too, so one tensor's bytes prove nothing of it. Frozen and trained small tensors interleaved save and
    load right at every step, the frozen ones' packs deduplicated."""
    frozen = {f"layer{i}.base": torch.randn(300) for i in range(40)}
    trained = {f"layer{i}.lora": torch.randn(300) for i in range(40)}
    with Checkpointer(local_store, "main") as ckpts:
        for step in range(3):
            state = {"frozen": frozen, "trained": trained}
            handle = ckpts.save(state, step=step)
            want = {k: {n: v.clone() for n, v in d.items()} for k, d in state.items()}
            snap = handle.result()
            assert handle.reused == 0
            table = local_store.table(snap.id)
            assert all(e.pack is not None for e in table.tensors.values())
            got = local_store.load(snap.id)
            for k, d in want.items():
                for n, v in d.items():
                    assert torch.equal(got[k][n], v), (step, k, n)
            for t in trained.values():
                t.add_(1)
    first, last = (local_store.table(s.id).tensors for s in (local_store.log()[-1], local_store.log()[0]))
    assert first["frozen/layer0.base"].chunks == last["frozen/layer0.base"].chunks
    assert first["trained/layer0.lora"].chunks != last["trained/layer0.lora"].chunks
    assert local_store.verify().ok
