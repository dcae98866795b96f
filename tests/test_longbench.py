"""LongBench v1 QA and RULER-style QA: LongBench's templates and answer lengths, its middle truncation, its QA F1
checked by hand on fixtures, the table per subset and its average, and `python -m solopo.evaluate eval=longbench`."""
import json

from dataclasses import replace

import pytest

from solopo.data.formats import DataFileError
from solopo.eval import longbench
from solopo.eval.longbench import LONGBENCH_QA, LongBench, format_benchmark, middle_truncated, run_benchmark
from solopo.eval.ruler import RulerQA
from solopo.scoring import ExactMatch, TokenF1, f1
from solopo.report.stats import wilson
from solopo.settings.build import ConfigError
from conftest import EVAL
from in_process import call, run_here
from test_scoring import settings_of


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def longbench_folder(tmp_path):
    """Two questions per subset, in the official release's layout."""
    tmp_path.mkdir(exist_ok=True)
    for name in LONGBENCH_QA:
        write_jsonl(tmp_path / f"{name}.jsonl", [
            {"input": f"Where was {name} written?", "context": "Passage 1: ... New York City ...",
             "answers": ["New York City", "NYC"], "length": 9, "dataset": name, "language": "en",
             "all_classes": None, "_id": f"{name}-0"},
            {"input": "Who wrote it?", "context": "Passage 2: ... the cat ...", "answers": ["a cat on a mat"],
             "length": 5, "dataset": name, "language": "en", "all_classes": None, "_id": f"{name}-1"}])
    return tmp_path


def test_qa_f1_by_hand():
    """LongBench's QA F1 over its normalisation (lower case, punctuation and articles out, whitespace collapsed):
    "The cat sat on the mat." -> [cat, sat, on, mat]; gold "a cat on a mat" -> [cat, on, mat]: 3 shared,
    P = 3/4, R = 3/3, F1 = 2 * 3/4 / (7/4) = 6/7. Against ["dog", "a cat on a mat"] the best gold counts: 6/7.
    "New York" vs "New York City": P = 1, R = 2/3, F1 = 0.8; vs ["New York City", "NYC"] still 0.8."""
    assert f1("The cat sat on the mat.", ["a cat on a mat"]) == pytest.approx(6 / 7)
    assert f1("The cat sat on the mat.", ["dog", "a cat on a mat"]) == pytest.approx(6 / 7)
    assert f1("New York", ["New York City", "NYC"]) == pytest.approx(0.8)
    assert f1("the the", ["New York"]) == 0.0  # nothing left of the prediction: no shared token


# THUDM/LongBench, LongBench/config/dataset2prompt.json for the paper's six QA subsets, character for character (its
# "asconcisely" included): the shipped config must not drift from the prompts published scores were measured with.
_PASSAGES = ("Answer the question based on the given passages. Only give me the answer and do not output any other "
             "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given "
             "passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:")
_QASPER_RULE = ("as concisely as you can, using a single phrase or sentence if possible. If the question cannot be "
                "answered based on the information in the article, write \"unanswerable\". If the question is a yes/no "
                "question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.")
LONGBENCH_PROMPTS = {
    "narrativeqa": ("You are given a story, which can be either a novel or a movie script, and a question. Answer the "
                    "question asconcisely as you can, using a single phrase if possible. Do not provide any "
                    "explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as "
                    "you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: "
                    "{input}\n\nAnswer:"),
    "qasper": (f"You are given a scientific article and a question. Answer the question {_QASPER_RULE}\n\nArticle: "
               f"{{context}}\n\n Answer the question based on the above article {_QASPER_RULE}\n\nQuestion: "
               "{input}\n\nAnswer:"),
    "multifieldqa_en": ("Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following "
                        "question based on the above text, only give me the answer and do not output any other "
                        "words.\n\nQuestion: {input}\nAnswer:"),
    "hotpotqa": _PASSAGES, "2wikimqa": _PASSAGES, "musique": _PASSAGES,
}
# dataset2maxlen.json
LONGBENCH_MAX_NEW_TOKENS = {"narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32, "2wikimqa": 32,
                            "musique": 32}


def test_the_shipped_templates_and_answer_lengths_are_longbench_s():
    """conf/eval/longbench.yaml holds LongBench's dataset2prompt and dataset2maxlen for the paper's six QA subsets, and
    every one is scored by QA F1 (eval.py's dataset2metric: qa_f1_score for all six), whatever eval.scorer says."""
    bench = settings_of(["eval=longbench", "eval.benchmark.path=/data"], training=False).benchmark
    assert isinstance(bench, LongBench) and tuple(bench.subsets) == LONGBENCH_QA
    assert {name: spec["template"] for name, spec in bench.subsets.items()} == LONGBENCH_PROMPTS
    assert {name: spec["max_new_tokens"] for name, spec in bench.subsets.items()} == LONGBENCH_MAX_NEW_TOKENS
    assert isinstance(bench.scorer(ExactMatch()), TokenF1)


def test_prompts_are_filled_as_pred_py_fills_them(tmp_path, tokenizer):
    """pred.py: prompt_format.format(**json_obj), the record's input and context as they are in the file."""
    write_jsonl(tmp_path / "hotpotqa.jsonl", [{"input": "Who? ", "context": "\nPassage 1:\nA.\n", "answers": ["A"],
                                               "_id": "q"}])
    bench = LongBench(str(tmp_path), {"hotpotqa": {"template": _PASSAGES, "max_new_tokens": 32}})
    prompts, cut = longbench.prompts_of(bench.load()[0], tokenizer, 2048, None)
    assert prompts == [_PASSAGES.format(context="\nPassage 1:\nA.\n", input="Who? ")] and cut == 0


def test_middle_truncation_keeps_both_ends(tokenizer):
    prompt = "Instruction first. " + " ".join(f"w{i}" for i in range(400)) + " Question: who? Answer:"
    assert middle_truncated(tokenizer, prompt, 10_000) == (prompt, False)
    cut, was_cut = middle_truncated(tokenizer, prompt, 40)
    ids = tokenizer(prompt)["input_ids"]
    assert was_cut and cut.startswith("Instruction first.") and cut.endswith("Question: who? Answer:")
    assert cut == tokenizer.decode(ids[:20], skip_special_tokens=True) + tokenizer.decode(ids[-20:], skip_special_tokens=True)


def test_only_some_subsets_are_read_and_evaluated(tmp_path):
    """eval.benchmark.only=[hotpotqa,musique]: the two subsets alone, whose files alone need to exist (deleting the
    others with ~eval.benchmark.subsets.X is refused, as every key solopo-eval reads is); a name that is no subset, or
    a bare name, is one line naming the key."""
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("hotpotqa", "musique"):
        write_jsonl(folder / f"{name}.jsonl", [{"input": "Who?", "context": "docs", "answers": ["A"]}])
    bench = settings_of(["eval=longbench", f"eval.benchmark.path={folder}", "eval.benchmark.only=[musique,hotpotqa]"],
                        training=False).benchmark
    assert [subset.name for subset in bench.load()] == ["hotpotqa", "musique"]  # in the config's order
    with pytest.raises(ConfigError, match=r"eval.benchmark.only: no subset hotpot; choose among narrativeqa, qasper, "):
        settings_of(["eval=longbench", "eval.benchmark.path=/data", "eval.benchmark.only=[hotpot]"], training=False)
    with pytest.raises(ConfigError, match=r"eval.benchmark.only='hotpotqa': a list of subsets"):
        settings_of(["eval=longbench", "eval.benchmark.path=/data", "eval.benchmark.only=hotpotqa"], training=False)


def test_a_table_per_subset_and_their_average(tmp_path, monkeypatch, tokenizer):
    """Every subset answers "New York" (F1 0.8 on question 0) and "The cat sat on the mat." (6/7 on question 1):
    each subset scores 100 * (0.8 + 6/7) / 2 = 82.857..., and so does the average; the prompt is the template's."""
    bench = settings_of(["eval=longbench", f"eval.benchmark.path={longbench_folder(tmp_path)}"], training=False).benchmark
    seen = {}

    def answer_all(model, tok, prompts, settings, max_length, desc, engine_args):
        seen[desc] = (prompts, settings.max_new_tokens)
        return ["New York", "The cat sat on the mat."]

    monkeypatch.setattr(longbench, "answer_all", answer_all)
    table = run_benchmark(bench, bench.load(), None, tokenizer, replace(EVAL, scorer=ExactMatch()), 2048)
    expected = 100 * (0.8 + 6 / 7) / 2
    assert list(table["subsets"]) == list(LONGBENCH_QA) and table["metric"] == "TokenF1"  # eval.scorer aside
    interval = [pytest.approx(x) for x in (100 * b for b in wilson(0.8 + 6 / 7, 2))]
    assert all(row == {"score": pytest.approx(expected), "n": 2, "truncated": 0, "ci95": interval}
               for row in table["subsets"].values())
    assert table["average"] == pytest.approx(expected)
    # the average of 6 equal subsets: MOVER from their Wilson bounds, sqrt(6 d^2) / 6 = d / sqrt(6) either side
    p, (low, high) = expected / 100, wilson(0.8 + 6 / 7, 2)
    assert table["ci95_average"] == [pytest.approx(100 * (p - (p - low) / 6 ** 0.5)),
                                     pytest.approx(100 * (p + (high - p) / 6 ** 0.5))]
    prompts, max_new = seen["evaluating narrativeqa"]
    assert max_new == 128 and "Story: Passage 1: ... New York City ...\n\n" in prompts[0]
    assert prompts[0].endswith("Question: Where was narrativeqa written?\n\nAnswer:")
    assert "| model | narrativeqa | qasper | multifieldqa_en | hotpotqa | 2wikimqa | musique | avg |" in format_benchmark(
        {"model": table}) and "| 82.9 [" in format_benchmark({"model": table})


def test_overlong_prompts_are_cut_to_the_budget_and_counted(tmp_path, monkeypatch, tokenizer):
    folder = longbench_folder(tmp_path)
    write_jsonl(folder / "hotpotqa.jsonl", [{"input": "Q?", "context": "word " * 3000, "answers": ["x"], "_id": "h"}])
    bench = LongBench(str(folder), {"hotpotqa": {"template": "{context} Question: {input}", "max_new_tokens": 4}},
                      max_prompt_tokens=100)
    monkeypatch.setattr(longbench, "answer_all", lambda model, tok, prompts, *a: [str(len(tok(prompts[0])["input_ids"]))])
    table = run_benchmark(bench, bench.load(), None, tokenizer, EVAL, 2048)
    assert table["subsets"]["hotpotqa"]["truncated"] == 1 and int(table["examples"][0]["answer"]) <= 101


def test_missing_files_and_bad_records_are_one_line(tmp_path):
    bench = LongBench(str(tmp_path), {"qasper": {"template": "{context}{input}", "max_new_tokens": 8}})
    with pytest.raises(DataFileError, match=r"qasper.jsonl: cannot read it: no such file"):
        bench.load()
    write_jsonl(tmp_path / "qasper.jsonl", [{"input": "Q?", "context": "c", "answers": []}])
    with pytest.raises(DataFileError, match=r"qasper.jsonl line 1: field 'answers': empty list"):
        bench.load()
    with pytest.raises(ValueError, match=r"subsets.qasper.template: the template lacks \{input\}"):
        LongBench(str(tmp_path), {"qasper": {"template": "{context}", "max_new_tokens": 8}})


def test_ruler_files_are_subsets_scored_by_eval_scorer(tmp_path, monkeypatch, tokenizer):
    """RULER names its gold answers "outputs"; each file is a subset. Sub-EM: "it is paris" contains "paris" (1),
    "lyon" does not (0): 50.0; exact match: 0 of 2."""
    write_jsonl(tmp_path / "qa_1_4096.jsonl", [{"index": 0, "input": "Capital?", "context": "docs", "outputs": ["Paris"]},
                                               {"index": 1, "input": "Capital?", "context": "docs", "outputs": ["Paris"]}])
    bench = settings_of(["eval=ruler", f"eval.benchmark.path={tmp_path}"], training=False).benchmark
    assert isinstance(bench, RulerQA)
    monkeypatch.setattr(longbench, "answer_all", lambda *a: ["It is Paris.", "Lyon"])
    # 1 of 2 right: Wilson's (0.5 + 0.960 -+ 1.184) / 2.921 = [0.0945, 0.9055]
    assert run_benchmark(bench, bench.load(), None, tokenizer, EVAL, 2048)["subsets"] == {
        "qa_1_4096": {"score": 50.0, "n": 2, "truncated": 0, "ci95": [pytest.approx(9.45, abs=0.01),
                                                                     pytest.approx(90.55, abs=0.01)]}}
    exact = run_benchmark(bench, bench.load(), None, tokenizer, replace(EVAL, scorer=ExactMatch()), 2048)
    assert exact["average"] == 0.0 and exact["metric"] == "ExactMatch"


def test_evaluate_runs_longbench_end_to_end(tmp_path):
    folder = longbench_folder(tmp_path / "data")
    done = call("solopo.evaluate", ["eval=longbench", f"eval.benchmark.path={folder}", "eval.benchmark.n_items=1",
                                    "model=tiny", f"hydra.run.dir={tmp_path / 'run'}"])
    assert "| model | narrativeqa | qasper | multifieldqa_en | hotpotqa | 2wikimqa | musique | avg |" in done.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    table = results["benchmark"]["model"]
    assert set(table["subsets"]) == set(LONGBENCH_QA) and all(r["n"] == 1 for r in table["subsets"].values())
    # where the answers were generated, as a training run records it
    assert results["device"] == "cpu" and results["device_name"] and set(results["libraries"]) == {"torch", "transformers"}
    missing = call("solopo.evaluate", ["eval=longbench", f"eval.benchmark.path={tmp_path / 'nowhere'}",
                                       f"hydra.run.dir={tmp_path / 'run2'}"], expect=2)
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].endswith("must be the folder of LongBench's <subset>.jsonl")
    no_path = call("solopo.evaluate", ["eval=ruler", f"hydra.run.dir={tmp_path / 'run3'}"], expect=2)
    assert "Traceback" not in no_path.stderr
    assert no_path.stderr.strip().splitlines()[-1] == "error: eval=ruler needs eval.benchmark.path=PATH (see conf/eval/ruler.yaml)"


def test_a_training_run_builds_the_benchmark_and_refuses_it_during_training():
    """A training run's settings carry eval.benchmark (none with eval.enabled=false); evaluation during training,
    judged by the held-out questions' long-context sub-EM, does not combine with it: one line names the key."""
    bench = ["eval=longbench", "eval.benchmark.path=/data"]
    assert isinstance(settings_of(bench).benchmark, LongBench)
    assert settings_of([*bench, "eval.enabled=false"]).benchmark is None
    with pytest.raises(ConfigError, match=r"eval.every_n_steps=2: evaluation during training uses the held-out "):
        settings_of([*bench, "eval.every_n_steps=2"])


def test_a_training_run_evaluates_on_the_benchmark_the_eval_group_names(tmp_path):
    """`python -m solopo.run eval=longbench`: the base and the trained model are evaluated on eval.benchmark, by the
    code `python -m solopo.evaluate` runs (the same table, per subset and averaged), in place of the held-out
    questions; a missing benchmark folder stops the run in one line before the model loads."""
    folder = longbench_folder(tmp_path / "data")
    args = ["algo=dpo", "experiment=smoke", "logger=none", "eval=longbench", "eval.benchmark.n_items=1"]
    done = run_here([*args, f"eval.benchmark.path={folder}", f"hydra.run.dir={tmp_path / 'run'}"])
    heading = "LongBench, TokenF1 x 100:\n| model | narrativeqa | qasper | multifieldqa_en | hotpotqa | 2wikimqa |"
    assert heading in done.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "eval" not in results and set(results["benchmark"]) == {"base", "trained"}
    for table in results["benchmark"].values():
        assert set(table["subsets"]) == set(LONGBENCH_QA) and all(r["n"] == 1 for r in table["subsets"].values())
        assert table["metric"] == "TokenF1"
    summary = results["eval_summary"]
    assert summary["eval/gain/average"] == summary["eval/trained/average"] - summary["eval/base/average"]
    missing = run_here([*args, f"eval.benchmark.path={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'r2'}"],
                       expect=2)
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].endswith("must be the folder of LongBench's <subset>.jsonl")
    assert "parameters" in done.stdout + done.stderr  # load_models logs the model's size...
    assert "parameters" not in missing.stdout + missing.stderr  # ...which a run stopped by a bad path never loads


def test_the_average_of_subsets_has_an_interval_even_at_zero():
    """Two subsets of one question, both wrong: Wilson's 0 of 1 is [0, z^2 / (1 + z^2)] = [0, 0.79345]; MOVER's upper
    bound of their mean is 0.79345 / sqrt(2) = 0.56105 (a normal interval from p (1 - p) / n would be [0, 0]). One
    right and one wrong: the mean 0.5, symmetric bounds 0.5 -+ 0.79345 / 2."""
    from solopo.report.stats import equal_weight_mean

    assert equal_weight_mean([0.0, 0.0], [1, 1]) == pytest.approx((0.0, 0.0, 0.56105), abs=1e-5)
    assert equal_weight_mean([1.0, 0.0], [1, 1]) == pytest.approx((0.5, 0.5 - 0.39672, 0.5 + 0.39672), abs=1e-5)
