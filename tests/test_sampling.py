"""On-policy pair sampling: the pick rule by hand, generation with a tiny model, the disk cache."""
import json
from dataclasses import replace
import random

import pytest

from solopo.cache import DiskCache
from solopo.generation import sampling
from solopo.generation.sampling import generate, pick_pair, sample_pairs
from solopo.data.schema import PreferenceExample

from conftest import SAMPLING


def example(i, answer="Quorath"):
    return PreferenceExample(f"q{i}", f"Where was person {i} born?", (answer,), f"short {i}", f"long {i}", "", "")


def test_pick_pair_takes_one_correct_and_one_incorrect():
    samples = [("Quorath.", True), ("It is Zenna", True), ("quorath", True), ("Velm", True), ("", True),
               ("Quorath is where", False), ("Zenna, the", False)]
    scores = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    chosen, rejected = pick_pair(samples, scores, random.Random(0))
    # never an empty sample, never one cut at max_new_tokens
    assert chosen in {"Quorath.", "quorath"} and rejected in {"It is Zenna", "Velm"}
    assert pick_pair(samples, scores, random.Random(0)) == (chosen, rejected)  # seeded


@pytest.mark.parametrize("scores", [[1.0, 1.0], [0.0, 0.0]])
def test_pick_pair_needs_both_kinds(scores):
    assert pick_pair([("a", True), ("b", True)], scores, random.Random(0)) is None
    assert pick_pair([("a", True), ("b", False)], [1.0, 0.0], random.Random(0)) is None


def fake_generate(outputs):
    calls = []

    def run(model, tokenizer, prompts, settings, desc=""):
        calls.append(list(prompts))
        return [[(text, True) for text in outputs[p]] for p in prompts]

    return run, calls


def test_sample_pairs_keeps_items_with_both_kinds_and_counts_the_rest(tmp_path, monkeypatch):
    """k = 3: q0 has 2 correct + 1 wrong (kept), q1 all correct, q2 all wrong (both dropped)."""
    outputs = {"short 0": ["Quorath", "Zenna", "quorath city"], "short 1": ["Quorath"] * 3, "short 2": ["no", "x", "y"]}
    run, calls = fake_generate(outputs)
    monkeypatch.setattr(sampling, "generate", run)
    settings = replace(SAMPLING, k=3)
    kept, summary = sample_pairs([example(i) for i in range(3)], None, None, settings, "short", "m", DiskCache(tmp_path, "pairs"))
    assert [e.id for e in kept] == ["q0"] and kept[0].rejected == "Zenna" and kept[0].chosen in {"Quorath", "quorath city"}
    assert summary["items"] == 3 and summary["kept"] == 1
    assert summary["dropped"] == {"no_correct": 1, "no_incorrect": 1}
    assert summary["share_correct"] == pytest.approx(5 / 9)
    # a rerun reads the cache and generates nothing
    again, _ = sample_pairs([example(i) for i in range(3)], None, None, settings, "short", "m", DiskCache(tmp_path, "pairs"))
    assert again == kept and len(calls) == 1
    # another context is another key
    outputs.update({f"long {i}": ["Zenna", "Quorath", "Velm"] for i in range(3)})
    kept_long, summary_long = sample_pairs([example(i) for i in range(3)], None, None, settings, "long", "m", DiskCache(tmp_path, "pairs"))
    assert len(calls) == 2 and calls[-1][0] == "long 0" and summary_long["kept"] == 3


def test_a_damaged_sample_cache_is_resampled(tmp_path, monkeypatch, caplog):
    outputs = {"short 0": ["Quorath", "Zenna"]}
    run, calls = fake_generate(outputs)
    monkeypatch.setattr(sampling, "generate", run)
    settings = replace(SAMPLING, k=2)
    sample_pairs([example(0)], None, None, settings, "short", "m", DiskCache(tmp_path, "pairs"))
    (cache,) = tmp_path.glob("*.json")
    cache.write_text(json.dumps({"samples": [[["only one", True]], [["extra", True]]]}))
    sample_pairs([example(0)], None, None, settings, "short", "m", DiskCache(tmp_path, "pairs"))
    assert len(calls) == 2 and "unusable" in caplog.text


def test_generate_with_a_model(tiny_model, tokenizer):
    settings = replace(SAMPLING, k=3, max_new_tokens=4, batch_size=6, seed=1)
    out = generate(tiny_model, tokenizer, ["Where?", "Who founded it, and when?", "Why?"], settings)
    assert [len(samples) for samples in out] == [3, 3, 3]
    assert all(isinstance(text, str) and isinstance(done, bool) for x in out for text, done in x)
    assert generate(tiny_model, tokenizer, ["Where?", "Who founded it, and when?", "Why?"], settings) == out
    assert tiny_model.training  # the mode is restored


def test_run_builds_sampled_pairs_on_the_method_context(monkeypatch, tokenizer, tiny_model, tmp_path):
    """data.pairs=sampled through the run's make_pairs (solopo.training.pairs): samples drawn on x_short for SoLoPO
    and on x_long for Long-PO, and the summary lands in the data counts."""
    from hydra import compose, initialize_config_dir

    from conftest import ROOT, SOLOPO, TINY
    from solopo.core.objective import Method
    from solopo.training.pairs import make_examples, make_pairs
    from solopo.settings.build import build_settings

    seen = []

    def answer_half(model, tok, prompts, settings, desc=""):
        seen.append(desc)
        # the whole prompt holds the evidence, so it contains the answer: one correct sample, one wrong
        return [[("I think it is Nowhere.", True), (prompt, True)] for prompt in prompts]

    monkeypatch.setattr(sampling, "generate", answer_half)
    monkeypatch.setenv("SOLOPO_CACHE", str(tmp_path))
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "data.pairs=sampled", "data.sampling.k=2"])
    spec = replace(TINY, name="tiny", random_init=None)  # weights "from a path", the tiny model given
    from hydra.utils import instantiate

    splits = instantiate(cfg.data.source)
    settings = build_settings(cfg)
    for method, context in ((SOLOPO, "short"),
                               (Method(name="long_po", po_context="long", pairs_from="long", use_ra=False), "long")):
        pairs, counts = make_pairs(cfg, replace(settings, model=spec, method=method), splits,
                                   make_examples(cfg, splits, tokenizer), tokenizer, tiny_model)
        assert counts["train"]["sampling"]["context"] == context and seen[-1] == f"sampling pairs ({context} context)"
        assert counts["train"]["pairs"] == counts["train"]["sampling"]["kept"] == 4
        assert counts["train"]["sampling"]["share_correct"] == 0.5
        assert {p.responses["rejected"][-1] for p in pairs["train"]} == {tokenizer.eos_token_id}


def test_vllm_engine_contract(monkeypatch, tokenizer):
    """engine=vllm drives vLLM's LLM.generate with n=k samples per chat-templated prompt; a stand-in
    module records the calls (vLLM itself needs a GPU)."""
    import sys
    import types

    calls = {}

    class Params:
        def __init__(self, **kwargs):
            calls["params"] = kwargs

    class LLM:
        def __init__(self, model, seed):
            calls["model"] = model

        def generate(self, texts, params):
            calls["texts"] = texts
            done = types.SimpleNamespace(text=" Quorath", finish_reason="stop")
            cut = types.SimpleNamespace(text="Zenna is", finish_reason="length")
            return [types.SimpleNamespace(outputs=[done, cut]) for _ in texts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=Params))
    settings = replace(SAMPLING, k=2, max_new_tokens=7, engine="vllm")
    out = sampling.generate_vllm("/models/x", tokenizer, ["Where?"], settings)
    assert out == [[("Quorath", True), ("Zenna is", False)]]
    assert calls["model"] == "/models/x" and calls["params"]["n"] == 2 and calls["params"]["max_tokens"] == 7
    assert calls["texts"][0].endswith("<|im_start|>assistant\n")


def test_unknown_engine():
    with pytest.raises(ValueError, match="engine=sglang: choose one of"):
        replace(SAMPLING, engine="sglang")


def test_vllm_samples_from_the_run_weights(tokenizer):
    """vLLM gets a directory of the run's weights: the model's own, or a random model written out for the engine."""
    from pathlib import Path

    from solopo.models.loading import load_model
    from solopo.training.pairs import sampling_weights

    from conftest import TINY

    with sampling_weights("transformers", TINY, None, tokenizer) as path:
        assert path is None
    policy = load_model(TINY, tokenizer)
    with sampling_weights("vllm", TINY, policy, tokenizer) as path:
        assert (Path(path) / "config.json").is_file() and list(Path(path).glob("*.safetensors"))
    assert not Path(path).exists()


def test_shared_prefix_sampling_draws_what_generate_draws(tokenizer):
    """The prompt read once and its cache repeated k times gives the samples of generate(num_return_sequences=k)
    for the same seed (float64, so that the two batch shapes round alike)."""
    import dataclasses

    import torch

    from conftest import TINY
    from solopo.data.tokenize import left_padded
    from solopo.models.loading import load_model

    model = load_model(dataclasses.replace(TINY, dtype="float64"), tokenizer).eval()
    ids, mask = left_padded(tokenizer, ["Where is Paris?", "Who wrote the book about the long river?", "Hi"],
                            torch.device("cpu"))
    settings = replace(SAMPLING, k=3, max_new_tokens=12, temperature=0.85)
    torch.manual_seed(0)
    expected = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=0.85,
                              max_new_tokens=12, num_return_sequences=3, pad_token_id=tokenizer.pad_token_id,
                              use_cache=True)
    torch.manual_seed(0)
    with torch.no_grad():
        got = sampling.sample_shared_prefix(model, ids, mask, settings, tokenizer.pad_token_id)
    assert torch.equal(got, expected)
