"""Adapter types beyond plain LoRA, each checked against real PEFT 0.21 models built from tiny configs.

For every type ckpt merges (DoRA on linear, embedding, ``fan_in_fan_out`` and conv layers; LoRA with
``lora_bias``; LoRA on conv layers; IA³; LoHa; LoKr): the weights ckpt merges equal PEFT's
``merge_and_unload()`` (within the dtype's tolerance), ``ckpt.restore`` of the adapter gives PEFT's outputs, and
the exported PEFT folder loads with ``PeftModel.from_pretrained`` and gives bit-identical outputs. Types ckpt does
not merge are stored and exported as they are, and their merge is refused naming the type and a tensor.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from peft import (  # noqa: E402
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
)

import ckpt  # noqa: E402
from ckpt.errors import RecordError, StateMismatchError, UnsupportedStateError  # noqa: E402
from ckpt.interop import export_peft_folder, import_peft_folder  # noqa: E402
from ckpt.lineage import save_adapter  # noqa: E402

from .models import input_ids, tiny_llama, weights  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


class ConvNet(torch.nn.Module):  # type: ignore[misc]
    """Conv2d 3×3 (with bias), a pointwise Conv2d, a Conv1d and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pw = torch.nn.Conv2d(8, 8, 1)
        self.c1 = torch.nn.Conv1d(8, 4, 3)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.pw(torch.relu(self.conv(x))))
        return self.fc(self.c1(h.mean(-1)).mean(-1))


def _llama(seed: int = 0, dtype: Any = torch.float32) -> Any:
    return tiny_llama(seed, dtype)


def _gpt2(seed: int = 0, dtype: Any = torch.float32) -> Any:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)
    return transformers.GPT2LMHeadModel(config).to(dtype).eval()


def _convnet(seed: int = 0, dtype: Any = torch.float32) -> Any:
    torch.manual_seed(seed)
    return ConvNet().to(dtype).eval()


_INPUTS: dict[Callable[..., Any], Callable[[], Any]] = {
    _llama: input_ids,
    _gpt2: lambda: torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(3)),
    _convnet: lambda: torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3)),
}
_ADAPTER_PARAMS = ("lora_", "ia3_", "hada_", "lokr_")


def _out(model: Any, x: Any) -> Any:
    with torch.no_grad():
        y = model(x.to(next(model.parameters()).dtype) if x.is_floating_point() else x)
    return getattr(y, "logits", y)


def _trained(base: Any, config: Any, seed: int = 1) -> Any:
    """A PEFT model of ``config`` on a copy of ``base`` whose adapter tensors all moved (as training moves them)."""
    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(p in name for p in _ADAPTER_PARAMS):
                noise = torch.randn(param.shape, generator=gen) * 0.1
                param.add_(noise.to(param.dtype))
    return model


def _check(store: ckpt.Store, tmp_path: Path, build: Callable[..., Any], config: Any, dtype: Any) -> Any:
    """Save an adapter of ``config`` over ``build()``'s weights and check it against PEFT three ways."""
    base = build(0, dtype)
    store.save({"model": weights(base)}, "main", model="tiny")
    model = _trained(base, config)
    x = _INPUTS[build]()
    expected = _out(model, x)
    state = get_peft_model_state_dict(model)
    snap = save_adapter(store, "main", state, branch="adapter", config=model.peft_config["default"])
    assert snap.tensor_count == len(state) and snap.base == store.resolve("main").id

    # the merged weights are PEFT's merge_and_unload()
    merged = ckpt.load_merged(store, "adapter")["model"]
    merged_model = copy.deepcopy(model).merge_and_unload()
    reference = weights(merged_model)
    assert list(merged) == list(reference)
    changed = 0
    for name, value in reference.items():
        assert merged[name].dtype == value.dtype, name
        torch.testing.assert_close(merged[name], value, msg=name)
        changed += not torch.equal(value, weights(base)[name])
    assert changed  # the adapter did change the model

    # ckpt.restore of the adapter into a fresh model: merged on the way, PEFT's outputs
    fresh = build(9, dtype)
    ckpt.restore(fresh, store, "adapter")
    torch.testing.assert_close(_out(fresh, x), _out(merged_model, x))
    loose = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {}  # merged vs unmerged in bf16
    torch.testing.assert_close(_out(fresh, x), expected, **loose)

    # the exported PEFT folder loads in PEFT with bit-identical outputs
    export_peft_folder(store, "adapter", tmp_path / "adapter")
    again = build(8, dtype)
    ckpt.restore(again, store, "main")
    loaded = PeftModel.from_pretrained(again, tmp_path / "adapter").eval()
    assert torch.equal(_out(loaded, x), expected)
    assert store.verify().ok
    return model


@pytest.fixture
def store(tmp_path: Path) -> ckpt.Store:
    return ckpt.init(str(tmp_path / "store"), chunk_size=4096)


# -- LoRA variants -------------------------------------------------------------------------------------

LORA_CASES = {
    "dora-linear-embedding": (_llama, dict(target_modules=["q_proj", "v_proj", "embed_tokens"], use_dora=True)),
    "dora-rslora-patterns": (
        _llama,
        dict(target_modules=["q_proj", "o_proj"], use_dora=True, use_rslora=True, rank_pattern={"o_proj": 2}),
    ),
    "dora-fan-in-fan-out": (_gpt2, dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, use_dora=True)),
    "dora-conv": (_convnet, dict(r=2, lora_alpha=4, target_modules=["conv", "pw", "c1", "fc"], use_dora=True)),
    "conv": (_convnet, dict(r=2, lora_alpha=4, target_modules=["conv", "pw", "c1", "fc"])),
    "lora-bias-fan-in-fan-out": (_gpt2, dict(target_modules=["c_attn"], fan_in_fan_out=True, lora_bias=True)),
    "lora-bias-conv": (_convnet, dict(r=2, lora_alpha=4, target_modules=["conv", "pw", "fc"], lora_bias=True)),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_variants_merge_as_peft(store: ckpt.Store, tmp_path: Path, case: str) -> None:
    build, options = LORA_CASES[case]
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, **options})
    model = _check(store, tmp_path, build, config, torch.float32)
    state = get_peft_model_state_dict(model)
    if config.use_dora:
        assert any(k.endswith("lora_magnitude_vector") for k in state)
    if config.lora_bias:
        assert any(k.endswith("lora_B.bias") for k in state)


def test_dora_in_bfloat16_merges_within_its_tolerance(store: ckpt.Store, tmp_path: Path) -> None:
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"], use_dora=True)
    _check(store, tmp_path, _llama, config, torch.bfloat16)


# -- IA³, LoHa, LoKr -----------------------------------------------------------------------------------

TYPE_CASES = {
    "ia3": (_llama, IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])),
    "ia3-fan-in-fan-out-bias": (
        _gpt2,
        IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True),
    ),
    "ia3-conv": (_convnet, IA3Config(target_modules=["conv", "pw", "fc"], feedforward_modules=["pw"])),
    "loha": (_llama, LoHaConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2})),
    "loha-conv": (_convnet, LoHaConfig(r=2, alpha=4, target_modules=["conv", "pw", "c1", "fc"])),
    "loha-effective-conv": (
        _convnet,
        LoHaConfig(r=2, alpha=4, target_modules=["conv", "c1"], use_effective_conv2d=True, alpha_pattern={"c1": 1}),
    ),
    "lokr": (_llama, LoKrConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])),
    "lokr-decomposed": (
        _llama,
        LoKrConfig(r=2, alpha=4, target_modules=["q_proj", "down_proj"], decompose_both=True, decompose_factor=8),
    ),
    "lokr-conv": (_convnet, LoKrConfig(r=2, alpha=4, target_modules=["conv", "pw", "c1", "fc"])),
    "lokr-effective-conv": (
        _convnet,
        LoKrConfig(r=1, alpha=2, target_modules=["conv"], use_effective_conv2d=True),
    ),
}


@pytest.mark.parametrize("case", list(TYPE_CASES))
def test_other_types_merge_as_peft(store: ckpt.Store, tmp_path: Path, case: str) -> None:
    build, config = TYPE_CASES[case]
    model = _check(store, tmp_path, build, copy.deepcopy(config), torch.float32)
    kind = str(model.peft_config["default"].peft_type.value)
    assert store.resolve("adapter").model == f"tiny-{kind.lower()}"


def test_ia3_in_bfloat16_and_from_a_folder(store: ckpt.Store, tmp_path: Path) -> None:
    base = _llama(0, torch.bfloat16)
    base.save_pretrained(tmp_path / "base")
    from ckpt.interop import import_folder

    import_folder(store, tmp_path / "base", branch="main", model="tiny")
    model = _trained(base, IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]))
    model.save_pretrained(tmp_path / "ia3")
    snap = import_peft_folder(store, tmp_path / "ia3", "main", branch="ia3")
    assert snap.metadata["adapter_config"]["peft_type"] == "IA3"
    merged = ckpt.load_merged(store, "ia3")["model"]
    for name, value in weights(copy.deepcopy(model).merge_and_unload()).items():
        torch.testing.assert_close(merged[name], value, msg=name)


@pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match:RuntimeWarning")  # PEFT's own
def test_adalora_after_rank_allocation_merges_as_peft(store: ckpt.Store, tmp_path: Path) -> None:
    """AdaLoRA trained with its budget allocation: modules keep different ranks (some none), the divisor stays
    init_r; the folder PEFT saves, imported, merges as PEFT's reloaded model does."""
    from peft import AdaLoraConfig

    base = _llama()
    store.save({"model": weights(base)}, "main", model="tiny")
    torch.manual_seed(1)
    config = AdaLoraConfig(
        init_r=6, target_r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"], total_step=20, tinit=2, tfinal=2
    )
    model = get_peft_model(copy.deepcopy(base), config)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = input_ids()
    for step in range(20):
        model(ids, labels=ids).loss.backward()
        opt.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad()
    model.eval()
    model.save_pretrained(tmp_path / "adalora")
    state = get_peft_model_state_dict(model)
    ranks = {k: v.shape[0] for k, v in state.items() if k.endswith("lora_A")}
    assert len(set(ranks.values())) > 1 and max(ranks.values()) < 6  # the allocation pruned ranks

    snap = import_peft_folder(store, tmp_path / "adalora", "main", branch="adalora")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adalora").eval()
    expected = _out(reloaded, ids)
    merged = ckpt.load_merged(store, snap.id)["model"]
    for name, value in weights(copy.deepcopy(reloaded).merge_and_unload()).items():
        torch.testing.assert_close(merged[name], value, msg=name)
    fresh = _llama(4)
    ckpt.restore(fresh, store, "adalora")
    torch.testing.assert_close(_out(fresh, ids), expected)
    torch.testing.assert_close(_out(fresh, ids), _out(model, ids))  # the live model, before saving, too

    saved = save_adapter(store, "main", state, branch="adalora-saved", config=model.peft_config["default"])
    export_peft_folder(store, saved.id, tmp_path / "out")
    again = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "out").eval()
    assert torch.equal(_out(again, ids), expected)


# -- named tensors, mismatches, refusals ---------------------------------------------------------------


def test_adapter_tensors_named_after_their_adapter_are_renamed(store: ckpt.Store) -> None:
    base = _llama()
    store.save({"model": weights(base)}, "main")
    for branch, config in (
        ("dora", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)),
        ("ia3", IA3Config(target_modules=["k_proj"], feedforward_modules=[])),
        ("lokr", LoKrConfig(r=4, alpha=8, target_modules=["q_proj"])),
    ):
        model = _trained(base, config)
        named = {k: v for k, v in model.state_dict().items() if any(p in k for p in _ADAPTER_PARAMS)}
        assert all(".default" in k for k in named)
        snap = save_adapter(store, "main", named, branch=branch, config=model.peft_config["default"])
        want = sorted(f"model/{k}" for k in get_peft_model_state_dict(model))
        assert sorted(store.table(snap.id).tensors) == want, branch
        full = model.state_dict()  # base weights too: which tensors are the adapter's cannot be told
        with pytest.raises(UnsupportedStateError, match=r"peft_model\.state_dict"):
            save_adapter(store, "main", full, branch=f"{branch}-full", config=model.peft_config["default"])


def test_configs_that_do_not_describe_the_tensors_are_refused(store: ckpt.Store) -> None:
    base = _llama()
    store.save({"model": weights(base)}, "main")
    ia3 = _trained(base, IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"]))
    state = get_peft_model_state_dict(ia3)
    not_ff = {"peft_type": "IA3", "target_modules": ["down_proj"], "feedforward_modules": []}
    with pytest.raises(StateMismatchError, match=r"IA3 vector of 'model\.layers\.0\.mlp\.down_proj' is \[1, 64\]"):
        save_adapter(store, "main", state, branch="x", config=not_ff)

    loha = _trained(base, LoHaConfig(r=4, alpha=8, target_modules=["q_proj"]))
    state = get_peft_model_state_dict(loha)
    with pytest.raises(StateMismatchError, match="rank 4, but the config gives that module r=2"):
        save_adapter(store, "main", state, branch="x", config={**loha.peft_config["default"].to_dict(), "r": 2})
    incomplete = {k: v for k, v in state.items() if "layers.1" not in k or "hada_w2_b" not in k}
    with pytest.raises(StateMismatchError, match="not a complete set of LOHA tensors"):
        save_adapter(store, "main", incomplete, branch="x", config=loha.peft_config["default"])

    dora = _trained(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    state = get_peft_model_state_dict(dora)
    plain = {**dora.peft_config["default"].to_dict(), "use_dora": False}
    with pytest.raises(StateMismatchError, match="does not set use_dora"):
        save_adapter(store, "main", state, branch="x", config=plain)
    no_magnitude = {k: v for k, v in state.items() if "magnitude" not in k}
    with pytest.raises(StateMismatchError, match="has no DoRA magnitude"):
        save_adapter(store, "main", no_magnitude, branch="x", config=dora.peft_config["default"])
    with pytest.raises(RecordError, match="use_dora and lora_bias"):
        save_adapter(
            store, "main", state, branch="x", config={**dora.peft_config["default"].to_dict(), "lora_bias": True}
        )
    # lora_bias on a layer without a bias (Llama's projections have none): PEFT cannot merge it either
    biased = {**get_peft_model_state_dict(_trained(base, LoraConfig(target_modules=["q_proj"])))}
    biased["base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"] = torch.zeros(32)
    layer0 = {"peft_type": "LORA", "r": 8, "lora_alpha": 8, "lora_bias": True}
    with pytest.raises(StateMismatchError, match="lora_bias"):
        save_adapter(store, "main", biased, branch="x", config=layer0)
    assert "x" not in store.branches()


def test_types_ckpt_does_not_merge_are_stored_and_refused_by_name(store: ckpt.Store, tmp_path: Path) -> None:
    from peft import OFTConfig, VeraConfig

    base = _llama()
    base.save_pretrained(tmp_path / "base")
    from ckpt.interop import import_folder

    import_folder(store, tmp_path / "base", branch="main", model="tiny")
    x = input_ids()
    for kind, config, tensor in (
        ("VERA", VeraConfig(r=4, target_modules=["q_proj", "v_proj"]), "vera_lambda"),
        ("OFT", OFTConfig(r=4, oft_block_size=0, target_modules=["q_proj"]), "oft_"),
    ):
        model = _trained(base, config)
        if kind == "VERA":  # VeRA trains only its scaling vectors
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "vera_lambda" in name:
                        param.add_(0.1)
        folder = tmp_path / kind
        model.save_pretrained(folder)
        branch = kind.lower()
        snap = import_peft_folder(store, folder, "main", branch=branch)
        assert snap.base == store.resolve("main").id
        with pytest.raises(UnsupportedStateError, match=rf"is a {kind} adapter .*{tensor}") as info:
            ckpt.load_merged(store, branch)
        assert "merge_and_unload" in (info.value.hint or "")
        with pytest.raises(UnsupportedStateError, match=kind):
            ckpt.restore(_llama(5), store, branch)
        with pytest.raises(RecordError, match=f"this config is {kind}"):
            save_adapter(store, "main", get_peft_model_state_dict(model), branch="x", config=config)
        export_peft_folder(store, branch, tmp_path / f"{kind}-out")
        again = PeftModel.from_pretrained(_llama(0), tmp_path / f"{kind}-out").eval()
        assert torch.equal(_out(again, x), _out(model, x))
