"""How many new tokens the study's greedy answers need: the gold answers' lengths and the base model's answers.

    python experiments/decisive/answer_length.py                         # 200 questions on x_short, on the CPU
    python experiments/decisive/answer_length.py --items 50 --length 1024 --cut 16

Gold: every answer and alias of seeds 0-4's test questions (the study's), in SmolLM2's tokens. Model: the base model's
greedy answers (up to 32 new tokens, eval.max_new_tokens of the presets) on seed 0's questions at one length and the
middle depth, and their sub-EM whole and cut to --cut tokens: a smaller eval.max_new_tokens is safe only where the two
agree. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.sampling.speed import model_spec  # noqa: E402
from solopo.data.tokenize import token_counter  # noqa: E402
from solopo.data.world import qa_items  # noqa: E402
from solopo.eval.longctx import EvalSettings, build_cases, greedy_answers  # noqa: E402
from solopo.models.loading import load_model, load_tokenizer  # noqa: E402
from solopo.scoring import SubEM  # noqa: E402

SEEDS = (0, 1, 2, 3, 4)  # the study's main seeds
NEW_TOKENS = 32  # the presets' eval.max_new_tokens


def gold_lengths(tokenizer, n_items: int) -> list[int]:
    return [len(tokenizer(answer, add_special_tokens=False).input_ids) for seed in SEEDS
            for item in qa_items(0, 0, seed=seed, n_test=n_items).test for answer in item.answers]


def model_answers(model, tokenizer, n_items: int, length: str) -> list[tuple[str, tuple[str, ...]]]:
    splits = qa_items(0, 0, seed=SEEDS[0], n_test=n_items)
    settings = EvalSettings(lengths=[length], depths=[0.5], max_new_tokens=NEW_TOKENS, batch_size=25,
                            batch_tokens=None, static_cache=False, half_weights=True, engine="transformers",
                            seed=SEEDS[0], template="direct", scorer=SubEM(), every_n_steps=None, keep_best=False)
    cases = build_cases(splits.test, settings, token_counter(tokenizer), splits.test_distractors, 8192)
    answers = greedy_answers(model, tokenizer, [c.prompt for c in cases], NEW_TOKENS, batch_size=25)
    return [(answer, case.answers) for answer, case in zip(answers, cases)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--length", default="short", help="short (the evidence alone) or a number of tokens")
    parser.add_argument("--cut", type=int, default=16, help="the smaller max_new_tokens to check")
    args = parser.parse_args()
    spec = model_spec("smollm2_135m")
    tokenizer = load_tokenizer(spec)
    gold = gold_lengths(tokenizer, args.items)
    answered = model_answers(load_model(spec, tokenizer).eval(), tokenizer, args.items, args.length)
    score = SubEM()
    rows = []
    for answer, gold_answers in answered:
        ids = tokenizer(answer, add_special_tokens=False).input_ids
        cut = tokenizer.decode(ids[:args.cut], skip_special_tokens=True).strip()
        rows.append((len(ids), score(answer, gold_answers), score(cut, gold_answers)))
    print(json.dumps({"gold_answers": len(gold), "gold_longest_tokens": max(gold), "answers": len(rows),
                      "length": args.length, f"over_{args.cut}_tokens": sum(n > args.cut for n, _, _ in rows),
                      f"at_{NEW_TOKENS}": sum(n >= NEW_TOKENS - 1 for n, _, _ in rows),
                      f"sub_em_{NEW_TOKENS}": 100 * sum(s for _, s, _ in rows) / len(rows),
                      f"sub_em_cut_{args.cut}": 100 * sum(c for _, _, c in rows) / len(rows)}))


if __name__ == "__main__":
    main()
