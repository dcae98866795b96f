"""Evaluate a model on long-context QA across lengths and evidence depths, from the Hydra config in conf/.

    python -m solopo.evaluate                                   # the embedded default model
    python -m solopo.evaluate model.name=/path/to/checkpoint eval.lengths=[short,1024,2048,4096]

Writes results.json (the table), eval_*.png and prints the table. `python -m solopo.run` runs the
same evaluation before and after training.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from solopo.eval.longctx import EvalSettings
from solopo.eval.runner import Evaluation, eval_items, write_outputs
from solopo.models import ModelSpec, load_model, load_tokenizer
from solopo.results import redact, write_results

log = logging.getLogger("solopo")


def eval_settings(cfg: DictConfig) -> EvalSettings:
    fields = OmegaConf.to_container(cfg.eval, resolve=True)
    return EvalSettings(lengths=tuple(fields["lengths"]), depths=tuple(fields["depths"]),
                        max_new_tokens=fields["max_new_tokens"], batch_size=fields["batch_size"], seed=cfg.seed)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    spec = ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer, seed=cfg.seed).to("cuda" if torch.cuda.is_available() else "cpu")
    items, pool = eval_items(instantiate(cfg.data.source), cfg.eval.n_items)
    table = Evaluation(tokenizer, items, pool, eval_settings(cfg), spec.max_length)(model, "model")
    outputs = write_outputs({"model": table}, run_dir)
    write_results(run_dir, {"config": redact(OmegaConf.to_container(cfg, resolve=True)), "eval": {"model": table},
                            "plots": outputs["plots"]})
    print(outputs["markdown"])
    print(f"results: {run_dir / 'results.json'}")
    log.info("plots: %s", json.dumps(outputs["plots"]))


if __name__ == "__main__":
    main()
