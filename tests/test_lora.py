"""LoRA policies: only the adapter trains, and the reference is the same model with the adapter off."""
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from solopo.core.algos import DPO
from solopo.data.collate import PairCollator
from solopo.data.pairs import build_examples
from solopo.data.tokenize import tokenize_examples
from solopo.data.world import qa_items
from solopo.step.logps import group_logps
from solopo.models.loading import load_model, with_lora
from solopo.training.module import SoLoPOModule
from solopo.core.objective import required_sequences

from conftest import LOGP_CHUNK_SIZE, OPTIM, RA, SOLOPO, TINY

LORA = {"r": 4, "lora_alpha": 8}


@pytest.fixture(scope="module")
def batch(tokenizer):
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = qa_items(2, 0, seed=0)
    pairs = tokenize_examples(build_examples(splits.train, 200, count, pool=splits.distractors), tokenizer, 1024)[0]
    keys = required_sequences(SOLOPO, RA)
    return next(iter(DataLoader(pairs, batch_size=2, collate_fn=PairCollator(keys, tokenizer.pad_token_id))))


def test_only_the_adapter_trains(tokenizer):
    policy = with_lora(load_model(TINY, tokenizer), LORA)
    trained = [name for name, p in policy.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in name for name in trained)


def test_the_reference_is_the_base_model_with_no_second_copy(tokenizer, batch):
    base = load_model(TINY, tokenizer, seed=0)
    expected = {k: v[0] for k, v in group_logps(base, next(iter(batch.groups.values())), LOGP_CHUNK_SIZE).items()}
    policy = with_lora(load_model(TINY, tokenizer, seed=0), LORA)
    with torch.no_grad():  # an adapter that has learnt something: the policy now differs from the base model
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    module = SoLoPOModule(policy, DPO(beta=0.1), RA, SOLOPO, adapter_reference=True, optim=OPTIM,
                          logp_chunk_size=LOGP_CHUNK_SIZE)
    assert module.reference is None
    group = next(iter(batch.groups.values()))
    reference = module._reference_logps(group)
    moved = group_logps(policy, group, LOGP_CHUNK_SIZE)
    for key, logps in expected.items():
        torch.testing.assert_close(reference[key], logps)
        assert not torch.allclose(moved[key][0], logps)
    assert policy.training  # switched back after the reference pass


def test_a_lora_run_saves_its_adapter(tmp_path):
    from reliability.support import smoke_here

    smoke_here(["algo=dpo", "reference=live", "model.lora={r:4,lora_alpha:8}", "save_model=true", "eval.enabled=false",
                "trainer.max_steps=2", f"hydra.run.dir={tmp_path}"])
    adapter = load_file(str(tmp_path / "model" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in key for key in adapter)


@pytest.mark.parametrize("lora, problem", [
    ({"r": 0, "lora_alpha": 32}, "lora.r=0: must be an integer >= 1"),
    ({"r": 8, "alpha": 32}, "lora.alpha: peft's LoraConfig has no such field; did you mean lora_alpha?"),
    ({"r": 8, "lora_alpha": 0}, "lora.lora_alpha=0: must be a number > 0"),
    ({"lora_dropout": 1.5}, "lora.lora_dropout=1.5: must be a number in [0, 1]"),
    ("16", "lora=16: must be peft LoraConfig fields")])
def test_lora_fields_are_checked_before_the_model_loads(lora, problem):
    """peft raised these as a TypeError or ValueError traceback after the model had loaded, exit 1."""
    from solopo.models.lora import lora_problems

    found = lora_problems(lora)
    assert len(found) == 1 and found[0].startswith(problem), found


def test_a_misspelt_target_module_is_named():
    """[q_proj, v_prj] trained q_proj alone, in silence: peft skips the target names that match no module."""
    from solopo.models.lora import unmatched_targets

    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "lm_head"]
    assert unmatched_targets(names, {"target_modules": ["q_proj", "v_prj"]}) == ["v_prj"]
    assert unmatched_targets(names, {"target_modules": ["self_attn.v_proj", "lm_head"]}) == []
    assert unmatched_targets(names, {"target_modules": "all-linear"}) == []


@pytest.mark.parametrize("lora, line", [
    ("{r:0,lora_alpha:8}", "model.lora.r=0: must be an integer >= 1"),
    ("{r:4,target_modules:[q_proj,v_prj]}", "model.lora.target_modules: no module of ")])
def test_a_bad_lora_setting_stops_in_one_line(lora, line, tmp_path):
    from in_process import run_here

    done = run_here(["experiment=smoke", "logger=none", "eval.enabled=false", f"model.lora={lora}",
                     f"hydra.run.dir={tmp_path}"], expect=2)
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {line}") and ("v_prj (its linear layers: " in last) == ("v_prj" in lora), last


def test_an_adapter_folder_is_checked_for_the_base_model_it_names(tmp_path):
    """solopo-eval model.name=<a LoRA run's model folder> went to the hub for "None" (base_model_name_or_path is null
    for an adapter trained on random weights), retrying for half a minute, then ended in a traceback; a base folder
    moved since did the same. Both are one line before anything loads; an adapter whose base exists passes."""
    import json
    from dataclasses import replace

    from conftest import TINY
    from solopo.models.loading import source_problems

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    for folder in (base, adapter):
        folder.mkdir()
    (base / "config.json").write_text("{}")
    spec = replace(TINY, name=str(adapter), random_init=None, tokenizer=None)
    for named, problem in ((None, f"model.name={adapter}: a LoRA adapter whose adapter_config.json names no base model "
                                  "(base_model_name_or_path is null, as for an adapter trained on random weights)"),
                           (str(tmp_path / "gone"), f"base_model_name_or_path={tmp_path / 'gone'}: no such folder (the "
                                                    f"base model of the LoRA adapter model.name={adapter})")):
        (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": named}))
        (found,) = source_problems(spec)
        assert found.startswith(problem), found
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    assert source_problems(spec) == []
