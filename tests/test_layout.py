"""packing=auto: the layout rules against the measured tables' cells, and every layout auto picks is exact."""
import logging

import pytest
import torch

from solopo.data.collate import AUTO, PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.step.batch import PackedGroup, PaddedGroup, SharedPromptGroup
from solopo.step.layout import PACKED, PADDED, SHARED_PROMPT, LayoutRules, choose_layout
from solopo.step.logps import group_logps

SOLOPO = {"short": 2, "long": 1}  # chosen-only: the short pair and the long chosen
BOTH = {"short": 2, "long": 2}
LONG_PO = {"long": 2}


def lengths(long: int, short: int = 1024) -> dict:
    """The bench's step (experiments/efficiency/bench.py make_pair): sequences of exactly these lengths."""
    return {"short": short, "long": long}


@pytest.mark.parametrize("needs, long, expected", [
    # solopo_grid_packing: SoLoPO packed beats padded at 4K (0.296 vs 0.467 s) and 8K (0.371 vs 0.470 s), ties at
    # 16K (0.799 vs 0.809 s) and loses at 32K (2.13 vs 1.77 s)
    (SOLOPO, 4096, PACKED), (SOLOPO, 8192, PACKED), (SOLOPO, 16384, PADDED), (SOLOPO, 32768, PADDED),
    (SOLOPO, 65536, PADDED),
    # solopo_grid_shared: one long context for both responses from 8K (Long-PO 0.353 vs 0.504 s at 8K, 6.72 vs 9.03 s
    # at 64K; both-responses 0.388 vs 0.709 s at 8K)
    (LONG_PO, 8192, SHARED_PROMPT), (LONG_PO, 65536, SHARED_PROMPT), (BOTH, 8192, SHARED_PROMPT),
    (BOTH, 32768, SHARED_PROMPT),
    # Long-PO at 4K: padded is the fastest layout measured (0.252 s; packed-varlen 0.281, packed-flex 0.303)
    (LONG_PO, 4096, PADDED),
    # both-responses at 4K: two contexts in one packed row (packed-flex 0.334 vs padded 0.419 s)
    (BOTH, 4096, PACKED),
])
def test_rules_give_the_fastest_measured_layout(needs, long, expected):
    longest = {c: n for c, n in lengths(long).items() if c in needs}
    assert choose_layout(needs, longest, "cuda", "solopo_varlen") == expected


def test_rules_choose_only_what_the_kernel_runs_and_pad_on_the_cpu():
    assert choose_layout(SOLOPO, lengths(4096), "cpu", "solopo_varlen") == PADDED
    assert choose_layout(LONG_PO, {"long": 65536}, "cpu", "flex_attention") == PADDED
    assert choose_layout(SOLOPO, lengths(4096), "cuda", "sdpa") == PADDED  # a packed row would need a dense mask
    assert choose_layout(LONG_PO, {"long": 65536}, "cuda", "flash_attention_2") == PADDED  # no shared-prompt mask
    assert choose_layout(SOLOPO, lengths(4096), "cuda", "flash_attention_2") == PACKED
    assert choose_layout(LONG_PO, {"long": 65536}, "cuda", "flex_attention") == SHARED_PROMPT
    assert choose_layout(SOLOPO, lengths(4096), "cuda", "some_new_kernel") == PADDED
    # the thresholds are the rules' parameters: just below and at each
    rules = LayoutRules(share_from=100, pack_below=200)
    assert choose_layout(LONG_PO, {"long": 99}, "cuda", "solopo_varlen", rules) == PADDED
    assert choose_layout(LONG_PO, {"long": 100}, "cuda", "solopo_varlen", rules) == SHARED_PROMPT
    assert choose_layout(SOLOPO, {"short": 50, "long": 199}, "cuda", "solopo_varlen", rules) == PACKED
    assert choose_layout(SOLOPO, {"short": 50, "long": 200}, "cuda", "solopo_varlen", rules) == PADDED


def pairs(long: int, seed: int = 0, short: int = 6):
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(5, 1000, (n,), generator=g).tolist()  # noqa: E731
    return [TokenizedPair(f"p{i}", {"short": ids(short + i), "long": ids(long + 3 * i)},
                          {"chosen": ids(4 + i), "rejected": ids(6 - 2 * i)}) for i in range(2)]


ALL_KEYS = [("short", "chosen"), ("short", "rejected"), ("long", "chosen"), ("long", "rejected")]
RULES = LayoutRules(share_from=30, pack_below=40)  # the tables' rules at the tests' lengths


@pytest.mark.parametrize("keys, short, long, group_type", [
    (ALL_KEYS[:3], 6, 10, PackedGroup),  # SoLoPO chosen-only, short: packed
    (ALL_KEYS[:3], 6, 40, PaddedGroup),  # longer: padded
    (ALL_KEYS[2:], 6, 30, SharedPromptGroup),  # Long-PO (and expand_long: the same sequences) from share_from
    (ALL_KEYS, 6, 30, SharedPromptGroup),  # both-responses
    (ALL_KEYS[2:], 6, 10, PaddedGroup),  # Long-PO, short: padded
    (ALL_KEYS[:2], 30, 6, SharedPromptGroup),  # short_po, whose short context reaches share_from
], ids=["solopo-packed", "solopo-padded", "long_po-shared", "both-shared", "long_po-padded", "short_po-shared"])
def test_every_layout_auto_picks_gives_the_padded_logps_and_gradients(tiny_model, keys, short, long, group_type):
    """Auto's choice for a GPU run with the default kernel (solopo_varlen), run here on the CPU through the same kernel:
    the log-probs, response lengths (SimPO's and ORPO's normalisers) and gradients of padded rows, in float64."""
    tiny_model.double()
    tiny_model.set_attn_implementation("solopo_varlen")
    batch_pairs = pairs(long, short=short)
    weights = torch.linspace(-1, 1, len(keys) * len(batch_pairs), dtype=torch.float64)
    results = []
    for collate in (PairCollator(keys, 2), PairCollator(keys, 2, AUTO, device="cuda", kernel="solopo_varlen", rules=RULES)):
        tiny_model.zero_grad()
        batch = collate(batch_pairs)
        assert all(type(g) is (group_type if collate.pack == AUTO else PaddedGroup) for g in batch.groups.values())
        blocks = {}
        for group in batch.groups.values():
            blocks.update(group_logps(tiny_model, group, chunk_size=3))
        logps = torch.cat([blocks[k][0] for k in keys])
        (logps * weights).sum().backward()
        results.append((logps.detach(), torch.cat([blocks[k][1] for k in keys]),
                        [p.grad.clone() for p in tiny_model.parameters()]))
    (lp_pad, n_pad, g_pad), (lp_auto, n_auto, g_auto) = results
    torch.testing.assert_close(lp_auto, lp_pad, rtol=1e-9, atol=1e-9)
    assert n_auto.tolist() == n_pad.tolist()
    for a, b in zip(g_auto, g_pad):  # fp32 rounding: the model's RMSNorm computes in fp32 (tests/test_logps.py)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_auto_chooses_per_batch_and_logs_each_change(caplog):
    collate = PairCollator(ALL_KEYS[2:], 2, AUTO, device="cuda", kernel="solopo_varlen", rules=RULES)
    with caplog.at_level(logging.INFO, logger="solopo"):
        layouts = [type(next(iter(collate(pairs(n)).groups.values()))).__name__ for n in (10, 11, 30, 31, 10)]
    assert layouts == ["PaddedGroup", "PaddedGroup", "SharedPromptGroup", "SharedPromptGroup", "PaddedGroup"]
    lines = [r.getMessage() for r in caplog.records if "packing=auto" in r.getMessage()]
    assert len(lines) == 3  # the first choice, and the two changes
    # the longest long sequence of the third batch: pair 1's prompt (30 + 3 tokens) and its 5-token chosen response
    assert lines[1] == "packing=auto: shared_prompt rows (longest sequence per context: long 38 tokens)"


def test_the_shipped_defaults_are_auto():
    """What a run gets without flags: packing=auto, model.gradient_checkpointing=auto, and the kernel that runs every
    layout auto may choose."""
    from conftest import shipped

    from solopo.step.layout import KERNEL_LAYOUTS

    model = shipped("model")
    assert shipped("packing") == AUTO and model["gradient_checkpointing"] == "auto"
    assert set(KERNEL_LAYOUTS[model["attn_implementation"]]) == {PADDED, PACKED, SHARED_PROMPT}
