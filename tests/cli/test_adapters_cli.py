"""``ckpt import --base`` takes a PEFT folder as an adapter; ``ckpt restore`` of an adapter writes a PEFT folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import ckpt
from ckpt.cli import cli

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_import_peft_folder_with_base_and_restore_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=128,
    )
    base = transformers.LlamaForCausalLM(config)
    base.save_pretrained(tmp_path / "base")
    lora = peft.get_peft_model(
        base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(tmp_path / "adapter")
    store_url = str(tmp_path / "store")
    ckpt.init(store_url)
    runner = CliRunner()
    ok = runner.invoke(cli, ["--store", store_url, "import", str(tmp_path / "base"), "--model", "tiny"])
    assert ok.exit_code == 0, ok.output
    ok = runner.invoke(
        cli, ["--store", store_url, "import", str(tmp_path / "adapter"), "--branch", "lora", "--base", "main"]
    )
    assert ok.exit_code == 0, ok.output
    store = ckpt.open(store_url)
    snap = store.resolve("lora")
    assert snap.relation == "adapter" and snap.base == store.resolve("main").id
    ok = runner.invoke(cli, ["--store", store_url, "restore", "lora", "--to", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "adapter" / name).read_bytes()
    bad = runner.invoke(
        cli, ["--store", store_url, "import", str(tmp_path / "adapter"), "--base", "main", "--relation", "finetune"]
    )
    assert bad.exit_code == 2
    # --relation adapter --parent REV is the same import as --base REV: the adapter is checked against it
    small = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4
        )
    )
    ckpt.open(store_url).save({"model": small.state_dict()}, "small", model="small")
    bad = runner.invoke(
        cli,
        [
            "--store",
            store_url,
            "import",
            str(tmp_path / "adapter"),
            "--branch",
            "x",
            "--relation",
            "adapter",
            "--parent",
            "small",
        ],
    )
    assert bad.exit_code == 1 and "q_proj" in bad.output, bad.output
    ok = runner.invoke(
        cli,
        [
            "--store",
            store_url,
            "import",
            str(tmp_path / "adapter"),
            "--branch",
            "lora2",
            "--relation",
            "adapter",
            "--parent",
            "main",
        ],
    )
    assert ok.exit_code == 0, ok.output
    again = ckpt.open(store_url).resolve("lora2")
    assert again.base == store.resolve("main").id and "adapter_config" in again.metadata
    assert ckpt.open(store_url).verify().ok
