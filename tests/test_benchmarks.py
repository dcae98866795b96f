"""The efficiency scripts run end to end (on the CPU, tiny model) and write the tables they promise; the
numbers themselves come from the GPU (experiments/efficiency/README.md)."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPTS = ROOT / "experiments" / "efficiency"
SMALL = ["--short", "128", "--response", "16", "--warmup", "1"]


def script(name, *args, tmp_path, returncode=0):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == returncode, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow  # about 35 s: every method and layout variant on the tiny model
def test_bench_measures_every_method_and_variant(tmp_path):
    script("bench.py", "--models", "tiny", "--algos", "dpo", "--lengths", "384", "--variants",
           "padded,packed-sdpa,packed-varlen,shared-sdpa,shared-varlen",
           "--max-length-models", "none", "--logp-memory-models", "tiny", "--steps", "1", "--out", str(tmp_path), *SMALL,
           tmp_path=tmp_path)
    rows = json.loads((tmp_path / "solopo_grid.json").read_text())["rows"]
    cells = {(r["method"], r["variant"]): r for r in rows}
    assert set(cells) == {(m, v) for m in ("solopo", "solopo_both", "long_po")
                          for v in ("padded", "packed-sdpa", "packed-varlen", "shared-sdpa", "shared-varlen")}
    assert all(r["status"] == "ok" and r["step_s"] > 0 for r in rows)
    # 2 short (128) + 1 long (384) tokens; the bench's pair has no padding, so packing changes no count
    assert cells["solopo", "padded"]["tokens"] == cells["solopo", "packed-sdpa"]["tokens"] == 2 * 128 + 384
    # shared prompts: the long prompt (384 - 16) once for both 16-token responses, likewise the short one
    assert cells["long_po", "shared-sdpa"]["tokens"] == 384 + 16
    assert cells["solopo_both", "shared-sdpa"]["tokens"] == (128 + 16) + (384 + 16)
    assert all(cells[m, "shared-varlen"]["tokens"] == cells[m, "shared-sdpa"]["tokens"] for m in ("long_po", "solopo"))
    assert "| variant |" in (tmp_path / "solopo_grid.md").read_text()
    memory = json.loads((tmp_path / "logp_memory.json").read_text())["rows"]
    assert {r["variant"] for r in memory} == {"response_only", "full_logits"}

    # --resume keeps what was measured and adds only the new cells (a run continued in a later GPU call)
    script("bench.py", "--models", "tiny", "--algos", "dpo", "--lengths", "384,448", "--variants", "padded",
           "--methods", "long_po", "--max-length-models", "none", "--no-logp-memory", "--steps", "1", "--resume",
           "--out", str(tmp_path), *SMALL, tmp_path=tmp_path)
    again = json.loads((tmp_path / "solopo_grid.json").read_text())["rows"]
    assert again[:len(rows)] == rows and [(r["method"], r["long_len"]) for r in again[len(rows):]] == [("long_po", 448)]


@pytest.mark.slow  # long CPU test: pytest -m slow
def test_inference_bench_measures_each_precision_against_fp32(tmp_path):
    script("inference_bench.py", "--models", "tiny", "--lengths", "64,128", "--prompts", "3", "--batch-size", "2",
           "--max-new-tokens", "3", "--out", str(tmp_path), tmp_path=tmp_path)
    rows = json.loads((tmp_path / "inference_precision.json").read_text())["rows"]
    assert [(r["variant"], r["length"]) for r in rows] == [(v, n) for v in ("fp32", "fp32+autocast", "bf16")
                                                           for n in (64, 128)]
    assert all(r["status"] == "ok" and r["s_per_prompt"] > 0 and r["prompt_tokens"] >= 64 for r in rows)
    assert all((r["same_answers"] is None) == (r["variant"] == "fp32") for r in rows)
    assert all(0 <= r["same_answers"] <= 3 for r in rows if r["variant"] != "fp32")
    script("inference_bench.py", "--models", "tiny", "--lengths", "64", "--prompts", "3", "--variants", "bf16,fp32",
           "--out", str(tmp_path), tmp_path=tmp_path, returncode=2)


def test_profile_step_splits_a_step_into_phases(tmp_path):
    out = script("profile_step.py", "--model", "tiny", "--length", "384", "--methods", "solopo,long_po",
                 "--out", str(tmp_path), *SMALL, tmp_path=tmp_path)
    text = (tmp_path / "profile_tiny_384.txt").read_text()
    assert "forward[short]" in text and "forward[long]" in text and "backward" in text and "optimizer" in text
    assert text.count("free-running step under the profiler") == 2 and "Self CPU" in out


@pytest.mark.distributed
@pytest.mark.slow  # about 50 s: two scaling runs of several processes each
def test_scaling_runs_the_same_global_batch_on_one_and_two_processes(tmp_path):
    """scaling.py through `python -m solopo.run trainer=fsdp`: 2 gloo processes against 1 process accumulating 2
    micro-batches; the first three step losses and the first gradient norm agree (the data and the global batches are
    the same). DPO against the cached reference, fp32 weights under bf16-mixed, as the GPU cells run."""
    script("scaling.py", "--devices", "1,2", "--models", "tiny", "--lengths", "384", "--algos", "dpo", "--steps", "3",
           "--warmup", "1", "--root", str(tmp_path / "runs"), "--out", str(tmp_path), "--",
           "trainer.accelerator=cpu", "trainer.precision=bf16-mixed", "model.dtype=float32", "optim.lr=1e-3",
           tmp_path=tmp_path)
    rows = json.loads((tmp_path / "fsdp_scaling.json").read_text())["rows"]
    assert [(r["devices"], r["status"]) for r in rows] == [(1, "ok"), (2, "ok")]
    one, two = rows
    assert len(one["losses"]) == len(two["losses"]) == 3 and one["losses"][1] != one["losses"][0]  # training moved
    assert one["losses"][0] == pytest.approx(math.log(2), rel=1e-7)  # the policy is its own reference at first
    assert two["loss_max_rel_diff"] < 1e-5 and two["scaling_efficiency"] > 0 and one["scaling_efficiency"] == 1
    assert one["first_grad_norm"] > 0 and two["grad_norm_rel_diff"] < 1e-5  # averaged, not summed, over processes
    assert "NCCL_NVLS_ENABLE" in json.dumps(json.loads((tmp_path / "fsdp_scaling.json").read_text())["meta"])

    # --resume keeps a measured run and redoes one that timed out (here: drops it, as only one device is asked for)
    table = json.loads((tmp_path / "fsdp_scaling.json").read_text())
    table["rows"][1]["status"] = "timeout"
    (tmp_path / "fsdp_scaling.json").write_text(json.dumps(table))
    out = script("scaling.py", "--devices", "1", "--global-batch", "2", "--models", "tiny", "--lengths", "384",
                 "--algos", "dpo", "--steps", "3", "--resume", "--out", str(tmp_path), "--", "trainer.accelerator=cpu",
                 "trainer.precision=bf16-mixed", "model.dtype=float32", "optim.lr=1e-3", tmp_path=tmp_path)
    assert "tiny 384 dpo on 1: in" in out
    assert json.loads((tmp_path / "fsdp_scaling.json").read_text())["rows"] == [one]


def test_summary_divides_the_measured_rows_and_checks_each_target(tmp_path):
    """summary.py on hand-made tables: every ratio is the quotient of two rows, and each target's verdict follows."""
    sys.path.insert(0, str(SCRIPTS))
    import summary

    def table(name, rows):
        (tmp_path / f"{name}.json").write_text(json.dumps({"meta": {"response_len": 64}, "rows": rows}))

    row = lambda method, n, step, **kw: dict(model="qwen2.5-1.5b", algo="dpo", method=method, variant="padded",  # noqa: E731
                                             long_len=n, status="ok", step_s=step, tflops=100.0, peak_gib=10.0, commit="abc", **kw)
    table("solopo_grid", [r for n in (8192, 16384, 32768) for r in (row("solopo", n, 1.0), row("long_po", n, 2.0))]
          + [row("long_po", 32768, 4.0)])  # a later measurement of the same cell wins
    table("trl_long_po", [dict(model="qwen2.5-1.5b", trainer="trl-dpo", long_len=n, status=s, step_s=t, peak_gib=20.0)
                          for n, s, t in ((16384, "ok", 2.5), (32768, "ok", 2.0), (131072, "ok", 30.0), (262144, "OOM", None))])
    table("solopo_max_length", [dict(model="qwen2.5-1.5b", method="solopo", variant="padded", max_long_len=262144,
                                     step_s_at_max=50.0, peak_gib_at_max=60.0, first_failure=None),
                                dict(model="qwen2.5-1.5b", method="long_po", variant="padded", max_long_len=262144,
                                     step_s_at_max=100.0, peak_gib_at_max=120.0, first_failure="OOM", failed_len=393216),
                                # a probe whose call ended before its next length
                                dict(model="qwen2.5-1.5b", method="long_po", variant="shared-flex", max_long_len=131072,
                                     step_s_at_max=30.0, peak_gib_at_max=40.0, first_failure=None, probe_to=524288)])
    table("logp_memory", [dict(model="qwen2.5-1.5b", variant=v, context_len=n, extra_peak_gib=g) for n, v, g in (
        (4096, "response_only", 0.5), (65536, "response_only", 0.52), (4096, "full_logits", 9.0), (65536, "full_logits", "OOM"))])

    table("solopo_grid_shared", [{**row(m, 16384, t), "variant": v} for m, v, t in (
        ("solopo", "padded", 1.0), ("solopo", "shared-flex", 0.9), ("solopo_both", "padded", 2.0),
        ("solopo_both", "shared-flex", 1.2), ("long_po", "padded", 2.0), ("long_po", "shared-flex", 1.2))])
    out = summary.summarise(tmp_path)
    assert out["shared"] == [{"model": "qwen2.5-1.5b", "algo": "dpo", "long_len": 16384, "best_ratio": 0.75}]
    ratios = {r["long_len"]: (r["solopo_vs_long_po"], r["solopo_vs_trl"]) for r in out["grid"]}
    assert ratios == {8192: (0.5, None), 16384: (0.5, 0.4), 32768: (0.25, 0.5)}
    assert out["longest"] == {"solopo": 262144, "long_po": 262144, "long_po/failed_at": 393216, "trl-dpo": 131072}
    text = (tmp_path / "summary.md").read_text()
    assert "| SoLoPO <= 0.5x Long-PO's step (1.5B, DPO), 8K and beyond | 8K 0.50" in text
    # the shared-prompt Long-PO is a baseline too: its 0.75 fails the target that padded rows alone would meet
    assert "0.25 (FLOP ratio 0.25); against Long-PO with shared prompts, best of each: 16K 0.75 | no |" in text
    assert "16K 0.40, 32K 0.50 | yes |" in text
    assert "SoLoPO 256K, TRL DPOTrainer 128K | yes for SoLoPO; no for TRL under 128K |" in text
    assert "0.50 GiB at 4K, 0.52 GiB at 64K | yes |" in text
    assert "| TRL DPOTrainer | 128K | 30.0 s | 20.0 GiB | OOM at 256K |" in text
    assert "| SoLoPO chosen-only (padded) | 256K | 50.0 s | 60.0 GiB | not tried |" in text
    assert "| Long-PO (padded) | 256K | 100.0 s | 120.0 GiB | OOM at 384K |" in text
    assert "| Long-PO (shared-flex) | 128K | 30.0 s | 40.0 GiB | not reached (512K asked for): the call's time ran out |" in text
    assert ("| long context | SoLoPO padded | SoLoPO shared-flex | SoLoPO both padded | SoLoPO both shared-flex | "
            "Long-PO padded | Long-PO shared-flex | SoLoPO / Long-PO, best of each |") in text
    assert "| 16K | 1 s | 0.9 s | 2 s | 1.2 s | 2 s | 1.2 s | 0.75 |" in text


def test_longest_context_probe_holds_adamw_state_as_later_steps_do():
    """The probe's single step must hold AdamW's moments through its backward, as every step after a run's first does
    (a fresh optimizer creates them only after the first backward, which would under-count the peak)."""
    import torch

    sys.path.insert(0, str(SCRIPTS))
    from bench import with_optimizer_state

    model = torch.nn.Linear(4, 3)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    with_optimizer_state(model, optimizer)
    assert all(set(optimizer.state[p]) >= {"exp_avg", "exp_avg_sq"} for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # zero gradients move nothing
    state = optimizer.state[next(model.parameters())]["exp_avg"]
    with_optimizer_state(model, optimizer)  # already there: untouched
    assert optimizer.state[next(model.parameters())]["exp_avg"] is state


def test_trl_bench_measures_its_cells_and_redoes_one_step_probes(tmp_path):
    """trl_bench.py on the tiny model (where trl is installed: `pip install -e ".[bench]"`): DPO and SimPO cells, then
    the longer context probed after one warm-up step; a row of an older one-step probe is measured again (--resume)."""
    pytest.importorskip("trl")
    args = ["--models", "tiny", "--lengths", "256", "--max-lengths", "384", "--response", "16", "--steps", "1",
            "--out", str(tmp_path)]
    script("trl_bench.py", *args, tmp_path=tmp_path)
    rows = json.loads((tmp_path / "trl_long_po.json").read_text())["rows"]
    assert [(r["trainer"], r["long_len"], r["warmup_steps"], r["status"]) for r in rows] == [
        ("trl-dpo", 256, 1, "ok"), ("trl-simpo", 256, 1, "ok"), ("trl-dpo", 384, 1, "ok")]
    table = json.loads((tmp_path / "trl_long_po.json").read_text())
    table["rows"][-1].update(warmup_steps=0, step_s=-1.0)  # as the first 128K/256K rows were measured
    (tmp_path / "trl_long_po.json").write_text(json.dumps(table))
    script("trl_bench.py", *args, "--resume", tmp_path=tmp_path)
    again = json.loads((tmp_path / "trl_long_po.json").read_text())["rows"]
    assert again[:2] == rows[:2] and len(again) == 3
    assert again[2]["warmup_steps"] == 1 and again[2]["step_s"] > 0
    # Every cell there: the model is not even loaded (SmolLM2's tokenizer needs the embedded model's cache).
    assert "tiny: every cell is in" in script("trl_bench.py", *args, "--resume", tmp_path=tmp_path)


@pytest.mark.slow  # long CPU test: pytest -m slow
def test_longest_context_probe_names_its_allocator_and_is_redone_under_another(tmp_path):
    """A longest-context verdict depends on the CUDA allocator's settings (fragmentation decides an OOM at the edge):
    each probe records them, and --resume probes again rows measured under other settings."""
    args = ["--models", "tiny", "--algos", "dpo", "--methods", "long_po", "--variants", "padded", "--lengths", "",
            "--max-lengths", "256,320", "--max-length-models", "tiny", "--no-logp-memory", "--out", str(tmp_path), *SMALL]
    script("bench.py", *args, tmp_path=tmp_path)
    (row,) = json.loads((tmp_path / "solopo_max_length.json").read_text())["rows"]
    assert row["max_long_len"] == 320 and row["first_failure"] is None
    assert row["alloc_conf"] == os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    table = json.loads((tmp_path / "solopo_max_length.json").read_text())
    del table["rows"][0]["alloc_conf"]  # as the rows measured before the setting was recorded
    table["rows"][0]["max_long_len"] = 128
    (tmp_path / "solopo_max_length.json").write_text(json.dumps(table))
    script("bench.py", *args, "--resume", tmp_path=tmp_path)
    (again,) = json.loads((tmp_path / "solopo_max_length.json").read_text())["rows"]
    assert again["max_long_len"] == 320 and again["alloc_conf"] == row["alloc_conf"]


@pytest.mark.slow  # long CPU test: pytest -m slow
def test_longest_context_probe_goes_on_from_where_it_stopped(tmp_path):
    """A probe that trained at every length it reached (a call cut short, or longer lengths asked for now) goes on
    under --resume from its longest length, without measuring the shorter ones again; a finished one is kept."""
    args = ["--models", "tiny", "--algos", "dpo", "--methods", "long_po", "--variants", "padded", "--lengths", "",
            "--max-length-models", "tiny", "--no-logp-memory", "--out", str(tmp_path), *SMALL]
    script("bench.py", *args, "--max-lengths", "256", tmp_path=tmp_path)
    (first,) = json.loads((tmp_path / "solopo_max_length.json").read_text())["rows"]
    assert first["max_long_len"] == 256 and first["first_failure"] is None and first["probe_to"] == 256
    log = script("bench.py", *args, "--max-lengths", "256,320", "--resume", tmp_path=tmp_path)
    (row,) = json.loads((tmp_path / "solopo_max_length.json").read_text())["rows"]
    assert row["max_long_len"] == 320 and row["first_failure"] is None and row["failed_len"] is None
    assert row["probe_to"] == 320
    assert "'long_len': 320" in log and "'long_len': 256" not in log
    log = script("bench.py", *args, "--max-lengths", "256,320", "--resume", tmp_path=tmp_path)
    assert "every cell is in" in log


@pytest.mark.slow  # long CPU test: pytest -m slow
def test_longest_context_probe_runs_in_a_shared_prompt_layout(tmp_path):
    """The probe runs in its first variant: Long-PO with shared prompts gets its own row beside the padded one."""
    args = ["--models", "tiny", "--algos", "dpo", "--methods", "long_po", "--lengths", "", "--max-lengths", "256",
            "--max-length-models", "tiny", "--no-logp-memory", "--out", str(tmp_path), *SMALL]
    script("bench.py", *args, "--variants", "padded", tmp_path=tmp_path)
    script("bench.py", *args, "--variants", "shared-sdpa", "--resume", tmp_path=tmp_path)
    rows = json.loads((tmp_path / "solopo_max_length.json").read_text())["rows"]
    assert [(r["variant"], r["max_long_len"], r["first_failure"]) for r in rows] == [("padded", 256, None),
                                                                                     ("shared-sdpa", 256, None)]
    assert not (tmp_path / "solopo_grid.json").exists()  # no grid cells asked for


def test_run_sh_resumes_every_script_into_one_results_folder(tmp_path):
    """The one command: each script with --resume into RESULTS, the SmolLM2 probes capped lower, the shared-prompt
    grid, then the summary."""
    calls = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), RESULTS=str(tmp_path / "results"))
    done = subprocess.run(["bash", str(SCRIPTS / "run.sh"), "600"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert [line.split()[0].rsplit("/", 1)[-1] for line in lines] == ["bench.py", "bench.py", "trl_bench.py",
                                                                      "trl_bench.py", "bench.py", "bench.py", "summary.py"]
    assert all(line.endswith(f"--resume --out {tmp_path / 'results'}") for line in lines[:6])
    assert "--variants padded,shared-flex" in lines[4] and "--tag _shared" in lines[4]
    # Long-PO's longest context with a shared prompt, into the same table as the other probes (no tag)
    assert "--methods long_po --variants shared-flex" in lines[5] and "--tag" not in lines[5] and "524288" in lines[5]
    assert "--models smollm2" in lines[1] and "--max-lengths 131072,262144 " in lines[1]
    assert "--max-length-models qwen2.5-1.5b " in lines[0] and "524288" in lines[0]


def test_a_table_is_rewritten_only_when_its_rows_change(tmp_path):
    """A call that measures nothing new in a table leaves it, header included, as the call that measured it wrote it."""
    sys.path.insert(0, str(SCRIPTS))
    from common import write_table

    rows = [{"model": "tiny", "step_s": 1.5}]
    write_table(tmp_path, "t", rows, ["model", "step_s"], {"command": "first", "commit": "aaa"})
    before = (tmp_path / "t.md").read_text()
    write_table(tmp_path, "t", [dict(r) for r in rows], ["model", "step_s"], {"command": "second", "commit": "bbb"})
    assert (tmp_path / "t.md").read_text() == before and "first" in before
    write_table(tmp_path, "t", rows + [{"model": "tiny2", "step_s": 2.0}], ["model", "step_s"],
                {"command": "third", "commit": "ccc"})
    table = json.loads((tmp_path / "t.json").read_text())
    assert table["meta"]["command"] == "third" and [r["commit"] for r in table["rows"]] == ["aaa", "ccc"]
    assert "last call: commit ccc" in (tmp_path / "t.md").read_text()


def test_step_clock_times_the_steps_after_the_warm_up_and_keeps_the_first_steps_metrics(monkeypatch):
    """fsdp_bench.py's and cp_bench.py's clock: with 1 warm-up step of 3, two steps are timed and peak memory is reset
    once, before the first timed one; the first step's logged values are kept under their columns."""
    sys.path.insert(0, str(SCRIPTS))
    import torch
    from common import StepClock

    resets = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: resets.append(True))
    trainer = type("Trainer", (), {"callback_metrics": {"train/loss": torch.tensor(0.5)}})()
    clock = StepClock(1, first={"first_loss": "train/loss"})
    for step in range(3):
        clock.on_train_batch_start(trainer, None, None, step)
        trainer.callback_metrics = {"train/loss": torch.tensor(0.5 + step)}
        clock.on_train_batch_end(trainer, None, None, None, step)
    assert len(clock.times) == 2 and resets == [True]
    assert clock.first == {"first_loss": 0.5} and clock.step_s == sum(clock.times) / 2


def test_flop_count_by_hand():
    """One layer, hidden 2, q/kv 2, ffn 3, vocab 5: per token 2 * (2*(2+4) + 2*2 + 3*2*3) = 68 FLOPs of matmuls."""
    sys.path.insert(0, str(SCRIPTS))
    from common import Shape

    shape = Shape(layers=1, hidden=2, q_dim=2, kv_dim=2, ffn=3, vocab=5)
    # one sequence of 6 tokens, 2 of them the response: 68 * 6 + causal attention 2 * 36 * 2 + LM head 2 * 2 * 5 * 2
    assert shape.train_flops(6, 2) == 3 * (68 * 6 + 144 + 40)
    assert shape.train_flops(6, 2, causal=False) == 3 * (68 * 6 + 288 + 40)
    # two 2-token responses sharing the 4-token prompt: 8 tokens; the prompt's causal attention 2 * 16 * 2, each
    # response's 2 queries over the prompt (4 * 2 * 4 * 2) and causally over themselves (2 * 4 * 2); two LM heads
    assert shape.train_flops(6, 2, n_responses=2) == 3 * (68 * 8 + 64 + 2 * (64 + 16) + 80)
    assert shape.train_flops(6, 2, n_responses=1) == shape.train_flops(6, 2)


def test_run_kernels_sh_measures_each_model_build_in_its_own_call(tmp_path):
    """run_kernels.sh: SoLoPO DPO cells of the plain model (flash and cuDNN SDPA), the memory savers, Liger (only where
    it can run: not on this CPU) and compiled layers, each build in its own bench.py call into the _kernels tables of
    RESULTS, then the longest context with the savers; every call resumes."""
    calls = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\ncase "$1" in -c|-m) exec {sys.executable} "$@";; esac\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), RESULTS=str(tmp_path / "results"), PYTHONPATH=str(ROOT))
    done = subprocess.run(["bash", str(SCRIPTS / "run_kernels.sh"), "600"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert [line.split(" --variants ")[1].split()[0] for line in lines] == ["padded,cudnn-sdpa", "savers", "compile",
                                                                           "savers"]
    assert "liger: skipped" in done.stdout and "model.liger=true needs a CUDA GPU" in done.stdout
    assert all("--tag _kernels --resume --out " + str(tmp_path / "results") in line for line in lines)
    assert all("--lengths 8192,16384,32768 --max-length-models none" in line for line in lines[:3])
    assert "--max-lengths 524288,1048576 --max-length-models qwen2.5-1.5b" in lines[3]


def test_run_kernels_sh_with_lengths_empty_runs_only_the_probe(tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\ncase "$1" in -c|-m) exec {sys.executable} "$@";; esac\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), RESULTS=str(tmp_path / "results"), PYTHONPATH=str(ROOT), LENGTHS="")
    done = subprocess.run(["bash", str(SCRIPTS / "run_kernels.sh"), "600"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "no grid cell, only the probe" in done.stdout, done.stdout + done.stderr
    [line] = calls.read_text().splitlines()
    assert "--variants savers --lengths  --max-lengths 524288,1048576" in line


def test_with_span_s_the_longest_context_probe_runs_on_after_the_call(tmp_path):
    """SPAN_S: the probe (a 1M step outlasts a device call) starts in a process session of its own, on a copy of the
    code, and the call returns; the next call measures no grid cell beside it, waits for it and keeps its log."""
    calls, fake, span = tmp_path / "calls", tmp_path / "python", tmp_path / "span"
    fake.write_text(f'#!/bin/sh\ncase "$1" in -c|-m) exec {sys.executable} "$@";; esac\necho "$@" >> {calls}\n'
                    'case "$*" in *--max-lengths*) echo "probe in $(pwd)"; sleep 4; echo "probe done";; esac\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), RESULTS=str(tmp_path / "results"), PYTHONPATH=str(ROOT), SPAN_S="1000",
               SPAN_DIR=str(span))
    first = subprocess.run(["bash", str(SCRIPTS / "run_kernels.sh"), "62"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0 and "runs on after this call" in first.stdout, first.stdout + first.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 4 and "--max-lengths 524288,1048576" in lines[3] and "--variants savers" in lines[3]
    second = subprocess.run(["bash", str(SCRIPTS / "run_kernels.sh"), "100"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0 and "no grid cell beside it" in second.stdout, second.stdout + second.stderr
    assert "probe done" in second.stdout and calls.read_text().splitlines() == lines
    assert f"probe in {span}.code" in (tmp_path / "results" / "kernels.log").read_text()


@pytest.mark.slow  # about 3 minutes: the compiled variant compiles its blocks on the CPU
def test_run_kernels_sh_runs_on_the_tiny_model(tmp_path):
    env = dict(os.environ, RESULTS=str(tmp_path), MODEL="tiny", LENGTHS="384", PROBE_LENGTHS="512,640", SHORT="128",
               PYTHON=sys.executable)
    done = subprocess.run(["bash", str(SCRIPTS / "run_kernels.sh"), "600"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "solopo_grid_kernels.json").read_text())["rows"]
    assert {r["variant"]: r["status"] for r in rows} == {"padded": "ok", "savers": "ok", "compile": "ok"}
    # cuDNN is a CUDA kernel: the cell fails on the CPU and says so; a resumed table drops failed cells to measure again
    cudnn = re.search(r"\{'model': 'tiny'[^}]*'variant': 'cudnn-sdpa'[^}]*\}", (tmp_path / "kernels.log").read_text())
    assert cudnn and "'long_len': 384" in cudnn[0] and "'status': 'error: RuntimeError'" in cudnn[0]
    probe = json.loads((tmp_path / "solopo_max_length_kernels.json").read_text())["rows"]
    assert [(r["variant"], r["max_long_len"]) for r in probe] == [("savers", 640)]


def test_busy_time_counts_overlapping_kernels_once():
    """Kernels at [0, 10], [5, 12] and [20, 25] us (two streams overlapping on 5-10): busy 17 us, not their 22 us sum,
    so a step's busy share stays at most 1 (the sum gave 101% for a fully busy step)."""
    sys.path.insert(0, str(SCRIPTS))
    from common import covered_seconds

    assert covered_seconds([(20.0, 25.0), (0.0, 10.0), (5.0, 12.0)]) == pytest.approx(17e-6)
    assert covered_seconds([(0.0, 10.0), (2.0, 3.0)]) == pytest.approx(10e-6) and covered_seconds([]) == 0.0
