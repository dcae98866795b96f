"""Issue 21's reliability cases, run as a new user would against one checkout of solopo, and the table of how
many behaved well per category (bad input files, bad settings, faults, security).

    python experiments/reliability/cases.py --checkout /tmp/base --out experiments/reliability/before.json
    python experiments/reliability/cases.py --checkout . --out experiments/reliability/after.json
    python experiments/reliability/cases.py --table experiments/reliability/before.json experiments/reliability/after.json

Each case is a command line on the smoke experiment (tiny random model, CPU) and what behaving well means:
``refused``: exit status 2, one stderr line (log lines aside) that names the key or file, no traceback, no model
loaded;
``warned``: exit 0 with a warning that names the problem; or a case's own check (files, equal losses).
The cases use only settings both the old and the new layout of the package accept.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

SMOKE = ["experiment=smoke", "logger=none", "trainer.enable_progress_bar=false", "eval.enabled=false"]
CATEGORIES = ("bad input files", "bad settings", "faults", "security")
LOG_LINES = ("[", "Seed set to")  # Hydra's log lines and Lightning's seed note, which precede a later error
LOADED = "parameters ("  # the log line of a loaded model (solopo.training.models.load_models)


@dataclass
class Case:
    category: str
    name: str
    args: list[str]  # after SMOKE; "{tmp}" is the case's scratch directory
    names: str = ""  # refused: what the one line must name
    warns: str = ""  # warned: what the output must contain (exit 0)
    setup: Optional[Callable[[Path], None]] = None
    check: Optional[Callable[[Path, subprocess.CompletedProcess], str]] = None  # "" when it behaved well
    env: dict = field(default_factory=dict)  # a value of None removes the variable from the environment
    smoke: bool = True


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def musique(id_: str, answer: str, passages: int = 3) -> dict:
    paragraphs = [{"idx": i, "title": f"T{i}", "paragraph_text": f"Passage {i} of {id_} says something about {answer}. " * 3,
                   "is_supporting": i == 0} for i in range(passages)]
    return {"id": id_, "paragraphs": paragraphs, "question": f"What is {id_}?", "answer": answer,
            "answer_aliases": [], "answerable": True,
            "question_decomposition": [{"id": 1, "question": "q", "answer": answer, "paragraph_support_idx": 0}]}


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def pair(id_: str, chosen: str = "Paris", rejected: str = "Lyon") -> dict:
    return {"id": id_, "question": f"Capital {id_}?", "answers": [chosen], "chosen": chosen, "rejected": rejected,
            "prompt_short": f"Paris is the capital. Question {id_}?",
            "prompt_long": f"Lyon is a city. Paris is the capital. Question {id_}?"}


def pairs_file(name: str, records=None, text: Optional[str] = None):
    return lambda tmp: write(tmp / name, text if text is not None else jsonl(records))


def symlink_loop(tmp: Path) -> None:
    (tmp / "loop.jsonl").symlink_to(tmp / "loop.jsonl")


def deep_json(tmp: Path) -> None:
    write(tmp / "deep.json", "[" * 100_000 + "]" * 100_000)


def foreign_checkpoint(tmp: Path) -> None:
    import torch
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"weights": torch.zeros(2)}, tmp / "run" / "checkpoints" / "last.ckpt")


def truncated_checkpoint(tmp: Path) -> None:
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut here")


class Payload:
    """A pickle that runs code when loaded: a checkpoint must never be unpickled with arbitrary globals."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_checkpoint(tmp: Path) -> None:
    import torch
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": Payload(str(tmp / "pwned"))}, tmp / "run" / "checkpoints" / "last.ckpt")


def read_only_run_dir(tmp: Path) -> None:
    (tmp / "ro").mkdir()
    os.chmod(tmp / "ro", 0o500)


def no_secret_written(secret: str) -> Callable[[Path, subprocess.CompletedProcess], str]:
    def check(tmp: Path, done: subprocess.CompletedProcess) -> str:
        leaks = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and secret in p.read_text(errors="ignore")]
        if leaks:
            return f"secret written to {', '.join(leaks[:3])}"
        return "" if done.returncode in (0, 2) and "Traceback" not in done.stderr else f"exit {done.returncode}"
    return check


def inside_sweep(tmp: Path, done: subprocess.CompletedProcess) -> str:
    escaped = [p for p in tmp.rglob("results.json") if not p.is_relative_to(tmp / "sweep")]
    if not escaped and not any(tmp.rglob("results.json")):
        return f"no run finished (exit {done.returncode})"
    return f"run directory outside the sweep dir: {escaped[0]}" if escaped else ""


def not_unpickled(tmp: Path, done: subprocess.CompletedProcess) -> str:
    if (tmp / "pwned").exists():
        return "the checkpoint's pickle ran code"
    return refused(done, "last.ckpt")


def steps_losses(run_dir: Path) -> dict[int, float]:
    import csv
    rows = csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv"))
    key = "train/loss_step" if "train/loss_step" in (rows.fieldnames or ()) else "train/loss"  # f6ffd7e's name first
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def resume_equal(checkout: Path, env: dict, tmp: Path, periodic: bool) -> str:
    """Stopped after a few steps (SIGTERM, or kill -9 after a periodic checkpoint), then resumed: the per-step
    losses equal the uninterrupted run's."""
    # the CSV logger writes every step's row at once (its default buffers 100), so the cut can wait for step 6
    common = [sys.executable, "-m", "solopo.run", *SMOKE[:1], "logger=csv", "trainer.log_every_n_steps=1",
              "+logger.flush_logs_every_n_steps=1",
              "trainer.enable_progress_bar=false", "eval.enabled=false", "data.source.n_train=24",
              "trainer.max_steps=16"] + (["checkpoint.every_n_steps=2"] if periodic else [])
    subprocess.run(common + [f"hydra.run.dir={tmp}/whole"], cwd=checkout, env=env, capture_output=True, timeout=600)
    cut = subprocess.Popen(common + [f"hydra.run.dir={tmp}/cut"], cwd=checkout, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp / "cut" / "csv" / "version_0" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and cut.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 6 and (not periodic or (tmp / "cut" / "checkpoints" / "last.ckpt").is_file()):
            break
        time.sleep(0.2)
    cut.send_signal(signal.SIGKILL if periodic else signal.SIGTERM)
    if cut.wait() == 0:
        return "the run finished before it was stopped"
    done = subprocess.run(common + [f"hydra.run.dir={tmp}/cut", "ckpt_path=last"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return f"resume exit {done.returncode}"
    whole, resumed = steps_losses(tmp / "whole"), steps_losses(tmp / "cut")
    differ = [s for s in whole if resumed.get(s) != whole[s]]
    return f"{len(differ)} of {len(whole)} step losses differ" if differ else ""


def refused(done: subprocess.CompletedProcess, names: str) -> str:
    """A non-zero exit, no traceback, one stderr line (log lines aside) that names ``names``, no model loaded.
    The exit status itself (2 is the contract since issue 21) is counted apart, in the table."""
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(LOG_LINES)]
    if done.returncode == 0:
        return "exit 0"
    if "Traceback" in done.stderr:
        return f"exit {done.returncode} with a traceback"
    if len(lines) != 1:
        return f"exit {done.returncode}, {len(lines)} stderr lines"
    if names.lower() not in lines[0].lower():
        return f"does not name {names}: {lines[0][:120]}"
    return "model loaded first" if LOADED in done.stdout + done.stderr else ""


def warned(done: subprocess.CompletedProcess, pattern: str) -> str:
    if done.returncode != 0:
        return f"exit {done.returncode}"
    return "" if pattern.lower() in (done.stdout + done.stderr).lower() else f"no warning ({pattern!r})"


def data(option: str, path: str, *more: str) -> list[str]:
    return [f"data={option}", f"data.path={path}", *more]


FILE_CASES = [
    Case("bad input files", "missing data.path", data("pairs", "{tmp}/none.jsonl"), names="none.jsonl"),
    Case("bad input files", "data.path is a directory", data("pairs", "{tmp}"), names="{tmp}"),
    Case("bad input files", "data.path is a symlink loop", data("pairs", "{tmp}/loop.jsonl"), names="loop.jsonl",
         setup=symlink_loop),
    Case("bad input files", "100k-deep JSON nesting", data("musique", "{tmp}/deep.json"), names="deep.json",
         setup=deep_json),
    Case("bad input files", "malformed JSON line", data("pairs", "{tmp}/p.jsonl"), names="p.jsonl",
         setup=pairs_file("p.jsonl", text=jsonl([pair("a"), pair("b")]) + '{"id": "c", "question": \n')),
    Case("bad input files", "repeated id", data("pairs", "{tmp}/p.jsonl"), names="p.jsonl",
         setup=pairs_file("p.jsonl", [pair("a"), pair("b"), pair("a")])),
    Case("bad input files", "empty file", data("pairs", "{tmp}/p.jsonl"), names="p.jsonl",
         setup=pairs_file("p.jsonl", text="")),
    Case("bad input files", "missing field (chosen)", data("pairs", "{tmp}/p.jsonl"), names="chosen",
         setup=pairs_file("p.jsonl", [pair("a"), {k: v for k, v in pair("b").items() if k != "chosen"}])),
    Case("bad input files", "field of the wrong type", data("pairs", "{tmp}/p.jsonl"), names="question",
         setup=pairs_file("p.jsonl", [pair("a"), {**pair("b"), "question": 7}])),
    Case("bad input files", "chosen equals rejected", data("pairs", "{tmp}/p.jsonl"), names="p.jsonl",
         setup=pairs_file("p.jsonl", [pair("a"), pair("b", "Paris", "Paris")])),
    Case("bad input files", "chosen and rejected differ in whitespace only", data("pairs", "{tmp}/p.jsonl"),
         names="p.jsonl", setup=pairs_file("p.jsonl", [pair("a"), pair("b", "Paris", " Paris\n")])),
    Case("bad input files", "not UTF-8", data("pairs", "{tmp}/p.jsonl"), names="p.jsonl",
         setup=lambda tmp: (tmp / "p.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")),
    Case("bad input files", "musique file with unknown fields only", data("musique", "{tmp}/m.jsonl"), names="m.jsonl",
         setup=pairs_file("m.jsonl", [{"foo": 1}, {"bar": 2}])),
    Case("bad input files", "passages cannot fill data.long_len", data("musique", "{tmp}/m.jsonl", "data.long_len=4000",
                                                                       "data.source.n_val=1"),
         names="data.long_len", setup=pairs_file("m.jsonl", [musique(f"q{i}", f"A{i}") for i in range(4)])),
    Case("bad input files", "gold pairs without any wrong answer", data("musique", "{tmp}/m.jsonl",
                                                                      "data.source.n_val=1"),
         names="m.jsonl", setup=pairs_file("m.jsonl", [musique(f"q{i}", "Same", passages=30) for i in range(4)])),
    Case("bad input files", "data=musique without data.path", ["data=musique"], names="data.path"),
    Case("bad input files", "data.path with data=qa", ["+data.path={tmp}/p.jsonl"], names="data.path",
         setup=pairs_file("p.jsonl", [pair("a"), pair("b")])),
]

SETTING_CASES = [Case("bad settings", setting, setting.split(), names=key) for setting, key in [
    ("trainer.gradient_clip_val=-1", "gradient_clip_val"),
    ("ra.alpha=inf", "ra.alpha"), ("algo.beta=inf", "algo.beta"), ("optim.lr=inf", "optim.lr"),
    ("optim.lr=nan", "optim.lr"), ("optim.lr=-0.1", "optim.lr"), ("ra.alpha=-1", "ra.alpha"),
    ("trainer.max_epochs=0", "max_epochs"), ("ra=both method=long_po", "ra"), ("seed=abc", "seed"),
    ("trainer.devices=0", "devices"), ("+optim.lrr=1", "lrr"), ("algo=dpx", "algo"),
    ("algo._target_=solopo.algos.SimP", "algo._target_"), ("data.long_len=10", "data.long_len"),
    ("data.long_len=100000", "data.long_len"), ("data.batch_size=0", "batch_size"),
    ("model.dtype=float8", "model.dtype"), ("trainer.precision=17", "precision"),
    ("trainer.accumulate_grad_batches=0", "accumulate_grad_batches"), ("data.pairs=silver", "data.pairs"),
    ("trainer.max_steps=-5", "max_steps"), ("model.max_length=0", "model.max_length"),
    ("reference=sometimes", "reference"), ("eval.enabled=true eval.lengths=[short,99999]", "eval.lengths"),
    ("trainer.accelerator=gpu", "accelerator"),
]] + [
    Case("bad settings", "missing local model path", ["model.name={tmp}/no-model", "model.random_init=null"],
         names="model.name"),
    Case("bad settings", "local folder that is not a model", ["model.name={tmp}", "model.random_init=null"],
         names="model.name"),
    Case("bad settings", "unreachable hub id (offline)", ["model.name=nobody/no-such-model", "model.random_init=null"],
         names="model.name", env={"HF_HUB_OFFLINE": "1"}),
    # as a user has it: a key and no WANDB_MODE (the runner sets WANDB_MODE=offline for the other cases)
    Case("bad settings", "invalid WANDB_API_KEY", ["logger=wandb"], warns="WANDB_API_KEY",
         env={"WANDB_API_KEY": "not-a-key", "WANDB_MODE": None}),
    Case("bad settings", "empty WANDB_MODE", ["logger=wandb"], names="WANDB_MODE", env={"WANDB_MODE": ""}),
    Case("bad settings", "logger.mode=bogus", ["logger=wandb", "logger.mode=bogus"], names="logger.mode"),
    Case("bad settings", "method=nosuch (an unknown option of a group)", ["method=nosuch"], names="short_po"),
    Case("bad settings", "model=nosuch (an unknown option of a group)", ["model=nosuch"], names="smollm2_135m"),
]

FAULT_CASES = [
    Case("faults", "truncated last.ckpt", ["hydra.run.dir={tmp}/run", "ckpt_path=last"], names="last.ckpt",
         setup=truncated_checkpoint),
    Case("faults", "foreign last.ckpt", ["hydra.run.dir={tmp}/run", "ckpt_path=last"], names="last.ckpt",
         setup=foreign_checkpoint),
    Case("faults", "ckpt_path to a missing file", ["ckpt_path={tmp}/gone.ckpt"], names="gone.ckpt"),
    Case("faults", "read-only run directory", ["hydra.run.dir={tmp}/ro/run"], names="{tmp}/ro", setup=read_only_run_dir),
    Case("faults", "unwritable cache directory", ["algo=dpo"], warns="cache", env={"SOLOPO_CACHE": "/proc/solopo"}),
    Case("faults", "NaN loss from a huge learning rate", ["optim.lr=1e30", "trainer.max_steps=8"],
         check=lambda tmp, done: "" if done.returncode in (0, 1) and "Traceback" not in done.stderr
         else f"exit {done.returncode}"),
    Case("faults", "SIGTERM mid-epoch, then resume: equal losses", [], smoke=False),
    Case("faults", "kill -9 after a periodic checkpoint, then resume: equal losses", [], smoke=False),
]

SECRET = "hf_SECRETabcdef1234567890"
SECURITY_CASES = [
    Case("security", "token as a config value", [f"+model.extra.token={SECRET}", "hydra.run.dir={tmp}/run"],
         check=no_secret_written(SECRET)),
    Case("security", "password as a config value", [f"+logger.password={SECRET}", "hydra.run.dir={tmp}/run"],
         check=no_secret_written(SECRET)),
    Case("security", "WANDB_API_KEY in the environment not written", ["hydra.run.dir={tmp}/run"],
         env={"WANDB_API_KEY": SECRET}, check=no_secret_written(SECRET)),
    # a path that resolves (through the folder x, which exists) and whose ../ would climb out of a job's folder name
    Case("security", "data.path with ../ in a sweep", ["-m", "data=pairs", "data.path={tmp}/x/" + "../" * 12 + "{tmp}/p.jsonl",
                                                         "hydra.sweep.dir={tmp}/sweep"],
         setup=lambda tmp: (pairs_file("p.jsonl", [pair(i) for i in "abcd"])(tmp), (tmp / "x").mkdir()), check=inside_sweep),
    Case("security", "checkpoint whose pickle runs code", ["hydra.run.dir={tmp}/run", "ckpt_path=last"],
         setup=malicious_checkpoint, check=not_unpickled),
]
CASES = FILE_CASES + SETTING_CASES + FAULT_CASES + SECURITY_CASES


def with_env(env: dict, changes: dict) -> dict:
    """``env`` with a case's changes: a value of None removes the variable."""
    return {k: v for k, v in {**env, **changes}.items() if v is not None}


def solopo_run(args: list[str], checkout: Path, env: dict) -> subprocess.CompletedProcess:
    """`python -m solopo.run ARGS` in a new interpreter, in ``checkout``, with the environment ``env``."""
    return subprocess.run([sys.executable, "-m", "solopo.run", *args], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=600)


Launch = Callable[[list[str], Path, dict], subprocess.CompletedProcess]


def run_case(case: Case, checkout: Path, env: dict, launch: Launch = solopo_run) -> tuple[str, Optional[int]]:
    """"" when the case behaved well, else what went wrong; and the exit status of a refused case. ``launch`` runs
    the command (the tests run it inside their own process)."""
    with tempfile.TemporaryDirectory(prefix="solopo-case-") as scratch:
        tmp = Path(scratch)
        if not case.smoke:
            return resume_equal(checkout, env, tmp, periodic="periodic" in case.name), None
        if case.setup:
            case.setup(tmp)
        args = [a.replace("{tmp}", scratch) for a in case.args]
        if not any(a.startswith("hydra.") for a in args):
            args.append(f"hydra.run.dir={scratch}/run")
        flags = [a for a in args if a == "-m"]  # Hydra's flags go before the overrides (argparse)
        done = launch([*flags, *SMOKE, *[a for a in args if a != "-m"]], checkout, with_env(env, case.env))
        os.chmod(tmp, 0o700)
        for path in tmp.rglob("*"):
            if path.is_dir():
                os.chmod(path, 0o700)
        if case.check:
            return case.check(tmp, done), None
        if case.warns:
            return warned(done, case.warns), None
        return refused(done, case.names.replace("{tmp}", scratch)), done.returncode


def run_all(checkout: Path, out: Path, only: Optional[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1", WANDB_MODE="offline",
               HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True,
                            text=True).stdout.strip()
    results = json.loads(out.read_text())["results"] if only and out.is_file() else []
    for case in CASES:
        if only and only not in case.name:
            continue
        started = time.time()
        problem, status = run_case(case, checkout, env)
        row = {"category": case.category, "name": case.name, "ok": not problem, "problem": problem, "exit": status,
               "seconds": round(time.time() - started, 1)}
        # a rerun of some cases replaces their rows; the file is rewritten after every case, so a cut run keeps its rows
        results = [r for r in results if r["name"] != case.name] + [row]
        print(("ok    " if not problem else "FAIL  ") + f"{case.category}: {case.name} (exit {status}) {problem}",
              flush=True)
        out.write_text(json.dumps({"commit": commit, "machine": f"{platform.node()} {platform.machine()}, "
                                   f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
                                   "results": results}, indent=1))


def table(before: dict, after: dict) -> str:
    """Markdown: per category, cases tried and behaved well before and after; then every case."""
    def counts(rows) -> str:
        return f"{sum(r['ok'] for r in rows)} of {len(rows)}"

    lines = [f"| category | behaved well before ({before['commit']}) | after ({after['commit']}) |", "|---|---|---|"]
    for category in CATEGORIES:
        lines.append(f"| {category} | {counts([r for r in before['results'] if r['category'] == category])} | "
                     f"{counts([r for r in after['results'] if r['category'] == category])} |")
    lines.append(f"| all | {counts(before['results'])} | {counts(after['results'])} |")
    lines += ["", "| category | case | before | after |", "|---|---|---|---|"]
    old = {r["name"]: r for r in before["results"]}
    new = {r["name"]: r for r in after["results"]}
    for case in CASES:
        cells = [cell(side.get(case.name)) for side in (old, new)]
        lines.append(f"| {case.category} | {case.name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def cell(row: Optional[dict]) -> str:
    """ok (with the exit status of a refusal other than 2), what went wrong, or not run."""
    if row is None:
        return "not run"
    if row["ok"]:
        return "ok" + (f" (exit {row['exit']})" if row.get("exit") not in (None, 2) else "")
    return row["problem"].replace("|", "/")[:90]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, help="the solopo checkout to run the cases against")
    parser.add_argument("--out", type=Path, help="where the results go (JSON)")
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--table", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="print the markdown table")
    args = parser.parse_args()
    if args.table:
        print(table(*(json.loads(p.read_text()) for p in args.table)), end="")
    else:
        run_all(args.checkout.resolve(), args.out, args.only)


if __name__ == "__main__":
    main()
