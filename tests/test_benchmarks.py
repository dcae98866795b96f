"""The efficiency scripts run end to end (on the CPU, tiny model) and write the tables they promise; the
numbers themselves come from the GPU (experiments/efficiency/README.md)."""
import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPTS = ROOT / "experiments" / "efficiency"
SMALL = ["--short", "128", "--response", "16", "--warmup", "1"]


def script(name, *args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_bench_measures_every_method_and_variant(tmp_path):
    script("bench.py", "--models", "tiny", "--algos", "dpo", "--lengths", "384", "--variants", "padded,packed-sdpa",
           "--max-length-models", "none", "--steps", "1", "--out", str(tmp_path), *SMALL, tmp_path=tmp_path)
    rows = json.loads((tmp_path / "solopo_grid.json").read_text())["rows"]
    cells = {(r["method"], r["variant"]): r for r in rows}
    assert set(cells) == {(m, v) for m in ("solopo", "solopo_both", "long_po") for v in ("padded", "packed-sdpa")}
    assert all(r["status"] == "ok" and r["step_s"] > 0 for r in rows)
    # 2 short (128) + 1 long (384) tokens; the bench's pair has no padding, so packing changes no count
    assert cells["solopo", "padded"]["tokens"] == cells["solopo", "packed-sdpa"]["tokens"] == 2 * 128 + 384
    assert "| variant |" in (tmp_path / "solopo_grid.md").read_text()
    memory = json.loads((tmp_path / "logp_memory.json").read_text())["rows"]
    assert {r["variant"] for r in memory} == {"response_only", "full_logits"}


def test_profile_step_splits_a_step_into_phases(tmp_path):
    out = script("profile_step.py", "--model", "tiny", "--length", "384", "--methods", "solopo,long_po",
                 "--out", str(tmp_path), *SMALL, tmp_path=tmp_path)
    text = (tmp_path / "profile_tiny_384.txt").read_text()
    assert "forward[short]" in text and "forward[long]" in text and "backward" in text and "optimizer" in text
    assert text.count("free-running step under the profiler") == 2 and "Self CPU" in out
