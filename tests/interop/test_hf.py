"""Hugging Face folders in and out: byte-identical round trips of whole trees, loadable exports, ckpt's own
exports read back, refusals, no torch needed."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import ckpt
from ckpt.errors import MissingObjectError, RecordError, RevisionNotFoundError, UnsupportedStateError
from ckpt.hf import HEADER_PREFIX, LAYOUT_KEY, export_folder, import_folder
from ckpt.state import unflatten

pytestmark = pytest.mark.torch

transformers = pytest.importorskip("transformers")

SIDE_FILES = {
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
    "tokenizer_config.json": b'{"model_max_length": 2048}\n',
    "special_tokens_map.json": b'{"bos_token": "<s>"}\n',
    "tokenizer.model": bytes(range(256)) * 4,
    "chat_template.jinja": b"{% for m in messages %}{{ m.content }}{% endfor %}\n",
    "README.md": "# tiny — ünïcode\n".encode(),
}


def tiny_llama() -> Any:
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Llama saved by ``save_pretrained``, once unsharded and once in ≥ 3 shards, with side files."""
    model = tiny_llama()
    root = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    assert len(list((root / "sharded").glob("model-*-of-*.safetensors"))) >= 3
    for name, data in SIDE_FILES.items():
        (root / "sharded" / name).write_bytes(data)
    (root / "sharded" / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # hidden: kept
    (root / "sharded" / "runs").mkdir()  # a subfolder: kept
    (root / "sharded" / "runs" / "events.txt").write_text("x")
    return {"model": model, "single": root / "single", "sharded": root / "sharded"}


def folder_files(path: Path) -> dict[str, bytes]:
    """Every regular file of a tree, by relative path (what an import reads)."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def logits(model: Any) -> torch.Tensor:
    ids = torch.arange(20).reshape(2, 10) % 128
    with torch.no_grad():
        return model(input_ids=ids).logits  # type: ignore[no-any-return]


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- byte-identical round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["single", "sharded"])
def test_import_then_export_gives_byte_identical_files(
    store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path, variant: str
) -> None:
    src: Path = tiny[variant]
    import_folder(store, src, model="tiny-llama")
    written = export_folder(store, "main", tmp_path / "out")

    original = folder_files(src)
    exported = folder_files(tmp_path / "out")
    assert sorted(exported) == sorted(original)  # no state.json, no .ckpt files, nothing missing
    for name, data in original.items():
        assert exported[name] == data, name
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written.written) == sorted(original)
    assert written.removed == ()
    assert not (tmp_path / "out" / ".ckpt").exists()
    assert [p.name for p in tmp_path.iterdir() if "ckpt-" in p.name] == []  # no temporary folder left
    assert store.verify().ok


def test_exported_folder_loads_with_from_pretrained(
    local_store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path
) -> None:
    import_folder(local_store, tiny["sharded"])
    export_folder(local_store, "main", tmp_path / "out")
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(logits(loaded), logits(tiny["model"]))


def test_imported_snapshot_holds_the_model_and_side_files(local_store: ckpt.Store, tiny: dict[str, Any]) -> None:
    snap = import_folder(local_store, tiny["sharded"], metadata={"source": "unit test"})
    assert snap.relation == "import" and snap.parents == ()
    assert snap.model == "sharded"  # the folder's name: config.json has no _name_or_path
    assert snap.message == "import sharded"
    assert snap.metadata["source"] == "unit test"

    layout = snap.metadata[LAYOUT_KEY]
    assert isinstance(layout, list)
    shards = sorted(p.name for p in tiny["sharded"].glob("*.safetensors"))
    assert layout == shards
    attached = local_store.files("main")
    for shard in layout:
        assert (
            attached[f"{HEADER_PREFIX}{shard}.header"]
            == (tiny["sharded"] / shard).read_bytes()[8:][: len(attached[f"{HEADER_PREFIX}{shard}.header"])]
        )

    files = local_store.files("main")
    expected_side = {
        *SIDE_FILES,
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        ".gitattributes",
        "runs/events.txt",
    }
    assert {f for f in files if not f.startswith(".ckpt/")} == expected_side
    assert {f for f in files if f.startswith(".ckpt/")} == {f"{HEADER_PREFIX}{s}.header" for s in shards}

    state = local_store.load("main")
    assert list(state) == ["model"]
    reference = tiny["model"].state_dict()
    assert set(state["model"]) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(state["model"][name], tensor), name


def test_single_file_import_and_export(local_store: ckpt.Store, tmp_path: Path) -> None:
    tensors = {"b": torch.ones(3, dtype=torch.bfloat16), "a": torch.arange(6.0).reshape(2, 3)}
    path = tmp_path / "weights.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "hand-made"})
    snap = import_folder(local_store, path)
    assert snap.model == "weights"
    assert snap.metadata[LAYOUT_KEY] == ["weights.safetensors"]
    written = export_folder(local_store, "main", tmp_path / "out").written
    assert [p.name for p in written] == ["weights.safetensors"]
    assert (tmp_path / "out" / "weights.safetensors").read_bytes() == path.read_bytes()


def test_peft_adapter_folder_round_trips(local_store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path) -> None:
    base = import_folder(local_store, tiny["single"], model="tiny-llama")
    src = tmp_path / "adapter"
    src.mkdir()
    torch.manual_seed(1)
    lora = {
        f"base_model.model.model.layers.{i}.self_attn.{p}_proj.lora_{ab}.weight": torch.randn(4, 32)
        for i in range(2)
        for p in ("q", "v")
        for ab in ("A", "B")
    }
    save_file(lora, src / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    (src / "adapter_config.json").write_text(json.dumps(config, indent=2))
    snap = import_folder(local_store, src, branch="lora", parents=["main"], relation="adapter", base="main")
    assert snap.model == "adapter"
    assert (snap.relation, snap.parents, snap.base) == ("adapter", (base.id,), base.id)
    assert json.loads(local_store.files("lora")["adapter_config.json"]) == config
    export_folder(local_store, "lora", tmp_path / "out")
    assert folder_files(tmp_path / "out") == folder_files(src)


# -- snapshots saved from live state -----------------------------------------------------------------


def test_live_state_dict_exports_to_model_safetensors_and_state_json(
    store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path
) -> None:
    model = tiny["model"]
    config = (tiny["single"] / "config.json").read_bytes()
    store.save({"model": model.state_dict(), "step": 3}, files={"config.json": config})
    written = export_folder(store, "main", tmp_path / "out").written
    assert [p.name for p in written] == ["model.safetensors", "config.json", "state.json"]

    back = load_file(tmp_path / "out" / "model.safetensors")
    reference = model.state_dict()
    assert list(back) == sorted(reference)  # safetensors' own order
    for name, tensor in reference.items():
        assert torch.equal(back[name], tensor), name
    # the same bytes save_pretrained wrote, since the tensors and the metadata are the same
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tiny["single"] / "model.safetensors").read_bytes()

    state_json = json.loads((tmp_path / "out" / "state.json").read_text())
    assert state_json["ckpt_export"] == 1
    assert state_json["files"] == {"weights": ["model.safetensors"], "index": None, "state": None}
    assert state_json["snapshot"]["id"] == store.resolve("main").id
    rebuilt = unflatten(state_json["state"], lambda p: p)
    assert rebuilt["step"] == 3 and rebuilt["model"] == {k: f"model/{k}" for k in model.state_dict()}

    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize("shard_size", ["20KB", 20_000])
def test_shards_match_save_pretrained(
    local_store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path, shard_size: int | str
) -> None:
    local_store.save({"model": tiny["model"].state_dict()})
    written = export_folder(local_store, "main", tmp_path / "out", shard_size=shard_size).written
    shards = sorted(p.name for p in tiny["sharded"].glob("*.safetensors"))
    assert [p.name for p in written] == [*shards, "model.safetensors.index.json"]
    for name in [*shards, "model.safetensors.index.json"]:
        assert (tmp_path / "out" / name).read_bytes() == (tiny["sharded"] / name).read_bytes(), name
    for shard in shards:  # every shard is within the limit, unless it holds one bigger tensor
        tensors = load_file(tmp_path / "out" / shard)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= 20_000 or len(tensors) == 1


def test_one_tensor_bigger_than_a_shard_gets_its_own(local_store: ckpt.Store, tmp_path: Path) -> None:
    state = {"a": torch.zeros(10), "big": torch.zeros(100), "c": torch.zeros(10), "d": torch.zeros(10)}
    local_store.save(state)
    export_folder(local_store, "main", tmp_path / "out", shard_size=100)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_parameters": 130, "total_size": 520}
    # as huggingface_hub splits: the big tensor is closed off at once, the open shard goes on filling
    assert index["weight_map"] == {
        "a": "model-00002-of-00003.safetensors",
        "big": "model-00001-of-00003.safetensors",
        "c": "model-00002-of-00003.safetensors",
        "d": "model-00003-of-00003.safetensors",
    }
    from huggingface_hub import split_torch_state_dict_into_shards

    assert index["weight_map"] == split_torch_state_dict_into_shards(state, max_shard_size=100).tensor_to_filename


def test_flat_state_dict_exports_without_state_json(local_store: ckpt.Store, tmp_path: Path) -> None:
    sd = {"w": torch.randn(4, 4), "b": torch.zeros(4, dtype=torch.float16)}
    local_store.save(sd)
    written = export_folder(local_store, "main", tmp_path / "out").written
    assert [p.name for p in written] == ["model.safetensors"]
    back = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(back["w"], sd["w"]) and torch.equal(back["b"], sd["b"])


def test_other_tensors_and_values_go_to_state_files(local_store: ckpt.Store, tmp_path: Path) -> None:
    torch.manual_seed(2)
    state: dict[str, Any] = {
        "model": {"w": torch.randn(3, 3), "frozen": True},
        "optimizer": {
            "state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.randn(3, 3)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
        },
        "step": 3,
        "best": math.inf,
        "note": "ünïcode",
    }
    local_store.save(state)
    written = export_folder(local_store, "main", tmp_path / "out").written
    assert [p.name for p in written] == ["model.safetensors", "state.safetensors", "state.json"]
    assert list(load_file(tmp_path / "out" / "model.safetensors")) == ["w"]

    text = (tmp_path / "out" / "state.json").read_text(encoding="utf-8")
    assert "ünïcode" in text  # readable: UTF-8, not escapes
    assert max(len(line) for line in text.splitlines()) <= 100
    extra = load_file(tmp_path / "out" / "state.safetensors")
    assert sorted(extra) == ["optimizer/state/0/exp_avg", "optimizer/state/0/step"]
    model_file = load_file(tmp_path / "out" / "model.safetensors")
    rebuilt = unflatten(json.loads(text)["state"], lambda p: model_file[p[6:]] if p.startswith("model/") else extra[p])
    assert rebuilt["model"]["frozen"] is True and torch.equal(rebuilt["model"]["w"], state["model"]["w"])
    assert rebuilt["step"] == 3 and rebuilt["best"] == math.inf and rebuilt["note"] == "ünïcode"
    assert rebuilt["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert torch.equal(rebuilt["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_a_layout_that_no_longer_fits_falls_back_to_fresh_files(local_store: ckpt.Store, tmp_path: Path) -> None:
    """Metadata copied onto a different state must not produce wrong files: the tensors decide."""
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    snap = import_folder(local_store, path)
    local_store.save(
        {"model": {"w": torch.ones(3)}},
        metadata=dict(snap.metadata),
        files={k: v for k, v in local_store.files("main").items()},
    )
    export_folder(local_store, "main", tmp_path / "out")
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")["w"], torch.ones(3))


def test_progress_counts_every_tensor_byte(local_store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path) -> None:
    seen_in: list[int] = []
    seen_out: list[int] = []
    snap = import_folder(local_store, tiny["sharded"], progress=seen_in.append)
    export_folder(local_store, "main", tmp_path / "out", progress=seen_out.append)
    assert sum(seen_in) == sum(seen_out) == snap.tensor_bytes > 0


# -- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "last.ckpt", "x.pkl", "y.pickle"])
def test_pickle_files_are_refused(local_store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path, name: str) -> None:
    folder = copy_folder(tiny["single"], tmp_path / "folder")
    torch.save({"w": torch.zeros(2)}, folder / name)
    for target in (folder, folder / name):
        with pytest.raises(UnsupportedStateError, match="arbitrary code") as info:
            import_folder(local_store, target)
        assert name in str(info.value)
        hint, cli_hint = info.value.hint or "", info.value.cli_hint or ""
        assert "weights_only=True" in hint and "save_file" in hint and "skip_pickles=True" in hint
        assert "weights_only=True" in cli_hint and "`ckpt import --skip-pickles`" in cli_hint
    assert local_store.branches() == {}


def test_folder_without_safetensors_is_refused(local_store: ckpt.Store, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(RecordError, match=r"no \.safetensors file"):
        import_folder(local_store, tmp_path / "empty")
    with pytest.raises(RecordError, match="no such file or folder"):
        import_folder(local_store, tmp_path / "missing")
    with pytest.raises(RecordError, match=r"not a \.safetensors file"):
        import_folder(local_store, tmp_path / "empty" / "config.json")
    assert local_store.branches() == {}


def test_big_side_files_are_refused(local_store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_folder(tiny["single"], tmp_path / "folder")
    with (folder / "model.gguf").open("wb") as f:  # sparse: no disk space used
        f.truncate(100_000_001)
    with pytest.raises(RecordError, match=r"model\.gguf"):
        import_folder(local_store, folder)
    assert local_store.branches() == {}


def test_malformed_weights_are_refused(local_store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_folder(tiny["single"], tmp_path / "folder")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-4])  # truncated download
    with pytest.raises(RecordError, match="truncated"):
        import_folder(local_store, folder)
    assert local_store.branches() == {}


def test_an_index_naming_a_missing_shard_is_refused(
    local_store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path
) -> None:
    folder = copy_folder(tiny["sharded"], tmp_path / "folder")
    (folder / "model-00002-of-00007.safetensors").unlink()
    with pytest.raises(RecordError, match="not in the folder"):
        import_folder(local_store, folder)
    assert local_store.branches() == {}


def test_a_tensor_in_two_files_is_refused(local_store: ckpt.Store, tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    save_file({"w": torch.zeros(2)}, tmp_path / "f" / "a.safetensors")
    save_file({"w": torch.ones(2)}, tmp_path / "f" / "b.safetensors")
    with pytest.raises(RecordError, match=r"in both .*a\.safetensors and .*b\.safetensors"):
        import_folder(local_store, tmp_path / "f")


def test_reserved_metadata_key_is_refused(local_store: ckpt.Store, tiny: dict[str, Any]) -> None:
    with pytest.raises(RecordError, match="reserved"):
        import_folder(local_store, tiny["single"], metadata={LAYOUT_KEY: {}})


def test_non_empty_destination_needs_force(local_store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path) -> None:
    import_folder(local_store, tiny["single"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "config.json").write_text("stale")
    with pytest.raises(RecordError, match="not empty") as info:
        export_folder(local_store, "main", out)
    assert "force" in (info.value.hint or "")
    assert (out / "config.json").read_text() == "stale"

    export_folder(local_store, "main", out, force=True)
    assert (out / "config.json").read_bytes() == (tiny["single"] / "config.json").read_bytes()
    assert (out / "keep.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    with pytest.raises(RecordError, match="is a file"):
        export_folder(local_store, "main", out / "keep.txt", force=True)
    with pytest.raises(RecordError, match="shard_size"):
        export_folder(local_store, "main", tmp_path / "other", shard_size="huge")
    with pytest.raises(RevisionNotFoundError):
        export_folder(local_store, "nope", tmp_path / "other")


def test_pruned_snapshot_cannot_be_exported(local_store: ckpt.Store, tmp_path: Path) -> None:
    first = local_store.save({"w": torch.zeros(2)})
    local_store.save({"w": torch.ones(2)})
    local_store.prune(first.id)
    with pytest.raises(MissingObjectError, match="pruned"):
        export_folder(local_store, first.id, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_name_comes_from_config(local_store: ckpt.Store, tiny: dict[str, Any], tmp_path: Path) -> None:
    folder = copy_folder(tiny["single"], tmp_path / "folder")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": "acme/tiny-llama-base"}))
    assert import_folder(local_store, folder).model == "tiny-llama-base"
    assert import_folder(local_store, folder, model="given").model == "given"


# -- without torch -----------------------------------------------------------------------------------


def test_import_and_export_run_without_torch(tiny: dict[str, Any], tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from pathlib import Path
        import numpy as np
        from safetensors.numpy import load_file
        import ckpt
        from ckpt.hf import export_folder, import_folder

        src = Path({str(tiny["sharded"])!r})
        store = ckpt.init({str(tmp_path / "store")!r}, chunk_size=4096)
        import_folder(store, src)
        export_folder(store, "main", {str(tmp_path / "out")!r})
        for p in src.rglob("*"):
            if p.is_file():
                rel = p.relative_to(src)
                assert (Path({str(tmp_path / "out")!r}) / rel).read_bytes() == p.read_bytes(), rel

        w = np.arange(12, dtype=np.float32).reshape(3, 4)
        store.save({{"model": {{"w": w}}, "step": 3}}, branch="np")
        export_folder(store, "np", {str(tmp_path / "np")!r}, shard_size="1KB")
        assert (load_file({str(tmp_path / "np" / "model.safetensors")!r})["w"] == w).all()
        assert "torch" not in [m for m, v in sys.modules.items() if v is not None]
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("OK")
