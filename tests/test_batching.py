"""Generation in length-sorted batches under a token budget (solopo.generation.batching): the batches by hand, answers
back in the prompts' order, batched greedy answers equal to one-at-a-time ones token for token, the static KV cache
equal to the dynamic one, sampled generation repeatable under its seed, half-precision weights under mixed precision,
and a batch out of memory generated in halves."""
import dataclasses
import io
import itertools
import json
import logging
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from solopo.eval import longctx
from solopo.eval.longctx import answer_all, greedy_answers
from solopo.generation import sampling
from solopo import progress as progress_module
from solopo.generation import batching
from solopo.generation.batching import budget_batches, in_prompt_order, split_on_oom
from solopo.progress import progress
from solopo.data.tokenize import encode_prompt, left_padded
from solopo.models.loading import load_model
from solopo.training import distributed

from conftest import EVAL, SAMPLING, TINY

PROMPTS = ["Why?", "Where was the person born, and in which year did the city get its name?", "Who?",
           "Which river runs through the old town north of the bridge?", "When did it open?"]


@pytest.mark.parametrize("max_rows, max_tokens, copies, expected", [
    # longest first (100, 100, 50, 20, 5 tokens + 10 new); a batch's width is its first prompt's
    (3, 500, 1, [[1, 3, 4], [2, 0]]),  # 3 x 110 = 330 <= 500, then the row limit; 2 x 30 = 60
    (3, 200, 1, [[1], [3], [4, 2, 0]]),  # 2 x 110 = 220 > 200; 3 x 60 = 180 <= 200
    (3, 400, 2, [[1], [3], [4, 2, 0]]),  # 2 x 2 x 110 = 440 > 400; 3 x 2 x 60 = 360 <= 400
    (2, None, 1, [[1, 3], [4, 2], [0]]),  # no token bound: rows only
    (3, 50, 1, [[1], [3], [4], [2], [0]]),  # a prompt over the budget alone is a batch of one
])
def test_budget_batches_by_hand(max_rows, max_tokens, copies, expected):
    assert budget_batches([5, 100, 20, 100, 50], max_rows, max_tokens, 10, copies) == expected


def test_outputs_go_back_to_the_prompts_order():
    assert in_prompt_order([[1, 3], [0], [2]], [["b", "d"], ["a"], ["c"]]) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="a batch of 2 prompts gave 1 outputs"):
        in_prompt_order([[1, 3]], [["b"]])


class Bar(list):
    """tqdm's bar as progress() sees it: shown (a terminal) or not."""

    disable = True


def logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == progress_module.__name__]


def test_progress_in_a_log_file_every_tenth_of_the_batches_and_the_last(monkeypatch, caplog):
    """20 batches of 2 prompts, 3 answers each, one a second: a line every 2 batches; at batch 2, 12 answers in 2 s
    are 6 answers/s, and the 108 left take 18 s."""
    monkeypatch.setattr(progress_module, "tqdm", lambda batches, **kwargs: Bar(batches))
    batches, ticks = [[2 * i, 2 * i + 1] for i in range(20)], iter(range(21))
    with caplog.at_level(logging.INFO, logger=progress_module.__name__):
        assert list(progress(batches, "sampling", copies=3, clock=lambda: next(ticks))) == batches
    lines = logged(caplog)
    assert len(lines) == 10 and lines[0] == "sampling: batch 2/20, 12/120 answers, 6.00 answers/s, 18 s left"
    assert lines[-1] == "sampling: batch 20/20, 120/120 answers, 6.00 answers/s, 0 s left"


def test_progress_in_a_log_file_every_30_seconds_when_batches_are_slow(monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "tqdm", lambda batches, **kwargs: Bar(batches))
    ticks = iter([0, 40, 50, 100])  # the first batch takes 40 s, the second 10 s, the third 50 s
    with caplog.at_level(logging.INFO, logger=progress_module.__name__):
        list(itertools.islice(progress([[0]] * 100, "evaluating", clock=lambda: next(ticks)), 4))  # 3 done
    assert [line.split(",")[0] for line in logged(caplog)] == ["evaluating: batch 1/100", "evaluating: batch 3/100"]
    assert logged(caplog)[1].endswith("0.03 answers/s, 53.9 min left")  # 3 answers in 100 s; 97 left: 3233 s


def test_no_progress_lines_where_the_bar_shows(monkeypatch, caplog):
    monkeypatch.setattr(Bar, "disable", False)
    monkeypatch.setattr(progress_module, "tqdm", lambda batches, **kwargs: Bar(batches))
    with caplog.at_level(logging.INFO, logger=progress_module.__name__):
        assert list(progress([[0], [1]], "evaluating")) == [[0], [1]]
    assert logged(caplog) == []


# TINY's tied embeddings make a random model repeat its last input token; an untied, wider-initialised head answers
# each prompt differently, so a mix-up of answers or a padding effect shows.
TALKATIVE = {**TINY.random_init, "tie_word_embeddings": False, "initializer_range": 0.2}


@pytest.fixture(scope="module")
def fp32_model(tokenizer):
    return load_model(dataclasses.replace(TINY, dtype="float32", random_init=TALKATIVE), tokenizer).eval()


def test_batched_greedy_answers_equal_one_at_a_time_in_the_prompts_order(fp32_model, tokenizer):
    alone = [greedy_answers(fp32_model, tokenizer, [p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]
    assert len(set(alone)) > 1  # the prompts' answers differ, so a wrong order would show
    for batch_size, batch_tokens in ((5, None), (2, None), (5, 120)):
        got = greedy_answers(fp32_model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=batch_size,
                             batch_tokens=batch_tokens)
        assert got == alone, (batch_size, batch_tokens)


def test_static_cache_answers_equal_the_dynamic_cache(fp32_model, tokenizer, monkeypatch):
    """The static path (a static cache, solopo.generation.decoding's loop) as a GPU takes it, forced on the CPU, where
    the step runs without a graph: the same greedy answers."""
    dynamic = greedy_answers(fp32_model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=3)
    monkeypatch.setattr(longctx, "uses_static_cache", lambda model, wanted: wanted)
    assert greedy_answers(fp32_model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=3, static_cache=True) == dynamic


def test_shared_prefix_samples_from_a_static_cache_equal_those_from_the_dynamic_one(tokenizer):
    """float64, as the shared-prefix test of test_sampling: the two caches' attention rounds alike."""
    model = load_model(dataclasses.replace(TINY, dtype="float64", random_init=TALKATIVE), tokenizer).eval()
    ids, mask = left_padded(tokenizer, PROMPTS[:3], torch.device("cpu"))
    settings = replace(SAMPLING, k=3, max_new_tokens=10)
    drawn = []
    for static in (False, True):
        torch.manual_seed(0)
        with torch.no_grad():
            drawn.append(sampling.sample_shared_prefix(model, ids, mask, settings, tokenizer.pad_token_id, static))
    assert torch.equal(*drawn)


def test_sampled_generation_repeats_under_its_seed_in_the_prompts_order(fp32_model, tokenizer):
    settings = replace(SAMPLING, k=2, max_new_tokens=6, batch_size=4, batch_tokens=200, seed=3)
    first = sampling.generate(fp32_model, tokenizer, PROMPTS, settings)
    assert [len(s) for s in first] == [2] * len(PROMPTS)
    assert sampling.generate(fp32_model, tokenizer, PROMPTS, settings) == first
    assert sampling.generate(fp32_model, tokenizer, PROMPTS, replace(settings, seed=4)) != first


def test_sampling_and_evaluation_log_their_progress_off_a_terminal(fp32_model, tokenizer, monkeypatch, caplog):
    """A run's log file showed nothing for the minutes of sampling and of evaluating: both log lines now."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no terminal, no bar
    settings = replace(SAMPLING, k=2, max_new_tokens=2, batch_size=2, batch_tokens=None)
    with caplog.at_level(logging.INFO, logger=progress_module.__name__):
        sampling.generate(fp32_model, tokenizer, PROMPTS, settings, desc="sampling short")
        greedy_answers(fp32_model, tokenizer, PROMPTS, max_new_tokens=2, batch_size=5, desc="evaluating base")
    lines = logged(caplog)
    assert [line.split(",")[0] for line in lines] == ["sampling short: batch 1/5", "sampling short: batch 2/5",
                                                      "sampling short: batch 3/5", "sampling short: batch 4/5",
                                                      "sampling short: batch 5/5", "evaluating base: batch 1/1"]
    assert ", 10/10 answers, " in lines[4] and ", 5/5 answers, " in lines[5]


@pytest.mark.parametrize("path", ["greedy", "sampled"])
def test_static_cache_runs_fp32_weights_under_bf16_autocast(fp32_model, tokenizer, monkeypatch, path):
    """The default GPU run: fp32 weights under bf16-mixed. There the rotary embedding leaves keys in fp32 and values
    in bf16, which the static cache of transformers before 5.2x cannot hold (it allocates both in the keys' dtype:
    mimicked here); the static path computes with bf16 copies of the weights instead, and the fp32 masters come back
    unchanged."""
    from transformers.cache_utils import StaticLayer

    one_dtype = StaticLayer.lazy_initialization
    monkeypatch.setattr(StaticLayer, "lazy_initialization",
                        lambda self, keys, values: one_dtype(self, keys, values.to(keys.dtype)))
    before = {name: p.detach().clone() for name, p in fp32_model.named_parameters()}
    monkeypatch.setattr(longctx, "uses_static_cache", lambda model, wanted: wanted)
    monkeypatch.setattr(sampling, "uses_static_cache", lambda model, wanted: wanted)
    if path == "greedy":
        got = greedy_answers(fp32_model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=3, static_cache=True,
                             precision="bf16-mixed")
    else:
        settings = replace(SAMPLING, k=2, max_new_tokens=4, batch_size=4, static_cache=True, precision="bf16-mixed")
        got = sampling.generate(fp32_model, tokenizer, PROMPTS, settings)
    assert len(got) == len(PROMPTS)
    assert all(p.dtype == torch.float32 and torch.equal(p, before[name]) for name, p in fp32_model.named_parameters())


@pytest.mark.parametrize("kernel", ["solopo_varlen", "eager"])
def test_static_path_attends_with_a_kernel_that_reads_its_mask_and_restores_the_kernel(tokenizer, monkeypatch, kernel):
    """The static path attends through a 4D boolean mask over its cache: solopo_varlen (the shipped default) reads it
    and keeps attending; eager attention would add it to the scores, so the static path attends with SDPA there;
    either way the same greedy answers as the dynamic path, and the model's kernel afterwards."""
    from transformers import AttentionInterface

    model = load_model(dataclasses.replace(TINY, dtype="float32", random_init=TALKATIVE, attn_implementation=kernel),
                       tokenizer).eval()
    sdpa = AttentionInterface._global_mapping["sdpa"]
    calls = []
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    dynamic = greedy_answers(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=3)
    monkeypatch.setattr(longctx, "uses_static_cache", lambda model, wanted: wanted)
    assert greedy_answers(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=3, static_cache=True) == dynamic
    assert bool(calls) == (kernel == "eager")
    assert model.config._attn_implementation == kernel


def generate_dtypes(model, tokenizer, path: str, precision: str, half_weights: bool) -> set:
    """The dtypes of the decoder's parameters at each of its forwards, greedy answers (through EvalSettings) or
    samples (SamplingSettings) generated under ``precision``."""
    seen = set()
    decoder = model.get_decoder()
    hook = decoder.register_forward_pre_hook(lambda module, args: seen.update(p.dtype for p in module.parameters()))
    try:
        if path == "greedy":
            settings = replace(EVAL, max_new_tokens=3, batch_size=3, precision=precision, half_weights=half_weights)
            assert len(answer_all(model, tokenizer, PROMPTS, settings, max_length=512)) == len(PROMPTS)
        else:
            settings = replace(SAMPLING, k=2, max_new_tokens=3, batch_size=4, precision=precision,
                               half_weights=half_weights)
            assert len(sampling.generate(model, tokenizer, PROMPTS, settings)) == len(PROMPTS)
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("path", ["greedy", "sampled"])
@pytest.mark.parametrize("precision, half_weights, dtype", [
    ("bf16-mixed", True, torch.bfloat16),  # the default under mixed precision: bf16 copies, a bf16 KV cache
    ("bf16-mixed", False, torch.float32),  # the fp32 masters under autocast
    ("32-true", True, torch.float32),  # no autocast dtype: nothing to copy to
])
def test_half_weights_generate_with_autocast_dtype_copies_and_leave_the_masters(fp32_model, tokenizer, path, precision,
                                                                                 half_weights, dtype):
    """Measured on an H100 (experiments/sampling/results/speed.md): 1.5x to 2x faster with the copies. The fp32 master
    weights come back bitwise, in fp32, whatever generation computed with."""
    before = {name: p.detach().clone() for name, p in fp32_model.named_parameters()}
    assert generate_dtypes(fp32_model, tokenizer, path, precision, half_weights) == {dtype}
    assert all(p.dtype == torch.float32 and torch.equal(p, before[name]) for name, p in fp32_model.named_parameters())


def test_a_sharded_model_generates_with_its_own_weights(fp32_model, tokenizer, monkeypatch):
    """FSDP2 gathers a sharded model's weights in its param_dtype at each forward and never reads the shards' .data:
    half copies of the shards would be memory spent for nothing (is_sharded stands in for an FSDP2-wrapped model)."""
    monkeypatch.setattr(distributed, "is_sharded", lambda model: True)
    assert generate_dtypes(fp32_model, tokenizer, "greedy", "bf16-mixed", half_weights=True) == {torch.float32}


@pytest.mark.parametrize("device, sharded, static", [("cuda", False, True), ("cuda", True, False),
                                                     ("cpu", False, False)])
def test_the_static_path_is_for_a_gpu_model_of_its_own(monkeypatch, device, sharded, static):
    """A sharded model's forward gathers its weights from the other processes at every step: its decoding is not
    replayed as a graph on one process (is_sharded stands in for an FSDP2-wrapped model)."""
    monkeypatch.setattr(distributed, "is_sharded", lambda model: sharded)
    model = torch.nn.Linear(1, 1)
    monkeypatch.setattr(model, "parameters", lambda: iter([types.SimpleNamespace(device=torch.device(device))]))
    assert batching.uses_static_cache(model, True) is static
    assert not batching.uses_static_cache(model, False)


def test_the_shipped_generation_settings_take_half_weights_and_the_static_path():
    assert EVAL.half_weights and SAMPLING.half_weights
    assert EVAL.static_cache and SAMPLING.static_cache


def test_split_on_oom_halves_a_batch_until_it_fits_and_keeps_the_rows_order(caplog):
    """Batches of more than 2 rows run out of memory: 5 rows -> 3 + 2, then 3 -> 2 + 1; one warning per split."""
    def times_ten(rows):
        if len(rows) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [10 * r for r in rows]

    with caplog.at_level(logging.WARNING, logger=batching.__name__):
        assert split_on_oom(times_ten, [4, 0, 3, 1, 2], "sampling", copies=8) == [40, 0, 30, 10, 20]
    assert [r.getMessage() for r in caplog.records] == [
        "sampling: out of GPU memory on a batch of 5 prompts (40 sequences); generating it as 3 + 2 prompts",
        "sampling: out of GPU memory on a batch of 3 prompts (24 sequences); generating it as 2 + 1 prompts"]


def out_of_memory_over(model, monkeypatch, max_rows: int) -> None:
    """The model's generate runs out of memory on more than ``max_rows`` sequences, as a GPU shared with other jobs
    would; it draws from the random generator first, as an attempt that fails mid-decoding has."""
    generate = model.generate

    def limited(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > max_rows:
            torch.rand(7)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", limited)


def test_greedy_answers_out_of_memory_split_the_batch_and_equal_an_unconstrained_run(fp32_model, tokenizer,
                                                                                    monkeypatch, caplog):
    unconstrained = greedy_answers(fp32_model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=5)
    out_of_memory_over(fp32_model, monkeypatch, max_rows=2)
    with caplog.at_level(logging.WARNING, logger=batching.__name__):
        assert greedy_answers(fp32_model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=5) == unconstrained
    assert [r.getMessage().split(";")[0] for r in caplog.records if r.name == batching.__name__] == [
        "evaluating: out of GPU memory on a batch of 5 prompts (5 sequences)",
        "evaluating: out of GPU memory on a batch of 3 prompts (3 sequences)"]


def test_sampling_out_of_memory_draws_each_half_as_a_batch_of_its_own(fp32_model, tokenizer, monkeypatch, caplog):
    """One batch of 5 prompts x 2 samples; over 4 sequences run out of memory: 5 -> 3 + 2, 3 -> 2 + 1 prompts. Each
    part draws what it would as a batch of its own, whatever the failed attempts drew."""
    settings = replace(SAMPLING, k=2, max_new_tokens=6, batch_size=10, batch_tokens=None, seed=3)
    [batch] = budget_batches([len(encode_prompt(tokenizer, p)) for p in PROMPTS], 5, None, 6, copies=2)
    with monkeypatch.context() as patch:  # the parts as the call's batches, no memory limit
        patch.setattr(sampling, "budget_batches", lambda *_, **__: [batch[:2], batch[2:3], batch[3:]])
        parts = sampling.generate(fp32_model, tokenizer, PROMPTS, settings)
    assert parts != sampling.generate(fp32_model, tokenizer, PROMPTS, settings)  # other draws than the whole batch's
    out_of_memory_over(fp32_model, monkeypatch, max_rows=4)
    with caplog.at_level(logging.WARNING, logger=batching.__name__):
        got = sampling.generate(fp32_model, tokenizer, PROMPTS, settings)
    assert got == parts
    splits = [r.getMessage() for r in caplog.records if r.name == batching.__name__]
    assert len(splits) == 2 and "a batch of 5 prompts (10 sequences)" in splits[0]


def test_batches_and_seeds_draw_unrelated_streams():
    """Seed + batch number gave seed 0's second batch and seed 1's first the same random numbers."""
    seeds = {sampling.draw_seed(seed, first) for seed in range(5) for first in (0, 1, 2, 64, 4096)}
    assert len(seeds) == 25 and all(0 <= s < 2**32 for s in seeds)


@pytest.mark.parametrize("path", ["greedy", "sampled"])
def test_one_prompt_out_of_memory_raises(fp32_model, tokenizer, monkeypatch, path):
    out_of_memory_over(fp32_model, monkeypatch, max_rows=0)
    with pytest.raises(torch.OutOfMemoryError):
        if path == "greedy":
            greedy_answers(fp32_model, tokenizer, PROMPTS[:2], max_new_tokens=2, batch_size=2)
        else:
            sampling.generate(fp32_model, tokenizer, PROMPTS[:2], replace(SAMPLING, k=2, max_new_tokens=2))


def test_the_speed_table_names_a_path_that_failed_instead_of_timing_it():
    """A path that crashed in its warm-up on the GPU (the static path did, when transformers compiled its step) took
    the other paths' numbers down with the script."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "sampling"))
    import speed

    rows = [{"path": "budget", "workload": "W1", "prompts": 4, "seconds": 1.5, "limit_s": 9},
            {"path": "static", "workload": "warm-up", "seconds": None, "error": "TorchRuntimeError: o_proj"}]
    args = type("Args", (), {"answers": 4, "questions": 2, "k": 2, "length": 256, "limit_s": 9, "same_as": None})
    meta = {"command": "speed.py", "device": "cpu", "model": "tiny", "precision": "32-true", "torch": "x"}
    table = speed.page(meta, rows, args)
    assert "| budget s | best speed-up" in table and "static s" not in table and "over the" not in table
    assert "static: failed in its warm-up (TorchRuntimeError: o_proj)" in table


def test_the_speed_table_counts_the_answers_a_path_or_another_run_changed(tmp_path):
    """A faster path, or another transformers, may answer differently: the table says how many W1 answers are the
    first path's and, with --same-as, another run's on the same path."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "sampling"))
    import speed

    row = lambda path, answers: {"path": path, "workload": "W1", "prompts": 3, "seconds": 1.0,  # noqa: E731
                                 "limit_s": 9, "answers": answers}
    other = tmp_path / "speed.json"
    other.write_text(json.dumps({"meta": {"torch": "2.11", "transformers": "5.17.0"},
                                 "rows": [row("budget", ["a", "b", "x"])]}))
    args = type("Args", (), {"answers": 3, "questions": 2, "k": 2, "length": 256, "limit_s": 9, "same_as": other})
    meta = {"command": "speed.py", "device": "cpu", "model": "tiny", "precision": "32-true", "torch": "x"}
    table = speed.page(meta, [row("budget", ["a", "b", "c"]), row("budget_fp32", ["a", "y", "c"])], args)
    assert f"- W1 answers of budget identical: 2 of 3 against budget in {other} (torch 2.11, transformers 5.17.0)" \
        in table
    assert "- W1 answers of budget_fp32 identical: 2 of 3 against budget\n" in table + "\n"


def test_generation_on_copies_of_the_weights_says_so_once(fp32_model, tokenizer, caplog):
    """A user reading the log learns that answers came from bf16 copies, not the fp32 weights they trained."""
    batching.say_copies.cache_clear()
    with caplog.at_level(logging.INFO, logger="solopo.generation.batching"):
        for _ in range(2):
            greedy_answers(fp32_model, tokenizer, PROMPTS[:2], max_new_tokens=2, batch_size=2, precision="bf16-mixed",
                           half_weights=True)
        greedy_answers(fp32_model, tokenizer, PROMPTS[:2], max_new_tokens=2, batch_size=2, precision="32-true",
                       half_weights=True)
    said = [r.getMessage() for r in caplog.records if r.name == "solopo.generation.batching"]
    assert len([m for m in said if m.startswith("generation computes with bfloat16 copies")]) == 1, said


def test_speed_compares_answers_only_with_a_run_of_the_same_work(tmp_path, capsys):
    """--same-as is read before any model loads: a missing file, or a run of other prompts or another model, stops
    the script in one line instead of counting answers that were never comparable after the whole benchmark."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "sampling"))
    import speed

    work = {"model": "tiny", "answers": 6, "length": 256, "questions": 4, "k": 8}
    args = type("Args", (), {**work, "same_as": tmp_path / "missing.json"})
    with pytest.raises(SystemExit) as stop:
        speed.same_work(args)
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: --same-as {args.same_as}: not a speed.json of this script")
    args.same_as = tmp_path / "speed.json"
    args.same_as.write_text(json.dumps({"meta": {"work": {**work, "length": 128}}, "rows": []}))
    with pytest.raises(SystemExit) as stop:
        speed.same_work(args)
    assert stop.value.code == 2 and "another workload" in capsys.readouterr().err
    args.same_as.write_text(json.dumps({"meta": {"work": work}, "rows": []}))
    assert speed.same_work(args)["meta"]["work"] == work
