"""A tiny real Stable Diffusion pipeline built from configs (nothing downloaded), and LoRA adapters on it.

``tiny_pipeline()`` is a ``StableDiffusionPipeline`` of a small ``UNet2DConditionModel`` (two blocks, 8 and 16
channels, cross-attention of width 16), an ``AutoencoderKL`` (one block), a two-layer ``CLIPTextModel`` and a
``CLIPTokenizer`` whose vocabulary (the 26 letters, alone and word-final, plus the two special tokens) is written
to disk, and a ``DDIMScheduler``. Saved with ``save_pretrained`` it is about 310 kB in float32: UNet 230 kB, VAE
51 kB, text encoder 26 kB.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

PROMPT = "a cat"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer over a 54-token vocabulary written to ``folder`` (no merges: one token per letter)."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f"{c}</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok.model_max_length = 16
    return tok


def tiny_pipeline(scratch: Path, seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised tiny Stable Diffusion pipeline (deterministic for a seed), on CPU, float32."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=52,
            eos_token_id=53,
            pad_token_id=53,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=54,
            max_position_embeddings=16,
            projection_dim=16,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer(scratch / "vocab"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for module in (unet, vae, text_encoder):
        module.eval()  # as from_pretrained leaves them
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load(folder: Path) -> StableDiffusionPipeline:
    """``StableDiffusionPipeline.from_pretrained`` on a local folder, offline, progress bars off."""
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe: Any, seed: int = 0) -> np.ndarray:
    """The pipeline's 16×16 image for ``PROMPT``: 2 DDIM steps, a fixed seed, shape (1, 16, 16, 3), float32."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = pipe(PROMPT, num_inference_steps=2, height=16, width=16, generator=generator, output_type="np")
    return np.asarray(out.images)


def unet_output(unet: Any, seed: int = 0) -> torch.Tensor:
    """The UNet's noise prediction on a fixed latent (1, 4, 8, 8), timestep 10 and text states (1, 4, 16)."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    states = torch.randn(1, 4, 16, generator=g)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=states).sample


def text_output(text_encoder: Any) -> torch.Tensor:
    """The text encoder's last hidden state for a fixed token sequence, shape (1, 6, 16)."""
    ids = torch.tensor([[52, 0, 1, 2, 29, 53]])
    with torch.no_grad():
        return text_encoder(ids).last_hidden_state


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root``: relative POSIX path → bytes."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            p = Path(folder, name)
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def fine_tune_unet(pipe: Any, seed: int = 1, scale: float = 1e-3) -> None:
    """Change every UNet weight a little, as a full fine-tune of the UNet would (text encoder and VAE unchanged)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@dataclass
class Lora:
    """A LoRA on a pipeline: its PEFT configs and tensors as ``save_lora_weights`` takes them.

    Attributes:
        unet_config: the UNet's ``LoraConfig``.
        text_config: the text encoder's, or ``None``.
        unet: ``get_peft_model_state_dict(pipe.unet)``: ``<module>.lora_A.weight`` … (no prefix).
        text_encoder: the text encoder's LoRA tensors, named as transformers' ``add_adapter`` names them
            (``encoder.layers.0.self_attn.q_proj.lora_A.weight`` …), or empty.
        text_model: the text encoder wrapped by ``peft.get_peft_model`` (its ``merge_and_unload()`` is PEFT's merge).
    """

    unet_config: LoraConfig
    text_config: LoraConfig | None
    unet: dict[str, torch.Tensor]
    text_encoder: dict[str, torch.Tensor]
    text_model: Any


def add_lora(
    pipe: Any,
    *,
    r: int = 4,
    alpha: int = 8,
    text_encoder: bool = True,
    seed: int = 2,
    unet_targets: Sequence[str] = UNET_TARGETS,
    **config: Any,
) -> Lora:
    """Add a LoRA to the UNet (diffusers' ``add_adapter``, as its training scripts do) and to a copy of the text
    encoder (``peft.get_peft_model``: transformers' ``add_adapter`` needs a newer PEFT than the one installed);
    every ``lora_B`` is perturbed so that the adapter changes the outputs.
    """
    unet_config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(unet_targets), **config)
    pipe.unet.add_adapter(unet_config)
    g = torch.Generator().manual_seed(seed)
    modules = [pipe.unet]
    text_config, text_model, text_sd = None, None, {}
    if text_encoder:
        text_config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(TEXT_TARGETS), **config)
        with warnings.catch_warnings():  # transformers 5 deprecates an attribute PEFT 0.21 reads
            warnings.simplefilter("ignore", FutureWarning)
            text_model = get_peft_model(copy.deepcopy(pipe.text_encoder), text_config)
        modules.append(text_model)
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    if text_model is not None:
        text_sd = {k.removeprefix("base_model.model."): v for k, v in get_peft_model_state_dict(text_model).items()}
    return Lora(unet_config, text_config, get_peft_model_state_dict(pipe.unet), text_sd, text_model)
