"""The decisive study's claims and report (experiments/decisive/claims.py, report.py) on hand-made runs: paired
verdicts over seeds and questions, provisional cells, the verdict paragraph, the tables and the pipeline cost."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.decisive import claims, jobs, report  # noqa: E402

from solopo.report.runs import Stat, find_runs  # noqa: E402


SEQUENCES = {"short_po": ["short/chosen", "short/rejected"], "long_po": ["long/chosen", "long/rejected"],
             "expand_long": ["long/chosen", "long/rejected"]}


def fake_run(path: Path, regime: str, row: str, seed: int, right: list[int], algo: str = "SimPO", alpha=1.0,
             distance="abs", stages=None, lengths=("short", 1024, 2048)):
    """A results.json of a run whose trained model answered the questions in ``right`` (of 0-9) at two long
    lengths, and none on the evidence alone."""
    method = row if row in SEQUENCES else "solopo"
    use_ra = method == "solopo"
    scores = [[f"q{q}", length, "0.5", float(q in right)] for q in range(10) for length in ("1024", "2048")]
    table = {"by_length": {"short": 0.0, "1024": len(right) / 10, "2048": len(right) / 10},
             "average_long": len(right) / 10, "scores": scores + [[f"q{q}", "short", "-", 0.0] for q in range(10)]}
    config = {"seed": seed, "data": {"short_len": 146 if regime == "b" else None},
              "method": {"name": method, "use_ra": use_ra, "pairs_from": "long" if row == "long_po" else "short"},
              "algo": {"_target_": f"solopo.core.algos.{algo}"}, "eval": {"lengths": list(lengths)},
              "ra": {"alpha": alpha, "distance": distance, "detach_short": row == "solopo_detach",
                     "responses": ["chosen"]}}
    sequences = {"train": SEQUENCES.get(row, ["short/chosen", "short/rejected", "long/chosen"])}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"config": config, "eval": {"base": table, "trained": table},
                                                   "timings": {"stages": stages or {}}, "sequences": sequences,
                                                   "data": {"train": {"pairs": 9}}}))


def test_claims_are_paired_over_seeds_and_questions_with_a_verdict(tmp_path):
    """Detach answers 6 of 10 under every seed where the paper's form answers 2 of the same (+40 points on 4 of 10
    questions, every seed: supported); Short-PO answers 6 too, 2 of them others (equal on average: not separated)."""
    for seed in range(3):
        fake_run(tmp_path / f"det-{seed}", "a", "solopo_detach", seed, [0, 1, 2, 3, 4, 5])
        fake_run(tmp_path / f"sol-{seed}", "a", "solopo", seed, [0, 1])
        fake_run(tmp_path / f"short-{seed}", "a", "short_po", seed, [0, 1, 2, 3, 8, 9])
    fake_run(tmp_path / "sweep", "a", "solopo_detach", 0, [0, 1, 2, 3, 4, 5, 6, 7], distance="squared", alpha=0.3)
    text = report.write_study(find_runs([tmp_path]), tmp_path / "out").read_text()
    assert ("- **supported**: SoLoPO-detach beats SoLoPO in the paper's form (paper_mini), regime a, simpo: "
            "+40.0 points [+2") in text and "seeds' t [+40.0, +40.0], 3 seeds, 30 question-seed pairs." in text
    assert "- **not separated**: SoLoPO-detach beats Short-PO (new), regime a, simpo: +0.0 points [" in text
    assert "- **contradicted**: SoLoPO beats Short-PO" in text
    assert "| a | simpo | yes | squared | 0.3 | 1 | 0.0 | 80.0 | +20.0 points [" in text  # 8 of 10 vs 6 of 10, seed 0
    assert "| a | - | base | 3 |" in text and "10 runs, 0 failed." in text  # the runs' own base tables, one per seed
    assert "## Main rows: sub-EM (%), mean ± std over seeds [the mean's 95% t interval], 10 questions a run" in text
    # detach: 6 of 10 at every seed, so its std is 0 and its interval [60.0, 60.0]
    assert "| a | simpo | solopo_detach | 3 | 0.0 ± 0.0 [0.0, 0.0] | 60.0 ± 0.0 [60.0, 60.0] |" in text
    assert (tmp_path / "out" / "accuracy_vs_length.png").read_bytes()[:4] == b"\x89PNG"


def test_a_cell_below_the_seeds_the_acceptance_asks_is_provisional_in_every_table(tmp_path):
    """An ablation cell run at seed 0 alone, however clear on its questions (10 of 10 against Short-PO's 0 of 10),
    reads "supported, provisional" in the ablation table, as a claim at 2 seeds does in the claim lines; at 3 seeds
    the verdict stands alone."""
    for seed in range(2):
        fake_run(tmp_path / f"short-{seed}", "a", "short_po", seed, [])
        fake_run(tmp_path / f"sol-{seed}", "a", "solopo", seed, list(range(10)))
    fake_run(tmp_path / "cell", "a", "solopo_detach", 0, list(range(10)), distance="squared", alpha=0.3)
    parts = report.blocks(find_runs([tmp_path]))
    assert parts["ablations"][-1] == ("| a | simpo | yes | squared | 0.3 | 1 | 0.0 | 100.0 | +100.0 points [+100.0, +100.0], "
                                      "1 seed, 10 question-seed pairs | supported, provisional | - | - |")
    assert parts["claims"] == [("- **supported, provisional**: SoLoPO beats Short-PO, i.e. SoLo-RA adds to "
                                "short-context PO (the paper), regime a, simpo: +100.0 points [+100.0, +100.0], "
                                "seeds' t [+100.0, +100.0], 2 seeds, 20 question-seed pairs.")]
    fake_run(tmp_path / "short-2", "a", "short_po", 2, [])
    fake_run(tmp_path / "sol-2", "a", "solopo", 2, list(range(10)))
    assert report.blocks(find_runs([tmp_path]))["claims"][0].startswith("- **supported**: SoLoPO beats Short-PO")


def test_the_verdict_paragraph_says_how_much_of_the_plan_it_stands_on(tmp_path):
    """The repository's headline: per claim, the cells by verdict with their seeds, after how many of the planned runs
    it rests on; an incomplete study says that its verdicts may still change."""
    for seed in range(3):
        fake_run(tmp_path / f"a-solopo_detach-simpo-a1-s{seed}", "a", "solopo_detach", seed, [0, 1, 2, 3, 4, 5])
        fake_run(tmp_path / f"a-solopo-simpo-a1-s{seed}", "a", "solopo", seed, [0, 1])
        fake_run(tmp_path / f"a-short_po-simpo-s{seed}", "a", "short_po", seed, [0, 1, 2, 3, 8, 9])
    planned = len(jobs.study_jobs())
    paragraph = "\n".join(report.blocks(find_runs([tmp_path]))["verdict"])
    assert paragraph.startswith(f"**Verdict from 9 of the {planned} planned runs** (not complete: each verdict may "
                                "still change; regime a: main rows at 0-3 of 5 seeds; regime b: not started).")
    assert "\n- SoLoPO-detach beats SoLoPO in the paper's form (paper_mini): supported in a/simpo +40.0 [+" in paragraph
    assert "] (3 seeds)." in paragraph and "provisional)" not in paragraph  # 3 seeds: a firm verdict
    assert ("SoLoPO beats Short-PO, i.e. SoLo-RA adds to short-context PO (the paper): contradicted in a/simpo "
            "-40.0 [") in paragraph
    assert "SoLoPO beats Long-PO" not in paragraph  # no Long-PO run: no cell, no sentence
    assert "The 3 cells are each at 95% with no correction for their number" in paragraph
    for name in ("a-solopo-simpo-a1-s0", "a-solopo_detach-simpo-a1-s0"):  # one seed of each left: provisional
        (tmp_path / name / "results.json").unlink()
    paragraph = "\n".join(report.blocks(find_runs([tmp_path]))["verdict"])
    assert "(paper_mini): supported in a/simpo +40.0 [" in paragraph and "] (2 seeds, provisional)." in paragraph
    lone = tmp_path / "lone"
    fake_run(lone / "a-short_po-simpo-s0", "a", "short_po", 0, [0])
    [lead] = report.blocks(find_runs([lone]))["verdict"]  # no claim, no pair counts: the lead alone, no blank lines
    assert lead.startswith("**Verdict from 1 of")
    level = tmp_path / "level"  # every main row at one seed: "at 1 of 5 seeds", not "at 1-1"
    for job in (j for j in jobs.study_jobs() if j.main and j.regime == "a" and j.seed == 0):
        fake_run(level / job.name, "a", job.row, 0, [0])
    assert "regime a: main rows at 1 of 5 seeds;" in report.blocks(find_runs([level]))["verdict"][0]


def test_the_pairs_trained_on_spread_over_seeds_not_over_each_algorithm_s_copy(tmp_path):
    """Every algorithm's Long-PO of a seed trains on the seed's one sample of pairs: 8 at seed 0, 12 at seed 1, under
    DPO, SimPO and ORPO alike. Their spread is that of two seeds, 10 ± 2.8 as in the main table; the six runs taken as
    six samples would say 10 ± 2.2."""
    for seed, pairs in ((0, 8), (1, 12)):
        for algo in ("DPO", "SimPO", "ORPO"):
            for row in ("long_po", "short_po"):
                path = tmp_path / f"{row}-{algo}-{seed}"
                fake_run(path, "a", row, seed, [0], algo=algo)
                data = json.loads((path / "results.json").read_text())
                data["data"]["train"]["pairs"] = pairs if row == "long_po" else 100
                (path / "results.json").write_text(json.dumps(data))
    paragraph = report.blocks(find_runs([tmp_path]))["verdict"]
    assert paragraph[-1] == ("Pairs trained on, regime a: Long-PO 10 ± 3 (sampled on x_long), the rows sampled on "
                             "x_short 100 ± 0.")
    main = report.blocks(find_runs([tmp_path]))["main"]
    assert "| a | simpo | long_po | 2 | 0.0 ± 0.0 [0.0, 0.0] | 10.0 ± 0.0 [10.0, 10.0] | 10 ± 3 |" in main


def test_a_row_asked_fewer_lengths_names_them_in_the_main_table(tmp_path):
    """SoLo-RA on both responses, an ablation cell, is asked at 4096 tokens only, where the main rows are asked at
    1024 and 2048 too: its average long-context sub-EM is no average over the main rows' lengths, and says so."""
    fake_run(tmp_path / "solopo", "a", "solopo", 0, [0, 1])
    fake_run(tmp_path / "both", "a", "solopo", 0, [])
    data = json.loads((tmp_path / "both" / "results.json").read_text())
    data["config"]["ra"]["responses"] = ["chosen", "rejected"]
    data["eval"]["trained"].update(by_length={"short": 0.0, "4096": 0.5}, average_long=0.5)
    (tmp_path / "both" / "results.json").write_text(json.dumps(data))
    main = report.blocks(find_runs([tmp_path]))["main"]
    assert "| a | simpo | solopo | 1 | 0.0 | 20.0 | 9 |" in main
    assert "| a | simpo | solopo_both | 1 | 0.0 | 50.0 (at 4096 only) | 9 |" in main


def cost(seconds: float, peak: float = 1.0, cached: bool | None = None) -> dict:
    return {"s": seconds, "peak_gib": peak, **({} if cached is None else {"cached": cached})}


def test_the_cost_table_counts_each_shared_stage_at_the_run_that_computed_it(tmp_path):
    """Per seed s: DPO's Short-PO samples the short-context pairs (10+s s) and evaluates the base model (50 s), in runs
    that predate the "cached" record; SimPO's rows read both. SoLoPO's job waited 30 s on the cache's lock and says it
    read the pairs (a run that only read is never the one that computed); Long-PO sampled its own (40+s s). An ablation
    cell, asked other lengths, evaluated the base model itself (20 s): not the main rows' base evaluation. DPO's
    reference pass scores other sequences per method (3 s for Short-PO, 5 s for SoLoPO). The whole pipeline of a
    seed sums its stages; the caption says how many jobs ran at once (job.json: 0-100 s, 50-150 s, 60-70 s,
    150-200 s: 3)."""
    read, waited, cached = cost(0.01), cost(30.0, 0.5, cached=True), cost(0.1, cached=True)  # old runs: no mark
    for seed in (0, 1):
        computing = {"sampling": cost(10.0 + seed, 6.0), "base_eval": cost(50.0, 17.0)}
        runs = {"dpo-short": ("short_po", "DPO", {**computing, "reference": cost(3.0), "training": cost(2.0)}),
                "dpo-solopo": ("solopo", "DPO", {"sampling": read, "reference": cost(5.0), "base_eval": read}),
                "short": ("short_po", "SimPO", {"sampling": read, "base_eval": read, "training": cost(4.0),
                                                "eval": cost(90.0)}),
                "solopo": ("solopo", "SimPO", {"sampling": waited, "base_eval": cached, "training": cost(6.0, 3.0),
                                               "eval": cost(100.0, 17.0)}),
                "expand": ("expand_long", "SimPO", {"sampling": cached, "base_eval": cached,
                                                    "training": cost(8.0, 4.0), "eval": cost(100.0, 17.0)}),
                "long": ("long_po", "SimPO", {"sampling": cost(40.0 + seed, 15.0, cached=False), "base_eval": cached,
                                              "training": cost(8.0), "eval": cost(100.0)})}
        for name, (row, algo, stages) in runs.items():
            fake_run(tmp_path / f"{name}-{seed}", "a", row, seed, [0, 1], algo=algo,
                     alpha=3.0 if algo == "DPO" else 1.0, stages=stages)
        fake_run(tmp_path / f"cell-{seed}", "a", "solopo", seed, [0], alpha=0.3, lengths=("short", 4096),
                 stages={"sampling": read, "base_eval": cost(20.0), "training": cost(6.0), "eval": cost(20.0)})
    for name, start, end in (("dpo-short-0", 0, 100), ("short-0", 50, 150), ("solopo-0", 60, 70),
                             ("long-0", 150, 200)):
        (tmp_path / name / "job.json").write_text(json.dumps({"seconds": end - start, "ended_at": 1e9 + end}))
    text = report.write_study(find_runs([tmp_path]), tmp_path / "out").read_text()
    assert "the jobs ran up to 3 at a time on one GPU" in text
    shared = "10.5 ± 0.7 s, 6.0 GiB | - | 50.0 ± 0.0 s, 17.0 GiB"
    # the whole pipeline: 10 + s + 50 + 4 + 90 s for Short-PO, 10 + s + 50 + 6 + 100 s for SoLoPO
    assert (f"| a | simpo | short_po | 2 | {shared} | 4.0 ± 0.0 s, 1.0 GiB | 90.0 ± 0.0 s, 1.0 GiB | "
            "154.5 ± 0.7 s, 17.0 GiB |") in text
    assert (f"| a | simpo | solopo | 2 | {shared} | 6.0 ± 0.0 s, 3.0 GiB | 100.0 ± 0.0 s, 17.0 GiB | "
            "166.5 ± 0.7 s, 17.0 GiB |") in text
    assert f"| a | simpo | expand_long | 2 | {shared} | 8.0 ± 0.0 s, 4.0 GiB |" in text
    assert "| a | simpo | long_po | 2 | 40.5 ± 0.7 s, 15.0 GiB | - | 50.0 ± 0.0 s, 17.0 GiB |" in text
    assert "| a | dpo | short_po | 2 | 10.5 ± 0.7 s, 6.0 GiB | 3.0 ± 0.0 s, 1.0 GiB |" in text
    assert "| a | dpo | solopo | 2 | 10.5 ± 0.7 s, 6.0 GiB | 5.0 ± 0.0 s, 1.0 GiB |" in text
    # Expand-long is a row of the main table and of one claim
    assert "| a | simpo | expand_long | 2 |" in text.split("## Claims")[0]
    assert "- **not separated, provisional**: SoLoPO beats Expand-long (the same short-context pairs, vanilla PO " \
           "on x_long) (the paper), regime a, simpo: +0.0 points [" in text  # 2 seeds


def with_sample(path: Path, kept: int) -> None:
    """The run at ``path`` trained on a sample of ``kept`` pairs (its results.json's data.train.sampling)."""
    data = json.loads((path / "results.json").read_text())
    data["data"]["train"]["sampling"] = {"kept": kept, "seconds": 1.0}
    (path / "results.json").write_text(json.dumps(data))


def test_a_stage_computed_again_counts_only_for_the_runs_that_read_its_output(tmp_path):
    """Short-PO sampled the seed's pairs (10 s, 9 pairs) and evaluated the base model (50 s); SoLoPO read both. An
    ablation cell found the pairs stale and sampled them again (25 s, 8 pairs); Expand-long evaluated the base model
    again (70 s, another table). Short-PO's and SoLoPO's pipelines count the 10 s and the 50 s they read, not the
    longer recomputations; Expand-long its own 70 s and the first sample it read."""
    read = cost(0.01, cached=True)
    fake_run(tmp_path / "short", "a", "short_po", 0, [0], stages={"sampling": cost(10.0), "base_eval": cost(50.0)})
    fake_run(tmp_path / "solopo", "a", "solopo", 0, [0], stages={"sampling": read, "base_eval": read})
    fake_run(tmp_path / "cell", "a", "solopo", 0, [0], alpha=0.3, stages={"sampling": cost(25.0), "base_eval": read})
    fake_run(tmp_path / "expand", "a", "expand_long", 0, [0], stages={"sampling": read, "base_eval": cost(70.0)})
    data = json.loads((tmp_path / "expand" / "results.json").read_text())
    data["eval"]["base"]["scores"] = data["eval"]["base"]["scores"][:-1]  # a table of its own
    (tmp_path / "expand" / "results.json").write_text(json.dumps(data))
    for name, kept in (("short", 9), ("solopo", 9), ("cell", 8), ("expand", 9)):
        with_sample(tmp_path / name, kept)
    cost_block = report.blocks(find_runs([tmp_path]))["cost"]
    assert "| a | simpo | short_po | 1 | 10.0 s, 1.0 GiB | - | 50.0 s, 1.0 GiB | - | - | 60.0 s, 1.0 GiB |" in cost_block
    assert "| a | simpo | solopo | 1 | 10.0 s, 1.0 GiB | - | 50.0 s, 1.0 GiB | - | - | 60.0 s, 1.0 GiB |" in cost_block
    assert "| a | simpo | expand_long | 1 | 10.0 s, 1.0 GiB | - | 70.0 s, 1.0 GiB | - | - | 80.0 s, 1.0 GiB |" in cost_block


def test_an_accuracy_over_seeds_carries_the_t_interval_of_its_mean():
    """35.0 ± 1.7 over 5 seeds: half-width 2.7764 * 1.7 / sqrt(5) = 2.111, [32.9, 37.1]; one run: the value alone;
    90.0 ± 10.0 over 3: 4.3027 * 10 / sqrt(3) = 24.84, [65.2, 114.8] held to 100."""
    assert report.spread_cell(Stat(35.0, 1.7, 5)) == "35.0 ± 1.7 [32.9, 37.1]"
    assert report.spread_cell(Stat(35.0, 0.0, 1)) == "35.0" and report.spread_cell(None) == ""
    assert report.spread_cell(Stat(90.0, 10.0, 3)) == "90.0 ± 10.0 [65.2, 100.0]"  # 90 + 24.8 is no share


def test_paired_comparison_uses_only_shared_seeds_and_questions(tmp_path):
    fake_run(tmp_path / "a0", "a", "solopo", 0, [0, 1, 2])
    fake_run(tmp_path / "a1", "a", "solopo", 1, [0])
    fake_run(tmp_path / "b1", "a", "short_po", 1, [])
    runs = {r.path.name: r for r in find_runs([tmp_path])}
    comparison = claims.paired([runs["a0"], runs["a1"]], [runs["b1"]])
    change = comparison.bootstrap  # seed 1 only: 1 of 10 right, +10 points
    assert (change.n, comparison.seeds, comparison.over_seeds) == (10, 1, None)
    assert change.difference == pytest.approx(10.0)
    assert claims.paired([runs["a0"]], [runs["b1"]]) is None and claims.verdict(None) == "not run"


def test_a_difference_the_bootstrap_separates_but_five_seeds_do_not_is_not_separated(tmp_path):
    """Detach +40 points at seeds 0-2 (4 of 10 questions) and +0 at seeds 3-4: the bootstrap over the five seeds
    excludes 0 (all five draws at seeds 3-4 happen once in 100), the t interval over the seeds' means does not:
    24 ± 2.776 * 21.9 / sqrt(5) = [-3.2, +51.2]. Not separated: the seeds disagree too much for 5 of them to say."""
    for seed in range(5):
        fake_run(tmp_path / f"det-{seed}", "a", "solopo_detach", seed, [0, 1, 2, 3] if seed < 3 else [])
        fake_run(tmp_path / f"sol-{seed}", "a", "solopo", seed, [])
    runs = find_runs([tmp_path])
    comparison = claims.paired([r for r in runs if "det" in r.path.name], [r for r in runs if "sol" in r.path.name])
    assert comparison.bootstrap.low > 0 and comparison.seeds == 5
    assert (comparison.over_seeds.low, comparison.over_seeds.high) == pytest.approx((-3.2, 51.2), abs=0.1)
    assert claims.verdict(comparison) == "not separated" == claims.verdict_on(comparison)
    assert claims.describe(comparison).startswith("+24.0 points [") and "seeds' t [-3.2, +51.2], 5 seeds" in claims.describe(comparison)


def scored_run(path: Path, row: str, right: dict[str, list[int]], seed: int = 0):
    """A results.json whose trained model answered, at each length given, the questions listed (of 0-9), depth 0.5."""
    scores = [[f"q{q}", length, "0.5", float(q in qs)] for length, qs in right.items() for q in range(10)]
    fake_run(path, "a", row, seed, [])
    data = json.loads((path / "results.json").read_text())
    data["eval"]["trained"]["scores"] = scores
    (path / "results.json").write_text(json.dumps(data))


def test_an_ablation_cell_is_compared_on_the_cases_both_runs_were_asked(tmp_path):
    """The main row answers q0-q5 at 1024 tokens and none at 4096; the cell, asked at 4096 only, answers q0-q5 there:
    +60 points on the shared cases (each run's mean over its own cases would say +30)."""
    scored_run(tmp_path / "main", "short_po", {"1024": [0, 1, 2, 3, 4, 5], "4096": []})
    scored_run(tmp_path / "cell", "solopo", {"4096": [0, 1, 2, 3, 4, 5]})
    runs = {r.path.name: r for r in find_runs([tmp_path])}
    change = claims.paired([runs["cell"]], [runs["main"]]).bootstrap
    assert change.n == 10 and change.difference == pytest.approx(60.0)


def with_metrics(path: Path, steps: int) -> None:
    """The run's metrics.csv: the chosen response's rewards and their gap at steps 0 to ``steps`` - 1."""
    rows = ["step,train/ra/chosen_short,train/ra/chosen_long,train/ra/gap_signed"]
    rows += [f"{n},{-1.0 - n},{-2.0 - n},1.0" for n in range(steps)]
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_the_mechanism_lines_are_over_the_seeds_that_ended_and_say_how_many(tmp_path, monkeypatch):
    """The paper's form ran 3 seeds, one of which failed after step 0: its lines are over the 2 that ended, at all 3
    steps (the failed run would cut them to step 0); detach_short's second seed logged nothing: its line is over the
    one that did. Each line's name says its seeds (the error bars' n); the plot's axis says what the bars are."""
    for seed in range(3):
        fake_run(tmp_path / f"sol-{seed}", "a", "solopo", seed, [0])
        with_metrics(tmp_path / f"sol-{seed}", 1 if seed == 2 else 3)
    failed = tmp_path / "sol-2"
    (failed / "failed.json").write_text(json.dumps({"reason": "oom", **json.loads((failed / "results.json").read_text())}))
    (failed / "results.json").unlink()
    for seed in range(2):
        fake_run(tmp_path / f"det-{seed}", "a", "solopo_detach", seed, [0])
    with_metrics(tmp_path / "det-0", 3)
    groups = report.group(report.with_base_rows(find_runs([tmp_path])), report.place)
    panels = report.mechanism_panels(groups, "a", "simpo")
    assert list(panels) == ["on x_short", "on x_long", "gap, x_short - x_long"]
    assert list(panels["on x_short"]) == ["paper's form (2 seeds)", "detach_short (1 seed)"]
    assert sorted(panels["on x_short"]["paper's form (2 seeds)"]) == [0, 1, 2]
    assert panels["on x_long"]["detach_short (1 seed)"][2] == Stat(-4.0, 0.0, 1)
    drawn = {}
    monkeypatch.setattr(report, "score_vs_step", lambda panels, path, **kw: drawn.setdefault(path.name, kw))
    report.mechanism_plots(groups, tmp_path / "out")
    assert "mean ± std over seeds" in drawn["mechanism_a_simpo.png"]["ylabel"]


def test_the_claims_say_which_runs_trained_on_another_sample_of_their_seed_s_pairs(tmp_path):
    """Short-PO and SoLoPO trained on seed 0's sample (9 pairs); an ablation cell and Expand-long found it stale and
    sampled again (8 pairs): the claims name Expand-long and count the cell. Long-PO's pairs come from x_long."""
    for name, row, alpha, kept in (("short", "short_po", 1.0, 9), ("solopo", "solopo", 1.0, 9),
                                   ("cell", "solopo", 0.3, 8), ("expand", "expand_long", 1.0, 8),
                                   ("long", "long_po", 1.0, 2)):
        fake_run(tmp_path / name, "a", row, 0, [0], alpha=alpha)
        with_sample(tmp_path / name, kept)
        data = json.loads((tmp_path / name / "results.json").read_text())
        data["data"]["train"]["pairs"] = kept
        (tmp_path / name / "results.json").write_text(json.dumps(data))
    assert report.blocks(find_runs([tmp_path]))["claims"][-2:] == [
        "", "Trained on a second sample of their seed's pairs (a job found the cached sample stale and sampled again; "
        "the comparisons stay paired by seed and question): regime a, seed 0: expand, 1 ablation cells on 8 pairs "
        "against Short-PO's 9."]
    with_sample(tmp_path / "cell", 9)
    with_sample(tmp_path / "expand", 9)
    assert report.blocks(find_runs([tmp_path]))["claims"][-1].startswith("- **")  # one sample: nothing to say


def test_one_base_table_stored_as_rows_or_as_columns_is_one_shared_input(tmp_path):
    """Older runs store per-case scores as rows, later ones as columns (score_columns): the same base evaluation."""
    from experiments.decisive import costs
    from solopo.eval.longctx import score_columns

    for name in ("rows", "columns"):
        fake_run(tmp_path / name, "a", "short_po", 0, [0])
    data = json.loads((tmp_path / "columns" / "results.json").read_text())
    data["eval"]["base"]["scores"] = score_columns(data["eval"]["base"]["scores"])
    (tmp_path / "columns" / "results.json").write_text(json.dumps(data))
    rows, columns = sorted(find_runs([tmp_path]), key=lambda r: r.path.name, reverse=True)
    assert costs.shared_input(rows, "base_eval") == costs.shared_input(columns, "base_eval")


def test_a_form_that_beats_short_po_and_long_po_is_said_plainly_and_none_is_said_too(tmp_path):
    """Detach (6 of 10 at every seed) beats Short-PO (2 of 10) and Long-PO (0 of 10), both verdicts supported on 3
    seeds: the verdict paragraph names it with both differences. The paper's form answers what Short-PO answers (not
    separated from it): not named. With Short-PO at 8 of 10, no form beats it, and the paragraph says that none does."""
    def study(root: Path, short_right: list[int]) -> str:
        for seed in range(3):
            fake_run(root / f"a-solopo_detach-simpo-a1-s{seed}", "a", "solopo_detach", seed, [0, 1, 2, 3, 4, 5])
            fake_run(root / f"a-solopo-simpo-a1-s{seed}", "a", "solopo", seed, [0, 1])
            fake_run(root / f"a-short_po-simpo-s{seed}", "a", "short_po", seed, short_right)
            fake_run(root / f"a-long_po-simpo-s{seed}", "a", "long_po", seed, [])
        return "\n".join(report.blocks(find_runs([root]))["verdict"])

    paragraph = study(tmp_path / "wins", [0, 1])
    assert ("**Beating both Short-PO and Long-PO beyond the intervals** (a result the paper does not have; 1 of the 2 "
            "forms compared on 3 seeds or more): a/simpo SoLoPO (detach, abs, alpha 1): +40.0 [") in paragraph
    assert "over Short-PO, +60.0 [+" in paragraph and "over Long-PO (3 seeds)." in paragraph
    paragraph = study(tmp_path / "none", list(range(8)))
    assert ("No SoLo-RA form beats both Short-PO and Long-PO beyond the intervals (2 forms compared on 3 seeds or "
            "more).") in paragraph
    ablations = report.blocks(find_runs([tmp_path / "wins"]))["ablations"]
    assert ablations == ["No ablation runs."]  # the main rows' forms are not ablation cells
