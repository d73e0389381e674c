"""PEFT adapter folders in and out of a store: ``adapter_model.safetensors`` + ``adapter_config.json``.

``peft_model.save_pretrained(folder)`` writes such a folder; ``PeftModel.from_pretrained(base_model, folder)``
loads one. Importing one gives an adapter snapshot (``ckpt.lineage``), checked against its base as
``save_adapter`` checks; exporting one gives the folder back, byte-identical for an imported adapter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from ckpt.errors import MissingObjectError, RecordError
from ckpt.interop._folders import local_path, read_file
from ckpt.interop._hf_export import ExportResult, write_folder
from ckpt.interop._hf_import import MAX_SIDE_FILE_SIZE, import_folder, plan_import
from ckpt.interop._safetensors import read_header
from ckpt.lineage import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    MERGED_TYPES,
    adapter_config,
    adapter_record,
    base_of,
    config_bytes,
    layers_of_model,
    peft_type,
    read_config,
)
from ckpt.model import Snapshot

if TYPE_CHECKING:
    from ckpt.store import Progress, Store

__all__ = ["export_peft_folder", "import_peft_folder", "write_peft_folder"]

#: A PEFT folder holds its adapter in one file, however big.
_ONE_FILE = 1 << 62


def import_peft_folder(
    store: Store,
    path: str | os.PathLike[str],
    base_rev: str,
    *,
    branch: str,
    model: str | None = None,
    message: str | None = None,
    metadata: Mapping[str, JsonValue] | None = None,
    peft_model: Any = None,
    progress: Progress | None = None,
) -> Snapshot:
    """Import a PEFT adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``) over a base.

    The folder is imported as ``import_folder`` does (its files attached as they are, so
    ``export_peft_folder`` gives them back byte-identical), with the relation, parents and base of
    ``save_adapter`` and the config copied into ``metadata["adapter_config"]``. The config of an adapter ckpt
    merges (LoRA, IA³, LoHa, LoKr) is checked, and its tensors against the base's tensor table, before anything
    is written, whatever else the folder holds (``modules_to_save``, trainable tokens …: stored, and merged if
    ckpt can). An adapter of another type is stored as it is (``export_peft_folder`` gives it back).

    Args:
        store: the store.
        path: the folder ``peft_model.save_pretrained`` wrote.
        base_rev: the snapshot the adapter modifies.
        branch: the adapter's branch: new, or one whose head is an adapter of the same base.
        model: the adapter's model name; default: the base's name + ``-lora``.
        message: a note; default ``import adapter <folder name>``.
        metadata: your own JSON metadata; ``"adapter_config"``, ``"adapter_layers"`` and ``"safetensors_layout"``
            are ckpt's.
        peft_model: the adapter loaded in PEFT (``PeftModel.from_pretrained(base_model, path)``) or its base
            model, to read each layer's orientation from, as ``save_adapter`` does; needed only when the base has
            both ``Conv1D`` and linear layers and a target's square weight cannot tell which it is.
        progress: called with byte counts as chunks are written.

    Returns:
        The adapter snapshot.

    Raises:
        RecordError: no such folder, no ``adapter_config.json`` or ``adapter_model.safetensors`` in it; a
            malformed config or safetensors header.
        UnsupportedStateError: the adapter weights are a pickle (``adapter_model.bin``).
        StateMismatchError: a LoRA target the base lacks, or whose shape or rank does not fit; a whole tensor
            the base lacks.
        RefExistsError: ``branch`` exists and its head is not an adapter of this base.

    Example:
        >>> peft_model.save_pretrained("out/chat-lora")  # doctest: +SKIP
        >>> snap = import_peft_folder(store, "out/chat-lora", "chat", branch="chat-lora")  # doctest: +SKIP
    """
    src = local_path(path, "the PEFT folder")
    if not src.is_dir():
        raise RecordError(f"{src} is not a folder", hint="pass the folder peft_model.save_pretrained() wrote")
    config_path = src / ADAPTER_CONFIG_FILE
    if not config_path.is_file():
        raise RecordError(f"{src} has no {ADAPTER_CONFIG_FILE}; it is not a PEFT adapter folder")
    weights_path = src / ADAPTER_WEIGHTS_FILE
    if not weights_path.is_file() and not (src / "adapter_model.bin").is_file():
        raise RecordError(f"{src} has no {ADAPTER_WEIGHTS_FILE}")
    plan = plan_import(src)  # before reading anything: links leaving the folder, pickles, odd files are refused
    config_file = next((f for f in plan.files if f.path == ADAPTER_CONFIG_FILE), None)
    if config_file is None:
        raise RecordError(
            f"{src} has no {ADAPTER_CONFIG_FILE}", hint="a PEFT adapter folder has one beside its weights"
        )
    cfg = read_config(read_file(config_file, limit=MAX_SIDE_FILE_SIZE), str(config_path))
    base = store.resolve(base_rev)
    shapes = None
    if weights_path.is_file() and peft_type(cfg) in MERGED_TYPES:
        # every tensor is stored as it is; the adapter's tensors and whole tensors are checked against the base
        # (tensors ckpt does not merge, such as trainable tokens, are stored and only merging them is refused)
        _, header = read_header(weights_path)
        shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    layers = layers_of_model(peft_model) if peft_model is not None and shapes is not None else None
    record = adapter_record(
        store, base, cfg, branch=branch, metadata=metadata, shapes=shapes, adapter=str(src), layers=layers
    )
    return import_folder(
        store,
        src,
        branch=branch,
        model=model or record.default_model or src.resolve().name,
        parents=record.parents,
        relation=record.relation,
        message=message if message is not None else f"import adapter {src.name}",
        metadata=record.metadata,
        base=base.id,
        progress=progress,
    )


def export_peft_folder(
    store: Store,
    rev: str,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Write an adapter snapshot as a PEFT folder that ``PeftModel.from_pretrained(base_model, path)`` loads.

    The folder holds ``adapter_model.safetensors`` and ``adapter_config.json`` (and any other file that was
    attached, such as PEFT's ``README.md``). An imported folder comes back byte-identical; an adapter saved with
    ``save_adapter`` is written as one safetensors file with ``{"format": "pt"}`` metadata.

    Args:
        store: the store.
        rev: the adapter snapshot.
        path: the folder to write; created if missing.
        force: write into a non-empty folder, replacing files of the same names.
        progress: called with byte counts as tensor bytes are written.

    Returns:
        The files written.

    Raises:
        RecordError: the snapshot is not an adapter; the folder is not empty (without ``force``).
        MissingObjectError: the snapshot was pruned.
        CorruptChunkError: a chunk does not match its digest.

    Example:
        >>> export_peft_folder(store, "chat-lora", "out/chat-lora")  # doctest: +SKIP
        >>> PeftModel.from_pretrained(chat_model, "out/chat-lora")  # doctest: +SKIP
    """
    snap = store.resolve(rev)
    base_of(snap)
    if snap.pruned:
        raise MissingObjectError(
            f"snapshot {snap.short_id} was pruned: its tensors were released", hint="export another snapshot"
        )
    return list(
        write_peft_folder(store, snap, local_path(path, "the output folder"), force=force, progress=progress).written
    )


def write_peft_folder(
    store: Store,
    snap: Snapshot,
    dest: Path,
    *,
    force: bool,
    progress: Progress | None,
    weights_name: str | None = None,
    default_files: Mapping[str, bytes] | None = None,
) -> ExportResult:
    """Write an adapter snapshot as a PEFT folder (see ``export_peft_folder``; ``ckpt.export`` picks this layout).

    The weights go to one ``adapter_model.safetensors`` (or ``weights_name``); ``adapter_config.json`` is
    written from the recorded config when the snapshot has no such file attached.

    Raises:
        RecordError: the folder is not empty (without ``force``); the snapshot has no adapter config.
        CorruptChunkError: a chunk does not match its digest.
    """
    defaults = dict(default_files or {})
    if ADAPTER_CONFIG_FILE not in defaults and ADAPTER_CONFIG_FILE not in store.files(snap.id):
        defaults[ADAPTER_CONFIG_FILE] = config_bytes(adapter_config(store, snap.id))
    return write_folder(
        store,
        snap,
        dest,
        limit=_ONE_FILE,
        weights_name=weights_name or ADAPTER_WEIGHTS_FILE,
        default_files=defaults,
        force=force,
        progress=progress,
    )
