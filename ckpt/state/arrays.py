"""Tensors and arrays as raw bytes, without importing torch or numpy unless the state holds them.

A ``TensorSource`` is what the store writes: a dtype name, a shape, and one flat, C-ordered, little-endian
byte buffer that shares memory with the tensor wherever it can (no copy for contiguous CPU tensors).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

from ckpt.errors import UnsupportedStateError

__all__ = ["TensorSource", "is_array", "to_source"]

Kind = Literal["torch", "numpy"]


@dataclass(frozen=True)
class TensorSource:
    """The raw bytes of one tensor, ready to be chunked.

    Attributes:
        dtype: safetensors dtype name (``F32``, ``BF16`` …).
        shape: dimensions.
        kind: ``torch`` or ``numpy``: what the load gives back.
        data: flat bytes (C order, little-endian); ``nbytes`` long.
        owner: the object that owns the memory, kept alive as long as ``data`` is used.
    """

    dtype: str
    shape: tuple[int, ...]
    kind: Kind
    data: memoryview
    owner: Any = None

    @property
    def nbytes(self) -> int:
        """Length of ``data``."""
        return self.data.nbytes


def is_array(value: Any) -> bool:
    """Whether ``value`` is a torch tensor or a numpy array (checked without importing either)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


def to_source(value: Any, path: str) -> TensorSource:
    """The raw bytes of a tensor or array.

    Args:
        value: a torch tensor (any device, any strides) or a numpy array.
        path: where it sits in the state tree, for error messages.

    Raises:
        UnsupportedStateError: sparse, quantized, nested or object arrays, or a dtype with no stored name.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        from ckpt.state.torch import torch_source

        return torch_source(value, path)
    from ckpt.state.numpy import numpy_source

    return numpy_source(value, path)


def unsupported(path: str, what: str) -> UnsupportedStateError:
    """The error for a leaf ckpt cannot store."""
    return UnsupportedStateError(f"cannot store {what} at {path or '<root>'}")
