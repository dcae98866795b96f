"""optimized_metric, the value a sweeper optimises: read from a run's results, checked against the entries the run
gives before the model loads, NaN on a process without the evaluation."""
import math

import pytest

from solopo.eval.runner import BenchmarkEvaluation, Evaluation, summary_entries
from solopo.run import optimized_value
from solopo.settings.build import ConfigError
from solopo.settings.groups import check_run
from solopo.settings.rules import check_eval_metric


TABLES = {"base": {"average_long": 0.25, "average": 0.5, "scores": []},
          "trained": {"average_long": 0.75, "average": 0.5, "scores": []}}  # no per-case scores: no interval
RESULTS = {"metrics": {"val/loss": 1.25, "val/rewards/accuracies": 0.5}, "eval": TABLES,
           "eval_summary": summary_entries(TABLES)}  # as a run's results.json holds them


@pytest.mark.parametrize("metric, expected", [("val/loss", 1.25), ("eval/trained/avg_long", 75.0),  # points
                                              ("eval/gain/avg_long", 50.0), (None, 75.0)])
def test_optimized_value_reads_the_named_metric(metric, expected):
    assert optimized_value(RESULTS, metric) == expected


def test_optimized_value_of_a_benchmark_run_is_its_trained_average():
    summary = {"eval/base/average": 20.0, "eval/trained/average": 25.0, "eval/trained/hotpotqa": 30.0}
    assert optimized_value({"metrics": RESULTS["metrics"], "eval_summary": summary}, None) == 25.0
    assert optimized_value({"metrics": RESULTS["metrics"], "eval_summary": summary}, "eval/trained/hotpotqa") == 30.0


def test_optimized_value_without_evaluation_is_the_validation_accuracy():
    assert optimized_value({"metrics": RESULTS["metrics"]}, None) == 0.5


def test_an_unknown_optimized_metric_is_a_one_line_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"optimized_metric=val/acc: this run has no such metric; it has .*val/loss"):
        optimized_value(RESULTS, "val/acc")


def test_a_process_without_the_evaluation_results_returns_nan():
    """Ranks other than 0 train and evaluate, but only rank 0 gathers the evaluation into its results."""
    assert math.isnan(optimized_value({"metrics": RESULTS["metrics"]}, "eval/trained/avg_long"))


@pytest.mark.parametrize("value, ok", [(None, True), ("val/loss", True), ("eval/trained/avg_long", True),
                                       ("loss", False), (3, False)])
def test_optimized_metric_is_checked_with_the_run_keys(value, ok):
    problems = [p for p in check_run({"optimized_metric": value}) if p.startswith("optimized_metric")]
    assert not problems if ok else problems


def test_the_entries_a_summary_gives_are_those_the_check_before_training_knows():
    """RunEvaluation.summary_keys, which optimized_metric is checked against before the model loads, holds every key
    summary() gives a run (the long-context QA tables with an interval, a benchmark's subsets)."""
    scores = [["q0", "1024", "0.5", 0.0], ["q1", "1024", "0.5", 1.0]]
    tables = {name: {"average_long": 0.5, "average": 0.5, "by_length": {"1024": 0.5}, "scores": scores}
              for name in ("base", "trained")}
    qa = Evaluation.__new__(Evaluation)
    assert set(qa.summary(tables)) <= qa.summary_keys() and "eval/gain/avg_long_high" in qa.summary_keys()
    bench = BenchmarkEvaluation.__new__(BenchmarkEvaluation)
    bench.subsets = [type("Subset", (), {"name": "hotpotqa"})()]
    tables = {name: {"average": 20.0, "subsets": {"hotpotqa": {"score": 20.0}}} for name in ("base", "trained")}
    assert set(bench.summary(tables)) == bench.summary_keys()


@pytest.mark.parametrize("metric, keys, problem", [
    ("eval/trained/avg_long", {"eval/trained/avg_long"}, None), ("val/los", None, None), (None, None, None),
    ("eval/trained/avg_lng", {"eval/trained/avg_long", "eval/base/avg_long"}, "did you mean eval/trained/avg_long?"),
    ("eval/trained/average", None, "this run evaluates nothing"),
    ("eval/x", {"eval/trained/hotpotqa"}, "it gives eval/trained/hotpotqa")])
def test_an_evaluation_entry_the_run_cannot_give_is_named_before_training(metric, keys, problem):
    found = check_eval_metric(metric, keys)
    assert (found == []) if problem is None else (len(found) == 1 and problem in found[0]), found


@pytest.mark.parametrize("args, line", [
    (["optimized_metric=eval/trained/avg_lng"], "optimized_metric=eval/trained/avg_lng: the evaluation gives no such "
                                                "entry; did you mean eval/trained/avg_long?"),
    (["optimized_metric=eval/trained/avg_long", "eval.enabled=false"], "optimized_metric=eval/trained/avg_long: this "
                                                                       "run evaluates nothing")])
def test_a_run_asked_for_an_evaluation_entry_it_cannot_give_stops_before_the_model_loads(args, line, tmp_path):
    """Before, the run trained and evaluated, then stopped on the name (an Optuna search: every trial)."""
    from in_process import run_here

    done = run_here(["experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path}", *args], expect=2)
    assert "Traceback" not in done.stderr and "model " not in done.stdout, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {line}")
    assert not (tmp_path / "results.json").exists()
