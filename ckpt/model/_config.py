"""The store configuration record, ``ckpt.json`` at the root of every store."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ckpt.model._types import Timestamp

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_VERSION_NO_DELTAS",
    "FORMAT_VERSION_NO_PACKS",
    "MAX_DELTA_DEPTH",
    "READABLE_MAJOR",
    "StoreConfig",
]

#: The newest format version this ckpt writes, ``"MAJOR.MINOR"``: a store whose tables may pack small tensors
#: into shared chunks (``pack_size`` > 0, the ``pack`` field of a tensor entry). A 2.x ckpt would read a packed
#: tensor as the whole pack: so an older ckpt refuses the whole store rather than misread it.
FORMAT_VERSION = "3.0"
#: The format version of a store without packs whose chunks may be deltas (``delta_depth`` > 0). Its gc must
#: keep the references deltas need, which a 1.x ckpt does not know: so an older ckpt refuses it.
FORMAT_VERSION_NO_PACKS = "2.0"
#: The format version of a store without packs or deltas: every chunk raw or compressed (codecs 0 and 1).
FORMAT_VERSION_NO_DELTAS = "1.3"
#: The newest major format version this ckpt reads.
READABLE_MAJOR = 3
#: The deepest delta chain a store may allow (readers refuse deeper chains whatever a store says).
MAX_DELTA_DEPTH = 64


class StoreConfig(BaseModel):
    """What a store is: written once by ``init``, read by every ``open``.

    Attributes:
        format: always ``"ckpt"``; tells a ckpt store from any other folder.
        format_version: ``"MAJOR.MINOR"`` of the layout and records. A reader refuses a newer MAJOR.
        hash: the content hash of every id and chunk address; ``"blake3"``.
        chunk_size: the size in bytes tensors are cut into (the last chunk of a tensor may be shorter).
        created_at: when the store was created, ISO 8601 UTC.
        compression: new chunks are stored byte-grouped and zstd-coded (codec 1) where that saves at least 3%
            of their bytes (format 1.3); a save can override it. ``False`` in stores made before format 1.3,
            whose chunks are all raw.
        delta_depth: with compression, a new chunk may be stored as a delta (codec 2) against the same byte
            range of the same tensor in the snapshot's first parent, in chains of at most this many deltas
            (a chunk whose reference is at the limit is stored whole: a keyframe); 0: no deltas (format 2.0
            when above 0).
        pack_size: small tensors (under 64 KiB: the writer's choice, not the format's) are packed, by dtype
            in table order, into shared chunks (packs) of at most this many bytes (at most ``chunk_size``);
            0 (not written): no packing, as in every store made before format 3.0 (a store with packs is 3.0).

    Example:
        >>> StoreConfig(chunk_size=1 << 20, created_at="2026-11-28T10:00:00.000000Z").format_version
        '3.0'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["ckpt"] = "ckpt"
    format_version: str = Field(default=FORMAT_VERSION, pattern=r"^[0-9]{1,6}\.[0-9]{1,6}$")
    hash: Literal["blake3"] = "blake3"
    chunk_size: int = Field(gt=0, le=1 << 62)
    created_at: Timestamp
    compression: bool = False
    delta_depth: int = Field(default=0, ge=0, le=MAX_DELTA_DEPTH)
    pack_size: int = Field(default=0, ge=0, le=1 << 62)

    @model_serializer(mode="wrap")
    def _without_no_packs(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and not self.pack_size:
            data.pop("pack_size", None)
        return data

    @model_validator(mode="after")
    def _packs_known(self) -> StoreConfig:
        if self.pack_size and self.major < 3:
            raise ValueError(f"pack_size needs format 3.0 or newer, this store is format {self.format_version}")
        if self.pack_size > self.chunk_size:
            raise ValueError(f"pack_size {self.pack_size} is larger than chunk_size {self.chunk_size}")
        return self

    @property
    def major(self) -> int:
        """The MAJOR part of ``format_version``."""
        return int(self.format_version.split(".")[0])
