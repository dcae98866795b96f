"""The command-line part of a study's report.py, which the GPU studies share: the run directories, --out and --readme
options, and the order of work: read every input first (a missing or malformed one stops with one line naming it,
exit status 2, before anything is written), write the report, then rewrite the page's generated blocks.

What a report says (its tables, claims, verdicts and plots) belongs to its study.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from solopo.report.tables import fill_blocks

Inputs = TypeVar("Inputs")


def add_options(parser: argparse.ArgumentParser, out: str) -> None:
    """dirs, --out (``out`` says its default) and --readme."""
    parser.add_argument("dirs", nargs="+", type=Path, help="the study's run directories, or a folder of them")
    parser.add_argument("--out", type=Path, help=f"where the report goes (default: {out})")
    parser.add_argument("--readme", type=Path, help="a page whose generated blocks are rewritten")


def generate(readme: Path | None, read: Callable[[], Inputs], blocks: Callable[[Inputs], dict[str, list[str]]],
             write: Callable[[Inputs], Iterable[Path]]) -> None:
    """``read()`` the inputs and fill the page's `<!-- solopo.report:NAME -->` blocks with ``blocks(inputs)``, then
    ``write(inputs)`` the report, printing each file it wrote, then the page."""
    try:
        inputs = read()
        page = fill_blocks(readme.read_text(), blocks(inputs), str(readme)) if readme else None
    except (OSError, ValueError) as err:  # a missing or malformed input: one line naming it
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in write(inputs):
        print(path)
    if page is not None:
        readme.write_text(page)
        print(readme)
