"""Exact resume over two CPU processes (gloo): SIGTERM reaches the launching process (rank 0) only, every process
stops after the same step, and the resumed run's per-step losses equal the uninterrupted run's."""
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from test_preemption import assert_resumes_exactly  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

# A global batch of 2 (1 per process): 8 steps an epoch over 16 pairs.
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=1", "data.source.n_train=16"]


def test_sigterm_to_rank_0_of_two_processes_then_resume_gives_the_uninterrupted_losses(tmp_path):
    assert_resumes_exactly(tmp_path, DDP, signal.SIGTERM)
