"""Pipeline folders without diffusers: ``model_index.json`` read as JSON and recorded, and the layout an export
picks for a pipeline snapshot saved from tensors (each component in its folder), falling back to ckpt's own
layout when the state is more than the pipeline's components.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ckpt
from ckpt.errors import RecordError
from ckpt.interop import PIPELINE_KEY, import_folder

INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.36.0",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "safety_checker": [None, None],
    "requires_safety_checker": False,
}


def pipeline_folder(path: Path, index: object = INDEX) -> Path:
    rng = np.random.default_rng(0)
    (path / "unet").mkdir(parents=True)
    (path / "text_encoder").mkdir()
    save_file(
        {"conv.weight": rng.standard_normal((8, 8)).astype(np.float32)},
        str(path / "unet/diffusion_pytorch_model.safetensors"),
    )
    save_file(
        {"embed.weight": rng.standard_normal((6, 4)).astype(np.float32)}, str(path / "text_encoder/model.safetensors")
    )
    (path / "unet/config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    (path / "model_index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return path


def test_import_records_the_class_and_components(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"))
    snap = import_folder(store, pipeline_folder(tmp_path / "p"))
    assert snap.metadata[PIPELINE_KEY] == {
        "class": "StableDiffusionPipeline",
        "components": {
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "safety_checker": None,
        },
    }
    with pytest.raises(RecordError, match="reserved"):
        import_folder(store, pipeline_folder(tmp_path / "q"), branch="q", metadata={PIPELINE_KEY: 1})


@pytest.mark.parametrize(
    "index",
    [
        "{not json",
        "[1, 2]",
        json.dumps({**INDEX, "unet": ["diffusers", 3]}),
        json.dumps({**INDEX, **{f"c{i}": ["diffusers", "X"] for i in range(300)}}),  # would bloat every record
    ],
)
def test_a_bad_model_index_is_refused_and_nothing_is_stored(tmp_path: Path, index: str) -> None:
    store = ckpt.init(str(tmp_path / "store"))
    with pytest.raises(RecordError, match=r"model_index\.json"):
        import_folder(store, pipeline_folder(tmp_path / "p", index))
    assert store.snapshots() == []


def test_a_state_of_components_exports_in_their_folders(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"))
    base = import_folder(store, pipeline_folder(tmp_path / "p"), model="tiny-sd")
    state = store.load("main", framework="numpy")
    state["unet"]["conv.weight"] = state["unet"]["conv.weight"] * 2
    files = {k: v for k, v in store.files("main").items() if not k.startswith(".ckpt/")}
    files["unet/diffusion_pytorch_model.safetensors.index.json"] = b'{"weight_map": {"stale": "x"}}'
    store.derive(base.id, state, branch="tuned", files=files)
    out = tmp_path / "out"
    written = {p.relative_to(out).as_posix() for p in ckpt.export(store, "tuned", out).written}
    assert written == {
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "unet/config.json",
        "model_index.json",
        "README.md",
    }  # the stale index is not written; the card names the base
    assert np.array_equal(
        load_file(str(out / "unet/diffusion_pytorch_model.safetensors"))["conv.weight"], state["unet"]["conv.weight"]
    )


def test_a_state_with_more_than_components_keeps_ckpt_s_layout(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"))
    import_folder(store, pipeline_folder(tmp_path / "p"))
    state = store.load("main", framework="numpy")
    files = {k: v for k, v in store.files("main").items() if not k.startswith(".ckpt/")}
    store.save({**state, "step": 3}, "train", files=files)  # a training state: not only the pipeline
    store.save({**state, "vae": {"w": np.ones(2, np.float32)}}, "extra", files=files)  # a component it does not name
    for rev in ("train", "extra"):
        out = tmp_path / rev
        ckpt.export(store, rev, out)
        assert (out / "state.json").is_file(), rev  # read back by import_folder as the same state
        assert (
            import_folder(ckpt.init(str(tmp_path / f"again-{rev}")), out).tensor_count
            == store.resolve(rev).tensor_count
        )
