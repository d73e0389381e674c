"""The folder parsers (safetensors headers and files, HF index files, ckpt's state.json) fail only with
``CkptError``s, whatever they are given (bounded runs; the security suite runs longer ones)."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.errors import CkptError
from ckpt.interop._safetensors import open_mapped, parse_header
from ckpt.interop._shards import check_index as _check_index
from ckpt.interop._state_doc import read_export_doc as _read_export_doc

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "BF16", "C128", "F4", "X", 3]) | json_values,
        "shape": st.lists(st.integers(-2, 2**40), max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(-8, 2**40), max_size=3) | json_values,
    },
)
headers = st.dictionaries(st.text(max_size=12), entries | json_values, max_size=5)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(header=headers, data=st.binary(max_size=64), raw=st.binary(max_size=64), use_raw=st.booleans())
def test_safetensors_headers_and_files(tmp_path: Path, header: Any, data: bytes, raw: bytes, use_raw: bool) -> None:
    text = raw if use_raw else json.dumps(header).encode("utf-8", "surrogatepass")
    with contextlib.suppress(CkptError):
        parse_header(text, data_size=len(data))
    path = tmp_path / "f.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data if not use_raw else raw)
    with contextlib.suppress(CkptError):
        open_mapped(path)


@FUZZ
@given(index=json_values | st.fixed_dictionaries({"weight_map": json_values}), raw=st.binary(max_size=32))
def test_hf_index_files(index: Any, raw: bytes) -> None:
    for data in (json.dumps(index).encode(), raw):
        with contextlib.suppress(CkptError):
            _check_index("model.safetensors.index.json", data, {"w": "model.safetensors"})


@FUZZ
@given(
    doc=st.fixed_dictionaries(
        {"ckpt_export": st.just(1) | json_values},
        optional={"snapshot": json_values, "files": json_values, "state": json_values, "numpy": json_values},
    )
)
def test_ckpt_state_json(doc: Any) -> None:
    with contextlib.suppress(CkptError):
        _read_export_doc(json.dumps(doc).encode(), "state.json")
