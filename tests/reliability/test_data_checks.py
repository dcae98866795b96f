"""A data file's and the sampling block's mistakes, caught before any model loads: a repeated id names both places,
a malformed record stops the run in one line, and sampling asked of a data option without a sampling block (or its
keys given alone) names the block to add."""
import json
import sys

import pytest
from omegaconf import open_dict

from solopo.data.formats import DataFileError, hotpotqa, longbench, musique, pairs
from solopo.settings.build import ConfigError, build_settings, load_source
from support import ROOT, compose_config

FIXTURES = ROOT / "tests" / "fixtures"


def test_a_key_a_format_reads_may_be_added():
    """data=pairs reads data.split by interpolation (its source's split: ${data.split}): no key of its is unread."""
    build_settings(compose_config(["data=pairs", "data.path=x.jsonl", "data.split=test"]))


def records_of(name):
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines() if line]


@pytest.mark.parametrize("module, name, key, copy_to, place, first", [
    (pairs, "pairs.jsonl", "id", 2, "line 3", "line 1"),
    (musique, "musique.jsonl", "id", 2, "line 3", "line 1"),
    (hotpotqa, "hotpotqa.json", "_id", 3, "record 3", "record 0"),
    (longbench, "longbench.jsonl", "_id", 1, "line 2", "line 1"),
])
def test_a_repeated_id_names_both_places(module, name, key, copy_to, place, first, tmp_path):
    records = records_of(name)
    records[copy_to][key] = records[0][key]
    path = tmp_path / name
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    path.write_text("\n".join(lines) + "\n" if name.endswith(".jsonl") else json.dumps(records), encoding="utf-8")
    with pytest.raises(DataFileError) as refused:
        module.load(str(path))
    assert str(refused.value) == (f"{path} {place}: id {records[0][key]!r} is also the id of {first}; ids must be "
                                  "unique within a file")


def test_a_malformed_data_file_stops_the_run_in_one_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    plain = (FIXTURES / "pairs_plain.jsonl").read_text(encoding="utf-8")
    path.write_text(plain + '{"prompt": "Hi"}\n', encoding="utf-8")
    line = len(path.read_text(encoding="utf-8").splitlines())
    with pytest.raises(ConfigError) as stopped:
        load_source(compose_config(["data=pairs", f"data.path={path}"]))
    assert str(stopped.value) == f"{path} line {line}: field 'chosen': required but missing"


def test_sampling_with_vllm_where_it_is_not_installed_stops_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails, as where it is not installed
    with pytest.raises(ConfigError) as stopped:
        build_settings(compose_config(["experiment=smoke", "data.pairs=sampled", "data.sampling.engine=vllm"]))
    assert str(stopped.value) == "data.sampling.engine=vllm but vllm is not installed (pip install vllm)"
    # the engine of pairs that are not sampled is not used: no refusal
    build_settings(compose_config(["experiment=smoke", "data.sampling.engine=vllm", "data.pairs=gold"]))


@pytest.mark.parametrize("option, note", [
    ("pairs", " (sampling makes pairs for a passages file, schema A'; ready-made pairs are used as written)"),
    ("longbench", "")])
def test_sampled_pairs_from_a_data_config_without_sampling_settings_stop_in_one_line(option, note):
    """The line said what was missing but not how to add it; the override it names composes the QA options' block."""
    fixture = next(FIXTURES.glob(f"{option}.*"))
    with pytest.raises(ConfigError) as stopped:
        build_settings(compose_config([f"data={option}", f"data.path={fixture}", "data.pairs=sampled"]))
    assert str(stopped.value) == (f"data.pairs=sampled: data={option} has no data.sampling block to sample with; add "
                                  "the one data=qa, musique, hotpotqa and twowiki use, "
                                  "+data/common@data.sampling=sampling (conf/data/common/sampling.yaml), or set "
                                  f"data.pairs=gold{note}")
    fixed = build_settings(compose_config([f"data={option}", f"data.path={fixture}", "data.pairs=sampled",
                                           "+data/common@data.sampling=sampling"]))
    assert fixed.sampling.k == 32


def test_sampling_keys_for_a_data_config_without_sampling_settings_name_the_block_to_add():
    """data=pairs data.sampling.k=2 (added as +data.sampling.k=2) made a block of one key, refused as missing eight
    others that SamplingSettings needs: the line names the block the command line should add instead."""
    fixture = next(FIXTURES.glob("pairs.*"))
    for pairs in ("sampled", "gold"):
        with pytest.raises(ConfigError) as stopped:
            build_settings(compose_config(["data=pairs", f"data.path={fixture}", f"data.pairs={pairs}",
                                           "+data.sampling.k=2"]))
        assert str(stopped.value) == ("data.sampling.k=2: data=pairs has no data.sampling block to set; add the one "
                                      "data=qa, musique, hotpotqa and twowiki use, +data/common@data.sampling=sampling "
                                      "(conf/data/common/sampling.yaml) (sampling makes pairs for a passages file, "
                                      "schema A'; ready-made pairs are used as written)")
    fixed = build_settings(compose_config(["data=pairs", f"data.path={fixture}", "data.pairs=sampled",
                                           "+data/common@data.sampling=sampling", "data.sampling.k=2"]))
    assert fixed.sampling.k == 2


def test_a_data_block_of_ones_own_config_without_a_data_option_is_checked_as_any(tmp_path):
    """A config of one's own may set `override data: null` and write its data block inline: no option is chosen."""
    cfg = compose_config(["experiment=smoke"])
    with open_dict(cfg):
        cfg.hydra.runtime.choices.data = None
    build_settings(cfg)
