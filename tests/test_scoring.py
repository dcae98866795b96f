"""Pluggable answer scoring: the built-in scorers by hand, the threshold rule of pair building, the config key that
names a scorer, and the scorer in the sampling and evaluation cache keys."""
import importlib
import random
import sys

from dataclasses import replace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from solopo.cache import DiskCache
from solopo.data.schema import PreferenceExample, QAItem
from solopo.eval.longctx import EvalCase, score_table
from solopo.eval.runner import cache_key
from solopo.generation import sampling
from solopo.generation.sampling import pick_pair, sample_pairs
from solopo.settings.fields import IMPORTABLE
from solopo.scoring import SUB_EM, ExactMatch, FromFunction, Regex, Scorer, SubEM, TokenF1, identity
from solopo.settings.build import ConfigError, build_settings
from conftest import EVAL, SAMPLING
from in_process import call
from test_configs import CONF, ROOT


def test_exact_match_and_sub_em():
    # normalised: "the eiffel tower." -> "eiffel tower" equals the gold; "eiffel tower paris" only contains it
    assert ExactMatch()("The Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert ExactMatch()("Eiffel Tower, Paris", ["Eiffel Tower"]) == 0.0
    assert SubEM()("Eiffel Tower, Paris", ["Eiffel Tower"]) == 1.0


def test_token_f1_and_its_threshold():
    """"new york" vs "new york city": 2 shared tokens, P = 2/2, R = 2/3, F1 = 2 * 1 * 2/3 / (5/3) = 0.8."""
    scorer = TokenF1(threshold=0.8)
    assert scorer("New York", ["New York City"]) == pytest.approx(0.8)
    assert scorer.correct(0.8) and not scorer.correct(0.79)
    assert TokenF1().threshold == 0.5 and SubEM().correct(1.0) and not SubEM().correct(0.0)


def test_regex_finds_a_gold_answer_as_whole_words():
    assert Regex()("It is in Paris.", ["paris"]) == 1.0
    assert Regex()("A Parisian café", ["Paris"]) == 0.0  # sub-EM would say 1.0
    assert Regex(pattern=r"^answer: {answer}$")("Answer: C++", ["c++"]) == 1.0  # the gold is taken literally
    with pytest.raises(ValueError, match=r"pattern=\(: not a regular expression"):
        Regex(pattern="(")


def first_word(prediction, answers):
    return float(prediction.split()[0].lower() == answers[0].lower())


def test_any_function_is_a_scorer():
    scorer = FromFunction(fn="test_scoring.first_word")  # tests/ is on the path
    assert isinstance(scorer, Scorer) and scorer("Paris is in France", ["paris"]) == 1.0
    assert scorer("In Paris", ["paris"]) == 0.0
    with pytest.raises(ValueError, match="fn=test_scoring.nowhere: module test_scoring has no nowhere"):
        FromFunction(fn="test_scoring.nowhere")
    with pytest.raises(ValueError, match=r"threshold=2: must be a number in \[0, 1\]"):
        SubEM(threshold=2)


def test_pairs_follow_the_scorer_threshold():
    """F1 against "new york city": "new york city" 1.0, "new york" 0.8, "york" 0.5, "boston" 0.
    At threshold 0.75 the first two may be chosen, the others rejected; sub-EM would reject "new york" too."""
    texts = ["New York City", "New York", "York", "Boston"]
    samples = [(t, True) for t in texts]
    scorer = TokenF1(threshold=0.75)
    scores = [scorer(t, ["New York City"]) for t in texts]
    chosen = {pick_pair(samples, scores, random.Random(seed), scorer)[0] for seed in range(20)}
    rejected = {pick_pair(samples, scores, random.Random(seed), scorer)[1] for seed in range(20)}
    assert chosen == {"New York City", "New York"} and rejected == {"York", "Boston"}


def test_sample_pairs_scores_with_the_settings_scorer(tmp_path, monkeypatch):
    """k = 2 answers "Quorath city" and "Zenna": exact match finds no correct one (the item is dropped), sub-EM finds
    one; the two scorers are two cache entries."""
    calls = []

    def run(model, tokenizer, prompts, settings, desc=""):
        calls.append(prompts)
        return [[("Quorath city", True), ("Zenna", True)] for _ in prompts]

    monkeypatch.setattr(sampling, "generate", run)
    example = PreferenceExample("q0", "Where?", ("Quorath",), "short 0", "long 0", "", "")
    cache = DiskCache(tmp_path, "pairs")
    kept, summary = sample_pairs([example], None, None, replace(SAMPLING, k=2, scorer=ExactMatch()), "short", "m", cache)
    assert kept == [] and summary["dropped"] == {"no_correct": 1, "no_incorrect": 0} and summary["share_correct"] == 0
    kept, summary = sample_pairs([example], None, None, replace(SAMPLING, k=2), "short", "m", cache)
    assert kept[0].chosen == "Quorath city" and summary["share_correct"] == 0.5 and len(calls) == 2


def test_the_eval_table_and_its_cache_key_follow_the_scorer():
    cases = [EvalCase("q", ("New York City",), "short", "-", "p"), EvalCase("q", ("New York City",), "512", "0", "p")]
    table = score_table(cases, ["New York City", "New York"], TokenF1())
    assert table["by_length"] == {"short": 1.0, "512": pytest.approx(0.8)} and table["scorer"] == "TokenF1"
    assert table["cells"][1]["sub_em"] == 0.0 and table["cells"][1]["score"] == pytest.approx(0.8)
    items = [QAItem("x", "Who?", ("A",), ("A did it.",))]
    scorers = [SUB_EM, ExactMatch(), TokenF1(), TokenF1(threshold=0.7), FromFunction(fn="solopo.scoring.f1")]
    assert len({cache_key("m", items, (), replace(EVAL, scorer=s), 2048) for s in scorers}) == len(scorers)
    assert identity(TokenF1(0.7))["params"] == {"threshold": 0.7}


def five(prediction, answers):
    return 5.0  # a scorer of one's own that counts, not scores


@pytest.mark.parametrize("score", [5.0, -0.5, float("nan"), "yes", None])
def test_a_score_outside_0_1_is_one_line_naming_the_scorer_key(score, monkeypatch):
    """A mean, a Wilson interval and a threshold read a score as a share: a scorer of one's own that returns 5.0 ended
    the evaluation with 'math domain error' from the interval, after every answer had been generated. Held-out tables,
    benchmarks and the pair sampler each refuse it in one line naming their scorer's key."""
    from solopo.eval.longbench import Question, Subset, subset_score

    monkeypatch.setattr(sys.modules[__name__], "five", lambda prediction, answers: score)
    scorer = FromFunction(fn="test_scoring.five") if isinstance(score, float) else (lambda p, a: score)
    cases = [EvalCase("q", ("Paris",), "512", "0", "p")]
    with pytest.raises(ConfigError, match=r"^eval.scorer: .* scored the answer 'Paris' as .*; a scorer returns a number "
                                          r"in \[0, 1\]"):
        score_table(cases, ["Paris"], scorer)
    subset = Subset("qa", "{context} {input}", 8, (Question("q", "Where?", "Paris.", ("Paris",)),))
    with pytest.raises(ConfigError, match=r"^eval.scorer: "):
        subset_score(subset, ["Paris"], scorer)
    assert score_table(cases, ["Paris"], SUB_EM)["average"] == 1.0  # a share passes as it is


def settings_of(overrides, training=True):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return build_settings(compose("config", overrides=overrides), training=training)


def test_the_config_names_the_scorers():
    settings = settings_of(["data.pairs=sampled", "data.sampling.scorer._target_=solopo.scoring.TokenF1",
                            "+data.sampling.scorer.threshold=0.6", "eval.scorer._target_=solopo.scoring.exact_match"])
    assert settings.sampling.scorer == TokenF1(threshold=0.6)
    assert settings.eval.scorer == FromFunction(fn="solopo.scoring.exact_match")  # a function, wrapped
    assert settings.eval.scorer("Paris.", ["paris"]) == 1.0
    assert settings_of([]).eval.scorer == SUB_EM


@pytest.mark.parametrize("override, line", [
    ("eval.scorer._target_=solopo.scoring.Nope", "eval.scorer._target_=solopo.scoring.Nope: no such class or function"),
    ("+eval.scorer.threshold=2", "eval.scorer.threshold=2: must be a number in [0, 1]"),
    ("+data.sampling.scorer.treshold=1", "data.sampling.scorer.treshold=1: SubEM takes no such option; did you mean "
                                         "threshold?"),
])
def test_a_wrong_scorer_is_one_line(override, line):
    with pytest.raises(ConfigError) as err:
        settings_of(["data.pairs=sampled", override])
    assert line in str(err.value)


def test_a_wrong_scorer_stops_the_entry_point_with_status_2(tmp_path):
    done = call("solopo.evaluate", ["eval.scorer._target_=x.y", f"hydra.run.dir={tmp_path}"], expect=2)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: eval.scorer._target_=x.y: cannot import module x (No module named "
                                                f"'x'); {IMPORTABLE}"]


def test_the_readme_custom_scorer(tmp_path, monkeypatch):
    """The README's mymetrics.py and its command line make a scorer of both settings."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n# mymetrics.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mymetrics.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    line = next(l for l in readme.splitlines() if "_target_=mymetrics.FirstLine" in l)
    settings = settings_of(["data.pairs=sampled", *line.split()[3:]])
    assert type(settings.sampling.scorer).__name__ == type(settings.eval.scorer).__name__ == "FirstLine"
    assert settings.eval.scorer("Paris.\nBecause the text says so.", ["paris"]) == 1.0
    assert not settings.sampling.scorer.correct(settings.sampling.scorer("Because... Paris", ["paris"]))


def test_a_scorer_module_that_cannot_be_imported_says_why(tmp_path):
    """The console scripts do not look in the current folder as python -m does: the error said "no such function"
    about a function that exists; it names the module, Python's reason and the remedy now."""
    (tmp_path / "mymetrics_nowhere.py").write_text("def half(prediction, answers):\n    return 0.5\n")
    with pytest.raises(ValueError) as err:
        FromFunction(fn="mymetrics_nowhere.half")
    assert str(err.value) == (f"fn=mymetrics_nowhere.half: cannot import module mymetrics_nowhere (No module named "
                              f"'mymetrics_nowhere'); {IMPORTABLE}")


def test_editing_a_scorer_of_ones_own_changes_the_cache_key(tmp_path, monkeypatch):
    """Only the dotted path was in the key: the base model's evaluation, cached under the old half(), was read back
    after its body changed, scored by the old function: a gain that was not there."""
    monkeypatch.syspath_prepend(str(tmp_path))
    module, items, keys = tmp_path / "mymetrics_edit.py", [QAItem("x", "Who?", ("A",), ("A did it.",))], []
    for body in ("return 0.5", "return 0.25"):
        module.write_text(f"def half(prediction, answers):\n    {body}\n\n\nclass Half:\n"
                          f"    def __call__(self, prediction, answers):\n        {body}\n\n"
                          "    def correct(self, score):\n        return True\n")
        sys.modules.pop("mymetrics_edit", None)
        mod = importlib.import_module("mymetrics_edit")
        scorers = [FromFunction(fn="mymetrics_edit.half"), mod.Half()]
        keys.append([cache_key("m", items, (), replace(EVAL, scorer=scorer), 2048) for scorer in scorers])
    assert keys[0][0] != keys[1][0] and keys[0][1] != keys[1][1]
    assert identity(FromFunction(fn="solopo.scoring.f1")) == identity(FromFunction(fn="solopo.scoring.f1"))
