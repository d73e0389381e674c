"""The docs: the site builds strictly, its examples and code blocks run, and the reference pages match the code.

Every page of ``docs/`` runs as one script, its blocks in page order, in one namespace, in a fresh folder (no
store exists there yet, and no ``CKPT_*`` variable is set); a failure points at the page's line numbers.

- A ```python block runs (on the pages of ``PAGES``; format.md and api.md show code not meant to run on its
  own) unless the line before its fence is ``<!-- test: skip -->``; a block that only includes a file
  (``--8<--``) is skipped, because the included ``examples/*.py`` scripts run on their own.
- A ```console block runs too, unless marked the same way: each ``$ …`` line is a command, the lines under it
  are what it prints. ``ckpt …`` runs the command line in the page's process (click's test runner, the same
  code as the installed ``ckpt``); ``python …`` runs a script (``examples/…`` from this checkout); ``export
  NAME=VALUE`` sets a variable for the later commands of the page. The command must exit 0, unless its
  comment says otherwise (``# exits 1``), or the lines shown under it hold an ``error: …`` line: then it must
  fail, with an error that starts with the same three words. A command that names a remote store (``s3://``,
  ``gs://``, ``az://`` …) is not run (there is no cloud here); any other program is refused: mark its block
  to skip.
- ``CONSOLE_SETUP`` prepares what the console blocks of a page talk about but never build themselves (a
  Hugging Face folder, a store with a history), for pages whose text has no room for it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
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


RUNNABLE_CONSOLE = ("console",)
_EXIT_STATUS = re.compile(r"#.*\bexits? (?:with )?(?:status )?(\d+)\b")
REMOTE_URL = re.compile(r"\b(s3a?|gs|gcs|az|abfss?|adl|hf)://")


def console_commands(code: str, first_line: int) -> list[dict[str, Any]]:
    """The ``$ …`` commands of a console block: line number, command, and the lines shown under it."""
    commands: list[dict[str, Any]] = []
    for k, line in enumerate(code.splitlines()):
        if line.startswith("$ "):
            commands.append({"line": first_line + k, "command": line[2:].strip(), "shown": []})
        elif commands:
            commands[-1]["shown"].append(line)
    return commands


def page_script(page: Path, *, python: bool | None = None) -> str:
    """The page's runnable blocks, each at its own line numbers (everything else blank).

    Python blocks run as they are (when ``python`` is true; default: on the pages of ``PAGES``); each console
    command becomes a call ``__console__(line, command, error, status)`` on the line of its ``$``: the ``error:``
    line shown under it, if any, and the exit status its comment gives (``# exits 1``), if any.
    """
    if python is None:
        python = page in PAGES
    text = page.read_text(encoding="utf-8")
    out = [""] * (len(text.splitlines()) + 1)
    for block in code_blocks(text):
        if block["skip"]:
            continue
        if block["lang"] == "python" and python and not block["code"].lstrip().startswith("--8<--"):
            for k, line in enumerate(block["code"].splitlines()):
                out[block["line"] - 1 + k] = line
        elif block["lang"] in RUNNABLE_CONSOLE:
            for cmd in console_commands(block["code"], block["line"]):
                error = next((line.strip() for line in cmd["shown"] if line.strip().startswith("error:")), None)
                m = _EXIT_STATUS.search(cmd["command"])
                status = int(m.group(1)) if m else None
                out[cmd["line"] - 1] = f"__console__({cmd['line']}, {cmd['command']!r}, {error!r}, {status!r})"
    return "\n".join(out)


# -- console blocks ------------------------------------------------------------------------------------------


def _safetensors_folder(path: Path, *, model: str, scale: float) -> None:
    """A small Hugging Face model folder, as ``save_pretrained`` writes one: weights, config, tokenizer files."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(2):
        for proj in ("q_proj", "v_proj"):
            tensors[f"model.layers.{i}.self_attn.{proj}.weight"] = rng.standard_normal((32, 32), np.float32)
    tensors["lm_head.weight"] = rng.standard_normal((64, 32), np.float32)
    path.mkdir(parents=True)
    save_file(
        {k: (v * scale).astype(np.float32) for k, v in tensors.items()},
        str(path / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config = {"_name_or_path": model, "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "vocab_size": 64}
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (path / "tokenizer_config.json").write_text('{"model_max_length": 64}\n', encoding="utf-8")


def setup_hf_folders(folder: Path) -> None:
    """``tiny-llama/`` and ``tiny-llama-instruct/``: two Hugging Face folders of the same architecture."""
    _safetensors_folder(folder / "tiny-llama", model="tiny-llama", scale=1.0)
    _safetensors_folder(folder / "tiny-llama-instruct", model="tiny-llama-instruct", scale=1.01)


def setup_cli_guide_store(folder: Path) -> None:
    """Fill the empty store ``ckpt init`` made with what the command-line guide talks about.

    ``main``: eight epochs of ``tiny-llama``; the release ``tiny-llama-2026-11-28`` (that is today's name on that
    day only, when the guide's own ``ckpt freeze main`` makes it); ``instruct``: a fine-tune of ``main`` and one
    more save; ``lora``: an adapter over ``instruct``. No ``retry`` branch and no ``best`` tag: the guide makes
    them.
    """
    import datetime

    import numpy as np

    import ckpt
    from ckpt.lineage import save_adapter

    store = ckpt.open(str(folder / ".ckpt"))
    rng = np.random.default_rng(0)
    names = [f"model.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ("q_proj", "v_proj")]
    weights = {name: rng.standard_normal((32, 32), np.float32) for name in names}
    for epoch in range(8):
        weights[names[epoch % 4]] = weights[names[epoch % 4]] * 0.9
        store.save(
            {"model": dict(weights)},
            model="tiny-llama",
            step=100 * epoch,
            epoch=epoch,
            metrics={"val_loss": round(1 / (epoch + 1), 4)},
            message=f"epoch {epoch}",
        )
    if f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}" != "2026-11-28":
        store.freeze("main", name="tiny-llama-2026-11-28")
    weights[names[-1]] = weights[names[-1]] * 1.1
    store.derive("main", {"model": dict(weights)}, branch="instruct", model="tiny-llama-instruct", message="sft")
    store.save({"model": dict(weights)}, "instruct", step=10, message="more sft")
    adapter = {
        "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight": rng.standard_normal((4, 32), np.float32),
        "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight": np.zeros((32, 4), np.float32),
    }
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    save_adapter(store, "instruct", adapter, branch="lora", config=config, model="tiny-lora", message="adapter")


SETUPS: dict[str, Callable[[Path], None]] = {
    "hf_folders": setup_hf_folders,
    "cli_guide_store": setup_cli_guide_store,
}

# page -> {"folder": where its console commands run (under the page's folder; default: the page's folder),
#          "before": a setup run there first, "after_init": a setup run once its first `ckpt init` succeeded}
CONSOLE_SETUP: dict[str, dict[str, str]] = {
    "cli.md": {"before": "hf_folders"},
    "guides/command-line.md": {"folder": "console", "before": "hf_folders", "after_init": "cli_guide_store"},
}


class Console:
    """Runs the console commands of one page, in the page's process (see the module's docstring)."""

    def __init__(self, page: str, work: Path) -> None:
        self.page = page
        self.setup = CONSOLE_SETUP.get(page, {})
        self.folder = work / self.setup.get("folder", ".")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = {}
        self.initialised = False
        if "before" in self.setup:
            SETUPS[self.setup["before"]](self.folder)

    def __call__(self, line: int, command: str, error: str | None, expected: int | None = None) -> None:
        where = f"{self.page}:{line}: $ {command}"
        argv = shlex.split(command, comments=True)
        if argv[:3] == ["python", "-m", "ckpt"]:
            argv = ["ckpt", *argv[3:]]
        if argv[0] == "export":
            for pair in argv[1:]:
                name, _, value = pair.partition("=")
                self.env[name] = value
            return
        store = self.env.get("CKPT_STORE", "")
        if any(REMOTE_URL.match(a) for a in [*argv, store]):
            print(f"{where}: not run (a remote store)")
            return
        if argv[0] == "ckpt":
            status, err = self._ckpt(argv[1:], where)
        elif argv[0] == "python":
            status, err = self._python(argv[1:])
        else:
            raise AssertionError(f"{where}: cannot run {argv[0]!r} here; mark the block <!-- test: skip -->")
        print(f"$ {command}\n{err}", end="" if err.endswith("\n") else "\n")
        if expected is not None:
            assert status == expected, f"{where}: exit status {status}, but the page says {expected}\n{err}"
        elif error is None:
            assert status == 0, f"{where}: exit status {status}\n{err}"
        if error is not None:
            shown = error.split()[:4]
            actual = next((x.strip() for x in err.splitlines() if x.startswith("error:")), "")
            assert status != 0, f"{where}: succeeded, but the page shows {error!r}"
            assert actual.split()[:4] == shown, f"{where}: failed with {actual!r}, but the page shows {error!r}"
        if argv[:2] == ["ckpt", "init"] and not self.initialised and "after_init" in self.setup:
            self.initialised = True
            SETUPS[self.setup["after_init"]](self.folder)

    def _ckpt(self, args: list[str], where: str) -> tuple[int, str]:
        from click.testing import CliRunner

        from ckpt.cli import cli

        cwd = Path.cwd()
        os.chdir(self.folder)
        try:
            result = CliRunner().invoke(cli, args, env=self.env, prog_name="ckpt")
        finally:
            os.chdir(cwd)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            detail = "".join(traceback.format_exception(result.exception))
            raise AssertionError(f"{where}: raised\n{detail}\n{result.output}")
        return result.exit_code, result.output

    def _python(self, args: list[str]) -> tuple[int, str]:
        if args and not args[0].startswith("-") and not (self.folder / args[0]).exists():
            args = [str(ROOT / args[0]), *args[1:]]
        result = subprocess.run(
            [sys.executable, *args],
            cwd=self.folder,
            env={**_env(), **self.env},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        return result.returncode, result.stdout + result.stderr


def run_page(page: str, script: str) -> None:
    """Run a page's script (see ``page_script``) in the current folder: the body of ``test_page_blocks_run``."""
    source = Path(script).read_text(encoding="utf-8")
    namespace = {"__name__": "__main__", "__console__": Console(page, Path.cwd())}
    exec(compile(source, str(DOCS / page), "exec"), namespace)


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


ALL_PAGES = sorted(DOCS.rglob("*.md"))
_IMPORTS = re.compile(r"^\s*(?:from|import)\s+(torch|transformers|peft)\b", flags=re.M)


@pytest.mark.torch
@pytest.mark.parametrize("page", ALL_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_blocks_run(page: Path, tmp_path: Path) -> None:
    source = page_script(page)
    if not source.strip():
        pytest.skip("no runnable block")
    for module in sorted(set(_IMPORTS.findall(source))):
        pytest.importorskip(module)
    script = tmp_path / "page.py"
    script.write_text(source, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    runner = "import sys; sys.path.insert(0, sys.argv[1]); import test_docs; test_docs.run_page(*sys.argv[2:])"
    result = subprocess.run(
        [sys.executable, "-c", runner, str(ROOT / "tests"), str(page.relative_to(DOCS)), str(script)],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, f"{page.relative_to(ROOT)} failed:\n{result.stdout}{result.stderr}"


def _normalise_graph(text: str) -> list[str]:
    """A ``ckpt log --graph`` drawing with what changes from run to run (ids, dates, ages) replaced."""
    ids: dict[str, str] = {}
    text = re.sub(r"\b[0-9a-f]{12}\b", lambda m: ids.setdefault(m.group(0), f"<id{len(ids)}>"), text)
    text = re.sub(r"\b\d{4}-\d{2}-\d{2}\b", "<date>", text)
    text = re.sub(r"\((just now|[^()]* ago)\)", "(<age>)", text)
    return [line.rstrip() for line in text.strip().splitlines()]


def test_home_page_family_tree_is_real(tmp_path: Path) -> None:
    """The family tree on the home page is what ``ckpt log --graph --all`` draws for the script it names."""
    from click.testing import CliRunner

    from ckpt.cli import cli

    block = next(b for b in code_blocks((DOCS / "index.md").read_text(encoding="utf-8")) if "family tree" in b["info"])
    make, draw = console_commands(block["code"], block["line"])
    assert make["command"] == "python examples/docs_family_tree.py family"
    assert draw["command"] == "ckpt --store family log --graph --all"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "docs_family_tree.py"), "family"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "\n".join(make["shown"]).strip()
    drawn = CliRunner().invoke(cli, ["--store", str(tmp_path / "family"), "log", "--graph", "--all"])
    assert drawn.exit_code == 0, drawn.output
    assert _normalise_graph("\n".join(draw["shown"])) == _normalise_graph(drawn.output), (
        "docs/index.md shows another family tree than the CLI draws; paste this one:\n" + drawn.output
    )
    # the picture is true: each line of the family starts from its parent's weights, not from another line's
    import ckpt
    from ckpt.diff import diff

    store = ckpt.open(str(tmp_path / "family"))
    release = next(name for name, tag in store.tags().items() if tag.frozen)
    for a, b, changed in ((release, "instruct~1", 5), ("instruct~1", "instruct", 5), ("instruct", "chat", 5)):
        d = diff(store, a, b, norms=False)
        assert (d.changed, d.unchanged, d.added, d.removed) == (changed, 9 - changed, 0, 0), (a, b)
    assert store.resolve("retry").parents == (store.resolve("main~1").id,)
    assert diff(store, "main~1", "retry", norms=False).changed == 9
    assert store.resolve("instruct~1").parents == (store.resolve(release).id,)


def test_pages_have_runnable_python() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert any(
            b["lang"] == "python" and not b["skip"] and not b["code"].lstrip().startswith("--8<--")
            for b in code_blocks(text)
        ), f"{page.name} has no runnable python block"


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
    import ckpt.interop
    import ckpt.lineage
    import ckpt.storage
    import ckpt.testing

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    errors = (DOCS / "errors.md").read_text(encoding="utf-8")
    for module in (ckpt, ckpt.lineage, ckpt.interop, ckpt.storage, ckpt.testing):
        for name in module.__all__:
            if name == "__version__":
                continue
            rendered = f"::: {module.__name__}.{name}\n"
            by_hand = f"\n### {name}\n"  # type aliases, which mkdocstrings cannot render
            error = f"::: ckpt.errors.{name}\n"  # the errors are on their own page
            reexported = f"::: ckpt.{name}\n" if getattr(ckpt, name, None) is getattr(module, name) else rendered
            documented = rendered in text or by_hand in text or reexported in text or error in errors
            assert documented, f"api.md lacks {module.__name__}.{name}"


def test_api_page_lists_every_store_verb() -> None:
    """``ckpt.Store`` is rendered from an explicit member list (its own verbs, then StoreMaintenance's)."""
    import ckpt

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    block = text.split("::: ckpt.Store\n", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^ +- (\w+)$", block, flags=re.M)
    public = {
        name
        for cls in ckpt.Store.__mro__
        if cls.__module__.startswith("ckpt")
        for name, member in vars(cls).items()
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }
    assert sorted(listed) == sorted(public) and len(listed) == len(set(listed))


def test_environment_page_lists_every_variable() -> None:
    import ckpt.settings

    source = Path(ckpt.settings.__file__).read_text(encoding="utf-8")
    text = (DOCS / "environment.md").read_text(encoding="utf-8")
    for name in sorted(set(re.findall(r"CKPT_[A-Z_]+", source))):
        assert f"`{name}`" in text, f"environment.md does not document {name}"


def test_format_page_tables_match_the_code() -> None:
    from typing import get_args

    from ckpt.model import DTYPE_SIZES, ReflogAction, Relation

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
    import ckpt.state._tree
    from ckpt.model import canonical_json
    from ckpt.state import flatten
    from ckpt.store import _chunk_reads as objects
    from ckpt.store import _layout as layout

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
    for row in (line for line in ckpt.state._tree.__doc__.splitlines() if line.startswith("|")):
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


# -- the benchmarks page -------------------------------------------------------------------------------------


def test_benchmarks_page_matches_its_figures() -> None:
    """The page quotes the command, shows the committed plot, and its table agrees with the JSON line it shows."""
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    assert "python benchmarks/save_load.py --size-gb 1 --plot docs/assets/save_load.png" in text
    assert "](assets/save_load.png)" in text
    png = DOCS / "assets" / "save_load.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 60_000
    (block,) = [b for b in code_blocks(text) if b["lang"] == "json"]
    result = json.loads(block["code"])
    for key in ("save_ratio", "load_ratio", "resave_ratio", "bytes_ratio"):
        assert f"**{result[key]:.2f}**" in text, f"the table does not show {key} = {result[key]}"


@pytest.mark.torch
def test_benchmark_plot(tmp_path: Path) -> None:
    """``save_load.py --plot`` draws a small PNG (matplotlib is imported only for it)."""
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("save_load", ROOT / "benchmarks" / "save_load.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = {"size_gb": 1.0, "save_ratio": 0.8, "load_ratio": 1.4, "resave_ratio": 0.2, "bytes_ratio": 1.1}
    out = module.plot_ratios(result, tmp_path / "plots" / "ratios.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < out.stat().st_size < 60_000


# -- the README: its demo, then its commands -----------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.s3
@pytest.mark.slow
def test_readme_demo_then_every_readme_command(tmp_path: Path, s3_server: dict[str, Any]) -> None:
    """The README is one story: its demo leaves the store that every command it shows next works on.

    The demo runs as the README's first command does (``python examples/quickstart.py``), then each ``$ …`` line
    of the README's console blocks runs as a shell command in the same folder, with ``ckpt`` this checkout's
    command line and ``s3://bucket`` a moto server's bucket (reached through ``AWS_ENDPOINT_URL``). Every command
    the demo's last lines suggest is one the README shows.
    """
    pytest.importorskip("torch")
    import boto3

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = code_blocks(readme)
    demo = next(b["code"] for b in blocks if b["lang"] == "bash" and "examples/quickstart.py" in b["code"])
    argv = shlex.split(demo.split("&&")[-1])
    assert argv[:2] == ["python", "examples/quickstart.py"], demo
    commands = [c["command"] for b in blocks if b["lang"] == "console" for c in console_commands(b["code"], 0)]
    assert any(c.startswith("ckpt log") for c in commands)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ckpt").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ckpt "$@"\n', encoding="utf-8")
    (bin_dir / "ckpt").chmod(0o755)
    boto3.client("s3", endpoint_url=s3_server["endpoint_url"], region_name="us-east-1").create_bucket(Bucket="bucket")
    env = {
        **_env(),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "AWS_ENDPOINT_URL": s3_server["endpoint_url"],
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    work = tmp_path / "work"
    work.mkdir()
    shown = subprocess.run(
        [sys.executable, str(ROOT / argv[1]), *argv[2:]],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    printed = [line for line in shown.stdout.splitlines() if line.strip()]
    assert len(printed) == len(set(printed)), "the demo prints a line twice"
    suggested = shown.stdout.split("next, try")[1].splitlines()[1:]
    release = next(line.split()[2] for line in suggested if " restore " in line)
    for line in suggested:
        generic = line.strip().replace(release, "tiny-mlp-$(date -u +%F)")
        assert any(c.split("#")[0].split("&&")[0].strip() == generic for c in commands), (generic, commands)
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode == 0, f"README: $ {command}\n{result.stdout}{result.stderr}"


def test_diagrams_are_rendered_from_their_sources() -> None:
    """Every ``docs/diagrams/*.mmd`` has its SVG, rendered from the source as it is now, and a page shows it."""
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from render_diagrams import source_digest
    finally:
        sys.path.pop(0)
    sources = sorted((DOCS / "diagrams").glob("*.mmd"))
    assert sources
    pages = "\n".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))
    for mmd in sources:
        svg = mmd.with_suffix(".svg")
        assert svg.is_file(), f"{svg.name} is missing: run python docs/_ext/render_diagrams.py"
        stamp = re.search(r"sha256 ([0-9a-f]{64})", svg.read_text(encoding="utf-8")[:400])
        assert stamp and stamp.group(1) == source_digest(mmd.read_text(encoding="utf-8")), (
            f"{svg.name} was drawn from another {mmd.name}: run python docs/_ext/render_diagrams.py"
        )
        assert f"diagrams/{svg.name}" in pages, f"no page shows {svg.name}"
    assert "```mermaid" not in pages, "a Mermaid block would load Mermaid from a CDN: render it to SVG instead"
