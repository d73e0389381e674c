"""State trees ↔ tensors + typed JSON (layer 3: imports only ``errors``, ``settings`` and ``model``).

The package is internal; this module is its interface for the layers above. Its modules:

- ``_source``: ``TensorSource`` (a tensor as raw bytes) and tensor identity (``is_array``, ``alias_key``).
- ``_arrays``: a torch tensor or numpy array → ``TensorSource``; existing memory to read into.
- ``_tree``: ``flatten`` / ``unflatten`` between a state tree and (typed JSON tree, tensors).
- ``_torch``, ``_numpy``: the framework glue. They import torch and numpy, so their names here are imported on
  first use (PEP 562): ``from ckpt.state import torch_dtype`` imports torch, ``from ckpt.state import flatten``
  does not, and the CLI runs without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ckpt.state._arrays import to_source, writable_view
from ckpt.state._model_tree import from_typed_float, model_tensors, split_model, tensor_groups, to_typed_float
from ckpt.state._source import Kind, TensorSource, alias_key, is_array, unsupported
from ckpt.state._tree import flatten, tensor_name, tensor_paths, tied_groups, unflatten

if TYPE_CHECKING:
    from ckpt.state._numpy import NUMPY_DTYPES, array_from_buffer, empty_numpy, numpy_source
    from ckpt.state._torch import (
        TORCH_DTYPES,
        as_torch,
        dtype_name,
        empty_torch,
        tensor_from_buffer,
        torch_dtype,
        torch_source,
    )

#: Names of the framework glue, imported on first use: name → module.
_LAZY = {
    **dict.fromkeys(("NUMPY_DTYPES", "array_from_buffer", "empty_numpy", "numpy_source"), "ckpt.state._numpy"),
    **dict.fromkeys(
        (
            "TORCH_DTYPES",
            "as_torch",
            "dtype_name",
            "empty_torch",
            "tensor_from_buffer",
            "torch_dtype",
            "torch_source",
        ),
        "ckpt.state._torch",
    ),
}


def __getattr__(name: str) -> Any:
    """Import a name of the torch or numpy glue on first use (PEP 562); ``ImportError`` without them."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckpt.state' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on: a load of 30,000 tensors asks 30,000 times
    return value


__all__ = [
    "NUMPY_DTYPES",
    "TORCH_DTYPES",
    "Kind",
    "TensorSource",
    "alias_key",
    "array_from_buffer",
    "as_torch",
    "dtype_name",
    "empty_numpy",
    "empty_torch",
    "flatten",
    "from_typed_float",
    "is_array",
    "model_tensors",
    "numpy_source",
    "split_model",
    "tensor_from_buffer",
    "tensor_groups",
    "tensor_name",
    "tensor_paths",
    "tied_groups",
    "to_source",
    "to_typed_float",
    "torch_dtype",
    "torch_source",
    "unflatten",
    "unsupported",
    "writable_view",
]
