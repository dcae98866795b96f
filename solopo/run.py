"""Train with SoLoPO (or a baseline) from the Hydra config in conf/.

    python -m solopo.run algo=simpo data=qa
    python -m solopo.run -m algo=dpo,simpo,orpo ra.alpha=0,1,3

Installed, the same entry is the console script `solopo-train`. This module is thin wiring: the command line's
preflight checks, the default run sized to the hardware, Hydra, and the value a sweeper optimises; the run itself is
solopo.training.pipeline.train, imported inside the task function so that Hydra answers --help, --cfg and shell
completion in seconds, before torch loads (--cfg job then checks the config it printed, as a run would).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from solopo.job_checks import values_checked
from solopo.preflight import preflight


def optimized_value(results: dict, metric: str | None) -> float:
    """The number a sweeper (hparams_search=optuna) optimises: the final metric named by optimized_metric
    (val/loss, eval/trained/avg_long, ...; every key of results.json's metrics and of its eval_summary); null: the
    evaluation's headline when it ran (eval/trained/avg_long; with eval.benchmark eval/trained/average), else
    val/rewards/accuracies, all higher-is-better."""
    from solopo.settings.build import ConfigError

    values = {**results["metrics"], **results.get("eval_summary", {})}
    named, metric = metric, metric or next(
        (key for key in ("eval/trained/avg_long", "eval/trained/average") if key in values), "val/rewards/accuracies")
    if metric not in values and metric.startswith("eval/") and "eval_summary" not in results:
        return float("nan")  # a process other than rank 0, which writes the evaluation's results and returns them
    if metric not in values and named is None:  # nothing validated or evaluated (data.source.n_val=0 with
        return float("nan")  # eval.enabled=false): a run that names no metric has none to return, and did its work
    if metric not in values:
        raise ConfigError(f"optimized_metric={metric}: this run has no such metric; it has {', '.join(sorted(values))}")
    return float(values[metric])


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra's task function; its value is what a sweeper optimises (optimized_metric)."""
    from solopo.settings.build import stop_on_config_errors
    from solopo.training.lightning_run import failure_recorded
    from solopo.training.loggers import quiet_libraries
    from solopo.training.pipeline import train

    quiet_libraries()
    with stop_on_config_errors(), failure_recorded(cfg):
        return optimized_value(train(cfg), cfg.optimized_metric)
    return float("nan")  # a job of a sweep that failed: failure_recorded let the sweep go on


def entry() -> None:
    """The console script solopo-train (and python -m solopo.run): the command line's preflight checks and each job's
    values, on the command line as sized for the hardware, then Hydra."""
    preflight(sys.argv[1:])
    sys.argv[1:] = sized_for_hardware(sys.argv[1:])
    from solopo.training.results import sweep_failures_reported

    with sweep_failures_reported(), values_checked(sys.argv[1:]):  # before Hydra, or after it printed the config
        main()


# Hydra's options that answer a question and run no job (a value may follow: --info=plugins); a prefix test would
# also take -cd / -cp / -cn, which choose the config of a job that runs
HYDRA_QUESTIONS = ("-h", "--help", "--hydra-help", "--version", "-i", "--info", "-sc", "--shell-completion")


def sized_for_hardware(args: list[str]) -> list[str]:
    """The command line, with experiment=default_gpu added on a machine with a CUDA GPU when it names no experiment:
    the default run is sized to the hardware (conf/experiment/default_gpu.yaml says how), in this one place. A
    question to Hydra itself (--help, completion) is answered as it is; --cfg job prints the config the run would
    use, so it is sized too. On Linux with no GPU device node torch can see no GPU: the answer comes before torch
    loads."""
    if any(arg.split("=", 1)[0] in HYDRA_QUESTIONS for arg in args) or not gpu_device_nodes():
        return args
    import torch

    if torch.cuda.is_available() and not any(a.lstrip("+~").startswith("experiment=") for a in args):
        return [*args, "experiment=default_gpu"]
    return args


def gpu_device_nodes() -> bool:
    """Whether a GPU may be visible: always off Linux (no cheap test there), else an NVIDIA, ROCm or WSL node."""
    import glob

    nodes = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")
    return sys.platform != "linux" or any(glob.glob(pattern) for pattern in nodes)


if __name__ == "__main__":
    entry()
