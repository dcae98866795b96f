"""What a run leaves on disk: no optimizer checkpoint after a completed run unless asked, and a saved model that
transformers alone loads and generates with, in the dtype training computed in, LoRA merged on request."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from solopo.models.loading import load_model, save_policy, with_lora
from solopo.training.resume import LastCheckpoint

from conftest import TINY
from reliability.support import fit_toy, smoke_here

MB = 1 << 20


def generates(path, tokenizer) -> torch.Tensor:
    """Greedy tokens from the folder at ``path`` loaded by transformers alone (its generation_config.json)."""
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tokenizer("The capital of", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:]


def test_a_completed_run_leaves_no_checkpoint_and_a_model_that_generates(tmp_path, tokenizer):
    """Before the change the smoke run left checkpoints/last.ckpt (weights and AdamW moments), and the saved config had
    use_cache false."""
    smoke_here(["save_model=true", "eval.enabled=false", f"hydra.run.dir={tmp_path}"])
    assert not (tmp_path / "checkpoints").exists()
    assert max(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) < 100 * MB
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["use_cache"] is True and config["dtype"] == "float32"
    generation = json.loads((tmp_path / "model" / "generation_config.json").read_text())
    assert generation["pad_token_id"] == tokenizer.pad_token_id and generation["eos_token_id"] == tokenizer.eos_token_id
    assert len(generates(tmp_path / "model", tokenizer)) == 4


def test_checkpoint_keep_writes_last_ckpt_at_the_end(tmp_path):
    fit_toy(tmp_path / "lean", max_steps=2, callbacks=[LastCheckpoint(tmp_path / "lean")])
    assert not (tmp_path / "lean" / "checkpoints").exists()
    fit_toy(tmp_path / "kept", max_steps=2, callbacks=[LastCheckpoint(tmp_path / "kept", keep=True)])
    assert torch.load(tmp_path / "kept" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_a_completed_resumed_run_removes_the_checkpoint_it_resumed_from(tmp_path):
    """Once its results.json is written (solopo.training.lightning_run.finish_run), not as the fit ends: a stop in the
    work after training still resumes from it."""
    fit_toy(tmp_path, max_steps=2, callbacks=[LastCheckpoint(tmp_path, keep=True)])
    checkpoint = LastCheckpoint(tmp_path)
    trainer = fit_toy(tmp_path, max_steps=3, callbacks=[checkpoint])
    assert trainer.global_step == 3 and (tmp_path / "checkpoints" / "last.ckpt").exists()
    checkpoint.remove_if_completed(trainer)
    assert not (tmp_path / "checkpoints").exists()


def test_the_policy_is_saved_in_the_dtype_training_computed_in(tmp_path, tokenizer):
    """fp32 master weights under bf16-mixed are written as bf16 (half the bytes), and load as bf16."""
    policy = load_model(TINY, tokenizer)
    save_policy(policy, tokenizer, tmp_path, dtype=torch.bfloat16)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype="auto")
    assert loaded.dtype == torch.bfloat16 and loaded.config.use_cache
    expected = policy.state_dict()["model.embed_tokens.weight"].to(torch.bfloat16)
    assert torch.equal(loaded.state_dict()["model.embed_tokens.weight"], expected)


def test_a_merged_lora_policy_computes_what_the_adapter_did(tmp_path, tokenizer):
    """W + (lora_alpha / r) * B @ A: with B non-zero, the merged plain model's logits equal the LoRA policy's."""
    policy = with_lora(load_model(TINY, tokenizer), {"r": 4, "lora_alpha": 8})
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    save_policy(policy, tokenizer, tmp_path, merge_lora=True)
    assert not (tmp_path / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 9, 200, 31]])
    policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, policy(ids).logits, rtol=1e-4, atol=1e-4)
        with policy.disable_adapter():  # the adapter changes the logits: the merge is not a no-op
            assert not torch.allclose(merged(ids).logits, policy(ids).logits, atol=1e-3)
    assert len(generates(tmp_path, tokenizer)) == 4


@pytest.mark.parametrize("value", ["yes", "1"])
def test_save_model_takes_false_true_or_merged(tmp_path, value):
    done = smoke_here([f"save_model={value}", f"hydra.run.dir={tmp_path}"], expect=2)
    assert f"save_model={value}: choose one of false, true, merged" in done.stderr.strip().splitlines()[-1]


def test_keep_best_puts_back_the_weights_of_the_best_step():
    """Scores 0.2, 0.5, 0.3 at steps 1-3: step 2 is kept, and its weights (not step 3's) end up in the policy."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from reliability.support import Toy
    from solopo.training.eval_callback import EvalDuringTraining

    scores, seen = {1: 0.2, 2: 0.5, 3: 0.3}, {}

    def evaluation(policy, name):
        step = int(name.split()[1])
        seen[step] = policy.layer.weight.detach().clone()
        return {"average_long": scores[step], "average": scores[step], "by_length": {"1024": scores[step]},
                "ci95_long": [scores[step] / 2, 1.0]}

    module = Toy()
    during = EvalDuringTraining(evaluation, module, every_n_steps=1, keep_best=True)
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, callbacks=[during])
    trainer.fit(module, DataLoader(list(range(8)), batch_size=1))
    assert [p["step"] for p in during.curve] == [1, 2, 3] and during.best_step == 2
    assert during.curve[1]["avg_long"] == 50.0 and during.curve[1]["by_length"] == {"1024": 50.0}  # points
    assert during.curve[1]["ci95_long"] == [25.0, 100.0]
    assert not torch.equal(module.layer.weight, seen[2])
    during.restore_best()
    assert torch.equal(module.layer.weight, seen[2])
    assert during.record() == {"every_n_steps": 1, "points": during.curve, "best_step": 2}


def test_a_resumed_run_keeps_the_curve_and_the_best_steps_weights(tmp_path):
    """The callback kept no state in the checkpoint: a run resumed after step 2 had the curve from step 3 on, and
    step 3 as its best (weights and all), where the uninterrupted run kept step 2's."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from reliability.support import Toy
    from solopo.training.eval_callback import EvalDuringTraining

    scores, seen = {1: 0.2, 2: 0.5, 3: 0.3}, {}

    def evaluation(policy, name):
        step = int(name.split()[1])
        seen[step] = policy.layer.weight.detach().clone()
        return {"average_long": scores[step], "average": scores[step], "by_length": {"1024": scores[step]}}

    def fit(steps, ckpt_path=None):
        module = Toy()
        during = EvalDuringTraining(evaluation, module, every_n_steps=1, keep_best=True)
        trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, callbacks=[during],
                             default_root_dir=tmp_path)
        trainer.fit(module, DataLoader(list(range(8)), batch_size=1), ckpt_path=ckpt_path)
        return trainer, module, during

    trainer, _, _ = fit(2)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    _, module, during = fit(3, tmp_path / "last.ckpt")
    assert [p["step"] for p in during.curve] == [1, 2, 3] and during.best_step == 2
    during.restore_best()
    assert torch.equal(module.layer.weight, seen[2])


def test_eval_every_n_steps_logs_records_and_plots_the_curve(tmp_path):
    smoke_here(["eval.every_n_steps=2", "eval.keep_best=true", f"hydra.run.dir={tmp_path}"])
    curve = json.loads((tmp_path / "results.json").read_text())["eval_curve"]
    assert [p["step"] for p in curve["points"]] == [2, 4] and curve["best_step"] in (2, 4)
    assert (tmp_path / "eval_vs_step.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "eval/step/avg_long" in rows.splitlines()[0]


def test_keep_best_needs_every_n_steps(tmp_path):
    done = smoke_here(["eval.keep_best=true", f"hydra.run.dir={tmp_path}"], expect=2)
    assert "eval.keep_best=true needs eval.every_n_steps" in done.stderr.strip().splitlines()[-1]


def test_the_default_run_is_sized_to_the_hardware(monkeypatch):
    """On a GPU the entry point adds the GPU preset unless the command names an experiment; on a CPU it adds nothing."""
    from solopo.run import sized_for_hardware

    monkeypatch.setattr("solopo.run.gpu_device_nodes", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sized_for_hardware(["algo=dpo"]) == ["algo=dpo", "experiment=default_gpu"]
    assert sized_for_hardware(["experiment=smoke"]) == ["experiment=smoke"]
    # a config folder or name of one's own is a run's, and --cfg job shows the config the run would take
    for asked in (["-cd", "mine", "algo=dpo"], ["-cn", "other"], ["--cfg", "job"], ["--cfg=all"]):
        assert sized_for_hardware(asked) == [*asked, "experiment=default_gpu"]
    for question in (["--help"], ["-h"], ["--hydra-help"], ["--info"], ["--info=plugins"], ["-sc", "install=bash"]):
        assert sized_for_hardware(question) == question
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sized_for_hardware(["algo=dpo"]) == ["algo=dpo"]


def test_the_gpu_preset_separates_a_ten_point_change():
    """360 long cases; 10 points up with a fifth of the answers changed (b = 18, c = 54): the interval excludes 0."""
    from omegaconf import OmegaConf

    from solopo.report.stats import paired_change
    from conftest import ROOT

    preset = OmegaConf.load(ROOT / "solopo" / "conf" / "experiment" / "default_gpu.yaml").eval
    n = preset.n_items * len(preset.depths) * (len(preset.lengths) - 1)
    before = [1] * 18 + [0] * 54 + [0] * (n - 72)
    after = [0] * 18 + [1] * 54 + [0] * (n - 72)
    change = paired_change(before, after)
    assert n == 360 and change.difference == pytest.approx(0.1) and change.low > 0.04
