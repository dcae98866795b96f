"""Context parallelism (trainer.context_parallel) on several GPUs: the longest long context, the step time and peak
memory with and without it, and the first step's loss and gradient norm against one GPU.

    python experiments/efficiency/cp_bench.py --models qwen2.5-1.5b,qwen2.5-7b --lengths 65536,131072 --layouts 1x1,2x1,2x2
    python experiments/efficiency/cp_bench.py --probe --models qwen2.5-7b --layouts 1x1,2x2 --lengths 32768,1048576

A layout NxC is N GPUs, C of them sharing each long context (C = 1: FSDP alone, every GPU its own pair; C = N: one
pair per step, split over all). Each cell is one `torchrun --nproc-per-node N` of this script's worker, which
trains SoLo-DPO (chosen-only, alpha 1, cached reference log-probs) on random-token pairs (short 1,024 tokens,
responses of 64) through Lightning's Trainer with solopo's FSDP2Strategy and SoLoPOModule, as `python -m solopo.run
trainer=fsdp` builds them: bf16-mixed, gradient checkpointing. Every GPU of a layout sees the same pair, so the
first step's loss and gradient norm of every layout are those of one GPU (columns loss_rel_diff and
grad_norm_rel_diff); step_s is the mean of the steps after --warmup, speedup is the one-GPU step time over this
layout's, per pair (a layout of C < N trains N / C pairs a step), and peak_gib is torch.cuda.max_memory_allocated on
rank 0. --probe doubles the long context from the first of --lengths up to the last while it fits, per model and
layout (table cp_longest). A cell that runs out of memory on one rank can leave the others waiting: the driver stops
it after --timeout seconds. NVLink multicast stays off (scaling.py's NO_MULTICAST).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from cells import make_pair, model_spec
from common import (StepClock, environment, has_row, is_oom, logp_chunk_size, matching, previous_rows, put_row,
                    shipped, write_table)
from scaling import NO_MULTICAST, ROOT
from solopo.core.algos import DPO
from solopo.core.objective import Method, SoLoRA, required_sequences
from solopo.data.collate import PairCollator
from solopo.models.loading import load_model, load_tokenizer
from solopo.step.context_parallel import NAME, ContextSplit
from solopo.training.distributed import FSDP2Strategy
from solopo.training.module import OptimSettings, SoLoPOModule

COLUMNS = ["model", "long", "layout", "status", "step_s", "speedup", "peak_gib", "first_loss", "loss_rel_diff",
           "grad_norm", "grad_norm_rel_diff", "seconds"]


def run_cell(args, model: str, long: int, layout: str) -> dict:
    """One torchrun of the worker; its result, or the status of a run that did not finish."""
    devices, context = map(int, layout.split("x"))
    out = args.root / f"{model}-{long}-{layout}.json"
    out.unlink(missing_ok=True)
    command = ["torchrun", "--standalone", f"--nproc-per-node={devices}", __file__, "--worker", "--models", model,
               "--lengths", str(long), "--layouts", layout, "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--root", str(args.root)]
    env = dict(os.environ, **NO_MULTICAST, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                                    os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
        log = done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        log = f"timeout\n{err.stdout or ''}{err.stderr or ''}"
    seconds = round(time.monotonic() - started, 1)
    if out.exists():
        return {**json.loads(out.read_text()), "seconds": seconds}
    status = "OOM" if "out of memory" in str(log).lower() else "timeout" if log.startswith("timeout") else "failed"
    if status == "failed":
        print(str(log)[-4000:], flush=True)
    return {"status": status, "seconds": seconds}


def compare(rows: list[dict]) -> None:
    """Each ok row of a (model, long) cell against its one-GPU row: loss and gradient norm, speedup per pair."""
    one = next((r for r in rows if r["layout"] == "1x1" and r["status"] == "ok"), None)
    for row in rows:
        if one is None or row["status"] != "ok":
            continue
        devices, context = map(int, row["layout"].split("x"))
        row["loss_rel_diff"] = abs(row["first_loss"] - one["first_loss"]) / abs(one["first_loss"])
        row["grad_norm_rel_diff"] = abs(row["grad_norm"] - one["grad_norm"]) / one["grad_norm"]
        row["speedup"] = one["step_s"] / (row["step_s"] * context / devices)


def grid(args, meta: dict) -> None:
    table = [r for r in previous_rows(args.out, "cp_step", args.resume) if r["status"] in ("ok", "OOM")]
    for model in args.models:
        for long in args.lengths:
            for layout in args.layouts:
                key = {"model": model, "long": long, "layout": layout}
                if not has_row(table, **key):
                    put_row(table, {**key, **run_cell(args, model, long, layout)}, *key)
                    print(table[-1], flush=True)
                compare(matching(table, model=model, long=long))
                write_table(args.out, "cp_step", table, COLUMNS, meta)


def probe(args, meta: dict) -> None:
    table = previous_rows(args.out, "cp_longest", args.resume)
    for model in args.models:
        for layout in args.layouts:
            if has_row(table, model=model, layout=layout):
                continue
            longest, long = None, args.lengths[0]
            while long <= args.lengths[-1]:
                result = run_cell(args, model, long, layout)
                print({"model": model, "layout": layout, "long": long, **result}, flush=True)
                if result["status"] != "ok":
                    break
                longest, long = {"longest": long, "step_s": result["step_s"], "peak_gib": result["peak_gib"]}, long * 2
            put_row(table, {"model": model, "layout": layout, "tried_to": long, **(longest or {"longest": None})},
                    "model", "layout")
            write_table(args.out, "cp_longest", table, ["model", "layout", "longest", "tried_to", "step_s", "peak_gib"],
                        meta)


def worker(args) -> None:
    """One cell in one of torchrun's processes: fit, then rank 0 writes the cell's result to --root."""
    model, long, layout = args.models[0], args.lengths[0], args.layouts[0]
    devices, context = map(int, layout.split("x"))
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    trainer, module, clock, loader = build(model, long, devices, context, args.warmup, args.steps)
    try:
        trainer.fit(module, loader)
        result = {"status": "ok", "step_s": clock.step_s, **clock.first,
                  "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    except Exception as err:  # noqa: BLE001 (an OOM surfaces as several exception types)
        if not is_oom(err):
            raise
        result = {"status": "OOM"}
    if int(os.environ.get("RANK", 0)) == 0:
        (args.root / f"{model}-{long}-{layout}.json").write_text(json.dumps(result))
    if result["status"] == "OOM":
        os._exit(0)  # the other ranks may be waiting in a collective: leave without tearing the group down


def build(model: str, long: int, devices: int, context: int, warmup: int, steps: int):
    """The Trainer, the module, the step clock and the loader of one cell."""
    spec = dataclasses.replace(model_spec(model), attn_implementation=NAME if context > 1 else "sdpa")
    tokenizer = load_tokenizer(spec)
    method, ra = Method(**shipped("method")), SoLoRA(**shipped("ra"))  # method=solopo, ra=chosen (alpha 1)
    keys = required_sequences(method, ra)
    with torch.device("cuda"):  # drawn on the GPU from seed 0: the same weights on every rank
        policy = load_model(spec, tokenizer, seed=0)
    module = SoLoPOModule(policy, DPO(beta=0.1), ra, method, cached_reference=True,
                          optim=OptimSettings(**{**shipped("optim"), "lr": 1e-6}), logp_chunk_size=logp_chunk_size(),
                          context=ContextSplit(size=context, min_tokens=None))
    loader = DataLoader([make_pair(1024, long, 64)] * (warmup + steps), batch_size=1,
                        collate_fn=PairCollator(keys, tokenizer.pad_token_id))
    clock = StepClock(warmup, first={"first_loss": "train/loss", "grad_norm": "train/grad_norm"})
    trainer = pl.Trainer(accelerator="gpu", devices=devices, strategy=FSDP2Strategy(context_parallel=context),
                         precision="bf16-mixed", max_steps=warmup + steps, gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[clock], use_distributed_sampler=False)
    return trainer, module, clock, loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--models", type=names, default=["qwen2.5-1.5b", "qwen2.5-7b"], help="bench.py's names")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in names(s)], default=[65536, 131072])
    parser.add_argument("--layouts", type=names, default=["1x1", "2x1", "2x2"], help="GPUs x context-parallel")
    parser.add_argument("--probe", action="store_true", help="the longest context per model and layout instead")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per cell")
    parser.add_argument("--root", type=Path, default=Path("/tmp/solopo-cp"), help="the cells' results")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--resume", action="store_true", help="keep the cells already in --out")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one cell, under torchrun
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args)
    if not torch.cuda.is_available():
        raise SystemExit("cp_bench.py measures GPU memory and time: run it on CUDA GPUs")
    meta = {**environment(), "gpus": torch.cuda.device_count(), "command": "python " + " ".join(sys.argv),
            "warmup": args.warmup, "steps": args.steps, "nccl": NO_MULTICAST}
    (probe if args.probe else grid)(args, meta)


if __name__ == "__main__":
    main()
