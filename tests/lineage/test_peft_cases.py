"""Adapters as PEFT 0.21 writes them, checked against PEFT itself: every tensor kept, merges equal to PEFT's.

Each case builds real transformers/peft models from tiny configs, saves the adapter through ckpt, and compares
LOGITS: of PEFT's own model, of ``merge_and_unload()``, of ``ckpt.restore`` into a fresh model, and of the
exported folder loaded with ``from_pretrained``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model, get_peft_model_state_dict  # noqa: E402
from transformers import LlamaForCausalLM, LlamaForSequenceClassification  # noqa: E402

import ckpt  # noqa: E402
from ckpt.errors import StateMismatchError  # noqa: E402
from ckpt.interop import export, export_peft_folder, import_folder, import_peft_folder  # noqa: E402  # noqa: E402
from ckpt.lineage import load_merged, save_adapter  # noqa: E402

from .models import VOCAB, input_ids, tiny_classifier, tiny_llama, weights, with_lora  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*tie_word_embeddings.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`.*:UserWarning"),
]

ADDED = 8  # tokens added to the vocabulary before training the adapter


@pytest.fixture
def store(tmp_path: Path) -> ckpt.Store:
    return ckpt.init(str(tmp_path / "store"), chunk_size=4096)


def _files(model: Any) -> dict[str, bytes]:
    return {"config.json": model.config.to_json_string().encode()}


def _perturb_lora(model: Any, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


# -- 10.1: resized embeddings saved with save_embedding_layers=True ------------------------------------


def _resized_lora(base: LlamaForCausalLM) -> tuple[Any, dict[str, torch.Tensor]]:
    """A LoRA trained after adding 8 tokens: the embeddings are resized, and saved whole next to the LoRA."""
    model = copy.deepcopy(base)
    model.resize_token_embeddings(VOCAB + ADDED, mean_resizing=False)
    torch.manual_seed(3)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).eval()
    _perturb_lora(lora)
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(lora, save_embedding_layers=True).items()}
    return lora, state


def test_resized_embeddings_are_stored_and_merged(store: ckpt.Store, tmp_path: Path) -> None:
    base = tiny_llama()
    store.save({"model": weights(base)}, "main", model="tiny-llama", files=_files(base))
    lora, state = _resized_lora(base)
    assert len(state) == 10 and "base_model.model.model.embed_tokens.weight" in state

    snap = save_adapter(store, "main", state, branch="lora", config=lora.peft_config["default"])
    stored = store.table(snap.id).tensors
    assert sorted(stored) == sorted(f"model/{k}" for k in state)  # all 10, not the 8 LoRA tensors
    assert list(stored["model/base_model.model.lm_head.weight"].shape) == [VOCAB + ADDED, 32]

    ids = torch.cat([input_ids(), torch.tensor([[VOCAB + 1, VOCAB + 7]] * 2)], dim=1)  # new tokens too
    peft_logits = _logits(lora, ids)
    merged_model = copy.deepcopy(lora).merge_and_unload()
    merged = load_merged(store, "lora")["model"]
    want = weights(merged_model)
    assert list(merged) == list(want)
    for name, value in want.items():
        torch.testing.assert_close(merged[name], value, msg=name)
    assert merged["model.embed_tokens.weight"].shape[0] == VOCAB + ADDED

    fresh = tiny_llama(seed=9)
    fresh.resize_token_embeddings(VOCAB + ADDED, mean_resizing=False)
    ckpt.restore(fresh, store, "lora")  # an adapter restores merged into its base
    torch.testing.assert_close(_logits(fresh.eval(), ids), peft_logits)
    torch.testing.assert_close(_logits(fresh, ids), _logits(merged_model, ids))

    # merged into a snapshot: the base's config.json (vocab 128) no longer fits, so it must be given
    with pytest.raises(StateMismatchError, match=r"config\.json") as info:
        ckpt.merge_adapter(store, "lora", branch="merged")
    assert "files=" in str(info.value.hint) and "merged" not in store.branches()
    ckpt.merge_adapter(store, "lora", branch="merged", files=_files(merged_model))
    export(store, "merged", tmp_path / "out")
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(_logits(loaded, ids), peft_logits)

    # the adapter exports as a PEFT folder that PEFT loads onto the resized base, with the same logits
    export_peft_folder(store, "lora", tmp_path / "adapter")
    resized = copy.deepcopy(base)
    resized.resize_token_embeddings(VOCAB + ADDED, mean_resizing=False)
    again = peft.PeftModel.from_pretrained(resized, tmp_path / "adapter").eval()
    torch.testing.assert_close(_logits(again, ids), peft_logits)
    assert store.verify().ok


def test_embedding_lora_keeps_the_base_layer_peft_saves(store: ckpt.Store) -> None:
    """LoRA on embed_tokens: PEFT's default ("auto") saves embed_tokens.base_layer.weight next to the pair."""
    base = tiny_llama()
    store.save({"model": weights(base)}, "main", model="tiny-llama")
    lora = with_lora(base, targets=("embed_tokens", "q_proj"))
    with torch.no_grad():
        lora.base_model.model.model.embed_tokens.base_layer.weight.mul_(1.5)  # trained as a whole
    state = get_peft_model_state_dict(lora)
    assert "base_model.model.model.embed_tokens.base_layer.weight" in state
    snap = save_adapter(store, "main", state, branch="lora", config=lora.peft_config["default"])
    assert snap.tensor_count == len(state)
    merged = load_merged(store, "lora")["model"]
    for name, value in weights(copy.deepcopy(lora).merge_and_unload()).items():
        torch.testing.assert_close(merged[name], value, msg=name)
    ids = input_ids()
    fresh = tiny_llama(seed=5)
    ckpt.restore(fresh, store, "lora")
    torch.testing.assert_close(_logits(fresh, ids), _logits(lora, ids))
    assert store.verify().ok


# -- 10.1: modules_to_save, named by PEFT 0.21 without any marker ---------------------------------------


def _classifier_lora(base: LlamaForSequenceClassification) -> Any:
    torch.manual_seed(4)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["score"], task_type="SEQ_CLS"
    )
    lora = get_peft_model(copy.deepcopy(base), config).eval()
    _perturb_lora(lora)
    with torch.no_grad():  # the head is trained as a whole
        head = lora.base_model.model.score.modules_to_save["default"]
        head.weight.add_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(5)))
    return lora


def test_modules_to_save_head_is_stored_and_restored(store: ckpt.Store, tmp_path: Path) -> None:
    base = tiny_classifier()
    store.save({"model": weights(base)}, "main", model="tiny-cls", files=_files(base))
    lora = _classifier_lora(base)
    state = get_peft_model_state_dict(lora)
    assert "base_model.model.score.weight" in state  # no modules_to_save marker in PEFT 0.21

    snap = save_adapter(store, "main", state, branch="cls-lora", config=lora.peft_config["default"])
    assert "model/base_model.model.score.weight" in store.table(snap.id).tensors
    ids = input_ids()
    peft_logits = _logits(lora, ids)
    merged_model = copy.deepcopy(lora).merge_and_unload()
    torch.testing.assert_close(_logits(merged_model, ids), peft_logits)

    fresh = tiny_classifier(seed=7)
    ckpt.restore(fresh, store, "cls-lora")
    torch.testing.assert_close(_logits(fresh, ids), peft_logits)  # the trained head, not the base's
    assert not torch.allclose(_logits(base, ids), peft_logits, atol=1e-3)

    ckpt.merge_adapter(store, "cls-lora", branch="cls-merged")
    export(store, "cls-merged", tmp_path / "out")
    loaded = LlamaForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(_logits(loaded, ids), peft_logits)
    assert store.verify().ok


def test_import_checks_lora_shapes_even_with_modules_to_save(store: ckpt.Store, tmp_path: Path) -> None:
    base = tiny_classifier()
    base.save_pretrained(tmp_path / "base")
    import_folder(store, tmp_path / "base", branch="main", model="tiny-cls")
    lora = _classifier_lora(base)
    lora.save_pretrained(tmp_path / "adapter")

    smaller = tiny_classifier(hidden=16)  # a wrong base: its q_proj is 16 × 16
    store.save({"model": weights(smaller)}, "small", model="small")
    with pytest.raises(StateMismatchError, match="q_proj"):
        import_peft_folder(store, tmp_path / "adapter", "small", branch="x")
    causal = tiny_llama()  # a base without the head the adapter replaces
    store.save({"model": weights(causal)}, "causal", model="causal")
    with pytest.raises(StateMismatchError, match="score"):
        import_peft_folder(store, tmp_path / "adapter", "causal", branch="x")
    assert "x" not in store.branches()

    snap = import_peft_folder(store, tmp_path / "adapter", "main", branch="cls-lora")
    assert "model/base_model.model.score.weight" in store.table(snap.id).tensors
    fresh = tiny_classifier(seed=8)
    ckpt.restore(fresh, store, "cls-lora")
    ids = input_ids()
    torch.testing.assert_close(_logits(fresh, ids), _logits(lora, ids))
    assert store.verify().ok


# -- 10.2: a LoRA on the lm_head of a model with tied embeddings --------------------------------------


def test_lora_on_tied_lm_head_merges_as_peft_does(store: ckpt.Store, tmp_path: Path) -> None:
    """PEFT merges into the shared parameter: lm_head and embed_tokens both change and stay tied."""
    base = tiny_llama(tied=True)
    assert base.lm_head.weight is base.model.embed_tokens.weight
    store.save({"model": base.state_dict()}, "main", model="tied", files=_files(base))
    assert store.table("main").tied == (("model/model.embed_tokens.weight", "model/lm_head.weight"),)

    lora = with_lora(base, targets=("lm_head", "q_proj"))
    state = get_peft_model_state_dict(lora)  # PEFT adds lm_head.base_layer.weight ("auto")
    save_adapter(store, "main", state, branch="lora", config=lora.peft_config["default"])
    ids = input_ids()
    merged_model = copy.deepcopy(lora).merge_and_unload()
    assert merged_model.lm_head.weight is merged_model.model.embed_tokens.weight
    expected = _logits(merged_model, ids)

    snap = ckpt.merge_adapter(store, "lora", branch="merged")
    table = store.table(snap.id)
    assert table.tied == (("model/model.embed_tokens.weight", "model/lm_head.weight"),)
    loaded = store.load("merged")["model"]
    assert loaded["lm_head.weight"] is loaded["model.embed_tokens.weight"]
    torch.testing.assert_close(loaded["lm_head.weight"], merged_model.lm_head.weight.detach())
    assert json.loads(store.files("merged")["config.json"])["tie_word_embeddings"] is True

    for rev in ("lora", "merged"):  # restore of the adapter (merged on the fly) and of the merged snapshot
        fresh = tiny_llama(seed=6, tied=True)
        ckpt.restore(fresh, store, rev)
        assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
        torch.testing.assert_close(_logits(fresh, ids), expected)

    export(store, "merged", tmp_path / "out")
    exported = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(_logits(exported, ids), expected)
    assert store.verify().ok


# -- DoRA, stored whole and merged as PEFT merges it (more DoRA cases in test_peft_types.py) ----------------


def test_dora_is_stored_whole_and_merged_as_peft(store: ckpt.Store, tmp_path: Path) -> None:
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    import_folder(store, tmp_path / "base", branch="main", model="tiny-llama")
    torch.manual_seed(2)
    dora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    dora.eval()
    _perturb_lora(dora)
    state = get_peft_model_state_dict(dora)
    assert any("lora_magnitude_vector" in k for k in state)
    snap = save_adapter(store, "main", state, branch="dora", config=dora.peft_config["default"])
    assert snap.tensor_count == len(state)
    merged = ckpt.load_merged(store, "dora")["model"]
    for name, value in weights(copy.deepcopy(dora).merge_and_unload()).items():
        torch.testing.assert_close(merged[name], value, msg=name)
    export_peft_folder(store, "dora", tmp_path / "adapter")
    again = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    ids = input_ids()
    torch.testing.assert_close(_logits(again.eval(), ids), _logits(dora, ids))
    assert store.verify().ok


# -- patterns, matched as PEFT matches them ------------------------------------------------------------


def test_rank_and_alpha_patterns_merge_as_peft(store: ckpt.Store) -> None:
    base = tiny_llama()
    store.save({"model": weights(base)}, "main", model="tiny-llama")
    lora = with_lora(
        base,
        targets=("q_proj", "v_proj"),
        rank_pattern={"v_proj": 2},
        alpha_pattern={r"layers\.1\..*q_proj": 32, "model.layers.0.self_attn.v_proj": 3},
    )
    state = get_peft_model_state_dict(lora)
    assert state["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"].shape[0] == 2
    save_adapter(store, "main", state, branch="lora", config=lora.peft_config["default"])
    merged = load_merged(store, "lora")["model"]
    for name, value in weights(copy.deepcopy(lora).merge_and_unload()).items():
        torch.testing.assert_close(merged[name], value, msg=name)
    ids = input_ids()
    fresh = tiny_llama(seed=4)
    ckpt.restore(fresh, store, "lora")
    torch.testing.assert_close(_logits(fresh, ids), _logits(lora, ids))


def test_a_continued_adapter_restores_and_exports_as_an_adapter(store: ckpt.Store, tmp_path: Path) -> None:
    """The second save of an adapter on its branch is 'continue': restore and export must still see an adapter."""
    base = tiny_llama()
    store.save({"model": weights(base)}, "main", model="tiny-llama", files=_files(base))
    first, second = with_lora(base), with_lora(base, seed=7)
    config = first.peft_config["default"]
    save_adapter(store, "main", get_peft_model_state_dict(first), branch="lora", config=config, step=1)
    snap = save_adapter(store, "main", get_peft_model_state_dict(second), branch="lora", config=config, step=2)
    assert snap.relation == "continue"
    fresh = tiny_llama(seed=3)
    ckpt.restore(fresh, store, "lora")
    ids = input_ids()
    torch.testing.assert_close(_logits(fresh, ids), _logits(second, ids))

    from click.testing import CliRunner

    from ckpt.cli import cli

    result = CliRunner().invoke(cli, ["--store", str(store.url), "restore", "lora", "--to", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_an_unrecorded_tie_is_refused_not_half_merged(store: ckpt.Store) -> None:
    """A base saved without its tie (a table of an older ckpt, or cloned tensors): lm_head and embed_tokens
    hold the same bytes, and a LoRA on lm_head would leave embed_tokens behind while config.json says tied."""
    base = tiny_llama(tied=True)
    store.save({"model": weights(base)}, "main", model="tied", files=_files(base))  # clones: no tie recorded
    assert store.table("main").tied == ()
    lora = with_lora(base, targets=("lm_head", "q_proj"))
    with pytest.raises(StateMismatchError, match="without recording them as tied") as info:
        save_adapter(store, "main", get_peft_model_state_dict(lora), branch="lora", config=lora.peft_config["default"])
    assert "store.save" in str(info.value.hint)
    assert "lora" not in store.branches()
