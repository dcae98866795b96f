"""`packing=auto`: the layout of each step, chosen from what the step holds and what the machine runs fast.

Three exact layouts (solopo.step.batch): padded rows (one forward per context), one packed row (one forward per
step, no padding) and a packed row with shared prompts (each context once per pair, before all of its responses).
They give the same log-probs and gradients (tests/test_logps.py on the CPU, tests/gpu/test_packed_kernels.py on the
GPU); they differ in speed, and which is fastest depends on the step. The rules come from the H200 tables of
experiments/efficiency/results (Qwen2.5-1.5B shape, DPO, short context 1K, one pair per step):

1. **Shared prompt** where the step's longest sequence belongs to a context read by two or more responses (Long-PO,
   SoLoPO both-responses) and is at least ``share_from`` tokens long: the long prompt then goes through the model
   once instead of once per response. `solopo_grid_shared`, rows long_po padded / shared-flex: 8K 0.504 / 0.353 s,
   16K 1.16 / 0.798 s, 32K 3.01 / 2.16 s, 64K 9.03 / 6.72 s; SoLoPO both-responses 8K 0.709 / 0.388 s ... 64K 9.14 / 5.87 s.
   Below 8K it was not measured, and at 4K Long-PO's padded step is already the fastest layout measured
   (`solopo_grid_packing`: 0.252 s against 0.281 s packed-varlen and 0.303 s packed-flex).
2. **Packed** where the step holds sequences of two or more contexts (padded rows would run one forward each) and
   its longest sequence is shorter than ``pack_below`` tokens: one forward instead of two, whose per-forward host
   cost dominates short steps. `solopo_grid_packing`, rows solopo padded / packed-varlen / packed-flex: 4K 0.467 /
   0.296 / 0.260 s, 8K 0.470 / 0.371 / 0.394 s; at 16K 0.809 / 0.799 / 0.811 s, a tie, and at 32K 1.77 / 2.13 /
   2.16 s, where SDPA's flash kernel on padded rows wins.
3. **Padded** otherwise, and always on the CPU: there flex attention has no backward and the varlen kernel runs one
   SDPA call per sequence, so padded rows (one batched call per context) are the exact layout with the fewest calls.

A layout is chosen only where the model's attention kernel runs it (``KERNEL_LAYOUTS``): `solopo_varlen` (the
default) runs all three, padded rows through SDPA, packed rows and shared prompts through torch's varlen kernel (a
shared prompt's keys gathered again for its second response: solopo.step.shared_prompt.varlen_runs), on the CPU one
sequence at a time through SDPA. Rule 1's rows measured shared prompts through flex attention, whose kernel is the
slower one on long rows (234-279 TFLOP/s against SDPA's flash kernel's 323 at 32K), so the threshold is conservative
for the varlen kernel until its own rows are measured (`bench.py --variants shared-varlen`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

PADDED, PACKED, SHARED_PROMPT = False, True, "shared_prompt"  # PairCollator's ``pack`` values
AUTO = "auto"
Layout = Union[bool, str]
NAMES = {PADDED: "padded", PACKED: "packed", SHARED_PROMPT: "shared_prompt"}

# Which layouts each attention kernel runs exactly, and fast enough to be chosen: sdpa and eager take packed rows only
# through a dense T x T mask (transformers builds one from the restarting positions; shared_prompt.attention_mask
# builds one for shared prompts), so auto leaves them padded; flex attention runs padded rows through its own kernel,
# which the tables did not measure against SDPA's, so only its packed layouts are chosen above padded.
KERNEL_LAYOUTS = {
    "solopo_varlen": (PADDED, PACKED, SHARED_PROMPT),
    "flex_attention": (PADDED, PACKED, SHARED_PROMPT),
    "flash_attention_2": (PADDED, PACKED),
    "flash_attention_3": (PADDED, PACKED),
    "sdpa": (PADDED,),
    "eager": (PADDED,),
}


@dataclass(frozen=True)
class LayoutRules:
    """The thresholds of the rules above, in tokens of the step's longest sequence; the defaults are the tables'."""

    share_from: int = 8192  # shared prompts from here (measured from 8K; Long-PO at 4K is fastest padded)
    pack_below: int = 16384  # packed rows below here (a tie with padded at 16K, slower at 32K)


def choose_layout(responses_per_context: Mapping[str, int], longest: Mapping[str, int], device: str, kernel: str,
                  rules: LayoutRules = LayoutRules()) -> Layout:
    """The layout of one step (PairCollator's ``pack``): ``responses_per_context`` counts the responses the step reads
    under each context ({"short": 2, "long": 1} for SoLoPO chosen-only), ``longest`` the tokens of each context's
    longest sequence (prompt + response) in the step, ``device`` "cuda" or "cpu", ``kernel`` the model's
    attn_implementation. Pure: the rules of the module docstring, in order."""
    runs = KERNEL_LAYOUTS.get(kernel, (PADDED,))
    if device != "cuda" or not longest:
        return PADDED
    context, length = max(longest.items(), key=lambda item: item[1])
    if SHARED_PROMPT in runs and responses_per_context.get(context, 0) >= 2 and length >= rules.share_from:
        return SHARED_PROMPT
    if PACKED in runs and len(longest) >= 2 and length < rules.pack_below:
        return PACKED
    return PADDED


def describe(layout: Layout, longest: Mapping[str, int]) -> str:
    """One line for the log: the layout and the lengths it was chosen for."""
    lengths = ", ".join(f"{context} {n} tokens" for context, n in longest.items())
    return f"packing=auto: {NAMES[layout]} rows (longest sequence per context: {lengths})"
