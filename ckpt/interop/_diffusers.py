"""diffusers pipeline folders: what ``model_index.json`` says, and where each component's weights go.

A pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``
…) is imported whole by ``import_folder``: each component's tensors sit under its folder name in the state
(``{"unet": {name: tensor}, "vae": {…}}``), every other file is attached byte for byte, and the pipeline's class
and components are recorded in the snapshot's metadata under ``"diffusers_pipeline"``. ``ckpt.export`` writes
the same tree back; a pipeline snapshot saved from live modules (a fine-tune, a merged LoRA) gets each
component's weights as ``<component>/diffusion_pytorch_model.safetensors`` (``model.safetensors`` for a
transformers component), sharded as ``save_pretrained`` shards, so ``DiffusionPipeline.from_pretrained`` loads
it. Nothing here imports diffusers or torch, and nothing in ``model_index.json`` is imported or run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import JsonValue

from ckpt.errors import RecordError

__all__ = [
    "MODEL_INDEX",
    "PIPELINE_KEY",
    "PipelineIndex",
    "pipeline_record",
    "pipeline_weight_files",
    "read_model_index",
]

#: The file that names a diffusers pipeline's components.
MODEL_INDEX = "model_index.json"
#: Snapshot metadata key of an imported pipeline: ``{"class": name, "components": {name: [library, class]}}``.
PIPELINE_KEY = "diffusers_pipeline"

_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_MAX_COMPONENTS = 256  # a pipeline has a handful; the record is read by every `ckpt log`
_MAX_NAME = 200
_TRANSFORMERS_WEIGHTS = "model.safetensors"


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
        RecordError: not JSON, not an object, a component entry that is not ``[library, class]`` or
            ``[null, null]``, more than 256 components or a name over 200 characters.

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
        if len(components) >= _MAX_COMPONENTS or len(key) > _MAX_NAME or any(len(str(v)) > _MAX_NAME for v in value):
            raise RecordError(
                f"{what} names more than {_MAX_COMPONENTS} components or names longer than {_MAX_NAME} characters",
                hint="this is not a diffusers model_index.json: download the pipeline again",
            )
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


def pipeline_record(data: bytes, *, what: str = MODEL_INDEX) -> dict[str, JsonValue]:
    """What import records of a pipeline: ``{"class": "StableDiffusionPipeline", "components": {"unet":
    ["diffusers", "UNet2DConditionModel"], "safety_checker": None, …}}``.

    Raises:
        RecordError: as ``read_model_index``.
    """
    index = read_model_index(data, what=what)
    components: dict[str, JsonValue] = {k: list(v) if v is not None else None for k, v in index.components.items()}
    return {"class": index.class_name, "components": components}


def pipeline_weight_files(attached: Mapping[str, bytes], components: Iterable[str]) -> dict[str, str] | None:
    """Where each component's weights go in a pipeline folder: component → file name in its folder.

    ``diffusion_pytorch_model.safetensors`` for a diffusers component, ``model.safetensors`` for a transformers
    one (a text encoder), as ``save_pretrained`` names them.

    Args:
        attached: the snapshot's attached files (``model_index.json`` among them).
        components: the snapshot's top-level mappings of tensors.

    Returns:
        The names, or ``None`` when there is no readable ``model_index.json`` or a mapping is no component of it
        (the snapshot is then not written as a pipeline).
    """
    data = attached.get(MODEL_INDEX)
    if data is None:
        return None
    try:
        index = read_model_index(data)
    except RecordError:
        return None
    out: dict[str, str] = {}
    for name in components:
        entry = index.components.get(name)
        if entry is None:
            return None
        out[name] = _TRANSFORMERS_WEIGHTS if entry[0] == "transformers" else _DIFFUSERS_WEIGHTS
    return out or None
