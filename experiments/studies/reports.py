"""The command-line part of a study's report.py, which the GPU studies share: the run directories, --out and --readme
options, and the order of work: read every input first (a missing or malformed one stops with one line naming it,
exit status 2, before anything is written), write the report, then rewrite the page's generated blocks.

What a report says (its tables, claims, verdicts and plots) belongs to its study.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from solopo.report.tables import fill_blocks

Inputs = TypeVar("Inputs")


def add_options(parser: argparse.ArgumentParser, out: str) -> None:
    """dirs, --out (``out`` says its default) and --readme (repeatable)."""
    parser.add_argument("dirs", nargs="+", type=Path, help="the study's run directories, or a folder of them")
    parser.add_argument("--out", type=Path, help=f"where the report goes (default: {out})")
    parser.add_argument("--readme", type=Path, action="append", default=[],
                        help="a page whose generated blocks are rewritten (again for each further page: the study's "
                             "README, the repository's, each with the blocks it quotes)")


def generate(readmes: Sequence[Path], read: Callable[[], Inputs], blocks: Callable[[Inputs], dict[str, list[str]]],
             write: Callable[[Inputs], Iterable[Path]]) -> None:
    """``read()`` the inputs and fill each page's `<!-- solopo.report:NAME -->` blocks with ``blocks(inputs)``, then
    ``write(inputs)`` the report, printing each file it wrote, then the pages."""
    try:
        inputs = read()
        made = blocks(inputs) if readmes else {}
        pages = [(readme, fill_blocks(readme.read_text(), made, str(readme))) for readme in readmes]
    except (OSError, ValueError) as err:  # a missing or malformed input: one line naming it
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in write(inputs):
        print(path)
    for readme, page in pages:
        readme.write_text(page)
        print(readme)
