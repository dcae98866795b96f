"""Plain PO done plainly: data whose long prompt is its short one (a TRL file) runs two sequences per pair, not three,
reports SoLo-RA as not applicable (absent, never 0), and its PO loss is the one a run of the third sequence computes."""
from pathlib import Path

from dataclasses import replace

import pytest
import torch

from solopo.core.algos import DPO, Responses, SimPO
from solopo.core.objective import required_sequences, solopo_objective
from solopo.data.collate import PairCollator, plain_po
from solopo.data.formats import pairs as pairs_format
from solopo.data.tokenize import TokenizedPair, tokenize_examples
from solopo.models.loading import load_model
from solopo.training.module import SoLoPOModule

from conftest import LOGP_CHUNK_SIZE, OPTIM, RA, SOLOPO, TINY

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LONG_PO = replace(SOLOPO, name="long_po", po_context="long", pairs_from="long", use_ra=False)


def test_plain_po_runs_only_the_po_loss_sequences():
    assert required_sequences(SOLOPO, RA, plain_po=True) == [("short", "chosen"), ("short", "rejected")]
    both = replace(RA, responses=("chosen", "rejected"))
    assert required_sequences(SOLOPO, both, plain_po=True) == [("short", "chosen"), ("short", "rejected")]
    assert required_sequences(LONG_PO, replace(RA, alpha=0.0), plain_po=True) == [("long", "chosen"), ("long", "rejected")]
    assert len(required_sequences(SOLOPO, RA)) == 3  # data with long contexts: the third is run


def test_plain_po_is_every_pair_with_one_prompt():
    def pair(short, long):
        return TokenizedPair("p", {"short": short, "long": long}, {"chosen": [7, 0], "rejected": [8, 0]})

    assert plain_po([pair([1, 2], [1, 2]), pair([3], [3])])
    assert not plain_po([pair([1, 2], [1, 2]), pair([3], [3, 4])])  # one pair with a long context: all run three


def stat(logp, n_tokens):
    return Responses(torch.tensor([logp], dtype=torch.float64), torch.tensor([n_tokens], dtype=torch.float64))


def test_plain_po_objective_is_the_po_loss_and_reports_no_ra():
    """SimPO, beta=2, gamma=1: r = 2 * logp / n; chosen -4 over 2 tokens (r = -4), rejected -6 over 3 (r = -4):
    margin 0, loss = -log sigmoid(0 - 1) = log(1 + e) = 1.3133. The long-context run of the same sequences adds
    alpha * |r_short - r_long| = 0 and reports ra_loss = ra/gap = 0; the plain run reports neither."""
    short = {("short", "chosen"): stat(-4.0, 2), ("short", "rejected"): stat(-6.0, 3)}
    algo, ra = SimPO(beta=2.0, gamma=1.0), replace(RA, alpha=3.0, distance="abs")
    plain = solopo_objective(algo, ra, SOLOPO, short, plain_po=True)
    three = solopo_objective(algo, ra, SOLOPO, {**short, ("long", "chosen"): short[("short", "chosen")]})
    assert plain.loss.item() == pytest.approx(1.3133, abs=1e-4) == three.loss.item()
    assert plain.metrics["po_loss"] == three.metrics["po_loss"]
    assert three.metrics["ra_loss"] == 0 and three.metrics["ra/gap"] == 0
    assert not {"ra_loss", "ra/gap", "ra/gap_rejected", "rewards/chosen_long"} & plain.metrics.keys()


def test_plain_po_module_step_equals_the_three_sequence_step(tokenizer):
    """On a real model: the PO loss of a plain batch run as two sequences equals the one run as three."""
    examples = pairs_format.load(str(FIXTURES / "pairs_plain.jsonl")).train
    tokenized = tokenize_examples(examples, tokenizer, max_length=1024)[0]
    assert plain_po(tokenized)
    module = SoLoPOModule(load_model(TINY, tokenizer), DPO(beta=0.1), RA, SOLOPO, reference=load_model(TINY, tokenizer),
                          optim=OPTIM, logp_chunk_size=LOGP_CHUNK_SIZE, plain_po=True)
    full = SoLoPOModule(module.policy, DPO(beta=0.1), RA, SOLOPO, reference=module.reference,
                        optim=OPTIM, logp_chunk_size=LOGP_CHUNK_SIZE)
    collate = [PairCollator(required_sequences(SOLOPO, RA, plain_po=plain), tokenizer.pad_token_id)
               for plain in (True, False)]
    two, three = (collator(tokenized) for collator in collate)
    long_chosen = sum(len(p.prompts["long"]) + len(p.responses["chosen"]) for p in tokenized)
    assert list(two.groups) == ["short"] and three.n_tokens - two.n_tokens == long_chosen  # the third is not run
    with torch.no_grad():
        plain_out, full_out = module.objective(two), full.objective(three)
    assert plain_out.metrics["po_loss"].item() == pytest.approx(full_out.metrics["po_loss"].item(), rel=1e-6)
    assert plain_out.loss.item() == pytest.approx(full_out.loss.item() - full_out.metrics["ra_loss"].item(), rel=1e-6)
    assert "ra_loss" not in plain_out.metrics


def test_a_plain_po_file_trains_with_two_sequences_per_pair(tokenizer, tmp_path):
    """The run's token count is that of two sequences per pair: the 2 training pairs of the 3-record file (one is
    validation), one epoch of one pair per step."""
    from in_process import run_here
    from test_run import results

    path = FIXTURES / "pairs_plain.jsonl"
    run_here(["algo=dpo", "experiment=smoke", "data=pairs", f"data.path={path}", "data.source.n_val=1",
              "trainer.max_epochs=1", "logger=none", f"hydra.run.dir={tmp_path}"])  # one epoch, under smoke's 4 steps
    data = results(tmp_path)
    train = tokenize_examples(pairs_format.load(str(path), n_val=1, seed=0).train, tokenizer, max_length=8192)[0]
    two_sequences = sum(2 * len(p.prompts["short"]) + len(p.responses["chosen"]) + len(p.responses["rejected"])
                        for p in train)
    assert data["steps"] == len(train) == 2
    assert data["timings"]["train_tokens"] == two_sequences
    assert data["sequences"] == {"train": ["short/chosen", "short/rejected"], "val": ["short/chosen", "short/rejected"],
                                 "plain_po": True}
    assert "train/ra_loss" not in data["metrics"] and "val/ra/gap" not in data["metrics"]
    assert data["metrics"]["train/loss"] == pytest.approx(data["metrics"]["train/po_loss"])
