"""On-policy preference pairs, the paper's recipe: sample k responses per item from the policy,
score them against the gold answers (sub-EM by default; data.sampling.scorer, see solopo.scoring), keep
items with at least one correct and one incorrect sample, and pick one of each.

Pairs are sampled on the short context for SoLoPO (cheap, and more often right) or on the long
context for the Long-PO baseline. Samples are cached on disk (solopo.cache), keyed by everything
they depend on, so a rerun or a sweep over alpha reuses them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from solopo.cache import DiskCache, digest
from solopo.data.schema import PreferenceExample
from solopo.data.tokenize import encode_prompt, left_padded_ids
from solopo.generation.batching import budget_batches, generate_batches, uses_static_cache
from solopo.generation.decoding import (cache_keyword, decode, end_ids, plain_decoding, returned_cache,
                                        sampled_pick)
from solopo.scoring import SUB_EM, Scorer, checked_score, f1, scorer_problems, settings_identity
from solopo.settings.fields import flag, number, one_of, refuse
from solopo.training.precision import autocast
from solopo.generation.vllm_engine import vllm_generate

log = logging.getLogger(__name__)


ENGINES = ("transformers", "vllm")


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """k samples per prompt at this temperature (the paper: 32 at 0.85), up to max_new_tokens each;
    batch_size bounds the sequences generated at once (transformers engine); seed makes the samples
    and the pick repeatable; engine: "transformers" (the policy in memory) or "vllm" (when installed:
    a vLLM engine on the same weights, much faster on a GPU, released before training); precision: the
    trainer's (Lightning's name), whose autocast the transformers engine samples under; half_weights: under
    mixed precision, the transformers engine samples with copies of the weights in the autocast dtype
    (solopo.generation.batching.generation_weights); scorer: scores each sample against the gold answers and says
    which are correct (solopo.scoring)."""

    k: int
    temperature: float
    max_new_tokens: int
    batch_size: int
    batch_tokens: int | None
    static_cache: bool
    half_weights: bool
    seed: int
    engine: str
    scorer: Scorer
    precision: str = "32-true"  # solopo.settings passes the trainer's

    def __post_init__(self) -> None:
        refuse(scorer_problems(self.scorer) + one_of("engine", self.engine, ENGINES)
               + number("k", self.k, 1, integer=True)
               + number("temperature", self.temperature, 0, above=True)
               + number("max_new_tokens", self.max_new_tokens, 1, integer=True)
               + number("batch_size", self.batch_size, 1, integer=True)
               + number("batch_tokens", self.batch_tokens, 1, integer=True, optional=True)
               + flag("static_cache", self.static_cache) + flag("half_weights", self.half_weights))


Sample = tuple[str, bool]  # (text, finished: the model ended its turn within max_new_tokens)


def sample_shared_prefix(model, ids: torch.Tensor, mask: torch.Tensor, settings: SamplingSettings,
                         pad_token_id: int, static: bool = False) -> torch.Tensor:
    """settings.k samples of each left-padded prompt, prompt ids included, each prompt's k rows together.

    generate(num_return_sequences=k) would copy every prompt k times before its forward pass, so a long
    context would be read k times. Here the prompt (but its last token) runs once, its KV cache is repeated k
    times, and generation goes on from there: the same samples for the same seed (the draws are made in the
    same order over the same rows), at 1/k of the prompt's cost. ``static``: the prompt runs whole once and the
    k rows decode from a static cache, their step replayed as a CUDA graph on a GPU (solopo.generation.decoding),
    where the model's generation config adds no logits processor of its own (decoding.plain_decoding); on the
    CPU its samples are generate's."""
    if static and plain_decoding(model):
        new = decode(model, ids, mask, settings.max_new_tokens, sampled_pick(settings.temperature), pad_token_id,
                     end_ids(model), copies=settings.k)
        return torch.cat([ids.repeat_interleave(settings.k, 0), new], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
    # logits_to_keep=1: only the cache is wanted; full logits would take B x L x vocab floats (6 GB at 8 x 4K)
    prefix = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position_ids[:, :-1],
                   use_cache=True, logits_to_keep=1)
    cache = returned_cache(prefix)
    cache.batch_repeat_interleave(settings.k)
    return model.generate(input_ids=ids.repeat_interleave(settings.k, 0),
                          attention_mask=mask.repeat_interleave(settings.k, 0), **{cache_keyword(model): cache},
                          do_sample=True, top_k=0, top_p=1.0, temperature=settings.temperature,
                          max_new_tokens=settings.max_new_tokens, pad_token_id=pad_token_id,
                          use_cache=True)  # training configs turn the cache off


def draw_seed(seed: int, first_prompt: int) -> int:
    """The generator's seed for a batch whose first prompt is ``first_prompt`` (its index in the prompts): a 32-bit
    hash of both (the CPU generator keeps 32 bits of a seed), so batches and seeds draw unrelated streams, where seed
    + batch number was shared by seed s's batch 1 and seed s + 1's batch 0."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{first_prompt}".encode(), digest_size=4).digest(), "little")


def generate(model, tokenizer, prompts: Sequence[str], settings: SamplingSettings, desc: str = "sampling") -> list[list[Sample]]:
    """k sampled continuations of each user message (chat template applied), in the prompts' order; prompts go
    longest first in left-padded batches (solopo.generation.batching.budget_batches). A batch draws from a stream of
    its own, seeded by the run's seed and its first prompt's index (draw_seed), so the samples repeat for the same
    prompts and settings, and no two batches, nor two seeds' batches, share random numbers.

    A batch that runs out of GPU memory is sampled in halves (batching.split_on_oom), each a batch of its own with
    its own stream: the samples repeat for the same splits, but are other draws than the whole batch's, and a split
    depends on the memory other jobs took."""
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    batches = budget_batches([len(e) for e in encoded], max(1, settings.batch_size // settings.k),
                             settings.batch_tokens, settings.max_new_tokens, copies=settings.k)
    static = uses_static_cache(model, settings.static_cache)

    def draw(rows: Sequence[int]) -> list[list[Sample]]:
        ids, mask = left_padded_ids([encoded[i] for i in rows], tokenizer.pad_token_id, device)
        torch.manual_seed(draw_seed(settings.seed, rows[0]))  # whatever a batch (or failed attempt) before it drew
        with torch.no_grad(), autocast(device, settings.precision):
            generated = sample_shared_prefix(model, ids, mask, settings, tokenizer.pad_token_id, static)
        return _samples(tokenizer, generated[:, ids.shape[1]:], settings.k)

    return generate_batches(model, batches, draw, static=static, half=settings.half_weights,
                            precision=settings.precision, desc=desc, copies=settings.k)


def _samples(tokenizer, new: torch.Tensor, k: int) -> list[list[Sample]]:
    """The generated ids of a batch (its prompts' k rows together) as k (text, finished) samples per prompt."""
    texts = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finished = (new == tokenizer.eos_token_id).any(dim=1).tolist()
    rows = list(zip(texts, finished))
    return [rows[i * k : (i + 1) * k] for i in range(len(rows) // k)]


def generate_vllm(model_path: str, tokenizer, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Sample]]:
    """The same samples from a vLLM engine on the weights at ``model_path``; the engine is freed afterwards
    so training gets the GPU memory back."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    params = dict(n=settings.k, temperature=settings.temperature, max_tokens=settings.max_new_tokens, seed=settings.seed)
    outputs = vllm_generate(model_path, texts, params, "data.sampling.engine", seed=settings.seed)
    return [[(c.text.strip(), c.finish_reason == "stop") for c in out.outputs] for out in outputs]


def pick_pair(samples: Sequence[Sample], scores: Sequence[float], rng: random.Random,
              scorer: Scorer = SUB_EM) -> tuple[str, str] | None:
    """A uniformly random correct sample (scorer.correct(score)) as chosen and a uniformly random other one as
    rejected, among the finished, non-empty ones (a response cut at max_new_tokens would teach the model to stop
    mid-sentence); None when no such pair exists (the item gives no pair)."""
    usable = [(text, scorer.correct(score)) for (text, finished), score in zip(samples, scores) if finished and text]
    correct = sorted({text for text, right in usable if right})
    wrong = sorted({text for text, right in usable if not right})
    if not correct or not wrong:
        return None
    return rng.choice(correct), rng.choice(wrong)


def sample_pairs(
    examples: Sequence[PreferenceExample], model, tokenizer, settings: SamplingSettings, context: str,
    model_id: str, cache: DiskCache | None = None, model_path: str | None = None,
) -> tuple[list[PreferenceExample], dict]:
    """Examples whose chosen/rejected are on-policy samples drawn under ``context`` ("short" or "long"),
    and a summary: items in, items kept, share of correct samples, why items were dropped, seconds.
    ``model_path`` (a local directory or hub id of the same weights) is what the vLLM engine loads."""
    started = time.perf_counter()
    prompts = [ex.prompt_short if context == "short" else ex.prompt_long for ex in examples]

    def draw() -> list[list[Sample]]:
        if settings.engine == "vllm":
            return generate_vllm(model_path or model_id, tokenizer, prompts, settings)
        return generate(model, tokenizer, prompts, settings, desc=f"sampling pairs ({context} context)")

    samples = draw() if cache is None else cache.get_or_compute(
        _fingerprint(model_id, settings, prompts), draw, check=lambda payload: read_samples(payload, len(prompts)),
        meta={"model": model_id, "context": context, "settings": settings_identity(settings)},
        desc=f"sampled responses ({context} context)")
    rng = random.Random(settings.seed)
    kept, dropped, scores_all, f1_all = [], {"no_correct": 0, "no_incorrect": 0}, [], []
    for example, item_samples in zip(examples, samples):
        scores = [checked_score(settings.scorer, text, example.answers, "data.sampling.scorer")
                  for text, _ in item_samples]
        scores_all += [float(settings.scorer.correct(score)) for score in scores]
        f1_all += [f1(text, example.answers) for text, _ in item_samples]
        pair = pick_pair(item_samples, scores, rng, settings.scorer)
        if pair is None:
            usable = [settings.scorer.correct(score) for (text, finished), score in zip(item_samples, scores)
                      if finished and text]
            dropped["no_correct" if not any(usable) else "no_incorrect"] += 1
            continue
        kept.append(dataclasses.replace(example, chosen=pair[0], rejected=pair[1]))
    unfinished = sum(not finished for item_samples in samples for _, finished in item_samples)
    summary = {"context": context, "items": len(examples), "kept": len(kept), "dropped": dropped, "k": settings.k,
               "unfinished_samples": unfinished,
               "share_correct": sum(scores_all) / max(len(scores_all), 1), "mean_f1": sum(f1_all) / max(len(f1_all), 1),
               "seconds": time.perf_counter() - started}
    log.info("pairs sampled on the %s context: %d of %d items kept, %.1f%% of samples correct (%s)",
             context, len(kept), len(examples), 100 * summary["share_correct"], type(settings.scorer).__name__)
    return kept, summary


def _fingerprint(model_id: str, settings: SamplingSettings, prompts: Sequence[str]) -> str:
    """The cache key of the samples: the digest of the model, every sampling setting (the scorer by its class and
    parameters: it decides which samples become pairs) and every prompt."""
    return digest("pairs", model_id, settings_identity(settings), *prompts)


def read_samples(payload: list, n_prompts: int) -> list[list[Sample]]:
    """Cached samples as ``generate`` returns them; ValueError/TypeError unless they are ``n_prompts`` lists of
    [text, finished] pairs."""
    samples = [[(text, finished) for text, finished in item] for item in payload]
    if len(samples) != n_prompts or not all(isinstance(t, str) and isinstance(f, bool) for x in samples for t, f in x):
        raise ValueError(f"expected {n_prompts} lists of [text, finished] pairs")
    return samples
