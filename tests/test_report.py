"""Evaluation at the end of a run, `python -m solopo.evaluate`, and `python -m solopo.report` on a sweep."""
import json
import math
import subprocess
import sys

from test_run import ROOT, run


def test_run_writes_the_eval_table_json_and_plots(tmp_path):
    done = run(["experiment=smoke", "logger=csv", f"hydra.run.dir={tmp_path}"])
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("base", "trained"):
        table = results["eval"][name]
        assert set(table["by_length"]) == {"short", "256"}
        assert all(math.isfinite(v) for v in table["by_length"].values()) and math.isfinite(table["average_long"])
        assert {(c["length"], c["depth"]) for c in table["cells"]} == {("short", "-"), ("256", "0"), ("256", "1")}
    for png in ("eval_accuracy_vs_length.png", "eval_depth_base.png", "eval_depth_trained.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "| base |" in done.stdout and "| trained |" in done.stdout
    metrics_csv = next((tmp_path / "csv").rglob("metrics.csv")).read_text()
    assert "eval/trained/sub_em@avg_long" in metrics_csv


def test_evaluate_command(tmp_path):
    env_run = subprocess.run([sys.executable, "-m", "solopo.evaluate", "experiment=smoke", f"hydra.run.dir={tmp_path}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert env_run.returncode == 0, env_run.stderr[-2000:]
    table = json.loads((tmp_path / "results.json").read_text())["eval"]["model"]
    assert math.isfinite(table["average"]) and (tmp_path / "eval_depth_model.png").exists()


def test_report_on_a_2x2_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    run(["-m", "algo=simpo,orpo", "ra.alpha=0,1", "experiment=smoke", "logger=none", "trainer.max_steps=1",
         f"hydra.sweep.dir={sweep}"])
    done = subprocess.run([sys.executable, "-m", "solopo.report", str(sweep)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = (sweep / "report.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    header = rows[0].split(",")
    assert "algo._target_" in header and "ra.alpha" in header and "trained avg long" in header
    assert "varying: algo._target_, ra.alpha" in done.stdout
    report = (sweep / "report.md").read_text()
    assert report.count("\n| ") == 1 + 4 and "report_score_vs_alpha.png" in report
    for png in ("report_accuracy_vs_length.png", "report_score_vs_alpha.png"):
        assert (sweep / png).read_bytes()[:4] == b"\x89PNG"
