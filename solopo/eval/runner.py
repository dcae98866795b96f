"""Evaluate one or more checkpoints of a run and write the table, the json and the PNG plots.

The eval config group describes one evaluation, which ``make_evaluation`` builds for both entry points (a training
run's base and trained model, `python -m solopo.evaluate`'s one model): the held-out questions across context lengths
(``Evaluation``), or with eval.benchmark a benchmark of fixed long contexts scored per subset
(``BenchmarkEvaluation``). Each writes, summarises and logs its own tables (``RunEvaluation``).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

from solopo.cache import DiskCache, digest
from solopo.data.schema import QAItem
from solopo.data.tokenize import token_counter
from solopo.eval.longbench import Subset, format_benchmark, run_benchmark
from solopo.eval.longctx import SCHEDULE, EvalSettings, changes, evaluate, format_table
from solopo.report.stats import Change
from solopo.scoring import points, settings_identity
from solopo.report.plots import accuracy_vs_length, by_length, depth_heatmap, score_vs_step

log = logging.getLogger(__name__)


class NoHeldOutQuestions(ValueError):
    """Data without questions to evaluate on (ready-made pairs, or a file with data.source.n_val=0): what to do instead
    is the caller's to say."""


def eval_items(splits, n_items: int) -> tuple[list[QAItem], tuple[str, ...]]:
    """Held-out questions and the passages their long contexts draw from: the test split and its own
    world when the source has one (built-in QA), else the validation split, whose size data.source.n_val sets (so
    eval.n_items above it evaluates fewer, said in the log)."""
    items, pool = (splits.test, splits.test_distractors) if splits.test else (splits.val, splits.val_distractors)
    first = (items or splits.train or [None])[0]  # what the data holds, whether or not any of it was held out
    if not isinstance(first, QAItem) or not (first.relevant or first.context):
        raise NoHeldOutQuestions("evaluation needs held-out questions with their evidence or context (data=qa, "
                                 "musique, hotpotqa, twowiki, longbench, or data=pairs on passages, schema A'); "
                                 "ready-made pairs have none")
    if not items:
        raise NoHeldOutQuestions("data.source.n_val=0 holds no questions out of training, and the held-out questions "
                                 "of a data file are its validation split; set data.source.n_val to how many to hold out")
    if len(items) < n_items:
        held_out = "the test split" if splits.test else f"the validation split, data.source.n_val={len(items)}"
        log.warning("eval.n_items=%d: the held-out questions are %s; evaluating those %d", n_items, held_out,
                    len(items))
    return list(items[:n_items]), tuple(pool or splits.distractors)


def evaluate_model(model, tokenizer, items: Sequence[QAItem], pool: Sequence[str], settings: EvalSettings,
                   count_tokens: Callable[[str], int], max_length: int, name: str,
                   cache: DiskCache | None = None, model_id: str | None = None,
                   engine_args: dict | None = None) -> dict:
    """The evaluation table of ``model``; with a cache and a model_id (the weights as loaded, not as trained), the
    table is read from or written to the cache, so every run of a sweep shares the base model's evaluation.
    ``engine_args`` (vllm.LLM arguments such as its memory share) are not part of the cache key; the engine itself
    is, with the rest of the settings: greedy answers may differ between engines, whose kernels round differently."""
    def run() -> dict:
        return evaluate(model, tokenizer, items, pool, settings, count_tokens, max_length, desc=f"evaluating {name}",
                        engine_args=engine_args)

    if cache is None or model_id is None:
        return run()
    return cache.get_or_compute(cache_key(model_id, items, pool, settings, max_length), run,
                                check=lambda table: check_table(table, settings), desc=f"evaluation of {name}",
                                meta={"model": model_id, "items": len(items), "settings": repr(settings)})


def check_table(table: dict, settings: EvalSettings) -> dict:
    """``table``, when it is a whole evaluation table for these settings, else ValueError (a cache entry whose digest
    holds but that another version of the code wrote must not stand in for one)."""
    lengths = {str(length) for length in settings.lengths}  # those over the model's limit are left out of a table
    found = set(table["by_length"])
    if not found or not found <= lengths or not isinstance(table["average_long"], (int, float)):
        raise ValueError(f"lengths {sorted(found)}, expected some of {sorted(lengths)}")
    if len(table["cells"]) < len(found):
        raise ValueError(f"{len(table['cells'])} cells for {len(found)} lengths")
    if not {"scores", "n_by_length", "ci95_by_length", "ci95_long"} <= table.keys():
        raise ValueError("no per-case scores or intervals (written by an older version)")
    return table


def cache_key(model_id: str, items: Sequence[QAItem], pool: Sequence[str], settings: EvalSettings,
              max_length: int) -> str:
    """What a table depends on: the weights, each item's content (id, question, answers, passages), the passages that
    fill the long contexts, the model's length limit and every setting (template, engine and scorer included)."""
    answers = {k: v for k, v in settings_identity(settings).items() if k not in SCHEDULE}
    return digest("eval", model_id, answers, max_length, list(pool),
                  *(dataclasses.asdict(item) for item in items))


@dataclass
class Evaluation:
    """One evaluation setup of a run (questions, contexts, settings), applied to each checkpoint."""

    tokenizer: object
    items: list[QAItem]
    pool: tuple[str, ...]
    settings: EvalSettings
    max_length: int
    cache: DiskCache | None = None
    model_id: str | None = None  # identifies the weights as loaded: their evaluation can be cached
    engine_args: dict = field(default_factory=dict)  # further vllm.LLM arguments (settings.engine=vllm)

    def __post_init__(self) -> None:
        self.count_tokens = token_counter(self.tokenizer)

    results_key: ClassVar[str] = "eval"
    heading: ClassVar[str] = "long-context QA, sub-EM (%)"

    def __call__(self, model, name: str, as_loaded: bool = False) -> dict:
        """The table of ``model``; ``as_loaded`` marks untrained weights, whose table is cached."""
        return evaluate_model(model, self.tokenizer, self.items, self.pool, self.settings, self.count_tokens,
                              self.max_length, name, cache=self.cache if as_loaded else None,
                              model_id=self.model_id, engine_args=self.engine_args)

    def outputs(self, tables: dict[str, dict], out_dir: Path, curve: dict | None = None) -> dict:
        return write_outputs(tables, out_dir, curve)

    def summary(self, tables: dict[str, dict]) -> dict[str, float]:
        return summary_entries(tables)

    def summary_keys(self) -> set[str]:
        return summary_keys(("avg_long", "average"), ("avg_long", "avg_long_low", "avg_long_high"))

    def log(self, logger, tables: dict[str, dict], plots: list[str]) -> None:
        log_to(logger, tables, plots)


@dataclass
class BenchmarkEvaluation:
    """eval.benchmark (solopo.eval.longbench.LongBench, solopo.eval.ruler.RulerQA) on each checkpoint of a run: its
    score per subset and their average (x 100), the benchmark's own metric; the untrained model's table is cached as
    Evaluation's is."""

    benchmark: Any
    subsets: list[Subset]
    tokenizer: object
    settings: EvalSettings
    max_length: int
    cache: DiskCache | None = None
    model_id: str | None = None
    engine_args: dict = field(default_factory=dict)
    results_key: ClassVar[str] = "benchmark"

    @property
    def heading(self) -> str:
        return f"{type(self.benchmark).__name__}, {type(self.benchmark.scorer(self.settings.scorer)).__name__} x 100"

    def __call__(self, model, name: str, as_loaded: bool = False) -> dict:
        def run() -> dict:
            return run_benchmark(self.benchmark, self.subsets, model, self.tokenizer, self.settings, self.max_length,
                                 self.engine_args)

        if not (as_loaded and self.cache is not None and self.model_id is not None):
            return run()
        return self.cache.get_or_compute(self.cache_key(), run, check=self.check_table,
                                         desc=f"benchmark evaluation of {name}",
                                         meta={"model": self.model_id, "benchmark": type(self.benchmark).__name__})

    def cache_key(self) -> str:
        """The weights, every setting an answer depends on, the benchmark's options and each question's content (where
        the files lie is not part of it)."""
        answers = {k: v for k, v in settings_identity(self.settings).items() if k not in SCHEDULE}
        options = {k: v for k, v in dataclasses.asdict(self.benchmark).items() if k != "path"}
        return digest("benchmark", self.model_id, answers, self.max_length, type(self.benchmark).__name__, options,
                      *((subset.name, dataclasses.asdict(question)) for subset in self.subsets
                        for question in subset.questions))

    def check_table(self, table: dict) -> dict:
        if set(table.get("subsets", {})) != {subset.name for subset in self.subsets} or "average" not in table:
            raise ValueError(f"subsets {sorted(table.get('subsets', {}))}, expected this benchmark's")
        return table

    def outputs(self, tables: dict[str, dict], out_dir: Path, curve: dict | None = None) -> dict:
        """The table as markdown (a row per checkpoint, a column per subset); no plots."""
        return {"markdown": format_benchmark(tables), "plots": [], "changes": {}}

    def summary(self, tables: dict[str, dict]) -> dict[str, float]:
        """eval/<checkpoint>/average and eval/<checkpoint>/<subset> (x 100), and with both checkpoints
        eval/gain/average."""
        entries = {}
        for name, table in tables.items():
            entries[metric_key(name, "average")] = table["average"]
            entries.update({metric_key(name, subset): row["score"] for subset, row in table["subsets"].items()})
        if set(CHECKPOINTS) <= tables.keys():
            entries[metric_key("gain", "average")] = tables["trained"]["average"] - tables["base"]["average"]
        return entries

    def summary_keys(self) -> set[str]:
        return summary_keys(("average", *(subset.name for subset in self.subsets)), ("average",))

    def log(self, logger, tables: dict[str, dict], plots: list[str]) -> None:
        if not logger:
            return
        logger.log_metrics(self.summary(tables))
        if hasattr(logger, "log_table"):
            names = [subset.name for subset in self.subsets]
            logger.log_table(key="eval/benchmark", columns=["model", *names, "avg"],
                             data=[[model, *(t["subsets"][n]["score"] for n in names), t["average"]]
                                   for model, t in tables.items()])
            logger.experiment.summary.update(self.summary(tables))
        logger.save()


class RunEvaluation(Protocol):
    """What a run does with its evaluation: a table per checkpoint, then their outputs, summary and logging."""

    results_key: str  # where results.json keeps the tables
    heading: str

    def __call__(self, model, name: str, as_loaded: bool = False) -> dict: ...

    def outputs(self, tables: dict[str, dict], out_dir: Path, curve: dict | None = None) -> dict: ...

    def summary(self, tables: dict[str, dict]) -> dict[str, float]: ...

    def summary_keys(self) -> set[str]: ...  # those summary() can give (optimized_metric's check)

    def log(self, logger, tables: dict[str, dict], plots: list[str]) -> None: ...


def make_evaluation(tokenizer, settings: EvalSettings, max_length: int, benchmark: Any = None, splits: Any = None,
                    n_items: int = 0, cache: DiskCache | None = None, model_id: str | None = None,
                    engine_args: dict | None = None) -> RunEvaluation:
    """The evaluation the eval group describes: ``benchmark``'s subsets, their files read here (a missing one or a bad
    record: DataFileError), or without one the first ``n_items`` held-out questions of ``splits`` (ValueError when the
    data has none). Build it before the model loads, so that either stops the run first."""
    if benchmark is not None:
        return BenchmarkEvaluation(benchmark, benchmark.load(), tokenizer, settings, max_length, cache, model_id,
                                   dict(engine_args or {}))
    items, pool = eval_items(splits, n_items)
    return Evaluation(tokenizer, items, pool, settings, max_length, cache, model_id, dict(engine_args or {}))


CHECKPOINTS = ("base", "trained")  # a training run evaluates the model as loaded, then as trained


def metric_key(checkpoint: str, name: str) -> str:
    """A summary entry's key: eval/<checkpoint>/<name>, or eval/gain/<name> for what training changed."""
    return f"eval/{checkpoint}/{name}"


def summary_entries(tables: dict[str, dict]) -> dict[str, float]:
    """Headline numbers for a dashboard's table of runs, in points (solopo.scoring.points, as a benchmark's are):
    each checkpoint's mean sub-EM over the long contexts and over every case, and, with both checkpoints, what
    training changed on the long contexts."""
    entries = {}
    for name, table in tables.items():
        entries.update({metric_key(name, "avg_long"): points(table["average_long"]),
                        metric_key(name, "average"): points(table["average"])})
    if set(CHECKPOINTS) <= tables.keys():
        entries[metric_key("gain", "avg_long")] = points(tables["trained"]["average_long"]
                                                         - tables["base"]["average_long"])
        if (found := changes(tables["base"], tables["trained"])) and "avg_long" in found:
            change = found["avg_long"]
            entries.update({metric_key("gain", "avg_long_low"): points(change.low),
                            metric_key("gain", "avg_long_high"): points(change.high)})
    return entries


def summary_keys(names: Sequence[str], gains: Sequence[str]) -> set[str]:
    """The keys a summary of both checkpoints can hold: ``names`` of each, ``gains`` of what training changed."""
    return {metric_key(c, n) for c in CHECKPOINTS for n in names} | {metric_key("gain", n) for n in gains}


def log_to(logger, tables: dict[str, dict], plots: list[str]) -> None:
    """Scores as metrics (every logger), and the table, plots and headline numbers (the run's summary) where
    the logger shows them (wandb)."""
    if not logger:
        return
    logger.log_metrics({**{f"eval/{name}/sub_em@{length}": points(score) for name, table in tables.items()
                           for length, score in table["by_length"].items()},
                        **summary_entries(tables)})  # the averages under results.json's names, in every logger
    if hasattr(logger, "log_table"):
        lengths = [*map(str, next(iter(tables.values()))["by_length"]), "avg long"]
        logger.log_table(key="eval/sub_em_by_length",
                         columns=["model", *(f"{n}{part}" for n in lengths for part in ("", " low", " high", " n"))],
                         data=[[name, *(v for n in lengths for v in _with_interval(t, n))]
                               for name, t in tables.items()])
        for plot in plots:  # one key each: the plots differ in size
            logger.log_image(key=f"eval/{Path(plot).stem}", images=[plot])
        logger.experiment.summary.update(summary_entries(tables))
    logger.save()  # file loggers (CSV) write what they buffered


def _with_interval(table: dict, length: str) -> tuple:
    """(sub-EM, its 95% interval's ends, in points; the number of cases) of one length, or "avg long"."""
    if length == "avg long":
        score, ci95, n = table["average_long"], table["ci95_long"], table["n_long"]
    else:
        score, ci95, n = table["by_length"][length], table["ci95_by_length"][length], table["n_by_length"][length]
    return points(score), points(ci95[0]), points(ci95[1]), n


def write_outputs(tables: dict[str, dict], out_dir: Path, curve: dict | None = None) -> dict:
    """PNG plots beside the run's results: accuracy vs length (a line per checkpoint), a length x depth heatmap per
    checkpoint, and with ``curve`` (EvalDuringTraining.record) sub-EM vs training step. Returns the table as markdown,
    the plot paths and each later checkpoint's change from the first with its 95% interval, in points
    ({"trained - base": {length: {"difference", "low", "high", "n"}}})."""
    lines = {name: by_length(table) for name, table in tables.items()}
    plots = [accuracy_vs_length({"Long-context QA": lines}, out_dir / "eval_accuracy_vs_length.png")]
    for name, table in tables.items():
        if any(c["depth"] != "-" for c in table["cells"]):
            plots.append(depth_heatmap(table, out_dir / f"eval_depth_{name}.png", title=name))
    if curve and curve["points"]:  # evaluation during training (EvalDuringTraining.record)
        by_step = {"sub-EM, long contexts": {p["step"]: p["avg_long"] for p in curve["points"]}}
        plots.append(score_vs_step({"Evaluation during training": by_step}, out_dir / "eval_vs_step.png",
                                   marked=curve.get("best_step")))
    first, *later = tables
    found = {f"{name} - {first}": changes(tables[first], tables[name]) for name in later}
    return {"markdown": format_table(tables), "plots": [str(p) for p in plots],
            "changes": {pair: {key: change_in_points(c) for key, c in by.items()} for pair, by in found.items() if by}}


def change_in_points(change: Change) -> dict:
    """A Change as results.json's eval_changes holds it: the difference and its interval in points, as eval_summary."""
    return {"difference": points(change.difference), "low": points(change.low), "high": points(change.high),
            "n": change.n}
