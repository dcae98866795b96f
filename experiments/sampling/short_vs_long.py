"""Are on-policy samples more often right on the short context than on the long one?

    python experiments/sampling/short_vs_long.py --items 16 --k 8

The paper's motivation for sampling pairs on x_short: the same model, the same questions, the
same evidence, and the long context (evidence among distractors) yields fewer correct samples.
This samples k responses per question on both contexts of the built-in QA data with the
embedded SmolLM2-135M-Instruct and writes the share of correct samples (sub-EM), the mean F1,
how many questions give a pair, and the time spent.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from solopo.data.pairs import build_examples
from solopo.generation.sampling import SamplingSettings, sample_pairs
from solopo.data.tokenize import token_counter
from solopo.data.world import qa_items
from solopo.models.loading import ModelSpec, load_model, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--long-len", type=int, default=768)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    conf = Path(__file__).resolve().parents[2] / "solopo" / "conf"  # the defaults' one owner
    spec = ModelSpec(**OmegaConf.to_container(OmegaConf.load(conf / "model" / "smollm2_135m.yaml")))
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer).to("cuda" if torch.cuda.is_available() else "cpu")
    splits = qa_items(args.items, 0, seed=args.seed)
    count = token_counter(tokenizer)
    examples = build_examples(splits.train, args.long_len, count, pairs="sampled", seed=args.seed, pool=splits.distractors)
    data = conf / "data"  # data=qa's sampling: the common block with qa.yaml's changes
    sampling = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(data / "common" / "sampling.yaml"),
                                                      OmegaConf.load(data / "qa.yaml").sampling))
    settings = SamplingSettings(**{**sampling, "k": args.k, "max_new_tokens": args.max_new_tokens, "seed": args.seed})
    rows = []
    for context in ("short", "long"):
        _, summary = sample_pairs(examples, model, tokenizer, settings, context, json.dumps([spec.name]))
        mean_tokens = sum(count(e.prompt_short if context == "short" else e.prompt_long) for e in examples) / len(examples)
        rows.append({**summary, "mean_context_tokens": mean_tokens})
        print(rows[-1], flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + " ".join(sys.argv), "device": str(model.device), "torch": torch.__version__,
            "python": platform.python_version(), "settings": vars(replace(settings))}
    (args.out / "short_vs_long.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# Sampling on short vs long contexts\n\ncommand: `{meta['command']}` ({meta['device']})\n",
             "| context | mean tokens | items | pairs kept | correct samples (sub-EM) | mean F1 | unfinished | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['context']} | {r['mean_context_tokens']:.0f} | {r['items']} | {r['kept']} | "
                     f"{100 * r['share_correct']:.1f}% | {r['mean_f1']:.3f} | {r['unfinished_samples']} | {r['seconds']:.0f} |")
    (args.out / "short_vs_long.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
