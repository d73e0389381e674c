"""Lineage: adapters over a base snapshot — save them, load them merged, merge them into new snapshots.

An adapter snapshot holds only its adapter tensors and its PEFT config, and names the snapshot it modifies:

- state ``{"model": {name: tensor}}`` with every tensor of the adapter, named as ``adapter_model.safetensors``
  names it (``base_model.model.<module>.lora_A.weight``, ``….lora_embedding_A``, ``….ia3_l``, ``….hada_w1_a``,
  and whole tensors such as a ``modules_to_save`` head ``base_model.model.score.weight`` or embeddings saved with
  ``save_embedding_layers``); no tensor is left out by its name;
- the PEFT config (``peft_type``, ``r``, ``lora_alpha``, ``target_modules``, ``use_rslora``, ``use_dora``,
  ``fan_in_fan_out`` …) attached as ``adapter_config.json`` and copied into ``metadata["adapter_config"]``;
- ``relation="adapter"``, ``parents=[base]`` and ``base=<base id>``, so "which base does this adapter need?"
  always has an answer (a later save of the same adapter on its branch is ``continue`` and keeps ``base``).

Merging follows PEFT's ``set_peft_model_state_dict`` + ``merge_and_unload()``: whole tensors replace the base's
(a resized embedding keeps its new rows), then each adapted module changes as its type says. LoRA (see
``_lora``): ``W + scale · B @ A`` (transposed for ``fan_in_fan_out`` layers and for embeddings, reshaped for
convolutions), ``scale = lora_alpha / r`` or ``lora_alpha / √r`` with rsLoRA (``alpha_pattern`` and
``rank_pattern`` matched as PEFT matches them), rescaled by the magnitude with DoRA, plus the LoRA bias with
``lora_bias``. IA³, LoHa, LoKr and AdaLoRA: see ``_types``. Everything is computed in float32 (float64 for
float64 weights) and cast back to the weight's dtype. Tied weights change together, as in PEFT. Other PEFT
types (VeRA, OFT, BOFT, prompt tuning …), trainable tokens and the like are stored but not merged: merging
them raises ``UnsupportedStateError``, naming the type or the tensor.

PEFT adapter folders (``adapter_model.safetensors`` + ``adapter_config.json``) are read and written by
``ckpt.interop`` (``import_peft_folder``, ``export_peft_folder``, ``ckpt.export``). torch is imported only by the
functions that compute (``load_merged``, ``merge_adapter``).

A diffusers LoRA (``pytorch_lora_weights.safetensors``: ``unet.<module>.lora_A.weight`` …) over a pipeline
snapshot is an adapter snapshot too (``save_diffusers_lora``; modules ``_diffusers_names``, ``_diffusers_plan``,
``_diffusers_lora``): ``load_merged`` and ``merge_adapter`` merge it component by component as diffusers'
``fuse_lora()`` does; ``ckpt.interop`` reads and writes its file.

The three verbs are also ``ckpt.save_adapter``, ``ckpt.load_merged`` and ``ckpt.merge_adapter``.

Example:
    >>> from ckpt.lineage import load_merged, save_adapter  # doctest: +SKIP
    >>> lora = save_adapter(store, "chat", get_peft_model_state_dict(peft_model), branch="chat-lora",
    ...                     config=peft_model.peft_config["default"])  # doctest: +SKIP
    >>> merged = load_merged(store, "chat-lora")  # doctest: +SKIP
"""

# `X as X`: names ckpt.interop needs beyond the public ones (PEFT folders are checked as save_adapter checks)
from ckpt.lineage._adapters import AdapterRecord as AdapterRecord
from ckpt.lineage._adapters import adapter_config, base_of, is_adapter, save_adapter
from ckpt.lineage._adapters import adapter_record as adapter_record
from ckpt.lineage._adapters import read_config as read_config
from ckpt.lineage._config import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CONFIG_KEY, MERGED_TYPES
from ckpt.lineage._config import peft_type as peft_type
from ckpt.lineage._config_json import config_bytes as config_bytes
from ckpt.lineage._diffusers_lora import DIFFUSERS_LORA_KEY, is_diffusers_lora, save_diffusers_lora
from ckpt.lineage._diffusers_names import component_paths as component_paths
from ckpt.lineage._diffusers_plan import LORA_METADATA_KEY, LORA_WEIGHTS_FILE
from ckpt.lineage._diffusers_plan import lora_file_metadata as lora_file_metadata
from ckpt.lineage._layers import layers_of_model as layers_of_model
from ckpt.lineage._merge import load_merged, merge_adapter

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "CONFIG_KEY",
    "DIFFUSERS_LORA_KEY",
    "LORA_METADATA_KEY",
    "LORA_WEIGHTS_FILE",
    "MERGED_TYPES",
    "adapter_config",
    "base_of",
    "is_adapter",
    "is_diffusers_lora",
    "load_merged",
    "merge_adapter",
    "save_adapter",
    "save_diffusers_lora",
]
