"""The docs: the site builds strictly, its examples and code blocks run, and the reference pages match the code.

A ```python block in ``docs/quickstart.md``, ``docs/guides/*.md`` and the other pages of ``PAGES`` runs unless
the line before its fence is ``<!-- test: skip -->``; a block that only includes a file (``--8<--``) is skipped,
because the included ``examples/docs_*.py`` scripts run on their own. The blocks of one page run in order, in
one namespace, in a fresh folder (no store exists there yet, and no ``CKPT_*`` variable is set); a failure
points at the page's line numbers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
SKIP_MARK = "<!-- test: skip -->"
TIMEOUT = 300

# pages whose python blocks run (format.md, api.md and cli.md show code that is not meant to run on its own)
PAGES = [
    DOCS / "quickstart.md",
    *sorted((DOCS / "guides").glob("*.md")),
    DOCS / "index.md",
    DOCS / "install.md",
    DOCS / "environment.md",
    DOCS / "errors.md",
]
SCRIPTS = [*sorted(EXAMPLES.glob("docs_*.py")), EXAMPLES / "quickstart.py"]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<info>[^\n]*)$")


def _have(module: str) -> bool:
    """Whether a module is installed, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _env() -> dict[str, str]:
    """The environment of a child process: no CKPT_* variable, ckpt importable from this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def code_blocks(text: str) -> list[dict[str, Any]]:
    """Every fenced block of a Markdown page: language, first line number (1-based), code, skip mark."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        info = m.group("info").strip()
        lang = info.split()[0].lstrip(".{").rstrip("}") if info else ""
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        body = [line[indent:] for line in lines[start:j]]
        blocks.append(
            {"lang": lang, "line": start + 1, "code": "\n".join(body), "skip": prev == SKIP_MARK, "info": info}
        )
        i = j + 1
    return blocks


def page_script(page: Path) -> str:
    """The page's runnable python blocks, each at its own line numbers (everything else blank)."""
    text = page.read_text(encoding="utf-8")
    out = [""] * (len(text.splitlines()) + 1)
    for block in code_blocks(text):
        if block["lang"] != "python" or block["skip"] or block["code"].lstrip().startswith("--8<--"):
            continue
        for k, line in enumerate(block["code"].splitlines()):
            out[block["line"] - 1 + k] = line
    return "\n".join(out)


# -- the site ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_click") if not _have(m)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**_env(), "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "format" / "index.html").exists()


# -- examples and code blocks --------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store")],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.torch
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_blocks_run(page: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    source = page_script(page)
    if not source.strip():
        pytest.skip("no runnable python block")
    runner = (
        "import sys\n"
        "path, source = sys.argv[1], open(sys.argv[2], encoding='utf-8').read()\n"
        "exec(compile(source, path, 'exec'), {'__name__': '__main__'})\n"
    )
    script = tmp_path / "page.py"
    script.write_text(source, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", runner, str(page), str(script)],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, f"{page.relative_to(ROOT)} failed:\n{result.stdout}{result.stderr}"


def test_pages_have_runnable_python() -> None:
    for page in PAGES:
        assert page_script(page).strip(), f"{page.name} has no runnable python block"


def test_snippets_exist() -> None:
    for page in DOCS.rglob("*.md"):
        for name in re.findall(r'--8<-- "([^"]+)"', page.read_text(encoding="utf-8")):
            assert (ROOT / name).exists() or (EXAMPLES / name).exists(), f"{page.name} includes missing {name}"


# -- the reference pages match the code ----------------------------------------------------------------------


def test_errors_page_lists_every_error_and_hint() -> None:
    import ckpt.errors

    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    flat = " ".join(text.split())  # hints may wrap across lines
    for name in ckpt.errors.__all__:
        assert f"::: ckpt.errors.{name}" in text, f"errors.md does not document {name}"
        hint = getattr(ckpt.errors, name).default_hint
        if hint:
            assert " ".join(hint.split()) in flat, f"errors.md does not quote the hint of {name}: {hint!r}"
    tree = ckpt.errors.__doc__.split("```")[1].strip()
    assert tree in text, "errors.md does not carry the error tree of ckpt/errors.py"


def test_api_page_lists_every_public_name() -> None:
    import ckpt
    import ckpt.retention
    import ckpt.storage
    import ckpt.testing

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    errors = (DOCS / "errors.md").read_text(encoding="utf-8")
    for module in (ckpt, ckpt.retention, ckpt.storage, ckpt.testing):
        for name in module.__all__:
            if name == "__version__":
                continue
            rendered = f"::: {module.__name__}.{name}\n"
            by_hand = f"\n### {name}\n"  # type aliases, which mkdocstrings cannot render
            error = f"::: ckpt.errors.{name}\n"  # the errors are on their own page
            assert rendered in text or by_hand in text or error in errors, f"api.md lacks {module.__name__}.{name}"


def test_environment_page_lists_every_variable() -> None:
    import ckpt.settings

    source = Path(ckpt.settings.__file__).read_text(encoding="utf-8")
    text = (DOCS / "environment.md").read_text(encoding="utf-8")
    for name in sorted(set(re.findall(r"CKPT_[A-Z_]+", source))):
        assert f"`{name}`" in text, f"environment.md does not document {name}"


def test_format_page_tables_match_the_code() -> None:
    from typing import get_args

    from ckpt.model import DTYPE_SIZES, Relation
    from ckpt.model.refs import ReflogAction

    text = (DOCS / "format.md").read_text(encoding="utf-8")
    dtypes = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| (\d+) \|", text, flags=re.M))
    assert {k: int(v) for k, v in dtypes.items()} == DTYPE_SIZES
    for relation in get_args(Relation):
        assert re.search(rf"^\| `{relation}` \|", text, flags=re.M), f"relation {relation} is not documented"
    for action in get_args(ReflogAction):
        assert re.search(rf"^\| `{action}` \|", text, flags=re.M), f"reflog action {action} is not documented"
    from ckpt.model import FORMAT_VERSION

    assert f"format version **{FORMAT_VERSION}**" in text


def test_format_page_layout_and_encodings_match_the_code() -> None:
    import ckpt.state.tree
    from ckpt.model import canonical_json
    from ckpt.state import flatten
    from ckpt.store import layout, objects

    text = (DOCS / "format.md").read_text(encoding="utf-8")
    d = "ab" + "0" * 62
    for path in (
        layout.CONFIG,
        layout.chunk_path(d).replace(d, "<digest>"),
        layout.table_path(d).replace(d, "<digest>"),
        layout.snapshot_path(d).replace(d, "<id>"),
        layout.branch_path("<name>"),
        layout.tag_path("<name>"),
        layout.pruned_path("<id>"),
        layout.TMP,
        layout.reflog_prefix("<ref>"),
    ):
        assert f"`{path}" in text, f"format.md does not name the path {path}"
    assert objects._HEADER.format == "<4sBBHQ" and "`<4sBBHQ`" in text
    assert objects.CHUNK_HEADER_SIZE == 16 and objects.CHUNK_MAGIC == b"ckpt"
    for row in (line for line in ckpt.state.tree.__doc__.splitlines() if line.startswith("|")):
        assert row.replace("``", "`") in text, f"format.md lacks the typed-JSON row {row!r}"
    example = {"step": 3, "betas": (0.9, 0.999), "loss": float("nan"), 1: [None, True]}
    assert canonical_json(flatten(example)[0]).decode() in text


def _titled_blocks(text: str) -> dict[str, str]:
    out = {}
    for block in code_blocks(text):
        m = re.search(r'title="([^"]+)"', block["info"])
        if m:
            out[m.group(1)] = block["code"]
    return out


@pytest.mark.torch
def test_format_worked_example_is_real(tmp_path: Path) -> None:
    """The bytes on the format page are what ckpt writes today (chunk, table) and are self-consistent (ids)."""
    pytest.importorskip("torch")
    from ckpt.model import (
        BranchRecord,
        ReflogEntry,
        Snapshot,
        StoreConfig,
        TagRecord,
        TensorTable,
        canonical_json,
        digest_bytes,
    )

    files = _titled_blocks((DOCS / "format.md").read_text(encoding="utf-8"))
    root = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "docs_format.py"), str(root)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr

    def canonical(text: str) -> bytes:
        data = text.encode("utf-8")
        assert canonical_json(json.loads(data)) == data, "not canonical JSON"
        return data

    chunk_name = next(p for p in files if p.startswith("chunks/"))
    chunk = bytes.fromhex("".join(line.split("  ")[0] for line in files[chunk_name].splitlines()))
    assert (root / chunk_name).read_bytes() == chunk
    assert digest_bytes(chunk[16:]) == chunk_name.rsplit("/", 1)[1]

    table_name = next(p for p in files if p.startswith("tables/"))
    table = canonical(files[table_name])
    assert (root / table_name).read_bytes() == table
    TensorTable.model_validate_json(table)

    config = canonical(files["ckpt.json"])
    assert (
        StoreConfig.model_validate_json(config).chunk_size
        == json.loads((root / "ckpt.json").read_bytes())["chunk_size"]
    )

    snap_name = next(p for p in files if p.startswith("snapshots/"))
    record = canonical(files[snap_name])
    snap_id = snap_name.rsplit("/", 1)[1].removesuffix(".json")
    assert digest_bytes(record) == snap_id
    assert snap_name == f"snapshots/{snap_id[:2]}/{snap_id}.json"
    snap = Snapshot.model_validate_json(record)
    assert snap.record_bytes() == record
    assert snap.table == table_name.rsplit("/", 1)[1].removesuffix(".json")
    fresh = json.loads(next((root / "snapshots").rglob("*.json")).read_bytes())
    assert sorted(fresh) == sorted(json.loads(record))
    varying = ("created_at", "ckpt_version")
    assert {k: v for k, v in fresh.items() if k not in varying} == {
        k: v for k, v in json.loads(record).items() if k not in varying
    }

    assert BranchRecord.model_validate_json(canonical(files["refs/heads/main"])).id == snap_id
    tag = TagRecord.model_validate_json(canonical(files["refs/tags/tiny-2026-11-28"]))
    assert tag.id == snap_id and tag.frozen
    for name, body in files.items():
        if name.startswith("logs/"):
            entry = ReflogEntry.model_validate_json(canonical(body))
            assert name.startswith(f"logs/{entry.ref}/") and entry.new == snap_id
            assert re.fullmatch(r"[0-9]{20}-[0-9a-f]{8}\.json", name.rsplit("/", 1)[1])
    made = sorted(str(p.relative_to(root)).replace(os.sep, "/") for p in root.rglob("*") if p.is_file())
    listed = [p for p in files if not p.startswith("examples/")]

    def shape(path: str) -> str:
        return re.sub(r"[0-9a-f]{2}/[0-9a-f]{64}|[0-9]{20}-[0-9a-f]{8}", "X", path)

    assert {shape(p) for p in listed} <= {shape(p) for p in made}
    shutil.rmtree(root)
