"""The public surface: exactly ``ckpt.__all__`` (+ documented submodules), each with a docstring."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import ckpt
import ckpt.dcp
import ckpt.diff
import ckpt.diffusers_lora
import ckpt.diffusion
import ckpt.errors
import ckpt.hf
import ckpt.model_card
import ckpt.retention
import ckpt.storage
import ckpt.testing

DOCUMENTED = [
    ckpt,
    ckpt.errors,
    ckpt.storage,
    ckpt.retention,
    ckpt.testing,
    ckpt.hf,
    ckpt.diff,
    ckpt.dcp,
    ckpt.diffusion,
    ckpt.diffusers_lora,
    ckpt.model_card,
]


def test_all_is_sorted_and_complete() -> None:
    for module in DOCUMENTED:
        names = [n for n in module.__all__ if n != "__version__"]
        isort_style = sorted(names, key=lambda n: (not n.isupper(), not n[:1].isupper(), n))
        assert names in (sorted(names), isort_style), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name} is in __all__ but missing"
    public = {n for n in dir(ckpt) if not n.startswith("_")}
    submodules = {n for n in public if inspect.ismodule(getattr(ckpt, n))}
    assert public - submodules - {"annotations", "Any"} <= set(ckpt.__all__)


def test_every_public_name_has_a_docstring() -> None:
    for module in DOCUMENTED:
        for name in module.__all__:
            obj = getattr(module, name)
            if name.startswith("__") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not callable(member):
                        continue
                    assert inspect.getdoc(member), f"{module.__name__}.{name}.{attr} has no docstring"


def test_reexports_claim_the_ckpt_module() -> None:
    for name in ("Store", "Snapshot", "open", "init", "restore"):
        assert getattr(ckpt, name).__module__ == "ckpt"


def test_errors_share_one_root() -> None:
    for name in ckpt.errors.__all__:
        assert issubclass(getattr(ckpt.errors, name), ckpt.CkptError)
    assert issubclass(ckpt.StoreNotFoundError, FileNotFoundError)
    assert not issubclass(ckpt.RevisionNotFoundError, KeyError)


def test_library_and_cli_run_without_torch(tmp_path) -> None:
    """Everything but tensor math works with torch impossible to import (numpy arrays stand in)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import ckpt
        from ckpt.cli import main
        store = ckpt.init({str(tmp_path / "s")!r}, chunk_size=4096)
        a = store.save({{"w": np.arange(5000, dtype=np.float32), "step": 1}}, model="m", metrics={{"val_loss": 1.0}})
        store.save({{"w": np.arange(5000, dtype=np.float32) + 1, "step": 2}})
        assert (store.load("main~1")["w"] == np.arange(5000, dtype=np.float32)).all()
        assert store.verify().ok
        store.freeze("main")
        for argv in (["log"], ["ls", "--json"], ["verify"], ["gc", "--dry-run"]):
            try:
                main(["--store", {str(tmp_path / "s")!r}, *argv])
            except SystemExit as e:
                assert not e.code, (argv, e.code)
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("OK")
