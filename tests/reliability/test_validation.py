"""Mistakes are caught before any GPU time: a config mistake stops the run in one line that names the key, the bad
value and what is allowed; a model that cannot load is named before anything loads (a data file's mistakes and the
sampling block's: test_data_checks.py)."""
import os
import re
import sys
from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf

from solopo.settings.build import ConfigError, build_settings
from solopo.settings.fields import number, one_of
from solopo.settings.rules import check_eval_lengths, check_long_len
from conftest import TINY
from in_process import call
from support import ROOT, compose_config, smoke_here

CONF = ROOT / "solopo" / "conf"
FIXTURES = ROOT / "tests" / "fixtures"
GPU_ONLY = "trainer.accelerator=gpu but no CUDA GPU is visible; use trainer=default (GPU when present) or trainer=cpu"
CPU_FSDP = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"]


def shipped_options():
    """Every option of every config group, experiment/paper_mini/solopo included (conf/hydra configures Hydra)."""
    return [(group.name, str(option.relative_to(group).with_suffix(""))) for group in sorted(CONF.iterdir())
            if group.is_dir() and group.name != "hydra" for option in sorted(group.rglob("*.yaml"))]


@pytest.mark.parametrize("group, option", shipped_options())
def test_every_shipped_config_passes(group, option):
    if group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the solopo[optuna] extra is not installed")
    overrides = [f"{group}={option}"]
    cfg = compose_config(overrides)
    if group == "data" and option.startswith("common/"):  # what the data configs compose: refused as an option
        refusal = rf"^data={option}: a block the data configs share \(conf/data/{option}\.yaml\), not a data option$"
        with pytest.raises(ConfigError, match=refusal):
            build_settings(cfg)
        return
    if OmegaConf.is_missing(cfg.data, "path"):
        with pytest.raises(ConfigError, match=rf"^data={option} needs data.path=FILE \(see conf/data/{option}.yaml\)$"):
            build_settings(cfg)
        (fixture,) = FIXTURES.glob(f"{option}.*")
        cfg = compose_config([*overrides, f"data.path={fixture}"])
    if "benchmark" in cfg.eval and OmegaConf.is_missing(cfg.eval.benchmark, "path"):  # eval=longbench, eval=ruler
        with pytest.raises(ConfigError, match=rf"^eval={option} needs eval.benchmark.path=PATH \(see conf/eval/{option}.yaml\)$"):
            build_settings(cfg, training=False)
        cfg = compose_config([*overrides, f"eval.benchmark.path={FIXTURES}"])
    if group in ("algo", "ra", "method", "logger"):  # groups only training reads: an evaluation names the choice
        with pytest.raises(ConfigError, match=rf"^{group}={option}: only training reads the {group} group; solopo-eval "
                                              "would ignore it$"):
            build_settings(cfg, training=False)
    else:  # the evaluation answers on the GPU where there is one: it reads no trainer.accelerator
        build_settings(cfg, training=False)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=f"^{re.escape(GPU_ONLY)}$"):
            build_settings(cfg)
        cfg = compose_config([*overrides, "trainer.accelerator=auto"])
    build_settings(cfg)


ALGOS = "solopo.core.algos.CDPO, solopo.core.algos.DPO, solopo.core.algos.IPO, solopo.core.algos.ORPO, solopo.core.algos.SimPO"
MISTAKES = [
    (["algo._target_=solopo.core.algos.SimP"],
     f"algo._target_=solopo.core.algos.SimP: no such class or function; choose one of {ALGOS}"),
    (["algo._target_=solopo.core.objective.SoLoRA"], "algo._target_=solopo.core.objective.SoLoRA: not an algorithm (one has "
                                                f"reward, loss and needs_reference); choose one of {ALGOS}"),
    (["+algo.betta=0.1"], "algo.betta=0.1: SimPO takes no such option; did you mean beta?"),
    (["algo=dpo", "algo.beta=0"], "algo.beta=0: must be a number > 0"),
    (["algo=cdpo", "algo.label_smoothing=0.7"], "algo.label_smoothing=0.7: must be a number in [0, 0.5) (0.5: "
                                                "flipped as often as kept, no preference learned)"),
    # at 0.5 the loss pulls every margin to 0; a negative SimPO margin accepts a chosen reward below the rejected one
    (["algo=cdpo", "algo.label_smoothing=0.5"], "algo.label_smoothing=0.5: must be a number in [0, 0.5) (0.5: "
                                                "flipped as often as kept, no preference learned)"),
    (["algo.gamma=-1"], "algo.gamma=-1: must be a number >= 0 (the target reward margin; 0: none)"),
    (["ra.alpha=-1"], "ra.alpha=-1: must be a number >= 0 (0 turns SoLo-RA off)"),
    (["ra.distance=l2"], "ra.distance=l2: choose one of abs, softplus, squared"),
    (["ra.responses=[chosen,other]"], "ra.responses=[chosen,other]: choose [chosen] or [chosen,rejected]"),
    (["ra._target_=solopo.core.objective.SoloRA"], "ra._target_=solopo.core.objective.SoloRA: no such class or function; choose "
                                              "one of solopo.core.objective.SoLoRA"),
    (["method.po_context=middle"], "method.po_context=middle: choose one of short, long"),
    (["data.long_len=64"], "data.long_len=64: must be an integer >= 128 (x_long holds the evidence, ~100 tokens, "
                           "and irrelevant text)"),
    (["data.short_len=512"],
     "data.long_len=512: must be greater than data.short_len=512 (x_long holds x_short and more)"),
    (["data.long_len=8192"], "data.long_len=8192: too long for model.max_length=8192; at most 8127 leaves room for the "
                             "chat template and the response"),
    (["data.pairs=sampeld"], "data.pairs=sampeld: choose one of gold, sampled"),
    (["data.overlong=cut"], "data.overlong=cut: choose one of skip, error, truncate"),
    (["data.truncate=right"], "data.truncate=right: choose one of middle, left"),
    (["data.template=chat"], "data.template=chat: choose one of direct, cot"),
    (["data.sampling.engine=sglang"], "data.sampling.engine=sglang: choose one of transformers, vllm"),
    (["data.sampling.k=1"],
     "data.sampling.k=1: must be an integer >= 2 (a pair needs a correct and an incorrect sample)"),
    (["data.sampling.temperature=0"], "data.sampling.temperature=0: must be a number > 0"),
    (["data.sampling.half_weights=fast"], "data.sampling.half_weights=fast: must be true or false"),
    (["eval.half_weights=1"], "eval.half_weights=1: must be true or false"),
    (["optimized_metric=val/lsos"], "optimized_metric=val/lsos: validation reports no such metric; did you mean val/loss?"),
    # the rejected response's gap is reported where SoLo-RA runs both responses only
    (["ra=chosen", "optimized_metric=val/ra/gap_rejected"],
     "optimized_metric=val/ra/gap_rejected: validation reports no such metric; did you mean val/rewards/rejected?"),
    # with gold pairs too: the sampling keys are checked wherever the data group has them
    (["experiment=smoke", "data.pairs=gold", "data.sampling.half_weights=maybe"],
     "data.sampling.half_weights=maybe: must be true or false"),
    (["experiment=smoke", "data.pairs=gold", "data.sampling.k=abc"], "data.sampling.k=abc: must be an integer >= 1"),
    (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
    (["data.source.n_train=0"], "data.source.n_train=0: must be an integer >= 1 or null"),
    (["+data.source.n_trian=3"], "data.source.n_trian=3: qa_items takes no such option; did you mean n_train?"),
    (["reference=cache"], "reference=cache: choose one of cached, live"),
    (["optim.lr=0"], "optim.lr=0: must be a number > 0"),
    (["optim.lr=-1e-5"], "optim.lr=-1e-05: must be a number > 0"),
    (["optim.betas=[0.9,1.0]"], "optim.betas=[0.9,1.0]: must be two numbers in [0, 1), e.g. [0.9,0.95]"),
    (["eval.depths=[0,1.5]"], "eval.depths=[0,1.5]: each depth must be a number in [0, 1] (0 = start, 1 = end of the "
                              "context)"),
    (["eval.lengths=[short,8192]"], "eval.lengths=[short,8192]: 8192 is too long for model.max_length=8192; at most "
                                    "8128 leaves room for the chat template and the answer"),
    (["eval.lengths=[short,long]"], "eval.lengths=[short,long]: long is neither short nor a number of tokens"),
    (["eval.n_items=0"], "eval.n_items=0: must be an integer >= 1"),
    (["model.dtype=fp16"], "model.dtype=fp16: choose one of auto, float32, bfloat16, float16, float64"),
    (["model.liger=maybe"], "model.liger=maybe: choose one of false, true, auto"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: must be an integer >= 1 (or -1: the epochs decide)"),
    (["+trainer.max_step=3"], "trainer.max_step=3: Trainer takes no such option; did you mean max_steps?"),
    (["faults.max_consecutive_bad_steps=0"], "faults.max_consecutive_bad_steps=0: must be an integer >= 1"),
    (["checkpoint.every_n_steps=5", "checkpoint.every_n_minutes=3"],
     "set checkpoint.every_n_steps or checkpoint.every_n_minutes, not both"),
    (["packing=yes"], "packing=yes: choose one of false, true, shared_prompt, auto"),
    (["packing=1"], "packing=1: choose one of false, true, shared_prompt, auto"),
    (["packing=shared_prompt", "model.attn_implementation=eager"],
     "packing=shared_prompt needs model.attn_implementation=flex_attention or sdpa or solopo_varlen (got eager)"),
    (["val_every_n_steps=0"], "val_every_n_steps=0: must be an integer >= 1 or null"),
    # Settings that did harm or nothing without a word (issue 21, item 5) and ones that stopped only after set-up.
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1: must be a number >= 0 or null"),
    (["ra.alpha=inf"], "ra.alpha=inf: must be a number >= 0 (0 turns SoLo-RA off)"),
    (["algo=dpo", "algo.beta=inf"], "algo.beta=inf: must be a number > 0"),
    (["optim.lr=inf"], "optim.lr=inf: must be a number > 0"),
    (["optim.lr=nan"], "optim.lr=nan: must be a number > 0"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be an integer >= 1 or null (or -1: the steps decide)"),
    (["ra=both", "method=long_po"], "ra.alpha=1.0: method=long_po has no SoLo-RA term (its config selects ra=off); "
                                    "drop the ra setting or choose method=solopo"),
    (["+data.path=pairs.jsonl"], "data.path=pairs.jsonl: data=qa reads no file; choose a file format (data=pairs, "
                                 "musique, hotpotqa, twowiki, longbench)"),
    (["seed=abc"], "seed=abc: must be an integer >= 0"),
    (["trainer.devices=0"], "trainer.devices=0: must be an integer >= 1, -1 (all), a list of ids or auto"),
    (["+optim.lrr=1"], "optim.lrr=1: OptimSettings takes no such option; did you mean lr?"),
    (["+eval.n_item=2"], "eval.n_item=2: EvalSettings takes no such option; did you mean n_items?"),
    # Keys nothing reads, at the top and in the data group, which the run ignored in silence.
    (["+foo=1"], "foo=1: solopo reads no such key"),
    (["+sed=1"], "sed=1: solopo reads no such key; did you mean seed?"),
    (["+expriment=decisive/a"], "expriment=decisive/a: solopo reads no such key; did you mean experiment?"),
    (["+data.foo=1"], "data.foo=1: data=qa reads no such key"),
    (["+data.split=train"], "data.split=train: data=qa reads no such key; did you mean sampling?"),
    (["data=pairs", "data.path=x.jsonl", "+data.bath_size=2"],
     "data.bath_size=2: data=pairs reads no such key; did you mean batch_size?"),
    (["data=pairs", "+data.pth=x.jsonl"], "data.pth=x.jsonl: data=pairs reads no such key; did you mean path?; "
                                          "data=pairs needs data.path=FILE (see conf/data/pairs.yaml)"),
    (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.context_parallel=2"],
     "trainer.context_parallel=2: needs trainer=fsdp (its device mesh holds the context groups)"),
    ([*CPU_FSDP, "trainer.context_parallel=3"],
     "trainer.context_parallel=3: must divide the number of processes, 2 (trainer.devices x trainer.num_nodes)"),
    ([*CPU_FSDP, "trainer.context_parallel=2", "packing=true"],
     "trainer.context_parallel=2: splits padded rows; set packing=auto or false (got packing=true)"),
    ([*CPU_FSDP, "trainer.context_parallel=2", "model.attn_implementation=eager"],
     "trainer.context_parallel=2: runs model.attn_implementation=solopo_context (SDPA over the gathered keys and values, "
     "which replaces sdpa and solopo_varlen); got eager"),
    (["trainer.context_parallel=0"], "trainer.context_parallel=0: must be an integer >= 1"),
    (["trainer.context_parallel_min_tokens=0.5"], "trainer.context_parallel_min_tokens=0.5: must be an integer >= 1 or null"),
    # The logger's mistakes, which wandb or Lightning reported only after the model had loaded.
    (["logger=wandb", "logger.mode=bogus"], "logger.mode=bogus: choose one of auto, online, offline"),
    (["logger=csv", "+logger.flush_every=1"], "logger.flush_every=1: ResumableCSVLogger takes no such option; did you "
                                              "mean flush_logs_every_n_steps?"),
    # Two mistakes, one line.
    (["model.max_length=512"], "data.long_len=512: too long for model.max_length=512; at most 447 leaves room for the "
                               "chat template and the response; eval.lengths=[short,512]: 512 is too long for "
                               "model.max_length=512; at most 448 leaves room for the chat template and the answer"),
]


@pytest.mark.parametrize("overrides, message", MISTAKES, ids=[" ".join(o) for o, _ in MISTAKES])
def test_a_config_mistake_stops_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as stopped:
        build_settings(compose_config(overrides))
    assert str(stopped.value) == message and "\n" not in message


@pytest.mark.parametrize("overrides", [["algo.gamma=0"], ["algo=cdpo", "algo.label_smoothing=0"],
                                       ["algo=cdpo", "algo.label_smoothing=0.49"], ["algo=orpo", "algo.lam=0"]])
def test_the_edges_of_the_algorithms_ranges_are_accepted(overrides):
    """SimPO without a margin and cDPO without smoothing are the papers' own ablations; ORPO's lam=0 is SFT."""
    build_settings(compose_config(overrides))


def test_context_parallel_runs_the_context_attention_in_place_of_sdpa():
    settings = build_settings(compose_config([*CPU_FSDP, "trainer.context_parallel=2"]))
    assert settings.model.attn_implementation == "solopo_context"
    assert (settings.context.size, settings.context.min_tokens) == (2, None)
    assert build_settings(compose_config(CPU_FSDP)).model.attn_implementation == "solopo_varlen"  # the default kernel


def test_ra_off_is_the_one_switch():
    """A baseline method selects ra=off (alpha 0); SoLo-RA is on wherever alpha > 0, whatever else is set."""
    baseline = build_settings(compose_config(["method=long_po"]))
    assert baseline.ra.alpha == 0 and not baseline.ra.active and not baseline.method.use_ra
    assert build_settings(compose_config(["method=solopo", "ra=both"])).ra.active


@pytest.mark.parametrize("setting", ["trainer.gradient_clip_val=-1", "seed=abc", "trainer.devices=0", "+optim.lrr=1",
                                     "ra=both method=long_po", "trainer.context_parallel=2", "algo=dpx",
                                     "logger=wandb logger.mode=bogus", "model.liger=maybe", "algo.gamma=-1"])
def test_a_bad_setting_exits_2_before_the_model_loads(setting, tmp_path):
    """In this process; test_the_run_stops_before_any_model_loads checks the same in a fresh interpreter."""
    done = smoke_here([*setting.split(), f"hydra.run.dir={tmp_path}"], expect=2)
    assert "Traceback" not in done.stderr and "parameters" not in done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "results.json").exists()


def test_an_empty_or_unknown_wandb_mode_in_the_environment_is_named(monkeypatch):
    """wandb refuses WANDB_MODE="" (or any value it does not know) in a multi-line error when the logger starts,
    after the model has loaded; it is a config problem like the others. Unset, logger.mode decides."""
    monkeypatch.setenv("WANDB_MODE", "")
    with pytest.raises(ConfigError, match=r"^WANDB_MODE='' in the environment: wandb takes online, offline, .*; unset "
                                          r"it to let logger.mode decide$"):
        build_settings(compose_config(["logger=wandb"]))
    build_settings(compose_config(["logger=csv"]))  # only the wandb logger reads it
    monkeypatch.delenv("WANDB_MODE")
    build_settings(compose_config(["logger=wandb"]))


def test_the_checks_are_plain_functions():
    """No Hydra needed: values in, messages out; the long context of a gold pair needs 32 tokens of template and 32
    of answer beside it."""
    assert number("optim.lr", 1e-5, 0, above=True) == [] and one_of("reference", "live", ("cached", "live")) == []
    assert number("data.batch_size", 2.5, 1, integer=True) == ["data.batch_size=2.5: must be an integer >= 1"]
    assert number("data.batch_size", True, 1, integer=True) == ["data.batch_size=true: must be an integer >= 1"]
    assert number("x", 0.5, 0, 0.5, below=True) == ["x=0.5: must be a number in [0, 0.5)"]
    assert number("x", 0.5, 0, 0.5) == [] and number("x", 0.49, 0, 0.5, below=True) == []
    assert check_long_len(4032, None, 4096, 64) == [] and check_long_len(4033, None, 4096, 64) != []
    assert check_long_len(1024, 512, None, 64) == [] and check_eval_lengths(["short", 4032], 4096) == []


@pytest.mark.parametrize("name, first_line", [
    ("{tmp}/no-model", "model.name={tmp}/no-model: no such folder"),
    ("{tmp}", "model.name={tmp}: the folder holds no config.json, so it is not a saved Hugging Face model"),
    ("nobody/no-such-model", "model.name=nobody/no-such-model: not in the local Hugging Face cache and the hub cannot "
                             "be reached (HF_HUB_OFFLINE is set); download it"),
])
def test_a_model_that_cannot_load_is_named_before_anything_loads(name, first_line, tmp_path, monkeypatch):
    """Checked with the filesystem and the hub's cache alone (offline here): from_pretrained never starts."""
    from huggingface_hub import constants
    from solopo.models.loading import source_problems

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (problem,) = source_problems(replace(TINY, name=name.format(tmp=tmp_path), random_init=None, tokenizer=None))
    assert problem.startswith(first_line.format(tmp=tmp_path))
    tokenizer_only = replace(TINY, name="tiny", tokenizer=f"{tmp_path}/none", random_init={"model_type": "llama"})
    assert source_problems(tokenizer_only) == [f"model.tokenizer={tmp_path}/none: no such folder"]


@pytest.mark.parametrize("name", ["/path/to/model", "Qwen/Qwen2.5-7B-Instruct", "embedded:smollm2-135m-instruct"])
def test_weights_named_for_a_random_model_are_refused(name):
    """model=tiny (experiment=smoke) model.name=/path/to/checkpoint evaluated the random tiny model, exit 0: a model
    with random_init and a tokenizer of its own takes its name as a label only, so a name that says where weights
    come from is refused; a label passes, and without a tokenizer the name is the tokenizer's source."""
    from solopo.models.loading import source_problems

    (problem,) = source_problems(replace(TINY, name=name))
    assert problem.startswith(f"model.name={name}: names weights to load, but this model has model.random_init")
    assert source_problems(replace(TINY, name="my-random-llama")) == []
    assert source_problems(replace(TINY, name="embedded:smollm2-135m-instruct", tokenizer=None)) == []


def test_a_refused_wandb_key_logs_offline_with_a_warning(tmp_path, monkeypatch, caplog):
    """A malformed WANDB_API_KEY made wandb.init raise after the model had loaded; the run now goes on offline."""
    from solopo.training.loggers import wandb_logger

    monkeypatch.setenv("WANDB_API_KEY", "not-a-key")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = wandb_logger("solopo-test", str(tmp_path))
    logger.log_hyperparams({"seed": 0})
    logger.experiment.finish()
    assert logger._offline and list((tmp_path / "wandb").glob("offline-run-*"))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("wandb could not log online (WANDB_API_KEY invalid") and "wandb sync" in warning


def reliability_cases():
    """experiments/reliability/cases.py, a script outside the package, as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("reliability_cases", ROOT / "experiments" / "reliability" / "cases.py")
    cases = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look their module up
    spec.loader.exec_module(cases)
    return cases


@pytest.mark.parametrize("name", ["passages cannot fill data.long_len", "gold pairs without any wrong answer",
                                  "missing local model path"])
def test_reliability_cases_behave(name):
    """Three of experiments/reliability/cases.py's cases, which failed with a traceback after the model loaded (or
    without naming the data file) at f6ffd7e: now one line, exit 2, no model loaded. The command runs in this
    process; the script's own runs start a new interpreter each."""
    cases = reliability_cases()
    (case,) = [c for c in cases.CASES if c.name == name]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    here = lambda args, checkout, env: call("solopo.run", args, expect=None, env=env, cwd=checkout)  # noqa: E731
    assert cases.run_case(case, ROOT, env, here) == ("", 2)


def test_readme_mistakes_are_the_lines_the_checks_give():
    """README's example lines are what the checks print for the default config, not a copy that drifts (it said
    8127 where a user's gold pairs got 8128: both are right, for a sampled response and a gold one, which README
    now says, and checked here too)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"\*\*Mistakes, caught at the start\.\*\*.*?```\n(.*?)```", text, flags=re.S).group(1)
    lines = [line.removeprefix("error: ") for line in block.splitlines()]
    assert len(lines) == 2
    for line in lines:
        with pytest.raises(ConfigError) as stopped:
            build_settings(compose_config([line.split(": ")[0]]))
        assert str(stopped.value) == line
    gold = re.search(r"so `data.pairs=gold` and a file of passages allow (\d+)", text).group(1)
    with pytest.raises(ConfigError, match=rf"; at most {gold} leaves room"):
        build_settings(compose_config(["data.long_len=8192", "data.pairs=gold"]))
