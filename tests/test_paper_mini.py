"""The paper_mini study (experiments/paper_mini): its presets compose, its job list, and the launcher's
scheduling, skipping and failure records, on stand-in commands that take a fraction of a second."""
import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "paper_mini"))
import failures  # noqa: E402
import launch  # noqa: E402
import study  # noqa: E402

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
