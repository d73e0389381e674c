"""Adapters over a base snapshot: save adapters, load them merged, merge them, PEFT folders in and out.

An adapter snapshot holds only its adapter tensors and its PEFT config, and names the snapshot it modifies:

- state ``{"model": {name: tensor}}`` with every tensor of the adapter, named as ``adapter_model.safetensors``
  names it (``base_model.model.<module>.lora_A.weight``, ``….lora_embedding_A``, ``….ia3_l``, ``….hada_w1_a``,
  and whole tensors such as a ``modules_to_save`` head ``base_model.model.score.weight`` or embeddings saved with
  ``save_embedding_layers``); no tensor is left out by its name;
- the PEFT config (``peft_type``, ``r``, ``lora_alpha``, ``target_modules``, ``use_rslora``, ``use_dora``,
  ``fan_in_fan_out`` …) attached as ``adapter_config.json`` and copied into ``metadata["adapter_config"]``;
- ``relation="adapter"``, ``parents=[base]`` and ``base=<base id>``, so "which base does this adapter need?"
  always has an answer (a later save of the same adapter on its branch is ``continue`` and keeps ``base``).

Merging follows PEFT's ``set_peft_model_state_dict`` + ``merge_and_unload()``: whole tensors replace the base's
(a resized embedding keeps its new rows), then each adapted module changes as its type says. LoRA (see
``ckpt.lora``): ``W + scale · B @ A`` (transposed for ``fan_in_fan_out`` layers and for embeddings, reshaped for
convolutions), ``scale = lora_alpha / r`` or ``lora_alpha / √r`` with rsLoRA (``alpha_pattern`` and
``rank_pattern`` matched as PEFT matches them), rescaled by the magnitude with DoRA, plus the LoRA bias with
``lora_bias``. IA³, LoHa, LoKr and AdaLoRA: see ``ckpt.adapter_types``. Everything is computed in float32 (float64 for
float64 weights) and cast back to the weight's dtype. Tied weights change together, as in PEFT. Other PEFT
types (VeRA, OFT, BOFT, prompt tuning …), trainable tokens and the like are stored but not merged: merging
them raises ``UnsupportedStateError``, naming the type or the tensor.

torch is imported only by the functions that compute (``load_merged``, ``merge``).

Example:
    >>> from ckpt.adapters import load_merged, save_adapter  # doctest: +SKIP
    >>> lora = save_adapter(store, "chat", get_peft_model_state_dict(peft_model), branch="chat-lora",
    ...                     config=peft_model.peft_config["default"])  # doctest: +SKIP
    >>> merged = load_merged(store, "chat-lora")  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from ckpt import adapter_types, lora
from ckpt.errors import RecordError, RefExistsError, StateMismatchError, UnsupportedStateError
from ckpt.model import Relation, Snapshot, TensorTable
from ckpt.state import is_array

if TYPE_CHECKING:
    from ckpt.store import Framework, Store

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

#: A tensor of ``peft_model.state_dict()`` that carries its adapter's name: ``….lora_A.default.weight`` …
_NAMED_KEY = re.compile(
    r"\.(?P<part>lora_[A-Za-z0-9_]+|modules_to_save|ia3_l|hada_\w+|lokr_\w+)\.(?P<adapter>[^.]+)"
    r"(?P<tail>\.(?:weight|bias))?$"
)
#: An adapter's own tensor, named with its adapter (group ``adapter``) or as the file names it.
_ADAPTER_TENSOR = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_[ABE]|lora_embedding_[AB]|lora_magnitude_vector|ia3_l|hada_(?:w[12]_[ab]|t[12])"
    r"|lokr_(?:w[12](?:_[ab])?|t2))(?:\.(?P<adapter>(?!weight$|bias$)[^.]+))?(?P<tail>\.(?:weight|bias))?$"
)
#: The tensors that make an adapter of each type (the others are companions or whole modules).
_CORE_TENSOR = {
    "LORA": re.compile(r"\.lora_(?:[AB]\.weight|embedding_[AB])$"),
    "IA3": re.compile(r"\.ia3_l$"),
    "LOHA": re.compile(r"\.hada_w[12]_[ab]$"),
    "LOKR": re.compile(r"\.lokr_w[12](?:_[ab])?$"),
    "ADALORA": re.compile(r"\.lora_[ABE]$"),
}
_EXAMPLE_TENSOR = {"LORA": "lora_A.weight", "IA3": "ia3_l", "LOHA": "hada_w1_a", "LOKR": "lokr_w1", "ADALORA": "lora_E"}
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
    """Save an adapter (LoRA, IA³, LoHa, LoKr, AdaLoRA) over a base snapshot: only its tensors and config are stored.

    Every tensor handed in is stored, under the name PEFT writes to ``adapter_model.safetensors``, so the
    snapshot exports as a PEFT folder: LoRA pairs and their DoRA magnitudes and biases, IA³ vectors, LoHa and
    LoKr factors, ``modules_to_save`` modules, saved (resized) embeddings, and PEFT tensors ckpt does not merge
    (trainable tokens …). Targets and whole tensors are checked against the base's tensor table (no tensor bytes
    are read) before anything is written.

    On a new branch the snapshot's relation is ``adapter`` and its parent the base. On a branch whose head is
    an adapter of the same base (an adapter still training), it is ``continue`` with that head as parent. In
    both cases ``base`` records the base's id.

    Args:
        store: the store.
        base_rev: the snapshot the adapter modifies (branch, tag, id …).
        adapter_state: the adapter tensors by PEFT name: ``get_peft_model_state_dict(peft_model)`` (pass
            ``save_embedding_layers=True`` when the embeddings were resized), or ``{"model": that}``. Every
            tensor in it is stored. A dict of adapter tensors alone that carry the adapter's name
            (``….lora_A.default.weight``, ``….ia3_l.default`` …) is accepted too, the name taken out.
        branch: the adapter's branch: new, or one whose head is an adapter of the same base.
        config: the PEFT config: a ``peft.LoraConfig``, ``IA3Config``, ``LoHaConfig``, ``LoKrConfig`` or
            ``AdaLoraConfig`` (anything with ``to_dict()``) or the mapping of ``adapter_config.json``.
            ``peft_type`` defaults to ``LORA``, which needs ``r`` and ``lora_alpha`` (LoHa and LoKr: ``r`` and
            ``alpha``; AdaLoRA: ``init_r`` and ``lora_alpha``).
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
        RecordError: the config is of another type (import such an adapter's folder instead), or is malformed
            (a field of the wrong type, ``r`` not a positive integer, a pattern key outside the subset
            ``ckpt.lora.compile_pattern`` accepts); or ``metadata`` uses the reserved key.
        UnsupportedStateError: ``peft_model.state_dict()`` (adapter-named tensors next to base weights): pass
            ``get_peft_model_state_dict(peft_model)``.
        StateMismatchError: no tensor of the adapter's type; a ``lora_A`` without its ``lora_B`` (or another
            incomplete set); a rank that is 0 or not the config's; a target the base lacks or whose shape does
            not fit; a DoRA magnitude or LoRA bias the config does not announce; a whole tensor the base lacks.
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
    kind = adapter_types.peft_type(cfg)
    if kind not in adapter_types.MERGED_TYPES:
        raise RecordError(
            f"save_adapter saves LoRA, IA3, LoHa, LoKr and AdaLoRA adapters; this config is {kind}",
            hint="save the folder with peft_model.save_pretrained(folder) and use import_peft_folder (stored as is)",
        )
    tensors = _adapter_tensors(adapter_state, kind)
    shapes = {name: tuple(int(d) for d in t.shape) for name, t in tensors.items()}
    _plan(store, base, shapes, cfg, adapter="the adapter")
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
    return _config_dict(_parse_json(data, f"{ADAPTER_CONFIG_FILE} of {snap.short_id}"), checked=False)


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
    """Load an adapter snapshot merged into its base: the base's state tree with the adapter applied.

    LoRA (with rsLoRA, DoRA, ``lora_bias``, on linear, embedding and conv layers), IA³, LoHa, LoKr and AdaLoRA
    are merged. The result equals what PEFT's ``merge_and_unload()`` gives on the same weights, within the
    tolerance of the weights' dtype (the delta is computed in float32 and the sum cast back once, so dtypes are
    preserved).
    Whole tensors of the adapter (``modules_to_save``, saved embeddings) replace the base's first, with their
    own shapes (a resized vocabulary stays resized). Tied weights change together, as PEFT's in-place merge
    changes a tied parameter. An adapter over an adapter is merged recursively.

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
        RecordError: the snapshot is not an adapter, or its config is malformed.
        StateMismatchError: a target module is missing from the base, or shapes or ranks do not fit (names them).
        UnsupportedStateError: the adapter is of a type ckpt does not merge (VeRA, OFT, BOFT, prompt tuning …),
            or holds tensors or sets options that ckpt does not merge (trainable tokens, ``layer_replication`` …);
            the message names the type, the option or the tensor.
        MissingObjectError: the adapter or its base was pruned.
        CorruptChunkError: a chunk does not match its digest.

    Example:
        >>> state = load_merged(store, "chat-lora")  # doctest: +SKIP
        >>> model.load_state_dict(state["model"])  # doctest: +SKIP
    """
    snap = store.resolve(rev)
    base = store.get(base_of(snap))
    cfg = adapter_config(store, snap.id)
    what = f"adapter {snap.short_id}"
    shapes = {name: shape for name, (_, shape) in _model_entries(store.table(snap.id))[0].items()}
    adapter_types.check_type(cfg, what, shapes)
    settings = _settings(cfg, what)
    found = _plan(store, base, shapes, cfg, adapter=what)  # before any byte is read
    if isinstance(found, lora.Plan) and isinstance(settings, lora.LoraSettings):
        lora.check_mergeable(found, settings, what)
    elif isinstance(found, adapter_types.TypePlan) and isinstance(settings, adapter_types.TypeSettings):
        adapter_types.check_mergeable(found, settings, what)

    adapter = _model_mapping(store.load(snap.id, verify=verify, framework="torch"), what)
    if _is_adapter(base):
        state = load_merged(store, base.id, verify=verify, framework=framework, into=into, progress=progress)
    else:
        state = store.load(base.id, verify=verify, framework=framework, into=into, progress=progress)
    weights = _model_mapping(state, f"base {base.short_id}")
    in_place = [id(t) for t in into.values()] if into else ()
    if isinstance(found, lora.Plan) and isinstance(settings, lora.LoraSettings):
        lora.merge_into(weights, adapter, found, settings, in_place=in_place)
    elif isinstance(found, adapter_types.TypePlan) and isinstance(settings, adapter_types.TypeSettings):
        adapter_types.merge_into(weights, adapter, found, settings, in_place=in_place)
    return state


def merge(
    store: Store,
    adapter_rev: str,
    *,
    branch: str,
    model: str | None = None,
    message: str | None = None,
    metadata: Mapping[str, JsonValue] | None = None,
    files: Mapping[str, bytes] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Snapshot:
    """Save an adapter merged into its base as a new snapshot: relation ``merge``, parents adapter then base.

    Only the merged tensors are new bytes: every tensor the adapter does not touch is the base's, shared by
    content. The base's attached files (``config.json``, tokenizer files …) come along, so the merged snapshot
    exports as a model folder that ``from_pretrained`` loads. Tied weights stay tied (recorded in the table)
    and change together, as PEFT's ``merge_and_unload()`` changes a tied parameter in place: a LoRA on
    ``lm_head`` of a model with ``tie_word_embeddings`` changes the input embedding too, and the config stays
    tied. (To keep the embedding, untie the model before training the adapter.)

    An adapter that changes a tensor's shape (embeddings saved after ``resize_token_embeddings``) makes the
    base's ``config.json`` wrong for the merged model: pass ``files`` with the resized model's files then.

    Args:
        store: the store.
        adapter_rev: the adapter snapshot.
        branch: a new branch for the merged model.
        model: the merged model's name; default: the adapter's.
        message: a note; default ``merge <adapter> into <base>``.
        metadata: your own JSON metadata.
        files: the merged model's attached files (``{"config.json": model.config.to_json_string().encode(),
            …}``); default: the base's.
        progress: called with byte counts as chunks are written.

    Returns:
        The merged snapshot.

    Raises:
        RefExistsError: the branch exists.
        StateMismatchError: the merge changes a tensor's shape and the base's ``config.json`` would come along
            (pass ``files``); as ``load_merged``.
        RecordError, UnsupportedStateError: as ``load_merged``.

    Example:
        >>> snap = merge(store, "chat-lora", branch="chat-merged", model="tiny-llama-chat-merged")  # doctest: +SKIP
        >>> snap.relation, len(snap.parents)  # doctest: +SKIP
        ('merge', 2)
    """
    snap = store.resolve(adapter_rev)
    base = store.get(base_of(snap))
    _require_new_branch(store, branch, hint="merge onto a new branch")
    state = load_merged(store, snap.id)
    if files is None:
        files = {
            name: data
            for name, data in store.files(base.id).items()
            if not name.startswith(_RESERVED_PREFIX) and not name.endswith(_INDEX_SUFFIX)
        }
        entries, _ = _model_entries(store.table(_root(store, base).id))
        weights = _model_mapping(state, "the merged state")
        reshaped = [
            f"{name} {list(entries[name][1])} → {list(t.shape)}"
            for name, t in weights.items()
            if name in entries and tuple(t.shape) != entries[name][1]
        ]
        if reshaped and "config.json" in files:
            raise StateMismatchError(
                f"merging adapter {snap.short_id} changes {', '.join(reshaped[:3])}: the base's config.json "
                "does not describe the merged model",
                hint="pass files={'config.json': resized_model.config.to_json_string().encode(), …} (with the "
                "tokenizer files that go with the new vocabulary)",
            )
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
        metadata: your own JSON metadata; ``"adapter_config"`` and ``"safetensors_layout"`` are ckpt's.
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
    from ckpt.folders import read_file
    from ckpt.hf import MAX_SIDE_FILE_SIZE, import_folder, plan_import
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
    plan = plan_import(src)  # before reading anything: links leaving the folder, pickles, odd files are refused
    config_file = next((f for f in plan.files if f.path == ADAPTER_CONFIG_FILE), None)
    if config_file is None:
        raise RecordError(
            f"{src} has no {ADAPTER_CONFIG_FILE}", hint="a PEFT adapter folder has one beside its weights"
        )
    config_bytes = read_file(config_file, limit=MAX_SIDE_FILE_SIZE)
    cfg = _config_dict(_parse_json(config_bytes, str(config_path)))
    base = store.resolve(base_rev)
    if weights_path.is_file() and adapter_types.peft_type(cfg) in adapter_types.MERGED_TYPES:
        # every tensor is stored as it is; the adapter's tensors and whole tensors are checked against the base
        # (tensors ckpt does not merge, such as trainable tokens, are stored and only merging them is refused)
        _, header = read_header(weights_path)
        shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
        _plan(store, base, shapes, cfg, adapter=str(src))
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


def _config_dict(config: Any, *, checked: bool = True) -> dict[str, JsonValue]:
    """The JSON of a PEFT config, as ``adapter_config.json`` holds it (sets become sorted lists).

    A config of a type ckpt merges is checked as ``ckpt.lora.lora_settings`` or
    ``ckpt.adapter_types.type_settings`` checks it (unless ``checked=False``: a stored config is checked where it
    is used).

    Raises:
        RecordError: not a mapping, a value JSON cannot hold, or a malformed LoRA config.
    """
    raw = config.to_dict() if callable(getattr(config, "to_dict", None)) else config
    if not isinstance(raw, Mapping):
        raise RecordError(
            f"an adapter config must be a PEFT config or a mapping, got {type(config).__name__}",
            hint="pass peft_model.peft_config['default'] or the dict of adapter_config.json",
        )
    try:
        out = {str(k): _json_value(v, str(k)) for k, v in raw.items()}
    except RecursionError:
        raise RecordError("the adapter config is nested too deeply") from None
    out.setdefault("peft_type", "LORA")
    if not isinstance(out["peft_type"], str):
        raise RecordError(f"adapter config field 'peft_type' must be a string, got {out['peft_type']!r}")
    if checked and adapter_types.peft_type(out) in adapter_types.MERGED_TYPES:
        _settings(out, "the adapter config")
    return out


def _settings(cfg: Mapping[str, JsonValue], what: str) -> lora.LoraSettings | adapter_types.TypeSettings:
    """The checked config of an adapter ckpt merges.

    Raises:
        RecordError: a malformed config (the message starts with ``what``).
        UnsupportedStateError: a type ckpt does not merge.
    """
    try:
        if adapter_types.peft_type(cfg) == "LORA":
            return lora.lora_settings(cfg)
        return adapter_types.type_settings(cfg)
    except RecordError as e:
        raise RecordError(f"{what}: {e}", hint=e.hint) from e


def _plan(
    store: Store, base: Snapshot, shapes: Mapping[str, tuple[int, ...]], cfg: Mapping[str, JsonValue], *, adapter: str
) -> lora.Plan | adapter_types.TypePlan:
    """What the adapter's tensors do to its base, checked against the base's table (no tensor byte is read).

    A target matrix whose bytes are also another model tensor's, not recorded as tied to it, is refused: it is a
    tie that an older table did not record (a merge would change one of the two and leave the other), or a copy.
    """
    table = store.table(_root(store, base).id)
    entries, ties = _model_entries(table)
    label = f"{base.short_id} ({base.model or 'unnamed'})"
    settings = _settings(cfg, adapter)
    found: lora.Plan | adapter_types.TypePlan
    if isinstance(settings, lora.LoraSettings):
        found = lora.plan(shapes, settings, entries, ties, adapter=adapter, base=label)
    else:
        found = adapter_types.plan(shapes, settings, entries, ties, adapter=adapter, base=label)
    paths = _model_paths(table)
    tied = {name: set(group) for group in ties for name in group}
    owners: dict[tuple[Any, ...], list[str]] = {}
    for name, path in paths.items():
        entry = table.tensors[path]
        if entry.chunks or entry.shards:
            owners.setdefault((entry.chunks, entry.shards), []).append(name)
    for target in found.targets:
        if len(entries[target][1]) < 2:
            continue  # vectors (biases, norms) are often equal by initialisation (zeros, ones); matrices are not
        target_entry = table.tensors[paths[target]]
        owned = owners.get((target_entry.chunks, target_entry.shards), [])
        others = [n for n in owned if n not in tied.get(target, {target})]
        if others:
            raise StateMismatchError(
                f"{adapter} changes {target!r}, whose bytes base {label} also holds as {others[0]!r} without "
                "recording them as tied: merging would change one and leave the other",
                hint="if they are tied weights, save the base again from the model (store.save({'model': "
                "model.state_dict()})) so that ckpt records the tie; if they are copies, make them differ",
            )
    return found


def _model_paths(table: TensorTable) -> dict[str, str]:
    """Model tensor name → table path."""
    tree = table.tree
    pairs: list[Any] = tree.get("$dict", []) if isinstance(tree, dict) else []
    for key, value in pairs:
        if key == "model" and isinstance(value, dict) and "$dict" in value:
            pairs = value["$dict"]
            break
    return {
        str(key): str(value["$tensor"])
        for key, value in pairs
        if isinstance(value, dict) and set(value) == {"$tensor"} and str(value["$tensor"]) in table.tensors
    }


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
    except RecursionError:
        raise RecordError(f"{what} is nested too deeply") from None


def _with_config(metadata: Mapping[str, JsonValue] | None, cfg: dict[str, JsonValue]) -> dict[str, JsonValue]:
    meta = dict(metadata or {})
    if CONFIG_KEY in meta:
        raise RecordError(f"metadata key {CONFIG_KEY!r} is reserved for the adapter's PEFT config")
    meta[CONFIG_KEY] = cfg
    return meta


# -- adapter tensors ---------------------------------------------------------------------------------


def _adapter_name(key: str) -> str | None:
    """The adapter name a tensor of ``peft_model.state_dict()`` carries (``lora_A.default.weight``), if any."""
    m = _NAMED_KEY.search(key)
    if m is None or (m["adapter"] in ("weight", "bias") and m["tail"] is None):
        return None
    return m["adapter"]


def _file_name(key: str) -> str | None:
    """The name PEFT writes to ``adapter_model.safetensors`` for an adapter tensor of ``peft_model.state_dict()``
    (``….lora_A.default.weight`` → ``….lora_A.weight``, ``….lora_magnitude_vector.default.weight`` →
    ``….lora_magnitude_vector``, ``….ia3_l.default`` → ``….ia3_l``); ``None`` for a tensor that is not an
    adapter's own (a base weight)."""
    m = _ADAPTER_TENSOR.match(key)
    if m is None:
        return None
    part, tail = m["part"], m["tail"] or ""
    if part == "lora_magnitude_vector":
        tail = ""
    return f"{m['module']}.{part}{tail}"  # AdaLoRA's lora_A/B/E are parameters: no ".weight"


def _adapter_tensors(adapter_state: Mapping[str, Any], kind: str = "LORA") -> dict[str, Any]:
    """Every tensor of an adapter state dict, by the name PEFT writes to ``adapter_model.safetensors``.

    ``get_peft_model_state_dict(peft_model)`` is taken as it is: every tensor in it is the adapter's (LoRA
    pairs, DoRA magnitudes, IA³ vectors, LoHa, LoKr and AdaLoRA factors, ``modules_to_save`` heads, embeddings
    saved with ``save_embedding_layers`` …), so every one is stored. A dict whose tensors carry an adapter name
    (``….lora_A.default.weight``, as ``peft_model.state_dict()`` has them) is accepted when it holds the
    adapter's own tensors only (the name is taken out); next to base weights or modules it is refused, since
    which of its tensors are the adapter's cannot be told by names.

    Raises:
        StateMismatchError: not a mapping of tensors; no tensor of the adapter's type; several adapters; two
            tensors with one name.
        UnsupportedStateError: a state dict with adapter names and other tensors (names one).
    """
    if not isinstance(adapter_state, Mapping):
        raise StateMismatchError(f"adapter_state must be a mapping of tensors, got {type(adapter_state).__name__}")
    inner = adapter_state.get("model")
    if len(adapter_state) == 1 and isinstance(inner, Mapping):
        adapter_state = inner
    for key, value in adapter_state.items():
        if not isinstance(key, str) or not is_array(value):
            raise StateMismatchError(f"adapter_state must map names to tensors; {key!r} holds {type(value).__name__}")
    names = {key: _adapter_name(key) for key in adapter_state}
    adapter_names = {n for n in names.values() if n is not None}
    if len(adapter_names) > 1:
        raise StateMismatchError(
            f"adapter_state holds several adapters ({', '.join(sorted(adapter_names))})",
            hint="pass get_peft_model_state_dict(peft_model, adapter_name=...) for one of them",
        )
    out: dict[str, Any] = {}
    for key, value in adapter_state.items():
        name = key
        if adapter_names:
            renamed = _file_name(key)
            if renamed is None:
                raise UnsupportedStateError(
                    f"adapter_state mixes {key!r} with tensors named after adapter "
                    f"{next(iter(adapter_names))!r} (as peft_model.state_dict() has them): ckpt stores every tensor "
                    "it is given, and cannot tell by names which of these are the adapter's",
                    hint="pass get_peft_model_state_dict(peft_model) (with save_embedding_layers=True if the "
                    "embeddings were resized); or save the folder with peft_model.save_pretrained(folder) and use "
                    "import_peft_folder",
                )
            name = renamed
        if name in out:
            raise StateMismatchError(f"two adapter tensors would both be saved as {name!r}")
        out[name] = value
    core = _CORE_TENSOR[kind]
    if not any(core.search(k) for k in out):
        example = _EXAMPLE_TENSOR[kind]
        raise StateMismatchError(
            f"adapter_state holds no {'LoRA' if kind == 'LORA' else kind} tensor (names like '….{example}')",
            hint="pass get_peft_model_state_dict(peft_model)",
        )
    return out


def _model_entries(table: TensorTable) -> tuple[dict[str, tuple[str, tuple[int, ...]]], list[list[str]]]:
    """Model tensor name → (dtype, shape) from a tensor table, without reading tensors, and the tied groups.

    The model tensors are those directly under the state's ``"model"`` mapping, or under the root mapping.
    """
    paths = _model_paths(table)
    out = {name: (table.tensors[path].dtype, tuple(table.tensors[path].shape)) for name, path in paths.items()}
    names = {path: name for name, path in paths.items()}
    ties = [[names[p] for p in group if p in names] for group in table.tied]
    return out, [group for group in ties if len(group) > 1]


def _model_mapping(state: Any, what: str) -> MutableMapping[str, Any]:
    """The model's weights in a loaded state: ``state["model"]``, or the state itself."""
    if isinstance(state, dict):
        inner = state.get("model")
        return inner if isinstance(inner, dict) else state
    raise StateMismatchError(f"{what} is a {type(state).__name__}, not a mapping of weights")
