"""Hugging Face folders into a store: safetensors files (sharded or not) and every other file.

``import_folder`` saves a ``.safetensors`` file, or a folder tree as ``save_pretrained`` (transformers,
sentence-transformers, diffusers, PEFT) or a hub download leaves it, as one snapshot:

- the state maps each folder holding ``.safetensors`` files to its tensors: ``{"model": {name: tensor}}`` for
  the files at the top (one ``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` shards with their
  index, or a PEFT ``adapter_model.safetensors``), and ``{"<folder>": {name: tensor}}`` for those in a
  subfolder (``"2_Dense"``, ``"unet"`` …); the tensors are read from memory-mapped files straight into chunks
  (no torch, no copy), so equal tensors anywhere in the tree are stored once;
- every other regular file of the tree, in subfolders and hidden ones included (``config.json``,
  ``1_Pooling/config.json``, ``.gitattributes``, tokenizer files …), is attached to the snapshot byte for byte;
  ``.git/`` folders and ckpt stores inside the folder are left out (see ``_folders.scan_folder`` for the
  rules on symbolic links, which are followed only inside the folder);
- so that the files can be written again byte for byte, each safetensors file's exact header is attached as
  ``.ckpt/safetensors/<path>.header``, and the snapshot's metadata holds ``"safetensors_layout"``: the list of
  the imported files' paths (kept short, since ``ckpt log`` reads every record);
- a diffusers pipeline's ``model_index.json`` is read as JSON (never imported or run) and its class and
  components recorded as ``"diffusers_pipeline"``; a model card's front matter (``README.md``, read with
  PyYAML's ``safe_load``) gives a new line its parents when the bases it names are in the store.

A folder that ``ckpt.export`` wrote from a training snapshot (with its ``state.json``, see ``_state_doc``) is
recognised and imported back as the same state tree with the same record fields (model, step, epoch, metrics,
message, metadata). ``ckpt.export`` writes any snapshot back as ordinary files (``_hf_export``); an imported
snapshot gives back its original files, byte-identical.

Pickle-based weight files (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``, ``.pickle``) are refused, or left
out with ``skip_pickles=True``: loading one can run arbitrary code, and ckpt never does that. Nothing here
imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import JsonValue

from ckpt.errors import CkptError, RecordError, UnsupportedStateError
from ckpt.interop._diffusers import MODEL_INDEX, PIPELINE_KEY, pipeline_record
from ckpt.interop._folders import FolderFile, local_path, open_file, os_error, read_file, scan_folder
from ckpt.interop._model_card import CARD_FILE, card_parents
from ckpt.interop._safetensors import open_mapped
from ckpt.interop._shards import WEIGHTS_SUFFIX, check_index
from ckpt.interop._state_doc import HEADER_PREFIX, LAYOUT_KEY, STATE_JSON, ExportDoc, read_export_doc
from ckpt.lineage import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    MERGED_TYPES,
    adapter_record,
    peft_type,
    read_config,
)
from ckpt.model import RESERVED_FILE_PREFIX, SAFETENSORS_INDEX_SUFFIX, Relation, Snapshot
from ckpt.state import TensorSource, from_typed_float, model_tensors, tensor_paths, unflatten

if TYPE_CHECKING:
    from ckpt.store import Progress, Store

__all__ = ["MAX_SIDE_FILE_SIZE", "PICKLE_SUFFIXES", "ImportPlan", "import_folder", "plan_import"]

#: Files other than weights bigger than this are refused by ``import_folder`` (they are not small files).
MAX_SIDE_FILE_SIZE = 100_000_000
#: Weight files that are Python pickles: loading them can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# -- import ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportPlan:
    """What ``import_folder`` will read from a folder, found without reading any file's content.

    Attributes:
        path: the file or folder given.
        weights: the ``.safetensors`` files, by relative path.
        files: every other file, to be attached (or, for a ckpt export, read back as state).
        skipped: ``(relative path, reason)`` of what is left out: ``.git/``, stores, excluded paths and,
            with ``skip_pickles``, pickle files.
    """

    path: Path
    weights: tuple[FolderFile, ...]
    files: tuple[FolderFile, ...]
    skipped: tuple[tuple[str, str], ...]

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weight files, as listed (for a progress bar)."""
        return sum(f.size for f in self.weights)


def _is_pickle(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def plan_import(path: str | os.PathLike[str], *, skip_pickles: bool = False, exclude: Sequence[str] = ()) -> ImportPlan:
    """List what ``import_folder`` would import from ``path``, and what it would leave out.

    Args:
        path: a ``.safetensors`` file, or a folder.
        skip_pickles: leave pickle-based files out (listed in ``skipped``) instead of refusing the folder.
        exclude: glob patterns of relative paths to leave out (``"onnx/*"``, ``"*.h5"``, ``"runs/"``).

    Returns:
        The plan: weight files, other files, skipped paths.

    Raises:
        RecordError: no such path; not a ``.safetensors`` file; no ``.safetensors`` file in the folder; a link
            leaving the folder or dangling; a file that is not regular (see ``_folders.scan_folder``).
        UnsupportedStateError: a pickle-based file, without ``skip_pickles``.

    Example:
        >>> plan = plan_import("hub-model/", skip_pickles=True)  # doctest: +SKIP
        >>> plan.skipped  # doctest: +SKIP
        (('pytorch_model.bin', 'a pickle: never loaded (it can run code)'),)
    """
    src = local_path(path, "the folder or file to import")
    try:
        missing, is_dir = not src.exists() and not src.is_symlink(), src.is_dir()
    except OSError as e:
        raise os_error(e, f"looking at {src}") from e
    if missing:
        raise RecordError(f"no such file or folder: {src}", hint="check the path")
    if not is_dir:
        _refuse_pickles([src.name] if _is_pickle(src.name) else [])
        if not src.name.endswith(WEIGHTS_SUFFIX):
            raise RecordError(f"{src} is not a .safetensors file", hint="import a .safetensors file or a folder")
        real = Path(os.path.realpath(src))
        if not os.path.isfile(real):
            raise RecordError(
                f"{src} is a symbolic link to {real}, which does not exist", hint="download the file again"
            )
        lone = FolderFile(src.name, real.parent, real.name, os.path.getsize(real))
        return ImportPlan(src, (lone,), (), ())
    scan = scan_folder(src, exclude=exclude)
    pickles = [f.path for f in scan.files if _is_pickle(f.path)]
    if pickles and not skip_pickles:
        _refuse_pickles(pickles)
    kept = [f for f in scan.files if not _is_pickle(f.path)]
    skipped = sorted([*scan.skipped, *((p, _PICKLE_SKIPPED) for p in pickles)])
    weights = tuple(f for f in kept if f.path.endswith(WEIGHTS_SUFFIX))
    if not weights:
        raise RecordError(
            f"{src} holds no .safetensors file"
            + (
                f" once {_files(len(pickles), 'pickle')} {'is' if len(pickles) == 1 else 'are'} left out"
                if pickles
                else ""
            ),
            hint="import a folder written by save_pretrained(safe_serialization=True), or a .safetensors file",
        )
    return ImportPlan(src, weights, tuple(f for f in kept if not f.path.endswith(WEIGHTS_SUFFIX)), tuple(skipped))


def import_folder(
    store: Store,
    path: str | os.PathLike[str],
    *,
    branch: str = "main",
    model: str | None = None,
    parents: Sequence[str] | None = None,
    relation: Relation | None = None,
    message: str | None = None,
    metadata: Mapping[str, JsonValue] | None = None,
    base: str | None = None,
    progress: Progress | None = None,
    skip_pickles: bool = False,
    exclude: Sequence[str] = (),
) -> Snapshot:
    """Save a safetensors file, or a folder tree of them and their other files, as a new snapshot.

    Every regular file of the tree is read (subfolders and hidden files included; ``.git/`` and ckpt stores
    left out); symbolic links are followed only inside the folder. Tensors are read from memory-mapped files,
    so importing needs no torch and no memory for a copy.

    Args:
        store: the store to save into.
        path: a ``.safetensors`` file, or a folder with one or more of them and other files.
        branch: the branch to advance (created if it does not exist).
        model: the model's name; default: the basename of ``_name_or_path`` in ``config.json``, else the
            repository of a hub-cache snapshot, else the folder's name (for a lone file: its name without
            suffix, or its folder's name for a generic ``model.safetensors``).
        parents: revisions of the parents; default: the branch's head, if any (as ``Store.save``); on a new
            branch, the bases a ``README.md`` model card names (``base_model``) when they are in the store, found
            by tag or model name (``org/name`` or ``name``), with ``base_model_relation`` as the relation (what
            the Hub infers when absent: ``adapter``, ``merge`` for several bases, else ``finetune``). An
            ``adapter`` card is recorded for a PEFT folder, checked against its base as ``import_peft_folder``
            checks it (a diffusers LoRA file goes through ``import_diffusers_lora``).
        relation: relation to the first parent; default: ``continue`` with a parent, ``import`` without.
        message: a note; default ``import <folder name>`` (for a ckpt export: the exported snapshot's message).
        metadata: your own JSON metadata; the key ``"safetensors_layout"`` is ckpt's.
        base: for an adapter, the revision of the snapshot it modifies (as ``Store.save``).
        progress: called with byte counts as chunks are written.
        skip_pickles: leave pickle-based files (``pytorch_model.bin``, ``training_args.bin`` …) out instead of
            refusing the folder; ``plan_import`` lists them.
        exclude: glob patterns of relative paths to leave out (``"onnx/*"``, ``"*.h5"``).

    Returns:
        The new snapshot: state ``{"model": {name: tensor}, "<subfolder>": {…}}``, other files attached,
        layout recorded. For a folder ``ckpt.export`` wrote with a ``state.json``: the exported state tree
        and record fields.

    Raises:
        UnsupportedStateError: a pickle-based file is present (the hint says how to convert it, or to pass
            ``skip_pickles``), or a tensor has a dtype ckpt does not store.
        RecordError: no such path; no ``.safetensors`` file; a malformed safetensors file (a Git LFS pointer is
            named as one); another file over 100 MB; a tensor name in two files of one folder; an index that
            names missing files or tensors; a symbolic link leaving the folder, or dangling; a ckpt
            ``state.json`` that does not match the weights.
        BackendError: a file cannot be read (permission …).
        RevisionError: a parent or the base does not resolve.
        RefConflictError: the branch moved while saving (the snapshot is stored and in the reflog).

    Example:
        >>> snap = import_folder(store, "tiny-llama/", branch="main", model="tiny-llama")  # doctest: +SKIP
    """
    plan = plan_import(path, skip_pickles=skip_pickles, exclude=exclude)
    src = plan.path
    where = {f.path: str(src / f.path) if src.is_dir() else str(src) for f in (*plan.weights, *plan.files)}

    export_doc = None
    state_json = next((f for f in plan.files if f.path == STATE_JSON), None)
    if state_json is not None:
        export_doc = read_export_doc(read_file(state_json, limit=MAX_SIDE_FILE_SIZE), where[STATE_JSON])

    reserved = RESERVED_FILE_PREFIX.rstrip("/")
    for f in (*plan.files, *plan.weights):
        if f.path.startswith(RESERVED_FILE_PREFIX):
            raise RecordError(
                f"{where[f.path]}: files under {RESERVED_FILE_PREFIX} are ckpt's own bookkeeping",
                hint=f"rename the folder {reserved}, or leave it out with exclude=['PATTERN']",
                cli_hint=f"rename the folder {reserved}, or leave it out with --exclude PATTERN",
            )
    files: dict[str, bytes] = {}
    for f in plan.files:
        if f.path != STATE_JSON or export_doc is None:
            files[f.path] = read_file(f, limit=MAX_SIDE_FILE_SIZE)

    opened: dict[str, tuple[bytes, dict[str, TensorSource]]] = {}
    for f in plan.weights:
        with open_file(f) as handle:
            opened[f.path] = open_mapped(handle, what=where[f.path])

    meta: dict[str, JsonValue] = dict(metadata or {})
    for key in (LAYOUT_KEY, PIPELINE_KEY):
        if key in meta:
            raise RecordError(
                f"metadata key {key!r} is reserved for ckpt's record of the imported files",
                hint="name your key differently",
            )
    if export_doc is not None:
        return _import_export(
            store,
            plan,
            export_doc,
            opened,
            files,
            branch=branch,
            model=model,
            parents=parents,
            relation=relation,
            message=message,
            metadata=metadata,
            base=base,
            progress=progress,
        )

    groups: dict[str, dict[str, TensorSource]] = {}
    found_in: dict[tuple[str, str], str] = {}
    layout: list[JsonValue] = []
    for rel, (header_bytes, sources) in opened.items():
        folder = rel.rpartition("/")[0]
        key = folder or "model"
        if folder == "model" and any("/" not in w.path for w in plan.weights):
            raise RecordError(
                f"{src} has weights at its top and in a subfolder named 'model'; both would be the state's 'model'",
                hint="import them separately, or leave one out with exclude=['PATTERN']",
                cli_hint="import them separately, or leave one out with --exclude PATTERN",
            )
        group = groups.setdefault(key, {})
        for name, source in sources.items():
            if name in group:
                raise RecordError(
                    f"tensor {name!r} is in both {found_in[key, name]} and {where[rel]}",
                    hint="a folder holds one model; import variants (e.g. *.fp16.safetensors) from separate folders "
                    "or leave them out with exclude=['*.fp16.safetensors']",
                    cli_hint="a folder holds one model; import variants (e.g. *.fp16.safetensors) from separate "
                    "folders or leave them out with --exclude '*.fp16.safetensors'",
                )
            group[name] = source
            found_in[key, name] = where[rel]
        layout.append(rel)
        files[f"{HEADER_PREFIX}{rel}.header"] = header_bytes
    for rel, data in files.items():
        if rel.endswith(SAFETENSORS_INDEX_SUFFIX) and not rel.startswith(RESERVED_FILE_PREFIX):
            folder = rel.rpartition("/")[0]
            in_folder = {
                w: r.rpartition("/")[2] for r in opened if r.rpartition("/")[0] == folder for w in opened[r][1]
            }
            check_index(where.get(rel, rel), data, in_folder)

    meta[LAYOUT_KEY] = layout
    if MODEL_INDEX in files:  # a diffusers pipeline: its class and components, from model_index.json (JSON only)
        meta[PIPELINE_KEY] = pipeline_record(files[MODEL_INDEX], what=where.get(MODEL_INDEX, MODEL_INDEX))
    if parents is None and relation is None and base is None and CARD_FILE in files and branch not in store.branches():
        found = card_parents(store, files[CARD_FILE], adapter="adapter_config.json" in files, what=where[CARD_FILE])
        if found is not None and found[1] == "adapter":  # checked against its base as import_peft_folder checks
            found = _card_adapter(store, found[2], files, opened, branch=branch, meta=meta, what=str(src))
        if found is not None:  # a new line whose model card names bases that are in the store
            parents, relation, base = found[0], found[1], found[2]
    state = {k: groups[k] for k in sorted(groups, key=lambda k: (k != "model", k))}
    return store.save(
        state,
        branch,
        parents=parents,
        relation=relation,
        model=model or _name_from_config(files.get("config.json")) or _default_name(src),
        message=message if message is not None else f"import {src.name}",
        metadata=meta,
        files=files,
        base=base,
        progress=progress,
    )


def _card_adapter(
    store: Store,
    base_id: str | None,
    files: Mapping[str, bytes],
    opened: Mapping[str, tuple[bytes, Mapping[str, TensorSource]]],
    *,
    branch: str,
    meta: dict[str, JsonValue],
    what: str,
) -> tuple[list[str], Relation, str | None] | None:
    """A PEFT folder whose card names its base: checked against the base (``adapter_record``), its config recorded
    in ``meta``. ``None`` for a folder that is not a PEFT folder (the card's relation is then not recorded)."""
    data = files.get(ADAPTER_CONFIG_FILE)
    if data is None or base_id is None:
        return None
    cfg = read_config(data, f"{what}/{ADAPTER_CONFIG_FILE}")
    weights = opened.get(ADAPTER_WEIGHTS_FILE)
    shapes = None
    if weights is not None and peft_type(cfg) in MERGED_TYPES:
        shapes = {name: tuple(int(d) for d in source.shape) for name, source in weights[1].items()}
    record = adapter_record(store, store.get(base_id), cfg, branch=branch, metadata=meta, shapes=shapes, adapter=what)
    meta.update(record.metadata)
    return list(record.parents), record.relation, base_id


def _default_name(src: Path) -> str:
    real = Path(os.path.realpath(src))
    if not real.is_dir():
        generic = real.stem in ("model", "adapter_model") or real.stem.startswith("model-")
        return real.parent.name if generic else real.stem
    repo = real.parent.parent.name
    if real.parent.name == "snapshots" and repo.startswith(("models--", "datasets--", "spaces--")):
        return repo.split("--")[-1]  # a hub-cache snapshot: models--org--name/snapshots/<commit>
    return real.name


#: Why a pickle file was left out of an import (``ImportPlan.skipped``), in words for both Python and the CLI.
_PICKLE_SKIPPED = "a pickle: never loaded (it can run code)"


def _files(n: int, kind: str) -> str:
    """``the pickle file``, ``2 pickle files``."""
    return f"the {kind} file" if n == 1 else f"{n} {kind} files"


def _refuse_pickles(paths: Sequence[str]) -> None:
    if not paths:
        return
    names = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
    raise UnsupportedStateError(
        f"refusing {_files(len(paths), 'pickle-based')} {names}: loading a pickle can run arbitrary code, and ckpt "
        "never loads one",
        hint=(
            "if the folder has the same weights as .safetensors too (common in hub downloads), leave the pickles "
            "out with skip_pickles=True; otherwise convert them to safetensors in an environment you trust: load "
            "with torch.load(path, weights_only=True) and save with safetensors.torch.save_file(state_dict, "
            "'model.safetensors')"
        ),
        cli_hint=(
            "if the folder has the same weights as .safetensors too (common in hub downloads), leave the pickles "
            "out with `ckpt import --skip-pickles`; otherwise convert them to safetensors in an environment you "
            "trust: load with torch.load(path, weights_only=True) and save with "
            "safetensors.torch.save_file(state_dict, 'model.safetensors')"
        ),
    )


def _name_from_config(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        config = json.loads(data)
    except (ValueError, RecursionError):
        return None
    value = config.get("_name_or_path") if isinstance(config, dict) else None
    if not isinstance(value, str):
        return None
    return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or None


# -- ckpt's own exports, read back -------------------------------------------------------------------


def _import_export(
    store: Store,
    plan: ImportPlan,
    doc: ExportDoc,
    opened: Mapping[str, tuple[bytes, dict[str, TensorSource]]],
    files: dict[str, bytes],
    *,
    branch: str,
    model: str | None,
    parents: Sequence[str] | None,
    relation: Relation | None,
    message: str | None,
    metadata: Mapping[str, JsonValue] | None,
    base: str | None,
    progress: Progress | None,
) -> Snapshot:
    """Import a folder ``ckpt.export`` wrote with a ``state.json``: the same state tree and record fields."""
    src = plan.path
    hint = "restore the snapshot again, or move state.json out of the folder to import the weights alone"
    model_paths = model_tensors(doc.tree)
    by_path = {p: name for name, p in model_paths.items()}
    sources: dict[str, TensorSource] = {}
    for rel in [*doc.weights, *([doc.state_file] if doc.state_file else [])]:
        if rel not in opened:
            raise RecordError(f"{src / STATE_JSON} names {rel}, which is not in the folder", hint=hint)
    for rel in doc.weights:
        for name, source in opened[rel][1].items():
            if name not in model_paths or model_paths[name] in sources:
                raise RecordError(f"{src / rel} holds {name!r}, which {STATE_JSON} does not put there", hint=hint)
            sources[model_paths[name]] = source
    if doc.state_file:
        for name, source in opened[doc.state_file][1].items():
            if name in by_path or name in sources:
                raise RecordError(f"{src / doc.state_file} holds {name!r} twice or in the wrong file", hint=hint)
            sources[name] = source
    wanted = tensor_paths(doc.tree)
    missing = sorted(set(wanted) - set(sources))
    if missing or len(wanted) != len(sources):
        raise RecordError(
            f"{src / STATE_JSON} names tensors the folder's files do not hold: {missing[:5]}"
            if missing
            else f"the folder's weight files hold tensors {src / STATE_JSON} does not name",
            hint=hint,
        )
    for p in doc.numpy:
        if p in sources:
            s = sources[p]
            sources[p] = TensorSource(s.dtype, s.shape, "numpy", s.data, owner=s.owner)
    try:
        state = unflatten(doc.tree, sources.__getitem__)
    except (CkptError, KeyError) as e:
        raise RecordError(f"{src / STATE_JSON} holds an invalid state tree: {e}", hint=hint) from e
    if doc.index is not None:
        data = files.pop(doc.index, None)
        if data is None:
            raise RecordError(f"{src / STATE_JSON} names {doc.index}, which is not in the folder", hint=hint)
        check_index(str(src / doc.index), data, {n: rel for rel in doc.weights for n in opened[rel][1]})
    for rel in opened:  # other .safetensors files were attached files of the snapshot
        if rel not in doc.weights and rel != doc.state_file:
            files[rel] = read_file(next(f for f in plan.weights if f.path == rel), limit=MAX_SIDE_FILE_SIZE)

    rec = doc.record
    meta = rec.get("metadata")
    kept_meta = {k: v for k, v in meta.items() if k != LAYOUT_KEY} if isinstance(meta, dict) else {}
    metrics = rec.get("metrics")
    try:
        return store.save(
            state,
            branch,
            parents=parents,
            relation=relation,
            model=model or (rec.get("model") if isinstance(rec.get("model"), str) else None) or _default_name(src),
            step=rec.get("step"),
            epoch=rec.get("epoch"),
            metrics={k: from_typed_float(v) for k, v in metrics.items()} if isinstance(metrics, dict) else None,
            message=message if message is not None else (rec.get("message") or f"import {src.name}"),
            metadata=dict(metadata) if metadata is not None else kept_meta,
            files=files,
            base=base,
            progress=progress,
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, CkptError):
            raise
        raise RecordError(f"{src / STATE_JSON} holds an invalid snapshot record: {e}", hint=hint) from e
