"""Caches and results on disk: a full disk leaves the previous file whole and says which file; a cache that is
cut short or holds something else is reported and rebuilt, never used. (Reference log-probs: tests/test_reference.py;
the converted model: test_validation.py.)"""
import errno
import json
import logging
from pathlib import Path

import pytest

from solopo.generation import sampling
from solopo.eval import runner
from solopo.eval.longctx import EvalSettings
from solopo.training.results import atomic_write_text


def test_a_full_disk_keeps_the_previous_file_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_text(path, '{"steps": 3}')
    real_write = Path.write_text

    def write_half_then_fail(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_half_then_fail)
    with pytest.raises(OSError, match=r"could not write .*results.json: No space left on device"):
        atomic_write_text(path, json.dumps({"steps": 6, "metrics": list(range(1000))}))
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"steps": 3}
    assert list(tmp_path.iterdir()) == [path]  # no partial file left behind


@pytest.mark.parametrize("content", ['{"samples": [[["Paris", true]]', '{"samples": [[["Paris", "yes"]]]}', "[]"])
def test_a_damaged_sample_cache_is_reported_and_sampled_again(tmp_path, caplog, content):
    path = tmp_path / "samples.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        assert sampling._load(path, n_prompts=1) is None
    assert "is unusable" in caplog.text and str(path) in caplog.text


@pytest.mark.parametrize("content", ['{"by_length": {"short": 0.5', "{}", '{"by_length": {"9999": 0.1}, '
                                     '"average_long": 0.1, "cells": [{}]}'])
def test_a_damaged_evaluation_cache_is_reported_and_rebuilt(tmp_path, caplog, monkeypatch, content):
    settings = EvalSettings(lengths=("short", 256))
    fresh = {"by_length": {"short": 1.0, "256": 0.5}, "average_long": 0.5, "cells": [{}, {}], "average": 0.75}
    calls = []
    monkeypatch.setattr(runner, "evaluate", lambda *args, **kwargs: calls.append(1) or fresh)
    key = runner.cache_key("m", [], settings)
    (tmp_path / f"{key}.json").write_text(content)
    with caplog.at_level(logging.WARNING):
        table = runner.evaluate_model(None, None, [], [], settings, len, 8192, "base", cache_dir=tmp_path, model_id="m")
    assert table == fresh and calls == [1]
    assert "is unusable" in caplog.text
    assert json.loads((tmp_path / f"{key}.json").read_text()) == fresh  # rebuilt
    # and read back from the cache the next time, without evaluating
    assert runner.evaluate_model(None, None, [], [], settings, len, 8192, "base", cache_dir=tmp_path, model_id="m") == fresh
    assert calls == [1]
