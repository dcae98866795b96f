"""The built-in QA world, contexts, gold pairs, tokenisation and collation."""
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from solopo.data.collate import PairCollator
from solopo.data.contexts import build_contexts
from solopo.data.formats import longbench, pairs as pair_files
from solopo.data.pairs import build_examples, to_examples
from solopo.data.schema import PreferenceExample, QAItem
from solopo.data.tokenize import encode_prompt, tokenize_examples
from solopo.data.world import qa_items

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def count_tokens(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_world_is_deterministic_and_splits_are_disjoint():
    a, b = qa_items(20, 10, seed=3), qa_items(20, 10, seed=3)
    assert a == b
    assert qa_items(20, 10, seed=4).train != a.train
    train_questions = {i.question for i in a.train}
    assert len(train_questions) == 20
    assert not train_questions & {i.question for i in a.val}


def test_items_hold_their_answer_in_their_evidence():
    splits = qa_items(40, 0, seed=1)
    for item in splits.train:
        assert item.answers[0] not in item.wrong_answers
        assert any(item.answers[0] in p for p in item.relevant)
        assert set(item.relevant) <= set(splits.distractors)  # the pool is the whole world; contexts skip these


def test_world_refuses_more_questions_than_it_has():
    with pytest.raises(ValueError, match="has 320 questions"):
        qa_items(300, 100)


@pytest.mark.parametrize("long_len", [256, 1024, 2048])
def test_contexts_hold_the_evidence_and_reach_the_target_length(long_len, count_tokens):
    splits = qa_items(1, 0, seed=0)
    item = splits.train[0]
    ctx = build_contexts(item, long_len, count_tokens, random.Random(0), splits.distractors)
    for passage in item.relevant:
        assert ctx.short.count(passage) == 1 and ctx.long.count(passage) == 1
    assert abs(count_tokens(ctx.long) - long_len) <= 0.05 * long_len
    assert count_tokens(ctx.short) < count_tokens(ctx.long)
    assert ctx.short.endswith(item.question) and ctx.long.endswith(item.question)
    assert len(ctx.evidence_depths) == len(item.relevant) and all(0 <= d <= 1 for d in ctx.evidence_depths)


def test_long_context_shorter_than_the_evidence_is_an_error(count_tokens):
    splits = qa_items(1, 0)
    with pytest.raises(ValueError, match="shorter than its short context"):
        build_contexts(splits.train[0], 10, count_tokens, random.Random(0), splits.distractors)


def test_too_few_distractors_is_an_error(count_tokens):
    item = QAItem("x", "Who?", ("A",), ("A did it.",), irrelevant=("B did not.",))
    with pytest.raises(ValueError, match="cannot fill 500 tokens"):
        build_contexts(item, 500, count_tokens, random.Random(0))


def test_gold_pairs(count_tokens):
    splits = qa_items(5, 0, seed=2)
    items = splits.train
    examples = build_examples(items, 256, count_tokens, pairs="gold", seed=0, pool=splits.distractors)
    assert [e.chosen for e in examples] == [i.answers[0] for i in items]
    assert [e.rejected for e in examples] == [i.wrong_answers[0] for i in items]
    assert examples == build_examples(items, 256, count_tokens, pairs="gold", seed=0, pool=splits.distractors)


def test_gold_pairs_need_a_wrong_answer(count_tokens):
    item = QAItem("q7", "Who?", ("A",), ("A did it.",), irrelevant=("B did not.",) * 50)
    with pytest.raises(ValueError, match="item q7.*wrong_answers"):
        build_examples([item], 40, count_tokens)
    with pytest.raises(ValueError, match="data.pairs='sampled' is not available"):
        build_examples([item], 40, count_tokens, pairs="sampled")


def test_longbench_items_cannot_make_training_pairs(count_tokens):
    """LongBench keeps its evidence inside one context, so there is no x_short to build."""
    items = longbench.load(str(FIXTURES / "longbench.jsonl")).train
    with pytest.raises(ValueError, match=rf"item {items[0].id}: no relevant passages.*LongBench-style data .* "
                                         "is for evaluation, not training"):
        build_examples(items, 256, count_tokens)


def test_ready_made_pairs_pass_through_and_items_are_built(count_tokens):
    ready = pair_files.load(str(FIXTURES / "pairs.jsonl")).train
    assert to_examples(ready, 256, count_tokens) == ready
    splits = qa_items(3, 0, seed=2)
    assert to_examples(splits.train, 256, count_tokens, seed=1, pool=splits.distractors) == \
        build_examples(splits.train, 256, count_tokens, seed=1, pool=splits.distractors)


def test_a_split_mixing_pairs_and_items_is_an_error(count_tokens):
    ready, items = pair_files.load(str(FIXTURES / "pairs.jsonl")).train, qa_items(1, 0).train
    with pytest.raises(ValueError, match=rf"one kind only; found PreferenceExample \(item {ready[0].id}\), "
                                         rf"QAItem \(item {items[0].id}\)"):
        to_examples(ready + items, 256, count_tokens)


def test_unreachable_long_len_names_the_setting(count_tokens):
    item = QAItem("x", "Who?", ("A",), ("A did it.",), irrelevant=("B did not.",), wrong_answers=("B",))
    with pytest.raises(ValueError, match="item x: .*cannot fill 500 tokens; set data.long_len"):
        build_examples([item], 500, count_tokens)


def example(prompt_long="long " * 10):
    return PreferenceExample("e1", "q", ("A",), "short ctx", prompt_long, "Yes", "No")


def test_prompts_use_the_chat_template_and_responses_end_with_eos(tokenizer):
    ids = encode_prompt(tokenizer, "hello")
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    pairs, skipped = tokenize_examples([example()], tokenizer, max_length=512)
    assert pairs[0].responses["chosen"][-1] == tokenizer.eos_token_id and not skipped


def test_overlong_examples_are_skipped_and_counted_or_rejected(tokenizer, caplog):
    examples = [example(), example(prompt_long="long " * 600)]
    pairs, skipped = tokenize_examples(examples, tokenizer, max_length=300)
    assert len(pairs) == 1 and skipped == Counter(over_max_length=1)
    assert "skipped 1 of 2 examples" in caplog.text
    with pytest.raises(ValueError, match="example e1: .* exceed the model's max_length 300"):
        tokenize_examples(examples, tokenizer, max_length=300, overlong="error")


def test_collator_pads_each_context_apart(tokenizer):
    pairs, _ = tokenize_examples([example(), example(prompt_long="long " * 40)], tokenizer, max_length=512)
    batch = PairCollator([("short", "chosen"), ("short", "rejected"), ("long", "chosen")], tokenizer.pad_token_id)(pairs)
    assert batch["short"]["keys"] == (("short", "chosen"), ("short", "rejected"))
    assert batch["long"]["keys"] == (("long", "chosen"),)
    assert batch["short"]["input_ids"].shape[0] == 4 and batch["long"]["input_ids"].shape[0] == 2
    assert batch["short"]["input_ids"].shape[1] < batch["long"]["input_ids"].shape[1]
    for i, (pair, name) in enumerate([(p, r) for r in ("chosen", "rejected") for p in pairs]):
        row = batch["short"]
        n = int(row["attention_mask"][i].sum())
        assert row["input_ids"][i, :n].tolist() == pair.prompts["short"] + pair.responses[name]
        assert row["input_ids"][i, row["response_mask"][i]].tolist() == pair.responses[name]
        assert torch.all(row["input_ids"][i, n:] == tokenizer.pad_token_id)
