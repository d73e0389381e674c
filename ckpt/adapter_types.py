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
matches them (``ckpt.lora.PeftPattern``). As for LoRA, the adapter's whole tensors (``modules_to_save``) replace
the base's first, every delta is computed in float32 (float64 for float64 weights) and cast back to the
weight's dtype once, and tied weights change together. Anything else an adapter of these types holds is refused
by name, never skipped. Other PEFT types (VeRA, OFT, BOFT, prompt tuning …) are stored but not merged:
see ``check_type``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import JsonValue

from ckpt.errors import RecordError, StateMismatchError, UnsupportedStateError
from ckpt.lora import (
    PEFT_HINT,
    PEFT_PREFIX,
    PeftPattern,
    apply_whole,
    as_torch,
    assign,
    base_name,
    compile_pattern,
)

__all__ = [
    "MERGED_TYPES",
    "PEFT_TYPES",
    "Edit",
    "TypePlan",
    "TypeSettings",
    "check_mergeable",
    "check_type",
    "merge_into",
    "peft_type",
    "plan",
    "type_settings",
]

#: The adapter types this module merges (``peft_type`` as PEFT writes it).
PEFT_TYPES = ("IA3", "LOHA", "LOKR", "ADALORA")
#: Every adapter type ckpt merges: LoRA (``ckpt.lora``) and these.
MERGED_TYPES = ("LORA", *PEFT_TYPES)

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
#: Config options that change what a merge computes, beyond what is computed here.
_UNMERGED_OPTIONS = ("layer_replication", "trainable_token_indices", "target_parameters")
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def peft_type(cfg: Mapping[str, JsonValue]) -> str:
    """The adapter's type, as PEFT names it in ``adapter_config.json`` (``LORA`` when the config does not say).

    Raises:
        RecordError: ``peft_type`` is not a string.
    """
    kind = cfg.get("peft_type")
    if kind is None:
        return "LORA"
    if not isinstance(kind, str):
        raise RecordError(f"adapter config field 'peft_type' must be a string, got {kind!r}")
    return kind.upper()


def check_type(cfg: Mapping[str, JsonValue], adapter: str, tensors: Iterable[str] = ()) -> None:
    """Refuse to merge an adapter of a type ckpt does not merge, naming the type and one of its tensors.

    Raises:
        UnsupportedStateError: the type is not one of ``MERGED_TYPES``.
    """
    kind = peft_type(cfg)
    if kind in MERGED_TYPES:
        return
    example = next(iter(sorted(tensors)), None)
    held = f" (its tensors, e.g. {example!r}, are stored as they are)" if example else ""
    raise UnsupportedStateError(
        f"{adapter} is a {kind} adapter{held}; ckpt merges LoRA (with rsLoRA, DoRA, lora_bias), IA3, LoHa, "
        "LoKr and AdaLoRA adapters, not this type",
        hint=PEFT_HINT,
    )


# -- config ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeSettings:
    """What an IA³, LoHa, LoKr or AdaLoRA config says about merging, checked.

    Attributes:
        peft_type: ``IA3``, ``LOHA`` or ``LOKR``.
        r: the default rank (LoHa, LoKr); AdaLoRA: ``init_r``, every module's rank before allocation.
        alpha: the default ``alpha`` (LoHa, LoKr); AdaLoRA: ``lora_alpha``.
        rank_pattern: module pattern → rank, in config order.
        alpha_pattern: module pattern → alpha, in config order.
        fan_in_fan_out: IA³, AdaLoRA: the base stores linear weights transposed (GPT-2's ``Conv1D``).
        feedforward: IA³: ``feedforward_modules`` as a list of name endings …
        feedforward_regex: … or as one regular expression that must match the whole module name.
        unmerged: the config options set that ckpt's merge does not compute (it refuses to merge them).
    """

    peft_type: str
    r: int = 0
    alpha: float = 0.0
    rank_pattern: tuple[tuple[PeftPattern, int], ...] = ()
    alpha_pattern: tuple[tuple[PeftPattern, float], ...] = ()
    fan_in_fan_out: bool = False
    feedforward: tuple[str, ...] = ()
    feedforward_regex: PeftPattern | None = None
    unmerged: tuple[str, ...] = field(default=())

    def rank(self, module: str) -> int:
        """The rank PEFT gives ``module``: the first ``rank_pattern`` key that matches, else ``r``."""
        return next((v for p, v in self.rank_pattern if p.matches(module)), self.r)

    def scale(self, module: str) -> float:
        """``alpha / r`` of ``module`` (LoHa and LoKr), both from their patterns or the defaults."""
        alpha = next((v for p, v in self.alpha_pattern if p.matches(module)), self.alpha)
        return alpha / self.rank(module)

    def is_feedforward(self, module: str) -> bool:
        """IA³: whether PEFT treats ``module`` as feed-forward (``IA3Model._check_target_module_feedforward``)."""
        if self.feedforward_regex is not None:
            return self.feedforward_regex.regex.fullmatch(module) is not None
        return any(module.endswith(key) for key in self.feedforward)


def type_settings(cfg: Mapping[str, JsonValue]) -> TypeSettings:
    """Check an IA³, LoHa, LoKr or AdaLoRA config (the JSON of ``adapter_config.json``) and return what merging needs.

    Raises:
        RecordError: a field has the wrong type or an impossible value; the message names the field.
        UnsupportedStateError: the config is of another type (see ``check_type``).
    """
    kind = peft_type(cfg)
    if kind not in PEFT_TYPES:
        check_type(cfg, "the adapter")  # raises for the types ckpt does not merge
        raise RecordError(f"a {kind} config is read by ckpt.lora.lora_settings")
    unmerged = tuple(name for name in _UNMERGED_OPTIONS if cfg.get(name) not in (None, False, [], {}, ""))
    if kind == "IA3":
        ff = cfg.get("feedforward_modules")
        regex = None
        names: tuple[str, ...] = ()
        if isinstance(ff, str):
            regex = compile_pattern(ff, "feedforward_modules")
        elif isinstance(ff, list) and all(isinstance(k, str) for k in ff):
            names = tuple(str(k) for k in ff)
        elif ff is not None:
            raise RecordError(
                f"IA3 config field 'feedforward_modules' must be a list of names or a pattern, got {ff!r}"
            )
        return TypeSettings(
            kind,
            fan_in_fan_out=_flag(cfg.get("fan_in_fan_out"), "fan_in_fan_out"),
            feedforward=names,
            feedforward_regex=regex,
            unmerged=unmerged,
        )
    if kind == "ADALORA":
        alpha = cfg.get("lora_alpha")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= float(alpha) < float("inf"):
            raise RecordError(f"an ADALORA config needs a finite, non-negative 'lora_alpha', got {alpha!r}")
        pattern = cfg.get("rank_pattern")
        if pattern is not None and not (
            isinstance(pattern, Mapping)
            and all(isinstance(v, list) and all(isinstance(b, bool) for b in v) for v in pattern.values())
        ):
            raise RecordError("ADALORA config field 'rank_pattern' must map module names to lists of true/false")
        return TypeSettings(
            kind,
            r=_positive_int(cfg.get("init_r"), "init_r", kind),
            alpha=float(alpha),
            fan_in_fan_out=_flag(cfg.get("fan_in_fan_out"), "fan_in_fan_out"),
            unmerged=unmerged,
        )
    return TypeSettings(
        kind,
        r=_positive_int(cfg.get("r"), "r", kind),
        alpha=_positive_number(cfg.get("alpha"), "alpha", kind),
        rank_pattern=tuple(
            (compile_pattern(k, "rank_pattern"), _positive_int(v, f"rank_pattern[{k!r}]", kind))
            for k, v in _mapping(cfg.get("rank_pattern"), "rank_pattern").items()
        ),
        alpha_pattern=tuple(
            (compile_pattern(k, "alpha_pattern"), _positive_number(v, f"alpha_pattern[{k!r}]", kind))
            for k, v in _mapping(cfg.get("alpha_pattern"), "alpha_pattern").items()
        ),
        unmerged=unmerged,
    )


def _positive_int(value: Any, name: str, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RecordError(f"a {kind} config needs a positive integer {name!r}, got {value!r}")
    return value


def _positive_number(value: Any, name: str, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < float("inf"):
        raise RecordError(f"a {kind} config needs a positive, finite {name!r}, got {value!r}")
    return float(value)


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RecordError(f"adapter config field {name!r} must be true or false, got {value!r}")
    return value


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RecordError(f"adapter config field {name!r} must be an object (module pattern → number), got {value!r}")
    return value


# -- what each tensor is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """One adapted module of an IA³, LoHa, LoKr or AdaLoRA adapter.

    Attributes:
        module: the module's name in the base model, e.g. ``model.layers.0.mlp.down_proj``.
        tensors: the adapter's tensors of this module, by role (``ia3_l``, ``hada_w1_a``, ``lokr_w2`` …).
        feedforward: IA³: the vector scales the layer's inputs, not its outputs.
        scales_bias: IA³: the layer's bias is scaled too (an output-scaling vector on a layer with a bias).
    """

    module: str
    tensors: Mapping[str, str]
    feedforward: bool = False
    scales_bias: bool = False

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
    for target, key in whole.items():
        for name in tied.get(target, (target,)):
            effective[name] = (entries[name][0], shapes[key])

    edits: list[Edit] = []
    missing: list[str] = []
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
        if dtype not in _FLOAT_DTYPES:
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
            _check_svd(name, got, tuple(weight), settings, adapter=adapter, base=base)
            edit = Edit(name, dict(roles))
        else:
            _check_delta(kind, name, got, tuple(weight), settings.rank(name), adapter=adapter, base=base)
            edit = Edit(name, dict(roles))
        edits.append(edit)
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
    if len(weight) == 2:
        out_dim, in_dim = (weight[1], weight[0]) if settings.fan_in_fan_out else weight
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
        if _numel(bias[1]) != _numel(vector):
            raise StateMismatchError(
                f"{adapter}: the IA3 vector of {name!r} scales {_numel(vector)} outputs, but {name}.bias of base "
                f"{base} is {list(bias[1])}"
            )
        if bias[0] not in _FLOAT_DTYPES:
            raise UnsupportedStateError(
                f"cannot merge into {name}.bias of base {base}: its dtype {bias[0]} is not a float"
            )
    return Edit(name, dict(roles), feedforward=feedforward, scales_bias=scales_bias)


def _check_delta(
    kind: str,
    name: str,
    got: Mapping[str, tuple[int, ...]],
    weight: tuple[int, ...],
    rank: int,
    *,
    adapter: str,
    base: str,
) -> None:
    """A LoHa or LoKr delta's factors fit each other, the config's rank, and the base weight (by shapes alone)."""

    def refuse(what: str) -> StateMismatchError:
        return StateMismatchError(
            f"{adapter}: the {kind} tensors of {name!r} ({_shown(got)}) {what}",
            hint="is this the adapter's base? (or check r and rank_pattern in its config)",
        )

    def product(a: str, b: str) -> tuple[int, ...]:
        if len(got[a]) != 2 or len(got[b]) != 2 or got[a][1] != got[b][0]:
            raise refuse(f"do not multiply: {a} {list(got[a])} @ {b} {list(got[b])}")
        if got[a][1] != rank:
            raise refuse(f"have rank {got[a][1]}, but the config gives that module r={rank}")
        return (got[a][0], got[b][1])

    def tucker(t: str, a: str, b: str) -> tuple[int, ...]:
        # LoHa: einsum("ijkl,jr,ip->prkl", t, w_b, w_a); LoKr: einsum("ijkl,ip,jr->prkl", t, w_a, w_b)
        core, wa, wb = got[t], got[a], got[b]
        if len(core) != 4 or len(wa) != 2 or len(wb) != 2 or core[0] != core[1] or wa[0] != core[0] or wb[0] != core[1]:
            raise refuse(f"do not fit their Tucker core {t} {list(core)}")
        if core[0] != rank:
            raise refuse(f"have rank {core[0]}, but the config gives that module r={rank}")
        return (wa[1], wb[1], *core[2:])

    if kind == "LOHA":
        if "hada_t1" in got:
            one = tucker("hada_t1", "hada_w1_a", "hada_w1_b")
            two = tucker("hada_t2", "hada_w2_a", "hada_w2_b")
        else:
            one, two = product("hada_w1_a", "hada_w1_b"), product("hada_w2_a", "hada_w2_b")
        if one != two:
            raise refuse(f"build factors of different shapes, {list(one)} and {list(two)}")
        delta = one
    else:
        w1 = got["lokr_w1"] if "lokr_w1" in got else product("lokr_w1_a", "lokr_w1_b")
        if "lokr_w2" in got:
            w2 = got["lokr_w2"]
        elif "lokr_t2" in got:
            w2 = tucker("lokr_t2", "lokr_w2_a", "lokr_w2_b")
        else:
            w2 = product("lokr_w2_a", "lokr_w2_b")
        if len(w1) != 2:
            raise refuse(f"hold a first Kronecker factor of shape {list(w1)}, not a matrix")
        delta = _kron_shape((*w1, 1, 1) if len(w2) == 4 else w1, w2)
    if _numel(delta) != _numel(weight):  # PEFT reshapes the delta to the weight's shape, and so does the merge
        raise refuse(f"build a delta of shape {list(delta)}, which does not reshape to the base weight {list(weight)}")


def _check_svd(
    name: str,
    got: Mapping[str, tuple[int, ...]],
    weight: tuple[int, ...],
    settings: TypeSettings,
    *,
    adapter: str,
    base: str,
) -> None:
    """An AdaLoRA module: ``lora_A`` ``[k, in]``, ``lora_E`` ``[k, 1]``, ``lora_B`` ``[out, k]``, ``k ≤ init_r``."""
    a, e, b = got["lora_A"], got["lora_E"], got["lora_B"]
    if len(a) != 2 or len(b) != 2 or e != (a[0], 1) or b[1] != a[0]:
        raise StateMismatchError(
            f"{adapter}: the ADALORA tensors of {name!r} ({_shown(got)}) do not fit each other",
            hint="lora_A is [k, in], lora_E [k, 1] and lora_B [out, k]",
        )
    if a[0] > settings.r:
        raise StateMismatchError(f"{adapter}: the ADALORA of {name!r} has rank {a[0]}, more than init_r={settings.r}")
    delta = (a[1], b[0]) if settings.fan_in_fan_out else (b[0], a[1])
    if delta != weight:
        raise StateMismatchError(
            f"{adapter}: the ADALORA delta of {name!r} is {list(delta)}, but the base weight {name}.weight of {base} "
            f"is {list(weight)}",
            hint="is this the adapter's base? (or check fan_in_fan_out in the adapter config)",
        )


def _kron_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """The shape of ``torch.kron(a, b)`` (the shorter shape is padded with leading ones)."""
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    return tuple(x * y for x, y in zip(a, b, strict=True))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _shown(got: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{role} {list(shape)}" for role, shape in sorted(got.items()))


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
    apply_whole(weights, adapter, found.whole, writable)
    for edit in found.edits:
        weight = weights[edit.target]
        w = as_torch(weight)
        compute = torch.promote_types(w.dtype, torch.float32)
        t = {role: adapter[key].to(compute) for role, key in edit.tensors.items()}
        if found.peft_type == "IA3":
            vector = t["ia3_l"]
            if w.dim() == 2 and settings.fan_in_fan_out:
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
            if settings.fan_in_fan_out:
                delta = delta.T
            scaling = settings.alpha if settings.alpha > 0 else float(t["lora_A"].shape[0])
            merged = w.to(compute) + delta * scaling / (torch.tensor(float(settings.r), dtype=compute) + 1e-5)
        else:
            delta = _loha(t) if found.peft_type == "LOHA" else _lokr(t)
            merged = w.to(compute) + (delta * settings.scale(edit.module)).reshape(w.shape)
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
