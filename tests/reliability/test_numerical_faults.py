"""The NaN guard: a step with a non-finite loss or gradient changes no weight and is counted, isolated bad steps let
the run go on, and max_consecutive_bad_steps of them in a row stop it with a message naming steps and causes."""
from dataclasses import dataclass, field, replace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from solopo.core.algos import SimPO
from solopo.data.collate import PairCollator
from solopo.data.pairs import build_examples
from solopo.data.tokenize import tokenize_examples
from solopo.data.world import qa_items
from solopo.training.faults import NumericalGuard
from solopo.models.loading import load_model
from solopo.training.module import SoLoPOModule
from solopo.core.objective import required_sequences
from support import results, smoke_here

from conftest import LOGP_CHUNK_SIZE, OPTIM, RA, SOLOPO, TINY

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
NAN = float("nan")
WATCHED = "policy.model.layers.1.mlp.down_proj.weight"


@dataclass
class FaultyAlgo:
    """SimPO whose loss is NaN at the steps in nan_loss; it also counts the steps (one loss call per step)."""

    nan_loss: set = field(default_factory=set)
    step: int = 0
    base: SimPO = field(default_factory=lambda: SimPO(beta=2.0, gamma=1.0))
    needs_reference = False

    def reward(self, responses):
        return self.base.reward(responses)

    def loss(self, *args):
        self.step += 1
        loss = self.base.loss(*args)
        return loss * NAN if self.step in self.nan_loss else loss

    def loss_terms(self, *args):
        return self.base.loss_terms(*args)


class Weights(pl.Callback):
    """The policy's weights before training (index 0) and after every step (index k)."""

    def __init__(self):
        self.after = []

    def snapshot(self, pl_module):
        self.after.append({k: v.clone() for k, v in pl_module.policy.state_dict().items()})

    def on_train_start(self, trainer, pl_module):
        self.snapshot(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.snapshot(pl_module)

    def changed(self, step):
        return any(not torch.equal(v, self.after[step - 1][k]) for k, v in self.after[step].items())


@pytest.fixture(scope="module")
def pairs(tokenizer):
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = qa_items(4, 0, seed=0)
    return tokenize_examples(build_examples(splits.train, 200, count, pool=splits.distractors), tokenizer, 1024)[0]


def fit(tokenizer, pairs, tmp_path, algo, steps, nan_grad=()):
    module = SoLoPOModule(load_model(TINY, tokenizer, seed=0), algo, RA, SOLOPO, optim=replace(OPTIM, lr=1e-3),
                          logp_chunk_size=LOGP_CHUNK_SIZE)
    watched = dict(module.named_parameters())[WATCHED]
    watched.register_hook(lambda grad: grad * NAN if algo.step in nan_grad else grad)
    guard, weights = NumericalGuard(max_consecutive=3), Weights()
    loader = DataLoader(pairs, batch_size=1, collate_fn=PairCollator(required_sequences(SOLOPO, RA),
                                                                     tokenizer.pad_token_id))
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, max_epochs=-1, gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[guard, weights])
    trainer.fit(module, loader)
    return trainer, guard, weights


def test_isolated_bad_steps_are_skipped_and_counted(tokenizer, pairs, tmp_path):
    trainer, guard, weights = fit(tokenizer, pairs, tmp_path, FaultyAlgo(nan_loss={2}), steps=6, nan_grad={4})
    assert trainer.global_step == 6 and guard.stop_message is None  # the run went on
    assert [weights.changed(step) for step in range(1, 7)] == [True, False, True, False, True, True]
    assert guard.summary()["bad_steps"] == [{"step": 2, "cause": "non-finite loss"},
                                            {"step": 4, "cause": f"non-finite gradient in {WATCHED}"}]
    assert trainer.callback_metrics["train/skipped_steps"] == 2
    adam = trainer.optimizers[0].state[dict(trainer.lightning_module.named_parameters())[WATCHED]]
    assert adam["step"] == 4  # the moments saw the good steps only
    assert torch.isfinite(trainer.callback_metrics["train/loss"])  # bad steps stay out of the means


def test_consecutive_bad_steps_stop_the_run(tokenizer, pairs, tmp_path):
    trainer, guard, weights = fit(tokenizer, pairs, tmp_path, FaultyAlgo(nan_loss={2, 3}), steps=8, nan_grad={4})
    assert trainer.global_step == 4 and len(weights.after) == 5
    assert not any(weights.changed(step) for step in (2, 3, 4))
    assert guard.stop_message == (
        "training stopped at step 4: 3 steps in a row had non-finite values (step 2: non-finite loss; "
        f"step 3: non-finite loss; step 4: non-finite gradient in {WATCHED}); the weights are those after step 1. "
        "Lower optim.lr, check the data, or raise faults.max_consecutive_bad_steps")


def test_a_diverging_run_stops_with_the_message_and_records_it(tmp_path):
    """A huge learning rate (an infinite one is refused before the model loads) makes the weights overflow at step 1,
    so the gradients of steps 2-4 are not finite and the run ends there."""
    done = smoke_here(["optim.lr=1e30", "trainer.max_steps=6", "data.source.n_train=6", f"hydra.run.dir={tmp_path}"], expect=1)
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("training stopped at step 4: 3 steps in a row had non-finite values (step 2: non-finite "
                              "gradient")
    assert "Traceback" not in done.stderr
    faults = results(tmp_path)["faults"]
    assert faults["skipped_steps"] == 3 and faults["stopped"] == message
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
