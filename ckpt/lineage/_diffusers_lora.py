"""diffusers LoRAs as adapter snapshots over a pipeline snapshot: saved, and loaded merged.

A LoRA that ``save_lora_weights`` writes (``pytorch_lora_weights.safetensors``) is held as an adapter snapshot:

- state ``{component: {name: tensor}}``, each tensor under the name the file gives it without the component
  prefix (``{"unet": {"down_blocks.0….to_q.lora_A.weight": …}}``);
- ``metadata["diffusers_lora"]``: ``{"configs": {component: LoraConfig as JSON}, "file": <weights file name>,
  "metadata": <whether the file carried lora_adapter_metadata>}``;
- relation ``adapter``, parent and ``base`` the pipeline snapshot (a later save on its branch: ``continue``).

``load_merged`` (this module's ``load_merged_lora``) gives the pipeline's state with the LoRA merged as
diffusers' ``fuse_lora()`` merges it. The LoRA file itself is read and written by ``ckpt.interop``.
torch is imported only where tensors are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from ckpt.errors import RecordError, RefExistsError, UnsupportedStateError
from ckpt.lineage._diffusers_names import component_paths, split_lora
from ckpt.lineage._diffusers_plan import LORA_WEIGHTS_FILE, LoraPlan, merge_lora, plan_lora
from ckpt.model import Relation, Snapshot, TensorTable

if TYPE_CHECKING:
    from ckpt.store import Framework, Store

__all__ = ["DIFFUSERS_LORA_KEY", "is_diffusers_lora", "load_merged_lora", "save_diffusers_lora"]

#: Snapshot metadata key of a diffusers LoRA: its per-component configs and its file's name.
DIFFUSERS_LORA_KEY = "diffusers_lora"


def is_diffusers_lora(snap: Snapshot) -> bool:
    """Whether a snapshot is a diffusers LoRA (``save_diffusers_lora``, ``ckpt.interop.import_diffusers_lora``)."""
    return isinstance(snap.metadata.get(DIFFUSERS_LORA_KEY), dict) and snap.base is not None


def save_diffusers_lora(
    store: Store,
    base_rev: str,
    lora_state_dict: Mapping[str, Any],
    *,
    branch: str,
    configs: Mapping[str, Any] | None = None,
    model: str | None = None,
    step: int | None = None,
    epoch: int | float | None = None,
    metrics: Mapping[str, float] | None = None,
    message: str | None = None,
    metadata: Mapping[str, JsonValue] | None = None,
    files: Mapping[str, bytes] | None = None,
    progress: Callable[[int], None] | None = None,
    _file_metadata: Mapping[str, JsonValue] | None = None,
    _file_name: str = LORA_WEIGHTS_FILE,
) -> Snapshot:
    """Save a diffusers LoRA over a pipeline snapshot: only its tensors and configs are stored (relation ``adapter``).

    Everything is checked against the base's tensor table (components, target modules, ranks, shapes) before
    anything is written.

    Args:
        store: the store.
        base_rev: the pipeline snapshot the LoRA modifies.
        lora_state_dict: what ``save_lora_weights`` writes: ``{"unet.<module>.lora_A.weight": tensor, …,
            "text_encoder.<module>.lora_A.weight": …}``, or ``{"unet": get_peft_model_state_dict(pipe.unet),
            "text_encoder": …}``.
        branch: a new branch, or one whose head is a LoRA of the same base (then the relation is ``continue``).
        configs: component → ``LoraConfig`` (or its dict), as ``unet_lora_adapter_metadata`` takes it; default:
            what diffusers infers from the tensors (scale 1, see the module docstring).
        model: the adapter's name; default: the base's name + ``-lora``.
        step: training step.
        epoch: training epoch.
        metrics: named numbers.
        message: a note.
        metadata: your own JSON metadata; the key ``"diffusers_lora"`` is ckpt's.
        files: files to attach (a model card ``README.md`` …).
        progress: called with byte counts as chunks are written.

    Returns:
        The adapter snapshot.

    Raises:
        StateMismatchError, UnsupportedStateError, RecordError: as ``split_lora`` and ``plan_lora``; or the
            reserved metadata key.
        RefExistsError: ``branch`` exists and its head is not a LoRA of this base.
        RevisionError: ``base_rev`` does not resolve.

    Example:
        >>> ckpt.interop.import_folder(store, "tiny-sd/")  # doctest: +SKIP
        >>> save_diffusers_lora(store, "main", {"unet": get_peft_model_state_dict(pipe.unet)}, branch="style",
        ...           configs={"unet": pipe.unet.peft_config["default"]})  # doctest: +SKIP
    """
    base = store.resolve(base_rev)
    if base.base is not None or base.relation == "adapter":
        raise UnsupportedStateError(
            f"snapshot {base.short_id} is itself an adapter; a diffusers LoRA goes over a pipeline",
            hint="merge the first adapter into a new snapshot (ckpt.merge_adapter) and save the LoRA over that",
        )
    table = store.table(base.id)
    components = component_paths(table)
    parts = split_lora(lora_state_dict, list(components))
    shapes = {c: {k: tuple(int(d) for d in v.shape) for k, v in part.items()} for c, part in parts.items()}
    what = f"the LoRA for {base.short_id}"
    _, cfgs = plan_lora(shapes, configs, table, adapter=what, base_label=_label(base), file_metadata=_file_metadata)
    meta = dict(metadata or {})
    if DIFFUSERS_LORA_KEY in meta:
        raise RecordError(
            f"metadata key {DIFFUSERS_LORA_KEY!r} is reserved for the LoRA's configs", hint="rename your key"
        )
    meta[DIFFUSERS_LORA_KEY] = {"configs": dict(cfgs), "file": _file_name, "metadata": _file_metadata is not None}
    parents, relation, default_model = _line(store, base, branch)
    return store.save(
        {c: dict(part) for c, part in parts.items()},
        branch,
        parents=parents,
        relation=relation,
        model=model or default_model,
        step=step,
        epoch=epoch,
        metrics=metrics,
        message=message,
        metadata=meta,
        files=files,
        base=base.id,
        progress=progress,
    )


def _stored_plan(store: Store, snap: Snapshot) -> tuple[LoraPlan, Snapshot, TensorTable]:
    recorded = snap.metadata.get(DIFFUSERS_LORA_KEY)
    configs = recorded.get("configs") if isinstance(recorded, dict) else None
    if not isinstance(configs, dict) or not all(isinstance(v, dict) for v in configs.values()):
        raise RecordError(f"LoRA snapshot {snap.short_id} has no readable {DIFFUSERS_LORA_KEY} configs")
    base = store.get(snap.base) if snap.base else None
    if base is None:
        raise RecordError(f"LoRA snapshot {snap.short_id} records no base pipeline")
    table = store.table(snap.id)
    shapes = {
        c: {n: tuple(table.tensors[p].shape) for n, p in names.items()} for c, names in component_paths(table).items()
    }
    if set(shapes) != set(configs):
        raise RecordError(
            f"LoRA snapshot {snap.short_id} holds tensors of {sorted(shapes)} but configs of {sorted(configs)}"
        )
    checked = {str(c): cfg for c, cfg in configs.items() if isinstance(cfg, dict)}
    found, _ = plan_lora(
        shapes, checked, store.table(base.id), adapter=f"LoRA {snap.short_id}", base_label=_label(base)
    )
    return found, base, table


def load_merged_lora(
    store: Store,
    rev: str,
    *,
    verify: bool = True,
    framework: Framework | None = None,
    into: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    prefix: str | Sequence[str] | None = None,
) -> Any:
    """Load a diffusers LoRA snapshot merged into its base pipeline: the base's state with every component merged.

    Equal to diffusers' ``load_lora_weights`` + ``fuse_lora()`` (``lora_scale=1``) within the float tolerance of
    the weights' dtype (the delta is computed in float32 and added once).

    Args:
        store: the store.
        rev: the LoRA snapshot.
        verify: check every chunk against its digest.
        framework: ``torch`` or ``numpy`` for every tensor; default: what each was saved as.
        into: base tensor path → existing tensor to read into (as ``Store.load``); merged weights are written
            into them in place.
        progress: called with byte counts as the base's chunks arrive.
        prefix: read only the base tensors under this tensor-path prefix (``"unet/"``), and merge what falls in
            it (as ``Store.load``).

    Raises:
        RecordError: not a diffusers LoRA snapshot, or its configs are unreadable.
        StateMismatchError, UnsupportedStateError: as ``plan_lora`` (checked before the base is read).
        MissingObjectError, CorruptChunkError: as ``Store.load``.
    """
    snap = store.resolve(rev)
    if not is_diffusers_lora(snap):
        raise RecordError(f"snapshot {snap.short_id} is not a diffusers LoRA", hint="load it with store.load(rev)")
    found, base, _ = _stored_plan(store, snap)
    adapter = store.load(snap.id, verify=verify, framework="torch")
    state = store.load(base.id, verify=verify, framework=framework, into=into, progress=progress, prefix=prefix)
    merge_lora(
        state, adapter, found, in_place=[id(t) for t in into.values()] if into else (), partial=prefix is not None
    )
    return state


def _line(store: Store, base: Snapshot, branch: str) -> tuple[list[str], Relation, str | None]:
    """Parents, relation and default model name of a LoRA saved on ``branch``."""
    head_id = store.branches().get(branch)
    if head_id is None:
        return [base.id], "adapter", (f"{base.model}-lora" if base.model else None)
    head = store.get(head_id)
    if head.base == base.id and is_diffusers_lora(head):
        return [head.id], "continue", None
    what = f"an adapter of {head.base[:12]}" if head.base else f"a {head.relation} snapshot"
    raise RefExistsError(
        f"branch {branch!r} exists and its head {head.short_id} is {what}, not a LoRA of {base.short_id}",
        hint="save the LoRA on a new branch",
    )


def _label(snap: Snapshot) -> str:
    return f"{snap.short_id} ({snap.model or 'unnamed'})"
