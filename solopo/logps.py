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


def response_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Summed response-token log-probs and response lengths.

    input_ids, attention_mask, response_mask: (B, L); response_mask is True at the
    positions of response tokens (right padding: pads carry attention_mask 0).
    Returns logps (B,) in at least fp32 and n_tokens (B,).
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
    target_mask = response_mask[:, 1:].bool()  # token t is predicted by the hidden state at t-1
    batch_index = target_mask.nonzero(as_tuple=True)[0]  # (N,)
    states = hidden[:, :-1][target_mask]  # (N, H)
    targets = input_ids[:, 1:][target_mask]  # (N,)
    token_logps = chunked_token_logps(states, targets, model.get_output_embeddings(), _softcap(model), chunk_size)
    logps = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    logps = logps.index_add(0, batch_index, token_logps)
    return logps, target_mask.sum(dim=1)


def chunked_token_logps(
    states: Tensor, targets: Tensor, lm_head: nn.Module, softcap: float | None = None, chunk_size: int = 1024
) -> Tensor:
    """log softmax(lm_head(states))[targets] for (N, H) states and (N,) targets, in chunks; (N,) fp32."""
    pieces = []
    for start in range(0, states.shape[0], chunk_size):
        args = (states[start : start + chunk_size], targets[start : start + chunk_size], lm_head, softcap)
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_token_logps, *args, use_reentrant=False))
        else:
            pieces.append(_token_logps(*args))
    if not pieces:
        return states.new_zeros(0, dtype=torch.float32)
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
