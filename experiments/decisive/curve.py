"""Regime (b)'s length, chosen from a measured curve: the base model's greedy sub-EM by context length.

    python experiments/decisive/curve.py --root /tmp/decisive            # on the GPU, before regime (b) runs
    python experiments/decisive/curve.py --root /tmp/d -- model=tiny trainer=cpu eval.n_items=2 ...

Runs `python -m solopo.evaluate` on the questions of seed 1000's test world, which no run of the study trains or
is evaluated on (its seeds are 0-4), so no setting is tuned on the test questions. The rule: x_long is the longest
candidate length at which the base model answers at least half as often as on the evidence alone (Long-PO then
samples pairs about as often as SoLoPO does); where no length does (SmolLM2-135M: 48% on the evidence, 16-18% from
512 to 2048 tokens), the longest length not below the 95% interval of the best long length, the end of the curve's
flat part, where the base model answers as often as at any longer-than-evidence length. Either rule takes only lengths
whose 4x evaluation fits the model (4 x_long + the answer's room within model.max_length). x_short is a seventh of it
(the paper's ratio). Writes <root>/curve/ (the evaluation), <root>/curve.json ({"scores", "n", "ci95", "chosen",
"overrides", "rule"}) and curve.md. The launcher chooses again from curve.json's scores and intervals (the measurement
is kept; the choice is this rule's), so a curve measured under an earlier rule needs no new GPU time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from solopo.eval.longctx import length_fits  # noqa: E402

CURVE_SEED = 1000  # a world of its own: the study's runs use seeds 0-4
CANDIDATES = (512, 768, 1024, 1536, 2048, 3072, 4096)
DEFAULT_LENGTH = 1536  # conf/experiment/decisive/b.yaml's, until the curve has chosen
RATIO = 7  # x_long / x_short, the paper's
SHARE = 0.5  # of the evidence-only accuracy, at the chosen length
EVAL_MULTIPLES = (1, 2, 4)  # regime (b) is evaluated at these multiples of its x_long
RULE = (f"the longest x_long at which the base model's greedy sub-EM is at least {SHARE:g} x its sub-EM on the "
        "evidence alone; where none is, the longest x_long whose sub-EM is not below the 95% interval of the best long "
        f"length; only lengths whose {max(EVAL_MULTIPLES)}x evaluation fits the model; x_short = x_long / {RATIO}")


def choose(scores: dict[str, float], ci95: dict[str, list[float]] | None = None, max_length: int | None = None,
           share: float = SHARE) -> int | None:
    """The longest length whose score is at least ``share`` x the evidence-only score; where none is and the 95%
    intervals (in the scores' units) are given, the longest length scoring at least the lower end of the best long
    length's interval; None when the model never answers at a long length. With ``max_length``, only lengths whose
    longest evaluation (EVAL_MULTIPLES) fits it."""
    fit = lambda n: max_length is None or length_fits(max(EVAL_MULTIPLES) * n, max_length)  # noqa: E731
    long = {int(n): score for n, score in scores.items() if n != "short" and score > 0 and fit(int(n))}
    fits = [n for n, score in long.items() if score >= share * scores["short"]]
    if fits or not ci95 or not long:
        return max(fits, default=None)
    best = max(long, key=long.get)
    return max(n for n, score in long.items() if score >= ci95[str(best)][0])


def chosen_length(curve: dict) -> int | None:
    """The rule's length for a curve.json's measurement (its intervals stored as fractions, its scores in points)."""
    ci95 = {n: [100 * lo, 100 * hi] for n, (lo, hi) in curve["ci95"].items()} if curve.get("ci95") else None
    return choose(curve["scores"], ci95, curve.get("max_length"))


def overrides(length: int) -> list[str]:
    """Regime (b)'s length overrides: x_long, x_short and the evaluation at 1x, 2x and 4x x_long."""
    return [f"data.long_len={length}", f"data.short_len={length // RATIO}",
            f"eval.lengths=[short,{','.join(str(k * length) for k in EVAL_MULTIPLES)}]"]


def measure(root: Path, extra: list[str], candidates: tuple[int, ...] = CANDIDATES) -> dict:
    run_dir = root / "curve"
    command = [sys.executable, "-m", "solopo.evaluate", "experiment=decisive/a", f"seed={CURVE_SEED}",
               f"eval.lengths=[short,{','.join(map(str, candidates))}]", *extra, f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    results = json.loads((run_dir / "results.json").read_text())
    table = results["eval"]["model"]
    curve = {"scores": {str(n): 100 * s for n, s in table["by_length"].items()}, "n": table["n_by_length"],
             "ci95": table["ci95_by_length"], "max_length": results["config"]["model"]["max_length"],
             "command": command}
    return with_choice(curve)


def with_choice(curve: dict) -> dict:
    """``curve`` with the rule's choice and overrides (they are derived: the scores and intervals are the data)."""
    chosen = chosen_length(curve)
    return {**curve, "chosen": chosen, "overrides": overrides(chosen) if chosen else [], "rule": RULE}


def page(curve: dict) -> str:
    rows = [f"| {n} | {s:.1f} | {curve['n'][n]} |" for n, s in curve["scores"].items()]
    choice = (f"chosen: x_long {curve['chosen']}, x_short {curve['chosen'] // RATIO} tokens"
              if curve["chosen"] else "no length qualifies: regime (b) cannot run as planned")
    return "\n".join(["# Base model: sub-EM by context length (seed 1000's questions)", "", f"Rule: {RULE}; {choice}.",
                      "", "| length | sub-EM (%) | answers |", "|---|---|---|", *rows, ""])


def read_overrides(path: Path) -> list[str] | None:
    """Regime (b)'s overrides, chosen by this rule from a curve.json's measurement; None when the curve was not
    measured yet or no length qualifies (regime (b) then waits)."""
    if not path.exists():
        return None
    chosen = chosen_length(json.loads(path.read_text()))
    return overrides(chosen) if chosen else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the study directory")
    parser.add_argument("--lengths", default=",".join(map(str, CANDIDATES)), help="candidate x_long lengths")
    parser.add_argument("--choose-again", action="store_true", help="no evaluation: apply this rule to the "
                        "measurement in <root>/curve.json and rewrite curve.json and curve.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args()
    if args.choose_again:
        curve = with_choice(json.loads((args.root / "curve.json").read_text()))
    else:
        curve = measure(args.root.resolve(), args.overrides, tuple(int(n) for n in args.lengths.split(",")))
    (args.root / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    (args.root / "curve.md").write_text(page(curve))
    print(page(curve))


if __name__ == "__main__":
    main()
