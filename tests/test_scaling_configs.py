"""The scale-out presets: strategies, the SLURM launcher, LoRA fields, and one-line refusals."""
from dataclasses import replace

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from solopo.training.distributed import FSDP2Strategy, check_strategy
from solopo.models.loading import ModelSpec

from test_configs import compose_config


def test_fsdp_preset_is_one_data_parallel_group():
    cfg = compose_config(["trainer=fsdp", "trainer.accelerator=cpu"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDP2Strategy) and strategy._save_distributed_checkpoint


def test_slurm_launcher_preset_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.partition) == (8, 8, "gpu")


def test_deepspeed_needs_cuda_and_says_so():
    with pytest.raises(SystemExit, match="trainer=deepspeed needs CUDA GPUs"):
        check_strategy("pytorch_lightning.strategies.DeepSpeedStrategy", "cpu")
    check_strategy("solopo.training.distributed.FSDP2Strategy", "cpu")  # runs anywhere


@pytest.mark.parametrize("model, billions", [("qwen2_5_1_5b_shape", 1.54), ("qwen2_5_7b_shape", 7.62)])
def test_random_shapes_have_the_real_models_size(model, billions):
    """The scaling study's random models cost what Qwen2.5-1.5B/7B cost: same parameter count (built on the meta
    device, nothing allocated), the same shape as the efficiency benchmarks use."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = compose_config(["experiment=scaling", f"model={model}"])
    fields = OmegaConf.to_container(cfg.model.random_init)
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    assert sum(p.numel() for p in built.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)
    assert cfg.trainer.strategy._target_.endswith("FSDP2Strategy") and not cfg.eval.enabled


def test_scaling_data_reaches_the_long_contexts_it_is_run_at():
    """experiment=scaling's built-in world holds enough irrelevant passages for 64K-token contexts (the default
    world of ~14K tokens stops a 16K run while it builds its data)."""
    from solopo.data.pairs import to_examples
    from solopo.data.tokenize import token_counter
    from solopo.models.loading import ModelSpec, load_tokenizer

    cfg = compose_config(["experiment=scaling", "data.source.n_train=2"])
    splits = instantiate(cfg.data.source)
    tokenizer = load_tokenizer(ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True)))
    count = token_counter(tokenizer)
    examples = to_examples(splits.train, 65536, count, pool=splits.distractors)
    assert all(65536 - 64 <= count(e.prompt_long) <= 65536 for e in examples)


def test_random_weights_are_drawn_on_this_process_gpu(monkeypatch):
    """model.init_device=auto draws on the local rank's GPU (every rank its own, not GPU 0), and on the CPU where
    there is none; a GPU draw is another model, so it has another identity in the reference cache."""
    import torch

    from solopo.training.distributed import local_gpu
    from solopo.models.loading import init_device
    from solopo.training.models import model_identity
    from solopo.settings.build import built

    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_gpu() == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert init_device("auto") == init_device("cpu") == torch.device("cpu")
    cfg = compose_config(["model=qwen2_5_1_5b_shape"])
    spec = ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))
    assert spec.init_device == "auto" and model_identity(spec, 0) == model_identity(replace(spec, init_device="cpu"), 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert init_device("auto") == torch.device("cuda", 1)
    assert model_identity(spec, 0) != model_identity(replace(spec, init_device="cpu"), 0)
    problems = []
    assert built("model", ModelSpec, {**cfg.model, "init_device": "gpu"}, problems) is None
    assert problems == ["model.init_device=gpu: choose one of cpu, auto"]


@pytest.mark.parametrize("model", ["qwen2_5_7b", "llama3_1_8b", "qwen2_5_1_5b_shape", "qwen2_5_7b_shape"])
def test_large_presets_train_fp32_master_weights(model):
    """Under bf16-mixed the optimizer updates the weights in the dtype they load in; the large presets load fp32."""
    assert compose_config([f"model={model}"]).model.dtype == "float32"


def test_half_precision_trained_weights_are_counted_and_lora_adapters_are_not():
    """bf16 weights that AdamW updates lose most of its small steps (the run warns); peft's adapters are fp32."""
    import torch

    from solopo.models.loading import half_precision_trained, load_model, load_tokenizer, with_lora

    cfg = compose_config(["model=tiny", "model.dtype=bfloat16"])
    spec = ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))
    model = load_model(spec, load_tokenizer(spec))
    assert half_precision_trained(model) == sum(p.numel() for p in model.parameters()) > 0
    assert half_precision_trained(with_lora(model, {"r": 4})) == 0
    assert half_precision_trained(model.float()) == 0
    weight = torch.full((1000,), 0.02, dtype=torch.bfloat16)
    assert torch.equal(weight - 1e-6, weight)  # why: the update is below half the bf16 resolution at 0.02
