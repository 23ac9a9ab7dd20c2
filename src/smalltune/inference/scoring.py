"""Choice scoring: the summed log-probability of each candidate completion right after its prompt.

Inference answers a classify record with its likeliest choice (`TransformersEngine._score`); training with
`train.loss: choices` minimises the cross-entropy of the gold choice among the same scores. Both call
`choice_log_probs`, which is differentiable, so training optimises exactly what inference answers with.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from smalltune.errors import ModelError


def choice_log_probs(model: PreTrainedModel, prompts: list[list[int]], choices: list[list[list[int]]],
                     pad_id: int) -> torch.Tensor:
    """Summed log-probabilities of each prompt's choices (token ids), flat in order, from three passes that extend
    one KV cache.

    1. The prompts' common prefix (the template, the instruction, often the label list), once.
    2. Each prompt's rest, right-padded: the logits at its last token give every choice's first token.
    3. One row per choice, from a copy of its prompt's cache: the choice's tokens but the last, whose logits give
       the choice's other tokens.
    The LM head runs only where a choice token is predicted. Padding sits between a row's tokens and the next
    pass's (masked out), so positions are given explicitly.
    """
    device = model.device
    shared = _common_prefix_length(prompts)
    cache = None
    if shared:
        head = torch.tensor([prompts[0][:shared]], device=device)
        cache = returned_cache(model, _forward(model, head, torch.ones_like(head), torch.arange(shared, device=device)[None], None, 1))
        cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=device))
    rest_ids, rest_mask = right_padded([ids[shared:] for ids in prompts], pad_id, device)
    seen = torch.cat([torch.ones(len(prompts), shared, dtype=torch.long, device=device), rest_mask], -1)
    ends = shared + rest_mask.sum(-1)  # each prompt's length: the position of its choices' first tokens
    last = torch.zeros_like(rest_mask, dtype=torch.bool)
    last[torch.arange(len(prompts), device=device), rest_mask.sum(-1) - 1] = True
    out = _forward(model, rest_ids, seen, shared + torch.arange(rest_ids.shape[1], device=device)[None], cache, last)
    owner = torch.tensor([i for i, options in enumerate(choices) for _ in options], device=device)
    flat = [ids for options in choices for ids in options]
    first = torch.tensor([ids[0] for ids in flat], device=device)
    sums = out.logits.log_softmax(-1, dtype=torch.float32)[owner, first]
    if any(len(ids) > 1 for ids in flat):
        cache = returned_cache(model, out)
        cache.batch_select_indices(owner)
        row_ids, row_mask = right_padded([ids[:-1] for ids in flat], pad_id, device)
        positions = ends[owner, None] + torch.arange(row_ids.shape[1], device=device)
        keep = row_mask.bool()
        logits = _forward(model, row_ids, torch.cat([seen[owner], row_mask], -1), positions, cache, keep).logits
        targets = torch.tensor([token for ids in flat for token in ids[1:]], device=device)
        token_scores = logits.log_softmax(-1, dtype=torch.float32).gather(-1, targets[:, None]).squeeze(-1)
        row_of_token = torch.repeat_interleave(torch.arange(len(flat), device=device), keep.sum(-1))
        sums = sums.index_add(0, row_of_token, token_scores)
    return sums


def _forward(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
             cache: Any, keep: int | torch.Tensor) -> Any:
    """One forward pass continuing `cache` (None: a new one); its output's logits only where `keep` says: the
    last `keep` positions, or a (rows, length) mask (one logits row per kept position, in order)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                logits_to_keep=keep, **({cache_argument(model): cache} if cache is not None else {}))
    if isinstance(keep, torch.Tensor) and (out.logits.dim() != 2 or out.logits.shape[0] != int(keep.sum())):
        raise ModelError(f"{type(model).__name__} does not return logits for selected positions only; "
                         "set infer.classify: generate")
    return out


def right_padded(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded on the right to one width, and their attention mask."""
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    return ids, mask


def cache_argument(model: PreTrainedModel) -> str:
    """The name under which the model's forward takes a KV cache: `cache` in recent transformers (which deprecate
    `past_key_values`, the name up to 5.2x)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def returned_cache(model: PreTrainedModel, output: Any) -> Any:
    """The KV cache a forward pass returned, read under the name the model takes it by (`cache_argument`)."""
    return getattr(output, cache_argument(model))


def _common_prefix_length(prompts: list[list[int]]) -> int:
    """How many leading tokens all prompts share, leaving each at least its last token."""
    shared = 0
    for column in zip(*prompts):
        if any(token != column[0] for token in column):
            break
        shared += 1
    return min(shared, min(len(ids) for ids in prompts) - 1)
