"""Reference log-probs computed once and cached: exact against the live reference, safe on disk."""
import json

import pytest
import torch

from solopo.core.algos import DPO
from solopo.data.collate import PairCollator
from solopo.data.pairs import build_examples
from solopo.data.tokenize import tokenize_examples
from solopo.data.world import qa_items
from solopo.models.loading import freeze, load_model
from solopo.training.module import ALL_SEQUENCES, SoLoPOModule
from solopo.core.objective import Method, SoLoRA
from solopo.training.reference import attach, compute_reference_logps, fingerprint, load_cache, save_cache

from conftest import LOGP_CHUNK_SIZE, TINY


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
    live = SoLoPOModule(policy, DPO(), SoLoRA(), Method(), reference=freeze(load_model(TINY, tokenizer)),
                        logp_chunk_size=LOGP_CHUNK_SIZE)
    cached = SoLoPOModule(policy, DPO(), SoLoRA(), Method(), cached_reference=True, logp_chunk_size=LOGP_CHUNK_SIZE)
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


def test_cache_round_trip_and_fingerprint(tmp_path, pairs):
    table = {p.id: {f"{c}/{r}": -1.5 for c, r in ALL_SEQUENCES} for p in pairs}
    path = tmp_path / "ref.json"
    save_cache(path, table, {"model": "m"})
    assert load_cache(path, pairs, ALL_SEQUENCES) == table
    base = fingerprint("m", pairs, ALL_SEQUENCES, "32-true")
    assert base == fingerprint("m", pairs, ALL_SEQUENCES, "32-true")
    assert base != fingerprint("other", pairs, ALL_SEQUENCES, "32-true")
    assert base != fingerprint("m", pairs, ALL_SEQUENCES, "bf16-mixed")
    assert base != fingerprint("m", pairs[1:], ALL_SEQUENCES, "32-true")


@pytest.mark.parametrize("damage", ["truncate", "missing_pair", "nan"])
def test_a_damaged_cache_is_reported_and_not_used(tmp_path, pairs, damage, caplog):
    table = {p.id: {f"{c}/{r}": -1.5 for c, r in ALL_SEQUENCES} for p in pairs}
    path = tmp_path / "ref.json"
    save_cache(path, table, {})
    if damage == "truncate":
        path.write_text(path.read_text()[:50])
    elif damage == "missing_pair":
        del table[pairs[0].id]
        save_cache(path, table, {})
    else:
        path.write_text(json.dumps({"ref_logps": {**table, pairs[0].id: {k: float("nan") for k in table[pairs[0].id]}}}))
    assert load_cache(path, pairs, ALL_SEQUENCES) is None
    assert "unusable" in caplog.text
