"""Evaluate a model on long-context QA across lengths and evidence depths, from the Hydra config in conf/.

    python -m solopo.evaluate                                   # the embedded default model
    python -m solopo.evaluate model.name=/path/to/checkpoint eval.lengths=[short,1024,2048,4096]
    python -m solopo.evaluate eval=longbench eval.benchmark.path=/data/LongBench/data   # or eval=ruler

Writes results.json (the table), eval_*.png and prints the table; with a benchmark (eval=longbench, eval=ruler),
its table per subset and their average instead. `python -m solopo.run` runs the
same evaluation before and after training. Installed, the same entry is the console script `solopo-eval`.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from solopo.preflight import preflight
from solopo.training.results import redact, write_results

log = logging.getLogger("solopo")


def evaluate(cfg: DictConfig) -> None:
    from solopo.eval.runner import Evaluation, eval_items, write_outputs
    from solopo.settings.build import build_settings, load_source, vllm_args

    settings = build_settings(cfg, training=False)  # a config mistake stops here, in one line, before the model loads
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if settings.benchmark is not None:
        return evaluate_benchmark(cfg, settings, run_dir)
    items, pool = eval_items(load_source(cfg), cfg.eval.n_items)  # a malformed data file stops before the model loads
    spec = settings.model
    tokenizer, model = loaded(settings, cfg.seed)
    evaluation = Evaluation(tokenizer, items, pool, settings.eval, spec.max_length, engine_args=vllm_args(cfg))
    table = evaluation(model, "model")
    outputs = write_outputs({"model": table}, run_dir)
    write_results(run_dir, {"config": redact(OmegaConf.to_container(cfg, resolve=True)), "eval": {"model": table},
                            "plots": outputs["plots"]})
    print(outputs["markdown"])
    print(f"results: {run_dir / 'results.json'}")
    log.info("plots: %s", json.dumps(outputs["plots"]))


def loaded(settings, seed: int):
    """The tokenizer and the model, on the GPU where there is one (a vLLM engine loads its own copy there)."""
    import torch

    from solopo.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(settings.model)
    model = load_model(settings.model, tokenizer, seed=seed)
    if settings.eval.engine == "transformers":
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    return tokenizer, model


def evaluate_benchmark(cfg: DictConfig, settings, run_dir: Path) -> None:
    """eval.benchmark's table: a score per subset and their average, printed and in results.json."""
    from solopo.data.formats import DataFileError
    from solopo.eval.longbench import format_benchmark, run_benchmark
    from solopo.settings.build import ConfigError, vllm_args

    try:
        subsets = settings.benchmark.load()  # a missing file or a malformed record stops before the model loads
    except DataFileError as err:
        raise ConfigError(str(err)) from None
    tokenizer, model = loaded(settings, cfg.seed)
    table = run_benchmark(settings.benchmark, subsets, model, tokenizer, settings.eval, settings.model.max_length,
                          vllm_args(cfg))
    write_results(run_dir, {"config": redact(OmegaConf.to_container(cfg, resolve=True)), "benchmark": {"model": table}})
    print(format_benchmark({"model": table}))
    print(f"results: {run_dir / 'results.json'}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra's task function. Torch and the package load from here on: Hydra answers --help, --cfg and shell
    completion before they do."""
    from solopo.settings.build import stop_on_config_errors
    from solopo.training.loggers import quiet_libraries

    quiet_libraries()
    with stop_on_config_errors():
        evaluate(cfg)


def entry() -> None:
    """The console script solopo-eval (and python -m solopo.evaluate): the command line's preflight checks, then
    Hydra."""
    preflight(sys.argv[1:])
    main()


if __name__ == "__main__":
    entry()
