"""Where the GPU memory of the offload test's step goes (tests/gpu/test_model_options_gpu.py, the same model, batch and
options): per build (Liger off and on; plain, or with model.offload_activations=true), the memory held between forward
and backward, the forward's and the backward's peaks (MiB above the model) and what the offload was offered. One JSON
line per build.

    python experiments/efficiency/offload_memory.py        # on a CUDA GPU (Liger's builds need liger-kernel)
"""
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "gpu")]
from conftest import DEEP, LOGP_CHUNK_SIZE, TINY, settings  # noqa: E402
import test_model_options_gpu as gpu_test  # noqa: E402
from solopo.models.loading import load_model, load_tokenizer  # noqa: E402
from solopo.step.logps import response_logps  # noqa: E402

MIB = 2**20


def measure(tokenizer, liger: bool, offload: bool) -> dict:
    spec = replace(TINY, gradient_checkpointing=True, random_init={**TINY.random_init, **DEEP}, liger=liger,
                   mlp_chunk_size=1024, offload_activations=offload)
    batch = gpu_test._batch(tokenizer.pad_token_id, long_len=16384, vocab=DEEP["vocab_size"])
    model = load_model(spec, tokenizer, seed=0).to("cuda", torch.float32).train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    logps = torch.cat([response_logps(model, group, LOGP_CHUNK_SIZE)[0] for group in batch.groups.values()])
    torch.cuda.synchronize()
    held, forward_peak = torch.cuda.memory_allocated() - base, torch.cuda.max_memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    (logps * torch.linspace(-1, 1, logps.numel(), device="cuda")).sum().backward()
    torch.cuda.synchronize()
    return dict(liger=liger, offload=offload, held_after_forward=held / MIB, forward_peak=forward_peak / MIB,
                backward_peak=(torch.cuda.max_memory_allocated() - base) / MIB,
                offered=getattr(getattr(model, "solopo_offload", None), "offered_bytes", 0) / MIB,
                attn=model.config._attn_implementation)


def main() -> None:
    tokenizer = load_tokenizer(settings()["TINY"])
    for liger in (False, True):
        for offload in (False, True):
            print(json.dumps(measure(tokenizer, liger, offload)), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
