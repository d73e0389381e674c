"""``export``: one snapshot out as ordinary files, in the layout its kind calls for (HF or PEFT folder)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ckpt import settings
from ckpt.errors import MissingObjectError, RecordError
from ckpt.interop._diffusers_lora import export_diffusers_lora
from ckpt.interop._folders import local_path
from ckpt.interop._hf_export import ExportResult, write_folder
from ckpt.interop._peft import write_peft_folder
from ckpt.lineage import is_adapter, is_diffusers_lora

if TYPE_CHECKING:
    from ckpt.store import Progress, Store

__all__ = ["export"]

_DEFAULT_SHARD_SIZE = "5GB"
_WEIGHTS_NAME = "model.safetensors"


def export(
    store: Store,
    rev: str,
    path: str | os.PathLike[str],
    *,
    shard_size: int | str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    weights_name: str | None = None,
    default_files: Mapping[str, bytes] | None = None,
) -> ExportResult:
    """Write a snapshot as ordinary files other tools load: a Hugging Face folder, or a PEFT folder for an adapter.

    This is the Python side of ``ckpt restore REV --to DIR`` (also ``ckpt export REV --to DIR``); it writes files,
    while ``ckpt.restore`` loads a snapshot into live torch objects. The layout follows the snapshot: an adapter
    snapshot (relation ``adapter``, or one that records a ``base``) is written as a PEFT folder
    (``adapter_model.safetensors`` in one file, ``adapter_config.json`` from its recorded config) that
    ``PeftModel.from_pretrained(base_model, path)`` loads; a diffusers LoRA (``ckpt.lineage.save_diffusers_lora``)
    as the ``pytorch_lora_weights.safetensors`` folder that ``pipe.load_lora_weights`` loads; a diffusers pipeline
    as its folder (each component's weights in its subfolder, ``model_index.json`` and the rest attached); any
    other as a Hugging Face model folder. A snapshot that starts a ``finetune``, ``adapter``, ``merge`` or
    ``quantized`` line gets its bases (their model names) and relation written into the front matter of its
    ``README.md`` (``base_model``, ``base_model_relation``), so that the Hub shows it in its model tree; an
    imported snapshot's folder comes back file for file (see ``ckpt.interop`` model cards).

    What is written:

    - **weights**: an imported snapshot (one with ``"safetensors_layout"`` whose files still hold exactly its
      tensors) gets its original files back, byte-identical, subfolders included: each header verbatim, then
      its tensors in offset order. Otherwise the *model tensors* are the tensors directly under the state's
      ``"model"`` mapping, or directly under the root mapping when it has no ``"model"`` mapping (a plain state
      dict); they go to ``weights_name`` or, when they exceed ``shard_size``, to
      ``model-00001-of-0000N.safetensors`` shards plus ``model.safetensors.index.json``
      (``{"metadata": {"total_parameters", "total_size"}, "weight_map": {name: file}}``), exactly as
      ``save_pretrained`` cuts and names them (tensors in state order, a new shard when the next tensor would
      overflow, a tensor bigger than ``shard_size`` alone), with ``{"format": "pt"}`` metadata.
    - **attached files** (``config.json``, ``1_Pooling/config.json``, tokenizer files …), except ckpt's own
      ``.ckpt/`` files and any that a file written here replaces; then ``default_files`` not attached.
    - ``state.json``, only if the state holds more than the weights, with every other tensor in
      ``state.safetensors`` under its path. It is JSON with ``"ckpt_export": 1``; ``"snapshot"``: the record's
      fields (``id``, ``model``, ``step``, ``epoch``, ``metrics``, ``message``, ``metadata``, ``relation``,
      ``parents``, ``base``, ``created_at``); ``"files"``: ``{"weights": [...], "index": name | null,
      "state": "state.safetensors" | null}``; ``"numpy"``: paths of tensors saved as numpy arrays (if any);
      ``"state"``: the state tree in ckpt's typed JSON (docs/format.md), every tensor as
      ``{"$tensor": "<path>"}`` (a model tensor's bytes are in the weights under its key in ``"model"``).
      ``import_folder`` reads such a folder back as the same state tree and record fields.

    The export owns its output. Everything is checked before anything is written (names and path lengths,
    dtypes the safetensors format has, the 100 MB header limit); the files are written into a new folder
    beside ``path`` (``.<name>.ckpt-export-<random>``), the other files ``path`` held are hard-linked into it,
    and it is renamed into place: a crash never leaves old and new weights mixed. With ``force``, earlier
    weights (``*.safetensors`` and their index in a folder this export writes weights to) and ckpt's own
    ``state.json`` that the new export does not write again are removed and listed in ``removed``; other files
    stay. Links already in the folder are never written through: a file written over one replaces the link.
    Tensor bytes stream from the store chunk by chunk (read ahead in parallel), each verified; the snapshot's
    table is read once.

    Args:
        store: the store.
        rev: the snapshot to export (branch, tag, id …).
        path: the folder to write; created if missing. A shell standing in it sees the new folder after a ``cd``.
        shard_size: largest shard, in bytes or as ``"5GB"``; default 5 GB.
        force: write into a non-empty folder (see above).
        progress: called with byte counts as tensor bytes are written.
        weights_name: the weights' file name when there is one file; shards are named from it
            (``model-00001-of-00003.safetensors``) with ``<weights_name>.index.json``. Default
            ``model.safetensors``; for an adapter snapshot (relation ``adapter``) ``adapter_model.safetensors``,
            always in one file, with ``adapter_config.json`` from its recorded config: a PEFT folder that
            ``PeftModel.from_pretrained`` loads.
        default_files: files to write when the snapshot has none of that name.

    Returns:
        The folder, the files written and the files removed.

    Raises:
        RecordError: the folder is not empty (without ``force``), ``path`` is a file, a bad ``shard_size``, a
            path that would leave the folder or is too long, a dtype the safetensors format lacks (``C128``),
            a header over 100 MB (the hint says to shard).
        BackendError: the OS refused (disk full, permission, read-only …); the folder is left as it was.
        RevisionError: ``rev`` does not resolve.
        MissingObjectError: the snapshot was pruned.
        CorruptChunkError: a chunk does not match its digest (the folder is left as it was).

    Example:
        >>> ckpt.export(store, "tiny-llama-2026-11-28", "out/tiny-llama").written  # doctest: +SKIP
        (PosixPath('out/tiny-llama/model.safetensors'), PosixPath('out/tiny-llama/config.json'))
    """
    dest = local_path(path, "the export folder")
    try:
        limit = settings.parse_size(shard_size if shard_size is not None else _DEFAULT_SHARD_SIZE)
    except (TypeError, ValueError) as e:
        raise RecordError(f"invalid shard_size {shard_size!r}: {e}", hint="e.g. 5GB, 500MB or a number of bytes") from e
    if limit <= 0:
        raise RecordError(f"shard_size must be positive, got {shard_size!r}", hint="e.g. 5GB or 500MB")

    snap = store.resolve(rev)
    if snap.pruned:
        raise MissingObjectError(
            f"snapshot {snap.short_id} was pruned: its tensors were released", hint="export another snapshot"
        )
    if is_diffusers_lora(snap):  # the folder pipe.load_lora_weights loads
        return export_diffusers_lora(store, snap.id, dest, force=force, progress=progress)
    if is_adapter(snap):  # a PEFT folder (also a continued adapter)
        return write_peft_folder(
            store,
            snap,
            dest,
            force=force,
            progress=progress,
            weights_name=weights_name,
            default_files=default_files,
        )
    return write_folder(
        store,
        snap,
        dest,
        limit=limit,
        weights_name=weights_name or _WEIGHTS_NAME,
        default_files=dict(default_files or {}),
        force=force,
        progress=progress,
    )
