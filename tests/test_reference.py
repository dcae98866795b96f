"""Reference log-probs computed once and cached: exact against the live reference, safe on disk."""
import json
import math

import pytest
import torch

from solopo.cache import DiskCache
from solopo.core.algos import DPO
from solopo.core.losses import dpo_loss, dpo_reward
from solopo.data.collate import PairCollator
from solopo.data.pairs import build_examples
from solopo.data.tokenize import tokenize_examples
from solopo.data.world import qa_items
from solopo.models.loading import freeze, load_model
from solopo.step.context_parallel import ContextSplit
from solopo.training.module import ALL_SEQUENCES, SoLoPOModule
from solopo.training.reference import attach, compute_reference_logps, covering, fingerprint, with_reference_logps

from conftest import LOGP_CHUNK_SIZE, OPTIM, RA, SOLOPO, TINY


@pytest.fixture(scope="module")
def pairs(tokenizer):
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = qa_items(5, 0, seed=1)
    return tokenize_examples(build_examples(splits.train, 160, count, pool=splits.distractors), tokenizer, 1024)[0]


def test_cached_equals_live_reference(tokenizer, pairs):
    """Same numbers whether the reference runs live each step or was computed before training,
    in batches of another size (padding differs)."""
    policy = load_model(TINY, tokenizer)
    table = compute_reference_logps(policy, pairs, ALL_SEQUENCES, tokenizer.pad_token_id, LOGP_CHUNK_SIZE, batch_size=3)
    live = SoLoPOModule(policy, DPO(beta=0.1), RA, SOLOPO, reference=freeze(load_model(TINY, tokenizer)),
                        optim=OPTIM, logp_chunk_size=LOGP_CHUNK_SIZE)
    cached = SoLoPOModule(policy, DPO(beta=0.1), RA, SOLOPO, cached_reference=True, optim=OPTIM,
                          logp_chunk_size=LOGP_CHUNK_SIZE)
    collate = PairCollator(ALL_SEQUENCES, tokenizer.pad_token_id)
    live_stats = live.sequence_stats(collate(pairs))
    cached_batch = collate(attach(pairs, table))
    assert cached_batch.groups["long"].ref_logps is not None
    cached_stats = cached.sequence_stats(cached_batch)
    for key in ALL_SEQUENCES:
        torch.testing.assert_close(cached_stats[key].ref_logps.double(), live_stats[key].ref_logps.double(),
                                   rtol=1e-5, atol=1e-5)


def test_precompute_leaves_the_policy_untouched(tokenizer, pairs):
    policy = load_model(TINY, tokenizer).train()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    compute_reference_logps(policy, pairs, ALL_SEQUENCES, tokenizer.pad_token_id, LOGP_CHUNK_SIZE)
    assert policy.training and all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())
    assert all(p.grad is None for p in policy.parameters())


def test_the_reference_pass_logs_its_progress_off_a_terminal(tokenizer, pairs, monkeypatch, caplog):
    """A run's log file showed nothing while the reference log-probs were computed (a terminal bar only)."""
    import io
    import logging
    import sys

    from solopo import progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no terminal, no bar
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        compute_reference_logps(load_model(TINY, tokenizer), pairs, ALL_SEQUENCES, tokenizer.pad_token_id,
                                LOGP_CHUNK_SIZE, batch_size=2)
    lines = [r.getMessage() for r in caplog.records if r.name == progress.__name__]
    batches = math.ceil(len(pairs) / 2)
    assert lines[-1].startswith(f"reference log-probs: batch {batches}/{batches}, {len(pairs)}/{len(pairs)} pairs, ")


def test_cache_round_trip_and_fingerprint(tmp_path, pairs):
    table = {p.id: {f"{c}/{r}": -1.5 for c, r in ALL_SEQUENCES} for p in pairs}
    cache = DiskCache(tmp_path, "reference")
    cache.put("k", table, {"model": "m"})
    assert cache.get("k", covering(pairs, ALL_SEQUENCES)) == table
    base = fingerprint("m", pairs, ALL_SEQUENCES, "32-true")
    assert base == fingerprint("m", pairs, ALL_SEQUENCES, "32-true")
    assert base != fingerprint("other", pairs, ALL_SEQUENCES, "32-true")
    assert base != fingerprint("m", pairs, ALL_SEQUENCES, "bf16-mixed")
    assert base != fingerprint("m", pairs[1:], ALL_SEQUENCES, "32-true")
    # context parallelism: a run without it keeps its key; a split table (other roundings) has its own
    split = [fingerprint("m", pairs, ALL_SEQUENCES, "32-true", context=ContextSplit(size=n, min_tokens=t))
             for n, t in ((1, None), (2, None), (4, None), (2, 100))]
    assert split[0] == base and len({base, *split[1:]}) == 4


@pytest.mark.parametrize("damage", ["truncate", "missing_pair", "nan"])
def test_a_damaged_cache_is_reported_and_not_used(tmp_path, pairs, damage, caplog):
    """Cut short, not covering every pair, or holding a NaN (with a matching digest: the check of the table itself)."""
    table = {p.id: {f"{c}/{r}": -1.5 for c, r in ALL_SEQUENCES} for p in pairs}
    cache = DiskCache(tmp_path, "reference")
    cache.put("k", table)
    if damage == "truncate":
        cache.path("k").write_text(cache.path("k").read_text()[:50])
    elif damage == "missing_pair":
        del table[pairs[0].id]
        cache.put("k", table)
    else:
        cache.put("k", {**table, pairs[0].id: {k: float("nan") for k in table[pairs[0].id]}})
    assert cache.get("k", covering(pairs, ALL_SEQUENCES)) is None
    assert "unusable" in caplog.text


def test_edited_reference_logps_are_recomputed_and_the_first_dpo_loss_is_log_2(tokenizer, pairs, tmp_path, caplog):
    """Before any update the policy is the reference, so every DPO margin is 0 and the loss log 2. A cache entry whose
    numbers were edited (every short chosen log-prob lowered by 5: used as they are, the loss would be
    -log sigmoid(0.1 * 5) = 0.474) fails its digest, is named in one warning and recomputed."""
    policy = load_model(TINY, tokenizer)
    cache = DiskCache(tmp_path, "reference")
    keys = ALL_SEQUENCES[:2]  # the short pair: (short, chosen), (short, rejected)
    args = (policy, pairs, keys, "tiny", "32-true", tokenizer.pad_token_id, cache)
    with_reference_logps(*args, chunk_size=1024)
    (path,) = tmp_path.glob("*.json")
    entry = json.loads(path.read_text())
    for logps in entry["payload"].values():
        logps["short/chosen"] -= 5.0
    path.write_text(json.dumps(entry))
    cached = with_reference_logps(*args, chunk_size=1024)
    assert "reference cache" in caplog.text and str(path) in caplog.text and "does not match its digest" in caplog.text
    policy_logps = compute_reference_logps(policy, pairs, keys, tokenizer.pad_token_id, chunk_size=1024)
    as_tensor = lambda key, table: torch.tensor([t[key] for t in table], dtype=torch.float64)  # noqa: E731
    ref = [p.ref_logps for p in cached]
    now = [policy_logps[p.id] for p in pairs]
    chosen = dpo_reward(as_tensor("short/chosen", now), as_tensor("short/chosen", ref), beta=0.1)
    rejected = dpo_reward(as_tensor("short/rejected", now), as_tensor("short/rejected", ref), beta=0.1)
    torch.testing.assert_close(dpo_loss(chosen, rejected), torch.full((len(pairs),), math.log(2), dtype=torch.float64))
