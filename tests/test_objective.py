"""The objective assembled from algorithm, SoLo-RA and method, on hand-made per-sequence stats."""
import math
from dataclasses import replace

import pytest
import torch

from solopo.core.algos import DPO, IPO, ORPO, SimPO, Responses
from solopo.core.objective import Method, SoLoRA, required_sequences, solopo_objective

SOLOPO = Method(name="solopo", po_context="short", pairs_from="short", use_ra=True)
SHORT_PO = Method(name="short_po", po_context="short", pairs_from="short", use_ra=False)
LONG_PO = Method(name="long_po", po_context="long", pairs_from="long", use_ra=False)
RA = SoLoRA(alpha=1.0, responses=("chosen",), distance="abs", detach_short=False)  # the paper's form
RA_OFF = replace(RA, alpha=0.0)  # what the baselines' configs select (ra=off): the one switch of the term


def responses(logps, n_tokens, ref=None, grad=False):
    logps = torch.tensor(logps, dtype=torch.float64, requires_grad=grad)
    ref = None if ref is None else torch.tensor(ref, dtype=torch.float64)
    return Responses(logps, torch.tensor(n_tokens, dtype=torch.float64), ref)


def stats(grad=False):
    return {
        ("short", "chosen"): responses([-4.0], [2], [-5.0], grad),
        ("short", "rejected"): responses([-6.0], [3], [-6.0], grad),
        ("long", "chosen"): responses([-8.0], [2], [-7.0], grad),
        ("long", "rejected"): responses([-9.0], [3], [-8.0], grad),
    }


def test_required_sequences():
    assert required_sequences(SOLOPO, RA) == [("short", "chosen"), ("short", "rejected"), ("long", "chosen")]
    assert required_sequences(SOLOPO, replace(RA, responses=("chosen", "rejected"))) == [
        ("short", "chosen"), ("short", "rejected"), ("long", "chosen"), ("long", "rejected")]
    assert required_sequences(SOLOPO, RA_OFF) == [("short", "chosen"), ("short", "rejected")]
    assert required_sequences(SHORT_PO, RA_OFF) == [("short", "chosen"), ("short", "rejected")]
    assert required_sequences(LONG_PO, RA_OFF) == [("long", "chosen"), ("long", "rejected")]


def test_simpo_solopo_by_hand():
    """SimPO beta 2, gamma 1. Short: r_w = 2 * -4/2 = -4, r_l = 2 * -6/3 = -4 -> po = -log sigmoid(-1) = log(1 + e).
    Long chosen: r = 2 * -8/2 = -8 -> gap 4; alpha 0.5 -> loss = log(1 + e) + 2."""
    out = solopo_objective(SimPO(beta=2.0, gamma=1.0), replace(RA, alpha=0.5), SOLOPO, stats())
    assert out.metrics["po_loss"].item() == pytest.approx(math.log(1 + math.e))
    assert out.metrics["ra_loss"].item() == pytest.approx(4.0)
    assert out.loss.item() == pytest.approx(math.log(1 + math.e) + 2.0)
    assert out.metrics["ra/gap"].item() == pytest.approx(4.0)
    assert out.metrics["ra/chosen_long"].item() == pytest.approx(-8.0)
    # the chosen response's reward on each side and their signed gap, which the decisive study plots per step
    assert out.metrics["ra/chosen_short"].item() == pytest.approx(-4.0)
    assert out.metrics["ra/gap_signed"].item() == pytest.approx(4.0)  # -4 - (-8): the short side is the higher
    assert out.metrics["rewards/accuracies"].item() == 0.0  # -4 > -4 is false


def test_dpo_both_responses_by_hand():
    """DPO beta 0.1. Short r_w = 0.1, r_l = 0 -> po = log(1 + e^-0.1). Long r_w = -0.1, r_l = -0.1:
    gaps 0.2 (chosen) and 0.1 (rejected); alpha 3 -> loss = po + 3 * 0.3."""
    out = solopo_objective(DPO(beta=0.1), replace(RA, alpha=3.0, responses=("chosen", "rejected")), SOLOPO, stats())
    po = math.log(1 + math.exp(-0.1))
    assert out.metrics["po_loss"].item() == pytest.approx(po)
    assert out.metrics["ra_loss"].item() == pytest.approx(0.3)
    assert out.loss.item() == pytest.approx(po + 0.9)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.1)
    assert out.metrics["ra/gap_rejected"].item() == pytest.approx(0.1)


def test_trl_named_metrics_by_hand():
    """DPO on short: logps/chosen = -4 and logps/rejected = -6 (summed, the policy's); r_w = 0.1, r_l = 0 ->
    rewards/margins 0.1, rewards/accuracies 1. DPO has no separate loss terms, and nothing is logged under old names."""
    metrics = solopo_objective(DPO(beta=0.1), RA, SOLOPO, stats()).metrics
    assert metrics["logps/chosen"].item() == -4.0 and metrics["logps/rejected"].item() == -6.0
    assert metrics["rewards/margins"].item() == pytest.approx(0.1)
    assert metrics["rewards/accuracies"].item() == 1.0
    old_names = {"rewards/margin", "rewards/accuracy", "rewards/chosen_long"}
    assert not ({"nll_loss", "log_odds_ratio"} | old_names) & set(metrics)


def test_orpo_loss_terms_by_hand():
    """ORPO lam 0.1 on short: mean token log-probs -4/2 = -2 (chosen) and -6/3 = -2 (rejected), so nll_loss = 2 and
    equal log-odds: log_odds_ratio = log sigmoid(0) = -log 2; po_loss = nll_loss - lam * log_odds_ratio."""
    metrics = solopo_objective(ORPO(lam=0.1), RA_OFF, SHORT_PO, stats()).metrics
    assert metrics["nll_loss"].item() == pytest.approx(2.0)
    assert metrics["log_odds_ratio"].item() == pytest.approx(-math.log(2))
    assert metrics["po_loss"].item() == pytest.approx(2.0 + 0.1 * math.log(2))


def test_long_po_uses_the_long_context_and_no_ra():
    """DPO on long with ra=off (the baselines' choice): r_w = -0.1, r_l = -0.1 -> loss log 2."""
    out = solopo_objective(DPO(beta=0.1), RA_OFF, LONG_PO, stats())
    assert out.loss.item() == pytest.approx(math.log(2))
    assert out.metrics["ra_loss"].item() == 0.0


def test_orpo_solopo_aligns_log_odds():
    out = solopo_objective(ORPO(lam=0.1), RA, SOLOPO, stats())
    odds = lambda logp, n: logp / n - math.log(1 - math.exp(logp / n))  # noqa: E731
    assert out.metrics["ra/gap"].item() == pytest.approx(abs(odds(-4, 2) - odds(-8, 2)))


def test_detach_short_stops_the_gradient_through_the_short_reward():
    for detach, expect_short_grad in ((False, True), (True, False)):
        s = stats(grad=True)
        out = solopo_objective(SimPO(beta=2.0, gamma=1.0), replace(RA_OFF, detach_short=detach), SHORT_PO, s)
        # short_po runs with ra=off: the short chosen gradient comes from the PO loss alone
        out.loss.backward()
        po_only = s[("short", "chosen")].logps.grad.clone()
        s = stats(grad=True)
        out = solopo_objective(SimPO(beta=2.0, gamma=1.0), replace(RA, detach_short=detach), SOLOPO, s)
        out.loss.backward()
        changed = not torch.allclose(s[("short", "chosen")].logps.grad, po_only)
        assert changed == expect_short_grad
        assert s[("long", "chosen")].logps.grad.abs().item() > 0


def test_dpo_without_reference_logps_is_an_error():
    s = stats()
    s[("short", "chosen")] = responses([-4.0], [2])
    with pytest.raises(ValueError, match="reference"):
        solopo_objective(DPO(beta=0.1), RA, SOLOPO, s)


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha=-1.0), "alpha=-1.0: must be a number >= 0"),
    (dict(responses=("chosen", "evasive")), "responses="),
    (dict(distance="cosine"), "distance=cosine: choose one of"),
])
def test_bad_ra_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        replace(RA, **kwargs)


def test_bad_method_context():
    with pytest.raises(ValueError, match="po_context"):
        replace(SOLOPO, po_context="medium")


def test_readme_recipe_for_trls_ipo_loss():
    """README's recipe for TRL's IPO: log-ratios per token before eq. 17. Chosen: (-4 - -5)/2 = 0.5 per token,
    rejected: (-6 - -6)/3 = 0 -> h = 0.5, beta 0.1: (0.5 - 5)^2 = 20.25 (solopo's summed form: (1 - 5)^2 = 16)."""
    from solopo.core.losses import dpo_reward, ipo_loss

    s = stats()
    (w, l), beta = (s[("short", "chosen")], s[("short", "rejected")]), 0.1
    trl = ipo_loss(dpo_reward(w.logps / w.n_tokens, w.ref_logps / w.n_tokens, beta),
                   dpo_reward(l.logps / l.n_tokens, l.ref_logps / l.n_tokens, beta), beta)
    assert trl.item() == pytest.approx(20.25)
    assert solopo_objective(IPO(beta=beta), RA_OFF, SHORT_PO, s).metrics["po_loss"].item() == pytest.approx(16.0)
