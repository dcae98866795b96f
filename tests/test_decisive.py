"""The decisive study (experiments/decisive): its presets, its job list, regime (b)'s length rule, its parts and
restores, and (slow) the launcher and report end to end on the tiny model; the claims and the report on hand-made runs
are test_decisive_report.py's."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.decisive import curve, estimate, jobs  # noqa: E402
from experiments.studies import runner  # noqa: E402

SCRIPT_ENV = dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.mark.parametrize("regime, long_len, short_len", [("a", 4096, None), ("b", 1536, 219)])
def test_presets_compose_with_a_job_s_overrides(regime, long_len, short_len):
    job = jobs.Job(regime, "solopo_detach", "simpo", 1.0, 0, "softplus")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=job.overrides())
    assert (cfg.data.long_len, cfg.data.short_len, cfg.eval.n_items, list(cfg.eval.depths)) == (
        long_len, short_len, 200, [0.0, 0.5, 1.0])
    assert (cfg.method.name, cfg.ra.alpha, cfg.ra.distance, cfg.ra.detach_short) == ("solopo", 1.0, "softplus", True)
    assert cfg.eval.batch_tokens and cfg.data.sampling.batch_tokens and "CSVLogger" in cfg.logger._target_
    # an ablation cell is evaluated on the evidence alone and at its training length; speed.md's fastest path
    assert OmegaConf.to_container(cfg.eval.lengths, resolve=True) == ["short", long_len]
    assert not cfg.eval.static_cache and not cfg.data.sampling.static_cache
    assert cfg.model.decode_kv_heads == "repeated"  # every job decodes as the study's first ones did


def test_expand_long_trains_on_the_long_context_with_short_context_pairs_and_is_evaluated_everywhere():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=jobs.Job("a", "expand_long", "simpo", None, 0).overrides())
    assert (cfg.method.name, cfg.method.pairs_from, cfg.method.po_context, cfg.method.use_ra) == (
        "expand_long", "short", "long", False)
    assert OmegaConf.to_container(cfg.eval.lengths, resolve=True) == ["short", 1024, 2048, 4096]


def test_job_list_main_rows_at_five_seeds_ablations_and_expand_long_at_three():
    plan = jobs.study_jobs()
    names = [j.name for j in plan]
    # no base job (the runs share it); Expand-long: SimPO, both regimes, seeds 0-2, last (it fills the parts' gaps)
    assert len(names) == len(set(names)) == 2 * 5 * 4 * 3 + (2 * 3 * 4 + 1) * 3 - 2 * 3 + 2 * 3
    assert names[-6:] == [f"{r}-expand_long-simpo-s{s}" for r in "ab" for s in range(3)]
    assert names[:5] == ["a-short_po-dpo-s0", "a-long_po-dpo-s0", "a-solopo-dpo-a3-s0", "a-solopo_detach-dpo-a3-s0",
                         "a-short_po-simpo-s0"]  # seed by seed, algorithm by algorithm
    assert names.index("a-solopo_detach-orpo-a1-s0") + 1 == names.index("b-short_po-dpo-s0")  # both regimes per seed
    assert names.index("b-solopo_detach-orpo-a1-s0") + 1 == names.index("a-short_po-dpo-s1")
    assert "b-solopo_detach-orpo-a1-s4" in names and "a-solopo_detach-simpo-squared-a0.1-s2" in names
    assert not any(n.startswith("b-") and "squared" in n for n in names)  # ablations in one regime
    first = jobs.Job("a", "short_po", "dpo", None, 0)
    assert first.overrides() == ["experiment=decisive/a", "seed=0", "method=short_po", "algo=dpo"]
    assert jobs.Job("a", "solopo", "dpo", 3.0, 0).sampling_key == first.sampling_key != (
        jobs.Job("a", "long_po", "dpo", None, 0).sampling_key)
    cell = jobs.Job("b", "solopo", "simpo", 0.3, 0, lengths=tuple(curve.overrides(768)))
    assert cell.overrides()[-1] == jobs.ABLATION_LENGTHS
    assert "eval.lengths=[short,768,1536,3072]" not in cell.overrides()
    assert [len(u) for u in jobs.units(plan)][:3] == [4, 4, 4] and {len(u) for u in jobs.units(plan)[30:-6]} == {3, 4}
    expand = jobs.Job("b", "expand_long", "simpo", None, 1, lengths=tuple(curve.overrides(1536)))
    # its own unit, evaluated as a main row (every length), on the short-context pairs its seed's Short-PO samples
    assert expand.overrides() == ["experiment=decisive/b", "seed=1", *curve.overrides(1536), "method=expand_long",
                                  "algo=simpo"]
    assert not expand.main and expand.every_length and jobs.units(plan)[-2] == [expand]
    assert expand.sampling_key == jobs.Job("b", "short_po", "dpo", None, 1).sampling_key


def test_regime_b_length_is_the_longest_that_keeps_half_the_evidence_only_accuracy():
    assert curve.choose({"short": 40.0, "512": 30.0, "1024": 21.0, "2048": 19.0, "4096": 25.0}) == 4096
    assert curve.choose({"short": 40.0, "512": 30.0, "1024": 20.0, "2048": 10.0}) == 1024
    assert curve.choose({"short": 0.0, "512": 0.0}) is None  # a model that never answers gives no length


def test_where_no_length_keeps_half_regime_b_takes_the_end_of_the_curve_s_flat_part():
    """SmolLM2-135M's measured curve (seed 1000): 48% on the evidence, 16-18% from 512 to 2048 tokens, then lower.
    No length keeps half, so the longest whose score is not below the best long length's interval is taken."""
    scores = {"short": 48.0, "512": 18.0, "1024": 18.2, "2048": 16.3, "3072": 13.8, "4096": 13.2}
    ci95 = {"short": [41.2, 54.9], "512": [15.1, 21.3], "1024": [15.3, 21.5], "2048": [13.6, 19.5],
            "3072": [11.3, 16.8], "4096": [10.7, 16.1]}
    assert curve.choose(scores) is None and curve.choose(scores, ci95) == 2048
    assert curve.choose({**scores, "2048": 15.2}, ci95) == 1024  # below the best's interval: the flat part ends earlier
    assert curve.choose({"short": 40.0, "512": 30.0, "1024": 10.0}, ci95) == 512  # the first rule, when it chooses
    scores["1536"], ci95["1536"] = 16.0, [13.3, 19.1]
    # SmolLM2's 8192 tokens hold a 4x evaluation of 1536 (6144 + the answer's room), not of 2048 (8192 + room)
    assert curve.choose(scores, ci95, max_length=8192) == 1536 and curve.choose(scores, ci95) == 2048
    stored = {"scores": scores, "ci95": {n: [lo / 100, hi / 100] for n, (lo, hi) in ci95.items()}, "max_length": 8192}
    assert curve.with_choice(stored)["overrides"] == curve.overrides(1536)
    assert curve.overrides(1536) == ["data.long_len=1536", "data.short_len=219", "eval.lengths=[short,1536,3072,6144]"]


def test_regime_b_waits_for_the_curve_and_then_carries_its_length(tmp_path, monkeypatch, capsys):
    """launch.py's dry runs in this process (its script runs in a process of its own in the two tests below)."""
    from experiments.decisive import launch

    def dry(*extra):
        monkeypatch.setattr(sys, "argv", ["launch.py", "--root", str(tmp_path), "--main-seeds", "0",
                                          "--ablation-seeds", "0", "--dry-run", *extra])
        launch.main()
        return capsys.readouterr().out

    out = dry()
    assert "regime (b) waits for" in out and " b-" not in out
    # the parts are made of what can run: regime (a)'s jobs fill the room regime (b)'s would have taken
    listed = [x.split()[0] for x in dry("--part", "2").splitlines() if x.startswith(("a-", "b-"))]
    a_parts = estimate.in_parts(jobs.study_jobs(("a",), main_seeds=(0,), ablation_seeds=(0,)))[0]
    assert listed == [job.name for part in a_parts[:2] for job in part] and len(listed) > 12
    (tmp_path / "curve.json").write_text(json.dumps({"scores": {"short": 40.0, "512": 0.0, "768": 10.0}}))
    out = dry()
    assert "regime (b) waits for" in out and " b-" not in out  # measured, but no length qualifies: still waits
    (tmp_path / "curve.json").write_text(json.dumps({"scores": {"short": 40.0, "512": 25.0, "768": 20.0,
                                                                "1024": 10.0}}))
    line = next(x for x in dry("--names", "b-solopo-dpo-a3-s0").splitlines() if x.startswith("b-solopo"))
    assert "data.long_len=768 data.short_len=109 'eval.lengths=[short,768,1536,3072]' method=solopo" in line


@pytest.mark.slow
def test_the_launcher_and_report_end_to_end_on_the_tiny_model_across_two_sessions(tmp_path):
    """Regime (a) at one seed on the tiny model with gold pairs, in two sessions on two machines: the first runs
    Short-PO; its archive is collected into the repository (experiments/studies/collect.py) and restored on a fresh
    machine (another study folder and cache), whose launcher skips it and runs SoLoPO-detach, which reads the base
    model's evaluation from the restored cache. The report has both rows and the base row, a claim line, the cost of
    every stage and the mechanism plot."""
    from experiments.studies import collect

    tiny = ["model=tiny", "trainer=cpu", "data.long_len=256", "data.source.n_train=6", "data.source.n_val=2",
            "data.batch_size=2", "trainer.max_steps=2", "eval.n_items=2", "eval.lengths=[short,256]",
            "eval.max_new_tokens=4", "data.pairs=gold"]
    script = ROOT / "experiments" / "decisive"
    names = "a-short_po-simpo-s0,a-solopo_detach-simpo-a1-s0"

    def session(root: Path, cache: Path, names: str) -> str:
        done = subprocess.run([sys.executable, str(script / "launch.py"), "--root", str(root), "--regimes", "a",
                               "--main-seeds", "0", "--names", names, "--parallel", "2", "--", *tiny], cwd=ROOT,
                              env=dict(SCRIPT_ENV, SOLOPO_CACHE=str(cache)), capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        return done.stdout

    first, first_cache = tmp_path / "m1" / "decisive", tmp_path / "m1" / "cache"
    assert "study: 1 of 1 jobs done" in session(first, first_cache, "a-short_po-simpo-s0")
    with tarfile.open(tmp_path / "part1.tar.gz", "w:gz") as archive:
        for folder in (first, first_cache / "eval"):
            archive.add(folder, arcname=str(folder).lstrip("/"))
    collect.collect(tmp_path / "part1.tar.gz", tmp_path / "repo_runs", first, first_cache)
    fresh, fresh_cache = tmp_path / "m2" / "decisive", tmp_path / "m2" / "cache"
    collect.restore(tmp_path / "repo_runs", fresh, fresh_cache)
    out = session(fresh, fresh_cache, names)
    assert "1 already done or failed, 1 to run" in out and "study: 2 of 2 jobs done" in out
    log = (fresh / "a-solopo_detach-simpo-a1-s0" / "launch.log").read_text()
    assert f"from cache {fresh_cache / 'eval'}" in log
    done = subprocess.run([sys.executable, str(script / "report.py"), str(fresh), "--out", str(tmp_path / "rep")],
                          cwd=ROOT, env=SCRIPT_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "rep" / "study.md").read_text()
    assert "2 runs, 0 failed." in text and "| a | simpo | solopo_detach | 1 |" in text
    assert "| a | - | base | 1 |" in text  # from the runs' own evaluation of the base model
    assert "SoLoPO-detach beats Short-PO (new), regime a, simpo:" in text
    # the cost of every stage, the base model's evaluation counted at the first session's run, which computed it
    assert "the jobs ran one at a time." in text
    row = next(line for line in text.split("## Pipeline cost")[1].splitlines()
               if "| simpo | solopo_detach | 1 |" in line)
    assert not row.endswith("| - |")  # the whole pipeline: every stage known, the base evaluation among them


def test_parts_hold_whole_units_within_nine_minutes_and_never_before_their_pairs():
    plan = jobs.study_jobs()
    parts, stages = estimate.in_parts(plan)
    placed = [job for part in parts for job in part]
    assert sorted(j.name for j in placed) == sorted(j.name for j in plan)
    part_of = {job: n for n, part in enumerate(parts) for job in part}
    assert all(len({part_of[j] for j in unit}) == 1 for unit in jobs.units(plan))
    leader = runner.leaders(placed)
    assert all(part_of[leader[j.sampling_key]] <= part_of[j] for j in plan)
    room = (estimate.PART_S - estimate.PART_OVERHEAD_S) * estimate.UTILISATION
    curve = estimate.curve_s(estimate.measured_rates())
    for n, part in enumerate(parts):
        assert sum(sum(stages[j].values()) for j in part) + (curve if n == 0 else 0) <= room


def test_rates_are_speed_md_s_budget_path_and_the_benchmark_s_busy_step():
    """The budget path (half-precision weights): W1, 480 answers at 4K, in 14.02 s; W2, 256 questions x 8 samples on
    x_short, in 2.03 s; the checkpointed step: 6144 tokens in 0.259 s, 17.5% of it busy."""
    r = estimate.measured_rates()
    assert "H100" in r.gpu and r.answer[1] == pytest.approx(14.02 / 480, rel=1e-3)
    assert r.answer[0] == pytest.approx(2.03 / 256 / 8, rel=1e-2) and r.sample[0] == pytest.approx(2.03 / 256, rel=1e-2)
    assert r.train_tokens_per_s == pytest.approx(6144 / (0.2594 * 0.1749), rel=1e-2)
    assert r.per_item("answer", 4096 + estimate.TEMPLATE) == pytest.approx(r.answer[1])


def test_a_later_session_restores_the_collected_runs_and_runs_only_the_rest(tmp_path):
    """A run collected into the repository (experiments/studies/collect.py) is put back on a fresh machine: the
    launcher's dry run of part 1 shows it done and its seed's other jobs still to run."""
    saved = tmp_path / "repo_runs"
    (saved / "a-short_po-dpo-s0").mkdir(parents=True)
    (saved / "a-short_po-dpo-s0" / "results.json").write_text('{"config":{}}\n')
    (saved / "a-short_po-dpo-s0" / "job.json").write_text('{"status":"done","row":"short_po","leader":true,'
                                                           '"seconds":90.0}\n')
    (saved / "cache" / "pairs").mkdir(parents=True)
    (saved / "cache" / "pairs" / "k.json").write_text("{}")
    fresh, cache = tmp_path / "fresh", tmp_path / "cache"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "studies" / "collect.py"), "--restore",
                           str(saved), "--study", str(fresh), "--cache", str(cache)], cwd=ROOT, env=SCRIPT_ENV,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (cache / "pairs" / "k.json").exists() and (fresh / ".restored").exists()
    (tmp_path / "empty").mkdir()  # the runs did not travel: restoring nothing would rerun every job, so it stops
    empty = subprocess.run([sys.executable, str(ROOT / "experiments" / "studies" / "collect.py"), "--restore",
                            str(tmp_path / "empty"), "--study", str(tmp_path / "other")], cwd=ROOT, env=SCRIPT_ENV,
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "holds no collected job" in empty.stderr and not (tmp_path / "other").exists()
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "decisive" / "launch.py"), "--root", str(fresh),
                           "--part", "1", "--dry-run"], cwd=ROOT, env=SCRIPT_ENV, capture_output=True, text=True,
                          timeout=120)
    states = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[:-1]
              if not line.startswith("regime")}
    assert states["a-short_po-dpo-s0"] == "done" and states["a-long_po-dpo-s0"] == "leader", done.stdout
    # part 1 holds seed 0's DPO unit first (and whatever else its 9 minutes hold at the measured rates)
    assert {"a-short_po-dpo-s0", "a-long_po-dpo-s0", "a-solopo-dpo-a3-s0", "a-solopo_detach-dpo-a3-s0"} <= set(states)
    assert all(name.endswith("-s0") and states[name] in ("leader", "python") for name in set(states) - {"a-short_po-dpo-s0"})


def test_a_job_is_estimated_from_its_own_regime_and_row(tmp_path):
    """Regime (b) evaluates at three lengths up to 6K, so its jobs take longer than regime (a)'s of the same row: a
    job's estimate before a deadline is the longest seen for its regime and row, not for its row in either regime."""
    plan = {job.name: job for job in jobs.study_jobs()}
    for name, seconds, leader in [("a-solopo-dpo-a3-s0", 120.0, False), ("b-solopo-dpo-a3-s0", 300.0, False),
                                  ("a-solopo-simpo-a1-s0", 150.0, False), ("a-short_po-dpo-s0", 200.0, True)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "job.json").write_text(json.dumps({"status": "done", "leader": leader, "seconds": seconds}))
    seen = runner.history(tmp_path, list(plan.values()))
    assert runner.estimate(plan["a-solopo-dpo-a3-s1"], False, seen, 999.0) == 150.0
    assert runner.estimate(plan["b-solopo-simpo-a1-s1"], False, seen, 999.0) == 300.0
    assert runner.estimate(plan["a-short_po-dpo-s1"], True, seen, 999.0) == 200.0
    assert runner.estimate(plan["b-short_po-dpo-s1"], True, seen, 999.0) == 999.0 * runner.LEADER_FACTOR
