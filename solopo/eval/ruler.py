"""RULER-style QA files: questions over a long context of documents, one subset per file.

The layout accepted, one JSON object a line::

    {"input": "QUESTION", "context": "THE LONG CONTEXT", "answers": ["GOLD", ...], "index": 0}

("outputs" instead of "answers", as RULER names its gold answers, works too; "index" or "_id" is optional). A file is
a subset named by its stem (qa_1_4096.jsonl -> qa_1_4096), so one folder of files gives a table per task and
length. Prompts fill ``template`` (with {context} and {input}); answers are scored by eval.scorer (sub-EM by default,
RULER's string match of a gold answer inside the prediction, after the answer normalisation), x 100 per subset.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from solopo.eval.longbench import Subset, check_template, read_questions
from solopo.records import DataFileError
from solopo.scoring import Scorer
from solopo.settings.fields import number, refuse


@dataclass(frozen=True)
class RulerQA:
    """``path``: a .jsonl file or a folder of them; ``template``: the prompt (conf/eval/ruler.yaml); answers of up to
    ``max_new_tokens``; ``max_prompt_tokens`` and ``n_items`` as for LongBench (solopo.eval.longbench)."""

    path: str
    template: str
    max_new_tokens: int = 32
    max_prompt_tokens: int | None = None
    n_items: int | None = None

    def __post_init__(self) -> None:
        refuse(check_template("template", self.template)
               + number("max_new_tokens", self.max_new_tokens, 1, integer=True)
               + number("max_prompt_tokens", self.max_prompt_tokens, 1, integer=True, optional=True)
               + number("n_items", self.n_items, 1, integer=True, optional=True))

    def files(self) -> list[str]:
        files = sorted(glob.glob(os.path.join(self.path, "*.jsonl"))) if os.path.isdir(self.path) else [self.path]
        if not files:
            raise DataFileError(f"{self.path}: no .jsonl files in this folder (eval.benchmark.path)")
        return files

    def load(self) -> list[Subset]:
        """A subset per file, read before any model loads: a missing file or a bad record is one line."""
        return [Subset(os.path.basename(path).removesuffix(".jsonl"), self.template, self.max_new_tokens,
                       read_questions(path, self.n_items, ("answers", "outputs")))
                for path in self.files()]

    def scorer(self, configured: Scorer) -> Scorer:
        return configured

