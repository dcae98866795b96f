"""model.gradient_checkpointing=auto in a run (solopo.training.models.plan_checkpointing): what the run hands the
predictor besides the step, the models on the device and the processes a sharded state is spread over."""
import pytest
import torch

from conftest import TINY, default_config
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.models.loading import freeze, load_model
from solopo.settings.build import build_settings
from solopo.step import checkpointing
from solopo.training import models

PAIRS = [TokenizedPair("a", {"short": [1] * 5, "long": [1] * 200}, {"chosen": [2] * 3, "rejected": [2] * 4})]
COLLATE = PairCollator([("long", "chosen"), ("long", "rejected")], 0, pack=False)


@pytest.fixture
def plans(monkeypatch):
    """The plans the run's auto_checkpointing makes, in order."""
    made = []
    monkeypatch.setattr(models, "auto_checkpointing", lambda *args, **kwargs: made.append(
        checkpointing.auto_checkpointing(*args, **kwargs)) or made[-1])
    return made


def test_a_live_reference_counts_in_the_plan(tokenizer, monkeypatch, plans):
    """reference=live: the frozen reference's weights sit on the device beside the policy's state (fp32 here, 4 bytes
    a weight), so the run's plan predicts that much more, and a budget the policy's step fits with no layer
    checkpointed makes it checkpoint beside them."""
    cfg, budget = default_config().copy(), [None]
    policy, reference = load_model(TINY, tokenizer, seed=0), freeze(load_model(TINY, tokenizer, seed=0))
    monkeypatch.setattr(checkpointing, "device_budget", lambda device: budget[0])
    for live in (None, reference):
        models.plan_checkpointing(cfg, build_settings(cfg), policy, PAIRS, COLLATE, live)
    weights = sum(p.numel() * p.element_size() for p in reference.parameters())
    assert plans[1].predicted_peak - plans[0].predicted_peak == weights
    budget[0] = plans[0].predicted_peak + weights // 2  # the policy's step alone fits, not beside the reference
    for live in (None, reference):
        models.plan_checkpointing(cfg, build_settings(cfg), policy, PAIRS, COLLATE, live)
    assert plans[2].checkpointed == 0 and plans[3].checkpointed > 0


@pytest.mark.parametrize("devices, world", [("auto", 4), (2, 2)])
def test_fsdp_spreads_the_state_over_every_process(tokenizer, monkeypatch, plans, devices, world):
    """trainer=fsdp shards weights, gradients and AdamW's moments over all its processes: with the preset's
    trainer.devices=auto, every GPU of the node (4 here), the plan counts a quarter of the state per device."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from conftest import ROOT

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    policy = load_model(TINY, tokenizer, seed=0)
    for count in (devices, 1):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["model=tiny", "trainer=fsdp", f"trainer.devices={count}"])
        GlobalHydra.instance().clear()
        models.plan_checkpointing(cfg, build_settings(cfg), policy, PAIRS, COLLATE)
    sharded, whole = (plan.predicted_peak for plan in plans)
    assert whole - sharded == checkpointing.state_bytes(policy) - checkpointing.state_bytes(policy, world)
