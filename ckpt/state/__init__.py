"""State trees ↔ tensors + typed JSON (torch and numpy are imported only when the state holds them)."""

from ckpt.state.arrays import TensorSource, alias_key, is_array, to_source, writable_view
from ckpt.state.tree import flatten, tensor_name, tensor_paths, tied_groups, unflatten

__all__ = [
    "TensorSource",
    "alias_key",
    "flatten",
    "is_array",
    "tensor_name",
    "tensor_paths",
    "tied_groups",
    "to_source",
    "unflatten",
    "writable_view",
]
