"""Data-parallel scaling of SoLoPO under trainer=fsdp: the same global batch on 1 GPU and on N GPUs.

    python experiments/efficiency/scaling.py --devices 1,2 --models qwen2_5_1_5b_shape,qwen2_5_7b_shape \
        --lengths 16384,32768 --algos dpo,simpo --root /tmp/scaling

Each cell is one `python -m solopo.run experiment=scaling ...` run (gold pairs, FSDP2, no evaluation), so what is
measured is the product's own training path. For a global batch of G pairs (--global-batch, default the largest
device count), N devices take G/N pairs each per step; one device takes the same G pairs as G micro-batches of one
(gradient accumulation), so every process always holds one pair at a time and the runs differ only in layout.
From each run's metrics.csv: the losses of the first steps (global means, to compare across layouts), the first
step's gradient norm (train/grad_norm, the global gradient's: it shows gradients summed instead of averaged),
tokens/s per GPU (train/step_tokens over train/step_time_s of the micro-batches after --warmup steps), peak memory
per GPU, and the scaling efficiency: tokens/s per GPU on N devices over tokens/s on one. The table is written after
every run; with --resume the runs already in it (ok or out of memory) are kept, so a GPU call cut short continues in the
next.
NVLink multicast stays off in every process (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1). Words after -- are Hydra overrides for every run and part of each row's key (e.g.
`-- model=tiny trainer.accelerator=cpu data.long_len=512` for a CPU check with gloo).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import environment, has_row, matching, previous_rows, put_row, write_table

ROOT = Path(__file__).resolve().parents[2]
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
RESULTS = ("ok", "OOM")  # a measured run, or the verdict that it does not fit; anything else is redone
COLUMNS = ["model", "long", "algo", "overrides", "devices", "global_batch", "status", "loss_steps", "loss_max_rel_diff",
           "first_grad_norm", "grad_norm_rel_diff", "tokens_per_s_per_gpu", "scaling_efficiency", "peak_gib_per_gpu",
           "seconds"]


def overrides(model: str, long: int, algo: str, devices: int, global_batch: int, steps: int) -> list[str]:
    return ["experiment=scaling", f"model={model}", f"data.long_len={long}", f"algo={algo}",
            f"trainer.devices={devices}", "data.batch_size=1",  # per process: one pair per micro-batch
            f"trainer.accumulate_grad_batches={global_batch // devices}", f"trainer.max_steps={steps}",
            f"data.source.n_train={global_batch * steps}", "trainer.enable_progress_bar=false"]


def launch(run_dir: Path, args: list[str], timeout: float) -> tuple[int, float]:
    shutil.rmtree(run_dir, ignore_errors=True)  # an earlier try's metrics.csv would be read as this run's
    run_dir.mkdir(parents=True)
    env = dict(os.environ, **NO_MULTICAST, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "solopo.run", *args, f"hydra.run.dir={run_dir}"]
    started = time.monotonic()
    with open(run_dir / "launch.log", "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        try:
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = -1
    return code, time.monotonic() - started


def measured(run_dir: Path, warmup: int, loss_steps: int) -> dict:
    """The first step losses, the first step's gradient norm, per-GPU tokens/s after the warm-up steps and the peak
    memory, from the run's metrics.csv."""
    rows = list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))
    losses = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    timed = [r for r in rows if r.get("train/step_tokens") and int(r["step"]) >= warmup]
    seconds = sum(float(r["train/step_time_s"]) for r in timed)
    speed = sum(float(r["train/step_tokens"]) for r in timed) / seconds if seconds else None
    peaks = [float(r["train/peak_mem_gib"]) for r in rows if r.get("train/peak_mem_gib")]
    norms = {int(r["step"]): float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm")}
    return {"losses": [losses[s] for s in sorted(losses)][:loss_steps],
            "first_grad_norm": norms[min(norms)] if norms else None,
            "tokens_per_s_per_gpu": speed, "peak_gib_per_gpu": max(peaks, default=None)}


def status_of(code: int, run_dir: Path) -> str:
    if code == 0:
        return "ok"
    log = (run_dir / "launch.log").read_text(errors="replace")
    return "OOM" if "out of memory" in log.lower() else "timeout" if code == -1 else f"failed ({code})"


def compare(rows: list[dict], one: dict | None) -> None:
    """Loss and gradient-norm agreement and scaling efficiency of each row against the one-device row of its cell.
    The norm is the check that the losses cannot give: AdamW's first step hardly depends on the gradient's scale."""
    for row in rows:
        if row["status"] != "ok" or one is None or one["status"] != "ok":
            continue
        pairs = list(zip(row["losses"], one["losses"]))
        row["loss_max_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs) if pairs else None
        if row.get("first_grad_norm") and one.get("first_grad_norm"):
            row["grad_norm_rel_diff"] = abs(row["first_grad_norm"] - one["first_grad_norm"]) / one["first_grad_norm"]
        if row["tokens_per_s_per_gpu"] and one["tokens_per_s_per_gpu"]:
            row["scaling_efficiency"] = row["tokens_per_s_per_gpu"] / one["tokens_per_s_per_gpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    ints = lambda s: [int(x) for x in names(s)]  # noqa: E731
    parser.add_argument("--devices", type=ints, default=[1, 2], help="device counts; the first should be 1")
    parser.add_argument("--models", type=names, default=["qwen2_5_1_5b_shape", "qwen2_5_7b_shape"])
    parser.add_argument("--lengths", type=ints, default=[16384, 32768])
    parser.add_argument("--algos", type=names, default=["dpo", "simpo"])
    parser.add_argument("--global-batch", type=int, default=None, help="pairs per step (default: the most devices)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the tokens/s mean")
    parser.add_argument("--loss-steps", type=int, default=3, help="first steps whose losses are compared")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--root", type=Path, default=Path("/tmp/solopo-scaling"), help="one run directory per cell")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out and make the rest")
    parser.add_argument("--keep-going", action="store_true", help="go on after a run fails (out of memory always does)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args()
    global_batch = args.global_batch or max(args.devices)
    if any(global_batch % n for n in args.devices):
        raise SystemExit(f"--global-batch {global_batch} must be a multiple of every device count {args.devices}")
    meta = {**environment(), "gpus": torch.cuda.device_count(), "command": "python " + " ".join(sys.argv),
            "global_batch": global_batch, "steps": args.steps, "warmup": args.warmup, "nccl": NO_MULTICAST}
    table = [r for r in previous_rows(args.out, "fsdp_scaling", args.resume) if r["status"] in RESULTS]
    for model in args.models:
        for long in args.lengths:
            for algo in args.algos:
                key = {"model": model, "long": long, "algo": algo, "global_batch": global_batch, "steps": args.steps,
                       "overrides": " ".join(args.overrides)}  # e.g. trainer.precision=32-true: another cell
                for devices in args.devices:
                    if has_row(table, **key, devices=devices):
                        print(f"{model} {long} {algo} on {devices}: in {args.out} already (--resume)", flush=True)
                        continue
                    run_dir = args.root / f"{model}-{long}-{algo}-{devices}gpu"
                    code, seconds = launch(run_dir, overrides(model, long, algo, devices, global_batch, args.steps)
                                           + args.overrides, args.timeout)
                    row = {**key, "devices": devices, "status": status_of(code, run_dir), "seconds": round(seconds, 1)}
                    if row["status"] == "ok":
                        row.update(measured(run_dir, args.warmup, args.loss_steps))
                        row["loss_steps"] = ", ".join(f"{x:.6g}" for x in row["losses"])
                    put_row(table, row, *key, "devices")
                    print({k: v for k, v in row.items() if k != "losses"}, flush=True)
                    if row["status"] not in RESULTS:
                        # a failure that is not memory is the setup's, and the next runs would meet it too
                        print((run_dir / "launch.log").read_text(errors="replace")[-3000:], flush=True)
                        if not args.keep_going:
                            write_table(args.out, "fsdp_scaling", table, COLUMNS, meta)
                            raise SystemExit(f"{run_dir}: {row['status']}; stopping (--keep-going runs the rest)")
                    cell = matching(table, **key)
                    compare(cell, next((r for r in cell if r["devices"] == 1), None))
                    write_table(args.out, "fsdp_scaling", table, COLUMNS, meta)  # after every run
    write_table(args.out, "fsdp_scaling", table, COLUMNS, meta)  # also when --resume had nothing left to run


if __name__ == "__main__":
    main()
