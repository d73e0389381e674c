"""Adapters over a base snapshot: save LoRA adapters, load them merged, merge them, PEFT folders in and out.

An adapter snapshot holds only its adapter tensors and its PEFT config, and names the snapshot it modifies:

- state ``{"model": {name: tensor}}`` with PEFT's names as ``adapter_model.safetensors`` has them
  (``base_model.model.<module>.lora_A.weight``, ``….lora_B.weight``, ``….lora_embedding_A`` …);
- the PEFT config (``r``, ``lora_alpha``, ``target_modules``, ``peft_type``, ``use_rslora``, ``fan_in_fan_out``
  …) attached as ``adapter_config.json`` and copied into ``metadata["adapter_config"]``;
- ``relation="adapter"``, ``parents=[base]`` and ``base=<base id>``, so "which base does this adapter need?"
  always has an answer (a later save of the same adapter on its branch is ``continue`` and keeps ``base``).

Merging follows PEFT's ``merge_and_unload()``: for each adapted module, ``W + scale · B @ A`` (transposed for
``fan_in_fan_out`` layers and for embeddings), ``scale = lora_alpha / r`` or ``lora_alpha / √r`` with rsLoRA
(``alpha_pattern`` respected; ``r`` is read from the tensors, so ``rank_pattern`` needs nothing), computed in
float32 (float64 for float64 weights) and cast back to the weight's dtype. LoRA on linear and embedding layers
is supported; DoRA, ``lora_bias``, ``modules_to_save``, conv layers and other PEFT methods can be stored
(import their folders) but not merged: merging them raises ``UnsupportedStateError``.

torch is imported only by the functions that compute (``load_merged``, ``merge``).

Example:
    >>> from ckpt.adapters import load_merged, save_adapter  # doctest: +SKIP
    >>> lora = save_adapter(store, "chat", get_peft_model_state_dict(peft_model), branch="chat-lora",
    ...                     config=peft_model.peft_config["default"])  # doctest: +SKIP
    >>> merged = load_merged(store, "chat-lora")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import JsonValue

from ckpt.errors import RecordError, RefExistsError, StateMismatchError, UnsupportedStateError
from ckpt.model import Relation, Snapshot, TensorTable
from ckpt.state import is_array

if TYPE_CHECKING:
    from ckpt.store import Store
    from ckpt.store.store import Framework

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "CONFIG_KEY",
    "adapter_config",
    "base_of",
    "export_peft_folder",
    "import_peft_folder",
    "load_merged",
    "merge",
    "save_adapter",
]

#: The attached file that holds an adapter's PEFT config (as PEFT names it).
ADAPTER_CONFIG_FILE = "adapter_config.json"
#: The weights file of a PEFT adapter folder.
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
#: Snapshot metadata key of the adapter's PEFT config (the same JSON as ``adapter_config.json``).
CONFIG_KEY = "adapter_config"

_PEFT_PREFIX = "base_model.model."
_LINEAR_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_EMBEDDING_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_embedding_[AB])(?:\.(?P<adapter>[^.]+))?$")
_UNSUPPORTED_MARKS = ("lora_", "modules_to_save", "trainable_tokens")
_RESERVED_PREFIX = ".ckpt/"
_INDEX_SUFFIX = ".safetensors.index.json"


# -- saving ------------------------------------------------------------------------------------------


def save_adapter(
    store: Store,
    base_rev: str,
    adapter_state: Mapping[str, Any],
    *,
    branch: str,
    config: Any,
    model: str | None = None,
    step: int | None = None,
    epoch: int | float | None = None,
    metrics: Mapping[str, float] | None = None,
    message: str | None = None,
    metadata: Mapping[str, JsonValue] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Snapshot:
    """Save a LoRA adapter over a base snapshot: only its tensors and its config are stored.

    The adapter's tensor names are kept as PEFT writes them to ``adapter_model.safetensors`` (the adapter name
    of ``peft_model.state_dict()``, e.g. ``.default``, is taken out), so the snapshot exports as a PEFT folder.
    Every target is checked against the base's tensor table (no tensor bytes are read) before anything is
    written.

    On a new branch the snapshot's relation is ``adapter`` and its parent the base. On a branch whose head is
    an adapter of the same base (an adapter still training), it is ``continue`` with that head as parent. In
    both cases ``base`` records the base's id.

    Args:
        store: the store.
        base_rev: the snapshot the adapter modifies (branch, tag, id …).
        adapter_state: the adapter tensors by PEFT name: ``get_peft_model_state_dict(peft_model)``, or
            ``peft_model.state_dict()`` (the base weights in it are left out), or ``{"model": those}``.
        branch: the adapter's branch: new, or one whose head is an adapter of the same base.
        config: the PEFT config: a ``peft.LoraConfig`` (anything with ``to_dict()``) or the mapping of
            ``adapter_config.json``. ``peft_type`` defaults to ``LORA``, which needs ``r`` and ``lora_alpha``.
        model: the adapter's model name; default: the base's name + ``-lora`` (on a continued branch: the
            head's name).
        step: training step.
        epoch: training epoch.
        metrics: named numbers (``{"val_loss": 0.41}``).
        message: a note, like a commit message.
        metadata: your own JSON metadata; the key ``"adapter_config"`` is ckpt's.
        progress: called with byte counts as chunks are written.

    Returns:
        The adapter snapshot.

    Raises:
        RecordError: the config is not a PEFT config, or ``metadata`` uses the reserved key.
        UnsupportedStateError: a tensor is an adapter tensor of a kind ckpt cannot save from a state dict
            (DoRA magnitudes, ``modules_to_save`` …; save the folder with PEFT and use ``import_peft_folder``).
        StateMismatchError: no adapter tensor; a ``lora_A`` without its ``lora_B``; a target the base lacks or
            whose shape does not fit.
        RefExistsError: ``branch`` exists and its head is not an adapter of this base.
        RevisionError: ``base_rev`` does not resolve.

    Example:
        >>> from peft import get_peft_model_state_dict  # doctest: +SKIP
        >>> snap = save_adapter(store, "chat", get_peft_model_state_dict(peft_model), branch="chat-lora",
        ...                     config=peft_model.peft_config["default"])  # doctest: +SKIP
        >>> snap.relation, snap.base == store.resolve("chat").id  # doctest: +SKIP
        ('adapter', True)
    """
    base = store.resolve(base_rev)
    cfg = _config_dict(config)
    tensors = _adapter_tensors(adapter_state)
    shapes = {name: tuple(int(d) for d in t.shape) for name, t in tensors.items()}
    entries = _model_entries(store.table(_root(store, base).id))
    _check_fits(shapes, cfg, entries, adapter="the adapter", base=base)
    meta = _with_config(metadata, cfg)
    parents, relation, default_model = _adapter_line(store, base, branch, cfg)
    return store.save(
        {"model": tensors},
        branch,
        parents=parents,
        relation=relation,
        model=model or default_model,
        step=step,
        epoch=epoch,
        metrics=metrics,
        message=message,
        metadata=meta,
        files={ADAPTER_CONFIG_FILE: _config_bytes(cfg)},
        base=base.id,
        progress=progress,
    )


def adapter_config(store: Store, rev: str) -> dict[str, JsonValue]:
    """The PEFT config of an adapter snapshot (``metadata["adapter_config"]``, else its ``adapter_config.json``).

    Raises:
        RecordError: the snapshot is not an adapter, or has no readable adapter config.
    """
    snap = store.resolve(rev)
    base_of(snap)
    recorded = snap.metadata.get(CONFIG_KEY)
    if isinstance(recorded, dict):
        return dict(recorded)
    data = store.files(snap.id).get(ADAPTER_CONFIG_FILE)
    if data is None:
        raise RecordError(f"adapter snapshot {snap.short_id} has no {ADAPTER_CONFIG_FILE} and no recorded config")
    return _config_dict(_parse_json(data, f"{ADAPTER_CONFIG_FILE} of {snap.short_id}"))


# -- merging -----------------------------------------------------------------------------------------


def load_merged(
    store: Store,
    rev: str = "main",
    *,
    verify: bool = True,
    framework: Framework | None = None,
    into: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Load an adapter snapshot merged into its base: the base's state tree with ``W + scale · B @ A`` applied.

    The result equals what PEFT's ``merge_and_unload()`` gives on the same weights, within the tolerance of the
    weights' dtype (the delta is computed in float32 and the sum cast back once, so dtypes are preserved). An
    adapter over an adapter is merged recursively.

    Args:
        store: the store.
        rev: the adapter snapshot.
        verify: check every chunk against its digest.
        framework: ``torch`` or ``numpy`` for every tensor; default: what each was saved as.
        into: base tensor path → existing tensor to read into (as ``Store.load``); merged weights are written
            into those tensors in place.
        progress: called with byte counts as the base's chunks arrive.

    Returns:
        The base's state tree, its model weights merged.

    Raises:
        RecordError: the snapshot is not an adapter, or its config is not a LoRA config.
        StateMismatchError: a target module is missing from the base, or shapes do not fit (names them).
        UnsupportedStateError: the adapter holds tensors that cannot be merged (DoRA, ``modules_to_save`` …).
        MissingObjectError: the adapter or its base was pruned.
        CorruptChunkError: a chunk does not match its digest.

    Example:
        >>> state = load_merged(store, "chat-lora")  # doctest: +SKIP
        >>> model.load_state_dict(state["model"])  # doctest: +SKIP
    """
    snap = store.resolve(rev)
    base = store.get(base_of(snap))
    cfg = adapter_config(store, snap.id)
    root = _root(store, base)  # its table gives the shapes of the weights, before any byte is read
    shapes = {name: shape for name, (_, shape) in _model_entries(store.table(snap.id)).items()}
    entries = _model_entries(store.table(root.id))
    pairs = _check_fits(shapes, cfg, entries, adapter=f"adapter {snap.short_id}", base=base)

    adapter = _model_mapping(store.load(snap.id, verify=verify, framework="torch"), f"adapter {snap.short_id}")
    if base.id != root.id:
        state = load_merged(store, base.id, verify=verify, framework=framework, into=into, progress=progress)
    else:
        state = store.load(base.id, verify=verify, framework=framework, into=into, progress=progress)
    weights = _model_mapping(state, f"base {base.short_id}")
    in_place = {id(t) for t in into.values()} if into else set()
    for pair in pairs:
        weight = weights[pair.target]
        merged = _merged_weight(weight, adapter[pair.a], adapter[pair.b], pair, cfg)
        if id(weight) in in_place:
            if _is_numpy(weight):
                weight[...] = merged.numpy()
            else:
                weight.copy_(merged)
        else:
            weights[pair.target] = merged.numpy() if _is_numpy(weight) else merged
    return state


def merge(
    store: Store,
    adapter_rev: str,
    *,
    branch: str,
    model: str | None = None,
    message: str | None = None,
    metadata: Mapping[str, JsonValue] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Snapshot:
    """Save an adapter merged into its base as a new snapshot: relation ``merge``, parents adapter then base.

    Only the merged tensors are new bytes: every tensor the adapter does not touch is the base's, shared by
    content. The base's attached files (``config.json``, tokenizer files …) come along, so the merged snapshot
    exports as a model folder that ``from_pretrained`` loads.

    Args:
        store: the store.
        adapter_rev: the adapter snapshot.
        branch: a new branch for the merged model.
        model: the merged model's name; default: the adapter's.
        message: a note; default ``merge <adapter> into <base>``.
        metadata: your own JSON metadata.
        progress: called with byte counts as chunks are written.

    Returns:
        The merged snapshot.

    Raises:
        RefExistsError: the branch exists.
        RecordError, StateMismatchError, UnsupportedStateError: as ``load_merged``.

    Example:
        >>> snap = merge(store, "chat-lora", branch="chat-merged", model="tiny-llama-chat-merged")  # doctest: +SKIP
        >>> snap.relation, len(snap.parents)  # doctest: +SKIP
        ('merge', 2)
    """
    snap = store.resolve(adapter_rev)
    base = store.get(base_of(snap))
    _require_new_branch(store, branch, hint="merge onto a new branch")
    state = load_merged(store, snap.id)
    files = {
        name: data
        for name, data in store.files(base.id).items()
        if not name.startswith(_RESERVED_PREFIX) and not name.endswith(_INDEX_SUFFIX)
    }
    return store.save(
        state,
        branch,
        parents=[snap.id, base.id],
        relation="merge",
        model=model,
        message=message if message is not None else f"merge adapter {snap.short_id} into {base.short_id}",
        metadata=metadata,
        files=files,
        progress=progress,
    )


# -- PEFT folders ------------------------------------------------------------------------------------


def import_peft_folder(
    store: Store,
    path: str | os.PathLike[str],
    base_rev: str,
    *,
    branch: str,
    model: str | None = None,
    message: str | None = None,
    metadata: Mapping[str, JsonValue] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Snapshot:
    """Import a PEFT adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``) over a base.

    The folder is imported as ``ckpt.hf.import_folder`` does (its files attached as they are, so
    ``export_peft_folder`` gives them back byte-identical), with the relation, parents and base of
    ``save_adapter`` and the config copied into ``metadata["adapter_config"]``. A LoRA adapter's targets are
    checked against the base's tensor table before anything is written.

    Args:
        store: the store.
        path: the folder ``peft_model.save_pretrained`` wrote.
        base_rev: the snapshot the adapter modifies.
        branch: the adapter's branch: new, or one whose head is an adapter of the same base.
        model: the adapter's model name; default: the base's name + ``-lora``.
        message: a note; default ``import adapter <folder name>``.
        metadata: your own JSON metadata; ``"adapter_config"`` and ``"safetensors_layout"`` are ckpt's.
        progress: called with byte counts as chunks are written.

    Returns:
        The adapter snapshot.

    Raises:
        RecordError: no such folder, no ``adapter_config.json`` or ``adapter_model.safetensors`` in it.
        UnsupportedStateError: the adapter weights are a pickle (``adapter_model.bin``).
        StateMismatchError: a LoRA target the base lacks, or whose shape does not fit.
        RefExistsError: ``branch`` exists and its head is not an adapter of this base.

    Example:
        >>> peft_model.save_pretrained("out/chat-lora")  # doctest: +SKIP
        >>> snap = import_peft_folder(store, "out/chat-lora", "chat", branch="chat-lora")  # doctest: +SKIP
    """
    from ckpt.hf import import_folder, plan_import
    from ckpt.safetensors_file import read_header

    src = Path(path)
    if not src.is_dir():
        raise RecordError(f"{src} is not a folder", hint="pass the folder peft_model.save_pretrained() wrote")
    config_path = src / ADAPTER_CONFIG_FILE
    if not config_path.is_file():
        raise RecordError(f"{src} has no {ADAPTER_CONFIG_FILE}; it is not a PEFT adapter folder")
    weights_path = src / ADAPTER_WEIGHTS_FILE
    if not weights_path.is_file() and not (src / "adapter_model.bin").is_file():
        raise RecordError(f"{src} has no {ADAPTER_WEIGHTS_FILE}")
    plan_import(src)  # before reading anything: links leaving the folder, pickles, odd files are refused
    cfg = _config_dict(_parse_json(config_path.read_bytes(), str(config_path)))
    base = store.resolve(base_rev)
    if weights_path.is_file() and _is_lora(cfg):
        _, header = read_header(weights_path)
        shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
        with contextlib.suppress(UnsupportedStateError):  # stored as it is; only merging it is refused
            entries = _model_entries(store.table(_root(store, base).id))
            _check_fits(shapes, cfg, entries, adapter=str(src), base=base)
    meta = _with_config(metadata, cfg)
    parents, relation, default_model = _adapter_line(store, base, branch, cfg)
    return import_folder(
        store,
        src,
        branch=branch,
        model=model or default_model or src.resolve().name,
        parents=parents,
        relation=relation,
        message=message if message is not None else f"import adapter {src.name}",
        metadata=meta,
        base=base.id,
        progress=progress,
    )


def export_peft_folder(
    store: Store,
    rev: str,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
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
    from ckpt.hf import export_folder

    snap = store.resolve(rev)
    base_of(snap)
    return list(export_folder(store, snap.id, path, force=force, progress=progress).written)


# -- the adapter's line ------------------------------------------------------------------------------


def _adapter_line(
    store: Store, base: Snapshot, branch: str, cfg: Mapping[str, JsonValue]
) -> tuple[list[str], Relation, str | None]:
    """Parents, relation and default model name of an adapter saved on ``branch``."""
    head_id = store.branches().get(branch)
    if head_id is None:
        kind = str(cfg.get("peft_type") or "adapter").lower()
        return [base.id], "adapter", (f"{base.model}-{kind}" if base.model else None)
    head = store.get(head_id)
    if head.base == base.id:
        return [head.id], "continue", None
    what = f"an adapter of {head.base[:12]}" if head.base else f"a {head.relation} snapshot"
    raise RefExistsError(
        f"branch {branch!r} exists and its head {head.short_id} is {what}, not an adapter of {base.short_id}",
        hint="save the adapter on a new branch",
    )


def _is_adapter(snap: Snapshot) -> bool:
    return snap.base is not None or snap.relation == "adapter"


def _root(store: Store, snap: Snapshot) -> Snapshot:
    """The model under a stack of adapters (``snap`` itself if it is not an adapter); ids rule out cycles."""
    while _is_adapter(snap):
        snap = store.get(base_of(snap))
    return snap


def _require_new_branch(store: Store, branch: str, *, hint: str) -> None:
    if branch in store.branches() or branch in store.tags():
        raise RefExistsError(f"a branch or tag named {branch!r} exists", hint=hint)


def base_of(snap: Snapshot) -> str:
    """The id of the snapshot an adapter modifies: its ``base``, else the first parent of an ``adapter`` snapshot.

    The fallback covers adapters recorded without ``base`` (e.g. imported with ``relation="adapter"`` only).

    Raises:
        RecordError: the snapshot is not an adapter.

    Example:
        >>> store.get(base_of(store.resolve("chat-lora"))).model  # doctest: +SKIP
        'tiny-llama-chat'
    """
    if snap.base is not None:
        return snap.base
    if snap.relation == "adapter" and snap.parents:
        return snap.parents[0]
    raise RecordError(
        f"snapshot {snap.short_id} ({snap.relation}) is not an adapter: it records no base to merge into",
        hint="load it without merge=True",
    )


# -- configs -----------------------------------------------------------------------------------------


def _config_dict(config: Any) -> dict[str, JsonValue]:
    """The JSON of a PEFT config, as ``adapter_config.json`` holds it (sets become sorted lists)."""
    raw = config.to_dict() if callable(getattr(config, "to_dict", None)) else config
    if not isinstance(raw, Mapping):
        raise RecordError(
            f"an adapter config must be a PEFT config or a mapping, got {type(config).__name__}",
            hint="pass peft_model.peft_config['default'] or the dict of adapter_config.json",
        )
    out = {str(k): _json_value(v, str(k)) for k, v in raw.items()}
    out.setdefault("peft_type", "LORA")
    if _is_lora(out):
        for key in ("r", "lora_alpha"):
            value = out.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise RecordError(f"a LoRA config needs a positive {key!r}, got {value!r}")
    return out


def _json_value(value: Any, where: str) -> JsonValue:
    if isinstance(value, enum.Enum):
        return _json_value(value.value, where)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError(f"adapter config field {where!r} is {value}; JSON has no such number")
        return value
    if isinstance(value, (set, frozenset)):
        return [_json_value(v, where) for v in sorted(value, key=str)]
    if isinstance(value, (list, tuple)):
        return [_json_value(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, f"{where}.{k}") for k, v in value.items()}
    raise RecordError(f"adapter config field {where!r} holds a {type(value).__name__}, which is not JSON")


def _config_bytes(cfg: Mapping[str, JsonValue]) -> bytes:
    """``adapter_config.json`` as PEFT writes it."""
    return json.dumps(cfg, indent=2, sort_keys=True).encode("utf-8")


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise RecordError(f"{what} is not valid JSON: {e}") from e


def _with_config(metadata: Mapping[str, JsonValue] | None, cfg: dict[str, JsonValue]) -> dict[str, JsonValue]:
    meta = dict(metadata or {})
    if CONFIG_KEY in meta:
        raise RecordError(f"metadata key {CONFIG_KEY!r} is reserved for the adapter's PEFT config")
    meta[CONFIG_KEY] = cfg
    return meta


def _is_lora(cfg: Mapping[str, JsonValue]) -> bool:
    return str(cfg.get("peft_type", "LORA")).upper() == "LORA"


# -- adapter tensors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pair:
    """One adapted module: its LoRA A and B tensors and the base weight they change."""

    module: str  # the module's name in the base model, e.g. ``model.layers.0.self_attn.q_proj``
    a: str  # adapter tensor names
    b: str
    embedding: bool

    @property
    def target(self) -> str:
        return f"{self.module}.weight"


def _normal_name(key: str) -> tuple[str, str | None] | None:
    """The PEFT file name of an adapter tensor and the adapter name it carried, or ``None`` for a base weight.

    Raises:
        UnsupportedStateError: an adapter tensor of a kind not handled here.
    """
    for pattern, fmt in ((_LINEAR_KEY, "{module}.{part}.weight"), (_EMBEDDING_KEY, "{module}.{part}")):
        m = pattern.match(key)
        if m:
            return fmt.format(module=m["module"], part=m["part"]), m["adapter"]
    if ".base_layer." in key or not any(mark in key for mark in _UNSUPPORTED_MARKS):
        return None
    raise UnsupportedStateError(
        f"cannot save the adapter tensor {key!r} from a state dict: only LoRA A/B tensors are handled here",
        hint="save the adapter with peft_model.save_pretrained(folder) and import it with import_peft_folder",
    )


def _adapter_tensors(adapter_state: Mapping[str, Any]) -> dict[str, Any]:
    """The adapter tensors of a state dict, by the names PEFT writes to ``adapter_model.safetensors``."""
    if not isinstance(adapter_state, Mapping):
        raise StateMismatchError(f"adapter_state must be a mapping of tensors, got {type(adapter_state).__name__}")
    inner = adapter_state.get("model")
    if len(adapter_state) == 1 and isinstance(inner, Mapping):
        adapter_state = inner
    out: dict[str, Any] = {}
    adapter_names: set[str] = set()
    for key, value in adapter_state.items():
        if not isinstance(key, str) or not is_array(value):
            raise StateMismatchError(f"adapter_state must map names to tensors; {key!r} holds {type(value).__name__}")
        found = _normal_name(key)
        if found is None:
            continue
        name, adapter_name = found
        if adapter_name is not None:
            adapter_names.add(adapter_name)
        if name in out:
            raise StateMismatchError(f"two adapter tensors would both be saved as {name!r}")
        out[name] = value
    if len(adapter_names) > 1:
        raise StateMismatchError(
            f"adapter_state holds several adapters ({', '.join(sorted(adapter_names))})",
            hint="pass get_peft_model_state_dict(peft_model, adapter_name=...) for one of them",
        )
    if not out:
        raise StateMismatchError(
            "adapter_state holds no LoRA tensor (names like '….lora_A.weight')",
            hint="pass get_peft_model_state_dict(peft_model)",
        )
    return out


def _pairs(shapes: Mapping[str, tuple[int, ...]]) -> list[_Pair]:
    """The adapted modules of an adapter, from its tensor names (in PEFT's file form) and shapes.

    Raises:
        UnsupportedStateError: a tensor that is not a LoRA A/B tensor of a linear or embedding layer.
        StateMismatchError: an A without its B (or the reverse), or A and B of different ranks.
    """
    halves: dict[tuple[str, bool], dict[str, str]] = {}
    for key in shapes:
        m = _LINEAR_KEY.match(key) or _EMBEDDING_KEY.match(key)
        if m is None or m["adapter"] is not None:
            raise UnsupportedStateError(
                f"cannot merge the adapter tensor {key!r}: only LoRA on linear and embedding layers is merged",
                hint="load the adapter with peft (export_peft_folder) and merge it there",
            )
        part = str(m["part"])
        halves.setdefault((str(m["module"]), "embedding" in part), {})[part[-1]] = key
    pairs: list[_Pair] = []
    for (module, embedding), ab in halves.items():
        if set(ab) != {"A", "B"}:
            have = next(iter(ab.values()))
            raise StateMismatchError(f"the adapter has {have!r} but not its {'B' if 'A' in ab else 'A'} half")
        a, b = shapes[ab["A"]], shapes[ab["B"]]
        if len(a) != 2 or len(b) != 2:
            raise UnsupportedStateError(
                f"cannot merge the LoRA of {module!r}: its tensors are {len(a)}-d (only linear and embedding layers)"
            )
        if a[0] != b[1]:
            raise StateMismatchError(f"LoRA of {module!r}: A is {list(a)} and B is {list(b)}; their ranks differ")
        name = module.removeprefix(_PEFT_PREFIX)
        pairs.append(_Pair(module=name, a=ab["A"], b=ab["B"], embedding=embedding))
    return pairs


def _delta_shape(pair: _Pair, a: tuple[int, ...], b: tuple[int, ...], cfg: Mapping[str, JsonValue]) -> tuple[int, int]:
    if pair.embedding or cfg.get("fan_in_fan_out") is True:
        return a[1], b[0]
    return b[0], a[1]


def _check_fits(
    shapes: Mapping[str, tuple[int, ...]],
    cfg: Mapping[str, JsonValue],
    entries: Mapping[str, tuple[str, tuple[int, ...]]],
    *,
    adapter: str,
    base: Snapshot,
) -> list[_Pair]:
    """The adapted modules, once every target is known to exist in the base with the shape of its delta.

    Raises:
        RecordError: not a LoRA config.
        UnsupportedStateError: DoRA, tensors that are not LoRA A/B, a target that is not a float matrix.
        StateMismatchError: a missing target, or shapes that do not fit.
    """
    if not _is_lora(cfg):
        raise RecordError(
            f"{adapter} is a {cfg.get('peft_type')} adapter; only LoRA adapters are merged",
            hint="load it with peft (export_peft_folder)",
        )
    if cfg.get("use_dora") is True:
        raise UnsupportedStateError(f"{adapter} is a DoRA adapter; merging DoRA is not supported")
    pairs = _pairs(shapes)
    missing = [p.target for p in pairs if p.target not in entries]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StateMismatchError(
            f"{adapter} targets {shown}, which base {base.short_id} ({base.model or 'unnamed'}) does not have",
            hint="is this the adapter's base? LoRA names map 'base_model.model.<name>.lora_A…' to '<name>.weight'",
        )
    for pair in pairs:
        dtype, shape = entries[pair.target]
        if dtype not in ("F16", "BF16", "F32", "F64"):
            raise UnsupportedStateError(
                f"cannot merge into {pair.target!r} of base {base.short_id}: its dtype {dtype} is not a float type"
            )
        delta = _delta_shape(pair, shapes[pair.a], shapes[pair.b], cfg)
        if tuple(shape) != delta:
            raise StateMismatchError(
                f"{adapter}: the LoRA delta of {pair.module!r} is {list(delta)}, but the base weight "
                f"{pair.target!r} of {base.short_id} is {list(shape)}",
                hint="is this the adapter's base? (or check fan_in_fan_out in the adapter config)",
            )
    return pairs


def _model_entries(table: TensorTable) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Model tensor name → (dtype, shape) from a tensor table, without reading tensors.

    The model tensors are those directly under the state's ``"model"`` mapping, or under the root mapping.
    """
    tree = table.tree
    pairs: list[Any] = tree.get("$dict", []) if isinstance(tree, dict) else []
    for key, value in pairs:
        if key == "model" and isinstance(value, dict) and "$dict" in value:
            pairs = value["$dict"]
            break
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, value in pairs:
        if isinstance(value, dict) and set(value) == {"$tensor"}:
            entry = table.tensors.get(str(value["$tensor"]))
            if entry is not None:
                out[str(key)] = (entry.dtype, tuple(entry.shape))
    return out


def _model_mapping(state: Any, what: str) -> MutableMapping[str, Any]:
    """The model's weights in a loaded state: ``state["model"]``, or the state itself."""
    if isinstance(state, dict):
        inner = state.get("model")
        return inner if isinstance(inner, dict) else state
    raise StateMismatchError(f"{what} is a {type(state).__name__}, not a mapping of weights")


def _is_numpy(value: Any) -> bool:
    return type(value).__module__ == "numpy"


def _alpha(module: str, cfg: Mapping[str, JsonValue]) -> float:
    """``lora_alpha`` of a module, with ``alpha_pattern`` matched as PEFT matches it."""
    patterns = cfg.get("alpha_pattern")
    if isinstance(patterns, dict):
        for key, value in patterns.items():
            if re.match(rf"(.*\.)?({key})$", module) and isinstance(value, (int, float)):
                return float(value)
    return float(cast(float, cfg["lora_alpha"]))


def _merged_weight(weight: Any, a: Any, b: Any, pair: _Pair, cfg: Mapping[str, JsonValue]) -> Any:
    """``W + scale · B @ A`` (transposed where PEFT transposes), computed in float32 and cast back."""
    import torch

    w = torch.from_numpy(weight) if _is_numpy(weight) else weight
    compute = torch.promote_types(w.dtype, torch.float32)
    delta = b.to(compute) @ a.to(compute)
    if pair.embedding or cfg.get("fan_in_fan_out") is True:
        delta = delta.T
    r = a.shape[0]
    alpha = _alpha(pair.module, cfg)
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") is True else alpha / r
    delta = delta * scale
    return (w.to(compute) + delta).to(w.dtype)
