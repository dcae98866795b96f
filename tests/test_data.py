"""The built-in QA world, contexts, gold pairs, tokenisation and collation."""
import dataclasses
import itertools
import json
import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from solopo.data.collate import PairCollator
from solopo.data.contexts import SEPARATOR, build_contexts
from solopo.data.formats import longbench, pairs as pair_files
from solopo.data.pairs import build_examples, to_examples
from solopo.data.schema import PreferenceExample, QAItem, Splits, Turn
from solopo.data.tokenize import encode_prompt, encode_response, tokenize_examples
from solopo.data.world import qa_items, split_questions

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def count_tokens(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def dump(splits: Splits) -> str:
    return json.dumps(dataclasses.asdict(splits))


def test_world_is_deterministic_byte_for_byte():
    first = dump(qa_items(30, 6, 3, n_test=6))  # n_train, n_val, seed stay positional
    assert first == dump(qa_items(30, 6, 3, n_test=6))
    assert first != dump(qa_items(30, 6, 4, n_test=6))


def test_splits_share_no_question_entity_or_passage():
    counts = {"train": 60, "val": 30, "test": 30}
    splits = qa_items(60, 30, seed=5, n_test=30)
    worlds = {split: split_questions(5, split, n)[0] for split, n in counts.items()}
    pools = {"train": splits.distractors, "val": splits.val_distractors, "test": splits.test_distractors}
    items = {"train": splits.train, "val": splits.val, "test": splits.test}
    for split, n in counts.items():
        assert pools[split] == tuple(worlds[split].passages.values())  # each split pads from its own world
        assert len({item.question for item in items[split]}) == len(items[split]) == n
        assert all(set(item.relevant) <= set(pools[split]) for item in items[split])
    for a, b in itertools.combinations(counts, 2):
        assert not set(worlds[a].kinds) & set(worlds[b].kinds)
        assert not set(pools[a]) & set(pools[b])
        assert not {item.question for item in items[a]} & {item.question for item in items[b]}


def test_splits_not_asked_for_are_empty():
    splits = qa_items(4, 0)
    assert splits.val == splits.test == [] and splits.val_distractors == splits.test_distractors == ()
    with pytest.raises(ValueError, match="item counts must be >= 0"):
        qa_items(4, -1)


def test_five_thousand_items_generate_in_seconds():
    started = time.perf_counter()
    splits = qa_items(5000, 0, seed=1)
    assert time.perf_counter() - started < 10
    assert len({item.question for item in splits.train}) == 5000


def test_questions_of_one_two_and_three_hops_are_answered_by_their_chain():
    world, questions = split_questions(1, "train", 90)
    assert Counter(len(q.item.relevant) for q in questions) == {1: 30, 2: 30, 3: 30}
    for q in questions:
        item, answer = q.item, q.item.answers[0]
        assert len(set(q.chain)) == len(q.chain) and item.relevant == tuple(world.passages[e] for e in q.chain)
        # each hop's entity is named in the passage before it, and the answer in the last one
        for entity, relation, following in zip(q.chain, q.relations, q.chain[1:]):
            assert world.facts[entity][relation] == following and following in world.passages[entity]
        assert world.facts[q.chain[-1]][q.relations[-1]] == answer
        assert re.search(rf"\b{re.escape(answer)}\b", item.relevant[-1])
        assert item.wrong_answers and answer not in item.wrong_answers
        assert len(set(item.wrong_answers)) == len(item.wrong_answers)


def test_each_passage_describes_its_own_entity():
    """A passage states its entity's facts and names other entities only as values of them."""
    world, _ = split_questions(2, "val", 1)
    names = re.compile("|".join(rf"\b{re.escape(name)}\b" for name in sorted(world.kinds, key=len, reverse=True)))
    for entity, passage in world.passages.items():
        assert all(value in passage for value in world.facts[entity].values())
        assert set(names.findall(passage)) <= {entity, *world.facts[entity].values()}


def test_no_distractor_states_the_asked_fact():
    """The asked entity has one passage, on the chain; any other passage of the split's pool names it
    only as the value of a fact about its own entity ("works for X", "founded by X")."""
    world, questions = split_questions(3, "train", 30)
    entity_of = {passage: entity for entity, passage in world.passages.items()}
    for q in questions:
        subject = re.compile(rf"\b{re.escape(q.chain[-1])}\b")
        assert entity_of[q.item.relevant[-1]] == q.chain[-1]
        for passage in world.passages.values():
            if passage not in q.item.relevant and subject.search(passage):
                owner = entity_of[passage]
                assert owner != q.chain[-1] and q.chain[-1] in world.facts[owner].values()


@pytest.mark.parametrize("long_len", [512, 1024, 2048, 4096, 8192])
def test_long_context_lands_within_two_percent_of_long_len(long_len, count_tokens):
    splits = qa_items(3, 0, seed=0)  # one question of each hop count
    pool = set(splits.distractors)
    for index, item in enumerate(splits.train):
        ctx = build_contexts(item, long_len, count_tokens, random.Random(index), splits.distractors)
        assert abs(count_tokens(ctx.long) - long_len) <= 0.02 * long_len
        for passage in item.relevant:
            assert ctx.short.count(passage) == 1 and ctx.long.count(passage) == 1
        assert count_tokens(ctx.short) < count_tokens(ctx.long)
        assert ctx.short.endswith(item.question) and ctx.long.endswith(item.question)
        assert len(ctx.evidence_depths) == len(item.relevant) and all(0 <= d <= 1 for d in ctx.evidence_depths)
        # the padding: whole passages of the pool, and at most one start of a passage cut at a word boundary
        padding = [p for p in ctx.long.split(SEPARATOR)[:-1] if p not in item.relevant]
        cut = [p for p in padding if p not in pool]
        assert len(cut) <= 1
        assert all(any(whole.startswith(p + " ") for whole in pool) for p in cut)


def test_long_context_shorter_than_the_evidence_is_an_error(count_tokens):
    splits = qa_items(1, 0)
    with pytest.raises(ValueError, match="shorter than its short context"):
        build_contexts(splits.train[0], 10, count_tokens, random.Random(0), splits.distractors)


def test_too_few_distractors_is_an_error(count_tokens):
    item = QAItem("x", "Who?", ("A",), ("A did it.",), irrelevant=("B did not.",))
    with pytest.raises(ValueError, match="cannot fill 500 tokens"):
        build_contexts(item, 500, count_tokens, random.Random(0))


@pytest.mark.parametrize("short_len, long_len", [(256, 2048), (512, 4096)])
def test_short_context_of_a_chosen_length(short_len, long_len, count_tokens):
    """x_short: the evidence, verbatim and once, among distractors up to ~short_len tokens; x_long holds
    every passage of x_short in the same order (x_short is a subsequence of x_long) and reaches long_len."""
    splits = qa_items(3, 0, seed=1)  # one question of each hop count
    for index, item in enumerate(splits.train):
        ctx = build_contexts(item, long_len, count_tokens, random.Random(index), splits.distractors, short_len=short_len)
        assert abs(count_tokens(ctx.short) - short_len) <= 0.02 * short_len
        assert abs(count_tokens(ctx.long) - long_len) <= 0.02 * long_len
        for passage in item.relevant:
            assert ctx.short.count(passage) == 1 and ctx.long.count(passage) == 1
        short_passages, long_passages = ctx.short.split(SEPARATOR)[:-1], ctx.long.split(SEPARATOR)[:-1]
        assert len(short_passages) > len(item.relevant)  # distractors were added
        position = iter(long_passages)
        assert all(p in position for p in short_passages)  # in order, each after the one before
        assert len(ctx.evidence_depths) == len(item.relevant) and all(0 <= d <= 1 for d in ctx.evidence_depths)


def test_default_short_context_is_the_evidence_alone(count_tokens):
    splits = qa_items(3, 0, seed=1)
    for index, item in enumerate(splits.train):
        default = build_contexts(item, 1024, count_tokens, random.Random(index), splits.distractors)
        assert default == build_contexts(item, 1024, count_tokens, random.Random(index), splits.distractors,
                                         short_len=None)
        assert sorted(default.short.split(SEPARATOR)[:-1]) == sorted(item.relevant)
        # evidence alone longer than short_len: no distractor is added to x_short
        assert build_contexts(item, 1024, count_tokens, random.Random(index), splits.distractors,
                              short_len=16).short == default.short


def test_short_len_reaches_the_examples_and_must_stay_below_long_len(count_tokens):
    splits = qa_items(2, 0, seed=3)
    examples = build_examples(splits.train, 1024, count_tokens, pairs="gold", pool=splits.distractors, short_len=256)
    assert all(abs(count_tokens(e.prompt_short) - 256) <= 0.02 * 256 for e in examples)
    with pytest.raises(ValueError, match="short_len=1024 must be below long_len=1024"):
        build_examples(splits.train, 1024, count_tokens, pool=splits.distractors, short_len=1024)


def test_gold_pairs(count_tokens):
    splits = qa_items(5, 0, seed=2)
    items = splits.train
    examples = build_examples(items, 256, count_tokens, pairs="gold", seed=0, pool=splits.distractors)
    assert [e.chosen for e in examples] == [i.answers[0] for i in items]
    assert [e.rejected for e in examples] == [i.wrong_answers[0] for i in items]
    assert examples == build_examples(items, 256, count_tokens, pairs="gold", seed=0, pool=splits.distractors)


def test_gold_pairs_need_a_wrong_answer(count_tokens):
    item = QAItem("q7", "Who?", ("A",), ("A did it.",), irrelevant=("B did not.",) * 50)
    with pytest.raises(ValueError, match=r"item q7: its gold pair needs a wrong answer, and no other answer of the "
                                         r"data differs from its own \('A'\); give its record a 'rejected'"):
        build_examples([item], 40, count_tokens)
    with pytest.raises(ValueError, match="data.pairs='judged' is not available"):
        build_examples([item], 40, count_tokens, pairs="judged")


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
    with pytest.raises(ValueError, match="item x: .*cannot fill 500 tokens; set data.long_len to a length this data"):
        build_examples([item], 500, count_tokens)  # data.short_len, not set (data=pairs has no such key), is not named
    with pytest.raises(ValueError, match=r"cannot fill 500 tokens; set data.long_len \(and data.short_len\) to"):
        build_examples([item], 500, count_tokens, short_len=8)


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
    with pytest.raises(ValueError, match=r"^example e1: x_long is too long: \d+ tokens with the longer response, over "
                                         r"model.max_length=300 \(data.overlong=error; "):
        tokenize_examples(examples, tokenizer, max_length=300, overlong="error")


def test_an_overlong_pair_from_a_file_is_named_by_its_place_and_prompt(tokenizer, tmp_path):
    """A pair over model.max_length under data.overlong=error was named by its id alone: a file's record is named
    by its file and line, and the prompt that is too long by its context (plain PO data's one prompt as the prompt)."""
    long = "long " * 600
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [
        {"id": "a", "prompt_short": "short", "prompt_long": long, "chosen": "Yes", "rejected": "No"},
        {"id": "b", "prompt_short": long, "prompt_long": long + "more", "chosen": "Yes", "rejected": "No"}]))
    (a, b) = sorted(pair_files.load(str(path)).train, key=lambda ex: ex.id)
    plain = dataclasses.replace(b, prompt_long=b.prompt_short)
    for overlong, start in ((a, "line 1: x_long is too long: "), (b, "line 2: x_short and x_long are too long: "),
                            (plain, "line 2: the prompt is too long: ")):
        with pytest.raises(ValueError, match=f"^{re.escape(f'{path} {start}')}\\d+ tokens with the longer response"):
            tokenize_examples([overlong], tokenizer, max_length=300, overlong="error")


def test_a_context_over_the_tokenizers_own_limit_draws_no_warning_from_transformers(caplog):
    """transformers warned, before the run's own line, that a text over the tokenizer's model_max_length (8192 for the
    default model) "will result in indexing errors": not so here, where model.max_length is the limit solopo
    checks (data.overlong) and the tokenizer never truncates."""
    import logging

    from transformers.utils import logging as transformers_logging

    from conftest import TINY
    from solopo.models.loading import load_tokenizer

    tokenizer = load_tokenizer(TINY)  # its own: transformers warns once per tokenizer, and the module's is shared
    transformers_logging.enable_propagation()  # its loggers write to their own handler, which caplog does not see
    try:
        with caplog.at_level(logging.WARNING):
            assert len(encode_prompt(tokenizer, "long " * 9000)) > tokenizer.model_max_length
    finally:
        transformers_logging.disable_propagation()
    assert "indexing errors" not in caplog.text


def test_collator_pads_each_context_apart(tokenizer):
    pairs, _ = tokenize_examples([example(), example(prompt_long="long " * 40)], tokenizer, max_length=512)
    batch = PairCollator([("short", "chosen"), ("short", "rejected"), ("long", "chosen")], tokenizer.pad_token_id)(pairs)
    short, long = batch.groups["short"], batch.groups["long"]
    assert short.keys == (("short", "chosen"), ("short", "rejected"))
    assert long.keys == (("long", "chosen"),)
    assert short.input_ids.shape[0] == 4 and long.input_ids.shape[0] == 2
    assert short.input_ids.shape[1] < long.input_ids.shape[1]
    for i, (pair, name) in enumerate([(p, r) for r in ("chosen", "rejected") for p in pairs]):
        n = int(short.attention_mask[i].sum())
        assert short.input_ids[i, :n].tolist() == pair.prompts["short"] + pair.responses[name]
        assert short.input_ids[i, short.response_mask[i]].tolist() == pair.responses[name]
        assert torch.all(short.input_ids[i, n:] == tokenizer.pad_token_id)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_evidence_block_at_a_fixed_depth(depth, count_tokens):
    splits = qa_items(3, 0, seed=5)
    item = max(splits.train, key=lambda i: len(i.relevant))
    ctx = build_contexts(item, 1024, count_tokens, random.Random(0), splits.distractors, depth=depth)
    assert all(d == pytest.approx(ctx.evidence_depths[0], abs=0.1) for d in ctx.evidence_depths)  # one block
    assert ctx.evidence_depths[0] == pytest.approx(depth, abs=0.1)
    assert all(ctx.long.count(p) == 1 for p in item.relevant)


def test_prompt_templates(count_tokens):
    item = qa_items(1, 0).train[0]
    direct = build_contexts(item, 512, count_tokens, random.Random(0), qa_items(1, 0).distractors)
    cot = build_contexts(item, 512, count_tokens, random.Random(0), qa_items(1, 0).distractors, template="cot")
    assert "Reply with the answer only" in direct.short and "Think step by step" in cot.short
    assert cot.long.endswith(item.question) and direct.long.endswith(item.question)
    with pytest.raises(ValueError, match="unknown prompt template 'verbose'"):
        build_contexts(item, 512, count_tokens, random.Random(0), (), template="verbose")


def long_example(prompt_long, question="Who wrote Hamlet?"):
    return PreferenceExample("e1", question, ("Shakespeare",), "short ctx\n\nQuestion: Who wrote Hamlet?",
                             prompt_long, "Shakespeare", "Marlowe")


PASSAGES = [f"Passage {i}: " + "filler words " * 20 for i in range(20)]
INSTRUCTION = "Answer the question using the documents above.\nQuestion: Who wrote Hamlet?"


@pytest.mark.parametrize("side", ["middle", "left"])
def test_overlong_contexts_are_truncated_never_the_question_or_the_response(side, tokenizer, caplog):
    example = long_example("\n\n".join(PASSAGES + [INSTRUCTION]))
    pairs, counts = tokenize_examples([example], tokenizer, max_length=300, overlong="truncate", truncate=side)
    assert counts == Counter(truncated=1)
    assert f"truncated the context of 1 of 1 examples (data.truncate={side})" in caplog.text
    pair = pairs[0]
    assert len(pair.prompts["long"]) + max(map(len, pair.responses.values())) <= 300
    text = tokenizer.decode(pair.prompts["long"])
    assert text.endswith(INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n") and "Passage 19:" in text
    assert ("Passage 0:" in text) == (side == "middle")  # middle keeps the context's beginning and end
    assert pair.prompts["short"] == encode_prompt(tokenizer, example.prompt_short)
    assert pair.responses["chosen"] == encode_response(tokenizer, "Shakespeare")


def test_truncation_cuts_only_the_last_user_message_of_a_conversation(tokenizer):
    system = Turn("system", "You are terse.")
    example = long_example((system, Turn("user", "\n\n".join(PASSAGES + [INSTRUCTION]))))
    pairs, counts = tokenize_examples([example], tokenizer, max_length=300, overlong="truncate")
    text = tokenizer.decode(pairs[0].prompts["long"])
    assert counts == Counter(truncated=1) and "You are terse." in text and INSTRUCTION in text


def test_a_prompt_without_a_context_to_cut_is_skipped_and_counted(tokenizer):
    example = long_example("words " * 400, question="")  # one paragraph and no known question: nothing is context
    pairs, counts = tokenize_examples([example], tokenizer, max_length=300, overlong="truncate")
    assert pairs == [] and counts == Counter(over_max_length=1)
