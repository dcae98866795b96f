"""Step time, throughput and peak memory of SoLoPO vs Long-PO (same code), per context length.

    python experiments/efficiency/bench.py --models smollm2,qwen2.5-1.5b --lengths 4096,8192,16384,32768,65536

One process measures every configuration on the same GPU: SoLoPO chosen-only (2 short + 1 long
sequence per pair), SoLoPO both-responses (2 short + 2 long) and Long-PO (2 long), for DPO
(reference log-probs precomputed) and SimPO; bf16 weights, gradient checkpointing, fused AdamW,
batch of one pair. Then the longest long context each configuration trains at, and the peak
memory of the log-prob step alone against context length. Writes markdown + json tables.
"""
from __future__ import annotations

import dataclasses
import argparse
import json
import sys
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from common import (DEVICE, PROBE, Shape, environment, has_row, is_oom, logp_chunk_size, matching, peak,
                    previous_rows, profiled, put_row, random_ids, release, reset_peak, shape_model, shipped, timed,
                    write_table)
from solopo.core.algos import DPO, SimPO
from solopo.data.collate import SHARED_PROMPT, PairCollator
from solopo.step import checkpointing
from solopo.step.largest_step import layout_tokens
from solopo.step.layout import NAMES
from solopo.data.tokenize import TokenizedPair
from solopo.step.logps import chunked_token_logps
from solopo.models.loading import ModelSpec, load_model, load_tokenizer
from solopo.training.module import OptimSettings, SoLoPOModule
from solopo.training.precision import autocast, autocast_dtype, resolve_precision
from solopo.core.objective import Method, SoLoRA, required_sequences
from solopo.step.batch import Batch

SOLOPO, RA = Method(**shipped("method")), SoLoRA(**shipped("ra"))  # the defaults: method=solopo, ra=chosen (alpha 1)
METHODS = {
    "solopo": (SOLOPO, RA),
    "solopo_both": (SOLOPO, dataclasses.replace(RA, responses=("chosen", "rejected"))),
    "long_po": (Method(name="long_po", po_context="long", pairs_from="long", use_ra=False),
                dataclasses.replace(RA, alpha=0.0)),
}
ALGOS = {"dpo": DPO(beta=0.1), "simpo": SimPO(beta=2.0, gamma=1.0)}
DEFAULTS, BEST = "defaults", "best"  # BEST: per cell, the fastest variant the committed tables measured (best_variant)
RESULTS = Path(__file__).parent / "results"
# How the sequences of a step reach the model: padded = one padded batch per context (SDPA); packed-* = every
# sequence of the step in one row without padding, attention kept within each sequence by the named kernel.
VARIANTS = {"padded": ("sdpa", False), "packed-flex": ("flex_attention", True), "packed-sdpa": ("sdpa", True),
            "packed-varlen": ("solopo_varlen", True), "shared-flex": ("flex_attention", "shared_prompt"),
            "shared-sdpa": ("sdpa", "shared_prompt"),  # shared-sdpa builds a dense T x T mask: short contexts only
            # padded rows through other kernels: SDPA's cuDNN backend instead of its flash kernel, and the model
            # options of MODEL_OPTIONS below
            "cudnn-sdpa": ("sdpa", False), "liger": ("sdpa", False), "compile": ("sdpa", False),
            "savers": ("sdpa", False),
            # what a run gets without flags: the shipped kernel, packing=auto, model.gradient_checkpointing=auto
            DEFAULTS: (shipped("model")["attn_implementation"], shipped("packing"))}
# Every other variant checkpoints every decoder layer, as the committed tables were measured.
# The model options a variant loads the model with (solopo.models.kernels and .memory) over model_spec's plain model;
# one call measures variants of one model build (padded and cudnn-sdpa share the plain one). savers: chunks of 16K
# positions keep each MLP's intermediate at 16K x 8960 values (1.5B shape), whatever the context, in matrix products
# still large enough to run at full speed; every layer's input waits in host memory. defaults: the shipped
# model.liger (auto: Liger's kernels where they run).
MODEL_OPTIONS = {"liger": {"liger": True}, "compile": {"compile": True},
                 "savers": {"mlp_chunk_size": 16384, "offload_activations": True},
                 DEFAULTS: {"liger": shipped("model")["liger"]}}


def model_spec(name: str) -> ModelSpec:
    """The plain model of the committed tables: bf16 weights, every layer checkpointed, no Liger (model.liger's default,
    auto, would turn it on wherever liger-kernel imports, in every variant's cells)."""
    common = dict(tokenizer="embedded:smollm2-135m-instruct", dtype="bfloat16", gradient_checkpointing=True,
                  max_length=1 << 21, liger=False)
    if name == "smollm2":
        return ModelSpec(**{**shipped("model"), **common})
    return ModelSpec(**{**shape_model(name), **common})  # random weights drawn where the shape's preset says: the GPU


def run_build(name: str, spec: ModelSpec) -> ModelSpec:
    """``spec`` in the weights' dtype a run without flags loads the model in (the shapes' presets: fp32 master weights,
    trained under bf16-mixed), for the defaults variant."""
    preset = shipped("model") if spec.random_init is None else shape_model(name)
    return dataclasses.replace(spec, dtype=preset["dtype"])


def call_spec(name: str, options: dict, variants: list[str]) -> ModelSpec:
    """The model one call measures: model_spec's with the variants' options, and for the defaults a run's weights'
    dtype (grid and longest add its precision: variant_precision)."""
    spec = dataclasses.replace(model_spec(name), **options)
    return run_build(name, spec) if DEFAULTS in variants else spec


def run_precision() -> str:
    """trainer.precision as a run without flags resolves it here (auto: bf16-mixed on a GPU with bf16)."""
    return resolve_precision(shipped("trainer")["precision"])


def variant_precision(variant: str) -> str:
    """The forward's precision in ``variant``: a run's for the defaults (autocast over its fp32 weights), none for
    the others, whose weights are bf16 (model_spec), as the committed tables were measured."""
    return run_precision() if variant == DEFAULTS else "32-true"


def load_policy(spec: ModelSpec, tokenizer):
    """The model on the benchmark's device; random weights are initialised there (on the GPU about a minute less per
    1.5B model than on the CPU), real ones load on the CPU first."""
    with torch.device(DEVICE if spec.random_init else "cpu"):
        return load_model(spec, tokenizer).to(DEVICE)


def make_pair(short: int, long: int, response: int, seed: int = 0) -> TokenizedPair:
    g = torch.Generator().manual_seed(seed)
    responses = {"chosen": random_ids(response, g), "rejected": random_ids(response, g)}
    ref = {f"{c}/{r}": -50.0 for c in ("short", "long") for r in ("chosen", "rejected")}
    return TokenizedPair("bench", {"short": random_ids(short - response, g), "long": random_ids(long - response, g)},
                         responses, ref_logps=ref)


def model_options(variants: list[str]) -> dict:
    """The ModelSpec fields that the model of a call measuring ``variants`` loads with."""
    builds = {tuple(sorted(MODEL_OPTIONS.get(variant, {}).items())) for variant in variants}
    if len(builds) > 1:
        raise SystemExit(f"--variants {','.join(variants)}: these load the model with different options "
                         f"({', '.join(v for v in variants if v in MODEL_OPTIONS)}); measure them in separate calls")
    return MODEL_OPTIONS.get(variants[0], {}) if variants else {}


def use_sdpa_backend(variant: str) -> None:
    """cudnn-sdpa: SDPA may use its cuDNN kernel only (a case it cannot run fails the cell); otherwise every backend,
    in torch's order (flash first)."""
    cudnn_only = variant == "cudnn-sdpa"
    torch.backends.cuda.enable_flash_sdp(not cudnn_only)
    torch.backends.cuda.enable_mem_efficient_sdp(not cudnn_only)
    torch.backends.cuda.enable_math_sdp(not cudnn_only)
    torch.backends.cuda.enable_cudnn_sdp(True)


def use_variant(policy, variant: str) -> bool | str:
    """Switch the policy's attention kernel for ``variant``; returns how its sequences are packed (PairCollator's
    ``pack``)."""
    attention, pack = VARIANTS[variant]
    use_sdpa_backend(variant)
    if policy.config._attn_implementation != attention:
        policy.set_attn_implementation(attention)  # the same weights, another attention kernel
    return pack


@dataclass
class TrainStep:
    """One optimizer step of solopo's training code on a fixed batch (on the GPU), callable."""

    module: SoLoPOModule
    optimizer: torch.optim.Optimizer
    batch: Batch
    precision: str = "32-true"  # the forward's autocast, as Lightning's precision plugin has it

    def __call__(self) -> None:
        with autocast(torch.device(DEVICE), self.precision):
            loss = self.module.objective(self.batch).loss
        # Lightning's order (its closure: training_step, zero_grad, backward): the forward holds the previous step's
        # gradients, as a run's does, and the measured peak is a run's.
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def train_step(policy, optimizer, algo, method_name: str, pair: TokenizedPair, pad_id: int,
               pack: bool | str = False, precision: str = "32-true"):
    """The step of one cell, its sequences, its tokens and its layout (packing=auto: the one chosen)."""
    method, ra = METHODS[method_name]
    keys = required_sequences(method, ra)
    collate = PairCollator(keys, pad_id, pack=pack, device=DEVICE, kernel=policy.config._attn_implementation)
    layout = collate.layout_of([pair])
    batch = collate([pair]).to(DEVICE)
    # optim: the run's settings, which this module never uses: TrainStep steps the bench's own AdamW
    module = SoLoPOModule(policy, algo, ra, method, cached_reference=True, optim=OptimSettings(**shipped("optim")),
                          logp_chunk_size=logp_chunk_size())
    return TrainStep(module, optimizer, batch, precision), keys, batch.n_tokens, layout


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
