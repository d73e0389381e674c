"""Tied weights and adapters: modules_to_save unties as PEFT does; a tie is never broken silently by a read."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import ckpt  # noqa: E402
from ckpt.errors import StateMismatchError  # noqa: E402
from ckpt.interop import export  # noqa: E402
from ckpt.lineage import load_merged, merge_adapter, save_adapter  # noqa: E402

from .models import input_ids, llama_config, tiny_llama, trained, weights  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::UserWarning"),  # PEFT warns about tied modules_to_save
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"


@pytest.fixture
def store(tmp_path: Path) -> ckpt.Store:
    return ckpt.init(str(tmp_path / "store"), chunk_size=4096)


def _tied_base(store: ckpt.Store) -> Any:
    base = tiny_llama(tied=True)
    assert base.lm_head.weight is base.model.embed_tokens.weight
    store.save({"model": base.state_dict()}, "main", files={"config.json": base.config.to_json_string().encode()})
    return base


def _logits(model: Any) -> Any:
    with torch.no_grad():
        return model(input_ids()).logits


@pytest.mark.parametrize(
    ("kind", "module"), [("lora", "lm_head"), ("lora", "embed_tokens"), ("ia3", "lm_head")], ids=lambda v: v
)
def test_modules_to_save_on_a_tied_model_unties_as_peft(
    store: ckpt.Store, tmp_path: Path, kind: str, module: str
) -> None:
    """PEFT trains a copy of the module and puts it in place of the base's: only that name changes."""
    base = _tied_base(store)
    if kind == "lora":
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=[module])
    else:
        config = peft.IA3Config(target_modules=["q_proj"], feedforward_modules=[], modules_to_save=[module])
    model = trained(base, config)
    save_adapter(store, "main", peft.get_peft_model_state_dict(model), branch="ad", config=model.peft_config["default"])
    merged_model = copy.deepcopy(model).merge_and_unload()
    assert merged_model.lm_head.weight is not merged_model.model.embed_tokens.weight
    expected = weights(merged_model)

    merged = load_merged(store, "ad")["model"]
    assert merged[HEAD] is not merged[EMBED]
    for name in (HEAD, EMBED, "model.layers.0.self_attn.q_proj.weight"):
        torch.testing.assert_close(merged[name], expected[name], atol=1e-6, rtol=0)

    # a tied live model cannot hold the untied result: refused, never half-loaded
    fresh = tiny_llama(seed=5, tied=True)
    before = weights(fresh)
    with pytest.raises(StateMismatchError, match="one tied parameter"):
        ckpt.restore(fresh, store, "ad")
    assert all(torch.equal(v, before[k]) for k, v in weights(fresh).items())
    untied = tiny_llama(seed=5, tied=False)  # as PEFT's merged model is
    ckpt.restore(untied, store, "ad")
    torch.testing.assert_close(_logits(untied), _logits(merged_model), atol=1e-5, rtol=0)

    snap = merge_adapter(store, "ad", branch="merged")
    assert store.table(snap.id).tied == ()
    export(store, "merged", tmp_path / "out")
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(_logits(again), _logits(merged_model), atol=1e-5, rtol=0)
    assert store.verify().ok


def test_modules_to_save_with_ensure_weight_tying_stays_tied(store: ckpt.Store) -> None:
    base = _tied_base(store)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"], ensure_weight_tying=True
    )
    model = trained(base, config)
    state = peft.get_peft_model_state_dict(model)
    assert {k for k in state if "lora" not in k} == {f"base_model.model.{HEAD}", f"base_model.model.{EMBED}"}
    save_adapter(store, "main", state, branch="ad", config=model.peft_config["default"])
    merged_model = copy.deepcopy(model).merge_and_unload()
    assert merged_model.lm_head.weight is merged_model.model.embed_tokens.weight
    merged = load_merged(store, "ad")["model"]
    assert merged[HEAD] is merged[EMBED]
    torch.testing.assert_close(merged[HEAD], merged_model.lm_head.weight.detach(), atol=1e-6, rtol=0)
    snap = merge_adapter(store, "ad", branch="merged")
    assert store.table(snap.id).tied == (("model/model.embed_tokens.weight", "model/lm_head.weight"),)
    fresh = tiny_llama(seed=5, tied=True)
    ckpt.restore(fresh, store, "merged")
    torch.testing.assert_close(_logits(fresh), _logits(merged_model), atol=1e-5, rtol=0)


def test_load_merged_into_tied_buffers_refuses_to_untie(store: ckpt.Store) -> None:
    base = _tied_base(store)
    model = trained(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    save_adapter(store, "main", peft.get_peft_model_state_dict(model), branch="ad", config=model.peft_config["default"])
    live = tiny_llama(seed=5, tied=True)
    into = {f"model/{k}": v for k, v in live.state_dict().items()}
    with pytest.raises(StateMismatchError, match="unties"):
        load_merged(store, "ad", into=into)


# -- reads into tied memory -------------------------------------------------------------------------


def test_in_place_restore_and_load_into_tied_memory_refuse_two_values(store: ckpt.Store) -> None:
    untied = tiny_llama(seed=1, tied=False)  # lm_head != embed_tokens
    store.save({"model": untied.state_dict()}, "main")
    for in_place in (False, True):
        live = tiny_llama(seed=2, tied=True)
        before = weights(live)
        with pytest.raises(StateMismatchError, match="tied"):
            ckpt.restore(live, store, "main", in_place=in_place)
        assert all(torch.equal(v, before[k]) for k, v in weights(live).items())  # nothing written
    live = tiny_llama(seed=2, tied=True)
    with pytest.raises(StateMismatchError, match="into= gives one tensor"):
        store.load("main", into={f"model/{k}": v for k, v in live.state_dict().items()})


def test_in_place_restore_of_a_tied_snapshot_keeps_the_tie(store: ckpt.Store) -> None:
    tied = tiny_llama(seed=1, tied=True)
    store.save({"model": tied.state_dict()}, "main")
    live = tiny_llama(seed=2, tied=True)
    ckpt.restore(live, store, "main", in_place=True)
    assert live.lm_head.weight is live.model.embed_tokens.weight
    torch.testing.assert_close(_logits(live), _logits(tied), atol=0, rtol=0)
    # equal bytes stored untied (same chunks) are one value too
    copy_ = {k: v.clone() for k, v in tied.state_dict().items()}
    store.save({"model": copy_}, "main")
    ckpt.restore(tiny_llama(seed=3, tied=True), store, "main", in_place=True)
    assert llama_config(tied=True).tie_word_embeddings


def test_equal_values_into_one_memory_are_read_once_even_when_compressed(tmp_path: Path) -> None:
    """Two names of one stored value that into= gives one memory are read once: two readers decoding the same
    byte planes into the same memory at once would see each other's half-written bytes (a digest mismatch)."""
    store = ckpt.init(tmp_path / "s", chunk_size=4096)  # compressed: chunks decode plane by plane
    w = torch.arange(4096, dtype=torch.float32).reshape(64, 64)
    store.save({"a": w.clone(), "b": w.clone()}, "main")
    shared = torch.zeros(64, 64)
    for _ in range(50):  # the race was timing-dependent: many rounds, any one of which would fail
        shared.zero_()
        got = store.load("main", into={"a": shared, "b": shared})
        assert got["a"] is shared and got["b"] is shared
        torch.testing.assert_close(shared, w, atol=0, rtol=0)


def test_into_with_a_prefix_reads_through_the_same_rule(tmp_path: Path) -> None:
    """``load(prefix=, into=)`` takes the path that places a subset: one memory for two different values is
    refused there too (it kept the last one read), and one memory for one value is read once."""
    store = ckpt.init(tmp_path / "s", chunk_size=4096)
    w = torch.arange(4096, dtype=torch.float32).reshape(64, 64)
    store.save({"m": {"a": w.clone(), "b": w * 2}, "n": {"a": w.clone(), "b": w.clone()}}, "main")
    shared = torch.zeros(64, 64)
    with pytest.raises(ckpt.StateMismatchError, match="different values"):
        store.load("main", prefix="m/", into={"m/a": shared, "m/b": shared})
    assert torch.equal(shared, torch.zeros(64, 64))  # refused before anything was read
    for _ in range(50):  # the same value into one memory: read once, never by two readers at once
        shared.zero_()
        got = store.load("main", prefix="n/", into={"n/a": shared, "n/b": shared})
        assert got["n"]["a"] is shared and got["n"]["b"] is shared
        torch.testing.assert_close(shared, w, atol=0, rtol=0)
