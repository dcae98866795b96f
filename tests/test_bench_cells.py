"""What one benchmark cell trains (experiments/efficiency/cells.py) and TRL's trainers in trl_bench.py: the model
build, the defaults variant's precision, TRL's arguments; on the CPU, without loading a model."""
import sys

from conftest import ROOT

SCRIPTS = ROOT / "experiments" / "efficiency"


def test_benchmark_shapes_draw_their_random_weights_where_their_preset_says():
    """The 1.5B and 7B shapes' presets draw random weights on the GPU (model.init_device=auto: seconds, where the CPU
    takes minutes for the 7B shape, longer than a GPU call had left); the benchmarks take that from the preset, not
    the default model's cpu, and keep their own dtype, checkpointing and Liger setting."""
    sys.path.insert(0, str(SCRIPTS))
    import cells

    for name in ("qwen2.5-1.5b", "qwen2.5-7b"):
        spec = cells.model_spec(name)
        assert spec.init_device == "auto" and spec.random_init["num_hidden_layers"] == 28
        assert (spec.dtype, spec.gradient_checkpointing, spec.liger) == ("bfloat16", True, False)
        assert spec.random_init["max_position_embeddings"] == 1 << 20
    assert cells.model_spec("smollm2").random_init is None


def test_the_defaults_variant_builds_what_a_run_without_flags_builds():
    """A run of a shape's preset keeps fp32 master weights and trains under trainer.precision=auto (bf16-mixed on a
    GPU with bf16, 32-true on the CPU); the defaults variant measures that, the others the committed bf16 weights."""
    sys.path.insert(0, str(SCRIPTS))
    import cells
    import torch
    from solopo.training.precision import resolve_precision

    for name in ("qwen2.5-1.5b", "qwen2.5-7b"):
        assert cells.run_build(name, cells.model_spec(name)).dtype == "float32" != cells.model_spec(name).dtype
    assert cells.run_build("smollm2", cells.model_spec("smollm2")).dtype == "auto"  # the embedded model's preset
    assert cells.variant_precision(cells.DEFAULTS) == resolve_precision("auto")
    assert cells.variant_precision("padded") == "32-true"
    if not torch.cuda.is_available():
        assert cells.variant_precision(cells.DEFAULTS) == "32-true"


def test_trl_s_simpo_trainer_keeps_the_whole_response(monkeypatch):
    """CPOConfig reads max_length=None as 512 and cut every response of a long prompt to nothing; trl_bench gives it
    twice the pair's length (and the SimPO gamma of conf/algo/simpo.yaml), DPO no limit. trl stubbed: its arguments."""
    import types
    sys.path.insert(0, str(SCRIPTS))
    seen = {}
    config = lambda name: lambda **kw: seen.setdefault(name, kw)  # noqa: E731
    trainer = lambda **kw: kw  # noqa: E731
    monkeypatch.setitem(sys.modules, "trl", types.SimpleNamespace(DPOConfig=config("dpo"), DPOTrainer=trainer))
    monkeypatch.setitem(sys.modules, "trl.experimental", types.ModuleType("trl.experimental"))
    monkeypatch.setitem(sys.modules, "trl.experimental.cpo",
                        types.SimpleNamespace(CPOConfig=config("simpo"), CPOTrainer=trainer))
    for module in ("datasets", "pyarrow"):
        monkeypatch.setitem(sys.modules, module, sys.modules.get(module) or types.ModuleType(module))
    sys.modules["datasets"].Dataset = getattr(sys.modules["datasets"], "Dataset", object)
    import trl_bench

    for algo in ("dpo", "simpo"):
        trl_bench.make_trainer(algo, None, None, None, 2, "/tmp", None, 16384)
    assert seen["simpo"]["max_length"] == 32768 and seen["simpo"]["simpo_gamma"] == 1.0
    assert seen["dpo"]["max_length"] is None


def test_resume_keeps_a_tables_gpu_and_refuses_to_mix_another(tmp_path, monkeypatch):
    """A table measured on an H100 and resumed on an H200 (the machine a call gets is either) took the H200's rows
    beside the H100's and relabelled the whole table with the H200: its ratios compared rows of two GPUs. Each row
    now names its GPU, and --resume on another GPU stops in one line."""
    sys.path.insert(0, str(SCRIPTS))
    import common
    import pytest

    meta = {"gpu": "NVIDIA H100 80GB HBM3", "commit": "abc1234"}
    monkeypatch.setattr(common, "environment", lambda: dict(meta))
    common.write_table(tmp_path, "grid", [{"model": "m", "step_s": 1.0}], ["model", "step_s"], meta)
    rows = common.previous_rows(tmp_path, "grid", resume=True)
    assert rows == [{"model": "m", "step_s": 1.0, "commit": "abc1234", "gpu": "NVIDIA H100 80GB HBM3"}]
    monkeypatch.setattr(common, "environment", lambda: {**meta, "gpu": "NVIDIA H200"})
    with pytest.raises(SystemExit) as stopped:
        common.previous_rows(tmp_path, "grid", resume=True)
    assert str(stopped.value) == (f"{tmp_path / 'grid.json'}: measured on NVIDIA H100 80GB HBM3, this is NVIDIA H200: "
                                  "--resume would mix GPUs in one table (its ratios compare rows); resume on that "
                                  "GPU, or give another --out")
    assert common.previous_rows(tmp_path, "grid", resume=False) == []
