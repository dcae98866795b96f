"""Context parallelism over gloo processes on the CPU: the SoLoPO objective with its long sequences split over 2 or 4
processes gives the log-probs, the loss and (averaged over the processes, as FSDP does) the gradients of the whole
computation (tests/distributed/context_support.py), and a training run with trainer.context_parallel=2 takes the step
one process takes on the same batch."""
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from safetensors.torch import load_file

from context_support import check, checks, reference_split_equals_whole, split_equals_whole

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from support import results, run, smoke_here, step_losses, step_values  # noqa: E402
from test_preemption import assert_resumes_exactly  # noqa: E402

pytestmark = pytest.mark.distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The 2-process checks of the tests below, run in one pair of spawned processes (each process's start, imports
    and group cost more than its checks); each test asserts its own check's outcome in both."""
    out = tmp_path_factory.mktemp("outcomes")
    cases = {"split": (split_equals_whole, dict(min_tokens=None, dtype="float32", tol=1e-6)),
             "lora": (split_equals_whole, dict(min_tokens=None, dtype="float32", tol=1e-6, lora=True)),
             "reference": (reference_split_equals_whole, dict(cache_dir=str(out / "cache"), tol=1e-6))}
    try:
        mp.spawn(checks, args=(2, "gloo", free_port(), str(out), cases), nprocs=2)
        stopped = None
    except Exception as err:  # a check failed in a process: its test shows the traceback, later checks did not run
        stopped = err

    def passed(name: str) -> None:
        for rank in range(2):
            outcome = out / f"{name}.{rank}"
            assert outcome.exists(), f"rank {rank} did not run this check: the processes stopped first ({stopped})"
            assert outcome.read_text() == "ok", f"rank {rank}: {outcome.read_text()}"

    return passed


def test_split_long_sequences_over_2_processes_equal_the_whole_computation(two_processes):
    two_processes("split")


def test_a_lora_policy_split_over_2_processes_has_the_whole_computation_s_adapter_gradients(two_processes):
    two_processes("lora")


def test_the_cached_reference_pass_splits_the_long_sequences_as_training_does(two_processes):
    """Its table equals the whole pass's, and the processes store and read it together."""
    two_processes("reference")


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


@pytest.mark.slow  # two runs, one of two processes (about 50 s): the default run keeps the split LoRA gradients above
def test_lora_with_context_parallel_takes_the_one_process_steps(tmp_path):
    """DPO on a LoRA policy, whose reference is the same model with its adapter off (split too): FSDP 1 x context 2
    against one process, two steps of 2 pairs. At the first step the adapter is zero (the loss is log 2), at the second
    it has moved: each step's loss and gradient norm, and the adapter after both steps, are one process's."""
    lora = ["algo=dpo", "reference=live", "model.lora={r:4,lora_alpha:8}", "trainer.max_steps=2", "data.batch_size=2"]
    run([*COMMON, *lora, "trainer=cpu", f"hydra.run.dir={tmp_path / 'one'}"])
    run([*COMMON, *lora, *FSDP, "trainer.devices=2", "trainer.context_parallel=2", f"hydra.run.dir={tmp_path / 'cp'}"])
    for key in ("train/loss", "train/grad_norm"):
        base, split = step_values(tmp_path / "one", key), step_values(tmp_path / "cp", key)
        assert sorted(base) == [0, 1] and split == pytest.approx(base, rel=1e-9), key
    assert step_values(tmp_path / "one", "train/loss")[1] != step_values(tmp_path / "one", "train/loss")[0]
    adapter = [load_file(str(tmp_path / name / "model" / "adapter_model.safetensors")) for name in ("one", "cp")]
    assert adapter[0].keys() == adapter[1].keys() and all("lora_" in key for key in adapter[0])
    worst = max((adapter[0][k] - adapter[1][k]).abs().max().item() for k in adapter[0])
    assert worst < 1e-9, f"adapters differ from one process by up to {worst}"  # lr 1e-3 moves them by ~1e-3


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


@pytest.mark.slow  # three runs of two processes, 12 steps each: pytest -m slow
def test_sigterm_mid_epoch_then_resume_with_context_parallel_gives_the_uninterrupted_losses(tmp_path):
    """FSDP 1 x context 2, its checkpoint a folder of shards: stopped after step 3 of an 8-step epoch and resumed,
    every later step's loss is the uninterrupted run's, bitwise."""
    assert_resumes_exactly(tmp_path, [*FSDP, "trainer.devices=2", "trainer.context_parallel=2"], signal.SIGTERM)
