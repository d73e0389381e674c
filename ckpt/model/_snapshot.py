"""Snapshot records: the small, immutable commit record of one save."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_serializer, field_validator

from ckpt.model._canonical import canonical_json, digest_bytes
from ckpt.model._types import TIME_FORMAT, Digest, Timestamp, parse_time

__all__ = ["Relation", "Snapshot", "format_time", "parse_time", "utcnow"]

#: How a snapshot relates to its first parent (vocabulary of the Hugging Face model tree where it fits).
Relation = Literal["continue", "finetune", "adapter", "merge", "quantized", "import"]

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def utcnow() -> datetime:
    """The current time in UTC."""
    return datetime.now(timezone.utc)


def format_time(t: datetime) -> str:
    """Format a time as stored: ISO 8601 in UTC with microseconds, e.g. ``2026-11-28T10:02:41.123456Z``."""
    return t.astimezone(timezone.utc).strftime(TIME_FORMAT)


class Snapshot(BaseModel):
    """One saved state: who its parents are, what it is, and the digest of what it holds.

    The record is stored as canonical JSON of every field except ``id`` and ``pruned``; ``id`` is the BLAKE3
    digest of those bytes. ``pruned`` is not part of the record: it is read from the store's pruned markers.

    Attributes:
        id: the snapshot's id (64 hex characters).
        parents: ids of the parent snapshots, first parent first; empty for a root.
        relation: how this snapshot relates to its first parent (``import`` for a root).
        model: the model's name, e.g. ``tiny-llama``; used for release names.
        step: training step, if any.
        epoch: training epoch, if any.
        metrics: named numbers such as ``{"val_loss": 0.41}`` (nan and inf allowed).
        message: free text, like a commit message.
        metadata: the user's own JSON metadata.
        created_at: when it was saved, ISO 8601 UTC.
        ckpt_version: the version of ckpt that wrote it.
        base: for an adapter, the id of the snapshot whose weights it modifies.
        table: digest of the tensor table (tensors, state tree, files).
        tensor_count: number of tensors in the table.
        tensor_bytes: raw bytes of all tensors.
        pruned: whether the snapshot's tensors were released (its record stays).

    Example:
        >>> snap = store.save({"w": torch.zeros(3)}, step=1)  # doctest: +SKIP
        >>> snap.short_id, snap.relation  # doctest: +SKIP
        ('5f0c6a1d2e3b', 'import')
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default="", exclude=True)
    parents: tuple[Digest, ...] = ()
    relation: Relation = "import"
    model: str | None = None
    step: int | None = None
    epoch: int | float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    message: str | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: Timestamp
    ckpt_version: str
    base: Digest | None = None
    table: Digest
    tensor_count: int = Field(default=0, ge=0)
    tensor_bytes: int = Field(default=0, ge=0)
    pruned: bool = Field(default=False, exclude=True)

    @field_validator("metrics", mode="before")
    @classmethod
    def _decode_nonfinite(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_serializer("metrics")
    def _encode_nonfinite(self, metrics: dict[str, float]) -> dict[str, float | str]:
        out: dict[str, float | str] = {}
        for k, v in metrics.items():
            if math.isnan(v):
                out[k] = "NaN"
            elif math.isinf(v):
                out[k] = "Infinity" if v > 0 else "-Infinity"
            else:
                out[k] = v
        return out

    @property
    def short_id(self) -> str:
        """The first 12 hex characters of the id."""
        return self.id[:12]

    @property
    def parent(self) -> str | None:
        """The first parent's id, or ``None`` for a root."""
        return self.parents[0] if self.parents else None

    @property
    def created(self) -> datetime:
        """``created_at`` as an aware ``datetime``."""
        return parse_time(self.created_at)

    def record_bytes(self) -> bytes:
        """The canonical JSON of the record: exactly the bytes stored, whose digest is the id."""
        return canonical_json(self.model_dump(mode="json"))

    def with_id(self) -> Snapshot:
        """A copy whose ``id`` is computed from the record."""
        return self.model_copy(update={"id": digest_bytes(self.record_bytes())})
