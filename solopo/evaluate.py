"""Evaluate a model on long-context QA across lengths and evidence depths, from the Hydra config in conf/.

    python -m solopo.evaluate                                   # the embedded default model
    python -m solopo.evaluate model.name=/path/to/checkpoint eval.lengths=[short,1024,2048,4096]
    python -m solopo.evaluate eval=longbench eval.benchmark.path=/data/LongBench/data   # or eval=ruler

Writes results.json (the table), eval_*.png and prints the table; with a benchmark (eval=longbench, eval=ruler),
its table per subset and their average instead. `python -m solopo.run` runs the same evaluation, built by the same
code, before and after training. Installed, the same entry is the console script `solopo-eval`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from solopo.job_checks import values_checked
from solopo.preflight import preflight
from solopo.training.results import record_interrupt, redact, where_it_ran, write_results

log = logging.getLogger("solopo")


def evaluate(cfg: DictConfig) -> None:
    """The evaluation the eval group describes (solopo.eval.runner.make_evaluation, as a training run builds it), on
    one model: its table printed, in results.json and, for held-out questions, plotted."""
    import torch

    from solopo.eval.runner import NoHeldOutQuestions, make_evaluation
    from solopo.models.loading import load_tokenizer
    from solopo.settings.build import ConfigError, build_settings, load_source, refuse_missing_model, vllm_args
    from solopo.training.pairs import failed_on_data

    settings = build_settings(cfg, training=False)  # a config mistake stops here, in one line, before the model loads
    refuse_missing_model(settings.model)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # what the data gives stops the run as "bad data" (its line, and failed.json that a report lists), before the model
    with failed_on_data():
        splits = load_source(cfg) if settings.benchmark is None else None  # a benchmark brings its own questions
        tokenizer = load_tokenizer(settings.model)
        try:  # a missing or malformed benchmark file, or data without held-out questions, stops here
            evaluation = make_evaluation(tokenizer, settings.eval, settings.model.max_length, settings.benchmark,
                                         splits, cfg.eval.n_items, engine_args=vllm_args(cfg))
        except NoHeldOutQuestions as err:  # eval.enabled, which a training run's advice names, is not solopo-eval's
            raise ConfigError(f"{err}; or evaluate on a benchmark (eval=longbench or eval=ruler, with "
                              "eval.benchmark.path=PATH)") from None
        except ValueError as err:  # DataFileError among them
            raise ConfigError(str(err)) from None
        if settings.benchmark is None:
            refuse_trained_items(settings.model.name, evaluation.items)
    model = loaded_model(settings, tokenizer, cfg.seed)
    tables = {"model": evaluation(model, "model")}
    outputs = evaluation.outputs(tables, run_dir)
    device = model.device if settings.eval.engine == "transformers" else torch.device("cuda")  # vLLM's own copy
    write_results(run_dir, {"config": redact(OmegaConf.to_container(cfg, resolve=True)), **where_it_ran(device),
                            evaluation.results_key: tables, "plots": outputs["plots"]})
    print(outputs["markdown"])
    print(f"results: {run_dir / 'results.json'}")
    if outputs["plots"]:
        log.info("plots: %s", json.dumps(outputs["plots"]))


def refuse_trained_items(model: str, items: list) -> None:
    """A ConfigError, before the model loads, where ``model``'s record (solopo.data.trained_on, written with
    save_model) says it trained on some of the held-out ``items``: their scores would measure memory, not reading.
    The message names the split that held questions out of its training (data.source.n_val and seed, as the training
    run had them) rather than adopting it: a command line means the same evaluation whatever model it names. A model
    without the record (saved before it existed, a hub id) is evaluated as before."""
    from solopo.data.trained_on import read_record
    from solopo.settings.build import ConfigError

    record = read_record(model)
    seen = record.seen(items) if record is not None else []
    if not seen:
        return
    ids = ", ".join(item.id for item in seen[:6]) + (", ..." if len(seen) > 6 else "")
    n_val, seed = record.source.get("n_val"), record.source.get("seed")
    head = f"model.name={model} trained on {len(seen)} of the {len(items)} held-out questions asked ({ids})"
    if n_val:
        raise ConfigError(f"{head}; its training run held out data.source.n_val={n_val} with seed={seed}: set "
                          f"data.source.n_val={n_val} seed={seed} to evaluate on those")
    raise ConfigError(f"{head}; its training run held out none (data.source.n_val={n_val}): evaluate it on other data")


def loaded_model(settings, tokenizer, seed: int):
    """The model, on the GPU where there is one (a vLLM engine loads its own copy there)."""
    import torch

    from solopo.models.kernels import log_liger_choice
    from solopo.models.loading import load_model

    model = load_model(settings.model, tokenizer, seed=seed)
    log_liger_choice(settings.model.liger, model.config.model_type)
    if settings.eval.engine == "transformers":
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    return model


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra's task function. Torch and the package load from here on: Hydra answers --help, --cfg and shell
    completion before they do."""
    from solopo.cache import stop_on_failed_writes
    from solopo.settings.build import stop_on_config_errors
    from solopo.training.lightning_run import failure_recorded
    from solopo.training.loggers import quiet_libraries

    quiet_libraries()
    with stop_on_config_errors(), stop_on_failed_writes(), failure_recorded(cfg), interrupt_recorded(cfg):
        evaluate(cfg)


@contextlib.contextmanager
def interrupt_recorded(cfg: DictConfig):
    """A Ctrl-C ends the evaluation in one line, status 130, with failed.json saying so (results.record_interrupt):
    results.json is written only once the tables are whole."""
    try:
        yield
    except KeyboardInterrupt as err:
        record_interrupt(Path(HydraConfig.get().runtime.output_dir), err, OmegaConf.to_container(cfg, resolve=True),
                         "before its results were written")


def entry() -> None:
    """The console script solopo-eval (and python -m solopo.evaluate): the command line's preflight checks, then
    Hydra (with the values an evaluation reads checked before Hydra makes the run directory)."""
    from solopo.training.results import sweep_failures_reported

    preflight(sys.argv[1:])
    with sweep_failures_reported(), values_checked(sys.argv[1:], training=False):  # before Hydra, or after --cfg job
        main()


if __name__ == "__main__":
    entry()
