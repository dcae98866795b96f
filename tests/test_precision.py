"""Inference outside Lightning's loop (reference log-probs, sampling, evaluation) computes under the trainer's
autocast, as training's forward does; its caches keep runs of different precisions apart."""
from dataclasses import replace

import pytest
import torch

from solopo.data.pairs import build_examples
from solopo.generation.sampling import _fingerprint, generate
from solopo.data.tokenize import tokenize_examples
from solopo.data.world import qa_items
from solopo.eval.longctx import greedy_answers
from solopo.training.module import ALL_SEQUENCES
from solopo.training.precision import autocast, autocast_dtype, resolve_precision, weights_as, weights_dtype
from solopo.training.reference import compute_reference_logps
from solopo.settings.groups import PRECISIONS

from conftest import LOGP_CHUNK_SIZE, SAMPLING


@pytest.mark.parametrize("precision, dtype", [
    ("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16), ("bf16", torch.bfloat16),
    ("16-mixed", torch.float16), ("16-true", torch.float16), ("16", torch.float16),
    ("32-true", None), ("32", None), ("64-true", None), ("64", None)])
def test_autocast_dtype_follows_lightnings_names(precision, dtype):
    assert precision in PRECISIONS and autocast_dtype(precision) is dtype


def test_autocast_computes_matmuls_in_the_trainers_dtype():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(torch.device("cpu"), "bf16-mixed"):
        assert (a @ b).dtype is torch.bfloat16
    with autocast(torch.device("cpu"), "32-true"):
        assert (a @ b).dtype is torch.float32


def test_auto_precision_on_a_machine_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "32-true"
    assert resolve_precision("16-mixed") == "16-mixed"


def autocast_seen(model) -> list:
    """(autocast on, its dtype) at every forward of the model's decoder stack."""
    seen = []
    model.get_decoder().register_forward_pre_hook(
        lambda module, args: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    return seen


def passes(model, tokenizer, precision):
    """The three inference passes solopo makes outside Lightning's loop, under ``precision``."""
    greedy_answers(model, tokenizer, ["Where?", "Who?"], max_new_tokens=2, batch_size=2, precision=precision)
    generate(model, tokenizer, ["Where?"], replace(SAMPLING, k=2, max_new_tokens=2, precision=precision))
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = qa_items(5, 0, seed=1)
    pairs = tokenize_examples(build_examples(splits.train[:2], 160, count, pool=splits.distractors), tokenizer, 1024)[0]
    compute_reference_logps(model, pairs, ALL_SEQUENCES, tokenizer.pad_token_id, LOGP_CHUNK_SIZE, precision=precision)


def test_inference_runs_under_the_trainers_autocast(tiny_model, tokenizer):
    seen = autocast_seen(tiny_model)
    passes(tiny_model, tokenizer, "bf16-mixed")
    assert len(seen) > 4 and set(seen) == {(True, torch.bfloat16)}
    seen.clear()
    passes(tiny_model, tokenizer, "32-true")
    assert len(seen) > 4 and {on for on, _ in seen} == {False}


def test_sampled_pairs_of_other_precisions_or_weight_dtypes_are_cached_apart():
    keys = {_fingerprint("m", replace(SAMPLING, precision=p, half_weights=h), ["Where?"])
            for p in ("32-true", "bf16-mixed") for h in (True, False)}
    assert len(keys) == 4


def test_evaluation_takes_the_trainers_precision():
    from solopo.settings.build import build_settings
    from test_configs import compose_config

    assert build_settings(compose_config(["trainer.precision=bf16-mixed"])).eval.precision == "bf16-mixed"


@pytest.mark.parametrize("strategy, precision, dtype", [
    ("solopo.training.distributed.FSDP2Strategy", "bf16-mixed", torch.bfloat16), ("solopo.training.distributed.FSDP2Strategy", "32-true", None),
    ("pytorch_lightning.strategies.DeepSpeedStrategy", "bf16-mixed", torch.bfloat16),
    ("pytorch_lightning.strategies.DeepSpeedStrategy", "16-mixed", None), ("ddp", "bf16-mixed", None), ("auto", "bf16-mixed", None)])
def test_weights_dtype_is_where_the_strategy_casts_the_weights(strategy, precision, dtype):
    assert weights_dtype(strategy, precision) is dtype


def test_weights_as_casts_for_the_duration_and_gives_the_fp32_masters_back(tiny_model):
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    buffers = {name: b.dtype for name, b in tiny_model.named_buffers()}
    with weights_as(tiny_model, torch.bfloat16):
        assert {p.dtype for p in tiny_model.parameters()} == {torch.bfloat16}
        assert {name: b.dtype for name, b in tiny_model.named_buffers()} == buffers  # rotary frequencies stay fp32
    after = dict(tiny_model.named_parameters())
    assert all(after[name].dtype is torch.float32 and torch.equal(after[name], value) for name, value in before.items())


def test_reference_tables_of_other_weight_dtypes_are_cached_apart(tokenizer):
    from solopo.training.reference import fingerprint

    keys = ALL_SEQUENCES
    assert fingerprint("m", [], keys, "bf16-mixed") == fingerprint("m", [], keys, "bf16-mixed", None)
    assert fingerprint("m", [], keys, "bf16-mixed") != fingerprint("m", [], keys, "bf16-mixed", torch.bfloat16)
