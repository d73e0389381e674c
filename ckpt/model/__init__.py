"""Pydantic models of the on-disk records, canonical JSON and ids (layer 2: imports only ``errors``)."""

from ckpt.model.canonical import (
    RECORD_HINT,
    canonical_json,
    digest_bytes,
    drop_unknown,
    is_digest,
    json_problem,
    parse_json,
    parse_record,
    validate_record,
    validation_summary,
)
from ckpt.model.config import FORMAT_VERSION, READABLE_MAJOR, StoreConfig
from ckpt.model.refs import (
    BranchRecord,
    PrunedMarker,
    ReflogEntry,
    TagRecord,
    check_ref_name,
    ref_name_problem,
    ref_name_readable,
)
from ckpt.model.snapshot import Relation, Snapshot, format_time, utcnow
from ckpt.model.table import (
    DTYPE_SIZES,
    RESERVED_FILE_PREFIX,
    FileEntry,
    TensorEntry,
    TensorShard,
    TensorTable,
    file_path_problem,
    tree_problem,
)
from ckpt.model.types import Digest, Timestamp, parse_time

__all__ = [
    "DTYPE_SIZES",
    "FORMAT_VERSION",
    "READABLE_MAJOR",
    "RECORD_HINT",
    "RESERVED_FILE_PREFIX",
    "BranchRecord",
    "Digest",
    "FileEntry",
    "PrunedMarker",
    "ReflogEntry",
    "Relation",
    "Snapshot",
    "StoreConfig",
    "TagRecord",
    "TensorEntry",
    "TensorShard",
    "TensorTable",
    "Timestamp",
    "canonical_json",
    "check_ref_name",
    "digest_bytes",
    "drop_unknown",
    "file_path_problem",
    "format_time",
    "is_digest",
    "json_problem",
    "parse_json",
    "parse_record",
    "parse_time",
    "ref_name_problem",
    "ref_name_readable",
    "tree_problem",
    "utcnow",
    "validate_record",
    "validation_summary",
]
