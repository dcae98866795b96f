"""`python -m solopo.run` end to end on the tiny model: every algorithm, method and SoLo-RA variant, data file and
efficiency option, and the commands README shows (a sweep among them; test_report.py checks a 2x2 sweep's jobs)."""
import csv
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from in_process import run_here

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FINITE_KEYS = ["train/loss", "train/po_loss", "train/ra_loss", "train/rewards/chosen", "train/rewards/rejected",
               "train/rewards/margins", "train/rewards/accuracies", "train/logps/chosen", "train/logps/rejected",
               "val/loss", "val/po_loss", "val/ra_loss", "val/rewards/chosen", "val/rewards/margins",
               "val/ra/chosen_long", "val/ra/gap"]
# TRL's names (DPOTrainer, ORPOTrainer) for what TRL logs, as metrics.csv and wandb carry them
TRL_KEYS = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected"}
ORPO_KEYS = {"nll_loss", "log_odds_ratio"}
# Not applicable to plain PO data (prompt_long = prompt_short), whose runs report none of them.
LONG_CONTEXT_KEYS = ["train/ra_loss", "val/ra_loss", "val/ra/chosen_long", "val/ra/gap"]


def run(args, cwd=ROOT, timeout=300):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    done = subprocess.run([sys.executable, "-m", "solopo.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def results(run_dir):
    data = json.loads((Path(run_dir) / "results.json").read_text())
    plain = data["sequences"]["plain_po"]
    for key in FINITE_KEYS:
        if plain and key in LONG_CONTEXT_KEYS:
            assert key not in data["metrics"], key
        else:
            assert math.isfinite(data["metrics"][key]), key
    return data


@pytest.mark.parametrize("algo", ["dpo", "simpo", "orpo", "ipo", "cdpo"])
def test_smoke_run_per_algorithm(algo, tmp_path):
    done = run_here([f"algo={algo}", "data=qa", "experiment=smoke", "logger=csv", "+logger.tags=[mine]",
                     f"hydra.run.dir={tmp_path}"])
    data = results(tmp_path)
    assert data["steps"] == 4 and data["config"]["algo"]["_target_"].lower().endswith(algo)
    assert data["metrics"]["train/ra_loss"] > 0  # SoLo-RA on by default
    assert "results:" in done.stdout and (tmp_path / "csv").is_dir()
    assert data["libraries"] == {"torch": torch.__version__, "transformers": transformers.__version__}
    assert data["device"] == "cpu" and data["device_name"] == platform.machine()  # where it ran, by name
    header = next(csv.reader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    expected = TRL_KEYS | (ORPO_KEYS if algo == "orpo" else set())
    assert {f"{split}/{key}" for key in expected for split in ("train", "val")} <= set(header)
    assert not [key for key in header if key.endswith(("_step", "_epoch"))]
    assert data["metrics"]["train/tokens_per_s"] == pytest.approx(data["timings"]["train_tokens_per_s"])
    # each stage's seconds and peak memory, for a study's cost table (DPO's reference log-probs are a stage of their own)
    stages = data["timings"]["stages"]
    assert {"sampling", "base_eval", "training", "eval"} | ({"reference"} if algo in ("dpo", "ipo", "cdpo") else set()) \
        == stages.keys()
    assert all(cost["s"] >= 0 and cost["peak_gib"] > 0 for cost in stages.values())
    assert stages["training"]["s"] <= data["timings"]["fit_s"] + 1e-6
    # the chosen response's reward on each context and their signed gap, per step (the decisive study's mechanism)
    assert {"train/ra/chosen_short", "train/ra/chosen_long", "train/ra/gap_signed"} <= set(header)
    # the CSV run carries a wandb run's tags: the config choices, alpha, then the user's own
    hparams = yaml.safe_load(open(tmp_path / "csv" / "version_0" / "hparams.yaml"))
    assert hparams["tags"] == [f"algo={algo}", "ra=chosen", "method=solopo", "data=qa", "model=tiny",
                               "experiment=smoke", "alpha=1", "mine"]


def test_a_run_that_reads_the_cache_marks_those_stages_cached(tmp_path):
    """Two DPO runs on one fresh cache: the first computes the reference log-probs and the base model's evaluation,
    the second reads both, and its costs say so (a study's cost table counts them in the first); gold pairs and
    training never come from a cache."""
    cached = []
    for name in ("first", "second"):
        run_here(["algo=dpo", "experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path / name}"],
                 env={"SOLOPO_CACHE": str(tmp_path / "cache")})
        stages = json.loads((tmp_path / name / "results.json").read_text())["timings"]["stages"]
        cached.append({stage for stage, cost in stages.items() if cost["cached"]})
    assert cached == [set(), {"reference", "base_eval"}]


@pytest.mark.parametrize("overrides, ra_used", [
    (["method=short_po"], False), (["method=long_po"], False), (["method=expand_long"], False),
    (["ra=both", "ra.distance=softplus"], True), (["ra=off"], False),
])
def test_smoke_run_per_method(overrides, ra_used, tmp_path):
    done = run_here(["algo=dpo", "experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path}", *overrides])
    metrics = results(tmp_path)["metrics"]
    assert (metrics["train/ra_loss"] > 0) == ra_used
    assert (", no SoLo-RA; sequences per pair:" in done.stdout) != ra_used  # the log says what the loss holds
    assert metrics["train/loss"] == pytest.approx(metrics["train/po_loss"] + (1.0 if ra_used else 0.0) * metrics["train/ra_loss"], rel=1e-5)


@pytest.mark.parametrize("data, fixture, extra", [
    ("hotpotqa", "hotpotqa.json", []), ("musique", "musique.jsonl", []), ("twowiki", "twowiki.json", []),
    ("pairs", "pairs.jsonl", []),  # schema A: contexts given
    ("pairs", "pairs_plain.jsonl", []),  # schema B: prompt_short == prompt_long, so SoLo-RA does not apply
    ("pairs", "pairs_passages.jsonl", ["data.long_len=128"]),  # schema A': its 8 passages fill ~140 tokens at most
])
def test_smoke_run_on_a_data_file(data, fixture, extra, tmp_path):
    run_here(["algo=dpo", "experiment=smoke", f"data={data}", f"data.path={FIXTURES / fixture}", "data.source.n_val=1",
         "logger=none", f"hydra.run.dir={tmp_path}", *extra])
    data_counts = results(tmp_path)["data"]
    assert data_counts["train"]["pairs"] >= 2 and data_counts["val"]["pairs"] == 1


EFFICIENCY_COMMON = ["algo=dpo", "experiment=smoke", "logger=none", "data.batch_size=2"]


@pytest.fixture(scope="module")
def baseline_metrics(tmp_path_factory):
    """The run the efficiency options are compared with, in float64: padded rows, the cached reference."""
    run_dir = tmp_path_factory.mktemp("baseline")
    run_here([*EFFICIENCY_COMMON, "model.dtype=float64", "packing=false", f"hydra.run.dir={run_dir}"])
    return results(run_dir)["metrics"]


@pytest.mark.parametrize("variant", [["model.dtype=float64", "reference=live"], ["model.dtype=float64", "packing=true"],
                                     ["model.dtype=float64", "packing=true", "model.attn_implementation=solopo_varlen"]])
def test_efficiency_options_do_not_change_the_numbers(variant, baseline_metrics, tmp_path):
    """The cached reference and packed rows are exact: the same run gives the same metrics, in float64. In fp32 a
    padded row's summed log-prob moves by an ulp (~4e-6 at 43 nats) with the padding of its batch, so the cached
    reference and step 1's policy differ by that much; SoLo-RA's |gap| turns the sign of such a difference into a
    full-size gradient term, and these short runs' rewards (~3e-5) then differ by as much as they measure (margin
    -6.0e-6 padded, -1.9e-5 packed, on an AVX-512 CPU; on AVX2 both -5.7e-6). In float64 the four runs agree to the
    last bit on this CPU; the tolerance leaves room for another CPU's kernels."""
    run_here([*EFFICIENCY_COMMON, *variant, f"hydra.run.dir={tmp_path}"])
    other = results(tmp_path)["metrics"]
    for key in FINITE_KEYS:
        assert other[key] == pytest.approx(baseline_metrics[key], rel=1e-6, abs=1e-8), key


def test_shared_prompts_do_not_change_the_numbers(baseline_metrics, tmp_path):
    """packing=shared_prompt against padded rows, in float64: in fp32 the rounding of a response's summed log-prob
    (about 3e-5 at a few hundred nats) is as large as these short runs' rewards, so any change of summation order
    would show there; in float64 the two runs agree to about 1e-10."""
    run_here([*EFFICIENCY_COMMON, "model.dtype=float64", "packing=shared_prompt", f"hydra.run.dir={tmp_path}"])
    shared = results(tmp_path)["metrics"]
    for key in FINITE_KEYS:
        assert shared[key] == pytest.approx(baseline_metrics[key], rel=1e-6, abs=1e-8), key


def readme_commands():
    """Every `python -m solopo.run ... experiment=smoke ...` line in README's code blocks."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    return list(dict.fromkeys(line.strip() for block in blocks for line in block.splitlines()  # each once
                              if line.strip().startswith("python -m solopo.run") and "experiment=smoke" in line))


def test_readme_has_smoke_commands():
    assert readme_commands()


@pytest.mark.parametrize("command", readme_commands())
def test_readme_smoke_command(command, tmp_path):
    """In this process, except a command of several processes (trainer.devices=2): Lightning starts the others by
    running the command line again, which only a command of its own has."""
    args = shlex.split(command)[3:]
    directory = "hydra.sweep.dir" if "-m" in args else "hydra.run.dir"
    several = any(a.startswith("trainer.devices=") and a.partition("=")[2] not in ("1", "auto") for a in args)
    (run if several else run_here)([*args, "logger=none", f"{directory}={tmp_path}"])
    assert list(tmp_path.rglob("results.json"))


@pytest.mark.slow
def test_default_command_with_the_embedded_model(tmp_path):
    """README's headline command, as written, with the real SmolLM2-135M-Instruct (minutes on CPU)."""
    run(["algo=simpo", "data=qa", "logger=csv", f"hydra.run.dir={tmp_path}"], timeout=900)
    data = results(tmp_path)
    assert data["config"]["model"]["name"] == "embedded:smollm2-135m-instruct"


def test_a_run_without_validation_pairs_trains_and_says_so(monkeypatch, tmp_path, caplog):
    """On-policy sampling on long contexts can find no right answer among the few validation items (Long-PO at
    4K tokens did, twice): the run trains, warns, and records 0 validation pairs; no train pairs stays an error."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from solopo.data.tokenize import tokenize_examples as tokenize
    from solopo.training import pairs as run_pairs, pipeline as entry
    from solopo.training.results import RunFailed
    calls = []

    def none_for_val(examples, *args):
        calls.append(len(examples))
        pairs, skipped = tokenize(examples, *args)
        return (pairs, skipped) if len(calls) == 1 else ([], skipped)  # the first call is the train split

    monkeypatch.setattr(run_pairs, "tokenize_examples", none_for_val)
    monkeypatch.setenv("SOLOPO_CACHE", str(tmp_path / "cache"))
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True, overrides=[
            "algo=dpo", "experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path}",
            f"hydra.runtime.output_dir={tmp_path}"])
    # Hydra's record of the running job, which the run reads; put back at the end (a later test of this process would
    # read this job's config group choices), as in_process.call does
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as hydra's main hands it to the task
    with caplog.at_level("WARNING", logger="solopo"):
        out = entry.train(cfg)
    assert calls == [4, 2] and out["steps"] == 4 and out["data"]["val"]["pairs"] == 0
    assert "train/loss" in out["metrics"] and not any(k.startswith("val/") for k in out["metrics"])
    assert "no validation pairs: every one was skipped" in caplog.text and "without validation metrics" in caplog.text

    calls.clear()
    monkeypatch.setattr(run_pairs, "tokenize_examples", lambda examples, *args: ([], {}))
    with pytest.raises(RunFailed, match="no training pairs"):
        entry.train(cfg)


def test_a_sampled_run_without_pairs_says_why_and_leaves_its_failure(monkeypatch, tmp_path):
    """data.pairs=sampled where no question had both a correct and an incorrect sample (the tiny model gets none
    right): one error line that says why and what to change, exit 2, and failed.json, which the report lists."""
    from in_process import call
    from solopo.generation import sampling

    def all_wrong(model, tokenizer, prompts, settings, desc=""):
        return [[("Nowhere.", True)] * settings.k for _ in prompts]

    monkeypatch.setattr(sampling, "generate", all_wrong)
    run_dir = tmp_path / "run"
    done = run_here(["algo=dpo", "experiment=smoke", "data.pairs=sampled", "data.sampling.k=2", "logger=none",
                     f"hydra.run.dir={run_dir}"], expect=2, env={"SOLOPO_CACHE": str(tmp_path / "cache")})
    assert done.stderr.strip().splitlines() == [
        "error: no training pairs: 0 of 4 questions had both a correct and an incorrect sample (0.0% of samples "
        "correct, 2 per question); use data.pairs=gold, more samples (data.sampling.k), or a stronger model"]
    assert "Traceback" not in done.stdout + done.stderr and not (run_dir / "results.json").exists()
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["reason"] == "no pairs" and failed["detail"] == done.stderr.strip()[len("error: "):]
    assert failed["config"]["algo"]["_target_"].endswith("DPO") and failed["config"]["data"]["pairs"] == "sampled"
    report = call("solopo.report", [run_dir, "--out", tmp_path / "report"])
    assert "failed: no pairs" in (tmp_path / "report" / "report.md").read_text() + report.stdout


def test_few_pairs_for_many_steps_are_flagged():
    from solopo.training.pairs import repeats_note

    assert repeats_note(12, 32, 4) == "12 training pairs for 32 steps of 4: each pair is seen about 11 times"
    assert repeats_note(121, 32, 4) is None  # about one epoch
    assert repeats_note(12, -1, 4) is None and repeats_note(0, 32, 4) is None  # epochs decide / nothing to train


@pytest.mark.parametrize("logger", ["wandb", "csv"])
def test_a_dry_run_runs_end_to_end_with_a_logger_configured(logger, tmp_path):
    """debug=fast (Lightning's fast_dev_run) swaps the logger for a stand-in that records nothing: the run makes
    none, and evaluates and writes its results as any run does."""
    done = run_here(["experiment=smoke", "debug=fast", f"logger={logger}", f"hydra.run.dir={tmp_path}"])
    assert "a dry run, logged to no experiment logger" in done.stdout + done.stderr
    assert json.loads((tmp_path / "results.json").read_text())["eval"]
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "csv").exists()


@pytest.mark.parametrize("algo, ra, metric", [("orpo", "both", "val/ra/gap_rejected"), ("orpo", "chosen", "val/nll_loss"),
                                              ("dpo", "off", "val/rewards/margins")])
def test_a_validation_metric_the_checks_accept_is_one_the_run_reports(algo, ra, metric, tmp_path):
    """optimized_metric's check before training (solopo.core.objective.metric_names) agrees with what validation
    then reports: the run returns the metric's value."""
    done = run_here([f"algo={algo}", f"ra={ra}", f"optimized_metric={metric}", "experiment=smoke", "logger=none",
                     "trainer.max_steps=1", f"hydra.run.dir={tmp_path}"])
    assert metric in json.loads((tmp_path / "results.json").read_text())["metrics"], done.stdout[-2000:]


def test_a_rerun_in_a_failed_runs_directory_removes_its_failure_record(tmp_path):
    """A rerun, a resume or a requeued job in the directory of a run that failed: the old failed.json would make a
    report count the run that now succeeds as failed."""
    (tmp_path / "failed.json").write_text(json.dumps({"reason": "bad data", "detail": "x", "config": {}}))
    run_here(["experiment=smoke", "logger=none", "trainer.max_steps=1", f"hydra.run.dir={tmp_path}"])
    assert (tmp_path / "results.json").exists() and not (tmp_path / "failed.json").exists()


def test_a_model_that_cannot_load_in_a_job_is_not_recorded_as_bad_data(tmp_path):
    """A job that the launcher starts without the command line's checks (an Optuna trial, a SLURM job) and whose
    model cannot be found stops in one line; failed.json is for what the data gave."""
    from in_process import call

    done = call("solopo.run:main", ["experiment=smoke", "logger=none", "model.random_init=null",
                                    f"model.name={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path / 'run'}"], expect=None)
    assert done.returncode == 2 and done.stderr.strip().endswith("no such folder"), done.stderr[-2000:]
    assert not (tmp_path / "run" / "failed.json").exists()
