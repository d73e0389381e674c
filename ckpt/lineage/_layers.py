"""Per-module facts of an adapter that its config does not give, found when it is saved and recorded with it.

**Which layers hold their weight transposed.** PEFT decides ``fan_in_fan_out`` per layer, not per config: on a
transformers ``Conv1D`` layer (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``), whose weight is ``[in, out]``, it sets
it true, and on an ``nn.Linear`` (``[out, in]``) false, whatever the config said, with a warning; the flag the
config keeps is the last adapted layer's. A merge must transpose each layer's delta as PEFT did. ckpt knows it:

1. from the model, when one is given (``save_adapter(..., peft_model=)``, ``import_peft_folder(..., peft_model=)``):
   each PEFT layer's own ``fan_in_fan_out`` (or, for a plain model, whether the layer is a ``Conv1D``);
2. else from shapes: a weight that is not square fits one orientation only (``[out, in]`` or ``[in, out]``);
3. else (a square weight) from the config's flag, but only when nothing in the base or the adapter shows a
   layer of the other orientation: a non-square target of the adapter, or a base layer whose bias has the
   length of its weight's second dimension (a ``Conv1D``) or first (a linear layer). Otherwise it cannot be told,
   and ckpt refuses (``StateMismatchError``) rather than guess.

**Each module's rank and alpha.** ``rank_pattern`` and ``alpha_pattern`` keys are matched in the config's order,
the first match winning (PEFT's ``get_pattern_key``); a store record is canonical JSON, whose keys are sorted,
so the order is kept in the attached ``adapter_config.json`` and every module's resolved values are recorded.

The facts are recorded in the snapshot's metadata under ``"adapter_layers"``: module name (in the base) →
``{"fan_in_fan_out": bool, "r": int, "alpha": number}`` (each only where it applies), and a merge uses them
before the config. An adapter saved before they were recorded is merged from its config and shapes (patterns in
the order of its attached ``adapter_config.json``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import JsonValue

from ckpt.errors import RecordError, StateMismatchError
from ckpt.lineage._config import LAYERS_KEY, LayerFacts
from ckpt.lineage._names import PEFT_PREFIX

__all__ = ["base_orientations", "layers_of_model", "read_layers", "record", "resolve_square"]


def layers_of_model(model: Any) -> dict[str, LayerFacts]:
    """Module name (in the base) → its orientation, read from a live ``PeftModel`` or a plain torch model.

    A PEFT layer's own ``fan_in_fan_out`` is the truth its merge uses; in a model without PEFT layers, a
    transformers ``Conv1D`` holds its weight transposed and an ``nn.Linear`` does not.

    Raises:
        RecordError: ``model`` is not a torch module.
    """
    named = getattr(model, "named_modules", None)
    if not callable(named):
        raise RecordError(
            f"peft_model must be the PeftModel (or its base model), got {type(model).__name__}",
            hint="pass the model the adapter was trained in",
        )
    import torch

    conv1d: tuple[type, ...] = ()
    try:
        from transformers.pytorch_utils import Conv1D

        conv1d = (Conv1D,)
    except ImportError:  # pragma: no cover - without transformers there is no Conv1D
        pass
    out: dict[str, LayerFacts] = {}
    for raw, module in named():
        name = raw.removeprefix(PEFT_PREFIX)
        flag = getattr(module, "fan_in_fan_out", None)
        if isinstance(flag, bool) and hasattr(module, "base_layer"):
            out[name] = LayerFacts(fan_in_fan_out=flag)
        elif name not in out and isinstance(module, conv1d):
            out[name] = LayerFacts(fan_in_fan_out=True)
        elif name not in out and isinstance(module, torch.nn.Linear):
            out[name] = LayerFacts(fan_in_fan_out=False)
    return out


def base_orientations(entries: Mapping[str, tuple[str, tuple[int, ...]]]) -> dict[bool, str]:
    """The orientations the base's biased linear layers show (``True``: ``[in, out]``), each with one example."""
    seen: dict[bool, str] = {}
    for name, (_, shape) in entries.items():
        if not name.endswith(".weight") or len(shape) != 2 or shape[0] == shape[1]:
            continue
        bias = entries.get(name.removesuffix("weight") + "bias")
        if bias is None or len(bias[1]) != 1:
            continue
        if bias[1][0] == shape[1]:
            seen.setdefault(True, name.removesuffix(".weight"))
        elif bias[1][0] == shape[0]:
            seen.setdefault(False, name.removesuffix(".weight"))
    return seen


def resolve_square(
    square: Iterable[str],
    decided: Mapping[str, bool],
    flag: bool,
    entries: Mapping[str, tuple[str, tuple[int, ...]]],
    *,
    adapter: str,
    base: str,
) -> bool:
    """The orientation of square-weighted targets that neither a record nor a model gave: the config's flag,
    when nothing shows a layer of the other orientation.

    Raises:
        StateMismatchError: the base or the adapter shows both orientations, or the other one than the flag's.
    """
    square = list(square)
    seen = base_orientations(entries)
    for module, transposed in decided.items():
        seen.setdefault(transposed, module)
    other = seen.get(not flag)
    if other is None:
        return flag
    kind = "a transformers Conv1D ([in, out])" if not flag else "a linear layer ([out, in])"
    shown = ", ".join(repr(m) for m in square[:3]) + (f" and {len(square) - 3} more" if len(square) > 3 else "")
    raise StateMismatchError(
        f"{adapter}: cannot tell whether the square weights of {shown} are held as [out, in] (nn.Linear) or "
        f"transposed (a Conv1D): base {base} has {kind} layer {other!r}, and PEFT decides fan_in_fan_out per layer "
        f"(the config's fan_in_fan_out={str(flag).lower()} is only the last adapted layer's)",
        hint="save the adapter with save_adapter(..., peft_model=peft_model) or import it with "
        "import_peft_folder(..., peft_model=PeftModel.from_pretrained(base_model, folder)), so that ckpt records "
        "each layer's orientation from the model",
    )


def read_layers(metadata: Mapping[str, JsonValue]) -> dict[str, LayerFacts]:
    """The per-module facts recorded with an adapter snapshot (``{}`` when none were).

    Raises:
        RecordError: the record is malformed (names the module and the field).
    """
    raw = metadata.get(LAYERS_KEY)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecordError(f"metadata {LAYERS_KEY!r} must map module names to objects, got {type(raw).__name__}")
    out: dict[str, LayerFacts] = {}
    for module, facts in raw.items():
        if not isinstance(facts, dict) or set(facts) - {"fan_in_fan_out", "r", "alpha"}:
            raise RecordError(f"metadata {LAYERS_KEY!r} of {module!r} is not an object of fan_in_fan_out, r, alpha")
        flag, r, alpha = facts.get("fan_in_fan_out"), facts.get("r"), facts.get("alpha")
        if flag is not None and not isinstance(flag, bool):
            raise RecordError(f"metadata {LAYERS_KEY!r}: fan_in_fan_out of {module!r} is {flag!r}, not true/false")
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
            raise RecordError(f"metadata {LAYERS_KEY!r}: r of {module!r} is {r!r}, not a rank")
        if alpha is not None and (
            isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0
        ):
            raise RecordError(f"metadata {LAYERS_KEY!r}: alpha of {module!r} is {alpha!r}, not a finite number")
        out[module] = LayerFacts(fan_in_fan_out=flag, r=r, alpha=None if alpha is None else float(alpha))
    return out


def record(facts: Mapping[str, LayerFacts]) -> dict[str, JsonValue]:
    """The JSON of per-module facts, as recorded under ``"adapter_layers"``."""
    out: dict[str, JsonValue] = {}
    for module, f in facts.items():
        entry: dict[str, JsonValue] = {}
        if f.fan_in_fan_out is not None:
            entry["fan_in_fan_out"] = f.fan_in_fan_out
        if f.r is not None:
            entry["r"] = f.r
        if f.alpha is not None:
            entry["alpha"] = int(f.alpha) if float(f.alpha).is_integer() else f.alpha
        out[module] = entry
    return out
