"""Decoding from a static KV cache, its one-token step replayed as a CUDA graph.

Decoding a small model is bound by the host, not the GPU: each step launches some twenty kernels in every layer
(thirty layers in SmolLM2-135M), and transformers' generate adds its stopping checks, each a synchronisation.
The profile of 96 prompts of 4K tokens on an H100 (experiments/sampling/results/profile_w1_grouped.txt) had the GPU
busy 45% of the time, the decoding steps far less than the prefill. transformers' own remedy (a static cache whose
step it compiles) failed to trace there. This module captures the step instead:

    prefill (one forward pass, a dynamic cache)  ->  copied into a StaticCache of L + new positions
    step:   mask[:, col] = 1;  logits = model(token, position, mask, cache);  token = pick(logits)
            out[:, i] = token (pad once a row has ended);  position += 1;  col += 1;  i += 1

Every tensor the step reads or writes stays at one address (the cache's layers update in place, the step's inputs
are buffers the step itself advances), so on a GPU the step is captured once per batch as a CUDA graph and replayed
with one launch; the host looks at whether every row has ended only every CHECK_EVERY steps. Where capture fails
(a model whose forward synchronises), the same step runs eagerly, with one line in the log.

What it computes is what generate computes: the argmax of the last logits (greedy) or a draw from their softmax at
a temperature (sampling, no top-k or top-p), the pad token after a row's end of turn, the same positions for
left-padded rows, and attention over the cache's written positions only (a 4D mask, so SDPA attends). On the CPU
there is no graph and the loop gives generate's tokens (tests/test_decoding.py).
"""
from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)
CAPTURE = True  # False: the step runs eagerly on a GPU too (experiments/sampling/speed.py's static_eager path)
CHECK_EVERY = 8  # steps between looks at whether every row has ended (each look is a synchronisation)
Pick = Callable[[torch.Tensor], torch.Tensor]  # last logits (B, vocab) -> next token ids (B,)
# generation-config fields whose logits processors generate would apply and the loop here does not
PROCESSORS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
              "encoder_no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "suppress_tokens",
              "begin_suppress_tokens", "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id",
              "exponential_decay_length_penalty", "renormalize_logits", "min_p", "typical_p", "epsilon_cutoff",
              "eta_cutoff", "watermarking_config")


def greedy_pick(logits: torch.Tensor) -> torch.Tensor:
    """generate's greedy choice: the argmax, over fp32 logits."""
    return logits.float().argmax(dim=-1)


def sampled_pick(temperature: float) -> Pick:
    """generate's sampling without top-k or top-p: one draw from softmax(logits / temperature) in fp32."""
    def pick(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1)
    return pick


def plain_decoding(model) -> bool:
    """Whether generate would compute what this loop computes: tokens from the bare logits (no processor from the
    model's generation config) and every layer attending to the whole cache (no sliding window, which the loop's one
    mask would not apply); where not, one line in the log, and callers generate as generate does."""
    from transformers import GenerationConfig

    config, default = model.generation_config, GenerationConfig()
    changed = [name for name in PROCESSORS if getattr(config, name, None) != getattr(default, name, None)]
    if not full_attention(model.config):
        changed.append("sliding-window attention")
    if changed:
        say_processors(tuple(changed))
    return not changed


def full_attention(config) -> bool:
    """Whether every layer of a model of this config attends to all earlier positions."""
    kinds = getattr(config, "layer_types", None)
    if kinds is not None:
        return all(kind == "full_attention" for kind in kinds)
    return not getattr(config, "sliding_window", None) or getattr(config, "use_sliding_window", True) is False


def end_ids(model) -> list[int]:
    """The token ids that end a row, as generate reads them: the model's generation config's eos_token_id."""
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def cache_keyword(model) -> str:
    """The forward's name for the KV cache: later transformers 5 releases say `cache`, earlier ones (and wrappers
    such as peft's) `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output):
    """The KV cache a forward returned: later transformers 5 releases name it `cache`, earlier ones
    `past_key_values`."""
    cache = getattr(output, "cache", None)
    return output.past_key_values if cache is None else cache


def static_copy(model, cache, copies: int, max_cache_len: int):
    """A StaticCache of ``max_cache_len`` positions holding ``cache`` (a DynamicCache of a prompt batch's prefill)
    with each row repeated ``copies`` times in place; each dynamic layer is let go once copied."""
    from transformers import StaticCache

    static = StaticCache(config=model.config, max_cache_len=max_cache_len)
    for source, target in zip(cache.layers, static.layers):
        target.update(source.keys.repeat_interleave(copies, 0), source.values.repeat_interleave(copies, 0))
        source.keys = source.values = None
    return static


@dataclass
class Decoder:
    """One batch's decoding state: the static cache and the step's buffers (see the module's docstring)."""

    model: torch.nn.Module
    cache: object
    keyword: str  # the forward's name for the cache (cache_keyword)
    pick: Pick
    token: torch.Tensor  # (B, 1) the token the next step feeds
    position: torch.Tensor  # (B, 1) its position (left padding: real tokens counted only)
    mask: torch.Tensor  # (B, 1, 1, width) bool: the cache positions a step attends to
    column: torch.Tensor  # (1,) the cache position the next step writes
    index: torch.Tensor  # (1,) the output column the next step writes
    out: torch.Tensor  # (B, new) generated ids, pad after a row's end
    ended: torch.Tensor  # (B,) bool
    eos: torch.Tensor  # end-of-turn ids
    pad: int

    def step(self) -> None:
        self.mask.index_fill_(3, self.column, True)
        logits = self.model(input_ids=self.token, attention_mask=self.mask, position_ids=self.position,
                            use_cache=True, **{self.keyword: self.cache}).logits[:, -1]
        self.advance(self.pick(logits))

    def advance(self, chosen: torch.Tensor) -> None:
        chosen = torch.where(self.ended, torch.full_like(chosen, self.pad), chosen)
        self.out.index_copy_(1, self.index, chosen[:, None])
        self.ended |= torch.isin(chosen, self.eos)
        self.token.copy_(chosen[:, None])
        self.position.add_(1)
        self.column.add_(1)
        self.index.add_(1)


def decode(model, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, pick: Pick, pad: int, eos: list[int],
           copies: int = 1, graph: bool | None = None) -> torch.Tensor:
    """(B x copies, new_tokens) ids continuing the left-padded prompts ``ids`` (each prompt's ``copies`` rows
    together, after one prefill), chosen by ``pick``; ``graph`` (by default: on a GPU) replays the step as a CUDA
    graph. The columns after a row's end are pad, those after every row's end may be left so."""
    decoder = prefill(model, ids, mask, new_tokens, pick, pad, eos, copies)
    steps, run = new_tokens - 1, decoder.step
    if steps and (ids.device.type == "cuda" and CAPTURE if graph is None else graph):
        run, steps = captured(decoder), steps - 1  # capture runs one step eagerly first
    for i in range(steps):
        if i % CHECK_EVERY == 0 and bool(decoder.ended.all()):
            break
        run()
    return decoder.out


def prefill(model, ids, mask, new_tokens: int, pick: Pick, pad: int, eos: list[int], copies: int) -> Decoder:
    """The prompts' forward pass, its cache copied into a static one of L + new positions (each row ``copies``
    times), and the first token chosen: a Decoder ready for the second step."""
    rows, length, device = ids.shape[0] * copies, ids.shape[1], ids.device
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    first = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
    cache = static_copy(model, returned_cache(first), copies, length + new_tokens)
    logits = first.logits[:, -1].repeat_interleave(copies, 0)
    del first  # the dynamic cache goes: the static one holds its keys and values
    seen = torch.zeros(rows, 1, 1, length + new_tokens, dtype=torch.bool, device=device)
    seen[:, 0, 0, :length] = mask.repeat_interleave(copies, 0).bool()
    # position and column of the prompt's last token: advance() moves both to the first new token's
    decoder = Decoder(model=model, cache=cache, keyword=cache_keyword(model), pick=pick, token=ids.new_zeros(rows, 1),
                      position=position[:, -1:].repeat_interleave(copies, 0).clone(), mask=seen,
                      column=torch.tensor([length - 1], device=device), index=torch.tensor([0], device=device),
                      out=ids.new_full((rows, new_tokens), pad),
                      ended=torch.zeros(rows, dtype=torch.bool, device=device),
                      eos=torch.tensor(eos, device=device), pad=pad)
    decoder.advance(pick(logits))
    return decoder


def captured(decoder: Decoder) -> Callable[[], None]:
    """``decoder.step`` as a CUDA graph's replay: one eager step first (on a side stream, as capture wants: it
    allocates the kernels' workspaces and runs any first-call set-up), then the capture of the next; where capture
    fails, the eager step, with one line in the log."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        decoder.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # autocast's cache of cast weights lives outside the graph's memory: capture wants it off
    uncached = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                              enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)
    try:
        with torch.cuda.graph(graph), uncached:
            decoder.step()
    except torch.OutOfMemoryError:
        raise  # the batch goes in halves (solopo.generation.batching.split_on_oom)
    except RuntimeError as error:  # a forward that synchronises or allocates outside the graph's pool
        warn_eager(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        return decoder.step
    return graph.replay


@functools.cache
def warn_eager(reason: str) -> None:
    """Once per reason and process: the decoding step runs without a graph."""
    log.warning("decoding step not captured as a CUDA graph (%s): it runs eagerly, as fast as the host allows",
                reason)


@functools.cache
def say_processors(names: tuple[str, ...]) -> None:
    """Once per process and set of reasons: why the static path generates as generate does."""
    log.info("the model has %s, which the static cache's graphed step does not apply: it generates through "
             "transformers' generate", ", ".join(names))
