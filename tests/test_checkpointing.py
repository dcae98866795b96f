"""model.gradient_checkpointing=auto: the activation-memory predictor against counts by hand and by autograd, the
decision against hand cases, and partial checkpointing changes no number."""
import contextlib
import sys
import types
from dataclasses import replace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from solopo.models.blocks import decoder_layers
from solopo.step.checkpointing import (StepShape, checkpoint_layers, model_shape, plan_checkpointing,
                                       predict_activations, state_bytes)
from solopo.step.largest_step import StepTokens
from solopo.step.layout import PACKED, SHARED_PROMPT
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.models import kernels, memory
from solopo.models.loading import load_model, with_lora
from conftest import TINY

QWEN_1_5B = dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, vocab_size=151936)


def shape(fields, compute_bytes=2, weight_bytes=2, **savers):
    return StepShape.of(AutoConfig.for_model(**fields), compute_bytes, weight_bytes, **savers)


TINY_SHAPE = dict(model_type="llama", hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, vocab_size=10)


def one_sequence(tokens, responses=64):
    return StepTokens((tokens,), (responses,))


def test_layer_bytes_of_the_1_5b_shape_by_hand():
    """H 1536, Dq 1536, Dkv 256, I 8960, 12 heads, bf16: norms 2 (4 x 1536 + 4 x 1536 + 4) = 24,584; q, k, v and the
    output 2 (2 x 1536 + 2 x 256) = 7,168; log-sum-exp 48; MLP 8 x 8960 = 71,680: 103,480 bytes per token. fp32
    weights under bf16 autocast add 5 x 2 x 1536 = 15,360 (five casts of a norm's output)."""
    assert shape(QWEN_1_5B).layer_bytes() == 103_480
    assert shape(QWEN_1_5B, weight_bytes=4).layer_bytes() == 118_840
    assert shape(QWEN_1_5B).checkpointed_bytes() == 2 * 1536 and shape(QWEN_1_5B, 2, 4).checkpointed_bytes() == 4 * 1536


def test_liger_layer_bytes_of_the_1_5b_shape_by_hand():
    """A_liger, Liger's RMSNorm and SwiGLU in bf16: norms 2 (2 x 1536 + 4 + 2 x 1536) = 12,296 (the input as it came,
    the fp32 reciprocal root, the output); attention 7,168 and 48 as in A; MLP 3 x 2 x 8960 = 53,760 (gate, up, their
    product): 73,272 bytes per token. fp32 weights under bf16 autocast: the norms keep their fp32 input (2 (4 x 1536
    + 4), the same 12,296) but no output, which the five projections cast, 5 x 2 x 1536 = 15,360: 88,632. Outside the
    layers the final norm keeps 2 x 1536 + 4 in place of 6 x 1536 + 4: O = 3,076 + 3,072 + 512 + 8 = 6,668."""
    assert shape(QWEN_1_5B, liger=True).layer_bytes() == 73_272
    assert shape(QWEN_1_5B, weight_bytes=4, liger=True).layer_bytes() == 88_632
    assert shape(QWEN_1_5B).outside_layers_bytes() - shape(QWEN_1_5B, liger=True).outside_layers_bytes() == 4 * 1536
    assert shape(QWEN_1_5B, liger=True).outside_layers_bytes() == 6_668
    # model.mlp_chunk_size: the MLP keeps its input only, A_N = A_liger - 3 x 2 x 8960
    assert shape(QWEN_1_5B, liger=True).layer_bytes(chunked=True) == 73_272 - 53_760


def test_packed_rows_count_keys_and_values_at_every_query_head():
    """Flex attention repeats keys and values to the query heads for 12 heads (no power of two), and solopo_varlen
    does where torch's varlen kernel takes no grouped heads: 2 x 2 x (1536 - 256) = 5,120 bytes more per token and
    layer in a packed row, none in padded rows (SDPA's causal kernel takes grouped heads)."""
    assert shape(QWEN_1_5B).layer_bytes(repeated_kv=True) == 103_480 + 5_120
    assert shape(QWEN_1_5B, liger=True).layer_bytes(repeated_kv=True) == 73_272 + 5_120
    big = shape(QWEN_1_5B, liger=True)
    padded, packed = StepTokens((10_000,), (64,)), StepTokens((10_000,), (64,), layout=PACKED)
    # no layer checkpointed: 28 layers' activations and one layer's gradients
    assert predict_activations(big, packed, 0, 64) - predict_activations(big, padded, 0, 64) == 29 * 10_000 * 5_120


def test_shared_prompts_count_the_keys_and_values_gathered_again():
    """solopo_varlen reads a shared prompt's keys and values again for its second response, and the kernel keeps the
    gathered copies: 2 x 2 x 1536 bytes (repeated to the query heads, as packed rows count them) per gathered token in
    each of the 28 layers and the one whose gradients backward holds."""
    big = shape(QWEN_1_5B, liger=True)
    assert big.gathered_bytes() == 2 * 2 * 256 and big.gathered_bytes(repeated_kv=True) == 6_144
    plain = StepTokens((10_128,), (128,), layout=SHARED_PROMPT)
    gathered = StepTokens((10_128,), (128,), layout=SHARED_PROMPT, gathered=10_000)
    assert predict_activations(big, gathered, 0, 64) - predict_activations(big, plain, 0, 64) == 29 * 10_000 * 6_144


def test_the_plan_fits_the_largest_layout_a_batch_can_take():
    """Steps in two layouts (solopo.step.largest_step): the plan is the one for the larger."""
    big, gib = shape(QWEN_1_5B, liger=True), 2**30
    small, large = StepTokens((40_000,), (64,), layout=PACKED), StepTokens((40_000, 40_000), (64, 64))
    both = plan_checkpointing(big, [small, large], 64, 12 * gib, 70 * gib)
    assert both == plan_checkpointing(big, [large], 64, 12 * gib, 70 * gib)
    assert both.checkpointed > plan_checkpointing(big, [small], 64, 12 * gib, 70 * gib).checkpointed


SMALL = dict(model_type="qwen2", hidden_size=64, intermediate_size=160, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=300)


class Counted(memory.HostOffload):
    """model.offload_activations' hooks, counting: what they would move (offered_bytes) and, through ``keep``, what
    they would leave on the device (min_bytes 1 stands in for a long step, where every activation is over 1 MiB)."""

    def __init__(self, keep):
        super().__init__(min_bytes=1)
        self.keep = keep

    def pack(self, tensor):
        return tensor if self.moves(tensor) else self.keep(tensor)


def saved_per_token(fields, dtype, autocast, checkpointed=False, offload=False, mlp_chunk_size=None) -> tuple:
    """Bytes autograd holds per token for one decoder layer, and outside the layers: by differences over 1 and 2
    layers and T=32 and T=64, counting each saved storage once and the weights (and their autocast copies, which do
    not grow with T) not at all. ``offload``: the bytes offered to the host instead (each save once), and the storages
    the device would keep then."""
    def saved(layers, length):
        config = AutoConfig.for_model(**{**fields, "num_hidden_layers": layers})
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).train()
        checkpoint_layers(model, layers if checkpointed else 0)
        if mlp_chunk_size:
            memory.chunk_sequences(model, mlp_chunk_size)
        weights, kept = {p.untyped_storage().data_ptr() for p in model.parameters()}, {}

        def keep(t):
            kept.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            return t
        host = memory.offload_activations(model, Counted(keep)) if offload else None
        hooks = contextlib.nullcontext() if offload else torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t)
        with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(input_ids=torch.randint(0, fields["vocab_size"], (1, length)), logits_to_keep=1)
        device = sum(n for ptr, n in kept.items() if ptr not in weights)
        return (host.offered_bytes, device) if offload else device
    totals = {(layers, n): saved(layers, n) for layers in (1, 2) for n in (32, 64)}

    def per_token(pick):
        layer = (pick(totals[2, 64]) - pick(totals[1, 64]) - pick(totals[2, 32]) + pick(totals[1, 32])) / 32
        return layer, (pick(totals[1, 64]) - pick(totals[1, 32])) / 32 - layer
    if offload:
        return per_token(lambda t: t[0]), per_token(lambda t: t[1])
    return per_token(lambda t: t)


@pytest.mark.parametrize("dtype, autocast, weight_bytes", [(torch.bfloat16, False, 2), (torch.float32, True, 4)],
                         ids=["bf16-weights", "fp32-weights-bf16-autocast"])
@pytest.mark.parametrize("chunk", [None, 8], ids=["whole", "mlp_chunk_size"])
def test_layer_bytes_match_what_autograd_saves(dtype, autocast, weight_bytes, chunk):
    """A, and with model.mlp_chunk_size A_N = A - 4cI (- 2cH + rH with fp32 weights), per layer; outside the layers
    the final norm's (4 + r) H + 4 (chunked: r H), its output c H (which the LM head's one-position input holds, but
    for its cast under autocast), the rotary tables 2 r head_dim and the ids 8. Here H 64, I 160, head_dim 16: bf16
    2712 / 1432 per layer, 588 / 328 outside; fp32 weights 3352 / 2072, 652 / 392."""
    predicted = shape(SMALL, 2, weight_bytes, mlp_chunk_size=chunk)
    assert saved_per_token(SMALL, dtype, autocast, mlp_chunk_size=chunk) == (
        predicted.layer_bytes(chunked=bool(chunk)), predicted.outside_layers_bytes(chunked=bool(chunk)))


@pytest.mark.parametrize("checkpointed", [True, False], ids=["checkpointed", "not-checkpointed"])
def test_offload_leaves_no_activation_on_the_device(checkpointed):
    """model.offload_activations moves every saved activation: the device keeps none per token, inside the layers or
    out; a checkpointed layer sends its input, r H = 128 bytes per token (bf16, H 64), a non-checkpointed one more
    than its A (2712: a tensor saved twice, e.g. a norm's fp32 input, is copied twice)."""
    (host_layer, _), device = saved_per_token(SMALL, torch.bfloat16, False, checkpointed, offload=True)
    assert device == (0, 0)
    small = shape(SMALL)
    assert host_layer == small.checkpointed_bytes() if checkpointed else host_layer > small.layer_bytes()


def test_predicted_activations_by_hand():
    """Tiny shape: 2 layers, H 8, Dq 8, Dkv 4, 2 heads, I 16, vocab 10, bf16. A = 2 (32 + 32 + 4) + 2 (16 + 8) + 8 +
    128 = 320; a checkpointed layer keeps 16; outside the layers (4 + 2) 8 + 4 + 2 x 8 + 2 x 2 x 4 + 8 = 92 per
    token."""
    tiny = shape(TINY_SHAPE)
    assert (tiny.layer_bytes(), tiny.checkpointed_bytes(), tiny.outside_layers_bytes()) == (320, 16, 92)
    # 100 tokens, 5 response positions: LM head 3 x 5 x 10 x 4 = 600
    step = one_sequence(100, 5)
    assert predict_activations(tiny, step, 0, 5) == 100 * (2 * 320 + 92 + 320) + 600  # one layer's gradients
    # the checkpointed first layer is recomputed after the second's backward has freed its 320: one of them at a time
    assert predict_activations(tiny, step, 1, 5) == 100 * (16 + 92 + 320 + 320) + 600
    assert predict_activations(tiny, step, 2, 5) == 100 * (2 * 16 + 92 + 320 + 320) + 600


def test_predicted_activations_with_savers_by_hand():
    """The tiny shape with model.mlp_chunk_size=40: A_N = 320 - 4 x 2 x 16 = 192; the final norm keeps 16 (its input)
    for 52, so 56 of 92 stay outside the layers; a chunk in flight, 40 x max(6 x 2 x 16, 2 x 52) = 40 x 192 per row
    longer than 40. Sequences of 100 and 30 tokens, two rows each: 200 tokens chunked (in 2 rows), 60 whole. With
    model.offload_activations the device keeps the rotary tables and ids (24 per token), and backward brings one
    layer's input back (16 per token)."""
    chunked, step = shape(TINY_SHAPE, mlp_chunk_size=40), StepTokens((100, 30), (5, 5), rows=2)
    assert (chunked.layer_bytes(chunked=True), chunked.outside_layers_bytes(chunked=True)) == (192, 56)
    layer = 200 * 192 + 60 * 320
    outside = 200 * 56 + 60 * 92
    chunk = 2 * 40 * 192
    head = 3 * 5 * 10 * 4
    assert predict_activations(chunked, step, 0, 5) == 3 * layer + outside + chunk + head
    assert predict_activations(chunked, step, 1, 5) == 2 * layer + 260 * 16 + outside + chunk + head
    both = shape(TINY_SHAPE, mlp_chunk_size=40, offload=True)
    assert predict_activations(both, step, 2, 5) == 260 * (24 + 16) + 2 * layer + chunk + head
    assert predict_activations(both, step, 0, 5) == 260 * 24 + 2 * layer + chunk + head
    assert predict_activations(shape(TINY_SHAPE, mlp_chunk_size=100), step, 0, 5) == predict_activations(
        shape(TINY_SHAPE), step, 0, 5)  # no row longer than the chunk: nothing changes


def test_the_plan_checkpoints_the_fewest_layers_that_fit():
    """1.5B shape in bf16, state 12 GiB. At 8K SoLoPO (10,240 tokens) nothing needs checkpointing on an H200 (about
    125 GiB usable); 128K tokens need some layers, and where even all do not fit, all are checkpointed."""
    big, gib = shape(QWEN_1_5B), 2**30
    state = 12 * gib
    plan = plan_checkpointing(big, [one_sequence(10_240)], 64, state, 125 * gib)
    assert plan.checkpointed == 0 and plan.predicted_peak < 125 * gib
    some = plan_checkpointing(big, [one_sequence(131_072)], 64, state, 125 * gib)
    assert 0 < some.checkpointed < 28 and some.predicted_peak <= 125 * gib
    # one layer fewer would not fit: the fewest
    assert state + predict_activations(big, one_sequence(131_072), some.checkpointed - 1, 64) > 125 * gib
    assert plan_checkpointing(big, [one_sequence(1 << 22)], 64, state, 125 * gib).checkpointed == 28
    cpu = plan_checkpointing(big, [one_sequence(1 << 22)], 64, state, None)
    assert cpu.checkpointed == 0 and "no GPU: no memory to save" in cpu.describe()  # the CPU: none, and why
    assert "0 of 28 decoder layers checkpointed" in plan.describe() and "savers" not in plan.describe()


def test_savers_let_the_plan_checkpoint_fewer_layers():
    """SoLoPO at 128K on the 1.5B shape (bf16, state 12 GiB, 125 GiB usable): a 129,024-token long sequence and two
    1,024-token short ones, 192 response positions through the LM head. Without savers 21 of 28 layers are
    checkpointed (122.8 GiB predicted). With model.mlp_chunk_size=16384 the long sequence's tokens keep A_N = 103,480
    - 4 x 2 x 8,960 = 31,800 bytes per non-checkpointed layer: 2 layers suffice (124.0 GiB). With
    model.offload_activations every layer is, and no layer's input stays on the device: 38.0 GiB (22.4 GiB with both).
    At 8K (no sequence longer than the chunk) the chunked prediction is the plain one."""
    gib, state = 2**30, 12 * 2**30
    step = StepTokens((129_024, 1_024, 1_024), (64, 64, 64))

    def plan(**savers):
        return plan_checkpointing(shape(QWEN_1_5B, **savers), [step], 192, state, 125 * gib)
    plain, chunked = plan(), plan(mlp_chunk_size=16_384)
    assert (plain.checkpointed, chunked.checkpointed) == (21, 2)
    assert [round(p.predicted_peak / gib, 1) for p in (plain, chunked)] == [122.8, 124.0]
    offloaded, both = plan(offload=True), plan(mlp_chunk_size=16_384, offload=True)
    assert (offloaded.checkpointed, both.checkpointed) == (28, 28)
    assert [round(p.predicted_peak / gib, 1) for p in (offloaded, both)] == [38.0, 22.4]
    assert "memory savers counted: model.mlp_chunk_size=16384, model.offload_activations=true" in both.describe()
    short = StepTokens((8_192, 1_024, 1_024), (64, 64, 64))
    assert plan_checkpointing(shape(QWEN_1_5B, mlp_chunk_size=16_384), [short], 192, state, 125 * gib) == replace(
        plan_checkpointing(shape(QWEN_1_5B), [short], 192, state, 125 * gib), savers="model.mlp_chunk_size=16384")


def test_the_model_carries_its_savers_to_the_prediction(tokenizer):
    """model_shape reads the savers load_model applied (through a LoRA wrapper too), so every caller of
    auto_checkpointing counts what the model does."""
    plain = load_model(TINY, tokenizer, seed=0)
    saving = load_model(replace(TINY, mlp_chunk_size=16, offload_activations=True), tokenizer, seed=0)
    assert (model_shape(plain, None).mlp_chunk_size, model_shape(plain, None).offload) == (None, False)
    assert (model_shape(saving, None).mlp_chunk_size, model_shape(saving, None).offload) == (16, True)
    assert model_shape(with_lora(saving, {"r": 2}), torch.bfloat16).savers() == (
        "model.mlp_chunk_size=16, model.offload_activations=true")


def test_the_model_tells_the_prediction_it_runs_liger(tokenizer, monkeypatch):
    """model_shape reads whether use_liger patched the model (through a LoRA wrapper too), here with Liger's patch
    function stood in for (its kernels are Triton kernels, and this machine has no GPU), and the plan says so."""
    patched = []
    liger = types.ModuleType("liger_kernel.transformers")
    liger.apply_liger_kernel_to_llama = lambda **options: patched.append(options["model"])
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))  # CI has no liger-kernel
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", liger)
    monkeypatch.setattr(kernels, "liger_problems", lambda gpu_visible: [])
    model = load_model(replace(TINY, liger=True), tokenizer, seed=0)
    assert patched == [model] and kernels.liger_applied(model)
    assert model_shape(with_lora(model, {"r": 2}), None).liger
    assert not model_shape(load_model(TINY, tokenizer, seed=0), None).liger
    plan = plan_checkpointing(model_shape(model, None), [one_sequence(64)], 64, 0, 2**30)
    assert "Liger's RMSNorm and SwiGLU counted" in plan.describe()


def test_state_by_hand(tiny_model):
    trained = sum(p.numel() for p in tiny_model.parameters())
    assert state_bytes(tiny_model) == 4 * 4 * trained  # fp32 weights, gradients and two AdamW moments
    tiny_model.requires_grad_(False)
    assert state_bytes(tiny_model, world_size=2) == 4 * trained // 2


def test_partial_checkpointing_wraps_k_layers_and_changes_no_gradient(tokenizer):
    spec = TINY
    grads = []
    for count in (0, 1, 2):
        model = load_model(spec, tokenizer, seed=0).double().train()
        checkpoint_layers(model, count)
        assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [i < count for i in range(2)]
        ids = torch.arange(5, 25).unsqueeze(0)
        model(input_ids=ids).logits.sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for other in grads[1:]:
        for a, b in zip(other, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_checkpointing_is_enabled_without_a_deprecation_warning(tokenizer):
    """transformers 5.25 deprecates gradient_checkpointing_enable (a FutureWarning in every checkpointed run): the
    loader and checkpoint_layers take activation_checkpointing_enable where it exists, the old name elsewhere."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = load_model(replace(TINY, gradient_checkpointing=True), tokenizer, seed=0)
        checkpoint_layers(load_model(TINY, tokenizer, seed=0), 1)
    assert all(layer.gradient_checkpointing for layer in decoder_layers(model))
    calls = []
    older = types.SimpleNamespace(gradient_checkpointing_enable=lambda **kwargs: calls.append(kwargs))
    memory.enable_checkpointing(older)
    assert calls == [{"gradient_checkpointing_kwargs": {"use_reentrant": False}}]


def test_a_run_says_once_that_its_policy_checkpoints_every_layer(tokenizer, caplog):
    """model.gradient_checkpointing=true: one log line for the policy; the live reference, frozen in eval mode, never
    recomputes a layer and gets none."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from conftest import ROOT
    from solopo.settings.build import build_settings
    from solopo.training.models import load_models

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "algo=dpo", "reference=live",
                                           "model.gradient_checkpointing=true"])
    GlobalHydra.instance().clear()
    with caplog.at_level("INFO", logger="solopo"):
        policy, reference, _ = load_models(cfg, build_settings(cfg), tokenizer)
    assert reference is not None and not reference.training
    assert caplog.text.count("model.gradient_checkpointing=true: all 2 decoder layers checkpointed") == 1


def test_the_state_counts_the_bf16_weight_copies_autocast_saves_for_backward():
    """fp32 weights under bf16 autocast: every linear layer's weight is cast and the copy saved for backward; the
    bytes autograd holds in bf16 tensors of a linear weight's shape are exactly autocast_copies' count (2 bytes a
    weight). bf16 weights, or no autocast: none."""
    from torch import nn
    from solopo.step.checkpointing import autocast_copies

    fields = dict(model_type="qwen2", hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False)
    config = AutoConfig.for_model(**fields)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()
    linear = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    shapes = {tuple(w.shape) for w in linear}
    copies = {}

    def pack(tensor):
        if tensor.dtype == torch.bfloat16 and tuple(tensor.shape) in shapes | {s[::-1] for s in shapes}:
            copies[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=torch.arange(20).unsqueeze(0))
    assert sum(copies.values()) == autocast_copies(model, torch.bfloat16) == 2 * sum(w.numel() for w in linear)
    assert autocast_copies(model, None) == 0 == autocast_copies(model.to(torch.bfloat16), torch.bfloat16)


def test_a_run_counts_its_savers_and_says_so(tokenizer, caplog):
    """The run's auto plan (solopo.training.models) predicts with the savers its model was loaded with, and its log
    line names them; it counts the step in the layout its collator gives: shared prompts, 20 + 3 + 4 tokens a pair."""
    from conftest import default_config
    from omegaconf import OmegaConf
    from solopo.settings.build import build_settings
    from solopo.training.models import plan_checkpointing as plan_run

    cfg = default_config().copy()
    OmegaConf.update(cfg, "model.mlp_chunk_size", 16)
    OmegaConf.update(cfg, "model.offload_activations", True)
    settings = build_settings(cfg)
    policy = load_model(replace(TINY, mlp_chunk_size=settings.model.mlp_chunk_size,
                                offload_activations=settings.model.offload_activations), tokenizer, seed=0)
    pairs = [TokenizedPair("a", {"short": [1] * 5, "long": [1] * 20}, {"chosen": [2] * 3, "rejected": [2] * 4})]
    collate = PairCollator([("long", "chosen"), ("long", "rejected")], 0, pack="shared_prompt")
    with caplog.at_level("INFO", logger="solopo"):
        plan_run(cfg, settings, policy, pairs, collate)
    assert "memory savers counted: model.mlp_chunk_size=16, model.offload_activations=true" in caplog.text
    assert f"for steps of up to {27 * cfg.data.batch_size} tokens" in caplog.text

