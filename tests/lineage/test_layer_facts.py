"""What an adapter's config does not say: per-layer fan_in_fan_out (GPT-2 Conv1D next to nn.Linear) and the
order of alpha_pattern/rank_pattern keys. Every merge is compared with PEFT's own merge_and_unload()."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import ckpt  # noqa: E402
from ckpt.errors import RecordError, StateMismatchError  # noqa: E402
from ckpt.interop import export_peft_folder, import_peft_folder  # noqa: E402
from ckpt.lineage import adapter_config, load_merged, save_adapter  # noqa: E402

from .models import input_ids, tiny_llama, trained, weights, with_lora  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::UserWarning"),  # PEFT warns as it flips fan_in_fan_out per layer
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


def _gpt2(head: str = "classifier") -> Any:
    """A tiny GPT-2 (Conv1D attention and MLP) with a linear head: ``score`` [3, 16] or ``lm_head`` [32, 16]."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=32,
        n_positions=16,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cls = transformers.GPT2ForSequenceClassification if head == "classifier" else transformers.GPT2LMHeadModel
    return cls(cfg).eval()


def _peft_merged(model: Any) -> dict[str, Any]:
    return weights(copy.deepcopy(model).merge_and_unload())


def _assert_equal_to_peft(merged: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(expected) <= set(merged)
    worst = max((merged[k] - expected[k]).abs().max().item() for k in expected)
    assert worst < 1e-6, worst


@pytest.fixture
def store(tmp_path: Path) -> ckpt.Store:
    return ckpt.init(str(tmp_path / "store"))


MIXED = [
    ("lora", lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["attn.c_proj", "score"])),
    ("lora-all-linear", lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")),
    ("lora-dora", lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["attn.c_proj", "score"], use_dora=True)),
    ("ia3", lambda: peft.IA3Config(target_modules=["attn.c_proj", "score"], feedforward_modules=[])),
    ("ia3-ff", lambda: peft.IA3Config(target_modules=["attn.c_proj", "score"], feedforward_modules=["attn.c_proj"])),
    (
        "adalora",
        lambda: peft.AdaLoraConfig(
            init_r=4, target_r=2, total_step=10, lora_alpha=8, target_modules=["c_proj", "score"]
        ),
    ),
]


@pytest.mark.parametrize(("label", "make"), MIXED, ids=[m[0] for m in MIXED])
def test_mixed_conv1d_and_linear_targets_merge_as_peft(store: ckpt.Store, label: str, make: Any) -> None:
    """PEFT sets fan_in_fan_out per layer (Conv1D: true, Linear: false); the config keeps the last layer's.

    A square Conv1D weight (GPT-2's attn.c_proj, 16 x 16) cannot tell its orientation by its shape: without the
    model ckpt refuses; with it, it records each layer's and merges as PEFT."""
    base = _gpt2()
    store.save({"model": weights(base)}, "main")
    model = trained(base, make())
    state = peft.get_peft_model_state_dict(model)
    config = model.peft_config["default"]
    assert config.fan_in_fan_out is False  # the last adapted layer (score) is an nn.Linear

    with pytest.raises(StateMismatchError, match="cannot tell whether the square weights") as e:
        save_adapter(store, "main", state, branch="guess", config=config)
    assert "peft_model" in (e.value.hint or "")
    assert "guess" not in store.branches()

    snap = save_adapter(store, "main", state, branch="ad", config=config, peft_model=model)
    layers = snap.metadata["adapter_layers"]
    assert layers["transformer.h.0.attn.c_proj"]["fan_in_fan_out"] is True
    assert layers["score"]["fan_in_fan_out"] is False
    _assert_equal_to_peft(load_merged(store, "ad")["model"], _peft_merged(model))

    fresh = _gpt2()
    torch.manual_seed(3)
    for p in fresh.parameters():
        p.data.normal_()
    ckpt.restore(fresh, store, "ad")
    x = torch.randint(1, 32, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, model(x).logits, atol=1e-5, rtol=0)


def test_a_peft_folder_of_mixed_layers_imports_with_its_model(store: ckpt.Store, tmp_path: Path) -> None:
    base = _gpt2()
    store.save({"model": weights(base)}, "main")
    model = trained(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["attn.c_proj", "score"]))
    model.save_pretrained(tmp_path / "ad")
    with pytest.raises(StateMismatchError, match="cannot tell"):
        import_peft_folder(store, tmp_path / "ad", "main", branch="guess")
    loaded = peft.PeftModel.from_pretrained(_gpt2(), tmp_path / "ad")
    import_peft_folder(store, tmp_path / "ad", "main", branch="ad", peft_model=loaded)
    _assert_equal_to_peft(load_merged(store, "ad")["model"], _peft_merged(model))
    # the plain base model tells as much (transformers' Conv1D is held transposed)
    import_peft_folder(store, tmp_path / "ad", "main", branch="ad2", peft_model=_gpt2())
    _assert_equal_to_peft(load_merged(store, "ad2")["model"], _peft_merged(model))


@pytest.mark.parametrize(
    "targets", [["c_attn", "lm_head"], ["c_attn", "attn.c_proj"], ["c_fc", "mlp.c_proj"]], ids=lambda t: "+".join(t)
)
def test_shapes_tell_without_the_model(store: ckpt.Store, targets: list[str]) -> None:
    """Non-square weights fit one orientation; square ones follow the flag when nothing contradicts it."""
    base = _gpt2("lm")
    store.save({"model": base.state_dict()}, "main")  # lm_head is tied to transformer.wte: the tie is recorded
    model = trained(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    save_adapter(store, "main", peft.get_peft_model_state_dict(model), branch="ad", config=model.peft_config["default"])
    _assert_equal_to_peft(load_merged(store, "ad")["model"], _peft_merged(model))


def test_recorded_layer_facts_are_checked(store: ckpt.Store) -> None:
    base = tiny_llama()
    store.save({"model": weights(base)}, "main")
    lora = with_lora(base)
    with pytest.raises(RecordError, match="reserved"):
        save_adapter(
            store,
            "main",
            peft.get_peft_model_state_dict(lora),
            branch="x",
            config=lora.peft_config["default"],
            metadata={"adapter_layers": {}},
        )
    with pytest.raises(RecordError, match="PeftModel"):
        save_adapter(
            store,
            "main",
            peft.get_peft_model_state_dict(lora),
            branch="x",
            config=lora.peft_config["default"],
            peft_model="not a model",
        )


# -- alpha_pattern / rank_pattern order ---------------------------------------------------------------

PATTERNS = {r"layers\.1\..*": 2, r".*q_proj": 32}  # both match model.layers.1.self_attn.q_proj; PEFT: first wins


@pytest.mark.parametrize("field", ["alpha_pattern", "rank_pattern"])
def test_pattern_keys_keep_their_order(store: ckpt.Store, tmp_path: Path, field: str) -> None:
    base = tiny_llama()
    store.save({"model": weights(base)}, "main")
    if field == "alpha_pattern":
        lora = with_lora(base, alpha_pattern=PATTERNS)
        assert lora.base_model.model.model.layers[1].self_attn.q_proj.scaling["default"] == 2 / 4
    else:
        lora = with_lora(base, rank_pattern=PATTERNS)
        assert lora.base_model.model.model.layers[1].self_attn.q_proj.r["default"] == 2
    snap = save_adapter(
        store, "main", peft.get_peft_model_state_dict(lora), branch="lora", config=lora.peft_config["default"]
    )
    assert list(adapter_config(store, "lora")[field]) == list(PATTERNS)
    facts = snap.metadata["adapter_layers"]["model.layers.1.self_attn.q_proj"]
    assert (facts["alpha"], facts["r"]) == ((2, 4) if field == "alpha_pattern" else (8, 2))

    expected = _peft_merged(lora)
    _assert_equal_to_peft(load_merged(store, "lora")["model"], expected)
    ids = input_ids()
    with torch.no_grad():
        want = lora(ids).logits
    fresh = tiny_llama(seed=4)
    ckpt.restore(fresh, store, "lora")
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, want, atol=1e-5, rtol=0)

    export_peft_folder(store, "lora", tmp_path / "out")
    assert list(json.loads((tmp_path / "out" / "adapter_config.json").read_text())[field]) == list(PATTERNS)
    again = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, want, atol=1e-5, rtol=0)


def test_an_adapter_saved_without_layer_facts_merges_from_its_config_or_refuses(store: ckpt.Store) -> None:
    """Snapshots written before ``adapter_layers`` existed: merged from config and shapes, or refused, never guessed."""
    from ckpt.lineage import config_bytes

    base = _gpt2()
    main = store.save({"model": weights(base)}, "main")
    for label, targets in (("plain", ["c_attn", "score"]), ("mixed", ["attn.c_proj", "score"])):
        model = trained(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
        cfg = model.peft_config["default"].to_dict()
        cfg = {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}
        cfg["peft_type"] = "LORA"
        cfg.pop("task_type", None)
        store.save(
            {"model": dict(peft.get_peft_model_state_dict(model))},
            label,
            parents=[main.id],
            relation="adapter",
            base=main.id,
            metadata={"adapter_config": json.loads(config_bytes(cfg))},
            files={"adapter_config.json": config_bytes(cfg)},
        )
        if label == "plain":
            _assert_equal_to_peft(load_merged(store, label)["model"], _peft_merged(model))
        else:
            with pytest.raises(StateMismatchError, match="cannot tell"):
                load_merged(store, label)
