"""Evaluate a model on long-context QA across lengths and evidence depths, from the Hydra config in conf/.

    python -m solopo.evaluate                                   # the embedded default model
    python -m solopo.evaluate model.name=/path/to/checkpoint eval.lengths=[short,1024,2048,4096]

Writes results.json (the table), eval_*.png and prints the table. `python -m solopo.run` runs the
same evaluation before and after training.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from solopo.eval.longctx import EvalSettings
from solopo.eval.runner import Evaluation, eval_items, write_outputs
from solopo.models.loading import ModelSpec, load_model, load_tokenizer
from solopo.training.precision import resolve_precision
from solopo.training.results import redact, refuse_secrets, write_results
from solopo.validate import load_source, validate_config
from solopo.generation.vllm_engine import import_vllm

log = logging.getLogger("solopo")


def eval_settings(cfg: DictConfig) -> EvalSettings:
    """The evaluation settings, prompted with the training template (data.template) and computed under the
    trainer's precision (trainer.precision); eval.engine=vllm without vllm installed stops here, in one line."""
    fields = OmegaConf.to_container(cfg.eval, resolve=True)
    settings = EvalSettings(lengths=tuple(fields["lengths"]), depths=tuple(fields["depths"]),
                            max_new_tokens=fields["max_new_tokens"], batch_size=fields["batch_size"], seed=cfg.seed,
                            template=cfg.data.get("template", "direct"), engine=fields.get("engine", "transformers"),
                            precision=resolve_precision(cfg.trainer.precision))
    if settings.engine == "vllm":
        try:
            import_vllm("eval.engine")
        except RuntimeError as err:
            raise SystemExit(str(err)) from None
    return settings


def vllm_args(cfg: DictConfig) -> dict:
    """eval.vllm: further vllm.LLM arguments for eval.engine=vllm."""
    return OmegaConf.to_container(cfg.eval.vllm, resolve=True) if cfg.eval.get("vllm") else {}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    validate_config(cfg, training=False)  # a config mistake stops here, in one line, before the model loads
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    settings = eval_settings(cfg)
    items, pool = eval_items(load_source(cfg), cfg.eval.n_items)  # a malformed data file stops before the model loads
    spec = ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer, seed=cfg.seed)
    if settings.engine == "transformers":  # a vLLM engine loads its own copy on the GPU
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    table = Evaluation(tokenizer, items, pool, settings, spec.max_length, engine_args=vllm_args(cfg))(model, "model")
    outputs = write_outputs({"model": table}, run_dir)
    write_results(run_dir, {"config": redact(OmegaConf.to_container(cfg, resolve=True)), "eval": {"model": table},
                            "plots": outputs["plots"]})
    print(outputs["markdown"])
    print(f"results: {run_dir / 'results.json'}")
    log.info("plots: %s", json.dumps(outputs["plots"]))


if __name__ == "__main__":
    refuse_secrets(sys.argv[1:])  # before Hydra writes the overrides to .hydra/
    main()
