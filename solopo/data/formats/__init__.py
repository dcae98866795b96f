"""Loaders for user data files, one module per format, each with
``load(path, n_val=0, seed=0, n_train=None) -> Splits``:

- musique:   MuSiQue jsonl (the paper's training data)
- hotpotqa:  HotpotQA JSON list
- twowiki:   2WikiMultihopQA JSON list (the HotpotQA layout)
- longbench: LongBench jsonl (whole contexts, no separated evidence: QAItem.context)
- pairs:     ready-made preference pairs, jsonl (three schemas, see its docstring)

Validation takes the last n_val items of a seeded shuffle, so it does not move when ``n_train``
caps the training items. A malformed file, or one that gives two records the same id, raises
DataFileError naming the file, the line (jsonl) or record (JSON list), and the field.
"""
from solopo.data.formats.errors import DataFileError

__all__ = ["DataFileError"]
