"""attn_implementation=solopo_varlen: packed rows through a varlen kernel, everything else through transformers' SDPA
with its mask (packed rows against padded ones are in test_logps.py)."""
import dataclasses

import pytest
import torch

from conftest import settings
from solopo.step import varlen
from solopo.data.tokenize import left_padded


def test_generation_with_left_padding_matches_sdpa(tiny_model, tokenizer):
    """Greedy generation for prompts of different lengths (left-padded, KV cache) gives sdpa's logits at every step,
    so a solopo_varlen model also samples pairs and is evaluated right."""
    ids, mask = left_padded(tokenizer, ["Where is the castle? It is in", "Q: " + "word " * 40 + "Where?"], "cpu")
    assert (mask == 0).any()  # the shorter prompt is padded

    def step_logits(attention, attention_mask):
        tiny_model.set_attn_implementation(attention)
        with torch.no_grad():
            out = tiny_model.generate(input_ids=ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=4,
                                      pad_token_id=tokenizer.pad_token_id, use_cache=True, output_logits=True,
                                      return_dict_in_generate=True)
        return torch.stack(out.logits)

    expected = step_logits("sdpa", mask)
    torch.testing.assert_close(step_logits(varlen.NAME, mask), expected)
    # without the padding mask the padded prompt's logits change: the comparison above can fail
    assert not torch.allclose(step_logits(varlen.NAME, torch.ones_like(mask)), expected)


def test_no_mask_is_built_only_for_packed_forwards():
    assert not varlen._mask.is_off
    with varlen.packed_forward():
        assert varlen._mask.mask() is None
    assert not varlen._mask.is_off


@pytest.mark.parametrize("signature", ["is_causal", "window_size"])
def test_varlen_kernel_call_across_torch_releases(monkeypatch, signature):
    """torch's varlen kernel asks for causality as is_causal=True (older) or window_size=(-1, 0) (newer), and takes
    grouped key/value heads itself only where it has enable_gqa; the call adapts to each, and computes what the
    sequence-by-sequence path does. A stand-in kernel records the call (the real one needs a CUDA GPU)."""
    calls = {}

    def fake(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, **options):
        calls.update(options, heads=(query.shape[1], key.shape[1]), max_q=max_q)
        return varlen.run_by_run(query, key, value, cu_q, cu_k, scale)

    if signature == "is_causal":
        def kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, is_causal=False, scale=None):
            return fake(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, is_causal=is_causal)
    else:
        def kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                   window_size=(-1, -1), enable_gqa=False):
            return fake(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=window_size,
                        enable_gqa=enable_gqa)
    monkeypatch.setattr(varlen, "_torch_varlen", lambda: kernel)
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(9, 4, 8, generator=g), torch.randn(9, 2, 8, generator=g), torch.randn(9, 2, 8, generator=g)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    out = varlen._varlen_kernel(q, k, v, cu, cu, 5, 5, 0.3)
    if signature == "is_causal":
        assert calls["is_causal"] is True and calls["heads"] == (4, 4)  # heads repeated for the kernel
    else:
        assert calls["window_size"] == (-1, 0) and calls["enable_gqa"] and calls["heads"] == (4, 2)
    assert calls["max_q"] == 5
    torch.testing.assert_close(out, varlen.run_by_run(q, k, v, cu, cu, 0.3))
    # the first sequence's last query attends to its own 4 keys only
    keys, values = k[:4].repeat_interleave(2, 1), v[:4].repeat_interleave(2, 1)  # (4 tokens, 4 heads, 8)
    probs = torch.softmax(0.3 * torch.einsum("hd,thd->ht", q[3], keys), -1)
    torch.testing.assert_close(out[3], torch.einsum("ht,thd->hd", probs, values))


@pytest.mark.parametrize("aligned", ["lower right", "upper left"])
def test_the_alignment_probe_tells_the_two_causal_conventions_apart(monkeypatch, aligned):
    """Shared-prompt runs have more keys than queries and need causal attention aligned to the lower right; the probe
    finds which convention the kernel follows (stand-in kernels: the run-by-run path, and SDPA's own upper-left
    is_causal, which reads only the first key for the one query)."""
    def kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, is_causal=False):
        if aligned == "lower right":
            return varlen.run_by_run(query, key, value, cu_seq_q, cu_seq_k, scale)
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)[0].transpose(0, 1)

    monkeypatch.setattr(varlen, "_torch_varlen", lambda: kernel)
    varlen.aligns_lower_right.cache_clear()
    state = torch.random.get_rng_state()
    try:
        assert varlen.aligns_lower_right(torch.device("cpu")) is (aligned == "lower right")
    finally:
        varlen.aligns_lower_right.cache_clear()
    # the probe runs at a run's first shared-prompt step, after a resume too: it draws no random number
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_kernel_that_does_not_run_on_the_gpu_fails_the_probe(monkeypatch):
    """torch's flash kernel raises on a GPU older than Ampere (a V100, a T4): the probe answers no, and shared prompts
    take flex attention, as before the runs, instead of the step failing."""
    def kernel(*args, **kwargs):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")

    monkeypatch.setattr(varlen, "_torch_varlen", lambda: kernel)
    varlen.aligns_lower_right.cache_clear()
    try:
        assert varlen.aligns_lower_right(torch.device("cpu")) is False
    finally:
        varlen.aligns_lower_right.cache_clear()


def test_the_alignment_probe_exercises_the_causal_mask(monkeypatch):
    """Flash-attention's varlen forward drops causality where the longest query run is one token (one query then reads
    every key under its lower-right convention), so a one-query probe reads every key under any convention. The probe
    runs two queries: a stand-in kernel that aligns to the upper left but takes that shortcut is caught."""
    def kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, is_causal=False):
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))
        causal = is_causal and max_q > 1  # upper left (SDPA's is_causal), off for a single query
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)[0].transpose(0, 1)

    monkeypatch.setattr(varlen, "_torch_varlen", lambda: kernel)
    varlen.aligns_lower_right.cache_clear()
    try:
        assert not varlen.aligns_lower_right(torch.device("cpu"))
    finally:
        varlen.aligns_lower_right.cache_clear()


def test_shared_prompts_go_to_flex_attention_where_the_kernel_is_aligned_otherwise(monkeypatch):
    """Runs with gathered keys need the lower-right alignment on CUDA; without it the row takes flex attention's block
    mask (SharedPromptGroup.model_inputs), with a warning. The CPU's run-by-run path and runs without gathered keys
    need no probe."""
    monkeypatch.setattr(varlen, "_torch_varlen", lambda: object())
    monkeypatch.setattr(varlen, "aligns_lower_right", lambda device: False)
    assert varlen.takes_shared_runs(torch.device("cpu"), gathered=True)
    assert varlen.takes_shared_runs(torch.device("cuda"), gathered=False)
    with pytest.warns(UserWarning, match="does not align causal attention to the lower right; shared prompts go to flex"):
        assert not varlen.takes_shared_runs(torch.device("cuda"), gathered=True)
    monkeypatch.setattr(varlen, "aligns_lower_right", lambda device: True)
    assert varlen.takes_shared_runs(torch.device("cuda"), gathered=True)


def test_shared_prompts_go_to_flex_attention_on_a_gpu_without_the_varlen_kernel(monkeypatch):
    """torch before 2.9 has no varlen kernel: on CUDA a shared-prompt row takes flex attention's block mask, as it did
    before the runs, not the one-run-at-a-time SDPA path (packed rows have no other kernel and keep that path)."""
    monkeypatch.setattr(varlen, "_torch_varlen", lambda: None)
    for gathered in (False, True):
        assert not varlen.takes_shared_runs(torch.device("cuda"), gathered=gathered)
        assert varlen.takes_shared_runs(torch.device("cpu"), gathered=gathered)


def test_attention_inputs_take_autocasts_dtype_where_it_is_on():
    """fp32 queries and keys (after the rotary embedding) and bf16 values (fp32 weights under bf16-mixed) all reach
    the varlen and flex kernels in bf16, the cast SDPA makes itself; without autocast they pass unchanged."""
    from solopo.step.varlen import autocast_inputs

    q, k, v = torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4, dtype=torch.bfloat16)
    assert [t.dtype for t in autocast_inputs(q, k, v)] == [torch.float32, torch.float32, torch.bfloat16]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert [t.dtype for t in autocast_inputs(q, k, v)] == [torch.bfloat16] * 3


def test_fp32_cuda_grouped_heads_are_repeated_so_sdpa_avoids_its_math_kernel(monkeypatch):
    """fp32 padded rows of a grouped-query model (SmolLM2: 9 heads, 3 kv heads) on CUDA could only use SDPA's math
    kernel, whose (B, H, L, L) scores set the 17 GiB peak of a memory test on an H100: the heads are repeated first
    there; the answer is the same attention."""
    from types import SimpleNamespace

    from solopo.step.varlen import math_kernel_only, unused_mask, varlen_attention

    assert math_kernel_only("cuda", torch.float32, 3)
    assert not math_kernel_only("cuda", torch.bfloat16, 3)  # the flash kernel takes grouped heads
    assert not math_kernel_only("cuda", torch.float32, 1)
    assert not math_kernel_only("cpu", torch.float32, 3)
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 6, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    plain, _ = varlen_attention(module, q, k, v, unused_mask("cpu"), scaling=0.3)  # transformers' SDPA path
    calls, own = [], varlen._repeated_heads
    monkeypatch.setattr(varlen, "math_kernel_only", lambda *args: calls.append(args) or True)  # as on CUDA in fp32
    monkeypatch.setattr(varlen, "_repeated_heads", lambda *args: calls.append("repeated") or own(*args))
    repeated, _ = varlen_attention(module, q, k, v, unused_mask("cpu"), scaling=0.3)
    assert calls == [("cpu", torch.float32, 3), "repeated"]
    torch.testing.assert_close(repeated, plain)


def _repeated(query, key, value, mask, scale):
    """The decoding step as transformers computes it before 5.24: keys and values repeated to the query heads."""
    groups = query.shape[1] // key.shape[1]
    key, value = (t.repeat_interleave(groups, dim=1) for t in (key, value))
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_a_decoding_step_reads_grouped_heads_without_repeating_them(kind, monkeypatch):
    """One query a row, 3 query heads per key/value head, rows left-padded to different lengths: the packed step gives
    the repeated step's output for every row and head, with a boolean or an additive mask (transformers before 5.24
    repeated the cache for every step: 40% of a 4K-context decoding step's GPU time)."""
    packed = varlen._decoding_step
    steps = []
    monkeypatch.setattr(varlen, "_decoding_step", lambda *args: steps.append(1) or packed(*args))
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, heads, n, 8, generator=g, dtype=torch.float64)
                         for heads, n in ((6, 1), (2, 11), (2, 11)))
    keep = torch.ones(3, 1, 1, 11, dtype=torch.bool)
    keep[0, ..., :4], keep[2, ..., :9] = False, False  # padding on the left
    mask = keep if kind == "bool" else torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    out, _ = varlen.varlen_attention(torch.nn.Module(), query, key, value, mask, scaling=0.3)
    assert out.shape == (3, 1, 6, 8)
    torch.testing.assert_close(out, _repeated(query, key, value, mask, 0.3), rtol=1e-12, atol=1e-12)
    moved = keep.clone()
    moved[0, ..., 4] = False  # one more padded position changes that row only: the mask is each row's own
    other, _ = varlen.varlen_attention(torch.nn.Module(), query, key, value, moved, scaling=0.3)
    assert not torch.allclose(other[0], out[0]) and torch.equal(other[1:], out[1:])
    assert len(steps) == 2  # both went the packed way


@pytest.mark.parametrize("case", ["per-head mask", "softcap", "prefill", "no groups"])
def test_steps_the_packed_decoding_cannot_take_go_to_transformers(case, monkeypatch):
    calls = []
    monkeypatch.setattr(varlen, "_decoding_step", lambda *args: calls.append(args))
    heads, length, kv = (3, 5, 3) if case == "no groups" else (6, 1, 2)
    mask = torch.ones(1, heads if case == "per-head mask" else 1, 5 if case == "prefill" else 1, 5, dtype=torch.bool)
    query = torch.randn(1, heads, 5 if case == "prefill" else 1, 4)
    key, value = torch.randn(1, kv, 5, 4), torch.randn(1, kv, 5, 4)
    kwargs = {"softcap": 30.0} if case == "softcap" else {}
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // kv, True
    try:
        varlen.varlen_attention(module, query, key, value, mask, **kwargs)
    except ValueError as err:  # transformers' SDPA refuses a softcap
        assert "softcap" in str(err)
    assert calls == []


def test_model_decode_kv_heads_picks_the_decoding_step_and_both_generate_alike(tiny_model, tokenizer, monkeypatch):
    """model.decode_kv_heads: grouped (the default) attends with the cache's 2 key/value heads, 2 queries each;
    repeated with the cache repeated to the 4 query heads, whatever transformers is installed (from 5.24 its own SDPA
    path groups the heads too). In float32 on the CPU the two give the same logits."""
    from solopo.data.tokenize import left_padded
    from solopo.models.loading import apply_options

    sdpa, calls = torch.nn.functional.scaled_dot_product_attention, []

    def spy(query, key, value, *args, **kwargs):
        if query.shape[2] < key.shape[2]:  # a decoding step (the prefill's queries are as many as its keys)
            calls.append((query.shape[1], query.shape[2], key.shape[1]))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    ids, mask = left_padded(tokenizer, ["Where is the castle? It is in", "Q: " + "word " * 20 + "Where?"], "cpu")
    logits = {}
    for choice, heads in (("repeated", (4, 1, 4)), ("grouped", (2, 2, 2))):
        calls.clear()
        apply_options(tiny_model, dataclasses.replace(settings()["TINY"], decode_kv_heads=choice))
        with torch.no_grad():
            out = tiny_model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=3,
                                      pad_token_id=tokenizer.pad_token_id, use_cache=True, output_logits=True,
                                      return_dict_in_generate=True)
        logits[choice] = torch.stack(out.logits)
        assert calls == [heads] * (2 * 2), choice  # 2 decoding steps x 2 layers: (query heads, queries, key heads)
    torch.testing.assert_close(logits["grouped"], logits["repeated"])


def test_a_bad_decode_kv_heads_is_refused_in_one_line():
    from solopo.settings.fields import SettingsError

    with pytest.raises(SettingsError, match=r"^decode_kv_heads=copied: choose one of grouped, repeated$"):
        dataclasses.replace(settings()["TINY"], decode_kv_heads="copied")


def test_generation_caches_tell_the_decoding_steps_apart():
    """Cached evaluation tables and sampled pairs of one decoding step are not reused by a run set to the other (they
    answer differently at near ties in bf16); the reference log-probs, which decode nothing, share their cache."""
    from solopo.training.models import generation_identity, model_identity

    repeated, grouped = (dataclasses.replace(settings()["TINY"], decode_kv_heads=c) for c in ("repeated", "grouped"))
    assert generation_identity(grouped, 0) != generation_identity(repeated, 0)
    # entries cached before the setting existed were decoded either way (transformers 5.24 grouped the heads itself)
    assert model_identity(repeated, 0) not in (generation_identity(repeated, 0), generation_identity(grouped, 0))
    assert model_identity(grouped, 0) == model_identity(repeated, 0)


def test_a_shared_prompt_row_whose_keys_were_dropped_is_refused():
    """A model whose forward drops the gathered keys' index would hand the kernel key bounds for keys it does not
    have; attention refuses that in one line instead of reading the wrong keys."""
    q = k = v = torch.randn(1, 2, 6, 4)
    bounds = dict(cu_seq_lens_q=torch.tensor([0, 4, 6]), cu_seq_lens_k=torch.tensor([0, 4, 8]), max_length_q=4,
                  max_length_k=4)
    with pytest.raises(ValueError, match="did not pass solopo_key_index on to attention"):
        varlen.varlen_attention(None, q, k, v, None, **bounds)
    out, _ = varlen.varlen_attention(None, q, k, v, None, **bounds, solopo_key_index=torch.tensor([0, 1, 2, 3, 0, 1, 4, 5]))
    assert out.shape == (1, 6, 2, 4)


def test_a_packed_row_whose_boundaries_were_dropped_is_refused():
    """Inside packed_forward() a row holds many sequences; a model whose forward drops cu_seq_lens_* on the way to
    attention (transformers' Falcon and StableLM) would attend across them, as one causal row, with no error. Outside
    it, the same call is a padded row's, causal."""
    q = k = v = torch.randn(1, 2, 6, 4)
    with varlen.packed_forward(), pytest.raises(ValueError, match="did not pass the sequence boundaries"):
        varlen.varlen_attention(None, q, k, v, varlen.unused_mask("cpu"))
    out, _ = varlen.varlen_attention(None, q, k, v, varlen.unused_mask("cpu"))
    assert out.shape == (1, 6, 2, 4)
