"""Hugging Face folders in and out of a store: safetensors files (sharded or not) and their side files.

``import_folder`` saves a ``.safetensors`` file, or a folder of them as ``save_pretrained`` writes it (one
``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` shards with ``model.safetensors.index.json``, or
a PEFT ``adapter_model.safetensors``), as one snapshot:

- the state is ``{"model": {tensor name: tensor}}``, with the names of the files; the tensors are read from
  memory-mapped files, straight into chunks (no torch, no copy);
- every other file of the folder (``config.json``, ``generation_config.json``, tokenizer files, the index,
  ``adapter_config.json``, ``README.md`` …) is attached to the snapshot as is;
- so that the files can be written again byte for byte, each safetensors file's exact header is attached as
  ``.ckpt/safetensors/<file name>.header`` (it lists the file's tensors in data-offset order), and the
  snapshot's metadata holds ``"safetensors_layout"``: the list of the imported file names (kept short, since
  ``ckpt log`` reads every record).

``export_folder`` writes any snapshot back as ordinary files that ``transformers``, ``safetensors`` and other
tools load without ckpt; an imported snapshot gives back its original files, byte-identical.

Pickle-based weight files (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``, ``.pickle``) are refused: loading
one can run arbitrary code, and ckpt never does that. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from ckpt import settings
from ckpt.errors import MissingObjectError, RecordError, UnsupportedStateError
from ckpt.model import Relation, Snapshot, TensorEntry, TensorTable
from ckpt.safetensors_file import open_mapped, parse_header, write_file
from ckpt.state import TensorSource, tensor_paths

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = [
    "HEADER_PREFIX",
    "LAYOUT_KEY",
    "MAX_SIDE_FILE_SIZE",
    "PICKLE_SUFFIXES",
    "export_folder",
    "import_folder",
]

#: Snapshot metadata key of the recorded file layout: the imported safetensors file names, in order.
LAYOUT_KEY = "safetensors_layout"
#: Attached-file prefix reserved for what ckpt needs to rebuild files; never exported.
RESERVED_PREFIX = ".ckpt/"
#: Where each imported file's exact header is attached: ``HEADER_PREFIX + file name + ".header"``.
HEADER_PREFIX = ".ckpt/safetensors/"
#: Side files bigger than this are refused by ``import_folder`` (they are not small files).
MAX_SIDE_FILE_SIZE = 100_000_000
#: Weight files that are Python pickles: loading them can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

_DEFAULT_SHARD_SIZE = "5GB"
_INDEX_SUFFIX = ".safetensors.index.json"
_INDEX_NAME = "model.safetensors.index.json"
_STATE_JSON = "state.json"
_STATE_TENSORS = "state.safetensors"
_FORMAT_METADATA = {"format": "pt"}


# -- import ------------------------------------------------------------------------------------------


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
) -> Snapshot:
    """Save a safetensors file, or a Hugging Face / PEFT folder of them, as a new snapshot.

    The folder's own files are read: subfolders and hidden files (``.gitattributes`` …) are skipped. Tensors
    are read from memory-mapped files, so importing needs no torch and no memory for a copy.

    Args:
        store: the store to save into.
        path: a ``.safetensors`` file, or a folder with one or more of them and side files.
        branch: the branch to advance (created if it does not exist).
        model: the model's name; default: the basename of ``_name_or_path`` in ``config.json``, else the
            folder's name (for a lone file: its name without suffix, or its folder's name for a generic
            ``model.safetensors``).
        parents: revisions of the parents; default: the branch's head, if any (as ``Store.save``).
        relation: relation to the first parent; default: ``continue`` with a parent, ``import`` without.
        message: a note; default ``import <folder name>``.
        metadata: your own JSON metadata; the key ``"safetensors_layout"`` is ckpt's.
        base: for an adapter, the revision of the snapshot it modifies (as ``Store.save``).
        progress: called with byte counts as chunks are written.

    Returns:
        The new snapshot: state ``{"model": {name: tensor}}``, side files attached, layout recorded.

    Raises:
        UnsupportedStateError: a pickle-based weight file is present (the hint says how to convert it), or a
            tensor has a dtype ckpt does not store.
        RecordError: no such path; no ``.safetensors`` file; a malformed safetensors file; a side file over
            100 MB; a tensor name in two files; an index that names missing files or tensors.
        RevisionError: a parent or the base does not resolve.
        RefConflictError: the branch moved while saving (the snapshot is stored and in the reflog).

    Example:
        >>> snap = import_folder(store, "tiny-llama/", branch="main", model="tiny-llama")  # doctest: +SKIP
    """
    src = Path(path)
    if not src.exists():
        raise RecordError(f"no such file or folder: {src}")
    if not src.is_dir():
        _refuse_pickles([src])
        if not src.name.endswith(".safetensors"):
            raise RecordError(f"{src} is not a .safetensors file", hint="import a .safetensors file or a folder")
        weights, side = [src], []
        generic = src.stem in ("model", "adapter_model") or src.stem.startswith("model-")
        default_name = src.resolve().parent.name if generic else src.stem
    else:
        try:
            entries = sorted(p for p in src.iterdir() if not p.name.startswith(".") and p.is_file())
        except OSError as e:
            raise RecordError(f"cannot read the folder {src}: {e}") from e
        _refuse_pickles([p for p in entries if p.name.lower().endswith(PICKLE_SUFFIXES)])
        weights = [p for p in entries if p.name.endswith(".safetensors")]
        side = [p for p in entries if not p.name.endswith(".safetensors")]
        if not weights:
            raise RecordError(
                f"{src} holds no .safetensors file",
                hint="import a folder written by save_pretrained(safe_serialization=True), or a .safetensors file",
            )
        default_name = src.resolve().name

    files: dict[str, bytes] = {}
    for p in side:
        try:
            size = p.stat().st_size
            if size > MAX_SIDE_FILE_SIZE:
                raise RecordError(
                    f"{p.name} is {size} bytes; side files over {MAX_SIDE_FILE_SIZE} bytes are not attached",
                    hint="move it out of the folder (weights belong in .safetensors files)",
                )
            files[p.name] = p.read_bytes()
        except OSError as e:
            raise RecordError(f"cannot read {p}: {e}") from e

    tensors: dict[str, TensorSource] = {}
    where: dict[str, str] = {}
    layout: list[JsonValue] = []
    for p in weights:
        header_bytes, sources = open_mapped(p)
        for name, source in sources.items():
            if name in tensors:
                raise RecordError(
                    f"tensor {name!r} is in both {where[name]} and {p.name}",
                    hint="a folder holds one model; import variants (e.g. *.fp16.safetensors) from separate folders",
                )
            tensors[name] = source
            where[name] = p.name
        layout.append(p.name)
        files[f"{HEADER_PREFIX}{p.name}.header"] = header_bytes
    for name, data in files.items():
        if name.endswith(_INDEX_SUFFIX) and not name.startswith(RESERVED_PREFIX):
            _check_index(name, data, where)

    meta: dict[str, JsonValue] = dict(metadata or {})
    if LAYOUT_KEY in meta:
        raise RecordError(f"metadata key {LAYOUT_KEY!r} is reserved for ckpt's record of the imported files")
    meta[LAYOUT_KEY] = layout
    return store.save(
        {"model": tensors},
        branch,
        parents=parents,
        relation=relation,
        model=model or _name_from_config(files.get("config.json")) or default_name,
        message=message if message is not None else f"import {src.name}",
        metadata=meta,
        files=files,
        base=base,
        progress=progress,
    )


def _refuse_pickles(paths: Sequence[Path]) -> None:
    bad = [p for p in paths if p.name.lower().endswith(PICKLE_SUFFIXES)]
    if not bad:
        return
    names = ", ".join(p.name for p in bad)
    raise UnsupportedStateError(
        f"refusing pickle-based file(s) {names}: loading a pickle can run arbitrary code, and ckpt never loads one",
        hint=(
            "convert them to safetensors in an environment you trust: load with "
            "torch.load(path, weights_only=True) and save with safetensors.torch.save_file(state_dict, "
            "'model.safetensors'), or load the model with transformers and call "
            "model.save_pretrained(folder, safe_serialization=True); if the folder has the same weights as "
            ".safetensors already, move the pickle files out of it"
        ),
    )


def _check_index(name: str, data: bytes, where: Mapping[str, str]) -> None:
    try:
        index = json.loads(data)
    except ValueError as e:
        raise RecordError(f"{name} is not valid JSON: {e}") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise RecordError(f"{name} has no weight_map")
    files = set(where.values())
    for tensor, file in weight_map.items():
        if file not in files:
            raise RecordError(
                f"{name} puts {tensor!r} in {file}, which is not in the folder",
                hint="the download may be incomplete; fetch the missing shards",
            )
        if where.get(tensor) != file:
            raise RecordError(f"{name} puts {tensor!r} in {file}, but {file} does not hold it")


def _name_from_config(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        config = json.loads(data)
    except ValueError:
        return None
    value = config.get("_name_or_path") if isinstance(config, dict) else None
    if not isinstance(value, str):
        return None
    return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or None


# -- export ------------------------------------------------------------------------------------------


def export_folder(
    store: Store,
    rev: str,
    path: str | os.PathLike[str],
    *,
    shard_size: int | str | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write a snapshot as ordinary files: safetensors weights, attached files, and the rest of the state.

    What is written:

    - **weights**: the *model tensors* are the tensors directly under the state's ``"model"`` mapping, or
      directly under the root mapping when it has no ``"model"`` mapping (a plain state dict). An imported
      snapshot (one with ``"safetensors_layout"``) gets its original files back, byte-identical: each header
      verbatim, then its tensors in offset order. Otherwise they go to ``model.safetensors`` or, when they
      exceed ``shard_size``, to ``model-00001-of-0000N.safetensors`` shards plus ``model.safetensors.index.json``
      (``{"metadata": {"total_parameters", "total_size"}, "weight_map": {name: file}}``), exactly as
      ``save_pretrained`` cuts and names them (tensors in state order, a new shard when the next tensor would
      overflow, a tensor bigger than ``shard_size`` alone), with ``{"format": "pt"}`` metadata. Should the
      recorded layout no longer fit the snapshot's tensors, this fallback is used for it too.
    - **attached files** (``config.json``, tokenizer files …), except ckpt's own ``.ckpt/`` files and any
      that a file written here replaces.
    - ``state.json``, only if the state holds more than the model tensors: the snapshot's state tree in ckpt's
      typed JSON (docs/format.md) with the model tensors taken out (a ``"model"`` mapping left empty is taken
      out too). Non-tensor values appear as themselves, except ``{"$dict": [[key, value], …]}`` for mappings,
      ``{"$tuple": […]}`` for tuples and ``{"$float": "nan" | "inf" | "-inf"}``; every other tensor appears as
      ``{"$tensor": "<path>"}`` and is written to ``state.safetensors`` under that path name. For
      ``{"model": sd, "optimizer": opt_sd, "step": 3}`` it looks like::

          {"$dict": [
            ["optimizer", {"$dict": [["state", …{"$tensor": "optimizer/state/0/exp_avg"}…], …]}],
            ["step", 3]
          ]}

      ``ckpt.state.unflatten(json.load(f), state_tensors.__getitem__)`` rebuilds it.

    Tensor bytes stream from the store chunk by chunk, each chunk verified; every file appears atomically.

    Args:
        store: the store.
        rev: the snapshot to export (branch, tag, id …).
        path: the folder to write; created if missing.
        shard_size: largest shard, in bytes or as ``"5GB"``; default 5 GB.
        force: write into a non-empty folder, replacing files of the same names (other files stay).
        progress: called with byte counts as tensor bytes are written.

    Returns:
        The files written, in the order written.

    Raises:
        RecordError: the folder is not empty (without ``force``), ``path`` is a file, a bad ``shard_size``, or
            an attached file's path would leave the folder.
        RevisionError: ``rev`` does not resolve.
        MissingObjectError: the snapshot was pruned.
        CorruptChunkError: a chunk does not match its digest.

    Example:
        >>> export_folder(store, "tiny-llama-2026-11-28", "out/tiny-llama")  # doctest: +SKIP
        [PosixPath('out/tiny-llama/model.safetensors'), PosixPath('out/tiny-llama/config.json')]
    """
    dest = Path(path)
    try:
        limit = settings.parse_size(shard_size if shard_size is not None else _DEFAULT_SHARD_SIZE)
    except ValueError as e:
        raise RecordError(str(e)) from e
    if limit <= 0:
        raise RecordError(f"shard_size must be positive, got {shard_size!r}")
    if dest.exists() and not dest.is_dir():
        raise RecordError(f"{dest} is a file, not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise RecordError(
            f"{dest} is not empty",
            hint="choose an empty or new folder, or pass force=True to write into it",
            cli_hint="choose an empty or new folder, or pass --force to write into it",
        )

    snap = store.resolve(rev)
    if snap.pruned:
        raise MissingObjectError(
            f"snapshot {snap.short_id} was pruned: its tensors were released", hint="export another snapshot"
        )
    table = store.table(snap.id)
    attached = store.files(snap.id)
    model_tensors, remainder = _split_model(table.tree)
    for tensor_path in model_tensors.values():
        if tensor_path not in table.tensors:
            raise RecordError(f"snapshot {snap.short_id}: the state tree names {tensor_path!r}, which has no entry")

    state_json = _state_json(remainder) if remainder is not None else None
    other = [p for p in tensor_paths(remainder) if p in table.tensors] if remainder is not None else []
    reserved = {_STATE_JSON} | ({_STATE_TENSORS} if other else set())
    recorded = _recorded_plan(snap, table, attached, model_tensors, reserved)
    index: bytes | None = None
    if recorded is not None:
        plan = recorded
    else:
        plan, index = _fresh_plan(table, model_tensors, limit)

    generated = {name for name, _, _ in plan}
    if index is not None:
        generated.add(_INDEX_NAME)
    if state_json is not None:
        generated.add(_STATE_JSON)
    if other:
        generated.add(_STATE_TENSORS)
    side: dict[str, bytes] = {}
    for name, data in attached.items():
        stale_index = recorded is None and name.endswith(_INDEX_SUFFIX)
        if name.startswith(RESERVED_PREFIX) or name in generated or stale_index:
            continue  # a fresh layout makes any attached index stale
        side[_safe_relative(name)] = data

    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for filename, header, names in plan:
        items = []
        for name in names:
            entry = table.tensors[model_tensors[name]]
            items.append((name, entry.dtype, entry.shape, _stream(store, snap.id, model_tensors[name], progress)))
        target = dest / _safe_relative(filename)
        if header is None:
            write_file(target, items, metadata=_FORMAT_METADATA)
        else:
            write_file(target, items, header_bytes=header)
        written.append(target)
    if index is not None:
        written.append(_write_bytes(dest / _INDEX_NAME, index))
    for name, data in side.items():
        written.append(_write_bytes(dest / name, data))
    if other:
        items = [
            (p, table.tensors[p].dtype, table.tensors[p].shape, _stream(store, snap.id, p, progress)) for p in other
        ]
        written.append(write_file(dest / _STATE_TENSORS, items, metadata=_FORMAT_METADATA))
    if state_json is not None:
        written.append(_write_bytes(dest / _STATE_JSON, state_json))
    return written


#: One file to write: name, header to write verbatim (``None``: build it), tensor names in it.
_Plan = list[tuple[str, bytes | None, list[str]]]


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
                raise RecordError(f"two tensors of the model would both be named {name!r}")
            names[name] = value["$tensor"]
        else:
            rest.append([key, value])
    return names, rest


def _recorded_plan(
    snap: Snapshot,
    table: TensorTable,
    attached: Mapping[str, bytes],
    model_tensors: Mapping[str, str],
    reserved: set[str],
) -> _Plan | None:
    """The imported files, if the snapshot records them and they still fit its tensors (and no other file)."""
    layout = snap.metadata.get(LAYOUT_KEY)
    if not isinstance(layout, list) or not layout:
        return None
    plan: _Plan = []
    covered: list[str] = []
    for filename in layout:
        if not isinstance(filename, str) or not _is_plain_name(filename) or filename in reserved:
            return None
        header = attached.get(f"{HEADER_PREFIX}{filename}.header")
        if header is None:
            return None
        try:
            _, infos = parse_header(header)
        except (RecordError, UnsupportedStateError):
            return None
        for info in infos:
            entry: TensorEntry | None = table.tensors.get(model_tensors.get(info.name, ""))
            if entry is None or entry.dtype != info.dtype or entry.shape != info.shape:
                return None
        plan.append((filename, header, [i.name for i in infos]))
        covered.extend(i.name for i in infos)
    if len(covered) != len(model_tensors) or set(covered) != set(model_tensors):
        return None
    return plan


def _fresh_plan(table: TensorTable, model_tensors: Mapping[str, str], limit: int) -> tuple[_Plan, bytes | None]:
    """``save_pretrained``'s shards for the model tensors, and the index when there are several."""
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
    if len(shards) <= 1:
        return [("model.safetensors", None, shards[0])] if shards else [], None
    n = len(shards)
    plan: _Plan = [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", None, names) for i, names in enumerate(shards)]
    index = {
        "metadata": {"total_parameters": total_params, "total_size": total_size},
        "weight_map": {name: filename for filename, _, names in plan for name in names},
    }
    return plan, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _stream(
    store: Store, snapshot_id: str, tensor_path: str, progress: Callable[[int], None] | None
) -> Iterator[bytes]:
    for piece in store.tensor_bytes(snapshot_id, tensor_path):
        if progress:
            progress(len(piece))
        yield piece


def _is_plain_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and ":" not in name
    )


def _safe_relative(name: str) -> str:
    """A relative path that stays inside the export folder, or a ``RecordError``."""
    parts = name.split("/")
    if name.startswith("/") or any(not _is_plain_name(p) for p in parts):
        raise RecordError(f"attached file {name!r} would be written outside the export folder; refusing it")
    return name


def _write_bytes(target: Path, data: bytes) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


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
