import functools
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from solopo.core.objective import Method, SoLoRA
from solopo.eval.longctx import EvalSettings
from solopo.generation.sampling import SamplingSettings
from solopo.models.loading import ModelSpec, load_model, load_tokenizer
from solopo.training.module import OptimSettings

ROOT = Path(__file__).resolve().parents[1]


def shipped(key: str) -> dict:
    """What the shipped default config (``python -m solopo.run`` with no overrides) gives ``key``, resolved, Hydra's
    own keys (_target_, _convert_) aside. Each settings default is written once, in its config group; tests that
    need the defaults read them here rather than writing them again."""
    node = OmegaConf.select(default_config(), key)
    if not OmegaConf.is_config(node):
        return node
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}


@functools.cache
def default_config():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "solopo" / "conf"), version_base="1.3"):
        cfg = compose("config")
    GlobalHydra.instance().clear()
    return cfg


LOGP_CHUNK_SIZE = shipped("logp_chunk_size")
SOLOPO, RA, OPTIM = Method(**shipped("method")), SoLoRA(**shipped("ra")), OptimSettings(**shipped("optim"))


def shipped_scorer(key: str):
    """The scorer a shipped config group names (``key``: data.sampling or eval), instantiated."""
    return instantiate(OmegaConf.select(default_config(), f"{key}.scorer"))


# data=qa's sampling; tests vary it with dataclasses.replace
SAMPLING = SamplingSettings(**{**shipped("data.sampling"), "scorer": shipped_scorer("data.sampling")})
# EvalSettings' fields: the eval group's, the run's seed and the data's prompt template.
EVAL = EvalSettings(**{k: v for k, v in shipped("eval").items() if k not in ("enabled", "n_items", "vllm", "scorer")},
                    scorer=shipped_scorer("eval"), seed=shipped("seed"), template=shipped("data.template"))
# A 2-layer llama of model=tiny's kind, with shorter positions (the tests' sequences are short).
TINY = ModelSpec(**{**shipped("model"), "name": "tiny-random-llama", "tokenizer": "embedded:smollm2-135m-instruct",
                    "random_init": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                        tie_word_embeddings=True)})

# Random shapes at which one memory saver (solopo.models.memory) sets the step's peak: a wide MLP (the recomputed
# layer's intermediate: mlp_chunk_size) and a deep, narrow model (the layers' inputs: offload_activations). As many
# key/value heads as query heads: fp32 attention on CUDA then gets the memory-efficient kernel (grouped heads get SDPA's
# math kernel, whose O(L^2) scores would be the peak); a small vocabulary keeps the LM head's gradients small.
WIDE_MLP = dict(hidden_size=512, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=8, vocab_size=1024, max_position_embeddings=16384)
DEEP = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=16, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=1024, max_position_embeddings=16384)

# Tests never write to the user's cache or reach wandb's servers.
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(TINY)


@pytest.fixture
def tiny_model(tokenizer):
    return load_model(TINY, tokenizer, seed=0)
