"""Diffusion pipelines as snapshots: a real (tiny) ``StableDiffusionPipeline`` saved with ``save_pretrained``.

What a user checks: ``ckpt import`` then ``ckpt restore`` gives the same tree, every file byte-identical;
``from_pretrained`` on the restored folder makes the same image, bit for bit; a fine-tune of the UNet alone stores
only the UNet's chunks; ``ckpt.restore(pipeline, store, rev)`` fills a live pipeline's components.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ckpt
from ckpt import export as export_folder
from ckpt.cli import cli
from ckpt.errors import RecordError, StateMismatchError
from ckpt.interop import import_folder

pytest.importorskip("diffusers")

from tests.interop import diffusion_models as dm

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("diffusion")


@pytest.fixture(scope="module")
def pipe(scratch: Path) -> Any:
    return dm.tiny_pipeline(scratch)


@pytest.fixture(scope="module")
def folder(pipe: Any, scratch: Path) -> Path:
    """The pipeline as ``save_pretrained`` writes it (safetensors)."""
    path = scratch / "tiny-sd"
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def sharded(pipe: Any, scratch: Path) -> Path:
    """The pipeline saved with ``max_shard_size``: the UNet in several shards with their index."""
    path = scratch / "tiny-sd-sharded"
    pipe.save_pretrained(str(path), safe_serialization=True, max_shard_size="100KB")
    return path


@pytest.fixture(scope="module")
def reference_image(pipe: Any) -> np.ndarray:
    return dm.image(pipe)


def ckpt_cli(store: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_fixture_is_a_real_pipeline_tree(folder: Path, sharded: Path) -> None:
    names = set(dm.files(folder))
    assert {
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
    } <= names
    shards = [n for n in dm.files(sharded) if n.startswith("unet/") and n.endswith(".safetensors")]
    assert len(shards) >= 2 and "unet/diffusion_pytorch_model.safetensors.index.json" in dm.files(sharded)


@pytest.mark.parametrize("which", ["folder", "sharded"])
def test_cli_import_then_restore_gives_every_file_back(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    source: Path = request.getfixturevalue(which)
    store = tmp_path / "store"
    ckpt_cli(store, "init")
    out = json.loads(ckpt_cli(store, "import", str(source), "--json").stdout)
    assert out["relation"] == "import"
    ckpt_cli(store, "restore", "main", "--to", str(tmp_path / "out"))
    assert dm.files(tmp_path / "out") == dm.files(source)
    assert ckpt.open(str(store)).verify().ok


def test_components_are_namespaced_by_folder(folder: Path, tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"))
    import_folder(store, folder)
    state = store.load("main")
    assert sorted(state) == ["text_encoder", "unet", "vae"]
    live = dm.load(folder)
    for component in state:
        module = getattr(live, component)
        mine = state[component]
        theirs = module.state_dict()
        assert set(mine) == set(theirs)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    files = store.files("main")
    assert json.loads(files["model_index.json"])["unet"] == ["diffusers", "UNet2DConditionModel"]


def test_the_restored_folder_makes_the_same_image(
    folder: Path, sharded: Path, reference_image: np.ndarray, tmp_path: Path
) -> None:
    for source in (folder, sharded):
        store = ckpt.init(str(tmp_path / f"store-{source.name}"))
        import_folder(store, source)
        export_folder(store, "main", tmp_path / source.name)
        restored = dm.image(dm.load(tmp_path / source.name))
        assert restored.shape == (1, 16, 16, 3)
        assert np.array_equal(restored, reference_image)  # bit-equal, not close


def test_a_unet_fine_tune_stores_only_the_unet(folder: Path, scratch: Path, tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"))
    base = import_folder(store, folder, model="tiny-sd")
    before = store.stats()

    tuned = dm.load(folder)
    dm.fine_tune_unet(tuned)
    tuned_folder = tmp_path / "tiny-sd-tuned"
    tuned.save_pretrained(str(tuned_folder), safe_serialization=True)
    snap = import_folder(store, tuned_folder, branch="tuned", parents=[base.id], relation="finetune")
    after = store.stats()

    base_table, tuned_table = store.table(base.id), store.table(snap.id)
    for path, entry in tuned_table.tensors.items():
        same = base_table.tensors[path].chunks == entry.chunks
        assert same == (not path.startswith("unet/")), path
    added = after.chunk_bytes - before.chunk_bytes
    unet = sum(e.nbytes for p, e in tuned_table.tensors.items() if p.startswith("unet/"))
    pipeline = sum(e.nbytes for e in tuned_table.tensors.values())
    print(
        f"\nUNet fine-tune: {added} chunk bytes added for a {pipeline}-byte pipeline ({added / pipeline:.3f}); "
        f"the UNet is {unet} bytes ({unet / pipeline:.3f})"
    )
    assert added <= unet * 1.01 + 16 * len(tuned_table.tensors)  # the UNet's chunks (16-byte headers), nothing else
    export_folder(store, "tuned", tmp_path / "out")
    assert dm.files(tmp_path / "out") == dm.files(tuned_folder)


def test_a_variant_beside_the_weights_is_refused_by_name(folder: Path, pipe: Any, tmp_path: Path) -> None:
    both = tmp_path / "both"
    pipe.save_pretrained(str(both), safe_serialization=True)
    pipe.save_pretrained(str(both), safe_serialization=True, variant="fp16")
    store = ckpt.init(str(tmp_path / "store"))
    with pytest.raises(RecordError, match="fp16"):
        import_folder(store, both)
    assert store.branches() == {}
    snap = import_folder(store, both, exclude=["*.fp16.safetensors"])
    assert snap.tensor_count == len(store.table("main").tensors)


# -- ckpt.restore into a live pipeline ---------------------------------------------------------------------


def test_restore_into_a_live_pipeline(folder: Path, scratch: Path, reference_image: np.ndarray, tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"))
    import_folder(store, folder)
    live = dm.tiny_pipeline(scratch, seed=7)  # same architecture, other weights
    assert not np.array_equal(dm.image(live), reference_image)
    state = ckpt.restore(live, store, "main")
    assert sorted(state) == ["text_encoder", "unet", "vae"]
    assert np.array_equal(dm.image(live), reference_image)


def test_restore_refuses_a_component_the_pipeline_lacks(folder: Path, scratch: Path, tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"))
    state = {"unet": dm.tiny_pipeline(scratch).unet.state_dict(), "controlnet": {"w": torch.zeros(2)}}
    store.save(state)
    live = dm.tiny_pipeline(scratch, seed=7)
    before = {k: v.clone() for k, v in live.unet.state_dict().items()}
    with pytest.raises(StateMismatchError, match="controlnet"):
        ckpt.restore(live, store, "main")
    assert all(torch.equal(before[k], v) for k, v in live.unet.state_dict().items())  # nothing half-loaded


def test_a_component_the_pipeline_holds_as_none_is_refused_even_non_strict(scratch: Path, tmp_path: Path) -> None:
    """A pipeline built with ``safety_checker=None`` cannot take the snapshot's safety checker: strict=False would
    drop those tensors too, so the hint does not offer it (it used to, even when strict=False was passed)."""
    store = ckpt.init(str(tmp_path / "store"))
    store.save({"unet": dm.tiny_pipeline(scratch).unet.state_dict(), "safety_checker": {"w": torch.zeros(2)}})
    live = dm.tiny_pipeline(scratch, seed=7)
    for strict in (True, False):
        with pytest.raises(StateMismatchError, match="'safety_checker' \\(not a module: NoneType\\)") as info:
            ckpt.restore(live, store, "main", strict=strict)
        assert "pass strict=False" not in str(info.value.hint) and "build the pipeline" in str(info.value.hint)


def test_restore_refuses_a_snapshot_missing_a_component(folder: Path, scratch: Path, tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"))
    store.save({"unet": dm.tiny_pipeline(scratch).unet.state_dict()})
    live = dm.tiny_pipeline(scratch, seed=7)
    with pytest.raises(StateMismatchError, match="vae"):
        ckpt.restore(live, store, "main")
    ckpt.restore(live, store, "main", strict=False)  # a subset of the components, on request
    saved = store.load("main")["unet"]
    assert all(torch.equal(v, saved[k]) for k, v in live.unet.state_dict().items())


def test_restore_refuses_a_mismatched_component(folder: Path, scratch: Path, tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"))
    import_folder(store, folder)
    live = dm.tiny_pipeline(scratch)
    live.unet = dm.tiny_pipeline(scratch).vae  # a pipeline whose "unet" is something else
    with pytest.raises(StateMismatchError, match="unet"):
        ckpt.restore(live, store, "main")


def test_restore_into_a_pipeline_holding_lora_layers_says_to_unload_them(
    folder: Path, scratch: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig

    store = ckpt.init(str(tmp_path / "store"))
    import_folder(store, folder)
    live = dm.load(folder)
    live.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))
    with pytest.raises(StateMismatchError, match="'unet'") as e:
        ckpt.restore(live, store, "main")
    assert "unload_lora_weights" in (e.value.hint or "")
