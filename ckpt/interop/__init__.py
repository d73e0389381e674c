"""Other formats in and out of a store: safetensors files, Hugging Face folders, PEFT adapter folders.

- ``import_folder`` saves a ``.safetensors`` file or a folder tree as ``save_pretrained`` (transformers,
  sentence-transformers, diffusers) or a hub download leaves it, as one snapshot; ``plan_import`` lists what it
  would read and leave out, reading no content. ``import_peft_folder`` imports a PEFT adapter folder over its
  base snapshot (an adapter snapshot, see ``ckpt.lineage``).
- ``export`` (also ``ckpt.export``; ``ckpt restore REV --to DIR`` on the command line) writes a snapshot back as
  ordinary files: a PEFT folder for an adapter, a Hugging Face folder for anything else; an imported snapshot
  gives back its original files byte for byte. ``export_peft_folder`` writes an adapter, refusing anything else.

The rules both directions follow are public too, for code of your own that reads or writes model folders:
``scan_folder``, ``open_file`` and ``read_file`` (a walk that follows symbolic links only inside the folder,
reads that never follow a link and apply size limits while reading) and ``FolderWriter`` (a new folder put in
place in one rename).

Nothing here imports torch: tensors are read from memory-mapped safetensors files straight into chunks, and
written from chunks straight into files. Pickle-based weight files are refused (loading one can run code).

The internal modules: ``_safetensors`` (the file codec), ``_folders`` and ``_folder_writer`` (reading the user's
folders safely, writing a folder the export owns), ``_hf_import``, ``_hf_export``, ``_shards`` (sharding and
index files), ``_state_doc`` (``state.json`` for training snapshots), ``_peft`` and ``_export``.

Example:
    >>> snap = ckpt.interop.import_folder(store, "tiny-llama/", model="tiny-llama")  # doctest: +SKIP
    >>> ckpt.export(store, snap.id, "out/tiny-llama").written  # doctest: +SKIP
    (PosixPath('out/tiny-llama/model.safetensors'), PosixPath('out/tiny-llama/config.json'))
"""

from ckpt.interop._export import export
from ckpt.interop._folder_writer import FolderWriter
from ckpt.interop._folders import FolderFile, FolderScan, open_file, read_file, scan_folder
from ckpt.interop._hf_export import ExportResult
from ckpt.interop._hf_import import MAX_SIDE_FILE_SIZE, PICKLE_SUFFIXES, ImportPlan, import_folder, plan_import
from ckpt.interop._peft import export_peft_folder, import_peft_folder
from ckpt.interop._safetensors import write_file as write_file  # for ckpt.integrations; not in __all__
from ckpt.interop._state_doc import EXPORT_FORMAT, HEADER_PREFIX, LAYOUT_KEY

__all__ = [
    "EXPORT_FORMAT",
    "HEADER_PREFIX",
    "LAYOUT_KEY",
    "MAX_SIDE_FILE_SIZE",
    "PICKLE_SUFFIXES",
    "ExportResult",
    "FolderFile",
    "FolderScan",
    "FolderWriter",
    "ImportPlan",
    "export",
    "export_peft_folder",
    "import_folder",
    "import_peft_folder",
    "open_file",
    "plan_import",
    "read_file",
    "scan_folder",
]
