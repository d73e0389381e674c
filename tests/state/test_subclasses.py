"""Tensors and arrays whose bytes are not a plain tensor's are refused by path, with what to do; never a raw
RuntimeError, never a silent loss (a mask, a shard)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ckpt
from ckpt.errors import UnsupportedStateError


@pytest.fixture
def store(tmp_path: Path) -> ckpt.Store:
    return ckpt.init(tmp_path / "store", chunk_size=4096)


@pytest.fixture
def gloo(tmp_path: Path) -> Iterator[None]:
    """A real one-rank gloo process group (rendezvous through a file: no port)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _refused(store: ckpt.Store, value: Any, *words: str) -> UnsupportedStateError:
    before = {e.path for e in store.backend.list("")}
    with pytest.raises(UnsupportedStateError) as err:
        store.save({"model": {"w": value}, "step": 1})
    assert "model/w" in str(err.value), err.value
    for word in words:
        assert word in str(err.value) + (err.value.hint or ""), (word, err.value)
    assert err.value.hint
    assert {e.path for e in store.backend.list("")} == before  # nothing written
    return err.value


@pytest.mark.torch
def test_a_dtensor_is_refused_naming_its_path(store: ckpt.Store, gloo: None) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    dtensor = distribute_tensor(torch.arange(4.0), mesh, [Replicate()])
    err = _refused(store, dtensor, "DTensor", "full_tensor()", "ckpt.dcp.StorageWriter")
    assert isinstance(err, TypeError)
    store.save({"model": {"w": dtensor.full_tensor()}})  # what the hint says works
    assert torch.equal(store.load("main")["model"]["w"], torch.arange(4.0))


@pytest.mark.torch
def test_tensors_without_data_are_refused(store: ckpt.Store) -> None:
    _refused(store, torch.empty(3, device="meta"), "meta", "to_empty")
    _refused(store, torch.nn.Parameter(torch.empty(3, device="meta")), "meta")
    _refused(store, torch.nn.parameter.UninitializedParameter(), "uninitialized", "forward pass")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(3)
    _refused(store, fake, "FakeTensor")


@pytest.mark.torch
def test_other_layouts_are_refused(store: ckpt.Store) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that these are deprecated, in beta or a prototype
        csr = torch.eye(3).to_sparse_csr()
        quantized = torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8)
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    _refused(store, torch.eye(3).to_sparse(), "sparse")
    _refused(store, csr, "sparse")
    _refused(store, quantized, "quantized", "int_repr")
    _refused(store, nested, "nested")


class Wrapper(torch.Tensor):
    """A wrapper subclass (no storage of its own) that forwards every op to the tensor it wraps."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> Wrapper:
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype)  # type: ignore[attr-defined]

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        def unwrap(x: Any) -> Any:
            return x.inner if isinstance(x, Wrapper) else x

        return func(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in (kwargs or {}).items()})


class Opaque(Wrapper):
    """A wrapper subclass whose data cannot be read as a plain tensor's."""

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        raise NotImplementedError(f"{func} is not supported")


@pytest.mark.torch
def test_subclasses_are_stored_by_their_data_or_refused(store: ckpt.Store) -> None:
    _refused(store, Opaque(torch.arange(3.0)), "tensor subclass", "as_subclass")
    store.save({"w": Wrapper(torch.arange(3.0)), "p": torch.arange(3.0).as_subclass(Plain)})
    got = store.load("main")
    assert type(got["w"]) is torch.Tensor and torch.equal(got["w"], torch.arange(3.0))
    assert torch.equal(got["p"], torch.arange(3.0))


class Plain(torch.Tensor):
    pass


def test_numpy_subclasses_that_would_not_come_back_are_refused(store: ckpt.Store, tmp_path: Path) -> None:
    _refused(store, np.ma.masked_array([1.0, 2.0], mask=[False, True]), "mask")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        matrix = np.matrix([[1.0, 2.0]])
    _refused(store, matrix, "np.asarray")
    mm = np.memmap(tmp_path / "m.bin", dtype=np.float32, mode="w+", shape=(4,))
    mm[:] = [1, 2, 3, 4]
    store.save({"w": mm})  # a memory-mapped array is plain data
    assert store.load("main")["w"].tolist() == [1, 2, 3, 4]
