"""Pydantic models of the on-disk records, canonical JSON and ids (layer 2: imports only ``errors``)."""

from ckpt.model.canonical import canonical_json, digest_bytes, drop_unknown, is_digest, parse_json
from ckpt.model.config import FORMAT_VERSION, READABLE_MAJOR, StoreConfig
from ckpt.model.refs import BranchRecord, PrunedMarker, ReflogEntry, TagRecord, check_ref_name
from ckpt.model.snapshot import Relation, Snapshot, format_time, parse_time, utcnow
from ckpt.model.table import DTYPE_SIZES, RESERVED_FILE_PREFIX, FileEntry, TensorEntry, TensorShard, TensorTable

__all__ = [
    "DTYPE_SIZES",
    "FORMAT_VERSION",
    "READABLE_MAJOR",
    "RESERVED_FILE_PREFIX",
    "BranchRecord",
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
    "canonical_json",
    "check_ref_name",
    "digest_bytes",
    "drop_unknown",
    "format_time",
    "is_digest",
    "parse_json",
    "parse_time",
    "utcnow",
]
