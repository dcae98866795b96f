"""Every shipped config composes, and what it names instantiates."""
import dataclasses
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf, open_dict

from solopo.models.loading import ModelSpec, load_model, load_tokenizer
from solopo.core.objective import Method, SoLoRA
from solopo.eval.longctx import EvalSettings
from solopo.generation.sampling import SamplingSettings
from solopo.settings.build import ConfigError, build_settings, trainer_arguments
from solopo.training.module import OptimSettings
from solopo.training.precision import resolve_precision
from solopo.settings.groups import check_trainer
from in_process import run_here

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "solopo" / "conf"
FIXTURES = ROOT / "tests" / "fixtures"
GROUPS = {group.name: sorted(p.stem for p in group.glob("*.yaml")) for group in CONF.iterdir() if group.is_dir()}


def compose_config(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def compose_with_data_file(overrides):
    """A data option that reads a file (mandatory data.path) gets its fixture, tests/fixtures/OPTION.*,
    and one validation item, since the fixtures are small."""
    cfg = compose_config(overrides)
    if not OmegaConf.is_missing(cfg.data, "path"):
        return cfg
    option = cfg.hydra.runtime.choices.data
    (fixture,) = FIXTURES.glob(f"{option}.*")
    return compose_config([*overrides, f"data.path={fixture}", "data.source.n_val=1"])


def test_every_group_has_configs():
    for group in ("algo", "ra", "method", "data", "model", "trainer", "logger", "experiment"):
        assert GROUPS.get(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize("group, option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_config_composes_and_instantiates(group, option, tmp_path):
    if group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the solopo[optuna] extra is not installed")
    cfg = compose_with_data_file([f"{group}={option}"])
    assert isinstance(instantiate(cfg.algo).needs_reference, bool)
    assert isinstance(instantiate(cfg.ra), SoLoRA)
    assert isinstance(instantiate(cfg.method), Method)
    ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))
    instantiate(cfg.data.source)
    with open_dict(cfg):
        cfg.trainer.precision = resolve_precision(cfg.trainer.precision)
        cfg.trainer.default_root_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        assert any("no CUDA GPU is visible" in p for p in check_trainer(dict(cfg.trainer), gpu_visible=False))
    else:
        assert isinstance(instantiate(trainer_arguments(cfg), logger=False), pl.Trainer)
    if cfg.logger and "_target_" in cfg.logger:
        cfg.logger.save_dir = str(tmp_path)
        assert instantiate(cfg.logger) is not None


def test_a_data_file_option_without_a_path_stops_in_one_line(tmp_path):
    done = run_here(["data=musique", "experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path}"], expect=2)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: data=musique needs data.path=FILE (see conf/data/musique.yaml)"


def test_algorithms_declare_whether_they_need_a_reference():
    needs = {name: instantiate(compose_config([f"algo={name}"]).algo).needs_reference for name in GROUPS["algo"]}
    assert needs == {"cdpo": True, "dpo": True, "ipo": True, "orpo": False, "simpo": False}


@pytest.mark.parametrize("algo, name", [("simpo", "SimPO"), ("orpo", "ORPO")])
def test_a_live_reference_for_a_reference_free_algorithm_is_refused(algo, name):
    """reference=live with SimPO or ORPO loaded no reference and said nothing: the run went on as if it were cached.
    The reference-needing algorithms take it; the default, cached, is every algorithm's."""
    with pytest.raises(ConfigError) as refused:
        build_settings(compose_config(["experiment=smoke", f"algo={algo}", "reference=live"]))
    assert str(refused.value) == (f"reference=live: {name} is reference-free (it needs no reference model), so no "
                                  "reference would run; drop reference=live, or choose an algorithm that uses one "
                                  "(e.g. algo=dpo)")
    assert build_settings(compose_config(["experiment=smoke", "algo=dpo", "reference=live"])).algo.needs_reference
    build_settings(compose_config(["experiment=smoke", f"algo={algo}", "reference=cached"]))


def test_ra_variants():
    ra = {name: instantiate(compose_config([f"ra={name}"]).ra) for name in GROUPS["ra"]}
    assert ra["chosen"].responses == ("chosen",) and ra["chosen"].alpha > 0
    assert ra["both"].responses == ("chosen", "rejected")
    assert ra["off"].alpha == 0


def test_smoke_only_shrinks_sizes():
    """experiment=smoke keeps the algorithm, ra, method and data chosen on the command line."""
    cfg = compose_config(["experiment=smoke", "algo=orpo", "ra=both", "method=long_po", "ra.alpha=3"])
    assert cfg.algo._target_.endswith("ORPO") and cfg.method.name == "long_po"
    assert cfg.ra.alpha == 3 and cfg.ra.responses == ["chosen", "rejected"]
    assert cfg.model.random_init is not None and cfg.data.pairs == "gold"


def test_tiny_model_instantiates(tmp_path):
    spec = ModelSpec(**OmegaConf.to_container(compose_config(["model=tiny"]).model, resolve=True))
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)


# The settings class each config key builds; algo, ra and method name theirs in _target_.
SETTINGS_OF = {"algo": None, "ra": None, "method": None, "model": ModelSpec, "optim": OptimSettings,
               "eval": EvalSettings, "data.sampling": SamplingSettings}


@pytest.mark.parametrize("group, option", [(g, o) for g in ("algo", "ra", "method", "model", "eval", "data")
                                           for o in GROUPS[g]])
def test_each_default_is_written_once(group, option):
    """A settings field that a config group writes has no default in its dataclass: the group owns every default a
    user can set (with its reason beside it); the dataclass keeps only the defaults of fields no config writes."""
    cfg = compose_with_data_file([f"{group}={option}"])
    for key, settings in SETTINGS_OF.items():
        node = OmegaConf.select(cfg, key)
        if node is None:  # a data option without sampling settings
            continue
        settings = settings or get_class(node._target_)
        defaults = {f.name for f in dataclasses.fields(settings)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        twice = sorted(defaults & set(node))
        assert not twice, f"{key}.{twice}: written in solopo/conf and as defaults of {settings.__name__}"


def test_a_config_that_leaves_out_a_setting_names_the_key():
    """data=longbench writes no sampling settings: asking it for sampled pairs says so, and a sampling block of one's
    own that leaves keys out names them, in one line, where dataclass defaults used to fill them in silently."""
    cfg = compose_with_data_file(["data=longbench", "data.pairs=sampled"])
    with pytest.raises(ConfigError, match=r"^data\.pairs=sampled: data=longbench has no data\.sampling block"):
        build_settings(cfg)
    cfg = compose_with_data_file(["data=longbench", "data.pairs=sampled"])
    with open_dict(cfg):  # a block of one's own config (the command line's alone is answered with the one to add)
        cfg.data.sampling = {"k": 8}
    with pytest.raises(ConfigError, match=r"^data\.sampling: missing temperature, max_new_tokens, batch_size, "
                                          "batch_tokens, static_cache, half_weights, seed, engine, scorer; SamplingSettings needs them"):
        build_settings(cfg)


@pytest.mark.parametrize("overrides, epochs", [([], 1), (["trainer.max_steps=12"], -1),
                                               (["trainer.max_steps=12", "trainer.max_epochs=2"], 2),
                                               (["trainer.max_epochs=3"], 3)])
def test_max_steps_alone_is_not_cut_to_one_epoch(overrides, epochs):
    """trainer.max_steps=12 on 4 steps' worth of pairs trained 4 steps: the default max_epochs=1 ended the fit first,
    in silence, where TRL's max_steps wins over its epochs."""
    assert trainer_arguments(compose_config(overrides)).max_epochs == epochs


@pytest.mark.parametrize("key, given, hint", [
    ("", {"lr": 1e-6}, "optim.lr"), ("", {"learning_rate": 1e-6}, "optim.lr"), ("", {"batch_size": 2}, "data.batch_size"),
    ("data.", {"max_length": 4096}, "model.max_length"), ("", {"sed": 1}, "seed"),
    ("", {"beta": 0.1}, "algo.beta (TRL's ORPO beta is algo.lam)"), ("", {"simpo_gamma": 0.5}, "algo.gamma"),
    ("", {"model_name_or_path": "m"}, "model.name"), ("", {"save_steps": 5}, "checkpoint.every_n_steps"),
    ("data.", {"n_val": 2}, "data.source.n_val"), ("", {"n_val": 2}, "data.source.n_val"),
    ("data.", {"n_train": 2}, "data.source.n_train")])
def test_an_unknown_key_gets_the_runs_key_for_a_name_trl_gives_it(key, given, hint):
    """lr, learning_rate and batch_size got "reads no such key" alone, and so did TRL's top-level beta, simpo_gamma,
    model_name_or_path and save_steps; names spelt like none of solopo's keys still get the closest one (sed: seed),
    and a group's key its closest spelling (optim.beta: betas, not algo.beta)."""
    from solopo.settings.keys import ROOT_KEYS, unread

    (problem,) = unread(key, given, ROOT_KEYS, "solopo")
    assert problem.endswith(f"reads no such key; did you mean {hint}?"), problem


@pytest.mark.parametrize("group, target, option, hint", [
    ("trainer", pl.Trainer, "epochs", "trainer.max_epochs"),  # min_epochs, by spelling
    ("trainer", pl.Trainer, "gradient_accumulation_steps", "trainer.accumulate_grad_batches"),
    ("algo", "solopo.core.algos.DPO", "label_smoothing", "algo=cdpo (its algo.label_smoothing)"),
    ("optim", "solopo.training.module.OptimSettings", "beta", "betas")])  # TRL's top-level beta is algo.beta
def test_an_unknown_option_gets_the_runs_key_for_a_name_trl_gives_it(group, target, option, hint):
    from solopo.settings.groups import unknown_options

    target = get_class(target) if isinstance(target, str) else target
    (problem,) = unknown_options(group, target, {option: 1})
    assert problem.endswith(f"takes no such option; did you mean {hint}?"), problem


def test_a_validation_metric_to_optimise_needs_a_validation_split():
    """optimized_metric=val/loss with data.source.n_val=0 trained the whole run, then stopped with status 2: the run
    had no such metric. It stops before anything loads, in one line."""
    cfg = compose_config(["experiment=smoke", "data.source.n_val=0", "optimized_metric=val/loss"])
    with pytest.raises(ConfigError, match=r"^optimized_metric=val/loss: data.source.n_val=0 asks for no validation "
                                          "split, so no val/ metric is reported; keep validation items or name an "
                                          "eval/ metric$"):
        build_settings(cfg)
    build_settings(compose_config(["experiment=smoke", "data.source.n_val=0"]))
