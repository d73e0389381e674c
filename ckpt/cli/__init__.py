"""The ``ckpt`` command line: parses arguments, calls the Python API, formats results.

``main()`` is the console script. Errors are handled by the group itself (``ckpt.cli._app.CkptGroup``), so
that ``CliRunner`` and the installed program behave the same: a ``CkptError`` prints ``error: …`` and its
hint and exits 1, a usage error exits 2, ``--debug`` (or ``CKPT_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

from ckpt.cli._app import cli

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); exits with the command's status.

    Example:
        >>> main(["--help"])  # doctest: +SKIP
    """
    cli.main(args=argv, prog_name="ckpt")
