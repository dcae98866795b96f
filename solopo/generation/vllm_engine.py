"""Generation with vLLM, shared by pair sampling and evaluation.

vLLM is an optional GPU package: it is imported only when an engine setting asks for it, and its absence
is reported in one line naming that setting. An engine lives for one batch of prompts and is freed
afterwards, so training gets the GPU memory back.
"""
from __future__ import annotations

import gc
import tempfile
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

ENGINES = ("transformers", "vllm")  # generation engines: the model in memory, or vLLM on its weights


def import_vllm(setting: str):
    """The vllm module; ``setting`` (e.g. "eval.engine") names what asked for it in the error."""
    try:
        import vllm
    except ImportError as err:
        raise RuntimeError(f"{setting}=vllm but vllm is not installed (pip install vllm)") from err
    return vllm


def vllm_generate(model_path: str, prompts: Sequence, params: dict, setting: str, seed: int = 0,
                  **engine_args) -> list:
    """vLLM's RequestOutputs for ``prompts`` (texts, or {"prompt_token_ids": [...]} dicts) from an engine on the
    weights at ``model_path``; ``params`` are SamplingParams fields, ``engine_args`` further vllm.LLM arguments."""
    vllm = import_vllm(setting)
    engine = vllm.LLM(model=model_path, seed=seed, **engine_args)
    try:
        return engine.generate(list(prompts), vllm.SamplingParams(**params))
    finally:
        del engine
        gc.collect()  # the engine holds the GPU memory until it is collected
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@contextmanager
def saved_weights(model, tokenizer) -> Iterator[str]:
    """The model in memory as a directory vLLM can load, removed afterwards: trained weights exist nowhere
    else (a Lightning checkpoint is not a model directory). Written under TMPDIR."""
    with tempfile.TemporaryDirectory(prefix="solopo-vllm-") as path:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        yield path
