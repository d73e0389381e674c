"""Writing merged weights back: whole tensors in place of the base's, tied weights changed together.

Shared by the LoRA merge (``_lora``) and the other types' merges (``_types``). torch is imported by each function.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from ckpt.errors import StateMismatchError

__all__ = ["FLOAT_DTYPES", "apply_whole", "as_torch", "assign"]

#: The dtypes a merge computes into (a base tensor of another dtype is refused, named).
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def apply_whole(
    weights: MutableMapping[str, Any], adapter: Mapping[str, Any], whole: Mapping[str, str], writable: set[int]
) -> None:
    """Put an adapter's whole tensors in place of the base's, cast to the base tensor's dtype (as PEFT loads them).

    Raises:
        StateMismatchError: two whole tensors put different values into one tied tensor.
    """
    import torch

    set_by: dict[int, str] = {}
    for target, key in whole.items():
        old = weights[target]
        value = adapter[key]
        if id(old) in set_by:
            if not torch.equal(as_torch(old).to(value.dtype), value):
                raise StateMismatchError(
                    f"the adapter's {set_by[id(old)]!r} and {key!r} replace one tied tensor with different values"
                )
            continue
        new = assign(weights, old, value.to(as_torch(old).dtype), writable)
        set_by[id(new)] = key


def assign(weights: MutableMapping[str, Any], old: Any, new: Any, writable: set[int]) -> Any:
    """Put ``new`` (torch) wherever ``old`` is (every name of a tied tensor), in place when ``old`` may be written.

    Returns:
        The tensor now in ``old``'s places (``old`` itself when written in place).
    """
    numpy = type(old).__module__ == "numpy"
    if id(old) in writable and tuple(old.shape) == tuple(new.shape):
        if numpy:
            old[...] = new.numpy()
        else:
            old.copy_(new)
        return old
    value = new.numpy() if numpy else new
    for name in [k for k, v in weights.items() if v is old]:
        weights[name] = value
    return value


def as_torch(value: Any) -> Any:
    """A torch view of a torch tensor or a numpy array (no copy)."""
    import torch

    return torch.from_numpy(value) if type(value).__module__ == "numpy" else value
