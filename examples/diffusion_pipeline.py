"""A diffusion pipeline's family in a store: the base, a UNet fine-tune, a LoRA style, and the styled pipeline.

A tiny Stable Diffusion pipeline is built from configs (nothing is downloaded), imported, fine-tuned (only the
UNet's chunks are new), given a LoRA (an adapter snapshot of a few kB), and the LoRA merged into a pipeline that
diffusers loads back making the same image as diffusers' own ``fuse_lora()``.

Run it with ``python examples/diffusion_pipeline.py [FOLDER]`` (default: a new temporary folder). Needs torch,
diffusers, transformers and peft (the ``dev`` extra).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import ckpt
from ckpt.interop import import_folder
from ckpt.lineage import save_diffusers_lora


def tiny_pipeline(folder: str) -> StableDiffusionPipeline:
    letters = "abcdefghijklmnopqrstuvwxyz"  # a 54-token CLIP vocabulary
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": 26 + i for i, c in enumerate(letters)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    torch.manual_seed(0)
    text = CLIPTextConfig(
        vocab_size=54,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=16,
        bos_token_id=52,
        eos_token_id=53,
        pad_token_id=53,
    )
    return StableDiffusionPipeline(
        unet=UNet2DConditionModel(
            block_out_channels=(8, 16),
            layers_per_block=1,
            sample_size=8,
            cross_attention_dim=16,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            norm_num_groups=4,
            attention_head_dim=2,
        ),
        vae=AutoencoderKL(
            block_out_channels=(8,),
            down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",),
            latent_channels=4,
            norm_num_groups=4,
        ),
        text_encoder=CLIPTextModel(text),
        tokenizer=CLIPTokenizer(
            os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=16
        ),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def image(pipe: StableDiffusionPipeline) -> np.ndarray:
    """16×16 pixels from 2 DDIM steps and a fixed seed."""
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    out = pipe("a cat", num_inference_steps=2, height=16, width=16, generator=generator, output_type="np")
    return np.asarray(out.images)


def main(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    store = ckpt.init(os.path.join(folder, ".ckpt"))
    tiny_pipeline(folder).save_pretrained(os.path.join(folder, "tiny-sd"))
    base = import_folder(store, os.path.join(folder, "tiny-sd"), model="tiny-sd")
    store.freeze(base.id, name="tiny-sd-v1")

    # a UNet fine-tune, saved from the live modules: only the UNet's chunks are new
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(folder, "tiny-sd"))
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    before = store.stats().chunk_bytes
    state = {name: getattr(pipe, name).state_dict() for name in ("unet", "vae", "text_encoder")}
    files = {k: v for k, v in store.files(base.id).items() if not k.startswith(".ckpt/")}
    tuned = store.derive("tiny-sd-v1", state, branch="tuned", model="tiny-sd-tuned", files=files)
    print(f"fine-tune: {store.stats().chunk_bytes - before} bytes added for a {tuned.tensor_bytes}-byte pipeline")

    # a LoRA style over the fine-tune, as diffusers trains it
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    pipe.unet.add_adapter(config)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)  # stands in for training
    lora = save_diffusers_lora(
        store, "tuned", {"unet": get_peft_model_state_dict(pipe.unet)}, branch="style", configs={"unet": config}
    )
    print(f"LoRA: {lora.relation} of {lora.base and lora.base[:12]}, {lora.tensor_bytes} bytes")

    # diffusers' own fuse_lora, against the merged snapshot exported as a pipeline folder
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    ckpt.merge_adapter(store, "style", branch="styled", model="tiny-sd-styled")
    out = ckpt.export(store, "styled", os.path.join(folder, "out", "tiny-sd-styled"))
    styled = StableDiffusionPipeline.from_pretrained(str(out.path))
    assert np.array_equal(image(styled), image(pipe))
    print((out.path / "README.md").read_text())  # base_model: [tiny-sd-tuned-lora, tiny-sd-tuned], relation merge

    live = StableDiffusionPipeline.from_pretrained(os.path.join(folder, "tiny-sd"))
    ckpt.restore(live, store, "style")  # the LoRA merged straight into a live pipeline
    assert np.array_equal(image(live), image(pipe))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
