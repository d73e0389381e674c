"""The fields a caller gives a new snapshot, declared once, and their cleaning.

``Store.save``, ``Store.derive`` and every layer above that makes snapshots (adapters, the ``Checkpointer``, the
framework callbacks, ``ckpt.dcp``) take these fields as keyword arguments typed ``**fields: Unpack[SaveFields]``
(or ``SnapshotFields``), instead of each re-declaring them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from pydantic import JsonValue

from ckpt.errors import RecordError
from ckpt.model._snapshot import Relation
from ckpt.model._table import file_path_problem

__all__ = ["SaveFields", "SnapshotFields", "check_fields", "clean_files", "clean_metrics"]


class SnapshotFields(TypedDict, total=False):
    """What a new snapshot records besides its state; every key is optional.

    Attributes:
        model: the model's name; default: the first parent's.
        step: training step.
        epoch: training epoch.
        metrics: named numbers (``{"val_loss": 0.41}``).
        message: a note, like a commit message.
        metadata: your own JSON metadata.
        files: attached files, relative path → bytes (``config.json``, tokenizer files …). ``None`` (the
            default) keeps the first parent's files for the relations ``continue``, ``finetune`` and
            ``quantized`` (nothing is copied: they are the same chunks); ``{}`` attaches none.
        base: for an adapter, the revision of the snapshot it modifies.
    """

    model: str | None
    step: int | None
    epoch: int | float | None
    metrics: Mapping[str, float] | None
    message: str | None
    metadata: Mapping[str, JsonValue] | None
    files: Mapping[str, bytes] | None
    base: str | None


class SaveFields(SnapshotFields, total=False):
    """``SnapshotFields`` plus where the snapshot sits in the history; what ``Store.save`` takes.

    Attributes:
        parents: revisions of the parents; default: the branch's current head, if any.
        relation: relation to the first parent; default ``continue``, or ``import`` for a root.
    """

    parents: Sequence[str] | None
    relation: Relation | None


def check_fields(fields: Mapping[str, Any], allowed: type, where: str) -> None:
    """Refuse a keyword that ``allowed`` (a ``TypedDict``) does not declare, as Python refuses one.

    Raises:
        TypeError: ``where() got an unexpected keyword argument 'x'``.
    """
    known: frozenset[str] = getattr(allowed, "__optional_keys__", frozenset()) | getattr(
        allowed, "__required_keys__", frozenset()
    )
    for name in fields:
        if name not in known:
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}")


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Metric values as floats (0-d tensors and numpy scalars included).

    Raises:
        RecordError: a name that is not a string, or a value that is not a number.
    """
    out: dict[str, float] = {}
    for name, value in (metrics or {}).items():
        if not isinstance(name, str):
            raise RecordError(f"metric names must be str, got {name!r}")
        if isinstance(value, bool):
            raise RecordError(f"metric {name!r} must be a number, got {value!r}")
        try:
            out[name] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise RecordError(f"metric {name!r} must be a number, got {value!r}") from None
    return out


def clean_files(files: Mapping[str, bytes] | None) -> dict[str, bytes]:
    """Attached files with checked relative paths (``\\`` read as ``/``) and bytes values.

    Raises:
        RecordError: a path that cannot be stored (absolute, with ``..``, too long …) or a value that is not
            bytes.
    """
    out: dict[str, bytes] = {}
    for path, data in (files or {}).items():
        name = "/".join(path.split("\\")) if isinstance(path, str) else path
        problem = file_path_problem(name)
        if problem:
            shown = repr(path if not isinstance(path, str) or len(path) <= 80 else path[:80] + "…")
            raise RecordError(
                f"attached file path {shown.encode('utf-8', 'backslashreplace').decode()} cannot be stored: {problem}",
                hint="attached files are relative paths such as config.json or tokenizer/vocab.json",
            )
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise RecordError(f"attached file {path!r} must be bytes, got {type(data).__name__}")
        out[name] = bytes(data)
    return out
