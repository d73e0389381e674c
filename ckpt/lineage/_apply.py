"""Writing merged weights back: whole tensors in place of the base's, tied weights changed together.

Shared by the LoRA merge (``_lora``) and the other types' merges (``_types``). torch is imported by each function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from ckpt.errors import StateMismatchError

__all__ = ["FLOAT_DTYPES", "apply_whole", "as_torch", "assign"]

#: The dtypes a merge computes into (a base tensor of another dtype is refused, named).
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def apply_whole(
    weights: MutableMapping[str, Any],
    adapter: Mapping[str, Any],
    whole: Mapping[str, str],
    writable: set[int],
    *,
    replaces: Callable[[str], bool] = lambda name: False,
) -> None:
    """Put an adapter's whole tensors in place of the base's, cast to the base tensor's dtype (as PEFT loads them).

    A tensor loaded into the model (an embedding saved with ``save_embedding_layers``) is written where the base
    tensor is, so every name tied to it changes too, as ``set_peft_model_state_dict`` writes into the shared
    parameter. A ``modules_to_save`` module (``replaces(name)``) is PEFT's trained copy put in place of the base's
    module: it replaces its own name only, untying it from the base tensors that shared its storage, unless the
    adapter replaces every name of the tie with one value (``ensure_weight_tying``), which stays one tensor.

    Raises:
        StateMismatchError: two whole tensors put different values into one tied tensor that PEFT loads in place;
            a ``modules_to_save`` copy unties a tensor that ``writable`` (``into=``) buffers hold as one.
    """
    import torch

    set_by: dict[int, str] = {}
    values = {target: adapter[key] for target, key in whole.items()}
    for target, key in whole.items():
        old = weights[target]
        value = adapter[key]
        if replaces(target):
            group = [k for k, v in weights.items() if v is old]
            same = all(
                name in values and torch.equal(values[name].to(value.dtype), value) and replaces(name) for name in group
            )
            if not same:  # untie: this name alone gets the copy; the others keep the base's tensor
                if id(old) in writable and len(group) > 1:
                    others = [k for k in group if k != target]
                    raise StateMismatchError(
                        f"the adapter's modules_to_save copy {key!r} unties {target!r} from {others[0]!r}, which "
                        "into= gives one tensor (tied weights)",
                        hint="untie the weights in the model (e.g. tie_word_embeddings=False), as PEFT's merged model "
                        "is, or load without into=",
                    )
                new = value.to(as_torch(old).dtype)
                weights[target] = new.numpy() if type(old).__module__ == "numpy" else new
                continue
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
