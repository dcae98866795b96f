"""Long-context evaluation: cases by length and depth, greedy answers, the score table, the plots."""
import math

import pytest

from solopo.eval.longctx import EvalCase, EvalSettings, format_table, greedy_answers, score_table
from solopo.eval.plots import accuracy_vs_length, depth_heatmap


def case(length, depth, answers=("Quorath",)):
    return EvalCase("q", answers, length, depth, "prompt")


def test_score_table_by_hand():
    """short: 1 of 2 right; 1024 at depth 0: 1 of 1; 1024 at depth 1: 0 of 1.
    by_length: short 0.5, 1024 0.5; average 2/4; average_long 1/2."""
    cases = [case("short", "-"), case("short", "-"), case("1024", "0"), case("1024", "1")]
    answers = ["It is Quorath.", "Zenna", "quorath", "the city of Velm"]
    table = score_table(cases, answers)
    assert table["by_length"] == {"short": 0.5, "1024": 0.5}
    assert table["average"] == 0.5 and table["average_long"] == 0.5
    cell = next(c for c in table["cells"] if c["length"] == "1024" and c["depth"] == "0")
    assert cell == {"length": "1024", "depth": "0", "sub_em": 1.0, "f1": 1.0, "n": 1}
    short = next(c for c in table["cells"] if c["length"] == "short")
    assert short["f1"] == pytest.approx((2 * (1 / 3) * 1 / (1 / 3 + 1) + 0) / 2)  # "it is quorath" vs "quorath"


def test_format_table():
    table = {"by_length": {"short": 0.5, "1024": 0.25}, "average_long": 0.25}
    text = format_table({"base": table, "trained": table})
    assert "| model | short | 1024 | avg long |" in text and "| trained | 50.0 | 25.0 | 25.0 |" in text


def test_bad_depths():
    with pytest.raises(ValueError, match="depths must lie in"):
        EvalSettings(depths=(0.5, 1.5))


def test_greedy_answers_are_deterministic_and_keep_order(tiny_model, tokenizer):
    prompts = ["A much longer question about where someone was born?", "Why?", "Who?"]
    first = greedy_answers(tiny_model, tokenizer, prompts, max_new_tokens=5, batch_size=2)
    assert len(first) == 3 and first == greedy_answers(tiny_model, tokenizer, prompts, max_new_tokens=5, batch_size=3)
    alone = greedy_answers(tiny_model, tokenizer, prompts[1:2], max_new_tokens=5, batch_size=1)
    assert alone == first[1:2]  # left padding in a batch does not change an answer


def test_plots_are_written(tmp_path):
    cases = [case("short", "-"), case("512", "0"), case("512", "0.5"), case("1024", "0"), case("1024", "0.5")]
    table = score_table(cases, ["Quorath", "no", "Quorath", "no", "no"])
    line = accuracy_vs_length({"base": table, "trained": table}, tmp_path / "acc.png")
    heat = depth_heatmap(table, tmp_path / "heat.png")
    for path in (line, heat):
        assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    assert all(math.isfinite(v) for v in table["by_length"].values())


def test_cases_cover_every_length_and_depth(tokenizer):
    from solopo.data.world import qa_items
    from solopo.eval.longctx import build_cases

    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = qa_items(0, 0, n_test=2, seed=3)
    settings = EvalSettings(lengths=("short", 512, 1024, 4096), depths=(0.0, 1.0))
    cases = build_cases(splits.test, settings, count, splits.test_distractors, max_length=2048)
    assert len(cases) == 2 * (1 + 2 * 2)  # 4096 does not fit a 2048-token model and is left out
    for c in cases:
        if c.length != "short":
            assert abs(count(c.prompt) - int(c.length)) <= 0.02 * int(c.length)
    item = splits.test[0]
    start = next(c for c in cases if c.item_id == item.id and c.length == "1024" and c.depth == "0")
    end = next(c for c in cases if c.item_id == item.id and c.length == "1024" and c.depth == "1")
    first = min(start.prompt.index(p) for p in item.relevant)
    assert first == 0 and min(end.prompt.index(p) for p in item.relevant) > len(end.prompt) // 2
    assert cases == build_cases(splits.test, settings, count, splits.test_distractors, max_length=2048)


def test_lengths_the_distractors_cannot_reach_are_left_out(tokenizer, caplog):
    from solopo.data.schema import QAItem
    from solopo.eval.longctx import build_cases

    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    item = QAItem("x", "Who founded Velm Works?", ("Arin Tesk",), ("Velm Works was founded by Arin Tesk.",))
    cases = build_cases([item], EvalSettings(lengths=("short", 2048), depths=(0.0,)), count, ("Filler text.",) * 5, 8192)
    assert [c.length for c in cases] == ["short"] and "1 evaluation contexts left out" in caplog.text


def test_longbench_items_are_asked_once_at_their_own_length(tokenizer, tmp_path):
    from pathlib import Path

    from solopo.data.formats import longbench
    from solopo.eval.longctx import build_cases, length_bucket
    from solopo.eval.runner import eval_items

    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = longbench.load(str(Path(__file__).parent / "fixtures" / "longbench.jsonl"), n_val=2)
    items, pool = eval_items(splits, 2)
    cases = build_cases(items, EvalSettings(), count, pool, max_length=8192)
    assert len(cases) == 2 and {c.depth for c in cases} == {"-"} and {c.length for c in cases} == {"0-4k"}
    assert items[0].context in cases[0].prompt or items[0].context in cases[1].prompt
    assert [length_bucket(n) for n in (100, 4096, 4097, 9000, 20000)] == ["0-4k", "0-4k", "4-8k", "8-16k", "16-32k"]
