"""solopo's commands called inside the test process: the function a console script calls (solopo-train, solopo-eval,
solopo-report, solopo-build), with the command line in sys.argv and its output captured, answered as subprocess.run
answers. A smoke run costs about 2 CPU-seconds here against 9 in a new interpreter, whose imports (torch,
transformers, Lightning) take 6; a refused command costs almost nothing.

What only a new process shows keeps a subprocess: a fresh interpreter's exit status and output
(test_validation.test_the_run_stops_before_any_model_loads, test_cli), what loads before torch (test_cli), signals
(reliability/test_preemption), several processes (distributed/), the installed wheel (test_install)."""
import contextlib
import importlib
import io
import os
import signal
import subprocess
import sys

from hydra.core.hydra_config import HydraConfig

# python -m MODULE runs MODULE's entry function; the report's lives in its __main__. solopo.run:main is Hydra's task
# function alone, as a launcher's job runs it (an Optuna trial, a SLURM job): without the command line's checks.
ENTRIES = {"solopo.run": ("solopo.run", "entry"), "solopo.evaluate": ("solopo.evaluate", "entry"),
           "solopo.report": ("solopo.report.__main__", "main"), "solopo.build": ("solopo.build", "entry"),
           "solopo.run:main": ("solopo.run", "main")}


def call(module: str, args, expect: int | None = 0, env: dict | None = None, cwd=None,
         argv0: str | None = None) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in this process, with ``env`` added to the environment and in ``cwd``; all three are
    put back afterwards, and so is Hydra's record of the running job's config (HydraConfig), which Hydra's --cfg sets
    and leaves set: a later check would read that command line's config group choices. The exit status is the one Python would give (SystemExit's code; a message instead of a code
    printed to stderr, then 1); an unhandled exception propagates (HYDRA_FULL_ERROR=1) with its traceback.
    ``expect``: the exit status asserted (None: not checked). ``argv0``: the name the command was called by, in
    sys.argv[0] (a console script's path; default MODULE)."""
    path, name = ENTRIES[module]
    entry = getattr(importlib.import_module(path), name)
    forget_wandb()  # before the environment is saved: the session's service token must not come back with it
    argv, environ, here, hydra_cfg = sys.argv, dict(os.environ), os.getcwd(), HydraConfig.instance().cfg
    sigpipe = signal.getsignal(signal.SIGPIPE) if hasattr(signal, "SIGPIPE") else None  # --help sets its default
    os.environ.update({"WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", **(env or {})})
    sys.argv = [argv0 or module, *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = exit_status(entry)
    finally:
        forget_wandb()
        sys.argv = argv
        HydraConfig.instance().cfg = hydra_cfg
        os.chdir(here)
        os.environ.clear()
        os.environ.update(environ)  # e.g. the seed Lightning leaves in PL_GLOBAL_SEED
        if sigpipe is not None:
            signal.signal(signal.SIGPIPE, sigpipe)
    done = subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())
    assert expect is None or code == expect, f"exit status {code}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def exit_status(entry) -> int:
    try:
        entry()
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    return 0


def forget_wandb() -> None:
    """wandb keeps its settings, an API key read from the environment among them, in a session of the process, and
    the address of its service process in WANDB_SERVICE: a command starts without either, as in a new process, and
    leaves neither behind for the next test (a stale address made the next wandb.init fail to connect)."""
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
        os.environ.pop("WANDB_SERVICE", None)


def run_here(args, expect: int | None = 0, **kwargs) -> subprocess.CompletedProcess:
    """``python -m solopo.run ARGS`` in this process."""
    return call("solopo.run", args, expect, **kwargs)
