"""Greedy evaluation (solopo.eval.longctx.greedy_answers, the transformers engine) of one model in three precisions:

    python experiments/efficiency/inference_bench.py --models qwen2.5-1.5b --lengths 4096,16384 --prompts 8

- `fp32`: fp32 weights, trainer.precision=32-true (how the fp32 presets evaluated before inference took the
  trainer's autocast);
- `fp32+autocast`: the same weights under bf16-mixed's autocast (what a run with the fp32 presets does on a GPU);
- `bf16`: the weights cast to bf16 (model.dtype=bfloat16).

Per cell: seconds per prompt (after a warm-up batch), prompt tokens per second, peak GPU memory, and how many
answers equal the fp32 ones. One process, random weights drawn once (the 7B/8B presets cost what their shapes
cost), prompts of random tokens; answers run to max_new_tokens, as random weights seldom end their turn.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from common import (DEVICE, environment, has_row, is_oom, peak, previous_rows, put_row, random_ids, release,
                    reset_peak, shape_model, sync, write_table)
from solopo.data.tokenize import encode_prompt
from solopo.eval.longctx import greedy_answers
from solopo.models.loading import ModelSpec, load_model, load_tokenizer

# variant: (weight dtype, trainer precision); fp32 first: the others' answers are compared with its
VARIANTS = {"fp32": (torch.float32, "32-true"), "fp32+autocast": (torch.float32, "bf16-mixed"),
            "bf16": (torch.bfloat16, "bf16-mixed")}
COLUMNS = ["model", "variant", "length", "prompts", "prompt_tokens", "status", "s_per_prompt", "prompt_tokens_per_s",
           "peak_gib", "same_answers"]


def prompts_of(tokenizer, length: int, n: int, seed: int = 0) -> list[str]:
    """n user messages of about ``length`` tokens each, random tokens decoded to text."""
    generator = torch.Generator().manual_seed(seed)
    return [tokenizer.decode(random_ids(length, generator, vocab=len(tokenizer) - 1000)) for _ in range(n)]


def answer(model, tokenizer, prompts, args, precision: str) -> tuple[list[str], float]:
    """The answers and the seconds they took, after a warm-up batch of the same length."""
    greedy_answers(model, tokenizer, prompts[: args.batch_size], args.max_new_tokens, args.batch_size,
                   desc="warm-up", precision=precision)
    sync()
    started = time.perf_counter()
    answers = greedy_answers(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, precision=precision)
    sync()
    return answers, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--models", type=names, default=["qwen2.5-1.5b"])
    parser.add_argument("--variants", type=names, default=list(VARIANTS), help=", ".join(VARIANTS))
    parser.add_argument("--lengths", type=ints, default=[4096, 16384])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out and measure the rest")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.variants != [v for v in VARIANTS if v in args.variants]:
        parser.error(f"--variants: some of {', '.join(VARIANTS)}, in that order (bf16 casts the weights)")

    meta = {**environment(), "command": "python " + " ".join(sys.argv), "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "engine": "transformers", "attention": "sdpa"}
    rows = previous_rows(args.out, "inference_precision", args.resume)
    for name in args.models:
        cells = [(v, n) for v in args.variants for n in args.lengths
                 if not has_row(rows, model=name, variant=v, length=n, prompts=args.prompts)]
        if not cells:
            print(f"{name}: every cell is in {args.out} already (--resume)", flush=True)
            continue
        spec = ModelSpec(**{**shape_model(name), "tokenizer": "embedded:smollm2-135m-instruct", "dtype": "float32",
                            "max_length": 1 << 21})
        tokenizer = load_tokenizer(spec)
        model = load_model(spec, tokenizer, seed=0).to(DEVICE)
        reference: dict[int, list[str]] = {}
        for variant, length in cells:
            dtype, precision = VARIANTS[variant]
            model.to(dtype)
            prompts = prompts_of(tokenizer, length, args.prompts)
            tokens = sum(len(encode_prompt(tokenizer, p)) for p in prompts)
            row = {"model": name, "variant": variant, "length": length, "prompts": args.prompts,
                   "prompt_tokens": tokens // args.prompts}
            reset_peak()
            try:
                answers, seconds = answer(model, tokenizer, prompts, args, precision)
            except Exception as err:  # a cell that does not fit is a result; anything else stops the run
                if not is_oom(err):
                    raise
                put_row(rows, {**row, "status": "OOM"}, "model", "variant", "length", "prompts")
            else:
                if variant == "fp32":
                    reference[length] = answers
                same = (sum(a == b for a, b in zip(answers, reference[length]))
                        if variant != "fp32" and length in reference else None)  # None: fp32 itself, or not measured now
                put_row(rows, {**row, "status": "ok", "s_per_prompt": seconds / args.prompts,
                               "prompt_tokens_per_s": tokens / seconds, "peak_gib": peak() / 2**30,
                               "same_answers": same}, "model", "variant", "length", "prompts")
            print(rows[-1], flush=True)
            release()
            write_table(args.out, "inference_precision", rows, COLUMNS, meta)
        del model
        release()


if __name__ == "__main__":
    main()
