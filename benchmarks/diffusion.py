"""Diffusion pipelines in a store: what a UNet fine-tune and a LoRA cost, and loading one component.

    python benchmarks/diffusion.py [--width 0.25] [--dir DIR]

Builds a pipeline with Stable Diffusion 1.5's architecture (UNet, VAE, CLIP text encoder), every width scaled
by ``--width`` (1.0 is SD 1.5 itself: 1.07 B parameters, 4.3 GB in float32), saves it with ``save_pretrained``
and imports it into a new local store; then measures, in the same run:

- **UNet fine-tune**: every UNet weight changed, the pipeline saved again and imported as a fine-tune; bytes
  added to the store / the pipeline's bytes, beside the UNet's share of the pipeline (the floor);
- **LoRA**: a rank-4 LoRA on the UNet's attention (``to_q/k/v/out.0``) imported with ``import_diffusers_lora``;
  bytes added / pipeline bytes;
- **one component**: ``store.load(prefix="unet/")`` against ``store.load`` of the whole pipeline (time ratio; the
  UNet's share is the floor), and the merged LoRA load against diffusers' ``load_lora_weights`` +
  ``fuse_lora()`` on a pipeline loaded with ``from_pretrained`` (time ratio).

Prints a table and, last, one JSON line with the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import ckpt
from ckpt.interop import import_diffusers_lora as import_lora
from ckpt.interop import import_folder
from ckpt.lineage import load_merged


def pipeline(width: float, scratch: Path) -> Any:
    def w(n: int, multiple: int = 8) -> int:
        return max(multiple, round(n * width / multiple) * multiple)

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    vocab |= {"<|startoftext|>": 26, "<|endoftext|>": 27}
    (scratch / "vocab.json").write_text(json.dumps(vocab))
    (scratch / "merges.txt").write_text("#version: 0.2\n")
    text_width = w(768, 64)
    return StableDiffusionPipeline(
        unet=UNet2DConditionModel(
            block_out_channels=tuple(w(c, 32) for c in (320, 640, 1280, 1280)),
            cross_attention_dim=text_width,
            attention_head_dim=8,
        ),
        vae=AutoencoderKL(
            block_out_channels=tuple(w(c, 32) for c in (128, 256, 512, 512)),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
        ),
        text_encoder=CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=text_width,
                intermediate_size=4 * text_width,
                num_attention_heads=max(1, text_width // 64),
                num_hidden_layers=12,
                max_position_embeddings=77,
            )
        ),
        tokenizer=CLIPTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt")),
        scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.25, help="channel width relative to SD 1.5 (default 0.25)")
    parser.add_argument("--dir", type=Path, help="where to work (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="ckpt-bench-diffusion-"))
    try:
        torch.manual_seed(0)
        pipe = pipeline(args.width, work)
        pipe.save_pretrained(str(work / "base"))
        store = ckpt.init(str(work / "store"))
        base = import_folder(store, work / "base", model="sd")
        table = store.table(base.id)
        total = sum(e.nbytes for e in table.tensors.values())
        unet_bytes = sum(e.nbytes for p, e in table.tensors.items() if p.startswith("unet/"))

        before = store.stats().chunk_bytes
        with torch.no_grad():
            for p in pipe.unet.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        pipe.save_pretrained(str(work / "tuned"))
        import_folder(store, work / "tuned", branch="tuned", parents=[base.id], relation="finetune")
        finetune_bytes = store.stats().chunk_bytes - before

        config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        styled = StableDiffusionPipeline.from_pretrained(str(work / "base"))
        styled.unet.add_adapter(config)
        with torch.no_grad():
            for name, p in styled.unet.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.01)
        StableDiffusionPipeline.save_lora_weights(
            str(work / "lora"),
            unet_lora_layers=get_peft_model_state_dict(styled.unet),
            unet_lora_adapter_metadata=config.to_dict(),
        )
        before = store.stats().chunk_bytes
        lora = import_lora(store, work / "lora", base.id, branch="style")
        lora_bytes = store.stats().chunk_bytes - before

        whole_s, _ = timed(lambda: store.load(base.id))
        unet_s, _ = timed(lambda: store.load(base.id, prefix="unet/"))
        merged_s, _ = timed(lambda: load_merged(store, lora.id))

        def diffusers_fuse() -> None:
            p = StableDiffusionPipeline.from_pretrained(str(work / "base"))
            p.load_lora_weights(str(work / "lora"))
            p.fuse_lora()

        fuse_s, _ = timed(diffusers_fuse)
        rows = [
            ("pipeline", f"{total / 1e6:.1f} MB", f"UNet {unet_bytes / total:.3f} of it"),
            ("UNet fine-tune: bytes added / pipeline", f"{finetune_bytes / total:.3f}", "floor: the UNet's share"),
            ("LoRA r=4: bytes added / pipeline", f"{lora_bytes / total:.5f}", f"{lora_bytes / 1e3:.1f} kB"),
            ("load(prefix='unet/') / store.load", f"{unet_s / whole_s:.3f}", f"{unet_s:.2f} s / {whole_s:.2f} s"),
            ("merged LoRA load / diffusers fuse", f"{merged_s / fuse_s:.3f}", f"{merged_s:.2f} s / {fuse_s:.2f} s"),
        ]
        for name, value, note in rows:
            print(f"{name:42} {value:>10}   {note}")
        print(
            json.dumps(
                {
                    "width": args.width,
                    "pipeline_bytes": total,
                    "unet_share": round(unet_bytes / total, 4),
                    "finetune_bytes_fraction": round(finetune_bytes / total, 4),
                    "lora_bytes_fraction": round(lora_bytes / total, 6),
                    "unet_load_ratio": round(unet_s / whole_s, 3),
                    "merged_vs_fuse_ratio": round(merged_s / fuse_s, 3),
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
