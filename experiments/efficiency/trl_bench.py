"""The same measurement for TRL's trainers on the long contexts: the field's default for long-context PO.

    python experiments/efficiency/trl_bench.py --models qwen2.5-1.5b,smollm2 --lengths 16384,32768,65536 \
        --max-lengths 131072,262144

DPOTrainer (reference log-probs precomputed, as TRL's `precompute_ref_log_probs=True`) and, for
SimPO, the CPO trainer with loss_type="simpo"; the models of bench.py (a random Qwen2.5-1.5B shape, the
embedded SmolLM2-135M), bf16 weights, gradient checkpointing, one pair of `--response`-token responses per
step: Long-PO as TRL runs it. Then the longest context TRL's DPO trains at, among --max-lengths.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from datasets import Dataset
from transformers import TrainerCallback

from common import (DEVICE, PROBE, Shape, environment, has_row, is_oom, peak, previous_rows, put_row, release, reset_peak,
                    sync, write_table)
from cells import load_policy, model_spec
from solopo.models.loading import ModelSpec, load_tokenizer

WORDS = " the of and to in is was for on that with as by at from his her it an are were which this be or".split()


def text_of(tokenizer, n_tokens: int, rng: random.Random) -> str:
    """Plain text that the tokenizer reads as exactly n_tokens tokens."""
    words = [" " + rng.choice(WORDS) for _ in range(n_tokens)]
    while True:
        n = len(tokenizer("".join(words), add_special_tokens=False)["input_ids"])
        if n == n_tokens:
            return "".join(words)
        words = words[: n_tokens - n] if n > n_tokens else words + [" " + rng.choice(WORDS)] * (n_tokens - n)


class StepTimer(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self.peak, self._start = warmup, [], 0.0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        sync()
        if state.global_step == self.warmup:
            reset_peak()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        if state.global_step > self.warmup:
            self.times.append(time.perf_counter() - self._start)
            self.peak = peak() / 2**30


def make_trainer(algo: str, model, tokenizer, dataset, steps: int, out: str, callback, length: int):
    """TRL's trainer for ``algo``, nothing truncated: DPOConfig takes max_length=None as no limit, CPOConfig as 512
    (which left the SimPO cells' responses empty behind their long prompts), so CPO gets twice the pair's length."""
    common = dict(output_dir=out, per_device_train_batch_size=1, max_steps=steps, learning_rate=1e-7, bf16=DEVICE == "cuda",
                  gradient_checkpointing=True, logging_steps=10_000, save_strategy="no", report_to=[],
                  dataloader_num_workers=0)
    if algo == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(precompute_ref_log_probs=True, beta=0.1, max_length=None, **common)
        return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[callback])
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=1.0, max_length=2 * length,  # simpo.yaml's
                     **common)
    return CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[callback])


def measure(algo: str, spec: ModelSpec, tokenizer, length: int, response: int, warmup: int, steps: int):
    """The cell's row fields, and the model's config (None when it did not load)."""
    rng = random.Random(0)
    rows = [{"prompt": text_of(tokenizer, length - response, rng), "chosen": text_of(tokenizer, response - 1, rng),
             "rejected": text_of(tokenizer, response - 1, rng)} for _ in range(warmup + steps)]
    timer = StepTimer(warmup)
    model = config = None
    try:
        model = load_policy(spec, tokenizer)
        config = model.config
        with tempfile.TemporaryDirectory() as out:
            # An explicit fingerprint skips datasets' hashing of the table (it fails on some pyarrow/dill pairs).
            dataset = Dataset(pa.Table.from_pylist(rows), fingerprint=f"bench-{length}")
            make_trainer(algo, model, tokenizer, dataset, warmup + steps, out, timer, length).train()
    except Exception as err:  # noqa: BLE001 (an OOM surfaces as several exception types)
        if not is_oom(err):
            raise
        return {"status": "OOM"}, config
    finally:
        del model
        release()
    step_s = sum(timer.times) / len(timer.times)
    return {"status": "ok", "step_s": step_s, "peak_gib": timer.peak}, config


def cells(args, name: str, rows: list[dict]):
    """The cells of ``name`` still to measure, as (length, algo, warm-up steps, timed steps, is a longer context).
    A generator: it reads ``rows`` as they grow, so the longer contexts stop at the first that did not train."""
    for length in args.lengths + args.max_lengths:
        longer = length not in args.lengths
        if longer and any(r["model"] == name and r["trainer"] == "trl-dpo" and r["long_len"] in args.max_lengths
                          and r["long_len"] < length and r.get("status") != "ok" for r in rows):
            return  # a shorter one already failed
        # A longer context gets one warm-up step first: AdamW's state, created by a run's first step, is then
        # resident as in every later step (bench.py's probe holds it too); rows of one-step probes are redone.
        warmup, steps = (1, 1) if longer else (args.warmup, args.steps)
        for algo in ["dpo"] if longer else args.algos:
            if not has_row(rows, model=name, trainer=f"trl-{algo}", long_len=length,
                           **({"warmup_steps": warmup, **PROBE} if longer else {})):
                yield length, algo, warmup, steps, longer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--models", type=names, default=["qwen2.5-1.5b", "smollm2"])
    parser.add_argument("--algos", type=names, default=["dpo", "simpo"])
    parser.add_argument("--response", type=int, default=64)
    parser.add_argument("--lengths", type=ints, default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--max-lengths", type=ints, default=[131072, 262144],
                        help="longer contexts tried with DPO (a warm-up step, then one timed) until the first that "
                             "does not train")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out and measure the rest")
    args = parser.parse_args()

    import trl

    meta = {**environment(), "trl": trl.__version__, "command": "python " + " ".join(sys.argv),
            "response_len": args.response, "precision": "bf16 weights", "gradient_checkpointing": True}
    rows = previous_rows(args.out, "trl_long_po", args.resume)
    for name in args.models:
        if next(cells(args, name, rows), None) is None:
            print(f"{name}: every cell is in {args.out} already (--resume)", flush=True)
            continue  # not even loaded: SmolLM2's tokenizer needs the embedded model's cache
        spec = model_spec(name)
        tokenizer = load_tokenizer(spec)
        shape = None
        for length, algo, warmup, steps, longer in cells(args, name, rows):
            cell, config = measure(algo, spec, tokenizer, length, args.response, warmup, steps)
            shape = shape or (config and Shape.of(config))
            if cell["status"] == "ok":
                cell.update(tokens_per_s=2 * length / cell["step_s"],
                            tflops=2 * shape.train_flops(length, args.response) / cell["step_s"] / 1e12)
            put_row(rows, {"model": name, "trainer": f"trl-{algo}", "long_len": length, "tokens": 2 * length,
                           "warmup_steps": warmup, **(PROBE if longer else {}), **cell}, "model", "trainer", "long_len")
            print(rows[-1], flush=True)
            write_table(args.out, "trl_long_po", rows, ["model", "trainer", "long_len", "tokens", "warmup_steps", "status",
                        "step_s", "tokens_per_s", "tflops", "peak_gib"], meta)


if __name__ == "__main__":
    main()
