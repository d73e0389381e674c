"""``state.json``: ckpt's record of a training snapshot in an exported folder, so that it imports back exactly.

``ckpt.export`` writes model weights as Hugging Face does; a training snapshot holds more (optimizer state,
step, RNG state …). Those go to ``state.json`` (and their tensors to ``state.safetensors``): JSON with
``"ckpt_export": 1``; ``"snapshot"``: the record's fields (``id``, ``model``, ``step``, ``epoch``, ``metrics``,
``message``, ``metadata``, ``relation``, ``parents``, ``base``, ``created_at``); ``"files"``:
``{"weights": [...], "index": name | null, "state": "state.safetensors" | null}``; ``"numpy"``: paths of tensors
saved as numpy arrays (if any); ``"state"``: the state tree in ckpt's typed JSON (docs/format.md).
``import_folder`` recognises such a folder and reads it back as the same state tree and record fields.

An imported snapshot remembers its files the other way round: ``LAYOUT_KEY`` in its metadata lists the imported
safetensors files, and each file's exact header is attached under ``HEADER_PREFIX``, so that ``ckpt.export``
writes the files back byte for byte.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt.errors import RecordError
from ckpt.model import RESERVED_FILE_PREFIX, Snapshot, TensorTable
from ckpt.state import to_typed_float

__all__ = [
    "EXPORT_FORMAT",
    "HEADER_PREFIX",
    "LAYOUT_KEY",
    "STATE_JSON",
    "STATE_TENSORS",
    "ExportDoc",
    "is_ckpt_state",
    "read_export_doc",
    "state_doc",
]

#: Snapshot metadata key of the recorded file layout: the imported safetensors files' paths, in order.
LAYOUT_KEY = "safetensors_layout"
#: Where each imported file's exact header is attached: ``HEADER_PREFIX + path + ".header"``.
HEADER_PREFIX = f"{RESERVED_FILE_PREFIX}safetensors/"
#: The version of the ``state.json`` that ``ckpt.export`` writes (its ``"ckpt_export"`` field).
EXPORT_FORMAT = 1
#: The record of a training snapshot in an exported folder.
STATE_JSON = "state.json"
#: The tensors of that state that are not model weights.
STATE_TENSORS = "state.safetensors"
_EXPORT_KEY = "ckpt_export"


@dataclass(frozen=True)
class ExportDoc:
    """A ``state.json`` that ``ckpt.export`` wrote, read back.

    Attributes:
        record: the snapshot's record fields.
        weights: the weight files, in order.
        index: the index of sharded weights, if any.
        state_file: ``state.safetensors``, if the state has other tensors.
        numpy: paths of tensors saved as numpy arrays.
        tree: the state tree in typed JSON.
    """

    record: dict[str, Any]
    weights: list[str]
    index: str | None
    state_file: str | None
    numpy: set[str]
    tree: Any


def read_export_doc(data: bytes, what: str) -> ExportDoc | None:
    """The content of a ``state.json`` that ``ckpt.export`` wrote, or ``None`` for any other ``state.json``."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if isinstance(doc, dict) and set(doc) == {"$dict"}:
        raise RecordError(
            f"{what} was written by an older ckpt, without the snapshot's record: it cannot be imported back exactly",
            hint="restore the snapshot again with this ckpt, or move state.json and state.safetensors out of the "
            "folder to import the weights alone",
        )
    if not isinstance(doc, dict) or _EXPORT_KEY not in doc:
        return None
    bad = RecordError(
        f"{what} is a ckpt export record, but it is malformed",
        hint="restore the snapshot again, or move state.json out of the folder to import the weights alone",
    )
    if doc.get(_EXPORT_KEY) != EXPORT_FORMAT:
        raise RecordError(
            f"{what} is a ckpt export of format {doc.get(_EXPORT_KEY)!r}; this ckpt reads format {EXPORT_FORMAT}",
            hint="import it with the ckpt that wrote it, or upgrade ckpt",
        )
    record, files, numpy = doc.get("snapshot"), doc.get("files"), doc.get("numpy", [])
    if not isinstance(record, dict) or not isinstance(files, dict) or "state" not in doc:
        raise bad
    weights, index, state_file = files.get("weights"), files.get("index"), files.get("state")
    if not (
        isinstance(weights, list)
        and all(isinstance(w, str) and "/" not in w for w in weights)
        and (index is None or isinstance(index, str))
        and (state_file is None or isinstance(state_file, str))
        and isinstance(numpy, list)
        and all(isinstance(n, str) for n in numpy)
    ):
        raise bad
    return ExportDoc(record, weights, index, state_file, set(numpy), doc["state"])


def state_doc(
    snap: Snapshot,
    table: TensorTable,
    *,
    weights: list[str],
    index: str | None,
    state_file: str | None,
) -> bytes:
    """The ``state.json`` of a snapshot whose state holds more than its model weights.

    Args:
        snap: the snapshot.
        table: its tensor table (the state tree and which tensors are numpy arrays).
        weights: the weight files written, in order.
        index: the index of sharded weights, if written.
        state_file: ``state.safetensors``, if written.
    """
    numpy = sorted(p for p, e in table.tensors.items() if e.kind == "numpy")
    doc: dict[str, Any] = {
        _EXPORT_KEY: EXPORT_FORMAT,
        "snapshot": {
            "id": snap.id,
            "model": snap.model,
            "step": snap.step,
            "epoch": to_typed_float(snap.epoch),
            "metrics": {k: to_typed_float(v) for k, v in snap.metrics.items()},
            "message": snap.message,
            "metadata": {k: v for k, v in snap.metadata.items() if k != LAYOUT_KEY},
            "relation": snap.relation,
            "parents": list(snap.parents),
            "base": snap.base,
            "created_at": snap.created_at,
        },
        "files": {"weights": weights, "index": index, "state": state_file},
        **({"numpy": numpy} if numpy else {}),
        "state": table.tree,
    }
    return (_pretty(doc, 0) + "\n").encode("utf-8")


def is_ckpt_state(path: Path) -> bool:
    """Whether a ``state.json`` found in an export folder is ckpt's (this format or the older bare tree)."""
    try:
        with open(path, "rb", opener=lambda p, f: os.open(p, f | getattr(os, "O_NOFOLLOW", 0))) as f:
            head = f.read(64)
    except OSError:
        return False
    compact = b"".join(head.split())
    return compact.startswith((b'{"' + _EXPORT_KEY.encode() + b'"', b'{"$dict"'))


def _pretty(node: Any, indent: int) -> str:
    """JSON that breaks a container over lines only when it does not fit on one line of 100 characters."""
    flat = json.dumps(node, ensure_ascii=False, allow_nan=False)
    if len(flat) + indent <= 100 or not isinstance(node, (dict, list)) or not node:
        return flat
    pad = " " * (indent + 2)
    if isinstance(node, list):
        body = ",\n".join(pad + _pretty(v, indent + 2) for v in node)
        return "[\n" + body + "\n" + " " * indent + "]"
    body = ",\n".join(pad + json.dumps(k, ensure_ascii=False) + ": " + _pretty(v, indent + 2) for k, v in node.items())
    return "{\n" + body + "\n" + " " * indent + "}"
