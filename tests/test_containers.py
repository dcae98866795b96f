"""The loading layer: every container (jsonl, JSON array, parquet, CSV, save_to_disk, dataset folders, LLaMA-Factory
folders) x every preference format (solopo's A/A'/B, TRL's four, LLaMA-Factory's two), all built in code
(format_samples.py); the one-line errors for bad paths and folders that are not datasets (a malformed record's:
test_record_checks.py). Runs on these files: test_pair_file_runs.py."""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from solopo.data.formats import DataFileError, pairs
from solopo.data.schema import Turn
from solopo.data.tokenize import encode_prompt
from solopo.settings.build import ConfigError, load_source
from format_samples import CITIES, FLAT, FORMATS, SYSTEM, assistant, question, records, user, write
from format_samples import datasets_cache  # noqa: F401 (an autouse fixture: it applies to this module's tests)
from in_process import run_here

ROOT = Path(__file__).resolve().parents[1]


def compose_config(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def content(splits):
    """What training sees, whatever ids the container's places gave."""
    rows = splits.train + splits.val
    if hasattr(rows[0], "relevant"):
        return sorted((r.question, r.relevant, r.irrelevant, r.answers, r.wrong_answers) for r in rows)
    return sorted(repr((r.prompt_short, r.prompt_long, r.chosen, r.rejected)) for r in rows)


CONTAINERS = ("json", "parquet", "saved", "saved_dict", "folder")


@pytest.mark.parametrize("container", CONTAINERS + ("csv",))
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_container_gives_what_jsonl_gives(fmt, container, tmp_path):
    if container == "csv" and fmt not in FLAT:
        pytest.skip("CSV cells are text")
    rows = records(fmt)
    expected = content(pairs.load(str(write("jsonl", rows, tmp_path)), n_val=1))
    split = {"split": "train_prefs"} if container == "saved_dict" else {}
    assert content(pairs.load(str(write(container, rows, tmp_path)), n_val=1, **split)) == expected


def test_formats_map_to_prompts_and_responses(tmp_path):
    def first(fmt):
        return next(row for row in pairs.load(str(write("jsonl", records(fmt), tmp_path))).train
                    if "France" in repr(row.prompt_long))

    conversational = first("trl_conversational")
    assert conversational.prompt_short == conversational.prompt_long == (
        Turn("system", SYSTEM), Turn("user", question("France")))
    assert (conversational.chosen, conversational.rejected) == ("Paris", "Rome")
    implicit = first("trl_implicit")
    assert (implicit.prompt_long, implicit.chosen, implicit.rejected) == (
        f"{question('France')} The capital is", " Paris.", " Rome.")
    rows = [{"chosen": f"Capital of {c}:{good}", "rejected": f"Capital of {c}:{bad}"} for c, good, bad in CITIES]
    unspaced = pairs.load(str(write("jsonl", rows, tmp_path))).train[0]
    assert unspaced.prompt_long.endswith(":") and unspaced.chosen in ("Paris", "Rome", "Madrid", "Berlin")
    implicit = first("trl_implicit_conversational")
    assert (implicit.prompt_long, implicit.chosen) == ((Turn("user", question("France")),), "Paris")
    alpaca = first("alpaca")
    assert alpaca.prompt_long == (Turn("system", SYSTEM), Turn("user", "Hello"), Turn("assistant", "Hi, ask away."),
                                  Turn("user", "Name the capital.\nFrance"))
    sharegpt = first("sharegpt")
    assert sharegpt.prompt_long == (Turn("system", SYSTEM), Turn("user", question("France")))


def test_a_prompt_beside_whole_conversations_is_read_as_an_implicit_prompt(tmp_path):
    """UltraFeedback's published layout: a text prompt, and chosen/rejected conversations that repeat it."""
    row = {"prompt": question("France"), "chosen": [user(question("France")), assistant("Paris")],
           "rejected": [user(question("France")), assistant("Rome")]}
    example = pairs.load(str(write("jsonl", [row], tmp_path))).train[0]
    assert (example.prompt_long, example.chosen, example.rejected) == (
        (Turn("user", question("France")),), "Paris", "Rome")


def test_numbered_ids_are_taken_as_their_digits(tmp_path):
    rows = [{**row, "id": index} for index, row in enumerate(records("trl_standard"))]
    assert sorted(row.id for row in pairs.load(str(write("parquet", rows, tmp_path))).train) == ["0", "1", "2", "3"]


def test_the_chat_template_renders_system_prompts_and_earlier_turns(tokenizer):
    text = tokenizer.decode(encode_prompt(tokenizer, (Turn("system", SYSTEM), Turn("user", "Hello"),
                                                      Turn("assistant", "Hi."), Turn("user", "Capital?"))))
    assert SYSTEM in text and text.index("Hello") < text.index("Hi.") < text.index("Capital?")
    assert text.endswith("<|im_start|>assistant\n")


def test_llama_factory_folder_maps_its_columns_and_tags(tmp_path):
    rows = [{"dialog": [{"speaker": "person", "text": question(c)}], "good": {"speaker": "bot", "text": good},
             "bad": {"speaker": "bot", "text": bad}, "sys": SYSTEM} for c, good, bad in CITIES]
    write("jsonl", rows, tmp_path).rename(tmp_path / "geo.jsonl")
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "geo": {"file_name": "geo.jsonl", "formatting": "sharegpt", "ranking": True,
                "columns": {"messages": "dialog", "chosen": "good", "rejected": "bad", "system": "sys"},
                "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "person", "assistant_tag": "bot"}},
        "other": {"hf_hub_url": "someone/else"}}))
    (tmp_path / "plain").mkdir()
    expected = content(pairs.load(str(write("jsonl", records("sharegpt"), tmp_path / "plain"))))
    assert content(pairs.load(str(tmp_path))) == expected  # the folder: its one local entry
    assert content(pairs.load(str(tmp_path / "geo.jsonl"))) == expected  # the file: the index beside it maps it


def test_llama_factory_alpaca_mapping_and_entry_choice(tmp_path):
    rows = [{"q": question(c), "ctx": "", "win": good, "lose": bad} for c, good, bad in CITIES]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "geo.parquet"))
    mapping = {"file_name": "geo.parquet", "ranking": True,
               "columns": {"prompt": "q", "query": "ctx", "chosen": "win", "rejected": "lose"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"geo": mapping, "geo2": mapping}))
    with pytest.raises(DataFileError, match=r"dataset_info.json: set data.name to one of its datasets with a "
                                            r"file_name: geo, geo2$"):
        pairs.load(str(tmp_path))
    # a name given but not found said the same, as if none were given
    index = tmp_path / "dataset_info.json"
    with pytest.raises(DataFileError) as unknown:
        pairs.load(str(tmp_path), name="nosuch")
    assert str(unknown.value) == f"data.name=nosuch: not an entry of {index}; its datasets with a file_name: geo, geo2"
    index.write_text(json.dumps({"geo": mapping, "geo2": mapping, "hub": {"hf_hub_url": "someone/else"}}))
    with pytest.raises(DataFileError, match=r"^data.name=hub: an entry without a file_name \(local files only\) in "):
        pairs.load(str(tmp_path), name="hub")
    example = next(row for row in pairs.load(str(tmp_path), name="geo2").train if "France" in row.prompt_long)
    assert (example.prompt_long, example.chosen) == (question("France"), "Paris")


def test_a_folder_that_is_not_a_dataset_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(tmp_path))
    assert str(refused.value) == (f"{tmp_path}: holds no data file the formats read: it looks for data files (.json, "
                                  ".jsonl, .parquet, .csv, .arrow), save_to_disk files (state.json, dataset_dict.json) "
                                  "or a LLaMA-Factory dataset_info.json")


def run_folder(folder):
    """What a solopo run in ``folder`` leaves there: Hydra's .hydra and the run's JSON records."""
    run = folder / "outputs" / "2026-01-01" / "10-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / "failed.json").write_text(json.dumps({"reason": "bad data"}))
    (run / "run.log").write_text("")


def test_a_working_directory_of_runs_is_no_dataset(tmp_path, monkeypatch):
    """data.path=. in a folder holding only earlier runs' folders leaked datasets' 'not a dataset that can be read
    (dataset_name should be specified but got None)': "." names no dataset for datasets, and a run's failed.json
    looked like data. Beside a data file, the run folders would be read as its records: refused too."""
    work = tmp_path / "work"  # not tmp_path, which holds the test's datasets cache
    run_folder(work)
    monkeypatch.chdir(work)
    with pytest.raises(DataFileError) as refused:
        pairs.load(".")
    assert str(refused.value) == (".: holds no data file the formats read (1 run folder skipped: outputs/2026-01-01/"
                                  "10-00-00): it looks for data files (.json, .jsonl, .parquet, .csv, .arrow), "
                                  "save_to_disk files (state.json, dataset_dict.json) or a LLaMA-Factory "
                                  "dataset_info.json")
    write("jsonl", records("trl_standard"), work)
    with pytest.raises(DataFileError, match=r"^\.: holds solopo run folders \(outputs/2026-01-01/10-00-00\) beside "
                                            r"its data files, whose JSON files would be read as records; give "):
        pairs.load(".")
    shutil.rmtree(work / "outputs")
    assert len(pairs.load(".").train) == len(CITIES)  # "." is the folder it names


@pytest.mark.parametrize("broken", ["broken.parquet", "saved/state.json"])
def test_a_container_datasets_cannot_read_is_one_line(broken, tmp_path):
    """The one line is all a run prints of it: datasets' own ERROR records on the way (the Parquet reader's "Failed to
    read schema") are held back, only meanwhile: its logger takes ERROR records again afterwards."""
    (tmp_path / "saved").mkdir()
    (tmp_path / broken).write_bytes(b"PAR1 not really data")
    path = tmp_path / broken.split("/")[0]
    records_seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records_seen.append
    logger = logging.getLogger("datasets")
    logger.addHandler(handler)
    try:
        with pytest.raises(DataFileError) as refused:
            pairs.load(str(path))
    finally:
        logger.removeHandler(handler)
    assert str(refused.value).startswith(f"{path}: not a dataset that can be read (") and "\n" not in str(refused.value)
    assert [r.getMessage() for r in records_seen if r.levelno >= logging.ERROR] == []
    assert logger.isEnabledFor(logging.ERROR)


def test_a_missing_split_lists_the_splits(tmp_path):
    path = write("saved_dict", records("trl_standard"), tmp_path)
    with pytest.raises(DataFileError, match=r"saved_dict: no split 'train'; set data.split to one of train_prefs, "
                                            r"test_prefs$"):
        pairs.load(str(path))


def test_the_splits_a_dataset_leaves_unread_are_named(tmp_path, caplog):
    """A saved DatasetDict of train and test splits (TRL's users pass its test split as eval_dataset) was read for its
    train split alone, without a word that the test split was left out and validation drawn from train."""
    import logging

    path = write("saved_dict", records("trl_standard"), tmp_path)
    with caplog.at_level(logging.INFO, logger="solopo.data.formats.source"):
        pairs.load(str(path), split="train_prefs", n_val=1)
    assert (f"{path}: reading its train_prefs split; its test_prefs split is not read (validation comes from "
            "train_prefs: data.source.n_val)") in caplog.text


@pytest.mark.parametrize("container", ["jsonl", "json", "csv"])
def test_a_split_or_config_one_file_cannot_honour_is_refused(container, tmp_path):
    path = write(container, records("trl_standard"), tmp_path)
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(path), name="foo")
    assert str(refused.value) == (f"{path}: one file, with no configs; data.name=foo picks one of a dataset folder or "
                                  "a LLaMA-Factory folder's datasets")
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(path), split="test")
    assert str(refused.value) in (f"{path}: one file, whose records are one split (train); data.split=test names none",
                                  f"{path}: no split 'test'; set data.split to one of train")  # the csv's, as loaded
    assert pairs.load(str(path), split="train", n_val=1)  # its one split, named


def bad_paths(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    return [(tmp_path / "missing.jsonl", "cannot read it: no such file"), (loop, "cannot read it: a symlink loop")]


@pytest.mark.parametrize("data", ["pairs", "musique", "hotpotqa"])
def test_bad_data_paths_stop_in_one_line(data, tmp_path):
    cases = bad_paths(tmp_path) + ([(tmp_path, "a folder, not a file of records")] if data != "pairs" else [])
    for path, problem in cases:
        with pytest.raises(ConfigError) as stopped:
            load_source(compose_config([f"data={data}", f"data.path={path}"]))
        assert str(stopped.value) == f"{path}: {problem}"


def test_a_missing_data_file_exits_2_before_the_model_loads(tmp_path):
    """A new interpreter: what it prints before the data loads (Lightning's seed line was one) shows there alone."""
    done = subprocess.run([sys.executable, "-m", "solopo.run", "experiment=smoke", "data=pairs",
                           f"data.path={tmp_path / 'nope.jsonl'}", "logger=none", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr == f"error: {tmp_path / 'nope.jsonl'}: cannot read it: no such file\n"  # that line alone
    failed = json.loads((tmp_path / "failed.json").read_text())  # the run directory Hydra made says why
    assert (failed["reason"], failed["detail"]) == ("bad data", f"{tmp_path / 'nope.jsonl'}: cannot read it: no such file")


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_deep_json_nesting_is_one_line(container, tmp_path):
    path = tmp_path / f"deep.{container}"
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text(deep + "\n" if container == "jsonl" else f"[{deep}]")
    place = " line 1" if container == "jsonl" else ""
    with pytest.raises(DataFileError, match=rf"^{path}{place}: invalid JSON: nested too deeply$"):
        pairs.load(str(path))


def test_a_csv_files_cells_are_the_text_they_hold(tmp_path):
    """pandas read a column of answers "1", "10" (quoted or not) as integers, refused as "expected a string, got int",
    the text NA as a missing value ("empty"), and an id column with one empty cell as floats, blamed on row 0 (an
    empty id is refused on its own row)."""
    path = tmp_path / "data.csv"
    rows = ('id,prompt,chosen,rejected\n7,"Tom is 1. How old is Tom?","1",10\n8,Is it NA?,NA,None\n'
            "9,Ann is 3. How old is Ann?,3,30\n10,Bo is 4. How old is Bo?,4,40\n")
    path.write_text(rows, encoding="utf-8")
    examples = {ex.id: ex for ex in pairs.load(str(path)).train}
    assert {key: (ex.chosen, ex.rejected) for key, ex in examples.items()} == {
        "7": ("1", "10"), "8": ("NA", "None"), "9": ("3", "30"), "10": ("4", "40")}
    path.write_text(rows.replace("\n10,", "\n,"), encoding="utf-8")
    with pytest.raises(DataFileError, match=r"data.csv row 3: field 'id': empty$"):
        pairs.load(str(path))
    path.write_text("prompt,chosen,rejected\nQ1,a,b\nQ2,,b\n", encoding="utf-8")
    with pytest.raises(DataFileError, match=r"data.csv row 1: field 'chosen': empty$"):
        pairs.load(str(path))


def test_a_folder_of_csv_files_reads_text_and_keeps_its_splits(tmp_path):
    """A folder of CSV files went to datasets' folder loader, which let pandas type the cells: answers "1"/"10"
    refused as integers, the text NA read as missing. Its files are those datasets resolves: the split in a file's
    name, a README's configs (data.name), hidden folders (a notebook's checkpoints) left out."""
    folder = tmp_path / "repo"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    (folder / ".ipynb_checkpoints" / "train-checkpoint.csv").write_text("prompt,chosen\nQ,a\n")
    (folder / "train.csv").write_text("prompt,chosen,rejected\nTom is 1. Age?,1,10\nIs it NA?,NA,None\n")
    (folder / "test.csv").write_text("prompt,chosen,rejected\nAnn is 3. Age?,3,30\n")
    train = pairs.load(str(folder)).train
    assert sorted((ex.chosen, ex.rejected) for ex in train) == [("1", "10"), ("NA", "None")]
    assert [ex.chosen for ex in pairs.load(str(folder), split="test").train] == ["3"]
    for header, hint in (("prompt,chosen,rejected,id", ""), ("chosen,prompt,rejected", " (the same in another order)")):
        (folder / "test.csv").write_text(f"{header}\nAnn is 3. Age?,3,30,a\n")
        with pytest.raises(DataFileError) as refused:
            pairs.load(str(folder))
        assert str(refused.value) == (f"{folder / 'test.csv'}: its columns ({header.replace(',', ', ')}) are not those "
                                      f"of {folder / 'train.csv'} (prompt, chosen, rejected){hint}; the CSV files of "
                                      "one dataset share a header")
    (folder / "test.csv").unlink()
    (folder / "hard").mkdir()
    (folder / "hard" / "h.csv").write_text("question,text\nQ,07\n")  # another config's columns
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: easy\n  data_files: train.csv\n"
                                      "- config_name: hard\n  data_files: hard/*.csv\n---\n")
    assert len(pairs.load(str(folder), name="easy").train) == 2


ROWS = {"csv": "prompt,chosen,rejected\nTom is 1. Age?,1,10\nAnn is 3. Age?,3,30\n",
        "jsonl": "".join(json.dumps({"prompt": f"Q{i}?", "chosen": "a", "rejected": "b"}) + "\n" for i in range(2))}
EMPTY = {"csv": ("prompt,chosen,rejected\n", "a header and no rows"), "jsonl": ("\n", "an empty file")}


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_an_empty_split_of_a_dataset_folder_names_its_file(kind, tmp_path):
    """datasets refused the whole folder, the train split too, with 'not a dataset that can be read (Instruction
    "test" corresponds to no data!)', naming no file. An empty split is refused as an empty file is, by its file;
    a split with rows in one of its files loads."""
    folder, (empty, why) = tmp_path / "repo", EMPTY[kind]
    folder.mkdir()
    (folder / f"train.{kind}").write_text(ROWS[kind])
    (folder / f"test.{kind}").write_text(empty)
    line = (f"{folder / f'test.{kind}'}: no records ({why}), so the dataset folder's test split is empty; give it rows "
            "or remove it")
    for split in ([], ["data.split=test"]):
        with pytest.raises(ConfigError) as stopped:
            load_source(compose_config(["data=pairs", f"data.path={folder}", *split]))
        assert str(stopped.value) == line
    done = run_here(["experiment=smoke", "data=pairs", f"data.path={folder}", "logger=none",
                     f"hydra.run.dir={tmp_path / 'run'}"], expect=2)
    assert done.stderr == f"error: {line}\n"
    (folder / f"test.{kind}").rename(folder / f"test-00001-of-00002.{kind}")
    (folder / f"test-00000-of-00002.{kind}").write_text(ROWS[kind])
    assert len(pairs.load(str(folder), split="test", n_val=0).train) == 2


def test_a_csv_or_parquet_file_without_rows_is_refused_as_a_json_one_is(tmp_path):
    """datasets: 'not a dataset that can be read (Instruction "train" corresponds to no data!)'; an empty JSON Lines
    file was already 'no records'."""
    (tmp_path / "header.csv").write_text("prompt,chosen,rejected\n\n")
    Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []}).to_parquet(tmp_path / "none.parquet")
    (tmp_path / "none.jsonl").write_text("")
    for name, why in (("header.csv", " (a header and no rows)"), ("none.parquet", " (a table of 0 rows)"),
                      ("none.jsonl", "")):
        with pytest.raises(DataFileError) as refused:
            pairs.load(str(tmp_path / name))
        assert str(refused.value) == f"{tmp_path / name}: no records{why}"


def test_an_edited_file_of_a_dataset_folder_is_read_afresh(tmp_path):
    """datasets keys the Arrow copy of a folder whose README lists its configs by the patterns alone: a file edited
    in place (same size) was read back as its old rows."""
    folder = tmp_path / "repo"
    (folder / "easy").mkdir(parents=True)
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: easy\n  data_files: easy/*.jsonl\n---\n")
    data = folder / "easy" / "pairs.jsonl"
    for second, chosen in enumerate(("Rome", "Oslo"), start=1):
        data.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": chosen, "rejected": "Lima"}) + "\n"
                                for i in range(3)))
        os.utime(data, ns=(0, second * 10**9))  # whatever the clock's resolution, the edit has a later time
        assert {ex.chosen for ex in pairs.load(str(folder), name="easy").train} == {chosen}


def test_an_empty_csv_cell_is_called_empty(tmp_path):
    """A CSV has no null: its empty cell, which `datasets` reads as None, was reported as "is null", in a CSV file
    and in a folder of CSV files alike."""
    rows = records("trl_standard")
    rows[2] = {**rows[2], "rejected": None}
    path = write("csv", rows, tmp_path)
    assert ",\n" in path.read_text() or ",\r\n" in path.read_text()  # the cell is empty in the file
    with pytest.raises(DataFileError, match=r"data.csv row 2: field 'rejected': empty$"):
        pairs.load(str(path))
    (tmp_path / "repo" / "data").mkdir(parents=True)
    path.rename(tmp_path / "repo" / "data" / "train.csv")
    with pytest.raises(DataFileError, match=r"repo row 2: field 'rejected': empty$"):
        pairs.load(str(tmp_path / "repo"))
