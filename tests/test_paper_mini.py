"""The paper_mini study (experiments/paper_mini): its presets compose, its job list, the launcher's
scheduling, skipping and failure records, on stand-in commands that take a fraction of a second, and the
study's report (its tables, comparisons and the paper's claims; the committed outputs regenerate)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "paper_mini"))
import failures  # noqa: E402
import launch  # noqa: E402
import report  # noqa: E402
import study  # noqa: E402
from test_report import study_dir  # noqa: E402

from solopo.report.runs import find_runs  # noqa: E402
from solopo.report.tables import fill_blocks  # noqa: E402

SCRIPT_ENV = dict(os.environ, PYTHONPATH=str(ROOT))  # a study script finds this checkout's solopo
TINY = ["model=tiny", "trainer=cpu", "data.long_len=256", "data.short_len=128"]


@pytest.mark.parametrize("row, method, responses", [
    ("base", "solopo", ["chosen"]), ("short_po", "short_po", ["chosen"]), ("long_po", "long_po", ["chosen"]),
    ("expand_long", "expand_long", ["chosen"]), ("solopo", "solopo", ["chosen"]),
    ("solopo_both", "solopo", ["chosen", "rejected"]), ("solopo_detach", "solopo", ["chosen"]),
])
def test_presets_compose_and_take_cpu_overrides(row, method, responses):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        gpu = compose("config", overrides=[f"experiment=paper_mini/{row}", "algo=dpo", "ra.alpha=3.0"])
        cpu = compose("config", overrides=[f"experiment=paper_mini/{row}", *TINY])
    assert (gpu.method.name, list(gpu.ra.responses), gpu.ra.alpha) == (method, responses, 3.0)
    assert gpu.ra.detach_short == (row == "solopo_detach")
    assert (gpu.data.long_len, gpu.data.short_len, gpu.data.pairs, gpu.trainer.accelerator) == (4096, None, "sampled", "gpu")
    assert not gpu.trainer.enable_checkpointing and "CSVLogger" in gpu.logger._target_
    assert (cpu.model.name, cpu.trainer.accelerator, cpu.data.long_len, cpu.data.short_len) == (
        "tiny-random-llama", "cpu", 256, 128)


def test_job_list_order_and_sampling_leaders():
    jobs = study.study_jobs((0, 1, 2))
    names = [j.name for j in jobs]
    assert len(names) == len(set(names)) == 1 + 6 * 3 + 2 * 3 + 5 * 3 * 2  # base, 6 rows, alpha sweep, 5 rows x 2 seeds
    assert names[0] == "base-s0" and names[-1] == "long_po-orpo-s2"  # the extra seeds of long_po go last
    assert "solopo-dpo-a3-s0" in names and "solopo-dpo-a0.3-s0" in names and "solopo-simpo-a1-s2" in names
    first = launch.leaders(jobs)
    assert {k: j.name for k, j in first.items() if k[0] == 0} == {
        (0, "none"): "base-s0", (0, "short"): "short_po-dpo-s0", (0, "long"): "long_po-dpo-s0"}
    job = study.Job("solopo", "dpo", 3.0, 1)
    assert job.command(Path("/r"), "python")[2:] == [
        "solopo.run", "experiment=paper_mini/solopo", "seed=1", "algo=dpo", "ra.alpha=3.0",
        "hydra.run.dir=/r/solopo-dpo-a3-s1"]
    assert study.Job("base", None, None, 0).command(Path("/r"))[2] == "solopo.evaluate"


@pytest.mark.parametrize("log, reason", [
    ("Traceback...\nValueError: no train pairs left ({'sampling': {'kept': 0}}; skipped {})\n", "no pairs"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB\n", "out of memory"),
    ("Traceback...\nKeyError: 'x'\nomegaconf.errors.ConfigKeyError: Key 'foo' is not in struct\n", "ConfigKeyError"),
    ("nothing useful\n", "exit status 3"),
])
def test_failure_reasons(log, reason):
    assert failures.classify(log, 3)[0] == reason


def fake_command(self, root, python, extra):
    """Instead of a run: 0.3 s of "sampling", Lightning's first line, 0.6 s of "training", then results.json,
    or for long_po the error a run without pairs ends with."""
    code = ("import pathlib, sys, time; d = pathlib.Path(sys.argv[1]); time.sleep(0.3); "
            "sys.exit('ValueError: no val pairs left (kept 0)') if d.name.startswith('long_po') else None; "
            f"print({launch.READY_MARK!r}, flush=True); time.sleep(0.6); (d / 'results.json').write_text('{{}}')")
    return [python, "-c", code, str(root / self.name)]


def test_launcher_waits_for_leaders_records_failures_and_continues(tmp_path, monkeypatch):
    monkeypatch.setattr(study.Job, "command", fake_command)
    jobs = study.select(study.study_jobs((0,)), only={"short_po", "long_po", "solopo"}, algos={"dpo", "simpo"})
    records = launch.run(jobs, tmp_path, parallel=3, deadline_s=60, default_s=5, extra=(), samplers=1, poll_s=0.05)
    by_name = {r["name"]: r for r in records}
    began = {name: r["ended_at"] - r["seconds"] for name, r in by_name.items()}
    assert len(records) == len(jobs) == 2 + 2 + 2 * 3
    failed = json.loads((tmp_path / "long_po-dpo-s0" / "failed.json").read_text())
    assert failed["reason"] == "no pairs" and "no val pairs left" in failed["detail"]
    assert by_name["long_po-simpo-s0"]["status"] == "failed" and by_name["short_po-dpo-s0"]["status"] == "done"
    # followers start once the leader printed Lightning's first line (0.3 s in), before it ends (0.9 s in)
    leader_start, leader_end = began["short_po-dpo-s0"], by_name["short_po-dpo-s0"]["ended_at"]
    assert leader_start + 0.25 <= began["short_po-simpo-s0"] < leader_end
    assert all(began[name] >= leader_start + 0.25 for name in began if name.startswith("solopo"))
    assert began["long_po-dpo-s0"] >= leader_start + 0.25  # one leader samples at a time (samplers=1)
    assert launch.run(jobs, tmp_path, 3, 60, 5, (), poll_s=0.05) == []  # done and failed jobs are not run again


def test_launcher_starts_nothing_that_cannot_finish_before_the_deadline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study.Job, "command", fake_command)
    jobs = study.select(study.study_jobs((0,)), only={"short_po"})
    assert launch.run(jobs, tmp_path, parallel=2, deadline_s=10, default_s=60, extra=(), poll_s=0.05) == []
    assert "not started (3; the next call runs them)" in capsys.readouterr().out


def test_jobs_running_at_the_deadline_are_stopped_and_set_aside(tmp_path, monkeypatch):
    slow = lambda self, root, python, extra: [python, "-c", "import time; time.sleep(60)"]  # noqa: E731
    monkeypatch.setattr(study.Job, "command", slow)
    jobs = study.select(study.study_jobs((0,)), only={"base"})
    records = launch.run(jobs, tmp_path, parallel=1, deadline_s=1.0, default_s=0.5, extra=(), poll_s=0.05)
    assert [r["status"] for r in records] == ["interrupted"]
    assert not (tmp_path / "base-s0").exists() and launch.status(tmp_path, jobs[0]) is None  # runs again next call
    (aside,) = (tmp_path / ".partial").iterdir()
    assert json.loads((aside / "job.json").read_text())["status"] == "interrupted"


def test_a_job_out_of_memory_beside_others_runs_again_with_fewer(tmp_path, monkeypatch, capsys):
    """Jobs share one GPU, so running out of its memory beside others is a transient: the job runs once more, when at
    most half of --parallel run (here: alone, after the leader)."""
    def command(self, root, python, extra):
        run_dir = root / self.name
        if self.name == "short_po-simpo-s0":  # out of memory on its first attempt only
            code = ("import pathlib, sys; d = pathlib.Path(sys.argv[1]); m = d.parent / 'tried'\n"
                    "if m.exists(): (d / 'results.json').write_text('{}')\n"
                    "else: m.write_text(''); sys.exit('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB')")
            return [python, "-c", code, str(run_dir)]
        return fake_command(self, root, python, extra)

    monkeypatch.setattr(study.Job, "command", command)
    jobs = study.select(study.study_jobs((0,)), only={"short_po"}, algos={"dpo", "simpo"})
    records = launch.run(jobs, tmp_path, parallel=2, deadline_s=60, default_s=5, extra=(), poll_s=0.05)
    statuses = [(r["name"], r["status"]) for r in records]
    assert statuses.count(("short_po-simpo-s0", "retried")) == 1 and ("short_po-simpo-s0", "done") in statuses
    assert not (tmp_path / "short_po-simpo-s0" / "failed.json").exists()
    leader_end = next(r["ended_at"] for r in records if r["name"] == "short_po-dpo-s0")
    second = [r for r in records if r["name"] == "short_po-simpo-s0"][-1]
    assert second["ended_at"] - second["seconds"] >= leader_end - 0.1  # started once the leader was done
    assert "out of memory beside 1 other jobs; it starts again when at most 0 others run" in capsys.readouterr().out


def test_study_table_comparisons_and_paper_claims(tmp_path):
    root = study_dir(tmp_path)
    paper = {"best_alpha": {"DPO": 3.0},
             "claims": [{"claim": "SoLoPO beats Long-PO", "better": "solopo", "worse": "long_po"}]}
    path = report.write_study(find_runs([root]), tmp_path / "out", paper)
    text = path.read_text()
    # short, 1024, 2048, avg long, gain over base (12 - 5), pairs, train s, peak GiB
    assert ("| DPO | solopo | 3 | 3 | 50.0 ± 0.0 | 12.0 ± 2.0 | 12.0 ± 2.0 | 12.0 ± 2.0 | 7.0 ± 2.0 | 100 ± 0 | 20 ± 0 "
            "| 2.00 ± 0.00 |") in text
    assert "| DPO | long_po | - | 0 (+3 failed: no pairs) | **failed: no pairs** |" in text
    # 12 - 5 = 7 points, more than the two seed spreads together (2 + 1); paired per seed: 10-5, 12-6, 14-4
    assert ("SoLo-DPO (alpha 3) 12.0 ± 2.0 vs Expand-long-DPO 5.0 ± 1.0 avg long-context sub-EM: SoLo-DPO (alpha 3) "
            "higher by 7.0 points, beyond the seed spread (std 2.0 and 1.0); per seed: +5.0, +6.0, +10.0.") in text
    assert "no comparison, Long-DPO has no result (no pairs)" in text
    assert "- SoLoPO beats Long-PO (solopo > long_po): DPO: no result (long_po: no pairs)." in text
    assert "| long_po | failed: no pairs |" in text  # the methods x algorithms table says why too
    assert "over alpha 1, 3 (seeds 0), the best avg long-context sub-EM is at alpha 1 (11.0)" in text  # seeds of both
    assert "SoLoPO trains in 20 s vs 30 s for expand_long (0.67x)" in text  # long_po failed: expand_long stands in
    assert report.VERDICT in text
    for png in ("study_accuracy_vs_length.png", "study_score_vs_alpha.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_readme_blocks_are_rewritten_from_the_generated_tables(tmp_path):
    page = ("# Study\n\nprose stays\n<!-- solopo.report:pivot -->\nold table\n<!-- /solopo.report:pivot -->\n"
            "more prose\n<!-- solopo.report:runs -->\n<!-- /solopo.report:runs -->\n")
    blocks = {"pivot": ["| method | DPO |", "|---|---|", "| solopo | 12.0 |"], "runs": ["3 runs, 0 failed."]}
    text = fill_blocks(page, blocks, "README.md")
    assert text == ("# Study\n\nprose stays\n<!-- solopo.report:pivot -->\n| method | DPO |\n|---|---|\n| solopo | 12.0 |\n"
                    "<!-- /solopo.report:pivot -->\nmore prose\n<!-- solopo.report:runs -->\n3 runs, 0 failed.\n"
                    "<!-- /solopo.report:runs -->\n")
    assert fill_blocks(text, blocks) == text  # rewriting again changes nothing
    with pytest.raises(ValueError, match="README.md: unknown generated block.s. tables; known: pivot, runs"):
        fill_blocks("<!-- solopo.report:tables -->\n<!-- /solopo.report:tables -->", blocks, "README.md")
    with pytest.raises(ValueError, match="README.md: no <!-- solopo.report:NAME -->"):
        fill_blocks("no blocks here", blocks, "README.md")


def test_the_study_command_regenerates_the_committed_outputs(tmp_path):
    """The study's report command on the committed runs writes the committed study.md, report.md and report.csv,
    and leaves the README's generated blocks as they are."""
    study_dir_ = ROOT / "experiments" / "paper_mini"
    readme = tmp_path / "README.md"
    readme.write_text((study_dir_ / "README.md").read_text())
    done = subprocess.run([sys.executable, str(study_dir_ / "report.py"), str(study_dir_ / "runs"), "--paper",
                           str(study_dir_ / "paper.json"), "--out", str(tmp_path / "out"), "--readme", str(readme)],
                          cwd=ROOT, env=SCRIPT_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("study.md", "report.md", "report.csv"):
        assert (tmp_path / "out" / name).read_text() == (study_dir_ / "results" / name).read_text(), name
    assert readme.read_text() == (study_dir_ / "README.md").read_text()


def test_the_study_command_names_a_bad_paper_file_in_one_line(tmp_path):
    root = study_dir(tmp_path)
    (tmp_path / "paper.json").write_text("{not json")
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "paper_mini" / "report.py"), str(root),
                           "--paper", str(tmp_path / "paper.json"), "--out", str(tmp_path / "out")],
                          cwd=ROOT, env=SCRIPT_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {tmp_path / 'paper.json'}: not JSON")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
