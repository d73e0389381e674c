"""diffusers LoRA files in and out of a store: ``pytorch_lora_weights.safetensors`` as an adapter snapshot.

``import_diffusers_lora`` reads a LoRA file that ``save_lora_weights`` wrote (memory-mapped, no torch) and saves
it over its pipeline snapshot with ``ckpt.lineage.save_diffusers_lora``, the file's exact header attached, so
that ``export_diffusers_lora`` (also ``ckpt.export``) writes the same file back byte for byte: the folder
``pipe.load_lora_weights`` loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt.errors import RecordError, UnsupportedStateError
from ckpt.interop._folder_writer import FolderWriter
from ckpt.interop._folders import check_relative_path, open_file, read_file
from ckpt.interop._hf_export import ExportResult
from ckpt.interop._hf_import import MAX_SIDE_FILE_SIZE, plan_import
from ckpt.interop._model_card import CARD_FILE, card_for_export, card_parents
from ckpt.interop._safetensors import build_header, open_mapped, parse_header, read_header, write_file
from ckpt.interop._state_doc import HEADER_PREFIX
from ckpt.lineage import (
    DIFFUSERS_LORA_KEY,
    LORA_METADATA_KEY,
    LORA_WEIGHTS_FILE,
    component_paths,
    is_diffusers_lora,
    lora_file_metadata,
    save_diffusers_lora,
)
from ckpt.model import RESERVED_FILE_PREFIX, Snapshot

if TYPE_CHECKING:
    from ckpt.store import Progress, Store

__all__ = ["card_base", "export_diffusers_lora", "import_diffusers_lora", "is_diffusers_lora_folder"]

_FORMAT = {"format": "pt"}


def is_diffusers_lora_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a diffusers LoRA: a ``.safetensors`` file (or a folder with one, and no
    ``adapter_config.json``) whose tensor names all carry a component prefix and ``lora`` (``unet.….lora_A.weight``),
    or a Kohya/A1111 LoRA (``lora_unet_…``), which ``import_diffusers_lora`` refuses by name.

    Reads the file names and one safetensors header; never raises for a folder that is something else.
    """
    try:
        found = plan_import(path)
    except (RecordError, UnsupportedStateError):
        return False
    if any(f.path == "adapter_config.json" for f in found.files) or (
        len(found.weights) != 1 and not any(w.path == LORA_WEIGHTS_FILE for w in found.weights)
    ):
        return False
    weights = next((w for w in found.weights if w.path == LORA_WEIGHTS_FILE), found.weights[0])
    if "/" in weights.path:
        return False
    try:
        _, header = read_header(weights.source)
    except (RecordError, UnsupportedStateError):
        return False
    names = [n for n in header if n != "__metadata__"]
    return bool(names) and all("lora" in n and "." in n.strip(".") for n in names)


def import_diffusers_lora(
    store: Store,
    path: str | os.PathLike[str],
    base_rev: str | None,
    *,
    branch: str,
    model: str | None = None,
    message: str | None = None,
    progress: Progress | None = None,
) -> Snapshot:
    """Import a LoRA file ``save_lora_weights`` wrote (or its folder) as an adapter snapshot over a pipeline.

    The tensors are read from the memory-mapped file (no torch); the file's exact header is attached, so
    ``export_diffusers_lora`` writes the same file back byte for byte. The other files of the folder (a model card
    ``README.md``, sample images …) are attached as they are.

    Args:
        store: the store.
        path: ``pytorch_lora_weights.safetensors`` (or any ``.safetensors`` LoRA file), or the folder holding it
            (one ``.safetensors`` file, or ``pytorch_lora_weights.safetensors`` among several, which is the one
            ``load_lora_weights`` picks).
        base_rev: the pipeline snapshot; ``None``: the one the folder's ``README.md`` names (``base_model``, found
            in the store by tag or model name; see ``card_base``).
        branch: as ``ckpt.lineage.save_diffusers_lora``.
        model: the adapter's name; default: the folder's name.
        message: a note; default ``import <name>``.
        progress: called with byte counts as chunks are written.

    Raises:
        RecordError: no LoRA file, several without ``pytorch_lora_weights.safetensors``, a malformed file;
            no ``base_rev`` and no card naming a base pipeline in the store.
        StateMismatchError, UnsupportedStateError: as ``ckpt.lineage.save_diffusers_lora``.
    """
    found = plan_import(path)
    src = Path(os.fspath(path))
    if base_rev is None:
        base_rev = card_base(store, path)
        if base_rev is None:
            raise RecordError(
                f"{src}: which pipeline is this LoRA for? Its README.md names no base_model that is in the store",
                hint="pass the base pipeline's revision (--base REV)",
            )
    weights = list(found.weights)
    if len(weights) > 1:
        chosen = [w for w in weights if w.path == LORA_WEIGHTS_FILE]
        if not chosen:
            raise RecordError(
                f"{src} holds {len(weights)} .safetensors files ({', '.join(w.path for w in weights[:4])}); "
                f"which one is the LoRA?",
                hint="import the LoRA file itself",
            )
        weights = chosen
    lora_file = weights[0]
    if "/" in lora_file.path:
        raise RecordError(f"{src}: the LoRA file {lora_file.path} is in a subfolder", hint="import the file itself")
    with open_file(lora_file) as handle:
        header_bytes, sources = open_mapped(handle, what=str(src / lora_file.path) if src.is_dir() else str(src))
    header, _ = parse_header(header_bytes)
    file_metadata = lora_file_metadata(header)
    files = {f.path: read_file(f, limit=MAX_SIDE_FILE_SIZE) for f in found.files}
    reserved = [p for p in files if p.startswith(RESERVED_FILE_PREFIX)]
    if reserved:
        raise RecordError(f"{src}: files under {RESERVED_FILE_PREFIX} are ckpt's own bookkeeping ({reserved[0]})")
    files[f"{HEADER_PREFIX}{lora_file.path}.header"] = header_bytes
    name = src.name if src.is_dir() else (src.parent.name if src.name == LORA_WEIGHTS_FILE else src.stem)
    return save_diffusers_lora(
        store,
        base_rev,
        sources,
        branch=branch,
        model=model or name or None,
        message=message if message is not None else f"import {src.name}",
        files=files,
        progress=progress,
        _file_metadata=file_metadata,
        _file_name=lora_file.path,
    )


def card_base(store: Store, path: str | os.PathLike[str]) -> str | None:
    """The pipeline a LoRA folder's model card names (``base_model``), if it is in the store: its snapshot id.

    ``None`` when ``path`` is not a folder, has no ``README.md``, or its card names no base that is here (see
    ``find_model``), or names it with another relation than ``adapter``.

    Raises:
        RecordError: the card cannot be read (``read_card``).
        AmbiguousRevisionError: the base's name is the model of several branch heads.
    """
    card = next((f for f in plan_import(path).files if f.path == CARD_FILE), None)
    if card is None or not Path(os.fspath(path)).is_dir():
        return None
    found = card_parents(store, read_file(card, limit=MAX_SIDE_FILE_SIZE), adapter=True)
    return found[2] if found is not None and found[1] == "adapter" else None


def export_diffusers_lora(
    store: Store,
    rev: str,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Write a diffusers LoRA snapshot as the folder ``load_lora_weights`` loads: ``pytorch_lora_weights.safetensors``.

    An imported file comes back byte-identical (its header verbatim). Otherwise the file holds every tensor as
    ``<component>.<name>``, with ``{"format": "pt"}`` and each component's config under
    ``lora_adapter_metadata`` (as ``save_lora_weights(..., unet_lora_adapter_metadata=...)`` writes it), so that
    diffusers loads it with the scale it was saved with, and a ``README.md`` whose front matter names its base
    pipeline (``base_model_relation: adapter``). Attached files (a model card …) come along. The folder
    is written beside ``path`` and renamed into place (see ``ckpt.interop.FolderWriter``).

    Args:
        store: the store.
        rev: the LoRA snapshot.
        path: the folder to write.
        force: write into a non-empty folder (an earlier LoRA file there is replaced).
        progress: called with byte counts as tensor bytes are written.

    Returns:
        The folder, the files written, the files removed.

    Raises:
        RecordError: not a diffusers LoRA snapshot; the folder is not empty (without ``force``).
        MissingObjectError, CorruptChunkError: a chunk is missing or damaged (the folder is left as it was).
    """
    snap = store.resolve(rev)
    if not is_diffusers_lora(snap):
        raise RecordError(f"snapshot {snap.short_id} is not a diffusers LoRA", hint="export it with ckpt restore")
    recorded = snap.metadata[DIFFUSERS_LORA_KEY]
    assert isinstance(recorded, dict)
    name = recorded.get("file")
    name = name if isinstance(name, str) and name.endswith(".safetensors") and "/" not in name else LORA_WEIGHTS_FILE
    check_relative_path(name)
    table = store.table(snap.id)
    paths = {f"{c}.{n}": p for c, names in component_paths(table).items() for n, p in names.items()}
    attached = store.files(snap.id)
    if name in attached:  # the attached bytes would be left out of the folder without a word
        raise RecordError(
            f"snapshot {snap.id[:12]} has an attached file named {name!r}, the LoRA file the export writes from "
            "its tensors; exporting would leave the attached bytes out",
            hint="read it with store.files(rev), or save the snapshot again with the file under another name",
        )
    header = attached.get(f"{HEADER_PREFIX}{name}.header")
    infos = None
    if header is not None:
        try:
            _, infos = parse_header(header)
        except RecordError:
            infos = None
        if infos is not None and (
            {i.name for i in infos} != set(paths)
            or any(
                (table.tensors[paths[i.name]].dtype, table.tensors[paths[i.name]].shape) != (i.dtype, i.shape)
                for i in infos
            )
        ):
            infos = None
    if infos is None or header is None:
        configs = recorded.get("configs")
        packed = {
            f"{c}.{k}": v
            for c, cfg in (configs.items() if isinstance(configs, dict) else ())
            if isinstance(cfg, dict)
            for k, v in cfg.items()
        }
        meta = {**_FORMAT, LORA_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}
        header, infos = build_header(
            [(n, table.tensors[p].dtype, table.tensors[p].shape) for n, p in paths.items()], meta
        )
    others = {k: v for k, v in attached.items() if not k.startswith(RESERVED_FILE_PREFIX) and k != name}
    if f"{HEADER_PREFIX}{name}.header" not in attached:  # saved, not imported: its card names its base pipeline
        card = card_for_export(store, snap, others.get(CARD_FILE), library_name="diffusers")
        if card is not None:
            others[CARD_FILE] = card
    dest = Path(os.fspath(path))

    def owns(rel: str, found: Path) -> bool:
        return rel == name or ("/" not in rel and rel.endswith(".safetensors"))

    lazy = store.tensors(snap.id)  # one table read; a pack (format 3.0) read once for its tensors

    def pieces(tensor_path: str) -> Any:
        for piece in lazy.byte_pieces(tensor_path):
            if progress:
                progress(len(piece))
            yield piece

    planned = [name, *others]
    with FolderWriter(dest, planned, force=force, owns=owns) as writer:
        items = [(i.name, i.dtype, i.shape, pieces(paths[i.name])) for i in infos]
        write_file(writer.target(name), items, header_bytes=header, infos=infos)
        for rel, data in others.items():
            with open(writer.target(rel), "xb") as f:
                f.write(data)
        writer.commit()
    return ExportResult(
        path=dest, written=tuple(dest / p for p in planned), removed=tuple(dest / r for r in writer.removed)
    )
