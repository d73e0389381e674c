"""Sharded safetensors weights as Hugging Face cuts, names and indexes them.

``save_pretrained`` writes model weights to one ``model.safetensors`` or, past ``max_shard_size``, to
``model-00001-of-0000N.safetensors`` shards plus ``model.safetensors.index.json``
(``{"metadata": {"total_parameters", "total_size"}, "weight_map": {name: file}}``). ``plan_shards`` cuts the
same way; ``index_json`` writes the index; ``check_index`` checks an index read from a folder against the files
beside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from ckpt.errors import RecordError

__all__ = ["WEIGHTS_SUFFIX", "check_index", "index_json", "plan_shards", "shard_names"]

#: The suffix of a safetensors weights file.
WEIGHTS_SUFFIX = ".safetensors"


def plan_shards(sizes: Sequence[tuple[str, int]], limit: int) -> list[list[str]]:
    """Tensor names per shard, as ``save_pretrained`` cuts them.

    Tensors stay in the order given; a new shard starts when the next tensor would overflow ``limit``; a tensor
    bigger than ``limit`` goes alone into its own shard.

    Args:
        sizes: ``(tensor name, size in bytes)`` in state order.
        limit: the largest shard, in bytes.

    Returns:
        The shards, each a list of tensor names; empty when there is no tensor.

    Example:
        >>> plan_shards([("a", 4), ("b", 4), ("c", 9), ("d", 1)], limit=8)
        [['a', 'b'], ['c'], ['d']]
    """
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for name, size in sizes:
        if size > limit:
            shards.append([name])
            continue
        if current_size + size > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shards.append(current)
    return shards


def shard_names(weights_name: str, count: int) -> list[str]:
    """The file names of ``count`` shards: ``weights_name`` alone, or ``<stem>-0000i-of-0000N.safetensors``.

    Example:
        >>> shard_names("model.safetensors", 2)
        ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    """
    if count == 1:
        return [weights_name]
    stem = weights_name[: -len(WEIGHTS_SUFFIX)]
    return [f"{stem}-{i + 1:05d}-of-{count:05d}{WEIGHTS_SUFFIX}" for i in range(count)]


def index_json(weight_map: Mapping[str, str], *, total_size: int, total_parameters: int) -> bytes:
    """The index of sharded weights, as ``save_pretrained`` writes it (keys sorted, two-space indent)."""
    index = {
        "metadata": {"total_parameters": total_parameters, "total_size": total_size},
        "weight_map": dict(weight_map),
    }
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")


def check_index(name: str, data: bytes, where: Mapping[str, str]) -> None:
    """An HF index (``*.safetensors.index.json``) must name exactly the files and tensors of its folder."""
    try:
        index = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise RecordError(f"{name} is not valid JSON: {e}", hint="download the file again") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise RecordError(f"{name} has no weight_map object", hint="download the file again")
    files = set(where.values())
    for tensor, file in weight_map.items():
        if not isinstance(file, str):
            raise RecordError(
                f"{name} maps {tensor[:80]!r} to {json.dumps(file)[:80]}, not to a file name",
                hint="the index is malformed: download it again",
            )
        if file not in files:
            raise RecordError(
                f"{name} puts {tensor[:80]!r} in {file[:80]}, which is not in the folder",
                hint="the download may be incomplete; fetch the missing shards",
            )
        if where.get(tensor) != file:
            raise RecordError(
                f"{name} puts {tensor[:80]!r} in {file[:80]}, but {file[:80]} does not hold it",
                hint="the index and the shards disagree: download them again",
            )
