"""State trees ↔ tensors + typed JSON, exactly and without pickle.

A state tree is any nesting of dict (str or int keys), list and tuple whose leaves are tensors, numpy arrays,
None, bool, int, float (nan and inf included) and str. ``flatten`` turns it into a typed-JSON tree, where
every tensor is replaced by ``{"$tensor": path}``, and a mapping path → ``TensorSource``; ``unflatten`` does the
reverse. The typed JSON, normative in docs/format.md:

| Python | typed JSON |
| --- | --- |
| None, bool, int, str, finite float | the same JSON value (a float always has a ``.`` or exponent) |
| nan, inf, -inf | ``{"$float": "nan"}``, ``{"$float": "inf"}``, ``{"$float": "-inf"}`` |
| list | JSON array |
| tuple | ``{"$tuple": [...]}`` |
| dict / any Mapping | ``{"$dict": [[key, value], ...]}`` in insertion order; keys are JSON strings or integers |
| tensor / ndarray | ``{"$tensor": "path/of/keys"}`` |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Mapping
from typing import Any

from ckpt.errors import RecordError, UnsupportedStateError
from ckpt.model import MAX_JSON_DEPTH, RECORD_HINT
from ckpt.state._arrays import to_source
from ckpt.state._source import TensorSource, alias_key, is_array

__all__ = ["MAX_STATE_DEPTH", "flatten", "tensor_name", "tensor_paths", "tied_groups", "unflatten"]

_SEP = "/"


def flatten(state: Any) -> tuple[Any, dict[str, TensorSource]]:
    """Split a state tree into typed JSON and tensors.

    Args:
        state: the tree, e.g. ``{"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3}``.

    Returns:
        ``(tree, tensors)``: the typed-JSON tree and tensor path → raw bytes, in tree order. Leaves that are
        one tensor (the same memory: see ``ckpt.state.alias_key``), such as tied weights, each keep their
        own path, and their paths map to one and the same ``TensorSource`` object: ``tied_groups(tensors)``
        lists them.

    Raises:
        UnsupportedStateError: a leaf is of a type ckpt does not store; the message names its path.

    Example:
        >>> tree, tensors = flatten({"step": 3, "betas": (0.9, 0.999)})
        >>> tree
        {'$dict': [['step', 3], ['betas', {'$tuple': [0.9, 0.999]}]]}
    """
    tensors: dict[str, TensorSource] = {}
    seen: set[int] = set()
    sources: dict[Any, TensorSource] = {}

    def walk(value: Any, path: str, depth: int = 0) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _check_str(value, path)
        if isinstance(value, int):
            return _check_int(value, path)
        if isinstance(value, float):
            if math.isnan(value):
                return {"$float": "nan"}
            if math.isinf(value):
                return {"$float": "inf" if value > 0 else "-inf"}
            return float(value)
        if is_array(value):
            name = tensor_name(path, tensors)
            alias = alias_key(value)
            same = sources.get(alias)
            if same is None:
                same = sources[alias] = to_source(value, name)
            tensors[name] = same
            return {"$tensor": name}
        if isinstance(value, (Mapping, list, tuple)):
            if id(value) in seen:
                raise UnsupportedStateError(f"the state tree contains itself at {path or '<root>'}")
            if depth >= MAX_STATE_DEPTH:
                raise UnsupportedStateError(
                    f"the state tree nests deeper than {MAX_STATE_DEPTH} containers at {_clip(path)}",
                    hint="flatten it (e.g. join keys with '.'), as state dicts do",
                )
            seen.add(id(value))
            try:
                if isinstance(value, Mapping):
                    pairs = []
                    for k, v in value.items():
                        if isinstance(k, bool) or not isinstance(k, (str, int)):
                            raise UnsupportedStateError(
                                f"cannot store the key {k!r} ({type(k).__name__}) at {path or '<root>'}: "
                                "dict keys must be str or int"
                            )
                        key = _check_str(k, path) if isinstance(k, str) else _check_int(k, path)
                        pairs.append([key, walk(v, _join(path, k), depth + 1)])
                    return {"$dict": pairs}
                items = [walk(v, _join(path, i), depth + 1) for i, v in enumerate(value)]
                return {"$tuple": items} if isinstance(value, tuple) else items
            finally:
                seen.discard(id(value))
        raise UnsupportedStateError(
            f"cannot store a {type(value).__module__}.{type(value).__qualname__} at {path or '<root>'}"
        )

    return walk(state, ""), tensors


def tied_groups(tensors: Mapping[str, TensorSource]) -> list[list[str]]:
    """The paths that hold one tensor, as ``flatten`` returns them: groups of two or more paths, each group in
    tree order, groups in the order of their first path.

    Example:
        >>> import numpy as np
        >>> w = np.ones(2, np.float32)
        >>> tied_groups(flatten({"embed": w, "head": w, "bias": np.zeros(1)})[1])
        [['embed', 'head']]
    """
    groups: dict[int, list[str]] = {}
    for name, source in tensors.items():
        groups.setdefault(id(source), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


_MAX_INT_DIGITS = 4300  # Python's own limit for int <-> decimal text
_MAX_INT_BITS = int(_MAX_INT_DIGITS * 3.32) - 8
#: The deepest nesting of dicts, lists and tuples a state tree may have; its typed JSON then stays within
#: the depth every reader accepts (``ckpt.model.MAX_JSON_DEPTH``: a dict level takes three).
MAX_STATE_DEPTH = 150


def _check_int(value: int, path: str) -> int:
    value = int(value)
    if value.bit_length() > _MAX_INT_BITS:
        raise UnsupportedStateError(f"cannot store the int at {_clip(path)}: it has more than {_MAX_INT_DIGITS} digits")
    return value


def _clip(path: str) -> str:
    if not path:
        return "<root>"
    return path if len(path) <= 120 else "…" + path[-119:]


def tensor_name(path: str, taken: Container[str]) -> str:
    """The name a tensor at ``path`` gets in the table: its path (``tensor`` at the root), made unique with
    ``#2``, ``#3`` … when a tree holds two tensors at one path (the saved names depend on this rule)."""
    name = path or "tensor"
    if name in taken:
        n = 2
        while f"{name}#{n}" in taken:
            n += 1
        name = f"{name}#{n}"
    return name


def _check_str(text: str, path: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsupportedStateError(
            f"cannot store the string at {path or '<root>'}: it is not valid Unicode (a lone surrogate)"
        ) from None
    return text


def _join(path: str, key: str | int) -> str:
    return f"{path}{_SEP}{key}" if path else str(key)


def unflatten(tree: Any, load_tensor: Callable[[str], Any]) -> Any:
    """Rebuild a state tree from typed JSON.

    Args:
        tree: the typed-JSON tree.
        load_tensor: called with each tensor path; returns the tensor to put there.

    Raises:
        RecordError: the tree is not valid typed JSON.
    """

    def walk(node: Any, depth: int) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if depth > MAX_JSON_DEPTH:
            raise RecordError(f"the state tree nests deeper than {MAX_JSON_DEPTH} levels", hint=RECORD_HINT)
        if isinstance(node, list):
            return [walk(v, depth + 1) for v in node]
        if isinstance(node, dict) and len(node) == 1:
            ((tag, body),) = node.items()
            if tag == "$dict" and isinstance(body, list):
                return {_key(pair): walk(pair[1], depth + 3) for pair in body}
            if tag == "$tuple" and isinstance(body, list):
                return tuple(walk(v, depth + 2) for v in body)
            if tag == "$tensor" and isinstance(body, str):
                return load_tensor(body)
            if tag == "$float" and body in ("nan", "inf", "-inf"):
                return float(body)
        raise RecordError(f"invalid node in a state tree: {_describe(node)}", hint=RECORD_HINT)

    return walk(tree, 0)


def _key(pair: Any) -> str | int:
    if not isinstance(pair, list) or len(pair) != 2:
        raise RecordError(f"invalid $dict entry in a state tree: {_describe(pair)}", hint=RECORD_HINT)
    k = pair[0]
    if isinstance(k, bool) or not isinstance(k, (str, int)):
        raise RecordError(f"invalid dict key in a state tree: a JSON {type(k).__name__}", hint=RECORD_HINT)
    return k


def _describe(node: Any) -> str:
    """What a typed-JSON node is, without quoting what it holds (a record may hold anything)."""
    if isinstance(node, dict):
        tags = [k for k in node if isinstance(k, str) and k.startswith("$")][:3]
        return f"an object with {len(node)} keys" + (f" (tags {', '.join(tags)})" if tags else "")
    return f"a JSON {type(node).__name__}"


def tensor_paths(tree: Any) -> list[str]:
    """Tensor paths in the order they appear in a typed-JSON tree (malformed nodes are skipped: the table's
    own validation refuses them)."""
    out: list[str] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(reversed(node))
        elif isinstance(node, dict) and len(node) == 1:
            ((tag, body),) = node.items()
            if tag == "$tensor" and isinstance(body, str):
                out.append(body)
            elif tag == "$dict" and isinstance(body, list):
                todo.extend(pair[1] for pair in reversed(body) if isinstance(pair, list) and len(pair) == 2)
            elif tag == "$tuple" and isinstance(body, list):
                todo.extend(reversed(body))
    return out
