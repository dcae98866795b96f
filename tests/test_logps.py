"""Response-only chunked log-probs against the plain full-logits computation."""
import dataclasses

import pytest
import torch

from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.step.logps import group_logps, response_logps


def full_logits_logps(model, input_ids, attention_mask, response_mask):
    """The textbook computation: full-vocabulary logits everywhere, log-softmax, gather, mask, sum."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]  # fp32 or fp64 model: no cast
    token_logps = logits.log_softmax(-1).gather(2, input_ids[:, 1:].unsqueeze(2)).squeeze(2)
    mask = response_mask[:, 1:]
    return (token_logps * mask).sum(1), mask.sum(1)


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(5, 1000, (n,), generator=g).tolist()  # noqa: E731
    pairs = [TokenizedPair(f"p{i}", {"short": ids(7 + 5 * i)}, {"chosen": ids(3 + i), "rejected": ids(6 - i)})
             for i in range(3)]
    return PairCollator([("short", "chosen"), ("short", "rejected")], pad_token_id=2)(pairs).groups["short"], pairs


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_matches_full_logits_with_padding(tiny_model, chunk_size):
    batch, _ = make_batch()
    expected, expected_n = full_logits_logps(tiny_model, batch.input_ids, batch.attention_mask, batch.response_mask)
    logps, n_tokens = response_logps(tiny_model, batch, chunk_size=chunk_size)
    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-5)
    assert n_tokens.tolist() == expected_n.tolist() == [3, 4, 5, 6, 5, 4]


def test_gradients_match_full_logits(tiny_model):
    """In float64, so any difference beyond rounding would be a bug, not noise."""
    tiny_model.double()
    batch, _ = make_batch()
    args = (batch.input_ids, batch.attention_mask, batch.response_mask)
    weights = torch.linspace(-1, 1, 6)
    grads = []
    for fn in (lambda model: full_logits_logps(model, *args), lambda model: response_logps(model, batch, chunk_size=3)):
        tiny_model.zero_grad()
        (fn(tiny_model)[0] * weights).sum().backward()
        grads.append([p.grad.clone() for p in tiny_model.parameters()])
    for full, chunked in zip(*grads):
        torch.testing.assert_close(chunked, full, rtol=1e-9, atol=1e-12)


def test_padding_does_not_change_a_sequence(tiny_model):
    """A sequence alone and the same sequence beside longer ones give the same log-prob."""
    batch, pairs = make_batch()
    together, _ = response_logps(tiny_model, batch, chunk_size=1024)
    alone = PairCollator([("short", "chosen")], pad_token_id=2)([pairs[0]]).groups["short"]
    single, _ = response_logps(tiny_model, alone, chunk_size=1024)
    torch.testing.assert_close(single[0], together[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pack", [False, True, "shared_prompt"])
def test_prompt_tokens_do_not_count(tiny_model, pack):
    """Rows with prompts and no response token: no log-prob at all, in every layout."""
    _, pairs = make_batch()
    empty = [dataclasses.replace(p, responses={"chosen": [], "rejected": []}) for p in pairs]
    group = next(iter(PairCollator([("short", "chosen"), ("short", "rejected")], 2, pack=pack)(empty).groups.values()))
    logps, n_tokens = response_logps(tiny_model, group, chunk_size=1024)
    assert logps.abs().sum() == 0 and n_tokens.sum() == 0 and logps.shape == (6,)


@pytest.mark.parametrize("packed_attention, padded_attention", [
    ("sdpa", "sdpa"),  # transformers builds a block mask from the restarting positions
    ("solopo_varlen", "sdpa"),  # no mask: the collator's sequence boundaries (CPU: SDPA one sequence at a time)
    ("sdpa", "solopo_varlen"),  # right-padded rows need no mask under causal attention
])
def test_packed_rows_match_padded_rows(tiny_model, packed_attention, padded_attention):
    """All sequences of a batch in one row (positions restart, attention kept within each
    sequence) give the same log-probs and the same gradients as padded rows."""
    tiny_model.double()
    _, pairs = make_batch()
    keys = [("short", "chosen"), ("short", "rejected")]
    padded = PairCollator(keys, pad_token_id=2)(pairs).groups["short"]
    packed = PairCollator(keys, pad_token_id=2, pack=True)(pairs).groups["packed"]
    assert packed.input_ids.shape == (1, int(padded.attention_mask.sum()))  # not one pad token
    lengths = padded.attention_mask.sum(1)
    assert packed.cu_seq_lens.tolist() == [0, *torch.cumsum(lengths, 0).tolist()]
    assert packed.max_length == int(lengths.max())
    weights = torch.linspace(-1, 1, 6, dtype=torch.float64)
    results = []
    for group, attention in ((padded, padded_attention), (packed, packed_attention)):
        tiny_model.set_attn_implementation(attention)
        tiny_model.zero_grad()
        blocks = group_logps(tiny_model, group, chunk_size=1024)
        logps = torch.cat([blocks[k][0] for k in keys])
        (logps * weights).sum().backward()
        results.append((logps.detach(), torch.cat([blocks[k][1] for k in keys]), [p.grad.clone() for p in tiny_model.parameters()]))
    (lp_pad, n_pad, g_pad), (lp_pack, n_pack, g_pack) = results
    torch.testing.assert_close(lp_pack, lp_pad, rtol=1e-9, atol=1e-9)
    assert n_pack.tolist() == n_pad.tolist()
    for a, b in zip(g_pack, g_pad):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)



def two_context_pairs(seed=1):
    """Pairs with a short and a long prompt, and chosen/rejected responses of unequal lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(5, 1000, (n,), generator=g).tolist()  # noqa: E731
    return [TokenizedPair(f"p{i}", {"short": ids(5 + i), "long": ids(19 + 3 * i)},
                          {"chosen": ids(4 + i), "rejected": ids(7 - 2 * i)}) for i in range(2)]


ALL_KEYS = [("short", "chosen"), ("short", "rejected"), ("long", "chosen"), ("long", "rejected")]


def test_shared_prompt_row_holds_each_prompt_once():
    pairs = two_context_pairs()
    row = PairCollator(ALL_KEYS, pad_token_id=2, pack="shared_prompt")(pairs).groups["packed"]
    p = pairs[0]
    n_short = len(p.prompts["short"]) + len(p.responses["chosen"]) + len(p.responses["rejected"])
    # the first segment: pair 0's short prompt, its chosen, its rejected; positions continue from the prompt's end
    assert row.input_ids[0, :n_short].tolist() == p.prompts["short"] + p.responses["chosen"] + p.responses["rejected"]
    prompt, chosen = len(p.prompts["short"]), len(p.responses["chosen"])
    assert row.position_ids[0, prompt + chosen].item() == prompt  # the rejected response starts where chosen did
    assert row.branch_ids[0, :n_short].tolist() == [0] * prompt + [1] * chosen + [2] * len(p.responses["rejected"])
    assert row.predict_from[0, prompt + chosen].item() == prompt - 1  # from the prompt's last token, not chosen's
    total = sum(len(q.prompts[c]) + len(q.responses["chosen"]) + len(q.responses["rejected"]) for q in pairs
                for c in ("short", "long"))
    assert row.input_ids.shape == (1, total) and row.segment_ids.max().item() == 3
    with pytest.raises(ValueError, match="choose false, true, shared_prompt or auto"):
        PairCollator(ALL_KEYS, pad_token_id=2, pack="shared")


def test_shared_prompt_mask_reads_the_prompt_and_its_own_response_only():
    from solopo.step.shared_prompt import attention_mask

    segment = torch.tensor([[0, 0, 0, 0, 0, 1, 1]])
    branch = torch.tensor([[0, 0, 1, 2, 2, 0, 1]])
    mask = attention_mask("sdpa", segment, branch)[0, 0].int().tolist()
    assert mask[3] == [1, 1, 0, 1, 0, 0, 0]  # rejected's first token: the prompt and itself, not chosen
    assert mask[4] == [1, 1, 0, 1, 1, 0, 0]
    assert mask[6] == [0, 0, 0, 0, 0, 1, 1]  # the next segment sees nothing of the first
    with pytest.raises(ValueError, match="flex_attention or sdpa .and runs for solopo_varlen.; got eager"):
        attention_mask("eager", segment, branch)


@pytest.mark.parametrize("parts", [[(3, 2, 1), (2, 1, 2)], [(4, 1), (2, 3)], [(1, 1, 1, 1)], [(5, 2, 2), (1, 4)]])
def test_varlen_runs_read_what_the_mask_allows(parts):
    """solopo_varlen's form of the rule: query i of a run of n reads its run's keys up to i + m - n (causal attention
    aligned to the lower right, m keys); the pairs (query, key) it reads are the mask's, row position by row
    position, and no key is read twice by one query."""
    from solopo.step.shared_prompt import attention_mask, varlen_runs

    segment, branch = ids_of(parts)
    runs = varlen_runs(segment, branch)
    length = segment.shape[0]
    index = runs["key_index"] if runs["key_index"] is not None else torch.arange(length)
    q_bounds, k_bounds = runs["query_bounds"].tolist(), runs["key_bounds"].tolist()
    reads = torch.zeros(length, length, dtype=torch.int64)
    for (q0, q1), (k0, k1) in zip(zip(q_bounds, q_bounds[1:]), zip(k_bounds, k_bounds[1:])):
        n, m = q1 - q0, k1 - k0
        for i in range(n):
            for j in range(i + m - n + 1):
                reads[q0 + i, index[k0 + j]] += 1
    assert torch.equal(reads, attention_mask("sdpa", segment[None], branch[None])[0, 0].long())
    assert runs["max_query"] == max(b - a for a, b in zip(q_bounds, q_bounds[1:]))
    assert runs["max_key"] == max(b - a for a, b in zip(k_bounds, k_bounds[1:]))
    assert (runs["key_index"] is None) == all(len(p) <= 2 for p in parts)  # gathered only for a second response


def ids_of(segments):
    """(segment_ids, branch_ids) of a row from each segment's part lengths (prompt, response, ...)."""
    segment, branch = [], []
    for s, parts in enumerate(segments):
        for b, n in enumerate(parts):
            segment += [s] * n
            branch += [b] * n
    return torch.tensor(segment), torch.tensor(branch)


@pytest.mark.parametrize("block", [4, 8, 16])
def test_shared_prompt_block_classes_give_the_token_mask(block):
    """Full blocks read every key, empty ones none, partial ones token by token: that is the token-level rule, for
    blocks that straddle every kind of boundary (and a last block cut short)."""
    from solopo.step.shared_prompt import allowed, block_classes

    segment, branch = ids_of([(37, 5, 9), (100, 4, 4), (3, 2), (60, 17)])
    length = segment.shape[0]
    partial, full = block_classes(segment, branch, block)
    positions = torch.arange(length)
    exact = allowed(segment, branch, positions[:, None], positions[None, :])
    tokens = lambda blocks: blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)[:length, :length]  # noqa: E731
    assert torch.equal(tokens(full) | (tokens(partial) & exact), exact)
    assert not (partial & full).any()
    # the bounds are tight enough to skip work: the long prompt's blocks are full below the diagonal, and the
    # other segments' blocks, like the blocks above the diagonal, are empty
    assert full.any() and (~partial & ~full).sum() > (partial | full).sum()


def test_shared_prompt_block_mask_holds_its_blocks():
    from solopo.step.shared_prompt import block_classes, block_mask

    pytest.importorskip("torch.nn.attention.flex_attention")
    segment, branch = ids_of([(37, 5, 9), (100, 4, 4)])
    partial, full = block_classes(segment, branch, 16)
    mask = block_mask(segment, branch, 16)
    assert mask.seq_lengths == (segment.shape[0], segment.shape[0])
    assert torch.equal(mask.to_dense()[0, 0].bool(), partial | full)
    assert mask.kv_num_blocks[0, 0].tolist() == partial.sum(-1).tolist()
    assert mask.full_kv_num_blocks[0, 0].tolist() == full.sum(-1).tolist()


@pytest.mark.parametrize("attention", ["sdpa", "solopo_varlen"])
@pytest.mark.parametrize("keys", [ALL_KEYS, ALL_KEYS[:3]], ids=["both-responses", "chosen-only-long"])
def test_shared_prompt_rows_match_padded_rows(tiny_model, keys, attention):
    """Each prompt once, its responses after it: the log-probs and the gradients of unpacked padded rows, through
    SDPA's dense mask or solopo_varlen's runs (a prompt's keys gathered again for its second response: the gradient
    of the gather sums the two reads)."""
    tiny_model.double()
    pairs = two_context_pairs()
    weights = torch.linspace(-1, 1, len(keys) * len(pairs), dtype=torch.float64)
    results = []
    for pack in (False, "shared_prompt"):
        tiny_model.set_attn_implementation("sdpa" if pack is False else attention)
        tiny_model.zero_grad()
        blocks = {}
        for group in PairCollator(keys, pad_token_id=2, pack=pack)(pairs).groups.values():
            blocks.update(group_logps(tiny_model, group, chunk_size=3))
        logps = torch.cat([blocks[k][0] for k in keys])
        (logps * weights).sum().backward()
        results.append((logps.detach(), torch.cat([blocks[k][1] for k in keys]),
                        [p.grad.clone() for p in tiny_model.parameters()]))
    (lp_pad, n_pad, g_pad), (lp_shared, n_shared, g_shared) = results
    torch.testing.assert_close(lp_shared, lp_pad, rtol=1e-9, atol=1e-9)
    assert n_shared.tolist() == n_pad.tolist()
    # fp32 rounding, not fp64: the model's RMSNorm computes in fp32 whatever the weights' dtype, and a shared prompt's
    # gradient is summed over its responses inside attention, before the norm, where two copies sum at the embedding.
    for a, b in zip(g_shared, g_pad):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_shared_prompt_flex_mask_gives_the_same_logps(tiny_model):
    """The flex-attention form of the mask (forward only: flex attention has no backward on the CPU)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    pairs = two_context_pairs()
    row = PairCollator(ALL_KEYS, pad_token_id=2, pack="shared_prompt")(pairs).groups["packed"]
    out = {}
    with torch.no_grad():
        for attention in ("sdpa", "flex_attention"):
            tiny_model.set_attn_implementation(attention)
            try:
                out[attention] = group_logps(tiny_model, row, chunk_size=1024)
            except Exception as err:  # noqa: BLE001
                pytest.skip(f"flex attention does not run on this CPU: {type(err).__name__}: {err}"[:200])
    for key in ALL_KEYS:
        torch.testing.assert_close(out["flex_attention"][key][0], out["sdpa"][key][0], rtol=1e-4, atol=1e-4)
