"""State trees as torch.distributed.checkpoint sees them: flat keys (FQNs) and their object paths. No torch.

DCP flattens a nested state dict before saving (``torch.distributed.checkpoint._nested_dict``): every mapping
is walked with ``str(key)``; a list is walked by position only if it holds a tensor, a mapping or such a list;
anything else (a number, a string, a tuple, a list of numbers) is one leaf. A leaf's FQN is its path joined
with dots (``"optim.param_groups.0.lr"``). ``dcp_leaves`` applies these rules to a stored typed-JSON tree, so
that a snapshot saved by ``store.save`` offers DCP the keys DCP will ask for; ``build`` goes the other way,
from the leaves a distributed save wrote to the nested state a plain ``store.load`` returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ckpt.errors import RecordError, StateError

__all__ = ["Leaf", "PathItem", "build", "dcp_leaves", "fqn_of"]

PathItem = str | int


def fqn_of(path: Sequence[PathItem]) -> str:
    """DCP's flat key for an object path: its parts joined by dots."""
    return ".".join(map(str, path))


@dataclass(frozen=True)
class Leaf:
    """One value DCP saves or loads as a unit.

    Attributes:
        fqn: the flat key (``"model.layers.0.weight"``).
        path: the object path in the nested state (``("model", "layers.0.weight")``).
        node: the typed-JSON node there: ``{"$tensor": name}`` for a tensor, anything else for a value
            DCP handles as bytes (a number, a string, a tuple, a list of plain values …).
    """

    fqn: str
    path: tuple[PathItem, ...]
    node: Any

    @property
    def tensor(self) -> str | None:
        """The table name of the tensor at this leaf, or ``None`` if it is not a tensor."""
        return _tensor_name(self.node)


def _tensor_name(node: Any) -> str | None:
    if isinstance(node, dict) and len(node) == 1 and "$tensor" in node and isinstance(node["$tensor"], str):
        return node["$tensor"]
    return None


def _pairs(node: Any) -> list[Any] | None:
    if isinstance(node, dict) and len(node) == 1 and isinstance(node.get("$dict"), list):
        return node["$dict"]  # type: ignore[no-any-return]
    return None


def _terminal(node: Any) -> bool:
    """DCP's ``_is_terminal`` on a typed-JSON node: mappings never are; a list is unless it holds a tensor,
    a mapping, or a list that is not terminal."""
    if _pairs(node) is not None:
        return False
    if isinstance(node, list):
        for item in node:
            if _tensor_name(item) is not None:
                return False
            if (_pairs(item) is not None or isinstance(item, list)) and not _terminal(item):
                return False
    return True


def dcp_leaves(tree: Any) -> list[Leaf]:
    """The leaves DCP's flattening finds in a stored typed-JSON tree, in tree order.

    Raises:
        StateError: the tree's root is not a mapping (DCP loads into a state dict), or two leaves get one
            FQN (``{"a.b": 1, "a": {"b": 2}}``), which DCP cannot tell apart.
    """
    root = _pairs(tree)
    if root is None:
        raise StateError(
            "this snapshot's state is not a mapping, so torch.distributed.checkpoint cannot load it",
            hint="load it with store.load(); DCP loads into a state dict (a dict at the top)",
        )
    out: list[Leaf] = []
    seen: set[str] = set()

    def visit(path: tuple[PathItem, ...], node: Any) -> None:
        pairs = _pairs(node)
        if pairs is not None:
            for key, value in pairs:
                visit((*path, str(key)), value)
        elif _terminal(node):
            fqn = fqn_of(path)
            if fqn in seen:
                raise StateError(
                    f"two values of this snapshot's state have the DCP key {fqn!r}",
                    hint="load it with store.load(); DCP joins keys with dots and cannot tell them apart",
                )
            seen.add(fqn)
            out.append(Leaf(fqn, path, node))
        else:
            for i, item in enumerate(node):
                visit((*path, i), item)

    for key, value in root:
        visit((str(key),), value)
    return out


def build(leaves: Sequence[tuple[tuple[PathItem, ...], Any]]) -> dict[str, Any]:
    """The nested state from (object path, value) pairs, as DCP's ``unflatten_state_dict`` builds it.

    A string part is a mapping key, an integer part a list position (lists grow with ``None``).

    Raises:
        RecordError: two paths disagree on what a container is (corrupt DCP planner data).
    """
    root: dict[str, Any] = {}
    for path, value in leaves:
        if not path:
            raise RecordError("an empty object path in DCP's planner data")
        container: Any = root
        for key, following in zip(path, (*path[1:], None), strict=True):
            if following is None:
                _put(container, key, value, path)
                break
            default: Any = {} if isinstance(following, str) else []
            current = _get(container, key, path)
            if current is None:
                _put(container, key, default, path)
                current = default
            elif not isinstance(current, type(default)):
                raise RecordError(f"DCP object path {list(path)} goes through a value that is not a container")
            container = current
    return root


def _get(container: Any, key: PathItem, path: tuple[PathItem, ...]) -> Any:
    if isinstance(container, dict) and isinstance(key, str):
        return container.get(key)
    if isinstance(container, list) and isinstance(key, int) and key >= 0:
        return container[key] if key < len(container) else None
    raise RecordError(f"DCP object path {list(path)} does not fit the containers on its way")


def _put(container: Any, key: PathItem, value: Any, path: tuple[PathItem, ...]) -> None:
    if isinstance(container, dict) and isinstance(key, str):
        container[key] = value
    elif isinstance(container, list) and isinstance(key, int) and key >= 0:
        container.extend([None] * (key + 1 - len(container)))
        container[key] = value
    else:
        raise RecordError(f"DCP object path {list(path)} does not fit the containers on its way")


def walk_paths(mappings: Mapping[str, Sequence[PathItem]]) -> Iterator[tuple[str, tuple[PathItem, ...]]]:
    """(FQN, object path) pairs of DCP planner data, each path checked: strings and non-negative integers.

    Raises:
        RecordError: a path is empty or holds anything else.
    """
    for fqn, path in mappings.items():
        items = tuple(path)
        if not items or not all(
            isinstance(p, str) or (isinstance(p, int) and not isinstance(p, bool) and p >= 0) for p in items
        ):
            raise RecordError(f"DCP planner data for {fqn!r} is not an object path: {items!r}")
        yield fqn, items
