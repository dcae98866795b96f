"""The model group's kernel and memory options (solopo.models.kernels, solopo.models.memory): each computes the
response log-probs and parameter gradients of the plain model, in fp32 on the tiny model; Liger is refused where it
cannot run, and model.liger=auto turns them on only where they run."""
import logging
import sys
import types
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from conftest import LOGP_CHUNK_SIZE, TINY
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.core.algos import DPO
from solopo.models import kernels, memory
from solopo.models.blocks import decoder_layers, final_norm, mlps
from solopo.models.loading import load_model
from solopo.settings.fields import SettingsError
from solopo.step.logps import response_logps
from solopo.training.models import load_models
from solopo.step.varlen import unused_mask

KEYS = [("short", "chosen"), ("short", "rejected"), ("long", "chosen")]


def _batch(pad_id: int):
    """Three pairs of uneven lengths (padding inside each row), up to 120 positions of long context."""
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(5, 1000, (n,), generator=g).tolist()  # noqa: E731
    pairs = [TokenizedPair(f"p{i}", {"short": ids(20 + 9 * i), "long": ids(97 + 11 * i)},
                           {"chosen": ids(5 + 2 * i), "rejected": ids(9 - 3 * i)}) for i in range(3)]
    return PairCollator(KEYS, pad_id)(pairs)


def _logps_and_grads(model, batch):
    """Response log-probs of every sequence, and the gradients of a weighted sum of them (both signs)."""
    model.zero_grad()
    logps = torch.cat([response_logps(model, group, LOGP_CHUNK_SIZE)[0] for group in batch.groups.values()])
    (logps * torch.linspace(-1, 1, logps.numel())).sum().backward()
    return logps.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _assert_same(tokenizer, options: dict, checkpointing: bool, tol=dict(rtol=1e-5, atol=1e-6)):
    spec = replace(TINY, gradient_checkpointing=checkpointing)
    batch = _batch(tokenizer.pad_token_id)
    plain = _logps_and_grads(load_model(spec, tokenizer, seed=0).train(), batch)
    changed = _logps_and_grads(load_model(replace(spec, **options), tokenizer, seed=0).train(), batch)
    torch.testing.assert_close(changed[0], plain[0], **tol)
    assert changed[1].keys() == plain[1].keys()
    for name, grad in plain[1].items():
        torch.testing.assert_close(changed[1][name], grad, **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("options", [dict(mlp_chunk_size=16), dict(offload_activations=True),
                                     dict(mlp_chunk_size=25, offload_activations=True)])
def test_memory_savers_give_the_plain_logps_and_gradients(tokenizer, options, checkpointing):
    _assert_same(tokenizer, options, checkpointing)


def test_mlp_chunks_run_the_blocks_chunk_by_chunk(tokenizer):
    """Each MLP and the final norm see at most mlp_chunk_size positions per call: a 130-position row in 4 calls."""
    model = load_model(replace(TINY, mlp_chunk_size=40), tokenizer, seed=0)
    blocks = mlps(model) + [final_norm(model)]
    assert len(blocks) == len(decoder_layers(model)) + 1 == 3
    seen = []
    for block in blocks:
        inner = block.solopo_unchunked_forward
        block.solopo_unchunked_forward = lambda x, *a, _inner=inner, **k: seen.append(x.shape[-2]) or _inner(x, *a, **k)
    with torch.no_grad():
        model(input_ids=torch.randint(5, 1000, (2, 130)))
    assert seen == [40, 40, 40, 10] * 3


@pytest.mark.parametrize("shape", [dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=512),
                                   dict(model_type="phi", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4)], ids=["gpt2", "phi"])
def test_mlp_chunks_reach_the_final_norm_under_its_own_name(tokenizer, shape):
    """GPT-2's final norm is ln_f, Phi's final_layernorm: chunked as Llama's norm is, with the plain model's logits."""
    plain = load_model(replace(TINY, random_init=shape, attn_implementation="sdpa"), tokenizer, seed=0).eval()
    model = load_model(replace(TINY, random_init=shape, attn_implementation="sdpa", mlp_chunk_size=40), tokenizer,
                       seed=0).eval()  # GPT-2's dropout off
    norm = final_norm(model)
    assert norm is not None and norm.solopo_chunk_size == 40
    ids = torch.randint(5, 1000, (2, 130))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits)
    for m in (model, plain):  # the chunks under checkpoint, as training runs them
        m(input_ids=ids).logits.logsumexp(-1).mean().backward()
    for (name, mine), (_, theirs) in zip(model.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, msg=name)


def test_mlp_chunks_are_refused_for_layers_without_an_mlp(tokenizer):
    """OPT's layers name their MLP fc1/fc2: model.mlp_chunk_size would chunk nothing, and says so in one line."""
    from solopo.settings.fields import ConfigError

    opt = dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
               word_embed_proj_dim=64)
    with pytest.raises(ConfigError, match=r"^model\.mlp_chunk_size=8: the decoder layers of opt models hold no `mlp`"):
        load_model(replace(TINY, random_init=opt, mlp_chunk_size=8, attn_implementation="sdpa"), tokenizer)
    assert memory.savers(load_model(replace(TINY, random_init=opt, attn_implementation="sdpa"), tokenizer)) == (
        None, False)


def test_offload_sees_only_the_layer_boundaries(tokenizer):
    """With gradient checkpointing and chunked blocks, what the forward saves for backward (what offloading moves to
    the host) is each layer's input and the final norm's, B x L x H fp32 values each, beside the token ids and the
    last position's state (the LM head's input under logits_to_keep=1): everything else is recomputed."""
    model = load_model(replace(TINY, gradient_checkpointing=True, mlp_chunk_size=50), tokenizer, seed=0).train()
    offload = memory.offload_activations(model)
    offload.min_bytes = 0
    ids = torch.randint(5, 1000, (2, 130))
    model(input_ids=ids, logits_to_keep=1)
    boundary = 2 * 130 * model.config.hidden_size * 4
    small = ids.numel() * 8 + 2 * model.config.hidden_size * 4
    assert offload.offered_bytes == (len(decoder_layers(model)) + 1) * boundary + small


MIB, GIB = 1 << 20, 1 << 30


@pytest.mark.parametrize("nbytes, smallest, pieces", [
    (3 * GIB, MIB, [(0, 2 * GIB), (2 * GIB, GIB)]),  # a 1M x 1536 bf16 layer input: 3 GiB, where one request took 4
    (5 * MIB + 1, MIB, [(0, 4 * MIB), (4 * MIB, 2 * MIB)]), (1, MIB, [(0, MIB)]), (0, MIB, []),
    (11, 4, [(0, 8), (8, 4)]), (13, 4, [(0, 16)])])
def test_host_copies_come_in_power_of_two_pieces(nbytes, smallest, pieces):
    assert memory.host_pieces(nbytes, smallest) == pieces


@pytest.mark.parametrize("tensor", [
    torch.randn(5 * MIB // 4 + 1), torch.randn(3, 5, 7).to(torch.bfloat16), torch.randn(64, 40).t(),
    torch.rand(9, 11) > 0.5, torch.tensor(2.5)], ids=["fp32 over 5 MiB", "bf16", "transposed", "bool", "scalar"])
def test_a_host_copy_gives_the_tensor_back(tensor):
    """model.offload_activations' copies, to the host and back (unpinned pieces on the CPU: pinning needs CUDA): the
    same values, dtype and shape, in pieces whose sizes are powers of two and waste less than a piece's smallest."""
    sizes = []
    packed = memory.to_host(tensor, lambda size: sizes.append(size) or torch.empty(size, dtype=torch.uint8))
    back = memory.from_host(packed)
    assert back.dtype == tensor.dtype and back.shape == tensor.shape and torch.equal(back, tensor)
    nbytes = tensor.numel() * tensor.element_size()
    assert all(size & (size - 1) == 0 for size in sizes) and 0 <= sum(sizes) - nbytes < memory.HOST_PIECE_BYTES


@pytest.mark.slow  # about 3 minutes on two CPU cores: inductor compiles C++ for each block, shape and backward
def test_compiled_layers_give_the_plain_logps_and_gradients(tokenizer):
    """model.compile: torch.compile (inductor, on the CPU with its C++ compiler) of every layer's blocks."""
    _assert_same(tokenizer, dict(compile=True), checkpointing=True, tol=dict(rtol=1e-4, atol=1e-5))


def test_compiled_layers_pad_no_strides_on_an_odd_length(tokenizer):
    """On torch 2.11 with CUDA, inductor padded the strides of a (B, heads, L, L) attention buffer of odd length (206)
    and the compiled backward then failed its stride check (solopo.models.kernels). model.compile turns that padding
    off: with padding forced on for the CPU (where inductor leaves it off) and SDPA's math kernel (CUDA's for fp32 with
    grouped heads), a compiled 1-layer model on 4 rows of 206 positions pads no buffer in forward or backward and gives
    the plain logits and gradients. torch 2.13 on the CPU does not reproduce the failed check itself."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor import metrics
    from torch.nn.attention import SDPBackend, sdpa_kernel

    spec = replace(TINY, random_init={**TINY.random_init, "num_hidden_layers": 1})
    ids = torch.randint(5, 1000, (4, 206), generator=torch.Generator().manual_seed(0))

    def run(model):
        logits = model(input_ids=ids, attention_mask=unused_mask("cpu")).logits
        logits.logsumexp(-1).mean().backward()
        return logits.detach(), [p.grad for p in model.parameters()]

    padded_before = metrics.num_comprehensive_padding
    with inductor_config.patch(disable_padding_cpu=False, fx_graph_cache=False), \
            functorch_config.patch(enable_autograd_cache=False), sdpa_kernel(SDPBackend.MATH):
        plain = run(load_model(spec, tokenizer, seed=0).train())
        compiled = run(load_model(replace(spec, compile=True), tokenizer, seed=0).train())
    assert metrics.num_comprehensive_padding == padded_before
    torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-5)


def test_liger_needs_a_cuda_gpu():
    from conftest import default_config
    from omegaconf import OmegaConf
    from solopo.settings.build import ConfigError, build_settings

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = default_config().copy()
    OmegaConf.update(cfg, "model.liger", True)
    with pytest.raises(ConfigError, match=r"^model\.liger=true needs a CUDA GPU"):
        build_settings(cfg)


def test_generation_runs_the_compiled_layers_eagerly(tokenizer):
    """model.compile is for training's steps: sampling and evaluation (solopo.generation.batching) run the layers
    eagerly, since every decoding step would compile them again: nothing is compiled there."""
    from torch._dynamo.utils import counters
    from solopo.generation.batching import generate_batches

    model = load_model(replace(TINY, compile=True), tokenizer, seed=0)
    lengths = [3, 4, 5]

    def rows(batch):
        with torch.no_grad():
            return [model(input_ids=torch.arange(5, 5 + lengths[i]).unsqueeze(0)).logits.shape[1] for i in batch]
    counters.clear()
    assert generate_batches(model, [[0, 1], [2]], rows, static=False, half=False, precision="32-true",
                            desc="answers") == lengths
    assert not counters["stats"]["unique_graphs"]


def test_compile_on_the_cpu_needs_a_cpp_compiler():
    """Inductor builds C++ kernels on the CPU: without a working compiler model.compile=true is refused before any
    model loads, in one line, rather than in a traceback at the first step."""
    import shutil
    import torch._inductor.config as inductor_config
    from conftest import default_config
    from omegaconf import OmegaConf
    from solopo.settings.build import ConfigError, build_settings

    if torch.cuda.is_available() or shutil.which("g++") is None:
        pytest.skip("needs a machine without a GPU and with g++")
    cfg = default_config().copy()
    OmegaConf.update(cfg, "model.compile", True)
    assert build_settings(cfg).model.compile and kernels.compile_problems(gpu_visible=False) == []
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",)}):
        with pytest.raises(ConfigError, match=r"^model\.compile=true on the CPU needs a C\+\+ compiler .* set "
                                              r"model\.compile=false$"):
            build_settings(cfg)
    assert kernels.compile_problems(gpu_visible=True) == []  # Triton's kernels on a GPU


def test_liger_is_refused_for_other_model_families():
    with pytest.raises(SettingsError, match="liger=true: Liger's kernels are applied to llama and qwen2 models, not gpt2"):
        replace(TINY, liger=True, random_init={**TINY.random_init, "model_type": "gpt2"})


@pytest.fixture
def cuda_with_liger(monkeypatch):
    """A machine as model.liger=auto sees one with a CUDA GPU and liger-kernel: CUDA reported, Liger's transformers
    module importable (an empty stand-in), and use_liger recording the models it would patch instead of patching."""
    patched = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", types.ModuleType("liger_kernel.transformers"))
    monkeypatch.setattr(kernels, "use_liger", patched.append)
    return patched


def _liger_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("model.liger")]


def test_liger_auto_is_off_on_the_cpu_in_one_log_line(tokenizer, monkeypatch, caplog):
    """The default: no error on a machine without CUDA, and the run (policy and a live reference) logs the choice
    once."""
    from conftest import default_config
    from solopo.settings.build import build_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build_settings(default_config().copy()).model.liger == "auto"
    monkeypatch.setattr(kernels, "use_liger", lambda model: pytest.fail("Liger applied on the CPU"))
    settings = SimpleNamespace(model=replace(TINY, liger="auto"), algo=DPO(beta=0.1), precision="32-true")
    with caplog.at_level(logging.INFO):
        _, reference, _ = load_models(SimpleNamespace(reference="live", seed=0), settings, tokenizer)
    assert reference is not None
    assert _liger_lines(caplog) == ["model.liger=auto: off (no CUDA GPU: Liger's kernels are Triton kernels)"]


def test_liger_auto_is_on_with_cuda_liger_kernel_and_a_llama(tokenizer, cuda_with_liger, caplog):
    model = load_model(replace(TINY, liger="auto"), tokenizer, seed=0)
    assert cuda_with_liger == [model]
    with caplog.at_level(logging.INFO):
        kernels.log_liger_choice("auto", "llama")
    [line] = _liger_lines(caplog)
    assert line.startswith("model.liger=auto: on (CUDA, liger-kernel") and line.endswith(", llama)")
    assert kernels.auto_liger("qwen2", gpu_visible=True).on


def test_liger_auto_is_off_for_other_model_families(tokenizer, cuda_with_liger):
    spec = replace(TINY, liger="auto", random_init={**TINY.random_init, "model_type": "mistral"})  # no error
    load_model(spec, tokenizer, seed=0)
    assert cuda_with_liger == []
    assert kernels.auto_liger("gpt2", gpu_visible=True) == kernels.LigerChoice(
        False, "Liger patches llama and qwen2 models, not gpt2")


def test_liger_auto_is_off_where_liger_kernel_does_not_import(tokenizer, cuda_with_liger, monkeypatch):
    """Not installed: off for auto, refused for true with the cause."""
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)  # import raises ModuleNotFoundError
    assert kernels.auto_liger("llama", gpu_visible=True) == kernels.LigerChoice(False, "liger-kernel is not installed")
    load_model(replace(TINY, liger="auto"), tokenizer, seed=0)
    assert cuda_with_liger == []
    assert kernels.liger_problems(gpu_visible=True) == [
        "model.liger=true: liger-kernel is not installed; pip install liger-kernel (or solopo's gpu extra), or set "
        "model.liger=auto"]


def test_liger_takes_true_false_or_auto():
    with pytest.raises(SettingsError, match=r"^liger=maybe: choose one of false, true, auto$"):
        replace(TINY, liger="maybe")
