"""Loading where it is used: a subset by tensor-path prefix, straight onto a device (``Store.load(prefix=, device=)``).

A subset reads only its own chunks: the others are deleted from the store before the load, and it still works.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ckpt
from ckpt.errors import StateError, StateMismatchError
from ckpt.store import _layout as layout
from ckpt.store import store_parts
from ckpt.store._loading import load as load_into
from ckpt.store._loading import to_device

pytestmark = pytest.mark.torch


def pipeline_state(seed: int = 0) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    return {
        "unet": {"conv_in.weight": torch.randn(8, 4, 3, 3, generator=g), "conv_in.bias": torch.randn(8, generator=g)},
        "text_encoder": {"embed.weight": torch.randn(54, 16, generator=g)},
        "text_encoder_2": {"embed.weight": torch.randn(54, 32, generator=g)},
        "vae": {"decoder.conv.weight": torch.randn(3, 8, 3, 3, generator=g).to(torch.bfloat16)},
        "step": 7,
        "history": [torch.ones(2), 1.5, {"best": torch.zeros(3)}],
    }


def delete_chunks_except(store: ckpt.Store, rev: str, keep_prefix: str) -> int:
    """Delete every chunk no tensor under ``keep_prefix`` needs; returns how many were deleted."""
    table = store.table(rev)
    needed = {d for p, e in table.tensors.items() if p.startswith(keep_prefix) for d in e.chunks}
    doomed = {d for e in table.tensors.values() for d in e.chunks} - needed
    store.backend.delete([layout.chunk_path(d) for d in doomed])
    return len(doomed)


def test_a_prefix_reads_one_component(local_store: ckpt.Store) -> None:
    state = pipeline_state()
    local_store.save(state)
    read: list[int] = []
    assert delete_chunks_except(local_store, "main", "unet/") > 0
    out = local_store.load("main", prefix="unet/", progress=read.append)
    assert list(out) == ["unet"]
    assert all(torch.equal(out["unet"][k], v) for k, v in state["unet"].items())  # type: ignore[attr-defined]
    assert sum(read) == sum(t.nbytes for t in state["unet"].values())  # type: ignore[attr-defined]


def test_prefixes_are_plain_path_prefixes(local_store: ckpt.Store) -> None:
    local_store.save(pipeline_state())
    assert list(local_store.load("main", prefix="text_encoder/")) == ["text_encoder"]
    assert list(local_store.load("main", prefix="text_encoder")) == ["text_encoder", "text_encoder_2"]
    assert list(local_store.load("main", prefix=["vae/", "unet/conv_in.b"])) == ["unet", "vae"]
    assert list(local_store.load("main", prefix="unet/conv_in.b")["unet"]) == ["conv_in.bias"]


def test_plain_leaves_and_sequences_under_a_prefix(local_store: ckpt.Store) -> None:
    local_store.save(pipeline_state())
    assert "step" not in local_store.load("main", prefix="unet/")
    assert local_store.load("main", prefix=["unet/", "step"])["step"] == 7
    history = local_store.load("main", prefix="history/2/")["history"]
    assert history[0] is None and history[1] is None and torch.equal(history[2]["best"], torch.zeros(3))


def test_an_unknown_prefix_names_what_there_is(local_store: ckpt.Store) -> None:
    local_store.save(pipeline_state())
    with pytest.raises(StateMismatchError, match=r"'uent/'.*text_encoder/, text_encoder_2/, unet/, vae/"):
        local_store.load("main", prefix="uent/")


def test_tied_tensors_stay_one_under_a_prefix(local_store: ckpt.Store) -> None:
    shared = torch.randn(4, 4)
    local_store.save({"model": {"embed.weight": shared, "lm_head.weight": shared, "norm": torch.ones(4)}})
    out = local_store.load("main", prefix="model/")["model"]
    assert out["embed.weight"] is out["lm_head.weight"]
    only = local_store.load("main", prefix="model/lm_head")["model"]
    assert list(only) == ["lm_head.weight"] and torch.equal(only["lm_head.weight"], shared)


def test_the_whole_snapshot_on_the_cpu_is_store_load(local_store: ckpt.Store) -> None:
    local_store.save(pipeline_state())
    ours, theirs = local_store.load("main", device="cpu"), local_store.load("main")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours["unet"][k], v) for k, v in theirs["unet"].items())


def test_meta_gives_shapes_and_reads_nothing(local_store: ckpt.Store) -> None:
    state = pipeline_state()
    local_store.save(state)
    delete_chunks_except(local_store, "main", "nothing/")
    out = local_store.load("main", device="meta", prefix=["unet/", "vae/"])
    w = out["vae"]["decoder.conv.weight"]
    assert (w.device.type, w.dtype, tuple(w.shape)) == ("meta", torch.bfloat16, (3, 8, 3, 3))
    with pytest.raises(ckpt.MissingObjectError):
        local_store.load("main", prefix="vae/")  # a real load does need the chunks


@pytest.mark.parametrize("staging", [1, 100, 700, 1 << 20])
def test_device_placement_through_a_small_staging_buffer(local_store: ckpt.Store, staging: int) -> None:
    """The device path, run on the CPU: batches fill and reuse one host buffer; every tensor comes out right."""
    state = pipeline_state()
    local_store.save(state)
    lazy = local_store.tensors("main")
    table = lazy.table
    out = to_device(
        store_parts(local_store),
        lazy.snapshot.id,
        table,
        dict(table.tensors),
        "cpu",
        verify=True,
        progress=None,
        staging_bytes=staging,
    )
    expected = local_store.load("main")
    assert torch.equal(out["unet/conv_in.weight"], expected["unet"]["conv_in.weight"])
    assert torch.equal(out["vae/decoder.conv.weight"], expected["vae"]["decoder.conv.weight"])
    assert torch.equal(out["text_encoder_2/embed.weight"], expected["text_encoder_2"]["embed.weight"])
    pointers = {t.untyped_storage().data_ptr() for t in out.values() if t.numel()}
    assert len(pointers) == len([t for t in out.values() if t.numel()])  # no two share the staging buffer


def test_a_device_takes_torch_tensors_only(local_store: ckpt.Store) -> None:
    local_store.save(pipeline_state())
    with pytest.raises(StateMismatchError, match="numpy"):
        local_store.load("main", device="meta", framework="numpy")


@pytest.mark.parametrize("device", ["banana", "cuda:99", "xla"])
def test_an_unusable_device_is_refused_before_anything_is_read(local_store: ckpt.Store, device: str) -> None:
    """A device torch cannot name or this process cannot use gets a CkptError (not torch's RuntimeError or
    AssertionError), before a chunk is read: here every chunk is gone, and the error is still the device's."""
    local_store.save(pipeline_state())
    delete_chunks_except(local_store, "main", "nothing/")
    with pytest.raises(StateError, match=f"device={device!r}") as info:
        local_store.load("main", prefix="unet/", device=device)
    assert "cuda:0" in str(info.value.hint)


class _Allocations(TorchDispatchMode):
    """The sizes of the uint8 buffers torch allocates (real dispatch, nothing replaced)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.ops.aten.empty.memory_format and kwargs.get("dtype") == torch.uint8:
            self.sizes.append(int(torch.Size(args[0]).numel()))
        return func(*args, **kwargs)


def test_the_staging_buffer_is_no_bigger_than_the_selection(local_store: ckpt.Store) -> None:
    """The host buffer is ``min(selection, staging_bytes)``, as the docs say: a 1 kB component does not pin
    256 MiB of host memory on its way to a GPU."""
    state = pipeline_state()
    local_store.save(state)
    table = local_store.table("main")
    entries = {p: e for p, e in table.tensors.items() if p.startswith("unet/")}
    with _Allocations() as seen:
        out = to_device(
            store_parts(local_store),
            table_id(local_store),
            table,
            entries,
            "cpu",
            verify=True,
            progress=None,
            staging_bytes=256 << 20,
        )
    selection = sum(e.nbytes for e in entries.values())
    assert seen.sizes and max(seen.sizes) < selection + 64 * len(entries)
    assert torch.equal(out["unet/conv_in.weight"], state["unet"]["conv_in.weight"])  # type: ignore[index]


def table_id(store: ckpt.Store) -> str:
    return store.resolve("main").id


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_straight_to_a_cuda_device(local_store: ckpt.Store) -> None:
    state = pipeline_state()
    local_store.save(state)
    out = load_into(
        store_parts(local_store),
        "main",
        prefix="unet/",
        device="cuda:0",
        staging_bytes=256,
        verify=True,
        framework=None,
        into=None,
        progress=None,
        mmap=False,
    )
    w = out["unet"]["conv_in.weight"]
    assert w.device.type == "cuda"
    assert torch.equal(w.cpu(), state["unet"]["conv_in.weight"])  # type: ignore[index]


def test_a_merged_peft_adapter_under_a_prefix(local_store: ckpt.Store, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    base = {"model": {"q.weight": torch.randn(8, 8, generator=g), "k.weight": torch.randn(8, 8, generator=g)}}
    local_store.save(base)
    adapter = {
        "base_model.model.q.lora_A.weight": torch.randn(2, 8, generator=g),
        "base_model.model.q.lora_B.weight": torch.randn(8, 2, generator=g),
    }
    ckpt.save_adapter(
        local_store, "main", adapter, branch="lora", config={"r": 2, "lora_alpha": 4, "target_modules": ["q"]}
    )
    merged = ckpt.load_merged(local_store, "lora")
    out = ckpt.load_merged(local_store, "lora", prefix="model/q")
    assert list(out["model"]) == ["q.weight"]
    assert torch.equal(out["model"]["q.weight"], merged["model"]["q.weight"])
