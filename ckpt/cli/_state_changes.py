"""What differs between two stored state trees outside their tensors, for ``ckpt diff``: ``step: 100 → 200``."""

from __future__ import annotations

import json
from typing import Any

from ckpt.cli._output import shown

__all__ = ["tree_changes"]


def _entries(node: Any) -> dict[str, Any] | None:
    """The children of a container node of a stored state tree (typed JSON), by key or index; else ``None``."""
    if isinstance(node, dict) and len(node) == 1:
        (tag, value), *_ = node.items()
        if tag == "$dict" and isinstance(value, list):
            return {str(k): v for k, v in (pair for pair in value if isinstance(pair, list) and len(pair) == 2)}
        if tag in ("$list", "$tuple") and isinstance(value, list):
            return {str(i): v for i, v in enumerate(value)}
    if isinstance(node, dict) and not any(str(k).startswith("$") for k in node):
        return {str(k): v for k, v in node.items()}
    if isinstance(node, list):
        return {str(i): v for i, v in enumerate(node)}
    return None


def _value(node: Any) -> str:
    if isinstance(node, dict) and "$tensor" in node:
        return "a tensor"
    text = json.dumps(node, ensure_ascii=False, default=str)
    return shown(text if len(text) <= 60 else text[:57] + "…")


def tree_changes(a: Any, b: Any, path: str = "", *, limit: int = 10) -> list[str]:
    """Where two stored state trees differ, outside tensors: ``step: 100 → 200``, ``note: removed`` …

    At most ``limit`` lines (the last says how many more); tensors themselves are the diff's tensor table.
    """
    out: list[str] = []
    missing = object()

    def is_tensor(node: Any) -> bool:
        return isinstance(node, dict) and "$tensor" in node

    def walk(x: Any, y: Any, where: str) -> None:
        if x == y or ((is_tensor(x) or x is missing) and (is_tensor(y) or y is missing)):
            return  # tensors (added, removed, renamed) are the tensor table's
        ex = {} if x is missing else _entries(x)
        ey = {} if y is missing else _entries(y)
        if ex is not None and ey is not None:
            for key in [*ex, *(k for k in ey if k not in ex)]:
                walk(ex.get(key, missing), ey.get(key, missing), f"{where}/{key}" if where else key)
            return
        name = shown(where or "(the whole state)")
        if x is missing:
            out.append(f"{name}: added ({_value(y)})")
        elif y is missing:
            out.append(f"{name}: removed (was {_value(x)})")
        else:
            out.append(f"{name}: {_value(x)} → {_value(y)}")

    walk(a, b, path)
    return out if len(out) <= limit else [*out[: limit - 1], f"… and {len(out) - limit + 1} more"]
