"""Loaders of user data files: each format on its fixture, the official HotpotQA sample,
deterministic splits, wrong answers, the shipped configs, and every kind of malformed input."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from solopo.data.formats import DataFileError, hotpotqa, longbench, musique, pairs, twowiki
from solopo.data.formats.wrong_answers import add_wrong_answers
from solopo.data.pairs import build_examples
from solopo.data.schema import PreferenceExample, QAItem
from solopo.scoring import normalize_answer, sub_em

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
HOTPOT_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hotpotqa_dev_sample.json"
QA_FIXTURES = [(musique, "musique.jsonl"), (hotpotqa, "hotpotqa.json"), (twowiki, "twowiki.json"),
               (longbench, "longbench.jsonl")]


def load(module, name, **kwargs):
    return module.load(str(FIXTURES / name), **kwargs)


def by_id(splits):
    return {item.id: item for item in splits.train + splits.val}


def test_musique(caplog):
    splits = load(musique, "musique.jsonl", n_val=1)
    items = by_id(splits)
    assert len(items) == 4 and "skipped 1 unanswerable record(s) of 5" in caplog.text
    beijing = items["2hop__104187_82372"]
    assert beijing.answers == ("Beijing", "Peking", "Beijing, China")
    assert beijing.relevant == (
        "Mekong\nThe Mekong is a trans-boundary river in East Asia and Southeast Asia. It rises on the Tibetan "
        "Plateau in Qinghai Province of China and flows through Laos, Thailand, Cambodia and Vietnam to the "
        "South China Sea.",
        "China\nChina, officially the People's Republic of China, is a country in East Asia. Its capital is "
        "Beijing and its most populous city is Shanghai.",
    )
    assert beijing.irrelevant[0].startswith("Tonlé Sap\nTonlé Sap is")
    assert items["2hop__511454_120259"].wrong_answers == ("2003",)  # numeric: the file's other number
    # Every paragraph once, the unanswerable record's too (Mekong and Walkman appear in two records each).
    assert len(splits.distractors) == len(set(splits.distractors)) == 14
    assert any(p.startswith("Flag of Tokyo\n") for p in splits.distractors)
    assert all(p in splits.distractors for item in items.values() for p in item.relevant + item.irrelevant)


def test_hotpotqa():
    items = by_id(load(hotpotqa, "hotpotqa.json"))
    rivers = items["5a7c4f0e55429935c91b5170"]
    # The official sentences bring their own leading spaces.
    assert rivers.relevant[0] == ("Rhine\nThe Rhine is a river that rises in the Swiss Alps and flows north to the "
                                  "North Sea. With a length of about 1,230 km, it is one of the longest rivers of Europe.")
    assert len(rivers.relevant) == 2 and len(rivers.irrelevant) == 2 and rivers.wrong_answers == ("no",)
    dow = items["5ac0c1a2554299012d1db59b"]
    assert dow.relevant == ("Dow Jones & Company\nDow Jones & Company was founded in 1882 by Charles Dow, Edward Jones "
                            "and Charles Bergstresser. Since 2007 it has been owned by News Corp.",)
    assert "Barron's (newspaper)\nBarron's is an American weekly magazine published by Dow Jones & Company." in dow.irrelevant
    assert items["5a8f3c6e554299458435d5a1"].wrong_answers == ("430 km",)  # a number for a number
    assert items["5adcd4a75542990d50227d37"].wrong_answers == ("1996",)
    assert items["5ae2070a5542994d89d5b313"].relevant[1].startswith("Antonín Dvořák\nAntonín Leopold Dvořák")


@pytest.mark.skipif(not HOTPOT_SAMPLE.exists(), reason=f"the official HotpotQA sample is not at {HOTPOT_SAMPLE}")
def test_hotpotqa_official_sample():
    splits = hotpotqa.load(str(HOTPOT_SAMPLE), n_val=1)
    items = by_id(splits)
    assert len(items) == 4
    same_nationality = items["5a8b57f25542995d1e6f1371"]
    assert same_nationality.answers == ("yes",) and same_nationality.wrong_answers == ("no",)
    assert ("Scott Derrickson\nScott Derrickson (born July 16, 1966) is an American director, screenwriter and "
            "producer. He lives in Los Angeles, California.") in same_nationality.relevant
    assert len(same_nationality.relevant) == 2 and len(same_nationality.irrelevant) == 3
    assert items["5a87ab905542996e4f3088c1"].relevant[0].startswith("Androscoggin Bank Colisée\n")
    assert "Etiquette & Espionage\nEtiquette & Espionage is a young adult steampunk novel by Gail Carriger." \
        in splits.distractors
    assert not any("&amp;" in p or "  " in p for p in splits.distractors)


def test_twowiki_joins_its_sentences_with_a_space():
    items = by_id(load(twowiki, "twowiki.json"))
    jaws = items["a5bd0c7c0bde11eba7f7acde48001122"]
    assert jaws.relevant[0] == ("Jaws (film)\nJaws is a 1975 American thriller film directed by Steven Spielberg. "
                                "It is based on the 1974 novel by Peter Benchley.")
    assert items["3c7b1d460bdb11eba7f7acde48001122"].wrong_answers == ("no",)


def test_longbench_keeps_the_whole_context():
    splits = load(longbench, "longbench.jsonl")
    items = by_id(splits)
    curie = items["1b3d5f7a9c0e2a4c6e8a0c2e4a6c8e0a2c4e6a8c0e2a4c6e"]
    assert curie.answers == ("Marie Curie", "Maria Skłodowska-Curie") and curie.relevant == ()
    assert curie.context.startswith("Passage 1:\nPolonium\n") and curie.context.endswith("atomic nucleus in 1911.")
    assert splits.distractors == ()
    # the other answer of the same LongBench dataset first, then any
    assert items["6a2f5c1e0d7b4b8a9c3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a"].wrong_answers[0] == "Marie Curie"


def test_pairs_schema_a_and_b_give_preference_examples():
    solopo_pairs = load(pairs, "pairs.jsonl").train
    assert all(isinstance(row, PreferenceExample) for row in solopo_pairs)
    unnamed = next(row for row in solopo_pairs if row.id == "pairs:line3")  # no "id": file and line
    assert unnamed.question == "" and unnamed.answers == () and unnamed.rejected == "I cannot tell from the documents."
    assert len(unnamed.prompt_long) > len(unnamed.prompt_short)
    plain = by_id(load(pairs, "pairs_plain.jsonl"))
    haiku = plain["haiku-7"]
    assert haiku.prompt_short == haiku.prompt_long == "Write a haiku about autumn rain."
    assert haiku.chosen == "Cold rain on the roof\nmaple leaves slide down the glass\nthe kettle answers"


def test_pairs_schema_a_passages_give_items_for_the_context_builder():
    splits = load(pairs, "pairs_passages.jsonl", n_val=1)
    items = by_id(splits)
    assert all(isinstance(item, QAItem) for item in items.values())
    assert items["utzon-1"].answers == ("2003",) and items["utzon-1"].wrong_answers == ("1973",)
    assert items["kenya-1"].answers == ("Jomo Kenyatta", "Mzee Jomo Kenyatta")
    assert len(splits.distractors) == len(set(splits.distractors)) == 8
    examples = build_examples(splits.train, long_len=80, count_tokens=lambda t: len(t.split()), pool=splits.distractors)
    assert {(e.chosen, e.rejected) for e in examples} <= {("2003", "1973"), ("Jomo Kenyatta", "Uhuru Kenyatta"),
                                                          ("Beijing", "Phnom Penh")}


def test_passages_without_chosen_or_rejected_take_answers_and_wrong_answers_drawn_from_the_file(tmp_path):
    """A file of QA records (question, passages, answers) is what on-policy sampling needs; it was refused for lack
    of chosen and rejected. Its answers are the gold ones, a record's own rejected is kept, and the others get wrong
    answers drawn from the file's other answers (never a gold one), which gold pairs take as rejected."""
    rows = [{"id": "utzon", "question": "When?", "relevant": ["Utzon won it in 2003."], "answers": ["2003"]},
            {"id": "kenya", "question": "Who?", "relevant": ["Kenyatta led Kenya."], "answers": ["Jomo Kenyatta"]},
            {"id": "mekong", "question": "Which?", "relevant": ["The Mekong."], "chosen": "Mekong",
             "rejected": "Rhine"},
            {"id": "year", "question": "When?", "relevant": ["It opened in 1932."], "answers": ["1932", "in 1932"]}]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    items = by_id(pairs.load(str(path), n_val=1))
    assert items["utzon"].answers == ("2003",) and items["utzon"].wrong_answers == ("1932",)  # a year for a year
    assert items["year"].wrong_answers == ("2003",) and items["mekong"].wrong_answers == ("Rhine",)
    assert items["kenya"].answers == ("Jomo Kenyatta",) and items["kenya"].wrong_answers == ("Mekong",)
    rows.append({"id": "none", "question": "?", "relevant": ["p"], "rejected": "x"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataFileError, match=r"qa.jsonl line 5: field 'answers': required but missing: a passages record "
                                            r"\(schema A'\) gives its answer as 'answers' \(a list\) or 'chosen'"):
        pairs.load(str(path))
    rows[-1]["answers"] = []  # given, but empty: not "missing"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataFileError, match=r"qa.jsonl line 5: field 'answers': an empty list: a passages record "):
        pairs.load(str(path))


def test_gold_pairs_build_from_loaded_items():
    splits = load(hotpotqa, "hotpotqa.json")
    examples = build_examples(splits.train, long_len=150, count_tokens=lambda t: len(t.split()), pool=splits.distractors)
    for item, example in zip(splits.train, examples):
        assert all(passage in example.prompt_long for passage in item.relevant)
        assert (example.chosen, example.rejected) == (item.answers[0], item.wrong_answers[0])


def ids(rows):
    return [row.id for row in rows]


def test_splits_are_seeded_and_validation_ignores_n_train():
    first, again = load(hotpotqa, "hotpotqa.json", n_val=2, seed=3), load(hotpotqa, "hotpotqa.json", n_val=2, seed=3)
    assert first == again
    assert len({tuple(ids(load(hotpotqa, "hotpotqa.json", n_val=2, seed=s).train)) for s in range(4)}) > 1
    assert len(first.train) == 4 and not set(ids(first.train)) & set(ids(first.val))
    capped = load(hotpotqa, "hotpotqa.json", n_val=2, seed=3, n_train=2)
    assert ids(capped.train) == ids(first.train)[:2] and capped.val == first.val


def test_split_sizes_are_checked():
    with pytest.raises(DataFileError, match="hotpotqa.json: 6 usable records cannot give data.source.n_val=6 validation items"):
        load(hotpotqa, "hotpotqa.json", n_val=6)
    with pytest.raises(ValueError, match="n_train"):
        load(hotpotqa, "hotpotqa.json", n_train=0)


@pytest.mark.parametrize("splits", [load(module, name) for module, name in QA_FIXTURES]
                         + ([hotpotqa.load(str(HOTPOT_SAMPLE))] if HOTPOT_SAMPLE.exists() else []))
def test_wrong_answers_are_never_gold(splits):
    for item in splits.train + splits.val:
        assert item.wrong_answers, item.id
        golds = {normalize_answer(answer) for answer in item.answers}
        for wrong in item.wrong_answers:
            assert normalize_answer(wrong) not in golds and sub_em(wrong, item.answers) == 0.0, (item.id, wrong)


def test_wrong_answers_come_from_the_same_group_and_do_not_depend_on_order():
    def item(id_, answer):
        return QAItem(id=id_, question="?", answers=(answer,), relevant=("p",))
    items = [item("a", "Paris"), item("b", "Lyon"), item("c", "Paris, Texas"), item("d", "Lille"), item("e", "Nice"),
             item("f", "Ada Lovelace"), item("g", "Alan Turing")]
    groups = ["city"] * 5 + ["person"] * 2
    wrong = {i.id: i.wrong_answers for i in add_wrong_answers(items, groups, seed=0)}
    assert sorted(wrong["a"]) == ["Lille", "Lyon", "Nice"]  # never "Paris, Texas": it contains the gold
    assert set(wrong["f"]) <= {"Alan Turing", "Lyon", "Lille", "Nice", "Paris", "Paris, Texas"}
    assert wrong["f"][0] == "Alan Turing"
    reversed_order = {i.id: i.wrong_answers for i in add_wrong_answers(items[::-1], groups[::-1], seed=0)}
    assert reversed_order == wrong


def test_a_long_prompt_no_longer_than_the_short_one_is_counted(tmp_path, caplog):
    records = records_of("pairs.jsonl")
    for record in records[:2]:  # swapped fields
        record["prompt_short"], record["prompt_long"] = record["prompt_long"], record["prompt_short"]
    path = tmp_path / "pairs.jsonl"
    path.write_text(as_file(records, "pairs.jsonl"), encoding="utf-8")
    assert len(by_id(pairs.load(str(path)))) == len(records)  # still pairs for the PO loss
    assert (f"{path}: 2 of {len(records)} records have a prompt_long no longer than their prompt_short "
            "(line 1, line 2); SoLo-RA has no long context to align there") in caplog.text


def test_skipped_records_are_counted_in_the_splits():
    assert load(musique, "musique.jsonl").skipped == {"unanswerable": 1}
    assert load(hotpotqa, "hotpotqa.json").skipped == {}


def compose_data(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("option, fixture", [("musique", "musique.jsonl"), ("hotpotqa", "hotpotqa.json"),
                                             ("twowiki", "twowiki.json"), ("longbench", "longbench.jsonl"),
                                             ("pairs", "pairs.jsonl")])
def test_data_configs_load_their_file(option, fixture):
    cfg = compose_data([f"data={option}", f"data.path={FIXTURES / fixture}", "data.source.n_val=1", "seed=5"])
    splits = instantiate(cfg.data.source)
    assert splits.train and len(splits.val) == 1
    with pytest.raises(Exception, match="path"):  # path is mandatory
        instantiate(compose_data([f"data={option}"]).data.source)


def records_of(name):
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines() if line.strip()]


def as_file(records, name):
    """jsonl: record i on line i + 1; a JSON list: one record a line, record i on line i + 2."""
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    return "\n".join(lines) + "\n" if name.endswith(".jsonl") else "[\n" + ",\n".join(lines) + "\n]\n"


def changed(name, index, change):
    records = records_of(name)
    change(records[index])
    return as_file(records, name)


def set_field(path, value):
    """A change that sets records[...][path[0]][path[1]]... to value."""
    def change(record):
        for key in path[:-1]:
            record = record[key]
        record[path[-1]] = value
    return change


def unsupported(record):
    for paragraph in record["paragraphs"]:
        paragraph["is_supporting"] = False


MALFORMED = [
    (musique, "musique.jsonl", lambda: as_file(records_of("musique.jsonl"), "musique.jsonl").replace('"id": "2hop__511454', '"id" "2', 1),
     "musique.jsonl line 2: invalid JSON: Expecting ':' delimiter"),
    *[(musique, "musique.jsonl", lambda f=f: changed("musique.jsonl", 1, lambda r: r.pop(f)),
       f"musique.jsonl line 2: field '{f}': required but missing") for f in ("id", "question", "answer", "paragraphs")],
    (musique, "musique.jsonl", lambda: changed("musique.jsonl", 2, set_field(["paragraphs"], "Mekong")),
     "musique.jsonl line 3: field 'paragraphs': expected a list, got str"),
    (musique, "musique.jsonl", lambda: changed("musique.jsonl", 0, set_field(["answer"], "  ")),
     "musique.jsonl line 1: field 'answer': empty"),
    (musique, "musique.jsonl", lambda: changed("musique.jsonl", 0, set_field(["paragraphs", 1, "is_supporting"], "yes")),
     "musique.jsonl line 1: field 'paragraphs[1].is_supporting': expected true or false, got str"),
    (musique, "musique.jsonl", lambda: changed("musique.jsonl", 0, set_field(["answer_aliases"], "Peking")),
     "musique.jsonl line 1: field 'answer_aliases': expected a list, got str"),
    (musique, "musique.jsonl", lambda: changed("musique.jsonl", 3, unsupported),
     "musique.jsonl line 4: field 'paragraphs': no paragraph has is_supporting: true"),
    (musique, "musique.jsonl", lambda: '{"id": "x"}\n[1, 2]\n', "musique.jsonl line 2: expected a JSON object, got list"),
    (musique, "musique.jsonl", lambda: "\n\n", "musique.jsonl: no records"),
    # an unclosed record: the column is where the line ends, not its line break's next line
    (musique, "musique.jsonl", lambda: '{"id": "x"}\n{"id": "y", "q": 1\n',
     "musique.jsonl line 2: invalid JSON: Expecting ',' delimiter (column 19)"),
    (hotpotqa, "hotpotqa.json", lambda: as_file(records_of("hotpotqa.json"), "hotpotqa.json").replace('"answer": "Nokia",', '"answer": "Nokia"', 1),
     "hotpotqa.json line 3: invalid JSON: Expecting ',' delimiter"),
    *[(hotpotqa, "hotpotqa.json", lambda f=f: changed("hotpotqa.json", 1, lambda r: r.pop(f)),
       f"hotpotqa.json record 1: field '{f}': required but missing")
      for f in ("_id", "question", "answer", "supporting_facts", "context")],
    (hotpotqa, "hotpotqa.json", lambda: changed("hotpotqa.json", 1, set_field(["supporting_facts", 0], ["Motorola", 0])),
     "hotpotqa.json record 1: field 'supporting_facts[0]': title 'Motorola' is not in the context"),
    (hotpotqa, "hotpotqa.json", lambda: changed("hotpotqa.json", 0, set_field(["supporting_facts"], [])),
     "hotpotqa.json record 0: field 'supporting_facts': empty list: no supporting paragraph"),
    (hotpotqa, "hotpotqa.json", lambda: changed("hotpotqa.json", 2, set_field(["supporting_facts", 1, 1], "0")),
     "hotpotqa.json record 2: field 'supporting_facts[1][1]': expected an integer, got str"),
    (hotpotqa, "hotpotqa.json", lambda: changed("hotpotqa.json", 1, set_field(["context", 1], "Nokia")),
     "hotpotqa.json record 1: field 'context[1]': expected [title, [sentences]], got \"Nokia\""),
    (hotpotqa, "hotpotqa.json", lambda: changed("hotpotqa.json", 4, set_field(["answer"], "")),
     "hotpotqa.json record 4: field 'answer': empty"),
    (hotpotqa, "hotpotqa.json", lambda: json.dumps(records_of("hotpotqa.json")[0]),
     "hotpotqa.json: expected a JSON list of records, got dict"),
    (twowiki, "twowiki.json", lambda: changed("twowiki.json", 3, set_field(["type"], 3)),
     "twowiki.json record 3: field 'type': expected a string, got int"),
    (longbench, "longbench.jsonl", lambda: changed("longbench.jsonl", 0, set_field(["answers"], [])),
     "longbench.jsonl line 1: field 'answers': empty list"),
    (longbench, "longbench.jsonl", lambda: changed("longbench.jsonl", 1, set_field(["answers", 1], " ")),
     "longbench.jsonl line 2: field 'answers[1]': empty"),
    (longbench, "longbench.jsonl", lambda: changed("longbench.jsonl", 2, lambda r: r.pop("input")),
     "longbench.jsonl line 3: field 'input': required but missing"),
    (pairs, "pairs.jsonl", lambda: changed("pairs.jsonl", 1, lambda r: r.pop("chosen")),
     "pairs.jsonl line 2: field 'chosen': required but missing"),
    (pairs, "pairs.jsonl", lambda: changed("pairs.jsonl", 2, set_field(["rejected"], records_of("pairs.jsonl")[2]["chosen"])),
     "pairs.jsonl line 3: field 'rejected': the same as 'chosen'"),
    (pairs, "pairs.jsonl", lambda: as_file(records_of("pairs.jsonl")[:2] + records_of("pairs_plain.jsonl")[:1], "pairs.jsonl"),
     "pairs.jsonl line 3: schema B (prompt), but line 1 uses schema A (prompt_short, prompt_long)"),
    (pairs, "pairs.jsonl", lambda: '{"question": "Who?", "answer": "Ada"}\n', "pairs.jsonl line 1: matches no schema"),
    # read as TRL's implicit prompt, it failed on chosen's message: "field 'chosen': expected a string, got dict"
    (pairs, "pairs.jsonl", lambda: json.dumps({"messages": [{"role": "user", "content": "Who?"}],
                                               "chosen": {"role": "assistant", "content": "Ada"},
                                               "rejected": {"role": "assistant", "content": "Bob"}}) + "\n",
     "pairs.jsonl line 1: has 'messages' beside chosen and rejected: LLaMA-Factory's sharegpt layout with a messages "
     "column is read through its dataset_info.json entry"),
    (pairs, "pairs.jsonl", lambda: changed("pairs_passages.jsonl", 1, set_field(["relevant"], [])),
     "pairs.jsonl line 2: field 'relevant': empty list"),
    (pairs, "pairs.jsonl", lambda: changed("pairs_passages.jsonl", 1, set_field(["relevant", 1], " ")),
     "pairs.jsonl line 2: field 'relevant[1]': empty"),
    (pairs, "pairs.jsonl", lambda: changed("pairs_passages.jsonl", 0, lambda r: r["irrelevant"].append(r["relevant"][1])),
     "pairs.jsonl line 1: field 'irrelevant[1]': the same passage as relevant[1]; a passage is evidence or irrelevant"),
]


@pytest.mark.parametrize("module, name, content, message", MALFORMED,
                         ids=[f"{m.__name__.rsplit('.', 1)[1]}-{i}" for i, (m, *_) in enumerate(MALFORMED)])
def test_malformed_files_name_file_place_and_field(module, name, content, message, tmp_path):
    path = tmp_path / name
    path.write_text(content(), encoding="utf-8")
    with pytest.raises(DataFileError) as raised:
        module.load(str(path))
    assert str(raised.value).startswith(str(path)) and message in str(raised.value)


def imported_modules(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_benchmark_readers_share_the_record_readers_not_the_data_formats():
    """solopo.eval.longbench and ruler read their files with the training data's readers (solopo.data.formats);
    the record readers and DataFileError are their own module now (solopo.records), which both use. eval/ keeps
    data's question schema, context builder and chat template (one way: data/ imports nothing of eval/)."""
    package = ROOT / "solopo"
    modules = {path: imported_modules(path) for folder in ("eval", "data") for path in (package / folder).rglob("*.py")}
    reaching = {str(path.relative_to(package)): sorted(m for m in found if m.startswith("solopo.data.formats"))
                for path, found in modules.items() if path.parent.name == "eval"}
    assert not {path: found for path, found in reaching.items() if found}
    assert not [path for path, found in modules.items() if path.is_relative_to(package / "data")
                and any(m.startswith("solopo.eval") for m in found)]


def implicit_pairs(path: Path, count: int) -> str:
    path.write_text("".join(json.dumps({"chosen": f"Question {i}? yes", "rejected": f"Question {i}? no"}) + "\n" for i in range(count)))
    return str(path)


def test_a_file_too_small_for_its_validation_names_data_source_n_val_and_a_value_that_works(tmp_path):
    """Before, '5 usable records cannot give 8 validation items ...' left the user to find the key."""
    with pytest.raises(DataFileError, match=r"five.jsonl: 5 usable records cannot give data.source.n_val=8 validation "
                                            r"items and at least one training item; set data.source.n_val to at most 4"):
        pairs.load(implicit_pairs(tmp_path / "five.jsonl", 5), n_val=8)


def test_validation_taking_most_of_a_small_file_is_logged_once_naming_data_source_n_val(tmp_path, caplog):
    """Before, 8 of 12 records went to validation without a word."""
    splits = pairs.load(implicit_pairs(tmp_path / "twelve.jsonl", 12), n_val=8)
    assert (len(splits.train), len(splits.val)) == (4, 8)
    warned = [r.getMessage() for r in caplog.records if "n_val" in r.getMessage()]
    assert warned == [f"{tmp_path / 'twelve.jsonl'}: data.source.n_val=8 of its 12 usable records go to validation, "
                      "4 to training"]
    caplog.clear()
    pairs.load(implicit_pairs(tmp_path / "sixteen.jsonl", 16), n_val=8)  # half: no warning
    assert not [r for r in caplog.records if "n_val" in r.getMessage()]
