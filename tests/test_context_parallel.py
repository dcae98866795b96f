"""Context parallelism's pure parts (solopo.step.context_parallel): the zigzag split and its inverse, the global
positions, the balance of causal work, which hidden states of a share predict which response tokens, which groups
are split, the settings' checks, and the split attention's arithmetic against whole causal attention. The split
computation itself runs over processes in tests/distributed/test_context_split.py."""
import pytest
import torch

from solopo.core.objective import CHOSEN, LONG, SHORT
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.settings.fields import SettingsError
from solopo.step.context_parallel import (ContextSplit, Share, SplitGroup, chunk_attention, chunks_of, local_positions,
                                          padded_length, split, unsplit)


def test_a_length_pads_to_2n_equal_chunks():
    # 2N = 4: 10 -> 12, 12 stays; 2N = 8: 825 -> 832
    assert [padded_length(10, 2), padded_length(12, 2), padded_length(825, 4)] == [12, 12, 832]


def test_rank_r_holds_chunks_r_and_2n_minus_1_minus_r():
    assert [chunks_of(r, 4) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]


def test_positions_of_each_share():
    """Length 10 over 2 ranks pads to 12, chunks of 3: rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2."""
    assert local_positions(10, 0, 2).tolist() == [0, 1, 2, 9, 10, 11]
    assert local_positions(10, 1, 2).tolist() == [3, 4, 5, 6, 7, 8]


def test_split_pads_at_the_end_and_unsplit_puts_the_shares_back_in_order():
    x = torch.arange(10).view(1, 10)
    shares = [split(x, rank, 2, pad=-1) for rank in range(2)]
    assert shares[0].tolist() == [[0, 1, 2, 9, -1, -1]] and shares[1].tolist() == [[3, 4, 5, 6, 7, 8]]
    assert unsplit(shares, dim=1).tolist() == [list(range(10)) + [-1, -1]]
    y = torch.randn(2, 3, 16, 5)  # (B, H, L, D), along dim 2 over 4 ranks
    assert torch.equal(unsplit([split(y, r, 4, dim=2) for r in range(4)], dim=2), y)


@pytest.mark.parametrize("size", [2, 4, 8])
def test_zigzag_gives_every_rank_the_same_causal_work(size):
    """A query at position p reads p + 1 keys; over 2N chunks of C, rank r's work is the sum over its positions:
    (rC + C(C+1)/2) + ((2N-1-r)C + C(C+1)/2) per chunk pair, the same for every r."""
    length = 2 * size * 6
    work = [int((local_positions(length, rank, size) + 1).sum()) for rank in range(size)]
    assert len(set(work)) == 1 and sum(work) == length * (length + 1) // 2


def group(prompt: int, response: int):
    pair = TokenizedPair("p", {SHORT: list(range(1, 4)), LONG: list(range(1, prompt + 1))},
                         {CHOSEN: list(range(prompt + 1, prompt + response + 1))})
    return PairCollator([(LONG, CHOSEN)], pad_token_id=0)([pair]).groups[LONG]


def test_each_share_predicts_the_response_tokens_it_holds():
    """Tokens 1..10 (L = 10), the response 4..10 at positions 3..9, predicted from positions 2..8. Over 2 ranks (12
    positions, chunks of 3) rank 0 holds positions 0, 1, 2, 9, 10, 11: it predicts token 4 from position 2 (position
    9 is the last: no label); rank 1 holds 3..8 and predicts tokens 5..10. A hidden state here is its position."""
    whole = group(prompt=3, response=7)
    for rank, (positions, targets) in enumerate([([2], [4]), ([3, 4, 5, 6, 7, 8], [5, 6, 7, 8, 9, 10])]):
        share = SplitGroup(whole, Share(None, rank, 2))
        hidden = local_positions(10, rank, 2).float().view(1, -1, 1)
        states, tokens, rows = share.response_predictions(hidden)
        assert states.view(-1).tolist() == positions and tokens.tolist() == targets and rows.tolist() == [0] * len(targets)
        inputs = share.model_inputs("solopo_context")
        assert inputs["position_ids"].tolist() == [local_positions(10, rank, 2).tolist()]
        assert inputs["input_ids"].tolist() == [[[1, 2, 3, 10, 0, 0]], [[4, 5, 6, 7, 8, 9]]][rank]


def test_a_split_group_needs_the_context_attention():
    share = SplitGroup(group(prompt=3, response=7), Share(None, 0, 2))
    with pytest.raises(ValueError, match="needs model.attn_implementation=solopo_context, got sdpa"):
        share.model_inputs("sdpa")


def test_by_default_only_the_long_context_is_split():
    long_rows, short_rows = group(prompt=30, response=5), group(prompt=3, response=2)
    default, from_8 = ContextSplit(size=2, min_tokens=None), ContextSplit(size=2, min_tokens=8)
    assert default.splits(LONG, long_rows) and not default.splits(SHORT, long_rows)
    assert from_8.splits(SHORT, long_rows) and not from_8.splits(LONG, short_rows)  # by length alone
    assert not ContextSplit(size=1, min_tokens=None).splits(LONG, long_rows)
    share = Share(None, 1, 2)
    assert isinstance(default.share_of(LONG, long_rows, share), SplitGroup)
    assert default.share_of(SHORT, short_rows, share) is short_rows and default.share_of(LONG, long_rows, None) is long_rows


def test_packed_rows_are_never_split():
    pair = TokenizedPair("p", {SHORT: [1, 2], LONG: [1, 2, 3, 4]}, {CHOSEN: [5, 6]})
    packed = PairCollator([(LONG, CHOSEN)], pad_token_id=0, pack=True)([pair]).groups["packed"]
    assert not ContextSplit(size=2, min_tokens=1).splits("packed", packed)


@pytest.mark.parametrize("fields, message", [
    (dict(size=0, min_tokens=None), "context_parallel=0: must be an integer >= 1"),
    (dict(size=2, min_tokens=0), "context_parallel_min_tokens=0: must be an integer >= 1 or null"),
])
def test_context_split_refuses_bad_values(fields, message):
    with pytest.raises(SettingsError) as refused:
        ContextSplit(**fields)
    assert refused.value.problems == [message]


def split_attention_against_whole(device: str, dtype: torch.dtype, size: int) -> tuple[float, float]:
    """Each rank's queries over the whole keys (what the gather gives it), put back in order, against causal attention
    of the whole sequence: the largest difference of the outputs and of the query gradients."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16 * size, 8, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    whole = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    chunk = q.shape[2] // (2 * size)
    shares = [torch.cat([chunk_attention(part, k, v, (c + 1) * chunk, None)
                         for part, c in zip(split(q, rank, size, dim=2).split(chunk, dim=2), chunks_of(rank, size))], 2)
              for rank in range(size)]
    parts = unsplit(shares, dim=2)
    weights = torch.randn(whole.shape, generator=g).to(device, dtype)
    (grad_whole,) = torch.autograd.grad((whole * weights).sum(), q)
    (grad_parts,) = torch.autograd.grad((parts * weights).sum(), q)
    return (parts - whole).abs().max().item(), (grad_parts - grad_whole).abs().max().item()


@pytest.mark.parametrize("size", [2, 4])
def test_split_attention_is_causal_attention_of_the_whole_sequence(size):
    assert max(split_attention_against_whole("cpu", torch.float64, size)) < 1e-12
