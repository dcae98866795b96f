"""The command line as a user meets it: --help and --cfg answered before torch loads, the value a sweeper
optimises (its own file: test_optimized_metric.py), a quiet log with plain progress lines off a terminal, and a smoke Optuna search."""
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from solopo.settings.build import ConfigError
from solopo.training.loggers import quiet_libraries

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pytorch_lightning", "transformers", "matplotlib", "wandb")


def python(code: str, cwd=ROOT, timeout=300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "offline", **env})


@pytest.mark.parametrize("module, args", [("solopo.run", ["--help"]), ("solopo.run", ["experiment=smoke", "--cfg", "job"]),
                                          ("solopo.evaluate", ["--help"]),
                                          ("solopo.report.__main__", ["--help"]), ("solopo.build", ["--help"])])
def test_help_and_cfg_answer_before_the_heavy_imports(module, args):
    """What keeps `solopo-train --help` under 2 s: the answer comes before torch, Lightning, transformers,
    matplotlib or wandb is imported (each takes seconds on a cold start). The console script's own function runs (entry,
    where the module has one: what runs before Hydra's main counts too). --cfg job prints the config first, then checks
    it as a run would (tests/reliability/test_preflight.py), which imports torch: the process ends at the first heavy
    import, since what comes after it is not this test's."""
    done = python(f"import os, sys; sys.argv = ['solopo', *{args!r}]\n"
                  "class Heavy:  # says when the first heavy module is imported, in the order of the output\n"
                  "    def find_spec(self, name, path=None, target=None):\n"
                  f"        if name in {HEAVY!r}:\n"
                  "            print('HEAVY', name, flush=True)\n"
                  "            os._exit(0)\n"
                  "sys.meta_path.insert(0, Heavy())\n"
                  f"import {module} as entry\n"
                  "try:\n    getattr(entry, 'entry', entry.main)()\nexcept SystemExit:\n    pass\n")
    assert done.returncode == 0, done.stderr[-2000:]
    answer, heavy, _ = done.stdout.partition("HEAVY")
    assert "optimized_metric" in answer if "--cfg" in args else answer.strip() and not heavy, done.stdout[-500:]


def console_scripts() -> list[tuple[str, str, str]]:
    """(script, module, function) of each console script setup.cfg installs."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = [line.split("=") for line in setup["options.entry_points"]["console_scripts"].split("\n") if line.strip()]
    return [(name.strip(), *target.strip().split(":")) for name, target in lines]


@pytest.mark.parametrize("script, module, function", console_scripts())
def test_help_names_the_command_as_it_was_called(script, module, function):
    """`solopo-report --help` said `usage: python -m solopo.report`, `solopo-train --help` "run is powered by
    Hydra": each names itself now, the console script by its name and `python -m` by the module. The console script's
    function runs in this process (in_process.call: setup.cfg's function, with the script's path in sys.argv[0]);
    `python -m` in a new one."""
    from in_process import ENTRIES, call

    assert ENTRIES[module.removesuffix(".__main__")] == (module, function)
    called = call(module.removesuffix(".__main__"), ["--help"], argv0=f"/venv/bin/{script}")
    as_module = subprocess.run([sys.executable, "-m", module.removesuffix(".__main__"), "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
    for done, name in ((called, script), (as_module, f"python -m {module.removesuffix('.__main__')}")):
        assert done.returncode == 0, done.stderr[-2000:]
        first = done.stdout.strip().splitlines()[0]
        assert first.startswith((f"usage: {name} ", f"{name} is powered by Hydra", f"{name}: ")), first


@pytest.mark.parametrize("module, args", [("solopo.run", ["--help"]), ("solopo.evaluate", ["--help"]),
                                          ("solopo.build", ["--help"]),
                                          ("solopo.run", ["experiment=smoke", "--cfg", "job"])])
def test_an_answer_whose_reader_stops_early_ends_without_a_traceback(module, args):
    """`solopo-train --help | head -3` printed a BrokenPipeError traceback where head had stopped reading: here the
    reader is gone before the answer comes."""
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    stderr = process.communicate(timeout=300)[1]
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-2000:]


def test_a_config_dir_of_the_user_adds_options(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nseed: 7\n")
    done = python("import sys; sys.argv = ['solopo-train', '--config-dir', '.', 'experiment=mine', '--cfg', 'job']\n"
                  "import solopo.run\nsolopo.run.main()", cwd=tmp_path)
    assert done.returncode == 0 and "\nseed: 7\n" in done.stdout, done.stderr[-2000:]


def test_a_user_setting_for_tqdm_wins(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "0")
    quiet_libraries()
    assert os.environ["TQDM_DISABLE"] == "0"


def test_off_a_terminal_transformers_shows_no_bar_loading_weights(monkeypatch):
    """The embedded model's "Loading weights" bar was written to run.log as one line of redraws: transformers'
    bars have their own switch, which TQDM_DISABLE does not reach once tqdm is imported."""
    from transformers.utils import logging as transformers_logging

    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # pytest's stderr is no terminal
    try:
        quiet_libraries()
        assert not transformers_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.enable_progress_bar()


def test_lightning_advertisement_is_dropped_and_its_other_lines_kept(caplog):
    quiet_libraries()
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=rank_zero.name):
        rank_zero.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


@pytest.mark.parametrize("rank, written", [(0, ["step 1/4", "no val pairs", "boom"]), (1, ["no val pairs", "boom"])])
def test_other_processes_log_warnings_and_errors_only(monkeypatch, rank, written):
    """In a run over two processes each INFO and progress line was written twice (console and run.log): a process
    other than rank 0 passes warnings and errors only, through every handler of the root logger (Hydra's)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root, solopo_log = logging.getLogger(), logging.getLogger("solopo")
    monkeypatch.setattr(rank_zero_only, "rank", rank)  # as Lightning reads it from the launcher's environment
    monkeypatch.setattr(root, "level", logging.INFO)
    monkeypatch.setattr(root, "handlers", [handler])  # pytest's own handlers stay as they were
    quiet_libraries()
    quiet_libraries()  # a second job of a sweep, in the same process
    solopo_log.info("step 1/4")
    solopo_log.warning("no val pairs")
    solopo_log.error("boom")
    assert out.getvalue().splitlines() == written and len(handler.filters) == (rank > 0)


def test_a_run_off_a_terminal_logs_progress_lines_and_no_noise(tmp_path, monkeypatch):
    """stderr is a pipe here, as in a SLURM or CI log: no bars (no carriage returns), plain progress lines in
    run.log, and none of the lines a user cannot act on (Lightning's advertisement and FLOPs: 0 table, a
    deprecation note, wandb's "anonymous" warning). The wandb logger without an API key runs offline: its run files
    in the run directory, no key in results.json, and no end-of-run summary (wandb prints it at exit, so the run
    is a new process)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    done = python("import sys; sys.argv = ['solopo-train', 'experiment=smoke', 'logger=wandb', "
                  f"'hydra.run.dir={tmp_path}']\nimport solopo.run\nsolopo.run.main()")
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    for noise in ("Tip:", "FLOPs", "LeafSpec", "anonymous", "\r", "it/s", "batch/s", "Loading `train_dataloader`"):
        assert noise not in output, noise
    log = (tmp_path / "run.log").read_text()
    assert "step 2/4: loss" not in log and "step 4/4: loss" in log  # every 10 steps, and the last
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert "WANDB_API_KEY" not in (tmp_path / "results.json").read_text()
    assert "Run history" not in output  # offline, wandb prints no summary of what the run logs


def test_progress_lines_every_n_steps_and_the_last(caplog):
    from solopo.training.loggers import ProgressLines

    class Trainer:
        max_steps, global_step, callback_metrics = 5, 0, {"train/loss_step": 1.5}

    trainer, callback = Trainer(), ProgressLines(every=2)
    callback.on_train_start(trainer, None)
    with caplog.at_level(logging.INFO, logger="solopo"):
        for step in range(1, 6):
            trainer.global_step = step
            callback.on_train_batch_end(trainer, None, None, None, step - 1)
    lines = [record.getMessage().split(",")[0] for record in caplog.records]
    assert lines == ["step 2/5: loss 1.5000", "step 4/5: loss 1.5000", "step 5/5: loss 1.5000"]
    assert caplog.records[0].getMessage().endswith(" left") and caplog.records[-1].getMessage().endswith(", 0 s left")


def test_progress_lines_after_slow_steps(caplog, monkeypatch):
    """A CPU run of 8 slow steps printed nothing while it trained (a line every 10 steps and the last): a step that
    ends 30 s or more after the previous line gets one, with the time left at the rate seen."""
    from solopo.training import loggers

    class Trainer:
        max_steps, global_step, callback_metrics = 8, 0, {"train/loss_step": 1.5}

    clock = iter([0.0, 40.0, 50.0, 90.0])  # on_train_start, then the end of steps 1, 2 and 3
    monkeypatch.setattr(loggers.time, "perf_counter", lambda: next(clock))
    trainer, callback = Trainer(), loggers.ProgressLines()
    callback.on_train_start(trainer, None)
    with caplog.at_level(logging.INFO, logger="solopo"):
        for step in (1, 2, 3):
            trainer.global_step = step
            callback.on_train_batch_end(trainer, None, None, None, step - 1)
    assert [r.getMessage() for r in caplog.records] == ["step 1/8: loss 1.5000, 0.03 steps/s, 4.7 min left",
                                                        "step 3/8: loss 1.5000, 0.04 steps/s, 2.1 min left"]


def test_a_smoke_optuna_search_finds_a_real_best_value(tmp_path):
    """hparams_search=optuna (the solopo[optuna] extra), 3 trials of the smoke run minimising val/loss: the best
    value Optuna reports is the val/loss one of the trials wrote to its results.json."""
    from in_process import run_here

    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the solopo[optuna] extra is not installed")
    run_here(["hparams_search=optuna", "experiment=smoke", "logger=none", "trainer.max_steps=2",
              "optimized_metric=val/loss", "hydra.sweeper.direction=minimize", "hydra.sweeper.n_trials=3",
              f"hydra.sweep.dir={tmp_path}"], cwd=ROOT)
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())["best_value"]
    trials = [json.loads(p.read_text())["metrics"]["val/loss"] for p in tmp_path.glob("*/results.json")]
    assert len(trials) == 3 and math.isfinite(best) and best == pytest.approx(min(trials))


FIXTURES = ROOT / "tests" / "fixtures"
# A path README shows, as a file of the tests' own: each data option's fixture, a folder of benchmark files
README_PATHS = {"musique": "musique.jsonl", "hotpotqa": "hotpotqa.json", "twowiki": "twowiki.json",
                "pairs": "pairs.jsonl"}
GPU_NEEDED = "trainer.accelerator=gpu but no CUDA GPU is visible"


def readme_commands() -> list[tuple[str, list[str]]]:
    """Every training and evaluation command in README's shell blocks (continued lines joined, comments dropped), as
    (module, arguments): `python -m solopo.run`, `solopo-train`, torchrun's `-m solopo.run`, `solopo.evaluate`."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                module = {"solopo-train": "run", "solopo-eval": "evaluate"}.get(word)
                if word in ("solopo.run", "solopo.evaluate") and words[i - 1] == "-m":
                    module = word.split(".")[1]
                if module:
                    commands.append((module, words[i + 1:]))
                    break
    return list({(m, tuple(a)): (m, a) for m, a in commands}.values())


def as_composed(args: list[str]) -> list[str]:
    """A command line's overrides as compose() takes them: a sweep's first choice, the tests' files for README's
    placeholders (/data/..., /path/to/...), Hydra's own settings (launcher, sweeper, run dir) left to Hydra."""
    options = dict(a.split("=", 1) for a in args if "=" in a)
    composed = []
    for arg in [a for a in args if "=" in a and not a.startswith(("hydra", "-"))]:
        key, value = arg.split("=", 1)
        value = value if value.startswith(("[", "{", "'")) else value.split(",")[0]
        if key == "data.path":
            value = str(FIXTURES / README_PATHS[options["data"]])
        elif key == "eval.benchmark.path":
            value = str(FIXTURES)
        composed.append(f"{key}={value}")
    return composed


def settings_of(module: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from solopo.settings.build import build_settings

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return build_settings(cfg, training=module == "run")


@pytest.mark.parametrize("module, args", readme_commands(), ids=[" ".join(a) or m for m, a in readme_commands()])
def test_readme_commands_are_valid_command_lines(module, args, tmp_path, monkeypatch):
    """Every training and evaluation command README shows passes the command line's checks and builds its settings
    as written (the smoke ones also run: test_run.test_readme_smoke_command); a GPU command asks for the GPU it needs.
    README's own scorer (mymetrics.py) is imported from its code block."""
    import re

    from solopo.preflight import preflight

    if any(a.startswith("hparams_search") for a in args):
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the solopo[optuna] extra is not installed")
    if "hydra/launcher=slurm" in args:
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the solopo[slurm] extra is not installed")
    (scorer,) = re.findall(r"```python\n# mymetrics.py\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (tmp_path / "mymetrics.py").write_text(scorer)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    preflight(args)
    try:
        settings_of(module, as_composed(args))
    except ConfigError as err:  # on this CPU machine: the same command with the trainer's accelerator left to it
        assert str(err).startswith(GPU_NEEDED) and "trainer=fsdp" in args, err
        settings_of(module, [*as_composed(args), "trainer.accelerator=auto"])


def test_readme_commands_are_found():
    found = readme_commands()
    assert ("run", ["algo=simpo", "data=qa"]) in found and sum(m == "evaluate" for m, _ in found) >= 4
    assert any(a[:1] == ["trainer=fsdp"] for _, a in found)  # torchrun's


def test_help_lists_each_group_with_its_options_as_typed(tmp_path):
    """--help listed `data/common: qa_file, sampling` (blocks, not options) and `experiment/decisive: a, b`, a line that
    reads as `experiment/decisive=a`, which Hydra refuses. Each group is one line now, its options as a command line
    picks them, a --config-dir's own options among them."""
    (tmp_path / "experiment" / "mine").mkdir(parents=True)
    (tmp_path / "experiment" / "mine" / "long.yaml").write_text("# @package _global_\nseed: 7\n")
    done = python("import sys; sys.argv = ['solopo-train', '--config-dir', '.', '--help']\n"
                  "import solopo.run\nsolopo.run.main()", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {line.split(": ")[0]: line.split(": ", 1)[1].split(", ") for line in done.stdout.splitlines()
             if ": " in line and not line.startswith((" ", "solopo"))}
    assert "common" not in " ".join(lines.get("data", ["missing"])) and "data/common" not in lines
    assert {"decisive/a", "mine/long", "smoke"} <= set(lines["experiment"]) and "experiment/decisive" not in lines
    assert lines["algo"] == ["cdpo", "dpo", "ipo", "orpo", "simpo"]
    # the examples name a run on one's own file, and the README section they point to
    assert "solopo-train data=pairs data.path=FILE" in done.stdout and '(README: "Your own data")' in done.stdout
    assert "\n## Your own data\n" in (ROOT / "README.md").read_text()
    shutil.copytree(ROOT / "solopo" / "conf", tmp_path / "conf")  # a primary config folder of the user's own
    (tmp_path / "conf" / "zzz").mkdir()
    (tmp_path / "conf" / "zzz" / "z1.yaml").write_text("seed: 7\n")
    done = python(f"import sys; sys.argv = ['solopo-train', '--config-path', '{tmp_path / 'conf'}', '--help']\n"
                  "import solopo.run\nsolopo.run.main()", cwd=tmp_path)
    assert done.returncode == 0 and "\nzzz: z1\n" in done.stdout, done.stderr[-2000:]
