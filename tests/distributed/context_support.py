"""The exactness checks of context parallelism, run in each of N spawned processes (gloo on the CPU, NCCL on GPUs):
the SoLoPO objective of one batch, its long sequences split over the N processes (solopo.step.context_parallel),
against the same batch computed whole in the same process. Per-sequence log-probs and the loss must agree, and the
gradients summed over the N processes and divided by N (what FSDP's averaging over a context group gives) must equal
the whole computation's (split_equals_whole); the cached reference's table, computed split, must equal the whole one,
and be stored and read back by the processes together (reference_split_equals_whole). The tests (tests/distributed,
tests/gpu) spawn them, each in a group of its own (check, check_reference) or several in one (checks)."""
import contextlib
import dataclasses
import os
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from solopo.cache import DiskCache
from solopo.core.algos import SimPO
from solopo.core.objective import CHOSEN, LONG, REJECTED, SHORT
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.models.loading import load_model, load_tokenizer, with_lora
from solopo.step.context_parallel import NAME, ContextSplit, Share, padded_length
from solopo.training.module import SoLoPOModule
from solopo.training.reference import compute_reference_logps, key_name, with_reference_logps
from conftest import LOGP_CHUNK_SIZE, OPTIM, RA, SOLOPO, TINY, shipped

KEYS = [(SHORT, CHOSEN), (SHORT, REJECTED), (LONG, CHOSEN), (LONG, REJECTED)]


def pairs() -> list[TokenizedPair]:
    """Three pairs of uneven lengths: the long rows are 806 + 19 = 825 tokens, a multiple of neither 4 nor 8, and the
    responses of the shorter ones end inside earlier chunks than the longest's; the short rows are whole unless
    min_tokens splits them too."""
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(100, 40000, (n,), generator=g).tolist()  # noqa: E731
    return [TokenizedPair(f"p{i}", {SHORT: ids(40 + 7 * i), LONG: ids(700 + 53 * i)},
                          {CHOSEN: ids(9 + 5 * i), REJECTED: ids(20 - 4 * i)}) for i in range(3)]


def module(min_tokens, dtype: str, device, lora: bool = False) -> SoLoPOModule:
    """SoLo-SimPO on the tiny model; with ``lora`` its policy is a LoRA adapter drawn from one seeded generator, the
    same on every process (peft draws A from the process's own generator), and B not the zeros it starts at, so that
    every adapter weight has a gradient."""
    spec = dataclasses.replace(TINY, attn_implementation=NAME, dtype=dtype)
    policy = load_model(spec, load_tokenizer(spec), seed=0)
    if lora:
        policy = with_lora(policy, {"r": 4, "lora_alpha": 8})
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    policy = policy.to(device)
    out = SoLoPOModule(policy, SimPO(**shipped("algo")), RA, SOLOPO, optim=OPTIM, logp_chunk_size=LOGP_CHUNK_SIZE)
    out.context = ContextSplit(size=dist.get_world_size(), min_tokens=min_tokens)
    return out


def objective(model: SoLoPOModule, batch, share):
    """The loss, the per-sequence log-probs, the gradients of one forward and backward, and the row lengths the model
    read."""
    model._share = share
    model.policy.zero_grad()
    lengths = []
    hook = model.policy.get_input_embeddings().register_forward_hook(lambda m, args, out: lengths.append(out.shape[1]))
    try:
        stats = model.sequence_stats(batch)
    finally:
        hook.remove()
    loss = model.objective_of(stats).loss
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.policy.named_parameters() if p.requires_grad}
    return loss.detach(), torch.stack([stats[key].logps.detach() for key in KEYS]), grads, lengths


def start(rank: int, world: int, backend: str, port: int) -> torch.device:
    """Joins the N processes' group; this process's device."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    return device


@contextlib.contextmanager
def joined(rank: int, world: int, backend: str, port: int):
    """This process's device, in the group of the N processes until the block ends."""
    device = start(rank, world, backend, port)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def check(rank: int, world: int, backend: str, min_tokens, dtype: str, tol: float, port: int,
          lora: bool = False) -> None:
    with joined(rank, world, backend, port) as device:
        split_equals_whole(rank, world, device, min_tokens, dtype, tol, lora)


def split_equals_whole(rank: int, world: int, device, min_tokens, dtype: str, tol: float, lora: bool = False) -> None:
    """Log-probs within ``tol`` relative (their sums are ~ -200), the loss within 100 ``tol``, gradients within ``tol``
    absolute (the largest is ~0.4)."""
    model = module(min_tokens, dtype, device, lora)
    batch = PairCollator(KEYS, pad_token_id=0)(pairs()).to(device)
    whole = objective(model, batch, None)
    split = objective(model, batch, Share(dist.group.WORLD, rank, world))
    # the long rows (and with min_tokens=1 the short ones too) were read in shares of 2 of 2N chunks
    expected = [padded_length(n, world) // world if model.context.splits(name, batch.groups[name]) else n
                for name, n in zip(batch.groups, whole[3])]
    assert split[3] == expected and split[3] != whole[3], (split[3], whole[3])
    for grad in split[2].values():  # FSDP averages over the group's processes
        dist.all_reduce(grad)
        grad /= world
    # SimPO divides the logps by short lengths and SoLo-RA subtracts two rewards: the loss keeps less of fp32
    assert torch.allclose(split[0], whole[0], rtol=100 * tol, atol=0), (split[0] - whole[0]).item()
    assert torch.allclose(split[1], whole[1], rtol=tol, atol=0), ((split[1] - whole[1]) / whole[1]).abs().max()
    worst = max((split[2][name] - grad).abs().max().item() for name, grad in whole[2].items())
    assert worst < tol, f"gradients differ by up to {worst}"
    assert min(grad.abs().max().item() for grad in whole[2].values()) > 0  # every weight takes part


def check_reference(rank: int, world: int, backend: str, cache_dir: str, tol: float, port: int) -> None:
    with joined(rank, world, backend, port) as device:
        reference_split_equals_whole(rank, world, device, cache_dir, tol)


def reference_split_equals_whole(rank: int, world: int, device, cache_dir: str, tol: float) -> None:
    """The cached reference's table of the three pairs in one batch, the long rows split over the N processes, against
    the table computed whole: every value within ``tol`` relative. Through the cache: the processes compute it
    together, rank 0 stores it, and a second call reads it back without running the model."""
    model = module(None, "float32", device)
    context, share = model.context, Share(dist.group.WORLD, rank, world)
    args = (model.policy, pairs(), KEYS, 0, LOGP_CHUNK_SIZE)
    lengths = []  # of the rows the model reads
    hook = model.policy.get_input_embeddings().register_forward_hook(lambda m, a, out: lengths.append(out.shape[1]))
    whole = compute_reference_logps(*args, batch_size=3)
    split = compute_reference_logps(*args, batch_size=3, context=context, share=share)
    short, long = lengths[:2]
    assert lengths[2:] == [short, padded_length(long, world) // world], lengths  # the short rows whole, long split
    for pair, values in whole.items():
        for key in KEYS:
            got, expected = split[pair][key_name(key)], values[key_name(key)]
            assert abs(got - expected) <= tol * abs(expected), (pair, key, got, expected)
    cache = DiskCache(Path(cache_dir), "reference")
    cached = with_reference_logps(*args[:3], "tiny", "32-true", 0, cache, LOGP_CHUNK_SIZE, batch_size=3,
                                  context=context, share=share)
    dist.barrier()  # rank 0 has stored the entry
    read = with_reference_logps(*args[:3], "tiny", "32-true", 0, cache, LOGP_CHUNK_SIZE, batch_size=3,
                                context=context, share=share)
    hook.remove()
    assert len(lengths) == 6  # the second call ran nothing
    assert [p.ref_logps for p in read] == [p.ref_logps for p in cached] == [split[p.id] for p in pairs()]


def checks(rank: int, world: int, backend: str, port: int, out_dir: str, cases: dict) -> None:
    """Several checks in one group of N processes, which start, import and join once for all of them: ``cases`` maps a
    name to a check (split_equals_whole, reference_split_equals_whole) and its keyword arguments. Each process writes
    OUT_DIR/NAME.RANK as each check ends: "ok", or the traceback. A check that fails ends its process, as it would
    alone: mp.spawn then stops the others, rather than let them run the next check out of step with it."""
    with joined(rank, world, backend, port) as device:
        for name, (function, kwargs) in cases.items():
            outcome = Path(out_dir) / f"{name}.{rank}"
            try:
                function(rank, world, device, **kwargs)
            except BaseException:
                outcome.write_text(traceback.format_exc())
                raise
            outcome.write_text("ok")
