"""Per-sequence log-probs of response tokens only.

A preference loss needs log pi(y|x) = sum_t log p(y_t | x, y_<t): logits only at the
positions that predict a response token. Computing full-vocabulary logits over the
whole (long) context would cost O(L x V) memory for nothing, so the model body runs
once, the hidden states that predict response tokens are gathered, and the LM head
plus log-softmax run over them in chunks. Each chunk is recomputed in backward
(activation checkpointing), so the extra memory is O(chunk x V), whatever L is.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from solopo.step import shared_prompt, varlen


def response_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor],
    response_mask: Tensor,
    chunk_size: int = 1024,
    position_ids: Optional[Tensor] = None,
    sequence_ids: Optional[Tensor] = None,
    cu_seq_lens: Optional[Tensor] = None,
    max_length: Optional[int] = None,
    segment_ids: Optional[Tensor] = None,
    branch_ids: Optional[Tensor] = None,
    predict_from: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Summed response-token log-probs and response lengths, per sequence.

    Padded rows: input_ids, attention_mask, response_mask are (B, L), one sequence per row,
    right-padded (pads carry attention_mask 0). Packed rows: attention_mask is None and
    position_ids / sequence_ids (B, L) give each token's position in its sequence and the
    sequence's index (sequences are numbered 0..S-1 across the batch); cu_seq_lens (S + 1,) and max_length, the
    sequence boundaries, let varlen attention kernels skip deriving them.
    Packed rows with shared prompts also carry segment_ids / branch_ids (the attention mask's
    inputs, solopo.step.shared_prompt) and predict_from, the position whose hidden state predicts each token.
    response_mask is True at the positions of response tokens. Returns logps (S,) in at
    least fp32 and n_tokens (S,), where S = B for padded rows.
    """
    if segment_ids is not None:  # shared prompts: the row's mask comes from its segment and branch ids
        attention_mask = shared_prompt.attention_mask(model.config._attn_implementation, segment_ids, branch_ids)
    hidden = last_hidden_state(model, input_ids, attention_mask, position_ids, cu_seq_lens, max_length)  # (B, L, H)
    if sequence_ids is None:  # padded rows: one sequence per row, counted without a device sync
        n_sequences = input_ids.shape[0]
        sequence_ids = torch.arange(n_sequences, device=input_ids.device).unsqueeze(1).expand_as(input_ids)
    else:
        n_sequences = int(sequence_ids.max()) + 1
    if predict_from is None:  # token t is predicted by the hidden state at t-1
        target_mask = response_mask[:, 1:].bool()
        states = hidden[:, :-1][target_mask]  # (N, H)
        owner, targets = sequence_ids[:, 1:][target_mask], input_ids[:, 1:][target_mask]  # (N,) each
    else:  # one packed row whose collator named each token's predicting position (not always the previous one)
        target_mask = response_mask.bool()
        states = hidden[0][predict_from[target_mask]]
        owner, targets = sequence_ids[target_mask], input_ids[target_mask]
    token_logps = chunked_token_logps(states, targets, model.get_output_embeddings(), _softcap(model), chunk_size)
    logps = torch.zeros(n_sequences, dtype=token_logps.dtype, device=token_logps.device).index_add(0, owner, token_logps)
    n_tokens = torch.zeros(n_sequences, dtype=torch.long, device=owner.device).index_add(0, owner, torch.ones_like(owner))
    return logps, n_tokens


def group_logps(model: nn.Module, group: dict, chunk_size: int = 1024) -> dict[tuple[str, str], tuple[Tensor, Tensor]]:
    """(logps, n_tokens) per (context, response) block of one collated group (see solopo.data.collate)."""
    inputs = {k: group.get(k) for k in ("input_ids", "attention_mask", "response_mask", "position_ids", "sequence_ids",
                                        "cu_seq_lens", "max_length", "segment_ids", "branch_ids", "predict_from")}
    logps, n_tokens = response_logps(model, **inputs, chunk_size=chunk_size)
    size = logps.shape[0] // len(group["keys"])  # one sequence per pair in each block
    return {tuple(key): (logps[i * size : (i + 1) * size], n_tokens[i * size : (i + 1) * size])
            for i, key in enumerate(group["keys"])}


def last_hidden_state(model: nn.Module, input_ids: Tensor, attention_mask: Optional[Tensor],
                      position_ids: Optional[Tensor], cu_seq_lens: Optional[Tensor] = None,
                      max_length: Optional[int] = None) -> Tensor:
    """The final (normed) hidden states, from a call of the model itself: FSDP gathers the weights of the root unit
    (embeddings, final norm, LM head) in the root's forward, and a LoRA-wrapped model routes through its adapter
    there. The LM head runs on the last position only (logits_to_keep=1), a (B, V) by-product."""
    # transformers hands cu_seq_lens_* / max_length_* to the attention function (its flash-attention kwargs).
    kwargs = {} if cu_seq_lens is None else dict(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens,
                                                  max_length_q=max_length, max_length_k=max_length)
    with varlen.packed_forward() if cu_seq_lens is not None else contextlib.nullcontext():
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    output_hidden_states=True, logits_to_keep=1, use_cache=False, **kwargs)
    return out.hidden_states[-1]


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
