"""The collated batch: typed groups that know their layout, their pairs and tokens, and move as a whole."""
import os
import subprocess
import sys
import warnings

import pytest
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

from solopo.data.collate import SHARED_PROMPT, PairCollator
from solopo.data.tokenize import TokenizedPair
from solopo.step.batch import PackedGroup, PaddedGroup, SharedPromptGroup
from solopo.training.module import intended_warnings_silenced

from conftest import ROOT

KEYS = [("short", "chosen"), ("short", "rejected"), ("long", "chosen")]
LAYOUTS = {False: PaddedGroup, True: PackedGroup, SHARED_PROMPT: SharedPromptGroup}


def pairs():
    """Two pairs: prompts short 3 / 5 and long 8 / 9 tokens, chosen 2 / 4 and rejected 3 / 1 tokens."""
    ids = lambda n, start: list(range(start, start + n))  # noqa: E731
    ref = lambda base: {f"{c}/{r}": base + i for i, (c, r) in enumerate(KEYS)}  # noqa: E731
    return [TokenizedPair("p0", {"short": ids(3, 10), "long": ids(8, 20)},
                          {"chosen": ids(2, 40), "rejected": ids(3, 50)}, ref_logps=ref(-10.0)),
            TokenizedPair("p1", {"short": ids(5, 60), "long": ids(9, 70)},
                          {"chosen": ids(4, 90), "rejected": ids(1, 99)}, ref_logps=ref(-20.0))]


@pytest.mark.parametrize("pack", list(LAYOUTS))
def test_each_layout_counts_its_pairs_and_real_tokens(pack):
    """Real tokens: short/chosen (3+2) + (5+4), short/rejected (3+3) + (5+1), long/chosen (8+2) + (9+4) = 49 with a
    prompt per sequence; a shared prompt goes in once per pair and context: 49 - (3 + 5) = 41."""
    batch = PairCollator(KEYS, pad_token_id=0, pack=pack)(pairs())
    assert all(type(group) is LAYOUTS[pack] for group in batch.groups.values())
    assert batch.n_pairs == 2
    assert batch.n_tokens == (41 if pack == SHARED_PROMPT else 49)
    if not pack:  # padding is not counted: the long rows are padded to 13 tokens, the short ones to 9
        assert sum(group.input_ids.numel() for group in batch.groups.values()) == 2 * 13 + 4 * 9


@pytest.mark.parametrize("pack", list(LAYOUTS))
def test_split_cuts_per_sequence_values_into_key_blocks(pack):
    """Sequence i * n_pairs + j is pair j's sequence of keys[i]: the reference log-probs come back per key and pair."""
    blocks = {}
    for group in PairCollator(KEYS, pad_token_id=0, pack=pack)(pairs()).groups.values():
        blocks.update(group.split(group.ref_logps))
    assert {key: values.tolist() for key, values in blocks.items()} == {
        ("short", "chosen"): [-10.0, -20.0], ("short", "rejected"): [-9.0, -19.0], ("long", "chosen"): [-8.0, -18.0]}


@pytest.mark.parametrize("pack", list(LAYOUTS))
def test_lightning_moves_every_tensor_of_the_batch(pack):
    """Lightning moves a batch with its ``to``: every tensor field of every group (the reference log-probs and the
    varlen boundaries too) lands on the device; counts and keys stay as they are."""
    batch = PairCollator(KEYS, pad_token_id=0, pack=pack)(pairs())
    moved = move_data_to_device(batch, torch.device("meta"))
    for name, group in moved.groups.items():
        original = batch.groups[name]
        tensors = {field: value for field, value in vars(group).items() if torch.is_tensor(value)}
        assert "input_ids" in tensors and "ref_logps" in tensors
        assert all(value.is_meta for value in tensors.values())
        assert all(not value.is_meta for value in vars(original).values() if torch.is_tensor(value))
        assert (group.keys, group.n_pairs, group.n_tokens) == (original.keys, original.n_pairs, original.n_tokens)


def test_without_reference_logps_a_group_carries_none():
    plain = [TokenizedPair(p.id, p.prompts, p.responses) for p in pairs()]
    assert all(group.ref_logps is None for group in PairCollator(KEYS, pad_token_id=0)(plain).groups.values())


def test_the_modules_intended_warnings_are_silenced_around_a_fit_only():
    """Lightning's warnings about what SoLoPOModule does on purpose (a frozen reference in eval mode, training metrics
    reduced before they are logged) are left out within intended_warnings_silenced(), and importing the module
    changes no process-wide filter."""
    check = ("import warnings, pytorch_lightning, solopo.step.logps, solopo.training.distributed, "
             "solopo.training.precision, solopo.training.step_means; before = list(warnings.filters); "
             "import solopo.training.module; assert warnings.filters == before, warnings.filters[:3]")
    done = subprocess.run([sys.executable, "-c", check], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with intended_warnings_silenced():
            warnings.warn("Found 2 module(s) in eval mode at the start of training. This may lead to ...")
            warnings.warn("It is recommended to use `self.log('train/loss', ..., sync_dist=True)` when ...")
            warnings.warn("It is recommended to use `self.log('val/loss', ..., sync_dist=True)` when ...")
        warnings.warn("Found 2 module(s) in eval mode at the start of training. This may lead to ...")
    assert [str(w.message)[:45] for w in caught] == ["It is recommended to use `self.log('val/loss'",
                                                     "Found 2 module(s) in eval mode at the start o"]
