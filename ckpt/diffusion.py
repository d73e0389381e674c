"""Diffusers pipelines and their LoRA adapters in a store: live pipelines restored, LoRA snapshots in and out.

**Pipelines.** A diffusers pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/`` …) is imported whole by ``ckpt.hf.import_folder``: each component's tensors sit
under its folder name in the state (``{"unet": {name: tensor}, "vae": {…}, "text_encoder": {…}}``), every other
file is attached byte for byte, and ``ckpt restore`` writes the same tree back. A pipeline is not a
``torch.nn.Module``: ``restore_pipeline`` (what ``ckpt.restore`` calls for one) loads each component's mapping
into the pipeline's module of that name (``state["unet"]`` → ``pipeline.unet``), after checking every name, key
and shape, so that a mismatch loads nothing.

**LoRA.** A LoRA that ``save_lora_weights`` writes (``pytorch_lora_weights.safetensors``; see
``ckpt.diffusers_lora`` for how its names and configs are read) is held as an adapter snapshot over the
pipeline's snapshot:

- state ``{component: {name: tensor}}``, each tensor under the name the file gives it without the component
  prefix, so that an imported file is written back byte-identical (its header kept as an attached file);
- ``metadata["diffusers_lora"]``: ``{"configs": {component: LoraConfig as JSON}, "file": <weights file name>,
  "metadata": <whether the file carried lora_adapter_metadata>}``;
- relation ``adapter``, parent and ``base`` the pipeline snapshot (a later save on its branch: ``continue``).

``load_merged`` gives the pipeline's state with the LoRA merged as diffusers' ``fuse_lora()`` merges it;
``export_lora`` writes the folder ``load_lora_weights`` loads.

torch is imported only where tensors are computed or loaded into a live pipeline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from ckpt.diffusers_lora import (
    LORA_METADATA_KEY,
    LORA_WEIGHTS_FILE,
    LoraPlan,
    component_paths,
    lora_file_metadata,
    merge_lora,
    plan_lora,
    split_lora,
)
from ckpt.errors import RecordError, RefExistsError, StateMismatchError, UnsupportedStateError
from ckpt.model import Relation, Snapshot, TensorTable
from ckpt.state import is_array

if TYPE_CHECKING:
    from ckpt.hf import ExportResult
    from ckpt.store import Store
    from ckpt.store.store import Framework

__all__ = [
    "LORA_KEY",
    "MODEL_INDEX",
    "PipelineIndex",
    "export_lora",
    "import_lora",
    "is_lora_folder",
    "is_lora_snapshot",
    "is_pipeline",
    "load_merged",
    "pipeline_modules",
    "read_model_index",
    "restore_pipeline",
    "save_lora",
]

#: The file that names a diffusers pipeline's components.
MODEL_INDEX = "model_index.json"
#: Snapshot metadata key of a diffusers LoRA: its per-component configs and its file's name.
LORA_KEY = "diffusers_lora"

_HEADER_PREFIX = ".ckpt/safetensors/"  # ckpt.hf.HEADER_PREFIX: where an imported file's exact header is attached
_RESERVED_PREFIX = ".ckpt/"
_FORMAT = {"format": "pt"}


# -- pipelines ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineIndex:
    """What a pipeline's ``model_index.json`` says.

    Attributes:
        class_name: the pipeline class (``StableDiffusionPipeline``), or ``None``.
        components: component name → ``(library, class)`` (``("diffusers", "UNet2DConditionModel")``), or
            ``None`` for a component the pipeline was saved without (``safety_checker`` …); in file order.
    """

    class_name: str | None
    components: dict[str, tuple[str, str] | None]


def read_model_index(data: bytes, *, what: str = MODEL_INDEX) -> PipelineIndex:
    """Parse a ``model_index.json`` (JSON only: nothing in it is imported or run).

    Args:
        data: the file's bytes.
        what: how to name the file in errors.

    Returns:
        The pipeline class and its components; keys starting with ``_`` and plain settings
        (``"requires_safety_checker": false``) are not components.

    Raises:
        RecordError: not JSON, not an object, or a component entry that is not ``[library, class]`` or
            ``[null, null]``.

    Example:
        >>> read_model_index(b'{"_class_name": "P", "unet": ["diffusers", "UNet2DConditionModel"]}').components
        {'unet': ('diffusers', 'UNet2DConditionModel')}
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise RecordError(f"{what} is not valid JSON: {e}", hint="download the pipeline again") from None
    if not isinstance(doc, dict):
        raise RecordError(f"{what} is not a JSON object", hint="download the pipeline again")
    name = doc.get("_class_name")
    components: dict[str, tuple[str, str] | None] = {}
    for key, value in doc.items():
        if key.startswith("_") or not isinstance(value, list):
            continue
        if value == [None, None]:
            components[key] = None
        elif len(value) == 2 and all(isinstance(v, str) for v in value):
            components[key] = (value[0], value[1])
        else:
            raise RecordError(
                f"{what}: component {key[:80]!r} is {json.dumps(value)[:80]}, not [library, class]",
                hint="download the pipeline again",
            )
    return PipelineIndex(name if isinstance(name, str) else None, components)


def is_pipeline(obj: Any) -> bool:
    """Whether ``obj`` is a diffusers pipeline (a ``components`` mapping, and no ``state_dict`` of its own).

    Decided without importing diffusers or torch.
    """
    return not callable(getattr(obj, "state_dict", None)) and isinstance(getattr(obj, "components", None), Mapping)


def pipeline_modules(pipeline: Any) -> dict[str, Any]:
    """The components of a pipeline that hold weights (``torch.nn.Module``s: UNet, VAE, text encoders …), by name.

    Tokenizers, schedulers, feature extractors and absent components (``None``) are left out.
    """
    return {
        name: component
        for name, component in pipeline.components.items()
        if callable(getattr(component, "state_dict", None)) and callable(getattr(component, "load_state_dict", None))
    }


def restore_pipeline(
    pipeline: Any,
    store: Store,
    rev: str = "main",
    *,
    strict: bool = True,
    verify: bool = True,
    in_place: bool = False,
    optimizer: Any = None,
    optimizer_key: str = "optimizer",
) -> Any:
    """Load a snapshot into a live diffusers pipeline: ``state["unet"]`` into ``pipeline.unet``, and so on.

    Each top-level mapping of the snapshot's state names a component (the folder it came from in a pipeline
    folder); every one is checked against the pipeline before anything is loaded: its name, its keys (with
    ``strict``) and every shape, so that a mismatch leaves the pipeline as it was. An adapter snapshot saved
    with ``save_lora`` is loaded merged (``load_merged``). Top-level entries that are not mappings (``step``)
    and the optimizer's entry are not components.

    Args:
        pipeline: a ``DiffusionPipeline`` (any object with a ``components`` mapping of modules).
        store: the store.
        rev: the revision.
        strict: the snapshot's components are exactly the pipeline's modules and each one's keys exactly the
            module's (``load_state_dict(strict=True)``); ``False``: load the components and keys both have
            (shapes are still checked).
        verify: check every chunk against its digest.
        in_place: read the weights straight into the modules' own memory (as ``ckpt.restore``; a failure
            part-way can leave them partly updated).
        optimizer: a ``torch.optim.Optimizer`` to restore from ``state[optimizer_key]``.
        optimizer_key: where the optimizer's state dict sits.

    Returns:
        The loaded state tree.

    Raises:
        StateMismatchError: a component the pipeline lacks or is not a module, a module the snapshot lacks
            (``strict``), missing or unexpected keys (``strict``), a shape that differs; each named.
        CorruptChunkError, MissingObjectError: as ``Store.load``.

    Example:
        >>> ckpt.restore(pipe, store, "tiny-sd-2026-11-28")  # doctest: +SKIP
    """
    from ckpt.state.torch import check_tied_values

    snap = store.resolve(rev)
    modules = pipeline_modules(pipeline)
    into = None
    if in_place:
        into = {f"{name}/{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    if is_lora_snapshot(snap):
        state = load_merged(store, snap.id, verify=verify, framework="torch", into=into)
    else:
        state = store.load(snap.id, verify=verify, framework="torch", into=into, merge=snap.base is not None)
    if not isinstance(state, dict):
        raise StateMismatchError(
            f"snapshot {rev!r} holds a {type(state).__name__}, not a mapping of pipeline components",
            hint="restore it into a module with ckpt.restore(module, store, rev)",
        )
    components = {
        k: v for k, v in state.items() if isinstance(v, Mapping) and not (optimizer_key == k and k not in modules)
    }
    label = type(pipeline).__name__
    unknown = sorted(k for k in components if k not in modules)
    if unknown and (strict or any(k in pipeline.components for k in unknown)):
        what = [
            f"{k!r} (not a module: {type(pipeline.components[k]).__name__})" if k in pipeline.components else repr(k)
            for k in unknown
        ]
        raise StateMismatchError(
            f"snapshot {rev!r} holds component(s) {', '.join(what)}, which {label} has no module for "
            f"(its modules: {', '.join(sorted(modules)) or 'none'})",
            hint="restore into the pipeline the snapshot was saved from, or pass strict=False to load the "
            "components both have",
        )
    missing = sorted(k for k in modules if k not in components and _has_tensors(modules[k]))
    if strict and missing:
        raise StateMismatchError(
            f"snapshot {rev!r} has no {', '.join(repr(m) for m in missing)} for {label} "
            f"(it holds {', '.join(sorted(components)) or 'no component'})",
            hint="pass strict=False to load only the components it holds",
        )
    loading = [k for k in components if k in modules]
    if not loading:
        raise StateMismatchError(f"snapshot {rev!r} holds no component of {label}")
    for name in loading:
        _check_component(name, modules[name], components[name], rev, strict=strict)
        check_tied_values(modules[name], components[name], rev)
    for name in loading:
        try:
            modules[name].load_state_dict(components[name], strict=strict)
        except RuntimeError as e:  # pragma: no cover - checked above
            raise StateMismatchError(f"snapshot {rev!r}: component {name!r} does not fit: {e}") from e
    if optimizer is not None:
        if optimizer_key not in state:
            raise StateMismatchError(f"snapshot {rev!r} has no {optimizer_key!r} entry to restore the optimizer from")
        try:
            optimizer.load_state_dict(state[optimizer_key])
        except (ValueError, RuntimeError, KeyError) as e:
            raise StateMismatchError(f"optimizer state of {rev!r} does not fit: {e}") from e
    return state


def _has_tensors(module: Any) -> bool:
    return len(module.state_dict()) > 0


def _check_component(name: str, module: Any, weights: Mapping[str, Any], rev: str, *, strict: bool) -> None:
    """Keys (with ``strict``) and shapes of one component, before anything is loaded."""
    expected = module.state_dict()
    not_tensors = [k for k, v in weights.items() if not is_array(v)]
    if not_tensors:
        raise StateMismatchError(
            f"snapshot {rev!r}: component {name!r} holds {not_tensors[0]!r}, which is not a tensor",
            hint="a component's entry is its module's state dict",
        )
    if strict:
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        if missing or unexpected:
            peft = any(".lora_" in k or ".base_layer." in k for k in expected)
            raise StateMismatchError(
                f"snapshot {rev!r} does not fit component {name!r} ({type(module).__name__}): "
                f"{len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}",
                hint="the pipeline holds LoRA layers: unload them first (pipe.unload_lora_weights())"
                if peft
                else "restore into the pipeline the snapshot was saved from, or pass strict=False",
            )
    for key, value in weights.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            raise StateMismatchError(
                f"snapshot {rev!r}: {name}/{key} is {list(value.shape)}, but {name}.{key} of the pipeline is "
                f"{list(expected[key].shape)}",
                hint="restore into the pipeline the snapshot was saved from",
            )


# -- in and out of a store ---------------------------------------------------------------------------


def is_lora_snapshot(snap: Snapshot) -> bool:
    """Whether a snapshot is a diffusers LoRA saved by ``save_lora`` or ``import_lora``."""
    return isinstance(snap.metadata.get(LORA_KEY), dict) and snap.base is not None


def save_lora(
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
        >>> store.import_folder("tiny-sd/")  # doctest: +SKIP
        >>> save_lora(store, "main", {"unet": get_peft_model_state_dict(pipe.unet)}, branch="style",
        ...           configs={"unet": pipe.unet.peft_config["default"]})  # doctest: +SKIP
    """
    base = store.resolve(base_rev)
    if base.base is not None or base.relation == "adapter":
        raise UnsupportedStateError(
            f"snapshot {base.short_id} is itself an adapter; a diffusers LoRA goes over a pipeline",
            hint="merge the first adapter into a new snapshot (store.merge) and save the LoRA over that",
        )
    table = store.table(base.id)
    components = component_paths(table)
    parts = split_lora(lora_state_dict, list(components))
    shapes = {c: {k: tuple(int(d) for d in v.shape) for k, v in part.items()} for c, part in parts.items()}
    what = f"the LoRA for {base.short_id}"
    _, cfgs = plan_lora(shapes, configs, table, adapter=what, base_label=_label(base), file_metadata=_file_metadata)
    meta = dict(metadata or {})
    if LORA_KEY in meta:
        raise RecordError(f"metadata key {LORA_KEY!r} is reserved for the LoRA's configs", hint="rename your key")
    meta[LORA_KEY] = {"configs": dict(cfgs), "file": _file_name, "metadata": _file_metadata is not None}
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


def is_lora_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a diffusers LoRA: a ``.safetensors`` file (or a folder with one, and no
    ``adapter_config.json``) whose tensor names all carry a component prefix and ``lora`` (``unet.….lora_A.weight``),
    or a Kohya/A1111 LoRA (``lora_unet_…``), which ``import_lora`` refuses by name.

    Reads the file names and one safetensors header; never raises for a folder that is something else.
    """
    from ckpt.hf import plan_import
    from ckpt.safetensors_file import read_header

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


def import_lora(
    store: Store,
    path: str | os.PathLike[str],
    base_rev: str,
    *,
    branch: str,
    model: str | None = None,
    message: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Snapshot:
    """Import a LoRA file ``save_lora_weights`` wrote (or its folder) as an adapter snapshot over a pipeline.

    The tensors are read from the memory-mapped file (no torch); the file's exact header is attached, so
    ``export_lora`` writes the same file back byte for byte. The other files of the folder (a model card
    ``README.md``, sample images …) are attached as they are.

    Args:
        store: the store.
        path: ``pytorch_lora_weights.safetensors`` (or any ``.safetensors`` LoRA file), or the folder holding it
            (one ``.safetensors`` file, or ``pytorch_lora_weights.safetensors`` among several, which is the one
            ``load_lora_weights`` picks).
        base_rev: the pipeline snapshot.
        branch: as ``save_lora``.
        model: the adapter's name; default: the folder's name.
        message: a note; default ``import <name>``.
        progress: called with byte counts as chunks are written.

    Raises:
        RecordError: no LoRA file, several without ``pytorch_lora_weights.safetensors``, a malformed file.
        StateMismatchError, UnsupportedStateError: as ``save_lora``.
    """
    from ckpt.folders import open_file, read_file
    from ckpt.hf import MAX_SIDE_FILE_SIZE, plan_import
    from ckpt.safetensors_file import open_mapped, parse_header

    found = plan_import(path)
    src = Path(os.fspath(path))
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
    reserved = [p for p in files if p.startswith(_RESERVED_PREFIX)]
    if reserved:
        raise RecordError(f"{src}: files under {_RESERVED_PREFIX} are ckpt's own bookkeeping ({reserved[0]})")
    files[f"{_HEADER_PREFIX}{lora_file.path}.header"] = header_bytes
    name = src.name if src.is_dir() else (src.parent.name if src.name == LORA_WEIGHTS_FILE else src.stem)
    return save_lora(
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


def _stored_plan(store: Store, snap: Snapshot) -> tuple[LoraPlan, Snapshot, TensorTable]:
    recorded = snap.metadata.get(LORA_KEY)
    configs = recorded.get("configs") if isinstance(recorded, dict) else None
    if not isinstance(configs, dict) or not all(isinstance(v, dict) for v in configs.values()):
        raise RecordError(f"LoRA snapshot {snap.short_id} has no readable {LORA_KEY} configs")
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


def load_merged(
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
            it (see ``ckpt.store.loading``).

    Raises:
        RecordError: not a diffusers LoRA snapshot, or its configs are unreadable.
        StateMismatchError, UnsupportedStateError: as ``plan_lora`` (checked before the base is read).
        MissingObjectError, CorruptChunkError: as ``Store.load``.
    """
    snap = store.resolve(rev)
    if not is_lora_snapshot(snap):
        raise RecordError(f"snapshot {snap.short_id} is not a diffusers LoRA", hint="load it with store.load(rev)")
    found, base, _ = _stored_plan(store, snap)
    adapter = store.load(snap.id, verify=verify, framework="torch")
    if prefix is None:
        state = store.load(base.id, verify=verify, framework=framework, into=into, progress=progress)
    else:
        from ckpt.store.loading import load

        state = load(store, base.id, prefix=prefix, verify=verify, framework=framework, into=into, progress=progress)
    merge_lora(
        state, adapter, found, in_place=[id(t) for t in into.values()] if into else (), partial=prefix is not None
    )
    return state


def export_lora(
    store: Store,
    rev: str,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write a diffusers LoRA snapshot as the folder ``load_lora_weights`` loads: ``pytorch_lora_weights.safetensors``.

    An imported file comes back byte-identical (its header verbatim). Otherwise the file holds every tensor as
    ``<component>.<name>``, with ``{"format": "pt"}`` and each component's config under
    ``lora_adapter_metadata`` (as ``save_lora_weights(..., unet_lora_adapter_metadata=...)`` writes it), so that
    diffusers loads it with the scale it was saved with. Attached files (a model card …) come along. The folder
    is written beside ``path`` and renamed into place (see ``ckpt.folders.FolderWriter``).

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
    from ckpt.folders import FolderWriter, check_relative_path
    from ckpt.hf import ExportResult
    from ckpt.safetensors_file import build_header, parse_header, write_file

    snap = store.resolve(rev)
    if not is_lora_snapshot(snap):
        raise RecordError(f"snapshot {snap.short_id} is not a diffusers LoRA", hint="export it with ckpt restore")
    recorded = snap.metadata[LORA_KEY]
    assert isinstance(recorded, dict)
    name = recorded.get("file")
    name = name if isinstance(name, str) and name.endswith(".safetensors") and "/" not in name else LORA_WEIGHTS_FILE
    check_relative_path(name)
    table = store.table(snap.id)
    paths = {f"{c}.{n}": p for c, names in component_paths(table).items() for n, p in names.items()}
    attached = store.files(snap.id)
    header = attached.get(f"{_HEADER_PREFIX}{name}.header")
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
    others = {k: v for k, v in attached.items() if not k.startswith(_RESERVED_PREFIX) and k != name}
    dest = Path(os.fspath(path))

    def owns(rel: str, found: Path) -> bool:
        return rel == name or ("/" not in rel and rel.endswith(".safetensors"))

    def pieces(tensor_path: str) -> Any:
        for piece in store.tensor_bytes(snap.id, tensor_path):
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


def _line(store: Store, base: Snapshot, branch: str) -> tuple[list[str], Relation, str | None]:
    """Parents, relation and default model name of a LoRA saved on ``branch``."""
    head_id = store.branches().get(branch)
    if head_id is None:
        return [base.id], "adapter", (f"{base.model}-lora" if base.model else None)
    head = store.get(head_id)
    if head.base == base.id and is_lora_snapshot(head):
        return [head.id], "continue", None
    what = f"an adapter of {head.base[:12]}" if head.base else f"a {head.relation} snapshot"
    raise RefExistsError(
        f"branch {branch!r} exists and its head {head.short_id} is {what}, not a LoRA of {base.short_id}",
        hint="save the LoRA on a new branch",
    )


def _label(snap: Snapshot) -> str:
    return f"{snap.short_id} ({snap.model or 'unnamed'})"
