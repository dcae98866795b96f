"""LongBench v1 QA and RULER-style QA: LongBench's templates and answer lengths, its middle truncation, its QA F1
checked by hand on fixtures, the table per subset and its average, and `python -m solopo.evaluate eval=longbench`."""
import json
import subprocess
import sys

from dataclasses import replace

import pytest

from solopo.data.formats import DataFileError
from solopo.eval import longbench
from solopo.eval.longbench import LONGBENCH_QA, LongBench, format_benchmark, middle_truncated, run_benchmark
from solopo.eval.ruler import RulerQA
from solopo.scoring import ExactMatch, f1
from conftest import EVAL
from test_configs import ROOT
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


def test_the_shipped_templates_and_answer_lengths():
    """conf/eval/longbench.yaml holds LongBench's dataset2prompt and dataset2maxlen for the paper's six QA subsets."""
    bench = settings_of(["eval=longbench", "eval.benchmark.path=/data"], training=False).benchmark
    assert isinstance(bench, LongBench) and tuple(bench.subsets) == LONGBENCH_QA
    assert {n: s["max_new_tokens"] for n, s in bench.subsets.items()} == {
        "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32, "2wikimqa": 32, "musique": 32}
    hotpot = bench.subsets["hotpotqa"]["template"]
    assert hotpot.startswith("Answer the question based on the given passages.")
    assert hotpot.endswith("Question: {input}\nAnswer:")
    assert all(s["template"].index("{context}") < s["template"].index("{input}") for s in bench.subsets.values())
    assert bench.subsets["2wikimqa"]["template"] == bench.subsets["musique"]["template"] == hotpot


def test_middle_truncation_keeps_both_ends(tokenizer):
    prompt = "Instruction first. " + " ".join(f"w{i}" for i in range(400)) + " Question: who? Answer:"
    assert middle_truncated(tokenizer, prompt, 10_000) == (prompt, False)
    cut, was_cut = middle_truncated(tokenizer, prompt, 40)
    ids = tokenizer(prompt)["input_ids"]
    assert was_cut and cut.startswith("Instruction first.") and cut.endswith("Question: who? Answer:")
    assert cut == tokenizer.decode(ids[:20], skip_special_tokens=True) + tokenizer.decode(ids[-20:], skip_special_tokens=True)


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
    assert all(row == {"score": pytest.approx(expected), "n": 2, "truncated": 0} for row in table["subsets"].values())
    assert table["average"] == pytest.approx(expected)
    prompts, max_new = seen["evaluating narrativeqa"]
    assert max_new == 128 and "Story: Passage 1: ... New York City ...\n\n" in prompts[0]
    assert prompts[0].endswith("Question: Where was narrativeqa written?\n\nAnswer:")
    assert "| model | narrativeqa | qasper | multifieldqa_en | hotpotqa | 2wikimqa | musique | avg |" in format_benchmark(
        {"model": table}) and "| 82.86 |" in format_benchmark({"model": table})


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
    assert run_benchmark(bench, bench.load(), None, tokenizer, EVAL, 2048)["subsets"] == {
        "qa_1_4096": {"score": 50.0, "n": 2, "truncated": 0}}
    exact = run_benchmark(bench, bench.load(), None, tokenizer, replace(EVAL, scorer=ExactMatch()), 2048)
    assert exact["average"] == 0.0 and exact["metric"] == "ExactMatch"


def test_evaluate_runs_longbench_end_to_end(tmp_path):
    folder = longbench_folder(tmp_path / "data")
    done = subprocess.run([sys.executable, "-m", "solopo.evaluate", "eval=longbench", f"eval.benchmark.path={folder}",
                           "eval.benchmark.n_items=1", "model=tiny", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| model | narrativeqa | qasper | multifieldqa_en | hotpotqa | 2wikimqa | musique | avg |" in done.stdout
    table = json.loads((tmp_path / "run" / "results.json").read_text())["benchmark"]["model"]
    assert set(table["subsets"]) == set(LONGBENCH_QA) and all(r["n"] == 1 for r in table["subsets"].values())
    missing = subprocess.run([sys.executable, "-m", "solopo.evaluate", "eval=longbench",
                              f"eval.benchmark.path={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run2'}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].endswith("must be the folder of LongBench's <subset>.jsonl")
    no_path = subprocess.run([sys.executable, "-m", "solopo.evaluate", "eval=ruler", f"hydra.run.dir={tmp_path / 'run3'}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert no_path.returncode == 2 and "Traceback" not in no_path.stderr
    assert no_path.stderr.strip().splitlines()[-1] == "error: eval=ruler needs eval.benchmark.path=PATH (see conf/eval/ruler.yaml)"
