"""Data-parallel runs over two CPU processes (gloo) against one process on the same global batch, and gradient
accumulation against one large batch: the first step's loss, gradient norm and updated weights agree to float
tolerance."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from support import results, run, smoke_here, step_losses, step_values  # noqa: E402

pytestmark = pytest.mark.distributed

# DPO with a live reference (sharded too under FSDP) over the 4 smoke pairs; the global batch holds all 4. In float64:
# AdamW's first step moves each weight by about lr * g / (|g| + 1e-8), which turns float32 noise in a near-zero gradient
# into a visible difference; in float64 that noise is far below the tolerance.
COMMON = ["algo=dpo", "reference=live", "eval.enabled=false", "save_model=true", "trainer.enable_checkpointing=false",
          "trainer.max_steps=1", "optim.warmup_ratio=0", "optim.lr=1e-3", "model.dtype=float64", "trainer.precision=32-true"]  # 32-true leaves float64 weights as they are
LAYOUTS = {  # the two single-process layouts run in the test process, the others start their processes
    "one process": ["trainer=cpu", "data.batch_size=4"],
    "ddp": ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=2"],
    "fsdp": ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=2"],
    "accumulation 4x1": ["trainer=cpu", "data.batch_size=1", "trainer.accumulate_grad_batches=4"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, layout in LAYOUTS.items():
        run_dir = tmp_path_factory.mktemp(name.replace(" ", "_"))
        (run if "trainer.devices=2" in layout else smoke_here)([*COMMON, *layout, f"hydra.run.dir={run_dir}"])
        out[name] = run_dir
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.parametrize("name", ["ddp", "fsdp", "accumulation 4x1"])
def test_first_step_loss_and_updated_weights_match_one_process(runs, name):
    base, other = runs["one process"], runs[name]
    assert step_losses(other)[0] == pytest.approx(step_losses(base)[0], rel=1e-9)
    expected, got = weights(base), weights(other)
    assert expected.keys() == got.keys()
    # lr 1e-3: the step moves weights by ~1e-3, so a wrong or missing gradient shows far above this tolerance
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert worst < 1e-9, f"{name}: weights differ from one process by up to {worst}"


@pytest.mark.parametrize("name", ["ddp", "fsdp", "accumulation 4x1"])
def test_gradient_norm_matches_one_process(runs, name):
    """AdamW's first step hardly depends on the gradient's scale, so the weights above would agree even if the
    gradients were summed over processes or micro-batches instead of averaged; their norm would not."""
    expected, got = step_values(runs["one process"], "train/grad_norm"), step_values(runs[name], "train/grad_norm")
    assert got[0] == pytest.approx(expected[0], rel=1e-9) and expected[0] > 0


def test_the_step_moved_the_weights(runs):
    """So that the agreement above is about an update, not two unchanged models."""
    from omegaconf import OmegaConf

    from solopo.models.loading import ModelSpec, load_model, load_tokenizer

    fields = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load("solopo/conf/model/smollm2_135m.yaml"),
                                                    OmegaConf.load("solopo/conf/model/tiny.yaml")))
    fields.pop("defaults", None)
    spec = ModelSpec(**fields)
    initial = {k: v.detach().double() for k, v in load_model(spec, load_tokenizer(spec), seed=0).state_dict().items()}
    trained = weights(runs["one process"])
    moved = max((trained[k] - initial[k]).abs().max().item() for k in trained)
    assert moved > 5e-4


def test_validation_means_are_over_all_pairs_of_all_ranks(runs):
    base = results(runs["one process"])["metrics"]
    for name in ("ddp", "fsdp"):
        metrics = results(runs[name])["metrics"]
        for key in ("val/loss", "val/rewards/margins", "val/ra/gap", "train/loss"):
            assert metrics[key] == pytest.approx(base[key], rel=1e-6, abs=1e-9), (name, key)


def test_only_rank_zero_writes_results(runs):
    for name in ("ddp", "fsdp"):
        data = json.loads((runs[name] / "results.json").read_text())
        assert data["steps"] == 1
        assert not list(runs[name].glob("**/*.tmp"))


@pytest.mark.slow  # long CPU test: pytest -m slow
def test_fsdp_resumes_from_its_sharded_checkpoint(tmp_path):
    """checkpoints/last.ckpt is a folder of shards (one per rank, the live reference left out); a run stopped after
    step 2 and resumed there logs the losses of the run that never stopped."""
    from test_resume import whole_and_resumed

    fsdp = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "algo=dpo", "reference=live",
            "data.source.n_train=8", "eval.enabled=false"]
    whole, parts = whole_and_resumed(tmp_path, fsdp)
    shards = sorted(p.name for p in (parts / "checkpoints" / "last.ckpt").iterdir())
    assert ".metadata" in shards and sum(name.endswith(".distcp") for name in shards) == 2
    expected = step_losses(whole)
    assert sorted(expected) == list(range(4))  # 8 pairs, 2 per global step
    assert step_losses(parts) == pytest.approx(expected, rel=1e-6)
