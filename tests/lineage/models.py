"""Tiny real models for the lineage tests: a transformers Llama built from a config (no download), LoRA on it."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

HIDDEN = 32
LAYERS = 2
VOCAB = 128


def llama_config(vocab: int = VOCAB, *, tied: bool = False, hidden: int = HIDDEN, **extra: Any) -> LlamaConfig:
    """hidden 32, 2 layers, vocab 128: 21 tensors, about 115 kB in float32 (``tied``: lm_head is the embedding)."""
    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=vocab,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        **extra,
    )


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, *, tied: bool = False) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama (deterministic for a seed), in eval mode."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tied=tied))
    return model.to(dtype).eval()


def tiny_classifier(seed: int = 0, *, hidden: int = HIDDEN, labels: int = 3) -> LlamaForSequenceClassification:
    """A tiny Llama sequence classifier (head ``score``), pad token 0, in eval mode."""
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(llama_config(hidden=hidden, num_labels=labels, pad_token_id=0)).eval()


def with_lora(
    model: Any,
    *,
    r: int = 4,
    alpha: int = 8,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    seed: int = 1,
    copy_model: bool = True,
    **config: Any,
) -> PeftModel:
    """A LoRA on (a copy of) ``model`` whose ``lora_B`` is perturbed, so that its delta is not zero.

    The same seed gives the same adapter tensors.
    """
    base = copy.deepcopy(model) if copy_model else model
    torch.manual_seed(seed)  # lora_A's initialisation
    lora = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), **config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen).to(param.dtype) * 0.1)
    return lora.eval()


def adapter_state(lora: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter tensors as PEFT saves them (``….lora_A.weight`` …)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(lora, save_embedding_layers=False).items()}


def weights(model: Any) -> dict[str, torch.Tensor]:
    """A detached copy of a model's state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def perturb(sd: dict[str, torch.Tensor], names: Sequence[str], seed: int) -> dict[str, torch.Tensor]:
    """A copy of ``sd`` in which ``names`` changed (as a fine-tune changes them); every other tensor is shared."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(sd)
    for name in names:
        t = sd[name]
        out[name] = (t.float() + torch.randn(t.shape, generator=gen) * 0.01).to(t.dtype)
    return out


def input_ids(seed: int = 0, length: int = 12) -> torch.Tensor:
    """A batch of two random token sequences."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (2, length), generator=gen)


def trained(base: Any, config: Any, seed: int = 1) -> PeftModel:
    """``base`` (copied) with any PEFT adapter whose every trainable tensor is perturbed (``modules_to_save``
    copies included), so that its merge is not zero. The same seed gives the same adapter."""
    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_((torch.randn(p.shape, generator=gen) * 0.1).to(p.dtype))
    return model
