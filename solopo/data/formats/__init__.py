"""Loaders for user data files, one module per format, each with
``load(path, n_val=0, seed=0, n_train=None) -> Splits``:

- musique:   MuSiQue jsonl (the paper's training data)
- hotpotqa:  HotpotQA JSON list
- twowiki:   2WikiMultihopQA JSON list (the HotpotQA layout)
- longbench: LongBench jsonl (whole contexts, no separated evidence: QAItem.context)
- pairs:     ready-made preference pairs: solopo's schemas A, A', B and TRL's and LLaMA-Factory's formats (its table),
             in any container that ``source`` reads (jsonl, JSON, parquet, CSV, Arrow, save_to_disk and dataset
             folders); ``trl``, ``llama_factory`` and ``chat`` turn the ecosystem's records into its prompts

Validation takes the last n_val items of a seeded shuffle, so it does not move when ``n_train``
caps the training items. A malformed file, or one that gives two records the same id, raises
DataFileError naming the file, the line (jsonl), record (JSON list) or row (other containers), and the field.
"""
from solopo.records import DataFileError

__all__ = ["DataFileError"]
