"""State trees ↔ tensors + typed JSON (torch and numpy are imported only when the state holds them)."""

from ckpt.state.arrays import TensorSource, is_array, to_source, writable_view
from ckpt.state.tree import flatten, tensor_name, tensor_paths, unflatten

__all__ = [
    "TensorSource",
    "flatten",
    "is_array",
    "tensor_name",
    "tensor_paths",
    "to_source",
    "unflatten",
    "writable_view",
]
