"""Pydantic models of the on-disk records, canonical JSON and ids (layer 2: imports only ``errors``).

The package is internal; this module is its interface for the layers above. Its modules: ``_types`` (digests,
times), ``_canonical`` (canonical JSON, digests, record parsing), ``_config`` (the store config), ``_refs``
(branch and tag records, the reflog, ref names), ``_snapshot`` (the snapshot record), ``_table`` (the tensor
table, reserved file names) and ``_fields`` (the fields a caller gives a new snapshot, and their cleaning).
"""

from ckpt.model._canonical import (
    MAX_JSON_DEPTH,
    RECORD_HINT,
    canonical_json,
    digest_bytes,
    drop_unknown,
    is_digest,
    json_problem,
    parse_json,
    parse_record,
    paused_gc,
    validate_record,
    validation_summary,
)
from ckpt.model._config import (
    FORMAT_VERSION,
    FORMAT_VERSION_NO_DELTAS,
    FORMAT_VERSION_NO_PACKS,
    MAX_DELTA_DEPTH,
    READABLE_MAJOR,
    StoreConfig,
)
from ckpt.model._fields import SaveFields, SnapshotFields, check_fields, clean_files, clean_metrics
from ckpt.model._refs import (
    BranchRecord,
    PrunedMarker,
    ReflogAction,
    ReflogEntry,
    TagRecord,
    check_ref_name,
    ref_name_problem,
    ref_name_readable,
)
from ckpt.model._snapshot import Relation, Snapshot, format_time, utcnow
from ckpt.model._table import (
    DTYPE_SIZES,
    RESERVED_FILE_PREFIX,
    SAFETENSORS_INDEX_SUFFIX,
    FileEntry,
    TensorEntry,
    TensorShard,
    TensorTable,
    file_path_problem,
    tree_problem,
)
from ckpt.model._types import Digest, Timestamp, parse_time

__all__ = [
    "DTYPE_SIZES",
    "FORMAT_VERSION",
    "FORMAT_VERSION_NO_DELTAS",
    "FORMAT_VERSION_NO_PACKS",
    "MAX_DELTA_DEPTH",
    "MAX_JSON_DEPTH",
    "READABLE_MAJOR",
    "RECORD_HINT",
    "RESERVED_FILE_PREFIX",
    "SAFETENSORS_INDEX_SUFFIX",
    "BranchRecord",
    "Digest",
    "FileEntry",
    "PrunedMarker",
    "ReflogAction",
    "ReflogEntry",
    "Relation",
    "SaveFields",
    "Snapshot",
    "SnapshotFields",
    "StoreConfig",
    "TagRecord",
    "TensorEntry",
    "TensorShard",
    "TensorTable",
    "Timestamp",
    "canonical_json",
    "check_fields",
    "check_ref_name",
    "clean_files",
    "clean_metrics",
    "digest_bytes",
    "drop_unknown",
    "file_path_problem",
    "format_time",
    "is_digest",
    "json_problem",
    "parse_json",
    "parse_record",
    "paused_gc",
    "parse_time",
    "ref_name_problem",
    "ref_name_readable",
    "tree_problem",
    "utcnow",
    "validate_record",
    "validation_summary",
]
