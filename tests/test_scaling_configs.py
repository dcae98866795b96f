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
