"""The LightningModule: the reference stays frozen, a step moves the policy, metrics are logged."""
import csv
from dataclasses import replace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from solopo.core.algos import DPO, SimPO
from solopo.data.collate import PairCollator
from solopo.data.pairs import build_examples
from solopo.data.tokenize import tokenize_examples
from solopo.data.world import qa_items
from solopo.models.loading import freeze, load_model
from solopo.training.module import ALL_SEQUENCES, SoLoPOModule
from solopo.core.objective import Method, required_sequences

from conftest import LOGP_CHUNK_SIZE, OPTIM, RA, SOLOPO, TINY


@pytest.fixture(scope="module")
def pairs(tokenizer):
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = qa_items(4, 0, seed=0)
    examples = build_examples(splits.train, 200, count, pool=splits.distractors)
    return tokenize_examples(examples, tokenizer, max_length=1024)[0]


def fit(module, pairs, tokenizer, keys, tmp_path, steps=2, **trainer_args):
    loader = DataLoader(pairs, batch_size=2, collate_fn=PairCollator(keys, tokenizer.pad_token_id))
    trainer_args = {"logger": False, **trainer_args}
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, **trainer_args)
    trainer.fit(module, loader)
    return trainer


def test_reference_gets_no_gradient_and_policy_moves(tokenizer, pairs, tmp_path):
    policy, reference = load_model(TINY, tokenizer), freeze(load_model(TINY, tokenizer))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    ref_before = {k: v.clone() for k, v in reference.state_dict().items()}
    module = SoLoPOModule(policy, DPO(beta=0.1), RA, SOLOPO, reference=reference, optim=replace(OPTIM, lr=1e-3),
                          logp_chunk_size=LOGP_CHUNK_SIZE)
    trainer = fit(module, pairs, tokenizer, required_sequences(SOLOPO, RA), tmp_path)
    optim_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optim_params & {id(p) for p in reference.parameters()}
    assert all(p.grad is None and not p.requires_grad for p in reference.parameters())
    assert not reference.training and policy.training
    assert all(torch.equal(v, ref_before[k]) for k, v in reference.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in policy.state_dict().items())
    for key in ("train/loss", "train/po_loss", "train/ra_loss", "train/rewards/margins", "train/ra/gap",
                "train/ra/chosen_long", "train/ra/chosen_short", "train/ra/gap_signed", "train/logps/chosen"):
        assert torch.isfinite(trainer.callback_metrics[key]), key


@pytest.mark.parametrize("steps", [4, 3])
def test_loggers_get_one_name_per_metric_and_results_the_epoch_mean(tokenizer, pairs, tmp_path, steps):
    """4 pairs in batches of 2: epochs of 2 steps. metrics.csv has train/loss per step, with no _step/_epoch twins;
    the value kept for results.json is the mean of the last epoch's steps (2 pairs each), also of an epoch that
    max_steps cuts short (step 3 alone)."""
    module = SoLoPOModule(load_model(TINY, tokenizer), SimPO(beta=2.0, gamma=1.0), RA, SOLOPO,
                          optim=replace(OPTIM, lr=1e-3),
                          logp_chunk_size=LOGP_CHUNK_SIZE)
    trainer = fit(module, pairs, tokenizer, required_sequences(SOLOPO, RA), tmp_path, steps=steps,
                  logger=pl.loggers.CSVLogger(tmp_path, name="csv", version=0), max_epochs=-1, log_every_n_steps=1)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    assert not [key for key in rows[0] if key.endswith(("_step", "_epoch"))]
    losses = [float(row["train/loss"]) for row in rows if row["train/loss"]]
    assert len(losses) == steps and {"train/rewards/accuracies", "train/logps/rejected"} <= rows[0].keys()
    last_epoch = losses[2:]
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(sum(last_epoch) / len(last_epoch), rel=1e-6)


class GradNorms(pl.Callback):
    """The gradients' norm as the optimizer step begins (before clipping) and after the step (the clipped gradients,
    which the next step's zero_grad clears)."""

    def __init__(self):
        self.before, self.after = [], []

    @staticmethod
    def norm(module) -> float:
        return torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in module.parameters()
                                                   if p.grad is not None])).item()

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.before.append(self.norm(module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append(self.norm(module))


@pytest.mark.parametrize("clip", [1e-3, 0.0])
def test_grad_norm_is_logged_before_clipping(tokenizer, pairs, tmp_path, clip):
    module = SoLoPOModule(load_model(TINY, tokenizer), SimPO(beta=2.0, gamma=1.0), RA, SOLOPO,
                          optim=replace(OPTIM, lr=1e-3), logp_chunk_size=LOGP_CHUNK_SIZE)
    norms = GradNorms()
    trainer = fit(module, pairs, tokenizer, required_sequences(SOLOPO, RA), tmp_path, steps=1,
                  gradient_clip_val=clip, callbacks=[norms])
    logged = trainer.callback_metrics["train/grad_norm"].item()
    assert logged == pytest.approx(norms.before[0], rel=1e-5) and logged > 10 * 1e-3
    # clipped to the limit with the logged norm, or left as they were without a limit
    assert norms.after[0] == pytest.approx(clip if clip else logged, rel=1e-4)


class LoggedRates(pl.Callback):
    def __init__(self):
        self.rates = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.rates.append(trainer.callback_metrics["train/lr"].item())


def test_each_step_logs_the_rate_it_applies(tokenizer, pairs, tmp_path):
    """4 steps, warm-up 0.5 of them (2 steps): 1/3, 2/3 of the peak, then the cosine's 1 and its midpoint's 0.55."""
    module = SoLoPOModule(load_model(TINY, tokenizer), SimPO(beta=2.0, gamma=1.0), RA, SOLOPO,
                          optim=replace(OPTIM, lr=1e-3, warmup_ratio=0.5, min_lr_ratio=0.1, schedule_steps=4),
                          logp_chunk_size=LOGP_CHUNK_SIZE)
    rates = LoggedRates()
    fit(module, pairs * 2, tokenizer, required_sequences(SOLOPO, RA), tmp_path, steps=4, callbacks=[rates])
    assert rates.rates == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 0.55e-3], rel=1e-6)


def test_dpo_needs_a_reference(tokenizer):
    with pytest.raises(ValueError, match="DPO needs a reference model"):
        SoLoPOModule(load_model(TINY, tokenizer), DPO(beta=0.1), RA, SOLOPO, optim=OPTIM,
                     logp_chunk_size=LOGP_CHUNK_SIZE)


def test_checkpoints_leave_the_reference_out(tokenizer, pairs, tmp_path):
    module = SoLoPOModule(load_model(TINY, tokenizer), DPO(beta=0.1), RA, SOLOPO,
                          reference=freeze(load_model(TINY, tokenizer)), optim=OPTIM,
                          logp_chunk_size=LOGP_CHUNK_SIZE)
    trainer = fit(module, pairs, tokenizer, required_sequences(SOLOPO, RA), tmp_path, steps=1)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert state and not [k for k in state if k.startswith("reference.")]


def test_validation_reports_every_context(tokenizer, pairs, tmp_path):
    """Whatever the method trains on, validation scores chosen and rejected on both contexts."""
    module = SoLoPOModule(load_model(TINY, tokenizer), SimPO(beta=2.0, gamma=1.0), RA,
                          Method(name="long_po", po_context="long", pairs_from="long", use_ra=False),
                          optim=OPTIM, logp_chunk_size=LOGP_CHUNK_SIZE)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.validate(module, DataLoader(pairs, batch_size=2, collate_fn=PairCollator(ALL_SEQUENCES, tokenizer.pad_token_id)),
                     verbose=False)
    for key in ("val/ra/gap", "val/ra/gap_rejected", "val/ra/chosen_long", "val/rewards/accuracies"):
        assert key in trainer.callback_metrics
