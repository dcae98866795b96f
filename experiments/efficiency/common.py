"""Shared pieces of the efficiency benchmarks: model shapes, synthetic pairs, FLOP counts, timing, tables."""
from __future__ import annotations

import functools
import gc
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

# Expandable segments keep the caching allocator from fragmenting when the largest activations of a long context
# (GiBs each) are freed and allocated again layer after layer; the studies' jobs run with it too
# (experiments/studies/runner.py).
# Set before torch allocates anything; a value already in the environment is kept, and recorded with each probe.
ALLOC_CONF = os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for a dry run of the scripts
# What a longest-context probe's verdict depends on beyond the model and method: rows measured otherwise are redone.
PROBE = {"alloc_conf": ALLOC_CONF}

CONF = Path(__file__).resolve().parents[2] / "solopo" / "conf"
# The benchmarks' model names and the conf/model presets of their random-weight shapes (random weights cost exactly
# what the real checkpoints cost to run); `tiny` is for dry runs on the CPU.
SHAPE_PRESETS = {"tiny": "tiny", "qwen2.5-1.5b": "qwen2_5_1_5b_shape", "qwen2.5-7b": "qwen2_5_7b_shape"}


def shape_model(name: str) -> dict:
    """The model config fields of a benchmark shape's conf/model preset (one definition for runs and benchmarks:
    where its random weights are drawn among them), its random_init with room for the longest contexts measured here."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        model = compose("config", overrides=[f"model={SHAPE_PRESETS[name]}"]).model
    fields = {k: v for k, v in OmegaConf.to_container(model, resolve=True).items() if not k.startswith("_")}
    shape = fields["random_init"]
    shape.setdefault("vocab_size", 49152)  # the embedded tokenizer's, which load_model gives a shape without one
    return {**fields, "random_init": {**shape, "max_position_embeddings": 1 << 20}}


def shape_fields(name: str) -> dict:
    """The random_init fields of a benchmark shape (shape_model)."""
    return shape_model(name)["random_init"]


@functools.lru_cache(maxsize=None)
def shipped(key: str):
    """The fields the shipped default config (``python -m solopo.run``, no overrides) gives the group ``key``, resolved,
    Hydra's keys aside (or the value of a top-level key): a benchmark's settings start from their one owner, the
    config."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        node = compose("config")[key]
    if not OmegaConf.is_config(node):  # a top-level value (packing)
        return node
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}


@functools.lru_cache(maxsize=None)
def logp_chunk_size() -> int:
    """Response tokens per chunk of LM head + log-softmax, as the runs use it: the config's value (its one owner)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return int(compose("config").logp_chunk_size)


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    q_dim: int
    kv_dim: int
    ffn: int
    vocab: int

    @classmethod
    def of(cls, config) -> "Shape":
        head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads * head,
                   config.num_key_value_heads * head, config.intermediate_size, config.vocab_size)

    def train_flops(self, length: int, response: int, causal: bool = True, n_responses: int = 1) -> float:
        """Useful FLOPs of forward + backward (3x forward) for one causal sequence whose log-prob
        is taken over ``response`` tokens: matmuls of every layer, causal attention, and the LM head
        at the response positions only. Activation recomputation is not useful work and is not counted.
        causal=False counts attention as the dense L x L product, as the GPU notes' baseline does.
        n_responses > 1: that many responses share the prompt's length - response tokens (packing=shared_prompt),
        each attending to the prompt and causally to itself."""
        if n_responses > 1 and not causal:
            raise ValueError("dense attention is counted for one sequence only")
        h, prompt = self.hidden, length - response
        per_token = 2 * (h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h + 3 * h * self.ffn) * self.layers
        # QK^T and AV: 4 L^2 d per layer dense, half of it under the causal mask; with n=1 the causal count is 2 L^2 d
        attention = (2 * prompt * prompt + n_responses * (4 * response * prompt + 2 * response * response)
                     if causal else 4 * length * length) * self.q_dim * self.layers
        head = 2 * h * self.vocab * response * n_responses
        return 3.0 * (per_token * (prompt + n_responses * response) + attention + head)


def random_ids(n: int, generator: torch.Generator, vocab: int = 40000) -> list[int]:
    return torch.randint(100, vocab, (n,), generator=generator).tolist()


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> int:
    """Reset the peak counter; returns the memory allocated now (bytes)."""
    if DEVICE != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def peak() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0


def timed(step: Callable[[], None], warmup: int, steps: int) -> dict:
    """Mean step time after warm-up, with CUDA synchronisation, and the peak memory of the timed steps."""
    for _ in range(warmup):
        step()
    sync()
    reset_peak()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return {"step_s": (time.perf_counter() - start) / steps, "peak_gib": peak() / 2**30}


class StepClock(pl.Callback):
    """Times a Trainer's steps after the warm-up ones, with CUDA synchronisation (peak memory counts from there too),
    and keeps the first step's values of the metrics named in ``first`` (column -> the module's metric key), such as
    the loss and gradient norm, which the module logs as global values."""

    def __init__(self, warmup: int, first: Optional[dict[str, str]] = None):
        self.warmup, self.wanted, self.times, self.first, self._start = warmup, first or {}, [], {}, 0.0

    @property
    def step_s(self) -> float:
        """The mean time of the timed steps."""
        return sum(self.times) / len(self.times)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.cuda.synchronize()
        if batch_idx == self.warmup:
            torch.cuda.reset_peak_memory_stats()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.cuda.synchronize()
        if batch_idx == 0:
            metrics = trainer.callback_metrics
            self.first = {column: float(metrics[key]) for column, key in self.wanted.items()}
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._start)


def covered_seconds(intervals: list[tuple[float, float]]) -> float:
    """The time (microseconds in, seconds out) during which at least one of ``intervals`` runs: kernels that overlap
    (several streams) count once, so the share of a step the GPU is busy never exceeds 1."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total / 1e6


def profiled(step: Callable[[], None]) -> tuple[float, float, int, str]:
    """Wall seconds, seconds during which a GPU kernel ran (overlapping kernels once), host-device synchronisations
    and the top-operation tables of one step."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        sync()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernel_s = covered_seconds([(e.time_range.start, e.time_range.end) for e in prof.events()
                                if e.device_type.name == "CUDA"])
    syncs = sum(e.count for e in events if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::item",
                                                     "aten::_local_scalar_dense"))
    tables = events.table(sort_by="self_cpu_time_total", row_limit=12)
    if DEVICE == "cuda":
        tables += "\n" + events.table(sort_by="self_device_time_total", row_limit=12)
    return wall, kernel_s, syncs, tables


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def release() -> None:
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def environment() -> dict:
    try:
        # "-dirty" when the tree differs from the commit (e.g. a copy whose .git lags behind its files);
        # SOLOPO_COMMIT names the commit when the caller knows better.
        commit = os.environ.get("SOLOPO_COMMIT") or subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True, text=True,
            cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit or "unknown", "cuda_alloc_conf": ALLOC_CONF}


def previous_rows(out: Path, name: str, resume: bool) -> list[dict]:
    """With --resume, the rows an earlier (cut short) run of the same table wrote, minus its errors, so that the
    same command continues across GPU calls; otherwise none."""
    path = out / f"{name}.json"
    if not resume or not path.exists():
        return []
    table = json.loads(path.read_text())
    # Each row keeps the commit and the GPU that measured it: a table continued over calls may span commits, not GPUs
    rows = [{**row, **{key: row.get(key, table["meta"].get(key)) for key in ("commit", "gpu")}} for row in table["rows"]
            if not str(row.get("status", "ok")).startswith("error")]
    here = environment()["gpu"]
    if elsewhere := sorted({str(row["gpu"]) for row in rows if row["gpu"] != here}):
        sys.exit(f"{path}: measured on {', '.join(elsewhere)}, this is {here}: --resume would mix GPUs in one table "
                 "(its ratios compare rows); resume on that GPU, or give another --out")
    return rows


def matching(rows: list[dict], **key) -> list[dict]:
    """The rows of one cell: those with these values of ``key``."""
    return [row for row in rows if all(row.get(k) == v for k, v in key.items())]


def has_row(rows: list[dict], **key) -> bool:
    return bool(matching(rows, **key))


def put_row(rows: list[dict], row: dict, *key: str) -> None:
    """Append ``row``, dropping an earlier row of the same cell (the same values of ``key``): a probe redone."""
    rows[:] = [r for r in rows if any(r.get(k) != row[k] for k in key)]
    rows.append(row)


def write_table(out: Path, name: str, rows: list[dict], columns: list[str], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row.setdefault("commit", meta.get("commit"))  # measured now, here
        row.setdefault("gpu", meta.get("gpu"))
    path = out / f"{name}.json"
    if path.exists() and json.loads(path.read_text()).get("rows") == json.loads(json.dumps(rows)):
        return  # nothing new: the header keeps naming the call that last changed the rows
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    columns = [*columns, "commit"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    header = [f"# {name}", "", f"command: `{meta.get('command', '')}`", f"last call: commit {meta.get('commit')}, "
              f"{meta.get('gpu')}, torch {meta.get('torch')}; each row names the commit that measured it", ""]
    (out / f"{name}.md").write_text("\n".join(header + lines) + "\n")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
