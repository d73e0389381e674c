"""Adapter snapshots: saving them over a base, reading their config, and finding the base they need.

An adapter snapshot holds only its adapter tensors and its PEFT config, and names the snapshot it modifies
(see ``ckpt.lineage``). Before anything is written, its tensors are checked against the base's tensor table
(``fit_to_base``: names and shapes only, no tensor byte is read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from ckpt.errors import RecordError, RefExistsError, StateMismatchError
from ckpt.lineage import _lora, _types
from ckpt.lineage._config import (
    ADAPTER_CONFIG_FILE,
    CONFIG_KEY,
    LAYERS_KEY,
    MERGED_TYPES,
    LayerFacts,
    LoraSettings,
    merge_settings,
    peft_type,
)
from ckpt.lineage._config_json import config_bytes, config_dict, parse_json, with_config
from ckpt.lineage._layers import layers_of_model
from ckpt.lineage._layers import record as record_layers
from ckpt.lineage._names import adapter_tensors
from ckpt.model import Relation, Snapshot, TensorTable
from ckpt.state import model_tensors

if TYPE_CHECKING:
    from ckpt.store import Progress, Store

__all__ = [
    "AdapterRecord",
    "adapter_config",
    "adapter_record",
    "base_of",
    "fit_to_base",
    "is_adapter",
    "model_entries",
    "read_config",
    "root_of",
    "save_adapter",
]


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
    peft_model: Any = None,
    progress: Progress | None = None,
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
        metadata: your own JSON metadata; the keys ``"adapter_config"`` and ``"adapter_layers"`` are ckpt's.
        peft_model: the ``PeftModel`` the adapter was trained in (or its base model), to read each layer's
            orientation from: PEFT decides ``fan_in_fan_out`` per layer (true on a transformers ``Conv1D``, false on
            an ``nn.Linear``), and a square weight's shape cannot tell (see ``ckpt.lineage._layers``). Needed only
            when the base has layers of both kinds; a save that cannot tell without it is refused.
        progress: called with byte counts as chunks are written.

    Returns:
        The adapter snapshot. Its metadata records, beside the config, each adapted module's orientation, rank
        and alpha (``"adapter_layers"``: ``alpha_pattern``/``rank_pattern`` matched in the config's order).

    Raises:
        RecordError: the config is of another type (import such an adapter's folder instead), or is malformed
            (a field of the wrong type, ``r`` not a positive integer, a pattern key outside the subset
            ``_patterns.compile_pattern`` accepts); or ``metadata`` uses the reserved key.
        UnsupportedStateError: ``peft_model.state_dict()`` (adapter-named tensors next to base weights): pass
            ``get_peft_model_state_dict(peft_model)``.
        StateMismatchError: no tensor of the adapter's type; a ``lora_A`` without its ``lora_B`` (or another
            incomplete set); a rank that is 0 or not the config's; a target the base lacks or whose shape does
            not fit; a DoRA magnitude or LoRA bias the config does not announce; a whole tensor the base lacks; a
            square linear target whose orientation cannot be told (pass ``peft_model``).
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
    cfg = config_dict(config)
    kind = peft_type(cfg)
    if kind not in MERGED_TYPES:
        raise RecordError(
            f"save_adapter saves LoRA, IA3, LoHa, LoKr and AdaLoRA adapters; this config is {kind}",
            hint="save the folder with peft_model.save_pretrained(folder) and use import_peft_folder (stored as is)",
        )
    tensors = adapter_tensors(adapter_state, kind)
    shapes = {name: tuple(int(d) for d in t.shape) for name, t in tensors.items()}
    layers = layers_of_model(peft_model) if peft_model is not None else None
    record = adapter_record(
        store, base, cfg, branch=branch, metadata=metadata, shapes=shapes, adapter="the adapter", layers=layers
    )
    return store.save(
        {"model": tensors},
        branch,
        parents=record.parents,
        relation=record.relation,
        model=model or record.default_model,
        step=step,
        epoch=epoch,
        metrics=metrics,
        message=message,
        metadata=record.metadata,
        files={ADAPTER_CONFIG_FILE: config_bytes(cfg)},
        base=base.id,
        progress=progress,
    )


def adapter_config(store: Store, rev: str) -> dict[str, JsonValue]:
    """The PEFT config of an adapter snapshot: its ``adapter_config.json`` (in the file's key order), else
    ``metadata["adapter_config"]`` (whose keys canonical JSON sorted).

    Raises:
        RecordError: the snapshot is not an adapter, or has no readable adapter config.
    """
    snap = store.resolve(rev)
    base_of(snap)
    data = store.files(snap.id).get(ADAPTER_CONFIG_FILE)
    if data is not None:  # the file keeps the config's key order (pattern keys match in order); the record sorts
        return config_dict(parse_json(data, f"{ADAPTER_CONFIG_FILE} of {snap.short_id}"), checked=False)
    recorded = snap.metadata.get(CONFIG_KEY)
    if isinstance(recorded, dict):
        return dict(recorded)
    raise RecordError(f"adapter snapshot {snap.short_id} has no {ADAPTER_CONFIG_FILE} and no recorded config")


def read_config(data: bytes, what: str) -> dict[str, JsonValue]:
    """An ``adapter_config.json`` read and checked (as ``save_adapter`` checks its ``config``).

    Raises:
        RecordError: not JSON, not an object, or a malformed config of a type ckpt merges (``what`` names it).
    """
    return config_dict(parse_json(data, what))


# -- the adapter's line ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterRecord:
    """The record fields of an adapter about to be saved, once it has been checked against its base.

    Attributes:
        parents: the base (a new branch) or the branch's head (an adapter still training).
        relation: ``adapter`` or ``continue``.
        default_model: the model name when none is given (the base's name + ``-<peft type>``), if any.
        metadata: the user's metadata with the config under ``CONFIG_KEY``.
    """

    parents: list[str]
    relation: Relation
    default_model: str | None
    metadata: dict[str, JsonValue]


def adapter_record(
    store: Store,
    base: Snapshot,
    cfg: dict[str, JsonValue],
    *,
    branch: str,
    metadata: Mapping[str, JsonValue] | None,
    shapes: Mapping[str, tuple[int, ...]] | None,
    adapter: str,
    layers: Mapping[str, LayerFacts] | None = None,
) -> AdapterRecord:
    """Check an adapter against its base (``fit_to_base``, when ``shapes`` are given) and its branch.

    Args:
        store: the store.
        base: the snapshot the adapter modifies.
        cfg: the adapter's PEFT config (JSON, as ``config_dict`` gives it).
        branch: the adapter's branch: new, or one whose head is an adapter of the same base.
        metadata: the user's metadata.
        shapes: adapter tensor name → shape, to check against the base; ``None``: not checked (a type ckpt
            does not merge).
        adapter: the adapter, for messages.
        layers: module → facts read from the live model (``_layers.layers_of_model``), if one was given.

    Returns:
        Parents, relation, default model name and metadata of the adapter's snapshot (with the config and, when
        ``shapes`` are given, each adapted module's facts under ``"adapter_layers"``).

    Raises:
        RecordError: ``metadata`` uses the reserved key; a malformed config.
        StateMismatchError: a tensor that does not fit the base.
        RefExistsError: ``branch`` exists and its head is not an adapter of ``base``.
    """
    meta = with_config(metadata, cfg)
    if shapes is not None:
        found = fit_to_base(store, base, shapes, cfg, adapter=adapter, layers=layers)
        meta[LAYERS_KEY] = record_layers(found_facts(found, model_entries(store.table(root_of(store, base).id))[0]))
    head_id = store.branches().get(branch)
    if head_id is None:
        kind = str(cfg.get("peft_type") or "adapter").lower()
        return AdapterRecord([base.id], "adapter", f"{base.model}-{kind}" if base.model else None, meta)
    head = store.get(head_id)
    if head.base == base.id:
        return AdapterRecord([head.id], "continue", None, meta)
    what = f"an adapter of {head.base[:12]}" if head.base else f"a {head.relation} snapshot"
    raise RefExistsError(
        f"branch {branch!r} exists and its head {head.short_id} is {what}, not an adapter of {base.short_id}",
        hint="save the adapter on a new branch",
    )


def is_adapter(snap: Snapshot) -> bool:
    """Whether a snapshot is an adapter: it records a ``base``, or its relation is ``adapter``."""
    return snap.base is not None or snap.relation == "adapter"


def root_of(store: Store, snap: Snapshot) -> Snapshot:
    """The model under a stack of adapters (``snap`` itself if it is not an adapter); ids rule out cycles."""
    while is_adapter(snap):
        snap = store.get(base_of(snap))
    return snap


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
        hint="it is not an adapter: load it with store.load(rev), not load_merged",
    )


def fit_to_base(
    store: Store,
    base: Snapshot,
    shapes: Mapping[str, tuple[int, ...]],
    cfg: Mapping[str, JsonValue],
    *,
    adapter: str,
    layers: Mapping[str, LayerFacts] | None = None,
) -> _lora.Plan | _types.TypePlan:
    """What the adapter's tensors do to its base, checked against the base's table (no tensor byte is read).

    A target matrix whose bytes are also another model tensor's, not recorded as tied to it, is refused: it is a
    tie that an older table did not record (a merge would change one of the two and leave the other), or a copy.

    Args:
        store: the store.
        base: the snapshot the adapter modifies (an adapter itself: its root model is checked).
        shapes: adapter tensor name (as ``adapter_model.safetensors`` names it) → shape.
        cfg: the adapter's PEFT config (JSON).
        adapter: the adapter, for messages.
        layers: each module's facts, recorded with the adapter or read from the model (``_layers``): used
            before the config's patterns and flag.

    Raises:
        RecordError: a malformed config.
        StateMismatchError: a tensor that does not fit the base (see ``_lora.plan`` and ``_types.plan``), or a
            target whose bytes another model tensor holds untied.
        UnsupportedStateError: a type ckpt does not merge.
    """
    table = store.table(root_of(store, base).id)
    entries, ties = model_entries(table)
    label = f"{base.short_id} ({base.model or 'unnamed'})"
    settings = merge_settings(cfg, adapter)
    if layers:
        settings = replace(settings, layers=dict(layers))
    found: _lora.Plan | _types.TypePlan
    if isinstance(settings, LoraSettings):
        found = _lora.plan(shapes, settings, entries, ties, adapter=adapter, base=label)
    else:
        found = _types.plan(shapes, settings, entries, ties, adapter=adapter, base=label)
    paths = _model_paths(table)
    tied = {name: set(group) for group in ties for name in group}
    owners: dict[tuple[Any, ...], list[str]] = {}
    for name, path in paths.items():
        entry = table.tensors[path]
        if entry.chunks or entry.shards:
            owners.setdefault((entry.chunks, entry.shards, entry.pack), []).append(name)
    for target in found.targets:
        if target in found.whole and settings.replaces_module(target):
            continue  # a modules_to_save copy replaces this name alone, whatever else holds the same bytes
        if len(entries[target][1]) < 2:
            continue  # vectors (biases, norms) are often equal by initialisation (zeros, ones); matrices are not
        target_entry = table.tensors[paths[target]]
        owned = owners.get((target_entry.chunks, target_entry.shards, target_entry.pack), [])
        others = [n for n in owned if n not in tied.get(target, {target})]
        if others:
            raise StateMismatchError(
                f"{adapter} changes {target!r}, whose bytes base {label} also holds as {others[0]!r} without "
                "recording them as tied: merging would change one and leave the other",
                hint="if they are tied weights, save the base again from the model (store.save({'model': "
                "model.state_dict()})) so that ckpt records the tie; if they are copies, make them differ",
            )
    return found


def found_facts(
    found: _lora.Plan | _types.TypePlan, entries: Mapping[str, tuple[str, tuple[int, ...]]]
) -> dict[str, LayerFacts]:
    """Each adapted module's orientation, rank and alpha, as the merge resolved them (recorded at save time)."""
    if isinstance(found, _lora.Plan):
        return {
            p.module: LayerFacts(
                fan_in_fan_out=None if p.embedding or p.conv else p.transposed, r=p.rank, alpha=p.alpha
            )
            for p in found.pairs
        }
    if found.peft_type in ("LOHA", "LOKR"):
        return {e.module: LayerFacts(r=e.rank, alpha=e.alpha) for e in found.edits}
    return {e.module: LayerFacts(fan_in_fan_out=e.transposed) for e in found.edits if len(entries[e.target][1]) == 2}


def _model_paths(table: TensorTable) -> dict[str, str]:
    """Model tensor name → table path (``ckpt.state.model_tensors``), for the tensors the table holds."""
    return {name: path for name, path in model_tensors(table.tree).items() if path in table.tensors}


def model_entries(table: TensorTable) -> tuple[dict[str, tuple[str, tuple[int, ...]]], list[list[str]]]:
    """Model tensor name → (dtype, shape) from a tensor table, without reading tensors, and the tied groups.

    The model tensors are those directly under the state's ``"model"`` mapping, or under the root mapping.
    """
    paths = _model_paths(table)
    out = {name: (table.tensors[path].dtype, tuple(table.tensors[path].shape)) for name, path in paths.items()}
    names = {path: name for name, path in paths.items()}
    ties = [[names[p] for p in group if p in names] for group in table.tied]
    return out, [group for group in ties if len(group) > 1]
