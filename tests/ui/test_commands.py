"""``ckpt ui`` as a real process (loopback by default, a non-loopback address only with --host, Ctrl-C stops it),
the missing-extra hints, and the rule that the core and the CLI never import the web stack or matplotlib."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.errors import CkptError
from ckpt.extras import DISTRIBUTION, install_hint

from .conftest import get, get_json

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_")}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return out


@pytest.fixture
def small(tmp_path: Path) -> str:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    for step in (1, 2, 3):
        store.save({"w": np.full(8, step, np.float32)}, step=step, metrics={"val_loss": 1.0 / step})
    return store.url


def start(*args: str) -> tuple[subprocess.Popen[str], str, str]:
    """``python -m ckpt ARGS``; waits for the line that gives the URL (an event on the pipe, not a sleep)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckpt", *args], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env()
    )
    assert proc.stderr is not None
    said = []
    while True:
        line = proc.stderr.readline()
        if not line:
            proc.wait(timeout=60)
            pytest.fail(f"ckpt ui exited ({proc.returncode}) before serving: {''.join(said)}")
        said.append(line)
        if line.startswith("ckpt ui: ") and " at http://" in line:
            return proc, line.split(" at ", 1)[1].split(" ", 1)[0], "".join(said)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.fixture
def cleanup() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_ui_serves_on_loopback_and_stops_on_ctrl_c(small: str, cleanup: list[subprocess.Popen[str]]) -> None:
    pytest.importorskip("uvicorn")
    proc, url, said = start("--store", small, "ui", "--port", "0")
    cleanup.append(proc)
    assert url.startswith("http://127.0.0.1:") and "warning" not in said
    assert f"ckpt ui: {small} at {url} (read-only; Ctrl-C to stop)" in said
    assert [s["step"] for s in get_json(url + "api/run/main")["saves"]] == [1, 2, 3]
    code, err = stop(proc)
    assert code == 0 and "ckpt ui: stopped" in err


def test_ui_store_option_after_the_command(small: str, cleanup: list[subprocess.Popen[str]]) -> None:
    pytest.importorskip("uvicorn")
    proc, url, _ = start("ui", "--store", small, "--port", "0")
    cleanup.append(proc)
    assert get_json(url + "api/store")["url"] == small
    assert stop(proc)[0] == 0


def test_non_loopback_only_when_asked_explicitly(small: str, cleanup: list[subprocess.Popen[str]]) -> None:
    pytest.importorskip("uvicorn")
    from ckpt.ui.server import bind, is_loopback

    with pytest.raises(CkptError, match=r"refusing to serve on 0\.0\.0\.0") as e:
        bind("0.0.0.0", 0)
    assert e.value.cli_hint and "--host 0.0.0.0" in e.value.cli_hint
    assert e.value.hint and "allow_remote=True" in e.value.hint
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.9")
    assert not is_loopback("0.0.0.0")

    proc, url, said = start("--store", small, "ui", "--host", "0.0.0.0", "--port", "0")
    cleanup.append(proc)
    assert "warning: serving on 0.0.0.0, which is not a loopback address" in said
    port = url.rstrip("/").rsplit(":", 1)[1]
    # exposed on purpose: any Host header is answered
    assert get(f"http://127.0.0.1:{port}/api/store", headers={"Host": f"box.example:{port}"})[0] == 200
    assert stop(proc)[0] == 0


def test_busy_port_is_a_clear_error(small: str) -> None:
    pytest.importorskip("uvicorn")
    from ckpt.ui.server import bind

    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(CkptError, match=f"port {taken.port} on 127.0.0.1 is in use") as e:
            bind("127.0.0.1", taken.port)
        assert e.value.cli_hint and "--port 0" in e.value.cli_hint
        assert e.value.hint and "port=0" in e.value.hint
    finally:
        taken.socket.close()


def _run_hidden(modules: list[str], code: str) -> subprocess.CompletedProcess[str]:
    hide = "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    script = "import sys\n" + hide + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env(), timeout=120)


def test_missing_extras_say_what_to_install(small: str, tmp_path: Path) -> None:
    out = _run_hidden(["starlette"], f"from ckpt.cli import main; main(['--store', {small!r}, 'ui'])")
    assert out.returncode == 1
    assert "error: `ckpt ui` needs starlette, which is not installed" in out.stderr
    assert f"hint: {install_hint('ui')}" in out.stderr and "pip install 'ckpt-store[ui]'" in out.stderr
    png = str(tmp_path / "x.png")
    out = _run_hidden(
        ["matplotlib"], f"from ckpt.cli import main; main(['--store', {small!r}, 'plot', 'val_loss', '-o', {png!r}])"
    )
    assert out.returncode == 1
    assert "error: plots need matplotlib" in out.stderr and "hint: pip install 'ckpt-store[plot]'" in out.stderr
    assert not Path(png).exists()


def test_core_and_cli_do_not_import_the_optional_stack() -> None:
    code = """
        import sys, json
        import ckpt, ckpt.cli, ckpt.cli.app, ckpt.plot, ckpt.ui, ckpt.diff
        from ckpt.cli import cli
        cli.commands["ui"], cli.commands["plot"]
        print(json.dumps(sorted(m for m in ("starlette", "uvicorn", "matplotlib", "playwright") if m in sys.modules)))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_distribution_name_matches_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == DISTRIBUTION
    extras = project["project"]["optional-dependencies"]
    assert {"starlette", "uvicorn"} <= {d.split(">")[0].split("=")[0] for d in extras["ui"]}
    assert any(d.startswith("matplotlib") for d in extras["plot"])
    assert install_hint("ui") == f"pip install '{DISTRIBUTION}[ui]'"


def test_open_hands_the_url_to_the_browser(
    small: str, tmp_path: Path, cleanup: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--open`` calls the user's browser ($BROWSER, as Python's ``webbrowser`` reads it) with the page's URL."""
    pytest.importorskip("uvicorn")
    opened = tmp_path / "opened"
    fake = tmp_path / "browser.py"
    fake.write_text(f"import sys, pathlib\npathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n")
    monkeypatch.setenv("BROWSER", f"{sys.executable} {fake} %s")  # webbrowser waits for this command to end
    proc, url, _ = start("--store", small, "ui", "--port", "0", "--open")
    cleanup.append(proc)
    assert get_json(url + "api/store")["url"] == small
    assert stop(proc)[0] == 0
    assert opened.read_text() == url
