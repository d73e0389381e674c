"""A model's tensors inside a typed-JSON state tree, found without loading anything.

A snapshot's state tree is stored as typed JSON (``ckpt.state.flatten``; docs/format.md). Export, import and
the adapter checks need the *model tensors* of a tree — those directly under the state's ``"model"`` mapping, or
directly under the root mapping when it has no ``"model"`` mapping (a plain state dict) — and the rest of the
tree without them. These functions read the typed JSON only; they never touch a tensor.
"""

from __future__ import annotations

import math
from typing import Any

from ckpt.errors import RecordError

__all__ = ["from_typed_float", "model_tensors", "split_model", "tensor_groups", "to_typed_float"]


def model_tensors(tree: Any) -> dict[str, str]:
    """Model tensor name → tensor path, in tree order (see ``split_model``).

    Raises:
        RecordError: two model tensors would have one name (an int and a str key that print the same).

    Example:
        >>> model_tensors({"$dict": [["model", {"$dict": [["w", {"$tensor": "model/w"}]]}], ["step", 3]]})
        {'w': 'model/w'}
    """
    return split_model(tree)[0]


def split_model(tree: Any) -> tuple[dict[str, str], Any]:
    """Model tensor name → tensor path, and the tree without them (``None`` if nothing is left).

    Raises:
        RecordError: two model tensors would have one name (an int and a str key that print the same).
    """
    if not (isinstance(tree, dict) and set(tree) == {"$dict"}):
        return {}, tree
    pairs: list[list[Any]] = tree["$dict"]
    for i, (key, value) in enumerate(pairs):
        if key == "model" and isinstance(value, dict) and set(value) == {"$dict"}:
            names, rest = _take_tensors(value["$dict"])
            kept = [p for p in pairs if p is not pairs[i]]
            if rest:
                kept.insert(i, ["model", {"$dict": rest}])
            return names, ({"$dict": kept} if kept else None)
    names, rest = _take_tensors(pairs)
    return names, ({"$dict": rest} if rest else None)


def tensor_groups(tree: Any) -> dict[str, dict[str, str]] | None:
    """Root key → {key: tensor path} for a tree that is only mappings of tensors under a root mapping, else ``None``.

    Raises:
        RecordError: two tensors of one mapping would have one name.

    Example:
        >>> tensor_groups({"$dict": [["unet", {"$dict": [["w", {"$tensor": "unet/w"}]]}]]})
        {'unet': {'w': 'unet/w'}}
    """
    if not (isinstance(tree, dict) and set(tree) == {"$dict"} and isinstance(tree["$dict"], list)):
        return None
    out: dict[str, dict[str, str]] = {}
    for pair in tree["$dict"]:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            return None
        key, value = pair
        if not (isinstance(value, dict) and set(value) == {"$dict"} and isinstance(value["$dict"], list)):
            return None
        names, rest = _take_tensors(value["$dict"])
        if rest or key in out:
            return None
        out[key] = names
    return out


def to_typed_float(value: Any) -> Any:
    """A float as typed JSON holds it (``{"$float": "nan"}`` for nan and ±inf); any other value as it is."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    return value


def from_typed_float(value: Any) -> Any:
    """The reverse of ``to_typed_float``: ``{"$float": "nan"}`` → nan …; any other value as it is."""
    if isinstance(value, dict) and set(value) == {"$float"} and value["$float"] in ("nan", "inf", "-inf"):
        return float(value["$float"])
    return value


def _take_tensors(pairs: list[list[Any]]) -> tuple[dict[str, str], list[list[Any]]]:
    names: dict[str, str] = {}
    rest: list[list[Any]] = []
    for key, value in pairs:
        if isinstance(value, dict) and set(value) == {"$tensor"} and isinstance(value["$tensor"], str):
            name = str(key)
            if name in names:
                raise RecordError(
                    f"two tensors of the model would both be named {name!r}",
                    hint="rename one of the keys (an int and a str key print the same)",
                )
            names[name] = value["$tensor"]
        else:
            rest.append([key, value])
    return names, rest
