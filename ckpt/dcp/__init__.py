"""``torch.distributed.checkpoint`` (DCP) into a ckpt store: a ``StorageWriter`` and a ``StorageReader``.

DCP is the engine (planning, deduplication of replicated tensors, resharding, collectives); ckpt is the
storage: each rank writes the chunks of its own shards, content-addressed and verified; the coordinator
commits one snapshot and moves the branch only once every rank has succeeded.

Example:
    >>> import torch.distributed.checkpoint as dcp  # doctest: +SKIP
    >>> import ckpt, ckpt.dcp  # doctest: +SKIP
    >>> store = ckpt.open("s3://bucket/run")  # doctest: +SKIP
    >>> dcp.save(state, storage_writer=ckpt.dcp.StorageWriter(store, branch="main", step=1200))  # doctest: +SKIP
    >>> dcp.load(state, storage_reader=ckpt.dcp.StorageReader(store, "main"))  # doctest: +SKIP

This module imports torch; ``import ckpt`` does not import it.
"""

from __future__ import annotations

from ckpt.dcp._reader import StorageReader
from ckpt.dcp._writer import StorageWriter

__all__ = ["StorageReader", "StorageWriter"]
