"""A tensor as raw bytes (``TensorSource``), and what makes two tensor leaves one tensor.

Nothing here imports torch or numpy: a module already imported (``sys.modules``) is enough to recognise their
tensors. ``_arrays`` (turning a leaf into a ``TensorSource``), ``_torch`` and ``_numpy`` build on this module,
never the other way round.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

from ckpt.errors import UnsupportedStateError

__all__ = ["Kind", "TensorSource", "alias_key", "is_array", "unsupported"]

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
        digests: the chunk digests of ``data``, as ckpt's own ``ckpt.store.ProvenSource`` carries them (the
            ``Checkpointer`` proved them by comparing the bytes); only then does the store skip hashing. On a
            plain ``TensorSource`` they are not trusted: the store hashes ``data`` whatever they say.
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


def unsupported(path: str, what: str) -> UnsupportedStateError:
    """The error for a leaf ckpt cannot store."""
    return UnsupportedStateError(f"cannot store {what} at {path or '<root>'}")
