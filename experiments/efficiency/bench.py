"""Step time, throughput and peak memory of SoLoPO vs Long-PO (same code), per context length.

    python experiments/efficiency/bench.py --models smollm2,qwen2.5-1.5b --lengths 4096,8192,16384,32768,65536

One process measures every configuration on the same GPU: SoLoPO chosen-only (2 short + 1 long
sequence per pair), SoLoPO both-responses (2 short + 2 long) and Long-PO (2 long), for DPO
(reference log-probs precomputed) and SimPO; bf16 weights, gradient checkpointing, fused AdamW,
batch of one pair. Then the longest long context each configuration trains at, and the peak
memory of the log-prob step alone against context length. Writes markdown + json tables.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections import Counter
from pathlib import Path

import torch

from cells import (ALGOS, BEST, DEFAULTS, METHODS, VARIANTS, call_spec, load_policy, make_pair, model_options,
                   run_precision, train_step, use_variant, variant_precision)
from common import (DEVICE, PROBE, Shape, environment, has_row, is_oom, logp_chunk_size, matching, peak,
                    previous_rows, profiled, put_row, release, reset_peak, timed, write_table)
from solopo.data.collate import SHARED_PROMPT
from solopo.data.tokenize import TokenizedPair
from solopo.models.loading import load_tokenizer
from solopo.step import checkpointing
from solopo.step.largest_step import layout_tokens
from solopo.step.layout import NAMES
from solopo.step.logps import chunked_token_logps
from solopo.training.precision import autocast_dtype

RESULTS = Path(__file__).parent / "results"


def plan_memory(policy, variant: str, pair: TokenizedPair, keys, layout: bool | str) -> dict:
    """The decoder layers this cell checkpoints (DEFAULTS: model.gradient_checkpointing=auto's choice; otherwise
    all) and the predicted peak for its step in ``layout``, which the row records beside the measured one."""
    step = layout_tokens(layout, [pair], keys, 1)
    if variant == DEFAULTS:
        plan = checkpointing.auto_checkpointing(policy, [step], logp_chunk_size(), torch.device(DEVICE),
                                                autocast_dtype(run_precision()))
    else:  # the savers variant's model carries its savers, which model_shape counts
        layers = len(checkpointing.decoder_layers(policy))
        checkpointing.checkpoint_layers(policy, layers)
        plan = checkpointing.Plan(layers, layers, checkpointing.state_bytes(policy) + checkpointing.predict_activations(
            checkpointing.model_shape(policy, None), step, layers, min(step.response_total, logp_chunk_size())), None)
    return {"checkpointed_layers": plan.checkpointed, "predicted_peak_gib": plan.predicted_peak / 2**30}


def best_variant(model: str, algo: str, method: str, length: int, tables: Path = RESULTS) -> str:
    """The fastest variant the committed tables measured for this method and length (the 1.5B shape's, the only one
    with every layout measured), other than the defaults; padded where none was."""
    rows = [r for name in ("solopo_grid", "solopo_grid_packing", "solopo_grid_shared")
            if (tables / f"{name}.json").exists() for r in json.loads((tables / f"{name}.json").read_text())["rows"]]
    cells = [r for r in rows if r.get("status") == "ok" and r["algo"] == algo and r["method"] == method
             and r["long_len"] == length and r["variant"] in VARIANTS and r["variant"] != DEFAULTS]
    same_model = [r for r in cells if r["model"] == model] if any(r["model"] == model and r["variant"] != "padded"
                                                                  for r in cells) else []
    pool = same_model or [r for r in cells if r["model"] == "qwen2.5-1.5b"]
    return min(pool, key=lambda r: r["step_s"])["variant"] if pool else "padded"


def measure(step, shape: Shape, keys, lengths: dict, response: int, tokens: int, warmup: int, steps: int,
            shared: bool = False, profile: bool = False) -> dict:
    try:
        result = timed(step, warmup, steps)
        if profile:  # one more step under the profiler: the GPU's kernel time over the step's wall time
            wall, kernel_s, syncs, _ = profiled(step)
            result.update(gpu_busy=kernel_s / wall, host_syncs=syncs)
    except Exception as err:  # noqa: BLE001 (an OOM surfaces as several exception types)
        release()
        if is_oom(err):
            return {"status": "OOM"}
        traceback.print_exc()  # a kernel that does not run here (e.g. flex attention without a compiler) is a row
        return {"status": f"error: {type(err).__name__}"}
    # Per context: its n responses share one prompt (shared) or each carries its own copy.
    per_context = Counter(context for context, _ in keys)
    copied = sum(n * shape.train_flops(lengths[c], response) for c, n in per_context.items())
    flops = sum(shape.train_flops(lengths[c], response, n_responses=n) for c, n in per_context.items()) if shared else copied
    # tflop_copied: the work with a prompt per response, whatever the layout: the FLOP ratio's terms
    return {"status": "ok", **result, "tokens_per_s": tokens / result["step_s"], "tflops": flops / result["step_s"] / 1e12,
            "tflop_copied": copied / 1e12}


def grid(args, name, policy, optimizer, shape, pad_id, rows, save):
    for length in args.lengths:
        pair = make_pair(args.short, length, args.response)
        for algo_name in args.algos:
            for method_name in args.methods:
                for asked in args.variants:
                    variant = best_variant(name, algo_name, method_name, length) if asked == BEST else asked
                    if has_row(rows, model=name, algo=algo_name, method=method_name, variant=variant, long_len=length):
                        continue  # measured by an earlier call (--resume)
                    pack = use_variant(policy, variant)
                    step, keys, tokens, layout = train_step(policy, optimizer, ALGOS[algo_name], method_name, pair,
                                                            pad_id, pack, variant_precision(variant))
                    memory = plan_memory(policy, variant, pair, keys, layout)
                    cell = measure(step, shape, keys, {"short": args.short, "long": length}, args.response, tokens,
                                   args.warmup, args.steps, shared=layout == SHARED_PROMPT, profile=args.profile)
                    rows.append({"model": name, "algo": algo_name, "method": method_name, "variant": variant,
                                 "long_len": length, "short_len": args.short, "tokens": tokens, "layout": NAMES[layout],
                                 **memory, **cell})
                    print(rows[-1], flush=True)
                    save()
                    release()


def with_optimizer_state(policy, optimizer) -> None:
    """Allocate AdamW's moments now if no step has yet (they are created lazily, after the first backward): every
    step but a run's first holds them through its backward, so a one-step probe without them would under-count."""
    if not optimizer.state:
        for p in policy.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def probe_row(rows: list[dict], key: dict) -> dict | None:
    """The longest-context probe's row of ``key`` measured under this allocator setting."""
    return next(iter(matching(rows, **key, **PROBE)), None)


def probe_finished(rows: list[dict], key: dict, max_lengths: list[int]) -> bool:
    """A longest-context probe is finished once a length failed or the longest asked for trained, under this
    allocator setting; one that trained at every length it reached (cut short, or asked now for longer lengths) goes on."""
    row = probe_row(rows, key)
    return row is not None and (row["first_failure"] is not None or (row["max_long_len"] or 0) >= max(max_lengths, default=0))


def longest(args, name, policy, optimizer, shape, pad_id, rows, save):
    """The longest long context that trains (one DPO step, batch one pair, AdamW's state resident as in every step
    after a run's first) per method, in the first variant. The row is saved after every length, so a call cut short
    keeps what it measured and --resume goes on from the longest length trained."""
    pack = use_variant(policy, args.variants[0])
    with_optimizer_state(policy, optimizer)
    for method_name in args.methods:
        key = {"model": name, "method": method_name, "variant": args.variants[0]}
        if probe_finished(rows, key, args.max_lengths):
            continue
        earlier = probe_row(rows, key) or {}
        best = earlier.get("max_long_len") and {"long_len": earlier["max_long_len"], "step_s": earlier["step_s_at_max"],
                                                "peak_gib": earlier["peak_gib_at_max"]}
        for length in args.max_lengths:
            if best and length <= best["long_len"]:
                continue  # trained in an earlier call
            pair = make_pair(args.short, length, args.response)
            step, keys, tokens, layout = train_step(policy, optimizer, ALGOS["dpo"], method_name, pair, pad_id, pack,
                                                    variant_precision(args.variants[0]))
            cell = measure(step, shape, keys, {"short": args.short, "long": length}, args.response, tokens, 0, 1,
                           shared=layout == SHARED_PROMPT)
            print({"model": name, "method": method_name, "long_len": length, **cell}, flush=True)
            release()
            failed = cell["status"] != "ok"
            if not failed:
                best = {"long_len": length, "step_s": cell["step_s"], "peak_gib": cell["peak_gib"]}
            put_row(rows, {**key, "max_long_len": best and best["long_len"], "step_s_at_max": best and best["step_s"],
                           "peak_gib_at_max": best and best["peak_gib"], "first_failure": cell["status"] if failed else None,
                           "failed_len": length if failed else None, "probe_to": max(args.max_lengths), **PROBE},
                    "model", "method", "variant")
            save()
            if failed:
                break


def logp_memory(args, name, policy, rows):
    """Peak memory of the log-prob step alone (LM head + log-softmax, forward and backward) over
    ``response`` tokens, for a growing context: response-only chunks vs full-vocabulary logits."""
    head = policy.get_output_embeddings()
    for length in args.lengths:
        for variant in ("response_only", "full_logits"):
            if has_row(rows, model=name, variant=variant, context_len=length):
                continue
            hidden = torch.randn(1, length, policy.config.hidden_size, device=DEVICE, dtype=torch.bfloat16,
                                 requires_grad=True)
            targets = torch.randint(0, policy.config.vocab_size, (length,), device=DEVICE)
            release()
            base = reset_peak()
            try:
                if variant == "response_only":
                    logps = chunked_token_logps(hidden[0, -args.response:], targets[-args.response:], head,
                                                chunk_size=logp_chunk_size()).sum()
                else:
                    logits = head(hidden[0]).float()
                    logps = logits.log_softmax(-1).gather(1, targets[:, None])[-args.response:].sum()
                logps.backward()
                rows.append({"model": name, "variant": variant, "context_len": length,
                             "extra_peak_gib": (peak() - base) / 2**30})
            except Exception as err:  # noqa: BLE001
                if not is_oom(err):
                    raise
                rows.append({"model": name, "variant": variant, "context_len": length, "extra_peak_gib": "OOM"})
            del hidden, targets
            release()


def logs_memory(args, name: str) -> bool:
    return not args.no_logp_memory and name in args.logp_memory_models


def missing_cells(args, name, grid_rows, max_rows, logp_rows) -> bool:
    grid_cells = [dict(algo=a, method=m, variant=best_variant(name, a, m, n) if v == BEST else v, long_len=n)
                  for n in args.lengths for a in args.algos for m in args.methods for v in args.variants]
    probes = [dict(model=name, method=m, variant=args.variants[0]) for m in args.methods]
    if name in args.max_length_models and not all(probe_finished(max_rows, key, args.max_lengths) for key in probes):
        return True
    logp_cells = [] if not logs_memory(args, name) else [dict(variant=v, context_len=n) for n in args.lengths
                                                 for v in ("response_only", "full_logits")]
    return any(not has_row(rows, model=name, **cell) for rows, cells in ((grid_rows, grid_cells), (logp_rows, logp_cells))
               for cell in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--models", type=names, default=["smollm2", "qwen2.5-1.5b"])
    parser.add_argument("--algos", type=names, default=["dpo", "simpo"])
    parser.add_argument("--methods", type=names, default=list(METHODS))
    parser.add_argument("--variants", type=names, default=["padded", "packed-flex"],
                        help=", ".join([*VARIANTS, BEST]) + f" ({BEST}: each cell's fastest in the committed tables)")
    parser.add_argument("--profile", action="store_true", help="one more step per cell under the profiler: gpu_busy")
    parser.add_argument("--short", type=int, default=1024)
    parser.add_argument("--response", type=int, default=64)
    parser.add_argument("--lengths", type=ints, default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--max-lengths", type=ints, default=[131072, 262144])
    parser.add_argument("--max-length-models", type=names, default=["qwen2.5-1.5b"])
    parser.add_argument("--logp-memory-models", type=names, default=["qwen2.5-1.5b"],
                        help="models whose log-prob step memory is measured ('none': no model)")
    parser.add_argument("--no-logp-memory", action="store_true", help="skip the log-prob step's memory table")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out and measure the rest")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="", help="suffix of the table names, e.g. _packing: solopo_grid_packing.json")
    args = parser.parse_args()
    options = model_options(args.variants)

    meta = {**environment(), "command": "python " + " ".join(sys.argv), "short_len": args.short,
            "response_len": args.response, "precision": "bf16 weights",
            "gradient_checkpointing": "auto for the defaults variant, every layer otherwise"}
    tables = {name: (previous_rows(args.out, name + args.tag, args.resume), columns) for name, columns in (
        ("solopo_grid", ["model", "algo", "method", "variant", "long_len", "tokens", "status", "step_s", "tokens_per_s",
                         "tflops", "peak_gib", "layout", "checkpointed_layers", "predicted_peak_gib", "gpu_busy"]),
        ("solopo_max_length", ["model", "method", "variant", "max_long_len", "step_s_at_max", "peak_gib_at_max",
                               "first_failure", "failed_len"]),
        ("logp_memory", ["model", "variant", "context_len", "extra_peak_gib"]))}
    grid_rows, max_rows, logp_rows = (rows for rows, _ in tables.values())

    def save():  # after every cell, so a run cut short still leaves its tables
        for name, (rows, columns) in tables.items():
            if rows:
                write_table(args.out, name + args.tag, rows, columns, meta)

    for name in args.models:
        if not missing_cells(args, name, grid_rows, max_rows, logp_rows):
            print(f"{name}: every cell is in {args.out} already (--resume)", flush=True)
            continue  # not even loaded: SmolLM2's weights need the embedded model's cache
        spec = call_spec(name, options, args.variants)
        tokenizer = load_tokenizer(spec)
        policy = load_policy(spec, tokenizer).train()
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-7, fused=DEVICE == "cuda")
        shape = Shape.of(policy.config)
        if logs_memory(args, name):
            logp_memory(args, name, policy, logp_rows)
        grid(args, name, policy, optimizer, shape, tokenizer.pad_token_id, grid_rows, save)
        if name in args.max_length_models:
            longest(args, name, policy, optimizer, shape, tokenizer.pad_token_id, max_rows, save)
        save()
        del policy, optimizer
        release()


if __name__ == "__main__":
    main()
