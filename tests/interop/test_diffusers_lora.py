"""LoRA on a diffusion pipeline: held as an adapter snapshot over the pipeline's snapshot, merged as diffusers fuses.

The LoRA is made as diffusers' training scripts make it (``pipe.unet.add_adapter(LoraConfig(...))``, saved with
``StableDiffusionPipeline.save_lora_weights``); the reference for every merge is diffusers' own
``load_lora_weights`` + ``fuse_lora()`` (UNet) and PEFT's ``merge_and_unload()`` (text encoder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpt
from ckpt.errors import RecordError, RefExistsError, StateMismatchError, UnsupportedStateError
from ckpt.interop import export_diffusers_lora as export_lora
from ckpt.interop import import_diffusers_lora as import_lora
from ckpt.interop import import_folder
from ckpt.interop._safetensors import read_header
from ckpt.lineage import DIFFUSERS_LORA_KEY as LORA_KEY
from ckpt.lineage import LORA_WEIGHTS_FILE, load_merged
from ckpt.lineage import is_diffusers_lora as is_lora_snapshot
from ckpt.lineage import save_diffusers_lora as save_lora
from ckpt.lineage._diffusers_names import peft_names, split_lora

diffusers = pytest.importorskip("diffusers")

from diffusers import StableDiffusionPipeline  # noqa: E402
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402

from tests.interop import diffusion_models as dm  # noqa: E402

pytestmark = pytest.mark.torch


def transformers_peft_ok() -> bool:
    """transformers' PEFT integration (what diffusers loads a text-encoder LoRA with) accepts the installed PEFT."""
    import peft
    from packaging.version import Version
    from transformers.integrations import peft as tp

    return Version(peft.__version__) >= Version(getattr(tp, "MIN_PEFT_VERSION", "0"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("diffusion-lora")


@pytest.fixture(scope="module")
def folder(scratch: Path) -> Path:
    path = scratch / "tiny-sd"
    dm.tiny_pipeline(scratch).save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def trained(scratch: Path) -> tuple[Any, dm.Lora]:
    """The pipeline with a LoRA (r=4, alpha=8: scale 2) on its UNet and text encoder."""
    pipe = dm.tiny_pipeline(scratch)
    return pipe, dm.add_lora(pipe)


@pytest.fixture(scope="module")
def lora(trained: tuple[Any, dm.Lora]) -> dm.Lora:
    return trained[1]


def save_file(folder: Path, lora: dm.Lora, *, text: bool = True, metadata: bool = True, layout: str = "peft") -> Path:
    unet, text_encoder = lora.unet, lora.text_encoder
    if layout == "diffusers":  # what the training scripts write: convert_state_dict_to_diffusers(...)
        unet, text_encoder = convert_state_dict_to_diffusers(unet), convert_state_dict_to_diffusers(text_encoder)
    kwargs: dict[str, Any] = {"unet_lora_layers": unet}
    if metadata:
        kwargs["unet_lora_adapter_metadata"] = lora.unet_config.to_dict()
    if text:
        kwargs["text_encoder_lora_layers"] = text_encoder
        if metadata:
            kwargs["text_encoder_lora_adapter_metadata"] = lora.text_config.to_dict()  # type: ignore[union-attr]
    StableDiffusionPipeline.save_lora_weights(str(folder), **kwargs)
    return folder


def fused_unet(base_folder: Path, lora_folder: Path) -> Any:
    """diffusers' reference: the base pipeline, ``load_lora_weights`` (a UNet-only file), ``fuse_lora()``."""
    pipe = dm.load(base_folder)
    pipe.load_lora_weights(str(lora_folder))
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # the fused weights stay
    return pipe.unet


def peft_merged_text(lora: dm.Lora) -> torch.Tensor:
    import copy

    merged = copy.deepcopy(lora.text_model).merge_and_unload()
    return dm.text_output(merged)


def merged_pipeline(store: ckpt.Store, rev: str, folder: Path) -> Any:
    """The base pipeline loaded as diffusers loads it, then the merged snapshot restored into it.

    Loading the pipeline with ``from_pretrained`` (not building it) gives the reference's memory layout: with
    equal weights, CPU kernels then give equal outputs bit for bit.
    """
    pipe = dm.load(folder)
    ckpt.restore(pipe, store, rev)
    return pipe


@pytest.fixture
def store(tmp_path: Path, folder: Path) -> ckpt.Store:
    s = ckpt.init(str(tmp_path / "store"))
    import_folder(s, folder, model="tiny-sd")
    return s


# -- saving ------------------------------------------------------------------------------------------------


def test_a_lora_is_an_adapter_snapshot_over_the_pipeline(store: ckpt.Store, lora: dm.Lora) -> None:
    base = store.resolve("main")
    before = store.stats().chunk_bytes
    snap = save_lora(
        store,
        "main",
        {"unet": lora.unet, "text_encoder": lora.text_encoder},
        branch="style",
        configs={"unet": lora.unet_config, "text_encoder": lora.text_config},
    )
    assert (snap.relation, snap.base, snap.parents, snap.model) == ("adapter", base.id, (base.id,), "tiny-sd-lora")
    assert is_lora_snapshot(snap)
    configs = snap.metadata[LORA_KEY]["configs"]  # type: ignore[index]
    assert configs["unet"]["r"] == 4 and configs["unet"]["lora_alpha"] == 8
    state = store.load(snap.id)
    assert sorted(state) == ["text_encoder", "unet"]
    assert set(state["unet"]) == set(lora.unet) and set(state["text_encoder"]) == set(lora.text_encoder)
    lora_bytes = sum(t.nbytes for t in (*lora.unet.values(), *lora.text_encoder.values()))
    assert snap.tensor_bytes == lora_bytes
    assert store.stats().chunk_bytes - before <= lora_bytes + 16 * snap.tensor_count  # only the LoRA's bytes
    again = save_lora(store, "main", {"unet": lora.unet, "text_encoder": lora.text_encoder}, branch="style")
    assert (again.relation, again.parents, again.base) == ("continue", (snap.id,), base.id)


def test_merged_unet_equals_diffusers_fuse_lora(
    store: ckpt.Store, folder: Path, lora: dm.Lora, scratch: Path, tmp_path: Path
) -> None:
    lora_folder = save_file(tmp_path / "unet-lora", lora, text=False)
    fused = fused_unet(folder, lora_folder)
    snap = import_lora(store, lora_folder, "main", branch="style")
    state = load_merged(store, snap.id)
    assert all(torch.equal(state["unet"][k], v) for k, v in fused.state_dict().items())  # every weight, bit for bit
    merged = merged_pipeline(store, snap.id, folder)
    assert torch.equal(dm.unet_output(merged.unet), dm.unet_output(fused))
    assert sorted(state) == ["text_encoder", "unet", "vae"]
    base = store.load("main")
    changed = {k for k in base["unet"] if not torch.equal(base["unet"][k], state["unet"][k])}
    assert changed == {f"{k.split('.lora_')[0]}.weight" for k in lora.unet}  # the targets, nothing else
    assert all(torch.equal(base["vae"][k], v) for k, v in state["vae"].items())


def test_merged_text_encoder_equals_peft_merge(
    store: ckpt.Store, folder: Path, lora: dm.Lora, scratch: Path, tmp_path: Path
) -> None:
    snap = import_lora(store, save_file(tmp_path / "lora", lora), "main", branch="style")
    merged = merged_pipeline(store, snap.id, folder)
    assert torch.allclose(dm.text_output(merged.text_encoder), peft_merged_text(lora), atol=1e-6, rtol=0)
    assert not torch.allclose(
        dm.text_output(merged.text_encoder), dm.text_output(dm.tiny_pipeline(scratch).text_encoder)
    )


@pytest.mark.skipif(not transformers_peft_ok(), reason="transformers' PEFT integration needs a newer PEFT")
def test_whole_pipeline_equals_load_lora_weights_and_fuse_lora(
    store: ckpt.Store, folder: Path, lora: dm.Lora, scratch: Path, tmp_path: Path
) -> None:
    lora_folder = save_file(tmp_path / "lora", lora)
    pipe = dm.load(folder)
    pipe.load_lora_weights(str(lora_folder))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    snap = import_lora(store, lora_folder, "main", branch="style")
    merged = merged_pipeline(store, snap.id, folder)
    assert torch.equal(dm.image(merged), dm.image(pipe))


def test_the_layout_training_scripts_write_merges_the_same(
    store: ckpt.Store, folder: Path, lora: dm.Lora, scratch: Path, tmp_path: Path
) -> None:
    lora_folder = save_file(tmp_path / "unet-lora", lora, text=False, layout="diffusers")
    names = list(read_header(lora_folder / LORA_WEIGHTS_FILE)[1])
    assert any(".lora.down.weight" in n for n in names)  # unet.<module>.to_q.lora.down.weight …
    reference = dm.unet_output(fused_unet(folder, lora_folder))
    snap = import_lora(store, lora_folder, "main", branch="style")
    assert torch.equal(dm.unet_output(merged_pipeline(store, snap.id, folder).unet), reference)
    export_lora(store, snap.id, tmp_path / "out")
    assert (tmp_path / "out" / LORA_WEIGHTS_FILE).read_bytes() == (lora_folder / LORA_WEIGHTS_FILE).read_bytes()


def test_a_file_without_metadata_merges_as_diffusers_loads_it(
    store: ckpt.Store, folder: Path, lora: dm.Lora, scratch: Path, tmp_path: Path
) -> None:
    """Without lora_adapter_metadata diffusers takes lora_alpha = r (scale 1): so does ckpt, and says so."""
    plain = save_file(tmp_path / "plain", lora, text=False, metadata=False)
    with_meta = save_file(tmp_path / "meta", lora, text=False)
    reference = dm.unet_output(fused_unet(folder, plain))
    assert not torch.allclose(reference, dm.unet_output(fused_unet(folder, with_meta)))  # alpha 8 vs 4 differs
    snap = import_lora(store, plain, "main", branch="plain")
    config = snap.metadata[LORA_KEY]["configs"]["unet"]  # type: ignore[index]
    assert (config["r"], config["lora_alpha"], snap.metadata[LORA_KEY]["metadata"]) == (4, 4, False)  # type: ignore[index]
    assert torch.equal(dm.unet_output(merged_pipeline(store, snap.id, folder).unet), reference)


# -- exporting ---------------------------------------------------------------------------------------------


def test_an_imported_lora_file_is_written_back_byte_identical(store: ckpt.Store, lora: dm.Lora, tmp_path: Path) -> None:
    source = save_file(tmp_path / "lora", lora)
    (source / "README.md").write_text("---\nbase_model: tiny-sd\ntags: [lora]\n---\n# A style\n")
    snap = import_lora(store, source, "main", branch="style")
    result = export_lora(store, snap.id, tmp_path / "out")
    assert dm.files(tmp_path / "out") == dm.files(source)
    assert {p.name for p in result.written} == {LORA_WEIGHTS_FILE, "README.md"}


def test_a_saved_lora_exports_the_file_load_lora_weights_loads(
    store: ckpt.Store, folder: Path, lora: dm.Lora, scratch: Path, tmp_path: Path
) -> None:
    snap = save_lora(store, "main", {"unet": lora.unet}, branch="style", configs={"unet": lora.unet_config})
    export_lora(store, snap.id, tmp_path / "out")
    header, infos = read_header(tmp_path / "out" / LORA_WEIGHTS_FILE)
    assert all(name.startswith("unet.") for name in infos if name != "__metadata__")
    metadata = json.loads(json.loads(header.decode().strip())["__metadata__"]["lora_adapter_metadata"])
    assert (metadata["unet.r"], metadata["unet.lora_alpha"]) == (4, 8)  # the scale survives the round trip
    reference = dm.unet_output(fused_unet(folder, tmp_path / "out"))
    assert torch.equal(dm.unet_output(merged_pipeline(store, snap.id, folder).unet), reference)
    expected = dm.tiny_pipeline(scratch)
    expected.unet.add_adapter(lora.unet_config)
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(expected.unet, lora.unet)
    expected.unet.fuse_lora()
    assert torch.allclose(dm.unet_output(expected.unet), reference, atol=1e-6, rtol=0)


# -- refusals ----------------------------------------------------------------------------------------------


def test_kohya_files_are_refused_by_name(store: ckpt.Store) -> None:
    with pytest.raises(UnsupportedStateError, match="Kohya"):
        save_lora(store, "main", {"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 8)}, branch="k")
    assert "k" not in store.branches()


def test_a_component_the_base_lacks_is_refused(store: ckpt.Store, lora: dm.Lora) -> None:
    with pytest.raises(StateMismatchError, match="transformer"):
        save_lora(store, "main", {"transformer": lora.unet}, branch="x")
    with pytest.raises(StateMismatchError, match="names no component"):
        save_lora(store, "main", {"lora_A": torch.zeros(2, 2)}, branch="x")
    with pytest.raises(StateMismatchError, match="'down_blocks'"):  # a UNet's LoRA without its "unet." prefix
        save_lora(store, "main", lora.unet, branch="x")
    assert "x" not in store.branches()


def test_a_lora_for_another_pipeline_is_refused_before_anything_is_written(
    store: ckpt.Store, lora: dm.Lora, tmp_path: Path
) -> None:
    bigger = {k: torch.zeros(t.shape[0], t.shape[1] * 2) if "lora_A" in k else t for k, t in lora.unet.items()}
    before = store.stats()
    with pytest.raises(StateMismatchError, match="but the base weight"):
        save_lora(store, "main", {"unet": bigger}, branch="x")
    with pytest.raises(StateMismatchError, match="does not have"):
        ghost = {
            "mid_block.nothing.lora_A.weight": torch.zeros(4, 8),
            "mid_block.nothing.lora_B.weight": torch.zeros(8, 4),
        }
        save_lora(store, "main", {"unet": ghost | lora.unet}, branch="x")
    assert store.stats() == before


def test_metadata_missing_a_component_is_refused(store: ckpt.Store, lora: dm.Lora, tmp_path: Path) -> None:
    folder = tmp_path / "half"
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=lora.unet,
        text_encoder_lora_layers=lora.text_encoder,
        unet_lora_adapter_metadata=lora.unet_config.to_dict(),
    )
    with pytest.raises(RecordError, match="no config for 'text_encoder'"):
        import_lora(store, folder, "main", branch="half")


def test_a_lora_over_a_lora_is_refused(store: ckpt.Store, lora: dm.Lora) -> None:
    snap = save_lora(store, "main", {"unet": lora.unet}, branch="style", configs={"unet": lora.unet_config})
    with pytest.raises(UnsupportedStateError, match="itself an adapter"):
        save_lora(store, snap.id, {"unet": lora.unet}, branch="on-top")
    with pytest.raises(RefExistsError):
        save_lora(store, "main", {"unet": lora.unet}, branch="main")


# -- names as diffusers reads them -------------------------------------------------------------------------


def test_names_are_converted_as_diffusers_converts_them(lora: dm.Lora) -> None:
    from diffusers.utils.state_dict_utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    unet_diffusers = convert_state_dict_to_diffusers(lora.unet)
    assert peft_names("unet", list(unet_diffusers)) == dict(
        zip(unet_diffusers, convert_unet_state_dict_to_peft(unet_diffusers), strict=True)
    )
    text_diffusers = convert_state_dict_to_diffusers(lora.text_encoder)
    theirs = convert_state_dict_to_peft(convert_state_dict_to_diffusers(text_diffusers))
    assert peft_names("text_encoder", list(text_diffusers)) == dict(zip(text_diffusers, theirs, strict=True))
    assert peft_names("unet", list(lora.unet)) == {k: k for k in lora.unet}
    old = {f"text_model.{k}": v for k, v in lora.text_encoder.items()}  # transformers 4 names
    base = ["encoder.layers.0.self_attn.q_proj.weight"]
    assert peft_names("text_encoder", list(old), base) == {f"text_model.{k}": k for k in lora.text_encoder}


def test_split_lora_takes_the_file_layout_and_components() -> None:
    t = torch.zeros(2, 2)
    assert split_lora({"unet.a.lora_A.weight": t, "text_encoder.b.lora_B.weight": t}) == {
        "unet": {"a.lora_A.weight": t},
        "text_encoder": {"b.lora_B.weight": t},
    }
    with pytest.raises(StateMismatchError, match="'lora'"):
        split_lora({"unet.conv_in.weight": t})


def test_a_merged_component_alone(store: ckpt.Store, lora: dm.Lora) -> None:
    from ckpt.store import _layout as layout

    snap = save_lora(store, "main", {"unet": lora.unet}, branch="style", configs={"unet": lora.unet_config})
    whole = load_merged(store, snap.id)
    base = store.load("main")
    table = store.table("main")
    needed = {d for p, e in table.tensors.items() if p.startswith("unet/") for d in e.chunks}
    store.backend.delete([layout.chunk_path(d) for e in table.tensors.values() for d in e.chunks if d not in needed])
    unet = load_merged(store, snap.id, prefix="unet/")
    assert list(unet) == ["unet"]
    assert all(torch.equal(whole["unet"][k], v) for k, v in unet["unet"].items())
    part = load_merged(store, snap.id, prefix="unet/down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    (name,) = part["unet"]
    assert torch.equal(part["unet"][name], whole["unet"][name]) and not torch.equal(
        part["unet"][name], base["unet"][name]
    )


def test_the_command_line_imports_and_restores_a_lora(folder: Path, lora: dm.Lora, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ckpt.cli import cli

    def run(*args: str) -> Any:
        result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    source = save_file(tmp_path / "style-lora", lora)
    run("init")
    run("import", str(folder), "--model", "tiny-sd")
    out = json.loads(run("import", str(source), "--base", "main", "--branch", "style", "--json").stdout)
    assert (out["relation"], out["model"]) == ("adapter", "style-lora")
    run("restore", "style", "--to", str(tmp_path / "out"))
    assert dm.files(tmp_path / "out") == dm.files(source)
    kohya = tmp_path / "kohya"
    kohya.mkdir()
    from safetensors.torch import save_file as st_save

    st_save({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 8)}, str(kohya / "style.safetensors"))
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "import", str(kohya), "--base", "main"])
    assert result.exit_code == 1 and "Kohya" in result.output

    carded = save_file(tmp_path / "carded-lora", lora)  # a Hub LoRA repo: its card names the base pipeline
    (carded / "README.md").write_text("---\nbase_model: org/tiny-sd\ntags: [lora]\n---\n# Style\n")
    out = json.loads(run("import", str(carded), "--branch", "carded", "--json").stdout)
    assert (out["relation"], out["model"]) == ("adapter", "carded-lora")
    store = ckpt.open(str(tmp_path / "store"))
    assert store.resolve("carded").base == store.resolve("main").id
    run("restore", "carded", "--to", str(tmp_path / "carded-out"))
    assert dm.files(tmp_path / "carded-out") == dm.files(carded)  # an imported LoRA comes back as it was


def test_a_lora_without_its_base_is_refused(store: ckpt.Store, lora: dm.Lora, tmp_path: Path) -> None:
    source = save_file(tmp_path / "lora", lora)
    with pytest.raises(RecordError, match="which pipeline"):
        import_lora(store, source, None, branch="style")
    (source / "README.md").write_text("---\nbase_model: org/elsewhere\n---\n")
    with pytest.raises(RecordError, match="which pipeline"):  # a base that is not in the store
        import_lora(store, source, None, branch="style")
    assert "style" not in store.branches()


@pytest.mark.parametrize("rank", ["x", 0])
def test_a_bad_rank_in_the_metadata_is_refused_with_its_hint_once(
    store: ckpt.Store, lora: dm.Lora, tmp_path: Path, rank: object
) -> None:
    """A config error found inside a component's plan names the component and gives its hint once (it used to
    carry the inner error's ``hint:`` line inside the message, so the command line printed it twice)."""
    from click.testing import CliRunner

    from ckpt.cli import cli

    config = lora.unet_config.to_dict() | {"r": rank}
    folder = tmp_path / "bad-rank"
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=lora.unet, unet_lora_adapter_metadata=config
    )
    with pytest.raises(RecordError, match="positive integer 'r'") as info:
        import_lora(store, folder, "main", branch="bad")
    assert "hint" not in info.value.message and str(info.value).count("hint:") == 1
    assert "bad" not in store.branches()
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "import", str(folder), "--base", "main"])
    assert result.exit_code == 1 and result.output.count("hint:") == 1, result.output
