"""Caches and results on disk (solopo.cache): a full disk leaves the previous file whole and says which file; a cache
entry that is cut short, edited or holds something else is reported and rebuilt, never used (cache.verify=strict: the
run stops); the evaluation key covers the items' content; processes sharing one cache all finish with one valid entry;
a cache that cannot be written costs a warning, not the run; a stage of a run that only read the cache is marked so in
its costs. (Reference log-probs: tests/test_reference.py; the
converted model: test_validation.py.)"""
import dataclasses
import json
import logging
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from solopo.cache import DiskCache, atomic_write_text, digest, temporary_name
from solopo.data.schema import QAItem
from solopo.eval import runner
from solopo.generation import sampling
from solopo.training.callbacks import StageCosts
from shared_cache import ROWS, ask_for_one_entry
from support import full_disk

from conftest import EVAL

SETTINGS = dataclasses.replace(EVAL, lengths=("short", 256))
TABLE = {"by_length": {"short": 1.0, "256": 0.5}, "average_long": 0.5, "cells": [{}, {}], "average": 0.75,
         "scores": [], "n_by_length": {"short": 2, "256": 2}, "ci95_by_length": {"short": [0.34, 1.0], "256": [0.09, 0.91]},
         "ci95_long": [0.09, 0.91]}  # a whole table: per-case scores and intervals too (runner.check_table)
ITEMS = [QAItem("q0", "Where was Ada born?", ("Quorath",), ("Ada was born in Quorath.",))]


def test_a_full_disk_keeps_the_previous_file_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_text(path, '{"steps": 3}')
    full_disk(monkeypatch)
    with pytest.raises(OSError, match=r"could not write .*results.json: No space left on device"):
        atomic_write_text(path, json.dumps({"steps": 6, "metrics": list(range(1000))}))
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"steps": 3}
    assert list(tmp_path.iterdir()) == [path]  # no partial file left behind


@pytest.mark.parametrize("raw, payload", [('{"format": 1, "payload": [[["Paris", true]]', None),
                                          (None, [[["Paris", "yes"]]]), ("[]", None)])
def test_a_damaged_sample_cache_is_reported_and_sampled_again(tmp_path, caplog, raw, payload):
    """Cut short, of the wrong shape (with a matching digest: the kind's own check), not an entry."""
    cache = DiskCache(tmp_path, "pairs")
    if raw is None:
        cache.put("k", payload)
    else:
        cache.path("k").write_text(raw)
    with caplog.at_level(logging.WARNING):
        assert cache.get("k", lambda samples: sampling.read_samples(samples, 1)) is None
    assert "is unusable" in caplog.text and str(cache.path("k")) in caplog.text


def evaluate_with_cache(cache, monkeypatch, items=(), fresh=TABLE):
    """runner.evaluate_model with ``evaluate`` replaced by a stand-in that returns ``fresh``; returns the table and
    how many times the stand-in ran."""
    calls = []
    monkeypatch.setattr(runner, "evaluate", lambda *args, **kwargs: calls.append(1) or fresh)
    table = runner.evaluate_model(None, None, list(items), [], SETTINGS, len, 8192, "base", cache=cache, model_id="m")
    return table, len(calls)


@pytest.mark.parametrize("content", ['{"by_length": {"short": 0.5', "{}", '{"by_length": {"9999": 0.1}, '
                                     '"average_long": 0.1, "cells": [{}]}'])
def test_a_damaged_evaluation_cache_is_reported_and_rebuilt(tmp_path, caplog, monkeypatch, content):
    cache = DiskCache(tmp_path, "eval")
    key = runner.cache_key("m", [], [], SETTINGS, 8192)
    if content.endswith("}"):  # a whole entry, digest and all, around a table that is not one for these settings
        cache.put(key, json.loads(content))
    else:
        cache.path(key).write_text(content)
    with caplog.at_level(logging.WARNING):
        assert evaluate_with_cache(cache, monkeypatch) == (TABLE, 1)
    assert "is unusable" in caplog.text
    assert cache.get(key) == TABLE  # rebuilt
    assert evaluate_with_cache(cache, monkeypatch) == (TABLE, 0)  # and read back the next time, without evaluating


def test_an_edited_evaluation_table_is_reported_and_rebuilt(tmp_path, caplog, monkeypatch):
    """An entry whose scores were edited (base sub-EM 99%) fails its digest: one warning, evaluated again."""
    cache = DiskCache(tmp_path, "eval")
    evaluate_with_cache(cache, monkeypatch, ITEMS)
    (path,) = tmp_path.glob("*.json")
    entry = json.loads(path.read_text())
    entry["payload"]["by_length"]["short"] = 0.99
    path.write_text(json.dumps(entry))
    with caplog.at_level(logging.WARNING):
        assert evaluate_with_cache(cache, monkeypatch, ITEMS) == (TABLE, 1)
    assert f"eval cache {path} is unusable (its payload does not match its digest" in caplog.text
    assert len(caplog.records) == 1


@pytest.mark.parametrize("change", [dict(question="Where did Ada die?"), dict(answers=("Zenna",)),
                                    dict(relevant=("Ada was born in Zenna.",))])
def test_items_changed_under_the_same_ids_are_evaluated_again(tmp_path, monkeypatch, change):
    """The key covers each item's content, not only its id: a data file edited under the same ids is a new entry."""
    cache = DiskCache(tmp_path, "eval")
    edited = [dataclasses.replace(ITEMS[0], **change)]
    assert runner.cache_key("m", edited, [], SETTINGS, 8192) != runner.cache_key("m", ITEMS, [], SETTINGS, 8192)
    assert evaluate_with_cache(cache, monkeypatch, ITEMS)[1] == 1
    assert evaluate_with_cache(cache, monkeypatch, ITEMS)[1] == 0
    assert evaluate_with_cache(cache, monkeypatch, edited)[1] == 1


def test_the_evaluation_key_covers_the_distractor_passages_and_the_length_limit():
    key = runner.cache_key("m", ITEMS, ["a passage"], SETTINGS, 8192)
    assert key != runner.cache_key("m", ITEMS, ["another passage"], SETTINGS, 8192)
    assert key != runner.cache_key("m", ITEMS, ["a passage"], SETTINGS, 4096)


def test_an_entry_copied_under_another_key_or_of_an_older_version_is_not_used(tmp_path, caplog):
    cache = DiskCache(tmp_path, "eval")
    cache.put("a", TABLE)
    cache.path("b").write_text(cache.path("a").read_text())
    cache.path("old").write_text(json.dumps(TABLE))  # what solopo wrote before entries had a digest
    with caplog.at_level(logging.WARNING):
        assert cache.get("a") == TABLE and cache.get("b") is None and cache.get("old") is None
    assert "holds entry a" in caplog.text and "not a solopo cache entry of this version" in caplog.text


def test_strict_verification_stops_the_run_in_one_line(tmp_path, capsys):
    cache = DiskCache(tmp_path, "reference", verify="strict")
    cache.path("k").parent.mkdir(parents=True, exist_ok=True)
    cache.path("k").write_text('{"format": 1, "key": "k", "digest": "0", "payload": {}}')
    with pytest.raises(SystemExit) as stopped:
        cache.get_or_compute("k", lambda: pytest.fail("a strict cache must not recompute"))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: reference cache {cache.path('k')} is unusable")
    with pytest.raises(ValueError, match="cache.verify='sometimes'"):
        DiskCache(tmp_path, "reference", verify="sometimes")


def test_an_unknown_verify_setting_is_refused_before_the_model_loads():
    from solopo.settings.build import ConfigError, build_settings
    from test_configs import compose_config

    build_settings(compose_config(["cache.verify=strict"]))
    with pytest.raises(ConfigError, match="cache.verify=sometimes"):
        build_settings(compose_config(["cache.verify=sometimes"]))


def test_the_digest_is_canonical_and_rows_do_not_run_together():
    assert digest({"a": 1, "b": (2, 3)}) == digest({"b": [2, 3], "a": 1})
    assert digest([1], [2]) != digest([12]) and digest(1, 2) != digest(12)


def test_four_processes_on_one_fresh_cache_all_finish_with_one_valid_entry(tmp_path):
    """4 spawned processes, 5 fresh cache folders one after another: all ask for one entry at once (the lock: one
    computes, the others read its entry), then all rewrite it 10 times at once (unique temporary names: no
    FileNotFoundError on the rename, as the shared `<name>.tmp` gave, and no write fails or is found damaged). Each
    folder ends with one whole entry."""
    context = multiprocessing.get_context("spawn")
    roots = [str(tmp_path / f"cache{i}") for i in range(5)]
    barrier = context.Barrier(4)
    workers = [context.Process(target=ask_for_one_entry, args=(rank, roots, barrier, str(tmp_path / f"out{rank}")))
               for rank in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    outs = [json.loads((tmp_path / f"out{rank}").read_text()) for rank in range(4)]
    assert [out["warnings"] for out in outs] == [[]] * 4  # no write failed, no entry was found damaged
    returned = [out["values"] for out in outs]
    for i, root in enumerate(roots):
        computed = (tmp_path / f"cache{i}" / "computed.log").read_text().split()
        assert len(computed) == 1  # computed once; the other three read the first one's entry
        assert all(values[i] == {"rank": int(computed[0]), "rows": ROWS} for values in returned)
        cache = DiskCache(tmp_path / f"cache{i}", "reference")
        assert sorted(p.name for p in cache.root.iterdir()) == ["computed.log", "entry.json", "entry.lock"]
        assert cache.get("entry")["rows"] == ROWS


def test_a_killed_writers_temporary_file_goes_when_the_entry_is_computed(tmp_path):
    """kill -9 between an entry's write and its rename leaves .NAME.HOST.PID.RANDOM.tmp (temporary_name); the next
    process that computes the entry removes it: its writer is gone. A live writer's file stays."""
    cache = DiskCache(tmp_path, "reference")
    killed = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = temporary_name(cache.path("entry")).name.replace(f".{os.getpid()}.", f".{killed.stdout.strip()}.")
    (cache.root / dead).write_text('{"format": 1, "payl')
    live = temporary_name(cache.path("entry"))
    live.write_text("{")
    assert cache.get_or_compute("entry", lambda: {"rows": [1]}) == {"rows": [1]}
    assert sorted(p.name for p in cache.root.iterdir()) == sorted(["entry.json", "entry.lock", live.name])


def test_a_failed_cache_write_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    cache = DiskCache(tmp_path / "eval", "eval")
    full_disk(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert evaluate_with_cache(cache, monkeypatch) == (TABLE, 1)
    assert len(caplog.records) == 1
    path = cache.path(runner.cache_key("m", [], [], SETTINGS, 8192))
    assert caplog.records[0].getMessage() == (f"eval cache: could not write {path}: No space left on device; "
                                              "the run goes on without caching it")
    assert not list(cache.root.glob("*.json")) and not list(cache.root.glob(".*"))


@pytest.mark.parametrize("blocked", ["read-only directory", "a file where the folder goes"])
def test_an_unwritable_cache_directory_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog, blocked):
    root = tmp_path / "eval"
    if blocked == "read-only directory":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        root.mkdir(mode=0o555)
    else:
        root.write_text("")  # e.g. SOLOPO_CACHE pointing below a file
        root = root / "eval"
    try:
        with caplog.at_level(logging.WARNING):
            assert evaluate_with_cache(DiskCache(root, "eval"), monkeypatch) == (TABLE, 1)
        assert len(caplog.records) == 1 and f"could not write {root}" in caplog.text
    finally:
        if root.is_dir():
            root.chmod(0o755)


def test_a_stage_that_only_read_the_cache_is_marked_cached(tmp_path):
    """The first run's sampling computes the entry and a second run's reads it: only the second's stage is marked
    cached (its cost is in the first run). A stage that read one entry and computed another (the train split's pairs
    from the cache, the validation split's sampled) or asked no cache (training) is not."""
    cache = DiskCache(tmp_path, "pairs")
    first, second = StageCosts(torch.device("cpu")), StageCosts(torch.device("cpu"))
    with first("sampling"):
        cache.get_or_compute("train", lambda: [1])
    with second("sampling"):
        cache.get_or_compute("train", lambda: pytest.fail("the entry is there: it is read, not computed"))
    with second("reference"):
        cache.get_or_compute("train", lambda: [1]), cache.get_or_compute("val", lambda: [2])
    with second("training"):
        pass
    cached = {name: stage["cached"] for name, stage in second.record.items()}
    assert first.record["sampling"]["cached"] is False
    assert cached == {"sampling": True, "reference": False, "training": False}
