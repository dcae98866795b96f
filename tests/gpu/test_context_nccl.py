"""Context parallelism over NCCL on 2 GPUs: the long sequences split over two GPUs give the log-probs, the loss and
(averaged over the GPUs, as FSDP does) the gradients of the whole computation in fp32, a LoRA policy's too, and the
cached reference's table computed split is the whole one, as over gloo on the CPU
(tests/distributed/context_support.py). On the GPU the split attention runs SDPA with the lower-right causal bias
and the gradient of the gathered keys and values comes back by reduce-scatter. Run with `pytest -m gpu` on a machine
with 2 CUDA GPUs; the kernel test needs one."""
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from context_support import check, check_reference  # noqa: E402

pytestmark = pytest.mark.gpu
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@two_gpus
@pytest.mark.parametrize("min_tokens", [None, 1], ids=["long context split", "every group split"])
def test_split_over_2_gpus_equals_the_whole_computation(min_tokens):
    # fp32 matmuls, not TF32 (torch's default for matmul), in every process: spawn starts them afresh
    mp.spawn(check, args=(2, "nccl", min_tokens, "float32", 1e-5, free_port()), nprocs=2)


@two_gpus
def test_a_lora_policy_split_over_2_gpus_has_the_whole_computation_s_adapter_gradients():
    mp.spawn(check, args=(2, "nccl", None, "float32", 1e-5, free_port(), True), nprocs=2)


@two_gpus
def test_the_cached_reference_pass_split_over_2_gpus_equals_the_whole_pass(tmp_path):
    mp.spawn(check_reference, args=(2, "nccl", str(tmp_path), 1e-5, free_port()), nprocs=2)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_the_lower_right_causal_kernel_is_causal_attention_of_the_whole_sequence(dtype, tol):
    """On one GPU: the split attention's kernel path (SDPA with causal_lower_right: flash in bf16, memory-efficient
    in fp32) against causal attention of the whole sequence."""
    from test_context_parallel import split_attention_against_whole

    assert max(split_attention_against_whole("cuda", dtype, 4)) < tol
