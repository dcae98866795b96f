"""Evaluation at the end of a run, `python -m solopo.evaluate`, and `python -m solopo.report` on a sweep (a 2x2 smoke
sweep: one result per job, then its report)."""
import json
import math

import pytest

from in_process import call, run_here
from test_run import ROOT

from solopo.report.runs import find_runs
from solopo.report.sweep import write_report
from solopo.report.tables import counted


def test_run_writes_the_eval_table_json_and_plots(tmp_path):
    done = run_here(["experiment=smoke", "logger=csv", f"hydra.run.dir={tmp_path}"])
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
    # one name per metric: the averages as results.json and the dashboard's summary name them
    assert {"eval/trained/sub_em@256", "eval/trained/avg_long", "eval/gain/avg_long"} <= set(
        metrics_csv.splitlines()[0].split(",")) and "sub_em@avg_long" not in metrics_csv


def test_evaluate_command(tmp_path):
    call("solopo.evaluate", ["experiment=smoke", f"hydra.run.dir={tmp_path}"])
    table = json.loads((tmp_path / "results.json").read_text())["eval"]["model"]
    assert math.isfinite(table["average"]) and (tmp_path / "eval_depth_model.png").exists()


@pytest.fixture(scope="module")
def sweep_2x2(tmp_path_factory):
    """The folder of a 2x2 smoke sweep, SimPO and ORPO at alpha 0 and 1, one step each, run once for the two tests
    below (setup.cfg's --dist loadscope keeps a module's tests on one worker)."""
    sweep = tmp_path_factory.mktemp("sweep_2x2")
    run_here(["-m", "algo=simpo,orpo", "ra.alpha=0,1", "experiment=smoke", "logger=none", "trainer.max_steps=1",
              f"hydra.sweep.dir={sweep}"])
    return sweep


def test_multirun_writes_one_result_per_job(sweep_2x2):
    found = sorted(sweep_2x2.glob("*/results.json"))
    assert len(found) == 4
    alphas = sorted((json.loads(p.read_text())["config"]["algo"]["_target_"], json.loads(p.read_text())["config"]["ra"]["alpha"]) for p in found)
    assert alphas == [("solopo.core.algos.ORPO", 0.0), ("solopo.core.algos.ORPO", 1.0), ("solopo.core.algos.SimPO", 0.0), ("solopo.core.algos.SimPO", 1.0)]


def test_a_failed_job_does_not_end_the_sweep(tmp_path):
    """A job that found no pairs stopped the whole sweep (exit 2 from inside Hydra's launcher): the jobs after it never
    ran. Now each job runs, the failed one leaves failed.json, and the sweep's status says one failed."""
    done = run_here(["-m", "data.pairs=sampled,gold", "experiment=smoke", "logger=none", "trainer.max_steps=1",
                     "eval.enabled=false", f"hydra.sweep.dir={tmp_path}"], expect=1)
    failed, completed = sorted(tmp_path.glob("0_*/failed.json")), sorted(tmp_path.glob("1_*/results.json"))
    assert len(failed) == 1 and len(completed) == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: 1 job(s) of the sweep failed or were stopped: "
                                                            f"{failed[0].parent} ")


def test_a_job_without_a_record_is_named(sweep_2x2, tmp_path):
    """A job killed without a record (SIGKILL, out of memory) was left out of the report without a word."""
    import shutil

    sweep = shutil.copytree(sweep_2x2, tmp_path / "sweep")
    killed = sorted(sweep.glob("*/results.json"))[1]
    killed.unlink()
    done = call("solopo.report", [sweep])
    assert done.stdout.strip().splitlines()[-1] == (
        f"not reported: 1 run with neither results.json nor failed.json (killed, out of memory, or still running): "
        f"{killed.parent}")


def test_report_on_a_2x2_sweep(sweep_2x2):
    sweep = sweep_2x2
    done = call("solopo.report", [sweep])
    rows = (sweep / "report.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    header = rows[0].split(",")
    assert "algo._target_" in header and "ra.alpha" in header and "trained avg long" in header
    assert "varying: algo._target_, ra.alpha" in done.stdout
    report = (sweep / "report.md").read_text()
    assert report.count("\n| ") == 1 + 4 and "report_score_vs_alpha.png" in report
    for png in ("report_accuracy_vs_length.png", "report_score_vs_alpha.png"):
        assert (sweep / png).read_bytes()[:4] == b"\x89PNG"


def fake_run(run_dir, algo, method, seed, avg_long, alpha=None, both=False, failed=None, fit_s=30.0):
    """A run directory as `python -m solopo.run` leaves it (results.json), or as a launcher records a failed
    job (failed.json with the job's config); avg_long in %, the same at every length."""
    config = {"algo": {"_target_": f"solopo.core.algos.{algo}"}, "seed": seed, "data": {"source": {"seed": seed}},
              "method": {"name": method, "use_ra": alpha is not None},
              "ra": {"alpha": 1.0 if alpha is None else alpha, "responses": ["chosen", "rejected"] if both else ["chosen"]}}
    run_dir.mkdir(parents=True)
    if failed:
        failure = {"reason": failed, "detail": "no train pairs left", "config": config}
        (run_dir / "failed.json").write_text(json.dumps(failure))
        return
    table = lambda score: {"by_length": {"short": 0.5, "1024": score, "2048": score}, "average_long": score}  # noqa: E731
    (run_dir / "results.json").write_text(json.dumps({
        "config": config, "eval": {"base": table(0.05), "trained": table(avg_long / 100)},
        "metrics": {"train/peak_mem_gib": 2.0}, "timings": {"fit_s": fit_s}, "data": {"train": {"pairs": 100}}}))


def study_dir(tmp_path):
    root = tmp_path / "study"
    for seed, (solopo, expand) in enumerate([(10.0, 5.0), (12.0, 6.0), (14.0, 4.0)]):
        fake_run(root / f"solopo-s{seed}", "DPO", "solopo", seed, solopo, alpha=3.0, fit_s=20.0)
        fake_run(root / f"expand-s{seed}", "DPO", "expand_long", seed, expand)
        fake_run(root / f"long-s{seed}", "DPO", "long_po", seed, 0.0, failed="no pairs")
    fake_run(root / "short-s0", "DPO", "short_po", 0, 9.0)
    fake_run(root / "solopo-a1-s0", "DPO", "solopo", 0, 11.0, alpha=1.0)
    return root


def test_seeds_collapse_into_mean_and_std_and_failed_runs_stay_visible(tmp_path):
    root = study_dir(tmp_path)
    report = write_report(find_runs([root]), tmp_path / "out", seeds=True)
    assert report["keys"] == ["method.name", "method.use_ra", "ra.alpha"]  # the seed keys are not factors
    rows = {(r["method.name"], r["ra.alpha"]): r for r in report["rows"]}
    solopo = rows[("solopo", 3.0)]
    assert solopo["seeds"] == 3 and str(solopo["trained avg long"]) == "12.0 ± 2.0"  # sample std of 10, 12, 14
    assert rows[("long_po", 1.0)]["status"] == "3 of 3 failed: no pairs"
    assert str(rows[("solopo", 1.0)]["trained avg long"]) == "11.0"  # one seed: no spread
    csv_text = (tmp_path / "out" / "report.csv").read_text()
    assert "trained avg long std" in csv_text.splitlines()[0]
    assert "| 3 of 3 failed: no pairs |" in (tmp_path / "out" / "report.md").read_text()
    assert [p.name for p in report["plots"]] == ["report_accuracy_vs_length.png", "report_score_vs_alpha.png"]


def test_counts_in_the_report_text_agree_with_their_number(tmp_path):
    """The report of one run said "1 runs"; --seeds printed its number of groups as runs."""
    fake_run(tmp_path / "one" / "run", "DPO", "solopo", 0, 10.0, alpha=1.0)
    done = call("solopo.report", [str(tmp_path / "one")])
    assert done.stdout.strip().splitlines()[-1] == "1 run; varying: nothing"
    assert (tmp_path / "one" / "report.md").read_text().startswith("# Report: 1 run\n")
    write_report(find_runs([study_dir(tmp_path)]), tmp_path / "out", seeds=True)  # 11 runs: 5 settings x seeds
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Report: 11 runs in 5 groups (mean ± std")
    assert counted(1, "group") == "1 group" and counted(0, "run") == "0 runs"


def test_runs_are_found_at_any_depth_below_the_folder_given(tmp_path):
    """`solopo-report outputs` was refused although Hydra had put each run in outputs/DATE/TIME."""
    fake_run(tmp_path / "outputs" / "2026-12-06" / "14-09-49", "DPO", "solopo", 0, 10.0, alpha=1.0)
    fake_run(tmp_path / "outputs" / "2026-12-07" / "09-00-00", "SimPO", "solopo", 0, 12.0, alpha=1.0)
    (tmp_path / "outputs" / "2026-12-06" / "14-09-49" / "csv").mkdir()  # a run's own folders are not searched
    fake_run(tmp_path / "outputs" / "2026-12-06" / "14-09-49" / "csv" / "inner", "ORPO", "solopo", 0, 1.0, alpha=1.0)
    runs = find_runs([tmp_path / "outputs"])
    assert [r.path.name for r in runs] == ["14-09-49", "09-00-00"]
    done = call("solopo.report", [str(tmp_path / "outputs")])
    assert done.stdout.strip().splitlines()[-1].startswith("2 runs")


@pytest.mark.parametrize("folder, message", [
    ("empty", "no results.json or failed.json under"), ("missing", "missing: no such directory"),
    ("bad", "results.json: not JSON"), ("listed", "results.json: not a run's record (a JSON object), but list"),
    ("null", "failed.json: not a run's record (a JSON object), but NoneType"),
    ("empty_object", "results.json: not a run's record (no config"),
])
def test_a_folder_without_readable_runs_is_one_line_and_exit_status_2(tmp_path, folder, message):
    (tmp_path / "empty").mkdir()
    for name, file, text in (("bad", "results.json", "{cut short"), ("listed", "results.json", "[]"),
                             ("null", "failed.json", "null"), ("empty_object", "results.json", "{}")):
        (tmp_path / name / "run").mkdir(parents=True)
        (tmp_path / name / "run" / file).write_text(text)
    done = call("solopo.report", [tmp_path / folder], expect=2)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_library_knows_no_study():
    """A study's rows, claims and verdict live with the study (experiments/): no module of solopo names them, and
    the report package does not list the methods either (it knows them only through each run's config)."""
    study_only = ("solopo_both", "solopo_detach", "paper_mini")
    for path in (ROOT / "solopo").rglob("*.py"):
        assert not [w for w in study_only if w in path.read_text()], path
    methods_and_findings = ("short_po", "long_po", "expand_long", "claim", "verdict")
    for path in (ROOT / "solopo" / "report").glob("*.py"):
        assert not [w for w in methods_and_findings if w in path.read_text().lower()], path


def test_report_rows_carry_n_and_the_95_percent_interval(tmp_path):
    """A table that holds its intervals gives a `95% CI` and an `n` column beside each sub-EM (3 of 6: Wilson
    [18.8, 81.2] -> "19-81"); results.json files written before tables carried them still make rows."""
    from solopo.eval.longctx import EvalCase, score_table

    cases = [EvalCase("q", ("Quorath",), "1024", "0", "p")] * 6
    table = score_table(cases, ["Quorath"] * 3 + ["no"] * 3)
    root = tmp_path / "runs"
    fake_run(root / "old", "DPO", "solopo", 0, 10.0, alpha=1.0)
    fake_run(root / "new", "DPO", "solopo", 1, 10.0, alpha=3.0)
    results = json.loads((root / "new" / "results.json").read_text())
    (root / "new" / "results.json").write_text(json.dumps({**results, "eval": {"trained": table}}))
    rows = write_report(find_runs([root]), tmp_path / "out")["rows"]
    new = next(r for r in rows if "trained sub-EM@1024 n" in r)
    assert new["trained sub-EM@1024"] == 50.0 and new["trained sub-EM@1024 95% CI"] == "19-81"
    assert new["trained avg long n"] == 6 and new["trained avg long 95% CI"] == "19-81"


def test_report_rows_carry_a_benchmarks_scores(tmp_path):
    """A run evaluated on LongBench or RULER (eval=longbench, eval=ruler) keeps its tables under results.json's
    "benchmark": the report showed none of its scores, so a sweep compared on a benchmark compared nothing. Each subset's
    score (points) and n, and the benchmark's average, per model evaluated."""
    root = tmp_path / "runs"
    fake_run(root / "a", "DPO", "solopo", 0, 10.0, alpha=1.0)
    results = json.loads((root / "a" / "results.json").read_text())
    bench = lambda avg: {"benchmark": "Ruler", "metric": "SubEM", "average": avg, "examples": [],  # noqa: E731
                         "ci95_average": [avg - 10, avg + 10],
                         "subsets": {"qa_1_4096": {"score": avg, "n": 40, "truncated": 0, "ci95": [avg - 12, avg + 12]}}}
    (root / "a" / "results.json").write_text(json.dumps({**results, "eval": {}, "benchmark": {
        "base": bench(20.0), "trained": bench(32.5)}}))
    (row,) = write_report(find_runs([root]), tmp_path / "out")["rows"]
    assert row["trained qa_1_4096"] == 32.5 and row["trained qa_1_4096 n"] == 40
    assert row["trained qa_1_4096 95% CI"] == "20-44" and row["base Ruler average 95% CI"] == "10-30"
    assert row["base Ruler average"] == 20.0 and row["trained Ruler average"] == 32.5


def test_a_run_that_did_not_end_as_planned_is_counted_failed(tmp_path):
    """A run stopped after too many non-finite steps writes results.json and exits 1 (its launcher adds failed.json);
    a preempted one writes results.json with its resume state. Neither is a finished run: no table counts its scores."""
    fake_run(tmp_path / "stopped", "DPO", "solopo", 0, 30.0, alpha=1.0)
    fake_run(tmp_path / "preempted", "DPO", "solopo", 1, 30.0, alpha=1.0)
    fake_run(tmp_path / "ended", "DPO", "solopo", 2, 10.0, alpha=1.0)
    fake_run(tmp_path / "interrupted", "DPO", "solopo", 3, 30.0, alpha=1.0)
    for name, extra in (("stopped", {"faults": {"stopped": "8 non-finite steps in a row"}}),
                        ("preempted", {"preempted": {"signal": "SIGTERM", "step": 3}}),
                        ("interrupted", {"preempted": {"signal": "SIGINT", "step": 3}})):  # Ctrl-C
        path = tmp_path / name / "results.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))
    runs = {r.path.name: r for r in find_runs([tmp_path])}
    assert runs["stopped"].failed == "non-finite steps" and runs["preempted"].failed == "preempted"
    assert runs["interrupted"].failed == "interrupted"
    assert runs["stopped"].scores == {} and runs["ended"].failed is None and runs["ended"].scores["avg long"] == 10.0
    report = write_report(find_runs([tmp_path]), tmp_path / "out", seeds=True)
    assert [r["status"] for r in report["rows"]] == [
        "1 of 4 failed: non-finite steps; 2 of 4 stopped: interrupted, preempted"]
    report = write_report(find_runs([tmp_path]), tmp_path / "out", seeds=False)
    statuses = sorted(r["status"] for r in report["rows"])
    # a run stopped with its state saved is not called failed: ckpt_path=last resumes it
    assert statuses == ["failed: non-finite steps", "ok", "stopped: interrupted", "stopped: preempted"]
    (tmp_path / "stopped" / "failed.json").write_text(json.dumps({"reason": "exit status 1", "config": {}}))
    assert {r.path.name: r for r in find_runs([tmp_path])}["stopped"].failed == "exit status 1"  # the launcher's record


def test_a_figure_whose_labels_overflow_is_saved_whole_without_a_warning(tmp_path):
    """A legend of many runs' long names leaves tight_layout no room: the canvas grows around it, no warning."""
    import warnings

    import matplotlib.pyplot as plt
    from PIL import Image

    from solopo.report.plots import save_figure

    fig, ax = plt.subplots(figsize=(3, 2))
    for i in range(30):
        ax.plot([0, 1], [i, i], label=f"algo=dpo,ra.alpha={i},data.long_len=4096,method=solopo,seed={i}" * 2)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = save_figure(fig, tmp_path / "wide.png")
    assert Image.open(path).size[0] > 3 * 120  # wider than the 3-inch figure: the legend is in it
