"""The triplet builder (python -m solopo.build): short-context preference data + distractors -> schema A triplets whose
x_long passes solopo's own checks (the context verbatim once in both prompts, x_long within 2% of long_len tokens), read
by data=pairs and trained on; and its one-line refusals."""
import json
import re
import shlex
from pathlib import Path

import pytest
from datasets import Dataset
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from solopo.build import build
from solopo.data.contexts import TOLERANCE
from solopo.data.formats import pairs, source
from solopo.data.schema import Turn
from solopo.data.tokenize import token_counter
from solopo.data.world import qa_items
from solopo.settings.build import ConfigError
from in_process import call

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "Answer from the notes only."


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """datasets' Arrow copies of the fixtures go to the test's folder, not the user's $SOLOPO_CACHE."""
    monkeypatch.setattr(source, "cache_root", lambda: tmp_path / "cache")


@pytest.fixture(scope="module")
def world():
    return qa_items(8, 0, seed=2)


def notes(item):
    return "\n\n".join(item.relevant)


def marked_prompt(item):
    return f"Read the notes.\n<context>{notes(item)}</context>\nQuestion: {item.question}"


def trl_file(world, tmp_path, row=lambda item: {"prompt": marked_prompt(item)}):
    """TRL's standard format, one record per question of the built-in world."""
    path = tmp_path / "short_pairs.jsonl"
    rows = [{**row(item), "chosen": item.answers[0], "rejected": item.wrong_answers[0]} for item in world.train]
    path.write_text("".join(json.dumps(record) + "\n" for record in rows))
    return path


def corpus_file(world, tmp_path):
    """A passages corpus in parquet: a text column (one row blank) beside another column."""
    path = tmp_path / "passages.parquet"
    texts = list(world.distractors) + [""]
    Dataset.from_dict({"title": [f"p{i}" for i in range(len(texts))], "text": texts}).to_parquet(str(path))
    return path


def run_build(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        build(compose("build", overrides=overrides))


@pytest.fixture(scope="module")
def count_tokens(tokenizer):
    return token_counter(tokenizer)


def check_triplets(path, contexts, long_len, count_tokens):
    """solopo's own checks on every record data=pairs reads: the context verbatim, once, in both prompts; x_long
    within TOLERANCE of long_len tokens (the text holding the context); returns the pairs by id."""
    read = {ex.id: ex for ex in pairs.load(str(path)).train}
    assert len(read) == len(contexts)
    for example in read.values():
        short, long = (p if isinstance(p, str) else p[-1].content for p in (example.prompt_short, example.prompt_long))
        context = contexts[example.id]
        assert short.count(context) == 1 and long.count(context) == 1
        assert abs(count_tokens(long) - long_len) <= TOLERANCE * long_len
    return read


def test_a_trl_file_and_a_passages_corpus_make_triplets(world, tmp_path, count_tokens):
    out = tmp_path / "triplets.jsonl"
    run_build([f"input.path={trl_file(world, tmp_path)}", f"corpus.path={corpus_file(world, tmp_path)}",
               "long_len=512", "depths=[0,1]", f"output={out}"])
    contexts = {f"short_pairs:line{i + 1}": notes(item) for i, item in enumerate(world.train)}
    read = check_triplets(out, contexts, 512, count_tokens)
    for i, item in enumerate(world.train):
        example, written = read[f"short_pairs:line{i + 1}"], json.loads(out.read_text().splitlines()[i])
        # x_short is the prompt as it was, its markers dropped; the pair is unchanged
        assert example.prompt_short == f"Read the notes.\n{notes(item)}\nQuestion: {item.question}"
        assert (example.chosen, example.rejected) == (item.answers[0], item.wrong_answers[0])
        # the depths in turn: first (0) or last before the question (1), as one block
        at = "Read the notes.\n" + notes(item) if i % 2 == 0 else notes(item) + f"\nQuestion: {item.question}"
        assert (example.prompt_long.startswith(at) if i % 2 == 0 else example.prompt_long.endswith(at))
        assert written["evidence_depths"] == [float(i % 2)]
        assert set(example.prompt_long.split("\n\n")) - set(example.prompt_short.split("\n\n"))  # distractors added


def test_a_context_column_in_conversations_with_other_records_as_distractors(world, tmp_path, count_tokens):
    """The context given in a column goes before the last user message's text; the system message stays."""
    def row(item):
        return {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": item.question}],
                "context": notes(item), "id": item.id}

    out = tmp_path / "triplets.jsonl"
    run_build([f"input.path={trl_file(world, tmp_path, row)}", "input.context=context", "long_len=256",
               f"output={out}"])
    read = check_triplets(out, {item.id: notes(item) for item in world.train}, 256, count_tokens)
    for item in world.train:
        example = read[item.id]
        assert example.prompt_short == (Turn("system", SYSTEM), Turn("user", f"{notes(item)}\n\n{item.question}"))
        assert example.prompt_long[0] == Turn("system", SYSTEM)
        assert example.prompt_long[1].content.endswith(f"\n\n{item.question}")
        others = [notes(other) for other in world.train if other is not item]
        assert any(other in example.prompt_long[1].content for other in others)  # other records' contexts pad it


def test_kept_markers_stay_in_both_prompts(world, tmp_path):
    out = tmp_path / "triplets.jsonl"
    run_build([f"input.path={trl_file(world, tmp_path)}", f"corpus.path={corpus_file(world, tmp_path)}",
               "input.keep_markers=true", "long_len=256", f"output={out}"])
    for example in pairs.load(str(out)).train:
        for prompt in (example.prompt_short, example.prompt_long):
            assert prompt.startswith("Read the notes.\n<context>") and "</context>\nQuestion: " in prompt


def test_the_triplets_train(world, tmp_path):
    """data=pairs reads the builder's output and trains SoLoPO on it: three sequences per pair, SoLo-RA reported."""
    from in_process import run_here
    from test_run import results

    out = tmp_path / "triplets.jsonl"
    run_build([f"input.path={trl_file(world, tmp_path)}", f"corpus.path={corpus_file(world, tmp_path)}",
               "long_len=256", "model=tiny", f"output={out}"])
    run_here(["algo=dpo", "experiment=smoke", "data=pairs", f"data.path={out}", "data.source.n_val=2", "logger=none",
              f"hydra.run.dir={tmp_path / 'run'}"])
    data = results(tmp_path / "run")
    assert data["sequences"]["train"] == ["short/chosen", "short/rejected", "long/chosen"]
    assert data["metrics"]["val/ra/gap"] > 0


def one_line(err):
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("row, problem", [
    (lambda item: {"prompt": item.question}, r"line 1: its prompt holds 0 <context> markers"),
    (lambda item: {"prompt": f"<context>{notes(item)}\nQuestion: {item.question}"}, r"line 1: .* no </context> after"),
    (lambda item: {"prompt": f"<context> </context>{item.question}"}, r"line 1: its marked context .* is empty"),
    (lambda item: {"prompt_short": marked_prompt(item), "prompt_long": marked_prompt(item) + " More."},
     r"line 1: already has a short and a long context"),
    (lambda item: {"prompt": marked_prompt(item), "chosen": 3}, r"line 1: field 'chosen': expected a string, got int"),
])
def test_bad_records_are_refused_in_one_line(row, problem, world, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"chosen": "yes", "rejected": "no", **row(world.train[0])}) + "\n")
    with pytest.raises(ConfigError) as err:
        run_build([f"input.path={path}", f"output={tmp_path / 'out.jsonl'}"])
    assert re.search(problem, one_line(err)) and str(path) in str(err.value)
    assert not (tmp_path / "out.jsonl").exists()


def test_records_that_change_form_are_refused_as_data_pairs_refuses_them(world, tmp_path):
    """The builder read a file of text prompts and then a prompt of messages in silence, one record at a time."""
    path = trl_file(world, tmp_path, row=lambda item: {"prompt": marked_prompt(item)} if item is world.train[0]
                    else {"prompt": [{"role": "user", "content": marked_prompt(item)}]})
    with pytest.raises(ConfigError) as err:
        run_build([f"input.path={path}", f"output={tmp_path / 'out.jsonl'}"])
    assert one_line(err) == (f"{path} line 2: field 'prompt': a list of messages, but line 1's is text; use one form, "
                             "text or messages, in every record")
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_corpora_and_settings_are_refused_in_one_line(world, tmp_path):
    given = [f"input.path={trl_file(world, tmp_path)}", f"output={tmp_path / 'out.jsonl'}"]
    corpus = corpus_file(world, tmp_path)
    cases = [
        ([f"corpus.path={corpus}", "corpus.column=body"], r"passages.parquet row 0: field 'body': missing; the record "
                                                          r"has 'title', 'text'"),
        ([f"corpus.path={corpus}", "long_len=100000"], r"short_pairs.jsonl line 1: .*cannot fill 100000 tokens"),
        ([f"corpus.path={tmp_path / 'none.jsonl'}"], r"none.jsonl: cannot read it: no such file"),
        (["depths=[0.5,2]", "long_len=0", "input.markers=[x]"],
         r"^input.markers=\[x\]: must be two .*; long_len=0: must be an integer >= 1; depths=\[0.5,2\]: must be"),
        ([f"output={tmp_path / 'out.parquet'}"], r"output=.*out.parquet: must be a .jsonl file"),
    ]
    for overrides, problem in cases:
        with pytest.raises(ConfigError) as err:
            run_build(given + overrides)
        assert re.search(problem, one_line(err)), (overrides, str(err.value))
    with pytest.raises(ConfigError, match=r"^input.path=... and output=... mandatory"):
        run_build([])
    with pytest.raises(ConfigError, match=r"^outptu=o.jsonl: solopo-build reads no such key; did you mean output\?; "
                                          r"input.path=... and output=... mandatory"):
        run_build(["+outptu=o.jsonl"])  # the mistyped key first: it is why output is missing
    with pytest.raises(ConfigError, match=r"^input.pth=i.jsonl: InputSettings takes no such option; did you mean "
                                          r"path\?; input.path=... mandatory"):
        run_build(["+input.pth=i.jsonl", "output=o.jsonl"])


def test_help_says_what_the_input_must_hold_and_what_comes_next():
    """--help named input.path=PAIRS with nothing on what PAIRS holds: a TRL file without marked contexts then failed
    at its first line. It names the markers, input.context, the corpus and the run on the triplets."""
    done = call("solopo.build", ["--help"])
    for said in ("<context>...</context>", "input.context=COLUMN", "corpus.column", 'README: "Your own data"',
                 "solopo-train data=pairs data.path=TRIPLETS.jsonl"):
        assert said in done.stdout, said


def test_the_command_exits_2_with_one_line(world, tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"prompt": "No context here.", "chosen": "a", "rejected": "b"}) + "\n")
    done = call("solopo.build", [f"input.path={path}", f"output={tmp_path / 'o.jsonl'}"], expect=2, cwd=tmp_path)
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith(f"error: {path} line 1: its prompt holds 0 <context> markers")
    assert list(tmp_path.iterdir()) == [path]  # no Hydra run folder, no log file, no output


def test_the_readme_builds_a_trl_file(world, tmp_path, count_tokens):
    """README's builder command, on a TRL file and a corpus of its own, with the paths swapped for the fixtures."""
    text = (ROOT / "README.md").read_text().replace("\\\n", "")  # continued lines joined, as a shell does
    command = next(line for line in text.splitlines() if line.startswith("python -m solopo.build"))
    files = {"input.path": trl_file(world, tmp_path), "corpus.path": corpus_file(world, tmp_path),
             "output": tmp_path / "triplets.jsonl"}
    args = [arg if arg.split("=")[0] not in files else f"{arg.split('=')[0]}={files[arg.split('=')[0]]}"
            for arg in shlex.split(command)[3:]]
    run_build(args)
    long_len = int(next(arg for arg in args if arg.startswith("long_len=")).split("=")[1])
    check_triplets(files["output"], {f"short_pairs:line{i + 1}": notes(item) for i, item in enumerate(world.train)},
                   long_len, count_tokens)


@pytest.mark.parametrize("mistake, line", [
    ("lenght=3", "lenght=3: solopo-build reads no such key"),
    ("input.patth=x", "input.patth=x: InputSettings takes no such option; did you mean path?"),
    ("+corpus.colum=x", "corpus.colum=x: CorpusSettings takes no such option; did you mean column?"),
])
def test_a_key_the_builder_lacks_is_named_in_one_line(mistake, line, world, tmp_path):
    """Hydra refuses a key its config lacks in six lines (exit 1): the command names it in one, before any file."""
    given = [f"input.path={trl_file(world, tmp_path)}", f"output={tmp_path / 'o.jsonl'}", mistake]
    done = call("solopo.build", given, expect=2, cwd=tmp_path)
    assert done.stderr == f"error: {line}\n"
    assert not (tmp_path / "o.jsonl").exists()


def test_output_to_a_file_has_no_progress_bar(world, tmp_path):
    """A log file (here, captured output) gets the builder's closing line, not a bar's redraws."""
    given = [f"input.path={trl_file(world, tmp_path)}", f"corpus.path={corpus_file(world, tmp_path)}",
             f"output={tmp_path / 'o.jsonl'}", "long_len=256"]
    done = call("solopo.build", given, cwd=tmp_path)
    assert "triplets:" not in done.stderr + done.stdout and "wrote" in done.stderr + done.stdout


def test_the_builder_needs_no_writable_working_directory(world, tmp_path):
    """conf/build.yaml: Hydra writes no run directory, so none is asked to be writable (here /proc, which is not)."""
    given = [f"input.path={trl_file(world, tmp_path)}", f"corpus.path={corpus_file(world, tmp_path)}",
             f"output={tmp_path / 'o.jsonl'}", "long_len=256"]
    call("solopo.build", given, cwd="/proc")
    assert (tmp_path / "o.jsonl").stat().st_size > 0


def test_an_output_that_is_a_file_read_is_refused_however_spelled(world, tmp_path, monkeypatch):
    """output=input.path would replace the source pairs with the triplets: refused before anything is read, whether
    the same file is named relatively, absolutely or through a symlink; the source is left as it was."""
    path = trl_file(world, tmp_path)
    source_text = path.read_text()
    (tmp_path / "link.jsonl").symlink_to(path)
    monkeypatch.chdir(tmp_path)
    for output in (path.name, str(path), "link.jsonl", f"./sub/../{path.name}"):
        with pytest.raises(ConfigError) as err:
            run_build([f"input.path={path.name}", f"output={output}", "long_len=256"])
        assert one_line(err) == (f"output={output}: is input.path ({path.name}), which the build reads; write the "
                                 "triplets to another file")
    with pytest.raises(ConfigError, match=r"^output=.*: is corpus.path"):
        run_build([f"input.path={path}", f"corpus.path={tmp_path / 'c.jsonl'}", f"output={tmp_path / 'c.jsonl'}"])
    assert path.read_text() == source_text
    done = call("solopo.build", [f"input.path={path}", f"output={path.name}", "long_len=256"], expect=2, cwd=tmp_path)
    assert done.stderr.strip() == (f"error: output={path.name}: is input.path ({path}), which the build reads; write "
                                   "the triplets to another file")
    assert path.read_text() == source_text
