"""A malformed record stops loading in one line naming its file, its row or line and its field, and what is wrong:
wrong types, empty or null fields, bad roles and turns, an implicit prompt that leaves no response, half a
character, a near miss of a format's key."""
import json

import pytest

from format_samples import assistant, records, user, write
from format_samples import datasets_cache  # noqa: F401 (an autouse fixture: it applies to this module's tests)
from solopo.data.formats import DataFileError, pairs
from solopo.data.formats.chat import split_implicit
from solopo.data.formats.pairs import format_of
from solopo.records import Where


MALFORMED = [  # format, the bad record's change, the field the message names, its problem
    ("A", {"prompt_long": 3}, "prompt_long", "expected a string, got int"),
    ("A'", {"relevant": []}, "relevant", "empty list"),
    ("trl_standard", {"chosen": None}, "chosen", "is null"),
    ("trl_conversational", {"prompt": [{"role": "user"}]}, "prompt[0].content", "expected a string, got null"),
    ("trl_conversational", {"chosen": [user("hi")]}, "chosen", "expected one assistant message, got user"),
    ("trl_conversational", {"prompt": [{"role": "robot", "content": "x"}]}, "prompt[0].role", "role 'robot'"),
    ("trl_implicit", {"rejected": "Something else entirely."}, "chosen", "shares no leading words"),
    ("trl_implicit_conversational", {"rejected": [user("Other?"), assistant("x")]}, "chosen", "no leading message"),
    ("alpaca", {"history": [["only a question"]]}, "history[0]", "expected [question, answer]"),
    ("alpaca", {"instruction": "  "}, "instruction", "empty"),
    ("sharegpt", {"chosen": {"from": "human", "value": "x"}}, "chosen", "expected one assistant message, got user"),
    ("sharegpt", {"conversations": [{"from": "gpt", "value": "x"}]}, "conversations", "ends with an assistant"),
    ("trl_standard", {"rejected": "Rome "}, "rejected", "the same as 'chosen' but for whitespace"),
]


@pytest.mark.parametrize("record, line", [
    ({"prompt ": "Q?", "chosen": "a", "rejected": "b"}, "key 'prompt ' is not 'prompt': keys are exact (lower case, "
                                                        "no spaces)"),
    ({"prompt": "Q?", "Chosen": "a", "rejected": "b"}, "key 'Chosen' is not 'chosen': keys are exact (lower case, "
                                                       "no spaces)"),
    ({"data": [{"prompt": "Q?", "chosen": "a", "rejected": "b"}]},
     "matches no schema: its 'data' holds a list of 1 objects; a file holds its records as a JSON list or one per line "
     "(JSON lines), not under a key")])
def test_a_near_miss_of_a_key_and_records_under_a_key_are_named(record, line):
    """"prompt " (a stray space) made a TRL record read as an implicit prompt, refused as sharing no leading words;
    a JSON file of {"data": [...]} matched no schema, with no word on why."""
    with pytest.raises(DataFileError) as refused:
        format_of(record, Where("f.jsonl", "line 1"))
    assert str(refused.value) == f"f.jsonl line 1: {line}"


@pytest.mark.parametrize("record, named", [
    ({"prompt": "Q?", "chosen": "a", "rejected": "b", "relevant": ["p"]}, "'relevant' (A'), 'prompt' (B)"),
    ({"prompt_long": "L", "prompt": "Q?", "chosen": "a", "rejected": "b"}, "'prompt_long' (A), 'prompt' (B)"),
    ({"instruction": "I", "conversations": [], "chosen": "a", "rejected": "b"},
     "'conversations' (sharegpt), 'instruction' (alpaca)"),
    ({"prompt_short": "S", "relevant": [], "prompt": "Q?", "chosen": "a", "rejected": "b"},
     "'prompt_short' (A), 'relevant' (A'), 'prompt' (B)")])
def test_a_record_with_two_schemas_keys_is_refused(record, named):
    """A TRL record carrying a field named like A's passages ('relevant') was read as A' and refused for lacking a
    question, a field it never meant to have."""
    with pytest.raises(DataFileError) as refused:
        format_of(record, Where("f.jsonl", "line 1"))
    count = named.count("(")
    assert str(refused.value) == (f"f.jsonl line 1: has the keys of {count} schemas, {named}: a record keeps to one "
                                  "(rename the others' fields)")


def test_half_a_character_is_named_not_a_tokenizer_traceback(tmp_path):
    """JSON's "\\ud83d" alone (a truncated emoji in scraped text) is valid JSON and reads as a lone surrogate, which the
    tokenizer refused with a TypeError after the model had loaded."""
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": f"Question {i}?", "chosen": "a", "rejected": "b"} for i in range(4)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows).replace("Question 2", "broken \\ud83d emoji"))
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(path))
    assert str(refused.value) == (f"{path} line 3: field 'prompt': character 7 is half of a character cut in two "
                                  "(\\ud83d, a lone surrogate), which no tokenizer takes")


@pytest.mark.parametrize("chosen, rejected, field, problem", [
    ("Q: Where is Rome? A: Italy.", "Q: Where is Rome? A: Italy. Actually no, Peru.", "chosen",
     "is all the beginning of 'rejected'"),
    ("Q: Where is Rome? A: Italy. Or Peru.", "Q: Where is Rome? A: Italy.", "rejected", "is all the beginning of 'chosen'"),
    ("Q: Where is Rome? A: Italy.", "Q: Where is Rome? A: Italy.", "chosen", "is the same as 'rejected'"),
    ([user("Where?"), assistant("Rome")], [user("Where?"), assistant("Rome")], "chosen", "is the same as 'rejected'"),
    ([user("Where?"), assistant("Rome")], [user("Where?"), assistant("Rome"), user("Sure?"), assistant("No")],
     "chosen", "is all the beginning of 'rejected'")])
def test_an_implicit_prompt_leaves_each_side_a_response(chosen, rejected, field, problem):
    """A verbosity pair ("...Italy." / "...Italy. Actually no, Peru.") made the whole chosen text the prompt and
    trained on an empty chosen response, exit 0."""
    with pytest.raises(DataFileError) as refused:
        split_implicit(chosen, rejected, Where("f.jsonl", "line 3"))
    assert str(refused.value) == (f"f.jsonl line 3: field '{field}': {problem}: the implicit prompt (what both begin "
                                  "with) leaves it no response")


@pytest.mark.parametrize("container", ["jsonl", "parquet"])
@pytest.mark.parametrize("fmt, change, field, problem", MALFORMED)
def test_malformed_rows_name_file_row_and_field(fmt, change, field, problem, container, tmp_path):
    rows = records(fmt)
    if fmt == "trl_standard" and "rejected" in change:
        rows[2] = {**rows[2], "chosen": "Rome", "rejected": " Rome\n"}  # only whitespace differs
    else:
        rows[2] = {**rows[2], **change}
    if container == "parquet" and any(isinstance(v, int) for v in change.values()):
        pytest.skip("a parquet column holds one type")
    path = write(container, rows, tmp_path)
    place = "line 3" if container == "jsonl" else "row 2"
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(path))
    message = str(refused.value)
    assert message.startswith(f"{path} {place}: field {field!r}: ") and problem in message and "\n" not in message


MESSAGES_AS_TEXT = "holds chat messages written out as text (a list of {role, content} as a string): store the list itself"


@pytest.mark.parametrize("fmt, field, encode", [
    ("trl_conversational", "prompt", json.dumps),  # json.dumps of the list, as a tool that wants text columns writes it
    ("trl_conversational", "chosen", repr),  # pandas' repr of the list, as df.to_csv writes an object column
    ("trl_implicit_conversational", "chosen", json.dumps),  # both sides written out; the first is named
    ("A_conversational", "prompt_long", repr),
    ("sharegpt", "chosen", json.dumps),
    ("trl_conversational", "prompt", lambda messages: str(__import__("numpy").array(messages)))])  # Parquet -> CSV
def test_messages_written_out_as_text_are_refused(fmt, field, encode, tmp_path):
    """A message list stored as a string trained as raw text: the model learnt brackets, quotes and role keys as the
    conversation, exit 0."""
    rows = records(fmt)
    written = ("chosen", "rejected") if fmt == "trl_implicit_conversational" else (field,)
    rows[1] = {**rows[1], **{name: encode(rows[1][name]) for name in written}}
    path = write("jsonl", rows, tmp_path)
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(path))
    assert str(refused.value).startswith(f"{path} line 2: field {field!r}: {MESSAGES_AS_TEXT}")


def test_messages_in_a_csv_cell_are_refused(tmp_path):
    """The CSV case end to end: pandas writes a list column as its repr."""
    import pandas
    rows = [{**row, "prompt": repr(row["prompt"])} for row in records("trl_conversational")]
    path = tmp_path / "data.csv"
    pandas.DataFrame([{**row, "chosen": row["chosen"][0]["content"], "rejected": row["rejected"][0]["content"]}
                      for row in rows]).to_csv(path, index=False)
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(path))
    assert str(refused.value).startswith(f"{path} row 0: field 'prompt': {MESSAGES_AS_TEXT}")


@pytest.mark.parametrize("prompt", ['[1, 2, 3]', '{"role": "user"}', "[Note] Read this. [end]", "[]",
                                    '[{"name": "x", "content": "y"}]', "{'a': 1}", '{"from": "USD", "value": 9.2}',
                                    '{"role": "admin", "content": "page"}'])
def test_text_that_only_looks_like_json_is_text(prompt, tmp_path):
    rows = [{**row, "prompt": prompt + f" {index}" * (not prompt.endswith(("]", "}")))}
            for index, row in enumerate(records("trl_standard"))]
    rows = [{**row, "id": str(index)} for index, row in enumerate(rows)]
    path = write("jsonl", rows, tmp_path)
    loaded = pairs.load(str(path))
    assert {example.prompt_short for example in loaded.train + loaded.val} == {row["prompt"] for row in rows}


ONE_FORM = "use one form, text or messages, in every record"


@pytest.mark.parametrize("container", ["jsonl", "json"])
@pytest.mark.parametrize("first, then, field", [
    ("trl_standard", "trl_conversational", "prompt"), ("trl_conversational", "trl_standard", "prompt"),
    ("trl_implicit", "trl_implicit_conversational", "chosen"), ("A", "A_conversational", "prompt_short")])
def test_records_that_change_form_are_refused(first, then, field, container, tmp_path):
    """A file of text rows then message rows (two sets merged) was read in silence, each row as it came: TRL reads a
    dataset's form from its first row, and datasets cannot load such a column at all. JSON text only: an Arrow column
    holds one type."""
    rows = records(first)[:2] + records(then)[2:]
    path = write(container, rows, tmp_path)
    place, first_place = ("line 3", "line 1") if container == "jsonl" else ("record 2", "record 0")
    shapes = {list: "a list of messages", str: "text"}
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(path))
    assert str(refused.value) == (f"{path} {place}: field {field!r}: {shapes[type(rows[2][field])]}, but "
                                  f"{first_place}'s is {shapes[type(rows[0][field])]}; {ONE_FORM}")


@pytest.mark.parametrize("fmt, change, field, problem", [
    ("trl_standard", {"rejected": [assistant("Lyon")]}, "rejected",
     "a list of messages, but 'chosen' is text; give chosen and rejected in one form, text or messages"),
    ("trl_conversational", {"chosen": "Paris"}, "rejected",
     "a list of messages, but 'chosen' is text; give chosen and rejected in one form, text or messages"),
    ("A_conversational", {"prompt_short": "Notes on Italy."}, "prompt_long",
     "a list of messages, but 'prompt_short' is text; give prompt_short and prompt_long in one form, text or "
     "messages")])
def test_a_record_of_two_forms_is_refused(fmt, change, field, problem, tmp_path):
    """A text chosen beside a rejected of messages was read in silence, as were an A record's prompts of two forms
    (an implicit prompt's chosen and rejected of two forms are refused as it splits them). Named in the first record
    too."""
    for at, place in ((1, "line 2"), (0, "line 1")):
        rows = records(fmt)
        rows[at] = {**rows[at], **change}
        path = write("jsonl", rows, tmp_path)
        with pytest.raises(DataFileError) as refused:
            pairs.load(str(path))
        assert str(refused.value) == f"{path} {place}: field {field!r}: {problem}"


@pytest.mark.parametrize("change", [
    lambda row: {"chosen": [assistant(row["chosen"])], "rejected": assistant(row["rejected"])},  # a text prompt
    lambda row: {"prompt": [user(row["prompt"])]}])  # a prompt of messages beside text responses
def test_a_prompt_and_responses_of_different_forms_are_read_in_every_record(change, tmp_path):
    """The prompt's form may differ from the responses' (solopo.data.formats.trl keeps the prompt as given), so long
    as every record does the same."""
    rows = [{**row, **change(row)} for row in records("trl_standard")]
    loaded = pairs.load(str(write("jsonl", rows, tmp_path)))
    assert {(example.chosen, example.rejected) for example in loaded.train} == {
        (row["chosen"], row["rejected"]) for row in records("trl_standard")}


CONTEXT_QUESTION = {"context": "Ormsby keeps the lighthouse. " * 20, "question": "Who keeps the lighthouse?"}
ANSWERS = {"chosen": "The answer is Ormsby", "rejected": "The answer is Quenby"}


@pytest.mark.parametrize("record", [{**CONTEXT_QUESTION, **ANSWERS},
                                    {**CONTEXT_QUESTION, "chosen": "Ormsby", "rejected": "Quenby"}])
def test_an_implicit_prompt_file_with_unread_content_columns_is_refused(record, tmp_path):
    """{context, question, chosen, rejected} read as TRL's implicit prompt trained on "The answer is" as the prompt,
    the context and the question dropped with no word; with answers sharing no first word it was refused as having
    no prompt, never naming the columns it left."""
    path = tmp_path / "cq.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataFileError) as refused:
        pairs.load(str(path))
    assert str(refused.value) == (
        f"{path} line 1: has 'context' beside chosen and rejected, which no reader of TRL's implicit prompt (the "
        "words both begin with) takes into the prompt ('question' it keeps only as a label); give the whole prompt in "
        "'prompt' (TRL standard), or the question in 'question' and the passages as a list in 'relevant' (schema A': "
        "solopo builds the prompts)")


def test_an_implicit_prompt_file_keeps_its_labels_and_a_column_its_caller_reads(tmp_path):
    """Numbers and nulls beside chosen and rejected are labels (a score, a source's id), and id, question and answers
    annotations: read as before. A column the caller reads itself (solopo-build's input.context) is no unread one."""
    labelled = {**ANSWERS, "score": 8.5, "source": None, "id": "q1", "answers": ["Ormsby"]}
    where = Where("f.jsonl", "line 1")
    assert pairs.Layout().parse(labelled, where).prompt_short == "The answer is"
    assert pairs.Layout(read=("context",)).parse({**ANSWERS, "context": "notes"}, where).chosen == " Ormsby"
    with pytest.raises(DataFileError, match=r"has 'passages', 'notes' beside chosen and rejected, .*takes into the "
                                            r"prompt; give"):
        pairs.Layout().parse({**ANSWERS, "passages": ["p"], "notes": "n"}, where)
