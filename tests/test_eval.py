"""Long-context evaluation: cases by length and depth, greedy answers, the score table, the plots."""
import math
from dataclasses import replace

import pytest

from solopo.eval.longctx import (EvalCase, changes, format_table, greedy_answers, score_columns, score_rows,
                                 score_table)
from solopo.report.plots import accuracy_vs_length, by_length, depth_grid, depth_heatmap
from solopo.report.stats import Z95, wilson

from conftest import EVAL, SAMPLING


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
    assert cell == {"length": "1024", "depth": "0", "sub_em": 1.0, "f1": 1.0, "score": 1.0, "n": 1,
                    "ci95": [pytest.approx(1 / (1 + Z95 ** 2)), 1.0]}  # Wilson at 1 of 1: [1 / (1 + z^2), 1]
    assert table["n_by_length"] == {"short": 2, "1024": 2} and table["n_long"] == 2
    assert table["ci95_long"] == pytest.approx(list(wilson(1, 2)))
    assert [s[1:] for s in score_rows(table)] == [["short", "-", 1.0], ["short", "-", 0.0], ["1024", "0", 1.0],
                                                  ["1024", "1", 0.0]]
    short = next(c for c in table["cells"] if c["length"] == "short")
    assert short["f1"] == pytest.approx((2 * (1 / 3) * 1 / (1 / 3 + 1) + 0) / 2)  # "it is quorath" vs "quorath"


def test_per_case_scores_are_kept_in_columns_and_read_back_in_order():
    """200 questions x 10 cases: the columns hold every row, in order, in under a third of the row list's bytes; a
    table written before the columns (a row list) reads the same, and pairs with a new one in changes."""
    import json

    lengths = [("short", "-")] + [(n, d) for n in ("1024", "2048", "4096") for d in ("0", "0.5", "1")]
    rows = [[f"test:employer.founder:Person {q}", n, d, float((q + i) % 3 == 0)] for q in range(200)
            for i, (n, d) in enumerate(lengths)]
    columns = score_columns(rows)
    assert score_rows({"scores": columns}) == rows and score_rows({"scores": rows}) == rows
    assert columns["items"][:2] == ["test:employer.founder:Person 0", "test:employer.founder:Person 1"]
    assert columns["cases"] == [list(c) for c in lengths] and columns["rows"][11] == [1, 1, 0.0]
    assert len(json.dumps(columns)) * 3 < len(json.dumps(rows))
    old, new = {"scores": rows}, {"scores": score_columns([[*r[:3], 1.0] for r in rows])}
    assert changes(old, new)["short"].n == 200 and changes(old, new)["avg_long"].n == 1800
    assert changes(old, {"scores": score_columns(rows[1:])}) is None  # not the same cases


def test_format_table_gives_n_intervals_and_changes_within_them():
    """3 of 6 right at short: Wilson [18.8, 81.2]; 1 of 4 at 1024: [4.6, 69.9]. The trained model gets one more
    1024 case right (b = 0, c = 1 of n = 4): +25.0 points; Agresti-Min: b' = 1/2, c' = 3/2, n' = 6, centre 1/6,
    half-width 1.96 * sqrt(2 - 1/6) / 6 = 0.442, so [-28, +61] holds 0: no measured change. Short is unchanged:
    b' = c' = 1/2, n' = 8, half-width 1.96 / 8 = 0.245, [-24, +24]."""
    cases = [case("short", "-")] * 6 + [case("1024", "0")] * 4
    base = score_table(cases, ["Quorath"] * 3 + ["no"] * 3 + ["Quorath"] + ["no"] * 3)
    trained = score_table(cases, ["Quorath"] * 3 + ["no"] * 3 + ["Quorath"] * 2 + ["no"] * 2)
    text = format_table({"base": base, "trained": trained})
    assert "| model | short | 1024 | avg long |" in text
    assert "| base | 50.0 [19, 81] n=6 | 25.0 [5, 70] n=4 | 25.0 [5, 70] n=4 |" in text
    assert ("trained - base, sub-EM points [95% interval] on the same cases: short +0.0 [-24, +24] n=6 (within the "
            "interval: no measured change); 1024 +25.0 [-28, +61] n=4 (within the interval: no measured change); "
            "avg long +25.0 [-28, +61] n=4 (within the interval: no measured change)"
            in text)


def test_the_depth_grid_and_labels_follow_the_configured_scorer():
    """With token F1 as the scorer, "It is Quorath" scores 2 * (1/3 * 1) / (1/3 + 1) = 0.5 (sub-EM 1), "Quor" 0 (and
    sub-EM 0): the heatmap shows the scorer's 50 and 0, as the tables do, never the sub-EM column."""
    from solopo.scoring import TokenF1, score_name

    cases = [case("256", "0"), case("256", "1")]
    table = score_table(cases, ["It is Quorath", "Quor"], TokenF1())
    assert [c["sub_em"] for c in table["cells"]] == [1.0, 0.0]
    assert depth_grid(table) == (["256"], ["0", "1"], [[pytest.approx(50.0), 0.0]])
    assert score_name(table) == "token F1" and score_name({}) == "sub-EM"  # a table from before tables named one
    text = format_table({"base": table, "trained": table})
    assert "trained - base, token F1 points [95% interval]" in text


def test_bad_depths():
    with pytest.raises(ValueError, match=r"depths=\[0.5,1.5\]: each depth must be a number in \[0, 1\]"):
        replace(EVAL, depths=(0.5, 1.5))


def test_greedy_answers_are_deterministic_and_keep_order(tiny_model, tokenizer):
    prompts = ["A much longer question about where someone was born?", "Why?", "Who?"]
    first = greedy_answers(tiny_model, tokenizer, prompts, max_new_tokens=5, batch_size=2)
    assert len(first) == 3 and first == greedy_answers(tiny_model, tokenizer, prompts, max_new_tokens=5, batch_size=3)
    alone = greedy_answers(tiny_model, tokenizer, prompts[1:2], max_new_tokens=5, batch_size=1)
    assert alone == first[1:2]  # left padding in a batch does not change an answer


def test_plots_are_written(tmp_path):
    cases = [case("short", "-"), case("512", "0"), case("512", "0.5"), case("1024", "0"), case("1024", "0.5")]
    table = score_table(cases, ["Quorath", "no", "Quorath", "no", "no"])
    line = accuracy_vs_length({"QA": {"base": by_length(table), "trained": by_length(table)}}, tmp_path / "acc.png")
    heat = depth_heatmap(table, tmp_path / "heat.png")
    for path in (line, heat):
        assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    assert all(math.isfinite(v) for v in table["by_length"].values())


def test_cases_cover_every_length_and_depth(tokenizer):
    from solopo.data.world import qa_items
    from solopo.eval.longctx import build_cases

    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = qa_items(0, 0, n_test=2, seed=3)
    settings = replace(EVAL, lengths=("short", 512, 1024, 4096), depths=(0.0, 1.0))
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


def test_a_case_does_not_depend_on_the_other_lengths_and_depths_asked(tokenizer):
    """An evaluation at the evidence alone and 1024 tokens asks the same 1024-token contexts as one that also asks 512
    (the decisive study's ablations are evaluated at fewer lengths than its main rows, paired on the shared cases)."""
    from solopo.data.world import qa_items
    from solopo.eval.longctx import build_cases

    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = qa_items(0, 0, n_test=2, seed=3)
    every = build_cases(splits.test, replace(EVAL, lengths=("short", 512, 1024), depths=(0.0, 0.5)), count,
                        splits.test_distractors, max_length=2048)
    fewer = build_cases(splits.test, replace(EVAL, lengths=("short", 1024), depths=(0.5,)), count,
                        splits.test_distractors, max_length=2048)
    assert fewer == [c for c in every if c.length == "short" or (c.length, c.depth) == ("1024", "0.5")]


def test_lengths_the_distractors_cannot_reach_are_left_out(tokenizer, caplog):
    from solopo.data.schema import QAItem
    from solopo.eval.longctx import build_cases

    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    item = QAItem("x", "Who founded Velm Works?", ("Arin Tesk",), ("Velm Works was founded by Arin Tesk.",))
    cases = build_cases([item], replace(EVAL, lengths=("short", 2048), depths=(0.0,)), count, ("Filler text.",) * 5,
                        8192)
    assert [c.length for c in cases] == ["short"] and "1 evaluation contexts left out" in caplog.text


def test_longbench_items_are_asked_once_at_their_own_length(tokenizer, tmp_path):
    from pathlib import Path

    from solopo.data.formats import longbench
    from solopo.eval.longctx import build_cases, length_bucket
    from solopo.eval.runner import eval_items

    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = longbench.load(str(Path(__file__).parent / "fixtures" / "longbench.jsonl"), n_val=2)
    items, pool = eval_items(splits, 2)
    cases = build_cases(items, replace(EVAL, lengths=("short", 1024, 2048, 4096, 8192)), count, pool,
                        max_length=8192)
    assert len(cases) == 2 and {c.depth for c in cases} == {"-"} and {c.length for c in cases} == {"0-4k"}
    assert items[0].context in cases[0].prompt or items[0].context in cases[1].prompt
    assert [length_bucket(n) for n in (100, 4096, 4097, 9000, 20000)] == ["0-4k", "0-4k", "4-8k", "8-16k", "16-32k"]


def stand_in_vllm(answer_of, calls):
    """A vllm module for CPU tests: LLM.generate answers each token-id prompt with ``answer_of(ids)`` and records
    the engine arguments, the sampling parameters and whether the weights directory held a model."""
    import os
    import types

    class LLM:
        def __init__(self, model, seed, **engine_args):
            calls.update(model=model, seed=seed, engine_args=engine_args,
                         weights_written=os.path.isfile(os.path.join(model, "config.json")))

        def generate(self, prompts, params):
            calls["prompts"] = prompts
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" {answer_of(p['prompt_token_ids'])}\n")])
                    for p in prompts]

    return types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **params: calls.setdefault("params", params))


def test_vllm_engine_gives_the_table_of_the_transformers_engine(tiny_model, tokenizer, monkeypatch):
    """A stand-in vLLM that answers each prompt as the transformers engine did yields the same table; it gets the
    same token ids, greedy decoding (temperature 0) of eval.max_new_tokens, and the weights of the model in memory."""
    import os
    import sys

    from solopo.data.tokenize import encode_prompt, token_counter
    from solopo.data.world import qa_items
    from solopo.eval.longctx import build_cases, evaluate

    splits = qa_items(0, 0, n_test=2, seed=3)
    settings = replace(EVAL, lengths=("short", 256), depths=(0.0, 1.0), max_new_tokens=4)
    args = (tokenizer, splits.test, splits.test_distractors)
    count = token_counter(tokenizer)
    expected = evaluate(tiny_model, *args, settings, count, max_length=2048)
    cases = build_cases(splits.test, settings, count, splits.test_distractors, 2048)
    answers = [example["answer"] for example in expected["examples"]]  # one per case, in order
    by_ids = {tuple(encode_prompt(tokenizer, c.prompt)): a for c, a in zip(cases, answers)}
    calls = {}
    monkeypatch.setitem(sys.modules, "vllm", stand_in_vllm(lambda ids: by_ids[tuple(ids)], calls))
    vllm_settings = replace(EVAL, lengths=("short", 256), depths=(0.0, 1.0), max_new_tokens=4, engine="vllm")
    table = evaluate(tiny_model, *args, vllm_settings, count, max_length=2048, engine_args={"gpu_memory_utilization": 0.4})
    assert table == expected
    assert len(calls["prompts"]) == len(cases) == 6
    assert calls["params"] == {"n": 1, "temperature": 0.0, "max_tokens": 4}
    assert calls["engine_args"] == {"max_model_len": 2048, "gpu_memory_utilization": 0.4}
    assert calls["weights_written"] and not os.path.exists(calls["model"])  # written for the engine, then removed


def test_vllm_engine_without_vllm_stops_in_one_line(tiny_model, tokenizer, monkeypatch):
    import sys

    from hydra import compose, initialize_config_dir

    from conftest import ROOT
    from solopo.eval.longctx import answer_all
    from solopo.settings.build import ConfigError, build_settings

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails, as where it is not installed
    with pytest.raises(RuntimeError, match=r"^eval.engine=vllm but vllm is not installed \(pip install vllm\)$"):
        answer_all(tiny_model, tokenizer, ["Why?"], replace(EVAL, engine="vllm"), max_length=512)
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "eval.engine=vllm"])
    with pytest.raises(ConfigError, match="^eval.engine=vllm but vllm is not installed"):
        build_settings(cfg)
    with pytest.raises(ValueError, match="engine=sglang: choose one of"):
        replace(EVAL, engine="sglang")


def test_evaluation_prompts_with_the_training_template(tokenizer):
    """data.template reaches the evaluation: cot prompts are the direct ones with the cot instruction."""
    from hydra import compose, initialize_config_dir

    from conftest import ROOT
    from solopo.data.contexts import INSTRUCTIONS
    from solopo.data.world import qa_items
    from solopo.eval.longctx import build_cases
    from solopo.settings.build import build_settings

    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "data.template=cot"])
        # a passages file (schema A') builds its prompts with the template too: data=pairs holds the key
        pairs = compose("config", overrides=["experiment=smoke", "data=pairs", "data.path=x.jsonl", "data.template=cot"])
    assert build_settings(cfg).eval.template == "cot" == build_settings(pairs, training=False).eval.template
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    splits = qa_items(0, 0, n_test=1, seed=3)
    direct, cot = (build_cases(splits.test, replace(EVAL, lengths=("short", 256), depths=(0.5,), template=t), count,
                               splits.test_distractors, 2048) for t in ("direct", "cot"))
    instruction = {t: INSTRUCTIONS[t].format(question=splits.test[0].question) for t in INSTRUCTIONS}
    assert [c.length for c in cot] == ["short", "256"] and all(c.prompt.endswith(instruction["cot"]) for c in cot)
    assert cot[0].prompt.replace(instruction["cot"], instruction["direct"]) == direct[0].prompt
    with pytest.raises(ValueError, match="template=essay: choose one of direct, cot"):
        replace(EVAL, template="essay")


def test_the_cache_key_holds_the_engine_the_template_the_precision_and_the_weights_dtype():
    from solopo.data.schema import QAItem
    from solopo.eval.runner import cache_key

    items = [QAItem("x", "Who?", ("A",), ("A did it.",))]
    keys = {cache_key("m", items, (), replace(EVAL, engine=e, template=t, precision=p, half_weights=h), 2048)
            for e in ("transformers", "vllm") for t in ("direct", "cot") for p in ("32-true", "bf16-mixed")
            for h in (True, False)}
    assert len(keys) == 16


def test_cot_answers_are_scored_as_the_pair_sampler_scores_samples(tmp_path, monkeypatch):
    """A reasoned answer is scored whole by both: the share of correct samples equals the evaluation's sub-EM."""
    from solopo.generation import sampling
    from solopo.cache import DiskCache
    from solopo.generation.sampling import sample_pairs
    from solopo.data.schema import PreferenceExample

    texts = ["Velm Works is in Quorath, so the answer is Quorath.", "It was founded in Zenna. Answer: Zenna.",
             "The documents say Quorath."]
    examples = [PreferenceExample(f"q{i}", "Where?", ("Quorath",), f"short {i}", f"long {i}", "", "") for i in range(3)]
    monkeypatch.setattr(sampling, "generate", lambda model, tok, prompts, settings, desc="": [
        [(texts[int(p.split()[1])], True)] for p in prompts])
    _, summary = sample_pairs(examples, None, None, replace(SAMPLING, k=1), "short", "m", DiskCache(tmp_path, "pairs"))
    table = score_table([case("short", "-") for _ in texts], texts)
    assert summary["share_correct"] == table["average"] == pytest.approx(2 / 3)


class FakeWandbLogger:
    def __init__(self):
        self.metrics, self.tables, self.images, self.saved = {}, {}, {}, False
        self.experiment = type("Run", (), {"summary": {}})()

    def log_metrics(self, metrics):
        self.metrics.update(metrics)

    def log_table(self, key, columns, data):
        self.tables[key] = (columns, data)

    def log_image(self, key, images):
        self.images[key] = images

    def save(self):
        self.saved = True


def test_the_table_plots_and_headline_numbers_reach_the_run_summary(tmp_path):
    from solopo.eval.runner import log_to, write_outputs

    base = score_table([case("short", "-"), case("256", "0"), case("256", "1")], ["Quorath", "no", "no"])
    trained = score_table([case("short", "-"), case("256", "0"), case("256", "1")], ["Quorath", "Quorath", "no"])
    tables = {"base": base, "trained": trained}
    outputs = write_outputs(tables, tmp_path)
    logger = FakeWandbLogger()
    log_to(logger, tables, outputs["plots"])
    # in points, as a benchmark's summary (LongBench, RULER) is: a sweep's runs compare on one scale
    assert logger.experiment.summary == {"eval/base/avg_long": 0.0, "eval/base/average": pytest.approx(100 / 3),
                                         "eval/trained/avg_long": 50.0, "eval/trained/average": pytest.approx(200 / 3),
                                         "eval/gain/avg_long": 50.0, "eval/gain/avg_long_low": pytest.approx(-39.82, abs=1e-2),
                                         "eval/gain/avg_long_high": pytest.approx(89.82, abs=1e-2)}
    columns, rows = logger.tables["eval/sub_em_by_length"]
    assert columns[:5] == ["model", "short", "short low", "short high", "short n"] and columns[-4:] == [
        "avg long", "avg long low", "avg long high", "avg long n"]
    assert rows[1][0] == "trained" and rows[1][-4:] == [50.0, *(100 * end for end in wilson(1, 2)), 2]
    assert set(logger.images) == {"eval/eval_accuracy_vs_length", "eval/eval_depth_base", "eval/eval_depth_trained"}
    assert logger.metrics["eval/trained/sub_em@256"] == 50.0 and logger.saved
    assert logger.metrics["eval/trained/avg_long"] == 50.0 and logger.metrics["eval/gain/avg_long"] == 50.0
    # results.json's eval_changes: in points, as eval_summary (one more 256 case right of 2: +50)
    change = outputs["changes"]["trained - base"]["avg_long"]
    assert change["difference"] == 50.0 and change["n"] == 2
    assert (change["low"], change["high"]) == (pytest.approx(-39.82, abs=1e-2), pytest.approx(89.82, abs=1e-2))
