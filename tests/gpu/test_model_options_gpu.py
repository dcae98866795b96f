"""The model group's kernel and memory options on a CUDA GPU: Liger's Triton kernels and regional compilation give the
log-probs and gradients of the plain model; activation offloading (its copies to pinned host memory and back run only
here) and chunked MLPs give them too, in less GPU memory. Run with `pytest -m gpu` on a CUDA machine."""
from dataclasses import replace

import pytest
import torch

from conftest import DEEP, LOGP_CHUNK_SIZE, TINY, WIDE_MLP
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.models import kernels, memory
from solopo.models.loading import load_model
from solopo.step.logps import response_logps

pytestmark = pytest.mark.gpu
KEYS = [("short", "chosen"), ("short", "rejected"), ("long", "chosen")]


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture
def restore_transformers():
    """Liger replaces transformers' rotary function and block classes for the whole process: undone after the test,
    so the other tests' plain models stay plain."""
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen2 import modeling_qwen2

    saved = [(module, dict(vars(module))) for module in (modeling_llama, modeling_qwen2)]
    yield
    for module, names in saved:
        vars(module).update(names)


def _batch(pad_id: int, long_len: int = 700, vocab: int = 40000):
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(100, vocab, (n,), generator=g).tolist()  # noqa: E731
    pairs = [TokenizedPair(f"p{i}", {"short": ids(150 + 37 * i), "long": ids(long_len + 53 * i)},
                           {"chosen": ids(9 + 5 * i), "rejected": ids(23 - 4 * i)}) for i in range(2)]
    return PairCollator(KEYS, pad_id)(pairs).to("cuda")


def _logps_and_grads(model, batch):
    model.zero_grad()
    logps = torch.cat([response_logps(model, group, LOGP_CHUNK_SIZE)[0] for group in batch.groups.values()])
    (logps * torch.linspace(-1, 1, logps.numel(), device="cuda")).sum().backward()
    return logps.detach().float(), [p.grad.detach().float().clone() for p in model.parameters()]


def _run(spec, tokenizer, batch, dtype):
    model = load_model(spec, tokenizer, seed=0).to("cuda", dtype).train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = _logps_and_grads(model, batch)
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - base


def _assert_close(got, expected, rtol, atol):
    torch.testing.assert_close(got[0], expected[0], rtol=rtol, atol=atol)
    for a, b in zip(got[1], expected[1]):
        torch.testing.assert_close(a, b, rtol=rtol * 10, atol=atol)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_liger_gives_the_plain_logps_and_gradients(tokenizer, restore_transformers, model_type, dtype):
    pytest.importorskip("liger_kernel")
    spec = replace(TINY, random_init={**TINY.random_init, "model_type": model_type, "max_position_embeddings": 4096})
    batch = _batch(tokenizer.pad_token_id)
    plain, _ = _run(spec, tokenizer, batch, dtype)
    fused, _ = _run(replace(spec, liger=True), tokenizer, batch, dtype)
    _assert_close(fused, plain, **(dict(rtol=2e-2, atol=5e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)))


def test_liger_auto_is_on_for_llama_and_qwen2_here():
    """model.liger=auto, the default, on a CUDA machine with liger-kernel: Liger's transformers patches import
    (Triton with them) and both families get them."""
    pytest.importorskip("liger_kernel")
    assert kernels.auto_liger("llama", gpu_visible=True).on and kernels.auto_liger("qwen2", gpu_visible=True).on


def test_compiled_layers_give_the_plain_logps_and_gradients(tokenizer):
    spec = replace(TINY, gradient_checkpointing=True, random_init={**TINY.random_init, "max_position_embeddings": 4096})
    batch = _batch(tokenizer.pad_token_id)
    plain, _ = _run(spec, tokenizer, batch, torch.float32)
    compiled, _ = _run(replace(spec, compile=True), tokenizer, batch, torch.float32)
    _assert_close(compiled, plain, rtol=1e-4, atol=1e-4)


def _saver_runs(tokenizer, shape: dict, long_len: int, plain: dict, saver: dict, liger=False):
    """The plain and the saving step of a checkpointed fp32 model of ``shape`` on two pairs with ``long_len``-token
    long contexts (Liger's kernels as ``liger`` says: the savers must work with and without them): the same numbers,
    and each step's peak above the model."""
    if liger:
        pytest.importorskip("liger_kernel")
    spec = replace(TINY, gradient_checkpointing=True, random_init={**TINY.random_init, **shape}, liger=liger, **plain)
    batch = _batch(tokenizer.pad_token_id, long_len=long_len, vocab=shape["vocab_size"])
    without, without_peak = _run(spec, tokenizer, batch, torch.float32)
    with_saver, saver_peak = _run(replace(spec, **saver), tokenizer, batch, torch.float32)
    _assert_close(with_saver, without, rtol=1e-4, atol=1e-4)
    return without_peak, saver_peak


@pytest.mark.parametrize("liger", [False, True])
def test_chunked_mlps_are_exact_in_less_memory(tokenizer, restore_transformers, liger):
    """Checkpointed, the layer backward recomputes holds its MLP's intermediates and their gradients, about 6 B L I
    values; chunked, a few (B, 1024, I): the peak drops by at least 3 B L I (tests/test_memory_peaks.py measures the
    same on the CPU). fp32 with as many key/value heads as heads, so attention's kernel is linear in L (conftest)."""
    rows, length = 2, 8192
    plain, chunked = _saver_runs(tokenizer, WIDE_MLP, length, {}, dict(mlp_chunk_size=1024), liger)
    intermediate = rows * length * WIDE_MLP["intermediate_size"] * 4
    assert plain - chunked >= 3 * intermediate, (plain / 2**20, chunked / 2**20)


@pytest.mark.parametrize("liger", [False, True])
def test_offloaded_activations_are_exact_in_less_memory(tokenizer, restore_transformers, liger, monkeypatch):
    """Checkpointed with chunked MLPs, a deep narrow model's peak is its layers' inputs (B L H each); offloaded to the
    host, the peak drops by over half of them (the weights' gradients take part of their place). The message says
    what the offload was offered: every layer's input, or less (the inputs were not saved through autograd's
    hooks)."""
    offers = []
    offload = memory.offload_activations
    monkeypatch.setattr(memory, "offload_activations", lambda model: offers.append(offload(model)) or offers[-1])
    rows, length, chunked = 2, 16384, dict(mlp_chunk_size=1024)
    plain, offloaded = _saver_runs(tokenizer, DEEP, length, chunked, dict(offload_activations=True), liger)
    layer_input = rows * length * DEEP["hidden_size"] * 4
    offered = sum(o.offered_bytes for o in offers) / 2**20
    assert plain - offloaded >= DEEP["num_hidden_layers"] / 2 * layer_input, (plain / 2**20, offloaded / 2**20, offered)
