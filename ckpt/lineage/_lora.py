"""LoRA as PEFT defines it: what each adapter tensor is, how it fits its base, and the merge math.

``ckpt.lineage`` stores and loads adapter snapshots; this module says what their tensors mean, without
reading any byte (everything here works on names, shapes and the config, until ``merge_into`` computes):

- **LoRA pairs**: ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` (linear and conv layers) and
  ``<module>.lora_embedding_A`` / ``<module>.lora_embedding_B`` (embeddings), in the form PEFT writes to
  ``adapter_model.safetensors`` (``get_peft_model_state_dict``). Merged as ``W + scale · B @ A`` (for a conv
  layer, ``B`` and ``A`` flattened to matrices and the product reshaped to the kernel's shape).
- **their companions**: a DoRA magnitude ``<module>.lora_magnitude_vector`` (``use_dora``: the merged weight is
  ``m / ‖W + ΔW‖ · (W + ΔW)``, the norm taken per output row of the weight as the layer computes it) and a LoRA
  bias ``<module>.lora_B.bias`` (``lora_bias``: added to the base's bias, scaled).
- **whole tensors**: every other tensor whose name, once PEFT's ``base_model.model.`` prefix and a
  ``.base_layer`` segment are taken out, is a tensor of the base: a ``modules_to_save`` module (PEFT 0.21 writes
  a classifier head as ``base_model.model.score.weight``, with no ``modules_to_save`` marker), or an embedding
  saved with ``save_embedding_layers`` (after ``resize_token_embeddings`` it has more rows than the base's). PEFT
  loads them into the model in place of the base's tensor before it merges, and so does ``merge_into``.
- **other PEFT tensors** (trainable tokens, LoRA on grouped convolutions …): stored like the rest, but merging
  them is refused (``UnsupportedStateError``, naming the tensor), never skipped.

No tensor is ever dropped by its name: a tensor that is none of these is refused, named.

``alpha_pattern`` and ``rank_pattern`` keys are matched the way PEFT matches them (see ``_patterns``); the config
is checked by ``_config.lora_settings``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ckpt.errors import StateMismatchError, UnsupportedStateError
from ckpt.lineage._apply import FLOAT_DTYPES, apply_whole, as_torch, assign
from ckpt.lineage._config import PEFT_HINT, LoraSettings
from ckpt.lineage._layers import resolve_square
from ckpt.lineage._names import PEFT_PREFIX, base_name

__all__ = ["Pair", "Plan", "check_mergeable", "merge_into", "plan"]

_LINEAR_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_EMBEDDING_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_embedding_[AB])(?:\.(?P<adapter>[^.]+))?$")
#: DoRA's learnt magnitude of a LoRA layer (PEFT writes it without ``.weight``; older versions with it).
_MAGNITUDE_KEY = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.(?P<adapter>(?!weight$)[^.]+))?(?:\.weight)?$")
#: The bias of ``lora_B`` (``lora_bias=True``).
_BIAS_KEY = re.compile(r"^(?P<module>.+)\.lora_B(?:\.(?P<adapter>[^.]+))?\.bias$")
#: Name segments of PEFT's own tensors (not the base's): such a tensor is stored, but not merged.
_PEFT_SEGMENTS = frozenset(
    {"modules_to_save", "original_module", "token_adapter", "trainable_tokens_delta", "trainable_tokens_original"}
)


@dataclass(frozen=True)
class Pair:
    """One adapted module: its LoRA A and B tensors, their companions, and the base weight they change.

    Attributes:
        module: the module's name in the base model, e.g. ``model.layers.0.self_attn.q_proj``.
        a: the adapter's ``lora_A`` tensor name.
        b: the adapter's ``lora_B`` tensor name.
        embedding: an embedding (``lora_embedding_A/B``: the delta is transposed).
        conv: a convolution (A and B are kernels: the delta is the product of their flattened forms).
        magnitude: DoRA's magnitude tensor (``lora_magnitude_vector``), if the adapter uses DoRA.
        bias: ``lora_B``'s bias (``lora_B.bias``), if the adapter sets ``lora_bias``.
        transposed: a linear layer that holds its weight ``[in, out]`` (PEFT's per-layer ``fan_in_fan_out``).
        rank: the pair's rank.
        alpha: the module's alpha (``alpha_pattern`` matched in the config's order, or recorded).
        scale: ``alpha / rank`` (``alpha / √rank`` with rsLoRA).
    """

    module: str
    a: str
    b: str
    embedding: bool
    conv: bool = False
    magnitude: str | None = None
    bias: str | None = None
    transposed: bool = False
    rank: int = 0
    alpha: float = 0.0
    scale: float = 0.0

    @property
    def target(self) -> str:
        """The base tensor the delta is added to."""
        return f"{self.module}.weight"

    @property
    def bias_target(self) -> str:
        """The base layer's bias, which a ``lora_bias`` changes."""
        return f"{self.module}.bias"


@dataclass(frozen=True)
class Plan:
    """What an adapter's tensors do to its base.

    Attributes:
        pairs: LoRA pairs merged as ``W + scale · B @ A`` (DoRA: rescaled), in the adapter's order.
        whole: base tensor name → adapter tensor that replaces it (``modules_to_save``, saved embeddings).
        unmerged: adapter tensors ckpt stores but does not merge (trainable tokens, grouped conv LoRA …).
    """

    pairs: tuple[Pair, ...]
    whole: dict[str, str]
    unmerged: tuple[str, ...]

    @property
    def targets(self) -> list[str]:
        """Every base tensor the merge changes."""
        return [
            *(p.target for p in self.pairs),
            *(p.bias_target for p in self.pairs if p.bias is not None),
            *self.whole,
        ]


def _peft_owned(name: str) -> bool:
    return any(p.startswith("lora_") or p in _PEFT_SEGMENTS for p in name.split("."))


def plan(
    shapes: Mapping[str, tuple[int, ...]],
    settings: LoraSettings,
    entries: Mapping[str, tuple[str, tuple[int, ...]]],
    ties: Sequence[Sequence[str]] = (),
    *,
    adapter: str,
    base: str,
) -> Plan:
    """What each adapter tensor does, once everything that names and shapes can tell has been checked.

    Args:
        shapes: adapter tensor name (PEFT's file form) → shape.
        settings: the checked LoRA config.
        entries: the base's model tensors, name → (dtype, shape).
        ties: groups of base tensor names that are one tensor (tied weights).
        adapter: the adapter, for messages.
        base: the base, for messages.

    Raises:
        StateMismatchError: a ``lora_A`` without its ``lora_B`` (or the reverse); A and B of different ranks,
            a rank 0, or a rank other than the config's (``r``/``rank_pattern``); a target the base lacks, or
            whose shape is not that of the delta; a whole tensor the base does not have; a DoRA magnitude or a
            LoRA bias that the config does not announce, that is missing where it does, that has no LoRA pair
            or the wrong shape, or a LoRA bias on a base layer without a bias.
        UnsupportedStateError: a LoRA pair on a base tensor that is not floating point.
    """
    halves: dict[tuple[str, bool], dict[str, str]] = {}
    companions: dict[str, dict[str, str]] = {"magnitude": {}, "bias": {}}
    unmerged: list[str] = []
    whole: dict[str, str] = {}
    for key in shapes:
        m = _LINEAR_KEY.match(key) or _EMBEDDING_KEY.match(key)
        if m is not None and m["adapter"] is None:
            part = str(m["part"])
            halves.setdefault((str(m["module"]), "embedding" in part), {})[part[-1]] = key
            continue
        extra = next(
            ((kind, c) for kind, rx in (("magnitude", _MAGNITUDE_KEY), ("bias", _BIAS_KEY)) if (c := rx.match(key))),
            None,
        )
        if extra is not None and extra[1]["adapter"] is None:
            companions[extra[0]][str(extra[1]["module"])] = key
            continue
        target = base_name(key)
        if m is None and target in entries and not _peft_owned(target):
            if target in whole:
                raise StateMismatchError(f"{adapter}: {whole[target]!r} and {key!r} both replace {target!r}")
            whole[target] = key
        elif _peft_owned(key):
            unmerged.append(key)
        else:
            raise StateMismatchError(
                f"{adapter} holds {key!r}, a whole tensor for {target!r}, which base {base} does not have",
                hint="is this the adapter's base? (PEFT saves modules_to_save and resized embeddings whole)",
            )
    effective = dict(entries)
    tied = {name: group for group in ties for name in group}
    for target, key in whole.items():  # a modules_to_save copy replaces its own tensor only (PEFT unties it)
        for name in (target,) if settings.replaces_module(target) else tied.get(target, (target,)):
            effective[name] = (entries[name][0], shapes[key])

    pairs: list[Pair] = []
    missing: list[str] = []
    square: list[Pair] = []  # linear pairs whose orientation neither shapes nor a record tell
    for (module, embedding), ab in halves.items():
        if set(ab) != {"A", "B"}:
            have = next(iter(ab.values()))
            raise StateMismatchError(f"{adapter} has {have!r} but not its {'B' if 'A' in ab else 'A'} half")
        a, b = shapes[ab["A"]], shapes[ab["B"]]
        name = module.removeprefix(PEFT_PREFIX)
        magnitude = companions["magnitude"].pop(module, None)
        bias = companions["bias"].pop(module, None)
        conv = not embedding and len(a) == len(b) and len(a) > 2
        if not conv and (len(a) != 2 or len(b) != 2):
            raise StateMismatchError(f"{adapter}: LoRA of {name!r} has A {list(a)} and B {list(b)}, not matrices")
        if conv and b[1] != a[0] and b[1] and a[0] % b[1] == 0:
            unmerged.extend(k for k in (ab["A"], ab["B"], magnitude, bias) if k is not None)
            continue  # a grouped convolution: PEFT itself does not merge it
        if a[0] != b[1] or (conv and any(d != 1 for d in b[2:])):
            raise StateMismatchError(f"{adapter}: LoRA of {name!r} has A {list(a)} and B {list(b)}; their ranks differ")
        if a[0] == 0:
            raise StateMismatchError(f"{adapter}: LoRA of {name!r} has rank 0 (A is {list(a)})")
        want = settings.rank(name)
        if a[0] != want:
            raise StateMismatchError(
                f"{adapter}: LoRA of {name!r} has rank {a[0]}, but its config gives that module r={want}",
                hint="the adapter config does not describe these tensors (check r and rank_pattern)",
            )
        alpha = settings.alpha_of(name)
        pair = Pair(
            module=name,
            a=ab["A"],
            b=ab["B"],
            embedding=embedding,
            conv=conv,
            magnitude=magnitude,
            bias=bias,
            rank=a[0],
            alpha=alpha,
            scale=alpha / math.sqrt(a[0]) if settings.use_rslora else alpha / a[0],
        )
        if pair.target not in effective:
            missing.append(pair.target)
            continue
        dtype, shape = effective[pair.target]
        if dtype not in FLOAT_DTYPES:
            raise UnsupportedStateError(
                f"cannot merge into {pair.target!r} of base {base}: its dtype {dtype} is not a float type"
            )
        linear = not conv and not embedding
        known = settings.transposed(name) if linear else None
        by_shape = linear and known is None
        if conv:
            delta: tuple[int, ...] = (b[0], *a[1:])
        elif embedding:
            delta = (a[1], b[0])
        elif known is not None:
            delta = (a[1], b[0]) if known else (b[0], a[1])
        else:  # the shape tells, unless the weight is square
            known = tuple(shape) == (a[1], b[0]) and a[1] != b[0]
            delta = (a[1], b[0]) if known else (b[0], a[1])
        if tuple(shape) != delta:
            raise StateMismatchError(
                f"{adapter}: the LoRA delta of {name!r} is {list(delta)}"
                + (f" (or {[delta[1], delta[0]]} transposed)" if by_shape else "")
                + f", but the base weight {pair.target!r} of {base} is {list(shape)}",
                hint="is this the adapter's base? (its LoRA ranks and layer sizes do not fit)",
            )
        pair = replace(pair, transposed=bool(known))
        if linear and settings.transposed(name) is None and a[1] == b[0]:
            square.append(pair)
            continue
        _check_companions(pair, shapes, settings, effective, tuple(shape), adapter=adapter, base=base)
        pairs.append(pair)
    if square:
        decided = {p.module: p.transposed for p in pairs if not p.embedding and not p.conv}
        flag = resolve_square(
            [p.module for p in square], decided, settings.fan_in_fan_out, entries, adapter=adapter, base=base
        )
        for pair in square:
            pair = replace(pair, transposed=flag)
            _check_companions(pair, shapes, settings, effective, effective[pair.target][1], adapter=adapter, base=base)
            pairs.append(pair)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StateMismatchError(
            f"{adapter} targets {shown}, which base {base} does not have",
            hint="is this the adapter's base? LoRA names map 'base_model.model.<name>.lora_A…' to '<name>.weight'; "
            "a model saved with tied embeddings may store only the input embedding",
        )
    for kind, left in companions.items():
        if left:
            key = next(iter(left.values()))
            what = "DoRA magnitude" if kind == "magnitude" else "LoRA bias"
            raise StateMismatchError(f"{adapter} holds the {what} {key!r}, but no LoRA pair of that module")
    return Plan(pairs=tuple(pairs), whole=whole, unmerged=tuple(unmerged))


def _check_companions(
    pair: Pair,
    shapes: Mapping[str, tuple[int, ...]],
    settings: LoraSettings,
    effective: Mapping[str, tuple[str, tuple[int, ...]]],
    weight: tuple[int, ...],
    *,
    adapter: str,
    base: str,
) -> None:
    """A pair's DoRA magnitude and LoRA bias: there exactly when the config says so, with the layer's shapes."""
    name = pair.module
    if settings.use_dora != (pair.magnitude is not None):
        raise StateMismatchError(
            f"{adapter}: its config {'sets' if settings.use_dora else 'does not set'} use_dora, but the LoRA of "
            f"{name!r} {'has no' if settings.use_dora else 'has a'} DoRA magnitude (lora_magnitude_vector)",
            hint="the adapter config does not describe these tensors",
        )
    if settings.lora_bias != (pair.bias is not None) and not (pair.embedding and settings.lora_bias):
        raise StateMismatchError(
            f"{adapter}: its config {'sets' if settings.lora_bias else 'does not set'} lora_bias, but the LoRA of "
            f"{name!r} {'has no' if settings.lora_bias else 'has a'} bias (lora_B.bias)",
            hint="the adapter config does not describe these tensors",
        )
    # the weight's output rows, as the layer holds them: rows of W, columns for fan_in_fan_out and embeddings
    rows = weight[1] if pair.embedding or pair.transposed else weight[0]
    if pair.magnitude is not None:
        want: tuple[int, ...] = (1, rows, *([1] * (len(weight) - 2))) if pair.conv else (rows,)
        if tuple(shapes[pair.magnitude]) != want:
            raise StateMismatchError(
                f"{adapter}: the DoRA magnitude {pair.magnitude!r} is {list(shapes[pair.magnitude])}, but the "
                f"layer {name!r} of base {base} needs {list(want)}",
                hint="is this the adapter's base?",
            )
    if pair.bias is not None:
        if tuple(shapes[pair.bias]) != (rows,):
            raise StateMismatchError(
                f"{adapter}: the LoRA bias {pair.bias!r} is {list(shapes[pair.bias])}, but the layer {name!r} of "
                f"base {base} has {rows} outputs"
            )
        have = effective.get(pair.bias_target)
        if have is None or tuple(have[1]) != (rows,):
            raise StateMismatchError(
                f"{adapter} sets lora_bias on {name!r}, but {pair.bias_target!r} of base {base} is "
                f"{'missing' if have is None else list(have[1])}: PEFT merges the LoRA bias into the layer's bias",
                hint="is this the adapter's base?",
            )
        if have[0] not in FLOAT_DTYPES:
            raise UnsupportedStateError(f"cannot merge into {pair.bias_target!r} of base {base}: dtype {have[0]}")


def check_mergeable(found: Plan, settings: LoraSettings, adapter: str) -> None:
    """Refuse what ckpt stores but does not merge.

    Raises:
        UnsupportedStateError: config options or tensors beyond plain LoRA (names them).
    """
    if settings.unmerged:
        raise UnsupportedStateError(
            f"{adapter} is a LoRA adapter that sets {', '.join(settings.unmerged)}; ckpt merges LoRA with rsLoRA, "
            "DoRA, lora_bias, rank and alpha patterns, not these",
            hint=PEFT_HINT,
        )
    if found.unmerged:
        shown = ", ".join(repr(k) for k in found.unmerged[:3])
        more = f" and {len(found.unmerged) - 3} more" if len(found.unmerged) > 3 else ""
        raise UnsupportedStateError(
            f"{adapter} is a LoRA adapter holding {shown}{more}, which ckpt does not merge (it merges LoRA on "
            "linear, embedding and ungrouped conv layers, and whole modules)",
            hint=PEFT_HINT,
        )


# -- merging -----------------------------------------------------------------------------------------


def merge_into(
    weights: MutableMapping[str, Any],
    adapter: Mapping[str, Any],
    found: Plan,
    settings: LoraSettings,
    *,
    in_place: Iterable[int] = (),
) -> None:
    """Apply an adapter to a base's weights as PEFT's ``set_peft_model_state_dict`` + ``merge_and_unload()`` do.

    Whole tensors first (PEFT loads them into the model, cast to the model's dtype), then every LoRA delta
    ``ΔW = scale · B @ A`` (transposed for embeddings and ``fan_in_fan_out``; for a conv layer
    ``B.view(out, r) @ A.view(r, -1)`` reshaped to the kernel's shape), computed in float32 (float64 for float64
    weights) and added once, cast back to the weight's dtype. With DoRA the sum is rescaled as PEFT's
    ``DoraLinearVariant.merge`` does: ``m / ‖W + ΔW‖ · (W + ΔW)``, the norm taken per output row of the layer
    (over the input dimension; for ``fan_in_fan_out`` weights and embeddings over their first dimension, for
    convolutions over everything but the output channel), ``m`` the stored magnitude. A ``lora_bias`` adds
    ``scale · lora_B.bias`` to the layer's bias. Weights that are one tensor (tied, as ``Store.load`` gives them)
    change together, as PEFT's in-place merge changes a tied parameter: a LoRA on ``lm_head`` of a model with
    tied embeddings changes the input embedding too.

    Args:
        weights: base tensor name → tensor (torch or numpy); changed in place.
        adapter: adapter tensor name → torch tensor.
        found: ``plan(...)`` of the adapter.
        settings: the checked LoRA config.
        in_place: ``id()`` of tensors to overwrite in place (``into=`` buffers) when the shape allows.

    Raises:
        StateMismatchError: two whole tensors of the adapter put different values into one tied tensor.
    """
    import torch

    writable = set(in_place)
    apply_whole(weights, adapter, found.whole, writable, replaces=settings.replaces_module)
    for pair in found.pairs:
        weight = weights[pair.target]
        w = as_torch(weight)
        compute = torch.promote_types(w.dtype, torch.float32)
        a, b = adapter[pair.a].to(compute), adapter[pair.b].to(compute)
        rank = int(a.shape[0])
        scale = pair.scale
        if pair.conv:
            delta = (b.reshape(b.shape[0], rank) @ a.reshape(rank, -1)).reshape(w.shape)
        else:
            delta = b @ a
            if pair.embedding or pair.transposed:
                delta = delta.T
        merged = w.to(compute) + delta * scale
        if pair.magnitude is not None:
            merged = _dora(merged, adapter[pair.magnitude].to(compute), pair)
        assign(weights, weight, merged.to(w.dtype), writable)
        if pair.bias is not None:
            old = weights[pair.bias_target]
            bias = as_torch(old)
            new = bias.to(compute) + adapter[pair.bias].to(compute) * scale
            assign(weights, old, new.to(bias.dtype), writable)


def _dora(merged: Any, magnitude: Any, pair: Pair) -> Any:
    """``m / ‖W + ΔW‖ · (W + ΔW)`` with the norm of each output row of the layer (PEFT's ``get_weight_norm``)."""
    if pair.conv:
        norm = merged.flatten(1).norm(dim=1)
        return (magnitude.reshape(-1) / norm).reshape(-1, *([1] * (merged.dim() - 1))) * merged
    if pair.embedding or pair.transposed:  # the layer's rows are this weight's columns
        return merged * (magnitude / merged.norm(dim=0)).reshape(1, -1)
    return merged * (magnitude / merged.norm(dim=1)).reshape(-1, 1)
