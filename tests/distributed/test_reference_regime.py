"""The cached reference is computed as training's forward computes: at the first step the policy is the reference,
so DPO's margin is zero and its loss log 2 to the last digit. Under trainer=fsdp with fp32 weights and bf16-mixed,
FSDP2 computes with bf16 copies of the weights (a bf16 residual stream), where plain autocast keeps an fp32 one; a
reference pass under autocast alone gave 0.693425 here."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from support import run, smoke_here, step_losses  # noqa: E402

pytestmark = pytest.mark.distributed


@pytest.fixture
def leaves_no_process_group():
    """trainer=fsdp in the test process joins a process group of one, which Lightning leaves joined after the fit: a
    later test of this process could then join none of its own."""
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("layout", [
    ["trainer=fsdp", "trainer.devices=1"], ["trainer=cpu", "trainer.devices=1"],
    # slow: two processes (~40 s on 2 cores); the split of the cached reference pass is tested in the default suite
    # (test_context_split.py::test_the_cached_reference_pass_splits_the_long_sequences_as_training_does)
    pytest.param(["trainer=fsdp", "trainer.devices=2", "trainer.context_parallel=2"], marks=pytest.mark.slow)],
    ids=["fsdp", "cpu", "fsdp context 2"])
def test_first_dpo_step_against_the_cached_reference_is_log_2(layout, tmp_path, leaves_no_process_group):
    """With context parallelism the reference pass runs in the fit, its long sequences split as training splits them
    (their values against the whole pass: test_context_split.py). One process runs in the test process (FSDP's in a
    process group of one); two start processes of their own."""
    done = (run if "trainer.devices=2" in layout else smoke_here)([
        "experiment=scaling", "model=tiny", "model.dtype=float32", "data.long_len=384", "algo=dpo", "reference=cached",
        *layout, "trainer.accelerator=cpu", "trainer.precision=bf16-mixed",
        "trainer.max_steps=1", "data.source.n_train=2", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}"])
    assert step_losses(tmp_path)[0] == pytest.approx(math.log(2), rel=1e-7)
    split = "reference log-probs: the long sequences split over the 2 processes of each context group"
    assert (split in done.stdout) == ("trainer.context_parallel=2" in layout)
