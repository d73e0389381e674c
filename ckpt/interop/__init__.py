"""Other formats in and out of a store: safetensors files, Hugging Face folders, PEFT adapter folders.

- ``import_folder`` saves a ``.safetensors`` file or a folder tree as ``save_pretrained`` (transformers,
  sentence-transformers, diffusers) or a hub download leaves it, as one snapshot; ``plan_import`` lists what it
  would read and leave out, reading no content. ``import_peft_folder`` imports a PEFT adapter folder over its
  base snapshot (an adapter snapshot, see ``ckpt.lineage``).
- diffusers: a pipeline folder is imported whole (``model_index.json`` recorded, see ``read_model_index``) and
  exported back as one; ``import_diffusers_lora`` / ``export_diffusers_lora`` read and write the LoRA file
  ``save_lora_weights`` writes, as an adapter snapshot over the pipeline (``ckpt.lineage.save_diffusers_lora``).
- model cards: ``read_card`` / ``card_with_lineage`` read and write the ``README.md`` front matter the Hub draws
  its model tree from (``base_model``, ``base_model_relation``); import records the bases it names as parents,
  export writes the snapshot's bases into it.
- ``export`` (also ``ckpt.export``; ``ckpt restore REV --to DIR`` on the command line) writes a snapshot back as
  ordinary files: a PEFT folder for an adapter, a Hugging Face folder for anything else; an imported snapshot
  gives back its original files byte for byte. ``export_peft_folder`` writes an adapter, refusing anything else.

The rules both directions follow are public too, for code of your own that reads or writes model folders:
``scan_folder``, ``open_file`` and ``read_file`` (a walk that follows symbolic links only inside the folder,
reads that never follow a link and apply size limits while reading) and ``FolderWriter`` (a new folder put in
place in one rename).

Nothing here imports torch: tensors are read from memory-mapped safetensors files straight into chunks, and
written from chunks straight into files. Pickle-based weight files are refused (loading one can run code).

The internal modules: ``_safetensors`` and ``_safetensors_header`` (the file codec), ``_folders`` and
``_folder_writer`` (reading the user's folders safely, writing a folder the export owns), ``_hf_import``,
``_hf_export``, ``_shards`` (sharding and index files), ``_state_doc`` (``state.json`` for training snapshots),
``_peft``, ``_diffusers`` (pipelines), ``_diffusers_lora`` (LoRA files), ``_model_card`` and ``_export``.

Example:
    >>> snap = ckpt.interop.import_folder(store, "tiny-llama/", model="tiny-llama")  # doctest: +SKIP
    >>> ckpt.export(store, snap.id, "out/tiny-llama").written  # doctest: +SKIP
    (PosixPath('out/tiny-llama/model.safetensors'), PosixPath('out/tiny-llama/config.json'))
"""

from ckpt.interop._diffusers import MODEL_INDEX, PIPELINE_KEY, PipelineIndex, read_model_index
from ckpt.interop._diffusers_lora import card_base as card_base  # for the CLI; not in __all__
from ckpt.interop._diffusers_lora import export_diffusers_lora, import_diffusers_lora, is_diffusers_lora_folder
from ckpt.interop._export import export
from ckpt.interop._folder_writer import FolderWriter
from ckpt.interop._folders import FolderFile, FolderScan, open_file, read_file, scan_folder
from ckpt.interop._hf_export import ExportResult
from ckpt.interop._hf_import import MAX_SIDE_FILE_SIZE, PICKLE_SUFFIXES, ImportPlan, import_folder, plan_import
from ckpt.interop._model_card import CARD_FILE, HUB_RELATIONS, CardLineage, HubRelation, card_with_lineage, read_card
from ckpt.interop._peft import export_peft_folder, import_peft_folder
from ckpt.interop._safetensors import write_file as write_file  # for ckpt.integrations; not in __all__
from ckpt.interop._state_doc import EXPORT_FORMAT, HEADER_PREFIX, LAYOUT_KEY

__all__ = [
    "CARD_FILE",
    "EXPORT_FORMAT",
    "HEADER_PREFIX",
    "HUB_RELATIONS",
    "LAYOUT_KEY",
    "MAX_SIDE_FILE_SIZE",
    "MODEL_INDEX",
    "PICKLE_SUFFIXES",
    "PIPELINE_KEY",
    "CardLineage",
    "ExportResult",
    "FolderFile",
    "FolderScan",
    "FolderWriter",
    "HubRelation",
    "ImportPlan",
    "PipelineIndex",
    "card_with_lineage",
    "export",
    "export_diffusers_lora",
    "export_peft_folder",
    "import_diffusers_lora",
    "import_folder",
    "import_peft_folder",
    "is_diffusers_lora_folder",
    "open_file",
    "plan_import",
    "read_card",
    "read_file",
    "read_model_index",
    "scan_folder",
]
