"""Looking instead of reading: ``ui`` (the local web app) and ``plot`` (a metric as an image).

Both import their optional dependencies (Starlette and uvicorn; matplotlib) only when run, and say what to
install when they are missing.
"""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ckpt.cli._output import echo

if TYPE_CHECKING:
    from ckpt.cli._context import CliState

__all__ = ["plot", "ui"]


@click.command()
@click.option("--store", "store_url", metavar="URL", help="The store to show (same as the global --store).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on. Anything but a loopback address exposes the store to other machines, "
    "so it is refused unless given here explicitly.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0 picks a free port.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser once it is served.")
@click.pass_context
def ui(ctx: click.Context, store_url: str | None, host: str, port: int, open_browser: bool) -> None:
    """Browse the store in a web browser: family tree, runs, snapshots, diffs (read-only).

    Serves a local web app until Ctrl-C: the family tree of every snapshot (branches, tags, frozen releases,
    pruned saves, relations on the edges; zoom and pan, click a node), a run view per branch (each metric over
    steps, train and validation together, the best save marked), a page per snapshot, and the per-layer
    relative change between two revisions. Deep links: /snap/REV, /run/BRANCH, /diff/A..B; the same data is
    JSON under /api/. Nothing is ever written to the store. Needs the ui extra (Starlette, uvicorn).

    \b
    Examples:
      ckpt ui
      ckpt ui --store s3://bucket/models --open
      ckpt ui --port 0
      ckpt ui --host 0.0.0.0      # on purpose: other machines can read the store
    """
    from ckpt.ui import bind, require, serve

    require()

    state: CliState = ctx.obj
    if store_url:
        state.store_url = store_url
    store = state.store()
    explicit = ctx.get_parameter_source("host") is click.core.ParameterSource.COMMANDLINE
    binding = bind(host, port, allow_remote=explicit)
    if not binding.loopback:
        echo(
            f"warning: serving on {host}, which is not a loopback address: anyone who can reach this machine "
            "can read the store's records and tensors' metadata",
            err=True,
        )
    echo(f"ckpt ui: {store.url} at {binding.url} (read-only; Ctrl-C to stop)", err=True)
    if open_browser:
        webbrowser.open(binding.url)
    try:
        serve(store, binding)
    except KeyboardInterrupt:
        echo("ckpt ui: stopped", err=True)


@click.command()
@click.argument("metric")
@click.argument("revs", nargs=-1, metavar="[REV]...")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The image to write: *.png, *.svg or *.pdf.",
)
@click.option("--mode", type=click.Choice(["min", "max"]), help="Which way is better (default: from the name).")
@click.option("--lineage", is_flag=True, help="Follow first parents to the root, not only the run.")
@click.option("--dpi", type=click.IntRange(min=10), default=120, show_default=True, help="Resolution of a PNG.")
@click.pass_obj
def plot(
    state: CliState, metric: str, revs: tuple[str, ...], output: Path, mode: str | None, lineage: bool, dpi: int
) -> None:
    """Draw METRIC over the saves of each REV's run into an image (default: every branch).

    METRIC is a metric name (val_loss) or a group: `loss` draws train_loss and val_loss together. Reads
    snapshot records only. Kept saves are dots, pruned ones hollow, the best save a star. Needs matplotlib
    (the plot extra).

    \b
    Examples:
      ckpt plot val_loss -o val_loss.png
      ckpt plot loss main exp/lr-3e-4 -o loss.svg
    """
    from ckpt.plot import save_plot

    folder = output.parent
    if not folder.is_dir():  # before the store is read and the figure drawn
        from ckpt.errors import CkptError

        what = "is not a folder" if folder.exists() else "does not exist"
        raise CkptError(
            f"cannot write {output}: {folder} {what}",
            cli_hint=f"create the folder first (mkdir -p {folder}), or pass -o a path in an existing folder",
        )
    path = save_plot(
        state.store(),
        metric,
        output,
        list(revs) or None,
        mode=mode,  # type: ignore[arg-type]
        scope="lineage" if lineage else "run",
        dpi=dpi,
    )
    echo(f"wrote {path}")
