"""trainer=fsdp on one GPU: step time and peak memory of SoLoPO through Lightning, with the reference log-probs
cached against a live reference model sharded with the policy, next to the plain single-device strategy.

    python experiments/efficiency/fsdp_bench.py --models smollm2,qwen2.5-1.5b --lengths 16384,32768

Every cell trains SoLo-DPO (chosen-only, alpha 1) on one pair per step (short context 1,024 tokens, responses of 64)
with Lightning's Trainer exactly as `python -m solopo.run` builds it: bf16-mixed, gradient checkpointing, fused AdamW;
`fsdp` is solopo.training.distributed.FSDP2Strategy (each decoder layer one FSDP2 unit), `single` Lightning's default.
Peak memory is torch.cuda.max_memory_allocated over the timed steps, model and optimizer included.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from cells import make_pair, model_spec
from common import DEVICE, Shape, StepClock, environment, is_oom, logp_chunk_size, release, shipped, write_table
from solopo.core.algos import DPO
from solopo.data.collate import PairCollator
from solopo.training.distributed import FSDP2Strategy
from solopo.models.loading import freeze, load_model, load_tokenizer
from solopo.training.module import OptimSettings, SoLoPOModule, intended_warnings_silenced
from solopo.core.objective import Method, SoLoRA, required_sequences


def cell(model_name: str, long: int, strategy: str, reference: str, warmup: int, steps: int) -> dict:
    spec = model_spec(model_name)
    tokenizer = load_tokenizer(spec)
    method, ra = Method(**shipped("method")), SoLoRA(**shipped("ra"))  # method=solopo, ra=chosen (alpha 1)
    keys = required_sequences(method, ra)
    pair = make_pair(1024, long, 64)
    if reference == "live":
        pair = dataclasses.replace(pair, ref_logps=None)
    loader = DataLoader([pair] * (warmup + steps), batch_size=1, collate_fn=PairCollator(keys, tokenizer.pad_token_id))
    with torch.device(DEVICE):  # a random model initialised on the GPU: a minute less per model than on the CPU
        policy = load_model(spec, tokenizer, seed=0)
        live = freeze(load_model(spec, tokenizer, seed=0)) if reference == "live" else None
    module = SoLoPOModule(policy, DPO(beta=0.1), ra, method, reference=live, cached_reference=reference == "cached",
                          optim=OptimSettings(**{**shipped("optim"), "lr": 1e-6}), logp_chunk_size=logp_chunk_size())
    shape = Shape.of(policy.config)
    clock = StepClock(warmup)
    trainer = pl.Trainer(accelerator="gpu", devices=1, strategy=FSDP2Strategy() if strategy == "fsdp" else "auto",
                         precision="bf16-mixed", max_steps=warmup + steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
                         use_distributed_sampler=False)
    try:
        with intended_warnings_silenced():
            trainer.fit(module, loader)
    except Exception as err:  # noqa: BLE001 (an OOM surfaces as several exception types)
        if not is_oom(err):
            raise
        return {"status": "OOM"}
    finally:
        del module, policy, live, trainer
        release()
    step_s = clock.step_s
    lengths = {"short": 1024, "long": long}
    flops = sum(shape.train_flops(lengths[context], 64) for context, _ in keys)
    return {"status": "ok", "step_s": step_s, "tokens_per_s": sum(lengths[c] for c, _ in keys) / step_s,
            "tflops": flops / step_s / 1e12, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,qwen2.5-1.5b")
    parser.add_argument("--lengths", default="16384,32768")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if DEVICE != "cuda":
        raise SystemExit("fsdp_bench.py measures GPU memory and time: run it on a CUDA GPU")
    meta = {"command": " ".join(["python", *sys.argv]), **environment()}
    rows = []
    for model_name in args.models.split(","):
        for long in map(int, args.lengths.split(",")):
            for strategy, reference in (("single", "cached"), ("fsdp", "cached"), ("single", "live"), ("fsdp", "live")):
                row = {"model": model_name, "long": long, "strategy": strategy, "reference": reference,
                       **cell(model_name, long, strategy, reference, args.warmup, args.steps)}
                print(row, flush=True)
                rows.append(row)
                write_table(args.out, "fsdp_one_gpu", rows, ["model", "long", "strategy", "reference", "status",
                                                               "step_s", "tokens_per_s", "tflops", "peak_gib"], meta)


if __name__ == "__main__":
    main()
