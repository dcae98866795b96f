"""Context parallelism over gloo processes on the CPU: the SoLoPO objective with its long sequences split over 2 or 4
processes gives the log-probs, the loss and (averaged over the processes, as FSDP does) the gradients of the whole
computation (tests/distributed/context_support.py), and a training run with trainer.context_parallel=2 takes the step
one process takes on the same batch."""
import socket

import pytest
import torch.multiprocessing as mp

from context_support import check

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
