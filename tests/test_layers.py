"""The layer rule of docs/concepts/architecture.md, checked on every module's source (no import is executed).

Each layer imports only the layers before it: errors and settings → model → state → storage → store → lineage →
interop → features (restore, diff, training, dcp, plot, testing) → integrations → ui → cli → the ``ckpt`` root.
Every import counts: at module level, inside functions and under ``TYPE_CHECKING``. A second rule: a module never
imports another package's ``_private`` name (module or attribute); a package's ``__init__`` is its interface.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ckpt"

#: Layer of each top-level part of the package, lowest first (docs/concepts/architecture.md draws it).
LAYERS: dict[str, int] = {
    "ckpt.errors": 0,
    "ckpt.settings": 0,
    "ckpt._version": 0,
    "ckpt._extras": 0,
    "ckpt.model": 1,
    "ckpt.state": 2,
    "ckpt.storage": 3,
    "ckpt.store": 4,
    "ckpt.lineage": 5,
    "ckpt.interop": 6,
    "ckpt._restore": 7,
    "ckpt.diff": 7,
    "ckpt.training": 7,
    "ckpt.dcp": 7,
    "ckpt.plot": 7,
    "ckpt.testing": 7,
    "ckpt.integrations": 8,
    "ckpt.ui": 9,
    "ckpt.cli": 10,
    "ckpt.__main__": 11,
    "ckpt": 11,
}


def _layer(module: str) -> tuple[str, int]:
    """The part of the package that ``module`` belongs to, and its layer."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in LAYERS:
            return head, LAYERS[head]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/concepts/architecture.md")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ["ckpt", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every import in the file, relative ones resolved."""
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, None) for alias in node.names if alias.name.split(".")[0] == "ckpt"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(module, path).split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "ckpt":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # `from ckpt.store import _layout` imports a module
                    out.append((node.lineno, sub, None))
                else:
                    out.append((node.lineno, target, alias.name))
    return out


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module: str) -> None:
    path = MODULES[module]
    part, rank = _layer(module)
    upward = []
    for line, target, _name in _imports(module, path):
        their_part, their_rank = _layer(target)
        if their_rank > rank:
            upward.append(f"{path.name}:{line} imports {target} ({their_part}, layer {their_rank} > {rank})")
    assert not upward, f"{module} ({part}, layer {rank}) imports upward:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_other_package_private_names(module: str) -> None:
    path = MODULES[module]
    home = _package(module, path)
    found = []
    for line, target, name in _imports(module, path):
        private = [p for p in target.split(".")[1:] if p.startswith("_") and not p.startswith("__")]
        owner = target
        if private:  # an internal module: only its own package (and the packages inside it) may import it
            owner = target.split("." + private[0])[0]
        elif name is not None and name.startswith("_") and not name.startswith("__"):
            owner = target if (MODULES.get(target, Path()).name == "__init__.py") else target.rpartition(".")[0]
        else:
            continue
        if not (home == owner or home.startswith(owner + ".")):
            found.append(f"{path.name}:{line} imports {target}{'.' + name if name else ''}")
    assert not found, f"{module} reaches into another package's internals:\n" + "\n".join(found)
