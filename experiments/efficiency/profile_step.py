"""Where the time of one training step goes: synchronised phase timings and the profiler's top operations.

    python experiments/efficiency/profile_step.py --model qwen2.5-1.5b --length 4096 --methods solopo,long_po

Per (method, variant): the step split into forward of each context group, loss, backward and optimizer, each
phase closed by a CUDA synchronisation (so the phases sum to more than a free-running step), then a free-running
step under torch.profiler: GPU busy time against wall time, the host-device synchronisations, and the operations
with the most host and device time. Answers "is this step bound by the GPU or by the host?".
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from cells import (ALGOS, VARIANTS, TrainStep, load_policy, make_pair, model_options, model_spec, train_step,
                   use_variant)
from common import DEVICE, profiled, sync
from solopo.models.loading import load_tokenizer


def phases(step: TrainStep) -> dict[str, float]:
    """Seconds per phase of one step (forward of each context group, loss, backward, optimizer), each synchronised."""
    times, stats, m = {}, {}, step.module

    def clock(name, fn):
        sync()
        start = time.perf_counter()
        value = fn()
        sync()
        times[name] = time.perf_counter() - start
        return value

    for name, group in step.batch.groups.items():
        stats.update(clock(f"forward[{name}]", lambda: m.group_stats(group)))
    out = clock("loss", lambda: m.objective_of(stats))
    clock("backward", lambda: out.loss.backward())
    clock("optimizer", lambda: (step.optimizer.step(), step.optimizer.zero_grad(set_to_none=True)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--model", default="qwen2.5-1.5b")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--short", type=int, default=1024)
    parser.add_argument("--response", type=int, default=64)
    parser.add_argument("--algo", default="dpo", choices=sorted(ALGOS))
    parser.add_argument("--methods", type=names, default=["solopo", "long_po"])
    parser.add_argument("--variants", type=names, default=["padded"], help=", ".join(VARIANTS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the report to OUT/profile_<model>_<length>.txt")
    args = parser.parse_args()

    spec = dataclasses.replace(model_spec(args.model), **model_options(args.variants))
    tokenizer = load_tokenizer(spec)
    policy = load_policy(spec, tokenizer).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-7, fused=DEVICE == "cuda")
    pair = make_pair(args.short, args.length, args.response)
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    report = [f"# {args.model}, long {args.length}, short {args.short}, {args.algo}, {gpu}"]
    path = args.out / f"profile_{args.model}_{args.length}.txt" if args.out else None
    for variant in args.variants:
        pack = use_variant(policy, variant)
        for method_name in args.methods:
            step, keys, tokens, _ = train_step(policy, optimizer, ALGOS[args.algo], method_name, pair,
                                               tokenizer.pad_token_id, pack)
            for _ in range(args.warmup):
                step()
            split = phases(step)
            wall, kernel_s, syncs, tables = profiled(step)
            section = [f"\n## {method_name} / {variant}: {tokens} tokens",
                       "phases (synchronised): " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in split.items()),
                       f"free-running step under the profiler: wall {wall * 1e3:.1f} ms, GPU kernels {kernel_s * 1e3:.1f} ms "
                       f"({kernel_s / wall:.0%} busy), host-device syncs {syncs}", tables]
            report += section
            print("\n".join(section), flush=True)
            if path:  # after every configuration, so a run cut short keeps what it measured
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
