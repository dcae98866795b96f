"""The preference records the loading layer's tests build in code: one per city in every format (solopo's A/A'/B,
TRL's four, LLaMA-Factory's two), written as a user's tools write each container; and the fixture that keeps
datasets' Arrow copies of them in the test's folder (a test module that imports it gets it for each test)."""
import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from solopo.data.formats import source

CITIES = [("France", "Paris", "Rome"), ("Italy", "Rome", "Madrid"), ("Spain", "Madrid", "Berlin"),
          ("Germany", "Berlin", "Vienna")]
SYSTEM = "You are a terse geography tutor."


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """datasets' Arrow copies of these fixtures go to the test's folder, not the user's $SOLOPO_CACHE."""
    monkeypatch.setattr(source, "cache_root", lambda: tmp_path / "cache")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def question(country):
    return f"What is the capital of {country}?"


FORMATS = {  # format -> one record per city
    "A": lambda c, good, bad: {"prompt_short": f"Notes on {c}.\n\n{question(c)}",
                               "prompt_long": f"Notes on {c}. More notes on its history.\n\n{question(c)}",
                               "chosen": good, "rejected": bad},
    "A_conversational": lambda c, good, bad: {"prompt_short": [{"role": "system", "content": SYSTEM},
                                                               user(f"Notes on {c}.\n\n{question(c)}")],
                                              "prompt_long": [{"role": "system", "content": SYSTEM},
                                                              user(f"Notes on {c}. And more.\n\n{question(c)}")],
                                              "chosen": [assistant(good)], "rejected": [assistant(bad)]},
    "A'": lambda c, good, bad: {"question": question(c), "relevant": [f"{c}: its capital is {good}."],
                                "irrelevant": [f"{c} has rivers."], "chosen": good, "rejected": bad},
    "trl_standard": lambda c, good, bad: {"prompt": question(c), "chosen": good, "rejected": bad},
    "trl_conversational": lambda c, good, bad: {"prompt": [{"role": "system", "content": SYSTEM}, user(question(c))],
                                                "chosen": [assistant(good)], "rejected": [assistant(bad)]},
    "trl_implicit": lambda c, good, bad: {"chosen": f"{question(c)} The capital is {good}.",
                                          "rejected": f"{question(c)} The capital is {bad}."},
    "trl_implicit_conversational": lambda c, good, bad: {"chosen": [user(question(c)), assistant(good)],
                                                         "rejected": [user(question(c)), assistant(bad)]},
    "alpaca": lambda c, good, bad: {"instruction": "Name the capital.", "input": c, "chosen": good, "rejected": bad,
                                    "system": SYSTEM, "history": [["Hello", "Hi, ask away."]]},
    "sharegpt": lambda c, good, bad: {"conversations": [{"from": "human", "value": question(c)}], "system": SYSTEM,
                                      "chosen": {"from": "gpt", "value": good},
                                      "rejected": {"from": "gpt", "value": bad}},
}
FLAT = ("A", "trl_standard", "trl_implicit")  # the formats a CSV file can hold (text cells only)


def records(fmt):
    return [FORMATS[fmt](*city) for city in CITIES]


def write(container, rows, folder: Path) -> Path:
    """``rows`` in ``container``, written with the tools a user would use."""
    if container == "jsonl":
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif container == "json":
        path = folder / "data.json"
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    elif container in ("parquet", "csv"):
        path = folder / f"data.{container}"
        getattr(Dataset.from_list(rows), f"to_{container}")(str(path))
    elif container == "saved":
        path = folder / "saved"
        Dataset.from_list(rows).save_to_disk(str(path))
    elif container == "saved_dict":  # a DatasetDict: data.split picks one
        path = folder / "saved_dict"
        splits = {"train_prefs": Dataset.from_list(rows), "test_prefs": Dataset.from_list(rows[:2])}
        DatasetDict(splits).save_to_disk(str(path))
    else:  # a local dataset repository: data files in a folder
        path = folder / "repo"
        (path / "data").mkdir(parents=True)
        Dataset.from_list(rows).to_parquet(str(path / "data" / "train-00000-of-00001.parquet"))
    return path
