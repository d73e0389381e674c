"""MkDocs hooks of this site (``hooks:`` in mkdocs.yml).

- Google-style ``Example:`` sections of docstrings are read as ``Examples:`` sections (griffe's name for them),
  so that mkdocstrings renders their ``>>>`` lines as highlighted Python sessions, doctest flags trimmed,
  instead of an admonition of Markdown quotes. Done by ``ExampleSections``, a griffe extension named in the
  mkdocstrings options.
- The command-line reference (mkdocs-click) gets each command's ``Examples:`` as a code block: click's ``\\b``
  paragraphs keep their lines in a terminal, and a Markdown paragraph would join them. Done by a Markdown
  preprocessor added in ``on_config``, which runs after mkdocs-click has written the commands' help.
"""

from __future__ import annotations

import re
from typing import Any

import griffe
from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Read ``Example:`` docstring sections as ``Examples:`` sections (code, with doctest flags trimmed)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE_HEADING.sub(r"\1Examples:", obj.docstring.value)


class _CommandExamples(Preprocessor):
    """``Examples:`` followed by two-space-indented ``ckpt …`` lines (click's help) → a console code block."""

    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            j = i + 1
            while j < len(lines) and lines[j].startswith("  ckpt "):
                j += 1
            if line.strip() == "Examples:" and j > i + 1:
                out += ["**Examples:**", "", "```console"]
                out += [f"$ {example.strip()}" for example in lines[i + 1 : j]]
                out += ["```", ""]
                i = j
                continue
            out.append(line)
            i += 1
        return out


class _CommandExamplesExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        # priority 140: after mkdocs-click writes the commands' help (141), before fences become code (25)
        md.preprocessors.register(_CommandExamples(md), "ckpt_command_examples", 140)


def on_config(config: Any) -> Any:
    """Add the Markdown preprocessor for the command-line reference."""
    config.markdown_extensions.append(_CommandExamplesExtension())
    return config
