"""The PEFT adapter types beyond LoRA whose merge into the base is defined: IA³, LoHa, LoKr and AdaLoRA.

Each one's tensors, in the form PEFT writes to ``adapter_model.safetensors``, name the module they adapt
(``base_model.model.<module>.<tensor>``), and each merges into that module's weight ``W`` as PEFT 0.21's
``merge_and_unload()`` does:

- **IA³** (``peft_type`` ``IA3``): a vector ``<module>.ia3_l`` that scales the layer. On an ordinary layer it
  scales the outputs: ``W ⊙ l`` row by row (``l`` is ``[out, 1]``), and the layer's bias too; on a layer named in
  ``feedforward_modules`` it scales the inputs, column by column (``l`` is ``[1, in]``), and the bias is left
  alone. ``fan_in_fan_out`` layers (GPT-2's ``Conv1D``) hold ``W`` transposed, and ``l`` is transposed to match;
  on a convolution ``l`` is ``[1, channels, 1, …]`` (``IA3Layer.merge``).
- **LoHa** (``LOHA``): ``ΔW = ((w1a @ w1b) ⊙ (w2a @ w2b)) · alpha / r`` from ``hada_w1_a``, ``hada_w1_b``,
  ``hada_w2_a``, ``hada_w2_b``; with ``use_effective_conv2d`` two Tucker cores ``hada_t1``, ``hada_t2`` rebuild
  each factor as ``einsum("ijkl,jr,ip->prkl", t, w_b, w_a)``. ``ΔW`` is reshaped to ``W``'s shape and added.
- **LoKr** (``LOKR``): ``ΔW = (w1 ⊗ w2) · alpha / r`` (a Kronecker product), ``w1`` = ``lokr_w1`` or
  ``lokr_w1_a @ lokr_w1_b``, ``w2`` = ``lokr_w2``, ``lokr_w2_a @ lokr_w2_b`` or, with a Tucker core ``lokr_t2``,
  ``einsum("ijkl,ip,jr->prkl", t2, w2_a, w2_b)``; reshaped to ``W``'s shape and added.
- **AdaLoRA** (``ADALORA``): an SVD-shaped LoRA, ``ΔW = B @ (A ⊙ E) · s / (init_r + 1e-5)`` from ``lora_A``
  ``[k, in]``, ``lora_E`` ``[k, 1]`` (the singular values) and ``lora_B`` ``[out, k]``, transposed for
  ``fan_in_fan_out``; ``s = lora_alpha`` (``k`` when ``lora_alpha`` is 0). Each module keeps the ``k ≤ init_r``
  ranks its budget allocation left (``rank_pattern``; ``k`` may be 0), but the divisor stays ``init_r``, as in
  PEFT (``SVDLinear.get_delta_weight``, whose ``ranknum`` a reload copies from the ``init_r`` layer).

``r`` and ``alpha`` of LoHa and LoKr come per module from ``rank_pattern`` and ``alpha_pattern``, matched as PEFT
matches them (``_patterns.PeftPattern``). As for LoRA, the adapter's whole tensors (``modules_to_save``) replace
the base's first, every delta is computed in float32 (float64 for float64 weights) and cast back to the
weight's dtype once, and tied weights change together. Anything else an adapter of these types holds is refused
by name, never skipped. Other PEFT types (VeRA, OFT, BOFT, prompt tuning …) are stored but not merged:
see ``check_type``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ckpt.errors import StateMismatchError, UnsupportedStateError
from ckpt.lineage._apply import FLOAT_DTYPES, apply_whole, as_torch, assign
from ckpt.lineage._config import PEFT_HINT, TypeSettings
from ckpt.lineage._layers import resolve_square
from ckpt.lineage._names import PEFT_PREFIX, base_name
from ckpt.lineage._type_shapes import check_delta, check_svd, numel

__all__ = ["Edit", "TypePlan", "check_mergeable", "merge_into", "plan"]

#: Each type's tensors, by the name that follows the module's.
_ROLES = {
    "IA3": ("ia3_l",),
    "LOHA": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "LOKR": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "ADALORA": ("lora_A", "lora_B", "lora_E"),
}
_KEY = re.compile(r"^(?P<module>.+)\.(?P<role>ia3_l|hada_(?:w[12]_[ab]|t[12])|lokr_(?:w[12](?:_[ab])?|t2)|lora_[ABE])$")
#: The sets of tensors one adapted module may hold.
_LAYOUTS = {
    "IA3": ({"ia3_l"},),
    "LOHA": (
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"},
    ),
    "LOKR": tuple(
        w1 | w2
        for w1 in ({"lokr_w1"}, {"lokr_w1_a", "lokr_w1_b"})
        for w2 in ({"lokr_w2"}, {"lokr_w2_a", "lokr_w2_b"}, {"lokr_t2", "lokr_w2_a", "lokr_w2_b"})
    ),
    "ADALORA": ({"lora_A", "lora_B", "lora_E"},),
}
#: Name segments of PEFT's own tensors: stored, never taken for a base tensor.
_PEFT_SEGMENTS = ("ia3_", "hada_", "lokr_", "lora_")
_PEFT_WRAPPERS = frozenset({"modules_to_save", "original_module", "trainable_tokens_delta"})


@dataclass(frozen=True)
class Edit:
    """One adapted module of an IA³, LoHa, LoKr or AdaLoRA adapter.

    Attributes:
        module: the module's name in the base model, e.g. ``model.layers.0.mlp.down_proj``.
        tensors: the adapter's tensors of this module, by role (``ia3_l``, ``hada_w1_a``, ``lokr_w2`` …).
        feedforward: IA³: the vector scales the layer's inputs, not its outputs.
        scales_bias: IA³: the layer's bias is scaled too (an output-scaling vector on a layer with a bias).
        transposed: IA³, AdaLoRA: a linear layer that holds its weight ``[in, out]`` (PEFT's per-layer
            ``fan_in_fan_out``).
        rank: LoHa, LoKr: the module's rank (``rank_pattern`` matched in the config's order, or recorded).
        alpha: LoHa, LoKr: the module's alpha (likewise).
    """

    module: str
    tensors: Mapping[str, str]
    feedforward: bool = False
    scales_bias: bool = False
    transposed: bool = False
    rank: int = 0
    alpha: float = 0.0

    @property
    def target(self) -> str:
        """The base weight the adapter changes."""
        return f"{self.module}.weight"

    @property
    def bias_target(self) -> str:
        """The base layer's bias."""
        return f"{self.module}.bias"


@dataclass(frozen=True)
class TypePlan:
    """What an IA³, LoHa, LoKr or AdaLoRA adapter's tensors do to its base.

    Attributes:
        peft_type: the adapter's type.
        edits: the adapted modules, in the adapter's order.
        whole: base tensor name → adapter tensor that replaces it (``modules_to_save``).
        unmerged: adapter tensors ckpt stores but does not merge (named when a merge is refused).
    """

    peft_type: str
    edits: tuple[Edit, ...]
    whole: dict[str, str]
    unmerged: tuple[str, ...]

    @property
    def targets(self) -> list[str]:
        """Every base tensor the merge changes."""
        return [
            *(e.target for e in self.edits),
            *(e.bias_target for e in self.edits if e.scales_bias),
            *self.whole,
        ]


def _peft_owned(name: str) -> bool:
    return any(p.startswith(_PEFT_SEGMENTS) or p in _PEFT_WRAPPERS for p in name.split("."))


def plan(
    shapes: Mapping[str, tuple[int, ...]],
    settings: TypeSettings,
    entries: Mapping[str, tuple[str, tuple[int, ...]]],
    ties: Sequence[Sequence[str]] = (),
    *,
    adapter: str,
    base: str,
) -> TypePlan:
    """What each adapter tensor does, once everything that names and shapes can tell has been checked.

    Args:
        shapes: adapter tensor name (PEFT's file form) → shape.
        settings: the checked config.
        entries: the base's model tensors, name → (dtype, shape).
        ties: groups of base tensor names that are one tensor (tied weights).
        adapter: the adapter, for messages.
        base: the base, for messages.

    Raises:
        StateMismatchError: a module with an incomplete or mixed set of tensors, a tensor of another type,
            a rank other than the config's, a target the base lacks, a delta or a vector whose shape does not fit
            the base weight, a whole tensor the base does not have.
        UnsupportedStateError: a target that is not floating point.
    """
    kind = settings.peft_type
    modules: dict[str, dict[str, str]] = {}
    whole: dict[str, str] = {}
    unmerged: list[str] = []
    for key in shapes:
        m = _KEY.match(key)
        if m is not None and str(m["role"]) in _ROLES[kind]:
            modules.setdefault(str(m["module"]), {})[str(m["role"])] = key
            continue
        target = base_name(key)
        if m is None and target in entries and not _peft_owned(target):
            if target in whole:
                raise StateMismatchError(f"{adapter}: {whole[target]!r} and {key!r} both replace {target!r}")
            whole[target] = key
        elif _peft_owned(key):
            unmerged.append(key)  # another type's tensor, or one named after an adapter: refused when merging
        else:
            raise StateMismatchError(
                f"{adapter} holds {key!r}, a whole tensor for {target!r}, which base {base} does not have",
                hint="is this the adapter's base? (PEFT saves modules_to_save whole)",
            )
    effective = dict(entries)
    tied = {name: group for group in ties for name in group}
    for target, key in whole.items():  # a modules_to_save copy replaces its own tensor only (PEFT unties it)
        for name in (target,) if settings.replaces_module(target) else tied.get(target, (target,)):
            effective[name] = (entries[name][0], shapes[key])

    edits: list[Edit] = []
    missing: list[str] = []
    square: list[Edit] = []  # linear layers whose orientation neither shapes nor a record tell
    for raw, roles in modules.items():
        name = raw.removeprefix(PEFT_PREFIX)
        if set(roles) not in _LAYOUTS[kind]:
            raise StateMismatchError(
                f"{adapter}: the {kind} adapter of {name!r} holds {', '.join(sorted(roles))}, which is not a "
                f"complete set of {kind} tensors",
                hint="the adapter file is incomplete, or its config names another type",
            )
        target = f"{name}.weight"
        if target not in effective:
            missing.append(target)
            continue
        dtype, weight = effective[target]
        if dtype not in FLOAT_DTYPES:
            raise UnsupportedStateError(
                f"cannot merge into {target!r} of base {base}: its dtype {dtype} is not a float type"
            )
        got = {role: tuple(shapes[key]) for role, key in roles.items()}
        if kind == "IA3":
            edit = _ia3_edit(name, roles, got["ia3_l"], tuple(weight), settings, effective, adapter=adapter, base=base)
            if edit is None:
                unmerged.append(roles["ia3_l"])
                continue
        elif kind == "ADALORA":
            transposed = check_svd(name, got, tuple(weight), settings, adapter=adapter, base=base)
            edit = Edit(name, dict(roles), transposed=transposed)
        else:
            rank = settings.rank(name)
            check_delta(kind, name, got, tuple(weight), rank, adapter=adapter, base=base)
            edit = Edit(name, dict(roles), rank=rank, alpha=settings.alpha_of(name))
        if (
            kind in ("IA3", "ADALORA")
            and len(weight) == 2
            and weight[0] == weight[1]
            and settings.transposed(name) is None
        ):
            square.append(edit)
            continue
        edits.append(edit)
    if square:
        decided = {e.module: e.transposed for e in edits if len(effective[e.target][1]) == 2}
        flag = resolve_square(
            [e.module for e in square], decided, settings.fan_in_fan_out, entries, adapter=adapter, base=base
        )
        edits.extend(replace(e, transposed=flag) for e in square)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StateMismatchError(
            f"{adapter} targets {shown}, which base {base} does not have",
            hint=f"is this the adapter's base? {kind} names map 'base_model.model.<name>.<tensor>' to '<name>.weight'",
        )
    return TypePlan(peft_type=kind, edits=tuple(edits), whole=whole, unmerged=tuple(unmerged))


def _ia3_edit(
    name: str,
    roles: Mapping[str, str],
    vector: tuple[int, ...],
    weight: tuple[int, ...],
    settings: TypeSettings,
    effective: Mapping[str, tuple[str, tuple[int, ...]]],
    *,
    adapter: str,
    base: str,
) -> Edit | None:
    """The IA³ edit of one layer, its vector checked against the weight (``None``: a grouped convolution)."""
    feedforward = settings.is_feedforward(name)
    transposed = False
    if len(weight) == 2:
        known = settings.transposed(name)
        if known is None:  # the vector's length tells, unless the weight is square
            n = vector[1] if feedforward and len(vector) == 2 else vector[0] if vector else -1
            known = n == (weight[0] if feedforward else weight[1]) and weight[0] != weight[1]
        transposed = known
        out_dim, in_dim = (weight[1], weight[0]) if transposed else weight
        want: tuple[int, ...] = (1, in_dim) if feedforward else (out_dim, 1)
    elif len(weight) > 2:
        grouped = len(vector) == len(weight) and vector[1] != weight[1] and vector[1] % weight[1] == 0
        if feedforward and grouped:
            return None  # the input channels of a grouped convolution: not merged here
        want = (1, weight[1] if feedforward else weight[0], *([1] * (len(weight) - 2)))
    else:
        want = ()
    if vector != want:
        layer = "feed-forward layer (feedforward_modules)" if feedforward else "layer"
        raise StateMismatchError(
            f"{adapter}: the IA3 vector of {name!r} is {list(vector)}, but the {layer} {name!r} of base {base}, "
            f"whose weight is {list(weight)}, needs {list(want)}",
            hint="is this the adapter's base? (or check feedforward_modules and fan_in_fan_out in its config)",
        )
    bias = effective.get(f"{name}.bias")
    scales_bias = not feedforward and bias is not None
    if scales_bias and bias is not None:
        if numel(bias[1]) != numel(vector):
            raise StateMismatchError(
                f"{adapter}: the IA3 vector of {name!r} scales {numel(vector)} outputs, but {name}.bias of base "
                f"{base} is {list(bias[1])}"
            )
        if bias[0] not in FLOAT_DTYPES:
            raise UnsupportedStateError(
                f"cannot merge into {name}.bias of base {base}: its dtype {bias[0]} is not a float"
            )
    return Edit(name, dict(roles), feedforward=feedforward, scales_bias=scales_bias, transposed=transposed)


def check_mergeable(found: TypePlan, settings: TypeSettings, adapter: str) -> None:
    """Refuse what ckpt stores but does not merge.

    Raises:
        UnsupportedStateError: config options or tensors beyond what is merged here (names them).
    """
    if settings.unmerged:
        raise UnsupportedStateError(
            f"{adapter} is a {settings.peft_type} adapter that sets {', '.join(settings.unmerged)}, which ckpt "
            "does not merge",
            hint=PEFT_HINT,
        )
    if found.unmerged:
        shown = ", ".join(repr(k) for k in found.unmerged[:3])
        more = f" and {len(found.unmerged) - 3} more" if len(found.unmerged) > 3 else ""
        raise UnsupportedStateError(
            f"{adapter} is a {settings.peft_type} adapter holding {shown}{more}, which ckpt does not merge (tensors "
            f"of another type, or IA3 on the inputs of a grouped convolution)",
            hint=PEFT_HINT,
        )


# -- merging -----------------------------------------------------------------------------------------


def merge_into(
    weights: MutableMapping[str, Any],
    adapter: Mapping[str, Any],
    found: TypePlan,
    settings: TypeSettings,
    *,
    in_place: Iterable[int] = (),
) -> None:
    """Apply an IA³, LoHa, LoKr or AdaLoRA adapter to a base's weights as PEFT's ``merge_and_unload()`` does.

    Whole tensors first (as PEFT loads them), then each module's edit (see the module docstring), computed in
    float32 (float64 for float64 weights) and cast back to the weight's dtype.

    Args:
        weights: base tensor name → tensor (torch or numpy); changed in place.
        adapter: adapter tensor name → torch tensor.
        found: ``plan(...)`` of the adapter.
        settings: the checked config.
        in_place: ``id()`` of tensors to overwrite in place (``into=`` buffers) when the shape allows.

    Raises:
        StateMismatchError: two whole tensors of the adapter put different values into one tied tensor.
    """
    import torch

    writable = set(in_place)
    apply_whole(weights, adapter, found.whole, writable, replaces=settings.replaces_module)
    for edit in found.edits:
        weight = weights[edit.target]
        w = as_torch(weight)
        compute = torch.promote_types(w.dtype, torch.float32)
        t = {role: adapter[key].to(compute) for role, key in edit.tensors.items()}
        if found.peft_type == "IA3":
            vector = t["ia3_l"]
            if w.dim() == 2 and edit.transposed:
                scaling = vector.T
            elif w.dim() > 2 and not edit.feedforward:
                scaling = vector.transpose(0, 1)
            else:
                scaling = vector
            merged = w.to(compute) * scaling
            if edit.scales_bias:
                old = weights[edit.bias_target]
                bias = as_torch(old)
                assign(weights, old, (bias.to(compute) * vector.reshape(bias.shape)).to(bias.dtype), writable)
        elif found.peft_type == "ADALORA":
            delta = t["lora_B"] @ (t["lora_A"] * t["lora_E"])
            if edit.transposed:
                delta = delta.T
            scaling = settings.alpha if settings.alpha > 0 else float(t["lora_A"].shape[0])
            merged = w.to(compute) + delta * scaling / (torch.tensor(float(settings.r), dtype=compute) + 1e-5)
        else:
            delta = _loha(t) if found.peft_type == "LOHA" else _lokr(t)
            merged = w.to(compute) + (delta * (edit.alpha / edit.rank)).reshape(w.shape)
        assign(weights, weight, merged.to(w.dtype), writable)


def _loha(t: Mapping[str, Any]) -> Any:
    """``(w1a @ w1b) ⊙ (w2a @ w2b)``, each factor rebuilt from its Tucker core when there is one."""
    import torch

    if "hada_t1" in t:
        one = torch.einsum("i j k l, j r, i p -> p r k l", t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
        two = torch.einsum("i j k l, j r, i p -> p r k l", t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
        return one * two
    return (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])


def _lokr(t: Mapping[str, Any]) -> Any:
    """``w1 ⊗ w2`` (PEFT's ``make_kron``)."""
    import torch

    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    elif "lokr_t2" in t:
        w2 = torch.einsum("i j k l, i p, j r -> p r k l", t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    return torch.kron(w1, w2.contiguous())
