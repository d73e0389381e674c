"""Tensors and arrays as raw bytes, without importing torch or numpy unless the state holds them.

A ``TensorSource`` is what the store writes: a dtype name, a shape, and one flat, C-ordered, little-endian
byte buffer that shares memory with the tensor wherever it can (no copy for contiguous CPU tensors).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

from ckpt.errors import UnsupportedStateError

__all__ = ["TensorSource", "alias_key", "is_array", "to_source", "writable_view"]

Kind = Literal["torch", "numpy"]


@dataclass(frozen=True)
class TensorSource:
    """The raw bytes of one tensor, ready to be chunked.

    A ``TensorSource`` is also a valid leaf of a state tree: it lets code that holds tensor bytes without a
    framework (e.g. a memory-mapped safetensors file) save them with no torch and no copy.

    Attributes:
        dtype: safetensors dtype name (``F32``, ``BF16`` …).
        shape: dimensions.
        kind: ``torch`` or ``numpy``: what the load gives back.
        data: flat bytes (C order, little-endian); ``nbytes`` long.
        owner: the object that owns the memory, kept alive as long as ``data`` is used.
        digests: the chunk digests of ``data`` if the caller knows them already (e.g. from a cache of
            unchanged tensors); the store then skips hashing, and writes nothing when every chunk exists.
            A wrong digest here would store wrong data under that address: only pass digests computed by
            ckpt for these exact bytes.
    """

    dtype: str
    shape: tuple[int, ...]
    kind: Kind
    data: memoryview
    owner: Any = None
    digests: tuple[str, ...] | None = None

    @property
    def nbytes(self) -> int:
        """Length of ``data``."""
        return self.data.nbytes


def is_array(value: Any) -> bool:
    """Whether ``value`` is a tensor leaf: a ``TensorSource``, a torch tensor or a numpy array.

    torch and numpy are not imported to find out.
    """
    if isinstance(value, TensorSource):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


def alias_key(value: Any) -> tuple[Any, ...] | None:
    """What makes two tensor leaves one tensor: the same memory, seen the same way.

    Two torch tensors alias when they view the same storage (``untyped_storage().data_ptr()``) on the same
    device at the same offset with the same dtype, shape and strides (and conj/neg bits): tied weights, such as a
    language model's input embedding and output head, or one tensor placed twice in a state. Two numpy arrays
    alias when their data pointer, dtype, shape and strides are equal. A ``TensorSource`` aliases only itself.
    Views that merely overlap (a slice, a transpose) are not aliases. Empty tensors, tensors without memory
    (``meta``) and tensors whose storage cannot be inspected (tensor subclasses) alias only themselves.

    Returns:
        A hashable key, equal for two leaves exactly when they alias (while both are alive), or ``None`` for
        a value that is not a tensor leaf.
    """
    if isinstance(value, TensorSource):
        return ("source", id(value))
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        try:
            if type(value) not in (torch.Tensor, torch.nn.Parameter) or value.layout != torch.strided:
                return ("object", id(value))
            ptr = value.untyped_storage().data_ptr()
            if ptr == 0 or value.numel() == 0:
                return ("object", id(value))
            return (
                "torch",
                str(value.device),
                ptr,
                value.storage_offset(),
                str(value.dtype),
                tuple(value.shape),
                tuple(value.stride()),
                value.is_conj(),
                value.is_neg(),
            )
        except (RuntimeError, NotImplementedError, TypeError):
            return ("object", id(value))
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        ptr = int(value.__array_interface__["data"][0])
        if ptr == 0 or value.size == 0:
            return ("object", id(value))
        return ("numpy", ptr, value.dtype.str, tuple(value.shape), tuple(value.strides))
    return None


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
        from ckpt.state.torch import torch_source

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
    from ckpt.state.numpy import numpy_source

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
        from ckpt.state.torch import dtype_name

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
        from ckpt.state.numpy import NUMPY_DTYPES

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


def unsupported(path: str, what: str) -> UnsupportedStateError:
    """The error for a leaf ckpt cannot store."""
    return UnsupportedStateError(f"cannot store {what} at {path or '<root>'}")
