"""PEFT adapter folders: import over a base, export byte-identical, PeftModel.from_pretrained loads the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import ckpt  # noqa: E402
from ckpt.errors import RecordError, StateMismatchError, UnsupportedStateError  # noqa: E402
from ckpt.interop import export, export_peft_folder, import_folder, import_peft_folder  # noqa: E402  # noqa: E402
from ckpt.lineage import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CONFIG_KEY, load_merged, save_adapter  # noqa: E402

from .models import adapter_state, input_ids, tiny_llama, weights, with_lora  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


@pytest.fixture
def family(tmp_path: Path) -> tuple[ckpt.Store, object, object]:
    """A store whose ``main`` is a tiny Llama imported from its save_pretrained folder; the model; a LoRA on it."""
    model = tiny_llama()
    model.save_pretrained(tmp_path / "base")
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    import_folder(store, tmp_path / "base", branch="main", model="tiny-llama")
    return store, model, with_lora(model)


def _from_store(store: ckpt.Store, rev: str, folder: Path) -> object:
    """The base model as transformers loads it from the store's export."""
    from transformers import LlamaForCausalLM

    export(store, rev, folder)
    return LlamaForCausalLM.from_pretrained(folder).eval()


def test_import_export_roundtrip_loads_in_peft(family: tuple[ckpt.Store, object, object], tmp_path: Path) -> None:
    store, _, lora = family
    lora.save_pretrained(tmp_path / "adapter")
    original = {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()}
    assert {ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE} <= set(original)

    snap = import_peft_folder(store, tmp_path / "adapter", "main", branch="lora")
    base = store.resolve("main")
    assert snap.relation == "adapter" and snap.parents == (base.id,) and snap.base == base.id
    assert snap.model == "tiny-llama-lora"
    assert snap.metadata[CONFIG_KEY] == json.loads(original[ADAPTER_CONFIG_FILE])
    assert snap.tensor_count == 8

    written = export_peft_folder(store, "lora", tmp_path / "out")
    assert {p.name for p in written} == set(original)
    for path in written:
        assert path.read_bytes() == original[path.name], f"{path.name} differs"

    loaded = peft.PeftModel.from_pretrained(_from_store(store, "main", tmp_path / "base-out"), tmp_path / "out").eval()
    ids = input_ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, lora(ids).logits)

    merged = load_merged(store, "lora")["model"]
    for name, want in weights(lora.merge_and_unload()).items():
        torch.testing.assert_close(merged[name], want, msg=name)


def test_saved_adapter_exports_as_peft_folder(family: tuple[ckpt.Store, object, object], tmp_path: Path) -> None:
    store, _, lora = family
    save_adapter(store, "main", adapter_state(lora), branch="lora", config=lora.peft_config["default"])
    written = export_peft_folder(store, "lora", tmp_path / "out")
    assert sorted(p.name for p in written) == ["README.md", ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]  # card: base
    assert not (tmp_path / "out" / "model.safetensors").exists()

    loaded = peft.PeftModel.from_pretrained(_from_store(store, "main", tmp_path / "base-out"), tmp_path / "out").eval()
    assert loaded.peft_config["default"].r == 4 and loaded.peft_config["default"].lora_alpha == 8
    ids = input_ids(1)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, lora(ids).logits)


def test_adapter_imported_without_base_merges(family: tuple[ckpt.Store, object, object], tmp_path: Path) -> None:
    """``ckpt import DIR --parent main --relation adapter`` names no base: the first parent becomes the base."""
    store, _, lora = family
    lora.save_pretrained(tmp_path / "adapter")
    snap = import_folder(store, tmp_path / "adapter", branch="plain", parents=["main"], relation="adapter")
    assert snap.base == store.resolve("main").id
    merged = load_merged(store, "plain")["model"]
    for name, want in weights(lora.merge_and_unload()).items():
        torch.testing.assert_close(merged[name], want, msg=name)


def test_peft_folder_errors(family: tuple[ckpt.Store, object, object], tmp_path: Path) -> None:
    store, model, lora = family
    lora.save_pretrained(tmp_path / "adapter")

    with pytest.raises(RecordError, match="not an adapter"):
        export_peft_folder(store, "main", tmp_path / "x")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / ADAPTER_WEIGHTS_FILE).write_bytes((tmp_path / "adapter" / ADAPTER_WEIGHTS_FILE).read_bytes())
    with pytest.raises(RecordError, match=ADAPTER_CONFIG_FILE):
        import_peft_folder(store, no_config, "main", branch="x")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / ADAPTER_CONFIG_FILE).write_bytes((tmp_path / "adapter" / ADAPTER_CONFIG_FILE).read_bytes())
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsupportedStateError, match="pickle"):
        import_peft_folder(store, pickled, "main", branch="x")

    # an adapter over the wrong base is refused before anything is written
    other = store.save({"model": {k: v for k, v in weights(model).items() if "q_proj" not in k}}, "other")
    with pytest.raises(StateMismatchError, match="q_proj"):
        import_peft_folder(store, tmp_path / "adapter", other.id, branch="x")
    assert "x" not in store.branches()
