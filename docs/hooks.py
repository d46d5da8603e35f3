"""mkdocs hook (``hooks:`` in mkdocs.yml): the command line's ``--help`` texts, generated at build time.

A page line ``<!-- genjax-help: train -->`` becomes a code block holding ``genjax train --help`` as the installed
``genjax.cli`` prints it (``<!-- genjax-help -->`` alone: ``genjax --help``), so the CLI page cannot drift from
the parser. An unknown command fails the build.
"""

from __future__ import annotations

import contextlib
import io
import os
import re

_MARKER = re.compile(r"^<!-- genjax-help(?:: *(?P<command>[a-z-]+))? *-->$", re.MULTILINE)
_WIDTH = "100"  # argparse wraps to $COLUMNS; fixed so the page does not depend on the terminal


def help_text(command: str | None) -> str:
    """``genjax [command] --help`` as printed by the parser of :mod:`genjax.cli`."""
    from genjax.cli import build_parser

    argv = [command, "--help"] if command else ["--help"]
    out = io.StringIO()
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            build_parser().parse_args(argv)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    text = out.getvalue().strip()
    if not text.startswith("usage:"):
        raise ValueError(f"genjax {' '.join(argv)} printed no help (unknown command {command!r}?)")
    return text


def on_page_markdown(markdown: str, **kwargs) -> str:
    def replace(match: re.Match) -> str:
        return "```text\n" + help_text(match["command"]) + "\n```"

    return _MARKER.sub(replace, markdown)
