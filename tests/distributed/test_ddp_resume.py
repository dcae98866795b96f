"""Exact resume over two CPU processes (gloo): SIGTERM reaches the launching process (rank 0) only, every process
stops after the same step, and the resumed run's per-step losses equal the uninterrupted run's. After training, the
processes finish their work and write the whole record before they exit."""
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from support import ENV, ROOT, command, results  # noqa: E402
from test_preemption import assert_resumes_exactly, wait_for  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

# A global batch of 2 (1 per process): 8 steps an epoch over 16 pairs.
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=1", "data.source.n_train=16"]


def test_sigterm_to_rank_0_of_two_processes_then_resume_gives_the_uninterrupted_losses(tmp_path):
    assert_resumes_exactly(tmp_path, DDP, signal.SIGTERM)


def test_sigterm_to_rank_0_during_the_evaluation_lets_both_processes_finish_then_exits_143(tmp_path):
    """One process stops at once after training; two may be inside one collective operation together, so they finish
    the evaluation, write the complete results.json and leave no checkpoint, then exit 143. Before, rank 0 died of
    the signal in the evaluation, with no record."""
    run_dir, output = tmp_path / "run", tmp_path / "output.txt"
    args = [*DDP, "data.source.n_val=24", "eval.n_items=24", "eval.max_new_tokens=32", f"hydra.run.dir={run_dir}"]
    with open(output, "w") as out:
        proc = subprocess.Popen(command(args), cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(output, "evaluating trained: batch 1/9", proc, timeout=300)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=300) == 128 + signal.SIGTERM, output.read_text(errors="replace")[-3000:]
        finally:
            proc.kill()
    record = results(run_dir)
    assert "preempted" not in record and set(record["eval"]) == {"base", "trained"}
    assert not (run_dir / "checkpoints").exists()
