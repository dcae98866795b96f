"""Regime (b)'s length, chosen from a measured curve: the base model's greedy sub-EM by context length.

    python experiments/decisive/curve.py --root /tmp/decisive            # on the GPU, before regime (b) runs
    python experiments/decisive/curve.py --root /tmp/d -- model=tiny trainer=cpu eval.n_items=2 ...

Runs `python -m solopo.evaluate` on the questions of seed 1000's test world, which no run of the study trains or
is evaluated on (its seeds are 0-4), so no setting is tuned on the test questions. The rule: x_long is the longest
candidate length at which the base model answers at least half as often as on the evidence alone (Long-PO then
samples pairs about as often as SoLoPO does), x_short a seventh of it (the paper's ratio). Writes
<root>/curve/ (the evaluation), <root>/curve.json ({"scores", "n", "chosen", "overrides", "rule"}) and curve.md;
the launcher reads curve.json for regime (b)'s overrides.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CURVE_SEED = 1000  # a world of its own: the study's runs use seeds 0-4
CANDIDATES = (512, 768, 1024, 1536, 2048, 3072, 4096)
DEFAULT_LENGTH = 1024  # conf/experiment/decisive/b.yaml's, until the curve has chosen
RATIO = 7  # x_long / x_short, the paper's
SHARE = 0.5  # of the evidence-only accuracy, at the chosen length
RULE = (f"the longest x_long at which the base model's greedy sub-EM is at least {SHARE:g} x its sub-EM on the "
        f"evidence alone; x_short = x_long / {RATIO}")


def choose(scores: dict[str, float], share: float = SHARE) -> int | None:
    """The longest length whose score is at least ``share`` x the evidence-only score; None when none is."""
    floor = share * scores["short"]
    fits = [int(n) for n, score in scores.items() if n != "short" and score >= floor and score > 0]
    return max(fits, default=None)


def overrides(length: int) -> list[str]:
    """Regime (b)'s length overrides: x_long, x_short and the evaluation at 1x, 2x and 4x x_long."""
    return [f"data.long_len={length}", f"data.short_len={length // RATIO}",
            f"eval.lengths=[short,{length},{2 * length},{4 * length}]"]


def measure(root: Path, extra: list[str], candidates: tuple[int, ...] = CANDIDATES) -> dict:
    run_dir = root / "curve"
    command = [sys.executable, "-m", "solopo.evaluate", "experiment=decisive/a", f"seed={CURVE_SEED}",
               f"eval.lengths=[short,{','.join(map(str, candidates))}]", *extra, f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    table = json.loads((run_dir / "results.json").read_text())["eval"]["model"]
    scores = {str(n): 100 * s for n, s in table["by_length"].items()}
    chosen = choose(scores)
    return {"scores": scores, "n": table["n_by_length"], "ci95": table["ci95_by_length"], "chosen": chosen,
            "overrides": overrides(chosen) if chosen else [], "rule": RULE, "command": command}


def page(curve: dict) -> str:
    rows = [f"| {n} | {s:.1f} | {curve['n'][n]} |" for n, s in curve["scores"].items()]
    choice = (f"chosen: x_long {curve['chosen']}, x_short {curve['chosen'] // RATIO} tokens"
              if curve["chosen"] else "no length qualifies: regime (b) cannot run as planned")
    return "\n".join(["# Base model: sub-EM by context length (seed 1000's questions)", "", f"Rule: {RULE}; {choice}.",
                      "", "| length | sub-EM (%) | answers |", "|---|---|---|", *rows, ""])


def read_overrides(path: Path) -> list[str] | None:
    """Regime (b)'s overrides from a curve.json; None when it is missing (the curve was not measured yet)."""
    return json.loads(path.read_text())["overrides"] if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the study directory")
    parser.add_argument("--lengths", default=",".join(map(str, CANDIDATES)), help="candidate x_long lengths")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args()
    curve = measure(args.root.resolve(), args.overrides, tuple(int(n) for n in args.lengths.split(",")))
    (args.root / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    (args.root / "curve.md").write_text(page(curve))
    print(page(curve))


if __name__ == "__main__":
    main()
