"""State trees ↔ tensors + typed JSON (torch and numpy are imported only when the state holds them)."""

from ckpt.state._model_tree import from_typed_float, model_tensors, split_model, tensor_groups, to_typed_float
from ckpt.state.arrays import TensorSource, alias_key, is_array, to_source, writable_view
from ckpt.state.tree import flatten, tensor_name, tensor_paths, tied_groups, unflatten

__all__ = [
    "TensorSource",
    "alias_key",
    "flatten",
    "from_typed_float",
    "is_array",
    "model_tensors",
    "split_model",
    "tensor_groups",
    "tensor_name",
    "tensor_paths",
    "tied_groups",
    "to_source",
    "to_typed_float",
    "unflatten",
    "writable_view",
]
