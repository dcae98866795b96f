"""The static path's decoding loop (solopo.generation.decoding) on the CPU, where its step runs without a graph: a
row's end and the pad after it by hand; greedy tokens and samples those of transformers' generate; a model whose
generation config adds logits processors generates through generate; the end ids as generate reads them."""
import dataclasses
import logging

import pytest
import torch

from conftest import TINY
from solopo.data.tokenize import encode_prompt, left_padded_ids
from solopo.eval import longctx
from solopo.eval.longctx import greedy_answers
from solopo.generation import decoding
from solopo.generation.decoding import Decoder, decode, end_ids, greedy_pick, plain_decoding, sampled_pick
from solopo.models.loading import load_model

PROMPTS = ["Why?", "Where was the person born, and in which year did the city get its name?", "Who?",
           "Which river runs through the old town north of the bridge?"]


@pytest.fixture(scope="module")
def model(tokenizer):
    talkative = {**TINY.random_init, "tie_word_embeddings": False, "initializer_range": 0.2}
    return load_model(dataclasses.replace(TINY, dtype="float32", random_init=talkative), tokenizer).eval()


def test_advance_writes_the_pad_after_a_rows_end_and_moves_the_step_on():
    """Three rows, end id 2: row 0 ends now, row 1 ended before (its choice is replaced by the pad, 0), row 2 goes on."""
    decoder = Decoder(model=None, cache=None, keyword="cache", pick=greedy_pick,
                      token=torch.zeros(3, 1, dtype=torch.long), position=torch.tensor([[4], [6], [5]]),
                      mask=torch.zeros(3, 1, 1, 9, dtype=torch.bool),
                      column=torch.tensor([6]), index=torch.tensor([1]), out=torch.zeros(3, 3, dtype=torch.long),
                      ended=torch.tensor([False, True, False]), eos=torch.tensor([2]), pad=0)
    decoder.advance(torch.tensor([2, 7, 9]))
    assert decoder.out.tolist() == [[0, 2, 0], [0, 0, 0], [0, 9, 0]]
    assert decoder.ended.tolist() == [True, True, False]
    assert decoder.token.tolist() == [[2], [0], [9]]
    assert decoder.position.tolist() == [[5], [7], [6]]
    assert decoder.column.tolist() == [7] and decoder.index.tolist() == [2]


def test_greedy_tokens_are_generates(model, tokenizer):
    ids, mask = left_padded_ids([encode_prompt(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        reference = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                                   pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1]:]
        got = decode(model, ids, mask, 12, greedy_pick, tokenizer.pad_token_id, end_ids(model), graph=False)
    assert len(set(map(tuple, reference.tolist()))) == len(PROMPTS)  # the rows differ: a mixed-up row would show
    assert torch.equal(got[:, :reference.shape[1]], reference)


def test_samples_are_generates_under_the_same_seed(model, tokenizer):
    """k copies of each prompt after one prefill: the draws of generate on the prompts repeated k times."""
    ids, mask = left_padded_ids([encode_prompt(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        torch.manual_seed(7)
        reference = model.generate(input_ids=ids.repeat_interleave(3, 0), attention_mask=mask.repeat_interleave(3, 0),
                                   do_sample=True, top_k=0, top_p=1.0, temperature=0.85, max_new_tokens=10,
                                   pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1]:]
        torch.manual_seed(7)
        got = decode(model, ids, mask, 10, sampled_pick(0.85), tokenizer.pad_token_id, end_ids(model), copies=3,
                     graph=False)
    assert got.shape == (len(PROMPTS) * 3, 10)
    assert torch.equal(got[:, :reference.shape[1]], reference)


def test_a_generation_config_with_processors_generates_through_generate(model, tokenizer, monkeypatch, caplog):
    """A repetition penalty in the model's generation config: generate applies it, the loop would not; the static path
    gives generate's answers and says why in the log."""
    monkeypatch.setattr(model.generation_config, "repetition_penalty", 1.5)
    monkeypatch.setattr(longctx, "uses_static_cache", lambda model, wanted: wanted)
    monkeypatch.setattr(longctx, "decode", lambda *a, **k: pytest.fail("decoded without the penalty"))
    decoding.say_processors.cache_clear()
    with caplog.at_level(logging.INFO, logger=decoding.__name__):
        static = greedy_answers(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, static_cache=True)
    assert static == greedy_answers(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4)
    assert "the model has repetition_penalty, which" in caplog.text
    monkeypatch.undo()
    assert plain_decoding(model)


@pytest.mark.parametrize("eos, expected", [(2, [2]), ([2, 5], [2, 5]), (None, [])])
def test_end_ids_as_generate_reads_them(model, monkeypatch, eos, expected):
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    assert end_ids(model) == expected


@pytest.mark.parametrize("settings, full", [
    ({}, True),  # Llama: no window
    ({"sliding_window": 4096, "use_sliding_window": False}, True),  # Qwen2 as shipped
    ({"sliding_window": 4096}, False),  # a Mistral-style window
    ({"layer_types": ["full_attention", "sliding_attention"]}, False),
    ({"layer_types": ["full_attention", "full_attention"], "sliding_window": 4096}, True),
])
def test_a_sliding_window_generates_through_generate(model, monkeypatch, settings, full):
    """The loop's one mask lets every layer see the whole cache; a model with a window generates as generate does."""
    for name, value in settings.items():
        monkeypatch.setattr(model.config, name, value, raising=False)
    assert decoding.full_attention(model.config) is full
    assert plain_decoding(model) is full
