"""Context parallelism over gloo processes on the CPU: the SoLoPO objective with its long sequences split over 2 or 4
processes gives the log-probs, the loss and (averaged over the processes, as FSDP does) the gradients of the whole
computation (tests/distributed/context_support.py), and a training run with trainer.context_parallel=2 takes the step
one process takes on the same batch."""
import socket
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from safetensors.torch import load_file

from context_support import check

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from support import results, run, smoke_here, step_losses, step_values  # noqa: E402

pytestmark = pytest.mark.distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_split_long_sequences_over_2_processes_equal_the_whole_computation():
    mp.spawn(check, args=(2, "gloo", None, "float32", 1e-6, free_port()), nprocs=2)


@pytest.mark.slow  # four processes on the CPU: pytest -m slow
def test_every_group_split_over_4_processes_equals_the_whole_computation():
    """min_tokens=1 splits the short rows too: the response of a short row ends in an early chunk."""
    mp.spawn(check, args=(4, "gloo", 1, "float32", 1e-6, free_port()), nprocs=4)


# One optimizer step on the 4 smoke pairs in float64 (as tests/distributed/test_strategies.py: AdamW's first step
# would turn fp32 noise in a near-zero gradient into a visible weight difference).
COMMON = ["eval.enabled=false", "save_model=true", "trainer.enable_checkpointing=false", "trainer.max_steps=1",
          "optim.warmup_ratio=0", "optim.lr=1e-3", "model.dtype=float64", "trainer.precision=32-true"]
ONE_PROCESS = ["trainer=cpu", "data.batch_size=4"]
FSDP = ["trainer=fsdp", "trainer.accelerator=cpu"]


def first_step(run_dir) -> tuple[float, float, dict]:
    return step_losses(run_dir)[0], step_values(run_dir, "train/grad_norm")[0], load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_step(base, other) -> None:
    (loss, norm, weights), (other_loss, other_norm, other_weights) = first_step(base), first_step(other)
    assert other_loss == pytest.approx(loss, rel=1e-9) and other_norm == pytest.approx(norm, rel=1e-9) and norm > 0
    worst = max((weights[k] - other_weights[k]).abs().max().item() for k in weights)
    assert worst < 1e-9, f"weights differ from one process by up to {worst}"  # lr 1e-3 moves them by ~1e-3


def test_a_training_step_with_context_parallel_is_the_one_process_step(tmp_path):
    """SoLo-SimPO (long chosen split over 2 processes: FSDP 1 x context 2) against one process: the same first loss,
    gradient norm and updated weights, and the same validation metrics, computed split as well."""
    smoke_here([*COMMON, *ONE_PROCESS, f"hydra.run.dir={tmp_path / 'one'}"])
    run([*COMMON, *FSDP, "trainer.devices=2", "trainer.context_parallel=2", "data.batch_size=4",
         f"hydra.run.dir={tmp_path / 'cp'}"])
    assert_same_step(tmp_path / "one", tmp_path / "cp")
    base, split = results(tmp_path / "one")["metrics"], results(tmp_path / "cp")["metrics"]
    for key in ("val/loss", "val/ra/gap", "val/rewards/margins"):
        assert split[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12), key


@pytest.mark.slow  # five runs' worth of CPU processes: pytest -m slow
def test_long_po_over_2_batch_groups_of_2_context_processes_is_the_one_process_step(tmp_path):
    """DPO Long-PO, both long sequences split, against the cached reference (computed whole before training), with
    gradient accumulation: FSDP over 4 processes as 2 batch groups x 2 context processes, 1 pair per micro-batch and 2
    micro-batches, is one step of the 4 pairs."""
    dpo = ["algo=dpo", "method=long_po", "reference=cached"]
    run([*COMMON, *dpo, *ONE_PROCESS, f"hydra.run.dir={tmp_path / 'one'}"])
    run([*COMMON, *dpo, *FSDP, "trainer.devices=4", "trainer.context_parallel=2", "data.batch_size=1",
         "trainer.accumulate_grad_batches=2", f"hydra.run.dir={tmp_path / 'cp'}"])
    assert_same_step(tmp_path / "one", tmp_path / "cp")
