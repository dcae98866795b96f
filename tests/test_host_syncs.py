"""The training step never waits for the device: no op reads a device value on the host (.item(), bool(), .tolist())
or makes an output whose shape depends on the data (boolean-mask indexing, nonzero), in any layout packing=auto picks.
On a GPU each such op is a host-device synchronisation (torch.cuda.set_sync_debug_mode flags them there); on the CPU a
dispatch mode sees the same ops, so the rule is checked here."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from solopo.core.algos import DPO
from solopo.core.objective import required_sequences
from solopo.data.collate import PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.models.loading import load_model
from solopo.training.faults import NumericalGuard
from solopo.training.module import SoLoPOModule
from solopo.training.step_means import StepMeans
from conftest import LOGP_CHUNK_SIZE, OPTIM, RA, SOLOPO, TINY

aten = torch.ops.aten
READS = (aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default, aten.nonzero.default,
         aten.masked_select.default)


class HostReads(TorchDispatchMode):
    """Records the ops that read device values on the host or size their output by the data."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
            t is not None and t.dtype == torch.bool for t in args[1])
        if func in READS or boolean_index:
            self.ops.append(str(func))
        return func(*args, **kwargs or {})


def pairs():
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(5, 1000, (n,), generator=g).tolist()  # noqa: E731
    ref = {f"{c}/{r}": -5.0 for c in ("short", "long") for r in ("chosen", "rejected")}
    # unequal lengths: padded rows hold pads
    return [TokenizedPair(f"p{i}", {"short": ids(6 + i), "long": ids(30 + 2 * i)},
                          {"chosen": ids(4 + i), "rejected": ids(5 - i)}, ref_logps=ref) for i in range(2)]


@pytest.mark.parametrize("pack", [False, True, "shared_prompt"])
def test_forward_and_backward_read_nothing_back(tokenizer, pack):
    """With the default attention kernel (solopo_varlen): padded rows, packed rows, shared prompts."""
    assert TINY.attn_implementation == "solopo_varlen"
    module = SoLoPOModule(load_model(TINY, tokenizer), DPO(beta=0.1), RA, SOLOPO, cached_reference=True, optim=OPTIM,
                          logp_chunk_size=LOGP_CHUNK_SIZE)
    batch = PairCollator(required_sequences(SOLOPO, RA), tokenizer.pad_token_id, pack=pack)(pairs())
    with HostReads() as reads:
        module.objective(batch).loss.backward()
    assert reads.ops == []


def test_with_a_padding_mask_transformers_would_read_it(tokenizer):
    """The check can fail: given the padding mask, transformers asks whether there is padding."""
    model = load_model(dataclasses.replace(TINY, attn_implementation="sdpa"), tokenizer)
    ids = torch.arange(5, 15).view(2, 5)
    with HostReads() as reads:
        model(input_ids=ids, attention_mask=torch.tensor([[1] * 5, [1] * 3 + [0] * 2]))
    assert "aten._local_scalar_dense.default" in reads.ops


def test_step_means_stay_on_the_device():
    means = StepMeans()
    with HostReads() as reads:
        for loss, finite in ((1.0, True), (float("nan"), False), (3.0, True)):
            means.add({"loss": torch.tensor(loss)}, 2, finite=torch.tensor(finite))
        values, pairs = means.pop()
    assert reads.ops == [] and values["loss"] == 2.0 and pairs == 4
    means.add({"loss": torch.tensor(float("nan"))}, 2, finite=torch.tensor(False))
    values, pairs = means.pop()  # no finite pair: NaN, which the epoch's means leave out
    assert torch.isnan(values["loss"]) and pairs == 0


def test_the_numerical_guard_reads_one_value_per_step():
    """The loss's and the gradients' finiteness, combined on the device, read once."""
    guard = NumericalGuard(max_consecutive=3)
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.ones(3)
    module = SimpleNamespace(device=torch.device("cpu"))
    trainer = SimpleNamespace(precision_plugin=None, global_step=0)
    optimizer = SimpleNamespace(param_groups=[{"params": [weight]}])
    guard.on_before_backward(trainer, module, torch.tensor(0.5))
    with HostReads() as reads:
        guard.on_before_optimizer_step(trainer, module, optimizer)
    assert len(reads.ops) == 1 and weight.grad is not None and guard.consecutive == 0
