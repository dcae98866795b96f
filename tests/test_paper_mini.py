"""The paper_mini study (experiments/paper_mini): its presets compose, its job list and sampling leaders, and the
study's report (its tables, comparisons and the paper's claims; the committed outputs regenerate). The job runner it
shares with the decisive study is tested, on paper_mini's jobs, in test_studies.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.paper_mini import report, study  # noqa: E402
from experiments.studies import runner  # noqa: E402
from solopo.report.runs import find_runs  # noqa: E402
from solopo.report.tables import fill_blocks  # noqa: E402
from test_report import study_dir  # noqa: E402

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
    first = runner.leaders(jobs)
    assert {k: j.name for k, j in first.items() if k[0] == 0} == {
        (0, "none"): "base-s0", (0, "short"): "short_po-dpo-s0", (0, "long"): "long_po-dpo-s0"}
    job = study.Job("solopo", "dpo", 3.0, 1)
    assert job.command(Path("/r"), "python")[2:] == [
        "solopo.run", "experiment=paper_mini/solopo", "seed=1", "algo=dpo", "ra.alpha=3.0",
        "hydra.run.dir=/r/solopo-dpo-a3-s1"]
    assert study.Job("base", None, None, 0).command(Path("/r"))[2] == "solopo.evaluate"


def test_the_base_row_takes_the_overrides_for_every_job_that_an_evaluation_reads():
    """README's CPU check gives every job its sizes; solopo-eval refuses those only training reads (data.long_len,
    trainer.max_steps, data.pairs=gold), so the base row's evaluation stopped at once."""
    extra = (*TINY, "trainer.max_steps=2", "eval.n_items=2", "data.pairs=gold")
    assert study.Job("base", None, None, 0).command(Path("/r"), "python", extra)[2:] == [
        "solopo.evaluate", "experiment=paper_mini/base", "seed=0", "model=tiny", "trainer=cpu", "eval.n_items=2",
        "hydra.run.dir=/r/base-s0"]
    assert study.Job("short_po", "dpo", None, 0).command(Path("/r"), "python", extra)[-5:-1] == list(extra[-4:])


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
