import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from solopo.models.loading import ModelSpec, load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# The runs' log-prob chunk size, read from its one owner (the config) rather than written again here.
LOGP_CHUNK_SIZE = OmegaConf.load(ROOT / "solopo" / "conf" / "config.yaml").logp_chunk_size
TINY = ModelSpec(
    name="tiny-random-llama",
    tokenizer="embedded:smollm2-135m-instruct",
    random_init=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                     tie_word_embeddings=True),
)

# Tests never write to the user's cache or reach wandb's servers.
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(TINY)


@pytest.fixture
def tiny_model(tokenizer):
    return load_model(TINY, tokenizer, seed=0)
