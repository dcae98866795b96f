"""Generation speed for the QA studies, the old path against the new one in one run, on the same prompts and model.

    python experiments/sampling/speed.py                                   # SmolLM2-135M on the GPU: the issue's sizes
    python experiments/sampling/speed.py --model tiny --questions 4 --answers 6 --length 256 --out /tmp/speed

Three workloads: W1 greedy answers on contexts of --length tokens (the evaluation: 480 at 4K), W2 k samples per question
on x_short (the evidence alone) and W3 on --length contexts (pair sampling: 256 questions x 8). Five paths, on the same
prompts: old is paper_mini's (batches of a fixed number of rows: 32 answers, 64 sequences = 8 prompts x k; a dynamic KV
cache; the fp32 weights under autocast); budget sorts prompts longest first under a token budget
(conf/experiment/decisive/a.yaml's) with a dynamic cache, on half-precision copies of the weights (half_weights, the
shipped default: the KV cache in half precision, no per-step casts); budget_fp32 is the same batches on the fp32 weights
under autocast (half_weights=false); static adds to budget, on a GPU, a static KV cache whose decoding step is
captured as a CUDA graph and replayed (solopo.generation.decoding; the capture, once per batch, is inside the timed
call); static_eager is static with the step run eagerly (decoding.CAPTURE off), which still writes each step's keys
in place where the dynamic cache concatenates the whole cache again; budget_repeat is budget with each decoding step's
grouped key/value heads repeated to the query heads (model.decode_kv_heads=repeated, as transformers before 5.24
does; the shipped grouped step reads the cache as it is); budget_x2 is budget under twice the token budgets (half as
many decoding steps' host work per answer, twice the KV cache). Each timing is one call after a warm-up call on a
few prompts; a workload over --limit-s is recorded as such. The GPU's targets (one H200): W1 < 10 s, W2 < 10 s,
W3 < 45 s.
Writes speed.md and speed.json in --out, W1's answers in the json: the table says how many of each path's are the
first path's and, with --same-as (another run's speed.json, e.g. under another transformers), that run's on the same
path, so that a faster way of generating is seen to answer as the study's runs did, or not. --liger sets the
generating model's model.liger (Liger's fused kernels cost a Triton launch per call in every decoding step).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import signal
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from solopo.data.tokenize import encode_prompt, left_padded_ids, token_counter
from solopo.data.world import qa_items
from solopo.eval.longctx import EvalSettings, build_cases, greedy_answers
from solopo.generation import decoding
from solopo.generation.batching import generation_weights
from solopo.generation.sampling import SamplingSettings, generate
from solopo.models.loading import ModelSpec, load_model, load_tokenizer
from solopo.scoring import SubEM
from solopo.step import varlen
from solopo.training.precision import autocast

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
    shipped = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(CONF / "eval" / "default.yaml")).items()
               if k in fields}
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


def path_settings(k: int, precision: str) -> dict[str, tuple[dict, SamplingSettings]]:
    """Each path's greedy_answers arguments and sampling settings: old (fixed rows, dynamic cache, fp32 weights),
    budget (length-sorted batches under a token budget, dynamic cache, half-precision weights), budget_fp32 (budget on
    the fp32 weights), static (budget with a static cache, the decoding step replayed as a CUDA graph:
    solopo.generation.decoding), static_eager (static, the step run eagerly), budget_repeat (decoding with the
    key/value heads repeated) and budget_x2 (twice the token budgets)."""
    sampling = SamplingSettings(k=k, temperature=0.85, max_new_tokens=32, batch_size=OLD["sequences_per_batch"],
                                batch_tokens=None, static_cache=False, half_weights=False, seed=0,
                                engine="transformers", scorer=SubEM(), precision=precision)
    budget = dataclasses.replace(sampling, batch_size=NEW["rows"], batch_tokens=NEW["sample_tokens"], half_weights=True)
    greedy_budget = dict(batch_size=NEW["rows"], batch_tokens=NEW["answer_tokens"], half_weights=True)
    static = ({**greedy_budget, "static_cache": True}, dataclasses.replace(budget, static_cache=True))
    return {"old": (dict(batch_size=OLD["answers_per_batch"]), sampling),
            "budget": (greedy_budget, budget),
            "budget_fp32": ({**greedy_budget, "half_weights": False}, dataclasses.replace(budget, half_weights=False)),
            "static": static, "static_eager": static,  # run_paths turns the graph off for static_eager
            "budget_repeat": (greedy_budget, budget),  # and model.decode_kv_heads=repeated for budget_repeat
            "budget_x2": ({**greedy_budget, "batch_tokens": 2 * NEW["answer_tokens"]},
                          dataclasses.replace(budget, batch_tokens=2 * NEW["sample_tokens"]))}


class OverTime(Exception):
    """A workload ran past --limit-s."""


def within(seconds: int, fn):
    """fn's time, or None when it runs past ``seconds`` (SIGALRM: a path that compiles for every shape can take many
    minutes, and the other paths' numbers must still come back)."""
    def stop(*_):
        raise OverTime
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        return timed(fn)
    except OverTime:
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_paths(model, spec: ModelSpec, tokenizer, work: dict, k: int, precision: str, names: list[str],
              limit_s: int, save) -> list[dict]:
    rows: list[dict] = []
    for path in names:
        decoding.CAPTURE = path != "static_eager"
        varlen.set_decode_kv_heads(model, "repeated" if path == "budget_repeat" else spec.decode_kv_heads)
        try:
            time_path(model, tokenizer, work, path, path_settings(k, precision)[path], precision, limit_s, rows, save)
        finally:
            decoding.CAPTURE = True
            varlen.set_decode_kv_heads(model, spec.decode_kv_heads)
    return rows


def time_path(model, tokenizer, work: dict, path: str, settings, precision: str, limit_s: int, rows: list[dict],
              save) -> None:
    """One path's warm-up, then W1, W2 and W3, each appended to ``rows`` and saved as soon as it is timed. A path whose
    warm-up fails (the static path's compilation did, when transformers compiled it, on torch 2.11) is recorded with its
    error; the next one runs."""
    greedy, sample = settings
    try:
        warm = within(limit_s, lambda: (greedy_answers(model, tokenizer, work["W1"][:4], 32, precision=precision,
                                                        **greedy), generate(model, tokenizer, work["W2"][:2], sample)))
    except Exception as error:  # noqa: BLE001 - any failure of one path; the others' numbers must still come back
        rows.append({"path": path, "workload": "warm-up", "seconds": None, "error": f"{type(error).__name__}: "
                     f"{str(error).splitlines()[0][:200] if str(error) else ''}"})
        print(rows[-1], flush=True)
        save(rows)
        return
    answers: list[str] = []
    for name, fn in (("W1", lambda: answers.extend(greedy_answers(model, tokenizer, work["W1"], 32,
                                                                  precision=precision, **greedy))),
                     ("W2", lambda: generate(model, tokenizer, work["W2"], sample)),
                     ("W3", lambda: generate(model, tokenizer, work["W3"], sample))):
        seconds = within(limit_s, fn) if warm is not None else None
        rows.append({"path": path, "workload": name, "prompts": len(work[name]), "seconds": seconds,
                     "limit_s": limit_s})
        if name == "W1" and seconds is not None:
            rows[-1]["answers"] = answers
        print({k: v for k, v in rows[-1].items() if k != "answers"}, flush=True)
        save(rows)


def profile_w1(model, tokenizer, work: dict, precision: str, n: int, out: Path) -> None:
    """Where W1's time goes on the default path: ``n`` of its prompts (one batch at the presets' budget) answered under
    the profiler (wall, GPU kernel seconds, host-device synchronisations, the top operations), beside the same batch's
    prefill alone (one forward, the last position's logits): what is left is decoding. Written to out/profile_w1.txt."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "efficiency"))
    from common import profiled

    greedy, _ = path_settings(1, precision)["budget"]
    prompts = work["W1"][:n]
    answer = lambda: greedy_answers(model, tokenizer, prompts, 32, precision=precision, **greedy)  # noqa: E731
    answer()  # warm-up
    wall, kernel_s, syncs, tables = profiled(answer)
    device = next(model.parameters()).device
    ids, mask = left_padded_ids([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id, device)
    with generation_weights(model, False, True, precision), torch.no_grad(), autocast(device, precision):
        prefill = lambda: model(input_ids=ids, attention_mask=mask, logits_to_keep=1)  # noqa: E731
        prefill()
        prefill_s = timed(prefill)
    text = (f"{n} W1 prompts ({ids.shape[1]} tokens wide), budget path: {wall:.2f} s wall, {kernel_s:.2f} s of GPU "
            f"kernels ({kernel_s / wall:.0%} busy), {syncs} host-device synchronisations; the prefill alone "
            f"{prefill_s:.2f} s, so decoding ~{wall - prefill_s:.2f} s\n\n{tables}\n")
    (out / "profile_w1.txt").write_text(text)
    print(text.split("\n")[0], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model preset: smollm2_135m or tiny")
    parser.add_argument("--questions", type=int, default=256)
    parser.add_argument("--answers", type=int, default=480)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--paths", default="old,budget_fp32,budget,static,static_eager",
                        help="which of old, budget_fp32, budget, static, static_eager, budget_repeat, budget_x2 to "
                        "time, in order")
    parser.add_argument("--limit-s", type=int, default=120, help="a workload (or a path's warm-up) running longer "
                        "than this is recorded as over the limit and the next one starts")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--liger", choices=("auto", "true", "false"), default="auto", help="model.liger for the "
                        "model that generates (auto, the default: Liger's kernels where a CUDA GPU runs them)")
    parser.add_argument("--same-as", type=Path, metavar="SPEED_JSON", help="another run's speed.json (another "
                        "transformers, say): how many of each path's W1 answers are identical to that run's")
    parser.add_argument("--profile", type=int, metavar="N", help="only profile N of W1's prompts on the budget path "
                        "(profile_w1.txt in --out): where its time goes, prefill against decoding")
    args = parser.parse_args()
    same_work(args)  # before any model loads: a comparison that cannot be made stops here
    spec = dataclasses.replace(model_spec(args.model), liger={"true": True, "false": False}.get(args.liger, "auto"))
    tokenizer = load_tokenizer(spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True  # as the study's launcher sets for float32 weights
    try:
        model = load_model(spec, tokenizer).to(device).eval()
    except ValueError as err:  # a setting this machine cannot run (--liger true without a GPU)
        refuse(str(err))
    precision = "bf16-mixed" if device == "cuda" else "32-true"  # the study's trainer=gpu
    work = prompts(tokenizer, args.questions, args.answers, args.length, seed=0)
    import transformers
    meta = {"command": "python " + " ".join(sys.argv), "device": torch.cuda.get_device_name() if device == "cuda"
            else platform.processor() or "cpu", "torch": torch.__version__, "transformers": transformers.__version__,
            "model": spec.name, "precision": precision, "old": OLD, "new": NEW, "targets_s": TARGETS_S,
            "work": {key: getattr(args, key) for key in WORK}, "liger": args.liger}
    args.out.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict]) -> None:  # after every workload: a call cut short keeps what it measured
        (args.out / "speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        (args.out / "speed.md").write_text(page(meta, rows, args))

    if args.profile:
        profile_w1(model, tokenizer, work, precision, args.profile, args.out)
        return
    run_paths(model, spec, tokenizer, work, args.k, precision, args.paths.split(","), args.limit_s, save)
    print(args.out / "speed.md")


def page(meta: dict, rows: list[dict], args) -> str:
    """The table: one row per workload, one column per path timed, each path's speed-up over the first."""
    seconds = {(r["path"], r["workload"]): r["seconds"] for r in rows}
    failed = {r["path"]: r["error"] for r in rows if "error" in r}
    paths = [p for p in dict.fromkeys(r["path"] for r in rows) if p not in failed]
    what = {"W1": f"{args.answers} greedy answers, {args.length}-token contexts",
            "W2": f"{args.questions} questions x {args.k} samples, x_short",
            "W3": f"{args.questions} questions x {args.k} samples, {args.length}-token contexts"}
    shown = lambda s: "-" if s is None else f"{s:.2f}"  # noqa: E731
    over = f"; - : over the {args.limit_s} s limit" if any(r["seconds"] is None and r["path"] not in failed
                                                           for r in rows) else ""
    lines = [f"# Generation speed by path\n\n`{meta['command']}` on {meta['device']}, {meta['model']}, "
             f"{meta['precision']}, torch {meta['torch']}, transformers {meta.get('transformers', '?')}, model.liger="
             f"{meta.get('liger', 'auto')}. Seconds per "
             f"workload; speed-up against {paths[0]}{over}.\n",
             "| workload | " + " | ".join(f"{p} s" for p in paths) + " | best speed-up | target (H200) |",
             "|---|" + "---|" * len(paths) + "---|---|"]
    for name, text in what.items():
        times = [seconds.get((p, name)) for p in paths]
        if all(t is None for t in times):
            continue
        done = [t for t in times if t is not None]
        gain = f"{times[0] / min(done):.2f}x" if times[0] is not None else "-"
        lines.append(f"| {name}: {text} | " + " | ".join(shown(t) for t in times)
                     + f" | {gain} | < {TARGETS_S[name]:g} s |")
    lines += [f"\n{path}: failed in its warm-up ({error})" for path, error in failed.items()]
    return "\n".join(lines + agreement(rows, args.same_as)) + "\n"


WORK = ("model", "answers", "length", "questions", "k")  # what two runs' W1 answers depend on, besides the library


def same_work(args) -> dict | None:
    """The --same-as run's speed.json, read before anything is timed; one line and exit 2 when it is missing, not a
    speed.json, or its W1 was other work (another model or other prompts)."""
    if args.same_as is None:
        return None
    try:
        other = json.loads(args.same_as.read_text())
        theirs = other["meta"]["work"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        refuse(f"--same-as {args.same_as}: not a speed.json of this script ({type(err).__name__}: {err})")
    mine = {key: getattr(args, key) for key in WORK}
    if theirs != mine:
        refuse(f"--same-as {args.same_as}: another workload ({theirs}), not this run's ({mine})")
    return other


def refuse(problem: str) -> None:
    print(f"error: {problem}", file=sys.stderr)
    raise SystemExit(2)


def agreement(rows: list[dict], same_as: Path | None) -> list[str]:
    """How many of each path's W1 answers are identical to the first path's, and with ``same_as`` (another run's
    speed.json) to that run's answers on the same path: whether a faster path (or another library version) changes
    what the evaluation scores."""
    answers = {r["path"]: r["answers"] for r in rows if r.get("answers")}
    others = {}
    if same_as is not None:
        other = json.loads(same_as.read_text())
        others = {r["path"]: r["answers"] for r in other["rows"] if r.get("answers")}
        versions = f"torch {other['meta']['torch']}, transformers {other['meta'].get('transformers', '?')}"
    lines = []
    for path, mine in answers.items():
        first_path, first = next(iter(answers.items()))
        same = [f"{identical(mine, first)} against {first_path}"] if path != first_path else []
        if path in others:
            same.append(f"{identical(mine, others[path])} against {path} in {same_as} ({versions})")
        if same:
            empty = sum(not a for a in mine)
            lines.append(f"- W1 answers of {path} identical: " + "; ".join(same)
                         + (f" ({empty} of its answers are empty: those say nothing)" if empty else ""))
    return ["", *lines] if lines else []


def identical(mine: list[str], theirs: list[str]) -> str:
    return f"{sum(a == b for a, b in zip(mine, theirs))} of {min(len(mine), len(theirs))}"


if __name__ == "__main__":
    main()
