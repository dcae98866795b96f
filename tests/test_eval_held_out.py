"""The questions an evaluation holds out of training, on a data file: none in ready-made pairs, none with
data.source.n_val=0, fewer than eval.n_items where the validation split is smaller (said in the log), and never the
questions a saved model trained on (solopo-eval refuses them)."""
import json

import pytest

from solopo.data.formats import pairs
from solopo.eval.runner import NoHeldOutQuestions, eval_items
from conftest import ROOT
from in_process import call, run_here


def test_solopo_eval_on_ready_made_pairs_names_what_it_can_evaluate_on(tmp_path):
    """solopo-eval on a file of ready-made pairs answered "set eval.enabled=false for ready-made pairs", the training
    run's advice: solopo-eval then refuses eval.enabled as a key only training reads."""
    pairs = ROOT / "tests" / "fixtures" / "pairs.jsonl"
    done = call("solopo.evaluate", ["model=tiny", "data=pairs", f"data.path={pairs}", "data.source.n_val=1",
                                    f"hydra.run.dir={tmp_path}"], expect=2)
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: evaluation needs held-out questions with their evidence") and "eval.enabled" not in line
    assert line.endswith("; or evaluate on a benchmark (eval=longbench or eval=ruler, with eval.benchmark.path=PATH)")
    # the run folder Hydra made says why it holds no results, as a training run's does: a report lists it as failed
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert failed["reason"] == "bad data" and line == f"error: {failed['detail']}"


def write_passages(path, n):
    """A schema A' file of ``n`` questions (ids d0, d1, ...) whose answers differ, as a user's own file gives them."""
    path.write_text("".join(json.dumps({"id": f"d{i}", "question": f"What is the code of item {i}?",
                                        "relevant": [f"Item {i}\nThe code of item {i} is C{7 * i}."],
                                        "irrelevant": [f"Noise {i}\nThe weather on day {i} was mild."],
                                        "chosen": f"C{7 * i}", "rejected": f"C{7 * i + 1}"}) + "\n"
                            for i in range(n)))
    return path


def test_solopo_eval_refuses_the_questions_a_saved_model_trained_on(tmp_path):
    """A model trained on a 10-question file with data.source.n_val=2, evaluated by solopo-eval with its default split
    (n_val=8, 6 questions asked: the 3rd to 8th of the shuffle, which training had taken), exited 0 with no word,
    scoring questions it had trained on as held-out. The saved model's record (solopo.data.trained_on) stops it before
    the model loads, naming the training run's split; with that split the evaluation runs."""
    data = write_passages(tmp_path / "passages.jsonl", 10)
    run_here(["experiment=smoke", "data=pairs", f"data.path={data}", "data.source.n_val=2", "data.source.n_train=null",
              "save_model=true", "eval.enabled=false", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"])
    evaluate = ["data=pairs", f"data.path={data}", f"model.name={tmp_path / 'run' / 'model'}", "eval.lengths=[short,256]",
                "eval.max_new_tokens=4"]
    done = call("solopo.evaluate", [*evaluate, f"hydra.run.dir={tmp_path / 'eval'}"], expect=2)
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: model.name={tmp_path / 'run' / 'model'} trained on 6 of the 6 held-out questions")
    assert line.endswith("held out data.source.n_val=2 with seed=0: set data.source.n_val=2 seed=0 to evaluate on those")
    assert not (tmp_path / "eval" / "results.json").exists()
    call("solopo.evaluate", [*evaluate, "data.source.n_val=2", "eval.n_items=2", f"hydra.run.dir={tmp_path / 'eval2'}"])


def test_a_file_without_a_validation_split_names_data_source_n_val_as_the_cause(tmp_path):
    """data.source.n_val=0 on a file of passages (schema A') was reported as "ready-made pairs have none"."""
    splits = pairs.load(str(write_passages(tmp_path / "passages.jsonl", 4)), n_val=0)
    with pytest.raises(NoHeldOutQuestions, match=r"^data.source.n_val=0 holds no questions out of training") as err:
        eval_items(splits, 6)
    assert "ready-made" not in str(err.value)


def test_eval_n_items_above_the_validation_split_is_said_in_the_log(tmp_path, caplog):
    """eval.n_items=6 with data.source.n_val=2 on a file evaluated 2 questions with no word."""
    splits = pairs.load(str(write_passages(tmp_path / "passages.jsonl", 6)), n_val=2)
    items, _ = eval_items(splits, 6)
    assert len(items) == 2
    assert ("eval.n_items=6: the held-out questions are the validation split, data.source.n_val=2; evaluating those 2"
            in caplog.text)
