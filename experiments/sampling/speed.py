"""Generation speed for the QA studies, the old path against the new one in one run, on the same prompts and model.

    python experiments/sampling/speed.py                                   # SmolLM2-135M on the GPU: the issue's sizes
    python experiments/sampling/speed.py --model tiny --questions 4 --answers 6 --length 256 --out /tmp/speed

Three workloads: W1 greedy answers on contexts of --length tokens (the evaluation: 480 at 4K), W2 k samples per question
on x_short (the evidence alone) and W3 on --length contexts (pair sampling: 256 questions x 8). The old path is
paper_mini's: batches of a fixed number of rows (32 answers; 64 sequences = 8 prompts x k) and a dynamic KV cache.
The new one: prompts longest first under a token budget and, on a GPU, a static KV cache with transformers' compiled
decoding step (whose compilation is inside the timed first call: a study job pays it once per shape). Each timing is
one call after a warm-up call on a few prompts; the GPU's targets (one H200): W1 < 10 s, W2 < 10 s, W3 < 45 s.
Writes speed.md and speed.json in --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from solopo.data.tokenize import token_counter
from solopo.data.world import qa_items
from solopo.eval.longctx import EvalSettings, build_cases, greedy_answers
from solopo.generation.sampling import SamplingSettings, generate
from solopo.models.loading import ModelSpec, load_model, load_tokenizer
from solopo.scoring import SubEM

CONF = Path(__file__).resolve().parents[2] / "solopo" / "conf"
TARGETS_S = {"W1": 10.0, "W2": 10.0, "W3": 45.0}  # one H200, the issue's
OLD = {"answers_per_batch": 32, "sequences_per_batch": 64}  # paper_mini's eval.batch_size and data.sampling.batch_size
NEW = {"answer_tokens": 400_000, "sample_tokens": 600_000, "rows": 4096}  # conf/experiment/decisive/a.yaml's


def model_spec(name: str) -> ModelSpec:
    """The conf/model preset ``name`` as composed (tiny builds on smollm2_135m)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        node = compose("config", overrides=[f"model={name}"]).model
    return ModelSpec(**{k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")})


def prompts(tokenizer, questions: int, answers: int, length: int, seed: int) -> dict[str, list[str]]:
    """W1's long-context prompts (questions at depths 0, 0.5, 1 until ``answers``), x_short and long prompts."""
    splits = qa_items(0, 0, seed=seed, n_test=max(questions, answers))
    fields = {f.name for f in dataclasses.fields(EvalSettings)}
    shipped = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(CONF / "eval" / "default.yaml")).items() if k in fields}
    settings = EvalSettings(**{**shipped, "lengths": ["short", length], "depths": [0.0, 0.5, 1.0], "seed": seed,
                               "template": "direct", "scorer": SubEM()})
    cases = build_cases(splits.test, settings, token_counter(tokenizer), splits.test_distractors, 8192)
    long = [c.prompt for c in cases if c.length != "short"]
    short = [c.prompt for c in cases if c.length == "short"]
    return {"W1": long[:answers], "W2": short[:questions], "W3": long[::3][:questions]}


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run_paths(model, tokenizer, work: dict, k: int, precision: str) -> list[dict]:
    sampling = SamplingSettings(k=k, temperature=0.85, max_new_tokens=32, batch_size=OLD["sequences_per_batch"],
                                batch_tokens=None, static_cache=False, seed=0, engine="transformers", scorer=SubEM(),
                                precision=precision)
    paths = {"old": (dict(batch_size=OLD["answers_per_batch"]), sampling),
             "new": (dict(batch_size=NEW["rows"], batch_tokens=NEW["answer_tokens"], static_cache=True),
                     dataclasses.replace(sampling, batch_size=NEW["rows"], batch_tokens=NEW["sample_tokens"],
                                         static_cache=True))}
    rows = []
    for path, (greedy, sample) in paths.items():
        greedy_answers(model, tokenizer, work["W1"][:4], 32, precision=precision, **greedy)  # warm-up
        generate(model, tokenizer, work["W2"][:2], sample)
        for name, fn in (("W1", lambda: greedy_answers(model, tokenizer, work["W1"], 32, precision=precision, **greedy)),
                         ("W2", lambda: generate(model, tokenizer, work["W2"], sample)),
                         ("W3", lambda: generate(model, tokenizer, work["W3"], sample))):
            rows.append({"path": path, "workload": name, "prompts": len(work[name]), "seconds": timed(fn)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model preset: smollm2_135m or tiny")
    parser.add_argument("--questions", type=int, default=256)
    parser.add_argument("--answers", type=int, default=480)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    spec = model_spec(args.model)
    tokenizer = load_tokenizer(spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True  # as the study's launcher sets for float32 weights
    model = load_model(spec, tokenizer).to(device).eval()
    precision = "bf16-mixed" if device == "cuda" else "32-true"  # the study's trainer=gpu
    work = prompts(tokenizer, args.questions, args.answers, args.length, seed=0)
    rows = run_paths(model, tokenizer, work, args.k, precision)
    meta = {"command": "python " + " ".join(sys.argv), "device": torch.cuda.get_device_name() if device == "cuda"
            else platform.processor() or "cpu", "torch": torch.__version__, "model": spec.name, "precision": precision,
            "old": OLD, "new": NEW, "targets_s": TARGETS_S}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (args.out / "speed.md").write_text(page(meta, rows, args))
    print(args.out / "speed.md")


def page(meta: dict, rows: list[dict], args) -> str:
    seconds = {(r["path"], r["workload"]): r["seconds"] for r in rows}
    what = {"W1": f"{args.answers} greedy answers, {args.length}-token contexts",
            "W2": f"{args.questions} questions x {args.k} samples, x_short",
            "W3": f"{args.questions} questions x {args.k} samples, {args.length}-token contexts"}
    lines = [f"# Generation speed: old path vs new\n\n`{meta['command']}` on {meta['device']}, {meta['model']}, "
             f"{meta['precision']}, torch {meta['torch']}\n", "| workload | old s | new s | speed-up | target (H200) |",
             "|---|---|---|---|---|"]
    for name, text in what.items():
        old, new = seconds[("old", name)], seconds[("new", name)]
        lines.append(f"| {name}: {text} | {old:.2f} | {new:.2f} | {old / new:.2f}x | < {TARGETS_S[name]:g} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
