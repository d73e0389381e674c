"""Hugging Face folders in and out of a store: safetensors files (sharded or not) and every other file.

``import_folder`` saves a ``.safetensors`` file, or a folder tree as ``save_pretrained`` (transformers,
sentence-transformers, diffusers, PEFT) or a hub download leaves it, as one snapshot:

- the state maps each folder holding ``.safetensors`` files to its tensors: ``{"model": {name: tensor}}`` for
  the files at the top (one ``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` shards with their
  index, or a PEFT ``adapter_model.safetensors``), and ``{"<folder>": {name: tensor}}`` for those in a
  subfolder (``"2_Dense"``, ``"unet"`` …); the tensors are read from memory-mapped files straight into chunks
  (no torch, no copy), so equal tensors anywhere in the tree are stored once;
- every other regular file of the tree, in subfolders and hidden ones included (``config.json``,
  ``1_Pooling/config.json``, ``.gitattributes``, tokenizer files …), is attached to the snapshot byte for byte;
  ``.git/`` folders and ckpt stores inside the folder are left out (see ``ckpt.folders.scan_folder`` for the
  rules on symbolic links, which are followed only inside the folder);
- so that the files can be written again byte for byte, each safetensors file's exact header is attached as
  ``.ckpt/safetensors/<path>.header``, and the snapshot's metadata holds ``"safetensors_layout"``: the list of
  the imported files' paths (kept short, since ``ckpt log`` reads every record).

A folder that ``export_folder`` wrote from a training snapshot (with its ``state.json``) is recognised and
imported back as the same state tree with the same record fields (model, step, epoch, metrics, message,
metadata).

``export_folder`` writes any snapshot back as ordinary files that ``transformers``, ``safetensors`` and other
tools load without ckpt; an imported snapshot gives back its original files, byte-identical. It owns its
output: the result is exactly its files plus whatever else the folder held, put in place in one rename.

Pickle-based weight files (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``, ``.pickle``) are refused, or left
out with ``skip_pickles=True``: loading one can run arbitrary code, and ckpt never does that. Nothing here
imports torch.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, JsonValue

from ckpt import settings
from ckpt.errors import CkptError, MissingObjectError, RecordError, UnsupportedStateError
from ckpt.folders import FolderFile, FolderWriter, check_relative_path, open_file, os_error, read_file, scan_folder
from ckpt.model import Relation, Snapshot, TensorEntry, TensorTable
from ckpt.safetensors_file import TensorInfo, build_header, open_mapped, parse_header, write_file
from ckpt.state import TensorSource, tensor_paths, unflatten

if TYPE_CHECKING:
    from ckpt.store import LazyTensors, Store

__all__ = [
    "EXPORT_FORMAT",
    "HEADER_PREFIX",
    "LAYOUT_KEY",
    "MAX_SIDE_FILE_SIZE",
    "PICKLE_SUFFIXES",
    "ExportResult",
    "ImportPlan",
    "export_folder",
    "import_folder",
    "plan_import",
]

#: Snapshot metadata key of the recorded file layout: the imported safetensors files' paths, in order.
LAYOUT_KEY = "safetensors_layout"
#: Attached-file prefix reserved for what ckpt needs to rebuild files; never exported.
RESERVED_PREFIX = ".ckpt/"
#: Where each imported file's exact header is attached: ``HEADER_PREFIX + path + ".header"``.
HEADER_PREFIX = ".ckpt/safetensors/"
#: Files other than weights bigger than this are refused by ``import_folder`` (they are not small files).
MAX_SIDE_FILE_SIZE = 100_000_000
#: Weight files that are Python pickles: loading them can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: The version of the ``state.json`` that ``export_folder`` writes (its ``"ckpt_export"`` field).
EXPORT_FORMAT = 1

_DEFAULT_SHARD_SIZE = "5GB"
_WEIGHTS = ".safetensors"
_INDEX_SUFFIX = ".safetensors.index.json"
_STATE_JSON = "state.json"
_STATE_TENSORS = "state.safetensors"
_EXPORT_KEY = "ckpt_export"
_FORMAT_METADATA = {"format": "pt"}
_PREFETCH_BYTES = 256 << 20  # tensor bytes read ahead of the writer, at most (one chunk at least)
_BATCH_BYTES = 4 << 20  # small chunks are read in batches up to this size (and 256 chunks)


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
            leaving the folder or dangling; a file that is not regular (see ``ckpt.folders.scan_folder``).
        UnsupportedStateError: a pickle-based file, without ``skip_pickles``.

    Example:
        >>> plan = plan_import("hub-model/", skip_pickles=True)  # doctest: +SKIP
        >>> plan.skipped  # doctest: +SKIP
        (('pytorch_model.bin', 'pickle (skip_pickles)'),)
    """
    src = Path(os.fspath(path))
    try:
        missing, is_dir = not src.exists() and not src.is_symlink(), src.is_dir()
    except OSError as e:
        raise os_error(e, f"looking at {src}") from e
    if missing:
        raise RecordError(f"no such file or folder: {src}", hint="check the path")
    if not is_dir:
        _refuse_pickles([src.name] if _is_pickle(src.name) else [])
        if not src.name.endswith(_WEIGHTS):
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
    skipped = sorted([*scan.skipped, *((p, "pickle (skip_pickles)") for p in pickles)])
    weights = tuple(f for f in kept if f.path.endswith(_WEIGHTS))
    if not weights:
        raise RecordError(
            f"{src} holds no .safetensors file"
            + (f" once {len(pickles)} pickle file(s) are skipped" if pickles else ""),
            hint="import a folder written by save_pretrained(safe_serialization=True), or a .safetensors file",
        )
    return ImportPlan(src, weights, tuple(f for f in kept if not f.path.endswith(_WEIGHTS)), tuple(skipped))


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
    progress: Callable[[int], None] | None = None,
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
        parents: revisions of the parents; default: the branch's head, if any (as ``Store.save``).
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
        layout recorded. For a folder ``export_folder`` wrote with a ``state.json``: the exported state tree
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
    state_json = next((f for f in plan.files if f.path == _STATE_JSON), None)
    if state_json is not None:
        export_doc = _read_export_doc(read_file(state_json, limit=MAX_SIDE_FILE_SIZE), where[_STATE_JSON])

    for f in (*plan.files, *plan.weights):
        if f.path.startswith(RESERVED_PREFIX):
            raise RecordError(
                f"{where[f.path]}: files under {RESERVED_PREFIX} are ckpt's own bookkeeping",
                hint=f"rename the folder {RESERVED_PREFIX.rstrip('/')}, or leave it out with exclude=['PATTERN']",
                cli_hint=f"rename the folder {RESERVED_PREFIX.rstrip('/')}, or leave it out with --exclude PATTERN",
            )
    files: dict[str, bytes] = {}
    for f in plan.files:
        if f.path != _STATE_JSON or export_doc is None:
            files[f.path] = read_file(f, limit=MAX_SIDE_FILE_SIZE)

    opened: dict[str, tuple[bytes, dict[str, TensorSource]]] = {}
    for f in plan.weights:
        with open_file(f) as handle:
            opened[f.path] = open_mapped(handle, what=where[f.path])

    meta: dict[str, JsonValue] = dict(metadata or {})
    if LAYOUT_KEY in meta:
        raise RecordError(
            f"metadata key {LAYOUT_KEY!r} is reserved for ckpt's record of the imported files",
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
        if rel.endswith(_INDEX_SUFFIX) and not rel.startswith(RESERVED_PREFIX):
            folder = rel.rpartition("/")[0]
            in_folder = {
                w: r.rpartition("/")[2] for r in opened if r.rpartition("/")[0] == folder for w in opened[r][1]
            }
            _check_index(where.get(rel, rel), data, in_folder)

    meta[LAYOUT_KEY] = layout
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


def _default_name(src: Path) -> str:
    real = Path(os.path.realpath(src))
    if not real.is_dir():
        generic = real.stem in ("model", "adapter_model") or real.stem.startswith("model-")
        return real.parent.name if generic else real.stem
    repo = real.parent.parent.name
    if real.parent.name == "snapshots" and repo.startswith(("models--", "datasets--", "spaces--")):
        return repo.split("--")[-1]  # a hub-cache snapshot: models--org--name/snapshots/<commit>
    return real.name


def _refuse_pickles(paths: Sequence[str]) -> None:
    if not paths:
        return
    names = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
    raise UnsupportedStateError(
        f"refusing pickle-based file(s) {names}: loading a pickle can run arbitrary code, and ckpt never loads one",
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


def _check_index(name: str, data: bytes, where: Mapping[str, str]) -> None:
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


@dataclass(frozen=True)
class _ExportDoc:
    record: dict[str, Any]
    weights: list[str]
    index: str | None
    state_file: str | None
    numpy: set[str]
    tree: Any


def _read_export_doc(data: bytes, what: str) -> _ExportDoc | None:
    """The content of a ``state.json`` that ``export_folder`` wrote, or ``None`` for any other ``state.json``."""
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
    return _ExportDoc(record, weights, index, state_file, set(numpy), doc["state"])


def _import_export(
    store: Store,
    plan: ImportPlan,
    doc: _ExportDoc,
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
    progress: Callable[[int], None] | None,
) -> Snapshot:
    """Import a folder ``export_folder`` wrote with a ``state.json``: the same state tree and record fields."""
    src = plan.path
    hint = "restore the snapshot again, or move state.json out of the folder to import the weights alone"
    model_paths, _ = _split_model(doc.tree)
    by_path = {p: name for name, p in model_paths.items()}
    sources: dict[str, TensorSource] = {}
    for rel in [*doc.weights, *([doc.state_file] if doc.state_file else [])]:
        if rel not in opened:
            raise RecordError(f"{src / _STATE_JSON} names {rel}, which is not in the folder", hint=hint)
    for rel in doc.weights:
        for name, source in opened[rel][1].items():
            if name not in model_paths or model_paths[name] in sources:
                raise RecordError(f"{src / rel} holds {name!r}, which {_STATE_JSON} does not put there", hint=hint)
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
            f"{src / _STATE_JSON} names tensors the folder's files do not hold: {missing[:5]}"
            if missing
            else f"the folder's weight files hold tensors {src / _STATE_JSON} does not name",
            hint=hint,
        )
    for p in doc.numpy:
        if p in sources:
            s = sources[p]
            sources[p] = TensorSource(s.dtype, s.shape, "numpy", s.data, owner=s.owner)
    try:
        state = unflatten(doc.tree, sources.__getitem__)
    except (CkptError, KeyError) as e:
        raise RecordError(f"{src / _STATE_JSON} holds an invalid state tree: {e}", hint=hint) from e
    if doc.index is not None:
        data = files.pop(doc.index, None)
        if data is None:
            raise RecordError(f"{src / _STATE_JSON} names {doc.index}, which is not in the folder", hint=hint)
        _check_index(str(src / doc.index), data, {n: rel for rel in doc.weights for n in opened[rel][1]})
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
            metrics={k: _number(v) for k, v in metrics.items()} if isinstance(metrics, dict) else None,
            message=message if message is not None else (rec.get("message") or f"import {src.name}"),
            metadata=dict(metadata) if metadata is not None else kept_meta,
            files=files,
            base=base,
            progress=progress,
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, CkptError):
            raise
        raise RecordError(f"{src / _STATE_JSON} holds an invalid snapshot record: {e}", hint=hint) from e


def _number(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$float"} and value["$float"] in ("nan", "inf", "-inf"):
        return float(value["$float"])
    return value


# -- export ------------------------------------------------------------------------------------------


class ExportResult(BaseModel):
    """What ``export_folder`` did.

    Attributes:
        path: the folder written.
        written: the files written, in the order written.
        removed: files the export owned and replaced: earlier weights (``*.safetensors``), their index, or
            ckpt's ``state.json`` that the new export does not write again, and files or links that stood
            where it needed a folder. Nothing else in the folder is touched.
    """

    model_config = ConfigDict(frozen=True)

    path: Path
    written: tuple[Path, ...]
    removed: tuple[Path, ...] = ()


@dataclass
class _Out:
    """One file to write: a safetensors file (header, tensors in data order, their table paths) or bytes."""

    rel: str
    header: bytes | None = None
    infos: tuple[TensorInfo, ...] = ()
    paths: Mapping[str, str] | None = None
    data: bytes | None = None


def export_folder(
    store: Store,
    rev: str,
    path: str | os.PathLike[str],
    *,
    shard_size: int | str | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    weights_name: str | None = None,
    default_files: Mapping[str, bytes] | None = None,
) -> ExportResult:
    """Write a snapshot as ordinary files: safetensors weights, attached files, and the rest of the state.

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
        >>> export_folder(store, "tiny-llama-2026-11-28", "out/tiny-llama").written  # doctest: +SKIP
        (PosixPath('out/tiny-llama/model.safetensors'), PosixPath('out/tiny-llama/config.json'))
    """
    dest = Path(os.fspath(path))
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
    lazy = store.tensors(snap.id)
    table = lazy.table
    attached = store.files(snap.id)
    defaults = dict(default_files or {})
    if snap.relation == "adapter" or snap.base is not None:  # a PEFT folder (also a continued adapter)
        from ckpt.adapters import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, adapter_config

        weights_name = weights_name or ADAPTER_WEIGHTS_FILE
        limit = 1 << 62
        if ADAPTER_CONFIG_FILE not in attached and ADAPTER_CONFIG_FILE not in defaults:
            config = adapter_config(store, snap.id)
            defaults[ADAPTER_CONFIG_FILE] = json.dumps(config, indent=2, sort_keys=True).encode("utf-8")
    weights_name = weights_name or "model.safetensors"
    if not (weights_name.endswith(_WEIGHTS) and check_relative_path(weights_name) and "/" not in weights_name):
        raise RecordError(
            f"weights_name must be a .safetensors file name, got {weights_name!r}", hint="e.g. model.safetensors"
        )

    outs = _recorded_plan(snap, table, attached)
    recorded = outs is not None
    state_doc: bytes | None = None
    if outs is None:
        outs, state_doc = _fresh_plan(snap, table, limit, weights_name)
    generated = {o.rel for o in outs} | ({_STATE_JSON} if state_doc is not None else set())
    for name, data in {**attached, **{k: v for k, v in defaults.items() if k not in attached}}.items():
        stale_index = not recorded and name.endswith(_INDEX_SUFFIX)
        if name.startswith(RESERVED_PREFIX) or name in generated or stale_index:
            continue  # a fresh layout makes any attached index stale
        outs.append(_Out(check_relative_path(name, what="attached file"), data=data))
    if state_doc is not None:
        outs.append(_Out(_STATE_JSON, data=state_doc))

    weight_dirs = {o.rel.rpartition("/")[0] for o in outs if o.header is not None}

    def owns(rel: str, found: Path) -> bool:
        folder, _, name = rel.rpartition("/")
        if folder in weight_dirs and (name.endswith(_WEIGHTS) or name.endswith(_INDEX_SUFFIX)):
            return True
        return rel == _STATE_JSON and _is_ckpt_state(found)

    jobs = [
        (p, i, n)
        for o in outs
        if o.paths
        for info in o.infos
        for p in [o.paths[info.name]]
        for i, n in _chunks(table, p)
    ]
    with FolderWriter(dest, [o.rel for o in outs], force=force, owns=owns) as writer:
        chunks = _prefetch(lazy, jobs)
        try:
            for o in outs:
                target = writer.target(o.rel)
                if o.data is not None:
                    _write_bytes(target, o.data, dest / o.rel)
                    continue
                assert o.header is not None and o.paths is not None
                items = []
                for info in o.infos:
                    count = len(_chunks(table, o.paths[info.name]))
                    items.append((info.name, info.dtype, info.shape, _counted(islice(chunks, count), progress)))
                write_file(target, items, header_bytes=o.header, infos=o.infos)
        finally:
            chunks.close()
        writer.commit()
    return ExportResult(
        path=dest, written=tuple(dest / o.rel for o in outs), removed=tuple(dest / r for r in writer.removed)
    )


def _chunks(table: TensorTable, tensor_path: str) -> list[tuple[int, int]]:
    """(index, size) of each piece a tensor's bytes are read in; index -1: the whole of a sharded tensor."""
    entry = table.tensors[tensor_path]
    size, cs = entry.nbytes, table.chunk_size
    if entry.shards:  # blocks of a distributed save: its bytes in order need all of them
        return [(-1, size)]
    return [(i, min(cs, size - i * cs)) for i in range(len(entry.chunks))]


def _counted(pieces: Iterator[bytes], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    for piece in pieces:
        if progress:
            progress(len(piece))
        yield piece


def _prefetch(lazy: LazyTensors, jobs: Sequence[tuple[str, int, int]]) -> Generator[bytes, None, None]:
    """Every chunk of ``jobs`` in order, read ahead in parallel (at most ``_PREFETCH_BYTES`` ahead).

    Small chunks are read in batches (one task per batch), so that tens of thousands of small tensors do not
    cost a thread hand-off each.
    """
    batches: list[tuple[list[tuple[str, int]], int]] = []
    for name, index, size in jobs:
        if not batches or len(batches[-1][0]) >= 256 or batches[-1][1] + size > _BATCH_BYTES:
            batches.append(([], 0))
        batch, total = batches[-1]
        batch.append((name, index))
        batches[-1] = (batch, total + size)
    if not batches:
        return

    def read(batch: list[tuple[str, int]]) -> list[bytes]:
        return [
            lazy.chunk_bytes(name, index) if index >= 0 else b"".join(lazy.byte_pieces(name)) for name, index in batch
        ]

    pool = ThreadPoolExecutor(settings.threads(), thread_name_prefix="ckpt-export")
    pending: deque[tuple[Future[list[bytes]], int]] = deque()
    ahead = 0
    submitted = 0
    try:
        while submitted < len(batches) or pending:
            while submitted < len(batches) and (not pending or ahead < _PREFETCH_BYTES):
                batch, size = batches[submitted]
                pending.append((pool.submit(read, batch), size))
                ahead += size
                submitted += 1
            future, size = pending.popleft()
            ahead -= size
            yield from future.result()
    finally:
        for future, _ in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _write_bytes(target: Path, data: bytes, shown: Path) -> None:
    try:
        with open(target, "xb") as f:
            f.write(data)
    except OSError as e:
        raise os_error(e, f"writing {shown}") from e


def _is_ckpt_state(path: Path) -> bool:
    """Whether a ``state.json`` found in an export folder is ckpt's (this format or the older bare tree)."""
    try:
        with open(path, "rb", opener=lambda p, f: os.open(p, f | getattr(os, "O_NOFOLLOW", 0))) as f:
            head = f.read(64)
    except OSError:
        return False
    compact = b"".join(head.split())
    return compact.startswith((b'{"' + _EXPORT_KEY.encode() + b'"', b'{"$dict"'))


def _groups(tree: Any) -> dict[str, dict[str, str]] | None:
    """Root key → {key: tensor path} for a tree that is only mappings of tensors under a root mapping."""
    if not (isinstance(tree, dict) and set(tree) == {"$dict"} and isinstance(tree["$dict"], list)):
        return None
    out: dict[str, dict[str, str]] = {}
    for pair in tree["$dict"]:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            return None
        key, value = pair
        if not (isinstance(value, dict) and set(value) == {"$dict"} and isinstance(value["$dict"], list)):
            return None
        names, rest = _take_tensors(value["$dict"])
        if rest or key in out:
            return None
        out[key] = names
    return out


def _recorded_plan(snap: Snapshot, table: TensorTable, attached: Mapping[str, bytes]) -> list[_Out] | None:
    """The imported files, if the snapshot records them and they hold exactly its tensors and nothing else."""
    layout = snap.metadata.get(LAYOUT_KEY)
    if not isinstance(layout, list) or not layout:
        return None
    groups = _groups(table.tree)
    if groups is None:
        return None
    outs: list[_Out] = []
    covered: set[str] = set()
    for rel in layout:
        if not isinstance(rel, str) or not rel.endswith(_WEIGHTS):
            return None
        try:
            check_relative_path(rel)
        except RecordError:
            return None
        header = attached.get(f"{HEADER_PREFIX}{rel}.header")
        if header is None:
            return None
        try:
            _, infos = parse_header(header)
        except CkptError:
            return None
        group = groups.get(rel.rpartition("/")[0] or "model")
        if group is None:
            return None
        paths: dict[str, str] = {}
        for info in infos:
            tensor_path = group.get(info.name)
            entry: TensorEntry | None = table.tensors.get(tensor_path or "")
            if tensor_path is None or entry is None or (entry.dtype, entry.shape) != (info.dtype, info.shape):
                return None
            if tensor_path in covered:
                return None
            covered.add(tensor_path)
            paths[info.name] = tensor_path
        outs.append(_Out(rel, header, tuple(infos), paths))
    if covered != set(table.tensors) or covered != {p for g in groups.values() for p in g.values()}:
        return None
    return outs


def _fresh_plan(snap: Snapshot, table: TensorTable, limit: int, weights_name: str) -> tuple[list[_Out], bytes | None]:
    """``save_pretrained``'s shards for the model tensors (with the index), then ckpt's state files if needed."""
    model_tensors, remainder = _split_model(table.tree)
    for tensor_path in model_tensors.values():
        if tensor_path not in table.tensors:
            raise RecordError(
                f"snapshot {snap.short_id}: the state tree names {tensor_path!r}, which has no entry",
                hint="the snapshot's table is damaged: check the store with `store.verify()`",
                cli_hint="the snapshot's table is damaged: check the store with `ckpt verify`",
            )
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    total_size = total_params = 0
    for name, tensor_path in model_tensors.items():
        entry = table.tensors[tensor_path]
        size = entry.nbytes
        total_size += size
        total_params += entry.numel
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
    stem = weights_name[: -len(_WEIGHTS)]
    names = (
        [weights_name]
        if len(shards) == 1
        else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}{_WEIGHTS}" for i in range(len(shards))]
    )
    outs: list[_Out] = []
    for filename, shard in zip(names, shards, strict=True):
        entries = [(n, table.tensors[model_tensors[n]]) for n in shard]
        header, infos = build_header([(n, e.dtype, e.shape) for n, e in entries], _FORMAT_METADATA)
        outs.append(_Out(filename, header, tuple(infos), {n: model_tensors[n] for n in shard}))
    index_name: str | None = None
    if len(shards) > 1:
        index_name = f"{weights_name}.index.json"
        index = {
            "metadata": {"total_parameters": total_params, "total_size": total_size},
            "weight_map": {name: o.rel for o in outs for name in o.paths or {}},
        }
        outs.append(_Out(index_name, data=(json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")))
    if remainder is None:
        return outs, None

    other = [p for p in tensor_paths(remainder) if p in table.tensors]
    state_file: str | None = None
    if other:
        state_file = _STATE_TENSORS
        header, infos = build_header(
            [(p, table.tensors[p].dtype, table.tensors[p].shape) for p in other], _FORMAT_METADATA
        )
        outs.append(_Out(state_file, header, tuple(infos), {p: p for p in other}))
    numpy = sorted(p for p, e in table.tensors.items() if e.kind == "numpy")
    doc: dict[str, Any] = {
        _EXPORT_KEY: EXPORT_FORMAT,
        "snapshot": {
            "id": snap.id,
            "model": snap.model,
            "step": snap.step,
            "epoch": _typed_float(snap.epoch),
            "metrics": {k: _typed_float(v) for k, v in snap.metrics.items()},
            "message": snap.message,
            "metadata": {k: v for k, v in snap.metadata.items() if k != LAYOUT_KEY},
            "relation": snap.relation,
            "parents": list(snap.parents),
            "base": snap.base,
            "created_at": snap.created_at,
        },
        "files": {"weights": names if shards else [], "index": index_name, "state": state_file},
        **({"numpy": numpy} if numpy else {}),
        "state": table.tree,
    }
    return outs, _state_json(doc)


def _typed_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    return value


def _split_model(tree: Any) -> tuple[dict[str, str], Any]:
    """Model tensor name → table path, and the tree without them (``None`` if nothing is left)."""
    if not (isinstance(tree, dict) and set(tree) == {"$dict"}):
        return {}, tree
    pairs: list[list[Any]] = tree["$dict"]
    for i, (key, value) in enumerate(pairs):
        if key == "model" and isinstance(value, dict) and set(value) == {"$dict"}:
            names, rest = _take_tensors(value["$dict"])
            kept = [p for p in pairs if p is not pairs[i]]
            if rest:
                kept.insert(i, ["model", {"$dict": rest}])
            return names, ({"$dict": kept} if kept else None)
    names, rest = _take_tensors(pairs)
    return names, ({"$dict": rest} if rest else None)


def _take_tensors(pairs: list[list[Any]]) -> tuple[dict[str, str], list[list[Any]]]:
    names: dict[str, str] = {}
    rest: list[list[Any]] = []
    for key, value in pairs:
        if isinstance(value, dict) and set(value) == {"$tensor"} and isinstance(value["$tensor"], str):
            name = str(key)
            if name in names:
                raise RecordError(
                    f"two tensors of the model would both be named {name!r}",
                    hint="rename one of the keys (an int and a str key print the same)",
                )
            names[name] = value["$tensor"]
        else:
            rest.append([key, value])
    return names, rest


def _state_json(tree: Any) -> bytes:
    return (_pretty(tree, 0) + "\n").encode("utf-8")


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
