"""The ``ckpt`` commands, one module per family; ``COMMANDS`` lists them in the order ``--help`` shows."""

from __future__ import annotations

import click

from ckpt.cli._commands.history import diff, log, show
from ckpt.cli._commands.maintenance import gc, init, repair, verify
from ckpt.cli._commands.refs import branch, freeze, ls, prune, reflog, reset, tag
from ckpt.cli._commands.transfer import export, import_, restore, sync
from ckpt.cli._commands.ui import plot, ui

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = [
    init,
    log,
    show,
    ls,
    branch,
    reset,
    tag,
    freeze,
    prune,
    reflog,
    restore,
    export,
    import_,
    diff,
    verify,
    repair,
    gc,
    sync,
    ui,
    plot,
]
