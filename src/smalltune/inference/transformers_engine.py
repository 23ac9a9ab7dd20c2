"""The transformers engine: batched greedy `generate` on the base model, the LoRA adapter on, off or merged.

Prompts are sorted by length and batched with left padding, infer.batch_size at a time; grammars are
compiled by xgrammar (`inference.constrain`) and applied as a logits processor. Candidate answers are scored
after one pass over their prompts, whose KV cache every candidate of the prompt continues from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from xgrammar import CompiledGrammar

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.inference.constrain import Grammars, logits_processor
from smalltune.inference.engine import Engine, OnBatch, split_by
from smalltune.inference.scoring import choice_log_probs
from smalltune.models import choose_dtype, load_model

SCORED_TOKENS = 512  # candidate tokens a scoring batch holds: their logits rows (x the vocabulary) and cache copies bound its memory


class TransformersEngine(Engine):
    """Batched greedy generation for one task, with an optional LoRA adapter that can be switched off."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: TaskConfig):
        super().__init__(tokenizer, config)
        self.model = model.eval()
        self._grammars: Grammars | None = None  # built at the first constrained answer

    @classmethod
    def from_config(cls, config: TaskConfig, adapter: Path | None = None, **options: Any) -> TransformersEngine:
        """The task's base model on the best device, with the adapter attached when one is given."""
        path, tokenizer = cls.base_model_and_tokenizer(config, adapter)
        model = load_model(path, choose_dtype(config.model.dtype))
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
        return cls(model, tokenizer, config)

    def merged(self) -> TransformersEngine:
        """This engine with its LoRA adapter folded into the base weights: no adapter matmuls per step, no untuned mode."""
        if isinstance(self.model, PeftModel):
            self.model = self.model.merge_and_unload()
        return self

    @contextlib.contextmanager
    def untuned(self) -> Iterator[None]:
        """Within this block the adapter is off: the engine answers as the base model."""
        if isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                yield
        else:
            yield

    def grammar(self, record: Record) -> CompiledGrammar | None:
        """The compiled grammar this record's answer follows, or None when decoding is free."""
        ebnf = super().grammar(record)
        if ebnf is None:
            return None
        if self._grammars is None:
            self._grammars = Grammars(self.tokenizer, self.model.config.vocab_size, self.stop_ids)
        return self._grammars.compiled(ebnf)

    @torch.inference_mode()
    def _generate_batch(self, batch: list[list[int]], grammars: list | None) -> tuple[list[str], int]:
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.model.device)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=self.config.infer.max_new_tokens,
            do_sample=False,
            repetition_penalty=self.config.infer.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=pad,
            logits_processor=[logits_processor(grammars)] if grammars else None,
        )
        new = out[:, width:]
        produced = int(sum((row != pad).sum() for row in new))
        return self.tokenizer.batch_decode(new, skip_special_tokens=True), produced

    def _answer(self, prompts: list[list[int]], grammars: list | None, on_batch: OnBatch | None) -> tuple[list[str], int]:
        """Longest prompts first, in batches of infer.batch_size."""
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        if on_batch:
            on_batch(0)
        texts: list[str] = [""] * len(prompts)
        tokens = 0
        size = self.config.infer.batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            chunk_grammars = [grammars[i] for i in chunk] if grammars and grammars[chunk[0]] is not None else None
            answers, produced = self._generate_batch([prompts[i] for i in chunk], chunk_grammars)
            tokens += produced
            for i, answer in zip(chunk, answers):
                texts[i] = answer
            if on_batch:
                on_batch(len(chunk))
        return texts, tokens

    def _score(self, prompts: list[list[int]], candidates: list[list[list[int]]],
               on_batch: OnBatch | None) -> list[list[float]]:
        """Longest prompts first, at most infer.batch_size prompts and SCORED_TOKENS candidate tokens a batch."""
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        if on_batch:
            on_batch(0)
        scores: list[list[float]] = [[] for _ in prompts]
        for chunk in _scoring_batches(order, candidates, self.config.infer.batch_size):
            for i, row in zip(chunk, self._score_batch([prompts[i] for i in chunk], [candidates[i] for i in chunk])):
                scores[i] = row
            if on_batch:
                on_batch(len(chunk))
        return scores

    @torch.inference_mode()
    def _score_batch(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[list[float]]:
        """Summed log-probabilities of each prompt's candidates (`choice_log_probs`)."""
        sums = choice_log_probs(self.model, prompts, candidates, self.tokenizer.pad_token_id)
        return split_by(sums.tolist(), [len(choices) for choices in candidates])


def _scoring_batches(order: list[int], candidates: Sequence[list[list[int]]], size: int) -> Iterator[list[int]]:
    """The prompts in `order`, grouped into batches of at most `size` prompts and SCORED_TOKENS candidate tokens
    (one prompt alone may exceed it)."""
    batch: list[int] = []
    tokens = 0
    for i in order:
        needed = sum(len(ids) for ids in candidates[i])
        if batch and (len(batch) == size or tokens + needed > SCORED_TOKENS):
            yield batch
            batch, tokens = [], 0
        batch.append(i)
        tokens += needed
    if batch:
        yield batch
