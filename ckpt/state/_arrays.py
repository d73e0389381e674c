"""Tensors and arrays as raw bytes, without importing torch or numpy unless the state holds them.

A ``TensorSource`` (``_source``) is what the store writes: a dtype name, a shape, and one flat, C-ordered,
little-endian byte buffer that shares memory with the tensor wherever it can (no copy for contiguous CPU
tensors). torch and numpy glue (``_torch``, ``_numpy``) is imported only when a leaf is one of theirs.
"""

from __future__ import annotations

import sys
from typing import Any

from ckpt.errors import UnsupportedStateError
from ckpt.state._source import TensorSource

__all__ = ["to_source", "writable_view"]


def to_source(value: Any, path: str) -> TensorSource:
    """The raw bytes of a tensor or array.

    Args:
        value: a torch tensor (any device, any strides) or a numpy array.
        path: where it sits in the state tree, for error messages.

    Raises:
        UnsupportedStateError: sparse, quantized, nested or object arrays, or a dtype with no stored name.
    """
    if isinstance(value, TensorSource):
        return value
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        from ckpt.state._torch import torch_source

        _check_torch(torch, value, path)
        if type(value) in (torch.Tensor, torch.nn.Parameter):
            return torch_source(value, path)
        try:  # a subclass: stored only if its bytes can be read like a plain tensor's
            return torch_source(value, path)
        except (RuntimeError, TypeError, NotImplementedError, ValueError, AttributeError) as e:
            raise UnsupportedStateError(
                f"cannot store the {_qualname(value)} tensor subclass at {path or '<root>'}: its bytes cannot be "
                f"read as a plain tensor's ({type(e).__name__})",
                hint="convert it to a plain tensor first (e.g. torch.Tensor(value) or value.as_subclass(torch.Tensor))",
            ) from e
    np = sys.modules.get("numpy")
    if np is not None:
        _check_numpy(np, value, path)
    from ckpt.state._numpy import numpy_source

    return numpy_source(value, path)


def _qualname(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _check_torch(torch: Any, value: Any, path: str) -> None:
    """Refuse, by name and with what to do, tensors whose bytes are not a plain tensor's (or that hold none)."""
    where = path or "<root>"
    name = type(value).__name__
    module = type(value).__module__ or ""
    if name == "DTensor" and module.startswith("torch.distributed"):
        raise UnsupportedStateError(
            f"cannot store the DTensor at {where} with Store.save: it is sharded over a process group, and one "
            "process holds only its own shard",
            hint="save a distributed state with torch.distributed.checkpoint and ckpt.dcp.StorageWriter (each rank "
            "writes its shards, one snapshot; see docs/guides/distributed.md), or gather it with "
            "value.full_tensor() and save the full tensor from one rank",
        )
    if name.startswith("Uninitialized") and module.startswith("torch.nn"):
        raise UnsupportedStateError(
            f"cannot store the uninitialized parameter at {where}: a lazy module has not seen an input yet",
            hint="run one forward pass (or materialize the lazy module) before saving",
        )
    if name == "FakeTensor" or module.startswith("torch._subclasses"):
        raise UnsupportedStateError(
            f"cannot store the {name} at {where}: it holds no data (made under FakeTensorMode or compile tracing)",
            hint="save the real tensors, outside FakeTensorMode",
        )
    functional = getattr(torch, "_is_functional_tensor", None)
    if functional is not None and functional(value):
        raise UnsupportedStateError(
            f"cannot store the functional tensor at {where} (a functionalization wrapper)",
            hint="save the tensor outside torch.func.functionalize / torch.compile tracing",
        )
    if value.device.type == "meta":
        raise UnsupportedStateError(
            f"cannot store the meta tensor at {where}: it has a shape and a dtype but no data",
            hint="materialize the module first (module.to_empty(device='cpu') and load or initialize its weights)",
        )


def _check_numpy(np: Any, value: Any, path: str) -> None:
    """Refuse ndarray subclasses that would not come back as they are (a masked array would lose its mask)."""
    if type(value) is np.ndarray or isinstance(value, np.memmap):
        return
    where = path or "<root>"
    if isinstance(value, np.ma.MaskedArray):
        raise UnsupportedStateError(
            f"cannot store the masked array at {where}: its mask would be lost",
            hint="save its data and mask as two arrays (value.data, np.ma.getmaskarray(value))",
        )
    raise UnsupportedStateError(
        f"cannot store the {_qualname(value)} at {where}: it would come back as a plain numpy.ndarray",
        hint="convert it with np.asarray(value) if a plain array is what you want back",
    )


def writable_view(value: Any, dtype: str, shape: tuple[int, ...]) -> memoryview | None:
    """A flat byte view of an existing tensor's memory, if it can take ``dtype``/``shape`` data in place.

    Only a contiguous CPU tensor (or C-contiguous, writable numpy array) of exactly that dtype and shape
    qualifies; anything else gives ``None`` and the caller allocates new memory.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        from ckpt.state._torch import dtype_name

        if (
            value.device.type != "cpu"
            or dtype_name(value.dtype) != dtype
            or tuple(value.shape) != shape
            or not value.is_contiguous()
            or value.is_conj()
            or value.is_neg()
            or value.numel() == 0
        ):
            return None
        flat = value.detach().reshape(-1).view(torch.uint8).numpy()
        return memoryview(flat)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        from ckpt.state._numpy import NUMPY_DTYPES

        if (
            NUMPY_DTYPES.get(dtype) is None
            or value.dtype != np.dtype(NUMPY_DTYPES[dtype]).newbyteorder("<")
            or tuple(value.shape) != shape
            or not value.flags.c_contiguous
            or not value.flags.writeable
            or value.size == 0
        ):
            return None
        return memoryview(value.reshape(-1).view(np.uint8))
    return None
