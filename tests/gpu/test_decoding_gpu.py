"""The static path's decoding step as a CUDA graph (solopo.generation.decoding) on a CUDA GPU: captured, not run
eagerly; its greedy tokens those of the same step run eagerly and, on fp32 weights, those of transformers' generate;
its samples repeat under a seed. Run with `pytest -m gpu` on a CUDA machine."""
import dataclasses
import logging

import pytest
import torch

from conftest import TINY
from solopo.data.tokenize import encode_prompt, left_padded_ids
from solopo.generation import decoding
from solopo.generation.decoding import decode, end_ids, greedy_pick, sampled_pick
from solopo.models.loading import load_model

pytestmark = pytest.mark.gpu
PROMPTS = ["Why?", "Where was the person born, and in which year did the city get its name?", "Who?",
           "Which river runs through the old town north of the bridge?", "When did it open?"]


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(scope="module")
def model(tokenizer):
    talkative = {**TINY.random_init, "tie_word_embeddings": False, "initializer_range": 0.2}
    spec = dataclasses.replace(TINY, dtype="float32", random_init=talkative, attn_implementation="sdpa")
    return load_model(spec, tokenizer).cuda().eval()


def batch(tokenizer):
    return left_padded_ids([encode_prompt(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id, "cuda")


def test_the_graphed_step_gives_the_eager_steps_and_generates_greedy_tokens(model, tokenizer, caplog):
    ids, mask = batch(tokenizer)
    pad, eos = tokenizer.pad_token_id, end_ids(model)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        graphed = decode(model, ids, mask, 16, greedy_pick, pad, eos, graph=True)
        eager = decode(model, ids, mask, 16, greedy_pick, pad, eos, graph=False)
        reference = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                                   pad_token_id=pad)[:, ids.shape[1]:]
    assert not [r for r in caplog.records if "not captured" in r.getMessage()]  # the graph was taken
    assert torch.equal(graphed, eager)
    assert torch.equal(graphed[:, :reference.shape[1]], reference)


def test_graphed_samples_repeat_under_a_seed_and_differ_across_seeds(model, tokenizer):
    ids, mask = batch(tokenizer)
    drawn = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        with torch.no_grad():
            drawn.append(decode(model, ids, mask, 12, sampled_pick(0.85), tokenizer.pad_token_id, end_ids(model),
                                copies=4, graph=True))
    assert drawn[0].shape == (len(PROMPTS) * 4, 12)
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])


def test_capture_off_runs_the_step_eagerly(model, tokenizer, monkeypatch):
    ids, mask = batch(tokenizer)
    monkeypatch.setattr(decoding, "captured", lambda decoder: pytest.fail("captured with CAPTURE off"))
    monkeypatch.setattr(decoding, "CAPTURE", False)
    with torch.no_grad():
        decode(model, ids, mask, 4, greedy_pick, tokenizer.pad_token_id, end_ids(model))
