"""model.gradient_checkpointing=auto: the activation-memory predictor against counts by hand and by autograd, the
decision against hand cases, and partial checkpointing changes no number."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from solopo.step.checkpointing import (StepShape, checkpoint_layers, decoder_layers, plan_checkpointing,
                                       predict_activations, state_bytes, step_tokens)
from solopo.data.tokenize import TokenizedPair
from solopo.models.loading import load_model
from conftest import TINY

QWEN_1_5B = dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, vocab_size=151936)


def shape(fields, compute_bytes=2, weight_bytes=2):
    return StepShape.of(AutoConfig.for_model(**fields), compute_bytes, weight_bytes)


def test_layer_bytes_of_the_1_5b_shape_by_hand():
    """H 1536, Dq 1536, Dkv 256, I 8960, 12 heads, bf16: norms 2 (4 x 1536 + 4 x 1536 + 4) = 24,584; q, k, v and the
    output 2 (2 x 1536 + 2 x 256) = 7,168; log-sum-exp 48; MLP 8 x 8960 = 71,680: 103,480 bytes per token. fp32
    weights under bf16 autocast add 5 x 2 x 1536 = 15,360 (five casts of a norm's output)."""
    assert shape(QWEN_1_5B).layer_bytes() == 103_480
    assert shape(QWEN_1_5B, weight_bytes=4).layer_bytes() == 118_840
    assert shape(QWEN_1_5B).checkpointed_bytes() == 2 * 1536 and shape(QWEN_1_5B, 2, 4).checkpointed_bytes() == 4 * 1536


def saved_per_layer_token(fields, dtype, autocast) -> float:
    """Bytes autograd holds per token for one decoder layer: (2 layers - 1 layer) over (T=64 - T=32), counting each
    saved storage once and the weights (and their autocast copies, which do not grow with T) not at all."""
    def saved(layers, length):
        config = AutoConfig.for_model(**{**fields, "num_hidden_layers": layers})
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).train()
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages = {}

        def keep(t):
            storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            return t
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model.model(input_ids=torch.randint(0, fields["vocab_size"], (1, length)))
        return sum(n for ptr, n in storages.items() if ptr not in weights)
    per_layer = {n: saved(2, n) - saved(1, n) for n in (32, 64)}
    return (per_layer[64] - per_layer[32]) / 32


@pytest.mark.parametrize("dtype, autocast, weight_bytes", [(torch.bfloat16, False, 2), (torch.float32, True, 4)],
                         ids=["bf16-weights", "fp32-weights-bf16-autocast"])
def test_layer_bytes_match_what_autograd_saves(dtype, autocast, weight_bytes):
    fields = dict(model_type="qwen2", hidden_size=64, intermediate_size=160, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    assert saved_per_layer_token(fields, dtype, autocast) == shape(fields, 2, weight_bytes).layer_bytes()


def test_predicted_activations_by_hand():
    """Tiny shape: 2 layers, H 8, Dq 8, Dkv 4, 2 heads, I 16, vocab 10, bf16. A = 2 (32 + 32 + 4) + 2 (16 + 8) + 8 +
    128 = 320; a checkpointed layer keeps 16; outside the layers (4 + 2) 8 + 4 x 4 + 8 = 72 per token."""
    tiny = shape(dict(model_type="llama", hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, vocab_size=10))
    assert (tiny.layer_bytes(), tiny.checkpointed_bytes(), tiny.outside_layers_bytes()) == (320, 16, 72)
    # 100 tokens, 5 response positions: LM head 3 x 5 x 10 x 4 = 600
    assert predict_activations(tiny, 100, 0, 5) == 100 * (2 * 320 + 72 + 320) + 600  # one layer's gradients
    assert predict_activations(tiny, 100, 1, 5) == 100 * (320 + 16 + 72 + 2 * 320) + 600  # and one recomputed
    assert predict_activations(tiny, 100, 2, 5) == 100 * (2 * 16 + 72 + 2 * 320) + 600


def test_the_plan_checkpoints_the_fewest_layers_that_fit():
    """1.5B shape in bf16, state 12 GiB. At 8K SoLoPO (10,240 tokens) nothing needs checkpointing on an H200 (about
    125 GiB usable); 128K tokens need some layers, and where even all do not fit, all are checkpointed."""
    big, gib = shape(QWEN_1_5B), 2**30
    state = 12 * gib
    plan = plan_checkpointing(big, 10_240, 64, state, 125 * gib)
    assert plan.checkpointed == 0 and plan.predicted_peak < 125 * gib
    some = plan_checkpointing(big, 131_072, 64, state, 125 * gib)
    assert 0 < some.checkpointed < 28 and some.predicted_peak <= 125 * gib
    # one layer fewer would not fit: the fewest
    assert state + predict_activations(big, 131_072, some.checkpointed - 1, 64) > 125 * gib
    assert plan_checkpointing(big, 1 << 22, 64, state, 125 * gib).checkpointed == 28
    assert plan_checkpointing(big, 1 << 22, 64, state, None).checkpointed == 0  # the CPU: none
    assert "0 of 28 decoder layers checkpointed" in plan.describe()


def test_state_and_step_tokens_by_hand(tiny_model):
    trained = sum(p.numel() for p in tiny_model.parameters())
    assert state_bytes(tiny_model) == 4 * 4 * trained  # fp32 weights, gradients and two AdamW moments
    tiny_model.requires_grad_(False)
    assert state_bytes(tiny_model, world_size=2) == 4 * trained // 2
    pairs = [TokenizedPair("a", {"short": [1] * 5, "long": [1] * 20}, {"chosen": [2] * 3, "rejected": [2] * 4}),
             TokenizedPair("b", {"short": [1] * 7, "long": [1] * 18}, {"chosen": [2] * 6, "rejected": [2] * 1})]
    keys = [("short", "chosen"), ("short", "rejected"), ("long", "chosen")]
    # longest short/chosen 13, short/rejected 9, long/chosen 24; responses 6 + 4 + 6; two pairs per step
    assert step_tokens(pairs, keys, 2) == (2 * (13 + 9 + 24), 2 * 16)


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
