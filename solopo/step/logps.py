"""Per-sequence log-probs of response tokens only.

A preference loss needs log pi(y|x) = sum_t log p(y_t | x, y_<t): logits only at the
positions that predict a response token. Computing full-vocabulary logits over the
whole (long) context would cost O(L x V) memory for nothing, so the model body runs
once, the hidden states that predict response tokens are gathered, and the LM head
plus log-softmax run over them in chunks. Each chunk is recomputed in backward
(activation checkpointing), so the extra memory is O(chunk x V), whatever L is.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from solopo.step.batch import Group, Key


def response_logps(model: nn.Module, group: Group, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Summed response-token log-probs and response lengths, per sequence of ``group`` (any layout, see
    solopo.step.batch): logps (S,) in at least fp32 and n_tokens (S,), S = len(group.keys) * group.n_pairs,
    log pi(y|x) = sum over the response tokens y_t of log p(y_t | x, y_<t). ``chunk_size`` response tokens at a time
    go through the LM head and log-softmax."""
    hidden = last_hidden_state(model, group)  # (B, L, H)
    states, targets, owner = group.response_predictions(hidden)  # (N, H), (N,), (N,)
    token_logps = chunked_token_logps(states, targets, model.get_output_embeddings(), _softcap(model),
                                     chunk_size=chunk_size)
    n_sequences = len(group.keys) * group.n_pairs
    logps = torch.zeros(n_sequences, dtype=token_logps.dtype, device=token_logps.device).index_add(0, owner, token_logps)
    n_tokens = torch.zeros(n_sequences, dtype=torch.long, device=owner.device).index_add(0, owner, torch.ones_like(owner))
    return group.totals(logps), group.totals(n_tokens)


def group_logps(model: nn.Module, group: Group, chunk_size: int) -> dict[Key, tuple[Tensor, Tensor]]:
    """(logps, n_tokens) per (context, response) block of one collated group, each (n_pairs,)."""
    logps, n_tokens = response_logps(model, group, chunk_size)
    blocks, counts = group.split(logps), group.split(n_tokens)
    return {key: (values, counts[key]) for key, values in blocks.items()}


def last_hidden_state(model: nn.Module, group: Group) -> Tensor:
    """The final (normed) hidden states, from a call of the model itself: FSDP gathers the weights of the root unit
    (embeddings, final norm, LM head) in the root's forward, and a LoRA-wrapped model routes through its adapter
    there. The LM head runs on the last position only (logits_to_keep=1), a (B, V) by-product. The states are the
    decoder's output, taken by a forward hook: output_hidden_states would hold every layer's output until the call
    returns, which model.offload_activations must be free to move off the GPU layer by layer."""
    captured = []
    hook = model.get_decoder().register_forward_hook(lambda module, args, out: captured.append(out[0]))
    try:
        with group.forward_context():
            model(**group.model_inputs(model.config._attn_implementation), logits_to_keep=1, use_cache=False)
    finally:
        hook.remove()
    return captured[-1]


def chunked_token_logps(
    states: Tensor, targets: Tensor, lm_head: nn.Module, softcap: float | None = None, *, chunk_size: int
) -> Tensor:
    """log softmax(lm_head(states))[targets] for (N, H) states and (N,) targets, in chunks; (N,) fp32. No states still
    run the head once, on nothing: a process that holds no response token of a split sequence
    (solopo.step.context_parallel) then still reaches every weight in backward, as the collectives of the backward
    and FSDP's reduction of every weight's gradient need."""
    pieces = []
    for start in range(0, max(states.shape[0], 1), chunk_size):
        args = (states[start : start + chunk_size], targets[start : start + chunk_size], lm_head, softcap)
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_token_logps, *args, use_reentrant=False))
        else:
            pieces.append(_token_logps(*args))
    return torch.cat(pieces)


def _token_logps(states: Tensor, targets: Tensor, lm_head: nn.Module, softcap: float | None) -> Tensor:
    logits = lm_head(states)  # (n, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least fp32: accurate under bf16
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    picked = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    return picked - torch.logsumexp(logits, dim=1)


def _softcap(model: nn.Module) -> float | None:
    # Gemma-2-style models squash the final logits; the plain LM head alone would be wrong for them.
    return getattr(getattr(model, "config", None), "final_logit_softcapping", None)
