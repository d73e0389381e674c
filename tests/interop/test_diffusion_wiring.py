"""The diffusion, model-card and subset-loading pieces wired into the store and the folder import/export.

Each test here was first written as a strict xfail, the specification of one hook (pipeline components recorded,
card lineage in and out, ``Store.load(prefix=, device=)``, a diffusers LoRA through ``ckpt.load_merged``,
``ckpt.restore`` and ``ckpt.export``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ckpt
import ckpt.lineage
from ckpt import export as export_folder
from ckpt.interop import import_folder, read_card

pytest.importorskip("diffusers")

from tests.interop import diffusion_models as dm

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wiring")


@pytest.fixture(scope="module")
def folder(scratch: Path) -> Path:
    path = scratch / "tiny-sd"
    dm.tiny_pipeline(scratch).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def lora(scratch: Path) -> dm.Lora:
    return dm.add_lora(dm.tiny_pipeline(scratch), text_encoder=False)


@pytest.fixture
def store(tmp_path: Path, folder: Path) -> ckpt.Store:
    s = ckpt.init(str(tmp_path / "store"))
    import_folder(s, folder, model="tiny-sd")
    return s


def with_card(src: Path, dst: Path, card: bytes) -> Path:
    import shutil

    shutil.copytree(src, dst)
    (dst / "README.md").write_bytes(card)
    return dst


def test_import_records_the_pipeline_components(store: ckpt.Store) -> None:
    recorded: Any = store.resolve("main").metadata["diffusers_pipeline"]
    assert recorded["class"] == "StableDiffusionPipeline"
    assert recorded["components"]["unet"] == ["diffusers", "UNet2DConditionModel"]


def test_import_takes_the_parent_from_the_card(store: ckpt.Store, folder: Path, tmp_path: Path) -> None:
    card = b"---\nbase_model: org/tiny-sd\nbase_model_relation: finetune\n---\n# Anime\n"
    tuned = with_card(folder, tmp_path / "tiny-sd-anime", card)
    snap = import_folder(store, tuned, branch="anime")
    assert (snap.relation, snap.parents) == ("finetune", (store.resolve("main").id,))


def test_export_writes_the_lineage_into_the_card(store: ckpt.Store, folder: Path, tmp_path: Path) -> None:
    state = store.load("main")
    store.derive("main", state, branch="anime", model="tiny-sd-anime", files=store.files("main"))
    export_folder(store, "anime", tmp_path / "out")
    card = read_card((tmp_path / "out" / "README.md").read_bytes())
    assert (card.base_models, card.relation) == (("tiny-sd",), "finetune")


def test_store_load_takes_a_prefix_and_a_device(store: ckpt.Store) -> None:
    unet = store.load("main", prefix="unet/", device="meta")
    assert list(unet) == ["unet"] and next(iter(unet["unet"].values())).device.type == "meta"


def test_a_diffusers_lora_loads_merged_through_the_store(store: ckpt.Store, lora: dm.Lora, scratch: Path) -> None:
    from ckpt.lineage import save_diffusers_lora as save_lora

    snap = save_lora(store, "main", {"unet": lora.unet}, branch="style", configs={"unet": lora.unet_config})
    merged = ckpt.load_merged(store, snap.id)
    expected = ckpt.lineage.load_merged(store, snap.id, prefix="unet/")
    assert all(torch.equal(merged["unet"][k], v) for k, v in expected["unet"].items())
    unet = dm.tiny_pipeline(scratch).unet
    ckpt.restore(unet, store, snap.id, key="unet")
    assert all(torch.equal(v, expected["unet"][k]) for k, v in unet.state_dict().items())


def test_export_folder_writes_a_lora_snapshot_as_diffusers_loads_it(
    store: ckpt.Store, lora: dm.Lora, tmp_path: Path
) -> None:
    from ckpt.lineage import save_diffusers_lora as save_lora

    snap = save_lora(store, "main", {"unet": lora.unet}, branch="style", configs={"unet": lora.unet_config})
    written = export_folder(store, snap.id, tmp_path / "out").written
    assert [p.name for p in written] == ["pytorch_lora_weights.safetensors", "README.md"]
    card = read_card((tmp_path / "out" / "README.md").read_bytes())  # the base pipeline, for the Hub's model tree
    assert (card.base_models, card.relation, card.library_name) == (("tiny-sd",), "adapter", "diffusers")
    meta = json.loads((tmp_path / "out" / "pytorch_lora_weights.safetensors").read_bytes()[8:].split(b"}}")[0] + b"}}")
    assert "__metadata__" in meta


def test_a_pipeline_saved_from_its_modules_exports_as_a_folder_diffusers_loads(
    store: ckpt.Store, folder: Path, tmp_path: Path
) -> None:
    tuned = dm.load(folder)
    dm.fine_tune_unet(tuned)
    state = {name: getattr(tuned, name).state_dict() for name in ("unet", "vae", "text_encoder")}
    files = {k: v for k, v in store.files("main").items() if not k.startswith(".ckpt/")}
    store.derive("main", state, branch="anime", model="tiny-sd-anime", files=files)
    out = tmp_path / "out"
    ckpt.export(store, "anime", out, shard_size="100KB")
    unet_files = sorted(p.name for p in (out / "unet").iterdir())
    assert "diffusion_pytorch_model.safetensors.index.json" in unet_files and len(unet_files) > 3  # sharded
    assert (out / "text_encoder" / "model.safetensors").is_file()  # transformers' name for a transformers module
    assert not (out / "state.json").exists()
    assert np.array_equal(dm.image(dm.load(out)), dm.image(tuned))  # bit-equal


def test_a_merged_diffusers_lora_exports_as_the_merged_pipeline(
    store: ckpt.Store, lora: dm.Lora, tmp_path: Path
) -> None:
    from ckpt.lineage import save_diffusers_lora

    snap = save_diffusers_lora(store, "main", {"unet": lora.unet}, branch="style", configs={"unet": lora.unet_config})
    merged = ckpt.merge_adapter(store, snap.id, branch="styled")
    assert (merged.relation, merged.parents) == ("merge", (snap.id, store.resolve("main").id))
    ckpt.export(store, "styled", tmp_path / "out")
    pipe = dm.load(tmp_path / "out")
    expected = ckpt.load_merged(store, snap.id)
    assert all(torch.equal(v, expected["unet"][k]) for k, v in pipe.unet.state_dict().items())
    card = read_card((tmp_path / "out" / "README.md").read_bytes())
    assert (card.relation, card.library_name) == ("merge", "diffusers")
