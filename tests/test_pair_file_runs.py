"""Runs on a file of pairs (data=pairs): one smoke run per preference format and container; pairs over
model.max_length truncated, skipped or refused before the model loads; a run without validation pairs; and the data
settings a file's content decides (data.long_len and data.pairs=sampled: for passages, refused for ready-made pairs).
Reading the files themselves: test_containers.py."""
import math

import pytest

from solopo.settings.build import ConfigError, build_settings
from format_samples import CITIES, question, records, write
from format_samples import datasets_cache  # noqa: F401 (an autouse fixture: it applies to this module's tests)
from in_process import run_here
from test_containers import compose_config


SMOKE = [("A", "csv", []), ("trl_standard", "folder", []), ("trl_conversational", "parquet", []),
         ("trl_implicit", "json", []), ("trl_implicit_conversational", "saved", []),
         ("sharegpt", "saved_dict", ["data.split=train_prefs"]), ("alpaca", "jsonl", [])]


@pytest.mark.parametrize("fmt, container, extra", SMOKE)
def test_smoke_run_per_format(fmt, container, extra, tmp_path):
    from test_run import results

    path = write(container, records(fmt), tmp_path)
    run_here(["algo=dpo", "experiment=smoke", "data=pairs", f"data.path={path}", "data.source.n_val=1", "logger=none",
              f"hydra.run.dir={tmp_path / 'run'}", *extra])
    counts = results(tmp_path / "run")["data"]
    assert counts["train"]["pairs"] == 3 and counts["val"]["pairs"] == 1


def test_smoke_run_truncates_overlong_contexts_and_reports_the_count(tmp_path):
    from test_run import results

    filler = "\n\n".join(f"Note {i}: " + "the archive lists old maps " * 8 for i in range(12))
    rows = [{**row, "prompt_long": f"{filler}\n\n{question(country)}"}
            for row, (country, _, _) in zip(records("A"), CITIES)]
    path = write("jsonl", rows, tmp_path)
    run_here(["algo=dpo", "experiment=smoke", "data=pairs", f"data.path={path}", "data.source.n_val=1", "logger=none",
              "model.max_length=256", "eval.lengths=[short,128]", "data.overlong=truncate",
              "data.truncate=left",
              f"hydra.run.dir={tmp_path / 'run'}"])
    counts = results(tmp_path / "run")["data"]
    assert counts["train"]["pairs"] == 3 and counts["train"]["truncated"] == 3 and counts["train"]["skipped"] == {}
    assert counts["train"]["mean_tokens"]["long"] <= 256


def test_an_overlong_pair_under_overlong_error_is_one_line(tmp_path, monkeypatch):
    """data.overlong=error raised a ValueError with a Hydra traceback, exit 1. Then its line named the pair by id alone
    ("example q3"), neither its file, nor its line, nor which prompt, and came once the model had loaded (minutes for a
    7B model), after transformers' own warning that the long text "will result in indexing errors"."""
    from solopo.training import pipeline

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the pair over model.max_length was refused")

    monkeypatch.setattr(pipeline, "load_models", no_model)
    filler = "\n\n".join(f"Note {i}: " + "the archive lists old maps " * 8 for i in range(12))
    rows = [{**row, "prompt_long": f"{filler}\n\n{question(country)}"} if index == 2 else row
            for index, (row, (country, _, _)) in enumerate(zip(records("A"), CITIES))]
    path = write("jsonl", rows, tmp_path)
    done = run_here(["experiment=smoke", "data=pairs", f"data.path={path}", "data.source.n_val=1", "logger=none",
                     "model.max_length=256", "eval.lengths=[short,128]", "data.overlong=error",
                     f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {path} line 3: x_long is too long: ")
    assert "tokens with the longer response, over model.max_length=256 (data.overlong=error; skip" in done.stderr
    assert "Traceback" not in done.stderr and "indexing errors" not in done.stdout + done.stderr


def test_no_pairs_under_truncation_does_not_advise_truncation():
    """Pairs over model.max_length whose context truncation cannot cut (no paragraph before the question) were skipped,
    and the run's one line advised data.overlong=truncate, already set."""
    from solopo.training.pairs import why_no_pairs

    line = why_no_pairs("train", {}, {"over_max_length": 4}, truncating=True)
    assert "data.overlong=truncate finding too little context to cut" in line and "set data.overlong" not in line
    assert why_no_pairs("train", {}, {"over_max_length": 4}).endswith("or set data.overlong=truncate")


def test_a_run_asked_for_no_validation_split_trains_and_ends_well(tmp_path):
    """data.source.n_val=0 (every pair for training) warned "no validation pairs: every one was skipped; raise
    model.max_length, ...", then trained, and then stopped with status 2: "optimized_metric=val/rewards/accuracies:
    this run has no such metric", a metric it had never been asked for. Named, a missing metric is still an error."""
    from solopo.run import optimized_value

    path = write("jsonl", records("A"), tmp_path)
    done = run_here(["experiment=smoke", "data=pairs", f"data.path={path}", "data.source.n_val=0", "logger=none",
                     "eval.enabled=false", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}"])
    assert "every one was skipped" not in done.stdout + done.stderr and "results.json" in done.stdout
    assert math.isnan(optimized_value({"metrics": {"train/loss": 0.7}}, None))
    with pytest.raises(ConfigError, match=r"^optimized_metric=val/loss: this run has no such metric; it has train/loss$"):
        optimized_value({"metrics": {"train/loss": 0.7}}, "val/loss")


def test_data_long_len_is_for_passages_and_refused_for_ready_made_pairs(tmp_path):
    """data.long_len on a file of ready-made pairs (schema A) was ignored: the run trained on the x_long the file held
    as if asked for 2048. Unset, its default (7500) was still checked against model.max_length, so a 4K model stopped
    with "data.long_len=7500: too long for model.max_length=4096" on a file whose contexts nothing would change.
    Passages (schema A') are built to it, and it must fit there."""
    pairs_file = write("jsonl", records("A"), tmp_path)
    done = run_here(["experiment=smoke", "data=pairs", f"data.path={pairs_file}", "data.long_len=2048",
                     "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: data.long_len=2048: data.path={pairs_file} holds ready-made pairs, whose prompts are used as written; "
        "data.long_len sets the x_long built from passages (schema A') or a QA dataset. To give pairs x_long of a "
        "chosen length, build them: solopo-build")
    from solopo.settings.rules import check_pairs_long_len

    assert check_pairs_long_len(7500, 4096, passages=False, given=None, path=pairs_file) == []
    assert check_pairs_long_len(7500, 4096, passages=True, given=None, path="passages.jsonl") == [
        "data.long_len=7500: too long for model.max_length=4096; at most 4032 leaves room for the chat template and "
        "the response"]
    cfg = compose_config(["data=pairs", f"data.path={pairs_file}", "model=tiny", "model.max_length=4096",
                          "eval.lengths=[short]"])
    build_settings(cfg)  # the file's schema decides, once it is read


def test_data_long_len_from_an_experiment_of_ones_own_is_refused_for_ready_made_pairs(tmp_path):
    """Set in an experiment of one's own (--config-dir), data.long_len was still ignored on ready-made pairs: only
    the command line's was refused. The package's overlays (experiment=smoke here) set it as a size for whatever data
    they compose with, and still train."""
    pairs_file = write("jsonl", records("A"), tmp_path)
    (tmp_path / "own" / "experiment").mkdir(parents=True)
    mine = tmp_path / "own" / "experiment" / "mine.yaml"
    mine.write_text("# @package _global_\ndefaults:\n  - smoke\n\ndata:\n  long_len: 2048\n")
    done = run_here(["--config-dir", str(tmp_path / "own"), "experiment=mine", "data=pairs", f"data.path={pairs_file}",
                     "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: data.long_len=2048 (set in {mine}): data.path={pairs_file} holds ready-made pairs, whose prompts are "
        "used as written; data.long_len sets the x_long built from passages (schema A') or a QA dataset. To give pairs "
        "x_long of a chosen length, build them: solopo-build")
    from solopo.settings.build import set_in_own_config

    shipped = compose_config(["experiment=smoke", "data=pairs", f"data.path={pairs_file}",
                              f"hydra.searchpath=[file://{tmp_path / 'own'}]"])
    assert shipped.data.long_len == 256 and set_in_own_config(shipped, "data.long_len") is None


def test_sampling_asked_for_on_ready_made_pairs_is_refused(tmp_path):
    """data.pairs=sampled (with its sampling block) on a file of ready-made pairs trained on the file's pairs as
    written, the sampling never run, without a word. Passages (schema A') are what it samples from."""
    pairs_file = write("jsonl", records("A"), tmp_path)
    done = run_here(["experiment=smoke", "data=pairs", f"data.path={pairs_file}", "data.pairs=sampled",
                     "+data/common@data.sampling=sampling", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                    expect=2)
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: data.pairs=sampled: data.path={pairs_file} holds ready-made pairs (a chosen and a rejected response "
        "each), which are trained on as written; sampling makes pairs from passages with answers (schema A') or a QA "
        "dataset. Drop data.pairs=sampled to train on the file's pairs")
    from solopo.settings.rules import check_pairs_sampled

    assert check_pairs_sampled("sampled", passages=True, path="passages.jsonl") == []
    assert check_pairs_sampled("gold", passages=False, path=pairs_file) == []
