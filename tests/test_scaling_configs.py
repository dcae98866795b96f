"""The scale-out presets: strategies, the SLURM launcher, LoRA fields, and one-line refusals."""
import pytest
from hydra.utils import instantiate

from solopo.distributed import FSDP2Strategy, check_strategy

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
    check_strategy("solopo.distributed.FSDP2Strategy", "cpu")  # runs anywhere


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
