"""The ecosystem's preference formats against their own specifications: every fixture here has the structure of an
example in TRL's guide "Dataset formats and types" (docs/source/dataset_formats.md, "Preference") or in LLaMA-Factory's
data/README.md ("Preference Dataset" in its alpaca and sharegpt sections, and its dataset_info.json description),
with data of our own, written the way those tools' users write them (``Dataset.from_dict`` for TRL, a JSON array and
a dataset_info.json for LLaMA-Factory). The expected values are what each tool makes of the example, by hand."""
import json

import pytest
from datasets import Dataset

from format_samples import assistant, user
from format_samples import datasets_cache  # noqa: F401 (an autouse fixture: it applies to this module's tests)
from solopo.data.formats import DataFileError, pairs
from solopo.data.schema import Turn

SYSTEM = "Answer in one short sentence."


def trl_file(columns: dict, tmp_path):
    """A TRL dataset as its guide builds one (Dataset.from_dict), saved as JSON Lines."""
    path = tmp_path / "trl.jsonl"
    Dataset.from_dict(columns).to_json(str(path))
    return path


def first(path, **options):
    return pairs.load(str(path), **options).train[0]


def triple(example):
    return example.prompt_short, example.chosen, example.rejected


# TRL ------------------------------------------------------------------------------------------------------------------


def test_trl_standard_explicit_and_implicit_prompts(tmp_path):
    """Explicit: the prompt and the responses as written, leading space kept. Implicit: TRL's extract_prompt cuts at
    the first character the two differ in ("1" / "5") and gives the space before it to the responses; a newline before
    it stays with the prompt."""
    explicit = trl_file({"prompt": ["Water boils at"], "chosen": [" 100 degrees."], "rejected": [" 50 degrees."]},
                        tmp_path)
    example = first(explicit)
    assert triple(example) == ("Water boils at", " 100 degrees.", " 50 degrees.")
    assert example.prompt_long == example.prompt_short  # one prompt: plain PO
    implicit = trl_file({"chosen": ["Water boils at 100 degrees.", "Q: Where is Lyon?\nFrance"],
                         "rejected": ["Water boils at 50 degrees.", "Q: Where is Lyon?\nSpain"]}, tmp_path)
    found = sorted(map(triple, pairs.load(str(implicit)).train))
    assert found == [("Q: Where is Lyon?\n", "France", "Spain"), ("Water boils at", " 100 degrees.", " 50 degrees.")]


def test_trl_conversational_explicit_and_implicit_prompts(tmp_path):
    """The guide's conversational examples: an explicit prompt of messages (a system message ahead of the user's)
    with one assistant message each; and an implicit prompt, the messages chosen and rejected share."""
    question = "Which planet is closest to the sun?"
    explicit = trl_file({"prompt": [[{"role": "system", "content": SYSTEM}, user(question)]],
                         "chosen": [[assistant("Mercury.")]], "rejected": [[assistant("Venus.")]]}, tmp_path)
    assert triple(first(explicit)) == ((Turn("system", SYSTEM), Turn("user", question)), "Mercury.", "Venus.")
    implicit = trl_file({"chosen": [[user(question), assistant("Mercury.")]],
                         "rejected": [[user(question), assistant("Venus.")]]}, tmp_path)
    assert triple(first(implicit)) == ((Turn("user", question),), "Mercury.", "Venus.")


def test_a_conversational_prompt_of_system_messages_alone_is_refused(tmp_path):
    """A prompt holding the system message and no user turn (a conversion that dropped the question) trained the
    responses as answers to no one; LLaMA-Factory's sharegpt layout already refused it."""
    path = trl_file({"prompt": [[{"role": "system", "content": SYSTEM}]], "chosen": [[assistant("Mercury.")]],
                     "rejected": [[assistant("Venus.")]]}, tmp_path)
    with pytest.raises(DataFileError, match=r"trl.jsonl line 1: field 'prompt': holds only system messages; the "
                                            r"user's turn is missing$"):
        pairs.load(str(path))


def test_trl_prompt_beside_conversations_follows_maybe_extract_prompt(tmp_path):
    """TRL extracts the prompt when the prompt column is text and chosen/rejected are conversations; with both
    conversational it keeps the prompt, so a chosen of more than the assistant's message is refused in one line."""
    question = "Which planet is closest to the sun?"
    repeated = trl_file({"prompt": [question], "chosen": [[user(question), assistant("Mercury.")]],
                         "rejected": [[user(question), assistant("Venus.")]]}, tmp_path)
    assert triple(first(repeated)) == ((Turn("user", question),), "Mercury.", "Venus.")
    both = trl_file({"prompt": [[user(question)]], "chosen": [[user(question), assistant("Mercury.")]],
                     "rejected": [[user(question), assistant("Venus.")]]}, tmp_path)
    with pytest.raises(DataFileError, match=r"line 1: field 'chosen': expected one assistant message, got user, "
                                            r"assistant$"):
        pairs.load(str(both))


# LLaMA-Factory ------------------------------------------------------------------------------------------------------


def llama_factory_folder(tmp_path, records, entry, name="prefs"):
    """A LLaMA-Factory data folder: data.json (a JSON array, as its README writes the examples) and its
    dataset_info.json describing it."""
    (tmp_path / "data.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({name: {"file_name": "data.json", **entry}}, indent=2))
    return tmp_path


ALPACA_ENTRY = {"ranking": True, "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                                             "rejected": "rejected"}}
SHAREGPT_ENTRY = {"formatting": "sharegpt", "ranking": True,
                  "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}


def alpaca_records():
    return [{"instruction": "Translate to French.", "input": "Good morning", "chosen": "Bonjour", "rejected": "Bonsoir",
             "system": "You are a translator."},
            {"instruction": "Name a primary colour.", "input": "", "chosen": "Red", "rejected": "Green"}]


def sharegpt_records():
    return [{"conversations": [{"from": "human", "value": "I have 3 apples."},
                               {"from": "gpt", "value": "Noted: 3 apples."},
                               {"from": "human", "value": "I eat one. How many are left?"}],
             "chosen": {"from": "gpt", "value": "2 apples."}, "rejected": {"from": "gpt", "value": "4 apples."}}]


def test_llama_factory_alpaca_preference_example(tmp_path):
    """The README's alpaca preference example and entry: the prompt is "instruction\\ninput" (the instruction alone
    when the input is empty); a system column the entry's columns do not name is not read, as in LLaMA-Factory."""
    rows = pairs.load(str(llama_factory_folder(tmp_path, alpaca_records(), ALPACA_ENTRY))).train
    assert sorted(map(triple, rows)) == [("Name a primary colour.", "Red", "Green"),
                                         ("Translate to French.\nGood morning", "Bonjour", "Bonsoir")]


def test_llama_factory_alpaca_system_and_history_when_named(tmp_path):
    """The README's alpaca columns with system and history named: the system prompt, then each [question, answer]
    of the history as a user and an assistant message, then the instruction."""
    records = [{**alpaca_records()[0], "history": [["Hello", "Hello! What shall I translate?"]]}]
    entry = {**ALPACA_ENTRY, "columns": {**ALPACA_ENTRY["columns"], "system": "system", "history": "history"}}
    example = first(llama_factory_folder(tmp_path, records, entry))
    assert example.prompt_short == (Turn("system", "You are a translator."), Turn("user", "Hello"),
                                    Turn("assistant", "Hello! What shall I translate?"),
                                    Turn("user", "Translate to French.\nGood morning"))


def test_llama_factory_sharegpt_preference_example(tmp_path):
    """The README's sharegpt preference example: human, gpt, human turns, then a gpt message each for chosen and
    rejected."""
    example = first(llama_factory_folder(tmp_path, sharegpt_records(), SHAREGPT_ENTRY))
    assert triple(example) == ((Turn("user", "I have 3 apples."), Turn("assistant", "Noted: 3 apples."),
                                Turn("user", "I eat one. How many are left?")), "2 apples.", "4 apples.")


def test_llama_factory_openai_layout_through_tags(tmp_path):
    """The README's OpenAI format (sharegpt with role/content tags) as preference data: a leading system message is
    the system prompt."""
    records = [{"messages": [{"role": "system", "content": SYSTEM}, user("Capital of Peru?")],
                "chosen": assistant("Lima."), "rejected": assistant("Cusco.")}]
    entry = {"formatting": "sharegpt", "ranking": True,
             "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                      "system_tag": "system"}}
    example = first(llama_factory_folder(tmp_path, records, entry))
    assert triple(example) == ((Turn("system", SYSTEM), Turn("user", "Capital of Peru?")), "Lima.", "Cusco.")


@pytest.mark.parametrize("entry, problem", [
    ({**ALPACA_ENTRY, "ranking": False}, 'not a preference dataset: its entry needs "ranking": true'),
    ({k: v for k, v in ALPACA_ENTRY.items() if k != "ranking"}, 'not a preference dataset'),
    ({**ALPACA_ENTRY, "formatting": "openai"}, "formatting 'openai' is not one of alpaca, sharegpt"),
    # each record was refused as "field 'input': empty", though its input held text: the entry did not name it
    ({**ALPACA_ENTRY, "columns": {"chosen": "chosen", "rejected": "rejected"}},
     'its "columns" name neither "prompt" nor "query": as in LLaMA-Factory, an entry\'s columns are all that is read'),
])
def test_llama_factory_entries_that_are_not_preference_data_are_one_line(entry, problem, tmp_path):
    folder = llama_factory_folder(tmp_path, alpaca_records(), entry)
    for path in (folder, folder / "data.json"):  # the folder, or the file with the index beside it
        with pytest.raises(DataFileError) as refused:
            pairs.load(str(path))
        assert str(refused.value).startswith(f"{folder / 'dataset_info.json'}: dataset 'prefs': {problem}")


def test_llama_factory_sharegpt_entry_must_name_its_conversation_column(tmp_path):
    """An entry whose "columns" leave out "messages" (LLaMA-Factory's parser then reads None) was read from
    'conversations' in silence; it is refused, as an alpaca entry naming no prompt is."""
    entry = {**SHAREGPT_ENTRY, "columns": {"chosen": "chosen", "rejected": "rejected"}}
    folder = llama_factory_folder(tmp_path, sharegpt_records(), entry)
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(folder))
    assert str(refused.value) == (
        f"{folder / 'dataset_info.json'}: dataset 'prefs': its \"columns\" do not name \"messages\": as in "
        "LLaMA-Factory, an entry's columns are all that is read, so no record would have a conversation; add "
        "\"messages\": \"conversations\" (or the column holding it)")


@pytest.mark.parametrize("entry, column, whence", [
    (SHAREGPT_ENTRY, "conversations", 'named by the dataset_info.json entry\'s "columns": "messages"'),
    ({k: v for k, v in SHAREGPT_ENTRY.items() if k != "columns"}, "conversations",
     'LLaMA-Factory\'s default: the dataset_info.json entry has no "columns" to name another ("messages": ...)')])
def test_a_sharegpt_record_without_its_conversation_column_names_the_columns_it_has(entry, column, whence, tmp_path):
    """A record whose conversation sits under another name (messages) was 'required but missing' alone: the line now
    says where the column's name comes from and which columns the record has."""
    records = [{"messages" if key == "conversations" else key: value for key, value in sharegpt_records()[0].items()}]
    folder = llama_factory_folder(tmp_path, records, entry)
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(folder))
    assert str(refused.value) == (f"{folder / 'data.json'} record 0: field {column!r}: required but missing: the "
                                  f"conversation is read from {column!r} ({whence}); the record's columns: messages, "
                                  "chosen, rejected")


@pytest.mark.parametrize("conversation, field, problem", [
    ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "conversations[1]",
     "a message of role user where the assistant's turn comes"),
    ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}], "conversations[0]",
     "a message of role assistant where the user's turn comes"),
    ([{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}], "conversations", "ends with an assistant"),
    ([{"from": "system", "value": "a"}], "conversations", "holds only a system message"),
])
def test_llama_factory_sharegpt_turns_must_alternate(conversation, field, problem, tmp_path):
    """LLaMA-Factory's converter keeps a preference conversation only when human/observation and gpt/function_call
    alternate from the user's turn and it ends with the user's; here another one stops the run, naming the message."""
    records = sharegpt_records() + [{**sharegpt_records()[0], "conversations": conversation}]
    folder = llama_factory_folder(tmp_path, records, SHAREGPT_ENTRY)
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(folder))
    assert str(refused.value).startswith(f"{folder / 'data.json'} record 1: field {field!r}: {problem}")


def test_llama_factory_entry_naming_a_folder_reads_it(tmp_path):
    """file_name: "the name of the dataset folder or dataset file"; a folder is read as any dataset folder."""
    (tmp_path / "prefs").mkdir()
    Dataset.from_list(alpaca_records()).to_parquet(str(tmp_path / "prefs" / "train.parquet"))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"prefs": {"file_name": "prefs", **ALPACA_ENTRY}}))
    assert sorted(map(triple, pairs.load(str(tmp_path)).train))[0] == ("Name a primary colour.", "Red", "Green")


def test_smoke_run_on_a_llama_factory_folder(tmp_path):
    from in_process import run_here
    from test_run import results

    records = [{"conversations": [{"from": "human", "value": f"I have {n} apples and eat one. How many are left?"}],
                "chosen": {"from": "gpt", "value": f"{n - 1} apples."},
                "rejected": {"from": "gpt", "value": f"{n} apples."}}
               for n in range(3, 7)]
    (tmp_path / "data").mkdir()
    folder = llama_factory_folder(tmp_path / "data", records, SHAREGPT_ENTRY)
    run_here(["algo=dpo", "experiment=smoke", "data=pairs", f"data.path={folder}", "data.source.n_val=1",
              "logger=none", f"hydra.run.dir={tmp_path / 'run'}"])
    counts = results(tmp_path / "run")["data"]
    assert counts["train"]["pairs"] == 3 and counts["val"]["pairs"] == 1
