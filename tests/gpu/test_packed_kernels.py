"""Packed rows through the attention kernels that run them varlen on a GPU (flex attention, flash-attention when
installed) give the log-probs and gradients of padded rows. CPU runs cannot check this: flex attention has no
backward on the CPU, and solopo_varlen runs torch's varlen flash kernel only on a GPU. Run with `pytest -m gpu` on a
CUDA machine."""
import warnings
from dataclasses import replace

import pytest
import torch

from solopo.step import varlen
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.step.logps import group_logps
from solopo.models.loading import load_model
from conftest import LOGP_CHUNK_SIZE, TINY

pytestmark = pytest.mark.gpu
KEYS = [("short", "chosen"), ("short", "rejected"), ("long", "chosen"), ("long", "rejected")]


def _pairs() -> list[TokenizedPair]:
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(100, 40000, (n,), generator=g).tolist()  # noqa: E731
    # Uneven lengths, none a multiple of flex attention's 128-token blocks: sequences share blocks in the packed row.
    return [TokenizedPair(f"p{i}", {"short": ids(150 + 37 * i), "long": ids(700 + 53 * i)},
                          {"chosen": ids(9 + 5 * i), "rejected": ids(23 - 4 * i)}) for i in range(3)]


def _logps_and_grads(model, batch):
    model.zero_grad()
    blocks = {}
    for group in batch.to("cuda").groups.values():
        blocks.update(group_logps(model, group, LOGP_CHUNK_SIZE))
    logps = torch.cat([blocks[k][0] for k in KEYS])
    (logps * torch.linspace(-1, 1, logps.numel(), device="cuda")).sum().backward()
    return logps.detach(), [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("attention", ["flex_attention", "flash_attention_2", "solopo_varlen", "sdpa"])
def test_packed_kernel_matches_padded_sdpa(tokenizer, attention):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if attention == "flash_attention_2":
        pytest.importorskip("flash_attn")
    if attention == "solopo_varlen" and varlen._torch_varlen() is None:
        pytest.skip("this torch has no torch.nn.attention.varlen")
    dtype = torch.bfloat16 if attention in ("flash_attention_2", "solopo_varlen") else torch.float32  # flash: 16-bit
    spec = replace(TINY, random_init={**TINY.random_init, "max_position_embeddings": 4096})
    padded_model = load_model(spec, tokenizer, seed=0).to("cuda", dtype)
    packed_model = load_model(replace(spec, attn_implementation=attention), tokenizer, seed=0).to("cuda", dtype)
    pairs = _pairs()
    lp_pad, g_pad = _logps_and_grads(padded_model, PairCollator(KEYS, tokenizer.pad_token_id)(pairs))
    lp_pack, g_pack = _logps_and_grads(packed_model, PairCollator(KEYS, tokenizer.pad_token_id, pack=True)(pairs))
    tol = dict(rtol=2e-2, atol=5e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(lp_pack.float(), lp_pad.float(), **tol)
    for a, b in zip(g_pack, g_pad):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol["rtol"] * 10, atol=tol["atol"])


def test_the_varlen_kernel_aligns_causal_attention_to_the_lower_right():
    """solopo_varlen runs shared prompts through torch's varlen kernel only where this holds (else through flex
    attention, with a warning): the GPU's torch must pass, or shared prompts lose the flash kernel."""
    if not torch.cuda.is_available() or varlen._torch_varlen() is None:
        pytest.skip("needs a CUDA GPU and torch.nn.attention.varlen")
    assert varlen.aligns_lower_right(torch.device("cuda"))


@pytest.mark.parametrize("attention", ["flex_attention", "sdpa", "solopo_varlen"])
def test_shared_prompt_rows_match_padded_sdpa(tokenizer, attention):
    """packing=shared_prompt (each prompt once, its responses after it): flex attention's block mask, SDPA's dense
    mask, or solopo_varlen's runs (the default, which packing=auto chooses shared prompts for; in fp32, as here, run by
    run through SDPA) give the log-probs and gradients of padded rows on the GPU, backward included."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    spec = replace(TINY, random_init={**TINY.random_init, "max_position_embeddings": 4096})
    padded_model = load_model(spec, tokenizer, seed=0).to("cuda", torch.float32)
    shared_model = load_model(replace(spec, attn_implementation=attention), tokenizer, seed=0).to("cuda", torch.float32)
    pairs = _pairs()
    lp_pad, g_pad = _logps_and_grads(padded_model, PairCollator(KEYS, tokenizer.pad_token_id)(pairs))
    lp_shared, g_shared = _logps_and_grads(shared_model,
                                           PairCollator(KEYS, tokenizer.pad_token_id, pack="shared_prompt")(pairs))
    torch.testing.assert_close(lp_shared, lp_pad, rtol=1e-4, atol=1e-3)
    for a, b in zip(g_shared, g_pad):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("pack", [True, "shared_prompt"])
def test_fp32_weights_under_bf16_autocast_take_the_fast_kernels(tokenizer, pack):
    """The default GPU run: fp32 weights under bf16-mixed, solopo_varlen. Queries and keys leave the rotary embedding
    in fp32, values their projection in bf16; the inputs reach the varlen kernel in bf16, packed rows and shared
    prompts' runs alike (no warning of the one-sequence-at-a-time path or of flex attention taking over), and match
    padded rows under the same autocast."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if varlen._torch_varlen() is None:
        pytest.skip("this torch has no torch.nn.attention.varlen")
    spec = replace(TINY, random_init={**TINY.random_init, "max_position_embeddings": 4096})
    padded_model = load_model(spec, tokenizer, seed=0).to("cuda", torch.float32)
    fast_model = load_model(replace(spec, attn_implementation="solopo_varlen"), tokenizer, seed=0).to("cuda", torch.float32)
    pairs = _pairs()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        lp_pad, g_pad = _logps_and_grads(padded_model, PairCollator(KEYS, tokenizer.pad_token_id)(pairs))
        with warnings.catch_warnings():
            # the slow path's warning fails the test (not the warnings flex attention's compilation raises itself)
            warnings.filterwarnings("error", message=".*attending one sequence at a time")
            warnings.filterwarnings("error", message=".*shared prompts go to flex attention")
            lp_fast, g_fast = _logps_and_grads(fast_model, PairCollator(KEYS, tokenizer.pad_token_id, pack=pack)(pairs))
    torch.testing.assert_close(lp_fast.float(), lp_pad.float(), rtol=2e-2, atol=5e-2)
    for a, b in zip(g_fast, g_pad):
        torch.testing.assert_close(a.float(), b.float(), rtol=0.2, atol=5e-2)


def test_the_grouped_decoding_step_matches_the_repeated_one_in_bf16(tokenizer):
    """model.decode_kv_heads on CUDA in bf16, where SDPA takes no grouped heads with a mask: the grouped step (the
    cache read as it is) gives the repeated step's logits for the first decoded token, within bf16 rounding (later
    steps would compare other prefixes wherever greedy decoding parted at a near tie)."""
    from solopo.data.tokenize import left_padded

    model = load_model(replace(TINY, dtype="bfloat16"), tokenizer, seed=0).cuda().eval()
    prompts = ["Where is the castle? It is in", "Q: " + "word " * 300 + "Where?", "A short one."]
    ids, mask = left_padded(tokenizer, prompts, "cuda")
    logits = {}
    for choice in ("repeated", "grouped"):
        varlen.set_decode_kv_heads(model, choice)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=2,
                                 pad_token_id=tokenizer.pad_token_id, use_cache=True, output_logits=True,
                                 return_dict_in_generate=True)
        logits[choice] = out.logits[1].float()  # [0] is the prefill's, the same path for both
    torch.testing.assert_close(logits["grouped"], logits["repeated"], rtol=2e-2, atol=2e-2)
