"""Adapters: save_adapter records, load_merged against PEFT's merge_and_unload(), merge() snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import ckpt  # noqa: E402
from ckpt.errors import RecordError, RefExistsError, StateMismatchError, UnsupportedStateError  # noqa: E402
from ckpt.lineage import CONFIG_KEY, adapter_config, load_merged, merge_adapter, save_adapter  # noqa: E402

from .models import adapter_state, tiny_llama, weights, with_lora  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


@pytest.fixture
def store(tmp_path: Path) -> ckpt.Store:
    """A local store with 4 KiB chunks (the tiny model's big tensors span several)."""
    return ckpt.init(str(tmp_path / "store"), chunk_size=4096)


def _base(store: ckpt.Store, dtype: torch.dtype = torch.float32) -> tuple[object, ckpt.Snapshot]:
    model = tiny_llama(dtype=dtype)
    return model, store.save({"model": weights(model)}, "main", model="tiny-llama")


def test_save_adapter_stores_only_the_adapter(store: ckpt.Store) -> None:
    model, base = _base(store)
    lora = with_lora(model)
    snap = save_adapter(store, "main", adapter_state(lora), branch="lora", config=lora.peft_config["default"])

    assert snap.relation == "adapter" and snap.parents == (base.id,) and snap.base == base.id
    assert snap.model == "tiny-llama-lora"
    names = list(store.table(snap.id).tensors)
    assert len(names) == 8 and all(".lora_A.weight" in n or ".lora_B.weight" in n for n in names)
    assert all(n.startswith("model/base_model.model.model.layers.") for n in names)
    assert snap.tensor_bytes == sum(t.numel() * t.element_size() for t in adapter_state(lora).values())

    config = json.loads(store.files(snap.id)["adapter_config.json"])
    assert config == snap.metadata[CONFIG_KEY] == adapter_config(store, snap.id)
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert config["use_rslora"] is False and config["fan_in_fan_out"] is False
    assert store.children(base.id) == [snap]


def test_full_peft_state_dict_is_refused_and_named_lora_tensors_are_renamed(store: ckpt.Store) -> None:
    """peft_model.state_dict() mixes base weights in: which tensors are the adapter's cannot be told by names."""
    model, _ = _base(store)
    lora = with_lora(model)
    full = lora.state_dict()  # base weights + '….lora_A.default.weight'
    assert any(".base_layer." in k for k in full) and any(".default." in k for k in full)
    with pytest.raises(UnsupportedStateError, match=r"peft_model\.state_dict\(\)") as info:
        save_adapter(store, "main", full, branch="lora", config=lora.peft_config["default"].to_dict())
    assert "base_model.model." in str(info.value) and "get_peft_model_state_dict" in str(info.value.hint)
    assert "lora" not in store.branches()
    # LoRA tensors alone, with their adapter name, are unambiguous: renamed to the file form
    named = {k: v for k, v in full.items() if ".lora_" in k}
    snap = save_adapter(store, "main", named, branch="lora", config=lora.peft_config["default"].to_dict())
    expected = sorted(f"model/{k}" for k in adapter_state(lora))
    assert sorted(store.table(snap.id).tensors) == expected
    assert store.verify().ok


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
def test_load_merged_equals_merge_and_unload(store: ckpt.Store, dtype: torch.dtype, use_rslora: bool) -> None:
    model, _ = _base(store, dtype)
    lora = with_lora(model, use_rslora=use_rslora)
    save_adapter(store, "main", adapter_state(lora), branch="lora", config=lora.peft_config["default"])

    merged = load_merged(store, "lora")["model"]
    expected = weights(lora.merge_and_unload())
    assert list(merged) == list(expected)
    changed = 0
    for name, want in expected.items():
        got = merged[name]
        assert got.dtype == dtype == want.dtype, name
        torch.testing.assert_close(got, want)  # the default tolerance of the dtype
        changed += not torch.equal(got, weights(model)[name])
    assert changed == 4  # q_proj and v_proj of both layers


def test_rslora_scale_differs_from_plain(store: ckpt.Store) -> None:
    model, _ = _base(store)
    plain, rs = with_lora(model), with_lora(model, use_rslora=True)
    save_adapter(store, "main", adapter_state(plain), branch="plain", config=plain.peft_config["default"])
    save_adapter(store, "main", adapter_state(rs), branch="rs", config=rs.peft_config["default"])
    q = "model.layers.0.self_attn.q_proj.weight"
    w = weights(model)[q]
    d_plain = load_merged(store, "plain")["model"][q] - w
    d_rs = load_merged(store, "rs")["model"][q] - w
    torch.testing.assert_close(d_rs, d_plain * (8 / 4**0.5) / (8 / 4))  # alpha/√r vs alpha/r


def test_alpha_pattern_and_embedding_lora(store: ckpt.Store) -> None:
    model, _ = _base(store)
    lora = with_lora(model, targets=("q_proj", "embed_tokens"), alpha_pattern={"layers.1.self_attn.q_proj": 32})
    save_adapter(store, "main", adapter_state(lora), branch="lora", config=lora.peft_config["default"])
    merged = load_merged(store, "lora")["model"]
    for name, want in weights(lora.merge_and_unload()).items():
        torch.testing.assert_close(merged[name], want, msg=name)


def test_fan_in_fan_out_conv1d(tmp_path: Path) -> None:
    """GPT-2 keeps its Conv1D weights transposed: PEFT sets fan_in_fan_out and so must the merge."""
    from transformers import GPT2Config, GPT2LMHeadModel

    store = ckpt.init(str(tmp_path / "store"))
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0)
    gpt2 = GPT2LMHeadModel(config).eval()
    store.save({"model": weights(gpt2)}, "main", model="tiny-gpt2")
    lora = with_lora(gpt2, targets=("c_attn",), fan_in_fan_out=True)
    save_adapter(store, "main", adapter_state(lora), branch="lora", config=lora.peft_config["default"])
    assert adapter_config(store, "lora")["fan_in_fan_out"] is True
    merged = load_merged(store, "lora")["model"]
    for name, want in weights(lora.merge_and_unload()).items():
        torch.testing.assert_close(merged[name], want, msg=name)


def test_merge_saves_the_merged_model(store: ckpt.Store) -> None:
    model, base = _base(store)
    lora = with_lora(model)
    adapter = save_adapter(store, "main", adapter_state(lora), branch="lora", config=lora.peft_config["default"])
    before = store.stats().chunk_bytes
    snap = merge_adapter(store, "lora", branch="merged", model="tiny-llama-merged")

    assert snap.relation == "merge" and snap.parents == (adapter.id, base.id) and snap.base is None
    assert snap.model == "tiny-llama-merged" and store.branches()["merged"] == snap.id
    assert [s.id for s in store.lineage("merged")] == [snap.id, adapter.id, base.id]
    assert [s.id for s in store.children(adapter.id)] == [snap.id]
    assert {s.id for s in store.children(base.id)} == {adapter.id, snap.id}
    loaded = store.load("merged")["model"]
    for name, want in weights(lora.merge_and_unload()).items():
        torch.testing.assert_close(loaded[name], want)
    # only the four merged matrices are new bytes; the other 17 tensors are the base's chunks
    assert store.stats().chunk_bytes - before < 4 * (32 * 32 * 4 + 16) + 1
    with pytest.raises(RefExistsError):
        merge_adapter(store, "lora", branch="merged")


def test_load_merged_into_existing_tensors(store: ckpt.Store) -> None:
    model, _ = _base(store)
    lora = with_lora(model)
    save_adapter(store, "main", adapter_state(lora), branch="lora", config=lora.peft_config["default"])
    buffers = {f"model/{k}": torch.empty_like(v) for k, v in weights(model).items()}
    state = load_merged(store, "lora", into=buffers)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert state["model"][q] is buffers[f"model/{q}"]
    torch.testing.assert_close(buffers[f"model/{q}"], weights(lora.merge_and_unload())[q])


def test_adapter_keeps_training_on_its_branch(store: ckpt.Store) -> None:
    model, base = _base(store)
    lora = with_lora(model)
    config = lora.peft_config["default"]
    first = save_adapter(store, "main", adapter_state(lora), branch="lora", config=config, step=1)
    second = save_adapter(store, "main", adapter_state(with_lora(model, seed=7)), branch="lora", config=config, step=2)
    assert second.relation == "continue" and second.parents == (first.id,) and second.base == base.id
    assert second.model == first.model
    assert [s.relation for s in store.lineage("lora")] == ["continue", "adapter", "import"]
    other = store.save({"model": weights(model)}, "other", model="other")
    with pytest.raises(RefExistsError, match="not an adapter of"):
        save_adapter(store, other.id, adapter_state(lora), branch="lora", config=config)


def test_errors_are_clear(store: ckpt.Store) -> None:
    model, base = _base(store)
    lora = with_lora(model)
    config = lora.peft_config["default"]
    state = adapter_state(lora)

    with pytest.raises(RecordError, match="not an adapter"):
        load_merged(store, "main")
    with pytest.raises(StateMismatchError, match="no LoRA tensor"):
        save_adapter(store, "main", weights(model), branch="x", config=config)
    missing_b = {k: v for k, v in state.items() if "layers.1.self_attn.v_proj.lora_B" not in k}
    with pytest.raises(StateMismatchError, match="not its B half"):
        save_adapter(store, "main", missing_b, branch="x", config=config)
    with pytest.raises(RecordError, match="positive integer 'r'"):
        save_adapter(store, "main", state, branch="x", config={"peft_type": "LORA", "lora_alpha": 8})
    dora = {**state, "base_model.model.q.lora_magnitude_vector.default.weight": torch.ones(2)}
    with pytest.raises(StateMismatchError, match="lora_magnitude_vector"):  # a magnitude of no LoRA pair
        save_adapter(store, "main", dora, branch="x", config=config)

    # a base without the target module: refused before anything is written, and at merge time
    smaller = {k: v for k, v in weights(model).items() if "layers.1." not in k}
    other = store.save({"model": smaller}, "small", model="small")
    with pytest.raises(StateMismatchError, match=r"model\.layers\.1\.self_attn\.q_proj\.weight"):
        save_adapter(store, other.id, state, branch="x", config=config)
    assert "x" not in store.branches()
    ok = save_adapter(store, base.id, state, branch="ok", config=config)
    forced = store.save(
        {"model": state},
        "forced",
        parents=[other.id],
        relation="adapter",
        base=other.id,
        metadata={CONFIG_KEY: adapter_config(store, ok.id)},
    )
    with pytest.raises(StateMismatchError, match="does not have"):
        load_merged(store, forced.id)


def test_adapter_over_an_adapter_merges_both(store: ckpt.Store) -> None:
    model, _ = _base(store)
    first = with_lora(model)
    save_adapter(store, "main", adapter_state(first), branch="one", config=first.peft_config["default"])
    second = with_lora(first.merge_and_unload(), targets=("k_proj", "v_proj"), seed=5)
    two = save_adapter(store, "one", adapter_state(second), branch="two", config=second.peft_config["default"])
    assert two.base == store.resolve("one").id
    merged = load_merged(store, "two")["model"]
    for name, want in weights(second.merge_and_unload()).items():
        torch.testing.assert_close(merged[name], want, msg=name)


def test_load_merged_as_numpy(store: ckpt.Store) -> None:
    model, _ = _base(store)
    lora = with_lora(model)
    save_adapter(store, "main", adapter_state(lora), branch="lora", config=lora.peft_config["default"])
    merged = load_merged(store, "lora", framework="numpy")["model"]
    q = "model.layers.1.self_attn.v_proj.weight"
    assert type(merged[q]).__module__ == "numpy"
    torch.testing.assert_close(torch.from_numpy(merged[q]), weights(lora.merge_and_unload())[q])
