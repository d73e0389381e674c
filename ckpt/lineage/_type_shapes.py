"""Shape checks of the IA³/LoHa/LoKr/AdaLoRA factors against each other and the base weight (no byte read).

Split from ``_types``, which uses them while planning a merge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ckpt.errors import StateMismatchError
from ckpt.lineage._config import TypeSettings

__all__ = ["check_delta", "check_svd", "numel"]


def check_delta(
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
    if numel(delta) != numel(weight):  # PEFT reshapes the delta to the weight's shape, and so does the merge
        raise refuse(f"build a delta of shape {list(delta)}, which does not reshape to the base weight {list(weight)}")


def check_svd(
    name: str,
    got: Mapping[str, tuple[int, ...]],
    weight: tuple[int, ...],
    settings: TypeSettings,
    *,
    adapter: str,
    base: str,
) -> bool:
    """An AdaLoRA module: ``lora_A`` ``[k, in]``, ``lora_E`` ``[k, 1]``, ``lora_B`` ``[out, k]``, ``k ≤ init_r``.

    Returns:
        Whether the layer holds its weight transposed (recorded, or as its shape tells).
    """
    a, e, b = got["lora_A"], got["lora_E"], got["lora_B"]
    if len(a) != 2 or len(b) != 2 or e != (a[0], 1) or b[1] != a[0]:
        raise StateMismatchError(
            f"{adapter}: the ADALORA tensors of {name!r} ({_shown(got)}) do not fit each other",
            hint="lora_A is [k, in], lora_E [k, 1] and lora_B [out, k]",
        )
    if a[0] > settings.r:
        raise StateMismatchError(f"{adapter}: the ADALORA of {name!r} has rank {a[0]}, more than init_r={settings.r}")
    known = settings.transposed(name)
    if known is None:
        known = weight == (a[1], b[0]) and a[1] != b[0]
    delta = (a[1], b[0]) if known else (b[0], a[1])
    if delta != weight:
        raise StateMismatchError(
            f"{adapter}: the ADALORA delta of {name!r} is {list(delta)}, but the base weight {name}.weight of {base} "
            f"is {list(weight)}",
            hint="is this the adapter's base? (its ranks and layer sizes do not fit)",
        )
    return known


def _kron_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """The shape of ``torch.kron(a, b)`` (the shorter shape is padded with leading ones)."""
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    return tuple(x * y for x, y in zip(a, b, strict=True))


def numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _shown(got: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{role} {list(shape)}" for role, shape in sorted(got.items()))
