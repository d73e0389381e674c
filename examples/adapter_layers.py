"""A LoRA on GPT-2's Conv1D attention and on a linear head, saved with its model, merged as PEFT merges it.

    python examples/adapter_layers.py [STORE]

GPT-2 holds its attention weights transposed (transformers' ``Conv1D``, ``[in, out]``) and its classifier head as
an ordinary ``nn.Linear`` (``[out, in]``); PEFT decides ``fan_in_fan_out`` per layer, and the square
``attn.c_proj`` cannot tell its orientation by its shape. Passing ``peft_model`` lets ckpt record each layer's.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import warnings

import peft
import torch
import transformers

import ckpt

warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # PEFT flips the flag per layer, and says so
warnings.filterwarnings("ignore", category=FutureWarning)
store = ckpt.init(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/store")

torch.manual_seed(0)
config = transformers.GPT2Config(
    n_layer=1,
    n_embd=16,
    n_head=2,
    vocab_size=32,
    n_positions=16,
    num_labels=3,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
base = transformers.GPT2ForSequenceClassification(config).eval()
store.save({"model": base.state_dict()}, "main", model="tiny-gpt2")

lora = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_proj", "score"]))
with torch.no_grad():  # stand-in for training: make every lora_B non-zero
    for name, param in lora.named_parameters():
        if "lora_B" in name:
            param.normal_(std=0.1)
lora.eval()

snap = ckpt.save_adapter(
    store,
    "main",
    peft.get_peft_model_state_dict(lora),
    branch="gpt2-lora",
    config=lora.peft_config["default"],
    peft_model=lora,  # each layer's fan_in_fan_out, as PEFT decided it
)
print({m: f["fan_in_fan_out"] for m, f in snap.metadata["adapter_layers"].items()})
# {'transformer.h.0.attn.c_proj': True, 'transformer.h.0.mlp.c_proj': True, 'score': False}

merged = ckpt.load_merged(store, "gpt2-lora")["model"]
reference = copy.deepcopy(lora).merge_and_unload().state_dict()
worst = max((merged[k] - reference[k]).abs().max().item() for k in reference)
print(f"largest difference from PEFT's merge_and_unload(): {worst:.1e}")
assert worst < 1e-6
