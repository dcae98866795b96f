import copy
import functools
import os
import signal
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

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


def shipped_scorer(key: str):
    """The scorer a shipped config group names (``key``: data.sampling or eval), instantiated."""
    return instantiate(OmegaConf.select(default_config(), f"{key}.scorer"))


@functools.cache
def settings() -> dict:
    """The settings objects tests share, from the shipped config (each built once, on first use)."""
    from solopo.core.objective import Method, SoLoRA
    from solopo.eval.longctx import EvalSettings
    from solopo.generation.sampling import SamplingSettings
    from solopo.models.loading import ModelSpec
    from solopo.training.module import OptimSettings

    return dict(
        LOGP_CHUNK_SIZE=shipped("logp_chunk_size"), SOLOPO=Method(**shipped("method")), RA=SoLoRA(**shipped("ra")),
        OPTIM=OptimSettings(**shipped("optim")),
        # data=qa's sampling; tests vary it with dataclasses.replace
        SAMPLING=SamplingSettings(**{**shipped("data.sampling"), "scorer": shipped_scorer("data.sampling")}),
        # EvalSettings' fields: the eval group's, the run's seed and the data's prompt template.
        EVAL=EvalSettings(**{k: v for k, v in shipped("eval").items() if k not in ("enabled", "n_items", "vllm", "scorer")},
                          scorer=shipped_scorer("eval"), seed=shipped("seed"), template=shipped("data.template")),
        # A 2-layer llama of model=tiny's kind, with shorter positions (the tests' sequences are short), without Liger:
        # the GPU tests compare against the plain model and ask for Liger where they test it (model.liger's default,
        # auto, would patch every model of a GPU with liger-kernel, and transformers' rotary function with them).
        TINY=ModelSpec(**{**shipped("model"), "name": "tiny-random-llama", "tokenizer": "embedded:smollm2-135m-instruct",
                          "liger": False,
                          "random_init": dict(model_type="llama", hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=2048, tie_word_embeddings=True)}))


def __getattr__(name: str):
    """`from conftest import TINY, EVAL, ...`: the settings above, built when a test module first asks. pytest-xdist's
    controller loads this file too, and building them imports torch and transformers (5 s of a 2-core machine)
    before any worker starts; the workers, which run the tests, import them as they collect."""
    if name in ("LOGP_CHUNK_SIZE", "SOLOPO", "RA", "OPTIM", "SAMPLING", "EVAL", "TINY"):
        return settings()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Random shapes at which one memory saver (solopo.models.memory) sets the step's peak: a wide MLP (the recomputed
# layer's intermediate: mlp_chunk_size) and a deep, narrow model (the layers' inputs: offload_activations). As many
# key/value heads as query heads: fp32 attention on CUDA then gets the memory-efficient kernel (grouped heads get SDPA's
# math kernel, whose O(L^2) scores would be the peak); a small vocabulary keeps the LM head's gradients small.
WIDE_MLP = dict(hidden_size=512, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=8, vocab_size=1024, max_position_embeddings=16384)
DEEP = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=16, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=1024, max_position_embeddings=16384)


def parsed_once(load):
    """OmegaConf.load, which keeps what each YAML text read from a file object parses to and returns a copy of it.
    Hydra parses every file of the config tree on each compose (a run in the test process composes four times: the
    command line's checks, Hydra's own, the job), and parsing is about a quarter of a compose's CPU: over the suite's
    thousands of composes, the same few dozen texts. Keyed by the text, so an edited file parses anew; a miss parses
    the file object itself, so a text that fails to parse fails as before, with its file's name in the message. A
    path (product code reading a user's file) is loaded as it was."""
    parsed = {}

    def load_once(file_):
        if isinstance(file_, (str, os.PathLike)):
            return load(file_)
        start = file_.tell()
        text = file_.read()
        if text not in parsed:
            file_.seek(start)
            parsed[text] = load(file_)
        return copy.deepcopy(parsed[text])

    return load_once


OmegaConf.load = staticmethod(parsed_once(OmegaConf.load))

# Tests never write to the user's cache or reach wandb's servers.
os.environ.setdefault("WANDB_MODE", "offline")
# A pytest-xdist worker's share of the cores for torch's threads, in its tests and in the runs they start (set before
# torch loads; a value of the user's wins). Two workers of two threads on two cores took 3x as long
# (tests/test_module.py, test_logps.py, test_batching.py, test_varlen.py: 117 s against 41 s): OpenMP threads spin.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # a worker; the controller, which runs no test, leaves it to them
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


# Collected first. pytest-xdist (setup.cfg: --dist loadscope --no-loadscope-reorder) hands whole modules to the workers
# in collection order, and this one, the longest (about two minutes of a worker), is collected among the last: the
# worker that took it ran on for over a minute after the other had run out of modules.
FIRST = ("test_run.py",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in FIRST)  # a stable sort: the rest keep their order


@pytest.fixture(autouse=True, scope="session")
def torch_threads():
    """At most 2 threads per process: more gain nothing on the tiny models."""
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tokenizer():
    from solopo.models.loading import load_tokenizer

    return load_tokenizer(settings()["TINY"])


@pytest.fixture
def tiny_model(tokenizer):
    from solopo.models.loading import load_model

    return load_model(settings()["TINY"], tokenizer, seed=0)


class SignalReachedTheTest(BaseException):
    """What a signal raises once the run has left it to the process's own handler: the test fails, and lives."""


@pytest.fixture
def foreground_ctrl_c():
    """SIGINT as a terminal's foreground process has it (Python's KeyboardInterrupt) until the test ends: a suite
    started in the background by a shell without job control (`pytest &`, nohup, some CI runners) inherits SIGINT
    ignored, and a Ctrl-C the test sends would reach nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def signal_guard():
    """Until the test ends, SIGTERM and SIGINT that no handler of the run takes fail the test instead of ending the
    test process (SIGTERM's default) or reading as the test's own Ctrl-C."""
    def reached(signum, frame):
        raise SignalReachedTheTest(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, reached) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)
